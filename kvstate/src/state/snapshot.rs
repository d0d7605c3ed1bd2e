//! Snapshot encoding of the state machine.
//!
//! Layout: a sequence of bincode 2 records (standard config, through serde), each decoded with
//! the limit `SNAPSHOT_RECORD_BYTES_MAX`, so a corrupt length can never make the decoder
//! allocate more than that:
//!
//! ```text
//! header  { magic "KVSM", version 1, applied_index, pairs_count, sessions_count }
//! pair    (key, Value)                       x pairs_count, keys strictly ascending
//! session ({ owner, client_id }, { seq, index, result }) x sessions_count, keys strictly ascending
//! ```
//!
//! The map and the sessions are `BTreeMap`s, so the same state always gives the same bytes:
//! replicas can compare snapshots byte for byte.

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use super::{KvError, Session, SessionKey, StateMachine};
use crate::limits::{
    KEY_BYTES_MAX, OWNER_BYTES_MAX, RESULT_BYTES_MAX, SESSIONS_MAX, SNAPSHOT_RECORD_BYTES_MAX,
};
use crate::ops::Value;
use crate::Index;
use bytes::Bytes;

const SNAPSHOT_MAGIC: [u8; 4] = *b"KVSM";
const SNAPSHOT_FORMAT_VERSION: u32 = 2;

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
        let header = Header {
            magic: SNAPSHOT_MAGIC,
            version: SNAPSHOT_FORMAT_VERSION,
            applied_index: self.applied_index,
            pairs_count: self.map.len() as u64,
            sessions_count: self.sessions.len() as u64,
        };
        write_record(out, &header)?;
        for pair in self.map.iter() {
            write_record(out, &pair)?;
        }
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
        let mut reader = RecordReader {
            inner: io::BufReader::new(reader),
            offset: 0,
        };
        let header: Header = reader.next()?;
        if header.magic != SNAPSHOT_MAGIC || header.version != SNAPSHOT_FORMAT_VERSION {
            return Err(invalid("not a state machine snapshot of format version 2"));
        }
        let mut state = StateMachine {
            applied_index: header.applied_index,
            ..Default::default()
        };
        let mut last_key: Option<Bytes> = None;
        for _ in 0..header.pairs_count {
            let (key, value): (Bytes, Value) = reader.next()?;
            if key.is_empty() || key.len() > KEY_BYTES_MAX || !value.within_limits() {
                return Err(invalid("a key or value is over the limits"));
            }
            if last_key.as_ref().is_some_and(|last| *last >= key) {
                return Err(invalid("keys are not in ascending order"));
            }
            last_key = Some(key.clone());
            state.map.insert(key, value);
        }
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
