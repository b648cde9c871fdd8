//! Messages, their kinds, and the ways a message or a session can fail.

use bytes::Bytes;

use super::{Address, TenantId};

/// The bit that marks a session from `new-session`: the guest's own, for
/// protocols on `send`. Sessions of host imports (`call`, `timeout`,
/// `spawn`, `harbor.*`, `cluster.*`, `groups.*`) number from 1 below it, so
/// the host can tell an answer to an ended session of its own (dropped as
/// late) from an answer in a guest's protocol (always passed on).
pub const GUEST_SESSIONS: u32 = 1 << 31;

/// A session number; 0 means no reply is wanted.
pub type Session = u32;

/// Message kinds (Skynet's PTYPE), as the WIT `types.kind` documents them.
pub mod kind {
    /// A plain message; no reply expected.
    pub const TEXT: u8 = 0;
    /// A reply to a session.
    pub const RESPONSE: u8 = 1;
    /// A publish on a subscribed channel; the session is the channel id.
    pub const MULTICAST: u8 = 2;
    /// A monitored service ended; the payload is the reason.
    pub const EXIT: u8 = 3;
    /// Reserved for the host.
    pub const SYSTEM: u8 = 4;
    /// A session failed; payload byte 0 is an [`ErrorCause`](super::ErrorCause).
    pub const ERROR: u8 = 7;
    /// A call that wants a response.
    pub const REQUEST: u8 = 10;
    /// The first kind free for user protocols.
    pub const USER: u8 = 16;

    /// Whether a guest may not send this kind with `send`.
    pub fn is_reserved(kind: u8) -> bool {
        matches!(kind, RESPONSE | MULTICAST | EXIT | SYSTEM | ERROR)
    }
}

/// One message on its way to a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What the payload means (see [`kind`]).
    pub kind: u8,
    /// Who sent it.
    pub source: Address,
    /// The session it belongs to; 0 for none.
    pub session: Session,
    /// The sender's tenant, set by the host ([`TenantId::HOST`] for what
    /// the host itself sends): a service takes messages of its own tenant
    /// only.
    pub tenant: TenantId,
    /// The bytes, copied out of the sender once; shared, not copied, when
    /// one message goes to many mailboxes (multicast).
    pub payload: Bytes,
    /// The trace id of the logical request it is part of (0: none): set by
    /// `trace <addr> on` or a guest's `start-trace`, carried by everything
    /// sent while a traced message is handled, and across nodes.
    pub trace: u64,
}

impl Message {
    /// An `error` message ending `session`, with its cause and a detail.
    pub fn error(source: Address, session: Session, cause: ErrorCause, detail: &str) -> Self {
        let mut payload = Vec::with_capacity(1 + detail.len());
        payload.push(cause as u8);
        payload.extend_from_slice(detail.as_bytes());
        Message {
            kind: kind::ERROR,
            source,
            session,
            tenant: TenantId::HOST,
            payload: payload.into(),
            trace: 0,
        }
    }

    /// Whether this message wants a response.
    pub fn wants_reply(&self) -> bool {
        self.kind == kind::REQUEST && self.session != 0
    }
}

/// Where a late answer (a `response` or `error` for a session that had
/// already ended) was dropped, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateAt {
    /// At the service it was for, which no longer waited on the session.
    Service,
    /// At the harbor link it came in on: the request had been failed
    /// (its node was declared down) before the answer came back.
    Harbor,
    /// At the cluster sender: the call had timed out or failed.
    Cluster,
}

impl LateAt {
    /// Every place, in the order of [`index`](Self::index).
    pub const ALL: [LateAt; 3] = [LateAt::Service, LateAt::Harbor, LateAt::Cluster];

    /// Its slot in the node's counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            LateAt::Service => "service",
            LateAt::Harbor => "harbor",
            LateAt::Cluster => "cluster",
        }
    }
}

