//! The links to the other nodes of the harbor: one `Peer` per node (its
//! queue, the requests in flight to it, monitors across it), the task that
//! owns its connection (dialling, or waiting to be dialled), the listener
//! that takes the dialled ones, and what arrives on a peer link.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::proto::{Control, PEER_PROTOCOL};
use super::{Harbor, lock, retry_delays};
use crate::multicast::Multicast;
use crate::runtime::{Address, GUEST_SESSIONS, Kernel, LateAt, Message, TenantId, kind};
use crate::transport::batch;
use crate::transport::driver::Keep;
use crate::transport::resume::{Arrival, Inbox, Numbered, Outbox};
use crate::transport::{Connection, Envelope, LinkHandler, Listener, Outgoing};

/// One other node of the harbor, as seen from here.
pub(crate) struct Peer {
    pub(super) id: u8,
    pub(super) tx: mpsc::UnboundedSender<Outgoing<Control>>,
    pub(super) incoming: mpsc::UnboundedSender<Connection<Control>>,
    pub(super) inflight: Mutex<Inflight>,
    /// `(watcher here, target there)` monitors across this link.
    pub(super) monitors: Mutex<HashSet<(u32, u32)>>,
    /// Weight (bytes) waiting in `tx` (counted up by senders, down by the driver).
    pub(super) backlog: Arc<std::sync::atomic::AtomicUsize>,
    pub(super) up: AtomicBool,
    /// What its connections carried.
    pub(super) stats: Arc<crate::transport::LinkStats>,
    /// Where it accepts links (from the master's directory).
    pub(super) address: Mutex<Option<String>>,
    /// Cancelled when the master says the node is gone.
    pub(super) gone: CancellationToken,
    /// This node's one-way messages to the peer: numbers, and what its
    /// links wrote and the peer has not acknowledged.
    pub(super) outbox: Mutex<Outbox<Envelope>>,
    /// The peer's one-way messages that arrived.
    pub(super) inbox: Mutex<Inbox>,
}

/// Requests sent to a peer and not answered yet: `(caller, session)` and
/// how many (a guest's protocol on `send` may ask several services under
/// one session). An answer ends one; an answer for a pair not here is late
/// (its request was failed when the link dropped) and is dropped.
#[derive(Default)]
pub(super) struct Inflight {
    pub(super) closed: bool,
    /// The last attempt to link failed and this node waits to try again:
    /// a request then fails at once instead of waiting for the backoff and
    /// the next attempt (a call ends within `dead_after`).
    pub(super) unreachable: bool,
    pub(super) calls: HashMap<(u32, u32), u32>,
}

impl Inflight {
    pub(super) fn open(&mut self, key: (u32, u32)) {
        *self.calls.entry(key).or_insert(0) += 1;
    }

    /// Ends one request of `key`; false when none was in flight.
    pub(super) fn close(&mut self, key: (u32, u32)) -> bool {
        match self.calls.get_mut(&key) {
            None => false,
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.calls.remove(&key);
                true
            }
        }
    }
}

impl Peer {
    pub(super) fn inflight(&self) -> MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this end says first on a new link: where its sending session
    /// and its receiving side stand.
    fn resume_offer(&self) -> Control {
        let (session, next) = lock(&self.outbox).offer();
        let (known, floor, since) = lock(&self.inbox).offer();
        // Broken on purpose: a receiver that keeps no record of what arrived.
        #[cfg(test)]
        let floor = if crate::sim::broken(crate::sim::Break::NoDedupe) {
            0
        } else {
            floor
        };
        Control::Resume {
            session,
            next,
            known,
            floor,
            since,
        }
    }

    /// Takes the peer's first word on a new link: the messages to send
    /// again on it, in order; kept messages the peer cannot want (it does
    /// not know this session) are counted dropped.
    fn resume(&self, harbor: &Harbor, theirs: Control) -> Result<Vec<(Envelope, Vec<u8>)>, String> {
        let Control::Resume {
            session,
            next,
            known,
            floor,
            since,
        } = theirs
        else {
            return Err(format!(
                "expected Resume first on a peer link, got {theirs:?}"
            ));
        };
        lock(&self.inbox).resume(session, next);
        let (again, dropped) = lock(&self.outbox).resume(known, floor, since);
        if dropped > 0 {
            harbor.count_dropped(self.id, dropped as u64);
        }
        Ok(again)
    }

