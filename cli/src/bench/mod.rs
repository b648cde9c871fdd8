//! `skyhost bench`: the end-to-end workloads, each run 3 times in a fresh
//! node, reported as min / median / max.
//!
//! A memory figure is what a user sees in a node just started: each run of
//! a memory workload (`rss-per-service`, `lang-*-rss`) is a fresh `skyhost
//! bench --once` process, so it never reuses memory an earlier run in the
//! same process freed (that made `rss-per-service` read 32 KiB where a new
//! node grows 54-58 KiB per idle echo).
//!
//! Every message crosses the wasm boundary as a real service's would: the
//! workloads are driven by the bundled `testkit` and `echo` services, and
//! the payloads are copied and decoded for real.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use skyhost::config::{Limits, Scheduler};
use skyhost::{Address, Client, Node, NodeConfig};
use skyhost_test_proto::{Command, Reply};

mod distributed;
mod game;
mod local;
mod tenants;

use distributed::{cluster_call_rtt, cluster_concurrent, cluster_oneway, group_call, multicast};
use local::{
    ServicesFigure, Slots, call_rtt_of, harbor_call_rtt, harbor_concurrent, harbor_oneway,
    hibernated_rss_of, local_call_rtt, local_call_timeout_rtt, local_concurrent, local_oneway,
    local_oneway_batched, local_parallel, max_services, oneway_of, ping_under_spin, pool_size,
    rss_of, rss_per_service, spawn, spawn_of, spawn_then_call, wake_rtt,
};
use tenants::{tenant_fairness, tenant_overhead, upgrade_pause, upgrade_throughput};

/// A workload's measurement: one run against a fresh node.
type RunFn = fn(
    &BenchNode,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<f64>> + '_>>;

/// One workload's id, unit and what it measures.
struct Workload {
    id: &'static str,
    unit: &'static str,
    /// The nodes it runs on.
    topology: Topology,
    run: RunFn,
}

const RUNS: usize = 3;

/// The nodes a workload runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// One node.
    Single,
    /// Harbor 1 (running the master) and harbor 2, linked over loopback.
    Harbor,
    /// The same, their links under TLS 1.3 (certificates from a throwaway CA).
    HarborTls,
    /// Cluster nodes `a` and `b`, linked over loopback.
    Cluster,
    /// The same, their link under TLS 1.3 (certificates from a throwaway CA).
    ClusterTls,
    /// One node with 100 tenants (`t0`..`t99`); the workload's services
    /// and client are in `t0`.
    Tenants,
}

/// Tenants configured for [`Topology::Tenants`].
const BENCH_TENANTS: usize = 100;

/// The five `lang-<language>-*` rows for the echo service `module`.
/// `-hibernated-rss`: each language's echo hibernated (Rust through its
/// `state`, C as an image of its memory, JavaScript and Python of their
/// memory and globals; docs/hibernation.md), and it logs what each keeps (a
/// freed slot's pages can stay resident until a batch of them is given
/// back: a few MB for JavaScript and Python, spread over the services).
macro_rules! language_rows {
    ($lang:literal, $module:literal) => {
        [
            Workload {
                id: concat!("lang-", $lang, "-call-rtt"),
                unit: "µs",
                topology: Topology::Single,
                run: |n| Box::pin(call_rtt_of(n, $module, 20_000)),
            },
            Workload {
                id: concat!("lang-", $lang, "-oneway"),
                unit: "msgs/s",
                topology: Topology::Single,
                run: |n| Box::pin(oneway_of(n, $module, 1_000_000)),
            },
            Workload {
                id: concat!("lang-", $lang, "-spawn"),
                unit: "µs per service",
                topology: Topology::Single,
                run: |n| Box::pin(spawn_of(n, $module, 10, 200)),
            },
            Workload {
                id: concat!("lang-", $lang, "-rss"),
                unit: "KiB",
                topology: Topology::Single,
                run: |n| Box::pin(rss_of(n, $module, 100)),
            },
            Workload {
                id: concat!("lang-", $lang, "-hibernated-rss"),
                unit: "KiB",
                topology: Topology::Single,
                run: |n| Box::pin(hibernated_rss_of(n, $module, 1_000)),
            },
        ]
    };
}

