//! `Wal`: the group-commit front. The node's single-threaded runtime must never wait on an
//! fdatasync, so a dedicated OS thread owns the `WalWriter`. `submit` only enqueues (bounded,
//! never blocks). The thread takes every queued batch, writes them with one write, does ONE
//! fdatasync, and reports `Durable` through the callback given at open: batches from concurrent
//! callers coalesce while a sync is in flight.
//!
//! Segment rolls do not stall the group: a second thread keeps one zero-filled, synced spare
//! segment ready (like etcd's `filePipeline`), and the writer only writes a header over it.
//! Compactions do not stall it either: a third thread, the reaper, takes the compacted
//! segments. It recycles up to `RECYCLED_SEGMENTS_MAX` of them (renamed, see `segment.rs`)
//! for the preallocator to zero-fill in place, as PostgreSQL recycles WAL segments, and
//! deletes the rest. Recycling keeps the WAL's blocks allocated: on a file system mounted
//! with `discard`, deleting a 16 MiB segment TRIMs its blocks at the next journal commit, and
//! the WAL's fdatasyncs wait behind that (measured: about 1 ms of put p99.9, storage.md).
//!
//! `write_now` writes and syncs a batch on the caller's own thread instead, when the thread has
//! nothing left to do: no hand-off to the thread and no report back, two thread wake-ups fewer
//! per write. For a caller that can afford to wait on the disk (a Raft follower: it has
//! nothing to do until its appends are durable; a leader must keep serving meanwhile). The
//! writer sits behind a mutex that the thread holds for a whole group; `write_now` only tries
//! it, so it never waits for the thread.
//!
//! Any error is fatal: it is reported to the callback once (or returned by `write_now`) and the
//! thread stops (later submits get `SubmitError::Closed`). A failed fdatasync is never retried
//! (PostgreSQL "fsyncgate": after a failed fsync the kernel may have dropped the dirty pages,
//! so a retry can succeed over lost data).

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SendError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use thiserror::Error;

use kvraft::message::Index;

use super::segment::{self, SegmentId, Spare};
use super::{Durable, Recovered, WalConfig, WalError, WalWriter, WriteBatch};

/// Called on the WAL thread after each group: `Ok` after an fdatasync, `Err` once on a fatal
/// error. Keep it short (e.g. send to a channel and wake the runtime): the next group waits.
pub type DurableCallback = Box<dyn FnMut(Result<Durable, WalError>) + Send>;

const THREAD_NAME: &str = "wal-writer";
const PREALLOCATOR_THREAD_NAME: &str = "wal-preallocator";
const REAPER_THREAD_NAME: &str = "wal-reaper";
/// Compactions whose segments may wait for the reaper; beyond that the writer deletes them
/// itself (as without a reaper).
const REAPER_QUEUE_COMPACTIONS_MAX: usize = 16;
/// Compacted segments kept for reuse as spares (disk they hold: this many segments); the
/// reaper deletes compacted segments beyond it. One compaction frees about two segments at
/// the node's defaults (100k entries of about 300 bytes, 16 MiB segments).
pub const RECYCLED_SEGMENTS_MAX: usize = 4;

/// Recycled segments (renamed, not yet zero-filled), oldest first: the reaper adds, the
/// preallocator takes.
type RecycledPool = Arc<Mutex<VecDeque<PathBuf>>>;

/// The writer, shared by the WAL thread (for a whole group) and `Wal::write_now`. `None` once
/// the WAL failed or stopped: dropping the writer drops its spare receiver and reaper sender,
/// which ends the preallocator and the reaper.
type SharedWriter = Arc<Mutex<Option<Writer>>>;

#[derive(Debug)]
struct Writer {
    writer: WalWriter,
    /// Commands written and synced since `open`, by the thread and by `write_now`.
    completed_total: u64,
}

impl Writer {
    /// Counts `commands` just written and synced (`started` when their write began) and
    /// completes their report.
    fn completed(&mut self, mut durable: Durable, commands: u64, started: Instant) -> Durable {
        self.completed_total += commands;
        durable.commands_durable_total = self.completed_total;
        durable.group_duration = started.elapsed();
        durable.roll_duration = self.writer.take_roll_duration();
        durable
    }
}

