//! Wasm hosting: one `Engine` per node, each module compiled once (and cached
//! on disk by its hash), kept as an `InstancePre`, and instantiated per
//! service into its own `Store` from the pooling allocator.
//!
//! What each type is for:
//! - `WasmRuntime`: the engine, the linker with every host import, the
//!   module table and the epoch ticker that drives time slices.
//! - `Module`: one compiled module, ready to instantiate, and which of
//!   the two dispatch ABIs it speaks (`exports`: `list<message>` or one
//!   buffer per batch, `batch`).
//! - `Instance`: one service's `Store` and its bound exports. The runtime
//!   owns the service; an `Instance` is the replaceable part of it.
//! - `state::ServiceState`: the store's data: the host imports' view of
//!   the service (address, sessions it owes, limits).

mod batch;
pub mod bindings;
mod cache;
mod exports;
mod grants;
mod handoff;
mod host;
mod memory;
pub(crate) mod outbox;
mod parts;
pub(crate) mod snapshot;
pub(crate) mod state;
mod stdio;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::config::Limits;
use crate::runtime::tenant::Tenant;
use crate::runtime::{
    Address, Afterwards, BoxFuture, Carried, Guest, GuestFailure, GuestModule, InstantiateError,
    Kernel, Loader, Message, Ready, ServiceHandle, Snapshot, TenantId, kind,
};
/// The WIT `message` record with a shared payload: a multicast payload is
/// one buffer per node and is copied only into each guest's memory, never
/// into a per-subscriber buffer first (the generated bindings would take an
/// owned `Vec<u8>`).
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
struct WitMessage {
    kind: u8,
    source: u32,
    session: u32,
    payload: bytes::Bytes,
}

/// The `dispatch` export's Rust signature (WIT world `service`).
type DispatchParams<'a> = (&'a [WitMessage],);
/// The `dispatch-batch` export's Rust signature (WIT world `batch-service`).
type DispatchBatchParams<'a> = (&'a [u8],);
use bindings::Service;
use exports::{Abi, Exports};
use state::ServiceState;

pub(crate) use parts::Parts;
pub use state::Stop;

pub use crate::runtime::ModuleError;

/// The wasm side of a node.
pub(crate) struct WasmRuntime {
    engine: Engine,
    linker: Linker<ServiceState>,
    cache_dir: Option<PathBuf>,
    /// Each tenant's modules by name: a tenant loads only from its own paths.
    modules: Mutex<HashMap<(TenantId, String), ModuleCell>>,
    /// Modules compiled (or loaded from the disk cache) so far.
    compiled: std::sync::atomic::AtomicU64,
    ticker_stop: Arc<AtomicBool>,
    /// The layers above the core its services' imports reach.
    parts: Arc<Parts>,
}

/// A module compiled once, by whoever asks first.
type ModuleCell = Arc<OnceCell<Arc<Module>>>;

/// One compiled module, ready to instantiate.
pub(crate) struct Module {
    /// The name it is spawned by.
    pub name: Arc<str>,
    /// The engine it was compiled for (its instances' stores use it).
    engine: Engine,
    pre: InstancePre<ServiceState>,
    /// The exports the host calls, and which dispatch ABI it speaks.
    exports: Exports,
    /// How its instances' memory is kept and restored, if it can be.
    memory: Option<Arc<memory::MemoryAccess>>,
    /// What its instances' imports reach beyond the core.
    parts: Arc<Parts>,
    /// The states its pure `init`s left (template spawn).
    templates: crate::runtime::template::Templates,
}

