//! Harbor: up to 255 nodes sharing one 32-bit address space.
//!
//! ```text
//!            master (directory + global names)
//!           /        |         \          one master link per node (node dials)
//!      node 1 ─── node 2 ─── node 3       one peer link per pair (higher id dials lower)
//! ```
//!
//! The low 8 bits of an address name its node. `Kernel::deliver` hands a
//! message for another harbor id to `Harbor::forward`, which puts it on
//! that node's `Peer` channel; the peer's task owns the connection and
//! writes it out through the transport. On the other side the peer's
//! [`LinkHandler`] delivers it into the local mailbox. A guest sees no
//! difference except latency.
//!
//! Who owns what:
//! - `Harbor` (one per harbor node; the node's `Kernel` reaches it as its
//!   `Remote` port): the peer
//!   table (256 slots), the directory the master sent, the global-name
//!   replica, waiting `queryname`s and up/down watchers.
//! - `Peer` (one per other node): the sending side of its queue and the
//!   requests in flight to it. One task per peer owns the receiving side
//!   and the connection, dials (or waits to be dialled), and on a drop
//!   fails every request in flight with `NodeDown`.
//! - [`master::Master`]: directory and global names, in a standalone node
//!   or on its own; it tells every node of joins, leaves and names.
//!
//! Files by role: `mod.rs` the `Harbor` (peer table, watchers,
//! forwarding), `names.rs` the global names replica, `peer.rs` the peer links, `master_link.rs` this
//! node's link to the master, `master.rs` the master itself.
//!
//! Every session ends: a request to a node that is down fails at once
//! (`node-down`), a request in flight when its link drops gets an `error`
//! with cause `NodeDown`, and a `queryname` ends with the address, its
//! caller's timeout, or an error when the master is unreachable.

pub mod master;
mod master_link;
mod names;
mod peer;
pub mod proto;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use backon::BackoffBuilder;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::HarborConfig;
use crate::multicast::proto::ChannelControl;
use crate::multicast::{HarborCarrier, Multicast};
pub(crate) use crate::runtime::Waiter;
use crate::runtime::{
    Address, ErrorCause, GlobalNameError, HarborId, Kernel, Message, Remote, SendError, TenantId,
    kind,
};
use crate::transport::batch;
use crate::transport::resume::{Inbox, Numbered, Outbox};
use crate::transport::tls::Tls;
use crate::transport::{Connection, Envelope, LinkConfig, Net, Outgoing};
use master_link::master_loop;
use names::Names;
use peer::{Inflight, Peer, accept_loop, peer_task};
use proto::{Control, MASTER_NAME, MASTER_PROTOCOL};

/// Why a harbor node could not start or a harbor request failed.
#[derive(Debug, thiserror::Error)]
pub enum HarborError {
    /// A listener could not be bound.
    #[error("harbor {id}: cannot listen on {address}: {source}")]
    Listen {
        /// This node's harbor id.
        id: u8,
        /// The address asked for.
        address: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The master could not be reached or refused the join.
    #[error("harbor {id}: joining the master at {master}: {reason}")]
    Join {
        /// This node's harbor id.
        id: u8,
        /// The master's address.
        master: String,
        /// Why.
        reason: String,
    },
    /// `tls`: a certificate, key or CA that cannot be used, or a
    /// certificate that does not name this node.
    #[error("[harbor] tls: {0}")]
    Tls(crate::transport::tls::TlsError),
}

/// The settings every link of a harbor node is made with.
#[derive(Clone)]
struct LinkSettings {
    secret: Arc<[u8]>,
    heartbeat: Duration,
    dead_after: Duration,
    max_payload: usize,
    /// TLS for every link (master and peers), named for harbor.
    tls: Option<Tls>,
    /// Where the links' sockets come from.
    net: Arc<dyn Net>,
}

impl LinkSettings {
    fn config(&self, protocol: &str, name: String) -> LinkConfig {
        let mut c = LinkConfig::new(protocol, name, self.secret.clone());
        c.heartbeat = self.heartbeat;
        c.dead_after = self.dead_after;
        c.max_payload = self.max_payload;
        c
    }
}

/// What a watcher waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Harbor id N is connected.
    Connect(u8),
    /// Harbor id N is disconnected.
    Link(u8),
    /// The link to the master is down.
    LinkMaster,
}

