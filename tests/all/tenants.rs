//! Tenants on one node: sealed addressing and names, grants, WASI grants,
//! quotas, accounting, and applying and removing a tenant at run time.

use std::path::{Path, PathBuf};

use skyhost::config::{DirGrant, TenantConfig, TenantLimits};
use skyhost::{Address, CallError, ErrorCause, SendError};

use crate::support::*;

/// A module directory holding the bundled modules named in `modules`.
fn module_dir(root: &Path, name: &str, modules: &[&str]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("module dir");
    for m in modules {
        let file = format!("{m}.wasm");
        std::os::unix::fs::symlink(guest_dir().join(&file), dir.join(&file)).expect("link module");
    }
    dir
}

fn tenant(name: &str, module_paths: Vec<PathBuf>) -> TenantConfig {
    TenantConfig::new(name, module_paths)
}

/// A node with `tenants` besides `system`.
fn node_with(tenants: Vec<TenantConfig>) -> anyhow::Result<TestNode> {
    let mut config = test_config();
    config.tenants = tenants;
    TestNode::with_config(config)
}

async fn spawn_in(t: &TestNode, tenant: &str, module: &str) -> Address {
    within(t.node.spawn_in(tenant, module, &[]))
        .await
        .expect("in time")
        .unwrap_or_else(|e| panic!("spawn {module} in {tenant}: {e}"))
}

/// Asks `target` as a host client of its own tenant.
async fn ask(t: &TestNode, target: Address, command: Command) -> Reply {
    try_ask(t, target, &command)
        .await
        .unwrap_or_else(|e| panic!("{command:?} to {target}: {e}"))
}

async fn try_ask(t: &TestNode, target: Address, command: &Command) -> Result<Reply, CallError> {
    let tenant = t.node.tenant_of(target).unwrap_or_else(|| "system".into());
    let client = t.node.client_in(&tenant).expect("the tenant exists");
    command_via(&client, target, command).await
}

