//! A service's instance, lent to callers while its task waits for mail
//! (the direct hand-off, docs/scheduler.md).
//!
//! While its mailbox is empty, a service's task puts its instance here
//! ([`Lease::offer`]) and waits for mail. A caller on the same node that
//! finds it here may take it ([`Lease::borrow`]), run the callee's
//! `dispatch` with its request inside its own `call` import, and put it
//! back when the dispatch returns. The task takes its instance back
//! ([`Lease::reclaim`]) before it runs it again, waiting while it is lent.
//!
//! The instance is owned by whoever took it last: the task, a borrower, or
//! the lease itself, which drops what it holds when it is dropped. A task
//! dropped while its instance is lent (a node stopping) leaves it to the
//! borrower, which puts it back into the lease; nothing waits on a task
//! that will not run again.

use std::any::TypeId;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::{Poll, Waker};

use super::GuestFailure;

/// The type an instance was offered as, and how to drop one.
struct Kind {
    id: TypeId,
    drop: unsafe fn(*mut ()),
}

/// Drops the `Box<G>` behind `ptr`.
///
/// # Safety
/// `ptr` came from `Box::<G>::into_raw` and nobody else holds it.
unsafe fn drop_boxed<G>(ptr: *mut ()) {
    // SAFETY: as the function's contract says.
    drop(unsafe { Box::from_raw(ptr.cast::<G>()) });
}

/// A service's instance, offered between batches (see the module doc).
#[derive(Default)]
pub(crate) struct Lease {
    /// The offered instance (a `Box<G>` of `kind`), or null while the
    /// task or a borrower holds it.
    slot: AtomicPtr<()>,
    kind: OnceLock<Kind>,
    /// The task waiting to take its instance back while it is lent. Locked
    /// by the task's slow path and by the borrower's return, so the two
    /// cannot miss each other.
    waiter: Mutex<Option<Waker>>,
    /// A lent dispatch that failed: the task ends the service with it.
    failure: Mutex<Option<GuestFailure>>,
    /// Set with `failure`, so the task's check after each wait for mail
    /// takes no lock when nothing failed.
    failed: AtomicBool,
}

