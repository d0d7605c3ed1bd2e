//! The `bench` binary's argument errors: exit code 2 and a message naming the problem.

use std::process::Command;

#[test]
fn bench_argument_errors_exit_2_with_clear_messages() {
    let cases: [(&[&str], &str); 5] = [
        (&["--clients", "0"], "--clients must be in 1..="),
        (&["--duration", "forever"], "not a duration"),
        (
            &["--workload", "scan"],
            "invalid value 'scan' for '--workload",
        ),
        (&["--value-size", "99999999"], "--value-size must be in"),
        (&["--node-pids", "12"], "external --cluster"),
    ];
    for (args, needle) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(args)
            .output()
            .expect("bench runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_missing_cluster_config_fails_with_the_path() {
    let results = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--cluster", "/nonexistent/cluster.toml", "--results"])
        .arg(results.path())
        .output()
        .expect("bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/cluster.toml"), "{stderr}");
}
