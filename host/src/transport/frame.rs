//! Wire types of the node-to-node transport: [`Frame`] and [`Envelope`],
//! its default message header.
//!
//! A frame is serialized with postcard; enum variants are encoded by their
//! index, so **the order of [`Frame`]'s variants is part of the wire
//! protocol**: append new variants at the end and bump
//! [`PROTOCOL_VERSION`] when changing an existing one.

use serde::{Deserialize, Serialize};

/// Version of the wire protocol, exchanged in the handshake; both ends must
/// speak the same one.
pub const PROTOCOL_VERSION: u16 = 8;

/// Header of one service message between nodes: harbor's, and the default
/// `H` of [`Frame`] and [`super::Link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Envelope {
    /// Address of the service the message is for.
    pub dest: u32,
    /// Address of the service that sent it.
    pub source: u32,
    /// Session the message belongs to (0: no reply expected).
    pub session: u32,
    /// Message kind (request, response, error, ...), defined by the layer above.
    pub kind: u8,
    /// Tenant the message is accounted to.
    pub tenant: u32,
    /// Trace id of the logical request it belongs to (0: none).
    pub trace: u64,
    /// Its number among the one-way messages its sender's link session has
    /// sent (0: not numbered): the receiver delivers each number once, and
    /// the sender sends again, on the next connection, what was not
    /// acknowledged (harbor's `peer` module).
    pub seq: u64,
    /// 0: the payload is the message. `n`: it holds the records of `n`
    /// one-way messages ([`batch`](super::batch)), each with this envelope's
    /// addresses, session, kind, tenant and trace; numbered as one.
    pub batched: u32,
}

/// One frame on the wire; `C` is the layer's own control protocol and `H`
/// the header of its service messages (harbor, cluster), both opaque here.
///
/// The handshake frames (`Hello` to `Welcome`) are described in
/// [`super::handshake`]; the data frames are only valid once the link is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame<C, H = Envelope> {
    /// Client to server: opens the handshake.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u16,
        /// The layer protocol the client wants to speak (e.g. `"skyhost-harbor"`).
        protocol: String,
        /// The client's node name.
        name: String,
        /// The client's fresh random nonce.
        nonce: [u8; 32],
    },
    /// Server to client: answers `Hello` with the server's own nonce.
    Challenge {
        /// The server's [`PROTOCOL_VERSION`].
        version: u16,
        /// The server's node name.
        name: String,
        /// The server's fresh random nonce.
        nonce: [u8; 32],
    },
    /// Client to server: proves the client knows the shared secret.
    Proof {
        /// HMAC-SHA256 over the handshake transcript, client label.
        mac: [u8; 32],
    },
    /// Server to client: proves the server knows the shared secret; the link is up.
    Welcome {
        /// HMAC-SHA256 over the handshake transcript, server label.
        mac: [u8; 32],
    },
    /// Either way: the sender gives up on the link and closes it.
    Refused {
        /// Why, for the peer's logs.
        reason: String,
    },
    /// A whole service message.
    Message {
        /// Message header.
        envelope: H,
        /// Message body.
        #[serde(with = "byte_vec")]
        payload: Vec<u8>,
    },
    /// First chunk of a payload too large for one frame.
    ChunkStart {
        /// Stream id, fresh among the sender's open streams.
        stream: u32,
        /// Header of the reassembled message.
        envelope: H,
        /// Length of the whole payload.
        total: u32,
        /// The first bytes of the payload.
        #[serde(with = "byte_vec")]
        part: Vec<u8>,
    },
    /// Next chunk of a stream; the stream ends once `total` bytes arrived.
    Chunk {
        /// Stream id from the `ChunkStart`.
        stream: u32,
        /// The next bytes of the payload.
        #[serde(with = "byte_vec")]
        part: Vec<u8>,
    },
    /// A frame of the layer's own control protocol.
    Control(C),
    /// Heartbeat; the peer answers with a `Pong` carrying the same value.
    Ping(u64),
    /// Answer to a `Ping`.
    Pong(u64),
}