    /// Queues an item for the peer's link, counting it in the backlog.
    pub(super) fn send(&self, item: Outgoing<Control>) -> bool {
        let weight = item.weight();
        self.backlog.fetch_add(weight, Ordering::Relaxed);
        if self.tx.send(item).is_err() {
            self.backlog.fetch_sub(weight, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// A harbor message is one-way unless it is a request that waits for an
/// answer, or an answer: sends, multicast copies and exit notices are
/// numbered, kept and sent again on the next link.
impl Numbered for Envelope {
    fn one_way(&self) -> bool {
        let answer = matches!(self.kind, kind::RESPONSE | kind::ERROR);
        let request = self.kind == kind::REQUEST && self.session != 0;
        !(answer || request)
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    fn messages(&self) -> usize {
        (self.batched as usize).max(1)
    }
}

/// Numbers and keeps a peer's one-way messages as its links write them.
struct PeerKeep(Arc<Peer>);

impl Keep<Envelope> for PeerKeep {
    fn number(&mut self, header: &mut Envelope) -> bool {
        // Requests and answers, the round trips, take no lock.
        header.one_way() && lock(&self.0.outbox).number(header)
    }

    fn keep(&mut self, header: Envelope, payload: Vec<u8>) {
        lock(&self.0.outbox).keep(header, payload);
    }
}

/// Accepts links from other nodes and hands each to its peer's task.
pub(super) async fn accept_loop(harbor: Arc<Harbor>, listener: Box<dyn Listener>) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = harbor.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accepting a peer link: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let h = harbor.clone();
        let config = harbor.links.config(PEER_PROTOCOL, harbor.name());
        let task = async move {
            let tls = h.links.tls.as_ref();
            let conn = match Connection::<Control>::accept_secured(stream, config, tls).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%from, "peer link refused: {e}");
                    return;
                }
            };
            let claimed = conn.peer().map(|p| p.name.clone()).unwrap_or_default();
            match claimed.parse::<u8>() {
                Ok(id) if id != 0 && id != h.id.0 => {
                    if let Some(peer) = h.ensure_peer(id, None) {
                        let _ = peer.incoming.send(conn);
                    }
                }
                _ => {
                    tracing::warn!(%from, name = %claimed, "peer link from a node that is not a harbor id; closed")
                }
            }
        };
        if let Some(kernel) = harbor.kernel() {
            kernel.spawn_beside_services(task.in_current_span());
        }
    }
}

/// After a failed attempt to link: fails what waits for the link, and
/// waits out the backoff with the peer marked unreachable (a request then
/// fails at once). False when the peer is gone meanwhile.
async fn back_off(
    harbor: &Harbor,
    peer: &Peer,
    rx: &mut mpsc::UnboundedReceiver<Outgoing<Control>>,
    backoff: &mut impl Iterator<Item = Duration>,
    why: &str,
) -> bool {
    peer.inflight().unreachable = true;
    harbor.fail_inflight(peer, rx, false, why);
    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
    let waited = tokio::select! {
        biased;
        () = peer.gone.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    };
    peer.inflight().unreachable = false;
    waited
}

