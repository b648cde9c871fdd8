//! Instances made ahead (issue 24, docs/hibernation.md "Instances made
//! ahead"): an instance depends on its module and tenant, not on the service
//! it will serve, so a wake can take one made before it was needed instead
//! of paying the instantiation on its caller's round trip.
//!
//! ```text
//!  wake ── take(module, tenant): one made? ──> Guest::bind to the service
//!       └─ refill(module, tenant): fewer than PER_MODULE made or being made
//!          for the pair, the cap not reached, room in the pool ──> a worker
//!          with nothing else to run makes one (Guest::instantiate_ahead)
//!          and it is kept
//!  dropped: unused for AHEAD_KEPT (the sweeper), every slot taken (an
//!  instantiation found no slot), its tenant removed, the node shut down
//! ```
//!
//! Each kept instance holds a pool slot and its memory (counted in its
//! tenant's only once bound), so only wakes make them, [`PER_MODULE`] per
//! (module, tenant), at most `[limits] instances_ahead` per node.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::tenant::Tenant;
use super::{Guest, Kernel, ServiceHandle, TenantId};

/// How long an instance made ahead is kept without a wake taking it.
pub(super) const AHEAD_KEPT: Duration = Duration::from_secs(60);

/// How many are kept (or being made) per module and tenant: while a wake
/// takes one, the next is ready or being made.
const PER_MODULE: usize = 2;

/// The instances made ahead of their wakes, and those being made.
pub(crate) struct Ahead {
    /// The most kept (or being made) at once.
    cap: usize,
    made: Mutex<Vec<Made>>,
}

/// One instance made ahead, or being made.
struct Made {
    /// Its module version, told apart by the address of its `Arc` (the
    /// instance holds a `Weak` to it, so the address is not reused).
    module: usize,
    tenant: TenantId,
    /// When it was kept.
    since: Instant,
    /// `(Weak<G::Module>, G)`; `None` while it is being made.
    instance: Option<Box<dyn Any + Send>>,
}

/// The key of `module`'s version.
fn module_key<M>(module: &Arc<M>) -> usize {
    Arc::as_ptr(module).cast::<()>() as usize
}

impl Ahead {
    /// Keeps at most `cap` instances made ahead (0: none).
    pub(super) fn new(cap: usize) -> Self {
        Ahead {
            cap,
            made: Mutex::new(Vec::new()),
        }
    }

    fn made(&self) -> std::sync::MutexGuard<'_, Vec<Made>> {
        self.made.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Instances kept now (not counting those being made).
    pub(crate) fn len(&self) -> usize {
        self.made().iter().filter(|m| m.instance.is_some()).count()
    }

    /// An instance of `module` made ahead for `tenant`, taken, if one is kept.
    pub(super) fn take<G: Guest>(&self, module: &Arc<G::Module>, tenant: TenantId) -> Option<G> {
        let key = module_key(module);
        let boxed = {
            let mut made = self.made();
            let at = made
                .iter()
                .position(|m| m.module == key && m.tenant == tenant && m.instance.is_some())?;
            made.swap_remove(at).instance?
        };
        boxed
            .downcast::<(Weak<G::Module>, G)>()
            .ok()
            .map(|pair| pair.1)
    }

    /// Makes an instance of `module` for `tenant` ahead of the next wake, on
    /// a task of the node, if none is kept or being made for them, the cap
    /// allows, and the pool has room to spare.
    pub(super) fn refill<G: Guest>(
        kernel: &Arc<Kernel>,
        module: &Arc<G::Module>,
        tenant: &Arc<Tenant>,
    ) {
        let ahead = &kernel.ahead;
        let key = module_key(module);
        {
            let mut made = ahead.made();
            if made.len() >= ahead.cap
                || made
                    .iter()
                    .filter(|m| m.module == key && m.tenant == tenant.id)
                    .count()
                    >= PER_MODULE
                || !kernel.pool_has_room(made.len())
            {
                return;
            }
            made.push(Made {
                module: key,
                tenant: tenant.id,
                since: Instant::now(),
                instance: None,
            });
        }
        let (made_by, module, tenant) = (kernel.clone(), module.clone(), tenant.clone());
        kernel.spawn_when_idle(async move {
            let kernel = made_by;
            let made = G::instantiate_ahead(&kernel, &tenant, &module).await;
            let going = kernel.shutdown.is_cancelled() || tenant.removed.load(Ordering::Acquire);
            let mut kept = kernel.ahead.made();
            // Its entry: only this task takes it out (the drops take kept ones).
            let Some(at) = kept
                .iter()
                .position(|m| m.module == key && m.tenant == tenant.id && m.instance.is_none())
            else {
                return;
            };
            match made {
                Ok(instance) if !going => {
                    let entry = &mut kept[at];
                    entry.since = Instant::now();
                    entry.instance = Some(Box::new((Arc::downgrade(&module), instance)));
                }
                // The node or the tenant is going, or the instance could not
                // be made (tried again at the next wake): dropped after the
                // lock is let go.
                unkept => {
                    kept.swap_remove(at);
                    drop(kept);
                    drop(unkept);
                }
            }
        });
    }

    /// Drops every instance kept (their slots go back to the pool); returns
    /// how many.
    pub(crate) fn clear(&self) -> usize {
        self.drop_where(|_| true)
    }

    /// Drops the instances kept for `tenant` (it is being removed).
    pub(super) fn forget_tenant(&self, tenant: TenantId) {
        self.drop_where(|m| m.tenant == tenant);
    }

    /// Drops the instances no wake took for `kept_for`.
    pub(super) fn expire(&self, kept_for: Duration) {
        self.drop_where(|m| m.since.elapsed() >= kept_for);
    }

    /// Drops the kept instances `doomed` picks, outside the lock (dropping a
    /// store gives its slot back, a syscall); returns how many.
    fn drop_where(&self, doomed: impl Fn(&Made) -> bool) -> usize {
        let dropped: Vec<Made> = {
            let mut made = self.made();
            let (gone, stay) = std::mem::take(&mut *made)
                .into_iter()
                .partition(|m| m.instance.is_some() && doomed(m));
            *made = stay;
            gone
        };
        dropped.len()
    }
}

impl Kernel {
    /// Whether the pool has room for one more instance made ahead, beside
    /// the services awake now and `ahead` kept: an eighth of it stays for
    /// spawns and wakes.
    fn pool_has_room(&self, ahead: usize) -> bool {
        let awake = self
            .live
            .load(Ordering::Relaxed)
            .saturating_sub(self.hibernated.load(Ordering::Relaxed));
        let slots = self.limits.resident_services as usize;
        awake + ahead < slots - slots / 8
    }

    /// A handle for an instance made ahead, bound to no service yet: in no
    /// table, with its tenant's quotas and an address no service has.
    pub(crate) fn unbound_handle(
        &self,
        tenant: Arc<Tenant>,
        module: Arc<str>,
    ) -> Arc<ServiceHandle> {
        Arc::new(ServiceHandle::new(
            super::Address::new(0, self.harbor),
            module,
            tenant,
            true,
        ))
    }
}
