//! The service's own outbox: every [`send`](crate::send) is queued here and
//! goes out with the others in one host call (`send-batch`).
//!
//! ```text
//! send ── push ─▶ queue (records as send-batch reads them)
//!                   │ flushed: 64 messages or 16 KiB queued
//!                   │          before a call, an answer, a publish, a spawn,
//!                   │            a kill or an exit (what one service sends
//!                   │            another arrives in the order it was sent)
//!                   │          when the export that ran the service's code
//!                   │            returns (dispatch-batch, init, load-state)
//!                   │          on a panic, before the instance traps (a
//!                   │            hook the first send sets)
//!                   │          at `flush()`
//!                   ▼
//!              send-batch ─ refused at index i ─▶ noted; the rest goes on from i + 1
//! ```
//!
//! A payload of [`DIRECT`] bytes or more is not copied into the queue: what
//! is queued goes first, then it goes in its own `send`, whose error comes
//! back at once.
//!
//! The host refuses a message (unknown address, full mailbox, too large,
//! node down) only at the flush. A flush the service asked for
//! ([`flush`](crate::flush)) returns the first refusal; any other logs it,
//! at most once a second, counting the refusals it did not log. A service
//! that traps loses what it queued and had not flushed (at most 63
//! messages); a panic flushes first.

use std::cell::{Cell, RefCell};

use crate::address::{Address, kind};
use crate::error::{Refused, SendError};
use crate::outbox::put_record;
use crate::sys;

/// Messages queued before a flush.
pub const MAX_QUEUED: u32 = 64;

/// Bytes queued (headers and payloads) before a flush.
pub const MAX_BYTES: usize = 16 * 1024;

/// A payload this long or longer is sent on its own, not copied into the
/// queue.
pub const DIRECT: usize = 4 * 1024;

/// A record's header (`outbox::put_record`): dest, kind, flags, reserved,
/// session, length.
const HEADER: usize = 16;

/// What waits for the next flush.
struct Queue {
    /// Records back to back, as `send-batch` reads them.
    records: RefCell<Vec<u8>>,
    /// How many records `records` holds. Every other import looks at it
    /// before it calls the host, so it is a plain cell: behind the
    /// `RefCell` that look cost local-call-rtt 2–4 % (session 22).
    count: Cell<u32>,
}

thread_local! {
    static QUEUE: Queue = const {
        Queue {
            records: RefCell::new(Vec::new()),
            count: Cell::new(0),
        }
    };
}

/// Queues a message (or, at [`DIRECT`] bytes and above, sends it now).
///
/// # Errors
/// [`SendError::ReservedKind`] at once; a payload sent on its own reports
/// what the host said of it.
pub(crate) fn push(dest: Address, kind: u8, session: u32, payload: &[u8]) -> Result<(), SendError> {
    if kind::is_reserved(kind) {
        return Err(SendError::ReservedKind);
    }
    if payload.len() >= DIRECT {
        flush_quietly();
        return Ok(sys::send(dest.0, kind, session, payload)?);
    }
    let (count, bytes) = QUEUE.with(|q| {
        let mut records = q.records.borrow_mut();
        put_record(&mut records, dest, kind, session, payload);
        q.count.set(q.count.get() + 1);
        (q.count.get(), records.len())
    });
    if count == 1 {
        // Set by the first send, not at `init`: a service that never sends
        // keeps std's hook and the memory it would take.
        flush_on_panic();
    }
    if count >= MAX_QUEUED || bytes >= MAX_BYTES {
        flush_quietly();
    }
    Ok(())
}

/// Whether a send is queued (false while a flush has the queue).
#[inline]
fn queued() -> bool {
    QUEUE.try_with(|q| q.count.get() > 0).unwrap_or(false)
}

/// How many messages wait for the next flush.
#[cfg(test)]
fn len() -> u32 {
    QUEUE.with(|q| q.count.get())
}

