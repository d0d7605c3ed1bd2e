//! The `nemesis` binary by hand, as a person uses it: up, status, kill, pause, a refused
//! partition on the local backend, down, cleanup.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

use nemesis::cluster::ClusterState;

/// Removes the cluster even when an assertion fails.
struct Guard<'a>(&'a Path);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let _ = nemesis::cluster::cleanup(self.0, "ktnone");
    }
}

fn nemesis(state: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_nemesis"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "nemesis {args:?} -> {:?}\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn cli_up_status_kill_pause_down_cleanup_on_a_local_cluster() {
    let binary = nemesis::spec::default_node_binary();
    assert!(
        binary.is_file(),
        "{} missing: cargo build -p kvnode",
        binary.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let _guard = Guard(&state);
    let cluster_dir = dir.path().join("cluster");
    let up = nemesis(
        &state,
        &["up", "--nodes", "3", "--base-port", "56201", "--dir"],
    );
    assert!(!up.status.success(), "--dir without a value is refused");
    let up = nemesis(
        &state,
        &[
            "up",
            "--nodes",
            "3",
            "--base-port",
            "56201",
            "--dir",
            cluster_dir.to_str().unwrap(),
        ],
    );
    assert!(up.status.success());
    assert!(stdout(&up).contains("leader: n"), "{}", stdout(&up));

    let status = nemesis(&state, &["status", "--json"]);
    let statuses: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let leaders = statuses
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["raft"]["role"] == "leader")
        .count();
    assert_eq!(leaders, 1, "{statuses}");

    let kill = nemesis(
        &state,
        &["kill", "leader", "--restart-after", "300ms", "--seed", "3"],
    );
    assert!(kill.status.success());
    assert!(stdout(&kill).contains("\"fault\":\"kill\""));
    let pause = nemesis(&state, &["pause", "n1", "--for", "200ms"]);
    assert!(pause.status.success());
    let partition = nemesis(&state, &["partition", "halves"]);
    assert!(!partition.status.success());
    assert!(String::from_utf8_lossy(&partition.stderr).contains("needs the netns backend"));

    let pids: Vec<u32> = ClusterState::load(&state)
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.pid.unwrap())
        .collect();
    let down = nemesis(&state, &["down"]);
    assert!(down.status.success());
    assert!(!state.exists());
    for pid in pids {
        assert!(
            !nemesis::process::is_alive(pid),
            "pid {pid} survived `down`"
        );
    }
    assert!(
        nemesis(&state, &["cleanup"]).status.success(),
        "cleanup twice is fine"
    );
}
