//! The in-guest runtime: one executor, one session table, one service.
//!
//! It lives in a thread-local (a guest is single-threaded). The exports go
//! through [`init`] and [`dispatch_batch`]:
//!
//! ```text
//! host ── dispatch-batch(buffer) ──▶ for each message, in order:
//!            response/error, session waited on ──▶ complete session, wake task
//!            response/error, unknown session     ──▶ dropped
//!            anything else                       ──▶ new task: handle(msg), then reply
//!          then run every ready task until all are parked on sessions
//! ```

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::address::{Address, kind};
use crate::executor::{Executor, LocalFuture};
use crate::message::{Incoming, Message, Reply};
use crate::service::{Service, Stateful};
use crate::session::{Completion, Sessions};
use crate::sys;

/// Makes the whole task for one message (handler and reply in one future,
/// so one allocation per message).
type Handler = Rc<dyn Fn(Message) -> LocalFuture<()>>;

/// A multicast channel's own handler.
pub(crate) type ChannelHandler = Rc<dyn Fn(Message)>;

/// Everything the SDK keeps for the running service.
#[derive(Default)]
pub(crate) struct Runtime {
    pub(crate) exec: Executor,
    pub(crate) sessions: Sessions,
    handler: RefCell<Option<Handler>>,
    /// The service's state, for `save-state` (an `Rc<S>`).
    service: RefCell<Option<Rc<dyn std::any::Any>>>,
    /// Keyed without a random seed, as the session map: a seed is a
    /// `wasi:random` call in every service's `init`, which makes it impure
    /// (no template spawn).
    channels: RefCell<std::collections::HashMap<u32, ChannelHandler, crate::session::FixedState>>,
    exiting: Cell<bool>,
    /// Responders not dropped yet: requests this instance means to answer.
    responders: Cell<usize>,
    /// What it last told the host through `stay-awake`.
    said_awake: Cell<bool>,
}

thread_local! {
    static RUNTIME: Runtime = Runtime::default();
}

/// Runs `f` with this service's runtime.
pub(crate) fn with<R>(f: impl FnOnce(&Runtime) -> R) -> R {
    RUNTIME.with(f)
}

/// Like [`with`], but does nothing once the thread-local is gone (drops that
/// run while a native test thread ends).
pub(crate) fn try_with(f: impl FnOnce(&Runtime)) {
    let _ = RUNTIME.try_with(f);
}

/// Whether `exit` was called: the host answers open requests from now on.
pub(crate) fn exiting() -> bool {
    RUNTIME.try_with(|rt| rt.exiting.get()).unwrap_or(true)
}

/// Marks the service as exiting.
pub(crate) fn set_exiting() {
    with(|rt| rt.exiting.set(true));
}

/// A [`Responder`](crate::Responder) was made.
pub(crate) fn responder_opened() {
    let _ = RUNTIME.try_with(|rt| rt.responders.set(rt.responders.get() + 1));
}

/// A [`Responder`](crate::Responder) was dropped (answered or not).
pub(crate) fn responder_closed() {
    let _ = RUNTIME.try_with(|rt| rt.responders.set(rt.responders.get().saturating_sub(1)));
}

/// Tells the host, when it changed, whether this instance holds what only
/// its memory can keep and a saved state does not carry: a handler per
/// channel, a responder (a request it means to answer), a task waiting on
/// something other than a session. A hibernation would lose them
/// (`stay-awake`).
/// Called at the end of every export that runs the service's code.
fn report_hold() {
    with(|rt| {
        if rt.exiting.get() {
            return;
        }
        // While it waits on a session the host keeps it awake anyway; the
        // end of the dispatch that ends the last one looks again.
        let holds = !rt.channels.borrow().is_empty()
            || (rt.sessions.len() == 0 && (rt.responders.get() > 0 || rt.exec.live_tasks() > 0));
        if holds != rt.said_awake.get() {
            rt.said_awake.set(holds);
            sys::stay_awake(holds);
        }
    });
}

