//! Workloads: what each operation is, how it appears in the history, and how its answer
//! becomes a completion.
//!
//! Keys are integers in the history and `k<id>` on the wire. Values:
//! - put/get/mixed: every write a unique integer `n`, sent as its decimal digits padded with
//!   `.` to `--value-size` bytes, so reads map back to the write they saw (lost-write check).
//! - register: read/write/cas on a few keys; every write and every cas' new value is a fresh
//!   unique integer, and a cas expects the key's last planned value. Unique values let the
//!   checker name the write each read saw and check a million operations in seconds.
//! - list-append: transactions of 1..=`TXN_OPS_MAX` appends and reads over a few active keys;
//!   each appended element is unique; a key is retired after `APPENDS_PER_KEY_MAX` appends so
//!   lists stay short (as Elle does).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use checker::history::F;
use checker::Value;
use kvclient::{ClientError, ReadMode};
use kvstate as kv;
use kvstate::{KeyOp, KeyResult, OpResult};
use serde::Serialize;

use crate::history::Completion;
use crate::rng::Rng;

/// Most micro-operations in one list-append transaction.
pub const TXN_OPS_MAX: u64 = 5;
/// Appends after which a list-append key is retired for a fresh one.
pub const APPENDS_PER_KEY_MAX: u32 = 32;
/// Padding byte after the digits of a put value.
const VALUE_PADDING: u8 = b'.';

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Writes of random keys.
    Put,
    /// Reads of random keys (written once before the timed phase).
    Get,
    /// Half reads, half writes of random keys.
    Mixed,
    /// Read/write/cas on a few keys with values from a small domain (linearizability).
    Register,
    /// Transactions of appends and reads (Elle-style serializability).
    ListAppend,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Put => "put",
            WorkloadKind::Get => "get",
            WorkloadKind::Mixed => "mixed",
            WorkloadKind::Register => "register",
            WorkloadKind::ListAppend => "list-append",
        }
    }

    /// How the checker reads this workload's history: the checker knows every bench name
    /// (`put`, `get` and `mixed` are its `kv`), and the history's header records it.
    pub fn checker_workload(self) -> checker::Workload {
        match self {
            WorkloadKind::ListAppend => checker::Workload::ListAppend,
            WorkloadKind::Register => checker::Workload::Register,
            WorkloadKind::Put | WorkloadKind::Get | WorkloadKind::Mixed => checker::Workload::Kv,
        }
    }

    /// Keys used when `--keys` is not given (active keys for list-append).
    pub fn keys_default(self) -> u64 {
        match self {
            WorkloadKind::Put | WorkloadKind::Get | WorkloadKind::Mixed => 1000,
            WorkloadKind::Register => 3,
            WorkloadKind::ListAppend => 8,
        }
    }

    /// Whether `--check` is on unless asked otherwise.
    pub fn check_default(self) -> bool {
        matches!(self, WorkloadKind::Register | WorkloadKind::ListAppend)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadConfig {
    pub kind: WorkloadKind,
    pub keys: u64,
    pub value_size: usize,
    #[serde(serialize_with = "serialize_read_mode")]
    pub read_mode: ReadMode,
}

fn serialize_read_mode<S: serde::Serializer>(mode: &ReadMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match mode {
        ReadMode::Linearizable => "linearizable",
        ReadMode::Stale => "stale",
    })
}

/// One operation: what to send and how to record it.
#[derive(Clone, Debug)]
pub struct Planned {
    pub op: kv::Op,
    pub f: F,
    pub key: Option<Value>,
    /// The invocation's value.
    pub value: Value,
}

/// A workload's state shared by all workers.
pub struct Workload {
    pub config: WorkloadConfig,
    /// Next unique value (put and register values, appended elements).
    next_value: AtomicI64,
    keys: Mutex<KeyPool>,
    /// Per register key: the last value planned for it (0: none yet, the key is absent), which
    /// the next cas expects.
    register_last: Vec<AtomicI64>,
}

/// The active list-append keys and how many appends each has had.
struct KeyPool {
    active: Vec<(u64, u32)>,
    next_key: u64,
}

impl Workload {
    pub fn new(config: WorkloadConfig) -> Workload {
        assert!(config.keys > 0, "a workload needs at least one key");
        let pool = KeyPool {
            active: (0..config.keys).map(|key| (key, 0)).collect(),
            next_key: config.keys,
        };
        let register_last = (0..config.keys).map(|_| AtomicI64::new(0)).collect();
        Workload {
            config,
            next_value: AtomicI64::new(1),
            keys: Mutex::new(pool),
            register_last,
        }
    }

