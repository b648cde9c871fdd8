//! One node, real wasm services: calls, sessions, failures, timers, spawn.

use crate::support::{Command, DEADLINE, Reply, TestNode, TrapKind, test_config, within};
use rand::Rng;
use skyhost::{Address, CallError, ErrorCause};

fn failed_with(result: Result<Reply, CallError>, cause: ErrorCause) -> String {
    match result {
        Err(CallError::Failed { cause: c, detail }) if c == cause => detail,
        other => panic!("expected an error with cause {cause:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let echo = t.spawn("echo").await?;
    let reply = within(t.client.call(echo, b"hello".to_vec())).await??;
    assert_eq!(reply, b"hello");
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_calls_from_ten_services() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let server = t.spawn("testkit").await?;
    let mut callers = Vec::new();
    for _ in 0..10 {
        callers.push(t.spawn("testkit").await?);
    }
    let mut calls = tokio::task::JoinSet::new();
    let client = std::sync::Arc::new(t.client);
    for (c, &caller) in callers.iter().enumerate() {
        for i in 0..100u32 {
            let client = client.clone();
            let payload = format!("{c}-{i}").into_bytes();
            calls.spawn(async move {
                let command = Command::Call {
                    target: server.0,
                    command: Box::new(Command::Echo(payload.clone())),
                };
                let reply = crate::support::command_via(&client, caller, &command).await;
                (payload, reply)
            });
        }
    }
    let mut answered = 0;
    while let Some(joined) = within(calls.join_next()).await? {
        let (payload, reply) = joined?;
        assert_eq!(reply, Ok(Reply::Bytes(payload)));
        answered += 1;
    }
    assert_eq!(answered, 1_000);
    within(t.node.shutdown()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_calls_do_not_deadlock() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let a = t.spawn("testkit").await?;
    let b = t.spawn("testkit").await?;
    // A calls B; B, while handling it, calls A; A answers while it waits on B.
    let inner = Command::Call {
        target: a.0,
        command: Box::new(Command::Echo(b"ab".to_vec())),
    };
    let outer = Command::Call {
        target: b.0,
        command: Box::new(inner),
    };
    assert_eq!(t.command(a, &outer).await, Ok(Reply::Bytes(b"ab".to_vec())));
    // And both at once, in opposite directions.
    let to_b = Command::Call {
        target: b.0,
        command: Box::new(Command::Echo(b"1".to_vec())),
    };
    let to_a = Command::Call {
        target: a.0,
        command: Box::new(Command::Echo(b"2".to_vec())),
    };
    let (r1, r2) = tokio::join!(t.command(a, &to_b), t.command(b, &to_a));
    assert_eq!(r1, Ok(Reply::Bytes(b"1".to_vec())));
    assert_eq!(r2, Ok(Reply::Bytes(b"2".to_vec())));
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_unknown_or_exited_services_fail_at_once() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let unknown = Address(0x00ff_ff00);
    match within(t.client.call(unknown, vec![])).await? {
        Err(e) => assert_eq!(e.cause(), Some(ErrorCause::UnknownAddress), "{e}"),
        Ok(r) => panic!("call to an unknown address answered {r:?}"),
    }
    let k = t.spawn("testkit").await?;
    t.client.monitor(k);
    assert_eq!(
        t.command(k, &Command::Exit { answer: true }).await,
        Ok(Reply::Unit)
    );
    let mut client = t.client;
    let notice = within(client.recv()).await?.expect("exit notice");
    assert_eq!(
        (notice.kind, notice.source),
        (skyhost::runtime::kind::EXIT, k)
    );
    match within(client.call(k, vec![])).await? {
        Err(e) => assert_eq!(e.cause(), Some(ErrorCause::UnknownAddress), "{e}"),
        Ok(r) => panic!("call to an exited service answered {r:?}"),
    }
    // A service that exits without answering: its caller gets an error.
    let k2 = within(t.node.spawn("testkit", &[])).await??;
    let r = crate::support::command_via(&client, k2, &Command::Exit { answer: false }).await;
    failed_with(r, ErrorCause::Exited);
    within(t.node.shutdown()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_service_fails_its_caller_and_the_node_serves_on() -> anyhow::Result<()> {
    let mut config = test_config();
    config.limits.memory_mb = 32;
    let t = TestNode::with_config(config)?;
    let echo = t.spawn("echo").await?;
    for (kind, expect) in [
        (TrapKind::Unreachable, "unreachable"),
        (TrapKind::Panic, "unreachable"),
        (TrapKind::OutOfBounds, "out of bounds"),
        (TrapKind::StackOverflow, ""),
        (TrapKind::AllocForever, "memory limit"),
    ] {
        let k = t.spawn("testkit").await?;
        let detail = failed_with(
            t.command(k, &Command::Trap(kind)).await,
            ErrorCause::Trapped,
        );
        assert!(detail.contains(expect), "{kind:?}: {detail}");
        assert!(
            t.node.services().iter().all(|(a, _)| *a != k),
            "{kind:?}: trapped service still listed"
        );
        assert_eq!(
            within(t.client.call(echo, b"alive".to_vec())).await??,
            b"alive",
            "after {kind:?}"
        );
    }
    t.stop().await;
    Ok(())
}

/// A Rust service's sends are queued (up to 64): a panic sends them before
/// the instance traps, so none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_service_sent_before_it_panicked_arrives() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let sink = t.spawn("testkit").await?;
    let sender = t.spawn("testkit").await?;
    let command = Command::SendThenTrap {
        target: sink.0,
        n: 10,
        trap: TrapKind::Panic,
    };
    failed_with(t.command(sender, &command).await, ErrorCause::Trapped);
    // The sends went into the sink's mailbox before the trap was answered,
    // so the sink (which takes its mail in order) counts them first.
    assert_eq!(t.command(sink, &Command::Count).await?, Reply::Count(10));
    t.stop().await;
    Ok(())
}

/// One scheduler thread: the spinning service must yield at its time slice
/// for the echo service to answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_spinning_service_is_preempted_then_stopped_at_its_budget() -> anyhow::Result<()> {
    let mut config = test_config();
    config.limits.cpu_budget_ms = 1_500;
    let t = TestNode::with_config(config)?;
    let echo = t.spawn("echo").await?;
    let spinner = t.spawn("testkit").await?;
    let client = std::sync::Arc::new(t.client);
    let spin = {
        let client = client.clone();
        tokio::spawn(
            async move { crate::support::command_via(&client, spinner, &Command::Spin).await },
        )
    };
    for i in 0..20u32 {
        let ping = i.to_le_bytes().to_vec();
        assert_eq!(within(client.call(echo, ping.clone())).await??, ping);
    }
    assert!(!spin.is_finished(), "the spinner ended before its budget");
    let detail = failed_with(within(spin).await??, ErrorCause::Trapped);
    assert!(detail.contains("cpu budget"), "{detail}");
    within(t.node.shutdown()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_fails_every_queued_caller() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let k = t.spawn("testkit").await?;
    let mut calls = tokio::task::JoinSet::new();
    let wait_for_mailbox = |len: usize| {
        let node = t.node.clone();
        async move {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while node.mailbox_len(k) != Some(len) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "mailbox never reached {len}"
                );
                tokio::task::yield_now().await;
            }
        }
    };
    let start = |command: Command| {
        let call = t
            .client
            .start_call(k, postcard::to_allocvec(&command).expect("encode"));
        call.expect("request enqueued")
    };
    // The first call keeps the service busy; once it has been taken, the
    // others stay queued behind it.
    calls.spawn(start(Command::Spin));
    wait_for_mailbox(0).await;
    for i in 1..=20 {
        calls.spawn(start(Command::Echo(vec![i])));
    }
    wait_for_mailbox(20).await;
    assert!(t.node.kill(k));
    let mut failed = 0;
    while let Some(joined) = within(calls.join_next()).await? {
        match joined? {
            Err(CallError::Failed {
                cause: ErrorCause::Killed,
                ..
            }) => failed += 1,
            other => panic!("expected a Killed error, got {other:?}"),
        }
    }
    assert_eq!(failed, 21);
    assert!(!t.node.kill(k), "killed twice");
    t.stop().await;
    Ok(())
}

/// A timed call answered in time leaves no timer behind, whether it was
/// answered inside the call (its timer is never set) or by mailbox (the
/// answer cancels it): with 60 s timeouts, every one would still be pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_calls_answered_in_time_leave_no_timer_behind() -> anyhow::Result<()> {
    for direct_calls in [true, false] {
        let mut config = test_config();
        config.limits.direct_calls = direct_calls;
        let t = TestNode::with_config(config)?;
        let (server, caller) = (t.spawn("testkit").await?, t.spawn("testkit").await?);
        let command = Command::CallLoopWithin {
            target: server.0,
            n: 100,
            payload: vec![1; 16],
            timeout_ms: 60_000,
        };
        assert_eq!(t.command(caller, &command).await?, Reply::Unit);
        assert_eq!(
            t.node.timers_pending(),
            0,
            "timers left with direct calls {direct_calls}"
        );
        t.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_in_deadline_order() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let k = t.spawn("testkit").await?;
    let mut rng = rand::rng();
    let deadlines: Vec<u32> = (0..100).map(|_| rng.random_range(1..300)).collect();
    let Reply::Order(order) = t.command(k, &Command::Timers(deadlines.clone())).await? else {
        panic!("Timers answers with an order");
    };
    let mut seen = order.clone();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..100).collect::<Vec<u32>>(),
        "every timer fired once"
    );
    let fired: Vec<u32> = order.iter().map(|&i| deadlines[i as usize]).collect();
    assert!(
        fired.windows(2).all(|w| w[0] <= w[1]),
        "timers fired out of deadline order: {fired:?}"
    );
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_spawned_services_exit_and_the_count_returns() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let spawner = t.spawn("testkit").await?;
    let before = t.node.service_count();
    let Reply::Addresses(spawned) = t
        .command(
            spawner,
            &Command::SpawnMany {
                module: "testkit".into(),
                n: 1_000,
            },
        )
        .await?
    else {
        panic!("SpawnMany answers with addresses");
    };
    assert_eq!(spawned.len(), 1_000);
    assert_eq!(t.node.service_count(), before + 1_000);
    let client = std::sync::Arc::new(t.client);
    let mut exits = tokio::task::JoinSet::new();
    for &a in &spawned {
        client.monitor(Address(a));
        let client = client.clone();
        exits.spawn(async move {
            crate::support::command_via(&client, Address(a), &Command::Exit { answer: true }).await
        });
    }
    while let Some(joined) = within(exits.join_next()).await? {
        assert_eq!(joined?, Ok(Reply::Unit));
    }
    let mut client = std::sync::Arc::into_inner(client).expect("calls done");
    let mut exited = std::collections::HashSet::new();
    while exited.len() < 1_000 {
        let m = within(client.recv()).await?.expect("exit notice");
        assert_eq!(m.kind, skyhost::runtime::kind::EXIT);
        exited.insert(m.source.0);
    }
    assert_eq!(t.node.service_count(), before);
    within(t.node.shutdown()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_payload_round_trips() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let echo = t.spawn("echo").await?;
    let mut payload = vec![0u8; 1 << 20];
    rand::rng().fill(&mut payload[..]);
    let reply = within(t.client.call(echo, payload.clone())).await??;
    assert!(reply == payload, "1 MiB payload came back changed");
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolve_and_go_with_their_service() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let k = t.spawn("testkit").await?;
    assert_eq!(
        t.command(k, &Command::Register(".db".into())).await,
        Ok(Reply::Unit)
    );
    assert_eq!(t.node.query(".db"), Some(k));
    let other = t.spawn("testkit").await?;
    assert_eq!(
        t.command(other, &Command::Query(".db".into())).await,
        Ok(Reply::MaybeAddress(Some(k.0)))
    );
    assert!(matches!(
        t.command(other, &Command::Register(".db".into())).await,
        Ok(Reply::Failed(_))
    ));
    assert_eq!(
        t.command(k, &Command::Exit { answer: true }).await,
        Ok(Reply::Unit)
    );
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while t.node.query(".db").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "name outlived its service"
        );
        tokio::task::yield_now().await;
    }
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_module_names_the_paths_searched() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let err = within(t.node.spawn("no-such-module", &[]))
        .await?
        .expect_err("spawn must fail");
    let text = err.to_string();
    assert!(
        text.contains("no-such-module") && text.contains("no-such-module.wasm"),
        "{text}"
    );
    let k = t.spawn("testkit").await?;
    let r = t
        .command(
            k,
            &Command::Spawn {
                module: "no-such-module".into(),
                args: vec![],
            },
        )
        .await;
    assert!(
        matches!(&r, Ok(Reply::Failed(e)) if e.contains("not found")),
        "{r:?}"
    );
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_modules_are_cached_on_disk_and_reused() -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    let mut config = test_config();
    config.cache_dir = Some(cache.path().to_path_buf());
    let cached = || -> anyhow::Result<Vec<(std::path::PathBuf, std::time::SystemTime)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(cache.path())? {
            let entry = entry?;
            files.push((entry.path(), entry.metadata()?.modified()?));
        }
        Ok(files)
    };
    let first = TestNode::with_config(config.clone())?;
    first.spawn("echo").await?;
    first.spawn("echo").await?;
    first.stop().await;
    let after_first = cached()?;
    assert_eq!(
        after_first.len(),
        1,
        "one compiled module for echo: {after_first:?}"
    );
    // A restarted node reads the cached file instead of compiling again.
    let second = TestNode::with_config(config)?;
    let echo = second.spawn("echo").await?;
    assert_eq!(
        within(second.client.call(echo, b"x".to_vec())).await??,
        b"x"
    );
    second.stop().await;
    assert_eq!(cached()?, after_first, "the cache file was rewritten");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_has_no_service_marked_ready() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let sinks = [t.spawn("testkit").await?, t.spawn("testkit").await?];
    // Many empty-to-non-empty mailbox transitions, racing the services'
    // pick-ups; every mark must be cleared once the messages are handled.
    const ROUNDS: u64 = 2_000;
    for round in 0..ROUNDS {
        for &sink in &sinks {
            t.client
                .send(sink, skyhost::runtime::kind::TEXT, 0, vec![1])?;
        }
        if round % 4 == 3 {
            tokio::task::yield_now().await;
        }
    }
    for &sink in &sinks {
        assert_eq!(
            t.command(sink, &Command::Count).await,
            Ok(Reply::Count(ROUNDS))
        );
    }
    assert_eq!(t.node.ready_services(), 0, "a service stayed marked ready");
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_first_service_answers() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let hello = t.spawn("hello").await?;
    assert_eq!(t.node.query(".hello"), Some(hello));
    let reply = within(t.client.call(hello, postcard::to_allocvec("skyhost")?)).await??;
    assert_eq!(postcard::from_bytes::<String>(&reply)?, "hello, skyhost");
    t.stop().await;
    Ok(())
}

