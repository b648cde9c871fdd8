//! `skyhost bench`: the end-to-end workloads, each run 3 times in a fresh
//! node, reported as min / median / max.
//!
//! A memory figure is what a user sees in a node just started: each run of
//! a memory workload (`rss-per-service`, `lang-*-rss`) is a fresh `skyhost
//! bench --once` process, so it never reuses memory an earlier run in the
//! same process freed (that made `rss-per-service` read 32 KiB where a new
//! node grows 54-58 KiB per idle echo).
//!
//! Every message crosses the wasm boundary as a real service's would: the
//! workloads are driven by the bundled `testkit` and `echo` services, and
//! the payloads are copied and decoded for real.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use skyhost::config::Limits;
use skyhost::{Address, Client, Node, NodeConfig};
use skyhost_test_proto::{Command, Reply};

mod game;

/// A workload's measurement: one run against a fresh node.
type RunFn = fn(
    &BenchNode,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<f64>> + '_>>;

/// One workload's id, unit and what it measures.
struct Workload {
    id: &'static str,
    unit: &'static str,
    /// The nodes it runs on.
    topology: Topology,
    run: RunFn,
}

const RUNS: usize = 3;

/// The nodes a workload runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// One node.
    Single,
    /// Harbor 1 (running the master) and harbor 2, linked over loopback.
    Harbor,
    /// Cluster nodes `a` and `b`, linked over loopback.
    Cluster,
    /// One node with 100 tenants (`t0`..`t99`); the workload's services
    /// and client are in `t0`.
    Tenants,
}

/// Tenants configured for [`Topology::Tenants`].
const BENCH_TENANTS: usize = 100;

/// The three `lang-<language>-*` rows for the echo service `module`.
macro_rules! language_rows {
    ($lang:literal, $module:literal) => {
        [
            Workload {
                id: concat!("lang-", $lang, "-call-rtt"),
                unit: "µs",
                topology: Topology::Single,
                run: |n| Box::pin(call_rtt_of(n, $module, 20_000)),
            },
            Workload {
                id: concat!("lang-", $lang, "-spawn"),
                unit: "µs per service",
                topology: Topology::Single,
                run: |n| Box::pin(spawn_of(n, $module, 10, 200)),
            },
            Workload {
                id: concat!("lang-", $lang, "-rss"),
                unit: "KiB",
                topology: Topology::Single,
                run: |n| Box::pin(rss_of(n, $module, 100)),
            },
        ]
    };
}

fn workloads() -> Vec<Workload> {
    let mut all = vec![
        Workload {
            id: "tcp-floor",
            unit: "µs",
            topology: Topology::Single,
            run: |_| Box::pin(tcp_floor()),
        },
        Workload {
            id: "local-oneway",
            unit: "msgs/s",
            topology: Topology::Single,
            run: |n| Box::pin(local_oneway(n, 2_000_000)),
        },
        Workload {
            id: "local-call-rtt",
            unit: "µs",
            topology: Topology::Single,
            run: |n| Box::pin(local_call_rtt(n, 300_000)),
        },
        Workload {
            id: "local-concurrent",
            unit: "calls/s",
            topology: Topology::Single,
            run: |n| Box::pin(local_concurrent(n, 100, 10_000)),
        },
        Workload {
            id: "spawn",
            unit: "µs per service",
            topology: Topology::Single,
            run: |n| Box::pin(spawn(n, 10_000)),
        },
        Workload {
            id: "rss-per-service",
            unit: "KiB",
            topology: Topology::Single,
            run: |n| Box::pin(rss_per_service(n, 10_000)),
        },
        Workload {
            id: "max-services",
            unit: "count",
            topology: Topology::Single,
            run: |n| Box::pin(max_services(n, 100_000)),
        },
        Workload {
            id: "ping-under-spin",
            unit: "µs median",
            topology: Topology::Single,
            run: |n| Box::pin(ping_under_spin(n, 16, 2_000)),
        },
        Workload {
            id: "harbor-call-rtt",
            unit: "µs",
            topology: Topology::Harbor,
            run: |n| Box::pin(harbor_call_rtt(n, 50_000)),
        },
        Workload {
            id: "harbor-oneway",
            unit: "msgs/s",
            topology: Topology::Harbor,
            run: |n| Box::pin(harbor_oneway(n, 500_000)),
        },
        Workload {
            id: "harbor-concurrent",
            unit: "calls/s",
            topology: Topology::Harbor,
            run: |n| Box::pin(harbor_concurrent(n, 100, 1_000)),
        },
        Workload {
            id: "multicast-local",
            unit: "deliveries/s",
            topology: Topology::Single,
            run: |n| Box::pin(multicast(n, false, 1_000, 1_000)),
        },
        Workload {
            id: "multicast-harbor",
            unit: "deliveries/s",
            topology: Topology::Harbor,
            run: |n| Box::pin(multicast(n, true, 1_000, 1_000)),
        },
        Workload {
            id: "cluster-call-rtt",
            unit: "µs",
            topology: Topology::Cluster,
            run: |n| Box::pin(cluster_call_rtt(n, 50_000)),
        },
        Workload {
            id: "cluster-oneway",
            unit: "msgs/s",
            topology: Topology::Cluster,
            run: |n| Box::pin(cluster_oneway(n, 500_000)),
        },
        Workload {
            id: "cluster-concurrent",
            unit: "calls/s",
            topology: Topology::Cluster,
            run: |n| Box::pin(cluster_concurrent(n, 100, 1_000)),
        },
        Workload {
            id: "group-call",
            unit: "ratio (group / direct)",
            topology: Topology::Cluster,
            run: |n| Box::pin(group_call(n, 20_000)),
        },
        Workload {
            id: "game-logins",
            unit: "logins/s",
            topology: Topology::Single,
            run: |_| Box::pin(game::logins(10_000)),
        },
        Workload {
            id: "game-chat-fanout",
            unit: "ms (P50, to all)",
            topology: Topology::Single,
            run: |_| Box::pin(game::chat_fanout(1_000, 100)),
        },
        Workload {
            id: "game-battle-rtt",
            unit: "ms (median)",
            topology: Topology::Single,
            run: |_| Box::pin(game::battle_rtt(100, 1_000)),
        },
        Workload {
            id: "tenant-overhead",
            unit: "ratio (100 tenants / 1)",
            topology: Topology::Tenants,
            run: |n| Box::pin(tenant_overhead(n, 100_000, 1_000_000)),
        },
        Workload {
            id: "upgrade-pause",
            unit: "µs median",
            topology: Topology::Single,
            run: |n| Box::pin(upgrade_pause(n, 100)),
        },
        Workload {
            id: "upgrade-throughput",
            unit: "ratio (upgraded / not)",
            topology: Topology::Single,
            run: |n| Box::pin(upgrade_throughput(n, 3_000_000)),
        },
        Workload {
            id: "tenant-fairness",
            unit: "µs median",
            topology: Topology::Tenants,
            run: |n| Box::pin(tenant_fairness(n, 16, 2_000)),
        },
    ];
    all.extend(language_rows!("rust", "echo"));
    all.extend(language_rows!("c", "echo_c"));
    all.extend(language_rows!("js", "echo_js"));
    all.extend(language_rows!("python", "echo_py"));
    all
}

