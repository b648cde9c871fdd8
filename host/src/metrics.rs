//! The node's Prometheus endpoint: `GET /metrics` on the address of the
//! `[metrics]` table (off unless set).
//!
//! Nothing on the message path feeds a metrics library. The node already
//! counts where the work happens: each service's usage line (flushed once per
//! batch: messages by kind, errors by cause, CPU, memory), each tenant's
//! counters, the node's stop counters and each link's `LinkStats`. A scrape
//! reads them all into a fresh `PrometheusRecorder` (`metrics` +
//! `metrics-exporter-prometheus`) and renders its text, so a scrape costs
//! the node nothing between scrapes and shows no stale series for services,
//! tenants or links that are gone. HTTP is hyper's http1 server, one host
//! task per connection.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use metrics::{Key, Label, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio::net::TcpListener;

use crate::config::MetricsConfig;
use crate::node::Node;
use crate::wasm::StopReason;

/// The content type of Prometheus' text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Opens the metrics listener of `node`; scrapes are served until the node
/// shuts down.
///
/// # Errors
/// When the address cannot be bound.
pub(crate) async fn start(node: &Node, config: &MetricsConfig) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(&config.address).await?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "metrics listening");
    let node = node.clone();
    let (tasks, stop) = node.task_tracker();
    let spawner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("metrics accept failed: {e}");
                        continue;
                    }
                },
            };
            let (node, stop) = (node.clone(), stop.clone());
            spawner.spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let service = hyper::service::service_fn(move |request| {
                    let answer = answer(&node, &request);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service);
                tokio::select! {
                    () = stop.cancelled() => {}
                    r = connection => if let Err(e) = r {
                        tracing::debug!("metrics connection ended: {e}");
                    },
                }
            });
        }
    });
    Ok(bound)
}

