//! Tenants: the unit of isolation. Every service belongs to one, fixed at
//! spawn; a service can reach only services, names and channels of its own
//! tenant, and other tenants' exported entries its tenant was granted.
//!
//! - [`TenantId`] travels in every [`Message`](super::Message) (set by the
//!   host, never by a guest) and in every harbor and cluster frame; the
//!   receiving `Kernel::deliver` compares it with the target's tenant and
//!   answers a mismatch exactly like an unknown address.
//! - [`Tenant`] (in the kernel's tenant table, shared by its services'
//!   handles) holds what the tenant file declared, resolved against the
//!   node's limits, and its counters.
//! - Messages the host makes itself (errors ending a session, timers, exit
//!   notices, spawn answers) carry [`TenantId::HOST`] and reach anyone: the
//!   host addresses them only to whoever is owed them.

use std::collections::HashMap;
use std::hash::Hasher;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::config::{Bootstrap, DirGrant, Limits, TenantConfig};

pub use crate::config::SYSTEM_TENANT;

/// A tenant's number: 0 for `system`, else derived from its name, so every
/// node of a harbor or cluster agrees on it without a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TenantId(pub u32);

impl TenantId {
    /// The node's own tenant.
    pub const SYSTEM: TenantId = TenantId(0);
    /// Messages made by the host itself; delivered to any tenant.
    pub const HOST: TenantId = TenantId(u32::MAX);

