//! Our own labelled corpus (`tests/corpus/`), which needs nothing outside the repository: every
//! history listed in `tests/corpus/verdicts.tsv` gets its expected verdict and anomaly types,
//! and every history file in the directory is listed there.
//!
//! Columns of `verdicts.tsv`: file; workload (`-`: from the history's header, else inferred, as
//! `checker check` does without `--workload`); model (`-`: the format's default); expected
//! (`valid`, `invalid` or `bad-input:LINE`); anomaly types (comma-separated, `-` for none); and
//! the reason the verdict is right. EDN files also explain themselves in `;` comments.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use checker::history::{self, Format};
use checker::{check, resolve_workload, Model, Options, Validity, Workload};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

struct Case {
    file: String,
    workload: Option<Workload>,
    model: Option<Model>,
    expected: String,
    anomalies: Vec<String>,
}

fn workload(name: &str) -> Option<Workload> {
    (name != "-").then(|| Workload::from_name(name).unwrap())
}

fn model(name: &str) -> Option<Model> {
    (name != "-").then(|| <Model as clap::ValueEnum>::from_str(name, false).unwrap())
}

fn cases() -> Vec<Case> {
    let table = std::fs::read_to_string(Path::new(CORPUS).join("verdicts.tsv")).unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 6, "verdicts.tsv: six columns in {line:?}");
            let anomalies = match fields[4] {
                "-" => Vec::new(),
                list => list.split(',').map(str::to_string).collect(),
            };
            Case {
                file: fields[0].to_string(),
                workload: workload(fields[1]),
                model: model(fields[2]),
                expected: fields[3].to_string(),
                anomalies,
            }
        })
        .collect()
}

/// The verdict as the corpus spells it: `valid`, `invalid`, `unknown` or `bad-input:LINE`.
fn verdict(case: &Case) -> (String, Vec<String>) {
    let path = Path::new(CORPUS).join(&case.file);
    let mut history = match history::read(&path, Format::Auto) {
        Ok(history) => history,
        Err(history::HistoryError::Line { line, .. }) => {
            return (format!("bad-input:{line}"), Vec::new())
        }
        Err(error) => panic!("{}: {error}", case.file),
    };
    if let Some(model) = case.model {
        history.set_model(model);
    }
    let checked = resolve_workload(&history, case.workload)
        .and_then(|(workload, _)| check(&history, workload, &Options::default()));
    let report = match checked {
        Ok(report) => report,
        Err(checker::CheckError::BadInput { line, .. }) => {
            return (format!("bad-input:{line}"), Vec::new())
        }
        Err(error) => return (format!("error: {error}"), Vec::new()),
    };
    let name = match report.valid {
        Validity::Valid => "valid",
        Validity::Invalid => "invalid",
        Validity::Unknown => "unknown",
    };
    (name.to_string(), report.anomaly_types)
}

fn history_files(directory: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            history_files(&path, found);
        } else if path.file_name().is_some_and(|name| name != "verdicts.tsv") {
            found.push(path);
        }
    }
}

#[test]
fn every_corpus_history_gets_its_labelled_verdict() {
    let cases = cases();
    assert!(
        cases.len() >= 10,
        "the corpus lists {} histories",
        cases.len()
    );
    let mut wrong = Vec::new();
    for case in &cases {
        let (got, anomalies) = verdict(case);
        if got != case.expected || anomalies != case.anomalies {
            wrong.push(format!(
                "{}: expected {} {:?}, got {got} {anomalies:?}",
                case.file, case.expected, case.anomalies
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_corpus_file_is_labelled() {
    let listed: Vec<PathBuf> = cases()
        .iter()
        .map(|case| Path::new(CORPUS).join(&case.file))
        .collect();
    let mut found = Vec::new();
    history_files(Path::new(CORPUS), &mut found);
    for path in found {
        assert!(
            listed.contains(&path),
            "{} has no line in verdicts.tsv",
            path.display()
        );
    }
}
