//! Process control on real long-running processes (`sleep`), through the same state file and
//! `Cluster::attach` path the `nemesis` binary uses for a cluster another process started.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nemesis::cluster::{self, Cluster, ClusterState, NodeRecord};
use nemesis::process::{self, NodeCommand};
use nemesis::{BackendKind, Fault, Nemesis, Target};

/// Kills every recorded process even when an assertion fails.
struct StateGuard<'a>(&'a Path);

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        if let Err(error) = cluster::cleanup(self.0, "ktnone") {
            eprintln!("cleanup failed: {error}");
        }
    }
}

/// Three `sleep` "nodes" started like real ones and recorded in a state file.
fn sleeping_cluster(dir: &Path) -> std::path::PathBuf {
    let state_path = dir.join("state.json");
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let command = NodeCommand {
            // A distinct argument per node, so each pid's command line identifies its node.
            argv: vec!["sleep".to_string(), format!("{}", 300 + id)],
            cwd: dir.to_path_buf(),
            namespace: None,
            log_path: dir.join(format!("n{id}.log")),
        };
        let child = process::spawn(&command).unwrap();
        let address: SocketAddr = format!("127.0.0.1:{}", 1 + id).parse().unwrap();
        nodes.push(NodeRecord {
            id,
            pid: Some(child.id()),
            command,
            address,
            metrics_address: address,
            pid_file: None,
            remote: None,
        });
        // Dropping a Child neither kills nor waits: the process runs on, like a detached node.
        drop(child);
    }
    let state = ClusterState {
        backend: BackendKind::Local,
        config_path: dir.join("cluster.toml"),
        netns: None,
        nodes,
        refused: std::collections::BTreeMap::new(),
        repaired: std::collections::BTreeMap::new(),
    };
    state.save(&state_path).unwrap();
    state_path
}

#[test]
fn kill_restart_pause_resume_through_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let state_path = sleeping_cluster(dir.path());
    let _guard = StateGuard(&state_path);
    let mut cluster = Cluster::attach(&state_path).unwrap();
    let old_pid = cluster.running_pid(2).unwrap().unwrap();

    assert!(cluster.kill(2).unwrap());
    assert!(!process::is_alive(old_pid));
    assert_eq!(cluster.running_pid(2).unwrap(), None);
    assert!(
        !cluster.kill(2).unwrap(),
        "killing a dead node reports false"
    );
    assert_eq!(ClusterState::load(&state_path).unwrap().nodes[1].pid, None);

    assert!(cluster.restart(2).unwrap());
    let new_pid = cluster.running_pid(2).unwrap().unwrap();
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        ClusterState::load(&state_path).unwrap().nodes[1].pid,
        Some(new_pid)
    );
    assert!(
        !cluster.restart(2).unwrap(),
        "restarting a running node does nothing"
    );

    cluster.pause(1).unwrap();
    wait_until(|| process::is_stopped(cluster.running_pid(1).unwrap().unwrap()));
    let status = cluster.status();
    assert!(status[0].paused && status[0].raft.is_none());
    cluster.resume(1).unwrap();
    wait_until(|| !process::is_stopped(cluster.running_pid(1).unwrap().unwrap()));
}

#[test]
fn nemesis_kill_all_records_targets_and_restarts_them() {
    let dir = tempfile::tempdir().unwrap();
    let state_path = sleeping_cluster(dir.path());
    let _guard = StateGuard(&state_path);
    let cluster = Cluster::attach(&state_path).unwrap();
    let before: Vec<u32> = (1..=3)
        .map(|id| cluster.running_pid(id).unwrap().unwrap())
        .collect();
    let mut nemesis = Nemesis::new(cluster, 7);
    let fault = Fault::Kill {
        target: Target::All,
        restart_after_ms: 50,
    };
    let active = nemesis.begin(&fault).unwrap();
    assert_eq!(active.record.targets, vec![1, 2, 3]);
    assert!(before.iter().all(|pid| !process::is_alive(*pid)));
    let record = nemesis.end(active).unwrap();
    assert_eq!(record.process, "nemesis");
    assert_eq!(record.fault, "kill");
    assert!(record.end_unix_ms.unwrap() >= record.start_unix_ms);
    for id in 1..=3 {
        assert!(nemesis.cluster().running_pid(id).unwrap().is_some());
    }
    // A leader-targeted fault without reachable metrics fails clearly instead of guessing.
    let leader_fault = Fault::Pause {
        target: Target::Leader,
        duration_ms: 10,
    };
    assert!(matches!(
        nemesis.begin(&leader_fault),
        Err(nemesis::FaultError::NoLeader)
    ));
}

#[test]
fn cleanup_kills_recorded_processes_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let state_path = sleeping_cluster(dir.path());
    let pids: Vec<u32> = ClusterState::load(&state_path)
        .unwrap()
        .nodes
        .iter()
        .filter_map(|n| n.pid)
        .collect();
    let _unrecorded = KillOnDrop(pids[2]);
    // A recycled pid running something else must survive: record our own pid for node 3.
    let mut state = ClusterState::load(&state_path).unwrap();
    state.nodes[2].pid = Some(std::process::id());
    state.save(&state_path).unwrap();

    let removed = cluster::cleanup(&state_path, "ktnone").unwrap();
    assert!(
        removed.iter().any(|line| line.contains("killed n1")),
        "{removed:?}"
    );
    assert!(
        !removed.iter().any(|line| line.contains("killed n3")),
        "{removed:?}"
    );
    assert!(!process::is_alive(pids[0]) && !process::is_alive(pids[1]));
    assert!(!state_path.exists());
    assert!(cluster::cleanup(&state_path, "ktnone").unwrap().is_empty());
}

/// SIGKILLs a pid on drop (a process the state file no longer names).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = process::send_signal(self.0, rustix::process::Signal::KILL);
    }
}

fn wait_until(mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not reached within 2 s");
}