/// Sends what is queued.
///
/// # Errors
/// The first message the host refused, and how many it refused; every
/// other message was sent.
pub(crate) fn flush() -> Result<(), Refused> {
    if !queued() {
        return Ok(());
    }
    // Taken out, so that nothing here holds the queue while the host runs.
    let Ok(Some(mut records)) = QUEUE.try_with(|q| {
        let taken = std::mem::take(&mut *q.records.try_borrow_mut().ok()?);
        q.count.set(0);
        Some(taken)
    }) else {
        return Ok(());
    };
    let refused = send_all(&records);
    records.clear();
    // The buffer is kept for the next flush unless a burst grew it past
    // what a flush takes.
    if records.capacity() <= 2 * MAX_BYTES {
        let _ = QUEUE.try_with(|q| {
            if let Ok(mut kept) = q.records.try_borrow_mut()
                && kept.is_empty()
            {
                *kept = records;
            }
        });
    }
    refused.map_or(Ok(()), Err)
}

/// [`flush`], for the flushes the service did not ask for: a refusal is
/// logged, since no caller is left to hear it. A stream into a full
/// mailbox is refused at every flush, so it logs at most once a second
/// and counts what it did not log.
#[inline]
pub(crate) fn flush_quietly() {
    if !queued() {
        return;
    }
    if let Err(refused) = flush() {
        warn_refused(&refused);
    }
}

/// Logs `refused`, unless a line went out less than [`WARN_EVERY_US`] ago:
/// then it is counted into the next line.
fn warn_refused(refused: &Refused) {
    let _ = WARNED.try_with(|w| {
        let now = sys::now();
        let (last, unlogged) = w.get();
        if last.is_some_and(|at| now.saturating_sub(at) < WARN_EVERY_US) {
            w.set((last, unlogged + refused.count));
            return;
        }
        w.set((Some(now), 0));
        if unlogged > 0 {
            crate::warn!("{refused}; {unlogged} more refused since the last warning");
        } else {
            crate::warn!("{refused}");
        }
    });
}

/// Microseconds between two warnings of refused sends.
const WARN_EVERY_US: u64 = 1_000_000;

thread_local! {
    /// When refused sends were last logged (host microseconds), and how
    /// many were refused since without a line.
    static WARNED: Cell<(Option<u64>, usize)> = const { Cell::new((None, 0)) };
}

/// Sends every record of `records`, going on past each refused one.
fn send_all(records: &[u8]) -> Option<Refused> {
    let mut refused: Option<Refused> = None;
    let mut rest = records;
    while !rest.is_empty() {
        let Err((index, error)) = send_some(rest) else {
            break;
        };
        let (dest, after) = skip(rest, index);
        match &mut refused {
            Some(r) => r.count += 1,
            None => {
                refused = Some(Refused {
                    to: Address(dest),
                    error: error.into(),
                    count: 1,
                })
            }
        }
        rest = after;
    }
    refused
}

/// One `send-batch` for `records`; the error names the refused record's
/// index.
fn send_some(records: &[u8]) -> Result<(), (usize, sys::RawSendError)> {
    sys::send_batch(records).map_err(|e| (e.index as usize, e.error))
}

/// The record at `index` of `records`: its destination, and the records
/// after it.
fn skip(mut records: &[u8], index: usize) -> (u32, &[u8]) {
    for _ in 0..index {
        records = record(records).4;
    }
    let (dest, .., after) = record(records);
    (dest, after)
}

/// The first record of `records` (which this module wrote whole): dest,
/// kind, session, payload, and what follows it.
fn record(records: &[u8]) -> (u32, u8, u32, &[u8], &[u8]) {
    let word = |at: usize| {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&records[at..at + 4]);
        u32::from_le_bytes(bytes)
    };
    let len = word(12) as usize;
    let (payload, after) = records[HEADER..].split_at(len);
    (word(0), records[4], word(8), payload, after)
}

