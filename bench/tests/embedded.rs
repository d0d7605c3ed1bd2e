//! Short runs against the embedded cluster (loopback only, bounded by `--duration`).

use std::path::Path;

use bench::app;
use bench::args::{self, Args};
use clap::Parser;

fn settings(results: &Path, extra: &[&str]) -> args::Settings {
    let results = results.to_str().expect("temporary paths are UTF-8");
    let base = ["bench", "--quiet", "--results", results, "--seed", "7"];
    let args = Args::try_parse_from([&base[..], extra].concat()).expect("valid arguments");
    args::settings(args, 0).expect("valid settings")
}

fn assert_files(run_dir: &Path) {
    for file in [
        "summary.json",
        "history.jsonl",
        "latency.hgrm",
        "timeseries.csv",
        "checker.json",
    ] {
        assert!(
            run_dir.join(file).is_file(),
            "{file} missing in {}",
            run_dir.display()
        );
    }
}

#[test]
fn embedded_register_run_is_linearizable_and_complete() {
    let results = tempfile::tempdir().expect("temporary directory");
    let settings = settings(
        results.path(),
        &[
            "--workload",
            "register",
            "--clients",
            "8",
            "--duration",
            "2s",
        ],
    );
    let outcome = app::run(&settings).expect("the run completes");
    let check = outcome
        .check
        .as_ref()
        .expect("register runs are checked by default");
    assert_eq!(check.valid, checker::Validity::Valid, "{}", check.verdict);
    assert!(outcome.figures.ops > 0);
    assert_eq!(outcome.final_reads_shortfall, None);
    assert_files(&outcome.run_dir);
    let latest = std::fs::canonicalize(results.path().join("latest")).expect("latest link");
    assert_eq!(
        latest,
        std::fs::canonicalize(&outcome.run_dir).expect("run dir")
    );
    // Every invocation has exactly one completion, and every key got a final read.
    let history = checker::history::read_jsonl(&outcome.run_dir.join("history.jsonl"))
        .expect("the history parses");
    assert!(history
        .calls()
        .iter()
        .all(|call| call.complete_event.is_some()));
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(outcome.run_dir.join("summary.json")).expect("summary.json"),
    )
    .expect("summary.json is JSON");
    assert_eq!(summary["final_reads"]["ok"], 3);
    assert!(summary["cpu"]["nodes_s"].as_f64().is_some());
}

#[test]
fn embedded_list_append_run_is_serializable() {
    let results = tempfile::tempdir().expect("temporary directory");
    let settings = settings(
        results.path(),
        &[
            "--workload",
            "list-append",
            "--clients",
            "4",
            "--duration",
            "1s",
        ],
    );
    let outcome = app::run(&settings).expect("the run completes");
    let check = outcome
        .check
        .as_ref()
        .expect("list-append runs are checked by default");
    assert_eq!(check.valid, checker::Validity::Valid, "{}", check.verdict);
    assert_files(&outcome.run_dir);
}

#[test]
fn embedded_open_loop_get_run_counts_from_intended_times() {
    let results = tempfile::tempdir().expect("temporary directory");
    let settings = settings(
        results.path(),
        &[
            "--workload",
            "get",
            "--clients",
            "4",
            "--duration",
            "1s",
            "--rate",
            "200",
            "--keys",
            "20",
            "--check",
        ],
    );
    let outcome = app::run(&settings).expect("the run completes");
    // 200 ops/s for 1 s: the schedule, not the server's speed, sets the count.
    assert!(
        (150..=210).contains(&outcome.figures.ops),
        "{}",
        outcome.figures.ops
    );
    let check = outcome.check.as_ref().expect("--check was given");
    assert_eq!(check.valid, checker::Validity::Valid, "{}", check.verdict);
}

/// A pure throughput run: no history by default, the summary as JSON on stdout (and nothing
/// else there), the per-operation breakdown and the log-scale histogram in it, its own
/// report.html.
#[test]
fn embedded_json_summary_on_stdout_without_history() {
    let results = tempfile::tempdir().expect("temporary directory");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quiet", "--json", "--workload", "mixed", "--clients", "4"])
        .args(["--duration", "1s", "--seed", "3", "--results"])
        .arg(results.path())
        .output()
        .expect("bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("history off"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    assert_eq!(summary["kind"], "bench");
    let figures = &summary["figures"];
    assert!(figures["ops"].as_u64().expect("ops") > 0);
    assert!(figures["latency_stddev_us"].as_f64().is_some());
    for op in ["read", "write"] {
        assert!(
            figures["per_op"][op]["ops"].as_u64().expect(op) > 0,
            "{figures}"
        );
    }
    let buckets = figures["histogram"].as_array().expect("histogram");
    let counted: u64 = buckets.iter().filter_map(|b| b["count"].as_u64()).sum();
    assert_eq!(counted, figures["ops"].as_u64().expect("ops"));
    let run_dir = Path::new(summary["run_dir"].as_str().expect("run_dir"));
    assert!(!run_dir.join("history.jsonl").exists());
    let report = std::fs::read_to_string(run_dir.join("report.html")).expect("report.html");
    assert!(report.contains("<svg") && report.contains("Latency histogram"));
    assert!(!report.contains("Campaign") && !report.contains("history.jsonl"));
}

/// The cluster dies after the timed phase: the final reads give up once none has been answered
/// for the final-reads timeout (before, each key's attempts ran out in turn: a 6 s run was still
/// reading after 90 s), every key left unread counts as failed, and the history stays complete.
#[test]
fn final_reads_give_up_on_a_dead_cluster_within_their_timeout() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bench::history::Recorder;
    use bench::target::Target;
    use bench::workload::{Workload, WorkloadConfig, WorkloadKind};

    let keys = 200;
    let timeout = Duration::from_secs(2);
    let cluster = bench::cluster::EmbeddedCluster::start(false).expect("cluster starts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = runtime
        .block_on(kvclient::Client::connect(cluster.client_config()))
        .expect("client connects");
    runtime
        .block_on(bench::cluster::wait_for_leader(&client))
        .expect("a leader");
    let workload = Arc::new(Workload::new(WorkloadConfig {
        kind: WorkloadKind::Put,
        keys,
        value_size: 16,
        read_mode: kvclient::ReadMode::Linearizable,
    }));
    let load = bench::LoadConfig {
        clients: 8,
        duration: Duration::from_millis(500),
        rate: None,
        seed: 7,
        final_reads_timeout: timeout,
    };
    let recorder = Recorder::in_memory();
    let progress = Arc::new(bench::Progress::default());
    let timed = runtime.block_on(bench::run_timed(
        Target::Kv(&client),
        workload.clone(),
        &load,
        recorder.clone(),
        progress,
    ));
    assert!(timed.stats.answered > 0, "the load ran");
    cluster.shutdown().expect("cluster stops");
    let started = Instant::now();
    let report = runtime.block_on(timed.final_reads(Target::Kv(&client), &workload, &recorder));
    let took = started.elapsed();
    // The timeout, plus one request timeout for reads already waiting on a dead node.
    assert!(took < Duration::from_secs(10), "final reads took {took:?}");
    assert!(report.final_reads_gave_up);
    assert_eq!(report.final_reads_ok, 0);
    assert_eq!(report.final_reads_failed, keys);
    let shortfall = report.final_reads_shortfall().expect("a shortfall");
    assert!(
        shortfall.starts_with("200 of 200 final reads failed"),
        "{shortfall}"
    );
    recorder.finish().expect("every invocation completed");
}
