//! WAL scenarios: crashes, corruption, truncation, compaction, group commit.
//! Each test's name is its scenario ("wal: recovery: torn tail after group commit").
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{batch, capture_logs, entries, entry, small_config};
use kvraft::message::HardState;
use kvstorage::wal::{
    Durable, DurableCallback, SubmitError, Wal, WalConfig, WalError, WalWriter, WriteNowError,
};

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

/// Temporary files (spares, segments not yet renamed) in `dir`.
fn tmp_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "tmp"))
        .collect()
}

fn xor_byte(path: &Path, offset: u64, mask: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= mask;
    file.write_all_at(&byte, offset).unwrap();
}

/// "wal: recovery: torn tail after group commit"
#[test]
fn wal_recovery_torn_tail_after_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let hard_state = HardState {
        term: 2,
        vote: 1,
        commit: 3,
    };
    let (mut writer, _) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    let group = [
        batch(entries(1, 3, 2, 100), Some(hard_state)),
        batch(entries(4, 2, 2, 100), None),
    ];
    let durable = writer.append_group(&group).unwrap();
    assert_eq!(durable.last_index, 5);
    // The next group is written but the crash comes before its fdatasync: half of it is torn.
    writer.write(&batch(entries(6, 4, 2, 100), None)).unwrap();
    let tail = writer.tail_position();
    drop(writer);
    let torn_from = tail.synced_bytes + (tail.written_bytes - tail.synced_bytes) / 2;
    let garbage = vec![0xAB; (tail.written_bytes - torn_from) as usize];
    OpenOptions::new()
        .write(true)
        .open(&tail.path)
        .unwrap()
        .write_all_at(&garbage, torn_from)
        .unwrap();

    let (opened, logs) = capture_logs(|| WalWriter::open(dir.path(), WalConfig::default()));
    println!("torn tail message: {logs}");
    let (mut writer, recovered) = opened.unwrap();
    let last = recovered.last_index();
    assert!(
        (5..=7).contains(&last),
        "kept the synced prefix and only whole records: {last}"
    );
    assert_eq!(
        recovered.entries[..5],
        group
            .iter()
            .flat_map(|b| b.entries.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(recovered.hard_state, hard_state);
    assert!(logs.contains("torn tail repaired"), "{logs}");
    assert!(logs.contains(&tail.path.display().to_string()), "{logs}");
    // The repaired tail is zeroed: writing after it and reopening reads cleanly, no warning.
    writer
        .append(&batch(entries(last + 1, 2, 3, 10), None))
        .unwrap();
    drop(writer);
    let (opened, logs) = capture_logs(|| WalWriter::open(dir.path(), WalConfig::default()));
    let (_, recovered) = opened.unwrap();
    assert_eq!(recovered.last_index(), last + 2);
    assert!(logs.is_empty(), "{logs}");
}

fn three_segments(dir: &Path) -> Vec<PathBuf> {
    let (mut writer, _) = WalWriter::open(dir, small_config(4096)).unwrap();
    for first in (1..=60).step_by(3) {
        writer
            .append(&batch(entries(first, 3, 1, 200), None))
            .unwrap();
    }
    drop(writer);
    let files = segment_files(dir);
    assert!(files.len() >= 3, "{files:?}");
    files
}

/// "wal: refuses a corrupt record in a middle segment"
#[test]
fn wal_refuses_a_corrupt_record_in_a_middle_segment() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_segments(dir.path());
    let (_, logs) = capture_logs(|| WalWriter::open(dir.path(), small_config(4096)).unwrap());
    assert!(logs.is_empty(), "a clean log opens silently: {logs}");
    // Segment 2 holds (after its header and head records) entries; flip a payload bit of the
    // first one. The second segment starts with no head records: header is 32 bytes.
    xor_byte(&files[1], 32 + 25 + 7, 0x10);
    let error = WalWriter::open(dir.path(), small_config(4096)).unwrap_err();
    println!("corrupt middle message: {error}");
    match &error {
        WalError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &files[1]);
            assert_eq!(*offset, 32);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(error.to_string().contains("refusing to start"), "{error}");
}

