//! The simulated state machine: a tiny register map. Each command sets one key to a value that
//! is unique across the run, so a read's value names the write it came from.

use std::collections::BTreeMap;

use bytes::Bytes;

use kvraft::{Entry, EntryKind, Index};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    pub values: BTreeMap<u8, u64>,
    pub applied_index: Index,
}

pub fn encode(key: u8, value: u64) -> Bytes {
    let mut data = Vec::with_capacity(9);
    data.push(key);
    data.extend_from_slice(&value.to_le_bytes());
    Bytes::from(data)
}

pub fn decode(data: &[u8]) -> Option<(u8, u64)> {
    let (&key, rest) = data.split_first()?;
    let value = u64::from_le_bytes(rest.try_into().ok()?);
    Some((key, value))
}

impl StateMachine {
    pub fn apply(&mut self, entry: &Entry) {
        if entry.kind == EntryKind::Normal {
            if let Some((key, value)) = decode(&entry.data) {
                self.values.insert(key, value);
            }
        }
        self.applied_index = entry.index;
    }

    /// 0 for a key never written.
    pub fn get(&self, key: u8) -> u64 {
        self.values.get(&key).copied().unwrap_or(0)
    }
}
