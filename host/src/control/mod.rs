//! The node's control address: an authenticated line protocol for
//! operators and scripts (`skyhost tenant apply|remove`, `skyhost ctl`).
//!
//! Flow: `[control]` in the node file opens a TCP listener (127.0.0.1 by
//! default, off unless set). Each connection is one task: it reads lines
//! (at most [`proto::MAX_LINE`] bytes), parses them with [`proto::Request`],
//! runs them against the [`Node`] and writes [`proto::Answer`]s. The first
//! line must be `auth <secret>` with the node's control secret; anything
//! else closes the connection. The handlers run on host tasks, not in a
//! guest service, so a flooded node still answers.

mod client;
pub mod proto;

pub use client::{ControlClient, request};

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::config::{ControlConfig, NodeConfig, TenantConfig};
use crate::node::{Node, NodeError};
use crate::runtime::{Address, kind};
use crate::transport::tls::{Stream, Tls, TlsError};
use proto::{Answer, Poke, Request, Target};

/// Opens what a node file asks for above the node itself: its control
/// address and its `/metrics` (the CLI's `run` does this after
/// [`Node::launch`]).
///
/// # Errors
/// When either address cannot be bound.
pub async fn serve(node: &Node, config: &NodeConfig) -> Result<(), NodeError> {
    let control = match &config.control {
        Some(c) => Some(start(node, c).await.map_err(|e| match e {
            StartError::Tls(e) => NodeError::ControlTls(e),
            StartError::Listen(source) => NodeError::Listen {
                what: "control",
                address: c.address.clone(),
                source,
            },
        })?),
        None => None,
    };
    let metrics = match &config.metrics {
        Some(m) => {
            Some(
                crate::metrics::start(node, m)
                    .await
                    .map_err(|source| NodeError::Listen {
                        what: "metrics",
                        address: m.address.clone(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    node.bound(control, metrics);
    Ok(())
}

/// Why the control address could not open.
enum StartError {
    Tls(TlsError),
    Listen(std::io::Error),
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Listen(e)
    }
}

/// How a connection proves it is an operator's.
struct Gate {
    /// The secret its `auth` line must give; none: a TLS client
    /// certificate is enough.
    secret: Option<String>,
    tls: Option<Tls>,
}

/// Opens the control listener of `node`; connections are served until the
/// node shuts down.
///
/// # Errors
/// When the TLS files cannot be used or the address cannot be bound.
async fn start(node: &Node, config: &ControlConfig) -> Result<SocketAddr, StartError> {
    let tls = match &config.tls {
        Some(files) => Some(Tls::load(files).map_err(StartError::Tls)?),
        None => None,
    };
    let listener = TcpListener::bind(&config.address).await?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, tls = tls.is_some(), "control listening");
    let gate = std::sync::Arc::new(Gate {
        secret: config.secret.clone(),
        tls,
    });
    let node = node.clone();
    let (tasks, stop) = node.task_tracker();
    let spawner = tasks.clone();
    tasks.spawn(
        async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, from)) => {
                        let (node, gate, stop) = (node.clone(), gate.clone(), stop.clone());
                        let span = tracing::info_span!("control", %from);
                        spawner.spawn(
                            async move {
                                tokio::select! {
                                    () = stop.cancelled() => {}
                                    r = open_connection(&node, &gate, stream) => if let Err(e) = r {
                                        tracing::debug!("control connection ended: {e}");
                                    },
                                }
                            }
                            .instrument(span),
                        );
                    }
                    Err(e) => tracing::warn!("control accept failed: {e}"),
                }
            }
        }
        .in_current_span(),
    );
    Ok(bound)
}

/// Completes TLS on a connection when the gate has it (a client without
/// a certificate the CA signed goes no further), then serves it.
async fn open_connection(node: &Node, gate: &Gate, stream: TcpStream) -> std::io::Result<()> {
    let stream = match &gate.tls {
        Some(tls) => {
            let secured = tokio::time::timeout(TLS_HANDSHAKE, tls.accept(stream)).await;
            match secured {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!("control connection refused: {e}");
                    return Ok(());
                }
                Err(_) => {
                    tracing::warn!(
                        "control connection refused: no TLS handshake within {TLS_HANDSHAKE:?}"
                    );
                    return Ok(());
                }
            }
        }
        None => Stream::Plain(stream),
    };
    // A verified client certificate stands for the secret when none is set.
    let cert_only = gate.tls.is_some() && gate.secret.is_none();
    let (read, write) = tokio::io::split(stream);
    serve_connection(
        node,
        gate.secret.as_deref(),
        cert_only,
        BufReader::new(read),
        write,
    )
    .await
}

