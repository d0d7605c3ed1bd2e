//! Readers for histories other tools recorded: Jepsen `jepsen.util` log lines and EDN op maps
//! (the two formats of the Porcupine corpus; its README states the semantics followed here).

use crate::history::{History, HistoryError, Op, OpType, F};
use crate::value::Value;

/// A parsed EDN value. Keywords stay distinct from strings because `:timed-out` in a value
/// position means "no value, this is an error", while `"timed-out"` would be data.
#[derive(Debug, Clone, PartialEq)]
enum Edn {
    Data(Value),
    Keyword(String),
    Map(Vec<(Edn, Edn)>),
}

struct EdnReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> EdnReader<'a> {
    fn new(text: &'a str) -> Self {
        EdnReader {
            bytes: text.as_bytes(),
            position: 0,
        }
    }

    fn skip_space(&mut self) {
        while let Some(&byte) = self.bytes.get(self.position) {
            if byte.is_ascii_whitespace() || byte == b',' {
                self.position += 1;
            } else {
                break;
            }
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_space();
        self.position >= self.bytes.len()
    }

    fn read(&mut self) -> Result<Edn, String> {
        self.skip_space();
        let Some(&byte) = self.bytes.get(self.position) else {
            return Err("unexpected end of line".to_string());
        };
        match byte {
            b'"' => self.read_string().map(|text| Edn::Data(Value::Str(text))),
            b'[' | b'(' => self.read_list(if byte == b'[' { b']' } else { b')' }),
            b'{' => self.read_map(),
            b':' => {
                self.position += 1;
                Ok(Edn::Keyword(self.read_token()))
            }
            _ => Self::atom(&self.read_token()),
        }
    }

    fn read_token(&mut self) -> String {
        let start = self.position;
        while let Some(&byte) = self.bytes.get(self.position) {
            if byte.is_ascii_whitespace() || b",[](){}\"".contains(&byte) {
                break;
            }
            self.position += 1;
        }
        String::from_utf8_lossy(&self.bytes[start..self.position]).into_owned()
    }

    fn atom(token: &str) -> Result<Edn, String> {
        match token {
            "nil" => Ok(Edn::Data(Value::Null)),
            "true" => Ok(Edn::Data(Value::Bool(true))),
            "false" => Ok(Edn::Data(Value::Bool(false))),
            "" => Err("expected a value".to_string()),
            _ => token
                .parse::<i64>()
                .map(|number| Edn::Data(Value::Int(number)))
                .map_err(|_| format!("unsupported EDN token {token:?}")),
        }
    }

    fn read_string(&mut self) -> Result<String, String> {
        self.position += 1;
        let mut text = Vec::new();
        while let Some(&byte) = self.bytes.get(self.position) {
            self.position += 1;
            match byte {
                b'"' => return Ok(String::from_utf8_lossy(&text).into_owned()),
                b'\\' => {
                    let escaped = *self.bytes.get(self.position).ok_or("unterminated string")?;
                    self.position += 1;
                    text.push(match escaped {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                }
                other => text.push(other),
            }
        }
        Err("unterminated string".to_string())
    }

    fn read_list(&mut self, close: u8) -> Result<Edn, String> {
        self.position += 1;
        let mut items = Vec::new();
        loop {
            self.skip_space();
            match self.bytes.get(self.position) {
                None => return Err("unterminated list".to_string()),
                Some(&byte) if byte == close => {
                    self.position += 1;
                    return Ok(Edn::Data(Value::List(items)));
                }
                Some(_) => items.push(to_value(self.read()?)?),
            }
        }
    }

    fn read_map(&mut self) -> Result<Edn, String> {
        self.position += 1;
        let mut entries = Vec::new();
        loop {
            self.skip_space();
            match self.bytes.get(self.position) {
                None => return Err("unterminated map".to_string()),
                Some(b'}') => {
                    self.position += 1;
                    return Ok(Edn::Map(entries));
                }
                Some(_) => {
                    let key = self.read()?;
                    let value = self.read()?;
                    entries.push((key, value));
                }
            }
        }
    }
}

/// Keywords inside data become strings (`:append` in a micro-op is the string "append").
fn to_value(edn: Edn) -> Result<Value, String> {
    match edn {
        Edn::Data(value) => Ok(value),
        Edn::Keyword(name) => Ok(Value::Str(name)),
        Edn::Map(_) => Err("maps are not supported as values".to_string()),
    }
}

fn op_type_of(name: &str) -> Result<OpType, String> {
    match name {
        "invoke" => Ok(OpType::Invoke),
        "ok" => Ok(OpType::Ok),
        "fail" => Ok(OpType::Fail),
        "info" => Ok(OpType::Info),
        other => Err(format!("unknown type :{other}")),
    }
}

fn f_of(name: &str) -> Result<F, String> {
    match name {
        "read" | "get" | "r" => Ok(F::Read),
        "write" | "put" | "w" => Ok(F::Write),
        "cas" => Ok(F::Cas),
        "delete" => Ok(F::Delete),
        "append" => Ok(F::Append),
        "txn" => Ok(F::Txn),
        other => Err(format!("unknown f :{other}")),
    }
}

/// A value position: a keyword there (`:timed-out`) is an error description, not data.
fn value_and_error(edn: Edn) -> Result<(Value, Option<String>), String> {
    match edn {
        Edn::Keyword(name) => Ok((Value::Null, Some(name))),
        other => Ok((to_value(other)?, None)),
    }
}

fn keyword(edn: &Edn, field: &str) -> Result<String, String> {
    match edn {
        Edn::Keyword(name) => Ok(name.clone()),
        _ => Err(format!("{field} must be a keyword")),
    }
}

fn process_of(edn: Edn) -> Result<u64, String> {
    match edn {
        Edn::Data(Value::Int(number)) if number >= 0 => Ok(number as u64),
        _ => Err("process must be a non-negative integer".to_string()),
    }
}

/// Parses one `jepsen.util` line: `INFO  jepsen.util - <process> <type> <f> <value>`.
fn parse_log_line(line: &str, index: u64) -> Result<Op, String> {
    let (_, fields) = line
        .split_once("jepsen.util - ")
        .ok_or("missing `jepsen.util - `")?;
    let mut reader = EdnReader::new(fields);
    let process = process_of(reader.read()?)?;
    let op_type = op_type_of(&keyword(&reader.read()?, "type")?)?;
    let f = f_of(&keyword(&reader.read()?, "f")?)?;
    let (value, error) = if reader.at_end() {
        (Value::Null, None)
    } else {
        value_and_error(reader.read()?)?
    };
    if !reader.at_end() {
        return Err("unexpected text after the value".to_string());
    }
    Ok(Op {
        index,
        time: None,
        process,
        op_type,
        f,
        key: None,
        value,
        error,
    })
}

/// Parses a Jepsen log: one register, every key absent at the start. Lines that are not
/// `jepsen.util` events (other loggers) are skipped.
pub fn parse_jepsen_log(text: &str) -> Result<History, HistoryError> {
    let mut ops = Vec::new();
    let mut lines = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        if line.trim().is_empty() || !line.contains("jepsen.util") {
            continue;
        }
        let op = parse_log_line(line, ops.len() as u64)
            .map_err(|reason| HistoryError::line(line_index + 1, reason))?;
        ops.push(op);
        lines.push(line_index + 1);
    }
    History::from_lines(ops, lines, Value::Null)
}

fn parse_edn_line(line: &str, index: u64) -> Result<Op, String> {
    let mut reader = EdnReader::new(line);
    let Edn::Map(entries) = reader.read()? else {
        return Err("expected an EDN map".to_string());
    };
    if !reader.at_end() {
        return Err("unexpected text after the map".to_string());
    }
    let (mut process, mut op_type, mut f) = (None, None, None);
    let mut op = Op {
        index,
        time: None,
        process: 0,
        op_type: OpType::Invoke,
        f: F::Read,
        key: None,
        value: Value::Null,
        error: None,
    };
    for (key, value) in entries {
        match keyword(&key, "map key")?.as_str() {
            "process" => process = Some(process_of(value)?),
            "type" => op_type = Some(op_type_of(&keyword(&value, "type")?)?),
            "f" => f = Some(f_of(&keyword(&value, "f")?)?),
            "key" => op.key = Some(to_value(value)?).filter(|key| !key.is_null()),
            "value" => (op.value, op.error) = value_and_error(value)?,
            "index" => op.index = process_of(value)?,
            "time" => op.time = Some(process_of(value)?),
            "error" => {
                op.error = Some(match value {
                    Edn::Keyword(name) => name,
                    other => to_value(other)?.to_string(),
                })
            }
            _ => {}
        }
    }
    op.process = process.ok_or("missing :process")?;
    op.op_type = op_type.ok_or("missing :type")?;
    op.f = f.ok_or("missing :f")?;
    Ok(op)
}

/// Parses EDN op maps, one per line. Keys start as `""`, as in the Porcupine kv corpus.
pub fn parse_edn(text: &str) -> Result<History, HistoryError> {
    let mut ops = Vec::new();
    let mut lines = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let op = parse_edn_line(line, ops.len() as u64)
            .map_err(|reason| HistoryError::line(line_index + 1, reason))?;
        ops.push(op);
        lines.push(line_index + 1);
    }
    History::from_lines(ops, lines, Value::Str(String::new()))
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
                    INFO  jepsen.util - 0\t:info\t:write\t:timed-out\n";
        let history = parse_jepsen_log(text).unwrap();
        let calls = history.calls();
        assert_eq!(calls.len(), 2);
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
    fn reads_edn_maps() {
        let text = "{:process 0, :type :invoke, :f :append, :key \"0\", :value \"x 0 0 y\"}\n\
                    {:process 0, :type :ok, :f :append, :key \"0\", :value \"x 0 0 y\"}\n";
        let history = parse_edn(text).unwrap();
        assert_eq!(history.calls()[0].f, F::Append);
        assert_eq!(history.key(&history.calls()[0]), Some(&Value::from("0")));
        assert_eq!(history.initial_value, Value::from(""));
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
    }
}
