//! The real `skyhost` binary: node files, bootstrap errors, signals.

use std::path::Path;
use std::process::Command;

use crate::support::{Proc, guest_dir};

fn skyhost() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyhost"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn write_node_file(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(&path, text).expect("write node file");
    path
}

/// Runs a node from `node_file`, which must fail to start; its stderr.
fn a_node_that_fails(node_file: &Path) -> String {
    let out = skyhost()
        .arg("run")
        .arg(node_file)
        .output()
        .expect("run skyhost");
    assert!(!out.status.success(), "the node must exit non-zero");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_node_file_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_node_file(dir.path(), "threads = 2\n\n[limits]\nmemory_mbs = 64\n");
    let stderr = a_node_that_fails(&path);
    assert!(
        stderr.contains(&format!("{}:4:", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("memory_mbs"), "{stderr}");
}

#[test]
fn an_unknown_bootstrap_module_fails_the_node_with_the_paths_searched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "module_paths = [{:?}]\n[bootstrap]\nmodule = \"nope\"\n",
        guest_dir().display().to_string()
    );
    let stderr = a_node_that_fails(&write_node_file(dir.path(), &text));
    assert!(
        stderr.contains("nope.wasm") && stderr.contains("not found"),
        "{stderr}"
    );
}

#[test]
fn a_core_module_is_refused_with_how_to_make_a_component() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The smallest valid core module: magic and version 1.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").expect("write module");
    let text = format!(
        "module_paths = [{:?}]\n[bootstrap]\nmodule = \"core\"\n",
        dir.path().display().to_string()
    );
    let stderr = a_node_that_fails(&write_node_file(dir.path(), &text));
    assert!(
        stderr.contains("core wasm module") && stderr.contains("wasm32-wasip2"),
        "{stderr}"
    );
}

/// The demo node (`examples/demo.toml`) once its own calls through its echo
/// services were answered, and its control address.
fn demo_node() -> (Proc, String) {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml");
    let mut node = Proc::start([Path::new("run"), &demo]);
    node.wait_for("bootstrap service started");
    node.wait_for("demo: done");
    let line = node.wait_for("control listening");
    let control = crate::support::log_field(&line, "address").expect("control address");
    (node, control)
}

#[test]
fn the_demo_node_runs_and_stops_cleanly_on_sigint() {
    // The README's console steps, on the demo node.
    let (mut node, control) = demo_node();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skyhost"))
        .args(["ctl", "-c", &control, "list"])
        .env("SKYHOST_SECRET", "demo")
        .output()
        .expect("run skyhost ctl");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains(" demo tenant=system"),
        "{listed}"
    );
    // A reader that went away (`| head`) ends the output quietly.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skyhost"))
        .args(["ctl", "-c", &control, "list"])
        .env("SKYHOST_SECRET", "demo")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run skyhost ctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{:?}: {stderr}",
        out.status
    );
    // The README's upgrade step: the demo swapped for its rebuilt module,
    // its counts carried over.
    let demo_wasm = crate::support::guest_dir().join("demo.wasm");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skyhost"))
        .args(["ctl", "-c", &control, "upgrade", ".demo"])
        .arg(&demo_wasm)
        .env("SKYHOST_SECRET", "demo")
        .output()
        .expect("run skyhost ctl");
    let upgraded = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && upgraded.starts_with("upgraded :"),
        "{upgraded} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = node.wait_for("demo: upgraded");
    assert!(line.contains("9 calls answered; 3/3 ticks"), "{line}");
    node.signal("INT");
    node.wait_for("stopped");
    let exit = node.wait_exit();
    assert!(exit.success(), "skyhost exited with {exit}");
}

/// `skyhost wit DIR` writes the WIT package the binary runs components
/// against, as the repository has it, and names its version; a DIR that is
/// a file is an error naming it.
#[test]
fn wit_writes_the_package_the_binary_speaks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wit = dir.path().join("deep").join("wit");
    let out = skyhost()
        .arg("wit")
        .arg(&wit)
        .output()
        .expect("run skyhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/service.wit");
    let ours = std::fs::read_to_string(&repo).expect("the repository's WIT");
    let written = std::fs::read_to_string(wit.join("service.wit")).expect("written");
    assert_eq!(written, ours);
    let package = ours
        .lines()
        .find_map(|l| l.strip_prefix("package "))
        .expect("a package line")
        .trim_end_matches(';');
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(package), "{stdout}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let out = skyhost()
        .arg("wit")
        .arg(&file)
        .output()
        .expect("run skyhost");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a-file"), "{stderr}");
}

/// `skyhost ctl call <target> @file` sends the file's bytes (any bytes:
/// they cross the line protocol as hex) and prints the answer: here to the
/// demo node's `.echo`.
#[test]
fn ctl_call_sends_a_file_as_the_payload() {
    let (mut node, control) = demo_node();
    let dir = tempfile::tempdir().expect("temp dir");
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, "line one\nline two\n").expect("write payload");
    let out = skyhost()
        .env("SKYHOST_SECRET", "demo")
        .args(["ctl", "-c", &control, "call", ".echo"])
        .arg(format!("@{}", payload.display()))
        .output()
        .expect("run skyhost ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "line one\nline two"
    );
    node.signal("INT");
    node.wait_exit();
}

/// `skyhost ctl watch .echo` prints each message the demo's echo takes and
/// sends as it passes, until it is stopped; the echo answers on after.
#[test]
fn ctl_watch_shows_a_service_s_messages_as_they_pass() {
    use std::io::BufRead;
    let (_node, control) = demo_node();
    let mut watcher = skyhost()
        .env("SKYHOST_SECRET", "demo")
        .args(["ctl", "-c", &control, "watch", ".echo"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run skyhost ctl watch");
    let stdout = watcher.stdout.take().expect("piped stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let call = |payload: &str| {
        let out = skyhost()
            .env("SKYHOST_SECRET", "demo")
            .args(["ctl", "-c", &control, "call", ".echo", payload])
            .output()
            .expect("run skyhost ctl call");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    };
    // The watch starts when the node has its line: until then calls may
    // pass unseen, so call until one is seen.
    let deadline = std::time::Instant::now() + crate::support::DEADLINE;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("out") && l.contains("\"watched\""))
    {
        assert!(std::time::Instant::now() < deadline, "saw: {seen:?}");
        assert_eq!(call("watched"), "watched");
        while let Ok(line) = lines.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    let incoming = seen
        .iter()
        .find(|l| l.starts_with("in ") && l.contains("request") && l.contains("\"watched\""))
        .unwrap_or_else(|| panic!("no request in: {seen:?}"));
    assert!(incoming.contains("size=7"), "{incoming}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("out") && l.contains("response")),
        "{seen:?}"
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert_eq!(call("after"), "after");
}