/// Owns one peer's queue and connection for the peer's whole life.
pub(super) async fn peer_task(
    harbor: Arc<Harbor>,
    peer: Arc<Peer>,
    mut rx: mpsc::UnboundedReceiver<Outgoing<Control>>,
    mut incoming: mpsc::UnboundedReceiver<Connection<Control>>,
    dial: Option<String>,
) {
    let mut backoff = retry_delays();
    let mut next: Option<Connection<Control>> = None;
    loop {
        // Connect, handshake and first word within one `dead_after`: the
        // calls waiting for this link wait no longer than for a silent one.
        let mut began = tokio::time::Instant::now();
        let conn = match next.take() {
            Some(c) => c,
            None => {
                let attempt = async {
                    match &dial {
                        // Connect and handshake within one `dead_after`.
                        Some(address) => tokio::time::timeout(harbor.links.dead_after, async {
                            let config = harbor.links.config(PEER_PROTOCOL, harbor.name());
                            let name = peer.id.to_string();
                            let tls = harbor.links.tls.as_ref().map(|t| (t, name.as_str()));
                            let net = harbor.links.net.as_ref();
                            Connection::connect_secured(net, address, config, tls)
                                .await
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!("no link within {:?}", harbor.links.dead_after))
                        }),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = peer.gone.cancelled() => break,
                    c = incoming.recv() => match c {
                        Some(c) => {
                            began = tokio::time::Instant::now();
                            c
                        }
                        None => break,
                    },
                    r = attempt => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!("dialling harbor {}: {e}", peer.id);
                            let why = format!("cannot connect: {e}");
                            if back_off(&harbor, &peer, &mut rx, &mut backoff, &why).await {
                                continue;
                            }
                            break;
                        }
                    },
                    () = tokio::time::sleep(harbor.links.dead_after) => {
                        harbor.fail_inflight(&peer, &mut rx, false, "no link made in time");
                        continue;
                    }
                }
            }
        };
        let mut conn = conn;
        let offer = peer.resume_offer();
        // What the attempt left of `dead_after`, but never less than a
        // quarter of it: a link whose handshake took nearly all of it still
        // gets a round trip for the first word.
        let within = harbor
            .links
            .dead_after
            .saturating_sub(began.elapsed())
            .max(harbor.links.dead_after / 4);
        let resumed = match conn.exchange(offer, within).await {
            Ok(theirs) => peer.resume(&harbor, theirs),
            Err(e) => Err(e.to_string()),
        };
        match resumed {
            Ok(again) => {
                for (header, payload) in again {
                    conn.send(Outgoing::Message(header, payload));
                }
            }
            Err(why) => {
                tracing::warn!(peer = peer.id, "peer link failed as it began: {why}");
                if back_off(&harbor, &peer, &mut rx, &mut backoff, &why).await {
                    continue;
                }
                break;
            }
        }
        backoff = retry_delays();
        tracing::info!(peer = peer.id, address = ?conn.peer_address(), "peer link up");
        peer.up.store(true, Ordering::Release);
        harbor.fire_watchers();
        let Some(kernel) = harbor.kernel() else { break };
        let mut handler = PeerHandler {
            kernel,
            multicast: harbor.multicast.clone(),
            peer: peer.clone(),
        };
        let why = tokio::select! {
            biased;
            r = conn
                .with_backlog(peer.backlog.clone())
                .with_stats(peer.stats.clone())
                .with_keep(Box::new(PeerKeep(peer.clone())))
                .run(&mut rx, &mut handler, &peer.gone) => match r {
                Ok(()) => "closed".to_string(),
                Err(e) => e.to_string(),
            },
            c = incoming.recv() => {
                next = c;
                "replaced by a new link".to_string()
            }
        };
        peer.up.store(false, Ordering::Release);
        if !peer.gone.is_cancelled() {
            tracing::warn!(peer = peer.id, "peer link down: {why}");
        }
        harbor.fail_inflight(&peer, &mut rx, false, &why);
        harbor.fire_watchers();
    }
    peer.up.store(false, Ordering::Release);
    harbor.fail_inflight(&peer, &mut rx, true, "the node left the harbor");
    harbor.fire_watchers();
}

/// Delivers what a peer sends into this node.
struct PeerHandler {
    kernel: Arc<Kernel>,
    multicast: Arc<Multicast>,
    peer: Arc<Peer>,
}

impl PeerHandler {
    /// Delivers the one-way messages of a batched envelope to its `dest`,
    /// each payload a view of `records`, in one run. Where the mailbox
    /// refuses one (full, gone) it refuses the rest too: they are dropped (a
    /// send has no one to tell). A batch that could not have been sent (a
    /// kind that is not one-way, records that do not parse) is dropped whole.
    fn deliver_batch(&self, e: Envelope, records: Vec<u8>) {
        let dest = Address(e.dest);
        let one_way = super::batchable(e.kind, e.session);
        let records = bytes::Bytes::from(records);
        let payloads = batch::views(&records);
        let (true, Ok(payloads), true) = (one_way, payloads, dest.harbor() == self.kernel.harbor)
        else {
            tracing::warn!(peer = self.peer.id, %dest, kind = e.kind, "a batch that could not have been sent: dropped");
            return;
        };
        if e.trace != 0 {
            tracing::info!(
                target: "skyhost::trace",
                trace = format_args!("{:016x}", e.trace),
                source = %Address(e.source),
                %dest,
                kind = e.kind,
                count = payloads.len(),
                "trace harbor in"
            );
        }
        let n = payloads.len();
        let mut run: Vec<Message> = payloads
            .into_iter()
            .map(|payload| Message {
                kind: e.kind,
                source: Address(e.source),
                session: e.session,
                tenant: TenantId(e.tenant),
                payload,
                trace: e.trace,
            })
            .collect();
        if let Err((went, err)) = self.kernel.deliver_run(dest, &mut run) {
            tracing::debug!(%dest, dropped = n - went, "messages from harbor {} not delivered: {err}", self.peer.id);
        }
    }
}

