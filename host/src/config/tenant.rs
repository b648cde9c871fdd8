//! Tenants: a `[[tenant]]` table in the node file, or a tenant file applied
//! to a running node; what each may load, spend and reach.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Bootstrap, ConfigError, Limits, SYSTEM_TENANT, line_of};

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
    /// Idle time (ms) after which its services hibernate; 0: never;
    /// absent: the node's `hibernate_after_ms`.
    pub hibernate_after_ms: Option<u64>,
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

    pub(super) fn resolve_paths(&mut self, base: &Path) {
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
    pub(super) fn line(&self, text: &str) -> usize {
        text.lines()
            .position(|l| {
                let l = l.trim_start();
                l.starts_with("name")
                    && l.contains(&format!("\"{}\"", self.name))
                    && l["name".len()..].trim_start().starts_with('=')
            })
            .map_or(0, |i| i + 1)
    }

    pub(super) fn check(&self, text: &str, path: &Path, node: &Limits) -> Result<(), ConfigError> {
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
