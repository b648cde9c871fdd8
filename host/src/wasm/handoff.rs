//! The direct hand-off (docs/scheduler.md): a `call-now` to a service of
//! the caller's tenant on this node, waiting for mail with nothing queued,
//! runs the callee's `dispatch` with the request inside the caller's
//! import, on the caller's thread, and hands the answer back as the
//! import's result. A call then costs one guest entry instead of two, and
//! wakes no task on either side.
//!
//! - The callee's instance is borrowed from its lease
//!   (`runtime/lease.rs`); its task takes it back when the dispatch ends.
//! - The callee's dispatch is its own piece of work: its CPU budget, its
//!   time slice and its counts, as if its task had run it. The caller's
//!   clock stops meanwhile, as it does when the caller is suspended.
//! - The answer is caught in `respond` ([`capture`]) when it is the first
//!   thing the callee sends the caller during the dispatch; anything sent
//!   to the caller before it ([`passed`]) sends the answer through the
//!   mailbox too, behind it, so what one service sends another arrives in
//!   order. For the same reason a caller with mail queued (something the
//!   callee sent in an earlier dispatch may be there) calls by mailbox.
//! - A callee that does not answer inside the dispatch owes the answer as
//!   usual (the session ends later, by mailbox). One that traps or exits
//!   there leaves its end to its task: the failure goes into the lease and
//!   a wake into its mailbox.
//! - A callee run inside a call may hand its own calls off in turn, down
//!   to [`MAX_DEPTH`] services deep (each runs on its own fiber's stack);
//!   deeper calls, calls from or to traced or tapped services and calls
//!   across tenants go through the mailbox.

use std::sync::atomic::Ordering;

use super::Instance;
use super::bindings::skyhost::service::types;
use super::state::ServiceState;
use crate::runtime::tenant::add_owned;
use crate::runtime::{Address, Message};

/// How many services deep a chain of hand-offs may run (a caller and the
/// callees run inside it).
pub(crate) const MAX_DEPTH: u32 = 4;

/// What an instance running inside a caller's `call-now` keeps for it.
pub(crate) struct Lent {
    /// How many callers it runs inside (1: inside one service's call).
    depth: u32,
    /// The caller, and the session of the request being handled.
    caller: Address,
    session: u32,
    /// The answer, once the callee gave it.
    answer: Option<Message>,
    /// Cleared when the callee sent the caller something else first: the
    /// answer then goes by mailbox.
    open: bool,
    /// The callee answered the request, here or by mailbox. The request
    /// enters its owed set only when it did not: most hand-offs never
    /// touch that set.
    answered: bool,
}

