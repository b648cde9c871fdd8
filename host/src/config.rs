//! The node file (`skyhost run node.toml`): TOML, checked strictly, and every
//! error names the file, the line and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The node's own tenant's name.
pub const SYSTEM_TENANT: &str = "system";

/// The most services one node can hold: the local ids an address has room
/// for beside its harbor id (`runtime::Address::MAX_LOCAL`, kept equal by a
/// test there).
pub const MAX_LOCAL_SERVICES: u32 = (1 << 24) - 1;

/// A parsed `etcd://host:port[,host:port...]/prefix`: where a cluster node
/// finds the others (`[cluster] discovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUrl {
    /// The etcd endpoints (`http://host:port`).
    pub endpoints: Vec<String>,
    /// The key prefix every key of this cluster is under (no trailing `/`).
    pub prefix: String,
}

impl EtcdUrl {
    /// Parses a discovery URL.
    ///
    /// # Errors
    /// Text saying what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("`{url}` does not start with etcd://"))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(format!(
                "`{url}` names no key prefix (etcd://host:port/prefix)"
            ));
        }
        let endpoints = hosts
            .split(',')
            .map(|h| match h.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(format!("http://{h}"))
                }
                _ => Err(format!("`{h}` in `{url}` is not host:port")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EtcdUrl {
            endpoints,
            prefix: format!("/{}", prefix.trim_start_matches('/')),
        })
    }
}

/// A node's configuration, as read from its node file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Scheduler threads; absent means one per core.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Log filter (`info`, `debug`, `skyhost=trace`, ...).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Directories searched, in order, for `<module>.wasm`.
    #[serde(default)]
    pub module_paths: Vec<PathBuf>,
    /// Where compiled modules are cached; absent means the user cache directory.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// The service started with the node.
    #[serde(default)]
    pub bootstrap: Option<Bootstrap>,
    /// Limits every service runs under.
    #[serde(default)]
    pub limits: Limits,
    /// Membership of a harbor (several nodes, one address space); absent
    /// for a single node.
    #[serde(default)]
    pub harbor: Option<HarborConfig>,
    /// Membership of a cluster (named nodes calling each other by name);
    /// absent when the node is in none.
    #[serde(default)]
    pub cluster: Option<ClusterNodeConfig>,
    /// Tenants besides `system` (the node's own, which uses the top-level
    /// `module_paths`, `limits` and `bootstrap`).
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    /// The control address (`skyhost ctl`, `skyhost tenant`); off when absent.
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// The Prometheus endpoint (`GET /metrics`); off when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// The `[metrics]` table: where the node serves `GET /metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to listen on (port 0 picks one; the bound address is logged).
    #[serde(default = "default_control")]
    pub address: String,
}

impl Default for MetricsConfig {
    /// 127.0.0.1 with a port the OS picks.
    fn default() -> Self {
        MetricsConfig {
            address: default_control(),
        }
    }
}

/// The `[control]` table: where the node takes operator commands, and the
/// secret they must present.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `host:port` to listen on (port 0 picks one; the bound address is logged).
    #[serde(default = "default_control")]
    pub address: String,
    /// The secret a client sends first (`auth <secret>`).
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

fn default_control() -> String {
    "127.0.0.1:0".to_string()
}

impl ControlConfig {
    /// A control address on 127.0.0.1 with a port the OS picks.
    pub fn new(secret: &str) -> Self {
        ControlConfig {
            address: default_control(),
            secret: Some(secret.to_string()),
            secret_file: None,
        }
    }
}

