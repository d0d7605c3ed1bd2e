//! `cargo bench -p checker`: prints wall times of the Porcupine corpus, a synthetic 1M-call
//! register history (64 processes, 8 keys, unique values, closed loop), a 1M-call kv history
//! (64 processes, 1000 keys) and a 200k-transaction list-append history. A plain
//! binary (harness = false): each figure is one run, which is what the targets are stated in.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use checker::history::{self, Format, History, Op, OpType, F};
use checker::{check, Options, Validity, Value, Workload};

/// Names the `conformance` directory; the Porcupine corpus is its `porcupine` subdirectory.
const CONFORMANCE_DIR_VARIABLE: &str = "KV_CONFORMANCE_DIR";
const REGISTER_CALLS: usize = 1_000_000;
const REGISTER_PROCESSES: u64 = 64;
const REGISTER_KEYS: u64 = 8;
const KV_CALLS: usize = 1_000_000;
const KV_PROCESSES: u64 = 64;
const KV_KEYS: u64 = 1000;
const TXNS: usize = 200_000;
const TXN_PROCESSES: u64 = 64;
/// Keys receiving appends at once; a key is retired after this many appends (as Elle does,
/// so reads stay short).
const TXN_ACTIVE_KEYS: u64 = 64;
const TXN_APPENDS_PER_KEY_MAX: usize = 64;
/// Real points are this many time units apart; each interval spreads up to
/// `SLACK_POINTS` points either side, so about 2 * SLACK_POINTS calls run concurrently.
const POINT_SPACING: u64 = 100;
const SLACK_POINTS: u64 = 32;

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
        self.next() % bound
    }
}

/// Turns calls at real points (one per point, round-robin processes) into sorted events.
/// Each call: (f, key, invoke value, completion type, completion value).
type Planned = (F, Option<Value>, Value, OpType, Value);

fn events(planned: Vec<Planned>, processes: u64, rng: &mut Rng) -> History {
    let slack = SLACK_POINTS * POINT_SPACING;
    let mut timed: Vec<(u64, u8, Op)> = Vec::with_capacity(planned.len() * 2);
    for (index, (f, key, invoke_value, completion, complete_value)) in
        planned.into_iter().enumerate()
    {
        let point = POINT_SPACING * (index as u64 + 1) + slack;
        let process = index as u64 % processes;
        // The same process's next call is `processes` points later; stay clear of it.
        let room = (processes * POINT_SPACING / 2).min(slack);
        let start = point - rng.below(room);
        let end = point + rng.below(room);
        let op = |op_type, value| Op {
            index: 0,
            time: None,
            process,
            op_type,
            f,
            key: key.clone(),
            value,
            error: None,
        };
        timed.push((start, 0, op(OpType::Invoke, invoke_value)));
        timed.push((end, 1, op(completion, complete_value)));
    }
    timed.sort_unstable_by_key(|(time, kind, _)| (*time, *kind));
    let ops = timed
        .into_iter()
        .enumerate()
        .map(|(index, (time, _, op))| Op {
            index: index as u64,
            time: Some(time),
            ..op
        })
        .collect();
    History::from_ops(ops).expect("generated history is well formed")
}

fn kv_history(rng: &mut Rng) -> History {
    let mut state: HashMap<u64, i64> = HashMap::new();
    let mut planned = Vec::with_capacity(KV_CALLS);
    for index in 0..KV_CALLS {
        let key = rng.below(KV_KEYS);
        let current = state
            .get(&key)
            .map_or(Value::Null, |&value| Value::Int(value));
        let written = index as i64 + 1;
        let roll = rng.below(100);
        let info = rng.below(200) == 0;
        let (f, invoke, completion, result) = match roll {
            0..=49 => (F::Read, Value::Null, OpType::Ok, current),
            50..=84 => {
                if !info || rng.below(2) == 0 {
                    state.insert(key, written);
                }
                let completion = if info { OpType::Info } else { OpType::Ok };
                (
                    F::Write,
                    Value::Int(written),
                    completion,
                    Value::Int(written),
                )
            }
            _ => {
                let matched = rng.below(2) == 0;
                let from = if matched {
                    current.clone()
                } else {
                    Value::Int(-1)
                };
                let pair = Value::List(vec![from, Value::Int(written)]);
                if matched {
                    state.insert(key, written);
                }
                let completion = if matched { OpType::Ok } else { OpType::Fail };
                (F::Cas, pair.clone(), completion, pair)
            }
        };
        planned.push((f, Some(Value::Int(key as i64)), invoke, completion, result));
    }
    events(planned, KV_PROCESSES, rng)
}

/// The bench's register workload: reads, writes and cas' on 8 keys, every written value unique,
/// a cas expecting the current value two times in three (else a stale one: it fails).
fn register_history(rng: &mut Rng) -> History {
    let mut state: HashMap<u64, i64> = HashMap::new();
    let mut planned = Vec::with_capacity(REGISTER_CALLS);
    for index in 0..REGISTER_CALLS {
        let key = rng.below(REGISTER_KEYS);
        let current = state.get(&key).copied();
        let as_value = |value: Option<i64>| value.map_or(Value::Null, Value::Int);
        let written = index as i64 + 1;
        let info = rng.below(200) == 0;
        let (f, invoke, completion, result) = match rng.below(3) {
            0 => (F::Read, Value::Null, OpType::Ok, as_value(current)),
            1 => {
                if !info || rng.below(2) == 0 {
                    state.insert(key, written);
                }
                let completion = if info { OpType::Info } else { OpType::Ok };
                (
                    F::Write,
                    Value::Int(written),
                    completion,
                    Value::Int(written),
                )
            }
            _ => {
                let matched = rng.below(3) != 0;
                let from = if matched {
                    as_value(current)
                } else {
                    Value::Int(-1)
                };
                let pair = Value::List(vec![from, Value::Int(written)]);
                if matched {
                    state.insert(key, written);
                }
                let completion = if matched { OpType::Ok } else { OpType::Fail };
                (F::Cas, pair.clone(), completion, pair)
            }
        };
        planned.push((f, Some(Value::Int(key as i64)), invoke, completion, result));
    }
    events(planned, REGISTER_PROCESSES, rng)
}

