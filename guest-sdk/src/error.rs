//! Why a call, a send or a name registration failed.

use std::fmt;

use crate::Address;
use crate::sys;

/// Why a message could not be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No such service: it never existed, has exited, or is not visible.
    UnknownAddress,
    /// The target's mailbox is past its limit.
    Overloaded,
    /// The payload is larger than this node allows.
    TooLarge,
    /// The kind is reserved for the host; answer sessions with a `Responder`.
    ReservedKind,
    /// The target's node (another harbor id) is not connected.
    NodeDown,
    /// The value did not encode with postcard (the detail says why).
    Encode(String),
    /// The cluster refused a send to another node (the detail says why:
    /// the node is offline, unknown, or down with its queue full, or the
    /// payload is over the limit).
    Cluster(String),
}

impl From<sys::RawSendError> for SendError {
    fn from(raw: sys::RawSendError) -> Self {
        match raw {
            sys::RawSendError::UnknownAddress => SendError::UnknownAddress,
            sys::RawSendError::Overloaded => SendError::Overloaded,
            sys::RawSendError::TooLarge => SendError::TooLarge,
            sys::RawSendError::ReservedKind => SendError::ReservedKind,
            sys::RawSendError::NodeDown => SendError::NodeDown,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownAddress => f.write_str("unknown address"),
            SendError::Overloaded => f.write_str("target's mailbox is full"),
            SendError::TooLarge => f.write_str("payload too large"),
            SendError::ReservedKind => f.write_str("kind is reserved for the host"),
            SendError::NodeDown => f.write_str("target's node is down"),
            SendError::Encode(detail) => write!(f, "message did not encode: {detail}"),
            SendError::Cluster(detail) => f.write_str(detail),
        }
    }
}

impl std::error::Error for SendError {}

/// Queued messages the host refused at a flush (see [`flush`](crate::flush)):
/// the first, and how many in all. Every other queued message was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Where the first refused message was going.
    pub to: Destination,
    /// Why the host refused it.
    pub error: SendError,
    /// How many messages of the flush the host refused.
    pub count: usize,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a queued send to {} was refused: {}",
            self.to, self.error
        )?;
        if self.count > 1 {
            write!(f, " ({} refused in this flush)", self.count)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// Where a queued message was going.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A service of this node (or of its harbor).
    Address(Address),
    /// A service on another node of the cluster.
    Cluster {
        /// The node's cluster name.
        node: String,
        /// The service there.
        service: crate::cluster::Service,
    },
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Address(a) => write!(f, "{a}"),
            Destination::Cluster { node, service } => match service {
                crate::cluster::Service::Name(name) => {
                    write!(f, "`{name}` on cluster node `{node}`")
                }
                crate::cluster::Service::Address(a) => write!(f, "{a} on cluster node `{node}`"),
            },
        }
    }
}

/// Why a name could not be registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    /// Empty, too long, or not valid text for a name.
    Invalid,
    /// Another service holds it.
    Taken,
    /// A global name, and the harbor master is unreachable.
    Unavailable,
}

impl From<sys::RawNameError> for NameError {
    fn from(raw: sys::RawNameError) -> Self {
        match raw {
            sys::RawNameError::Invalid => NameError::Invalid,
            sys::RawNameError::Taken => NameError::Taken,
            sys::RawNameError::Unavailable => NameError::Unavailable,
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Invalid => f.write_str("invalid name"),
            NameError::Taken => f.write_str("name is taken"),
            NameError::Unavailable => f.write_str("the harbor master is unreachable"),
        }
    }
}

impl std::error::Error for NameError {}

/// A payload that did not decode into the expected type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    detail: String,
}

impl DecodeError {
    /// A decode error with a reason.
    pub fn new(detail: impl Into<String>) -> Self {
        DecodeError {
            detail: detail.into(),
        }
    }
}

impl From<postcard::Error> for DecodeError {
    fn from(e: postcard::Error) -> Self {
        DecodeError::new(e.to_string())
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "payload did not decode: {}", self.detail)
    }
}

impl std::error::Error for DecodeError {}