/// A runaway service with requests queued behind it is stopped at its CPU
/// budget, not at the budget times the batch it took them in. One thread
/// for the test and the node: the requests are all queued before the
/// service runs, so it takes them in one batch.
#[tokio::test(flavor = "current_thread")]
async fn a_runaway_is_stopped_at_its_budget_whatever_is_queued_behind_it() -> anyhow::Result<()> {
    const BUDGET_MS: u64 = 200;
    const QUEUED: usize = 16;
    let mut config = test_config();
    config.limits.cpu_budget_ms = BUDGET_MS;
    let t = TestNode::with_config(config)?;
    let spinner = t.spawn("testkit").await?;
    let cpu_before = system_cpu_us(&t);
    let spin = postcard::to_allocvec(&Command::Spin)?;
    let calls: Vec<_> = (0..QUEUED)
        .map(|_| t.client.start_call(spinner, spin.clone()))
        .collect::<Result<_, _>>()?;
    for call in calls {
        let detail = match within(call).await? {
            Err(CallError::Failed { cause, detail }) => {
                assert_eq!(cause, ErrorCause::Trapped, "{detail}");
                detail
            }
            other => panic!("expected the spinner to be stopped, got {other:?}"),
        };
        assert!(detail.contains("cpu budget of 200 ms"), "{detail}");
    }
    // The CPU time it ran (running time, as the budget counts it) is one
    // budget and a tick; 16 budgets before the budget stopped counting
    // per batch.
    let ran_ms = (system_cpu_us(&t) - cpu_before) / 1_000;
    assert!(
        ran_ms < 3 * BUDGET_MS,
        "the runaway ran {ran_ms} ms against a budget of {BUDGET_MS} ms"
    );
    t.stop().await;
    Ok(())
}

