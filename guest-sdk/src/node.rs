//! What a service can ask of its node: calls, sends, timers, spawn, names.
//!
//! Functions that wait return a future that is `'static`. The request (or
//! timer, or spawn) starts when the function is called, not when the future
//! is first polled, so `let a = call(x, &q); let b = call(y, &q);` sends both
//! at once and in that order. Dropping the future stops waiting: a reply that
//! comes later is dropped.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::address::Address;
use crate::error::{CallError, DecodeError, NameError, Refused, SendError};
use crate::runtime;
use crate::session::SessionWait;
use crate::sys;

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, SendError> {
    to_bytes(value).map_err(|e| SendError::Encode(e.to_string()))
}

/// How many bytes an encoding starts with: most messages fit, so encoding
/// one allocates once instead of growing from 8 bytes (postcard writes a
/// byte at a time).
const FIRST_CAPACITY: usize = 64;

/// `value` encoded by postcard.
pub(crate) fn to_bytes<T: Serialize + ?Sized>(value: &T) -> postcard::Result<Vec<u8>> {
    postcard::to_extend(value, Vec::with_capacity(FIRST_CAPACITY))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CallError> {
    postcard::from_bytes(bytes).map_err(|e| CallError::Decode(DecodeError::from(e)))
}

/// The answer of a call already started with the encoded request (or the
/// encoding's error), decoded: the shape of every typed call (cluster,
/// group, batch).
// Not an `async fn`: the explicit `'static` lets callers promise a
// `'static` future without asking `Resp: 'static`.
#[allow(clippy::manual_async_fn)]
pub(crate) fn typed<Resp, Fut>(
    started: Result<Fut, CallError>,
) -> impl Future<Output = Result<Resp, CallError>> + 'static + use<Resp, Fut>
where
    Resp: DeserializeOwned,
    Fut: Future<Output = Result<Vec<u8>, CallError>> + 'static,
{
    async move { decode(&started?.await?) }
}

/// Milliseconds for a timer, rounded up, saturating at `u32::MAX`.
pub(crate) fn timer_ms(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

pub(crate) fn start_call(addr: Address, payload: &[u8]) -> Result<SessionWait, CallError> {
    start_call_timeout(addr, payload, 0)
}

/// Sends `payload` as a request to `addr`, ended by the host after `ms`
/// (0: never): the wait for its answer, already complete when the callee
/// answered inside the call (the direct hand-off).
fn start_call_timeout(addr: Address, payload: &[u8], ms: u32) -> Result<SessionWait, CallError> {
    let started = sys::call_now(addr.0, payload, ms).map_err(SendError::from)?;
    Ok(match started.answer {
        Some(answer) => SessionWait::answered(started.session, answer),
        None => SessionWait::open(started.session),
    })
}

/// Encodes `req` and sends it as a request now.
fn start_typed_call<Req: Serialize + ?Sized>(
    addr: Address,
    req: &Req,
) -> Result<SessionWait, CallError> {
    start_call(addr, &encode(req)?)
}

/// Sends `req` (postcard) as a request to `addr` and waits for the answer.
///
/// # Errors
/// [`CallError`]: the request could not be sent or encoded, the target
/// failed or answered with an error, or the answer did not decode.
pub fn call<Req, Resp>(
    addr: Address,
    req: &Req,
) -> impl Future<Output = Result<Resp, CallError>> + 'static
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let started = start_typed_call(addr, req);
    async move {
        let bytes = started?.await.into_result()?;
        decode(&bytes)
    }
}

/// Sends raw bytes as a request to `addr` and waits for the raw answer.
///
/// # Errors
/// [`CallError`]: the request could not be sent, or the target failed or
/// answered with an error.
pub fn call_raw(
    addr: Address,
    payload: &[u8],
) -> impl Future<Output = Result<Vec<u8>, CallError>> + 'static {
    let started = start_call(addr, payload);
    async move { started?.await.into_result() }
}