/// Keys currently taking appends, with their lists.
struct Keys {
    active: Vec<u64>,
    next_key: u64,
    lists: HashMap<u64, Vec<Value>>,
}

fn list_append_history(rng: &mut Rng) -> History {
    let mut keys = Keys {
        active: (0..TXN_ACTIVE_KEYS).collect(),
        next_key: TXN_ACTIVE_KEYS,
        lists: HashMap::new(),
    };
    let mut element = 0i64;
    let mut planned = Vec::with_capacity(TXNS);
    for _ in 0..TXNS {
        let mut invoke = Vec::new();
        let mut complete = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let slot = rng.below(TXN_ACTIVE_KEYS) as usize;
            let key = keys.active[slot];
            let list = keys.lists.entry(key).or_default();
            let name = Value::Int(key as i64);
            if rng.below(2) == 0 {
                element += 1;
                list.push(Value::Int(element));
                let mop = Value::List(vec![Value::from("append"), name, Value::Int(element)]);
                invoke.push(mop.clone());
                complete.push(mop);
                if list.len() >= TXN_APPENDS_PER_KEY_MAX {
                    keys.active[slot] = keys.next_key;
                    keys.next_key += 1;
                }
            } else {
                invoke.push(Value::List(vec![
                    Value::from("r"),
                    name.clone(),
                    Value::Null,
                ]));
                complete.push(Value::List(vec![
                    Value::from("r"),
                    name,
                    Value::List(list.clone()),
                ]));
            }
        }
        planned.push((
            F::Txn,
            None,
            Value::List(invoke),
            OpType::Ok,
            Value::List(complete),
        ));
    }
    events(planned, TXN_PROCESSES, rng)
}

fn to_jsonl(history: &History) -> String {
    let mut text = String::new();
    for op in history.ops() {
        text.push_str(&serde_json::to_string(op).expect("ops serialize"));
        text.push('\n');
    }
    text
}

fn corpus() {
    let Some(directory) = std::env::var_os(CONFORMANCE_DIR_VARIABLE) else {
        println!("corpus: skipped ({CONFORMANCE_DIR_VARIABLE} is unset)");
        return;
    };
    let root = PathBuf::from(directory).join("porcupine");
    let Ok(table) = std::fs::read_to_string(root.join("verdicts.tsv")) else {
        println!(
            "corpus: MISSING: {CONFORMANCE_DIR_VARIABLE} is set but {} is not readable",
            root.join("verdicts.tsv").display()
        );
        std::process::exit(1);
    };
    let started = Instant::now();
    let mut files = 0;
    for line in table.lines().skip(1) {
        let Some((file, verdict)) = line.split_once('\t') else {
            continue;
        };
        if verdict.trim() == "untested" {
            continue;
        }
        let workload = if file.contains("/kv/") {
            Workload::Kv
        } else {
            Workload::Register
        };
        let mut history = history::read(&root.join(file), Format::Auto).expect("corpus parses");
        history.set_model(checker::Model::Porcupine);
        check(&history, workload, &Options::default()).expect("corpus checks");
        files += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("corpus: {files} files, parse + check {seconds:.3} s (target < 1.5 s)");
}

fn timed_check(name: &str, history: &History, workload: Workload, unit: &str, count: usize) {
    let text = to_jsonl(history);
    let started = Instant::now();
    let parsed = history::parse(&text).expect("generated history parses");
    let parse_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let report = check(&parsed, workload, &Options::default()).expect("generated history checks");
    let check_seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        report.valid,
        Validity::Valid,
        "{name}: {}",
        report.verdict_line()
    );
    let total = parse_seconds + check_seconds;
    println!(
        "{name}: {count} {unit}, {} events, {:.1} MB JSONL: parse {parse_seconds:.3} s, check \
         {check_seconds:.3} s, total {total:.3} s = {:.0} {unit}/s (check only {:.0} {unit}/s)",
        parsed.ops().len(),
        text.len() as f64 / 1e6,
        count as f64 / total,
        count as f64 / check_seconds
    );
}

/// `cargo bench -p checker -- kv` runs only the sections whose name contains an argument.
fn wanted(section: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|filter| section.contains(filter.as_str()))
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |count| count.get());
    println!("checker bench on {threads} threads");
    if wanted("corpus") {
        corpus();
    }
    let mut rng = Rng(0x5eed);
    if wanted("register") {
        let register = register_history(&mut rng);
        timed_check(
            "register 64 processes x 8 keys, unique values",
            &register,
            Workload::Register,
            "calls",
            REGISTER_CALLS,
        );
        println!("  (target: 1M-operation register history < 10 s)");
    }
    if wanted("kv") {
        let kv = kv_history(&mut rng);
        timed_check(
            "kv 64 processes x 1000 keys",
            &kv,
            Workload::Kv,
            "calls",
            KV_CALLS,
        );
        println!("  (target: 1M-operation history < 10 s)");
    }
    if wanted("list-append") {
        let txns = list_append_history(&mut rng);
        timed_check("list-append", &txns, Workload::ListAppend, "txns", TXNS);
        println!("  (target: >= 100k txns/s)");
    }
}