/// "wal: refuses an index gap when a middle segment is missing"
#[test]
fn wal_refuses_an_index_gap_when_a_middle_segment_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_segments(dir.path());
    fs::remove_file(&files[1]).unwrap();
    let error = WalWriter::open(dir.path(), small_config(4096)).unwrap_err();
    assert!(
        matches!(&error, WalError::Gap { path, offset: 0, .. } if *path == files[2]),
        "{error}"
    );
}

/// "wal: refuses a middle segment cut short (no end marker)"
#[test]
fn wal_refuses_a_middle_segment_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_segments(dir.path());
    let file = OpenOptions::new().write(true).open(&files[0]).unwrap();
    file.set_len(32 + 3 * 225).unwrap();
    let error = WalWriter::open(dir.path(), small_config(4096)).unwrap_err();
    assert!(
        matches!(&error, WalError::Corrupt { path, .. } if *path == files[0]),
        "{error}"
    );
}

/// "wal: conflict repair: a marker inside the segment, a new segment below it"
#[test]
fn wal_conflict_repair_by_marker_and_by_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(4096);
    let (mut writer, _) = WalWriter::open(dir.path(), config.clone()).unwrap();
    for first in (1..=60).step_by(3) {
        writer
            .append(&batch(entries(first, 3, 1, 200), None))
            .unwrap();
    }
    let segments_before = segment_files(dir.path()).len();
    // Inside the current segment: a Truncate marker.
    let durable = writer.append(&batch(entries(59, 1, 2, 10), None)).unwrap();
    assert_eq!((durable.last_index, durable.last_term), (59, 2));
    assert_eq!(segment_files(dir.path()).len(), segments_before);
    // Far below: a new segment whose header is the boundary; dead segments are deleted.
    let durable = writer.append(&batch(entries(10, 2, 3, 10), None)).unwrap();
    assert_eq!((durable.last_index, durable.last_term), (11, 3));
    assert!(segment_files(dir.path()).len() <= segments_before);
    drop(writer);
    let (_, recovered) = WalWriter::open(dir.path(), config).unwrap();
    let mut expected = entries(1, 9, 1, 200);
    expected.extend(entries(10, 2, 3, 10));
    assert_eq!(recovered.entries, expected);
}

/// "wal: compaction drops whole segments and keeps the hard state"
#[test]
fn wal_compaction_drops_whole_segments_and_keeps_the_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(4096);
    let hard_state = HardState {
        term: 1,
        vote: 3,
        commit: 40,
    };
    let (mut writer, _) = WalWriter::open(dir.path(), config.clone()).unwrap();
    writer.append(&batch(vec![], Some(hard_state))).unwrap();
    for first in (1..=60).step_by(3) {
        writer
            .append(&batch(entries(first, 3, 1, 200), None))
            .unwrap();
    }
    let segments_before = segment_files(dir.path()).len();
    writer.compact(40).unwrap();
    assert!(segment_files(dir.path()).len() < segments_before);
    drop(writer);
    let (mut writer, recovered) = WalWriter::open(dir.path(), config.clone()).unwrap();
    assert_eq!(recovered.hard_state, hard_state);
    assert_eq!(recovered.compacted_index, 40);
    assert_eq!(recovered.first_index, 41);
    assert_eq!(recovered.entries, entries(41, 20, 1, 200));
    // A snapshot from the leader past the end: the log restarts after it.
    writer.compact(100).unwrap();
    writer.append(&batch(vec![entry(101, 4, 8)], None)).unwrap();
    drop(writer);
    let (_, recovered) = WalWriter::open(dir.path(), config).unwrap();
    assert_eq!(recovered.first_index, 101);
    assert_eq!(recovered.entries, vec![entry(101, 4, 8)]);
    assert_eq!(recovered.hard_state, hard_state);
    assert_eq!(segment_files(dir.path()).len(), 1);
}

