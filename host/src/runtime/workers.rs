//! Worker threads of skyhost's own that run a node's services and links
//! (issue 22; the node file's `scheduler = "workers"`, tokio's tasks
//! otherwise).
//!
//! ```text
//!  wake on a worker ──> its `next` when the waker is the task that woke
//!                       it last time (a call's partner) or nothing is
//!                       queued there (what was in `next` goes to the back
//!                       of the fresh queue), else the back of its fresh
//!                       queue (a server many call takes their requests in
//!                       one batch); no syscall
//!  wake from outside ──> injector ──> a sleeping worker is woken
//!  socket, timer ──> the worker whose driver holds it
//!  worker picks: next → injector → own fresh → steal fresh → hogs (injector,
//!                own, steal) → spin ~50 µs (driver turned) → sleep in driver
//! ```
//!
//! A task is one service's future. One state word per task (idle,
//! scheduled, running, notified, done) decides who queues it, as Skynet's
//! `in_global` flag does: a wake while it runs only marks it, and the
//! worker that ran it queues it again. A poll that ran a whole time slice
//! makes the task a *hog* until it next returns quickly: a hog waits in a
//! queue of its own, looked at only when no fresh work is there, so a
//! woken service never queues behind spinning ones.
//!
//! A wake records where it put its task ([`take_placement`]): the kernel
//! interrupts running hogs for a service made ready only when it would
//! wait behind them (queued where any worker may take it, and no worker
//! idle); a service in the waking worker's `next` runs when that poll ends.
//!
//! Who owns what: `Workers` (one pool per process and size, held by the
//! `Kernel` of every node that runs on it) owns the threads and the shared
//! queues; each thread owns its `next` slot and its two local queues (in a
//! thread-local), which other workers steal from.
//!
//! Each worker runs inside a tokio runtime of its own (one thread, with
//! its own I/O and timer driver): a socket or timer made by a task on a
//! worker is that worker's, so its readiness wakes the worker that waits
//! for it, with no thread in between. An idle worker sleeps in its driver
//! (epoll), and a busy one turns its driver every [`TURN`] between polls.
//! Tasks a service spawns with tokio run on its worker's runtime.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_deque::{Injector, Steal, Stealer, Worker};

type Job = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

const IDLE: u8 = 0;
const SCHEDULED: u8 = 1;
const RUNNING: u8 = 2;
const NOTIFIED: u8 = 3;
const DONE: u8 = 4;

/// Most tasks in a row taken from `next` before the chain goes to the back
/// of the queue, so a ping-pong pair cannot starve the others.
const NEXT_BUDGET: u32 = 256;

/// How long an idle worker looks for work before it parks: a reply is
/// often microseconds away.
const SPIN: Duration = Duration::from_micros(50);

/// How long a parked worker sleeps before it looks again on its own (a
/// backstop: every queueing unparks a sleeper).
const PARK: Duration = Duration::from_millis(10);

/// How often a busy worker turns its driver (reads socket readiness and
/// fires timers): the most a socket or timer of its own waits for it.
const TURN: Duration = Duration::from_micros(100);

/// How often a spinning worker turns its driver: a reply on one of its
/// sockets is seen within this.
const SPIN_TURN: Duration = Duration::from_micros(5);

/// One task: a service's future and who may queue it.
struct Task {
    state: AtomicU8,
    /// Its last poll ran a whole slice.
    hog: AtomicBool,
    /// A poll this long makes it a hog (its node's time slice).
    slice: Duration,
    /// The task whose poll last woke it (its address; 0: none yet, or
    /// woken from outside a poll): see [`Shared::schedule`].
    woken_by: AtomicUsize,
    future: Mutex<Option<Job>>,
    shared: Arc<Shared>,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let to = match s {
                IDLE => SCHEDULED,
                RUNNING => NOTIFIED,
                _ => return,
            };
            match self
                .state
                .compare_exchange_weak(s, to, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if to == SCHEDULED => return self.shared.schedule(self.clone(), true),
                Ok(_) => return,
                Err(now) => s = now,
            }
        }
    }
}

/// A worker's place to sleep.
struct Sleeper {
    sleeping: AtomicBool,
    /// Wakes the worker's runtime out of its driver.
    waker: OnceLock<Waker>,
}

