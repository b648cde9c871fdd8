//! Builds the JavaScript services (`services/js/<name>.js`) into components
//! with componentize-js from npm (`guest-sdk/js/build.mjs`): the npm
//! packages pinned by `guest-sdk/js/package-lock.json` are installed once
//! under `target/wasm/js`, and a component is rebuilt only when its inputs
//! changed. Installs Node.js with apt-get when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds every `services/js/*.js` into `<out>/<stem>.wasm`.
pub fn build(root: &Path, work: &Path, out: &Path) {
    let sources = super::files_with_extension(&root.join("services/js"), "js");
    if sources.is_empty() {
        return;
    }
    super::ensure_packages(&[("/usr/bin/node", "nodejs"), ("/usr/bin/npm", "npm")]);
    let sdk = root.join("guest-sdk/js");
    install_tools(&sdk, work);
    std::fs::create_dir_all(out).expect("creating the guest output directory");
    let wit = root.join("wit");
    let shared = [sdk.join("skyhost.js"), sdk.join("build.mjs")];
    for source in sources {
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a JavaScript service file name");
        let target = out.join(format!("{stem}.wasm"));
        let inputs: Vec<PathBuf> = shared
            .iter()
            .cloned()
            .chain([source.clone(), wit.join("service.wit")])
            .collect();
        if super::up_to_date(&target, &inputs) {
            continue;
        }
        let status = Command::new("node")
            .arg(work.join("build.mjs"))
            .arg(&wit)
            .arg(sdk.join("skyhost.js"))
            .arg(&source)
            .arg(&target)
            .status()
            .expect("running node");
        assert!(
            status.success(),
            "componentize-js failed on {}",
            source.display()
        );
    }
}

/// `npm ci` of the pinned build tools into `work`, when the lock changed.
fn install_tools(sdk: &Path, work: &Path) {
    std::fs::create_dir_all(work).expect("creating the JavaScript build directory");
    for file in ["package.json", "package-lock.json", "build.mjs"] {
        std::fs::copy(sdk.join(file), work.join(file)).expect("copying the JavaScript build files");
    }
    let stamp = work.join("node_modules/.skyhost-lock");
    let lock = std::fs::read(sdk.join("package-lock.json")).expect("reading package-lock.json");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(work)
        .status()
        .expect("running npm");
    assert!(status.success(), "npm ci in {} failed", work.display());
    std::fs::write(&stamp, lock).expect("writing the npm stamp");
}
