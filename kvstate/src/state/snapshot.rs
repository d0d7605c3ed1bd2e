//! Snapshot encoding of the state machine.
//!
//! Layout: a sequence of bincode 2 records (standard config, through serde), each decoded with
//! the limit `SNAPSHOT_RECORD_BYTES_MAX`, so a corrupt length can never make the decoder
//! allocate more than that:
//!
//! ```text
//! header  { magic "KVSM", version 3, applied_index, pairs_count, sessions_count }
//! pair    (key, Value)                       x pairs_count, by (shard_of(key), key) ascending
//! session ({ owner, client_id }, { seq, index, result }) x sessions_count, keys strictly ascending
//! ```
//!
//! Pairs come shard by shard (`map::shard_of`, a fixed hash), each shard in key order: the order
//! the map holds them in, so a restore builds each shard's tree in one pass and a writer can let
//! go of each shard once written. The order is a function of the keys alone, so the same state
//! always gives the same bytes: replicas can compare snapshots byte for byte.
//! Version 2 (the same records, pairs in key order: the previous map's order) is still read.

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::map::{self, Key, KeyMap, Shard, StoredValue};
use super::{KvError, Session, SessionKey, StateMachine};
use crate::limits::{
    KEY_BYTES_MAX, OWNER_BYTES_MAX, RESULT_BYTES_MAX, SESSIONS_MAX, SNAPSHOT_RECORD_BYTES_MAX,
};
use crate::ops::Value;
use crate::Index;
use bytes::Bytes;

const SNAPSHOT_MAGIC: [u8; 4] = *b"KVSM";
const SNAPSHOT_FORMAT_VERSION: u32 = 3;
/// The previous format: pairs in key order (still read, so that a node restarts from a snapshot
/// an older build wrote).
const FORMAT_VERSION_BY_KEY: u32 = 2;

#[derive(Serialize, Deserialize)]
struct Header {
    magic: [u8; 4],
    version: u32,
    applied_index: Index,
    pairs_count: u64,
    sessions_count: u64,
}

