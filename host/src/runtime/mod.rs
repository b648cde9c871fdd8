//! The service runtime: the address table, mailboxes, names, timers, spawn,
//! kill, exit notices, and the scheduler that runs services on tokio.
//!
//! Flow: a guest import (or a host [`Client`]) builds a [`Message`] and calls
//! `Kernel::deliver`, which finds the target's `ServiceHandle` in the
//! address table and pushes the message into its mailbox. Each service is
//! one tokio task (`service::run`) that owns the receiving end of its
//! mailbox and its wasm `Instance`; it takes a
//! bounded batch of messages, hands them to the guest's `dispatch`, and
//! yields after a full batch so a flooded service cannot starve others.
//!
//! Ownership: the runtime owns the service (address, mailbox, names,
//! monitors, and the sessions it owes); the instance is a replaceable part.
//! Every session ends: when a service ends, each request it received and did
//! not answer, and each request still queued, gets an `error` message naming
//! the cause (exited, trapped, killed).

mod address;
pub(crate) mod client;
pub(crate) mod endpoint;
mod mailbox;
mod message;
mod names;
mod sched;
pub(crate) mod service;
pub(crate) mod tenant;
mod timer;
mod upgrade;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use address::{Address, HarborId};
pub use client::Client;
pub(crate) use mailbox::Mailbox;
pub use message::{
    CallError, ErrorCause, GUEST_SESSIONS, LateAt, Message, SendError, Session, kind,
};
pub use names::{MAX_NAME_LEN, NameError};
pub(crate) use names::{is_name, scoped};
pub use tenant::{SYSTEM_TENANT, TenantId, TenantStats};
pub use upgrade::{UpgradeError, UpgradeReport, Upgraded};

use tenant::Tenant;

use crate::config::{Limits, NodeConfig, TenantConfig};
use crate::harbor::Harbor;
use crate::wasm::{ModuleError, WasmRuntime};

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
    /// `running` (in a dispatch), `ready` (messages not picked up yet) or `idle`.
    pub state: &'static str,
}

/// A service's entry in the address table.
pub(crate) struct ServiceHandle {
    pub address: Address,
    /// The module it runs; "host" for a host [`Client`].
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
    watch: Mutex<Watch>,
}

/// What changes over a service's life and must be read once at its end.
#[derive(Default)]
struct Watch {
    monitors: Vec<Address>,
    names: Vec<String>,
    /// Multicast channels it is subscribed to.
    channels: Vec<u32>,
    /// Cluster groups it joined.
    groups: Vec<String>,
    dead: bool,
}

impl ServiceHandle {
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

    fn is_host_endpoint(&self) -> bool {
        !self.guest
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the console shows of it.
    fn info(&self) -> ServiceInfo {
        let u = &self.usage;
        let state = if u.running.load(Ordering::Relaxed) {
            "running"
        } else if self.mailbox.ready.load(Ordering::Relaxed) {
            "ready"
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
            state,
        }
    }
}

/// The shared core of one node.
pub(crate) struct Kernel {
    pub harbor: HarborId,
    pub limits: Limits,
    pub wasm: WasmRuntime,
    pub started: Instant,
    /// The clock services' CPU time is read from.
    cpu_clock: quanta::Clock,
    services: papaya::HashMap<u32, Arc<ServiceHandle>>,
    next_local: AtomicU32,
    /// Live wasm services (host clients not counted).
    live: AtomicUsize,
    /// Services ended, by `StopReason::index`.
    pub stops: [std::sync::atomic::AtomicU64; crate::wasm::StopReason::ALL.len()],
    /// Answers dropped because their session had ended, by [`LateAt::index`].
    late_answers: [std::sync::atomic::AtomicU64; LateAt::ALL.len()],
    /// Names local to this node, each tenant's under its own key (see [`scoped`]).
    names: Mutex<HashMap<String, Address>>,
    /// The tenants of this node, `system` among them.
    tenants: papaya::HashMap<TenantId, Arc<Tenant>>,
    /// The tenant of host endpoints, which take messages of every tenant.
    pub host_tenant: Arc<Tenant>,
    timers: timer::Timers,
    /// The link to the other nodes, on a harbor node.
    pub remote: OnceLock<Arc<Harbor>>,
    /// The cluster side, on a node in a cluster.
    pub cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    /// Multicast channels made here, and subscribers of others'.
    pub multicast: crate::multicast::Multicast,
    /// Where the control listener is bound, when the node has one.
    pub control: OnceLock<std::net::SocketAddr>,
    /// Where `/metrics` is served, when the node serves it.
    pub metrics: OnceLock<std::net::SocketAddr>,
    pub sched: Arc<sched::Scheduler>,
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

