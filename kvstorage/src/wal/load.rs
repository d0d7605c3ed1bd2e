//! Reading entries back while the WAL runs: the Raft log evicts old entries from memory
//! (`kvraft::log::RaftLog::evict`), and a leader whose follower needs them asks for them
//! (`kvraft::EntriesToLoad`). They are durable (only applied, durable entries are evicted), so
//! they lie in the segment files before the WAL's write position.
//!
//! Which records: the WAL may hold several records for one index (a suffix overwritten after a
//! leader change, or cut by a segment header's first index). Only the record with the log's
//! term for its index is one of our entries (Log Matching: one index and term name one entry),
//! so the reader takes, in write order, the first record for the next index wanted whose term is
//! the log's, and skips every other.
//!
//! Where to start: at the newest segment whose first index is at or below `low`. A segment
//! starts at the log's next index when it is created, so a segment created after our record
//! for `low` was written with a first index at or below `low` would mean the log was cut below
//! `low` since, and our record written again after. Or at a `LoadCursor`: where the previous
//! read for the same follower stopped, when it stopped right before `low` (a catch-up reads a
//! segment once, not once per append). If that finds nothing, the reader scans from the oldest
//! segment.
//!
//! Races with the WAL (a compaction deleting or recycling a segment, the live segment being
//! written past our range) end the read early: the entries read so far (a contiguous run from
//! `low`, every record checksummed) are returned, and the leader asks again for the rest.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kvraft::message::{Entry, Index};
use kvraft::EntriesToLoad;

use super::record::{self, DecodeError, Decoded, Record};
use super::segment::{self, SEGMENT_HEADER_BYTES};
use super::WalError;

/// The most of a segment one read takes at a time (more if a record is larger).
const LOAD_READ_CHUNK_BYTES: usize = 4 << 20;
/// Read beyond a load's byte budget, for the records that complete it.
const LOAD_READ_SLACK_BYTES: usize = 64 << 10;
/// A record's length field: fewer bytes left in a chunk than this cannot tell the end of the
/// log from a cut record.
const RECORD_LENGTH_BYTES: usize = 4;

/// Where a read stopped: the next record to look at and the index wanted there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadCursor {
    pub path: PathBuf,
    pub offset: usize,
    pub next_index: Index,
}

/// Reads the entries `load` asks for (see the module doc). Returns a contiguous run from
/// `load.low` (empty if none is found) and where the read stopped.
pub fn read_entries(
    dir: &Path,
    record_bytes_max: u64,
    load: &EntriesToLoad,
    cursor: Option<&LoadCursor>,
) -> Result<(Vec<Entry>, Option<LoadCursor>), WalError> {
    // About one chunk per read: what is asked for, and a little more for the record that
    // crosses the budget.
    let wanted = usize::try_from(load.bytes_max).unwrap_or(usize::MAX);
    let chunk_bytes = wanted.saturating_add(LOAD_READ_SLACK_BYTES);
    let chunk_bytes = chunk_bytes.min(LOAD_READ_CHUNK_BYTES);
    read_entries_in_chunks(dir, record_bytes_max, load, cursor, chunk_bytes)
}

/// `read_entries`, reading segments `chunk_bytes` at a time (tests use tiny chunks, so that
/// records are cut everywhere).
pub fn read_entries_in_chunks(
    dir: &Path,
    record_bytes_max: u64,
    load: &EntriesToLoad,
    cursor: Option<&LoadCursor>,
    chunk_bytes: usize,
) -> Result<(Vec<Entry>, Option<LoadCursor>), WalError> {
    let segments = segment::segment_files(dir)?;
    let record_bytes_max = usize::try_from(record_bytes_max).unwrap_or(usize::MAX);
    let mut reader = Reader {
        load,
        record_bytes_max,
        chunk_bytes: chunk_bytes.max(1),
        entries: Vec::new(),
        bytes: 0,
        stopped: None,
    };
    let resume = cursor.filter(|c| c.next_index == load.low);
    let start = match resume {
        Some(c) => segments.iter().position(|s| s.path == c.path),
        None => segments.iter().rposition(|s| s.first_index <= load.low),
    };
    if let Some(start) = start {
        let offset = resume.map_or(SEGMENT_HEADER_BYTES, |c| c.offset);
        reader.scan(&segments[start..], offset)?;
    }
    if reader.entries.is_empty() && start != Some(0) {
        reader.scan(&segments, SEGMENT_HEADER_BYTES)?;
    }
    Ok((reader.entries, reader.stopped))
}

