//! Skynet's harbor: the nodes sharing this address space and the global
//! names the master keeps. Each function waits on a session, so the
//! service keeps handling other messages meanwhile.

use std::time::Duration;

use crate::session::SessionWait;
use crate::{Address, CallError, DecodeError, sys};

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
pub async fn globalname(name: &str, target: Address) -> Result<(), CallError> {
    SessionWait::open(sys::harbor::globalname(name, target.0))
        .await
        .into_result()
        .map(drop)
}

/// The address of global `name`, waiting until it exists (Skynet's
/// `harbor.queryname`), at most `timeout` when one is given.
///
/// # Errors
/// [`CallError::Timeout`] when the name did not appear in time;
/// [`CallError::NodeDown`] when the master is unreachable.
pub async fn queryname(name: &str, timeout: Option<Duration>) -> Result<Address, CallError> {
    let ms = timeout.map_or(0, |t| {
        u32::try_from(t.as_millis().max(1)).unwrap_or(u32::MAX)
    });
    let bytes = SessionWait::open(sys::harbor::queryname(name, ms))
        .await
        .into_result()?;
    let raw: [u8; 4] = bytes.as_slice().try_into().map_err(|_| {
        CallError::Decode(DecodeError::new(format!(
            "queryname answered {} bytes, not a 4-byte address",
            bytes.len()
        )))
    })?;
    Ok(Address(u32::from_le_bytes(raw)))
}

/// Returns once harbor id `id` is connected (at once if it is).
///
/// # Errors
/// [`CallError::NodeDown`] when this node is not in a harbor.
pub async fn connect(id: u8) -> Result<(), CallError> {
    wait(sys::harbor::connect(id)).await
}

/// Returns once harbor id `id` disconnects (at once if it is not connected).
///
/// # Errors
/// [`CallError::NodeDown`] when this node is not in a harbor.
pub async fn link(id: u8) -> Result<(), CallError> {
    wait(sys::harbor::link(id)).await
}

/// Returns once the link to the master drops (at once if it is down).
///
/// # Errors
/// [`CallError::NodeDown`] when this node is not in a harbor.
pub async fn linkmaster() -> Result<(), CallError> {
    wait(sys::harbor::linkmaster()).await
}

async fn wait(session: u32) -> Result<(), CallError> {
    SessionWait::open(session).await.into_result().map(drop)
}
