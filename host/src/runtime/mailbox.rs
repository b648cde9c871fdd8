//! A service's mailbox: the sending side every sender holds, with the
//! counts that limits, warnings and the scheduler read.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::{Address, Kernel, Message, TenantId, kind};

/// A mailbox's sending side, with its length for limits and warnings.
///
/// The queue itself is unbounded, as in Skynet (a guest's `send` never
/// blocks); past `limit` (when set) an enqueue fails with `Overloaded`, and
/// each time the length passes a threshold (1024, then doubling) a warning
/// is logged.
pub(crate) struct Mailbox {
    pub(super) tx: mpsc::UnboundedSender<Message>,
    pub(super) len: AtomicUsize,
    /// The most messages queued at once.
    pub(super) peak: AtomicUsize,
    pub(super) warn_at: AtomicUsize,
    /// Has messages its service has not picked up (see [`sched`](super::sched)).
    pub(super) ready: AtomicBool,
    /// The service has ended; nothing will pick messages up any more.
    pub(super) closed: AtomicBool,
}

const MAILBOX_WARN: usize = 1024;

impl Mailbox {
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<Message>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mailbox = Mailbox {
            tx,
            len: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            warn_at: AtomicUsize::new(MAILBOX_WARN),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        };
        (mailbox, rx)
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
        if self.tx.send(wake).is_err() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Called when the service has ended.
    pub fn close(&self, kernel: &Kernel) {
        self.closed.store(true, Ordering::SeqCst);
        kernel.sched.clear_ready(&self.ready);
    }
}
