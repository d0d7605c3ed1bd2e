//! `bench scale`: a state much larger than a snapshot can be copied. Three real kvnode
//! processes; the store is filled to `--keys` keys, then put load runs in two measured phases:
//!
//! 1. **steady**: overwrites of the filled keys while the nodes take their snapshots (every
//!    `--snapshot-entries` entries); the seconds in which some node was writing a snapshot
//!    are measured apart from the others;
//! 2. **catch-up**: a follower is killed, its data directory wiped, and restarted empty; it
//!    must catch up from the leader's snapshot while the load goes on. Its catch-up time is
//!    from the restart until it has applied everything the leader had committed at the
//!    restart.
//!
//! Each node's peak RSS (`VmHWM`) is compared with the state's size (keys x (key + value
//! bytes)); the largest RSS sampled in each phase (fill, steady, catch-up) says which phase
//! peaks. Progress goes to stderr, the table to stdout, everything to
//! `<results>/scale/<date-time>/scale.json`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use kvclient::config::ClusterConfig;
use kvclient::{Client, ClientConfig};
use nemesis::cluster::Cluster;
use nemesis::spec::ClusterSpec;
use nemesis::BackendKind;
use serde::Serialize;

use crate::args::parse_duration;
use crate::history::Recorder;
use crate::output;
use crate::runner::{self, LoadConfig, Progress};
use crate::stats::Stats;
use crate::target::Target;
use crate::workload::{Workload, WorkloadConfig, WorkloadKind};

/// Nodes of the scale cluster.
const NODES: u64 = 3;
/// How often the nodes' metrics and RSS are sampled.
const SAMPLE_INTERVAL_MS: u64 = 200;
/// How often the fill phase prints its progress.
const FILL_PROGRESS_INTERVAL_S: u64 = 5;
/// How long the cluster may take to elect a leader (at start, after the follower's wipe).
const LEADER_TIMEOUT_MS: u64 = 30_000;
/// Bytes of a key on the wire (`k` and up to 8 digits), for the state size.
const KEY_BYTES: u64 = 9;
/// The gauge a node sets while it writes a snapshot.
const SNAPSHOT_GAUGE: &str = "raft_snapshot_in_progress";
const SNAPSHOTS_TAKEN_COUNTER: &str = "raft_snapshots_taken_total";
/// How long a request waits for an answer in the fill and load phases.
const REQUEST_TIMEOUT_MS: u64 = 5_000;

#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Keys the store is filled to (each written once); the measured load overwrites them.
    #[arg(long, default_value_t = 8_000_000)]
    pub keys: u64,
    /// Bytes of each value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Concurrent clients in every phase.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// How long each measured phase runs at least (the catch-up phase runs until the
    /// follower caught up, and this long at least).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub phase: Duration,
    /// Entries between two snapshots of a node. The default is the node's: at 8M keys every
    /// node then writes a 2 GB snapshot most of the time (fill about 27k puts/s here, against
    /// 37k with 1000000), and its in-memory log stays small.
    #[arg(long, default_value_t = kvclient::config::SNAPSHOT_ENTRIES_DEFAULT)]
    pub snapshot_entries: u64,
    /// First port of the nodes (node k: base + k - 1; metrics on that + 1000).
    #[arg(long, default_value_t = 52051)]
    pub base_port: u16,
    /// Where `scale/<date-time>/` goes.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Cluster(#[from] nemesis::cluster::ClusterError),
    #[error("cluster config: {0}")]
    Config(#[from] kvclient::config::ConfigError),
    #[error("client: {0}")]
    Client(#[from] kvclient::ClientError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the fill failed: {failed} of {keys} keys were not written")]
    Fill { failed: u64, keys: u64 },
    #[error("node n{0} did not catch up within {1} s")]
    NoCatchUp(u64, u64),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ScaleError {
    let what = what.into();
    move |source| ScaleError::Io { what, source }
}

/// One measured window's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    pub seconds: u64,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    pub keys: u64,
    pub value_size: usize,
    pub state_bytes: u64,
    pub fill_s: f64,
    pub fill_ops_per_s: f64,
    /// Steady phase: seconds with a snapshot being written on some node, and without.
    pub during_snapshot: Window,
    pub without_snapshot: Window,
    pub snapshots_taken: u64,
    /// Catch-up phase: the whole phase, and the seconds until the follower caught up.
    pub catch_up_s: f64,
    pub during_catch_up: Window,
    pub catch_up_phase: Window,
    pub wiped_node: u64,
    /// Peak RSS of each node (bytes), and the largest over the state's size.
    pub peak_rss_bytes: Vec<(u64, u64)>,
    pub peak_rss_over_state: f64,
    /// The largest RSS (`VmRSS`) sampled of each node in each phase (bytes).
    pub sampled_rss_by_phase: Vec<PhaseRss>,
}

/// The largest RSS sampled of each node during one phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseRss {
    pub phase: &'static str,
    pub rss_bytes: Vec<(u64, u64)>,
}

