//! The state machine: an ordered map plus client sessions, driven only by committed log entries.
//!
//! Determinism: the map and the sessions are `BTreeMap`s (no hash order), eviction is by log
//! index, and every failure (a malformed command included) is a value computed from the log
//! alone, so every replica returns the same outcomes and holds the same state.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::command::{Command, CommandError};
use super::limits::{
    LIST_ELEMENTS_MAX, RESULT_BYTES_MAX, SESSIONS_MAX, SESSIONS_RESULT_BYTES_MAX, VALUE_BYTES_MAX,
};
use super::ops::{KeyOp, KeyResult, Op, OpError, OpFailure, OpResult, Value};
use super::Index;

/// What applying one log entry did. The driver answers the waiting client (if any) from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A new request: the operation was applied (a failed cas or an aborted transaction still
    /// counts as applied: its result says so) and its result is now the session's cached result.
    Applied {
        client_id: u64,
        seq: u64,
        result: OpResult,
    },
    /// A retry of the session's last request: nothing was applied again; `result` is the cached
    /// result of the first application.
    Duplicate {
        client_id: u64,
        seq: u64,
        result: OpResult,
    },
    /// A request older than the session's last one: nothing applied, the client has moved on
    /// and its result is gone.
    Stale {
        client_id: u64,
        seq: u64,
        last_seq: u64,
    },
    /// The entry is not a valid command (garbage, an unknown format, or an operation over the
    /// limits). Nothing applied. `client` is `(client_id, seq)` when the entry decoded.
    Rejected {
        client: Option<(u64, u64)>,
        error: CommandError,
    },
}

impl ApplyOutcome {
    /// `(client_id, seq)` of the command, if the entry decoded.
    pub fn client(&self) -> Option<(u64, u64)> {
        match self {
            ApplyOutcome::Applied { client_id, seq, .. }
            | ApplyOutcome::Duplicate { client_id, seq, .. }
            | ApplyOutcome::Stale { client_id, seq, .. } => Some((*client_id, *seq)),
            ApplyOutcome::Rejected { client, .. } => *client,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("snapshot decode failed at byte {offset}: {reason}")]
    SnapshotDecode { offset: usize, reason: String },
    #[error("snapshot is invalid: {0}")]
    SnapshotInvalid(String),
}

/// A session's name: the certificate identity that opened it and the client's random id. Two
/// identities using the same `client_id` have two sessions, so a client can neither read nor
/// advance another identity's session (`proto-docs/client.md`, "Sessions").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    pub owner: String,
    pub client_id: u64,
}

/// One client's session: its last request and that request's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    seq: u64,
    /// The log index of the last entry from this client (the LRU key).
    index: Index,
    result: OpResult,
}

/// How to take back one write of an aborting transaction.
enum Undo {
    /// Put back the value the key had (`None`: the key was absent).
    Restore(Bytes, Option<map::StoredValue>),
    /// Drop the element an append pushed onto an existing list.
    Pop(Bytes),
}

/// The replicated state. `Clone` is cheap: the map (`map::KeyMap`) is shards of B-trees behind
/// `Arc`s with every value reference-counted (`map::StoredValue`), so a snapshot is a clone
/// written in the background while the node goes on applying (a shard's tree is copied on its
/// first write after the clone, never the values' bytes). Sessions are bounded by
/// `SESSIONS_MAX` and cloned outright.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    map: map::KeyMap,
    sessions: BTreeMap<SessionKey, Session>,
    /// Sessions by their last log index: the first entry is the least recently used. Every
    /// command has its own index, so an index names at most one session.
    sessions_by_index: BTreeMap<Index, SessionKey>,
    /// Sum of `OpResult::size_bytes` over the sessions' cached results.
    sessions_result_bytes: usize,
    applied_index: Index,
}

impl StateMachine {
    pub fn new() -> StateMachine {
        StateMachine::default()
    }