/// A fresh node with a client, for one run of one workload; for harbor
/// workloads it is harbor 1 (running the master) and `peer` is harbor 2.
struct BenchNode {
    node: Node,
    client: Client,
    /// The tenant its services are spawned in.
    tenant: String,
    limits: Limits,
    peer: Option<Node>,
    /// A client on the peer node.
    peer_client: Option<Client>,
}

impl BenchNode {
    fn config(limits: Limits) -> anyhow::Result<NodeConfig> {
        let dir = skyhost::bundled_modules().context("this build has no bundled services")?;
        Ok(NodeConfig {
            module_paths: vec![dir],
            limits,
            ..NodeConfig::default()
        })
    }

    fn start(limits: Limits) -> anyhow::Result<Self> {
        let node = Node::start(&Self::config(limits.clone())?)?;
        let client = node.client();
        Ok(BenchNode {
            node,
            client,
            tenant: skyhost::runtime::SYSTEM_TENANT.into(),
            limits,
            peer: None,
            peer_client: None,
        })
    }

    /// One node with [`BENCH_TENANTS`] tenants; services and client in `t0`.
    fn start_tenants(limits: Limits) -> anyhow::Result<Self> {
        let mut config = Self::config(limits.clone())?;
        for i in 0..BENCH_TENANTS {
            let text = format!("name = \"t{i}\"\n");
            let mut tenant = skyhost::config::TenantConfig::parse(
                &text,
                std::path::Path::new("bench"),
                &limits,
            )?;
            tenant.module_paths.clone_from(&config.module_paths);
            config.tenants.push(tenant);
        }
        let node = Node::start(&config)?;
        let client = node.client_in("t0").context("tenant t0")?;
        Ok(BenchNode {
            node,
            client,
            tenant: "t0".into(),
            limits,
            peer: None,
            peer_client: None,
        })
    }

    /// Harbor 1 (standalone) and harbor 2, in this process, over loopback.
    async fn start_harbor(limits: Limits) -> anyhow::Result<Self> {
        const SECRET: &str = "bench";
        let mut first = Self::config(limits.clone())?;
        let mut harbor = skyhost::config::HarborConfig::new(1, SECRET);
        harbor.standalone = Some("127.0.0.1:0".into());
        first.harbor = Some(harbor);
        let node = Node::launch(&first).await?;
        let master = node.master_address().context("master address")?;
        let mut second = Self::config(limits)?;
        let mut harbor = skyhost::config::HarborConfig::new(2, SECRET);
        harbor.master = Some(master);
        second.harbor = Some(harbor);
        let peer = Node::launch(&second).await?;
        // Harbor 1 hears of harbor 2 a moment after the join: wait for the link.
        let start = Instant::now();
        while !node.connected().contains(&2) {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "harbor 1 never linked to 2"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let client = node.client();
        Ok(BenchNode {
            node,
            client,
            tenant: skyhost::runtime::SYSTEM_TENANT.into(),
            limits: Limits::default(),
            peer_client: Some(peer.client()),
            peer: Some(peer),
        })
    }

    /// Cluster nodes `a` (this one) and `b`, in this process, over loopback.
    async fn start_cluster(limits: Limits) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for name in ["a", "b"] {
            let mut config = Self::config(limits.clone())?;
            let mut cluster = skyhost::config::ClusterNodeConfig::new(name, "bench");
            cluster.listen = Some("127.0.0.1:0".into());
            config.cluster = Some(cluster);
            nodes.push(Node::launch(&config).await?);
        }
        let b = nodes.pop().context("node b")?;
        let a = nodes.pop().context("node a")?;
        let table = format!(
            "a = \"{}\"\nb = \"{}\"\n",
            a.cluster_listening()[0],
            b.cluster_listening()[0]
        );
        a.cluster_reload(&table).map_err(anyhow::Error::msg)?;
        b.cluster_reload(&table).map_err(anyhow::Error::msg)?;
        Ok(BenchNode {
            client: a.client(),
            tenant: skyhost::runtime::SYSTEM_TENANT.into(),
            limits: Limits::default(),
            node: a,
            peer_client: Some(b.client()),
            peer: Some(b),
        })
    }

