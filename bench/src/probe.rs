//! Probes of what this machine's disk and scheduler cost, for `bench compare`'s floor lines:
//! the figures that bound a put's latency and its node CPU whatever the store does.
//!
//! - `disk_writers`: WAL-like writers (append, fdatasync, repeat) at once on one disk, as the
//!   three nodes of a local cluster are. From their timed syncs, `commit_latencies_us` gives
//!   what a put would wait for on that disk alone: a majority of writers having synced it.
//! - each writer's CPU per fdatasync (on a virtual machine, the exits to the hypervisor that a
//!   disk flush takes are charged to the syncing thread);
//! - `wakeup_message_cpu_us`: the CPU one loopback UDP message costs when it wakes a sleeping
//!   receiver (a node's every message to a peer or a client is one).

use std::fs::File;
use std::io::Write;
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a loopback probe waits for one message before it gives up.
const WAKEUP_RECEIVE_TIMEOUT_MS: u64 = 1_000;
/// Bytes of each message of the wake-up probe: a small request or acknowledgement.
const WAKEUP_MESSAGE_BYTES: usize = 200;

/// One fdatasync of a probe writer: when it started and ended, in microseconds after the
/// probe's common origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sync {
    pub start_us: u64,
    pub end_us: u64,
}

impl Sync {
    pub fn duration_us(&self) -> u64 {
        self.end_us.saturating_sub(self.start_us)
    }
}

/// One writer's syncs, and the CPU its thread spent in them (and in the appends before them).
#[derive(Debug, Default)]
pub struct WriterSamples {
    pub syncs: Vec<Sync>,
    pub cpu_us: u64,
}

impl WriterSamples {
    /// Thread CPU per append + fdatasync, in microseconds; `None` before any sync.
    pub fn cpu_us_per_sync(&self) -> Option<f64> {
        (!self.syncs.is_empty()).then(|| self.cpu_us as f64 / self.syncs.len() as f64)
    }
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), in microseconds.
pub fn thread_cpu_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

/// Appends `append_bytes` to a new file at `path` and fdatasyncs it, `count` times or until
/// `deadline`, timing each sync from `origin`. The file is removed.
pub fn fdatasync_samples(
    path: &Path,
    append_bytes: usize,
    count: usize,
    deadline: Option<Instant>,
    origin: Instant,
) -> std::io::Result<WriterSamples> {
    let mut file = File::create(path)?;
    let block = vec![0x5a_u8; append_bytes];
    let mut samples = WriterSamples {
        syncs: Vec::with_capacity(count),
        cpu_us: 0,
    };
    let cpu_before = thread_cpu_us();
    while samples.syncs.len() < count && deadline.is_none_or(|end| Instant::now() < end) {
        file.write_all(&block)?;
        let start_us = origin.elapsed().as_micros() as u64;
        file.sync_data()?;
        let end_us = origin.elapsed().as_micros() as u64;
        samples.syncs.push(Sync { start_us, end_us });
    }
    samples.cpu_us = thread_cpu_us().saturating_sub(cpu_before);
    drop(file);
    std::fs::remove_file(path)?;
    Ok(samples)
}

/// `writers` threads, each appending `append_bytes` to a file of its own in `dir` and syncing,
/// all at once, each for `count` syncs or until `deadline`.
pub fn disk_writers(
    dir: &Path,
    writers: usize,
    append_bytes: usize,
    count: usize,
    deadline: Instant,
) -> std::io::Result<Vec<WriterSamples>> {
    let origin = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let path = dir.join(format!("fsync-tail-probe-{writer}"));
            std::thread::spawn(move || {
                fdatasync_samples(&path, append_bytes, count, Some(deadline), origin)
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(writers);
    for thread in threads {
        let written = thread
            .join()
            .map_err(|_| std::io::Error::other("a probe writer panicked"))?;
        samples.push(written?);
    }
    Ok(samples)
}

/// What a request would wait for on this disk alone if it arrived at each `step_us` while the
/// writers run: on each writer, the end of the first sync that started after the arrival (a
/// sync under way when it arrives does not hold it); the request is durable once `quorum` of
/// the writers hold it. Only arrivals that every writer serves in full are counted. Latencies
/// in microseconds, in arrival order.
pub fn commit_latencies_us(writers: &[Vec<Sync>], quorum: usize, step_us: u64) -> Vec<u64> {
    if quorum == 0 || quorum > writers.len() || step_us == 0 || writers.iter().any(Vec::is_empty) {
        return Vec::new();
    }
    // From the last writer's first sync to the first writer's last: every arrival in between
    // has, on every writer, a sync that starts at or after it.
    let first_starts = writers.iter().filter_map(|syncs| syncs.first());
    let first = first_starts.map(|s| s.start_us).max().unwrap_or(0);
    let last_starts = writers.iter().filter_map(|syncs| syncs.last());
    let last = last_starts.map(|s| s.start_us).min().unwrap_or(0);
    let mut latencies = Vec::new();
    let mut next = vec![0usize; writers.len()];
    let mut ends = Vec::with_capacity(writers.len());
    let mut arrival = first;
    while arrival <= last {
        ends.clear();
        for (syncs, next) in writers.iter().zip(next.iter_mut()) {
            while syncs.get(*next).is_some_and(|s| s.start_us < arrival) {
                *next += 1;
            }
            ends.extend(syncs.get(*next).map(|s| s.end_us));
        }
        ends.sort_unstable();
        latencies.extend(ends.get(quorum - 1).map(|end| end - arrival));
        arrival += step_us;
    }
    latencies
}

/// Two threads answer each other's loopback UDP messages `round_trips` times; the CPU both
/// threads spent, per message, in microseconds. Each message wakes a receiver blocked in
/// `recv`, as a node's messages do.
pub fn wakeup_message_cpu_us(round_trips: u32) -> std::io::Result<f64> {
    let timeout = Some(Duration::from_millis(WAKEUP_RECEIVE_TIMEOUT_MS));
    let ping = UdpSocket::bind("127.0.0.1:0")?;
    let pong = UdpSocket::bind("127.0.0.1:0")?;
    ping.connect(pong.local_addr()?)?;
    pong.connect(ping.local_addr()?)?;
    ping.set_read_timeout(timeout)?;
    pong.set_read_timeout(timeout)?;
    let answerer = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut buf = [0u8; WAKEUP_MESSAGE_BYTES];
        let cpu_before = thread_cpu_us();
        for _ in 0..round_trips {
            let len = pong.recv(&mut buf)?;
            pong.send(&buf[..len])?;
        }
        Ok(thread_cpu_us().saturating_sub(cpu_before))
    });
    let message = [0x5a_u8; WAKEUP_MESSAGE_BYTES];
    let mut buf = [0u8; WAKEUP_MESSAGE_BYTES];
    let cpu_before = thread_cpu_us();
    let asked = (|| -> std::io::Result<()> {
        for _ in 0..round_trips {
            ping.send(&message)?;
            ping.recv(&mut buf)?;
        }
        Ok(())
    })();
    let asker_cpu_us = thread_cpu_us().saturating_sub(cpu_before);
    let answerer_cpu_us = answerer
        .join()
        .map_err(|_| std::io::Error::other("the wake-up probe's answerer panicked"))??;
    asked?;
    let messages = 2 * u64::from(round_trips.max(1));
    Ok((asker_cpu_us + answerer_cpu_us) as f64 / messages as f64)
}

