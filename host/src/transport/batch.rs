//! The records of a batch: several payloads for one service on another
//! node, in one buffer, carried as one message between nodes. A pure codec.
//!
//! ```text
//! cluster: guest ── cluster.send-batch(node, service, records) ──▶ one Job
//!          ──▶ one Header::Pushes frame (one number, one name, one buffer)
//! harbor:  a run of one-way sends to one address (send-batch) ──▶ one
//!          Envelope with `batched: n` (one number, one buffer)
//!    ──▶ the peer: one lookup, each record a view of the buffer, into the
//!        mailbox as one run (Kernel::deliver_run)
//! ```
//!
//! The layout, the same in the WIT import and on the wire: records back to
//! back, each a little-endian `u32` payload length and then the payload. A
//! record that runs past the end is a bug in whoever built the buffer: the
//! import traps the guest, a receiving node drops the frame.

use std::ops::Range;

/// Bytes before each payload.
pub(crate) const HEADER: usize = 4;

/// A record that does not fit in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch: record {index} runs past the end of its {len}-byte buffer")]
pub(crate) struct Truncated {
    /// Its index (0-based).
    pub index: usize,
    /// The buffer's length.
    pub len: usize,
}

/// Where each payload of `batch` lies, in order; a truncated record ends
/// the walk.
pub(crate) fn payloads(batch: &[u8]) -> Payloads<'_> {
    Payloads {
        batch,
        at: 0,
        index: 0,
    }
}

/// Checks that every record of `batch` lies inside it; the number of records.
pub(crate) fn check(batch: &[u8]) -> Result<u32, Truncated> {
    payloads(batch).try_fold(0, |n, record| record.map(|_| n + 1))
}

/// Each payload of `batch` as a view of it (no copy), in order.
///
/// # Errors
/// The first record that runs past the end.
pub(crate) fn views(batch: &bytes::Bytes) -> Result<Vec<bytes::Bytes>, Truncated> {
    payloads(batch).map(|r| r.map(|r| batch.slice(r))).collect()
}

/// Appends one record to `batch`.
pub(crate) fn push(batch: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    batch.extend_from_slice(&len.to_le_bytes());
    batch.extend_from_slice(payload);
}

/// `batch` (checked) less the records whose payload `fits` refuses, and
/// how many those were. The buffer itself when it refuses none.
pub(crate) fn keep_fitting(batch: Vec<u8>, fits: impl Fn(&[u8]) -> bool) -> (Vec<u8>, u32) {
    let refused = payloads(&batch)
        .flatten()
        .filter(|r| !fits(&batch[r.clone()]))
        .count();
    if refused == 0 {
        return (batch, 0);
    }
    let mut kept = Vec::with_capacity(batch.len());
    for r in payloads(&batch).flatten() {
        if fits(&batch[r.clone()]) {
            push(&mut kept, &batch[r]);
        }
    }
    (kept, u32::try_from(refused).unwrap_or(u32::MAX))
}

/// An iterator over a buffer's payloads (see [`payloads`]).
pub(crate) struct Payloads<'a> {
    batch: &'a [u8],
    at: usize,
    index: usize,
}

impl Iterator for Payloads<'_> {
    type Item = Result<Range<usize>, Truncated>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.batch.len() {
            return None;
        }
        let start = self.at + HEADER;
        let payload = self.batch.get(self.at..start).and_then(|len| {
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
            let end = start
                .checked_add(usize::try_from(len).ok()?)
                .filter(|&end| end <= self.batch.len())?;
            Some(start..end)
        });
        match payload {
            Some(payload) => {
                self.at = payload.end;
                self.index += 1;
                Some(Ok(payload))
            }
            None => {
                let truncated = Truncated {
                    index: self.index,
                    len: self.batch.len(),
                };
                self.at = self.batch.len();
                Some(Err(truncated))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn payloads_come_back_in_order() {
        let mut batch = Vec::new();
        push(&mut batch, b"one");
        push(&mut batch, b"");
        push(&mut batch, b"three");
        let read: Vec<_> = payloads(&batch)
            .map(|r| batch[r.expect("a whole record")].to_vec())
            .collect();
        assert_eq!(read, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert_eq!(check(&batch), Ok(3));
        assert_eq!(check(&[]), Ok(0));
    }

    #[test]
    fn a_record_past_the_end_is_named() {
        let mut batch = Vec::new();
        push(&mut batch, b"one");
        let whole = batch.len();
        push(&mut batch, b"two");
        let cut = batch.len() - 1;
        assert_eq!(check(&batch[..cut]), Err(Truncated { index: 1, len: cut }));
        assert_eq!(
            check(&batch[..whole + 2]),
            Err(Truncated {
                index: 1,
                len: whole + 2
            })
        );
        let huge = u32::MAX.to_le_bytes();
        assert_eq!(check(&huge), Err(Truncated { index: 0, len: 4 }));
    }

    #[test]
    fn what_does_not_fit_is_taken_out_and_counted() {
        let mut batch = Vec::new();
        for p in [&b"a"[..], b"long one", b"bb", b"longer one"] {
            push(&mut batch, p);
        }
        let (kept, refused) = keep_fitting(batch.clone(), |p| p.len() < 4);
        assert_eq!(refused, 2);
        let read: Vec<_> = payloads(&kept).flatten().map(|r| &kept[r]).collect();
        assert_eq!(read, vec![&b"a"[..], b"bb"]);
        assert_eq!(keep_fitting(batch.clone(), |_| true), (batch, 0));
    }

    proptest! {
        #[test]
        fn any_buffer_reads_without_panic_and_stays_inside(batch in proptest::collection::vec(any::<u8>(), 0..256)) {
            for record in payloads(&batch) {
                match record {
                    Ok(r) => prop_assert!(r.end <= batch.len()),
                    Err(t) => prop_assert_eq!(t.len, batch.len()),
                }
            }
        }

        #[test]
        fn what_is_pushed_is_read(messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20)) {
            let mut batch = Vec::new();
            for payload in &messages {
                push(&mut batch, payload);
            }
            let read: Vec<_> = payloads(&batch).collect::<Result<_, _>>().expect("whole records");
            prop_assert_eq!(read.len(), messages.len());
            for (r, payload) in read.iter().zip(&messages) {
                prop_assert_eq!(&batch[r.clone()], &payload[..]);
            }
        }
    }
}
