//! The binary: verdict line, checker.json, HTML page, exit codes 0/1/2/3.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_checker");

const VALID: &str = concat!(
    r#"{"index":0,"time":0,"process":1,"type":"invoke","f":"write","key":"k","value":1}"#,
    "\n",
    r#"{"index":1,"time":10,"process":1,"type":"ok","f":"write","key":"k","value":1}"#,
    "\n",
    r#"{"index":2,"time":20,"process":2,"type":"invoke","f":"read","key":"k","value":null}"#,
    "\n",
    r#"{"index":3,"time":30,"process":2,"type":"ok","f":"read","key":"k","value":1}"#,
    "\n",
);

fn run(directory: &Path, history: &str, workload: &str, extra: &[&str]) -> Output {
    let path = directory.join("history.jsonl");
    std::fs::write(&path, history).unwrap();
    let out = directory.join("checker.json");
    Command::new(BINARY)
        .args([
            "check",
            path.to_str().unwrap(),
            "--workload",
            workload,
            "--out",
        ])
        .arg(&out)
        .args(extra)
        .output()
        .unwrap()
}

fn report(directory: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(directory.join("checker.json")).unwrap()).unwrap()
}

#[test]
fn valid_history_exits_0_and_writes_checker_json() {
    let directory = tempfile::tempdir().unwrap();
    let output = run(directory.path(), VALID, "kv", &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("valid"));
    assert_eq!(
        report(directory.path())["valid"],
        serde_json::Value::Bool(true)
    );
    assert!(!directory.path().join("checker.html").exists());
}

#[test]
fn violation_exits_1_with_json_and_a_self_contained_html_page() {
    let directory = tempfile::tempdir().unwrap();
    let invalid = VALID.replace(
        r#""ok","f":"read","key":"k","value":1"#,
        r#""ok","f":"read","key":"k","value":7"#,
    );
    let output = run(directory.path(), &invalid, "kv", &[]);
    assert_eq!(output.status.code(), Some(1));
    let json = report(directory.path());
    assert_eq!(json["valid"], serde_json::Value::Bool(false));
    assert_eq!(json["anomalies"][0]["type"], "nonlinearizable");
    assert!(json["anomalies"][0]["ops"]
        .as_array()
        .is_some_and(|ops| !ops.is_empty()));
    let page = std::fs::read_to_string(directory.path().join("checker.html")).unwrap();
    assert!(page.contains("<svg") && page.contains("STUCK"));
    for fetch in ["<script", "<link", "src=", "@import", "url(http"] {
        assert!(!page.contains(fetch), "page must not load {fetch}");
    }
}

#[test]
fn html_path_can_be_chosen() {
    let directory = tempfile::tempdir().unwrap();
    let page = directory.path().join("page.html");
    let history = r#"{"process":1,"type":"invoke","f":"txn","value":[["r","x",null]]}
{"process":1,"type":"ok","f":"txn","value":[["r","x",[5]]]}
"#;
    let output = run(
        directory.path(),
        history,
        "list-append",
        &["--html", page.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(page.is_file());
    assert_eq!(report(directory.path())["anomaly_types"][0], "garbage");
}

#[test]
fn time_limit_exits_2_unknown() {
    let directory = tempfile::tempdir().unwrap();
    let output = run(directory.path(), VALID, "kv", &["--time-limit", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(report(directory.path())["valid"], "unknown");
}

fn assert_bad_input(history: &str, line: usize) {
    let directory = tempfile::tempdir().unwrap();
    let output = run(directory.path(), history, "kv", &[]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("line {line}:")), "{stderr}");
}

#[test]
fn truncated_line_exits_3_with_its_line() {
    let truncated = &VALID[..VALID.len() - 20];
    assert_bad_input(truncated, 4);
}

#[test]
fn unknown_type_exits_3_with_its_line() {
    assert_bad_input(
        &VALID.replace(r#""type":"ok","f":"read""#, r#""type":"done","f":"read""#),
        4,
    );
}

#[test]
fn completion_without_invoke_exits_3_with_its_line() {
    let orphan = VALID.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_bad_input(&orphan, 1);
}

#[test]
fn usage_errors_exit_3_not_2() {
    let output = Command::new(BINARY)
        .args(["check", "x.jsonl", "--workload", "bank"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
}

fn run_file(directory: &Path, name: &str, text: &str, extra: &[&str]) -> Output {
    let path = directory.join(name);
    std::fs::write(&path, text).unwrap();
    Command::new(BINARY)
        .args(["check", path.to_str().unwrap(), "--out"])
        .arg(directory.join("checker.json"))
        .args(extra)
        .output()
        .unwrap()
}

/// Each input a lenient reader would have passed as "valid (0 calls)": exit 3, naming the line.
#[test]
fn unreadable_histories_exit_3_naming_the_line_never_valid() {
    let cases: [(&str, &str, &str); 6] = [
        ("garbage.txt", "garbage\n", "line 1:"),
        ("empty.jsonl", "", "line 1: the history is empty"),
        ("blank.edn", "; nothing\n\n", "line 2: the history is empty"),
        (
            "wrapped.json",
            "[{\"process\":0,\"type\":\"invoke\",\"f\":\"read\"}]\n",
            "line 1: a JSON array",
        ),
        (
            "record.edn",
            "{:process 0, :type :invoke, :f :read}\n#jepsen.history.Foo{:process 0}\n",
            "line 2: unknown record #jepsen.history.Foo",
        ),
        (
            "op.edn",
            "{:process 0, :type :invoke, :f :read}\n{:process 0, :type :ok, :f :zap}\n",
            "line 2: unknown :f :zap",
        ),
    ];
    for (name, text, expected) in cases {
        let directory = tempfile::tempdir().unwrap();
        let output = run_file(directory.path(), name, text, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
}

#[test]
fn header_names_the_workload_and_a_contradicting_flag_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let history = format!("{{\"workload\":\"register\",\"version\":1}}\n{VALID}");
    let output = run_file(directory.path(), "h.jsonl", &history, &[]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("workload register (history header)"),
        "{stdout}"
    );
    let output = run_file(directory.path(), "h.jsonl", &history, &["--workload", "kv"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("contradicts the history's header"),
        "{stderr}"
    );
}

#[test]
fn nemesis_ops_are_skipped_and_counted_and_edn_results_on_request() {
    let directory = tempfile::tempdir().unwrap();
    let history = "{:process :nemesis, :type :info, :f :kill, :value nil}\n\
                   {:process 0, :type :invoke, :f :write, :value 1}\n\
                   {:process 0, :type :ok, :f :write, :value 1}\n\
                   {:process 1, :type :invoke, :f :read, :value nil}\n\
                   {:process 1, :type :ok, :f :read, :value 2}\n";
    let edn = directory.path().join("results.edn");
    let output = run_file(
        directory.path(),
        "history.edn",
        history,
        &["--edn", edn.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("1 nemesis events skipped"), "{stdout}");
    assert_eq!(report(directory.path())["nemesis_events"], 1);
    let results = std::fs::read_to_string(&edn).unwrap();
    assert!(results.starts_with("{:valid? false,"), "{results}");
    assert!(
        results.contains(":anomaly-types [:nonlinearizable]"),
        "{results}"
    );
    let page = std::fs::read_to_string(directory.path().join("checker.html")).unwrap();
    assert!(
        !page.contains("Ok<") && !page.contains(">Ok"),
        "no Rust Debug names"
    );
}
