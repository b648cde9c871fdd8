//! One service's task: instantiate, `init`, then take batches from the
//! mailbox and hand them to `dispatch` until the service exits, traps or is
//! killed; then end every session it leaves behind.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::Instrument;

use super::hibernate::{self, Kept, Woken};
use super::inbox::Inbox;
use super::resident;
use super::tap;
use super::tenant::add_owned;
use super::{
    Afterwards, ErrorCause, Guest, GuestFailure, GuestModule, Kernel, Message, Ready,
    ServiceHandle, Snapshot, SpawnError, StopReason, exit_notice, kind, upgrade,
};

/// Most messages handed to one `dispatch` call; after a full batch the
/// service yields so others on its thread get a turn.
pub(crate) const MAX_BATCH: usize = 64;

/// How a service ended.
pub(super) struct End {
    pub cause: ErrorCause,
    pub reason: String,
    /// Its class for the node's stop counters (`StopReason`).
    pub class: StopReason,
}

impl End {
    pub fn exited() -> Self {
        End {
            cause: ErrorCause::Exited,
            reason: "exited".into(),
            class: StopReason::Exited,
        }
    }

    pub fn killed() -> Self {
        End {
            cause: ErrorCause::Killed,
            reason: "killed".into(),
            class: StopReason::Killed,
        }
    }

    /// A guest call that trapped or was stopped by the host.
    pub fn failed(failure: GuestFailure) -> Self {
        End {
            cause: failure.cause,
            reason: failure.reason,
            class: failure.class,
        }
    }

    /// Instantiation or `init` did not succeed.
    fn not_started(reason: String) -> Self {
        End {
            cause: ErrorCause::Exited,
            reason,
            class: StopReason::NotStarted,
        }
    }
}

/// Runs the service behind `handle` from instantiation to its end, as an
/// instance `G` of `module`.
pub(crate) async fn run<G: Guest>(
    kernel: Arc<Kernel>,
    handle: Arc<ServiceHandle>,
    module: Arc<G::Module>,
    args: Vec<u8>,
    ready: Ready,
) {
    let span = tracing::info_span!(parent: None, "service", address = %handle.address, module = %module.name());
    let table = kernel.clone();
    let service = async move {
        let mut inbox = Inbox::new(kernel.ticks());
        if let Some(kept) = template_for(&kernel, module.as_ref(), &args) {
            // Asleep before its spawn is answered: whoever spawned it sees
            // it hibernated from the start.
            hibernate::fall_asleep(&kernel, &handle, &mut inbox);
            kernel.template_spawns.fetch_add(1, Ordering::Relaxed);
            ready.succeed(&kernel, handle.address);
            let born = Box::pin(hibernate::rest::<G>(
                &kernel,
                &handle,
                &module,
                Default::default(),
                kept,
                &mut inbox,
            ));
            let (end, owed) = match born.await {
                Woken::Awake(instance) => {
                    live(&kernel, &handle, module, instance, &mut inbox, &args).await
                }
                Woken::Ended(end, owed) => (end, owed),
            };
            finish(&kernel, &handle, inbox, owed, end);
            return;
        }
        let module_name = module.name().to_string();
        // The task's future is allocated once and kept while the service
        // hibernates: the steps that run once or now and then are boxed, so
        // it holds only what it waits on (docs/hibernation.md).
        let mut instance =
            match Box::pin(resident::instantiate::<G>(&kernel, &handle, &module)).await {
                Ok(i) => i,
                Err(error) => {
                    let end = End::not_started(error.clone());
                    finish(&kernel, &handle, inbox, Vec::new(), end);
                    ready.fail(
                        &kernel,
                        SpawnError::Instantiate {
                            module: module_name,
                            error,
                        },
                    );
                    return;
                }
            };
        let (end, owed) = match Box::pin(instance.init(&args)).await {
            Ok(Ok(())) => {
                let kept = if instance.exit_requested() {
                    Ok(())
                } else {
                    Box::pin(keep_template(
                        &kernel,
                        module.as_ref(),
                        &mut instance,
                        &args,
                    ))
                    .await
                };
                // Kept before the spawn is answered: a spawn made after this
                // one has answered finds the template.
                ready.succeed(&kernel, handle.address);
                if instance.exit_requested() {
                    (End::exited(), instance.take_owed())
                } else if let Err(failure) = kept {
                    (End::failed(failure), instance.take_owed())
                } else {
                    live(&kernel, &handle, module, instance, &mut inbox, &args).await
                }
            }
            Ok(Err(reason)) => {
                let end = End::not_started(format!("init failed: {reason}"));
                ready.fail(
                    &kernel,
                    SpawnError::Init {
                        module: module_name,
                        reason,
                    },
                );
                (end, instance.take_owed())
            }
            Err(e) => {
                let end = End::failed(e);
                ready.fail(
                    &kernel,
                    SpawnError::Init {
                        module: module_name,
                        reason: end.reason.clone(),
                    },
                );
                (end, instance.take_owed())
            }
        };
        finish(&kernel, &handle, inbox, owed, end);
    }
    .instrument(span);
    let mut service = std::pin::pin!(service);
    // Each poll holds the address table's pin: the lookups it makes (a
    // message sent, a call handed off) nest in it, a count instead of an
    // epoch entered and left with a fence each.
    std::future::poll_fn(|cx| {
        let _pinned = table.services.pin();
        service.as_mut().poll(cx)
    })
    .await
}

