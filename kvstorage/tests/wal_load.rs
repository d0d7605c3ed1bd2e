//! Reading evicted entries back from the WAL while it runs ("wal: load: ...").
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{batch, entries, small_config};
use kvraft::message::{Entry, Index, Term};
use kvraft::EntriesToLoad;
use kvstorage::wal::load::{read_entries, read_entries_in_chunks, LoadCursor};
use kvstorage::wal::WalWriter;

const RECORD_BYTES_MAX: u64 = 1 << 20;

fn load(low: Index, high: Index, terms: &[(Index, Term)], bytes_max: u64) -> EntriesToLoad {
    EntriesToLoad {
        to: 2,
        low,
        high,
        terms: terms.to_vec(),
        bytes_max,
    }
}

fn shape(entries: &[Entry]) -> Vec<(Index, Term, usize)> {
    entries
        .iter()
        .map(|e| (e.index, e.term, e.data.len()))
        .collect()
}

/// 1..=40 of term 1 (100-byte payloads) over several segments, then 25..=50 of term 2 (60
/// bytes) after a leader change cut the log at 25: the WAL holds two records for 25..=40.
fn overwritten_wal(dir: &std::path::Path) -> WalWriter {
    let (mut writer, _) = WalWriter::open(dir, small_config(2048)).unwrap();
    for first in (1..=40).step_by(5) {
        writer
            .append(&batch(entries(first, 5, 1, 100), None))
            .unwrap();
    }
    writer.append(&batch(entries(25, 10, 2, 60), None)).unwrap();
    writer.append(&batch(entries(35, 16, 2, 60), None)).unwrap();
    // The cut at 25 starts a segment of its own (its header's first index is a boundary).
    let segments = common_segments(dir);
    assert!(segments >= 2, "the test needs two segments, not {segments}");
    writer
}

fn common_segments(dir: &std::path::Path) -> usize {
    let files = std::fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().path());
    files
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .count()
}

/// "wal: load: only the records of the log's terms, across segments and an overwritten suffix"
#[test]
fn wal_load_reads_the_logs_entries_among_overwritten_records() {
    let dir = tempfile::tempdir().unwrap();
    let _writer = overwritten_wal(dir.path());
    let asked = load(20, 50, &[(20, 1), (25, 2)], u64::MAX);
    let (read, _) = read_entries(dir.path(), RECORD_BYTES_MAX, &asked, None).unwrap();
    let mut expected: Vec<(Index, Term, usize)> = (20..25).map(|i| (i, 1, 100)).collect();
    expected.extend((25..=50).map(|i| (i, 2, 60)));
    assert_eq!(shape(&read), expected);
    // From the middle of the overwritten range: its term-2 records, not the older ones.
    let asked = load(30, 33, &[(30, 2)], u64::MAX);
    let (read, _) = read_entries(dir.path(), RECORD_BYTES_MAX, &asked, None).unwrap();
    assert_eq!(
        shape(&read),
        (30..=33).map(|i| (i, 2, 60)).collect::<Vec<_>>()
    );
}

/// "wal: load: reads of a few bytes each continue where the last stopped"
#[test]
fn wal_load_continues_from_its_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let _writer = overwritten_wal(dir.path());
    let terms = [(20, 1), (25, 2)];
    let mut cursor: Option<LoadCursor> = None;
    let mut read = Vec::new();
    let mut low = 20;
    while low <= 50 {
        // About two entries a read.
        let asked = load(low, 50, &terms[usize::from(low >= 25)..], 150);
        let (more, next) =
            read_entries(dir.path(), RECORD_BYTES_MAX, &asked, cursor.as_ref()).unwrap();
        assert!(
            !more.is_empty() && more.len() <= 2,
            "read {} at {low}",
            more.len()
        );
        low += more.len() as u64;
        assert_eq!(next.as_ref().map(|c| c.next_index), Some(low));
        read.extend(more);
        cursor = next;
    }
    let mut expected: Vec<(Index, Term, usize)> = (20..25).map(|i| (i, 1, 100)).collect();
    expected.extend((25..=50).map(|i| (i, 2, 60)));
    assert_eq!(shape(&read), expected);
}

/// "wal: load: records cut by the read's chunks are read whole"
#[test]
fn wal_load_reads_records_cut_by_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let _writer = overwritten_wal(dir.path());
    let asked = load(20, 50, &[(20, 1), (25, 2)], u64::MAX);
    let (whole, _) = read_entries(dir.path(), RECORD_BYTES_MAX, &asked, None).unwrap();
    // Chunks of 1 to 9 bytes: every record, and every length field, is cut somewhere.
    for chunk_bytes in 1..10 {
        let (read, _) =
            read_entries_in_chunks(dir.path(), RECORD_BYTES_MAX, &asked, None, chunk_bytes)
                .unwrap();
        assert_eq!(shape(&read), shape(&whole), "chunks of {chunk_bytes} bytes");
    }
    assert_eq!(whole.len(), 31);
}
