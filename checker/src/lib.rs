//! History checker for ReplicatedKVStore: lost writes, linearizability (Wing–Gong/Lowe, per key,
//! on all cores) and Elle-style list-append anomalies under strict serializability.
//!
//! ```no_run
//! use checker::{check, history, Options, Workload};
//! let history = history::read_jsonl(std::path::Path::new("history.jsonl")).unwrap();
//! let report = check(&history, Workload::Register, &Options::default()).unwrap();
//! println!("{}", report.verdict_line());
//! ```

mod edn;
pub mod elle;
mod formats;
mod fxhash;
pub mod history;
pub mod html;
pub mod linear;
mod lost;
pub mod model;
pub mod report;
mod unique;
pub mod value;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use history::{Call, History, HistoryError, Model, Op, OpType, Outcome, F};
pub use report::{Anomaly, OpRef, Report, Validity, Workload};
pub use value::Value;

use linear::{Algorithm, Limits, Partition, Verdict};
use report::{AnomalySink, LinearizationFailure};

/// Default memo budget of one linearizability search, in bytes.
pub const MEMO_BYTES_MAX_DEFAULT: usize = 1 << 30;
/// Default number of anomalies of one type listed in a report (all are counted).
pub const ANOMALIES_PER_TYPE_MAX_DEFAULT: usize = 8;
/// Calls of the longest partial linearization listed in a report.
pub const LINEARIZATION_TAIL_CALLS_MAX: usize = 16;

/// Knobs of a check.
#[derive(Clone, Debug)]
pub struct Options {
    /// Give up with `unknown` after this long (linearizability search only).
    pub time_limit: Option<Duration>,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Memo table limit per key in bytes; past it, the key's verdict is `unknown`.
    pub memo_bytes_max: usize,
    pub anomalies_per_type_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            time_limit: None,
            threads: 0,
            memo_bytes_max: MEMO_BYTES_MAX_DEFAULT,
            anomalies_per_type_max: ANOMALIES_PER_TYPE_MAX_DEFAULT,
        }
    }
}

impl Options {
    fn thread_count(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism().map_or(1, |count| count.get())
    }
}

/// The history cannot be checked as the workload says.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("line {line}: {reason}")]
    BadInput { line: usize, reason: String },
    #[error("--workload {flag} contradicts the history's header (workload {header})")]
    WorkloadMismatch { flag: String, header: String },
}

/// The workload to check: the flag's, which must agree with the header's if both are given;
/// else the header's; else inferred from the operations (`txn` -> list-append; `delete` or
/// `append` -> kv; otherwise register). The second value says where it came from.
pub fn resolve_workload(
    history: &History,
    flag: Option<Workload>,
) -> Result<(Workload, &'static str), CheckError> {
    match (flag, history.workload) {
        (Some(flag), Some(header)) if flag != header => Err(CheckError::WorkloadMismatch {
            flag: flag.name().to_string(),
            header: header.name().to_string(),
        }),
        (Some(flag), _) => Ok((flag, "flag")),
        (None, Some(header)) => Ok((header, "history header")),
        (None, None) => {
            let calls = history.calls();
            let workload = if calls.iter().any(|call| call.f == F::Txn) {
                Workload::ListAppend
            } else if calls
                .iter()
                .any(|call| matches!(call.f, F::Delete | F::Append))
            {
                Workload::Kv
            } else {
                Workload::Register
            };
            Ok((workload, "inferred from the operations"))
        }
    }
}

/// Checks `history` as `workload`.
pub fn check(
    history: &History,
    workload: Workload,
    options: &Options,
) -> Result<Report, CheckError> {
    match workload {
        Workload::Kv
            if history.porcupine_string_kv(workload) && history.initial_value.is_null() =>
        {
            let mut strings = history.clone();
            strings.initial_value = Value::Str(String::new());
            check_kv(&strings, workload, options)
        }
        Workload::Register | Workload::Kv => check_kv(history, workload, options),
        Workload::ListAppend => elle::check(history, options),
    }
}

