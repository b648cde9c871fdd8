//! The link state machine [`Link`]: one node-to-node connection, without
//! the connection.
//!
//! A `Link` owns no socket and reads no clock (the quinn-proto model): the
//! driver feeds it the bytes it read and the current time, and takes back
//! the bytes to write, the events, and the next instant to wake it.
//!
//! ```text
//!   driver ── handle_bytes(now, &mut read_buf) ──>┌──────┐── poll_event() ──> Up, Message, Control
//!   driver ── handle_timeout(now) ───────────────>│ Link │
//!   driver <─ poll_transmit(now, &mut out, limit) ─┤      │<── send_message / send_control
//!   driver <─ poll_timeout() ──────────────────────└──────┘
//! ```
//!
//! Inside: the [`super::handshake`] first; then small frames (whole messages,
//! controls, pings, pongs) are encoded at once into one queue of bytes,
//! while payloads above `chunk_size` are cut into `ChunkStart` + `Chunk`
//! frames at transmit time, one chunk per large message per round, so that a
//! large payload never holds back the small frames queued after it by more
//! than one chunk per large stream. At most [`MAX_STREAMS`] large payloads
//! are in progress at once; the others wait their turn, in order.
//!
//! Any error is final: the link is dead, every later call says
//! [`LinkError::Closed`], and [`Link::poll_transmit`] still yields the
//! `Refused` frame telling the peer why (if there is one): write it, then
//! close the socket.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{self, CodecError, FrameDecoder, LEN_PREFIX};
use super::frame::{Envelope, Frame};
use super::handshake::{Handshake, HandshakeError};

/// Most large payloads in progress at once on one link, each way: the sender
/// interleaves at most this many, and a receiver refuses more open streams.
/// Reassembly memory is thus bounded by `MAX_STREAMS * max_payload`.
pub const MAX_STREAMS: usize = 8;

/// Upper bound of a data frame's bytes besides its payload part (variant,
/// stream, an [`Envelope`]-sized header, total, part length); `chunk_size`
/// is kept this far below `max_frame`. A message whose larger header would
/// push its frame over `max_frame` is sent chunked, with a shorter first
/// part (see `encode_start`).
const FRAME_OVERHEAD: usize = 64;

/// Largest buffer preallocated for reassembly on the strength of a peer's
/// `total`; beyond it the buffer grows as bytes actually arrive.
const MAX_PREALLOC: usize = 1 << 20;

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Dialed the connection; speaks first (`Hello`).
    Client,
    /// Accepted the connection; answers.
    Server,
}

/// Settings of one link; both ends should agree on all of them.
#[derive(Clone)]
pub struct LinkConfig {
    /// Layer protocol, e.g. `"skyhost-harbor"`; both ends must agree.
    pub protocol: String,
    /// This end's node name.
    pub name: String,
    /// Shared secret, proven in the handshake and never sent.
    pub secret: Arc<[u8]>,
    /// Payloads larger than this are split into chunks; default 64 KiB.
    pub chunk_size: usize,
    /// Largest frame body accepted; default `chunk_size` + 4 KiB (handshake
    /// and control frames must fit).
    pub max_frame: usize,
    /// Largest reassembled payload accepted; default 64 MiB.
    pub max_payload: usize,
    /// Send a `Ping` after this long without sending anything; default 1 s.
    pub heartbeat: Duration,
    /// Nothing received for this long means the peer is gone; default 5 s.
    pub dead_after: Duration,
}

impl LinkConfig {
    /// Default `chunk_size`: 64 KiB.
    pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;
    /// Room above `chunk_size` in the default `max_frame`: 4 KiB.
    pub const FRAME_HEADROOM: usize = 4 * 1024;
    /// Default `max_payload`: 64 MiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024 * 1024;
    /// Default `heartbeat`: 1 s.
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
    /// Default `dead_after`: 5 s.
    pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(5);

    /// A config with the default sizes and timers.
    pub fn new(protocol: impl Into<String>, name: impl Into<String>, secret: Arc<[u8]>) -> Self {
        LinkConfig {
            protocol: protocol.into(),
            name: name.into(),
            secret,
            chunk_size: Self::DEFAULT_CHUNK_SIZE,
            max_frame: Self::DEFAULT_CHUNK_SIZE + Self::FRAME_HEADROOM,
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
            heartbeat: Self::DEFAULT_HEARTBEAT,
            dead_after: Self::DEFAULT_DEAD_AFTER,
        }
    }
}

impl fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("protocol", &self.protocol)
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("chunk_size", &self.chunk_size)
            .field("max_frame", &self.max_frame)
            .field("max_payload", &self.max_payload)
            .field("heartbeat", &self.heartbeat)
            .field("dead_after", &self.dead_after)
            .finish()
    }
}

/// Who is at the other end, as proven by the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node name.
    pub name: String,
    /// The peer's wire protocol version.
    pub version: u16,
}

/// What the link has for the layer above; `C` and `H` as in [`Link`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent<C, H = Envelope> {
    /// The handshake is done; data flows.
    Up(PeerInfo),
    /// A service message, whole or reassembled from chunks.
    Message {
        /// Message header.
        envelope: H,
        /// Message body.
        payload: Vec<u8>,
    },
    /// A frame of the layer's control protocol.
    Control(C),
}

/// Why a link ended; every error is final.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer's bytes are not valid frames.
    #[error("bad frame from peer: {0}")]
    Codec(#[from] CodecError),
    /// The peer does not know the secret; we refused it.
    #[error("peer {peer} failed the handshake: wrong secret")]
    WrongSecret {
        /// Name the peer claimed.
        peer: String,
    },
    /// The server's `Welcome` proof is wrong.
    #[error("peer {peer} failed to prove the shared secret")]
    PeerFailedProof {
        /// Name the peer claimed.
        peer: String,
    },
    /// The peer refused us.
    #[error("peer refused the link: {reason}")]
    Refused {
        /// The reason the peer gave.
        reason: String,
    },
    /// The peer speaks another wire protocol version.
    #[error("peer {peer} speaks protocol version {version}, expected {expected}")]
    Version {
        /// Name the peer claimed.
        peer: String,
        /// The peer's version.
        version: u16,
        /// Ours.
        expected: u16,
    },
    /// The peer wants another layer protocol.
    #[error("peer {peer} speaks protocol {protocol:?}, expected {expected:?}")]
    Protocol {
        /// Name the peer claimed.
        peer: String,
        /// The peer's protocol.
        protocol: String,
        /// Ours.
        expected: String,
    },
    /// A frame that has no place in the link's state.
    #[error("unexpected {frame} frame while {state}")]
    Unexpected {
        /// Where the link was (`"awaiting Proof"`, `"up"`, ...).
        state: &'static str,
        /// The frame's variant.
        frame: &'static str,
    },
    /// The peer broke the chunking rules (unknown stream, bytes past
    /// `total`, `total` over `max_payload`, a reused open stream id).
    #[error("bad chunk from peer: {0}")]
    Chunk(String),
    /// Nothing received for this long (or no handshake within `dead_after`).
    #[error("no bytes received from the peer for {after:?}")]
    PeerSilent {
        /// How long the peer was silent.
        after: Duration,
    },
    /// The link is closed (an earlier error ended it, or the driver saw EOF).
    #[error("link closed")]
    Closed,
}

