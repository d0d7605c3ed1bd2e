//! One `bench` run from checked settings to files on disk: start (or reach) the cluster, run
//! the load with a progress line, measure CPU, write the results, run the checker.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kvclient::config::ClusterConfig;
use kvclient::{Client, ClientConfig, ClientError};
use serde::Serialize;

use crate::args::{Settings, TargetKind};
use crate::cluster::{self, ClusterError, EmbeddedCluster};
use crate::cpu;
use crate::history::{HistoryError, Recorder};
use crate::output::{self, Machine, OutputError};
use crate::runner::{self, LoadConfig, LoadReport, Progress};
use crate::stats::Figures;
use crate::target::Target;
use crate::workload::{Workload, WorkloadConfig};

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL_MS: u64 = 500;
/// The checker's time limit; past it the verdict is `unknown`.
const CHECK_TIME_LIMIT_S: u64 = 120;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cluster config: {0}")]
    Config(#[from] kvclient::config::ConfigError),
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("checker: {0}")]
    Check(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("report.html: {0}")]
    Report(String),
}

/// CPU seconds used during the timed phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuFigures {
    pub bench_s: f64,
    /// `None` for an external cluster without `--node-pids`.
    pub nodes_s: Option<f64>,
    /// CPU seconds per wall-clock second (1.0 = one core busy).
    pub bench_cores: f64,
    pub nodes_cores: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckSummary {
    /// `true`, `false` or `"unknown"` in JSON, as in checker.json.
    pub valid: checker::Validity,
    pub verdict: String,
    pub anomaly_types: Vec<String>,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub figures: Figures,
    pub cpu: CpuFigures,
    pub check: Option<CheckSummary>,
    pub summary_text: String,
    /// What summary.json holds (`--json` prints it).
    pub summary: serde_json::Value,
    /// Why the final reads fell short, if they did (`LoadReport::final_reads_shortfall`).
    pub final_reads_shortfall: Option<String>,
}

impl RunOutcome {
    /// `false` if the checker found the history invalid, or final reads failed (the cluster
    /// stopped answering, or lost keys).
    pub fn passed(&self) -> bool {
        let check = self.check.as_ref();
        check.is_none_or(|check| check.valid != checker::Validity::Invalid)
            && self.final_reads_shortfall.is_none()
    }
}

/// What the timed phase measured, before it is written out.
struct Measured {
    report: LoadReport,
    cpu: CpuFigures,
    events: u64,
}

/// Runs the benchmark `settings` describes.
pub fn run(settings: &Settings) -> Result<RunOutcome, BenchError> {
    let started_at = SystemTime::now();
    let run_dir = output::create_run_dir(&settings.results, &output::utc_stamp(started_at))?;
    let measured = match settings.target {
        TargetKind::Kv => run_kv(settings, &run_dir)?,
        TargetKind::Etcd => run_etcd(settings, &run_dir)?,
    };
    finish(settings, measured, &run_dir)
}

/// The load against our cluster: embedded (started and stopped here) or `--cluster`.
fn run_kv(settings: &Settings, run_dir: &Path) -> Result<Measured, BenchError> {
    let (cluster, mut client_config) = match &settings.cluster {
        None => {
            let cluster = EmbeddedCluster::start(settings.disk_fs)?;
            let config = cluster.client_config();
            (Some(cluster), config)
        }
        Some(path) => (None, external_client_config(path, settings)?),
    };
    client_config.request_timeout = Duration::from_millis(settings.timeout_ms);
    let runtime = build_runtime(settings.threads)?;
    let measured = runtime.block_on(async {
        let client = Client::connect(client_config).await?;
        cluster::wait_for_leader(&client).await?;
        drive(settings, Target::Kv(&client), run_dir).await
    });
    // Close the client's connections before the nodes go away.
    drop(runtime);
    if let Some(cluster) = cluster {
        if let Err(error) = cluster.shutdown() {
            eprintln!("bench: warning: {error}");
        }
    }
    measured
}