/// Groups calls by key. A register operation without a key is on the one unnamed register; a
/// kv operation needs a key. Operations outside the workload are bad input.
fn partitions(history: &History, workload: Workload) -> Result<Vec<Partition>, CheckError> {
    let mut groups: BTreeMap<Option<&Value>, Vec<usize>> = BTreeMap::new();
    for (index, call) in history.calls().iter().enumerate() {
        let line = history.line_of(call.invoke_event);
        let allowed = match workload {
            Workload::Register => matches!(call.f, F::Read | F::Write | F::Cas),
            Workload::Kv | Workload::ListAppend => call.f != F::Txn,
        };
        if !allowed {
            let reason = format!(
                "f {} is not an operation of the {} workload",
                call.f.name(),
                workload.name()
            );
            return Err(CheckError::BadInput { line, reason });
        }
        let key = history.key(call);
        if key.is_none() && workload == Workload::Kv {
            let reason = "kv operation without a key".to_string();
            return Err(CheckError::BadInput { line, reason });
        }
        groups.entry(key).or_default().push(index);
    }
    let partitions = groups
        .into_iter()
        .map(|(key, calls)| Partition {
            key: key.cloned(),
            calls,
        })
        .collect();
    Ok(partitions)
}

fn check_kv(
    history: &History,
    workload: Workload,
    options: &Options,
) -> Result<Report, CheckError> {
    let partitions = partitions(history, workload)?;
    let mut sink = AnomalySink::new(options.anomalies_per_type_max);
    for partition in &partitions {
        lost::lost_writes(history, partition, &mut sink);
    }
    let limits = Limits {
        deadline: options.time_limit.map(|limit| Instant::now() + limit),
        memo_bytes_max: options.memo_bytes_max,
    };
    let outcomes = linear::check_partitions(history, &partitions, &limits, options.thread_count());
    let mut unknown_reason = None;
    let mut unique_keys = 0;
    for (partition, outcome) in partitions.iter().zip(outcomes) {
        let (verdict, algorithm) = outcome.map_err(|(event, reason)| CheckError::BadInput {
            line: history.line_of(event),
            reason,
        })?;
        if algorithm == Algorithm::UniqueValues {
            unique_keys += 1;
        }
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Unknown(reason) => {
                let key = partition
                    .key
                    .as_ref()
                    .map_or(String::new(), |key| format!("key {key}: "));
                unknown_reason.get_or_insert(format!("{key}{reason}"));
            }
            Verdict::Violation(failure) => {
                if sink.wants("nonlinearizable") {
                    sink.push(linearizability_anomaly(history, partition, failure));
                }
            }
        }
    }
    let mut report = Report::assemble(history, workload, partitions.len(), sink, unknown_reason);
    report.unique_value_keys = Some(unique_keys);
    Ok(report)
}

fn linearizability_anomaly(
    history: &History,
    partition: &Partition,
    failure: linear::Failure,
) -> Anomaly {
    let tail_start = failure
        .longest
        .len()
        .saturating_sub(LINEARIZATION_TAIL_CALLS_MAX);
    let tail = failure.longest[tail_start..].to_vec();
    let mut involved = vec![failure.stuck];
    involved.extend(
        failure
            .pending
            .iter()
            .filter(|&&call| call != failure.stuck),
    );
    involved.extend(tail.iter().rev());
    let mut seen = std::collections::HashSet::new();
    involved.retain(|call| seen.insert(*call));
    let stuck = OpRef::new(history, failure.stuck);
    let explanation = match &failure.reason {
        Some(reason) => format!(
            "call {} (process {}, {} {}, line {}) cannot take effect before it returned: {}",
            failure.stuck,
            stuck.process,
            stuck.f.name(),
            stuck.value,
            stuck.line,
            reason
        ),
        None => format!(
            "no linearization passes the return of call {} (process {}, {} {}, line {}): the \
             longest partial linearization has {} calls and leaves the state at {}",
            failure.stuck,
            stuck.process,
            stuck.f.name(),
            stuck.value,
            stuck.line,
            failure.longest_length,
            failure.state_after
        ),
    };
    let ops = involved
        .iter()
        .map(|&call| OpRef::new(history, call))
        .collect();
    let mut anomaly = Anomaly::new("nonlinearizable", partition.key.clone(), explanation, ops);
    anomaly.linearization = Some(LinearizationFailure {
        longest_length: failure.longest_length,
        longest_tail: tail,
        state_after: failure.state_after,
        stuck: failure.stuck,
        pending: failure.pending,
    });
    anomaly
}