    /// Spawns on harbor 2.
    async fn spawn_remote(&self, module: &str) -> anyhow::Result<Address> {
        let peer = self.peer.as_ref().context("not a harbor workload")?;
        Ok(peer.spawn(module, &[]).await?)
    }

    async fn stop(self) {
        drop(self.peer_client);
        drop(self.client);
        if let Some(peer) = &self.peer {
            peer.shutdown().await;
        }
        self.node.shutdown().await;
    }

    async fn spawn(&self, module: &str) -> anyhow::Result<Address> {
        Ok(self.node.spawn_in(&self.tenant, module, &[]).await?)
    }

    async fn command(&self, target: Address, command: &Command) -> anyhow::Result<Reply> {
        command_via(&self.client, target, command).await
    }
}

/// Calls a testkit service and decodes its reply; `Failed` is an error.
async fn command_via(client: &Client, target: Address, command: &Command) -> anyhow::Result<Reply> {
    let reply = client.call(target, postcard::to_allocvec(command)?).await?;
    match postcard::from_bytes(&reply)? {
        Reply::Failed(e) => bail!("testkit: {e}"),
        r => Ok(r),
    }
}

/// Whether each run of workload `id` needs a process of its own (memory
/// figures: see the module doc).
fn runs_in_fresh_process(id: &str) -> bool {
    id == "rss-per-service" || id.ends_with("-rss")
}

/// One run of workload `id` in a fresh `skyhost bench --once` process with
/// the same threads; its figure.
async fn run_in_fresh_process(id: &str, threads: Option<usize>) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("the skyhost binary's path")?;
    let mut command = std::process::Command::new(exe);
    command.args(["bench", "--once", id]);
    if let Some(t) = threads {
        command.args(["--threads", &t.to_string()]);
    }
    command.stderr(std::process::Stdio::inherit());
    let out = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("benchmark {id} in a fresh process"))?;
    anyhow::ensure!(
        out.status.success(),
        "benchmark {id}: its process failed ({})",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("benchmark {id}: its process printed {text:?}"))
}

/// Runs the workloads named in `ids` (all when empty) and prints each
/// figure. With `once`, runs the one workload in `ids` once in this process
/// and prints its bare figure (what [`run_in_fresh_process`] reads).
pub async fn run(
    ids: &[String],
    json: bool,
    once: bool,
    threads: Option<usize>,
) -> anyhow::Result<()> {
    let all = workloads();
    // `game` stands for every row of the example game.
    let ids: Vec<String> = ids
        .iter()
        .flat_map(|id| match id.as_str() {
            "game" => all
                .iter()
                .filter(|w| w.id.starts_with("game-"))
                .map(|w| w.id.to_string())
                .collect(),
            _ => vec![id.clone()],
        })
        .collect();
    for id in &ids {
        if !all.iter().any(|w| w.id == id) {
            let known: Vec<&str> = all.iter().map(|w| w.id).collect();
            bail!("unknown benchmark `{id}`; known: {}", known.join(", "));
        }
    }
    if once {
        let [id] = ids.as_slice() else {
            bail!("--once runs exactly one workload");
        };
        let w = all.iter().find(|w| w.id == id).context("known workload")?;
        println!("{}", run_once(w).await?);
        return Ok(());
    }
    if !json {
        println!(
            "{:<20} {:>14} {:>14} {:>14}  unit",
            "id", "min", "median", "max"
        );
    }
    for w in all
        .iter()
        .filter(|w| ids.is_empty() || ids.iter().any(|i| i == w.id))
    {
        let mut values = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let value = if runs_in_fresh_process(w.id) {
                run_in_fresh_process(w.id, threads).await?
            } else {
                run_once(w).await?
            };
            values.push(value);
        }
        values.sort_by(f64::total_cmp);
        let (min, median, max) = (values[0], values[RUNS / 2], values[RUNS - 1]);
        if json {
            println!(
                "{{\"id\": \"{}\", \"unit\": \"{}\", \"min\": {min:.3}, \"median\": {median:.3}, \"max\": {max:.3}, \"n\": {RUNS}}}",
                w.id, w.unit
            );
        } else {
            println!(
                "{:<20} {min:>14.2} {median:>14.2} {max:>14.2}  {}",
                w.id, w.unit
            );
        }
    }
    Ok(())
}

/// One run of `w` on a fresh node (in this process); its figure.
async fn run_once(w: &Workload) -> anyhow::Result<f64> {
    let max_services = if w.id == "max-services" {
        pool_size_for_max_services()
    } else {
        pool_size(20_000)
    };
    let limits = Limits {
        max_services,
        cpu_budget_ms: 600_000,
        ..Limits::default()
    };
    let node = match w.topology {
        Topology::Single => BenchNode::start(limits)?,
        Topology::Harbor => BenchNode::start_harbor(limits).await?,
        Topology::Cluster => BenchNode::start_cluster(limits).await?,
        Topology::Tenants => BenchNode::start_tenants(limits)?,
    };
    let value = (w.run)(&node)
        .await
        .with_context(|| format!("benchmark {}", w.id))?;
    node.stop().await;
    Ok(value)
}

