//! A service's receiving side: its mailbox's queue, the messages an
//! upgrade kept aside, and when its current turn on its thread began.
//! The service loop takes its batches from it; when the service ends,
//! every request in it (aside or queued) is answered with an error.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::{Kernel, Message};

/// A service's receiving side (see the module doc).
pub(crate) struct Inbox {
    pub(super) rx: UnboundedReceiver<Message>,
    /// Messages an upgrade kept aside: older than anything in
    /// the mailbox, taken before it. Still counted in the mailbox's length.
    pub(super) aside: VecDeque<Message>,
    /// When this service's current turn on its thread began (in
    /// [`Kernel::ticks`]): a service with a backlog keeps its thread for a
    /// time slice.
    pub(super) turn_started: u64,
}

impl Inbox {
    pub(super) fn new(rx: UnboundedReceiver<Message>, now: u64) -> Self {
        Inbox {
            rx,
            aside: VecDeque::new(),
            turn_started: now,
        }
    }

    /// Whether this service's turn has used its time slice.
    pub(super) fn turn_over(&self, kernel: &Kernel) -> bool {
        let slice = Duration::from_micros(kernel.limits.time_slice_us);
        kernel.ticks_between(self.turn_started, kernel.ticks()) >= slice
    }
}
