//! Skynet's cluster: call services on other nodes by node name and service
//! name (or address). Functions that wait start their request when called
//! and return a future for the answer.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::node::encode;
use crate::session::SessionWait;
use crate::{Address, CallError, sys};

/// A service on another node: a name it registered (or one of its own
/// names), or an address on that node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Service {
    /// A name the other node resolves.
    Name(String),
    /// An address on the other node.
    Address(Address),
}

impl From<&str> for Service {
    fn from(name: &str) -> Self {
        Service::Name(name.to_string())
    }
}

impl From<Address> for Service {
    fn from(address: Address) -> Self {
        Service::Address(address)
    }
}

impl Service {
    /// The import's form, taking the name over (no copy per message).
    pub(crate) fn into_raw(self) -> sys::cluster::Service {
        match self {
            Service::Name(n) => sys::cluster::Service::Name(n),
            Service::Address(a) => sys::cluster::Service::Address(a.0),
        }
    }
}

/// This node's name in the cluster ("" when it is in none).
pub fn node_name() -> String {
    sys::cluster::node_name()
}

/// Listens for other nodes: a node name from the cluster config,
/// `host:port` (port 0 picks one), or a port. Returns the bound address.
///
/// # Errors
/// The node is in no cluster, the name is unknown, or the address cannot
/// be bound.
pub fn open(at: &str) -> Result<String, String> {
    sys::cluster::open(at)
}

/// Calls `service` on `node` with `req` (postcard) and waits for the answer.
///
/// # Errors
/// [`CallError`]: the node is offline or down, the service failed or does
/// not exist there, or the answer did not decode.
pub fn call<Req, Resp>(
    node: &str,
    service: impl Into<Service>,
    req: &Req,
) -> impl Future<Output = Result<Resp, CallError>> + 'static
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let started = encode(req).map_err(CallError::from);
    crate::node::typed(started.map(|payload| call_raw(node, service, &payload, None)))
}

/// Calls with raw bytes; `timeout` ends the call with
/// [`CallError::Timeout`] (the host keeps the deadline).
///
/// # Errors
/// As [`call`], plus [`CallError::Timeout`].
pub fn call_raw<S: Into<Service>>(
    node: &str,
    service: S,
    payload: &[u8],
    timeout: Option<Duration>,
) -> impl Future<Output = Result<Vec<u8>, CallError>> + 'static + use<S> {
    let wait = start(node, service.into(), payload, timeout);
    async move { wait.await.into_result() }
}

fn start(node: &str, service: Service, payload: &[u8], timeout: Option<Duration>) -> SessionWait {
    let ms = timeout.map_or(0, |t| crate::node::timer_ms(t).max(1));
    crate::queued::flush_quietly();
    SessionWait::open(sys::cluster::call(node, &service.into_raw(), payload, ms))
}

/// Sends `value` (postcard) to `service` on `node`; it arrives as a `text`
/// message.
///
/// The send is queued, as a local [`send`](crate::send) is: sends to one
/// service on one node in a row go out in one host call and cross the link
/// as one frame. They leave when 64 messages or 16 KiB wait, before a
/// call, an answer or a send to another service, when the handler's batch
/// ends, and at [`flush`](crate::flush). What the host refuses (the node is
/// offline, unknown with `__nowaiting`, or down with its queue full; a
/// payload over the limit) it refuses at the flush: [`flush`](crate::flush)
/// returns it, any other flush logs it. A payload of 4 KiB or more goes at
/// once, on its own, and reports at once.
///
/// # Errors
/// The value did not encode, or a payload sent on its own was refused.
pub fn send<T: Serialize + ?Sized>(
    node: &str,
    service: impl Into<Service>,
    value: &T,
) -> Result<(), String> {
    let payload = encode(value).map_err(|e| e.to_string())?;
    send_raw(node, service, &payload)
}

/// Sends raw bytes to `service` on `node`.
///
/// # Errors
/// As [`send`].
pub fn send_raw(node: &str, service: impl Into<Service>, payload: &[u8]) -> Result<(), String> {
    crate::queued::push_cluster(node, service.into(), payload)
}

/// A local address whose requests and text messages go to `service` on
/// `node`; answers come back to the caller.
pub fn proxy(node: &str, service: impl Into<Service>) -> Address {
    Address(sys::cluster::proxy(node, &service.into().into_raw()))
}

/// Makes `target` known to other nodes as `name` (their `query` and calls
/// by name find it).
pub fn register(name: &str, target: Address) {
    sys::cluster::register(name, target.0);
}

/// Forgets a registered name.
pub fn unregister(name: &str) {
    sys::cluster::unregister(name);
}

/// The address `node` registered as `name`.
///
/// # Errors
/// [`CallError::UnknownAddress`] when it has none, or how the link failed.
pub fn query(node: &str, name: &str) -> impl Future<Output = Result<Address, CallError>> + 'static {
    let wait = SessionWait::open(sys::cluster::query(node, name));
    async move { crate::node::address_answer(wait.await.into_result()?, "cluster query") }
}

/// Which node serves `name` cluster-wide, and its address there: asks
/// discovery (etcd), so the caller need not know the node (`query` with no node).
///
/// # Errors
/// [`CallError::UnknownAddress`] when no node registered it (or this node
/// has no discovery), [`CallError::NodeDown`] when etcd is unreachable.
pub fn find(name: &str) -> impl Future<Output = Result<(String, Address), CallError>> + 'static {
    let wait = SessionWait::open(sys::cluster::query("", name));
    async move {
        let mut bytes = wait.await.into_result()?;
        let node = bytes.split_off(4.min(bytes.len()));
        let address = crate::node::address_answer(bytes, "cluster find")?;
        let node = String::from_utf8(node).map_err(|_| {
            CallError::Decode(crate::error::DecodeError::new(
                "cluster find: the node name is not UTF-8",
            ))
        })?;
        Ok((node, address))
    }
}

/// Replaces the cluster config with `config` (the cluster file's format).
///
/// # Errors
/// The config's error, naming the line and key.
pub fn reload(config: &str) -> Result<(), String> {
    sys::cluster::reload(config)
}

/// A service registered cluster-wide, found through discovery on first use
/// and remembered until a call to it fails as if it moved.
pub struct Located {
    name: &'static str,
    at: RefCell<Option<(String, Address)>>,
}

impl Located {
    /// The service registered as `name`.
    pub const fn new(name: &'static str) -> Self {
        Located {
            name,
            at: RefCell::new(None),
        }
    }

    /// Its node and address.
    ///
    /// # Errors
    /// When no node registered it, or discovery cannot be reached.
    pub async fn at(&self) -> Result<(String, Address), CallError> {
        if let Some(at) = self.at.borrow().clone() {
            return Ok(at);
        }
        let found = find(self.name).await?;
        *self.at.borrow_mut() = Some(found.clone());
        Ok(found)
    }

    /// Calls it with `req` (postcard) and decodes the answer.
    ///
    /// # Errors
    /// As [`call`]; a node that is down or an address that is gone
    /// makes the next call look it up again.
    pub async fn call<Req, Resp>(&self, req: &Req) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let (node, address) = self.at().await?;
        let answer = call(&node, address, req).await;
        if matches!(answer, Err(CallError::NodeDown | CallError::UnknownAddress)) {
            self.at.borrow_mut().take();
        }
        answer
    }
}
