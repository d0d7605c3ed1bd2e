//! The values a history carries: keys, written values, read results and micro-operations.
//!
//! JSON's null, booleans, integers, floats, strings and lists, plus what Jepsen's EDN adds:
//! keywords, sets and maps. It is hashable and totally ordered, which `serde_json::Value` is not,
//! so models can intern states and Elle can index elements. Floats compare by their bits (as
//! Clojure's `=` on two doubles read from the same text does); JSON objects are rejected in
//! JSON-lines histories (no workload writes them), maps come only from EDN (error maps).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// One value of a history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// JSON `null`: an absent key, an unknown read result.
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(Float),
    Str(String),
    /// An EDN keyword, without its colon: `:timed-out` is `Keyword("timed-out")`.
    Keyword(String),
    List(Vec<Value>),
    /// An EDN set, its elements sorted and distinct.
    Set(Vec<Value>),
    /// An EDN map, its entries sorted by key.
    Map(Vec<(Value, Value)>),
}

/// A float with total equality and order (by `f64::total_cmp`), so values stay hashable.
#[derive(Clone, Copy, Debug)]
pub struct Float(pub f64);

impl PartialEq for Float {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}

impl Eq for Float {}

impl PartialOrd for Float {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Float {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl std::hash::Hash for Float {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(text) => Some(text),
            _ => None,
        }
    }

    /// A string's text or a keyword's name (`"append"` and `:append` name the same micro-op).
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Value::Str(text) | Value::Keyword(text) => Some(text),
            _ => None,
        }
    }

    /// A set: elements sorted, duplicates dropped.
    pub fn set(mut items: Vec<Value>) -> Value {
        items.sort();
        items.dedup();
        Value::Set(items)
    }

    /// A map: entries sorted by key (a repeated key keeps its last value).
    pub fn map(mut entries: Vec<(Value, Value)>) -> Value {
        entries.reverse();
        entries.sort_by(|left, right| left.0.cmp(&right.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        Value::Map(entries)
    }
}

/// A float as EDN and JSON readers take it back: always with a decimal point or exponent.
pub fn float_text(number: f64) -> String {
    let text = number.to_string();
    if number.is_finite() && !text.contains(['.', 'e', 'E']) {
        format!("{text}.0")
    } else {
        text
    }
}

fn write_items<'a>(
    formatter: &mut fmt::Formatter<'_>,
    items: impl Iterator<Item = &'a Value>,
) -> fmt::Result {
    for (position, item) in items.enumerate() {
        if position > 0 {
            write!(formatter, ",")?;
        }
        write!(formatter, "{item}")?;
    }
    Ok(())
}

impl From<i64> for Value {
    fn from(number: i64) -> Self {
        Value::Int(number)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Str(text.to_string())
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Self {
        Value::List(items)
    }
}

/// Displays as compact JSON (keywords as `:name`, sets as `#{...}`, maps as `{k v, ...}` in EDN's
/// spelling), which is what reports and the HTML page show.
impl fmt::Display for Value {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(formatter, "null"),
            Value::Bool(flag) => write!(formatter, "{flag}"),
            Value::Int(number) => write!(formatter, "{number}"),
            Value::Float(Float(number)) => write!(formatter, "{}", float_text(*number)),
            Value::Str(text) => {
                let quoted = serde_json::to_string(text).map_err(|_| fmt::Error)?;
                write!(formatter, "{quoted}")
            }
            Value::Keyword(name) => write!(formatter, ":{name}"),
            Value::List(items) => {
                write!(formatter, "[")?;
                write_items(formatter, items.iter())?;
                write!(formatter, "]")
            }
            Value::Set(items) => {
                write!(formatter, "#{{")?;
                write_items(formatter, items.iter())?;
                write!(formatter, "}}")
            }
            Value::Map(entries) => {
                write!(formatter, "{{")?;
                for (position, (key, value)) in entries.iter().enumerate() {
                    if position > 0 {
                        write!(formatter, ", ")?;
                    }
                    write!(formatter, "{key} {value}")?;
                }
                write!(formatter, "}}")
            }
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(flag) => serializer.serialize_bool(*flag),
            Value::Int(number) => serializer.serialize_i64(*number),
            Value::Float(Float(number)) => serializer.serialize_f64(*number),
            Value::Str(text) => serializer.serialize_str(text),
            Value::Keyword(name) => serializer.serialize_str(&format!(":{name}")),
            Value::List(items) | Value::Set(items) => {
                let mut sequence = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    sequence.serialize_element(item)?;
                }
                sequence.end()
            }
            Value::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    match key.as_name() {
                        Some(name) => map.serialize_entry(name, value)?,
                        None => map.serialize_entry(&key.to_string(), value)?,
                    }
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "null, a boolean, a number, a string or a list")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Value, E> {
        Ok(Value::Bool(flag))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Value, E> {
        Ok(Value::Int(number))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Value, E> {
        i64::try_from(number)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {number} does not fit in 64 signed bits")))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Value, E> {
        Ok(Value::Float(Float(number)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Value, E> {
        Ok(Value::Str(text.to_string()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Value, E> {
        Ok(Value::Str(text))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(sequence.size_hint().unwrap_or(0));
        while let Some(item) = sequence.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<Value, A::Error> {
        Err(de::Error::custom("objects are not supported as values"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_kind() {
        let text = r#"[null,true,-3,"a\"b",[1,["x"]]]"#;
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), text);
        assert_eq!(value.to_string(), text);
    }

    #[test]
    fn floats_are_values_and_objects_are_rejected() {
        let float: Value = serde_json::from_str("1.5").unwrap();
        assert_eq!(float, Value::Float(Float(1.5)));
        assert_ne!(float, Value::Int(1));
        assert!(serde_json::from_str::<Value>(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn edn_kinds_display_and_serialize() {
        let map = Value::map(vec![
            (
                Value::Keyword("b".into()),
                Value::set(vec![2.into(), 1.into(), 2.into()]),
            ),
            (Value::Keyword("a".into()), Value::Float(Float(0.5))),
        ]);
        assert_eq!(map.to_string(), "{:a 0.5, :b #{1,2}}");
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            r#"{"a":0.5,"b":[1,2]}"#
        );
    }
}
