//! Cluster: independent nodes, named in a cluster config, that call each
//! other's services by node name and service name or address.
//!
//! ```text
//!  guest: cluster.call("db", "store", payload)
//!    -> Cluster::submit     table lookup: unknown (wait for a reload, or fail with
//!                           __nowaiting), offline (fail), or an address
//!    -> Sender ("db")       one outbound link per peer, made on first use; the call
//!                           gets a link session; requests queue while it connects
//!    -> transport           Frame<Control, Header>: Request {session, target}
//!  node "db": agent         one per inbound link, a host address of its own: it
//!                           delivers the request to `store` as a local call and
//!                           sends the answer back as Response {session}
//!    -> Sender              the link session's waiter gets the response (or an error)
//! ```
//!
//! Who owns what (as Skynet's clustersender / clusteragent / clusterproxy):
//! - `Cluster` (one per node, in its `Kernel`): the table, the senders,
//!   calls parked for nodes not in the table yet, the names registered
//!   for discovery, and the listeners.
//! - `sender::Sender`: one peer's queue, its calls in flight and its
//!   queries; one task owns the connection, reconnects with backoff on the
//!   next use, and fails every call in flight when the link drops.
//! - `agent`: one inbound connection and its host address.
//! - proxies: a host address whose messages go to one remote service.

pub mod config;
pub mod discovery;
mod group_calls;
pub mod groups;
mod health;
pub mod proto;
mod route;
mod sender;
mod watch;

mod agent;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ClusterNodeConfig;
use crate::multicast::proto::{ChannelControl, ChannelCopy};
use crate::multicast::{ClusterCarrier, Multicast, NotCarried};
use crate::runtime::Waiter;
use crate::runtime::endpoint::HostEndpoint;
use crate::runtime::tenant::Tenant;
use crate::runtime::{Address, ErrorCause, Kernel, TenantId, kind};
use crate::transport::{LinkConfig, Net, Outgoing};
pub use config::{ClusterConfigError, ClusterTable, NodeAddress};
use proto::Target;
use sender::Sender;

/// Why a node's cluster side could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterStartError {
    /// The cluster config file (its file, line and key).
    #[error(transparent)]
    Config(#[from] ClusterConfigError),
    /// The `discovery` URL.
    #[error("discovery: {0}")]
    Discovery(String),
    /// The listener named by `listen` could not be opened.
    #[error("{0}")]
    Listen(String),
    /// `tls`: a certificate, key or CA that cannot be used.
    #[error("[cluster] tls: {0}")]
    Tls(crate::transport::tls::TlsError),
    /// The cluster config file cannot be watched for changes.
    #[error("cluster config {}: cannot watch it: {source}", file.display())]
    Watch {
        /// The file.
        file: std::path::PathBuf,
        /// What the watcher said.
        source: notify::Error,
    },
}

/// Why a cluster operation failed at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ClusterError {
    /// The cause a waiting caller sees.
    pub cause: ErrorCause,
    /// What went wrong, naming the node.
    pub detail: String,
}

impl ClusterError {
    fn new(cause: ErrorCause, detail: impl Into<String>) -> Self {
        ClusterError {
            cause,
            detail: detail.into(),
        }
    }
}

/// Something to do on a node: what waits in a sender's queue, or for a
/// reload that adds an unknown node.
/// Who a cluster call or send is from: the tenant it is accounted to and
/// the trace id it carries (0: none).
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The caller's tenant; the target must be of the same tenant.
    pub tenant: TenantId,
    /// The trace id of the logical request it is part of.
    pub trace: u64,
}

impl Origin {
    /// An untraced call or send of `tenant`.
    pub fn of(tenant: TenantId) -> Self {
        Origin { tenant, trace: 0 }
    }
}

