//! The WAL record: the unit that is checksummed, written and read back.
//!
//! ```text
//! offset  size  field
//!      0     4  len    u32 LE: bytes after the crc field (kind..payload) = 17 + payload.
//!                      0 ends the log: a preallocated segment is zero-filled.
//!      4     4  crc    CRC32 (crc32fast) over len and over every byte after crc
//!      8     1  kind   RecordKind (0 is never valid, so zeros never decode as a record)
//!      9     8  index  u64 LE  (entry index; commit for HardState; `from` / `up_to` for markers)
//!     17     8  term   u64 LE  (entry term; term for HardState; 0 for markers)
//!     25     n  payload (entry data; the vote u64 LE for HardState; empty for markers)
//! ```
//!
//! The decoder takes arbitrary bytes and never panics (proptest in `tests/wal_decode.rs` and the
//! `cargo fuzz` target `kvnode/fuzz/fuzz_targets/record_decode.rs`).

use bytes::Bytes;
use thiserror::Error;

use kvraft::message::{Entry, EntryKind, HardState, Index};

/// Bytes before the payload.
pub const RECORD_HEADER_BYTES: usize = 25;
/// Bytes of `len` + `crc`: `len` counts the bytes after these.
const RECORD_PREFIX_BYTES: usize = 8;
/// The smallest valid `len`: kind + index + term.
const RECORD_LEN_MIN: usize = RECORD_HEADER_BYTES - RECORD_PREFIX_BYTES;
/// Payload of a HardState record: the vote.
const HARD_STATE_PAYLOAD_BYTES: usize = 8;

/// What a record carries. Discriminants are the on-disk `kind` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    EntryNormal = 1,
    EntryNoop = 2,
    HardState = 3,
    /// Boundary marker: entries with index >= `from` are discarded.
    Truncate = 4,
    /// Boundary marker: entries with index <= `up_to` are covered by a durable snapshot.
    Compact = 5,
    /// The segment ends here; the log continues in the next segment.
    SegmentEnd = 6,
    /// A configuration entry (`EntryKind::Config`): the payload is the encoded `Membership`.
    EntryConfig = 7,
}

impl RecordKind {
    /// The kind's name as error messages print it.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::EntryNormal => "entry",
            RecordKind::EntryNoop => "no-op entry",
            RecordKind::HardState => "hard state",
            RecordKind::Truncate => "truncate",
            RecordKind::Compact => "compact",
            RecordKind::SegmentEnd => "segment end",
            RecordKind::EntryConfig => "configuration entry",
        }
    }

    fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::EntryNormal),
            2 => Some(RecordKind::EntryNoop),
            3 => Some(RecordKind::HardState),
            4 => Some(RecordKind::Truncate),
            5 => Some(RecordKind::Compact),
            6 => Some(RecordKind::SegmentEnd),
            7 => Some(RecordKind::EntryConfig),
            _ => None,
        }
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Entry(Entry),
    HardState(HardState),
    Truncate { from: Index },
    Compact { up_to: Index },
    SegmentEnd,
}

/// Why bytes are not a valid record. Produced on arbitrary input, never a panic.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("torn record: {available_bytes} bytes left, the record needs {needed_bytes}")]
    Torn {
        needed_bytes: usize,
        available_bytes: usize,
    },
    #[error("record length {len} outside [{RECORD_LEN_MIN}, {len_max}]")]
    BadLength { len: usize, len_max: usize },
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("unknown record kind {kind}")]
    BadKind { kind: u8 },
    #[error("record of kind {} has a payload of {payload_bytes} bytes", .kind.name())]
    BadPayload {
        kind: RecordKind,
        payload_bytes: usize,
    },
    /// Markers carry no term (and SegmentEnd no index): anything else is not what we wrote.
    #[error("record of kind {} has unused fields set", .kind.name())]
    BadField { kind: RecordKind },
}

/// The result of decoding at one position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record and the bytes it takes.
    Record { record: Record, record_bytes: usize },
    /// A zero length field (or fewer than 4 bytes, all zero): the end of the written log.
    End,
}

/// The encoded size of a record with this payload.
pub fn record_bytes(payload_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + payload_bytes
}