#[derive(Debug)]
enum Command {
    Append(WriteBatch),
    Compact(Index),
    InstallSnapshot(Index),
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds `queue_batches_max` batches: the disk is behind. Back off and retry
    /// (the entries are `Bytes`: keeping a clone of the batch is cheap).
    #[error("wal: submit queue full ({queue_batches_max} batches): back off and retry")]
    QueueFull { queue_batches_max: usize },
    /// The writer thread stopped after a fatal error (already reported to the callback).
    #[error("wal: the writer thread has stopped after a fatal error")]
    Closed,
}

#[derive(Debug, Error)]
pub enum WriteNowError {
    /// Commands queued on the WAL thread are not all written yet (or it is writing): writing
    /// now would reorder the log. Nothing was written; `submit` the batch instead.
    #[error("wal: the writer thread is busy")]
    Busy,
    /// The write or the sync failed: fatal, as on the thread (the WAL is closed now).
    #[error(transparent)]
    Failed(#[from] WalError),
}

/// The group-commit WAL. Dropping it drains the queue, syncs, and joins the thread.
#[derive(Debug)]
pub struct Wal {
    writer: SharedWriter,
    /// Commands accepted since `open`, by `submit`, `compact`, `install_snapshot` and
    /// `write_now`: the thread is done when its writer's `completed_total` reaches this.
    accepted_total: AtomicU64,
    /// Set when `write_now` failed: later submits are refused as after a failure on the
    /// thread.
    failed: AtomicBool,
    sender: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<Result<(), WalError>>>,
    preallocator: Option<JoinHandle<()>>,
    reaper: Option<JoinHandle<()>>,
    recycled: RecycledPool,
    queue_batches_max: usize,
}

impl Wal {
    /// Recovers the WAL in `dir` and starts the writer thread.
    pub fn open(
        dir: &Path,
        config: WalConfig,
        on_durable: DurableCallback,
    ) -> Result<(Wal, Recovered), WalError> {
        let queue_batches_max = config.queue_batches_max.max(1);
        let spare_bytes = segment::segment_size_bytes(config.segment_bytes_max, 0);
        let (mut writer, recovered) = WalWriter::open(dir, config)?;
        let spawn_error = |source| WalError::Io {
            path: dir.to_path_buf(),
            source,
        };
        // Capacity 0: at most one spare exists, handed over when the writer asks for it.
        let (spare_sender, spare_receiver) = mpsc::sync_channel(0);
        writer.set_spare_source(spare_receiver);
        let recycled = RecycledPool::default();
        let spare_dir = dir.to_path_buf();
        let pool = recycled.clone();
        let preallocator = thread::Builder::new()
            .name(PREALLOCATOR_THREAD_NAME.to_string())
            .spawn(move || preallocate(spare_dir, spare_bytes, pool, spare_sender))
            .map_err(spawn_error)?;
        let (reap_sender, reap_receiver) = mpsc::sync_channel(REAPER_QUEUE_COMPACTIONS_MAX);
        writer.set_reaper(reap_sender);
        let reap_dir = dir.to_path_buf();
        let pool = recycled.clone();
        let reaper = thread::Builder::new()
            .name(REAPER_THREAD_NAME.to_string())
            .spawn(move || reap(reap_dir, reap_receiver, pool))
            .map_err(spawn_error)?;
        let (sender, receiver) = mpsc::sync_channel(queue_batches_max);
        let writer = Arc::new(Mutex::new(Some(Writer {
            writer,
            completed_total: 0,
        })));
        let shared = writer.clone();
        let thread = thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || run(shared, receiver, on_durable, queue_batches_max))
            .map_err(spawn_error)?;
        let wal = Wal {
            writer,
            accepted_total: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            sender: Some(sender),
            thread: Some(thread),
            preallocator: Some(preallocator),
            reaper: Some(reaper),
            recycled,
            queue_batches_max,
        };
        Ok((wal, recovered))
    }

    /// Queues a batch. Never blocks. Durability is reported through the callback.
    pub fn submit(&self, batch: WriteBatch) -> Result<(), SubmitError> {
        self.send(Command::Append(batch))
    }