/// One tenant: a `[[tenant]]` table in the node file, or a tenant file
/// applied to a running node. Every service belongs to one tenant and can
/// reach only its own tenant's services, names and channels, and the
/// entries other tenants export to it through `grants`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its name (letters, digits, `-`, `_`); `system` is the node's own.
    pub name: String,
    /// Directories searched, in order, for its modules; its services spawn
    /// modules from these only.
    #[serde(default)]
    pub module_paths: Vec<PathBuf>,
    /// Its quotas; each absent key takes the node's `[limits]` value.
    #[serde(default)]
    pub limits: TenantLimits,
    /// Entries of other tenants it may call, as `"tenant/entry"`.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Entries it offers to tenants granted them: entry name to the name of
    /// one of its services (`db = ".db"`).
    #[serde(default)]
    pub exports: std::collections::BTreeMap<String, String>,
    /// Host directories its services see (WASI preopens).
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// Environment variables its services see.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// `host:port` addresses its services may open TCP connections to.
    #[serde(default)]
    pub tcp_connect: Vec<String>,
    /// Services started when the tenant is applied, in order.
    #[serde(default)]
    pub bootstrap: Vec<Bootstrap>,
}

/// A host directory granted to a tenant's services.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host (relative to the file that names it).
    pub host: PathBuf,
    /// Where services see it (`/data`).
    pub guest: String,
    /// Whether services may only read it.
    #[serde(default = "default_true")]
    pub read_only: bool,
}

fn default_true() -> bool {
    true
}

/// A tenant's quotas; `None` takes the node's value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Linear memory per service, in MiB (at most the node's `memory_mb`).
    pub memory_mb: Option<u64>,
    /// Linear memory of all its services together, in MiB; absent: no total.
    pub total_memory_mb: Option<u64>,
    /// Most of its services alive at once; absent: the node's limit.
    pub max_services: Option<u32>,
    /// CPU time one message may take, in ms.
    pub cpu_budget_ms: Option<u64>,
    /// Its share of the scheduler threads against other busy tenants
    /// (relative to their weights; default 1).
    pub weight: Option<u32>,
    /// Messages a mailbox of its services holds before `Overloaded`.
    pub mailbox_limit: Option<usize>,
    /// Largest payload its services may send, in bytes.
    pub max_payload: Option<usize>,
    /// Services it may spawn per second (with a burst of as many); absent: no limit.
    pub spawn_rate: Option<u32>,
}

/// The `[cluster]` table: this node's name, the cluster config file, and
/// how its links behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNodeConfig {
    /// This node's name in the cluster.
    pub name: String,
    /// The cluster config (Skynet's clustername format, or TOML); watched
    /// and reloaded when it changes. Absent: an empty table, filled by
    /// `cluster.reload`.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Listen for other nodes at start: a node name from the cluster
    /// config, `host:port` (port 0 picks one), or a port. Absent: a service
    /// calls `cluster.open`.
    #[serde(default)]
    pub listen: Option<String>,
    /// The secret shared by every node of the cluster.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the shared secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Compress payloads (lz4) longer than `compress_threshold`.
    #[serde(default)]
    pub compression: bool,
    /// Payload length above which compression applies, in bytes.
    #[serde(default = "default_compress_threshold")]
    pub compress_threshold: usize,
    /// Messages queued for a peer that is down before new ones are refused.
    #[serde(default = "default_queue_limit")]
    pub queue_limit: usize,
    /// Send a heartbeat after this long without traffic, in ms.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A link silent for this long is down and its calls fail, in ms.
    #[serde(default = "default_dead_after_ms")]
    pub dead_after_ms: u64,
    /// Where the cluster table comes from instead of `config`:
    /// `etcd://host:port[,host:port...]/prefix`. The node publishes itself
    /// there (it needs `listen`) and follows every other node's entry.
    #[serde(default)]
    pub discovery: Option<String>,
    /// The `host:port` other nodes reach this one at, as published by
    /// discovery. Absent: the listen address (an unspecified IP becomes 127.0.0.1).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The lifetime of this node's discovery entry, in seconds: it is kept
    /// alive while the node runs and goes this long after the node dies.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u64,
    /// With discovery: the node other nodes' calls to this one go to while
    /// it fails their health checks (a cluster file says it per node).
    #[serde(default)]
    pub backup: Option<String>,
    /// Health checks of the other nodes and of group members. Absent: only
    /// nodes that have a backup are checked, with the default settings.
    #[serde(default)]
    pub health: Option<HealthConfig>,
}

