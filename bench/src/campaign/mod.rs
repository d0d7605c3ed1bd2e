//! `bench campaign`: a real kvnode cluster (nemesis backends), the load with a seeded fault
//! schedule, heal and recovery, final reads, the checker, and `results/<name>/<date-time>/`
//! with history.jsonl, nemesis.jsonl, logs/, metrics.jsonl, checker.json, summary.json and
//! report.html.

pub mod args;
pub mod driver;
pub mod sampler;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kvclient::config::ClusterConfig;
use kvclient::{Client, ClientConfig, ReadMode};
use nemesis::{Cluster, ClusterSpec, FaultRecord, Nemesis, ScheduleSpec};

use crate::history::Recorder;
use crate::output::{self, Machine};
use crate::runner::{self, LoadConfig, LoadReport, Progress};
use crate::target::Target;
use crate::workload::{Workload, WorkloadConfig};
use args::CampaignSettings;
use driver::{Driver, DriverResult};
use sampler::{Sample, Sampler};

/// Exit codes of `bench campaign`.
pub const EXIT_VALID: u8 = 0;
pub const EXIT_ANOMALY: u8 = 1;
pub const EXIT_UNKNOWN: u8 = 2;
/// The checker's time limit; past it the verdict is `unknown`.
const CHECK_TIME_LIMIT_S: u64 = 300;
/// How long the fresh cluster gets to elect its first leader.
const STARTUP_LEADER_TIMEOUT_MS: u64 = 30_000;
/// Redraw interval of the progress line.
const PROGRESS_INTERVAL_MS: u64 = 1000;
/// The key of the recovery write: no workload uses it.
const RECOVERY_KEY: &str = "campaign-recovery";
/// Pause between recovery write attempts.
const RECOVERY_RETRY_MS: u64 = 200;
/// WAL segment size on disk-fault campaigns: small, so that sealed segments exist for
/// disk-corrupt to flip bits in, and rolls (new files, renames, directory fsyncs) happen under
/// the power cuts.
const DISK_WAL_SEGMENT_BYTES: u64 = 256 << 10;
/// Snapshot interval (applied entries) on disk-fault campaigns: snapshot files are written,
/// renamed and compacted under the power cuts, and exist for disk-corrupt.
const DISK_SNAPSHOT_ENTRIES: u64 = 2_000;
/// Bytes of log entries a node keeps in memory in every campaign (the node's default is
/// 16 MiB): about 400 puts, below `DISK_SNAPSHOT_ENTRIES`, so that a follower cut off by a
/// fault for more than a moment is caught up from entries its leader reads back from the WAL,
/// under the same faults (power cuts included).
const CAMPAIGN_LOG_MEMORY_BYTES_MAX: u64 = 128 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error(
        "kvnode binary not found at {0}: build it first with `cargo build --release -p kvnode`"
    )]
    NodeBinary(PathBuf),
    #[error(
        "nemesis binary not found at {0} (it serves the disks of disk-fault campaigns): build \
         it first with `cargo build --release -p nemesis`"
    )]
    DiskBinary(PathBuf),
    #[error("the netns backend needs root")]
    NotRoot,
    #[error("cluster: {0}")]
    Cluster(#[from] nemesis::ClusterError),
    #[error("spec: {0}")]
    Spec(#[from] nemesis::spec::SpecError),
    #[error("schedule: {0}")]
    Schedule(#[from] nemesis::schedule::ScheduleError),
    #[error("cluster config: {0}")]
    Config(#[from] kvclient::config::ConfigError),
    #[error("client: {0}")]
    Client(#[from] kvclient::ClientError),
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error("{0}")]
    Io(String),
    #[error("checker: {0}")]
    Check(String),
    #[error("the nemesis thread panicked")]
    NemesisPanicked,
    #[error("the cluster did not recover within {0} ms (no stable leader taking a write)")]
    NoRecovery(u64),
}

/// What a campaign produced.
#[derive(Debug)]
pub struct CampaignOutcome {
    pub run_dir: PathBuf,
    pub valid: checker::Validity,
    pub verdict: String,
    pub ops: u64,
    pub faults: usize,
}

impl CampaignOutcome {
    pub fn exit_code(&self) -> u8 {
        match self.valid {
            checker::Validity::Valid => EXIT_VALID,
            checker::Validity::Invalid => EXIT_ANOMALY,
            checker::Validity::Unknown => EXIT_UNKNOWN,
        }
    }
}

/// Everything the load phase measured, before the files are written.
pub(crate) struct Ran {
    pub report: LoadReport,
    pub records: Vec<FaultRecord>,
    pub fault_errors: Vec<String>,
    pub samples: Vec<Sample>,
    pub start_unix_ms: u64,
    pub events: u64,
    /// How long the healed cluster took to take a write; `None`: it did not within
    /// `--recovery-timeout` (the history is checked all the same, the run is not valid).
    pub recovery_ms: Option<u64>,
    /// Nodes that refused to start (corrupt data), with the reason from their log.
    pub refused: std::collections::BTreeMap<u64, String>,
    /// Nodes that restarted by repairing their data, with the last repair from their log.
    pub repaired: std::collections::BTreeMap<u64, String>,
}

/// Runs one campaign.
pub fn run(settings: &CampaignSettings) -> Result<CampaignOutcome, CampaignError> {
    let spec = cluster_spec(settings)?;
    let stamp = output::utc_stamp(SystemTime::now());
    let run_dir = create_run_dir(&settings.results.join(&settings.name), &stamp)?;
    nemesis::cluster::cleanup_on_interrupt(spec.state_path.clone(), spec.netns.prefix.clone())
        .map_err(|e| CampaignError::Io(format!("signal handler: {e}")))?;
    let cluster = match Cluster::start(&spec) {
        Ok(cluster) => cluster,
        Err(error) => {
            // Nothing ran: the config and certificates made for it are not results.
            let _ = std::fs::remove_dir_all(&spec.work_dir);
            return Err(error.into());
        }
    };
    cluster.wait_for_stable_leader(Duration::from_millis(STARTUP_LEADER_TIMEOUT_MS))?;
    let result = drive(settings, cluster, &run_dir);
    // Logs are copied whatever happened: they explain a failed run too.
    copy_logs(&spec, &run_dir);
    let ran = result?;
    crate::report::write_files(settings, &ran, &run_dir)?;
    let mut checked = check(settings, &run_dir)?;
    let mut verdict = checked.verdict_line();
    // A cluster that does not come back is a failed run whatever the history shows; so is
    // one whose final reads failed (a lost write on those keys may show in no read). Anomalies
    // found in the history still make it invalid.
    let short = match ran.recovery_ms {
        None => {
            let timeout_ms = (settings.recovery_timeout_s * 1000.0) as u64;
            Some(CampaignError::NoRecovery(timeout_ms).to_string())
        }
        Some(_) => ran.report.final_reads_shortfall(),
    };
    if let Some(reason) = short {
        if checked.valid == checker::Validity::Valid {
            checked.not_valid(reason);
            verdict = checked.verdict_line();
        } else {
            verdict = format!("{verdict}; {reason}");
        }
    }
    let summary = summary_json(settings, &ran, &checked, &verdict);
    write_json(&run_dir.join("summary.json"), &summary)?;
    crate::report::render_run(&run_dir)
        .map_err(|e| CampaignError::Io(format!("report.html: {e}")))?;
    if let Err(error) = crate::index::write_index(&settings.results) {
        eprintln!("bench: warning: results/index.html: {error}");
    }
    Ok(CampaignOutcome {
        run_dir,
        valid: checked.valid,
        verdict,
        ops: ran.report.stats.answered + ran.report.stats.errors,
        faults: ran.records.len(),
    })
}

fn cluster_spec(settings: &CampaignSettings) -> Result<ClusterSpec, CampaignError> {
    let backend = settings.backend.kind();
    if backend == nemesis::BackendKind::Netns && !nemesis::netns::is_root() {
        return Err(CampaignError::NotRoot);
    }
    let work_dir = std::env::temp_dir().join(format!("kvcampaign-{}", std::process::id()));
    let mut spec = ClusterSpec::new(backend, settings.nodes, &work_dir);
    spec.base_port = settings.base_port;
    spec.hosts = settings.hosts.clone();
    spec.netns.prefix = args::NETNS_PREFIX.to_string();
    spec.netns.subnet = args::NETNS_SUBNET;
    spec.log_memory_bytes_max = Some(CAMPAIGN_LOG_MEMORY_BYTES_MAX);
    if settings.disk() {
        spec.disk = true;
        spec.wal_segment_bytes = Some(DISK_WAL_SEGMENT_BYTES);
        spec.snapshot_entries = DISK_SNAPSHOT_ENTRIES;
        if !spec.disk_binary.is_file() {
            return Err(CampaignError::DiskBinary(spec.disk_binary.clone()));
        }
    }
    // The well-known state file lets `nemesis cleanup` undo a crashed campaign; a second
    // campaign running at the same time records its cluster in its own work dir.
    let default_state = nemesis::spec::default_state_path();
    spec.state_path = if default_state.exists() {
        work_dir.join("state.json")
    } else {
        default_state
    };
    if !spec.node_binary.is_file() {
        return Err(CampaignError::NodeBinary(spec.node_binary.clone()));
    }
    spec.validate()?;
    Ok(spec)
}

/// `<parent>/<stamp>`, `-2`, `-3`, ... if two campaigns start in one second.
fn create_run_dir(parent: &Path, stamp: &str) -> Result<PathBuf, CampaignError> {
    let io = |e: std::io::Error| CampaignError::Io(format!("{}: {e}", parent.display()));
    std::fs::create_dir_all(parent).map_err(io)?;
    for suffix in 1.. {
        let name = match suffix {
            1 => stamp.to_string(),
            _ => format!("{stamp}-{suffix}"),
        };
        match std::fs::create_dir(parent.join(&name)) {
            Ok(()) => return Ok(parent.join(name)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(io(error)),
        }
    }
    Err(CampaignError::Io("no free run directory".into()))
}

fn drive(
    settings: &CampaignSettings,
    mut cluster: Cluster,
    run_dir: &Path,
) -> Result<Ran, CampaignError> {
    let config = ClusterConfig::load(cluster.config_path())?;
    let nodes: Vec<(u64, std::net::SocketAddr)> = (cluster.state().nodes.iter())
        .map(|node| (node.id, node.metrics_address))
        .collect();
    let sampler = Sampler::start(&nodes);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CampaignError::Io(format!("runtime: {e}")))?;
    let client_config = ClientConfig::from_cluster(&config, "client1");
    let client = runtime.block_on(connect(client_config))?;
    let recorder = Recorder::create(&run_dir.join("history.jsonl"), settings.workload.name())?;
    let result = load_with_faults(settings, &runtime, &client, cluster, &recorder);
    let samples = sampler.finish();
    drop(client);
    drop(runtime);
    let (report, driven, recovery_ms) = result?;
    cluster = driven.nemesis.into_cluster();
    let refused = cluster.refused().clone();
    let repaired = cluster.repaired().clone();
    cluster.cleanup()?;
    let events = recorder.finish()?.events;
    Ok(Ran {
        report,
        records: driven.records,
        fault_errors: driven.errors,
        samples,
        start_unix_ms: recorder.start_unix_ms(),
        events,
        recovery_ms,
        refused,
        repaired,
    })
}

async fn connect(config: ClientConfig) -> Result<Client, CampaignError> {
    let client = Client::connect(config).await?;
    crate::cluster::wait_for_leader(&client)
        .await
        .map_err(|e| CampaignError::Io(e.to_string()))?;
    Ok(client)
}

type Loaded = (LoadReport, DriverResult, Option<u64>);

fn load_with_faults(
    settings: &CampaignSettings,
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    cluster: Cluster,
    recorder: &Arc<Recorder>,
) -> Result<Loaded, CampaignError> {
    let schedule = nemesis::schedule(&ScheduleSpec {
        kinds: settings.faults.clone(),
        interval_ms: (settings.interval_s * 1000.0) as u64,
        duration_ms: (settings.fault_duration_s * 1000.0) as u64,
        time_limit_ms: (settings.time_limit_s * 1000.0) as u64,
        seed: settings.seed,
        target: settings.target,
    })?;
    let workload = Arc::new(Workload::new(WorkloadConfig {
        kind: settings.workload,
        keys: settings.keys,
        value_size: 16,
        read_mode: ReadMode::Linearizable,
    }));
    let load = LoadConfig {
        clients: settings.clients,
        duration: Duration::from_secs_f64(settings.time_limit_s),
        rate: settings.rate,
        seed: settings.seed,
        final_reads_timeout: runner::FINAL_READS_TIMEOUT_DEFAULT,
    };
    let injected = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::default());
    let ticker = (!settings.quiet).then(|| ProgressLine::start(progress.clone(), injected.clone()));
    let nemesis = Nemesis::new(cluster, settings.seed);
    let driver = Driver::start(nemesis, schedule, recorder.clone(), injected)
        .map_err(|e| CampaignError::Io(format!("nemesis thread: {e}")))?;
    let timed = runtime.block_on(runner::run_timed(
        Target::Kv(client),
        workload.clone(),
        &load,
        recorder.clone(),
        progress,
    ));
    if let Some(ticker) = ticker {
        ticker.stop();
    }
    let mut driven = driver.finish().ok_or(CampaignError::NemesisPanicked)?;
    let recovery_ms = match recover(settings, runtime, client, &mut driven.nemesis, recorder) {
        Ok(ms) => Some(ms),
        Err(CampaignError::NoRecovery(_)) => None,
        Err(error) => return Err(error),
    };
    let report = match recovery_ms {
        Some(_) => runtime.block_on(timed.final_reads(Target::Kv(client), &workload, recorder)),
        None => timed.without_final_reads(),
    };
    Ok((report, driven, recovery_ms))
}

/// Heals everything, then waits (bounded) for a stable leader and a successful write.
fn recover(
    settings: &CampaignSettings,
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    nemesis: &mut Nemesis,
    recorder: &Recorder,
) -> Result<u64, CampaignError> {
    let started = Instant::now();
    let heal = nemesis
        .heal_all()
        .map_err(|e| CampaignError::Io(e.to_string()))?;
    recorder.note(driver::event("invoke", &heal));
    recorder.note(driver::event("info", &heal));
    let timeout = Duration::from_secs_f64(settings.recovery_timeout_s);
    let timeout_ms = timeout.as_millis() as u64;
    nemesis
        .cluster()
        .wait_for_stable_leader(timeout)
        .map_err(|_| CampaignError::NoRecovery(timeout_ms))?;
    let deadline = started + timeout;
    let wrote = runtime.block_on(async {
        let mut session = client.session();
        while Instant::now() < deadline {
            if session.put(RECOVERY_KEY, "ok").await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(RECOVERY_RETRY_MS)).await;
        }
        false
    });
    if !wrote {
        return Err(CampaignError::NoRecovery(timeout_ms));
    }
    Ok(started.elapsed().as_millis() as u64)
}

/// Copies every node's log into `run_dir/logs`, then removes the cluster's work directory.
pub(crate) fn copy_logs(spec: &ClusterSpec, run_dir: &Path) {
    let logs = run_dir.join("logs");
    if let Err(error) = std::fs::create_dir_all(&logs) {
        eprintln!("bench: warning: {}: {error}", logs.display());
        return;
    }
    for id in spec.node_ids() {
        let from = spec.node_log(id);
        let to = logs.join(from.file_name().unwrap_or_default());
        if let Err(error) = std::fs::copy(&from, &to) {
            eprintln!("bench: warning: copy {}: {error}", from.display());
        }
    }
    // The data and certificates are not results.
    let _ = std::fs::remove_dir_all(&spec.work_dir);
}

fn check(settings: &CampaignSettings, run_dir: &Path) -> Result<checker::Report, CampaignError> {
    let history = checker::history::read_jsonl(&run_dir.join("history.jsonl"))
        .map_err(|e| CampaignError::Check(e.to_string()))?;
    let options = checker::Options {
        time_limit: Some(Duration::from_secs(CHECK_TIME_LIMIT_S)),
        ..checker::Options::default()
    };
    let report = checker::check(&history, settings.workload.checker_workload(), &options)
        .map_err(|e| CampaignError::Check(e.to_string()))?;
    write_json(&run_dir.join("checker.json"), &report)?;
    if report.valid == checker::Validity::Invalid {
        let page = checker::html::render(&history, &report);
        output::write(&run_dir.join("checker.html"), page.as_bytes())?;
    }
    Ok(report)
}

fn summary_json(
    settings: &CampaignSettings,
    ran: &Ran,
    checked: &checker::Report,
    verdict: &str,
) -> serde_json::Value {
    let stats = &ran.report.stats;
    serde_json::json!({
        "kind": "campaign",
        "config": settings,
        "seed": settings.seed,
        "machine": Machine::describe(),
        "start_unix_ms": ran.start_unix_ms,
        "ops": stats.answered + stats.errors,
        "ops_ok": stats.answered,
        "ops_failed": stats.errors,
        "ops_per_s": ran.report.stats.figures(ran.report.elapsed).ops_per_s,
        "history_events": ran.events,
        "final_reads": {
            "ok": ran.report.final_reads_ok,
            "failed": ran.report.final_reads_failed,
            "gave_up": ran.report.final_reads_gave_up,
        },
        "faults_injected": ran.records.len(),
        "faults": &ran.records,
        "fault_errors": &ran.fault_errors,
        "recovery_ms": ran.recovery_ms,
        "nodes_refused": &ran.refused,
        "nodes_repaired": &ran.repaired,
        "hosts": hosts_by_node(settings),
        "valid": checked.valid,
        "verdict": verdict,
        "anomaly_types": checked.anomalies.iter().map(|a| a.kind.clone()).collect::<Vec<_>>(),
    })
}

/// The ssh backend's hosts by node id (`{"1": "root@10.0.0.1:22"}`), `null` on the others:
/// report.html and index.html name nodes by their host.
fn hosts_by_node(settings: &CampaignSettings) -> serde_json::Value {
    if settings.hosts.is_empty() {
        return serde_json::Value::Null;
    }
    let map: serde_json::Map<String, serde_json::Value> = (settings.hosts.iter().enumerate())
        .map(|(index, host)| ((index + 1).to_string(), host.name().into()))
        .collect();
    serde_json::Value::Object(map)
}

pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), CampaignError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| CampaignError::Io(e.to_string()))?;
    Ok(output::write(path, &json)?)
}

/// Elapsed, ops/s and faults so far, redrawn on stderr from a thread of its own.
struct ProgressLine {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ProgressLine {
    fn start(progress: Arc<Progress>, faults: Arc<AtomicU64>) -> ProgressLine {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let interval = Duration::from_millis(PROGRESS_INTERVAL_MS);
            let mut last = 0;
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                let answered = progress.answered.load(Ordering::Relaxed);
                let errors = progress.errors.load(Ordering::Relaxed);
                let rate = (answered - last) as f64 / interval.as_secs_f64();
                last = answered;
                eprintln!(
                    "campaign: {:>5.1} s  {rate:>7.0} ops/s  {answered} ok  {errors} errors  \
                     {} faults",
                    started.elapsed().as_secs_f64(),
                    faults.load(Ordering::Relaxed)
                );
            }
        });
        ProgressLine { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