/// Two threads ping-pong 16 bytes over loopback TCP with blocking reads:
/// the floor every cross-node round trip is read against.
async fn tcp_floor() -> anyhow::Result<f64> {
    tokio::task::spawn_blocking(|| -> anyhow::Result<f64> {
        const ROUNDS: usize = 50_000;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; 16];
            for _ in 0..ROUNDS {
                s.read_exact(&mut buf)?;
                s.write_all(&buf)?;
            }
            Ok(())
        });
        let mut c = TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        let mut buf = [7u8; 16];
        let mut worst = Duration::ZERO;
        let mut times = Vec::with_capacity(ROUNDS);
        let start = Instant::now();
        for _ in 0..ROUNDS {
            let round = Instant::now();
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            let took = round.elapsed();
            worst = worst.max(took);
            times.push(took);
        }
        let elapsed = start.elapsed();
        times.sort_unstable();
        eprintln!(
            "tcp-floor: worst {} µs, p99 {} µs",
            worst.as_micros(),
            times[ROUNDS * 99 / 100].as_micros()
        );
        server
            .join()
            .map_err(|_| anyhow::anyhow!("tcp server thread panicked"))??;
        Ok(elapsed.as_secs_f64() * 1e6 / ROUNDS as f64)
    })
    .await?
}

/// One sender service sends `n` 16-byte messages to one receiver service;
/// the clock stops when the receiver has handled the last one.
async fn local_oneway(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let sink = b.spawn("testkit").await?;
    let sender = b.spawn("testkit").await?;
    oneway(b, sender, sink, n).await
}

/// `local-oneway` with the receiver on harbor 2.
async fn harbor_oneway(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let sink = b.spawn_remote("testkit").await?;
    let sender = b.spawn("testkit").await?;
    oneway(b, sender, sink, n).await
}

async fn oneway(b: &BenchNode, sender: Address, sink: Address, n: u32) -> anyhow::Result<f64> {
    let counter = if sink.harbor() == b.node.harbor_id() {
        &b.client
    } else {
        b.peer_client
            .as_ref()
            .context("no client on the sink's node")?
    };
    let send = |n: u32| Command::SendLoop {
        target: sink.0,
        n,
        payload: vec![0u8; 16],
    };
    send_and_count(b, sender, counter, sink, n, send).await
}

/// Warms up with 1,000 messages, then times `n`: from the first send to the
/// sink having counted the last.
async fn send_and_count(
    b: &BenchNode,
    sender: Address,
    counter: &Client,
    sink: Address,
    n: u32,
    send: impl Fn(u32) -> Command,
) -> anyhow::Result<f64> {
    b.command(sender, &send(1_000)).await?;
    wait_count(counter, sink, 1_000).await?;
    let start = Instant::now();
    b.command(sender, &send(n)).await?;
    wait_count(counter, sink, 1_000 + u64::from(n)).await?;
    Ok(f64::from(n) / start.elapsed().as_secs_f64())
}

async fn wait_count(client: &Client, sink: Address, n: u64) -> anyhow::Result<()> {
    loop {
        match command_via(client, sink, &Command::Count).await? {
            Reply::Count(c) if c >= n => return Ok(()),
            Reply::Count(_) => tokio::time::sleep(Duration::from_micros(200)).await,
            r => bail!("Count answered {r:?}"),
        }
    }
}

/// One caller service makes `n` sequential `Echo` calls to one testkit service.
async fn local_call_rtt(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let echo = b.spawn("testkit").await?;
    let caller = b.spawn("testkit").await?;
    call_rtt(b, caller, echo, n).await
}

/// `local-call-rtt` with the server on harbor 2, each call timed by the
/// caller: the figure is the median; the worst and p99 are logged.
async fn harbor_call_rtt(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let echo = b.spawn_remote("testkit").await?;
    let caller = b.spawn("testkit").await?;
    call_rtt(b, caller, echo, 2_000).await?;
    let command = Command::CallLoopTimed {
        target: echo.0,
        n,
        payload: vec![0u8; 16],
    };
    let Reply::Order(mut times) = b.command(caller, &command).await? else {
        bail!("CallLoopTimed answered something else");
    };
    anyhow::ensure!(
        times.len() == n as usize,
        "timed {} of {n} calls",
        times.len()
    );
    times.sort_unstable();
    eprintln!(
        "harbor-call-rtt: worst {} µs, p99 {} µs",
        times[times.len() - 1],
        times[times.len() * 99 / 100]
    );
    Ok(f64::from(times[times.len() / 2]))
}

