//! The Porcupine corpus (../shared/conformance/porcupine beside the repository): every one of
//! the 108 labelled histories gets its expected verdict.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use checker::history::{self, Format};
use checker::{check, Options, Validity, Workload};

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/porcupine"
);
const LABELLED_HISTORIES: usize = 108;

fn corpus() -> PathBuf {
    let path = PathBuf::from(CORPUS);
    assert!(
        path.join("verdicts.tsv").is_file(),
        "the Porcupine corpus is missing: expected {} (shared/ must sit beside the repository)",
        path.display()
    );
    path
}

fn workload_of(file: &str) -> Workload {
    if file.contains("/kv/") {
        Workload::Kv
    } else {
        Workload::Register
    }
}

fn labelled(root: &Path) -> Vec<(String, Validity)> {
    let table = std::fs::read_to_string(root.join("verdicts.tsv")).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (file, expected) = line.split_once('\t').unwrap();
            let expected = match expected.trim() {
                "linearizable" => Validity::Valid,
                "not-linearizable" => Validity::Invalid,
                "untested" => return None,
                other => panic!("unknown verdict {other:?}"),
            };
            Some((file.to_string(), expected))
        })
        .collect()
}

#[test]
fn porcupine_corpus_gets_every_expected_verdict() {
    let root = corpus();
    let cases = labelled(&root);
    assert_eq!(cases.len(), LABELLED_HISTORIES);
    let mut mismatches = Vec::new();
    for (file, expected) in &cases {
        let history = history::read(&root.join(file), Format::Auto).unwrap();
        let report = check(&history, workload_of(file), &Options::default()).unwrap();
        if report.valid != *expected {
            mismatches.push(format!(
                "{file}: expected {expected:?}, got {:?}",
                report.valid
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} wrong:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn corpus_violations_name_the_stuck_operation_and_the_longest_linearization() {
    let root = corpus();
    let history = history::read(&root.join("test_data/jepsen/etcd_000.log"), Format::Auto).unwrap();
    let report = check(&history, Workload::Register, &Options::default()).unwrap();
    let anomaly = &report.anomalies[0];
    assert_eq!(anomaly.kind, "nonlinearizable");
    let failure = anomaly.linearization.as_ref().unwrap();
    assert!(failure.longest_length > 0);
    assert!(anomaly.ops.iter().any(|op| op.call == failure.stuck));
    let kv = history::read(&root.join("test_data/kv/c10-bad.txt"), Format::Auto).unwrap();
    let report = check(&kv, Workload::Kv, &Options::default()).unwrap();
    assert!(
        report.anomalies[0].key.is_some(),
        "kv violations name their key"
    );
}

#[test]
fn the_untested_empty_log_is_valid() {
    let root = corpus();
    let history = history::read(&root.join("test_data/jepsen/etcd_095.log"), Format::Auto).unwrap();
    let report = check(&history, Workload::Register, &Options::default()).unwrap();
    assert_eq!(report.valid, Validity::Valid);
}