/// Why a session ended in an `error` message: byte 0 of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCause {
    /// The service answered with an error.
    Service = 0,
    /// No such service, or not visible to the caller.
    UnknownAddress = 1,
    /// The target exited with the request unanswered.
    Exited = 2,
    /// The target trapped.
    Trapped = 3,
    /// The target was killed.
    Killed = 4,
    /// The session timed out.
    Timeout = 5,
    /// The target's mailbox was full.
    Overloaded = 6,
    /// A spawn failed.
    SpawnFailed = 7,
    /// The target's node is down.
    NodeDown = 8,
}

impl ErrorCause {
    /// The cause for byte 0 of an error payload; unknown bytes read as `Service`.
    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::UnknownAddress,
            2 => Self::Exited,
            3 => Self::Trapped,
            4 => Self::Killed,
            5 => Self::Timeout,
            6 => Self::Overloaded,
            7 => Self::SpawnFailed,
            8 => Self::NodeDown,
            _ => Self::Service,
        }
    }
}

/// Why a message could not be enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such service, or not visible to the sender.
    #[error("unknown address {0}")]
    UnknownAddress(Address),
    /// The target's mailbox is past its limit.
    #[error("mailbox of {0} is full")]
    Overloaded(Address),
    /// The payload is larger than the node allows.
    #[error("payload of {size} bytes is larger than the limit of {limit}")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The node's limit.
        limit: usize,
    },
    /// The kind is reserved for the host.
    #[error("message kind {0} is reserved for the host")]
    ReservedKind(u8),
    /// The target's node is not connected.
    #[error("the node of {0} is down")]
    NodeDown(Address),
}

impl SendError {
    /// The error cause a caller sees when its call failed this way at once.
    pub fn cause(&self) -> ErrorCause {
        match self {
            SendError::UnknownAddress(_) => ErrorCause::UnknownAddress,
            SendError::Overloaded(_) => ErrorCause::Overloaded,
            SendError::NodeDown(_) => ErrorCause::NodeDown,
            SendError::TooLarge { .. } | SendError::ReservedKind(_) => ErrorCause::Service,
        }
    }
}

/// How a call made from the host ended without a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The request could not be sent.
    #[error("call not sent: {0}")]
    Send(#[from] SendError),
    /// The session ended with an `error` message.
    #[error("call failed ({cause:?}): {detail}")]
    Failed {
        /// Why.
        cause: ErrorCause,
        /// The text that came with it.
        detail: String,
    },
    /// No answer within the caller's deadline.
    #[error("call timed out")]
    Timeout,
    /// The node is shutting down.
    #[error("node stopped")]
    NodeStopped,
}

impl CallError {
    /// The cause of a failed call, if it ended with an error message.
    pub fn cause(&self) -> Option<ErrorCause> {
        match self {
            CallError::Failed { cause, .. } => Some(*cause),
            CallError::Send(e) => Some(e.cause()),
            CallError::Timeout => Some(ErrorCause::Timeout),
            CallError::NodeStopped => None,
        }
    }

    /// Reads an `error` message's payload.
    pub fn from_error_payload(payload: &[u8]) -> Self {
        let cause = ErrorCause::from_byte(payload.first().copied().unwrap_or(0));
        let detail = String::from_utf8_lossy(payload.get(1..).unwrap_or_default()).into_owned();
        CallError::Failed { cause, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_payload_round_trips() {
        let m = Message::error(Address(0x100), 9, ErrorCause::Trapped, "unreachable");
        assert_eq!(m.kind, kind::ERROR);
        assert_eq!(
            CallError::from_error_payload(&m.payload),
            CallError::Failed {
                cause: ErrorCause::Trapped,
                detail: "unreachable".into()
            }
        );
        assert_eq!(
            CallError::from_error_payload(&[]).cause(),
            Some(ErrorCause::Service)
        );
    }

    #[test]
    fn every_cause_byte_round_trips() {
        for b in 0..=8u8 {
            assert_eq!(ErrorCause::from_byte(b) as u8, b);
        }
    }
}
