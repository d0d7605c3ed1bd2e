//! `--target etcd` and `bench compare` against a real etcd (Debian's etcd-server, on
//! loopback). Built only with `--features etcd`; `.ci/run` installs etcd and runs these.
#![cfg(feature = "etcd")]

use std::path::Path;
use std::process::Command;

use bench::app;
use bench::args::{self, Args};
use bench::compare::EtcdCluster;
use clap::Parser;

#[test]
fn etcd_register_history_is_checked_valid() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let etcd = EtcdCluster::start(Path::new("etcd"), dir.path()).expect("etcd starts");
    let results = dir.path().join("results");
    let endpoints = etcd.endpoints().join(",");
    let args = Args::try_parse_from([
        "bench",
        "--quiet",
        "--target",
        "etcd",
        "--endpoints",
        &endpoints,
        "--workload",
        "register",
        "--clients",
        "8",
        "--duration",
        "2s",
        "--seed",
        "3",
        "--results",
        results.to_str().expect("UTF-8 path"),
    ])
    .expect("valid arguments");
    let settings = args::settings(args, 0).expect("valid settings");
    let outcome = app::run(&settings).expect("the run completes");
    let check = outcome.check.as_ref().expect("register runs are checked");
    // Reads, writes and cas' (etcd transactions) mapped both ways: a wrong mapping of a cas'
    // outcome or of an absent key makes the history nonlinearizable.
    assert_eq!(check.valid, checker::Validity::Valid, "{}", check.verdict);
    let per_op = &outcome.figures.per_op;
    for f in ["read", "write", "cas"] {
        assert!(
            per_op.get(f).is_some_and(|op| op.ops > 0),
            "no {f}: {per_op:?}"
        );
    }
    assert_eq!(outcome.final_reads_shortfall, None);
}

#[test]
fn compare_prints_both_sides_and_stops_etcd() {
    let results = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["compare", "--rounds", "1", "--duration", "1s"])
        .args(["--cases", "put,get-stale", "--clients", "8", "--results"])
        .arg(results.path())
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for needle in [
        "put        kv ",
        "put        etcd ",
        "get-stale  kv/etcd",
        "floor of one put",
        "disk tail: 3 writers",
        "a put on this disk alone (synced by 2 of 3",
        "machine costs: an append + fdatasync takes",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    let runs_dir = results.path().join("compare");
    let run = std::fs::read_dir(&runs_dir)
        .expect("compare directory")
        .next()
        .expect("one compare run")
        .expect("entry")
        .path();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("compare.json")).expect("compare.json"))
            .expect("JSON");
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4, "{json}");
    assert!(
        runs.iter().all(|r| r["ops_per_s"].as_f64() > Some(0.0)),
        "{json}"
    );
    assert!(
        json["floor"]["fdatasync_p50_us"].as_u64() > Some(0),
        "{json}"
    );
    let p99 = json["floor"]["fdatasync_concurrent_p99_us"].as_u64();
    let p999 = json["floor"]["fdatasync_concurrent_p999_us"].as_u64();
    assert!(p99 > Some(0) && p999 >= p99, "{json}");
    let floor = &json["floor"];
    let commit: Vec<Option<u64>> = ["p50", "p99", "p999"]
        .iter()
        .map(|q| floor[format!("disk_commit_{q}_us")].as_u64())
        .collect();
    assert!(
        commit[0] > Some(0) && commit[1] >= commit[0] && commit[2] >= commit[1],
        "{json}"
    );
    for cost in ["fdatasync_cpu_us", "wakeup_message_cpu_us"] {
        assert!(floor[cost].as_f64() > Some(0.0), "{cost}: {json}");
    }
    let probes_left: Vec<_> = std::fs::read_dir(&run)
        .expect("run directory")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().contains("probe"))
        .collect();
    assert!(probes_left.is_empty(), "probe files left: {probes_left:?}");
    for pid in json["etcd_pids"].as_array().expect("etcd pids") {
        let pid = pid.as_u64().expect("pid");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd member {pid} is still running"
        );
    }
    assert!(run.join("etcd-m1.log").is_file());
}
