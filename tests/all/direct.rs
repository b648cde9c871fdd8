//! The direct hand-off (docs/scheduler.md): a call to an idle service on
//! the node runs inside the caller's `call`, and everything a call promises
//! holds there: the answer, the order of what the callee sent first, a
//! trap, a kill, the budget.

use std::time::Duration;

use crate::support::{Command, DEADLINE, Reply, TestNode, TrapKind, test_config, within};
use skyhost::Address;

/// A testkit to call and a testkit that calls it, once the first's
/// instance is on offer.
async fn server_and_caller(t: &TestNode) -> anyhow::Result<(Address, Address)> {
    let (server, caller) = (t.spawn("testkit").await?, t.spawn("testkit").await?);
    until_handed_off(t, caller, server).await?;
    Ok((server, caller))
}

/// Has `caller` call `server` until a call is handed off: a service offers
/// its instance once its task first waits for mail (after its spawn, or
/// the call that woke it from hibernation).
async fn until_handed_off(t: &TestNode, caller: Address, server: Address) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let before = t.node.direct_calls();
    while t.node.direct_calls() == before {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no call to {server} was handed off"
        );
        call_loop(t, caller, server, 1).await?;
    }
    Ok(())
}

/// Has `caller` call `server` with `command`, from a host client in the
/// background: the caller's answer (`Reply::Failed` when its call failed).
fn call_in_background(
    t: &TestNode,
    caller: Address,
    server: Address,
    command: Command,
) -> tokio::task::JoinHandle<Result<Reply, skyhost::CallError>> {
    let client = t.node.client();
    let command = Command::Call {
        target: server.0,
        command: Box::new(command),
    };
    tokio::spawn(async move { crate::support::command_via(&client, caller, &command).await })
}

