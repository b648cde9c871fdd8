//! The harbor master: the directory of nodes and the global names.
//!
//! Each node keeps one link to the master. The master accepts a node's
//! `Join` unless its harbor id is held by a live node, sends it the
//! directory and every global name, and tells the others `NodeUp`. When a
//! node's link drops, its names go and the others hear `NodeDown`. Names
//! are first come, first served; the holder must live on the node that
//! registers it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::proto::{Control, MASTER_NAME, MASTER_PROTOCOL};
use crate::runtime::Address;
use crate::transport::tls::Tls;
use crate::transport::{Connection, Envelope, LinkConfig, LinkHandler, Net, Outgoing, Socket};

/// A running master.
pub struct Master {
    address: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// One node in the directory.
struct Member {
    address: String,
    tx: mpsc::UnboundedSender<Outgoing<Control>>,
    /// Tells this connection from a later one of the same id.
    connection: u64,
}

#[derive(Default)]
struct Directory {
    // Ordered, so what the master says (the node list, names, broadcasts)
    // comes in the same order every time: a simulated run replays exactly.
    nodes: BTreeMap<u8, Member>,
    names: BTreeMap<String, u32>,
    next_connection: u64,
}

impl Directory {
    fn broadcast(&self, except: u8, control: &Control) {
        for (&id, m) in &self.nodes {
            if id != except {
                let _ = m.tx.send(Outgoing::Control(control.clone()));
            }
        }
    }
}

impl Master {
    /// Listens on `listen` (port 0 picks one) and serves nodes until stopped.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(
        net: &dyn Net,
        listen: &str,
        secret: Arc<[u8]>,
        heartbeat: Duration,
        dead_after: Duration,
        tls: Option<Tls>,
    ) -> std::io::Result<Master> {
        let listener = net.bind(listen)?;
        let address = listener.local_addr()?;
        tracing::info!(%address, "harbor master listening");
        let master = Master {
            address,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let directory = Arc::new(Mutex::new(Directory::default()));
        let config = move || {
            let mut c = LinkConfig::new(MASTER_PROTOCOL, MASTER_NAME, secret.clone());
            c.heartbeat = heartbeat;
            c.dead_after = dead_after;
            c
        };
        let cancel = master.cancel.clone();
        let tasks = master.tasks.clone();
        master.tasks.spawn(
            async move {
                loop {
                    let (stream, from) = tokio::select! {
                        biased;
                        () = cancel.cancelled() => return,
                        a = listener.accept() => match a {
                            Ok(a) => a,
                            Err(e) => {
                                tracing::warn!("accepting a node: {e}");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    let serve = serve_node(
                        stream,
                        from,
                        (config(), tls.clone()),
                        directory.clone(),
                        cancel.clone(),
                    );
                    tasks.spawn(serve.in_current_span());
                }
            }
            .instrument(tracing::info_span!("master", %address)),
        );
        Ok(master)
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every node link and waits for the master's tasks.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn serve_node(
    stream: Socket,
    from: SocketAddr,
    (config, tls): (LinkConfig, Option<Tls>),
    directory: Arc<Mutex<Directory>>,
    cancel: CancellationToken,
) {
    let conn = match Connection::<Control>::accept_secured(stream, config, tls.as_ref()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%from, "node link refused: {e}");
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut handler = NodeHandler {
        directory: directory.clone(),
        tx,
        joined: None,
        claimed: conn.peer().map(|p| p.name.clone()).unwrap_or_default(),
        from,
    };
    let result = conn.run(&mut rx, &mut handler, &cancel).await;
    let Some((id, connection)) = handler.joined else {
        if let Err(e) = result {
            tracing::warn!(%from, "node link closed before it joined: {e}");
        }
        return;
    };
    let mut d = directory.lock().unwrap_or_else(|e| e.into_inner());
    if d.nodes.get(&id).is_some_and(|m| m.connection == connection) {
        d.nodes.remove(&id);
        let gone: Vec<String> = d
            .names
            .iter()
            .filter(|&(_, &a)| Address(a).harbor().0 == id)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &gone {
            d.names.remove(n);
        }
        match &result {
            Ok(()) => tracing::info!(harbor = id, "node left"),
            Err(e) => tracing::warn!(harbor = id, "node left: {e}"),
        }
        d.broadcast(id, &Control::NodeDown { id });
        #[cfg(test)]
        let gone = if crate::sim::broken(crate::sim::Break::KeepNames) {
            Vec::new()
        } else {
            gone
        };
        for name in gone {
            d.broadcast(id, &Control::NameGone { name });
        }
    }
}

/// Serves one node's link.
struct NodeHandler {
    directory: Arc<Mutex<Directory>>,
    tx: mpsc::UnboundedSender<Outgoing<Control>>,
    /// The harbor id and connection number once joined.
    joined: Option<(u8, u64)>,
    /// The name the node gave in the link handshake (its id).
    claimed: String,
    /// Where the node's link came from.
    from: SocketAddr,
}

impl NodeHandler {
    fn reply(&self, control: Control) {
        let _ = self.tx.send(Outgoing::Control(control));
    }
}

impl LinkHandler<Control> for NodeHandler {
    fn on_message(&mut self, e: Envelope, _payload: Vec<u8>) {
        tracing::warn!(dest = e.dest, "service message sent to the master dropped");
    }

    fn on_control(&mut self, control: Control) -> Result<(), String> {
        let mut d = self.directory.lock().unwrap_or_else(|e| e.into_inner());
        let Some((me, _)) = self.joined else {
            let Control::Join { id, address } = control else {
                return Err(format!("expected Join first, got {control:?}"));
            };
            // A node listening on every interface is told to its peers at
            // the address its link to the master came from.
            let address = crate::transport::net::reachable_at(&address, self.from.ip());
            if id == 0 {
                let reason = "harbor id 0 cannot join (it means a single node)".to_string();
                self.reply(Control::JoinRefused {
                    reason: reason.clone(),
                });
                return Err(reason);
            }
            if self.claimed != id.to_string() {
                // Under TLS the certificate proved the link's name: a node
                // cannot join under another id than the one it holds.
                let reason = format!(
                    "joining as harbor id {id} on a link that named itself `{}`",
                    self.claimed
                );
                tracing::warn!("join refused: {reason}");
                self.reply(Control::JoinRefused {
                    reason: reason.clone(),
                });
                return Err(reason);
            }
            if let Some(holder) = d.nodes.get(&id) {
                let reason = format!("harbor id {id} is in use by the node at {}", holder.address);
                tracing::warn!("join refused: {reason}");
                self.reply(Control::JoinRefused {
                    reason: reason.clone(),
                });
                return Err(reason);
            }
            let nodes = d
                .nodes
                .iter()
                .map(|(&i, m)| (i, m.address.clone()))
                .collect();
            // Names follow one frame each: thousands of them would not fit
            // in one control frame.
            self.reply(Control::Joined { nodes });
            for (name, &address) in &d.names {
                self.reply(Control::Name {
                    name: name.clone(),
                    address,
                });
            }
            d.broadcast(
                id,
                &Control::NodeUp {
                    id,
                    address: address.clone(),
                },
            );
            d.next_connection += 1;
            let connection = d.next_connection;
            tracing::info!(harbor = id, %address, "node joined");
            d.nodes.insert(
                id,
                Member {
                    address,
                    tx: self.tx.clone(),
                    connection,
                },
            );
            self.joined = Some((id, connection));
            return Ok(());
        };
        match control {
            Control::Register {
                request,
                name,
                address,
            } => {
                let result = if Address(address).harbor().0 != me {
                    Err(format!("{} is not on harbor {me}", Address(address)))
                } else {
                    match d.names.get(&name) {
                        Some(&holder) if holder != address => Err(format!(
                            "global name `{name}` is held by {}",
                            Address(holder)
                        )),
                        _ => {
                            d.names.insert(name.clone(), address);
                            d.broadcast(
                                0,
                                &Control::Name {
                                    name: name.clone(),
                                    address,
                                },
                            );
                            Ok(())
                        }
                    }
                };
                if request != 0 || result.is_err() {
                    self.reply(Control::Registered {
                        request,
                        name,
                        result,
                    });
                }
            }
            Control::Unregister { name, address } => {
                if d.names.get(&name) == Some(&address) {
                    d.names.remove(&name);
                    d.broadcast(0, &Control::NameGone { name });
                }
            }
            other => {
                return Err(format!(
                    "unexpected control message from harbor {me}: {other:?}"
                ));
            }
        }
        Ok(())
    }
}
