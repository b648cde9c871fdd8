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
//!   than at the next tick; on the node's workers only when it would wait
//!   behind them (`Kernel::ready_waits_for_hogs`: not when it went to the
//!   waking worker's `next`, nor when an idle worker can take it), so a hog
//!   that keeps waking one receiver does not yield once per message;
//! - a hog's yield waits (bounded by `HOG_MAX_WAIT` slices) until nothing is
//!   waiting, so the ready services run first on both threads.
//!
//!
//! Across tenants, hogs share the threads by weight (weighted fair
//! queueing on CPU time): each tenant with running hogs has a virtual time,
//! its hogs' CPU time divided by its weight. A hog whose tenant is more than
//! a slice ahead of the least-advanced other busy tenant waits at its yield
//! (bounded, like the wait for ready services) while the others catch up.
//! A tenant that becomes busy starts at the others' virtual time, so idling
//! earns it no burst.
//!
//! The counts are hints for scheduling only; nothing else depends on them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::tenant::Tenant;

/// A tenant's place in the fair share of the threads.
#[derive(Debug, Default)]
pub(crate) struct Share {
    /// CPU time of its hogs divided by its weight, in ns.
    vtime: AtomicU64,
    /// Its services running past a whole slice now.
    hogs: AtomicUsize,
}

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
    /// Tenants with hogs running.
    busy: Mutex<Vec<Arc<Tenant>>>,
    /// Woken when a busy tenant's virtual time moves or it stops being busy.
    turn: Notify,
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

    /// A dispatch of a service of `tenant` became a hog.
    pub fn hog_started(&self, tenant: &Arc<Tenant>) {
        self.hogs.fetch_add(1, Ordering::AcqRel);
        if tenant.share.hogs.fetch_add(1, Ordering::AcqRel) == 0 {
            let mut busy = self.busy();
            if let Some(floor) = busy
                .iter()
                .map(|t| t.share.vtime.load(Ordering::Acquire))
                .min()
            {
                tenant.share.vtime.fetch_max(floor, Ordering::AcqRel);
            }
            busy.push(tenant.clone());
        }
    }

    /// A hog's dispatch ended.
    pub fn hog_ended(&self, tenant: &Tenant) {
        self.hogs.fetch_sub(1, Ordering::AcqRel);
        if tenant.share.hogs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.busy().retain(|t| t.id != tenant.id);
            self.turn.notify_waiters();
        }
    }

    /// Charges `tenant` for `ran` of a hog's CPU time.
    pub fn charge(&self, tenant: &Tenant, ran: Duration) {
        let ns = u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX);
        let weight = u64::from(tenant.quotas.weight.max(1));
        tenant.share.vtime.fetch_add(ns / weight, Ordering::AcqRel);
        self.turn.notify_waiters();
    }

    fn busy(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Tenant>>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `tenant` is more than `slice` of virtual time ahead of
    /// another busy tenant.
    fn ahead(&self, tenant: &Tenant, slice: Duration) -> bool {
        let mine = tenant.share.vtime.load(Ordering::Acquire);
        let slack = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
        self.busy().iter().any(|t| {
            t.id != tenant.id && t.share.vtime.load(Ordering::Acquire).saturating_add(slack) < mine
        })
    }

    /// What a hog of `tenant` awaits when it yields: one turn for others,
    /// then until no service is waiting and its tenant is not ahead of its
    /// share (at most `HOG_MAX_WAIT` slices).
    pub async fn hog_yield(self: Arc<Self>, tenant: Arc<Tenant>, slice: Duration) {
        YieldOnce(false).await;
        let deadline = tokio::time::Instant::now() + slice * HOG_MAX_WAIT;
        loop {
            let idle = self.idle.notified();
            let turn = self.turn.notified();
            let waiting = self.has_waiting();
            if !waiting && !self.ahead(&tenant, slice) {
                return;
            }
            let woken = async {
                if waiting {
                    idle.await;
                } else {
                    turn.await;
                }
            };
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
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

    fn tenant(name: &str, weight: u32) -> Arc<Tenant> {
        let config: crate::config::TenantConfig =
            toml::from_str(&format!("name = \"{name}\"\n[limits]\nweight = {weight}\n"))
                .expect("tenant table");
        Arc::new(Tenant::new(&config, &crate::config::Limits::default()))
    }

    #[test]
    fn ready_marks_pair_up_and_only_hogs_interrupt() {
        let s = Scheduler::default();
        let t = tenant("t", 1);
        let (a, b) = (AtomicBool::new(false), AtomicBool::new(false));
        assert!(!s.mark_ready(&a), "no hogs: nothing to interrupt");
        assert!(
            !s.mark_ready(&a),
            "a second mark of the same service is not counted"
        );
        s.hog_started(&t);
        assert!(s.mark_ready(&b));
        assert!(s.has_waiting());
        s.clear_ready(&a);
        s.clear_ready(&a);
        assert!(s.has_waiting(), "b still waits");
        s.clear_ready(&b);
        assert!(!s.has_waiting());
        s.hog_ended(&t);
        assert!(!s.mark_ready(&a));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hog_waits_for_ready_services_but_not_forever() {
        let s = Arc::new(Scheduler::default());
        let t = tenant("t", 1);
        let ready = AtomicBool::new(false);
        s.mark_ready(&ready);
        let slice = Duration::from_millis(1);
        let started = tokio::time::Instant::now();
        s.clone().hog_yield(t.clone(), slice).await;
        assert_eq!(started.elapsed(), slice * HOG_MAX_WAIT, "bounded wait");

        let waiter = tokio::spawn(s.clone().hog_yield(t, slice));
        tokio::task::yield_now().await;
        s.clear_ready(&ready);
        waiter.await.expect("hog resumed");
        assert!(
            started.elapsed() < slice * (HOG_MAX_WAIT + 1),
            "woken when nothing waited"
        );
    }

    /// A hog whose own mailbox filled while it ran (the answers to calls it
    /// made, say) steps aside (`Mailbox::stepped_aside` clears its mark):
    /// its yield waits for the others' messages, never for its own, which
    /// only the end of its dispatch can take.
    #[tokio::test(start_paused = true)]
    async fn a_hog_does_not_wait_for_its_own_messages() {
        let s = Arc::new(Scheduler::default());
        let t = tenant("t", 1);
        let (own, other) = (AtomicBool::new(false), AtomicBool::new(false));
        s.hog_started(&t);
        s.mark_ready(&own);
        s.clear_ready(&own);
        let started = tokio::time::Instant::now();
        s.clone()
            .hog_yield(t.clone(), Duration::from_millis(1))
            .await;
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait for itself");
        // Another service's messages are still waited for.
        s.mark_ready(&other);
        let waiter = tokio::spawn(s.clone().hog_yield(t, Duration::from_millis(1)));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.clear_ready(&other);
        waiter.await.expect("hog resumed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_ahead_of_its_weighted_share_waits_for_the_others() {
        let s = Arc::new(Scheduler::default());
        let (light, heavy) = (tenant("light", 1), tenant("heavy", 3));
        let slice = Duration::from_millis(1);
        s.hog_started(&light);
        s.hog_started(&heavy);
        // Three slices each: light is 3 slices of virtual time in, heavy 1.
        s.charge(&light, slice * 3);
        s.charge(&heavy, slice * 3);
        assert!(s.ahead(&light, slice));
        assert!(!s.ahead(&heavy, slice));

        let started = tokio::time::Instant::now();
        let waiter = tokio::spawn(s.clone().hog_yield(light.clone(), slice));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "light waits while heavy catches up");
        s.charge(&heavy, slice * 6);
        waiter.await.expect("light resumed");
        assert!(started.elapsed() < slice, "resumed when heavy caught up");

        // A tenant that turns busy starts level with the others.
        let late = tenant("late", 1);
        s.hog_started(&late);
        assert!(!s.ahead(&light, slice) && !s.ahead(&late, slice));
        s.hog_ended(&heavy);
        s.hog_ended(&light);
        assert!(!s.ahead(&late, slice), "alone, nobody is ahead");
    }
}
