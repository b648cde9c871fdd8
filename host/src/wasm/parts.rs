//! What the WIT imports reach beyond the core: the node's distributed
//! layers. The node makes one `Parts` and hands it to the wasm runtime it
//! builds (every module and service state holds it); harbor and cluster are
//! set once, when the node binds them.

use std::sync::{Arc, OnceLock};

use crate::cluster::Cluster;
use crate::harbor::Harbor;
use crate::multicast::Multicast;

/// A node's layers above the core, as its services' imports use them.
pub(crate) struct Parts {
    /// The harbor side, on a harbor node.
    pub harbor: OnceLock<Arc<Harbor>>,
    /// The cluster side, on a cluster node.
    pub cluster: OnceLock<Arc<Cluster>>,
    /// The node's multicast channels.
    pub multicast: Arc<Multicast>,
}

impl Parts {
    /// The parts of a node that is in no harbor or cluster yet.
    pub fn new(multicast: Arc<Multicast>) -> Self {
        Parts {
            harbor: OnceLock::new(),
            cluster: OnceLock::new(),
            multicast,
        }
    }
}
