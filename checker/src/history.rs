//! Histories: one operation event per line, Jepsen's field names (see proto-docs/history.md).
//!
//! An [`Op`] is one event (an invocation or a completion). [`History`] validates the events
//! once, pairs each invocation with its completion into a [`Call`], and remembers the source
//! line of every event so that every later complaint can name a line.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::formats;
use crate::value::Value;

/// The kind of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// The function an operation calls. `get`/`put` are accepted as aliases of `read`/`write`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    #[serde(alias = "get")]
    Read,
    #[serde(alias = "put")]
    Write,
    Cas,
    Delete,
    Append,
    Txn,
}

impl F {
    pub fn name(self) -> &'static str {
        match self {
            F::Read => "read",
            F::Write => "write",
            F::Cas => "cas",
            F::Delete => "delete",
            F::Append => "append",
            F::Txn => "txn",
        }
    }
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position of the event in the history; written by the recorder, echoed in reports.
    pub index: u64,
    /// Nanoseconds since the start of the run; optional, never decreasing when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    pub process: u64,
    #[serde(rename = "type")]
    pub op_type: OpType,
    pub f: F,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Value>,
    #[serde(default)]
    pub value: Value,
    /// Why a `fail` or `info` completion failed. A `fail` with an error was never executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    /// Unknown: completed with `info`, or never completed before the history ended.
    Info,
}

/// An invocation paired with its completion. Values stay in the events (histories hold
/// millions of them); [`History::value`] and friends read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub process: u64,
    pub f: F,
    /// Position of the invocation event in [`History::ops`].
    pub invoke_event: usize,
    /// Position of the completion event; `None` if the history ended first.
    pub complete_event: Option<usize>,
    pub outcome: Outcome,
}

static NULL_VALUE: Value = Value::Null;

impl Call {
    /// `true` if the call ended `ok` or `fail`, i.e. has a known return point.
    pub fn returned(&self) -> bool {
        self.outcome != Outcome::Info
    }
}

/// The input formats the checker reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Pick by the first non-empty line.
    Auto,
    /// JSON lines, proto-docs/history.md.
    Jsonl,
    /// Jepsen `jepsen.util` log lines (`INFO jepsen.util - 3 :invoke :write 4`).
    JepsenLog,
    /// One EDN op map per line (`{:process 0, :type :invoke, :f :get, :key "5", ...}`).
    Edn,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
}

impl HistoryError {
    pub fn line(line: usize, reason: impl Into<String>) -> Self {
        HistoryError::Line {
            line,
            reason: reason.into(),
        }
    }
}

/// A validated history: its events, its calls, and where each event came from.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Op>,
    calls: Vec<Call>,
    /// 1-based source line of each event, for error messages.
    lines: Vec<usize>,
    /// The value every key starts with. JSON-lines histories start at `Null` (absent);
    /// the EDN kv corpus starts every key at `""`.
    pub initial_value: Value,
}

impl History {
    /// Validates events built in memory (line numbers are positions + 1).
    pub fn from_ops(ops: Vec<Op>) -> Result<History, HistoryError> {
        let lines = (1..=ops.len()).collect();
        History::from_lines(ops, lines, Value::Null)
    }

