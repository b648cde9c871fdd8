//! The buffer `dispatch-batch` takes (WIT world `batch-service`): a whole
//! batch laid out once, so the host lowers it with one `cabi_realloc` and
//! one copy, and a guest reads a payload in place.
//!
//! ```text
//! offset 0   u32 count, u32 reserved
//! offset 8   count headers of HEADER_LEN bytes: u8 kind, u8 flags, u16 reserved,
//!            u32 source, u32 session, u32 payload offset, u32 payload length,
//!            u32 reserved, u64 trace
//! then       the payloads, back to back, in header order
//! ```
//! Little-endian throughout; the layout is documented for guests in
//! `wit/service.wit` and `docs/languages.md`.

use crate::runtime::Message;

/// Bytes before the first header.
pub(crate) const PREFIX_LEN: usize = 8;
/// Bytes per header.
pub(crate) const HEADER_LEN: usize = 32;

/// A batch too large for one buffer a 32-bit guest can address.
#[derive(Debug, thiserror::Error)]
#[error("a batch of {messages} messages and {bytes} bytes does not fit a 32-bit buffer")]
pub(crate) struct TooLarge {
    messages: usize,
    bytes: usize,
}

/// Lays `messages` out in `buffer` (cleared first; its capacity is kept
/// from batch to batch).
pub(crate) fn encode(messages: &[Message], buffer: &mut Vec<u8>) -> Result<(), TooLarge> {
    let headers_end = PREFIX_LEN + messages.len() * HEADER_LEN;
    let bytes = headers_end + messages.iter().map(|m| m.payload.len()).sum::<usize>();
    let too_large = || TooLarge {
        messages: messages.len(),
        bytes,
    };
    let count = u32::try_from(messages.len()).map_err(|_| too_large())?;
    if u32::try_from(bytes).is_err() {
        return Err(too_large());
    }
    buffer.clear();
    buffer.reserve(bytes);
    buffer.extend_from_slice(&count.to_le_bytes());
    buffer.extend_from_slice(&0u32.to_le_bytes());
    // Offsets fit in u32: the whole buffer does (checked above).
    let mut offset = headers_end as u32;
    for m in messages {
        let len = m.payload.len() as u32;
        let mut header = [0u8; HEADER_LEN];
        header[0] = m.kind;
        header[4..8].copy_from_slice(&m.source.0.to_le_bytes());
        header[8..12].copy_from_slice(&m.session.to_le_bytes());
        header[12..16].copy_from_slice(&offset.to_le_bytes());
        header[16..20].copy_from_slice(&len.to_le_bytes());
        header[24..32].copy_from_slice(&m.trace.to_le_bytes());
        buffer.extend_from_slice(&header);
        offset += len;
    }
    for m in messages {
        buffer.extend_from_slice(&m.payload);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Address, TenantId};

    fn message(kind: u8, source: u32, session: u32, payload: &[u8], trace: u64) -> Message {
        Message {
            kind,
            source: Address(source),
            session,
            tenant: TenantId::HOST,
            payload: bytes::Bytes::copy_from_slice(payload),
            trace,
        }
    }

    fn u32_at(buffer: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(buffer[at..at + 4].try_into().expect("4 bytes"))
    }

    #[test]
    fn headers_point_at_their_payloads_in_order() {
        let messages = [
            message(10, 0x0101, 7, b"first", 0),
            message(0, 0x0201, 0, b"", 0),
            message(1, 0x0301, 9, b"third one", 0xdead_beef_0000_0001),
        ];
        let mut buffer = vec![0xff; 3];
        encode(&messages, &mut buffer).expect("fits");
        assert_eq!(u32_at(&buffer, 0), 3);
        assert_eq!(u32_at(&buffer, 4), 0);
        let mut payload_end = PREFIX_LEN + 3 * HEADER_LEN;
        for (i, m) in messages.iter().enumerate() {
            let h = PREFIX_LEN + i * HEADER_LEN;
            assert_eq!(buffer[h], m.kind);
            assert_eq!(&buffer[h + 1..h + 4], &[0, 0, 0]);
            assert_eq!(u32_at(&buffer, h + 4), m.source.0);
            assert_eq!(u32_at(&buffer, h + 8), m.session);
            let (offset, len) = (
                u32_at(&buffer, h + 12) as usize,
                u32_at(&buffer, h + 16) as usize,
            );
            assert_eq!(offset, payload_end, "payloads are back to back");
            assert_eq!(&buffer[offset..offset + len], &m.payload[..]);
            assert_eq!(u32_at(&buffer, h + 20), 0);
            let trace = u64::from_le_bytes(buffer[h + 24..h + 32].try_into().expect("8 bytes"));
            assert_eq!(trace, m.trace);
            payload_end = offset + len;
        }
        assert_eq!(payload_end, buffer.len());
    }

    #[test]
    fn an_empty_batch_is_its_prefix() {
        let mut buffer = Vec::new();
        encode(&[], &mut buffer).expect("fits");
        assert_eq!(buffer, [0; PREFIX_LEN]);
    }
}