/// The `[cluster.health]` table: how often and how patiently other nodes
/// and group members are checked, and after how many failures in a row one
/// is taken out (it is put back when it answers again).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between two rounds of checks, in ms.
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    /// How long a check waits for its answer, in ms.
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Failed checks in a row that take a node or member out.
    #[serde(default = "default_health_failures")]
    pub failures: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: default_health_interval_ms(),
            timeout_ms: default_health_timeout_ms(),
            failures: default_health_failures(),
        }
    }
}

fn default_health_interval_ms() -> u64 {
    1_000
}

fn default_health_timeout_ms() -> u64 {
    500
}

fn default_health_failures() -> u32 {
    3
}

fn default_lease_ttl_s() -> u64 {
    5
}

fn default_compress_threshold() -> usize {
    1024
}

fn default_queue_limit() -> usize {
    10_000
}

impl ClusterNodeConfig {
    /// A cluster member with the default settings.
    pub fn new(name: &str, secret: &str) -> Self {
        ClusterNodeConfig {
            name: name.to_string(),
            config: None,
            listen: None,
            secret: Some(secret.to_string()),
            secret_file: None,
            compression: false,
            compress_threshold: default_compress_threshold(),
            queue_limit: default_queue_limit(),
            heartbeat_ms: default_heartbeat_ms(),
            dead_after_ms: default_dead_after_ms(),
            discovery: None,
            advertise: None,
            lease_ttl_s: default_lease_ttl_s(),
            backup: None,
            health: None,
        }
    }

    /// The shared secret's bytes (read from `secret_file` at load).
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.secret.clone().unwrap_or_default().into_bytes()
    }
}

/// The `[harbor]` table: this node's harbor id, where it accepts links from
/// other nodes, and where the master is (or that this node runs it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HarborConfig {
    /// This node's harbor id, 1..=255 (the low 8 bits of its addresses).
    pub id: u8,
    /// Where this node accepts links from other nodes; port 0 picks one.
    #[serde(default = "default_listen")]
    pub address: String,
    /// The master to join (`host:port`).
    #[serde(default)]
    pub master: Option<String>,
    /// Run the master in this node, listening here (`host:port`, port 0 picks one).
    #[serde(default)]
    pub standalone: Option<String>,
    /// The secret shared by every node of the harbor.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the shared secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Send a heartbeat after this long without traffic, in ms.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A link silent for this long is down, in ms.
    #[serde(default = "default_dead_after_ms")]
    pub dead_after_ms: u64,
}

fn default_listen() -> String {
    "127.0.0.1:0".to_string()
}

/// 250 ms / 1 s: a hung peer (SIGSTOP) fails its callers within ~1 s, and
/// a live peer whose services spin on every thread, on a machine with more
/// runnable threads than cores, still answered each heartbeat in time
/// (README "Heartbeats": worst ping 169 ms in that test).
fn default_heartbeat_ms() -> u64 {
    250
}

fn default_dead_after_ms() -> u64 {
    1_000
}

impl HarborConfig {
    /// A harbor member with the default address and timeouts.
    pub fn new(id: u8, secret: &str) -> Self {
        HarborConfig {
            id,
            address: default_listen(),
            master: None,
            standalone: None,
            secret: Some(secret.to_string()),
            secret_file: None,
            heartbeat_ms: default_heartbeat_ms(),
            dead_after_ms: default_dead_after_ms(),
        }
    }

    /// The shared secret's bytes (read from `secret_file` at load).
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.secret.clone().unwrap_or_default().into_bytes()
    }
}

/// The first service of a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Module name, looked up as `<module>.wasm` in the module paths.
    pub module: String,
    /// Arguments handed to its `init`, as text.
    #[serde(default)]
    pub args: String,
}

