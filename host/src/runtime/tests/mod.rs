//! The core tested alone: a fake guest (a Rust closure per message) behind
//! the runtime's own ports, no wasm and no sockets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{
    Address, BoxFuture, CallError, ErrorCause, Guest, GuestFailure, GuestModule, Kernel, Loader,
    LocalClient, Message, ModuleError, Ready, ServiceHandle, SpawnError, StopReason, TenantId,
    kind,
};
use crate::config::NodeConfig;
use crate::runtime::tenant::Tenant;

/// What a fake service does with one message: answer it, end, or fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Act {
    /// Nothing (a request stays owed).
    Nothing,
    /// Answer the request with these bytes.
    Answer(Vec<u8>),
    /// Call `exit`: requests owed and queued get an `exited` error.
    Exit,
    /// Trap: the service stops, its callers get a `trapped` error.
    Trap,
    /// Run past the CPU budget: stopped as the wasm guest's epoch check
    /// stops it (a trap of class `CpuBudget`).
    OverBudget,
}

type Handler = Arc<dyn Fn(&Message) -> Act + Send + Sync>;

/// A module whose services run `handler` for each message.
struct FakeModule {
    name: Arc<str>,
    handler: Handler,
    /// What its services keep across instances.
    state: FakeState,
    /// Whether its `init` calls an import (and so is never a template).
    init_imports: bool,
    /// Instances made of it for a service, and made ahead of one.
    instances: std::sync::atomic::AtomicUsize,
    made_ahead: std::sync::atomic::AtomicUsize,
    templates: super::template::Templates,
}

/// What a fake module's services keep across instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FakeState {
    /// Nothing (`save-state` gives none): they never hibernate.
    None,
    /// A state, taken back by their next instance: they hibernate.
    Kept,
    /// A state their next instance refuses: a wake fails.
    Refused,
    /// A state, kept, whose saving takes [`SLOW_SAVE`] (longer than the
    /// sweeper's looks).
    Slow,
}

/// How long a [`FakeState::Slow`] guest takes to save its state.
pub(super) const SLOW_SAVE: Duration = Duration::from_millis(30);

impl GuestModule for FakeModule {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn run(
        self: Arc<Self>,
        kernel: Arc<Kernel>,
        handle: Arc<ServiceHandle>,
        args: Vec<u8>,
        ready: Ready,
    ) -> BoxFuture<'static, ()> {
        Box::pin(super::service::run::<FakeGuest>(
            kernel, handle, self, args, ready,
        ))
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    fn templates(&self) -> &super::template::Templates {
        &self.templates
    }
}

/// One fake service: the requests it owes, and whether it asked to end.
struct FakeGuest {
    kernel: Arc<Kernel>,
    address: Address,
    handler: Handler,
    owed: crate::runtime::guest::Owed,
    exit: bool,
    state: FakeState,
    /// Imports called since it was made.
    imports: usize,
    init_imports: bool,
}

impl FakeGuest {
    /// A new instance of `module`, at `address`.
    fn of(kernel: &Arc<Kernel>, address: Address, module: &FakeModule) -> Self {
        FakeGuest {
            kernel: kernel.clone(),
            address,
            handler: module.handler.clone(),
            owed: Default::default(),
            exit: false,
            state: module.state,
            imports: 0,
            init_imports: module.init_imports,
        }
    }
}

impl Guest for FakeGuest {
    type Module = FakeModule;

    async fn instantiate(
        kernel: &Arc<Kernel>,
        handle: &Arc<ServiceHandle>,
        module: &FakeModule,
    ) -> Result<Self, super::InstantiateError> {
        module
            .instances
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(FakeGuest::of(kernel, handle.address, module))
    }

    async fn instantiate_ahead(
        kernel: &Arc<Kernel>,
        _tenant: &Arc<Tenant>,
        module: &FakeModule,
    ) -> Result<Self, super::InstantiateError> {
        module
            .made_ahead
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(FakeGuest::of(
            kernel,
            Address::new(0, kernel.harbor),
            module,
        ))
    }

    fn bind(&mut self, handle: &Arc<ServiceHandle>) -> bool {
        self.address = handle.address;
        true
    }

