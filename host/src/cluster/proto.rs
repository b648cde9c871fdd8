//! The cluster's wire: the header of each message on a cluster link, and
//! its control messages. Carried by the transport (`Frame<Control, Header>`).

use serde::{Deserialize, Serialize};

use crate::multicast::proto::{ChannelControl, ChannelCopy};

/// The transport protocol name of a cluster link.
pub const PROTOCOL: &str = "skyhost-cluster";

/// A service on the receiving node: by address, or by a name registered
/// with `cluster.register` (or a local `.name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// An address on the receiving node.
    Address(u32),
    /// A name the receiving node resolves.
    Name(String),
    /// A name the sender defined on this link with [`Control::Name`]: a
    /// name sent with every message would be encoded, decoded and
    /// allocated on every message.
    Interned(u32),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Address(a) => write!(f, "{}", crate::runtime::Address(*a)),
            Target::Name(n) => f.write_str(n),
            Target::Interned(id) => write!(f, "name #{id}"),
        }
    }
}

/// The header of one message on a cluster link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Header {
    /// A call; the answer carries the same `session` (the link's own
    /// number, not the caller's).
    Request {
        /// The caller's tenant; the target must be of the same tenant.
        tenant: u32,
        /// The link's session number.
        session: u32,
        /// Whom it is for.
        target: Target,
        /// The payload is lz4-compressed.
        compressed: bool,
        /// Trace id of the logical request (0: none).
        trace: u64,
    },
    /// A send: no answer.
    Push {
        /// The sender's tenant; the target must be of the same tenant.
        tenant: u32,
        /// Whom it is for.
        target: Target,
        /// The payload is lz4-compressed.
        compressed: bool,
        /// Trace id of the logical request (0: none).
        trace: u64,
        /// Its number in the sender's session (`transport::resume`): sent
        /// again on the next link when this one drops, delivered once.
        seq: u64,
    },
    /// The answer to a `Request`.
    Response {
        /// The request's link session.
        session: u32,
        /// The payload is lz4-compressed.
        compressed: bool,
        /// Trace id of the logical request (0: none).
        trace: u64,
    },
    /// A multicast copy: a publish for the channel's owner, or a copy for
    /// the receiving node's subscribers.
    Channel {
        /// Which channel, and from whom.
        copy: ChannelCopy,
        /// The payload is lz4-compressed.
        compressed: bool,
        /// Its number in the sender's session, as a `Push`'s.
        seq: u64,
    },
    /// A `Request` failed; the payload is the detail text.
    Error {
        /// The request's link session.
        session: u32,
        /// The error cause byte (as in `types.error-cause`).
        cause: u8,
        /// Trace id of the logical request (0: none).
        trace: u64,
    },
    /// Several sends to one target: the payload holds their records
    /// (`transport::batch`). Numbered and kept as one message.
    Pushes {
        /// The sender's tenant; the target must be of the same tenant.
        tenant: u32,
        /// Whom they are for.
        target: Target,
        /// The payload (the whole buffer of records) is lz4-compressed.
        compressed: bool,
        /// Trace id of the logical request (0: none).
        trace: u64,
        /// Its number in the sender's session, as a `Push`'s.
        seq: u64,
        /// How many records the payload holds.
        count: u32,
    },
}

/// A control message on a cluster link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Caller → node: which address does `name` have there?
    Query {
        /// Matched by the answer.
        request: u32,
        /// The name.
        name: String,
    },
    /// A control message about a multicast channel.
    Channel(ChannelControl),
    /// Node → caller: the answer to a `Query`.
    QueryResult {
        /// The query it answers.
        request: u32,
        /// The address, if the name is registered.
        address: Option<u32>,
    },
    /// Node → peer: a service of the sending node joined a group.
    GroupJoin {
        /// The group's tenant.
        tenant: u32,
        /// The group.
        group: String,
        /// How callers pick among the group's members.
        policy: Policy,
        /// The member, on the sending node.
        address: u32,
    },
    /// Node → peer: a service of the sending node left a group (or ended).
    GroupLeave {
        /// The group's tenant.
        tenant: u32,
        /// The group.
        group: String,
        /// The member, on the sending node.
        address: u32,
    },
    /// Node → peer, first on each link: every group member of the sending
    /// node, replacing what the peer held for it.
    GroupSync {
        /// The members.
        members: Vec<GroupMember>,
    },
    /// Caller → node: a health check of `address` there (0: the node
    /// itself), answered by its runtime, not its guest, as a `Response`
    /// (or `Error`) with this link session.
    Ping {
        /// The link session the answer carries.
        session: u32,
        /// The service checked; 0 for the node.
        address: u32,
    },
    /// Sender → receiver: [`Target::Interned`] `id` stands for `name` on
    /// this link from now on. Every definition goes again first on each new
    /// link, before anything that uses it.
    Name {
        /// The number messages carry.
        id: u32,
        /// The service name it stands for.
        name: String,
    },
    /// Sender → receiver, first on every link: the sender's session and
    /// the number its next one-way message gets (`transport::resume`).
    Offer {
        /// The sender's session (one `Sender`'s life).
        session: u64,
        /// The number of its next one-way message.
        next: u64,
        /// The lowest number it still keeps (`next` when none): a
        /// receiver new to the session is owed everything from here.
        first: u64,
    },
    /// Receiver → sender, first on every link: the sender's session it
    /// knows, every number of it up to `floor` arrived, and it was never
    /// owed those up to `since`.
    Have {
        /// The session it has numbers of (0: none).
        known: u64,
        /// Every number up to here arrived.
        floor: u64,
        /// Numbers up to here were never owed.
        since: u64,
        /// Which life of the receiving node this is (random at its start):
        /// a sender whose session it does not know can tell a receiver
        /// that restarted (what was kept is for a node that is gone) from
        /// one that never heard the session (what was kept is owed).
        boot: u64,
    },
    /// Receiver → sender: every one-way message up to `floor` arrived;
    /// the sender stops keeping them.
    Received {
        /// The highest number below which all arrived.
        floor: u64,
    },
}

impl crate::transport::resume::Numbered for Header {
    fn one_way(&self) -> bool {
        matches!(
            self,
            Header::Push { .. } | Header::Pushes { .. } | Header::Channel { .. }
        )
    }

    fn seq(&self) -> u64 {
        match self {
            Header::Push { seq, .. } | Header::Pushes { seq, .. } | Header::Channel { seq, .. } => {
                *seq
            }
            _ => 0,
        }
    }

    fn messages(&self) -> usize {
        match self {
            Header::Pushes { count, .. } => *count as usize,
            _ => 1,
        }
    }

    fn set_seq(&mut self, number: u64) {
        if let Header::Push { seq, .. } | Header::Pushes { seq, .. } | Header::Channel { seq, .. } =
            self
        {
            *seq = number;
        }
    }
}

/// How a group's callers pick a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// Each member in turn (a cursor per caller node).
    RoundRobin,
    /// The member a consistent-hash ring gives the call's key.
    ConsistentHash,
    /// The member with the fewest calls in flight from the caller's node.
    LeastPending,
}

/// One group member in a [`Control::GroupSync`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The group's tenant.
    pub tenant: u32,
    /// The group.
    pub group: String,
    /// How callers pick among the group's members.
    pub policy: Policy,
    /// The member, on the sending node.
    pub address: u32,
}
