//! WAL benchmark (a plain binary: `cargo bench -p kvstorage --bench wal`). Prints, on one file
//! system: the raw fdatasync rate (4 KiB overwrite of a preallocated file + fdatasync), then
//! WAL entries/s and p50/p99/p99.9/max latency for 1, 16 and 64 concurrent writers of 256-byte
//! entries (each writer is a thread that submits one entry and waits until it is durable),
//! three WALs at once with small segments (the tail segment rolls add), and the two target
//! ratios of issue 3.
//!
//! The files go to `$WAL_BENCH_DIR` if set, else to cargo's target tmp dir (the project's disk;
//! not /tmp, which may be a tmpfs).
#![allow(clippy::unwrap_used)] // a bench binary: a failed unwrap is a failed run

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvraft::message::{Entry, EntryKind};
use kvstorage::wal::{Durable, Wal, WalConfig, WalError, WriteBatch};

const RAW_SYNCS: usize = 3000;
const RAW_WRITE_BYTES: usize = 4096;
const RAW_FILE_BYTES: u64 = 64 << 20;
const ENTRY_PAYLOAD_BYTES: usize = 256;
const RUN_DURATION: Duration = Duration::from_secs(4);
/// Bounds each writer's loop even on a very fast disk.
const ENTRIES_PER_WRITER_MAX: usize = 200_000;
const WRITER_COUNTS: [usize; 3] = [1, 16, 64];
/// The rolling case: WALs at once, writers each, and a segment size that rolls often.
const ROLLING_WALS: usize = 3;
const ROLLING_WRITERS_PER_WAL: usize = 21;
const ROLLING_SEGMENT_BYTES: [u64; 2] = [2 << 20, 16 << 20];

struct Figures {
    rate_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

fn percentiles(mut samples: Vec<Duration>, elapsed: Duration) -> Figures {
    samples.sort_unstable();
    let at = |quantile: f64| {
        let position = ((samples.len() as f64 - 1.0) * quantile).round() as usize;
        samples[position].as_secs_f64() * 1e6
    };
    Figures {
        rate_per_second: samples.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: at(1.0),
    }
}

fn raw_fdatasync(dir: &Path) -> Figures {
    let path = dir.join("raw.bin");
    let mut file = File::create(&path).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..RAW_FILE_BYTES / zeros.len() as u64 {
        file.write_all(&zeros).unwrap();
    }
    file.sync_all().unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let block = vec![0x5Au8; RAW_WRITE_BYTES];
    let mut samples = Vec::with_capacity(RAW_SYNCS);
    let started = Instant::now();
    for round in 0..RAW_SYNCS {
        let offset = (round * RAW_WRITE_BYTES) as u64 % RAW_FILE_BYTES;
        let begin = Instant::now();
        file.write_all_at(&block, offset).unwrap();
        file.sync_data().unwrap();
        samples.push(begin.elapsed());
    }
    let figures = percentiles(samples, started.elapsed());
    std::fs::remove_file(&path).unwrap();
    figures
}

/// Durability as reported by the WAL thread. Writers park and the callback unparks them all:
/// no shared mutex for 64 threads to convoy on (a real node wakes one runtime instead).
struct Shared {
    durable_index: AtomicU64,
    groups: AtomicU64,
    waiters: Mutex<Vec<Thread>>,
    /// Serialises index assignment with submission, so indexes reach the WAL in order.
    next_index: Mutex<u64>,
}

fn wal_run(dir: &Path, writers: usize) -> (Figures, f64) {
    let (samples, elapsed, entries_per_sync) = wal_samples(dir, writers, WalConfig::default());
    (percentiles(samples, elapsed), entries_per_sync)
}

/// Every writer's latencies, the run's time and the entries per fdatasync of one WAL.
fn wal_samples(dir: &Path, writers: usize, config: WalConfig) -> (Vec<Duration>, Duration, f64) {
    let shared = Arc::new(Shared {
        durable_index: AtomicU64::new(0),
        groups: AtomicU64::new(0),
        waiters: Mutex::new(Vec::new()),
        next_index: Mutex::new(1),
    });
    let sink = shared.clone();
    let callback = Box::new(move |report: Result<Durable, WalError>| {
        let durable = report.unwrap();
        sink.durable_index
            .store(durable.last_index, Ordering::Release);
        sink.groups.fetch_add(1, Ordering::Relaxed);
        for waiter in sink.waiters.lock().unwrap().iter() {
            waiter.unpark();
        }
    });
    let (wal, _) = Wal::open(dir, config, callback).unwrap();
    let wal = Arc::new(wal);
    let payload = Bytes::from(vec![0xC3u8; ENTRY_PAYLOAD_BYTES]);
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (wal, shared, payload) = (wal.clone(), shared.clone(), payload.clone());
            std::thread::spawn(move || writer_loop(&wal, &shared, &payload, started))
        })
        .collect();
    let samples: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    let entries = samples.len() as f64;
    let groups = shared.groups.load(Ordering::Relaxed) as f64;
    Arc::try_unwrap(wal).unwrap().close().unwrap();
    (samples, elapsed, entries / groups)
}