fn workloads() -> Vec<Workload> {
    let mut all = vec![
        Workload {
            id: "tcp-floor",
            unit: "µs",
            topology: Topology::Single,
            run: |_| Box::pin(tcp_floor()),
        },
        Workload {
            id: "local-oneway",
            unit: "msgs/s",
            topology: Topology::Single,
            run: |n| Box::pin(local_oneway(n, 2_000_000)),
        },
        Workload {
            id: "local-oneway-batched",
            unit: "msgs/s",
            topology: Topology::Single,
            run: |n| Box::pin(local_oneway_batched(n, 2_000_000)),
        },
        Workload {
            id: "wake-rtt",
            unit: "µs",
            topology: Topology::Single,
            run: |n| Box::pin(wake_rtt(n, 500, Slots::Cold)),
        },
        Workload {
            id: "wake-rtt-warm",
            unit: "µs",
            topology: Topology::Single,
            run: |n| Box::pin(wake_rtt(n, 500, Slots::Warm)),
        },
        Workload {
            id: "wake-rtt-kept",
            unit: "µs",
            topology: Topology::Single,
            run: |n| Box::pin(wake_rtt(n, 500, Slots::Warm)),
        },
        Workload {
            id: "local-call-rtt",
            unit: "µs",
            topology: Topology::Single,
            run: |n| Box::pin(local_call_rtt(n, 300_000)),
        },
        Workload {
            id: "local-call-timeout-rtt",
            unit: "µs",
            topology: Topology::Single,
            run: |n| Box::pin(local_call_timeout_rtt(n, 300_000)),
        },
        Workload {
            id: "local-concurrent",
            unit: "calls/s",
            topology: Topology::Single,
            run: |n| Box::pin(local_concurrent(n, 100, 10_000)),
        },
        Workload {
            id: "local-parallel",
            unit: "calls/s",
            topology: Topology::Single,
            run: |n| Box::pin(local_parallel(n, 64, 2_000, 20_000)),
        },
        Workload {
            id: "spawn",
            unit: "µs per service",
            topology: Topology::Single,
            run: |n| Box::pin(spawn(n, 10_000)),
        },
        Workload {
            id: "spawn-then-call",
            unit: "µs per service",
            topology: Topology::Single,
            run: |n| Box::pin(spawn_then_call(n, 10_000)),
        },
        Workload {
            id: "rss-per-service",
            unit: "KiB",
            topology: Topology::Single,
            run: |n| Box::pin(rss_per_service(n, 10_000)),
        },
        Workload {
            id: "max-services",
            unit: "count",
            topology: Topology::Single,
            run: |n| {
                Box::pin(max_services(
                    n,
                    max_services_target(),
                    ServicesFigure::Count,
                ))
            },
        },
        Workload {
            id: "max-services-rss",
            unit: "MiB",
            topology: Topology::Single,
            run: |n| Box::pin(max_services(n, max_services_target(), ServicesFigure::Rss)),
        },
        Workload {
            id: "idle-rss-per-service",
            unit: "KiB",
            topology: Topology::Single,
            run: |n| {
                Box::pin(max_services(
                    n,
                    max_services_target(),
                    ServicesFigure::IdleRss,
                ))
            },
        },
        Workload {
            id: "ping-under-spin",
            unit: "µs median",
            topology: Topology::Single,
            run: |n| Box::pin(ping_under_spin(n, 16, 2_000)),
        },
        Workload {
            id: "harbor-call-rtt",
            unit: "µs",
            topology: Topology::Harbor,
            run: |n| Box::pin(harbor_call_rtt(n, 50_000)),
        },
        Workload {
            id: "harbor-call-rtt-tls",
            unit: "µs",
            topology: Topology::HarborTls,
            run: |n| Box::pin(harbor_call_rtt(n, 50_000)),
        },
        Workload {
            id: "harbor-oneway",
            unit: "msgs/s",
            topology: Topology::Harbor,
            run: |n| Box::pin(harbor_oneway(n, 500_000)),
        },
        Workload {
            id: "harbor-concurrent",
            unit: "calls/s",
            topology: Topology::Harbor,
            run: |n| Box::pin(harbor_concurrent(n, 100, 1_000)),
        },
        Workload {
            id: "multicast-local",
            unit: "deliveries/s",
            topology: Topology::Single,
            run: |n| Box::pin(multicast(n, false, 1_000, 1_000)),
        },
        Workload {
            id: "multicast-harbor",
            unit: "deliveries/s",
            topology: Topology::Harbor,
            run: |n| Box::pin(multicast(n, true, 1_000, 1_000)),
        },
        Workload {
            id: "cluster-call-rtt",
            unit: "µs",
            topology: Topology::Cluster,
            run: |n| Box::pin(cluster_call_rtt(n, 50_000)),
        },
        Workload {
            id: "cluster-oneway",
            unit: "msgs/s",
            topology: Topology::Cluster,
            run: |n| Box::pin(cluster_oneway(n, 500_000)),
        },
        Workload {
            id: "cluster-concurrent",
            unit: "calls/s",
            topology: Topology::Cluster,
            run: |n| Box::pin(cluster_concurrent(n, 100, 1_000)),
        },
        Workload {
            id: "cluster-call-rtt-tls",
            unit: "µs",
            topology: Topology::ClusterTls,
            run: |n| Box::pin(cluster_call_rtt(n, 50_000)),
        },
        Workload {
            id: "cluster-oneway-tls",
            unit: "msgs/s",
            topology: Topology::ClusterTls,
            run: |n| Box::pin(cluster_oneway(n, 500_000)),
        },
        Workload {
            id: "cluster-concurrent-tls",
            unit: "calls/s",
            topology: Topology::ClusterTls,
            run: |n| Box::pin(cluster_concurrent(n, 100, 1_000)),
        },
        Workload {
            id: "group-call",
            unit: "ratio (group / direct)",
            topology: Topology::Cluster,
            run: |n| Box::pin(group_call(n, 20_000)),
        },
        Workload {
            id: "game-logins",
            unit: "logins/s",
            topology: Topology::Single,
            run: |_| Box::pin(game::logins(10_000)),
        },
        Workload {
            id: "game-chat-fanout",
            unit: "ms (P50, to all)",
            topology: Topology::Single,
            run: |_| Box::pin(game::chat_fanout(1_000, 100)),
        },
        Workload {
            id: "game-battle-rtt",
            unit: "ms (median)",
            topology: Topology::Single,
            run: |_| Box::pin(game::battle_rtt(100, 1_000)),
        },
        Workload {
            id: "tenant-overhead",
            unit: "ratio (100 tenants / 1)",
            topology: Topology::Tenants,
            run: |n| Box::pin(tenant_overhead(n, 100_000, 1_000_000)),
        },
        Workload {
            id: "upgrade-pause",
            unit: "µs median",
            topology: Topology::Single,
            run: |n| Box::pin(upgrade_pause(n, 100)),
        },
        Workload {
            id: "upgrade-throughput",
            unit: "ratio (upgraded / not)",
            topology: Topology::Single,
            run: |n| Box::pin(upgrade_throughput(n, 3_000_000)),
        },
        Workload {
            id: "tenant-fairness",
            unit: "µs median",
            topology: Topology::Tenants,
            run: |n| Box::pin(tenant_fairness(n, 16, 2_000)),
        },
    ];
    all.extend(language_rows!("rust", "echo"));
    all.extend(language_rows!("c", "echo_c"));
    all.extend(language_rows!("zig", "echo_zig"));
    all.extend(language_rows!("go", "echo_go"));
    all.extend(language_rows!("js", "echo_js"));
    all.extend(language_rows!("python", "echo_py"));
    all
}

