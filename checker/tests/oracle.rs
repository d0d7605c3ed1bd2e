//! Completeness on small histories: the checker against an exhaustive search.
//!
//! Thousands of random small histories (2-4 processes, a handful of operations, ok/fail/info,
//! some corrupted after the fact) are checked twice: by the checker, and by a brute-force oracle
//! written here from the definitions alone (linearizability for registers under both models;
//! strict serializability for list-append). Every disagreement is a checker bug; the test
//! prints each one as a history to replay.

// Test helpers outside #[test] functions may unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use checker::history::{History, Op, OpType, F};
use checker::{check, Model, Options, Validity, Value, Workload};

/// Histories per differential test (each: register under two models; list-append).
const HISTORIES: usize = 10_000;

/// splitmix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One generated call: timing, outcome and values as they will be recorded.
#[derive(Clone, Debug)]
struct Planned {
    process: u64,
    start: u64,
    end: u64,
    outcome: OpType,
    f: F,
    key: Option<Value>,
    invoke: Value,
    complete: Value,
    error: Option<String>,
}

/// Intervals: each process runs its calls one after another; every call gets a real point
/// inside its interval. Points are distinct so the execution order is defined.
fn schedule(rng: &mut Rng, count: usize, processes: u64) -> Vec<(u64, u64, u64, u64)> {
    let mut clock: HashMap<u64, u64> = HashMap::new();
    let mut out = Vec::new();
    for index in 0..count {
        let process = rng.below(processes);
        let free = clock.get(&process).copied().unwrap_or(0);
        let start = free + rng.below(6) * 10 + 1;
        let end = start + 10 + rng.below(8) * 10;
        let point = start + 1 + rng.below(end - start - 1);
        clock.insert(process, end + 1);
        out.push((process, start, end, point * 100 + index as u64));
    }
    out
}