/// One sample of every node.
#[derive(Clone, Debug, Default)]
struct Sample {
    at: Duration,
    snapshotting: bool,
    /// Each node's count of snapshots written (and compacted to) so far.
    snapshots_taken: Vec<(u64, u64)>,
    applied: Vec<(u64, u64)>,
    /// Each node's resident set now (`VmRSS`, bytes).
    rss: Vec<(u64, u64)>,
}

/// Samples the nodes' metrics and RSS on a thread of its own.
struct Sampler {
    /// The zero of every sample's `at`.
    started: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    peak_rss: Arc<Mutex<Vec<(u64, u64)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(nodes: Vec<(u64, SocketAddr)>, pids: Arc<Mutex<Vec<(u64, u32)>>>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let peak_rss: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
        let (stopped, out, peaks) = (stop.clone(), samples.clone(), peak_rss.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let timeout = Duration::from_millis(SAMPLE_INTERVAL_MS);
            while !stopped.load(Ordering::Relaxed) {
                let mut sample = Sample {
                    at: started.elapsed(),
                    ..Sample::default()
                };
                for (id, address) in &nodes {
                    let Ok(text) = nemesis::metrics::scrape(*address, timeout) else {
                        continue;
                    };
                    let gauge = |name| nemesis::metrics::gauge(&text, name);
                    sample.snapshotting |= gauge(SNAPSHOT_GAUGE).is_some_and(|v| v > 0.0);
                    if let Some(taken) = gauge(SNAPSHOTS_TAKEN_COUNTER) {
                        sample.snapshots_taken.push((*id, taken as u64));
                    }
                    if let Some(applied) = gauge("raft_last_applied") {
                        sample.applied.push((*id, applied as u64));
                    }
                }
                let pids = pids.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let mut peaks = peaks.lock().unwrap_or_else(PoisonError::into_inner);
                for (id, pid) in pids {
                    if let Some(rss) = status_bytes(pid, "VmRSS:") {
                        sample.rss.push((id, rss));
                    }
                    let Some(hwm) = status_bytes(pid, "VmHWM:") else {
                        continue;
                    };
                    match peaks.iter_mut().find(|(node, _)| *node == id) {
                        Some((_, peak)) => *peak = (*peak).max(hwm),
                        None => peaks.push((id, hwm)),
                    }
                }
                drop(peaks);
                out.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(sample);
                std::thread::sleep(timeout);
            }
        });
        Sampler {
            started,
            stop,
            samples,
            peak_rss,
            thread,
        }
    }

    /// Now, on the samples' clock.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn finish(self) -> (Vec<Sample>, Vec<(u64, u64)>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (take_all(&self.samples), take_all(&self.peak_rss))
    }
}

fn take_all<T>(shared: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *shared.lock().unwrap_or_else(PoisonError::into_inner))
}