/// Bytes waiting for one peer's link (payloads and a small overhead per
/// message) past which multicast copies for it are dropped, counted and
/// logged: a slow node cannot make a publisher's node grow without bound.
pub const MULTICAST_BACKLOG: usize = 64 << 20;

/// The harbor side of one node.
pub(crate) struct Harbor {
    pub id: HarborId,
    kernel: Weak<Kernel>,
    links: LinkSettings,
    /// Where this node accepts peer links.
    pub listen: SocketAddr,
    /// Where its peers are told to dial it: the configured address, with
    /// the port bound when it asked for port 0.
    advertised: String,
    /// The master's address.
    pub master_address: String,
    peers: Vec<ArcSwapOption<Peer>>,
    /// Serializes peer creation so there is one task per peer.
    peer_lock: Mutex<()>,
    /// The master's link, while it is up.
    master_tx: Mutex<Option<mpsc::UnboundedSender<Outgoing<Control>>>>,
    names: Mutex<Names>,
    watchers: Mutex<Vec<(Watch, Waiter)>>,
    next_request: AtomicU32,
    /// Messages for a down node dropped where no one could be told
    /// (multicast copies, sends queued when the link dropped).
    dropped: AtomicU64,
    /// Sends to a down node refused back to their sender.
    refused: AtomicU64,
    cancel: CancellationToken,
    /// The master this node runs, when it is `standalone`.
    master: Mutex<Option<master::Master>>,
    /// The node's channels, which peer links carry copies for.
    multicast: Arc<Multicast>,
}

impl Harbor {
    /// Binds the listeners, starts the master when standalone, joins the
    /// master and starts the peer links.
    ///
    /// # Errors
    /// [`HarborError`] when a listener cannot be bound or the join fails.
    pub(crate) async fn start(
        kernel: &Arc<Kernel>,
        multicast: Arc<Multicast>,
        config: &HarborConfig,
        net: Arc<dyn Net>,
    ) -> Result<Arc<Harbor>, HarborError> {
        let id = config.id;
        let tls = match &config.tls {
            Some(files) => {
                let tls = Tls::load(files).map_err(HarborError::Tls)?.for_harbor();
                tls.check_own_name(&id.to_string())
                    .map_err(HarborError::Tls)?;
                if config.standalone.is_some() {
                    tls.check_own_name(MASTER_NAME).map_err(HarborError::Tls)?;
                }
                Some(tls)
            }
            None => None,
        };
        let links = LinkSettings {
            secret: config.secret_bytes().into(),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            dead_after: Duration::from_millis(config.dead_after_ms),
            max_payload: kernel.limits.max_payload,
            tls,
            net,
        };
        let cancel = kernel.shutdown.child_token();
        let mut running_master = None;
        let master_address = match (&config.master, &config.standalone) {
            (_, Some(listen)) => {
                let m = master::Master::start(
                    links.net.as_ref(),
                    listen,
                    links.secret.clone(),
                    links.heartbeat,
                    links.dead_after,
                    links.tls.clone(),
                )
                .await
                .map_err(|source| HarborError::Listen {
                    id,
                    address: listen.clone(),
                    source,
                })?;
                // A master on every interface is dialled on this host's own.
                let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
                let address =
                    crate::transport::net::reachable_at(&m.address().to_string(), loopback);
                running_master = Some(m);
                address
            }
            (Some(master), None) => master.clone(),
            (None, None) => {
                return Err(HarborError::Join {
                    id,
                    master: String::new(),
                    reason: "neither `master` nor `standalone` is set".into(),
                });
            }
        };
        let listener = links
            .net
            .bind(&config.address)
            .map_err(|source| HarborError::Listen {
                id,
                address: config.address.clone(),
                source,
            })?;
        let listen = listener
            .local_addr()
            .map_err(|source| HarborError::Listen {
                id,
                address: config.address.clone(),
                source,
            })?;
        tracing::info!(harbor = id, address = %listen, "harbor listening");
        let harbor = Arc::new(Harbor {
            id: HarborId(id),
            kernel: Arc::downgrade(kernel),
            links,
            listen,
            advertised: crate::transport::net::with_port(&config.address, listen.port()),
            master_address,
            peers: (0..256).map(|_| ArcSwapOption::empty()).collect(),
            peer_lock: Mutex::new(()),
            master_tx: Mutex::new(None),
            names: Mutex::new(Names::default()),
            watchers: Mutex::new(Vec::new()),
            next_request: AtomicU32::new(1),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cancel,
            master: Mutex::new(running_master),
            multicast,
        });
        let links = Arc::new(MulticastLinks(Arc::downgrade(&harbor)));
        harbor.multicast.carry_over_harbor(links);
        let join_failed = |reason: String| HarborError::Join {
            id,
            master: harbor.master_address.clone(),
            reason,
        };
        let span = tracing::info_span!("harbor", id);
        let (ready_tx, ready_rx) = oneshot::channel();
        kernel
            .tasks
            .spawn(master_loop(harbor.clone(), ready_tx).instrument(span.clone()));
        let joined = match tokio::time::timeout(harbor.links.dead_after * 2, ready_rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("node stopped".to_string()),
            Err(_) => Err(format!(
                "no answer within {:?}",
                harbor.links.dead_after * 2
            )),
        };
        if let Err(reason) = joined {
            harbor.stop().await;
            return Err(join_failed(reason));
        }
        kernel
            .tasks
            .spawn(accept_loop(harbor.clone(), listener).instrument(span));
        Ok(harbor)
    }