    async fn init(&mut self, _args: &[u8]) -> Result<Result<(), String>, GuestFailure> {
        if self.init_imports {
            self.imports += 1;
        }
        Ok(Ok(()))
    }

    async fn dispatch(&mut self, batch: &mut Vec<Message>) -> Result<(), GuestFailure> {
        for m in batch.drain(..) {
            if m.wants_reply() {
                self.owe(m.source, m.session, m.tenant);
            }
            match (self.handler)(&m) {
                Act::Nothing => {}
                Act::Answer(bytes) => {
                    let tenant = self.owed.remove(&(m.source, m.session)).unwrap_or(m.tenant);
                    let answer = Message {
                        kind: kind::RESPONSE,
                        source: self.address,
                        session: m.session,
                        tenant,
                        payload: bytes.into(),
                        trace: 0,
                    };
                    let _ = self.kernel.deliver(m.source, answer);
                }
                Act::Exit => self.exit = true,
                Act::Trap => {
                    return Err(GuestFailure {
                        cause: ErrorCause::Trapped,
                        reason: "fake trap".into(),
                        class: StopReason::Trap,
                    });
                }
                Act::OverBudget => {
                    return Err(GuestFailure {
                        cause: ErrorCause::Trapped,
                        reason: "used more than its CPU budget".into(),
                        class: StopReason::CpuBudget,
                    });
                }
            }
        }
        Ok(())
    }

    async fn save_state(&mut self) -> Result<Option<Vec<u8>>, GuestFailure> {
        // A real guest call can be suspended part way, more than once:
        // whoever waits on the service, and what they do next, run meanwhile.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        if self.state == FakeState::Slow {
            tokio::time::sleep(SLOW_SAVE).await;
        }
        Ok((self.state != FakeState::None).then(|| b"state".to_vec()))
    }

    fn loads_state(&self) -> bool {
        self.state != FakeState::None
    }

    async fn load_state(&mut self, state: Vec<u8>) -> Result<Result<(), String>, GuestFailure> {
        let keeps = matches!(self.state, FakeState::Kept | FakeState::Slow);
        Ok(if keeps && state == b"state" {
            Ok(())
        } else {
            Err("no state".into())
        })
    }

    fn carry_out(&mut self) -> super::guest::Carried {
        super::guest::Carried {
            owed: std::mem::take(&mut self.owed),
            ..Default::default()
        }
    }

    fn carry_in(&mut self, carried: super::guest::Carried) {
        self.owed.extend(carried.owed);
    }

    fn owe(&mut self, caller: Address, session: u32, tenant: TenantId) {
        self.owed.insert((caller, session), tenant);
    }

    fn take_owed(&mut self) -> Vec<(Address, u32)> {
        self.owed.drain().map(|(k, _)| k).collect()
    }

    fn awaiting(&self) -> usize {
        0
    }

    fn awaits(&self, _session: u32) -> bool {
        false
    }

    fn exit_requested(&self) -> bool {
        self.exit
    }

    fn called_no_import(&self) -> bool {
        self.imports == 0
    }

    fn stays_awake(&self) -> bool {
        false
    }

    async fn snapshot(
        &mut self,
        _afterwards: crate::runtime::Afterwards,
    ) -> Result<crate::runtime::Snapshot, GuestFailure> {
        Ok(crate::runtime::Snapshot::Never)
    }

    async fn restore(&mut self, _image: &[u8]) -> Result<Result<(), String>, GuestFailure> {
        Ok(Err("a fake guest keeps no memory image".into()))
    }

    fn affordable_batch(&self) -> usize {
        usize::MAX
    }
}

/// A loader of fake modules by name.
#[derive(Default)]
pub(crate) struct FakeLoader {
    modules: HashMap<String, Arc<FakeModule>>,
}

impl FakeLoader {
    pub(crate) fn with(
        self,
        name: &str,
        handler: impl Fn(&Message) -> Act + Send + Sync + 'static,
    ) -> Self {
        self.module(name, Arc::new(handler), FakeState::None)
    }

    /// [`with`](Self::with), for services that keep `state` across instances.
    fn with_state(
        self,
        name: &str,
        state: FakeState,
        handler: impl Fn(&Message) -> Act + Send + Sync + 'static,
    ) -> Self {
        self.module(name, Arc::new(handler), state)
    }

