//! The history recorder: every operation as an `invoke` line before its request is sent and
//! exactly one completion line after its answer (proto-docs/history.md).
//!
//! Lines are written under one lock that also assigns `index` and `time`, so the line order is
//! the real-time order the checker relies on. An invocation is a `Pending` that must be
//! completed; one dropped without a completion (a cancelled task, a panic) records `info`, so a
//! history is complete whatever happens to the worker.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use checker::history::{Op, OpType, F};
use checker::Value;

/// Error text of the `info` a dropped `Pending` records.
pub const DROPPED_ERROR: &str = "abandoned: the worker stopped before the answer";

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("history event could not be encoded: {0}")]
    Encode(String),
    #[error("{0} invocations were never completed")]
    Incomplete(u64),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Took effect; `value` is the result (reads fill in what they saw).
    Ok(Value),
    /// Certainly did not take effect. `error: None` only for a cas whose compare failed.
    Fail { value: Value, error: Option<String> },
    /// Unknown outcome.
    Info { error: String },
}

/// Where the lines go.
enum Sink {
    File {
        path: String,
        writer: BufWriter<File>,
    },
    Memory(Vec<Op>),
    /// Nowhere: `--history off` (events are still counted and completions still checked).
    Discard,
}

/// A history line: the event, and for an invocation of an open-loop load the time it was due
/// (`intended_time`, nanoseconds on the same axis as `time`). Latency that clients felt counts
/// from it: an op due during an outage is sent late, and its `time` alone would hide the wait.
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    op: &'a Op,
    #[serde(skip_serializing_if = "Option::is_none")]
    intended_time: Option<u64>,
}

struct State {
    sink: Sink,
    next_index: u64,
    open: u64,
    /// The first write error; later writes are skipped and `finish` reports it.
    failure: Option<HistoryError>,
}

/// Records one history. Share it as `Arc<Recorder>`.
pub struct Recorder {
    start: Instant,
    /// Whether events are kept (not `Sink::Discard`): a discarding recorder only counts them,
    /// building no event, taking no clock reading and cloning no value.
    keeps: bool,
    /// Wall-clock time of `start`, to place faults and metrics samples on the history's axis.
    start_unix_ms: u64,
    state: Mutex<State>,
}

/// An invocation waiting for its completion.
#[must_use = "a Pending records `info` if dropped without `complete`"]
pub struct Pending {
    recorder: Arc<Recorder>,
    process: u64,
    f: F,
    /// The invocation's key (`None` if the recorder discards events).
    key: Option<Value>,
    /// The invocation's value, repeated on `info` completions (`Null` if the recorder
    /// discards events).
    value: Value,
    done: bool,
}

/// What a finished recorder wrote.
#[derive(Debug)]
pub struct Recorded {
    pub events: u64,
    /// The events, if recorded in memory.
    pub ops: Vec<Op>,
}

impl Recorder {
    /// Writes `history.jsonl` lines to `path` (created or truncated), starting with the header
    /// that names the workload (`{"workload":"register","version":1}`), so the checker needs
    /// no flag and refuses a contradicting one.
    pub fn create(path: &Path, workload: &str) -> Result<Arc<Recorder>, HistoryError> {
        let shown = path.display().to_string();
        let io_error = |source| HistoryError::Io {
            path: shown.clone(),
            source,
        };
        let file = File::create(path).map_err(io_error)?;
        let mut writer = BufWriter::new(file);
        let header = checker::history::Header {
            workload: workload.to_string(),
            version: Some(1),
        };
        let line =
            serde_json::to_string(&header).map_err(|e| HistoryError::Encode(e.to_string()))?;
        writeln!(writer, "{line}").map_err(io_error)?;
        let sink = Sink::File {
            path: shown,
            writer,
        };
        Ok(Recorder::with_sink(sink))
    }

    /// Keeps the events in memory (tests, and callers that check without a file).
    pub fn in_memory() -> Arc<Recorder> {
        Recorder::with_sink(Sink::Memory(Vec::new()))
    }

    /// Records nothing (a pure throughput run with `--history off`).
    pub fn discard() -> Arc<Recorder> {
        Recorder::with_sink(Sink::Discard)
    }

