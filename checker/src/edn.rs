//! A reader for the EDN that Jepsen, Knossos and Elle write: nil, booleans, integers (with an
//! optional `N`), floats (with an optional `M`), strings, keywords, vectors, lists, sets, maps,
//! `;` comments, `#_` discards and tagged records such as `#jepsen.history.Op{...}`.
//!
//! Every form remembers the line it starts on, so a complaint names the line. Symbols other than
//! `nil`/`true`/`false` are refused: no history needs them, and accepting them would let a typo
//! through as data.

use crate::value::{Float, Value};

/// A form read at the top level, and the 1-based line it starts on.
#[derive(Debug)]
pub struct Form {
    pub line: usize,
    pub value: Value,
    /// The record tag (`jepsen.history.Op`) if the form was `#tag{...}`.
    pub tag: Option<String>,
    /// For a vector: the line each element starts on.
    pub element_lines: Vec<usize>,
}

/// Why the text is not EDN, and on which line.
#[derive(Debug)]
pub struct EdnError {
    pub line: usize,
    pub reason: String,
}

pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    line: usize,
}

type Read<T> = Result<T, EdnError>;

const DELIMITERS: &[u8] = b",[](){}\";";

impl<'a> Reader<'a> {
    pub fn new(text: &'a str) -> Self {
        Reader {
            bytes: text.as_bytes(),
            position: 0,
            line: 1,
        }
    }

    fn error<T>(&self, reason: impl Into<String>) -> Read<T> {
        Err(EdnError {
            line: self.line,
            reason: reason.into(),
        })
    }

    /// Skips whitespace, commas and `;` comments.
    fn skip_space(&mut self) {
        while let Some(&byte) = self.bytes.get(self.position) {
            match byte {
                b'\n' => self.line += 1,
                b';' => {
                    while self.bytes.get(self.position).is_some_and(|&b| b != b'\n') {
                        self.position += 1;
                    }
                    continue;
                }
                _ if byte.is_ascii_whitespace() || byte == b',' => {}
                _ => return,
            }
            self.position += 1;
        }
    }

    pub fn at_end(&mut self) -> bool {
        self.skip_space();
        self.position >= self.bytes.len()
    }

    pub fn line(&self) -> usize {
        self.line
    }

    /// The next top-level form; `None` at the end of the text.
    pub fn next_form(&mut self) -> Read<Option<Form>> {
        if self.at_end() {
            return Ok(None);
        }
        let line = self.line;
        let mut tag = None;
        if self.bytes.get(self.position) == Some(&b'#')
            && self
                .bytes
                .get(self.position + 1)
                .is_some_and(|&b| b.is_ascii_alphabetic())
        {
            self.position += 1;
            tag = Some(self.token());
        }
        let mut element_lines = Vec::new();
        let value = if self.bytes.get(self.position) == Some(&b'[') && tag.is_none() {
            self.position += 1;
            let items = self.sequence(b']', Some(&mut element_lines))?;
            Value::List(items)
        } else {
            self.value()?
        };
        Ok(Some(Form {
            line,
            value,
            tag,
            element_lines,
        }))
    }

    /// Reads one value.
    pub fn value(&mut self) -> Read<Value> {
        self.skip_space();
        let Some(&byte) = self.bytes.get(self.position) else {
            return self.error("unexpected end of input: expected a value");
        };
        match byte {
            b'"' => self.string().map(Value::Str),
            b'[' | b'(' => {
                self.position += 1;
                let close = if byte == b'[' { b']' } else { b')' };
                self.sequence(close, None).map(Value::List)
            }
            b'{' => {
                self.position += 1;
                self.map()
            }
            b':' => {
                self.position += 1;
                let name = self.token();
                if name.is_empty() {
                    return self.error("a keyword needs a name after ':'");
                }
                Ok(Value::Keyword(name))
            }
            b'#' => self.dispatch(),
            b']' | b')' | b'}' => self.error(format!("unexpected '{}'", byte as char)),
            _ => {
                let token = self.token();
                self.atom(&token)
            }
        }
    }

    /// `#{...}` sets, `#_` discards and tagged values (`#inst "..."`, `#foo.Bar{...}`).
    fn dispatch(&mut self) -> Read<Value> {
        self.position += 1;
        match self.bytes.get(self.position) {
            Some(b'{') => {
                self.position += 1;
                self.sequence(b'}', None).map(Value::set)
            }
            Some(b'_') => {
                self.position += 1;
                self.value()?;
                self.value()
            }
            _ => {
                let tag = self.token();
                self.error(format!("unsupported tagged value #{tag} inside a value"))
            }
        }
    }

    fn token(&mut self) -> String {
        let start = self.position;
        while let Some(&byte) = self.bytes.get(self.position) {
            if byte.is_ascii_whitespace() || DELIMITERS.contains(&byte) {
                break;
            }
            self.position += 1;
        }
        String::from_utf8_lossy(&self.bytes[start..self.position]).into_owned()
    }