/// What a spawn of `module` with `args` is born on, when the node spawns
/// from templates and an earlier pure `init` left a state or an image.
fn template_for<M: GuestModule>(kernel: &Kernel, module: &M, args: &[u8]) -> Option<Kept> {
    if !kernel.limits.template_spawn {
        return None;
    }
    module.templates().born_on(args)
}

/// After a successful `init`: when it called no import and the module has
/// no template for `args` yet, keeps what it left as one (see
/// `template.rs`): the state it saves, else an image of its memory, the
/// instance left as it was. A `save-state` or image that fails ends the
/// service, as it would at its first hibernation.
async fn keep_template<G: Guest>(
    kernel: &Kernel,
    module: &G::Module,
    instance: &mut G,
    args: &[u8],
) -> Result<(), GuestFailure> {
    let templates = module.templates();
    if !kernel.limits.template_spawn || !instance.called_no_import() || !templates.wants(args) {
        return Ok(());
    }
    let mut kept = None;
    if instance.loads_state() {
        kept = instance.save_state().await?.map(|s| Kept::State(s.into()));
    }
    if kept.is_none()
        && let Snapshot::Image(image) = instance.snapshot(Afterwards::Serves).await?
    {
        kept = Some(Kept::Memory(image.into()));
    }
    templates.keep(args, kept);
    Ok(())
}

/// Serves the service until it ends, letting it hibernate between batches
/// when asked (`hibernate`): how it ended, and the requests it still owes.
async fn live<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &Arc<ServiceHandle>,
    mut module: Arc<G::Module>,
    instance: G,
    inbox: &mut Inbox,
    args: &[u8],
) -> (End, Vec<(super::Address, u32)>) {
    // Boxed, so that it can be lent between batches (`lease.rs`).
    let mut instance = Box::new(instance);
    loop {
        let (served, mut back) =
            Box::pin(serve(kernel, handle, &mut module, instance, inbox, args)).await;
        match served {
            Served::Ended(end) => return (end, back.take_owed()),
            Served::Idle => {
                match Box::pin(hibernate::sleep(kernel, handle, &module, *back, inbox)).await {
                    Woken::Awake(awake) => instance = Box::new(awake),
                    Woken::Ended(end, owed) => return (end, owed),
                }
            }
        }
    }
}

/// Why [`serve`] returned.
enum Served {
    /// The service ended.
    Ended(End),
    /// It was asked to hibernate and is between batches.
    Idle,
}

