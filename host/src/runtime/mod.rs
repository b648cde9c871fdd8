//! The service runtime: the address table, mailboxes, names, timers, spawn,
//! kill, exit notices, and the scheduler that runs services (the node's own
//! workers by default, or tokio's tasks).
//!
//! Flow: a guest import (or a host [`LocalClient`]) builds a [`Message`] and calls
//! `Kernel::deliver`, which finds the target's `ServiceHandle` in the
//! address table and pushes the message into its mailbox (a locked deque the
//! service empties in one swap). Each service is one task (`service::run::<G>`,
//! on the workers of `workers.rs` or as a tokio task) that owns its `Inbox`
//! and its guest (`guest::Guest`: a wasm `Instance` in a node, a
//! fake in this module's tests); it takes a bounded batch of messages,
//! hands them to the guest's `dispatch`, and yields after a full batch so a
//! flooded service cannot starve others.
//!
//! The runtime is the bottom of the host's layers (docs/layers.md): it
//! reaches what runs services and the other nodes only through its ports
//! (`guest.rs`, `remote.rs`).
//! Files: `mailbox.rs`, `inbox.rs` (a service's receiving side), `names.rs`,
//! `kernel.rs` (building the core, whole-node views), `service.rs` (the loop),
//! `upgrade.rs` (hot-swap), `hibernate.rs`, `resident.rs` and `template.rs`
//! (services without an instance), `timer.rs`, `sched.rs` (fresh work first, fair
//! share), `workers.rs` (the node's own threads), `client.rs` and
//! `endpoint.rs` (host endpoints).
//!
//! Ownership: the runtime owns the service (address, mailbox, names,
//! monitors, and the sessions it owes); the instance is a replaceable part.
//! Every session ends: when a service ends, each request it received and did
//! not answer, and each request still queued, gets an `error` message naming
//! the cause (exited, trapped, killed).

mod address;
mod ahead;
pub(crate) mod client;
mod delivery;
pub(crate) mod endpoint;
pub(crate) mod guest;
mod hibernate;
mod inbox;
mod kernel;
pub(crate) mod lease;
mod mailbox;
mod message;
pub(crate) mod names;
mod remote;
mod resident;
mod sched;
pub(crate) mod service;
mod spread;
pub mod tap;
pub(crate) mod template;
pub(crate) mod tenant;
#[cfg(test)]
pub(crate) mod tests;
mod timer;
mod upgrade;
mod workers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use address::{Address, HarborId};
pub use client::LocalClient;
pub(crate) use guest::{
    Afterwards, BoxFuture, Carried, Guest, GuestFailure, GuestModule, InstantiateError, Loader,
    Snapshot,
};
pub use guest::{ModuleError, StopReason};
pub use kernel::TenantError;
pub(crate) use mailbox::Mailbox;
pub use message::{
    CallError, ErrorCause, GUEST_SESSIONS, LateAt, Message, SendError, Session, kind,
};
pub use names::{MAX_NAME_LEN, NameError};
pub(crate) use names::{is_name, scoped};
pub use remote::GlobalNameError;
pub(crate) use remote::Remote;
pub use tenant::{SYSTEM_TENANT, TenantId, TenantStats};
pub use timer::TimerKey;
pub use upgrade::{UpgradeError, UpgradeReport, Upgraded};

use tenant::Tenant;

use crate::config::Limits;