    fn atom(&self, token: &str) -> Read<Value> {
        match token {
            "nil" => return Ok(Value::Null),
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            "" => return self.error("expected a value"),
            _ => {}
        }
        let integer = token.strip_suffix('N').unwrap_or(token);
        if let Ok(number) = integer.parse::<i64>() {
            return Ok(Value::Int(number));
        }
        let decimal = token.strip_suffix('M').unwrap_or(token);
        let numeric = decimal
            .trim_start_matches(['-', '+'])
            .starts_with(|c: char| c.is_ascii_digit());
        if numeric {
            if let Ok(number) = decimal.parse::<f64>() {
                return Ok(Value::Float(Float(number)));
            }
        }
        self.error(format!("unsupported EDN token `{token}`"))
    }

    fn string(&mut self) -> Read<String> {
        self.position += 1;
        let mut text = Vec::new();
        while let Some(&byte) = self.bytes.get(self.position) {
            self.position += 1;
            match byte {
                b'"' => return Ok(String::from_utf8_lossy(&text).into_owned()),
                b'\\' => {
                    let Some(&escaped) = self.bytes.get(self.position) else {
                        break;
                    };
                    self.position += 1;
                    match escaped {
                        b'n' => text.push(b'\n'),
                        b't' => text.push(b'\t'),
                        b'r' => text.push(b'\r'),
                        b'u' => self.unicode_escape(&mut text)?,
                        other => text.push(other),
                    }
                }
                b'\n' => {
                    self.line += 1;
                    text.push(byte);
                }
                other => text.push(other),
            }
        }
        self.error("unterminated string")
    }

    fn unicode_escape(&mut self, text: &mut Vec<u8>) -> Read<()> {
        let digits = self.bytes.get(self.position..self.position + 4);
        let code = digits
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u32::from_str_radix(digits, 16).ok())
            .and_then(char::from_u32);
        let Some(character) = code else {
            return self.error("bad \\u escape in a string");
        };
        self.position += 4;
        let mut buffer = [0u8; 4];
        text.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
        Ok(())
    }

    fn sequence(&mut self, close: u8, mut lines: Option<&mut Vec<usize>>) -> Read<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            self.skip_space();
            match self.bytes.get(self.position) {
                None => {
                    return self.error(format!("unterminated list: expected '{}'", close as char))
                }
                Some(&byte) if byte == close => {
                    self.position += 1;
                    return Ok(items);
                }
                Some(_) => {
                    if let Some(lines) = lines.as_deref_mut() {
                        lines.push(self.line);
                    }
                    items.push(self.value()?);
                }
            }
        }
    }

    fn map(&mut self) -> Read<Value> {
        let mut entries = Vec::new();
        loop {
            self.skip_space();
            match self.bytes.get(self.position) {
                None => return self.error("unterminated map: expected '}'"),
                Some(b'}') => {
                    self.position += 1;
                    return Ok(Value::map(entries));
                }
                Some(_) => {
                    let key = self.value()?;
                    self.skip_space();
                    if self.bytes.get(self.position) == Some(&b'}') {
                        return self.error(format!("map key {key} has no value"));
                    }
                    let value = self.value()?;
                    entries.push((key, value));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_one(text: &str) -> Value {
        Reader::new(text).value().unwrap()
    }

    #[test]
    fn reads_every_kind_jepsen_writes() {
        assert_eq!(read_one("nil"), Value::Null);
        assert_eq!(read_one("-12N"), Value::Int(-12));
        assert_eq!(read_one("1.5"), Value::Float(Float(1.5)));
        assert_eq!(read_one("2.5M"), Value::Float(Float(2.5)));
        assert_eq!(read_one("\"a\\\"b\\u0041\""), Value::from("a\"bA"));
        assert_eq!(read_one(":timed-out"), Value::Keyword("timed-out".into()));
        assert_eq!(read_one("(1 2)"), read_one("[1, 2]"));
        assert_eq!(read_one("#{3 1 3}"), Value::Set(vec![1.into(), 3.into()]));
        let map = read_one("{:b 1 :a [nil #_ 7 true]}");
        assert_eq!(map.to_string(), "{:a [null,true], :b 1}");
    }

    #[test]
    fn forms_remember_their_lines_and_tags() {
        let text = "; a comment\n#jepsen.history.Op{:index 0}\n[{:a 1}\n {:a 2}]\n";
        let mut reader = Reader::new(text);
        let record = reader.next_form().unwrap().unwrap();
        assert_eq!(
            (record.line, record.tag.as_deref()),
            (2, Some("jepsen.history.Op"))
        );
        let vector = reader.next_form().unwrap().unwrap();
        assert_eq!(vector.element_lines, vec![3, 4]);
        assert!(reader.next_form().unwrap().is_none());
    }

    #[test]
    fn errors_name_the_line() {
        let error = Reader::new("{:a 1}\n{:a frob}").next_form().map(|_| ());
        assert!(error.is_ok());
        let mut reader = Reader::new("{:a 1}\n{:a frob}");
        reader.next_form().unwrap();
        let error = reader.next_form().unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.reason.contains("frob"), "{}", error.reason);
        let error = Reader::new("{:a \"open").next_form().unwrap_err();
        assert!(error.reason.contains("unterminated"));
    }
}
