//! Multicast: channels that carry one publish to many subscribers, on one
//! node and across harbor nodes (Skynet's multicast).
//!
//! ```text
//!  publish(ch) on node P ──(ch made on P)──> fan out: each local subscriber's mailbox
//!        │                                   gets the same shared payload, and each
//!        │                                   node with subscribers gets one copy
//!        └──(ch made on X)──> one copy to X ──> X fans out as above (P included)
//!  node Y, on X's copy: fans out to Y's subscribers of ch
//! ```
//!
//! A channel id is `(number << 8) | harbor-id`: it names the node that made
//! it (its *owner*), as an address does. The owner keeps the channel: its
//! local subscribers and the harbor ids of nodes that have subscribers.
//! Another node keeps, per channel it has subscribers for, the list of them
//! (a *mirror*); its first subscriber subscribes the node at the owner, its
//! last unsubscribes it. All of a publisher's messages go through the owner,
//! so each subscriber gets them in publish order. A payload is one shared
//! buffer per node (`Bytes`); every subscriber's mailbox holds a reference.
//!
//! Delivered messages are kind `multicast` with the channel id as session
//! and the publisher as source; source 0 with an empty payload says the
//! channel was deleted (or its owner's node went down).
//!
//! Who owns what: `Multicast` (one per node, made by the node and shared
//! with its harbor, cluster and WIT imports) owns both tables. Each
//! subscription is held in the runtime with the closure that drops it, so
//! a service's end unsubscribes it everywhere. Multicast is below harbor
//! and cluster: it speaks its own messages (`proto.rs`) and reaches other
//! nodes through the carrier ports they implement (`HarborCarrier`,
//! `ClusterCarrier`); the calls that deliver take the node's core
//! (`&Kernel`).

pub mod proto;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use bytes::Bytes;

use crate::runtime::{Address, ErrorCause, HarborId, Kernel, Message, TenantId, kind};
use proto::{ChannelControl, ChannelCopy};

/// A channel within its tenant: each tenant has its own channels, so two
/// tenants' channels with one number are two channels.
type Key = (TenantId, u32);

/// Why a channel operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// No such channel (never made, or deleted).
    #[error("no multicast channel {0:#x}")]
    NoSuchChannel(u32),
    /// A channel with that number exists already.
    #[error("multicast channel {0:#x} exists already")]
    Exists(u32),
    /// The number does not fit in 24 bits, or is 0.
    #[error("multicast channel number {0} is not 1..2^24")]
    Invalid(u32),
    /// Only the node that made a channel can delete it.
    #[error("multicast channel {0:#x} was made on another node")]
    NotOwner(u32),
    /// The channel's node is down.
    #[error("the node of multicast channel {0:#x} is down")]
    NodeDown(u32),
}

/// Why a message for another node did not leave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub(crate) struct NotCarried {
    /// `Overloaded` when the node's queue is full, else why it is unreachable.
    pub cause: ErrorCause,
    /// What the carrier said.
    pub detail: String,
}

/// The harbor's links, as multicast uses them (implemented by the harbor
/// over a weak reference: the harbor holds its node's `Multicast`).
pub(crate) trait HarborCarrier: Send + Sync {
    /// Sends `control` to harbor node `node`; false when it is not linked.
    fn control(&self, node: u8, control: ChannelControl) -> bool;
    /// Sends a copy of a publish on `key` to harbor node `node` (for the
    /// channel's owner, or for that node's subscribers); false when it was
    /// dropped (the carrier counts it).
    fn copy(&self, node: u8, key: (TenantId, u32), source: Address, payload: Bytes) -> bool;
}

