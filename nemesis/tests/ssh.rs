//! The ssh backend against real sshd processes, one per network namespace
//! (`nemesis::testbed`; root only, CI runs as root): setup over ssh, pause and resume, a
//! partition with iptables on the hosts, kill and restart, a teardown that leaves no process,
//! rule or file on any host, and `nemesis cleanup` after a crash (with and without the state
//! file). One test: the hosts share ports and namespace names. (ssh failures are tested at the
//! campaign level, bench/tests/campaign_ssh.rs.)

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use nemesis::cluster::Cluster;
use nemesis::spec::{self, ClusterSpec, NetnsLayout};
use nemesis::testbed::Testbed;
use nemesis::{BackendKind, Fault, Nemesis, PartitionKind, Target};

const LEADER_WAIT: Duration = Duration::from_secs(20);

fn rules(testbed: &Testbed, id: u64) -> String {
    testbed.rules(id).unwrap()
}

fn assert_hosts_clean(testbed: &Testbed) {
    let left = testbed.leftovers();
    assert!(left.is_empty(), "{}", left.join("\n"));
}

#[test]
fn ssh_cluster_pause_partition_kill_over_ssh_and_teardown_leaves_nothing() {
    if !nemesis::netns::is_root() {
        println!("SKIPPED: the sshd testbed needs root (network namespaces); CI runs as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = NetnsLayout {
        prefix: "ktssh".to_string(),
        subnet: [10, 77, 212],
    };
    let testbed = Testbed::start(&layout, 3, dir.path()).unwrap();

    let mut spec = ClusterSpec::new(BackendKind::Ssh, 3, &dir.path().join("control"));
    spec.hosts = testbed.hosts.clone();
    spec.state_path = dir.path().join("state.json");
    spec.base_port = 56301;
    let cluster = Cluster::start(&spec).unwrap();
    for id in 1..=3 {
        let host_dir = testbed.work_dir(id);
        assert!(host_dir.join("kvnode").is_file() && host_dir.join("certs/ca.pem").is_file());
        assert!(host_dir.join(format!("certs/n{id}.key")).is_file());
        assert!(
            !host_dir.join("certs/ca.key").exists(),
            "the CA key stays home"
        );
    }
    let (leader, _) = cluster.wait_for_stable_leader(LEADER_WAIT).unwrap();
    // The leftover check sees a running cluster (so its "nothing left" later means something).
    let running = testbed.leftovers();
    assert_eq!(running.len(), 6, "{running:?}"); // a work dir and a process on each host
    let mut nemesis = Nemesis::new(cluster, 3);

    let pause = Fault::Pause {
        target: Target::Node(leader),
        duration_ms: 0,
    };
    let active = nemesis.begin(&pause).unwrap();
    let status = nemesis.cluster().status();
    assert!(
        status.iter().any(|s| s.id == leader && s.paused),
        "{status:?}"
    );
    nemesis.end(active).unwrap();

    let (leader, term) = nemesis
        .cluster()
        .wait_for_stable_leader(LEADER_WAIT)
        .unwrap();
    let isolate = Fault::Partition {
        kind: PartitionKind::IsolateLeader,
        duration_ms: 0,
    };
    let active = nemesis.begin(&isolate).unwrap();
    assert!(rules(&testbed, leader).contains("-j DROP"));
    let (new_leader, _) = (nemesis.cluster())
        .wait_for_leader(LEADER_WAIT, &[leader], term + 1)
        .unwrap();
    assert_ne!(new_leader, leader);
    nemesis.end(active).unwrap();
    assert!(!rules(&testbed, leader).contains("DROP"), "healed");

    let kill = Fault::Kill {
        target: Target::Node(new_leader),
        restart_after_ms: 0,
    };
    let active = nemesis.begin(&kill).unwrap();
    assert_eq!(nemesis.cluster().running_pid(new_leader).unwrap(), None);
    nemesis.end(active).unwrap();
    nemesis
        .cluster()
        .wait_for_stable_leader(LEADER_WAIT)
        .unwrap();

    let mut cluster = nemesis.into_cluster();
    cluster.cleanup().unwrap();
    assert_hosts_clean(&testbed);
    for id in 1..=3 {
        let log = spec.node_log(id);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.is_empty(), "{} fetched empty", log.display());
    }
    assert!(!spec.state_path.exists());
    crashed_run_is_cleaned_up(&testbed, &spec);
}

/// A run whose tool died (state file left, nodes running): `nemesis cleanup` removes it all.
fn crashed_run_is_cleaned_up(testbed: &Testbed, spec: &ClusterSpec) {
    let cluster = Cluster::start(spec).unwrap();
    cluster.detach();
    assert!(testbed.runs_from(2));
    let output = std::process::Command::new(spec::default_nemesis_binary())
        .arg("--state")
        .arg(&spec.state_path)
        .args(["cleanup", "--prefix", "ktsshx"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_hosts_clean(testbed);
    // Again, with the state file lost too: the hosts file names where to look.
    let cluster = Cluster::start(spec).unwrap();
    cluster.detach();
    std::fs::remove_file(&spec.state_path).unwrap();
    let hosts_file = spec.work_dir.join("hosts.txt");
    std::fs::write(&hosts_file, testbed.hosts_file()).unwrap();
    let output = std::process::Command::new(spec::default_nemesis_binary())
        .arg("--state")
        .arg(&spec.state_path)
        .args(["cleanup", "--backend", "ssh", "--hosts"])
        .arg(&hosts_file)
        .arg("--dir")
        .arg(&spec.work_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout.matches(": removed ").count(), 3, "{stdout}");
    assert_hosts_clean(testbed);
}
