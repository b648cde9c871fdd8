//! Runtime tests against the fake host: messages in through `dispatch`,
//! effects (calls, answers, timers) out through the fake imports.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fake::{self, Effect};
use crate::runtime;
use crate::{
    Address, Message, Reply, Responder, Service, call, call_timeout, exit, fork, kind, sleep,
    spawn_raw,
};

/// What the test service does with a message (requests and text alike).
#[derive(Serialize, Deserialize, Debug)]
enum Cmd {
    /// Call `target` with `value` (u32) and answer what it answered (u32).
    Relay { target: u32, value: u32 },
    /// Call `a` and `b` at once, answer the sum of their answers.
    Two { a: u32, b: u32 },
    /// Take the responder and keep it.
    Hold,
    /// (text) Drop the held responder.
    Release,
    /// (text) Answer the held responder with this value.
    AnswerHeld(u32),
    /// Return `Reply::none()` without taking the responder.
    Nothing,
    /// Exit without answering.
    Exit,
    /// Call `target` with a timeout.
    Timed { target: u32, ms: u32 },
    /// Call `peer` with `Hello` and answer what it said.
    Ask { peer: u32 },
    /// Answer a greeting naming this service.
    Hello,
    /// Fork a task that sleeps, then answer from it through the responder.
    SleepThenAnswer(u32),
    /// Spawn module "m" and answer its address.
    Spawn,
    /// Call service `TARGET` on cluster node "db" with 1..=n through one
    /// batcher, all at once; answer the sum of the answers.
    Batched(u32),
    /// Taken by `handle_now`: answer n + 1 (a request), count it (text).
    Now(u32),
    /// Taken by `handle_now`, which answers nothing.
    NowSilent,
    /// (text) Subscribe to channel n with a handler of its own.
    Listen(u32),
    /// (text) Unsubscribe from channel n.
    Unlisten(u32),
    /// Send 0..n (u32) to `target` as text; then, if `call`, call it with n
    /// and answer what it said, else answer n.
    Tell { target: u32, n: u32, call: bool },
    /// Call `a` and `b` at once and await both together (each answer's
    /// wake polls the other call again); answer the sum.
    Both { a: u32, b: u32 },
}

thread_local! {
    /// How many times `Probe::handle` ran on this thread.
    static HANDLED: Cell<u32> = const { Cell::new(0) };
    /// How many messages `Probe::handle_now` took on this thread.
    static TAKEN_NOW: Cell<u32> = const { Cell::new(0) };
}

fn taken_now() -> u32 {
    TAKEN_NOW.with(Cell::get)
}

fn handled() -> u32 {
    HANDLED.with(Cell::get)
}

/// A service driven by [`Cmd`]; counts every `handle` in [`HANDLED`].
struct Probe {
    held: RefCell<Option<Responder>>,
}

impl Service for Probe {
    fn init(args: Vec<u8>) -> Result<Self, String> {
        if args == b"fail" {
            return Err("asked to fail".into());
        }
        Ok(Probe {
            held: RefCell::new(None),
        })
    }

    fn handle_now(&self, msg: &crate::Incoming<'_>) -> Option<Reply> {
        let reply = match msg.decode::<Cmd>() {
            Ok(Cmd::Now(n)) => Reply::value(&(n + 1)),
            Ok(Cmd::NowSilent) => Reply::none(),
            _ => return None,
        };
        TAKEN_NOW.with(|t| t.set(t.get() + 1));
        Some(reply)
    }