/// "wal: group commit: compacted segments are deleted off the writer thread, all of them by the
/// time the WAL is closed"
#[test]
fn wal_group_commit_compaction_deletes_segments_by_close() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(4096);
    let (sender, reports) = mpsc::channel();
    let callback = Box::new(move |report: Result<Durable, WalError>| {
        let _ = sender.send(report.map(|durable| durable.last_index));
    });
    let (wal, _) = Wal::open(dir.path(), config.clone(), callback).unwrap();
    for first in (1..=60).step_by(3) {
        wal.submit(batch(entries(first, 3, 1, 200), None)).unwrap();
        assert_eq!(reports.recv().unwrap().unwrap(), first + 2);
    }
    let segments_before = segment_files(dir.path()).len();
    assert!(segments_before > 3, "the entries span several segments");
    wal.compact(40).unwrap();
    wal.submit(batch(vec![entry(61, 1, 8)], None)).unwrap();
    // The compaction and the next batch are durable in order (one or two reports).
    while reports.recv().unwrap().unwrap() < 61 {}
    wal.close().unwrap();
    let segments_after = segment_files(dir.path()).len();
    assert!(
        segments_after < segments_before,
        "{segments_after} segments after the compaction, {segments_before} before"
    );
    let (_, recovered) = WalWriter::open(dir.path(), config).unwrap();
    assert_eq!(recovered.compacted_index, 40);
    assert_eq!(recovered.first_index, 41);
    let mut expected = entries(41, 20, 1, 200);
    expected.push(entry(61, 1, 8));
    assert_eq!(recovered.entries, expected);
}

/// "wal: a vote alone is durable"
#[test]
fn wal_a_hard_state_only_batch_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let hard_state = HardState {
        term: 7,
        vote: 2,
        commit: 0,
    };
    let (mut writer, _) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    let durable = writer.append(&batch(vec![], Some(hard_state))).unwrap();
    assert_eq!(
        durable,
        Durable {
            last_index: 0,
            last_term: 0,
            hard_state,
            commands_durable_total: 0,
            group_duration: Duration::ZERO,
            roll_duration: Duration::ZERO,
        }
    );
    drop(writer);
    let (_, recovered) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(recovered.hard_state, hard_state);
    assert!(recovered.entries.is_empty());
}

/// "wal: a record larger than a segment gets a segment of its own"
#[test]
fn wal_a_record_larger_than_a_segment_gets_its_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(4096);
    let (mut writer, _) = WalWriter::open(dir.path(), config.clone()).unwrap();
    writer.append(&batch(vec![entry(1, 1, 10)], None)).unwrap();
    writer
        .append(&batch(vec![entry(2, 1, 50_000)], None))
        .unwrap();
    writer.append(&batch(vec![entry(3, 1, 10)], None)).unwrap();
    let too_large = writer
        .append(&batch(vec![entry(4, 1, 2 << 20)], None))
        .unwrap_err();
    assert!(
        matches!(too_large, WalError::RecordTooLarge { .. }),
        "{too_large}"
    );
    drop(writer);
    let (_, recovered) = WalWriter::open(dir.path(), config).unwrap();
    assert_eq!(
        recovered.entries,
        vec![entry(1, 1, 10), entry(2, 1, 50_000), entry(3, 1, 10)]
    );
}

/// "wal: invalid batches are refused without harm"
#[test]
fn wal_invalid_batches_are_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, _) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    writer.append(&batch(entries(1, 3, 2, 4), None)).unwrap();
    let gap = writer.append(&batch(vec![entry(5, 2, 4)], None));
    assert!(matches!(gap, Err(WalError::InvalidBatch(_))));
    let holes = writer.append(&batch(vec![entry(4, 2, 4), entry(6, 2, 4)], None));
    assert!(matches!(holes, Err(WalError::InvalidBatch(_))));
    let older_term = writer.append(&batch(vec![entry(4, 1, 4)], None));
    assert!(matches!(older_term, Err(WalError::InvalidBatch(_))));
    assert_eq!(
        writer
            .append(&batch(vec![entry(4, 2, 4)], None))
            .unwrap()
            .last_index,
        4
    );
}

