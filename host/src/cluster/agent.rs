//! The receiving side of a cluster link (Skynet's clusteragent): one per
//! inbound connection, with a host address of its own. A request from the
//! peer becomes a local call from that address; the answer that comes back
//! to it goes out as the peer's `Response`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::proto::{Control, Header, Target};
use super::{Cluster, Settings, lock};
use crate::runtime::endpoint::HostEndpoint;
use crate::runtime::{Address, Kernel, Message, TenantId, kind};
use crate::transport::batch;
use crate::transport::resume::{Arrival, Inbox};
use crate::transport::{Connection, LinkHandler, Listener, Outgoing, Socket};

type Item = Outgoing<Control, Header>;

/// Accepts cluster links and serves each with an agent.
pub(super) async fn accept_loop(cluster: Arc<Cluster>, listener: Box<dyn Listener>) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = cluster.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accepting a cluster link: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(kernel) = cluster.kernel() else {
            return;
        };
        let serve = serve(cluster.clone(), kernel.clone(), stream, from);
        kernel.spawn_beside_services(serve.in_current_span());
    }
}

/// Local sessions of the agent's calls -> the peer's link sessions.
type Sessions = Arc<Mutex<HashMap<u32, u32>>>;

async fn serve(
    cluster: Arc<Cluster>,
    kernel: Arc<Kernel>,
    stream: Socket,
    from: std::net::SocketAddr,
) {
    let config = cluster.settings.link(&cluster.name);
    let tls = cluster.settings.tls.as_ref();
    let mut conn = match Connection::<Control, Header>::accept_secured(stream, config, tls).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%from, "cluster link refused: {e}");
            return;
        }
    };
    let peer = conn.peer().map(|p| p.name.clone()).unwrap_or_default();
    let inbox = lock(&cluster.inboxes)
        .entry(peer.clone())
        .or_default()
        .clone();
    let (known, floor, since) = lock(&inbox).offer();
    // Broken on purpose: a receiver that keeps no record of what arrived.
    #[cfg(test)]
    let floor = if crate::sim::broken(crate::sim::Break::NoDedupe) {
        0
    } else {
        floor
    };
    let have = Control::Have {
        known,
        floor,
        since,
        boot: cluster.boot,
    };
    let session = match conn.exchange(have, cluster.settings.dead_after).await {
        Ok(Control::Offer { session, first, .. }) => {
            lock(&inbox).resume(session, first);
            session
        }
        Ok(other) => {
            tracing::warn!(%peer, %from, "cluster link refused: expected Offer first, got {other:?}");
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, %from, "cluster link refused: {e}");
            return;
        }
    };
    let mut endpoint = HostEndpoint::new(&kernel, "cluster-agent", kernel.host_tenant.clone());
    let agent = endpoint.address();
    tracing::info!(%peer, %from, %agent, "cluster link accepted");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sessions: Sessions = Arc::default();
    let link = cluster
        .next_link
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut handler = AgentHandler {
        link,
        peer: peer.clone(),
        kernel: kernel.clone(),
        cluster: cluster.clone(),
        agent,
        tx: tx.clone(),
        sessions: sessions.clone(),
        next: 0,
        names: HashMap::default(),
        inbox,
        session,
    };
    // Its own task: an answer then wakes the link's task once, from
    // outside, instead of the link's task waking itself.
    let settings = cluster.settings.clone();
    let answers_tx = tx.clone();
    let answer_sessions = sessions.clone();
    let answers = tokio_util::sync::CancellationToken::new();
    let stopped = answers.clone();
    kernel.spawn_beside_services(
        async move {
            tokio::select! {
                biased;
                () = stopped.cancelled() => {}
                () = forward_answers(&mut endpoint, &answers_tx, &answer_sessions, &settings) => {}
            }
        }
        .in_current_span(),
    );
    drop(tx);
    let stats = Arc::new(crate::transport::LinkStats::default());
    lock(&cluster.inbound).push((peer.clone(), from, stats.clone()));
    let result = conn
        .with_stats(stats.clone())
        .run(&mut rx, &mut handler, &cluster.cancel)
        .await;
    lock(&cluster.inbound).retain(|(_, _, s)| !Arc::ptr_eq(s, &stats));
    cluster.groups.link_closed(&peer, link);
    answers.cancel();
    match result {
        Ok(()) => tracing::info!(%peer, "cluster link closed"),
        Err(e) => tracing::warn!(%peer, %from, "cluster link closed: {e}"),
    }
}