/// CPU time the system tenant's services have run, in µs.
fn system_cpu_us(t: &TestNode) -> u64 {
    t.node
        .tenant_stats()
        .iter()
        .find(|s| s.name == "system")
        .map_or(0, |s| s.cpu_us)
}

/// `call-timeout`: the host ends the call at its deadline, and drops the
/// answer that comes after; an answer in time ends it, and the deadline's
/// own error is dropped without being counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_call_ends_once_and_its_late_answer_is_dropped() -> anyhow::Result<()> {
    use skyhost::LateAt;
    let t = TestNode::start()?;
    let caller = t.spawn("testkit").await?;
    let callee = t.spawn("testkit").await?;
    let within_ms = |command: Command, timeout_ms| Command::CallWithin {
        target: callee.0,
        command: Box::new(command),
        timeout_ms,
    };
    // In time: the answer; its deadline (100 ms on) ends nothing.
    let echo = within_ms(Command::Echo(b"in time".to_vec()), 100);
    assert_eq!(
        t.command(caller, &echo).await?,
        Reply::Bytes(b"in time".to_vec())
    );
    // Too late: the host's timeout, after the first deadline passed.
    let slow = Command::SleepThenEcho {
        ms: 1_000,
        payload: b"late".to_vec(),
    };
    let reply = t.command(caller, &within_ms(slow, 400)).await?;
    assert_eq!(reply, Reply::Failed("timed out".into()));
    assert_eq!(
        t.node.late_answers(LateAt::Service),
        0,
        "an expired deadline of an answered call was counted as a late answer"
    );
    // The callee answers at 1 s: dropped and counted, never dispatched.
    crate::support::eventually("the late answer dropped", || {
        t.node.late_answers(LateAt::Service) == 1
    })
    .await?;
    t.stop().await;
    Ok(())
}

