//! Histories: one operation event per line, Jepsen's field names (see proto-docs/history.md).
//!
//! An [`Op`] is one event (an invocation or a completion). [`History`] validates the events
//! once, pairs each invocation with its completion into a [`Call`], and remembers the source
//! line of every event so that every later complaint can name a line.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::formats;
use crate::report::Workload;
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

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        }
    }
}

impl Call {
    /// `true` if the call ended `ok` or `fail`, i.e. has a known return point.
    pub fn returned(&self) -> bool {
        self.outcome != Outcome::Info
    }
}

/// The input formats the checker reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Pick by the first non-blank line; a line that fits no format is an error.
    Auto,
    /// JSON lines, proto-docs/history.md.
    Jsonl,
    /// Jepsen `jepsen.util` log lines (`INFO jepsen.util - 3 :invoke :write 4`).
    JepsenLog,
    /// EDN op maps or `#jepsen.history.Op{...}` records, one per line (Jepsen's history.edn),
    /// or vectors of them (Knossos' data files).
    Edn,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Jsonl => "jsonl",
            Format::JepsenLog => "jepsen-log",
            Format::Edn => "edn",
        }
    }

    /// The register semantics a format's writers meant (`--model` overrides it).
    pub fn model_default(self) -> Model {
        match self {
            Format::Edn => Model::Knossos,
            Format::Auto | Format::Jsonl | Format::JepsenLog => Model::Porcupine,
        }
    }
}

/// Which register semantics apply to `fail` and to reads of `nil` (proto-docs/history.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// Jepsen/Knossos `cas-register`: every `fail` certainly did not happen; an `ok` read of nil
    /// constrains nothing; registers start at nil. The default for EDN.
    Knossos,
    /// Porcupine's models, and ours (JSON lines, Jepsen log lines): a `fail` cas without an error
    /// ran and found another value; a read of nil means "never written". EDN checked as `kv`
    /// starts every key at "" (Porcupine's kv model), everything else at nil.
    Porcupine,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::Knossos => "knossos",
            Model::Porcupine => "porcupine",
        }
    }
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

/// The first line of a JSON-lines history written by bench: `{"workload":"register"}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// One of the workload names bench and checker share (`register`, `list-append`, `kv`,
    /// and bench's `put`, `get`, `mixed`, which are checked as `kv`).
    pub workload: String,
    /// Format version; 1.
    #[serde(default)]
    pub version: Option<u64>,
}

/// Events read by a reader, before they are paired into calls.
pub(crate) struct Parsed {
    pub ops: Vec<Op>,
    pub lines: Vec<usize>,
    pub format: Format,
    pub nemesis_events: usize,
    pub workload: Option<Workload>,
    /// The number of the last line of the input, for "no client operation" errors.
    pub last_line: usize,
}

impl Parsed {
    pub fn new(format: Format) -> Self {
        Parsed {
            ops: Vec::new(),
            lines: Vec::new(),
            format,
            nemesis_events: 0,
            workload: None,
            last_line: 0,
        }
    }

    pub fn push(&mut self, op: Op, line: usize) {
        self.ops.push(op);
        self.lines.push(line);
    }