impl WasmRuntime {
    /// Builds the engine for these limits and starts its epoch ticker.
    pub fn new(
        limits: &Limits,
        cache_dir: Option<PathBuf>,
        parts: Arc<Parts>,
    ) -> wasmtime::Result<Self> {
        let memory_bytes = limits.memory_mb << 20;
        let services = limits.resident_services;
        check_map_count(services)?;
        let kept = usize::try_from(limits.slot_keep_resident_kib)
            .unwrap_or(usize::MAX)
            .saturating_mul(1 << 10);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(services)
            // A Rust wasm32-wasip2 component holds a few core instances,
            // memories and tables (the adapter's among them); a C one five,
            // the memory access the loader adds (wasm/snapshot/) among them.
            .total_core_instances(services.saturating_mul(8))
            .total_memories(services.saturating_mul(2))
            .total_tables(services.saturating_mul(4))
            .total_stacks(services)
            .max_memory_size(usize::try_from(memory_bytes).unwrap_or(usize::MAX))
            // Freed slots are returned to the kernel in batches: one TLB
            // shoot-down per batch instead of one per slot.
            .decommit_batch_size(32)
            // With pages kept, only those written are reset (PAGEMAP_SCAN,
            // Linux 6.7+; elsewhere the lowest ones are).
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(kept)
            .table_keep_resident(kept);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .memory_reservation(memory_bytes)
            .memory_guard_size(64 << 10)
            // Copy-on-write images cost a map per instance and made spawn
            // slower here (65 vs 54 µs) for the same resident memory.
            .memory_init_cow(false)
            .max_wasm_stack(512 << 10)
            // Tables filled at instantiation: no write fault (and TLB
            // shoot-down) on a table page during the first call.
            .table_lazy_init(false)
            .async_stack_size(1 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Service::add_to_linker::<_, HasSelf<ServiceState>>(&mut linker, ServiceState::imported)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let tick = Duration::from_micros(limits.time_slice_us);
        let (engine2, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("skyhost-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine2.increment_epoch();
                }
            })
            .map_err(wasmtime::Error::new)?;
        Ok(WasmRuntime {
            engine,
            linker,
            cache_dir,
            modules: Mutex::new(HashMap::new()),
            compiled: Default::default(),
            ticker_stop,
            parts,
        })
    }

    /// `tenant`'s module named `name`, from its module paths, compiled on
    /// first use (off the scheduler threads) and shared after.
    pub async fn module(&self, tenant: &Tenant, name: &str) -> Result<Arc<Module>, ModuleError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ModuleError::InvalidName(name.to_string()));
        }
        let cell = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            modules
                .entry((tenant.id, name.to_string()))
                .or_default()
                .clone()
        };
        cell.get_or_try_init(|| self.load(&tenant.module_paths, name))
            .await
            .cloned()
    }

    /// Modules compiled (or loaded from the disk cache) since the node started.
    pub fn compiled(&self) -> u64 {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Whether `tenant`'s module `name` has been loaded.
    pub fn has_module(&self, tenant: TenantId, name: &str) -> bool {
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(tenant, name.to_string()))
            .is_some_and(|cell| cell.initialized())
    }

    /// Forgets `tenant`'s modules (it was removed; live instances keep theirs).
    pub fn forget_tenant(&self, tenant: TenantId) {
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(t, _), _| *t != tenant);
    }

    async fn load(&self, module_paths: &[PathBuf], name: &str) -> Result<Arc<Module>, ModuleError> {
        let searched: Vec<PathBuf> = module_paths
            .iter()
            .map(|dir| dir.join(format!("{name}.wasm")))
            .collect();
        let Some(path) = searched.iter().find(|p| p.is_file()).cloned() else {
            return Err(ModuleError::NotFound {
                module: name.to_string(),
                searched,
            });
        };
        self.compile(name, path).await
    }

    /// Compiles the component at `path` as module `name`, off the scheduler
    /// threads (through the disk cache). Nothing is cached in memory: an
    /// upgrade compiles its new version with this and then installs it.
    pub async fn compile(&self, name: &str, path: PathBuf) -> Result<Arc<Module>, ModuleError> {
        self.compiled.fetch_add(1, Ordering::Relaxed);
        let engine = self.engine.clone();
        let cache_dir = self.cache_dir.clone();
        let file = path.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&file).map_err(|e| (true, e.to_string()))?;
            if is_core_module(&bytes) {
                return Err((false, CORE_MODULE.to_string()));
            }
            let compile = |bytes: &[u8]| {
                cache::load_or_compile(&engine, bytes, cache_dir.as_deref())
                    .map_err(|e| (false, format!("{e:#}")))
            };
            match snapshot::instrument(&bytes) {
                Ok(instrumented) => match compile(&instrumented.bytes) {
                    Ok(component) => {
                        let access = (instrumented.initial, instrumented.globals);
                        Ok((component, Some(access)))
                    }
                    Err((_, error)) => {
                        // What the loader added is wrong, not the module.
                        tracing::warn!(
                            path = %file.display(),
                            "no memory snapshots: with memory access added it does not compile: {error}"
                        );
                        compile(&bytes).map(|component| (component, None))
                    }
                },
                Err(why) => {
                    tracing::debug!(path = %file.display(), "no memory snapshots: {why}");
                    compile(&bytes).map(|component| (component, None))
                }
            }
        })
        .await
        .map_err(|e| (false, e.to_string()))
        .and_then(|r| r);
        let (component, initial) = compiled.map_err(|(read, error)| {
            let (module, path) = (name.to_string(), path.clone());
            if read {
                ModuleError::Read {
                    module,
                    path,
                    error,
                }
            } else {
                ModuleError::Invalid {
                    module,
                    path,
                    error,
                }
            }
        })?;
        let invalid = |error: String| ModuleError::Invalid {
            module: name.to_string(),
            path: path.clone(),
            error,
        };
        let exports = Exports::of(&component).map_err(invalid)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let memory = initial
            .and_then(|(initial, globals)| memory::MemoryAccess::of(&component, initial, globals));
        tracing::debug!(
            module = name,
            path = %path.display(),
            abi = ?exports.abi,
            memory_snapshots = memory.is_some(),
            "module ready"
        );
        Ok(Arc::new(Module {
            name: name.into(),
            engine: self.engine.clone(),
            pre,
            exports,
            memory,
            parts: self.parts.clone(),
            templates: Default::default(),
        }))
    }

    /// Makes `module` the version of `tenant`'s module `name` that new
    /// spawns get (an upgrade of every instance of it).
    pub fn install(&self, tenant: TenantId, name: &str, module: Arc<Module>) {
        let cell = Arc::new(OnceCell::new_with(Some(module)));
        self.modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((tenant, name.to_string()), cell);
    }
}