/// Why a service could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpawnError {
    /// The module could not be found or compiled.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The node already runs as many services as its limit allows.
    #[error("node is at its limit of {0} services")]
    TooMany(u32),
    /// The tenant already runs as many services as its quota allows.
    #[error("tenant `{tenant}` is at its limit of {limit} services")]
    TenantServices {
        /// The tenant.
        tenant: String,
        /// Its `max_services`.
        limit: u32,
    },
    /// The tenant spawned faster than its `spawn_rate`.
    #[error("tenant `{0}` is spawning faster than its spawn_rate")]
    SpawnRate(String),
    /// No such tenant on this node (or it is being removed).
    #[error("no tenant `{0}` on this node")]
    NoTenant(String),
    /// The instance could not be created.
    #[error("module `{module}`: instantiation failed: {error}")]
    Instantiate {
        /// The module.
        module: String,
        /// What wasmtime said.
        error: String,
    },
    /// The guest's `init` returned an error or trapped.
    #[error("module `{module}`: init failed: {reason}")]
    Init {
        /// The module.
        module: String,
        /// The guest's error, or the trap.
        reason: String,
    },
    /// The node is shutting down.
    #[error("node is shutting down")]
    Stopped,
}

/// A session the host answers for someone (spawn, harbor, cluster): the
/// service (or host client, which has an address too) and its session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiter {
    pub to: Address,
    pub session: Session,
}

impl Waiter {
    /// Ends the session with a `response` from `source`.
    pub fn respond(self, kernel: &Kernel, source: Address, payload: Vec<u8>) {
        self.respond_traced(kernel, source, payload, 0);
    }

    /// Ends the session with a `response` that carries a trace id.
    pub fn respond_traced(self, kernel: &Kernel, source: Address, payload: Vec<u8>, trace: u64) {
        let m = Message {
            kind: kind::RESPONSE,
            source,
            session: self.session,
            tenant: TenantId::HOST,
            payload: payload.into(),
            trace,
        };
        let _ = kernel.deliver(self.to, m);
    }

    /// Ends the session with an `error` (from address 0: the host answered).
    pub fn fail(self, kernel: &Kernel, cause: ErrorCause, detail: &str) {
        let m = Message::error(Address(0), self.session, cause, detail);
        let _ = kernel.deliver(self.to, m);
    }
}

/// Whom to tell that a spawn finished.
pub(crate) enum Ready {
    /// A service waiting on a session.
    Session(Waiter),
    /// A host caller.
    Host(oneshot::Sender<Result<Address, SpawnError>>),
}

impl Ready {
    fn succeed(self, kernel: &Kernel, address: Address) {
        match self {
            Ready::Session(waiter) => {
                waiter.respond(kernel, address, address.0.to_le_bytes().to_vec());
            }
            Ready::Host(tx) => {
                let _ = tx.send(Ok(address));
            }
        }
    }

    fn fail(self, kernel: &Kernel, error: SpawnError) {
        match self {
            Ready::Session(waiter) => {
                waiter.fail(kernel, ErrorCause::SpawnFailed, &error.to_string());
            }
            Ready::Host(tx) => {
                let _ = tx.send(Err(error));
            }
        }
    }
}

/// A snapshot of one service, for the console (`list`, `stat`, `mem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its address.
    pub address: Address,
    /// The module it runs (`host`, `cluster-agent`, `cluster-proxy` for host endpoints).
    pub module: String,
    /// Its tenant.
    pub tenant: String,
    /// The names it holds.
    pub names: Vec<String>,
    /// Messages queued now.
    pub mailbox: usize,
    /// The most messages ever queued at once.
    pub mailbox_peak: usize,
    /// Messages it took.
    pub messages_in: u64,
    /// Messages it sent (sends, calls, answers).
    pub messages_out: u64,
    /// CPU time it used handling messages, in microseconds.
    pub cpu_us: u64,
    /// Linear memory it holds, in bytes.
    pub memory_bytes: usize,
    /// Sessions it opened and waits on (calls, spawns, timers), as of its
    /// last dispatch.
    pub awaiting: usize,
    /// Time since it was spawned.
    pub age: Duration,
    /// How many times its module was replaced (`upgrade`).
    pub upgrades: u32,
    /// Batches of messages handed to it (`messages_in / dispatches` is
    /// its mean batch).
    pub dispatches: u64,
    /// Times it hibernated (gave up its instance while idle).
    pub hibernations: u32,
    /// `upgrading` (waiting to be quiescent for an upgrade, or swapping),
    /// `running` (in a dispatch), `ready` (messages not picked up yet),
    /// `idle`, or `hibernated` (idle, its instance given up).
    pub state: &'static str,
}