impl StateMachine {
    /// The whole state (map, sessions, applied index) as deterministic bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.write_snapshot(&mut out);
        out
    }

    /// Streams the snapshot into `out` (a buffered file, a socket): no copy of the state is
    /// made. Call it on a clone (cheap, see `StateMachine`) from a background thread.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        self.write_header(out)?;
        for (key, value) in self.map.iter() {
            write_record(out, &(serde_bytes::Bytes::new(key), value))?;
        }
        self.write_sessions(out)
    }

    /// `write_snapshot` from a clone it consumes: each shard is dropped once written, so the
    /// live state stops copying that shard on its next write (and the memory of a shard it
    /// already copied is freed). Same bytes as `write_snapshot`.
    pub fn into_snapshot(mut self, out: &mut dyn Write) -> io::Result<()> {
        self.write_header(out)?;
        for shard in std::mem::take(&mut self.map).into_shards() {
            for (key, value) in shard.iter() {
                write_record(out, &(serde_bytes::Bytes::new(key.as_bytes()), value))?;
            }
        }
        self.write_sessions(out)
    }

    fn write_header(&self, out: &mut dyn Write) -> io::Result<()> {
        write_record(out, &self.header(SNAPSHOT_FORMAT_VERSION))
    }

    /// This state's snapshot header in format `version`.
    fn header(&self, version: u32) -> Header {
        Header {
            magic: SNAPSHOT_MAGIC,
            version,
            applied_index: self.applied_index,
            pairs_count: self.map.len() as u64,
            sessions_count: self.sessions.len() as u64,
        }
    }

    fn write_sessions(&self, out: &mut dyn Write) -> io::Result<()> {
        for session in &self.sessions {
            write_record(out, &session)?;
        }
        Ok(())
    }

    /// Rebuilds a state machine from `snapshot()` bytes. Untrusted input: checks the format,
    /// the order of keys and sessions and every limit, and never panics.
    pub fn restore(data: &[u8]) -> Result<StateMachine, KvError> {
        StateMachine::restore_from(data)
    }

    /// `restore` from a reader (a snapshot file's body), one record at a time: memory is the
    /// state being built plus one record, never the whole file.
    pub fn restore_from(reader: impl Read) -> Result<StateMachine, KvError> {
        StateMachine::restore_from_sharing(reader, &KeyMap::default())
    }

    /// `restore_from`, sharing with `base` (the state the node holds now, a cheap clone) every
    /// value that is the same in both: a follower that catches up by a newer snapshot then holds
    /// the values once, not twice, while both states exist (the old one until the new one is
    /// installed). The result is the same as `restore_from`'s.
    pub fn restore_from_base(reader: impl Read, base: &StateMachine) -> Result<Self, KvError> {
        StateMachine::restore_from_sharing(reader, &base.map)
    }

    fn restore_from_sharing(reader: impl Read, base: &KeyMap) -> Result<StateMachine, KvError> {
        let mut reader = RecordReader {
            inner: io::BufReader::new(reader),
            offset: 0,
        };
        let header: Header = reader.next()?;
        let by_shard = header.version == SNAPSHOT_FORMAT_VERSION;
        if header.magic != SNAPSHOT_MAGIC || !(by_shard || header.version == FORMAT_VERSION_BY_KEY)
        {
            return Err(invalid(
                "not a state machine snapshot of format version 2 or 3",
            ));
        }
        let mut state = StateMachine {
            applied_index: header.applied_index,
            ..Default::default()
        };
        state.map = if by_shard {
            read_pairs_by_shard(&mut reader, header.pairs_count, base)?
        } else {
            read_pairs_by_key(&mut reader, header.pairs_count, base)?
        };
        if header.sessions_count > SESSIONS_MAX as u64 {
            return Err(invalid("more sessions than SESSIONS_MAX"));
        }
        for _ in 0..header.sessions_count {
            let (key, session): (SessionKey, Session) = reader.next()?;
            state.restore_session(key, session)?;
        }
        if !reader.at_end()? {
            return Err(invalid("bytes after the last record"));
        }
        Ok(state)
    }

    fn restore_session(&mut self, key: SessionKey, session: Session) -> Result<(), KvError> {
        if key.owner.len() > OWNER_BYTES_MAX {
            return Err(invalid("a session owner is over OWNER_BYTES_MAX"));
        }
        if self
            .sessions
            .last_key_value()
            .is_some_and(|(last, _)| *last >= key)
        {
            return Err(invalid("sessions are not in ascending client order"));
        }
        if session.index > self.applied_index || session.result.size_bytes() > RESULT_BYTES_MAX {
            return Err(invalid(
                "a session is beyond the applied index or over the limits",
            ));
        }
        if self
            .sessions_by_index
            .insert(session.index, key.clone())
            .is_some()
        {
            return Err(invalid("two sessions have the same log index"));
        }
        self.sessions_result_bytes += session.result.size_bytes();
        self.sessions.insert(key, session);
        Ok(())
    }
}

/// Format 3's pairs. Each shard's pairs arrive together and in key order: its tree is built in
/// one pass (full nodes) from a buffer of that shard's pairs only.
fn read_pairs_by_shard<R: Read>(
    reader: &mut RecordReader<R>,
    pairs_count: u64,
    base: &KeyMap,
) -> Result<KeyMap, KvError> {
    let mut shards: Vec<Option<Arc<Shard>>> = Vec::new();
    let mut pending: Vec<(Key, StoredValue)> = Vec::new();
    let mut last: Option<(usize, Key)> = None;
    for _ in 0..pairs_count {
        let (key, value) = read_pair(reader)?;
        let key = (map::shard_of(&key), Key::new(&key));
        if last.as_ref().is_some_and(|last| *last >= key) {
            return Err(invalid("keys are not in ascending (shard, key) order"));
        }
        if let Some((shard, _)) = last.as_ref().filter(|last| last.0 != key.0) {
            build_shard(&mut shards, *shard, &mut pending);
        }
        let value = shared_value(base, key.1.as_bytes(), value);
        pending.push((key.1.clone(), value));
        last = Some(key);
    }
    if let Some((shard, _)) = last {
        build_shard(&mut shards, shard, &mut pending);
    }
    Ok(KeyMap::from_shards(shards))
}

