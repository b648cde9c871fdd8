//! Building a node's core, and what the node's facade reads of it as a
//! whole: tenants added and removed, their accounting, the service lists.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tenant::{self, Tenant};
use super::{
    Address, HarborId, Kernel, LateAt, Loader, SYSTEM_TENANT, ServiceHandle, ServiceInfo,
    SpawnError, TenantId, TenantStats, timer,
};
use crate::config::{Limits, NodeConfig, Scheduler, TenantConfig};

/// What the node's facade (`node::Node`) asks of its core.
impl Kernel {
    /// Builds a node's core with `loader` for its modules: its tenants (the
    /// node file's, `system` first), timers and scheduler.
    ///
    /// # Errors
    /// A tenant whose id is reserved or taken.
    pub(crate) fn new(
        config: &NodeConfig,
        limits: Limits,
        loader: Arc<dyn Loader>,
    ) -> Result<Arc<Kernel>, TenantError> {
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
        let (timers, timers_shared) = timer::Timers::new();
        let harbor = HarborId(config.harbor.as_ref().map_or(0, |h| h.id));
        let ahead = super::ahead::Ahead::new(limits.instances_ahead as usize);
        let kernel = Arc::new(Kernel {
            harbor,
            host_tenant: Arc::new(Tenant::host(&limits)),
            limits,
            loader,
            started: Instant::now(),
            cpu_clock: quanta::Clock::new(),
            // Keys are ids the node hands out, not a peer's choice: a fixed
            // hash is safe, cheaper than SipHash and the same every run.
            services: papaya::HashMap::with_hasher(foldhash::fast::FixedState::default()),
            next_local: AtomicU32::new(0),
            live: AtomicUsize::new(0),
            hibernated: AtomicUsize::new(0),
            hibernated_bytes: AtomicUsize::new(0),
            template_spawns: Default::default(),
            direct_calls: Default::default(),
            making_room: std::sync::atomic::AtomicBool::new(false),
            ahead,
            woken_ahead: Default::default(),
            names: Mutex::new(HashMap::new()),
            tenants,
            timers,
            remote: OnceLock::new(),
            stops: Default::default(),
            late_answers: Default::default(),
            sched: Arc::default(),
            workers: arc_swap::ArcSwapOption::new(workers_for(config)),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        });
        let timer_task = timer::run(
            Arc::downgrade(&kernel),
            timers_shared,
            kernel.shutdown.clone(),
        );
        kernel.tasks.spawn(timer_task);
        let sweeper = super::hibernate::sweeper(Arc::downgrade(&kernel), kernel.shutdown.clone());
        kernel.tasks.spawn(sweeper);
        Ok(kernel)
    }

    /// Lets go of the worker threads that ran its services, if it had
    /// them (after its services ended): the pool stops when no node of the
    /// process holds it. Tasks spawned after this run on tokio.
    pub(crate) fn stop_workers(&self) {
        self.workers.store(None);
    }

    /// Adds the tenant `config` declares.
    ///
    /// # Errors
    /// When a tenant of that name (or id) exists.
    pub(crate) fn add_tenant(&self, config: &TenantConfig) -> Result<(), TenantError> {
        let tenant = Tenant::new(config, &self.limits);
        let table = self.tenants.pin();
        if table.contains_key(&tenant.id) {
            return Err(TenantError::Exists(config.name.clone()));
        }
        check_tenant_id(&tenant, &table).map_err(|e| TenantError::Invalid(e.to_string()))?;
        table.insert(tenant.id, Arc::new(tenant));
        Ok(())
    }

    /// Removes tenant `name`: no new services, every one of its services is
    /// stopped, and its names and modules go; returns once its last service
    /// has ended.
    ///
    /// # Errors
    /// When there is no such tenant, or it is `system`.
    pub(crate) async fn remove_tenant(&self, name: &str) -> Result<(), TenantError> {
        if name == SYSTEM_TENANT {
            return Err(TenantError::Invalid("`system` cannot be removed".into()));
        }
        let tenant = self
            .tenant_named(name)
            .ok_or_else(|| TenantError::NoSuchTenant(name.to_string()))?;
        tenant.removed.store(true, Ordering::Release);
        loop {
            let ended = tenant.all_ended.notified();
            let services: Vec<Address> = self
                .services
                .pin()
                .values()
                .filter(|h| h.tenant.id == tenant.id && &*h.module != "host")
                .map(|h| h.address)
                .collect();
            // Its proxies stop too (host clients stay, to hear how their
            // calls ended), but only services count.
            for a in services {
                self.kill(TenantId::HOST, a);
            }
            if tenant.counters.live.load(Ordering::Acquire) == 0 {
                break;
            }
            ended.await;
        }
        self.tenants.pin().remove(&tenant.id);
        self.ahead.forget_tenant(tenant.id);
        self.loader.forget_tenant(tenant.id);
        Ok(())
    }

    /// Answers dropped at `at` because their session had already ended.
    pub(crate) fn late_answers(&self, at: LateAt) -> u64 {
        self.late_answers[at.index()].load(Ordering::Relaxed)
    }

    /// Each tenant's accounting, `system` first, then by name.
    pub(crate) fn tenant_stats(&self) -> Vec<TenantStats> {
        let mut live: HashMap<TenantId, tenant::Usage> = HashMap::new();
        for h in self.services.pin().values() {
            live.entry(h.tenant.id).or_default().absorb(&h.usage);
        }
        let none = tenant::Usage::default();
        let mut list: Vec<TenantStats> = self
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

    /// Live wasm services.
    pub(crate) fn service_count(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// A snapshot of the service (or host endpoint) at `address`.
    pub(crate) fn service_info(&self, address: Address) -> Option<ServiceInfo> {
        self.with_service(address, ServiceHandle::info)
    }

    /// A snapshot of every service and host endpoint, in address order.
    pub(crate) fn service_infos(&self) -> Vec<ServiceInfo> {
        let mut list: Vec<ServiceInfo> = self.services.pin().values().map(|h| h.info()).collect();
        list.sort_by_key(|i| i.address);
        list
    }

    /// Every live service with the module it runs, in address order.
    pub(crate) fn service_list(&self) -> Vec<(Address, String)> {
        let services = self.services.pin();
        let mut list: Vec<(Address, String)> = services
            .values()
            .filter(|h| &*h.module != "host")
            .map(|h| (h.address, h.module.to_string()))
            .collect();
        list.sort();
        list
    }

    /// Stops every service and host endpoint (their pending sessions end
    /// with an error).
    pub(crate) fn kill_all(&self) {
        let addresses: Vec<Address> = self.services.pin().values().map(|h| h.address).collect();
        for a in addresses {
            self.kill(TenantId::HOST, a);
        }
    }
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

/// The worker pool a node of `config` runs its services on: none with
/// `scheduler = "tokio"`, or when the pool cannot start (the services then
/// run on tokio, and the log says why).
fn workers_for(config: &NodeConfig) -> Option<Arc<super::workers::Workers>> {
    if config.scheduler != Scheduler::Workers {
        return None;
    }
    let n = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    super::workers::Workers::shared(n)
        .inspect_err(|e| {
            tracing::error!("cannot start the node's workers ({e}); its services run on tokio");
        })
        .ok()
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