/// "wal: group commit: concurrent writers coalesce and each sees its index durable"
#[test]
fn wal_group_commit_concurrent_writers_coalesce() {
    let dir = tempfile::tempdir().unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let callback = Box::new(move |report: Result<Durable, WalError>| {
        sink.lock().unwrap().push(report.unwrap().last_index);
    });
    let (wal, _) = Wal::open(dir.path(), WalConfig::default(), callback).unwrap();
    let wal = Arc::new(wal);
    let next_index = Arc::new(Mutex::new(1u64));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (wal, next_index) = (wal.clone(), next_index.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let mut next = next_index.lock().unwrap();
                    wal.submit(batch(vec![entry(*next, 1, 64)], None)).unwrap();
                    *next += 1;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    Arc::try_unwrap(wal).unwrap().close().unwrap();
    let reports = reports.lock().unwrap();
    assert_eq!(reports.last(), Some(&400));
    assert!(
        reports.windows(2).all(|pair| pair[0] <= pair[1]),
        "monotonic"
    );
    let (_, recovered) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(recovered.entries.len(), 400);
}

/// A callback that holds the WAL thread inside each report: it sends the report's durable
/// count (0 for an error) to `entered`, then waits for a message on `release` (or for
/// `release` to be dropped, after which it returns at once).
fn held_callback() -> (DurableCallback, mpsc::Receiver<u64>, mpsc::Sender<()>) {
    let (entered_sender, entered) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let callback = Box::new(move |report: Result<Durable, WalError>| {
        let _ = entered_sender.send(report.map_or(0, |durable| durable.commands_durable_total));
        let _ = released.lock().unwrap().recv();
    });
    (callback, entered, release)
}

/// "wal: group commit: a full queue refuses, it does not block"
#[test]
fn wal_group_commit_a_full_queue_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (callback, entered, release) = held_callback();
    let config = WalConfig {
        queue_batches_max: 4,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open(dir.path(), config, callback).unwrap();
    wal.submit(batch(vec![entry(1, 1, 8)], None)).unwrap();
    entered.recv().unwrap(); // the writer thread is now held inside the callback
    for index in 2..6 {
        wal.submit(batch(vec![entry(index, 1, 8)], None)).unwrap();
    }
    let full = wal.submit(batch(vec![entry(6, 1, 8)], None));
    assert_eq!(
        full,
        Err(SubmitError::QueueFull {
            queue_batches_max: 4
        })
    );
    drop(release); // the callback returns at once from now on
    wal.close().unwrap();
    let (_, recovered) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(recovered.last_index(), 5);
}

/// "wal: group commit: an invalid batch is fatal and reported once"
#[test]
fn wal_group_commit_an_error_is_fatal_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, reports) = mpsc::channel();
    let callback = Box::new(move |report: Result<Durable, WalError>| {
        let _ = sender.send(report.map_err(|error| error.to_string()));
    });
    let (wal, _) = Wal::open(dir.path(), WalConfig::default(), callback).unwrap();
    wal.submit(batch(vec![entry(7, 1, 8)], None)).unwrap();
    let report = reports.recv().unwrap();
    assert!(report.unwrap_err().contains("invalid batch"));
    let mut closed = Ok(());
    // The thread is gone once the report is out; submit sees it on its next try (bounded).
    for _ in 0..1000 {
        closed = wal.submit(batch(vec![entry(1, 1, 8)], None));
        if closed.is_err() {
            break;
        }
        std::thread::yield_now();
    }
    assert_eq!(closed, Err(SubmitError::Closed));
    assert!(matches!(wal.close(), Err(WalError::Poisoned)));
}

/// "wal: group commit: segment rolls take preallocated spares, none is left behind"
#[test]
fn wal_group_commit_rolls_onto_preallocated_spares() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, reports) = mpsc::channel();
    let callback = Box::new(move |report: Result<Durable, WalError>| {
        sender.send(report.unwrap().last_index).unwrap();
    });
    let (wal, _) = Wal::open(dir.path(), small_config(8192), callback).unwrap();
    for index in 1..=200 {
        wal.submit(batch(vec![entry(index, 1, 300)], None)).unwrap();
        // One at a time, so the preallocator gets a chance to hand spares over.
        while reports.recv().unwrap() < index {}
    }
    wal.close().unwrap();
    let leftovers = tmp_files(dir.path());
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(segment_files(dir.path()).len() > 5);
    let (_, recovered) = WalWriter::open(dir.path(), small_config(8192)).unwrap();
    assert_eq!(recovered.entries, entries(1, 200, 1, 300));
}

