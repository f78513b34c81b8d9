//! Watching the manifest path and publishing new snapshots.

use super::parse::{IgnoredKinds, LoadError, Loaded, is_manifest, load};
use crate::source::SourceState;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch as channel};
use tokio::task::JoinHandle;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("initial load failed: {0}")]
    Initial(#[from] LoadError),
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A running watch. Dropping it stops watching.
#[derive(Debug)]
pub struct FileWatch {
    rx: channel::Receiver<SourceState>,
    _watcher: RecommendedWatcher,
    task: JoinHandle<()>,
}

impl FileWatch {
    pub fn subscribe(&self) -> channel::Receiver<SourceState> {
        self.rx.clone()
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Loads `path` once (failing if that load fails: there is no last good config yet), then
/// watches it. Changes are debounced by `debounce`, so that an editor's save or a
/// `kubectl cp` of many files becomes one reload. A reload that yields an identical snapshot
/// publishes nothing.
///
/// The debounce is the reload task's own wait: a debouncer thread (notify-debouncer-full)
/// woke every quarter of the debounce, 400 times a second at 10 ms, for the process's
/// whole life, and each wake took the core from a proxy thread.
pub fn watch(path: &Path, debounce: Duration) -> Result<FileWatch, WatchError> {
    let mut ignored = IgnoredKinds::default();
    let loaded = load(path)?;
    log_loaded(&loaded, &mut ignored);
    let (tx, rx) = channel::channel(SourceState {
        snapshot: Arc::new(loaded.snapshot),
        error: None,
        generation: 1,
    });

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let root = path.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match res {
            Ok(e) => changes_content(&e.kind) && e.paths.iter().any(|p| concerns(&root, p)),
            // Errors (e.g. a queue overflow) may hide changes: reload to be safe.
            Err(_) => true,
        };
        if relevant {
            let _ = events_tx.send(());
        }
    })
    .map_err(|source| WatchError::Notify {
        path: path.to_path_buf(),
        source,
    })?;
    // A single file is watched through its directory: editors and `kubectl` replace files by
    // renaming a new one over them, which would orphan a watch on the file itself.
    let (target, mode) = if path.is_dir() {
        (path.to_path_buf(), RecursiveMode::Recursive)
    } else {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        (parent.to_path_buf(), RecursiveMode::NonRecursive)
    };
    watcher
        .watch(&target, mode)
        .map_err(|source| WatchError::Notify {
            path: target.clone(),
            source,
        })?;

    let task = tokio::spawn(reload_loop(
        path.to_path_buf(),
        events_rx,
        debounce,
        tx,
        ignored,
    ));
    Ok(FileWatch {
        rx,
        _watcher: watcher,
        task,
    })
}

/// Whether a change to `changed` can change what `load(root)` reads: the watched file
/// itself, a manifest file, or a directory. Other files (logs, editor swap files) are
/// ignored, so that a log written next to the manifests cannot cause a reload loop.
fn concerns(root: &Path, changed: &Path) -> bool {
    if changed == root {
        return true;
    }
    if root.is_file() {
        // Only the file itself matters; its directory is watched for renames over it.
        return false;
    }
    let hidden = changed
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    !hidden && (changed.is_dir() || is_manifest(changed) || !changed.exists())
}

/// Our own reads must not trigger reloads, or the watcher would loop forever.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

async fn reload_loop(
    path: PathBuf,
    mut events: mpsc::UnboundedReceiver<()>,
    debounce: Duration,
    tx: channel::Sender<SourceState>,
    mut ignored: IgnoredKinds,
) {
    while events.recv().await.is_some() {
        // Quiet for `debounce` since the last change, then one reload for all of them.
        loop {
            tokio::time::sleep(debounce).await;
            let mut more = false;
            while events.try_recv().is_ok() {
                more = true;
            }
            if !more {
                break;
            }
        }
        let p = path.clone();
        let result = match tokio::task::spawn_blocking(move || load(&p)).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "manifest reload task failed");
                continue;
            }
        };
        match result {
            Ok(loaded) => {
                log_loaded(&loaded, &mut ignored);
                tx.send_if_modified(|state| {
                    let changed = *state.snapshot != loaded.snapshot;
                    let had_error = state.error.take().is_some();
                    if changed {
                        state.snapshot = Arc::new(loaded.snapshot);
                        state.generation += 1;
                    }
                    changed || had_error
                });
            }
            Err(err) => {
                warn!(
                    path = %path.display(),
                    "manifests rejected, the last good config keeps serving: {err}"
                );
                tx.send_modify(|state| state.error = Some(err.to_string().into()));
            }
        }
    }
}