    /// Validates events whose source lines are known.
    pub fn from_lines(
        ops: Vec<Op>,
        lines: Vec<usize>,
        initial_value: Value,
    ) -> Result<History, HistoryError> {
        assert_eq!(ops.len(), lines.len(), "one source line per event");
        let calls = pair_calls(&ops, &lines)?;
        Ok(History {
            ops,
            calls,
            lines,
            initial_value,
        })
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// The invocation's value.
    pub fn invoke_value(&self, call: &Call) -> &Value {
        &self.ops[call.invoke_event].value
    }

    /// The completion's value (`Null` without a completion).
    pub fn complete_value(&self, call: &Call) -> &Value {
        call.complete_event
            .map_or(&NULL_VALUE, |event| &self.ops[event].value)
    }

    /// The value that describes what the call did: the completion's value for `ok`
    /// (reads fill it in), the invocation's value otherwise.
    pub fn value(&self, call: &Call) -> &Value {
        match call.outcome {
            Outcome::Ok => self.complete_value(call),
            Outcome::Fail | Outcome::Info => self.invoke_value(call),
        }
    }

    /// The key named by the invocation.
    pub fn key(&self, call: &Call) -> Option<&Value> {
        self.ops[call.invoke_event].key.as_ref()
    }

    /// The completion's error, if any.
    pub fn error(&self, call: &Call) -> Option<&str> {
        call.complete_event
            .and_then(|event| self.ops[event].error.as_deref())
    }

    /// The 1-based source line of event `event`.
    pub fn line_of(&self, event: usize) -> usize {
        self.lines.get(event).copied().unwrap_or(event + 1)
    }

    /// Parses JSON-lines text (proto-docs/history.md). Large inputs are split at line
    /// boundaries and parsed on all cores: JSON decoding is most of the cost of reading.
    pub fn parse_jsonl(text: &str) -> Result<History, HistoryError> {
        let threads = std::thread::available_parallelism().map_or(1, |count| count.get());
        let chunks = split_lines(text, threads);
        let parsed: Vec<ParsedChunk> = if chunks.len() == 1 {
            vec![parse_chunk(text)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunks
                    .iter()
                    .map(|chunk| scope.spawn(|| parse_chunk(chunk)))
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| {
                        handle
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect()
            })
        };
        let mut ops = Vec::new();
        let mut lines = Vec::new();
        let mut lines_before = 0;
        for chunk in parsed {
            let (events, line_count) =
                chunk.map_err(|(line, reason)| HistoryError::line(lines_before + line, reason))?;
            for (line, mut op) in events {
                let index = op.index.take().unwrap_or(ops.len() as u64);
                ops.push(op.into_op(index));
                lines.push(lines_before + line);
            }
            lines_before += line_count;
        }
        History::from_lines(ops, lines, Value::Null)
    }

    /// Parses text in `format`.
    pub fn parse(text: &str, format: Format) -> Result<History, HistoryError> {
        match resolve_format(text, format) {
            Format::Jsonl | Format::Auto => History::parse_jsonl(text),
            Format::JepsenLog => formats::parse_jepsen_log(text),
            Format::Edn => formats::parse_edn(text),
        }
    }
}

/// Reads a JSON-lines history file.
pub fn read_jsonl(path: &Path) -> Result<History, HistoryError> {
    read(path, Format::Jsonl)
}

/// Reads a history file in `format` (`Auto` picks by content).
pub fn read(path: &Path, format: Format) -> Result<History, HistoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| HistoryError::Io {
        path: path.display().to_string(),
        source,
    })?;
    History::parse(&text, format)
}

/// Parses JSON-lines text; the same as [`History::parse_jsonl`].
pub fn parse(text: &str) -> Result<History, HistoryError> {
    History::parse_jsonl(text)
}

/// Inputs at least this large are parsed on several threads.
const PARALLEL_PARSE_BYTES_MIN: usize = 1 << 20;

/// Events of a chunk with 1-based line numbers within it, and its line count; or the first
/// bad line (within the chunk) and why.
type ParsedChunk = Result<(Vec<(usize, RawOp)>, usize), (usize, String)>;

/// Splits `text` into about `parts` pieces, each ending just after a newline.
fn split_lines(text: &str, parts: usize) -> Vec<&str> {
    if text.len() < PARALLEL_PARSE_BYTES_MIN || parts < 2 {
        return vec![text];
    }
    let mut chunks = Vec::with_capacity(parts);
    let mut rest = text;
    for part in (1..parts).rev() {
        let target = rest.len() / (part + 1);
        let Some(newline) = rest.as_bytes()[target..]
            .iter()
            .position(|&byte| byte == b'\n')
        else {
            break;
        };
        let (chunk, tail) = rest.split_at(target + newline + 1);
        chunks.push(chunk);
        rest = tail;
    }
    chunks.push(rest);
    chunks
}

