//! The node: the facade over one node's core that users, the CLI and the
//! layers above hold. `Node::launch` builds the core (`runtime::Kernel`)
//! with the wasm loader and binds the distributed layers (harbor, cluster);
//! the control address and metrics sit above it (`control::serve`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::config::{Limits, NodeConfig, TenantConfig};
use crate::harbor::Harbor;
use crate::multicast::Multicast;
use crate::runtime::{
    Address, CallError, HarborId, Kernel, LateAt, LocalClient, Message, Ready, SYSTEM_TENANT,
    ServiceInfo, SpawnError, TenantError, TenantId, TenantStats, UpgradeError, UpgradeReport, kind,
};
use crate::transport::Tcp;
use crate::wasm::{Parts, WasmRuntime};

mod client;
pub use client::Client;

/// A running node: its services, names and timers.
///
/// Cloning a `Node` gives another handle to the same node.
#[derive(Clone)]
pub struct Node {
    kernel: Arc<Kernel>,
    /// The layers above the core: harbor, cluster, multicast.
    parts: Arc<Parts>,
    /// Where the layers above the node (control, metrics) were bound.
    served: Arc<Served>,
}

/// Where a node's control address and metrics listen, once opened.
#[derive(Default)]
struct Served {
    control: OnceLock<SocketAddr>,
    metrics: OnceLock<SocketAddr>,
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
        if config.harbor.is_some() || config.cluster.is_some() {
            return Err(NodeError::NeedsLaunch);
        }
        Self::build(config)
    }

    /// Starts a node, and on a harbor node binds its listeners, starts the
    /// master when `standalone`, and joins the harbor before returning; on
    /// a cluster node, opens its cluster side. Its control address and
    /// metrics (the layers above the node) are opened by
    /// `skyhost::control::serve`.
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
            match Harbor::start(&node.kernel, node.parts.multicast.clone(), h, Arc::new(Tcp)).await
            {
                Ok(harbor) => {
                    let _ = node.kernel.remote.set(harbor.clone());
                    let _ = node.parts.harbor.set(harbor);
                }
                Err(e) => {
                    node.shutdown().await;
                    return Err(NodeError::Harbor(e));
                }
            }
        }
        if let Some(c) = &config.cluster {
            match Cluster::start(&node.kernel, node.parts.multicast.clone(), c, Arc::new(Tcp)).await
            {
                Ok(cluster) => {
                    let _ = node.parts.cluster.set(cluster);
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
        let harbor = HarborId(config.harbor.as_ref().map_or(0, |h| h.id));
        let multicast = Arc::new(Multicast::new(harbor));
        let parts = Arc::new(Parts::new(multicast.clone()));
        let cache_dir = config.cache_dir.clone().or_else(default_cache_dir);
        let wasm = WasmRuntime::new(&limits, cache_dir, parts.clone())
            .map_err(|e| NodeError::Engine(format!("{e:#}")))?;
        let kernel = Kernel::new(config, limits, Arc::new(wasm))?;
        if let Some(fan_out) = multicast.fan_out_task(Arc::downgrade(&kernel)) {
            let stop = kernel.shutdown.clone();
            // Where the services run: on the workers, the subscribers it
            // wakes queue on its own worker instead of crossing from tokio.
            kernel.spawn_beside_services(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = fan_out => {}
                }
            });
        }
        Ok(Node {
            kernel,
            parts,
            served: Arc::default(),
        })
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
        Client::new(
            LocalClient::new(self.kernel.clone(), system),
            self.parts.clone(),
        )
    }

    /// A host endpoint that calls and sends as a service of `tenant` would
    /// (and sees only that tenant); `None` if there is no such tenant.
    pub fn client_in(&self, tenant: &str) -> Option<Client> {
        let t = self.kernel.tenant_named(tenant)?;
        Some(Client::new(
            LocalClient::new(self.kernel.clone(), t),
            self.parts.clone(),
        ))
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
        self.kernel.add_tenant(config)?;
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
        self.kernel.remove_tenant(name).await?;
        tracing::info!(tenant = %name, "tenant removed");
        Ok(())
    }

    /// Modules this node compiled (or loaded from its disk cache) so far:
    /// each module is made ready once, whatever the number of its instances.
    pub fn modules_compiled(&self) -> u64 {
        self.kernel.loader.compiled()
    }

    /// Where this node serves `GET /metrics`, if it does.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.served.metrics.get().copied()
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
        self.kernel.late_answers(at)
    }

    /// Records where this node's control address and metrics were bound.
    pub(crate) fn bound(&self, control: Option<SocketAddr>, metrics: Option<SocketAddr>) {
        if let Some(a) = control {
            let _ = self.served.control.set(a);
        }
        if let Some(a) = metrics {
            let _ = self.served.metrics.set(a);
        }
    }

    /// Where this node takes control commands, if it opened a control address.
    pub fn control_address(&self) -> Option<std::net::SocketAddr> {
        self.served.control.get().copied()
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
        self.kernel.tenant_stats()
    }

    /// Live wasm services on this node.
    pub fn service_count(&self) -> usize {
        self.kernel.service_count()
    }

    /// Live services hibernated now (their instances given up while idle).
    pub fn hibernated_count(&self) -> usize {
        self.kernel.hibernated_services()
    }

    /// Bytes the hibernated services keep now: their saved states and the
    /// images of their memories.
    pub fn hibernated_bytes(&self) -> usize {
        self.kernel.hibernated_bytes()
    }

    /// Services born hibernated on a template since the node started
    /// (docs/hibernation.md, template spawn).
    pub fn template_spawns(&self) -> u64 {
        self.kernel.template_spawns()
    }

    /// Calls run inside their caller's `call` since the node started (the
    /// direct hand-off, docs/scheduler.md).
    pub fn direct_calls(&self) -> u64 {
        self.kernel.direct_calls.sum()
    }

    /// Timers set and not fired yet: sleeps (`timeout`), and the timeouts
    /// of timed calls whose answer has not come.
    pub fn timers_pending(&self) -> usize {
        self.kernel.timers_pending()
    }

    /// Instances made ahead of the wakes that take them, kept now
    /// (docs/hibernation.md, instances made ahead).
    pub fn instances_ahead(&self) -> usize {
        self.kernel.ahead.len()
    }

    /// Wakes that took an instance made ahead, since the node started.
    pub fn wakes_ahead(&self) -> u64 {
        self.kernel.wakes_ahead()
    }

    /// Logs (target `skyhost::trace`, level info) each message the service
    /// at `address` takes and sends, and how long each batch took; false if
    /// there is no such service.
    pub fn trace(&self, address: Address, on: bool) -> bool {
        self.kernel
            .with_service(address, |h| h.usage.traced.store(on, Ordering::Relaxed))
            .is_some()
    }

    /// A copy of each message the service at `address` takes and sends
    /// (its payload's head), from now until it ends or the receiver is
    /// dropped; `None` if there is no such service. A receiver that falls
    /// behind loses events (counted in the next one); the service never
    /// waits for it.
    pub fn tap(
        &self,
        address: Address,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::runtime::tap::Tapped>> {
        self.kernel.with_service(address, |h| h.usage.taps.add())
    }

    /// This node's harbor and cluster links, as `netstat` shows them.
    pub fn links(&self) -> Vec<crate::transport::LinkInfo> {
        let mut links = self
            .parts
            .harbor
            .get()
            .map(|h| h.links())
            .unwrap_or_default();
        if let Some(c) = self.parts.cluster.get() {
            links.extend(c.links());
        }
        links
    }

    /// A snapshot of the service (or host endpoint) at `address`.
    pub fn service_info(&self, address: Address) -> Option<ServiceInfo> {
        self.kernel.service_info(address)
    }

    /// A snapshot of every service and host endpoint, in address order.
    pub fn service_infos(&self) -> Vec<ServiceInfo> {
        self.kernel.service_infos()
    }

    /// How long `target` takes to pick up a message the host sends it
    /// (answered by the runtime, not the guest, so it works on any service).
    ///
    /// # Errors
    /// `UnknownAddress` for no such service; `Timeout` when it did not pick
    /// the ping up within `timeout` (it is busy in a long dispatch, or its
    /// mailbox is long).
    pub async fn ping(&self, target: Address, timeout: Duration) -> Result<Duration, CallError> {
        let mut endpoint = crate::runtime::endpoint::HostEndpoint::new(
            &self.kernel,
            "host",
            self.kernel.host_tenant.clone(),
        );
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
        self.kernel.service_list()
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
        self.parts.harbor.get().map(|h| h.listen)
    }

    /// The master this harbor node joined (the bound address when it runs
    /// the master itself).
    pub fn master_address(&self) -> Option<String> {
        self.parts.harbor.get().map(|h| h.master_address.clone())
    }

    /// The harbor ids this node has a live link to, in order.
    pub fn connected(&self) -> Vec<u8> {
        self.parts
            .harbor
            .get()
            .map(|h| h.connected())
            .unwrap_or_default()
    }

    /// Whether this harbor node's link to the master is up.
    pub fn master_up(&self) -> bool {
        self.parts.harbor.get().is_some_and(|h| h.master_up())
    }

    /// Subscribers on this node of a multicast channel (0 for none).
    pub fn channel_subscribers(&self, channel: u32) -> usize {
        self.parts
            .multicast
            .local_subscribers(TenantId::SYSTEM, channel)
    }

    /// Multicast copies dropped because a cluster node's queue was full
    /// (harbor nodes' count in [`dropped_to_down_nodes`](Self::dropped_to_down_nodes)).
    pub fn multicast_overflow(&self) -> u64 {
        self.parts.multicast.overflow()
    }

    /// Where this cluster node accepts links from other nodes.
    pub fn cluster_listening(&self) -> Vec<std::net::SocketAddr> {
        self.parts
            .cluster
            .get()
            .map(|c| c.listening())
            .unwrap_or_default()
    }

    /// The cluster table now in force (from the cluster file, a reload or
    /// discovery), or `None` when the node is in no cluster.
    pub fn cluster_table(&self) -> Option<Arc<crate::cluster::ClusterTable>> {
        self.parts.cluster.get().map(|c| c.table())
    }

    /// How many cluster nodes and group members the health checks hold
    /// out now, or `None` when the node is in no cluster.
    pub fn cluster_taken_out(&self) -> Option<(usize, usize)> {
        self.parts.cluster.get().map(|c| c.taken_out())
    }

    /// Cluster sends from other nodes dropped because the service they
    /// named is not here, since start (0 outside a cluster).
    pub fn cluster_sends_undelivered(&self) -> u64 {
        self.parts
            .cluster
            .get()
            .map_or(0, |c| c.sends_undelivered())
    }

    /// One-way messages to other cluster nodes this node took and then
    /// dropped, since start (0 outside a cluster).
    pub fn cluster_sends_dropped(&self) -> u64 {
        self.parts.cluster.get().map_or(0, |c| c.dropped())
    }

    /// Replaces this node's cluster config with `text` (as `cluster.reload`).
    ///
    /// # Errors
    /// The config's error (line and key), or when the node is in no cluster.
    pub fn cluster_reload(&self, text: &str) -> Result<(), String> {
        let cluster = self
            .parts
            .cluster
            .get()
            .ok_or("this node is not in a cluster")?;
        cluster.reload(text).map_err(|e| e.to_string())
    }

    /// Makes `target` known to other cluster nodes as `name`.
    pub fn cluster_register(&self, name: &str, target: Address) {
        if let Some(c) = self.parts.cluster.get() {
            c.register(TenantId::SYSTEM, name, target);
        }
    }

    /// Messages dropped because their node was down, since start: those no
    /// sender could be told of (multicast copies, sends queued when a link
    /// dropped).
    pub fn dropped_to_down_nodes(&self) -> u64 {
        self.parts.harbor.get().map_or(0, |h| h.dropped())
    }

    /// Sends refused because their node was down, since start: each
    /// sender was answered with node-down.
    pub fn refused_to_down_nodes(&self) -> u64 {
        self.parts.harbor.get().map_or(0, |h| h.refused())
    }

    /// Stops every service (their pending sessions end with an error) and
    /// waits for every task of the node to finish.
    pub async fn shutdown(&self) {
        if let Some(harbor) = self.parts.harbor.get() {
            harbor.stop().await;
        }
        self.kernel.shutdown.cancel();
        self.kernel.kill_all();
        self.kernel.tasks.close();
        self.kernel.tasks.wait().await;
        self.kernel.ahead.clear();
        self.kernel.stop_workers();
    }
    /// Replaces the module of live services with the component at `path`.
    ///
    /// `target` is an address (`:0000010a`, any tenant), or `[tenant/]x`
    /// where `x` is a name in that tenant (`system` without a prefix), or a
    /// module of that tenant: then every live instance is upgraded, one at a
    /// time, and new spawns of the module get the new version. Each service
    /// may take up to `wait` to finish its own sessions.
    ///
    /// # Errors
    /// When the target names nothing or the new module does not compile;
    /// each service's own outcome is in its report.
    pub async fn upgrade(
        &self,
        target: &str,
        path: &std::path::Path,
        wait: Duration,
    ) -> Result<Vec<UpgradeReport>, UpgradeError> {
        self.kernel.upgrade(target, path, wait).await
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
    /// A harbor or cluster node was started with `Node::start`.
    #[error("a harbor or cluster node starts with Node::launch")]
    NeedsLaunch,
    /// The node could not join its harbor.
    #[error(transparent)]
    Harbor(#[from] crate::harbor::HarborError),
    /// The node's cluster side could not start (bad cluster config,
    /// discovery URL, listener).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterStartError),
    /// A tenant of the node file cannot be used.
    #[error("{0}")]
    Tenant(#[from] TenantError),
    /// The control address's TLS files cannot be used.
    #[error("[control] tls: {0}")]
    ControlTls(crate::transport::tls::TlsError),
    /// The control address or `/metrics` could not be bound.
    #[error("{what} {address}: {source}")]
    Listen {
        /// `control` or `metrics`.
        what: &'static str,
        /// The address asked for.
        address: String,
        /// What the OS said.
        source: std::io::Error,
    },
}
