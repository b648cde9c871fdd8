//! The data of a service's `Store`: what the host imports see and change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::{StoreContextMut, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::bindings::skyhost::service::types;
use crate::runtime::tenant::{ERROR_LABELS, KIND_LABELS, Tenant, add_owned, kind_slot};
use crate::runtime::{
    Address, Carried, ErrorCause, GUEST_SESSIONS, Kernel, LateAt, Message, SendError,
    ServiceHandle, TenantId, TimerKey, kind,
};

/// Why the host stopped a guest: raised as a trap from a host callback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stop {
    /// Someone killed the service.
    #[error("killed")]
    Killed,
    /// One dispatch (a message, or a batch of cheap ones) took more CPU
    /// time than the budget.
    #[error("cpu budget of {0} ms exceeded (by one message, or one batch of cheap messages)")]
    CpuBudget(u64),
    /// The guest asked for more linear memory than its limit.
    #[error("memory limit of {limit} bytes exceeded (asked for {desired})")]
    MemoryLimit {
        /// The limit.
        limit: usize,
        /// What the guest asked for.
        desired: usize,
    },
    /// The guest's growth would take its tenant past the tenant's total.
    #[error("tenant `{tenant}`: total memory limit of {limit} bytes reached")]
    TenantMemory {
        /// The tenant.
        tenant: String,
        /// Its `total_memory_mb` in bytes.
        limit: usize,
    },
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if self.counted {
            self.tenant
                .counters
                .memory
                .fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

/// Keeps a service's linear memory under its limit, and its tenant's
/// memory under the tenant's total.
pub(crate) struct MemoryLimiter {
    limit: usize,
    tenant: Arc<Tenant>,
    handle: Arc<ServiceHandle>,
    /// Bytes of linear memory this service holds, counted in its tenant's.
    held: usize,
    /// Whether `held` is counted in its tenant's memory: not while the
    /// instance is made ahead of its service (until [`ServiceState::bind`]),
    /// so instances made ahead never take a tenant's quota from its services.
    pub(super) counted: bool,
}

impl MemoryLimiter {
    /// Counts `bytes` more in its tenant's memory; false (nothing counted)
    /// when that would pass the tenant's total.
    fn charge_tenant(&self, bytes: usize) -> bool {
        let total = &self.tenant.counters.memory;
        let before = total.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > self.tenant.quotas.total_memory {
            total.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            if self.counted {
                self.tenant.refused();
            }
            return Err(wasmtime::Error::new(Stop::MemoryLimit {
                limit: self.limit,
                desired,
            }));
        }
        let grow = desired.saturating_sub(current);
        if !self.counted {
            self.held += grow;
            return Ok(true);
        }
        if !self.charge_tenant(grow) {
            self.tenant.refused();
            return Err(wasmtime::Error::new(Stop::TenantMemory {
                tenant: self.tenant.name.to_string(),
                limit: self.tenant.quotas.total_memory,
            }));
        }
        self.held += grow;
        self.handle.usage.memory.store(self.held, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The number after `n` in `1..GUEST_SESSIONS`, wrapping to 1.
fn next_in_range(n: u32) -> u32 {
    if n + 1 >= GUEST_SESSIONS { 1 } else { n + 1 }
}

/// A service as its host imports see it.
pub(crate) struct ServiceState {
    pub(super) kernel: Arc<Kernel>,
    /// The node's layers above the core (harbor, cluster, multicast).
    pub(super) parts: Arc<super::Parts>,
    pub(super) handle: Arc<ServiceHandle>,
    pub(super) address: Address,
    /// Its tenant's id, stamped on everything it sends.
    pub(super) tenant: TenantId,
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// The last session a host import opened (the host range, see [`GUEST_SESSIONS`]).
    pub(super) next_session: u32,
    /// The last session `new-session` gave the guest (without the guest bit).
    pub(super) next_guest_session: u32,
    /// Requests delivered and not answered yet: (caller, session) and the
    /// caller's tenant, which the answer carries back.
    pub(super) owed: crate::runtime::guest::Owed,
    /// Messages taken and sent since the counts last went to the tenant.
    pub(super) taken: u64,
    pub(super) sent: u64,
    /// Messages taken by kind slot, and errors by cause, since the last flush.
    pub(super) kinds: [u64; KIND_LABELS.len()],
    pub(super) errors: [u64; ERROR_LABELS.len()],
    /// The trace id of the message being handled (0: none), carried by
    /// everything the guest sends while it handles it.
    pub(super) current_trace: u64,
    /// Sessions it opened and waits on (calls, spawns, timers, harbor and
    /// cluster requests): one `response` or `error` ends each.
    pub(super) awaiting: HashSet<u32, std::hash::BuildHasherDefault<fnv::FnvHasher>>,
    /// The timers of its timed calls still waiting (a subset of
    /// `awaiting`), cancelled when the answer comes first.
    pub(super) expiring: HashMap<u32, TimerKey, std::hash::BuildHasherDefault<fnv::FnvHasher>>,
    pub(super) exit_requested: bool,
    /// Imports (`skyhost` and WASI) it has called: none since it was made
    /// means its `init` was pure (template spawn).
    pub(super) imports_called: u64,
    /// The guest holds what only this instance can keep (`stay-awake`).
    pub(super) stays_awake: bool,
    /// CPU time this piece of work has used, and how much it may use.
    pub(super) cpu_used: Duration,
    /// Messages in this piece of work (1 for `init` and the `state` calls).
    pub(super) work_messages: usize,
    pub(super) cpu_budget: Duration,
    /// When the guest last started or resumed running.
    /// (A `Kernel::ticks` reading; shared with the hog's yield, which sets
    /// it when the guest resumes.)
    pub(super) resumed_at: Arc<AtomicU64>,
    /// Whether this piece of work has run past a whole time slice.
    pub(super) hog: bool,
    /// When the current piece of work started: the "now" its timers count from,
    /// so timers set together fire in deadline order.
    pub(super) work_started: Option<tokio::time::Instant>,
    /// Set while a caller runs this instance inside its `call-now` (see
    /// `handoff.rs`).
    pub(super) lent: Option<super::handoff::Lent>,
    /// The batch of one a `call-now` hands its callee, kept between calls.
    pub(super) handoff_batch: Vec<Message>,
}

impl ServiceState {
    /// Makes the state of an instance made ahead the state of the service
    /// behind `handle` (same tenant): its address, and its memory counted in
    /// its tenant's; false when the tenant's total memory cannot take it.
    pub(super) fn bind(&mut self, handle: &Arc<ServiceHandle>) -> bool {
        debug_assert_eq!(handle.tenant.id, self.tenant);
        let limiter = &mut self.limiter;
        if !limiter.charge_tenant(limiter.held) {
            return false;
        }
        limiter.counted = true;
        handle.usage.memory.store(limiter.held, Ordering::Relaxed);
        limiter.handle = handle.clone();
        self.address = handle.address;
        self.handle = handle.clone();
        true
    }

    /// Whether its guest holds a WASI resource (a stream, a pollable): a
    /// handle a new instance would not have.
    pub(super) fn holds_resources(&self) -> bool {
        !self.table.is_empty()
    }

    /// The state of the service behind `handle`, with the WASI its tenant
    /// grants.
    ///
    /// # Errors
    /// When a directory its tenant grants cannot be opened.
    pub fn new(
        kernel: &Arc<Kernel>,
        handle: &Arc<ServiceHandle>,
        parts: Arc<super::Parts>,
    ) -> wasmtime::Result<Self> {
        let address = handle.address;
        let tenant = &handle.tenant;
        let wasi = super::grants::wasi_for(tenant)?;
        Ok(ServiceState {
            kernel: kernel.clone(),
            parts,
            handle: handle.clone(),
            address,
            tenant: tenant.id,
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: tenant.quotas.memory,
                tenant: tenant.clone(),
                handle: handle.clone(),
                held: 0,
                counted: true,
            },
            next_session: 0,
            next_guest_session: 0,
            owed: Default::default(),
            taken: 0,
            sent: 0,
            kinds: [0; KIND_LABELS.len()],
            errors: [0; ERROR_LABELS.len()],
            current_trace: 0,
            awaiting: HashSet::default(),
            expiring: HashMap::default(),
            exit_requested: false,
            imports_called: 0,
            stays_awake: false,
            cpu_used: Duration::ZERO,
            work_messages: 1,
            // Instantiation runs under one message's budget.
            cpu_budget: Duration::from_millis(tenant.quotas.cpu_budget_ms),
            resumed_at: Arc::new(AtomicU64::new(kernel.ticks())),
            hog: false,
            work_started: None,
            lent: None,
            handoff_batch: Vec::new(),
        })
    }

    /// Starts the CPU budget for a piece of work: one `init`, or one
    /// `dispatch` of `messages` messages. The budget is the tenant's
    /// `cpu_budget_ms` for the whole piece, whatever its size: a runaway
    /// stops within its budget however much is queued behind it. The
    /// service loop keeps a batch small enough to fit (see
    /// [`affordable_batch`](Self::affordable_batch)).
    pub fn start_work(&mut self, messages: usize) {
        self.start_work_at(messages, self.kernel.ticks());
    }

    /// [`start_work`](Self::start_work) at `now` (a [`Kernel::ticks`]
    /// reading the caller already took).
    pub fn start_work_at(&mut self, messages: usize, now: u64) {
        self.cpu_used = Duration::ZERO;
        self.work_messages = messages;
        self.handle.usage.running.store(true, Ordering::Relaxed);
        self.cpu_budget = Duration::from_millis(self.handle.tenant.quotas.cpu_budget_ms);
        // Read when its first timer is set: most work sets none.
        self.work_started = None;
        self.resumed_at.store(now, Ordering::Relaxed);
    }

    /// Stops the guest's clock while a callee runs inside its `call-now`:
    /// the time until [`resume_clock`](Self::resume_clock) is not its own.
    /// The reading it stopped at.
    pub(super) fn pause_clock(&self) -> u64 {
        self.kernel.ticks()
    }

    /// Starts the guest's clock again at `now` after
    /// [`pause_clock`](Self::pause_clock) stopped it at `paused`: its run
    /// so far keeps counting from a start moved on by the pause.
    pub(super) fn resume_clock(&self, paused: u64, now: u64) {
        self.resumed_at
            .fetch_add(now.saturating_sub(paused), Ordering::Relaxed);
    }

    /// The piece of work returned or trapped: its CPU time and message
    /// counts go to the tenant (once per batch, not per message).
    /// The [`Kernel::ticks`] reading it ended at.
    pub fn end_work(&mut self) -> u64 {
        if std::mem::take(&mut self.hog) {
            self.kernel.sched.hog_ended(&self.handle.tenant);
        }
        // Since the last epoch deadline, which counted what ran before it.
        let now = self.kernel.ticks();
        let ran = self
            .kernel
            .ticks_between(self.resumed_at.load(Ordering::Relaxed), now);
        self.cpu_used += ran;
        let ran = u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX);
        let u = &self.handle.usage;
        u.running.store(false, Ordering::Relaxed);
        add_owned(&u.cpu_nanos, ran);
        add_owned(&u.messages_in, std::mem::take(&mut self.taken));
        add_owned(&u.messages_out, std::mem::take(&mut self.sent));
        u.awaiting.store(self.awaiting.len(), Ordering::Relaxed);
        flush(&mut self.kinds, &u.kinds);
        flush(&mut self.errors, &u.errors);
        now
    }

    /// How many messages the next batch may hold so that, at what the last
    /// piece of work cost per message, it uses at most a quarter of the
    /// budget (`usize::MAX` when that cost is too small to measure). A
    /// service whose messages cost more than a quarter of its budget gets
    /// them one at a time, so each has the whole budget.
    pub fn affordable_batch(&self) -> usize {
        let per_message = self.cpu_used.as_nanos() / self.work_messages.max(1) as u128;
        if per_message == 0 {
            return usize::MAX;
        }
        let quarter = self.cpu_budget.as_nanos() / 4;
        usize::try_from(quarter / per_message).map_or(usize::MAX, |n| n.max(1))
    }

    /// Counts a message taken into a dispatch by its kind (and an error
    /// by its cause), for `/metrics`.
    pub fn count_kind(&mut self, kind: u8, payload: &[u8]) {
        self.kinds[kind_slot(kind)] += 1;
        if kind == kind::ERROR {
            let cause = payload.first().map_or(0, |&b| usize::from(b));
            if let Some(n) = self.errors.get_mut(cause) {
                *n += 1;
            }
        }
    }

    /// Records a request taken from the mailbox: it is owed an answer, which
    /// carries the caller's tenant back.
    pub fn owe(&mut self, caller: Address, session: u32, tenant: TenantId) {
        self.owed.insert((caller, session), tenant);
    }

    /// The trace id of the message about to be handled (0: none).
    pub fn set_trace(&mut self, trace: u64) {
        self.current_trace = trace;
    }

    /// Counts an answer dropped because its session had ended (except a
    /// `call-timeout`'s own expiry, which lost its race to the answer).
    pub fn late_answer(&mut self, m: &Message) {
        let expiry = m.kind == kind::ERROR
            && m.source == Address(0)
            && m.payload.first() == Some(&(ErrorCause::Timeout as u8));
        if expiry {
            return;
        }
        self.kernel.count_late_answer(LateAt::Service);
        tracing::debug!(
            source = %m.source,
            session = m.session,
            kind = m.kind,
            "late answer dropped: its session has ended"
        );
    }

    /// Counts `n` messages taken into a dispatch.
    pub fn took(&mut self, n: usize) {
        self.taken += n as u64;
    }

    pub fn take_owed(&mut self) -> Vec<(Address, u32)> {
        self.owed.drain().map(|(k, _)| k).collect()
    }

    pub fn exit_requested(&self) -> bool {
        self.exit_requested
    }

    /// The state a `skyhost` import works on: every call of one comes
    /// through here, and is counted.
    pub fn imported(&mut self) -> &mut Self {
        self.imports_called += 1;
        self
    }

    /// What outlives this store (see [`Carried`]), taken out of it.
    pub fn carry_out(&mut self) -> Carried {
        Carried {
            owed: std::mem::take(&mut self.owed),
            next_session: self.next_session,
            next_guest_session: self.next_guest_session,
            awaiting: self.awaiting.drain().collect(),
            expiring: self.expiring.drain().collect(),
        }
    }

    /// Takes over what an earlier store of the service carried out.
    pub fn carry_in(&mut self, carried: Carried) {
        self.owed.extend(carried.owed);
        self.next_session = carried.next_session;
        self.next_guest_session = carried.next_guest_session;
        self.awaiting.extend(carried.awaiting);
        self.expiring.extend(carried.expiring);
    }

    pub fn awaiting_len(&self) -> usize {
        self.awaiting.len()
    }

    pub fn awaits(&self, session: u32) -> bool {
        self.awaiting.contains(&session)
    }

    /// A fresh session the service will wait on.
    pub(super) fn awaited_session(&mut self) -> u32 {
        let session = self.fresh_session();
        self.awaiting.insert(session);
        session
    }

    /// An answer (`response` or `error`) for `session` arrived: whether it
    /// ends a session the service waits on (and may be dispatched). A session
    /// from a host import ends once: an answer for one that has ended (a
    /// reply after its timeout or its node-down error, say) is late and is
    /// dropped. Sessions from `new-session` belong to the guest's own
    /// protocol on `send`; their answers always pass.
    pub fn answered(&mut self, session: u32) -> bool {
        if session & GUEST_SESSIONS != 0 || session == 0 {
            return true;
        }
        let ended = self.awaiting.remove(&session);
        if ended
            && !self.expiring.is_empty()
            && let Some(key) = self.expiring.remove(&session)
        {
            self.kernel.cancel_timer(key);
        }
        ended
    }

    /// The next session of the host range (1 to `GUEST_SESSIONS - 1`).
    pub(super) fn fresh_session(&mut self) -> u32 {
        self.next_session = next_in_range(self.next_session);
        self.next_session
    }

    /// The next session of the guest range (`GUEST_SESSIONS | 1` up).
    pub(super) fn fresh_guest_session(&mut self) -> u32 {
        self.next_guest_session = next_in_range(self.next_guest_session);
        GUEST_SESSIONS | self.next_guest_session
    }

    pub(super) fn deliver(&mut self, dest: u32, message: Message) -> Result<(), types::SendError> {
        self.sent += 1;
        super::handoff::passed(self, Address(dest));
        if message.trace != 0 || self.handle.usage.traced.load(Ordering::Relaxed) {
            crate::runtime::service::trace_message("out", Address(dest), &message);
        }
        if self.handle.usage.taps.is_on() {
            let out = crate::runtime::tap::Direction::Out;
            self.handle.usage.taps.send(out, Address(dest), &message);
        }
        self.kernel
            .deliver(Address(dest), message)
            .map_err(wire_error)
    }

    /// A request carrying `payload`, on a fresh session the service waits
    /// on.
    pub(super) fn request(&mut self, payload: Vec<u8>) -> Result<Message, types::SendError> {
        let request = self.request_unawaited(payload)?;
        self.awaiting.insert(request.session);
        Ok(request)
    }

    /// A request on a fresh session not yet among those the service waits
    /// on: `call-now` adds it only when the call did not end inside the
    /// import (see `handoff::call`).
    pub(super) fn request_unawaited(
        &mut self,
        payload: Vec<u8>,
    ) -> Result<Message, types::SendError> {
        self.check_size(&payload)?;
        Ok(Message {
            kind: kind::REQUEST,
            source: self.address,
            session: self.fresh_session(),
            tenant: self.tenant,
            payload: payload.into(),
            trace: self.current_trace,
        })
    }

    /// Sends `request` to `dest`: its session, or why it was refused (the
    /// session is then closed).
    pub(super) fn send_request(
        &mut self,
        dest: u32,
        request: Message,
    ) -> Result<u32, types::SendError> {
        let session = request.session;
        let sent = self.deliver(dest, request);
        if sent.is_err() {
            self.awaiting.remove(&session);
        }
        sent.map(|()| session)
    }

    /// Has the host end `session` with a timeout error `ms` (0: never)
    /// after `from`, unless it ends first (`call-timeout`).
    pub(super) fn expire_after(&mut self, from: tokio::time::Instant, session: u32, ms: u32) {
        if ms > 0
            && let Some(key) =
                self.kernel
                    .expire_call(from, self.address, session, ms, self.current_trace)
        {
            self.expiring.insert(session, key);
        }
    }

    /// Whether what this service sends is traced (each message logged).
    pub(super) fn traced(&self) -> bool {
        self.current_trace != 0 || self.handle.usage.traced.load(Ordering::Relaxed)
    }

    pub(super) fn check_size(&self, payload: &[u8]) -> Result<(), types::SendError> {
        if payload.len() > self.handle.tenant.quotas.max_payload {
            self.handle.tenant.refused();
            return Err(types::SendError::TooLarge);
        }
        Ok(())
    }
}

/// The WIT's `send-error` for the kernel's.
pub(super) fn wire_error(e: SendError) -> types::SendError {
    match e {
        SendError::UnknownAddress(_) => types::SendError::UnknownAddress,
        SendError::Overloaded(_) => types::SendError::Overloaded,
        SendError::TooLarge { .. } => types::SendError::TooLarge,
        SendError::ReservedKind(_) => types::SendError::ReservedKind,
        SendError::NodeDown(_) => types::SendError::NodeDown,
    }
}

/// Adds the non-zero local counts to the shared counters and clears them.
fn flush<const N: usize>(local: &mut [u64; N], shared: &[AtomicU64; N]) {
    for (n, total) in local.iter_mut().zip(shared) {
        if *n != 0 {
            add_owned(total, std::mem::take(n));
        }
    }
}

/// Called by wasmtime when a running guest reaches its epoch deadline (each
/// tick, or at once when a service became ready while hogs run): stop it if
/// it was killed or ran past its CPU budget; let it run on if it has not yet
/// used a whole slice; else it is a hog: yield, fresh work first.
pub(crate) fn on_epoch_deadline(
    mut ctx: StoreContextMut<'_, ServiceState>,
) -> wasmtime::Result<UpdateDeadline> {
    let state = ctx.data_mut();
    if state.handle.killed.load(Ordering::Acquire) {
        return Err(wasmtime::Error::new(Stop::Killed));
    }
    let now = state.kernel.ticks();
    let ran = state
        .kernel
        .ticks_between(state.resumed_at.swap(now, Ordering::Relaxed), now);
    state.cpu_used += ran;
    let tenant = &state.handle.tenant;
    add_owned(
        &state.handle.usage.cpu_nanos,
        u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX),
    );
    if state.hog {
        state.kernel.sched.charge(tenant, ran);
    }
    if state.cpu_used > state.cpu_budget {
        return Err(wasmtime::Error::new(Stop::CpuBudget(
            state.handle.tenant.quotas.cpu_budget_ms,
        )));
    }
    let slice = Duration::from_micros(state.kernel.limits.time_slice_us);
    if !state.hog {
        if state.cpu_used < slice {
            return Ok(UpdateDeadline::Continue(1));
        }
        state.hog = true;
        state.kernel.sched.hog_started(&state.handle.tenant);
        state
            .kernel
            .sched
            .charge(&state.handle.tenant, state.cpu_used);
    }
    state.handle.mailbox.stepped_aside(&state.kernel);
    let kernel = state.kernel.clone();
    let tenant = state.handle.tenant.clone();
    let resumed_at = state.resumed_at.clone();
    Ok(UpdateDeadline::YieldCustom(
        1,
        Box::pin(async move {
            kernel.sched.clone().hog_yield(tenant, slice).await;
            resumed_at.store(kernel.ticks(), Ordering::Relaxed);
        }),
    ))
}

impl WasiView for ServiceState {
    /// Every WASI import reaches its context through here.
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.imports_called += 1;
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for ServiceState {}

impl ServiceState {
    /// A fresh session answered by a part of the node (harbor, cluster):
    /// `ask` hands it on when the part is there, else it ends at once with
    /// a `NodeDown` error saying `absent`.
    pub(super) fn part_session<P>(
        &mut self,
        part: Option<&std::sync::Arc<P>>,
        absent: &str,
        ask: impl FnOnce(&std::sync::Arc<P>, crate::runtime::Waiter),
    ) -> u32 {
        let waiter = crate::runtime::Waiter {
            to: self.address,
            session: self.awaited_session(),
        };
        match part {
            Some(p) => ask(p, waiter),
            None => waiter.fail(&self.kernel, ErrorCause::NodeDown, absent),
        }
        waiter.session
    }
}
