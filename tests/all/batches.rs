//! Sends between nodes in batches: a service's run of sends to one service
//! on another node crosses the link as one frame (a cluster `Pushes`, a
//! batched harbor envelope) and enters the mailbox as one run.

use anyhow::Context;
use skyhost::cluster::proto::{Control, Header, Target};
use skyhost::transport::Outgoing;
use skyhost_test_proto::{ClusterTarget, SEQ_TAG};

use crate::cluster::{Heard, launch, table};
use crate::support::{Command, Reply, TestNode, eventually, within};

/// The numbers of the tagged texts `kit` on `t` has received.
async fn seq_log(t: &TestNode, kit: skyhost::Address) -> anyhow::Result<Vec<u32>> {
    match t.command(kit, &Command::SeqLog).await? {
        Reply::Order(numbers) => Ok(numbers),
        r => anyhow::bail!("SeqLog answered {r:?}"),
    }
}

/// Waits until `kit` on `t` has received `n` tagged texts; their numbers.
async fn seq_log_of(t: &TestNode, kit: skyhost::Address, n: usize) -> anyhow::Result<Vec<u32>> {
    let start = std::time::Instant::now();
    loop {
        let log = seq_log(t, kit).await?;
        if log.len() >= n || start.elapsed() > crate::support::DEADLINE {
            return Ok(log);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_cluster_sends_arrives_whole_and_in_order_in_few_frames() -> anyhow::Result<()>
{
    let a = launch("a", None, false).await?;
    let b = launch("b", None, false).await?;
    let text = table(&[("a", &a), ("b", &b)]);
    for t in [&a, &b] {
        t.node.cluster_reload(&text).map_err(anyhow::Error::msg)?;
    }
    let sink = b.spawn("testkit").await?;
    b.node.cluster_register("sink", sink);
    let sender = a.spawn("testkit").await?;
    let n = 1_000;
    let stream = Command::ClusterSendSeq {
        node: "b".into(),
        target: ClusterTarget::Name("sink".into()),
        n,
    };
    assert_eq!(a.command(sender, &stream).await?, Reply::Unit);
    let log = seq_log_of(&b, sink, n as usize).await?;
    assert_eq!(log, (0..n).collect::<Vec<_>>());
    // 64 sends a frame: 16 frames, with the link's own (its first word, the
    // name, heartbeats) far fewer than one a message.
    let frames = b
        .node
        .links()
        .into_iter()
        .find(|l| l.kind == "cluster-in" && l.peer == "a")
        .map(|l| l.frames_in);
    assert!(
        frames.is_some_and(|f| f < u64::from(n) / 10),
        "frames in: {frames:?}"
    );

    // To a node that is offline: the flush says so, for every send.
    a.node
        .cluster_reload(&format!("{text}gone = false\n"))
        .map_err(anyhow::Error::msg)?;
    let refused = Command::ClusterSendSeq {
        node: "gone".into(),
        target: ClusterTarget::Name("sink".into()),
        n: 3,
    };
    let answer = a.command(sender, &refused).await?;
    assert!(
        matches!(&answer, Reply::Failed(e) if e.contains("`sink` on cluster node `gone`") && e.contains("offline") && e.contains("3 refused")),
        "{answer:?}"
    );
    b.stop().await;
    a.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_sends_to_another_harbor_node_arrives_whole_and_in_order_in_few_frames()
-> anyhow::Result<()> {
    let one = crate::harbor::launch(1, None).await?;
    let master = one.node.master_address().context("master address")?;
    let two = crate::harbor::launch(2, Some(&master)).await?;
    crate::support::wait_for_mesh(&[&one, &two]).await?;
    let sink = two.spawn("testkit").await?;
    let sender = one.spawn("testkit").await?;
    let n = 1_000;
    let stream = Command::SendSeq { target: sink.0, n };
    assert_eq!(one.command(sender, &stream).await?, Reply::Unit);
    let log = seq_log_of(&two, sink, n as usize).await?;
    assert_eq!(log, (0..n).collect::<Vec<_>>());
    // 64 sends a flush, each flush one frame: far fewer than one a message.
    let frames = two
        .node
        .links()
        .into_iter()
        .find(|l| l.kind == "harbor" && l.peer == "1")
        .map(|l| l.frames_in);
    assert!(
        frames.is_some_and(|f| f < u64::from(n) / 10),
        "frames in: {frames:?}"
    );
    // A call between them still goes on its own and is answered.
    let echo = Command::Call {
        target: sink.0,
        command: Box::new(Command::Echo(b"after".to_vec())),
    };
    assert_eq!(
        one.command(sender, &echo).await?,
        Reply::Bytes(b"after".to_vec())
    );
    two.stop().await;
    one.stop().await;
    Ok(())
}

/// The records of a `Pushes` payload: each a u32 length, then the bytes.
fn records(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        out.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn tagged(i: u32) -> Vec<u8> {
    let mut p = SEQ_TAG.to_vec();
    p.extend_from_slice(&i.to_le_bytes());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_frame_is_delivered_once_and_a_bad_one_is_dropped_alone() -> anyhow::Result<()> {
    let (b, kit, mut conn) = crate::cluster::node_with_a_raw_link().await?;
    let pushes = |target: Target, seq, count| Header::Pushes {
        tenant: skyhost::runtime::TenantId::SYSTEM.0,
        target,
        compressed: false,
        trace: 0,
        seq,
        count,
    };
    conn.send(Outgoing::Control(Control::Offer {
        session: 1,
        next: 1,
        first: 1,
    }));
    conn.send(Outgoing::Control(Control::Name {
        id: 5,
        name: "kit".into(),
    }));
    let three = records(&[tagged(0), tagged(1), tagged(2)]);
    conn.send(Outgoing::Message(
        pushes(Target::Interned(5), 1, 3),
        three.clone(),
    ));
    // Sent again (a resumed link would): delivered once.
    conn.send(Outgoing::Message(pushes(Target::Interned(5), 1, 3), three));
    // A record that runs past the end: the frame is dropped, the link stays.
    let mut cut = records(&[tagged(90), tagged(91)]);
    cut.pop();
    conn.send(Outgoing::Message(pushes(Target::Interned(5), 2, 2), cut));
    // To a service the node does not have: each send counted undelivered.
    conn.send(Outgoing::Message(
        pushes(Target::Name("nobody".into()), 3, 2),
        records(&[tagged(80), tagged(81)]),
    ));
    conn.send(Outgoing::Message(
        pushes(Target::Interned(5), 4, 1),
        records(&[tagged(3)]),
    ));
    let (heard_tx, _heard) = tokio::sync::mpsc::unbounded_channel();
    let (_out_tx, mut out) = tokio::sync::mpsc::unbounded_channel();
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let link = tokio::spawn(async move { conn.run(&mut out, &mut Heard(heard_tx), &stop).await });
    assert_eq!(seq_log_of(&b, kit, 4).await?, vec![0, 1, 2, 3]);
    eventually("b counts both sends to nobody", || {
        b.node.cluster_sends_undelivered() == 2
    })
    .await?;
    assert_eq!(
        seq_log(&b, kit).await?,
        vec![0, 1, 2, 3],
        "nothing more came"
    );
    cancel.cancel();
    let _ = within(link).await?;
    b.stop().await;
    Ok(())
}