    fn kernel(&self) -> Option<Arc<Kernel>> {
        self.kernel.upgrade()
    }

    fn name(&self) -> String {
        self.id.0.to_string()
    }

    /// Sends `message` to `dest` on another node.
    ///
    /// # Errors
    /// `NodeDown` when no link to its node exists.
    pub fn forward(&self, dest: Address, message: Message) -> Result<(), SendError> {
        let harbor = dest.harbor().0;
        let slot = self.peers[usize::from(harbor)].load();
        let Some(peer) = slot.as_deref() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::NodeDown(dest));
        };
        let envelope = envelope_of(dest, &message, 0);
        let item = Outgoing::Message(envelope, message.payload.into());
        if message.kind == kind::REQUEST && message.session != 0 {
            let mut inflight = peer.inflight();
            // Closed, or the last attempt to link failed and the next waits
            // for its backoff: the call fails now rather than waiting.
            if inflight.closed || inflight.unreachable {
                return Err(SendError::NodeDown(dest));
            }
            inflight.open((message.source.0, message.session));
            if !peer.send(item) {
                inflight.close((message.source.0, message.session));
                return Err(SendError::NodeDown(dest));
            }
        } else if !peer.send(item) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::NodeDown(dest));
        }
        Ok(())
    }

    /// Sends `run` (from one sender, all for `dest`) in order: one-way
    /// messages alike in all but their payload go as one batched envelope
    /// (one frame, one number, one entry kept until acknowledged); the
    /// others one by one, as [`forward`](Self::forward) sends them.
    ///
    /// # Errors
    /// `NodeDown` for the first message that could not go, by its place in
    /// the run; the ones after it did not go either.
    pub fn forward_run(
        &self,
        dest: Address,
        run: &mut Vec<Message>,
    ) -> Result<(), (usize, SendError)> {
        let mut sent = 0;
        let mut messages = run.drain(..).peekable();
        while let Some(first) = messages.next() {
            let mut alike = Vec::new();
            while let Some(next) = messages.next_if(|m| batches_with(&first, m)) {
                alike.push(next);
            }
            let count = 1 + alike.len();
            let result = if alike.is_empty() {
                self.forward(dest, first)
            } else {
                self.forward_batch(dest, first, alike)
            };
            result.map_err(|e| (sent, e))?;
            sent += count;
        }
        Ok(())
    }

    /// Sends `first` and `rest` (alike: [`batches_with`]) as one envelope.
    fn forward_batch(
        &self,
        dest: Address,
        first: Message,
        rest: Vec<Message>,
    ) -> Result<(), SendError> {
        let slot = self.peers[usize::from(dest.harbor().0)].load();
        let Some(peer) = slot.as_deref() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::NodeDown(dest));
        };
        let size = rest
            .iter()
            .map(|m| m.payload.len() + batch::HEADER)
            .sum::<usize>();
        let mut records = Vec::with_capacity(first.payload.len() + batch::HEADER + size);
        batch::push(&mut records, &first.payload);
        for m in &rest {
            batch::push(&mut records, &m.payload);
        }
        let batched = u32::try_from(1 + rest.len()).unwrap_or(u32::MAX);
        let envelope = envelope_of(dest, &first, batched);
        if !peer.send(Outgoing::Message(envelope, records)) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::NodeDown(dest));
        }
        Ok(())
    }

    /// Sends a control message to harbor `node`; false if it is not known.
    fn control(&self, node: u8, control: Control) -> bool {
        self.control_or_message(node, Outgoing::Control(control))
    }

    /// Sends a multicast copy for `channel` to harbor `node` (a publish
    /// for the channel's owner, or a delivery for its subscribers); false
    /// when it was dropped (counted).
    fn multicast_copy(
        &self,
        node: u8,
        (tenant, channel): (TenantId, u32),
        source: Address,
        payload: bytes::Bytes,
    ) -> bool {
        let envelope = Envelope {
            dest: 0,
            source: source.0,
            session: channel,
            kind: kind::MULTICAST,
            tenant: tenant.0,
            trace: 0,
            seq: 0,
            batched: 0,
        };
        let slot = self.peers[usize::from(node)].load();
        let Some(peer) = slot.as_deref() else {
            self.count_dropped(node, 1);
            return false;
        };
        if peer.backlog.load(Ordering::Relaxed) >= MULTICAST_BACKLOG {
            self.count_dropped(node, 1);
            return false;
        }
        let sent = peer.send(Outgoing::Message(envelope, payload.into()));
        if !sent {
            self.count_dropped(node, 1);
        }
        sent
    }

    fn control_or_message(&self, node: u8, item: Outgoing<Control>) -> bool {
        let slot = self.peers[usize::from(node)].load();
        slot.as_deref().is_some_and(|peer| peer.send(item))
    }

    /// Tells `watcher` when `target`, on another node, ends; at once if
    /// its node is down.
    pub fn monitor(&self, tenant: TenantId, watcher: Address, target: Address) {
        let harbor = target.harbor().0;
        let slot = self.peers[usize::from(harbor)].load();
        let sent = slot.as_deref().is_some_and(|peer| {
            lock(&peer.monitors).insert((watcher.0, target.0));
            let control = Control::Monitor {
                tenant: tenant.0,
                watcher: watcher.0,
                target: target.0,
            };
            peer.send(Outgoing::Control(control))
        });
        if !sent && let Some(kernel) = self.kernel() {
            let reason = format!("harbor {harbor} is down");
            let _ = kernel.deliver(watcher, crate::runtime::exit_notice(target, &reason));
        }
    }

    /// Stops a [`monitor`](Self::monitor).
    pub fn demonitor(&self, watcher: Address, target: Address) {
        let slot = self.peers[usize::from(target.harbor().0)].load();
        if let Some(peer) = slot.as_deref()
            && lock(&peer.monitors).remove(&(watcher.0, target.0))
        {
            let control = Control::Demonitor {
                watcher: watcher.0,
                target: target.0,
            };
            let _ = peer.send(Outgoing::Control(control));
        }
    }

    fn count_dropped(&self, harbor: u8, n: u64) {
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        // Logged each time the total passes a power of two, so a flood to
        // a dead node stays readable.
        if before.leading_zeros() != after.leading_zeros() {
            tracing::warn!(
                harbor,
                dropped_total = after,
                "messages to a node that is down were dropped"
            );
        }
    }

    /// Messages dropped because their node was down, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends refused because their node was down (the sender was told,
    /// with node-down), since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The harbor ids this node has a live link to.
    pub fn connected(&self) -> Vec<u8> {
        (1..=255u8)
            .filter(|&i| {
                self.peers[usize::from(i)]
                    .load()
                    .as_deref()
                    .is_some_and(|p| p.up.load(Ordering::Acquire))
            })
            .collect()
    }

    /// The `netstat` rows of this node's links to other harbor nodes.
    pub fn links(&self) -> Vec<crate::transport::LinkInfo> {
        (1..=255u8)
            .filter_map(|i| self.peers[usize::from(i)].load_full())
            .map(|p| {
                let address = lock(&p.address).clone().unwrap_or_default();
                let queued = p.backlog.load(Ordering::Relaxed);
                p.stats.info("harbor", p.id.to_string(), address, queued)
            })
            .collect()
    }

    /// Whether the link to the master is up.
    pub fn master_up(&self) -> bool {
        self.master_tx().is_some()
    }

    fn master_tx(&self) -> Option<mpsc::UnboundedSender<Outgoing<Control>>> {
        self.master_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Tells `waiter` when `watch` holds (at once if it holds now).
    pub fn watch(&self, watch: Watch, waiter: Waiter) {
        let Some(kernel) = self.kernel() else { return };
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if self.watch_holds(watch) {
            drop(watchers);
            return waiter.respond(&kernel, waiter.to, Vec::new());
        }
        watchers.push((watch, waiter));
    }

    fn watch_holds(&self, watch: Watch) -> bool {
        match watch {
            Watch::Connect(id) => self.peer_up(id),
            Watch::Link(id) => !self.peer_up(id),
            Watch::LinkMaster => !self.master_up(),
        }
    }

    fn peer_up(&self, id: u8) -> bool {
        self.peers[usize::from(id)]
            .load()
            .as_deref()
            .is_some_and(|p| p.up.load(Ordering::Acquire))
    }

    /// Answers every watcher whose condition holds now.
    fn fire_watchers(&self) {
        let Some(kernel) = self.kernel() else { return };
        let fired: Vec<Waiter> = {
            let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            let mut fired = Vec::new();
            watchers.retain(|&(w, waiter)| {
                let holds = self.watch_holds(w);
                if holds {
                    fired.push(waiter);
                }
                !holds
            });
            fired
        };
        for w in fired {
            w.respond(&kernel, w.to, Vec::new());
        }
    }

    /// The peer for harbor `id`, made (with its task) if it does not exist.
    fn ensure_peer(self: &Arc<Self>, id: u8, address: Option<String>) -> Option<Arc<Peer>> {
        if id == 0 || id == self.id.0 {
            return None;
        }
        let _guard = self.peer_lock.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &self.peers[usize::from(id)];
        if let Some(p) = slot.load_full() {
            if address.is_some() {
                *lock(&p.address) = address;
            }
            return Some(p);
        }
        let kernel = self.kernel()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (incoming, incoming_rx) = mpsc::unbounded_channel();
        let peer = Arc::new(Peer {
            id,
            tx,
            incoming,
            inflight: Mutex::new(Inflight::default()),
            monitors: Mutex::new(HashSet::new()),
            backlog: Arc::default(),
            up: AtomicBool::new(false),
            stats: Arc::default(),
            address: Mutex::new(address.clone()),
            gone: self.cancel.child_token(),
            outbox: Mutex::new(Outbox::new(rand::random())),
            inbox: Mutex::new(Inbox::default()),
        });
        slot.store(Some(peer.clone()));
        // The higher id dials, so each pair has one link.
        let dial = if id < self.id.0 { address } else { None };
        let task = peer_task(self.clone(), peer.clone(), rx, incoming_rx, dial);
        kernel.spawn_beside_services(task.instrument(tracing::info_span!(
            "harbor",
            id = self.id.0,
            peer = id
        )));
        Some(peer)
    }

    /// Forgets harbor `id`: its link closes and its names go.
    fn remove_peer(&self, id: u8) {
        if let Some(peer) = self.peers[usize::from(id)].swap(None) {
            peer.gone.cancel();
        }
        if let Some(kernel) = self.kernel() {
            self.multicast.node_down(&kernel, id);
        }
        let gone: Vec<String> = {
            let mut names = self.names();
            let gone: Vec<String> = names
                .table
                .iter()
                .filter(|(_, a)| a.harbor().0 == id)
                .map(|(n, _)| n.clone())
                .collect();
            #[cfg(test)]
            let gone = if crate::sim::broken(crate::sim::Break::KeepNames) {
                Vec::new()
            } else {
                gone
            };
            for n in &gone {
                names.table.remove(n);
            }
            gone
        };
        if !gone.is_empty() {
            tracing::info!(
                peer = id,
                names = gone.len(),
                "global names of a node that left removed"
            );
        }
        self.fire_watchers();
    }

    /// Fails every request in flight to `peer` and drops what is queued
    /// for it. With `close`, nothing more can be sent to it.
    fn fail_inflight(
        &self,
        peer: &Peer,
        rx: &mut mpsc::UnboundedReceiver<Outgoing<Control>>,
        close: bool,
        why: &str,
    ) {
        let (calls, dropped) = {
            let mut inflight = peer.inflight();
            inflight.closed |= close;
            // Kept for the next link; none comes for a peer that left.
            let kept = if close {
                lock(&peer.outbox).drop_kept() as u64
            } else {
                0
            };
            let calls = std::mem::take(&mut inflight.calls);
            #[cfg(test)]
            let calls = if crate::sim::broken(crate::sim::Break::KeepCallsInFlight) {
                std::collections::HashMap::new()
            } else {
                calls
            };
            // Drained under the lock: a request queued after this point is
            // in the next set, never dropped unanswered.
            let mut dropped = kept;
            while let Ok(item) = rx.try_recv() {
                peer.backlog.fetch_sub(item.weight(), Ordering::Relaxed);
                if let Outgoing::Message(e, _) = item
                    && !(e.kind == kind::REQUEST && e.session != 0)
                {
                    dropped += e.messages() as u64;
                }
            }
            (calls, dropped)
        };
        if dropped > 0 {
            self.count_dropped(peer.id, dropped);
        }
        let Some(kernel) = self.kernel() else { return };
        let monitors = std::mem::take(&mut *lock(&peer.monitors));
        for (watcher, target) in monitors {
            let reason = format!("harbor {} is down: {why}", peer.id);
            let notice = crate::runtime::exit_notice(Address(target), &reason);
            let _ = kernel.deliver(Address(watcher), notice);
        }
        if !calls.is_empty() {
            tracing::warn!(
                peer = peer.id,
                calls = calls.values().sum::<u32>(),
                "failing calls in flight: {why}"
            );
        }
        let detail = format!("harbor {} is down: {why}", peer.id);
        // In order: a simulated run replays exactly.
        let mut calls: Vec<_> = calls.into_iter().collect();
        calls.sort_unstable();
        for ((caller, session), n) in calls {
            for _ in 0..n {
                let _ = kernel.deliver(
                    Address(caller),
                    Message::error(Address(0), session, ErrorCause::NodeDown, &detail),
                );
            }
        }
    }

    /// Connects to the master, joins, and returns the link for its loop.
    async fn join(&self) -> Result<Connection<Control>, String> {
        let config = self.links.config(MASTER_PROTOCOL, self.name());
        let tls = self.links.tls.as_ref().map(|t| (t, MASTER_NAME));
        let net = self.links.net.as_ref();
        let mut conn = Connection::connect_secured(net, &self.master_address, config, tls)
            .await
            .map_err(|e| e.to_string())?;
        conn.send_control(Control::Join {
            id: self.id.0,
            address: self.advertised.clone(),
        });
        Ok(conn)
    }

    /// Applies the master's answer to a join.
    fn apply_joined(self: &Arc<Self>, nodes: Vec<(u8, String)>) {
        let present: HashSet<u8> = nodes.iter().map(|(id, _)| *id).collect();
        for id in 1..=255u8 {
            if id != self.id.0
                && !present.contains(&id)
                && self.peers[usize::from(id)].load().is_some()
            {
                self.remove_peer(id);
            }
        }
        for (id, address) in nodes {
            self.ensure_peer(id, Some(address));
        }
        let own: Vec<(String, Address)> = {
            let mut replica = self.names();
            // The master sends its names next, one `Name` each.
            replica.table.clear();
            let own: Vec<(String, Address)> =
                replica.own.iter().map(|(n, a)| (n.clone(), *a)).collect();
            for (n, a) in &own {
                replica.table.insert(n.clone(), *a);
            }
            own
        };
        for (name, address) in own {
            let _ = self.send_master(Control::Register {
                request: 0,
                name,
                address: address.0,
            });
        }
        self.wake_queries();
    }

    /// Stops the master this node runs, if any.
    pub async fn stop(&self) {
        self.cancel.cancel();
        let master = self.master.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(m) = master {
            m.stop().await;
        }
    }
}

