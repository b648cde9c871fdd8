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
//!
//! The modules are layers; each uses its own and those below, never one
//! above (docs/layers.md; `../shared/tools/layers` checks it):
//!
//! ```text
//!  control metrics        served over a running node
//!  node                   Node: builds the core, wires the parts below into it
//!  wasm                   wasmtime: the Loader and Guest for components, the WIT imports
//!  harbor cluster         the distributed layers (harbor implements the runtime's Remote)
//!  multicast              channels; its own wire messages, over carrier ports
//!  runtime                the core: address table, mailboxes, names, sessions, timers,
//!                         tenants, the service loop; reaches up only through its ports
//!  transport              the sans-io wire: codec, handshake, link; tokio drivers
//!  config                 the node file
//! ```
//!
//! The `skyhost` command, fleets and benchmarks are the `skyhost-cli`
//! package, built on this crate's public API.

pub mod cluster;
pub mod config;
pub mod control;
#[doc(hidden)]
pub mod fuzzing;
pub mod harbor;
pub mod metrics;
pub mod multicast;
pub mod node;
pub mod runtime;
#[cfg(test)]
mod sim;
pub mod transport;
pub mod wasm;

pub use config::NodeConfig;
pub use node::{Client, Node, NodeError};
pub use runtime::{
    Address, CallError, ErrorCause, LateAt, Message, SendError, ServiceInfo, SpawnError,
    TenantError, TenantId, TenantStats, UpgradeError, UpgradeReport, Upgraded, kind,
};

/// The bundled services this binary carries inside it, as
/// `(module name, component)`: what the demo needs (`demo`, `echo`), so an
/// installed `skyhost` runs it with no repository beside it. Empty in a
/// build made with `SKYHOST_SKIP_GUESTS`.
pub fn carried_modules() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    const CARRIED: [(&str, &[u8]); 2] = [
        (
            "demo",
            include_bytes!(concat!(env!("OUT_DIR"), "/carried/demo.wasm")),
        ),
        (
            "echo",
            include_bytes!(concat!(env!("OUT_DIR"), "/carried/echo.wasm")),
        ),
    ];
    CARRIED.into_iter().filter(|(_, bytes)| !bytes.is_empty())
}

/// Where the build put the bundled services (`services/` built for
/// `wasm32-wasip2`), unless it was built with `SKYHOST_SKIP_GUESTS`.
pub fn bundled_modules() -> Option<std::path::PathBuf> {
    option_env!("SKYHOST_GUEST_DIR").map(std::path::PathBuf::from)
}
