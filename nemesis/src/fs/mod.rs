//! A fault-injecting FUSE passthrough filesystem that models the page cache, after Jepsen's
//! LazyFS. Mounted over a node's data directory, it passes every operation through to a
//! backing directory and remembers what a power cut would take away:
//!
//! - data written to a file but not covered by a completed `fsync`/`fdatasync` of that file is
//!   volatile;
//! - a created, renamed or removed entry is volatile until its parent directory is fsynced
//!   (a file fsynced inside a directory whose own entry is volatile goes with the directory).
//!
//! Commands (sent to its control socket, see [`control`]):
//!
//! - `freeze`: from now on no fsync completes (its reply is held back, the caller blocks)
//!   until the next crash: the start of a power cut, so no node of the cluster syncs after
//!   another died; `release` answers the held fsyncs with EIO once their callers are killed;
//! - `lose-unsynced`: every volatile byte and directory change is discarded (the caller kills
//!   the node first: a power cut);
//! - `torn`: the same, but the last unsynced write survives as a random whole-sector prefix
//!   shorter than itself;
//! - `corrupt`: one bit flipped in the synced part of one non-last WAL segment or snapshot;
//! - `fsync-error`: the next `fsync`/`fdatasync` of a file fails with EIO, and that file's
//!   unsynced data is dropped at once (the kernel marks failed pages clean: "fsyncgate").
//!
//! Supported operations: lookup, getattr, setattr (size, mode), open, create, read, write,
//! fallocate (modes 0 and KEEP_SIZE), fsync, fdatasync, mkdir, unlink, rmdir, rename (also
//! NOREPLACE), readdir, fsyncdir, statfs. `flock` and POSIX locks are kept by the kernel
//! (the filesystem does not ask for them), which is what the data directory's LOCK needs.
//! Hard links and symlinks are refused.

pub mod control;
pub mod fuse;
pub mod model;

pub use control::{
    cleanup_disks, spawn_disk, stop_disk, DiskError, DiskHandle, DiskRecord, DiskReply,
    DiskRequest, ServeOptions,
};
pub use model::{Corruption, CrashReport, ModelStatus, TornWrite};
