//! Length-prefixed framing: [`encode_frame`] and the incremental
//! [`FrameDecoder`].
//!
//! Each frame on the wire is a 4-byte little-endian length `N`, then `N`
//! bytes of postcard. A decoder rejects a length above its `max_frame` as
//! soon as the 4 length bytes are in, before the body arrives, so a peer
//! cannot make it buffer more than `max_frame` bytes of one frame.

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::frame::{Frame, FrameRef};

/// Size of the length prefix before each frame.
pub const LEN_PREFIX: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announces a frame larger than the decoder accepts.
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// Announced frame length.
        len: usize,
        /// The decoder's `max_frame`.
        max: usize,
    },
    /// Postcard could not decode (or encode) the frame body.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Postcard decoded a frame without using all of its body.
    #[error("frame of {len} bytes has {unused} trailing bytes after its body")]
    TrailingBytes {
        /// Frame length from the prefix.
        len: usize,
        /// Bytes left over after the decoded frame.
        unused: usize,
    },
}

/// Appends `frame`, length prefix included, to `out`.
///
/// The length is reserved first and backfilled once the body is written, so
/// the frame is serialized straight into `out`.
///
/// # Errors
/// [`CodecError::Malformed`] if postcard cannot serialize `C` or `H` (never
/// for the frames of this crate), and [`CodecError::TooLarge`] for a body of 4 GiB or
/// more; `out` is left as it was.
pub fn encode_frame<C: Serialize, H: Serialize>(
    frame: &Frame<C, H>,
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    encode_value(frame, out)
}

/// Appends a `Message` frame borrowing its payload (same bytes as
/// [`encode_frame`] of the equivalent [`Frame::Message`]).
pub(super) fn encode_message<H: Serialize>(
    envelope: &H,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    encode_value(&FrameRef::Message { envelope, payload }, out)
}

/// Appends a `ChunkStart` frame borrowing its part.
pub(super) fn encode_chunk_start<H: Serialize>(
    stream: u32,
    envelope: &H,
    total: u32,
    part: &[u8],
    out: &mut BytesMut,
) -> Result<(), CodecError> {
    encode_value(
        &FrameRef::ChunkStart {
            stream,
            envelope,
            total,
            part,
        },
        out,
    )
}

/// Appends a `Chunk` frame borrowing its part.
pub(super) fn encode_chunk(stream: u32, part: &[u8], out: &mut BytesMut) -> Result<(), CodecError> {
    // A `Chunk` carries no header: any `H` gives the same bytes.
    let frame: FrameRef<'_, ()> = FrameRef::Chunk { stream, part };
    encode_value(&frame, out)
}

/// Reads the length prefix of the frame at the front of `buf`, if complete.
pub(super) fn peek_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; LEN_PREFIX] = buf.get(..LEN_PREFIX)?.try_into().ok()?;
    Some(u32::from_le_bytes(prefix) as usize)
}

fn encode_value<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> Result<(), CodecError> {
    let start = out.len();
    out.put_u32_le(0);
    let written = postcard::serialize_with_flavor(value, BytesMutFlavor { out });
    let body = out.len() - start - LEN_PREFIX;
    let result = match written {
        Ok(()) => match u32::try_from(body) {
            Ok(len) => {
                out[start..start + LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
                return Ok(());
            }
            Err(_) => Err(CodecError::TooLarge {
                len: body,
                max: u32::MAX as usize,
            }),
        },
        Err(e) => Err(CodecError::Malformed(e.to_string())),
    };
    out.truncate(start);
    result
}

/// Postcard output flavor appending to a `BytesMut`.
struct BytesMutFlavor<'a> {
    out: &'a mut BytesMut,
}

