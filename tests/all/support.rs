//! Support for skyhost's integration tests: nodes with the bundled test
//! services, typed calls to the `testkit` service, and deadlines.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use skyhost::config::Limits;
use skyhost::{Address, CallError, Client, Node, NodeConfig};
pub use skyhost_test_proto::{Command, Reply, TrapKind};

/// How long a test waits for anything before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The directory holding the bundled `.wasm` services.
pub fn guest_dir() -> PathBuf {
    skyhost::bundled_modules().expect("the skyhost build compiled the bundled services")
}

/// Where tests cache compiled modules, shared by every test node.
pub fn cache_dir() -> PathBuf {
    guest_dir().join("test-cache")
}

/// A node file for tests: the bundled services and a shared module cache.
/// The in-process nodes run their services on two worker threads of their
/// own (the default scheduler); `SKYHOST_TEST_SCHEDULER=tokio` runs them as
/// tokio tasks instead.
pub fn test_config() -> NodeConfig {
    let workers = std::env::var("SKYHOST_TEST_SCHEDULER").map_or(true, |s| s != "tokio");
    NodeConfig {
        module_paths: vec![guest_dir()],
        cache_dir: Some(cache_dir()),
        limits: Limits {
            max_services: 4_096,
            ..Limits::default()
        },
        scheduler: if workers {
            skyhost::config::Scheduler::Workers
        } else {
            skyhost::config::Scheduler::Tokio
        },
        threads: workers.then_some(2),
        ..NodeConfig::default()
    }
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// A node started for one test, with a client to talk to it.
pub struct TestNode {
    /// The node.
    pub node: Node,
    /// A host endpoint on it.
    pub client: Client,
}

impl TestNode {
    /// Starts a node with [`test_config`].
    pub fn start() -> anyhow::Result<Self> {
        Self::with_config(test_config())
    }

    /// Starts a node with `config`.
    pub fn with_config(config: NodeConfig) -> anyhow::Result<Self> {
        init_logs();
        let node = Node::start(&config)?;
        let client = node.client();
        Ok(TestNode { node, client })
    }

    /// Spawns a service and waits for its `init`.
    pub async fn spawn(&self, module: &str) -> anyhow::Result<Address> {
        within(self.node.spawn(module, &[]))
            .await?
            .with_context(|| format!("spawn {module}"))
    }

    /// Spawns a service whose first spawn may compile a large module (up
    /// to [`COMPILE_DEADLINE`]).
    pub async fn spawn_compiling(&self, module: &str) -> anyhow::Result<Address> {
        tokio::time::timeout(COMPILE_DEADLINE, self.node.spawn(module, &[]))
            .await
            .with_context(|| format!("compiling {module}"))?
            .with_context(|| format!("spawn {module}"))
    }

    /// Calls a `testkit` service with `command` and decodes its reply.
    pub async fn command(&self, target: Address, command: &Command) -> Result<Reply, CallError> {
        command_via(&self.client, target, command).await
    }

    /// Stops the node and waits for all its tasks.
    pub async fn stop(self) {
        drop(self.client);
        within(self.node.shutdown())
            .await
            .expect("node shut down in time");
    }
}

/// Calls a `testkit` service from `client` and decodes the reply.
pub async fn command_via(
    client: &Client,
    target: Address,
    command: &Command,
) -> Result<Reply, CallError> {
    let payload = postcard::to_allocvec(command).expect("commands encode");
    let reply = client.call_timeout(target, payload, DEADLINE).await?;
    Ok(postcard::from_bytes(&reply).expect("testkit replies decode"))
}

/// Waits (up to [`DEADLINE`]) until the `testkit` at `kit` has logged `n`
/// multicast payloads (`Command::McLog`), asking through `client`.
pub async fn multicast_log(client: &Client, kit: Address, n: usize) -> anyhow::Result<Vec<u32>> {
    let start = std::time::Instant::now();
    loop {
        let log = match command_via(client, kit, &Command::McLog).await? {
            Reply::Order(v) => v,
            r => bail!("McLog answered {r:?}"),
        };
        if log.len() >= n {
            return Ok(log);
        }
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "{kit} got {} of {n} multicast messages",
            log.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long a test waits for the first spawn of a large module (a
/// JavaScript or Python component of 10-40 MB), which compiles it (later
/// spawns and test runs load it from the module cache).
pub const COMPILE_DEADLINE: Duration = Duration::from_secs(300);

/// Awaits `f`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: std::future::IntoFuture>(f: F) -> anyhow::Result<F::Output> {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => Ok(v),
        Err(_) => bail!("no result within {DEADLINE:?}"),
    }
}

/// A cluster node in this process, listening on a port the OS picks, with
/// a 200 ms heartbeat and a 1 s silence deadline; `edit` sets the rest.
pub async fn cluster_node(
    name: &str,
    secret: &str,
    edit: impl FnOnce(&mut skyhost::config::ClusterNodeConfig),
) -> anyhow::Result<TestNode> {
    cluster_node_of(name, secret, 4_096, edit).await
}

/// [`cluster_node`] with room for `max_services`: a test that runs many
/// nodes in this process keeps their instance pools (memory maps) small.
pub async fn cluster_node_of(
    name: &str,
    secret: &str,
    max_services: u32,
    edit: impl FnOnce(&mut skyhost::config::ClusterNodeConfig),
) -> anyhow::Result<TestNode> {
    let mut cluster = skyhost::config::ClusterNodeConfig::new(name, secret);
    cluster.listen = Some("127.0.0.1:0".into());
    cluster.heartbeat_ms = 200;
    cluster.dead_after_ms = 1_000;
    edit(&mut cluster);
    let mut config = test_config();
    config.cluster = Some(cluster);
    config.limits.max_services = max_services;
    let node = within(Node::launch(&config))
        .await?
        .with_context(|| format!("launch cluster node {name}"))?;
    let client = node.client();
    Ok(TestNode { node, client })
}

/// A real `skyhost` process, its stderr read line by line; killed when dropped.
pub struct Proc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub seen: Vec<String>,
}

impl Proc {
    /// Runs `skyhost <args...>` with stderr piped and logs without colour.
    pub fn start<I, S>(args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skyhost"));
        cmd.args(args);
        Proc::spawn(cmd)
    }

    /// Runs `cmd` (a `skyhost` command with its own directory or
    /// environment) as [`Proc::start`] does.
    pub fn spawn(mut cmd: std::process::Command) -> Proc {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start skyhost");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to [`DEADLINE`]) for a stderr line containing `needle`
    /// and returns it; fails showing every line seen.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_within(needle, DEADLINE)
    }

    /// [`Proc::wait_for`] with a deadline of its own, for a step known to
    /// take long (compiling a JavaScript or Python module the first time).
    pub fn wait_for_within(&mut self, needle: &str, within: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Reads stderr for `window` and fails if a line containing `needle`
    /// arrives: for what must not happen (a window, since an absence has no
    /// event to wait on).
    pub fn assert_quiet(&mut self, needle: &str, window: Duration) {
        let end = std::time::Instant::now() + window;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let bad = line.contains(needle);
                    self.seen.push(line);
                    assert!(
                        !bad,
                        "unexpected {needle:?}; saw:\n{}",
                        self.seen.join("\n")
                    );
                }
                Err(_) => return,
            }
        }
    }

    /// Sends a signal (`INT`, `KILL`, ...) to the process.
    pub fn signal(&self, name: &str) {
        signal_pid(self.id(), name);
    }

    /// Waits (up to [`DEADLINE`]) for the process to exit, reading the rest
    /// of its stderr.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for skyhost") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    self.seen.push(line);
                }
                return status;
            }
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "skyhost did not exit; saw:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads the stderr lines that have arrived, without waiting.
    pub fn read_available(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// All stderr read so far, one string.
    pub fn log(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `key=value` field `key` of a log line.
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    let rest = &line[start..];
    Some(rest.split_whitespace().next().unwrap_or("").to_string())
}

/// Waits (up to [`DEADLINE`]) until every node of a harbor has a live link
/// to every other: a join returns once the master took it, and the others
/// link to the new node a moment later.
pub async fn wait_for_mesh(nodes: &[&TestNode]) -> anyhow::Result<()> {
    let ids: Vec<u8> = nodes.iter().map(|t| t.node.harbor_id().0).collect();
    let start = std::time::Instant::now();
    loop {
        let meshed = nodes.iter().all(|t| {
            let me = t.node.harbor_id().0;
            let mut others: Vec<u8> = ids.iter().copied().filter(|&i| i != me).collect();
            others.sort_unstable();
            let connected = t.node.connected();
            others.iter().all(|o| connected.contains(o))
        });
        if meshed {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "harbor {ids:?}: no full mesh within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A command-line tool a test needs, from `PATH`, or else from its Debian
/// package, unpacked once under the target directory.
pub fn debian_tool(tool: &str, package: &str) -> anyhow::Result<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let tools = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tools");
    Ok(skyhost_cli::tools::debian_tool(tool, package, &tools)?)
}

/// Starts a real etcd for one test (Debian's `etcd-server`, fetched when
/// missing), on ports the OS picked; it stops when dropped.
pub fn etcd() -> anyhow::Result<skyhost_cli::tools::Etcd> {
    Ok(skyhost_cli::tools::Etcd::start(debian_tool(
        "etcd",
        "etcd-server",
    )?)?)
}

/// Waits (up to [`DEADLINE`]) until `ready` holds, checking every 10 ms.
pub async fn eventually(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !ready() {
        anyhow::ensure!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Sends a signal (`INT`, `KILL`, ...) to process `pid` (also one a test
/// started through another program).
pub fn signal_pid(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}