/// A fresh node with a client, for one run of one workload; for harbor
/// workloads it is harbor 1 (running the master) and `peer` is harbor 2.
struct BenchNode {
    node: Node,
    client: Client,
    /// The tenant its services are spawned in.
    tenant: String,
    limits: Limits,
    peer: Option<Node>,
    /// A client on the peer node.
    peer_client: Option<Client>,
}

/// What runs the bench nodes' services (`--scheduler`), and on how many threads.
static SCHEDULER: std::sync::OnceLock<(Scheduler, Option<usize>)> = std::sync::OnceLock::new();

/// Sets what runs the services of every node the benchmarks start.
pub fn set_scheduler(scheduler: Scheduler, threads: Option<usize>) {
    let _ = SCHEDULER.set((scheduler, threads));
}

fn scheduler() -> (Scheduler, Option<usize>) {
    SCHEDULER.get().copied().unwrap_or_default()
}

/// Whether the bench nodes hand calls off (`--direct-calls`; default on).
static DIRECT_CALLS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Sets whether the bench nodes hand calls to idle services off
/// (`limits.direct_calls`).
pub fn set_direct_calls(on: bool) {
    let _ = DIRECT_CALLS.set(on);
}

fn direct_calls() -> bool {
    DIRECT_CALLS.get().copied().unwrap_or(true)
}

