//! The buffer the host hands `dispatch-batch` (WIT world `batch-service`):
//! a count, one 32-byte header per message, then the payloads. Each
//! message is read in place; see `wit/service.wit` for the layout.

/// Bytes before the first header.
const PREFIX_LEN: usize = 8;
/// Bytes per header.
const HEADER_LEN: usize = 32;

/// One message of a batch, its payload still in the batch's buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Delivered<'a> {
    pub kind: u8,
    pub source: u32,
    pub session: u32,
    pub payload: &'a [u8],
}

/// The messages in `batch`, in order. A header or payload outside the
/// buffer ends the walk (the host never writes one).
pub(crate) fn messages(batch: &[u8]) -> impl Iterator<Item = Delivered<'_>> {
    let count = batch.get(..4).map_or(0, |b| u32_at(b, 0)) as usize;
    (0..count).map_while(move |i| {
        let at = PREFIX_LEN + i * HEADER_LEN;
        let header = batch.get(at..at + HEADER_LEN)?;
        let (offset, len) = (u32_at(header, 12) as usize, u32_at(header, 16) as usize);
        Some(Delivered {
            kind: header[0],
            source: u32_at(header, 4),
            session: u32_at(header, 8),
            payload: batch.get(offset..offset.checked_add(len)?)?,
        })
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// A batch as the host lays it out (for tests of what reads it).
#[cfg(test)]
pub(crate) fn encode(messages: &[(u8, u32, u32, Vec<u8>)]) -> Vec<u8> {
    let mut buffer = Vec::new();
    buffer.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&[0; 4]);
    let mut offset = PREFIX_LEN + messages.len() * HEADER_LEN;
    for (kind, source, session, payload) in messages {
        let mut header = [0u8; HEADER_LEN];
        header[0] = *kind;
        header[4..8].copy_from_slice(&source.to_le_bytes());
        header[8..12].copy_from_slice(&session.to_le_bytes());
        header[12..16].copy_from_slice(&(offset as u32).to_le_bytes());
        header[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        buffer.extend_from_slice(&header);
        offset += payload.len();
    }
    for (_, _, _, payload) in messages {
        buffer.extend_from_slice(payload);
    }
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_host_writes() {
        let sent = vec![
            (10u8, 0x0201u32, 7u32, b"first".to_vec()),
            (0, 0x0301, 0, Vec::new()),
            (1, 0x0401, 9, b"third".to_vec()),
        ];
        let batch = encode(&sent);
        let read: Vec<_> = messages(&batch)
            .map(|m| (m.kind, m.source, m.session, m.payload.to_vec()))
            .collect();
        assert_eq!(read, sent);
    }

    #[test]
    fn a_truncated_buffer_ends_the_walk_without_a_panic() {
        let batch = encode(&[(10, 1, 1, b"payload".to_vec()), (10, 1, 2, b"x".to_vec())]);
        // The second payload is cut off.
        let cut = &batch[..batch.len() - 1];
        assert_eq!(messages(cut).count(), 1);
        // Headers cut off.
        assert_eq!(messages(&batch[..PREFIX_LEN + 10]).count(), 0);
        assert_eq!(messages(&[]).count(), 0);
        assert_eq!(messages(&[5, 0, 0]).count(), 0);
    }
}
