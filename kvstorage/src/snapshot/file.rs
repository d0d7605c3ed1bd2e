//! The snapshot file format and its verification.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "RKVSNAP1"
//!      8     4  version u32 LE
//!     12     4  meta_bytes u32 LE
//!     16     8  body_bytes u64 LE
//!     24     4  body_crc u32 LE   CRC32 of the body
//!     28     4  header_crc u32 LE CRC32 of bytes 0..28 and of the meta
//!     32     m  meta: SnapshotMeta (last index, last term, membership, membership index),
//!                  bincode 2 standard
//!
//! Version 2 added learners, outgoing voters and the membership index to the meta (issue 15).
//! Version 1 files (voters only) are still read: their configuration has index 0.
//!   32+m     n  body: the state machine's own serialization, opaque here
//! ```
//! The file is exactly `32 + m + n` bytes long.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use kvraft::message::SnapshotMeta;

use super::SnapshotError;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RKVSNAP1";
pub const SNAPSHOT_VERSION: u32 = 2;
/// The oldest version still read.
pub const SNAPSHOT_VERSION_MIN: u32 = 1;

/// The meta of a version 1 file.
#[derive(serde::Deserialize)]
struct SnapshotMetaV1 {
    last_index: u64,
    last_term: u64,
    voters: Vec<u64>,
}
pub const SNAPSHOT_HEADER_BYTES: usize = 32;
/// The encoded meta is a few bytes per voter; anything larger is corruption.
pub const META_BYTES_MAX: usize = 1 << 20;
/// Read granularity when verifying or copying a body.
pub const IO_CHUNK_BYTES: usize = 1 << 20;

/// The parsed fixed header plus meta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta,
    pub meta_bytes: u64,
    pub body_bytes: u64,
    pub body_crc: u32,
}

impl SnapshotHeader {
    /// Where the body starts.
    pub fn body_offset(&self) -> u64 {
        SNAPSHOT_HEADER_BYTES as u64 + self.meta_bytes
    }

    pub fn file_bytes(&self) -> u64 {
        self.body_offset() + self.body_bytes
    }
}

pub fn encode_meta(meta: &SnapshotMeta) -> Result<Vec<u8>, SnapshotError> {
    bincode::serde::encode_to_vec(meta, bincode::config::standard())
        .map_err(|error| SnapshotError::Encode(error.to_string()))
}

/// The header + meta bytes for a body of `body_bytes` with CRC `body_crc`.
pub fn encode_header(meta_encoded: &[u8], body_bytes: u64, body_crc: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + meta_encoded.len());
    header.extend_from_slice(&SNAPSHOT_MAGIC);
    header.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    header.extend_from_slice(&(meta_encoded.len() as u32).to_le_bytes());
    header.extend_from_slice(&body_bytes.to_le_bytes());
    header.extend_from_slice(&body_crc.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..28]);
    hasher.update(meta_encoded);
    header.extend_from_slice(&hasher.finalize().to_le_bytes());
    header.extend_from_slice(meta_encoded);
    header
}

fn word<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut word = [0u8; N];
    word.copy_from_slice(&bytes[at..at + N]);
    word
}

/// Parses the fixed header. Returns `Ok(None)` if `bytes` is too short to tell yet.
pub fn parse_fixed(bytes: &[u8]) -> Result<Option<(u64, u64, u32, u32)>, String> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Ok(None);
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err("bad snapshot magic".into());
    }
    let version = u32::from_le_bytes(word(bytes, 8));
    if !(SNAPSHOT_VERSION_MIN..=SNAPSHOT_VERSION).contains(&version) {
        return Err(format!("unsupported snapshot version {version}"));
    }
    let meta_bytes = u64::from(u32::from_le_bytes(word(bytes, 12)));
    if meta_bytes as usize > META_BYTES_MAX {
        return Err(format!(
            "meta of {meta_bytes} bytes exceeds {META_BYTES_MAX}"
        ));
    }
    let body_bytes = u64::from_le_bytes(word(bytes, 16));
    let body_crc = u32::from_le_bytes(word(bytes, 24));
    let header_crc = u32::from_le_bytes(word(bytes, 28));
    Ok(Some((meta_bytes, body_bytes, body_crc, header_crc)))
}

