//! Recovery: scan every segment in order, verify every record, rebuild the log.
//!
//! Rules (issue 3):
//! - The first torn or corrupt record of the LAST segment ends the log: the tail is cut (zeroed
//!   by the writer before it writes there) and a warning names the file and byte offset. Only
//!   the last segment can hold writes that were never acknowledged.
//! - Corruption in any other segment, a segment that ends without its end marker, or a gap in
//!   indexes refuses to start, naming the file and byte offset.
//! - A segment's header is made durable by the segment's first fdatasync, with its first
//!   records (a roll does not sync it alone). So the LAST segment may have no valid header
//!   (zeros, or cut) after a crash: nothing in it was acknowledged, and it is removed. If the
//!   record after such a header is valid, the header was damaged after it was written (a
//!   torn write keeps whole sectors, and the header shares its sector with that record):
//!   refused, as corruption.

use std::fs;
use std::path::Path;

use kvraft::message::Index;

use super::record::{self, Decoded, Record};
use super::segment::{self, SegmentId, SEGMENT_HEADER_BYTES};
use super::{Recovered, WalConfig, WalError};

/// Where the writer continues: the last segment and its end of log.
#[derive(Clone, Debug)]
pub(crate) struct Tail {
    pub segment: SegmentId,
    pub file_bytes: u64,
    /// The byte offset where the next record goes.
    pub end_offset: u64,
    /// Bytes in `[end_offset, dirty_end)` are not zero (a torn tail) and must be zeroed before
    /// new records are written there, so no stale record can ever follow a new one.
    pub dirty_end: u64,
    /// The segment ends with a SegmentEnd marker: the writer must start a new one.
    pub sealed: bool,
}

pub(crate) struct Scan {
    pub recovered: Recovered,
    pub segments: Vec<SegmentId>,
    pub tail: Option<Tail>,
}

/// Reads and verifies the WAL in `dir`, each segment read once.
pub(crate) fn recover(dir: &Path, config: &WalConfig) -> Result<Scan, WalError> {
    let mut segments = segment::list_segments(dir)?;
    let mut recovered = Recovered {
        first_index: 1,
        ..Recovered::default()
    };
    let mut tail = None;
    let mut unwritten_last = false;
    for (position, segment) in segments.iter().enumerate() {
        let bytes = fs::read(&segment.path).map_err(|source| WalError::Io {
            path: segment.path.clone(),
            source,
        })?;
        let is_first = position == 0;
        let is_last = position + 1 == segments.len();
        if is_last && never_written(segment, &bytes, config)? {
            unwritten_last = true;
            break;
        }
        // The tail is the last segment's, or the one before it if the last is removed (a
        // roll seals that one before it writes the next header).
        tail = Some(scan_segment(
            segment,
            &bytes,
            is_first,
            is_last,
            config,
            &mut recovered,
        )?);
    }
    if unwritten_last {
        if let Some(last) = segments.pop() {
            fs::remove_file(&last.path).map_err(|source| WalError::Io {
                path: last.path.clone(),
                source,
            })?;
            segment::sync_dir(dir)?;
        }
    }
    Ok(Scan {
        recovered,
        segments,
        tail,
    })
}

/// Whether the last segment's header never reached the disk (see the module doc): no valid
/// header and no valid record after it. A bad header before a valid record is corruption.
fn never_written(segment: &SegmentId, bytes: &[u8], config: &WalConfig) -> Result<bool, WalError> {
    let Err(reason) = segment::check_header(bytes, segment) else {
        return Ok(false);
    };
    let record_bytes_max = usize::try_from(config.record_bytes_max).unwrap_or(usize::MAX);
    let after_header = bytes.get(SEGMENT_HEADER_BYTES..).unwrap_or_default();
    if let Ok(Decoded::Record { .. }) = record::decode(after_header, record_bytes_max) {
        return Err(WalError::Corrupt {
            path: segment.path.clone(),
            offset: 0,
            reason: format!("{reason}, while the record after it is valid"),
        });
    }
    tracing::warn!(
        "wal: recovery: torn tail repaired: {} has no valid header ({reason}): the crash came \
         before its first fdatasync, so it held nothing acknowledged; removed",
        segment.path.display()
    );
    Ok(true)
}