/// `caller` calls `target` `n` times (a testkit `CallLoop`).
async fn call_loop(t: &TestNode, caller: Address, target: Address, n: u32) -> anyhow::Result<()> {
    let command = Command::CallLoop {
        target: target.0,
        n,
        payload: vec![7; 16],
    };
    match t.command(caller, &command).await? {
        Reply::Unit => Ok(()),
        r => anyhow::bail!("CallLoop answered {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_an_idle_service_run_inside_the_caller() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let (server, caller) = server_and_caller(&t).await?;
    let before = t.node.direct_calls();
    call_loop(&t, caller, server, 200).await?;
    // The server waits for mail between the calls, so each is handed off
    // (the caller's own command came from a host client: not one).
    assert_eq!(t.node.direct_calls(), before + 200);
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_direct_calls_off_every_call_goes_through_the_mailbox() -> anyhow::Result<()> {
    let mut config = test_config();
    config.limits.direct_calls = false;
    let t = TestNode::with_config(config)?;
    let (server, caller) = (t.spawn("testkit").await?, t.spawn("testkit").await?);
    call_loop(&t, caller, server, 200).await?;
    assert_eq!(t.node.direct_calls(), 0);
    t.stop().await;
    Ok(())
}

/// A callee run inside a call hands its own calls off too, down to four
/// services deep; deeper calls go by mailbox, and every answer comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_calls_is_handed_off_four_services_deep() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let mut chain = Vec::new();
    for _ in 0..6 {
        chain.push(t.spawn("testkit").await?);
    }
    for &service in &chain[1..] {
        until_handed_off(&t, chain[0], service).await?;
    }
    // chain[0] calls chain[1], which calls chain[2], ... chain[5] echoes.
    let mut command = Command::Echo(vec![5]);
    for service in chain[1..].iter().rev() {
        command = Command::Call {
            target: service.0,
            command: Box::new(command),
        };
    }
    let before = t.node.direct_calls();
    assert_eq!(t.command(chain[0], &command).await?, Reply::Bytes(vec![5]));
    // chain[1..=3] ran inside chain[0]'s call; chain[4] took its request by
    // mail, on its own thread, and chain[5] ran inside its call.
    assert_eq!(t.node.direct_calls(), before + 4);
    t.stop().await;
    Ok(())
}

/// What the callee sends its caller before it answers reaches the caller
/// before the answer: the answer then goes through the mailbox behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_callee_sent_its_caller_first_arrives_before_the_answer() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let (server, caller) = server_and_caller(&t).await?;
    let before = t.node.direct_calls();
    let command = Command::CallThenSeqLog {
        target: server.0,
        command: Box::new(Command::SendSeq {
            target: caller.0,
            n: 3,
        }),
    };
    assert_eq!(
        t.command(caller, &command).await?,
        Reply::Order(vec![0, 1, 2])
    );
    assert_eq!(t.node.direct_calls(), before + 1);
    t.stop().await;
    Ok(())
}

/// What the callee sent in an earlier dispatch, still queued for the
/// caller, arrives before the answer to a later call: a caller with mail
/// queued calls by mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_callee_sent_earlier_and_is_queued_arrives_before_the_answer() -> anyhow::Result<()>
{
    let t = TestNode::start()?;
    let (server, caller) = server_and_caller(&t).await?;
    let relay = t.spawn("testkit").await?;
    // Each callee's last run is a hand-off, so its instance is back on
    // offer before the caller's command (a run by its own task could still
    // be ending when the command comes).
    until_handed_off(&t, relay, server).await?;
    until_handed_off(&t, caller, relay).await?;
    let before = t.node.direct_calls();
    // Inside the caller's first call, the relay calls the server, which
    // sends the caller a numbered text: it waits in the caller's mailbox
    // while the caller's dispatch goes on to call the server again.
    let sends = Command::CallThenSeqLog {
        target: server.0,
        command: Box::new(Command::SendSeq {
            target: caller.0,
            n: 1,
        }),
    };
    let command =
        Command::CallsThenSeqLog(vec![(relay.0, sends), (server.0, Command::Echo(vec![1]))]);
    assert_eq!(t.command(caller, &command).await?, Reply::Order(vec![0]));
    // The first two calls ran inside their callers; the last went by mail.
    assert_eq!(t.node.direct_calls(), before + 2);
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_that_traps_inside_the_call_ends_alone() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let (server, caller) = server_and_caller(&t).await?;
    let before = t.node.direct_calls();
    let trap = call_in_background(&t, caller, server, Command::Trap(TrapKind::Unreachable));
    match within(trap).await??? {
        Reply::Failed(e) => assert!(e.contains("trapped"), "{e}"),
        r => panic!("a call to a trapping service answered {r:?}"),
    }
    assert_eq!(t.node.direct_calls(), before + 1);
    ended_and_the_caller_serves_on(&t, server, caller).await?;
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_that_spins_inside_the_call_is_stopped_at_its_budget() -> anyhow::Result<()> {
    let mut config = test_config();
    config.limits.cpu_budget_ms = 300;
    let t = TestNode::with_config(config)?;
    let (server, caller) = server_and_caller(&t).await?;
    let echo = t.spawn("echo").await?;
    let spin = call_in_background(&t, caller, server, Command::Spin);
    until_running(&t, server).await;
    // The node answers while the callee spins on the caller's thread.
    assert_eq!(
        within(t.client.call(echo, b"ping".to_vec())).await??,
        b"ping"
    );
    // Stopped at its budget: a spin never ends otherwise.
    match within(spin).await??? {
        Reply::Failed(e) => assert!(e.contains("trapped"), "{e}"),
        r => panic!("a call to a spinning service answered {r:?}"),
    }
    // The caller's budget did not pay for the callee's spin.
    ended_and_the_caller_serves_on(&t, server, caller).await?;
    t.stop().await;
    Ok(())
}

/// A timed call's clock starts when it is made, not when a callee run
/// inside it returns: a callee that spins to its budget inside the call
/// leaves its caller a timeout, which came first, not its trap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_call_counts_from_before_the_callee_runs() -> anyhow::Result<()> {
    let mut config = test_config();
    config.limits.cpu_budget_ms = 300;
    let t = TestNode::with_config(config)?;
    let (server, caller) = server_and_caller(&t).await?;
    let before = t.node.direct_calls();
    let command = Command::CallWithin {
        target: server.0,
        command: Box::new(Command::Spin),
        timeout_ms: 20,
    };
    match t.command(caller, &command).await? {
        Reply::Failed(e) => assert!(e.contains("timed out"), "{e}"),
        r => panic!("a timed call to a spinning service answered {r:?}"),
    }
    assert_eq!(t.node.direct_calls(), before + 1);
    ended_and_the_caller_serves_on(&t, server, caller).await?;
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_killed_inside_the_call_answers_its_caller_killed() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let (server, caller) = server_and_caller(&t).await?;
    let before = t.node.direct_calls();
    let spin = call_in_background(&t, caller, server, Command::Spin);
    until_running(&t, server).await;
    assert!(t.node.kill(server));
    match within(spin).await??? {
        Reply::Failed(e) => assert!(e.contains("killed"), "{e}"),
        r => panic!("a call to a killed service answered {r:?}"),
    }
    // It spun inside the caller's call.
    assert_eq!(t.node.direct_calls(), before + 1);
    // Exactly once: the caller's next calls are answered, not by a stray error.
    ended_and_the_caller_serves_on(&t, server, caller).await?;
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_that_answers_later_owes_the_answer_when_killed() -> anyhow::Result<()> {
    let t = TestNode::start()?;
    let (server, caller) = server_and_caller(&t).await?;
    let before = t.node.direct_calls();
    // It runs inside the call, sets a timer and returns without answering:
    // the request is owed from the end of the hand-off.
    let asked = call_in_background(
        &t,
        caller,
        server,
        Command::SleepThenEcho {
            ms: 600_000,
            payload: vec![1],
        },
    );
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while t.node.direct_calls() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call was never handed off"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(t.node.kill(server));
    match within(asked).await??? {
        Reply::Failed(e) => assert!(e.contains("killed"), "{e}"),
        r => panic!("a call owed by a killed service answered {r:?}"),
    }
    ended_and_the_caller_serves_on(&t, server, caller).await?;
    t.stop().await;
    Ok(())
}

/// Waits until `service` is in a dispatch.
async fn until_running(t: &TestNode, service: Address) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while t
        .node
        .service_info(service)
        .is_none_or(|i| i.state != "running")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} never ran"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until `server` is out of the node's table, then has `caller`
/// call a fresh server: it serves on, with its calls handed off.
async fn ended_and_the_caller_serves_on(
    t: &TestNode,
    server: Address,
    caller: Address,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while t.node.services().iter().any(|(a, _)| *a == server) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{server} never ended"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let other = t.spawn("testkit").await?;
    until_handed_off(t, caller, other).await
}
