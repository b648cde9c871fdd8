//! The service's own outbox: every [`send`](crate::send) is queued here and
//! goes out with the others in one host call (`send-batch`). A cluster
//! send ([`cluster::send`](crate::cluster::send)) is queued beside them, in
//! a run of sends to one service on one node that goes out in one
//! `cluster.send-batch` (and crosses the link as one frame); a send to
//! another service or node flushes the run first.
//!
//! ```text
//! send ── push ─▶ queue (records as send-batch reads them)
//! cluster::send ── push_cluster ─▶ run (one node, one service)
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
//!              cluster.send-batch ─ refused ─▶ noted (all of the run, or
//!                                   those over the payload limit)
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
use crate::cluster::Service;
use crate::error::{Destination, Refused, SendError};
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
    /// Cluster sends to one service on one node.
    cluster: RefCell<ClusterRun>,
    /// How many messages wait, in `records` and `cluster`. Every other
    /// import looks at it before it calls the host, so it is a plain
    /// cell: behind the `RefCell` that look cost local-call-rtt 2–4 %
    /// (session 22).
    count: Cell<u32>,
}

/// Cluster sends to one service on one node, as `cluster.send-batch`
/// reads them: each a `u32` length and the payload.
struct ClusterRun {
    /// Where they go (`None`: the run is empty).
    to: Option<(String, Service)>,
    records: Vec<u8>,
}

impl ClusterRun {
    /// Whether the run goes to `service` on `node`.
    fn goes_to(&self, node: &str, service: &Service) -> bool {
        self.to
            .as_ref()
            .is_some_and(|(n, s)| n == node && s == service)
    }
}

