//! `WalWriter`: the synchronous core. Batches are encoded into one buffer, written with one
//! `pwrite` and made durable with one `fdatasync` (`sync`). Never used from async code directly:
//! `group.rs` runs it on a thread of its own.
//!
//! Truncation (conflict repair) and compaction work by whole segments and boundary markers:
//!
//! ```text
//! segments:  [1: first 1 | e1..e100 END] [2: first 101 | e101..e180 ...]
//! append e150' (truncate from 150, inside the current segment):
//!            [2: first 101 | e101..e180 TRUNCATE(150) e150' ...]
//! append e60' (truncate from 60, below the current segment):
//!            seal 2 with END, create [3: first 60 | HS COMPACT?] (the header is the boundary),
//!            then delete every older segment whose first index >= 60 (segment 2), newest first.
//! compact(120): append COMPACT(120), sync, then delete segment i while segment i+1 starts at or
//!            below 121, oldest first.
//! ```
//!
//! Every new segment starts with the current hard state and compaction point, so deleting
//! older segments never loses them.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use kvraft::message::{HardState, Index, Term};

use super::reader::{self, Tail};
use super::record::{self, Record};
use super::segment::{self, SegmentId, Spare, SEGMENT_HEADER_BYTES};
use super::{Durable, Recovered, WalConfig, WalError, WriteBatch};

/// Bytes of the SegmentEnd marker, reserved in every segment so it can always be sealed.
const SEGMENT_END_BYTES: u64 = record::RECORD_HEADER_BYTES as u64;

/// Where the current segment stands, for crash tests: bytes below `synced_bytes` are durable,
/// bytes in `[synced_bytes, written_bytes)` were written but not synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailPosition {
    pub path: PathBuf,
    pub synced_bytes: u64,
    pub written_bytes: u64,
}

/// The synchronous WAL writer. See the module doc.
#[derive(Debug)]
pub struct WalWriter {
    dir: PathBuf,
    config: WalConfig,
    /// In `seq` order; the last one is being written.
    segments: Vec<SegmentId>,
    file: File,
    file_bytes: u64,
    written_offset: u64,
    synced_offset: u64,
    /// Encoded records not yet written.
    pending: Vec<u8>,
    first_index: Index,
    /// The term of every live entry, from `first_index` on (8 bytes per entry: the Raft core
    /// keeps the entries themselves). Gives `last_term` after a truncation, and checks terms.
    terms: VecDeque<Term>,
    compacted_index: Index,
    hard_state: HardState,
    poisoned: bool,
    /// Time spent in segment rolls since `take_roll_duration` was last called.
    roll_duration: Duration,
    /// Preallocated segments made ahead of time by another thread (see `group.rs`).
    spares: Option<Receiver<Spare>>,
    /// Where compacted segments go to be recycled or deleted by another thread (see
    /// `group.rs`); `None`: deleted here.
    reaper: Option<SyncSender<Vec<SegmentId>>>,
}

impl WalWriter {
    /// Recovers the WAL in `dir` (creating it if needed) and opens it for writing.
    pub fn open(dir: &Path, config: WalConfig) -> Result<(WalWriter, Recovered), WalError> {
        fs::create_dir_all(dir).map_err(|source| WalError::Io {
            path: dir.into(),
            source,
        })?;
        let scan = reader::recover(dir, &config)?;
        let recovered = scan.recovered;
        let placeholder = scan
            .tail
            .as_ref()
            .map_or(dir, |tail| tail.segment.path.as_path());
        let file = open_rw(placeholder)?;
        let mut writer = WalWriter {
            dir: dir.to_path_buf(),
            config,
            segments: scan.segments,
            file,
            file_bytes: 0,
            written_offset: 0,
            synced_offset: 0,
            pending: Vec::new(),
            first_index: recovered.first_index,
            terms: recovered.entries.iter().map(|entry| entry.term).collect(),
            compacted_index: recovered.compacted_index,
            hard_state: recovered.hard_state,
            poisoned: false,
            roll_duration: Duration::ZERO,
            spares: None,
            reaper: None,
        };
        match scan.tail {
            Some(tail) if !tail.sealed => writer.resume(tail)?,
            _ => writer.start_segment(writer.last_index() + 1, 0)?,
        }
        Ok((writer, recovered))
    }

