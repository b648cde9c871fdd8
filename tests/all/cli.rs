//! The real `skyhost` binary: node files, bootstrap errors, signals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use crate::support::{DEADLINE, guest_dir};

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

#[test]
fn a_bad_node_file_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_node_file(dir.path(), "threads = 2\n\n[limits]\nmemory_mbs = 64\n");
    let out = skyhost()
        .arg("run")
        .arg(&path)
        .output()
        .expect("run skyhost");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
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
    let path = write_node_file(dir.path(), &text);
    let out = skyhost()
        .arg("run")
        .arg(&path)
        .output()
        .expect("run skyhost");
    assert!(
        !out.status.success(),
        "node with a missing bootstrap module must exit non-zero"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nope.wasm") && stderr.contains("not found"),
        "{stderr}"
    );
}

#[test]
fn the_demo_node_runs_and_stops_cleanly_on_sigint() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml");
    let mut child = skyhost()
        .arg("run")
        .arg(&demo)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start skyhost");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return seen,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line containing {needle:?}; saw:\n{}", seen.join("\n")),
            }
        }
    };
    wait_for("bootstrap service started");
    // The demo's own log lines: calls answered through its echo services.
    wait_for("skyhost::guest");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for("stopped");
    let (exit_tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });
    let exit = exited
        .recv_timeout(DEADLINE)
        .expect("skyhost exits after SIGINT")
        .expect("wait for skyhost");
    assert!(exit.success(), "skyhost exited with {exit}");
}
