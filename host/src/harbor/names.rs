//! The replica of the global names: every name as the master last told,
//! the names this node's services hold (registered again when the master
//! comes back), and the `queryname`s and registrations waiting on it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::Harbor;
use super::proto::Control;
use crate::runtime::{Address, ErrorCause, GlobalNameError, Waiter};
use crate::transport::Outgoing;

/// The replica of the global names, and who waits on them.
#[derive(Default)]
pub(super) struct Names {
    /// Every global name, as the master last told.
    pub(super) table: HashMap<String, Address>,
    /// Names held by this node's services (registered again after the
    /// master comes back).
    pub(super) own: HashMap<String, Address>,
    /// `queryname`s waiting for a name to appear, with their ids.
    pub(super) waiting: HashMap<String, Vec<(u64, Waiter)>>,
    /// `globalname` requests waiting for the master's answer.
    pub(super) registering: HashMap<u32, Waiter>,
    pub(super) next_id: u64,
}

impl Harbor {
    pub(super) fn names(&self) -> MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a global name without waiting for the master's answer.
    ///
    /// # Errors
    /// `Taken` if another service holds it; `Unavailable` when the master
    /// is unreachable.
    pub fn register(&self, name: &str, address: Address) -> Result<(), GlobalNameError> {
        self.claim(name, address)?;
        self.send_master(Control::Register {
            request: 0,
            name: name.to_string(),
            address: address.0,
        })
    }

    /// Registers a global name; `waiter` gets the master's answer.
    pub fn register_confirmed(&self, name: &str, address: Address, waiter: Waiter) {
        let Some(kernel) = self.kernel() else { return };
        if let Err(e) = self.claim(name, address) {
            let cause = match e {
                GlobalNameError::Taken { .. } => ErrorCause::Service,
                GlobalNameError::Unavailable => ErrorCause::NodeDown,
            };
            return waiter.fail(&kernel, cause, &e.to_string());
        }
        let request = self.next_request.fetch_add(1, Ordering::Relaxed).max(1);
        self.names().registering.insert(request, waiter);
        let sent = self.send_master(Control::Register {
            request,
            name: name.to_string(),
            address: address.0,
        });
        if let Err(e) = sent
            && let Some(w) = self.names().registering.remove(&request)
        {
            w.fail(&kernel, ErrorCause::NodeDown, &e.to_string());
        }
    }

    /// Checks a global name is free (or ours) and records it as ours.
    fn claim(&self, name: &str, address: Address) -> Result<(), GlobalNameError> {
        if !self.master_up() {
            return Err(GlobalNameError::Unavailable);
        }
        let mut names = self.names();
        if let Some(&holder) = names.table.get(name)
            && holder != address
        {
            return Err(GlobalNameError::Taken {
                name: name.to_string(),
                holder,
            });
        }
        names.own.insert(name.to_string(), address);
        names.table.insert(name.to_string(), address);
        Ok(())
    }

    /// Drops a global name held by `address`.
    pub fn unregister(&self, name: &str, address: Address) {
        {
            let mut names = self.names();
            if names.own.get(name) == Some(&address) {
                names.own.remove(name);
            }
            if names.table.get(name) == Some(&address) {
                names.table.remove(name);
            }
        }
        let _ = self.send_master(Control::Unregister {
            name: name.to_string(),
            address: address.0,
        });
    }

    pub(super) fn send_master(&self, control: Control) -> Result<(), GlobalNameError> {
        match self.master_tx() {
            Some(tx) if tx.send(Outgoing::Control(control)).is_ok() => Ok(()),
            _ => Err(GlobalNameError::Unavailable),
        }
    }

    /// The address holding a global name, as this node knows it now.
    pub fn query(&self, name: &str) -> Option<Address> {
        self.names().table.get(name).copied()
    }

    /// Answers `waiter` with the address of `name` (4 bytes, little-endian)
    /// once it exists, or an error after `timeout_ms` (0: wait as long as
    /// the master is reachable) or when the master is unreachable.
    pub fn queryname(self: &Arc<Self>, name: &str, timeout_ms: u32, waiter: Waiter) {
        let Some(kernel) = self.kernel() else { return };
        let id = {
            let mut names = self.names();
            if let Some(&a) = names.table.get(name) {
                drop(names);
                return waiter.respond(&kernel, a, a.0.to_le_bytes().to_vec());
            }
            if !self.master_up() {
                drop(names);
                return waiter.fail(
                    &kernel,
                    ErrorCause::NodeDown,
                    &format!("global name `{name}`: the harbor master is unreachable"),
                );
            }
            names.next_id += 1;
            let id = names.next_id;
            names
                .waiting
                .entry(name.to_string())
                .or_default()
                .push((id, waiter));
            id
        };
        if timeout_ms > 0 {
            let harbor = Arc::downgrade(self);
            let name = name.to_string();
            let cancel = self.cancel.clone();
            kernel.tasks.spawn(async move {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(timeout_ms.into())) => {
                        if let Some(h) = harbor.upgrade() {
                            h.expire_query(&name, id, timeout_ms);
                        }
                    }
                }
            });
        }
    }

    fn expire_query(&self, name: &str, id: u64, timeout_ms: u32) {
        let waiter = {
            let mut names = self.names();
            let Some(list) = names.waiting.get_mut(name) else {
                return;
            };
            let Some(i) = list.iter().position(|(i, _)| *i == id) else {
                return;
            };
            let (_, w) = list.swap_remove(i);
            if list.is_empty() {
                names.waiting.remove(name);
            }
            w
        };
        if let Some(kernel) = self.kernel() {
            waiter.fail(
                &kernel,
                ErrorCause::Timeout,
                &format!("global name `{name}` did not appear within {timeout_ms} ms"),
            );
        }
    }

    /// Answers the `queryname`s whose name now exists.
    pub(super) fn wake_queries(&self) {
        let Some(kernel) = self.kernel() else { return };
        let ready: Vec<(Address, Waiter)> = {
            let mut names = self.names();
            let found: Vec<String> = names
                .waiting
                .keys()
                .filter(|n| names.table.contains_key(*n))
                .cloned()
                .collect();
            let mut ready = Vec::new();
            for n in found {
                let a = names.table[&n];
                for (_, w) in names.waiting.remove(&n).unwrap_or_default() {
                    ready.push((a, w));
                }
            }
            ready
        };
        for (a, w) in ready {
            w.respond(&kernel, a, a.0.to_le_bytes().to_vec());
        }
    }

    /// The master link dropped: waiting queries and registrations fail.
    pub(super) fn master_lost(&self, why: &str) {
        *self.master_tx.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let (queries, registrations) = {
            let mut names = self.names();
            let q: Vec<Waiter> = names
                .waiting
                .drain()
                .flat_map(|(_, v)| v)
                .map(|(_, w)| w)
                .collect();
            let r: Vec<Waiter> = names.registering.drain().map(|(_, w)| w).collect();
            (q, r)
        };
        if let Some(kernel) = self.kernel() {
            let detail = format!("the harbor master is unreachable: {why}");
            for w in queries.into_iter().chain(registrations) {
                w.fail(&kernel, ErrorCause::NodeDown, &detail);
            }
        }
        self.fire_watchers();
    }
}
