//! One outbound link to a peer (Skynet's clustersender): made on first
//! use, re-made with backoff on the next use after a drop.
//!
//! While the peer cannot be reached, the driver retries with backoff (20 ms
//! doubling to 2 s), but traffic does not wait for the backoff: a call,
//! query or send arriving at least [`RETRY_GAP`] after the last failed
//! attempt cuts the wait and is carried by a fresh attempt at once (a peer
//! that restarted is reached on the first call), and a call arriving sooner
//! than that fails at once with node-down, naming why the last attempt
//! failed, instead of waiting for an attempt that would fail again.
//! A table reload or a discovery change cuts the wait too.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{Control, Header, Target};
use super::{Cluster, ClusterError, Job, Settings, respond};
use crate::runtime::Waiter;
use crate::runtime::{ErrorCause, Kernel};
use crate::transport::driver::Keep;
use crate::transport::resume::{Numbered, Outbox};
use crate::transport::{Connection, DriverError, LinkHandler, Outgoing};

type Item = Outgoing<Control, Header>;

/// How many messages `item` counts as in the down-queue's bound and in
/// its drops: a batch its records, anything else one.
fn messages(item: &Item) -> usize {
    match item {
        Outgoing::Message(header, _) => header.messages(),
        Outgoing::Control(_) => 1,
    }
}

/// Most target names one sender interns; beyond, names travel as text (a
/// sender to ever-new names must not grow without bound).
const MAX_INTERNED: u32 = 4096;

/// What waits for an answer from the peer, by link session.
#[derive(Default)]
struct Waiting {
    calls: HashMap<u32, Waiter>,
    queries: HashMap<u32, (String, Waiter)>,
    next: u32,
    /// Sends submitted since the link was last up (bounded while it is down).
    queued_while_down: usize,
    closed: Option<String>,
    /// When the last attempt to link failed, and why; `None` once a link
    /// is up.
    unreachable: Option<(Instant, String)>,
}

/// How soon after a failed attempt to link new traffic may start another:
/// sooner, a call fails at once (the peer was just found unreachable).
pub(super) const RETRY_GAP: Duration = Duration::from_millis(100);

impl Waiting {
    fn session(&mut self) -> u32 {
        self.next = self.next.wrapping_add(1).max(1);
        self.next
    }
}

/// One peer of this node.
pub(crate) struct Sender {
    node: String,
    address: Mutex<String>,
    tx: mpsc::UnboundedSender<Item>,
    waiting: Mutex<Waiting>,
    up: AtomicBool,
    /// Set by [`close`](Sender::close): the send path reads it without the
    /// cancellation token's lock.
    closed: AtomicBool,
    /// Told when the table gives the peer a new address.
    retarget: Notify,
    /// Told to cut a backoff wait short: traffic waits, or the table changed.
    retry_now: Notify,
    gone: CancellationToken,
    kernel: std::sync::Weak<Kernel>,
    /// The node's count of one-way messages dropped.
    dropped: Arc<AtomicU64>,
    /// Numbers this sender's one-way messages and keeps them until the
    /// peer says they arrived: what a dropped link lost goes again on the
    /// next (`transport::resume`).
    outbox: Mutex<Outbox<Header>>,
    /// Weight (bytes) waiting in `tx` (counted up here, down by the driver).
    backlog: Arc<std::sync::atomic::AtomicUsize>,
    /// What its connections carried.
    stats: Arc<crate::transport::LinkStats>,
    /// Target names interned on this sender's links, read without a lock.
    names: papaya::HashMap<String, u32, fnv::FnvBuildHasher>,
    /// How many names are defined (the next number). Held while a name is
    /// defined and while a new link takes its copy of every definition: a
    /// definition is then either in that copy or queued after the copy was
    /// taken, so it always precedes its first use on the wire.
    naming: Mutex<u32>,
}

impl Sender {
    pub(super) fn new(
        node: &str,
        address: &str,
        gone: CancellationToken,
        kernel: std::sync::Weak<Kernel>,
        dropped: Arc<AtomicU64>,
    ) -> (Arc<Sender>, mpsc::UnboundedReceiver<Item>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = Arc::new(Sender {
            node: node.to_string(),
            address: Mutex::new(address.to_string()),
            tx,
            waiting: Mutex::new(Waiting::default()),
            up: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            retarget: Notify::new(),
            retry_now: Notify::new(),
            gone,
            kernel,
            dropped,
            outbox: Mutex::new(Outbox::new(rand::random())),
            backlog: Arc::default(),
            stats: Arc::default(),
            names: papaya::HashMap::with_hasher(fnv::FnvBuildHasher::default()),
            naming: Mutex::new(0),
        });
        (sender, rx)
    }