/// Limits enforced on each service, at the point where the cost is paid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory per service, in MiB (ResourceLimiter).
    pub memory_mb: u64,
    /// CPU time one message may take before its service is stopped, in ms.
    pub cpu_budget_ms: u64,
    /// Time a service runs before it yields to others, in µs (epoch tick).
    pub time_slice_us: u64,
    /// Messages a mailbox holds before senders get `Overloaded`; 0 = unbounded.
    pub mailbox_limit: usize,
    /// Largest payload a service may send, in bytes.
    pub max_payload: usize,
    /// Most services alive at once (sizes the instance pool); 0 means
    /// 100,000, or fewer if the kernel's `vm.max_map_count` cannot map them.
    pub max_services: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            cpu_budget_ms: 5_000,
            time_slice_us: 1_000,
            mailbox_limit: 0,
            max_payload: 64 << 20,
            max_services: 0,
        }
    }
}

/// The pool size `max_services = 0` asks for, where the kernel allows it.
pub const DEFAULT_MAX_SERVICES: u32 = 100_000;

/// Kernel memory maps the instance pool needs per service: a fiber stack and
/// its guard page (reserved for every slot at start), and the accessible and
/// reserved parts of its linear memory; measured at about 4, plus margin.
pub(crate) const MAPS_PER_SERVICE: u64 = 5;

/// Memory maps kept free for everything but the instance pool.
pub(crate) const MAPS_RESERVED: u64 = 4_096;

/// How many services the kernel's `vm.max_map_count` leaves room for, and
/// that limit; `None` where it cannot be read.
pub fn services_allowed_by_map_count() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok()?;
    let max_maps = text.trim().parse::<u64>().ok()?;
    Some((
        max_maps.saturating_sub(MAPS_RESERVED) / MAPS_PER_SERVICE,
        max_maps,
    ))
}

/// The `vm.max_map_count` to suggest for `services` live services: what
/// they need, rounded up to a power of two (524,288 for 100,000).
pub fn map_count_for(services: u32) -> u64 {
    (u64::from(services) * MAPS_PER_SERVICE + MAPS_RESERVED).next_power_of_two()
}