/// A service's entry in the address table.
pub(crate) struct ServiceHandle {
    pub address: Address,
    /// The module it runs; "host" for a host [`LocalClient`].
    pub module: Arc<str>,
    /// Its tenant, fixed at spawn.
    pub tenant: Arc<Tenant>,
    /// What it has used (messages, CPU time, memory).
    pub usage: tenant::Usage,
    /// When it was spawned.
    pub started: Instant,
    pub mailbox: Mailbox,
    /// Set by `kill`; the service stops at its next time slice or message.
    pub killed: AtomicBool,
    /// Runs a wasm module (false for host endpoints).
    pub guest: bool,
    /// An upgrade its task has not picked up yet, and a flag the task reads
    /// after each batch (cheaper than the lock).
    upgrade: Mutex<Option<upgrade::UpgradeOrder>>,
    upgrade_pending: AtomicBool,
    /// The service has ended: no upgrade can be ordered any more (set under
    /// the `upgrade` lock, see `upgrade::close_orders`).
    upgrade_closed: AtomicBool,
    watch: Mutex<Watch>,
    /// Its instance, lent to callers while it waits for mail.
    pub lease: lease::Lease,
}

/// What a layer above lets go of when a service ends (a group it joined,
/// a channel it subscribed to): an exit hook, run once, after the service
/// is out of the table.
pub(crate) type ExitHook = Box<dyn FnOnce() + Send>;

/// What changes over a service's life and must be read once at its end.
#[derive(Default)]
struct Watch {
    monitors: Vec<Address>,
    names: Vec<String>,
    /// What layers above hold for it, by their own keys (`group:…`,
    /// `channel:…`), and how each lets go.
    held: Vec<(String, ExitHook)>,
    dead: bool,
}

impl ServiceHandle {
    /// A fresh handle (in no table yet).
    fn new(address: Address, module: Arc<str>, tenant: Arc<Tenant>, guest: bool) -> Self {
        ServiceHandle {
            address,
            module,
            tenant,
            usage: tenant::Usage::default(),
            started: Instant::now(),
            mailbox: Mailbox::new(),
            killed: AtomicBool::new(false),
            guest,
            upgrade: Mutex::new(None),
            upgrade_pending: AtomicBool::new(false),
            upgrade_closed: AtomicBool::new(false),
            watch: Mutex::new(Watch::default()),
            lease: lease::Lease::default(),
        }
    }

