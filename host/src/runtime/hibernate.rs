//! Hibernation (issue 24, `docs/hibernation.md`): a service idle past its
//! tenant's `hibernate_after` gives up its instance (its pool slot, fiber
//! stack and memory) and keeps its state outside it until its next message.
//!
//! ```text
//!  sweeper (one task per node, every quarter of the shortest idle time)
//!    a service idle that long, its mailbox empty, awake, not known to stay
//!    awake ──> asked (a flag) and woken (a `system` wake in its mailbox)
//!  service loop, between batches, asked ──> sleep():
//!    waits on a session of its own, or the guest holds what only its
//!      instance can keep (`stay-awake`): stays awake (asked again later)
//!    save-state; nothing saved (no `state` export, or no state): an image
//!      of its memory (`Guest::snapshot`); neither can be kept: stays awake
//!      for good, the sweeper passes it by
//!    carry out what outlives the instance (requests owed, session counters),
//!    drop the instance, wait for the mailbox; killed meanwhile: end;
//!    else a new instance of the same module, carry in, load-state (or the
//!      memory image written back)
//! ```
//!
//! The handle (address, names, monitors, subscriptions, mailbox) is not
//! touched: messages stay in order and nothing is lost; a caller sees only
//! the wake-up time. A wake that fails (the instance cannot be made, or
//! `load-state` refuses) ends the service with that error, and every
//! session it leaves behind with it.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ahead::Ahead;
use super::inbox::Inbox;
use super::service::End;
use super::{
    Address, Afterwards, Carried, ErrorCause, Guest, GuestFailure, Kernel, ServiceHandle, Snapshot,
    StopReason,
};

/// How often the sweeper looks when no tenant hibernates its services.
const LOOK_WHEN_OFF: Duration = Duration::from_secs(1);

/// A service's standing with hibernation, in its handle.
#[derive(Debug, Default)]
pub(crate) struct Rest {
    /// When it last handled a batch (kernel ticks).
    pub(super) last_active: AtomicU64,
    /// The sweeper asked it to hibernate.
    pub(super) asked: AtomicBool,
    /// The ask is to make room in the pool: it need not be idle long.
    pub(super) forced: AtomicBool,
    /// It holds an instance now (between instantiation and its end or
    /// hibernation).
    pub(super) resident: AtomicBool,
    /// It has no instance now.
    pub(super) hibernated: AtomicBool,
    /// It cannot hibernate (nothing to keep): not asked again.
    pub(super) nothing_to_keep: AtomicBool,
    /// It is keeping its state or memory to hibernate: an ask now would
    /// leave a wake in its mailbox that woke it as soon as it slept.
    pub(super) sleeping: AtomicBool,
}

impl Rest {
    /// Whether it has given up its instance.
    pub fn is_hibernated(&self) -> bool {
        self.hibernated.load(Ordering::Relaxed)
    }

    /// It has just handled a batch (or turned an ask down): idle from
    /// `ticks` on, and any ask made before is void.
    pub(crate) fn touch(&self, ticks: u64) {
        self.last_active.store(ticks, Ordering::Relaxed);
        if self.asked.load(Ordering::Relaxed) {
            self.asked.store(false, Ordering::Relaxed);
            self.forced.store(false, Ordering::Relaxed);
        }
    }

    /// Whether it was asked to hibernate (the ask is taken) and is still
    /// idle past `after`: a batch it handled after the sweeper read its
    /// time voids the ask.
    pub(super) fn take_ask(&self, kernel: &Kernel, after: Option<Duration>) -> bool {
        if !(self.asked.load(Ordering::Relaxed) && self.asked.swap(false, Ordering::Acquire)) {
            return false;
        }
        self.forced.swap(false, Ordering::Relaxed)
            || after.is_some_and(|after| self.idle_past(kernel, kernel.ticks(), after))
    }

