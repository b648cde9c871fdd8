//! Multicast's own wire messages. Harbor and cluster links carry them as
//! one variant each (`Control::Channel` on both, and `Header::Channel` on
//! a cluster link; a harbor link carries a copy as an envelope of kind
//! `multicast` to address 0), so the channel protocol is written once.

use serde::{Deserialize, Serialize};

/// A control message about a channel, between two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelControl {
    /// The sending node has subscribers for `channel` (made on the
    /// receiving node): send it every publish.
    Subscribe {
        /// The tenant the channel belongs to.
        tenant: u32,
        /// The channel, as its owner numbers it.
        channel: u32,
    },
    /// The sending node has no subscribers for `channel` any more.
    Unsubscribe {
        /// The tenant the channel belongs to.
        tenant: u32,
        /// The channel, as its owner numbers it.
        channel: u32,
    },
    /// `channel` (made on the sending node) is gone.
    Gone {
        /// The tenant the channel belongs to.
        tenant: u32,
        /// The channel, as its owner numbers it.
        channel: u32,
    },
}

/// The header of one multicast copy on a cluster link; the payload
/// follows it in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCopy {
    /// The tenant the channel belongs to.
    pub tenant: u32,
    /// The channel, as its owner numbers it.
    pub channel: u32,
    /// The publisher, as its node numbers it (0: not known there).
    pub source: u32,
    /// A publish for the owner to fan out (node → owner); else a copy for
    /// the receiving node's subscribers (owner → node).
    pub publish: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn control() -> impl Strategy<Value = ChannelControl> {
        (0..3u8, any::<u32>(), any::<u32>()).prop_map(|(k, tenant, channel)| match k {
            0 => ChannelControl::Subscribe { tenant, channel },
            1 => ChannelControl::Unsubscribe { tenant, channel },
            _ => ChannelControl::Gone { tenant, channel },
        })
    }

    proptest! {
        #[test]
        fn control_round_trips(c in control()) {
            let bytes = postcard::to_stdvec(&c).expect("encode");
            prop_assert_eq!(postcard::from_bytes::<ChannelControl>(&bytes).expect("decode"), c);
        }

        #[test]
        fn copy_round_trips(tenant: u32, channel: u32, source: u32, publish: bool) {
            let h = ChannelCopy { tenant, channel, source, publish };
            let bytes = postcard::to_stdvec(&h).expect("encode");
            prop_assert_eq!(postcard::from_bytes::<ChannelCopy>(&bytes).expect("decode"), h);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = postcard::from_bytes::<ChannelControl>(&bytes);
            let _ = postcard::from_bytes::<ChannelCopy>(&bytes);
        }
    }
}
