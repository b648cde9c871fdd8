//! The `skyhost` command: run a node from its node file.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use skyhost::{Node, NodeConfig};

mod bench;
mod project;
mod wit;

/// mimalloc instead of glibc's allocator: messages, frames and guest calls
/// allocate and free small buffers on every thread (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// skyhost: Skynet's service model on WebAssembly components.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: start its bootstrap service and serve until SIGINT or
    /// SIGTERM. Without a node file: `./skyhost.toml` (a project's, from
    /// `skyhost new`), else the demo.
    Run {
        /// The node file (TOML).
        node_file: Option<PathBuf>,
        /// Once the node runs (listeners bound, bootstrap started), write
        /// its pid and addresses here as JSON (what `fleet up` waits for).
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Build the project beside the node file first, then rebuild it on
        /// each change to its sources and hot-swap it into the node.
        #[arg(long)]
        watch: bool,
    },
    /// Run the demo node (the demo service this binary carries), with a
    /// console on 127.0.0.1 (secret `demo`).
    Demo,
    /// Make a service project in ./NAME: a first service that registers
    /// `.NAME` and answers `hello, <payload>`, its manifest and a node file.
    New {
        /// The project's name, which is its service's module name.
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum, default_value = "rust")]
        lang: project::Lang,
    },
    /// Build the service project in DIR into components in DIR/build,
    /// installing the language's pinned toolchain when missing.
    Build {
        /// The project (default: here).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Build the service project in DIR, run the node of its skyhost.toml
    /// and the calls of its tests/*.toml, each checked against the answer
    /// it must give; exits non-zero when one fails.
    Test {
        /// The project (default: here).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Make TLS certificates for a fleet: a CA, then one per node.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Start, stop or show a fleet: every node of the node types in a
    /// fleet file, each its own process on this machine.
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
    },
    /// Run the benchmarks (all, or the ids given), 3 runs each in a fresh node.
    Bench {
        /// Workload ids, e.g. local-call-rtt; none runs them all.
        ids: Vec<String>,
        /// Print one JSON object per figure.
        #[arg(long)]
        json: bool,
        /// Scheduler threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// What runs the services: `workers` (default: the node's own
        /// threads) or `tokio`, as the node file's `scheduler`.
        #[arg(long, default_value = "workers")]
        scheduler: String,
        /// Live echoes the `max-services` rows spawn and call (default
        /// 100,000).
        #[arg(long)]
        services: Option<u32>,
        /// Whether calls to idle services run inside their caller's call
        /// (`on`, the default) or all go through mailboxes (`off`), as the
        /// node file's `direct_calls`.
        #[arg(long, default_value = "on")]
        direct_calls: String,
        /// Run the one workload named once here and print its bare figure
        /// (how a memory workload gets a fresh process for each run).
        #[arg(long, hide = true)]
        once: bool,
    },
    /// Write the WIT package this skyhost runs components against
    /// (`service.wit`) into DIR, for any bindings generator.
    Wit {
        /// Where to write it (made if missing).
        #[arg(default_value = "wit")]
        dir: PathBuf,
    },
    /// Run one command on a running node's control address and print its
    /// answer; exits non-zero when the node answers an error.
    Ctl {
        #[command(flatten)]
        to: ControlArgs,
        /// The command and its arguments (`help` lists them).
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// An interactive console on a running node's control address, with
    /// line editing and history (`help` lists the commands).
    Console {
        #[command(flatten)]
        to: ControlArgs,
    },
    /// Apply or remove a tenant on a running node.
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
}

/// Which certificate to make.
#[derive(Subcommand)]
enum CertAction {
    /// A CA for a fleet: DIR/ca.pem and DIR/ca.key (kept secret).
    Ca {
        /// Where to put it.
        dir: PathBuf,
    },
    /// A certificate for each node named, signed by the CA: NAME.pem and
    /// NAME.key, naming the node (its `[cluster] name`; `harbor-N` for
    /// harbor id N, `harbor-master` for the master; an operator's name for
    /// the control address).
    Node {
        /// The node names; `a,b` makes one certificate naming both (files
        /// named after the first), e.g. `harbor-1,harbor-master`.
        #[arg(required = true)]
        names: Vec<String>,
        /// The CA's directory (from `skyhost cert ca`).
        #[arg(long)]
        ca: PathBuf,
        /// Where to write them (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// What to do with a fleet.
#[derive(Subcommand)]
enum FleetAction {
    /// Start every node, wait until each runs, print the table.
    Up {
        /// The fleet file (TOML).
        file: PathBuf,
    },
    /// Stop every node the last `up` started.
    Down {
        /// The fleet file (TOML).
        file: PathBuf,
    },
    /// Show the nodes the last `up` started and whether they run.
    Status {
        /// The fleet file (TOML).
        file: PathBuf,
    },
}

/// Where a node's control address is and how to authenticate.
#[derive(clap::Args)]
struct ControlArgs {
    /// The node's control address (`host:port`, from its `[control]`
    /// table); default: the node `skyhost run` runs from this directory
    /// (`.skyhost/node.json`).
    #[arg(long, short = 'c', env = "SKYHOST_CONTROL")]
    control: Option<String>,
    /// A file holding the control secret (else `SKYHOST_SECRET`, else the
    /// `[control]` secret of `./skyhost.toml`).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Reach a control address under TLS with this certificate (from
    /// `skyhost cert node OPERATOR`); with `--tls-key` and `--tls-ca`.
    #[arg(long, env = "SKYHOST_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key.
    #[arg(long, env = "SKYHOST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The fleet's CA: the node's certificate must chain to it.
    #[arg(long, env = "SKYHOST_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// The name the node's certificate must hold (default: any the CA
    /// signed).
    #[arg(long, requires = "tls_cert")]
    tls_name: Option<String>,
}

impl ControlArgs {
    /// The operator's TLS, when asked for.
    fn tls(&self) -> anyhow::Result<Option<skyhost::transport::tls::Tls>> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca)
        else {
            return Ok(None);
        };
        let files = skyhost::config::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        };
        Ok(Some(match self.tls_name {
            Some(_) => skyhost::transport::tls::Tls::load(&files)?,
            None => skyhost::transport::tls::Tls::load_operator(&files)?,
        }))
    }

    /// Connects to the control address and authenticates.
    async fn connect(&self) -> anyhow::Result<skyhost::control::ControlClient> {
        let (address, secret) = (control_address(self)?, control_secret(self)?);
        let tls = self.tls()?;
        let tls = tls.as_ref().map(|t| (t, self.tls_name.as_deref()));
        skyhost::control::ControlClient::connect_secured(&address, &secret, tls)
            .await
            .with_context(|| format!("control address {address}"))
    }
}

