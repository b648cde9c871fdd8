//! The resident set (issue 24, `docs/hibernation.md`): the instance pool
//! holds `resident_services` instances, however many services live; when
//! every slot is taken, the least recently active idle services that can
//! hibernate are made to, and the instance waiting for a slot tries again.
//!
//! ```text
//!  instantiate (spawn, wake, upgrade) ── no slot ──> make_room: one scan at
//!    a time picks the K services idle the longest (awake, holding an
//!    instance, mailbox empty, in a tenant that hibernates, not known to
//!    stay awake) and asks them (forced: no idle time needed) ──> they
//!    hibernate between batches, their slots go back ──> try again, backing
//!    off up to 10 ms, for at most ROOM_WAIT; then the error names the limit
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::hibernate::Rest;
use super::{Guest, InstantiateError, Kernel, ServiceHandle};

/// How long an instantiation waits for a slot to be made.
const ROOM_WAIT: Duration = Duration::from_secs(10);

/// An instance of `module` for the service behind `handle`, waiting for
/// room in the pool when every slot is taken and services may hibernate.
///
/// # Errors
/// The instantiation's error; for a full pool with no room made in time,
/// one that names the limit.
pub(super) async fn instantiate<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &Arc<ServiceHandle>,
    module: &G::Module,
) -> Result<G, String> {
    let deadline = Instant::now() + ROOM_WAIT;
    let mut pause = Duration::from_micros(50);
    loop {
        match G::instantiate(kernel, handle, module).await {
            Ok(instance) => {
                handle.usage.rest.resident.store(true, Ordering::Relaxed);
                return Ok(instance);
            }
            Err(InstantiateError::NoSlot(error)) => {
                // Instances made ahead give their slots back first.
                if kernel.ahead.clear() > 0 {
                    continue;
                }
                if kernel.shortest_hibernate_after().is_none() || Instant::now() >= deadline {
                    return Err(format!(
                        "{error}: all {} instance slots are taken (raise [limits] \
                         resident_services, or let idle services hibernate: hibernate_after_ms)",
                        kernel.limits.resident_services
                    ));
                }
                kernel.make_room();
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(InstantiateError::Failed(error)) => return Err(error),
        }
    }
}

impl Kernel {
    /// Asks the services idle the longest to hibernate now (see the module
    /// doc); returns at once if another scan is under way.
    fn make_room(&self) {
        if self.making_room.swap(true, Ordering::Acquire) {
            return;
        }
        let want = (self.limits.resident_services as usize / 64).clamp(16, 256);
        let mut idle: Vec<(u64, Arc<ServiceHandle>)> = self
            .services
            .pin()
            .values()
            .filter(|h| Rest::askable(h).is_some())
            .map(|h| (h.usage.rest.last_active.load(Ordering::Relaxed), h.clone()))
            .collect();
        if idle.len() > want {
            idle.select_nth_unstable_by_key(want, |(since, _)| *since);
            idle.truncate(want);
        }
        for (_, handle) in idle {
            Rest::ask(&handle, true);
        }
        self.making_room.store(false, Ordering::Release);
    }
}
