//! Hot-swap: replacing a live service's module without losing a message.
//!
//! `Node::upgrade` compiles the new version off the scheduler threads, then
//! hands an [`UpgradeOrder`] to each service's handle and wakes it. The
//! service's own task picks the order up between two batches (never inside a
//! `dispatch`) and runs [`perform`]:
//!
//! 1. Wait until the service waits on no session of its own (its `awaiting`
//!    set is empty). Meanwhile only answers to those sessions are
//!    dispatched; every other message goes to a side queue, in arrival
//!    order. Past the order's deadline the upgrade is refused.
//! 2. `save-state` on the old instance, a new instance of the new module for
//!    the same handle (address, names, subscriptions and mailbox are the
//!    handle's, so they stay), the owed requests and the session counter
//!    handed over, then `load-state` (or `init` with the spawn arguments).
//! 3. Success: the new instance replaces the old. Failure in step 2 (other
//!    than a trap in `save-state`, which is a trap of the running module):
//!    the new instance is dropped and the old one carries on untouched.
//!
//! Either way the side queue is handed back to the service loop, which
//! dispatches it before anything newer from the mailbox.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::inbox::Inbox;
use super::service::{End, answer_ping};
use super::{
    Address, Guest, GuestModule, Kernel, Message, ModuleError, ServiceHandle, TenantId, kind,
};

/// An upgrade waiting for its service's task to pick it up.
pub(crate) struct UpgradeOrder {
    pub module: Arc<dyn GuestModule>,
    /// How long the service may take to become quiescent.
    pub wait: Duration,
    pub reply: oneshot::Sender<Result<Upgraded, UpgradeError>>,
}

/// What one successful upgrade did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// How long the service handled no message: from the end of the wait
    /// for quiescence to the new version ready.
    pub pause: Duration,
    /// How long it waited for its own sessions to end first.
    pub waited: Duration,
    /// Bytes of state carried over; `None` when the new version started
    /// from `init`.
    pub state_bytes: Option<usize>,
    /// Messages that arrived while it waited or swapped, handled by the new
    /// version first.
    pub queued: usize,
}

/// Why an upgrade did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpgradeError {
    /// The target names no live service, name or module.
    #[error("no service, name or module `{0}`")]
    NoTarget(String),
    /// The address is a host endpoint, not a wasm service.
    #[error("{0} is a host endpoint, not a wasm service")]
    HostEndpoint(Address),
    /// The new module could not be read or compiled.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// Another upgrade of this service has not finished.
    #[error("an upgrade of {0} is already under way")]
    Busy(Address),
    /// The service still waited on its own sessions at the deadline.
    #[error(
        "not quiescent after {waited_ms} ms: still waiting on {sessions} session(s) of its own"
    )]
    NotQuiescent {
        /// How long it waited.
        waited_ms: u64,
        /// Sessions it still waited on.
        sessions: usize,
    },
    /// The new module could not be instantiated; the old one carries on.
    #[error("instantiating the new module: {0}")]
    Instantiate(String),
    /// The new module's `load-state` (or `init`) failed or trapped; the old
    /// one carries on.
    #[error("the new module's {step} failed: {reason}")]
    Load {
        /// `load-state` or `init`.
        step: &'static str,
        /// What it said, or the trap.
        reason: String,
    },
    /// The service ended before the upgrade was done (a trap in its
    /// `save-state` ends it, as any trap of the running module does).
    #[error("the service ended: {0}")]
    Ended(String),
}

/// One service's result in an upgrade.
#[derive(Debug, Clone)]
pub struct UpgradeReport {
    /// The service.
    pub address: Address,
    /// What happened.
    pub result: Result<Upgraded, UpgradeError>,
}