/// What the workers of one pool share.
struct Shared {
    /// Fresh work woken outside the pool.
    injector: Injector<Arc<Task>>,
    /// Hogs woken outside the pool.
    hog_injector: Injector<Arc<Task>>,
    /// Work for a worker that has nothing else to run (see
    /// [`Workers::spawn_when_idle`]).
    when_idle: Injector<Arc<Task>>,
    fresh: Vec<Stealer<Arc<Task>>>,
    hogs: Vec<Stealer<Arc<Task>>>,
    sleepers: Vec<Sleeper>,
    asleep: AtomicUsize,
    /// Workers looking for work or asleep (a hint: one of them takes work
    /// queued where it can steal it, without anyone yielding to it).
    idle: AtomicUsize,
    /// The longest a worker sleeps without being woken ([`PARK`]).
    park: Duration,
    stop: AtomicBool,
}

/// The thread-local side of a worker.
struct Local {
    shared: Arc<Shared>,
    index: usize,
    next: Option<Arc<Task>>,
    fresh: Worker<Arc<Task>>,
    hogs: Worker<Arc<Task>>,
    /// The worker is inside its driver (turning it, or asleep in it): a
    /// task that a socket or timer wakes there must wake the worker's loop.
    in_driver: bool,
    /// The task this worker last took to poll (its address; 0 when it
    /// found none, and while it is in its driver, so a socket's or timer's
    /// wake is nobody's partner).
    running: usize,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
    /// Where this thread's last wake put its task (see [`take_placement`]).
    static PLACED: Cell<Option<Placement>> = const { Cell::new(None) };
}

/// Where a wake put the task it queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// In the waking worker's `next`: it runs when the task running there
    /// ends its poll.
    Next,
    /// Where any worker can take it (a worker's queue of fresh work, or
    /// the pool's injector).
    Stealable,
    /// With the hogs.
    Hogs,
}

/// Where the last wake on this thread put its task, if one was queued
/// since the last call (a wake of a task that is running or already
/// queued queues nothing).
pub(crate) fn take_placement() -> Option<Placement> {
    PLACED.with(Cell::take)
}

/// A node's worker threads.
pub(crate) struct Workers {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Whether a worker is looking for work or asleep.
    pub(crate) fn has_idle(&self) -> bool {
        self.shared.idle.load(Ordering::Acquire) > 0
    }

