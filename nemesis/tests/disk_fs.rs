//! The fault-injecting filesystem's page-cache model, on a real FUSE mount served by the real
//! `nemesis fs serve` process (root only; each test mounts its own and unmounts on drop).
//! One test per command: synced data survives every fault, unsynced data does not survive
//! lose-unsynced, a torn write keeps only a whole-sector prefix, corrupt flips one bit of a
//! sealed segment or snapshot, a failed fsync drops the unsynced data and fails with EIO, a
//! frozen disk holds fsyncs back (they make nothing durable) until they are released.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nemesis::fs::control::{self, DiskHandle};
use nemesis::fs::{DiskReply, DiskRequest, ServeOptions};

/// EIO, as the kernel passes it through FUSE.
const EIO: i32 = 5;

/// A mount in a temporary directory; dropping it unmounts (the handle is dropped first).
struct Mounted {
    disk: DiskHandle,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
    fn send(&self, request: &DiskRequest) -> DiskReply {
        control::request(&self.disk.record.control, request).unwrap()
    }
}

fn mount() -> Option<Mounted> {
    if !nemesis::netns::is_root() {
        println!("SKIPPED: FUSE mounts need root");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        backing: dir.path().join("backing"),
        mountpoint: dir.path().join("mnt"),
        control: dir.path().join("control.sock"),
    };
    let binary = Path::new(env!("CARGO_BIN_EXE_nemesis"));
    let disk = control::spawn_disk(binary, &options, &dir.path().join("disk.log")).unwrap();
    let root = disk.record.mountpoint.clone();
    Some(Mounted {
        disk,
        root,
        _dir: dir,
    })
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

/// Creates `relative` with `content`, fsyncs it and its directory: durable.
fn write_synced(mounted: &Mounted, relative: &str, content: &[u8]) {
    let path = mounted.path(relative);
    let file = File::create(&path).unwrap();
    file.write_all_at(content, 0).unwrap();
    file.sync_data().unwrap();
    sync_dir(path.parent().unwrap());
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn crashed(reply: DiskReply) -> nemesis::fs::CrashReport {
    match reply {
        DiskReply::Crashed(report) => report,
        other => panic!("expected a crash report, got {other:?}"),
    }
}

#[test]
fn disk_lose_unsynced_keeps_synced_data_and_entries_and_drops_the_rest() {
    let Some(m) = mount() else { return };
    fs::create_dir(m.path("wal")).unwrap();
    sync_dir(&m.root);
    write_synced(&m, "wal/segment", &[b'A'; 8192]);
    write_synced(&m, "wal/old", b"old and durable");
    write_synced(&m, "wal/tmp", b"renamed later");
    // Unsynced from here on.
    let segment = open_rw(&m.path("wal/segment"));
    segment.write_all_at(&[b'B'; 100], 4096).unwrap();
    segment.write_all_at(&[b'C'; 1000], 8192).unwrap();
    let created = File::create(m.path("wal/created")).unwrap();
    created
        .write_all_at(b"synced file, unsynced entry", 0)
        .unwrap();
    created.sync_data().unwrap();
    fs::rename(m.path("wal/tmp"), m.path("wal/renamed")).unwrap();
    fs::remove_file(m.path("wal/old")).unwrap();
    fs::create_dir(m.path("snap")).unwrap();
    drop((segment, created));

    let report = crashed(m.send(&DiskRequest::LoseUnsynced));
    assert!(report.torn.is_none());
    assert_eq!(report.files_reverted, 1, "{report:?}");

    assert_eq!(fs::read(m.path("wal/segment")).unwrap(), vec![b'A'; 8192]);
    assert_eq!(fs::read(m.path("wal/old")).unwrap(), b"old and durable");
    assert_eq!(fs::read(m.path("wal/tmp")).unwrap(), b"renamed later");
    for gone in ["wal/created", "wal/renamed", "snap"] {
        assert!(!m.path(gone).exists(), "{gone} survived");
    }
    let mut names: Vec<String> = fs::read_dir(m.path("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["old", "segment", "tmp"]);
    // A file synced in a directory whose own entry was never synced goes with the directory.
    fs::create_dir(m.path("fresh")).unwrap();
    write_synced(&m, "fresh/file", b"x");
    crashed(m.send(&DiskRequest::LoseUnsynced));
    assert!(!m.path("fresh").exists());
    assert_eq!(fs::read(m.path("wal/segment")).unwrap(), vec![b'A'; 8192]);
}

#[test]
fn disk_torn_keeps_a_whole_sector_prefix_of_the_last_write_only() {
    let Some(m) = mount() else { return };
    let written = 8192usize;
    let mut kept_sizes = std::collections::BTreeSet::new();
    for seed in 0..8u64 {
        write_synced(&m, "segment", &[b'S'; 4096]);
        let file = open_rw(&m.path("segment"));
        file.write_all_at(&[b'E'; 700], 100).unwrap();
        file.write_all_at(&vec![b'T'; written], 4096).unwrap();
        drop(file);
        let report = crashed(m.send(&DiskRequest::Torn { seed }));
        let torn = report.torn.unwrap();
        assert_eq!((torn.file.as_str(), torn.offset), ("segment", 4096));
        assert_eq!(torn.written_bytes, written as u64);
        let kept = torn.kept_bytes as usize;
        assert!(kept < written, "seed {seed}: kept the whole write");
        assert_eq!(kept % 512, 0, "seed {seed}: {kept} not whole sectors");
        let content = fs::read(m.path("segment")).unwrap();
        assert_eq!(content.len(), 4096 + kept, "seed {seed}");
        assert!(
            content[..4096].iter().all(|b| *b == b'S'),
            "synced data changed"
        );
        assert!(content[4096..].iter().all(|b| *b == b'T'));
        kept_sizes.insert(kept);
    }
    assert!(kept_sizes.len() > 1, "the prefix is random: {kept_sizes:?}");
}

#[test]
fn disk_corrupt_flips_one_bit_of_a_sealed_segment_or_snapshot() {
    let Some(m) = mount() else { return };
    fs::create_dir(m.path("wal")).unwrap();
    fs::create_dir(m.path("snap")).unwrap();
    sync_dir(&m.root);
    let files = [
        ("wal/0000000000000001-0000000000000001.wal", vec![7u8; 3000]),
        ("wal/0000000000000002-0000000000000100.wal", vec![9u8; 3000]),
        ("wal/0000000000000003-0000000000000200.wal", vec![5u8; 3000]),
        (
            "snap/0000000000000150-0000000000000002.snap",
            vec![3u8; 2000],
        ),
    ];
    let mut hit = std::collections::BTreeSet::new();
    for seed in 0..12u64 {
        for (name, content) in &files {
            write_synced(&m, name, content);
        }
        let corruption = match m.send(&DiskRequest::Corrupt { seed }) {
            DiskReply::Corrupted(c) => c,
            other => panic!("{other:?}"),
        };
        assert_ne!(
            corruption.file, files[2].0,
            "the last segment is never corrupted"
        );
        for (name, content) in &files {
            let now = fs::read(m.path(name)).unwrap();
            let flipped: Vec<(usize, u8)> = (now.iter().zip(content))
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(at, (a, b))| (at, a ^ b))
                .collect();
            if *name == corruption.file {
                let bit = 1u8 << corruption.bit;
                assert_eq!(flipped, [(corruption.offset as usize, bit)], "{name}");
            } else {
                assert!(flipped.is_empty(), "{name} changed");
            }
        }
        hit.insert(corruption.file);
    }
    assert!(hit.len() > 1, "the file is drawn: {hit:?}");
}

#[test]
fn disk_fsync_error_fails_with_eio_and_drops_the_unsynced_data() {
    let Some(m) = mount() else { return };
    write_synced(&m, "segment", &[b'S'; 4096]);
    let file = open_rw(&m.path("segment"));
    file.write_all_at(&[b'U'; 512], 4096).unwrap();
    assert_eq!(m.send(&DiskRequest::FsyncError), DiskReply::Armed);
    let error = file.sync_data().unwrap_err();
    assert_eq!(error.raw_os_error(), Some(EIO), "{error}");
    // The failed pages are gone at once: no retry can make them durable.
    assert_eq!(fs::read(m.path("segment")).unwrap(), vec![b'S'; 4096]);
    file.sync_data().unwrap();
    file.write_all_at(&[b'L'; 512], 4096).unwrap();
    file.sync_data().unwrap();
    file.write_all_at(&[b'X'; 512], 8192).unwrap();
    drop(file);
    match m.send(&DiskRequest::Status) {
        DiskReply::Status(status) => assert_eq!(status.fsync_errors_injected, 1),
        other => panic!("{other:?}"),
    }
    crashed(m.send(&DiskRequest::LoseUnsynced));
    let content = fs::read(m.path("segment")).unwrap();
    assert_eq!(content.len(), 4608);
    assert!(content[..4096].iter().all(|b| *b == b'S'));
    assert!(content[4096..].iter().all(|b| *b == b'L'));
}

#[test]
fn disk_freeze_holds_fsyncs_back_until_release_and_they_make_nothing_durable() {
    let Some(m) = mount() else { return };
    write_synced(&m, "segment", &[b'S'; 4096]);
    let file = open_rw(&m.path("segment"));
    file.write_all_at(&[b'U'; 512], 4096).unwrap();
    assert_eq!(m.send(&DiskRequest::Freeze), DiskReply::Done);
    // A real process fdatasyncs the file (coreutils `sync --data FILE`): it blocks.
    let mut syncer = std::process::Command::new("sync")
        .arg("--data")
        .arg(m.path("segment"))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        syncer.try_wait().unwrap().is_none(),
        "the fsync completed while frozen"
    );
    // The power cut: SIGKILL, then the held fsync is answered so the process can go.
    syncer.kill().unwrap();
    assert_eq!(
        m.send(&DiskRequest::Release),
        DiskReply::Released { fsyncs: 1 }
    );
    let status = syncer.wait().unwrap();
    assert!(!status.success(), "{status}");
    drop(file);
    let report = crashed(m.send(&DiskRequest::LoseUnsynced));
    assert_eq!(report.files_reverted, 1, "{report:?}");
    assert_eq!(fs::read(m.path("segment")).unwrap(), vec![b'S'; 4096]);
    // The crash thaws the disk: fsyncs complete again.
    let file = open_rw(&m.path("segment"));
    file.write_all_at(&[b'L'; 512], 4096).unwrap();
    file.sync_data().unwrap();
    drop(file);
    crashed(m.send(&DiskRequest::LoseUnsynced));
    assert_eq!(fs::read(m.path("segment")).unwrap().len(), 4608);
}
