//! Builds the bundled wasm services (`services/`) for `wasm32-wasip2` into
//! `target/wasm`, so `skyhost run` and the tests find them on a fresh clone.
//! Adds the `wasm32-wasip2` target with rustup when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/c_guests.rs"]
mod c_guests;
#[path = "build/js_guests.rs"]
mod js_guests;
#[path = "build/py_guests.rs"]
mod py_guests;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf();
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("build").display()
    );
    for dir in ["services", "guest-sdk", "wit", "tests/proto"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=SKYHOST_SKIP_GUESTS");
    if std::env::var_os("SKYHOST_SKIP_GUESTS").is_some() {
        return;
    }
    ensure_wasm_target();
    let target_dir = root.join("target").join("wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("services"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    // Settings meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CARGO_PROFILE_")
            || key.to_string_lossy().starts_with("CARGO_CFG_")
            || key.to_string_lossy().starts_with("CARGO_FEATURE_")
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("running cargo for the wasm services");
    assert!(
        status.success(),
        "building the wasm services in services/ failed"
    );
    let guests = target_dir.join("wasm32-wasip2").join("release");
    c_guests::build(&root, &target_dir.join("c"), &guests);
    js_guests::build(&root, &target_dir.join("js"), &guests);
    py_guests::build(&root, &target_dir.join("python"), &guests);
    println!(
        "cargo:rustc-env=SKYHOST_GUEST_DIR={}",
        target_dir.join("wasm32-wasip2").join("release").display()
    );
}

/// Adds the wasm32-wasip2 target to the active toolchain when it is missing:
/// rustup does not add targets listed in rust-toolchain.toml to a toolchain
/// that is already installed.
fn ensure_wasm_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let present = |root: &Path| root.join("lib/rustlib/wasm32-wasip2").is_dir();
    if sysroot.as_deref().is_some_and(present) {
        return;
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", "wasm32-wasip2"]);
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    let status = cmd
        .status()
        .expect("running rustup to add the wasm32-wasip2 target");
    assert!(status.success(), "`rustup target add wasm32-wasip2` failed");
}

/// The files in `dir` ending in `.<extension>`, sorted.
fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == extension))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Whether `target` exists and is newer than every one of `inputs`.
fn up_to_date(target: &Path, inputs: &[PathBuf]) -> bool {
    let Some(built) = modified(target) else {
        return false;
    };
    inputs
        .iter()
        .all(|i| modified(i).is_some_and(|m| m < built))
}

/// Installs, with apt-get, the Debian package of each file that is missing
/// (`(file, package)` pairs); needs root on a machine without them.
fn ensure_packages(needed: &[(&str, &str)]) {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    println!(
        "cargo:warning=installing {} for the guest services",
        missing.join(" ")
    );
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            // Another apt-get (an unattended upgrade, a parallel build)
            // may hold the lock: wait for it rather than fail.
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    if !apt(&install) {
        // A fresh machine may have no package lists yet.
        assert!(
            apt(&["update", "-q"]) && apt(&install),
            "could not install {} with apt-get (run as root, or install them)",
            missing.join(" ")
        );
    }
}

/// When `path` was last written.
fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
