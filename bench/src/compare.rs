//! `bench compare`: our embedded cluster against a local 3-member etcd, the same workloads
//! interleaved round by round (the machine's noise hits both sides alike), medians printed
//! side by side. Also measures, in the same run, the floor a single client's put cannot beat
//! (one fdatasync of a small append plus one QUIC round trip to a node), and the machine's own
//! bounds on the other figures (`probe`): a put's latency on the disk alone, and the CPU an
//! fdatasync and a waking message cost.
//!
//! etcd runs as three processes (Debian's `etcd-server`, plain HTTP on loopback, default
//! durability: it fsyncs its WAL before answering, as we do); our nodes run in bench's
//! process, each on its own thread, as in a plain `bench` run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::app::{self, RunOutcome};
use crate::args::{parse_duration, Settings, TargetKind, ETCD_CONNS_DEFAULT};
use crate::output;
use crate::probe;
use crate::workload::WorkloadKind;

/// etcd members started.
pub const ETCD_MEMBERS: usize = 3;
/// How long the etcd members may take to elect a leader and answer.
const ETCD_START_TIMEOUT_MS: u64 = 20_000;
/// fdatasync samples for the single-client floor.
const FSYNC_SAMPLES: u32 = 2_000;
/// How long one request waits for an answer in the compared runs (as `bench`'s default).
const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Bytes appended before each sampled fdatasync (a WAL record of a 256-byte put).
const FSYNC_APPEND_BYTES: usize = 4096;
/// Writers of the disk-tail probe: as many as the cluster has WALs.
const FSYNC_TAIL_WRITERS: usize = 3;
/// fdatasync samples per writer of the disk-tail probe, and the most time it may take.
const FSYNC_TAIL_SAMPLES_PER_WRITER: usize = 3_000;
const FSYNC_TAIL_MS_MAX: u64 = 10_000;
/// Writers that must hold a put before it is acknowledged: a majority of the three.
const COMMIT_QUORUM: usize = 2;
/// Spacing of the simulated arrivals over the disk probe's syncs.
const COMMIT_ARRIVAL_STEP_US: u64 = 10;
/// Round trips of the loopback wake-up probe (two messages each).
const WAKEUP_ROUND_TRIPS: u32 = 2_000;
/// QUIC round trips sampled (a status request to one node).
const ROUND_TRIP_SAMPLES: u32 = 2_000;