impl Limits {
    /// These limits with `max_services` resolved: 0 becomes
    /// [`DEFAULT_MAX_SERVICES`], or what `vm.max_map_count` leaves room for.
    pub fn resolved(&self) -> Limits {
        let mut limits = self.clone();
        if limits.max_services == 0 {
            limits.max_services = match services_allowed_by_map_count() {
                Some((allowed, max_maps)) if allowed < u64::from(DEFAULT_MAX_SERVICES) => {
                    tracing::warn!(
                        "vm.max_map_count = {max_maps} leaves room for about {allowed} services; \
                         sizing the node for that many (to allow {DEFAULT_MAX_SERVICES}, as root: \
                         sysctl -w vm.max_map_count={})",
                        map_count_for(DEFAULT_MAX_SERVICES)
                    );
                    u32::try_from(allowed.max(1)).unwrap_or(DEFAULT_MAX_SERVICES)
                }
                _ => DEFAULT_MAX_SERVICES,
            };
        }
        limits
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            threads: None,
            log_level: default_log_level(),
            module_paths: Vec::new(),
            cache_dir: None,
            bootstrap: None,
            limits: Limits::default(),
            harbor: None,
            cluster: None,
            tenants: Vec::new(),
            control: None,
            metrics: None,
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
}

/// A node file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The node file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid, or a key is unknown or has the wrong type.
    #[error("{path}:{line}: {message}")]
    Invalid {
        /// The node file.
        path: PathBuf,
        /// 1-based line of the offending key or value (0 if unknown).
        line: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl NodeConfig {
    /// Reads and checks a node file; relative module paths and cache directory
    /// are taken relative to the file's directory.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in &mut config.module_paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(dir) = &mut config.cache_dir
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        let read_secret = |file: &Path| {
            let file = base.join(file);
            std::fs::read_to_string(&file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| ConfigError::Invalid {
                    path: path.to_owned(),
                    line: find_key_line(&text, "secret_file"),
                    message: format!("key `secret_file`: {}: {e}", file.display()),
                })
        };
        if let Some(h) = &mut config.harbor
            && let Some(file) = &h.secret_file
        {
            h.secret = Some(read_secret(file)?);
        }
        if let Some(c) = &mut config.cluster {
            if let Some(file) = &c.secret_file {
                c.secret = Some(read_secret(file)?);
            }
            if let Some(conf) = &mut c.config
                && conf.is_relative()
            {
                *conf = base.join(&*conf);
            }
        }
        for t in &mut config.tenants {
            t.resolve_paths(base);
        }
        if let Some(c) = &mut config.control
            && let Some(file) = &c.secret_file
        {
            c.secret = Some(read_secret(file)?);
        }
        Ok(config)
    }

    /// Parses node-file text; `path` only names the file in errors.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the line and key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                message: e.message().to_string(),
            }
        })?;
        config.check(text, path)?;
        Ok(config)
    }

    fn check(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: find_key_line(text, key),
            message: format!("key `{key}`: {message}"),
        };
        if self.threads == Some(0) {
            return Err(invalid("threads", "must be at least 1".into()));
        }
        let l = &self.limits;
        if l.memory_mb == 0 || l.memory_mb > 4096 {
            return Err(invalid("memory_mb", "must be 1..=4096".into()));
        }
        if l.time_slice_us == 0 {
            return Err(invalid("time_slice_us", "must be at least 1".into()));
        }
        if l.cpu_budget_ms == 0 {
            return Err(invalid("cpu_budget_ms", "must be at least 1".into()));
        }
        if l.max_services > MAX_LOCAL_SERVICES {
            return Err(invalid(
                "max_services",
                format!("must be 0 (automatic) or 1..={MAX_LOCAL_SERVICES}"),
            ));
        }
        if let Some(b) = &self.bootstrap
            && b.module.is_empty()
        {
            return Err(invalid("module", "must name a module".into()));
        }
        if let Some(h) = &self.harbor {
            if h.id == 0 {
                return Err(invalid("id", "harbor id must be 1..=255".into()));
            }
            match (&h.master, &h.standalone) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "standalone",
                        "give either `master` or `standalone`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        "id",
                        "[harbor] needs `master = \"host:port\"` or `standalone = \"host:port\"`"
                            .into(),
                    ));
                }
                _ => {}
            }
            check_link(
                "harbor",
                "id",
                &h.secret,
                &h.secret_file,
                h.heartbeat_ms,
                h.dead_after_ms,
            )
            .map_err(|(key, message)| invalid(key, message))?;
        }
        if let Some(c) = &self.cluster {
            if c.name.is_empty() {
                return Err(invalid("name", "the cluster node needs a name".into()));
            }
            check_link(
                "cluster",
                "name",
                &c.secret,
                &c.secret_file,
                c.heartbeat_ms,
                c.dead_after_ms,
            )
            .map_err(|(key, message)| invalid(key, message))?;
            if let Some(url) = &c.discovery {
                if c.config.is_some() {
                    return Err(invalid(
                        "discovery",
                        "give either `config` or `discovery`, not both".into(),
                    ));
                }
                if c.listen.is_none() {
                    return Err(invalid(
                        "discovery",
                        "a node found through discovery needs `listen`".into(),
                    ));
                }
                EtcdUrl::parse(url).map_err(|e| invalid("discovery", e))?;
                if c.lease_ttl_s < 2 {
                    return Err(invalid("lease_ttl_s", "must be at least 2".into()));
                }
            }
            if let Some(h) = &c.health
                && (h.interval_ms == 0 || h.timeout_ms == 0 || h.failures == 0)
            {
                return Err(invalid(
                    "interval_ms",
                    "[cluster.health] interval_ms, timeout_ms and failures must be at least 1"
                        .into(),
                ));
            }
        }
        if let Some(c) = &self.control {
            match (&c.secret, &c.secret_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "secret_file",
                        "give either `secret` or `secret_file`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        "address",
                        "[control] needs `secret` or `secret_file`".into(),
                    ));
                }
                (Some(s), None) if s.is_empty() => {
                    return Err(invalid("secret", "must not be empty".into()));
                }
                _ => {}
            }
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.tenants {
            t.check(text, path, l)?;
            if !seen.insert(t.name.as_str()) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    line: t.line(text),
                    message: format!("key `name`: tenant `{}` is declared twice", t.name),
                });
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(invalid(
                "log_level",
                format!("`{}` is not a log filter", self.log_level),
            ));
        }
        Ok(())
    }
}

