//! skyhost: Skynet's service model on WebAssembly components.
//!
//! A node runs services: WebAssembly components (the `service` world in
//! `wit/`) with their own address, mailbox and sessions. This crate is the
//! host: it compiles and instantiates the components, routes their
//! messages, ends every session with a reply or an error, and keeps a
//! misbehaving service (trap, spin, unbounded memory) from hurting others.
//!
//! ```text
//!  guest import ──> Message ──> Kernel::deliver ──> mailbox ──> service task ──> dispatch
//!  (runtime.send/call/respond)      (address table)               (batch ≤ 64)     (guest)
//! ```
//!
//! Harbor nodes share one address space: a message for another node's
//! address leaves through `harbor` and `transport` and arrives at that
//! node's `Kernel::deliver`. Cluster and multicast build on the same path.

pub mod cluster;
pub mod config;
pub mod control;
pub mod fleet;
pub mod harbor;
pub mod metrics;
pub mod multicast;
pub mod node;
pub mod runtime;
pub mod tools;
pub mod transport;
pub mod wasm;

pub use config::NodeConfig;
pub use node::{Client, Node, NodeError};
pub use runtime::{
    Address, CallError, ErrorCause, LateAt, Message, SendError, ServiceInfo, SpawnError,
    TenantError, TenantId, TenantStats, UpgradeError, UpgradeReport, Upgraded, kind,
};

/// Where the build put the bundled services (`services/` built for
/// `wasm32-wasip2`), unless it was built with `SKYHOST_SKIP_GUESTS`.
pub fn bundled_modules() -> Option<std::path::PathBuf> {
    option_env!("SKYHOST_GUEST_DIR").map(std::path::PathBuf::from)
}