/// The cluster's links, as multicast uses them (implemented by the cluster
/// over a weak reference: the cluster holds its node's `Multicast`).
pub(crate) trait ClusterCarrier: Send + Sync {
    /// This node's name in the cluster.
    fn node_name(&self) -> &str;
    /// Sends `control` to cluster node `node`.
    ///
    /// # Errors
    /// When the node is unknown, down, or its queue is full.
    fn control(&self, node: &str, control: ChannelControl) -> Result<(), NotCarried>;
    /// Sends one copy (`header` and its payload) to cluster node `node`.
    ///
    /// # Errors
    /// As [`control`](Self::control); `Overloaded` when its queue is full.
    fn copy(&self, node: &str, header: ChannelCopy, payload: Bytes) -> Result<(), NotCarried>;
}

/// A channel made on this node (or this node's stand-in for a channel of
/// another cluster node: see `bound`).
#[derive(Default)]
struct Owned {
    /// Local subscribers, in subscription order.
    local: Vec<Address>,
    /// Harbor ids of other nodes with subscribers.
    remote: HashSet<u8>,
    /// Cluster nodes with subscribers.
    cluster: HashSet<String>,
    /// For a stand-in: the cluster node that made the channel, and its id there.
    bound: Option<(String, u32)>,
}

#[derive(Default)]
struct Tables {
    owned: HashMap<Key, Owned>,
    /// Local subscribers of channels made on other harbor nodes.
    mirrors: HashMap<Key, Vec<Address>>,
    /// Stand-ins by (cluster node, tenant, its channel id).
    stand_ins: HashMap<(String, TenantId, u32), u32>,
}

/// A publish made on this node for one of its own channels.
type Publish = (Key, Address, Bytes);

/// The multicast side of one node.
pub(crate) struct Multicast {
    harbor: HarborId,
    next: AtomicU32,
    tables: Mutex<Tables>,
    /// The harbor's links, on a harbor node.
    over_harbor: OnceLock<Arc<dyn HarborCarrier>>,
    /// The cluster's links, on a cluster node.
    over_cluster: OnceLock<Arc<dyn ClusterCarrier>>,
    /// Copies dropped for nodes whose queue was full.
    overflow: AtomicU64,
    /// Publishes made on this node for its own channels, fanned out by one
    /// task in publish order: the publisher's import returns at once, so
    /// a publisher never runs its subscribers' deliveries on its own time
    /// (and its subscribers then take their messages in batches).
    fan_out: tokio::sync::mpsc::UnboundedSender<Publish>,
    fan_out_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Publish>>>,
}

/// The largest channel number (24 bits, beside the harbor id).
const MAX_NUMBER: u32 = (1 << 24) - 1;

fn owner(channel: u32) -> u8 {
    (channel & 0xff) as u8
}

fn not_in_a_cluster() -> NotCarried {
    NotCarried {
        cause: ErrorCause::NodeDown,
        detail: "this node is not in a cluster".into(),
    }
}

impl Multicast {
    /// The multicast side of the node with harbor id `harbor`.
    pub(crate) fn new(harbor: HarborId) -> Self {
        let (fan_out, fan_out_rx) = tokio::sync::mpsc::unbounded_channel();
        Multicast {
            harbor,
            fan_out,
            fan_out_rx: Mutex::new(Some(fan_out_rx)),
            // Fixed numbers given by services start low; automatic ones high,
            // so they rarely meet.
            next: AtomicU32::new(1 << 23),
            tables: Mutex::new(Tables::default()),
            over_harbor: OnceLock::new(),
            over_cluster: OnceLock::new(),
            overflow: AtomicU64::new(0),
        }
    }

    /// Carries copies and control messages for other harbor nodes over `harbor`.
    pub(crate) fn carry_over_harbor(&self, harbor: Arc<dyn HarborCarrier>) {
        let _ = self.over_harbor.set(harbor);
    }

    /// Carries copies and control messages for cluster nodes over `cluster`.
    pub(crate) fn carry_over_cluster(&self, cluster: Arc<dyn ClusterCarrier>) {
        let _ = self.over_cluster.set(cluster);
    }

    fn harbor_links(&self) -> Option<&Arc<dyn HarborCarrier>> {
        self.over_harbor.get()
    }