pub(crate) enum Job {
    /// A call; `waiter` gets the response or an error.
    Call {
        origin: Origin,
        target: Target,
        payload: Vec<u8>,
        waiter: Waiter,
        timeout: Option<Duration>,
    },
    /// A send: one message, or with `batched` the records of that many
    /// for one target (`batch`), sent as one frame.
    Send {
        origin: Origin,
        target: Target,
        payload: Vec<u8>,
        batched: Option<u32>,
    },
    /// A name lookup; `waiter` gets the address (4 bytes, little-endian).
    Query { name: String, waiter: Waiter },
    /// A health check of `address` on the node (0: the node itself);
    /// `waiter` gets an empty response, or an error.
    Ping {
        address: u32,
        waiter: Waiter,
        timeout: Duration,
    },
    /// A ready frame with no answer to wait for (multicast), kept while
    /// the peer is down like a send.
    Item(Outgoing<proto::Control, proto::Header>),
}

impl Job {
    /// How many messages it carries (a queue's bound counts them).
    fn messages(&self) -> usize {
        match self {
            Job::Send {
                batched: Some(n), ..
            } => *n as usize,
            _ => 1,
        }
    }

    /// Ends the job's session with an error; a send has none to end, so it
    /// is counted in `dropped`.
    fn fail(self, kernel: &Kernel, error: &ClusterError, dropped: &AtomicU64) {
        let messages = self.messages();
        match self {
            Job::Call { waiter, .. } | Job::Query { waiter, .. } | Job::Ping { waiter, .. } => {
                waiter.fail(kernel, error.cause, &error.detail);
            }
            Job::Send { .. } | Job::Item(_) => {
                dropped.fetch_add(messages as u64, Ordering::Relaxed);
                tracing::debug!("cluster sends dropped ({messages}): {}", error.detail);
            }
        }
    }
}

/// Answers `waiter` with a `response`; cluster answers come from address 0
/// (the caller matches them by session).
fn respond(kernel: &Kernel, waiter: Waiter, payload: Vec<u8>) {
    waiter.respond(kernel, Address(0), payload);
}

/// The settings every cluster link is made with.
#[derive(Clone)]
pub(crate) struct Settings {
    secret: Arc<[u8]>,
    heartbeat: Duration,
    dead_after: Duration,
    max_payload: usize,
    /// Payloads longer than this are lz4-compressed; `None`: never.
    compress_above: Option<usize>,
    /// Messages queued for a peer that is down, before new ones are refused.
    queue_limit: usize,
    /// TLS for every link, when the node file asks for it.
    tls: Option<crate::transport::tls::Tls>,
    /// Where the links' sockets come from.
    net: Arc<dyn Net>,
}

impl Settings {
    fn link(&self, name: &str) -> LinkConfig {
        let mut c = LinkConfig::new(proto::PROTOCOL, name, self.secret.clone());
        c.heartbeat = self.heartbeat;
        c.dead_after = self.dead_after;
        c.max_payload = self.max_payload;
        c
    }

    /// The payload as sent, and whether it was compressed.
    fn pack(&self, payload: Vec<u8>) -> (Vec<u8>, bool) {
        match self.compress_above {
            Some(at) if payload.len() > at => {
                let packed = lz4_flex::compress_prepend_size(&payload);
                if packed.len() < payload.len() {
                    (packed, true)
                } else {
                    (payload, false)
                }
            }
            _ => (payload, false),
        }
    }

    /// The payload as received.
    fn unpack(&self, payload: Vec<u8>, compressed: bool) -> Result<Vec<u8>, String> {
        if !compressed {
            return Ok(payload);
        }
        let size = payload
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| u32::from_le_bytes(b) as usize);
        if size > self.max_payload {
            return Err(format!(
                "compressed payload claims {size} bytes, more than the limit of {}",
                self.max_payload
            ));
        }
        lz4_flex::decompress_size_prepended(&payload).map_err(|e| format!("bad lz4 payload: {e}"))
    }
}