/// Like [`call`], but gives up after `timeout` with [`CallError::Timeout`]:
/// the host ends the session then (`call-timeout`), and drops an answer
/// that comes later.
///
/// # Errors
/// As [`call`], plus [`CallError::Timeout`].
pub fn call_timeout<Req, Resp>(
    addr: Address,
    req: &Req,
    timeout: Duration,
) -> impl Future<Output = Result<Resp, CallError>> + 'static
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    // 0 would mean no limit: a zero timeout still times out.
    let ms = timer_ms(timeout).max(1);
    let started = encode(req)
        .map_err(CallError::from)
        .and_then(|payload| start_call_timeout(addr, &payload, ms));
    async move {
        let answer = started?.await.into_result()?;
        decode(&answer)
    }
}

/// Sends `value` (postcard) with `kind` to `addr`, wanting no reply.
///
/// The message is queued and goes out with the service's other sends in one
/// host call: when 64 are queued, before the service calls, answers,
/// publishes, spawns, kills or exits (so what it sends one service arrives
/// in order), when its handlers have all returned or wait, or at [`flush`].
/// A payload of 4 KiB or more goes at once (after what is queued).
///
/// # Errors
/// [`SendError`] at once when the value did not encode or the kind is
/// reserved. What the host refuses (unknown address, full mailbox, too
/// large, node down) it refuses at the flush: [`flush`] returns it, and any
/// other flush logs it.
pub fn send<T: Serialize + ?Sized>(addr: Address, kind: u8, value: &T) -> Result<(), SendError> {
    send_raw(addr, kind, &encode(value)?)
}

/// Sends raw bytes with `kind` to `addr`, wanting no reply; queued as
/// [`send`] says.
///
/// # Errors
/// As [`send`].
pub fn send_raw(addr: Address, kind: u8, payload: &[u8]) -> Result<(), SendError> {
    crate::queued::push(addr, kind, 0, payload)
}

/// Sends raw bytes with `kind` and an explicit `session` (for protocols
/// built on `send`; pair with [`new_session`] and [`wait_session`]); queued
/// as [`send`] says.
///
/// # Errors
/// As [`send`].
pub fn send_session(
    addr: Address,
    kind: u8,
    session: u32,
    payload: &[u8],
) -> Result<(), SendError> {
    crate::queued::push(addr, kind, session, payload)
}

/// Sends every message [`send`] queued now, in one host call.
///
/// # Errors
/// The first message the host refused and how many it refused ([`Refused`]);
/// every other queued message was sent.
pub fn flush() -> Result<(), Refused> {
    crate::queued::flush()
}

/// A fresh session number, for protocols built on [`send_session`].
pub fn new_session() -> u32 {
    sys::new_session()
}

/// Waits for the `response` or `error` that ends `session`. Call it before
/// the current handler returns control: an answer that arrives while nobody
/// waits is dropped.
///
/// # Errors
/// The `error` message's cause, as a [`CallError`].
pub fn wait_session(session: u32) -> impl Future<Output = Result<Vec<u8>, CallError>> + 'static {
    let wait = SessionWait::open(session);
    async move { wait.await.into_result() }
}

/// Waits at least `duration` (a host timer; rounded up to milliseconds).
pub fn sleep(duration: Duration) -> impl Future<Output = ()> + 'static {
    let timer = SessionWait::open(sys::timeout(timer_ms(duration)));
    async move {
        timer.await;
    }
}

/// Starts a service from `module` with `args` (postcard) and waits until its
/// `init` succeeded.
///
/// # Errors
/// [`CallError::SpawnFailed`] (no such module, `init` failed, …), or
/// [`CallError::Encode`] if `args` did not encode.
pub fn spawn<A: Serialize + ?Sized>(
    module: &str,
    args: &A,
) -> impl Future<Output = Result<Address, CallError>> + 'static {
    let started = encode(args)
        .map_err(CallError::from)
        .map(|args| start_spawn(module, &args));
    async move { finish_spawn(started?).await }
}