    fn cluster_links(&self) -> Option<&Arc<dyn ClusterCarrier>> {
        self.over_cluster.get()
    }

    /// Sends a control message to cluster node `node`.
    fn cluster_control(&self, node: &str, control: ChannelControl) -> Result<(), NotCarried> {
        self.cluster_links()
            .ok_or_else(not_in_a_cluster)?
            .control(node, control)
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_mine(&self, channel: u32) -> bool {
        owner(channel) == self.harbor.0
    }

    /// Makes a channel: number `fixed`, or a free one.
    ///
    /// # Errors
    /// `Invalid` or `Exists` for a fixed number.
    pub fn create(&self, tenant: TenantId, fixed: Option<u32>) -> Result<u32, ChannelError> {
        self.create_in(&mut self.tables(), tenant, fixed)
    }

    /// [`create`](Self::create), in tables already locked.
    fn create_in(
        &self,
        t: &mut Tables,
        tenant: TenantId,
        fixed: Option<u32>,
    ) -> Result<u32, ChannelError> {
        let channel = match fixed {
            Some(n) if n == 0 || n > MAX_NUMBER => return Err(ChannelError::Invalid(n)),
            Some(n) => {
                let id = (n << 8) | u32::from(self.harbor.0);
                if t.owned.contains_key(&(tenant, id)) {
                    return Err(ChannelError::Exists(id));
                }
                id
            }
            None => loop {
                let n = self.next.fetch_add(1, Ordering::Relaxed) % MAX_NUMBER + 1;
                let id = (n << 8) | u32::from(self.harbor.0);
                if !t.owned.contains_key(&(tenant, id)) {
                    break id;
                }
            },
        };
        t.owned.insert((tenant, channel), Owned::default());
        Ok(channel)
    }

    /// Deletes a channel made here; its subscribers (here and on other
    /// nodes) are told.
    ///
    /// # Errors
    /// `NotOwner` for a channel of another node, `NoSuchChannel`.
    pub fn delete(
        &self,
        kernel: &Kernel,
        tenant: TenantId,
        channel: u32,
    ) -> Result<(), ChannelError> {
        if !self.is_mine(channel) {
            return Err(ChannelError::NotOwner(channel));
        }
        let owned = self
            .tables()
            .owned
            .remove(&(tenant, channel))
            .ok_or(ChannelError::NoSuchChannel(channel))?;
        for sub in owned.local {
            kernel.forget_held(sub, &channel_key(channel));
            let _ = kernel.deliver(sub, gone_notice(tenant, channel));
        }
        let t = tenant.0;
        let gone = ChannelControl::Gone { tenant: t, channel };
        if let Some(harbor) = self.harbor_links() {
            for node in owned.remote {
                harbor.control(node, gone);
            }
        }
        for node in owned.cluster {
            let _ = self.cluster_control(&node, gone);
        }
        if let Some((node, id)) = owned.bound {
            self.tables().stand_ins.remove(&(node.clone(), tenant, id));
            let unsubscribe = ChannelControl::Unsubscribe {
                tenant: t,
                channel: id,
            };
            let _ = self.cluster_control(&node, unsubscribe);
        }
        Ok(())
    }

    /// A local stand-in for `channel` (its id on cluster node `node`, as
    /// that node's `new` returned it). Local services subscribe to and
    /// publish on the stand-in's id; on `node` itself it is the id.
    ///
    /// # Errors
    /// `NodeDown` when this node is in no cluster.
    pub fn cluster_channel(
        &self,
        tenant: TenantId,
        node: &str,
        channel: u32,
    ) -> Result<u32, ChannelError> {
        let Some(cluster) = self.cluster_links() else {
            return Err(ChannelError::NodeDown(channel));
        };
        let remote = channel;
        if node == cluster.node_name() {
            return Ok(remote);
        }
        let key = (node.to_string(), tenant, remote);
        // Looked up and made under one lock: two services binding the same
        // channel at once must get one stand-in (a second one would take
        // the first's place in `stand_ins`, and the first's subscribers
        // would hear nothing).
        let mut t = self.tables();
        if let Some(&id) = t.stand_ins.get(&key) {
            return Ok(id);
        }
        let id = self.create_in(&mut t, tenant, None)?;
        if let Some(o) = t.owned.get_mut(&(tenant, id)) {
            o.bound = Some((key.0.clone(), key.2));
        }
        t.stand_ins.insert(key, id);
        Ok(id)
    }

    /// A multicast copy from cluster node `from`: a publish on a channel
    /// made here, or a delivery for a stand-in's subscribers.
    pub(crate) fn cluster_arrived(
        &self,
        kernel: &Kernel,
        from: &str,
        copy: ChannelCopy,
        payload: Bytes,
    ) {
        let tenant = TenantId(copy.tenant);
        let source = Address(copy.source);
        if copy.publish {
            if let Err(e) = self.fan_out(kernel, (tenant, copy.channel), &[(source, payload)]) {
                tracing::debug!(node = from, "cluster multicast publish dropped: {e}");
            }
            return;
        }
        let (id, subs) = {
            let t = self.tables();
            let Some(&id) = t.stand_ins.get(&(from.to_string(), tenant, copy.channel)) else {
                return;
            };
            (
                id,
                t.owned
                    .get(&(tenant, id))
                    .map(|o| o.local.clone())
                    .unwrap_or_default(),
            )
        };
        // The source is the publisher's address on its own node.
        deliver_all(kernel, &subs, (tenant, id), &[(source, payload)]);
    }

    /// A control message about channels from cluster node `from`.
    pub(crate) fn cluster_control_arrived(
        &self,
        kernel: &Kernel,
        from: &str,
        control: ChannelControl,
    ) {
        match control {
            ChannelControl::Subscribe { tenant, channel } => {
                let known = self
                    .tables()
                    .owned
                    .get_mut(&(TenantId(tenant), channel))
                    .map(|o| o.cluster.insert(from.to_string()))
                    .is_some();
                if !known {
                    let _ = self.cluster_control(from, ChannelControl::Gone { tenant, channel });
                }
            }
            ChannelControl::Unsubscribe { tenant, channel } => {
                if let Some(o) = self.tables().owned.get_mut(&(TenantId(tenant), channel)) {
                    o.cluster.remove(from);
                }
            }
            ChannelControl::Gone { tenant, channel } => {
                let tenant = TenantId(tenant);
                let key = (from.to_string(), tenant, channel);
                let id = self.tables().stand_ins.remove(&key);
                let Some(id) = id else { return };
                let owned = self.tables().owned.remove(&(tenant, id));
                for sub in owned.map(|o| o.local).unwrap_or_default() {
                    kernel.forget_held(sub, &channel_key(id));
                    let _ = kernel.deliver(sub, gone_notice(tenant, id));
                }
            }
        }
    }

    /// Subscribes `service` (a local service) to `channel`.
    ///
    /// # Errors
    /// `NoSuchChannel` for a channel of this node that does not exist;
    /// `NodeDown` when the channel's node is not connected.
    pub fn subscribe(
        self: &Arc<Self>,
        kernel: &Kernel,
        tenant: TenantId,
        channel: u32,
        service: Address,
    ) -> Result<(), ChannelError> {
        if self.is_mine(channel) {
            let mut t = self.tables();
            let owned = t
                .owned
                .get_mut(&(tenant, channel))
                .ok_or(ChannelError::NoSuchChannel(channel))?;
            if !owned.local.contains(&service) {
                owned.local.push(service);
            }
            let first_of_stand_in = owned.local.len() == 1 && owned.bound.is_some();
            let bound = owned.bound.clone();
            drop(t);
            if first_of_stand_in && let Some((node, id)) = bound {
                let subscribe = ChannelControl::Subscribe {
                    tenant: tenant.0,
                    channel: id,
                };
                if let Err(e) = self.cluster_control(&node, subscribe) {
                    self.drop_subscriber(tenant, channel, service);
                    tracing::warn!(%node, "multicast subscribe not sent: {e}");
                    return Err(ChannelError::NodeDown(channel));
                }
            }
        } else {
            let harbor = self
                .harbor_links()
                .ok_or(ChannelError::NoSuchChannel(channel))?;
            let first = {
                let mut t = self.tables();
                let subs = t.mirrors.entry((tenant, channel)).or_default();
                if subs.contains(&service) {
                    return Ok(());
                }
                subs.push(service);
                subs.len() == 1
            };
            let subscribe = ChannelControl::Subscribe {
                tenant: tenant.0,
                channel,
            };
            if first && !harbor.control(owner(channel), subscribe) {
                self.drop_mirror_subscriber((tenant, channel), service);
                return Err(ChannelError::NodeDown(channel));
            }
        }
        let multicast = Arc::downgrade(self);
        let unsubscribe: crate::runtime::ExitHook = Box::new(move || {
            if let Some(m) = multicast.upgrade() {
                m.drop_subscriber(tenant, channel, service);
            }
        });
        kernel.hold(service, None, channel_key(channel), unsubscribe);
        Ok(())
    }

    /// Unsubscribes `service` from `channel` (nothing if it was not).
    pub fn unsubscribe(&self, kernel: &Kernel, tenant: TenantId, channel: u32, service: Address) {
        kernel.forget_held(service, &channel_key(channel));
        self.drop_subscriber(tenant, channel, service);
    }

    /// Takes `service` off `channel`'s lists.
    fn drop_subscriber(&self, tenant: TenantId, channel: u32, service: Address) {
        if self.is_mine(channel) {
            let last_of_stand_in = {
                let mut t = self.tables();
                let Some(owned) = t.owned.get_mut(&(tenant, channel)) else {
                    return;
                };
                let before = owned.local.len();
                owned.local.retain(|&a| a != service);
                (before > 0 && owned.local.is_empty())
                    .then(|| owned.bound.clone())
                    .flatten()
            };
            if let Some((node, id)) = last_of_stand_in {
                let unsubscribe = ChannelControl::Unsubscribe {
                    tenant: tenant.0,
                    channel: id,
                };
                let _ = self.cluster_control(&node, unsubscribe);
            }
        } else {
            self.drop_mirror_subscriber((tenant, channel), service);
        }
    }

    fn drop_mirror_subscriber(&self, key: Key, service: Address) {
        let last = {
            let mut t = self.tables();
            let Some(subs) = t.mirrors.get_mut(&key) else {
                return;
            };
            subs.retain(|&a| a != service);
            let last = subs.is_empty();
            if last {
                t.mirrors.remove(&key);
            }
            last
        };
        if last && let Some(harbor) = self.harbor_links() {
            let (tenant, channel) = key;
            let unsubscribe = ChannelControl::Unsubscribe {
                tenant: tenant.0,
                channel,
            };
            harbor.control(owner(channel), unsubscribe);
        }
    }

    /// Publishes `payload` from `source` on `channel`.
    ///
    /// # Errors
    /// `NoSuchChannel` for a channel of this node that does not exist;
    /// `NodeDown` when the channel's node is not connected.
    pub fn publish(
        &self,
        tenant: TenantId,
        channel: u32,
        source: Address,
        payload: Bytes,
    ) -> Result<(), ChannelError> {
        let key = (tenant, channel);
        if self.is_mine(channel) {
            let bound = self.tables().owned.get(&key).and_then(|o| o.bound.clone());
            let Some((node, id)) = bound else {
                if !self.tables().owned.contains_key(&key) {
                    return Err(ChannelError::NoSuchChannel(channel));
                }
                // A channel deleted before its turn drops the publish.
                let _ = self.fan_out.send((key, source, payload));
                return Ok(());
            };
            // Through the owner, like every publisher's: one order for all.
            let cluster = self
                .cluster_links()
                .ok_or(ChannelError::NoSuchChannel(channel))?;
            let header = ChannelCopy {
                tenant: tenant.0,
                channel: id,
                source: source.0,
                publish: true,
            };
            return cluster
                .copy(&node, header, payload)
                .map_err(|_| ChannelError::NodeDown(channel));
        }
        let harbor = self
            .harbor_links()
            .ok_or(ChannelError::NoSuchChannel(channel))?;
        if harbor.copy(owner(channel), key, source, payload) {
            Ok(())
        } else {
            Err(ChannelError::NodeDown(channel))
        }
    }

    /// On the owner: every local subscriber and every other node with
    /// subscribers gets the message (the publisher's node too: its
    /// subscribers get their copy in the same order as everyone's).
    fn fan_out(
        &self,
        kernel: &Kernel,
        key: Key,
        run: &[(Address, Bytes)],
    ) -> Result<(), ChannelError> {
        let (tenant, channel) = key;
        let (local, remote, cluster_nodes) = {
            let t = self.tables();
            let owned = t
                .owned
                .get(&key)
                .ok_or(ChannelError::NoSuchChannel(channel))?;
            (
                owned.local.clone(),
                owned.remote.iter().copied().collect::<Vec<u8>>(),
                owned.cluster.iter().cloned().collect::<Vec<String>>(),
            )
        };
        if !cluster_nodes.is_empty()
            && let Some(cluster) = self.cluster_links()
        {
            'nodes: for node in cluster_nodes {
                for (source, payload) in run {
                    let header = ChannelCopy {
                        tenant: tenant.0,
                        channel,
                        source: source.0,
                        publish: false,
                    };
                    match cluster.copy(&node, header, payload.clone()) {
                        Ok(()) => {}
                        // A slow node loses this copy (counted), not its place.
                        Err(e) if e.cause == ErrorCause::Overloaded => {
                            self.count_overflow(&node, &e);
                        }
                        // A node that is gone or offline leaves the channel.
                        Err(e) => {
                            tracing::warn!(%node, channel, "multicast subscriber node dropped: {e}");
                            if let Some(o) = self.tables().owned.get_mut(&key) {
                                o.cluster.remove(&node);
                            }
                            continue 'nodes;
                        }
                    }
                }
            }
        }
        if !remote.is_empty()
            && let Some(harbor) = self.harbor_links()
        {
            for node in remote {
                for (source, payload) in run {
                    harbor.copy(node, key, *source, payload.clone());
                }
            }
        }
        deliver_all(kernel, &local, key, run);
        Ok(())
    }

