//! The records of a `send-batch` buffer (`wit/service.wit`): a pure reader,
//! apart from the import that delivers what it reads.
//!
//! A guest queues its sends in one buffer and hands it over in one host call:
//! records back to back, each a 16-byte header (little-endian `u32` dest,
//! `u8` kind, `u8` flags (0), `u16` reserved (0), `u32` session, `u32`
//! payload length) and then the payload. The import walks the buffer twice:
//! once to check that every record lies inside it (a malformed buffer sends
//! nothing and traps the service: it is a bug in its SDK), then to deliver.

use std::ops::Range;

/// Bytes in a record's header.
pub(crate) const HEADER: usize = 16;

/// One message of a `send-batch` buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The address it goes to.
    pub dest: u32,
    /// Its kind.
    pub kind: u8,
    /// Its session (0: no reply wanted).
    pub session: u32,
    /// Where its payload lies in the buffer.
    pub payload: Range<usize>,
}

/// A record that does not fit in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("send-batch: record {index} runs past the end of its {len}-byte buffer")]
pub(crate) struct Truncated {
    /// Its index (0-based).
    pub index: usize,
    /// The buffer's length.
    pub len: usize,
}

/// The records of `batch`, in order; a truncated one ends the walk.
pub(crate) fn records(batch: &[u8]) -> Records<'_> {
    Records {
        batch,
        at: 0,
        index: 0,
    }
}

/// Checks that every record of `batch` lies inside it; the number of records.
pub(crate) fn check(batch: &[u8]) -> Result<usize, Truncated> {
    records(batch).try_fold(0, |n, record| record.map(|_| n + 1))
}

/// An iterator over a buffer's records (see [`records`]).
pub(crate) struct Records<'a> {
    batch: &'a [u8],
    at: usize,
    index: usize,
}

impl Iterator for Records<'_> {
    type Item = Result<Record, Truncated>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.batch.len() {
            return None;
        }
        let truncated = Truncated {
            index: self.index,
            len: self.batch.len(),
        };
        let start = self.at + HEADER;
        let record = self.batch.get(self.at..start).and_then(|header| {
            let word = |i: usize| {
                u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
            };
            let end = start
                .checked_add(usize::try_from(word(12)).ok()?)
                .filter(|&end| end <= self.batch.len())?;
            Some(Record {
                dest: word(0),
                kind: header[4],
                session: word(8),
                payload: start..end,
            })
        });
        match record {
            Some(record) => {
                self.at = record.payload.end;
                self.index += 1;
                Some(Ok(record))
            }
            None => {
                self.at = self.batch.len();
                Some(Err(truncated))
            }
        }
    }
}

/// Appends one record to `batch` (the SDKs' side, for tests).
#[cfg(test)]
pub(crate) fn push(batch: &mut Vec<u8>, dest: u32, kind: u8, session: u32, payload: &[u8]) {
    batch.extend_from_slice(&dest.to_le_bytes());
    batch.extend_from_slice(&[kind, 0, 0, 0]);
    batch.extend_from_slice(&session.to_le_bytes());
    batch.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    batch.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn records_come_back_in_order_with_their_payloads() {
        let mut batch = Vec::new();
        push(&mut batch, 7, 0, 0, b"one");
        push(&mut batch, 8, 16, 9, b"");
        push(&mut batch, 9, 200, 0, b"three");
        let read: Vec<_> = records(&batch)
            .map(|r| r.expect("a whole record"))
            .collect();
        assert_eq!(read.len(), 3);
        assert_eq!(
            (read[0].dest, read[0].kind, &batch[read[0].payload.clone()]),
            (7, 0, &b"one"[..])
        );
        assert_eq!((read[1].dest, read[1].kind, read[1].session), (8, 16, 9));
        assert!(read[1].payload.is_empty());
        assert_eq!(&batch[read[2].payload.clone()], b"three");
        assert_eq!(check(&batch), Ok(3));
        assert_eq!(check(&[]), Ok(0));
    }

    #[test]
    fn a_record_past_the_end_is_named() {
        let mut batch = Vec::new();
        push(&mut batch, 7, 0, 0, b"one");
        let whole = batch.len();
        push(&mut batch, 8, 0, 0, b"two");
        // A payload cut short, then a header cut short.
        assert_eq!(
            check(&batch[..batch.len() - 1]),
            Err(Truncated {
                index: 1,
                len: batch.len() - 1
            })
        );
        assert_eq!(
            check(&batch[..whole + 3]),
            Err(Truncated {
                index: 1,
                len: whole + 3
            })
        );
        // A length that would overflow the offset.
        let mut huge = Vec::new();
        push(&mut huge, 1, 0, 0, b"");
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(check(&huge), Err(Truncated { index: 0, len: 16 }));
    }

    proptest! {
        #[test]
        fn any_buffer_reads_without_panic_and_stays_inside(batch in proptest::collection::vec(any::<u8>(), 0..256)) {
            for record in records(&batch) {
                match record {
                    Ok(r) => prop_assert!(r.payload.end <= batch.len()),
                    Err(t) => prop_assert_eq!(t.len, batch.len()),
                }
            }
        }

        #[test]
        fn what_is_pushed_is_read(messages in proptest::collection::vec((any::<u32>(), any::<u8>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..20)) {
            let mut batch = Vec::new();
            for (dest, kind, session, payload) in &messages {
                push(&mut batch, *dest, *kind, *session, payload);
            }
            let read: Vec<_> = records(&batch).collect::<Result<_, _>>().expect("whole records");
            prop_assert_eq!(read.len(), messages.len());
            for (r, (dest, kind, session, payload)) in read.iter().zip(&messages) {
                prop_assert_eq!((r.dest, r.kind, r.session), (*dest, *kind, *session));
                prop_assert_eq!(&batch[r.payload.clone()], &payload[..]);
            }
        }
    }
}