/// Parses header + meta from the start of a file. `Ok(None)`: not enough bytes yet.
pub fn parse_header(bytes: &[u8]) -> Result<Option<SnapshotHeader>, String> {
    let Some((meta_bytes, body_bytes, body_crc, header_crc)) = parse_fixed(bytes)? else {
        return Ok(None);
    };
    let meta_end = SNAPSHOT_HEADER_BYTES + meta_bytes as usize;
    if bytes.len() < meta_end {
        return Ok(None);
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..28]);
    hasher.update(&bytes[SNAPSHOT_HEADER_BYTES..meta_end]);
    if hasher.finalize() != header_crc {
        return Err("snapshot header checksum mismatch".into());
    }
    let config = bincode::config::standard().with_limit::<META_BYTES_MAX>();
    let encoded = &bytes[SNAPSHOT_HEADER_BYTES..meta_end];
    let decoded = if u32::from_le_bytes(word(bytes, 8)) == 1 {
        bincode::serde::decode_from_slice::<SnapshotMetaV1, _>(encoded, config).map(|(v1, used)| {
            let meta = SnapshotMeta {
                last_index: v1.last_index,
                last_term: v1.last_term,
                membership: kvraft::message::Membership::new(v1.voters),
                membership_index: 0,
            };
            (meta, used)
        })
    } else {
        bincode::serde::decode_from_slice::<SnapshotMeta, _>(encoded, config)
    };
    let (meta, used) =
        decoded.map_err(|error| format!("snapshot meta does not decode: {error}"))?;
    if meta.membership.validate().is_err() {
        return Err("snapshot meta holds an invalid configuration".into());
    }
    if used as u64 != meta_bytes {
        return Err("snapshot meta has trailing bytes".into());
    }
    Ok(Some(SnapshotHeader {
        meta,
        meta_bytes,
        body_bytes,
        body_crc,
    }))
}

/// Reads and checks a whole snapshot file: header, meta, length, body CRC.
pub fn verify(path: &Path) -> Result<SnapshotHeader, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    let mut prefix = vec![0u8; SNAPSHOT_HEADER_BYTES];
    file.read_exact(&mut prefix)
        .map_err(|_| corrupt("file shorter than a header".into()))?;
    let (meta_bytes, ..) = parse_fixed(&prefix).map_err(corrupt)?.unwrap_or_default();
    prefix.resize(SNAPSHOT_HEADER_BYTES + meta_bytes as usize, 0);
    file.read_exact(&mut prefix[SNAPSHOT_HEADER_BYTES..])
        .map_err(|_| corrupt("file shorter than its meta".into()))?;
    let header = parse_header(&prefix)
        .map_err(corrupt)?
        .ok_or_else(|| corrupt("incomplete header".into()))?;
    if file_bytes != header.file_bytes() {
        return Err(corrupt(format!(
            "file is {file_bytes} bytes, the header says {}",
            header.file_bytes()
        )));
    }
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; IO_CHUNK_BYTES];
    let mut left = header.body_bytes;
    while left > 0 {
        let chunk = left.min(IO_CHUNK_BYTES as u64) as usize;
        file.read_exact(&mut buffer[..chunk]).map_err(io)?;
        hasher.update(&buffer[..chunk]);
        left -= chunk as u64;
    }
    let computed = hasher.finalize();
    if computed != header.body_crc {
        return Err(corrupt(format!(
            "body checksum mismatch: stored {:#010x}, computed {computed:#010x}",
            header.body_crc
        )));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvraft::message::Membership;

    #[test]
    fn version_2_meta_round_trips_with_learners_and_joint_voters() {
        let meta = SnapshotMeta {
            last_index: 42,
            last_term: 3,
            membership: Membership {
                voters: vec![1, 4],
                voters_outgoing: vec![1, 2, 3],
                learners: vec![5],
            },
            membership_index: 40,
        };
        let encoded = encode_meta(&meta).unwrap();
        let header = encode_header(&encoded, 7, 0xabcd);
        let parsed = parse_header(&header).unwrap().unwrap();
        assert_eq!(parsed.meta, meta);
        assert_eq!(parsed.body_bytes, 7);
    }

    #[test]
    fn version_1_files_are_still_read() {
        // What version 1 wrote: last index, last term, voters.
        let v1 = (42u64, 3u64, vec![1u64, 2, 3]);
        let encoded = bincode::serde::encode_to_vec(v1, bincode::config::standard()).unwrap();
        let mut header = encode_header(&encoded, 7, 0xabcd);
        header[8..12].copy_from_slice(&1u32.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[..28]);
        hasher.update(&encoded);
        let crc = hasher.finalize().to_le_bytes();
        header[28..32].copy_from_slice(&crc);
        let parsed = parse_header(&header).unwrap().unwrap();
        assert_eq!(parsed.meta.last_index, 42);
        assert_eq!(parsed.meta.membership, Membership::new(vec![1, 2, 3]));
        assert_eq!(parsed.meta.membership_index, 0);
        // An unknown version is refused.
        header[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(parse_header(&header).is_err());
    }
}
