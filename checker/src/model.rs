//! The sequential model of one register / one key: read, write, delete, cas, append.
//!
//! States are interned per key (`StateId`), so the search hashes and compares a `u32` instead
//! of a value that may be a long string. Each call is compiled once into a [`Step`].

use crate::fxhash::FxHashMap;
use crate::history::{Call, History, Model, Outcome, F};
use crate::value::Value;

pub type StateId = u32;

/// Distinct values of one key, numbered in order of first sight.
#[derive(Default)]
pub struct Interner {
    values: Vec<Value>,
    ids: FxHashMap<Value, StateId>,
}

impl Interner {
    pub fn intern(&mut self, value: &Value) -> StateId {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = self.values.len() as StateId;
        self.values.push(value.clone());
        self.ids.insert(value.clone(), id);
        id
    }

    pub fn value(&self, id: StateId) -> &Value {
        &self.values[id as usize]
    }

    /// Distinct values seen.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// What one call does to the state, or demands of it.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// An `ok` read: the state must be this value.
    Read(StateId),
    /// A write or delete (delete writes `Null`), `ok` or `info`.
    Write(StateId),
    /// An `ok` cas: the state was `from`, becomes `to`.
    CasOk { from: StateId, to: StateId },
    /// A `fail` cas without an `error`: it ran and the state was not `from`.
    CasFail { from: StateId },
    /// An `info` cas: applied if the state is `from` when it takes effect, else a no-op.
    CasMaybe { from: StateId, to: StateId },
    /// An append, `ok` or `info`.
    Append(Value),
}

/// Compiles a call. `Ok(None)` means the call constrains nothing and is left out: failed
/// reads and writes, reads with unknown results, `fail`s that carry an `error`, and under
/// [`Model::Knossos`] every `fail` and every `ok` read of nil.
pub fn compile(
    history: &History,
    call: &Call,
    interner: &mut Interner,
) -> Result<Option<Step>, String> {
    let never_ran = call.outcome == Outcome::Fail
        && (history.model == Model::Knossos || call.f != F::Cas || history.error(call).is_some());
    if never_ran {
        return Ok(None);
    }
    let step = match call.f {
        F::Read if call.outcome == Outcome::Ok => {
            let value = history.complete_value(call);
            if history.model == Model::Knossos && value.is_null() {
                return Ok(None);
            }
            Step::Read(interner.intern(value))
        }
        F::Read => return Ok(None),
        F::Write => Step::Write(interner.intern(history.invoke_value(call))),
        F::Delete => Step::Write(interner.intern(&Value::Null)),
        F::Append => Step::Append(history.invoke_value(call).clone()),
        F::Cas => {
            let pair = history.invoke_value(call).as_list();
            let Some([from, to]) = pair.and_then(|pair| pair.get(..2)) else {
                return Err("cas value must be a list [expected, new]".to_string());
            };
            let (from, to) = (interner.intern(from), interner.intern(to));
            match call.outcome {
                Outcome::Ok => Step::CasOk { from, to },
                Outcome::Fail => Step::CasFail { from },
                Outcome::Info => Step::CasMaybe { from, to },
            }
        }
        F::Txn => return Err("txn is not a register/kv operation (use list-append)".to_string()),
    };
    Ok(Some(step))
}

/// The model of one key: its interned states and a cache of append results.
pub struct KeyModel {
    pub interner: Interner,
    /// (state, step index) -> state after the append; appends build new strings, so the
    /// search would otherwise allocate on every retry.
    append_results: FxHashMap<(StateId, u32), Option<StateId>>,
}

impl KeyModel {
    pub fn new(interner: Interner) -> Self {
        KeyModel {
            interner,
            append_results: FxHashMap::default(),
        }
    }

    /// Applies `step` (number `step_index` of this key) to `state`; `None` if it cannot
    /// happen in that state.
    #[inline]
    pub fn apply(&mut self, state: StateId, step: &Step, step_index: u32) -> Option<StateId> {
        match step {
            Step::Read(expected) => (state == *expected).then_some(state),
            Step::Write(value) => Some(*value),
            Step::CasOk { from, to } => (state == *from).then_some(*to),
            Step::CasFail { from } => (state != *from).then_some(state),
            Step::CasMaybe { from, to } => Some(if state == *from { *to } else { state }),
            Step::Append(suffix) => {
                if let Some(&result) = self.append_results.get(&(state, step_index)) {
                    return result;
                }
                let result = appended(self.interner.value(state), suffix)
                    .map(|value| self.interner.intern(&value));
                self.append_results.insert((state, step_index), result);
                result
            }
        }
    }
}

/// Append: strings concatenate (an absent key is ""); otherwise the value is pushed onto a
/// list (an absent key is []). Appending to an integer or a string-to-list mix is impossible.
pub fn appended(state: &Value, suffix: &Value) -> Option<Value> {
    match (state, suffix) {
        (Value::Null, Value::Str(text)) => Some(Value::Str(text.clone())),
        (Value::Str(prefix), Value::Str(text)) => Some(Value::Str(format!("{prefix}{text}"))),
        (Value::Null, other) => Some(Value::List(vec![other.clone()])),
        (Value::List(items), other) => {
            let mut extended = items.clone();
            extended.push(other.clone());
            Some(Value::List(extended))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_steps_follow_their_outcome() {
        let mut model = KeyModel::new(Interner::default());
        let one = model.interner.intern(&Value::Int(1));
        let two = model.interner.intern(&Value::Int(2));
        assert_eq!(
            model.apply(one, &Step::CasOk { from: one, to: two }, 0),
            Some(two)
        );
        assert_eq!(
            model.apply(two, &Step::CasOk { from: one, to: two }, 0),
            None
        );
        assert_eq!(model.apply(one, &Step::CasFail { from: one }, 0), None);
        assert_eq!(model.apply(two, &Step::CasFail { from: one }, 0), Some(two));
        assert_eq!(
            model.apply(two, &Step::CasMaybe { from: one, to: two }, 0),
            Some(two)
        );
    }

    #[test]
    fn append_concatenates_strings_and_pushes_onto_lists() {
        let text = appended(&Value::from("x 1 y"), &Value::from("x 2 y"));
        assert_eq!(text, Some(Value::from("x 1 yx 2 y")));
        let list = appended(&Value::Null, &Value::Int(7));
        assert_eq!(list, Some(Value::List(vec![Value::Int(7)])));
        assert_eq!(appended(&Value::Int(3), &Value::Int(7)), None);
    }
}
