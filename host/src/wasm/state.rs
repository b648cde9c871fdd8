//! The data of a service's `Store`: what the host imports see and change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wasmtime::{StoreContextMut, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::bindings::skyhost::service::{cluster, groups, harbor, multicast, runtime, types};
use crate::runtime::tenant::{ERROR_LABELS, KIND_LABELS, Tenant, kind_slot};
use crate::runtime::{
    Address, ErrorCause, GUEST_SESSIONS, Kernel, LateAt, Message, SendError, ServiceHandle,
    TenantId, kind,
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
        self.tenant
            .counters
            .memory
            .fetch_sub(self.held, Ordering::AcqRel);
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
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.tenant.refused();
            return Err(wasmtime::Error::new(Stop::MemoryLimit {
                limit: self.limit,
                desired,
            }));
        }
        let grow = desired.saturating_sub(current);
        let total = &self.tenant.counters.memory;
        let before = total.fetch_add(grow, Ordering::AcqRel);
        let quota = self.tenant.quotas.total_memory;
        if before.saturating_add(grow) > quota {
            total.fetch_sub(grow, Ordering::AcqRel);
            self.tenant.refused();
            return Err(wasmtime::Error::new(Stop::TenantMemory {
                tenant: self.tenant.name.to_string(),
                limit: quota,
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
    kernel: Arc<Kernel>,
    handle: Arc<ServiceHandle>,
    address: Address,
    /// Its tenant's id, stamped on everything it sends.
    tenant: TenantId,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// The last session a host import opened (the host range, see [`GUEST_SESSIONS`]).
    next_session: u32,
    /// The last session `new-session` gave the guest (without the guest bit).
    next_guest_session: u32,
    /// Requests delivered and not answered yet: (caller, session) and the
    /// caller's tenant, which the answer carries back.
    owed: HashMap<(Address, u32), TenantId>,
    /// Messages taken and sent since the counts last went to the tenant.
    taken: u64,
    sent: u64,
    /// Messages taken by kind slot, and errors by cause, since the last flush.
    kinds: [u64; KIND_LABELS.len()],
    errors: [u64; ERROR_LABELS.len()],
    /// The trace id of the message being handled (0: none), carried by
    /// everything the guest sends while it handles it.
    current_trace: u64,
    /// Sessions it opened and waits on (calls, spawns, timers, harbor and
    /// cluster requests): one `response` or `error` ends each.
    awaiting: HashSet<u32, std::hash::BuildHasherDefault<fnv::FnvHasher>>,
    exit_requested: bool,
    /// CPU time this piece of work has used, and how much it may use.
    cpu_used: Duration,
    /// Messages in this piece of work (1 for `init` and the `state` calls).
    work_messages: usize,
    cpu_budget: Duration,
    /// When the guest last started or resumed running.
    /// (A `Kernel::ticks` reading; shared with the hog's yield, which sets
    /// it when the guest resumes.)
    resumed_at: Arc<AtomicU64>,
    /// Whether this piece of work has run past a whole time slice.
    hog: bool,
    /// When the current piece of work started: the "now" its timers count from,
    /// so timers set together fire in deadline order.
    work_started: Option<tokio::time::Instant>,
}

impl ServiceState {
    /// The state of the service behind `handle`, with the WASI its tenant
    /// grants.
    ///
    /// # Errors
    /// When a directory its tenant grants cannot be opened.
    pub fn new(kernel: &Arc<Kernel>, handle: &Arc<ServiceHandle>) -> wasmtime::Result<Self> {
        let address = handle.address;
        let tenant = &handle.tenant;
        let wasi = super::grants::wasi_for(tenant)?;
        Ok(ServiceState {
            kernel: kernel.clone(),
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
            },
            next_session: 0,
            next_guest_session: 0,
            owed: HashMap::new(),
            taken: 0,
            sent: 0,
            kinds: [0; KIND_LABELS.len()],
            errors: [0; ERROR_LABELS.len()],
            current_trace: 0,
            awaiting: HashSet::default(),
            exit_requested: false,
            cpu_used: Duration::ZERO,
            work_messages: 1,
            // Instantiation runs under one message's budget.
            cpu_budget: Duration::from_millis(tenant.quotas.cpu_budget_ms),
            resumed_at: Arc::new(AtomicU64::new(kernel.ticks())),
            hog: false,
            work_started: None,
        })
    }

    /// Starts the CPU budget for a piece of work: one `init`, or one
    /// `dispatch` of `messages` messages. The budget is the tenant's
    /// `cpu_budget_ms` for the whole piece, whatever its size: a runaway
    /// stops within its budget however much is queued behind it. The
    /// service loop keeps a batch small enough to fit (see
    /// [`affordable_batch`](Self::affordable_batch)).
    pub fn start_work(&mut self, messages: usize) {
        self.cpu_used = Duration::ZERO;
        self.work_messages = messages;
        self.handle.usage.running.store(true, Ordering::Relaxed);
        self.cpu_budget = Duration::from_millis(self.handle.tenant.quotas.cpu_budget_ms);
        // Read when its first timer is set: most work sets none.
        self.work_started = None;
        self.resumed_at
            .store(self.kernel.ticks(), Ordering::Relaxed);
    }

    /// The piece of work returned or trapped: its CPU time and message
    /// counts go to the tenant (once per batch, not per message).
    pub fn end_work(&mut self) {
        if std::mem::take(&mut self.hog) {
            self.kernel.sched.hog_ended(&self.handle.tenant);
        }
        // Since the last epoch deadline, which counted what ran before it.
        let ran = self
            .kernel
            .ticks_between(self.resumed_at.load(Ordering::Relaxed), self.kernel.ticks());
        self.cpu_used += ran;
        let ran = u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX);
        let u = &self.handle.usage;
        u.running.store(false, Ordering::Relaxed);
        u.cpu_nanos.fetch_add(ran, Ordering::Relaxed);
        u.messages_in
            .fetch_add(std::mem::take(&mut self.taken), Ordering::Relaxed);
        u.messages_out
            .fetch_add(std::mem::take(&mut self.sent), Ordering::Relaxed);
        u.awaiting.store(self.awaiting.len(), Ordering::Relaxed);
        flush(&mut self.kinds, &u.kinds);
        flush(&mut self.errors, &u.errors);
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

    /// Moves the requests owed and the session counter to `next`, the
    /// store of the service's next version (or back, when it failed).
    pub fn hand_over(&mut self, next: &mut ServiceState) {
        next.owed.extend(self.owed.drain());
        next.next_session = self.next_session;
        next.next_guest_session = self.next_guest_session;
        next.awaiting.extend(self.awaiting.drain());
    }

    pub fn awaiting_len(&self) -> usize {
        self.awaiting.len()
    }

    pub fn awaits(&self, session: u32) -> bool {
        self.awaiting.contains(&session)
    }

    /// A fresh session the service will wait on.
    fn awaited_session(&mut self) -> u32 {
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
        session & GUEST_SESSIONS != 0 || session == 0 || self.awaiting.remove(&session)
    }

    /// The next session of the host range (1 to `GUEST_SESSIONS - 1`).
    fn fresh_session(&mut self) -> u32 {
        self.next_session = next_in_range(self.next_session);
        self.next_session
    }

    /// The next session of the guest range (`GUEST_SESSIONS | 1` up).
    fn fresh_guest_session(&mut self) -> u32 {
        self.next_guest_session = next_in_range(self.next_guest_session);
        GUEST_SESSIONS | self.next_guest_session
    }

    fn deliver(&mut self, dest: u32, message: Message) -> Result<(), types::SendError> {
        self.sent += 1;
        if message.trace != 0 || self.handle.usage.traced.load(Ordering::Relaxed) {
            crate::runtime::service::trace_message("out", Address(dest), &message);
        }
        self.kernel
            .deliver(Address(dest), message)
            .map_err(|e| match e {
                SendError::UnknownAddress(_) => types::SendError::UnknownAddress,
                SendError::Overloaded(_) => types::SendError::Overloaded,
                SendError::TooLarge { .. } => types::SendError::TooLarge,
                SendError::ReservedKind(_) => types::SendError::ReservedKind,
                SendError::NodeDown(_) => types::SendError::NodeDown,
            })
    }

    /// Logs a cluster call or send of a traced service or request.
    fn trace_cluster_out(&self, node: &str, service: &cluster::Service, size: usize) {
        if self.current_trace != 0 || self.handle.usage.traced.load(Ordering::Relaxed) {
            let target = match service {
                cluster::Service::Name(n) => n.clone(),
                cluster::Service::Address(a) => Address(*a).to_string(),
            };
            tracing::info!(
                target: "skyhost::trace",
                trace = format_args!("{:016x}", self.current_trace),
                direction = "out",
                node,
                %target,
                size,
                "trace cluster"
            );
        }
    }

    fn check_size(&self, payload: &[u8]) -> Result<(), types::SendError> {
        if payload.len() > self.handle.tenant.quotas.max_payload {
            self.handle.tenant.refused();
            return Err(types::SendError::TooLarge);
        }
        Ok(())
    }
}

/// Adds the non-zero local counts to the shared counters and clears them.
fn flush<const N: usize>(local: &mut [u64; N], shared: &[AtomicU64; N]) {
    for (n, total) in local.iter_mut().zip(shared) {
        if *n != 0 {
            total.fetch_add(std::mem::take(n), Ordering::Relaxed);
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
    state.handle.usage.cpu_nanos.fetch_add(
        u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
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
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for ServiceState {}

impl runtime::Host for ServiceState {
    fn self_address(&mut self) -> u32 {
        self.address.0
    }

    fn tenant(&mut self) -> String {
        self.handle.tenant.name.to_string()
    }

    fn send(
        &mut self,
        dest: u32,
        kind: u8,
        session: u32,
        payload: Vec<u8>,
    ) -> Result<(), types::SendError> {
        if kind::is_reserved(kind) {
            return Err(types::SendError::ReservedKind);
        }
        self.check_size(&payload)?;
        self.deliver(
            dest,
            Message {
                kind,
                source: self.address,
                session,
                tenant: self.tenant,
                payload: payload.into(),
                trace: self.current_trace,
            },
        )
    }

    fn call(&mut self, dest: u32, payload: Vec<u8>) -> Result<u32, types::SendError> {
        self.check_size(&payload)?;
        let session = self.awaited_session();
        let message = Message {
            kind: kind::REQUEST,
            source: self.address,
            session,
            tenant: self.tenant,
            payload: payload.into(),
            trace: self.current_trace,
        };
        let sent = self.deliver(dest, message);
        if sent.is_err() {
            self.awaiting.remove(&session);
        }
        sent.map(|()| session)
    }

    fn call_timeout(
        &mut self,
        dest: u32,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<u32, types::SendError> {
        let session = runtime::Host::call(self, dest, payload)?;
        if timeout_ms > 0 {
            self.kernel
                .expire_call(self.address, session, timeout_ms, self.current_trace);
        }
        Ok(session)
    }

    fn respond(
        &mut self,
        dest: u32,
        session: u32,
        reply: Result<Vec<u8>, String>,
    ) -> Result<(), types::SendError> {
        // An answer to a session it owes goes back to the caller's tenant
        // (a call through a grant); any other reaches its own tenant only.
        let tenant = self
            .owed
            .remove(&(Address(dest), session))
            .unwrap_or(self.tenant);
        let message = match reply {
            Ok(payload) => {
                self.check_size(&payload)?;
                Message {
                    kind: kind::RESPONSE,
                    source: self.address,
                    session,
                    tenant,
                    payload: payload.into(),
                    trace: self.current_trace,
                }
            }
            Err(text) => Message {
                tenant,
                trace: self.current_trace,
                ..Message::error(self.address, session, ErrorCause::Service, &text)
            },
        };
        self.deliver(dest, message)
    }

    fn start_trace(&mut self) -> u64 {
        if self.current_trace == 0 {
            self.current_trace = self.kernel.fresh_trace();
            tracing::info!(
                target: "skyhost::trace",
                trace = format_args!("{:016x}", self.current_trace),
                "trace started"
            );
        }
        self.current_trace
    }

    fn new_session(&mut self) -> u32 {
        self.fresh_guest_session()
    }

    fn register(&mut self, name: String) -> Result<(), types::NameError> {
        self.kernel
            .register_name(&name, &self.handle)
            .map_err(|e| match e {
                crate::runtime::NameError::Invalid(_) => types::NameError::Invalid,
                crate::runtime::NameError::Taken { .. } => types::NameError::Taken,
                crate::runtime::NameError::Unavailable(_) => types::NameError::Unavailable,
            })
    }

    fn unregister(&mut self, name: String) {
        self.kernel.unregister_name(&name, &self.handle);
    }

    fn query(&mut self, name: String) -> Option<u32> {
        self.kernel.resolve(self.tenant, &name).map(|a| a.0)
    }

    fn spawn(&mut self, module: String, args: Vec<u8>) -> u32 {
        let session = self.awaited_session();
        let ready = crate::runtime::Ready::Session(crate::runtime::Waiter {
            to: self.address,
            session,
        });
        self.kernel
            .spawn_detached(self.handle.tenant.clone(), module, args, ready);
        session
    }

    fn exit(&mut self) {
        self.exit_requested = true;
    }

    fn kill(&mut self, target: u32) -> bool {
        if target == self.address.0 {
            self.exit_requested = true;
            return true;
        }
        self.kernel.kill(self.tenant, Address(target))
    }

    fn timeout(&mut self, ms: u32) -> u32 {
        let session = self.awaited_session();
        // Timers set in one piece of work count from one "now", so they fire
        // in deadline order.
        let from = *self
            .work_started
            .get_or_insert_with(tokio::time::Instant::now);
        self.kernel
            .start_timer(from, self.address, session, ms, self.current_trace);
        session
    }

    fn monitor(&mut self, target: u32) {
        self.kernel
            .monitor(self.tenant, self.address, Address(target));
    }

    fn demonitor(&mut self, target: u32) {
        self.kernel.demonitor(self.address, Address(target));
    }

    fn now(&mut self) -> u64 {
        self.kernel.nanos_since_start() / 1_000
    }

    fn wall_time(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        // The service's span names its address.
        match level {
            types::LogLevel::Trace => {
                tracing::trace!(target: "skyhost::guest", "{message}")
            }
            types::LogLevel::Debug => {
                tracing::debug!(target: "skyhost::guest", "{message}")
            }
            types::LogLevel::Info => {
                tracing::info!(target: "skyhost::guest", "{message}")
            }
            types::LogLevel::Warn => {
                tracing::warn!(target: "skyhost::guest", "{message}")
            }
            types::LogLevel::Error => {
                tracing::error!(target: "skyhost::guest", "{message}")
            }
        }
    }
}

impl ServiceState {
    /// A fresh session answered by a part of the node (harbor, cluster):
    /// `ask` hands it on when the part is there, else it ends at once with
    /// a `NodeDown` error saying `absent`.
    fn part_session<P>(
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

    /// [`part_session`](Self::part_session) for the harbor.
    fn harbor_session(
        &mut self,
        absent: &str,
        ask: impl FnOnce(&std::sync::Arc<crate::harbor::Harbor>, crate::runtime::Waiter),
    ) -> u32 {
        let kernel = self.kernel.clone();
        self.part_session(kernel.remote.get(), absent, ask)
    }
}

const NOT_IN_A_HARBOR: &str = "this node is not in a harbor";

impl harbor::Host for ServiceState {
    fn id(&mut self) -> u8 {
        self.kernel.harbor.0
    }

    fn globalname(&mut self, name: String, target: u32) -> u32 {
        let target = Address(target);
        let kernel = self.kernel.clone();
        let tenant = self.tenant;
        self.harbor_session(NOT_IN_A_HARBOR, move |h, waiter| {
            if name.starts_with('.') || !crate::runtime::is_name(&name) {
                let detail = format!("`{name}` is not a global name");
                return waiter.fail(&kernel, ErrorCause::Service, &detail);
            }
            kernel.register_global_confirmed(tenant, h, &name, target, waiter);
        })
    }

    fn queryname(&mut self, name: String, timeout_ms: u32) -> u32 {
        let key = crate::runtime::scoped(self.tenant, &name).into_owned();
        self.harbor_session(NOT_IN_A_HARBOR, |h, waiter| {
            h.queryname(&key, timeout_ms, waiter)
        })
    }

    fn connect(&mut self, id: u8) -> u32 {
        self.harbor_session(NOT_IN_A_HARBOR, |h, waiter| {
            h.watch(crate::harbor::Watch::Connect(id), waiter);
        })
    }

    fn link(&mut self, id: u8) -> u32 {
        self.harbor_session(NOT_IN_A_HARBOR, |h, waiter| {
            h.watch(crate::harbor::Watch::Link(id), waiter);
        })
    }

    fn linkmaster(&mut self) -> u32 {
        self.harbor_session(NOT_IN_A_HARBOR, |h, waiter| {
            h.watch(crate::harbor::Watch::LinkMaster, waiter);
        })
    }
}

const NOT_IN_A_CLUSTER: &str = "this node is not in a cluster";

impl From<cluster::Service> for crate::cluster::proto::Target {
    fn from(s: cluster::Service) -> Self {
        match s {
            cluster::Service::Name(n) => crate::cluster::proto::Target::Name(n),
            cluster::Service::Address(a) => crate::cluster::proto::Target::Address(a),
        }
    }
}

impl ServiceState {
    /// [`part_session`](Self::part_session) for the cluster.
    fn cluster_session(
        &mut self,
        ask: impl FnOnce(&std::sync::Arc<crate::cluster::Cluster>, crate::runtime::Waiter),
    ) -> u32 {
        let kernel = self.kernel.clone();
        self.part_session(kernel.cluster.get(), NOT_IN_A_CLUSTER, ask)
    }
}

impl ServiceState {
    /// A cluster session for a request carrying `payload`: answered at once
    /// with an error when the payload is over the tenant's limit, else
    /// `ask` starts it with the caller's origin, timeout (0: none) and payload.
    fn cluster_request(
        &mut self,
        payload: Vec<u8>,
        timeout_ms: u32,
        ask: impl FnOnce(
            &std::sync::Arc<crate::cluster::Cluster>,
            crate::cluster::Origin,
            crate::runtime::Waiter,
            Option<Duration>,
            Vec<u8>,
        ),
    ) -> u32 {
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.into()));
        let too_large = self.check_size(&payload).is_err();
        let limit = self.handle.tenant.quotas.max_payload;
        let kernel = self.kernel.clone();
        let origin = crate::cluster::Origin {
            tenant: self.tenant,
            trace: self.current_trace,
        };
        self.cluster_session(|c, waiter| {
            if too_large {
                let detail = format!("payload larger than the limit of {limit} bytes");
                return waiter.fail(&kernel, ErrorCause::Service, &detail);
            }
            ask(c, origin, waiter, timeout, payload);
        })
    }
}

impl cluster::Host for ServiceState {
    fn node_name(&mut self) -> String {
        self.kernel
            .cluster
            .get()
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }

    fn open(&mut self, at: String) -> Result<String, String> {
        let cluster = self.kernel.cluster.get().ok_or(NOT_IN_A_CLUSTER)?;
        cluster.open(&at).map(|a| a.to_string())
    }

    fn call(
        &mut self,
        node: String,
        service: cluster::Service,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> u32 {
        self.trace_cluster_out(&node, &service, payload.len());
        self.cluster_request(
            payload,
            timeout_ms,
            |c, origin, waiter, timeout, payload| {
                c.call(origin, &node, service.into(), payload, waiter, timeout);
            },
        )
    }

    fn send(
        &mut self,
        node: String,
        service: cluster::Service,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        if self.check_size(&payload).is_err() {
            return Err(format!(
                "payload larger than the limit of {} bytes",
                self.handle.tenant.quotas.max_payload
            ));
        }
        self.trace_cluster_out(&node, &service, payload.len());
        let cluster = self.kernel.cluster.get().ok_or(NOT_IN_A_CLUSTER)?;
        cluster
            .send(
                crate::cluster::Origin {
                    tenant: self.tenant,
                    trace: self.current_trace,
                },
                &node,
                service.into(),
                payload,
            )
            .map_err(|e| e.to_string())
    }

    fn proxy(&mut self, node: String, service: cluster::Service) -> u32 {
        self.kernel
            .cluster
            .get()
            .and_then(|c| c.proxy(&self.handle.tenant, &node, service.into()))
            .map_or(0, |a| a.0)
    }

    fn register(&mut self, name: String, target: u32) {
        if let Some(c) = self.kernel.cluster.get() {
            c.register(self.tenant, &name, Address(target));
        }
    }

    fn unregister(&mut self, name: String) {
        if let Some(c) = self.kernel.cluster.get() {
            c.unregister(self.tenant, &name);
        }
    }

    fn query(&mut self, node: String, name: String) -> u32 {
        let tenant = self.tenant;
        self.cluster_session(|c, waiter| c.query(tenant, &node, name, waiter))
    }

    fn reload(&mut self, config: String) -> Result<(), String> {
        let cluster = self.kernel.cluster.get().ok_or(NOT_IN_A_CLUSTER)?;
        cluster.reload(&config).map_err(|e| e.to_string())
    }
}

impl From<crate::multicast::ChannelError> for multicast::ChannelError {
    fn from(e: crate::multicast::ChannelError) -> Self {
        use crate::multicast::ChannelError as E;
        match e {
            E::NoSuchChannel(_) => multicast::ChannelError::NoSuchChannel,
            E::Exists(_) => multicast::ChannelError::Exists,
            E::Invalid(_) => multicast::ChannelError::Invalid,
            E::NotOwner(_) => multicast::ChannelError::NotOwner,
            E::NodeDown(_) => multicast::ChannelError::NodeDown,
        }
    }
}

impl multicast::Host for ServiceState {
    fn new(&mut self, number: Option<u32>) -> Result<u32, multicast::ChannelError> {
        Ok(self.kernel.multicast.create(self.tenant, number)?)
    }

    fn delete(&mut self, channel: u32) -> Result<(), multicast::ChannelError> {
        Ok(self.kernel.multicast.delete(self.tenant, channel)?)
    }

    fn publish(&mut self, channel: u32, payload: Vec<u8>) -> Result<(), multicast::ChannelError> {
        if self.check_size(&payload).is_err() {
            // The same limit as a send: refused before anything is copied on.
            return Err(multicast::ChannelError::Invalid);
        }
        Ok(self
            .kernel
            .multicast
            .publish(self.tenant, channel, self.address, payload.into())?)
    }

    fn subscribe(&mut self, channel: u32) -> Result<(), multicast::ChannelError> {
        Ok(self
            .kernel
            .multicast
            .subscribe(self.tenant, channel, self.address)?)
    }

    fn unsubscribe(&mut self, channel: u32) {
        self.kernel
            .multicast
            .unsubscribe(self.tenant, channel, self.address);
    }

    fn cluster_channel(
        &mut self,
        node: String,
        channel: u32,
    ) -> Result<u32, multicast::ChannelError> {
        Ok(self
            .kernel
            .multicast
            .cluster_channel(self.tenant, &node, channel)?)
    }
}

impl From<groups::Policy> for crate::cluster::proto::Policy {
    fn from(p: groups::Policy) -> Self {
        match p {
            groups::Policy::RoundRobin => Self::RoundRobin,
            groups::Policy::ConsistentHash => Self::ConsistentHash,
            groups::Policy::LeastPending => Self::LeastPending,
        }
    }
}

impl groups::Host for ServiceState {
    fn join(&mut self, group: String, member: u32, policy: groups::Policy) -> Result<(), String> {
        let cluster = self.kernel.cluster.get().ok_or(NOT_IN_A_CLUSTER)?;
        cluster.join_group(self.tenant, &group, Address(member), policy.into())
    }

    fn leave(&mut self, group: String, member: u32) {
        if let Some(c) = self.kernel.cluster.get() {
            c.leave_group(self.tenant, &group, Address(member));
        }
    }

    fn members(&mut self, group: String) -> Vec<groups::Member> {
        let Some(c) = self.kernel.cluster.get() else {
            return Vec::new();
        };
        c.group_members(self.tenant, &group)
            .into_iter()
            .map(|m| groups::Member {
                node: m.node,
                address: m.address.0,
            })
            .collect()
    }

    fn call(&mut self, group: String, key: Vec<u8>, payload: Vec<u8>, timeout_ms: u32) -> u32 {
        self.cluster_request(
            payload,
            timeout_ms,
            |c, origin, waiter, timeout, payload| {
                c.call_group(origin, &group, &key, payload, waiter, timeout);
            },
        )
    }
}