/// Format 2's pairs: in key order.
fn read_pairs_by_key<R: Read>(
    reader: &mut RecordReader<R>,
    pairs_count: u64,
    base: &KeyMap,
) -> Result<KeyMap, KvError> {
    let mut map = KeyMap::default();
    let mut last_key: Option<Bytes> = None;
    for _ in 0..pairs_count {
        let (key, value) = read_pair(reader)?;
        if last_key.as_ref().is_some_and(|last| *last >= key) {
            return Err(invalid("keys are not in ascending order"));
        }
        let value = shared_value(base, &key, value);
        map.insert(&key, value);
        last_key = Some(key);
    }
    Ok(map)
}

/// `base`'s value of `key` if it equals `value`, else `value`.
fn shared_value(base: &KeyMap, key: &[u8], value: Value) -> StoredValue {
    match base.get(key) {
        Some(held) if held.holds(&value) => held.clone(),
        _ => StoredValue::new(value),
    }
}

fn read_pair<R: Read>(reader: &mut RecordReader<R>) -> Result<(Bytes, Value), KvError> {
    let (key, value): (Bytes, Value) = reader.next()?;
    if key.is_empty() || key.len() > KEY_BYTES_MAX || !value.within_limits() {
        return Err(invalid("a key or value is over the limits"));
    }
    Ok((key, value))
}

/// Turns the pairs of shard `shard` (in key order) into its tree.
fn build_shard(
    shards: &mut Vec<Option<Arc<Shard>>>,
    shard: usize,
    pending: &mut Vec<(Key, StoredValue)>,
) {
    if shards.is_empty() {
        shards.resize(map::SHARDS, None);
    }
    // `from_iter` of sorted pairs builds the tree bottom up with full nodes.
    let tree: Shard = pending.drain(..).collect();
    shards[shard] = Some(Arc::new(tree));
}

fn invalid(reason: &str) -> KvError {
    KvError::SnapshotInvalid(reason.to_string())
}

fn write_record<T: Serialize>(out: &mut dyn Write, record: &T) -> io::Result<()> {
    let mut out = out;
    bincode::serde::encode_into_std_write(record, &mut out, bincode::config::standard())
        .map(|_| ())
        .map_err(|error| match error {
            bincode::error::EncodeError::Io { inner, .. } => inner,
            // Plain data (byte strings, integers, enums, sequences of known length) always
            // encodes; anything else is a bug in these types.
            other => io::Error::other(other.to_string()),
        })
}

struct RecordReader<R> {
    inner: io::BufReader<R>,
    /// Bytes consumed so far, for error messages.
    offset: usize,
}

impl<R: Read> RecordReader<R> {
    fn next<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, KvError> {
        let config = bincode::config::standard().with_limit::<SNAPSHOT_RECORD_BYTES_MAX>();
        let mut counted = Counted {
            inner: &mut self.inner,
            count: 0,
        };
        let record =
            bincode::serde::decode_from_std_read(&mut counted, config).map_err(|error| {
                KvError::SnapshotDecode {
                    offset: self.offset,
                    reason: error.to_string(),
                }
            })?;
        self.offset += counted.count;
        Ok(record)
    }

    fn at_end(&mut self) -> Result<bool, KvError> {
        let buffered = self
            .inner
            .fill_buf()
            .map_err(|error| KvError::SnapshotDecode {
                offset: self.offset,
                reason: error.to_string(),
            })?;
        Ok(buffered.is_empty())
    }
}

