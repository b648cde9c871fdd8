//! A single-threaded executor for the tasks of one service.
//!
//! Tasks live in a slab (`Vec<Slot>` plus a free list); a task's id is its
//! slot index. Each task has one [`TaskWaker`]: waking it pushes the id on a
//! shared ready queue (once, until the task is polled again). `run_ready`
//! pops ids and polls those tasks until the queue is empty; tasks waiting on a
//! session stay parked in their slot and cost nothing.
//!
//! Why `Arc` and `Mutex` in a single-threaded guest: `std::task::Waker` must be
//! `Send + Sync`, so the waker is an `Arc<TaskWaker>` built with
//! [`std::task::Wake`] (no `unsafe`), and the queue it pushes to sits behind a
//! `Mutex` that is never contended. The futures themselves are not `Send`
//! (they hold `Rc` state) and never leave the slab.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Wake, Waker};

/// A boxed future that need not be `Send`.
pub(crate) type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Ids of tasks that were woken and wait to be polled.
#[derive(Default)]
struct ReadyQueue(Mutex<VecDeque<usize>>);

impl ReadyQueue {
    fn push(&self, id: usize) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(id);
    }

    fn pop(&self) -> Option<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

/// Wakes one task: queues its id unless it is queued already.
struct TaskWaker {
    id: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.push(self.id);
        }
    }
}

/// One place in the slab.
enum Slot {
    /// Free; its index is on the free list. Keeps the last task's waker
    /// when nothing else holds it, so the next task here reuses it.
    Vacant(Option<Arc<TaskWaker>>),
    /// A task that is not being polled right now.
    Parked {
        future: LocalFuture<()>,
        waker: Arc<TaskWaker>,
    },
    /// A task taken out of the slab while it is polled.
    Running,
}

/// The task slab and its ready queue.
#[derive(Default)]
pub(crate) struct Executor {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    ready: Arc<ReadyQueue>,
}

impl Executor {
    /// Adds a task and queues it for its first poll. Returns its id.
    pub(crate) fn spawn(&self, future: LocalFuture<()>) -> usize {
        let (id, waker) = self.vacant_slot();
        waker.wake_by_ref();
        self.slots.borrow_mut()[id] = Slot::Parked { future, waker };
        id
    }

    /// Adds a task and polls it at once, before any task already queued:
    /// a handler that finishes without waiting never touches the ready
    /// queue (most messages). Returns its id.
    pub(crate) fn spawn_now(&self, mut future: LocalFuture<()>) -> usize {
        let (id, waker) = self.vacant_slot();
        self.slots.borrow_mut()[id] = Slot::Running;
        let done = {
            let task_waker = Waker::from(Arc::clone(&waker));
            let mut cx = Context::from_waker(&task_waker);
            future.as_mut().poll(&mut cx).is_ready()
        };
        self.settle(id, future, waker, done);
        id
    }

    /// A free slot and a waker for it (the slot's old one when only the
    /// slot held it: no stale wake can then reach the new task).
    fn vacant_slot(&self) -> (usize, Arc<TaskWaker>) {
        let mut slots = self.slots.borrow_mut();
        let id = match self.free.borrow_mut().pop() {
            Some(id) => id,
            None => {
                slots.push(Slot::Vacant(None));
                slots.len() - 1
            }
        };
        let kept = match std::mem::replace(&mut slots[id], Slot::Vacant(None)) {
            Slot::Vacant(Some(w)) if Arc::strong_count(&w) == 1 => Some(w),
            _ => None,
        };
        let waker = kept.unwrap_or_else(|| {
            Arc::new(TaskWaker {
                id,
                queued: AtomicBool::new(false),
                ready: Arc::clone(&self.ready),
            })
        });
        waker.queued.store(false, Ordering::Release);
        (id, waker)
    }

    /// Puts a polled task back, or frees its slot when it finished.
    fn settle(&self, id: usize, future: LocalFuture<()>, waker: Arc<TaskWaker>, done: bool) {
        let mut slots = self.slots.borrow_mut();
        if done {
            drop(future);
            slots[id] = Slot::Vacant(Some(waker));
            self.free.borrow_mut().push(id);
        } else {
            slots[id] = Slot::Parked { future, waker };
        }
    }

    /// Polls woken tasks until none is ready. Tasks may spawn or wake tasks
    /// while they run; those run in the same call. Returns how many polls ran.
    ///
    /// A task that wakes itself on every poll keeps this loop busy: like a
    /// Skynet coroutine that never yields, it holds the service.
    pub(crate) fn run_ready(&self) -> usize {
        let mut polls = 0;
        while let Some(id) = self.ready.pop() {
            let taken = {
                let mut slots = self.slots.borrow_mut();
                match slots.get_mut(id) {
                    Some(slot @ Slot::Parked { .. }) => std::mem::replace(slot, Slot::Running),
                    // A stale wake for a finished task, or one for a task
                    // that is polling right now (it is queued again).
                    _ => continue,
                }
            };
            let Slot::Parked { mut future, waker } = taken else {
                continue;
            };
            // Clear before polling: a wake during the poll queues it again.
            waker.queued.store(false, Ordering::Release);
            polls += 1;
            let done = {
                // Dropped before `settle`, so a finished task's waker is
                // held by its slot alone and can be reused.
                let task_waker = Waker::from(Arc::clone(&waker));
                let mut cx = Context::from_waker(&task_waker);
                future.as_mut().poll(&mut cx).is_ready()
            };
            self.settle(id, future, waker, done);
        }
        polls
    }