    /// Whether it has handled no batch for `after` as of `now` (ticks).
    fn idle_past(&self, kernel: &Kernel, now: u64, after: Duration) -> bool {
        let since = self.last_active.load(Ordering::Relaxed);
        // Touched after `now` was read: not idle.
        since < now && kernel.ticks_between(since, now) >= after
    }

    /// The idle time after which the service behind `handle` is asked to
    /// hibernate, if it may be asked now: a guest in a tenant that
    /// hibernates, holding an instance, not known to stay awake, not asked
    /// already, with nothing queued.
    pub(super) fn askable(handle: &ServiceHandle) -> Option<Duration> {
        let rest = &handle.usage.rest;
        let askable = handle.guest
            && rest.resident.load(Ordering::Relaxed)
            && !rest.nothing_to_keep.load(Ordering::Relaxed)
            && !rest.asked.load(Ordering::Relaxed)
            && !rest.sleeping.load(Ordering::Relaxed)
            && handle.mailbox.len() == 0;
        handle.tenant.quotas.hibernate_after.filter(|_| askable)
    }

    /// Asks the service behind `handle` to hibernate between its next two
    /// batches (`forced`: to make room, idle or not): a flag, and a `system`
    /// wake through its mailbox so it looks.
    pub(super) fn ask(handle: &ServiceHandle, forced: bool) {
        let rest = &handle.usage.rest;
        rest.forced.store(forced, Ordering::Relaxed);
        rest.asked.store(true, Ordering::Release);
        handle.mailbox.wake(handle.address);
    }

    /// Its module changed: it may have a state to keep now.
    pub(super) fn may_hibernate_again(&self) {
        self.nothing_to_keep.store(false, Ordering::Relaxed);
    }
}

/// What became of a service asked to hibernate.
pub(super) enum Woken<G> {
    /// It is awake: the instance it had, or a new one it woke in.
    Awake(G),
    /// It ended while asleep or waking: how, and the requests it owed.
    Ended(End, Vec<(Address, u32)>),
}

/// Hibernates the service behind `handle` (see the module doc) and wakes
/// it when a message comes.
pub(super) async fn sleep<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &Arc<ServiceHandle>,
    module: &Arc<G::Module>,
    mut instance: G,
    inbox: &mut Inbox,
) -> Woken<G> {
    // Boxed, as the wake below: this future is what a sleeping service
    // keeps, so nothing of the keeping lives in it.
    let kept = match Box::pin(keep_flagged(&handle.usage.rest, &mut instance)).await {
        Keeping::Kept(kept) => kept,
        Keeping::Never => {
            handle
                .usage
                .rest
                .nothing_to_keep
                .store(true, Ordering::Relaxed);
            return Woken::Awake(instance);
        }
        Keeping::NotNow => {
            // Not asked again before another idle time has passed (the
            // sweeper cannot see what keeps it awake).
            handle.usage.rest.touch(kernel.ticks());
            return Woken::Awake(instance);
        }
        Keeping::Failed(failure) => {
            let owed = instance.take_owed();
            return Woken::Ended(End::failed(failure), owed);
        }
    };
    let carried = instance.carry_out();
    drop(instance);
    handle.usage.hibernations.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(service = %handle.address, kept = ?kept, "hibernated");
    fall_asleep(kernel, handle, inbox);
    rest(kernel, handle, module, carried, kept, inbox).await
}

/// What a hibernated service keeps of its last instance.
#[derive(Clone)]
pub(crate) enum Kept {
    /// The state its `save-state` gave (or a template's).
    State(Arc<[u8]>),
    /// An image of its memory (it has no state of its own; or a template's).
    Memory(Arc<[u8]>),
}

impl Kept {
    /// Its size in bytes.
    fn len(&self) -> usize {
        match self {
            Kept::State(bytes) | Kept::Memory(bytes) => bytes.len(),
        }
    }
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::State(s) => write!(f, "state of {} bytes", s.len()),
            Kept::Memory(m) => write!(f, "memory image of {} bytes", m.len()),
        }
    }
}