    /// [`with_state`](Self::with_state), for services whose `init` calls
    /// an import.
    fn with_impure_init(
        self,
        name: &str,
        state: FakeState,
        handler: impl Fn(&Message) -> Act + Send + Sync + 'static,
    ) -> Self {
        let mut loader = self.module(name, Arc::new(handler), state);
        if let Some(m) = loader.modules.get_mut(name).and_then(Arc::get_mut) {
            m.init_imports = true;
        }
        loader
    }

    /// Module `name`, to count its instances after the loader is the core's.
    fn get(&self, name: &str) -> Arc<FakeModule> {
        self.modules[name].clone()
    }

    fn module(mut self, name: &str, handler: Handler, state: FakeState) -> Self {
        let module = FakeModule {
            name: name.into(),
            handler,
            state,
            init_imports: false,
            instances: Default::default(),
            made_ahead: Default::default(),
            templates: Default::default(),
        };
        self.modules.insert(name.to_string(), Arc::new(module));
        self
    }
}

impl Loader for FakeLoader {
    fn module<'a>(
        &'a self,
        _tenant: &'a Tenant,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn GuestModule>, ModuleError>> {
        let found = self.modules.get(name).cloned();
        Box::pin(async move {
            let module: Arc<dyn GuestModule> = found.ok_or_else(|| ModuleError::NotFound {
                module: name.to_string(),
                searched: Vec::new(),
            })?;
            Ok(module)
        })
    }

    fn compile<'a>(
        &'a self,
        name: &'a str,
        _path: std::path::PathBuf,
    ) -> BoxFuture<'a, Result<Arc<dyn GuestModule>, ModuleError>> {
        self.module(&TEST_TENANT, name)
    }

    fn install(&self, _tenant: TenantId, _name: &str, _module: Arc<dyn GuestModule>) {}

    fn has_module(&self, _tenant: TenantId, name: &str) -> bool {
        self.modules.contains_key(name)
    }

    fn forget_tenant(&self, _tenant: TenantId) {}

    fn interrupt_running(&self) {}

    fn compiled(&self) -> u64 {
        0
    }
}

static TEST_TENANT: std::sync::LazyLock<Tenant> =
    std::sync::LazyLock::new(|| Tenant::host(&crate::config::Limits::default()));

/// A node core running the fake modules of `loader`, as tokio tasks (the
/// workers have `core_on_workers`; the integration tests run on them).
pub(super) fn core(loader: FakeLoader) -> Arc<Kernel> {
    let config = NodeConfig {
        scheduler: crate::config::Scheduler::Tokio,
        ..NodeConfig::default()
    };
    let limits = config.limits.resolved();
    Kernel::new(&config, limits, Arc::new(loader)).expect("the core starts")
}

/// Spawns `module` in the system tenant and waits for its address.
async fn spawn(kernel: &Arc<Kernel>, module: &str) -> Result<Address, SpawnError> {
    let system = kernel.tenant(TenantId::SYSTEM).expect("system tenant");
    let (tx, rx) = oneshot::channel();
    kernel.spawn_detached(system, module.to_string(), Vec::new(), Ready::Host(tx));
    rx.await.unwrap_or(Err(SpawnError::Stopped))
}

fn client(kernel: &Arc<Kernel>) -> LocalClient {
    let system = kernel.tenant(TenantId::SYSTEM).expect("system tenant");
    LocalClient::new(kernel.clone(), system)
}

fn cause(result: Result<Vec<u8>, CallError>) -> Option<ErrorCause> {
    result.err().and_then(|e| e.cause())
}

const WITHIN: Duration = Duration::from_secs(5);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WITHIN, f)
        .await
        .expect("the core answered in time")
}

#[tokio::test]
async fn a_call_is_answered_and_an_unknown_module_refused() {
    let kernel = core(FakeLoader::default().with("echo", |m| Act::Answer(m.payload.to_vec())));
    let echo = within(spawn(&kernel, "echo")).await.expect("spawned");
    let c = client(&kernel);
    assert_eq!(
        within(c.call(echo, b"ping".to_vec())).await,
        Ok(b"ping".to_vec())
    );
    let missing = within(spawn(&kernel, "nope")).await;
    assert!(
        matches!(
            missing,
            Err(SpawnError::Module(ModuleError::NotFound { .. }))
        ),
        "{missing:?}"
    );
}

