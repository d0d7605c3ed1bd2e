//! The page-cache model over a backing directory (see the module doc of `fs` for the rules).
//!
//! Every operation is applied to the backing directory at once, so reads are plain reads.
//! What a power cut would take away is kept as undo information:
//!
//! - per file (keyed by the backing inode number): its size at the last completed fsync and
//!   the original bytes of every range overwritten or cut since (`FileState`);
//! - per directory changed since its last fsync: its listing at that fsync (`dirs`);
//! - entries removed or replaced while a durable listing still names them are moved to a
//!   hidden trash directory instead of being deleted, so a crash can put them back.
//!
//! A crash (`lose_unsynced`, `torn`) writes the saved bytes back, cuts every file to its
//! durable size, and rebuilds every changed directory from its durable listing.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Hidden directory at the backing root holding entries a durable listing still names.
pub const TRASH_DIR_NAME: &str = ".kvfs-trash";
/// A torn write keeps a prefix of whole sectors of this size.
pub const SECTOR_BYTES: u64 = 512;
/// Original bytes kept for unsynced overwrites, over all files. A write beyond it fails with
/// ENOSPC instead of growing the nemesis without bound (a node fsyncs long before).
pub const SAVED_BYTES_MAX: u64 = 1 << 30;
/// Bytes read at a time when looking for the used extent of a file to corrupt.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// What a crash command did (for the fault record).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashReport {
    /// Files whose unsynced data was discarded.
    pub files_reverted: u64,
    /// Unsynced bytes given back to their durable content (overwrites and cuts).
    pub bytes_restored: u64,
    /// Directory entries created, removed or renamed since the last directory fsync, undone.
    pub entries_undone: u64,
    /// Torn only: the last unsynced write, as (file, offset, bytes written, bytes kept).
    pub torn: Option<TornWrite>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TornWrite {
    pub file: String,
    pub offset: u64,
    pub written_bytes: u64,
    pub kept_bytes: u64,
}

/// What `corrupt` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Corruption {
    pub file: String,
    pub offset: u64,
    pub bit: u8,
}

/// Counters for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub files_unsynced: u64,
    pub dirs_unsynced: u64,
    pub saved_bytes: u64,
    pub fsync_errors_armed: u64,
    pub fsync_errors_injected: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no synced WAL segment other than the last and no snapshot to corrupt yet")]
    NothingToCorrupt,
}

/// A file changed since its last fsync.
#[derive(Debug)]
struct FileState {
    durable_bytes: u64,
    /// Original content of ranges below `durable_bytes` changed since: offset -> bytes,
    /// disjoint.
    saved: BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug)]
struct LastWrite {
    inode: u64,
    offset: u64,
    data: Vec<u8>,
}

/// An open file: the backing file and its inode.
#[derive(Debug)]
pub struct Handle {
    pub file: File,
    pub inode: u64,
}

pub struct Model {
    root: PathBuf,
    root_inode: u64,
    /// Backing inode -> path relative to the root ("" is the root).
    paths: HashMap<u64, PathBuf>,
    files: HashMap<u64, FileState>,
    /// Directories changed since their last fsync: their durable listing (name -> inode).
    dirs: HashMap<u64, BTreeMap<OsString, u64>>,
    last_write: Option<LastWrite>,
    saved_bytes: u64,
    fsync_errors_armed: u64,
    fsync_errors_injected: u64,
    /// Set just before a power cut: no fsync completes any more, so no node can sync between
    /// the first and the last SIGKILL of a whole-cluster power loss. The FUSE side holds
    /// fsync replies back while frozen (the caller blocks); a direct call fails with EIO and
    /// makes nothing durable. The crash clears it.
    frozen: bool,
    handles: HashMap<u64, Handle>,
    next_handle: u64,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// ENOENT, ENOSPC, ... as `io::Error` without a libc dependency.
pub mod code {
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EOPNOTSUPP: i32 = 95;
}

/// fallocate(2) modes this model supports: allocate (0) and keep-size (1).
const FALLOCATE_KEEP_SIZE: i32 = 1;

impl Model {
    /// Takes the backing directory as it is now as durable. Leftovers of an earlier trash are
    /// removed.
    pub fn open(root: &Path) -> Result<Model, ModelError> {
        let trash = root.join(TRASH_DIR_NAME);
        if trash.exists() {
            fs::remove_dir_all(&trash).map_err(io_at(&trash))?;
        }
        fs::create_dir_all(&trash).map_err(io_at(&trash))?;
        let root_inode = fs::metadata(root).map_err(io_at(root))?.ino();
        let mut model = Model {
            root: root.to_path_buf(),
            root_inode,
            paths: HashMap::new(),
            files: HashMap::new(),
            dirs: HashMap::new(),
            last_write: None,
            saved_bytes: 0,
            fsync_errors_armed: 0,
            fsync_errors_injected: 0,
            frozen: false,
            handles: HashMap::new(),
            next_handle: 1,
        };
        model.rebuild_paths().map_err(io_at(root))?;
        Ok(model)
    }

