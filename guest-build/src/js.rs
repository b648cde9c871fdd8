//! JavaScript services, with componentize-js from npm (`build.mjs` of the
//! JavaScript SDK): the npm packages pinned by the SDK's
//! `package-lock.json` are installed once into a work directory, and a
//! component is rebuilt only when its inputs changed. Installs Node.js with
//! apt-get when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{BuildError, Say};

/// Builds each of `sources` (one service per file) into `<out>/<stem>.wasm`
/// with the SDK in `sdk` (`skyhost.js`, `build.mjs`, the npm manifest and
/// lock) against the WIT package in `wit`; the tools live in `work`.
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
    crate::ensure_packages(&[("/usr/bin/node", "nodejs"), ("/usr/bin/npm", "npm")], say)?;
    install_tools(sdk, work, say)?;
    crate::make_dir(out)?;
    let shared = [sdk.join("skyhost.js"), sdk.join("build.mjs")];
    let mut built = Vec::with_capacity(sources.len());
    for source in sources {
        let stem = crate::module_name(source)?;
        let target = out.join(format!("{stem}.wasm"));
        let inputs: Vec<PathBuf> = shared
            .iter()
            .cloned()
            .chain([source.clone(), wit.join("service.wit")])
            .collect();
        if !crate::up_to_date(&target, &inputs) {
            let mut node = Command::new("node");
            node.arg(work.join("build.mjs"))
                .arg(wit)
                .arg(sdk.join("skyhost.js"))
                .arg(source)
                .arg(&target);
            crate::run(
                &mut node,
                format!("componentize-js on {}", source.display()),
            )?;
        }
        built.push(target);
    }
    Ok(built)
}

/// `npm ci` of the pinned build tools into `work`, when the lock changed.
fn install_tools(sdk: &Path, work: &Path, say: Say) -> Result<(), BuildError> {
    crate::make_dir(work)?;
    for file in ["package.json", "package-lock.json", "build.mjs"] {
        crate::copy(&sdk.join(file), &work.join(file))?;
    }
    let stamp = work.join("node_modules/.skyhost-lock");
    let lock_file = sdk.join("package-lock.json");
    let lock = std::fs::read(&lock_file).map_err(BuildError::io("reading", &lock_file))?;
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) {
        return Ok(());
    }
    say(&format!(
        "installing componentize-js into {}",
        work.display()
    ));
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(work);
    crate::run(&mut npm, format!("npm ci in {}", work.display()))?;
    std::fs::write(&stamp, lock).map_err(BuildError::io("writing", &stamp))
}