impl Lease {
    /// Offers `instance` to callers until [`reclaim`](Self::reclaim).
    pub(crate) fn offer<G: Send + 'static>(&self, instance: Box<G>) {
        let kind = self.kind.get_or_init(|| Kind {
            id: TypeId::of::<G>(),
            drop: drop_boxed::<G>,
        });
        debug_assert_eq!(kind.id, TypeId::of::<G>());
        let old = self
            .slot
            .swap(Box::into_raw(instance).cast(), Ordering::Release);
        debug_assert!(old.is_null(), "an instance offered twice");
    }

    /// Takes the offered instance back, waiting while a caller runs it.
    pub(crate) async fn reclaim<G: Send + 'static>(&self) -> Box<G> {
        poll_fn(|cx| {
            if let Some(instance) = self.take::<G>() {
                return Poll::Ready(instance);
            }
            let mut waiter = self.waiter.lock().unwrap_or_else(|e| e.into_inner());
            match self.take::<G>() {
                Some(instance) => Poll::Ready(instance),
                None => {
                    *waiter = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Borrows the offered instance, if one is offered and it is a `G`.
    pub(crate) fn borrow<G: Send + 'static>(&self) -> Option<Borrowed<'_, G>> {
        if self.kind.get()?.id != TypeId::of::<G>() {
            return None;
        }
        Some(Borrowed {
            lease: self,
            instance: Some(self.take::<G>()?),
        })
    }

    /// Whether an instance is offered now (a hint: it may be taken before
    /// a [`borrow`](Self::borrow)).
    pub(crate) fn offered(&self) -> bool {
        !self.slot.load(Ordering::Relaxed).is_null()
    }

    /// A lent dispatch's failure, for the task.
    pub(crate) fn take_failure(&self) -> Option<GuestFailure> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failed.store(false, Ordering::Relaxed);
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The offered instance, taken out of the slot.
    fn take<G>(&self) -> Option<Box<G>> {
        let ptr = self.slot.swap(std::ptr::null_mut(), Ordering::Acquire);
        // SAFETY: a non-null slot holds a `Box<G>` put there by `offer` or
        // a borrower's return (`offer` fixed the type, and the callers
        // checked it or are the task that offered it); the swap made this
        // caller its only holder.
        (!ptr.is_null()).then(|| unsafe { Box::from_raw(ptr.cast::<G>()) })
    }

    /// Puts a borrowed instance back and wakes the task waiting for it.
    fn give_back<G>(&self, instance: Box<G>) {
        let waiter = {
            let mut waiter = self.waiter.lock().unwrap_or_else(|e| e.into_inner());
            self.slot
                .store(Box::into_raw(instance).cast(), Ordering::Release);
            waiter.take()
        };
        if let Some(waker) = waiter {
            waker.wake();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let ptr = *self.slot.get_mut();
        if let (false, Some(kind)) = (ptr.is_null(), self.kind.get()) {
            // SAFETY: the slot holds a `Box` of `kind`'s type, and a lease
            // being dropped has no other holder.
            unsafe { (kind.drop)(ptr) };
        }
    }
}

/// An instance on loan; given back when dropped.
pub(crate) struct Borrowed<'a, G> {
    lease: &'a Lease,
    /// Always `Some` until dropped.
    instance: Option<Box<G>>,
}

impl<G> Borrowed<'_, G> {
    /// The lent instance.
    pub(crate) fn get(&mut self) -> &mut G {
        self.instance
            .as_deref_mut()
            .expect("a borrowed instance is held until dropped")
    }

    /// Ends the service that lent it: its task ends it on taking it back.
    pub(crate) fn failed(&self, failure: GuestFailure) {
        *self.lease.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
        self.lease.failed.store(true, Ordering::Release);
    }
}

impl<G> Drop for Borrowed<'_, G> {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            self.lease.give_back(instance);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake};

    use super::*;

    /// An instance that counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counted() -> (Box<Counted>, Arc<AtomicUsize>) {
        let drops = Arc::new(AtomicUsize::new(0));
        (Box::new(Counted(drops.clone())), drops)
    }

    #[test]
    fn the_task_waits_while_its_instance_is_lent_and_is_woken_when_it_returns() {
        let lease = Lease::default();
        let (instance, drops) = counted();
        lease.offer(instance);
        let mut lent = lease.borrow::<Counted>().expect("offered");
        assert!(lease.borrow::<Counted>().is_none(), "lent once at a time");
        let _ = lent.get();

        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut reclaim = pin!(lease.reclaim::<Counted>());
        assert!(reclaim.as_mut().poll(&mut cx).is_pending());
        drop(lent);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "woken by the return");
        let Poll::Ready(back) = reclaim.as_mut().poll(&mut cx) else {
            panic!("given back, yet not reclaimed");
        };
        assert!(lease.borrow::<Counted>().is_none(), "held by its task");
        drop(back);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_instance_of_another_type_is_not_lent() {
        let lease = Lease::default();
        let (instance, _) = counted();
        lease.offer(instance);
        assert!(lease.borrow::<u64>().is_none());
        assert!(lease.borrow::<Counted>().is_some());
    }

    #[test]
    fn what_the_lease_holds_when_it_goes_is_dropped_once() {
        // A task dropped with its instance offered, or with it lent: the
        // borrower puts it back, and the lease drops it.
        let lease = Lease::default();
        let (instance, drops) = counted();
        lease.offer(instance);
        drop(lease.borrow::<Counted>());
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        drop(lease);
        assert_eq!(drops.load(Ordering::Relaxed), 1);

        // Nothing offered: nothing to drop.
        drop(Lease::default());
    }

    #[test]
    fn a_failure_is_taken_once() {
        let lease = Lease::default();
        let (instance, _) = counted();
        lease.offer(instance);
        let lent = lease.borrow::<Counted>().expect("offered");
        lent.failed(GuestFailure {
            cause: super::super::ErrorCause::Trapped,
            reason: "trap".into(),
            class: super::super::StopReason::Trap,
        });
        drop(lent);
        assert_eq!(lease.take_failure().map(|f| f.reason), Some("trap".into()));
        assert!(lease.take_failure().is_none());
    }

    #[test]
    fn racing_borrowers_and_the_task_never_hold_it_together() {
        let lease = Arc::new(Lease::default());
        let (instance, drops) = counted();
        lease.offer(instance);
        let inside = Arc::new(AtomicUsize::new(0));
        let borrows = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lease, inside, borrows) = (lease.clone(), inside.clone(), borrows.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(mut lent) = lease.borrow::<Counted>() {
                            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                            let _ = lent.get();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            borrows.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        // The task takes it back and offers it again, over and over.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            for _ in 0..2_000 {
                let back = lease.reclaim::<Counted>().await;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                inside.fetch_sub(1, Ordering::SeqCst);
                lease.offer(back);
                tokio::task::yield_now().await;
            }
        });
        for t in threads {
            t.join().expect("a borrower");
        }
        assert!(borrows.load(Ordering::Relaxed) > 0);
        drop(lease);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }
}