    pub fn root_inode(&self) -> u64 {
        self.root_inode
    }

    fn full(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// The backing path of an inode the kernel knows.
    pub fn path_of(&self, inode: u64) -> io::Result<PathBuf> {
        self.paths
            .get(&inode)
            .map(|relative| self.full(relative))
            .ok_or_else(|| errno(code::ENOENT))
    }

    fn relative_of(&self, inode: u64) -> io::Result<PathBuf> {
        self.paths
            .get(&inode)
            .cloned()
            .ok_or_else(|| errno(code::ENOENT))
    }

    fn is_trash(&self, parent: u64, name: &OsStr) -> bool {
        parent == self.root_inode && name == TRASH_DIR_NAME
    }

    /// Looks `name` up in `parent`: its metadata, and remembers its path.
    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> io::Result<fs::Metadata> {
        if self.is_trash(parent, name) {
            return Err(errno(code::ENOENT));
        }
        let relative = self.relative_of(parent)?.join(name);
        let metadata = fs::symlink_metadata(self.full(&relative))?;
        self.paths.insert(metadata.ino(), relative);
        Ok(metadata)
    }

    pub fn metadata(&self, inode: u64, handle: Option<u64>) -> io::Result<fs::Metadata> {
        match handle.and_then(|h| self.handles.get(&h)) {
            Some(open) => open.file.metadata(),
            None => fs::symlink_metadata(self.path_of(inode)?),
        }
    }

    pub fn handle(&self, handle: u64) -> io::Result<&Handle> {
        self.handles.get(&handle).ok_or_else(|| errno(code::EBADF))
    }

    fn add_handle(&mut self, file: File, inode: u64) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, Handle { file, inode });
        handle
    }

    pub fn open_file(&mut self, inode: u64, writable: bool) -> io::Result<u64> {
        let path = self.path_of(inode)?;
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        Ok(self.add_handle(file, inode))
    }

    pub fn release(&mut self, handle: u64) {
        self.handles.remove(&handle);
    }