fn parse_chunk(text: &str) -> ParsedChunk {
    let mut events = Vec::new();
    let mut line_count = 0;
    for (line_index, line) in text.lines().enumerate() {
        line_count = line_index + 1;
        if line.trim().is_empty() || is_nemesis_line(line) {
            continue;
        }
        let op: RawOp =
            serde_json::from_str(line).map_err(|error| (line_index + 1, error.to_string()))?;
        events.push((line_index + 1, op));
    }
    Ok((events, line_count))
}

/// The process name of fault-injection events (Jepsen's `:nemesis`).
pub const NEMESIS_PROCESS: &str = "nemesis";

/// A line of the nemesis (`"process": "nemesis"`): it records when a fault struck, not a client
/// operation, so it is skipped. The substring test keeps the cost off ordinary lines.
fn is_nemesis_line(line: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        process: serde_json::Value,
    }
    line.contains(NEMESIS_PROCESS)
        && serde_json::from_str::<Probe>(line)
            .is_ok_and(|probe| probe.process.as_str() == Some(NEMESIS_PROCESS))
}

fn resolve_format(text: &str, format: Format) -> Format {
    if format != Format::Auto {
        return format;
    }
    let first = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("");
    if first.starts_with("{:") {
        Format::Edn
    } else if first.starts_with('{') {
        Format::Jsonl
    } else {
        Format::JepsenLog
    }
}

/// The wire shape of an event: like [`Op`], but `index` may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOp {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    time: Option<u64>,
    process: u64,
    #[serde(rename = "type")]
    op_type: OpType,
    f: F,
    #[serde(default)]
    key: Option<Value>,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    error: Option<String>,
}

impl RawOp {
    fn into_op(self, index: u64) -> Op {
        Op {
            index,
            time: self.time,
            process: self.process,
            op_type: self.op_type,
            f: self.f,
            key: self.key.filter(|key| !key.is_null()),
            value: self.value,
            error: self.error,
        }
    }
}

/// Pairs invocations with completions, checking the per-process protocol.
fn pair_calls(ops: &[Op], lines: &[usize]) -> Result<Vec<Call>, HistoryError> {
    let mut calls: Vec<Call> = Vec::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut time_last: Option<u64> = None;
    for (event, op) in ops.iter().enumerate() {
        let line = lines[event];
        if let (Some(previous), Some(now)) = (time_last, op.time) {
            if now < previous {
                let reason = format!("time {now} is before the previous event's time {previous}");
                return Err(HistoryError::line(line, reason));
            }
        }
        time_last = op.time.or(time_last);
        if op.op_type == OpType::Invoke {
            if let Some(&call) = open.get(&op.process) {
                let other = lines[calls[call].invoke_event];
                let reason = format!(
                    "process {} invokes again while its call from line {other} is open",
                    op.process
                );
                return Err(HistoryError::line(line, reason));
            }
            open.insert(op.process, calls.len());
            calls.push(new_call(op, event));
            continue;
        }
        let Some(call_index) = open.remove(&op.process) else {
            let reason = format!(
                "completion for process {} without an open invoke",
                op.process
            );
            return Err(HistoryError::line(line, reason));
        };
        let invoke = &ops[calls[call_index].invoke_event];
        complete_call(&mut calls[call_index], invoke, op, event, line)?;
    }
    Ok(calls)
}

fn new_call(op: &Op, event: usize) -> Call {
    Call {
        process: op.process,
        f: op.f,
        invoke_event: event,
        complete_event: None,
        outcome: Outcome::Info,
    }
}