/// Three WALs on one disk at once, as a 3-node cluster on one machine has, with segments small
/// enough that each rolls several times a second: the tail a segment roll adds.
fn rolling_run(dir: &Path, segment_bytes_max: u64) -> (Figures, usize) {
    let config = WalConfig {
        segment_bytes_max,
        ..WalConfig::default()
    };
    let started = Instant::now();
    let runs: Vec<_> = (0..ROLLING_WALS)
        .map(|wal| {
            let (dir, config) = (dir.join(format!("wal-{wal}")), config.clone());
            std::thread::spawn(move || {
                let run = wal_samples(&dir, ROLLING_WRITERS_PER_WAL, config);
                let segments = std::fs::read_dir(&dir).unwrap().count();
                (run.0, segments)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut segments = 0;
    for run in runs {
        let (run_samples, run_segments) = run.join().unwrap();
        samples.extend(run_samples);
        segments += run_segments;
    }
    (percentiles(samples, started.elapsed()), segments)
}

fn writer_loop(wal: &Wal, shared: &Shared, payload: &Bytes, started: Instant) -> Vec<Duration> {
    shared.waiters.lock().unwrap().push(std::thread::current());
    let mut samples = Vec::new();
    while started.elapsed() < RUN_DURATION && samples.len() < ENTRIES_PER_WRITER_MAX {
        let begin = Instant::now();
        let index = {
            let mut next = shared.next_index.lock().unwrap();
            let entry = Entry {
                term: 1,
                index: *next,
                kind: EntryKind::Normal,
                data: payload.clone(),
            };
            wal.submit(WriteBatch {
                entries: vec![entry],
                hard_state: None,
            })
            .unwrap();
            *next += 1;
            *next - 1
        };
        while shared.durable_index.load(Ordering::Acquire) < index {
            std::thread::park();
        }
        samples.push(begin.elapsed());
    }
    samples
}

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("WAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).unwrap();
    base
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo test --benches` asks for the list of tests: there are none
    }
    let base = bench_dir();
    let scratch = tempfile::tempdir_in(&base).unwrap();
    println!("wal bench in {}", scratch.path().display());
    let raw = raw_fdatasync(scratch.path());
    println!(
        "raw fdatasync (4 KiB overwrite): {:.0} syncs/s, p50 {:.0} us, p99 {:.0} us",
        raw.rate_per_second, raw.p50_us, raw.p99_us
    );
    let mut one_writer = None;
    let mut sixty_four = None;
    for writers in WRITER_COUNTS {
        let dir = scratch.path().join(format!("wal-{writers}"));
        let (figures, entries_per_sync) = wal_run(&dir, writers);
        println!(
            "wal {writers:>2} writers x {ENTRY_PAYLOAD_BYTES} B: {:.0} entries/s, p50 {:.0} us, \
             p99 {:.0} us, p99.9 {:.0} us, max {:.0} us, \
             {entries_per_sync:.1} entries per fdatasync",
            figures.rate_per_second,
            figures.p50_us,
            figures.p99_us,
            figures.p999_us,
            figures.max_us
        );
        match writers {
            1 => one_writer = Some(figures),
            64 => sixty_four = Some(figures),
            _ => {}
        }
    }
    for segment_bytes in ROLLING_SEGMENT_BYTES {
        let (rolling, segments) = rolling_run(
            &scratch.path().join(format!("rolling-{segment_bytes}")),
            segment_bytes,
        );
        println!(
            "wal x{ROLLING_WALS} at once, {ROLLING_WRITERS_PER_WAL} writers each, {} KiB segments \
         ({segments} segment files at the end): {:.0} entries/s, p50 {:.0} us, p99 {:.0} us, \
         p99.9 {:.0} us, max {:.0} us",
            segment_bytes >> 10,
            rolling.rate_per_second,
            rolling.p50_us,
            rolling.p99_us,
            rolling.p999_us,
            rolling.max_us
        );
    }
    let after = raw_fdatasync(scratch.path());
    println!(
        "raw fdatasync again, after the WAL runs: {:.0} syncs/s, p50 {:.0} us, p99 {:.0} us",
        after.rate_per_second, after.p50_us, after.p99_us
    );
    let (one, many) = (one_writer.unwrap(), sixty_four.unwrap());
    let latency_ratio = one.p50_us / raw.p50_us;
    let throughput_ratio = many.rate_per_second / one.rate_per_second;
    println!(
        "ratio 1-writer p50 / raw fdatasync p50 = {latency_ratio:.2} (target <= 1.3): {}",
        if latency_ratio <= 1.3 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "ratio 64-writer entries/s / 1-writer entries/s = {throughput_ratio:.1} (target >= 20): {}",
        if throughput_ratio >= 20.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
