//! The node file (`skyhost run node.toml`): TOML, checked strictly, and every
//! error names the file, the line and the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod links;
mod tenant;

use links::check_link;
pub use links::{ClusterNodeConfig, EtcdTls, EtcdUrl, HarborConfig, HealthConfig, TlsFiles};
pub use tenant::{DirGrant, TenantConfig, TenantLimits, is_tenant_name};

/// The node's own tenant's name.
pub const SYSTEM_TENANT: &str = "system";

/// The most services one node can hold: the local ids an address has room
/// for beside its harbor id (`runtime::Address::MAX_LOCAL`, kept equal by a
/// test there).
pub const MAX_LOCAL_SERVICES: u32 = (1 << 24) - 1;

/// What runs a node's services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Each service is a tokio task.
    Tokio,
    /// The node's own worker threads (`runtime/workers.rs`).
    #[default]
    Workers,
}

/// A node's configuration, as read from its node file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Scheduler threads; absent means one per core.
    #[serde(default)]
    pub threads: Option<usize>,
    /// What runs the services: tokio's tasks (`"tokio"`, the default) or
    /// worker threads of the node's own (`"workers"`, issue 22's scheduler,
    /// not yet the default: see docs/scheduler.md).
    #[serde(default)]
    pub scheduler: Scheduler,
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
    /// The control address under TLS 1.3: `{ cert, key, ca }`. An operator
    /// must present a certificate the CA signed (`skyhost cert node NAME`);
    /// without a secret that certificate alone lets them in, with one they
    /// send it as well.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
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
            tls: None,
        }
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
    /// Most services alive at once; 0 means 100,000, or, when
    /// `resident_services` is 0 too, fewer if the kernel's
    /// `vm.max_map_count` cannot map them.
    pub max_services: u32,
    /// Instances held at once (sizes the instance pool; each costs kernel
    /// maps); 0: as many as `max_services`. Fewer than `max_services` only
    /// pays with `hibernate_after_ms`: when every slot is taken, the
    /// services idle the longest hibernate to make room.
    pub resident_services: u32,
    /// A service idle this long (ms) gives up its instance and keeps its
    /// state outside it until its next message (docs/hibernation.md);
    /// 0, the default, keeps every service awake.
    pub hibernate_after_ms: u64,
    /// A spawn whose module and args match an earlier spawn whose `init`
    /// called no import is born hibernated on what that `init` left (its
    /// state, or an image of its memory), without running it
    /// (docs/hibernation.md, template spawn).
    pub template_spawn: bool,
    /// KiB of the pages an instance wrote that its pool slot keeps when the
    /// instance goes (per linear memory and per table), reset in place
    /// instead of given back to the kernel: the next instance in that slot
    /// (a spawn, a wake) takes no page fault on them, and a free slot holds
    /// that much memory; 0, the default, gives every page back.
    pub slot_keep_resident_kib: u32,
    /// Instances the node makes ahead of the wakes that take them, at most
    /// two per module and tenant whose services wake (each holds a pool
    /// slot and its memory; docs/hibernation.md); 0: none.
    pub instances_ahead: u32,
    /// A call to an idle service of the same tenant on this node runs the
    /// callee's `dispatch` inside the caller's `call` and hands its answer
    /// straight back (the direct hand-off, docs/scheduler.md); false sends
    /// every call through the callee's mailbox.
    pub direct_calls: bool,
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
            resident_services: 0,
            hibernate_after_ms: 0,
            template_spawn: true,
            slot_keep_resident_kib: 0,
            instances_ahead: 16,
            direct_calls: true,
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
    /// These limits with `max_services` and `resident_services` resolved:
    /// `max_services` 0 becomes [`DEFAULT_MAX_SERVICES`] (or, when every
    /// live service is resident, what `vm.max_map_count` leaves room for);
    /// `resident_services` 0 becomes `max_services`, and it is at most that.
    pub fn resolved(&self) -> Limits {
        let mut limits = self.clone();
        if limits.resident_services > 0 && limits.max_services == 0 {
            limits.max_services = DEFAULT_MAX_SERVICES;
        }
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
        if limits.resident_services == 0 || limits.resident_services > limits.max_services {
            limits.resident_services = limits.max_services;
        }
        limits
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            threads: None,
            scheduler: Scheduler::Workers,
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
        if let Some(h) = &mut config.harbor {
            if let Some(file) = &h.secret_file {
                h.secret = Some(read_secret(file)?);
            }
            if let Some(tls) = &mut h.tls {
                tls.resolve(base);
            }
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
            if let Some(tls) = &mut c.tls {
                tls.resolve(base);
            }
            if let Some(tls) = &mut c.discovery_tls {
                tls.resolve(base);
            }
        }
        for t in &mut config.tenants {
            t.resolve_paths(base);
        }
        if let Some(c) = &mut config.control {
            if let Some(file) = &c.secret_file {
                c.secret = Some(read_secret(file)?);
            }
            if let Some(tls) = &mut c.tls {
                tls.resolve(base);
            }
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
            if let Some(t) = &c.discovery_tls {
                if c.discovery.is_none() {
                    return Err(invalid(
                        "discovery_tls",
                        "is for etcd: give `discovery` too".into(),
                    ));
                }
                if t.cert.is_some() != t.key.is_some() {
                    return Err(invalid(
                        "discovery_tls",
                        "give both `cert` and `key`, or neither".into(),
                    ));
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
                (None, None) if c.tls.is_none() => {
                    return Err(invalid(
                        "address",
                        "[control] needs `secret`, `secret_file` or `tls`".into(),
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
        if log_filter(&self.log_level).is_err() {
            return Err(invalid(
                "log_level",
                format!("`{}` is not a log filter", self.log_level),
            ));
        }
        Ok(())
    }
}

/// The log filter `text` names (`log_level`, `RUST_LOG`). A span field's
/// value matches as written, not as a regular expression: the filter's
/// regex engine builds its automaton without a bound, and a few hundred
/// bytes of filter kept it busy for minutes (found by fuzzing, see
/// docs/fuzzing.md).
///
/// # Errors
/// When `text` is not a filter.
pub fn log_filter(
    text: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(text)
}

/// The line (from 1) of byte `offset` in `text`, for a parser's error.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
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

    /// Found by fuzzing: this filter kept the filter's regex engine busy
    /// for minutes; matched as written, it is refused at once.
    #[test]
    fn a_log_filter_is_parsed_without_regular_expressions() {
        let text = include_str!("../../fuzz/corpus/node_config/regression-log-filter-regex");
        let err = parse(text).expect_err("not a filter");
        assert!(err.to_string().contains("log_level"), "{err}");
        assert!(log_filter("skyhost=debug,[call{node=game}]=trace").is_ok());
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
    fn the_scheduler_is_tokio_or_workers() {
        assert_eq!(parse("").expect("default").scheduler, Scheduler::Workers);
        let t = parse("scheduler = \"tokio\"\n").expect("tokio");
        assert_eq!(t.scheduler, Scheduler::Tokio);
        let s = parse("threads = 2\nscheduler = \"fast\"\n")
            .expect_err("no such scheduler")
            .to_string();
        assert!(
            s.starts_with("node.toml:2:") && s.contains("workers"),
            "{s}"
        );
    }

    #[test]
    fn cluster_tls_files_are_taken_beside_the_node_file() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "[cluster]\nname = \"a\"\nsecret = \"s\"\n\
             tls = { cert = \"a.pem\", key = \"/keys/a.key\", ca = \"ca.pem\" }\n",
        )?;
        let tls = NodeConfig::load(&file)?
            .cluster
            .and_then(|c| c.tls)
            .ok_or("tls")?;
        assert_eq!(tls.cert, dir.path().join("a.pem"));
        assert_eq!(tls.key, Path::new("/keys/a.key"));
        let typo =
            parse("[cluster]\nname = \"a\"\ntls = { cert = \"a\", key = \"k\", cas = \"c\" }\n")
                .expect_err("unknown key")
                .to_string();
        assert!(
            typo.starts_with("node.toml:3:") && typo.contains("cas"),
            "{typo}"
        );
        Ok(())
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
        let readme = include_str!("../../../README.md");
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