    /// Queues a compaction (in order with the batches): see `WalWriter::compact`.
    pub fn compact(&self, up_to: Index) -> Result<(), SubmitError> {
        self.send(Command::Compact(up_to))
    }

    /// Queues the replacement of the log by a received snapshot (in order with the batches):
    /// see `WalWriter::install_snapshot`.
    pub fn install_snapshot(&self, up_to: Index) -> Result<(), SubmitError> {
        self.send(Command::InstallSnapshot(up_to))
    }

    /// Writes `batch` and fdatasyncs it on the calling thread, if the WAL thread has written
    /// everything queued before (else `WriteNowError::Busy`, nothing written). The returned
    /// `Durable` counts this batch as one command, in order with the submitted ones: the
    /// thread's reports for earlier commands carry smaller counts, so a caller must have
    /// taken them all before it writes now, or its count would go back.
    pub fn write_now(&self, batch: &WriteBatch) -> Result<Durable, WriteNowError> {
        let mut slot = match self.writer.try_lock() {
            Ok(slot) => slot,
            Err(TryLockError::WouldBlock) => return Err(WriteNowError::Busy),
            Err(TryLockError::Poisoned(_)) => return Err(WalError::Poisoned.into()),
        };
        let Some(state) = slot.as_mut() else {
            return Err(WalError::Poisoned.into());
        };
        if state.completed_total != self.accepted_total.load(Ordering::SeqCst) {
            return Err(WriteNowError::Busy);
        }
        let started = Instant::now();
        let written = state.writer.stage(batch).and_then(|()| state.writer.sync());
        match written {
            Ok(durable) => {
                self.accepted_total.fetch_add(1, Ordering::SeqCst);
                Ok(state.completed(durable, 1, started))
            }
            Err(error) => {
                tracing::error!("wal: fatal: {error}");
                // As after a failure on the thread: nothing is written any more.
                *slot = None;
                self.failed.store(true, Ordering::SeqCst);
                Err(error.into())
            }
        }
    }

    fn send(&self, command: Command) -> Result<(), SubmitError> {
        let Some(sender) = &self.sender else {
            return Err(SubmitError::Closed);
        };
        if self.failed.load(Ordering::SeqCst) {
            return Err(SubmitError::Closed);
        }
        // Counted before it is queued: a `write_now` in between sees the thread busy.
        self.accepted_total.fetch_add(1, Ordering::SeqCst);
        sender.try_send(command).map_err(|error| {
            self.accepted_total.fetch_sub(1, Ordering::SeqCst);
            match error {
                TrySendError::Full(_) => SubmitError::QueueFull {
                    queue_batches_max: self.queue_batches_max,
                },
                TrySendError::Disconnected(_) => SubmitError::Closed,
            }
        })
    }

    /// Drains the queue, syncs, stops the thread. Returns the fatal error if there was one.
    pub fn close(mut self) -> Result<(), WalError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), WalError> {
        self.sender = None;
        let result = match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(WalError::Poisoned),
        };
        // The writer (and its spare receiver) goes: the preallocator's next send fails.
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(preallocator) = self.preallocator.take() {
            let _ = preallocator.join();
        }
        // The writer's reaper sender is gone too: the reaper takes what is queued and ends.
        if let Some(reaper) = self.reaper.take() {
            let _ = reaper.join();
        }
        // Segments still waiting to be reused would only be removed at the next open.
        for path in lock(&self.recycled).drain(..) {
            remove_quietly(&path, "a recycled segment");
        }
        result
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::error!("wal: writer thread ended with an error: {error}");
        }
    }
}