fn to_history(planned: &[Planned]) -> History {
    let mut timed: Vec<(u64, u8, Op)> = Vec::new();
    for call in planned {
        let op = |op_type, value: &Value, error: Option<String>| Op {
            index: 0,
            time: None,
            process: call.process,
            op_type,
            f: call.f,
            key: call.key.clone(),
            value: value.clone(),
            error,
        };
        timed.push((call.start * 100, 0, op(OpType::Invoke, &call.invoke, None)));
        let completion = op(call.outcome, &call.complete, call.error.clone());
        timed.push((call.end * 100 + 99, 1, completion));
    }
    timed.sort_by_key(|(time, kind, _)| (*time, *kind));
    let ops = timed
        .into_iter()
        .enumerate()
        .map(|(index, (_, _, op))| Op {
            index: index as u64,
            ..op
        })
        .collect();
    History::from_ops(ops).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Registers

/// A register execution: calls take effect at their points in point order; `info` calls take
/// effect or not; some `fail`s ran (cas compare missed) and some never did.
fn register_history(rng: &mut Rng, unique: bool) -> Vec<Planned> {
    let processes = 2 + rng.below(3);
    let count = 3 + rng.below(6) as usize;
    let keys = 1 + rng.below(2);
    let mut times = schedule(rng, count, processes);
    times.sort_by_key(|&(_, _, _, point)| point);
    let mut state: HashMap<i64, Value> = HashMap::new();
    let mut counter = 0i64;
    let mut planned = Vec::new();
    for (process, start, end, _) in times {
        let key = rng.below(keys) as i64;
        let current = state.get(&key).cloned().unwrap_or(Value::Null);
        let mut fresh = || {
            counter += 1;
            if unique {
                Value::Int(counter)
            } else {
                Value::Int(counter % 3)
            }
        };
        let (f, invoke, new_value) = match rng.below(3) {
            0 => (F::Read, Value::Null, None),
            1 => {
                let value = fresh();
                (F::Write, value.clone(), Some(value))
            }
            _ => {
                let to = fresh();
                let from = if rng.chance(60) {
                    current.clone()
                } else {
                    Value::Int(rng.below(4) as i64)
                };
                (F::Cas, Value::List(vec![from, to.clone()]), Some(to))
            }
        };
        let roll = rng.below(100);
        let (outcome, takes_effect, error) = match roll {
            0..=69 => (OpType::Ok, true, None),
            70..=84 => (OpType::Info, rng.chance(50), Some("timeout".to_string())),
            _ => (OpType::Fail, false, Some("not leader".to_string())),
        };
        let mut call = Planned {
            process,
            start,
            end,

            outcome,
            f,
            key: Some(Value::Int(key)),
            invoke: invoke.clone(),
            complete: invoke.clone(),
            error,
        };
        apply_register(
            &mut call,
            &current,
            takes_effect,
            new_value,
            &mut state,
            key,
        );
        planned.push(call);
    }
    planned
}

fn apply_register(
    call: &mut Planned,
    current: &Value,
    takes_effect: bool,
    new_value: Option<Value>,
    state: &mut HashMap<i64, Value>,
    key: i64,
) {
    match call.f {
        F::Read if call.outcome == OpType::Ok => call.complete = current.clone(),
        F::Write if takes_effect => {
            state.insert(key, new_value.unwrap_or(Value::Null));
        }
        F::Cas if takes_effect => {
            let from = &call.invoke.as_list().unwrap()[0];
            if from == current {
                state.insert(key, new_value.unwrap_or(Value::Null));
            } else if call.outcome == OpType::Ok {
                // The compare missed: recorded as a fail without error (it ran).
                call.outcome = OpType::Fail;
                call.error = None;
            }
        }
        _ => {}
    }
}

/// Corrupts a history after the fact: a read's value, a cas' outcome, or two calls' timing.
fn corrupt_register(rng: &mut Rng, planned: &mut [Planned]) {
    let index = rng.below(planned.len() as u64) as usize;
    let call = &mut planned[index];
    match rng.below(3) {
        0 if call.f == F::Read && call.outcome == OpType::Ok => {
            call.complete = match rng.below(3) {
                0 => Value::Null,
                _ => Value::Int(rng.below(6) as i64),
            };
        }
        1 if call.f == F::Cas => {
            call.outcome = match call.outcome {
                OpType::Ok => OpType::Fail,
                _ => OpType::Ok,
            };
            call.error = None;
        }
        _ => {
            let other = rng.below(planned.len() as u64) as usize;
            let (start, end, process) = (
                planned[other].start,
                planned[other].end,
                planned[other].process,
            );
            let overlaps_own = planned.iter().enumerate().any(|(at, call)| {
                at != index
                    && call.process == planned[index].process
                    && call.start <= end
                    && start <= call.end
            });
            let call = &mut planned[index];
            if call.process != process && !overlaps_own {
                call.start = start;
                call.end = end;
            }
        }
    }
}

/// The oracle's view of one register call.
#[derive(Clone, Debug)]
enum RegisterOp {
    Read(Value),
    Write(Value),
    Cas(Value, Value),
    /// Ran, compare missed.
    CasMissed(Value),
}

struct OracleCall {
    op: RegisterOp,
    key: Value,
    invoke: usize,
    /// `None`: never returned (info): optional, unbounded.
    ret: Option<usize>,
}

/// Reads the calls as the model says, straight from the definitions.
fn oracle_calls(history: &History, model: Model) -> Vec<OracleCall> {
    let mut calls = Vec::new();
    for call in history.calls() {
        let invoke = history.invoke_value(call).clone();
        let complete = history.complete_value(call).clone();
        let error = history.error(call).is_some();
        let pair = || {
            let items = invoke.as_list().unwrap();
            (items[0].clone(), items[1].clone())
        };
        let op = match (call.f, call.outcome) {
            (_, checker::Outcome::Fail) if model == Model::Knossos || error => continue,
            (F::Cas, checker::Outcome::Fail) => RegisterOp::CasMissed(pair().0),
            (F::Read, checker::Outcome::Ok) if model == Model::Knossos && complete.is_null() => {
                continue
            }
            (F::Read, checker::Outcome::Ok) => RegisterOp::Read(complete),
            (F::Read, _) | (_, checker::Outcome::Fail) => continue,
            (F::Write, _) => RegisterOp::Write(invoke),
            (F::Cas, _) => RegisterOp::Cas(pair().0, pair().1),
            _ => panic!("not a register op"),
        };
        let ret = match call.outcome {
            checker::Outcome::Info => None,
            _ => call.complete_event,
        };
        calls.push(OracleCall {
            op,
            key: history.key(call).cloned().unwrap_or(Value::Null),
            invoke: call.invoke_event,
            ret,
        });
    }
    calls
}

/// Is there an order of (all returned, some unreturned) calls that respects real time and
/// makes every register behave sequentially? Depth-first over placements, memoized.
fn register_oracle(history: &History, model: Model) -> bool {
    let calls = oracle_calls(history, model);
    let state: Vec<(Value, Value)> = Vec::new();
    let mut seen = HashSet::new();
    place(&calls, 0, &state, &mut seen)
}

fn place(
    calls: &[OracleCall],
    placed: u64,
    state: &[(Value, Value)],
    seen: &mut HashSet<(u64, Vec<(Value, Value)>)>,
) -> bool {
    let required_left = calls
        .iter()
        .enumerate()
        .any(|(index, call)| call.ret.is_some() && placed & (1 << index) == 0);
    if !required_left {
        return true;
    }
    if !seen.insert((placed, state.to_vec())) {
        return false;
    }
    for (index, call) in calls.iter().enumerate() {
        if placed & (1 << index) != 0 {
            continue;
        }
        let blocked = calls.iter().enumerate().any(|(other, earlier)| {
            placed & (1 << other) == 0 && earlier.ret.is_some_and(|ret| ret < call.invoke)
        });
        if blocked {
            continue;
        }
        let current = state
            .iter()
            .find(|(key, _)| *key == call.key)
            .map_or(Value::Null, |(_, value)| value.clone());
        let next = match &call.op {
            RegisterOp::Read(value) if *value == current => None,
            RegisterOp::CasMissed(from) if *from != current => None,
            RegisterOp::Write(value) => Some(value.clone()),
            RegisterOp::Cas(from, to) if *from == current => Some(to.clone()),
            _ => continue,
        };
        let mut state = state.to_vec();
        if let Some(value) = next {
            state.retain(|(key, _)| *key != call.key);
            state.push((call.key.clone(), value));
            state.sort();
        }
        if place(calls, placed | (1 << index), &state, seen) {
            return true;
        }
    }
    false
}

fn checker_verdict(history: &History, workload: Workload) -> (bool, Vec<String>, usize) {
    let report = check(history, workload, &Options::default()).unwrap();
    assert_ne!(report.valid, Validity::Unknown, "{}", report.verdict_line());
    let unique = report.unique_value_keys.unwrap_or(0);
    (
        report.valid == Validity::Valid,
        report.anomaly_types,
        unique,
    )
}

fn describe(history: &History) -> String {
    history
        .ops()
        .iter()
        .map(|op| serde_json::to_string(op).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn register_differential(unique: bool, seed: u64) -> (usize, usize, usize) {
    let mut rng = Rng(seed);
    let (mut invalid, mut decided_unique) = (0, 0);
    let mut disagreements = Vec::new();
    for _ in 0..HISTORIES {
        let mut planned = register_history(&mut rng, unique);
        while rng.chance(60) {
            corrupt_register(&mut rng, &mut planned);
        }
        for model in [Model::Porcupine, Model::Knossos] {
            let mut history = to_history(&planned);
            history.set_model(model);
            let expected = register_oracle(&history, model);
            let (valid, anomalies, unique_keys) = checker_verdict(&history, Workload::Register);
            invalid += usize::from(!expected);
            decided_unique += unique_keys;
            if valid != expected {
                disagreements.push(format!(
                    "model {}: oracle {expected}, checker {valid} {anomalies:?}\n{}",
                    model.name(),
                    describe(&history)
                ));
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements of {}; first:\n{}",
        disagreements.len(),
        2 * HISTORIES,
        disagreements[0]
    );
    (2 * HISTORIES, invalid, decided_unique)
}

#[test]
fn register_checker_agrees_with_exhaustive_search_on_unique_values() {
    let (count, invalid, unique_keys) = register_differential(true, 11);
    eprintln!("register, unique values: {count} histories, {invalid} invalid, 0 disagreements");
    assert!(
        invalid > count / 10 && invalid < count * 9 / 10,
        "{invalid} of {count}"
    );
    assert!(
        unique_keys > count,
        "the unique-value check decided {unique_keys} keys"
    );
}

#[test]
fn register_checker_agrees_with_exhaustive_search_on_repeated_values() {
    let (count, invalid, _) = register_differential(false, 12);
    eprintln!("register, repeated values: {count} histories, {invalid} invalid, 0 disagreements");
    assert!(
        invalid > count / 10 && invalid < count * 9 / 10,
        "{invalid} of {count}"
    );
}

// ---------------------------------------------------------------------------------------------
// List-append

/// A list-append micro-op as generated: `(is_append, key, element)`.
type Micro = (bool, i64, i64);

fn micro_value(name: &str, key: i64, value: Value) -> Value {
    Value::List(vec![Value::from(name), Value::Int(key), value])
}

/// Runs one transaction against `state`: its completion value with reads filled in.
fn run_txn(micros: &[Micro], state: &mut HashMap<i64, Vec<Value>>) -> Value {
    let mut filled = Vec::new();
    for &(is_append, key, element) in micros {
        let list = state.entry(key).or_default();
        if is_append {
            list.push(Value::Int(element));
            filled.push(micro_value("append", key, Value::Int(element)));
        } else {
            filled.push(micro_value("r", key, Value::List(list.clone())));
        }
    }
    Value::List(filled)
}

fn list_append_history(rng: &mut Rng) -> Vec<Planned> {
    let processes = 2 + rng.below(3);
    let count = 3 + rng.below(5) as usize;
    let keys = 1 + rng.below(3);
    let mut times = schedule(rng, count, processes);
    times.sort_by_key(|&(_, _, _, point)| point);
    let mut state: HashMap<i64, Vec<Value>> = HashMap::new();
    let mut element = 0;
    let mut planned = Vec::new();
    for (process, start, end, _) in times {
        let micros: Vec<Micro> = (0..1 + rng.below(4))
            .map(|_| {
                element += 1;
                (rng.chance(50), rng.below(keys) as i64, element)
            })
            .collect();
        let invoke = Value::List(
            micros
                .iter()
                .map(|&(is_append, key, element)| match is_append {
                    true => micro_value("append", key, Value::Int(element)),
                    false => micro_value("r", key, Value::Null),
                })
                .collect(),
        );
        let (outcome, error) = match rng.below(100) {
            0..=69 => (OpType::Ok, None),
            70..=84 => (OpType::Info, Some("timeout".to_string())),
            _ => (OpType::Fail, Some("aborted".to_string())),
        };
        let complete = match outcome {
            OpType::Ok => run_txn(&micros, &mut state),
            OpType::Info if rng.chance(50) => {
                run_txn(&micros, &mut state);
                invoke.clone()
            }
            _ => invoke.clone(),
        };
        planned.push(Planned {
            process,
            start,
            end,
            outcome,
            f: F::Txn,
            key: None,
            invoke,
            complete,
            error,
        });
    }
    planned
}

/// Every element appended to `key` by any transaction, in a random order.
fn appended_elements(planned: &[Planned], key: &Value) -> Vec<Value> {
    let mut elements = Vec::new();
    for call in planned {
        for micro in call.invoke.as_list().unwrap() {
            let parts = micro.as_list().unwrap();
            if parts[0] == Value::from("append") && parts[1] == *key {
                elements.push(parts[2].clone());
            }
        }
    }
    elements
}

/// Removes one appended element from every read that shows it: the append becomes unread, which
/// leaves a transaction that appended to two keys half visible (no read orders the other half).
fn erase_everywhere(rng: &mut Rng, planned: &mut [Planned]) {
    let all: Vec<(Value, Value)> = planned
        .iter()
        .flat_map(|call| call.invoke.as_list().unwrap().to_vec())
        .filter_map(|micro| {
            let parts = micro.as_list().unwrap().to_vec();
            (parts[0] == Value::from("append")).then(|| (parts[1].clone(), parts[2].clone()))
        })
        .collect();
    if all.is_empty() {
        return;
    }
    let (key, element) = all[rng.below(all.len() as u64) as usize].clone();
    for call in planned.iter_mut() {
        let Value::List(micros) = &mut call.complete else {
            continue;
        };
        for micro in micros.iter_mut() {
            let Value::List(parts) = micro else { continue };
            if parts[0] == Value::from("r") && parts[1] == key {
                if let Value::List(list) = &mut parts[2] {
                    list.retain(|seen| *seen != element);
                }
            }
        }
    }
}

/// Makes a read show an element its own transaction appends to that key only later.
fn future_read(planned: &mut [Planned]) {
    for call in planned.iter_mut() {
        let Value::List(micros) = &mut call.complete else {
            continue;
        };
        for at in 0..micros.len() {
            let read = micros[at].as_list().unwrap().to_vec();
            if read[0] != Value::from("r") || read[2].is_null() {
                continue;
            }
            let later = micros[at + 1..].iter().find_map(|micro| {
                let parts = micro.as_list().unwrap();
                (parts[0] == Value::from("append") && parts[1] == read[1]).then(|| parts[2].clone())
            });
            if let (Some(element), Value::List(parts)) = (later, &mut micros[at]) {
                if let Value::List(list) = &mut parts[2] {
                    list.push(element);
                    return;
                }
            }
        }
    }
}

/// Rewrites one ok read: drops, adds (any appended element, the reader's own later ones
/// included), reorders, truncates or duplicates elements; or moves a transaction in time;
/// or erases an append from every read; or plants a future read.
fn corrupt_list_append(rng: &mut Rng, planned: &mut [Planned]) {
    match rng.below(10) {
        0 => return erase_everywhere(rng, planned),
        1 => return future_read(planned),
        _ => {}
    }
    let index = rng.below(planned.len() as u64) as usize;
    let Value::List(micros) = planned[index].complete.clone() else {
        return;
    };
    let reads: Vec<usize> = (0..micros.len())
        .filter(|&at| micros[at].as_list().unwrap()[0] == Value::from("r"))
        .collect();
    if planned[index].outcome != OpType::Ok || reads.is_empty() || rng.chance(20) {
        corrupt_register(rng, planned);
        return;
    }
    let at = reads[rng.below(reads.len() as u64) as usize];
    let parts = micros[at].as_list().unwrap().to_vec();
    let mut list = parts[2].as_list().unwrap().to_vec();
    let pool = appended_elements(planned, &parts[1]);
    match rng.below(5) {
        0 if !list.is_empty() => {
            list.remove(rng.below(list.len() as u64) as usize);
        }
        1 if !pool.is_empty() => {
            let element = pool[rng.below(pool.len() as u64) as usize].clone();
            let position = rng.below(list.len() as u64 + 1) as usize;
            list.insert(position, element);
        }
        2 if list.len() >= 2 => {
            let (a, b) = (rng.below(list.len() as u64), rng.below(list.len() as u64));
            list.swap(a as usize, b as usize);
        }
        3 => list.truncate(rng.below(list.len() as u64 + 1) as usize),
        _ if !list.is_empty() => list.push(list[0].clone()),
        _ => {}
    }
    let mut micros = micros;
    micros[at] = Value::List(vec![parts[0].clone(), parts[1].clone(), Value::List(list)]);
    planned[index].complete = Value::List(micros);
}

struct OracleTxn {
    micros: Vec<Value>,
    invoke: usize,
    ret: Option<usize>,
}

/// Is there a serial order of all acknowledged and some unknown transactions, respecting real
/// time, in which every read returns the list as it is at that point?
fn list_append_oracle(history: &History) -> bool {
    let txns: Vec<OracleTxn> = history
        .calls()
        .iter()
        .filter(|call| call.outcome != checker::Outcome::Fail)
        .map(|call| OracleTxn {
            micros: history.value(call).as_list().unwrap().to_vec(),
            invoke: call.invoke_event,
            ret: match call.outcome {
                checker::Outcome::Ok => call.complete_event,
                _ => None,
            },
        })
        .collect();
    let mut seen = HashSet::new();
    serialize(&txns, 0, &[], &mut seen)
}

type Lists = Vec<(Value, Vec<Value>)>;

fn serialize(
    txns: &[OracleTxn],
    placed: u64,
    state: &[(Value, Vec<Value>)],
    seen: &mut HashSet<(u64, Lists)>,
) -> bool {
    let required_left = txns
        .iter()
        .enumerate()
        .any(|(index, txn)| txn.ret.is_some() && placed & (1 << index) == 0);
    if !required_left {
        return true;
    }
    if !seen.insert((placed, state.to_vec())) {
        return false;
    }
    for (index, txn) in txns.iter().enumerate() {
        if placed & (1 << index) != 0 {
            continue;
        }
        let blocked = txns.iter().enumerate().any(|(other, earlier)| {
            placed & (1 << other) == 0 && earlier.ret.is_some_and(|ret| ret < txn.invoke)
        });
        if blocked {
            continue;
        }
        if let Some(next) = apply_txn(&txn.micros, state) {
            if serialize(txns, placed | (1 << index), &next, seen) {
                return true;
            }
        }
    }
    false
}

fn apply_txn(micros: &[Value], state: &[(Value, Vec<Value>)]) -> Option<Lists> {
    let mut state = state.to_vec();
    for micro in micros {
        let parts = micro.as_list().unwrap();
        let key = &parts[1];
        let at = match state.iter().position(|(name, _)| name == key) {
            Some(at) => at,
            None => {
                state.push((key.clone(), Vec::new()));
                state.len() - 1
            }
        };
        match (parts[0].as_str(), &parts[2]) {
            (Some("append"), element) => state[at].1.push(element.clone()),
            (_, Value::Null) => {}
            (_, Value::List(read)) if *read == state[at].1 => {}
            _ => return None,
        }
    }
    state.retain(|(_, list)| !list.is_empty());
    state.sort();
    Some(state)
}

/// List-append histories (more than registers: the anomaly classes are rarer per history).
const LIST_APPEND_HISTORIES: usize = 10_000;

#[test]
fn list_append_checker_agrees_with_exhaustive_search() {
    let mut rng = Rng(13);
    let mut invalid = 0;
    let mut disagreements = Vec::new();
    for _ in 0..LIST_APPEND_HISTORIES {
        let mut planned = list_append_history(&mut rng);
        if rng.chance(50) {
            corrupt_list_append(&mut rng, &mut planned);
        }
        let history = to_history(&planned);
        let expected = list_append_oracle(&history);
        let (valid, anomalies, _) = checker_verdict(&history, Workload::ListAppend);
        invalid += usize::from(!expected);
        if valid != expected {
            disagreements.push(format!(
                "oracle {expected}, checker {valid} {anomalies:?}\n{}",
                describe(&history)
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements of {LIST_APPEND_HISTORIES}; first:\n{}",
        disagreements.len(),
        disagreements[0]
    );
    eprintln!("list-append: {LIST_APPEND_HISTORIES} histories, {invalid} invalid, 0 disagreements");
    assert!(
        invalid > LIST_APPEND_HISTORIES / 10 && invalid < LIST_APPEND_HISTORIES * 9 / 10,
        "{invalid}"
    );
}