    /// Pairs the events; a history without a client operation is an error, never "valid".
    pub fn finish(self) -> Result<History, HistoryError> {
        if self.ops.is_empty() {
            let line = self.last_line.max(1);
            let reason = if self.nemesis_events > 0 {
                format!(
                    "the history has no client operation (only {} nemesis events)",
                    self.nemesis_events
                )
            } else {
                "the history is empty: no client operation".to_string()
            };
            return Err(HistoryError::line(line, reason));
        }
        let model = self.format.model_default();
        let mut history = History::from_lines(self.ops, self.lines, Value::Null)?;
        history.format = self.format;
        history.nemesis_events = self.nemesis_events;
        history.workload = self.workload;
        history.set_model(model);
        Ok(history)
    }
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
#[derive(Clone, Debug)]
pub struct History {
    ops: Vec<Op>,
    calls: Vec<Call>,
    /// 1-based source line of each event, for error messages.
    lines: Vec<usize>,
    /// The value every key starts with: `Null` (absent), or `""` for EDN checked as `kv` under
    /// Porcupine's model (see [`History::porcupine_string_kv`]).
    pub initial_value: Value,
    /// The register semantics (see [`Model`]).
    pub model: Model,
    /// The format the history was read in.
    pub format: Format,
    /// Fault events (process `nemesis`) that were skipped.
    pub nemesis_events: usize,
    /// The workload the history's header names, if it has one.
    pub workload: Option<Workload>,
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
            model: Model::Porcupine,
            format: Format::Jsonl,
            nemesis_events: 0,
            workload: None,
        })
    }

    /// Applies `model`'s semantics.
    pub fn set_model(&mut self, model: Model) {
        self.model = model;
    }

    /// Porcupine's kv model (its EDN corpus) starts every key at `""`, not nil.
    pub fn porcupine_string_kv(&self, workload: Workload) -> bool {
        self.model == Model::Porcupine && self.format == Format::Edn && workload == Workload::Kv
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
        let (workload, body_start, header_lines) = read_header(text)?;
        let body = &text[body_start..];
        let threads = std::thread::available_parallelism().map_or(1, |count| count.get());
        let chunks = split_lines(body, threads);
        let parsed: Vec<ParsedChunk> = if chunks.len() == 1 {
            vec![parse_chunk(body)]
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
        let mut result = Parsed::new(Format::Jsonl);
        result.workload = workload;
        let mut lines_before = header_lines;
        for chunk in parsed {
            let chunk =
                chunk.map_err(|(line, reason)| HistoryError::line(lines_before + line, reason))?;
            result.nemesis_events += chunk.nemesis_events;
            for (line, mut op) in chunk.events {
                let index = op.index.take().unwrap_or(result.ops.len() as u64);
                result.push(op.into_op(index), lines_before + line);
            }
            lines_before += chunk.line_count;
        }
        result.last_line = lines_before;
        result.finish()
    }

    /// Parses text in `format`.
    pub fn parse(text: &str, format: Format) -> Result<History, HistoryError> {
        match resolve_format(text, format)? {
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

/// Events of a chunk with 1-based line numbers within it, its line count and its nemesis
/// events; or the first bad line (within the chunk) and why.
type ParsedChunk = Result<Chunk, (usize, String)>;

struct Chunk {
    events: Vec<(usize, RawOp)>,
    line_count: usize,
    nemesis_events: usize,
}

/// The header line, if the first non-blank line is one: its workload, the byte offset of the
/// rest, and the lines it covered.
fn read_header(text: &str) -> Result<(Option<Workload>, usize, usize), HistoryError> {
    let mut offset = 0;
    for (line_index, line) in text.split_inclusive('\n').enumerate() {
        offset += line.len();
        if line.trim().is_empty() {
            continue;
        }
        let looks_like_header = line.contains("\"workload\"") && !line.contains("\"process\"");
        if !looks_like_header {
            return Ok((None, 0, 0));
        }
        let header: Header = serde_json::from_str(line).map_err(|error| {
            HistoryError::line(line_index + 1, format!("bad header line: {error}"))
        })?;
        let Some(workload) = Workload::from_name(&header.workload) else {
            let reason = format!(
                "header names unknown workload \"{}\" (expected one of {})",
                header.workload,
                Workload::NAMES.join(", ")
            );
            return Err(HistoryError::line(line_index + 1, reason));
        };
        return Ok((Some(workload), offset, line_index + 1));
    }
    Ok((None, 0, 0))
}

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
    let mut chunk = Chunk {
        events: Vec::new(),
        line_count: 0,
        nemesis_events: 0,
    };
    for (line_index, line) in text.lines().enumerate() {
        chunk.line_count = line_index + 1;
        if line.trim().is_empty() {
            continue;
        }
        if is_nemesis_line(line) {
            chunk.nemesis_events += 1;
            continue;
        }
        let op: RawOp = serde_json::from_str(line).map_err(|error| {
            let reason = format!("expected a JSON object with one event: {error}");
            (line_index + 1, reason)
        })?;
        chunk.events.push((line_index + 1, op));
    }
    Ok(chunk)
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

/// Picks the format by the first non-blank line that is not an EDN comment. Never guesses: a
/// line that fits no format is an error naming it.
fn resolve_format(text: &str, format: Format) -> Result<Format, HistoryError> {
    if format != Format::Auto {
        return Ok(format);
    }
    let first = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .find(|(_, line)| !line.is_empty() && !line.starts_with(';'));
    let Some((line, first)) = first else {
        let line = text.lines().count().max(1);
        return Err(HistoryError::line(
            line,
            "the history is empty: no client operation",
        ));
    };
    let compact: String = first.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.starts_with("{\"") {
        Ok(Format::Jsonl)
    } else if compact.starts_with("{:") || compact.starts_with('#') || compact.starts_with("[{:") {
        Ok(Format::Edn)
    } else if compact.starts_with("[{\"") {
        let reason = "a JSON array: write one JSON object per line (JSON lines), not a list";
        Err(HistoryError::line(line, reason))
    } else if first.contains("jepsen.util - ") {
        Ok(Format::JepsenLog)
    } else {
        let reason = format!(
            "cannot tell the format from `{}`: expected a JSON object (JSON lines), an EDN op \
             map or #jepsen.history.Op record, or a `jepsen.util -` log line",
            first.chars().take(40).collect::<String>()
        );
        Err(HistoryError::line(line, reason))
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
    /// When an open-loop load meant to send the invocation (bench's latency reports count
    /// from it). Not used here: the op could not take effect before `time`, when it was sent.
    #[serde(default, rename = "intended_time")]
    _intended_time: Option<u64>,
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