/// Locks a mutex, going on if a panicking thread poisoned it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The envelope `message` travels in to `dest`, the first of `batched`
/// records (0: the payload is the message).
fn envelope_of(dest: Address, message: &Message, batched: u32) -> Envelope {
    Envelope {
        dest: dest.0,
        source: message.source.0,
        session: message.session,
        kind: message.kind,
        tenant: message.tenant.0,
        trace: message.trace,
        seq: 0,
        batched,
    }
}

/// Whether a message of `kind` with `session` may travel in a batched
/// envelope: a kind a guest may send, with no answer awaited.
fn batchable(kind: u8, session: u32) -> bool {
    !(kind::is_reserved(kind) || kind == kind::REQUEST && session != 0)
}

/// Whether `next` can share `first`'s batched envelope: both batchable and
/// alike in all but their payload.
fn batches_with(first: &Message, next: &Message) -> bool {
    batchable(first.kind, first.session)
        && (
            first.kind,
            first.source,
            first.session,
            first.tenant,
            first.trace,
        ) == (
            next.kind,
            next.source,
            next.session,
            next.tenant,
            next.trace,
        )
}

/// The core reaches the other nodes through the harbor.
impl Remote for Harbor {
    fn forward(&self, dest: Address, message: Message) -> Result<(), SendError> {
        Harbor::forward(self, dest, message)
    }

