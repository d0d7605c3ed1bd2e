//! Property tests: histories made by running random operations against a sequential model,
//! each operation's invoke/complete interval containing its real point, are valid; the same
//! with one read changed to a value nobody wrote are invalid.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use checker::history::F;
use checker::{check, Options, Validity, Value, Workload};
use common::Builder;
use proptest::prelude::*;

/// One generated operation: process, key, kind, a random pick, and interval slack.
type Plan = (u64, u8, u8, u8, u64, u64);
/// A value no operation writes.
const GARBAGE: i64 = 1_000_000_007;

fn plans() -> impl Strategy<Value = Vec<Plan>> {
    prop::collection::vec(
        (0u64..5, 0u8..3, 0u8..4, any::<u8>(), 0u64..350, 0u64..350),
        1..60,
    )
}

/// Invoke/complete times: operation i happens at 100 (i + 1); intervals of one process never
/// overlap.
fn intervals(plans: &[Plan]) -> Vec<(u64, u64)> {
    let point = |index: usize| 100 * (index as u64 + 1);
    let mut next_of_process: Vec<Option<usize>> = vec![None; plans.len()];
    let mut last_index: HashMap<u64, usize> = HashMap::new();
    for (index, plan) in plans.iter().enumerate() {
        if let Some(previous) = last_index.insert(plan.0, index) {
            next_of_process[previous] = Some(index);
        }
    }
    let mut last_complete: HashMap<u64, u64> = HashMap::new();
    let mut result = Vec::with_capacity(plans.len());
    for (index, &(process, _, _, _, before, after)) in plans.iter().enumerate() {
        let earliest = last_complete
            .get(&process)
            .map_or(0, |complete| complete + 1);
        let invoke = point(index).saturating_sub(before).max(earliest);
        let mut complete = point(index) + after;
        if let Some(next) = next_of_process[index] {
            complete = complete.min(point(next) - 1);
        }
        last_complete.insert(process, complete);
        result.push((invoke, complete));
    }
    result
}

