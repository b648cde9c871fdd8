//! `skyhost:service/harbor`: the nodes that share the address space, and
//! global names.

use crate::runtime::{Address, ErrorCause};
use crate::wasm::bindings::skyhost::service::harbor;
use crate::wasm::state::ServiceState;

impl ServiceState {
    /// [`part_session`](Self::part_session) for the harbor.
    fn harbor_session(
        &mut self,
        absent: &str,
        ask: impl FnOnce(&std::sync::Arc<crate::harbor::Harbor>, crate::runtime::Waiter),
    ) -> u32 {
        let parts = self.parts.clone();
        self.part_session(parts.harbor.get(), absent, ask)
    }
}

const NOT_IN_A_HARBOR: &str = "this node is not in a harbor";

impl harbor::Host for ServiceState {
    fn id(&mut self) -> u8 {
        self.kernel.harbor.0
    }

    fn globalname(&mut self, name: String, target: u32) -> u32 {
        let target = Address(target);
        let kernel = self.kernel.clone();
        let tenant = self.tenant;
        self.harbor_session(NOT_IN_A_HARBOR, move |_, waiter| {
            if name.starts_with('.') || !crate::runtime::is_name(&name) {
                let detail = format!("`{name}` is not a global name");
                return waiter.fail(&kernel, ErrorCause::Service, &detail);
            }
            kernel.register_global_confirmed(tenant, &name, target, waiter);
        })
    }

    fn queryname(&mut self, name: String, timeout_ms: u32) -> u32 {
        let key = crate::runtime::scoped(self.tenant, &name).into_owned();
        self.harbor_session(NOT_IN_A_HARBOR, |h, waiter| {
            h.queryname(&key, timeout_ms, waiter)
        })
    }

    fn connect(&mut self, id: u8) -> u32 {
        self.harbor_session(NOT_IN_A_HARBOR, |h, waiter| {
            h.watch(crate::harbor::Watch::Connect(id), waiter);
        })
    }

    fn link(&mut self, id: u8) -> u32 {
        self.harbor_session(NOT_IN_A_HARBOR, |h, waiter| {
            h.watch(crate::harbor::Watch::Link(id), waiter);
        })
    }

    fn linkmaster(&mut self) -> u32 {
        self.harbor_session(NOT_IN_A_HARBOR, |h, waiter| {
            h.watch(crate::harbor::Watch::LinkMaster, waiter);
        })
    }
}