    fn forward_run(&self, dest: Address, run: &mut Vec<Message>) -> Result<(), (usize, SendError)> {
        Harbor::forward_run(self, dest, run)
    }

    fn monitor(&self, tenant: TenantId, watcher: Address, target: Address) {
        Harbor::monitor(self, tenant, watcher, target);
    }

    fn demonitor(&self, watcher: Address, target: Address) {
        Harbor::demonitor(self, watcher, target);
    }

    fn register(&self, key: &str, address: Address) -> Result<(), GlobalNameError> {
        Harbor::register(self, key, address)
    }

    fn register_confirmed(&self, key: &str, address: Address, waiter: Waiter) {
        Harbor::register_confirmed(self, key, address, waiter);
    }

    fn unregister(&self, key: &str, address: Address) {
        Harbor::unregister(self, key, address);
    }

    fn query(&self, key: &str) -> Option<Address> {
        Harbor::query(self, key)
    }

    fn queryname(self: Arc<Self>, key: &str, timeout_ms: u32, waiter: Waiter) {
        Harbor::queryname(&self, key, timeout_ms, waiter);
    }
}

/// Multicast's way over the peer links (weak: the harbor holds its
/// node's `Multicast`).
struct MulticastLinks(Weak<Harbor>);

impl HarborCarrier for MulticastLinks {
    fn control(&self, node: u8, control: ChannelControl) -> bool {
        self.0
            .upgrade()
            .is_some_and(|h| h.control(node, Control::Channel(control)))
    }

    fn copy(&self, node: u8, key: (TenantId, u32), source: Address, payload: bytes::Bytes) -> bool {
        self.0
            .upgrade()
            .is_some_and(|h| h.multicast_copy(node, key, source, payload))
    }
}

/// Reconnection delays: 50 ms doubling to 1 s, with jitter, for ever.
fn retry_delays() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
        .build()
}
