//! The write-ahead log: Raft entries and hard state, written in groups with one fdatasync each,
//! recovered (and verified) once at startup. During normal operation it is read only for
//! entries the Raft log evicted from memory (`load.rs`).
//!
//! - `record.rs`: the checksummed record (length, CRC32, kind, index, term, payload).
//! - `segment.rs`: preallocated segment files and their header.
//! - `reader.rs`: recovery. A torn tail of the last segment is cut with a warning; corruption
//!   anywhere else, or a gap in indexes, refuses to start.
//! - `writer.rs`: `WalWriter`, the synchronous core (append, truncate, compact).
//! - `load.rs`: reading entries back while the WAL runs, for a leader whose follower needs
//!   entries the Raft log evicted from memory.
//! - `group.rs`: `Wal`, the group-commit front: one OS thread, a bounded queue, a callback that
//!   reports "durable up to index N" after each fdatasync.

pub mod group;
pub mod load;
pub mod reader;
pub mod record;
pub mod segment;
pub mod writer;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use kvraft::message::{Entry, HardState, Index, Term};

pub use group::{DurableCallback, SubmitError, Wal, WriteNowError};
pub use writer::{TailPosition, WalWriter};

/// Limits of the WAL. Every field documents its trade-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Preallocated size of a segment. Larger segments roll (and preallocate, which writes
    /// this many zeros) less often, but compaction frees space only in whole segments.
    pub segment_bytes_max: u64,
    /// The largest record (header + entry payload). A record larger than a segment gets a
    /// segment of its own; a length field above this limit reads as corruption.
    pub record_bytes_max: u64,
    /// Batches the group-commit queue holds. `Wal::submit` returns `SubmitError::QueueFull`
    /// beyond it: the caller backs off (a full queue means the disk is the bottleneck).
    pub queue_batches_max: usize,
}

impl Default for WalConfig {
    fn default() -> WalConfig {
        WalConfig {
            segment_bytes_max: 16 << 20,
            record_bytes_max: 64 << 20,
            queue_batches_max: 1024,
        }
    }
}

/// One unit of work for the WAL: contiguous entries and/or a hard state. If
/// `entries[0].index` is at or below the WAL's last index, the WAL first discards its suffix
/// from that index (conflict repair). A batch with only a hard state is valid: a vote must be
/// durable before the vote response leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

/// Reported after an fdatasync: everything up to here is on stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durable {
    /// The last entry index in the WAL (after truncations; `first_index - 1` when empty).
    pub last_index: Index,
    /// Its term; 0 when the log is empty (e.g. compacted past its end by a received snapshot).
    pub last_term: Term,
    pub hard_state: HardState,
    /// With the group-commit `Wal`: how many `submit`/`compact` calls, counted from `open`,
    /// are now durable (they complete in order). The caller matches its own count against it
    /// to release what waited for those writes. Always 0 from `WalWriter`.
    pub commands_durable_total: u64,
    /// With the group-commit `Wal`: how long the WAL thread took to write and fdatasync this
    /// group (segment rolls included), measured on that thread: the disk's share of a write's
    /// latency, without the time commands queued or the report took to reach the caller.
    pub group_duration: Duration,
    /// The part of `group_duration` spent rolling to a new segment (zero if none rolled).
    pub roll_duration: Duration,
}

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The newest hard state written (default if none ever was).
    pub hard_state: HardState,
    /// The highest `compact(up_to)` recorded (0: never compacted).
    pub compacted_index: Index,
    /// The index of `entries[0]`, or the next index to append when `entries` is empty.
    pub first_index: Index,
    /// Contiguous entries from `first_index`.
    pub entries: Vec<Entry>,
}

impl Recovered {
    pub fn last_index(&self) -> Index {
        self.first_index + self.entries.len() as u64 - 1
    }
}

/// Errors of the WAL. `Corrupt` and `Gap` at open mean the node must not start: records that
/// may be committed would otherwise be dropped without an operator deciding so.
#[derive(Debug, Error)]
pub enum WalError {
    #[error("wal: I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// fdatasync failed: the page cache may have dropped the dirty pages, so retrying could
    /// report data durable that is not (PostgreSQL "fsyncgate", 2018). Fatal.
    #[error("wal: fdatasync failed on {path}: {source} (fatal: the node must stop)")]
    SyncFailed { path: PathBuf, source: io::Error },
    #[error("wal: refusing to start: corrupt data in {path} at byte offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "wal: refusing to start: index gap in {path} at byte offset {offset}: \
         expected index at most {expected}, found {found}"
    )]
    Gap {
        path: PathBuf,
        offset: u64,
        expected: Index,
        found: Index,
    },
    #[error("wal: invalid batch: {0}")]
    InvalidBatch(String),
    #[error("wal: record of {record_bytes} bytes exceeds record_bytes_max {record_bytes_max}")]
    RecordTooLarge {
        record_bytes: u64,
        record_bytes_max: u64,
    },
    #[error("wal: an earlier write or sync failed; the writer accepts no more work")]
    Poisoned,
}