    /// The index of the last entry applied (or of the snapshot restored).
    pub fn applied_index(&self) -> Index {
        self.applied_index
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of client sessions kept.
    pub fn sessions_len(&self) -> usize {
        self.sessions.len()
    }

    /// The last sequence number answered for `client_id` of `owner`, if its session is kept.
    pub fn session_seq(&self, owner: &str, client_id: u64) -> Option<u64> {
        let key = SessionKey {
            owner: owner.to_string(),
            client_id,
        };
        self.sessions.get(&key).map(|session| session.seq)
    }

    /// A value as of `applied_index`, for reads served by ReadIndex or `stale` (no log entry).
    /// The value shares the state's bytes (no copy).
    pub fn get_local(&self, key: &[u8]) -> Option<Value> {
        self.map.get(key).map(map::StoredValue::to_value)
    }

    /// Executes a read-only `Op` against local state without a log entry and without touching
    /// sessions (reads are idempotent, so they need no exactly-once bookkeeping).
    pub fn read_local(&self, op: &Op) -> Result<OpResult, OpError> {
        op.validate()?;
        if !op.is_read_only() {
            return Err(OpError::BadRequest(
                "a read may only contain get".to_string(),
            ));
        }
        match op {
            Op::Key(key_op) => Ok(OpResult::Key(self.read_key(key_op.key()))),
            Op::Txn(ops) => {
                let mut results = Vec::with_capacity(ops.len());
                let mut result_bytes = 16;
                for key_op in ops {
                    let result = cap_result(self.read_key(key_op.key()), &mut result_bytes);
                    let failed = is_failure(&result);
                    results.push(result);
                    if failed {
                        return Ok(OpResult::Txn {
                            committed: false,
                            results,
                        });
                    }
                }
                Ok(OpResult::Txn {
                    committed: true,
                    results,
                })
            }
        }
    }

    /// Marks an entry without a command (a new leader's no-op) as applied.
    ///
    /// Panics if `index <= applied_index`: the driver applied an entry twice (a bug).
    pub fn apply_empty(&mut self, index: Index) {
        self.advance_applied_index(index);
    }

    /// Applies the committed entry at `index` carrying `data` (an encoded `Command`).
    ///
    /// Never panics on `data`: a malformed command yields `ApplyOutcome::Rejected` on every
    /// replica alike. Panics if `index <= applied_index` (the driver applied an entry twice).
    pub fn apply(&mut self, index: Index, data: &[u8]) -> ApplyOutcome {
        match Command::decode_unvalidated(data) {
            Ok(command) => self.apply_command(index, command),
            Err(error) => {
                self.advance_applied_index(index);
                ApplyOutcome::Rejected {
                    client: None,
                    error,
                }
            }
        }
    }

    /// Applies the committed entry at `index` whose data is `command.encode()`: what `apply`
    /// does with those bytes, without decoding them again. The leader applies its own
    /// proposals this way (it still holds each command it encoded); `decode(encode(c)) == c`
    /// makes the outcome and the state the same as on the replicas that decode.
    pub fn apply_command(&mut self, index: Index, command: Command) -> ApplyOutcome {
        self.advance_applied_index(index);
        let Command {
            owner,
            client_id,
            seq,
            op,
        } = command;
        let key = SessionKey { owner, client_id };
        if let Err(error) = op.validate() {
            let error = CommandError::Invalid(error);
            return ApplyOutcome::Rejected {
                client: Some((client_id, seq)),
                error,
            };
        }
        if let Some(session) = self.sessions.get(&key) {
            let last_seq = session.seq;
            if seq == last_seq {
                let result = session.result.clone();
                self.session_touch(&key, index);
                return ApplyOutcome::Duplicate {
                    client_id,
                    seq,
                    result,
                };
            }
            if seq < last_seq {
                self.session_touch(&key, index);
                return ApplyOutcome::Stale {
                    client_id,
                    seq,
                    last_seq,
                };
            }
        }
        let result = self.execute(op);
        self.session_record(key, seq, index, result.clone());
        ApplyOutcome::Applied {
            client_id,
            seq,
            result,
        }
    }

    /// Applies committed entries in order; one outcome per entry, with its index.
    pub fn apply_batch<'a, I>(&mut self, entries: I) -> Vec<(Index, ApplyOutcome)>
    where
        I: IntoIterator<Item = (Index, &'a [u8])>,
    {
        let entries = entries.into_iter();
        let mut outcomes = Vec::with_capacity(entries.size_hint().0);
        for (index, data) in entries {
            outcomes.push((index, self.apply(index, data)));
        }
        outcomes
    }

    fn advance_applied_index(&mut self, index: Index) {
        assert!(
            index > self.applied_index,
            "entry {index} applied after entry {} (applied twice or out of order)",
            self.applied_index
        );
        self.applied_index = index;
    }

    fn execute(&mut self, op: Op) -> OpResult {
        match op {
            Op::Key(key_op) => OpResult::Key(self.execute_key(key_op, None)),
            Op::Txn(ops) => self.execute_txn(ops),
        }
    }

    /// Applies the operations in order; on the first failure, takes back every write of the
    /// transaction in reverse order, so the map is as before (all or nothing).
    fn execute_txn(&mut self, ops: Vec<KeyOp>) -> OpResult {
        let mut undo = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        let mut result_bytes = 16;
        for key_op in ops {
            let result = self.execute_key(key_op, Some(&mut undo));
            let result = cap_result(result, &mut result_bytes);
            let failed = is_failure(&result);
            results.push(result);
            if failed {
                self.rollback(undo);
                return OpResult::Txn {
                    committed: false,
                    results,
                };
            }
        }
        OpResult::Txn {
            committed: true,
            results,
        }
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Restore(key, Some(value)) => {
                    self.map.insert(&key, value);
                }
                Undo::Restore(key, None) => {
                    self.map.remove(&key);
                }
                Undo::Pop(key) => {
                    let popped = self.map.list_mut(&key).and_then(Vec::pop);
                    assert!(popped.is_some(), "rollback: the appended element is gone");
                }
            }
        }
    }

