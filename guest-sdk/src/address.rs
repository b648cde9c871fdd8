//! Service addresses and message kinds.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A service's address: `(local_id << 8) | harbor_id`, shown as `:%08x`.
///
/// The low 8 bits name the harbor (node) the service lives on, the rest is the
/// service's number on that node. Addresses on other harbors work like local
/// ones: the host forwards messages over its links.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Address(pub u32);

impl Address {
    /// The harbor id: the node this address lives on (low 8 bits).
    pub const fn harbor(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// The service's number on its harbor (high 24 bits).
    pub const fn local(self) -> u32 {
        self.0 >> 8
    }

    /// The raw 32-bit value, as the WIT interface carries it.
    pub const fn raw(self) -> u32 {
        self.0
    }
}

impl From<u32> for Address {
    fn from(raw: u32) -> Self {
        Address(raw)
    }
}

impl From<Address> for u32 {
    fn from(address: Address) -> Self {
        address.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{:08x}", self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Message kinds (Skynet's PTYPE). Kinds `16..=255` are free for user protocols.
pub mod kind {
    /// A plain message; no reply expected.
    pub const TEXT: u8 = 0;
    /// A reply to a session (from `respond`, or a fired timer).
    pub const RESPONSE: u8 = 1;
    /// Reserved for the multicast interface.
    pub const MULTICAST: u8 = 2;
    /// A monitored service ended; the payload is the reason (utf-8).
    pub const EXIT: u8 = 3;
    /// Reserved for the host.
    pub const SYSTEM: u8 = 4;
    /// A session failed; payload byte 0 is the cause, the rest a utf-8 detail.
    pub const ERROR: u8 = 7;
    /// A call: the sender waits for an answer.
    pub const REQUEST: u8 = 10;
    /// The first kind free for user protocols.
    pub const USER_MIN: u8 = 16;

    /// Whether `kind` is free for user protocols (`16..=255`).
    pub const fn is_user(kind: u8) -> bool {
        kind >= USER_MIN
    }

    /// Whether the host keeps `kind` for itself: `send` refuses it.
    pub const fn is_reserved(kind: u8) -> bool {
        matches!(kind, RESPONSE | MULTICAST | EXIT | SYSTEM | ERROR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_layout_and_display() {
        let a = Address(0x0000_010a);
        assert_eq!(a.harbor(), 0x0a);
        assert_eq!(a.local(), 1);
        assert_eq!(a.to_string(), ":0000010a");
        assert_eq!(format!("{:?}", Address(0xffff_ff01)), ":ffffff01");
        assert!(kind::is_user(16) && kind::is_user(255) && !kind::is_user(kind::REQUEST));
    }
}
