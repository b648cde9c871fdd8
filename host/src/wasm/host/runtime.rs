//! `skyhost:service/runtime`: what a service asks of its local node.

use crate::runtime::{Address, ErrorCause, Message, kind};
use crate::wasm::bindings::skyhost::service::{runtime, types};
use crate::wasm::state::{ServiceState, wire_error};
use crate::wasm::{handoff, outbox};

impl runtime::Host for ServiceState {
    fn self_address(&mut self) -> u32 {
        self.address.0
    }

    fn tenant(&mut self) -> String {
        self.handle.tenant.name.to_string()
    }

    fn send(
        &mut self,
        dest: u32,
        kind: u8,
        session: u32,
        payload: Vec<u8>,
    ) -> Result<(), types::SendError> {
        if kind::is_reserved(kind) {
            return Err(types::SendError::ReservedKind);
        }
        self.check_size(&payload)?;
        self.deliver(
            dest,
            Message {
                kind,
                source: self.address,
                session,
                tenant: self.tenant,
                payload: payload.into(),
                trace: self.current_trace,
            },
        )
    }

    fn send_batch(
        &mut self,
        batch: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::BatchSendError>> {
        outbox::check(&batch)?;
        // One buffer for the batch; each message's payload is a view of it.
        let batch = bytes::Bytes::from(batch);
        // Messages for one target back to back go in as one run.
        let mut run = Vec::new();
        let mut run_dest = 0;
        let mut run_start = 0;
        for (index, record) in outbox::records(&batch).flatten().enumerate() {
            let refused = if kind::is_reserved(record.kind) {
                Some(types::SendError::ReservedKind)
            } else {
                self.check_size(&batch[record.payload.clone()]).err()
            };
            if refused.is_some() || record.dest != run_dest {
                if let Err(e) = self.deliver_run(run_dest, &mut run, run_start) {
                    return Ok(Err(e));
                }
                if let Some(error) = refused {
                    return Ok(Err(batch_error(index, error)));
                }
                (run_dest, run_start) = (record.dest, index);
            }
            run.push(Message {
                kind: record.kind,
                source: self.address,
                session: record.session,
                tenant: self.tenant,
                payload: batch.slice(record.payload),
                trace: self.current_trace,
            });
        }
        Ok(self.deliver_run(run_dest, &mut run, run_start))
    }

    fn call(&mut self, dest: u32, payload: Vec<u8>) -> Result<u32, types::SendError> {
        let request = self.request(payload)?;
        self.send_request(dest, request)
    }

    fn call_timeout(
        &mut self,
        dest: u32,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<u32, types::SendError> {
        let session = runtime::Host::call(self, dest, payload)?;
        self.expire_after(tokio::time::Instant::now(), session, timeout_ms);
        Ok(session)
    }

    fn respond(
        &mut self,
        dest: u32,
        session: u32,
        reply: Result<Vec<u8>, String>,
    ) -> Result<(), types::SendError> {
        // An answer to a session it owes goes back to the caller's tenant
        // (a call through a grant); any other reaches its own tenant only.
        let lent = handoff::answers_lent(self, dest, session);
        let tenant = if lent {
            self.tenant
        } else {
            self.owed
                .remove(&(Address(dest), session))
                .unwrap_or(self.tenant)
        };
        let message = match reply {
            Ok(payload) => {
                self.check_size(&payload)?;
                Message {
                    kind: kind::RESPONSE,
                    source: self.address,
                    session,
                    tenant,
                    payload: payload.into(),
                    trace: self.current_trace,
                }
            }
            Err(text) => Message {
                tenant,
                trace: self.current_trace,
                ..Message::error(self.address, session, ErrorCause::Service, &text)
            },
        };
        let message = if lent {
            handoff::capture(self, message)
        } else {
            Some(message)
        };
        match message {
            Some(message) => self.deliver(dest, message),
            None => Ok(()),
        }
    }

    async fn call_now(
        &mut self,
        dest: u32,
        payload: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<types::CallStarted, types::SendError> {
        let request = self.request_unawaited(payload)?;
        let session = request.session;
        let answer = match handoff::call(self, Address(dest), request, timeout_ms).await {
            Ok(answer) => answer,
            Err(request) => {
                self.awaiting.insert(session);
                self.send_request(dest, request)?;
                self.expire_after(tokio::time::Instant::now(), session, timeout_ms);
                None
            }
        };
        Ok(types::CallStarted { session, answer })
    }

    fn start_trace(&mut self) -> u64 {
        if self.current_trace == 0 {
            self.current_trace = self.kernel.fresh_trace();
            tracing::info!(
                target: "skyhost::trace",
                trace = format_args!("{:016x}", self.current_trace),
                "trace started"
            );
        }
        self.current_trace
    }

    fn new_session(&mut self) -> u32 {
        self.fresh_guest_session()
    }

    fn register(&mut self, name: String) -> Result<(), types::NameError> {
        self.kernel
            .register_name(&name, &self.handle)
            .map_err(|e| match e {
                crate::runtime::NameError::Invalid(_) => types::NameError::Invalid,
                crate::runtime::NameError::Taken { .. } => types::NameError::Taken,
                crate::runtime::NameError::Unavailable(_) => types::NameError::Unavailable,
            })
    }

    fn unregister(&mut self, name: String) {
        self.kernel.unregister_name(&name, &self.handle);
    }

    fn query(&mut self, name: String) -> Option<u32> {
        self.kernel.resolve(self.tenant, &name).map(|a| a.0)
    }

    fn spawn(&mut self, module: String, args: Vec<u8>) -> u32 {
        let session = self.awaited_session();
        let ready = crate::runtime::Ready::Session(crate::runtime::Waiter {
            to: self.address,
            session,
        });
        self.kernel
            .spawn_detached(self.handle.tenant.clone(), module, args, ready);
        session
    }

    fn exit(&mut self) {
        self.exit_requested = true;
    }

    fn stay_awake(&mut self, on: bool) {
        self.stays_awake = on;
    }

    fn kill(&mut self, target: u32) -> bool {
        if target == self.address.0 {
            self.exit_requested = true;
            return true;
        }
        self.kernel.kill(self.tenant, Address(target))
    }

    fn timeout(&mut self, ms: u32) -> u32 {
        let session = self.awaited_session();
        // Timers set in one piece of work count from one "now", so they fire
        // in deadline order.
        let from = *self
            .work_started
            .get_or_insert_with(tokio::time::Instant::now);
        self.kernel
            .start_timer(from, self.address, session, ms, self.current_trace);
        session
    }

    fn monitor(&mut self, target: u32) {
        self.kernel
            .monitor(self.tenant, self.address, Address(target));
    }

    fn demonitor(&mut self, target: u32) {
        self.kernel.demonitor(self.address, Address(target));
    }

    fn now(&mut self) -> u64 {
        self.kernel.nanos_since_start() / 1_000
    }

    fn wall_time(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        // The service's span names its address.
        match level {
            types::LogLevel::Trace => {
                tracing::trace!(target: "skyhost::guest", "{message}")
            }
            types::LogLevel::Debug => {
                tracing::debug!(target: "skyhost::guest", "{message}")
            }
            types::LogLevel::Info => {
                tracing::info!(target: "skyhost::guest", "{message}")
            }
            types::LogLevel::Warn => {
                tracing::warn!(target: "skyhost::guest", "{message}")
            }
            types::LogLevel::Error => {
                tracing::error!(target: "skyhost::guest", "{message}")
            }
        }
    }
}

impl ServiceState {
    /// Sends `run` (messages for `dest`, the first of them message `start`
    /// of its batch; left empty) with `send`'s accounting and tracing.
    fn deliver_run(
        &mut self,
        dest: u32,
        run: &mut Vec<Message>,
        start: usize,
    ) -> Result<(), types::BatchSendError> {
        if run.is_empty() {
            return Ok(());
        }
        if self.traced() {
            // Each message logged, as `send` logs it.
            for (i, message) in run.drain(..).enumerate() {
                self.deliver(dest, message)
                    .map_err(|error| batch_error(start + i, error))?;
            }
            return Ok(());
        }
        self.sent += run.len() as u64;
        handoff::passed(self, Address(dest));
        self.kernel
            .deliver_run(Address(dest), run)
            .map_err(|(i, error)| batch_error(start + i, wire_error(error)))
    }
}

/// Message `index` of a batch was refused for `error`.
fn batch_error(index: usize, error: types::SendError) -> types::BatchSendError {
    types::BatchSendError {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        error,
    }
}
