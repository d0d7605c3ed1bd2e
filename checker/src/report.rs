//! The checker's verdict, serialized as `checker.json`.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use crate::history::{History, Model, Outcome, F};
use crate::value::Value;

/// `valid` in checker.json: `true`, `false` or `"unknown"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Invalid,
    Unknown,
}

impl Serialize for Validity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Validity::Valid => serializer.serialize_bool(true),
            Validity::Invalid => serializer.serialize_bool(false),
            Validity::Unknown => serializer.serialize_str("unknown"),
        }
    }
}

/// What the history exercised, and so which checks apply. bench and checker share these names
/// (bench's `put`, `get` and `mixed` load shapes are checked as `kv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Read/write/cas registers, one per key (no key: one register), as Knossos'
    /// `cas-register` with `jepsen.independent`. Linearizability per key + lost writes.
    Register,
    /// Independent keys with read/write/cas/delete/append. Linearizability per key + lost
    /// writes.
    #[value(alias = "put", alias = "get", alias = "mixed")]
    Kv,
    /// Transactions of appends and list reads. Elle-style strict serializability.
    ListAppend,
}

impl Workload {
    /// Every name a history header or `--workload` may use.
    pub const NAMES: [&'static str; 6] = ["register", "kv", "list-append", "put", "get", "mixed"];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Kv => "kv",
            Workload::ListAppend => "list-append",
        }
    }

    /// The workload a name means (`put`, `get` and `mixed` are `kv`).
    pub fn from_name(name: &str) -> Option<Workload> {
        match name {
            "register" => Some(Workload::Register),
            "kv" | "put" | "get" | "mixed" => Some(Workload::Kv),
            "list-append" => Some(Workload::ListAppend),
            _ => None,
        }
    }
}

/// One operation named by an anomaly.
#[derive(Clone, Debug, Serialize)]
pub struct OpRef {
    /// Position in the history's list of calls.
    pub call: usize,
    pub process: u64,
    pub f: F,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Value>,
    pub value: Value,
    pub outcome: Outcome,
    /// `index` of the invoke event.
    pub invoke_index: u64,
    /// `index` of the completion event, if any.
    pub complete_index: Option<u64>,
    /// Source line of the invoke event.
    pub line: usize,
}

impl OpRef {
    pub fn new(history: &History, call_index: usize) -> OpRef {
        let call = &history.calls()[call_index];
        let ops = history.ops();
        OpRef {
            call: call_index,
            process: call.process,
            f: call.f,
            key: history.key(call).cloned(),
            value: history.value(call).clone(),
            outcome: call.outcome,
            invoke_index: ops[call.invoke_event].index,
            complete_index: call.complete_event.map(|event| ops[event].index),
            line: history.line_of(call.invoke_event),
        }
    }
}

/// One edge of a dependency cycle: `from` must precede `to`.
#[derive(Clone, Debug, Serialize)]
pub struct CycleStep {
    pub from: usize,
    pub to: usize,
    /// `ww`, `wr`, `rw`, `realtime` or `process`.
    pub edge: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Value>,
    pub explanation: String,
}

/// Where the linearizability search got stuck (calls by index, as in [`OpRef::call`]).
#[derive(Clone, Debug, Serialize)]
pub struct LinearizationFailure {
    /// Number of calls in the longest partial linearization.
    pub longest_length: usize,
    /// Its last calls (at most `LINEARIZATION_TAIL_CALLS_MAX`), in linearization order.
    pub longest_tail: Vec<usize>,
    /// Model state after the longest partial linearization.
    pub state_after: Value,
    /// The call that cannot be linearized next.
    pub stuck: usize,
    /// Calls invoked but not linearized at that point.
    pub pending: Vec<usize>,
}

/// One anomaly with the operations involved.
#[derive(Clone, Debug, Serialize)]
pub struct Anomaly {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Value>,
    pub explanation: String,
    pub ops: Vec<OpRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cycle: Vec<CycleStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linearization: Option<LinearizationFailure>,
}

impl Anomaly {
    pub fn new(kind: &str, key: Option<Value>, explanation: String, ops: Vec<OpRef>) -> Self {
        Anomaly {
            kind: kind.to_string(),
            key,
            explanation,
            ops,
            cycle: Vec::new(),
            linearization: None,
        }
    }
}

/// The result of a check; `checker.json` is this, serialized.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub valid: Validity,
    pub workload: Workload,
    pub event_count: usize,
    pub call_count: usize,
    pub key_count: usize,
    /// Distinct anomaly types found, sorted.
    pub anomaly_types: Vec<String>,
    /// Anomalies found per type (can exceed the number listed in `anomalies`).
    pub anomaly_counts: BTreeMap<String, usize>,
    pub anomalies: Vec<Anomaly>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_reason: Option<String>,
    /// The register semantics applied (register/kv).
    pub model: Model,
    /// Fault events (process `nemesis`) skipped.
    pub nemesis_events: usize,
    /// Keys decided by the unique-value check (the rest by the general search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_value_keys: Option<usize>,
}

/// Collects anomalies, keeping at most `per_type_max` of each type but counting all.
pub struct AnomalySink {
    per_type_max: usize,
    pub anomalies: Vec<Anomaly>,
    pub counts: BTreeMap<String, usize>,
}