    async fn handle(self: Rc<Self>, mut msg: Message) -> Reply {
        HANDLED.with(|h| h.set(h.get() + 1));
        let cmd: Cmd = match msg.decode() {
            Ok(cmd) => cmd,
            Err(e) => return Reply::error(e.to_string()),
        };
        match cmd {
            Cmd::Relay { target, value } => match call::<u32, u32>(Address(target), &value).await {
                Ok(v) => Reply::value(&v),
                Err(e) => Reply::error(e.to_string()),
            },
            Cmd::Two { a, b } => {
                let first = call::<u32, u32>(Address(a), &1);
                let second = call::<u32, u32>(Address(b), &2);
                match (first.await, second.await) {
                    (Ok(x), Ok(y)) => Reply::value(&(x + y)),
                    (Err(e), _) | (_, Err(e)) => Reply::error(e.to_string()),
                }
            }
            Cmd::Both { a, b } => {
                let mut first = std::pin::pin!(call::<u32, u32>(Address(a), &1));
                let mut second = std::pin::pin!(call::<u32, u32>(Address(b), &2));
                let (mut x, mut y) = (None, None);
                std::future::poll_fn(|cx| {
                    if x.is_none()
                        && let std::task::Poll::Ready(v) = first.as_mut().poll(cx)
                    {
                        x = Some(v);
                    }
                    if y.is_none()
                        && let std::task::Poll::Ready(v) = second.as_mut().poll(cx)
                    {
                        y = Some(v);
                    }
                    if x.is_some() && y.is_some() {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await;
                match (x, y) {
                    (Some(Ok(x)), Some(Ok(y))) => Reply::value(&(x + y)),
                    _ => Reply::error("a call failed"),
                }
            }
            Cmd::Hold => {
                *self.held.borrow_mut() = msg.take_responder();
                assert!(msg.take_responder().is_none(), "a responder is taken once");
                Reply::none()
            }
            Cmd::Release => {
                drop(self.held.borrow_mut().take());
                Reply::none()
            }
            Cmd::AnswerHeld(v) => {
                if let Some(r) = self.held.borrow_mut().take() {
                    r.ok(&v).expect("fake host accepts");
                }
                Reply::none()
            }
            Cmd::Nothing => Reply::none(),
            Cmd::Exit => {
                exit();
                Reply::none()
            }
            Cmd::Timed { target, ms } => {
                let r =
                    call_timeout::<u32, u32>(Address(target), &0, Duration::from_millis(ms.into()));
                match r.await {
                    Ok(v) => Reply::value(&v),
                    Err(e) => Reply::error(e.to_string()),
                }
            }
            Cmd::Ask { peer } => match call::<Cmd, String>(Address(peer), &Cmd::Hello).await {
                Ok(s) => Reply::value(&format!("{} heard: {s}", crate::self_address())),
                Err(e) => Reply::error(e.to_string()),
            },
            Cmd::Hello => Reply::value(&format!("hello from {}", crate::self_address())),
            Cmd::SleepThenAnswer(ms) => {
                let responder = msg.take_responder();
                fork(async move {
                    sleep(Duration::from_millis(ms.into())).await;
                    if let Some(r) = responder {
                        r.ok_bytes(b"slept").expect("fake host accepts");
                    }
                });
                Reply::none()
            }
            Cmd::Batched(n) => {
                let batcher = crate::batch::Batcher::new("db", Address(TARGET));
                let calls: Vec<_> = (1..=n).map(|i| batcher.call::<u32, u32>(&i)).collect();
                let mut sum = 0;
                for call in calls {
                    match call.await {
                        Ok(v) => sum += v,
                        Err(e) => return Reply::error(e.to_string()),
                    }
                }
                Reply::value(&sum)
            }
            Cmd::Now(_) | Cmd::NowSilent => Reply::error("handle_now takes these"),
            Cmd::Listen(n) => {
                let subscribed = crate::multicast::Channel(n).subscribe_with(|_| {});
                subscribed.map_or_else(|e| Reply::error(e.to_string()), |()| Reply::none())
            }
            Cmd::Unlisten(n) => {
                crate::multicast::Channel(n).unsubscribe();
                Reply::none()
            }
            Cmd::Tell {
                target,
                n,
                call: then_call,
            } => {
                for i in 0..n {
                    if let Err(e) = crate::send(Address(target), kind::TEXT, &i) {
                        return Reply::error(e.to_string());
                    }
                }
                if !then_call {
                    return Reply::value(&n);
                }
                match call::<u32, u32>(Address(target), &n).await {
                    Ok(v) => Reply::value(&v),
                    Err(e) => Reply::error(e.to_string()),
                }
            }
            Cmd::Spawn => match spawn_raw("m", b"args").await {
                Ok(a) => Reply::value(&a.0),
                Err(e) => Reply::error(e.to_string()),
            },
        }
    }
}

const CALLER: u32 = 0x0000_0201;
const TARGET: u32 = 0x0000_0301;

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("encodes")
}

/// One message for a test batch: kind, source, session, payload.
type Raw = (u8, u32, u32, Vec<u8>);

fn raw(kind: u8, source: u32, session: u32, payload: Vec<u8>) -> Raw {
    (kind, source, session, payload)
}

fn request(session: u32, cmd: &Cmd) -> Raw {
    raw(kind::REQUEST, CALLER, session, enc(cmd))
}

fn text(cmd: &Cmd) -> Raw {
    raw(kind::TEXT, CALLER, 0, enc(cmd))
}

fn response(session: u32, payload: Vec<u8>) -> Raw {
    raw(kind::RESPONSE, TARGET, session, payload)
}

fn error(session: u32, cause: u8) -> Raw {
    raw(kind::ERROR, TARGET, session, vec![cause])
}

fn start() {
    runtime::init::<Probe>(Vec::new()).expect("init");
    assert!(fake::take_effects().is_empty());
}

fn deliver(messages: Vec<Raw>) -> Vec<Effect> {
    runtime::dispatch_batch::<Probe>(crate::delivery::encode(&messages));
    fake::take_effects()
}

fn answered(session: u32, reply: Result<Vec<u8>, &str>) -> Effect {
    Effect::Respond {
        dest: CALLER,
        session,
        reply: reply.map_err(str::to_owned),
    }
}

fn called(session: u32, value: u32) -> Effect {
    Effect::Call {
        dest: TARGET,
        session,
        payload: enc(&value),
    }
}

#[test]
fn init_errors_fail_the_service() {
    assert_eq!(
        runtime::init::<Probe>(b"fail".to_vec()),
        Err("asked to fail".into())
    );
}

#[test]
fn sessions_complete_out_of_order() {
    start();
    let effects = deliver(vec![
        request(
            7,
            &Cmd::Relay {
                target: TARGET,
                value: 1,
            },
        ),
        request(
            8,
            &Cmd::Relay {
                target: TARGET,
                value: 2,
            },
        ),
    ]);
    assert_eq!(effects, vec![called(1, 1), called(2, 2)]);
    assert_eq!(runtime::stats(), (2, 2));

    // The second call's answer comes first: it must reach the second request.
    assert_eq!(
        deliver(vec![response(2, enc(&20u32))]),
        vec![answered(8, Ok(enc(&20u32)))]
    );
    assert_eq!(
        deliver(vec![response(1, enc(&10u32))]),
        vec![answered(7, Ok(enc(&10u32)))]
    );
    assert_eq!(runtime::stats(), (0, 0));
}

#[test]
fn handle_now_answers_without_a_task_and_in_arrival_order() {
    start();
    let (handled_before, now) = (handled(), taken_now());
    let effects = deliver(vec![
        request(
            4,
            &Cmd::Relay {
                target: TARGET,
                value: 1,
            },
        ),
        request(5, &Cmd::Now(41)),
        text(&Cmd::Now(0)),
        request(6, &Cmd::Hello),
        request(7, &Cmd::NowSilent),
    ]);
    let hello = enc(&"hello from :00000101".to_owned());
    assert_eq!(
        effects,
        vec![
            called(1, 1),
            answered(5, Ok(enc(&42u32))),
            answered(6, Ok(hello)),
            answered(7, Err("returned without answering")),
        ]
    );
    assert_eq!(taken_now() - now, 3, "Now, text Now, NowSilent");
    assert_eq!(handled() - handled_before, 2, "Relay and Hello only");
    // Only the relay's task is left, waiting on its call.
    assert_eq!(runtime::stats(), (1, 1));

    // An answer to a session of ours is the waiting task's, whatever it holds.
    assert_eq!(
        deliver(vec![response(1, enc(&Cmd::Now(9)))]).len(),
        1,
        "the relay answered"
    );
    assert_eq!(taken_now() - now, 3);
    assert_eq!(runtime::stats(), (0, 0));
}

/// A call polled again while it waits (woken by the other) keeps its
/// waker: its own answer still wakes the task.
#[test]
fn a_call_polled_again_while_it_waits_is_still_woken_by_its_answer() {
    start();
    let both = Cmd::Both {
        a: TARGET,
        b: TARGET,
    };
    assert_eq!(
        deliver(vec![request(3, &both)]),
        vec![called(1, 1), called(2, 2)]
    );
    assert!(
        deliver(vec![response(2, enc(&5u32))]).is_empty(),
        "the second's answer wakes the task, which polls the first again"
    );
    assert_eq!(
        deliver(vec![response(1, enc(&3u32))]),
        vec![answered(3, Ok(enc(&8u32)))]
    );
    assert_eq!(runtime::stats(), (0, 0));
}

#[test]
fn one_task_awaits_two_calls() {
    start();
    let effects = deliver(vec![request(
        3,
        &Cmd::Two {
            a: TARGET,
            b: TARGET,
        },
    )]);
    assert_eq!(
        effects,
        vec![called(1, 1), called(2, 2)],
        "both calls leave at once"
    );
    assert!(
        deliver(vec![response(2, enc(&5u32))]).is_empty(),
        "still waits on the first"
    );
    assert_eq!(
        deliver(vec![response(1, enc(&3u32))]),
        vec![answered(3, Ok(enc(&8u32)))]
    );

    // The first fails, the second still is awaited; the answer is the error.
    deliver(vec![request(
        4,
        &Cmd::Two {
            a: TARGET,
            b: TARGET,
        },
    )]);
    assert!(
        deliver(vec![error(3, 3)]).is_empty(),
        "still waits on the second"
    );
    assert_eq!(
        deliver(vec![response(4, enc(&1u32))]),
        vec![answered(4, Err("target trapped"))]
    );
    assert_eq!(runtime::stats(), (0, 0));
}

#[test]
fn a_batch_is_handled_in_order_within_one_dispatch() {
    start();
    let effects = deliver(vec![
        request(
            1,
            &Cmd::Relay {
                target: TARGET,
                value: 9,
            },
        ),
        response(1, enc(&90u32)),
        request(2, &Cmd::Hello),
    ]);
    assert_eq!(
        effects,
        vec![
            called(1, 9),
            answered(1, Ok(enc(&90u32))),
            answered(2, Ok(enc(&"hello from :00000101".to_owned()))),
        ]
    );
}

/// A held responder answers when dropped; while one is held the host is
/// told to keep the instance (a hibernation would lose it), and let go of
/// after.
#[test]
fn a_dropped_responder_answers_with_an_error() {
    start();
    assert_eq!(
        deliver(vec![request(9, &Cmd::Hold)]),
        vec![Effect::StayAwake(true)],
        "held: no answer yet"
    );
    assert_eq!(
        deliver(vec![text(&Cmd::Release)]),
        vec![
            answered(9, Err("dropped without reply")),
            Effect::StayAwake(false)
        ]
    );

    assert_eq!(
        deliver(vec![request(10, &Cmd::Hold)]),
        vec![Effect::StayAwake(true)]
    );
    assert_eq!(
        deliver(vec![text(&Cmd::AnswerHeld(42))]),
        vec![answered(10, Ok(enc(&42u32))), Effect::StayAwake(false)]
    );
}

/// A handler per channel lives only in the instance's memory: the host is
/// told to keep the instance while one is set, once per change; calls in
/// flight say nothing (the host sees the sessions).
#[test]
fn a_channel_handler_keeps_the_instance_and_a_call_in_flight_says_nothing() {
    start();
    assert_eq!(
        deliver(vec![text(&Cmd::Listen(1 << 8))]),
        vec![Effect::StayAwake(true)]
    );
    assert!(deliver(vec![text(&Cmd::Listen(2 << 8))]).is_empty());
    assert!(deliver(vec![text(&Cmd::Unlisten(1 << 8))]).is_empty());
    assert_eq!(
        deliver(vec![text(&Cmd::Unlisten(2 << 8))]),
        vec![Effect::StayAwake(false)]
    );
    let relay = Cmd::Relay {
        target: TARGET,
        value: 7,
    };
    assert_eq!(deliver(vec![request(3, &relay)]), vec![called(1, 7)]);
    assert_eq!(
        deliver(vec![response(1, enc(&8u32))]),
        vec![answered(3, Ok(enc(&8u32)))]
    );
}

#[test]
fn returning_none_without_answering_sends_an_error() {
    start();
    assert_eq!(
        deliver(vec![request(5, &Cmd::Nothing)]),
        vec![answered(5, Err("returned without answering"))]
    );
    // Not a request: nothing to answer.
    assert!(deliver(vec![text(&Cmd::Nothing)]).is_empty());
}

#[test]
fn after_exit_the_sdk_leaves_answers_to_the_host() {
    start();
    assert_eq!(
        deliver(vec![request(1, &Cmd::Hold)]),
        vec![Effect::StayAwake(true)]
    );
    assert_eq!(deliver(vec![request(2, &Cmd::Exit)]), vec![Effect::Exit]);
    assert!(
        deliver(vec![text(&Cmd::Release)]).is_empty(),
        "no dropped-responder error"
    );
}

#[test]
fn call_timeout_asks_the_host_to_end_the_session() {
    start();
    let timed = |caller| {
        request(
            caller,
            &Cmd::Timed {
                target: TARGET,
                ms: 50,
            },
        )
    };
    assert_eq!(
        deliver(vec![timed(1)]),
        vec![
            called(1, 0),
            Effect::CallTimeout {
                dest: TARGET,
                session: 1,
                ms: 50
            }
        ]
    );
    // The host ends it with a timeout error from address 0.
    let expired = raw(kind::ERROR, 0, 1, vec![5]);
    assert_eq!(deliver(vec![expired]), vec![answered(1, Err("timed out"))]);
    assert_eq!(runtime::stats(), (0, 0), "the call's session was closed");

    // An answer in time is the answer.
    deliver(vec![timed(2)]);
    assert_eq!(
        deliver(vec![response(2, enc(&7u32))]),
        vec![answered(2, Ok(enc(&7u32)))]
    );
    assert_eq!(runtime::stats(), (0, 0));
}

#[test]
fn answers_for_unknown_sessions_never_reach_handle() {
    start();
    assert!(deliver(vec![response(99, vec![1]), error(98, 1)]).is_empty());
    assert_eq!(handled(), 0, "answers nobody waits for are dropped");
    // Other kinds do reach handle: an exit notice with a bad payload is
    // handled (decode fails; it is not a request, so nothing is sent).
    assert!(deliver(vec![raw(kind::EXIT, TARGET, 0, b"gone".to_vec())]).is_empty());
    assert_eq!(handled(), 1);
}

#[test]
fn a_send_error_fails_the_call_at_once() {
    start();
    fake::host(|h| h.known = vec![TARGET]);
    assert_eq!(
        deliver(vec![request(
            1,
            &Cmd::Relay {
                target: 0x999,
                value: 1
            }
        )]),
        vec![answered(1, Err("send failed: unknown address"))]
    );
    assert_eq!(runtime::stats(), (0, 0));
}

#[test]
fn forked_task_answers_after_its_timer() {
    start();
    let effects = deliver(vec![request(6, &Cmd::SleepThenAnswer(20))]);
    assert_eq!(effects, vec![Effect::Timeout { session: 1, ms: 20 }]);
    assert_eq!(
        runtime::stats(),
        (1, 1),
        "the handler ended; its fork waits"
    );
    assert_eq!(
        deliver(vec![raw(kind::RESPONSE, 0x101, 1, Vec::new())]),
        vec![answered(6, Ok(b"slept".to_vec()))]
    );
}

#[test]
fn spawn_reads_the_address_or_the_failure() {
    start();
    let effects = deliver(vec![request(1, &Cmd::Spawn), request(2, &Cmd::Spawn)]);
    assert_eq!(
        effects,
        vec![
            Effect::Spawn {
                session: 1,
                module: "m".into(),
                args: b"args".to_vec()
            },
            Effect::Spawn {
                session: 2,
                module: "m".into(),
                args: b"args".to_vec()
            },
        ]
    );
    let addr = 0x0000_0a01u32;
    assert_eq!(
        deliver(vec![response(1, addr.to_le_bytes().to_vec())]),
        vec![answered(1, Ok(enc(&addr)))]
    );
    let mut failed = vec![7];
    failed.extend_from_slice(b"no such module");
    assert_eq!(
        deliver(vec![raw(kind::ERROR, 0, 2, failed)]),
        vec![answered(2, Err("spawn failed: no such module"))]
    );
}

/// One service on its own thread (its own runtime and fake host), driven
/// batch by batch.
struct Node {
    address: u32,
    batches: mpsc::Sender<Vec<Raw>>,
    effects: mpsc::Receiver<Vec<Effect>>,
}

impl Node {
    fn start(address: u32) -> Node {
        let (batches, batch_rx) = mpsc::channel::<Vec<Raw>>();
        let (effect_tx, effects) = mpsc::channel();
        std::thread::spawn(move || {
            fake::host(|h| h.address = address);
            runtime::init::<Probe>(Vec::new()).expect("init");
            while let Ok(batch) = batch_rx.recv() {
                runtime::dispatch_batch::<Probe>(crate::delivery::encode(&batch));
                if effect_tx.send(fake::take_effects()).is_err() {
                    break;
                }
            }
        });
        Node {
            address,
            batches,
            effects,
        }
    }

    fn dispatch(&self, batch: Vec<Raw>) -> Vec<Effect> {
        self.batches.send(batch).expect("node thread alive");
        self.effects
            .recv_timeout(Duration::from_secs(5))
            .expect("node answered")
    }
}

#[test]
fn a_calls_b_while_b_calls_a() {
    let a = Node::start(0x0000_0101);
    let b = Node::start(0x0000_0201);
    let outside = 0x0000_0901;
    let mut queue: VecDeque<(u32, Raw)> = VecDeque::from([
        (
            a.address,
            raw(
                kind::REQUEST,
                outside,
                1,
                enc(&Cmd::Ask { peer: b.address }),
            ),
        ),
        (
            b.address,
            raw(
                kind::REQUEST,
                outside,
                2,
                enc(&Cmd::Ask { peer: a.address }),
            ),
        ),
    ]);
    let mut finals = Vec::new();
    for _step in 0..100 {
        let Some((dest, msg)) = queue.pop_front() else {
            break;
        };
        let node = if dest == a.address { &a } else { &b };
        for effect in node.dispatch(vec![msg]) {
            let (to, m) = match effect {
                Effect::Call {
                    dest,
                    session,
                    payload,
                } => (dest, raw(kind::REQUEST, node.address, session, payload)),
                Effect::Respond {
                    dest,
                    session,
                    reply: Ok(p),
                } => (dest, raw(kind::RESPONSE, node.address, session, p)),
                other => panic!("unexpected effect {other:?}"),
            };
            if to == outside {
                finals.push((m.2, postcard::from_bytes::<String>(&m.3).expect("string")));
            } else {
                queue.push_back((to, m));
            }
        }
    }
    finals.sort();
    assert_eq!(
        finals,
        vec![
            (1, ":00000101 heard: hello from :00000201".to_owned()),
            (2, ":00000201 heard: hello from :00000101".to_owned()),
        ]
    );
}

#[test]
fn a_channel_with_its_own_handler_gets_its_publishes_and_the_rest_go_to_handle() {
    start();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let channel = crate::multicast::Channel(0x0500);
    let log = Rc::clone(&seen);
    channel
        .subscribe_with(move |m| log.borrow_mut().push((m.source.0, m.payload)))
        .expect("subscribed");
    let before = handled();
    let publish = |source, payload: &[u8]| raw(kind::MULTICAST, source, 0x0500, payload.to_vec());
    deliver(vec![publish(CALLER, b"a"), publish(CALLER, b"b")]);
    assert_eq!(
        *seen.borrow(),
        vec![(CALLER, b"a".to_vec()), (CALLER, b"b".to_vec())]
    );
    assert_eq!(
        handled(),
        before,
        "handle did not see the channel's publishes"
    );
    // Another channel's publish goes to handle.
    deliver(vec![raw(
        kind::MULTICAST,
        CALLER,
        0x0600,
        enc(&Cmd::Nothing),
    )]);
    assert_eq!(handled(), before + 1);
    // "Gone" reaches the handler once, then the handler is dropped.
    deliver(vec![publish(0, b"")]);
    assert_eq!(seen.borrow().last(), Some(&(0, Vec::new())));
    deliver(vec![raw(
        kind::MULTICAST,
        CALLER,
        0x0500,
        enc(&Cmd::Nothing),
    )]);
    assert_eq!(seen.borrow().len(), 3, "no handler after the channel went");
    assert_eq!(handled(), before + 2);
}

#[test]
fn batched_calls_leave_as_one_request_and_each_caller_gets_its_answer() {
    start();
    let me = crate::self_address().0;
    // Three calls queue (sessions 1-3); the batch window's timer is session 4.
    let effects = deliver(vec![request(7, &Cmd::Batched(3))]);
    assert_eq!(effects, vec![Effect::Timeout { session: 4, ms: 1 }]);
    // The window ends: one cluster call carries all three.
    let effects = deliver(vec![raw(kind::RESPONSE, 0, 4, Vec::new())]);
    let [
        Effect::Harbor {
            session: 5,
            request,
        },
    ] = effects.as_slice()
    else {
        panic!("one cluster call, not {effects:?}");
    };
    assert!(request.starts_with("cluster call db"), "{request}");
    let request = [
        b"SKB1".as_slice(),
        &enc(&vec![enc(&1u32), enc(&2u32), enc(&3u32)]),
    ]
    .concat();
    let batch = crate::batch::serve(&request, |call| async move {
        let v: u32 = postcard::from_bytes(&call).map_err(|e| e.to_string())?;
        Ok(enc(&(v * 10)))
    });
    let answer = ready_now(batch).expect("a batch");
    // Its answer is split: each caller's session gets its own.
    let effects = deliver(vec![response(5, answer)]);
    let to_self = |session, v: u32| Effect::Respond {
        dest: me,
        session,
        reply: Ok(enc(&v)),
    };
    assert_eq!(
        effects,
        vec![to_self(1, 10), to_self(2, 20), to_self(3, 30)]
    );
    let back: Vec<Raw> = [(1, 10u32), (2, 20), (3, 30)]
        .into_iter()
        .map(|(s, v)| raw(kind::RESPONSE, me, s, enc(&v)))
        .collect();
    assert_eq!(deliver(back), vec![answered(7, Ok(enc(&60u32)))]);
}

/// Runs a future that never waits (the batch server with a ready handler).
fn ready_now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the future waited"),
    }
}