impl WasmRuntime {
    /// Makes every running guest reach its epoch deadline now, so a hog
    /// yields to services that just became ready.
    pub fn interrupt_running(&self) {
        self.engine.increment_epoch();
    }
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// What a user is told who gives a core wasm module where a component goes.
const CORE_MODULE: &str = "this is a core wasm module; a service must be a WebAssembly \
     component of the `service` world in wit/. Build it for `wasm32-wasip2` (a Rust cdylib built \
     for that target is a component already), or wrap a core module with \
     `wasm-tools component new <module.wasm> --adapt wasi_snapshot_preview1.reactor.wasm -o \
     <component.wasm>` (docs/languages.md)";

/// Whether `bytes` start as a core wasm module (version 1) rather than a
/// component (version 0x0d, layer 1).
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.get(..8) == Some(b"\0asm\x01\0\0\0".as_slice())
}

/// Fails with a clear message when `vm.max_map_count` is too low for the
/// pool, instead of letting the pool fail later with a bare ENOMEM.
fn check_map_count(services: u32) -> wasmtime::Result<()> {
    use crate::config::{MAPS_PER_SERVICE, MAPS_RESERVED, map_count_for};
    let Some((allowed, max_maps)) = crate::config::services_allowed_by_map_count() else {
        return Ok(());
    };
    if u64::from(services) > allowed {
        let needed = u64::from(services) * MAPS_PER_SERVICE + MAPS_RESERVED;
        wasmtime::bail!(
            "resident_services = {services} needs about {needed} memory maps but \
             vm.max_map_count is {max_maps}, enough for about {allowed} instances; lower \
             resident_services (services beyond it can hibernate: hibernate_after_ms) or raise \
             the limit (as root: sysctl -w vm.max_map_count={})",
            map_count_for(services)
        );
    }
    Ok(())
}

/// The largest `dispatch-batch` buffer an instance keeps between batches.
const KEPT_BUFFER: usize = 64 << 10;

/// One service's instance: its `Store` and bound exports.
pub(crate) struct Instance {
    store: Store<ServiceState>,
    /// The `dispatch` or `dispatch-batch` export, type-checked against
    /// [`DispatchParams`] or [`DispatchBatchParams`] (as `exports.abi` says).
    dispatch: wasmtime::component::Func,
    /// The batch being handed to `dispatch` (ABI `Messages`).
    batch: Vec<WitMessage>,
    /// The batch's buffer for `dispatch-batch`, kept from batch to batch.
    buffer: Vec<u8>,
    /// For `init` and the `state` exports.
    instance: wasmtime::component::Instance,
    exports: Exports,
    /// How its memory is kept and restored, if it can be.
    memory: Option<Arc<memory::MemoryAccess>>,
}