/// The cluster side of one node.
pub(crate) struct Cluster {
    kernel: Weak<Kernel>,
    /// This node's name in the cluster.
    pub name: String,
    settings: Settings,
    /// Read on every message, replaced whole on reload.
    table: ArcSwap<ClusterTable>,
    /// Read on every message without a lock; `new_sender` serializes making one.
    senders: papaya::HashMap<String, Arc<Sender>>,
    new_sender: Mutex<()>,
    /// Jobs for nodes not in the table, by node, with an id for timeouts.
    waiting: Mutex<HashMap<String, Vec<(u64, Job)>>>,
    next_waiting: AtomicU64,
    /// Names registered with `cluster.register`, for other nodes' queries.
    names: Mutex<HashMap<String, Address>>,
    /// What arrived from each peer node's sender (by its name), across
    /// its links: one-way messages are delivered once (`transport::resume`).
    inboxes: Mutex<HashMap<String, Arc<Mutex<crate::transport::resume::Inbox>>>>,
    /// This life of the node (random at start), told to senders first on
    /// every link (`Control::Have`).
    boot: u64,
    /// Links from other nodes now open: their name, address and counters.
    pub(crate) inbound: Mutex<Vec<(String, SocketAddr, Arc<crate::transport::LinkStats>)>>,
    listening: Mutex<Vec<SocketAddr>>,
    /// Where the table comes from when it is not a file: etcd.
    discovery: OnceLock<Arc<discovery::Discovery>>,
    /// Group members of every node, and how calls pick among them.
    groups: groups::Groups,
    /// Made on the first counted or timed group call.
    relay: OnceLock<Arc<group_calls::Relay>>,
    /// Numbers inbound links, so a group roster is dropped only with its own link.
    next_link: AtomicU64,
    /// Nodes that fail their health checks.
    nodes_out: health::NodesOut,
    /// Sends from other nodes that found no service here.
    undelivered: Undelivered,
    /// One-way messages (sends, multicast copies) this node took and then
    /// dropped: their node went offline or away, or its queue overflowed
    /// while it was down. Shared with the senders.
    dropped: Arc<AtomicU64>,
    cancel: CancellationToken,
    /// The node's channels, which cluster links carry copies for.
    multicast: Arc<Multicast>,
}

/// Counts the cluster sends that reached this node for a service it does
/// not have (a send has no answer to carry the error back), and logs them
/// at most once a second, so a sender's typo shows without flooding the log.
#[derive(Default)]
struct Undelivered {
    total: AtomicU64,
    /// When the last line was logged, and how many went unlogged since.
    logged: Mutex<Option<(std::time::Instant, u64)>>,
}