struct Reader<'a> {
    load: &'a EntriesToLoad,
    record_bytes_max: usize,
    chunk_bytes: usize,
    entries: Vec<Entry>,
    bytes: u64,
    stopped: Option<LoadCursor>,
}

impl Reader<'_> {
    fn next_index(&self) -> Index {
        self.load.low + self.entries.len() as u64
    }

    fn done(&self) -> bool {
        self.next_index() > self.load.high
            || (!self.entries.is_empty() && self.bytes >= self.load.bytes_max)
    }

    /// Scans `segments` in order, the first from `offset`, until done.
    fn scan(&mut self, segments: &[segment::SegmentId], offset: usize) -> Result<(), WalError> {
        let mut offset = offset;
        for segment in segments {
            let io = |source| WalError::Io {
                path: segment.path.clone(),
                source,
            };
            let file = match File::open(&segment.path) {
                Ok(file) => file,
                // Compacted (deleted or recycled) meanwhile: what follows may still be there.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(io(source)),
            };
            let file_bytes = file.metadata().map_err(io)?.len() as usize;
            let header = read_at(&file, 0, SEGMENT_HEADER_BYTES.min(file_bytes)).map_err(io)?;
            if segment::check_header(&header, segment).is_ok() {
                self.scan_segment(&segment.path, &file, file_bytes, offset)
                    .map_err(io)?;
            }
            if self.done() {
                break;
            }
            offset = SEGMENT_HEADER_BYTES;
        }
        Ok(())
    }

    /// Reads the records of one segment from `offset` in chunks of `chunk_bytes` (a catch-up
    /// reads a 16 MiB segment about once, a megabyte per append, not the whole file per
    /// append), until done or the end of what was written.
    fn scan_segment(
        &mut self,
        path: &Path,
        file: &File,
        file_bytes: usize,
        mut offset: usize,
    ) -> std::io::Result<()> {
        let mut chunk: Vec<u8> = Vec::new();
        let mut chunk_start = offset;
        let mut want = self.chunk_bytes;
        while !self.done() {
            let rest = chunk.get(offset - chunk_start..).unwrap_or_default();
            let decoded = record::decode(rest, self.record_bytes_max);
            let chunk_end = chunk_start + chunk.len();
            // A record cut by the chunk's end, not the log's: read on from it.
            let cut = chunk_end < file_bytes
                && match &decoded {
                    Err(DecodeError::Torn { needed_bytes, .. }) => {
                        want = want.max(*needed_bytes);
                        true
                    }
                    Ok(Decoded::End) => rest.len() < RECORD_LENGTH_BYTES,
                    Ok(Decoded::Record { .. }) | Err(_) => false,
                };
            if cut {
                chunk = read_at(file, offset, want.min(file_bytes - offset))?;
                chunk_start = offset;
                continue;
            }
            // The end of what was written, or a record being written (or zeroed) right now.
            let Ok(Decoded::Record {
                record,
                record_bytes,
            }) = decoded
            else {
                return Ok(());
            };
            offset += record_bytes;
            match record {
                Record::Entry(entry) => {
                    let index = self.next_index();
                    if entry.index == index && self.load.term(index) == Some(entry.term) {
                        self.bytes += entry.size_bytes();
                        self.entries.push(entry);
                        self.stopped = Some(LoadCursor {
                            path: path.to_path_buf(),
                            offset,
                            next_index: index + 1,
                        });
                    }
                }
                Record::SegmentEnd => return Ok(()),
                Record::HardState(_) | Record::Truncate { .. } | Record::Compact { .. } => {}
            }
        }
        Ok(())
    }
}

fn read_at(file: &File, offset: usize, bytes: usize) -> std::io::Result<Vec<u8>> {
    let mut buffer = vec![0; bytes];
    file.read_exact_at(&mut buffer, offset as u64)?;
    Ok(buffer)
}