    /// Continues writing the last segment at its end of log, zeroing a torn tail first.
    fn resume(&mut self, tail: Tail) -> Result<(), WalError> {
        let io = |source| WalError::Io {
            path: tail.segment.path.clone(),
            source,
        };
        if tail.dirty_end > tail.end_offset {
            let zeros = vec![0u8; (tail.dirty_end - tail.end_offset) as usize];
            self.file
                .write_all_at(&zeros, tail.end_offset)
                .map_err(io)?;
            self.file
                .sync_data()
                .map_err(|source| WalError::SyncFailed {
                    path: tail.segment.path.clone(),
                    source,
                })?;
        }
        // A last segment shorter than its preallocation (cut by a crash or a copy) is extended
        // with written zeros, so the END marker always fits and rolls work as usual.
        let size = segment::segment_size_bytes(
            self.config.segment_bytes_max,
            tail.end_offset + SEGMENT_END_BYTES,
        );
        if tail.file_bytes < size {
            let zeros = vec![0u8; (size - tail.file_bytes) as usize];
            self.file
                .write_all_at(&zeros, tail.file_bytes)
                .map_err(io)?;
            self.file
                .sync_all()
                .map_err(|source| WalError::SyncFailed {
                    path: tail.segment.path.clone(),
                    source,
                })?;
        }
        self.file_bytes = size.max(tail.file_bytes);
        self.written_offset = tail.end_offset;
        self.synced_offset = tail.end_offset;
        Ok(())
    }

    pub fn first_index(&self) -> Index {
        self.first_index
    }

    pub fn last_index(&self) -> Index {
        self.first_index + self.terms.len() as u64 - 1
    }

