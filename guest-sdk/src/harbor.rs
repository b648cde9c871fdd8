//! Skynet's harbor: the nodes sharing this address space and the global
//! names the master keeps. Each function starts its request when called
//! and returns a future for the answer, so the service keeps handling
//! other messages meanwhile.

use std::future::Future;
use std::time::Duration;

use crate::session::SessionWait;
use crate::{Address, CallError, sys};

/// This node's harbor id (the low 8 bits of its addresses); 0 when the node
/// is not in a harbor.
pub fn id() -> u8 {
    sys::harbor::id()
}

/// Registers `name` globally for `target` (a service on this node) and
/// waits for the master's answer.
///
/// # Errors
/// [`CallError::ServiceError`] naming the holder when the name is taken;
/// [`CallError::NodeDown`] when the master is unreachable or this node is
/// not in a harbor.
pub fn globalname(
    name: &str,
    target: Address,
) -> impl Future<Output = Result<(), CallError>> + 'static {
    wait(sys::harbor::globalname(name, target.0))
}

/// The address of global `name`, waiting until it exists (Skynet's
/// `harbor.queryname`), at most `timeout` when one is given.
///
/// # Errors
/// [`CallError::Timeout`] when the name did not appear in time;
/// [`CallError::NodeDown`] when the master is unreachable.
pub fn queryname(
    name: &str,
    timeout: Option<Duration>,
) -> impl Future<Output = Result<Address, CallError>> + 'static {
    let ms = timeout.map_or(0, |t| crate::node::timer_ms(t).max(1));
    let wait = SessionWait::open(sys::harbor::queryname(name, ms));
    async move { crate::node::address_answer(wait.await.into_result()?, "queryname") }
}

/// Returns once harbor id `id` is connected (at once if it is).
///
/// # Errors
/// [`CallError::NodeDown`] when this node is not in a harbor.
pub fn connect(id: u8) -> impl Future<Output = Result<(), CallError>> + 'static {
    wait(sys::harbor::connect(id))
}

/// Returns once harbor id `id` disconnects (at once if it is not connected).
///
/// # Errors
/// [`CallError::NodeDown`] when this node is not in a harbor.
pub fn link(id: u8) -> impl Future<Output = Result<(), CallError>> + 'static {
    wait(sys::harbor::link(id))
}

/// Returns once the link to the master drops (at once if it is down).
///
/// # Errors
/// [`CallError::NodeDown`] when this node is not in a harbor.
pub fn linkmaster() -> impl Future<Output = Result<(), CallError>> + 'static {
    wait(sys::harbor::linkmaster())
}

fn wait(session: u32) -> impl Future<Output = Result<(), CallError>> + 'static {
    let wait = SessionWait::open(session);
    async move { wait.await.into_result().map(drop) }
}
