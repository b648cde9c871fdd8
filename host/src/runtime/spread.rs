//! A count that many threads add to, each on a cache line of its own: an
//! add touches no line another thread writes, and a read sums a fixed
//! number of slots, whatever the number of services.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Slots per count: more than the threads that add to it on most nodes
/// (threads past it share slots, which stays correct).
const SLOTS: usize = 16;

/// A count added to from many threads (see the module doc).
pub(crate) struct SpreadCount {
    slots: Box<[CachePadded<AtomicU64>]>,
}

impl Default for SpreadCount {
    fn default() -> Self {
        SpreadCount {
            slots: (0..SLOTS)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }
}

impl SpreadCount {
    /// Adds `n` in this thread's slot.
    pub(crate) fn add(&self, n: u64) {
        self.slots[slot()].fetch_add(n, Ordering::Relaxed);
    }

    /// The count: every slot only grows, so a later read from one thread
    /// is never below an earlier one.
    pub(crate) fn sum(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// This thread's slot: threads take slots in the order they first add.
fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    SLOT.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn adds_from_more_threads_than_slots_are_all_counted() {
        let count = Arc::new(SpreadCount::default());
        let threads: Vec<_> = (0..SLOTS + 4)
            .map(|_| {
                let count = count.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        count.add(1);
                    }
                })
            })
            .collect();
        let mut last = 0;
        for t in threads {
            let now = count.sum();
            assert!(now >= last, "the sum went back from {last} to {now}");
            last = now;
            t.join().expect("adder thread");
        }
        assert_eq!(count.sum(), (SLOTS as u64 + 4) * 10_000);
    }
}