/// Takes batches from the mailbox into `dispatch` until the service ends
/// or is asked to hibernate; hands its instance back with why it stopped.
/// `module` is what its instance runs (an upgrade replaces it).
async fn serve<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &Arc<ServiceHandle>,
    module: &mut Arc<G::Module>,
    mut instance: Box<G>,
    inbox: &mut Inbox,
    args: &[u8],
) -> (Served, Box<G>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    handle.usage.rest.touch(kernel.ticks());
    loop {
        let next = if kernel.limits.direct_calls && inbox.pending.is_empty() {
            let (back, next) = lend_while_waiting(handle, instance, inbox).await;
            instance = back;
            match next {
                Ok(next) => next,
                Err(end) => return (Served::Ended(end), instance),
            }
        } else {
            inbox.next(handle).await
        };
        let Some(first) = next else {
            return (Served::Ended(End::exited()), instance);
        };
        handle.mailbox.picked_up(kernel);
        if handle.killed.load(Ordering::Acquire) {
            // Taken off the queue but never dispatched: still owed an answer
            // (`finish` answers what is pending).
            inbox.pending.push_front(first);
            return (Served::Ended(End::killed()), instance);
        }
        let mut taken = 1;
        // CPU budget is per dispatch: a batch is kept to what fits in it.
        let limit = instance.affordable_batch().min(MAX_BATCH);
        let traced = handle.usage.traced.load(Ordering::Relaxed);
        let first = with_trace(kernel, traced, first);
        // A traced message is handled alone, so what the guest sends while
        // handling it carries its trace id.
        let alone = first.trace != 0;
        push_unless_wake(kernel, handle, &mut batch, first);
        while !alone && taken < limit {
            let Some(next) = inbox.try_next(handle) else {
                break;
            };
            if next.trace != 0 || (traced && next.kind != kind::SYSTEM) {
                inbox.pending.push_front(next);
                break;
            }
            taken += 1;
            push_unless_wake(kernel, handle, &mut batch, next);
        }
        let full = taken == limit;
        handle.mailbox.taken(taken);
        if batch.is_empty() {
            if let Some(end) =
                upgrade_if_ordered(kernel, handle, module, &mut *instance, inbox, args).await
            {
                return (Served::Ended(end), instance);
            }
            if handle
                .usage
                .rest
                .take_ask(kernel, handle.tenant.quotas.hibernate_after)
            {
                return (Served::Idle, instance);
            }
            continue;
        }
        if handle.usage.taps.is_on() {
            for m in &batch {
                handle.usage.taps.send(tap::Direction::In, m.source, m);
            }
        }
        let logged_since = (traced || batch[0].trace != 0).then(|| {
            for m in &batch {
                trace_message("in", m.source, m);
            }
            std::time::Instant::now()
        });
        add_owned(&handle.usage.dispatches, 1);
        let result = instance.dispatch(&mut batch).await;
        if let Some(start) = logged_since {
            tracing::info!(
                target: "skyhost::trace",
                handled_us = start.elapsed().as_micros(),
                ok = result.is_ok(),
                "trace batch handled"
            );
        }
        if let Err(e) = result {
            return (Served::Ended(End::failed(e)), instance);
        }
        if instance.exit_requested() {
            return (Served::Ended(End::exited()), instance);
        }
        if handle.killed.load(Ordering::Acquire) {
            return (Served::Ended(End::killed()), instance);
        }
        if let Some(end) =
            upgrade_if_ordered(kernel, handle, module, &mut *instance, inbox, args).await
        {
            return (Served::Ended(end), instance);
        }
        // A service with a backlog keeps its thread for a time slice, as a
        // hog does, unless fresh work waits: yielding after every batch gave
        // it ~40 µs turns against a sender's 1 ms slices, so a fast sender
        // filled its mailbox faster than it could drain it.
        let now = kernel.ticks();
        handle.usage.rest.touch(now);
        if !full {
            inbox.turn_started = now;
        } else if kernel.sched.has_waiting() || inbox.turn_over(kernel) {
            tokio::task::yield_now().await;
            inbox.turn_started = kernel.ticks();
        }
    }
}

/// Waits for the next message with the instance offered to callers (the
/// direct hand-off, `lease.rs`), and takes it back. `Err` when a caller's
/// dispatch of it trapped or asked it to exit; the message, if any, goes
/// back to the inbox for `finish` to answer.
async fn lend_while_waiting<G: Guest>(
    handle: &ServiceHandle,
    instance: Box<G>,
    inbox: &mut Inbox,
) -> (Box<G>, Result<Option<Message>, End>) {
    // Moved into the lease: a task dropped while it is lent leaves it there.
    handle.lease.offer(instance);
    let next = inbox.next(handle).await;
    let instance = handle.lease.reclaim::<G>().await;
    let end = match handle.lease.take_failure() {
        Some(failure) => End::failed(failure),
        None if instance.exit_requested() => End::exited(),
        None => return (instance, Ok(next)),
    };
    if let Some(m) = next {
        inbox.pending.push_front(m);
    }
    (instance, Err(end))
}