/// "wal: recovery: segments whose rename was not durable are found by their header"
///
/// A roll renames the installed spare without a directory fsync, so a crash may leave a
/// segment under its temporary name: recovery must take it by its header, while a spare that
/// never got a valid header (its zeros, or a header torn before its fdatasync) is removed.
#[test]
fn wal_recovery_finds_a_segment_left_under_its_temporary_name() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_segments(dir.path());
    let hard_state = HardState {
        term: 4,
        vote: 2,
        commit: 50,
    };
    let (mut writer, recovered) = WalWriter::open(dir.path(), small_config(4096)).unwrap();
    let expected_entries = recovered.entries;
    writer.append(&batch(vec![], Some(hard_state))).unwrap();
    drop(writer);
    // The last two segments lose their rename, as if the directory was never synced.
    for (at, path) in files[files.len() - 2..].iter().enumerate() {
        fs::rename(path, dir.path().join(format!("spare-{at:016x}.tmp"))).unwrap();
    }
    // A spare still all zeros, and one whose header write was torn by the crash.
    fs::write(
        dir.path().join("spare-0000000000000007.tmp"),
        vec![0u8; 4096],
    )
    .unwrap();
    let mut torn = fs::read(&files[0]).unwrap()[..32].to_vec();
    torn[20..].fill(0);
    fs::write(dir.path().join("0000000000000009.tmp"), torn).unwrap();

    let (mut writer, recovered) = WalWriter::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(recovered.entries, expected_entries);
    assert_eq!(recovered.hard_state, hard_state);
    assert_eq!(
        segment_files(dir.path()),
        files,
        "renamed back to their names"
    );
    let leftovers = tmp_files(dir.path());
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The log goes on where it ended.
    let next = expected_entries.last().unwrap().index + 1;
    writer
        .append(&batch(entries(next, 2, 4, 10), None))
        .unwrap();
    drop(writer);
    let (_, recovered) = WalWriter::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(recovered.last_index(), next + 1);
}

/// The seq in a segment file's name (`{seq:016x}-{first_index:016x}.wal`).
fn seq_of(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    u64::from_str_radix(&name[..16], 16).unwrap()
}

/// "wal: recovery: a recycled segment is removed, unless it was already reused"
///
/// A compacted segment is recycled under `recycled-{its seq}.tmp` and zero-filled in place
/// later: a crash may leave it with its old valid header over half-zeroed records, and it
/// must be removed, not taken for a segment. Once reused, its header carries a newer seq:
/// if that segment's rename was lost, it is found like any other.
#[test]
fn wal_recovery_removes_a_recycled_segment_unless_it_was_reused() {
    let (dir, aside, files) = compacted_at_45();
    let config = small_config(4096);
    let live = segment_files(dir.path());
    let compacted: Vec<&PathBuf> = files.iter().filter(|path| !path.exists()).collect();
    assert!(compacted.len() >= 2, "{compacted:?}");
    // The oldest compacted segment, recycled, its zero-fill cut short by the crash.
    let oldest = compacted[0];
    let recycled = dir
        .path()
        .join(format!("recycled-{:016x}.tmp", seq_of(oldest)));
    fs::copy(aside.path().join(oldest.file_name().unwrap()), &recycled).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&recycled)
        .unwrap()
        .write_all_at(&[0u8; 1500], 300)
        .unwrap();
    // The last segment was installed over another recycled segment, and its rename was lost.
    let last = live.last().unwrap();
    fs::rename(
        last,
        dir.path()
            .join(format!("recycled-{:016x}.tmp", seq_of(compacted[1]))),
    )
    .unwrap();

    let (_, recovered) = WalWriter::open(dir.path(), config).unwrap();
    assert_eq!(recovered.compacted_index, 45);
    assert_eq!(recovered.entries, entries(46, 15, 1, 200));
    assert_eq!(
        segment_files(dir.path()),
        live,
        "the reused one renamed back"
    );
    let leftovers = tmp_files(dir.path());
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A file's identity across renames: its inode, and its birth time where the file system
/// keeps one (an inode number alone may be reused by a new file).
fn identity(path: &Path) -> Option<(u64, Option<std::time::SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::metadata(path).ok()?;
    Some((metadata.ino(), metadata.created().ok()))
}

