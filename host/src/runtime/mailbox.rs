//! A service's mailbox: a queue any thread pushes into and the service
//! empties in one swap per batch, with the counts that limits, warnings and
//! the scheduler read.
//!
//! The queue is a `VecDeque` behind a mutex, held for a push or a swap
//! (tens of ns), as Skynet's spinlocked ring and Lunatic's locked deque
//! are. The service swaps its own drained buffer in ([`Mailbox::take_into`]),
//! so taking a whole backlog costs one lock and no allocation, and the two
//! buffers keep their capacity between batches. An empty mailbox that never
//! held a message allocates nothing.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Poll, Waker};

use super::{Address, Kernel, Message, TenantId, kind};

/// A mailbox (see the module doc), with its length for limits and warnings.
///
/// The queue is unbounded, as in Skynet (a guest's `send` never blocks);
/// past `limit` (when set) an enqueue fails with `Overloaded`, and each time
/// the length passes a threshold (1024, then doubling) a warning is logged.
pub(crate) struct Mailbox {
    queue: Mutex<Queue>,
    /// Messages pushed and not yet handed to the service's guest (a message
    /// the service has swapped out but not dispatched still counts).
    pub(super) len: AtomicUsize,
    /// The most messages queued at once.
    pub(super) peak: AtomicUsize,
    pub(super) warn_at: AtomicUsize,
    /// Has messages its service has not picked up (see [`sched`](super::sched)).
    pub(super) ready: AtomicBool,
}

/// What the mutex guards.
#[derive(Default)]
struct Queue {
    messages: VecDeque<Message>,
    /// The service's task while it waits for a message.
    waiter: Option<Waker>,
    /// No push goes in any more; what is queued can still be taken.
    closed: bool,
}

const MAILBOX_WARN: usize = 1024;

/// A drained buffer bigger than this is dropped rather than kept for the
/// next swap, so a burst does not pin its memory on an idle service.
const KEEP_CAPACITY: usize = 1024;