thread_local! {
    static QUEUE: Queue = const {
        Queue {
            records: RefCell::new(Vec::new()),
            cluster: RefCell::new(ClusterRun {
                to: None,
                records: Vec::new(),
            }),
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
    queued_one(count, bytes);
    Ok(())
}

/// Queues a cluster send to `service` on `node` (or, at [`DIRECT`] bytes
/// and above, sends it now). A run to another service or node is flushed
/// first.
///
/// # Errors
/// A payload sent on its own reports what the host said of it.
pub(crate) fn push_cluster(node: &str, service: Service, payload: &[u8]) -> Result<(), String> {
    if payload.len() >= DIRECT {
        flush_quietly();
        return sys::cluster::send(node, &service.into_raw(), payload);
    }
    let same = QUEUE.with(|q| q.cluster.borrow().goes_to(node, &service));
    if !same {
        flush_quietly();
    }
    let (count, bytes) = QUEUE.with(|q| {
        let mut run = q.cluster.borrow_mut();
        if run.to.is_none() {
            run.to = Some((node.to_string(), service));
        }
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        run.records.extend_from_slice(&len.to_le_bytes());
        run.records.extend_from_slice(payload);
        q.count.set(q.count.get() + 1);
        (q.count.get(), run.records.len())
    });
    queued_one(count, bytes);
    Ok(())
}

/// After a message was queued: `count` wait in all, one buffer holds
/// `bytes`.
fn queued_one(count: u32, bytes: usize) {
    if count == 1 {
        // Set by the first send, not at `init`: a service that never sends
        // keeps std's hook and the memory it would take.
        flush_on_panic();
    }
    if count >= MAX_QUEUED || bytes >= MAX_BYTES {
        flush_quietly();
    }
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
    let Ok(Some((mut records, run))) = QUEUE.try_with(|q| {
        let records = std::mem::take(&mut *q.records.try_borrow_mut().ok()?);
        let mut cluster = q.cluster.try_borrow_mut().ok()?;
        let run = (cluster.to.take(), std::mem::take(&mut cluster.records));
        q.count.set(0);
        Some((records, run))
    }) else {
        return Ok(());
    };
    let mut refused = if records.is_empty() {
        None
    } else {
        send_all(&records)
    };
    let (to, mut cluster_records) = run;
    if let Some((node, service)) = to {
        let theirs = send_run(node, service, &cluster_records);
        refused = match (refused, theirs) {
            (Some(mut first), Some(then)) => {
                first.count += then.count;
                Some(first)
            }
            (first, then) => first.or(then),
        };
    }
    records.clear();
    cluster_records.clear();
    // The buffers are kept for the next flush unless a burst grew them
    // past what a flush takes.
    let _ = QUEUE.try_with(|q| {
        if records.capacity() <= 2 * MAX_BYTES
            && let Ok(mut kept) = q.records.try_borrow_mut()
            && kept.is_empty()
        {
            *kept = records;
        }
        if cluster_records.capacity() <= 2 * MAX_BYTES
            && let Ok(mut kept) = q.cluster.try_borrow_mut()
            && kept.records.is_empty()
        {
            kept.records = cluster_records;
        }
    });
    refused.map_or(Ok(()), Err)
}

/// One `cluster.send-batch` of a run's records.
fn send_run(node: String, service: Service, records: &[u8]) -> Option<Refused> {
    let refused = sys::cluster::send_batch(&node, &service.clone().into_raw(), records).err()?;
    Some(Refused {
        to: Destination::Cluster { node, service },
        error: SendError::Cluster(refused.reason),
        count: refused.count as usize,
    })
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
                    to: Destination::Address(Address(dest)),
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
    use crate::fake::{Effect, host, sent, take_effects};

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
                to: Destination::Address(Address(7)),
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
        assert_eq!(
            flush().map_err(|r| (r.to, r.count)),
            Err((Destination::Address(Address(9)), 1))
        );
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

    fn batch(node: &str, name: &str, payloads: &[&[u8]]) -> Effect {
        Effect::ClusterBatch {
            node: node.to_string(),
            service: format!("{:?}", Service::from(name).into_raw()),
            payloads: payloads.iter().map(|p| p.to_vec()).collect(),
        }
    }

    #[test]
    fn cluster_sends_to_one_service_go_as_one_batch_and_another_target_flushes_them() {
        reset();
        assert_eq!(push_cluster("b", "sink".into(), b"1"), Ok(()));
        assert_eq!(push(Address(5), 0, 0, b"local"), Ok(()));
        assert_eq!(push_cluster("b", "sink".into(), b"2"), Ok(()));
        assert_eq!(len(), 3);
        assert!(take_effects().is_empty(), "nothing leaves before the flush");
        assert_eq!(push_cluster("c", "sink".into(), b"3"), Ok(()));
        assert_eq!(
            take_effects(),
            vec![sent(5, 0, 0, b"local"), batch("b", "sink", &[b"1", b"2"])],
            "another node's send flushed what was queued"
        );
        assert_eq!(push_cluster("c", "other".into(), b"4"), Ok(()));
        assert_eq!(take_effects(), vec![batch("c", "sink", &[b"3"])]);
        // A call flushes the run before it goes.
        let _call = crate::cluster::call_raw("c", "other", b"?", None);
        let effects = take_effects();
        assert_eq!(effects[0], batch("c", "other", &[b"4"]));
        assert!(
            matches!(&effects[1], Effect::Harbor { request, .. } if request.starts_with("cluster call c")),
            "{effects:?}"
        );
        for i in 0..MAX_QUEUED {
            assert_eq!(push_cluster("b", "sink".into(), &[i as u8]), Ok(()));
        }
        assert_eq!(len(), 0, "a full run flushes itself");
        assert!(
            matches!(&take_effects()[..], [Effect::ClusterBatch { payloads, .. }] if payloads.len() == MAX_QUEUED as usize)
        );
    }

    #[test]
    fn a_refused_cluster_run_is_reported_with_its_node_and_the_local_sends_still_go() {
        reset();
        assert_eq!(
            push_cluster(sys::cluster::DOWN, "sink".into(), b"1"),
            Ok(())
        );
        assert_eq!(
            push_cluster(sys::cluster::DOWN, "sink".into(), b"2"),
            Ok(())
        );
        assert_eq!(push(Address(5), 0, 0, b"local"), Ok(()));
        let refused = flush().expect_err("the node is down");
        assert_eq!(
            refused.to,
            Destination::Cluster {
                node: sys::cluster::DOWN.to_string(),
                service: "sink".into()
            }
        );
        assert_eq!(refused.count, 2);
        assert_eq!(
            refused.to_string(),
            "a queued send to `sink` on cluster node `down` was refused: cluster node `down` is offline (2 refused in this flush)"
        );
        assert_eq!(take_effects(), vec![sent(5, 0, 0, b"local")]);
        // A large payload goes on its own, and reports at once.
        let large = vec![1u8; DIRECT];
        assert!(push_cluster(sys::cluster::DOWN, "sink".into(), &large).is_err());
        assert_eq!(push_cluster("b", "sink".into(), b"small"), Ok(()));
        assert_eq!(push_cluster("b", "sink".into(), &large), Ok(()));
        assert_eq!(
            take_effects(),
            vec![
                batch("b", "sink", &[b"small"]),
                Effect::ClusterSend {
                    node: "b".into(),
                    service: format!("{:?}", Service::from("sink").into_raw()),
                    payload: large
                }
            ]
        );
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