    /// A multicast copy that arrived from harbor `from`: a publish for a
    /// channel made here, or a delivery for this node's subscribers.
    pub(crate) fn arrived(
        &self,
        kernel: &Kernel,
        from: u8,
        key: Key,
        source: Address,
        payload: Bytes,
    ) {
        if self.is_mine(key.1) {
            if let Err(e) = self.fan_out(kernel, key, &[(source, payload)]) {
                tracing::debug!(harbor = from, "multicast publish dropped: {e}");
            }
            return;
        }
        let subs = self.tables().mirrors.get(&key).cloned().unwrap_or_default();
        deliver_all(kernel, &subs, key, &[(source, payload)]);
    }

    /// A control message about channels from harbor `from`.
    pub(crate) fn control_arrived(&self, kernel: &Kernel, from: u8, control: ChannelControl) {
        match control {
            ChannelControl::Subscribe { tenant, channel } => {
                let known = self
                    .tables()
                    .owned
                    .get_mut(&(TenantId(tenant), channel))
                    .map(|o| o.remote.insert(from))
                    .is_some();
                if !known && let Some(harbor) = self.harbor_links() {
                    harbor.control(from, ChannelControl::Gone { tenant, channel });
                }
            }
            ChannelControl::Unsubscribe { tenant, channel } => {
                if let Some(o) = self.tables().owned.get_mut(&(TenantId(tenant), channel)) {
                    o.remote.remove(&from);
                }
            }
            ChannelControl::Gone { tenant, channel } => {
                self.mirror_gone(kernel, (TenantId(tenant), channel));
            }
        }
    }

