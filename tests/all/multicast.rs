//! Multicast channels on one node and across harbor nodes.

use std::time::{Duration, Instant};

use anyhow::Context;
use skyhost::config::HarborConfig;
use skyhost::{Address, Node};

use crate::support::{Command, DEADLINE, Reply, TestNode, test_config, within};

async fn harbor_node(id: u8, master: Option<&str>) -> anyhow::Result<TestNode> {
    let mut harbor = HarborConfig::new(id, "multicast test");
    match master {
        Some(m) => harbor.master = Some(m.into()),
        None => harbor.standalone = Some("127.0.0.1:0".into()),
    }
    let mut config = test_config();
    config.harbor = Some(harbor);
    config.limits.max_services = 1_024;
    let node = within(Node::launch(&config)).await??;
    let client = node.client();
    Ok(TestNode { node, client })
}

async fn spawn_many(t: &TestNode, n: u32) -> anyhow::Result<Vec<Address>> {
    let spawner = t.spawn("testkit").await?;
    match t
        .command(
            spawner,
            &Command::SpawnMany {
                module: "testkit".into(),
                n,
            },
        )
        .await?
    {
        Reply::Addresses(a) => Ok(a.into_iter().map(Address).collect()),
        r => anyhow::bail!("SpawnMany answered {r:?}"),
    }
}

async fn log_of(t: &TestNode, kit: Address) -> anyhow::Result<Vec<u32>> {
    match t.command(kit, &Command::McLog).await? {
        Reply::Order(v) => Ok(v),
        r => anyhow::bail!("McLog answered {r:?}"),
    }
}

