//! Groups, like Erlang's `pg`: a named set of service addresses across the
//! cluster's nodes, called through a balancing policy.
//!
//! ```text
//!  service on A: groups.join("game", self, hash)
//!    -> Groups (A's own members)  -> Control::GroupJoin to every node of A's table
//!  A's link to B comes up         -> Control::GroupSync (all of A's members) first:
//!                                    B replaces what it held for A
//!  B's link from A closes, A leaves B's table, a member exits (GroupLeave)
//!                                 -> B drops those members at once
//!  service on B: groups.call("game", key, payload)
//!    -> Groups::pick among every member B knows (its own and each peer's),
//!       by the group's policy -> a local call, or a cluster call to the member's node
//! ```
//!
//! Each node decides alone, from the same member list: round robin keeps a
//! cursor per group on the caller's node; consistent hashing builds a ring
//! of 150 virtual nodes per member with fixed SipHash keys (`hashring`), so
//! every node maps a key to the same member; least pending counts, on the
//! caller's node, the calls it has in flight to each member (those calls,
//! and local calls with a timeout, go through the node's group relay, a
//! host endpoint that sees each answer).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use hashring::HashRing;

use super::proto::{Control, GroupMember, Policy};
use crate::runtime::{Address, TenantId};

/// Virtual nodes per member on a consistent-hash ring.
pub const VIRTUAL_NODES: u32 = 150;

/// A member as every node names it: its node and its address there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// The cluster node it runs on.
    pub node: String,
    /// Its address on that node.
    pub address: Address,
}

/// A group, in a tenant's namespace.
type GroupKey = (TenantId, String);

/// One node's members of one group.
#[derive(Debug, Clone)]
struct Entry {
    policy: Policy,
    addresses: BTreeSet<u32>,
}

/// One node's members of every group.
type Roster = HashMap<GroupKey, Entry>;

/// A point of a consistent-hash ring.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct VirtualNode {
    node: String,
    address: u32,
    replica: u32,
}

/// What a caller's node derives from a group's members, rebuilt when they change.
#[derive(Default)]
struct View {
    version: u64,
    members: Arc<[Member]>,
    policy: Option<Policy>,
    ring: Option<Arc<HashRing<VirtualNode>>>,
    cursor: usize,
    pending: HashMap<Member, u32>,
}

#[derive(Default)]
struct State {
    /// Bumped on every change of any roster.
    version: u64,
    local: Roster,
    /// Each peer's members, with the id of the link they came on.
    remote: HashMap<String, (u64, Roster)>,
    /// Members taken out by health checks until they answer again.
    out: HashSet<Member>,
    views: HashMap<GroupKey, View>,
}

/// A member picked for a call, and whether the caller's node counts its
/// pending calls (least pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Whom to call.
    pub member: Member,
    /// The group's policy.
    pub policy: Policy,
}

/// Every member this node knows, and how it picks among them.
pub(crate) struct Groups {
    node: String,
    state: Mutex<State>,
}

fn add(roster: &mut Roster, key: GroupKey, policy: Policy, address: u32) -> bool {
    let entry = roster.entry(key).or_insert_with(|| Entry {
        policy,
        addresses: BTreeSet::new(),
    });
    entry.policy = policy;
    entry.addresses.insert(address)
}

fn remove(roster: &mut Roster, key: &GroupKey, address: u32) -> bool {
    let Some(entry) = roster.get_mut(key) else {
        return false;
    };
    let removed = entry.addresses.remove(&address);
    if entry.addresses.is_empty() {
        roster.remove(key);
    }
    removed
}