    /// The channel of a mirror is gone (deleted, or its node down): its
    /// subscribers here are told and forget it.
    fn mirror_gone(&self, kernel: &Kernel, key: Key) {
        let subs = self.tables().mirrors.remove(&key).unwrap_or_default();
        for sub in subs {
            kernel.forget_held(sub, &channel_key(key.1));
            let _ = kernel.deliver(sub, gone_notice(key.0, key.1));
        }
    }

    /// Harbor `node` went down: it leaves every channel made here, and the
    /// channels it made are gone for this node's subscribers.
    pub(crate) fn node_down(&self, kernel: &Kernel, node: u8) {
        let gone: Vec<Key> = {
            let mut t = self.tables();
            for o in t.owned.values_mut() {
                o.remote.remove(&node);
            }
            t.mirrors
                .keys()
                .copied()
                .filter(|&(_, c)| owner(c) == node)
                .collect()
        };
        for channel in gone {
            self.mirror_gone(kernel, channel);
        }
    }

    /// Counts a copy for a cluster node that could not take more; logged
    /// at 1, 2, 4, 8, ... so a stuck node stays readable in the log.
    fn count_overflow(&self, node: &str, e: &NotCarried) {
        let n = self.overflow.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(%node, dropped_total = n, "multicast copies dropped: {e}");
        }
    }

    /// Multicast copies dropped because a node's queue was full, since start.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// The task that fans out this node's own publishes, in order, until
    /// the node (`kernel`) is gone; started once with the node.
    pub(crate) fn fan_out_task(
        self: &Arc<Self>,
        kernel: Weak<Kernel>,
    ) -> Option<impl Future<Output = ()> + Send + 'static + use<>> {
        let mut rx = self
            .fan_out_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let multicast = Arc::downgrade(self);
        Some(async move {
            let mut batch = Vec::with_capacity(256);
            let mut run = Vec::with_capacity(256);
            while rx.recv_many(&mut batch, 256).await > 0 {
                let (Some(kernel), Some(multicast)) = (kernel.upgrade(), multicast.upgrade())
                else {
                    return;
                };
                // Publishes to one channel in a row go out as one run: each
                // subscriber takes them with one lookup, one lock and one wake.
                let mut publishes = batch.drain(..).peekable();
                while let Some((key, source, payload)) = publishes.next() {
                    run.push((source, payload));
                    while let Some((_, source, payload)) = publishes.next_if(|(k, ..)| *k == key) {
                        run.push((source, payload));
                    }
                    if let Err(e) = multicast.fan_out(&kernel, key, &run) {
                        tracing::debug!("multicast publish dropped: {e}");
                    }
                    run.clear();
                }
            }
        })
    }

    /// Subscribers on this node of `channel` of `tenant` (for tests and stats).
    pub fn local_subscribers(&self, tenant: TenantId, channel: u32) -> usize {
        let t = self.tables();
        let key = (tenant, channel);
        t.owned
            .get(&key)
            .map(|o| o.local.len())
            .or_else(|| t.mirrors.get(&key).map(Vec::len))
            .unwrap_or(0)
    }
}