impl BenchNode {
    fn config(limits: Limits) -> anyhow::Result<NodeConfig> {
        let dir = skyhost::bundled_modules().context("this build has no bundled services")?;
        let (scheduler, threads) = scheduler();
        Ok(NodeConfig {
            module_paths: vec![dir],
            limits: Limits {
                direct_calls: direct_calls(),
                ..limits
            },
            scheduler,
            threads,
            ..NodeConfig::default()
        })
    }

    fn start(limits: Limits) -> anyhow::Result<Self> {
        let node = Node::start(&Self::config(limits.clone())?)?;
        let client = node.client();
        Ok(BenchNode {
            node,
            client,
            tenant: skyhost::runtime::SYSTEM_TENANT.into(),
            limits,
            peer: None,
            peer_client: None,
        })
    }

    /// One node with [`BENCH_TENANTS`] tenants; services and client in `t0`.
    fn start_tenants(limits: Limits) -> anyhow::Result<Self> {
        let mut config = Self::config(limits.clone())?;
        for i in 0..BENCH_TENANTS {
            let text = format!("name = \"t{i}\"\n");
            let mut tenant = skyhost::config::TenantConfig::parse(
                &text,
                std::path::Path::new("bench"),
                &limits,
            )?;
            tenant.module_paths.clone_from(&config.module_paths);
            config.tenants.push(tenant);
        }
        let node = Node::start(&config)?;
        let client = node.client_in("t0").context("tenant t0")?;
        Ok(BenchNode {
            node,
            client,
            tenant: "t0".into(),
            limits,
            peer: None,
            peer_client: None,
        })
    }

