//! Hot-swap: a service's module replaced while it runs, without losing or
//! reordering a message, with its state carried over; failed upgrades
//! leave the old version running; a module upgrade swaps every instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use skyhost::config::ControlConfig;
use skyhost::control::proto::Answer;
use skyhost::{Address, Client, UpgradeError};

use crate::support::*;

/// What the `counter` service answers to `g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count {
    pub version: u8,
    pub total: u64,
    pub gaps: u64,
    pub calls: u64,
}

pub(crate) async fn count(client: &Client, counter: Address) -> anyhow::Result<Count> {
    let bytes = client
        .call_timeout(counter, b"g".to_vec(), DEADLINE)
        .await
        .context("counter get")?;
    ensure!(bytes.len() == 25, "counter answered {bytes:?}");
    let word = |i: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&bytes[1 + 8 * i..9 + 8 * i]);
        u64::from_le_bytes(w)
    };
    Ok(Count {
        version: bytes[0],
        total: word(0),
        gaps: word(1),
        calls: word(2),
    })
}

/// Sequenced text message `seq` from `sender`.
pub(crate) fn numbered(sender: u8, seq: u32) -> Vec<u8> {
    let mut payload = vec![sender];
    payload.extend_from_slice(&seq.to_le_bytes());
    payload
}

