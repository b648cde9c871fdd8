//! `/metrics`: Prometheus' text format that `promtool check metrics`
//! accepts, with counters that match what the test made the node do.

use std::io::{Read, Write};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use skyhost::config::MetricsConfig;

use crate::support::*;

/// `GET /metrics` over a plain socket; the body.
fn scrape(address: std::net::SocketAddr) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: skyhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    Ok(body.to_string())
}

/// The value of the sample `series` (name and labels as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_what_happened() -> anyhow::Result<()> {
    let mut config = test_config();
    config.metrics = Some(MetricsConfig::default());
    init_logs();
    let node = within(skyhost::Node::launch(&config)).await??;
    within(skyhost::control::serve(&node, &config)).await??;
    let address = node.metrics_address().context("metrics address")?;
    let client = node.client();
    let a = within(node.spawn("testkit", &[])).await??;
    // Born hibernated on the image of a's memory (template spawn), woken by
    // its first call below.
    let b = within(node.spawn("testkit", &[])).await??;

    // a: 1 request, then 5 responses from b; b: 5 requests.
    let calls = Command::CallLoop {
        target: b.0,
        n: 5,
        payload: vec![1, 2, 3],
    };
    match command_via(&client, a, &calls).await? {
        Reply::Unit => {}
        r => bail!("CallLoop answered {r:?}"),
    }
    // a: 1 request, then an error (b trapped); b: 1 request, then it stops.
    let trap = Command::Call {
        target: b.0,
        command: Box::new(Command::Trap(TrapKind::Unreachable)),
    };
    match command_via(&client, a, &trap).await? {
        Reply::Failed(e) => ensure!(e.contains("trap"), "{e}"),
        r => bail!("a call to a trapping service answered {r:?}"),
    }

    // Two echoes: the second is born hibernated on the first's template.
    within(node.spawn("echo", &[])).await??;
    within(node.spawn("echo", &[])).await??;

    let expected = [
        ("skyhost_services", 3.0),
        ("skyhost_hibernated_services", 1.0),
        ("skyhost_template_spawns_total", 2.0),
        (r#"skyhost_service_stops_total{reason="trap"}"#, 1.0),
        (
            r#"skyhost_messages_total{tenant="system",kind="request"}"#,
            8.0,
        ),
        (
            r#"skyhost_messages_total{tenant="system",kind="response"}"#,
            5.0,
        ),
        (
            r#"skyhost_messages_total{tenant="system",kind="error"}"#,
            1.0,
        ),
        (
            r#"skyhost_sessions_ended_total{tenant="system",cause="reply"}"#,
            5.0,
        ),
        (
            r#"skyhost_sessions_ended_total{tenant="system",cause="trapped"}"#,
            1.0,
        ),
        (
            r#"skyhost_sessions_ended_total{tenant="system",cause="timeout"}"#,
            0.0,
        ),
        (r#"skyhost_tenant_services{tenant="system"}"#, 3.0),
    ];
    // The services flush their counts when their batch ends, just after
    // their answers went out: wait for the scrape to show them.
    let start = Instant::now();
    let text = loop {
        let text = tokio::task::spawn_blocking(move || scrape(address)).await??;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, value)| sample(&text, series) != Some(*value))
            .map(|(series, value)| {
                format!("{series} = {:?}, expected {value}", sample(&text, series))
            })
            .collect();
        if wrong.is_empty() {
            break text;
        }
        ensure!(start.elapsed() < DEADLINE, "{wrong:#?}\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    ensure!(text.contains("# HELP skyhost_messages_total"), "{text}");
    // The echo born hibernated keeps its template's state.
    ensure!(
        sample(&text, "skyhost_hibernated_bytes").is_some_and(|b| b > 0.0),
        "{text}"
    );

    tokio::task::spawn_blocking(move || promtool_check(&text)).await??;
    drop(client);
    within(node.shutdown()).await?;
    Ok(())
}

/// Runs `promtool check metrics` (from Debian's `prometheus` package) on `text`.
pub fn promtool_check(text: &str) -> anyhow::Result<()> {
    let promtool = debian_tool("promtool", "prometheus")?;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let checked = child.wait_with_output()?;
    ensure!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}