impl Instance {
    /// Instantiates `module` for the service behind `handle`, its memory
    /// `counted` in its tenant's (not for an instance made ahead).
    async fn make(
        kernel: &Arc<Kernel>,
        handle: &Arc<ServiceHandle>,
        module: &Module,
        counted: bool,
    ) -> wasmtime::Result<Self> {
        let mut state = ServiceState::new(kernel, handle, module.parts.clone())?;
        state.limiter.counted = counted;
        let mut store = Store::new(&module.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(state::on_epoch_deadline);
        store.set_epoch_deadline(1);
        let instance = module.pre.instantiate_async(&mut store).await?;
        let exports = module.exports;
        let dispatch = instance
            .get_func(&mut store, exports.dispatch)
            .ok_or_else(|| wasmtime::format_err!("the component lost its `dispatch` export"))?;
        match exports.abi {
            Abi::Messages => dispatch.typed::<DispatchParams<'_>, ()>(&store).map(drop)?,
            Abi::Batch => dispatch
                .typed::<DispatchBatchParams<'_>, ()>(&store)
                .map(drop)?,
        }
        Ok(Instance {
            store,
            dispatch,
            batch: Vec::new(),
            buffer: Vec::new(),
            instance,
            exports,
            memory: module.memory.clone(),
        })
    }

    /// Runs the guest's `init`.
    async fn call_init(&mut self, args: &[u8]) -> wasmtime::Result<Result<(), String>> {
        self.store.data_mut().start_work(1);
        self.store.set_epoch_deadline(1);
        let init = self
            .instance
            .get_typed_func::<(&[u8],), (Result<(), String>,)>(
                &mut self.store,
                self.exports.init,
            )?;
        let result = init.call_async(&mut self.store, (args,)).await;
        self.store.data_mut().end_work();
        Ok(result?.0)
    }

    /// Hands a batch of messages to the guest's `dispatch`; requests in it
    /// are owed a reply from then on.
    async fn call_dispatch(&mut self, messages: &mut Vec<Message>) -> wasmtime::Result<()> {
        let now = self.store.data().kernel.ticks();
        self.dispatch_from(messages, now).await.0
    }

    /// [`call_dispatch`](Self::call_dispatch) starting at `start` (a
    /// `Kernel::ticks` reading): also the reading it ended at.
    async fn dispatch_from(
        &mut self,
        messages: &mut Vec<Message>,
        start: u64,
    ) -> (wasmtime::Result<()>, u64) {
        let state = self.store.data_mut();
        state.took(messages.len());
        // A traced message is always dispatched alone (see the service loop).
        state.set_trace(messages.first().map_or(0, |m| m.trace));
        messages.retain(|m| {
            if m.wants_reply() {
                if !handoff::is_lent_request(state, m.source, m.session) {
                    state.owe(m.source, m.session, m.tenant);
                }
            } else if matches!(m.kind, kind::RESPONSE | kind::ERROR) && !state.answered(m.session) {
                state.late_answer(m);
                return false;
            }
            state.count_kind(m.kind, &m.payload);
            true
        });
        if messages.is_empty() {
            return (Ok(()), start);
        }
        self.store.data_mut().start_work_at(messages.len(), start);
        self.store.set_epoch_deadline(1);
        let result = match self.exports.abi {
            Abi::Messages => {
                self.batch.extend(messages.drain(..).map(|m| WitMessage {
                    kind: m.kind,
                    source: m.source.0,
                    session: m.session,
                    payload: m.payload,
                }));
                // SAFETY: `dispatch` was type-checked against `DispatchParams`
                // and `()` when the instance was made, in the same store.
                let typed = unsafe {
                    wasmtime::component::TypedFunc::<DispatchParams<'_>, ()>::new_unchecked(
                        self.dispatch,
                    )
                };
                let result = typed.call_async(&mut self.store, (&self.batch,)).await;
                // Shared payloads go back to their other holders now, not at the next batch.
                self.batch.clear();
                result
            }
            Abi::Batch => {
                let encoded = batch::encode(messages, &mut self.buffer);
                messages.clear();
                match encoded {
                    Ok(()) => {
                        // SAFETY: `dispatch` was type-checked against
                        // `DispatchBatchParams` and `()` when the instance
                        // was made, in the same store.
                        let typed = unsafe {
                            wasmtime::component::TypedFunc::<DispatchBatchParams<'_>, ()>::new_unchecked(
                                self.dispatch,
                            )
                        };
                        let result = typed.call_async(&mut self.store, (&self.buffer,)).await;
                        // An idle service keeps a small buffer, not its largest batch's.
                        if self.buffer.capacity() > KEPT_BUFFER {
                            self.buffer = Vec::new();
                        }
                        result
                    }
                    Err(e) => Err(wasmtime::Error::new(e)),
                }
            }
        };
        let ended = self.store.data_mut().end_work();
        (result, ended)
    }

    /// The state the guest hands to its next version (`save-state`); `None`
    /// when its module has no `state` exports or it saved nothing.
    async fn call_save_state(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        let Some(exports) = self.exports.state else {
            return Ok(None);
        };
        let save = self
            .instance
            .get_typed_func::<(), (Vec<u8>,)>(&mut self.store, &exports.save)?;
        self.store.data_mut().start_work(1);
        self.store.set_epoch_deadline(1);
        let result = save.call_async(&mut self.store, ()).await;
        self.store.data_mut().end_work();
        let (bytes,) = result?;
        Ok((!bytes.is_empty()).then_some(bytes))
    }

    /// Runs the guest's `load-state` with what its previous version saved.
    async fn call_load_state(&mut self, state: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        let Some(exports) = self.exports.state else {
            return Ok(Err("the module has no `load-state`".into()));
        };
        let load = self
            .instance
            .get_typed_func::<(Vec<u8>,), (Result<(), String>,)>(&mut self.store, &exports.load)?;
        self.store.data_mut().start_work(1);
        self.store.set_epoch_deadline(1);
        let result = load.call_async(&mut self.store, (state,)).await;
        self.store.data_mut().end_work();
        Ok(result?.0)
    }
}

