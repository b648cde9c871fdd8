//! Node types and fleet start (seed §6.3): `skyhost fleet up | down | status
//! <fleet.toml>` runs every node of a fleet as its own process on this machine.
//!
//! ```toml
//! etcd = "etcd://127.0.0.1:2379/game"   # optional: fills {etcd} in the templates
//! [[type]]
//! name = "game"
//! template = "game.toml"                # a node file with {placeholders}
//! instances = 2                         # game1, game2
//! ```
//!
//! `up`: each instance `<type><i>` (from 1) gets its template with `{name}`,
//! `{type}`, `{index}`, `{port}` (a port free now), `{etcd}`, `{dir}` (the
//! fleet file's directory), `{state}` (a directory of the node's own in the
//! run directory, kept across runs) and the file's `[vars]` filled in,
//! written to the run directory
//! (`.fleet-<stem>` beside the fleet file) as `<name>.toml`; it runs as
//! `skyhost run <name>.toml --ready-file <name>.ready` in a process group
//! of its own (a terminal's Ctrl-C does not reach it), logging to
//! `<name>.log`. `up` waits until every node has written its ready file
//! (launched, listeners bound, bootstrap service started); if one exits or
//! is late, every node started is stopped and its log's end is shown.
//! The state file (`fleet.state`, JSON) lists name, type, pid and addresses;
//! `down` stops those still running (SIGTERM, then SIGKILL after a grace
//! period) and removes it; `status` shows which are alive. With `tls =
//! true` in the fleet file, `up` keeps a CA in the run directory's `tls/`,
//! makes a certificate per node naming it (and `operator.pem` for `skyhost
//! ctl`), and fills `{tls}`, `{cert}`, `{key}` and `{ca}`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A fleet file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// Discovery URL put in the templates' `{etcd}`.
    #[serde(default)]
    pub etcd: Option<String>,
    /// More placeholders for the templates; their values may use the
    /// built-in ones (`{dir}`, ...).
    #[serde(default)]
    pub vars: std::collections::BTreeMap<String, String>,
    /// Make certificates for the fleet's TLS (docs/tls.md): a CA in the
    /// run directory's `tls/` (kept across runs), a certificate per node
    /// naming it, and `operator.pem` for `skyhost ctl`; the templates get
    /// `{tls}` (an inline `{ cert, key, ca }` table for `[cluster]` or
    /// `[control]`), `{cert}`, `{key}` and `{ca}`.
    #[serde(default)]
    pub tls: bool,
    /// The node types, started in this order.
    #[serde(rename = "type")]
    pub types: Vec<NodeType>,
}

/// One node type of a fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeType {
    /// The type's name (`login`, `game`, ...); instances are `<name><i>`.
    pub name: String,
    /// Its node file template, relative to the fleet file.
    pub template: PathBuf,
    /// How many instances.
    #[serde(default = "one")]
    pub instances: u32,
}

fn one() -> u32 {
    1
}

/// What a node writes to its ready file once it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Its process id.
    pub pid: u32,
    /// Where it accepts cluster links.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// Its control address.
    #[serde(default)]
    pub control: Option<String>,
    /// Its metrics address.
    #[serde(default)]
    pub metrics: Option<String>,
}

/// One node of a running fleet, as the state file records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its cluster name.
    pub name: String,
    /// Its node type.
    pub kind: String,
    /// What it reported when ready.
    pub ready: Ready,
    /// Its log file.
    pub log: PathBuf,
    /// The ready file it was started with: its command line names it, which
    /// tells the instance from a process that reused its pid.
    #[serde(default)]
    pub ready_file: PathBuf,
}