/// The encoded size of `record`.
pub fn encoded_bytes(record: &Record) -> usize {
    match record {
        Record::Entry(entry) => record_bytes(entry.data.len()),
        Record::HardState(_) => record_bytes(HARD_STATE_PAYLOAD_BYTES),
        _ => record_bytes(0),
    }
}

/// Appends the encoding of `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let vote_bytes;
    let (kind, index, term, payload): (RecordKind, u64, u64, &[u8]) = match record {
        Record::Entry(entry) => {
            let kind = match entry.kind {
                EntryKind::Normal => RecordKind::EntryNormal,
                EntryKind::Noop => RecordKind::EntryNoop,
                EntryKind::Config => RecordKind::EntryConfig,
            };
            (kind, entry.index, entry.term, &entry.data)
        }
        Record::HardState(hard_state) => {
            vote_bytes = hard_state.vote.to_le_bytes();
            (
                RecordKind::HardState,
                hard_state.commit,
                hard_state.term,
                &vote_bytes,
            )
        }
        Record::Truncate { from } => (RecordKind::Truncate, *from, 0, &[]),
        Record::Compact { up_to } => (RecordKind::Compact, *up_to, 0, &[]),
        Record::SegmentEnd => (RecordKind::SegmentEnd, 0, 0, &[]),
    };
    let start = out.len();
    let len = u32::try_from(RECORD_LEN_MIN + payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = checksum(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// CRC over a whole encoded record, skipping the crc field itself.
fn checksum(record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[..4]);
    hasher.update(&record[RECORD_PREFIX_BYTES..]);
    hasher.finalize()
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// A checked record, borrowed from the input.
struct View<'a> {
    kind: RecordKind,
    index: u64,
    term: u64,
    payload: &'a [u8],
    record_bytes: usize,
}

/// Decodes the record at the start of `bytes`. `record_bytes_max` bounds the length field, so a
/// corrupt length is rejected without reading (or allocating) it.
pub fn decode(bytes: &[u8], record_bytes_max: usize) -> Result<Decoded, DecodeError> {
    let Some(view) = parse(bytes, record_bytes_max)? else {
        return Ok(Decoded::End);
    };
    let record = build(&view);
    Ok(Decoded::Record {
        record,
        record_bytes: view.record_bytes,
    })
}

/// Checks that `bytes` is a sequence of valid records and nothing else (no End inside), without
/// copying payloads. Run on every buffer before it is written: the read-back check's twin.
pub fn check_sequence(bytes: &[u8], record_bytes_max: usize) -> Result<usize, DecodeError> {
    let mut offset = 0;
    let mut count = 0;
    while offset < bytes.len() {
        let Some(view) = parse(&bytes[offset..], record_bytes_max)? else {
            let available_bytes = bytes.len() - offset;
            return Err(DecodeError::Torn {
                needed_bytes: 4,
                available_bytes,
            });
        };
        offset += view.record_bytes;
        count += 1;
    }
    Ok(count)
}

/// Every check of a record. `Ok(None)`: the end of the log.
fn parse(bytes: &[u8], record_bytes_max: usize) -> Result<Option<View<'_>>, DecodeError> {
    if bytes.len() < 4 {
        if bytes.iter().all(|byte| *byte == 0) {
            return Ok(None);
        }
        return Err(DecodeError::Torn {
            needed_bytes: 4,
            available_bytes: bytes.len(),
        });
    }
    let len = read_u32(bytes, 0) as usize;
    if len == 0 {
        return Ok(None);
    }
    let len_max = record_bytes_max.saturating_sub(RECORD_PREFIX_BYTES);
    if !(RECORD_LEN_MIN..=len_max).contains(&len) {
        return Err(DecodeError::BadLength { len, len_max });
    }
    let record_bytes = RECORD_PREFIX_BYTES + len;
    if bytes.len() < record_bytes {
        let available_bytes = bytes.len();
        return Err(DecodeError::Torn {
            needed_bytes: record_bytes,
            available_bytes,
        });
    }
    let record = &bytes[..record_bytes];
    let stored = read_u32(record, 4);
    let computed = checksum(record);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let kind = RecordKind::from_byte(record[8]).ok_or(DecodeError::BadKind { kind: record[8] })?;
    let view = View {
        kind,
        index: read_u64(record, 9),
        term: read_u64(record, 17),
        payload: &record[RECORD_HEADER_BYTES..],
        record_bytes,
    };
    check_fields(&view)?;
    Ok(Some(view))
}

