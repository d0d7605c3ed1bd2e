//! Builders for hand-made histories.
#![allow(dead_code, clippy::unwrap_used)]

use checker::history::{History, Op, OpType, F};
use checker::Value;

/// Events collected with explicit times, sorted (invocations first on ties) when built.
#[derive(Default)]
pub struct Builder {
    events: Vec<(u64, u8, Op)>,
}

pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn op(process: u64, op_type: OpType, f: F, key: Option<Value>, value: Value) -> Op {
    Op {
        index: 0,
        time: None,
        process,
        op_type,
        f,
        key,
        value,
        error: None,
    }
}

impl Builder {
    /// One call: invoked at `start`, completed at `end` with `outcome` ("ok" | "fail" |
    /// "info" | "none" for never completed). `invoke_value` goes on the invocation,
    /// `complete_value` on the completion.
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &mut self,
        process: u64,
        start: u64,
        end: u64,
        outcome: &str,
        f: F,
        key: Option<Value>,
        invoke_value: Value,
        complete_value: Value,
    ) -> &mut Self {
        assert!(start <= end);
        let invoke = op(process, OpType::Invoke, f, key.clone(), invoke_value);
        self.events.push((start, 0, invoke));
        let op_type = match outcome {
            "ok" => OpType::Ok,
            "fail" => OpType::Fail,
            "info" => OpType::Info,
            _ => return self,
        };
        self.events
            .push((end, 1, op(process, op_type, f, key, complete_value)));
        self
    }

    /// A list-append transaction; `mops` is JSON with read results filled in. The invocation
    /// carries the same micro-ops with every read result replaced by null.
    pub fn txn(
        &mut self,
        process: u64,
        start: u64,
        end: u64,
        outcome: &str,
        mops: &str,
    ) -> &mut Self {
        let complete = json(mops);
        let Value::List(items) = &complete else {
            panic!("mops must be a list")
        };
        let blanked: Vec<Value> = items
            .iter()
            .map(|mop| match mop {
                Value::List(parts) if parts[0] == Value::from("r") => {
                    Value::List(vec![parts[0].clone(), parts[1].clone(), Value::Null])
                }
                other => other.clone(),
            })
            .collect();
        let invoke = Value::List(blanked);
        let complete = if outcome == "ok" {
            complete
        } else {
            invoke.clone()
        };
        self.call(process, start, end, outcome, F::Txn, None, invoke, complete)
    }

    /// A single-key register/kv call; for reads `value` is the result.
    #[allow(clippy::too_many_arguments)]
    pub fn kv(
        &mut self,
        process: u64,
        start: u64,
        end: u64,
        outcome: &str,
        f: F,
        key: &str,
        value: &str,
    ) -> &mut Self {
        let value = json(value);
        let key = Some(Value::from(key));
        let invoke_value = if f == F::Read {
            Value::Null
        } else {
            value.clone()
        };
        self.call(process, start, end, outcome, f, key, invoke_value, value)
    }

    pub fn build(&self) -> History {
        let mut events: Vec<&(u64, u8, Op)> = self.events.iter().collect();
        events.sort_by_key(|(time, kind, _)| (*time, *kind));
        let ops = events
            .into_iter()
            .enumerate()
            .map(|(index, (time, _, op))| Op {
                index: index as u64,
                time: Some(*time),
                ..op.clone()
            })
            .collect();
        History::from_ops(ops).unwrap()
    }
}