impl postcard::ser_flavors::Flavor for BytesMutFlavor<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.out.extend_from_slice(data);
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.out.put_u8(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Incremental decoder: takes whole frames off the front of a read buffer.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder accepting frame bodies of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { max_frame }
    }

    /// The largest frame body this decoder accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Takes one complete frame off the front of `input`; `Ok(None)` when it
    /// holds less than a whole frame (nothing consumed; `input` may get
    /// capacity reserved for the rest of the frame).
    ///
    /// # Errors
    /// [`CodecError::TooLarge`] as soon as a length prefix above `max_frame`
    /// is in (nothing consumed); [`CodecError::Malformed`] or
    /// [`CodecError::TrailingBytes`] for a body postcard rejects (the frame
    /// is consumed). Either way the stream cannot be trusted any more.
    pub fn decode<C: DeserializeOwned, H: DeserializeOwned>(
        &mut self,
        input: &mut BytesMut,
    ) -> Result<Option<Frame<C, H>>, CodecError> {
        let Some(len) = peek_len(input) else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(CodecError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let end = LEN_PREFIX + len;
        if input.len() < end {
            input.reserve(end - input.len());
            return Ok(None);
        }
        let decoded = postcard::take_from_bytes::<Frame<C, H>>(&input[LEN_PREFIX..end]);
        let result = match decoded {
            Ok((frame, [])) => Ok(Some(frame)),
            Ok((_, rest)) => Err(CodecError::TrailingBytes {
                len,
                unused: rest.len(),
            }),
            Err(e) => Err(CodecError::Malformed(e.to_string())),
        };
        input.advance(end);
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::super::frame::Envelope;
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A stand-in for a layer's control protocol.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
    pub(crate) enum TestControl {
        Register { name: String, address: u32 },
        Query(String),
        Bye,
    }

    pub(crate) fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            any::<u32>(),
            (any::<u64>(), any::<u64>(), any::<u32>()),
        )
            .prop_map(
                |(dest, source, session, kind, tenant, (trace, seq, batched))| Envelope {
                    dest,
                    source,
                    session,
                    kind,
                    tenant,
                    trace,
                    seq,
                    batched,
                },
            )
    }

    fn arb_control() -> impl Strategy<Value = TestControl> {
        prop_oneof![
            (".{0,20}", any::<u32>())
                .prop_map(|(name, address)| TestControl::Register { name, address }),
            ".{0,20}".prop_map(TestControl::Query),
            Just(TestControl::Bye),
        ]
    }

    pub(crate) fn arb_frame() -> impl Strategy<Value = Frame<TestControl>> {
        let bytes = || vec(any::<u8>(), 0..300);
        prop_oneof![
            (any::<u16>(), ".{0,16}", ".{0,16}", any::<[u8; 32]>()).prop_map(
                |(version, protocol, name, nonce)| Frame::Hello {
                    version,
                    protocol,
                    name,
                    nonce
                }
            ),
            (any::<u16>(), ".{0,16}", any::<[u8; 32]>()).prop_map(|(version, name, nonce)| {
                Frame::Challenge {
                    version,
                    name,
                    nonce,
                }
            }),
            any::<[u8; 32]>().prop_map(|mac| Frame::Proof { mac }),
            any::<[u8; 32]>().prop_map(|mac| Frame::Welcome { mac }),
            ".{0,40}".prop_map(|reason| Frame::Refused { reason }),
            (arb_envelope(), bytes())
                .prop_map(|(envelope, payload)| Frame::Message { envelope, payload }),
            (any::<u32>(), arb_envelope(), any::<u32>(), bytes()).prop_map(
                |(stream, envelope, total, part)| Frame::ChunkStart {
                    stream,
                    envelope,
                    total,
                    part
                }
            ),
            (any::<u32>(), bytes()).prop_map(|(stream, part)| Frame::Chunk { stream, part }),
            arb_control().prop_map(Frame::Control),
            any::<u64>().prop_map(Frame::Ping),
            any::<u64>().prop_map(Frame::Pong),
        ]
    }

    const MAX: usize = 4096;

    fn encode_all(frames: &[Frame<TestControl>]) -> BytesMut {
        let mut buf = BytesMut::new();
        for f in frames {
            encode_frame(f, &mut buf).unwrap();
        }
        buf
    }

    /// Decodes until the decoder wants more bytes or fails; never panics.
    fn drain(
        dec: &mut FrameDecoder,
        buf: &mut BytesMut,
        out: &mut Vec<Frame<TestControl>>,
    ) -> Result<(), CodecError> {
        while let Some(f) = dec.decode(buf)? {
            out.push(f);
        }
        Ok(())
    }

    proptest! {
        /// Round trip: decoding the encoding of any frame gives the frame
        /// back and consumes exactly its bytes.
        #[test]
        fn round_trip(frame in arb_frame()) {
            let mut buf = encode_all(std::slice::from_ref(&frame));
            let mut dec = FrameDecoder::new(MAX);
            prop_assert_eq!(dec.decode::<TestControl, Envelope>(&mut buf).unwrap(), Some(frame));
            prop_assert!(buf.is_empty());
        }

        /// Any split: cutting the encoding of several frames into arbitrary
        /// pieces and feeding them one after another yields the same frames,
        /// in order, and a piece never yields a frame before its last byte.
        #[test]
        fn any_split_gives_same_frames(
            frames in vec(arb_frame(), 1..8),
            cuts in vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let all = encode_all(&frames);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(all.len() + 1)).collect();
            cuts.push(all.len());
            cuts.sort_unstable();
            let mut dec = FrameDecoder::new(MAX);
            let mut input = BytesMut::new();
            let mut got = Vec::new();
            let mut prev = 0;
            for cut in cuts {
                input.extend_from_slice(&all[prev..cut]);
                prev = cut;
                drain(&mut dec, &mut input, &mut got).unwrap();
            }
            prop_assert!(input.is_empty());
            prop_assert_eq!(got, frames);
        }

        /// Garbage: arbitrary bytes never panic the decoder; they give frames,
        /// a request for more bytes, or an error.
        #[test]
        fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..2000), max in 0usize..5000) {
            let mut dec = FrameDecoder::new(max);
            let mut input = BytesMut::from(&bytes[..]);
            let mut got = Vec::new();
            let _ = drain(&mut dec, &mut input, &mut got);
        }

        /// Mutation: valid encodings with random bytes overwritten never
        /// panic the decoder; they give frames, a request for more bytes, or
        /// an error.
        #[test]
        fn mutated_encodings_never_panic(
            frames in vec(arb_frame(), 1..6),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..10),
        ) {
            let mut all = encode_all(&frames);
            for (at, byte) in edits {
                let i = at.index(all.len());
                all[i] = byte;
            }
            let mut dec = FrameDecoder::new(MAX);
            let mut got = Vec::new();
            let _ = drain(&mut dec, &mut all, &mut got);
        }
    }

    #[test]
    fn too_large_is_reported_from_the_prefix_alone() {
        let mut dec = FrameDecoder::new(100);
        let mut input = BytesMut::from(&101u32.to_le_bytes()[..]);
        assert_eq!(
            dec.decode::<TestControl, Envelope>(&mut input),
            Err(CodecError::TooLarge { len: 101, max: 100 })
        );
        assert_eq!(input.len(), 4, "nothing consumed");
    }

    #[test]
    fn partial_frame_consumes_nothing() {
        let mut all = encode_all(&[Frame::Ping(5)]);
        let mut input = all.split_to(all.len() - 1);
        let before = input.clone();
        assert_eq!(
            FrameDecoder::new(MAX).decode::<TestControl, Envelope>(&mut input),
            Ok(None)
        );
        assert_eq!(input, before);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut buf = BytesMut::new();
        let body = postcard::to_stdvec(&Frame::<TestControl>::Ping(1)).unwrap();
        buf.put_u32_le(body.len() as u32 + 2);
        buf.extend_from_slice(&body);
        buf.extend_from_slice(&[0, 0]);
        let err = FrameDecoder::new(MAX)
            .decode::<TestControl, Envelope>(&mut buf)
            .unwrap_err();
        assert_eq!(
            err,
            CodecError::TrailingBytes {
                len: body.len() + 2,
                unused: 2
            }
        );
        assert!(err.to_string().contains("2 trailing bytes"), "{err}");
    }

    #[test]
    fn empty_and_unknown_variant_bodies_are_malformed() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(
            FrameDecoder::new(MAX).decode::<TestControl, Envelope>(&mut buf),
            Err(CodecError::Malformed(_))
        ));
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 42][..]);
        assert!(matches!(
            FrameDecoder::new(MAX).decode::<TestControl, Envelope>(&mut buf),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn borrowed_encoders_match_encode_frame() {
        let envelope = Envelope {
            dest: 1,
            source: 2,
            session: 3,
            kind: 4,
            tenant: 5,
            trace: 6,
            seq: 0,
            batched: 0,
        };
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        encode_message(&envelope, b"hi", &mut a).unwrap();
        encode_frame(
            &Frame::<()>::Message {
                envelope,
                payload: b"hi".to_vec(),
            },
            &mut b,
        )
        .unwrap();
        encode_chunk_start(7, &envelope, 9, b"abc", &mut a).unwrap();
        encode_frame(
            &Frame::<()>::ChunkStart {
                stream: 7,
                envelope,
                total: 9,
                part: b"abc".to_vec(),
            },
            &mut b,
        )
        .unwrap();
        encode_chunk(7, b"def", &mut a).unwrap();
        encode_frame(
            &Frame::<()>::Chunk {
                stream: 7,
                part: b"def".to_vec(),
            },
            &mut b,
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn encode_appends_after_existing_bytes() {
        let mut buf = BytesMut::from(&b"xyz"[..]);
        encode_frame(&Frame::<TestControl>::Pong(9), &mut buf).unwrap();
        assert_eq!(&buf[..3], b"xyz");
        let mut rest = buf.split_off(3);
        assert_eq!(
            FrameDecoder::new(MAX)
                .decode::<TestControl, Envelope>(&mut rest)
                .unwrap(),
            Some(Frame::Pong(9))
        );
    }
}