    /// How many tasks exist (parked, queued or running): every slot not
    /// on the free list.
    pub(crate) fn live_tasks(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::task::Poll;

    use super::*;

    /// A one-shot value a test fills in by hand, waking whoever waits.
    #[derive(Default)]
    struct Gate {
        value: Cell<Option<u32>>,
        waker: RefCell<Option<Waker>>,
    }

    impl Gate {
        fn open(&self, v: u32) {
            self.value.set(Some(v));
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }

        async fn wait(self: Rc<Self>) -> u32 {
            std::future::poll_fn(|cx| match self.value.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    *self.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await
        }
    }

    #[test]
    fn parked_tasks_finish_in_the_order_they_are_woken() {
        let exec = Executor::default();
        let log = Rc::new(RefCell::new(Vec::new()));
        let gates: Vec<Rc<Gate>> = (0..3).map(|_| Rc::new(Gate::default())).collect();
        for (i, gate) in gates.iter().enumerate() {
            let (gate, log) = (Rc::clone(gate), Rc::clone(&log));
            exec.spawn(Box::pin(async move {
                let v = gate.wait().await;
                log.borrow_mut().push((i, v));
            }));
        }
        assert_eq!(exec.run_ready(), 3);
        assert_eq!(exec.live_tasks(), 3);
        assert!(log.borrow().is_empty());
        // Nothing woke: nothing is polled.
        assert_eq!(exec.run_ready(), 0);

        gates[2].open(20);
        gates[0].open(0);
        exec.run_ready();
        assert_eq!(*log.borrow(), vec![(2, 20), (0, 0)]);
        gates[1].open(10);
        exec.run_ready();
        assert_eq!(*log.borrow(), vec![(2, 20), (0, 0), (1, 10)]);
        assert_eq!(exec.live_tasks(), 0);
    }

    #[test]
    fn a_double_wake_polls_once_and_slots_are_reused() {
        let exec = Rc::new(Executor::default());
        let gate = Rc::new(Gate::default());
        let polls = Rc::new(Cell::new(0));
        {
            let (gate, polls) = (Rc::clone(&gate), Rc::clone(&polls));
            exec.spawn(Box::pin(async move {
                std::future::poll_fn(|cx| {
                    polls.set(polls.get() + 1);
                    if gate.value.get().is_some() {
                        Poll::Ready(())
                    } else {
                        *gate.waker.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    }
                })
                .await;
            }));
        }
        exec.run_ready();
        let waker = gate
            .waker
            .borrow()
            .clone()
            .expect("task registered a waker");
        waker.wake_by_ref();
        waker.wake_by_ref();
        exec.run_ready();
        assert_eq!(polls.get(), 2, "two wakes before a poll give one poll");
        gate.open(1);
        exec.run_ready();
        assert_eq!(exec.live_tasks(), 0);
        // A stale waker for the finished task does no harm, and the slot is reused.
        waker.wake();
        let id = exec.spawn(Box::pin(async {}));
        assert_eq!(id, 0);
        exec.run_ready();
        assert_eq!(exec.live_tasks(), 0);
    }

    #[test]
    fn spawn_now_runs_at_once_and_parks_what_waits() {
        let exec = Executor::default();
        let hits = Rc::new(Cell::new(0));
        let h = Rc::clone(&hits);
        exec.spawn_now(Box::pin(async move { h.set(h.get() + 1) }));
        assert_eq!((hits.get(), exec.live_tasks()), (1, 0));
        assert_eq!(exec.run_ready(), 0, "a finished task is not queued");
        let gate = Rc::new(Gate::default());
        let (g, h) = (Rc::clone(&gate), Rc::clone(&hits));
        let id = exec.spawn_now(Box::pin(async move {
            let v = g.wait().await;
            h.set(h.get() + v);
        }));
        assert_eq!(id, 0, "the finished task's slot is reused");
        assert_eq!(exec.live_tasks(), 1);
        gate.open(10);
        assert_eq!(exec.run_ready(), 1);
        assert_eq!((hits.get(), exec.live_tasks()), (11, 0));
    }

    #[test]
    fn tasks_spawned_while_running_run_in_the_same_pass() {
        let exec = Rc::new(Executor::default());
        let hits = Rc::new(Cell::new(0));
        let (exec2, hits2) = (Rc::clone(&exec), Rc::clone(&hits));
        exec.spawn(Box::pin(async move {
            let hits3 = Rc::clone(&hits2);
            exec2.spawn(Box::pin(async move { hits3.set(hits3.get() + 10) }));
            hits2.set(hits2.get() + 1);
        }));
        exec.run_ready();
        assert_eq!(hits.get(), 11);
        assert_eq!(exec.live_tasks(), 0);
    }
}
