//! The seam between the SDK and the host's imports.
//!
//! Normally these are the imports `wit-bindgen` generated. Under `cfg(test)`
//! they are a thread-local fake host (see `fake`) that records what the
//! service did, so the executor and session logic run in native unit tests.

pub(crate) use crate::bindings::skyhost::service::types::{
    LogLevel, NameError as RawNameError, SendError as RawSendError,
};

#[cfg(test)]
pub(crate) use crate::bindings::skyhost::service::types::BatchSendError as RawBatchSendError;

#[cfg(not(test))]
pub(crate) use crate::bindings::skyhost::service::runtime::{
    call, call_timeout, demonitor, exit, kill, log, monitor, new_session, now, query, register,
    respond, self_address, send, send_batch, spawn, start_trace, stay_awake, tenant, timeout,
    unregister, wall_time,
};

#[cfg(not(test))]
pub(crate) use crate::bindings::skyhost::service::{cluster, groups, harbor, multicast};

#[cfg(test)]
pub(crate) use crate::fake::{cluster, groups, harbor, multicast};

#[cfg(test)]
pub(crate) use crate::fake::{
    call, call_timeout, demonitor, exit, kill, log, monitor, new_session, now, query, register,
    respond, self_address, send, send_batch, spawn, start_trace, stay_awake, tenant, timeout,
    unregister, wall_time,
};
