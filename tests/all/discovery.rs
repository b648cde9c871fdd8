//! Discovery on a real etcd: nodes find each other with no cluster file,
//! follow joins and deaths, and keep working while etcd is away.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skyhost::cluster::NodeAddress;
use skyhost::cluster::proto::Target;
use skyhost::{CallError, ErrorCause};
use skyhost_test_proto::ClusterTarget;

use crate::support::{Command, DEADLINE, Proc, Reply, TestNode, eventually};

const SECRET: &str = "discovery test secret";

/// The lease of each node's entry: short, so a killed node goes quickly.
const LEASE_TTL_S: u64 = 2;

/// A node in this process found through `url`.
async fn launch(name: &str, url: &str) -> anyhow::Result<TestNode> {
    crate::support::cluster_node(name, SECRET, |c| {
        c.discovery = Some(url.into());
        c.lease_ttl_s = LEASE_TTL_S;
    })
    .await
}

/// A node file for a real process found through `url`, whose bootstrap
/// `testkit` registers itself cluster-wide as `service`.
fn node_file(dir: &Path, name: &str, url: &str, service: &str, ttl_s: u64) -> PathBuf {
    let text = format!(
        "module_paths = [{modules:?}]\ncache_dir = {cache:?}\nlog_level = \"info\"\n\n\
         [bootstrap]\nmodule = \"testkit\"\nargs = \"cluster={service}\"\n\n\
         [cluster]\nname = {name:?}\nlisten = \"127.0.0.1:0\"\nsecret = {SECRET:?}\n\
         discovery = {url:?}\nlease_ttl_s = {ttl_s}\nheartbeat_ms = 200\ndead_after_ms = 1000\n",
        modules = crate::support::guest_dir().display().to_string(),
        cache = crate::support::cache_dir().display().to_string(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write node file");
    path
}

/// Starts a real node and waits until it has published itself.
fn start_proc(dir: &Path, name: &str, url: &str, service: &str, ttl_s: u64) -> Proc {
    let mut p = Proc::start([Path::new("run"), &node_file(dir, name, url, service, ttl_s)]);
    p.wait_for("bootstrap service started");
    p.wait_for("published and watching");
    p
}

fn entry(t: &TestNode, node: &str) -> Option<NodeAddress> {
    t.node.cluster_table()?.get(node).cloned()
}

fn present(t: &TestNode, node: &str) -> bool {
    matches!(entry(t, node), Some(NodeAddress::At(_)))
}

/// Calls `service` on `node` from `t` with a testkit command.
async fn call(t: &TestNode, node: &str, service: &str, cmd: &Command) -> Result<Reply, CallError> {
    let payload = postcard::to_allocvec(cmd).expect("encode");
    let r = t
        .client
        .cluster_call(node, Target::Name(service.into()), payload, None)
        .await?;
    Ok(postcard::from_bytes(&r).expect("decode reply"))
}

fn echo(text: &str) -> Command {
    Command::Echo(text.as_bytes().to_vec())
}

/// Calls until `node` answers (it may not be in this node's table yet).
async fn until_answers(t: &TestNode, node: &str, service: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            call(t, node, service, &echo(node)),
        )
        .await;
        match r {
            Ok(Ok(reply)) => {
                anyhow::ensure!(reply == Reply::Bytes(node.as_bytes().to_vec()), "{reply:?}");
                return Ok(start.elapsed());
            }
            Ok(Err(e)) => {
                anyhow::ensure!(start.elapsed() < DEADLINE, "{node} never answered: {e:?}")
            }
            Err(_) => anyhow::ensure!(start.elapsed() < DEADLINE, "{node} never answered"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_through_etcd_and_follow_joins_deaths_and_outages()
-> anyhow::Result<()> {
    let mut etcd = crate::support::etcd()?;
    let url = etcd.url("skyhost-test");
    let dir = tempfile::tempdir()?;

    // Three nodes, no cluster file: each finds the others.
    let here = launch("here", &url).await?;
    let mut one = start_proc(dir.path(), "one", &url, "kit", 60);
    let mut two = start_proc(dir.path(), "two", &url, "kit", LEASE_TTL_S);
    until_answers(&here, "one", "kit").await?;
    until_answers(&here, "two", "kit").await?;
    let one_to_two = Command::ClusterCall {
        node: "two".into(),
        target: ClusterTarget::Name("kit".into()),
        command: Box::new(echo("one to two")),
        timeout_ms: 0,
    };
    assert_eq!(
        call(&here, "one", "kit", &one_to_two).await?,
        Reply::Bytes(b"one to two".to_vec())
    );

    // A fourth node joins and is called by name as soon as it has published.
    let mut three = start_proc(dir.path(), "three", &url, "team", LEASE_TTL_S);
    let joined = until_answers(&here, "three", "team").await?;
    println!("a joining node answered {joined:?} after publishing itself");
    assert!(joined < Duration::from_secs(2), "{joined:?}");

    // The name three registered is found cluster-wide without naming the
    // node, once its put has reached etcd (three answers calls by the name
    // before that: it resolves its own names locally).
    let start = Instant::now();
    let (node, address) = loop {
        match here.client.cluster_find("team").await {
            Ok(found) => break found,
            Err(e) => anyhow::ensure!(start.elapsed() < DEADLINE, "`team` never found: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(node, "three");
    let by_address = postcard::to_allocvec(&echo("found"))?;
    let r = here
        .client
        .cluster_call("three", Target::Address(address.0), by_address, None)
        .await?;
    assert_eq!(
        postcard::from_bytes::<Reply>(&r)?,
        Reply::Bytes(b"found".to_vec())
    );
    match here.client.cluster_find("nobody").await {
        Err(CallError::Failed {
            cause: ErrorCause::UnknownAddress,
            ..
        }) => {}
        other => anyhow::bail!("a name nobody registered: {other:?}"),
    }

    // kill -9: three leaves the table when its lease expires, then calls
    // to it fail at once, naming it.
    three.signal("KILL");
    let _ = three.wait_exit();
    let killed = Instant::now();
    eventually("three's entry expires", || {
        entry(&here, "three") == Some(NodeAddress::Departed)
    })
    .await?;
    println!(
        "a killed node left the table {:?} after kill -9",
        killed.elapsed()
    );
    let asked = Instant::now();
    match call(&here, "three", "team", &echo("gone")).await {
        Err(CallError::Failed {
            cause: ErrorCause::NodeDown,
            detail,
        }) => assert!(detail.contains("`three` left the cluster"), "{detail}"),
        other => anyhow::bail!("a call to a departed node: {other:?}"),
    }
    println!("a call to a departed node failed in {:?}", asked.elapsed());
    assert!(matches!(
        here.client.cluster_find("team").await,
        Err(CallError::Failed {
            cause: ErrorCause::UnknownAddress,
            ..
        })
    ));

    // etcd stops: the links made keep working, both ways.
    etcd.stop();
    one.wait_for("etcd discovery:");
    assert_eq!(
        call(&here, "one", "kit", &one_to_two).await?,
        Reply::Bytes(b"one to two".to_vec())
    );
    until_answers(&here, "two", "kit").await?;
    // A node started meanwhile is seen once etcd is back.
    let mut four = Proc::start([
        Path::new("run"),
        &node_file(dir.path(), "four", &url, "kit", LEASE_TTL_S),
    ]);
    four.wait_for("bootstrap service started");
    assert!(!present(&here, "four"));
    etcd.restart()?;
    four.wait_for("published and watching");
    until_answers(&here, "four", "kit").await?;
    let two_to_four = Command::ClusterCall {
        node: "four".into(),
        target: ClusterTarget::Name("kit".into()),
        command: Box::new(echo("two to four")),
        timeout_ms: 0,
    };
    assert_eq!(
        call(&here, "two", "kit", &two_to_four).await?,
        Reply::Bytes(b"two to four".to_vec())
    );

    // A node that stops leaves at once: its lease would last 60 s, but it
    // revokes it (the deadline here is 20 s).
    one.signal("INT");
    assert!(one.wait_exit().success(), "{}", one.log());
    eventually("one leaves when it stops", || {
        entry(&here, "one") == Some(NodeAddress::Departed)
    })
    .await?;

    here.stop().await;
    for p in [&mut two, &mut four] {
        p.signal("INT");
        assert!(p.wait_exit().success(), "{}", p.log());
    }
    Ok(())
}
