//! The cluster config: which node name is at which address.
//!
//! It accepts Skynet's clustername files as they are:
//! ```text
//! -- the game's nodes
//! login = "127.0.0.1:2528"
//! game1 = "game1.example:2529"   -- host names are resolved when a link is made
//! battle = false                 -- offline: calls to it fail at once
//! __nowaiting = true             -- calls to unknown nodes fail instead of waiting
//! __cache = true                 -- any other `__` option: accepted, warned, ignored
//! ```
//! and the same as TOML (`#` comments, any TOML syntax for these keys).
//! Errors name the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a node of the cluster is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddress {
    /// `host:port`, resolved when a link is made.
    At(String),
    /// Set to `false`: offline; calls fail at once naming it.
    Offline,
    /// Was published by discovery and went (its lease expired, or it
    /// stopped): calls fail at once naming it, until it returns.
    Departed,
}

/// A parsed cluster config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterTable {
    /// Every node named in the file.
    pub nodes: BTreeMap<String, NodeAddress>,
    /// `__nowaiting = true`: a call to a node not in the table fails at
    /// once instead of waiting for a reload that adds it.
    pub nowaiting: bool,
    /// Node → the node its calls go to while it fails its health checks
    /// (`game1 = { address = "...", backup = "game1b" }`).
    pub backups: BTreeMap<String, String>,
    /// Options (`__` keys) skyhost does not use, each as `file:line: key`:
    /// Skynet takes any `__` key as an option, so a file written for it may
    /// carry some. They are ignored with a warning, not refused.
    pub unknown_options: Vec<String>,
}

/// A cluster config that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct ClusterConfigError {
    /// The file (or `<reload>` for text given to `cluster.reload`).
    pub path: PathBuf,
    /// 1-based line (0 if unknown).
    pub line: usize,
    /// What is wrong, naming the key.
    pub message: String,
}