    /// Creates a file (its entry is volatile until `parent` is fsynced, its data until the
    /// file is). Returns the metadata and a handle.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        exclusive: bool,
    ) -> io::Result<(fs::Metadata, u64)> {
        if self.is_trash(parent, name) {
            return Err(errno(code::EEXIST));
        }
        let relative = self.relative_of(parent)?.join(name);
        let path = self.full(&relative);
        let existed = fs::symlink_metadata(&path).is_ok();
        if existed && exclusive {
            return Err(errno(code::EEXIST));
        }
        self.touch_dir(parent)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(mode)
            .open(&path)?;
        let metadata = file.metadata()?;
        if !existed {
            self.files.insert(
                metadata.ino(),
                FileState {
                    durable_bytes: 0,
                    saved: BTreeMap::new(),
                },
            );
        }
        self.paths.insert(metadata.ino(), relative);
        let handle = self.add_handle(file, metadata.ino());
        Ok((metadata, handle))
    }

    pub fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> io::Result<fs::Metadata> {
        if self.is_trash(parent, name) {
            return Err(errno(code::EEXIST));
        }
        let relative = self.relative_of(parent)?.join(name);
        let path = self.full(&relative);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(errno(code::EEXIST));
        }
        self.touch_dir(parent)?;
        fs::create_dir(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        let metadata = fs::symlink_metadata(&path)?;
        self.paths.insert(metadata.ino(), relative);
        Ok(metadata)
    }

    pub fn read(&self, handle: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let file = &self.handle(handle)?.file;
        let mut buffer = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buffer.len() {
            match file.read_at(&mut buffer[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(count) => filled += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        buffer.truncate(filled);
        Ok(buffer)
    }

    /// The file's undo state, created at its first change since its last fsync.
    fn state_of(&mut self, inode: u64, file: &File) -> io::Result<&mut FileState> {
        match self.files.entry(inode) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                let durable_bytes = file.metadata()?.len();
                Ok(entry.insert(FileState {
                    durable_bytes,
                    saved: BTreeMap::new(),
                }))
            }
        }
    }

    /// Saves the original bytes of `[start, end)` below the durable size that are not saved
    /// yet.
    fn save_range(&mut self, inode: u64, file: &File, start: u64, end: u64) -> io::Result<()> {
        let state = self.state_of(inode, file)?;
        let end = end.min(state.durable_bytes);
        if start >= end {
            return Ok(());
        }
        let mut gaps = Vec::new();
        let mut cursor = start;
        // Ranges are disjoint: walk the ones that may overlap [start, end) in order.
        let first = state
            .saved
            .range(..=start)
            .next_back()
            .map_or(start, |(at, _)| *at);
        for (at, bytes) in state.saved.range(first..end) {
            let range_end = at + bytes.len() as u64;
            if range_end <= cursor {
                continue;
            }
            if *at > cursor {
                gaps.push((cursor, *at));
            }
            cursor = cursor.max(range_end);
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        let needed: u64 = gaps.iter().map(|(a, b)| b - a).sum();
        if self.saved_bytes + needed > SAVED_BYTES_MAX {
            return Err(errno(code::ENOSPC));
        }
        for (from, to) in gaps {
            let mut original = vec![0u8; (to - from) as usize];
            file.read_exact_at(&mut original, from)?;
            let state = self.state_of(inode, file)?;
            state.saved.insert(from, original);
        }
        self.saved_bytes += needed;
        Ok(())
    }

    pub fn write(&mut self, handle: u64, offset: u64, data: &[u8]) -> io::Result<usize> {
        let open = self.handle(handle)?;
        let (inode, file) = (open.inode, open.file.try_clone()?);
        self.save_range(inode, &file, offset, offset + data.len() as u64)?;
        file.write_all_at(data, offset)?;
        self.last_write = Some(LastWrite {
            inode,
            offset,
            data: data.to_vec(),
        });
        Ok(data.len())
    }

    /// truncate / ftruncate: a cut below the durable size keeps the cut bytes for a crash.
    pub fn set_size(&mut self, inode: u64, handle: Option<u64>, size: u64) -> io::Result<()> {
        let file = match handle.and_then(|h| self.handles.get(&h)) {
            Some(open) => open.file.try_clone()?,
            // Read too: the cut bytes are saved before the cut.
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path_of(inode)?)?,
        };
        let current = file.metadata()?.len();
        if size < current {
            self.save_range(inode, &file, size, current)?;
        } else {
            self.state_of(inode, &file)?;
        }
        file.set_len(size)
    }

    /// fallocate(2): allocate (mode 0) or allocate keeping the size (1). Space only: the
    /// content does not change, a crash cuts the file back to its durable size.
    pub fn fallocate(
        &mut self,
        handle: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> io::Result<()> {
        let flags = match mode {
            0 => rustix::fs::FallocateFlags::empty(),
            FALLOCATE_KEEP_SIZE => rustix::fs::FallocateFlags::KEEP_SIZE,
            _ => return Err(errno(code::EOPNOTSUPP)),
        };
        let open = self.handle(handle)?;
        let (inode, file) = (open.inode, open.file.try_clone()?);
        self.state_of(inode, &file)?;
        rustix::fs::fallocate(&file, flags, offset, length).map_err(io::Error::from)
    }

    /// fsync / fdatasync of a file: everything written to it so far becomes durable, unless
    /// an injected error is armed: then the call fails with EIO and the unsynced data of the
    /// file is dropped at once, like a kernel that marks the failed pages clean.
    pub fn fsync(&mut self, inode: u64, handle: Option<u64>) -> io::Result<()> {
        if self.frozen {
            return Err(errno(code::EIO));
        }
        if self.fsync_errors_armed > 0 {
            self.fsync_errors_armed -= 1;
            self.fsync_errors_injected += 1;
            if let Some(state) = self.files.remove(&inode) {
                let path = self.path_of(inode)?;
                let file = OpenOptions::new().write(true).open(&path)?;
                self.saved_bytes -= saved_total(&state);
                restore_file(&file, &state)?;
            }
            if self.last_write.as_ref().is_some_and(|w| w.inode == inode) {
                self.last_write = None;
            }
            return Err(errno(code::EIO));
        }
        match handle.and_then(|h| self.handles.get(&h)) {
            Some(open) => open.file.sync_data()?,
            None => File::open(self.path_of(inode)?)?.sync_data()?,
        }
        if let Some(state) = self.files.remove(&inode) {
            self.saved_bytes -= saved_total(&state);
        }
        if self.last_write.as_ref().is_some_and(|w| w.inode == inode) {
            self.last_write = None;
        }
        Ok(())
    }

    /// fsync of a directory: its current entries become durable.
    pub fn fsync_dir(&mut self, inode: u64) -> io::Result<()> {
        if self.frozen {
            return Err(errno(code::EIO));
        }
        File::open(self.path_of(inode)?)?.sync_all()?;
        self.dirs.remove(&inode);
        self.collect_trash()
    }

    /// The moment of a power cut (see `frozen`).
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    pub fn arm_fsync_error(&mut self) {
        self.fsync_errors_armed += 1;
    }

    pub fn disarm_fsync_error(&mut self) {
        self.fsync_errors_armed = 0;
    }

    pub fn status(&self) -> ModelStatus {
        ModelStatus {
            files_unsynced: self.files.len() as u64,
            dirs_unsynced: self.dirs.len() as u64,
            saved_bytes: self.saved_bytes,
            fsync_errors_armed: self.fsync_errors_armed,
            fsync_errors_injected: self.fsync_errors_injected,
        }
    }

    /// Records the durable listing of `dir` before its first change since its last fsync.
    fn touch_dir(&mut self, dir: u64) -> io::Result<()> {
        if self.dirs.contains_key(&dir) {
            return Ok(());
        }
        let listing = self.listing(&self.path_of(dir)?, dir == self.root_inode)?;
        self.dirs.insert(dir, listing);
        Ok(())
    }

    fn listing(&self, path: &Path, is_root: bool) -> io::Result<BTreeMap<OsString, u64>> {
        let mut listing = BTreeMap::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            if is_root && entry.file_name() == TRASH_DIR_NAME {
                continue;
            }
            listing.insert(entry.file_name(), entry.metadata()?.ino());
        }
        Ok(listing)
    }

    /// Whether a durable listing still names `inode`.
    fn named_durably(&self, inode: u64) -> bool {
        self.dirs.values().any(|l| l.values().any(|i| *i == inode))
    }

    /// Takes the entry at `relative` out of the namespace: into the trash while a durable
    /// listing names it, else deleted (with its undo state).
    fn discard(&mut self, relative: &Path, inode: u64, is_dir: bool) -> io::Result<()> {
        let path = self.full(relative);
        if self.named_durably(inode) {
            let target = self.root.join(TRASH_DIR_NAME).join(inode.to_string());
            fs::rename(&path, target)?;
        } else {
            if is_dir {
                fs::remove_dir(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            self.forget_inode(inode);
        }
        self.paths.remove(&inode);
        Ok(())
    }

    fn forget_inode(&mut self, inode: u64) {
        if let Some(state) = self.files.remove(&inode) {
            self.saved_bytes -= saved_total(&state);
        }
        self.dirs.remove(&inode);
        if self.last_write.as_ref().is_some_and(|w| w.inode == inode) {
            self.last_write = None;
        }
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr, is_dir: bool) -> io::Result<()> {
        if self.is_trash(parent, name) {
            return Err(errno(code::ENOENT));
        }
        let relative = self.relative_of(parent)?.join(name);
        let metadata = fs::symlink_metadata(self.full(&relative))?;
        if is_dir && fs::read_dir(self.full(&relative))?.next().is_some() {
            return Err(io::Error::from(io::ErrorKind::DirectoryNotEmpty));
        }
        if is_dir != metadata.is_dir() {
            return Err(errno(code::EINVAL));
        }
        self.touch_dir(parent)?;
        self.discard(&relative, metadata.ino(), is_dir)
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> io::Result<()> {
        if self.is_trash(parent, name) || self.is_trash(new_parent, new_name) {
            return Err(errno(code::EINVAL));
        }
        let from = self.relative_of(parent)?.join(name);
        let to = self.relative_of(new_parent)?.join(new_name);
        let moved = fs::symlink_metadata(self.full(&from))?;
        let replaced = fs::symlink_metadata(self.full(&to)).ok();
        if replaced.is_some() && no_replace {
            return Err(errno(code::EEXIST));
        }
        self.touch_dir(parent)?;
        self.touch_dir(new_parent)?;
        if let Some(target) = replaced {
            if target.ino() == moved.ino() {
                return Ok(());
            }
            if target.is_dir() && fs::read_dir(self.full(&to))?.next().is_some() {
                return Err(io::Error::from(io::ErrorKind::DirectoryNotEmpty));
            }
            self.discard(&to, target.ino(), target.is_dir())?;
        }
        fs::rename(self.full(&from), self.full(&to))?;
        self.move_paths(&from, &to);
        Ok(())
    }

    /// Updates remembered paths after a rename (a directory moves its whole subtree).
    fn move_paths(&mut self, from: &Path, to: &Path) {
        for path in self.paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(from) {
                *path = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    /// Entries of a directory as (inode, is_dir, name), the trash hidden.
    pub fn read_dir(&mut self, inode: u64) -> io::Result<Vec<(u64, bool, OsString)>> {
        let relative = self.relative_of(inode)?;
        let mut entries = Vec::new();
        for entry in fs::read_dir(self.full(&relative))? {
            let entry = entry?;
            let name = entry.file_name();
            if inode == self.root_inode && name == TRASH_DIR_NAME {
                continue;
            }
            let metadata = entry.metadata()?;
            self.paths.insert(metadata.ino(), relative.join(&name));
            entries.push((metadata.ino(), metadata.is_dir(), name));
        }
        entries.sort_by(|a, b| a.2.cmp(&b.2));
        Ok(entries)
    }

    /// Removes trash entries no durable listing names any more.
    fn collect_trash(&mut self) -> io::Result<()> {
        let trash = self.root.join(TRASH_DIR_NAME);
        for entry in fs::read_dir(&trash)? {
            let entry = entry?;
            let inode = entry.metadata()?.ino();
            if !self.named_durably(inode) {
                remove_any(&entry.path())?;
                self.forget_inode(inode);
            }
        }
        Ok(())
    }

    /// Power loss: every unsynced byte and directory change is discarded. With `torn`, the
    /// last unsynced write then survives as a random whole-sector prefix shorter than itself.
    pub fn crash(&mut self, torn: Option<&mut Rng>) -> Result<CrashReport, ModelError> {
        let root = self.root.clone();
        let mut report = CrashReport::default();
        self.frozen = false;
        let located = walk(&root).map_err(io_at(&root))?;
        for (inode, state) in std::mem::take(&mut self.files) {
            let Some(relative) = located.get(&inode) else {
                continue;
            };
            let path = self.full(relative);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_at(&path))?;
            restore_file(&file, &state).map_err(io_at(&path))?;
            report.files_reverted += 1;
            report.bytes_restored += saved_total(&state);
        }
        self.saved_bytes = 0;
        let last_write = self.last_write.take();
        if let (Some(rng), Some(write)) = (torn, last_write) {
            if let Some(relative) = located.get(&write.inode) {
                report.torn = Some(self.tear(relative, &write, rng)?);
            }
        }
        report.entries_undone = self.restore_dirs()?;
        self.dirs.clear();
        let trash = root.join(TRASH_DIR_NAME);
        remove_any(&trash).map_err(io_at(&trash))?;
        fs::create_dir(&trash).map_err(io_at(&trash))?;
        self.rebuild_paths().map_err(io_at(&root))?;
        Ok(report)
    }

    fn tear(
        &self,
        relative: &Path,
        write: &LastWrite,
        rng: &mut Rng,
    ) -> Result<TornWrite, ModelError> {
        let sectors = (write.data.len() as u64).saturating_sub(1) / SECTOR_BYTES;
        let kept_bytes = if sectors == 0 {
            0
        } else {
            rng.below(sectors + 1) * SECTOR_BYTES
        };
        let path = self.full(relative);
        if kept_bytes > 0 {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_at(&path))?;
            file.write_all_at(&write.data[..kept_bytes as usize], write.offset)
                .map_err(io_at(&path))?;
            file.sync_data().map_err(io_at(&path))?;
        }
        Ok(TornWrite {
            file: relative.display().to_string(),
            offset: write.offset,
            written_bytes: write.data.len() as u64,
            kept_bytes,
        })
    }

    /// Puts every changed directory back to its durable listing: first every entry that
    /// differs goes to the trash, then every durable entry comes back from wherever it is.
    fn restore_dirs(&mut self) -> Result<u64, ModelError> {
        let root = self.root.clone();
        let trash = root.join(TRASH_DIR_NAME);
        let mut undone = 0;
        let dirs: Vec<(u64, BTreeMap<OsString, u64>)> =
            self.dirs.iter().map(|(d, l)| (*d, l.clone())).collect();
        for (dir, durable) in &dirs {
            let located = walk(&root).map_err(io_at(&root))?;
            let Some(relative) = located.get(dir) else {
                continue;
            };
            let path = root.join(relative);
            let current = self
                .listing(&path, *dir == self.root_inode)
                .map_err(io_at(&path))?;
            for (name, inode) in current {
                if durable.get(&name) != Some(&inode) {
                    let from = path.join(&name);
                    fs::rename(&from, trash.join(inode.to_string())).map_err(io_at(&from))?;
                    undone += 1;
                }
            }
        }
        for (dir, durable) in &dirs {
            let located = walk(&root).map_err(io_at(&root))?;
            let Some(relative) = located.get(dir) else {
                continue;
            };
            let path = root.join(relative);
            for (name, inode) in durable {
                let target = path.join(name);
                if fs::symlink_metadata(&target).is_ok_and(|m| m.ino() == *inode) {
                    continue;
                }
                if let Some(source) = located.get(inode) {
                    fs::rename(root.join(source), &target).map_err(io_at(&target))?;
                    undone += 1;
                }
            }
        }
        Ok(undone)
    }

    /// Flips one bit in the synced data of a non-last WAL segment or a snapshot.
    pub fn corrupt(&mut self, rng: &mut Rng) -> Result<Corruption, ModelError> {
        let root = self.root.clone();
        let located = walk(&root).map_err(io_at(&root))?;
        let mut candidates: Vec<PathBuf> = Vec::new();
        let mut segments: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
        for (inode, relative) in &located {
            if relative.starts_with(TRASH_DIR_NAME) || self.files.contains_key(inode) {
                continue;
            }
            match relative.extension().and_then(OsStr::to_str) {
                Some("snap") => candidates.push(relative.clone()),
                Some("wal") => {
                    let dir = relative.parent().map(Path::to_path_buf).unwrap_or_default();
                    segments.entry(dir).or_default().push(relative.clone());
                }
                _ => {}
            }
        }
        for (_, mut names) in segments {
            names.sort();
            names.pop();
            candidates.extend(names);
        }
        candidates.sort();
        while !candidates.is_empty() {
            let at = rng.below(candidates.len() as u64) as usize;
            let relative = candidates.swap_remove(at);
            let path = root.join(&relative);
            let used = used_bytes(&path).map_err(io_at(&path))?;
            if used == 0 {
                continue;
            }
            let offset = rng.below(used);
            let bit = rng.below(8) as u8;
            flip_bit(&path, offset, bit).map_err(io_at(&path))?;
            return Ok(Corruption {
                file: relative.display().to_string(),
                offset,
                bit,
            });
        }
        Err(ModelError::NothingToCorrupt)
    }

    fn rebuild_paths(&mut self) -> io::Result<()> {
        self.paths = walk(&self.root)?
            .into_iter()
            .filter(|(_, relative)| !relative.starts_with(TRASH_DIR_NAME))
            .collect();
        Ok(())
    }
}

fn saved_total(state: &FileState) -> u64 {
    state.saved.values().map(|b| b.len() as u64).sum()
}

/// Writes the saved original bytes back and cuts the file to its durable size.
fn restore_file(file: &File, state: &FileState) -> io::Result<()> {
    for (offset, bytes) in &state.saved {
        file.write_all_at(bytes, *offset)?;
    }
    file.set_len(state.durable_bytes)?;
    file.sync_all()
}

/// Every inode under `root` (the root itself as ""), trash included.
fn walk(root: &Path) -> io::Result<HashMap<u64, PathBuf>> {
    let mut found = HashMap::new();
    found.insert(fs::metadata(root)?.ino(), PathBuf::new());
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in fs::read_dir(root.join(&relative))? {
            let entry = entry?;
            let metadata = entry.metadata()?;
            let child = relative.join(entry.file_name());
            if metadata.is_dir() {
                pending.push(child.clone());
            }
            found.insert(metadata.ino(), child);
        }
    }
    Ok(found)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// One past the last non-zero byte: WAL segments are preallocated with zeros, and a flip in
/// the zeros after the end marker would change nothing a reader looks at.
fn used_bytes(path: &Path) -> io::Result<u64> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut buffer = vec![0u8; SCAN_CHUNK_BYTES];
    let mut used = 0;
    let mut offset = 0;
    while offset < size {
        let count = file.read_at(&mut buffer, offset)?;
        if count == 0 {
            break;
        }
        if let Some(last) = buffer[..count].iter().rposition(|b| *b != 0) {
            used = offset + last as u64 + 1;
        }
        offset += count as u64;
    }
    Ok(used)
}

fn flip_bit(path: &Path, offset: u64, bit: u8) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, offset)?;
    file.sync_data()
}