/// Sends each answer that reaches the agent back to the peer.
async fn forward_answers(
    endpoint: &mut HostEndpoint,
    tx: &mpsc::UnboundedSender<Item>,
    sessions: &Sessions,
    settings: &Settings,
) {
    while let Some(m) = endpoint.recv().await {
        if !matches!(m.kind, kind::RESPONSE | kind::ERROR) {
            continue;
        }
        let Some(session) = lock(sessions).remove(&m.session) else {
            continue;
        };
        let item = if m.kind == kind::RESPONSE {
            let (payload, compressed) = settings.pack(m.payload.into());
            Outgoing::Message(
                Header::Response {
                    session,
                    compressed,
                    trace: m.trace,
                },
                payload,
            )
        } else {
            let cause = m.payload.first().copied().unwrap_or(0);
            let detail = m.payload.get(1..).unwrap_or_default().to_vec();
            Outgoing::Message(
                Header::Error {
                    session,
                    cause,
                    trace: m.trace,
                },
                detail,
            )
        };
        if tx.send(item).is_err() {
            return;
        }
    }
}

/// Delivers what the peer sends into this node.
struct AgentHandler {
    /// This link's number (for group rosters).
    link: u64,
    /// The peer's cluster name.
    peer: String,
    kernel: Arc<Kernel>,
    cluster: Arc<Cluster>,
    agent: Address,
    tx: mpsc::UnboundedSender<Item>,
    sessions: Sessions,
    next: u32,
    /// The names the peer interned on this link ([`Control::Name`]).
    names: HashMap<u32, String, fnv::FnvBuildHasher>,
    /// What arrived of the peer's one-way messages, over all its links.
    inbox: Arc<Mutex<Inbox>>,
    /// The peer's sending session this link resumed.
    session: u64,
}

/// Most names a peer may define on one link (its senders stop at 4,096).
const MAX_NAMES_PER_LINK: usize = 8192;

impl AgentHandler {
    fn refuse(&self, session: u32, cause: crate::runtime::ErrorCause, detail: String) {
        let header = Header::Error {
            session,
            cause: cause as u8,
            trace: 0,
        };
        let _ = self.tx.send(Outgoing::Message(header, detail.into_bytes()));
    }

    fn local_session(&mut self) -> u32 {
        self.next = self.next.wrapping_add(1).max(1);
        self.next
    }

    /// The local address `target` names: an address as it is, a name (sent
    /// as text or as a number this link defined) as the node resolves it.
    fn target(&self, tenant: TenantId, target: &Target) -> Result<Address, String> {
        let name = match target {
            Target::Address(a) => return Ok(Address(*a)),
            Target::Name(name) => name,
            Target::Interned(id) => self
                .names
                .get(id)
                .ok_or_else(|| format!("{target} was never defined on this cluster link"))?,
        };
        self.cluster.resolve_name(tenant, name).ok_or_else(|| {
            format!(
                "no service `{name}` on cluster node `{}`",
                self.cluster.name
            )
        })
    }