fn log_loaded(loaded: &Loaded, ignored: &mut IgnoredKinds) {
    info!(
        objects = loaded.snapshot.len(),
        files = loaded.files.len(),
        "manifests loaded"
    );
    let fresh = ignored.fresh(loaded);
    if !fresh.is_empty() {
        info!(kinds = ?fresh, "ignoring kinds Weir does not read");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n";

    async fn next(rx: &mut channel::Receiver<SourceState>) -> SourceState {
        timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("no update within 10s")
            .unwrap();
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn edits_are_published_and_bad_edits_keep_the_last_good_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ns.yaml");
        std::fs::write(&file, NS).unwrap();
        let w = watch(dir.path(), Duration::from_millis(50)).unwrap();
        let mut rx = w.subscribe();
        assert_eq!(rx.borrow_and_update().snapshot.namespaces.len(), 1);

        std::fs::write(&file, format!("{NS}---\n{}", NS.replace("one", "two"))).unwrap();
        let s = next(&mut rx).await;
        assert_eq!(s.snapshot.namespaces.len(), 2);
        assert_eq!(s.generation, 2);
        assert!(s.error.is_none());

        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: [}\n",
        )
        .unwrap();
        let s = next(&mut rx).await;
        assert_eq!(s.snapshot.namespaces.len(), 2, "last good snapshot kept");
        assert_eq!(s.generation, 2);
        let err = s.error.expect("the rejection is reported");
        assert!(err.to_string().contains("ns.yaml document 1"), "{err}");

        std::fs::write(&file, NS).unwrap();
        let s = next(&mut rx).await;
        assert_eq!(s.snapshot.namespaces.len(), 1);
        assert!(s.error.is_none());
        assert_eq!(s.generation, 3);
    }

    #[tokio::test]
    async fn a_single_file_survives_rename_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("all.yaml");
        std::fs::write(&file, NS).unwrap();
        let w = watch(&file, Duration::from_millis(50)).unwrap();
        let mut rx = w.subscribe();
        for round in 0..3 {
            let tmp = dir.path().join(".all.yaml.tmp");
            let extra = format!("{NS}---\n{}", NS.replace("one", &format!("r{round}")));
            std::fs::write(&tmp, extra).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
            let s = next(&mut rx).await;
            assert_eq!(
                s.snapshot.namespaces[1].metadata.name.as_deref(),
                Some(format!("r{round}").as_str())
            );
        }
    }

    /// A mounted ConfigMap is updated as the kubelet does it: the new files go into a new
    /// hidden directory, `..data` is swapped to it by a rename, the old one is removed.
    #[tokio::test]
    async fn a_mounted_config_map_update_is_published() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let version = |n: u32, text: &str| {
            let d = dir
                .path()
                .join(format!("..2026_01_01_00_00_0{n}.000000001"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("ns.yaml"), text).unwrap();
            d
        };
        let first = version(1, NS);
        symlink(first.file_name().unwrap(), dir.path().join("..data")).unwrap();
        symlink("..data/ns.yaml", dir.path().join("ns.yaml")).unwrap();
        let w = watch(dir.path(), Duration::from_millis(50)).unwrap();
        let mut rx = w.subscribe();
        assert_eq!(rx.borrow_and_update().snapshot.namespaces.len(), 1);

        let second = version(2, &format!("{NS}---\n{}", NS.replace("one", "two")));
        let tmp = dir.path().join("..data_tmp");
        symlink(second.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
        std::fs::remove_dir_all(&first).unwrap();
        let s = next(&mut rx).await;
        assert_eq!(s.snapshot.namespaces.len(), 2);
        assert!(s.error.is_none());
    }

    #[test]
    fn the_initial_load_must_succeed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.yaml"), "kind: [").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(async { watch(dir.path(), Duration::from_millis(50)).unwrap_err() });
        assert!(matches!(err, WatchError::Initial(_)));
    }
}