/// A recorded call: process, times, outcome, f, key, invoke value, complete value.
type Recorded = (u64, u64, u64, &'static str, F, Option<Value>, Value, Value);

fn kv_history(plans: &[Plan]) -> Vec<Recorded> {
    let times = intervals(plans);
    let mut state: HashMap<u8, Value> = HashMap::new();
    let mut counter = 0i64;
    let mut calls = Vec::new();
    for (&(process, key, kind, pick, _, _), &(start, end)) in plans.iter().zip(&times) {
        let current = state.get(&key).cloned().unwrap_or(Value::Null);
        let unknown = pick % 8 == 0;
        let takes_effect = !unknown || pick % 16 == 0;
        counter += 1;
        let (f, invoke, complete, outcome) = match kind {
            0 if unknown => (F::Read, Value::Null, Value::Null, "info"),
            0 => (F::Read, Value::Null, current, "ok"),
            1 => {
                if takes_effect {
                    state.insert(key, Value::Int(counter));
                }
                (F::Write, Value::Int(counter), Value::Int(counter), "ok")
            }
            2 => {
                let from = if pick % 3 == 0 {
                    Value::Int(i64::from(pick) % counter)
                } else {
                    current.clone()
                };
                let pair = Value::List(vec![from.clone(), Value::Int(counter)]);
                let matched = from == current;
                if matched && takes_effect {
                    state.insert(key, Value::Int(counter));
                }
                (
                    F::Cas,
                    pair.clone(),
                    pair,
                    if matched { "ok" } else { "fail" },
                )
            }
            _ => {
                if takes_effect {
                    state.remove(&key);
                }
                (F::Delete, Value::Null, Value::Null, "ok")
            }
        };
        let outcome = if unknown && f != F::Read {
            "info"
        } else {
            outcome
        };
        let key = Some(Value::from(format!("k{key}").as_str()));
        calls.push((process, start, end, outcome, f, key, invoke, complete));
    }
    calls
}

fn build(calls: &[Recorded]) -> checker::History {
    let mut builder = Builder::default();
    for (process, start, end, outcome, f, key, invoke, complete) in calls.iter().cloned() {
        builder.call(process, start, end, outcome, f, key, invoke, complete);
    }
    builder.build()
}

fn list_append_history(plans: &[Plan]) -> Vec<Recorded> {
    let times = intervals(plans);
    let mut lists: HashMap<u8, Vec<Value>> = HashMap::new();
    let mut counter = 0i64;
    let mut calls = Vec::new();
    for (&(process, key, kind, pick, _, _), &(start, end)) in plans.iter().zip(&times) {
        let outcome = match pick % 10 {
            0 => "fail",
            1 => "info",
            _ => "ok",
        };
        let applies = outcome == "ok" || (outcome == "info" && pick % 4 == 1);
        let mut scratch = lists.clone();
        let mut mops = Vec::new();
        // 1 to 3 micro-ops over keys key, key + 1, ... chosen by the bits of `pick`.
        for step in 0..=(kind % 3) {
            let mop_key = (key + step) % 3;
            let name = Value::from(format!("x{mop_key}").as_str());
            let list = scratch.entry(mop_key).or_default();
            if (pick >> step) & 1 == 0 {
                counter += 1;
                list.push(Value::Int(counter));
                mops.push(Value::List(vec![
                    Value::from("append"),
                    name,
                    Value::Int(counter),
                ]));
            } else {
                mops.push(Value::List(vec![
                    Value::from("r"),
                    name,
                    Value::List(list.clone()),
                ]));
            }
        }
        if applies {
            lists = scratch;
        }
        let complete = Value::List(mops.clone());
        let invoke = Value::List(mops.into_iter().map(blank_read).collect());
        let complete = if outcome == "ok" {
            complete
        } else {
            invoke.clone()
        };
        calls.push((process, start, end, outcome, F::Txn, None, invoke, complete));
    }
    calls
}

fn blank_read(mop: Value) -> Value {
    match mop {
        Value::List(mut parts) if parts[0] == Value::from("r") => {
            parts[2] = Value::Null;
            Value::List(parts)
        }
        other => other,
    }
}

fn verdict(calls: &[Recorded], workload: Workload) -> (Validity, Vec<String>) {
    let report = check(&build(calls), workload, &Options::default()).unwrap();
    (report.valid, report.anomaly_types)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sequential_kv_histories_are_valid(plans in plans()) {
        let calls = kv_history(&plans);
        prop_assert_eq!(verdict(&calls, Workload::Kv), (Validity::Valid, Vec::new()));
    }

    #[test]
    fn kv_read_of_an_unwritten_value_is_invalid(plans in plans(), choice in any::<usize>()) {
        let mut calls = kv_history(&plans);
        let reads: Vec<usize> = (0..calls.len())
            .filter(|&index| calls[index].4 == F::Read && calls[index].3 == "ok")
            .collect();
        prop_assume!(!reads.is_empty());
        calls[reads[choice % reads.len()]].7 = Value::Int(GARBAGE);
        prop_assert_eq!(verdict(&calls, Workload::Kv).0, Validity::Invalid);
    }

    #[test]
    fn sequential_list_append_histories_are_valid(plans in plans()) {
        let calls = list_append_history(&plans);
        prop_assert_eq!(verdict(&calls, Workload::ListAppend), (Validity::Valid, Vec::new()));
    }

    #[test]
    fn list_append_read_of_an_unwritten_element_is_invalid(
        plans in plans(),
        choice in any::<usize>(),
    ) {
        let mut calls = list_append_history(&plans);
        let reads: Vec<(usize, usize)> = calls
            .iter()
            .enumerate()
            .filter(|(_, call)| call.3 == "ok")
            .flat_map(|(index, call)| {
                let mops = call.7.as_list().unwrap_or(&[]).to_vec();
                mops.iter()
                    .enumerate()
                    .filter(|(_, mop)| {
                        mop.as_list().is_some_and(|parts| parts[0] == Value::from("r"))
                    })
                    .map(|(position, _)| (index, position))
                    .collect::<Vec<_>>()
            })
            .collect();
        prop_assume!(!reads.is_empty());
        let (index, position) = reads[choice % reads.len()];
        if let Value::List(mops) = &mut calls[index].7 {
            if let Value::List(parts) = &mut mops[position] {
                if let Value::List(elements) = &mut parts[2] {
                    elements.push(Value::Int(GARBAGE));
                }
            }
        }
        prop_assert_eq!(verdict(&calls, Workload::ListAppend).0, Validity::Invalid);
    }
}
