//! The 32-bit service address and its bit layout.

use std::fmt;

/// A harbor id: the low 8 bits of every address. 0 means "no harbor" (a single node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HarborId(pub u8);

/// A service's address: `(local_id << 8) | harbor_id`, shown as `:%08x`.
///
/// The local id is 24 bits, so one node holds at most 2^24 - 1 live services;
/// local id 0 is never used, so no valid address is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub u32);

impl Address {
    /// The largest local id that fits beside the harbor id.
    pub const MAX_LOCAL: u32 = (1 << 24) - 1;

    /// Builds an address from a local id (1..=MAX_LOCAL) and a harbor id.
    pub fn new(local: u32, harbor: HarborId) -> Self {
        debug_assert!(local <= Self::MAX_LOCAL);
        Address((local << 8) | u32::from(harbor.0))
    }

    /// The node this address lives on.
    pub fn harbor(self) -> HarborId {
        HarborId((self.0 & 0xff) as u8)
    }

    /// The id of the service on its node.
    pub fn local(self) -> u32 {
        self.0 >> 8
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{:08x}", self.0)
    }
}

impl std::str::FromStr for Address {
    type Err = std::num::ParseIntError;

    /// Parses `:0000010a`, `0000010a` or a decimal number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix(':') {
            Some(hex) => u32::from_str_radix(hex, 16).map(Address),
            None => s.parse().map(Address),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_harbor_in_low_bits() {
        let a = Address::new(0x1234, HarborId(7));
        assert_eq!(a.0, 0x0012_3407);
        assert_eq!(a.harbor(), HarborId(7));
        assert_eq!(a.local(), 0x1234);
        assert_eq!(a.to_string(), ":00123407");
        assert_eq!(":00123407".parse::<Address>(), Ok(a));
    }

    #[test]
    fn the_config_knows_how_many_local_ids_there_are() {
        assert_eq!(crate::config::MAX_LOCAL_SERVICES, Address::MAX_LOCAL);
    }

    #[test]
    fn max_local_round_trips() {
        let a = Address::new(Address::MAX_LOCAL, HarborId(255));
        assert_eq!(a.local(), Address::MAX_LOCAL);
        assert_eq!(a.harbor(), HarborId(255));
    }
}