    /// Harbor 1 (standalone) and harbor 2, in this process, over loopback.
    async fn start_harbor(limits: Limits, tls: bool) -> anyhow::Result<Self> {
        const SECRET: &str = "bench";
        // Read at launch only: the files may go once the nodes run.
        let certs = tempfile::tempdir()?;
        let files = |names: &str| -> anyhow::Result<Option<skyhost::config::TlsFiles>> {
            if !tls {
                return Ok(None);
            }
            if !certs.path().join("ca.pem").exists() {
                skyhost_cli::cert::make_ca(certs.path())?;
            }
            let (cert, key) = skyhost_cli::cert::make_node(certs.path(), names, certs.path())?;
            let ca = certs.path().join("ca.pem");
            Ok(Some(skyhost::config::TlsFiles { cert, key, ca }))
        };
        let mut first = Self::config(limits.clone())?;
        let mut harbor = skyhost::config::HarborConfig::new(1, SECRET);
        harbor.standalone = Some("127.0.0.1:0".into());
        harbor.tls = files("harbor-1,harbor-master")?;
        first.harbor = Some(harbor);
        let node = Node::launch(&first).await?;
        let master = node.master_address().context("master address")?;
        let mut second = Self::config(limits)?;
        let mut harbor = skyhost::config::HarborConfig::new(2, SECRET);
        harbor.master = Some(master);
        harbor.tls = files("harbor-2")?;
        second.harbor = Some(harbor);
        let peer = Node::launch(&second).await?;
        // Harbor 1 hears of harbor 2 a moment after the join: wait for the link.
        let start = Instant::now();
        while !node.connected().contains(&2) {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "harbor 1 never linked to 2"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let client = node.client();
        Ok(BenchNode {
            node,
            client,
            tenant: skyhost::runtime::SYSTEM_TENANT.into(),
            limits: Limits::default(),
            peer_client: Some(peer.client()),
            peer: Some(peer),
        })
    }

    /// Cluster nodes `a` (this one) and `b`, in this process, over loopback.
    async fn start_cluster(limits: Limits, tls: bool) -> anyhow::Result<Self> {
        // Read at launch only: the files may go once the nodes run.
        let certs = tempfile::tempdir()?;
        if tls {
            skyhost_cli::cert::make_ca(certs.path())?;
        }
        let mut nodes = Vec::new();
        for name in ["a", "b"] {
            let mut config = Self::config(limits.clone())?;
            let mut cluster = skyhost::config::ClusterNodeConfig::new(name, "bench");
            cluster.listen = Some("127.0.0.1:0".into());
            if tls {
                let (cert, key) = skyhost_cli::cert::make_node(certs.path(), name, certs.path())?;
                let ca = certs.path().join("ca.pem");
                cluster.tls = Some(skyhost::config::TlsFiles { cert, key, ca });
            }
            config.cluster = Some(cluster);
            nodes.push(Node::launch(&config).await?);
        }
        let b = nodes.pop().context("node b")?;
        let a = nodes.pop().context("node a")?;
        let table = format!(
            "a = \"{}\"\nb = \"{}\"\n",
            a.cluster_listening()[0],
            b.cluster_listening()[0]
        );
        a.cluster_reload(&table).map_err(anyhow::Error::msg)?;
        b.cluster_reload(&table).map_err(anyhow::Error::msg)?;
        Ok(BenchNode {
            client: a.client(),
            tenant: skyhost::runtime::SYSTEM_TENANT.into(),
            limits: Limits::default(),
            node: a,
            peer_client: Some(b.client()),
            peer: Some(b),
        })
    }

    /// Spawns on harbor 2.
    async fn spawn_remote(&self, module: &str) -> anyhow::Result<Address> {
        let peer = self.peer.as_ref().context("not a harbor workload")?;
        Ok(peer.spawn(module, &[]).await?)
    }

    async fn stop(self) {
        drop(self.peer_client);
        drop(self.client);
        if let Some(peer) = &self.peer {
            peer.shutdown().await;
        }
        self.node.shutdown().await;
    }

    async fn spawn(&self, module: &str) -> anyhow::Result<Address> {
        Ok(self.node.spawn_in(&self.tenant, module, &[]).await?)
    }

    async fn command(&self, target: Address, command: &Command) -> anyhow::Result<Reply> {
        command_via(&self.client, target, command).await
    }
}

/// Calls a testkit service and decodes its reply; `Failed` is an error.
async fn command_via(client: &Client, target: Address, command: &Command) -> anyhow::Result<Reply> {
    let reply = client.call(target, postcard::to_allocvec(command)?).await?;
    match postcard::from_bytes(&reply)? {
        Reply::Failed(e) => bail!("testkit: {e}"),
        r => Ok(r),
    }
}

/// Whether each run of workload `id` needs a process of its own (memory
/// figures: see the module doc).
fn runs_in_fresh_process(id: &str) -> bool {
    id.ends_with("rss-per-service") || id.ends_with("-rss")
}

/// One run of workload `id` in a fresh `skyhost bench --once` process with
/// the same threads; its figure.
async fn run_in_fresh_process(id: &str, threads: Option<usize>) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("the skyhost binary's path")?;
    let mut command = std::process::Command::new(exe);
    command.args(["bench", "--once", id]);
    if scheduler().0 == Scheduler::Workers {
        command.args(["--scheduler", "workers"]);
    }
    if let Some(t) = threads {
        command.args(["--threads", &t.to_string()]);
    }
    if let Some(n) = MAX_SERVICES.get() {
        command.args(["--services", &n.to_string()]);
    }
    if !direct_calls() {
        command.args(["--direct-calls", "off"]);
    }
    command.stderr(std::process::Stdio::inherit());
    let out = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("benchmark {id} in a fresh process"))?;
    anyhow::ensure!(
        out.status.success(),
        "benchmark {id}: its process failed ({})",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("benchmark {id}: its process printed {text:?}"))
}