fn run(
    shared: SharedWriter,
    receiver: Receiver<Command>,
    mut on_durable: DurableCallback,
    group_commands_max: usize,
) -> Result<(), WalError> {
    let mut commands = Vec::with_capacity(group_commands_max);
    while let Ok(first) = receiver.recv() {
        commands.push(first);
        // Everything that queued up while the previous sync ran joins this group.
        while commands.len() < group_commands_max {
            match receiver.try_recv() {
                Ok(command) => commands.push(command),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let mut slot = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = slot.as_mut() else {
            // `write_now` failed: the error went to its caller.
            return Err(WalError::Poisoned);
        };
        let started = Instant::now();
        let group = commands.len() as u64;
        match execute(&mut state.writer, commands.drain(..)) {
            Ok(durable) => {
                let durable = state.completed(durable, group, started);
                // Unlocked before the report: the caller may write now as soon as it has it.
                drop(slot);
                on_durable(Ok(durable))
            }
            Err(error) => {
                tracing::error!("wal: fatal: {error}");
                *slot = None;
                drop(slot);
                on_durable(Err(error));
                return Err(WalError::Poisoned);
            }
        }
    }
    Ok(())
}

fn execute(
    writer: &mut WalWriter,
    commands: impl Iterator<Item = Command>,
) -> Result<Durable, WalError> {
    for command in commands {
        match command {
            Command::Append(batch) => writer.stage(&batch)?,
            Command::Compact(up_to) => {
                writer.compact(up_to)?;
            }
            Command::InstallSnapshot(up_to) => {
                writer.install_snapshot(up_to)?;
            }
        }
    }
    writer.sync()
}

/// Recycles or deletes compacted segments until the writer goes away (see the module doc).
/// A failure only leaves a segment behind (recovery skips what a compaction marker covers,
/// and removes a recycled segment not yet reused), so it is logged, not fatal.
fn reap(dir: PathBuf, compactions: Receiver<Vec<SegmentId>>, recycled: RecycledPool) {
    while let Ok(segments) = compactions.recv() {
        // Only this thread adds to the pool: room seen here is still there below.
        let room = RECYCLED_SEGMENTS_MAX.saturating_sub(lock(&recycled).len());
        let mut renamed = Vec::new();
        for segment in &segments {
            if renamed.len() < room {
                match segment::recycle_segment(&dir, segment) {
                    Ok(path) => {
                        renamed.push(path);
                        continue;
                    }
                    Err(error) => tracing::warn!("wal: recycling a compacted segment: {error}"),
                }
            }
            remove_quietly(&segment.path, "a compacted segment");
        }
        // One directory sync for the whole compaction, renames and deletions alike; a
        // recycled segment is zero-filled only once its rename is durable.
        match segment::sync_dir(&dir) {
            Ok(()) => lock(&recycled).extend(renamed),
            Err(error) => {
                tracing::warn!("wal: syncing {} after a compaction: {error}", dir.display());
                for path in &renamed {
                    remove_quietly(path, "a recycled segment");
                }
            }
        }
    }
}

/// Keeps one spare segment ready until the writer goes away: a recycled segment zero-filled
/// in place if one is waiting, else a new file. On an error making a new file it stops: the
/// writer then creates segments itself and reports any error through the normal path.
fn preallocate(dir: PathBuf, size_bytes: u64, recycled: RecycledPool, ready: SyncSender<Spare>) {
    let mut counter = 0u64;
    loop {
        let reused = lock(&recycled).pop_front().and_then(|path| {
            segment::respare(&path, size_bytes)
                .map_err(|error| {
                    tracing::warn!("wal: reusing a recycled segment: {error}");
                    remove_quietly(&path, "a recycled segment");
                })
                .ok()
                .flatten()
        });
        let spare = match reused {
            Some(spare) => spare,
            None => {
                let path = segment::spare_path(&dir, counter);
                counter += 1;
                match segment::create_spare(&path, size_bytes) {
                    Ok(spare) => spare,
                    Err(error) => {
                        tracing::warn!("wal: preallocating a spare segment failed: {error}");
                        let _ = fs::remove_file(&path);
                        return;
                    }
                }
            }
        };
        if let Err(SendError(spare)) = ready.send(spare) {
            let _ = fs::remove_file(&spare.path);
            return;
        }
    }
}

fn lock(pool: &RecycledPool) -> std::sync::MutexGuard<'_, VecDeque<PathBuf>> {
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a file whose loss is harmless. Logs failures other than its absence.
fn remove_quietly(path: &Path, what: &str) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!("wal: deleting {what} {}: {error}", path.display()),
    }
}
