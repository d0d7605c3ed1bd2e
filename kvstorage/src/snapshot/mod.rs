//! Snapshot files: the state machine after applying every entry up to `meta.last_index`.
//!
//! - Written to a temporary file, fsynced, renamed, directory fsynced: a crash leaves either
//!   the old set of snapshots or the new one, plus a `.tmp` file that `open` removes.
//! - Readable in chunks `(offset, len)` of the whole file (header included) for streaming to a
//!   follower; the follower's `SnapshotWriter` takes them in order, verifies, installs.
//! - `open` verifies every snapshot; a corrupt one is reported (`tracing::error!` and
//!   `corrupt()`) and skipped, never silently: `latest()` falls back to an older valid one.
//! - At most `SNAPSHOTS_KEPT_MAX` valid snapshots are kept.
//!
//! Format: `file.rs`.

pub mod file;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use kvraft::message::SnapshotMeta;

use file::{SnapshotHeader, IO_CHUNK_BYTES};

/// Valid snapshots kept: the newest, and one to fall back to if the newest turns out corrupt.
pub const SNAPSHOTS_KEPT_MAX: usize = 2;
/// The largest chunk `read_chunk` returns (bounds the memory of one streaming step).
pub const CHUNK_BYTES_MAX: u64 = 16 << 20;
/// The largest snapshot body accepted from a peer.
pub const SNAPSHOT_BODY_BYTES_MAX: u64 = 64 << 30;

const SNAPSHOT_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".tmp";

/// Distinguishes temporary files of concurrent receivers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot: I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot: corrupt snapshot {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("snapshot: chunk at offset {offset}, expected offset {expected_offset}")]
    OutOfOrder { expected_offset: u64, offset: u64 },
    #[error("snapshot: {bytes} bytes exceed the limit of {bytes_max}")]
    TooLarge { bytes: u64, bytes_max: u64 },
    #[error("snapshot: cannot encode meta: {0}")]
    Encode(String),
}

/// A snapshot file that failed verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptSnapshot {
    pub path: PathBuf,
    pub reason: String,
}

/// The snapshots of one `snap/` directory.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// Verified snapshots, oldest first.
    valid: Vec<(SnapshotMeta, PathBuf)>,
    corrupt: Vec<CorruptSnapshot>,
}