/// What came of trying to keep an instance's state or memory.
enum Keeping {
    /// What it keeps.
    Kept(Kept),
    /// It has neither a state nor a memory it can hand out: it never will.
    Never,
    /// It waits on a session of its own, or holds something it cannot keep
    /// outside its instance, now.
    NotNow,
    /// The guest call failed.
    Failed(GuestFailure),
}

/// [`keep`], with the service marked `sleeping` meanwhile (and after, if
/// it kept something: until it has fallen asleep).
async fn keep_flagged<G: Guest>(rest: &Rest, instance: &mut G) -> Keeping {
    rest.sleeping.store(true, Ordering::Relaxed);
    let keeping = keep(instance).await;
    if !matches!(keeping, Keeping::Kept(_)) {
        rest.sleeping.store(false, Ordering::Relaxed);
    }
    keeping
}

/// What `instance` keeps when it hibernates: its state if it saves one,
/// else an image of its memory.
async fn keep<G: Guest>(instance: &mut G) -> Keeping {
    if instance.awaiting() > 0 || instance.stays_awake() {
        return Keeping::NotNow;
    }
    if instance.loads_state() {
        match instance.save_state().await {
            Ok(Some(state)) => return Keeping::Kept(Kept::State(state.into())),
            Ok(None) => {}
            Err(failure) => return Keeping::Failed(failure),
        }
    }
    match instance.snapshot(Afterwards::Dropped).await {
        Ok(Snapshot::Image(image)) => Keeping::Kept(Kept::Memory(image.into())),
        Ok(Snapshot::NotNow) => Keeping::NotNow,
        Ok(Snapshot::Never) => Keeping::Never,
        Err(failure) => Keeping::Failed(failure),
    }
}

/// Marks the service behind `handle` hibernated (it holds no instance now)
/// and lets go of its batch buffers.
pub(super) fn fall_asleep(kernel: &Kernel, handle: &ServiceHandle, inbox: &mut Inbox) {
    let rest = &handle.usage.rest;
    rest.resident.store(false, Ordering::Relaxed);
    rest.sleeping.store(false, Ordering::Relaxed);
    handle.usage.memory.store(0, Ordering::Relaxed);
    rest.hibernated.store(true, Ordering::Relaxed);
    kernel.hibernated.fetch_add(1, Ordering::Relaxed);
    inbox.release_buffers();
    handle.mailbox.release_buffer();
}

/// A service fallen asleep ([`fall_asleep`]), holding `state` and what its
/// last instance `carried` out: waits for its mailbox, then wakes (a new
/// instance of `module`, `load-state`, carry in). Where a hibernation ends,
/// and where a service born on a template starts.
pub(super) async fn rest<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &Arc<ServiceHandle>,
    module: &Arc<G::Module>,
    carried: Carried,
    kept: Kept,
    inbox: &mut Inbox,
) -> Woken<G> {
    let rest = &handle.usage.rest;
    kernel
        .hibernated_bytes
        .fetch_add(kept.len(), Ordering::Relaxed);
    let next = inbox.next(handle).await;
    kernel
        .hibernated_bytes
        .fetch_sub(kept.len(), Ordering::Relaxed);
    rest.hibernated.store(false, Ordering::Relaxed);
    kernel.hibernated.fetch_sub(1, Ordering::Relaxed);
    let Some(next) = next else {
        return Woken::Ended(End::exited(), carried.into_owed());
    };
    inbox.pending.push_front(next);
    if handle.killed.load(Ordering::Acquire) {
        return Woken::Ended(End::killed(), carried.into_owed());
    }
    Box::pin(wake(kernel, handle, module, carried, kept)).await
}