impl AnomalySink {
    pub fn new(per_type_max: usize) -> Self {
        AnomalySink {
            per_type_max,
            anomalies: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    /// Counts one anomaly of `kind`; `true` if it should be built and added (under the cap).
    pub fn wants(&mut self, kind: &str) -> bool {
        let count = self.counts.entry(kind.to_string()).or_insert(0);
        *count += 1;
        *count <= self.per_type_max
    }

    pub fn push(&mut self, anomaly: Anomaly) {
        self.anomalies.push(anomaly);
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

impl Report {
    /// Assembles a report; the verdict is invalid if any anomaly was found, else unknown if
    /// `unknown_reason` is set, else valid.
    pub fn assemble(
        history: &History,
        workload: Workload,
        key_count: usize,
        sink: AnomalySink,
        unknown_reason: Option<String>,
    ) -> Report {
        let valid = if !sink.is_empty() {
            Validity::Invalid
        } else if unknown_reason.is_some() {
            Validity::Unknown
        } else {
            Validity::Valid
        };
        Report {
            valid,
            workload,
            event_count: history.ops().len(),
            call_count: history.calls().len(),
            key_count,
            anomaly_types: sink.counts.keys().cloned().collect(),
            anomaly_counts: sink.counts,
            anomalies: sink.anomalies,
            unknown_reason: if valid == Validity::Invalid {
                None
            } else {
                unknown_reason
            },
            model: history.model,
            nemesis_events: history.nemesis_events,
            unique_value_keys: None,
        }
    }

    /// A reason from outside the history why it cannot be called valid (the cluster did not
    /// recover, final reads failed): a valid verdict becomes unknown with it; an invalid or
    /// unknown one keeps its own.
    pub fn not_valid(&mut self, reason: String) {
        if self.valid == Validity::Valid {
            self.valid = Validity::Unknown;
            self.unknown_reason = Some(reason);
        }
    }

    /// The one-line verdict the binary prints.
    pub fn verdict_line(&self) -> String {
        match self.valid {
            Validity::Valid => {
                format!("valid ({} calls, {} keys)", self.call_count, self.key_count)
            }
            Validity::Unknown => format!(
                "unknown: {}",
                self.unknown_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            ),
            Validity::Invalid => {
                let found: Vec<String> = self
                    .anomaly_counts
                    .iter()
                    .map(|(kind, count)| format!("{kind} x{count}"))
                    .collect();
                format!("invalid: {}", found.join(", "))
            }
        }
    }
}

/// A value in EDN's spelling.
pub fn edn(value: &Value) -> String {
    let join = |items: &[Value]| items.iter().map(edn).collect::<Vec<_>>().join(" ");
    match value {
        Value::Null => "nil".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Int(number) => number.to_string(),
        Value::Float(number) => crate::value::float_text(number.0),
        Value::Str(text) => edn_string(text),
        Value::Keyword(name) => format!(":{name}"),
        Value::List(items) => format!("[{}]", join(items)),
        Value::Set(items) => format!("#{{{}}}", join(items)),
        Value::Map(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(key, value)| format!("{} {}", edn(key), edn(value)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

fn edn_string(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

impl OpRef {
    fn to_edn(&self) -> String {
        let key = self
            .key
            .as_ref()
            .map_or(String::new(), |key| format!(":key {}, ", edn(key)));
        format!(
            "{{:call {}, :process {}, :type :{}, :f :{}, {key}:value {}, :index {}, :line {}}}",
            self.call,
            self.process,
            self.outcome.name(),
            self.f.name(),
            edn(&self.value),
            self.invoke_index,
            self.line
        )
    }
}

impl Report {
    /// The result as Jepsen writes checker results: `{:valid? false, :anomaly-types [...],
    /// :anomalies {:G-single [...]}}` (`:valid? :unknown` when undecided).
    pub fn to_edn(&self) -> String {
        let valid = match self.valid {
            Validity::Valid => "true",
            Validity::Invalid => "false",
            Validity::Unknown => ":unknown",
        };
        let types: Vec<String> = self.anomaly_types.iter().map(|t| format!(":{t}")).collect();
        let mut grouped: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for anomaly in &self.anomalies {
            let ops: Vec<String> = anomaly.ops.iter().map(OpRef::to_edn).collect();
            let key = anomaly
                .key
                .as_ref()
                .map_or(String::new(), |key| format!(":key {}, ", edn(key)));
            let cycle: Vec<String> = anomaly
                .cycle
                .iter()
                .map(|step| {
                    format!(
                        "{{:from {}, :to {}, :type :{}, :explanation {}}}",
                        step.from,
                        step.to,
                        step.edge,
                        edn_string(&step.explanation)
                    )
                })
                .collect();
            grouped.entry(&anomaly.kind).or_default().push(format!(
                "{{{key}:explanation {}, :ops [{}], :cycle [{}]}}",
                edn_string(&anomaly.explanation),
                ops.join(" "),
                cycle.join(" ")
            ));
        }
        let anomalies: Vec<String> = grouped
            .iter()
            .map(|(kind, list)| format!(":{kind} [{}]", list.join("\n   ")))
            .collect();
        let counts: Vec<String> = self
            .anomaly_counts
            .iter()
            .map(|(kind, count)| format!(":{kind} {count}"))
            .collect();
        let unknown = self
            .unknown_reason
            .as_ref()
            .map_or(String::new(), |reason| {
                format!(",\n :error {}", edn_string(reason))
            });
        format!(
            "{{:valid? {valid},\n :workload :{},\n :model :{},\n :op-count {},\n \
             :anomaly-types [{}],\n :anomaly-counts {{{}}},\n :anomalies {{{}}}{unknown}}}",
            self.workload.name(),
            self.model.name(),
            self.call_count,
            types.join(" "),
            counts.join(", "),
            anomalies.join(",\n  ")
        )
    }
}
