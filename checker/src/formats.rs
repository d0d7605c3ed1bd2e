//! Readers for histories other tools recorded: Jepsen `jepsen.util` log lines, and EDN op maps
//! as Jepsen (`history.edn`, one map or `#jepsen.history.Op{...}` record per line), Knossos (a
//! vector of maps) and Porcupine's kv corpus write them. proto-docs/history.md states the rules.
//!
//! Every line must be an operation: a reader never skips a line it does not understand. Ops of
//! `:process :nemesis` are fault events, not client operations: they are skipped and counted.

use crate::edn::{Form, Reader};
use crate::history::{Format, History, HistoryError, Op, OpType, Parsed, F};
use crate::value::Value;

/// The only record tag Jepsen writes for operations.
const OP_RECORD_TAG: &str = "jepsen.history.Op";
const NEMESIS: &str = "nemesis";

fn op_type_of(value: &Value) -> Result<OpType, String> {
    match value.as_name() {
        Some("invoke") => Ok(OpType::Invoke),
        Some("ok") => Ok(OpType::Ok),
        Some("fail") => Ok(OpType::Fail),
        Some("info") => Ok(OpType::Info),
        _ => Err(format!(
            "unknown :type {value}: expected :invoke, :ok, :fail or :info"
        )),
    }
}

fn f_of(value: &Value) -> Result<F, String> {
    match value.as_name() {
        Some("read" | "get" | "r") => Ok(F::Read),
        Some("write" | "put" | "w") => Ok(F::Write),
        Some("cas") => Ok(F::Cas),
        Some("delete") => Ok(F::Delete),
        Some("append") => Ok(F::Append),
        Some("txn") => Ok(F::Txn),
        _ => Err(format!(
            "unknown :f {value} for a client operation: expected :read, :write, :cas, :txn, \
             :get, :put, :append or :delete"
        )),
    }
}

/// A client process number, or `None` for the nemesis.
fn process_of(value: &Value) -> Result<Option<u64>, String> {
    match value {
        Value::Int(number) if *number >= 0 => Ok(Some(*number as u64)),
        Value::Keyword(name) if name == NEMESIS => Ok(None),
        other => Err(format!(
            ":process {other} is neither a non-negative integer nor :nemesis"
        )),
    }
}

fn count_of(value: &Value, field: &str) -> Result<u64, String> {
    match value {
        Value::Int(number) if *number >= 0 => Ok(*number as u64),
        other => Err(format!("{field} {other} is not a non-negative integer")),
    }
}

