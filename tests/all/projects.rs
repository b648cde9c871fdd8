//! Service projects outside the repository (docs/projects.md), as a user
//! makes them from an empty directory: `skyhost new`, `skyhost build`,
//! `skyhost run`, `skyhost ctl call`, in each language; and the demo run by
//! a `skyhost` with no repository beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Proc, guest_dir};

/// How long a node may take to compile its module on first start.
const COMPILE: std::time::Duration = std::time::Duration::from_secs(180);

/// `skyhost` run in `dir` with its home in `home`. Toolchains come from the
/// repository's own build (the same pinned versions); compiled modules and
/// Rust builds are kept between runs under the test target directory.
fn skyhost_in(dir: &Path, home: &Path) -> Command {
    let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyhost"));
    cmd.current_dir(dir)
        .env("SKYHOST_HOME", home)
        .env("SKYHOST_TOOLS", guest_dir().join("../.."))
        .env("XDG_CACHE_HOME", kept.join("xdg-cache"))
        .env("CARGO_TARGET_DIR", kept.join("projects-target"));
    // What this test's own build set must not reach the project's build.
    for var in [
        "RUST_LOG",
        "SKYHOST_SECRET",
        "SKYHOST_CONTROL",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` to its end; its stdout, or a failure showing both streams.
fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run skyhost");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// From an empty directory: make project `hello` in `lang`, build it, run
/// it, call it by name from the shell, stop it.
fn a_new_project_answers(lang: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    let made = succeeds(skyhost_in(dir.path(), &home).args(["new", "hello", "--lang", lang]));
    assert!(made.contains("skyhost build"), "{made}");
    let project = dir.path().join("hello");
    let built = succeeds(skyhost_in(&project, &home).arg("build"));
    assert!(built.contains("hello.wasm"), "{built}");
    assert!(project.join("build/hello.wasm").is_file());
    let tested = succeeds(skyhost_in(&project, &home).arg("test"));
    assert!(
        tested.contains("test tests/hello.toml#1 ... ok") && tested.contains("1 passed, 0 failed"),
        "{tested}"
    );

    let mut node = Proc::spawn({
        let mut run = skyhost_in(&project, &home);
        run.arg("run");
        run
    });
    // A JavaScript or Python module's first compile takes a while (its
    // runtime is 12-18 MB of wasm); later runs take it from the cache.
    node.wait_for_within("bootstrap service started", COMPILE);
    node.wait_for("node running");
    let running = project.join(".skyhost/node.json");
    assert!(running.is_file(), "{}", node.log());
    let answer = succeeds(skyhost_in(&project, &home).args(["ctl", "call", ".hello", "world"]));
    assert_eq!(answer.trim_end(), "hello, world");

    node.signal("INT");
    let exit = node.wait_exit();
    assert!(exit.success(), "{exit}: {}", node.log());
    assert!(
        !running.exists(),
        "the node's file is removed when it stops"
    );
}

#[test]
fn a_new_rust_project_builds_runs_and_answers() {
    a_new_project_answers("rust");
}

#[test]
fn a_new_c_project_builds_runs_and_answers() {
    a_new_project_answers("c");
}

#[test]
fn a_new_javascript_project_builds_runs_and_answers() {
    a_new_project_answers("js");
}

#[test]
fn a_new_python_project_builds_runs_and_answers() {
    a_new_project_answers("python");
}

/// `skyhost run` with no node file and no project here runs the demo from
/// the modules the binary carries.
#[test]
fn run_with_no_node_file_runs_the_carried_demo() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    let mut node = Proc::spawn({
        let mut run = skyhost_in(dir.path(), &home);
        run.arg("run");
        run
    });
    node.wait_for("demo: done");
    let modules = home.join(env!("CARGO_PKG_VERSION")).join("modules");
    assert!(modules.join("demo.wasm").is_file() && modules.join("echo.wasm").is_file());
    node.signal("INT");
    let exit = node.wait_exit();
    assert!(exit.success(), "{exit}: {}", node.log());
}

/// What `new` refuses, each with its reason; and `build` and `ctl` where
/// there is no project or no node.
#[test]
fn new_build_and_ctl_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    let fails = |args: &[&str], why: &str| {
        let out = skyhost_in(dir.path(), &home)
            .args(args)
            .output()
            .expect("run skyhost");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    };
    fails(&["new", "two words"], "not a module name");
    fails(&["new", "my-svc", "--lang", "python"], "Python module");
    std::fs::create_dir(dir.path().join("taken")).expect("mkdir");
    std::fs::write(dir.path().join("taken/file"), "x").expect("write");
    fails(&["new", "taken"], "not empty");
    fails(&["build"], "not a service project");
    fails(&["ctl", "list"], ".skyhost/node.json");
}

/// `skyhost run --watch`: the project is built first; an edit to its
/// source is rebuilt and swapped into the running node, and the next call
/// gets the new answer. (C: the quickest of the four to rebuild.)
#[test]
fn run_watch_rebuilds_and_swaps_in_an_edited_service() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    succeeds(skyhost_in(dir.path(), &home).args(["new", "hello", "--lang", "c"]));
    let project = dir.path().join("hello");
    let mut node = Proc::spawn({
        let mut run = skyhost_in(&project, &home);
        run.args(["run", "--watch"]);
        run
    });
    node.wait_for("watching the project's sources");
    let call = || succeeds(skyhost_in(&project, &home).args(["ctl", "call", ".hello", "world"]));
    assert_eq!(call().trim_end(), "hello, world");

    let source = project.join("src/hello.c");
    let text = std::fs::read_to_string(&source).expect("the service's source");
    std::fs::write(&source, text.replace("\"hello, %.*s\"", "\"hi, %.*s\"")).expect("edit");
    let swapped = node.wait_for("hot-swapped");
    assert!(swapped.contains("hello"), "{swapped}");
    assert_eq!(call().trim_end(), "hi, world");

    node.signal("INT");
    let exit = node.wait_exit();
    assert!(exit.success(), "{exit}: {}", node.log());
}

/// `skyhost test` reports a case that fails, with what it got and what was
/// expected, and exits non-zero; the others still run.
#[test]
fn skyhost_test_reports_a_failing_case() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    succeeds(skyhost_in(dir.path(), &home).args(["new", "hello", "--lang", "c"]));
    let project = dir.path().join("hello");
    let cases = project.join("tests/hello.toml");
    let mut text = std::fs::read_to_string(&cases).expect("the first case");
    text.push_str(
        "\n[[call]]\nto = \".hello\"\npayload = \"you\"\nanswer = \"bye, you\"\n\n\
         [[call]]\nto = \".nobody\"\nerror = \"x\"\n",
    );
    std::fs::write(&cases, text).expect("more cases");
    let out = skyhost_in(&project, &home)
        .arg("test")
        .output()
        .expect("run skyhost test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("tests/hello.toml#1 ... ok"), "{stdout}");
    assert!(
        stdout.contains(
            r#"tests/hello.toml#2 ... FAILED: answered "hello, you", expected "bye, you""#
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("#3 ... FAILED: no service named `.nobody`"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 2 failed"), "{stdout}");
}
