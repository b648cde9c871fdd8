//! Builds the bundled wasm services (`services/`) for `wasm32-wasip2` into
//! `target/wasm`, so `skyhost run` and the tests find them on a fresh clone.
//! Adds the `wasm32-wasip2` target with rustup when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use skyhost_guest_build as guest_build;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf();
    for dir in ["services", "guest-sdk", "guest-build", "wit", "tests/proto"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=SKYHOST_SKIP_GUESTS");
    if std::env::var_os("SKYHOST_SKIP_GUESTS").is_some() {
        carry(None);
        return;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    guest_build::ensure_wasm_target(&rustc, toolchain.as_deref())
        .expect("the wasm32-wasip2 target");
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
    let say = |line: &str| println!("cargo:warning={line}");
    let (wit, sdk) = (root.join("wit"), root.join("guest-sdk"));
    for (language, extension, build) in [
        ("c", "c", guest_build::c::build_all as guest_build::BuildAll),
        ("js", "js", guest_build::js::build_all),
        ("python", "py", guest_build::python::build_all),
        ("zig", "zig", guest_build::zig::build_all),
        ("go", "go", guest_build::go::build_all),
    ] {
        let sources =
            guest_build::files_with_extension(&root.join("services").join(language), extension);
        let work = target_dir.join(language);
        if let Err(e) = build(&wit, &sdk.join(language), &sources, &work, &guests, &say) {
            panic!("building the {language} services: {e}");
        }
    }
    carry(Some(&guests));
    println!("cargo:rustc-env=SKYHOST_GUEST_DIR={}", guests.display());
}

/// Copies the modules the binary carries (`skyhost::CARRIED`) from `guests`
/// into `OUT_DIR/carried`, or writes them empty when the build skips the
/// guests.
fn carry(guests: Option<&Path>) {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("carried");
    std::fs::create_dir_all(&out).expect("making OUT_DIR/carried");
    for name in ["demo", "echo"] {
        let file = format!("{name}.wasm");
        let bytes = guests.map_or_else(Vec::new, |g| {
            std::fs::read(g.join(&file)).expect("reading a carried module")
        });
        std::fs::write(out.join(&file), bytes).expect("writing a carried module");
    }
}