/// "wal: group commit: compacted segments are reused as zero-filled spares"
///
/// The reaper recycles compacted segments and the preallocator zero-fills them into spares
/// (no blocks freed, so no TRIM under `discard`): later segments are the same files under new
/// names, and none of their old records comes back after a restart.
#[test]
fn wal_group_commit_reuses_compacted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(8192);
    let (sender, reports) = mpsc::channel();
    let callback = Box::new(move |report: Result<Durable, WalError>| {
        sender.send(report.unwrap().last_index).unwrap();
    });
    let (wal, _) = Wal::open(dir.path(), config.clone(), callback).unwrap();
    let mut names = std::collections::HashMap::new();
    let mut reused = 0;
    // Entries of one size, and a last compaction a segment before the end: the last segment
    // is a reused file whose old records lie on the same boundaries as the new ones, so any
    // left after the end of the log would decode as records.
    for index in 1..=440 {
        wal.submit(batch(vec![entry(index, 1, 300)], None)).unwrap();
        while reports.recv().unwrap() < index {}
        if index % 50 == 0 && index <= 400 {
            wal.compact(index - 10).unwrap();
        }
        for path in segment_files(dir.path()) {
            let Some(id) = identity(&path) else { continue };
            match names.insert(id, path.clone()) {
                Some(old) if old != path => reused += 1,
                _ => {}
            }
        }
    }
    wal.close().unwrap();
    assert!(reused > 0, "no segment file was reused");
    let leftovers = tmp_files(dir.path());
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (_, recovered) = WalWriter::open(dir.path(), config).unwrap();
    assert_eq!(recovered.compacted_index, 390);
    assert_eq!(recovered.entries, entries(391, 50, 1, 300));
}

/// "wal: recovery: a crash after a roll, before the new segment's first fdatasync"
///
/// A roll writes the new segment's header without syncing it: the group's fdatasync makes it
/// durable with the records. If the crash comes first, the header's sector may never reach
/// the disk: that segment held nothing acknowledged and is removed; the log ends with the
/// sealed segment before it. A bad header in front of an intact record is corruption.
#[test]
fn wal_recovery_crash_before_a_new_segments_first_sync() {
    let dir = tempfile::tempdir().unwrap();
    let files = three_segments(dir.path());
    let (mut writer, recovered) = WalWriter::open(dir.path(), small_config(4096)).unwrap();
    let synced = recovered.entries;
    let mut next = synced.last().unwrap().index + 1;
    // Unsynced writes until one rolls onto a new segment.
    while writer.tail_position().path == *files.last().unwrap() {
        writer
            .write(&batch(entries(next, 3, 1, 200), None))
            .unwrap();
        next += 3;
    }
    let tail = writer.tail_position();
    assert_eq!(
        tail.synced_bytes, 0,
        "a new segment's header waits for the group's sync"
    );
    drop(writer);
    let sector = vec![0u8; 512];
    OpenOptions::new()
        .write(true)
        .open(&tail.path)
        .unwrap()
        .write_all_at(&sector, 0)
        .unwrap();

    let (opened, logs) = capture_logs(|| WalWriter::open(dir.path(), small_config(4096)));
    let (mut writer, recovered) = opened.unwrap();
    assert!(logs.contains("has no valid header"), "{logs}");
    // The roll synced the segment before it: the log ends with everything written there.
    let kept = recovered.last_index();
    assert!(
        kept >= synced.last().unwrap().index && kept < next,
        "{kept}"
    );
    assert_eq!(recovered.entries[..synced.len()], synced[..]);
    writer
        .append(&batch(entries(kept + 1, 2, 2, 10), None))
        .unwrap();
    drop(writer);
    let (_, recovered) = WalWriter::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(recovered.last_index(), kept + 2);

    // Damage to a synced header, with the records after it intact, is refused.
    let last = segment_files(dir.path()).pop().unwrap();
    xor_byte(&last, 3, 0x01);
    let error = WalWriter::open(dir.path(), small_config(4096)).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, WalError::Corrupt { .. }), "{message}");
    assert!(message.contains("record after it is valid"), "{message}");
    assert!(message.contains(&last.display().to_string()), "{message}");
}

/// "wal: recovery: a deep truncation is durable before its dead segments are deleted"
///
/// A truncation below the current segment rolls onto a segment whose header is the boundary,
/// then deletes the segments it discards. That header must be synced first: were it lost in a
/// crash after the deletions, the older segments' stale entries would come back.
#[test]
fn wal_recovery_crash_after_a_deep_truncation_keeps_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    three_segments(dir.path());
    let (mut writer, _) = WalWriter::open(dir.path(), small_config(4096)).unwrap();
    writer.write(&batch(entries(10, 2, 2, 10), None)).unwrap();
    let tail = writer.tail_position();
    assert!(
        tail.synced_bytes >= 32,
        "the boundary header is synced: {tail:?}"
    );
    drop(writer);
    // The crash loses whatever was not synced.
    let lost = vec![0u8; (tail.written_bytes - tail.synced_bytes) as usize];
    OpenOptions::new()
        .write(true)
        .open(&tail.path)
        .unwrap()
        .write_all_at(&lost, tail.synced_bytes)
        .unwrap();
    let (_, recovered) = WalWriter::open(dir.path(), small_config(4096)).unwrap();
    assert_eq!(recovered.entries, entries(1, 9, 1, 200));
}

