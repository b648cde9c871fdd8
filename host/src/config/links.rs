//! The node file's link tables: `[cluster]` (with its health checks and
//! discovery URL) and `[harbor]`, and the checks both share.

use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// Links under TLS 1.3, both ways authenticated: `{ cert, key, ca }`
    /// (PEM files; this node's certificate names it). Absent: plain TCP.
    /// A TLS node takes no plain peer, and a plain node reaches no TLS one.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// With discovery: etcd is reached over TLS, its certificate checked
    /// against `ca` (`{ ca, cert, key, name }`; `cert` and `key` when etcd
    /// asks clients for one, `name` when its certificate does not name the
    /// endpoints' host).
    #[serde(default)]
    pub discovery_tls: Option<EtcdTls>,
}

/// How a node reaches an etcd served over TLS (`[cluster] discovery_tls`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// The CA etcd's certificate must chain to (PEM).
    pub ca: PathBuf,
    /// The node's client certificate, for an etcd run with
    /// `--client-cert-auth`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name etcd's certificate holds (default: the endpoint's host).
    #[serde(default)]
    pub name: Option<String>,
}

impl EtcdTls {
    /// Paths relative to `base` (the node file's directory) made whole.
    pub fn resolve(&mut self, base: &Path) {
        for p in [Some(&mut self.ca), self.cert.as_mut(), self.key.as_mut()]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
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
            discovery_tls: None,
            advertise: None,
            lease_ttl_s: default_lease_ttl_s(),
            backup: None,
            health: None,
            tls: None,
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
    /// Links (to the master and to peers) under TLS 1.3, both ways
    /// authenticated: `{ cert, key, ca }`. Harbor id N's certificate names
    /// `harbor-N`; a node running the master (`standalone`) also names
    /// `harbor-master`. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
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
            tls: None,
        }
    }

    /// The shared secret's bytes (read from `secret_file` at load).
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.secret.clone().unwrap_or_default().into_bytes()
    }
}

/// Checks the keys every table of links has (`[harbor]`, `[cluster]`):
/// exactly one of `secret` and `secret_file`, and a silence deadline longer
/// than the heartbeat. An error names the key (`table_key` when the
/// missing key has no line of its own) and what is wrong.
pub(super) fn check_link(
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

/// Where a node's certificate, key and the fleet's CA are (`tls = { cert,
/// key, ca }` in `[cluster]`, `[harbor]` or `[control]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This node's certificate chain (PEM), naming the node.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA certificates peers' certificates must chain to (PEM).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// Paths relative to `base` (the node file's directory) made whole.
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.cert, &mut self.key, &mut self.ca] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}
