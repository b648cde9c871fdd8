//! Health checks and failover with real processes: a stopped node's group
//! member is taken out and put back, and calls to a stopped node go to its
//! backup and come back.

use std::time::Duration;

use skyhost::cluster::proto::{Policy, Target};
use skyhost::config::HealthConfig;
use skyhost::{CallError, ErrorCause};

use crate::cluster::{node_file_with, start_proc};
use crate::support::{Command, Reply, TestNode, eventually};

/// The cluster tests' secret (the node files of `cluster` use it).
const SECRET: &str = "cluster test secret";

/// Who answers a call to `kit` on `node`: `node/address`, or the error.
async fn who(t: &TestNode, node: &str) -> Result<String, CallError> {
    let payload = postcard::to_allocvec(&Command::WhoAmI).expect("encode");
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        t.client
            .cluster_call(node, Target::Name("kit".into()), payload, None),
    )
    .await
    .unwrap_or(Err(CallError::Timeout))?;
    match postcard::from_bytes(&r) {
        Ok(Reply::Bytes(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => panic!("WhoAmI answered {other:?}"),
    }
}

/// Calls until `node`'s calls are answered by a service of `by`.
async fn answered_by(t: &TestNode, node: &str, by: &str) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let w = who(t, node).await;
        if w.as_ref().is_ok_and(|w| w.starts_with(&format!("{by}/"))) {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < crate::support::DEADLINE,
            "calls to {node} never answered by {by}: last {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_out_and_put_back_members_and_nodes_with_failover_to_a_backup()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("cluster.conf");
    std::fs::write(&conf, "-- filled in below\n")?;
    let listen = "127.0.0.1:0";
    let (mut game1, at1) = start_proc(&node_file_with(
        dir.path(),
        "game1",
        &conf,
        listen,
        "cluster=kit group=g",
    ));
    let (mut game1b, at1b) = start_proc(&node_file_with(
        dir.path(),
        "game1b",
        &conf,
        listen,
        "cluster=kit",
    ));
    // This node checks every 100 ms; two failures (500 ms each at most) take out. Its links wait
    // long for silence, so only the checks take anything out.
    let here = crate::support::cluster_node("here", SECRET, |c| {
        c.config = Some(conf.clone());
        c.dead_after_ms = 60_000;
        c.health = Some(HealthConfig {
            interval_ms: 100,
            timeout_ms: 500,
            failures: 2,
        });
    })
    .await?;
    let mine = here.spawn("testkit").await?;
    here.client
        .group_join("g", mine, Policy::RoundRobin)
        .map_err(anyhow::Error::msg)?;
    std::fs::write(
        &conf,
        format!(
            "game1 = {{ address = \"{at1}\", backup = \"game1b\" }}\n\
             game1b = \"{at1b}\"\nhere = \"{}\"\n",
            here.node.cluster_listening()[0]
        ),
    )?;
    let client = &here.client;
    let in_group = |n: usize| move || client.group_members("g").len() == n;
    eventually("game1's member is seen", in_group(2)).await?;
    answered_by(&here, "game1", "game1").await?;

    // game1 stopped: its member leaves the group, and its calls go to game1b.
    game1.signal("STOP");
    eventually("the stopped node's member is taken out", in_group(1)).await?;
    assert_eq!(here.client.group_members("g")[0].node, "here");
    answered_by(&here, "game1", "game1b").await?;
    let out = here.node.cluster_taken_out();
    assert!(matches!(out, Some((1.., 1))), "taken out: {out:?}");
    let metrics = skyhost::metrics::render(&here.node);
    assert!(
        metrics.contains("skyhost_cluster_taken_out{what=\"group_member\"} 1"),
        "{metrics}"
    );
    // game1 back: its member is put back, its calls are its own again.
    game1.signal("CONT");
    eventually("the member is put back", in_group(2)).await?;
    answered_by(&here, "game1", "game1").await?;
    eventually("nothing held out", || {
        here.node.cluster_taken_out() == Some((0, 0))
    })
    .await?;

    // A node with no backup that is taken out fails its calls at once.
    game1b.signal("STOP");
    let start = std::time::Instant::now();
    loop {
        match who(&here, "game1b").await {
            Err(CallError::Failed {
                cause: ErrorCause::NodeDown,
                detail,
            }) if detail.contains("health checks") => break,
            other => anyhow::ensure!(
                start.elapsed() < crate::support::DEADLINE,
                "game1b never taken out: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    game1b.signal("CONT");
    answered_by(&here, "game1b", "game1b").await?;

    here.stop().await;
    for p in [&mut game1, &mut game1b] {
        p.signal("INT");
        assert!(p.wait_exit().success(), "{}", p.log());
    }
    Ok(())
}