    /// The process's pool of `n` workers, started by the first node that
    /// asks for it and shared by every node of the process that asks for
    /// as many (nodes started in one process, as tests and benchmarks do,
    /// share their threads as they share tokio's, instead of each pool
    /// spinning on the same cores). It stops when the last node lets go.
    ///
    /// # Errors
    /// When it has to be started and cannot be (see [`Workers::start`]).
    pub(crate) fn shared(n: usize) -> std::io::Result<Arc<Workers>> {
        static POOLS: Mutex<Vec<(usize, std::sync::Weak<Workers>)>> = Mutex::new(Vec::new());
        let n = n.max(1);
        let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|(_, pool)| pool.strong_count() > 0);
        if let Some(pool) = pools
            .iter()
            .find(|(threads, _)| *threads == n)
            .and_then(|(_, pool)| pool.upgrade())
        {
            return Ok(pool);
        }
        let pool = Arc::new(Workers::start(n)?);
        pools.push((n, Arc::downgrade(&pool)));
        Ok(pool)
    }

    /// Starts a pool of `n` workers (at least one).
    ///
    /// # Errors
    /// When a worker's runtime cannot be made (the OS refused an epoll or
    /// a thread).
    pub(crate) fn start(n: usize) -> std::io::Result<Workers> {
        Workers::start_with_park(n, PARK)
    }

    /// [`Workers::start`], with sleeps of at most `park` when not woken
    /// (tests make it long, so that a lost wake-up shows as a hang).
    pub(crate) fn start_with_park(n: usize, park: Duration) -> std::io::Result<Workers> {
        let n = n.max(1);
        let runtimes = (0..n)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let fresh: Vec<Worker<Arc<Task>>> = (0..n).map(|_| Worker::new_fifo()).collect();
        let hogs: Vec<Worker<Arc<Task>>> = (0..n).map(|_| Worker::new_fifo()).collect();
        let shared = Arc::new(Shared {
            injector: Injector::new(),
            hog_injector: Injector::new(),
            when_idle: Injector::new(),
            fresh: fresh.iter().map(Worker::stealer).collect(),
            hogs: hogs.iter().map(Worker::stealer).collect(),
            sleepers: (0..n)
                .map(|_| Sleeper {
                    sleeping: AtomicBool::new(false),
                    waker: OnceLock::new(),
                })
                .collect(),
            asleep: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            park,
            stop: AtomicBool::new(false),
        });
        let mut workers = Workers {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
        };
        for (index, ((fresh, hogs), runtime)) in
            fresh.into_iter().zip(hogs).zip(runtimes).enumerate()
        {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("skyhost-worker-{index}"))
                .spawn(move || {
                    LOCAL.with(|l| {
                        *l.borrow_mut() = Some(Local {
                            shared: shared.clone(),
                            index,
                            next: None,
                            fresh,
                            hogs,
                            in_driver: false,
                            running: 0,
                        });
                    });
                    runtime.block_on(run(&shared, index));
                    LOCAL.with(|l| l.borrow_mut().take());
                    // Tasks spawned on this worker's runtime end with it.
                    runtime.shutdown_background();
                });
            // On an error, those started leave when `workers` drops.
            let thread = thread?;
            workers
                .threads
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .push(thread);
        }
        Ok(workers)
    }

    /// Runs `future` on the workers; a poll of it that takes `slice` or
    /// longer makes it a hog.
    pub(crate) fn spawn(&self, slice: Duration, future: impl Future<Output = ()> + Send + 'static) {
        self.shared.schedule(self.task(slice, future), false);
    }

    /// A task of this pool, scheduled (queued by the caller).
    fn task(
        &self,
        slice: Duration,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> Arc<Task> {
        Arc::new(Task {
            state: AtomicU8::new(SCHEDULED),
            hog: AtomicBool::new(false),
            slice,
            woken_by: AtomicUsize::new(0),
            future: Mutex::new(Some(Box::pin(future))),
            shared: self.shared.clone(),
        })
    }

    /// Runs `future` when a worker has nothing else to run: before it
    /// spins or sleeps (it wakes no worker; after its first poll it is a
    /// task as any other). Work that comes while it runs goes to another
    /// worker, or waits for that poll to end.
    pub(crate) fn spawn_when_idle(
        &self,
        slice: Duration,
        future: impl Future<Output = ()> + Send + 'static,
    ) {
        self.shared.when_idle.push(self.task(slice, future));
    }

    /// Stops the workers and waits for their threads; tasks still queued
    /// are dropped unfinished. Call it after the node's services ended.
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        for s in &self.shared.sleepers {
            if let Some(w) = s.waker.get() {
                w.wake_by_ref();
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            // A worker cannot wait for itself: it leaves when it sees `stop`.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        // Queued tasks hold their futures (and what those hold): let go.
        while !self.shared.injector.steal().is_empty() {}
        while !self.shared.hog_injector.steal().is_empty() {}
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    /// Queues a task that was just marked scheduled. `woken`: by a wake
    /// (it may go to the waking worker's `next`), not a spawn.
    fn schedule(self: &Arc<Self>, task: Arc<Task>, woken: bool) {
        if self.stop.load(Ordering::Acquire) {
            // No worker will run it: let go of its future now.
            task.state.store(DONE, Ordering::Release);
            task.future.lock().unwrap_or_else(|e| e.into_inner()).take();
            return;
        }
        let hog = task.hog.load(Ordering::Acquire);
        let queued_here = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let Some(local) = l.as_mut().filter(|l| Arc::ptr_eq(&l.shared, self)) else {
                return Err(task);
            };
            // `next` is for a partner: a task woken by the same task as
            // last time (a caller and its server, a reply to a call). A task
            // woken by one task after another (a server many call) goes
            // behind the tasks queued here, so it takes their messages in
            // one batch rather than one round trip with each; with nothing
            // queued here it goes in `next` all the same (at the back of an
            // empty queue it would only wake a sleeping worker to steal it).
            let partner = woken
                && local.running != 0
                && task.woken_by.swap(local.running, Ordering::Relaxed) == local.running;
            let alone = woken && local.next.is_none() && local.fresh.is_empty();
            let placed = if hog {
                local.hogs.push(task);
                Placement::Hogs
            } else if partner || alone {
                if let Some(old) = local.next.replace(task) {
                    local.fresh.push(old);
                }
                Placement::Next
            } else {
                local.fresh.push(task);
                Placement::Stealable
            };
            PLACED.with(|p| p.set(Some(placed)));
            if std::mem::take(&mut local.in_driver) {
                // Woken by this worker's own socket or timer: its loop
                // must run again when the driver returns (once per turn:
                // each wake of the loop is an eventfd write).
                if let Some(w) = self.sleepers[local.index].waker.get() {
                    w.wake_by_ref();
                }
            }
            Ok(!local.fresh.is_empty())
        });
        match queued_here {
            // Work waits behind the running task here: a sleeper may take it.
            Ok(waiting) => {
                if waiting {
                    self.unpark_one();
                }
            }
            Err(task) => {
                PLACED.with(|p| {
                    p.set(Some(if hog {
                        Placement::Hogs
                    } else {
                        Placement::Stealable
                    }));
                });
                if hog {
                    self.hog_injector.push(task);
                } else {
                    self.injector.push(task);
                }
                self.unpark_one();
            }
        }
    }

    fn unpark_one(&self) {
        // Pairs with the fence in `run` after a worker says it sleeps: the
        // task queued before this fence is seen by that worker's last look,
        // or this load sees the worker asleep (store-then-load on both
        // sides needs SeqCst fences; Acquire/Release alone allows both to
        // miss).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Acquire) == 0 {
            return;
        }
        for s in &self.sleepers {
            if self.woke(s) {
                if let Some(w) = s.waker.get() {
                    w.wake_by_ref();
                }
                return;
            }
        }
    }

    /// Takes `s`'s sleeping mark (and its count in `asleep`); false when it
    /// was not asleep or someone else took the mark first.
    fn woke(&self, s: &Sleeper) -> bool {
        let took = s
            .sleeping
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if took {
            self.asleep.fetch_sub(1, Ordering::AcqRel);
        }
        took
    }

    /// The next task for worker `index` after its `next` slot: fresh work
    /// first, from anywhere, then hogs.
    fn find(&self, local: &Local) -> Option<Arc<Task>> {
        steal_one(&self.injector, &local.fresh)
            .or_else(|| local.fresh.pop())
            .or_else(|| steal_from(&self.fresh, local.index, &local.fresh))
            .or_else(|| steal_one(&self.hog_injector, &local.hogs))
            .or_else(|| local.hogs.pop())
            .or_else(|| steal_from(&self.hogs, local.index, &local.hogs))
    }
}