/// Sets (or with `None` removes) the handler of a multicast channel.
pub(crate) fn set_channel_handler(channel: u32, handler: Option<ChannelHandler>) {
    with(|rt| {
        let mut channels = rt.channels.borrow_mut();
        match handler {
            Some(h) => channels.insert(channel, h),
            None => channels.remove(&channel),
        };
    });
}

/// Adds a task; it first runs once the current message is done.
pub(crate) fn spawn_task(future: LocalFuture<()>) {
    with(|rt| rt.exec.spawn(future));
}

/// The `init` export: builds the service, starts its `start` task, and runs
/// whatever became ready.
#[doc(hidden)]
pub fn init<S: Service>(args: Vec<u8>) -> Result<(), String> {
    let state = install(S::init(args)?);
    spawn_task(Box::pin(S::start(state)));
    with(|rt| rt.exec.run_ready());
    crate::queued::flush_quietly();
    report_hold();
    Ok(())
}

/// Makes `service` the one that handles messages.
fn install<S: Service>(service: S) -> Rc<S> {
    let state = Rc::new(service);
    let for_handler = Rc::clone(&state);
    let handler: Handler = Rc::new(move |msg: Message| {
        let request = msg
            .claim_flag()
            .map(|claimed| (msg.source, msg.session, claimed));
        Box::pin(answer(request, S::handle(Rc::clone(&for_handler), msg)))
    });
    let any: Rc<dyn std::any::Any> = state.clone();
    with(|rt| {
        *rt.handler.borrow_mut() = Some(handler);
        *rt.service.borrow_mut() = Some(any);
    });
    state
}

/// First byte of a saved state: its encoding (postcard of `S::State`).
/// It also keeps a saved state from ever being empty, which the host reads
/// as "nothing saved".
const STATE_POSTCARD: u8 = 1;

/// The `save-state` export of a [`Stateful`] service.
#[doc(hidden)]
pub fn save_state<S: Stateful>() -> Vec<u8> {
    let service = with(|rt| rt.service.borrow().clone());
    let Some(service) = service.and_then(|s| s.downcast::<S>().ok()) else {
        return Vec::new();
    };
    let bytes = vec![STATE_POSTCARD];
    match postcard::to_extend(&service.save(), bytes) {
        Ok(b) => b,
        Err(e) => {
            crate::error!("save-state: encoding the state failed: {e}");
            Vec::new()
        }
    }
}

/// The `load-state` export of a [`Stateful`] service: builds it from what
/// its previous version saved, in place of `init` (`start` does not run).
///
/// # Errors
/// When the bytes are not a state of this version (say so in the upgrade's
/// report), or [`Stateful::restore`] refuses it.
#[doc(hidden)]
pub fn load_state<S: Stateful>(bytes: Vec<u8>) -> Result<(), String> {
    let Some((&STATE_POSTCARD, body)) = bytes.split_first() else {
        return Err("the saved state is not in the SDK's format".into());
    };
    let state: S::State = postcard::from_bytes(body)
        .map_err(|e| format!("the saved state does not decode as this version's state: {e}"))?;
    install(S::restore(state)?);
    with(|rt| rt.exec.run_ready());
    crate::queued::flush_quietly();
    report_hold();
    Ok(())
}

/// The `save-state` export of a service that keeps no state: nothing, so
/// its next version starts from `init`.
#[doc(hidden)]
pub fn save_no_state() -> Vec<u8> {
    Vec::new()
}

/// The `load-state` export of a service that keeps no state.
///
/// # Errors
/// Always: the previous version saved a state this one cannot take.
#[doc(hidden)]
pub fn load_no_state(_bytes: Vec<u8>) -> Result<(), String> {
    Err("this version keeps no state (it does not implement skyhost_sdk::Stateful)".into())
}

