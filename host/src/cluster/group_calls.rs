//! The cluster's side of groups (see `groups`): telling the other nodes
//! about this node's members, and calling a member picked by policy.
//!
//! A call whose caller's node counts it (least pending), or a local call
//! with a timeout, goes through the relay: a host endpoint of its own that
//! makes the call, hands the answer (or a timeout) to the caller, and tells
//! `Groups` the call ended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::groups::{Member, Pick};
use super::proto::{Control, Policy, Target};
use super::{Cluster, Job, NodeAddress, Origin, lock};
use crate::runtime::endpoint::HostEndpoint;
use crate::runtime::{Address, ErrorCause, Kernel, Message, TenantId, Waiter, kind};
use crate::transport::Outgoing;

/// A call the relay makes for a caller.
struct Relayed {
    waiter: Waiter,
    tenant: TenantId,
    group: String,
    member: Member,
}

/// The host endpoint through which counted and timed group calls go.
pub(super) struct Relay {
    address: Address,
    calls: Mutex<HashMap<u32, Relayed>>,
    next: AtomicU32,
}

impl Relay {
    fn start(cluster: &Arc<Cluster>, kernel: &Arc<Kernel>) -> Arc<Relay> {
        let mut endpoint = HostEndpoint::new(kernel, "group-relay", kernel.host_tenant.clone());
        let relay = Arc::new(Relay {
            address: endpoint.address(),
            calls: Mutex::new(HashMap::new()),
            next: AtomicU32::new(0),
        });
        let (me, weak) = (relay.clone(), Arc::downgrade(cluster));
        let k = kernel.clone();
        kernel.tasks.spawn(async move {
            while let Some(m) = endpoint.recv().await {
                if !matches!(m.kind, kind::RESPONSE | kind::ERROR) {
                    continue;
                }
                let Some(call) = lock(&me.calls).remove(&m.session) else {
                    continue;
                };
                let answer = Message {
                    kind: m.kind,
                    source: m.source,
                    session: call.waiter.session,
                    tenant: TenantId::HOST,
                    payload: m.payload,
                    trace: m.trace,
                };
                let _ = k.deliver(call.waiter.to, answer);
                if let Some(c) = weak.upgrade() {
                    c.groups.call_ended(call.tenant, &call.group, &call.member);
                }
            }
        });
        relay
    }

    /// Takes `waiter`'s place for a call to `member`; the returned waiter
    /// is the relay's, and ends with a timeout after `timeout` if given.
    fn stand_in(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        call: Relayed,
        timeout: Option<Duration>,
    ) -> Waiter {
        let session = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        lock(&self.calls).insert(session, call);
        if let (Some(t), Some(kernel)) = (timeout, cluster.kernel()) {
            let (me, weak) = (self.clone(), Arc::downgrade(cluster));
            let cancel = cluster.cancel.clone();
            kernel.tasks.spawn(async move {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(t) => {
                        let Some(call) = lock(&me.calls).remove(&session) else { return };
                        let Some(c) = weak.upgrade() else { return };
                        c.groups.call_ended(call.tenant, &call.group, &call.member);
                        if let Some(k) = c.kernel() {
                            let detail = format!(
                                "group `{}`: member {} on `{}` did not answer within {t:?}",
                                call.group, call.member.address, call.member.node
                            );
                            call.waiter.fail(&k, ErrorCause::Timeout, &detail);
                        }
                    }
                }
            });
        }
        Waiter {
            to: self.address,
            session,
        }
    }
}

impl Cluster {
    /// `member` (a service of this node, of `tenant`) joins `group`.
    ///
    /// # Errors
    /// When `member` is not a live service of `tenant` on this node.
    pub fn join_group(
        self: &Arc<Self>,
        tenant: TenantId,
        group: &str,
        member: Address,
        policy: Policy,
    ) -> Result<(), String> {
        let kernel = self.kernel().ok_or("the node is stopping")?;
        let cluster = Arc::downgrade(self);
        let left = group.to_string();
        let leave: crate::runtime::ExitHook = Box::new(move || {
            if let Some(c) = cluster.upgrade() {
                c.leave_group(tenant, &left, member);
            }
        });
        if !kernel.hold(member, Some(tenant), group_key(group), leave) {
            return Err(format!(
                "{member} is not a service of this tenant on this node"
            ));
        }
        self.groups.join(tenant, group, member, policy);
        self.tell_peers(Control::GroupJoin {
            tenant: tenant.0,
            group: group.to_string(),
            policy,
            address: member.0,
        });
        Ok(())
    }