/// A task queued for when a worker is idle, if any.
fn steal_when_idle(shared: &Shared) -> Option<Arc<Task>> {
    loop {
        match shared.when_idle.steal() {
            Steal::Success(t) => return Some(t),
            Steal::Empty => return None,
            Steal::Retry => {}
        }
    }
}

/// A task from `injector` (and a batch more into `into`).
fn steal_one(injector: &Injector<Arc<Task>>, into: &Worker<Arc<Task>>) -> Option<Arc<Task>> {
    loop {
        match injector.steal_batch_and_pop(into) {
            Steal::Success(t) => return Some(t),
            Steal::Empty => return None,
            Steal::Retry => {}
        }
    }
}

/// A task stolen from another worker than `index` (half its queue into `into`).
fn steal_from(
    stealers: &[Stealer<Arc<Task>>],
    index: usize,
    into: &Worker<Arc<Task>>,
) -> Option<Arc<Task>> {
    let n = stealers.len();
    for k in 1..n {
        loop {
            match stealers[(index + k) % n].steal_batch_and_pop(into) {
                Steal::Success(t) => return Some(t),
                Steal::Empty => break,
                Steal::Retry => {}
            }
        }
    }
    None
}

/// The next task for this thread's worker, if any.
fn next_task(from_next: &mut u32) -> Option<Arc<Task>> {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let local = l.as_mut()?;
        if let Some(t) = local.next.take() {
            if *from_next < NEXT_BUDGET {
                *from_next += 1;
                local.running = Arc::as_ptr(&t) as usize;
                return Some(t);
            }
            local.fresh.push(t);
        }
        *from_next = 0;
        let t = local.shared.find(local);
        local.running = t.as_ref().map_or(0, |t| Arc::as_ptr(t) as usize);
        t
    })
}