#[tokio::test]
async fn every_way_a_service_ends_ends_the_sessions_it_owes() {
    let kernel = core(
        FakeLoader::default()
            .with("exits", |m| {
                if m.payload.as_ref() == b"go" {
                    Act::Exit
                } else {
                    Act::Nothing
                }
            })
            .with("traps", |m| {
                if m.payload.as_ref() == b"go" {
                    Act::Trap
                } else {
                    Act::Nothing
                }
            })
            .with("spins", |m| {
                if m.payload.as_ref() == b"go" {
                    Act::OverBudget
                } else {
                    Act::Nothing
                }
            })
            .with("holds", |_| Act::Nothing),
    );
    let c = client(&kernel);
    // An address nothing lives at refuses at once.
    let nobody = Address::new(4242, super::HarborId(0));
    assert_eq!(
        c.start_call(nobody, Vec::new()).err(),
        Some(super::SendError::UnknownAddress(nobody))
    );
    for (module, expect) in [
        ("exits", ErrorCause::Exited),
        ("traps", ErrorCause::Trapped),
        ("spins", ErrorCause::Trapped),
    ] {
        let a = within(spawn(&kernel, module)).await.expect("spawned");
        let held = c.start_call(a, b"hold".to_vec()).expect("enqueued");
        let go = c.start_call(a, b"go".to_vec()).expect("enqueued");
        assert_eq!(
            cause(within(held).await),
            Some(expect),
            "{module}: the held request"
        );
        assert_eq!(
            cause(within(go).await),
            Some(expect),
            "{module}: the last request"
        );
        // Gone from the table: a new call is refused at once.
        assert!(
            c.start_call(a, Vec::new()).is_err(),
            "{module} still takes calls"
        );
    }
    let held = within(spawn(&kernel, "holds")).await.expect("spawned");
    let call = c.start_call(held, Vec::new()).expect("enqueued");
    assert!(kernel.kill(TenantId::HOST, held));
    assert_eq!(cause(within(call).await), Some(ErrorCause::Killed));
    let stops = |r: StopReason| kernel.stops[r.index()].load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (
            stops(StopReason::Exited),
            stops(StopReason::Trap),
            stops(StopReason::CpuBudget),
            stops(StopReason::Killed)
        ),
        (1, 1, 1, 1)
    );
}

#[tokio::test]
async fn a_monitor_hears_the_end_of_what_it_watches() {
    let kernel = core(FakeLoader::default().with("exits", |_| Act::Exit));
    let mut c = client(&kernel);
    let a = within(spawn(&kernel, "exits")).await.expect("spawned");
    c.monitor(a);
    c.send(a, kind::TEXT, 0, Vec::new()).expect("sent");
    let notice = within(c.recv()).await.expect("a notice");
    assert_eq!((notice.kind, notice.source), (kind::EXIT, a));
}

#[tokio::test(start_paused = true)]
async fn timers_fire_in_deadline_order_under_paused_time() {
    let kernel = core(FakeLoader::default());
    let mut c = client(&kernel);
    let now = tokio::time::Instant::now();
    for (session, ms) in [(1, 300), (2, 100), (3, 200)] {
        kernel.start_timer(now, c.address(), session, ms, 0);
    }
    let mut order = Vec::new();
    for _ in 0..3 {
        // The timers' answers reach the client as messages of its own.
        let m = within(c.recv()).await.expect("a timer");
        assert_eq!(m.kind, kind::RESPONSE);
        order.push(m.session);
    }
    assert_eq!(order, [2, 3, 1]);
}

