//! The node's host client: the core's [`LocalClient`] (an address, calls,
//! sends, names) with the node's cluster side (calls, queries and groups
//! across nodes) for host code: tests, benchmarks, the CLI.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::groups::Member;
use crate::cluster::proto::{Policy, Target};
use crate::cluster::{Cluster, Origin};
use crate::runtime::client::{not_in, to_address};
use crate::runtime::{Address, CallError, ErrorCause, LocalClient, Waiter};
use crate::wasm::Parts;

/// A host endpoint of a node, with its own address: everything a
/// [`LocalClient`] does (it derefs to one), and calls, queries and groups
/// across the node's cluster.
///
/// Dropping the client removes its address; calls to it then fail with
/// unknown address.
pub struct Client {
    local: LocalClient,
    parts: Arc<Parts>,
}

impl Deref for Client {
    type Target = LocalClient;

    fn deref(&self) -> &LocalClient {
        &self.local
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut LocalClient {
        &mut self.local
    }
}

impl Client {
    pub(crate) fn new(local: LocalClient, parts: Arc<Parts>) -> Self {
        Client { local, parts }
    }

    /// Opens a session and hands its waiter to `ask` with the node's
    /// cluster side; the future is the session's answer.
    fn cluster_session(
        &self,
        ask: impl FnOnce(&Arc<Cluster>, Waiter),
    ) -> Result<impl Future<Output = Result<Vec<u8>, CallError>>, CallError> {
        let cluster = self
            .parts
            .cluster
            .get()
            .ok_or_else(|| not_in("a cluster"))?;
        let (waiter, answer) = self.open_session();
        ask(cluster, waiter);
        Ok(answer)
    }

    /// Calls `target` on cluster node `node` (`timeout` ends it if no answer
    /// came; `None` waits as long as the link lives). The call starts now;
    /// the future waits for its answer.
    ///
    /// # Errors
    /// [`CallError`] with the cause the session ended with.
    pub fn cluster_call(
        &self,
        node: &str,
        target: Target,
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<u8>, CallError>> + Send + 'static + use<> {
        let started = self.parts.cluster.get().map(|cluster| {
            let (waiter, answer) = self.open_session();
            let origin = Origin::of(self.tenant);
            cluster.call(origin, node, target, payload, waiter, timeout);
            answer
        });
        async move {
            match started {
                Some(answer) => answer.await,
                None => Err(not_in("a cluster")),
            }
        }
    }

    /// The address cluster node `node` registered as `name`.
    ///
    /// # Errors
    /// `UnknownAddress` when it has no such name, or how the link failed.
    pub async fn cluster_query(&self, node: &str, name: &str) -> Result<Address, CallError> {
        let bytes = self
            .cluster_session(|c, waiter| c.query(self.tenant, node, name.to_string(), waiter))?
            .await?;
        to_address(&bytes)
    }

    /// Which node serves `name` cluster-wide (registered with
    /// `cluster.register` on a node found through discovery), and its address there.
    ///
    /// # Errors
    /// `UnknownAddress` when no node registered it or the node has no
    /// discovery; `NodeDown` when etcd cannot be reached.
    pub async fn cluster_find(&self, name: &str) -> Result<(String, Address), CallError> {
        let bytes = self
            .cluster_session(|c, waiter| c.query(self.tenant, "", name.to_string(), waiter))?
            .await?;
        let (address, node) = bytes.split_at(4.min(bytes.len()));
        let node = String::from_utf8(node.to_vec()).map_err(|_| CallError::Failed {
            cause: ErrorCause::Service,
            detail: "the node name in the answer is not UTF-8".into(),
        })?;
        Ok((node, to_address(address)?))
    }

    /// Calls a member of cluster group `group` picked by its policy (`key`
    /// for consistent hashing).
    ///
    /// # Errors
    /// `UnknownAddress` when the group has no member, else how the call failed.
    pub async fn group_call(
        &self,
        group: &str,
        key: &[u8],
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, CallError> {
        let origin = Origin::of(self.tenant);
        self.cluster_session(|c, waiter| {
            c.call_group(origin, group, key, payload, waiter, timeout);
        })?
        .await
    }

    /// `member` (a service of this client's tenant on this node) joins
    /// cluster group `group`, balanced by `policy`.
    ///
    /// # Errors
    /// When the node is in no cluster or `member` is not such a service.
    pub fn group_join(&self, group: &str, member: Address, policy: Policy) -> Result<(), String> {
        let cluster = self.parts.cluster.get().ok_or("not in a cluster")?;
        cluster.join_group(self.tenant, group, member, policy)
    }

    /// Every member of cluster group `group` this node knows.
    pub fn group_members(&self, group: &str) -> Vec<Member> {
        self.parts
            .cluster
            .get()
            .map(|c| c.group_members(self.tenant, group))
            .unwrap_or_default()
    }
}