impl Kernel {
    /// Replaces the module of live services with the component at `path`.
    ///
    /// `target` is an address (`:0000010a`, any tenant), or `[tenant/]x`
    /// where `x` is a name in that tenant (`system` without a prefix), or a
    /// module of that tenant: then every live instance is upgraded, one at a
    /// time, and new spawns of the module get the new version. Each service
    /// may take up to `wait` to finish its own sessions.
    ///
    /// # Errors
    /// When the target names nothing or the new module does not compile;
    /// each service's own outcome is in its report.
    pub(crate) async fn upgrade(
        &self,
        target: &str,
        path: &Path,
        wait: Duration,
    ) -> Result<Vec<UpgradeReport>, UpgradeError> {
        let kernel = self;
        let no_target = || UpgradeError::NoTarget(target.to_string());
        let (handles, install) = if let Ok(address) = target.parse::<Address>() {
            (vec![kernel.service(address).ok_or_else(no_target)?], None)
        } else {
            let (tenant, x) = match target.split_once('/') {
                Some((t, x)) => (kernel.tenant_named(t).ok_or_else(no_target)?, x),
                None => (
                    kernel.tenant(TenantId::SYSTEM).ok_or_else(no_target)?,
                    target,
                ),
            };
            if let Some(address) = kernel.query_name(tenant.id, x) {
                (vec![kernel.service(address).ok_or_else(no_target)?], None)
            } else {
                let mut handles: Vec<Arc<ServiceHandle>> = kernel
                    .services
                    .pin()
                    .values()
                    .filter(|h| h.tenant.id == tenant.id && &*h.module == x)
                    .cloned()
                    .collect();
                handles.sort_by_key(|h| h.address);
                if handles.is_empty() && !kernel.loader.has_module(tenant.id, x) {
                    return Err(no_target());
                }
                (handles, Some((tenant.id, x.to_string())))
            }
        };
        if let Some(h) = handles.iter().find(|h| h.is_host_endpoint()) {
            return Err(UpgradeError::HostEndpoint(h.address));
        }
        let name = handles
            .first()
            .map(|h| h.module.to_string())
            .or_else(|| install.as_ref().map(|(_, m)| m.clone()))
            .unwrap_or_default();
        let module = kernel.loader.compile(&name, path.to_path_buf()).await?;
        if let Some((tenant, name)) = &install {
            // Spawns from now on get the new version, so none is missed.
            kernel.loader.install(*tenant, name, module.clone());
        }
        let mut reports = Vec::with_capacity(handles.len());
        for handle in handles {
            let result = order(&handle, module.clone(), wait).await;
            match &result {
                Ok(u) => tracing::info!(
                    service = %handle.address,
                    module = %module.name(),
                    pause_us = u.pause.as_micros(),
                    waited_ms = u.waited.as_millis(),
                    "upgraded"
                ),
                Err(e) => tracing::warn!(service = %handle.address, "upgrade failed: {e}"),
            }
            reports.push(UpgradeReport {
                address: handle.address,
                result,
            });
        }
        Ok(reports)
    }
}

/// Called when the service behind `handle` ends: no upgrade can be ordered
/// from now on, and one ordered and not yet picked up is answered (its
/// orderer holds the handle, so the order would never be dropped).
pub(crate) fn close_orders(handle: &ServiceHandle, reason: &str) {
    let order = {
        let mut slot = handle.upgrade.lock().unwrap_or_else(|e| e.into_inner());
        handle.upgrade_closed.store(true, Ordering::Relaxed);
        slot.take()
    };
    if let Some(order) = order {
        let _ = order
            .reply
            .send(Err(UpgradeError::Ended(reason.to_string())));
    }
}

/// Hands `module` to the service behind `handle` and waits for its answer.
async fn order(
    handle: &ServiceHandle,
    module: Arc<dyn GuestModule>,
    wait: Duration,
) -> Result<Upgraded, UpgradeError> {
    let (reply, answer) = oneshot::channel();
    {
        let mut slot = handle.upgrade.lock().unwrap_or_else(|e| e.into_inner());
        if handle.upgrade_closed.load(Ordering::Relaxed) {
            return Err(UpgradeError::Ended("before the upgrade was done".into()));
        }
        if slot.is_some() {
            return Err(UpgradeError::Busy(handle.address));
        }
        *slot = Some(UpgradeOrder {
            module,
            wait,
            reply,
        });
    }
    handle.upgrade_pending.store(true, Ordering::Release);
    handle.mailbox.wake(handle.address);
    answer
        .await
        .unwrap_or_else(|_| Err(UpgradeError::Ended("before the upgrade was done".into())))
}

/// Runs an upgrade order inside the service's task (see the module doc).
/// Returns the messages kept aside, to be dispatched before the mailbox;
/// `Err` when the service must end.
pub(crate) async fn perform<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &Arc<ServiceHandle>,
    current: &mut Arc<G::Module>,
    instance: &mut G,
    inbox: &mut Inbox,
    args: &[u8],
    order: UpgradeOrder,
) -> Result<VecDeque<Message>, (End, VecDeque<Message>)> {
    let start = Instant::now();
    let mut side = VecDeque::new();
    if let Err(outcome) = quiesce(kernel, handle, instance, inbox, &mut side, order.wait).await {
        let _ = order.reply.send(Err(outcome.error.clone()));
        return match outcome.end {
            Some(end) => Err((end, side)),
            None => Ok(side),
        };
    }
    let waited = start.elapsed();
    let swap_start = Instant::now();
    let saved = match instance.save_state().await {
        Ok(saved) => saved,
        Err(e) => {
            let end = End::failed(e);
            let _ = order.reply.send(Err(UpgradeError::Ended(format!(
                "save-state: {}",
                end.reason
            ))));
            return Err((end, side));
        }
    };
    // A module of another kind than the running one cannot take over.
    let Ok(module) = order.module.into_any().downcast::<G::Module>() else {
        let _ = order.reply.send(Err(UpgradeError::Instantiate(
            "the new module is not of the running module's kind".into(),
        )));
        return Ok(side);
    };
    match swap(kernel, handle, instance, &module, saved, args).await {
        Ok(state_bytes) => {
            handle.usage.upgrades.fetch_add(1, Ordering::Relaxed);
            *current = module;
            // The new version may keep a state where the old one had none.
            handle.usage.rest.may_hibernate_again();
            let _ = order.reply.send(Ok(Upgraded {
                pause: swap_start.elapsed(),
                waited,
                state_bytes,
                queued: side.len(),
            }));
        }
        Err(e) => {
            let _ = order.reply.send(Err(e));
        }
    }
    Ok(side)
}