impl TenantConfig {
    /// A tenant that loads modules from `module_paths`, with the node's
    /// limits and nothing granted.
    pub fn new(name: &str, module_paths: Vec<PathBuf>) -> Self {
        TenantConfig {
            name: name.to_string(),
            module_paths,
            limits: TenantLimits::default(),
            grants: Vec::new(),
            exports: Default::default(),
            dirs: Vec::new(),
            env: Default::default(),
            tcp_connect: Vec::new(),
            bootstrap: Vec::new(),
        }
    }

    /// Reads and checks a tenant file (the keys of one `[[tenant]]` table at
    /// top level); relative paths are taken relative to the file.
    /// `node_limits` are the limits of the node it will run on.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and key.
    pub fn load(path: &Path, node_limits: &Limits) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut tenant = Self::parse(&text, path, node_limits)?;
        tenant.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(tenant)
    }

    /// Parses tenant-file text; `path` only names the file in errors.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the line and key.
    pub fn parse(text: &str, path: &Path, node_limits: &Limits) -> Result<Self, ConfigError> {
        let tenant: TenantConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
            message: e.message().to_string(),
        })?;
        tenant.check(text, path, node_limits)?;
        Ok(tenant)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in &mut self.module_paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for d in &mut self.dirs {
            if d.host.is_relative() {
                d.host = base.join(&d.host);
            }
        }
    }

    /// The line of this tenant's `name = "..."`, where its errors point
    /// when the key itself cannot be found below it.
    fn line(&self, text: &str) -> usize {
        text.lines()
            .position(|l| {
                let l = l.trim_start();
                l.starts_with("name")
                    && l.contains(&format!("\"{}\"", self.name))
                    && l["name".len()..].trim_start().starts_with('=')
            })
            .map_or(0, |i| i + 1)
    }

    fn check(&self, text: &str, path: &Path, node: &Limits) -> Result<(), ConfigError> {
        let start = self.line(text);
        let invalid = |key: &str, message: String| {
            // The key's first line at or after this tenant's name.
            let line = text
                .lines()
                .enumerate()
                .skip(start.saturating_sub(1))
                .find(|(_, l)| {
                    let l = l.trim_start();
                    l.strip_prefix(key)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
                .map_or(start, |(i, _)| i + 1);
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                message: format!("tenant `{}`: key `{key}`: {message}", self.name),
            }
        };
        if !is_tenant_name(&self.name) {
            return Err(invalid(
                "name",
                "use 1 to 64 letters, digits, `-` and `_`".into(),
            ));
        }
        if self.name == SYSTEM_TENANT {
            return Err(invalid(
                "name",
                "`system` is the node's own tenant: set its modules and limits at top level".into(),
            ));
        }
        let l = &self.limits;
        if let Some(mb) = l.memory_mb
            && (mb == 0 || mb > node.memory_mb)
        {
            return Err(invalid(
                "memory_mb",
                format!("must be 1..={} (the node's memory_mb)", node.memory_mb),
            ));
        }
        let zero = |key: &str, v: Option<u64>| match v {
            Some(0) => Err(invalid(key, "must be at least 1".into())),
            _ => Ok(()),
        };
        zero("total_memory_mb", l.total_memory_mb)?;
        zero("max_services", l.max_services.map(u64::from))?;
        zero("cpu_budget_ms", l.cpu_budget_ms)?;
        zero("weight", l.weight.map(u64::from))?;
        zero("spawn_rate", l.spawn_rate.map(u64::from))?;
        for g in &self.grants {
            match g.split_once('/') {
                Some((t, e)) if is_tenant_name(t) && !e.is_empty() && !e.contains('/') => {}
                _ => {
                    return Err(invalid("grants", format!("`{g}` is not `tenant/entry`")));
                }
            }
        }
        for (entry, name) in &self.exports {
            if entry.is_empty() || entry.contains('/') || name.is_empty() || name.contains('/') {
                return Err(invalid(
                    entry,
                    format!(
                        "export `{entry} = \"{name}\"` needs an entry and a service name without `/`"
                    ),
                ));
            }
        }
        for d in &self.dirs {
            if !d.guest.starts_with('/') {
                return Err(invalid(
                    "guest",
                    format!("`{}` must be an absolute path", d.guest),
                ));
            }
        }
        for a in &self.tcp_connect {
            if a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(invalid("tcp_connect", format!("`{a}` is not `host:port`")));
            }
        }
        if self.bootstrap.iter().any(|b| b.module.is_empty()) {
            return Err(invalid("module", "must name a module".into()));
        }
        Ok(())
    }
}

