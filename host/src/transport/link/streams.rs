//! Large payloads on a link: cut into `ChunkStart` + `Chunk` frames at
//! transmit time, one chunk per large message per round between the small
//! frames, and reassembled on the way in (at most [`MAX_STREAMS`] each way).

use std::fmt;

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Link, LinkError, LinkEvent, MAX_PREALLOC, MAX_STREAMS};
use crate::transport::codec::{self, CodecError, LEN_PREFIX};

/// A large payload being sent, chunk by chunk.
pub(super) struct Outgoing<H> {
    pub(super) stream: u32,
    pub(super) envelope: H,
    pub(super) total: u32,
    pub(super) payload: Vec<u8>,
    pub(super) sent: usize,
    /// Whether the `ChunkStart` went out (it may carry no payload bytes).
    pub(super) started: bool,
}

/// A large payload being reassembled.
pub(super) struct Incoming<H> {
    pub(super) envelope: H,
    pub(super) total: usize,
    pub(super) buf: Vec<u8>,
}

impl<C, H> Link<C, H>
where
    C: Serialize + DeserializeOwned,
    H: Serialize + DeserializeOwned + Clone + fmt::Debug,
{
    pub(super) fn chunk_start(
        &mut self,
        stream: u32,
        envelope: H,
        total: u32,
        part: Vec<u8>,
    ) -> Result<(), LinkError> {
        let total = total as usize;
        let max = self.config.max_payload;
        if total > max {
            return Err(LinkError::Chunk(format!(
                "stream {stream} announces {total} bytes, more than max_payload of {max} bytes"
            )));
        }
        if self.incoming.contains_key(&stream) {
            return Err(LinkError::Chunk(format!(
                "stream {stream} started while already open"
            )));
        }
        if part.len() > total {
            return Err(LinkError::Chunk(format!(
                "stream {stream} starts with {} bytes, more than its total of {total} bytes",
                part.len()
            )));
        }
        if part.len() == total {
            self.events.push_back(LinkEvent::Message {
                envelope,
                payload: part,
            });
            return Ok(());
        }
        if self.incoming.len() >= MAX_STREAMS {
            return Err(LinkError::Chunk(format!(
                "stream {stream} opened while {MAX_STREAMS} streams are open"
            )));
        }
        let mut buf = part;
        buf.reserve_exact(total.min(MAX_PREALLOC).saturating_sub(buf.len()));
        self.incoming.insert(
            stream,
            Incoming {
                envelope,
                total,
                buf,
            },
        );
        Ok(())
    }

    pub(super) fn chunk(&mut self, stream: u32, part: Vec<u8>) -> Result<(), LinkError> {
        let Some(incoming) = self.incoming.get_mut(&stream) else {
            return Err(LinkError::Chunk(format!(
                "chunk for unknown stream {stream}"
            )));
        };
        let have = incoming.buf.len() + part.len();
        if have > incoming.total {
            return Err(LinkError::Chunk(format!(
                "stream {stream} got {have} bytes, more than its total of {} bytes",
                incoming.total
            )));
        }
        incoming.buf.extend_from_slice(&part);
        if have == incoming.total
            && let Some(done) = self.incoming.remove(&stream)
        {
            self.events.push_back(LinkEvent::Message {
                envelope: done.envelope,
                payload: done.buf,
            });
        }
        Ok(())
    }

    /// Moves whole small frames to `out` until it reaches `limit`.
    pub(super) fn take_small(&mut self, out: &mut BytesMut, limit: usize) {
        let room = limit.saturating_sub(out.len());
        if self.small.len() <= room {
            if out.is_empty() {
                // Hand over the whole queue without copying.
                std::mem::swap(out, &mut self.small);
            } else {
                out.extend_from_slice(&self.small);
                self.small.clear();
            }
            return;
        }
        // Find the first frame boundary at or past `room`.
        let mut cut = 0;
        while cut < room {
            match codec::peek_len(&self.small[cut..]) {
                Some(len) => cut += LEN_PREFIX + len,
                None => break,
            }
        }
        let cut = cut.min(self.small.len());
        out.extend_from_slice(&self.small[..cut]);
        self.small.advance(cut);
    }

    /// Writes one chunk of each large payload in progress, round robin,
    /// until `out` reaches `limit`.
    pub(super) fn chunk_round(&mut self, out: &mut BytesMut, limit: usize) {
        for _ in 0..self.active.len() {
            if out.len() >= limit {
                return;
            }
            let Some(mut o) = self.active.pop_front() else {
                return;
            };
            let written = if !o.started {
                encode_start(&o, self.chunk_size, self.config.max_frame, out)
            } else {
                let end = (o.sent + self.chunk_size).min(o.payload.len());
                codec::encode_chunk(o.stream, &o.payload[o.sent..end], out).map(|()| end)
            };
            let end = match written {
                Ok(end) => end,
                Err(e) => {
                    tracing::error!(
                        stream = o.stream,
                        envelope = ?o.envelope,
                        "large message dropped: cannot encode chunk: {e}"
                    );
                    self.large_bytes -= o.payload.len() - o.sent;
                    self.promote();
                    continue;
                }
            };
            self.large_bytes -= end - o.sent;
            o.sent = end;
            o.started = true;
            if o.sent < o.payload.len() {
                self.active.push_back(o);
            } else {
                self.promote();
            }
        }
    }

    /// Moves waiting large payloads into the round robin while there is room.
    pub(super) fn promote(&mut self) {
        while self.active.len() < MAX_STREAMS {
            match self.waiting.pop_front() {
                Some(o) => self.active.push_back(o),
                None => break,
            }
        }
    }
}

/// Appends the `ChunkStart` of `o` with the first `chunk_size` bytes of its
/// payload, or fewer when its header leaves less room in `max_frame`; returns
/// how many payload bytes it carries.
///
/// # Errors
/// [`CodecError::TooLarge`] if even an empty part does not fit (the header
/// alone is too large), or an encoding error; `out` is left as it was.
pub(super) fn encode_start<H: Serialize>(
    o: &Outgoing<H>,
    chunk_size: usize,
    max_frame: usize,
    out: &mut BytesMut,
) -> Result<usize, CodecError> {
    let start = out.len();
    let mut len = chunk_size.min(o.payload.len());
    codec::encode_chunk_start(o.stream, &o.envelope, o.total, &o.payload[..len], out)?;
    let frame = out.len() - start - LEN_PREFIX;
    if frame <= max_frame {
        return Ok(len);
    }
    // A part shorter by the excess shrinks the frame at least as much.
    out.truncate(start);
    len -= (frame - max_frame).min(len);
    codec::encode_chunk_start(o.stream, &o.envelope, o.total, &o.payload[..len], out)?;
    let frame = out.len() - start - LEN_PREFIX;
    if frame > max_frame {
        out.truncate(start);
        return Err(CodecError::TooLarge {
            len: frame,
            max: max_frame,
        });
    }
    Ok(len)
}