impl From<HandshakeError> for LinkError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Version {
                peer,
                version,
                expected,
            } => LinkError::Version {
                peer,
                version,
                expected,
            },
            HandshakeError::Protocol {
                peer,
                protocol,
                expected,
            } => LinkError::Protocol {
                peer,
                protocol,
                expected,
            },
            HandshakeError::WrongSecret { peer } => LinkError::WrongSecret { peer },
            HandshakeError::PeerFailedProof { peer } => LinkError::PeerFailedProof { peer },
            HandshakeError::Refused { reason } => LinkError::Refused { reason },
            HandshakeError::Unexpected { state, frame } => LinkError::Unexpected { state, frame },
        }
    }
}

impl LinkError {
    /// The reason sent to the peer in a `Refused` frame when this error ends
    /// the link, or `None` when nothing is said (the peer refused us, or the
    /// link was already closed).
    pub fn refusal(&self) -> Option<String> {
        match self {
            LinkError::WrongSecret { .. } => Some("wrong secret".to_owned()),
            LinkError::PeerFailedProof { .. } => {
                Some("server failed to prove the shared secret".to_owned())
            }
            LinkError::Version {
                version, expected, ..
            } => Some(format!("protocol version {version}, expected {expected}")),
            LinkError::Protocol {
                protocol, expected, ..
            } => Some(format!("protocol {protocol:?}, expected {expected:?}")),
            LinkError::Codec(_)
            | LinkError::Unexpected { .. }
            | LinkError::Chunk(_)
            | LinkError::PeerSilent { .. } => Some(self.to_string()),
            LinkError::Refused { .. } | LinkError::Closed => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking,
    Up,
    Dead,
}

/// A large payload being sent, chunk by chunk.
struct Outgoing<H> {
    stream: u32,
    envelope: H,
    total: u32,
    payload: Vec<u8>,
    sent: usize,
    /// Whether the `ChunkStart` went out (it may carry no payload bytes).
    started: bool,
}

/// A large payload being reassembled.
struct Incoming<H> {
    envelope: H,
    total: usize,
    buf: Vec<u8>,
}

/// One node-to-node link: handshake, framing, chunking and heartbeat, with
/// no I/O (see the module doc).
///
/// `C` is the layer's control protocol, `H` the header of its service
/// messages ([`Envelope`] for harbor); both travel as postcard.
pub struct Link<C, H = Envelope> {
    role: Role,
    config: LinkConfig,
    /// `config.chunk_size`, kept within 1 ..= `max_frame - FRAME_OVERHEAD`.
    chunk_size: usize,
    decoder: FrameDecoder,
    handshake: Handshake,
    state: State,
    peer: Option<PeerInfo>,
    /// Handshake frames and the final `Refused`: written first, even before Up.
    urgent: BytesMut,
    /// Encoded small frames (messages, controls, pings, pongs), in order;
    /// written only once Up.
    small: BytesMut,
    /// Large payloads in progress (at most `MAX_STREAMS`), round robin.
    active: VecDeque<Outgoing<H>>,
    /// Large payloads waiting for a place in `active`, in order.
    waiting: VecDeque<Outgoing<H>>,
    /// Unsent payload bytes in `active` and `waiting`.
    large_bytes: usize,
    next_stream: u32,
    incoming: HashMap<u32, Incoming<H>>,
    events: VecDeque<LinkEvent<C, H>>,
    started: Instant,
    last_sent: Instant,
    last_recv: Instant,
    next_ping: u64,
    pongs: u64,
    /// The last Ping queued: its number and when.
    ping_sent: Option<(u64, Instant)>,
    /// The round trip of the last answered Ping.
    rtt: Option<std::time::Duration>,
    /// Frames decoded since the link was made.
    frames_in: u64,
}

impl<C, H> fmt::Debug for Link<C, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("role", &self.role)
            .field("name", &self.config.name)
            .field("state", &self.state_name())
            .field("peer", &self.peer)
            .field("queued_bytes", &(self.small.len() + self.large_bytes))
            .field("open_streams_in", &self.incoming.len())
            .finish_non_exhaustive()
    }
}

impl<C, H> Link<C, H> {
    fn state_name(&self) -> &'static str {
        match self.state {
            State::Handshaking => self.handshake.state(),
            State::Up => "up",
            State::Dead => "closed",
        }
    }
}

