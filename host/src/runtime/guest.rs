//! The ports through which the runtime runs a service's code without
//! knowing what runs it (wasm components, through the wasm layer; a fake in
//! tests): a [`Loader`] finds a tenant's module by name, a [`GuestModule`]
//! runs a service of it, and a [`Guest`] is one instance as the service loop
//! drives it.
//!
//! The loop is generic over its `Guest` (`service::run::<G>`), so the hot
//! path (dispatch a batch, owe, size the next batch) is statically
//! dispatched; the one dynamic call is at spawn, where the loader's module
//! starts the loop for its own guest type.

use std::any::Any;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use super::template::Templates;
use super::tenant::Tenant;
use super::{Address, ErrorCause, Kernel, Message, Ready, ServiceHandle, TenantId};

/// A boxed future, for the ports' dynamic calls.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a module could not be made ready to run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModuleError {
    /// The name could escape the module paths or is empty.
    #[error("invalid module name `{0}`: use letters, digits, `-` and `_`")]
    InvalidName(String),
    /// No `<name>.wasm` in any module path.
    #[error("module `{module}` not found; searched {}", display_paths(searched))]
    NotFound {
        /// The module asked for.
        module: String,
        /// Every file that was tried.
        searched: Vec<PathBuf>,
    },
    /// The file could not be read.
    #[error("module `{module}`: reading {path}: {error}")]
    Read {
        /// The module asked for.
        module: String,
        /// Its file.
        path: PathBuf,
        /// What the OS said.
        error: String,
    },
    /// The file is not a valid component, or does not fit the `service` world.
    #[error("module `{module}` ({path}) cannot be used: {error}")]
    Invalid {
        /// The module asked for.
        module: String,
        /// Its file.
        path: PathBuf,
        /// What the loader said.
        error: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no module paths (set `module_paths` in the node file)".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a service ended, as the node's stop counters (`/metrics`) class it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// It called `exit`, or its mailbox closed.
    Exited,
    /// Someone killed it.
    Killed,
    /// Its instantiation or `init` failed.
    NotStarted,
    /// A wasm trap (unreachable, out-of-bounds access, stack overflow, ...).
    Trap,
    /// A message ran past the CPU budget.
    CpuBudget,
    /// Its linear memory hit its limit.
    MemoryLimit,
    /// Its tenant's total memory limit was reached.
    TenantMemory,
    /// Any other error from a guest call.
    Error,
}

impl StopReason {
    /// Every reason, in the order of [`StopReason::index`].
    pub const ALL: [StopReason; 8] = [
        StopReason::Exited,
        StopReason::Killed,
        StopReason::NotStarted,
        StopReason::Trap,
        StopReason::CpuBudget,
        StopReason::MemoryLimit,
        StopReason::TenantMemory,
        StopReason::Error,
    ];

    /// Its position in [`StopReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            StopReason::Exited => "exited",
            StopReason::Killed => "killed",
            StopReason::NotStarted => "not_started",
            StopReason::Trap => "trap",
            StopReason::CpuBudget => "cpu_budget",
            StopReason::MemoryLimit => "memory_limit",
            StopReason::TenantMemory => "tenant_memory",
            StopReason::Error => "error",
        }
    }
}

/// A guest call that failed: what its callers are told, and how the node
/// counts the stop.
#[derive(Debug, Clone)]
pub(crate) struct GuestFailure {
    /// The cause the sessions it leaves behind end with.
    pub cause: ErrorCause,
    /// A readable reason (a trap, a quota, a kill).
    pub reason: String,
    /// Its class for the node's stop counters.
    pub class: StopReason,
}

/// Finds modules by name and compiles new versions of them.
pub(crate) trait Loader: Send + Sync + 'static {
    /// `tenant`'s module `name`, made ready on first use and shared after.
    fn module<'a>(
        &'a self,
        tenant: &'a Tenant,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn GuestModule>, ModuleError>>;
    /// Makes the module at `path` ready as module `name` (not installed).
    fn compile<'a>(
        &'a self,
        name: &'a str,
        path: PathBuf,
    ) -> BoxFuture<'a, Result<Arc<dyn GuestModule>, ModuleError>>;
    /// Makes `module` what new spawns of `tenant`'s module `name` get.
    fn install(&self, tenant: TenantId, name: &str, module: Arc<dyn GuestModule>);
    /// Whether `tenant`'s module `name` has been made ready.
    fn has_module(&self, tenant: TenantId, name: &str) -> bool;
    /// Forgets `tenant`'s modules (it was removed).
    fn forget_tenant(&self, tenant: TenantId);
    /// Makes every running guest reach a preemption point now.
    fn interrupt_running(&self);
    /// Modules made ready since the node started.
    fn compiled(&self) -> u64;
}

/// One module: runs services of it.
pub(crate) trait GuestModule: Send + Sync + 'static {
    /// The name it is spawned by.
    fn name(&self) -> &Arc<str>;
    /// Runs the service behind `handle` from instantiation to its end (the
    /// service's task): `service::run` for this module's guest type.
    fn run(
        self: Arc<Self>,
        kernel: Arc<Kernel>,
        handle: Arc<ServiceHandle>,
        args: Vec<u8>,
        ready: Ready,
    ) -> BoxFuture<'static, ()>;
    /// Itself, to be taken back as its concrete type by an upgrade.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// The states its pure `init`s left, by args (template spawn).
    fn templates(&self) -> &Templates;
}