/// `/metrics` for a GET of it; 404 or 405 for anything else.
fn answer<B>(node: &Node, request: &Request<B>) -> Response<Full<Bytes>> {
    let status = if request.uri().path() != "/metrics" {
        StatusCode::NOT_FOUND
    } else if request.method() != hyper::Method::GET {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        let mut response = Response::new(Full::new(Bytes::from(render(node))));
        if let Ok(value) = hyper::header::HeaderValue::from_str(TEXT_FORMAT) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        return response;
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The node's metrics in Prometheus' text format.
pub fn render(node: &Node) -> String {
    let m = Metrics::new();
    m.gauge(
        "skyhost_services",
        "Live wasm services",
        Unit::Count,
        &[],
        node.service_count() as f64,
    );
    m.gauge(
        "skyhost_hibernated_services",
        "Live wasm services hibernated now (idle, their instances given up)",
        Unit::Count,
        &[],
        node.hibernated_count() as f64,
    );
    m.gauge(
        "skyhost_hibernated_bytes",
        "Bytes the hibernated services keep outside any instance (saved states, memory images)",
        Unit::Bytes,
        &[],
        node.hibernated_bytes() as f64,
    );
    m.counter(
        "skyhost_template_spawns_total",
        "Services born hibernated on what an earlier pure init left, a state or a memory image (template spawn)",
        &[],
        node.template_spawns(),
    );
    m.counter(
        "skyhost_direct_calls_total",
        "Calls run inside their caller's call, on its thread, with the answer handed straight back (direct hand-off)",
        &[],
        node.direct_calls(),
    );
    m.gauge(
        "skyhost_timers_pending",
        "Timers set and not fired: sleeps, and the timeouts of timed calls still waiting for their answer",
        Unit::Count,
        &[],
        node.timers_pending() as f64,
    );
    m.gauge(
        "skyhost_instances_ahead",
        "Instances made ahead of the wakes that take them (each holds a pool slot)",
        Unit::Count,
        &[],
        node.instances_ahead() as f64,
    );
    m.counter(
        "skyhost_wakes_ahead_total",
        "Wakes that took an instance made ahead instead of making one",
        &[],
        node.wakes_ahead(),
    );
    if let Some((nodes, members)) = node.cluster_taken_out() {
        for (what, n) in [("node", nodes), ("group_member", members)] {
            m.gauge(
                "skyhost_cluster_taken_out",
                "Cluster nodes and group members this node's health checks hold out now",
                Unit::Count,
                &[("what", what)],
                n as f64,
            );
        }
    }
    for (i, reason) in StopReason::ALL.iter().enumerate() {
        m.counter(
            "skyhost_service_stops_total",
            "Services ended, by why (a trap, a quota, kill, exit, a failed start)",
            &[("reason", reason.label())],
            node.stops(i),
        );
    }
    for at in crate::runtime::LateAt::ALL {
        m.counter(
            "skyhost_late_answers_total",
            "Answers dropped because their session had already ended (a reply after \
             the caller's timeout or node-down error), by where they were dropped",
            &[("at", at.label())],
            node.late_answers(at),
        );
    }
    m.counter(
        "skyhost_cluster_sends_undelivered_total",
        "Cluster sends from other nodes dropped here: no service by the name or \
         address they gave, or it refused them (a send has no answer to carry an error back)",
        &[],
        node.cluster_sends_undelivered(),
    );
    m.counter(
        "skyhost_cluster_sends_dropped_total",
        "One-way messages to other cluster nodes this node took and then dropped: \
         their node went offline or left the config, or its queue overflowed while it was down",
        &[],
        node.cluster_sends_dropped(),
    );
    let infos = node.service_infos();
    for t in node.tenant_stats() {
        let tenant = t.name.as_str();
        let l = [("tenant", tenant)];
        m.gauge(
            "skyhost_tenant_services",
            "Live services of the tenant",
            Unit::Count,
            &l,
            t.services as f64,
        );
        m.gauge(
            "skyhost_tenant_memory_bytes",
            "Linear memory the tenant's services hold",
            Unit::Bytes,
            &l,
            t.memory_bytes as f64,
        );
        m.gauge(
            "skyhost_tenant_cpu_seconds",
            "CPU time the tenant's services used handling messages, since the tenant \
             was applied (only grows; a gauge because the exporter's counters are integers)",
            Unit::Seconds,
            &l,
            t.cpu_us as f64 / 1e6,
        );
        m.counter(
            "skyhost_tenant_messages_sent_total",
            "Messages the tenant's services sent (sends, calls, answers)",
            &l,
            t.messages_out,
        );
        m.counter(
            "skyhost_tenant_refusals_total",
            "Requests refused by one of the tenant's quotas",
            &l,
            t.refusals,
        );
        for (kind, n) in &t.messages_by_kind {
            m.counter(
                "skyhost_messages_total",
                "Messages services took, by tenant and kind",
                &[("tenant", tenant), ("kind", kind)],
                *n,
            );
        }
        let responses = t
            .messages_by_kind
            .iter()
            .find(|(k, _)| *k == "response")
            .map_or(0, |(_, n)| *n);
        let ended = std::iter::once(("reply", responses)).chain(t.errors_by_cause.iter().copied());
        for (cause, n) in ended {
            m.counter(
                "skyhost_sessions_ended_total",
                "Sessions services opened (calls, spawns, timers) that ended, by cause: \
                 a reply, or an error (timeout, node_down, ...)",
                &[("tenant", tenant), ("cause", cause)],
                n,
            );
        }
        let peak = infos
            .iter()
            .filter(|i| i.tenant == tenant)
            .map(|i| i.mailbox_peak)
            .max()
            .unwrap_or(0);
        m.gauge(
            "skyhost_tenant_mailbox_peak",
            "The longest any live service's mailbox of the tenant has been",
            Unit::Count,
            &l,
            peak as f64,
        );
        let queued: usize = infos
            .iter()
            .filter(|i| i.tenant == tenant)
            .map(|i| i.mailbox)
            .sum();
        m.gauge(
            "skyhost_tenant_mailbox_messages",
            "Messages queued in the tenant's mailboxes",
            Unit::Count,
            &l,
            queued as f64,
        );
    }
    for link in node.links() {
        let l = [("link", link.kind), ("peer", link.peer.as_str())];
        m.gauge(
            "skyhost_link_up",
            "Whether the link has a connection now",
            Unit::Count,
            &l,
            if link.up { 1.0 } else { 0.0 },
        );
        m.counter(
            "skyhost_link_received_bytes_total",
            "Bytes read from the link",
            &l,
            link.bytes_in,
        );
        m.counter(
            "skyhost_link_sent_bytes_total",
            "Bytes written to the link",
            &l,
            link.bytes_out,
        );
        m.counter(
            "skyhost_link_received_frames_total",
            "Frames read from the link",
            &l,
            link.frames_in,
        );
        m.counter(
            "skyhost_link_connections_total",
            "Connections made on the link (1 + reconnects)",
            &l,
            link.connections,
        );
        m.gauge(
            "skyhost_link_queued_bytes",
            "Bytes waiting to be written to the link",
            Unit::Bytes,
            &l,
            link.queued_bytes as f64,
        );
        if let Some(rtt) = link.rtt_us {
            m.gauge(
                "skyhost_link_rtt_seconds",
                "The link's last heartbeat round trip",
                Unit::Seconds,
                &l,
                rtt as f64 / 1e6,
            );
        }
    }
    m.recorder.handle().render()
}

/// One scrape's recorder, and the metrics already described in it.
struct Metrics {
    recorder: PrometheusRecorder,
    described: std::cell::RefCell<std::collections::HashSet<&'static str>>,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            recorder: PrometheusBuilder::new().build_recorder(),
            described: Default::default(),
        }
    }

    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Key::from_parts(name, labels)
    }

    fn describe(&self, name: &'static str, unit: Option<Unit>, help: &'static str, counter: bool) {
        if self.described.borrow_mut().insert(name) {
            let help = SharedString::const_str(help);
            if counter {
                self.recorder.describe_counter(name.into(), unit, help);
            } else {
                self.recorder.describe_gauge(name.into(), unit, help);
            }
        }
    }

    fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: u64,
    ) {
        self.describe(name, None, help, true);
        let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        self.recorder
            .register_counter(&Self::key(name, labels), &metadata)
            .absolute(value);
    }

    fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        unit: Unit,
        labels: &[(&'static str, &str)],
        value: f64,
    ) {
        self.describe(name, Some(unit), help, false);
        let metadata = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        self.recorder
            .register_gauge(&Self::key(name, labels), &metadata)
            .set(value);
    }
}