fn told(value: u32) -> Effect {
    fake::sent(TARGET, kind::TEXT, 0, &enc(&value))
}

#[test]
fn sends_leave_before_a_call_an_answer_and_the_end_of_the_dispatch() {
    start();
    let tell = |n, call| Cmd::Tell {
        target: TARGET,
        n,
        call,
    };
    // Before a call to the same service, in the order sent.
    assert_eq!(
        deliver(vec![request(1, &tell(3, true))]),
        vec![told(0), told(1), told(2), called(1, 3)]
    );
    assert_eq!(
        deliver(vec![response(1, enc(&7u32))]),
        vec![answered(1, Ok(enc(&7u32)))]
    );
    // Before the answer to the request that sent them.
    assert_eq!(
        deliver(vec![request(2, &tell(2, false))]),
        vec![told(0), told(1), answered(2, Ok(enc(&2u32)))]
    );
    // A text handler answers nobody: they leave as the dispatch ends.
    assert_eq!(deliver(vec![text(&tell(1, false))]), vec![told(0)]);
}

#[test]
fn an_answer_given_inside_the_call_completes_it_in_the_same_dispatch() {
    start();
    fake::host(|h| {
        h.answers_now.push_back((kind::RESPONSE, enc(&11u32)));
        h.answers_now.push_back((kind::ERROR, vec![0, b'n', b'o']));
    });
    let relay = |caller, value| {
        request(
            caller,
            &Cmd::Relay {
                target: TARGET,
                value,
            },
        )
    };
    // Answered by the call itself: the handler answers its own caller in
    // the same dispatch, and no session stays open.
    assert_eq!(
        deliver(vec![relay(7, 1)]),
        vec![called(1, 1), answered(7, Ok(enc(&11u32)))]
    );
    assert_eq!(runtime::stats(), (0, 0));
    // An error given inside the call fails it as one that arrived would.
    assert_eq!(
        deliver(vec![relay(8, 2)]),
        vec![called(2, 2), answered(8, Err("service error: no"))]
    );
    assert_eq!(runtime::stats(), (0, 0));
    // A later answer for that session finds nobody waiting.
    assert!(deliver(vec![response(1, enc(&99u32))]).is_empty());
}

#[test]
fn a_timed_call_answered_inside_the_call_asks_for_no_timer() {
    start();
    fake::host(|h| h.answers_now.push_back((kind::RESPONSE, enc(&5u32))));
    let timed = request(
        1,
        &Cmd::Timed {
            target: TARGET,
            ms: 50,
        },
    );
    assert_eq!(
        deliver(vec![timed]),
        vec![called(1, 0), answered(1, Ok(enc(&5u32)))]
    );
    assert_eq!(runtime::stats(), (0, 0));
}