/// Why an instance could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum InstantiateError {
    /// Every instance slot of the node is taken (`resident_services`).
    #[error("{0}")]
    NoSlot(String),
    /// Anything else (the module does not link, a start function trapped).
    #[error("{0}")]
    Failed(String),
}

/// The requests a service owes an answer, with each caller's tenant: one
/// insert and one removal per call it takes, keyed by numbers it was given
/// (no seeded hash needed).
pub(crate) type Owed = std::collections::HashMap<
    (Address, u32),
    TenantId,
    std::hash::BuildHasherDefault<fnv::FnvHasher>,
>;

/// What outlives a guest's instance, for the service's next one (an
/// upgrade's, or a wake from hibernation): the requests it owes (with each
/// caller's tenant), its session counters (the host range and the guest
/// range, so numbers are not reused), the sessions it waits on and the
/// timers that end its timed calls among them.
#[derive(Debug, Default)]
pub(crate) struct Carried {
    pub owed: Owed,
    pub next_session: u32,
    pub next_guest_session: u32,
    pub awaiting: Vec<u32>,
    pub expiring: Vec<(u32, super::TimerKey)>,
}

impl Carried {
    /// The requests owed: what a service that ends with this carried part
    /// must answer.
    pub fn into_owed(self) -> Vec<(Address, u32)> {
        self.owed.into_keys().collect()
    }
}

/// What a guest's memory snapshot came to (hibernation without a `state`).
#[derive(Debug)]
pub(crate) enum Snapshot {
    /// Its memory, as an image its module's next instance can take.
    Image(Vec<u8>),
    /// It holds something outside its memory (a WASI resource) now.
    NotNow,
    /// Its module cannot hand its memory out.
    Never,
}

/// What becomes of an instance after [`Guest::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Afterwards {
    /// It is dropped (hibernation): taking the image may leave it unfit to
    /// run.
    Dropped,
    /// It goes on serving (a template): it is left as it was.
    Serves,
}

/// One instance of a module, as the service loop drives it.
pub(crate) trait Guest: Send + Sized + 'static {
    /// The module type it is an instance of.
    type Module: GuestModule;
    /// An instance of `module` for the service behind `handle`.
    fn instantiate(
        kernel: &Arc<Kernel>,
        handle: &Arc<ServiceHandle>,
        module: &Self::Module,
    ) -> impl Future<Output = Result<Self, InstantiateError>> + Send;
    /// An instance of `module` made ahead for `tenant`, bound to no service
    /// until [`Guest::bind`] (see `ahead.rs`): it must have called no import.
    fn instantiate_ahead(
        kernel: &Arc<Kernel>,
        tenant: &Arc<Tenant>,
        module: &Self::Module,
    ) -> impl Future<Output = Result<Self, InstantiateError>> + Send;
    /// Makes an instance made ahead the instance of the service behind
    /// `handle` (its address, its usage, its memory counted in its
    /// tenant's); false when its tenant's memory cannot take it.
    fn bind(&mut self, handle: &Arc<ServiceHandle>) -> bool;
    /// Runs its `init`.
    fn init(
        &mut self,
        args: &[u8],
    ) -> impl Future<Output = Result<Result<(), String>, GuestFailure>> + Send;
    /// Hands it a batch; requests in it are owed from then on.
    fn dispatch(
        &mut self,
        batch: &mut Vec<Message>,
    ) -> impl Future<Output = Result<(), GuestFailure>> + Send;
    /// The state it hands to its next version, if it has one to hand.
    fn save_state(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>, GuestFailure>> + Send;
    /// Whether it can take over a saved state.
    fn loads_state(&self) -> bool;
    /// Takes over the state its previous version saved.
    fn load_state(
        &mut self,
        state: Vec<u8>,
    ) -> impl Future<Output = Result<Result<(), String>, GuestFailure>> + Send;
    /// Its memory as an image, for a service with no state of its own to
    /// hibernate or to be a template (see [`Snapshot`]), the instance
    /// dropped or serving `afterwards`.
    fn snapshot(
        &mut self,
        afterwards: Afterwards,
    ) -> impl Future<Output = Result<Snapshot, GuestFailure>> + Send;
    /// Takes over the memory an earlier instance's [`Guest::snapshot`] kept.
    fn restore(
        &mut self,
        image: &[u8],
    ) -> impl Future<Output = Result<Result<(), String>, GuestFailure>> + Send;
    /// Takes what outlives an instance out of it, for the service's next
    /// instance (see [`Carried`]).
    fn carry_out(&mut self) -> Carried;
    /// Takes over what an earlier instance of the service carried out.
    fn carry_in(&mut self, carried: Carried);
    /// Records a request taken and not dispatched: it is owed an answer.
    fn owe(&mut self, caller: Address, session: u32, tenant: TenantId);
    /// The requests it owes, taken.
    fn take_owed(&mut self) -> Vec<(Address, u32)>;
    /// Sessions it opened and still waits on.
    fn awaiting(&self) -> usize;
    /// Whether it waits on `session`.
    fn awaits(&self, session: u32) -> bool;
    /// Whether it asked to end.
    fn exit_requested(&self) -> bool;
    /// Whether it holds what only this instance can keep (the guest said so):
    /// it must not hibernate.
    fn stays_awake(&self) -> bool;
    /// Whether it has called no import since it was made: what it did
    /// depended on its module and inputs alone, and nothing outside it saw.
    fn called_no_import(&self) -> bool;
    /// How many messages its next batch may hold to fit its CPU budget.
    fn affordable_batch(&self) -> usize;
}