    /// Keys written once before the timed phase (so that reads find values).
    pub fn preload_keys(&self) -> std::ops::Range<u64> {
        match self.config.kind {
            WorkloadKind::Get => 0..self.config.keys,
            _ => 0..0,
        }
    }

    /// Every key the workload has used so far (for the final reads).
    pub fn keys_used(&self) -> std::ops::Range<u64> {
        match self.config.kind {
            WorkloadKind::ListAppend => 0..self.pool().next_key,
            _ => 0..self.config.keys,
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, KeyPool> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unique_value(&self) -> i64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    /// The next operation of the timed phase.
    pub fn next(&self, rng: &mut Rng) -> Planned {
        let key = rng.below(self.config.keys);
        match self.config.kind {
            WorkloadKind::Put => self.write(key),
            WorkloadKind::Get => read(key),
            WorkloadKind::Mixed if rng.ratio(1, 2) => read(key),
            WorkloadKind::Mixed => self.write(key),
            WorkloadKind::Register => self.register_op(key, rng),
            WorkloadKind::ListAppend => self.txn(rng),
        }
    }

    /// A write of `key` with a fresh unique value.
    pub fn write(&self, key: u64) -> Planned {
        let value = self.unique_value();
        let mut bytes = value.to_string().into_bytes();
        if bytes.len() < self.config.value_size {
            bytes.resize(self.config.value_size, VALUE_PADDING);
        }
        Planned {
            op: kv::Op::put(key_bytes(key), bytes),
            f: F::Write,
            key: Some(Value::Int(key as i64)),
            value: Value::Int(value),
        }
    }

    /// The read of `key` done after the load.
    pub fn final_read(&self, key: u64) -> Planned {
        match self.config.kind {
            WorkloadKind::ListAppend => txn_of(vec![Micro::Read(key)]),
            _ => read(key),
        }
    }

    fn txn(&self, rng: &mut Rng) -> Planned {
        let count = 1 + rng.below(TXN_OPS_MAX);
        let mut micros = Vec::with_capacity(count as usize);
        let mut pool = self.pool();
        for _ in 0..count {
            let slot = rng.below(pool.active.len() as u64) as usize;
            let key = pool.active[slot].0;
            if rng.ratio(1, 2) {
                micros.push(Micro::Read(key));
                continue;
            }
            micros.push(Micro::Append(key, self.unique_value()));
            pool.active[slot].1 += 1;
            if pool.active[slot].1 >= APPENDS_PER_KEY_MAX {
                pool.active[slot] = (pool.next_key, 0);
                pool.next_key += 1;
            }
        }
        txn_of(micros)
    }
}

/// A list-append micro-operation.
#[derive(Clone, Copy, Debug)]
enum Micro {
    Read(u64),
    Append(u64, i64),
}

fn key_bytes(key: u64) -> Bytes {
    Bytes::from(format!("k{key}"))
}

fn read(key: u64) -> Planned {
    Planned {
        op: kv::Op::get(key_bytes(key)),
        f: F::Read,
        key: Some(Value::Int(key as i64)),
        value: Value::Null,
    }
}

impl Workload {
    /// A read, write or cas of register `key`; writes and cas' write a fresh unique value.
    fn register_op(&self, key: u64, rng: &mut Rng) -> Planned {
        let history_key = Some(Value::Int(key as i64));
        let last = &self.register_last[key as usize];
        match rng.below(3) {
            0 => read(key),
            1 => {
                let value = self.unique_value();
                last.store(value, Ordering::Relaxed);
                Planned {
                    op: kv::Op::put(key_bytes(key), value.to_string()),
                    f: F::Write,
                    key: history_key,
                    value: Value::Int(value),
                }
            }
            _ => {
                let new = self.unique_value();
                let expected = last.swap(new, Ordering::Relaxed);
                let (expected_bytes, expected_value) = match expected {
                    0 => (None, Value::Null),
                    value => (Some(Bytes::from(value.to_string())), Value::Int(value)),
                };
                Planned {
                    op: kv::Op::cas(key_bytes(key), expected_bytes, new.to_string()),
                    f: F::Cas,
                    key: history_key,
                    value: Value::List(vec![expected_value, Value::Int(new)]),
                }
            }
        }
    }
}

fn txn_of(micros: Vec<Micro>) -> Planned {
    let ops = micros
        .iter()
        .map(|micro| match *micro {
            Micro::Read(key) => KeyOp::Get {
                key: key_bytes(key),
            },
            Micro::Append(key, element) => KeyOp::Append {
                key: key_bytes(key),
                element: Bytes::from(element.to_string()),
            },
        })
        .collect();
    let value = micros
        .iter()
        .map(|micro| match *micro {
            Micro::Read(key) => micro_value("r", key, Value::Null),
            Micro::Append(key, element) => micro_value("append", key, Value::Int(element)),
        })
        .collect();
    Planned {
        op: kv::Op::Txn(ops),
        f: F::Txn,
        key: None,
        value: Value::List(value),
    }
}

fn micro_value(name: &str, key: u64, value: Value) -> Value {
    Value::List(vec![Value::from(name), Value::Int(key as i64), value])
}

/// Turns an answer into the history completion of `planned`.
pub fn completion(planned: &Planned, answer: &Result<OpResult, ClientError>) -> Completion {
    let result = match answer {
        Ok(result) => result,
        Err(error) if error.is_definite() => {
            return Completion::Fail {
                value: planned.value.clone(),
                error: Some(error.kind().to_string()),
            }
        }
        Err(error) => {
            return Completion::Info {
                error: error.to_string(),
            }
        }
    };
    let unexpected = || Completion::Info {
        error: format!("unexpected result: {}", result_name(result)),
    };
    match (planned.f, result) {
        (F::Read, OpResult::Key(KeyResult::Get { value })) => {
            Completion::Ok(decode_value(value.as_ref()))
        }
        (F::Write, OpResult::Key(KeyResult::Put { .. })) => Completion::Ok(planned.value.clone()),
        (F::Cas, OpResult::Key(KeyResult::Cas { succeeded, .. })) => {
            if *succeeded {
                Completion::Ok(planned.value.clone())
            } else {
                // Executed, compare did not match: `fail` without an error (history.md).
                Completion::Fail {
                    value: planned.value.clone(),
                    error: None,
                }
            }
        }
        (F::Txn, OpResult::Txn { committed, results }) => {
            txn_completion(planned, *committed, results).unwrap_or_else(unexpected)
        }
        _ => unexpected(),
    }
}

/// What an answer was, for an `info` error: `the result of put`, `a transaction result`.
fn result_name(result: &OpResult) -> String {
    match result {
        OpResult::Key(result) => format!("the result of {}", result.name()),
        OpResult::Txn { .. } => "a transaction result".to_string(),
    }
}

fn txn_completion(planned: &Planned, committed: bool, results: &[KeyResult]) -> Option<Completion> {
    if !committed {
        let failure = results.last().map(|result| match result {
            KeyResult::Failed(failure) => format!("aborted: {failure}"),
            other => format!("aborted after {}", other.name()),
        });
        return Some(Completion::Fail {
            value: planned.value.clone(),
            error: Some(failure.unwrap_or_else(|| "aborted".into())),
        });
    }
    let micros = planned.value.as_list()?;
    if micros.len() != results.len() {
        return None;
    }
    let mut filled = Vec::with_capacity(micros.len());
    for (micro, result) in micros.iter().zip(results) {
        let parts = micro.as_list()?;
        let filled_micro = match result {
            KeyResult::Get { value } => {
                let list = match decode_value(value.as_ref()) {
                    Value::Null => Value::List(Vec::new()),
                    other => other,
                };
                Value::List(vec![parts[0].clone(), parts[1].clone(), list])
            }
            KeyResult::Append { .. } => micro.clone(),
            _ => return None,
        };
        filled.push(filled_micro);
    }
    Some(Completion::Ok(Value::List(filled)))
}

/// A stored value as the history shows it: the integer it encodes, a list of such, `null`
/// when absent; anything else as a string (the checker then reports what it saw).
pub fn decode_value(value: Option<&kv::Value>) -> Value {
    match value {
        None => Value::Null,
        Some(kv::Value::Bytes(bytes)) => decode_number(bytes),
        Some(kv::Value::List(elements)) => Value::List(
            elements
                .iter()
                .map(|element| decode_number(element))
                .collect(),
        ),
    }
}

fn decode_number(bytes: &[u8]) -> Value {
    let digits = bytes
        .split(|&byte| byte == VALUE_PADDING)
        .next()
        .unwrap_or(&[]);
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .map_or_else(
            || Value::Str(String::from_utf8_lossy(bytes).into_owned()),
            Value::Int,
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(kind: WorkloadKind, keys: u64) -> Workload {
        Workload::new(WorkloadConfig {
            kind,
            keys,
            value_size: 16,
            read_mode: ReadMode::Linearizable,
        })
    }

    #[test]
    fn put_values_are_padded_unique_and_decode_back() {
        let workload = workload(WorkloadKind::Put, 4);
        let first = workload.write(1);
        let second = workload.write(1);
        assert_ne!(first.value, second.value);
        let kv::Op::Key(KeyOp::Put { value, .. }) = &first.op else {
            panic!("expected a put")
        };
        assert_eq!(value.len(), 16);
        let stored = kv::Value::Bytes(value.clone());
        assert_eq!(decode_value(Some(&stored)), first.value);
        let ok = completion(
            &first,
            &Ok(OpResult::Key(KeyResult::Put { existed: false })),
        );
        assert_eq!(ok, Completion::Ok(first.value.clone()));
    }

    #[test]
    fn failed_cas_compare_is_a_fail_without_error_and_timeouts_are_info() {
        let cas = Planned {
            op: kv::Op::cas("k0", Some(Bytes::from("1")), "2"),
            f: F::Cas,
            key: Some(Value::Int(0)),
            value: Value::List(vec![Value::Int(1), Value::Int(2)]),
        };
        let answer = Ok(OpResult::Key(KeyResult::Cas {
            succeeded: false,
            current: None,
        }));
        let Completion::Fail { error: None, .. } = completion(&cas, &answer) else {
            panic!("expected fail without error")
        };
        let timeout = Err(ClientError::Timeout {
            attempts: 3,
            last: "x".into(),
        });
        assert!(matches!(
            completion(&cas, &timeout),
            Completion::Info { .. }
        ));
        let unavailable = Err(ClientError::Unavailable {
            attempts: 3,
            last: "x".into(),
        });
        let Completion::Fail { error: Some(_), .. } = completion(&cas, &unavailable) else {
            panic!("expected fail with error")
        };
    }

    #[test]
    fn list_append_reads_are_filled_in_and_keys_retire() {
        let workload = workload(WorkloadKind::ListAppend, 2);
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let planned = workload.next(&mut rng);
            assert!(!planned.value.as_list().unwrap().is_empty());
        }
        assert!(
            workload.keys_used().end > 2,
            "keys are retired after enough appends"
        );
        let planned = txn_of(vec![Micro::Append(3, 7), Micro::Read(3), Micro::Read(4)]);
        let list = kv::Value::List(vec![Bytes::from("5"), Bytes::from("7")]);
        let results = vec![
            KeyResult::Append { length: 2 },
            KeyResult::Get { value: Some(list) },
            KeyResult::Get { value: None },
        ];
        let answer = Ok(OpResult::Txn {
            committed: true,
            results,
        });
        let Completion::Ok(value) = completion(&planned, &answer) else {
            panic!("expected ok")
        };
        assert_eq!(
            value.to_string(),
            r#"[["append",3,7],["r",3,[5,7]],["r",4,[]]]"#
        );
    }

    #[test]
    fn register_writes_unique_values_and_cas_expects_the_last_one() {
        let workload = workload(WorkloadKind::Register, 3);
        let mut rng = Rng::new(9);
        let mut written = std::collections::HashSet::new();
        let mut last: std::collections::HashMap<i64, Value> = std::collections::HashMap::new();
        for _ in 0..300 {
            let planned = workload.next(&mut rng);
            let Some(Value::Int(key)) = planned.key else {
                panic!("register ops carry a key")
            };
            assert!((0..3).contains(&key));
            let new = match (planned.f, &planned.value) {
                (F::Write, value) => value.clone(),
                (F::Cas, Value::List(pair)) => {
                    let expected = last.get(&key).cloned().unwrap_or(Value::Null);
                    assert_eq!(pair[0], expected, "cas expects the key's last value");
                    pair[1].clone()
                }
                _ => continue,
            };
            assert!(written.insert(new.clone()), "{new} written twice");
            last.insert(key, new);
        }
        assert!(written.len() > 100);
    }

    #[test]
    fn bench_and_checker_share_workload_names() {
        for kind in [
            WorkloadKind::Put,
            WorkloadKind::Get,
            WorkloadKind::Mixed,
            WorkloadKind::Register,
            WorkloadKind::ListAppend,
        ] {
            assert_eq!(
                checker::Workload::from_name(kind.name()),
                Some(kind.checker_workload()),
                "{}",
                kind.name()
            );
        }
    }
}
