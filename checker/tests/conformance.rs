//! The Porcupine corpus: every one of its 108 labelled histories gets its expected verdict.
//!
//! The corpus is not part of the repository. `KV_CONFORMANCE_DIR` names the `conformance`
//! directory that holds it (`$KV_CONFORMANCE_DIR/porcupine/verdicts.tsv`); `.ci/run` sets it when
//! `shared/conformance` sits beside the checkout. Unset, these tests say they were skipped and
//! pass (a fresh clone has nothing beside it); set to a directory without the corpus, they fail.
//! The corpus of our own, which always runs, is `tests/corpus.rs`.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use checker::history::{self, Format};
use checker::{check, History, Model, Options, Validity, Workload};

/// Names the `conformance` directory; the Porcupine corpus is its `porcupine` subdirectory.
const CONFORMANCE_DIR_VARIABLE: &str = "KV_CONFORMANCE_DIR";
const LABELLED_HISTORIES: usize = 108;

/// The corpus root, or `None` (after saying so) when the variable is unset. Panics when the
/// variable is set but the corpus is not there: a CI that meant to run it must not pass.
fn corpus(test: &str) -> Option<PathBuf> {
    let Some(directory) = std::env::var_os(CONFORMANCE_DIR_VARIABLE) else {
        eprintln!(
            "SKIPPED {test}: {CONFORMANCE_DIR_VARIABLE} is unset (set it to the directory \
             holding porcupine/verdicts.tsv to run the Porcupine corpus)"
        );
        return None;
    };
    let path = PathBuf::from(directory).join("porcupine");
    assert!(
        path.join("verdicts.tsv").is_file(),
        "{CONFORMANCE_DIR_VARIABLE} is set, but the Porcupine corpus is not there: expected {}",
        path.join("verdicts.tsv").display()
    );
    Some(path)
}

/// Reads a corpus file with the corpus' own semantics (its README: Porcupine's models).
fn read(path: &Path) -> History {
    let mut history = history::read(path, Format::Auto).unwrap();
    history.set_model(Model::Porcupine);
    history
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
    let Some(root) = corpus("porcupine_corpus_gets_every_expected_verdict") else {
        return;
    };
    let cases = labelled(&root);
    assert_eq!(cases.len(), LABELLED_HISTORIES);
    let mut mismatches = Vec::new();
    for (file, expected) in &cases {
        let history = read(&root.join(file));
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
    let Some(root) = corpus("corpus_violations_name_the_stuck_operation") else {
        return;
    };
    let history = read(&root.join("test_data/jepsen/etcd_000.log"));
    let report = check(&history, Workload::Register, &Options::default()).unwrap();
    let anomaly = &report.anomalies[0];
    assert_eq!(anomaly.kind, "nonlinearizable");
    let failure = anomaly.linearization.as_ref().unwrap();
    assert!(failure.longest_length > 0);
    assert!(anomaly.ops.iter().any(|op| op.call == failure.stuck));
    let kv = read(&root.join("test_data/kv/c10-bad.txt"));
    let report = check(&kv, Workload::Kv, &Options::default()).unwrap();
    assert!(
        report.anomalies[0].key.is_some(),
        "kv violations name their key"
    );
}

#[test]
fn the_untested_empty_log_is_bad_input_naming_its_line() {
    let Some(root) = corpus("the_untested_empty_log_is_bad_input_naming_its_line") else {
        return;
    };
    let path = root.join("test_data/jepsen/etcd_095.log");
    let error = history::read(&path, Format::Auto).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("line 1: the history is empty"),
        "{error}"
    );
}