/// Hard-links every segment into `aside`: the links see later in-place writes (the END marker
/// a roll adds) but survive the deletion, as the files would after a crash before it.
fn link_segments(dir: &Path, aside: &Path) -> Vec<PathBuf> {
    let files = segment_files(dir);
    for path in &files {
        fs::hard_link(path, aside.join(path.file_name().unwrap())).unwrap();
    }
    files
}

fn restore_deleted(files: &[PathBuf], aside: &Path) -> usize {
    let missing: Vec<_> = files.iter().filter(|path| !path.exists()).collect();
    for path in &missing {
        fs::hard_link(aside.join(path.file_name().unwrap()), path).unwrap();
    }
    missing.len()
}

/// "wal: recovery: crash after a deep truncation, before its dead segments were deleted"
#[test]
fn wal_recovery_crash_before_truncated_segments_were_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(4096);
    let (mut writer, _) = WalWriter::open(dir.path(), config.clone()).unwrap();
    for first in (1..=60).step_by(3) {
        writer
            .append(&batch(entries(first, 3, 1, 200), None))
            .unwrap();
    }
    let aside = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
    let files = link_segments(dir.path(), aside.path());
    writer.append(&batch(entries(10, 2, 2, 10), None)).unwrap();
    drop(writer);
    assert!(
        restore_deleted(&files, aside.path()) > 0,
        "the truncation deleted whole segments"
    );
    let (_, recovered) = WalWriter::open(dir.path(), config).unwrap();
    let mut expected = entries(1, 9, 1, 200);
    expected.extend(entries(10, 2, 2, 10));
    assert_eq!(recovered.entries, expected);
}

/// Entries 1..=60 over segments of 4096 bytes, each segment hard-linked into the second
/// directory returned (`link_segments`), then compacted up to 45 (whole segments deleted).
/// Returns the directories and the segments there were before the compaction.
fn compacted_at_45() -> (tempfile::TempDir, tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(4096);
    let (mut writer, _) = WalWriter::open(dir.path(), config.clone()).unwrap();
    for first in (1..=60).step_by(3) {
        writer
            .append(&batch(entries(first, 3, 1, 200), None))
            .unwrap();
    }
    let aside = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
    let files = link_segments(dir.path(), aside.path());
    writer.compact(45).unwrap();
    drop(writer);
    (dir, aside, files)
}

/// "wal: recovery: crash after a compaction, before its segments were deleted"
#[test]
fn wal_recovery_crash_before_compacted_segments_were_deleted() {
    let (dir, aside, files) = compacted_at_45();
    let config = small_config(4096);
    assert!(
        restore_deleted(&files, aside.path()) > 0,
        "the compaction deleted whole segments"
    );
    let (_, recovered) = WalWriter::open(dir.path(), config).unwrap();
    assert_eq!(recovered.compacted_index, 45);
    assert_eq!(recovered.entries, entries(46, 15, 1, 200));
}

/// "wal: install snapshot: a stale suffix above the snapshot is discarded"
#[test]
fn wal_install_snapshot_discards_the_stale_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, _) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    // Entries 1..=10 of term 1; the leader's snapshot covers up to 6 with a different history
    // above 4, so 7..=10 must not survive next to it.
    writer.append(&batch(entries(1, 10, 1, 50), None)).unwrap();
    let durable = writer.install_snapshot(6).unwrap();
    assert_eq!(durable.last_index, 6);
    let hard_state = HardState {
        term: 3,
        vote: 0,
        commit: 6,
    };
    writer
        .append(&batch(entries(7, 2, 3, 50), Some(hard_state)))
        .unwrap();
    drop(writer);
    let (_, recovered) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(recovered.compacted_index, 6);
    assert_eq!(recovered.first_index, 7);
    let terms: Vec<(u64, u64)> = recovered
        .entries
        .iter()
        .map(|e| (e.index, e.term))
        .collect();
    assert_eq!(terms, vec![(7, 3), (8, 3)]);
    assert_eq!(recovered.hard_state, hard_state);
}

