//! Real kvnode clusters (the `kvnode` binary next to the test binary, built by
//! `cargo test --workspace`): leader kill on the local backend, leader isolation on netns.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use nemesis::cluster::Cluster;
use nemesis::metrics::Role;
use nemesis::spec::{self, ClusterSpec, NetnsLayout};
use nemesis::{BackendKind, Fault, Nemesis, PartitionKind, Target};

/// Elections take about one election timeout (1 s here); several rounds may split votes.
const LEADER_WAIT: Duration = Duration::from_secs(20);

fn spec_for(backend: BackendKind, dir: &Path, base_port: u16) -> ClusterSpec {
    let binary = spec::default_node_binary();
    assert!(
        binary.is_file(),
        "{} missing: build it with `cargo build -p kvnode` (cargo test --workspace does)",
        binary.display()
    );
    let mut spec = ClusterSpec::new(backend, 3, &dir.join("cluster"));
    spec.state_path = dir.join("state.json");
    spec.base_port = base_port;
    spec
}

/// Waits until `id` answers as a follower at `term_min` or later (a deposed or restarted node
/// has caught up with the new leader).
fn wait_follower(cluster: &Cluster, id: u64, term_min: u64) {
    let start = Instant::now();
    loop {
        let status = cluster.status();
        let node = status.iter().find(|s| s.id == id).unwrap();
        if node
            .raft
            .is_some_and(|r| r.role == Role::Follower && r.term >= term_min)
        {
            return;
        }
        assert!(
            start.elapsed() < LEADER_WAIT,
            "n{id} not a follower at term >= {term_min}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn local_cluster_kill_leader_elects_a_new_leader_and_the_old_one_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_for(BackendKind::Local, dir.path(), 56101);
    let cluster = Cluster::start(&spec).unwrap();
    let (leader, term) = cluster.wait_for_stable_leader(LEADER_WAIT).unwrap();
    let pids: Vec<u32> = (1..=3)
        .map(|id| cluster.running_pid(id).unwrap().unwrap())
        .collect();

    let mut nemesis = Nemesis::new(cluster, 1);
    let fault = Fault::Kill {
        target: Target::Leader,
        restart_after_ms: 0,
    };
    let active = nemesis.begin(&fault).unwrap();
    assert_eq!(active.record.targets, vec![leader]);
    let (new_leader, new_term) = nemesis
        .cluster()
        .wait_for_leader(LEADER_WAIT, &[leader], term + 1)
        .unwrap();
    assert_ne!(new_leader, leader);
    assert!(new_term > term, "term {new_term} after {term}");
    let record = nemesis.end(active).unwrap();
    assert!(record.end_unix_ms.is_some());
    wait_follower(nemesis.cluster(), leader, new_term);
    let (_, stable_term) = nemesis
        .cluster()
        .wait_for_stable_leader(LEADER_WAIT)
        .unwrap();
    assert!(stable_term >= new_term);

    let state_path = spec.state_path.clone();
    drop(nemesis);
    assert!(!state_path.exists(), "cleanup removes the state file");
    for pid in pids {
        assert!(
            !nemesis::process::is_alive(pid),
            "pid {pid} survived cleanup"
        );
    }
}

#[test]
fn netns_cluster_isolated_leader_is_replaced_on_the_majority_side_then_heals() {
    if !nemesis::netns::is_root() {
        println!("SKIPPED netns cluster test: needs root for network namespaces (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec_for(BackendKind::Netns, dir.path(), 50051);
    spec.netns = NetnsLayout {
        prefix: "ktk".to_string(),
        subnet: [10, 77, 210],
    };
    let cluster = Cluster::start(&spec).unwrap();
    let (leader, term) = cluster.wait_for_stable_leader(LEADER_WAIT).unwrap();

    let mut nemesis = Nemesis::new(cluster, 2);
    let fault = Fault::Partition {
        kind: PartitionKind::IsolateLeader,
        duration_ms: 0,
    };
    let active = nemesis.begin(&fault).unwrap();
    let grudge = active.record.grudge.clone().unwrap();
    assert_eq!(grudge[&leader].len(), 2, "{grudge:?}");
    let (new_leader, new_term) = nemesis
        .cluster()
        .wait_for_leader(LEADER_WAIT, &[leader], term + 1)
        .unwrap();
    assert_ne!(new_leader, leader);
    assert!(new_term > term);

    nemesis.end(active).unwrap();
    wait_follower(nemesis.cluster(), leader, new_term);
    let rules = nemesis.cluster().network().unwrap().rules(leader).unwrap();
    assert!(!rules.contains("DROP"), "{rules}");

    drop(nemesis);
    let namespaces = nemesis::netns::list_namespaces().unwrap();
    assert!(
        !namespaces.iter().any(|n| n.starts_with("ktk-")),
        "{namespaces:?}"
    );
    let links = nemesis::netns::list_links().unwrap();
    assert!(!links.iter().any(|l| l.starts_with("ktk")), "{links:?}");
}
