//! Discovery on etcd: the cluster table made from the nodes that publish
//! themselves under a prefix, instead of a cluster file.
//!
//! ```text
//!  node "game1": lease (TTL, kept alive) ── put <prefix>/nodes/game1 = {"address": "10.0.0.5:2528"}
//!                                          put <prefix>/names/<name> = {"node": "game1", "address": 42}
//!                                              (each cluster.register; deleted by unregister)
//!  every node:   get <prefix>/nodes/ → table, then watch from the next revision → table on each change
//!                                        └── Cluster::apply (the path of cluster.reload)
//! ```
//!
//! One task per node owns the etcd session ([`run`]): it grants the lease,
//! publishes the node and its registered names, reads and watches the
//! nodes, and keeps the lease alive. Any etcd error ends the session: the
//! last table stays in force (links keep working), the error is logged, and
//! a new session starts after a backoff with jitter, publishing everything
//! again under a new lease and reading the nodes afresh.
//!
//! A node whose entry goes (its lease expired: it died, or it stopped and
//! revoked it) stays in the table as [`NodeAddress::Departed`], so calls to
//! it fail at once instead of waiting for it as for a node never seen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    WatchOptions, WatchResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterTable, NodeAddress, lock};
use crate::runtime::Address;

pub use crate::config::EtcdUrl;

/// The keys of this cluster under the URL's prefix.
impl EtcdUrl {
    fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    fn name_key(&self, scoped_name: &str) -> String {
        format!("{}/names/{scoped_name}", self.prefix)
    }
}

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeEntry {
    /// Where other nodes reach its cluster listener.
    address: String,
    /// The node its calls go to while it fails its health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backup: Option<String>,
}

/// Which node serves a name registered cluster-wide, and at which address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameEntry {
    /// The node that registered it.
    pub node: String,
    /// The address on that node.
    pub address: u32,
}

/// A change to the names this node publishes.
#[derive(Debug)]
pub(super) enum NameChange {
    Put(String, Address),
    Delete(String),
}

/// Why an etcd session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("{0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the lease of this node's entry expired")]
    LeaseLost,
    #[error("etcd closed the watch")]
    WatchClosed,
}

/// The discovery side of a node's cluster: how to reach etcd, and the
/// client of the session now open (for cluster-wide name lookups).
pub(crate) struct Discovery {
    url: EtcdUrl,
    /// TLS to etcd (`discovery_tls`), its files read at start.
    tls: Option<TlsOptions>,
    node: String,
    entry: NodeEntry,
    ttl: Duration,
    client: Mutex<Option<Client>>,
    names: mpsc::UnboundedSender<NameChange>,
}

impl Discovery {
    /// Starts discovery for `cluster`: this node is published at `advertise`.
    pub(super) fn start(
        cluster: &Arc<Cluster>,
        (url, tls): (EtcdUrl, Option<TlsOptions>),
        advertise: String,
        backup: Option<String>,
        ttl: Duration,
    ) -> Arc<Discovery> {
        let (names, rx) = mpsc::unbounded_channel();
        let discovery = Arc::new(Discovery {
            url,
            tls,
            node: cluster.name.clone(),
            entry: NodeEntry {
                address: advertise,
                backup,
            },
            ttl,
            client: Mutex::new(None),
            names,
        });
        if let Some(kernel) = cluster.kernel() {
            let task = run(
                Arc::downgrade(cluster),
                discovery.clone(),
                rx,
                cluster.cancel.clone(),
            );
            kernel.tasks.spawn(tracing::Instrument::instrument(
                task,
                tracing::info_span!("discovery", node = %cluster.name),
            ));
        }
        discovery
    }

    /// Publishes (or withdraws) a registered name; kept across sessions.
    pub(super) fn name_changed(&self, change: NameChange) {
        let _ = self.names.send(change);
    }

    /// Which node serves `scoped_name`, as published in etcd.
    ///
    /// # Errors
    /// When etcd is not reachable now.
    pub(super) async fn find(&self, scoped_name: &str) -> Result<Option<NameEntry>, String> {
        let client = lock(&self.client).clone();
        let mut client =
            client.ok_or_else(|| "etcd is not reachable; cannot look the name up".to_string())?;
        let resp = client
            .get(self.url.name_key(scoped_name), None)
            .await
            .map_err(|e| format!("etcd: {e}"))?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
    }
}

