//! The workers alone: plain futures, no services.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Workers;

const WITHIN: Duration = Duration::from_secs(10);

/// Waits (on tokio) until `done` holds, at most `WITHIN`.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Many tasks each wait on a channel; senders on many threads race to wake
/// them. Every message is taken: no wake-up is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wake_up_is_lost_under_racing_sends() {
    const TASKS: usize = 64;
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 2_000;
    let slice = Duration::from_millis(1);
    let workers = Workers::start(2).expect("workers start");
    let taken = Arc::new(AtomicUsize::new(0));
    let mut inboxes = Vec::new();
    for _ in 0..TASKS {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        inboxes.push(tx);
        let taken = taken.clone();
        workers.spawn(slice, async move {
            while rx.recv().await.is_some() {
                taken.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let inboxes = inboxes.clone();
            std::thread::spawn(move || {
                for i in 0..PER_SENDER {
                    let _ = inboxes[(s * 7 + i) % TASKS].send(1);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender");
    }
    let total = SENDERS * PER_SENDER;
    until("every message taken", || {
        taken.load(Ordering::Relaxed) == total
    })
    .await;
    assert_eq!(taken.load(Ordering::Relaxed), total);
    drop(inboxes);
    workers.stop();
}

/// A task woken by a task on a worker runs next on that worker's thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_task_runs_next_on_the_waking_thread() {
    let slice = Duration::from_millis(1);
    let workers = Workers::start(2).expect("workers start");
    let (ping_tx, mut ping_rx) = tokio::sync::mpsc::unbounded_channel::<std::thread::ThreadId>();
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<std::thread::ThreadId>();
    let same = Arc::new(AtomicUsize::new(0));
    let seen = same.clone();
    workers.spawn(slice, async move {
        while let Some(from) = ping_rx.recv().await {
            if from == std::thread::current().id() {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            if pong_tx.send(std::thread::current().id()).is_err() {
                return;
            }
        }
    });
    let rounds = Arc::new(AtomicUsize::new(0));
    let counted = rounds.clone();
    workers.spawn(slice, async move {
        for _ in 0..1_000 {
            if ping_tx.send(std::thread::current().id()).is_err() {
                return;
            }
            if pong_rx.recv().await.is_none() {
                return;
            }
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    until("1,000 rounds", || rounds.load(Ordering::Relaxed) == 1_000).await;
    // Apart from a steal now and then, the pair shares one thread.
    assert!(
        same.load(Ordering::Relaxed) > 900,
        "{} of 1,000 pings ran on the thread that sent them",
        same.load(Ordering::Relaxed)
    );
    workers.stop();
}

/// A server that many tasks call goes behind its callers, not in `next`:
/// on one worker, every caller's request is in before it runs, so it takes
/// them in one batch instead of one round trip per caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_many_call_takes_their_requests_in_one_batch() {
    const CALLERS: usize = 16;
    const ROUNDS: usize = 50;
    let slice = Duration::from_millis(1);
    let workers = Workers::start(1).expect("workers start");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<()>>();
    let batches = Arc::new(AtomicUsize::new(0));
    let counted = batches.clone();
    workers.spawn(slice, async move {
        while let Some(first) = rx.recv().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let _ = first.send(());
            while let Ok(more) = rx.try_recv() {
                let _ = more.send(());
            }
        }
    });
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..CALLERS {
        let tx = tx.clone();
        let done = done.clone();
        workers.spawn(slice, async move {
            for _ in 0..ROUNDS {
                let (reply, answer) = tokio::sync::oneshot::channel();
                if tx.send(reply).is_err() || answer.await.is_err() {
                    return;
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(tx);
    until("every caller's rounds", || {
        done.load(Ordering::Relaxed) == CALLERS
    })
    .await;
    let calls = CALLERS * ROUNDS;
    let batches = batches.load(Ordering::Relaxed);
    assert!(
        batches * 4 <= calls,
        "{calls} calls took {batches} batches: the server ran between its callers"
    );
    workers.stop();
}

/// A task that keeps its worker busy leaves the work it queued to the
/// other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_s_queue_is_stolen() {
    let slice = Duration::from_secs(1);
    let workers = Arc::new(Workers::start(2).expect("workers start"));
    let ran_on = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (busy_thread_tx, busy_thread_rx) = std::sync::mpsc::channel();
    let spawner = workers.clone();
    let record = ran_on.clone();
    workers.spawn(slice, async move {
        let _ = busy_thread_tx.send(std::thread::current().id());
        for _ in 0..8 {
            let record = record.clone();
            spawner.spawn(slice, async move {
                record
                    .lock()
                    .expect("record")
                    .push(std::thread::current().id());
            });
        }
        // Busy for a while without yielding: the 8 must be run elsewhere.
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    });
    let busy = busy_thread_rx
        .recv_timeout(WITHIN)
        .expect("the busy task ran");
    until("the 8 ran", || ran_on.lock().expect("record").len() == 8).await;
    assert!(
        ran_on.lock().expect("record").iter().all(|&t| t != busy),
        "work waited for the busy worker"
    );
    workers.stop();
}

/// Fresh work never waits behind tasks that keep using whole slices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_work_goes_before_hogs() {
    let slice = Duration::from_millis(2);
    let workers = Workers::start(1).expect("workers start");
    let hog_polls = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..4 {
        let polls = hog_polls.clone();
        let stop = stop.clone();
        workers.spawn(
            slice,
            std::future::poll_fn(move |cx| {
                if stop.load(Ordering::Relaxed) {
                    return std::task::Poll::Ready(());
                }
                // A whole slice, then a yield.
                let until = Instant::now() + Duration::from_millis(3);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                polls.fetch_add(1, Ordering::Relaxed);
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }),
        );
    }
    until("the hogs run", || hog_polls.load(Ordering::Relaxed) >= 8).await;
    for _ in 0..5 {
        let before = Arc::new(AtomicUsize::new(usize::MAX));
        let at_start = before.clone();
        let polls = hog_polls.clone();
        let queued = hog_polls.load(Ordering::Relaxed);
        workers.spawn(slice, async move {
            at_start.store(polls.load(Ordering::Relaxed), Ordering::Relaxed);
        });
        until("the fresh task ran", || {
            before.load(Ordering::Relaxed) != usize::MAX
        })
        .await;
        // At most the hog running when it was queued finished its slice first.
        let waited = before.load(Ordering::Relaxed) - queued;
        assert!(waited <= 1, "fresh work waited for {waited} hog slices");
    }
    stop.store(true, Ordering::Relaxed);
    workers.stop();
}

/// Stopping joins the threads and drops what was still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_joins_the_threads_and_drops_queued_work() {
    let slice = Duration::from_millis(1);
    let workers = Workers::start(2).expect("workers start");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let dropped = Arc::new(AtomicUsize::new(0));
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let guard = Guard(dropped.clone());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    workers.spawn(slice, async move {
        let _guard = guard;
        let _ = started_tx.send(());
        let _ = rx.await;
    });
    started_rx.recv_timeout(WITHIN).expect("the task started");
    tokio::task::spawn_blocking(move || workers.stop())
        .await
        .expect("stopped");
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "still waiting");
    // Woken after the stop: no worker runs it, and its future goes.
    drop(tx);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

/// A task that panics ends alone; the worker runs the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_ends_alone() {
    let slice = Duration::from_millis(1);
    let workers = Workers::start(1).expect("workers start");
    workers.spawn(slice, async { panic!("a task's own failure") });
    let ran = Arc::new(AtomicUsize::new(0));
    let after = ran.clone();
    workers.spawn(slice, async move {
        after.fetch_add(1, Ordering::SeqCst);
    });
    until("the next task ran", || ran.load(Ordering::SeqCst) == 1).await;
    workers.stop();
}

/// Sockets and timers made on a worker are its own: a worker asleep in its
/// driver wakes for them, and one that is spinning or busy sees them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_wakes_for_its_own_sockets_and_timers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slice = Duration::from_millis(1);
    // No backstop: a wake-up lost in the driver would hang the test.
    let workers = Workers::start_with_park(1, Duration::from_secs(3600)).expect("workers start");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let echoed = Arc::new(AtomicUsize::new(0));
    let counted = echoed.clone();
    // The worker's task connects (its socket is the worker's), then waits
    // on a timer and on reads that come while the worker sleeps.
    workers.spawn(slice, async move {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut byte = [0u8; 1];
        for _ in 0..10 {
            stream.read_exact(&mut byte).await.expect("read");
            stream.write_all(&byte).await.expect("write");
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let (mut peer, _) = tokio::task::spawn_blocking(move || listener.accept())
        .await
        .expect("accept task")
        .expect("accept");
    peer.set_read_timeout(Some(WITHIN)).expect("read timeout");
    for i in 0..10u8 {
        // Long enough for the worker to stop spinning and sleep.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut answer = [0u8; 1];
        let echoed_byte = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            peer.write_all(&[i]).expect("send");
            peer.read_exact(&mut answer).expect("answer");
            (peer, answer[0])
        })
        .await
        .expect("exchange");
        peer = echoed_byte.0;
        assert_eq!(echoed_byte.1, i);
    }
    until("every byte echoed", || echoed.load(Ordering::SeqCst) == 10).await;
    workers.stop();
}

/// Nodes of one process that ask for as many workers share one pool,
/// which stops when the last lets go.
#[test]
fn nodes_of_a_process_share_one_pool_per_size() {
    let a = Workers::shared(3).expect("pool");
    let b = Workers::shared(3).expect("pool");
    assert!(Arc::ptr_eq(&a, &b), "one pool of three");
    let other = Workers::shared(4).expect("pool");
    assert!(!Arc::ptr_eq(&a, &other), "another size, another pool");
    let weak = Arc::downgrade(&a);
    drop((a, b));
    assert!(weak.upgrade().is_none(), "the last holder stopped it");
    let again = Workers::shared(3).expect("a pool started anew");
    drop(again);
}