    /// The id of the tenant named `name`: 32 bits of its FNV-1a hash.
    pub fn of(name: &str) -> TenantId {
        if name == SYSTEM_TENANT {
            return TenantId::SYSTEM;
        }
        let mut h = fnv::FnvHasher::default();
        h.write(name.as_bytes());
        let h = h.finish();
        #[allow(clippy::cast_possible_truncation)] // folding 64 bits into 32
        TenantId((h ^ (h >> 32)) as u32)
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A tenant's quotas, resolved against the node's limits.
#[derive(Debug, Clone)]
pub(crate) struct Quotas {
    /// Linear memory per service, in bytes.
    pub memory: usize,
    /// Linear memory of all its services, in bytes; `usize::MAX` for none.
    pub total_memory: usize,
    pub max_services: u32,
    pub cpu_budget_ms: u64,
    pub weight: u32,
    /// 0 = unbounded.
    pub mailbox_limit: usize,
    pub max_payload: usize,
    /// How long its services stay awake idle; `None`: always.
    pub hibernate_after: Option<std::time::Duration>,
}

impl Quotas {
    fn resolve(t: &crate::config::TenantLimits, node: &Limits) -> Self {
        let mib = |m: u64| usize::try_from(m << 20).unwrap_or(usize::MAX);
        Quotas {
            memory: mib(t.memory_mb.unwrap_or(node.memory_mb).min(node.memory_mb)),
            total_memory: t.total_memory_mb.map_or(usize::MAX, mib),
            max_services: t.max_services.unwrap_or(node.max_services),
            cpu_budget_ms: t.cpu_budget_ms.unwrap_or(node.cpu_budget_ms),
            weight: t.weight.unwrap_or(1),
            mailbox_limit: t.mailbox_limit.unwrap_or(node.mailbox_limit),
            max_payload: t.max_payload.unwrap_or(node.max_payload),
            hibernate_after: Some(t.hibernate_after_ms.unwrap_or(node.hibernate_after_ms))
                .filter(|&ms| ms > 0)
                .map(std::time::Duration::from_millis),
        }
    }
}

/// What one service has used: written by the holder of its instance only
/// (so no two threads share the cache line on the message path), summed per
/// tenant when stats are read. Aligned to its own cache line: senders
/// write the mailbox counters beside it in the service's handle.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Usage {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub cpu_nanos: AtomicU64,
    /// Batches handed to the guest.
    pub dispatches: AtomicU64,
    /// Linear memory held, in bytes (not summed into a tenant's retired usage).
    pub memory: AtomicUsize,
    /// In a dispatch now.
    pub running: AtomicBool,
    /// Picked up an upgrade order and not done with it yet.
    pub upgrading: AtomicBool,
    /// Each message in and out is logged (`trace <addr> on`).
    pub traced: AtomicBool,
    /// Who watches its messages (`watch <target>`): its flag is read beside
    /// `traced`, on the same line.
    pub taps: super::tap::Taps,
    /// Sessions it opened and waits on, as of its last dispatch.
    pub awaiting: AtomicUsize,
    /// Times its module was replaced.
    pub upgrades: std::sync::atomic::AtomicU32,
    /// Times it hibernated.
    pub hibernations: std::sync::atomic::AtomicU32,
    /// Where it stands with hibernation (written after each batch: kept
    /// on this line, away from what senders write).
    pub rest: super::hibernate::Rest,
    /// Messages taken, by [`kind_slot`].
    pub kinds: [AtomicU64; KIND_LABELS.len()],
    /// `error` messages taken (sessions that ended in an error), by cause byte.
    pub errors: [AtomicU64; ERROR_LABELS.len()],
}

/// Adds `n` to one of a service's [`Usage`] counters. Only the holder of
/// the service's instance writes them (its task, or a caller running it
/// inside a call), so a load and a store do, without a locked
/// read-modify-write; a reader sees the value before or after.
pub(crate) fn add_owned(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The message kinds `/metrics` counts apart, in [`kind_slot`] order.
pub(crate) const KIND_LABELS: [&str; 9] = [
    "text",
    "response",
    "multicast",
    "exit",
    "system",
    "error",
    "request",
    "user",
    "other",
];

/// The slot of `kind` in [`KIND_LABELS`].
pub(crate) fn kind_slot(kind: u8) -> usize {
    match kind {
        0..=4 => usize::from(kind),
        7 => 5,
        10 => 6,
        16.. => 7,
        _ => 8,
    }
}

/// The causes of an `error` message (its payload's byte 0, `ErrorCause`).
pub(crate) const ERROR_LABELS: [&str; 9] = [
    "service_error",
    "unknown_address",
    "exited",
    "trapped",
    "killed",
    "timeout",
    "overloaded",
    "spawn_failed",
    "node_down",
];

impl Usage {
    /// Adds `other`'s counts to these.
    pub fn absorb(&self, other: &Usage) {
        let pairs = [
            (&self.messages_in, &other.messages_in),
            (&self.messages_out, &other.messages_out),
            (&self.cpu_nanos, &other.cpu_nanos),
        ];
        let kinds = self.kinds.iter().zip(&other.kinds);
        let errors = self.errors.iter().zip(&other.errors);
        for (mine, theirs) in pairs.into_iter().chain(kinds).chain(errors) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// What a tenant has used and been refused, since it was applied.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub live: AtomicUsize,
    /// Bytes of linear memory its services hold.
    pub memory: AtomicUsize,
    /// What its ended services used (live ones keep their own [`Usage`]).
    pub retired: Usage,
    /// Requests refused by a quota (spawn, memory, mailbox, payload).
    pub refusals: AtomicU64,
    /// Calls its services made through grants.
    pub grant_calls: AtomicU64,
}

/// A snapshot of one tenant's accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStats {
    /// Its name.
    pub name: String,
    /// Live services.
    pub services: usize,
    /// Linear memory its services hold, in bytes.
    pub memory_bytes: usize,
    /// CPU time its services used handling messages, in microseconds.
    pub cpu_us: u64,
    /// Messages its services took.
    pub messages_in: u64,
    /// Messages its services sent (sends, calls, answers).
    pub messages_out: u64,
    /// Requests refused by one of its quotas.
    pub refusals: u64,
    /// Calls its services made to other tenants through grants.
    pub grant_calls: u64,
    /// Messages its services took, by kind (`text`, `response`, ...).
    pub messages_by_kind: Vec<(&'static str, u64)>,
    /// `error` messages its services took (sessions they opened that
    /// ended in an error), by cause (`timeout`, `node_down`, ...).
    pub errors_by_cause: Vec<(&'static str, u64)>,
}

/// One tenant on this node.
pub(crate) struct Tenant {
    pub id: TenantId,
    pub name: Arc<str>,
    pub quotas: Quotas,
    pub module_paths: Vec<PathBuf>,
    /// `(tenant, entry)` pairs it may call.
    pub grants: Vec<(TenantId, String)>,
    /// Entry name → the name of one of its services.
    pub exports: HashMap<String, String>,
    pub dirs: Vec<DirGrant>,
    pub env: Vec<(String, String)>,
    pub tcp_connect: Vec<String>,
    pub bootstrap: Vec<Bootstrap>,
    pub counters: Counters,
    spawn_limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Set when the tenant is being removed: no new services.
    pub removed: AtomicBool,
    /// Woken when its last service ends.
    pub all_ended: tokio::sync::Notify,
    /// Its place in the fair share of the scheduler threads.
    pub share: super::sched::Share,
}

impl Tenant {
    /// The node's own tenant, from the node file's top level.
    pub fn system(node: &crate::config::NodeConfig, limits: &Limits) -> Self {
        let config = TenantConfig::new(SYSTEM_TENANT, node.module_paths.clone());
        let mut t = Self::new(&config, limits);
        t.id = TenantId::SYSTEM;
        t
    }

    /// The pseudo-tenant of host endpoints (clients, cluster agents): it
    /// takes messages of any tenant, since those endpoints serve them all.
    pub fn host(limits: &Limits) -> Self {
        let mut t = Self::system(&crate::config::NodeConfig::default(), limits);
        t.id = TenantId::HOST;
        t.name = "host".into();
        t
    }

    /// A tenant as its file declares it, under the node's limits.
    pub fn new(config: &TenantConfig, node: &Limits) -> Self {
        let spawn_limiter = config
            .limits
            .spawn_rate
            .and_then(NonZeroU32::new)
            .map(|rate| governor::RateLimiter::direct(governor::Quota::per_second(rate)));
        Tenant {
            id: TenantId::of(&config.name),
            name: config.name.as_str().into(),
            quotas: Quotas::resolve(&config.limits, node),
            module_paths: config.module_paths.clone(),
            grants: config
                .grants
                .iter()
                .filter_map(|g| g.split_once('/'))
                .map(|(t, e)| (TenantId::of(t), e.to_string()))
                .collect(),
            exports: config
                .exports
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            dirs: config.dirs.clone(),
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tcp_connect: config.tcp_connect.clone(),
            bootstrap: config.bootstrap.clone(),
            counters: Counters::default(),
            spawn_limiter,
            removed: AtomicBool::new(false),
            all_ended: tokio::sync::Notify::new(),
            share: Default::default(),
        }
    }

    /// Whether the spawn rate allows one more spawn now (and takes it).
    pub fn take_spawn(&self) -> bool {
        self.spawn_limiter
            .as_ref()
            .is_none_or(|l| l.check().is_ok())
    }

    /// Counts a refusal by one of its quotas.
    pub fn refused(&self) {
        self.counters.refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether it may call `entry` of tenant `owner`.
    pub fn granted(&self, owner: TenantId, entry: &str) -> bool {
        self.grants.iter().any(|(t, e)| *t == owner && e == entry)
    }

    /// Its accounting now; `live` is the usage of its live services.
    pub fn stats(&self, live: &Usage) -> TenantStats {
        let c = &self.counters;
        let total = Usage::default();
        total.absorb(&c.retired);
        total.absorb(live);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TenantStats {
            name: self.name.to_string(),
            services: c.live.load(Ordering::Acquire),
            memory_bytes: c.memory.load(Ordering::Relaxed),
            cpu_us: get(&total.cpu_nanos) / 1_000,
            messages_in: get(&total.messages_in),
            messages_out: get(&total.messages_out),
            refusals: c.refusals.load(Ordering::Relaxed),
            grant_calls: c.grant_calls.load(Ordering::Relaxed),
            messages_by_kind: KIND_LABELS
                .into_iter()
                .zip(total.kinds.iter().map(get))
                .collect(),
            errors_by_cause: ERROR_LABELS
                .into_iter()
                .zip(total.errors.iter().map(get))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_system_is_zero() {
        assert_eq!(TenantId::of("system"), TenantId::SYSTEM);
        assert_eq!(TenantId::of("alpha"), TenantId::of("alpha"));
        assert_ne!(TenantId::of("alpha"), TenantId::of("beta"));
        assert_ne!(TenantId::of("alpha"), TenantId::HOST);
    }

    #[test]
    fn quotas_take_the_node_values_they_do_not_set() {
        let node = Limits::default();
        let q = Quotas::resolve(
            &crate::config::TenantLimits {
                memory_mb: Some(8),
                ..Default::default()
            },
            &node,
        );
        assert_eq!(q.memory, 8 << 20);
        assert_eq!(q.total_memory, usize::MAX);
        assert_eq!(q.max_payload, node.max_payload);
        assert_eq!(q.weight, 1);
    }
}