/// Why a fleet command failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The fleet file or a template could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A node did not start.
    #[error("node `{name}` did not start: {why}\n--- end of {log}:\n{tail}")]
    NodeFailed {
        /// The node.
        name: String,
        /// Why.
        why: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// A process or file operation failed.
    #[error("{0}")]
    Io(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> FleetError {
    FleetError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

impl FleetFile {
    /// Reads and checks a fleet file.
    ///
    /// # Errors
    /// [`FleetError::File`] naming the file, and the line and key where TOML says.
    pub fn load(path: &Path) -> Result<FleetFile, FleetError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses and checks fleet-file text; `path` only names it in errors.
    ///
    /// # Errors
    /// [`FleetError::File`] naming the file, and the line and key where TOML says.
    pub fn parse(text: &str, path: &Path) -> Result<FleetFile, FleetError> {
        let fleet: FleetFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map_or(0, |s| skyhost::config::line_of(text, s.start));
            file_error(
                path,
                format_args!("line {line}: {}", e.message().trim_end()),
            )
        })?;
        let mut names = std::collections::HashSet::new();
        for t in &fleet.types {
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(file_error(
                    path,
                    format_args!("type `{}`: a name is letters, digits and -", t.name),
                ));
            }
            if !names.insert(t.name.clone()) {
                return Err(file_error(
                    path,
                    format_args!("type `{}` is listed twice", t.name),
                ));
            }
        }
        Ok(fleet)
    }
}

/// Copies the fleet file `from`, and the other `.toml` files beside it
/// (its templates), into the directory `to`, with the copy's `etcd` and
/// `[vars]` entries set as given. Returns the copy's fleet file.
///
/// # Errors
/// When a file cannot be read, parsed or written.
pub fn copy_with(
    from: &Path,
    to: &Path,
    etcd: Option<&str>,
    vars: &[(&str, &str)],
) -> Result<PathBuf, FleetError> {
    let dir = from.parent().unwrap_or(Path::new("."));
    for entry in std::fs::read_dir(dir).map_err(|e| file_error(dir, e))? {
        let path = entry.map_err(|e| file_error(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "toml")
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, to.join(name)).map_err(|e| file_error(&path, e))?;
        }
    }
    let text = std::fs::read_to_string(from).map_err(|e| file_error(from, e))?;
    let mut fleet: toml::Table = toml::from_str(&text).map_err(|e| file_error(from, e))?;
    if let Some(url) = etcd {
        fleet.insert("etcd".into(), url.into());
    }
    if !vars.is_empty() {
        let table = fleet
            .entry("vars")
            .or_insert_with(|| toml::Table::new().into());
        if let Some(table) = table.as_table_mut() {
            for (k, v) in vars {
                table.insert((*k).into(), (*v).into());
            }
        }
    }
    let copy = to.join(from.file_name().unwrap_or("fleet.toml".as_ref()));
    let text = toml::to_string(&fleet).map_err(|e| file_error(from, e))?;
    std::fs::write(&copy, text).map_err(|e| file_error(&copy, e))?;
    Ok(copy)
}

/// The example game's fleet file in this source tree.
pub fn example_game() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/game/fleet.toml")
}

/// The run directory of the fleet file `path`.
pub fn run_dir(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "fleet".into(), |s| s.to_string_lossy().into_owned());
    path.parent()
        .unwrap_or(Path::new("."))
        .join(format!(".fleet-{stem}"))
}

fn state_file(path: &Path) -> PathBuf {
    run_dir(path).join("fleet.state")
}

/// Fuzz target (fuzz/): a fleet file, and each of its types' names and
/// the fleet's variables filled into a template made of the input.
#[doc(hidden)]
pub fn fuzz_fleet_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(fleet) = FleetFile::parse(text, Path::new("fleet.toml")) {
        let values: Vec<(&str, &str)> = fleet
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(fleet.types.iter().map(|t| ("type", t.name.as_str())))
            .collect();
        let _ = render(text, &values);
    }
}

/// Fills a template's placeholders.
fn render(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(&format!("{{{key}}}"), value)
        })
}

fn free_port() -> Result<u16, FleetError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| FleetError::Io(format!("picking a free port: {e}")))
}