/// Counts the bytes read through it.
struct Counted<'a, R> {
    inner: &'a mut R,
    count: usize,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.count += read;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::ops::{KeyOp, Op};

    /// A state over many shards: short (inline) and long keys, plain values and lists.
    fn big_state() -> StateMachine {
        let mut state = StateMachine::new();
        for index in 1..=3000u64 {
            let key = if index % 7 == 0 {
                format!("a-key-longer-than-the-inline-limit-{index}")
            } else {
                format!("k{index}")
            };
            let op = if index % 5 == 0 {
                KeyOp::Append {
                    key: Bytes::from(key),
                    element: Bytes::from(format!("e{index}")),
                }
            } else {
                KeyOp::Put {
                    key: Bytes::from(key),
                    value: Bytes::from(vec![index as u8; 40]),
                }
            };
            let command = Command {
                owner: "client1".into(),
                client_id: index % 10,
                seq: index,
                op: Op::Key(op),
            };
            state.apply(index, &command.encode().unwrap());
        }
        state
    }

    /// One more write, after `big_state`'s: k1 becomes "changed" at index 3001.
    fn change_k1(state: &mut StateMachine) {
        let command = Command {
            owner: "client1".into(),
            client_id: 1,
            seq: 5000,
            op: Op::put("k1", "changed"),
        };
        state.apply(3001, &command.encode().unwrap());
    }

    #[test]
    fn a_consumed_clone_writes_the_same_bytes_and_they_restore_exactly() {
        let mut state = big_state();
        let frozen = state.clone();
        let bytes = frozen.snapshot();
        // The live state goes on changing while the clone is written.
        change_k1(&mut state);
        let mut consumed = Vec::new();
        frozen.clone().into_snapshot(&mut consumed).unwrap();
        assert_eq!(consumed, bytes);
        let restored = StateMachine::restore(&bytes).unwrap();
        assert_eq!(restored, frozen);
        assert_ne!(restored, state);
        assert_eq!(restored.len(), 3000);
        assert_eq!(restored.snapshot(), bytes);
    }

    #[test]
    fn a_restore_from_a_base_shares_its_equal_values() {
        let mut state = big_state();
        let base = state.clone();
        change_k1(&mut state);
        let bytes = state.snapshot();
        let restored = StateMachine::restore_from_base(&bytes[..], &base).unwrap();
        assert_eq!(restored, StateMachine::restore(&bytes).unwrap());
        assert_eq!(restored, state);
        let shared = |key: &[u8]| {
            let (a, b) = (restored.map.get(key), base.map.get(key));
            a.zip(b).is_some_and(|(a, b)| StoredValue::ptr_eq(a, b))
        };
        assert!(shared(b"k2") && shared(b"k5"), "equal values are shared");
        assert!(!shared(b"k1"), "a changed value is not");
        // An older base shares what is equal and still restores the newer state exactly.
        let older = StateMachine::restore_from_base(&base.snapshot()[..], &state).unwrap();
        assert_eq!(older, base);
    }

    /// Re-encodes a snapshot's pairs in another order.
    fn reordered(state: &StateMachine, order: impl Fn(&mut Vec<(&[u8], &StoredValue)>)) -> Vec<u8> {
        let mut out = Vec::new();
        state.write_header(&mut out).unwrap();
        write_pairs(state, &mut out, order);
        out
    }

    fn write_pairs(
        state: &StateMachine,
        mut out: &mut Vec<u8>,
        order: impl Fn(&mut Vec<(&[u8], &StoredValue)>),
    ) {
        let mut pairs: Vec<(&[u8], &StoredValue)> = state.map.iter().collect();
        order(&mut pairs);
        for (key, value) in pairs {
            write_record(&mut out, &(serde_bytes::Bytes::new(key), value)).unwrap();
        }
        state.write_sessions(&mut out).unwrap();
    }

    #[test]
    fn a_format_2_snapshot_is_still_read() {
        let state = big_state();
        let header = state.header(FORMAT_VERSION_BY_KEY);
        let by_key = |pairs: &mut Vec<(&[u8], &StoredValue)>| pairs.sort_by_key(|(key, _)| *key);
        let mut version_2 = Vec::new();
        write_record(&mut version_2, &header).unwrap();
        write_pairs(&state, &mut version_2, by_key);
        assert_eq!(StateMachine::restore(&version_2).unwrap(), state);
        // Format 2 wants key order.
        let mut shard_order = Vec::new();
        write_record(&mut shard_order, &header).unwrap();
        write_pairs(&state, &mut shard_order, |_| {});
        assert!(matches!(
            StateMachine::restore(&shard_order),
            Err(KvError::SnapshotInvalid(_))
        ));
    }

    #[test]
    fn restore_refuses_pairs_out_of_shard_order() {
        let state = big_state();
        let as_written = reordered(&state, |_| {});
        assert_eq!(as_written, state.snapshot());
        assert!(StateMachine::restore(&as_written).is_ok());
        // Key order alone (format version 2's) is not the shard order.
        let by_key = reordered(&state, |pairs| pairs.sort_by_key(|(key, _)| *key));
        assert!(matches!(
            StateMachine::restore(&by_key),
            Err(KvError::SnapshotInvalid(_))
        ));
        let duplicated = reordered(&state, |pairs| pairs[1] = pairs[0]);
        assert!(matches!(
            StateMachine::restore(&duplicated),
            Err(KvError::SnapshotInvalid(_))
        ));
    }
}
