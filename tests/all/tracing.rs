//! Trace ids: a traced call from node A to node B and back shows one trace
//! id in both nodes' logs.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail, ensure};
use skyhost_test_proto::ClusterTarget;

use crate::support::*;

/// Log lines written by this test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The trace ids in the trace lines of `log` that contain `needle`.
fn trace_ids(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| log_field(l, "trace"))
        .collect()
}

// One thread: node A's services run on the thread whose log is captured.
#[tokio::test(flavor = "current_thread")]
async fn a_traced_call_across_nodes_shows_one_trace_id_in_both_logs() -> anyhow::Result<()> {
    const SECRET: &str = "trace test secret";
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("skyhost::trace=info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logs = tracing::subscriber::set_default(subscriber);

    // Node B: a real process whose `kit` is known to the cluster.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("b.toml");
    std::fs::write(
        &file,
        format!(
            "module_paths = [{modules:?}]\ncache_dir = {cache:?}\nlog_level = \"info\"\n\n\
             [bootstrap]\nmodule = \"testkit\"\nargs = \"cluster=kit\"\n\n\
             [cluster]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\nsecret = {SECRET:?}\n",
            modules = guest_dir().display().to_string(),
            cache = cache_dir().display().to_string(),
        ),
    )?;
    let mut b = Proc::start([Path::new("run"), &file]);
    let b_address = log_field(&b.wait_for("cluster listening"), "address").context("b")?;
    b.wait_for("bootstrap service started");

    // Node A: this process; its caller service is traced.
    let mut config = test_config();
    config.cluster = Some(skyhost::config::ClusterNodeConfig::new("a", SECRET));
    // The log is captured on this thread: the services must run on it too.
    config.scheduler = skyhost::config::Scheduler::Tokio;
    let a = within(skyhost::Node::launch(&config)).await??;
    a.cluster_reload(&format!("b = {b_address:?}\n"))
        .map_err(anyhow::Error::msg)?;
    let client = a.client();
    let caller = within(a.spawn("testkit", &[])).await??;
    ensure!(a.trace(caller, true));
    let calls = Command::ClusterCallLoop {
        node: "b".into(),
        target: ClusterTarget::Name("kit".into()),
        n: 2,
        payload: b"traced".to_vec(),
        timed: false,
    };
    match command_via(&client, caller, &calls).await? {
        Reply::Unit => {}
        r => bail!("ClusterCallLoop answered {r:?}"),
    }

    let a_log = captured.text();
    // The request from the test got a fresh id at the traced caller.
    let started = trace_ids(&a_log, "direction=\"in\"");
    let id = started
        .first()
        .context("a trace line at the caller")?
        .clone();
    ensure!(id != "0000000000000000", "{a_log}");
    // Both answers from B came back to A with it, and so did the caller's
    // calls out.
    let out = trace_ids(&a_log, "direction=\"out\"");
    ensure!(out.iter().filter(|t| **t == id).count() >= 3, "{a_log}");
    let back = a_log
        .lines()
        .filter(|l| l.contains("direction=\"in\"") && l.contains(" kind=1 "))
        .filter(|l| log_field(l, "trace").as_deref() == Some(&id))
        .count();
    ensure!(back == 2, "two answers from b traced with {id}:\n{a_log}");

    // B logged both requests arriving on its cluster link, and its `kit`
    // taking them, with the same id.
    let b_in = |b: &mut Proc, needle: &str| {
        let start = std::time::Instant::now();
        loop {
            b.read_available();
            let n = trace_ids(&b.log(), needle)
                .iter()
                .filter(|t| **t == id)
                .count();
            if n >= 2 || start.elapsed() > DEADLINE {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    ensure!(b_in(&mut b, "trace cluster in") == 2, "{}", b.log());
    ensure!(b_in(&mut b, "direction=\"in\"") == 2, "{}", b.log());

    // A guest starts a trace itself: its answer goes out with the id.
    ensure!(a.trace(caller, false));
    let started = match command_via(&client, caller, &Command::StartTrace).await? {
        Reply::Count(id) => format!("{id:016x}"),
        r => bail!("StartTrace answered {r:?}"),
    };
    let a_log = captured.text();
    ensure!(
        trace_ids(&a_log, "trace started").contains(&started),
        "{started}:\n{a_log}"
    );
    ensure!(
        trace_ids(&a_log, "direction=\"out\"").contains(&started),
        "{started}:\n{a_log}"
    );

    drop(client);
    within(a.shutdown()).await?;
    b.signal("INT");
    ensure!(b.wait_exit().success());
    Ok(())
}
