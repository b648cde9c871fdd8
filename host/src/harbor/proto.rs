//! The harbor's control messages, carried as `Frame::Control` on the
//! transport (node ↔ master, and node ↔ node).

use serde::{Deserialize, Serialize};

use crate::multicast::proto::ChannelControl;

/// The transport protocol name of a node's link to the master.
pub const MASTER_PROTOCOL: &str = "skyhost-harbor-master";
/// The name the master gives in its link handshake (its certificate,
/// under TLS, names `harbor-master`).
pub const MASTER_NAME: &str = "master";
/// The transport protocol name of a link between two harbor nodes.
pub const PEER_PROTOCOL: &str = "skyhost-harbor";

/// A control message of the harbor protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Node → master: take me into the directory.
    Join {
        /// The node's harbor id.
        id: u8,
        /// Where the node accepts links from other nodes.
        address: String,
    },
    /// Master → node: you are in; here is everyone else. Every global name
    /// follows as a `Name` message.
    Joined {
        /// The other nodes: harbor id and link address.
        nodes: Vec<(u8, String)>,
    },
    /// Master → node: the join is refused (the id is in use); the link closes.
    JoinRefused {
        /// Why, naming the id and its holder.
        reason: String,
    },
    /// Master → nodes: a node joined.
    NodeUp {
        /// Its harbor id.
        id: u8,
        /// Where it accepts links.
        address: String,
    },
    /// Master → nodes: a node left (its link to the master dropped).
    NodeDown {
        /// Its harbor id.
        id: u8,
    },
    /// Node → master: register a global name; `request` 0 wants no answer.
    Register {
        /// The request number the answer carries.
        request: u32,
        /// The name.
        name: String,
        /// The service it names.
        address: u32,
    },
    /// Master → node: the answer to a `Register`.
    Registered {
        /// The request it answers (0 for a registration that wanted no
        /// answer and was refused).
        request: u32,
        /// The name.
        name: String,
        /// `Err` names the holder of a taken name.
        result: Result<(), String>,
    },
    /// Node → master: drop a global name if `address` holds it.
    Unregister {
        /// The name.
        name: String,
        /// The service that held it.
        address: u32,
    },
    /// Master → nodes: a global name now names `address`.
    Name {
        /// The name.
        name: String,
        /// Its service.
        address: u32,
    },
    /// Master → nodes: a global name is gone.
    NameGone {
        /// The name.
        name: String,
    },
    /// Node → node: tell `watcher` with an `exit` message when `target`
    /// (a service of the receiving node) ends.
    Monitor {
        /// The watcher's tenant; a target of another tenant is unknown.
        tenant: u32,
        /// The service to tell, on the sending node.
        watcher: u32,
        /// The service watched.
        target: u32,
    },
    /// Node → node: a control message about a multicast channel.
    Channel(ChannelControl),
    /// Node → node: stop a `Monitor`.
    Demonitor {
        /// The service that watched.
        watcher: u32,
        /// The service watched.
        target: u32,
    },
    /// Node → node, first on every peer link, both ways: where this end's
    /// numbered one-way messages stand, so what a dropped link lost is
    /// sent again once, and nothing twice.
    Resume {
        /// This end's sending session (one per peer, for its life here).
        session: u64,
        /// The number its next one-way message will get.
        next: u64,
        /// The other end's sending session this end knows (0: none).
        known: u64,
        /// Every message of `known` up to this number has arrived here
        /// (or was never owed).
        floor: u64,
        /// Messages of `known` up to this number were never owed here:
        /// this end took the session up after them.
        since: u64,
    },
    /// Node → node: every numbered message up to `floor` has arrived;
    /// the sender stops keeping them.
    Received {
        /// The number every message up to which has arrived.
        floor: u64,
    },
}