/// Makes a panic flush the queue before the instance traps (once per
/// instance; the hook that was there runs after it).
fn flush_on_panic() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush_quietly();
            before(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{host, sent, take_effects};

    fn reset() {
        let _ = flush();
        host(|h| h.known = vec![5, 6]);
        take_effects();
        host(|h| h.logs.clear());
    }

    #[test]
    fn queued_messages_go_at_the_flush_in_order() {
        reset();
        assert_eq!(push(Address(5), 0, 0, b"a"), Ok(()));
        assert_eq!(push(Address(6), 16, 9, b"bc"), Ok(()));
        assert_eq!(len(), 2);
        assert!(take_effects().is_empty(), "nothing leaves before the flush");
        assert_eq!(flush(), Ok(()));
        assert_eq!(len(), 0);
        assert_eq!(
            take_effects(),
            vec![sent(5, 0, 0, b"a"), sent(6, 16, 9, b"bc")]
        );
    }

    #[test]
    fn a_full_queue_flushes_itself() {
        reset();
        for i in 0..MAX_QUEUED {
            assert_eq!(push(Address(5), 0, 0, &i.to_le_bytes()), Ok(()));
        }
        assert_eq!(len(), 0);
        assert_eq!(take_effects().len(), MAX_QUEUED as usize);
        // Bytes count too: four records of 16 + 4,090 bytes make 16,424.
        for _ in 0..4 {
            assert_eq!(push(Address(5), 0, 0, &[0; 4090]), Ok(()));
        }
        assert_eq!(len(), 0);
        assert_eq!(take_effects().len(), 4);
    }

    #[test]
    fn a_refused_message_is_reported_and_the_rest_still_go() {
        reset();
        assert_eq!(push(Address(5), 0, 0, b"1"), Ok(()));
        assert_eq!(push(Address(7), 0, 0, b"2"), Ok(()));
        assert_eq!(push(Address(5), 0, 0, b"3"), Ok(()));
        assert_eq!(push(Address(8), 0, 0, b"4"), Ok(()));
        assert_eq!(push(Address(6), 0, 0, b"5"), Ok(()));
        assert_eq!(
            flush(),
            Err(Refused {
                to: Address(7),
                error: SendError::UnknownAddress,
                count: 2,
            })
        );
        assert_eq!(
            take_effects(),
            vec![
                sent(5, 0, 0, b"1"),
                sent(5, 0, 0, b"3"),
                sent(6, 0, 0, b"5")
            ]
        );
        // The last record refused: nothing is left to send after it.
        assert_eq!(push(Address(5), 0, 0, b"6"), Ok(()));
        assert_eq!(push(Address(9), 0, 0, b"7"), Ok(()));
        assert_eq!(flush().map_err(|r| (r.to, r.count)), Err((Address(9), 1)));
        assert_eq!(take_effects(), vec![sent(5, 0, 0, b"6")]);
    }

    #[test]
    fn a_flush_nobody_asked_for_logs_what_was_refused_once_a_second() {
        reset();
        let refuse = |n: usize| {
            for _ in 0..n {
                assert_eq!(push(Address(7), 0, 0, b"x"), Ok(()));
            }
            flush_quietly();
            host(|h| std::mem::take(&mut h.logs))
        };
        let logs = refuse(1);
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(logs[0].1.contains("unknown address"), "{logs:?}");
        // The fake host's clock stands still: within the second, counted.
        assert!(refuse(2).is_empty());
        assert!(refuse(3).is_empty());
        host(|h| h.now += WARN_EVERY_US);
        let logs = refuse(1);
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(logs[0].1.contains("5 more refused"), "{logs:?}");
    }

    #[test]
    fn a_reserved_kind_is_refused_at_once_and_a_large_payload_goes_on_its_own() {
        reset();
        assert_eq!(
            push(Address(5), kind::RESPONSE, 1, b""),
            Err(SendError::ReservedKind)
        );
        assert_eq!(push(Address(5), 0, 0, b"small"), Ok(()));
        let large = vec![7u8; DIRECT];
        assert_eq!(push(Address(6), 0, 0, &large), Ok(()));
        assert_eq!(len(), 0, "what was queued went first");
        assert_eq!(
            take_effects(),
            vec![sent(5, 0, 0, b"small"), sent(6, 0, 0, &large)]
        );
        assert_eq!(
            push(Address(7), 0, 0, &large),
            Err(SendError::UnknownAddress),
            "a payload sent on its own reports at once"
        );
    }
}
