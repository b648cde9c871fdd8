//! Fresh work first: a service that has used a whole time slice (a "hog")
//! steps aside while other services have messages waiting to be picked up.
//!
//! Every service is a tokio task, and a running guest yields at each epoch
//! tick. Without more, a woken service queues behind every hog on its
//! thread, one slice each (16 spinners on 2 threads: a ping waits ~1 ms).
//! So:
//! - a mailbox that goes from empty to non-empty marks its service *ready*
//!   and counts it in `waiting`; the service clears the mark when it takes
//!   its batch;
//! - when a service becomes ready while hogs are running, the engine's
//!   epoch is advanced at once, so every hog reaches its deadline now rather
//!   than at the next tick;
//! - a hog's yield waits (bounded by `HOG_MAX_WAIT` slices) until nothing is
//!   waiting, so the ready services run first on both threads.
//!
//! The counts are hints for scheduling only; nothing else depends on them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// How many slices a hog waits at most for ready services before it runs
/// again anyway, so a flood of fresh work cannot starve it.
const HOG_MAX_WAIT: u32 = 8;

/// The node-wide scheduling hints.
#[derive(Default)]
pub(crate) struct Scheduler {
    /// Services with messages that their task has not picked up yet.
    waiting: AtomicUsize,
    /// Services running past a whole time slice in their current dispatch.
    hogs: AtomicUsize,
    /// Woken when `waiting` drops to zero.
    idle: Notify,
}

impl Scheduler {
    /// A mailbox went from empty to non-empty. Returns whether running hogs
    /// should be interrupted now.
    pub fn mark_ready(&self, ready: &AtomicBool) -> bool {
        if ready.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.hogs.load(Ordering::Acquire) > 0
    }

    /// The service took its messages (or ended).
    pub fn clear_ready(&self, ready: &AtomicBool) {
        if ready.swap(false, Ordering::AcqRel) && self.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Whether any service is waiting to be picked up.
    pub fn has_waiting(&self) -> bool {
        self.waiting() > 0
    }

    /// How many services have messages their task has not picked up.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// A dispatch became a hog.
    pub fn hog_started(&self) {
        self.hogs.fetch_add(1, Ordering::AcqRel);
    }

    /// A hog's dispatch ended.
    pub fn hog_ended(&self) {
        self.hogs.fetch_sub(1, Ordering::AcqRel);
    }

    /// What a hog awaits when it yields: one turn for others, then until no
    /// service is waiting (at most `HOG_MAX_WAIT` slices).
    pub async fn hog_yield(self: Arc<Self>, slice: Duration) {
        YieldOnce(false).await;
        let deadline = tokio::time::Instant::now() + slice * HOG_MAX_WAIT;
        loop {
            let idle = self.idle.notified();
            if !self.has_waiting() {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

/// Pending once (waking itself at once), then ready: a turn for other
/// tasks. Unlike `tokio::task::yield_now` it does not rely on the runtime's
/// deferred wake-ups, which a future polled from inside a wasm fiber's
/// yield does not reliably see.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_marks_pair_up_and_only_hogs_interrupt() {
        let s = Scheduler::default();
        let (a, b) = (AtomicBool::new(false), AtomicBool::new(false));
        assert!(!s.mark_ready(&a), "no hogs: nothing to interrupt");
        assert!(
            !s.mark_ready(&a),
            "a second mark of the same service is not counted"
        );
        s.hog_started();
        assert!(s.mark_ready(&b));
        assert!(s.has_waiting());
        s.clear_ready(&a);
        s.clear_ready(&a);
        assert!(s.has_waiting(), "b still waits");
        s.clear_ready(&b);
        assert!(!s.has_waiting());
        s.hog_ended();
        assert!(!s.mark_ready(&a));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hog_waits_for_ready_services_but_not_forever() {
        let s = Arc::new(Scheduler::default());
        let ready = AtomicBool::new(false);
        s.mark_ready(&ready);
        let slice = Duration::from_millis(1);
        let started = tokio::time::Instant::now();
        s.clone().hog_yield(slice).await;
        assert_eq!(started.elapsed(), slice * HOG_MAX_WAIT, "bounded wait");

        let waiter = tokio::spawn(s.clone().hog_yield(slice));
        tokio::task::yield_now().await;
        s.clear_ready(&ready);
        waiter.await.expect("hog resumed");
        assert!(
            started.elapsed() < slice * (HOG_MAX_WAIT + 1),
            "woken when nothing waited"
        );
    }
}