/// A timer due before the one the timer task sleeps to wakes it; a
/// cancelled timer never fires; a call's deadline already past delivers its
/// expiry at once.
#[tokio::test(start_paused = true)]
async fn an_earlier_timer_wakes_the_task_and_a_cancelled_one_never_fires() {
    let kernel = core(FakeLoader::default());
    let mut c = client(&kernel);
    let start = tokio::time::Instant::now();
    kernel.start_timer(start, c.address(), 1, 500, 0);
    // The timer task now sleeps until 500 ms.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let cancelled = kernel
        .expire_call(start, c.address(), 2, 300, 0)
        .expect("a deadline ahead is pending");
    kernel.start_timer(start, c.address(), 3, 100, 0);
    assert_eq!(kernel.timers_pending(), 3);
    kernel.cancel_timer(cancelled);
    assert_eq!(kernel.timers_pending(), 2);
    let first = within(c.recv()).await.expect("a timer");
    assert_eq!(first.session, 3);
    assert_eq!(start.elapsed(), Duration::from_millis(100), "fired late");
    let second = within(c.recv()).await.expect("a timer");
    assert_eq!((second.kind, second.session), (kind::RESPONSE, 1));
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(kernel.timers_pending(), 0);

    // 500 ms in: a call asked at the start with 100 ms has expired.
    assert!(kernel.expire_call(start, c.address(), 4, 100, 0).is_none());
    let expiry = within(c.recv()).await.expect("the expiry");
    assert_eq!((expiry.kind, expiry.session), (kind::ERROR, 4));
    assert_eq!(start.elapsed(), Duration::from_millis(500), "not at once");
    assert_eq!(kernel.timers_pending(), 0);
}

/// A core with tenant `blue` (mailboxes of 2) beside `system`.
pub(crate) fn core_with_blue(loader: FakeLoader) -> Arc<Kernel> {
    let mut config = NodeConfig {
        scheduler: crate::config::Scheduler::Tokio,
        ..NodeConfig::default()
    };
    let mut blue = crate::config::TenantConfig::new("blue", Vec::new());
    blue.limits.mailbox_limit = Some(2);
    config.tenants.push(blue);
    let limits = config.limits.resolved();
    Kernel::new(&config, limits, Arc::new(loader)).expect("the core starts")
}

pub(crate) async fn spawn_in(kernel: &Arc<Kernel>, tenant: &str, module: &str) -> Address {
    let t = kernel.tenant_named(tenant).expect("tenant");
    let (tx, rx) = oneshot::channel();
    kernel.spawn_detached(t, module.to_string(), Vec::new(), Ready::Host(tx));
    within(rx).await.expect("answered").expect("spawned")
}

