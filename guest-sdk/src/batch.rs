//! Batched RPC (seed §7.3): calls to the same cluster node and service are
//! coalesced into one request of up to [`MAX_BATCH`] calls, or of what came
//! within [`WINDOW`] of the first, and each caller gets its own answer.
//!
//! ```text
//!  caller ─ Batcher::call ─> queue (this service) ── 100 queued, or 1 ms after the first ──>
//!     one cluster call: "SKB1" + postcard(Vec<payload>)
//!  service: batch::serve(payload, handler) ─> postcard(Vec<Result<answer, error text>>)
//!  each answer ─> its caller's session (a response this service sends itself)
//! ```
//!
//! The serving side runs the handler on each call in order. A batch whose
//! cluster call fails fails every call in it with that error's text.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::Service;
use crate::node::encode;
use crate::{
    CallError, DecodeError, Responder, fork, new_session, self_address, sleep, wait_session,
};

/// Most calls in one batch.
pub const MAX_BATCH: usize = 100;

/// How long the first call of a batch waits for others.
pub const WINDOW: Duration = Duration::from_millis(1);

/// What a batch request's payload starts with.
const MAGIC: &[u8; 4] = b"SKB1";

/// Coalesces calls to one service on one cluster node. Cheap to clone:
/// clones share the queue.
#[derive(Clone)]
pub struct Batcher {
    inner: Rc<RefCell<Queue>>,
}

struct Queue {
    node: String,
    service: Service,
    max: usize,
    window: Duration,
    /// Each waiting call's session and payload.
    calls: Vec<(u32, Vec<u8>)>,
    timer_armed: bool,
}

impl Batcher {
    /// A batcher for `service` on `node`, with [`MAX_BATCH`] and [`WINDOW`].
    pub fn new(node: &str, service: impl Into<Service>) -> Self {
        Batcher {
            inner: Rc::new(RefCell::new(Queue {
                node: node.to_string(),
                service: service.into(),
                max: MAX_BATCH,
                window: WINDOW,
                calls: Vec::new(),
                timer_armed: false,
            })),
        }
    }

    /// The same batcher with other limits (`max` at least 1).
    pub fn with_limits(self, max: usize, window: Duration) -> Self {
        {
            let mut q = self.inner.borrow_mut();
            q.max = max.max(1);
            q.window = window;
        }
        self
    }

    /// Calls with `req` (postcard) in the next batch and decodes the answer.
    ///
    /// # Errors
    /// The service's error for this call, or the batch's failure.
    pub fn call<Req, Resp>(
        &self,
        req: &Req,
    ) -> impl Future<Output = Result<Resp, CallError>> + 'static + use<Req, Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let started = encode(req).map_err(CallError::from);
        crate::node::typed(started.map(|payload| self.call_raw(payload)))
    }

    /// Calls with raw bytes in the next batch.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub fn call_raw(
        &self,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, CallError>> + 'static + use<> {
        let session = new_session();
        let answer = wait_session(session);
        let full = {
            let mut q = self.inner.borrow_mut();
            q.calls.push((session, payload));
            q.calls.len() >= q.max
        };
        if full {
            self.flush();
        } else if !std::mem::replace(&mut self.inner.borrow_mut().timer_armed, true) {
            let me = self.clone();
            let window = self.inner.borrow().window;
            fork(async move {
                sleep(window).await;
                me.flush();
            });
        }
        answer
    }

    /// Sends what is queued as one call; its answers go to their callers.
    fn flush(&self) {
        let (node, service, calls) = {
            let mut q = self.inner.borrow_mut();
            q.timer_armed = false;
            (
                q.node.clone(),
                q.service.clone(),
                std::mem::take(&mut q.calls),
            )
        };
        if calls.is_empty() {
            return;
        }
        fork(async move {
            let (sessions, payloads): (Vec<u32>, Vec<Vec<u8>>) = calls.into_iter().unzip();
            let answers = match postcard::to_extend(&payloads, MAGIC.to_vec()) {
                Ok(request) => match crate::cluster::call_raw(&node, service, &request, None).await
                {
                    Ok(bytes) => postcard::from_bytes::<Vec<Result<Vec<u8>, String>>>(&bytes)
                        .map_err(|e| format!("batch answer did not decode: {e}")),
                    Err(e) => Err(format!("batch call to `{node}`: {e}")),
                },
                Err(e) => Err(format!("batch did not encode: {e}")),
            };
            let me = self_address();
            match answers {
                Ok(answers) if answers.len() == sessions.len() => {
                    for (session, answer) in sessions.into_iter().zip(answers) {
                        let responder = Responder::new(me, session);
                        let _ = match answer {
                            Ok(bytes) => responder.ok_bytes(&bytes),
                            Err(e) => responder.err(&e),
                        };
                    }
                }
                other => {
                    let why = match other {
                        Ok(a) => format!("batch of {} answered {} calls", sessions.len(), a.len()),
                        Err(e) => e,
                    };
                    for session in sessions {
                        let _ = Responder::new(me, session).err(&why);
                    }
                }
            }
        });
    }
}

/// Whether a request's payload is a batch (to be answered with [`serve`]).
pub fn is_batch(payload: &[u8]) -> bool {
    payload.starts_with(MAGIC)
}

/// Answers a batch request: runs `handle` on each call in order and
/// returns the answer's payload.
///
/// # Errors
/// When `payload` is not a batch.
pub async fn serve<F, Fut>(payload: &[u8], handle: F) -> Result<Vec<u8>, DecodeError>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, String>>,
{
    let body = payload
        .strip_prefix(MAGIC)
        .ok_or_else(|| DecodeError::new("not a batch"))?;
    let calls: Vec<Vec<u8>> =
        postcard::from_bytes(body).map_err(|e| DecodeError::new(format!("batch: {e}")))?;
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        answers.push(handle(call).await);
    }
    postcard::to_allocvec(&answers).map_err(|e| DecodeError::new(format!("batch answer: {e}")))
}
