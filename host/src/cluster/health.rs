//! Health checks (seed §5.3) of other nodes and of group members, and the
//! state failover reads.
//!
//! ```text
//!  every interval: one round
//!    targets = the nodes of the table (all with [cluster.health]; else only
//!              those that have a backup) + every group member (with [cluster.health])
//!    node X     -> Control::Ping {address 0} on X's link  (answered by X's agent)
//!    member m   -> a runtime ping (`system` message with a session): local,
//!                  or Control::Ping {address m} on m's node's link
//!    answers come to the checker's own host endpoint until the deadline
//!  K failures in a row -> taken out: a member leaves every pick (Groups::set_out);
//!                         a node's calls go to its backup, or fail at once
//!  one answer          -> put back
//! ```
//! The runtime answers a ping when the service picks it up, without
//! entering the guest: a service stuck in a long dispatch, a mailbox too
//! long, a stopped process or a dead link all fail it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::groups::Member;
use super::{Cluster, Job, NodeAddress};
use crate::config::HealthConfig;
use crate::runtime::endpoint::HostEndpoint;
use crate::runtime::{Kernel, Message, TenantId, Waiter, kind};

/// What one check is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Checked {
    Node(String),
    Member(Member),
}

/// The nodes taken out now, read on the call path.
#[derive(Default)]
pub(crate) struct NodesOut {
    out: ArcSwap<BTreeSet<String>>,
}

impl NodesOut {
    /// Whether `node` failed its last checks.
    pub fn contains(&self, node: &str) -> bool {
        let out = self.out.load();
        !out.is_empty() && out.contains(node)
    }

    fn set(&self, node: &str, out: bool) {
        let mut next = (**self.out.load()).clone();
        if out {
            next.insert(node.to_string());
        } else {
            next.remove(node);
        }
        self.out.store(Arc::new(next));
    }
}

/// Starts the checker of `cluster`.
pub(super) fn start(cluster: &Arc<Cluster>, kernel: &Arc<Kernel>, config: Option<HealthConfig>) {
    let task = run(
        Arc::downgrade(cluster),
        config.clone().unwrap_or_default(),
        config.is_some(),
        cluster.cancel.clone(),
    );
    kernel.tasks.spawn(tracing::Instrument::instrument(
        task,
        tracing::info_span!("health", node = %cluster.name),
    ));
}

async fn run(
    cluster: Weak<Cluster>,
    config: HealthConfig,
    everything: bool,
    cancel: CancellationToken,
) {
    let mut failures: HashMap<Checked, u32> = HashMap::new();
    let mut session = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(config.timeout_ms);
    // Made when there is first something to check.
    let mut endpoint: Option<HostEndpoint> = None;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(c) = cluster.upgrade() else { return };
        let targets = c.health_targets(everything);
        // What is no longer there is forgotten (and no longer out).
        failures.retain(|t, _| targets.contains(t));
        c.forget_gone(&targets);
        if targets.is_empty() {
            continue;
        }
        let Some(kernel) = c.kernel() else { return };
        let endpoint = endpoint.get_or_insert_with(|| {
            HostEndpoint::new(&kernel, "health", kernel.host_tenant.clone())
        });
        let mut asked: HashMap<u32, Checked> = HashMap::new();
        let deadline = Instant::now() + timeout;
        for target in targets {
            session = session.wrapping_add(1).max(1);
            let waiter = Waiter {
                to: endpoint.address(),
                session,
            };
            if c.ping(&target, waiter, timeout) {
                asked.insert(session, target);
            } else {
                c.verdict(&mut failures, &target, false, config.failures);
            }
        }
        drop(c);
        let mut answered = Vec::new();
        while !asked.is_empty() {
            let m = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => break,
                m = endpoint.recv() => match m { Some(m) => m, None => return },
            };
            if let Some(target) = asked.remove(&m.session) {
                answered.push((target, m.kind == kind::RESPONSE));
            }
        }
        let Some(c) = cluster.upgrade() else { return };
        for (target, ok) in answered {
            c.verdict(&mut failures, &target, ok, config.failures);
        }
        for target in asked.into_values() {
            c.verdict(&mut failures, &target, false, config.failures);
        }
    }
}

impl Cluster {
    /// How many nodes and group members are taken out now.
    pub fn taken_out(&self) -> (usize, usize) {
        (self.nodes_out.out.load().len(), self.groups.out_count())
    }

    /// What a round checks.
    fn health_targets(&self, everything: bool) -> Vec<Checked> {
        let table = self.table();
        let mut targets: Vec<Checked> = table
            .nodes
            .iter()
            .filter(|(n, a)| {
                **n != self.name
                    && matches!(a, NodeAddress::At(_))
                    && (everything || table.backups.contains_key(*n))
            })
            .map(|(n, _)| Checked::Node(n.clone()))
            .collect();
        if everything {
            targets.extend(self.groups.all_members().into_iter().map(Checked::Member));
        }
        targets
    }

    /// Puts back what is out but no longer checked (gone from the table or
    /// from every group).
    fn forget_gone(&self, targets: &[Checked]) {
        for node in self.nodes_out.out.load().iter() {
            if !targets.contains(&Checked::Node(node.clone())) {
                self.nodes_out.set(node, false);
            }
        }
        let members: std::collections::HashSet<&Member> = targets
            .iter()
            .filter_map(|t| match t {
                Checked::Member(m) => Some(m),
                Checked::Node(_) => None,
            })
            .collect();
        self.groups.keep_out_only(|m| members.contains(m));
    }

    /// Sends one check; false when it failed at once.
    fn ping(self: &Arc<Self>, target: &Checked, waiter: Waiter, timeout: Duration) -> bool {
        let (node, address) = match target {
            Checked::Node(n) => (n.as_str(), 0),
            Checked::Member(m) if m.node == self.name => {
                let Some(kernel) = self.kernel() else {
                    return false;
                };
                let ping = Message {
                    kind: kind::SYSTEM,
                    source: waiter.to,
                    session: waiter.session,
                    tenant: TenantId::HOST,
                    payload: Default::default(),
                    trace: 0,
                };
                return kernel.deliver(m.address, ping).is_ok();
            }
            Checked::Member(m) => (m.node.as_str(), m.address.0),
        };
        let job = Job::Ping {
            address,
            waiter,
            timeout,
        };
        // Straight to the node's link: a check must reach a node that is out.
        self.route_to_link(node, job).is_ok()
    }

    /// Counts one check's outcome; takes out or puts back.
    fn verdict(&self, failures: &mut HashMap<Checked, u32>, target: &Checked, ok: bool, k: u32) {
        let n = failures.entry(target.clone()).or_default();
        let was_out = *n >= k;
        *n = if ok { 0 } else { n.saturating_add(1) };
        let is_out = *n >= k;
        if was_out == is_out {
            return;
        }
        match target {
            Checked::Node(node) => {
                self.nodes_out.set(node, is_out);
                if is_out {
                    tracing::warn!(peer = %node, failures = k, "cluster node taken out: failed its health checks");
                } else {
                    tracing::info!(peer = %node, "cluster node put back: it answers its health checks");
                }
            }
            Checked::Member(m) => {
                self.groups.set_out(m, is_out);
                let address = m.address;
                if is_out {
                    tracing::warn!(member = %address, peer = %m.node, failures = k, "group member taken out: failed its health checks");
                } else {
                    tracing::info!(member = %address, peer = %m.node, "group member put back");
                }
            }
        }
    }
}
