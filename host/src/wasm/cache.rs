//! Compiled components cached on disk, keyed by the module's SHA-256 and the
//! engine's compatibility hash, so a restart does not recompile.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The cache file for `bytes` compiled by `engine`.
pub(crate) fn cache_path(engine: &Engine, bytes: &[u8], dir: &Path) -> PathBuf {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = Sha256::digest(bytes);
    dir.join(format!("{}-{:016x}.cwasm", hex::encode(digest), h.finish()))
}

/// The component for `bytes`: read from the cache when there, else compiled
/// and written to it. A cache that cannot be read or written only costs a
/// compile; it is never an error.
pub(crate) fn load_or_compile(
    engine: &Engine,
    bytes: &[u8],
    dir: Option<&Path>,
) -> wasmtime::Result<Component> {
    let Some(dir) = dir else {
        return Component::new(engine, bytes);
    };
    let path = cache_path(engine, bytes, dir);
    if path.is_file() {
        // SAFETY: files in the cache directory are written only by this
        // function, from `Component::serialize` of an engine whose
        // compatibility hash is part of the file name, and are renamed into
        // place whole; `deserialize_file` checks the header and the engine
        // configuration again before using the code.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => {
                tracing::debug!(path = %path.display(), "compiled module read from cache");
                return Ok(c);
            }
            Err(e) => tracing::warn!(path = %path.display(), "ignoring unusable cache file: {e:#}"),
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = write_atomically(&path, &component.serialize()?) {
        tracing::warn!(path = %path.display(), "could not cache compiled module: {e}");
    }
    Ok(component)
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
