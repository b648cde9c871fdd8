//! The language-neutral conformance suite (docs/languages.md): the same
//! behaviours, checked the same way, against each language's `conform`
//! service.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use skyhost::{Address, ErrorCause};

use crate::support::*;

/// A request: the opcode and its arguments.
fn op(code: u8, args: &[u8]) -> Vec<u8> {
    let mut payload = vec![code];
    payload.extend_from_slice(args);
    payload
}

/// An address argument followed by `rest`.
fn at(address: Address, rest: &[u8]) -> Vec<u8> {
    let mut args = address.0.to_le_bytes().to_vec();
    args.extend_from_slice(rest);
    args
}

/// Runs the whole suite against the service module `module`.
async fn conformance(module: &str) -> anyhow::Result<()> {
    conformance_on(TestNode::start()?, module).await
}

/// Runs the whole suite against `module` on a node whose services
/// hibernate after 2 ms idle, so the service sleeps and wakes between the
/// suite's steps (it keeps a name, a monitor and an exit notice across
/// them); checks it did.
async fn conformance_hibernating(module: &str) -> anyhow::Result<()> {
    let mut config = test_config();
    config.limits.hibernate_after_ms = 2;
    suite(TestNode::with_config(config)?, module, true).await
}

/// Runs the whole suite against `module` on `node`, and stops the node.
async fn conformance_on(node: TestNode, module: &str) -> anyhow::Result<()> {
    suite(node, module, false).await
}