impl SnapshotStore {
    /// Opens `dir` (creating it), removes leftover temporary files and verifies every snapshot.
    pub fn open(dir: &Path) -> Result<SnapshotStore, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let mut store = SnapshotStore {
            dir: dir.to_path_buf(),
            valid: vec![],
            corrupt: vec![],
        };
        for item in fs::read_dir(dir).map_err(io)? {
            let path = item.map_err(io)?.path();
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            if name.ends_with(TMP_SUFFIX) {
                fs::remove_file(&path).map_err(io)?;
            } else if name.ends_with(SNAPSHOT_SUFFIX) {
                store.admit(path)?;
            }
        }
        store.sort();
        Ok(store)
    }

    /// Verifies one file and files it as valid or corrupt.
    fn admit(&mut self, path: PathBuf) -> Result<(), SnapshotError> {
        match file::verify(&path) {
            Ok(header) => self.valid.push((header.meta, path)),
            Err(SnapshotError::Corrupt { path, reason }) => {
                tracing::error!(
                    "snapshot: corrupt snapshot {} skipped: {reason}; falling back to an older \
                     one if kept",
                    path.display()
                );
                self.corrupt.push(CorruptSnapshot { path, reason });
            }
            Err(error) => return Err(error),
        }
        Ok(())
    }

    fn sort(&mut self) {
        self.valid
            .sort_by_key(|(meta, _)| (meta.last_index, meta.last_term));
    }

    /// The newest verified snapshot.
    pub fn latest(&self) -> Option<(SnapshotMeta, PathBuf)> {
        self.valid.last().cloned()
    }

    /// The verified snapshot described by `meta`, if kept (the two newest are): a leader may
    /// still send the older one while its log has not been compacted past it.
    pub fn find(&self, meta: &SnapshotMeta) -> Option<PathBuf> {
        (self.valid.iter())
            .find(|(kept, _)| kept == meta)
            .map(|(_, path)| path.clone())
    }

    /// Snapshots that failed verification at open (kept on disk for the operator).
    pub fn corrupt(&self) -> &[CorruptSnapshot] {
        &self.corrupt
    }

    /// Writes a snapshot from `body` (the state machine's serialization) and installs it.
    pub fn write(
        &mut self,
        meta: &SnapshotMeta,
        mut body: impl Read,
    ) -> Result<PathBuf, SnapshotError> {
        let tmp = self.draft_path();
        let verified = write_file(&tmp, meta, |out| io::copy(&mut body, out).map(|_| ()))?;
        self.install(verified)
    }

    /// A path for a new snapshot file. Take it under the store's lock, then write the file
    /// with `write_file` without the lock, so readers of the store (a leader sending its
    /// snapshot) never wait for a long write.
    pub fn draft_path(&self) -> PathBuf {
        self.tmp_path()
    }

    /// Moves a file written and verified by `write_file` into place: rename, directory fsync,
    /// prune. Cheap: the file is not read again.
    pub fn install(&mut self, verified: VerifiedSnapshot) -> Result<PathBuf, SnapshotError> {
        self.place(&verified.tmp, verified.meta)
            .map(|(_, path)| path)
    }

    /// The length of a snapshot file (what a follower will receive).
    pub fn file_bytes(&self, path: &Path) -> Result<u64, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        Ok(fs::metadata(path).map_err(io)?.len())
    }

    /// Reads `len_bytes` (at most `CHUNK_BYTES_MAX`, fewer at the end) of a snapshot file from
    /// `offset`, for streaming to a follower.
    pub fn read_chunk(
        &self,
        path: &Path,
        offset: u64,
        len_bytes: u64,
    ) -> Result<Vec<u8>, SnapshotError> {
        if len_bytes > CHUNK_BYTES_MAX {
            return Err(SnapshotError::TooLarge {
                bytes: len_bytes,
                bytes_max: CHUNK_BYTES_MAX,
            });
        }
        let io = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut chunk = Vec::with_capacity(len_bytes as usize);
        file.take(len_bytes).read_to_end(&mut chunk).map_err(io)?;
        Ok(chunk)
    }

    /// Opens a verified snapshot's body for the state machine to restore from.
    pub fn open_body(&self, path: &Path) -> Result<(SnapshotMeta, io::Take<File>), SnapshotError> {
        let header = file::verify(path)?;
        let io = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut body = File::open(path).map_err(io)?;
        body.seek(SeekFrom::Start(header.body_offset()))
            .map_err(io)?;
        Ok((header.meta, body.take(header.body_bytes)))
    }

    /// Starts receiving a snapshot in chunks.
    pub fn receive(&self) -> Result<SnapshotWriter, SnapshotError> {
        let path = self.tmp_path();
        let file = File::create(&path).map_err(|source| SnapshotError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(SnapshotWriter {
            path,
            file,
            received_bytes: 0,
            writeback: crate::paced::Writeback::default(),
            header: None,
            prefix: Vec::new(),
        })
    }

    /// Verifies a complete snapshot file that arrived by other means and installs it (the file
    /// is moved, or copied if it lives on another file system).
    pub fn install_file(&mut self, path: &Path) -> Result<SnapshotMeta, SnapshotError> {
        file::verify(path)?;
        let tmp = self.tmp_path();
        let io = |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        };
        if fs::rename(path, &tmp).is_err() {
            fs::copy(path, &tmp).map_err(io)?;
            fs::remove_file(path).map_err(io)?;
        }
        let synced = OpenOptions::new()
            .write(true)
            .open(&tmp)
            .and_then(|file| file.sync_all());
        synced.map_err(|source| SnapshotError::Io {
            path: tmp.clone(),
            source,
        })?;
        self.install_verified(&tmp).map(|(meta, _)| meta)
    }

    /// Verifies a synced temporary file in `dir`, renames it to its final name, fsyncs the
    /// directory, then prunes old snapshots.
    fn install_verified(&mut self, tmp: &Path) -> Result<(SnapshotMeta, PathBuf), SnapshotError> {
        let header = match file::verify(tmp) {
            Ok(header) => header,
            Err(error) => {
                let _ = fs::remove_file(tmp);
                return Err(error);
            }
        };
        let SnapshotHeader { meta, .. } = header;
        self.place(tmp, meta)
    }

    fn place(
        &mut self,
        tmp: &Path,
        meta: SnapshotMeta,
    ) -> Result<(SnapshotMeta, PathBuf), SnapshotError> {
        let name = format!(
            "{:016x}-{:016x}{SNAPSHOT_SUFFIX}",
            meta.last_index, meta.last_term
        );
        let path = self.dir.join(name);
        fs::rename(tmp, &path).map_err(|source| SnapshotError::Io {
            path: path.clone(),
            source,
        })?;
        self.sync_dir()?;
        self.valid.retain(|(_, kept)| *kept != path);
        self.valid.push((meta.clone(), path.clone()));
        self.sort();
        self.prune()?;
        Ok((meta, path))
    }

    /// Deletes valid snapshots beyond the newest `SNAPSHOTS_KEPT_MAX`.
    fn prune(&mut self) -> Result<(), SnapshotError> {
        let excess = self.valid.len().saturating_sub(SNAPSHOTS_KEPT_MAX);
        for (_, path) in self.valid.drain(..excess) {
            fs::remove_file(&path).map_err(|source| SnapshotError::Io { path, source })?;
        }
        if excess > 0 {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: self.dir.clone(),
            source,
        };
        File::open(&self.dir).map_err(io)?.sync_all().map_err(io)
    }

    fn tmp_path(&self) -> PathBuf {
        let counter = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{}-{counter}{TMP_SUFFIX}", std::process::id()))
    }
}

