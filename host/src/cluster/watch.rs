//! Watches the cluster config file and reloads it when its content changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Cluster, ClusterConfigError, ClusterTable};

/// Starts watching `path` (its directory, so a replaced file is seen).
pub(super) fn start(cluster: &Arc<Cluster>, path: PathBuf) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let file = path.file_name().map(|f| f.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (an `open`, our own reload's among them) are no
        // change: reacting to them made every read trigger a reload.
        if let Ok(e) = event
            && !e.kind.is_access()
            && e.paths.iter().any(|p| p.file_name() == file.as_deref())
        {
            let _ = tx.send(());
        }
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let Some(kernel) = cluster.kernel() else {
        return Ok(());
    };
    let weak = Arc::downgrade(cluster);
    let cancel = cluster.cancel.clone();
    // What the node runs with now: a reload happens when the content
    // differs from it (a `touch`, a rewrite with the same text, a file
    // replaced by an identical copy change nothing).
    let mut current = std::fs::read(&path).ok();
    kernel.tasks.spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                e = rx.recv() => if e.is_none() { return },
            }
            // Editors write in several steps: settle, then read once.
            tokio::time::sleep(Duration::from_millis(30)).await;
            while rx.try_recv().is_ok() {}
            let Some(cluster) = weak.upgrade() else { return };
            let text = match std::fs::read(&path) {
                Ok(text) if current.as_ref() == Some(&text) => continue,
                Ok(text) => text,
                Err(e) => {
                    tracing::error!(file = %path.display(), "cluster config not reloaded, the old one stays: {e}");
                    continue;
                }
            };
            let parsed = String::from_utf8(text.clone())
                .map_err(|e| ClusterConfigError {
                    path: path.clone(),
                    line: 0,
                    message: format!("not UTF-8 text: {e}"),
                })
                .and_then(|t| ClusterTable::parse(&t, &path));
            current = Some(text);
            match parsed {
                Ok(table) => {
                    tracing::info!(file = %path.display(), nodes = table.nodes.len(), "cluster config reloaded");
                    table.warn_unknown_options();
                    cluster.apply(table);
                }
                Err(e) => tracing::error!("cluster config not reloaded, the old one stays: {e}"),
            }
        }
    });
    Ok(())
}
