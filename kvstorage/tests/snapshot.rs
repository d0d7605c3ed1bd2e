//! Snapshot store scenarios and the data directory lock.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;

use kvraft::message::{Membership, SnapshotMeta};
use kvstorage::datadir::{DataDir, DataDirError};
use kvstorage::snapshot::{SnapshotError, SnapshotStore};

fn meta(last_index: u64, last_term: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index,
        last_term,
        membership: Membership::new(vec![1, 2, 3]),
        membership_index: 0,
    }
}

fn body(seed: u8, len_bytes: usize) -> Vec<u8> {
    (0..len_bytes)
        .map(|at| (at as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_body(store: &SnapshotStore, path: &std::path::Path) -> (SnapshotMeta, Vec<u8>) {
    let (meta, mut reader) = store.open_body(path).unwrap();
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    (meta, bytes)
}

/// "snapshot: write, reopen, read back; at most two are kept"
#[test]
fn snapshot_write_reopen_and_keep_two() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path()).unwrap();
    assert!(store.latest().is_none());
    for (index, seed) in [(10, 1), (20, 2), (30, 3)] {
        store
            .write(&meta(index, 2), &body(seed, 100_000)[..])
            .unwrap();
    }
    let snapshots = fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(snapshots, 2);
    let store = SnapshotStore::open(dir.path()).unwrap();
    let (latest, path) = store.latest().unwrap();
    assert_eq!(latest, meta(30, 2));
    assert_eq!(read_body(&store, &path), (meta(30, 2), body(3, 100_000)));
    assert!(store.corrupt().is_empty());
}

/// "snapshot: a corrupt newest snapshot is reported and the older one is used"
#[test]
fn snapshot_corrupt_newest_is_reported_and_older_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SnapshotStore::open(dir.path()).unwrap();
    store.write(&meta(10, 1), &body(1, 5000)[..]).unwrap();
    let newest = store.write(&meta(20, 1), &body(2, 5000)[..]).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&newest)
        .unwrap();
    file.write_all_at(&[0xFF], 4000).unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    assert_eq!(store.latest().unwrap().0, meta(10, 1));
    assert_eq!(store.corrupt().len(), 1);
    assert_eq!(store.corrupt()[0].path, newest);
    assert!(
        store.corrupt()[0].reason.contains("checksum"),
        "{:?}",
        store.corrupt()
    );
}

/// "snapshot: install from chunks survives a crash mid-way"
#[test]
fn snapshot_install_from_chunks_survives_a_crash_midway() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = SnapshotStore::open(leader_dir.path()).unwrap();
    let source = leader.write(&meta(50, 3), &body(7, 300_000)[..]).unwrap();
    let total = leader.file_bytes(&source).unwrap();
    let mut follower = SnapshotStore::open(follower_dir.path()).unwrap();
    follower.write(&meta(5, 1), &body(9, 10)[..]).unwrap();

    // The follower crashes after half of the chunks: only a temporary file is left behind.
    let mut receiver = follower.receive().unwrap();
    let chunk_bytes = 64 * 1024;
    let mut offset = 0;
    while offset < total / 2 {
        let chunk = leader.read_chunk(&source, offset, chunk_bytes).unwrap();
        receiver.write_chunk(offset, &chunk).unwrap();
        offset += chunk.len() as u64;
    }
    std::mem::forget(receiver); // a crash: no cleanup runs
    drop(follower);

    let mut follower = SnapshotStore::open(follower_dir.path()).unwrap();
    assert_eq!(
        follower.latest().unwrap().0,
        meta(5, 1),
        "the old snapshot still stands"
    );
    assert_eq!(
        fs::read_dir(follower_dir.path()).unwrap().count(),
        1,
        "temp file removed"
    );

    // The retry streams everything; an out-of-order chunk is refused on the way.
    let mut receiver = follower.receive().unwrap();
    let skipped = receiver.write_chunk(100, b"x");
    assert!(matches!(
        skipped,
        Err(SnapshotError::OutOfOrder {
            expected_offset: 0,
            ..
        })
    ));
    let mut offset = 0;
    while offset < total {
        let chunk = leader.read_chunk(&source, offset, chunk_bytes).unwrap();
        receiver.write_chunk(offset, &chunk).unwrap();
        offset += chunk.len() as u64;
    }
    assert_eq!(receiver.finish(&mut follower).unwrap(), meta(50, 3));
    let (latest, path) = follower.latest().unwrap();
    assert_eq!(latest, meta(50, 3));
    assert_eq!(read_body(&follower, &path).1, body(7, 300_000));
}

/// "snapshot: a damaged transfer is refused and nothing is installed"
#[test]
fn snapshot_damaged_transfer_is_refused() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = SnapshotStore::open(leader_dir.path()).unwrap();
    let source = leader.write(&meta(8, 2), &body(4, 10_000)[..]).unwrap();
    let mut bytes = fs::read(&source).unwrap();
    bytes[9_000] ^= 0x01;
    let mut follower = SnapshotStore::open(follower_dir.path()).unwrap();
    let mut receiver = follower.receive().unwrap();
    receiver.write_chunk(0, &bytes).unwrap();
    let refused = receiver.finish(&mut follower);
    assert!(
        matches!(refused, Err(SnapshotError::Corrupt { .. })),
        "{refused:?}"
    );
    assert!(follower.latest().is_none());
    assert_eq!(fs::read_dir(follower_dir.path()).unwrap().count(), 0);
    let mut receiver = follower.receive().unwrap();
    let too_long = [fs::read(&source).unwrap(), vec![0]].concat();
    assert!(matches!(
        receiver.write_chunk(0, &too_long),
        Err(SnapshotError::TooLarge { .. })
    ));
    receiver.abort().unwrap();
}

/// "snapshot: install a complete file received by other means"
#[test]
fn snapshot_install_file() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let mut leader = SnapshotStore::open(leader_dir.path()).unwrap();
    let source = leader.write(&meta(12, 4), &body(5, 2000)[..]).unwrap();
    let received = leader_dir.path().join("received.bin");
    fs::copy(&source, &received).unwrap();
    let mut follower = SnapshotStore::open(follower_dir.path()).unwrap();
    assert_eq!(follower.install_file(&received).unwrap(), meta(12, 4));
    assert!(!received.exists());
    let (_, path) = follower.latest().unwrap();
    assert_eq!(read_body(&follower, &path).1, body(5, 2000));
    let garbage = leader_dir.path().join("garbage.bin");
    fs::write(&garbage, b"not a snapshot").unwrap();
    assert!(matches!(
        follower.install_file(&garbage),
        Err(SnapshotError::Corrupt { .. })
    ));
}

/// "datadir: a second process on the same directory refuses to start"
#[test]
fn datadir_second_lock_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = DataDir::lock(dir.path()).unwrap();
    assert!(first.wal_dir().is_dir());
    assert!(first.snap_dir().is_dir());
    // flock conflicts between open file descriptions, so a second open in this process stands
    // in for a second process.
    let second = DataDir::lock(dir.path()).unwrap_err();
    println!("second lock: {second}");
    assert!(matches!(&second, DataDirError::Locked { .. }));
    assert!(
        second
            .to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{second}"
    );
    drop(first);
    DataDir::lock(dir.path()).unwrap();
}