impl<C, H> Link<C, H>
where
    C: Serialize + DeserializeOwned,
    H: Serialize + DeserializeOwned + Clone + fmt::Debug,
{
    /// A link at the start of its handshake; a client queues its `Hello` at
    /// once. `nonce` must be fresh and random (the driver draws it).
    pub fn new(role: Role, config: LinkConfig, now: Instant, nonce: [u8; 32]) -> Self {
        let max_chunk = config.max_frame.saturating_sub(FRAME_OVERHEAD).max(1);
        let chunk_size = config.chunk_size.clamp(1, max_chunk);
        if chunk_size != config.chunk_size {
            tracing::warn!(
                chunk_size = config.chunk_size,
                max_frame = config.max_frame,
                "chunk_size does not fit in max_frame; using {chunk_size}"
            );
        }
        let mut handshake = Handshake::new(
            role,
            config.protocol.clone(),
            config.name.clone(),
            Arc::clone(&config.secret),
            nonce,
        );
        let mut urgent = BytesMut::new();
        if let Some(hello) = handshake.start::<C, H>() {
            encode_or_log(&hello, &mut urgent);
        }
        Link {
            role,
            chunk_size,
            decoder: FrameDecoder::new(config.max_frame),
            handshake,
            config,
            state: State::Handshaking,
            peer: None,
            urgent,
            small: BytesMut::new(),
            active: VecDeque::new(),
            waiting: VecDeque::new(),
            large_bytes: 0,
            next_stream: 0,
            incoming: HashMap::new(),
            events: VecDeque::new(),
            started: now,
            last_sent: now,
            last_recv: now,
            next_ping: 0,
            pongs: 0,
            ping_sent: None,
            rtt: None,
            frames_in: 0,
        }
    }

    /// The round trip of the last heartbeat answered (heartbeats go only
    /// on a link that was quiet for a heartbeat interval).
    pub fn rtt(&self) -> Option<std::time::Duration> {
        self.rtt
    }

    /// Frames received since the link was made.
    pub fn frames_in(&self) -> u64 {
        self.frames_in
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the handshake is done and the link not dead.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Whether an error ended the link (only a final `Refused` may remain to write).
    pub fn is_closed(&self) -> bool {
        self.state == State::Dead
    }

    /// The peer, once the handshake proved it.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// Consumes every complete frame in `input` (leaves a partial frame in
    /// it), advancing the handshake, answering Pings with Pongs, reassembling
    /// chunks, and queueing events. Any error is final: the link is dead, and
    /// poll_transmit still yields what must be said before closing (a
    /// Refused frame).
    ///
    /// Call it after each read: any bytes in `input` count as a sign of life.
    /// Events queued before an error can still be polled.
    ///
    /// # Errors
    /// The [`LinkError`] that ended the link; [`LinkError::Closed`] if it was
    /// already dead.
    pub fn handle_bytes(&mut self, now: Instant, input: &mut BytesMut) -> Result<(), LinkError> {
        if self.state == State::Dead {
            return Err(LinkError::Closed);
        }
        if !input.is_empty() {
            self.last_recv = now;
        }
        loop {
            let frame = match self.decoder.decode::<C, H>(input) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(e.into())),
            };
            self.frames_in += 1;
            if let Frame::Pong(n) = &frame
                && let Some((sent, at)) = self.ping_sent
                && sent == *n
            {
                self.rtt = Some(now.saturating_duration_since(at));
                self.ping_sent = None;
            }
            if let Err(e) = self.on_frame(frame) {
                return Err(self.fail(e));
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<LinkEvent<C, H>> {
        self.events.pop_front()
    }

    /// Queue a service message. Allowed before Up: queued data is only
    /// transmitted after the handshake completes. Payloads > chunk_size
    /// become ChunkStart + Chunks with a fresh stream id; so does a smaller
    /// one whose header is too large for the whole message to fit in
    /// `max_frame`.
    ///
    /// A payload above `max_payload` (which the peer would refuse) is
    /// dropped with an error log; so is anything sent on a dead link.
    pub fn send_message(&mut self, envelope: H, payload: Vec<u8>) {
        if self.state == State::Dead {
            tracing::debug!(?envelope, "message dropped: link closed");
            return;
        }
        if payload.len() <= self.chunk_size {
            let start = self.small.len();
            match codec::encode_message(&envelope, &payload, &mut self.small) {
                Ok(()) if self.small.len() - start <= LEN_PREFIX + self.config.max_frame => return,
                // Too large for one frame (a large header): chunk it below.
                Ok(()) => self.small.truncate(start),
                Err(e) => {
                    tracing::error!(?envelope, "cannot encode message: {e}");
                    return;
                }
            }
        }
        let total = match u32::try_from(payload.len()) {
            Ok(total) if payload.len() <= self.config.max_payload => total,
            _ => {
                tracing::error!(
                    ?envelope,
                    len = payload.len(),
                    max_payload = self.config.max_payload,
                    "message dropped: payload larger than max_payload"
                );
                return;
            }
        };
        let stream = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1);
        self.large_bytes += payload.len();
        self.waiting.push_back(Outgoing {
            stream,
            envelope,
            total,
            payload,
            sent: 0,
            started: false,
        });
        self.promote();
    }

    /// Queue a control frame; same ordering rules as small messages.
    ///
    /// A control frame whose encoding exceeds `max_frame` (which the peer
    /// would refuse) is dropped with an error log.
    pub fn send_control(&mut self, control: C) {
        if self.state == State::Dead {
            tracing::debug!("control frame dropped: link closed");
            return;
        }
        let start = self.small.len();
        encode_or_log(&Frame::<C, H>::Control(control), &mut self.small);
        let len = self.small.len() - start;
        if len > LEN_PREFIX + self.config.max_frame {
            self.small.truncate(start);
            tracing::error!(
                len,
                max_frame = self.config.max_frame,
                "control frame dropped: larger than max_frame"
            );
        }
    }

    /// Appends bytes to write to `out`, stopping once `out.len() >= limit`
    /// (at a frame boundary). Order: handshake frames first; then ALL queued
    /// small frames (messages ≤ chunk_size, controls, pings/pongs) in queue
    /// order; then ONE chunk from each large message in progress, round
    /// robin; repeat while under limit. So a 16 MiB payload never holds back
    /// small messages queued after it by more than one chunk per large
    /// stream. Small frames keep their relative order; the chunks of one
    /// payload go in order.
    ///
    /// After an error, only the final `Refused` frame (if any) comes out.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut BytesMut, limit: usize) {
        let before = out.len();
        if !self.urgent.is_empty() && out.len() < limit {
            out.extend_from_slice(&self.urgent);
            self.urgent.clear();
        }
        if self.state == State::Up {
            while out.len() < limit {
                if !self.small.is_empty() {
                    self.take_small(out, limit);
                    continue;
                }
                if self.active.is_empty() {
                    break;
                }
                self.chunk_round(out, limit);
            }
        }
        if out.len() > before {
            self.last_sent = now;
        }
    }

    /// Whether something is waiting to be written (data only once Up).
    pub fn has_transmit(&self) -> bool {
        !self.urgent.is_empty()
            || (self.state == State::Up && (!self.small.is_empty() || !self.active.is_empty()))
    }

    /// Next instant handle_timeout must be called: heartbeat due or silence
    /// deadline. `None` once the link is dead.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Dead => None,
            State::Handshaking => Some(self.started + self.config.dead_after),
            State::Up => {
                let dead = self.last_recv + self.config.dead_after;
                if self.has_transmit() {
                    // Writing is pending anyway; a ping would add nothing.
                    Some(dead)
                } else {
                    Some(dead.min(self.last_sent + self.config.heartbeat))
                }
            }
        }
    }

    /// Queues a Ping when nothing was sent for `heartbeat`; fails with
    /// PeerSilent when nothing was received for `dead_after`. Also a
    /// handshake not done within dead_after fails (with `PeerSilent`).
    ///
    /// # Errors
    /// [`LinkError::PeerSilent`], final; [`LinkError::Closed`] if the link
    /// was already dead.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LinkError> {
        match self.state {
            State::Dead => Err(LinkError::Closed),
            State::Handshaking => {
                let after = now.saturating_duration_since(self.started);
                if after >= self.config.dead_after {
                    Err(self.fail(LinkError::PeerSilent { after }))
                } else {
                    Ok(())
                }
            }
            State::Up => {
                let after = now.saturating_duration_since(self.last_recv);
                if after >= self.config.dead_after {
                    return Err(self.fail(LinkError::PeerSilent { after }));
                }
                if now.saturating_duration_since(self.last_sent) >= self.config.heartbeat
                    && !self.has_transmit()
                {
                    let ping = Frame::<C, H>::Ping(self.next_ping);
                    self.ping_sent = Some((self.next_ping, now));
                    self.next_ping = self.next_ping.wrapping_add(1);
                    encode_or_log(&ping, &mut self.small);
                }
                Ok(())
            }
        }
    }

    /// Ends the link on purpose (shutdown, or the layer above refusing the
    /// peer): if it is up, the small frames already queued (messages ≤
    /// chunk_size, controls) still go out, then `Refused { reason }`; large
    /// payloads not fully sent are dropped. Afterwards the link is dead:
    /// write what [`poll_transmit`](Self::poll_transmit) yields, then close
    /// the socket. Does nothing on a dead link.
    pub fn close(&mut self, reason: impl Into<String>) {
        if self.state == State::Dead {
            return;
        }
        if self.state == State::Up {
            let small = std::mem::take(&mut self.small);
            self.urgent.extend_from_slice(&small);
        }
        let reason = reason.into();
        tracing::debug!(role = ?self.role, state = self.state_name(), "link closed: {reason}");
        encode_or_log(&Frame::<C, H>::Refused { reason }, &mut self.urgent);
        self.drop_all();
    }

    /// Bytes waiting to be written once Up (for stats and bounds): encoded
    /// small frames plus the unsent part of large payloads.
    pub fn queued_bytes(&self) -> usize {
        self.small.len() + self.large_bytes
    }

    /// Handles one frame; an error here is made final by the caller.
    fn on_frame(&mut self, frame: Frame<C, H>) -> Result<(), LinkError> {
        match self.state {
            State::Dead => Err(LinkError::Closed),
            State::Handshaking => {
                let step = self.handshake.handle(frame)?;
                if let Some(reply) = step.reply {
                    encode_or_log(&reply, &mut self.urgent);
                }
                if let Some(peer) = step.done {
                    tracing::debug!(peer = %peer.name, role = ?self.role, "link up");
                    self.state = State::Up;
                    self.peer = Some(peer.clone());
                    self.events.push_back(LinkEvent::Up(peer));
                }
                Ok(())
            }
            State::Up => match frame {
                Frame::Message { envelope, payload } => {
                    self.events
                        .push_back(LinkEvent::Message { envelope, payload });
                    Ok(())
                }
                Frame::ChunkStart {
                    stream,
                    envelope,
                    total,
                    part,
                } => self.chunk_start(stream, envelope, total, part),
                Frame::Chunk { stream, part } => self.chunk(stream, part),
                Frame::Control(control) => {
                    self.events.push_back(LinkEvent::Control(control));
                    Ok(())
                }
                Frame::Ping(n) => {
                    encode_or_log(&Frame::<C, H>::Pong(n), &mut self.small);
                    Ok(())
                }
                Frame::Pong(_) => {
                    self.pongs += 1;
                    Ok(())
                }
                Frame::Refused { reason } => Err(LinkError::Refused { reason }),
                other => Err(LinkError::Unexpected {
                    state: "up",
                    frame: other.kind(),
                }),
            },
        }
    }

    fn chunk_start(
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

    fn chunk(&mut self, stream: u32, part: Vec<u8>) -> Result<(), LinkError> {
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
    fn take_small(&mut self, out: &mut BytesMut, limit: usize) {
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
    fn chunk_round(&mut self, out: &mut BytesMut, limit: usize) {
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
    fn promote(&mut self) {
        while self.active.len() < MAX_STREAMS {
            match self.waiting.pop_front() {
                Some(o) => self.active.push_back(o),
                None => break,
            }
        }
    }

    /// Ends the link with `err`: queues the `Refused` frame telling the peer
    /// why, drops all queued data, and hands `err` back.
    fn fail(&mut self, err: LinkError) -> LinkError {
        tracing::debug!(role = ?self.role, state = self.state_name(), "link failed: {err}");
        if let Some(reason) = err.refusal() {
            encode_or_log(&Frame::<C, H>::Refused { reason }, &mut self.urgent);
        }
        self.drop_all();
        err
    }

    /// Marks the link dead and frees everything queued but `urgent`.
    fn drop_all(&mut self) {
        self.state = State::Dead;
        self.small = BytesMut::new();
        self.active.clear();
        self.waiting.clear();
        self.large_bytes = 0;
        self.incoming.clear();
    }
}

/// Appends the `ChunkStart` of `o` with the first `chunk_size` bytes of its
/// payload, or fewer when its header leaves less room in `max_frame`; returns
/// how many payload bytes it carries.
///
/// # Errors
/// [`CodecError::TooLarge`] if even an empty part does not fit (the header
/// alone is too large), or an encoding error; `out` is left as it was.
fn encode_start<H: Serialize>(
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

/// Encodes one of our own frames; postcard into a `BytesMut` cannot really
/// fail, so a failure is logged and the frame dropped.
fn encode_or_log<C: Serialize, H: Serialize>(frame: &Frame<C, H>, out: &mut BytesMut) {
    if let Err(e) = codec::encode_frame(frame, out) {
        tracing::error!(frame = frame.kind(), "cannot encode frame, dropped: {e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::codec::tests::TestControl;
    use super::super::frame::PROTOCOL_VERSION;
    use super::*;
    use proptest::prelude::*;

    type TestLink = Link<TestControl>;

    const MAX_STEPS: usize = 10_000;

    fn config(name: &str, secret: &[u8]) -> LinkConfig {
        LinkConfig::new("skyhost-harbor", name, Arc::from(secret))
    }

    fn env(session: u32) -> Envelope {
        Envelope {
            dest: 0x0200_0001,
            source: 0x0100_0002,
            session,
            kind: 1,
            tenant: 3,
            trace: 0,
        }
    }

    /// Two links joined in memory; a side that fails stops reading but its
    /// last words (`Refused`) still reach the other side.
    struct Pair<H = Envelope> {
        client: Link<TestControl, H>,
        server: Link<TestControl, H>,
        now: Instant,
        /// Bytes per `poll_transmit`.
        limit: usize,
        client_events: Vec<LinkEvent<TestControl, H>>,
        server_events: Vec<LinkEvent<TestControl, H>>,
        client_err: Option<LinkError>,
        server_err: Option<LinkError>,
        /// Lose everything the server writes.
        drop_server_output: bool,
    }

    impl Pair {
        fn new(client: LinkConfig, server: LinkConfig) -> Self {
            Pair::with_header(client, server)
        }

        fn connected() -> Self {
            Pair::connected_with_header(config("alpha", b"sesame"), config("beta", b"sesame"))
        }
    }

    impl<H> Pair<H>
    where
        H: Serialize + DeserializeOwned + Clone + fmt::Debug,
    {
        /// Like `new`, with message header `H`.
        fn with_header(client: LinkConfig, server: LinkConfig) -> Self {
            let now = Instant::now();
            Pair {
                client: Link::new(Role::Client, client, now, [1; 32]),
                server: Link::new(Role::Server, server, now, [2; 32]),
                now,
                limit: 256 * 1024,
                client_events: Vec::new(),
                server_events: Vec::new(),
                client_err: None,
                server_err: None,
                drop_server_output: false,
            }
        }

        /// Like `connected`, with message header `H` and these configs.
        fn connected_with_header(client: LinkConfig, server: LinkConfig) -> Self {
            let mut pair = Pair::with_header(client, server);
            pair.drive();
            assert!(
                pair.client.is_up() && pair.server.is_up(),
                "handshake did not complete"
            );
            pair.client_events.clear();
            pair.server_events.clear();
            pair
        }

        /// One `poll_transmit` each way; whether any bytes moved.
        fn step(&mut self) -> bool {
            let mut moved = false;
            let mut buf = BytesMut::new();
            self.client.poll_transmit(self.now, &mut buf, self.limit);
            if !buf.is_empty() {
                moved = true;
                if self.server_err.is_none()
                    && let Err(e) = self.server.handle_bytes(self.now, &mut buf)
                {
                    self.server_err = Some(e);
                }
            }
            let mut buf = BytesMut::new();
            self.server.poll_transmit(self.now, &mut buf, self.limit);
            if !buf.is_empty() {
                moved = true;
                if self.client_err.is_none()
                    && !self.drop_server_output
                    && let Err(e) = self.client.handle_bytes(self.now, &mut buf)
                {
                    self.client_err = Some(e);
                }
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
            }
            moved
        }

        /// Steps until no bytes move.
        fn drive(&mut self) {
            for _ in 0..MAX_STEPS {
                if !self.step() {
                    return;
                }
            }
            panic!("links still busy after {MAX_STEPS} steps");
        }

        /// Jumps virtual time to the earlier `poll_timeout` and fires it.
        fn advance(&mut self) {
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { return };
            self.now = self.now.max(next);
            if self.client_err.is_none()
                && let Err(e) = self.client.handle_timeout(self.now)
            {
                self.client_err = Some(e);
            }
            if self.server_err.is_none()
                && let Err(e) = self.server.handle_timeout(self.now)
            {
                self.server_err = Some(e);
            }
        }
    }

    fn encode(frames: &[Frame<TestControl>]) -> BytesMut {
        let mut buf = BytesMut::new();
        for f in frames {
            codec::encode_frame(f, &mut buf).unwrap();
        }
        buf
    }

    fn decode_all(mut buf: BytesMut) -> Vec<Frame<TestControl>> {
        let mut dec = FrameDecoder::new(usize::MAX);
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        assert!(buf.is_empty());
        out
    }

    fn transmit(link: &mut TestLink, now: Instant) -> Vec<Frame<TestControl>> {
        let mut buf = BytesMut::new();
        link.poll_transmit(now, &mut buf, usize::MAX);
        decode_all(buf)
    }

    #[test]
    fn handshake_brings_both_up() {
        let mut pair = Pair::new(config("alpha", b"sesame"), config("beta", b"sesame"));
        pair.drive();
        let up = |name: &str| {
            LinkEvent::Up(PeerInfo {
                name: name.into(),
                version: PROTOCOL_VERSION,
            })
        };
        assert_eq!(pair.client_events, vec![up("beta")]);
        assert_eq!(pair.server_events, vec![up("alpha")]);
        assert_eq!(pair.client.peer().unwrap().name, "beta");
        assert_eq!(pair.server.peer().unwrap().name, "alpha");
        assert_eq!((pair.client_err, pair.server_err), (None, None));
    }

    #[test]
    fn wrong_secret_is_refused_both_ways() {
        let mut pair = Pair::new(config("alpha", b"sesame"), config("beta", b"open"));
        pair.drive();
        let server_err = pair.server_err.clone().unwrap();
        assert_eq!(
            server_err,
            LinkError::WrongSecret {
                peer: "alpha".into()
            }
        );
        assert_eq!(
            server_err.to_string(),
            "peer alpha failed the handshake: wrong secret"
        );
        assert_eq!(
            pair.client_err,
            Some(LinkError::Refused {
                reason: "wrong secret".into()
            })
        );
        assert!(!pair.client.is_up() && !pair.server.is_up());
        assert!(pair.server.is_closed() && pair.client.is_closed());
        assert!(pair.client_events.is_empty() && pair.server_events.is_empty());
    }

    #[test]
    fn version_mismatch_is_refused_naming_both() {
        let now = Instant::now();
        let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
        let hello = Frame::Hello {
            version: 9,
            protocol: "skyhost-harbor".into(),
            name: "alpha".into(),
            nonce: [0; 32],
        };
        let err = server.handle_bytes(now, &mut encode(&[hello])).unwrap_err();
        assert_eq!(
            err,
            LinkError::Version {
                peer: "alpha".into(),
                version: 9,
                expected: PROTOCOL_VERSION
            }
        );
        assert_eq!(
            err.to_string(),
            format!("peer alpha speaks protocol version 9, expected {PROTOCOL_VERSION}")
        );
        assert_eq!(
            transmit(&mut server, now),
            vec![Frame::Refused {
                reason: format!("protocol version 9, expected {PROTOCOL_VERSION}")
            }]
        );
        assert!(!server.has_transmit());
    }

    #[test]
    fn protocol_mismatch_is_refused_naming_both() {
        let mut client = config("alpha", b"k");
        client.protocol = "skyhost-cluster".into();
        let mut pair = Pair::new(client, config("beta", b"k"));
        pair.drive();
        let server_err = pair.server_err.clone().unwrap();
        assert_eq!(
            server_err.to_string(),
            r#"peer alpha speaks protocol "skyhost-cluster", expected "skyhost-harbor""#
        );
        let Some(LinkError::Refused { reason }) = pair.client_err else {
            panic!("client not refused")
        };
        assert_eq!(
            reason,
            r#"protocol "skyhost-cluster", expected "skyhost-harbor""#
        );
    }

    #[test]
    fn tampered_welcome_fails_with_peer_failed_proof() {
        let now = Instant::now();
        let mut client = TestLink::new(Role::Client, config("alpha", b"k"), now, [1; 32]);
        let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
        let mut buf = BytesMut::new();
        client.poll_transmit(now, &mut buf, usize::MAX);
        server.handle_bytes(now, &mut buf).unwrap();
        server.poll_transmit(now, &mut buf, usize::MAX);
        client.handle_bytes(now, &mut buf).unwrap();
        client.poll_transmit(now, &mut buf, usize::MAX);
        server.handle_bytes(now, &mut buf).unwrap();
        assert!(server.is_up());
        let mut frames = transmit(&mut server, now);
        let [Frame::Welcome { mac }] = &mut frames[..] else {
            panic!("expected Welcome, got {frames:?}")
        };
        mac[0] ^= 0x80;
        let err = client.handle_bytes(now, &mut encode(&frames)).unwrap_err();
        assert_eq!(
            err,
            LinkError::PeerFailedProof {
                peer: "beta".into()
            }
        );
        assert!(!client.is_up());
    }

    #[test]
    fn data_before_up_is_unexpected() {
        let now = Instant::now();
        let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
        let msg = Frame::Message {
            envelope: env(1),
            payload: vec![1, 2, 3],
        };
        let err = server.handle_bytes(now, &mut encode(&[msg])).unwrap_err();
        assert_eq!(
            err,
            LinkError::Unexpected {
                state: "awaiting Hello",
                frame: "Message"
            }
        );
        assert_eq!(
            server.handle_bytes(now, &mut BytesMut::new()),
            Err(LinkError::Closed)
        );
    }

    #[test]
    fn data_queued_before_up_waits_for_the_handshake() {
        let now = Instant::now();
        let mut client = TestLink::new(Role::Client, config("alpha", b"k"), now, [1; 32]);
        client.send_message(env(1), b"early".to_vec());
        client.send_control(TestControl::Query("early".into()));
        let frames = transmit(&mut client, now);
        assert!(matches!(&frames[..], [Frame::Hello { .. }]), "{frames:?}");
        assert!(!client.has_transmit());

        let mut pair = Pair::new(config("alpha", b"k"), config("beta", b"k"));
        pair.client.send_message(env(1), b"early".to_vec());
        pair.server.send_control(TestControl::Bye);
        pair.drive();
        assert_eq!(
            pair.server_events[1],
            LinkEvent::Message {
                envelope: env(1),
                payload: b"early".to_vec()
            }
        );
        assert_eq!(pair.client_events[1], LinkEvent::Control(TestControl::Bye));
    }

    #[test]
    fn messages_and_controls_flow_both_ways_in_order() {
        let mut pair = Pair::connected();
        for i in 0..50u32 {
            pair.client.send_message(env(i), i.to_le_bytes().to_vec());
            pair.client.send_control(TestControl::Register {
                name: format!("svc{i}"),
                address: i,
            });
            pair.server.send_message(env(i + 100), vec![]);
        }
        pair.server.send_control(TestControl::Bye);
        pair.drive();
        assert_eq!(pair.server_events.len(), 100);
        for (i, pair_of_events) in pair.server_events.chunks(2).enumerate() {
            let i = i as u32;
            assert_eq!(
                pair_of_events,
                [
                    LinkEvent::Message {
                        envelope: env(i),
                        payload: i.to_le_bytes().to_vec()
                    },
                    LinkEvent::Control(TestControl::Register {
                        name: format!("svc{i}"),
                        address: i
                    }),
                ]
            );
        }
        assert_eq!(pair.client_events.len(), 51);
        assert_eq!(pair.client_events[50], LinkEvent::Control(TestControl::Bye));
        assert_eq!(pair.client.queued_bytes() + pair.server.queued_bytes(), 0);
    }

    fn big_payload(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect()
    }

    /// Index of the first `Message` event whose payload is longer than `len`.
    fn position_of_large(events: &[LinkEvent<TestControl>], len: usize) -> usize {
        events
            .iter()
            .position(|e| matches!(e, LinkEvent::Message { payload, .. } if payload.len() > len))
            .unwrap()
    }

    #[test]
    fn large_payload_does_not_hold_back_small_messages() {
        let mut pair = Pair::connected();
        let big = big_payload(16 << 20);
        pair.client.send_message(env(0), big.clone());
        assert_eq!(pair.client.queued_bytes(), big.len());
        // A few chunks go out first, then small messages are queued behind them.
        for _ in 0..3 {
            pair.step();
        }
        for i in 1..=100u32 {
            pair.client.send_message(env(i), vec![i as u8; 100]);
        }
        pair.step();
        let small: Vec<u32> = pair
            .server_events
            .iter()
            .filter_map(|e| match e {
                LinkEvent::Message { envelope, payload } if payload.len() == 100 => {
                    Some(envelope.session)
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            small,
            (1..=100).collect::<Vec<_>>(),
            "all small messages in one step, in order"
        );
        pair.drive();
        assert_eq!(pair.server_events.len(), 101);
        assert_eq!(
            position_of_large(&pair.server_events, 100),
            100,
            "the large one completes last"
        );
        assert_eq!(
            pair.server_events[100],
            LinkEvent::Message {
                envelope: env(0),
                payload: big
            }
        );
        assert_eq!(pair.client.queued_bytes(), 0);
        assert!(pair.server.incoming.is_empty());
    }

    #[test]
    fn small_messages_sent_right_after_a_large_one_arrive_first() {
        let mut pair = Pair::connected();
        pair.limit = 64 * 1024;
        let big = big_payload(16 << 20);
        pair.client.send_message(env(0), big.clone());
        for i in 1..=100u32 {
            pair.client.send_message(env(i), vec![7; 10]);
        }
        pair.drive();
        assert_eq!(pair.server_events.len(), 101);
        assert_eq!(position_of_large(&pair.server_events, 10), 100);
        assert_eq!(
            pair.server_events[100],
            LinkEvent::Message {
                envelope: env(0),
                payload: big
            }
        );
    }

    #[test]
    fn large_payloads_interleave_round_robin_and_beyond_max_streams() {
        let small_chunks = |name: &str| {
            let mut config = config(name, b"sesame");
            config.chunk_size = 1000;
            config.max_frame = 2000;
            config
        };
        let mut pair = Pair::new(small_chunks("alpha"), small_chunks("beta"));
        pair.drive();
        pair.server_events.clear();
        let payloads: Vec<Vec<u8>> = (0..MAX_STREAMS + 5)
            .map(|i| big_payload(3000 + 777 * i))
            .collect();
        for (i, p) in payloads.iter().enumerate() {
            pair.client.send_message(env(i as u32), p.clone());
        }
        // One frame per call: a first chunk of each stream in progress, then
        // the second chunk of the first one.
        let mut out = BytesMut::new();
        for _ in 0..=MAX_STREAMS {
            pair.client.poll_transmit(pair.now, &mut out, 1);
            assert_eq!(pair.server.handle_bytes(pair.now, &mut out), Ok(()));
        }
        let streams: Vec<u32> = (0..MAX_STREAMS as u32).collect();
        assert_eq!(
            pair.server
                .incoming
                .keys()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            streams.into_iter().collect()
        );
        assert_eq!(pair.server.incoming[&0].buf.len(), 2000);
        pair.limit = 1;
        pair.drive();
        let mut got: Vec<(u32, Vec<u8>)> = pair
            .server_events
            .drain(..)
            .map(|e| match e {
                LinkEvent::Message { envelope, payload } => (envelope.session, payload),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        got.sort_by_key(|(s, _)| *s);
        assert_eq!(
            got.into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
            payloads
        );
    }

    fn chunk_error(frames: &[Frame<TestControl>]) -> LinkError {
        let mut pair = Pair::connected();
        let now = pair.now;
        let err = pair
            .server
            .handle_bytes(now, &mut encode(frames))
            .unwrap_err();
        let refused = transmit(&mut pair.server, now);
        assert_eq!(
            refused,
            vec![Frame::Refused {
                reason: err.to_string()
            }]
        );
        err
    }

    #[test]
    fn chunk_errors_are_link_errors() {
        let start = |stream, total, len| Frame::ChunkStart {
            stream,
            envelope: env(1),
            total,
            part: vec![0; len],
        };
        let chunk = |stream, len| Frame::Chunk {
            stream,
            part: vec![0; len],
        };

        let err = chunk_error(&[chunk(5, 10)]);
        assert_eq!(err, LinkError::Chunk("chunk for unknown stream 5".into()));

        let err = chunk_error(&[start(1, 100, 60), chunk(1, 41)]);
        assert_eq!(
            err,
            LinkError::Chunk("stream 1 got 101 bytes, more than its total of 100 bytes".into())
        );

        let err = chunk_error(&[start(1, 10, 11)]);
        assert!(
            matches!(err, LinkError::Chunk(ref m) if m.contains("more than its total")),
            "{err}"
        );

        let err = chunk_error(&[start(2, 64 * 1024 * 1024 + 1, 1)]);
        assert_eq!(
            err.to_string(),
            "bad chunk from peer: stream 2 announces 67108865 bytes, more than max_payload of 67108864 bytes"
        );

        let err = chunk_error(&[start(3, 100, 10), start(3, 100, 10)]);
        assert_eq!(
            err,
            LinkError::Chunk("stream 3 started while already open".into())
        );

        let too_many: Vec<_> = (0..=MAX_STREAMS as u32).map(|s| start(s, 100, 1)).collect();
        let err = chunk_error(&too_many);
        assert!(
            matches!(err, LinkError::Chunk(ref m) if m.contains("streams are open")),
            "{err}"
        );
    }

    #[test]
    fn chunk_start_holding_everything_is_a_message() {
        let mut pair = Pair::connected();
        let now = pair.now;
        let frames = [
            Frame::ChunkStart {
                stream: 1,
                envelope: env(1),
                total: 3,
                part: vec![1, 2, 3],
            },
            Frame::ChunkStart {
                stream: 2,
                envelope: env(2),
                total: 4,
                part: vec![1, 2],
            },
            Frame::Chunk {
                stream: 2,
                part: vec![],
            },
            Frame::Chunk {
                stream: 2,
                part: vec![3, 4],
            },
            Frame::ChunkStart {
                stream: 2,
                envelope: env(3),
                total: 0,
                part: vec![],
            },
        ];
        pair.server.handle_bytes(now, &mut encode(&frames)).unwrap();
        let events: Vec<_> = std::iter::from_fn(|| pair.server.poll_event()).collect();
        assert_eq!(
            events,
            vec![
                LinkEvent::Message {
                    envelope: env(1),
                    payload: vec![1, 2, 3]
                },
                LinkEvent::Message {
                    envelope: env(2),
                    payload: vec![1, 2, 3, 4]
                },
                LinkEvent::Message {
                    envelope: env(3),
                    payload: vec![]
                },
            ]
        );
    }

    /// A message header other than `Envelope`: not `Copy`, with a heap field.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
    struct Target {
        name: String,
        compressed: bool,
    }

    fn target(name: &str, compressed: bool) -> Target {
        Target {
            name: name.into(),
            compressed,
        }
    }

    #[test]
    fn another_header_type_round_trips_whole_and_chunked() {
        let mut pair = Pair::<Target>::connected_with_header(
            config("alpha", b"sesame"),
            config("beta", b"sesame"),
        );
        let big = big_payload(200_000);
        pair.client
            .send_message(target("db.primary", true), big.clone());
        pair.client
            .send_message(target("", false), b"small".to_vec());
        pair.client.send_control(TestControl::Bye);
        pair.server
            .send_message(target(&"x".repeat(1000), true), vec![9; 70_000]);

        // The first transmit holds the small frames, then the ChunkStart
        // carrying the header, then Chunks.
        let mut wire = BytesMut::new();
        pair.client.poll_transmit(pair.now, &mut wire, 100_000);
        let mut copy = wire.clone();
        let mut dec = FrameDecoder::new(usize::MAX);
        let mut frames: Vec<Frame<TestControl, Target>> = Vec::new();
        while let Some(f) = dec.decode(&mut copy).unwrap() {
            frames.push(f);
        }
        let kinds: Vec<_> = frames.iter().map(Frame::kind).collect();
        assert_eq!(kinds, ["Message", "Control", "ChunkStart", "Chunk"]);
        assert!(
            matches!(&frames[2], Frame::ChunkStart { envelope, total: 200_000, .. }
                if *envelope == target("db.primary", true)),
            "{:?}",
            frames[2].kind()
        );
        pair.server.handle_bytes(pair.now, &mut wire).unwrap();
        pair.drive();

        assert_eq!((&pair.client_err, &pair.server_err), (&None, &None));
        assert_eq!(
            pair.server_events,
            vec![
                LinkEvent::Message {
                    envelope: target("", false),
                    payload: b"small".to_vec()
                },
                LinkEvent::Control(TestControl::Bye),
                LinkEvent::Message {
                    envelope: target("db.primary", true),
                    payload: big
                },
            ]
        );
        assert_eq!(
            pair.client_events,
            vec![LinkEvent::Message {
                envelope: target(&"x".repeat(1000), true),
                payload: vec![9; 70_000]
            }]
        );
        assert_eq!(pair.client.queued_bytes() + pair.server.queued_bytes(), 0);
        assert!(pair.client.incoming.is_empty() && pair.server.incoming.is_empty());
    }

    #[test]
    fn large_headers_are_chunked_to_fit_max_frame() {
        let tight = |name: &str| {
            let mut config = config(name, b"sesame");
            config.chunk_size = 1000;
            config.max_frame = 1100;
            config
        };
        let mut pair = Pair::<Target>::connected_with_header(tight("alpha"), tight("beta"));
        let long = |c: char, n: usize| target(&c.to_string().repeat(n), false);
        // Within chunk_size, but header and payload exceed max_frame.
        pair.client.send_message(long('a', 300), big_payload(900));
        // Chunked anyway; the header shortens the ChunkStart's part.
        pair.client.send_message(long('b', 300), big_payload(5000));
        // The header leaves room for no payload at all in the ChunkStart
        // (1 + 1 + 2 + 1092 + 1 + 2 + 1 = 1100 bytes): every byte goes in Chunks.
        pair.client.send_message(long('e', 1092), big_payload(3000));
        // The header alone exceeds max_frame: dropped, the link stays up.
        pair.client.send_message(long('c', 2000), vec![1; 10]);
        pair.client.send_message(long('d', 1), vec![2; 10]);
        pair.drive();

        assert_eq!((&pair.client_err, &pair.server_err), (&None, &None));
        assert!(pair.client.is_up() && pair.server.is_up());
        let mut got: Vec<_> = pair
            .server_events
            .drain(..)
            .map(|e| match e {
                LinkEvent::Message { envelope, payload } => (envelope, payload),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        got.sort_by_key(|(_, p)| p.len());
        assert_eq!(
            got,
            vec![
                (long('d', 1), vec![2; 10]),
                (long('a', 300), big_payload(900)),
                (long('e', 1092), big_payload(3000)),
                (long('b', 300), big_payload(5000)),
            ]
        );
        assert_eq!(pair.client.queued_bytes(), 0);
    }

    #[test]
    fn heartbeat_pings_are_answered_and_keep_the_link_alive() {
        let mut pair = Pair::connected();
        let start = pair.now;
        for _ in 0..100 {
            pair.advance();
            pair.drive();
        }
        assert_eq!((&pair.client_err, &pair.server_err), (&None, &None));
        assert!(
            pair.now - start >= Duration::from_secs(20),
            "only {:?} passed",
            pair.now - start
        );
        assert!(
            pair.client.pongs >= 10 && pair.server.pongs >= 10,
            "{} {}",
            pair.client.pongs,
            pair.server.pongs
        );
        assert!(pair.client.rtt().is_some() && pair.server.rtt().is_some());
        assert!(pair.client.frames_in() >= 10, "{}", pair.client.frames_in());
        assert!(pair.client_events.is_empty() && pair.server_events.is_empty());
    }

    #[test]
    fn silent_peer_is_detected() {
        let mut pair = Pair::connected();
        let start = pair.now;
        pair.drop_server_output = true;
        for _ in 0..100 {
            if pair.client_err.is_some() {
                break;
            }
            pair.advance();
            pair.drive();
        }
        let Some(LinkError::PeerSilent { after }) = pair.client_err else {
            panic!("client did not notice: {:?}", pair.client_err)
        };
        assert!(after >= Duration::from_secs(5));
        assert_eq!(pair.now - start, Duration::from_secs(5));
        assert_eq!(pair.client.poll_timeout(), None);
        // The client's last words reached the server.
        assert!(
            matches!(pair.server_err, Some(LinkError::Refused { .. })),
            "{:?}",
            pair.server_err
        );
    }

    #[test]
    fn handshake_must_finish_within_dead_after() {
        let now = Instant::now();
        let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
        let deadline = server.poll_timeout().unwrap();
        assert_eq!(deadline, now + Duration::from_secs(5));
        server.handle_timeout(now + Duration::from_secs(4)).unwrap();
        assert_eq!(
            server.handle_timeout(deadline),
            Err(LinkError::PeerSilent {
                after: Duration::from_secs(5)
            })
        );
        assert_eq!(server.handle_timeout(deadline), Err(LinkError::Closed));
    }

    #[test]
    fn random_bytes_after_handshake_are_an_error() {
        let mut pair = Pair::connected();
        let now = pair.now;
        let mut junk = BytesMut::from(&[5u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff][..]);
        let err = pair.server.handle_bytes(now, &mut junk).unwrap_err();
        assert!(
            matches!(err, LinkError::Codec(CodecError::Malformed(_))),
            "{err}"
        );
        let mut huge = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let err = pair.client.handle_bytes(now, &mut huge).unwrap_err();
        assert!(
            matches!(err, LinkError::Codec(CodecError::TooLarge { .. })),
            "{err}"
        );
        assert!(matches!(
            &transmit(&mut pair.client, now)[..],
            [Frame::Refused { .. }]
        ));
    }

    #[test]
    fn dead_link_drops_sends_and_keeps_only_refused() {
        let mut pair = Pair::connected();
        let now = pair.now;
        pair.server.send_message(env(1), vec![1; 10]);
        pair.server.send_message(env(2), vec![1; 1 << 20]);
        let _ = pair.server.handle_bytes(
            now,
            &mut encode(&[
                Frame::Pong(1),
                Frame::Chunk {
                    stream: 9,
                    part: vec![],
                },
            ]),
        );
        pair.server.send_message(env(3), vec![1; 10]);
        pair.server.send_control(TestControl::Bye);
        assert_eq!(pair.server.queued_bytes(), 0);
        assert!(matches!(
            &transmit(&mut pair.server, now)[..],
            [Frame::Refused { .. }]
        ));
        assert!(!pair.server.has_transmit());
    }

    #[test]
    fn oversized_sends_are_dropped_not_fatal() {
        let mut pair = Pair::connected();
        pair.client.config.max_payload = 1 << 20;
        pair.client.send_message(env(1), vec![0; (1 << 20) + 1]);
        pair.client
            .send_control(TestControl::Query("x".repeat(100_000)));
        assert_eq!(pair.client.queued_bytes(), 0);
        pair.client.send_message(env(2), vec![1]);
        pair.drive();
        assert_eq!(
            pair.server_events,
            vec![LinkEvent::Message {
                envelope: env(2),
                payload: vec![1]
            }]
        );
    }

    #[test]
    fn poll_transmit_respects_limit_at_frame_boundaries() {
        let mut pair = Pair::connected();
        for i in 0..10 {
            pair.client.send_message(env(i), vec![0; 100]);
        }
        let mut out = BytesMut::new();
        pair.client.poll_transmit(pair.now, &mut out, 250);
        // Each frame is 117 bytes (prefix 4, variant 1, envelope 11, length 1,
        // payload 100): three reach 250.
        let frames = decode_all(out.clone());
        assert_eq!(frames.len(), 3, "{} bytes", out.len());
        assert!(out.len() >= 250);
        pair.client.poll_transmit(pair.now, &mut out, 0);
        assert_eq!(decode_all(out).len(), 3, "nothing past the limit");
        assert!(pair.client.has_transmit());
    }

    #[test]
    fn pings_wait_for_the_heartbeat_and_busy_links_do_not_ping() {
        let mut pair = Pair::connected();
        let t0 = pair.now;
        assert_eq!(
            pair.client.poll_timeout(),
            Some(t0 + Duration::from_secs(1))
        );
        pair.client
            .handle_timeout(t0 + Duration::from_millis(999))
            .unwrap();
        assert!(!pair.client.has_transmit());
        pair.client.send_message(env(1), vec![]);
        assert_eq!(
            pair.client.poll_timeout(),
            Some(t0 + Duration::from_secs(5)),
            "writing pending: no heartbeat"
        );
        pair.client
            .handle_timeout(t0 + Duration::from_secs(1))
            .unwrap();
        let frames = transmit(&mut pair.client, t0 + Duration::from_secs(1));
        assert!(matches!(&frames[..], [Frame::Message { .. }]), "{frames:?}");
        pair.client
            .handle_timeout(t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(
            transmit(&mut pair.client, t0 + Duration::from_secs(2)),
            vec![Frame::Ping(0)]
        );
    }

    #[test]
    fn close_sends_queued_small_frames_then_refused() {
        let mut pair = Pair::connected();
        pair.server
            .send_control(TestControl::Query("last words".into()));
        pair.server.send_message(env(1), vec![1; 10]);
        pair.server.send_message(env(2), vec![2; 1 << 20]);
        pair.server.close("shutting down");
        pair.server.close("twice");
        assert!(pair.server.is_closed() && pair.server.has_transmit());
        assert_eq!(pair.server.poll_timeout(), None);
        pair.drive();
        assert_eq!(
            pair.client_events,
            vec![
                LinkEvent::Control(TestControl::Query("last words".into())),
                LinkEvent::Message {
                    envelope: env(1),
                    payload: vec![1; 10]
                },
            ]
        );
        assert_eq!(
            pair.client_err,
            Some(LinkError::Refused {
                reason: "shutting down".into()
            })
        );
        assert!(!pair.server.has_transmit());
    }

    #[test]
    fn close_during_handshake_refuses() {
        let now = Instant::now();
        let mut client = TestLink::new(Role::Client, config("alpha", b"k"), now, [1; 32]);
        client.send_message(env(1), vec![1]);
        client.close("going away");
        let frames = transmit(&mut client, now);
        assert!(
            matches!(&frames[..], [Frame::Hello { .. }, Frame::Refused { reason }] if reason == "going away"),
            "{frames:?}"
        );
    }

    /// Measures small-message throughput through one link pair, encode and
    /// decode both in the loop: `cargo test --release -- --ignored --nocapture throughput`.
    #[test]
    #[ignore]
    fn throughput_small_messages() {
        let mut pair = Pair::connected();
        let n = 4_000_000u32;
        let batch = 1000;
        let payload = [7u8; 32];
        let mut wire = BytesMut::with_capacity(1 << 20);
        let start = std::time::Instant::now();
        let mut received = 0u32;
        for b in 0..n / batch {
            for i in 0..batch {
                pair.client
                    .send_message(env(b * batch + i), payload.to_vec());
            }
            pair.client.poll_transmit(pair.now, &mut wire, 1 << 20);
            pair.server.handle_bytes(pair.now, &mut wire).unwrap();
            while let Some(e) = pair.server.poll_event() {
                if let LinkEvent::Message { payload, .. } = e {
                    received += payload.len() as u32 / 32;
                }
            }
        }
        let elapsed = start.elapsed();
        assert_eq!(received, n);
        println!(
            "{n} messages of 32 bytes in {elapsed:?}: {:.2} M msg/s",
            f64::from(n) / elapsed.as_secs_f64() / 1e6
        );
    }

    proptest! {
        /// Arbitrary bytes fed to a fresh server link never panic it: each
        /// call succeeds or fails with an error.
        #[test]
        fn arbitrary_input_to_server_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..5)) {
            let now = Instant::now();
            let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
            for chunk in chunks {
                let _ = server.handle_bytes(now, &mut BytesMut::from(&chunk[..]));
                let _ = transmit(&mut server, now);
            }
        }

        /// Arbitrary frames and bytes fed to a server that is up never panic
        /// it: each call succeeds or fails with an error.
        #[test]
        fn arbitrary_input_after_handshake_never_panics(
            frames in prop::collection::vec(super::super::codec::tests::arb_frame(), 0..8),
            junk in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut pair = Pair::connected();
            let now = pair.now;
            let mut input = encode(&frames);
            input.extend_from_slice(&junk);
            let _ = pair.server.handle_bytes(now, &mut input);
            while pair.server.poll_event().is_some() {}
            let _ = transmit(&mut pair.server, now);
            let _ = pair.server.handle_timeout(now + Duration::from_secs(10));
        }
    }
}
