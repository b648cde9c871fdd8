//! Builds the Python services (`services/python/<name>.py`) into components
//! with componentize-py from PyPI: the version pinned by
//! `guest-sdk/python/requirements.txt` is installed once into a virtual
//! environment under `target/wasm/python`, each service is staged beside
//! the SDK (`guest-sdk/python/skyhost.py`), and a component is rebuilt only
//! when its inputs changed. Installs Python with apt-get when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds every `services/python/*.py` into `<out>/<stem>.wasm`.
pub fn build(root: &Path, work: &Path, out: &Path) {
    let sources = super::files_with_extension(&root.join("services/python"), "py");
    if sources.is_empty() {
        return;
    }
    let sdk = root.join("guest-sdk/python");
    let tool = install_tool(&sdk, work);
    std::fs::create_dir_all(out).expect("creating the guest output directory");
    let wit = root.join("wit");
    for source in sources {
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a Python service file name");
        let target = out.join(format!("{stem}.wasm"));
        let inputs = [
            source.clone(),
            sdk.join("skyhost.py"),
            wit.join("service.wit"),
        ];
        if super::up_to_date(&target, &inputs) {
            continue;
        }
        let app = work.join(format!("app-{stem}"));
        std::fs::create_dir_all(&app).expect("creating a Python staging directory");
        std::fs::copy(&source, app.join(format!("{stem}.py"))).expect("staging a Python service");
        std::fs::copy(sdk.join("skyhost.py"), app.join("skyhost.py")).expect("staging skyhost.py");
        let status = Command::new(&tool)
            .arg("-d")
            .arg(&wit)
            .args(["-w", "batch-service", "componentize", stem, "-p"])
            .arg(&app)
            .arg("-o")
            .arg(&target)
            .status()
            .expect("running componentize-py");
        assert!(
            status.success(),
            "componentize-py failed on {}",
            source.display()
        );
    }
}

/// componentize-py in a virtual environment under `work`, installed (again)
/// when the pinned requirements changed.
fn install_tool(sdk: &Path, work: &Path) -> PathBuf {
    let python = which("python3").unwrap_or_else(|| {
        super::ensure_packages(&[
            ("/usr/bin/python3", "python3"),
            ("/usr/share/doc/python3-venv", "python3-venv"),
        ]);
        PathBuf::from("/usr/bin/python3")
    });
    let venv = work.join("venv");
    let tool = venv.join("bin/componentize-py");
    let stamp = venv.join(".skyhost-requirements");
    let requirements = sdk.join("requirements.txt");
    let wanted = std::fs::read(&requirements).expect("reading requirements.txt");
    if tool.is_file() && std::fs::read(&stamp).is_ok_and(|s| s == wanted) {
        return tool;
    }
    let run = |cmd: &mut Command, what: &str| {
        let ok = cmd.status().is_ok_and(|s| s.success());
        assert!(ok, "{what} failed");
    };
    run(
        Command::new(&python).args(["-m", "venv"]).arg(&venv),
        "creating the Python build environment",
    );
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        "installing componentize-py",
    );
    std::fs::write(&stamp, wanted).expect("writing the pip stamp");
    tool
}

/// `program` on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
