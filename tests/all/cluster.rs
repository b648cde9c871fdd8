//! Cluster nodes: in this process over loopback, and real `skyhost` processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use skyhost::cluster::proto::Target;
use skyhost::config::ClusterNodeConfig;
use skyhost::{CallError, ErrorCause, Node};
use skyhost_test_proto::ClusterTarget;

use crate::support::{
    Command, DEADLINE, Proc, Reply, TestNode, command_via, log_field, test_config, within,
};

pub(crate) const SECRET: &str = "cluster test secret";

/// A node in a cluster, listening on an OS-picked port, reading `config`.
pub(crate) async fn launch(
    name: &str,
    config: Option<&Path>,
    compression: bool,
) -> anyhow::Result<TestNode> {
    launch_at(name, "127.0.0.1:0", config, compression).await
}

/// A node in a cluster, listening at `listen`, reading `config`.
async fn launch_at(
    name: &str,
    listen: &str,
    config: Option<&Path>,
    compression: bool,
) -> anyhow::Result<TestNode> {
    let mut cluster = ClusterNodeConfig::new(name, SECRET);
    cluster.listen = Some(listen.into());
    cluster.config = config.map(Path::to_path_buf);
    cluster.compression = compression;
    cluster.heartbeat_ms = 200;
    cluster.dead_after_ms = 1_000;
    let mut node_config = test_config();
    node_config.cluster = Some(cluster);
    node_config.limits.max_services = 256;
    let node = within(Node::launch(&node_config))
        .await?
        .with_context(|| format!("launch cluster node {name}"))?;
    let client = node.client();
    Ok(TestNode { node, client })
}

pub(crate) fn listen_of(t: &TestNode) -> String {
    t.node.cluster_listening()[0].to_string()
}

/// A cluster config naming each node at its address.
pub(crate) fn table(nodes: &[(&str, &TestNode)]) -> String {
    nodes
        .iter()
        .map(|(n, t)| format!("{n} = \"{}\"\n", listen_of(t)))
        .collect()
}

fn by_name(name: &str) -> Target {
    Target::Name(name.into())
}

fn echo(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(postcard::to_allocvec(&Command::Echo(bytes.to_vec()))?)
}

fn reply(bytes: &[u8]) -> anyhow::Result<Reply> {
    Ok(postcard::from_bytes(bytes)?)
}