/// "wal: group commit: the durable count matches the commands submitted"
#[test]
fn wal_group_commit_reports_the_durable_command_count() {
    let dir = tempfile::tempdir().unwrap();
    let (sender, receiver) = mpsc::channel();
    let callback = Box::new(move |report: Result<Durable, WalError>| {
        let _ = sender.send(report.map(|d| d.commands_durable_total));
    });
    let (wal, _) = Wal::open(dir.path(), WalConfig::default(), callback).unwrap();
    for index in 1..=20 {
        wal.submit(batch(entries(index, 1, 1, 10), None)).unwrap();
    }
    wal.install_snapshot(20).unwrap();
    let mut last = 0;
    while last < 21 {
        let total = receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert!(total > last, "durable counts must grow");
        last = total;
    }
    assert_eq!(last, 21);
}

/// "wal: write_now: on the caller's thread, only when the WAL thread is done, in order"
#[test]
fn wal_write_now_waits_for_nothing_and_never_overtakes_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (callback, entered, release) = held_callback();
    let (wal, _) = Wal::open(dir.path(), WalConfig::default(), callback).unwrap();
    // Dropped before `wal` if an assertion fails: the thread must leave the callback for the
    // WAL to close.
    let release = release;
    wal.submit(batch(vec![entry(1, 1, 8)], None)).unwrap();
    // The thread has written entry 1 and is held in the callback; entry 2 waits in its queue.
    assert_eq!(entered.recv().unwrap(), 1);
    wal.submit(batch(vec![entry(2, 1, 8)], None)).unwrap();
    let early = wal.write_now(&batch(vec![entry(3, 1, 8)], None));
    assert!(matches!(early, Err(WriteNowError::Busy)), "{early:?}");
    release.send(()).unwrap(); // the thread writes entry 2 and reports it
    assert_eq!(entered.recv().unwrap(), 2);
    release.send(()).unwrap();
    // Everything queued is written: entry 3 goes now, on this thread, counted third.
    let hard_state = HardState {
        term: 1,
        vote: 1,
        commit: 2,
    };
    let durable = wal
        .write_now(&batch(vec![entry(3, 1, 8)], Some(hard_state)))
        .unwrap();
    assert_eq!(durable.last_index, 3);
    assert_eq!(durable.commands_durable_total, 3);
    assert_eq!(durable.hard_state, hard_state);
    // The thread's count goes on from there.
    drop(release); // the callback returns at once from now on
    wal.submit(batch(vec![entry(4, 1, 8)], None)).unwrap();
    assert_eq!(entered.recv().unwrap(), 4);
    wal.close().unwrap();
    let (_, recovered) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(
        recovered.entries,
        (1..=4).map(|i| entry(i, 1, 8)).collect::<Vec<_>>()
    );
    assert_eq!(recovered.hard_state, hard_state);
}

/// "wal: write_now: a failure is fatal, as on the thread"
#[test]
fn wal_write_now_failure_closes_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let callback = Box::new(|_report: Result<Durable, WalError>| {});
    let (wal, _) = Wal::open(dir.path(), WalConfig::default(), callback).unwrap();
    wal.write_now(&batch(vec![entry(1, 1, 8)], None)).unwrap();
    // A gap: refused by the writer, and the WAL writes nothing more.
    let failed = wal.write_now(&batch(vec![entry(7, 1, 8)], None));
    let message = match &failed {
        Err(WriteNowError::Failed(error)) => error.to_string(),
        other => panic!("expected a failure, got {other:?}"),
    };
    assert!(message.contains("invalid batch"), "{message}");
    assert_eq!(
        wal.submit(batch(vec![entry(2, 1, 8)], None)),
        Err(SubmitError::Closed)
    );
    assert!(matches!(
        wal.write_now(&batch(vec![entry(2, 1, 8)], None)),
        Err(WriteNowError::Failed(WalError::Poisoned))
    ));
    drop(wal);
    let (_, recovered) = WalWriter::open(dir.path(), WalConfig::default()).unwrap();
    assert_eq!(recovered.entries, vec![entry(1, 1, 8)]);
}