async fn call_rtt(b: &BenchNode, caller: Address, echo: Address, n: u32) -> anyhow::Result<f64> {
    let payload = vec![0u8; 16];
    b.command(
        caller,
        &Command::CallLoop {
            target: echo.0,
            n: 10_000,
            payload: payload.clone(),
        },
    )
    .await?;
    let start = Instant::now();
    b.command(
        caller,
        &Command::CallLoop {
            target: echo.0,
            n,
            payload,
        },
    )
    .await?;
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

/// `callers` services each make `per_caller` sequential `Echo` calls to one testkit service.
async fn local_concurrent(b: &BenchNode, callers: u32, per_caller: u32) -> anyhow::Result<f64> {
    let echo = b.spawn("testkit").await?;
    concurrent(b, echo, callers, per_caller).await
}

/// `local-concurrent` with the server on harbor 2.
async fn harbor_concurrent(b: &BenchNode, callers: u32, per_caller: u32) -> anyhow::Result<f64> {
    let echo = b.spawn_remote("testkit").await?;
    concurrent(b, echo, callers, per_caller).await
}

async fn concurrent(
    b: &BenchNode,
    echo: Address,
    callers: u32,
    per_caller: u32,
) -> anyhow::Result<f64> {
    let command = Command::CallLoop {
        target: echo.0,
        n: per_caller,
        payload: vec![0u8; 16],
    };
    callers_loop(b, callers, per_caller, &command).await
}

/// `callers` testkit services on this node each run `command` (a loop of
/// `per_caller` calls) at once; the figure is calls per second.
async fn callers_loop(
    b: &BenchNode,
    callers: u32,
    per_caller: u32,
    command: &Command,
) -> anyhow::Result<f64> {
    let mut addrs = Vec::new();
    for _ in 0..callers {
        addrs.push(b.spawn("testkit").await?);
    }
    let start = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for c in addrs {
        let client = b.node.client();
        let command = command.clone();
        calls.spawn(async move { command_via(&client, c, &command).await });
    }
    while let Some(r) = calls.join_next().await {
        r??;
    }
    Ok(f64::from(callers * per_caller) / start.elapsed().as_secs_f64())
}

/// A service spawns `n` echo services; each spawn ends when the new
/// service's `init` has returned ("ready").
async fn spawn(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    spawn_of(b, "echo", 100, n).await
}

/// Microseconds per service to spawn `n` of `module` at once (after
/// `warm` of them, which compile and warm it), from a testkit.
async fn spawn_of(b: &BenchNode, module: &str, warm: u32, n: u32) -> anyhow::Result<f64> {
    let spawner = b.spawn("testkit").await?;
    let many = |n| Command::SpawnMany {
        module: module.into(),
        n,
    };
    b.command(spawner, &many(warm)).await?;
    let start = Instant::now();
    let Reply::Addresses(a) = b.command(spawner, &many(n)).await? else {
        bail!("SpawnMany answered something else");
    };
    let elapsed = start.elapsed();
    anyhow::ensure!(a.len() == n as usize, "spawned {} of {n}", a.len());
    Ok(elapsed.as_secs_f64() * 1e6 / f64::from(n))
}

/// Resident memory growth per idle live echo service, at `n` services.
async fn rss_per_service(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    rss_of(b, "echo", n).await
}

/// Resident memory growth (KiB) per live service at `n` services of
/// `module`, each having answered a call.
async fn rss_of(b: &BenchNode, module: &str, n: u32) -> anyhow::Result<f64> {
    let spawner = b.spawn("testkit").await?;
    let many = |n| Command::SpawnMany {
        module: module.into(),
        n,
    };
    b.command(spawner, &many(10)).await?;
    let before = rss_kib()?;
    let Reply::Addresses(a) = b.command(spawner, &many(n)).await? else {
        bail!("SpawnMany answered something else");
    };
    // Every service has answered a call, so its instance has run.
    for &addr in &a {
        b.client.call(Address(addr), vec![1]).await?;
    }
    let after = rss_kib()?;
    Ok((after - before) / f64::from(n))
}

/// Round trip (µs) of `n` sequential calls from a testkit service to a
/// service of `module` (an echo: the payload comes back as it went), after
/// a warm-up; as `local-call-rtt`, service to service.
async fn call_rtt_of(b: &BenchNode, module: &str, n: u32) -> anyhow::Result<f64> {
    let echo = b.spawn(module).await?;
    let caller = b.spawn("testkit").await?;
    let calls = |n| Command::RawCallLoop {
        target: echo.0,
        n,
        payload: vec![7u8; 16],
    };
    let check = |r: Reply| match r {
        Reply::Unit => Ok(()),
        r => Err(anyhow::anyhow!("RawCallLoop answered {r:?}")),
    };
    check(b.command(caller, &calls(1_000)).await?)?;
    let start = Instant::now();
    check(b.command(caller, &calls(n)).await?)?;
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

fn rss_kib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib)
}

/// The host pings an echo service `pings` times while `spinners` services
/// spin; the figure is the median round trip (the worst is logged).
async fn ping_under_spin(b: &BenchNode, spinners: u32, pings: u32) -> anyhow::Result<f64> {
    let target = b.spawn("testkit").await?;
    let prober = b.spawn("testkit").await?;
    // The same pings with nothing spinning, for comparison.
    let idle = ping_times(b, prober, target, pings).await?;
    let mut spinning = Vec::new();
    let mut spins = tokio::task::JoinSet::new();
    for _ in 0..spinners {
        let s = b.spawn("testkit").await?;
        let client = b.node.client();
        spins.spawn(async move { command_via(&client, s, &Command::Spin).await });
        spinning.push(s);
    }
    let times = ping_times(b, prober, target, pings).await?;
    for s in spinning {
        b.node.kill(s);
    }
    while let Some(r) = spins.join_next().await {
        anyhow::ensure!(r?.is_err(), "a spinner answered");
    }
    let tail = |t: &[f64]| (t[t.len() - 1], t[t.len() * 99 / 100]);
    let ((worst, p99), (idle_worst, idle_p99)) = (tail(&times), tail(&idle));
    eprintln!(
        "ping-under-spin: worst {worst:.0} µs, p99 {p99:.0} µs; \
         idle: median {:.0} µs, worst {idle_worst:.0} µs, p99 {idle_p99:.0} µs",
        idle[idle.len() / 2]
    );
    Ok(times[times.len() / 2])
}

