//! An address served by host code instead of a guest: cluster agents and
//! proxies, and host clients. It is in the address table like a service,
//! so anything can send to it; its messages arrive through [`recv`].
//!
//! [`recv`]: HostEndpoint::recv
//! [`close`]: close

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Address, Kernel, Message, ServiceHandle, Tenant, kind};

/// A host-served address and its mailbox. Dropping it removes the address;
/// `kill` on the address ends [`recv`](Self::recv).
pub(crate) struct HostEndpoint {
    kernel: Arc<Kernel>,
    handle: Arc<ServiceHandle>,
    /// Taken from the mailbox in one swap, not yet handed out.
    pending: VecDeque<Message>,
}

impl HostEndpoint {
    /// Puts a new address in the table; `module` names its kind in listings
    /// (`host`, `cluster-agent`, `cluster-proxy`). It takes messages of
    /// `tenant` only (`kernel.host_tenant`: of every tenant).
    pub fn new(kernel: &Arc<Kernel>, module: &str, tenant: Arc<Tenant>) -> Self {
        let handle = kernel.insert_service(module.into(), tenant, false);
        HostEndpoint {
            kernel: kernel.clone(),
            handle,
            pending: VecDeque::new(),
        }
    }

    /// Its address.
    pub fn address(&self) -> Address {
        self.handle.address
    }

    /// The endpoint's table entry, for [`close`] from elsewhere.
    pub fn handle(&self) -> Arc<ServiceHandle> {
        self.handle.clone()
    }

    /// The next message; `None` once it was killed or the node stops.
    pub async fn recv(&mut self) -> Option<Message> {
        let m = self.handle.mailbox.next(&mut self.pending).await?;
        self.handle.mailbox.taken(1);
        self.handle.mailbox.picked_up(&self.kernel);
        if m.kind == kind::SYSTEM && m.source == self.handle.address {
            return None;
        }
        Some(m)
    }
}

impl Drop for HostEndpoint {
    fn drop(&mut self) {
        close(&self.kernel, &self.handle);
    }
}

/// Takes an endpoint's address out of the table at once (sends to it fail
/// as unknown from now on) and ends its [`HostEndpoint::recv`]. Closing
/// twice is harmless.
pub(crate) fn close(kernel: &Kernel, handle: &ServiceHandle) {
    kernel.remove_service(handle);
    handle.mailbox.close(kernel);
    handle.mailbox.wake(handle.address);
}
