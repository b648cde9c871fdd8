//! The `Remote` port: how the core reaches the other nodes of its harbor,
//! as Skynet's core reaches its distributed layer only through
//! `skynet_harbor.h`. The harbor implements it and the node wires it in
//! (`Kernel.remote`); the core calls it for a message whose address is not
//! of this node, for monitors of such services, and for global names (those
//! not starting with `.`). A node in no harbor has none, and every address
//! and name is then local.

use std::sync::Arc;

use super::{Address, Message, SendError, TenantId, Waiter};

/// Why a global name could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobalNameError {
    /// Another service holds it.
    #[error("global name `{name}` is held by {holder}")]
    Taken {
        /// The name.
        name: String,
        /// Its holder.
        holder: Address,
    },
    /// The master cannot be reached.
    #[error("the harbor master is unreachable")]
    Unavailable,
}

/// The other nodes of this node's harbor, as the core uses them. Global
/// names are passed as their tenant-scoped keys (`names::scoped`).
pub(crate) trait Remote: Send + Sync + 'static {
    /// Sends `message` to `dest`, a service of another node.
    ///
    /// # Errors
    /// `NodeDown` when there is no link to its node.
    fn forward(&self, dest: Address, message: Message) -> Result<(), SendError>;
    /// Sends `run` (messages from one sender, all for `dest`, left empty)
    /// in order, as [`forward`](Self::forward) would each.
    ///
    /// # Errors
    /// The first message refused, by its place in the run; the ones before
    /// it went, it and the ones after did not.
    fn forward_run(&self, dest: Address, run: &mut Vec<Message>) -> Result<(), (usize, SendError)> {
        for (i, message) in run.drain(..).enumerate() {
            self.forward(dest, message).map_err(|e| (i, e))?;
        }
        Ok(())
    }
    /// Tells `watcher` when `target` (on another node) ends; at once if its
    /// node is down.
    fn monitor(&self, tenant: TenantId, watcher: Address, target: Address);
    /// Stops a [`monitor`](Self::monitor).
    fn demonitor(&self, watcher: Address, target: Address);
    /// Registers global `key` for `address` without waiting for the master.
    ///
    /// # Errors
    /// `Taken` when another service holds it, `Unavailable` when the master
    /// cannot be reached.
    fn register(&self, key: &str, address: Address) -> Result<(), GlobalNameError>;
    /// Registers global `key` for `address`; `waiter` hears the master's answer.
    fn register_confirmed(&self, key: &str, address: Address, waiter: Waiter);
    /// Drops global `key` if `address` holds it.
    fn unregister(&self, key: &str, address: Address);
    /// The address holding global `key`, as this node knows it now.
    fn query(&self, key: &str) -> Option<Address>;
    /// Answers `waiter` with the address of `key` (4 bytes, little-endian)
    /// once it exists, or an error after `timeout_ms` (0: as long as the
    /// master is reachable) or when the master is unreachable.
    fn queryname(self: Arc<Self>, key: &str, timeout_ms: u32, waiter: Waiter);
}
