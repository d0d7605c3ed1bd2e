//! The CI short matrix: `bench campaign` on real kvnode processes with kill, pause and (as
//! root, netns backend) partition faults, ~15 s each, and (as root, FUSE) one whole-cluster
//! power loss (disk-lose-unsynced on all nodes), ~12 s; each must be valid (exit 0) and leave
//! every result file. One test so the campaigns run one after another (shared ports, netns
//! names and the 2-core machine).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

/// Files every campaign directory must hold.
const RUN_FILES: [&str; 8] = [
    "history.jsonl",
    "nemesis.jsonl",
    "metrics.jsonl",
    "checker.json",
    "summary.json",
    "report.html",
    "logs/n1.log",
    "logs/n3.log",
];

/// One campaign's knobs beyond workload and faults.
struct Shape {
    backend: &'static str,
    time_limit: &'static str,
    target: Option<&'static str>,
}

const SHORT: Shape = Shape {
    backend: "local",
    time_limit: "15s",
    target: None,
};

fn campaign(results: &Path, workload: &str, faults: &str, shape: &Shape, seed: u64) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bench"));
    command
        .args(["campaign", "--workload", workload, "--faults", faults])
        .args(["--time-limit", shape.time_limit, "--interval", "2s"])
        .args(["--clients", "8", "--backend", shape.backend, "--quiet"])
        .args(["--seed", &seed.to_string()])
        .arg("--results")
        .arg(results);
    if let Some(target) = shape.target {
        command.args(["--target", target]);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{workload}/{faults}:\n{stdout}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{workload}/{faults} not valid:\n{stdout}\n{stderr}"
    );
    let suffix = shape.target.map_or(String::new(), |t| format!("@{t}"));
    let name = format!("{workload}-{}{suffix}", faults.replace(',', "+"));
    let runs: Vec<_> = std::fs::read_dir(results.join(&name))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    for file in RUN_FILES {
        assert!(
            run.join(file).is_file(),
            "{} missing",
            run.join(file).display()
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["valid"], serde_json::Value::Bool(true));
    assert!(summary["ops"].as_u64().unwrap() > 100, "{summary}");
    assert!(
        summary["faults_injected"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    let history = std::fs::read_to_string(run.join("history.jsonl")).unwrap();
    assert!(
        history.contains(r#""process":"nemesis""#),
        "faults are in the history"
    );
    let report = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("<svg") && !report.contains("<script"));
    // No Rust formatting reaches the reader (`Some(2)`, `[Kill]`, `Local`).
    for debug in ["Some(", "None", "[Kill]", "[Pause]", "Local", "Netns"] {
        assert!(!report.contains(debug), "{debug} in the report");
        assert!(!stderr.contains(debug), "{debug} in the banner: {stderr}");
    }
    assert!(report.contains(faults.split(',').next().unwrap()));
}

#[test]
fn short_matrix_kill_pause_partition_campaigns_are_valid_and_complete() {
    let binary = nemesis::spec::default_node_binary();
    assert!(
        binary.is_file(),
        "{} missing: build it with `cargo build --release -p kvnode`",
        binary.display()
    );
    let results = tempfile::tempdir().unwrap();
    campaign(results.path(), "register", "kill", &SHORT, 11);
    campaign(results.path(), "list-append", "pause", &SHORT, 12);
    if nemesis::netns::is_root() {
        let netns = Shape {
            backend: "netns",
            ..SHORT
        };
        campaign(results.path(), "register", "partition", &netns, 13);
        power_loss(results.path());
    } else {
        println!("SKIPPED partition and disk campaigns: they need root (netns, FUSE)");
    }
    let index = std::fs::read_to_string(results.path().join("index.html")).unwrap();
    assert!(index.contains("register-kill") && index.contains("list-append-pause"));
}

/// Whole-cluster power loss: every node killed and its unsynced writes discarded, at once.
fn power_loss(results: &Path) {
    let disk_binary = nemesis::spec::default_nemesis_binary();
    assert!(
        disk_binary.is_file(),
        "{} missing: build it with `cargo build --release -p nemesis`",
        disk_binary.display()
    );
    let all = Shape {
        backend: "local",
        time_limit: "12s",
        target: Some("all"),
    };
    campaign(results, "register", "disk-lose-unsynced", &all, 14);
    let run = std::fs::read_dir(results.join("register-disk-lose-unsynced@all"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    for fault in summary["faults"].as_array().unwrap() {
        assert_eq!(fault["detail"], "all", "{fault}");
        assert_eq!(fault["targets"].as_array().unwrap().len(), 3, "{fault}");
        let notes = fault["notes"].to_string();
        assert!(notes.contains("unsynced byte"), "{notes}");
    }
    assert_eq!(summary["nodes_refused"], serde_json::json!({}));
    assert_eq!(
        nemesis::fs::control::kvdisk_mounts(),
        Vec::<std::path::PathBuf>::new()
    );
}