/// A worker's loop (inside its runtime's `block_on`): run what there is,
/// turning the driver every [`TURN`]; spin a little, turning it every
/// [`SPIN_TURN`]; then sleep in the driver until a wake, a socket, a timer
/// or [`PARK`].
async fn run(shared: &Arc<Shared>, index: usize) {
    let me = &shared.sleepers[index];
    std::future::poll_fn(|cx| {
        let _ = me.waker.set(cx.waker().clone());
        Poll::Ready(())
    })
    .await;
    let mut from_next = 0u32;
    // One clock read per poll: where a poll ends the next one starts.
    let mut now = Instant::now();
    let mut turned = now;
    while !shared.stop.load(Ordering::Acquire) {
        if let Some(t) = next_task(&mut from_next) {
            now = poll(t, now);
            if now.duration_since(turned) >= TURN {
                in_driver(tokio::task::yield_now()).await;
                now = Instant::now();
                turned = now;
            }
            continue;
        }
        if let Some(t) = steal_when_idle(shared) {
            now = poll(t, now);
            continue;
        }
        shared.idle.fetch_add(1, Ordering::AcqRel);
        let found = spin(&mut from_next).await;
        now = Instant::now();
        turned = now;
        if let Some(t) = found {
            shared.idle.fetch_sub(1, Ordering::AcqRel);
            now = poll(t, now);
            continue;
        }
        me.sleeping.store(true, Ordering::Release);
        shared.asleep.fetch_add(1, Ordering::AcqRel);
        std::sync::atomic::fence(Ordering::SeqCst);
        // Checked again after saying so: a task queued before this point
        // is found now, one queued after it wakes this worker's driver
        // (see `unpark_one`).
        let found = next_task(&mut from_next);
        if found.is_none() && !shared.stop.load(Ordering::Acquire) {
            let _ = in_driver(tokio::time::timeout(shared.park, sleep_until_woken())).await;
        }
        shared.woke(me);
        shared.idle.fetch_sub(1, Ordering::AcqRel);
        now = Instant::now();
        turned = now;
        if let Some(t) = found {
            now = poll(t, now);
        }
    }
}

/// Looks for work for [`SPIN`], turning the driver every [`SPIN_TURN`].
async fn spin(from_next: &mut u32) -> Option<Arc<Task>> {
    let spin_until = Instant::now() + SPIN;
    // First a turn of the driver: what this worker just wrote to a socket
    // of the process (another node on loopback) is often ready already.
    let mut turn_at = Instant::now();
    loop {
        std::hint::spin_loop();
        if let Some(t) = next_task(from_next) {
            return Some(t);
        }
        let now = Instant::now();
        if now >= spin_until {
            return None;
        }
        if now >= turn_at {
            in_driver(tokio::task::yield_now()).await;
            turn_at = Instant::now() + SPIN_TURN;
        }
    }
}

/// Awaits `f` (which hands the thread to the worker's runtime) marked as
/// inside the driver (see `Local::in_driver`).
async fn in_driver<T>(f: impl Future<Output = T>) -> T {
    let set = |on: bool| {
        LOCAL.with(|l| {
            if let Some(local) = l.borrow_mut().as_mut() {
                local.in_driver = on;
                local.running = 0;
            }
        });
    };
    set(true);
    let out = f.await;
    set(false);
    out
}

/// Pending once: the worker's runtime sleeps in its driver until the
/// worker's waker (see [`Sleeper`]), a socket or a timer wakes it.
async fn sleep_until_woken() {
    let mut slept = false;
    std::future::poll_fn(|_| {
        if std::mem::replace(&mut slept, true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// Polls `task` once on this worker (starting at `started`), and queues it
/// again if it was woken while it ran. Returns when the poll ended.
fn poll(task: Arc<Task>, started: Instant) -> Instant {
    task.state.store(RUNNING, Ordering::Release);
    let waker = Waker::from(task.clone());
    let mut cx = Context::from_waker(&waker);
    let done = {
        let mut slot = task.future.lock().unwrap_or_else(|e| e.into_inner());
        // A task that panics ends alone, as a tokio task does: the worker
        // goes on with the others.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            slot.as_mut()
                .is_some_and(|f| f.as_mut().poll(&mut cx).is_pending())
        }));
        let pending = polled.unwrap_or_else(|_| {
            tracing::error!("a task on the node's workers panicked; it is dropped");
            false
        });
        if !pending {
            *slot = None;
        }
        !pending
    };
    let ended = Instant::now();
    if done {
        task.state.store(DONE, Ordering::Release);
        return ended;
    }
    task.hog
        .store(ended - started >= task.slice, Ordering::Release);
    if task
        .state
        .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Woken while it ran (a yield): behind what is queued, not in `next`.
        task.state.store(SCHEDULED, Ordering::Release);
        let shared = task.shared.clone();
        shared.schedule(task, false);
    }
    ended
}

#[cfg(test)]
mod tests;
