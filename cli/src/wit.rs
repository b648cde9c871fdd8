//! `skyhost wit [DIR]`: the WIT package this skyhost speaks, written out for
//! any bindings generator (wit-bindgen, componentize-py, jco, wit-bindgen-c)
//! in a project outside this repository (issue 27).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// `wit/service.wit` as this binary was built with it: the package its
/// node runs components against.
pub const SERVICE_WIT: &str = include_str!("../../wit/service.wit");

/// The package's name and version (`skyhost:service@0.1.4`), from its
/// `package` line.
pub fn package() -> &'static str {
    SERVICE_WIT
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map_or("skyhost:service", |p| p.trim_end_matches(';').trim())
}

/// Writes the package into `dir` (made if missing) as `service.wit`,
/// replacing what was there; the file written.
///
/// # Errors
/// When `dir` cannot be made or the file cannot be written.
pub fn write(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let file = dir.join("service.wit");
    std::fs::write(&file, SERVICE_WIT).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_package_line_names_the_version() {
        let package = super::package();
        assert!(package.starts_with("skyhost:service@0."), "{package}");
        assert!(!package.ends_with(';'));
    }
}