/// Puts the messages of `run` (source, payload), in order, in each
/// subscriber's mailbox as one run (one lookup, one lock and one wake for
/// the subscriber). Where a mailbox refuses one (full, gone) it refuses the
/// rest of the run too; the other subscribers are not held up.
fn deliver_all(kernel: &Kernel, subs: &[Address], key: Key, run: &[(Address, Bytes)]) {
    let (tenant, channel) = key;
    let message = |(source, payload): &(Address, Bytes)| Message {
        kind: kind::MULTICAST,
        source: *source,
        session: channel,
        tenant,
        payload: payload.clone(),
        trace: 0,
    };
    // One buffer for every subscriber's run: `deliver_run` leaves it empty.
    let mut messages = Vec::with_capacity(run.len());
    for &sub in subs {
        messages.extend(run.iter().map(message));
        if let Err((went, e)) = kernel.deliver_run(sub, &mut messages) {
            tracing::debug!(%sub, dropped = run.len() - went, "multicast delivery dropped: {e}");
        }
        messages.clear();
    }
}

/// The message that tells a subscriber its channel is gone.
fn gone_notice(tenant: TenantId, channel: u32) -> Message {
    Message {
        kind: kind::MULTICAST,
        source: Address(0),
        session: channel,
        tenant,
        payload: Bytes::new(),
        trace: 0,
    }
}

