//! C services: bindings from the WIT package by wit-bindgen's C generator,
//! the SDK's `skyhost.c`, Debian's clang with wasi-libc for a core module,
//! then `wit-component` with the WASI preview-1 reactor adapter. Installs
//! clang, lld and wasi-libc with apt-get when they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use wit_bindgen_core::wit_parser::Resolve;

use crate::{BuildError, Say};

/// What the clang step needs, by the file that shows it is there.
pub const TOOLCHAIN: &[(&str, &str)] = &[
    ("/usr/bin/clang", "clang"),
    ("/usr/bin/wasm-ld", "lld"),
    ("/usr/lib/wasm32-wasi/libc.a", "wasi-libc"),
    (
        "/usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a",
        "libclang-rt-14-dev-wasm32",
    ),
];

/// Builds each of `sources` (one service per file) into
/// `<out>/<stem>.wasm`, with the SDK in `sdk` (`skyhost.h`, `skyhost.c`)
/// against the WIT package in `wit`; `work` holds the bindings and the core
/// modules. Returns the components written.
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
    crate::ensure_packages(TOOLCHAIN, say)?;
    let bindings = work.join("bindings");
    generate_bindings(wit, &bindings)?;
    crate::make_dir(out)?;
    let mut built = Vec::with_capacity(sources.len());
    for source in sources {
        let stem = crate::module_name(source)?;
        let core = work.join(format!("{stem}.core.wasm"));
        compile(sdk, &bindings, source, &core)?;
        let component = componentize(&core)?;
        let target = out.join(format!("{stem}.wasm"));
        std::fs::write(&target, component).map_err(BuildError::io("writing", &target))?;
        built.push(target);
    }
    Ok(built)
}

/// Writes the C bindings of the `batch-service` world into `dir`.
pub(crate) fn generate_bindings(wit: &Path, dir: &Path) -> Result<(), BuildError> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        BuildError::Invalid(format!("{what} {}: {e:#}", wit.display()))
    };
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit)
        .map_err(|e| invalid("the WIT package in", &e))?;
    let world = resolve
        .select_world(&[package], Some("batch-service"))
        .map_err(|e| invalid("the batch-service world of", &e))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| invalid("the C bindings of", &e))?;
    // What another world's bindings left there must not be compiled in.
    let _ = std::fs::remove_dir_all(dir);
    crate::make_dir(dir)?;
    for (name, contents) in files.iter() {
        let file = dir.join(name);
        std::fs::write(&file, contents).map_err(BuildError::io("writing", &file))?;
    }
    Ok(())
}

/// Compiles one service with the SDK and the bindings into a core module.
fn compile(sdk: &Path, bindings: &Path, source: &Path, core: &Path) -> Result<(), BuildError> {
    let mut clang = Command::new("clang");
    clang
        .args([
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-O2",
            "-Wall",
            "-Werror",
            "-Wno-unused-function",
        ])
        .arg("-I")
        .arg(bindings)
        .arg("-I")
        .arg(sdk)
        .arg(source)
        .arg(sdk.join("skyhost.c"))
        .arg(bindings.join("batch_service.c"))
        .arg(bindings.join("batch_service_component_type.o"))
        .arg("-o")
        .arg(core);
    crate::run(&mut clang, format!("clang on {}", source.display()))
}

/// The core module made a component, with the WASI preview-1 adapter.
pub(crate) fn componentize(core: &Path) -> Result<Vec<u8>, BuildError> {
    let module = std::fs::read(core).map_err(BuildError::io("reading", core))?;
    componentize_with(
        &module,
        core,
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    )
}

/// `module` (read from `core`, which names it in errors) made a component,
/// with `adapter` as its WASI preview-1.
pub(crate) fn componentize_with(
    module: &[u8],
    core: &Path,
    adapter: &[u8],
) -> Result<Vec<u8>, BuildError> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|e| {
            e.validate(true).adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                adapter,
            )
        })
        .and_then(|mut e| e.encode())
        .map_err(|e| BuildError::Invalid(format!("making {} a component: {e:#}", core.display())))
}
