//! The node's timers: every pending timer sits in one ordered map, and one
//! task delivers each when its deadline passes, in deadline order (ties in
//! the order they were set): a `response` for `timeout`, or a `Timeout`
//! error that ends a `call-timeout`.
//!
//! Setting a timer takes the map's lock and wakes the task only when the new
//! deadline comes before the one it sleeps to (with many calls timed out
//! after the same few seconds, almost never). A `call-timeout` answered in
//! time cancels its timer ([`Timers::cancel`], under the same lock, waking
//! nobody), so a node that makes a million timed calls a second holds
//! timers only for the calls still waiting, and no expiry is delivered for a
//! call that has ended. A timer that fired before its cancel came is
//! dropped by the service as a late answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Address, Kernel, Message, Session, kind};

/// Names one pending timer, for [`Timers::cancel`]: its deadline and the
/// order it was set in, which is also its place in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerKey {
    deadline: Instant,
    seq: u64,
}

/// What one pending timer delivers.
#[derive(Debug)]
struct Timer {
    dest: Address,
    session: Session,
    /// The trace id of the dispatch that set it, carried by its message.
    trace: u64,
    /// `Some(ms)`: it ends a call not answered within `ms` with an error.
    expires_call: Option<u32>,
}

/// The pending timers, in firing order.
#[derive(Default)]
struct Pending {
    due: BTreeMap<TimerKey, Timer>,
    seq: u64,
    /// The deadline the task sleeps to (`None`: it sleeps until told).
    wake_at: Option<Instant>,
}

/// The node's pending timers; [`run`] fires them. Dropping it (with the
/// kernel) ends that task.
pub(crate) struct Timers {
    shared: Arc<Shared>,
}

/// What the timers and their task share.
#[derive(Default)]
pub(crate) struct Shared {
    pending: Mutex<Pending>,
    /// Told when a timer is due before the deadline the task sleeps to, and
    /// when the timers are dropped.
    earlier: Notify,
    closed: AtomicBool,
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.earlier.notify_one();
    }
}

impl Timers {
    /// No timers yet, and what [`run`] needs to fire them.
    pub fn new() -> (Self, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        (
            Timers {
                shared: shared.clone(),
            },
            shared,
        )
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
    ) -> TimerKey {
        let timer = Timer {
            dest,
            session,
            trace,
            expires_call,
        };
        let (key, sooner) = {
            let mut p = self.shared.lock();
            p.seq += 1;
            let key = TimerKey {
                deadline,
                seq: p.seq,
            };
            p.due.insert(key, timer);
            let sooner = p.wake_at.is_none_or(|at| deadline < at);
            if sooner {
                p.wake_at = Some(deadline);
            }
            (key, sooner)
        };
        if sooner {
            self.shared.earlier.notify_one();
        }
        key
    }

    /// Drops the timer `key` if it has not fired: whether it was pending.
    /// The task is not woken; it finds the timer gone when it next looks.
    pub fn cancel(&self, key: TimerKey) -> bool {
        self.shared.lock().due.remove(&key).is_some()
    }

    /// How many timers are pending.
    pub fn len(&self) -> usize {
        self.shared.lock().due.len()
    }
}

impl Shared {
    /// Takes the timers due at `now`, in firing order, and notes the
    /// deadline the task will sleep to.
    fn take_due(&self, now: Instant) -> (Vec<Timer>, Option<Instant>) {
        let mut p = self.lock();
        let mut fired = Vec::new();
        while let Some(entry) = p.due.first_entry() {
            if entry.key().deadline > now {
                break;
            }
            fired.push(entry.remove());
        }
        p.wake_at = p.due.first_key_value().map(|(k, _)| k.deadline);
        (fired, p.wake_at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Fires the node's timers until the node shuts down or drops them.
pub(crate) async fn run(
    kernel: Weak<Kernel>,
    timers: Arc<Shared>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    while !timers.closed.load(Ordering::Acquire) {
        let (fired, next) = timers.take_due(Instant::now());
        if !fired.is_empty() {
            let Some(kernel) = kernel.upgrade() else {
                return;
            };
            for t in &fired {
                let _ = kernel.deliver(t.dest, t.message());
            }
        }
        // A `start` after `take_due` is not missed: `notify_one` leaves a
        // permit when nobody waits yet.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = timers.earlier.notified() => {}
            () = sleep_until(next) => {}
        }
    }
}

impl Timer {
    /// What it delivers when it fires.
    fn message(&self) -> Message {
        match self.expires_call {
            Some(ms) => expiry(self.session, ms, self.trace),
            None => Message {
                kind: kind::RESPONSE,
                source: self.dest,
                session: self.session,
                tenant: crate::runtime::TenantId::HOST,
                payload: Default::default(),
                trace: self.trace,
            },
        }
    }
}

/// The `Timeout` error that ends a call `session` not answered within `ms`.
pub(crate) fn expiry(session: Session, ms: u32, trace: u64) -> Message {
    Message {
        trace,
        ..Message::error(
            Address(0),
            session,
            super::ErrorCause::Timeout,
            &format!("call not answered within {ms} ms"),
        )
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