    /// Delivers what a `Push` (one send) or a `Pushes` (`batched`: that
    /// many records) carries to `target`; each send that cannot be
    /// delivered is counted.
    fn sends_arrived(
        &self,
        tenant: TenantId,
        target: &Target,
        trace: u64,
        (payload, compressed): (Vec<u8>, bool),
        batched: Option<u32>,
    ) {
        self.trace_in(trace, target, 0);
        let delivered = self.target(tenant, target).and_then(|dest| {
            let payload = self.cluster.settings.unpack(payload, compressed)?;
            if batched.is_some() {
                self.deliver_batch(dest, target, tenant, trace, payload.into());
                return Ok(());
            }
            let m = Message {
                kind: kind::TEXT,
                source: self.agent,
                session: 0,
                tenant,
                payload: payload.into(),
                trace,
            };
            self.kernel.deliver(dest, m).map_err(|e| e.to_string())
        });
        if let Err(e) = delivered {
            let n = batched.map_or(1, u64::from);
            self.cluster
                .send_undelivered(&self.peer, &self.shown(target), &e, n);
        }
    }

    /// Delivers the sends of one `Pushes` frame to `dest`, each payload a
    /// view of `records`, in one run. Where the mailbox refuses one (full,
    /// gone) it refuses the rest too: they are counted undelivered. A batch
    /// that does not parse is dropped whole (its sender's host checked it:
    /// the frame is bad).
    fn deliver_batch(
        &self,
        dest: Address,
        target: &Target,
        tenant: TenantId,
        trace: u64,
        records: bytes::Bytes,
    ) {
        let Ok(payloads) = batch::views(&records) else {
            tracing::warn!(peer = %self.peer, "a batch of cluster sends that does not parse: dropped");
            return;
        };
        let n = payloads.len();
        let mut run: Vec<Message> = payloads
            .into_iter()
            .map(|payload| Message {
                kind: kind::TEXT,
                source: self.agent,
                session: 0,
                tenant,
                payload,
                trace,
            })
            .collect();
        if let Err((went, e)) = self.kernel.deliver_run(dest, &mut run) {
            let shown = self.shown(target);
            let refused = (n - went) as u64;
            self.cluster
                .send_undelivered(&self.peer, &shown, &e.to_string(), refused);
        }
    }

    /// Logs a traced request or send arriving from a peer node.
    fn trace_in(&self, trace: u64, target: &Target, session: u32) {
        if trace != 0 {
            tracing::info!(
                target: "skyhost::trace",
                trace = format_args!("{trace:016x}"),
                target = %self.shown(target),
                session,
                "trace cluster in"
            );
        }
    }

    /// How `target` reads in logs and errors: an interned name as its name.
    fn shown(&self, target: &Target) -> String {
        match target {
            Target::Interned(id) => self
                .names
                .get(id)
                .cloned()
                .unwrap_or_else(|| target.to_string()),
            other => other.to_string(),
        }
    }

    /// Whether one-way message `seq` (`len` bytes) is to be delivered: not
    /// if it arrived before, on this link or an earlier one. Acknowledges
    /// what arrived every few hundred messages.
    fn first_arrival(&self, seq: u64, len: usize) -> bool {
        let mut inbox = lock(&self.inbox);
        // Numbered by an older sender (a link that outlived its
        // session), or by none: nothing here can tell a duplicate.
        if seq == 0 || inbox.session() != self.session {
            return true;
        }
        match inbox.arrived(seq, len) {
            Arrival::Fresh(ack) => {
                if let Some(floor) = ack {
                    let _ = self.tx.send(Outgoing::Control(Control::Received { floor }));
                }
                true
            }
            #[cfg(test)]
            Arrival::Duplicate if crate::sim::broken(crate::sim::Break::NoDedupe) => true,
            Arrival::Duplicate => {
                tracing::debug!(peer = %self.peer, seq, "a one-way message sent again had arrived: dropped");
                false
            }
            Arrival::TooFar => {
                tracing::warn!(peer = %self.peer, seq, "a one-way message numbered far past what arrived: dropped");
                false
            }
        }
    }
}

