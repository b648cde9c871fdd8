//! The pending-session table: which sessions this service waits on.
//!
//! A session is opened when an import returns one (`call`, `timeout`,
//! `spawn`, or `new-session` for protocols on `send`) and is waited on by a
//! [`SessionWait`] future. When a `response` or `error` with that session
//! arrives, `dispatch` completes the entry and wakes the waiting task. An entry
//! whose future is dropped (a lost `call_timeout` race, a cancelled task) is
//! removed, so a late reply finds no entry and is dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::address::kind;
use crate::error::CallError;
use crate::runtime;

/// How a session ended: the `response` or `error` message that closed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Completion {
    /// `kind::RESPONSE` or `kind::ERROR`.
    pub(crate) kind: u8,
    /// The payload: the answer, or cause byte plus detail.
    pub(crate) payload: Vec<u8>,
}

impl Completion {
    /// The answer's bytes, or the error it carries.
    pub(crate) fn into_result(self) -> Result<Vec<u8>, CallError> {
        if self.kind == kind::ERROR {
            Err(CallError::from_error_payload(&self.payload))
        } else {
            Ok(self.payload)
        }
    }
}

enum Entry {
    /// No answer yet; the waker of the task that polled last.
    Waiting(Option<Waker>),
    /// Answered; the future takes it on its next poll.
    Done(Completion),
}

/// A fixed-key hasher: session numbers come from the host, and a random
/// seed would make every guest import `wasi:random` just for this map. Fx
/// (a multiply a key) rather than SipHash: no peer picks the keys, and a
/// call in a busy service goes through this map four times.
pub(crate) type FixedState = rustc_hash::FxBuildHasher;

/// Sessions this service waits on.
#[derive(Default)]
pub(crate) struct Sessions {
    map: RefCell<HashMap<u32, Entry, FixedState>>,
}

impl Sessions {
    /// Starts waiting on `session`.
    pub(crate) fn open(&self, session: u32) {
        self.map.borrow_mut().insert(session, Entry::Waiting(None));
    }

    /// Completes `session` and wakes its task. False (and the completion is
    /// dropped) if nobody waits on it or it was completed already.
    pub(crate) fn complete(&self, session: u32, completion: Completion) -> bool {
        let waker = {
            let mut map = self.map.borrow_mut();
            match map.get_mut(&session) {
                Some(entry @ Entry::Waiting(_)) => {
                    match std::mem::replace(entry, Entry::Done(completion)) {
                        Entry::Waiting(waker) => waker,
                        Entry::Done(_) => None,
                    }
                }
                _ => return false,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Takes the completion if it arrived, or remembers the waker.
    fn poll(&self, session: u32, cx: &mut Context<'_>) -> Poll<Completion> {
        let mut map = self.map.borrow_mut();
        if let Some(Entry::Waiting(waker)) = map.get_mut(&session) {
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        match map.remove(&session) {
            Some(Entry::Done(completion)) => Poll::Ready(completion),
            // Not in the table (a waiting entry returned above): wait on it.
            _ => {
                map.insert(session, Entry::Waiting(Some(cx.waker().clone())));
                Poll::Pending
            }
        }
    }

    /// Stops waiting on `session`; a later answer is dropped.
    pub(crate) fn cancel(&self, session: u32) {
        self.map.borrow_mut().remove(&session);
    }

    /// How many sessions are open.
    pub(crate) fn len(&self) -> usize {
        self.map.borrow().len()
    }
}

/// Waits for one session of the current service. Dropping it closes the
/// session: a reply that comes later is dropped.
#[must_use = "a session does nothing unless awaited"]
pub(crate) struct SessionWait {
    session: u32,
    finished: bool,
    /// The answer, when it came with the call (the session never entered
    /// the table).
    answered: Option<Completion>,
}

impl SessionWait {
    /// Opens `session` in this service's table and returns its waiter.
    pub(crate) fn open(session: u32) -> Self {
        runtime::with(|rt| rt.sessions.open(session));
        SessionWait {
            session,
            finished: false,
            answered: None,
        }
    }

    /// A waiter for `session`, which has ended with `answer` already.
    pub(crate) fn answered(session: u32, answer: Completion) -> Self {
        SessionWait {
            session,
            finished: false,
            answered: Some(answer),
        }
    }
}

impl Future for SessionWait {
    type Output = Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        assert!(
            !self.finished,
            "session {} polled after it completed",
            self.session
        );
        if let Some(answer) = self.answered.take() {
            self.finished = true;
            return Poll::Ready(answer);
        }
        let session = self.session;
        let polled = runtime::with(|rt| rt.sessions.poll(session, cx));
        if polled.is_ready() {
            self.finished = true;
        }
        polled
    }
}

impl Drop for SessionWait {
    fn drop(&mut self) {
        if !self.finished && self.answered.is_none() {
            let session = self.session;
            runtime::try_with(|rt| rt.sessions.cancel(session));
        }
    }
}