/// Runs etcd sessions until the node stops, each after a backoff from the
/// last one's failure.
async fn run(
    cluster: Weak<Cluster>,
    discovery: Arc<Discovery>,
    mut names: mpsc::UnboundedReceiver<NameChange>,
    cancel: CancellationToken,
) {
    use backon::BackoffBuilder;
    let backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    let mut view = View::default();
    loop {
        let mut healthy = false;
        let end = session(
            &cluster,
            &discovery,
            &mut names,
            &mut view,
            &cancel,
            &mut healthy,
        )
        .await;
        *lock(&discovery.client) = None;
        match end {
            Ok(()) => return,
            Err(e) => tracing::warn!(
                "etcd discovery: {e}; the last cluster table stays in force, retrying"
            ),
        }
        if healthy {
            delays = backoff();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(2));
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The nodes etcd shows now, and those that were there and went.
#[derive(Default)]
struct View {
    members: BTreeMap<String, NodeEntry>,
    departed: BTreeSet<String>,
}

impl View {
    fn join(&mut self, node: String, entry: NodeEntry) {
        self.departed.remove(&node);
        self.members.insert(node, entry);
    }

    fn leave(&mut self, node: &str) {
        if self.members.remove(node).is_some() {
            self.departed.insert(node.to_string());
        }
    }

    /// Replaces the members with a fresh read; those missing from it went.
    fn resync(&mut self, fresh: BTreeMap<String, NodeEntry>) {
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|n| !fresh.contains_key(*n))
            .cloned()
            .collect();
        self.departed.extend(gone);
        for node in fresh.keys() {
            self.departed.remove(node);
        }
        self.members = fresh;
    }

    fn table(&self) -> ClusterTable {
        let mut nodes: BTreeMap<String, NodeAddress> = self
            .departed
            .iter()
            .map(|n| (n.clone(), NodeAddress::Departed))
            .collect();
        nodes.extend(
            self.members
                .iter()
                .map(|(n, e)| (n.clone(), NodeAddress::At(e.address.clone()))),
        );
        let backups = self
            .members
            .iter()
            .filter_map(|(n, e)| Some((n.clone(), e.backup.clone()?)))
            .collect();
        ClusterTable {
            nodes,
            backups,
            ..ClusterTable::default()
        }
    }
}

/// The node name of a key under `<prefix>/nodes/`, and its entry.
fn member(url: &EtcdUrl, key: &[u8], value: &[u8]) -> Option<(String, NodeEntry)> {
    let key = std::str::from_utf8(key).ok()?;
    let node = key.strip_prefix(&url.nodes())?;
    match serde_json::from_slice::<NodeEntry>(value) {
        Ok(entry) => Some((node.to_string(), entry)),
        Err(e) => {
            tracing::warn!(
                key,
                "etcd discovery: ignoring an entry that is not a node: {e}"
            );
            None
        }
    }
}

fn apply(cluster: &Weak<Cluster>, view: &View) {
    if let Some(cluster) = cluster.upgrade() {
        let table = view.table();
        if *cluster.table() != table {
            tracing::info!(
                nodes = view.members.len(),
                departed = view.departed.len(),
                "cluster table from etcd"
            );
            cluster.apply(table);
        }
    }
}

/// etcd's TLS settings from the node file's `discovery_tls`, its files
/// read now so a missing one fails the node at start.
///
/// # Errors
/// A file that cannot be read, named.
pub(super) fn etcd_tls(files: &crate::config::EtcdTls) -> Result<TlsOptions, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&files.ca)?));
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(name) = &files.name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