/// How long a control client has to complete TLS.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one connection until it quits, fails to authenticate, sends a
/// line that is too long, or closes.
async fn serve_connection<R, W>(
    node: &Node,
    secret: Option<&str>,
    cert_only: bool,
    mut lines: BufReader<R>,
    mut write: W,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut line = Vec::new();
    let mut json = false;
    let mut authenticated = false;
    loop {
        line.clear();
        let n = tokio::io::AsyncReadExt::take(&mut lines, proto::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > proto::MAX_LINE {
            let answer = Answer::Error(format!("line longer than {} bytes", proto::MAX_LINE));
            write.write_all(answer.encode(json).as_bytes()).await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let request = Request::parse(&text);
        if !authenticated {
            let ok = match (&request, secret) {
                (Ok(Request::Auth(s)), Some(secret)) => same_secret(s, secret),
                // No secret: the TLS certificate let it in (see
                // `open_connection`); a plain node always has one.
                (Ok(Request::Auth(_)), None) => cert_only,
                _ => false,
            };
            let answer = if ok {
                Answer::Ok(Vec::new())
            } else {
                tracing::warn!("control connection refused: not authenticated");
                Answer::Error("not authenticated: send `auth <secret>` first".into())
            };
            write.write_all(answer.encode(json).as_bytes()).await?;
            if !ok {
                return Ok(());
            }
            authenticated = true;
            continue;
        }
        let answer = match request {
            Err(e) => Answer::Error(e.to_string()),
            Ok(Request::Quit) => return Ok(()),
            Ok(Request::Json) => {
                json = true;
                Answer::Ok(Vec::new())
            }
            Ok(Request::Watch(poke)) => watch(node, &poke, &mut lines, &mut write, json).await?,
            Ok(r) => run(node, r).await,
        };
        write.write_all(answer.encode(json).as_bytes()).await?;
    }
}

/// `watch`: writes a line for each message the target takes and sends,
/// until the client sends a line (any: it is not run) or the service ends;
/// then the answer. In JSON mode each line goes as `{"event": "..."}`.
async fn watch(
    node: &Node,
    poke: &Poke,
    client: &mut BufReader<impl AsyncRead + Unpin>,
    write: &mut (impl AsyncWrite + Unpin),
    json: bool,
) -> std::io::Result<Answer> {
    let address = match reach(node, poke) {
        Ok((_, address)) => address,
        Err(e) => return Ok(Answer::Error(e)),
    };
    let Some(mut events) = node.tap(address) else {
        return Ok(Answer::Error(format!("no service {address}")));
    };
    let mut stop = Vec::new();
    loop {
        // The bytes a cancelled read took stay in `stop`.
        let event = tokio::select! {
            e = events.recv() => e,
            read = client.read_until(b'\n', &mut stop) => {
                return match read? {
                    0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
                    _ => Ok(Answer::Ok(Vec::new())),
                };
            }
        };
        let Some(event) = event else {
            return Ok(Answer::Ok(vec![format!("{address} ended")]));
        };
        let line = proto::watch_line(&event);
        let text = if json {
            let mut j = serde_json::json!({ "event": line }).to_string();
            j.push('\n');
            j
        } else {
            format!("{line}\n")
        };
        write.write_all(text.as_bytes()).await?;
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(given: &str, secret: &str) -> bool {
    use hmac::Mac;
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"skyhost-control") else {
        return false;
    };
    mac.update(secret.as_bytes());
    let expected = mac.finalize().into_bytes();
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"skyhost-control") else {
        return false;
    };
    mac.update(given.as_bytes());
    !secret.is_empty() && mac.verify_slice(&expected).is_ok()
}

/// How long `ping` waits for a service to pick its message up.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long `call` waits for its answer.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A client in the tenant of `poke` and the address of its target.
///
/// # Errors
/// No such tenant, or no service of that name in it.
fn reach(node: &Node, poke: &Poke) -> Result<(crate::Client, Address), String> {
    let client = node
        .client_in(&poke.tenant)
        .ok_or_else(|| format!("no tenant `{}` on this node", poke.tenant))?;
    let address = match &poke.target {
        Target::Address(a) => *a,
        Target::Name(name) => node
            .query_in(&poke.tenant, name)
            .ok_or_else(|| format!("no service named `{name}` in tenant `{}`", poke.tenant))?,
    };
    Ok((client, address))
}

/// Calls the target of `poke` and prints its answer: its lines when it is
/// text, else its bytes in hex.
async fn call(node: &Node, poke: Poke) -> Answer {
    let (client, address) = match reach(node, &poke) {
        Ok(reached) => reached,
        Err(e) => return Answer::Error(e),
    };
    match client
        .call_timeout(address, poke.payload, CALL_TIMEOUT)
        .await
    {
        Ok(answer) => Answer::Ok(match String::from_utf8(answer) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(bytes) => vec![format!("hex {}", hex::encode(bytes.as_bytes()))],
        }),
        Err(e) => Answer::Error(format!("call {}: {e}", poke.target)),
    }
}

/// Runs one authenticated request.
async fn run(node: &Node, request: Request) -> Answer {
    match request {
        Request::Help => Answer::Ok(proto::HELP.iter().map(|s| (*s).to_string()).collect()),
        Request::Tenants => Answer::Ok(
            node.tenant_stats()
                .into_iter()
                .map(|s| {
                    format!(
                        "{} services={} memory={} cpu_us={} in={} out={} refusals={} grant_calls={}",
                        s.name,
                        s.services,
                        s.memory_bytes,
                        s.cpu_us,
                        s.messages_in,
                        s.messages_out,
                        s.refusals,
                        s.grant_calls
                    )
                })
                .collect(),
        ),
        Request::TenantApply(path) => {
            let config = match TenantConfig::load(std::path::Path::new(&path), node.limits()) {
                Ok(c) => c,
                Err(e) => return Answer::Error(e.to_string()),
            };
            match node.apply_tenant(&config).await {
                Ok(started) => Answer::Ok(
                    started
                        .into_iter()
                        .map(|a| format!("started {a}"))
                        .collect(),
                ),
                Err(e) => Answer::Error(e.to_string()),
            }
        }
        Request::TenantRemove(name) => match node.remove_tenant(&name).await {
            Ok(()) => Answer::Ok(vec![format!("removed {name}")]),
            Err(e) => Answer::Error(e.to_string()),
        },
        Request::List => Answer::Ok(
            node.service_infos()
                .into_iter()
                .map(|i| {
                    format!(
                        "{} {} tenant={} names={} mailbox={} {}",
                        i.address,
                        i.module,
                        i.tenant,
                        if i.names.is_empty() { "-".to_string() } else { i.names.join(",") },
                        i.mailbox,
                        i.state
                    )
                })
                .collect(),
        ),
        Request::Stat(address) => match node.service_info(address) {
            Some(i) => Answer::Ok(vec![
                format!("address {}", i.address),
                format!("module {}", i.module),
                format!("tenant {}", i.tenant),
                format!("state {}", i.state),
                format!("messages_in {}", i.messages_in),
                format!("dispatches {}", i.dispatches),
                format!("messages_out {}", i.messages_out),
                format!("cpu_us {}", i.cpu_us),
                format!("mailbox {}", i.mailbox),
                format!("mailbox_peak {}", i.mailbox_peak),
                format!("memory {}", i.memory_bytes),
                format!("awaiting {}", i.awaiting),
                format!("upgrades {}", i.upgrades),
                format!("hibernations {}", i.hibernations),
                format!("age_ms {}", i.age.as_millis()),
            ]),
            None => Answer::Error(format!("no service {address}")),
        },
        Request::Mem => {
            let mut infos = node.service_infos();
            infos.sort_by_key(|i| std::cmp::Reverse(i.memory_bytes));
            let total: usize = infos.iter().map(|i| i.memory_bytes).sum();
            let mut lines: Vec<String> = infos
                .iter()
                .filter(|i| i.memory_bytes > 0)
                .map(|i| format!("{} {} {} KiB", i.address, i.module, i.memory_bytes >> 10))
                .collect();
            lines.push(format!("total {} KiB in {} services", total >> 10, lines.len()));
            Answer::Ok(lines)
        }
        Request::Kill(address) => {
            if node.kill(address) {
                Answer::Ok(vec![format!("killed {address}")])
            } else {
                Answer::Error(format!("no service {address}"))
            }
        }
        Request::Spawn {
            tenant,
            module,
            args,
        } => match node.spawn_in(&tenant, &module, args.as_bytes()).await {
            Ok(a) => Answer::Ok(vec![format!("started {a}")]),
            Err(e) => Answer::Error(e.to_string()),
        },
        Request::Ping(address) => match node.ping(address, PING_TIMEOUT).await {
            Ok(took) => Answer::Ok(vec![format!("pong from {address} in {} µs", took.as_micros())]),
            Err(e) => Answer::Error(format!("ping {address}: {e}")),
        },
        Request::Call(poke) => call(node, poke).await,
        Request::Send(poke) => match reach(node, &poke) {
            Ok((client, address)) => {
                match client.send(address, kind::TEXT, 0, poke.payload) {
                    Ok(()) => Answer::Ok(vec![format!("sent to {address}")]),
                    Err(e) => Answer::Error(format!("send to {}: {e}", poke.target)),
                }
            }
            Err(e) => Answer::Error(e),
        },
        Request::Netstat => Answer::Ok(
            node.links()
                .into_iter()
                .map(|l| {
                    format!(
                        "{} {} {} {} in={} out={} frames_in={} queued={} connections={} rtt_us={}",
                        l.kind,
                        l.peer,
                        if l.address.is_empty() { "-" } else { &l.address },
                        if l.up { "up" } else { "down" },
                        l.bytes_in,
                        l.bytes_out,
                        l.frames_in,
                        l.queued_bytes,
                        l.connections,
                        l.rtt_us.map_or("-".to_string(), |r| r.to_string())
                    )
                })
                .collect(),
        ),
        Request::Upgrade {
            target,
            path,
            wait_ms,
        } => {
            let wait = std::time::Duration::from_millis(wait_ms);
            match node.upgrade(&target, std::path::Path::new(&path), wait).await {
                Ok(reports) => upgrade_answer(&target, &reports),
                Err(e) => Answer::Error(format!("upgrade {target}: {e}")),
            }
        }
        Request::Trace(address, on) => {
            if node.trace(address, on) {
                let state = if on { "on" } else { "off" };
                Answer::Ok(vec![format!("trace {address} {state}")])
            } else {
                Answer::Error(format!("no service {address}"))
            }
        }
        // A second `auth` changes nothing; `json` and `quit` act on the
        // connection and are handled by `serve` before this.
        Request::Auth(_) | Request::Json | Request::Quit => Answer::Ok(Vec::new()),
        // Served by the connection itself: it streams.
        Request::Watch(_) => Answer::Error("watch needs a connection".into()),
    }
}

/// One line per upgraded service; an error answer (with every line) when
/// any of them failed.
fn upgrade_answer(target: &str, reports: &[crate::runtime::UpgradeReport]) -> Answer {
    let lines: Vec<String> = reports
        .iter()
        .map(|r| match &r.result {
            Ok(u) => format!(
                "upgraded {} pause_us={} waited_ms={} state={} queued={}",
                r.address,
                u.pause.as_micros(),
                u.waited.as_millis(),
                u.state_bytes
                    .map_or("init".to_string(), |b| format!("{b}B")),
                u.queued
            ),
            Err(e) => format!("failed {}: {e}", r.address),
        })
        .collect();
    if reports.is_empty() {
        return Answer::Ok(vec![format!(
            "no live instance of {target}; new spawns get the new version"
        )]);
    }
    if reports.iter().any(|r| r.result.is_err()) {
        return Answer::Error(lines.join("; "));
    }
    Answer::Ok(lines)
}
