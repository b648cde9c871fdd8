//! Python services, with componentize-py from PyPI: the version pinned by
//! the SDK's `requirements.txt` is installed once into a virtual environment
//! in a work directory, each service is staged beside the SDK's
//! `skyhost.py`, and a component is rebuilt only when its inputs changed.
//! Installs Python with apt-get when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{BuildError, Say};

/// Builds each of `sources` (one service per file) into `<out>/<stem>.wasm`
/// with the SDK in `sdk` (`skyhost.py`, `requirements.txt`) against the WIT
/// package in `wit`; the tool and the staging directories live in `work`.
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
    let tool = install_tool(sdk, work, say)?;
    crate::make_dir(out)?;
    let mut built = Vec::with_capacity(sources.len());
    for source in sources {
        let stem = crate::module_name(source)?;
        let target = out.join(format!("{stem}.wasm"));
        let inputs = [
            source.clone(),
            sdk.join("skyhost.py"),
            wit.join("service.wit"),
        ];
        if !crate::up_to_date(&target, &inputs) {
            let app = work.join(format!("app-{stem}"));
            crate::make_dir(&app)?;
            crate::copy(source, &app.join(format!("{stem}.py")))?;
            crate::copy(&sdk.join("skyhost.py"), &app.join("skyhost.py"))?;
            let mut componentize = Command::new(&tool);
            componentize
                .arg("-d")
                .arg(wit)
                .args(["-w", "batch-service", "componentize", stem, "-p"])
                .arg(&app)
                .arg("-o")
                .arg(&target);
            crate::run(
                &mut componentize,
                format!("componentize-py on {}", source.display()),
            )?;
        }
        built.push(target);
    }
    Ok(built)
}

/// componentize-py in a virtual environment under `work`, installed (again)
/// when the pinned requirements changed.
fn install_tool(sdk: &Path, work: &Path, say: Say) -> Result<PathBuf, BuildError> {
    let venv = pip_install(&sdk.join("requirements.txt"), &work.join("venv"), say)?;
    Ok(venv.join("bin/componentize-py"))
}

/// A virtual environment at `venv` holding what `requirements` pins,
/// installed (again) when the pinned requirements changed; the environment.
/// Installs Python with apt-get when it is missing.
pub(crate) fn pip_install(
    requirements: &Path,
    venv: &Path,
    say: Say,
) -> Result<PathBuf, BuildError> {
    let stamp = venv.join(".skyhost-requirements");
    let wanted = std::fs::read(requirements).map_err(BuildError::io("reading", requirements))?;
    if std::fs::read(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(venv.to_path_buf());
    }
    let python = match crate::which("python3") {
        Some(p) => p,
        None => {
            crate::ensure_packages(
                &[
                    ("/usr/bin/python3", "python3"),
                    ("/usr/share/doc/python3-venv", "python3-venv"),
                ],
                say,
            )?;
            PathBuf::from("/usr/bin/python3")
        }
    };
    say(&format!(
        "installing what {} pins into {}",
        requirements.display(),
        venv.display()
    ));
    crate::run(
        Command::new(&python).args(["-m", "venv"]).arg(venv),
        "creating a Python environment for the build",
    )?;
    crate::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(requirements),
        format!("pip install -r {}", requirements.display()),
    )?;
    std::fs::write(&stamp, wanted).map_err(BuildError::io("writing", &stamp))?;
    Ok(venv.to_path_buf())
}