#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Rounds; each runs every case on both targets (which goes first alternates). The
    /// table shows each figure's median over the rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The timed phase of each run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Cases, comma-separated: `put` (64 clients), `get` (linearizable), `get-stale`
    /// (serializable / any member), `mixed`, `put-1` (one client).
    #[arg(long, value_delimiter = ',', default_value = "put,get,get-stale,put-1")]
    pub cases: Vec<Case>,
    /// Clients of the many-client cases.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Bytes of each put value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// gRPC connections to etcd (the clients are spread over them).
    #[arg(long, default_value_t = ETCD_CONNS_DEFAULT)]
    pub etcd_conns: usize,
    /// The etcd binary (Debian: etcd-server).
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// Where `compare/<date-time>/` goes (each run's directory, etcd's logs, compare.json).
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    Put,
    Get,
    GetStale,
    Mixed,
    #[value(name = "put-1")]
    #[serde(rename = "put-1")]
    Put1,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Put => "put",
            Case::Get => "get",
            Case::GetStale => "get-stale",
            Case::Mixed => "mixed",
            Case::Put1 => "put-1",
        }
    }

    fn workload(self) -> WorkloadKind {
        match self {
            Case::Put | Case::Put1 => WorkloadKind::Put,
            Case::Get | Case::GetStale => WorkloadKind::Get,
            Case::Mixed => WorkloadKind::Mixed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot start {bin}: {source} (install Debian's etcd-server or give --etcd-bin)")]
    EtcdMissing { bin: String, source: std::io::Error },
    #[error("etcd member {member} exited during startup ({status}); its log: {log}")]
    EtcdExited {
        member: usize,
        status: String,
        log: String,
    },
    #[error("{case} on {target}, round {round}: {message}")]
    Run {
        case: &'static str,
        target: &'static str,
        round: u32,
        message: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CompareError {
    let what = what.into();
    move |source| CompareError::Io { what, source }
}

/// One run's figures.
#[derive(Clone, Debug, Serialize)]
pub struct RunFigures {
    pub case: &'static str,
    pub target: &'static str,
    pub round: u32,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
    /// Node CPU per operation, summed over the three nodes (members).
    pub node_cpu_us_per_op: Option<f64>,
    pub run_dir: PathBuf,
}

/// The single-client floor measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Floor {
    pub fdatasync_p50_us: u64,
    pub quic_round_trip_p50_us: u64,
    /// One fdatasync's latency with `FSYNC_TAIL_WRITERS` appenders at once (three WALs on one
    /// disk).
    pub fdatasync_concurrent_p99_us: u64,
    pub fdatasync_concurrent_p999_us: u64,
    /// What a put waits for on that disk alone (no network, no CPU work): two of the three
    /// writers having finished a sync begun after it arrived (`probe::commit_latencies_us`).
    /// A put's latency cannot be below this, percentile by percentile.
    pub disk_commit_p50_us: u64,
    pub disk_commit_p99_us: u64,
    pub disk_commit_p999_us: u64,
    /// Thread CPU per append + fdatasync of the single writer, in microseconds.
    pub fdatasync_cpu_us: f64,
    /// CPU per loopback UDP message that wakes its receiver, both threads counted.
    pub wakeup_message_cpu_us: f64,
}

/// Runs the comparison; prints progress on stderr and the table on stdout.
pub fn run(args: &CompareArgs, seed: u64) -> Result<PathBuf, CompareError> {
    check(args)?;
    let stamp = output::utc_stamp(SystemTime::now());
    let dir = args.results.join("compare").join(&stamp);
    std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
    let etcd = EtcdCluster::start(&args.etcd_bin, &dir)?;
    eprintln!(
        "compare: etcd {} members at {}; results in {}",
        ETCD_MEMBERS,
        etcd.endpoints.join(","),
        dir.display()
    );
    let floor = measure_floor(&dir)?;
    eprintln!(
        "compare: floor: fdatasync p50 {} us, QUIC round trip p50 {} us; {} writers at once: \
         fdatasync p99 {} us, p99.9 {} us, a put on the disk alone p99.9 {} us; CPU per \
         fdatasync {:.1} us, per waking message {:.1} us",
        floor.fdatasync_p50_us,
        floor.quic_round_trip_p50_us,
        FSYNC_TAIL_WRITERS,
        floor.fdatasync_concurrent_p99_us,
        floor.fdatasync_concurrent_p999_us,
        floor.disk_commit_p999_us,
        floor.fdatasync_cpu_us,
        floor.wakeup_message_cpu_us
    );
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for case in &args.cases {
            let mut targets = [TargetKind::Kv, TargetKind::Etcd];
            if round % 2 == 0 {
                targets.reverse();
            }
            for target in targets {
                let settings =
                    run_settings(args, *case, target, &etcd, &dir, seed + u64::from(round));
                let figures = run_one(&settings, *case, target, round)?;
                eprintln!(
                    "compare: round {round} {} {}: {:.0} ops/s, p99 {} us",
                    case.name(),
                    target.name(),
                    figures.ops_per_s,
                    figures.p99_us
                );
                runs.push(figures);
            }
        }
    }
    let etcd_pids = etcd.pids();
    drop(etcd);
    let table = table(&args.cases, &runs, &floor);
    print!("{table}");
    let json = serde_json::json!({
        "kind": "compare",
        "rounds": args.rounds,
        "duration_s": args.duration.as_secs_f64(),
        "clients": args.clients,
        "value_size": args.value_size,
        "etcd_conns": args.etcd_conns,
        "etcd_pids": etcd_pids,
        "machine": output::Machine::describe(),
        "floor": floor,
        "runs": runs,
    });
    let bytes = serde_json::to_vec_pretty(&json).map_err(|e| CompareError::Io {
        what: "compare.json".into(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(dir.join("compare.json"), bytes).map_err(io("compare.json"))?;
    std::fs::write(dir.join("compare.txt"), &table).map_err(io("compare.txt"))?;
    Ok(dir)
}

fn check(args: &CompareArgs) -> Result<(), CompareError> {
    let usage = |m: String| Err(CompareError::Usage(m));
    if !cfg!(feature = "etcd") {
        return usage(
            "this bench was built without etcd support; build it with `cargo build --release \
             -p bench --features etcd` (or run `just compare`)"
                .into(),
        );
    }
    if args.rounds == 0 || args.cases.is_empty() {
        return usage("--rounds and --cases must not be empty".into());
    }
    if args.duration.is_zero() {
        return usage("--duration must be > 0".into());
    }
    if args.clients == 0 || args.clients > crate::args::CLIENTS_MAX {
        let max = crate::args::CLIENTS_MAX;
        return usage(format!(
            "--clients must be in 1..={max}, got {}",
            args.clients
        ));
    }
    if args.etcd_conns == 0 || args.etcd_conns > crate::args::ETCD_CONNS_MAX {
        let max = crate::args::ETCD_CONNS_MAX;
        return usage(format!("--etcd-conns must be in 1..={max}"));
    }
    Ok(())
}

fn run_settings(
    args: &CompareArgs,
    case: Case,
    target: TargetKind,
    etcd: &EtcdCluster,
    dir: &Path,
    seed: u64,
) -> Settings {
    let workload = case.workload();
    let etcd_target = target == TargetKind::Etcd;
    Settings {
        clients: if case == Case::Put1 { 1 } else { args.clients },
        duration_s: args.duration.as_secs_f64(),
        workload,
        keys: workload.keys_default(),
        value_size: args.value_size,
        rate: None,
        target,
        endpoints: if etcd_target {
            etcd.endpoints.clone()
        } else {
            Vec::new()
        },
        etcd_conns: args.etcd_conns,
        cluster: None,
        certs: None,
        client: crate::cluster::CLIENT_NAME.to_string(),
        node_pids: if etcd_target { etcd.pids() } else { Vec::new() },
        read_mode: if case == Case::GetStale {
            "stale"
        } else {
            "linearizable"
        },
        check: false,
        history: false,
        json: false,
        seed,
        results: dir.join(format!("{}-{}", case.name(), target.name())),
        timeout_ms: REQUEST_TIMEOUT_MS,
        final_reads_timeout_ms: crate::runner::FINAL_READS_TIMEOUT_DEFAULT.as_millis() as u64,
        threads: 1,
        quiet: true,
        disk_fs: false,
    }
}

fn run_one(
    settings: &Settings,
    case: Case,
    target: TargetKind,
    round: u32,
) -> Result<RunFigures, CompareError> {
    let outcome: RunOutcome = app::run(settings).map_err(|e| CompareError::Run {
        case: case.name(),
        target: target.name(),
        round,
        message: e.to_string(),
    })?;
    let figures = &outcome.figures;
    let node_cpu_us_per_op = outcome
        .cpu
        .nodes_s
        .filter(|_| figures.ops > 0)
        .map(|seconds| seconds * 1e6 / figures.ops as f64);
    Ok(RunFigures {
        case: case.name(),
        target: target.name(),
        round,
        ops_per_s: figures.ops_per_s,
        p50_us: figures.latency_p50_us,
        p99_us: figures.latency_p99_us,
        p999_us: figures.latency_p999_us,
        max_us: figures.latency_max_us,
        errors: figures.errors,
        node_cpu_us_per_op,
        run_dir: outcome.run_dir,
    })
}

/// The median of `values` (the lower middle for an even count); `None` if empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied()
}

/// Medians per case and target, side by side, with our figure over etcd's.
pub fn table(cases: &[Case], runs: &[RunFigures], floor: &Floor) -> String {
    let mut text = String::new();
    let header = format!(
        "{:<10} {:<5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>11}\n",
        "case", "side", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "cpu us/op"
    );
    text.push_str(&header);
    for case in cases {
        let mut medians = Vec::new();
        for target in [TargetKind::Kv, TargetKind::Etcd] {
            let of = |field: fn(&RunFigures) -> f64| {
                let values = runs
                    .iter()
                    .filter(|r| r.case == case.name() && r.target == target.name())
                    .map(field)
                    .collect();
                median(values).unwrap_or(f64::NAN)
            };
            let row = [
                of(|r| r.ops_per_s),
                of(|r| r.p50_us as f64),
                of(|r| r.p99_us as f64),
                of(|r| r.p999_us as f64),
                of(|r| r.max_us as f64),
                of(|r| r.node_cpu_us_per_op.unwrap_or(f64::NAN)),
            ];
            text.push_str(&format!(
                "{:<10} {:<5} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>11.1}\n",
                case.name(),
                target.name(),
                row[0],
                row[1] / 1000.0,
                row[2] / 1000.0,
                row[3] / 1000.0,
                row[4] / 1000.0,
                row[5]
            ));
            medians.push(row);
        }
        let (kv, etcd) = (medians[0], medians[1]);
        text.push_str(&format!(
            "{:<10} {:<5} {:>9.2}x {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>11.2}\n",
            case.name(),
            "kv/etcd",
            kv[0] / etcd[0],
            kv[1] / etcd[1],
            kv[2] / etcd[2],
            kv[3] / etcd[3],
            kv[4] / etcd[4],
            kv[5] / etcd[5]
        ));
    }
    let floor_us = floor.fdatasync_p50_us + floor.quic_round_trip_p50_us;
    text.push_str(&format!(
        "\nfloor of one put: fdatasync p50 {} us + QUIC round trip p50 {} us = {} us \
         (2x: {:.3} ms)\n",
        floor.fdatasync_p50_us,
        floor.quic_round_trip_p50_us,
        floor_us,
        2.0 * floor_us as f64 / 1000.0
    ));
    let ms = |us: u64| us as f64 / 1000.0;
    text.push_str(&format!(
        "disk tail: {} writers appending and fdatasyncing at once: one fdatasync p99 {:.3} ms, \
         p99.9 {:.3} ms;\n  a put on this disk alone (synced by {} of {}, no network, no CPU): \
         p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms\n",
        FSYNC_TAIL_WRITERS,
        ms(floor.fdatasync_concurrent_p99_us),
        ms(floor.fdatasync_concurrent_p999_us),
        COMMIT_QUORUM,
        FSYNC_TAIL_WRITERS,
        ms(floor.disk_commit_p50_us),
        ms(floor.disk_commit_p99_us),
        ms(floor.disk_commit_p999_us)
    ));
    text.push_str(&format!(
        "machine costs: an append + fdatasync takes {:.1} us of CPU, a loopback message that \
         wakes its receiver {:.1} us (node CPU per op counts these)\n",
        floor.fdatasync_cpu_us, floor.wakeup_message_cpu_us
    ));
    text
}

/// The floor's probes: one writer's fdatasync p50 and CPU, a status round trip to a node of a
/// fresh embedded cluster, `FSYNC_TAIL_WRITERS` writers at once, and loopback wake-ups.
fn measure_floor(dir: &Path) -> Result<Floor, CompareError> {
    let path = dir.join("fsync-probe");
    let single = probe::fdatasync_samples(
        &path,
        FSYNC_APPEND_BYTES,
        FSYNC_SAMPLES as usize,
        None,
        Instant::now(),
    )
    .map_err(io(path.display().to_string()))?;
    let mut durations: Vec<u64> = single.syncs.iter().map(probe::Sync::duration_us).collect();
    durations.sort_unstable();
    let quic_round_trip_p50_us = quic_round_trip_p50_us()?;
    let deadline = Instant::now() + Duration::from_millis(FSYNC_TAIL_MS_MAX);
    let writers = probe::disk_writers(
        dir,
        FSYNC_TAIL_WRITERS,
        FSYNC_APPEND_BYTES,
        FSYNC_TAIL_SAMPLES_PER_WRITER,
        deadline,
    )
    .map_err(io("fsync tail probe"))?;
    let mut concurrent: Vec<u64> = (writers.iter())
        .flat_map(|w| w.syncs.iter().map(probe::Sync::duration_us))
        .collect();
    concurrent.sort_unstable();
    let syncs: Vec<Vec<probe::Sync>> = writers.into_iter().map(|w| w.syncs).collect();
    let mut commit = probe::commit_latencies_us(&syncs, COMMIT_QUORUM, COMMIT_ARRIVAL_STEP_US);
    commit.sort_unstable();
    let wakeup_message_cpu_us =
        probe::wakeup_message_cpu_us(WAKEUP_ROUND_TRIPS).map_err(io("loopback wake-up probe"))?;
    Ok(Floor {
        fdatasync_p50_us: probe::quantile(&durations, 0.5),
        quic_round_trip_p50_us,
        fdatasync_concurrent_p99_us: probe::quantile(&concurrent, 0.99),
        fdatasync_concurrent_p999_us: probe::quantile(&concurrent, 0.999),
        disk_commit_p50_us: probe::quantile(&commit, 0.5),
        disk_commit_p99_us: probe::quantile(&commit, 0.99),
        disk_commit_p999_us: probe::quantile(&commit, 0.999),
        fdatasync_cpu_us: single.cpu_us_per_sync().unwrap_or(0.0),
        wakeup_message_cpu_us,
    })
}

fn quic_round_trip_p50_us() -> Result<u64, CompareError> {
    let failed = |message: String| CompareError::Io {
        what: "QUIC round trip probe".into(),
        source: std::io::Error::other(message),
    };
    let cluster =
        crate::cluster::EmbeddedCluster::start(false).map_err(|e| failed(e.to_string()))?;
    let config = cluster.client_config();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("runtime"))?;
    let samples = runtime.block_on(async {
        let client = kvclient::Client::connect(config)
            .await
            .map_err(|e| failed(e.to_string()))?;
        crate::cluster::wait_for_leader(&client)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let node = client.leader().unwrap_or(1);
        let mut samples = Vec::with_capacity(ROUND_TRIP_SAMPLES as usize);
        for _ in 0..ROUND_TRIP_SAMPLES {
            let started = Instant::now();
            client
                .status(node)
                .await
                .map_err(|e| failed(e.to_string()))?;
            samples.push(started.elapsed().as_micros() as f64);
        }
        Ok::<_, CompareError>(samples)
    })?;
    drop(runtime);
    let _ = cluster.shutdown();
    Ok(median(samples).unwrap_or(0.0) as u64)
}

/// Three etcd members on loopback, stopped (SIGKILL, then reaped) on drop; their data in a
/// temporary directory, their logs in `dir`.
pub struct EtcdCluster {
    members: Vec<Child>,
    endpoints: Vec<String>,
    _data: tempfile::TempDir,
}

impl EtcdCluster {
    pub fn start(bin: &Path, dir: &Path) -> Result<EtcdCluster, CompareError> {
        let data = tempfile::Builder::new()
            .prefix("bench-etcd-")
            .tempdir()
            .map_err(io("etcd data directory"))?;
        let ports: Vec<(u16, u16)> = (0..ETCD_MEMBERS)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_, CompareError>>()?;
        let peer = |port: u16| format!("http://127.0.0.1:{port}");
        let initial: Vec<String> = (ports.iter().enumerate())
            .map(|(i, (_, peer_port))| format!("m{}={}", i + 1, peer(*peer_port)))
            .collect();
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            endpoints: ports
                .iter()
                .map(|(c, _)| format!("127.0.0.1:{c}"))
                .collect(),
            _data: data,
        };
        for (i, (client_port, peer_port)) in ports.iter().enumerate() {
            let name = format!("m{}", i + 1);
            let log_path = dir.join(format!("etcd-{name}.log"));
            let log = File::create(&log_path).map_err(io(log_path.display().to_string()))?;
            let log_err = log.try_clone().map_err(io("etcd log"))?;
            let child = Command::new(bin)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(cluster._data.path().join(&name))
                .args(["--listen-client-urls", &peer(*client_port)])
                .args(["--advertise-client-urls", &peer(*client_port)])
                .args(["--listen-peer-urls", &peer(*peer_port)])
                .args(["--initial-advertise-peer-urls", &peer(*peer_port)])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "bench-compare"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(|source| CompareError::EtcdMissing {
                    bin: bin.display().to_string(),
                    source,
                })?;
            cluster.members.push(child);
        }
        cluster.wait_started(dir)?;
        Ok(cluster)
    }

    /// Waits until every member listens for clients; a member that exits is an error.
    fn wait_started(&mut self, dir: &Path) -> Result<(), CompareError> {
        let deadline = Instant::now() + Duration::from_millis(ETCD_START_TIMEOUT_MS);
        loop {
            for (i, member) in self.members.iter_mut().enumerate() {
                if let Ok(Some(status)) = member.try_wait() {
                    return Err(CompareError::EtcdExited {
                        member: i + 1,
                        status: status.to_string(),
                        log: dir
                            .join(format!("etcd-m{}.log", i + 1))
                            .display()
                            .to_string(),
                    });
                }
            }
            let listening = self
                .endpoints
                .iter()
                .all(|e| std::net::TcpStream::connect(e.as_str()).is_ok());
            if listening {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CompareError::Io {
                    what: "etcd members".into(),
                    source: std::io::Error::other(format!(
                        "not listening within {ETCD_START_TIMEOUT_MS} ms"
                    )),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }

    /// `host:port` of each member's client listener.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

fn free_port() -> Result<u16, CompareError> {
    crate::cluster::free_tcp_port().map_err(|e| CompareError::Io {
        what: "free TCP port".into(),
        source: std::io::Error::other(e.to_string()),
    })
}
