//! This node's link to the harbor master: joining, the directory and
//! global names it sends, and rejoining after the master comes back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::proto::Control;
use super::{Harbor, retry_delays};
use crate::runtime::{Address, ErrorCause};
use crate::transport::{Envelope, LinkHandler, Outgoing};

/// Keeps the link to the master: joins again after a drop, with backoff.
/// `ready` hears how the first join went; a first join that fails ends
/// the loop (the node does not start).
pub(super) async fn master_loop(harbor: Arc<Harbor>, ready: oneshot::Sender<Result<(), String>>) {
    let mut backoff = retry_delays();
    let mut ready = Some(ready);
    loop {
        let conn = tokio::select! {
            biased;
            () = harbor.cancel.cancelled() => return,
            c = harbor.join() => c,
        };
        let result = match conn {
            Ok(conn) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let mut handler = MasterHandler {
                    harbor: harbor.clone(),
                    tx: Some(tx),
                    ready: ready.take(),
                };
                let result = conn.run(&mut rx, &mut handler, &harbor.cancel).await;
                ready = handler.ready.take();
                if handler.tx.is_none() {
                    // It had joined: the drop is news.
                    backoff = retry_delays();
                    let why = match &result {
                        Ok(()) => "closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    if !harbor.cancel.is_cancelled() {
                        tracing::warn!(master = %harbor.master_address, "link to the harbor master down: {why}");
                    }
                    harbor.master_lost(&why);
                }
                result.map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        if harbor.cancel.is_cancelled() {
            return;
        }
        if let Some(tx) = ready.take() {
            let _ = tx.send(Err(match result {
                Ok(()) => "the master closed the link".to_string(),
                Err(e) => e,
            }));
            return;
        }
        if let Err(e) = result {
            tracing::debug!("joining the master again: {e}");
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            biased;
            () = harbor.cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Applies what the master says.
struct MasterHandler {
    harbor: Arc<Harbor>,
    /// Handed to the harbor once the join is accepted.
    tx: Option<mpsc::UnboundedSender<Outgoing<Control>>>,
    /// Told when the node's first join is accepted.
    ready: Option<oneshot::Sender<Result<(), String>>>,
}

impl LinkHandler<Control> for MasterHandler {
    fn on_message(&mut self, e: Envelope, _payload: Vec<u8>) {
        tracing::warn!(dest = e.dest, "service message on the master link dropped");
    }

    fn on_control(&mut self, control: Control) -> Result<(), String> {
        let h = &self.harbor;
        match control {
            Control::Joined { nodes } => {
                tracing::info!(master = %h.master_address, nodes = nodes.len(), "joined the harbor");
                if let Some(tx) = self.tx.take() {
                    *h.master_tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
                }
                h.apply_joined(nodes);
                h.fire_watchers();
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            Control::JoinRefused { reason } => {
                tracing::error!(master = %h.master_address, "join refused: {reason}");
                return Err(reason);
            }
            Control::NodeUp { id, address } => {
                tracing::info!(peer = id, %address, "node joined the harbor");
                h.ensure_peer(id, Some(address));
            }
            Control::NodeDown { id } => {
                tracing::info!(peer = id, "node left the harbor");
                h.remove_peer(id);
            }
            Control::Name { name, address } => {
                h.names().table.insert(name, Address(address));
                h.wake_queries();
            }
            Control::NameGone { name } => {
                h.names().table.remove(&name);
            }
            Control::Registered {
                request,
                name,
                result,
            } => {
                if let Err(e) = &result {
                    tracing::warn!(%name, "global name refused by the master: {e}");
                    let mut names = h.names();
                    if let Some(mine) = names.own.remove(&name)
                        && names.table.get(&name) == Some(&mine)
                    {
                        names.table.remove(&name);
                    }
                }
                let waiter = h.names().registering.remove(&request);
                if let (Some(w), Some(kernel)) = (waiter, h.kernel()) {
                    match result {
                        Ok(()) => w.respond(&kernel, w.to, Vec::new()),
                        Err(e) => w.fail(&kernel, ErrorCause::Service, &e),
                    }
                }
            }
            other => {
                return Err(format!(
                    "unexpected control message from the master: {other:?}"
                ));
            }
        }
        Ok(())
    }
}
