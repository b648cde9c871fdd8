//! Sends in bulk: many messages, one host call (`send-batch`).

use serde::Serialize;

use crate::error::SendError;
use crate::{Address, sys};

/// Messages queued to go out together in one host call: at [`Outbox::flush`]
/// each is sent as [`send_raw`](crate::send_raw) would, in order.
///
/// Errors are seen at the flush, not when a message is queued: sending stops
/// at the first message the host refuses, and [`BatchSendError`] names it by
/// its place among the messages of that flush; the ones before it were sent,
/// it and the ones after were not. An outbox dropped with messages queued
/// flushes them and ignores the errors, as `std::io::BufWriter` does; call
/// `flush` to see them.
///
/// It pays for a service that sends many messages per message it handles
/// (a fan-out, a stream): each `send_raw` is one host call, a flush of 64
/// queued messages is one.
#[derive(Debug, Default)]
pub struct Outbox {
    buffer: Vec<u8>,
    queued: usize,
}

/// The message of a flush that the host refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSendError {
    /// Its place among the messages of the flush (0-based).
    pub index: usize,
    /// Why it was refused.
    pub error: SendError,
}

impl std::fmt::Display for BatchSendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message {} of the batch: {}", self.index, self.error)
    }
}

impl std::error::Error for BatchSendError {}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues raw bytes with `kind` for `addr`, wanting no reply.
    pub fn push_raw(&mut self, addr: Address, kind: u8, payload: &[u8]) {
        self.push_session(addr, kind, 0, payload);
    }

    /// Queues raw bytes with `kind` and an explicit `session` (see
    /// [`send_session`](crate::send_session)).
    pub fn push_session(&mut self, addr: Address, kind: u8, session: u32, payload: &[u8]) {
        put_record(&mut self.buffer, addr, kind, session, payload);
        self.queued += 1;
    }

    /// Queues `value` (postcard) with `kind` for `addr`.
    ///
    /// # Errors
    /// [`SendError::Encode`] when the value did not encode (nothing queued).
    pub fn push<T: Serialize + ?Sized>(
        &mut self,
        addr: Address,
        kind: u8,
        value: &T,
    ) -> Result<(), SendError> {
        self.push_raw(addr, kind, &crate::node::encode(value)?);
        Ok(())
    }

    /// How many messages wait for the next flush.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Sends every queued message, in order, in one host call; the outbox
    /// is empty afterwards whatever happened.
    ///
    /// # Errors
    /// The first message refused (see [`Outbox`]).
    pub fn flush(&mut self) -> Result<(), BatchSendError> {
        if self.queued == 0 {
            return Ok(());
        }
        // What `send` queued before these goes first.
        crate::queued::flush_quietly();
        let sent = sys::send_batch(&self.buffer);
        self.buffer.clear();
        self.queued = 0;
        sent.map_err(|e| BatchSendError {
            index: e.index as usize,
            error: e.error.into(),
        })
    }
}

/// Appends one `send-batch` record: the 16-byte header (dest, kind, flags
/// 0, reserved 0, session, length), then the payload.
pub(crate) fn put_record(
    records: &mut Vec<u8>,
    addr: Address,
    kind: u8,
    session: u32,
    payload: &[u8],
) {
    // A wasm32 slice is shorter than 4 GiB, so its length fits.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    records.reserve(16 + payload.len());
    records.extend_from_slice(&addr.0.to_le_bytes());
    records.extend_from_slice(&[kind, 0, 0, 0]);
    records.extend_from_slice(&session.to_le_bytes());
    records.extend_from_slice(&len.to_le_bytes());
    records.extend_from_slice(payload);
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{host, sent, take_effects};

    #[test]
    fn a_flush_sends_in_order_and_stops_at_the_first_refused() {
        host(|h| h.known = vec![5, 6]);
        take_effects();
        let mut out = Outbox::new();
        out.push_raw(Address(5), 0, b"a");
        out.push_session(Address(6), 16, 9, b"bc");
        assert_eq!(out.len(), 2);
        assert_eq!(out.flush(), Ok(()));
        assert!(out.is_empty());
        assert_eq!(
            take_effects(),
            vec![sent(5, 0, 0, b"a"), sent(6, 16, 9, b"bc")]
        );

        out.push_raw(Address(5), 0, b"1");
        out.push_raw(Address(7), 0, b"2");
        out.push_raw(Address(5), 0, b"3");
        assert_eq!(
            out.flush(),
            Err(BatchSendError {
                index: 1,
                error: SendError::UnknownAddress
            })
        );
        assert!(out.is_empty(), "a failed flush empties the outbox");
        assert_eq!(take_effects(), vec![sent(5, 0, 0, b"1")]);
        assert_eq!(out.flush(), Ok(()), "nothing queued");
        assert_eq!(take_effects(), vec![]);
    }

    #[test]
    fn a_dropped_outbox_sends_what_it_holds() {
        host(|h| h.known = vec![5]);
        take_effects();
        {
            let mut out = Outbox::new();
            out.push_raw(Address(5), 0, b"last");
        }
        assert_eq!(take_effects(), vec![sent(5, 0, 0, b"last")]);
    }
}