pub(crate) use crate::runtime::StopReason;

/// The class of a failed guest call, for the node's stop counters.
fn stop_reason_of(error: &wasmtime::Error) -> StopReason {
    match error.downcast_ref::<Stop>() {
        Some(Stop::Killed) => StopReason::Killed,
        Some(Stop::CpuBudget(_)) => StopReason::CpuBudget,
        Some(Stop::MemoryLimit { .. }) => StopReason::MemoryLimit,
        Some(Stop::TenantMemory { .. }) => StopReason::TenantMemory,
        None if error.downcast_ref::<wasmtime::Trap>().is_some() => StopReason::Trap,
        None => StopReason::Error,
    }
}

/// A readable reason for a failed guest call: our own stop reasons, a wasm
/// trap, or whatever wasmtime reported.
pub(crate) fn describe_failure(error: &wasmtime::Error) -> (crate::runtime::ErrorCause, String) {
    use crate::runtime::ErrorCause;
    if let Some(stop) = error.downcast_ref::<Stop>() {
        let cause = match stop {
            Stop::Killed => ErrorCause::Killed,
            _ => ErrorCause::Trapped,
        };
        return (cause, stop.to_string());
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return (ErrorCause::Trapped, format!("wasm trap: {trap}"));
    }
    (ErrorCause::Trapped, format!("{error:#}"))
}

/// A guest call's error as the runtime sees it.
fn failure(error: wasmtime::Error) -> GuestFailure {
    let (cause, reason) = describe_failure(&error);
    GuestFailure {
        cause,
        reason,
        class: stop_reason_of(&error),
    }
}

impl Guest for Instance {
    type Module = Module;

    async fn instantiate(
        kernel: &Arc<Kernel>,
        handle: &Arc<ServiceHandle>,
        module: &Module,
    ) -> Result<Self, InstantiateError> {
        Instance::make(kernel, handle, module, true)
            .await
            .map_err(instantiate_error)
    }

    async fn instantiate_ahead(
        kernel: &Arc<Kernel>,
        tenant: &Arc<crate::runtime::tenant::Tenant>,
        module: &Module,
    ) -> Result<Self, InstantiateError> {
        let unbound = kernel.unbound_handle(tenant.clone(), module.name.clone());
        let instance = Instance::make(kernel, &unbound, module, false)
            .await
            .map_err(instantiate_error)?;
        if instance.store.data().imports_called > 0 {
            return Err(InstantiateError::Failed(
                "its instantiation called an import: it cannot be made ahead of its service".into(),
            ));
        }
        Ok(instance)
    }

