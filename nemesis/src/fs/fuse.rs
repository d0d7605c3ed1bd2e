//! The FUSE side: translates kernel requests into `Model` operations. Inode numbers are the
//! backing inode numbers, with the backing root and inode 1 swapped (FUSE's root is 1).
//! Attributes and entries are never cached by the kernel (TTL 0): a crash changes the backing
//! files behind the kernel's back.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::model::{code, Model};

/// The kernel caches nothing: every lookup and getattr reaches the model.
const TTL: Duration = Duration::ZERO;
/// O_EXCL (asm-generic/fcntl.h).
const OPEN_EXCLUSIVE: i32 = 0o200;
/// Longest file name statfs reports (NAME_MAX).
const NAME_BYTES_MAX: u32 = 255;

/// fsync replies held back while the model is frozen (see [`Model::freeze`]): the caller
/// waits in the kernel until the reply is released by [`release_parked`].
pub type Parked = Arc<Mutex<Vec<ReplyEmpty>>>;

pub struct DiskFs {
    model: Arc<Mutex<Model>>,
    root_inode: u64,
    parked: Parked,
}

/// Answers every held-back fsync with EIO; returns how many there were. Sent after the
/// waiting processes got SIGKILL, so none of them runs another instruction: the kernel keeps
/// a process whose request the filesystem has read waiting for the answer, even after SIGKILL.
pub fn release_parked(parked: &Parked) -> usize {
    let replies = std::mem::take(&mut *lock(parked));
    let count = replies.len();
    for reply in replies {
        reply.error(Errno::EIO);
    }
    count
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the value as it was at the panic; serving on is
    // better than failing every later request of the node.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DiskFs {
    pub fn new(model: Arc<Mutex<Model>>, root_inode: u64, parked: Parked) -> DiskFs {
        DiskFs {
            model,
            root_inode,
            parked,
        }
    }

    /// FUSE inode <-> backing inode (the same swap both ways).
    fn swap(&self, inode: u64) -> u64 {
        if inode == INodeNo::ROOT.0 {
            self.root_inode
        } else if inode == self.root_inode {
            INodeNo::ROOT.0
        } else {
            inode
        }
    }

    fn backing(&self, inode: INodeNo) -> u64 {
        self.swap(inode.0)
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.model)
    }

    /// While frozen an fsync never completes: its reply is held back (the caller blocks, as
    /// in the last instants before a power cut). Returns the reply if not frozen.
    fn park_if_frozen(&self, model: &Model, reply: ReplyEmpty) -> Option<ReplyEmpty> {
        if !model.is_frozen() {
            return Some(reply);
        }
        lock(&self.parked).push(reply);
        None
    }

    fn attr(&self, metadata: &Metadata) -> FileAttr {
        let time = |seconds: i64, nanos: i64| {
            let seconds = u64::try_from(seconds).unwrap_or(0);
            let nanos = u32::try_from(nanos).unwrap_or(0);
            UNIX_EPOCH + Duration::new(seconds, nanos)
        };
        let kind = if metadata.is_dir() {
            FileType::Directory
        } else if metadata.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        FileAttr {
            ino: INodeNo(self.swap(metadata.ino())),
            size: metadata.size(),
            blocks: metadata.blocks(),
            atime: time(metadata.atime(), metadata.atime_nsec()),
            mtime: time(metadata.mtime(), metadata.mtime_nsec()),
            ctime: time(metadata.ctime(), metadata.ctime_nsec()),
            crtime: time(metadata.ctime(), metadata.ctime_nsec()),
            kind,
            perm: (metadata.mode() & 0o7777) as u16,
            nlink: metadata.nlink() as u32,
            uid: metadata.uid(),
            gid: metadata.gid(),
            rdev: metadata.rdev() as u32,
            blksize: metadata.blksize() as u32,
            flags: 0,
        }
    }

    fn attr_reply(&self, result: io::Result<Metadata>, reply: ReplyAttr) {
        match result {
            Ok(metadata) => reply.attr(&TTL, &self.attr(&metadata)),
            Err(error) => reply.error(Errno::from(error)),
        }
    }

    fn entry(&self, result: io::Result<Metadata>, reply: ReplyEntry) {
        match result {
            Ok(metadata) => reply.entry(&TTL, &self.attr(&metadata), Generation(0)),
            Err(error) => reply.error(Errno::from(error)),
        }
    }
}

fn empty(result: io::Result<()>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(error) => reply.error(Errno::from(error)),
    }
}

impl Filesystem for DiskFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.model().lookup(self.backing(parent), name);
        self.entry(result, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.model().metadata(self.backing(ino), fh.map(|h| h.0));
        self.attr_reply(result, reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let inode = self.backing(ino);
        let handle = fh.map(|h| h.0);
        let mut model = self.model();
        let result = (|| {
            if let Some(size) = size {
                model.set_size(inode, handle, size)?;
            }
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                let path = model.path_of(inode)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            model.metadata(inode, handle)
        })();
        self.attr_reply(result, reply);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self
            .model()
            .mkdir(self.backing(parent), name, mode & !umask & 0o7777);
        self.entry(result, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            self.model().unlink(self.backing(parent), name, false),
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(self.model().unlink(self.backing(parent), name, true), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            reply.error(Errno::from_i32(code::EINVAL));
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let result = self.model().rename(
            self.backing(parent),
            name,
            self.backing(newparent),
            newname,
            no_replace,
        );
        empty(result, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        match self.model().open_file(self.backing(ino), writable) {
            Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::empty()),
            Err(error) => reply.error(Errno::from(error)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.model().read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(error) => reply.error(Errno::from(error)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.model().write(fh.0, offset, data) {
            Ok(count) => reply.written(count as u32),
            Err(error) => reply.error(Errno::from(error)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.model().release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut model = self.model();
        if let Some(reply) = self.park_if_frozen(&model, reply) {
            empty(model.fsync(self.backing(ino), Some(fh.0)), reply);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.model().read_dir(self.backing(ino)) {
            Ok(entries) => entries,
            Err(error) => {
                reply.error(Errno::from(error));
                return;
            }
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (ino.0, FileType::Directory, OsStr::new("..")),
        ];
        let listed = entries.iter().map(|(inode, is_dir, name)| {
            let kind = if *is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            (self.swap(*inode), kind, name.as_os_str())
        });
        let all = dots.into_iter().chain(listed);
        for (index, (inode, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(inode), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut model = self.model();
        if let Some(reply) = self.park_if_frozen(&model, reply) {
            empty(model.fsync_dir(self.backing(ino)), reply);
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let path = match self.model().path_of(self.backing(ino)) {
            Ok(path) => path,
            Err(error) => {
                reply.error(Errno::from(error));
                return;
            }
        };
        match rustix::fs::statvfs(&path) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                NAME_BYTES_MAX,
                s.f_frsize as u32,
            ),
            Err(error) => reply.error(Errno::from(io::Error::from(error))),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let exclusive = flags & OPEN_EXCLUSIVE != 0;
        let result = self.model().create(
            self.backing(parent),
            name,
            mode & !umask & 0o7777,
            exclusive,
        );
        match result {
            Ok((metadata, handle)) => reply.created(
                &TTL,
                &self.attr(&metadata),
                Generation(0),
                FileHandle(handle),
                FopenFlags::empty(),
            ),
            Err(error) => reply.error(Errno::from(error)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(self.model().fallocate(fh.0, offset, length, mode), reply);
    }
}