/// Polls the counter until it has counted `total` messages.
pub(crate) async fn counted(
    client: &Client,
    counter: Address,
    total: u64,
) -> anyhow::Result<Count> {
    let start = std::time::Instant::now();
    loop {
        let c = count(client, counter).await?;
        if c.total >= total {
            return Ok(c);
        }
        ensure!(
            start.elapsed() < DEADLINE,
            "counted {c:?}, expected {total}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(crate) fn version_path(version: u8) -> std::path::PathBuf {
    guest_dir().join(if version == 1 {
        "counter.wasm"
    } else {
        "counter_v2.wasm"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_upgrades_under_load_lose_no_message_and_keep_the_count() -> anyhow::Result<()> {
    const UPGRADES: usize = 100;
    const PER_SENDER: u32 = 10_000;
    let node = TestNode::start()?;
    let counter = node.spawn("counter").await?;
    let done = Arc::new(AtomicUsize::new(0));

    // Each sender sends its 10,000 messages in one burst per upgrade, so
    // messages arrive before, during and after every swap.
    let mut senders = Vec::new();
    for sender in 0..3u8 {
        let client = node.node.client();
        let done = done.clone();
        senders.push(tokio::spawn(async move {
            let per_round = PER_SENDER / UPGRADES as u32;
            for round in 0..UPGRADES as u32 {
                while done.load(Ordering::Acquire) < round as usize {
                    tokio::task::yield_now().await;
                }
                for i in 1..=per_round {
                    client.send(counter, 0, 0, numbered(sender, round * per_round + i))?;
                }
            }
            anyhow::Ok(())
        }));
    }
    // A caller in a loop: each answer's `calls` is the previous plus one,
    // whichever version answers.
    let caller = {
        let client = node.node.client();
        let done = done.clone();
        tokio::spawn(async move {
            let mut last: Option<Count> = None;
            let mut versions = [0usize; 3];
            while done.load(Ordering::Acquire) < UPGRADES {
                let c = count(&client, counter).await?;
                if let Some(prev) = last {
                    ensure!(
                        c.calls == prev.calls + 1,
                        "calls jumped: {prev:?} then {c:?}"
                    );
                    ensure!(
                        c.total >= prev.total,
                        "total went back: {prev:?} then {c:?}"
                    );
                }
                versions[usize::from(c.version)] += 1;
                last = Some(c);
            }
            anyhow::Ok((last, versions))
        })
    };

    let mut paused = Vec::new();
    for i in 0..UPGRADES {
        let version = if i % 2 == 0 { 2 } else { 1 };
        let reports = within(node.node.upgrade(
            &counter.to_string(),
            &version_path(version),
            Duration::from_secs(5),
        ))
        .await??;
        ensure!(reports.len() == 1, "{reports:?}");
        let upgraded = reports[0].result.clone().context("upgrade")?;
        ensure!(
            upgraded.state_bytes.is_some(),
            "state carried: {upgraded:?}"
        );
        paused.push(upgraded.pause);
        done.store(i + 1, Ordering::Release);
    }
    for s in senders {
        within(s).await???;
    }
    let (last, versions) = within(caller).await???;
    ensure!(
        versions[1] > 0 && versions[2] > 0,
        "both versions answered: {versions:?}"
    );

    let total = 3 * u64::from(PER_SENDER);
    let end = counted(&node.client, counter, total).await?;
    // 100 swaps: version 1 again at the end.
    assert_eq!(end.version, 1);
    assert_eq!(end.total, total, "every message handled exactly once");
    assert_eq!(end.gaps, 0, "each sender's order kept");
    let last = last.context("the caller got answers")?;
    assert_eq!(end.calls, last.calls + 1, "no call lost or repeated");
    let info = node.node.service_info(counter).context("counter alive")?;
    assert_eq!(info.upgrades, UPGRADES as u32);
    paused.sort();
    eprintln!(
        "upgrade pause: median {:?}, worst {:?}",
        paused[paused.len() / 2],
        paused[paused.len() - 1]
    );
    node.stop().await;
    Ok(())
}

/// A service killed while an upgrade is ordered and requests wait for it
/// (kept aside by the upgrade): the upgrade ends with an error and so does
/// every request; nothing hangs. (An order not yet picked up used to wait
/// for ever: its orderer held the handle that held the order's reply.)
/// The requests go in once the service shows `upgrading`: sent earlier,
/// version 1 may answer them all before the order (compiled on a blocking
/// thread) reaches it, and none would wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_and_the_requests_around_it_end_when_the_service_is_killed() -> anyhow::Result<()>
{
    const KEPT: usize = 20;
    let node = TestNode::start()?;
    let counter = node.spawn("counter").await?;
    let target = counter.to_string();
    let v2 = version_path(2);
    // Waiting on its own 60 s timer, the counter is not quiescent. A first
    // upgrade that gives up at once compiles version 2, so the next one
    // reaches the service without delay.
    let mut hold = b"h".to_vec();
    hold.extend_from_slice(&60_000u32.to_le_bytes());
    let held = node.client.start_call(counter, hold)?;
    count(&node.client, counter).await?;
    let first = within(node.node.upgrade(&target, &v2, Duration::from_millis(1))).await??;
    ensure!(
        matches!(first[0].result, Err(UpgradeError::NotQuiescent { .. })),
        "{first:?}"
    );
    let upgrade = node.node.upgrade(&target, &v2, DEADLINE);
    let requests_then_kill = async {
        eventually("the counter is upgrading", || {
            node.node
                .service_info(counter)
                .is_some_and(|i| i.state == "upgrading")
        })
        .await?;
        let kept: Vec<_> = (0..KEPT)
            .map(|_| node.client.start_call(counter, b"g".to_vec()))
            .collect::<Result<_, _>>()?;
        eventually("the requests are in", || {
            node.node.mailbox_len(counter).is_some_and(|n| n >= 1)
        })
        .await?;
        ensure!(node.node.kill(counter), "the counter is there to kill");
        // Each ends, kept aside and failed with `killed`.
        for call in kept {
            let e = within(call).await?.expect_err("kept aside, then killed");
            assert_eq!(e.cause(), Some(skyhost::ErrorCause::Killed), "{e}");
        }
        anyhow::Ok(())
    };
    let (reports, ended) = within(async { tokio::join!(upgrade, requests_then_kill) }).await?;
    ended?;
    match &reports?[0].result {
        Err(UpgradeError::Ended(_)) => {}
        other => bail!("an upgrade whose service was killed: {other:?}"),
    }
    let err = within(held).await?.expect_err("ended by the kill");
    assert_eq!(err.cause(), Some(skyhost::ErrorCause::Killed), "{err}");
    node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrades_are_reported_and_the_old_version_carries_on() -> anyhow::Result<()> {
    let node = TestNode::start()?;
    let counter = node.spawn("counter").await?;
    let target = counter.to_string();
    let mut sent = 0u32;
    let mut send = |n: u32| -> anyhow::Result<()> {
        for _ in 0..n {
            sent += 1;
            node.client.send(counter, 0, 0, numbered(0, sent))?;
        }
        Ok(())
    };
    send(10)?;

    // Not a component: reported, nothing changes.
    let dir = tempfile::tempdir()?;
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm but not really")?;
    match within(node.node.upgrade(&target, &junk, DEADLINE)).await? {
        Err(UpgradeError::Module(e)) => assert!(e.to_string().contains("junk.wasm"), "{e}"),
        other => bail!("a module that does not compile: {other:?}"),
    }

    // Version 2's `load-state` traps on a poisoned state.
    node.client
        .call_timeout(counter, b"p".to_vec(), DEADLINE)
        .await?;
    send(10)?;
    let reports = within(node.node.upgrade(&target, &version_path(2), DEADLINE)).await??;
    match &reports[0].result {
        Err(UpgradeError::Load { step, reason }) => {
            assert_eq!(*step, "load-state");
            assert!(reason.contains("trap"), "{reason}");
        }
        other => bail!("a trapping load-state: {other:?}"),
    }
    send(10)?;
    let c = counted(&node.client, counter, 30).await?;
    assert_eq!((c.version, c.total, c.gaps), (1, 30, 0), "{c:?}");
    node.client
        .call_timeout(counter, b"c".to_vec(), DEADLINE)
        .await?;

    // A service waiting on its own timer is not quiescent: the upgrade
    // gives up at its deadline; what arrived meanwhile is handled, in order.
    let mut hold = b"h".to_vec();
    hold.extend_from_slice(&1_000u32.to_le_bytes());
    let held = node.client.start_call(counter, hold)?;
    // The hold is being handled (its timer set) once a later call answers.
    count(&node.client, counter).await?;
    let v2 = version_path(2);
    let upgrade = node.node.upgrade(&target, &v2, Duration::from_millis(200));
    let sender = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(10)
    };
    let (reports, sent_meanwhile) = within(async { tokio::join!(upgrade, sender) }).await?;
    sent_meanwhile?;
    match &reports?[0].result {
        Err(UpgradeError::NotQuiescent { sessions, .. }) => assert_eq!(*sessions, 1),
        other => bail!("a service that never became quiescent: {other:?}"),
    }
    let c = counted(&node.client, counter, 40).await?;
    assert_eq!((c.version, c.total, c.gaps), (1, 40, 0), "{c:?}");
    within(held).await??;

    // Quiescent again: the same upgrade now succeeds, the count carried over.
    let reports = within(node.node.upgrade(&target, &version_path(2), DEADLINE)).await??;
    reports[0]
        .result
        .clone()
        .context("upgrade once quiescent")?;
    send(10)?;
    let c = counted(&node.client, counter, 50).await?;
    assert_eq!((c.version, c.total, c.gaps), (2, 50, 0), "{c:?}");
    node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_a_module_from_the_console_swaps_every_instance() -> anyhow::Result<()> {
    const SECRET: &str = "upgrade secret";
    let mut config = test_config();
    config.control = Some(ControlConfig::new(SECRET));
    init_logs();
    let launched = within(skyhost::Node::launch(&config)).await??;
    within(skyhost::control::serve(&launched, &config)).await??;
    let node = TestNode {
        client: launched.client(),
        node: launched,
    };
    let control = node
        .node
        .control_address()
        .context("control address")?
        .to_string();
    let mut counters = Vec::new();
    for _ in 0..100 {
        let c = node.spawn("counter").await?;
        node.client.send(c, 0, 0, numbered(7, 1))?;
        counters.push(c);
    }
    let command = format!("upgrade counter {}", version_path(2).display());
    let answer = within(skyhost::control::request(&control, SECRET, &command)).await??;
    let Answer::Ok(lines) = answer else {
        bail!("upgrade answered {answer:?}");
    };
    assert_eq!(lines.len(), 100, "{lines:?}");
    for (line, c) in lines.iter().zip(&counters) {
        assert!(line.starts_with(&format!("upgraded {c} ")), "{line}");
    }
    for &c in &counters {
        let got = count(&node.client, c).await?;
        assert_eq!(
            (got.version, got.total, got.gaps),
            (2, 1, 0),
            "{c}: {got:?}"
        );
    }
    // New spawns of the module get the new version.
    let fresh = node.spawn("counter").await?;
    assert_eq!(count(&node.client, fresh).await?.version, 2);
    node.stop().await;
    Ok(())
}
