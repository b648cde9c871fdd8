//! A host endpoint: an address in the node's table whose messages go to
//! host code instead of a guest. Tests, benchmarks and the CLI use it to
//! call and send to services.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{
    Address, CallError, Kernel, Message, SendError, ServiceHandle, Tenant, TenantId, kind,
};

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Message>>>>;

/// A host endpoint with its own address, as the core alone provides it
/// (the node's `Client` adds the cluster side). Responses to its calls go
/// to the waiting caller; every other message arrives through
/// [`LocalClient::recv`].
///
/// Dropping the client removes its address; calls to it then fail with
/// unknown address.
pub struct LocalClient {
    pub(crate) kernel: Arc<Kernel>,
    handle: Arc<ServiceHandle>,
    /// The tenant it acts as.
    pub(crate) tenant: TenantId,
    /// The next session it opens; shared with its router, which tells an
    /// answer to a session it opened (late when no one waits) from others.
    next_session: Arc<AtomicU32>,
    pending: Pending,
    events: mpsc::UnboundedReceiver<Message>,
}

impl LocalClient {
    pub(crate) fn new(kernel: Arc<Kernel>, tenant: Arc<Tenant>) -> Self {
        let id = tenant.id;
        let mut endpoint = super::endpoint::HostEndpoint::new(&kernel, "host", tenant);
        let handle = endpoint.handle();
        let pending: Pending = Arc::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let router_pending = pending.clone();
        let next_session = Arc::new(AtomicU32::new(1));
        let opened = next_session.clone();
        let router_kernel = kernel.clone();
        kernel.tasks.spawn(async move {
            while let Some(m) = endpoint.recv().await {
                if matches!(m.kind, kind::RESPONSE | kind::ERROR) {
                    let waiter = router_pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&m.session);
                    if let Some(tx) = waiter {
                        let _ = tx.send(m);
                        continue;
                    }
                    // A session it opened that has ended (answered, timed
                    // out): the answer is late, and ends nothing.
                    if m.session != 0 && m.session < opened.load(Ordering::Relaxed) {
                        router_kernel.count_late_answer(super::LateAt::Service);
                        continue;
                    }
                }
                let _ = events_tx.send(m);
            }
            // Killed: calls still waiting end now (as `NodeStopped`).
            router_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        });
        LocalClient {
            kernel,
            handle,
            tenant: id,
            next_session,
            pending,
            events,
        }
    }

    /// This endpoint's address.
    pub fn address(&self) -> Address {
        self.handle.address
    }

    /// Sends a message; `session` 0 wants no reply.
    ///
    /// # Errors
    /// When the target is unknown or its mailbox is full.
    pub fn send(
        &self,
        dest: Address,
        kind: u8,
        session: u32,
        payload: Vec<u8>,
    ) -> Result<(), SendError> {
        self.kernel.deliver(
            dest,
            Message {
                kind,
                source: self.address(),
                session,
                tenant: self.tenant,
                payload: payload.into(),
                trace: 0,
            },
        )
    }

    /// Calls `dest` and waits for its response.
    ///
    /// # Errors
    /// [`CallError`] with the cause the session ended with.
    pub async fn call(&self, dest: Address, payload: Vec<u8>) -> Result<Vec<u8>, CallError> {
        self.start_call(dest, payload)?.await
    }

    /// Sends a request now and returns a future for its response, so the
    /// request is in the target's mailbox when this returns.
    ///
    /// # Errors
    /// [`SendError`] when the request could not be enqueued.
    pub fn start_call(
        &self,
        dest: Address,
        payload: Vec<u8>,
    ) -> Result<impl Future<Output = Result<Vec<u8>, CallError>> + Send + 'static + use<>, SendError>
    {
        self.start_call_session(dest, payload)
            .map(|(_, answer)| answer)
    }

    /// [`start_call`](Self::start_call), with the call's session.
    fn start_call_session(
        &self,
        dest: Address,
        payload: Vec<u8>,
    ) -> Result<
        (
            u32,
            impl Future<Output = Result<Vec<u8>, CallError>> + Send + 'static + use<>,
        ),
        SendError,
    > {
        let (waiter, answer) = self.open_session();
        let m = Message {
            kind: kind::REQUEST,
            source: self.address(),
            session: waiter.session,
            tenant: self.tenant,
            payload: payload.into(),
            trace: 0,
        };
        if let Err(e) = self.kernel.deliver(dest, m) {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&waiter.session);
            return Err(e);
        }
        Ok((waiter.session, answer))
    }

    /// Opens a session of this client: whoever gets the waiter answers it;
    /// the future waits for the `response` (or `error`).
    pub(crate) fn open_session(
        &self,
    ) -> (
        crate::runtime::Waiter,
        impl Future<Output = Result<Vec<u8>, CallError>> + Send + 'static + use<>,
    ) {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session, tx);
        let waiter = crate::runtime::Waiter {
            to: self.address(),
            session,
        };
        (waiter, answer(rx))
    }

    /// The address of global `name` on this node's harbor, waiting until it
    /// exists, at most `timeout`.
    ///
    /// # Errors
    /// `Timeout` when it did not appear in time; `NodeDown` when the master
    /// is unreachable or the node is not in a harbor.
    pub async fn queryname(&self, name: &str, timeout: Duration) -> Result<Address, CallError> {
        let remote = self
            .kernel
            .remote
            .get()
            .cloned()
            .ok_or_else(|| not_in("a harbor"))?;
        let ms = u32::try_from(timeout.as_millis().max(1)).unwrap_or(u32::MAX);
        let (waiter, answer) = self.open_session();
        remote.queryname(&super::scoped(self.tenant, name), ms, waiter);
        let bytes = answer.await?;
        to_address(&bytes)
    }

    /// [`call`](Self::call) with a deadline: the session ends then, and a
    /// reply that comes later is dropped (and counted as late).
    ///
    /// # Errors
    /// [`CallError::Timeout`] when no answer came in time.
    pub async fn call_timeout(
        &self,
        dest: Address,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let (session, answer) = self.start_call_session(dest, payload)?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(answer) => answer,
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&session);
                Err(CallError::Timeout)
            }
        }
    }

    /// The next message that is not a response to one of this client's calls
    /// (requests, text, exit notices).
    pub async fn recv(&mut self) -> Option<Message> {
        self.events.recv().await
    }

    /// Be told with an `exit` message (through [`recv`](Self::recv)) when
    /// `target` ends.
    pub fn monitor(&self, target: Address) {
        self.kernel.monitor(self.tenant, self.address(), target);
    }
}

impl Drop for LocalClient {
    fn drop(&mut self) {
        super::endpoint::close(&self.kernel, &self.handle);
    }
}

/// The error of a call that needs a part this node does not have.
pub(crate) fn not_in(what: &str) -> CallError {
    CallError::Failed {
        cause: super::ErrorCause::NodeDown,
        detail: format!("this node is not in {what}"),
    }
}

/// The address a 4-byte answer carries.
pub(crate) fn to_address(bytes: &[u8]) -> Result<Address, CallError> {
    let raw: [u8; 4] = bytes.try_into().map_err(|_| CallError::Failed {
        cause: super::ErrorCause::Service,
        detail: format!("answered {} bytes, not a 4-byte address", bytes.len()),
    })?;
    Ok(Address(u32::from_le_bytes(raw)))
}

/// Waits for the `response` (or `error`) that ends a session of a client.
async fn answer(rx: oneshot::Receiver<Message>) -> Result<Vec<u8>, CallError> {
    let reply = rx.await.map_err(|_| CallError::NodeStopped)?;
    if reply.kind == kind::ERROR {
        return Err(CallError::from_error_payload(&reply.payload));
    }
    Ok(reply.payload.into())
}