/// A new instance of `module` for the service behind `handle`, given what
/// the last one carried out and what it kept.
async fn wake<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &Arc<ServiceHandle>,
    module: &Arc<G::Module>,
    carried: Carried,
    kept: Kept,
) -> Woken<G> {
    let made = kernel
        .ahead
        .take::<G>(module, handle.tenant.id)
        .and_then(|mut made| made.bind(handle).then_some(made));
    let instance = match made {
        Some(instance) => {
            handle.usage.rest.resident.store(true, Ordering::Relaxed);
            kernel.woken_ahead.fetch_add(1, Ordering::Relaxed);
            Ok(instance)
        }
        None => super::resident::instantiate::<G>(kernel, handle, module).await,
    };
    // Services of this module wake: the next wake need not wait for its
    // instance (made when a worker is idle).
    Ahead::refill::<G>(kernel, module, &handle.tenant);
    let mut instance = match instance {
        Ok(instance) => instance,
        Err(error) => {
            let end = wake_failed(format!("instantiating: {error}"));
            return Woken::Ended(end, carried.into_owed());
        }
    };
    instance.carry_in(carried);
    let taken = match &kept {
        Kept::State(state) => instance
            .load_state(state.to_vec())
            .await
            .map(|r| r.map_err(|refused| format!("load-state refused its state: {refused}"))),
        Kept::Memory(image) => instance
            .restore(image)
            .await
            .map(|r| r.map_err(|refused| format!("its memory image was refused: {refused}"))),
    };
    match taken {
        Ok(Ok(())) => Woken::Awake(instance),
        Ok(Err(refused)) => {
            let owed = instance.take_owed();
            Woken::Ended(wake_failed(refused), owed)
        }
        Err(failure) => {
            let owed = instance.take_owed();
            Woken::Ended(End::failed(failure), owed)
        }
    }
}

/// The end of a service that could not wake.
fn wake_failed(reason: String) -> End {
    End::failed(GuestFailure {
        cause: ErrorCause::Exited,
        reason: format!("waking from hibernation failed: {reason}"),
        class: StopReason::Error,
    })
}

/// The node's sweeper: asks the services idle past their tenant's limit to
/// hibernate, until `shutdown`.
pub(super) async fn sweeper(kernel: Weak<Kernel>, shutdown: CancellationToken) {
    loop {
        let Some(next_look) = kernel.upgrade().map(|k| k.sweep()) else {
            return;
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(next_look) => {}
        }
    }
}

impl Kernel {
    /// One look of the sweeper; how long until the next.
    fn sweep(&self) -> Duration {
        self.ahead.expire(super::ahead::AHEAD_KEPT);
        let Some(shortest) = self.shortest_hibernate_after() else {
            return LOOK_WHEN_OFF;
        };
        let now = self.ticks();
        for handle in self.services.pin().values() {
            if let Some(after) = Rest::askable(handle)
                && handle.usage.rest.idle_past(self, now, after)
            {
                Rest::ask(handle, false);
            }
        }
        (shortest / 4).clamp(Duration::from_millis(5), LOOK_WHEN_OFF)
    }

    /// The shortest idle time of the tenants that hibernate their services
    /// (from the tenants, not the services: a node's first services come
    /// after the sweeper's first look); `None` when none does.
    pub(super) fn shortest_hibernate_after(&self) -> Option<Duration> {
        self.tenants
            .pin()
            .values()
            .filter_map(|t| t.quotas.hibernate_after)
            .min()
    }

    /// Services hibernated now.
    pub(crate) fn hibernated_services(&self) -> usize {
        self.hibernated.load(Ordering::Relaxed)
    }

    /// Bytes the hibernated services keep now (states and memory images).
    pub(crate) fn hibernated_bytes(&self) -> usize {
        self.hibernated_bytes.load(Ordering::Relaxed)
    }

    /// Wakes that took an instance made ahead, since the node started.
    pub(crate) fn wakes_ahead(&self) -> u64 {
        self.woken_ahead.load(Ordering::Relaxed)
    }

    /// Services born hibernated on a template since the node started.
    pub(crate) fn template_spawns(&self) -> u64 {
        self.template_spawns.load(Ordering::Relaxed)
    }
}