/// The load against etcd at `--endpoints`.
#[cfg(feature = "etcd")]
fn run_etcd(settings: &Settings, run_dir: &Path) -> Result<Measured, BenchError> {
    let runtime = build_runtime(settings.threads)?;
    runtime.block_on(async {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let etcd =
            crate::etcd::EtcdTarget::connect(&settings.endpoints, settings.etcd_conns, timeout)
                .await
                .map_err(|e| BenchError::Etcd(e.to_string()))?;
        let ready_within = Duration::from_millis(cluster::LEADER_WAIT_MS_MAX);
        (etcd.wait_ready(ready_within).await).map_err(|e| BenchError::Etcd(e.to_string()))?;
        drive(settings, Target::Etcd(&etcd), run_dir).await
    })
}

#[cfg(not(feature = "etcd"))]
fn run_etcd(_settings: &Settings, _run_dir: &Path) -> Result<Measured, BenchError> {
    Err(BenchError::Etcd(
        "this bench was built without etcd support (--features etcd)".into(),
    ))
}

fn external_client_config(path: &Path, settings: &Settings) -> Result<ClientConfig, BenchError> {
    let cluster = ClusterConfig::load(path)?;
    let mut config = ClientConfig::from_cluster(&cluster, &settings.client);
    if let Some(certs) = &settings.certs {
        config.certs_dir = certs.clone();
    }
    Ok(config)
}

fn build_runtime(threads: usize) -> Result<tokio::runtime::Runtime, BenchError> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    // Named so that CPU accounting tells them from the embedded nodes' threads.
    builder
        .enable_all()
        .thread_name("bench-worker")
        .build()
        .map_err(BenchError::Runtime)
}

async fn drive(
    settings: &Settings,
    target: Target<'_>,
    run_dir: &Path,
) -> Result<Measured, BenchError> {
    let workload = Arc::new(Workload::new(WorkloadConfig {
        kind: settings.workload,
        keys: settings.keys,
        value_size: settings.value_size,
        read_mode: settings.read_mode(),
    }));
    let recorder = if settings.history {
        Recorder::create(&run_dir.join("history.jsonl"), settings.workload.name())?
    } else {
        Recorder::discard()
    };
    let load = LoadConfig {
        clients: settings.clients,
        duration: settings.duration(),
        rate: settings.rate,
        seed: settings.seed,
        final_reads_timeout: Duration::from_millis(settings.final_reads_timeout_ms),
    };
    let progress = Arc::new(Progress::default());
    let ticker = (!settings.quiet).then(|| ProgressLine::start(progress.clone()));
    let cpu_before = CpuCounters::read(settings);
    let report = runner::run_load(target, workload, &load, recorder.clone(), progress).await;
    let cpu = CpuCounters::read(settings).since(&cpu_before, report.elapsed);
    if let Some(ticker) = ticker {
        ticker.stop();
    }
    let events = recorder.finish()?.events;
    Ok(Measured {
        report,
        cpu,
        events,
    })
}

fn finish(
    settings: &Settings,
    measured: Measured,
    run_dir: &Path,
) -> Result<RunOutcome, BenchError> {
    let stats = &measured.report.stats;
    let figures = stats.figures(measured.report.elapsed);
    let mut summary_text = figures.summary_text();
    summary_text.push('\n');
    summary_text.push_str(&cpu_text(&measured.cpu));
    output::write(&run_dir.join("latency.hgrm"), stats.hgrm().as_bytes())?;
    output::write(
        &run_dir.join("timeseries.csv"),
        stats.timeseries_csv().as_bytes(),
    )?;
    let shortfall = measured.report.final_reads_shortfall();
    let check = if settings.check {
        Some(check_history(settings, run_dir, shortfall.clone())?)
    } else {
        None
    };
    let summary = serde_json::json!({
        "kind": "bench",
        "run_dir": run_dir,
        "config": settings,
        "machine": Machine::describe(),
        "figures": &figures,
        "cpu": &measured.cpu,
        "history_events": measured.events,
        "final_reads": {
            "ok": measured.report.final_reads_ok,
            "failed": measured.report.final_reads_failed,
            "gave_up": measured.report.final_reads_gave_up,
        },
        "check": &check,
    });
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| BenchError::Check(e.to_string()))?;
    output::write(&run_dir.join("summary.json"), &json)?;
    crate::report::render_run(run_dir).map_err(BenchError::Report)?;
    output::point_latest(&settings.results, run_dir)?;
    Ok(RunOutcome {
        run_dir: run_dir.to_path_buf(),
        figures,
        cpu: measured.cpu,
        check,
        summary_text,
        summary,
        final_reads_shortfall: shortfall,
    })
}