/// How a session (call, spawn, timed call) ended without a usable answer.
///
/// The first nine variants come from an `error` message (its payload byte 0 is
/// the cause, the rest a utf-8 detail); `Send`, `Encode` and `Decode` happen on
/// this side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// Cause 0: the service answered with an error.
    ServiceError(String),
    /// Cause 1: the target does not exist (or is not visible).
    UnknownAddress,
    /// Cause 2: the target exited with the request unanswered.
    Exited,
    /// Cause 3: the target trapped.
    Trapped,
    /// Cause 4: the target was killed.
    Killed,
    /// Cause 5: timed out.
    Timeout,
    /// Cause 6: the target's mailbox was full.
    Overloaded,
    /// Cause 7: spawn failed (the detail says why).
    SpawnFailed(String),
    /// Cause 8: the target's node is down.
    NodeDown,
    /// A cause this SDK does not know, or an error with an empty payload.
    Other {
        /// The cause byte (255 if the payload was empty).
        cause: u8,
        /// The utf-8 detail.
        detail: String,
    },
    /// The request could not be sent at all.
    Send(SendError),
    /// The request did not encode.
    Encode(String),
    /// The reply did not decode into the expected type.
    Decode(DecodeError),
}

impl CallError {
    /// Reads an `error` message's payload: byte 0 is the cause, the rest a
    /// utf-8 detail.
    pub fn from_error_payload(payload: &[u8]) -> Self {
        let Some((&cause, rest)) = payload.split_first() else {
            return CallError::Other {
                cause: u8::MAX,
                detail: String::from("empty error payload"),
            };
        };
        let detail = String::from_utf8_lossy(rest).into_owned();
        match cause {
            0 => CallError::ServiceError(detail),
            1 => CallError::UnknownAddress,
            2 => CallError::Exited,
            3 => CallError::Trapped,
            4 => CallError::Killed,
            5 => CallError::Timeout,
            6 => CallError::Overloaded,
            7 => CallError::SpawnFailed(detail),
            8 => CallError::NodeDown,
            cause => CallError::Other { cause, detail },
        }
    }
}

impl From<SendError> for CallError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Encode(detail) => CallError::Encode(detail),
            e => CallError::Send(e),
        }
    }
}

impl From<DecodeError> for CallError {
    fn from(e: DecodeError) -> Self {
        CallError::Decode(e)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::ServiceError(detail) => write!(f, "service error: {detail}"),
            CallError::UnknownAddress => f.write_str("unknown address"),
            CallError::Exited => f.write_str("target exited without answering"),
            CallError::Trapped => f.write_str("target trapped"),
            CallError::Killed => f.write_str("target was killed"),
            CallError::Timeout => f.write_str("timed out"),
            CallError::Overloaded => f.write_str("target's mailbox is full"),
            CallError::SpawnFailed(detail) => write!(f, "spawn failed: {detail}"),
            CallError::NodeDown => f.write_str("target's node is down"),
            CallError::Other { cause, detail } => write!(f, "error cause {cause}: {detail}"),
            CallError::Send(e) => write!(f, "send failed: {e}"),
            CallError::Encode(detail) => write!(f, "request did not encode: {detail}"),
            CallError::Decode(e) => write!(f, "reply {e}"),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Send(e) => Some(e),
            CallError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_payload_causes() {
        let with = |cause: u8, detail: &str| {
            let mut p = vec![cause];
            p.extend_from_slice(detail.as_bytes());
            CallError::from_error_payload(&p)
        };
        assert_eq!(with(0, "no"), CallError::ServiceError("no".into()));
        assert_eq!(with(1, ""), CallError::UnknownAddress);
        assert_eq!(with(2, ""), CallError::Exited);
        assert_eq!(with(3, ""), CallError::Trapped);
        assert_eq!(with(4, ""), CallError::Killed);
        assert_eq!(with(5, ""), CallError::Timeout);
        assert_eq!(with(6, ""), CallError::Overloaded);
        assert_eq!(
            with(7, "no module"),
            CallError::SpawnFailed("no module".into())
        );
        assert_eq!(with(8, ""), CallError::NodeDown);
        assert_eq!(
            with(42, "x"),
            CallError::Other {
                cause: 42,
                detail: "x".into()
            }
        );
        assert!(matches!(
            CallError::from_error_payload(&[]),
            CallError::Other { cause: 255, .. }
        ));
        assert_eq!(with(0, "bad").to_string(), "service error: bad");
    }
}