/// The `q` quantile (0..=1) of sorted `values`, by the nearest-rank method; 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(rank).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syncs(spans: &[(u64, u64)]) -> Vec<Sync> {
        spans
            .iter()
            .map(|&(start_us, end_us)| Sync { start_us, end_us })
            .collect()
    }

    #[test]
    fn a_request_waits_for_the_quorum_th_writer_to_finish_a_sync_begun_after_it() {
        // Writer a is fast (syncs of 10 us back to back); b takes 100 us; c is stuck in one
        // sync of 1000 us from 0, then fast.
        let a = syncs(&[(0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (200, 210)]);
        let b = syncs(&[(0, 100), (100, 200), (200, 300)]);
        let c = syncs(&[(0, 1000), (1000, 1010), (1010, 1020)]);
        let writers = [a, b, c];
        // Arrivals 0 and 5 and 10: a serves from its sync at 0/10/10, b from 0/100/100, c
        // from 0/1000/1000 (its sync under way since 0 does not count for 5 or 10).
        let two_of_three = commit_latencies_us(&writers, 2, 5);
        assert_eq!(&two_of_three[..3], &[100, 195, 190]);
        // The last arrival every writer serves is 200 (the last start common to all).
        assert_eq!(two_of_three.len(), 41);
        // One of three: the fastest writer.
        assert_eq!(&commit_latencies_us(&writers, 1, 5)[..3], &[10, 15, 10]);
        // All three: the stuck writer holds every request that arrives during its long sync.
        assert_eq!(commit_latencies_us(&writers, 3, 5)[1], 1005);
    }

    #[test]
    fn no_latencies_without_samples_or_with_an_impossible_quorum() {
        let a = syncs(&[(0, 10), (10, 20)]);
        assert!(commit_latencies_us(&[a.clone(), Vec::new()], 1, 5).is_empty());
        let one = std::slice::from_ref(&a);
        assert!(commit_latencies_us(one, 2, 5).is_empty());
        assert!(commit_latencies_us(one, 0, 5).is_empty());
        assert!(commit_latencies_us(one, 1, 0).is_empty());
        assert_eq!(commit_latencies_us(one, 1, 5), vec![10, 15, 10]);
        assert!(commit_latencies_us(&[], 1, 5).is_empty());
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&values, 0.5), 500);
        assert_eq!(quantile(&values, 0.999), 999);
        assert_eq!(quantile(&values, 1.0), 1000);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn real_syncs_are_timed_and_their_cpu_counted() {
        let dir = tempfile::tempdir().unwrap();
        let samples = disk_writers(
            dir.path(),
            2,
            4096,
            20,
            Instant::now() + Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(samples.len(), 2);
        for writer in &samples {
            assert_eq!(writer.syncs.len(), 20);
            assert!(writer
                .syncs
                .windows(2)
                .all(|w| w[0].end_us <= w[1].start_us));
            assert!(writer.syncs.iter().all(|s| s.end_us >= s.start_us));
            // Writing and syncing 80 KiB costs the thread some CPU on any machine.
            assert!(writer.cpu_us_per_sync().is_some_and(|us| us > 0.0));
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe files left"
        );
        let syncs: Vec<Vec<Sync>> = samples.into_iter().map(|w| w.syncs).collect();
        assert!(!commit_latencies_us(&syncs, 2, 10).is_empty());
    }

    #[test]
    fn loopback_messages_cost_cpu() {
        let per_message = wakeup_message_cpu_us(200).unwrap();
        assert!(per_message > 0.0 && per_message < 10_000.0, "{per_message}");
    }
}
