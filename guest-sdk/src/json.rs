//! JSON payloads: the encoding every skyhost SDK speaks (Rust, C by hand,
//! JavaScript's `JSON`, Python's `json`), for structured data between
//! services in different languages. Postcard (the rest of this SDK) is
//! smaller and faster, but only Rust reads it.
//!
//! ```no_run
//! # async fn f(python_service: skyhost_sdk::Address) -> Result<(), skyhost_sdk::CallError> {
//! #[derive(serde::Serialize)]
//! struct Add { a: i64, b: i64 }
//! #[derive(serde::Deserialize)]
//! struct Sum { sum: i64 }
//! let sum: Sum = skyhost_sdk::json::call(python_service, &Add { a: 2, b: 3 }).await?;
//! # Ok(()) }
//! ```

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Address;
use crate::error::{CallError, DecodeError};
use crate::message::{Message, Reply};
use crate::node::start_call;

/// Calls `addr` with `req` as JSON and decodes its JSON answer.
///
/// # Errors
/// As [`call_raw`](crate::call_raw), plus [`CallError::Encode`] and
/// [`CallError::Decode`] for JSON that does not fit.
pub fn call<Req, Resp>(
    addr: Address,
    req: &Req,
) -> impl Future<Output = Result<Resp, CallError>> + 'static
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let started = serde_json::to_vec(req)
        .map_err(|e| CallError::Encode(e.to_string()))
        .and_then(|bytes| start_call(addr, &bytes));
    async move {
        let bytes = started?.await.into_result()?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Decode(DecodeError::new(e.to_string())))
    }
}

/// The JSON value in a message's payload.
///
/// # Errors
/// [`DecodeError`] when the payload is not JSON of that shape.
pub fn decode<T: DeserializeOwned>(msg: &Message) -> Result<T, DecodeError> {
    serde_json::from_slice(&msg.payload).map_err(|e| DecodeError::new(e.to_string()))
}

/// An answer carrying `value` as JSON (an error if it does not encode).
pub fn reply<T: Serialize + ?Sized>(value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => Reply::Bytes(bytes),
        Err(e) => Reply::Error(format!("reply did not encode: {e}")),
    }
}
