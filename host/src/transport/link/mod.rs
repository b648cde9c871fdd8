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

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{self, CodecError, FrameDecoder, LEN_PREFIX};
use super::frame::{Envelope, Frame};
use super::handshake::{Handshake, HandshakeError};

mod streams;
#[cfg(test)]
mod tests;

use streams::{Incoming, Outgoing};

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
    ///
    /// Gives the payload back when the link does not hold on to it (it was
    /// copied into a frame, or dropped), so the caller may keep it.
    pub fn send_message(&mut self, envelope: H, payload: Vec<u8>) -> Option<Vec<u8>> {
        if self.state == State::Dead {
            tracing::debug!(?envelope, "message dropped: link closed");
            return Some(payload);
        }
        if payload.len() <= self.chunk_size {
            let start = self.small.len();
            match codec::encode_message(&envelope, &payload, &mut self.small) {
                Ok(()) if self.small.len() - start <= LEN_PREFIX + self.config.max_frame => {
                    return Some(payload);
                }
                // Too large for one frame (a large header): chunk it below.
                Ok(()) => self.small.truncate(start),
                Err(e) => {
                    tracing::error!(?envelope, "cannot encode message: {e}");
                    return Some(payload);
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
                return Some(payload);
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
        None
    }

    /// Whether a payload of `len` bytes is refused (dropped with an error
    /// log) rather than sent: larger than `max_payload`.
    pub fn refuses(&self, len: usize) -> bool {
        len > self.config.max_payload
    }

    /// Whether a payload of `len` bytes is kept by the link until it is
    /// written (it goes in chunks) rather than copied into a frame at once.
    pub fn holds(&self, len: usize) -> bool {
        len > self.chunk_size
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

/// Encodes one of our own frames; postcard into a `BytesMut` cannot really
/// fail, so a failure is logged and the frame dropped.
fn encode_or_log<C: Serialize, H: Serialize>(frame: &Frame<C, H>, out: &mut BytesMut) {
    if let Err(e) = codec::encode_frame(frame, out) {
        tracing::error!(frame = frame.kind(), "cannot encode frame, dropped: {e}");
    }
}
