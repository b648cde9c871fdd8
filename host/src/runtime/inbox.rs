//! A service's receiving side: the messages it has taken from its mailbox
//! (or an upgrade kept aside) and not yet dispatched, and when its current
//! turn on its thread began. The service loop takes its batches from it;
//! when the service ends, every request in it (taken or still queued) is
//! answered with an error.

use std::collections::VecDeque;
use std::time::Duration;

use super::{Kernel, Message, ServiceHandle};

/// A service's receiving side (see the module doc).
pub(crate) struct Inbox {
    /// Taken from the mailbox in one swap, or kept aside by an upgrade:
    /// older than anything still in the mailbox, so dispatched first.
    /// Still counted in the mailbox's length.
    pub(super) pending: VecDeque<Message>,
    /// When this service's current turn on its thread began (in
    /// [`Kernel::ticks`]): a service with a backlog keeps its thread for a
    /// time slice.
    pub(super) turn_started: u64,
}

impl Inbox {
    pub(super) fn new(now: u64) -> Self {
        Inbox {
            pending: VecDeque::new(),
            turn_started: now,
        }
    }

    /// Lets go of the buffer's memory when it holds nothing (a service
    /// going to sleep).
    pub(super) fn release_buffers(&mut self) {
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
    }

    /// The oldest message not yet dispatched, waiting for one if none is
    /// queued; `None` once the mailbox is closed and empty.
    pub(super) async fn next(&mut self, handle: &ServiceHandle) -> Option<Message> {
        handle.mailbox.next(&mut self.pending).await
    }

    /// The oldest message not yet dispatched, if one is queued.
    pub(super) fn try_next(&mut self, handle: &ServiceHandle) -> Option<Message> {
        if self.pending.is_empty() {
            handle.mailbox.take_into(&mut self.pending);
        }
        self.pending.pop_front()
    }

    /// Puts `kept` (taken in this order) back before everything not yet
    /// dispatched.
    pub(super) fn put_back(&mut self, kept: VecDeque<Message>) {
        for m in kept.into_iter().rev() {
            self.pending.push_front(m);
        }
    }

    /// Whether this service's turn has used its time slice.
    pub(super) fn turn_over(&self, kernel: &Kernel) -> bool {
        let slice = Duration::from_micros(kernel.limits.time_slice_us);
        kernel.ticks_between(self.turn_started, kernel.ticks()) >= slice
    }
}
