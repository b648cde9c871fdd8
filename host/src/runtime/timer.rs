//! The node's timers: one task holds every pending timer in a heap and
//! delivers each as a `response` message when its deadline passes, in
//! deadline order (ties in the order they were set).

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
    /// The trace id of the dispatch that set it, carried by its `response`.
    trace: u64,
}

/// What the timer task is asked to hold: deadline, service, session, trace id.
type Order = (Instant, Address, Session, u64);

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

    /// Delivers a `response` with `session` (and `trace`) to `dest` at `deadline`.
    pub fn start(&self, deadline: Instant, dest: Address, session: Session, trace: u64) {
        // Fails only once the node is shutting down, when no timer matters.
        let _ = self.tx.send((deadline, dest, session, trace));
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
            () = shutdown.cancelled() => return,
            new = rx.recv() => match new {
                Some((deadline, dest, session, trace)) => {
                    seq += 1;
                    heap.push(Reverse(Timer { deadline, seq, dest, session, trace }));
                }
                None => return,
            },
            () = sleep_until(next) => {
                let Some(kernel) = kernel.upgrade() else { return };
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse(t)| t.deadline <= now) {
                    let Some(Reverse(t)) = heap.pop() else { break };
                    let m = Message { kind: kind::RESPONSE, source: t.dest, session: t.session, tenant: crate::runtime::TenantId::HOST, payload: Default::default(), trace: t.trace };
                    let _ = kernel.deliver(t.dest, m);
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
