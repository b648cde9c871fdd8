//! Builds the bundled wasm services (`services/`) for `wasm32-wasip2` into
//! `target/wasm`, so `skyhost run` and the tests find them on a fresh clone.
//! Adds the `wasm32-wasip2` target with rustup when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/c_guests.rs"]
mod c_guests;

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
    c_guests::build(
        &root,
        &target_dir.join("c"),
        &target_dir.join("wasm32-wasip2").join("release"),
    );
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