fn cpu_text(cpu: &CpuFigures) -> String {
    let nodes = match (cpu.nodes_s, cpu.nodes_cores) {
        (Some(seconds), Some(cores)) => format!("{seconds:.2} s ({cores:.2} cores)"),
        _ => "not measured (give --node-pids)".to_string(),
    };
    format!(
        "CPU: bench {:.2} s ({:.2} cores), nodes {nodes}\n",
        cpu.bench_s, cpu.bench_cores
    )
}

/// Checks the run's history; `shortfall` (failed final reads) keeps a valid verdict unknown.
fn check_history(
    settings: &Settings,
    run_dir: &Path,
    shortfall: Option<String>,
) -> Result<CheckSummary, BenchError> {
    let path = run_dir.join("history.jsonl");
    let history =
        checker::history::read_jsonl(&path).map_err(|e| BenchError::Check(e.to_string()))?;
    let options = checker::Options {
        time_limit: Some(Duration::from_secs(CHECK_TIME_LIMIT_S)),
        ..checker::Options::default()
    };
    let workload = settings.workload.checker_workload();
    let mut report = checker::check(&history, workload, &options)
        .map_err(|e| BenchError::Check(e.to_string()))?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| BenchError::Check(e.to_string()))?;
    output::write(&run_dir.join("checker.json"), &json)?;
    if let Some(reason) = shortfall {
        report.not_valid(reason);
    }
    let anomaly_types = report.anomalies.iter().map(|a| a.kind.clone()).collect();
    Ok(CheckSummary {
        valid: report.valid,
        verdict: report.verdict_line(),
        anomaly_types,
    })
}

/// Cumulative CPU counters at one instant.
struct CpuCounters {
    process_s: f64,
    nodes_s: Option<f64>,
    /// The nodes are threads of this process, counted in `process_s` too.
    embedded: bool,
}

impl CpuCounters {
    fn read(settings: &Settings) -> CpuCounters {
        let process_s = cpu::process_cpu_seconds(None).unwrap_or(0.0);
        let embedded = settings.target == TargetKind::Kv && settings.cluster.is_none();
        let nodes_s = if embedded {
            Some(cpu::threads_cpu_seconds(is_node_thread))
        } else if settings.node_pids.is_empty() {
            None
        } else {
            let pids = settings.node_pids.iter();
            Some(
                pids.filter_map(|&pid| cpu::process_cpu_seconds(Some(pid)))
                    .sum(),
            )
        };
        CpuCounters {
            process_s,
            nodes_s,
            embedded,
        }
    }

    fn since(&self, before: &CpuCounters, elapsed: Duration) -> CpuFigures {
        let wall_s = elapsed.as_secs_f64().max(f64::EPSILON);
        let nodes_s = self
            .nodes_s
            .zip(before.nodes_s)
            .map(|(after, before)| after - before);
        let mut bench_s = self.process_s - before.process_s;
        if self.embedded {
            bench_s -= nodes_s.unwrap_or(0.0);
        }
        CpuFigures {
            bench_s: bench_s.max(0.0),
            nodes_s,
            bench_cores: bench_s.max(0.0) / wall_s,
            nodes_cores: nodes_s.map(|seconds| seconds / wall_s),
        }
    }
}

/// Threads of the embedded nodes: the node thread, its WAL threads, its blocking pool.
fn is_node_thread(name: &str) -> bool {
    name.starts_with("kvnode-") || name.starts_with("wal-") || name.starts_with("tokio-runtime")
}

/// The indicatif progress line, redrawn from a thread of its own so it never competes with
/// the single-threaded runtime's tasks for a turn.
struct ProgressLine {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ProgressLine {
    fn start(progress: Arc<Progress>) -> ProgressLine {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new_spinner();
            let style = indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            bar.set_style(style);
            let mut last = 0;
            let interval = Duration::from_millis(PROGRESS_INTERVAL_MS);
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                let answered = progress.answered.load(Ordering::Relaxed);
                let errors = progress.errors.load(Ordering::Relaxed);
                let rate = (answered - last) as f64 / interval.as_secs_f64();
                last = answered;
                bar.set_message(format!(
                    "{rate:>9.0} ops/s  {answered:>9} ops  {errors} errors"
                ));
                bar.tick();
            }
            bar.finish_and_clear();
        });
        ProgressLine { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
