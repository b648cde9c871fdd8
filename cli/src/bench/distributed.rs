//! Cluster and multicast workloads: calls, sends, groups and channels
//! across cluster nodes.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use skyhost::Address;
use skyhost_test_proto::{Command, Reply};

use super::local::{callers_loop, send_and_count, wait_count};
use super::*;

/// Registers a fresh testkit service on cluster node `b` as `name`.
pub(super) async fn cluster_service(b: &BenchNode, name: &str) -> anyhow::Result<Address> {
    let peer = b.peer.as_ref().context("not a cluster workload")?;
    let kit = peer.spawn("testkit", &[]).await?;
    peer.cluster_register(name, kit);
    Ok(kit)
}

pub(super) fn cluster_echo_loop(n: u32, timed: bool) -> Command {
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
pub(super) async fn cluster_call_rtt(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
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
pub(super) async fn cluster_oneway(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
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
pub(super) async fn cluster_concurrent(
    b: &BenchNode,
    callers: u32,
    per_caller: u32,
) -> anyhow::Result<f64> {
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
pub(super) async fn group_call(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
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
pub(super) async fn multicast(
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
    let (spawner, counter, client) = if remote {
        let peer = b.peer.as_ref().context("not a harbor workload")?;
        let client = b.peer_client.as_ref().context("no client on harbor 2")?;
        let spawner = peer.spawn("testkit", &[]).await?;
        (spawner, peer.spawn("testkit", &[]).await?, client)
    } else {
        (
            b.spawn("testkit").await?,
            b.spawn("testkit").await?,
            &b.client,
        )
    };
    let spawn = Command::SpawnMany {
        module: "testkit".into(),
        n: subscribers,
    };
    let Reply::Addresses(subs) = command_via(client, spawner, &spawn).await? else {
        bail!("SpawnMany answered something else");
    };
    // Each subscriber tells `counter` when it has every publish, as
    // Erlang's subscribers tell its harness: the figure does not carry a
    // round trip per subscriber to ask.
    let notify = Command::NotifyAt {
        count: u64::from(publishes),
        to: counter.0,
    };
    for &s in &subs {
        command_via(client, Address(s), &Command::McSubscribe(channel)).await?;
        command_via(client, Address(s), &notify).await?;
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
    wait_count(client, counter, u64::from(subscribers)).await?;
    Ok(f64::from(subscribers) * f64::from(publishes) / start.elapsed().as_secs_f64())
}