/// Runs the workloads named in `ids` (all when empty) and prints each
/// figure. With `once`, runs the one workload in `ids` once in this process
/// and prints its bare figure (what [`run_in_fresh_process`] reads).
pub async fn run(
    ids: &[String],
    json: bool,
    once: bool,
    threads: Option<usize>,
) -> anyhow::Result<()> {
    let all = workloads();
    // `game` stands for every row of the example game.
    let ids: Vec<String> = ids
        .iter()
        .flat_map(|id| match id.as_str() {
            "game" => all
                .iter()
                .filter(|w| w.id.starts_with("game-"))
                .map(|w| w.id.to_string())
                .collect(),
            _ => vec![id.clone()],
        })
        .collect();
    for id in &ids {
        if !all.iter().any(|w| w.id == id) {
            let known: Vec<&str> = all.iter().map(|w| w.id).collect();
            bail!("unknown benchmark `{id}`; known: {}", known.join(", "));
        }
    }
    if once {
        let [id] = ids.as_slice() else {
            bail!("--once runs exactly one workload");
        };
        let w = all.iter().find(|w| w.id == id).context("known workload")?;
        println!("{}", run_once(w).await?);
        return Ok(());
    }
    if !json {
        println!(
            "{:<20} {:>14} {:>14} {:>14}  unit",
            "id", "min", "median", "max"
        );
    }
    for w in all
        .iter()
        .filter(|w| ids.is_empty() || ids.iter().any(|i| i == w.id))
    {
        let mut values = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let value = if runs_in_fresh_process(w.id) {
                run_in_fresh_process(w.id, threads).await?
            } else {
                run_once(w).await?
            };
            values.push(value);
        }
        values.sort_by(f64::total_cmp);
        let (min, median, max) = (values[0], values[RUNS / 2], values[RUNS - 1]);
        if json {
            println!(
                "{{\"id\": \"{}\", \"unit\": \"{}\", \"min\": {min:.3}, \"median\": {median:.3}, \"max\": {max:.3}, \"n\": {RUNS}}}",
                w.id, w.unit
            );
        } else {
            println!(
                "{:<20} {min:>14.2} {median:>14.2} {max:>14.2}  {}",
                w.id, w.unit
            );
        }
    }
    Ok(())
}

/// Live echo services `max-services` spawns and calls, unless `--services`
/// says otherwise.
const MAX_SERVICES_TARGET: u32 = 100_000;

/// `--services`: the `max-services` rows' target, when given.
static MAX_SERVICES: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Sets the `max-services` rows' target (`None`: the default).
pub fn set_max_services(services: Option<u32>) {
    if let Some(n) = services {
        let _ = MAX_SERVICES.set(n);
    }
}

