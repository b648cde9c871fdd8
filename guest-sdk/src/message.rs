//! Messages a service receives, and the ways it answers them.

use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::address::{Address, kind};
use crate::error::{DecodeError, SendError};
use crate::{runtime, sys};

/// One message handed to [`Service::handle`](crate::Service::handle).
///
/// Answers to this service's own calls and timers never show up here: the
/// runtime routes them to the task that waits on their session.
pub struct Message {
    /// The message kind (see [`kind`](crate::kind)).
    pub kind: u8,
    /// Who sent it (for an `exit` notice: the service that ended).
    pub source: Address,
    /// The sender's session; 0 means no reply is wanted.
    pub session: u32,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// For requests: set once the responder is taken.
    claimed: Option<Rc<Cell<bool>>>,
}

impl Message {
    /// A message as it came from the host. Requests get a claim flag the
    /// runtime shares, so it knows whether the handler took the responder.
    pub(crate) fn new(kind: u8, source: Address, session: u32, payload: Vec<u8>) -> Self {
        let claimed = (kind == kind::REQUEST && session != 0).then(|| Rc::new(Cell::new(false)));
        Message {
            kind,
            source,
            session,
            payload,
            claimed,
        }
    }

    /// The flag shared with the runtime (requests only).
    pub(crate) fn claim_flag(&self) -> Option<Rc<Cell<bool>>> {
        self.claimed.clone()
    }

    /// Decodes the payload with postcard.
    ///
    /// # Errors
    /// [`DecodeError`] if the payload is not a valid `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        Ok(postcard::from_bytes(&self.payload)?)
    }

    /// Whether this is a request whose sender waits for an answer.
    pub fn is_request(&self) -> bool {
        self.kind == kind::REQUEST && self.session != 0
    }

    /// Takes the right to answer this request, to answer later (after the
    /// handler returned, from another task). `None` if this is not a request
    /// or the responder was taken already.
    ///
    /// Once taken, the handler's [`Reply`] is ignored: the responder answers.
    pub fn take_responder(&mut self) -> Option<Responder> {
        let claimed = self.claimed.as_ref()?;
        if claimed.replace(true) {
            return None;
        }
        Some(Responder::new(self.source, self.session))
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("session", &self.session)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// A message read in place from the host's batch, for
/// [`Service::handle_now`](crate::Service::handle_now): nothing is copied or
/// allocated to hand it over.
#[derive(Clone, Copy)]
pub struct Incoming<'a> {
    /// The message kind (see [`kind`](crate::kind)).
    pub kind: u8,
    /// Who sent it.
    pub source: Address,
    /// The sender's session; 0 means no reply is wanted.
    pub session: u32,
    /// The payload bytes, in the batch's buffer.
    pub payload: &'a [u8],
}

impl<'a> Incoming<'a> {
    /// Decodes the payload with postcard; the value may borrow from it.
    ///
    /// # Errors
    /// [`DecodeError`] if the payload is not a valid `T`.
    pub fn decode<T: serde::Deserialize<'a>>(&self) -> Result<T, DecodeError> {
        Ok(postcard::from_bytes(self.payload)?)
    }

    /// Whether this is a request whose sender waits for an answer.
    pub fn is_request(&self) -> bool {
        self.kind == kind::REQUEST && self.session != 0
    }
}

impl fmt::Debug for Incoming<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("session", &self.session)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// The right to answer one session, exactly once.
///
/// Dropping it without answering sends the caller an error ("dropped without
/// reply"), so no caller waits forever; after [`exit`](crate::exit) it sends
/// nothing, since the host answers open requests with `Exited`.
#[must_use = "dropping a responder answers the caller with an error"]
pub struct Responder {
    dest: Address,
    session: u32,
    answered: bool,
}

impl Responder {
    /// A responder for a session that `dest` opened, for protocols built on
    /// [`send`](crate::send) with a [`new_session`](crate::new_session).
    pub fn new(dest: Address, session: u32) -> Self {
        runtime::responder_opened();
        Responder {
            dest,
            session,
            answered: false,
        }
    }

    /// Who waits for the answer.
    pub fn dest(&self) -> Address {
        self.dest
    }

    /// The session being answered.
    pub fn session(&self) -> u32 {
        self.session
    }

    /// Answers with `value` encoded by postcard. If it does not encode, the
    /// caller gets an error saying so (and this returns `SendError::Encode`).
    ///
    /// # Errors
    /// The caller is gone ([`SendError::UnknownAddress`]) or the answer is
    /// too large, or `value` did not encode.
    pub fn ok<T: Serialize + ?Sized>(self, value: &T) -> Result<(), SendError> {
        match crate::node::to_bytes(value) {
            Ok(bytes) => self.ok_bytes(&bytes),
            Err(e) => {
                let detail = format!("reply did not encode: {e}");
                self.err(&detail)?;
                Err(SendError::Encode(e.to_string()))
            }
        }
    }

    /// Answers with raw bytes.
    ///
    /// # Errors
    /// The caller is gone, or the answer is too large.
    pub fn ok_bytes(mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.answered = true;
        Ok(sys::respond(self.dest.0, self.session, Ok(bytes))?)
    }

    /// Answers with an error; the caller sees [`CallError::ServiceError`](crate::CallError::ServiceError).
    ///
    /// # Errors
    /// The caller is gone.
    pub fn err(mut self, message: &str) -> Result<(), SendError> {
        self.answered = true;
        Ok(sys::respond(self.dest.0, self.session, Err(message))?)
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("dest", &self.dest)
            .field("session", &self.session)
            .finish()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        runtime::responder_closed();
        if !self.answered && !runtime::exiting() {
            // The caller may be gone already; nothing more to do then.
            let _ = sys::respond(self.dest.0, self.session, Err("dropped without reply"));
        }
    }
}

/// What a handler returns: the answer to a request, or nothing to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer with these bytes.
    Bytes(Vec<u8>),
    /// Answer with an error (the caller sees `CallError::ServiceError`).
    Error(String),
    /// Nothing to send: the message was not a request, or the handler took
    /// the responder. A request left unanswered this way gets an error
    /// ("returned without answering").
    Deferred,
}

impl Reply {
    /// Answer with `value` encoded by postcard (an error if it does not encode).
    pub fn value<T: Serialize + ?Sized>(value: &T) -> Self {
        match crate::node::to_bytes(value) {
            Ok(bytes) => Reply::Bytes(bytes),
            Err(e) => Reply::Error(format!("reply did not encode: {e}")),
        }
    }

    /// Answer with raw bytes.
    pub fn bytes(bytes: Vec<u8>) -> Self {
        Reply::Bytes(bytes)
    }

    /// Answer with an error text.
    pub fn error(message: impl Into<String>) -> Self {
        Reply::Error(message.into())
    }

    /// Nothing to send (same as [`Reply::Deferred`]).
    pub fn none() -> Self {
        Reply::Deferred
    }
}