    fn bind(&mut self, handle: &Arc<ServiceHandle>) -> bool {
        self.store.data_mut().bind(handle)
    }

    async fn init(&mut self, args: &[u8]) -> Result<Result<(), String>, GuestFailure> {
        self.call_init(args).await.map_err(failure)
    }

    async fn dispatch(&mut self, batch: &mut Vec<Message>) -> Result<(), GuestFailure> {
        self.call_dispatch(batch).await.map_err(failure)
    }

    async fn save_state(&mut self) -> Result<Option<Vec<u8>>, GuestFailure> {
        self.call_save_state().await.map_err(failure)
    }

    fn loads_state(&self) -> bool {
        self.exports.state.is_some()
    }

    async fn load_state(&mut self, state: Vec<u8>) -> Result<Result<(), String>, GuestFailure> {
        self.call_load_state(state).await.map_err(failure)
    }

    async fn snapshot(&mut self, afterwards: Afterwards) -> Result<Snapshot, GuestFailure> {
        self.call_snapshot(afterwards).await.map_err(failure)
    }

    async fn restore(&mut self, image: &[u8]) -> Result<Result<(), String>, GuestFailure> {
        self.call_restore(image).await.map_err(failure)
    }

    fn carry_out(&mut self) -> Carried {
        self.store.data_mut().carry_out()
    }

    fn carry_in(&mut self, carried: Carried) {
        self.store.data_mut().carry_in(carried);
    }

    fn owe(&mut self, caller: Address, session: u32, tenant: TenantId) {
        self.store.data_mut().owe(caller, session, tenant);
    }

    fn take_owed(&mut self) -> Vec<(Address, u32)> {
        self.store.data_mut().take_owed()
    }

    fn awaiting(&self) -> usize {
        self.store.data().awaiting_len()
    }

    fn awaits(&self, session: u32) -> bool {
        self.store.data().awaits(session)
    }

    fn exit_requested(&self) -> bool {
        self.store.data().exit_requested()
    }

    fn called_no_import(&self) -> bool {
        self.store.data().imports_called == 0
    }

    fn stays_awake(&self) -> bool {
        self.store.data().stays_awake
    }

    fn affordable_batch(&self) -> usize {
        self.store.data().affordable_batch()
    }
}

/// An instantiation's error as the runtime classes it: no slot in the
/// pool, or anything else.
fn instantiate_error(e: wasmtime::Error) -> InstantiateError {
    let no_slot = e
        .chain()
        .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>());
    if no_slot {
        InstantiateError::NoSlot(format!("{e:#}"))
    } else {
        InstantiateError::Failed(format!("{e:#}"))
    }
}

impl GuestModule for Module {
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
        Box::pin(crate::runtime::service::run::<Instance>(
            kernel, handle, self, args, ready,
        ))
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    fn templates(&self) -> &crate::runtime::template::Templates {
        &self.templates
    }
}

impl Loader for WasmRuntime {
    fn module<'a>(
        &'a self,
        tenant: &'a Tenant,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn GuestModule>, ModuleError>> {
        Box::pin(async move {
            let module: Arc<dyn GuestModule> = WasmRuntime::module(self, tenant, name).await?;
            Ok(module)
        })
    }

    fn compile<'a>(
        &'a self,
        name: &'a str,
        path: PathBuf,
    ) -> BoxFuture<'a, Result<Arc<dyn GuestModule>, ModuleError>> {
        Box::pin(async move {
            let module: Arc<dyn GuestModule> = WasmRuntime::compile(self, name, path).await?;
            Ok(module)
        })
    }

    fn install(&self, tenant: TenantId, name: &str, module: Arc<dyn GuestModule>) {
        match module.into_any().downcast::<Module>() {
            Ok(module) => WasmRuntime::install(self, tenant, name, module),
            Err(_) => tracing::error!(module = name, "not a wasm module; not installed"),
        }
    }

    fn has_module(&self, tenant: TenantId, name: &str) -> bool {
        WasmRuntime::has_module(self, tenant, name)
    }

    fn forget_tenant(&self, tenant: TenantId) {
        WasmRuntime::forget_tenant(self, tenant);
    }

    fn interrupt_running(&self) {
        WasmRuntime::interrupt_running(self);
    }

    fn compiled(&self) -> u64 {
        WasmRuntime::compiled(self)
    }
}
