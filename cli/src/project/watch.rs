//! `skyhost run --watch`: while the node runs, a change to the project's
//! sources rebuilds it and hot-swaps each rebuilt module into the node with
//! the upgrade path (`Node::upgrade`: live services keep their state where
//! the module saves it, spawns from then on get the new version).
//!
//! What is watched is `src/` and the manifest, never `build/` (the build's
//! own output) or `target/`; a rebuild happens only when their contents
//! differ from the last build's (an editor's save of the same text, a read,
//! cargo rewriting `Cargo.lock` change nothing).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use skyhost::Node;

/// How long a service may take to finish its own sessions before a swap.
const UPGRADE_WAIT: Duration = Duration::from_secs(5);
/// Changes closer together than this are one rebuild (an editor writes a
/// file in several steps).
const SETTLE: Duration = Duration::from_millis(150);

/// The manifests a project's build reads besides `src/`.
const MANIFESTS: [&str; 4] = ["Cargo.toml", "Makefile", "package.json", "pyproject.toml"];

/// Rebuilds the project in `dir` and upgrades `node` on each change, until
/// the watch fails (it is then logged, and the node runs on unwatched).
pub async fn rebuild_on_change(node: &Node, dir: PathBuf) {
    if let Err(e) = watch(node, &dir).await {
        tracing::error!(dir = %dir.display(), "watching the project stopped: {e}");
    }
    std::future::pending::<()>().await;
}

async fn watch(node: &Node, dir: &Path) -> notify::Result<()> {
    let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir.join("src"), RecursiveMode::Recursive)?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let mut built = fingerprint(dir);
    tracing::info!(dir = %dir.display(), "watching the project's sources");
    while changed.recv().await.is_some() {
        tokio::time::sleep(SETTLE).await;
        while changed.try_recv().is_ok() {}
        let now = fingerprint(dir);
        if now == built {
            continue;
        }
        built = now;
        let project = dir.to_path_buf();
        let result = tokio::task::spawn_blocking(move || super::build(&project)).await;
        match result {
            Ok(Ok(modules)) => {
                for module in modules {
                    upgrade(node, &module).await;
                }
            }
            Ok(Err(e)) => tracing::warn!("rebuild failed, the node runs what it ran: {e:#}"),
            Err(e) => tracing::warn!("rebuild failed: {e}"),
        }
    }
    Ok(())
}

/// Swaps the module built at `file` into every live service of it.
async fn upgrade(node: &Node, file: &Path) {
    let Some(module) = file.file_stem().and_then(|s| s.to_str()) else {
        return;
    };
    match node.upgrade(module, file, UPGRADE_WAIT).await {
        Ok(reports) => {
            tracing::info!(module, services = reports.len(), "rebuilt");
            for report in reports {
                match report.result {
                    Ok(u) => tracing::info!(
                        service = %report.address,
                        module,
                        pause_us = u.pause.as_micros(),
                        "hot-swapped"
                    ),
                    Err(e) => tracing::warn!(service = %report.address, module, "not swapped: {e}"),
                }
            }
        }
        Err(e) => tracing::warn!(module, "rebuilt, not swapped: {e}"),
    }
}

/// A hash of the contents of `src/` and the manifests.
fn fingerprint(dir: &Path) -> u64 {
    let mut files: Vec<PathBuf> = MANIFESTS.iter().map(|m| dir.join(m)).collect();
    let mut pending = vec![dir.join("src")];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        if let Ok(contents) = std::fs::read(&file) {
            file.hash(&mut hash);
            contents.hash(&mut hash);
        }
    }
    hash.finish()
}
