//! Each Elle anomaly class: a small history that has it (detected and named) and a near twin
//! that does not (valid).

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use checker::{check, Options, Validity, Workload};
use common::Builder;

fn anomaly_types(builder: &Builder) -> (Validity, Vec<String>) {
    let report = check(&builder.build(), Workload::ListAppend, &Options::default()).unwrap();
    (report.valid, report.anomaly_types)
}

fn assert_only(builder: &Builder, expected: &[&str]) {
    let (valid, found) = anomaly_types(builder);
    assert_eq!(valid, Validity::Invalid, "expected {expected:?}");
    assert_eq!(
        found,
        expected
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>()
    );
}

fn assert_valid(builder: &Builder) {
    let (valid, found) = anomaly_types(builder);
    assert_eq!((valid, found), (Validity::Valid, Vec::new()));
}

/// Two concurrent writers of x and y; a later reader sees y in order `y_order`.
fn g0(y_order: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(1, 0, 10, "ok", r#"[["append","x",1],["append","y",1]]"#)
        .txn(2, 1, 11, "ok", r#"[["append","x",2],["append","y",2]]"#)
        .txn(
            3,
            20,
            30,
            "ok",
            &format!(r#"[["r","x",[1,2]],["r","y",{y_order}]]"#),
        );
    history
}

#[test]
fn g0_write_cycle_is_named_g0() {
    assert_only(&g0("[2,1]"), &["G0"]);
    assert_valid(&g0("[1,2]"));
}

/// Each transaction appends one key and reads the other.
fn g1c(second_reads_x: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(1, 0, 10, "ok", r#"[["append","x",1],["r","y",[1]]]"#)
        .txn(
            2,
            1,
            11,
            "ok",
            &format!(r#"[["append","y",1],["r","x",{second_reads_x}]]"#),
        );
    history
}

#[test]
fn g1c_circular_information_flow_is_named_g1c() {
    assert_only(&g1c("[1]"), &["G1c"]);
    assert_valid(&g1c("[]"));
}

/// Read skew: a reader sees y from a writer but misses its x.
fn g_single(reader_x: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(1, 0, 10, "ok", r#"[["append","x",1],["append","y",1]]"#)
        .txn(
            2,
            1,
            11,
            "ok",
            &format!(r#"[["r","x",{reader_x}],["r","y",[1]]]"#),
        )
        .txn(3, 20, 30, "ok", r#"[["r","x",[1]]]"#);
    history
}

#[test]
fn g_single_read_skew_is_named_g_single() {
    assert_only(&g_single("[]"), &["G-single"]);
    assert_valid(&g_single("[1]"));
}

/// Write skew: each reads the key the other appends, missing that append.
fn g2_item(second_reads_y: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(1, 0, 10, "ok", r#"[["r","x",[]],["append","y",1]]"#)
        .txn(
            2,
            1,
            11,
            "ok",
            &format!(r#"[["r","y",{second_reads_y}],["append","x",1]]"#),
        )
        .txn(3, 20, 30, "ok", r#"[["r","x",[1]],["r","y",[1]]]"#);
    history
}

#[test]
fn g2_item_write_skew_is_named_g2_item() {
    assert_only(&g2_item("[]"), &["G2-item"]);
    assert_valid(&g2_item("[1]"));
}

/// A read that starts after an acknowledged append must see it.
fn stale_read(late_read: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(1, 0, 10, "ok", r#"[["append","x",1]]"#)
        .txn(2, 20, 30, "ok", &format!(r#"[["r","x",{late_read}]]"#))
        .txn(3, 40, 50, "ok", r#"[["r","x",[1]]]"#);
    history
}

#[test]
fn stale_read_after_completion_is_g_single_realtime() {
    assert_only(&stale_read("[]"), &["G-single-realtime"]);
    assert_valid(&stale_read("[1]"));
}

/// A read that completes before an append is invoked cannot see it.
fn future_read(early_read: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(2, 0, 10, "ok", &format!(r#"[["r","x",{early_read}]]"#))
        .txn(1, 20, 30, "ok", r#"[["append","x",1]]"#)
        .txn(3, 40, 50, "ok", r#"[["r","x",[1]]]"#);
    history
}

#[test]
fn read_from_the_future_is_g1c_realtime() {
    assert_only(&future_read("[1]"), &["G1c-realtime"]);
    assert_valid(&future_read("[]"));
}

/// Two appends ordered by real time, observed in the opposite order.
fn realtime_write_order(reader_sees: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(1, 0, 10, "ok", r#"[["append","x",1]]"#)
        .txn(2, 20, 30, "ok", r#"[["append","x",2]]"#)
        .txn(3, 40, 50, "ok", &format!(r#"[["r","x",{reader_sees}]]"#));
    history
}

#[test]
fn appends_out_of_real_time_order_are_g0_realtime() {
    assert_only(&realtime_write_order("[2,1]"), &["G0-realtime"]);
    assert_valid(&realtime_write_order("[1,2]"));
}

fn aborted_read(outcome: &str) -> Builder {
    let mut history = Builder::default();
    history.txn(1, 0, 10, outcome, r#"[["append","x",1]]"#).txn(
        2,
        5,
        15,
        "ok",
        r#"[["r","x",[1]]]"#,
    );
    history
}

#[test]
fn g1a_read_of_a_failed_append() {
    assert_only(&aborted_read("fail"), &["G1a"]);
    assert_valid(&aborted_read("ok"));
    assert_valid(&aborted_read("info"));
}

fn intermediate_read(reader_sees: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(1, 0, 10, "ok", r#"[["append","x",1],["append","x",2]]"#)
        .txn(2, 5, 15, "ok", &format!(r#"[["r","x",{reader_sees}]]"#));
    history
}

#[test]
fn g1b_read_of_an_intermediate_state() {
    assert_only(&intermediate_read("[1]"), &["G1b"]);
    assert_valid(&intermediate_read("[1,2]"));
}

fn internal(second_read: &str) -> Builder {
    let mut history = Builder::default();
    let mops = format!(r#"[["r","x",[]],["append","x",1],["r","x",{second_read}]]"#);
    history.txn(1, 0, 10, "ok", &mops);
    history
}

#[test]
fn internal_inconsistency_within_one_transaction() {
    assert_only(&internal("[]"), &["internal"]);
    assert_valid(&internal("[1]"));
}

fn duplicate(reader_sees: &str) -> Builder {
    let mut history = Builder::default();
    history.txn(1, 0, 10, "ok", r#"[["append","x",1]]"#).txn(
        2,
        20,
        30,
        "ok",
        &format!(r#"[["r","x",{reader_sees}]]"#),
    );
    history
}

#[test]
fn duplicate_elements_in_a_read() {
    assert_only(&duplicate("[1,1]"), &["duplicate-elements"]);
    assert_valid(&duplicate("[1]"));
}

fn lost(final_read: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(1, 0, 10, "ok", r#"[["append","x",1]]"#)
        .txn(2, 0, 12, "ok", r#"[["append","x",2]]"#)
        .txn(3, 20, 30, "ok", &format!(r#"[["r","x",{final_read}]]"#));
    history
}

#[test]
fn lost_append_missing_from_the_final_read() {
    // 1 came after 2 (no read shows it), so the final read precedes its append: an rw edge
    // against real time as well.
    assert_only(&lost("[2]"), &["G-single-realtime", "lost-append"]);
    assert_valid(&lost("[1,2]"));
    assert_valid(&lost("[2,1]"));
}

fn incompatible(second_reader: &str) -> Builder {
    let mut history = Builder::default();
    history
        .txn(1, 0, 10, "ok", r#"[["append","x",1]]"#)
        .txn(2, 0, 10, "ok", r#"[["append","x",2]]"#)
        .txn(3, 20, 30, "ok", r#"[["r","x",[1,2]]]"#)
        .txn(4, 20, 30, "ok", &format!(r#"[["r","x",{second_reader}]]"#));
    history
}

#[test]
fn incompatible_version_orders() {
    assert_only(&incompatible("[2,1]"), &["incompatible-order"]);
    assert_valid(&incompatible("[1,2]"));
}

#[test]
fn garbage_element_nobody_appended() {
    let mut history = Builder::default();
    history.txn(1, 0, 10, "ok", r#"[["append","x",1]]"#).txn(
        2,
        20,
        30,
        "ok",
        r#"[["r","x",[1,9]]]"#,
    );
    assert_only(&history, &["garbage"]);
}

#[test]
fn cycle_report_names_edges_and_operations() {
    let report = check(
        &g_single("[]").build(),
        Workload::ListAppend,
        &Options::default(),
    )
    .unwrap();
    let anomaly = &report.anomalies[0];
    assert_eq!(anomaly.kind, "G-single");
    let mut edges: Vec<&str> = anomaly
        .cycle
        .iter()
        .map(|step| step.edge.as_str())
        .collect();
    edges.sort_unstable();
    assert_eq!(edges, ["rw", "wr"]);
    let mut calls: Vec<usize> = anomaly.ops.iter().map(|op| op.call).collect();
    calls.sort_unstable();
    assert_eq!(calls, [0, 1]);
}

#[test]
fn non_unique_appends_are_bad_input() {
    let mut history = Builder::default();
    history.txn(1, 0, 10, "ok", r#"[["append","x",1]]"#).txn(
        2,
        20,
        30,
        "ok",
        r#"[["append","x",1]]"#,
    );
    let error = check(&history.build(), Workload::ListAppend, &Options::default()).unwrap_err();
    assert!(error.to_string().contains("line 3"), "{error}");
}