    fn with_service<R>(&self, address: Address, f: impl FnOnce(&ServiceHandle) -> R) -> Option<R> {
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

    /// Enqueues `message` for `dest`.
    ///
    /// # Errors
    /// `UnknownAddress` when no such service is alive here; `Overloaded`
    /// when its mailbox is at its limit.
    pub fn deliver(&self, dest: Address, message: Message) -> Result<(), SendError> {
        if dest.harbor() != self.harbor
            && let Some(harbor) = self.remote.get()
        {
            return harbor.forward(dest, message);
        }
        self.with_service(dest, |handle| {
            if handle.tenant.id != message.tenant
                && message.tenant != TenantId::HOST
                && handle.tenant.id != TenantId::HOST
                && !self.through_grant(handle, &message)
            {
                // Exactly what an unknown address answers: no oracle.
                return Err(SendError::UnknownAddress(dest));
            }
            self.enqueue(handle, message)
        })
        .unwrap_or(Err(SendError::UnknownAddress(dest)))
    }

    /// Whether `message`, from another tenant than the target's, is a
    /// request through a grant: the sender's tenant may call an entry that
    /// the target's tenant exports, and that entry names the target now.
    fn through_grant(&self, target: &ServiceHandle, message: &Message) -> bool {
        if message.kind != kind::REQUEST {
            return false;
        }
        let Some(caller) = self.tenant(message.tenant) else {
            return false;
        };
        let owner = &target.tenant;
        let granted = caller.grants.iter().any(|(t, entry)| {
            *t == owner.id
                && owner
                    .exports
                    .get(entry)
                    .is_some_and(|name| self.query_name(owner.id, name) == Some(target.address))
        });
        if granted {
            caller.counters.grant_calls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                from = %message.source,
                to = %target.address,
                caller = %caller.name,
                owner = %owner.name,
                "call through a grant"
            );
        }
        granted
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

    /// Pushes `message` into the mailbox of the service behind `handle`.
    fn enqueue(&self, handle: &ServiceHandle, message: Message) -> Result<(), SendError> {
        let dest = handle.address;
        let mailbox = &handle.mailbox;
        let limit = handle.tenant.quotas.mailbox_limit;
        let len = mailbox.len.fetch_add(1, Ordering::Relaxed) + 1;
        if limit != 0 && len > limit {
            mailbox.len.fetch_sub(1, Ordering::Relaxed);
            handle.tenant.refused();
            return Err(SendError::Overloaded(dest));
        }
        if len > mailbox.peak.load(Ordering::Relaxed) {
            mailbox.peak.fetch_max(len, Ordering::Relaxed);
        }
        // Marked before the message is visible, so the service's pick-up,
        // which follows it, always clears the mark.
        let interrupt = len == 1 && self.sched.mark_ready(&mailbox.ready);
        if mailbox.tx.send(message).is_err() {
            mailbox.len.fetch_sub(1, Ordering::Relaxed);
            mailbox.picked_up(self);
            return Err(SendError::UnknownAddress(dest));
        }
        if interrupt {
            self.wasm.interrupt_running();
        }
        if mailbox.closed.load(Ordering::SeqCst) {
            // The service ended while this message went in: its end has
            // answered the message, and no one will clear the mark.
            mailbox.picked_up(self);
        }
        let warn_at = mailbox.warn_at.load(Ordering::Relaxed);
        if len >= warn_at
            && mailbox
                .warn_at
                .compare_exchange(warn_at, warn_at * 2, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(service = %dest, queued = len, "mailbox is growing");
        }
        Ok(())
    }

    /// Puts a new handle in the address table under a free local id.
    fn insert_service(
        &self,
        module: Arc<str>,
        tenant: Arc<Tenant>,
        guest: bool,
    ) -> (Arc<ServiceHandle>, mpsc::UnboundedReceiver<Message>) {
        let services = self.services.pin();
        loop {
            let local = self.next_local.fetch_add(1, Ordering::Relaxed) % Address::MAX_LOCAL + 1;
            if services.contains_key(&local) {
                continue;
            }
            let (mailbox, rx) = Mailbox::new();
            let handle = Arc::new(ServiceHandle {
                address: Address::new(local, self.harbor),
                module: module.clone(),
                tenant: tenant.clone(),
                usage: tenant::Usage::default(),
                started: Instant::now(),
                mailbox,
                killed: AtomicBool::new(false),
                guest,
                upgrade: Mutex::new(None),
                upgrade_pending: AtomicBool::new(false),
                watch: Mutex::new(Watch::default()),
            });
            if services.try_insert(local, handle.clone()).is_ok() {
                return (handle, rx);
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
        let (monitors, names, channels, groups) = {
            let mut w = handle.watch();
            w.dead = true;
            (
                std::mem::take(&mut w.monitors),
                std::mem::take(&mut w.names),
                std::mem::take(&mut w.channels),
                std::mem::take(&mut w.groups),
            )
        };
        if let Some(cluster) = self.cluster.get() {
            for group in groups {
                cluster.leave_group(handle.tenant.id, &group, handle.address);
            }
        }
        for channel in channels {
            self.multicast
                .drop_subscriber(handle.tenant.id, channel, handle.address);
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

    /// Starts a service; `ready` hears when its `init` has returned.
    pub fn spawn_detached(
        self: &Arc<Self>,
        tenant: Arc<Tenant>,
        module: String,
        args: Vec<u8>,
        ready: Ready,
    ) {
        let kernel = self.clone();
        self.tasks
            .spawn(async move { kernel.spawn(tenant, module, args, ready).await });
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
        let module = match self.wasm.module(&tenant, &module).await {
            Ok(m) => m,
            Err(e) => {
                self.service_gone(&tenant);
                return ready.fail(&self, e.into());
            }
        };
        let (handle, rx) = self.insert_service(module.name.clone(), tenant, true);
        if self.shutdown.is_cancelled() || handle.tenant.removed.load(Ordering::Acquire) {
            // Shutdown's sweep may have missed it: it went in after the sweep.
            handle.killed.store(true, Ordering::Release);
            handle.mailbox.wake(handle.address);
        }
        service::run(self, handle, rx, module, args, ready).await;
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

    /// Records that `service` is subscribed to `channel`, so its end
    /// unsubscribes it.
    pub fn remember_channel(&self, service: Address, channel: u32) {
        self.with_service(service, |h| {
            let mut w = h.watch();
            if !w.channels.contains(&channel) {
                w.channels.push(channel);
            }
        });
    }

    /// Records that `service` (of `tenant`) joined `group`, so its end
    /// makes it leave; false when it has ended or is another tenant's.
    pub(crate) fn remember_group(&self, service: Address, tenant: TenantId, group: &str) -> bool {
        self.with_service(service, |h| {
            let mut w = h.watch();
            if w.dead || h.tenant.id != tenant {
                return false;
            }
            if !w.groups.iter().any(|g| g == group) {
                w.groups.push(group.to_string());
            }
            true
        })
        .unwrap_or(false)
    }

    /// Forgets that `service` is in `group`.
    pub(crate) fn forget_group(&self, service: Address, group: &str) {
        self.with_service(service, |h| h.watch().groups.retain(|g| g != group));
    }

    /// Forgets that `service` is subscribed to `channel`.
    pub fn forget_channel(&self, service: Address, channel: u32) {
        self.with_service(service, |h| h.watch().channels.retain(|&c| c != channel));
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
    /// from now, unless its answer comes first (then the service drops the
    /// error: its session has ended).
    pub fn expire_call(&self, dest: Address, session: Session, ms: u32, trace: u64) {
        self.timers.start(
            tokio::time::Instant::now() + Duration::from_millis(ms.into()),
            dest,
            session,
            trace,
            Some(ms),
        );
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

/// A running node: its services, names and timers.
///
/// Cloning a `Node` gives another handle to the same node.
#[derive(Clone)]
pub struct Node {
    kernel: Arc<Kernel>,
}

impl Node {
    /// Starts a node (without its bootstrap service) on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Errors
    /// When the wasm engine cannot be built for these limits.
    pub fn start(config: &NodeConfig) -> Result<Node, NodeError> {
        if config.harbor.is_some()
            || config.cluster.is_some()
            || config.control.is_some()
            || config.metrics.is_some()
        {
            return Err(NodeError::Harbor(
                "a harbor, cluster, control or metrics node starts with Node::launch".into(),
            ));
        }
        Self::build(config)
    }

    /// Starts a node, and on a harbor node binds its listeners, starts the
    /// master when `standalone`, and joins the harbor before returning.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Errors
    /// When the wasm engine cannot be built, a listener cannot be bound, or
    /// the master refuses the join (its reason names the id and holder).
    pub async fn launch(config: &NodeConfig) -> Result<Node, NodeError> {
        let node = Self::build(config)?;
        if let Some(h) = &config.harbor {
            match Harbor::start(&node.kernel, h).await {
                Ok(harbor) => {
                    let _ = node.kernel.remote.set(harbor);
                }
                Err(e) => {
                    node.shutdown().await;
                    return Err(NodeError::Harbor(e.to_string()));
                }
            }
        }
        if let Some(c) = &config.control {
            match crate::control::start(&node, c).await {
                Ok(bound) => {
                    let _ = node.kernel.control.set(bound);
                }
                Err(e) => {
                    node.shutdown().await;
                    return Err(NodeError::Control(format!("control {}: {e}", c.address)));
                }
            }
        }
        if let Some(m) = &config.metrics {
            match crate::metrics::start(&node, m).await {
                Ok(bound) => {
                    let _ = node.kernel.metrics.set(bound);
                }
                Err(e) => {
                    node.shutdown().await;
                    return Err(NodeError::Control(format!("metrics {}: {e}", m.address)));
                }
            }
        }
        if let Some(c) = &config.cluster {
            match crate::cluster::Cluster::start(&node.kernel, c).await {
                Ok(cluster) => {
                    let _ = node.kernel.cluster.set(cluster);
                }
                Err(e) => {
                    node.shutdown().await;
                    return Err(NodeError::Cluster(e));
                }
            }
        }
        Ok(node)
    }

    fn build(config: &NodeConfig) -> Result<Node, NodeError> {
        let limits = config.limits.resolved();
        let wasm = WasmRuntime::new(&limits, config.cache_dir.clone().or_else(default_cache_dir))
            .map_err(|e| NodeError::Engine(format!("{e:#}")))?;
        let tenants = papaya::HashMap::new();
        {
            let table = tenants.pin();
            table.insert(TenantId::SYSTEM, Arc::new(Tenant::system(config, &limits)));
            for t in &config.tenants {
                let tenant = Tenant::new(t, &limits);
                check_tenant_id(&tenant, &table)?;
                table.insert(tenant.id, Arc::new(tenant));
            }
        }
        let (timers, timer_rx) = timer::Timers::new();
        let harbor = HarborId(config.harbor.as_ref().map_or(0, |h| h.id));
        let kernel = Arc::new_cyclic(|me| Kernel {
            harbor,
            multicast: crate::multicast::Multicast::new(me.clone(), harbor),
            host_tenant: Arc::new(Tenant::host(&limits)),
            limits,
            wasm,
            started: Instant::now(),
            cpu_clock: quanta::Clock::new(),
            services: papaya::HashMap::new(),
            next_local: AtomicU32::new(0),
            live: AtomicUsize::new(0),
            names: Mutex::new(HashMap::new()),
            tenants,
            timers,
            remote: OnceLock::new(),
            cluster: OnceLock::new(),
            control: OnceLock::new(),
            metrics: OnceLock::new(),
            stops: Default::default(),
            late_answers: Default::default(),
            sched: Arc::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        });
        let timer_task = timer::run(Arc::downgrade(&kernel), timer_rx, kernel.shutdown.clone());
        kernel.tasks.spawn(timer_task);
        if let Some(fan_out) = kernel.multicast.fan_out_task() {
            let stop = kernel.shutdown.clone();
            kernel.tasks.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = fan_out => {}
                }
            });
        }
        Ok(Node { kernel })
    }

    /// Starts a service of `module` and waits until its `init` returned.
    ///
    /// # Errors
    /// [`SpawnError`] naming the module and what went wrong.
    pub async fn spawn(&self, module: &str, args: &[u8]) -> Result<Address, SpawnError> {
        self.spawn_in(SYSTEM_TENANT, module, args).await
    }

    /// Starts a service of `tenant`'s `module` and waits until its `init` returned.
    ///
    /// # Errors
    /// [`SpawnError`] naming the module (or tenant) and what went wrong.
    pub async fn spawn_in(
        &self,
        tenant: &str,
        module: &str,
        args: &[u8],
    ) -> Result<Address, SpawnError> {
        let t = self
            .kernel
            .tenant_named(tenant)
            .ok_or_else(|| SpawnError::NoTenant(tenant.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.kernel
            .spawn_detached(t, module.to_string(), args.to_vec(), Ready::Host(tx));
        rx.await.unwrap_or(Err(SpawnError::Stopped))
    }

    /// A host endpoint of the `system` tenant with its own address, to call
    /// and send to services.
    pub fn client(&self) -> Client {
        let system = self
            .kernel
            .tenant(TenantId::SYSTEM)
            .unwrap_or_else(|| self.kernel.host_tenant.clone());
        Client::new(self.kernel.clone(), system)
    }

    /// A host endpoint that calls and sends as a service of `tenant` would
    /// (and sees only that tenant); `None` if there is no such tenant.
    pub fn client_in(&self, tenant: &str) -> Option<Client> {
        let t = self.kernel.tenant_named(tenant)?;
        Some(Client::new(self.kernel.clone(), t))
    }

    /// Stops a service of any tenant; false if there is no such service.
    pub fn kill(&self, address: Address) -> bool {
        self.kernel.kill(TenantId::HOST, address)
    }

    /// The address holding `name` in the `system` tenant.
    pub fn query(&self, name: &str) -> Option<Address> {
        self.kernel.query_name(TenantId::SYSTEM, name)
    }

    /// The address holding `name` in `tenant` (`other/entry` for a granted entry).
    pub fn query_in(&self, tenant: &str, name: &str) -> Option<Address> {
        let t = self.kernel.tenant_named(tenant)?;
        self.kernel.resolve(t.id, name)
    }

    /// Adds a tenant to the running node and starts its bootstrap services,
    /// in order; returns their addresses.
    ///
    /// # Errors
    /// When a tenant of that name (or id) exists, or a bootstrap service
    /// fails to start (the tenant stays, with the services that started).
    pub async fn apply_tenant(&self, config: &TenantConfig) -> Result<Vec<Address>, TenantError> {
        let tenant = Tenant::new(config, &self.kernel.limits);
        {
            let table = self.kernel.tenants.pin();
            if table.contains_key(&tenant.id) {
                return Err(TenantError::Exists(config.name.clone()));
            }
            check_tenant_id(&tenant, &table).map_err(|e| TenantError::Invalid(e.to_string()))?;
            table.insert(tenant.id, Arc::new(tenant));
        }
        tracing::info!(tenant = %config.name, "tenant applied");
        self.start_tenant(&config.name).await
    }

    /// Starts the bootstrap services of a tenant declared in the node file.
    ///
    /// # Errors
    /// When there is no such tenant or one of them fails to start.
    pub async fn start_tenant(&self, name: &str) -> Result<Vec<Address>, TenantError> {
        let tenant = self
            .kernel
            .tenant_named(name)
            .ok_or_else(|| TenantError::NoSuchTenant(name.to_string()))?;
        let mut started = Vec::new();
        for b in &tenant.bootstrap {
            let address = self
                .spawn_in(name, &b.module, b.args.as_bytes())
                .await
                .map_err(|e| TenantError::Bootstrap(name.to_string(), e))?;
            started.push(address);
        }
        Ok(started)
    }

    /// Removes a tenant: no new services, every one of its services is
    /// stopped (each session pending on them ends with an error), and its
    /// names and modules go. Returns once its last service has ended.
    ///
    /// # Errors
    /// When there is no such tenant, or it is `system`.
    pub async fn remove_tenant(&self, name: &str) -> Result<(), TenantError> {
        if name == SYSTEM_TENANT {
            return Err(TenantError::Invalid("`system` cannot be removed".into()));
        }
        let tenant = self
            .kernel
            .tenant_named(name)
            .ok_or_else(|| TenantError::NoSuchTenant(name.to_string()))?;
        tenant.removed.store(true, Ordering::Release);
        loop {
            let ended = tenant.all_ended.notified();
            let services: Vec<Address> = self
                .kernel
                .services
                .pin()
                .values()
                .filter(|h| h.tenant.id == tenant.id && &*h.module != "host")
                .map(|h| h.address)
                .collect();
            // Its proxies stop too (host clients stay, to hear how their
            // calls ended), but only services count.
            for a in services {
                self.kernel.kill(TenantId::HOST, a);
            }
            if tenant.counters.live.load(Ordering::Acquire) == 0 {
                break;
            }
            ended.await;
        }
        self.kernel.tenants.pin().remove(&tenant.id);
        self.kernel.wasm.forget_tenant(tenant.id);
        tracing::info!(tenant = %name, "tenant removed");
        Ok(())
    }

    /// Modules this node compiled (or loaded from its disk cache) so far:
    /// each module is made ready once, whatever the number of its instances.
    pub fn modules_compiled(&self) -> u64 {
        self.kernel.wasm.compiled()
    }

    /// Where this node serves `GET /metrics`, if it does.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.kernel.metrics.get().copied()
    }

    /// Services ended for the reason at `index` in `StopReason::ALL`.
    pub(crate) fn stops(&self, index: usize) -> u64 {
        self.kernel
            .stops
            .get(index)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Answers dropped at `at` because their session had already ended
    /// (a reply after a timeout or a node-down error), since start.
    pub fn late_answers(&self, at: LateAt) -> u64 {
        self.kernel.late_answers[at.index()].load(Ordering::Relaxed)
    }

    /// Where this node takes control commands, if it opened a control address.
    pub fn control_address(&self) -> Option<std::net::SocketAddr> {
        self.kernel.control.get().copied()
    }

    /// The node's limits (each tenant's quotas start from them).
    pub fn limits(&self) -> &Limits {
        &self.kernel.limits
    }

    /// The node's task tracker and shutdown token, for host tasks that must
    /// end with the node.
    pub(crate) fn task_tracker(&self) -> (TaskTracker, CancellationToken) {
        (self.kernel.tasks.clone(), self.kernel.shutdown.clone())
    }

    /// The name of the tenant of the service (or host endpoint) at `address`.
    pub fn tenant_of(&self, address: Address) -> Option<String> {
        self.kernel
            .with_service(address, |h| h.tenant.name.to_string())
    }

    /// Each tenant's accounting, `system` first, then by name.
    pub fn tenant_stats(&self) -> Vec<TenantStats> {
        let mut live: HashMap<TenantId, tenant::Usage> = HashMap::new();
        for h in self.kernel.services.pin().values() {
            live.entry(h.tenant.id).or_default().absorb(&h.usage);
        }
        let none = tenant::Usage::default();
        let mut list: Vec<TenantStats> = self
            .kernel
            .tenants
            .pin()
            .values()
            .map(|t| t.stats(live.get(&t.id).unwrap_or(&none)))
            .collect();
        list.sort_by(|a, b| {
            (a.name != SYSTEM_TENANT, &a.name).cmp(&(b.name != SYSTEM_TENANT, &b.name))
        });
        list
    }

    /// Live wasm services on this node.
    pub fn service_count(&self) -> usize {
        self.kernel.live.load(Ordering::Acquire)
    }

    /// Logs (target `skyhost::trace`, level info) each message the service
    /// at `address` takes and sends, and how long each batch took; false if
    /// there is no such service.
    pub fn trace(&self, address: Address, on: bool) -> bool {
        self.kernel
            .with_service(address, |h| h.usage.traced.store(on, Ordering::Relaxed))
            .is_some()
    }

    /// This node's harbor and cluster links, as `netstat` shows them.
    pub fn links(&self) -> Vec<crate::transport::LinkInfo> {
        let mut links = self
            .kernel
            .remote
            .get()
            .map(|h| h.links())
            .unwrap_or_default();
        if let Some(c) = self.kernel.cluster.get() {
            links.extend(c.links());
        }
        links
    }

    /// A snapshot of the service (or host endpoint) at `address`.
    pub fn service_info(&self, address: Address) -> Option<ServiceInfo> {
        self.kernel.with_service(address, ServiceHandle::info)
    }

    /// A snapshot of every service and host endpoint, in address order.
    pub fn service_infos(&self) -> Vec<ServiceInfo> {
        let mut list: Vec<ServiceInfo> = self
            .kernel
            .services
            .pin()
            .values()
            .map(|h| h.info())
            .collect();
        list.sort_by_key(|i| i.address);
        list
    }

    /// How long `target` takes to pick up a message the host sends it
    /// (answered by the runtime, not the guest, so it works on any service).
    ///
    /// # Errors
    /// `UnknownAddress` for no such service; `Timeout` when it did not pick
    /// the ping up within `timeout` (it is busy in a long dispatch, or its
    /// mailbox is long).
    pub async fn ping(&self, target: Address, timeout: Duration) -> Result<Duration, CallError> {
        let mut endpoint =
            endpoint::HostEndpoint::new(&self.kernel, "host", self.kernel.host_tenant.clone());
        let ping = Message {
            kind: kind::SYSTEM,
            source: endpoint.address(),
            session: 1,
            tenant: TenantId::HOST,
            payload: Default::default(),
            trace: 0,
        };
        let start = Instant::now();
        self.kernel.deliver(target, ping)?;
        let pong = async {
            while let Some(m) = endpoint.recv().await {
                if m.kind == kind::RESPONSE && m.session == 1 && m.source == target {
                    return Ok(start.elapsed());
                }
            }
            Err(CallError::NodeStopped)
        };
        tokio::time::timeout(timeout, pong)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    /// Every live service with the module it runs, in address order.
    pub fn services(&self) -> Vec<(Address, String)> {
        let services = self.kernel.services.pin();
        let mut list: Vec<(Address, String)> = services
            .values()
            .filter(|h| &*h.module != "host")
            .map(|h| (h.address, h.module.to_string()))
            .collect();
        list.sort();
        list
    }

    /// Services whose mailbox has messages their task has not picked up yet
    /// (a scheduling hint; 0 on an idle node).
    pub fn ready_services(&self) -> usize {
        self.kernel.sched.waiting()
    }

    /// Messages waiting in a service's mailbox, if it is alive.
    pub fn mailbox_len(&self, address: Address) -> Option<usize> {
        self.kernel.with_service(address, |h| h.mailbox.len())
    }

    /// This node's harbor id (0 for a single node).
    pub fn harbor_id(&self) -> HarborId {
        self.kernel.harbor
    }

    /// Where this harbor node accepts links from other nodes.
    pub fn harbor_listen(&self) -> Option<std::net::SocketAddr> {
        self.kernel.remote.get().map(|h| h.listen)
    }

    /// The master this harbor node joined (the bound address when it runs
    /// the master itself).
    pub fn master_address(&self) -> Option<String> {
        self.kernel.remote.get().map(|h| h.master_address.clone())
    }

    /// The harbor ids this node has a live link to, in order.
    pub fn connected(&self) -> Vec<u8> {
        self.kernel
            .remote
            .get()
            .map(|h| h.connected())
            .unwrap_or_default()
    }

    /// Whether this harbor node's link to the master is up.
    pub fn master_up(&self) -> bool {
        self.kernel.remote.get().is_some_and(|h| h.master_up())
    }

    /// Subscribers on this node of a multicast channel (0 for none).
    pub fn channel_subscribers(&self, channel: u32) -> usize {
        self.kernel
            .multicast
            .local_subscribers(TenantId::SYSTEM, channel)
    }

    /// Multicast copies dropped because a cluster node's queue was full
    /// (harbor nodes' count in [`dropped_to_down_nodes`](Self::dropped_to_down_nodes)).
    pub fn multicast_overflow(&self) -> u64 {
        self.kernel.multicast.overflow()
    }

    /// Where this cluster node accepts links from other nodes.
    pub fn cluster_listening(&self) -> Vec<std::net::SocketAddr> {
        self.kernel
            .cluster
            .get()
            .map(|c| c.listening())
            .unwrap_or_default()
    }

    /// The cluster table now in force (from the cluster file, a reload or
    /// discovery), or `None` when the node is in no cluster.
    pub fn cluster_table(&self) -> Option<Arc<crate::cluster::ClusterTable>> {
        self.kernel.cluster.get().map(|c| c.table())
    }

    /// How many cluster nodes and group members the health checks hold
    /// out now, or `None` when the node is in no cluster.
    pub fn cluster_taken_out(&self) -> Option<(usize, usize)> {
        self.kernel.cluster.get().map(|c| c.taken_out())
    }

    /// Cluster sends from other nodes dropped because the service they
    /// named is not here, since start (0 outside a cluster).
    pub fn cluster_sends_undelivered(&self) -> u64 {
        self.kernel
            .cluster
            .get()
            .map_or(0, |c| c.sends_undelivered())
    }

    /// Replaces this node's cluster config with `text` (as `cluster.reload`).
    ///
    /// # Errors
    /// The config's error (line and key), or when the node is in no cluster.
    pub fn cluster_reload(&self, text: &str) -> Result<(), String> {
        let cluster = self
            .kernel
            .cluster
            .get()
            .ok_or("this node is not in a cluster")?;
        cluster.reload(text).map_err(|e| e.to_string())
    }

    /// Makes `target` known to other cluster nodes as `name`.
    pub fn cluster_register(&self, name: &str, target: Address) {
        if let Some(c) = self.kernel.cluster.get() {
            c.register(TenantId::SYSTEM, name, target);
        }
    }

    /// Messages dropped because their node was down, since start: those no
    /// sender could be told of (multicast copies, sends queued when a link
    /// dropped).
    pub fn dropped_to_down_nodes(&self) -> u64 {
        self.kernel.remote.get().map_or(0, |h| h.dropped())
    }

    /// Sends refused because their node was down, since start: each
    /// sender was answered with node-down.
    pub fn refused_to_down_nodes(&self) -> u64 {
        self.kernel.remote.get().map_or(0, |h| h.refused())
    }

    /// Stops every service (their pending sessions end with an error) and
    /// waits for every task of the node to finish.
    pub async fn shutdown(&self) {
        if let Some(harbor) = self.kernel.remote.get() {
            harbor.stop().await;
        }
        self.kernel.shutdown.cancel();
        let addresses: Vec<Address> = self
            .kernel
            .services
            .pin()
            .values()
            .map(|h| h.address)
            .collect();
        for a in addresses {
            self.kernel.kill(TenantId::HOST, a);
        }
        self.kernel.tasks.close();
        self.kernel.tasks.wait().await;
    }
}

/// The user cache directory for compiled modules, if one can be found.
fn default_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("skyhost").join("modules"))
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The wasm engine could not be built (for example the instance pool
    /// could not reserve its address space).
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The node could not join its harbor.
    #[error("{0}")]
    Harbor(String),
    /// The node's cluster side could not start (bad cluster config, listener).
    #[error("{0}")]
    Cluster(String),
    /// A tenant of the node file cannot be used.
    #[error("{0}")]
    Tenant(#[from] TenantError),
    /// The control address could not be opened.
    #[error("{0}")]
    Control(String),
}

/// Why a tenant could not be applied or removed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// A tenant of that name is on the node already.
    #[error("tenant `{0}` exists already")]
    Exists(String),
    /// No tenant of that name on the node.
    #[error("no tenant `{0}` on this node")]
    NoSuchTenant(String),
    /// The tenant cannot be used as declared.
    #[error("{0}")]
    Invalid(String),
    /// A bootstrap service failed to start.
    #[error("tenant `{0}`: bootstrap failed: {1}")]
    Bootstrap(String, SpawnError),
}

/// Refuses a tenant whose id is reserved or taken by another name.
fn check_tenant_id(
    tenant: &Tenant,
    table: &papaya::HashMapRef<
        '_,
        TenantId,
        Arc<Tenant>,
        std::collections::hash_map::RandomState,
        papaya::LocalGuard<'_>,
    >,
) -> Result<(), TenantError> {
    if tenant.id == TenantId::SYSTEM || tenant.id == TenantId::HOST {
        return Err(TenantError::Invalid(format!(
            "tenant `{}`: its id {} is reserved; choose another name",
            tenant.name, tenant.id
        )));
    }
    if let Some(other) = table.get(&tenant.id) {
        let message = if other.name == tenant.name {
            format!("tenant `{}` is declared twice", tenant.name)
        } else {
            format!(
                "tenant `{}` has the same id as `{}`; choose another name",
                tenant.name, other.name
            )
        };
        return Err(TenantError::Invalid(message));
    }
    Ok(())
}