/// A service that sends past its time slice (a hog) does not yield to its
/// receiver once per message: the receiver, woken by it each time, waits
/// for the sender's slice and takes the messages in batches (on the
/// workers; tokio's scheduler interrupts the hog for every one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hog_s_one_way_receiver_takes_its_messages_in_batches() -> anyhow::Result<()> {
    use anyhow::Context as _;
    const N: u32 = 200_000;
    let mut config = test_config();
    config.scheduler = skyhost::config::Scheduler::Workers;
    config.threads = Some(2);
    let node = TestNode::with_config(config)?;
    let receiver = node.spawn("testkit").await?;
    let sender = node.spawn("testkit").await?;
    let sent = node
        .command(
            sender,
            &Command::SendLoop {
                target: receiver.0,
                n: N,
                payload: vec![7; 16],
            },
        )
        .await?;
    anyhow::ensure!(sent == Reply::Unit, "SendLoop answered {sent:?}");
    let start = std::time::Instant::now();
    while node.command(receiver, &Command::Count).await? != Reply::Count(u64::from(N)) {
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "the messages did not all arrive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let info = node
        .node
        .service_info(receiver)
        .context("the receiver lives")?;
    // One message per dispatch when the sender yields to each wake.
    anyhow::ensure!(
        info.dispatches * 8 <= u64::from(N),
        "{N} messages took {} dispatches",
        info.dispatches
    );
    node.stop().await;
    Ok(())
}