/// The `dispatch-batch` export: delivers each message of the batch in
/// order, running ready tasks after each one.
#[doc(hidden)]
pub fn dispatch_batch<S: Service>(batch: Vec<u8>) {
    let service = with(|rt| rt.service.borrow().clone()).and_then(|s| s.downcast::<S>().ok());
    for m in crate::delivery::messages(&batch) {
        if let Some(service) = &service
            && takes_now(m.kind, m.session)
        {
            let incoming = Incoming {
                kind: m.kind,
                source: Address(m.source),
                session: m.session,
                payload: m.payload,
            };
            if let Some(reply) = service.handle_now(&incoming) {
                if incoming.is_request() {
                    send_reply(incoming.source, incoming.session, &reply);
                }
                with(|rt| rt.exec.run_ready());
                continue;
            }
        }
        deliver(m.kind, m.source, m.session, m.payload.to_vec());
        with(|rt| rt.exec.run_ready());
    }
    crate::queued::flush_quietly();
    report_hold();
}

/// Whether a message may go to [`Service::handle_now`]: not an answer to a
/// session of ours, not a publish its channel's own handler takes.
fn takes_now(kind: u8, session: u32) -> bool {
    match kind {
        kind::RESPONSE | kind::ERROR => false,
        kind::MULTICAST => with(|rt| !rt.channels.borrow().contains_key(&session)),
        _ => true,
    }
}

/// Sends the answer a handler gave a request (unless it was deferred while exiting).
fn send_reply(source: Address, session: u32, reply: &Reply) {
    let answer = match reply {
        Reply::Bytes(bytes) => Ok(bytes.as_slice()),
        Reply::Error(text) => Err(text.as_str()),
        Reply::Deferred if exiting() => return,
        Reply::Deferred => Err("returned without answering"),
    };
    // The caller may be gone; there is no one left to tell.
    let _ = sys::respond(source.0, session, answer);
}

fn deliver(kind: u8, source: u32, session: u32, payload: Vec<u8>) {
    if kind == kind::RESPONSE || kind == kind::ERROR {
        let completion = Completion { kind, payload };
        // An answer nobody waits for (a late reply after a timeout, a
        // cancelled task) is dropped.
        with(|rt| rt.sessions.complete(session, completion));
        return;
    }
    let msg = Message::new(kind, Address(source), session, payload);
    if msg.kind == kind::MULTICAST {
        let own = with(|rt| rt.channels.borrow().get(&msg.session).cloned());
        if let Some(channel_handler) = own {
            if msg.source.0 == 0 {
                // The channel is gone: its handler hears it once, then goes.
                set_channel_handler(msg.session, None);
            }
            channel_handler(msg);
            return;
        }
    }
    let Some(handler) = with(|rt| rt.handler.borrow().clone()) else {
        if msg.is_request() {
            let _ = sys::respond(msg.source.0, msg.session, Err("service is not initialized"));
        }
        return;
    };
    // Run at once: the ready queue is empty here (dispatch drains it after
    // each message), so this is the order `spawn_task` would give.
    with(|rt| rt.exec.spawn_now(handler(msg)));
}

/// One message's task: await the handler's `reply`, then answer `request`
/// (its caller, session and the flag set when the handler took the
/// responder), if the message was one.
async fn answer(
    request: Option<(Address, u32, Rc<Cell<bool>>)>,
    reply: impl Future<Output = Reply>,
) {
    let reply = reply.await;
    let Some((source, session, claimed)) = request else {
        return;
    };
    if claimed.get() {
        if reply != Reply::Deferred {
            crate::warn!(
                "reply to {source} session {session} ignored: the handler took the responder"
            );
        }
        return;
    }
    send_reply(source, session, &reply);
}

/// Counts for tests: live tasks and open sessions.
#[cfg(test)]
pub(crate) fn stats() -> (usize, usize) {
    with(|rt| (rt.exec.live_tasks(), rt.sessions.len()))
}
