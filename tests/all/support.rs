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
pub fn test_config() -> NodeConfig {
    NodeConfig {
        module_paths: vec![guest_dir()],
        cache_dir: Some(cache_dir()),
        limits: Limits {
            max_services: 4_096,
            ..Limits::default()
        },
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

/// Awaits `f`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: std::future::IntoFuture>(f: F) -> anyhow::Result<F::Output> {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(v) => Ok(v),
        Err(_) => bail!("no result within {DEADLINE:?}"),
    }
}