    fn with_sink(sink: Sink) -> Arc<Recorder> {
        let keeps = !matches!(sink, Sink::Discard);
        let state = State {
            sink,
            next_index: 0,
            open: 0,
            failure: None,
        };
        let start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Arc::new(Recorder {
            start: Instant::now(),
            keeps,
            start_unix_ms,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an invocation now; call it just before sending the request. `intended`: when
    /// an open-loop load meant to send it (at or before now).
    pub fn invoke(
        self: &Arc<Self>,
        process: u64,
        f: F,
        key: &Option<Value>,
        value: &Value,
        intended: Option<Instant>,
    ) -> Pending {
        let mut pending = Pending {
            recorder: self.clone(),
            process,
            f,
            key: None,
            value: Value::Null,
            done: false,
        };
        if !self.keeps {
            let mut state = self.lock();
            state.open += 1;
            state.next_index += 1;
            return pending;
        }
        let intended_time = intended.map(|at| {
            let since = at.saturating_duration_since(self.start);
            since.as_nanos() as u64
        });
        let mut state = self.lock();
        state.open += 1;
        let op = self.event(
            &mut state,
            process,
            OpType::Invoke,
            f,
            key,
            value.clone(),
            None,
        );
        state.write(op, intended_time);
        drop(state);
        pending.key = key.clone();
        pending.value = value.clone();
        pending
    }

    /// Milliseconds since the Unix epoch at the history's time 0.
    pub fn start_unix_ms(&self) -> u64 {
        self.start_unix_ms
    }

    /// Writes a line that is not a client operation (a nemesis event, process `"nemesis"`) in
    /// its real-time place among the others, with `time` set now. It takes no `index`: the
    /// checker skips such lines, and client events keep their positions.
    pub fn note(&self, mut fields: serde_json::Map<String, serde_json::Value>) {
        let mut state = self.lock();
        let time = self.start.elapsed().as_nanos() as u64;
        fields.insert("time".to_string(), time.into());
        if let Sink::File { .. } = state.sink {
            match serde_json::to_string(&fields) {
                Ok(line) => state.write_line(&line),
                Err(error) => state.failure = Some(HistoryError::Encode(error.to_string())),
            }
        }
    }

    /// Flushes the file; fails if any event could not be written or an invocation is open.
    pub fn finish(&self) -> Result<Recorded, HistoryError> {
        let mut state = self.lock();
        if let Some(failure) = state.failure.take() {
            return Err(failure);
        }
        if state.open > 0 {
            return Err(HistoryError::Incomplete(state.open));
        }
        let events = state.next_index;
        let ops = match &mut state.sink {
            Sink::File { path, writer } => {
                writer.flush().map_err(|source| HistoryError::Io {
                    path: path.clone(),
                    source,
                })?;
                Vec::new()
            }
            Sink::Memory(ops) => std::mem::take(ops),
            Sink::Discard => Vec::new(),
        };
        Ok(Recorded { events, ops })
    }

    #[allow(clippy::too_many_arguments)] // one event's fields; a struct would only rename them
    fn event(
        &self,
        state: &mut State,
        process: u64,
        op_type: OpType,
        f: F,
        key: &Option<Value>,
        value: Value,
        error: Option<String>,
    ) -> Op {
        let index = state.next_index;
        state.next_index += 1;
        Op {
            index,
            time: Some(self.start.elapsed().as_nanos() as u64),
            process,
            op_type,
            f,
            key: key.clone(),
            value,
            error,
        }
    }
}

impl State {
    fn write_line(&mut self, line: &str) {
        if self.failure.is_some() {
            return;
        }
        if let Sink::File { path, writer } = &mut self.sink {
            let result = writer
                .write_all(line.as_bytes())
                .and_then(|()| writer.write_all(b"\n"));
            if let Err(source) = result {
                let path = path.clone();
                self.failure = Some(HistoryError::Io { path, source });
            }
        }
    }

    fn write(&mut self, op: Op, intended_time: Option<u64>) {
        if self.failure.is_some() {
            return;
        }
        let result = match &mut self.sink {
            Sink::Memory(ops) => {
                ops.push(op);
                Ok(())
            }
            Sink::Discard => Ok(()),
            Sink::File { path, writer } => serde_json::to_writer(
                &mut *writer,
                &Line {
                    op: &op,
                    intended_time,
                },
            )
            .map_err(|error| HistoryError::Encode(error.to_string()))
            .and_then(|()| {
                writer.write_all(b"\n").map_err(|source| HistoryError::Io {
                    path: path.clone(),
                    source,
                })
            }),
        };
        if let Err(error) = result {
            self.failure = Some(error);
        }
    }
}

impl Pending {
    pub fn process(&self) -> u64 {
        self.process
    }

    /// Records the completion now; call it just after the answer arrived.
    pub fn complete(mut self, completion: Completion) {
        self.record(completion);
    }

    fn record(&mut self, completion: Completion) {
        if self.done {
            return;
        }
        self.done = true;
        if !self.recorder.keeps {
            let mut state = self.recorder.lock();
            state.open -= 1;
            state.next_index += 1;
            return;
        }
        let (op_type, value, error) = match completion {
            Completion::Ok(value) => (OpType::Ok, value, None),
            Completion::Fail { value, error } => (OpType::Fail, value, error),
            Completion::Info { error } => (OpType::Info, self.value.clone(), Some(error)),
        };
        let recorder = self.recorder.clone();
        let mut state = recorder.lock();
        state.open -= 1;
        let op = recorder.event(
            &mut state,
            self.process,
            op_type,
            self.f,
            &self.key,
            value,
            error,
        );
        state.write(op, None);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let error = DROPPED_ERROR.to_string();
            self.record(Completion::Info { error });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Random interleavings of invocations, completions of every kind and drops: every
    /// invocation gets exactly one completion, and the checker's parser accepts the history.
    #[test]
    fn recorder_every_invoke_has_exactly_one_completion() {
        let mut rng = Rng::new(42);
        let recorder = Recorder::in_memory();
        let mut open: Vec<Option<Pending>> = (0..8).map(|_| None).collect();
        for step in 0..2_000i64 {
            let process = rng.below(8) as usize;
            match open[process].take() {
                None => {
                    let key = Some(Value::Int(step % 3));
                    let pending =
                        recorder.invoke(process as u64, F::Write, &key, &Value::Int(step), None);
                    open[process] = Some(pending);
                }
                Some(pending) => match rng.below(4) {
                    0 => pending.complete(Completion::Ok(Value::Int(step))),
                    1 => pending.complete(Completion::Fail {
                        value: Value::Null,
                        error: Some("not leader".into()),
                    }),
                    2 => pending.complete(Completion::Info {
                        error: "timeout".into(),
                    }),
                    _ => drop(pending),
                },
            }
        }
        assert!(matches!(
            recorder.finish(),
            Err(HistoryError::Incomplete(_))
        ));
        open.clear();
        let recorded = recorder.finish().unwrap();
        let ops = recorded.ops;
        assert_eq!(recorded.events as usize, ops.len());
        let invokes = ops.iter().filter(|op| op.op_type == OpType::Invoke).count();
        assert_eq!(invokes * 2, ops.len());
        for (position, op) in ops.iter().enumerate() {
            assert_eq!(op.index, position as u64);
        }
        let times: Vec<u64> = ops.iter().map(|op| op.time.unwrap()).collect();
        assert!(times.windows(2).all(|pair| pair[0] <= pair[1]));
        let history = checker::History::from_ops(ops).unwrap();
        assert_eq!(history.calls().len(), invokes);
        assert!(history
            .calls()
            .iter()
            .all(|call| call.complete_event.is_some()));
    }

    /// A discarding recorder (`--history off`) keeps nothing but still counts every event
    /// and still refuses to finish with an invocation open.
    #[test]
    fn discarding_recorder_counts_events_and_open_invocations() {
        let recorder = Recorder::discard();
        let key = Some(Value::Int(1));
        let completed = recorder.invoke(0, F::Write, &key, &Value::Int(7), None);
        let dropped = recorder.invoke(1, F::Read, &key, &Value::Null, None);
        let open = recorder.invoke(2, F::Read, &key, &Value::Null, None);
        completed.complete(Completion::Ok(Value::Int(7)));
        drop(dropped);
        assert!(matches!(
            recorder.finish(),
            Err(HistoryError::Incomplete(1))
        ));
        open.complete(Completion::Info {
            error: "timeout".into(),
        });
        let recorded = recorder.finish().unwrap();
        assert_eq!(recorded.events, 6);
        assert!(recorded.ops.is_empty());
    }

    #[test]
    fn info_repeats_the_invocation_value_and_drop_names_the_reason() {
        let recorder = Recorder::in_memory();
        let value = Value::List(vec![Value::Int(1), Value::Int(2)]);
        let pending = recorder.invoke(3, F::Cas, &Some(Value::Int(0)), &value, None);
        drop(pending);
        let ops = recorder.finish().unwrap().ops;
        assert_eq!(ops[1].op_type, OpType::Info);
        assert_eq!(ops[1].value, value);
        assert_eq!(ops[1].error.as_deref(), Some(DROPPED_ERROR));
    }

    #[test]
    fn file_history_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let recorder = Recorder::create(&path, "register").unwrap();
        recorder
            .invoke(0, F::Read, &Some(Value::Int(1)), &Value::Null, None)
            .complete(Completion::Ok(Value::Int(5)));
        // Due a while ago (an open-loop op held up by an outage).
        let due = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        recorder
            .invoke(1, F::Read, &Some(Value::Int(1)), &Value::Null, Some(due))
            .complete(Completion::Ok(Value::Int(5)));
        assert_eq!(recorder.finish().unwrap().events, 4);
        let lines: Vec<serde_json::Value> = (std::fs::read_to_string(&path).unwrap().lines())
            .skip(1)
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert!(lines[0].get("intended_time").is_none());
        let (intended, sent) = (
            lines[2]["intended_time"].as_u64(),
            lines[2]["time"].as_u64(),
        );
        assert!(
            intended.unwrap() + 20_000_000 <= sent.unwrap(),
            "{:?}",
            lines[2]
        );
        let history = checker::history::read_jsonl(&path).unwrap();
        assert_eq!(history.calls().len(), 2);
        assert_eq!(history.workload, Some(checker::Workload::Register));
    }
}