/// One etcd session: publish, read, then follow changes until an error or
/// the node's stop (`Ok`). `healthy` is set once it reached the watch.
async fn session(
    cluster: &Weak<Cluster>,
    discovery: &Discovery,
    names: &mut mpsc::UnboundedReceiver<NameChange>,
    view: &mut View,
    cancel: &CancellationToken,
    healthy: &mut bool,
) -> Result<(), SessionEnd> {
    let url = &discovery.url;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let mut endpoints = url.endpoints.clone();
    if let Some(tls) = &discovery.tls {
        options = options.with_tls(tls.clone());
        for e in &mut endpoints {
            if let Some(host) = e.strip_prefix("http://") {
                *e = format!("https://{host}");
            }
        }
    }
    let mut client = Client::connect(&endpoints, Some(options)).await?;
    let ttl = i64::try_from(discovery.ttl.as_secs()).unwrap_or(i64::MAX);
    let lease = client.lease_grant(ttl, None).await?.id();
    let with_lease = || Some(PutOptions::new().with_lease(lease));
    let entry = serde_json::to_vec(&discovery.entry).unwrap_or_default();
    client
        .put(url.node_key(&discovery.node), entry, with_lease())
        .await?;
    // Changes queued so far are in the snapshot read next; later ones are
    // applied in order after it (a put or delete twice does no harm).
    while names.try_recv().is_ok() {}
    let registered: Vec<(String, Address)> = match cluster.upgrade() {
        Some(c) => lock(&c.names)
            .iter()
            .map(|(n, a)| (n.clone(), *a))
            .collect(),
        None => return Ok(()),
    };
    for (name, address) in registered {
        put_name(&mut client, discovery, &name, address, lease).await?;
    }
    let (mut keeper, mut alive) = client.lease_keep_alive(lease).await?;
    let read = client
        .get(url.nodes(), Some(GetOptions::new().with_prefix()))
        .await?;
    let fresh = read
        .kvs()
        .iter()
        .filter_map(|kv| member(url, kv.key(), kv.value()))
        .collect();
    view.resync(fresh);
    apply(cluster, view);
    let revision = read.header().map_or(0, |h| h.revision());
    let mut watch = client
        .watch(
            url.nodes(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    *lock(&discovery.client) = Some(client.clone());
    *healthy = true;
    tracing::info!(lease, "etcd discovery: published and watching");
    let mut keep_alive = tokio::time::interval(discovery.ttl / 3);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                // Leave at once rather than when the lease would expire.
                let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
                return Ok(());
            }
            _ = keep_alive.tick() => keeper.keep_alive().await?,
            answer = alive.message() => match answer? {
                Some(r) if r.ttl() > 0 => {}
                _ => return Err(SessionEnd::LeaseLost),
            },
            event = watch.message() => {
                let event = event?.ok_or(SessionEnd::WatchClosed)?;
                follow(url, view, &event)?;
                apply(cluster, view);
            }
            Some(change) = names.recv() => match change {
                NameChange::Put(name, address) => {
                    put_name(&mut client, discovery, &name, address, lease).await?;
                }
                NameChange::Delete(name) => {
                    client.delete(url.name_key(&name), None).await?;
                }
            },
        }
    }
}

/// Applies one watch response to the view.
fn follow(url: &EtcdUrl, view: &mut View, response: &WatchResponse) -> Result<(), SessionEnd> {
    if response.canceled() {
        return Err(SessionEnd::WatchClosed);
    }
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        match event.event_type() {
            EventType::Put => {
                if let Some((node, entry)) = member(url, kv.key(), kv.value()) {
                    view.join(node, entry);
                }
            }
            EventType::Delete => {
                if let Some(node) = std::str::from_utf8(kv.key())
                    .ok()
                    .and_then(|k| k.strip_prefix(&url.nodes()))
                {
                    view.leave(node);
                }
            }
        }
    }
    Ok(())
}

async fn put_name(
    client: &mut Client,
    discovery: &Discovery,
    scoped_name: &str,
    address: Address,
    lease: i64,
) -> Result<(), SessionEnd> {
    let entry = NameEntry {
        node: discovery.node.clone(),
        address: address.0,
    };
    client
        .put(
            discovery.url.name_key(scoped_name),
            serde_json::to_vec(&entry).unwrap_or_default(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_one_or_many_endpoints_and_need_a_prefix() {
        let u = EtcdUrl::parse("etcd://127.0.0.1:2379/game").expect("parses");
        assert_eq!(u.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(u.node_key("a"), "/game/nodes/a");
        let u = EtcdUrl::parse("etcd://e1:2379,e2:2379/a/b/").expect("parses");
        assert_eq!(u.endpoints.len(), 2);
        assert_eq!(u.prefix, "/a/b");
        assert!(EtcdUrl::parse("http://e1:2379/x").is_err());
        assert!(EtcdUrl::parse("etcd://e1:2379").is_err());
        assert!(EtcdUrl::parse("etcd://e1/x").is_err());
    }

    #[test]
    fn a_node_that_goes_stays_as_departed_until_it_returns() {
        let at = |address: &str| NodeEntry {
            address: address.into(),
            backup: None,
        };
        let mut v = View::default();
        v.join("a".into(), at("h:1"));
        v.join("b".into(), at("h:2"));
        v.leave("b");
        assert_eq!(v.table().get("b"), Some(&NodeAddress::Departed));
        v.resync(BTreeMap::from([("b".to_string(), at("h:3"))]));
        assert_eq!(v.table().get("a"), Some(&NodeAddress::Departed));
        assert_eq!(v.table().get("b"), Some(&NodeAddress::At("h:3".into())));
        v.leave("never-seen");
        assert_eq!(v.table().get("never-seen"), None);
    }
}
