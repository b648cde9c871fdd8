//! The SDKs and the WIT package this binary carries, written under the
//! skyhost home once per version (`<home>/<version>/guest-sdk`, `.../wit`)
//! for projects outside the repository to build against. The Rust SDK's
//! manifest gets the workspace's values written in, so it builds alone.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// `(path in the repository, contents)` of each file, as built.
macro_rules! carried {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../", $path)))),*]
    };
}

/// Every file of the SDKs and the WIT package a project needs.
pub const FILES: &[(&str, &str)] = carried![
    "wit/service.wit",
    "guest-sdk/src/address.rs",
    "guest-sdk/src/alloc.rs",
    "guest-sdk/src/batch.rs",
    "guest-sdk/src/cluster.rs",
    "guest-sdk/src/delivery.rs",
    "guest-sdk/src/error.rs",
    "guest-sdk/src/executor.rs",
    "guest-sdk/src/fake.rs",
    "guest-sdk/src/group.rs",
    "guest-sdk/src/harbor.rs",
    "guest-sdk/src/json.rs",
    "guest-sdk/src/lib.rs",
    "guest-sdk/src/log.rs",
    "guest-sdk/src/message.rs",
    "guest-sdk/src/multicast.rs",
    "guest-sdk/src/node.rs",
    "guest-sdk/src/outbox.rs",
    "guest-sdk/src/queued.rs",
    "guest-sdk/src/runtime.rs",
    "guest-sdk/src/service.rs",
    "guest-sdk/src/session.rs",
    "guest-sdk/src/sys.rs",
    "guest-sdk/src/tests.rs",
    "guest-sdk/c/skyhost.c",
    "guest-sdk/c/skyhost.h",
    "guest-sdk/js/build.mjs",
    "guest-sdk/js/package.json",
    "guest-sdk/js/package-lock.json",
    "guest-sdk/js/skyhost.js",
    "guest-sdk/python/requirements.txt",
    "guest-sdk/python/skyhost.py",
];

/// The Rust SDK's manifest and the workspace's, whose values it inherits.
const SDK_MANIFEST: &str = include_str!("../../../guest-sdk/Cargo.toml");
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

/// The SDKs and WIT of this version, written under `home` when missing or
/// different; the directory holding `guest-sdk/` and `wit/`.
///
/// # Errors
/// When a file cannot be written.
pub fn install(home: &Path) -> anyhow::Result<PathBuf> {
    let root = home.join(env!("CARGO_PKG_VERSION"));
    let manifest = standalone_manifest()?;
    let files = FILES
        .iter()
        .copied()
        .chain([("guest-sdk/Cargo.toml", manifest.as_str())]);
    for (path, contents) in files {
        write_if_changed(&root.join(path), contents.as_bytes())?;
    }
    Ok(root)
}

/// Writes `contents` to `file` (and its directory) unless it holds them.
pub fn write_if_changed(file: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(file).is_ok_and(|c| c == contents) {
        return Ok(());
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    }
    // Whole or not at all: a build reading it meanwhile sees one version.
    let tmp = file.with_extension("tmp-write");
    std::fs::write(&tmp, contents)
        .and_then(|()| std::fs::rename(&tmp, file))
        .with_context(|| format!("writing {}", file.display()))
}

/// The SDK's `Cargo.toml` with each `x.workspace = true` replaced by the
/// workspace's value and without the workspace's lints: a crate that
/// builds on its own.
fn standalone_manifest() -> anyhow::Result<String> {
    let workspace: toml::Table = toml::from_str(WORKSPACE_MANIFEST).context("Cargo.toml")?;
    let mut sdk: toml::Table = toml::from_str(SDK_MANIFEST).context("guest-sdk/Cargo.toml")?;
    let inherited = |section: &str| -> Option<&toml::Table> {
        workspace.get("workspace")?.get(section)?.as_table()
    };
    let (package_values, dependency_values) = (
        inherited("package").context("no [workspace.package]")?,
        inherited("dependencies").context("no [workspace.dependencies]")?,
    );
    sdk.remove("lints");
    if let Some(package) = sdk.get_mut("package").and_then(|p| p.as_table_mut()) {
        for (key, value) in package.iter_mut() {
            if is_inherited(value) {
                *value = package_values
                    .get(key)
                    .with_context(|| format!("[workspace.package] has no {key}"))?
                    .clone();
            }
        }
    }
    if let Some(deps) = sdk.get_mut("dependencies").and_then(|d| d.as_table_mut()) {
        for (name, dep) in deps.iter_mut() {
            let Some(table) = dep.as_table_mut() else {
                continue;
            };
            if table.remove("workspace").is_none() {
                continue;
            }
            let base = dependency_values
                .get(name)
                .with_context(|| format!("[workspace.dependencies] has no {name}"))?;
            // The workspace gives a version or a table; the member's own
            // keys (`optional`, `features`) are added to it.
            let mut merged = match base {
                toml::Value::String(version) => {
                    toml::Table::from_iter([("version".to_string(), version.clone().into())])
                }
                other => other.as_table().cloned().unwrap_or_default(),
            };
            merged.extend(std::mem::take(table));
            *table = merged;
        }
    }
    Ok(toml::to_string(&sdk)?)
}

/// `{ workspace = true }`.
fn is_inherited(value: &toml::Value) -> bool {
    value.get("workspace").and_then(|w| w.as_bool()) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to an SDK must travel with the binary too.
    #[test]
    fn every_sdk_file_is_carried() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let carried: std::collections::BTreeSet<&str> = FILES.iter().map(|(p, _)| *p).collect();
        for (dir, extension) in [
            ("guest-sdk/src", "rs"),
            ("guest-sdk/c", "c"),
            ("guest-sdk/c", "h"),
            ("guest-sdk/js", "js"),
            ("guest-sdk/js", "mjs"),
            ("guest-sdk/js", "json"),
            ("guest-sdk/python", "py"),
            ("guest-sdk/python", "txt"),
            ("wit", "wit"),
        ] {
            for file in skyhost_guest_build::files_with_extension(&repo.join(dir), extension) {
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let path = format!("{dir}/{name}");
                assert!(
                    carried.contains(path.as_str()),
                    "{path} is not in sdk::FILES"
                );
            }
        }
    }

    #[test]
    fn the_sdk_manifest_stands_alone() -> anyhow::Result<()> {
        let manifest: toml::Table = toml::from_str(&standalone_manifest()?)?;
        let text = toml::to_string(&manifest)?;
        assert!(!text.contains("workspace"), "{text}");
        assert!(manifest.get("lints").is_none());
        assert_eq!(manifest["package"]["name"].as_str(), Some("skyhost-sdk"));
        assert_eq!(
            manifest["package"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        let deps = &manifest["dependencies"];
        assert_eq!(deps["talc"]["optional"].as_bool(), Some(true));
        assert!(deps["talc"]["version"].is_str());
        assert!(deps["wit-bindgen"]["version"].is_str());
        assert!(deps["serde"]["features"].is_array());
        Ok(())
    }
}