/// The last lines of a log file.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A node process started by `up`, until it is ready.
struct Starting {
    name: String,
    kind: String,
    child: std::process::Child,
    ready_file: PathBuf,
    log: PathBuf,
}

/// Starts every node of the fleet in `path` with the `skyhost` binary
/// `exe`, waits until each is ready (up to `deadline` in all) and records
/// the state. Returns the instances, in start order.
///
/// # Errors
/// A bad fleet file or template, a fleet already up, or a node that did
/// not start (every node started is stopped again).
pub fn up(path: &Path, exe: &Path, deadline: Duration) -> Result<Vec<Instance>, FleetError> {
    let fleet = FleetFile::load(path)?;
    let dir = std::path::absolute(run_dir(path)).map_err(|e| file_error(path, e))?;
    let state = state_file(path);
    if state.exists() && alive(&load_state(path)?).next().is_some() {
        return Err(file_error(
            &state,
            "the fleet is up already (`skyhost fleet down` first)",
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| file_error(&dir, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let base_text = std::path::absolute(base)
        .unwrap_or_else(|_| base.to_owned())
        .display()
        .to_string();
    let tls_dir = dir.join("tls");
    if fleet.tls {
        issue(&tls_dir, "operator")?;
    }
    let mut starting: Vec<Starting> = Vec::new();
    let result = (|| {
        for t in &fleet.types {
            let template_path = base.join(&t.template);
            let template = std::fs::read_to_string(&template_path)
                .map_err(|e| file_error(&template_path, e))?;
            for i in 1..=t.instances {
                let name = format!("{}{i}", t.name);
                let port = free_port()?.to_string();
                let index = i.to_string();
                let state_dir = dir.join(&name);
                std::fs::create_dir_all(&state_dir).map_err(|e| file_error(&state_dir, e))?;
                let state_text = state_dir.display().to_string();
                let mut vars: Vec<(&str, &str)> = fleet
                    .vars
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let tls = if fleet.tls {
                    issue(&tls_dir, &name)?
                } else {
                    Vec::new()
                };
                vars.extend(tls.iter().map(|(k, v)| (*k, v.as_str())));
                // The vars first: their values may hold built-in placeholders.
                let text = render(
                    &render(&template, &vars),
                    &[
                        ("name", &name),
                        ("type", &t.name),
                        ("index", &index),
                        ("port", &port),
                        ("etcd", fleet.etcd.as_deref().unwrap_or("")),
                        ("dir", &base_text),
                        ("state", &state_text),
                    ],
                );
                let node_file = dir.join(format!("{name}.toml"));
                std::fs::write(&node_file, text).map_err(|e| file_error(&node_file, e))?;
                let ready_file = dir.join(format!("{name}.ready"));
                let _ = std::fs::remove_file(&ready_file);
                let log = dir.join(format!("{name}.log"));
                let out = std::fs::File::create(&log).map_err(|e| file_error(&log, e))?;
                let err = out.try_clone().map_err(|e| file_error(&log, e))?;
                let child = {
                    use std::os::unix::process::CommandExt;
                    std::process::Command::new(exe)
                        .arg("run")
                        .arg(&node_file)
                        .arg("--ready-file")
                        .arg(&ready_file)
                        .stdin(std::process::Stdio::null())
                        .stdout(out)
                        .stderr(err)
                        .process_group(0)
                        .spawn()
                        .map_err(|e| FleetError::Io(format!("starting {}: {e}", exe.display())))?
                };
                starting.push(Starting {
                    name,
                    kind: t.name.clone(),
                    child,
                    ready_file,
                    log,
                });
            }
        }
        wait_ready(&mut starting, deadline)
    })();
    match result {
        Ok(instances) => {
            let text = serde_json::to_string_pretty(&instances)
                .map_err(|e| FleetError::Io(e.to_string()))?;
            std::fs::write(&state, text).map_err(|e| file_error(&state, e))?;
            Ok(instances)
        }
        Err(e) => {
            for s in &mut starting {
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
            Err(e)
        }
    }
}

/// Makes the fleet's CA in `dir` when it has none, and a certificate for
/// `name` when there is none yet; the placeholders that name its files.
fn issue(dir: &Path, name: &str) -> Result<Vec<(&'static str, String)>, FleetError> {
    let tls_error = |e: anyhow::Error| FleetError::Io(format!("{}: {e:#}", dir.display()));
    if !dir.join("ca.pem").exists() {
        crate::cert::make_ca(dir).map_err(tls_error)?;
    }
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    if !(cert.exists() && key.exists()) {
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
        crate::cert::make_node(dir, name, dir).map_err(tls_error)?;
    }
    let ca = dir.join("ca.pem");
    let inline = format!(
        "{{ cert = {:?}, key = {:?}, ca = {:?} }}",
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string()
    );
    Ok(vec![
        ("tls", inline),
        ("cert", cert.display().to_string()),
        ("key", key.display().to_string()),
        ("ca", ca.display().to_string()),
    ])
}

/// Waits until every starting node wrote its ready file.
fn wait_ready(starting: &mut [Starting], deadline: Duration) -> Result<Vec<Instance>, FleetError> {
    let until = Instant::now() + deadline;
    let mut ready: Vec<Option<Ready>> = vec![None; starting.len()];
    while ready.iter().any(Option::is_none) {
        for (s, r) in starting.iter_mut().zip(ready.iter_mut()) {
            if r.is_some() {
                continue;
            }
            if let Some(status) = s
                .child
                .try_wait()
                .map_err(|e| FleetError::Io(e.to_string()))?
            {
                return Err(FleetError::NodeFailed {
                    name: s.name.clone(),
                    why: format!("it exited ({status})"),
                    log: s.log.display().to_string(),
                    tail: tail(&s.log),
                });
            }
            if let Ok(text) = std::fs::read_to_string(&s.ready_file)
                && let Ok(report) = serde_json::from_str::<Ready>(&text)
            {
                *r = Some(report);
            }
        }
        if Instant::now() > until
            && let Some(i) = ready.iter().position(Option::is_none)
        {
            return Err(FleetError::NodeFailed {
                name: starting[i].name.clone(),
                why: format!("not ready within {deadline:?}"),
                log: starting[i].log.display().to_string(),
                tail: tail(&starting[i].log),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(starting
        .iter()
        .zip(ready)
        .filter_map(|(s, r)| {
            Some(Instance {
                name: s.name.clone(),
                kind: s.kind.clone(),
                ready: r?,
                log: s.log.clone(),
                ready_file: s.ready_file.clone(),
            })
        })
        .collect())
}

/// The instances recorded by the last `up` of the fleet in `path`.
///
/// # Errors
/// When there is no state file (the fleet is not up) or it is unreadable.
pub fn load_state(path: &Path) -> Result<Vec<Instance>, FleetError> {
    let state = state_file(path);
    let text = std::fs::read_to_string(&state)
        .map_err(|e| file_error(&state, format_args!("{e} (is the fleet up?)")))?;
    serde_json::from_str(&text).map_err(|e| file_error(&state, e))
}

/// Whether `instance` still runs: its pid is a live process (not a zombie)
/// started with the instance's `--ready-file`, whatever the binary is
/// called (a reused pid runs something else).
pub fn is_running(instance: &Instance) -> bool {
    let pid = instance.ready.pid;
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|&b| b == 0);
    let ready_file = instance.ready_file.as_os_str().as_encoded_bytes();
    let started_so = args.any(|a| a == b"--ready-file") && args.next() == Some(ready_file);
    started_so
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
}

fn alive(instances: &[Instance]) -> impl Iterator<Item = &Instance> {
    instances.iter().filter(|i| is_running(i))
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Stops every running node of the fleet in `path` (SIGTERM, then SIGKILL
/// after `grace`) and removes the state file. Returns the names stopped.
///
/// # Errors
/// When the fleet is not up.
pub fn down(path: &Path, grace: Duration) -> Result<Vec<String>, FleetError> {
    let instances = load_state(path)?;
    let running: Vec<&Instance> = alive(&instances).collect();
    for i in &running {
        signal(i.ready.pid, rustix::process::Signal::TERM);
    }
    let until = Instant::now() + grace;
    while running.iter().any(|i| is_running(i)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in &running {
        if is_running(i) {
            signal(i.ready.pid, rustix::process::Signal::KILL);
        }
    }
    let state = state_file(path);
    std::fs::remove_file(&state).map_err(|e| file_error(&state, e))?;
    Ok(running.iter().map(|i| i.name.clone()).collect())
}

/// The fleet's table: name, type, pid, whether it runs, its addresses.
pub fn table(instances: &[Instance]) -> String {
    let mut out = format!(
        "{:<12} {:<8} {:>8} {:<7} {:<22} {}\n",
        "NAME", "TYPE", "PID", "STATE", "CLUSTER", "CONTROL"
    );
    for i in instances {
        let state = if is_running(i) { "up" } else { "down" };
        out.push_str(&format!(
            "{:<12} {:<8} {:>8} {:<7} {:<22} {}\n",
            i.name,
            i.kind,
            i.ready.pid,
            state,
            i.ready.cluster.join(","),
            i.ready.control.as_deref().unwrap_or("-"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fleet file's fuzz corpus (docs/fuzzing.md) replays without a panic.
    #[test]
    fn the_fleet_file_fuzz_corpus_replays() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/fuzz/corpus/fleet_file");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("the fleet_file corpus") {
            let path = entry.expect("a corpus entry").path();
            println!("{}", path.display());
            fuzz_fleet_file(&std::fs::read(&path).expect("a corpus file"));
            n += 1;
        }
        assert!(n > 0, "{}: an empty corpus", dir.display());
    }

    #[test]
    fn an_instance_runs_while_a_process_started_with_its_ready_file_lives() {
        let ready_file = std::env::temp_dir().join("fleet-is-running-test.ready");
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .arg("--ready-file")
            .arg(&ready_file)
            .spawn()
            .expect("sh");
        let instance = |pid, ready_file: &Path| Instance {
            name: "n".into(),
            kind: "t".into(),
            ready: Ready {
                pid,
                cluster: Vec::new(),
                control: None,
                metrics: None,
            },
            log: PathBuf::new(),
            ready_file: ready_file.to_path_buf(),
        };
        // The child's command line is there once it has exec'd.
        let pid = child.id();
        let since = Instant::now();
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty()) {
            assert!(since.elapsed() < Duration::from_secs(5), "sh never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(is_running(&instance(pid, &ready_file)));
        // The same pid with another instance's ready file: not that instance.
        assert!(!is_running(&instance(pid, Path::new("/elsewhere.ready"))));
        // A live process not started by a fleet.
        assert!(!is_running(&instance(std::process::id(), &ready_file)));
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(!is_running(&instance(pid, &ready_file)));
    }

    #[test]
    fn templates_are_filled_and_fleet_files_checked() {
        let text = render(
            "name = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n",
            &[("name", "game2"), ("port", "7002")],
        );
        assert_eq!(text, "name = \"game2\"\nlisten = \"127.0.0.1:7002\"\n");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "[[type]]\nname = \"game\"\ntemplate = \"g.toml\"\ninstances = 2\n",
        )
        .expect("write");
        let fleet = FleetFile::load(&path).expect("loads");
        assert_eq!(fleet.types[0].instances, 2);
        std::fs::write(&path, "[[type]]\nname = \"game\"\ntemplat = \"g.toml\"\n").expect("write");
        let e = FleetFile::load(&path).expect_err("a misspelt key");
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("templat"),
            "{e}"
        );
    }
}