    /// The upgrade ordered for this service, if any.
    fn take_upgrade(&self) -> Option<upgrade::UpgradeOrder> {
        if !self.upgrade_pending.swap(false, Ordering::Acquire) {
            return None;
        }
        self.upgrade
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Whether an upgrade is ordered that its task has not picked up.
    pub(crate) fn upgrade_ordered(&self) -> bool {
        self.upgrade_pending.load(Ordering::Acquire)
    }

    fn is_host_endpoint(&self) -> bool {
        !self.guest
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the console shows of it.
    fn info(&self) -> ServiceInfo {
        let u = &self.usage;
        let state = if u.upgrading.load(Ordering::Relaxed) {
            "upgrading"
        } else if u.running.load(Ordering::Relaxed) {
            "running"
        } else if self.mailbox.ready.load(Ordering::Relaxed) {
            "ready"
        } else if u.rest.is_hibernated() {
            "hibernated"
        } else {
            "idle"
        };
        ServiceInfo {
            address: self.address,
            module: self.module.to_string(),
            tenant: self.tenant.name.to_string(),
            names: self.watch().names.clone(),
            mailbox: self.mailbox.len(),
            mailbox_peak: self.mailbox.peak.load(Ordering::Relaxed),
            messages_in: u.messages_in.load(Ordering::Relaxed),
            messages_out: u.messages_out.load(Ordering::Relaxed),
            cpu_us: u.cpu_nanos.load(Ordering::Relaxed) / 1_000,
            memory_bytes: u.memory.load(Ordering::Relaxed),
            awaiting: u.awaiting.load(Ordering::Relaxed),
            age: self.started.elapsed(),
            upgrades: u.upgrades.load(Ordering::Relaxed),
            dispatches: u.dispatches.load(Ordering::Relaxed),
            hibernations: u.hibernations.load(Ordering::Relaxed),
            state,
        }
    }
}

/// The shared core of one node.
pub(crate) struct Kernel {
    pub harbor: HarborId,
    pub limits: Limits,
    /// Finds and runs modules (the wasm layer, wired in by the node).
    pub loader: Arc<dyn Loader>,
    pub started: Instant,
    /// The clock services' CPU time is read from.
    cpu_clock: quanta::Clock,
    services: papaya::HashMap<u32, Arc<ServiceHandle>, foldhash::fast::FixedState>,
    next_local: AtomicU32,
    /// Live wasm services (host clients not counted).
    live: AtomicUsize,
    /// Services hibernated now (see [`hibernate`]).
    hibernated: AtomicUsize,
    /// Bytes the hibernated services keep: their states and memory images.
    hibernated_bytes: AtomicUsize,
    /// Services born hibernated on a template (see [`template`]).
    template_spawns: std::sync::atomic::AtomicU64,
    /// Calls run inside their caller's `call` (see [`lease`]), counted by
    /// the caller's thread at the hand-off.
    pub(crate) direct_calls: spread::SpreadCount,
    /// A scan for services to hibernate is under way (see [`resident`]).
    making_room: AtomicBool,
    /// Instances made ahead of the wakes that take them.
    pub(crate) ahead: ahead::Ahead,
    /// Wakes that took an instance made ahead.
    woken_ahead: std::sync::atomic::AtomicU64,
    /// Services ended, by `StopReason::index`.
    pub stops: [std::sync::atomic::AtomicU64; StopReason::ALL.len()],
    /// Answers dropped because their session had ended, by [`LateAt::index`].
    late_answers: [std::sync::atomic::AtomicU64; LateAt::ALL.len()],
    /// Names local to this node, each tenant's under its own key (see [`scoped`]).
    names: Mutex<HashMap<String, Address>>,
    /// The tenants of this node, `system` among them.
    tenants: papaya::HashMap<TenantId, Arc<Tenant>>,
    /// The tenant of host endpoints, which take messages of every tenant.
    pub host_tenant: Arc<Tenant>,
    timers: timer::Timers,
    /// The other nodes of its harbor, on a harbor node (the `Remote` port).
    pub remote: OnceLock<Arc<dyn Remote>>,
    pub sched: Arc<sched::Scheduler>,
    /// The worker threads that run its services, when it has them (the
    /// process's pool of that size, shared with the other nodes of the
    /// process); let go of when the node has shut down.
    workers: arc_swap::ArcSwapOption<workers::Workers>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Kernel {
    /// Counts an answer dropped at `at` because its session had ended.
    pub fn count_late_answer(&self, at: LateAt) {
        self.late_answers[at.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Monotonic time since the node started, in nanoseconds.
    pub fn nanos_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A raw reading of the CPU-time clock (the TSC where it is usable: a
    /// few ns, where the system clock costs tens on a VM); read on every
    /// dispatch, so services' CPU accounting costs next to nothing.
    pub fn ticks(&self) -> u64 {
        self.cpu_clock.raw()
    }

    /// The time between two [`ticks`](Self::ticks) readings.
    pub fn ticks_between(&self, start: u64, end: u64) -> Duration {
        self.cpu_clock.delta(start, end)
    }

    /// Runs `f` on the live service at `address`, if there is one.
    /// The handle of the live service (or host endpoint) at `address`.
    fn service(&self, address: Address) -> Option<Arc<ServiceHandle>> {
        self.services
            .pin()
            .get(&address.local())
            .filter(|h| h.address == address)
            .cloned()
    }

    /// The service at `address` when `wanted` says so of it: a clone of
    /// its handle only then (a clone is a write other threads' clones of
    /// a busy service contend on).
    pub(crate) fn service_if(
        &self,
        address: Address,
        wanted: impl FnOnce(&ServiceHandle) -> bool,
    ) -> Option<Arc<ServiceHandle>> {
        self.services
            .pin()
            .get(&address.local())
            .filter(|h| h.address == address && wanted(h))
            .cloned()
    }

    pub(crate) fn with_service<R>(
        &self,
        address: Address,
        f: impl FnOnce(&ServiceHandle) -> R,
    ) -> Option<R> {
        let services = self.services.pin();
        services
            .get(&address.local())
            .filter(|h| h.address == address)
            .map(|h| f(h))
    }

    /// A new trace id (never 0).
    pub fn fresh_trace(&self) -> u64 {
        rand::random::<u64>().max(1)
    }

    /// The tenant with this id, if this node has it.
    pub fn tenant(&self, id: TenantId) -> Option<Arc<Tenant>> {
        self.tenants.pin().get(&id).cloned()
    }

    /// The tenant named `name`, if this node has it and it is not being removed.
    pub fn tenant_named(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenant(TenantId::of(name))
            .filter(|t| &*t.name == name && !t.removed.load(Ordering::Acquire))
    }

    /// Puts a new handle in the address table under a free local id.
    fn insert_service(
        &self,
        module: Arc<str>,
        tenant: Arc<Tenant>,
        guest: bool,
    ) -> Arc<ServiceHandle> {
        let services = self.services.pin();
        loop {
            let local = self.next_local.fetch_add(1, Ordering::Relaxed) % Address::MAX_LOCAL + 1;
            if services.contains_key(&local) {
                continue;
            }
            let handle = Arc::new(ServiceHandle::new(
                Address::new(local, self.harbor),
                module.clone(),
                tenant.clone(),
                guest,
            ));
            if services.try_insert(local, handle.clone()).is_ok() {
                return handle;
            }
        }
    }

    /// Takes a service out of the table and out of every name, and returns
    /// the services that asked to be told of its end.
    fn remove_service(&self, handle: &ServiceHandle) -> Vec<Address> {
        let services = self.services.pin();
        let removed = services
            .remove_if(&handle.address.local(), |_, h| h.address == handle.address)
            .is_ok_and(|r| r.is_some());
        if removed {
            handle.tenant.counters.retired.absorb(&handle.usage);
        }
        let (monitors, names, held) = {
            let mut w = handle.watch();
            w.dead = true;
            (
                std::mem::take(&mut w.monitors),
                std::mem::take(&mut w.names),
                std::mem::take(&mut w.held),
            )
        };
        for (_, release) in held {
            release();
        }
        if !names.is_empty() {
            let mut table = self.names.lock().unwrap_or_else(|e| e.into_inner());
            for n in names {
                let key = scoped(handle.tenant.id, &n);
                if let Some(harbor) = self.global(&n) {
                    harbor.unregister(&key, handle.address);
                } else if table.get(&*key) == Some(&handle.address) {
                    table.remove(&*key);
                }
            }
        }
        monitors
    }

    /// Runs a service's task, a link's (harbor peer, cluster sender or
    /// agent) or multicast's fan-out, where the services run: on the
    /// node's workers when it has them, so a service and what wakes it
    /// hand off on one thread; else on tokio.
    pub(crate) fn spawn_beside_services(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn_on_workers(task, false);
    }

    /// Runs `task` when a worker of the node has nothing else to run (on
    /// tokio where the node has no workers).
    pub(crate) fn spawn_when_idle(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn_on_workers(task, true);
    }

    /// Runs `task` on the node's workers (in their idle queue when
    /// `when_idle`), or on tokio where it has none; tracked for shutdown.
    fn spawn_on_workers(&self, task: impl Future<Output = ()> + Send + 'static, when_idle: bool) {
        let Some(workers) = self.workers.load_full() else {
            self.tasks.spawn(task);
            return;
        };
        let slice = Duration::from_micros(self.limits.time_slice_us);
        let task = self.tasks.track_future(task);
        if when_idle {
            workers.spawn_when_idle(slice, task);
        } else {
            workers.spawn(slice, task);
        }
    }

    /// Starts a service; `ready` hears when its `init` has returned.
    pub fn spawn_detached(
        self: &Arc<Self>,
        tenant: Arc<Tenant>,
        module: String,
        args: Vec<u8>,
        ready: Ready,
    ) {
        let kernel = self.clone();
        self.spawn_beside_services(async move { kernel.spawn(tenant, module, args, ready).await });
    }

    async fn spawn(
        self: Arc<Self>,
        tenant: Arc<Tenant>,
        module: String,
        args: Vec<u8>,
        ready: Ready,
    ) {
        if self.shutdown.is_cancelled() {
            return ready.fail(&self, SpawnError::Stopped);
        }
        if tenant.removed.load(Ordering::Acquire) {
            return ready.fail(&self, SpawnError::NoTenant(tenant.name.to_string()));
        }
        if !tenant.take_spawn() {
            tenant.refused();
            return ready.fail(&self, SpawnError::SpawnRate(tenant.name.to_string()));
        }
        let max = self.limits.max_services;
        if self.live.fetch_add(1, Ordering::AcqRel) >= max as usize {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return ready.fail(&self, SpawnError::TooMany(max));
        }
        let quota = tenant.quotas.max_services;
        if tenant.counters.live.fetch_add(1, Ordering::AcqRel) >= quota as usize {
            self.service_gone(&tenant);
            tenant.refused();
            let error = SpawnError::TenantServices {
                tenant: tenant.name.to_string(),
                limit: quota,
            };
            return ready.fail(&self, error);
        }
        let module = match self.loader.module(&tenant, &module).await {
            Ok(m) => m,
            Err(e) => {
                self.service_gone(&tenant);
                return ready.fail(&self, e.into());
            }
        };
        let handle = self.insert_service(module.name().clone(), tenant, true);
        if self.shutdown.is_cancelled() || handle.tenant.removed.load(Ordering::Acquire) {
            // Shutdown's sweep may have missed it: it went in after the sweep.
            handle.killed.store(true, Ordering::Release);
            handle.mailbox.wake(handle.address);
        }
        module.run(self, handle, args, ready).await;
    }

    /// A service counted in the node's and `tenant`'s live services ended
    /// (or never started).
    fn service_gone(&self, tenant: &Tenant) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        if tenant.counters.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            tenant.all_ended.notify_waiters();
        }
    }

    /// Stops `target` if `by` may see it (`HOST` sees every tenant);
    /// false if there is no such service.
    pub fn kill(&self, by: TenantId, target: Address) -> bool {
        self.with_service(target, |handle| {
            if !visible(by, handle) {
                return false;
            }
            handle.killed.store(true, Ordering::Release);
            // Wakes the service if it is idle; the flag wins over queued messages.
            handle.mailbox.wake(target);
            true
        })
        .unwrap_or(false)
    }

    /// Records that `service` holds `key` in a layer above, which lets go
    /// of it through `release` when the service ends (once per key: holding
    /// a key again keeps the first release). False when the service has
    /// ended, or is not of `tenant` when one is given.
    pub(crate) fn hold(
        &self,
        service: Address,
        tenant: Option<TenantId>,
        key: String,
        release: ExitHook,
    ) -> bool {
        self.with_service(service, |h| {
            let mut w = h.watch();
            if w.dead || tenant.is_some_and(|t| h.tenant.id != t) {
                return false;
            }
            if !w.held.iter().any(|(k, _)| *k == key) {
                w.held.push((key, release));
            }
            true
        })
        .unwrap_or(false)
    }

    /// `service` no longer holds `key`: its release will not run.
    pub(crate) fn forget_held(&self, service: Address, key: &str) {
        self.with_service(service, |h| h.watch().held.retain(|(k, _)| k != key));
    }

    /// Tells `watcher` with an `exit` message when `target` ends (at once if
    /// it is not alive).
    pub fn monitor(&self, tenant: TenantId, watcher: Address, target: Address) {
        if target.harbor() != self.harbor
            && let Some(harbor) = self.remote.get()
        {
            return harbor.monitor(tenant, watcher, target);
        }
        let watching = self.with_service(target, |handle| {
            let mut w = handle.watch();
            if !visible(tenant, handle) {
                return false;
            }
            if !w.dead {
                w.monitors.push(watcher);
            }
            !w.dead
        });
        if watching != Some(true) {
            let _ = self.deliver(watcher, exit_notice(target, "no such service"));
        }
    }

    /// Stops telling `watcher` about `target`.
    pub fn demonitor(&self, watcher: Address, target: Address) {
        if target.harbor() != self.harbor
            && let Some(harbor) = self.remote.get()
        {
            return harbor.demonitor(watcher, target);
        }
        self.with_service(target, |handle| {
            let mut w = handle.watch();
            if let Some(i) = w.monitors.iter().position(|&a| a == watcher) {
                w.monitors.swap_remove(i);
            }
        });
    }

    /// Delivers a `response` for `session` to `dest` `ms` milliseconds after `from`.
    pub fn start_timer(
        &self,
        from: tokio::time::Instant,
        dest: Address,
        session: Session,
        ms: u32,
        trace: u64,
    ) {
        self.timers.start(
            from + Duration::from_millis(ms.into()),
            dest,
            session,
            trace,
            None,
        );
    }

    /// Ends `dest`'s call `session` with a `Timeout` error `ms` milliseconds
    /// after `from`, unless its answer comes first: the service then cancels
    /// it with the key ([`Kernel::cancel_timer`]), or drops the error as late
    /// when it fired first. A deadline already past delivers the error now,
    /// ahead of anything sent to `dest` after this (no key).
    pub fn expire_call(
        &self,
        from: tokio::time::Instant,
        dest: Address,
        session: Session,
        ms: u32,
        trace: u64,
    ) -> Option<TimerKey> {
        let deadline = from + Duration::from_millis(ms.into());
        if deadline <= tokio::time::Instant::now() {
            let _ = self.deliver(dest, timer::expiry(session, ms, trace));
            return None;
        }
        Some(self.timers.start(deadline, dest, session, trace, Some(ms)))
    }

    /// Drops a timer that has not fired yet (a call answered in time).
    pub fn cancel_timer(&self, key: TimerKey) {
        self.timers.cancel(key);
    }

    /// How many timers are pending (sleeps and calls' timeouts).
    pub fn timers_pending(&self) -> usize {
        self.timers.len()
    }
}

/// The `exit` message a monitor receives.
pub(crate) fn exit_notice(target: Address, reason: &str) -> Message {
    Message {
        kind: kind::EXIT,
        source: target,
        session: 0,
        tenant: TenantId::HOST,
        payload: reason.as_bytes().to_vec().into(),
        trace: 0,
    }
}

/// Whether a service of tenant `by` may see the service behind `handle`
/// (the host sees every tenant).
pub(crate) fn visible(by: TenantId, handle: &ServiceHandle) -> bool {
    by == TenantId::HOST || by == handle.tenant.id
}
