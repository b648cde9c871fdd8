//! The seam between the SDK and the host's imports.
//!
//! Normally these are the imports `wit-bindgen` generated. Under `cfg(test)`
//! they are a thread-local fake host (see `fake`) that records what the
//! service did, so the executor and session logic run in native unit tests.
//!
//! The imports that send a message some other way than `send` (a call, an
//! answer, a spawn, a kill, an exit; in the other interfaces a publish, a
//! cluster or group call) flush the service's queued sends first
//! (`queued`), so that what it sends one service arrives in the order it
//! was sent. Their wrappers are here; the other interfaces' at their one
//! call site each.

pub(crate) use crate::bindings::skyhost::service::types::{
    LogLevel, NameError as RawNameError, SendError as RawSendError,
};

#[cfg(test)]
pub(crate) use crate::bindings::skyhost::service::types::BatchSendError as RawBatchSendError;

#[cfg(not(test))]
pub(crate) use crate::bindings::skyhost::service::runtime::{
    demonitor, log, monitor, new_session, now, query, register, self_address, send, send_batch,
    start_trace, stay_awake, tenant, timeout, unregister, wall_time,
};

#[cfg(not(test))]
use crate::bindings::skyhost::service::runtime as raw;

#[cfg(not(test))]
pub(crate) use crate::bindings::skyhost::service::{cluster, groups, harbor, multicast};

#[cfg(test)]
pub(crate) use crate::fake::{cluster, groups, harbor, multicast};

#[cfg(test)]
pub(crate) use crate::fake::{
    demonitor, log, monitor, new_session, now, query, register, self_address, send, send_batch,
    start_trace, stay_awake, tenant, timeout, unregister, wall_time,
};

#[cfg(test)]
use crate::fake as raw;

use crate::queued::flush_quietly;
use crate::session::Completion;

/// What a `call-now` started: its session, and the answer when the
/// callee gave it inside the call.
pub(crate) struct CallStarted {
    pub(crate) session: u32,
    pub(crate) answer: Option<Completion>,
}

/// `call-now`, after the queued sends.
pub(crate) fn call_now(
    dest: u32,
    payload: &[u8],
    timeout_ms: u32,
) -> Result<CallStarted, RawSendError> {
    flush_quietly();
    #[cfg(not(test))]
    {
        let started = raw::call_now(dest, payload, timeout_ms)?;
        Ok(CallStarted {
            session: started.session,
            answer: started.answer.map(|m| Completion {
                kind: m.kind,
                payload: m.payload,
            }),
        })
    }
    #[cfg(test)]
    raw::call_now(dest, payload, timeout_ms)
}

/// `respond`, after the queued sends.
pub(crate) fn respond(
    dest: u32,
    session: u32,
    reply: Result<&[u8], &str>,
) -> Result<(), RawSendError> {
    flush_quietly();
    raw::respond(dest, session, reply)
}

/// `spawn`, after the queued sends.
pub(crate) fn spawn(module: &str, args: &[u8]) -> u32 {
    flush_quietly();
    raw::spawn(module, args)
}

/// `kill`, after the queued sends.
pub(crate) fn kill(target: u32) -> bool {
    flush_quietly();
    raw::kill(target)
}

/// `exit`, after the queued sends.
pub(crate) fn exit() {
    flush_quietly();
    raw::exit();
}