/// One thread: the sends go in before the service can take any.
#[tokio::test]
async fn a_full_mailbox_refuses_with_overloaded() {
    let kernel = core_with_blue(FakeLoader::default().with("holds", |_| Act::Nothing));
    let held = spawn_in(&kernel, "blue", "holds").await;
    let blue = LocalClient::new(kernel.clone(), kernel.tenant_named("blue").expect("blue"));
    let send = || blue.send(held, kind::TEXT, 0, Vec::new());
    assert_eq!((send(), send()), (Ok(()), Ok(())));
    assert_eq!(send(), Err(super::SendError::Overloaded(held)));
    assert!(
        kernel
            .tenant_named("blue")
            .expect("blue")
            .counters
            .refusals
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

/// A run (`send-batch`'s messages for one target) keeps `deliver`'s checks
/// per message: the ones past the mailbox's limit and every one across a
/// tenant boundary are refused, by their place in the run.
#[tokio::test]
async fn a_run_is_refused_where_its_messages_would_be() {
    let kernel = core_with_blue(FakeLoader::default().with("holds", |_| Act::Nothing));
    let held = spawn_in(&kernel, "blue", "holds").await;
    let system = spawn_in(&kernel, "system", "holds").await;
    let blue = kernel.tenant_named("blue").expect("blue").id;
    let run = |n: usize| -> Vec<Message> {
        (0..n)
            .map(|i| Message {
                kind: kind::TEXT,
                source: Address(0),
                session: 0,
                tenant: blue,
                payload: vec![u8::try_from(i).unwrap_or(0)].into(),
                trace: 0,
            })
            .collect()
    };
    let mut three = run(3);
    assert_eq!(
        kernel.deliver_run(held, &mut three),
        Err((2, super::SendError::Overloaded(held)))
    );
    assert!(three.is_empty());
    assert_eq!(
        kernel.with_service(held, |h| h.mailbox.len()),
        Some(2),
        "the two before the limit went in"
    );
    let mut more = run(1);
    assert_eq!(
        kernel.deliver_run(held, &mut more),
        Err((0, super::SendError::Overloaded(held)))
    );
    let mut across = run(2);
    assert_eq!(
        kernel.deliver_run(system, &mut across),
        Err((0, super::SendError::UnknownAddress(system))),
        "another tenant's service looks unknown"
    );
    let unknown = Address(0x00ff_ff00);
    assert_eq!(
        kernel.deliver_run(unknown, &mut run(1)),
        Err((0, super::SendError::UnknownAddress(unknown)))
    );
}

#[tokio::test]
async fn tenants_are_sealed_and_names_are_per_tenant_and_go_with_their_service() {
    let kernel = core_with_blue(FakeLoader::default().with("holds", |_| Act::Nothing));
    let mine = spawn_in(&kernel, "system", "holds").await;
    let blue = LocalClient::new(kernel.clone(), kernel.tenant_named("blue").expect("blue"));
    // Another tenant's service looks exactly like an unknown address.
    assert_eq!(
        blue.send(mine, kind::TEXT, 0, Vec::new()),
        Err(super::SendError::UnknownAddress(mine))
    );
    let registered = kernel.with_service(mine, |h| kernel.register_name(".svc", h));
    assert_eq!(registered, Some(Ok(())));
    assert_eq!(kernel.query_name(TenantId::SYSTEM, ".svc"), Some(mine));
    let blue_id = kernel.tenant_named("blue").expect("blue").id;
    assert_eq!(kernel.query_name(blue_id, ".svc"), None);
    // The name goes when its service ends.
    let c = client(&kernel);
    let call = c.start_call(mine, Vec::new()).expect("enqueued");
    assert!(kernel.kill(TenantId::HOST, mine));
    assert_eq!(cause(within(call).await), Some(ErrorCause::Killed));
    assert_eq!(kernel.query_name(TenantId::SYSTEM, ".svc"), None);
}

#[tokio::test]
async fn exit_hooks_run_once_when_their_service_ends_unless_forgotten() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let kernel = core(FakeLoader::default().with("holds", |_| Act::Nothing));
    let a = within(spawn(&kernel, "holds")).await.expect("spawned");
    let released = Arc::new(AtomicUsize::new(0));
    let hook = |n: usize| -> super::ExitHook {
        let released = released.clone();
        Box::new(move || {
            released.fetch_add(n, Ordering::SeqCst);
        })
    };
    assert!(kernel.hold(a, None, "group:g".into(), hook(1)));
    assert!(
        !kernel.hold(a, Some(TenantId(7)), "channel:1".into(), hook(10)),
        "another tenant's"
    );
    assert!(kernel.hold(a, None, "channel:2".into(), hook(100)));
    assert!(
        kernel.hold(a, None, "group:g".into(), hook(1000)),
        "held again: the first stays"
    );
    kernel.forget_held(a, "channel:2");
    let c = client(&kernel);
    let call = c.start_call(a, Vec::new()).expect("enqueued");
    assert!(kernel.kill(TenantId::HOST, a));
    assert_eq!(cause(within(call).await), Some(ErrorCause::Killed));
    assert_eq!(released.load(Ordering::SeqCst), 1);
    assert!(
        !kernel.hold(a, None, "group:h".into(), hook(1)),
        "an ended service holds nothing"
    );
}

/// The other nodes of a harbor as the core sees them: what it forwards
/// is kept, global names live in a table here, and "the node goes down"
/// is a switch.
#[derive(Default)]
struct FakeRemote {
    down: std::sync::atomic::AtomicBool,
    forwarded: std::sync::Mutex<Vec<(Address, Message)>>,
    names: std::sync::Mutex<HashMap<String, Address>>,
    monitors: std::sync::Mutex<Vec<(Address, Address)>>,
    /// The core it serves, to answer waiters with.
    kernel: std::sync::OnceLock<std::sync::Weak<Kernel>>,
}

impl FakeRemote {
    fn answer(&self, waiter: super::Waiter, found: Result<Address, String>) {
        let Some(kernel) = self.kernel.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        match found {
            Ok(a) => waiter.respond(&kernel, a, a.0.to_le_bytes().to_vec()),
            Err(e) => waiter.fail(&kernel, ErrorCause::Service, &e),
        }
    }

    fn take_forwarded(&self) -> Vec<(Address, Message)> {
        std::mem::take(&mut *self.forwarded.lock().expect("forwarded"))
    }
}

impl super::Remote for FakeRemote {
    fn forward(&self, dest: Address, message: Message) -> Result<(), super::SendError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(super::SendError::NodeDown(dest));
        }
        self.forwarded
            .lock()
            .expect("forwarded")
            .push((dest, message));
        Ok(())
    }

    fn monitor(&self, _tenant: TenantId, watcher: Address, target: Address) {
        self.monitors
            .lock()
            .expect("monitors")
            .push((watcher, target));
    }

    fn demonitor(&self, watcher: Address, target: Address) {
        self.monitors
            .lock()
            .expect("monitors")
            .retain(|&m| m != (watcher, target));
    }

    fn register(&self, key: &str, address: Address) -> Result<(), super::GlobalNameError> {
        let mut names = self.names.lock().expect("names");
        match names.get(key) {
            Some(&holder) if holder != address => Err(super::GlobalNameError::Taken {
                name: key.to_string(),
                holder,
            }),
            _ => {
                names.insert(key.to_string(), address);
                Ok(())
            }
        }
    }

    fn register_confirmed(&self, key: &str, address: Address, waiter: super::Waiter) {
        let result = self.register(key, address).map(|()| address);
        self.answer(waiter, result.map_err(|e| e.to_string()));
    }

    fn unregister(&self, key: &str, address: Address) {
        let mut names = self.names.lock().expect("names");
        if names.get(key) == Some(&address) {
            names.remove(key);
        }
    }

    fn query(&self, key: &str) -> Option<Address> {
        self.names.lock().expect("names").get(key).copied()
    }

    fn queryname(self: Arc<Self>, key: &str, _timeout_ms: u32, waiter: super::Waiter) {
        let found = self
            .query(key)
            .ok_or_else(|| format!("no global name `{key}`"));
        self.answer(waiter, found);
    }
}