/// Starts a service from `module` with raw `args` bytes and waits until its
/// `init` succeeded.
///
/// # Errors
/// [`CallError::SpawnFailed`]: no such module, or its `init` failed.
pub fn spawn_raw(
    module: &str,
    args: &[u8],
) -> impl Future<Output = Result<Address, CallError>> + 'static {
    finish_spawn(start_spawn(module, args))
}

fn start_spawn(module: &str, args: &[u8]) -> SessionWait {
    SessionWait::open(sys::spawn(module, args))
}

async fn finish_spawn(wait: SessionWait) -> Result<Address, CallError> {
    address_answer(wait.await.into_result()?, "spawn")
}

/// Reads a 4-byte little-endian address that `what` answered.
pub(crate) fn address_answer(bytes: Vec<u8>, what: &str) -> Result<Address, CallError> {
    let raw: [u8; 4] = bytes.as_slice().try_into().map_err(|_| {
        CallError::Decode(DecodeError::new(format!(
            "{what} answered {} bytes, not a 4-byte address",
            bytes.len()
        )))
    })?;
    Ok(Address(u32::from_le_bytes(raw)))
}

/// Runs `future` as a new task of this service (Skynet's `skynet.fork`). It
/// first runs once the current task yields or ends.
pub fn fork(future: impl Future<Output = ()> + 'static) {
    runtime::spawn_task(Box::pin(future));
}

/// Gives this service a name; names starting with `.` are local to the node.
///
/// # Errors
/// [`NameError::Invalid`] or [`NameError::Taken`].
pub fn register(name: &str) -> Result<(), NameError> {
    Ok(sys::register(name)?)
}

/// Removes a name this service holds.
pub fn unregister(name: &str) {
    sys::unregister(name);
}

/// The address holding `name`, if any.
pub fn query(name: &str) -> Option<Address> {
    sys::query(name).map(Address)
}

/// This service's own address.
pub fn self_address() -> Address {
    Address(sys::self_address())
}

/// The name of this service's tenant (`system` for the node's own). A
/// service reaches only its own tenant's services, names and channels, and
/// the entries other tenants grant it (`query("other-tenant/entry")`).
pub fn tenant() -> String {
    sys::tenant()
}

/// Traces the request being handled: from here on, what this handler (and
/// anything else running in this dispatch) sends, calls and answers
/// carries one trace id, through other services and across nodes, and each
/// hop is logged with it (log target `skyhost::trace`). Returns the id.
pub fn start_trace() -> u64 {
    sys::start_trace()
}

/// Ends this service once the current `dispatch` returns. Requests it has not
/// answered get [`CallError::Exited`] from the host; the SDK stops sending
/// its own "returned without answering" errors.
pub fn exit() {
    runtime::set_exiting();
    sys::exit();
}

/// Stops another service at once. False if there is no such service.
pub fn kill(addr: Address) -> bool {
    sys::kill(addr.0)
}

/// Be told with an `exit` message (source = `addr`) when `addr` ends; at once
/// if it does not exist.
pub fn monitor(addr: Address) {
    sys::monitor(addr.0);
}

/// Stops watching `addr`.
pub fn demonitor(addr: Address) {
    sys::demonitor(addr.0);
}

/// Monotonic time since the node started.
pub fn now() -> Duration {
    Duration::from_micros(sys::now())
}

/// Wall-clock time since the Unix epoch (millisecond precision).
pub fn wall_time() -> Duration {
    Duration::from_millis(sys::wall_time())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_ms_rounds_up_and_saturates() {
        assert_eq!(timer_ms(Duration::ZERO), 0);
        assert_eq!(timer_ms(Duration::from_micros(1)), 1);
        assert_eq!(timer_ms(Duration::from_millis(500)), 500);
        assert_eq!(timer_ms(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
