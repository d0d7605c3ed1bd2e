//! Register/kv semantics: lost writes, info operations, fail cas, time limit.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use checker::history::F;
use checker::{check, Options, Validity, Workload};
use common::Builder;

fn verdict(builder: &Builder) -> (Validity, Vec<String>) {
    let report = check(&builder.build(), Workload::Kv, &Options::default()).unwrap();
    (report.valid, report.anomaly_types)
}

fn overwritten(late_read: &str) -> Builder {
    let mut history = Builder::default();
    history
        .kv(1, 0, 10, "ok", F::Write, "k", "1")
        .kv(2, 20, 30, "ok", F::Write, "k", "2")
        .kv(3, 40, 50, "ok", F::Read, "k", late_read);
    history
}

#[test]
fn acknowledged_write_missing_from_a_later_read_is_a_lost_write() {
    let (valid, found) = verdict(&overwritten("1"));
    assert_eq!(valid, Validity::Invalid);
    assert_eq!(found, ["lost-write", "nonlinearizable"]);
    assert_eq!(verdict(&overwritten("2")), (Validity::Valid, Vec::new()));
}

#[test]
fn read_of_the_initial_value_after_a_write_is_a_lost_write() {
    let (valid, found) = verdict(&overwritten("null"));
    assert_eq!(valid, Validity::Invalid);
    assert!(found.contains(&"lost-write".to_string()), "{found:?}");
}

#[test]
fn info_write_may_take_effect_late_or_never() {
    for late_read in ["1", "null"] {
        let mut history = Builder::default();
        history
            .kv(1, 0, 10, "info", F::Write, "k", "1")
            .kv(2, 20, 30, "ok", F::Read, "k", "null")
            .kv(3, 40, 50, "ok", F::Read, "k", late_read);
        assert_eq!(
            verdict(&history).0,
            Validity::Valid,
            "late read {late_read}"
        );
    }
    let mut reverted = Builder::default();
    reverted
        .kv(1, 0, 10, "info", F::Write, "k", "1")
        .kv(2, 20, 30, "ok", F::Read, "k", "1")
        .kv(3, 40, 50, "ok", F::Read, "k", "null");
    assert_eq!(verdict(&reverted).0, Validity::Invalid);
}

#[test]
fn failed_cas_means_the_compare_did_not_match() {
    let build = |cas_outcome: &str| {
        let mut history = Builder::default();
        history
            .kv(1, 0, 10, "ok", F::Write, "k", "1")
            .kv(2, 20, 30, cas_outcome, F::Cas, "k", "[1,2]")
            .kv(3, 40, 50, "ok", F::Read, "k", "1");
        history
    };
    assert_eq!(verdict(&build("fail")).0, Validity::Invalid);
    assert_eq!(verdict(&build("ok")).0, Validity::Invalid);
    let mut never_ran = build("fail").build().ops().to_vec();
    never_ran[3].error = Some("not leader".to_string());
    let history = checker::History::from_ops(never_ran).unwrap();
    let report = check(&history, Workload::Kv, &Options::default()).unwrap();
    assert_eq!(
        report.valid,
        Validity::Valid,
        "a fail with an error never ran"
    );
}

#[test]
fn keys_are_checked_independently() {
    let mut history = Builder::default();
    history
        .kv(1, 0, 10, "ok", F::Write, "a", "1")
        .kv(2, 0, 10, "ok", F::Write, "b", "1")
        .kv(3, 20, 30, "ok", F::Read, "a", "1")
        .kv(4, 20, 30, "ok", F::Read, "b", "2");
    let report = check(&history.build(), Workload::Kv, &Options::default()).unwrap();
    assert_eq!(report.key_count, 2);
    assert_eq!(report.valid, Validity::Invalid);
    assert_eq!(report.anomalies[0].key, Some(checker::Value::from("b")));
}

#[test]
fn delete_and_append_follow_the_model() {
    let mut history = Builder::default();
    history
        .kv(1, 0, 10, "ok", F::Append, "k", "\"ab\"")
        .kv(1, 20, 30, "ok", F::Append, "k", "\"cd\"")
        .kv(2, 40, 50, "ok", F::Read, "k", "\"abcd\"")
        .kv(2, 60, 70, "ok", F::Delete, "k", "null")
        .kv(3, 80, 90, "ok", F::Read, "k", "null");
    assert_eq!(verdict(&history), (Validity::Valid, Vec::new()));
}

#[test]
fn a_spent_time_limit_gives_unknown() {
    let options = Options {
        time_limit: Some(std::time::Duration::ZERO),
        ..Options::default()
    };
    let report = check(&overwritten("2").build(), Workload::Kv, &options).unwrap();
    assert_eq!(report.valid, Validity::Unknown);
    assert!(report.unknown_reason.unwrap().contains("time limit"));
}

#[test]
fn txn_is_refused_by_the_kv_workload() {
    let mut history = Builder::default();
    history.call(
        1,
        0,
        10,
        "ok",
        F::Txn,
        Some(checker::Value::from("k")),
        common::json("[]"),
        common::json("[]"),
    );
    let error = check(&history.build(), Workload::Kv, &Options::default()).unwrap_err();
    assert!(error.to_string().contains("line 1"), "{error}");
}

/// A reason from outside the history (a bench run's failed final reads, a campaign's cluster
/// that did not recover) makes a valid verdict unknown and leaves an invalid one alone.
#[test]
fn a_reason_from_outside_makes_a_valid_verdict_unknown_and_leaves_an_invalid_one() {
    let check = |builder: &Builder| check(&builder.build(), Workload::Kv, &Options::default());
    let mut valid = check(&overwritten("2")).unwrap();
    valid.not_valid("3 of 8 final reads failed".into());
    assert_eq!(valid.valid, Validity::Unknown);
    assert_eq!(valid.verdict_line(), "unknown: 3 of 8 final reads failed");
    let mut invalid = check(&overwritten("1")).unwrap();
    let before = invalid.verdict_line();
    invalid.not_valid("3 of 8 final reads failed".into());
    assert_eq!(invalid.valid, Validity::Invalid);
    assert_eq!(invalid.verdict_line(), before);
}
