//! `bench campaign --backend ssh` against three sshd "hosts" in network namespaces
//! (`nemesis::testbed`; root only, CI runs as root): a 20 s register campaign with kill and
//! partition must be valid, hold every host's log, name the hosts in its report, and leave no
//! kvnode process, iptables rule or file on any host. An ssh failure (wrong key, host down)
//! must fail the campaign early, naming the host. One test: the hosts share names and ports.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nemesis::spec::NetnsLayout;
use nemesis::testbed::{host_line, Testbed};

/// An ssh failure must end the campaign within this (connect timeout plus setup).
const EARLY_FAILURE_MAX: Duration = Duration::from_secs(15);

/// Runs a campaign; returns its output and the control-node work dir it used
/// (`<tmp>/kvcampaign-<pid>`, bench/src/campaign/mod.rs).
fn campaign(hosts: &Path, results: &Path, extra: &[&str]) -> (Output, PathBuf) {
    let child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["campaign", "--backend", "ssh", "--hosts"])
        .arg(hosts)
        .arg("--results")
        .arg(results)
        .args(["--clients", "8", "--quiet"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let work_dir = std::env::temp_dir().join(format!("kvcampaign-{}", child.id()));
    (child.wait_with_output().unwrap(), work_dir)
}

fn assert_hosts_clean(testbed: &Testbed) {
    let left = testbed.leftovers();
    assert!(left.is_empty(), "{}", left.join("\n"));
}

#[test]
fn ssh_campaign_with_kill_and_partition_is_valid_and_leaves_nothing_on_the_hosts() {
    if !nemesis::netns::is_root() {
        println!("SKIPPED: the sshd testbed needs root (network namespaces); CI runs as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = NetnsLayout {
        prefix: "kbssh".to_string(),
        subnet: [10, 77, 214],
    };
    let testbed = Testbed::start(&layout, 3, &dir.path().join("hosts")).unwrap();
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(&hosts, testbed.hosts_file()).unwrap();
    let results = dir.path().join("results");

    ssh_failures_end_the_campaign_early(&testbed, dir.path(), &results);

    let args = ["--workload", "register", "--faults", "kill,partition"];
    let shape = ["--time-limit", "20s", "--interval", "3s", "--seed", "23"];
    let (output, work_dir) = campaign(&hosts, &results, &[&args[..], &shape[..]].concat());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_hosts_clean(&testbed);
    assert!(!work_dir.exists(), "{} left", work_dir.display());

    let run = std::fs::read_dir(results.join("register-kill+partition"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for id in 1..=3 {
        let log = run.join(format!("logs/n{id}.log"));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("kvnode"),
            "{} holds no node log",
            log.display()
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["valid"], serde_json::Value::Bool(true), "{summary}");
    let kinds: Vec<&str> = (summary["faults"].as_array().unwrap().iter())
        .filter_map(|f| f["fault"].as_str())
        .collect();
    assert!(
        kinds.contains(&"kill") && kinds.contains(&"partition"),
        "{kinds:?}"
    );
    assert_eq!(summary["hosts"]["2"], testbed.hosts[1].name());
    let report = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(
        report.contains("n2@10.77.214.2") && report.contains("n3: root@10.77.214.3:22"),
        "the report names nodes by host"
    );
    let index = std::fs::read_to_string(results.join("index.html")).unwrap();
    assert!(
        index.contains(&testbed.hosts[0].name()),
        "the index names the hosts"
    );
}

/// A wrong key and a host that does not answer: the campaign fails before any load, its
/// message naming the host, and nothing is left on the reachable hosts.
fn ssh_failures_end_the_campaign_early(testbed: &Testbed, dir: &Path, results: &Path) {
    let wrong_key = dir.join("wrong_key");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&wrong_key)
        .status()
        .unwrap();
    assert!(status.success());
    let mut wrong = testbed.hosts[1].clone();
    wrong.key = Some(wrong_key);
    let mut down = testbed.hosts[2].clone();
    down.address = testbed.network().layout.node_ip(9).into();
    for (bad, needle) in [(wrong, "Permission denied"), (down, "ssh login failed")] {
        let lines = [
            host_line(&testbed.hosts[0]),
            host_line(&bad),
            host_line(&testbed.hosts[2]),
        ];
        let hosts = dir.join("bad-hosts.txt");
        std::fs::write(&hosts, lines.join("\n")).unwrap();
        let started = Instant::now();
        let args = ["--faults", "kill", "--time-limit", "5s", "--seed", "1"];
        let (output, work_dir) = campaign(&hosts, results, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            started.elapsed() < EARLY_FAILURE_MAX,
            "{:?}",
            started.elapsed()
        );
        assert!(
            stderr.contains(&bad.name()) && stderr.contains(needle),
            "{stderr}"
        );
        assert_hosts_clean(testbed);
        // Nor on the control node: the config and certificates made for the run are gone.
        assert!(!work_dir.exists(), "{} left", work_dir.display());
    }
}
