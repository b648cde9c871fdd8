//! Groups, like Erlang's `pg`: a named set of services across the cluster's
//! nodes, called through a balancing policy. A member that ends, or whose
//! node goes down, leaves at once.
//!
//! ```ignore
//! group::join("game", self_address(), Policy::ConsistentHash)?;
//! // on any node: the same uid always reaches the same member
//! let player: Player = group::call("game", uid.as_bytes(), &Enter { uid }).await?;
//! ```

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::node::encode;
use crate::session::SessionWait;
use crate::{Address, CallError, sys};

/// How callers pick the member a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Each member in turn.
    RoundRobin,
    /// The member a consistent-hash ring (the same on every node) gives the key.
    ConsistentHash,
    /// The member with the fewest calls in flight from the caller's node.
    LeastPending,
}

impl From<Policy> for sys::groups::Policy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::RoundRobin => sys::groups::Policy::RoundRobin,
            Policy::ConsistentHash => sys::groups::Policy::ConsistentHash,
            Policy::LeastPending => sys::groups::Policy::LeastPending,
        }
    }
}

/// A member of a group: its cluster node and its address there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The cluster node it runs on.
    pub node: String,
    /// Its address on that node.
    pub address: Address,
}

/// `member` (a service of this node) joins `group`, balanced by `policy`.
///
/// # Errors
/// When this node is in no cluster, or `member` is not a live service of
/// this tenant on it.
pub fn join(group: &str, member: Address, policy: Policy) -> Result<(), String> {
    sys::groups::join(group, member.0, policy.into())
}

/// `member` leaves `group`.
pub fn leave(group: &str, member: Address) {
    sys::groups::leave(group, member.0);
}

/// Every member of `group` this node knows, sorted by node and address.
pub fn members(group: &str) -> Vec<Member> {
    sys::groups::members(group)
        .into_iter()
        .map(|m| Member {
            node: m.node,
            address: Address(m.address),
        })
        .collect()
}

/// Calls a member of `group` with `req` (postcard) and decodes its answer;
/// `key` picks the member under consistent hashing.
///
/// # Errors
/// [`CallError::UnknownAddress`] when the group has no member, else how the call failed.
pub fn call<Req, Resp>(
    group: &str,
    key: &[u8],
    req: &Req,
) -> impl Future<Output = Result<Resp, CallError>> + 'static + use<Req, Resp>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let started = encode(req).map_err(CallError::from);
    crate::node::typed(started.map(|payload| call_raw(group, key, &payload, None)))
}

/// Calls with raw bytes; `timeout` ends the call with [`CallError::Timeout`].
///
/// # Errors
/// As [`call`].
pub fn call_raw(
    group: &str,
    key: &[u8],
    payload: &[u8],
    timeout: Option<Duration>,
) -> impl Future<Output = Result<Vec<u8>, CallError>> + 'static + use<> {
    let wait = start(group, key, payload, timeout);
    async move { wait.await.into_result() }
}

fn start(group: &str, key: &[u8], payload: &[u8], timeout: Option<Duration>) -> SessionWait {
    let ms = timeout.map_or(0, |t| crate::node::timer_ms(t).max(1));
    crate::queued::flush_quietly();
    SessionWait::open(sys::groups::call(group, key, payload, ms))
}