    /// `member` leaves `group` (also when it ends).
    pub fn leave_group(self: &Arc<Self>, tenant: TenantId, group: &str, member: Address) {
        if self.groups.leave(tenant, group, member) {
            self.tell_peers(Control::GroupLeave {
                tenant: tenant.0,
                group: group.to_string(),
                address: member.0,
            });
        }
        if let Some(kernel) = self.kernel() {
            kernel.forget_held(member, &group_key(group));
        }
    }

    /// Every member of `group` this node knows.
    pub fn group_members(&self, tenant: TenantId, group: &str) -> Vec<Member> {
        self.groups.members(tenant, group)
    }

    /// Tells every other node of the table about a change of this node's members.
    fn tell_peers(self: &Arc<Self>, control: Control) {
        for node in self.peers() {
            let _ = self.route(&node, Job::Item(Outgoing::Control(control.clone())));
        }
    }

    /// The nodes of the table at an address, but this one.
    fn peers(&self) -> Vec<String> {
        self.table()
            .nodes
            .iter()
            .filter(|(n, a)| **n != self.name && matches!(a, NodeAddress::At(_)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// After a new table: nodes that went leave every group here; nodes
    /// with no link yet get this node's members (which makes the link).
    pub(super) fn groups_follow_table(self: &Arc<Self>) {
        let table = self.table();
        for (node, address) in &table.nodes {
            if !matches!(address, NodeAddress::At(_)) {
                self.groups.node_gone(node);
            }
        }
        let Some(sync) = self.groups.sync() else {
            return;
        };
        for node in self.peers() {
            if self.senders.pin().get(&node).is_none() {
                let _ = self.route(&node, Job::Item(Outgoing::Control(sync.clone())));
            }
        }
    }

    /// Calls a member of `group` picked by its policy; `waiter` hears the answer.
    pub fn call_group(
        self: &Arc<Self>,
        origin: Origin,
        group: &str,
        key: &[u8],
        payload: Vec<u8>,
        waiter: Waiter,
        timeout: Option<Duration>,
    ) {
        let Some(kernel) = self.kernel() else { return };
        let Pick { member, policy } = match self.groups.pick(origin.tenant, group, key) {
            Ok(p) => p,
            Err(e) => return waiter.fail(&kernel, ErrorCause::UnknownAddress, &e),
        };
        let local = member.node == self.name;
        let relayed = policy == Policy::LeastPending || (local && timeout.is_some());
        let (waiter, timeout) = if relayed {
            let relay = self
                .relay
                .get_or_init(|| Relay::start(self, &kernel))
                .clone();
            let call = Relayed {
                waiter,
                tenant: origin.tenant,
                group: group.to_string(),
                member: member.clone(),
            };
            (relay.stand_in(self, call, timeout), None)
        } else {
            (waiter, timeout)
        };
        if !local {
            let target = Target::Address(member.address.0);
            return self.call(origin, &member.node, target, payload, waiter, timeout);
        }
        let request = Message {
            kind: kind::REQUEST,
            source: waiter.to,
            session: waiter.session,
            tenant: origin.tenant,
            payload: payload.into(),
            trace: origin.trace,
        };
        if let Err(e) = kernel.deliver(member.address, request) {
            let detail = format!("group `{group}`: member {}: {e}", member.address);
            waiter.fail(&kernel, e.cause(), &detail);
        }
    }
}

/// What a member holds in the runtime for `group` (its exit hook's key).
fn group_key(group: &str) -> String {
    format!("group:{group}")
}
