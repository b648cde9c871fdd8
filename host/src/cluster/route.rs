//! Routing a job to its node's link: through the table in force, to a
//! backup when the node is taken out, or parked until a reload adds the
//! node (`nowaiting` fails it instead).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::Instrument;

use super::sender::{self, Sender};
use super::{Cluster, ClusterError, Job, NodeAddress, lock};
use crate::runtime::ErrorCause;

impl Cluster {
    /// Routes a job, failing its session when it cannot go.
    pub(super) fn submit(self: &Arc<Self>, node: &str, job: Job) {
        if let Err((job, error)) = self.route(node, job)
            && let Some(kernel) = self.kernel()
        {
            job.fail(&kernel, &error, &self.dropped);
        }
    }

    /// Hands a job to its node's sender, or to its backup's while the node
    /// is taken out by health checks; gives it back with the error when it
    /// cannot go.
    pub(super) fn route(self: &Arc<Self>, node: &str, job: Job) -> Result<(), (Job, ClusterError)> {
        if self.nodes_out.contains(node) {
            let table = self.table.load();
            return match table.backups.get(node) {
                Some(backup) if !self.nodes_out.contains(backup) => {
                    tracing::debug!(node, backup, "to the backup of a node taken out");
                    self.route_to_link(backup, job)
                }
                _ => Err((
                    job,
                    ClusterError::new(
                        ErrorCause::NodeDown,
                        format!("cluster node `{node}` is taken out: it fails its health checks"),
                    ),
                )),
            };
        }
        self.route_to_link(node, job)
    }

    /// Hands a job to its node's sender, or parks it until a reload adds
    /// the node; gives it back with the error when it cannot go.
    pub(super) fn route_to_link(
        self: &Arc<Self>,
        node: &str,
        job: Job,
    ) -> Result<(), (Job, ClusterError)> {
        // A sender exists only for a node the table has at an address
        // (`apply` closes the others), so it is the table's answer too.
        if let Some(sender) = self.senders.pin().get(node) {
            return sender.submit(&self.settings, job);
        }
        let table = self.table.load();
        match table.get(node) {
            Some(NodeAddress::At(address)) => {
                let sender = self.sender(node, address);
                sender.submit(&self.settings, job)
            }
            Some(NodeAddress::Offline) => Err((
                job,
                ClusterError::new(
                    ErrorCause::NodeDown,
                    format!("cluster node `{node}` is offline (false in the cluster config)"),
                ),
            )),
            Some(NodeAddress::Departed) => Err((
                job,
                ClusterError::new(
                    ErrorCause::NodeDown,
                    format!("cluster node `{node}` left the cluster (its discovery entry went)"),
                ),
            )),
            None if table.nowaiting => Err((
                job,
                ClusterError::new(
                    ErrorCause::UnknownAddress,
                    format!("cluster node `{node}` is not in the cluster config"),
                ),
            )),
            None => {
                self.park(node, job);
                Ok(())
            }
        }
    }

    /// Keeps a job for a node not in the table until a reload adds it (or
    /// its call's timeout ends it).
    pub(super) fn park(self: &Arc<Self>, node: &str, job: Job) {
        let id = self.next_waiting.fetch_add(1, Ordering::Relaxed);
        let timeout = match &job {
            Job::Call { timeout, .. } => *timeout,
            _ => None,
        };
        tracing::debug!(node, "cluster node not in the config: waiting for a reload");
        lock(&self.waiting)
            .entry(node.to_string())
            .or_default()
            .push((id, job));
        if let (Some(t), Some(kernel)) = (timeout, self.kernel()) {
            let me = Arc::downgrade(self);
            let node = node.to_string();
            let cancel = self.cancel.clone();
            kernel.tasks.spawn(async move {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(t) => if let Some(c) = me.upgrade() {
                        c.expire_parked(&node, id, t);
                    }
                }
            });
        }
    }

    pub(super) fn expire_parked(&self, node: &str, id: u64, after: Duration) {
        let job = {
            let mut waiting = lock(&self.waiting);
            let Some(list) = waiting.get_mut(node) else {
                return;
            };
            let Some(i) = list.iter().position(|(j, _)| *j == id) else {
                return;
            };
            list.remove(i).1
        };
        if let Some(kernel) = self.kernel() {
            let detail =
                format!("cluster node `{node}` did not appear in the config within {after:?}");
            let error = ClusterError::new(ErrorCause::Timeout, detail);
            job.fail(&kernel, &error, &self.dropped);
        }
    }

    /// The sender for `node`, made (with its task) on first use.
    pub(super) fn sender(self: &Arc<Self>, node: &str, address: &str) -> Arc<Sender> {
        if let Some(s) = self.senders.pin().get(node) {
            return s.clone();
        }
        let _making = lock(&self.new_sender);
        let senders = self.senders.pin();
        if let Some(s) = senders.get(node) {
            return s.clone();
        }
        let (sender, rx) = Sender::new(
            node,
            address,
            self.cancel.child_token(),
            self.kernel.clone(),
            self.dropped.clone(),
        );
        senders.insert(node.to_string(), sender.clone());
        if let Some(kernel) = self.kernel() {
            // Its own span, not the one of the service whose call made it.
            let span = tracing::info_span!(parent: None, "cluster", node = %self.name, peer = node);
            kernel.spawn_beside_services(
                sender::run(self.clone(), sender.clone(), rx).instrument(span),
            );
        }
        sender
    }
}