/// The suite against `module` on `node` (`hibernating`: checks the service
/// hibernated along the way), then stops the node.
async fn suite(node: TestNode, module: &str, hibernating: bool) -> anyhow::Result<()> {
    let service = node.spawn_compiling(module).await?;
    let ask = |payload: Vec<u8>| node.client.call_timeout(service, payload, DEADLINE);

    // Echo: empty, one byte, 1 MiB, byte for byte.
    for size in [0usize, 1, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let back = ask(op(b'e', &data)).await.context("echo")?;
        ensure!(
            back == data,
            "{module}: echo of {size} bytes came back different"
        );
    }

    // Send: a testkit counts the text message.
    let kit = node.spawn("testkit").await?;
    ensure!(ask(op(b's', &at(kit, b"hi"))).await?.is_empty());
    let start = Instant::now();
    while node.command(kit, &Command::Count).await? != Reply::Count(1) {
        ensure!(
            start.elapsed() < DEADLINE,
            "{module}: the send never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A call that waits 300 ms at the callee; meanwhile the service answers an echo.
    let slow = postcard::to_allocvec(&Command::SleepThenEcho {
        ms: 300,
        payload: b"late".to_vec(),
    })?;
    let called = Instant::now();
    let pending = node.client.start_call(service, op(b'c', &at(kit, &slow)))?;
    let between = ask(op(b'e', b"between")).await?;
    ensure!(between == b"between");
    ensure!(
        called.elapsed() < Duration::from_millis(300),
        "{module}: the echo waited for the call ({:?})",
        called.elapsed()
    );
    let answer = within(pending).await??;
    let answer: Reply = postcard::from_bytes(&answer)?;
    ensure!(answer == Reply::Bytes(b"late".to_vec()), "{answer:?}");

    // A call to an idle service on the node runs inside the caller's call
    // (the direct hand-off) in every SDK (a 0.1.0 module's calls go by
    // mailbox). The kit offers its instance once its task waits for mail
    // again, so a first call may still queue.
    if !module.ends_with("_0_1_0") && !hibernating {
        let echo = postcard::to_allocvec(&Command::Echo(b"now".to_vec()))?;
        let before = node.node.direct_calls();
        let start = Instant::now();
        while node.node.direct_calls() == before {
            ensure!(
                start.elapsed() < DEADLINE,
                "{module}: no call was handed off"
            );
            let answer: Reply = postcard::from_bytes(&ask(op(b'c', &at(kit, &echo))).await?)?;
            ensure!(
                answer == Reply::Bytes(b"now".to_vec()),
                "{module}: {answer:?}"
            );
        }
    }

    // Register and query.
    let name = format!(".conform-{module}");
    ensure!(ask(op(b'r', name.as_bytes())).await?.is_empty());
    ensure!(node.node.query(&name) == Some(service));
    ensure!(ask(op(b'q', name.as_bytes())).await? == service.0.to_le_bytes());
    ensure!(ask(op(b'q', b".nobody")).await?.is_empty());

    // A timer.
    let start = Instant::now();
    ensure!(ask(op(b't', &50u32.to_le_bytes())).await?.is_empty());
    ensure!(start.elapsed() >= Duration::from_millis(50));

    // Spawn another module; it answers.
    let spawned = ask(op(b'p', b"echo")).await?;
    let spawned = Address(u32::from_le_bytes(
        spawned.as_slice().try_into().context("an address")?,
    ));
    ensure!(node.client.call(spawned, b"ping".to_vec()).await? == b"ping");
    let failed = ask(op(b'p', b"no-such-module"))
        .await
        .expect_err("no module");
    ensure!(failed.to_string().contains("cause=7"), "{failed}");

    // The unknown-address error reaches the guest by its WIT name.
    let nobody = Address(0x00ff_ff00);
    ensure!(ask(op(b'u', &at(nobody, b""))).await? == b"unknown-address");

    // A call to a service that traps ends with the trapped cause.
    let victim = node.spawn(module).await?;
    let failed = ask(op(b'c', &at(victim, b"x"))).await.expect_err("trapped");
    ensure!(failed.to_string().contains("cause=3"), "{module}: {failed}");
    ensure!(node.node.service_info(victim).is_none());

    // An exit notice for a monitored service.
    let short = node.spawn("testkit").await?;
    ensure!(ask(op(b'm', &at(short, b""))).await?.is_empty());
    node.command(short, &Command::Exit { answer: true }).await?;
    let start = Instant::now();
    while ask(op(b'n', b"")).await? != short.0.to_le_bytes() {
        ensure!(start.elapsed() < DEADLINE, "{module}: no exit notice");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    if hibernating {
        let info = node.node.service_info(service).context("it lives")?;
        ensure!(
            info.hibernations > 0,
            "{module}: never hibernated: {info:?}"
        );
    }

    // Its own trap: its caller gets the trapped error, the node goes on.
    let err = ask(op(b'x', b"")).await.expect_err("a trap");
    ensure!(err.cause() == Some(ErrorCause::Trapped), "{module}: {err}");
    ensure!(node.client.call(spawned, b"after".to_vec()).await? == b"after");
    node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_service_conforms() -> anyhow::Result<()> {
    conformance("conform").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_service_conforms() -> anyhow::Result<()> {
    conformance("conform_c").await
}

/// Components built against `skyhost:service@0.1.0` (world `service`,
/// `dispatch(list<message>)`), checked in as they were built before 0.1.1.
fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A node whose services come from the bundled modules and the fixtures.
fn node_with_fixtures() -> anyhow::Result<TestNode> {
    let mut config = test_config();
    config.module_paths.push(fixtures());
    TestNode::with_config(config)
}

/// A module built against 0.1.0 still runs, through the whole suite, beside
/// the bundled services, which speak the batch ABI of 0.1.1 (the suite has
/// it call and spawn them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_built_against_0_1_0_conforms() -> anyhow::Result<()> {
    conformance_on(node_with_fixtures()?, "conform_c_0_1_0").await
}

/// A 0.1.0 module and a 0.1.1 batch module call each other, both ways, with
/// payloads from empty to 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_0_module_and_a_batch_module_call_each_other() -> anyhow::Result<()> {
    let node = node_with_fixtures()?;
    let old = node.spawn_compiling("conform_c_0_1_0").await?;
    let new = node.spawn("conform").await?;
    let kit = node.spawn("testkit").await?;
    for size in [0usize, 5, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        // The batch module calls the old one (its `e` echoes), which answers.
        let back = node
            .client
            .call_timeout(new, op(b'c', &at(old, &op(b'e', &data))), DEADLINE)
            .await
            .context("batch -> 0.1.0")?;
        ensure!(
            back == data,
            "batch -> 0.1.0: {size} bytes came back different"
        );
        // The old module calls a batch one (testkit), which answers.
        let echo = postcard::to_allocvec(&Command::Echo(data.clone()))?;
        let back = node
            .client
            .call_timeout(old, op(b'c', &at(kit, &echo)), DEADLINE)
            .await
            .context("0.1.0 -> batch")?;
        ensure!(
            postcard::from_bytes::<Reply>(&back)? == Reply::Bytes(data),
            "0.1.0 -> batch: {size} bytes came back different"
        );
    }
    node.stop().await;
    Ok(())
}

/// A language's first service (`hello_<lang>`: the README's) and echo answer.
async fn first_service_and_echo(lang: &str) -> anyhow::Result<()> {
    let node = TestNode::start()?;
    let hello = node.spawn_compiling(&format!("hello_{lang}")).await?;
    ensure!(node.node.query(&format!(".hello_{lang}")) == Some(hello));
    let reply = within(node.client.call(hello, b"skyhost".to_vec())).await??;
    ensure!(
        reply == b"hello, skyhost",
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let echo = node.spawn_compiling(&format!("echo_{lang}")).await?;
    ensure!(within(node.client.call(echo, vec![7; 1000])).await?? == vec![7; 1000]);
    node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_first_service_and_echo_answer() -> anyhow::Result<()> {
    first_service_and_echo("c").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_service_conforms() -> anyhow::Result<()> {
    conformance("conform_go").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_first_service_and_echo_answer() -> anyhow::Result<()> {
    first_service_and_echo("go").await
}

/// A Go service's state crosses an upgrade (`OnSave`, `OnLoad`): the count
/// counter_go kept is counter_go_v2's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_service_keeps_its_state_across_an_upgrade() -> anyhow::Result<()> {
    let node = TestNode::start()?;
    let counter = node.spawn_compiling("counter_go").await?;
    for _ in 0..5 {
        node.client.send(counter, 0, 0, Vec::new())?;
    }
    // A request queued behind the texts sees all of them.
    let v1 = within(node.client.call(counter, Vec::new()))
        .await
        .context("v1's answer")??;
    ensure!(v1 == b"v1:5", "{}", String::from_utf8_lossy(&v1));
    // Compiled ahead (seconds for a Go module in a debug build), so the
    // upgrade's deadline measures the swap alone.
    node.spawn_compiling("counter_go_v2").await?;
    let v2 = crate::support::guest_dir().join("counter_go_v2.wasm");
    let reports = within(node.node.upgrade(&counter.to_string(), &v2, DEADLINE))
        .await
        .context("the upgrade")??;
    let upgraded = reports
        .first()
        .and_then(|r| r.result.clone().ok())
        .context("the upgrade")?;
    ensure!(upgraded.state_bytes == Some(8), "{upgraded:?}");
    node.client.send(counter, 0, 0, Vec::new())?;
    let after = within(node.client.call(counter, Vec::new()))
        .await
        .context("v2's answer")??;
    ensure!(after == b"v2:6", "{}", String::from_utf8_lossy(&after));
    node.stop().await;
    Ok(())
}

/// The Go SDK's cluster, group and multicast calls, on a cluster node
/// (features_go calls itself through each), and its timed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_service_calls_through_the_cluster_a_group_and_a_channel() -> anyhow::Result<()> {
    let node = crate::support::cluster_node("gonode", "go features", |_| {}).await?;
    let at = node.node.cluster_listening()[0];
    node.node
        .cluster_reload(&format!("gonode = \"{at}\"\n"))
        .map_err(anyhow::Error::msg)?;
    let features = node.spawn_compiling("features_go").await?;
    let ask = |op: u8, payload: &[u8]| {
        let mut request = vec![op];
        request.extend_from_slice(payload);
        node.client.call_timeout(features, request, DEADLINE)
    };
    ensure!(ask(b'n', b"").await? == b"gonode/0");
    ensure!(ask(b'c', b"through the cluster").await? == b"through the cluster");
    ensure!(ask(b'g', b"through a group").await? == b"through a group");
    ensure!(ask(b'm', b"on a channel").await? == b"on a channel");

    // A timed call (`CallTimeout`, 50 ms) gets its answer in time, and a
    // callee that answers after 300 ms leaves the caller a timeout.
    let kit = node.spawn("testkit").await?;
    let within = |command: &Command| -> anyhow::Result<Vec<u8>> {
        let mut payload = kit.0.to_le_bytes().to_vec();
        payload.extend(postcard::to_allocvec(command)?);
        Ok(payload)
    };
    let echo = ask(b't', &within(&Command::Echo(b"in time".to_vec()))?).await?;
    ensure!(postcard::from_bytes::<Reply>(&echo)? == Reply::Bytes(b"in time".to_vec()));
    let slow = Command::SleepThenEcho {
        ms: 300,
        payload: b"late".to_vec(),
    };
    let timed_out = ask(b't', &within(&slow)?)
        .await
        .expect_err("a 300 ms answer to a 50 ms call");
    ensure!(timed_out.to_string().contains("cause 5"), "{timed_out}");
    node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zig_service_conforms() -> anyhow::Result<()> {
    conformance("conform_zig").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zig_first_service_and_echo_answer() -> anyhow::Result<()> {
    first_service_and_echo("zig").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_first_service_and_echo_answer() -> anyhow::Result<()> {
    first_service_and_echo("js").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_service_conforms() -> anyhow::Result<()> {
    conformance("conform_js").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_service_conforms() -> anyhow::Result<()> {
    conformance("conform_py").await
}

/// Each language's conformance service keeps every promise of the suite
/// while it hibernates between the steps: Rust and C as images of their
/// memory (C and Zig with the WASI preview-1 adapter's globals), JavaScript
/// and Python as images of their memory and globals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_conforms_while_hibernating() -> anyhow::Result<()> {
    for module in [
        "conform",
        "conform_c",
        "conform_zig",
        "conform_go",
        "conform_js",
        "conform_py",
    ] {
        conformance_hibernating(module).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_first_service_and_echo_answer() -> anyhow::Result<()> {
    first_service_and_echo("py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawning_100_python_services_compiles_the_module_once() -> anyhow::Result<()> {
    let node = TestNode::start()?;
    let before = node.node.modules_compiled();
    let first = node.spawn_compiling("echo_py").await?;
    let mut services = vec![first];
    for _ in 1..100 {
        services.push(node.spawn("echo_py").await?);
    }
    ensure!(node.node.modules_compiled() == before + 1);
    for (i, &s) in services.iter().enumerate() {
        let payload = (i as u32).to_le_bytes().to_vec();
        ensure!(within(node.client.call(s, payload.clone())).await?? == payload);
    }
    node.stop().await;
    Ok(())
}

/// `adder_<lang>` and the Rust `adder` ask each other to add, with JSON.
async fn calls_rust_with_json(lang: &str, name: &str) -> anyhow::Result<()> {
    let node = TestNode::start()?;
    // Both may be compiled here, beside the suite's large JavaScript and
    // Python compiles (on a fresh clone the Rust adder once took over 20 s).
    let rust = node.spawn_compiling("adder").await?;
    let other = node.spawn_compiling(&format!("adder_{lang}")).await?;
    let ask = |to: Address, request: serde_json::Value| {
        let client = &node.client;
        async move {
            let bytes = serde_json::to_vec(&request)?;
            let answer = within(client.call(to, bytes)).await??;
            anyhow::Ok(serde_json::from_slice::<serde_json::Value>(&answer)?)
        }
    };
    // It asks Rust.
    let answer = ask(other, serde_json::json!({"a": 2, "b": 3, "via": rust.0})).await?;
    ensure!(
        answer == serde_json::json!({"sum": 5, "by": "rust", "through": name}),
        "{answer}"
    );
    // Rust asks it.
    let answer = ask(rust, serde_json::json!({"a": -7, "b": 10, "via": other.0})).await?;
    ensure!(
        answer == serde_json::json!({"sum": 3, "by": name, "through": "rust"}),
        "{answer}"
    );
    node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_and_a_rust_service_call_each_other_with_json() -> anyhow::Result<()> {
    calls_rust_with_json("py", "python").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_and_a_rust_service_call_each_other_with_json() -> anyhow::Result<()> {
    calls_rust_with_json("go", "go").await
}