impl ClusterTable {
    /// Reads and parses a cluster config file.
    ///
    /// # Errors
    /// [`ClusterConfigError`] naming the file, line and key.
    pub fn load(path: &Path) -> Result<Self, ClusterConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClusterConfigError {
            path: path.to_owned(),
            line: 0,
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses cluster config text; `path` only names it in errors.
    ///
    /// # Errors
    /// [`ClusterConfigError`] naming the line and key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ClusterConfigError> {
        let toml_text = lua_comments_to_toml(text);
        let error = |line: usize, message: String| ClusterConfigError {
            path: path.to_owned(),
            line,
            message,
        };
        let table: toml::Table = toml::from_str(&toml_text).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |s| crate::config::line_of(&toml_text, s.start));
            error(line, e.message().trim_end().to_string())
        })?;
        let mut out = ClusterTable::default();
        for (key, value) in table {
            let line = key_line(text, &key);
            match (key.as_str(), value) {
                ("__nowaiting", toml::Value::Boolean(b)) => out.nowaiting = b,
                ("__nowaiting", v) => {
                    return Err(error(
                        line,
                        format!(
                            "key `__nowaiting`: expected true or false, found {}",
                            v.type_str()
                        ),
                    ));
                }
                (option, _) if option.starts_with("__") => {
                    out.unknown_options
                        .push(format!("{}:{line}: `{option}`", path.display()));
                }
                (name, toml::Value::Boolean(false)) => {
                    out.nodes.insert(name.to_string(), NodeAddress::Offline);
                }
                (name, toml::Value::String(address)) => {
                    check_address(&address).map_err(|why| {
                        error(
                            line,
                            format!("key `{name}`: `{address}` is not host:port ({why})"),
                        )
                    })?;
                    out.nodes.insert(name.to_string(), NodeAddress::At(address));
                }
                (name, toml::Value::Table(mut t)) => {
                    let address = match t.remove("address") {
                        Some(toml::Value::String(a)) => a,
                        _ => {
                            return Err(error(
                                line,
                                format!("key `{name}`: needs `address = \"host:port\"`"),
                            ));
                        }
                    };
                    check_address(&address).map_err(|why| {
                        error(
                            line,
                            format!("key `{name}`: `{address}` is not host:port ({why})"),
                        )
                    })?;
                    match t.remove("backup") {
                        Some(toml::Value::String(b)) => {
                            out.backups.insert(name.to_string(), b);
                        }
                        None => {}
                        Some(v) => {
                            return Err(error(
                                line,
                                format!(
                                    "key `{name}.backup`: expected a node name, found {}",
                                    v.type_str()
                                ),
                            ));
                        }
                    }
                    if let Some(other) = t.keys().next() {
                        return Err(error(
                            line,
                            format!(
                                "key `{name}.{other}`: unknown (a node takes `address` and `backup`)"
                            ),
                        ));
                    }
                    out.nodes.insert(name.to_string(), NodeAddress::At(address));
                }
                (name, v) => {
                    return Err(error(
                        line,
                        format!(
                            "key `{name}`: expected \"host:port\", false or {{ address, backup }}, found {}",
                            v.type_str()
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Logs a warning for each option it ignores.
    pub fn warn_unknown_options(&self) {
        for at in &self.unknown_options {
            tracing::warn!("cluster config option {at} is not one skyhost knows; ignored");
        }
    }

    /// The address of `node`, as the table says.
    pub fn get(&self, node: &str) -> Option<&NodeAddress> {
        self.nodes.get(node)
    }
}

fn check_address(address: &str) -> Result<(), &'static str> {
    let (host, port) = address.rsplit_once(':').ok_or("no port")?;
    if host.is_empty() {
        return Err("no host");
    }
    port.parse::<u16>()
        .map_err(|_| "the port is not 0..=65535")?;
    Ok(())
}

/// Turns Lua `--` comments into TOML `#` comments, leaving `--` inside
/// quoted strings alone. Line numbers are kept.
fn lua_comments_to_toml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut quote: Option<char> = None;
        let mut cut = None;
        let mut prev = '\0';
        for (i, c) in line.char_indices() {
            match quote {
                Some(q) if c == q && prev != '\\' => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == '#' => break,
                None if c == '-' && prev == '-' => {
                    cut = Some(i - 1);
                    break;
                }
                None => {}
            }
            prev = c;
        }
        match cut {
            Some(at) => {
                out.push_str(&line[..at]);
                out.push('#');
                out.push_str(&line[at + 2..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The line where `key` is assigned, for errors found after parsing.
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix('"')
                .and_then(|r| r.strip_prefix(key))
                .and_then(|r| r.strip_prefix('"'))
                .or_else(|| l.strip_prefix(key));
            l.is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skynet_options_are_taken_and_unknown_ones_kept_aside() {
        let text = "-- Skynet's own example\n__nowaiting = true\n__cache = true\n\
                    __timeout = 300\ndb = \"127.0.0.1:2528\"\n";
        let t = parse(text).expect("Skynet's file is accepted");
        assert!(t.nowaiting);
        assert_eq!(
            t.nodes.get("db"),
            Some(&NodeAddress::At("127.0.0.1:2528".into()))
        );
        assert!(!t.nodes.contains_key("__cache"));
        assert_eq!(
            t.unknown_options,
            ["cluster.conf:3: `__cache`", "cluster.conf:4: `__timeout`"]
        );
    }

    fn parse(text: &str) -> Result<ClusterTable, ClusterConfigError> {
        ClusterTable::parse(text, Path::new("cluster.conf"))
    }

    #[test]
    fn a_skynet_clustername_file_parses_as_it_is() {
        let t = parse(
            "-- nodes\n__nowaiting = true\ndb = \"127.0.0.1:2528\" -- the database\n\
             db2='localhost:2529'\noffline = false\nurl = \"h:1\" --x\nq = \"a--b:1\"\n",
        )
        .expect("valid");
        assert!(t.nowaiting);
        assert_eq!(t.get("db"), Some(&NodeAddress::At("127.0.0.1:2528".into())));
        assert_eq!(
            t.get("db2"),
            Some(&NodeAddress::At("localhost:2529".into()))
        );
        assert_eq!(t.get("offline"), Some(&NodeAddress::Offline));
        assert_eq!(
            t.get("q"),
            Some(&NodeAddress::At("a--b:1".into())),
            "-- inside quotes stays"
        );
        assert_eq!(t.nodes.len(), 5);
    }

    #[test]
    fn toml_syntax_is_accepted_too() {
        let t = parse("# toml\n[\"__nowaiting\"]\n").expect_err("a table is not a node");
        assert!(t.message.contains("__nowaiting"), "{t}");
        let t = parse("# toml comment\n\"game-1\" = \"127.0.0.1:9\"\n").expect("valid");
        assert_eq!(
            t.get("game-1"),
            Some(&NodeAddress::At("127.0.0.1:9".into()))
        );
        assert!(!t.nowaiting);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let e = parse("a = \"127.0.0.1:1\"\n\nb = true\n").expect_err("true is no address");
        assert_eq!(
            (e.line, e.to_string().starts_with("cluster.conf:3:")),
            (3, true),
            "{e}"
        );
        assert!(e.message.contains("`b`"), "{e}");
        let e = parse("a = \"127.0.0.1\"\n").expect_err("no port");
        assert_eq!(e.line, 1);
        assert!(
            e.message.contains("`a`") && e.message.contains("host:port"),
            "{e}"
        );
        let e = parse("a = \"h:1\"\nb = = 3\n").expect_err("syntax");
        assert_eq!(e.line, 2, "{e}");
        let e = parse("__nowaiting = 1\n").expect_err("not a bool");
        assert!(e.message.contains("__nowaiting"), "{e}");
        let e = parse("a = \"h:1\"\ng = { address = \"h:2\", bakup = \"a\" }\n")
            .expect_err("a misspelt key");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("`g.bakup`"), "{e}");
    }

    #[test]
    fn a_node_can_name_its_backup() {
        let t = parse(
            "game1 = { address = \"127.0.0.1:7001\", backup = \"game1b\" }\n\
             game1b = \"127.0.0.1:7002\"\n",
        )
        .expect("parses");
        assert_eq!(
            t.get("game1"),
            Some(&NodeAddress::At("127.0.0.1:7001".into()))
        );
        assert_eq!(t.backups.get("game1").map(String::as_str), Some("game1b"));
    }
}