/// Runs `request` (its session not yet among those `caller` waits on),
/// from `caller` to `dest`, inside the callee's instance when the hand-off
/// applies: `Ok(Some(answer))` when the callee answered there, `Ok(None)`
/// when it owes the answer (the session is then waited on);
/// `Err(request)` when the call must go through the mailbox. A call timed
/// out after `timeout_ms` (0: never) counts its time from before the callee
/// runs; its timer is set only when the callee owes the answer.
pub(super) async fn call(
    caller: &mut ServiceState,
    dest: Address,
    request: Message,
    timeout_ms: u32,
) -> Result<Option<types::Message>, Message> {
    let depth = caller.lent.as_ref().map_or(1, |lent| lent.depth + 1);
    if !caller.kernel.limits.direct_calls
        || depth >= MAX_DEPTH
        || request.trace != 0
        || caller.traced()
        || caller.handle.usage.taps.is_on()
    {
        return Err(request);
    }
    // A caller with mail queued may hold something the callee sent it
    // earlier: an answer handed back now would overtake it.
    if caller.handle.mailbox.len() != 0 {
        return Err(request);
    }
    let callee = caller.kernel.service_if(dest, |callee| {
        callee.lease.offered()
            && callee.guest
            && callee.tenant.id == request.tenant
            && !callee.usage.traced.load(Ordering::Relaxed)
            && !callee.usage.taps.is_on()
    });
    let Some(callee) = callee else {
        return Err(request);
    };
    let Some(mut lent) = callee.lease.borrow::<Instance>() else {
        return Err(request);
    };
    // Checked with the instance in hand: its task cannot be taking a
    // message meanwhile, and what the caller sent it before is counted
    // here until it is dispatched.
    if callee.mailbox.len() != 0
        || callee.killed.load(Ordering::Acquire)
        || callee.upgrade_ordered()
    {
        return Err(request);
    }
    caller.sent += 1;
    // The timeout counts from here, but its timer is set only when the
    // callee did not answer inside the call: most timed calls then never
    // touch the node's timers. Nothing is lost by setting it late: the
    // caller cannot take a timeout before this import returns, and one due
    // by then is delivered before the callee's task can answer (below).
    let asked_at = (timeout_ms > 0).then(tokio::time::Instant::now);
    let (session, source, tenant) = (request.session, request.source, request.tenant);
    let now = caller.pause_clock();
    let instance = lent.get();
    instance.store.data_mut().lent = Some(Lent {
        depth,
        caller: source,
        session,
        answer: None,
        open: true,
        answered: false,
    });
    add_owned(&callee.usage.dispatches, 1);
    callee.usage.rest.touch(now);
    caller.kernel.direct_calls.add(1);
    // The caller's buffer, kept from call to call.
    let mut batch = std::mem::take(&mut caller.handoff_batch);
    batch.push(request);
    let (result, ended) = instance.dispatch_from(&mut batch, now).await;
    batch.clear();
    caller.handoff_batch = batch;
    let state = instance.store.data_mut();
    let (answer, answered) = state
        .lent
        .take()
        .map_or((None, false), |l| (l.answer, l.answered));
    if !answered {
        // Owed from here, before the lease is given back: a callee that
        // failed inside the call has its task answer it with the error.
        state.owe(source, session, tenant);
    }
    let exited = state.exit_requested;
    caller.resume_clock(now, ended);
    if answer.is_none() {
        // The session ends later, by mailbox: from here the caller waits on
        // it (an answer given inside the call never enters the set).
        caller.awaiting.insert(session);
        if let Some(asked_at) = asked_at {
            caller.expire_after(asked_at, session, timeout_ms);
        }
    }
    let ends = result.is_err() || exited;
    if let Err(e) = result {
        lent.failed(super::failure(e));
    }
    drop(lent);
    if ends || callee.killed.load(Ordering::Acquire) {
        // Its task ends it when it takes its instance back.
        callee.mailbox.wake(callee.address);
    }
    Ok(answer.map(|m| {
        // Taken and counted as if it had come through the mailbox.
        caller.took(1);
        caller.count_kind(m.kind, &m.payload);
        types::Message {
            kind: m.kind,
            source: m.source.0,
            session: m.session,
            payload: Vec::from(m.payload),
        }
    }))
}

/// Whether `(source, session)` is the request a hand-off runs the callee
/// for: it is not entered in the callee's owed set (see [`Lent::answered`]).
pub(super) fn is_lent_request(state: &ServiceState, source: Address, session: u32) -> bool {
    state
        .lent
        .as_ref()
        .is_some_and(|lent| lent.caller == source && lent.session == session)
}

/// Whether the callee's answer to `(dest, session)` is the first answer to
/// the request a hand-off runs it for (then marked answered). Such an
/// answer goes to the callee's own tenant (calls across tenants are not
/// handed off) and has no entry in the owed set.
pub(super) fn answers_lent(state: &mut ServiceState, dest: u32, session: u32) -> bool {
    match &mut state.lent {
        Some(lent) if !lent.answered && lent.caller.0 == dest && lent.session == session => {
            lent.answered = true;
            true
        }
        _ => false,
    }
}

/// The answer to the request a hand-off runs the callee for
/// ([`answers_lent`]): kept for the caller (`None`), unless the callee sent
/// the caller something else first; then handed back, to go behind it
/// through the mailbox.
pub(super) fn capture(state: &mut ServiceState, answer: Message) -> Option<Message> {
    match &mut state.lent {
        Some(lent) if lent.open => {
            state.sent += 1;
            lent.answer = Some(answer);
            None
        }
        _ => Some(answer),
    }
}

/// The callee sends `dest` something: when that is its caller, the answer
/// must follow it through the mailbox.
pub(super) fn passed(state: &mut ServiceState, dest: Address) {
    if let Some(lent) = &mut state.lent
        && lent.caller == dest
    {
        lent.open = false;
    }
}