/// Whether `name` can name a tenant.
pub fn is_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks the keys every table of links has (`[harbor]`, `[cluster]`):
/// exactly one of `secret` and `secret_file`, and a silence deadline longer
/// than the heartbeat. An error names the key (`table_key` when the
/// missing key has no line of its own) and what is wrong.
fn check_link(
    table: &str,
    table_key: &'static str,
    secret: &Option<String>,
    secret_file: &Option<PathBuf>,
    heartbeat_ms: u64,
    dead_after_ms: u64,
) -> Result<(), (&'static str, String)> {
    match (secret, secret_file) {
        (Some(_), Some(_)) => {
            return Err((
                "secret_file",
                "give either `secret` or `secret_file`, not both".into(),
            ));
        }
        (None, None) => {
            return Err((
                table_key,
                format!("[{table}] needs `secret` or `secret_file`"),
            ));
        }
        (Some(s), None) if s.is_empty() => {
            return Err(("secret", "must not be empty".into()));
        }
        _ => {}
    }
    if heartbeat_ms == 0 || dead_after_ms <= heartbeat_ms {
        return Err((
            "dead_after_ms",
            "must be larger than heartbeat_ms, which must be at least 1".into(),
        ));
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The line where `key = ...` is first written, for errors found after parsing.
fn find_key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("node.toml"))
    }

    #[test]
    fn defaults_fill_an_empty_file() {
        let c = parse("").expect("empty file is valid");
        assert_eq!(c.limits.memory_mb, 64);
        assert!(c.bootstrap.is_none());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = parse("threads = 2\n\n[limits]\nmemory_mbs = 3\n").expect_err("unknown key");
        let s = err.to_string();
        assert!(s.starts_with("node.toml:4:"), "{s}");
        assert!(s.contains("memory_mbs"), "{s}");
    }

    #[test]
    fn wrong_type_names_line() {
        let s = parse("threads = \"two\"\n")
            .expect_err("wrong type")
            .to_string();
        assert!(s.starts_with("node.toml:1:"), "{s}");
    }

    #[test]
    fn a_harbor_table_is_checked() {
        let ok = parse("[harbor]\nid = 2\nmaster = \"127.0.0.1:7000\"\nsecret = \"s\"\n")
            .expect("valid harbor table");
        let h = ok.harbor.expect("harbor");
        assert_eq!((h.id, h.address.as_str()), (2, "127.0.0.1:0"));
        let both =
            parse("[harbor]\nid = 2\nmaster = \"a:1\"\nstandalone = \"b:2\"\nsecret = \"s\"\n")
                .expect_err("master and standalone")
                .to_string();
        assert!(
            both.starts_with("node.toml:4:") && both.contains("standalone"),
            "{both}"
        );
        let zero = parse("[harbor]\nid = 0\nmaster = \"a:1\"\nsecret = \"s\"\n")
            .expect_err("id 0")
            .to_string();
        assert!(
            zero.starts_with("node.toml:2:") && zero.contains("1..=255"),
            "{zero}"
        );
        let big = parse("[harbor]\nid = 256\nmaster = \"a:1\"\nsecret = \"s\"\n")
            .expect_err("id 256")
            .to_string();
        assert!(big.starts_with("node.toml:2:"), "{big}");
        let no_secret = parse("[harbor]\nid = 1\nstandalone = \"a:1\"\n")
            .expect_err("no secret")
            .to_string();
        assert!(no_secret.contains("secret"), "{no_secret}");
    }

    #[test]
    fn tenant_tables_parse_and_their_errors_name_line_and_key() {
        let ok = parse(
            "[[tenant]]\nname = \"blue\"\ngrants = [\"green/db\"]\n[tenant.limits]\nmemory_mb = 8\n\n\
             [[tenant]]\nname = \"green\"\n[tenant.exports]\ndb = \".db\"\n\
             [[tenant.bootstrap]]\nmodule = \"db\"\n",
        )
        .expect("two tenants");
        assert_eq!(ok.tenants.len(), 2);
        assert_eq!(ok.tenants[0].limits.memory_mb, Some(8));
        assert_eq!(ok.tenants[1].bootstrap[0].module, "db");

        let err = |text: &str| parse(text).expect_err("invalid").to_string();
        let twice = err("[[tenant]]\nname = \"a\"\n\n[[tenant]]\nname = \"a\"\n");
        assert!(
            twice.starts_with("node.toml:2:") && twice.contains("twice"),
            "{twice}"
        );
        let system = err("[[tenant]]\nname = \"system\"\n");
        assert!(system.starts_with("node.toml:2:"), "{system}");
        let memory = err(
            "[limits]\nmemory_mb = 16\n\n[[tenant]]\nname = \"a\"\n\n[[tenant]]\nname = \"b\"\n\
             [tenant.limits]\nmemory_mb = 32\n",
        );
        assert!(
            memory.starts_with("node.toml:10:") && memory.contains("tenant `b`: key `memory_mb`"),
            "{memory}"
        );
        let grant = err("[[tenant]]\nname = \"a\"\ngrants = [\"nobody\"]\n");
        assert!(
            grant.starts_with("node.toml:3:") && grant.contains("tenant/entry"),
            "{grant}"
        );
        let unknown = err("[[tenant]]\nname = \"a\"\nmodules = []\n");
        assert!(
            unknown.starts_with("node.toml:3:") && unknown.contains("modules"),
            "{unknown}"
        );
        let tenant_file = TenantConfig::parse(
            "name = \"a\"\n\n[limits]\nspawn_rate = 0\n",
            Path::new("a.toml"),
            &Limits::default(),
        )
        .expect_err("zero rate")
        .to_string();
        assert!(tenant_file.starts_with("a.toml:4:"), "{tenant_file}");
    }

    #[test]
    fn the_readme_tenant_file_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("# blue.toml")
            .expect("the README's tenant file");
        let end = start + readme[start..].find("```").expect("its end");
        let tenant = TenantConfig::parse(
            &readme[start..end],
            Path::new("blue.toml"),
            &Limits::default(),
        )
        .expect("the README's tenant file parses");
        assert_eq!(tenant.name, "blue");
        assert_eq!(tenant.exports.get("api").map(String::as_str), Some(".api"));
        assert!(tenant.dirs[0].read_only && tenant.bootstrap.len() == 1);
    }

    #[test]
    fn out_of_range_value_names_line_and_key() {
        let s = parse("[limits]\n\nmemory_mb = 0\n")
            .expect_err("zero memory")
            .to_string();
        assert!(
            s.starts_with("node.toml:3:") && s.contains("memory_mb"),
            "{s}"
        );
    }
}