/// `m`, with a fresh trace id when its service is traced (`trace <addr>
/// on`) and it has none: where a traced request starts.
fn with_trace(kernel: &Kernel, traced: bool, mut m: Message) -> Message {
    if traced && m.trace == 0 && m.kind != kind::SYSTEM {
        m.trace = kernel.fresh_trace();
    }
    m
}

/// Runs the upgrade ordered for this service, if any (between two batches).
/// The messages it kept aside go back before those not yet taken;
/// `Some` when the service must end.
async fn upgrade_if_ordered<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &Arc<ServiceHandle>,
    module: &mut Arc<G::Module>,
    instance: &mut G,
    inbox: &mut Inbox,
    args: &[u8],
) -> Option<End> {
    let order = handle.take_upgrade()?;
    let upgrading = &handle.usage.upgrading;
    upgrading.store(true, Ordering::Relaxed);
    let done = upgrade::perform(kernel, handle, module, instance, inbox, args, order).await;
    upgrading.store(false, Ordering::Relaxed);
    match done {
        Ok(kept) => {
            inbox.put_back(kept);
            None
        }
        Err((end, kept)) => {
            inbox.put_back(kept);
            Some(end)
        }
    }
}

/// Logs one message of a traced service: `peer` is where it came from
/// (`in`) or where it goes (`out`).
pub(crate) fn trace_message(direction: &str, peer: super::Address, m: &Message) {
    tracing::info!(
        target: "skyhost::trace",
        trace = format_args!("{:016x}", m.trace),
        direction,
        %peer,
        kind = m.kind,
        session = m.session,
        size = m.payload.len(),
        "trace"
    );
}

/// `kill`'s wake-up message carries nothing for the guest; a host ping (a
/// `system` message with a session) is answered here, when the service
/// picks it up, without entering the guest.
fn push_unless_wake(kernel: &Kernel, handle: &ServiceHandle, batch: &mut Vec<Message>, m: Message) {
    if m.kind != kind::SYSTEM {
        batch.push(m);
    } else {
        answer_ping(kernel, handle, m);
    }
}

/// Answers a host ping (a `system` message with a session); drops a wake-up.
pub(super) fn answer_ping(kernel: &Kernel, handle: &ServiceHandle, m: Message) {
    if m.session != 0 {
        if handle.usage.traced.load(Ordering::Relaxed) {
            trace_message("in", m.source, &m);
        }
        let pong = Message {
            kind: kind::RESPONSE,
            source: handle.address,
            session: m.session,
            tenant: super::TenantId::HOST,
            payload: Default::default(),
            trace: 0,
        };
        let _ = kernel.deliver(m.source, pong);
    }
}

/// Ends a service: out of the table and its names, every request it owes
/// or still has queued answered with an error, monitors told, logged.
fn finish(
    kernel: &Kernel,
    handle: &ServiceHandle,
    inbox: Inbox,
    owed: Vec<(super::Address, u32)>,
    end: End,
) {
    let address = handle.address;
    kernel.stops[end.class.index()].fetch_add(1, Ordering::Relaxed);
    let monitors = kernel.remove_service(handle);
    upgrade::close_orders(handle, &end.reason);
    handle.usage.taps.close();
    let Inbox { mut pending, .. } = inbox;
    handle.mailbox.close(kernel);
    handle.mailbox.take_into(&mut pending);
    let mut failed = 0usize;
    for m in pending {
        if m.wants_reply() {
            let _ = kernel.deliver(
                m.source,
                Message::error(address, m.session, end.cause, &end.reason),
            );
            failed += 1;
        }
    }
    for (caller, session) in owed {
        let _ = kernel.deliver(
            caller,
            Message::error(address, session, end.cause, &end.reason),
        );
        failed += 1;
    }
    // Counted gone before its watchers hear of it: a watcher that counts
    // services after the exit notice sees it gone.
    kernel.service_gone(&handle.tenant);
    for watcher in monitors {
        let _ = kernel.deliver(watcher, exit_notice(address, &end.reason));
    }
    match end.cause {
        ErrorCause::Exited => {
            tracing::debug!(failed_sessions = failed, "service ended: {}", end.reason)
        }
        ErrorCause::Killed => {
            tracing::info!(failed_sessions = failed, "service ended: {}", end.reason)
        }
        _ => tracing::warn!(failed_sessions = failed, "service stopped: {}", end.reason),
    }
}