fn max_services_target() -> u32 {
    MAX_SERVICES.get().copied().unwrap_or(MAX_SERVICES_TARGET)
}

/// Instances `max-services` keeps at once (fewer where vm.max_map_count
/// cannot map them).
const MAX_SERVICES_RESIDENT: u32 = 10_000;

/// How long services stay awake idle in `wake-rtt`'s node.
const WAKE_RTT_IDLE_MS: u64 = 50;

/// The pages a freed slot keeps in `wake-rtt-kept`'s node (KiB per memory
/// and per table): the echo writes about 8 pages of its memory.
const WAKE_RTT_KEPT_KIB: u32 = 32;

/// One run of `w` on a fresh node (in this process); its figure.
async fn run_once(w: &Workload) -> anyhow::Result<f64> {
    let limits = if w.id.starts_with("max-services") || w.id == "idle-rss-per-service" {
        // Every service live, a resident set that fits a default
        // vm.max_map_count, and the rest hibernated to make room.
        Limits {
            max_services: max_services_target() + 100,
            resident_services: pool_size(MAX_SERVICES_RESIDENT),
            hibernate_after_ms: 600_000,
            cpu_budget_ms: 600_000,
            ..Limits::default()
        }
    } else {
        Limits {
            max_services: pool_size(20_000),
            cpu_budget_ms: 600_000,
            hibernate_after_ms: if w.id.starts_with("wake-rtt") || w.id.ends_with("hibernated-rss")
            {
                WAKE_RTT_IDLE_MS
            } else {
                0
            },
            slot_keep_resident_kib: if w.id == "wake-rtt-kept" {
                WAKE_RTT_KEPT_KIB
            } else {
                0
            },
            ..Limits::default()
        }
    };
    let node = match w.topology {
        Topology::Single => BenchNode::start(limits)?,
        Topology::Harbor => BenchNode::start_harbor(limits, false).await?,
        Topology::HarborTls => BenchNode::start_harbor(limits, true).await?,
        Topology::Cluster => BenchNode::start_cluster(limits, false).await?,
        Topology::ClusterTls => BenchNode::start_cluster(limits, true).await?,
        Topology::Tenants => BenchNode::start_tenants(limits)?,
    };
    let value = (w.run)(&node)
        .await
        .with_context(|| format!("benchmark {}", w.id))?;
    // How many calls ran inside their caller's (warm-ups included): which
    // mode a local row ran in.
    let handed_off = node.node.direct_calls();
    if handed_off > 0 {
        eprintln!("{}: {handed_off} calls handed off", w.id);
    }
    node.stop().await;
    Ok(value)
}

/// Two threads ping-pong 16 bytes over loopback TCP with blocking reads:
/// the floor every cross-node round trip is read against.
async fn tcp_floor() -> anyhow::Result<f64> {
    tokio::task::spawn_blocking(|| -> anyhow::Result<f64> {
        const ROUNDS: usize = 50_000;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; 16];
            for _ in 0..ROUNDS {
                s.read_exact(&mut buf)?;
                s.write_all(&buf)?;
            }
            Ok(())
        });
        let mut c = TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        let mut buf = [7u8; 16];
        let mut worst = Duration::ZERO;
        let mut times = Vec::with_capacity(ROUNDS);
        let start = Instant::now();
        for _ in 0..ROUNDS {
            let round = Instant::now();
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            let took = round.elapsed();
            worst = worst.max(took);
            times.push(took);
        }
        let elapsed = start.elapsed();
        times.sort_unstable();
        eprintln!(
            "tcp-floor: worst {} µs, p99 {} µs",
            worst.as_micros(),
            times[ROUNDS * 99 / 100].as_micros()
        );
        server
            .join()
            .map_err(|_| anyhow::anyhow!("tcp server thread panicked"))??;
        Ok(elapsed.as_secs_f64() * 1e6 / ROUNDS as f64)
    })
    .await?
}