fn scan_segment(
    segment: &SegmentId,
    bytes: &[u8],
    is_first: bool,
    is_last: bool,
    config: &WalConfig,
    recovered: &mut Recovered,
) -> Result<Tail, WalError> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        path: segment.path.clone(),
        offset: offset as u64,
        reason,
    };
    segment::check_header(bytes, segment).map_err(|reason| corrupt(0, reason))?;
    enter_segment(segment, is_first, recovered)?;
    let record_bytes_max = usize::try_from(config.record_bytes_max).unwrap_or(usize::MAX);
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut sealed = false;
    let mut torn = None;
    loop {
        match record::decode(&bytes[offset..], record_bytes_max) {
            Ok(Decoded::End) => break,
            Ok(Decoded::Record {
                record,
                record_bytes,
            }) => {
                sealed = record == Record::SegmentEnd;
                apply(recovered, record, segment, offset as u64)?;
                offset += record_bytes;
                if sealed {
                    break;
                }
            }
            Err(error) if is_last => {
                torn = Some(error.to_string());
                break;
            }
            Err(error) => return Err(corrupt(offset, error.to_string())),
        }
    }
    if !is_last && !sealed {
        return Err(corrupt(
            offset,
            "a segment before the last ends without an end marker".into(),
        ));
    }
    let dirty_end = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |at| at + 1);
    let dirty_end = dirty_end.max(offset);
    if is_last && (torn.is_some() || dirty_end > offset) {
        let reason = torn.unwrap_or_else(|| "non-zero bytes after the end of the log".into());
        warn_torn(segment, offset, dirty_end - offset, &reason);
    }
    Ok(Tail {
        segment: segment.clone(),
        file_bytes: bytes.len() as u64,
        end_offset: offset as u64,
        dirty_end: dirty_end as u64,
        sealed,
    })
}

/// The header's first index starts the log (first segment) or is a boundary: it discards the
/// entries from there on, and may not lie beyond the next index (a gap).
fn enter_segment(
    segment: &SegmentId,
    is_first: bool,
    recovered: &mut Recovered,
) -> Result<(), WalError> {
    if is_first {
        recovered.first_index = segment.first_index;
        return Ok(());
    }
    let next = next_index(recovered);
    if segment.first_index > next {
        return Err(WalError::Gap {
            path: segment.path.clone(),
            offset: 0,
            expected: next,
            found: segment.first_index,
        });
    }
    truncate_from(recovered, segment.first_index);
    Ok(())
}

fn warn_torn(segment: &SegmentId, offset: usize, dirty_bytes: usize, reason: &str) {
    tracing::warn!(
        "wal: recovery: torn tail repaired: {} at byte offset {}: {}; the log ends there \
         ({} bytes after it will be zeroed)",
        segment.path.display(),
        offset,
        reason,
        dirty_bytes,
    );
}

fn apply(
    recovered: &mut Recovered,
    record: Record,
    segment: &SegmentId,
    offset: u64,
) -> Result<(), WalError> {
    let next = next_index(recovered);
    let gap = |found| WalError::Gap {
        path: segment.path.clone(),
        offset,
        expected: next,
        found,
    };
    match record {
        Record::Entry(entry) => {
            if entry.index != next {
                return Err(gap(entry.index));
            }
            recovered.entries.push(entry);
        }
        Record::HardState(hard_state) => recovered.hard_state = hard_state,
        Record::Truncate { from } => {
            if from > next {
                return Err(gap(from));
            }
            if from <= recovered.compacted_index {
                return Err(WalError::Corrupt {
                    path: segment.path.clone(),
                    offset,
                    reason: format!(
                        "truncation from {from} reaches the compacted index {}",
                        recovered.compacted_index
                    ),
                });
            }
            truncate_from(recovered, from);
        }
        Record::Compact { up_to } => compact(recovered, up_to),
        Record::SegmentEnd => {}
    }
    Ok(())
}

fn next_index(recovered: &Recovered) -> Index {
    recovered.first_index + recovered.entries.len() as u64
}

/// Discards entries with index >= `from` (`from` <= next index).
fn truncate_from(recovered: &mut Recovered, from: Index) {
    if from <= recovered.first_index {
        recovered.entries.clear();
        recovered.first_index = from;
    } else {
        recovered
            .entries
            .truncate((from - recovered.first_index) as usize);
    }
}

/// Discards entries with index <= `up_to`; past the end, the log restarts at `up_to + 1`.
fn compact(recovered: &mut Recovered, up_to: Index) {
    recovered.compacted_index = recovered.compacted_index.max(up_to);
    if up_to < recovered.first_index {
        return;
    }
    let dropped = (up_to - recovered.first_index + 1).min(recovered.entries.len() as u64);
    recovered.entries.drain(..dropped as usize);
    recovered.first_index = up_to + 1;
}