/// An error value as text: a keyword's name (`:timed-out` is "timed-out"), else EDN.
fn error_text(value: &Value) -> String {
    match value {
        Value::Keyword(name) => name.clone(),
        Value::Str(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Parses one `jepsen.util` line: `INFO  jepsen.util - <process> <type> <f> [value]`. A keyword
/// in the value position (`:timed-out`) is the error of an `info`/`fail`, not data.
fn parse_log_line(line: &str, index: u64) -> Result<Option<Op>, String> {
    let Some((_, fields)) = line.split_once("jepsen.util - ") else {
        return Err("expected a `jepsen.util - <process> <type> <f> <value>` line".to_string());
    };
    let mut reader = Reader::new(fields);
    let field = |reader: &mut Reader, name: &str| {
        reader
            .value()
            .map_err(|error| format!("{name}: {}", error.reason))
    };
    let Some(process) = process_of(&field(&mut reader, "process")?)? else {
        return Ok(None);
    };
    let op_type = op_type_of(&field(&mut reader, "type")?)?;
    let f = f_of(&field(&mut reader, "f")?)?;
    let (value, error) = if reader.at_end() {
        (Value::Null, None)
    } else {
        match field(&mut reader, "value")? {
            Value::Keyword(name) => (Value::Null, Some(name)),
            other => (other, None),
        }
    };
    if !reader.at_end() {
        return Err("unexpected text after the value".to_string());
    }
    let op = Op {
        index,
        time: None,
        process,
        op_type,
        f,
        key: None,
        value,
        error,
    };
    Ok(Some(op))
}

/// Parses a Jepsen log: every non-blank line must be a `jepsen.util` operation line.
pub fn parse_jepsen_log(text: &str) -> Result<History, HistoryError> {
    let mut parsed = Parsed::new(Format::JepsenLog);
    for (line_index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let index = parsed.ops.len() as u64;
        match parse_log_line(line, index)
            .map_err(|reason| HistoryError::line(line_index + 1, reason))?
        {
            Some(op) => parsed.push(op, line_index + 1),
            None => parsed.nemesis_events += 1,
        }
    }
    parsed.last_line = text.lines().count();
    parsed.finish()
}

/// One op map (or `#jepsen.history.Op` record); `None` for a nemesis op.
fn edn_op(value: &Value, index: u64) -> Result<Option<Op>, String> {
    let Value::Map(entries) = value else {
        return Err(format!(
            "expected an op map {{:process .. :type .. :f ..}}, found {}",
            shorten(value)
        ));
    };
    let field = |name: &str| {
        entries
            .iter()
            .find(|(key, _)| matches!(key, Value::Keyword(k) if k == name))
            .map(|(_, value)| value)
    };
    let Some(process) = field("process") else {
        return Err("op map without :process".to_string());
    };
    let Some(process) = process_of(process)? else {
        return Ok(None);
    };
    let op_type = op_type_of(field("type").ok_or("op map without :type")?)?;
    let f = f_of(field("f").ok_or("op map without :f")?)?;
    let index = field("index").map_or(Ok(index), |value| count_of(value, ":index"))?;
    let time = field("time")
        .map(|value| count_of(value, ":time"))
        .transpose()?;
    let key = field("key").filter(|key| !key.is_null()).cloned();
    let value = field("value").cloned().unwrap_or(Value::Null);
    let error = field("error").filter(|e| !e.is_null()).map(error_text);
    let op = Op {
        index,
        time,
        process,
        op_type,
        f,
        key,
        value,
        error,
    };
    Ok(Some(op))
}

fn shorten(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn push_edn_op(parsed: &mut Parsed, value: &Value, line: usize) -> Result<(), HistoryError> {
    let index = parsed.ops.len() as u64;
    match edn_op(value, index).map_err(|reason| HistoryError::line(line, reason))? {
        Some(op) => parsed.push(op, line),
        None => parsed.nemesis_events += 1,
    }
    Ok(())
}

fn push_form(parsed: &mut Parsed, form: Form) -> Result<(), HistoryError> {
    match (&form.tag, form.value) {
        (Some(tag), _) if tag != OP_RECORD_TAG => Err(HistoryError::line(
            form.line,
            format!("unknown record #{tag}: expected #{OP_RECORD_TAG}{{...}} or an op map"),
        )),
        (Some(_), value) => push_edn_op(parsed, &value, form.line),
        (None, Value::List(items)) if !form.element_lines.is_empty() => {
            for (item, line) in items.iter().zip(form.element_lines) {
                push_edn_op(parsed, item, line)?;
            }
            Ok(())
        }
        (None, value) => push_edn_op(parsed, &value, form.line),
    }
}

/// Parses EDN ops: one map or `#jepsen.history.Op{...}` record per line (Jepsen's history.edn,
/// Porcupine's kv corpus), or vectors of maps (Knossos' data files). `jepsen.independent`
/// tuples (`:value [k v]` on every register op) become keys.
pub fn parse_edn(text: &str) -> Result<History, HistoryError> {
    let mut parsed = Parsed::new(Format::Edn);
    let mut reader = Reader::new(text);
    loop {
        let form = reader
            .next_form()
            .map_err(|error| HistoryError::line(error.line, error.reason))?;
        let Some(form) = form else { break };
        push_form(&mut parsed, form)?;
    }
    parsed.last_line = reader.line();
    split_independent_tuples(&mut parsed.ops);
    parsed.finish()
}

/// `jepsen.independent` histories carry `[key value]` as every op's value. They are told apart
/// from plain register histories by shape: every read, write and cas op has a two-element
/// vector value and no `:key`, and every cas' second element is itself a pair `[old new]` (a
/// plain cas is `[old new]` with a scalar `new`). Then the first element becomes the key.
fn split_independent_tuples(ops: &mut [Op]) {
    let pair = |value: &Value| matches!(value, Value::List(items) if items.len() == 2);
    let tuple = |op: &Op| {
        let Value::List(items) = &op.value else {
            return false;
        };
        items.len() == 2 && (op.f != F::Cas || pair(&items[1]))
    };
    let register_ops = ops
        .iter()
        .filter(|op| matches!(op.f, F::Read | F::Write | F::Cas));
    let mut any = false;
    for op in register_ops {
        if op.key.is_some() || !tuple(op) {
            return;
        }
        any = true;
    }
    if !any || ops.iter().any(|op| op.f == F::Txn) {
        return;
    }
    for op in ops.iter_mut() {
        if let Value::List(items) = std::mem::take(&mut op.value) {
            let mut items = items.into_iter();
            op.key = items.next();
            op.value = items.next().unwrap_or(Value::Null);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;

    #[test]
    fn reads_jepsen_log_lines_with_tabs_or_spaces() {
        let text = "INFO  jepsen.util - 4\t:invoke\t:cas\t[1 2]\n\
                    INFO  jepsen.util - 4   :fail   :cas    [1 2]\n\
                    INFO  jepsen.util - 0\t:invoke\t:write\t3\n\
                    INFO  jepsen.util - :nemesis\t:info\t:start\tnil\n\
                    INFO  jepsen.util - 0\t:info\t:write\t:timed-out\n";
        let history = parse_jepsen_log(text).unwrap();
        let calls = history.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(history.nemesis_events, 1);
        assert_eq!(calls[0].f, F::Cas);
        assert_eq!(calls[0].outcome, Outcome::Fail);
        assert_eq!(
            history.value(&calls[0]),
            &Value::List(vec![Value::Int(1), Value::Int(2)])
        );
        assert_eq!(calls[1].outcome, Outcome::Info);
        assert_eq!(history.error(&calls[1]), Some("timed-out"));
        assert_eq!(history.value(&calls[1]), &Value::Int(3));
    }

    #[test]
    fn reads_edn_maps_records_and_vectors() {
        let text = "{:process 0, :type :invoke, :f :append, :key \"0\", :value \"x 0 0 y\"}\n\
                    #jepsen.history.Op{:index 1, :process 0, :type :ok, :f :append, \
                    :key \"0\", :value \"x 0 0 y\"}\n\
                    [{:process 1 :type :invoke :f :read :value nil}\n\
                     {:process 1 :type :ok :f :read :value 1.5}]\n";
        let history = parse_edn(text).unwrap();
        assert_eq!(history.calls().len(), 2);
        assert_eq!(history.calls()[0].f, F::Append);
        assert_eq!(history.key(&history.calls()[0]), Some(&Value::from("0")));
        assert_eq!(history.line_of(3), 4);
    }

    #[test]
    fn independent_tuples_become_keys() {
        let text = "{:process 0, :type :invoke, :f :cas, :value [7 [1 2]]}\n\
                    {:process 0, :type :ok, :f :cas, :value [7 [1 2]]}\n\
                    {:process 1, :type :invoke, :f :read, :value [8 nil]}\n\
                    {:process 1, :type :ok, :f :read, :value [8 3]}\n";
        let history = parse_edn(text).unwrap();
        let calls = history.calls();
        assert_eq!(history.key(&calls[0]), Some(&Value::Int(7)));
        assert_eq!(history.value(&calls[1]), &Value::Int(3));
        let plain = "{:process 0, :type :invoke, :f :cas, :value [1 2]}\n\
                     {:process 0, :type :ok, :f :cas, :value [1 2]}\n";
        let history = parse_edn(plain).unwrap();
        assert_eq!(history.key(&history.calls()[0]), None);
    }

    #[test]
    fn reports_bad_lines_with_their_number() {
        let text =
            "INFO  jepsen.util - 0\t:invoke\t:read\tnil\nINFO  jepsen.util - 0\t:maybe\t:read\n";
        let error = parse_jepsen_log(text).unwrap_err();
        assert!(
            matches!(error, HistoryError::Line { line: 2, .. }),
            "{error}"
        );
        let record = "#jepsen.history.Fop{:process 0, :type :invoke, :f :read}";
        let error = parse_edn(record).unwrap_err();
        assert!(error.to_string().contains("unknown record"), "{error}");
        let unknown_f = "{:process 0, :type :invoke, :f :frobnicate}";
        let error = parse_edn(unknown_f).unwrap_err();
        assert!(error.to_string().contains("unknown :f"), "{error}");
    }
}
