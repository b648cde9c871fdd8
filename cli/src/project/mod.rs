//! Service projects outside the repository (docs/projects.md): `skyhost new`
//! writes one, `skyhost build` builds it into components under `build/`,
//! and the bundled demo runs from the binary alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use skyhost_guest_build as guest_build;

pub mod cases;
pub mod sdk;
mod templates;
pub mod watch;

/// The languages a service project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with `skyhost-sdk`.
    Rust,
    /// C, with `guest-sdk/c` (clang and wasi-libc).
    C,
    /// JavaScript, with componentize-js.
    Js,
    /// Python, with componentize-py.
    Python,
}

/// Where skyhost keeps what it writes for projects: `$SKYHOST_HOME`, else
/// `$XDG_DATA_HOME/skyhost`, else `~/.local/share/skyhost`.
///
/// # Errors
/// When none of those is set.
pub fn home() -> anyhow::Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(home) = var("SKYHOST_HOME") {
        return Ok(home.into());
    }
    if let Some(data) = var("XDG_DATA_HOME") {
        return Ok(PathBuf::from(data).join("skyhost"));
    }
    let home = var("HOME").context("set SKYHOST_HOME (no HOME to keep skyhost's files in)")?;
    Ok(PathBuf::from(home).join(".local/share/skyhost"))
}

/// Where `build` installs toolchains: `$SKYHOST_TOOLS`, else `<home>/tools`.
fn tools(home: &Path) -> PathBuf {
    std::env::var_os("SKYHOST_TOOLS")
        .filter(|v| !v.is_empty())
        .map_or_else(|| home.join("tools"), PathBuf::from)
}

/// Makes project `name` in `parent/name`; the directory made.
///
/// # Errors
/// When the name cannot be a module name (or, in Python, a module), or the
/// directory exists and is not empty.
pub fn new(parent: &Path, name: &str, lang: Lang) -> anyhow::Result<PathBuf> {
    guest_build::check_module_name(name)?;
    if lang == Lang::Python && name.contains('-') {
        bail!("`{name}`: a Python service is a Python module: letters, digits and `_` only");
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!("`{name}`: a name starts with a letter or `_`");
    }
    let dir = parent.join(name);
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} exists and is not empty", dir.display());
    }
    let sdk = sdk::install(&home()?)?.join("guest-sdk");
    for (path, contents) in templates::files(lang, name, &sdk) {
        let file = dir.join(&path);
        if let Some(d) = file.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("making {}", d.display()))?;
        }
        std::fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(dir)
}

/// The language of the project in `dir`, by its manifest.
///
/// # Errors
/// When `dir` holds none of `Cargo.toml`, `package.json`, `pyproject.toml`
/// or C sources in `src/`.
pub fn language_of(dir: &Path) -> anyhow::Result<Lang> {
    let has = |file: &str| dir.join(file).is_file();
    Ok(if has("Cargo.toml") {
        Lang::Rust
    } else if has("package.json") {
        Lang::Js
    } else if has("pyproject.toml") {
        Lang::Python
    } else if !guest_build::files_with_extension(&dir.join("src"), "c").is_empty() {
        Lang::C
    } else {
        bail!(
            "{}: not a service project (no Cargo.toml, package.json, pyproject.toml or src/*.c; \
             `skyhost new` makes one)",
            dir.display()
        )
    })
}

/// Builds the project in `dir` into components under `dir/build/`; the
/// components written.
///
/// # Errors
/// When the language's build fails (its output says why) or a tool cannot
/// be installed.
pub fn build(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = dir.join("build");
    let (extension, language, build_all): (_, _, guest_build::BuildAll) = match language_of(dir)? {
        Lang::Rust => {
            let cargo = std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from);
            guest_build::ensure_wasm_target("rustc", None)?;
            return Ok(vec![guest_build::rust::build(&cargo, dir, &out)?]);
        }
        Lang::C => ("c", "c", guest_build::c::build_all),
        Lang::Js => ("js", "js", guest_build::js::build_all),
        Lang::Python => ("py", "python", guest_build::python::build_all),
    };
    let sources = guest_build::files_with_extension(&dir.join("src"), extension);
    if sources.is_empty() {
        bail!("{}: no src/*.{extension}", dir.display());
    }
    let home = home()?;
    let root = sdk::install(&home)?;
    // C's bindings and core modules are the project's own; the JavaScript
    // and Python tools are shared by every project.
    let work = match extension {
        "c" => out.join(".c"),
        _ => tools(&home).join(language),
    };
    let say = |line: &str| eprintln!("skyhost: {line}");
    let sdk = root.join("guest-sdk").join(language);
    Ok(build_all(
        &root.join("wit"),
        &sdk,
        &sources,
        &work,
        &out,
        &say,
    )?)
}