/// A size in a process's `/proc/PID/status` (`field` is e.g. `VmHWM:`, the peak resident set),
/// in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the scale benchmark; returns its directory.
pub fn run(args: &ScaleArgs, seed: u64) -> Result<(PathBuf, ScaleReport), ScaleError> {
    if args.keys == 0 || args.clients == 0 || args.phase.is_zero() || args.value_size == 0 {
        return Err(ScaleError::Usage(
            "--keys, --clients, --phase and --value-size must be > 0".into(),
        ));
    }
    let dir = args
        .results
        .join("scale")
        .join(output::utc_stamp(SystemTime::now()));
    std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
    let work_dir = std::env::temp_dir().join(format!("kvscale-{}", std::process::id()));
    let mut spec = ClusterSpec::new(BackendKind::Local, NODES, &work_dir);
    spec.base_port = args.base_port;
    spec.snapshot_entries = args.snapshot_entries;
    spec.state_path = work_dir.join("state.json");
    spec.validate()
        .map_err(|e| ScaleError::Usage(e.to_string()))?;
    let mut cluster = Cluster::start(&spec)?;
    let result = drive(args, seed, &mut cluster);
    let cleaned = cluster.cleanup();
    // Copies the node logs into the results and removes the work directory.
    crate::campaign::copy_logs(&spec, &dir);
    let report = result?;
    cleaned?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| ScaleError::Io {
        what: "scale.json".into(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(dir.join("scale.json"), json).map_err(io("scale.json"))?;
    std::fs::write(dir.join("scale.txt"), table(&report)).map_err(io("scale.txt"))?;
    Ok((dir, report))
}

fn drive(args: &ScaleArgs, seed: u64, cluster: &mut Cluster) -> Result<ScaleReport, ScaleError> {
    let timeout = Duration::from_millis(LEADER_TIMEOUT_MS);
    cluster.wait_for_stable_leader(timeout)?;
    let config = ClusterConfig::load(cluster.config_path())?;
    let nodes: Vec<(u64, SocketAddr)> = (cluster.state().nodes.iter())
        .map(|node| (node.id, node.metrics_address))
        .collect();
    let pids = Arc::new(Mutex::new(node_pids(cluster)));
    let sampler = Sampler::start(nodes, pids.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("runtime"))?;
    let mut client_config = ClientConfig::from_cluster(&config, "client1");
    client_config.request_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let client = runtime.block_on(Client::connect(client_config))?;
    runtime
        .block_on(crate::cluster::wait_for_leader(&client))
        .map_err(|e| ScaleError::Usage(e.to_string()))?;

    let fill_started = Instant::now();
    runtime.block_on(fill(&client, args))?;
    let fill_s = fill_started.elapsed().as_secs_f64();
    eprintln!(
        "scale: filled {} keys in {fill_s:.0} s ({:.0} puts/s)",
        args.keys,
        args.keys as f64 / fill_s
    );

    let workload = || {
        Arc::new(Workload::new(WorkloadConfig {
            kind: WorkloadKind::Put,
            keys: args.keys,
            value_size: args.value_size,
            read_mode: kvclient::ReadMode::Linearizable,
        }))
    };
    let load = LoadConfig {
        clients: args.clients,
        duration: args.phase,
        rate: None,
        seed,
        final_reads_timeout: runner::FINAL_READS_TIMEOUT_DEFAULT,
    };
    // Steady phase.
    let steady_from = sampler.now();
    eprintln!("scale: steady phase ({} s)", args.phase.as_secs());
    let steady = runtime.block_on(runner::run_timed(
        Target::Kv(&client),
        workload(),
        &load,
        Recorder::discard(),
        Arc::new(Progress::default()),
    ));
    let samples = sampler.samples();
    let snapshot_seconds = snapshot_seconds(&samples, steady_from, steady.stats.seconds.len());
    let snapshots_taken = count_snapshots(&samples, steady_from);
    let during_snapshot = window(&steady.stats, |second| snapshot_seconds.contains(&second));
    let without_snapshot = window(&steady.stats, |second| !snapshot_seconds.contains(&second));

    // Catch-up phase: wipe a follower.
    let (leader, _) = cluster.wait_for_stable_leader(timeout)?;
    let wiped = cluster
        .node_ids()
        .into_iter()
        .find(|&id| id != leader)
        .unwrap_or(1);
    cluster.kill(wiped)?;
    let data = cluster.node_data_dir(wiped)?;
    std::fs::remove_dir_all(&data).map_err(io(data.display().to_string()))?;
    let leader_commit = commit_index(cluster, leader)?;
    cluster.restart(wiped)?;
    let restarted_at = sampler.now();
    *pids.lock().unwrap_or_else(PoisonError::into_inner) = node_pids(cluster);
    eprintln!(
        "scale: n{wiped} wiped and restarted; it must apply up to index {leader_commit} \
         (the leader's commit at the restart)"
    );
    let catch_up_load = runtime.block_on(runner::run_timed(
        Target::Kv(&client),
        workload(),
        &load,
        Recorder::discard(),
        Arc::new(Progress::default()),
    ));
    let caught_up = wait_caught_up(&sampler, wiped, leader_commit, restarted_at, args)?;
    let catch_up_s = caught_up.saturating_sub(restarted_at).as_secs_f64();
    let catch_up_seconds = catch_up_s.ceil() as usize;
    let during_catch_up = window(&catch_up_load.stats, |second| second < catch_up_seconds);
    let catch_up_phase = window(&catch_up_load.stats, |_| true);
    drop(client);
    drop(runtime);
    let (samples, peaks) = sampler.finish();
    let phases = [
        ("fill", Duration::ZERO, steady_from),
        ("steady", steady_from, restarted_at),
        ("catch-up", restarted_at, Duration::MAX),
    ];
    let sampled_rss_by_phase = (phases.into_iter())
        .map(|(phase, from, to)| PhaseRss {
            phase,
            rss_bytes: largest_rss(&samples, from, to),
        })
        .collect();
    let state_bytes = args.keys * (KEY_BYTES + args.value_size as u64);
    let peak = peaks.iter().map(|(_, bytes)| *bytes).max().unwrap_or(0);
    Ok(ScaleReport {
        keys: args.keys,
        value_size: args.value_size,
        state_bytes,
        fill_s,
        fill_ops_per_s: args.keys as f64 / fill_s,
        during_snapshot,
        without_snapshot,
        snapshots_taken,
        catch_up_s,
        during_catch_up,
        catch_up_phase,
        wiped_node: wiped,
        peak_rss_bytes: peaks,
        peak_rss_over_state: peak as f64 / state_bytes as f64,
        sampled_rss_by_phase,
    })
}

/// The largest RSS of each node (by id) over the samples taken in `from..to`.
fn largest_rss(samples: &[Sample], from: Duration, to: Duration) -> Vec<(u64, u64)> {
    let mut largest: Vec<(u64, u64)> = Vec::new();
    for sample in samples.iter().filter(|s| s.at >= from && s.at < to) {
        for &(id, rss) in &sample.rss {
            match largest.iter_mut().find(|(node, _)| *node == id) {
                Some((_, peak)) => *peak = (*peak).max(rss),
                None => largest.push((id, rss)),
            }
        }
    }
    largest.sort_unstable();
    largest
}

fn node_pids(cluster: &Cluster) -> Vec<(u64, u32)> {
    (cluster.node_ids().into_iter())
        .filter_map(|id| Some((id, cluster.running_pid(id).ok()??)))
        .collect()
}

/// Writes keys `0..keys` once each, `clients` sessions in parallel, with progress.
async fn fill(client: &Client, args: &ScaleArgs) -> Result<(), ScaleError> {
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let value = bytes::Bytes::from(vec![b'v'; args.value_size]);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..u64::from(args.clients) {
        let mut session = client.session();
        let (written, failed, value) = (written.clone(), failed.clone(), value.clone());
        let (keys, clients) = (args.keys, u64::from(args.clients));
        tasks.spawn(async move {
            let mut key = index;
            while key < keys {
                match session.put(format!("k{key}"), value.clone()).await {
                    Ok(_) => written.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                key += clients;
            }
        });
    }
    let started = Instant::now();
    let mut last = (Instant::now(), 0);
    let interval = Duration::from_secs(FILL_PROGRESS_INTERVAL_S);
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            () = tokio::time::sleep_until((last.0 + interval).into()) => {
                let now = written.load(Ordering::Relaxed);
                let rate = (now - last.1) as f64 / last.0.elapsed().as_secs_f64();
                eprintln!(
                    "scale: fill {now}/{} keys, {rate:.0} puts/s, {:.0} s",
                    args.keys,
                    started.elapsed().as_secs_f64()
                );
                last = (Instant::now(), now);
            }
        }
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(ScaleError::Fill {
            failed,
            keys: args.keys,
        });
    }
    Ok(())
}

/// The seconds of a load phase that began at `from` (sampler time) in which some node was
/// writing a snapshot.
fn snapshot_seconds(samples: &[Sample], from: Duration, seconds: usize) -> Vec<usize> {
    let mut out: Vec<usize> = samples
        .iter()
        .filter(|s| s.at >= from && s.snapshotting)
        .map(|s| (s.at - from).as_secs() as usize)
        .filter(|&second| second < seconds)
        .collect();
    out.dedup();
    out
}

/// Snapshots the nodes wrote after `from`: each node's counter, last sample against first.
/// (Not the rising edges of "some node is writing one": with the nodes taking turns, that
/// stays up for minutes.)
fn count_snapshots(samples: &[Sample], from: Duration) -> u64 {
    let mut first: Vec<(u64, u64)> = Vec::new();
    let mut last: Vec<(u64, u64)> = Vec::new();
    for sample in samples.iter().filter(|s| s.at >= from) {
        for &(id, taken) in &sample.snapshots_taken {
            if !first.iter().any(|(node, _)| *node == id) {
                first.push((id, taken));
            }
            match last.iter_mut().find(|(node, _)| *node == id) {
                Some((_, latest)) => *latest = taken,
                None => last.push((id, taken)),
            }
        }
    }
    (last.iter())
        .map(|(id, latest)| {
            let start = first.iter().find(|(node, _)| node == id).map_or(0, |f| f.1);
            latest.saturating_sub(start)
        })
        .sum()
}

/// The commit index `node` reports now.
fn commit_index(cluster: &Cluster, node: u64) -> Result<u64, ScaleError> {
    let address = cluster.node(node)?.metrics_address;
    let timeout = Duration::from_millis(LEADER_TIMEOUT_MS);
    let text = nemesis::metrics::scrape(address, timeout).map_err(|e| ScaleError::Io {
        what: format!("metrics of n{node}"),
        source: std::io::Error::other(e.to_string()),
    })?;
    let commit = nemesis::metrics::gauge(&text, "raft_commit_index");
    Ok(commit.map_or(0, |commit| commit as u64))
}

/// Waits until `node` applied `index`; returns the sampler time it did.
fn wait_caught_up(
    sampler: &Sampler,
    node: u64,
    index: u64,
    since: Duration,
    args: &ScaleArgs,
) -> Result<Duration, ScaleError> {
    let limit = args.phase * 10 + Duration::from_millis(LEADER_TIMEOUT_MS);
    let started = Instant::now();
    loop {
        let samples = sampler.samples();
        let reached = samples.iter().find(|s| {
            s.at > since && (s.applied.iter()).any(|(id, applied)| *id == node && *applied >= index)
        });
        if let Some(sample) = reached {
            return Ok(sample.at);
        }
        if started.elapsed() > limit {
            return Err(ScaleError::NoCatchUp(node, limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(SAMPLE_INTERVAL_MS));
    }
}

/// The figures of the seconds `keep` selects.
fn window(stats: &Stats, keep: impl Fn(usize) -> bool) -> Window {
    let mut merged = crate::stats::second_histogram();
    let (mut seconds, mut ops, mut errors) = (0, 0, 0);
    for (index, second) in stats.seconds.iter().enumerate() {
        if !keep(index) {
            continue;
        }
        seconds += 1;
        ops += second.ops;
        errors += second.errors;
        let _ = merged.add(&second.latency_us);
    }
    if seconds == 0 {
        return Window::default();
    }
    Window {
        seconds,
        ops,
        errors,
        ops_per_s: ops as f64 / seconds as f64,
        p50_us: merged.value_at_quantile(0.5),
        p99_us: merged.value_at_quantile(0.99),
        p999_us: merged.value_at_quantile(0.999),
        max_us: merged.max(),
    }
}

/// The printed result.
pub fn table(report: &ScaleReport) -> String {
    let mut text = format!(
        "state: {} keys x {} B = {:.2} GB; filled in {:.0} s ({:.0} puts/s)\n\n",
        report.keys,
        report.value_size,
        report.state_bytes as f64 / 1e9,
        report.fill_s,
        report.fill_ops_per_s
    );
    text.push_str(&format!(
        "{:<26} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
        "put load", "seconds", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    ));
    let rows = [
        ("steady, snapshot writing", &report.during_snapshot),
        ("steady, no snapshot", &report.without_snapshot),
        ("follower catching up", &report.during_catch_up),
        ("whole catch-up phase", &report.catch_up_phase),
    ];
    for (name, w) in rows {
        text.push_str(&format!(
            "{name:<26} {:>7} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
            w.seconds,
            w.ops_per_s,
            w.p50_us as f64 / 1000.0,
            w.p99_us as f64 / 1000.0,
            w.p999_us as f64 / 1000.0,
            w.max_us as f64 / 1000.0
        ));
    }
    let peaks: Vec<String> = (report.peak_rss_bytes.iter())
        .map(|(id, bytes)| format!("n{id} {:.2} GB", *bytes as f64 / 1e9))
        .collect();
    text.push_str(&format!(
        "\nsnapshots written in the steady phase (all nodes): {}\nn{} wiped: caught up in {:.1} s\n\
         peak RSS: {} (largest / state = {:.2})\n",
        report.snapshots_taken,
        report.wiped_node,
        report.catch_up_s,
        peaks.join(", "),
        report.peak_rss_over_state
    ));
    for phase in &report.sampled_rss_by_phase {
        let nodes: Vec<String> = (phase.rss_bytes.iter())
            .map(|(id, bytes)| format!("n{id} {:.2} GB", *bytes as f64 / 1e9))
            .collect();
        text.push_str(&format!(
            "  largest RSS sampled in the {} phase: {}\n",
            phase.phase,
            nodes.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, rss: &[(u64, u64)]) -> Sample {
        Sample {
            at: Duration::from_secs(at_s),
            rss: rss.to_vec(),
            ..Sample::default()
        }
    }

    #[test]
    fn snapshots_are_counted_per_node_from_the_phase_start() {
        let taken = |at_s: u64, taken: &[(u64, u64)]| Sample {
            at: Duration::from_secs(at_s),
            // Some node is always writing one: the gauge never falls.
            snapshotting: true,
            snapshots_taken: taken.to_vec(),
            ..Sample::default()
        };
        let samples = [
            taken(0, &[(1, 1), (2, 1)]),
            taken(1, &[(1, 3), (2, 1)]),
            // n3 answers only from here on.
            taken(2, &[(1, 4), (3, 0)]),
            taken(3, &[(1, 5), (2, 1), (3, 2)]),
        ];
        // n1: 3 to 5, n2: 1 to 1, n3: 0 to 2.
        assert_eq!(count_snapshots(&samples, Duration::from_secs(1)), 4);
        assert_eq!(count_snapshots(&samples, Duration::from_secs(9)), 0);
    }

    #[test]
    fn largest_rss_is_per_node_within_the_phase() {
        let samples = [
            sample(0, &[(1, 50), (2, 10)]),
            sample(1, &[(2, 30), (1, 20)]),
            // n3 restarted: it appears only from here on.
            sample(2, &[(1, 40), (3, 5)]),
            sample(3, &[(1, 99), (2, 99), (3, 99)]),
        ];
        let s = Duration::from_secs;
        assert_eq!(
            largest_rss(&samples, s(0), s(3)),
            [(1, 50), (2, 30), (3, 5)]
        );
        assert_eq!(
            largest_rss(&samples, s(1), s(3)),
            [(1, 40), (2, 30), (3, 5)]
        );
        assert_eq!(
            largest_rss(&samples, s(3), Duration::MAX),
            [(1, 99), (2, 99), (3, 99)]
        );
        assert_eq!(largest_rss(&samples, s(4), Duration::MAX), []);
    }
}