/// A service's sends in bulk (`send-batch`, the SDK's `Outbox`) arrive in
/// order, and a batch stops at the first message refused: the error names
/// it; the ones before it arrived, the ones after did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_batch_arrives_in_order_and_stops_at_the_first_refused() -> anyhow::Result<()> {
    use anyhow::Context as _;
    use skyhost::runtime::kind;
    let t = TestNode::start()?;
    let mut inbox = t.node.client();
    let sender = t.spawn("testkit").await?;
    let batched = |targets: Vec<u32>, n: u32| Command::SendLoopBatched {
        targets,
        n,
        payload: b"!".to_vec(),
        per_flush: 64,
    };
    // 150 messages: two full flushes and a last one of 22.
    let sent = t
        .command(sender, &batched(vec![inbox.address().0], 150))
        .await?;
    anyhow::ensure!(sent == Reply::Unit, "SendLoopBatched answered {sent:?}");
    for i in 0..150u32 {
        let m = within(inbox.recv()).await?.context("the inbox closed")?;
        anyhow::ensure!(
            (m.kind, m.source) == (kind::TEXT, sender),
            "message {i}: kind {} from {}",
            m.kind,
            m.source
        );
        let mut expected = i.to_le_bytes().to_vec();
        expected.push(b'!');
        anyhow::ensure!(m.payload[..] == expected[..], "message {i} out of order");
    }

    let unknown = Address(0x00ff_ff00);
    let targets = vec![inbox.address().0, unknown.0, inbox.address().0];
    match t.command(sender, &batched(targets, 3)).await? {
        Reply::Failed(text) => anyhow::ensure!(
            text.contains("message 1 of the batch: unknown address"),
            "{text}"
        ),
        r => anyhow::bail!("a batch with an unknown address answered {r:?}"),
    }
    let first = within(inbox.recv()).await?.context("the inbox closed")?;
    anyhow::ensure!(
        first.payload[..4] == 0u32.to_le_bytes(),
        "the message before the refused one"
    );
    // The one after the refused message was not sent: a probe comes next.
    t.client
        .send(inbox.address(), kind::TEXT, 0, b"probe".to_vec())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let next = within(inbox.recv()).await?.context("the inbox closed")?;
    anyhow::ensure!(
        &next.payload[..] == b"probe",
        "a message after the refused one arrived"
    );
    t.stop().await;
    Ok(())
}