/// What a subscriber holds in the runtime for `channel` (its exit hook's key).
fn channel_key(channel: u32) -> String {
    format!("channel:{channel}")
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;

    /// A cluster link that carries nothing: the stand-in table alone is tested.
    struct NoTraffic;

    impl ClusterCarrier for NoTraffic {
        fn node_name(&self) -> &str {
            "here"
        }
        fn control(&self, _: &str, _: ChannelControl) -> Result<(), NotCarried> {
            Ok(())
        }
        fn copy(&self, _: &str, _: ChannelCopy, _: Bytes) -> Result<(), NotCarried> {
            Ok(())
        }
    }

    /// One thread: every delivery goes in before a subscriber takes any.
    #[tokio::test]
    async fn a_run_reaches_each_subscriber_in_order_past_a_dead_one_and_a_full_mailbox() {
        use crate::runtime::tests::{Act, FakeLoader, core_with_blue, spawn_in};
        let kernel = core_with_blue(FakeLoader::default().with("holds", |_| Act::Nothing));
        let (first, second) = (
            spawn_in(&kernel, "blue", "holds").await,
            spawn_in(&kernel, "blue", "holds").await,
        );
        let blue = kernel.tenant_named("blue").expect("blue").id;
        let dead = Address(0x00ff_ff00);
        let run: Vec<(Address, Bytes)> = (0..3u8)
            .map(|i| (Address(0x100 + u32::from(i)), Bytes::from(vec![i])))
            .collect();
        deliver_all(&kernel, &[first, dead, second], (blue, 9), &run);
        for sub in [first, second] {
            let queued = kernel.with_service(sub, |h| h.mailbox.queued());
            let got: Vec<_> = queued
                .unwrap_or_default()
                .iter()
                .map(|m| (m.kind, m.source, m.session, m.payload.to_vec()))
                .collect();
            assert_eq!(
                got,
                vec![
                    (kind::MULTICAST, Address(0x100), 9, vec![0]),
                    (kind::MULTICAST, Address(0x101), 9, vec![1]),
                ],
                "{sub}: the two its mailbox holds, in order; the third dropped"
            );
        }
    }

    /// Services binding the same channel of another node at once all get
    /// one stand-in (with two, the first's subscribers heard nothing).
    #[test]
    fn binding_one_remote_channel_at_once_makes_one_stand_in() {
        const THREADS: usize = 8;
        let multicast = Arc::new(Multicast::new(HarborId(1)));
        multicast.carry_over_cluster(Arc::new(NoTraffic));
        let tenant = TenantId(7);
        for remote in 1..=200u32 {
            let start = Arc::new(Barrier::new(THREADS));
            let ids: Vec<u32> = (0..THREADS)
                .map(|_| {
                    let multicast = multicast.clone();
                    let start = start.clone();
                    std::thread::spawn(move || {
                        start.wait();
                        multicast.cluster_channel(tenant, "there", remote)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().expect("thread").expect("a stand-in"))
                .collect();
            assert!(
                ids.iter().all(|&id| id == ids[0]),
                "remote {remote}: {ids:?}"
            );
        }
        assert_eq!(
            multicast.tables().owned.len(),
            200,
            "one stand-in per remote channel"
        );
    }
}