/// A core in a harbor whose other nodes are `remote`.
fn core_in_harbor(loader: FakeLoader, remote: &Arc<FakeRemote>) -> Arc<Kernel> {
    let kernel = core(loader);
    let port: Arc<dyn super::Remote> = remote.clone();
    assert!(kernel.remote.set(port).is_ok());
    assert!(remote.kernel.set(Arc::downgrade(&kernel)).is_ok());
    kernel
}

#[tokio::test]
async fn a_call_to_another_node_ends_once_node_down_or_answered_and_late_answers_count() {
    use std::sync::atomic::Ordering;
    let remote = Arc::new(FakeRemote::default());
    let kernel = core_in_harbor(FakeLoader::default(), &remote);
    let c = client(&kernel);
    let far = Address::new(5, super::HarborId(2));
    // Forwarded through the port, not looked up here.
    let pending = c.start_call(far, b"q".to_vec()).expect("forwarded");
    let (dest, request) = remote.take_forwarded().pop().expect("one message out");
    assert_eq!((dest, request.kind), (far, kind::REQUEST));
    // The node goes down: the link layer ends the call with node-down ...
    let down = Message::error(
        far,
        request.session,
        ErrorCause::NodeDown,
        "harbor 2 is down",
    );
    kernel.deliver(c.address(), down).expect("delivered");
    assert_eq!(cause(within(pending).await), Some(ErrorCause::NodeDown));
    // ... and its answer, arriving after, ends nothing and is counted.
    let late = Message {
        kind: kind::RESPONSE,
        source: far,
        session: request.session,
        tenant: TenantId::SYSTEM,
        payload: b"late".to_vec().into(),
        trace: 0,
    };
    kernel.deliver(c.address(), late).expect("delivered");
    let late_answers =
        || kernel.late_answers[super::LateAt::Service.index()].load(Ordering::SeqCst);
    within(async {
        while late_answers() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // While the port says the node is down, a call fails at once.
    remote.down.store(true, Ordering::SeqCst);
    assert_eq!(
        c.start_call(far, Vec::new()).err(),
        Some(super::SendError::NodeDown(far))
    );
    assert_eq!(late_answers(), 1);
}

#[tokio::test]
async fn global_names_and_remote_monitors_go_through_the_remote_port() {
    let remote = Arc::new(FakeRemote::default());
    let kernel = core_in_harbor(
        FakeLoader::default().with("holds", |_| Act::Nothing),
        &remote,
    );
    let a = within(spawn(&kernel, "holds")).await.expect("spawned");
    let registered = kernel.with_service(a, |h| kernel.register_name("svc", h));
    assert_eq!(registered, Some(Ok(())));
    assert_eq!(remote.query("svc"), Some(a), "global: held by the port");
    let c = client(&kernel);
    assert_eq!(within(c.queryname("svc", WITHIN)).await, Ok(a));
    assert_eq!(kernel.query_name(TenantId::SYSTEM, "svc"), Some(a));
    // A local name (a dot) stays in the node's own table.
    let local = kernel.with_service(a, |h| kernel.register_name(".here", h));
    assert_eq!(local, Some(Ok(())));
    assert_eq!(remote.query(".here"), None);
    // A name another node's service holds is refused with its holder.
    let far = Address::new(9, super::HarborId(3));
    use super::Remote as _;
    remote.register("other", far).expect("free");
    let taken = kernel.with_service(a, |h| kernel.register_name("other", h));
    assert!(
        matches!(taken, Some(Err(super::NameError::Taken { holder, .. })) if holder == far),
        "{taken:?}"
    );
    // Watching a service of another node is the port's to do.
    kernel.monitor(TenantId::SYSTEM, c.address(), far);
    assert_eq!(
        *remote.monitors.lock().expect("monitors"),
        [(c.address(), far)]
    );
    kernel.demonitor(c.address(), far);
    assert!(remote.monitors.lock().expect("monitors").is_empty());
    // The global name goes with its service, through the port.
    let call = c.start_call(a, Vec::new()).expect("enqueued");
    assert!(kernel.kill(TenantId::HOST, a));
    assert_eq!(cause(within(call).await), Some(ErrorCause::Killed));
    assert_eq!(remote.query("svc"), None);
    assert_eq!(kernel.query_name(TenantId::SYSTEM, ".here"), None);
}

/// A core whose services run on two of its own worker threads.
fn core_on_workers(loader: FakeLoader) -> Arc<Kernel> {
    let config = NodeConfig {
        scheduler: crate::config::Scheduler::Workers,
        threads: Some(2),
        ..NodeConfig::default()
    };
    let limits = config.limits.resolved();
    Kernel::new(&config, limits, Arc::new(loader)).expect("the core starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_node_s_own_workers_calls_are_answered_and_every_end_ends_its_sessions() {
    let kernel = core_on_workers(
        FakeLoader::default()
            .with("echo", |m| Act::Answer(m.payload.to_vec()))
            .with("traps", |m| {
                if m.payload.as_ref() == b"go" {
                    Act::Trap
                } else {
                    Act::Nothing
                }
            })
            .with("holds", |_| Act::Nothing),
    );
    let c = client(&kernel);
    let echo = within(spawn(&kernel, "echo")).await.expect("spawned");
    for i in 0..100u32 {
        let payload = i.to_le_bytes().to_vec();
        assert_eq!(within(c.call(echo, payload.clone())).await, Ok(payload));
    }
    let traps = within(spawn(&kernel, "traps")).await.expect("spawned");
    let held = c.start_call(traps, b"hold".to_vec()).expect("enqueued");
    let go = c.start_call(traps, b"go".to_vec()).expect("enqueued");
    assert_eq!(cause(within(held).await), Some(ErrorCause::Trapped));
    assert_eq!(cause(within(go).await), Some(ErrorCause::Trapped));
    // Killed with requests queued behind one it holds.
    let holds = within(spawn(&kernel, "holds")).await.expect("spawned");
    let calls: Vec<_> = (0..10)
        .map(|_| c.start_call(holds, Vec::new()).expect("enqueued"))
        .collect();
    assert!(kernel.kill(TenantId::HOST, holds));
    for call in calls {
        assert_eq!(cause(within(call).await), Some(ErrorCause::Killed));
    }
    // As the node shuts down: everything ends, then the workers stop.
    kernel.shutdown.cancel();
    kernel.kill_all();
    kernel.tasks.close();
    within(kernel.tasks.wait()).await;
    kernel.stop_workers();
}

mod lease;
mod rest;
mod tap;
