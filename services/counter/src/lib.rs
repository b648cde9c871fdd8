//! `counter`: counts sequenced messages and keeps its count across
//! upgrades (a [`Stateful`] service), for the hot-swap tests and benchmarks.
//!
//! Messages (raw bytes):
//! - text `[sender u8][seq u32 le]`: counted; a `seq` that is not the
//!   sender's previous one plus 1 is counted as a gap;
//! - request `g`: answers `[version u8][total u64][gaps u64][calls u64]`
//!   (all little-endian), where `calls` counts the `g` requests so far;
//! - request `p` / `c`: poison / clear the state (version 2's `restore`
//!   traps on a poisoned state); answers empty;
//! - request `h[ms u32 le]`: sleeps `ms` on a timer, then answers empty
//!   (a service waiting on a timer cannot be upgraded until it fires);
//! - request `s[channel u32 le]`: subscribes to a multicast channel, its
//!   publishes arriving at `handle`; `l[channel u32 le]`: the same with a
//!   handler of the channel's own. Either way each publish is counted in
//!   `total`. Answers empty.
//!
//! The same source is built twice: as `counter` (version 1) and as
//! `counter_v2` (version 2), by the crate name it is compiled in.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skyhost_sdk::multicast::Channel;
use skyhost_sdk::{Message, Reply, Service, Stateful, export_service, kind, sleep};

/// 1 for `counter`, 2 for `counter_v2`.
const VERSION: u8 = match env!("CARGO_PKG_NAME").as_bytes() {
    b"counter" => 1,
    _ => 2,
};

/// The counter's state; the same shape in both versions.
struct Counter {
    total: Cell<u64>,
    gaps: Cell<u64>,
    calls: Cell<u64>,
    poisoned: Cell<bool>,
    /// Each sender's last sequence number.
    last: RefCell<Vec<u32>>,
}

/// What crosses an upgrade.
#[derive(Serialize, Deserialize)]
struct Saved {
    total: u64,
    gaps: u64,
    calls: u64,
    poisoned: bool,
    last: Vec<u32>,
}

impl Service for Counter {
    fn init(_args: Vec<u8>) -> Result<Self, String> {
        Ok(Counter {
            total: Cell::new(0),
            gaps: Cell::new(0),
            calls: Cell::new(0),
            poisoned: Cell::new(false),
            last: RefCell::new(vec![0; 256]),
        })
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        if msg.kind == kind::MULTICAST {
            self.total.set(self.total.get() + 1);
            return Reply::none();
        }
        if !msg.is_request() {
            if let [sender, seq @ ..] = msg.payload.as_slice()
                && let Ok(seq) = <[u8; 4]>::try_from(seq)
            {
                let seq = u32::from_le_bytes(seq);
                let mut last = self.last.borrow_mut();
                let slot = &mut last[usize::from(*sender)];
                if seq != slot.wrapping_add(1) {
                    self.gaps.set(self.gaps.get() + 1);
                }
                *slot = seq;
                self.total.set(self.total.get() + 1);
            }
            return Reply::none();
        }
        match msg.payload.as_slice() {
            b"g" => {
                self.calls.set(self.calls.get() + 1);
                let mut out = vec![VERSION];
                for v in [self.total.get(), self.gaps.get(), self.calls.get()] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Reply::Bytes(out)
            }
            b"p" => {
                self.poisoned.set(true);
                Reply::Bytes(Vec::new())
            }
            b"c" => {
                self.poisoned.set(false);
                Reply::Bytes(Vec::new())
            }
            [b'h', ms @ ..] if ms.len() == 4 => {
                let ms = u32::from_le_bytes([ms[0], ms[1], ms[2], ms[3]]);
                sleep(Duration::from_millis(u64::from(ms))).await;
                Reply::Bytes(Vec::new())
            }
            [op @ (b's' | b'l'), id @ ..] if id.len() == 4 => {
                let channel = Channel(u32::from_le_bytes([id[0], id[1], id[2], id[3]]));
                let subscribed = if *op == b's' {
                    channel.subscribe()
                } else {
                    let me = Rc::clone(&self);
                    channel.subscribe_with(move |_| me.total.set(me.total.get() + 1))
                };
                match subscribed {
                    Ok(()) => Reply::Bytes(Vec::new()),
                    Err(e) => Reply::error(format!("counter: subscribe: {e:?}")),
                }
            }
            _ => Reply::error("counter: unknown request"),
        }
    }
}

impl Stateful for Counter {
    type State = Saved;

    fn save(&self) -> Saved {
        Saved {
            total: self.total.get(),
            gaps: self.gaps.get(),
            calls: self.calls.get(),
            poisoned: self.poisoned.get(),
            last: self.last.borrow().clone(),
        }
    }

    fn restore(state: Saved) -> Result<Self, String> {
        if VERSION == 2 && state.poisoned {
            // A deliberate trap, for the test of a failing `load-state`.
            panic!("counter v2 refuses a poisoned state");
        }
        Ok(Counter {
            total: Cell::new(state.total),
            gaps: Cell::new(state.gaps),
            calls: Cell::new(state.calls),
            poisoned: Cell::new(state.poisoned),
            last: RefCell::new(state.last),
        })
    }
}

export_service!(Counter, stateful);