impl Groups {
    /// The groups of node `node`.
    pub fn new(node: &str) -> Self {
        Groups {
            node: node.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A service of this node joins; true when it was not a member yet.
    pub fn join(&self, tenant: TenantId, group: &str, address: Address, policy: Policy) -> bool {
        let mut s = self.state();
        let added = add(&mut s.local, (tenant, group.to_string()), policy, address.0);
        s.version += 1;
        added
    }

    /// A service of this node leaves; true when it was a member.
    pub fn leave(&self, tenant: TenantId, group: &str, address: Address) -> bool {
        let mut s = self.state();
        let removed = remove(&mut s.local, &(tenant, group.to_string()), address.0);
        if removed {
            s.version += 1;
        }
        removed
    }

    /// Every member of this node, as a peer is told when a link comes up;
    /// `None` when it has none.
    pub fn sync(&self) -> Option<Control> {
        let s = self.state();
        if s.local.is_empty() {
            return None;
        }
        let members = s
            .local
            .iter()
            .flat_map(|((tenant, group), entry)| {
                entry.addresses.iter().map(|&address| GroupMember {
                    tenant: tenant.0,
                    group: group.clone(),
                    policy: entry.policy,
                    address,
                })
            })
            .collect();
        Some(Control::GroupSync { members })
    }

    /// A group message from `peer` on the link numbered `link`.
    pub fn peer_said(&self, peer: &str, link: u64, control: Control) {
        let mut s = self.state();
        let (current, roster) = s.remote.entry(peer.to_string()).or_default();
        // The latest link to speak is the peer's; an older one's close
        // must not drop what the newer one said.
        *current = link;
        match control {
            Control::GroupSync { members } => {
                roster.clear();
                for m in members {
                    add(roster, (TenantId(m.tenant), m.group), m.policy, m.address);
                }
            }
            Control::GroupJoin {
                tenant,
                group,
                policy,
                address,
            } => {
                add(roster, (TenantId(tenant), group), policy, address);
            }
            Control::GroupLeave {
                tenant,
                group,
                address,
            } => {
                remove(roster, &(TenantId(tenant), group), address);
            }
            _ => return,
        }
        s.version += 1;
    }

    /// The link numbered `link` from `peer` closed: its members go, unless
    /// a newer link from it spoke since.
    pub fn link_closed(&self, peer: &str, link: u64) {
        let mut s = self.state();
        if s.remote.get(peer).is_some_and(|(l, _)| *l == link) {
            s.remote.remove(peer);
            s.version += 1;
            tracing::info!(peer, "group members of a closed link dropped");
        }
    }

    /// `peer` left the cluster table: its members go.
    pub fn node_gone(&self, peer: &str) {
        let mut s = self.state();
        if s.remote.remove(peer).is_some() {
            s.version += 1;
        }
    }

    /// Takes `member` out of every pick (`out`), or puts it back; true
    /// when that changed anything.
    pub fn set_out(&self, member: &Member, out: bool) -> bool {
        let mut s = self.state();
        let changed = if out {
            s.out.insert(member.clone())
        } else {
            s.out.remove(member)
        };
        if changed {
            s.version += 1;
        }
        changed
    }

    /// How many members are taken out now.
    pub fn out_count(&self) -> usize {
        self.state().out.len()
    }

    /// Puts back every member taken out that `still` no longer holds for.
    pub fn keep_out_only(&self, still: impl Fn(&Member) -> bool) {
        let mut s = self.state();
        let before = s.out.len();
        s.out.retain(|m| still(m));
        if s.out.len() != before {
            s.version += 1;
        }
    }

    /// Every member of every group, in service or not, for health checks.
    pub fn all_members(&self) -> Vec<Member> {
        let s = self.state();
        let mut all: Vec<Member> = rosters(&self.node, &s)
            .flat_map(|(node, roster)| {
                roster.values().flat_map(move |e| {
                    e.addresses.iter().map(move |&a| Member {
                        node: node.to_string(),
                        address: Address(a),
                    })
                })
            })
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Every member of `group` in service that this node knows (not taken
    /// out by health checks), sorted by node and address.
    pub fn members(&self, tenant: TenantId, group: &str) -> Vec<Member> {
        let mut s = self.state();
        let key = (tenant, group.to_string());
        self.view(&mut s, &key).members.to_vec()
    }

    /// Brings the view of `key` up to date and returns it.
    fn view<'s>(&self, s: &'s mut State, key: &GroupKey) -> &'s mut View {
        let version = s.version;
        if s.views.get(key).is_none_or(|v| v.version != version) {
            let mut members = Vec::new();
            // Every node takes the policy of the first node by name.
            let mut first: Option<(&str, Policy)> = None;
            for (node, roster) in rosters(&self.node, s) {
                let Some(entry) = roster.get(key) else {
                    continue;
                };
                members.extend(
                    entry
                        .addresses
                        .iter()
                        .map(|&a| Member {
                            node: node.to_string(),
                            address: Address(a),
                        })
                        .filter(|m| !s.out.contains(m)),
                );
                if first.is_none_or(|(n, _)| node < n) {
                    first = Some((node, entry.policy));
                }
            }
            let policy = first.map(|(_, p)| p);
            members.sort();
            let view = s.views.entry(key.clone()).or_default();
            if *view.members != *members {
                view.ring = None;
                view.pending.retain(|m, _| members.contains(m));
                view.members = members.into();
            }
            view.policy = policy;
            view.version = version;
        }
        s.views.entry(key.clone()).or_default()
    }

    /// Picks the member of `group` a call with `key` goes to.
    ///
    /// # Errors
    /// When the group has no member this node knows of.
    pub fn pick(&self, tenant: TenantId, group: &str, key: &[u8]) -> Result<Pick, String> {
        let mut s = self.state();
        let gkey = (tenant, group.to_string());
        let view = self.view(&mut s, &gkey);
        let n = view.members.len();
        let policy = match view.policy {
            Some(p) if n > 0 => p,
            _ => return Err(format!("group `{group}` has no members")),
        };
        let member = match policy {
            Policy::RoundRobin => {
                let m = view.members[view.cursor % n].clone();
                view.cursor = view.cursor.wrapping_add(1);
                m
            }
            Policy::ConsistentHash => {
                let ring = view
                    .ring
                    .get_or_insert_with(|| Arc::new(ring_of(&view.members)));
                ring.get(&key)
                    .map(|v| Member {
                        node: v.node.clone(),
                        address: Address(v.address),
                    })
                    .ok_or_else(|| format!("group `{group}` has no members"))?
            }
            Policy::LeastPending => {
                let start = view.cursor % n;
                view.cursor = view.cursor.wrapping_add(1);
                let pending = &view.pending;
                let m = (0..n)
                    .map(|i| &view.members[(start + i) % n])
                    .min_by_key(|m| pending.get(*m).copied().unwrap_or(0))
                    .cloned()
                    .ok_or_else(|| format!("group `{group}` has no members"))?;
                *view.pending.entry(m.clone()).or_default() += 1;
                m
            }
        };
        Ok(Pick { member, policy })
    }

    /// A call counted by [`pick`](Self::pick) (least pending) ended.
    pub fn call_ended(&self, tenant: TenantId, group: &str, member: &Member) {
        let mut s = self.state();
        if let Some(view) = s.views.get_mut(&(tenant, group.to_string()))
            && let Some(n) = view.pending.get_mut(member)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// Every node's roster, this node's (`me`) first.
fn rosters<'s>(me: &'s str, s: &'s State) -> impl Iterator<Item = (&'s str, &'s Roster)> {
    std::iter::once((me, &s.local)).chain(s.remote.iter().map(|(n, (_, r))| (n.as_str(), r)))
}

/// The ring of `members`, with [`VIRTUAL_NODES`] points each.
fn ring_of(members: &[Member]) -> HashRing<VirtualNode> {
    let mut ring = HashRing::new();
    ring.batch_add(
        members
            .iter()
            .flat_map(|m| {
                (0..VIRTUAL_NODES).map(|replica| VirtualNode {
                    node: m.node.clone(),
                    address: m.address.0,
                    replica,
                })
            })
            .collect(),
    );
    ring
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TenantId = TenantId(0);

    fn member(node: &str, address: u32) -> Member {
        Member {
            node: node.into(),
            address: Address(address),
        }
    }

    #[test]
    fn round_robin_goes_round_every_node_s_members() {
        let g = Groups::new("a");
        g.join(T, "g", Address(1), Policy::RoundRobin);
        g.peer_said(
            "b",
            1,
            Control::GroupJoin {
                tenant: 0,
                group: "g".into(),
                policy: Policy::RoundRobin,
                address: 7,
            },
        );
        let picks: Vec<Member> = (0..4)
            .map(|_| g.pick(T, "g", b"").expect("members").member)
            .collect();
        assert_eq!(
            picks,
            [
                member("a", 1),
                member("b", 7),
                member("a", 1),
                member("b", 7)
            ]
        );
    }

    #[test]
    fn a_closed_link_drops_its_members_unless_a_newer_one_spoke() {
        let g = Groups::new("a");
        let sync = |address| Control::GroupSync {
            members: vec![GroupMember {
                tenant: 0,
                group: "g".into(),
                policy: Policy::RoundRobin,
                address,
            }],
        };
        g.peer_said("b", 1, sync(5));
        g.peer_said("b", 2, sync(6));
        g.link_closed("b", 1);
        assert_eq!(g.members(T, "g"), [member("b", 6)]);
        g.link_closed("b", 2);
        assert!(g.members(T, "g").is_empty());
        assert!(g.pick(T, "g", b"k").is_err());
    }

    #[test]
    fn the_same_members_hash_keys_alike_on_every_node_and_one_more_moves_few() {
        let on = |me: &str, n: u32| {
            let g = Groups::new(me);
            for i in 0..n {
                g.peer_said(
                    &format!("n{i}"),
                    1,
                    Control::GroupJoin {
                        tenant: 0,
                        group: "g".into(),
                        policy: Policy::ConsistentHash,
                        address: 100 + i,
                    },
                );
            }
            g
        };
        let (x, y) = (on("x", 4), on("y", 4));
        let keys: Vec<String> = (0..10_000).map(|k| format!("uid-{k}")).collect();
        let map = |g: &Groups| -> Vec<Member> {
            keys.iter()
                .map(|k| g.pick(T, "g", k.as_bytes()).expect("members").member)
                .collect()
        };
        let before = map(&x);
        assert_eq!(before, map(&y));
        let after = map(&on("x", 5));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // About 1/5 of the keys move to the new member, and only to it.
        let share = moved as f64 / keys.len() as f64;
        assert!((0.13..0.27).contains(&share), "{share}");
        assert!(
            before
                .iter()
                .zip(&after)
                .filter(|(a, b)| a != b)
                .all(|(_, b)| b.node == "n4")
        );
    }

    #[test]
    fn least_pending_prefers_the_member_with_fewer_calls_in_flight() {
        let g = Groups::new("a");
        g.join(T, "g", Address(1), Policy::LeastPending);
        g.join(T, "g", Address(2), Policy::LeastPending);
        let first = g.pick(T, "g", b"").expect("members").member;
        let second = g.pick(T, "g", b"").expect("members").member;
        assert_ne!(first, second);
        g.call_ended(T, "g", &first);
        assert_eq!(g.pick(T, "g", b"").expect("members").member, first);
    }
}