fn check_fields(view: &View<'_>) -> Result<(), DecodeError> {
    let kind = view.kind;
    let payload_bytes = view.payload.len();
    let expected_bytes = match kind {
        RecordKind::EntryNormal | RecordKind::EntryNoop | RecordKind::EntryConfig => return Ok(()),
        RecordKind::HardState => HARD_STATE_PAYLOAD_BYTES,
        RecordKind::Truncate | RecordKind::Compact | RecordKind::SegmentEnd => 0,
    };
    if payload_bytes != expected_bytes {
        return Err(DecodeError::BadPayload {
            kind,
            payload_bytes,
        });
    }
    let marker = kind != RecordKind::HardState;
    if marker && (view.term != 0 || (kind == RecordKind::SegmentEnd && view.index != 0)) {
        return Err(DecodeError::BadField { kind });
    }
    Ok(())
}

/// Builds a record from a checked view.
fn build(view: &View<'_>) -> Record {
    let (index, term) = (view.index, view.term);
    let entry = |kind| {
        let data = Bytes::copy_from_slice(view.payload);
        Record::Entry(Entry {
            term,
            index,
            kind,
            data,
        })
    };
    match view.kind {
        RecordKind::EntryNormal => entry(EntryKind::Normal),
        RecordKind::EntryNoop => entry(EntryKind::Noop),
        RecordKind::EntryConfig => entry(EntryKind::Config),
        RecordKind::HardState => {
            let vote = read_u64(view.payload, 0);
            Record::HardState(HardState {
                term,
                vote,
                commit: index,
            })
        }
        RecordKind::Truncate => Record::Truncate { from: index },
        RecordKind::Compact => Record::Compact { up_to: index },
        RecordKind::SegmentEnd => Record::SegmentEnd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(record: Record) {
        let mut bytes = Vec::new();
        encode(&record, &mut bytes);
        assert_eq!(bytes.len(), encoded_bytes(&record));
        let decoded = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(
            decoded,
            Decoded::Record {
                record,
                record_bytes: bytes.len()
            }
        );
    }

    #[test]
    fn every_kind_round_trips() {
        let data = Bytes::from_static(b"hello");
        round_trip(Record::Entry(Entry {
            term: 3,
            index: 7,
            kind: EntryKind::Normal,
            data,
        }));
        let data = Bytes::new();
        round_trip(Record::Entry(Entry {
            term: 3,
            index: 8,
            kind: EntryKind::Noop,
            data,
        }));
        let membership = kvraft::message::Membership::new(vec![1, 2, 3]);
        round_trip(Record::Entry(Entry {
            term: 3,
            index: 9,
            kind: EntryKind::Config,
            data: Bytes::from(membership.encode()),
        }));
        round_trip(Record::HardState(HardState {
            term: 4,
            vote: 2,
            commit: 6,
        }));
        round_trip(Record::Truncate { from: 5 });
        round_trip(Record::Compact { up_to: 9 });
        round_trip(Record::SegmentEnd);
    }

    #[test]
    fn zeros_end_the_log_and_a_flipped_bit_is_caught() {
        assert_eq!(decode(&[0; 64], 1024), Ok(Decoded::End));
        assert_eq!(decode(&[0; 2], 1024), Ok(Decoded::End));
        let mut bytes = Vec::new();
        encode(&Record::Truncate { from: 5 }, &mut bytes);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let decoded = decode(&flipped, 1024);
            assert!(
                !matches!(decoded, Ok(Decoded::Record { .. })),
                "bit {bit}: {decoded:?}"
            );
        }
    }

    #[test]
    fn a_length_beyond_the_limit_is_refused_before_reading() {
        let mut bytes = vec![0u8; 8];
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&bytes, 1024),
            Err(DecodeError::BadLength { .. })
        ));
    }
}
