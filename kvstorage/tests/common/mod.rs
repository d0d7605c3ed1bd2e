//! Helpers shared by the WAL and snapshot tests.
#![allow(clippy::unwrap_used, dead_code)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kvraft::message::{Entry, EntryKind, HardState, Index, Term};
use kvstorage::wal::{WalConfig, WriteBatch};

pub fn entry(index: Index, term: Term, payload_bytes: usize) -> Entry {
    let data = Bytes::from(vec![(index % 251) as u8; payload_bytes]);
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data,
    }
}

pub fn entries(first: Index, count: u64, term: Term, payload_bytes: usize) -> Vec<Entry> {
    (first..first + count)
        .map(|index| entry(index, term, payload_bytes))
        .collect()
}

pub fn batch(entries: Vec<Entry>, hard_state: Option<HardState>) -> WriteBatch {
    WriteBatch {
        entries,
        hard_state,
    }
}

pub fn small_config(segment_bytes_max: u64) -> WalConfig {
    WalConfig {
        segment_bytes_max,
        record_bytes_max: 1 << 20,
        queue_batches_max: 64,
    }
}

/// Captures what `tracing` prints while `f` runs.
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_writer(move || SharedWriter(sink.clone()))
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned();
    (result, text)
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