impl Mailbox {
    pub(super) fn new() -> Self {
        Mailbox {
            queue: Mutex::default(),
            len: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            warn_at: AtomicUsize::new(MAILBOX_WARN),
            ready: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The guarded code cannot panic half-way (a push or a swap), so a
        // poisoned lock still guards a whole queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `message` and wakes the service if it waits; gives it back
    /// when the mailbox is closed.
    pub(super) fn push(&self, message: Message) -> Result<(), Message> {
        let waiter = {
            let mut queue = self.lock();
            if queue.closed {
                return Err(message);
            }
            queue.messages.push_back(message);
            queue.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        Ok(())
    }

    /// Queues every message of `run` (left empty) in order and wakes the
    /// service once; false, with the messages dropped, when the mailbox is
    /// closed.
    pub(super) fn push_run(&self, run: &mut Vec<Message>) -> bool {
        let waiter = {
            let mut queue = self.lock();
            if queue.closed {
                drop(queue);
                run.clear();
                return false;
            }
            queue.messages.extend(run.drain(..));
            queue.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        true
    }

    /// Lets go of the queue's memory when it holds nothing (its service is
    /// going to sleep): the buffer a swap left here would otherwise stay
    /// with a hibernated service (4 messages' worth after one call).
    pub(super) fn release_buffer(&self) {
        let mut queue = self.lock();
        if queue.messages.is_empty() && queue.messages.capacity() > 0 {
            queue.messages = VecDeque::new();
        }
    }

    /// A copy of what is queued, in order (tests look into mailboxes).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<Message> {
        self.lock().messages.iter().cloned().collect()
    }

    /// Moves every queued message to the back of `into` (one swap when
    /// `into` is empty). False when nothing was queued.
    pub(super) fn take_into(&self, into: &mut VecDeque<Message>) -> bool {
        let mut queue = self.lock();
        take(&mut queue, into)
    }

    /// Waits until messages are queued and moves them to the back of
    /// `into`; false once the mailbox is closed and empty.
    pub(super) async fn take_into_or_wait(&self, into: &mut VecDeque<Message>) -> bool {
        poll_fn(|cx| {
            let mut queue = self.lock();
            if take(&mut queue, into) {
                return Poll::Ready(true);
            }
            if queue.closed {
                return Poll::Ready(false);
            }
            match &mut queue.waiter {
                Some(waiter) if waiter.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The oldest of `pending` (taken earlier) and then of the mailbox,
    /// refilling `pending` in one swap and waiting while both are empty;
    /// `None` once the mailbox is closed and empty.
    pub(super) async fn next(&self, pending: &mut VecDeque<Message>) -> Option<Message> {
        if pending.is_empty() {
            self.take_into_or_wait(pending).await;
        }
        pending.pop_front()
    }

    /// Messages queued and not yet taken by the service.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Called by the service when it took `n` messages.
    pub fn taken(&self, n: usize) {
        self.len.fetch_sub(n, Ordering::Relaxed);
    }

    /// Called by the service when it picks up its messages.
    pub fn picked_up(&self, kernel: &Kernel) {
        kernel.sched.clear_ready(&self.ready);
    }

    /// Called when its service, a hog, steps aside in the middle of a
    /// dispatch: what is queued here waits for that dispatch to end, not
    /// for a thread, so it stops counting as fresh work waiting (else the
    /// hog would wait for itself at its yield, up to its bound, every
    /// slice). A push before the service takes its next batch does not
    /// mark it again: the mailbox is not empty.
    pub fn stepped_aside(&self, kernel: &Kernel) {
        kernel.sched.clear_ready(&self.ready);
    }

    /// Wakes the service through its queue without counting against its
    /// limit: `kill` and a dropped [`Client`](super::Client) use it; the service drops it.
    pub fn wake(&self, address: Address) {
        let wake = Message {
            kind: kind::SYSTEM,
            source: address,
            session: 0,
            tenant: TenantId::HOST,
            payload: Default::default(),
            trace: 0,
        };
        self.len.fetch_add(1, Ordering::Relaxed);
        if self.push(wake).is_err() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Called when the service has ended: pushes fail from now on, and a
    /// waiting receiver is woken to find the mailbox closed. What is queued
    /// stays for the service's end to take.
    pub fn close(&self, kernel: &Kernel) {
        let waiter = {
            let mut queue = self.lock();
            queue.closed = true;
            queue.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        kernel.sched.clear_ready(&self.ready);
    }
}

fn take(queue: &mut Queue, into: &mut VecDeque<Message>) -> bool {
    if queue.messages.is_empty() {
        return false;
    }
    if into.is_empty() {
        if into.capacity() > KEEP_CAPACITY {
            *into = VecDeque::new();
        }
        std::mem::swap(&mut queue.messages, into);
    } else {
        into.append(&mut queue.messages);
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn message(source: u32, session: u32) -> Message {
        Message {
            kind: kind::TEXT,
            source: Address::new(source, super::super::address::HarborId(1)),
            session,
            tenant: TenantId::HOST,
            payload: Default::default(),
            trace: 0,
        }
    }

    /// Racing pushes from many threads against a receiver that waits
    /// whenever the queue is empty: every message arrives, in each sender's
    /// order, and no wake-up is lost (a lost one leaves the receiver
    /// waiting past the deadline).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_pushes_all_arrive_in_order_with_no_lost_wake_up() {
        const SENDERS: u32 = 8;
        const EACH: u32 = 20_000;
        let mailbox = Arc::new(Mailbox::new());
        let senders: Vec<_> = (1..=SENDERS)
            .map(|s| {
                let mailbox = mailbox.clone();
                std::thread::spawn(move || {
                    for n in 0..EACH {
                        mailbox.push(message(s, n)).expect("open");
                        if n % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let receive = async {
            let mut next = vec![0u32; SENDERS as usize + 1];
            let mut batch = VecDeque::new();
            let mut count = 0;
            while count < SENDERS * EACH {
                assert!(mailbox.take_into_or_wait(&mut batch).await);
                for m in batch.drain(..) {
                    let s = m.source.local() as usize;
                    assert_eq!(m.session, next[s], "sender {s} out of order");
                    next[s] += 1;
                    count += 1;
                }
            }
            count
        };
        let count = tokio::time::timeout(Duration::from_secs(60), receive)
            .await
            .expect("every message within the deadline");
        assert_eq!(count, SENDERS * EACH);
        for s in senders {
            s.join().expect("sender");
        }
    }

    #[tokio::test]
    async fn a_closed_mailbox_refuses_pushes_and_still_gives_what_was_queued() {
        let kernel = super::super::tests::core(Default::default());
        let mailbox = Mailbox::new();
        mailbox.push(message(1, 1)).expect("open");
        mailbox.close(&kernel);
        assert_eq!(mailbox.push(message(1, 2)).map_err(|m| m.session), Err(2));
        let mut batch = VecDeque::new();
        assert!(mailbox.take_into_or_wait(&mut batch).await);
        assert_eq!(batch.pop_front().map(|m| m.session), Some(1));
        assert!(!mailbox.take_into_or_wait(&mut batch).await);
    }

    /// A mailbox emptied by a swap keeps the buffer it got back until its
    /// service goes to sleep; then it lets go of it, and only when empty.
    #[tokio::test]
    async fn an_empty_mailbox_lets_go_of_its_buffer_and_a_full_one_keeps_it() {
        let mailbox = Mailbox::new();
        let mut batch = VecDeque::with_capacity(64);
        mailbox.push(message(1, 1)).expect("open");
        assert!(mailbox.take_into_or_wait(&mut batch).await);
        assert!(
            mailbox.lock().messages.capacity() >= 64,
            "the swap's buffer"
        );
        mailbox.push(message(1, 2)).expect("open");
        mailbox.release_buffer();
        assert_eq!(mailbox.lock().messages.len(), 1, "kept while it holds one");
        batch.clear();
        assert!(mailbox.take_into_or_wait(&mut batch).await);
        mailbox.release_buffer();
        assert_eq!(mailbox.lock().messages.capacity(), 0);
    }

    /// A receiver waiting on an empty mailbox is woken by the close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_wakes_a_waiting_receiver() {
        let kernel = super::super::tests::core(Default::default());
        let handle = kernel.insert_service("host".into(), kernel.host_tenant.clone(), false);
        let waiting = {
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut batch = VecDeque::new();
                handle.mailbox.take_into_or_wait(&mut batch).await
            })
        };
        // Closed only once the receiver waits (else it would find the
        // mailbox closed without needing a wake).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while handle.mailbox.lock().waiter.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the receiver never waited"
            );
            tokio::task::yield_now().await;
        }
        handle.mailbox.close(&kernel);
        let got = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken within the deadline")
            .expect("task");
        assert!(!got);
    }
}