fn complete_call(
    call: &mut Call,
    invoke: &Op,
    op: &Op,
    event: usize,
    line: usize,
) -> Result<(), HistoryError> {
    if op.f != call.f {
        let reason = format!(
            "completion f {} does not match invoke f {}",
            op.f.name(),
            call.f.name()
        );
        return Err(HistoryError::line(line, reason));
    }
    if op.key.is_some() && op.key != invoke.key {
        return Err(HistoryError::line(
            line,
            "completion key does not match its invoke key",
        ));
    }
    call.complete_event = Some(event);
    call.outcome = match op.op_type {
        OpType::Ok => Outcome::Ok,
        OpType::Fail => Outcome::Fail,
        OpType::Info | OpType::Invoke => Outcome::Info,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_invocations_with_completions() {
        let text = r#"
{"index":0,"process":1,"type":"invoke","f":"write","key":"a","value":3}
{"index":1,"process":2,"type":"invoke","f":"read","key":"a","value":null}
{"index":2,"process":1,"type":"ok","f":"write","key":"a","value":3}
{"index":3,"process":2,"type":"info","f":"read","key":"a","value":null,"error":"timeout"}
{"index":4,"process":3,"type":"invoke","f":"get","key":"a"}
"#;
        let history = History::parse_jsonl(text).unwrap();
        assert_eq!(history.ops().len(), 5);
        let calls = history.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].outcome, Outcome::Ok);
        assert_eq!(calls[0].complete_event, Some(2));
        assert_eq!(calls[1].outcome, Outcome::Info);
        assert_eq!(history.error(&calls[1]), Some("timeout"));
        assert_eq!(calls[2].f, F::Read);
        assert_eq!(calls[2].complete_event, None);
        assert_eq!(history.line_of(2), 4);
    }

    #[test]
    fn nemesis_lines_are_skipped_but_count_as_lines() {
        let text = r#"
{"index":0,"time":5,"process":1,"type":"invoke","f":"write","key":"a","value":3}
{"process":"nemesis","type":"invoke","f":"kill","value":{"targets":[2]},"time":9}
{"index":1,"time":12,"process":1,"type":"ok","f":"write","key":"a","value":3}
{"process":"nemesis","type":"info","f":"kill","value":{"targets":[2]},"time":3}
"#;
        let history = History::parse_jsonl(text).unwrap();
        assert_eq!(history.ops().len(), 2);
        assert_eq!(history.line_of(1), 4);
        let other = text.replace(r#""process":"nemesis""#, r#""process":"chaos""#);
        assert!(History::parse_jsonl(&other).is_err());
    }

    #[test]
    fn rejects_completion_without_invoke_with_its_line() {
        let text = "{\"index\":0,\"process\":1,\"type\":\"ok\",\"f\":\"write\",\"value\":1}\n";
        let error = History::parse_jsonl(text).unwrap_err();
        assert!(
            matches!(error, HistoryError::Line { line: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn rejects_unknown_type_and_truncated_line() {
        let unknown = "{\"process\":1,\"type\":\"maybe\",\"f\":\"read\"}";
        let error = History::parse_jsonl(unknown).unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
        let truncated = "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\"}\n{\"process\":1,\"ty";
        let error = History::parse_jsonl(truncated).unwrap_err();
        assert!(
            matches!(error, HistoryError::Line { line: 2, .. }),
            "{error}"
        );
    }

    #[test]
    fn parallel_parse_keeps_order_and_line_numbers() {
        let line = "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\"}\n\
                    {\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"value\":null}\n";
        let count = PARALLEL_PARSE_BYTES_MIN / line.len() + 100;
        let mut text = line.repeat(count);
        let history = History::parse_jsonl(&text).unwrap();
        assert_eq!(history.ops().len(), 2 * count);
        assert_eq!(history.ops()[2 * count - 1].index, (2 * count - 1) as u64);
        assert_eq!(history.line_of(2 * count - 1), 2 * count);
        text.push_str("{\"process\":1,\"type\":\"ok\"");
        let error = History::parse_jsonl(&text).unwrap_err();
        assert!(
            matches!(error, HistoryError::Line { line, .. } if line == 2 * count + 1),
            "{error}"
        );
        assert_eq!(split_lines(&text, 2).concat(), text);
    }

    #[test]
    fn rejects_time_going_backwards() {
        let text = "{\"time\":5,\"process\":1,\"type\":\"invoke\",\"f\":\"read\"}\n\
                    {\"time\":4,\"process\":1,\"type\":\"ok\",\"f\":\"read\"}";
        let error = History::parse_jsonl(text).unwrap_err();
        assert!(
            matches!(error, HistoryError::Line { line: 2, .. }),
            "{error}"
        );
    }
}
