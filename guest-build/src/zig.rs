//! Zig services, on the C SDK: Zig from PyPI (`ziglang`, pinned by the
//! SDK's `requirements.txt`, installed once into a virtual environment in a
//! work directory); each service is staged beside the SDK's `skyhost.zig`
//! (its declarations of `skyhost.h`) and built by `zig build-exe` with the C
//! SDK's `skyhost.c` and the C bindings (the same as C services use) into a
//! WASI reactor core module, then made a component with the WASI preview-1
//! adapter, as a C service is.
//!
//! Why not `@cImport`: Zig 0.17 has none (C headers go through
//! `translate-c` in a build graph); the few declarations the SDK needs are
//! written out in `skyhost.zig`, and the conformance suite checks them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{BuildError, Say};

/// Builds each of `sources` (one service per file) into `<out>/<stem>.wasm`
/// with the SDK in `sdk` (`skyhost.zig`, `requirements.txt`) and the C SDK
/// beside it (`../c`), against the WIT package in `wit`; the tool, the
/// bindings, the staging directories and Zig's caches live in `work`.
/// Returns the components written or already up to date.
pub fn build_all(
    wit: &Path,
    sdk: &Path,
    sources: &[PathBuf],
    work: &Path,
    out: &Path,
    say: Say,
) -> Result<Vec<PathBuf>, BuildError> {
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let c_sdk = sdk.with_file_name("c");
    let venv = crate::python::pip_install(&sdk.join("requirements.txt"), &work.join("venv"), say)?;
    crate::make_dir(out)?;
    let mut built = Vec::with_capacity(sources.len());
    let mut bindings = None;
    for source in sources {
        let stem = crate::module_name(source)?;
        let target = out.join(format!("{stem}.wasm"));
        let inputs = [
            source.clone(),
            sdk.join("skyhost.zig"),
            c_sdk.join("skyhost.c"),
            c_sdk.join("skyhost.h"),
            wit.join("service.wit"),
        ];
        if !crate::up_to_date(&target, &inputs) {
            let bindings = match &bindings {
                Some(b) => b,
                None => {
                    let dir = work.join("bindings");
                    crate::c::generate_bindings(wit, &dir)?;
                    bindings.insert(dir)
                }
            };
            let app = work.join(format!("app-{stem}"));
            crate::make_dir(&app)?;
            let main = app.join(format!("{stem}.zig"));
            crate::copy(source, &main)?;
            crate::copy(&sdk.join("skyhost.zig"), &app.join("skyhost.zig"))?;
            let core = work.join(format!("{stem}.core.wasm"));
            compile(&venv, work, &c_sdk, bindings, &main, &core)?;
            let component = crate::c::componentize(&core)?;
            std::fs::write(&target, component).map_err(BuildError::io("writing", &target))?;
        }
        built.push(target);
    }
    Ok(built)
}

/// `zig build-exe` of one staged service with the C SDK and the bindings.
fn compile(
    venv: &Path,
    work: &Path,
    c_sdk: &Path,
    bindings: &Path,
    main: &Path,
    core: &Path,
) -> Result<(), BuildError> {
    let mut zig = Command::new(venv.join("bin/python"));
    zig.args(["-m", "ziglang", "build-exe"])
        .arg(main)
        .args([
            "-target",
            "wasm32-wasi",
            "-mexec-model=reactor",
            "-O",
            "ReleaseSmall",
            "-lc",
        ])
        .arg("--cache-dir")
        .arg(work.join("cache"))
        .arg("--global-cache-dir")
        .arg(work.join("global-cache"))
        .arg("-I")
        .arg(c_sdk)
        .arg("-I")
        .arg(bindings)
        .args(["-cflags", "-Wall", "-Werror", "-Wno-unused-function", "--"])
        .arg(c_sdk.join("skyhost.c"))
        .arg(bindings.join("batch_service.c"))
        .arg(bindings.join("batch_service_component_type.o"))
        .arg(format!("-femit-bin={}", core.display()));
    crate::run(&mut zig, format!("zig build-exe of {}", main.display()))
}
