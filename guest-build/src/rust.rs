//! Rust services: a crate of crate-type `cdylib` built with cargo for
//! `wasm32-wasip2` is already a component. Its module is named after the
//! package as written in `Cargo.toml` (`my-svc` gives `my-svc.wasm`, where
//! cargo itself writes `my_svc.wasm`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::BuildError;

/// Builds the crate at `project` (its `Cargo.toml`) in release for
/// `wasm32-wasip2` and copies its component to `<out>/<package>.wasm`.
/// `cargo` is the cargo to run. Returns the component written.
pub fn build(cargo: &Path, project: &Path, out: &Path) -> Result<PathBuf, BuildError> {
    let manifest = project.join("Cargo.toml");
    let name = package_name(&manifest)?;
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", "wasm32-wasip2"])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        // A rust-toolchain.toml of the project is found from there.
        .current_dir(project)
        .stdout(Stdio::piped());
    let output = cmd.output().map_err(|source| BuildError::Spawn {
        program: cargo.display().to_string(),
        source,
    })?;
    if !output.status.success() {
        return Err(BuildError::Failed(format!(
            "cargo build of {}",
            manifest.display()
        )));
    }
    let built = component_of(&String::from_utf8_lossy(&output.stdout), &name).ok_or_else(|| {
        BuildError::Invalid(format!(
            "{}: cargo made no .wasm for package `{name}` (is it a `cdylib`?)",
            manifest.display()
        ))
    })?;
    crate::make_dir(out)?;
    let target = out.join(format!("{name}.wasm"));
    crate::copy(&built, &target)?;
    Ok(target)
}

/// The package name of a `Cargo.toml`, checked as a module name.
pub fn package_name(manifest: &Path) -> Result<String, BuildError> {
    let text = std::fs::read_to_string(manifest).map_err(BuildError::io("reading", manifest))?;
    let doc: toml::Table = toml::from_str(&text)
        .map_err(|e| BuildError::Invalid(format!("{}: {e}", manifest.display())))?;
    let name = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| BuildError::Invalid(format!("{}: no [package] name", manifest.display())))?;
    crate::check_module_name(name)?;
    Ok(name.to_string())
}

/// The `.wasm` file cargo reported for package `name` in its JSON messages.
fn component_of(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        // cargo names a package's lib target with `_` for `-`.
        .filter(|m| m["target"]["name"].as_str() == Some(&name.replace('-', "_")))
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
                .collect::<Vec<_>>()
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_is_found_in_cargos_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","package_id":"registry+https://x#serde@1.0.0","target":{"name":"serde"},"filenames":["/t/libserde.rlib"]}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"path+file:///p/my-svc#0.1.0","target":{"name":"my_svc"},"filenames":["/t/wasm32-wasip2/release/my_svc.wasm"]}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            component_of(messages, "my-svc"),
            Some(PathBuf::from("/t/wasm32-wasip2/release/my_svc.wasm"))
        );
        assert_eq!(component_of(messages, "serde"), None);
    }

    #[test]
    fn a_package_name_must_be_a_module_name() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let manifest = dir.path().join("Cargo.toml");
        std::fs::write(&manifest, "[package]\nname = \"my-svc\"\n")?;
        assert_eq!(package_name(&manifest)?, "my-svc");
        std::fs::write(&manifest, "[workspace]\n")?;
        let err = package_name(&manifest).expect_err("no package");
        assert!(err.to_string().contains("no [package] name"), "{err}");
        Ok(())
    }
}