impl LinkHandler<Control, Header> for AgentHandler {
    fn on_message(&mut self, header: Header, payload: Vec<u8>) {
        if let Header::Push { seq, .. } | Header::Pushes { seq, .. } | Header::Channel { seq, .. } =
            &header
            && !self.first_arrival(*seq, payload.len())
        {
            return;
        }
        match header {
            Header::Request {
                session,
                tenant,
                target,
                compressed,
                trace,
            } => {
                self.trace_in(trace, &target, session);
                let tenant = TenantId(tenant);
                let dest = match self.target(tenant, &target) {
                    Ok(a) => a,
                    Err(e) => {
                        return self.refuse(session, crate::runtime::ErrorCause::UnknownAddress, e);
                    }
                };
                let payload = match self.cluster.settings.unpack(payload, compressed) {
                    Ok(p) => p,
                    Err(e) => return self.refuse(session, crate::runtime::ErrorCause::Service, e),
                };
                let local = self.local_session();
                lock(&self.sessions).insert(local, session);
                let m = Message {
                    kind: kind::REQUEST,
                    source: self.agent,
                    session: local,
                    tenant,
                    payload: payload.into(),
                    trace,
                };
                if let Err(e) = self.kernel.deliver(dest, m) {
                    lock(&self.sessions).remove(&local);
                    self.refuse(session, e.cause(), format!("{}: {e}", self.shown(&target)));
                }
            }
            Header::Push {
                tenant,
                target,
                compressed,
                trace,
                seq: _,
            } => self.sends_arrived(
                TenantId(tenant),
                &target,
                trace,
                (payload, compressed),
                None,
            ),
            Header::Pushes {
                tenant,
                target,
                compressed,
                trace,
                count,
                seq: _,
            } => {
                let payload = (payload, compressed);
                self.sends_arrived(TenantId(tenant), &target, trace, payload, Some(count));
            }
            Header::Channel {
                copy, compressed, ..
            } => match self.cluster.settings.unpack(payload, compressed) {
                Ok(p) => {
                    self.cluster.multicast.cluster_arrived(
                        &self.kernel,
                        &self.peer,
                        copy,
                        p.into(),
                    );
                }
                Err(e) => tracing::warn!(peer = %self.peer, "multicast dropped: {e}"),
            },
            other => tracing::warn!("unexpected {other:?} on an inbound cluster link"),
        }
    }

    fn on_control(&mut self, control: Control) -> Result<(), String> {
        match control {
            Control::Name { id, name } => {
                if self.names.len() >= MAX_NAMES_PER_LINK && !self.names.contains_key(&id) {
                    return Err(format!(
                        "more than {MAX_NAMES_PER_LINK} names defined on one link"
                    ));
                }
                self.names.insert(id, name);
                Ok(())
            }
            Control::Query { request, name } => {
                let address = lock(&self.cluster.names).get(&name).map(|a| a.0);
                let answer = Control::QueryResult { request, address };
                let _ = self.tx.send(Outgoing::Control(answer));
                Ok(())
            }
            Control::Channel(c) => {
                self.cluster
                    .multicast
                    .cluster_control_arrived(&self.kernel, &self.peer, c);
                Ok(())
            }
            Control::Ping { session, address } => {
                if address == 0 {
                    let pong = Header::Response {
                        session,
                        compressed: false,
                        trace: 0,
                    };
                    let _ = self.tx.send(Outgoing::Message(pong, Vec::new()));
                    return Ok(());
                }
                let local = self.local_session();
                lock(&self.sessions).insert(local, session);
                let ping = Message {
                    kind: kind::SYSTEM,
                    source: self.agent,
                    session: local,
                    tenant: TenantId::HOST,
                    payload: Default::default(),
                    trace: 0,
                };
                if let Err(e) = self.kernel.deliver(Address(address), ping) {
                    lock(&self.sessions).remove(&local);
                    self.refuse(
                        session,
                        e.cause(),
                        format!("ping {}: {e}", Address(address)),
                    );
                }
                Ok(())
            }
            c @ (Control::GroupJoin { .. }
            | Control::GroupLeave { .. }
            | Control::GroupSync { .. }) => {
                self.cluster.groups.peer_said(&self.peer, self.link, c);
                Ok(())
            }
            other => Err(format!("unexpected {other:?} on an inbound cluster link")),
        }
    }
}
