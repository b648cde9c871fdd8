//! The node's timers: one task holds every pending timer in a heap and
//! delivers each when its deadline passes, in deadline order (ties in the
//! order they were set): a `response` for `timeout`, or a `Timeout` error
//! that ends a `call-timeout` (dropped as late by the service when the
//! call's answer came first).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Weak;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Address, Kernel, Message, Session, kind};

/// One pending timer.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    deadline: Instant,
    seq: u64,
    dest: Address,
    session: Session,
    /// The trace id of the dispatch that set it, carried by its message.
    trace: u64,
    /// `Some(ms)`: it ends a call not answered within `ms` with an error.
    expires_call: Option<u32>,
}

/// What the timer task is asked to hold: deadline, service, session, trace
/// id, and what it ends.
type Order = (Instant, Address, Session, u64, Option<u32>);

/// The sending side of the node's timer task.
pub(crate) struct Timers {
    tx: mpsc::UnboundedSender<Order>,
}

impl Timers {
    /// Creates the timer channel; [`run`] serves its other end.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Order>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Timers { tx }, rx)
    }

    /// Delivers a `response` with `session` (and `trace`) to `dest` at
    /// `deadline`; with `expires_call`, a `Timeout` error instead.
    pub fn start(
        &self,
        deadline: Instant,
        dest: Address,
        session: Session,
        trace: u64,
        expires_call: Option<u32>,
    ) {
        // Fails only once the node is shutting down, when no timer matters.
        let _ = self.tx.send((deadline, dest, session, trace, expires_call));
    }
}

/// Serves the timers until the node shuts down (or is dropped).
pub(crate) async fn run(
    kernel: Weak<Kernel>,
    mut rx: mpsc::UnboundedReceiver<Order>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut heap: BinaryHeap<Reverse<Timer>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next = heap.peek().map(|Reverse(t)| t.deadline);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            new = rx.recv() => match new {
                Some((deadline, dest, session, trace, expires_call)) => {
                    seq += 1;
                    heap.push(Reverse(Timer { deadline, seq, dest, session, trace, expires_call }));
                }
                None => return,
            },
            () = sleep_until(next) => {
                let Some(kernel) = kernel.upgrade() else { return };
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse(t)| t.deadline <= now) {
                    let Some(Reverse(t)) = heap.pop() else { break };
                    let _ = kernel.deliver(t.dest, t.message());
                }
            }
        }
    }
}

impl Timer {
    /// What it delivers when it fires.
    fn message(&self) -> Message {
        let mut m = match self.expires_call {
            None => Message {
                kind: kind::RESPONSE,
                source: self.dest,
                session: self.session,
                tenant: crate::runtime::TenantId::HOST,
                payload: Default::default(),
                trace: 0,
            },
            Some(ms) => Message::error(
                Address(0),
                self.session,
                super::ErrorCause::Timeout,
                &format!("call not answered within {ms} ms"),
            ),
        };
        m.trace = self.trace;
        m
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
