//! Deterministic simulation (issue 25, docs/simulation.md): the real harbor
//! code of several nodes in one process, on turmoil's simulated network and
//! clock, with faults drawn from a seed and the promises of the node checked
//! against a model after every run.
//!
//! ```text
//!  seed ─> faults (partition, hang, crash, delay)  ─> turmoil::Sim ─┐
//!  seed ─> traffic per node (calls, sends)          ─> each host:   │ Kernel (fake guests)
//!                                                                   │ + Harbor over SimNet
//!  every delivery, reply, error ─> Model ─> check() ─> violations  <┘
//! ```
//!
//! Who owns what: the test's step loop owns the `Sim` and the fault
//! schedule; each simulated host owns one node (a `Kernel` with the
//! runtime's fake guests and a `Harbor` whose sockets come from [`SimNet`]);
//! one [`model::Model`] (shared by every host: turmoil runs them all on the
//! test's thread) records what was asked and what happened.
//!
//! Determinism: turmoil steps the hosts in a fixed order on one thread,
//! its network draws from the seed, each host's traffic draws from its own
//! generator seeded from the seed, and the links' backoff jitter comes
//! from fastrand's thread-local generator, which a run seeds first.
//!
//! Seeds: `SKYHOST_SIM_SEEDS=N` runs seeds 1..=N, `SKYHOST_SIM_SEED=S`
//! runs exactly S; a failure names its seed and the command that replays it.

mod cluster;
mod harbor;
mod model;
mod world;

use std::cell::Cell;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::transport::net::{BoxFuture, Listener, Net, Socket};

/// turmoil's network as a node's [`Net`] (one per simulated host). Every
/// host listens on all of its interfaces (turmoil binds nothing else), at
/// the port its address names; peers dial `host:port` by the host's name.
#[derive(Default)]
pub(crate) struct SimNet {
    /// Every socket the host made or took, oldest first.
    open: Arc<Mutex<Vec<Weak<Slot>>>>,
}

/// One socket, which [`SimNet::close_all`] can take from its owner.
type Slot = Mutex<Option<turmoil::net::TcpStream>>;

impl SimNet {
    /// Closes every socket of the host, oldest first, as its system does
    /// when its process dies. Closed here rather than when turmoil drops
    /// the host's runtime, whose tasks drop in an order that depends on
    /// tokio's task ids (a process-wide count): each close is a segment
    /// whose latency turmoil draws from the seed, so an order that changed
    /// from run to run would change every later latency.
    pub fn close_all(&self) {
        let open = std::mem::take(&mut *lock(&self.open));
        for slot in open.iter().filter_map(Weak::upgrade) {
            drop(lock(&slot).take());
        }
    }

    fn track(open: &Mutex<Vec<Weak<Slot>>>, stream: turmoil::net::TcpStream) -> Socket {
        let slot = Arc::new(Mutex::new(Some(stream)));
        lock(open).push(Arc::downgrade(&slot));
        Socket::Stream(Box::new(SimStream(slot)))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Net for SimNet {
    fn connect<'a>(&'a self, address: &'a str) -> BoxFuture<'a, io::Result<Socket>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(address).await?;
            Ok(Self::track(&self.open, stream))
        })
    }

    fn bind(&self, address: &str) -> io::Result<Box<dyn Listener>> {
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no port"))?;
        let every = SocketAddr::from(([0, 0, 0, 0], port));
        // turmoil's bind finishes without waiting: it only claims the port.
        let mut bind = std::pin::pin!(turmoil::net::TcpListener::bind(every));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match bind.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(listener) => Ok(Box::new(SimListener {
                listener: listener?,
                open: self.open.clone(),
            })),
            std::task::Poll::Pending => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the simulated bind waited",
            )),
        }
    }
}

/// A listener of turmoil's network.
struct SimListener {
    listener: turmoil::net::TcpListener,
    open: Arc<Mutex<Vec<Weak<Slot>>>>,
}

impl Listener for SimListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<(Socket, SocketAddr)>> {
        Box::pin(async move {
            let (stream, from) = self.listener.accept().await?;
            Ok((SimNet::track(&self.open, stream), from))
        })
    }
}

/// A simulated socket its host may close under its owner.
struct SimStream(Arc<Slot>);