    fn read_key(&self, key: &[u8]) -> KeyResult {
        KeyResult::Get {
            value: self.get_local(key),
        }
    }

    /// Applies one operation; if `undo` is given, records how to take its write back. A value's
    /// bytes are copied into the map (`map::StoredValue`: one allocation of their exact size),
    /// so the decoded command's buffers are freed.
    fn execute_key(&mut self, op: KeyOp, undo: Option<&mut Vec<Undo>>) -> KeyResult {
        let (result, step) = match op {
            KeyOp::Get { key } => (self.read_key(&key), None),
            KeyOp::Put { key, value } => {
                let previous = self.map.insert(&key, map::StoredValue::bytes(&value));
                let existed = previous.is_some();
                (
                    KeyResult::Put { existed },
                    Some(Undo::Restore(key, previous)),
                )
            }
            KeyOp::Delete { key } => match self.map.remove(&key) {
                Some(previous) => {
                    let step = Undo::Restore(key, Some(previous));
                    (KeyResult::Delete { existed: true }, Some(step))
                }
                None => (KeyResult::Delete { existed: false }, None),
            },
            KeyOp::Cas { key, expected, new } => self.execute_cas(key, expected.as_ref(), new),
            KeyOp::Append { key, element } => self.execute_append(key, element),
        };
        if let (Some(undo), Some(step)) = (undo, step) {
            undo.push(step);
        }
        result
    }

    fn execute_cas(
        &mut self,
        key: Bytes,
        expected: Option<&Bytes>,
        new: Bytes,
    ) -> (KeyResult, Option<Undo>) {
        let current = self.map.get(&key);
        let matches = match (expected, current.map(map::StoredValue::as_bytes)) {
            (None, None) => true,
            (Some(expected), Some(Some(current))) => **expected == *current,
            _ => false,
        };
        if !matches {
            let current = current.map(map::StoredValue::to_value);
            return (
                KeyResult::Cas {
                    succeeded: false,
                    current,
                },
                None,
            );
        }
        let previous = self.map.insert(&key, map::StoredValue::bytes(&new));
        let result = KeyResult::Cas {
            succeeded: true,
            current: previous.as_ref().map(map::StoredValue::to_value),
        };
        (result, Some(Undo::Restore(key, previous)))
    }