    /// Its `netstat` row.
    pub(super) fn link_info(&self) -> crate::transport::LinkInfo {
        let queued = self.backlog.load(Ordering::Relaxed);
        self.stats
            .info("cluster-out", self.node.clone(), self.address(), queued)
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn address(&self) -> String {
        self.address
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Queues a job on the link; gives it back when the peer is down and
    /// its queue is full, or the sender was closed.
    pub(super) fn submit(
        self: &Arc<Self>,
        settings: &Settings,
        job: Job,
    ) -> Result<(), (Job, ClusterError)> {
        // A send on a live link needs no lock: nothing waits for it.
        if let Job::Send {
            origin,
            target,
            payload,
            batched,
        } = job
        {
            if self.up.load(Ordering::Acquire) && !self.closed.load(Ordering::Acquire) {
                self.queue(self.push(settings, origin, target, payload, batched));
                return Ok(());
            }
            let job = Job::Send {
                origin,
                target,
                payload,
                batched,
            };
            return self.submit_locked(settings, job);
        }
        self.submit_locked(settings, job)
    }

    /// The frame of a send: one message (`Push`) or a batch (`Pushes`).
    fn push(
        &self,
        settings: &Settings,
        origin: super::Origin,
        target: Target,
        payload: Vec<u8>,
        batched: Option<u32>,
    ) -> Item {
        let (payload, compressed) = settings.pack(payload);
        let (tenant, trace, target) = (origin.tenant.0, origin.trace, self.intern(target));
        let header = if let Some(count) = batched {
            Header::Pushes {
                tenant,
                target,
                compressed,
                trace,
                seq: 0,
                count,
            }
        } else {
            Header::Push {
                tenant,
                target,
                compressed,
                trace,
                seq: 0,
            }
        };
        Outgoing::Message(header, payload)
    }

    /// `target` as it goes on the wire: a name as its number on this
    /// sender's links, defined (queued ahead) on first use.
    fn intern(&self, target: Target) -> Target {
        let Target::Name(name) = target else {
            return target;
        };
        if let Some(id) = self.names.pin().get(name.as_str()) {
            return Target::Interned(*id);
        }
        let mut defined = self.naming.lock().unwrap_or_else(|e| e.into_inner());
        let names = self.names.pin();
        if let Some(id) = names.get(name.as_str()) {
            return Target::Interned(*id);
        }
        let id = *defined;
        if id >= MAX_INTERNED {
            return Target::Name(name);
        }
        *defined += 1;
        // Queued before it is visible, so every use is queued after it.
        self.queue(Outgoing::Control(Control::Name {
            id,
            name: name.clone(),
        }));
        names.insert(name, id);
        Target::Interned(id)
    }

    /// Every name definition, for a new link to send before anything else.
    fn definitions(&self) -> Vec<Control> {
        let _defining = self.naming.lock().unwrap_or_else(|e| e.into_inner());
        self.names
            .pin()
            .iter()
            .map(|(name, id)| Control::Name {
                id: *id,
                name: name.clone(),
            })
            .collect()
    }

    /// Queues an item for the link, counting it in the backlog.
    fn queue(&self, item: Item) {
        let weight = item.weight();
        self.backlog.fetch_add(weight, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(item)) = self.tx.send(item) {
            self.backlog.fetch_sub(weight, Ordering::Relaxed);
            // The link's task has ended (the sender was closed): a call
            // fails by its waiter's entry, a one-way message is counted.
            if let Outgoing::Message(header, _) = &item
                && header.one_way()
            {
                self.dropped
                    .fetch_add(header.messages() as u64, Ordering::Relaxed);
            }
        }
    }

    fn submit_locked(
        self: &Arc<Self>,
        settings: &Settings,
        job: Job,
    ) -> Result<(), (Job, ClusterError)> {
        let mut w = self.waiting();
        if let Some(why) = &w.closed {
            let e = ClusterError::new(ErrorCause::NodeDown, why.clone());
            return Err((job, e));
        }
        // Sends are what a down peer keeps (calls fail when no link can
        // be made), so the bound counts sends.
        if matches!(job, Job::Item(_))
            && self.backlog.load(Ordering::Relaxed) >= crate::harbor::MULTICAST_BACKLOG
        {
            let e = ClusterError::new(
                ErrorCause::Overloaded,
                format!(
                    "cluster node `{}` has {} bytes waiting",
                    self.node,
                    self.backlog.load(Ordering::Relaxed)
                ),
            );
            return Err((job, e));
        }
        if matches!(job, Job::Send { .. } | Job::Item(_)) && !self.up.load(Ordering::Acquire) {
            if w.queued_while_down >= settings.queue_limit {
                let e = ClusterError::new(
                    ErrorCause::Overloaded,
                    format!(
                        "cluster node `{}` is down and {} messages already wait for it",
                        self.node, w.queued_while_down
                    ),
                );
                return Err((job, e));
            }
            w.queued_while_down += job.messages();
        }
        if let Some((failed_at, why)) = &w.unreachable {
            if failed_at.elapsed() < RETRY_GAP {
                if matches!(job, Job::Call { .. } | Job::Query { .. } | Job::Ping { .. }) {
                    let e = ClusterError::new(
                        ErrorCause::NodeDown,
                        format!("cluster node `{}` is unreachable: {why}", self.node),
                    );
                    return Err((job, e));
                }
            } else {
                self.retry_now.notify_one();
            }
        }
        let item = match job {
            Job::Call {
                origin,
                target,
                payload,
                waiter,
                timeout,
            } => {
                let session = w.session();
                w.calls.insert(session, waiter);
                if let Some(t) = timeout {
                    self.expire_later(session, t);
                }
                let (payload, compressed) = settings.pack(payload);
                Outgoing::Message(
                    Header::Request {
                        session,
                        tenant: origin.tenant.0,
                        target: self.intern(target),
                        compressed,
                        trace: origin.trace,
                    },
                    payload,
                )
            }
            Job::Send {
                origin,
                target,
                payload,
                batched,
            } => self.push(settings, origin, target, payload, batched),
            Job::Item(item) => item,
            Job::Query { name, waiter } => {
                let request = w.session();
                w.queries.insert(request, (name.clone(), waiter));
                Outgoing::Control(Control::Query { request, name })
            }
            Job::Ping {
                address,
                waiter,
                timeout,
            } => {
                let session = w.session();
                w.calls.insert(session, waiter);
                self.expire_later(session, timeout);
                Outgoing::Control(Control::Ping { session, address })
            }
        };
        // Sent under the lock: a drop that drains the queue sees it, or
        // it goes in after the drain and waits for the next link.
        self.queue(item);
        Ok(())
    }

    /// Ends a call with `Timeout` after `t` unless it was answered.
    fn expire_later(self: &Arc<Self>, session: u32, t: Duration) {
        let me = Arc::downgrade(self);
        let gone = self.gone.clone();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = gone.cancelled() => {}
                () = tokio::time::sleep(t) => if let Some(s) = me.upgrade() {
                    s.expire(session, t);
                }
            }
        });
    }

    fn expire(&self, session: u32, t: Duration) {
        let waiter = self.waiting().calls.remove(&session);
        if let (Some(w), Some(kernel)) = (waiter, self.kernel.upgrade()) {
            w.fail(
                &kernel,
                ErrorCause::Timeout,
                &format!("cluster call to `{}` not answered within {t:?}", self.node),
            );
        }
    }

    /// Cuts a backoff wait short: the table changed (a reload, or
    /// discovery saw the peer again), so the peer may be back.
    pub(super) fn retry_soon(&self) {
        self.retry_now.notify_one();
    }

    /// Points the sender at a new address (a reload moved the peer).
    pub(super) fn retarget(&self, address: &str) {
        let mut current = self.address.lock().unwrap_or_else(|e| e.into_inner());
        if *current != address {
            tracing::info!(peer = %self.node, from = %*current, to = address, "cluster node moved");
            *current = address.to_string();
            drop(current);
            self.retarget.notify_one();
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox<Header>> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `n` one-way messages as dropped, and says why.
    fn count_dropped(&self, n: usize, why: &str) {
        if n > 0 {
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
            tracing::warn!(peer = %self.node, dropped = n, "cluster sends dropped: {why}");
        }
    }

    /// What a caller hears when this peer's link fails for `why`.
    fn about(&self, why: &str) -> String {
        format!("cluster node `{}`: {why}", self.node)
    }

    /// Takes the peer's first word on a new link: the one-way messages
    /// to send again on it, in order; kept ones the peer cannot want (it
    /// does not know this session: it restarted) are counted dropped.
    /// `peer_boot` is the life of the peer node the last first word came
    /// from, and becomes this one's.
    fn resume(
        &self,
        theirs: Control,
        peer_boot: &mut Option<u64>,
    ) -> Result<Vec<(Header, Vec<u8>)>, String> {
        let Control::Have {
            known,
            floor,
            since,
            boot,
        } = theirs
        else {
            return Err(format!(
                "expected Have first on a cluster link, got {theirs:?}"
            ));
        };
        let same_life = peer_boot.replace(boot) == Some(boot);
        let (again, dropped) = self.outbox().resume_knowing(known, floor, since, same_life);
        self.count_dropped(dropped, "the node restarted before they arrived");
        Ok(again)
    }

    /// Closes the sender for good: what it carries fails with `why`.
    pub(super) fn close(&self, why: &str) {
        self.waiting().closed = Some(why.to_string());
        self.closed.store(true, Ordering::Release);
        self.gone.cancel();
    }
}

/// Reconnection delays: 20 ms doubling to 2 s, with jitter, for ever.
fn retry_delays() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Sender {
    /// After a link dropped or could not be made: fails every call and
    /// query waiting on it with `why` (naming the node), and keeps the
    /// sends still queued (up to the queue limit) for the next link.
    fn drop_link(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Item>,
        held: VecDeque<Item>,
        why: &str,
        keep: usize,
    ) -> VecDeque<Item> {
        let (calls, queries, kept, dropped) = {
            let mut w = self.waiting();
            let calls = std::mem::take(&mut w.calls);
            #[cfg(test)]
            let calls = if crate::sim::broken(crate::sim::Break::KeepCallsInFlight) {
                HashMap::new()
            } else {
                calls
            };
            let queries = std::mem::take(&mut w.queries);
            let mut kept = VecDeque::new();
            let mut dropped = 0usize;
            let mut kept_messages = 0usize;
            // Drained under the lock, so nothing submitted after this is lost.
            let backlog = &self.backlog;
            let queued = std::iter::from_fn(|| {
                let item = rx.try_recv().ok();
                if let Some(i) = &item {
                    backlog.fetch_sub(i.weight(), Ordering::Relaxed);
                }
                item
            });
            for item in held.into_iter().chain(queued) {
                // Calls and queries were failed above; everything else is
                // kept for the next link, up to the bound.
                // Name definitions go again first on the next link.
                let answered_or_resent = matches!(
                    &item,
                    Outgoing::Message(Header::Request { .. }, _)
                        | Outgoing::Control(
                            Control::Query { .. } | Control::Ping { .. } | Control::Name { .. }
                        )
                );
                if answered_or_resent {
                    continue;
                }
                let n = messages(&item);
                if kept_messages + n <= keep {
                    kept_messages += n;
                    kept.push_back(item);
                } else {
                    dropped += n;
                }
            }
            w.queued_while_down = kept_messages;
            (calls, queries, kept, dropped)
        };
        self.count_dropped(dropped, why);
        let Some(kernel) = self.kernel.upgrade() else {
            return kept;
        };
        if !calls.is_empty() {
            tracing::warn!(peer = %self.node, calls = calls.len(), "failing cluster calls: {why}");
        }
        // In session order: the callers hear in the order they asked (and
        // a simulated run replays exactly).
        let mut calls: Vec<(u32, Waiter)> = calls.into_iter().collect();
        calls.sort_unstable_by_key(|(session, _)| *session);
        for (_, w) in calls {
            w.fail(&kernel, ErrorCause::NodeDown, why);
        }
        let mut queries: Vec<(u32, (String, Waiter))> = queries.into_iter().collect();
        queries.sort_unstable_by_key(|(request, _)| *request);
        for (_, (_, w)) in queries {
            w.fail(&kernel, ErrorCause::NodeDown, why);
        }
        kept
    }
}

/// Owns the peer's queue and connection for the sender's whole life.
pub(super) async fn run(
    cluster: Arc<Cluster>,
    sender: Arc<Sender>,
    mut rx: mpsc::UnboundedReceiver<Item>,
) {
    let limit = cluster.settings.queue_limit;
    let mut backoff = retry_delays();
    let mut held: VecDeque<Item> = VecDeque::new();
    // The life of the peer node the last link's first word came from.
    let mut peer_boot = None;
    loop {
        if held.is_empty() {
            // Lazy: no link until there is something to carry.
            tokio::select! {
                biased;
                () = sender.gone.cancelled() => break,
                item = rx.recv() => match item {
                    Some(item) => held.push_back(item),
                    None => break,
                },
            }
        }
        let address = sender.address();
        let config = cluster.settings.link(&cluster.name);
        // Connect, handshake and first word within one `dead_after`: the
        // calls waiting for this link wait no longer than for a silent one.
        let within = cluster.settings.dead_after;
        #[cfg(test)]
        let within = if crate::sim::broken(crate::sim::Break::WaitForConnects) {
            within * 1000
        } else {
            within
        };
        let attempt = tokio::select! {
            biased;
            () = sender.gone.cancelled() => break,
            () = sender.retarget.notified() => continue,
            a = tokio::time::timeout(within, establish(&cluster, &sender, &address, config, &mut peer_boot)) => {
                a.unwrap_or(Err(DriverError::HandshakeTimeout(within)))
            }
        };
        let why = match attempt {
            Ok((conn, again)) => {
                // Numbers and keeps from the first message on: what waited
                // for this link is written first, and may be lost with it.
                let mut conn = conn.with_keep(Box::new(SenderKeep(sender.clone())));
                backoff = retry_delays();
                {
                    let mut w = sender.waiting();
                    w.queued_while_down = 0;
                    w.unreachable = None;
                }
                sender.up.store(true, Ordering::Release);
                tracing::info!(peer = %sender.node, %address, "cluster link up");
                // The peer learns the interned names, then this node's
                // group members, first on every link.
                for d in sender.definitions() {
                    conn.send(Outgoing::Control(d));
                }
                held.retain(|i| !matches!(i, Outgoing::Control(Control::Name { .. })));
                if let Some(sync) = cluster.groups.sync() {
                    held.retain(|i| !matches!(i, Outgoing::Control(Control::GroupSync { .. })));
                    conn.send(Outgoing::Control(sync));
                }
                // What the last link lost goes first, with its numbers.
                for (header, payload) in again {
                    conn.send(Outgoing::Message(header, payload));
                }
                for item in held.drain(..) {
                    conn.send(item);
                }
                let Some(kernel) = cluster.kernel() else {
                    break;
                };
                let mut handler = SenderHandler {
                    kernel,
                    sender: sender.clone(),
                    settings: cluster.settings.clone(),
                };
                let why = tokio::select! {
                    biased;
                    r = conn
                        .with_backlog(sender.backlog.clone())
                        .with_stats(sender.stats.clone())
                        .run(&mut rx, &mut handler, &sender.gone) => match r {
                        Ok(()) => "link closed".to_string(),
                        Err(e) => format!("link to {address} down: {e}"),
                    },
                    () = sender.retarget.notified() => "the node moved to a new address".to_string(),
                };
                sender.up.store(false, Ordering::Release);
                if sender.gone.is_cancelled() {
                    // Closed on purpose: what it carried fails for that reason.
                    break;
                }
                tracing::warn!(peer = %sender.node, "cluster {why}");
                why
            }
            Err(e) => {
                let why = format!("cannot connect to {address}: {e}");
                tracing::debug!(peer = %sender.node, "{why}");
                let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                sender.waiting().unreachable = Some((Instant::now(), e.to_string()));
                held = sender.drop_link(
                    &mut rx,
                    std::mem::take(&mut held),
                    &sender.about(&why),
                    limit,
                );
                // A stale permit (traffic during the attempt) would cut this
                // wait at once: the gap still holds between attempts.
                tokio::time::sleep(RETRY_GAP.min(delay)).await;
                tokio::select! {
                    biased;
                    () = sender.gone.cancelled() => break,
                    () = sender.retarget.notified() => {}
                    () = sender.retry_now.notified() => {}
                    () = tokio::time::sleep(delay.saturating_sub(RETRY_GAP)) => {}
                }
                continue;
            }
        };
        held = sender.drop_link(
            &mut rx,
            std::mem::take(&mut held),
            &sender.about(&why),
            limit,
        );
        // A node with group members links again at once, so the peer
        // learns them back (the sync goes first on the new link).
        if held.is_empty()
            && let Some(sync) = cluster.groups.sync()
        {
            held.push_back(Outgoing::Control(sync));
        }
    }
    let why = sender
        .waiting()
        .closed
        .clone()
        .unwrap_or_else(|| sender.about("the node is stopping"));
    sender.waiting().closed = Some(why.clone());
    sender.drop_link(&mut rx, held, &why, 0);
    // What was written and not acknowledged may have arrived before the
    // link closed; no link will tell, so it counts as dropped.
    let unacknowledged = sender.outbox().drop_kept();
    sender.count_dropped(
        unacknowledged,
        "written, not acknowledged, and the sender closed",
    );
}

/// Makes a link to the sender's peer at `address`, and exchanges both
/// ends' first word: where the sender's numbering stands and what the peer
/// has of it. Gives the link and what to send again first on it.
async fn establish(
    cluster: &Cluster,
    sender: &Sender,
    address: &str,
    config: crate::transport::LinkConfig,
    peer_boot: &mut Option<u64>,
) -> Result<(Connection<Control, Header>, Vec<(Header, Vec<u8>)>), DriverError> {
    let mut conn = Connection::<Control, Header>::connect_secured(
        cluster.settings.net.as_ref(),
        address,
        config,
        cluster
            .settings
            .tls
            .as_ref()
            .map(|t| (t, sender.node.as_str())),
    )
    .await?;
    // The receiver speaks first: whether it is the life of its node this
    // sender spoke to decides what it is owed, and so the offer.
    let theirs = conn.first_control(cluster.settings.dead_after).await?;
    let again = sender
        .resume(theirs, peer_boot)
        .map_err(DriverError::Refused)?;
    let offer = {
        let outbox = sender.outbox();
        let (session, next) = outbox.offer();
        let first = outbox.first();
        Control::Offer {
            session,
            next,
            first,
        }
    };
    conn.send_control(offer);
    Ok((conn, again))
}

/// Numbers and keeps a sender's one-way messages as its links write them.
struct SenderKeep(Arc<Sender>);

impl Keep<Header> for SenderKeep {
    fn number(&mut self, header: &mut Header) -> bool {
        // Requests, the round trips, take no lock.
        header.one_way() && self.0.outbox().number(header)
    }

    fn keep(&mut self, header: Header, payload: Vec<u8>) {
        self.0.outbox().keep(header, payload);
    }
}

/// Hands the peer's answers to the callers waiting for them.
struct SenderHandler {
    kernel: Arc<Kernel>,
    sender: Arc<Sender>,
    settings: Settings,
}

impl LinkHandler<Control, Header> for SenderHandler {
    fn on_message(&mut self, header: Header, payload: Vec<u8>) {
        // A call that timed out or failed is gone from the table: its
        // answer is late, dropped and counted.
        let take = |session| {
            let waiter = self.sender.waiting().calls.remove(&session);
            if waiter.is_none() {
                self.kernel
                    .count_late_answer(crate::runtime::LateAt::Cluster);
            }
            waiter
        };
        match header {
            Header::Response {
                session,
                compressed,
                trace,
            } => {
                let Some(waiter) = take(session) else { return };
                #[cfg(test)]
                if crate::sim::broken(crate::sim::Break::AnswerTwice) {
                    let again = Waiter {
                        to: waiter.to,
                        session: waiter.session,
                    };
                    again.respond(&self.kernel, crate::runtime::Address(0), payload.clone());
                }
                match self.settings.unpack(payload, compressed) {
                    Ok(payload) => waiter.respond_traced(
                        &self.kernel,
                        crate::runtime::Address(0),
                        payload,
                        trace,
                    ),
                    Err(e) => waiter.fail(&self.kernel, ErrorCause::Service, &e),
                }
            }
            Header::Error { session, cause, .. } => {
                let Some(waiter) = take(session) else { return };
                let detail = String::from_utf8_lossy(&payload);
                waiter.fail(&self.kernel, ErrorCause::from_byte(cause), &detail);
            }
            other => {
                tracing::warn!(peer = %self.sender.node, "unexpected {other:?} on an outbound cluster link");
            }
        }
    }

    fn on_control(&mut self, control: Control) -> Result<(), String> {
        match control {
            Control::Received { floor } => {
                self.sender.outbox().received(floor);
                Ok(())
            }
            Control::QueryResult { request, address } => {
                let Some((name, waiter)) = self.sender.waiting().queries.remove(&request) else {
                    self.kernel
                        .count_late_answer(crate::runtime::LateAt::Cluster);
                    return Ok(());
                };
                match address {
                    Some(a) => respond(&self.kernel, waiter, a.to_le_bytes().to_vec()),
                    None => waiter.fail(
                        &self.kernel,
                        ErrorCause::UnknownAddress,
                        &format!("no name `{name}` on cluster node `{}`", self.sender.node),
                    ),
                }
                Ok(())
            }
            other => Err(format!("unexpected {other:?} on an outbound cluster link")),
        }
    }
}