impl SimStream {
    fn with<T>(
        &self,
        f: impl FnOnce(Pin<&mut turmoil::net::TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match lock(&self.0).as_mut() {
            Some(stream) => f(Pin::new(stream)),
            None => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_shutdown(cx))
    }
}

/// The seeds a simulation test runs: `SKYHOST_SIM_SEED` alone, or
/// `1..=SKYHOST_SIM_SEEDS`, or `1..=default`.
pub(crate) fn seeds(default: u64) -> Vec<u64> {
    let read = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(seed) = read("SKYHOST_SIM_SEED") {
        return vec![seed];
    }
    (1..=read("SKYHOST_SIM_SEEDS").unwrap_or(default)).collect()
}

/// Runs `run` for every seed of [`seeds`], on as many threads as the
/// machine has cores (each simulation runs whole on one thread); the
/// failure of the lowest seed panics with its seed, what went wrong, and
/// the command that replays exactly it.
pub(crate) fn for_each_seed(
    test: &str,
    default: u64,
    run: impl Fn(u64) -> Result<(), String> + Sync,
) {
    let seeds = seeds(default);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(seeds.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { return };
                    if let Err(why) = run(seed) {
                        lock(&failures).push((seed, why));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some((seed, why)) = failures.iter().min_by_key(|(seed, _)| *seed) {
        // Which promises broke, over every failed seed: one cause or several.
        let mut promises = std::collections::BTreeMap::<&str, usize>::new();
        for (_, why) in &failures {
            for line in why.lines().skip(1) {
                let promise = line.split_once(':').map_or(line, |(p, _)| p);
                *promises.entry(promise).or_default() += 1;
            }
        }
        panic!(
            "{} of {} simulation seeds failed (promises broken: {promises:?}); the first, \
             {seed}:\n{why}\nreplay: \
             SKYHOST_SIM_SEED={seed} cargo test -p skyhost --lib {test} -- --exact",
            failures.len(),
            seeds.len()
        );
    }
}

/// With `SKYHOST_SIM_LOG` set (a log filter, e.g. `skyhost=debug`), the
/// nodes' logs go to stderr: how a replayed seed is looked into.
pub(crate) fn log_if_asked() {
    let Ok(filter) = std::env::var("SKYHOST_SIM_LOG") else {
        return;
    };
    if let Ok(filter) = crate::config::log_filter(&filter) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
    }
}

/// A promise the harbor or cluster code breaks on purpose, in a test that
/// shows the model catches it (each invariant can fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Break {
    /// A peer delivers every answer it receives twice.
    AnswerTwice,
    /// A dropped link's requests in flight are not failed.
    KeepCallsInFlight,
    /// What a dropped link lost is not sent again.
    NoResend,
    /// A node's global names outlive it: the master does not say they are
    /// gone, and the other nodes keep them when told the node left.
    KeepNames,
    /// A link waits for a handshake that never finishes as long as its
    /// peer keeps the connection (a malformed peer ties it up).
    WaitForHandshakes,
    /// A receiver keeps no record of the one-way messages that arrived:
    /// it asks for everything kept again and delivers what comes twice.
    NoDedupe,
    /// A link to a host that does not answer is waited for as long as
    /// the system's connect takes (the calls waiting for it with it).
    WaitForConnects,
}

/// The breaks both harbor and cluster links can have, and the promise each
/// breaks.
const LINK_BREAKS: [(Break, &str); 4] = [
    (Break::AnswerTwice, "ended more than once"),
    (Break::KeepCallsInFlight, "hung"),
    (Break::NoResend, "silently lost"),
    (Break::NoDedupe, "delivered more than once"),
];

/// Each link break, and each of a world's own `cases`, makes a seed of
/// 1..=60 fail, naming its promise.
pub(crate) fn breaks_are_caught(
    run: impl Fn(u64) -> Result<Vec<String>, String>,
    cases: &[(Break, &str)],
) {
    for &(what, promise) in LINK_BREAKS.iter().chain(cases) {
        let failure = with_broken(what, || {
            (1..=60).find_map(|seed| run(seed).err().map(|why| (seed, why)))
        });
        let (seed, why) = failure.unwrap_or_else(|| panic!("{what:?}: no seed failed"));
        assert!(
            why.lines().any(|l| l.starts_with(promise)),
            "{what:?} (seed {seed}) should break `{promise}`:\n{why}"
        );
    }
}

/// Two runs of each seed give the same events at the same simulated times.
pub(crate) fn replays(run: impl Fn(u64) -> Result<Vec<String>, String>, seeds: &[u64]) {
    for &seed in seeds {
        let first = run(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let again = run(seed).unwrap_or_else(|e| panic!("seed {seed} again: {e}"));
        let differs = (0..first.len().max(again.len())).find(|&i| first.get(i) != again.get(i));
        if let Some(i) = differs {
            panic!(
                "seed {seed}: the runs part at event {i}: {:?} against {:?}",
                first.get(i),
                again.get(i)
            );
        }
    }
}

thread_local! {
    /// The break in force on this thread (turmoil runs a whole simulation
    /// on the test's thread).
    static BROKEN: Cell<Option<Break>> = const { Cell::new(None) };
}

/// Whether `what` is broken on purpose on this thread.
pub(crate) fn broken(what: Break) -> bool {
    BROKEN.with(|b| b.get() == Some(what))
}

/// Runs `f` with `what` broken on this thread.
fn with_broken<T>(what: Break, f: impl FnOnce() -> T) -> T {
    BROKEN.with(|b| b.set(Some(what)));
    let out = f();
    BROKEN.with(|b| b.set(None));
    out
}
