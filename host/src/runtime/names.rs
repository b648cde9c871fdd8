//! Names: local ones in the node's table (each tenant's under its own key),
//! global ones through the `Remote` port (the harbor), and the entries tenants grant each other.

use std::sync::Arc;

use super::{
    Address, ErrorCause, GlobalNameError, Kernel, Remote, ServiceHandle, TenantId, visible,
};

/// The longest a name may be, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a name could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, too long, or only a dot.
    #[error("invalid name `{0}`")]
    Invalid(String),
    /// Another service holds it.
    #[error("name `{name}` is held by {holder}")]
    Taken {
        /// The name.
        name: String,
        /// Who holds it.
        holder: Address,
    },
    /// A global name, and the harbor master is unreachable.
    #[error("global name `{0}`: the harbor master is unreachable")]
    Unavailable(String),
}

/// Whether `name` can be registered: 1 to [`MAX_NAME_LEN`] bytes, not only
/// a dot, and no `/` (which names another tenant's granted entry).
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name.len() <= MAX_NAME_LEN && !name.contains('/')
}

/// The key of `name` in `tenant`'s namespace: the name itself for
/// `system`, else the tenant id, `/` and the name (no name has a `/`, so
/// no tenant can reach another's key).
pub(crate) fn scoped(tenant: TenantId, name: &str) -> std::borrow::Cow<'_, str> {
    if tenant == TenantId::SYSTEM {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(format!("{tenant}/{name}"))
    }
}

impl Kernel {
    /// The other nodes, when `name` is global and this node is in a harbor.
    pub(super) fn global(&self, name: &str) -> Option<&Arc<dyn Remote>> {
        if name.starts_with('.') {
            None
        } else {
            self.remote.get()
        }
    }

    /// Registers `name` for the service behind `handle`.
    pub fn register_name(&self, name: &str, handle: &ServiceHandle) -> Result<(), NameError> {
        if !is_name(name) {
            return Err(NameError::Invalid(name.to_string()));
        }
        let key = scoped(handle.tenant.id, name);
        if let Some(harbor) = self.global(name) {
            let mut w = handle.watch();
            if w.dead {
                return Err(NameError::Invalid(name.to_string()));
            }
            harbor.register(&key, handle.address).map_err(|e| match e {
                GlobalNameError::Taken { holder, .. } => NameError::Taken {
                    name: name.to_string(),
                    holder,
                },
                GlobalNameError::Unavailable => NameError::Unavailable(name.to_string()),
            })?;
            if !w.names.iter().any(|n| n == name) {
                w.names.push(name.to_string());
            }
            return Ok(());
        }
        let mut table = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&holder) = table.get(&*key) {
            if holder == handle.address {
                return Ok(());
            }
            return Err(NameError::Taken {
                name: name.to_string(),
                holder,
            });
        }
        let mut w = handle.watch();
        if w.dead {
            return Err(NameError::Invalid(name.to_string()));
        }
        table.insert(key.into_owned(), handle.address);
        w.names.push(name.to_string());
        Ok(())
    }

    /// Registers global `name` for the local service `target` through the
    /// master; `waiter` hears the master's answer. The name goes when
    /// `target` ends.
    pub fn register_global_confirmed(
        &self,
        tenant: TenantId,
        name: &str,
        target: Address,
        waiter: crate::runtime::Waiter,
    ) {
        let Some(remote) = self.global(name) else {
            let detail = format!("`{name}` is not a global name on this node");
            return waiter.fail(self, ErrorCause::NodeDown, &detail);
        };
        let recorded = self.with_service(target, |handle| {
            let mut w = handle.watch();
            if w.dead || !visible(tenant, handle) {
                return false;
            }
            if !w.names.iter().any(|n| n == name) {
                w.names.push(name.to_string());
            }
            true
        });
        if recorded != Some(true) {
            let detail =
                format!("global name `{name}`: {target} is not a live service of this node");
            return waiter.fail(self, ErrorCause::UnknownAddress, &detail);
        }
        remote.register_confirmed(&scoped(tenant, name), target, waiter);
    }

    /// Removes `name` if the service behind `handle` holds it.
    pub fn unregister_name(&self, name: &str, handle: &ServiceHandle) {
        let key = scoped(handle.tenant.id, name);
        if let Some(harbor) = self.global(name) {
            let mut w = handle.watch();
            if let Some(i) = w.names.iter().position(|n| n == name) {
                w.names.swap_remove(i);
                harbor.unregister(&key, handle.address);
            }
            return;
        }
        let mut table = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if table.get(&*key) == Some(&handle.address) {
            table.remove(&*key);
            handle.watch().names.retain(|n| n != name);
        }
    }

    /// The address holding `name` in `tenant`'s namespace.
    pub fn query_name(&self, tenant: TenantId, name: &str) -> Option<Address> {
        let key = scoped(tenant, name);
        if let Some(harbor) = self.global(name) {
            return harbor.query(&key);
        }
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&*key)
            .copied()
    }

    /// What a service of `tenant` finds under `name`: a name of its own
    /// tenant, or `other-tenant/entry` for an entry it was granted.
    pub fn resolve(&self, tenant: TenantId, name: &str) -> Option<Address> {
        let Some((owner, entry)) = name.split_once('/') else {
            return self.query_name(tenant, name);
        };
        let caller = self.tenant(tenant)?;
        let owner = self.tenant_named(owner)?;
        if !caller.granted(owner.id, entry) {
            return None;
        }
        self.query_name(owner.id, owner.exports.get(entry)?)
    }
}