    fn execute_append(&mut self, key: Bytes, element: Bytes) -> (KeyResult, Option<Undo>) {
        // Decided on a shared reference first: a failed append must not copy a shard or a
        // list that a snapshot's clone still shares.
        let elements = match self.map.get(&key).map(map::StoredValue::as_list) {
            None => {
                self.map.insert(&key, map::StoredValue::list(vec![element]));
                return (
                    KeyResult::Append { length: 1 },
                    Some(Undo::Restore(key, None)),
                );
            }
            Some(None) => return (KeyResult::Failed(OpFailure::WrongType), None),
            Some(Some(elements)) => elements,
        };
        let bytes: usize = elements.iter().map(Bytes::len).sum();
        if elements.len() >= LIST_ELEMENTS_MAX || bytes + element.len() > VALUE_BYTES_MAX {
            let failure = OpFailure::ListFull {
                elements: elements.len() as u64,
                bytes: bytes as u64,
            };
            return (KeyResult::Failed(failure), None);
        }
        let Some(elements) = self.map.list_mut(&key) else {
            unreachable!("the key holds a list (checked above)");
        };
        elements.push(element);
        let length = elements.len() as u64;
        (KeyResult::Append { length }, Some(Undo::Pop(key)))
    }
}

/// Sessions: exactly-once for retried requests, bounded by `SESSIONS_MAX` sessions and
/// `SESSIONS_RESULT_BYTES_MAX` cached bytes. The least recently used session (smallest log
/// index of its last entry) goes first, so every replica evicts the same sessions.
impl StateMachine {
    fn session_touch(&mut self, key: &SessionKey, index: Index) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let removed = self.sessions_by_index.remove(&session.index);
        assert_eq!(removed.as_ref(), Some(key), "session index out of sync");
        session.index = index;
        self.sessions_by_index.insert(index, key.clone());
    }

    fn session_record(&mut self, key: SessionKey, seq: u64, index: Index, result: OpResult) {
        let result_bytes = result.size_bytes();
        let session = Session { seq, index, result };
        if let Some(previous) = self.sessions.insert(key.clone(), session) {
            self.sessions_by_index.remove(&previous.index);
            self.sessions_result_bytes -= previous.result.size_bytes();
        }
        self.sessions_by_index.insert(index, key);
        self.sessions_result_bytes += result_bytes;
        self.sessions_evict();
    }

    /// Evicts until both bounds hold. The session just written has the largest index, so it is
    /// evicted only if it is the only one left (it never is: the loop stops at one session).
    fn sessions_evict(&mut self) {
        while self.sessions.len() > SESSIONS_MAX
            || (self.sessions_result_bytes > SESSIONS_RESULT_BYTES_MAX && self.sessions.len() > 1)
        {
            let Some((_, key)) = self.sessions_by_index.pop_first() else {
                return;
            };
            let session = self.sessions.remove(&key);
            let session = session.expect("sessions_by_index names a kept session");
            self.sessions_result_bytes -= session.result.size_bytes();
        }
    }
}

/// Replaces a result that would take the transaction's results over `RESULT_BYTES_MAX` by a
/// failure (which aborts the transaction).
fn cap_result(result: KeyResult, result_bytes: &mut usize) -> KeyResult {
    *result_bytes += result.size_bytes();
    if *result_bytes > RESULT_BYTES_MAX {
        let failure = OpFailure::ResultTooLarge {
            bytes: *result_bytes as u64,
            max: RESULT_BYTES_MAX as u64,
        };
        return KeyResult::Failed(failure);
    }
    result
}

/// Whether a result aborts the transaction it is part of.
fn is_failure(result: &KeyResult) -> bool {
    matches!(
        result,
        KeyResult::Failed(_)
            | KeyResult::Cas {
                succeeded: false,
                ..
            }
    )
}

pub mod map;
mod snapshot;
#[cfg(test)]
mod tests;