    /// The term of the last entry, 0 when the log is empty.
    pub fn last_term(&self) -> Term {
        self.terms.back().copied().unwrap_or(0)
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn compacted_index(&self) -> Index {
        self.compacted_index
    }

    /// Time spent rolling segments since the last call (the group thread reports it).
    pub fn take_roll_duration(&mut self) -> Duration {
        std::mem::take(&mut self.roll_duration)
    }

    pub fn tail_position(&self) -> TailPosition {
        TailPosition {
            path: self.current().path.clone(),
            synced_bytes: self.synced_offset,
            written_bytes: self.written_offset,
        }
    }

    /// Writes `batch` and makes it durable: one write, one fdatasync (plus a segment roll when
    /// the current segment is full or the truncation reaches an older segment).
    pub fn append(&mut self, batch: &WriteBatch) -> Result<Durable, WalError> {
        self.stage(batch)?;
        self.sync()
    }

    /// Writes several batches with one write and one fdatasync: the group commit.
    pub fn append_group(&mut self, batches: &[WriteBatch]) -> Result<Durable, WalError> {
        for batch in batches {
            self.stage(batch)?;
        }
        self.sync()
    }

    /// Writes `batch` to the file without syncing it (crash tests; `sync` makes it durable).
    pub fn write(&mut self, batch: &WriteBatch) -> Result<(), WalError> {
        self.stage(batch)?;
        self.guard(Self::flush)
    }

    /// Discards entries from `from` on and makes that durable.
    pub fn truncate(&mut self, from: Index) -> Result<Durable, WalError> {
        self.check_live()?;
        if from <= self.compacted_index || from > self.last_index() + 1 {
            return Err(self.bad_truncation(from));
        }
        self.guard(|writer| writer.stage_truncation(from, 0))?;
        self.sync()
    }

    /// Replaces the log by a snapshot received from the leader: entries above `up_to` are
    /// discarded (they may not follow the snapshot's history), then everything up to it is
    /// compacted. The log restarts at `up_to + 1`.
    pub fn install_snapshot(&mut self, up_to: Index) -> Result<Durable, WalError> {
        self.check_live()?;
        if up_to < self.last_index() && up_to + 1 > self.compacted_index {
            self.guard(|writer| writer.stage_truncation(up_to + 1, 0))?;
        }
        self.compact(up_to)
    }

    /// Writes everything staged and fdatasyncs the current segment. A failed fdatasync is
    /// fatal and poisons the writer: retrying could "succeed" over pages the kernel dropped.
    pub fn sync(&mut self) -> Result<Durable, WalError> {
        self.guard(|writer| {
            writer.flush()?;
            if writer.synced_offset != writer.written_offset {
                writer.sync_data()?;
            }
            Ok(Durable {
                last_index: writer.last_index(),
                last_term: writer.last_term(),
                hard_state: writer.hard_state,
                commands_durable_total: 0,
                group_duration: Duration::ZERO,
                roll_duration: Duration::ZERO,
            })
        })
    }

    /// Records that entries up to `up_to` are in a durable snapshot, syncs, then deletes the
    /// segments wholly at or below `up_to`, oldest first. `up_to` may lie past the last entry
    /// (a snapshot received from the leader): the log then restarts at `up_to + 1`.
    pub fn compact(&mut self, up_to: Index) -> Result<Durable, WalError> {
        self.check_live()?;
        if up_to > self.compacted_index {
            self.guard(|writer| {
                let marker = Record::Compact { up_to };
                writer.reserve(record::encoded_bytes(&marker) as u64)?;
                record::encode(&marker, &mut writer.pending);
                writer.compact_state(up_to);
                Ok(())
            })?;
        }
        let durable = self.sync()?;
        self.guard(|writer| writer.delete_compacted(up_to))?;
        Ok(durable)
    }

    /// Encodes `batch` into the pending buffer (rolling or truncating first when needed).
    pub fn stage(&mut self, batch: &WriteBatch) -> Result<(), WalError> {
        self.check_live()?;
        self.check_batch(batch)?;
        self.guard(|writer| {
            let entry_bytes = batch
                .entries
                .iter()
                .map(|entry| record::record_bytes(entry.data.len()));
            let mut needed_bytes = entry_bytes.sum::<usize>() as u64;
            if let Some(hard_state) = batch.hard_state {
                needed_bytes += record::encoded_bytes(&Record::HardState(hard_state)) as u64;
            }
            match batch.entries.first() {
                Some(first) if first.index <= writer.last_index() => {
                    writer.stage_truncation(first.index, needed_bytes)?
                }
                _ => writer.reserve(needed_bytes)?,
            }
            for entry in &batch.entries {
                record::encode(&Record::Entry(entry.clone()), &mut writer.pending);
                writer.terms.push_back(entry.term);
            }
            if let Some(hard_state) = batch.hard_state {
                record::encode(&Record::HardState(hard_state), &mut writer.pending);
                writer.hard_state = hard_state;
            }
            Ok(())
        })
    }

    /// Discards entries from `from` on: a marker in the current segment, or a new segment whose
    /// header is the boundary when `from` lies in an older segment (or the current one is full).
    fn stage_truncation(&mut self, from: Index, needed_bytes: u64) -> Result<(), WalError> {
        let marker = Record::Truncate { from };
        let marker_bytes = record::encoded_bytes(&marker) as u64;
        if from < self.current().first_index || !self.fits(marker_bytes + needed_bytes) {
            return self.roll(from, needed_bytes);
        }
        record::encode(&marker, &mut self.pending);
        self.truncate_state(from);
        Ok(())
    }

    /// Makes room for `needed_bytes` in the current segment, rolling if it is full.
    fn reserve(&mut self, needed_bytes: u64) -> Result<(), WalError> {
        if self.fits(needed_bytes) {
            return Ok(());
        }
        self.roll(self.last_index() + 1, needed_bytes)
    }

    fn fits(&self, needed_bytes: u64) -> bool {
        let end = self.written_offset + self.pending.len() as u64 + needed_bytes;
        end + SEGMENT_END_BYTES <= self.file_bytes
    }

    /// Seals the current segment (END marker, write, fdatasync) and starts a new one whose first
    /// index is `boundary`. If `boundary` discards entries, older segments that hold only
    /// discarded entries are deleted, newest first: a crash midway leaves a valid log.
    fn roll(&mut self, boundary: Index, needed_bytes: u64) -> Result<(), WalError> {
        let started = Instant::now();
        let rolled = self.roll_segment(boundary, needed_bytes);
        self.roll_duration += started.elapsed();
        rolled
    }

    fn roll_segment(&mut self, boundary: Index, needed_bytes: u64) -> Result<(), WalError> {
        record::encode(&Record::SegmentEnd, &mut self.pending);
        self.flush()?;
        self.sync_data()?;
        let truncating = boundary <= self.last_index();
        self.truncate_state(boundary);
        self.start_segment(boundary, needed_bytes)?;
        if truncating {
            // The new header is the boundary, and the hard state may live only in its head
            // once the dead segments are gone: durable before they go.
            self.sync_data()?;
            let current = self.segments.len() - 1;
            let dead: Vec<usize> = (0..current)
                .filter(|at| self.segments[*at].first_index >= boundary)
                .collect();
            for at in dead.iter().rev() {
                remove_file(&self.segments[*at].path)?;
            }
            for at in dead.iter().rev() {
                self.segments.remove(*at);
            }
            segment::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Creates the next segment, headed by the current hard state and compaction point.
    fn start_segment(&mut self, first_index: Index, needed_bytes: u64) -> Result<(), WalError> {
        let mut head = Vec::new();
        if self.hard_state != HardState::default() {
            record::encode(&Record::HardState(self.hard_state), &mut head);
        }
        if self.compacted_index > 0 {
            record::encode(
                &Record::Compact {
                    up_to: self.compacted_index,
                },
                &mut head,
            );
        }
        let used = SEGMENT_HEADER_BYTES as u64 + head.len() as u64;
        let size = segment::segment_size_bytes(
            self.config.segment_bytes_max,
            used + needed_bytes + SEGMENT_END_BYTES,
        );
        let seq = self.segments.last().map_or(1, |last| last.seq + 1);
        let (id, file, size) = match self.take_spare(size)? {
            Some(spare) => {
                let spare_bytes = spare.size_bytes;
                let (id, file) = segment::install_spare(&self.dir, spare, seq, first_index, &head)?;
                (id, file, spare_bytes)
            }
            None => {
                let (id, file) = segment::create_segment(&self.dir, seq, first_index, &head, size)?;
                (id, file, size)
            }
        };
        self.segments.push(id);
        self.file = file;
        self.file_bytes = size;
        self.written_offset = used;
        // The header and head are written, not synced: the next `sync` covers them.
        self.synced_offset = 0;
        Ok(())
    }

    /// Lets segment rolls take preallocated spares from `source` instead of zero-filling a
    /// new file while the group waits.
    pub fn set_spare_source(&mut self, source: Receiver<Spare>) {
        self.spares = Some(source);
    }

    /// Hands compacted segments to `reaper` (which recycles or deletes them) instead of
    /// deleting them on this thread: unlinking a 16 MiB segment costs milliseconds of
    /// file-system work (measured here: about 3.5 ms each), which would stall the group
    /// commit. A compacted segment is only space to reclaim: the compaction marker is durable
    /// before, and recovery skips segments it covers
    /// (`wal_recovery_crash_before_compacted_segments_were_deleted`).
    pub fn set_reaper(&mut self, reaper: SyncSender<Vec<SegmentId>>) {
        self.reaper = Some(reaper);
    }

    /// A ready spare of at least `size_bytes`, if one is waiting. One too small (a huge
    /// record) is deleted.
    fn take_spare(&mut self, size_bytes: u64) -> Result<Option<Spare>, WalError> {
        let Some(spare) = self
            .spares
            .as_ref()
            .and_then(|source| source.try_recv().ok())
        else {
            return Ok(None);
        };
        if spare.size_bytes >= size_bytes {
            return Ok(Some(spare));
        }
        remove_file(&spare.path)?;
        Ok(None)
    }

    fn delete_compacted(&mut self, up_to: Index) -> Result<(), WalError> {
        let mut deleted = 0;
        while deleted + 1 < self.segments.len()
            && self.segments[deleted + 1].first_index <= up_to.saturating_add(1)
        {
            deleted += 1;
        }
        if deleted == 0 {
            return Ok(());
        }
        let compacted: Vec<SegmentId> = self.segments.drain(..deleted).collect();
        let compacted = match &self.reaper {
            Some(reaper) => match reaper.try_send(compacted) {
                Ok(()) => return Ok(()),
                // The reaper is behind or gone: delete here, as without one.
                Err(TrySendError::Full(compacted) | TrySendError::Disconnected(compacted)) => {
                    compacted
                }
            },
            None => compacted,
        };
        for segment in &compacted {
            remove_file(&segment.path)?;
        }
        segment::sync_dir(&self.dir)
    }

    /// Writes the pending buffer with one positioned write, after checking every record in it
    /// (the twin of the check on read-back).
    fn flush(&mut self) -> Result<(), WalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let record_bytes_max = usize::try_from(self.config.record_bytes_max).unwrap_or(usize::MAX);
        let checked = record::check_sequence(&self.pending, record_bytes_max);
        assert!(
            checked.is_ok(),
            "wal: encoded an invalid record: {checked:?}"
        );
        let end = self.written_offset + self.pending.len() as u64;
        assert!(
            end <= self.file_bytes,
            "wal: write past the preallocated segment"
        );
        let path = &self.segments[self.segments.len() - 1].path;
        self.file
            .write_all_at(&self.pending, self.written_offset)
            .map_err(|source| WalError::Io {
                path: path.clone(),
                source,
            })?;
        self.written_offset = end;
        self.pending.clear();
        Ok(())
    }

    fn sync_data(&mut self) -> Result<(), WalError> {
        let path = &self.segments[self.segments.len() - 1].path;
        self.file
            .sync_data()
            .map_err(|source| WalError::SyncFailed {
                path: path.clone(),
                source,
            })?;
        self.synced_offset = self.written_offset;
        Ok(())
    }

    fn check_batch(&self, batch: &WriteBatch) -> Result<(), WalError> {
        let invalid = |why: String| Err(WalError::InvalidBatch(why));
        if let Some(hard_state) = batch.hard_state {
            if hard_state.term < self.hard_state.term {
                return invalid(format!(
                    "hard state term {} below the durable term {}",
                    hard_state.term, self.hard_state.term
                ));
            }
        }
        let Some(first) = batch.entries.first() else {
            return Ok(());
        };
        if first.index <= self.compacted_index || first.index > self.last_index() + 1 {
            return Err(self.bad_truncation(first.index));
        }
        let mut previous_term = self.term_of(first.index - 1);
        for (offset, entry) in batch.entries.iter().enumerate() {
            if entry.index != first.index + offset as u64 {
                return invalid(format!("entry {} follows {}", entry.index, first.index));
            }
            if entry.term < previous_term {
                return invalid(format!(
                    "entry {} has term {} < {previous_term}",
                    entry.index, entry.term
                ));
            }
            previous_term = entry.term;
            let record_bytes = record::record_bytes(entry.data.len()) as u64;
            if record_bytes > self.config.record_bytes_max {
                let record_bytes_max = self.config.record_bytes_max;
                return Err(WalError::RecordTooLarge {
                    record_bytes,
                    record_bytes_max,
                });
            }
        }
        Ok(())
    }

    fn bad_truncation(&self, index: Index) -> WalError {
        WalError::InvalidBatch(format!(
            "index {index} outside ({}, {}]: below the compaction point or after a gap",
            self.compacted_index,
            self.last_index() + 1
        ))
    }

    /// The term of the live entry at `index`, 0 if unknown (compacted or none).
    fn term_of(&self, index: Index) -> Term {
        if index < self.first_index {
            return 0;
        }
        self.terms
            .get((index - self.first_index) as usize)
            .copied()
            .unwrap_or(0)
    }

    fn truncate_state(&mut self, from: Index) {
        if from <= self.first_index {
            self.terms.clear();
            self.first_index = from;
        } else {
            self.terms.truncate((from - self.first_index) as usize);
        }
    }

    fn compact_state(&mut self, up_to: Index) {
        self.compacted_index = self.compacted_index.max(up_to);
        if up_to < self.first_index {
            return;
        }
        let dropped = (up_to - self.first_index + 1).min(self.terms.len() as u64);
        self.terms.drain(..dropped as usize);
        self.first_index = up_to + 1;
    }

    fn current(&self) -> &SegmentId {
        &self.segments[self.segments.len() - 1]
    }

    fn check_live(&self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        Ok(())
    }

    /// Runs an operation that touches files; any failure poisons the writer (a failed write or
    /// sync leaves the file in an unknown state).
    fn guard<T>(
        &mut self,
        operation: impl FnOnce(&mut Self) -> Result<T, WalError>,
    ) -> Result<T, WalError> {
        self.check_live()?;
        let result = operation(self);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }
}

fn open_rw(path: &Path) -> Result<File, WalError> {
    let io = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        // No segment yet: a placeholder handle, replaced by `start_segment` at once.
        return File::open(path).map_err(io);
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)
}

fn remove_file(path: &Path) -> Result<(), WalError> {
    fs::remove_file(path).map_err(|source| WalError::Io {
        path: path.to_path_buf(),
        source,
    })
}
