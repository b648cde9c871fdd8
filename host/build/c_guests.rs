//! Builds the C services (`services/c/<name>.c`) into components beside
//! the Rust ones: bindings from `wit/` by wit-bindgen's C generator, the
//! SDK's `guest-sdk/c/skyhost.c`, Debian's clang with wasi-libc for a core
//! module, then `wit-component` with the WASI preview-1 reactor adapter.
//! Installs clang, lld and wasi-libc with apt-get when they are missing.

use std::path::Path;
use std::process::Command;

use wit_bindgen_core::wit_parser::Resolve;

/// What the clang step needs, by the file that shows it is there.
const TOOLCHAIN: &[(&str, &str)] = &[
    ("/usr/bin/clang", "clang"),
    ("/usr/bin/wasm-ld", "lld"),
    ("/usr/lib/wasm32-wasi/libc.a", "wasi-libc"),
    (
        "/usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a",
        "libclang-rt-14-dev-wasm32",
    ),
];

/// Builds every `services/c/*.c` into `<out>/<stem>.wasm`.
pub fn build(root: &Path, work: &Path, out: &Path) {
    let sources = super::files_with_extension(&root.join("services/c"), "c");
    if sources.is_empty() {
        return;
    }
    super::ensure_packages(TOOLCHAIN);
    let bindings = work.join("bindings");
    generate_bindings(&root.join("wit"), &bindings);
    std::fs::create_dir_all(out).expect("creating the guest output directory");
    for source in sources {
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a C service file name");
        let core = work.join(format!("{stem}.core.wasm"));
        compile(root, &bindings, &source, &core);
        let component = componentize(&core);
        std::fs::write(out.join(format!("{stem}.wasm")), component)
            .expect("writing a C service component");
    }
}

/// Writes the C bindings of the `batch-service` world into `dir`.
fn generate_bindings(wit: &Path, dir: &Path) {
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(wit).expect("parsing wit/");
    let world = resolve
        .select_world(&[package], Some("batch-service"))
        .expect("the batch-service world");
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .expect("generating the C bindings");
    // What another world's bindings left there must not be compiled in.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("creating the bindings directory");
    for (name, contents) in files.iter() {
        std::fs::write(dir.join(name), contents).expect("writing a C binding file");
    }
}

/// Compiles one service with the SDK and the bindings into a core module.
fn compile(root: &Path, bindings: &Path, source: &Path, core: &Path) {
    let sdk = root.join("guest-sdk/c");
    let status = Command::new("clang")
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
        .arg(&sdk)
        .arg(source)
        .arg(sdk.join("skyhost.c"))
        .arg(bindings.join("batch_service.c"))
        .arg(bindings.join("batch_service_component_type.o"))
        .arg("-o")
        .arg(core)
        .status()
        .expect("running clang");
    assert!(status.success(), "clang failed on {}", source.display());
}

/// The core module made a component, with the WASI preview-1 adapter.
fn componentize(core: &Path) -> Vec<u8> {
    let module = std::fs::read(core).expect("reading the core module");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|e| {
            e.validate(true).adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|mut e| e.encode())
        .unwrap_or_else(|e| panic!("making {} a component: {e:#}", core.display()))
}
