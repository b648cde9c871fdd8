//! `skyhost:service/cluster`: named nodes calling each other's services.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::runtime::{Address, ErrorCause};
use crate::wasm::bindings::skyhost::service::cluster;
use crate::wasm::state::ServiceState;

pub(super) const NOT_IN_A_CLUSTER: &str = "this node is not in a cluster";

impl From<cluster::Service> for crate::cluster::proto::Target {
    fn from(s: cluster::Service) -> Self {
        match s {
            cluster::Service::Name(n) => crate::cluster::proto::Target::Name(n),
            cluster::Service::Address(a) => crate::cluster::proto::Target::Address(a),
        }
    }
}

impl ServiceState {
    /// Logs a cluster call or send of a traced service or request.
    pub(super) fn trace_cluster_out(&self, node: &str, service: &cluster::Service, size: usize) {
        if self.current_trace != 0 || self.handle.usage.traced.load(Ordering::Relaxed) {
            let target = match service {
                cluster::Service::Name(n) => n.clone(),
                cluster::Service::Address(a) => Address(*a).to_string(),
            };
            tracing::info!(
                target: "skyhost::trace",
                trace = format_args!("{:016x}", self.current_trace),
                direction = "out",
                node,
                %target,
                size,
                "trace cluster"
            );
        }
    }
}

impl ServiceState {
    /// [`part_session`](Self::part_session) for the cluster.
    pub(super) fn cluster_session(
        &mut self,
        ask: impl FnOnce(&std::sync::Arc<crate::cluster::Cluster>, crate::runtime::Waiter),
    ) -> u32 {
        let parts = self.parts.clone();
        self.part_session(parts.cluster.get(), NOT_IN_A_CLUSTER, ask)
    }
}

impl ServiceState {
    /// A cluster session for a request carrying `payload`: answered at once
    /// with an error when the payload is over the tenant's limit, else
    /// `ask` starts it with the caller's origin, timeout (0: none) and payload.
    pub(super) fn cluster_request(
        &mut self,
        payload: Vec<u8>,
        timeout_ms: u32,
        ask: impl FnOnce(
            &std::sync::Arc<crate::cluster::Cluster>,
            crate::cluster::Origin,
            crate::runtime::Waiter,
            Option<Duration>,
            Vec<u8>,
        ),
    ) -> u32 {
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.into()));
        let too_large = self.check_size(&payload).is_err();
        let limit = self.handle.tenant.quotas.max_payload;
        let kernel = self.kernel.clone();
        let origin = crate::cluster::Origin {
            tenant: self.tenant,
            trace: self.current_trace,
        };
        self.cluster_session(|c, waiter| {
            if too_large {
                let detail = format!("payload larger than the limit of {limit} bytes");
                return waiter.fail(&kernel, ErrorCause::Service, &detail);
            }
            ask(c, origin, waiter, timeout, payload);
        })
    }
}

impl cluster::Host for ServiceState {
    fn node_name(&mut self) -> String {
        self.parts
            .cluster
            .get()
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }

    fn open(&mut self, at: String) -> Result<String, String> {
        let cluster = self.parts.cluster.get().ok_or(NOT_IN_A_CLUSTER)?;
        cluster.open(&at).map(|a| a.to_string())
    }

    fn call(
        &mut self,
        node: String,
        service: cluster::Service,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> u32 {
        self.trace_cluster_out(&node, &service, payload.len());
        self.cluster_request(
            payload,
            timeout_ms,
            |c, origin, waiter, timeout, payload| {
                c.call(origin, &node, service.into(), payload, waiter, timeout);
            },
        )
    }

    fn send(
        &mut self,
        node: String,
        service: cluster::Service,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        if self.check_size(&payload).is_err() {
            return Err(format!(
                "payload larger than the limit of {} bytes",
                self.handle.tenant.quotas.max_payload
            ));
        }
        self.trace_cluster_out(&node, &service, payload.len());
        let cluster = self.parts.cluster.get().ok_or(NOT_IN_A_CLUSTER)?;
        cluster
            .send(
                crate::cluster::Origin {
                    tenant: self.tenant,
                    trace: self.current_trace,
                },
                &node,
                service.into(),
                payload,
            )
            .map_err(|e| e.to_string())
    }

    fn send_batch(
        &mut self,
        node: String,
        service: cluster::Service,
        batch: Vec<u8>,
    ) -> wasmtime::Result<Result<(), cluster::BatchRefused>> {
        let total = crate::transport::batch::check(&batch)?;
        if total == 0 {
            return Ok(Ok(()));
        }
        // A payload over the limit is refused alone.
        let (records, too_large) =
            crate::transport::batch::keep_fitting(batch, |p| self.check_size(p).is_ok());
        let sending = total - too_large;
        let refused = |count, reason| Ok(Err(cluster::BatchRefused { count, reason }));
        let Some(cluster) = self.parts.cluster.get() else {
            return refused(total, NOT_IN_A_CLUSTER.to_string());
        };
        if sending > 0 {
            self.trace_cluster_out(&node, &service, records.len());
            let origin = crate::cluster::Origin {
                tenant: self.tenant,
                trace: self.current_trace,
            };
            if let Err(e) = cluster.send_batch(origin, &node, service.into(), records, sending) {
                return refused(total, e.to_string());
            }
        }
        if too_large > 0 {
            let limit = self.handle.tenant.quotas.max_payload;
            return refused(
                too_large,
                format!("payload larger than the limit of {limit} bytes"),
            );
        }
        Ok(Ok(()))
    }

    fn proxy(&mut self, node: String, service: cluster::Service) -> u32 {
        self.parts
            .cluster
            .get()
            .and_then(|c| c.proxy(&self.handle.tenant, &node, service.into()))
            .map_or(0, |a| a.0)
    }

    fn register(&mut self, name: String, target: u32) {
        if let Some(c) = self.parts.cluster.get() {
            c.register(self.tenant, &name, Address(target));
        }
    }

    fn unregister(&mut self, name: String) {
        if let Some(c) = self.parts.cluster.get() {
            c.unregister(self.tenant, &name);
        }
    }

    fn query(&mut self, node: String, name: String) -> u32 {
        let tenant = self.tenant;
        self.cluster_session(|c, waiter| c.query(tenant, &node, name, waiter))
    }

    fn reload(&mut self, config: String) -> Result<(), String> {
        let cluster = self.parts.cluster.get().ok_or(NOT_IN_A_CLUSTER)?;
        cluster.reload(&config).map_err(|e| e.to_string())
    }
}