impl Undelivered {
    fn count(&self, from: &str, target: &str, why: &str, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        let now = std::time::Instant::now();
        let mut logged = lock(&self.logged);
        match &mut *logged {
            Some((at, unlogged)) if now.duration_since(*at) < Duration::from_secs(1) => {
                *unlogged += n;
            }
            _ => {
                let unlogged = logged.map_or(0, |(_, unlogged)| unlogged);
                *logged = Some((now, 0));
                drop(logged);
                tracing::warn!(
                    from,
                    target,
                    sends = n,
                    also_dropped_since_last_line = unlogged,
                    "cluster send dropped: {why}"
                );
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    /// Loads the cluster config, opens the listener if the node file asks
    /// for one, and starts watching the config file.
    ///
    /// # Errors
    /// A bad cluster config (file, line, key) or a listener that cannot be bound.
    pub(crate) async fn start(
        kernel: &Arc<Kernel>,
        multicast: Arc<Multicast>,
        config: &ClusterNodeConfig,
        net: Arc<dyn Net>,
    ) -> Result<Arc<Cluster>, ClusterStartError> {
        let table = match &config.config {
            Some(path) => ClusterTable::load(path)?,
            None => ClusterTable::default(),
        };
        table.warn_unknown_options();
        let cluster = Arc::new(Cluster {
            kernel: Arc::downgrade(kernel),
            name: config.name.clone(),
            settings: Settings {
                secret: config.secret_bytes().into(),
                heartbeat: Duration::from_millis(config.heartbeat_ms),
                dead_after: Duration::from_millis(config.dead_after_ms),
                max_payload: kernel.limits.max_payload,
                compress_above: config.compression.then_some(config.compress_threshold),
                queue_limit: config.queue_limit,
                tls: match &config.tls {
                    Some(files) => Some(
                        crate::transport::tls::Tls::load(files).map_err(ClusterStartError::Tls)?,
                    ),
                    None => None,
                },
                net,
            },
            table: ArcSwap::from_pointee(table),
            senders: papaya::HashMap::new(),
            new_sender: Mutex::new(()),
            waiting: Mutex::new(HashMap::new()),
            next_waiting: AtomicU64::new(1),
            names: Mutex::new(HashMap::new()),
            inboxes: Mutex::new(HashMap::new()),
            boot: rand::random(),
            inbound: Mutex::new(Vec::new()),
            listening: Mutex::new(Vec::new()),
            discovery: OnceLock::new(),
            groups: groups::Groups::new(&config.name),
            relay: OnceLock::new(),
            next_link: AtomicU64::new(1),
            nodes_out: health::NodesOut::default(),
            undelivered: Undelivered::default(),
            dropped: Arc::default(),
            cancel: kernel.shutdown.child_token(),
            multicast,
        });
        let links = MulticastLinks {
            cluster: Arc::downgrade(&cluster),
            name: config.name.clone(),
        };
        cluster.multicast.carry_over_cluster(Arc::new(links));
        let bound = match &config.listen {
            Some(at) => Some(cluster.open(at).map_err(ClusterStartError::Listen)?),
            None => None,
        };
        if let (Some(url), Some(bound)) = (&config.discovery, bound) {
            let url = discovery::EtcdUrl::parse(url).map_err(ClusterStartError::Discovery)?;
            let tls = match &config.discovery_tls {
                Some(files) => Some(
                    discovery::etcd_tls(files)
                        .map_err(|e| ClusterStartError::Discovery(format!("discovery_tls: {e}")))?,
                ),
                None => None,
            };
            let advertise = config.advertise.clone().unwrap_or_else(|| {
                let mut at = bound;
                if at.ip().is_unspecified() {
                    tracing::warn!(
                        "discovery: listening on {bound}, publishing 127.0.0.1; set `advertise` for other hosts"
                    );
                    at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                at.to_string()
            });
            let ttl = Duration::from_secs(config.lease_ttl_s);
            let _ = cluster.discovery.set(discovery::Discovery::start(
                &cluster,
                (url, tls),
                advertise,
                config.backup.clone(),
                ttl,
            ));
        }
        health::start(&cluster, kernel, config.health.clone());
        if let Some(path) = &config.config {
            watch::start(&cluster, path.clone()).map_err(|source| ClusterStartError::Watch {
                file: path.clone(),
                source,
            })?;
        }
        Ok(cluster)
    }

    fn kernel(&self) -> Option<Arc<Kernel>> {
        self.kernel.upgrade()
    }

    /// The table now in force.
    pub fn table(&self) -> Arc<ClusterTable> {
        self.table.load_full()
    }

    /// Where this node accepts cluster links.
    pub fn listening(&self) -> Vec<SocketAddr> {
        lock(&self.listening).clone()
    }

    /// Listens for other nodes: `at` is a node name from the table, a
    /// `host:port`, or a bare port (all interfaces). Returns the bound address.
    ///
    /// # Errors
    /// An unknown or offline name, or an address that cannot be bound.
    pub fn open(self: &Arc<Self>, at: &str) -> Result<SocketAddr, String> {
        let address = match self.table().get(at) {
            Some(NodeAddress::At(a)) => a.clone(),
            Some(NodeAddress::Offline | NodeAddress::Departed) => {
                return Err(format!(
                    "cluster open: node `{at}` is offline (false) in the config"
                ));
            }
            None if at.parse::<u16>().is_ok() => format!("0.0.0.0:{at}"),
            None if at.contains(':') => at.to_string(),
            None => {
                return Err(format!(
                    "cluster open: `{at}` is not a node in the cluster config"
                ));
            }
        };
        // Binding does not wait, so a guest import can open without awaiting.
        let listener = self
            .settings
            .net
            .bind(&address)
            .map_err(|e| format!("cluster open: cannot listen on {address}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("cluster open: {address}: {e}"))?;
        tracing::info!(node = %self.name, address = %bound, "cluster listening");
        lock(&self.listening).push(bound);
        if let Some(kernel) = self.kernel() {
            let span = tracing::info_span!(parent: None, "cluster", node = %self.name);
            kernel
                .tasks
                .spawn(agent::accept_loop(self.clone(), listener).instrument(span));
        }
        Ok(bound)
    }

    /// Starts a call to `target` on `node`; `waiter` hears how it ends.
    pub fn call(
        self: &Arc<Self>,
        origin: Origin,
        node: &str,
        target: Target,
        payload: Vec<u8>,
        waiter: Waiter,
        timeout: Option<Duration>,
    ) {
        let job = Job::Call {
            origin,
            target,
            payload,
            waiter,
            timeout,
        };
        self.submit(node, job);
    }

    /// Sends to `target` on `node` without waiting for an answer.
    ///
    /// # Errors
    /// When the node is offline, unknown with `__nowaiting`, or down with
    /// its queue full.
    pub fn send(
        self: &Arc<Self>,
        origin: Origin,
        node: &str,
        target: Target,
        payload: Vec<u8>,
    ) -> Result<(), ClusterError> {
        let job = Job::Send {
            origin,
            target,
            payload,
            batched: None,
        };
        self.route(node, job).map_err(|(_, e)| e)
    }

    /// Sends the `count` messages whose payloads `records` holds
    /// ([`batch`](crate::transport::batch)) to `target` on `node`, as one frame.
    ///
    /// # Errors
    /// As [`send`](Self::send), for all of them.
    pub fn send_batch(
        self: &Arc<Self>,
        origin: Origin,
        node: &str,
        target: Target,
        records: Vec<u8>,
        count: u32,
    ) -> Result<(), ClusterError> {
        let job = Job::Send {
            origin,
            target,
            payload: records,
            batched: Some(count),
        };
        self.route(node, job).map_err(|(_, e)| e)
    }

    /// Sends a prepared frame to `node` (multicast), queued like a send.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    fn push(
        self: &Arc<Self>,
        node: &str,
        item: Outgoing<proto::Control, proto::Header>,
    ) -> Result<(), ClusterError> {
        self.route(node, Job::Item(item)).map_err(|(_, e)| e)
    }

    /// Asks `node` for the address of a name it registered; `waiter` gets
    /// it (4 bytes, little-endian) or an error. With `node` empty, asks
    /// discovery which node registered it: the answer is the address
    /// followed by that node's name.
    pub fn query(self: &Arc<Self>, tenant: TenantId, node: &str, name: String, waiter: Waiter) {
        if node.is_empty() {
            return self.find(tenant, name, waiter);
        }
        if node == self.name {
            let Some(kernel) = self.kernel() else { return };
            return match self.resolve_name(tenant, &name) {
                Some(a) => respond(&kernel, waiter, a.0.to_le_bytes().to_vec()),
                None => waiter.fail(
                    &kernel,
                    ErrorCause::UnknownAddress,
                    &format!("no name `{name}` on node `{node}`"),
                ),
            };
        }
        // The peer looks the name up in the caller's tenant's namespace.
        let name = crate::runtime::scoped(tenant, &name).into_owned();
        self.submit(node, Job::Query { name, waiter });
    }

    /// Answers `waiter` with the address and node of `name` (in `tenant`'s
    /// namespace) as discovery publishes it, or an error.
    fn find(self: &Arc<Self>, tenant: TenantId, name: String, waiter: Waiter) {
        let Some(kernel) = self.kernel() else { return };
        let Some(discovery) = self.discovery.get().cloned() else {
            let detail = format!(
                "cluster query of `{name}` without a node needs discovery (etcd) in the node file"
            );
            return waiter.fail(&kernel, ErrorCause::UnknownAddress, &detail);
        };
        let scoped = crate::runtime::scoped(tenant, &name).into_owned();
        let k = kernel.clone();
        kernel.tasks.spawn(async move {
            match discovery.find(&scoped).await {
                Ok(Some(entry)) => {
                    let mut answer = entry.address.to_le_bytes().to_vec();
                    answer.extend_from_slice(entry.node.as_bytes());
                    respond(&k, waiter, answer);
                }
                Ok(None) => waiter.fail(
                    &k,
                    ErrorCause::UnknownAddress,
                    &format!("no node registered `{name}` in the cluster"),
                ),
                Err(e) => waiter.fail(&k, ErrorCause::NodeDown, &e),
            }
        });
    }

    /// Applies a new table: moved nodes get new links, removed or offline
    /// nodes fail what they carry, and parked jobs for added nodes go.
    pub fn apply(self: &Arc<Self>, table: ClusterTable) {
        let table = Arc::new(table);
        self.table.store(table.clone());
        // In name order: the links a reload touches wake in the same order
        // on every run (a simulated run replays exactly).
        let mut senders: Vec<(String, Arc<Sender>)> = self
            .senders
            .pin()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        senders.sort_by(|a, b| a.0.cmp(&b.0));
        for (node, sender) in senders {
            match table.get(&node) {
                Some(NodeAddress::At(address)) => {
                    sender.retarget(address);
                    sender.retry_soon();
                }
                other => {
                    let _making = lock(&self.new_sender);
                    self.senders.pin().remove(&node);
                    let why = match other {
                        Some(NodeAddress::Departed) => {
                            format!(
                                "cluster node `{node}` left the cluster (its discovery entry went)"
                            )
                        }
                        Some(_) => format!(
                            "cluster node `{node}` is now offline (false in the cluster config)"
                        ),
                        None => {
                            format!("cluster node `{node}` was removed from the cluster config")
                        }
                    };
                    sender.close(&why);
                }
            }
        }
        let ready: Vec<(String, Vec<(u64, Job)>)> = {
            let mut waiting = lock(&self.waiting);
            let mut nodes: Vec<String> = waiting
                .keys()
                .filter(|n| table.get(n).is_some() || table.nowaiting)
                .cloned()
                .collect();
            nodes.sort();
            nodes
                .into_iter()
                .filter_map(|n| waiting.remove(&n).map(|jobs| (n, jobs)))
                .collect()
        };
        for (node, jobs) in ready {
            for (_, job) in jobs {
                self.submit(&node, job);
            }
        }
        self.groups_follow_table();
    }

    /// Counts (and logs, at most once a second) `n` sends from node `from`
    /// for `target` that this node could not deliver.
    pub(crate) fn send_undelivered(&self, from: &str, target: &str, why: &str, n: u64) {
        self.undelivered.count(from, target, why, n);
    }

    /// Sends from other nodes dropped for want of their service, since start.
    pub fn sends_undelivered(&self) -> u64 {
        self.undelivered.total.load(Ordering::Relaxed)
    }

    /// One-way messages (sends, multicast copies) to other nodes that this
    /// node took and then dropped, since start: no sender could be told.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Parses `text` as a cluster config and applies it.
    ///
    /// # Errors
    /// The parse error, naming the line and key.
    pub fn reload(self: &Arc<Self>, text: &str) -> Result<(), ClusterConfigError> {
        let table = ClusterTable::parse(text, std::path::Path::new("<reload>"))?;
        tracing::info!(nodes = table.nodes.len(), "cluster config reloaded");
        table.warn_unknown_options();
        self.apply(table);
        Ok(())
    }

    /// The `netstat` rows of this node's cluster links: to the nodes it
    /// calls, and from the nodes that call it.
    pub fn links(&self) -> Vec<crate::transport::LinkInfo> {
        let mut links: Vec<_> = self.senders.pin().values().map(|s| s.link_info()).collect();
        links.extend(lock(&self.inbound).iter().map(|(peer, from, stats)| {
            stats.info("cluster-in", peer.clone(), from.to_string(), 0)
        }));
        links
    }

    /// Registers `name` for `address`, for other nodes' `query` and calls by name.
    /// Names are per tenant (`tenant`'s namespace).
    /// With discovery, the name is published cluster-wide too.
    pub fn register(&self, tenant: TenantId, name: &str, address: Address) {
        let scoped = crate::runtime::scoped(tenant, name).into_owned();
        lock(&self.names).insert(scoped.clone(), address);
        if let Some(d) = self.discovery.get() {
            d.name_changed(discovery::NameChange::Put(scoped, address));
        }
    }

    /// Drops a name `tenant` registered.
    pub fn unregister(&self, tenant: TenantId, name: &str) {
        let scoped = crate::runtime::scoped(tenant, name).into_owned();
        lock(&self.names).remove(&scoped);
        if let Some(d) = self.discovery.get() {
            d.name_changed(discovery::NameChange::Delete(scoped));
        }
    }

    /// The address `name` has here for `tenant`: a name registered with
    /// `cluster.register`, else the node's own names.
    fn resolve_name(&self, tenant: TenantId, name: &str) -> Option<Address> {
        let key = crate::runtime::scoped(tenant, name);
        let registered = lock(&self.names).get(&*key).copied();
        registered.or_else(|| self.kernel().and_then(|k| k.query_name(tenant, name)))
    }

    /// A local address whose requests and sends go to `target` on `node`.
    /// It belongs to `tenant`: only its services can use it, and what it
    /// forwards travels as `tenant`'s.
    pub fn proxy(
        self: &Arc<Self>,
        tenant: &Arc<Tenant>,
        node: &str,
        target: Target,
    ) -> Option<Address> {
        let kernel = self.kernel()?;
        let mut endpoint = HostEndpoint::new(&kernel, "cluster-proxy", tenant.clone());
        let tenant = tenant.id;
        let address = endpoint.address();
        let cluster = self.clone();
        let node = node.to_string();
        let span = tracing::info_span!(parent: None, "cluster-proxy", %address, node = %node, target = %target);
        kernel.tasks.spawn(
            async move {
                while let Some(m) = endpoint.recv().await {
                    if m.wants_reply() {
                        let waiter = Waiter {
                            to: m.source,
                            session: m.session,
                        };
                        let payload = m.payload.into();
                        let origin = Origin {
                            tenant,
                            trace: m.trace,
                        };
                        cluster.call(origin, &node, target.clone(), payload, waiter, None);
                    } else if (m.kind == kind::TEXT || m.kind >= kind::USER)
                        && let Err(e) = cluster.send(
                            Origin {
                                tenant,
                                trace: m.trace,
                            },
                            &node,
                            target.clone(),
                            m.payload.into(),
                        )
                    {
                        tracing::debug!("proxy send dropped: {e}");
                    }
                }
            }
            .instrument(span),
        );
        Some(address)
    }
}

/// Multicast's way over the cluster links (weak: the cluster holds its
/// node's `Multicast`).
struct MulticastLinks {
    cluster: Weak<Cluster>,
    name: String,
}

impl MulticastLinks {
    fn cluster(&self) -> Result<Arc<Cluster>, NotCarried> {
        self.cluster.upgrade().ok_or_else(|| NotCarried {
            cause: ErrorCause::NodeDown,
            detail: "the node's cluster side has stopped".into(),
        })
    }
}

fn not_carried(e: ClusterError) -> NotCarried {
    NotCarried {
        cause: e.cause,
        detail: e.detail,
    }
}

impl ClusterCarrier for MulticastLinks {
    fn node_name(&self) -> &str {
        &self.name
    }

    fn control(&self, node: &str, control: ChannelControl) -> Result<(), NotCarried> {
        let item = Outgoing::Control(proto::Control::Channel(control));
        self.cluster()?.push(node, item).map_err(not_carried)
    }

    fn copy(&self, node: &str, copy: ChannelCopy, payload: bytes::Bytes) -> Result<(), NotCarried> {
        let cluster = self.cluster()?;
        let (packed, compressed) = cluster.settings.pack(payload.into());
        let header = proto::Header::Channel {
            copy,
            compressed,
            seq: 0,
        };
        cluster
            .push(node, Outgoing::Message(header, packed))
            .map_err(not_carried)
    }
}