/// A snapshot file written, fsynced and read back with its checksums verified, not yet
/// installed (`SnapshotStore::install`).
#[derive(Debug)]
pub struct VerifiedSnapshot {
    tmp: PathBuf,
    meta: SnapshotMeta,
}

/// Writes a snapshot file at `tmp` (a `SnapshotStore::draft_path`): header, the body that
/// `write_body` streams (buffered, checksummed as it goes), fsync; then reads it back and
/// verifies length and checksums (STYLE: check after reading back). Needs no lock on the
/// store. On error the file is removed.
pub fn write_file(
    tmp: &Path,
    meta: &SnapshotMeta,
    write_body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<VerifiedSnapshot, SnapshotError> {
    let result = write_unverified(tmp, meta, write_body).and_then(|()| file::verify(tmp));
    match result {
        Ok(header) => Ok(VerifiedSnapshot {
            tmp: tmp.to_path_buf(),
            meta: header.meta,
        }),
        Err(error) => {
            let _ = fs::remove_file(tmp);
            Err(error)
        }
    }
}

fn write_unverified(
    tmp: &Path,
    meta: &SnapshotMeta,
    write_body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: tmp.to_path_buf(),
        source,
    };
    let meta_encoded = file::encode_meta(meta)?;
    let mut out = File::create(tmp).map_err(io)?;
    // Placeholder header: body length and CRC are known only at the end.
    out.write_all(&file::encode_header(&meta_encoded, 0, 0))
        .map_err(io)?;
    let mut body = Checksummed {
        inner: io::BufWriter::with_capacity(IO_CHUNK_BYTES, crate::paced::PacedFile::new(&out)),
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    write_body(&mut body).map_err(io)?;
    body.inner.flush().map_err(io)?;
    let Checksummed {
        inner,
        hasher,
        bytes,
    } = body;
    drop(inner);
    let (body_bytes, crc) = (bytes, hasher.finalize());
    let header = file::encode_header(&meta_encoded, body_bytes, crc);
    out.write_all_at(&header, 0).map_err(io)?;
    out.sync_all().map_err(io)
}

/// Counts and checksums what passes through it.
struct Checksummed<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Receives a snapshot file in chunks, in order. Nothing is visible until `finish` verified
/// and installed it; a crash midway leaves only a `.tmp` file that `SnapshotStore::open`
/// removes.
#[derive(Debug)]
pub struct SnapshotWriter {
    path: PathBuf,
    file: File,
    received_bytes: u64,
    /// Paced writeback (`crate::paced`).
    writeback: crate::paced::Writeback,
    header: Option<SnapshotHeader>,
    /// The first bytes, kept until the header and meta can be parsed.
    prefix: Vec<u8>,
}

impl SnapshotWriter {
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// Appends a chunk. `offset` must equal the bytes received so far.
    pub fn write_chunk(&mut self, offset: u64, chunk: &[u8]) -> Result<(), SnapshotError> {
        if offset != self.received_bytes {
            let expected_offset = self.received_bytes;
            return Err(SnapshotError::OutOfOrder {
                expected_offset,
                offset,
            });
        }
        let end = offset + chunk.len() as u64;
        self.check_header(chunk, end)?;
        let io = |source| SnapshotError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(chunk).map_err(io)?;
        self.writeback
            .wrote(&self.file, chunk.len() as u64)
            .map_err(io)?;
        self.received_bytes = end;
        Ok(())
    }

    /// Parses the header as soon as it is complete, then refuses bytes beyond its length.
    fn check_header(&mut self, chunk: &[u8], end: u64) -> Result<(), SnapshotError> {
        let corrupt = |reason: String| SnapshotError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        if self.header.is_none() {
            let wanted = (file::SNAPSHOT_HEADER_BYTES + file::META_BYTES_MAX)
                .saturating_sub(self.prefix.len());
            self.prefix
                .extend_from_slice(&chunk[..chunk.len().min(wanted)]);
            self.header = file::parse_header(&self.prefix).map_err(corrupt)?;
            if let Some(header) = &self.header {
                if header.body_bytes > SNAPSHOT_BODY_BYTES_MAX {
                    let (bytes, bytes_max) = (header.body_bytes, SNAPSHOT_BODY_BYTES_MAX);
                    return Err(SnapshotError::TooLarge { bytes, bytes_max });
                }
                self.prefix = Vec::new();
            }
        }
        if let Some(header) = &self.header {
            if end > header.file_bytes() {
                let (bytes, bytes_max) = (end, header.file_bytes());
                return Err(SnapshotError::TooLarge { bytes, bytes_max });
            }
        }
        Ok(())
    }

    /// Fsyncs, verifies the whole file and installs it atomically.
    pub fn finish(self, store: &mut SnapshotStore) -> Result<SnapshotMeta, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.sync_all().map_err(io)?;
        drop(self.file);
        store.install_verified(&self.path).map(|(meta, _)| meta)
    }

    /// Gives up: removes the temporary file.
    pub fn abort(self) -> Result<(), SnapshotError> {
        drop(self.file);
        fs::remove_file(&self.path).map_err(|source| SnapshotError::Io {
            path: self.path,
            source,
        })
    }
}
