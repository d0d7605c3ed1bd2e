//! The data directory: `wal/`, `snap/` and a `LOCK` file held with `flock` for the life of the
//! process, so that a second node process on the same directory refuses to start instead of
//! interleaving writes with the first. The directories are fsynced after creation, so a power
//! loss never takes `wal/` or `snap/` away from the files synced inside them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

const LOCK_FILE_NAME: &str = "LOCK";
const WAL_DIR_NAME: &str = "wal";
const SNAP_DIR_NAME: &str = "snap";
/// The holder's pid is informative only; it is read with this bound.
const LOCK_CONTENT_BYTES_MAX: u64 = 64;

#[derive(Debug, Error)]
pub enum DataDirError {
    #[error("data directory: I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "data directory {path} is locked by another process ({holder}): \
         is another node running on it?"
    )]
    Locked { path: PathBuf, holder: String },
}

/// A locked data directory. The lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `root`, `root/wal`, `root/snap` and locks `root/LOCK`.
    pub fn lock(root: &Path) -> Result<DataDir, DataDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { path, source }
        };
        for dir in [
            root.to_path_buf(),
            root.join(WAL_DIR_NAME),
            root.join(SNAP_DIR_NAME),
        ] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        // The new directory entries must survive a power loss like the files inside them: the
        // WAL and the snapshot store fsync wal/ and snap/, which keeps their files but not the
        // directories themselves (found by the disk-fault campaigns, proto-docs/storage.md).
        sync_dir(root).map_err(io(root))?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(io(parent))?;
        }
        let lock_path = root.join(LOCK_FILE_NAME);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if !try_lock_exclusive(&lock).map_err(io(&lock_path))? {
            let mut holder = String::new();
            let _ = (&lock)
                .take(LOCK_CONTENT_BYTES_MAX)
                .read_to_string(&mut holder);
            let holder = format!("holder: {}", holder.trim());
            return Err(DataDirError::Locked {
                path: root.to_path_buf(),
                holder,
            });
        }
        let record_pid = |lock: &mut File| -> io::Result<()> {
            lock.set_len(0)?;
            lock.seek(SeekFrom::Start(0))?;
            writeln!(lock, "pid {}", std::process::id())
        };
        record_pid(&mut lock).map_err(io(&lock_path))?;
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.root.join(WAL_DIR_NAME)
    }

    pub fn snap_dir(&self) -> PathBuf {
        self.root.join(SNAP_DIR_NAME)
    }
}

/// Fsyncs a directory so that the entries created in it are durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An exclusive advisory lock (`flock` on Linux). Returns false if another process holds it.
fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(error)) => Err(error),
    }
}