impl<C, H> Frame<C, H> {
    /// The variant's name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Challenge { .. } => "Challenge",
            Frame::Proof { .. } => "Proof",
            Frame::Welcome { .. } => "Welcome",
            Frame::Refused { .. } => "Refused",
            Frame::Message { .. } => "Message",
            Frame::ChunkStart { .. } => "ChunkStart",
            Frame::Chunk { .. } => "Chunk",
            Frame::Control(_) => "Control",
            Frame::Ping(_) => "Ping",
            Frame::Pong(_) => "Pong",
        }
    }
}

/// Borrowing twin of the data variants of [`Frame`], so that a payload can be
/// encoded without first being moved or copied into a `Frame`.
///
/// Variant indices must match [`Frame`]'s (the placeholders stand for the
/// handshake variants); a test checks that both encode alike.
#[derive(Serialize)]
pub(super) enum FrameRef<'a, H = Envelope> {
    /// Stands for `Frame::Hello`.
    _Hello,
    /// Stands for `Frame::Challenge`.
    _Challenge,
    /// Stands for `Frame::Proof`.
    _Proof,
    /// Stands for `Frame::Welcome`.
    _Welcome,
    /// Stands for `Frame::Refused`.
    _Refused,
    /// Same wire form as `Frame::Message`.
    Message {
        envelope: &'a H,
        #[serde(with = "byte_vec")]
        payload: &'a [u8],
    },
    /// Same wire form as `Frame::ChunkStart`.
    ChunkStart {
        stream: u32,
        envelope: &'a H,
        total: u32,
        #[serde(with = "byte_vec")]
        part: &'a [u8],
    },
    /// Same wire form as `Frame::Chunk`.
    Chunk {
        stream: u32,
        #[serde(with = "byte_vec")]
        part: &'a [u8],
    },
}

/// Serializes byte vectors as one byte string rather than a sequence of
/// `u8`s: the same postcard bytes (length, then the bytes), much faster.
mod byte_vec {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;
    use std::fmt;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(ByteVecVisitor)
    }

    struct ByteVecVisitor;

    impl<'de> Visitor<'de> for ByteVecVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Never trust a length hint from the input for preallocation.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            dest: 0x0100_000a,
            source: 7,
            session: 300,
            kind: 2,
            tenant: u32::MAX,
            trace: u64::MAX,
            seq: u64::MAX,
            batched: 0,
        }
    }

    /// `FrameRef` encodes exactly like the `Frame` it stands for.
    #[test]
    fn frame_ref_matches_frame() {
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let e = env();
        let pairs: Vec<(Frame<()>, FrameRef<'_>)> = vec![
            (
                Frame::Message {
                    envelope: env(),
                    payload: payload.clone(),
                },
                FrameRef::Message {
                    envelope: &e,
                    payload: &payload,
                },
            ),
            (
                Frame::ChunkStart {
                    stream: 9,
                    envelope: env(),
                    total: 100_000,
                    part: payload.clone(),
                },
                FrameRef::ChunkStart {
                    stream: 9,
                    envelope: &e,
                    total: 100_000,
                    part: &payload,
                },
            ),
            (
                Frame::Chunk {
                    stream: u32::MAX,
                    part: vec![],
                },
                FrameRef::Chunk {
                    stream: u32::MAX,
                    part: &[],
                },
            ),
        ];
        for (frame, by_ref) in pairs {
            assert_eq!(
                postcard::to_stdvec(&frame).unwrap(),
                postcard::to_stdvec(&by_ref).unwrap(),
                "{}",
                frame.kind()
            );
        }
    }

    /// A byte vector has the same wire form as serde's default sequence of `u8`.
    #[test]
    fn byte_vec_is_a_plain_sequence_on_the_wire() {
        #[derive(Serialize)]
        struct Plain(Vec<u8>);
        let v: Vec<u8> = (0..200u8).collect();
        let ours = postcard::to_stdvec(&Frame::<()>::Chunk {
            stream: 1,
            part: v.clone(),
        })
        .unwrap();
        let plain = postcard::to_stdvec(&(7u8, 1u32, Plain(v))).unwrap();
        assert_eq!(ours, plain);
    }
}