/// Waits until `kit`'s multicast log has `n` entries and returns it.
async fn log_with(t: &TestNode, kit: Address, n: usize) -> anyhow::Result<Vec<u32>> {
    crate::support::multicast_log(&t.client, kit, n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_on_two_harbor_nodes_get_every_publish_once_in_order()
-> anyhow::Result<()> {
    let n1 = harbor_node(1, None).await?;
    let master = n1.node.master_address().context("master")?;
    let n2 = harbor_node(2, Some(&master)).await?;
    crate::support::wait_for_mesh(&[&n1, &n2]).await?;
    let owner = n1.spawn("testkit").await?;
    let Reply::Count(channel) = n1.command(owner, &Command::McNew(None)).await? else {
        anyhow::bail!("no channel");
    };
    let channel = u32::try_from(channel)?;
    assert_eq!(channel & 0xff, 1, "the id names harbor 1");
    let t0 = Instant::now();
    let subs1 = spawn_many(&n1, 500).await.context("spawn on 1")?;
    let subs2 = spawn_many(&n2, 500).await.context("spawn on 2")?;
    println!("spawned 1,000 in {:?}", t0.elapsed());
    for (t, subs) in [(&n1, &subs1), (&n2, &subs2)] {
        for &s in subs {
            assert_eq!(
                t.command(s, &Command::McSubscribe(channel)).await?,
                Reply::Unit
            );
        }
    }
    assert_eq!(n2.node.channel_subscribers(channel), 500);
    // Node 2 subscribed at the owner: a call through the same link after
    // the last subscribe has been answered, so the Subscribe is in place.
    assert_eq!(
        n2.command(owner, &Command::HarborId).await?,
        Reply::Count(1)
    );
    let p1 = n1.spawn("testkit").await?;
    let p2 = n2.spawn("testkit").await?;
    let publish = |tag: u16| Command::McPublishSeq {
        channel,
        tag,
        n: 500,
    };
    let (c1, c2) = (publish(1), publish(2));
    let t0 = Instant::now();
    // A million deliveries: longer than one ordinary command's deadline.
    let long = |t: &TestNode, kit: Address, c: &Command| {
        let payload = postcard::to_allocvec(c).expect("commands encode");
        let call = t.client.start_call(kit, payload);
        async move {
            let answer = tokio::time::timeout(Duration::from_secs(300), call?).await??;
            anyhow::Ok(postcard::from_bytes::<Reply>(&answer)?)
        }
    };
    let (a, b) = tokio::join!(long(&n1, p1, &c1), long(&n2, p2, &c2));
    assert_eq!(
        (a.context("publish 1")?, b.context("publish 2")?),
        (Reply::Unit, Reply::Unit)
    );
    println!("published in {:?}", t0.elapsed());
    for (t, subs) in [(&n1, &subs1), (&n2, &subs2)] {
        for &s in subs {
            let log = log_with(t, s, 1_000).await?;
            assert_eq!(log.len(), 1_000, "{s}: exactly once each");
            for tag in [1u32, 2] {
                let seq: Vec<u32> = log
                    .iter()
                    .filter(|v| *v >> 16 == tag)
                    .map(|v| v & 0xffff)
                    .collect();
                assert_eq!(
                    seq,
                    (0..500).collect::<Vec<u32>>(),
                    "{s}: publisher {tag} in order"
                );
            }
        }
    }
    n2.stop().await;
    n1.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_exit_and_delete_end_deliveries_and_leave_nothing() -> anyhow::Result<()> {
    let n1 = harbor_node(1, None).await?;
    let master = n1.node.master_address().context("master")?;
    let n2 = harbor_node(2, Some(&master)).await?;
    crate::support::wait_for_mesh(&[&n1, &n2]).await?;
    let owner = n1.spawn("testkit").await?;
    let Reply::Count(channel) = n1.command(owner, &Command::McNew(Some(7))).await? else {
        anyhow::bail!("no channel");
    };
    let channel = u32::try_from(channel)?;
    assert_eq!(channel, (7 << 8) | 1);
    let again = n1.command(owner, &Command::McNew(Some(7))).await?;
    assert!(
        matches!(&again, Reply::Failed(e) if e.contains("exists")),
        "{again:?}"
    );
    let (a, b) = (n1.spawn("testkit").await?, n1.spawn("testkit").await?);
    let remote = n2.spawn("testkit").await?;
    for (t, s) in [(&n1, a), (&n1, b), (&n2, remote)] {
        assert_eq!(
            t.command(s, &Command::McSubscribe(channel)).await?,
            Reply::Unit
        );
    }
    // Node 2's Subscribe went to node 1 ahead of this call on the same link.
    assert_eq!(
        n2.command(owner, &Command::HarborId).await?,
        Reply::Count(1)
    );
    let publish = |n| Command::McPublishSeq { channel, tag: 0, n };
    assert_eq!(n1.command(owner, &publish(1)).await?, Reply::Unit);
    log_with(&n1, a, 1).await?;
    log_with(&n2, remote, 1).await?;
    // Unsubscribed: a gets nothing more; b still does.
    assert_eq!(
        n1.command(a, &Command::McUnsubscribe(channel)).await?,
        Reply::Unit
    );
    assert_eq!(n1.command(owner, &publish(2)).await?, Reply::Unit);
    assert_eq!(log_with(&n1, b, 3).await?, vec![0, 0, 1]);
    assert_eq!(log_of(&n1, a).await?, vec![0]);
    // b exits: no entry is left behind.
    assert_eq!(
        n1.command(b, &Command::Exit { answer: true }).await?,
        Reply::Unit
    );
    let start = Instant::now();
    while n1.node.channel_subscribers(channel) != 0 {
        anyhow::ensure!(start.elapsed() < DEADLINE, "the exited subscriber stayed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Delete: the remote subscriber is told (u32::MAX marks the notice),
    // its node forgets the channel, and publishing is an error.
    assert_eq!(
        n1.command(owner, &Command::McDelete(channel)).await?,
        Reply::Unit
    );
    let log = log_with(&n2, remote, 4).await?;
    assert_eq!(log, vec![0, 0, 1, u32::MAX]);
    let start = Instant::now();
    while n2.node.channel_subscribers(channel) != 0 {
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "node 2 kept the deleted channel"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = n1.command(owner, &publish(1)).await?;
    assert!(
        matches!(&after, Reply::Failed(e) if e.contains("no-such-channel")),
        "{after:?}"
    );
    n2.stop().await;
    n1.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_going_down_leaves_its_channels_and_subscriptions() -> anyhow::Result<()> {
    let n1 = harbor_node(1, None).await?;
    let master = n1.node.master_address().context("master")?;
    let n2 = harbor_node(2, Some(&master)).await?;
    let n3 = harbor_node(3, Some(&master)).await?;
    crate::support::wait_for_mesh(&[&n1, &n2, &n3]).await?;
    // A channel on 1 with subscribers on 2 and 3; a channel on 3 with one on 2.
    let owner = n1.spawn("testkit").await?;
    let Reply::Count(on1) = n1.command(owner, &Command::McNew(None)).await? else {
        anyhow::bail!("no channel");
    };
    let on1 = u32::try_from(on1)?;
    let owner3 = n3.spawn("testkit").await?;
    let Reply::Count(on3) = n3.command(owner3, &Command::McNew(None)).await? else {
        anyhow::bail!("no channel");
    };
    let on3 = u32::try_from(on3)?;
    let s2 = n2.spawn("testkit").await?;
    let s3 = n3.spawn("testkit").await?;
    for c in [on1, on3] {
        assert_eq!(n2.command(s2, &Command::McSubscribe(c)).await?, Reply::Unit);
    }
    assert_eq!(
        n3.command(s3, &Command::McSubscribe(on1)).await?,
        Reply::Unit
    );
    // The Subscribes went to node 1 ahead of these calls on the same links.
    assert_eq!(
        n2.command(owner, &Command::HarborId).await?,
        Reply::Count(1)
    );
    assert_eq!(
        n3.command(owner, &Command::HarborId).await?,
        Reply::Count(1)
    );
    n3.stop().await;
    // 2's subscription to 3's channel ends with a notice.
    assert_eq!(log_with(&n2, s2, 1).await?, vec![u32::MAX]);
    // Publishing on 1 still reaches 2 (3 is dropped, not waited for).
    let publish = Command::McPublishSeq {
        channel: on1,
        tag: 0,
        n: 3,
    };
    assert_eq!(n1.command(owner, &publish).await?, Reply::Unit);
    assert_eq!(log_with(&n2, s2, 4).await?, vec![u32::MAX, 0, 1, 2]);
    n2.stop().await;
    n1.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_subscriber_node_never_blocks_a_publisher() -> anyhow::Result<()> {
    use crate::support::{Proc, cache_dir, guest_dir};
    let n1 = harbor_node(1, None).await?;
    let master = n1.node.master_address().context("master")?;
    let owner = n1.spawn("testkit").await?;
    let Reply::Count(channel) = n1.command(owner, &Command::McNew(None)).await? else {
        anyhow::bail!("no channel");
    };
    // A real node 2 whose bootstrap service subscribes at start.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("node2.toml");
    std::fs::write(
        &file,
        format!(
            "module_paths = [{:?}]\ncache_dir = {:?}\n[bootstrap]\nmodule = \"testkit\"\n\
             args = \"name=kit2 mc_sub={channel}\"\n[limits]\nmax_services = 64\n\
             [harbor]\nid = 2\nmaster = {master:?}\nsecret = \"multicast test\"\n",
            guest_dir().display().to_string(),
            cache_dir().display().to_string(),
        ),
    )?;
    let mut p2 = Proc::start([std::path::Path::new("run"), &file]);
    p2.wait_for("bootstrap service started");
    let kit2 = n1.client.queryname("kit2", DEADLINE).await?;
    // The Subscribe came over the same link before this answer.
    assert_eq!(n1.command(kit2, &Command::HarborId).await?, Reply::Count(2));
    p2.signal("STOP");
    // 128 MiB of publishes for a node that reads nothing: the publisher
    // finishes; what cannot wait is dropped and counted.
    let publisher = n1.spawn("testkit").await?;
    let big = Command::McPublishBig {
        channel: u32::try_from(channel)?,
        n: 2_048,
        size: 64 << 10,
    };
    let started = Instant::now();
    assert_eq!(n1.command(publisher, &big).await?, Reply::Unit);
    println!("2,048 publishes of 64 KiB took {:?}", started.elapsed());
    let start = Instant::now();
    while n1.node.dropped_to_down_nodes() == 0 {
        anyhow::ensure!(start.elapsed() < DEADLINE, "nothing was counted as dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p2.signal("CONT");
    drop(p2);
    n1.stop().await;
    Ok(())
}