#[derive(Subcommand)]
enum TenantAction {
    /// Apply a tenant file: the tenant is added and its bootstrap services start.
    Apply {
        /// The tenant file (TOML: the keys of a `[[tenant]]` table).
        file: PathBuf,
        #[command(flatten)]
        to: ControlArgs,
    },
    /// Remove a tenant: its services stop and its pending sessions end with an error.
    Remove {
        /// The tenant's name.
        name: String,
        #[command(flatten)]
        to: ControlArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            node_file,
            ready_file,
            watch,
        } => run_here(node_file, ready_file.as_deref(), watch),
        Command::Demo => demo(),
        Command::New { name, lang } => project::new(Path::new("."), &name, lang).map(|dir| {
            println!(
                "made {} ({lang:?}); next, in it: `skyhost build`, `skyhost run`, \
                 then `skyhost ctl call .{name} world`",
                dir.display()
            );
        }),
        Command::Test { dir } => test_project(&dir),
        Command::Build { dir } => project::build(&dir).map(|built| {
            for file in built {
                println!("built {}", file.display());
            }
        }),
        Command::Fleet { action } => fleet(action),
        Command::Cert { action } => cert(action),
        Command::Bench {
            ids,
            json,
            threads,
            scheduler,
            once,
            services,
            direct_calls,
        } => bench_main(
            &ids,
            json,
            once,
            threads,
            &scheduler,
            services,
            &direct_calls,
        ),
        Command::Wit { dir } => wit::write(&dir).map(|file| {
            println!("wrote {} ({})", file.display(), wit::package());
        }),
        Command::Ctl { to, command } => payload_from_file(command).and_then(|c| ctl(&to, &c)),
        Command::Console { to } => console(&to),
        Command::Tenant {
            action: TenantAction::Apply { file, to },
        } => std::path::absolute(&file)
            .with_context(|| format!("{}", file.display()))
            .and_then(|file| ctl(&to, &format!("tenant apply {}", file.display()))),
        Command::Tenant {
            action: TenantAction::Remove { name, to },
        } => ctl(&to, &format!("tenant remove {name}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skyhost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The control secret from `--secret-file` or `SKYHOST_SECRET`, else the
/// one `./skyhost.toml` gives its node.
fn control_secret(to: &ControlArgs) -> anyhow::Result<String> {
    if let Some(f) = &to.secret_file {
        return Ok(std::fs::read_to_string(f)
            .with_context(|| format!("secret file {}", f.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string());
    }
    if let Ok(secret) = std::env::var("SKYHOST_SECRET") {
        return Ok(secret);
    }
    let here = Path::new(PROJECT_NODE_FILE);
    if here.is_file() {
        let config = NodeConfig::load(here)?;
        if let Some(secret) = config.control.and_then(|c| c.secret) {
            return Ok(secret);
        }
    }
    if to.tls_cert.is_some() {
        // The certificate may be all the node asks for.
        return Ok(String::new());
    }
    anyhow::bail!("give --secret-file or set SKYHOST_SECRET")
}

/// The control address asked for, else the one of the node `skyhost run`
/// runs from this directory.
fn control_address(to: &ControlArgs) -> anyhow::Result<String> {
    if let Some(address) = &to.control {
        return Ok(address.clone());
    }
    let ready = Path::new(RUNNING_NODE_FILE);
    let text = std::fs::read(ready).with_context(|| {
        format!(
            "give -c <address> (no node runs here: {} is missing)",
            ready.display()
        )
    })?;
    let ready: skyhost_cli::fleet::Ready =
        serde_json::from_slice(&text).with_context(|| format!("{}", ready.display()))?;
    ready
        .control
        .with_context(|| format!("the node of {RUNNING_NODE_FILE} has no control address"))
}

/// A project's node file, which `skyhost run` runs when given none.
const PROJECT_NODE_FILE: &str = "skyhost.toml";
/// Where `skyhost run` of a project's node file writes its pid and
/// addresses (beside the node file), for `skyhost ctl` run there.
const RUNNING_NODE_FILE: &str = ".skyhost/node.json";

/// Reads commands with line editing and history (`~/.skyhost_history`),
/// runs each on the node and prints its answer, until end of input or `quit`.
fn console(to: &ControlArgs) -> anyhow::Result<()> {
    use rustyline::error::ReadlineError;
    use skyhost::control::proto::Answer;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut client = runtime.block_on(to.connect())?;
    let address = control_address(to)?;
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".skyhost_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("connected to {address}; `help` lists the commands");
    loop {
        let line = match editor.readline(&format!("{address}> ")) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if matches!(line, "quit" | "exit") {
            break;
        }
        // Line by line as they come: `watch` streams until Ctrl-C.
        let answer = runtime.block_on(client.stream(line, |l| {
            println!("{l}");
            true
        }))?;
        if let Answer::Error(e) = answer {
            eprintln!("error: {e}");
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// Prints `line` and a newline on stdout; false when the reader has gone
/// (`| head`), which ends the output quietly, as it does for other
/// command-line tools.
fn print_line(line: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// Prints `text` and a newline on stdout. A reader that has gone (`| head`)
/// ends the output quietly, as it does for other command-line tools.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.is_empty() {
                Ok(())
            } else {
                out.write_all(b"\n")
            }
        })
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Sends `command` to a node's control address and prints the answer.
/// The command line for `ctl`: its words joined, and for `call` and `send`
/// a payload `@file` made `hex:` of the file's bytes (the protocol is
/// lines, so bytes go as hex).
fn payload_from_file(command: Vec<String>) -> anyhow::Result<String> {
    match command.as_slice() {
        [verb, target, file] if (verb == "call" || verb == "send") && file.starts_with('@') => {
            let path = &file[1..];
            let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            Ok(format!("{verb} {target} hex:{}", hex::encode(bytes)))
        }
        _ => Ok(command.join(" ")),
    }
}

fn ctl(to: &ControlArgs, command: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Each line printed as it comes (`watch` streams until Ctrl-C).
    let answer = runtime.block_on(async {
        let mut client = to.connect().await?;
        anyhow::Ok(client.stream(command, print_line).await?)
    })?;
    match answer {
        skyhost::control::proto::Answer::Ok(_) => Ok(()),
        skyhost::control::proto::Answer::Error(e) => anyhow::bail!("{e}"),
    }
}

fn cert(action: CertAction) -> anyhow::Result<()> {
    use skyhost_cli::cert;
    match action {
        CertAction::Ca { dir } => {
            let (cert, key) = cert::make_ca(&dir)?;
            println!("made {} and {}", cert.display(), key.display());
        }
        CertAction::Node { names, ca, out } => {
            let out = out.unwrap_or_else(|| ca.clone());
            for name in names {
                let (cert, key) = cert::make_node(&ca, &name, &out)?;
                println!("made {} and {}", cert.display(), key.display());
            }
        }
    }
    Ok(())
}

fn fleet(action: FleetAction) -> anyhow::Result<()> {
    use skyhost_cli::fleet;
    match action {
        FleetAction::Up { file } => {
            let exe = std::env::current_exe().context("the skyhost binary's path")?;
            let instances = fleet::up(&file, &exe, Duration::from_secs(60))?;
            print_out(fleet::table(&instances).trim_end())?;
        }
        FleetAction::Down { file } => {
            for name in fleet::down(&file, Duration::from_secs(10))? {
                println!("stopped {name}");
            }
        }
        FleetAction::Status { file } => {
            print_out(fleet::table(&fleet::load_state(&file)?).trim_end())?
        }
    }
    Ok(())
}

/// Writes the ready file `fleet up` waits for (whole, by rename).
fn write_ready(node: &Node, path: &Path) -> anyhow::Result<()> {
    let ready = skyhost_cli::fleet::Ready {
        pid: std::process::id(),
        cluster: node
            .cluster_listening()
            .iter()
            .map(ToString::to_string)
            .collect(),
        control: node.control_address().map(|a| a.to_string()),
        metrics: node.metrics_address().map(|a| a.to_string()),
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&ready)?)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("ready file {}", path.display()))
}

/// `skyhost run [NODE_FILE]`: the file given, else `./skyhost.toml`, else
/// the demo. A project's node file (`skyhost.toml`) gets
/// `.skyhost/node.json` beside it while its node runs.
fn run_here(
    node_file: Option<PathBuf>,
    ready_file: Option<&Path>,
    watch: bool,
) -> anyhow::Result<()> {
    let node_file = match node_file {
        Some(file) => file,
        None if Path::new(PROJECT_NODE_FILE).is_file() => PROJECT_NODE_FILE.into(),
        None if watch => {
            anyhow::bail!("--watch: no {PROJECT_NODE_FILE} here (`skyhost new` makes a project)")
        }
        None => return demo(),
    };
    let dir = match node_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let watched = if watch {
        for file in project::build(&dir)? {
            eprintln!("built {}", file.display());
        }
        Some(dir.clone())
    } else {
        None
    };
    let config = NodeConfig::load(&node_file)?;
    let running = (node_file.file_name() == Some(PROJECT_NODE_FILE.as_ref()))
        .then(|| dir.join(RUNNING_NODE_FILE));
    run(&config, ready_file, running.as_deref(), watched)
}

/// The demo node file (`examples/demo.toml`) as this binary carries it,
/// its modules taken from the ones it carries.
fn demo() -> anyhow::Result<()> {
    let text = include_str!("../../examples/demo.toml");
    let mut config = NodeConfig::parse(text, Path::new("examples/demo.toml"))?;
    let modules = project::home()?
        .join(env!("CARGO_PKG_VERSION"))
        .join("modules");
    let mut carried = 0;
    for (name, bytes) in skyhost::carried_modules() {
        project::sdk::write_if_changed(&modules.join(format!("{name}.wasm")), bytes)?;
        carried += 1;
    }
    anyhow::ensure!(
        carried > 0,
        "this build carries no modules (SKYHOST_SKIP_GUESTS)"
    );
    config.module_paths = vec![modules];
    run(&config, None, None, None)
}

/// Runs a node from `config` until SIGINT or SIGTERM; `ready_file` and
/// `running` get its pid and addresses once it runs (`running` is removed
/// when it stops); the project in `watched` is rebuilt and swapped in on
/// each change.
fn run(
    config: &NodeConfig,
    ready_file: Option<&Path>,
    running: Option<&Path>,
    watched: Option<PathBuf>,
) -> anyhow::Result<()> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log_level.clone());
    tracing_subscriber::fmt()
        .with_env_filter(skyhost::config::log_filter(&filter).context("log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().thread_name("skyhost-worker").build()?;
    runtime.block_on(async {
        let node = Node::launch(config).await?;
        if let Err(e) = skyhost::control::serve(&node, config).await {
            node.shutdown().await;
            return Err(e.into());
        }
        if let Err(e) = start_services(&node, config).await {
            node.shutdown().await;
            return Err(e);
        }
        if let Some(path) = ready_file {
            write_ready(&node, path)?;
        }
        if let Some(path) = running {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            }
            write_ready(&node, path)?;
        }
        tracing::info!(
            pid = std::process::id(),
            "node running; SIGINT or SIGTERM stops it"
        );
        match watched {
            Some(dir) => tokio::select! {
                signal = wait_for_signal() => signal?,
                () = project::watch::rebuild_on_change(&node, dir) => {}
            },
            None => wait_for_signal().await?,
        }
        tracing::info!("stopping");
        if let Some(path) = running {
            let _ = std::fs::remove_file(path);
        }
        node.shutdown().await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Starts what the node file asks a node to run: its bootstrap service,
/// then each tenant's.
async fn start_services(node: &Node, config: &NodeConfig) -> anyhow::Result<()> {
    if let Some(boot) = &config.bootstrap {
        let address = node
            .spawn(&boot.module, boot.args.as_bytes())
            .await
            .with_context(|| format!("bootstrap service `{}`", boot.module))?;
        tracing::info!(%address, module = %boot.module, "bootstrap service started");
    }
    for tenant in &config.tenants {
        let started = node.start_tenant(&tenant.name).await?;
        tracing::info!(tenant = %tenant.name, services = ?started, "tenant started");
    }
    Ok(())
}

/// `skyhost test [DIR]`: builds the project, runs its node in this process
/// and each of its cases (`project::cases`), printing each; fails when one
/// fails.
fn test_project(dir: &Path) -> anyhow::Result<()> {
    let cases = project::cases::load(dir)?;
    anyhow::ensure!(
        !cases.is_empty(),
        "{}: no test cases (tests/*.toml with [[call]] tables)",
        dir.display()
    );
    for file in project::build(dir)? {
        eprintln!("built {}", file.display());
    }
    let config = NodeConfig::load(&dir.join(PROJECT_NODE_FILE))?;
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(skyhost::config::log_filter(&filter).context("log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let failed = runtime.block_on(async {
        let node = Node::launch(&config).await?;
        let started = start_services(&node, &config).await;
        let mut failed = 0;
        if started.is_ok() {
            for case in &cases {
                match project::cases::run(&node, case).await {
                    Ok(()) => println!("test {} ... ok", case.name),
                    Err(why) => {
                        println!("test {} ... FAILED: {why}", case.name);
                        failed += 1;
                    }
                }
            }
        }
        node.shutdown().await;
        started.map(|()| failed)
    })?;
    println!("{} passed, {failed} failed", cases.len() - failed);
    anyhow::ensure!(failed == 0, "{failed} of {} cases failed", cases.len());
    Ok(())
}

fn bench_main(
    ids: &[String],
    json: bool,
    once: bool,
    threads: Option<usize>,
    scheduler: &str,
    services: Option<u32>,
    direct_calls: &str,
) -> anyhow::Result<()> {
    match direct_calls {
        "on" => bench::set_direct_calls(true),
        "off" => bench::set_direct_calls(false),
        other => anyhow::bail!("--direct-calls {other}: expected `on` or `off`"),
    }
    let scheduler = match scheduler {
        "tokio" => skyhost::config::Scheduler::Tokio,
        "workers" => skyhost::config::Scheduler::Workers,
        other => anyhow::bail!("--scheduler {other}: expected `tokio` or `workers`"),
    };
    bench::set_scheduler(scheduler, threads);
    bench::set_max_services(services);
    // Mailbox warnings are expected under load; RUST_LOG shows them.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    tracing_subscriber::fmt()
        .with_env_filter(skyhost::config::log_filter(&filter).context("log filter")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        runtime.worker_threads(threads);
    }
    runtime
        .enable_all()
        .build()?
        .block_on(bench::run(ids, json, once, threads))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