/// Round trips (µs, sorted) of `n` sequential calls from service `prober`
/// to service `target`, each timed by the prober: a ping as a service sees
/// it (a client on a thread outside the node would also wait for the OS to
/// give it a CPU that the spinning workers hold).
async fn ping_times(
    b: &BenchNode,
    prober: Address,
    target: Address,
    n: u32,
) -> anyhow::Result<Vec<f64>> {
    let command = Command::CallLoopTimed {
        target: target.0,
        n,
        payload: vec![0u8; 16],
    };
    let Reply::Order(times) = b.command(prober, &command).await? else {
        bail!("CallLoopTimed answered something else");
    };
    anyhow::ensure!(times.len() == n as usize, "timed {} of {n}", times.len());
    let mut times: Vec<f64> = times.into_iter().map(f64::from).collect();
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Spawns echo services in batches until `target` live or a spawn fails;
/// the figure is how many were alive at once (each answered a call).
async fn max_services(b: &BenchNode, target: u32) -> anyhow::Result<f64> {
    let spawner = b.spawn("testkit").await?;
    let mut alive: Vec<u32> = Vec::new();
    let rss_before = rss_kib()?;
    while (alive.len() as u32) < target {
        let n = 1_000.min(target - alive.len() as u32);
        match b
            .command(
                spawner,
                &Command::SpawnMany {
                    module: "echo".into(),
                    n,
                },
            )
            .await
        {
            Ok(Reply::Addresses(a)) => alive.extend(a),
            Ok(r) => bail!("SpawnMany answered {r:?}"),
            Err(e) => {
                eprintln!("max-services: stopped at {} services: {e:#}", alive.len());
                break;
            }
        }
    }
    for &a in &alive {
        b.client.call(Address(a), vec![1]).await?;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    eprintln!(
        "max-services: {} alive, RSS grew {:.0} MiB, {maps} memory maps",
        alive.len(),
        (rss_kib()? - rss_before) / 1024.0
    );
    // Services of a spawn batch that failed part way are alive too.
    Ok(b.node.service_count().saturating_sub(1) as f64)
}

/// The pool for `max-services`: automatic (100,000, or what
/// `vm.max_map_count` allows), saying so when the map count is the limit.
fn pool_size_for_max_services() -> u32 {
    if let Some((allowed, maps)) = skyhost::config::services_allowed_by_map_count()
        && allowed < u64::from(skyhost::config::DEFAULT_MAX_SERVICES)
    {
        eprintln!(
            "max-services: vm.max_map_count = {maps} allows about {allowed} services; \
             raise it (sysctl -w vm.max_map_count={}) to try 100,000",
            skyhost::config::map_count_for(skyhost::config::DEFAULT_MAX_SERVICES)
        );
    }
    // Automatic: 100,000, or what the map count allows.
    0
}

/// `wanted` services, or fewer where `vm.max_map_count` cannot map them.
fn pool_size(wanted: u32) -> u32 {
    match skyhost::config::services_allowed_by_map_count() {
        Some((allowed, _)) => u32::try_from(allowed.min(u64::from(wanted))).unwrap_or(wanted),
        None => wanted,
    }
}

/// Registers a fresh testkit service on cluster node `b` as `name`.
async fn cluster_service(b: &BenchNode, name: &str) -> anyhow::Result<Address> {
    let peer = b.peer.as_ref().context("not a cluster workload")?;
    let kit = peer.spawn("testkit", &[]).await?;
    peer.cluster_register(name, kit);
    Ok(kit)
}

fn cluster_echo_loop(n: u32, timed: bool) -> Command {
    Command::ClusterCallLoop {
        node: "b".into(),
        target: skyhost_test_proto::ClusterTarget::Name("echo".into()),
        n,
        payload: vec![0u8; 16],
        timed,
    }
}

/// Sequential cluster calls by name from a service on `a` to one on `b`,
/// each timed by the caller: the figure is the median.
async fn cluster_call_rtt(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    cluster_service(b, "echo").await?;
    let caller = b.spawn("testkit").await?;
    b.command(caller, &cluster_echo_loop(2_000, false)).await?;
    let Reply::Order(mut times) = b.command(caller, &cluster_echo_loop(n, true)).await? else {
        bail!("ClusterCallLoop answered something else");
    };
    anyhow::ensure!(
        times.len() == n as usize,
        "timed {} of {n} calls",
        times.len()
    );
    times.sort_unstable();
    eprintln!(
        "cluster-call-rtt: worst {} µs, p99 {} µs",
        times[times.len() - 1],
        times[times.len() * 99 / 100]
    );
    Ok(f64::from(times[times.len() / 2]))
}

/// A service on `a` sends `n` 16-byte messages by name to a service on `b`;
/// the clock stops when the receiver has counted the last.
async fn cluster_oneway(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let sink = cluster_service(b, "sink").await?;
    let sender = b.spawn("testkit").await?;
    let counter = b.peer_client.as_ref().context("no client on b")?;
    let send = |n: u32| Command::ClusterSendLoop {
        node: "b".into(),
        target: skyhost_test_proto::ClusterTarget::Name("sink".into()),
        n,
        payload: vec![0u8; 16],
    };
    send_and_count(b, sender, counter, sink, n, send).await
}

/// `callers` services on `a` each make `per_caller` sequential cluster
/// calls to one service on `b`.
async fn cluster_concurrent(b: &BenchNode, callers: u32, per_caller: u32) -> anyhow::Result<f64> {
    cluster_service(b, "echo").await?;
    callers_loop(
        b,
        callers,
        per_caller,
        &cluster_echo_loop(per_caller, false),
    )
    .await
}

/// Calls per second through `call_group` (3 members on `b`, round robin)
/// over calls per second straight to one service on `b`, `n` each, from a
/// service on `a`.
async fn group_call(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let peer = b.peer.as_ref().context("not a cluster workload")?;
    let peer_client = b.peer_client.as_ref().context("no client on b")?;
    for _ in 0..3 {
        let member = peer.spawn("testkit", &[]).await?;
        let join = Command::GroupJoin {
            group: "bench".into(),
            policy: 0,
        };
        command_via(peer_client, member, &join).await?;
    }
    cluster_service(b, "echo").await?;
    let start = Instant::now();
    while b.client.group_members("bench").len() < 3 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the members never reached a"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let caller = b.spawn("testkit").await?;
    let grouped = |n: u32| Command::GroupCallLoop {
        group: "bench".into(),
        n,
        payload: vec![0u8; 16],
    };
    b.command(caller, &grouped(1_000)).await?;
    b.command(caller, &cluster_echo_loop(1_000, false)).await?;
    let start = Instant::now();
    b.command(caller, &grouped(n)).await?;
    let through_group = f64::from(n) / start.elapsed().as_secs_f64();
    let start = Instant::now();
    b.command(caller, &cluster_echo_loop(n, false)).await?;
    let direct = f64::from(n) / start.elapsed().as_secs_f64();
    eprintln!("group-call: {through_group:.0} calls/s through the group, {direct:.0} direct");
    Ok(through_group / direct)
}

/// A publisher on this node publishes `publishes` messages on a channel made
/// here with `subscribers` subscribers (on harbor 2 when `remote`); the
/// clock stops when every subscriber has counted every message.
async fn multicast(
    b: &BenchNode,
    remote: bool,
    subscribers: u32,
    publishes: u32,
) -> anyhow::Result<f64> {
    let owner = b.spawn("testkit").await?;
    let Reply::Count(channel) = b.command(owner, &Command::McNew(None)).await? else {
        bail!("McNew answered something else");
    };
    let channel = u32::try_from(channel)?;
    let (spawner, client) = if remote {
        let peer = b.peer.as_ref().context("not a harbor workload")?;
        let client = b.peer_client.as_ref().context("no client on harbor 2")?;
        (peer.spawn("testkit", &[]).await?, client)
    } else {
        (b.spawn("testkit").await?, &b.client)
    };
    let spawn = Command::SpawnMany {
        module: "testkit".into(),
        n: subscribers,
    };
    let Reply::Addresses(subs) = command_via(client, spawner, &spawn).await? else {
        bail!("SpawnMany answered something else");
    };
    for &s in &subs {
        command_via(client, Address(s), &Command::McSubscribe(channel)).await?;
    }
    // The last Subscribe went to the owner before this call on the same link.
    command_via(client, owner, &Command::HarborId).await?;
    let publisher = b.spawn("testkit").await?;
    let start = Instant::now();
    let publish = Command::McPublishSeq {
        channel,
        tag: 1,
        n: publishes,
    };
    b.command(publisher, &publish).await?;
    for &s in &subs {
        wait_count(client, Address(s), u64::from(publishes)).await?;
    }
    Ok(f64::from(subscribers) * f64::from(publishes) / start.elapsed().as_secs_f64())
}

/// `local-call-rtt` (`calls`) and `local-oneway` (`messages`) in tenant
/// `t0` of a node with 100 tenants, against the same in a fresh node with
/// only `system` (measured before and after, and averaged); the figure is
/// the worse of the two ratios (time per call, time per message).
async fn tenant_overhead(b: &BenchNode, calls: u32, messages: u32) -> anyhow::Result<f64> {
    let mut base_rtt = 0.0;
    let mut base_rate = 0.0;
    for _ in 0..2 {
        let single = BenchNode::start(b.limits.clone())?;
        base_rtt += local_call_rtt(&single, calls).await? / 2.0;
        base_rate += local_oneway(&single, messages).await? / 2.0;
        single.stop().await;
    }
    let rtt = local_call_rtt(b, calls).await?;
    let rate = local_oneway(b, messages).await?;
    let (rtt_ratio, rate_ratio) = (rtt / base_rtt, base_rate / rate);
    eprintln!(
        "tenant-overhead: call {rtt:.2} µs vs {base_rtt:.2} ({rtt_ratio:.3}), \
         oneway {rate:.0} vs {base_rate:.0} msgs/s ({rate_ratio:.3})"
    );
    Ok(rtt_ratio.max(rate_ratio))
}

/// Tenant `t1`'s ping round trip (host client of `t1` to its echo) while
/// tenant `t0` spins `spinners` services and floods one of its mailboxes;
/// the figure is the median, the worst and the idle median are logged.
async fn tenant_fairness(b: &BenchNode, spinners: u32, pings: usize) -> anyhow::Result<f64> {
    let quiet = b.node.client_in("t1").context("tenant t1")?;
    let echo = b.node.spawn_in("t1", "echo", &[]).await?;
    let ping = |n: usize| {
        let (quiet, echo) = (&quiet, echo);
        async move {
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let start = Instant::now();
                quiet.call(echo, vec![0u8; 16]).await?;
                times.push(start.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(f64::total_cmp);
            anyhow::Ok(times)
        }
    };
    let idle = ping(pings).await?;
    let mut spinning = Vec::new();
    let spin = postcard::to_allocvec(&Command::Spin)?;
    for _ in 0..spinners {
        let s = b.spawn("testkit").await?;
        b.client.send(s, skyhost::kind::REQUEST, 1, spin.clone())?;
        spinning.push(s);
    }
    // The flood: a host client of `t0` keeps one of its mailboxes full
    // (at most 10,000 queued) while the pings run.
    let sink = b.spawn("testkit").await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let flood = {
        let (node, stop) = (b.node.clone(), stop.clone());
        let noisy = node.client_in("t0").context("tenant t0")?;
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                while node.mailbox_len(sink).unwrap_or(0) < 10_000 {
                    if noisy.send(sink, 0, 0, vec![0u8; 16]).is_ok() {
                        sent += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            sent
        })
    };
    let times = ping(pings).await;
    stop.cancel();
    let flooded = flood.await?;
    let times = times?;
    for s in spinning {
        b.node.kill(s);
    }
    eprintln!("tenant-fairness: {flooded} messages flooded into tenant t0");
    eprintln!(
        "tenant-fairness: idle median {:.1} µs; under load median {:.1} µs, p99 {:.1} µs, worst {:.1} µs",
        idle[idle.len() / 2],
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1]
    );
    Ok(times[times.len() / 2])
}

/// The `counter` service's two versions, alternately.
fn counter_version(i: usize) -> anyhow::Result<std::path::PathBuf> {
    let dir = skyhost::bundled_modules().context("this build has no bundled services")?;
    Ok(dir.join(if i.is_multiple_of(2) {
        "counter_v2.wasm"
    } else {
        "counter.wasm"
    }))
}

/// Upgrades one `counter` `n` times between its two versions; the figure is
/// the median time it handled no message (saving its state, instantiating
/// the new version, loading the state); the worst is logged. The new
/// module is compiled (from the disk cache) before each upgrade starts.
async fn upgrade_pause(b: &BenchNode, n: usize) -> anyhow::Result<f64> {
    let counter = b.spawn("counter").await?;
    let target = counter.to_string();
    let mut pauses = Vec::with_capacity(n);
    for i in 0..n {
        let reports = b
            .node
            .upgrade(&target, &counter_version(i)?, Duration::from_secs(5))
            .await?;
        let upgraded = reports.into_iter().next().context("one report")?.result?;
        pauses.push(upgraded.pause.as_secs_f64() * 1e6);
    }
    pauses.sort_by(f64::total_cmp);
    eprintln!(
        "upgrade-pause: worst {:.1} µs of {n}",
        pauses[pauses.len() - 1]
    );
    Ok(pauses[pauses.len() / 2])
}

/// A testkit sends `messages` to a `counter`, once untouched and once while
/// the counter is upgraded every 100 ms; the figure is the second rate
/// over the first.
async fn upgrade_throughput(b: &BenchNode, messages: u32) -> anyhow::Result<f64> {
    let mut rates = Vec::with_capacity(2);
    for upgrading in [false, true] {
        let counter = b.spawn("counter").await?;
        let sender = b.spawn("testkit").await?;
        let target = counter.to_string();
        let send = postcard::to_allocvec(&Command::SendLoop {
            target: counter.0,
            n: messages,
            payload: vec![9, 1, 0, 0, 0],
        })?;
        let start = Instant::now();
        let sending = {
            let client = b.node.client();
            tokio::spawn(async move { client.call(sender, send).await })
        };
        let stop = tokio_util::sync::CancellationToken::new();
        // Upgrades on their own task, every 100 ms from the first send.
        let upgrader = {
            let (node, stop) = (b.node.clone(), stop.clone());
            tokio::spawn(async move {
                let mut upgrades = 0;
                if !upgrading {
                    return anyhow::Ok(upgrades);
                }
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + Duration::from_millis(100),
                    Duration::from_millis(100),
                );
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let reports = node
                        .upgrade(&target, &counter_version(upgrades)?, Duration::from_secs(5))
                        .await?;
                    for r in reports {
                        r.result?;
                    }
                    upgrades += 1;
                }
                anyhow::Ok(upgrades)
            })
        };
        loop {
            let got = b.client.call(counter, b"g".to_vec()).await?;
            let total = got
                .get(1..9)
                .and_then(|t| <[u8; 8]>::try_from(t).ok())
                .map(u64::from_le_bytes)
                .context("counter answer")?;
            if total >= u64::from(messages) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let rate = f64::from(messages) / start.elapsed().as_secs_f64();
        stop.cancel();
        let upgrades = upgrader.await??;
        sending.await??;
        if upgrading {
            eprintln!(
                "upgrade-throughput: {:.0} msgs/s never upgraded, {rate:.0} msgs/s with {upgrades} upgrades",
                rates[0]
            );
        }
        rates.push(rate);
    }
    Ok(rates[1] / rates[0])
}
