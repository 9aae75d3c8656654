//! Crash-safe files: every write goes to a temporary file in the same directory, is synced,
//! renamed over the target and the directory synced, so a `kill -9` at any moment leaves
//! either the old or the new content, never a mix.
//!
//! A sync can take milliseconds (seconds on a busy disk), so every function here that waits
//! on the disk does it through `on_disk`, which hands the runtime worker's other tasks to
//! another thread first: other clients are served while one call waits.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Runs `f`, which blocks on the disk, without holding up the runtime worker it is called
/// on (tokio's `block_in_place`). Outside a multi-thread runtime (unit tests, start-up
/// before the runtime serves anyone) it just runs `f`.
pub fn on_disk<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Writes `data` to `path` atomically (mode 0600).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    on_disk(|| write_atomic_here(path, data))
}

fn write_atomic_here(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // A leading dot keeps temporaries out of the `*.xml` scan at start-up.
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` (absent is fine) and syncs its directory.
pub fn remove(path: &Path) -> io::Result<()> {
    on_disk(|| remove_here(path))
}

fn remove_here(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes temporaries a crash left behind in `dir`.
pub fn clean_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call waiting on the disk must not hold up the only worker: the second task runs
    /// (and unblocks the first) while the first is inside `on_disk`. Without the hand-off
    /// the first task would wait out its 10 s and report that nobody ran.
    #[test]
    fn on_disk_lets_other_tasks_run_on_a_single_worker() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let waiter = rt.spawn(async move {
            let _ = entered_tx.send(());
            on_disk(|| rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok())
        });
        let other = rt.spawn(async move {
            let _ = entered_rx.await;
            let _ = tx.send(());
        });
        rt.block_on(async {
            other.await.unwrap();
            assert!(
                waiter.await.unwrap(),
                "the other task did not run during on_disk"
            );
        });
    }

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.xml");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        std::fs::write(dir.path().join("sub/.b.xml.tmp-1"), b"x").unwrap();
        clean_temporaries(&dir.path().join("sub"));
        assert_eq!(fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(!p.exists());
    }
}