fn failed(reply: Reply) -> String {
    match reply {
        Reply::Failed(text) => text,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_services_look_unknown_and_names_are_per_tenant() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let t = node_with(vec![
        tenant("alpha", vec![module_dir(root.path(), "a", &["testkit"])]),
        tenant(
            "beta",
            vec![module_dir(root.path(), "b", &["testkit", "echo"])],
        ),
    ])?;
    let a1 = spawn_in(&t, "alpha", "testkit").await;
    let a2 = spawn_in(&t, "alpha", "testkit").await;
    let b1 = spawn_in(&t, "beta", "testkit").await;
    assert_eq!(
        ask(&t, a1, Command::Tenant).await,
        Reply::Bytes(b"alpha".to_vec())
    );

    // A call to B's service fails exactly as a call to no service at all.
    let nobody = Address(b1.0 + (1 << 20));
    let call = |target: Address| Command::Call {
        target: target.0,
        command: Box::new(Command::Echo(vec![1])),
    };
    let to_b = failed(ask(&t, a1, call(b1)).await);
    let to_nobody = failed(ask(&t, a1, call(nobody)).await);
    assert_eq!(
        to_b.replace(&b1.to_string(), "X"),
        to_nobody.replace(&nobody.to_string(), "X"),
        "no oracle: {to_b} / {to_nobody}"
    );
    assert_eq!(
        ask(&t, a1, call(a2)).await,
        Reply::Bytes(vec![1]),
        "its own tenant answers"
    );
    let send = |target: Address| Command::SendLoop {
        target: target.0,
        n: 1,
        payload: vec![1],
    };
    let sent_b = failed(ask(&t, a1, send(b1)).await);
    let sent_nobody = failed(ask(&t, a1, send(nobody)).await);
    assert_eq!(
        sent_b.replace(&b1.to_string(), "X"),
        sent_nobody.replace(&nobody.to_string(), "X")
    );

    // Kill and monitor see nothing; B's service lives on.
    assert_eq!(ask(&t, a1, Command::Kill(b1.0)).await, Reply::Count(0));
    ask(&t, a1, Command::Monitor(b1.0)).await;
    assert_eq!(
        ask(&t, a1, Command::ExitNotices).await,
        Reply::Addresses(vec![b1.0]),
        "monitoring another tenant's service reports it gone at once"
    );
    assert!(t.node.services().iter().any(|(a, _)| *a == b1));

    // B's module is not in A's module directory.
    let spawned = failed(
        ask(
            &t,
            a1,
            Command::Spawn {
                module: "echo".into(),
                args: vec![],
            },
        )
        .await,
    );
    assert!(spawned.contains("not found"), "{spawned}");
    let Reply::Address(child) = ask(
        &t,
        a1,
        Command::Spawn {
            module: "testkit".into(),
            args: vec![],
        },
    )
    .await
    else {
        panic!("alpha spawns its own module");
    };
    assert_eq!(t.node.tenant_of(Address(child)).as_deref(), Some("alpha"));

    // `.db` and `db` in each tenant are their own.
    for (svc, name) in [(a1, ".db"), (b1, ".db"), (a2, "db"), (b1, "db")] {
        assert_eq!(
            ask(&t, svc, Command::Register(name.into())).await,
            Reply::Unit
        );
    }
    assert_eq!(
        ask(&t, a2, Command::Query(".db".into())).await,
        Reply::MaybeAddress(Some(a1.0))
    );
    assert_eq!(
        ask(&t, b1, Command::Query(".db".into())).await,
        Reply::MaybeAddress(Some(b1.0))
    );
    assert_eq!(
        ask(&t, a1, Command::Query("db".into())).await,
        Reply::MaybeAddress(Some(a2.0))
    );
    assert_eq!(t.node.query(".db"), None, "system has no `.db`");
    assert_eq!(t.node.query_in("beta", "db"), Some(b1));

    // A host client acting as alpha is sealed the same way.
    let alpha = t.node.client_in("alpha").expect("alpha exists");
    let err = alpha.call(b1, vec![]).await.expect_err("sealed");
    assert_eq!(err.cause(), Some(ErrorCause::UnknownAddress));
    assert_eq!(
        alpha.send(b1, 0, 0, vec![]),
        Err(SendError::UnknownAddress(b1))
    );
    assert!(
        t.client.call(a1, vec![]).await.is_err(),
        "system is sealed too"
    );

    // Channels: one number, one channel per tenant.
    let Reply::Count(ca) = ask(&t, a1, Command::McNew(Some(5))).await else {
        panic!("alpha's channel");
    };
    let Reply::Count(cb) = ask(&t, b1, Command::McNew(Some(5))).await else {
        panic!("beta's channel 5 is its own, not `exists`");
    };
    assert_eq!(ca, cb);
    let channel = u32::try_from(ca)?;
    let Reply::Count(only_b) = ask(&t, b1, Command::McNew(Some(6))).await else {
        panic!("beta's channel 6");
    };
    let text = failed(ask(&t, a1, Command::McSubscribe(u32::try_from(only_b)?)).await);
    assert!(text.contains("no-such-channel"), "{text}");
    ask(&t, a2, Command::McSubscribe(channel)).await;
    ask(&t, b1, Command::McSubscribe(channel)).await;
    let publish = |tag| Command::McPublishSeq { channel, tag, n: 3 };
    assert_eq!(ask(&t, a1, publish(1)).await, Reply::Unit);
    assert_eq!(ask(&t, b1, publish(2)).await, Reply::Unit);
    let a_seen = multicast_log(&t.node.client_in("alpha").expect("alpha"), a2, 3).await?;
    let b_seen = multicast_log(&t.node.client_in("beta").expect("beta"), b1, 3).await?;
    assert_eq!(a_seen, vec![1 << 16, (1 << 16) | 1, (1 << 16) | 2]);
    assert_eq!(b_seen, vec![2 << 16, (2 << 16) | 1, (2 << 16) | 2]);

    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_opens_one_exported_entry_and_nothing_else() -> anyhow::Result<()> {
    let mut alpha = tenant("alpha", vec![guest_dir()]);
    alpha.grants = vec!["beta/db".into()];
    let mut beta = tenant("beta", vec![guest_dir()]);
    beta.exports.insert("db".into(), ".db".into());
    let t = node_with(vec![alpha, beta, tenant("gamma", vec![guest_dir()])])?;
    let a1 = spawn_in(&t, "alpha", "testkit").await;
    let g1 = spawn_in(&t, "gamma", "testkit").await;
    let db = spawn_in(&t, "beta", "testkit").await;
    let other = spawn_in(&t, "beta", "testkit").await;
    assert_eq!(
        ask(&t, db, Command::Register(".db".into())).await,
        Reply::Unit
    );

    assert_eq!(
        ask(&t, a1, Command::Query("beta/db".into())).await,
        Reply::MaybeAddress(Some(db.0))
    );
    assert_eq!(
        ask(&t, g1, Command::Query("beta/db".into())).await,
        Reply::MaybeAddress(None),
        "gamma has no grant"
    );
    assert_eq!(
        ask(&t, a1, Command::Query("beta/other".into())).await,
        Reply::MaybeAddress(None)
    );
    let call = |target: Address| Command::Call {
        target: target.0,
        command: Box::new(Command::Echo(b"row".to_vec())),
    };
    assert_eq!(
        ask(&t, a1, call(db)).await,
        Reply::Bytes(b"row".to_vec()),
        "the granted entry answers"
    );
    failed(ask(&t, a1, call(other)).await);
    failed(ask(&t, g1, call(db)).await);
    let send = Command::SendLoop {
        target: db.0,
        n: 1,
        payload: vec![],
    };
    failed(ask(&t, a1, send).await);
    let stats = t.node.tenant_stats();
    let alpha = stats.iter().find(|s| s.name == "alpha").expect("alpha");
    assert_eq!(alpha.grant_calls, 1);
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_grants_give_a_tenant_its_directories_environment_and_tcp_only() -> anyhow::Result<()>
{
    let root = tempfile::tempdir()?;
    let ro = root.path().join("ro");
    let rw = root.path().join("rw");
    std::fs::create_dir_all(&ro)?;
    std::fs::create_dir_all(&rw)?;
    std::fs::write(ro.join("hello.txt"), b"hello")?;
    std::fs::write(root.path().join("secret.txt"), b"secret")?;
    std::os::unix::fs::symlink(root.path().join("secret.txt"), ro.join("out"))?;
    let allowed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut alpha = tenant("alpha", vec![guest_dir()]);
    alpha.dirs = vec![
        DirGrant {
            host: ro.clone(),
            guest: "/data".into(),
            read_only: true,
        },
        DirGrant {
            host: rw.clone(),
            guest: "/scratch".into(),
            read_only: false,
        },
    ];
    alpha.env.insert("REGION".into(), "eu-1".into());
    alpha.tcp_connect = vec![allowed.local_addr()?.to_string()];
    let t = node_with(vec![alpha, tenant("beta", vec![guest_dir()])])?;
    let a = spawn_in(&t, "alpha", "testkit").await;
    let b = spawn_in(&t, "beta", "testkit").await;

    assert_eq!(
        ask(&t, a, Command::ReadFile("/data/hello.txt".into())).await,
        Reply::Bytes(b"hello".to_vec())
    );
    let write = |path: &str| Command::WriteFile {
        path: path.into(),
        data: b"x".to_vec(),
    };
    failed(ask(&t, a, write("/data/hello.txt")).await);
    assert_eq!(std::fs::read(ro.join("hello.txt"))?, b"hello");
    failed(ask(&t, a, Command::ReadFile("/data/../secret.txt".into())).await);
    failed(ask(&t, a, Command::ReadFile("/data/out".into())).await);
    assert_eq!(ask(&t, a, write("/scratch/note")).await, Reply::Unit);
    assert_eq!(std::fs::read(rw.join("note"))?, b"x");
    failed(ask(&t, b, Command::ReadFile("/data/hello.txt".into())).await);

    assert_eq!(
        ask(&t, a, Command::Env("REGION".into())).await,
        Reply::Bytes(b"eu-1".to_vec())
    );
    assert_eq!(
        ask(&t, b, Command::Env("REGION".into())).await,
        Reply::Bytes(vec![])
    );

    let to =
        |l: &std::net::TcpListener| Command::TcpConnect(l.local_addr().expect("bound").to_string());
    assert_eq!(ask(&t, a, to(&allowed)).await, Reply::Unit);
    failed(ask(&t, a, to(&refused)).await);
    failed(ask(&t, b, to(&allowed)).await);
    t.stop().await;
    Ok(())
}

fn limited(name: &str, limits: TenantLimits) -> TenantConfig {
    TenantConfig {
        limits,
        ..tenant(name, vec![guest_dir()])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quota_refuses_its_tenant_with_a_clear_error_and_spares_the_others()
-> anyhow::Result<()> {
    let t = node_with(vec![
        limited(
            "few",
            TenantLimits {
                max_services: Some(2),
                ..Default::default()
            },
        ),
        limited(
            "small",
            TenantLimits {
                memory_mb: Some(8),
                ..Default::default()
            },
        ),
        limited(
            "shared",
            TenantLimits {
                total_memory_mb: Some(24),
                ..Default::default()
            },
        ),
        limited(
            "queue",
            TenantLimits {
                mailbox_limit: Some(4),
                max_payload: Some(1024),
                ..Default::default()
            },
        ),
        limited(
            "slow",
            TenantLimits {
                spawn_rate: Some(1),
                ..Default::default()
            },
        ),
        limited(
            "brief",
            TenantLimits {
                cpu_budget_ms: Some(50),
                ..Default::default()
            },
        ),
        tenant("other", vec![guest_dir()]),
    ])?;
    let other = spawn_in(&t, "other", "testkit").await;

    // Most live services.
    spawn_in(&t, "few", "testkit").await;
    spawn_in(&t, "few", "testkit").await;
    let third = within(t.node.spawn_in("few", "testkit", &[])).await?;
    let text = third.expect_err("over its service limit").to_string();
    assert!(
        text.contains("tenant `few` is at its limit of 2 services"),
        "{text}"
    );
    spawn_in(&t, "other", "testkit").await;

    // Memory per service: the allocating service is stopped.
    let small = spawn_in(&t, "small", "testkit").await;
    let err = try_ask(&t, small, &Command::Hold(16))
        .await
        .expect_err("stopped at its memory limit");
    assert!(
        matches!(&err, CallError::Failed { cause: ErrorCause::Trapped, detail } if detail.contains("memory limit")),
        "{err}"
    );
    assert!(!t.node.services().iter().any(|(a, _)| *a == small));
    assert_eq!(ask(&t, other, Command::Hold(16)).await, Reply::Unit);

    // Memory of the whole tenant.
    let s1 = spawn_in(&t, "shared", "testkit").await;
    let s2 = spawn_in(&t, "shared", "testkit").await;
    assert_eq!(ask(&t, s1, Command::Hold(12)).await, Reply::Unit);
    let err = try_ask(&t, s2, &Command::Hold(12))
        .await
        .expect_err("past the tenant's total");
    assert!(
        err.to_string()
            .contains("tenant `shared`: total memory limit"),
        "{err}"
    );
    assert_eq!(
        ask(&t, s1, Command::Echo(vec![3])).await,
        Reply::Bytes(vec![3])
    );

    // Mailbox length: a busy service's mailbox past 4 answers Overloaded.
    let busy = spawn_in(&t, "queue", "testkit").await;
    let peer = spawn_in(&t, "queue", "testkit").await;
    let queue = t.node.client_in("queue").expect("queue exists");
    let spin = postcard::to_allocvec(&Command::Spin)?;
    queue.send(busy, skyhost::kind::REQUEST, 1, spin)?;
    within(async {
        while t.node.mailbox_len(busy) != Some(0) {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    for _ in 0..4 {
        queue.send(busy, 0, 0, vec![1])?;
    }
    assert_eq!(
        queue.send(busy, 0, 0, vec![1]),
        Err(SendError::Overloaded(busy))
    );
    let others = t.node.client_in("other").expect("other exists");
    for _ in 0..10 {
        others.send(other, 0, 0, vec![1])?;
    }
    // Payload size.
    let big = Command::Call {
        target: peer.0,
        command: Box::new(Command::Echo(vec![0; 2000])),
    };
    let text = failed(ask(&t, peer, big).await);
    assert!(text.to_lowercase().contains("large"), "{text}");
    t.node.kill(busy);

    // CPU budget per message.
    let brief = spawn_in(&t, "brief", "testkit").await;
    let err = try_ask(&t, brief, &Command::Spin)
        .await
        .expect_err("stopped at its CPU budget");
    assert!(err.to_string().contains("cpu budget of 50 ms"), "{err}");

    // Spawn rate.
    spawn_in(&t, "slow", "testkit").await;
    let again = within(t.node.spawn_in("slow", "testkit", &[])).await?;
    let text = again.expect_err("faster than its rate").to_string();
    assert!(text.contains("spawn_rate"), "{text}");

    let stats = t.node.tenant_stats();
    for name in ["few", "small", "shared", "queue", "slow"] {
        let s = stats
            .iter()
            .find(|s| s.name == name)
            .expect("tenant listed");
        assert!(s.refusals >= 1, "{name}: {s:?}");
    }
    let o = stats.iter().find(|s| s.name == "other").expect("other");
    assert_eq!(o.refusals, 0);
    assert!(o.messages_in >= 2 && o.memory_bytes >= 16 << 20, "{o:?}");
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_tenant_starts_it_and_removing_it_ends_its_sessions() -> anyhow::Result<()> {
    let t = node_with(vec![])?;
    let mut config = tenant("late", vec![guest_dir()]);
    config.bootstrap = vec![skyhost::config::Bootstrap {
        module: "testkit".into(),
        args: "name=.main".into(),
    }];
    let started = within(t.node.apply_tenant(&config)).await??;
    assert_eq!(started.len(), 1);
    assert_eq!(t.node.query_in("late", ".main"), Some(started[0]));
    let again = within(t.node.apply_tenant(&config)).await?;
    assert!(again.is_err(), "applied twice");

    let late = t.node.client_in("late").expect("applied");
    let slow = Command::SleepThenEcho {
        ms: 60_000,
        payload: vec![],
    };
    let pending = late.start_call(started[0], postcard::to_allocvec(&slow)?)?;
    within(t.node.remove_tenant("late")).await??;
    let err = within(pending).await?.expect_err("ended by the removal");
    assert_eq!(err.cause(), Some(ErrorCause::Killed), "{err}");
    assert!(t.node.services().is_empty());
    assert!(t.node.client_in("late").is_none());
    assert!(t.node.tenant_stats().iter().all(|s| s.name != "late"));
    assert!(
        within(t.node.spawn_in("late", "testkit", &[]))
            .await?
            .is_err()
    );
    assert!(t.node.remove_tenant("system").await.is_err());
    t.stop().await;
    Ok(())
}

/// Median round trip of `n` sequential calls from `client` to `target`, in µs.
async fn median_rtt(client: &skyhost::Client, target: Address, n: usize) -> f64 {
    let payload = postcard::to_allocvec(&Command::Echo(vec![1])).expect("encodes");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = std::time::Instant::now();
        client
            .call_timeout(target, payload.clone(), DEADLINE)
            .await
            .expect("ping answered");
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

/// Starts `n` services of `tenant` that spin forever.
async fn spinners(t: &TestNode, tenant: &str, n: usize) -> Vec<Address> {
    let client = t.node.client_in(tenant).expect("tenant exists");
    let spin = postcard::to_allocvec(&Command::Spin).expect("encodes");
    let mut all = Vec::new();
    for _ in 0..n {
        let s = spawn_in(t, tenant, "testkit").await;
        client
            .send(s, skyhost::kind::REQUEST, 1, spin.clone())
            .expect("spin sent");
        all.push(s);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_spinning_and_flooding_leaves_another_tenants_pings_fast() -> anyhow::Result<()> {
    let t = node_with(vec![
        tenant("noisy", vec![guest_dir()]),
        tenant("quiet", vec![guest_dir()]),
    ])?;
    let quiet = t.node.client_in("quiet").expect("quiet");
    let pong = spawn_in(&t, "quiet", "testkit").await;
    median_rtt(&quiet, pong, 50).await;
    let idle = median_rtt(&quiet, pong, 300).await;

    spinners(&t, "noisy", 16).await;
    let sink = spawn_in(&t, "noisy", "testkit").await;
    let noisy = t.node.client_in("noisy").expect("noisy");
    let stop = tokio_util::sync::CancellationToken::new();
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                for _ in 0..256 {
                    if noisy.send(sink, 0, 0, vec![0; 16]).is_ok() {
                        sent += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            sent
        })
    };
    let busy = median_rtt(&quiet, pong, 300).await;
    stop.cancel();
    let flooded = flood.await?;
    eprintln!(
        "quiet tenant's ping: idle median {idle:.1} µs, while `noisy` spins 16 services and \
         floods ({flooded} sends): median {busy:.1} µs ({:.1}×)",
        busy / idle
    );
    assert!(flooded > 0);
    assert!(
        busy <= idle * 10.0,
        "ping {busy:.1} µs under load vs {idle:.1} µs idle"
    );
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_tenants_share_the_threads_by_weight() -> anyhow::Result<()> {
    let weighted = |name: &str, weight| {
        limited(
            name,
            TenantLimits {
                weight: Some(weight),
                cpu_budget_ms: Some(60_000),
                ..Default::default()
            },
        )
    };
    let t = node_with(vec![weighted("light", 1), weighted("heavy", 3)])?;
    spinners(&t, "light", 4).await;
    spinners(&t, "heavy", 4).await;
    let cpu = |name: &str| {
        t.node
            .tenant_stats()
            .into_iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.cpu_us)
    };
    // Measured from a common start, once both are busy.
    within(async {
        while cpu("light") == 0 || cpu("heavy") == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    let (light0, heavy0) = (cpu("light"), cpu("heavy"));
    within(async {
        while cpu("heavy") - heavy0 < 600_000 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await?;
    let (light, heavy) = (cpu("light") - light0, cpu("heavy") - heavy0);
    let ratio = light as f64 / heavy as f64;
    eprintln!(
        "CPU while both tenants spin: light (weight 1) {light} µs, heavy (weight 3) {heavy} µs, ratio {ratio:.2}"
    );
    assert!(
        (0.15..=0.6).contains(&ratio),
        "light/heavy CPU {ratio:.2}, weights 1:3"
    );
    t.stop().await;
    Ok(())
}

/// Runs `skyhost <args>`; returns whether it succeeded and its stdout and stderr.
fn skyhost_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skyhost"))
        .args(args)
        .env_remove("SKYHOST_SECRET")
        .env_remove("SKYHOST_CONTROL")
        .output()
        .expect("run skyhost");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn tenant_apply_and_remove_go_through_the_control_address_of_a_real_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("control.secret");
    std::fs::write(&secret, "open sesame\n").expect("secret");
    let node = dir.path().join("node.toml");
    std::fs::write(
        &node,
        format!(
            "module_paths = [{modules:?}]\ncache_dir = {cache:?}\nlog_level = \"info\"\n\n\
             [limits]\nmax_services = 256\n\n\
             [control]\naddress = \"127.0.0.1:0\"\nsecret_file = \"control.secret\"\n",
            modules = guest_dir().display().to_string(),
            cache = cache_dir().display().to_string(),
        ),
    )
    .expect("node file");
    let bootstrap = "[[bootstrap]]\nmodule = \"testkit\"\n".repeat(20);
    let tenant_file = dir.path().join("blue.toml");
    std::fs::write(
        &tenant_file,
        format!(
            "name = \"blue\"\nmodule_paths = [{:?}]\n\n{bootstrap}",
            guest_dir().display().to_string()
        ),
    )
    .expect("tenant file");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"red\"\n[limits]\nweight = 0\n").expect("bad file");

    let mut p = Proc::start([Path::new("run"), &node]);
    let line = p.wait_for("control listening");
    let control = log_field(&line, "address").expect("control address in the log");
    let secret = secret.to_str().expect("utf-8 path");
    let file = tenant_file.to_str().expect("utf-8 path");
    let apply = [
        "tenant",
        "apply",
        file,
        "--control",
        &control,
        "--secret-file",
        secret,
    ];
    let remove = [
        "tenant",
        "remove",
        "blue",
        "--control",
        &control,
        "--secret-file",
        secret,
    ];
    let tenants = [
        "ctl",
        "--control",
        &control,
        "--secret-file",
        secret,
        "tenants",
    ];

    // Once to warm the node up (module loaded, pool slots touched).
    for step in [&apply, &remove] {
        let (ok, out) = skyhost_cli(step);
        assert!(ok, "{step:?}: {out}");
    }
    let (ok, out) = skyhost_cli(&apply);
    assert!(ok, "{out}");
    assert_eq!(out.matches("started").count(), 20, "{out}");
    // Trace one of them: the ping that reaches it is logged.
    let first = out
        .lines()
        .find_map(|l| l.strip_prefix("started "))
        .expect("a started service")
        .to_string();
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--control", &control, "--secret-file", secret];
        all.extend_from_slice(args);
        skyhost_cli(&all)
    };
    let (ok, out) = ctl(&["trace", &first, "on"]);
    assert!(ok && out.contains(&format!("trace {first} on")), "{out}");
    let (ok, out) = ctl(&["ping", &first]);
    assert!(ok && out.contains("pong"), "{out}");
    let line = p.wait_for("direction=\"in\" peer=");
    assert!(line.contains("kind=4"), "{line}");
    assert!(ctl(&["trace", &first, "off"]).0);
    let (ok, out) = skyhost_cli(&tenants);
    assert!(ok && out.contains("blue services=20"), "{out}");
    // The interactive console reads the same commands from its input.
    let console = std::process::Command::new(env!("CARGO_BIN_EXE_skyhost"))
        .args(["console", "--control", &control, "--secret-file", secret])
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the console");
    use std::io::Write;
    console
        .stdin
        .as_ref()
        .expect("piped stdin")
        .write_all(b"tenants\nnonsense\nquit\n")
        .expect("console input");
    let out = console.wait_with_output().expect("console ends");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("blue services=20"), "{stdout}");
    assert!(stderr.contains("unknown command `nonsense`"), "{stderr}");
    let (ok, out) = skyhost_cli(&apply);
    assert!(!ok && out.contains("exists already"), "{out}");

    let (ok, out) = skyhost_cli(&remove);
    assert!(ok, "{out}");
    let (ok, out) = skyhost_cli(&tenants);
    assert!(ok && !out.contains("blue"), "{out}");
    // A removed tenant leaves nothing behind: three more plain cycles
    // (after the one above, whose trace and console cost once) grow the
    // node by less than a tenth.
    let before = rss_kib(p.id());
    for _ in 0..3 {
        for step in [&apply, &remove] {
            let (ok, out) = skyhost_cli(step);
            assert!(ok, "{step:?}: {out}");
        }
    }
    // Under a loaded machine the node gives memory back later than the
    // removal answers (services end on their own threads): wait for it,
    // with a deadline; a leak never gets there.
    let settle = std::time::Instant::now() + crate::support::DEADLINE;
    let mut after = rss_kib(p.id());
    while after > before + before / 10 && std::time::Instant::now() < settle {
        std::thread::sleep(std::time::Duration::from_millis(100));
        after = rss_kib(p.id());
    }
    eprintln!("node RSS before three apply/remove cycles {before} KiB, after {after} KiB");
    assert!(
        after <= before + before / 10,
        "RSS {after} KiB after three cycles vs {before} KiB before"
    );

    // Errors name their cause; a wrong secret is refused.
    let bad = bad.to_str().expect("utf-8 path");
    let (ok, out) = skyhost_cli(&[
        "tenant",
        "apply",
        bad,
        "--control",
        &control,
        "--secret-file",
        secret,
    ]);
    assert!(
        !ok && out.contains("bad.toml:3:") && out.contains("weight"),
        "{out}"
    );
    let (ok, out) = skyhost_cli(&[
        "tenant",
        "remove",
        "nobody",
        "--control",
        &control,
        "--secret-file",
        secret,
    ]);
    assert!(!ok && out.contains("no tenant `nobody`"), "{out}");
    let wrong = dir.path().join("wrong.secret");
    std::fs::write(&wrong, "guess").expect("secret");
    let (ok, out) = skyhost_cli(&[
        "ctl",
        "--control",
        &control,
        "--secret-file",
        wrong.to_str().expect("utf-8 path"),
        "tenants",
    ]);
    assert!(!ok && out.contains("not authenticated"), "{out}");
    p.signal("INT");
    assert!(p.wait_exit().success());
}

/// A real node (harbor 1 running the master, and cluster node `one`) with
/// tenants `alpha` and `beta`, each with a `testkit` named `kit` in the
/// harbor and in the cluster; the test process joins as harbor 2 and
/// cluster node `two` with `alpha`, `beta` and `gamma` (only here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_harbor_and_cluster_nodes_a_tenant_reaches_only_itself() -> anyhow::Result<()> {
    use anyhow::Context;
    use skyhost::cluster::proto::Target;
    const SECRET: &str = "tenant test secret";
    let dir = tempfile::tempdir()?;
    let modules = guest_dir().display().to_string();
    let kit =
        "[[tenant.bootstrap]]\nmodule = \"testkit\"\nargs = \"name=kit cluster=kit mc_new=7\"\n";
    let file = dir.path().join("one.toml");
    std::fs::write(
        &file,
        format!(
            "module_paths = [{modules:?}]\ncache_dir = {cache:?}\nlog_level = \"info\"\n\n\
             [limits]\nmax_services = 256\n\n\
             [harbor]\nid = 1\nstandalone = \"127.0.0.1:0\"\nsecret = {SECRET:?}\n\n\
             [cluster]\nname = \"one\"\nlisten = \"127.0.0.1:0\"\nsecret = {SECRET:?}\n\n\
             [[tenant]]\nname = \"alpha\"\nmodule_paths = [{modules:?}]\n{kit}\n\
             [[tenant]]\nname = \"beta\"\nmodule_paths = [{modules:?}]\n{kit}",
            cache = cache_dir().display().to_string(),
        ),
    )?;
    let mut p = Proc::start([Path::new("run"), &file]);
    let master = log_field(&p.wait_for("harbor master listening"), "address").context("master")?;
    let one = log_field(&p.wait_for("cluster listening"), "address").context("cluster")?;
    p.wait_for("tenant=beta");

    let mut config = test_config();
    let mut harbor = skyhost::config::HarborConfig::new(2, SECRET);
    harbor.master = Some(master);
    config.harbor = Some(harbor);
    config.cluster = Some(skyhost::config::ClusterNodeConfig::new("two", SECRET));
    config.tenants = vec![
        tenant("alpha", vec![guest_dir()]),
        tenant("beta", vec![guest_dir()]),
        tenant("gamma", vec![guest_dir()]),
    ];
    let node = within(skyhost::Node::launch(&config)).await??;
    node.cluster_reload(&format!("one = {one:?}\n"))
        .map_err(anyhow::Error::msg)?;
    let client = |t: &str| node.client_in(t).expect("tenant on node two");
    let (alpha, beta, gamma) = (client("alpha"), client("beta"), client("gamma"));

    // Harbor: each tenant's global `kit` is its own; another's is unknown.
    let a1 = alpha.queryname("kit", DEADLINE).await?;
    let b1 = beta.queryname("kit", DEADLINE).await?;
    assert_ne!(a1, b1);
    assert_eq!(a1.harbor().0, 1);
    assert_eq!(
        command_via(&alpha, a1, &Command::Tenant).await?,
        Reply::Bytes(b"alpha".to_vec())
    );
    assert_eq!(
        command_via(&beta, b1, &Command::Tenant).await?,
        Reply::Bytes(b"beta".to_vec())
    );
    let err = command_via(&alpha, b1, &Command::Tenant)
        .await
        .expect_err("alpha cannot reach beta's kit");
    assert_eq!(err.cause(), Some(ErrorCause::UnknownAddress), "{err}");
    let err = command_via(&gamma, a1, &Command::Tenant)
        .await
        .expect_err("gamma has no services on harbor 1");
    assert_eq!(err.cause(), Some(ErrorCause::UnknownAddress), "{err}");
    let missing = gamma
        .queryname("kit", std::time::Duration::from_millis(200))
        .await;
    assert!(missing.is_err(), "gamma has no `kit`: {missing:?}");
    // A service of alpha on this node is sealed the same way.
    let a2 = node.spawn_in("alpha", "testkit", &[]).await?;
    let via = |target: Address| Command::Call {
        target: target.0,
        command: Box::new(Command::Tenant),
    };
    assert_eq!(
        command_via(&alpha, a2, &via(a1)).await?,
        Reply::Bytes(b"alpha".to_vec())
    );
    failed(command_via(&alpha, a2, &via(b1)).await?);

    // Channel 7 of harbor 1 is alpha's for alpha and beta's for beta.
    let channel = (7 << 8) | 1;
    let b2 = node.spawn_in("beta", "testkit", &[]).await?;
    for (c, s) in [(&alpha, a2), (&beta, b2)] {
        assert_eq!(
            command_via(c, s, &Command::McSubscribe(channel)).await?,
            Reply::Unit
        );
        // The subscription reached harbor 1 before anything is published.
        command_via(c, s, &via(if s == a2 { a1 } else { b1 })).await?;
    }
    let publish = |tag| Command::McPublishSeq { channel, tag, n: 2 };
    assert_eq!(command_via(&alpha, a2, &publish(1)).await?, Reply::Unit);
    assert_eq!(command_via(&beta, b2, &publish(2)).await?, Reply::Unit);
    for (c, s, tag) in [(&alpha, a2, 1u32), (&beta, b2, 2)] {
        let log = multicast_log(c, s, 2).await?;
        assert_eq!(log, vec![tag << 16, (tag << 16) | 1], "{tag}");
    }

    // Cluster: by name each tenant reaches its own `kit`; by address only its own.
    let ask = |c: &skyhost::Client, target: Target| {
        let payload = postcard::to_allocvec(&Command::Tenant).expect("encodes");
        c.cluster_call("one", target, payload, Some(DEADLINE))
    };
    let reply = |bytes: Vec<u8>| -> Reply { postcard::from_bytes(&bytes).expect("decodes") };
    assert_eq!(
        reply(ask(&alpha, Target::Name("kit".into())).await?),
        Reply::Bytes(b"alpha".to_vec())
    );
    assert_eq!(
        reply(ask(&beta, Target::Name("kit".into())).await?),
        Reply::Bytes(b"beta".to_vec())
    );
    let err = ask(&gamma, Target::Name("kit".into()))
        .await
        .expect_err("gamma has no `kit` on one");
    assert_eq!(err.cause(), Some(ErrorCause::UnknownAddress), "{err}");
    let err = ask(&alpha, Target::Address(b1.0))
        .await
        .expect_err("beta's address is unknown to alpha");
    assert_eq!(err.cause(), Some(ErrorCause::UnknownAddress), "{err}");
    assert_eq!(alpha.cluster_query("one", "kit").await?, a1);
    assert_eq!(beta.cluster_query("one", "kit").await?, b1);
    assert!(gamma.cluster_query("one", "kit").await.is_err());

    // What netstat shows of this node's links.
    let links = node.links();
    let harbor = links
        .iter()
        .find(|l| l.kind == "harbor" && l.peer == "1")
        .context("the link to harbor 1")?;
    assert!(
        harbor.up && harbor.bytes_in > 0 && harbor.bytes_out > 0 && harbor.frames_in > 0,
        "{harbor:?}"
    );
    assert_eq!(harbor.connections, 1, "{harbor:?}");
    let out = links
        .iter()
        .find(|l| l.kind == "cluster-out" && l.peer == "one")
        .context("the link to cluster node one")?;
    assert!(out.up && out.bytes_out > 0 && out.frames_in > 0, "{out:?}");
    assert_eq!(out.address, one);
    // And what `/metrics` shows of them.
    let text = skyhost::metrics::render(&node);
    for (series, at_least) in [
        (r#"skyhost_link_up{link="harbor",peer="1"}"#, 1.0),
        (
            r#"skyhost_link_connections_total{link="harbor",peer="1"}"#,
            1.0,
        ),
        (r#"skyhost_link_up{link="cluster-out",peer="one"}"#, 1.0),
        (
            r#"skyhost_link_sent_bytes_total{link="cluster-out",peer="one"}"#,
            out.bytes_out as f64,
        ),
        (r#"skyhost_tenant_services{tenant="alpha"}"#, 1.0),
    ] {
        let value = text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        });
        assert!(
            value.is_some_and(|v| v >= at_least),
            "{series}: {value:?}\n{text}"
        );
    }
    crate::metrics::promtool_check(&text)?;

    drop((alpha, beta, gamma));
    within(node.shutdown()).await?;
    p.signal("INT");
    assert!(p.wait_exit().success());
    Ok(())
}