impl LinkHandler<Control> for PeerHandler {
    fn on_message(&mut self, e: Envelope, payload: Vec<u8>) {
        if e.seq != 0 {
            let arrival = lock(&self.peer.inbox).arrived(e.seq, payload.len());
            match arrival {
                #[cfg(test)]
                Arrival::Duplicate if crate::sim::broken(crate::sim::Break::NoDedupe) => {}
                Arrival::Duplicate => {
                    tracing::debug!(seq = e.seq, "a message sent again had arrived; dropped");
                    return;
                }
                Arrival::Fresh(Some(floor)) => {
                    self.peer
                        .send(Outgoing::Control(Control::Received { floor }));
                }
                Arrival::Fresh(None) => {}
                Arrival::TooFar => {
                    tracing::warn!(
                        seq = e.seq,
                        peer = self.peer.id,
                        "a message numbered far past what arrived; dropped"
                    );
                    return;
                }
            }
        }
        if e.batched > 0 {
            return self.deliver_batch(e, payload);
        }
        // An answer ends its request in flight; one with none is late (its
        // request was failed when the link dropped). Host-import sessions
        // only: a guest's protocol on `send` may be answered with `respond`
        // to a message that was no request.
        let late = matches!(e.kind, kind::RESPONSE | kind::ERROR)
            && !self.peer.inflight().close((e.dest, e.session))
            && e.session & GUEST_SESSIONS == 0;
        if late {
            self.kernel.count_late_answer(LateAt::Harbor);
            tracing::debug!(
                dest = %Address(e.dest),
                source = %Address(e.source),
                session = e.session,
                "late answer from harbor {} dropped: its request had failed",
                self.peer.id
            );
            return;
        }
        match e.kind {
            kind::EXIT => {
                lock(&self.peer.monitors).remove(&(e.dest, e.source));
            }
            kind::MULTICAST if e.dest == 0 => {
                let source = Address(e.source);
                let payload = payload.into();
                let key = (TenantId(e.tenant), e.session);
                self.multicast
                    .arrived(&self.kernel, self.peer.id, key, source, payload);
                return;
            }
            _ => {}
        }
        let dest = Address(e.dest);
        let source = Address(e.source);
        let message = Message {
            kind: e.kind,
            source,
            session: e.session,
            tenant: TenantId(e.tenant),
            payload: payload.into(),
            trace: e.trace,
        };
        if e.trace != 0 {
            tracing::info!(
                target: "skyhost::trace",
                trace = format_args!("{:016x}", e.trace),
                %source,
                %dest,
                kind = e.kind,
                session = e.session,
                "trace harbor in"
            );
        }
        let wants_reply = message.wants_reply();
        if dest.harbor() != self.kernel.harbor {
            tracing::debug!(%dest, "message for another harbor id dropped (no relaying)");
            return;
        }
        #[cfg(test)]
        if crate::sim::broken(crate::sim::Break::AnswerTwice) && message.kind == kind::RESPONSE {
            let _ = self.kernel.deliver(dest, message.clone());
        }
        if let Err(err) = self.kernel.deliver(dest, message) {
            if wants_reply {
                let reply = Message::error(dest, e.session, err.cause(), &err.to_string());
                let _ = self.kernel.deliver(source, reply);
            } else {
                tracing::debug!(%dest, %source, "message from harbor {} not delivered: {err}", self.peer.id);
            }
        }
    }

    fn on_control(&mut self, control: Control) -> Result<(), String> {
        let local = |a: u32| Address(a).harbor() == self.kernel.harbor;
        match control {
            Control::Monitor {
                tenant,
                watcher,
                target,
            } if local(target) => {
                let tenant = TenantId(tenant);
                self.kernel
                    .monitor(tenant, Address(watcher), Address(target));
            }
            Control::Demonitor { watcher, target } if local(target) => {
                self.kernel.demonitor(Address(watcher), Address(target));
            }
            Control::Channel(c) => {
                self.multicast
                    .control_arrived(&self.kernel, self.peer.id, c);
            }
            Control::Received { floor } => lock(&self.peer.outbox).received(floor),
            other => {
                return Err(format!(
                    "unexpected control message on a peer link: {other:?}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One answer ends one request; an answer with none in flight is late.
    #[test]
    fn inflight_counts_requests_under_one_session() {
        let mut inflight = Inflight::default();
        let key = (0x0000_0102, 7);
        assert!(!inflight.close(key), "nothing was in flight");
        inflight.open(key);
        inflight.open(key);
        assert!(inflight.close(key));
        assert!(inflight.close(key));
        assert!(!inflight.close(key), "a third answer is late");
        assert!(inflight.calls.is_empty());
    }

    fn message(kind: u8, session: u32) -> Envelope {
        Envelope {
            dest: 0x101,
            source: 0x102,
            session,
            kind,
            tenant: 0,
            trace: 0,
            seq: 0,
            batched: 0,
        }
    }

    #[test]
    fn requests_and_answers_are_not_numbered() {
        assert!(!message(kind::REQUEST, 3).one_way());
        assert!(!message(kind::RESPONSE, 3).one_way());
        assert!(!message(kind::ERROR, 3).one_way());
        assert!(message(kind::TEXT, 0).one_way());
        assert!(
            message(kind::REQUEST, 0).one_way(),
            "a request wanting no answer is a send"
        );
    }
}