pub(crate) fn failed_with<T: std::fmt::Debug>(
    result: Result<T, CallError>,
    cause: ErrorCause,
) -> String {
    match result {
        Err(CallError::Failed { cause: c, detail }) if c == cause => detail,
        other => panic!("expected an error with cause {cause:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_send_proxy_register_and_query_between_three_nodes() -> anyhow::Result<()> {
    let a = launch("a", None, false).await?;
    let b = launch("b", None, false).await?;
    let c = launch("c", None, true).await?;
    let text = table(&[("a", &a), ("b", &b), ("c", &c)]);
    for t in [&a, &b, &c] {
        t.node.cluster_reload(&text).map_err(anyhow::Error::msg)?;
    }
    let kit_b = b.spawn("testkit").await?;
    let kit_c = c.spawn("testkit").await?;
    assert_eq!(
        b.command(kit_b, &Command::ClusterRegister("store".into()))
            .await?,
        Reply::Unit
    );
    c.node.cluster_register("kitc", kit_c);

    // From the host of a: by name and by address.
    let by_name_reply = a
        .client
        .cluster_call("b", by_name("store"), echo(b"n")?, None)
        .await?;
    assert_eq!(reply(&by_name_reply)?, Reply::Bytes(b"n".to_vec()));
    let found = a.client.cluster_query("c", "kitc").await?;
    assert_eq!(found, kit_c);
    let by_addr = a
        .client
        .cluster_call("c", Target::Address(kit_c.0), echo(b"a")?, None)
        .await?;
    assert_eq!(reply(&by_addr)?, Reply::Bytes(b"a".to_vec()));
    let missing = a.client.cluster_query("c", "nobody").await;
    failed_with(missing, ErrorCause::UnknownAddress);
    let unknown = a
        .client
        .cluster_call("b", by_name("nobody"), echo(b"x")?, None)
        .await;
    assert!(failed_with(unknown, ErrorCause::UnknownAddress).contains("nobody"));

    // From a service on a: call, query, send, proxy.
    let kit_a = a.spawn("testkit").await?;
    let via = Command::ClusterCall {
        node: "c".into(),
        target: ClusterTarget::Name("kitc".into()),
        command: Box::new(Command::Echo(vec![7; 5000])),
        timeout_ms: 5_000,
    };
    assert_eq!(a.command(kit_a, &via).await?, Reply::Bytes(vec![7; 5000]));
    let q = Command::ClusterQuery {
        node: "b".into(),
        name: "store".into(),
    };
    assert_eq!(a.command(kit_a, &q).await?, Reply::Address(kit_b.0));
    let before = match b.command(kit_b, &Command::Count).await? {
        Reply::Count(n) => n,
        r => anyhow::bail!("Count answered {r:?}"),
    };
    let send = Command::ClusterSend {
        node: "b".into(),
        target: ClusterTarget::Address(kit_b.0),
        payload: b"hello".to_vec(),
    };
    assert_eq!(a.command(kit_a, &send).await?, Reply::Unit);
    let start = Instant::now();
    while b.command(kit_b, &Command::Count).await? != Reply::Count(before + 1) {
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "the cluster send did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A send to a service b does not have is accepted (a send has no
    // answer), and b counts it (and logs it, at most once a second).
    assert_eq!(b.node.cluster_sends_undelivered(), 0);
    let lost = Command::ClusterSend {
        node: "b".into(),
        target: ClusterTarget::Name("nobody".into()),
        payload: b"lost".to_vec(),
    };
    assert_eq!(a.command(kit_a, &lost).await?, Reply::Unit);
    crate::support::eventually("b counts the send it could not deliver", || {
        b.node.cluster_sends_undelivered() == 1
    })
    .await?;
    let proxy = Command::ClusterProxy {
        node: "c".into(),
        target: ClusterTarget::Name("kitc".into()),
    };
    let Reply::Address(proxy) = a.command(kit_a, &proxy).await? else {
        anyhow::bail!("no proxy address");
    };
    // A call to the proxy (a local address of node a) runs on c's service:
    // the name it registers appears on node c.
    let listed = a.node.services();
    assert!(
        listed.contains(&(skyhost::Address(proxy), "cluster-proxy".into())),
        "{listed:?}"
    );
    let through = Command::Call {
        target: proxy,
        command: Box::new(Command::Register(".proxied".into())),
    };
    assert_eq!(a.command(kit_a, &through).await?, Reply::Unit);
    assert_eq!(c.node.query(".proxied"), Some(kit_c));
    assert_eq!(a.node.query(".proxied"), None);

    for t in [c, b, a] {
        t.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_nodes_wait_for_a_reload_and_offline_nodes_fail_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cluster.conf");
    std::fs::write(&file, "-- nothing yet\n")?;
    let a = launch("a", Some(&file), false).await?;
    let b = launch("b", None, false).await?;
    let kit_b = b.spawn("testkit").await?;
    b.node.cluster_register("kit", kit_b);

    // Not in the config: the call waits...
    let waiting = {
        let client = a.node.client();
        let payload = echo(b"later")?;
        tokio::spawn(async move {
            client
                .cluster_call("b", by_name("kit"), payload, None)
                .await
        })
    };
    // ...and a call with its own timeout ends with Timeout.
    let timed = a
        .client
        .cluster_call(
            "b",
            by_name("kit"),
            echo(b"t")?,
            Some(Duration::from_millis(100)),
        )
        .await;
    failed_with(timed, ErrorCause::Timeout);
    assert!(!waiting.is_finished());
    // Rewriting the file (watched) lets the waiting call go.
    std::fs::write(&file, format!("-- now\nb = \"{}\"\n", listen_of(&b)))?;
    let answered = within(waiting).await???;
    assert_eq!(reply(&answered)?, Reply::Bytes(b"later".to_vec()));

    // `false`: fails at once, naming the node; `__nowaiting`: unknown fails at once.
    // Through the watched file too: a reload by hand could be overtaken by
    // the watcher's late reload of the previous rewrite.
    std::fs::write(&file, "b = false\n__nowaiting = true\n")?;
    let offline = within(async {
        loop {
            let call = a
                .client
                .cluster_call("b", by_name("kit"), echo(b"x")?, None);
            match call.await {
                Err(e) if e.cause() == Some(ErrorCause::NodeDown) => return anyhow::Ok(e),
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await??;
    assert!(offline.to_string().contains("`b`"), "{offline}");
    let unknown = within(
        a.client
            .cluster_call("zed", by_name("kit"), echo(b"x")?, None),
    )
    .await?;
    assert!(failed_with(unknown, ErrorCause::UnknownAddress).contains("`zed`"));
    b.stop().await;
    a.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_mib_crosses_compressed_or_not_while_small_calls_answer() -> anyhow::Result<()> {
    for compression in [false, true] {
        let a = launch("a", None, compression).await?;
        let b = launch("b", None, compression).await?;
        a.node
            .cluster_reload(&table(&[("b", &b)]))
            .map_err(anyhow::Error::msg)?;
        let big_echo = b.spawn("echo").await?;
        let small_echo = b.spawn("echo").await?;
        b.node.cluster_register("big", big_echo);
        b.node.cluster_register("small", small_echo);
        // Compressible but not trivial: a repeating pattern with a counter.
        let big: Vec<u8> = (0..16u32 << 20).map(|i| ((i / 7) % 251) as u8).collect();
        let big_call = a
            .client
            .cluster_call("b", by_name("big"), big.clone(), None);
        let mut big_call = Box::pin(big_call);
        let mut small = 0;
        let back = loop {
            tokio::select! {
                r = &mut big_call => break r?,
                r = a.client.cluster_call("b", by_name("small"), b"s".to_vec(), None) => {
                    assert_eq!(r?, b"s");
                    small += 1;
                }
            }
        };
        drop(big_call);
        assert!(
            back == big,
            "16 MiB came back intact (compression {compression})"
        );
        println!("compression {compression}: {small} small calls answered beside 16 MiB");
        assert!(small > 0);
        b.stop().await;
        a.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_its_own_cluster_link() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = launch("a", None, false).await?;
    let b = launch("b", None, false).await?;
    a.node
        .cluster_reload(&table(&[("b", &b)]))
        .map_err(anyhow::Error::msg)?;
    let kit_b = b.spawn("testkit").await?;
    b.node.cluster_register("kit", kit_b);
    assert!(
        a.client
            .cluster_call("b", by_name("kit"), echo(b"1")?, None)
            .await
            .is_ok()
    );
    let mut bad = tokio::net::TcpStream::connect(listen_of(&b)).await?;
    bad.write_all(&[
        0x10, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ])
    .await?;
    let mut rest = Vec::new();
    let _ = within(bad.read_to_end(&mut rest)).await?;
    let again = a
        .client
        .cluster_call("b", by_name("kit"), echo(b"2")?, None)
        .await?;
    assert_eq!(reply(&again)?, Reply::Bytes(b"2".to_vec()));
    b.stop().await;
    a.stop().await;
    Ok(())
}

/// Node `b` with a testkit registered as `kit` (its address), and a link
/// to it that the test speaks itself.
pub(crate) async fn node_with_a_raw_link() -> anyhow::Result<(
    TestNode,
    skyhost::Address,
    skyhost::transport::Connection<
        skyhost::cluster::proto::Control,
        skyhost::cluster::proto::Header,
    >,
)> {
    use skyhost::cluster::proto::{Control, Header, PROTOCOL};
    use skyhost::transport::{Connection, LinkConfig};
    let b = launch("b", None, false).await?;
    let kit = b.spawn("testkit").await?;
    b.node.cluster_register("kit", kit);
    let config = LinkConfig::new(PROTOCOL, "raw", SECRET.as_bytes().into());
    let conn = within(Connection::<Control, Header>::connect(
        &listen_of(&b),
        config,
    ))
    .await??;
    Ok((b, kit, conn))
}

/// What a raw link hears back, for tests that speak the wire themselves.
pub(crate) struct Heard(
    pub(crate) tokio::sync::mpsc::UnboundedSender<(skyhost::cluster::proto::Header, Vec<u8>)>,
);

impl
    skyhost::transport::LinkHandler<
        skyhost::cluster::proto::Control,
        skyhost::cluster::proto::Header,
    > for Heard
{
    fn on_message(&mut self, header: skyhost::cluster::proto::Header, payload: Vec<u8>) {
        let _ = self.0.send((header, payload));
    }
    fn on_control(&mut self, _: skyhost::cluster::proto::Control) -> Result<(), String> {
        Ok(())
    }
}

/// A request naming a number its link never defined is answered with an
/// error that says so; once `Control::Name` defines it, the same number
/// reaches the named service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interned_names_hold_once_defined_on_their_link() -> anyhow::Result<()> {
    use skyhost::cluster::proto::{Control, Header};
    use skyhost::transport::Outgoing;
    let (b, _kit, mut conn) = node_with_a_raw_link().await?;
    let request = |session| Header::Request {
        tenant: skyhost::runtime::TenantId::SYSTEM.0,
        session,
        target: Target::Interned(5),
        compressed: false,
        trace: 0,
    };
    // A sender's first word on every link: its session and next number.
    conn.send(Outgoing::Control(Control::Offer {
        session: 1,
        next: 1,
        first: 1,
    }));
    conn.send(Outgoing::Message(request(1), echo(b"early")?));
    conn.send(Outgoing::Control(Control::Name {
        id: 5,
        name: "kit".into(),
    }));
    conn.send(Outgoing::Message(request(2), echo(b"defined")?));
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let (_out_tx, mut out) = tokio::sync::mpsc::unbounded_channel();
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let link = tokio::spawn(async move { conn.run(&mut out, &mut Heard(heard_tx), &stop).await });
    let mut answers = std::collections::HashMap::new();
    while answers.len() < 2 {
        let (header, payload) = within(heard.recv()).await?.context("link ended")?;
        match header {
            Header::Response { session, .. } | Header::Error { session, .. } => {
                answers.insert(session, (header, payload));
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    let (first, detail) = &answers[&1];
    assert!(matches!(first, Header::Error { .. }), "{first:?}");
    let detail = String::from_utf8_lossy(detail);
    assert!(detail.contains("name #5 was never defined"), "{detail}");
    let (second, payload) = &answers[&2];
    assert!(matches!(second, Header::Response { .. }), "{second:?}");
    assert_eq!(reply(payload)?, Reply::Bytes(b"defined".to_vec()));
    cancel.cancel();
    let _ = within(link).await?;
    b.stop().await;
    Ok(())
}

/// A node file for a real cluster process with a `testkit` bootstrap that
/// registers itself as `kit` in the cluster.
fn node_file(dir: &Path, name: &str, cluster_file: &Path, listen: &str) -> PathBuf {
    node_file_with(dir, name, cluster_file, listen, "cluster=kit")
}

/// [`node_file`] with the bootstrap testkit's own arguments.
pub(crate) fn node_file_with(
    dir: &Path,
    name: &str,
    cluster_file: &Path,
    listen: &str,
    args: &str,
) -> PathBuf {
    let text = format!(
        "module_paths = [{modules:?}]\ncache_dir = {cache:?}\nlog_level = \"info\"\n\n\
         [bootstrap]\nmodule = \"testkit\"\nargs = {args:?}\n\n\
         [limits]\nmax_services = 256\n\n\
         [cluster]\nname = {name:?}\nconfig = {config:?}\nlisten = {listen:?}\nsecret = {SECRET:?}\n\
         heartbeat_ms = 200\ndead_after_ms = 1000\n",
        modules = crate::support::guest_dir().display().to_string(),
        cache = crate::support::cache_dir().display().to_string(),
        config = cluster_file.display().to_string(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write node file");
    path
}

/// Starts a real node from `file`; returns it and its cluster address.
pub(crate) fn start_proc(file: &Path) -> (Proc, String) {
    let mut p = Proc::start([Path::new("run"), file]);
    let line = p.wait_for("cluster listening");
    let address = log_field(&line, "address").expect("listen address in the log");
    p.wait_for("bootstrap service started");
    (p, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_processes_survive_kill_stop_and_restart_of_a_peer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("cluster.conf");
    std::fs::write(&conf, "-- filled in below\n")?;
    let (mut p1, addr1) = start_proc(&node_file(dir.path(), "one", &conf, "127.0.0.1:0"));
    let (mut p2, addr2) = start_proc(&node_file(dir.path(), "two", &conf, "127.0.0.1:0"));
    // This test process is node "here"; it reads the same file.
    let here = launch("here", Some(&conf), false).await?;
    std::fs::write(
        &conf,
        format!(
            "one = \"{addr1}\"\ntwo = \"{addr2}\"\nhere = \"{}\"\n",
            listen_of(&here)
        ),
    )?;
    p1.wait_for("cluster config reloaded");
    p2.wait_for("cluster config reloaded");
    let call = |node: &'static str, cmd: Command| {
        let client = here.node.client();
        async move {
            let payload = postcard::to_allocvec(&cmd)?;
            let r = client
                .cluster_call(node, by_name("kit"), payload, None)
                .await?;
            anyhow::Ok(reply(&r)?)
        }
    };
    // Wait until the file change has reached this node too.
    let start = Instant::now();
    while call("one", Command::HarborId).await.is_err() {
        anyhow::ensure!(start.elapsed() < DEADLINE, "node one never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Service on one calls service on two, by name.
    let via = Command::ClusterCall {
        node: "two".into(),
        target: ClusterTarget::Name("kit".into()),
        command: Box::new(Command::Echo(b"1 to 2".to_vec())),
        timeout_ms: 0,
    };
    assert_eq!(call("one", via).await?, Reply::Bytes(b"1 to 2".to_vec()));
    // Query, then by address; a proxy on one for two's service; a send from
    // one to two, counted there.
    let kit2 = here.client.cluster_query("two", "kit").await?;
    let by_address = Command::ClusterCall {
        node: "two".into(),
        target: ClusterTarget::Address(kit2.0),
        command: Box::new(Command::Echo(b"by address".to_vec())),
        timeout_ms: 0,
    };
    assert_eq!(
        call("one", by_address).await?,
        Reply::Bytes(b"by address".to_vec())
    );
    let proxy = Command::ClusterProxy {
        node: "two".into(),
        target: ClusterTarget::Name("kit".into()),
    };
    let Reply::Address(proxy) = call("one", proxy).await? else {
        anyhow::bail!("no proxy");
    };
    let through = Command::Call {
        target: proxy,
        command: Box::new(Command::Echo(b"via proxy".to_vec())),
    };
    assert_eq!(
        call("one", through).await?,
        Reply::Bytes(b"via proxy".to_vec())
    );
    let Reply::Count(before) = call("two", Command::Count).await? else {
        anyhow::bail!("no count");
    };
    let send = Command::ClusterSend {
        node: "two".into(),
        target: ClusterTarget::Name("kit".into()),
        payload: b"hi".to_vec(),
    };
    assert_eq!(call("one", send).await?, Reply::Unit);
    let start = Instant::now();
    while call("two", Command::Count).await? != Reply::Count(before + 1) {
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "the send from one never reached two"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // kill -9 of two with 1,000 calls in flight: each ends with an error
    // within 1 s, exactly once.
    let slow = postcard::to_allocvec(&Command::SleepThenEcho {
        ms: 60_000,
        payload: Vec::new(),
    })?;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..1_000 {
        let client = here.node.client();
        let payload = slow.clone();
        calls.spawn(async move {
            client
                .cluster_call("two", by_name("kit"), payload, None)
                .await
        });
    }
    // The calls are on the link once a later call to the same node is answered.
    assert_eq!(call("two", Command::HarborId).await?, Reply::Count(0));
    let killed = Instant::now();
    p2.signal("KILL");
    let _ = p2.wait_exit();
    let mut ended = 0;
    while let Some(r) = tokio::time::timeout(Duration::from_secs(1), calls.join_next())
        .await
        .context("a call still hung 1 s after kill -9")?
    {
        let detail = failed_with(r?, ErrorCause::NodeDown);
        assert!(detail.contains("`two`"), "{detail}");
        ended += 1;
    }
    assert_eq!(ended, 1_000);
    println!("1,000 calls ended {:?} after kill -9", killed.elapsed());
    // Restarted on the same address: the next call is answered, no config change.
    let file2 = node_file(dir.path(), "two", &conf, &addr2);
    let (mut p2, _) = start_proc(&file2);
    let start = Instant::now();
    loop {
        match call("two", Command::Echo(b"back".to_vec())).await {
            Ok(r) => {
                assert_eq!(r, Reply::Bytes(b"back".to_vec()));
                break;
            }
            Err(e) => anyhow::ensure!(start.elapsed() < DEADLINE, "two never came back: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SIGSTOP: a call in flight fails at the heartbeat deadline; SIGCONT: traffic resumes.
    let hung = {
        let client = here.node.client();
        let payload = postcard::to_allocvec(&Command::Echo(b"frozen".to_vec()))?;
        p2.signal("STOP");
        tokio::spawn(async move {
            client
                .cluster_call("two", by_name("kit"), payload, None)
                .await
        })
    };
    let stopped = Instant::now();
    let r = within(hung).await??;
    failed_with(r, ErrorCause::NodeDown);
    println!(
        "a call to a stopped peer failed after {:?}",
        stopped.elapsed()
    );
    p2.signal("CONT");
    let start = Instant::now();
    loop {
        match call("two", Command::Echo(b"thawed".to_vec())).await {
            Ok(r) => {
                assert_eq!(r, Reply::Bytes(b"thawed".to_vec()));
                break;
            }
            Err(e) => anyhow::ensure!(
                start.elapsed() < DEADLINE,
                "two never answered again: {e:#}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    here.stop().await;
    for p in [&mut p2, &mut p1] {
        p.signal("INT");
        assert!(p.wait_exit().success(), "{}", p.log());
    }
    Ok(())
}

#[test]
fn a_bad_cluster_file_stops_the_node_naming_the_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("cluster.conf");
    std::fs::write(&conf, "a = \"127.0.0.1:1\"\n-- fine\nb = 42\n").expect("write");
    let file = node_file(dir.path(), "a", &conf, "127.0.0.1:0");
    let mut p = Proc::start([Path::new("run"), &file]);
    assert!(!p.wait_exit().success());
    let log = p.log();
    assert!(
        log.contains(&format!("{}:3:", conf.display())) && log.contains("`b`"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_removes_and_bounds_what_waits() -> anyhow::Result<()> {
    let a = launch("a", None, false).await?;
    let b = launch("b", None, false).await?;
    let b2 = launch("b2", None, false).await?;
    for t in [&b, &b2] {
        let kit = t.spawn("testkit").await?;
        t.node.cluster_register("kit", kit);
    }
    a.node
        .cluster_reload(&table(&[("b", &b)]))
        .map_err(anyhow::Error::msg)?;
    let ask_port = |client: skyhost::Client| async move {
        client
            .cluster_call("b", by_name("kit"), echo(b"where")?, Some(DEADLINE))
            .await
            .map_err(anyhow::Error::from)
    };
    ask_port(a.node.client()).await?;
    // A call with its own timeout ends with Timeout while the link lives.
    let slow = postcard::to_allocvec(&Command::SleepThenEcho {
        ms: 10_000,
        payload: Vec::new(),
    })?;
    let timed = a
        .client
        .cluster_call(
            "b",
            by_name("kit"),
            slow.clone(),
            Some(Duration::from_millis(100)),
        )
        .await;
    failed_with(timed, ErrorCause::Timeout);

    // The address changes: new traffic goes to b2's address.
    let pending = a
        .client
        .cluster_call("b", by_name("kit"), slow.clone(), None);
    a.node
        .cluster_reload(&format!("b = \"{}\"\n", listen_of(&b2)))
        .map_err(anyhow::Error::msg)?;
    let moved = within(pending).await?;
    assert!(failed_with(moved, ErrorCause::NodeDown).contains("moved"));
    // With the old node gone, an answer can only come from the new address.
    b.stop().await;
    ask_port(a.node.client()).await?;

    // Removed from the config: its pending calls fail.
    let pending = a.client.cluster_call("b", by_name("kit"), slow, None);
    a.node
        .cluster_reload("__nowaiting = true\n")
        .map_err(anyhow::Error::msg)?;
    let removed = within(pending).await?;
    assert!(failed_with(removed, ErrorCause::NodeDown).contains("removed"));
    for t in [b2, a] {
        t.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_a_down_peer_queue_up_to_a_bound() -> anyhow::Result<()> {
    let mut cluster = ClusterNodeConfig::new("a", SECRET);
    cluster.queue_limit = 5;
    let mut config = test_config();
    config.cluster = Some(cluster);
    let a = within(Node::launch(&config)).await??;
    // A port nobody listens on: bind one, note it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    a.cluster_reload(&format!("down = \"{dead}\"\n"))
        .map_err(anyhow::Error::msg)?;
    let client = a.client();
    let kit = a.spawn("testkit", &[]).await?;
    let send = Command::ClusterSendLoop {
        node: "down".into(),
        target: ClusterTarget::Name("kit".into()),
        n: 5,
        payload: b"q".to_vec(),
    };
    assert_eq!(command_via(&client, kit, &send).await?, Reply::Unit);
    let one_more = Command::ClusterSend {
        node: "down".into(),
        target: ClusterTarget::Name("kit".into()),
        payload: b"q".to_vec(),
    };
    let refused = command_via(&client, kit, &one_more).await?;
    assert!(
        matches!(&refused, Reply::Failed(e) if e.contains("down") && e.contains("5 messages")),
        "{refused:?}"
    );
    // A call to it fails (no link can be made) instead of hanging.
    let call = client
        .cluster_call("down", by_name("kit"), echo(b"x")?, None)
        .await;
    failed_with(call, ErrorCause::NodeDown);
    drop(client);
    within(a.shutdown()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_can_be_in_a_harbor_and_a_cluster_at_once() -> anyhow::Result<()> {
    let mut both = test_config();
    let mut harbor = skyhost::config::HarborConfig::new(1, SECRET);
    harbor.standalone = Some("127.0.0.1:0".into());
    both.harbor = Some(harbor);
    let mut cluster = ClusterNodeConfig::new("both", SECRET);
    cluster.listen = Some("127.0.0.1:0".into());
    both.cluster = Some(cluster);
    both.limits.max_services = 256;
    let node = within(Node::launch(&both)).await??;
    let other = launch("other", None, false).await?;
    let kit = node.spawn("testkit", &[]).await?;
    assert_eq!(kit.harbor().0, 1, "a harbor address");
    node.cluster_register("kit", kit);
    other
        .node
        .cluster_reload(&format!("both = \"{}\"\n", node.cluster_listening()[0]))
        .map_err(anyhow::Error::msg)?;
    let r = other
        .client
        .cluster_call(
            "both",
            by_name("kit"),
            postcard::to_allocvec(&Command::HarborId)?,
            None,
        )
        .await?;
    assert_eq!(reply(&r)?, Reply::Count(1));
    other.stop().await;
    within(node.shutdown()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_wide_channel_carries_chat_to_three_real_processes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("cluster.conf");
    std::fs::write(&conf, "-- filled in below\n")?;
    // "one" makes channel number 1 (id 1 << 8 there) at start.
    let file1 = node_file_with(
        dir.path(),
        "one",
        &conf,
        "127.0.0.1:0",
        "cluster=kit mc_new=1",
    );
    let (mut p1, a1) = start_proc(&file1);
    let (mut p2, a2) = start_proc(&node_file(dir.path(), "two", &conf, "127.0.0.1:0"));
    let (mut p3, a3) = start_proc(&node_file(dir.path(), "three", &conf, "127.0.0.1:0"));
    let here = launch("here", Some(&conf), false).await?;
    std::fs::write(
        &conf,
        format!(
            "one = \"{a1}\"\ntwo = \"{a2}\"\nthree = \"{a3}\"\nhere = \"{}\"\n",
            listen_of(&here)
        ),
    )?;
    for p in [&mut p1, &mut p2, &mut p3] {
        p.wait_for("cluster config reloaded");
    }
    let call = |node: &'static str, cmd: Command| {
        let client = here.node.client();
        async move {
            let payload = postcard::to_allocvec(&cmd)?;
            let r = client
                .cluster_call(node, by_name("kit"), payload, Some(DEADLINE))
                .await?;
            anyhow::Ok(reply(&r)?)
        }
    };
    let start = Instant::now();
    while call("three", Command::HarborId).await.is_err() {
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "the config never reached this node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each node's service subscribes, on "one" directly, elsewhere through
    // the id its node gives the channel.
    let mut ids = Vec::new();
    for node in ["one", "two", "three"] {
        let Reply::Count(id) = call(
            node,
            Command::McCluster {
                node: "one".into(),
                channel: 1 << 8,
            },
        )
        .await?
        else {
            anyhow::bail!("no channel id on {node}");
        };
        let id = u32::try_from(id)?;
        assert_eq!(
            call(node, Command::McSubscribe(id)).await?,
            Reply::Unit,
            "{node}"
        );
        ids.push(id);
    }
    // The subscriptions reached "one" before this call through the same links.
    for node in ["two", "three"] {
        let via = Command::ClusterCall {
            node: "one".into(),
            target: ClusterTarget::Name("kit".into()),
            command: Box::new(Command::HarborId),
            timeout_ms: 0,
        };
        assert_eq!(call(node, via).await?, Reply::Count(0));
    }
    // A chat line published on "two" reaches every node's subscriber.
    let say = |tag: u16| Command::McPublishSeq {
        channel: ids[1],
        tag,
        n: 1,
    };
    assert_eq!(call("two", say(7)).await?, Reply::Unit);
    let line = |tag: u32| tag << 16;
    for node in ["one", "two", "three"] {
        let start = Instant::now();
        loop {
            if let Reply::Order(log) = call(node, Command::McLog).await?
                && log == vec![line(7)]
            {
                break;
            }
            anyhow::ensure!(start.elapsed() < DEADLINE, "{node} never got the chat line");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // kill -9 of "three": the others still get the next line.
    p3.signal("KILL");
    let _ = p3.wait_exit();
    assert_eq!(call("two", say(8)).await?, Reply::Unit);
    for node in ["one", "two"] {
        let start = Instant::now();
        loop {
            if let Reply::Order(log) = call(node, Command::McLog).await?
                && log == vec![line(7), line(8)]
            {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < DEADLINE,
                "{node} stopped getting chat after a node died"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    here.stop().await;
    for p in [&mut p2, &mut p1] {
        p.signal("INT");
        assert!(p.wait_exit().success(), "{}", p.log());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_in_the_config_are_resolved() -> anyhow::Result<()> {
    let a = launch("a", None, false).await?;
    let b = launch("b", None, false).await?;
    let kit = b.spawn("testkit").await?;
    b.node.cluster_register("kit", kit);
    let port = b.node.cluster_listening()[0].port();
    a.node
        .cluster_reload(&format!("b = \"localhost:{port}\"\n"))
        .map_err(anyhow::Error::msg)?;
    let r = a
        .client
        .cluster_call("b", by_name("kit"), echo(b"by name")?, None)
        .await?;
    assert_eq!(reply(&r)?, Reply::Bytes(b"by name".to_vec()));
    b.stop().await;
    a.stop().await;
    Ok(())
}

/// Replaces `path` with `text` in one step (a rename), as deploy tools do.
fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Reading the watched cluster file (a `cat`, a second node starting on
/// it) or rewriting the same text changes nothing; a change of content
/// reloads it once. Skynet's own options are taken as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_file_reloads_on_a_change_of_content_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("cluster.conf");
    std::fs::write(
        &conf,
        "-- as Skynet users write it\n__nowaiting = false\n__cache = true\n",
    )?;
    let (mut p1, addr1) = start_proc(&node_file(dir.path(), "one", &conf, "127.0.0.1:0"));
    p1.wait_for("`__cache` is not one skyhost knows; ignored");
    let one = format!("__cache = true\none = \"{addr1}\"\n");
    replace_file(&conf, &one)?;
    p1.wait_for("nodes=1");
    for _ in 0..50 {
        std::fs::read(&conf)?;
    }
    let (mut p2, _) = start_proc(&node_file(dir.path(), "two", &conf, "127.0.0.1:0"));
    replace_file(&conf, &one)?;
    // A reload follows its event by ~30 ms; a storm goes on for ever.
    p1.assert_quiet("cluster config reloaded", Duration::from_millis(500));
    replace_file(&conf, &format!("{one}three = \"127.0.0.1:9\"\n"))?;
    p1.wait_for("nodes=2");
    let reloads = p1
        .seen
        .iter()
        .filter(|l| l.contains("cluster config reloaded"))
        .count();
    assert_eq!(
        reloads,
        2,
        "one reload per change of content:\n{}",
        p1.log()
    );
    for p in [&mut p2, &mut p1] {
        p.signal("INT");
        assert!(p.wait_exit().success(), "{}", p.log());
    }
    Ok(())
}

/// A peer that restarts is reached by the first call after it is back,
/// however far the link's backoff grew while it was away; while it is
/// away, calls end with node-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reached_at_once_not_after_the_backoff() -> anyhow::Result<()> {
    let a = launch("a", None, false).await?;
    let b = launch("b", None, false).await?;
    let b_at = listen_of(&b);
    a.node
        .cluster_reload(&format!("b = \"{b_at}\"\n"))
        .map_err(anyhow::Error::msg)?;
    b.node.cluster_register("kit", b.spawn("testkit").await?);
    let ask = |timeout| {
        a.client
            .cluster_call("b", by_name("kit"), echo(b"hi").expect("encode"), timeout)
    };
    assert_eq!(
        reply(&ask(Some(DEADLINE)).await?)?,
        Reply::Bytes(b"hi".to_vec())
    );
    b.stop().await;
    // Away for a while, called now and then: every attempt to link fails
    // and the backoff between attempts grows (to 2 s).
    for _ in 0..10 {
        failed_with(ask(Some(DEADLINE)).await, ErrorCause::NodeDown);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let b = launch_at("b", &b_at, None, false).await?;
    b.node.cluster_register("kit", b.spawn("testkit").await?);
    // Well under the backoff: the call must not wait for it.
    let first = ask(Some(Duration::from_millis(500))).await;
    assert_eq!(reply(&first?)?, Reply::Bytes(b"hi".to_vec()));
    b.stop().await;
    a.stop().await;
    Ok(())
}

/// A cluster call that timed out ends once: the answer that comes after is
/// dropped at the sender and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_answer_after_the_timeout_is_dropped_and_counted() -> anyhow::Result<()> {
    use skyhost::LateAt;
    let a = launch("a", None, false).await?;
    let b = launch("b", None, false).await?;
    a.node
        .cluster_reload(&table(&[("b", &b)]))
        .map_err(anyhow::Error::msg)?;
    b.node.cluster_register("kit", b.spawn("testkit").await?);
    let slow = postcard::to_allocvec(&Command::SleepThenEcho {
        ms: 300,
        payload: b"late".to_vec(),
    })?;
    let timed = a
        .client
        .cluster_call("b", by_name("kit"), slow, Some(Duration::from_millis(50)))
        .await;
    failed_with(timed, ErrorCause::Timeout);
    crate::support::eventually("the answer after the timeout dropped", || {
        a.node.late_answers(LateAt::Cluster) == 1
    })
    .await?;
    b.stop().await;
    a.stop().await;
    Ok(())
}