/// Why the wait for quiescence ended without it.
struct Unquiet {
    error: UpgradeError,
    /// Set when the service must end (killed, or its mailbox closed).
    end: Option<End>,
}

/// Dispatches answers to the service's own sessions, keeping every other
/// message in `side`, until it waits on none (or the deadline passes).
async fn quiesce<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &ServiceHandle,
    instance: &mut G,
    inbox: &mut Inbox,
    side: &mut VecDeque<Message>,
    wait: Duration,
) -> Result<(), Unquiet> {
    let deadline = Instant::now() + wait;
    let mut answers = Vec::new();
    while instance.awaiting() > 0 {
        let next = tokio::time::timeout_at(deadline.into(), inbox.next(handle)).await;
        let message = match next {
            Err(_elapsed) => {
                return Err(Unquiet {
                    error: UpgradeError::NotQuiescent {
                        waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        sessions: instance.awaiting(),
                    },
                    end: None,
                });
            }
            Ok(None) => {
                return Err(Unquiet {
                    error: UpgradeError::Ended("exited".into()),
                    end: Some(End::exited()),
                });
            }
            Ok(Some(m)) => m,
        };
        handle.mailbox.picked_up(kernel);
        if handle.killed.load(Ordering::Acquire) {
            handle.mailbox.taken(1);
            if message.wants_reply() {
                instance.owe(message.source, message.session, message.tenant);
            }
            return Err(Unquiet {
                error: UpgradeError::Ended("killed".into()),
                end: Some(End::killed()),
            });
        }
        let is_answer = matches!(message.kind, kind::RESPONSE | kind::ERROR)
            && instance.awaits(message.session);
        if message.kind == kind::SYSTEM {
            handle.mailbox.taken(1);
            answer_ping(kernel, handle, message);
        } else if is_answer {
            handle.mailbox.taken(1);
            answers.push(message);
            if let Err(e) = instance.dispatch(&mut answers).await {
                let end = End::failed(e);
                return Err(Unquiet {
                    error: UpgradeError::Ended(end.reason.clone()),
                    end: Some(end),
                });
            }
            if instance.exit_requested() {
                return Err(Unquiet {
                    error: UpgradeError::Ended("exited".into()),
                    end: Some(End::exited()),
                });
            }
        } else {
            // Still counted in the mailbox's length until dispatched.
            side.push_back(message);
        }
    }
    Ok(())
}

/// Makes the new instance and moves the service onto it; on any failure
/// the old instance is left as it was. Returns the bytes of state carried.
async fn swap<G: Guest>(
    kernel: &Arc<Kernel>,
    handle: &Arc<ServiceHandle>,
    instance: &mut G,
    module: &G::Module,
    saved: Option<Vec<u8>>,
    args: &[u8],
) -> Result<Option<usize>, UpgradeError> {
    let mut next = super::resident::instantiate::<G>(kernel, handle, module)
        .await
        .map_err(UpgradeError::Instantiate)?;
    next.carry_in(instance.carry_out());
    let state_bytes = saved.as_ref().map(Vec::len);
    let (step, loaded) = match saved {
        Some(state) if next.loads_state() => ("load-state", next.load_state(state).await),
        _ => ("init", next.init(args).await),
    };
    let failure = match loaded {
        Ok(Ok(())) => None,
        Ok(Err(reason)) => Some(reason),
        Err(e) => Some(e.reason),
    };
    if let Some(reason) = failure {
        instance.carry_in(next.carry_out());
        return Err(UpgradeError::Load { step, reason });
    }
    std::mem::swap(instance, &mut next);
    Ok(if step == "load-state" {
        state_bytes
    } else {
        None
    })
}
