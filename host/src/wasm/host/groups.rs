//! `skyhost:service/groups`: named sets of services across the cluster.

use super::cluster::NOT_IN_A_CLUSTER;
use crate::runtime::Address;
use crate::wasm::bindings::skyhost::service::groups;
use crate::wasm::state::ServiceState;

impl From<groups::Policy> for crate::cluster::proto::Policy {
    fn from(p: groups::Policy) -> Self {
        match p {
            groups::Policy::RoundRobin => Self::RoundRobin,
            groups::Policy::ConsistentHash => Self::ConsistentHash,
            groups::Policy::LeastPending => Self::LeastPending,
        }
    }
}

impl groups::Host for ServiceState {
    fn join(&mut self, group: String, member: u32, policy: groups::Policy) -> Result<(), String> {
        let cluster = self.parts.cluster.get().ok_or(NOT_IN_A_CLUSTER)?;
        cluster.join_group(self.tenant, &group, Address(member), policy.into())
    }

    fn leave(&mut self, group: String, member: u32) {
        if let Some(c) = self.parts.cluster.get() {
            c.leave_group(self.tenant, &group, Address(member));
        }
    }

    fn members(&mut self, group: String) -> Vec<groups::Member> {
        let Some(c) = self.parts.cluster.get() else {
            return Vec::new();
        };
        c.group_members(self.tenant, &group)
            .into_iter()
            .map(|m| groups::Member {
                node: m.node,
                address: m.address.0,
            })
            .collect()
    }

    fn call(&mut self, group: String, key: Vec<u8>, payload: Vec<u8>, timeout_ms: u32) -> u32 {
        self.cluster_request(
            payload,
            timeout_ms,
            |c, origin, waiter, timeout, payload| {
                c.call_group(origin, &group, &key, payload, waiter, timeout);
            },
        )
    }
}
