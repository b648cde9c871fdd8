//! Taps: a copy of each message a service takes and sends, for whoever
//! watches it (`watch <target>` on the control address, `skyhost ctl
//! watch`), as Erlang's `sys:trace` shows a process's messages.
//!
//! Each service's usage line holds a [`Taps`]: a flag
//! the service's task reads once per batch and once per message sent (off:
//! nothing else happens), and the watchers' channels. A watcher gets the
//! messages' heads, not their whole payloads, through a bounded channel
//! filled with `try_send`: a slow watcher loses events (counted, shown as
//! a gap), the service never waits for it. A watcher that has gone is
//! dropped at the next event; the service's end closes every channel.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use super::{Address, Message};

/// Bytes of each payload a watcher gets.
pub const HEAD: usize = 64;
/// Events a watcher may fall behind by before it loses some.
const BACKLOG: usize = 1024;

/// Which way a tapped message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Taken by the watched service.
    In,
    /// Sent by it.
    Out,
}

/// One message of a watched service.
#[derive(Debug, Clone)]
pub struct Tapped {
    /// Taken or sent.
    pub direction: Direction,
    /// Where it came from (`In`) or goes (`Out`).
    pub peer: Address,
    /// Its kind (`crate::kind`).
    pub kind: u8,
    /// Its session.
    pub session: u32,
    /// Its payload's size.
    pub size: usize,
    /// The first [`HEAD`] bytes of its payload.
    pub head: Vec<u8>,
    /// Events this watcher lost just before this one (it fell behind).
    pub lost: u64,
}

/// The watchers of one service.
#[derive(Default)]
pub(crate) struct Taps {
    on: AtomicBool,
    watchers: Mutex<Vec<Watcher>>,
}

struct Watcher {
    events: mpsc::Sender<Tapped>,
    lost: u64,
}

impl std::fmt::Debug for Taps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taps").field("on", &self.is_on()).finish()
    }
}

impl Taps {
    /// Whether anyone watches (read on the service's hot path).
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// A new watcher's events.
    pub fn add(&self) -> mpsc::Receiver<Tapped> {
        let (events, received) = mpsc::channel(BACKLOG);
        let mut watchers = self.lock();
        watchers.push(Watcher { events, lost: 0 });
        self.on.store(true, Ordering::Relaxed);
        received
    }

    /// Hands `m` to every watcher; drops those that have gone.
    pub fn send(&self, direction: Direction, peer: Address, m: &Message) {
        let mut watchers = self.lock();
        watchers.retain_mut(|w| {
            let event = Tapped {
                direction,
                peer,
                kind: m.kind,
                session: m.session,
                size: m.payload.len(),
                head: m.payload[..m.payload.len().min(HEAD)].to_vec(),
                lost: w.lost,
            };
            match w.events.try_send(event) {
                Ok(()) => {
                    w.lost = 0;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.lost += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.on.store(!watchers.is_empty(), Ordering::Relaxed);
    }

    /// The service ended: every watcher's channel closes.
    pub fn close(&self) {
        let mut watchers = self.lock();
        watchers.clear();
        self.on.store(false, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watcher>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}
