//! Segment files: naming, the fixed header, and creation of a preallocated segment.
//!
//! A segment is named `{seq:016x}-{first_index:016x}.wal`. `seq` orders segments; `first_index`
//! is the index of the first entry the segment may hold. A header `first_index` lower than the
//! log's next index is a boundary: it discards the entries from `first_index` on (a truncation
//! that reached an older segment, see `writer.rs`).
//!
//! A segment is born as a spare (`spare-{counter:016x}.tmp`, zeros, name made durable by the
//! preallocator) and renamed when installed, without a directory fsync: after a crash it may
//! still carry its temporary name, and `list_segments` recognises it by its header.
//!
//! A compacted segment is recycled rather than deleted (`recycle_segment`): renamed to
//! `recycled-{seq:016x}.tmp`, the seq it had, and zero-filled in place later to become a
//! spare. Until zeroed it still holds its old, valid header (seq equal to the one in its
//! name): `list_segments` removes it. Once installed its header carries a newer seq, so a
//! recycled file whose header seq is above its name's is a segment whose rename was lost.
//!
//! ```text
//! header (32 bytes): magic "RKVSWAL1" | version u32 | seq u64 | first_index u64 | crc u32
//! then records (record.rs), then zeros up to the preallocated size.
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kvraft::message::Index;

use super::WalError;

pub const SEGMENT_MAGIC: [u8; 8] = *b"RKVSWAL1";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Segments are preallocated in multiples of this (a file-system block).
pub const SEGMENT_ALIGN_BYTES: u64 = 4096;
/// Zeros written per `write` call while preallocating.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
const SEGMENT_SUFFIX: &str = ".wal";
const TMP_SUFFIX: &str = ".tmp";
const RECYCLED_PREFIX: &str = "recycled-";

/// What the header (and the file name) says about a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentId {
    pub seq: u64,
    pub first_index: Index,
    pub path: PathBuf,
}

pub fn segment_path(dir: &Path, seq: u64, first_index: Index) -> PathBuf {
    dir.join(format!("{seq:016x}-{first_index:016x}{SEGMENT_SUFFIX}"))
}

fn parse_name(name: &str) -> Option<(u64, Index)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (seq, first) = stem.split_once('-')?;
    if seq.len() != 16 || first.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(first, 16).ok()?,
    ))
}

/// The segment files of `dir` in `seq` order, read-only: temporary files are left alone (the
/// WAL may be writing them). For reading entries back while the WAL runs (`load`).
pub fn segment_files(dir: &Path) -> Result<Vec<SegmentId>, WalError> {
    let io = |source| WalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    for item in fs::read_dir(dir).map_err(io)? {
        let item = item.map_err(io)?;
        let name = item.file_name().to_string_lossy().into_owned();
        if let Some((seq, first_index)) = parse_name(&name) {
            let path = item.path();
            segments.push(SegmentId {
                seq,
                first_index,
                path,
            });
        }
    }
    segments.sort_by_key(|segment| segment.seq);
    Ok(segments)
}

/// Lists the segments of `dir` in `seq` order. A temporary file (`.tmp`) is either a segment
/// whose rename was not yet durable when the node stopped (its header is valid: it is renamed
/// now), or a spare or segment creation that never held data (removed).
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentId>, WalError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WalError::Io { path, source }
    };
    let mut segments = Vec::new();
    let mut renamed = false;
    for item in fs::read_dir(dir).map_err(io(dir))? {
        let item = item.map_err(io(dir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let path = item.path();
        if name.ends_with(TMP_SUFFIX) {
            match read_header(&path)? {
                Some((seq, _)) if parse_recycled(&name).is_some_and(|old| seq <= old) => {
                    tracing::info!(
                        "wal: recovery: removing {}, a compacted segment that was waiting to \
                         be reused",
                        path.display()
                    );
                    fs::remove_file(&path).map_err(io(&path))?;
                }
                Some((seq, first_index)) => {
                    let target = segment_path(dir, seq, first_index);
                    if target.exists() {
                        return Err(WalError::Corrupt {
                            path,
                            offset: 0,
                            reason: format!(
                                "holds the header of segment {}, which also exists",
                                target.display()
                            ),
                        });
                    }
                    tracing::warn!(
                        "wal: recovery: {} is segment {seq}, whose rename was lost in a crash: \
                         renamed to {}",
                        path.display(),
                        target.display()
                    );
                    fs::rename(&path, &target).map_err(io(&path))?;
                    renamed = true;
                    segments.push(SegmentId {
                        seq,
                        first_index,
                        path: target,
                    });
                }
                None => fs::remove_file(&path).map_err(io(&path))?,
            }
            continue;
        }
        match parse_name(&name) {
            Some((seq, first_index)) => segments.push(SegmentId {
                seq,
                first_index,
                path,
            }),
            None => tracing::warn!(file = %path.display(), "wal: ignoring a foreign file"),
        }
    }
    if renamed {
        sync_dir(dir)?;
    }
    segments.sort_by_key(|segment| segment.seq);
    Ok(segments)
}

/// The `(seq, first_index)` of a file's header, `None` if it has no valid one (a spare's zeros,
/// a short file).
fn read_header(path: &Path) -> Result<Option<(u64, Index)>, WalError> {
    let io = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(io(error)),
    }
    let seq = u64::from_le_bytes(header[12..20].try_into().unwrap_or_default());
    let first_index = u64::from_le_bytes(header[20..28].try_into().unwrap_or_default());
    Ok((header == encode_header(seq, first_index)).then_some((seq, first_index)))
}

pub fn encode_header(seq: u64, first_index: Index) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&seq.to_le_bytes());
    header[20..28].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Checks a header against the segment's name. Returns why it is not valid.
pub fn check_header(bytes: &[u8], segment: &SegmentId) -> Result<(), String> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "file of {} bytes has no complete header",
            bytes.len()
        ));
    }
    let expected = encode_header(segment.seq, segment.first_index);
    if bytes[..SEGMENT_HEADER_BYTES] == expected {
        return Ok(());
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".to_string());
    }
    if bytes[8..12] != expected[8..12] {
        return Err("unsupported segment version".to_string());
    }
    Err("segment header checksum or fields do not match the file name".to_string())
}

/// The seq in a recycled segment's name (`recycled_path`).
fn parse_recycled(name: &str) -> Option<u64> {
    let seq = name
        .strip_prefix(RECYCLED_PREFIX)?
        .strip_suffix(TMP_SUFFIX)?;
    if seq.len() != 16 {
        return None;
    }
    u64::from_str_radix(seq, 16).ok()
}

/// Where a compacted segment waits to be zero-filled into a spare (see the module doc).
pub fn recycled_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{RECYCLED_PREFIX}{seq:016x}{TMP_SUFFIX}"))
}

/// Renames a compacted segment to its recycled name. The caller makes the rename durable
/// (`sync_dir`) before anything overwrites the file: a crash must never leave zeros under a
/// segment's name. Returns the recycled path.
pub fn recycle_segment(dir: &Path, segment: &SegmentId) -> Result<PathBuf, WalError> {
    let path = recycled_path(dir, segment.seq);
    fs::rename(&segment.path, &path).map_err(|source| WalError::Io {
        path: segment.path.clone(),
        source,
    })?;
    Ok(path)
}

/// A zero-filled, synced file waiting to become a segment (see `spare_path`).
#[derive(Debug)]
pub struct Spare {
    pub path: PathBuf,
    pub file: File,
    pub size_bytes: u64,
}

/// Spare files are temporary until installed: `list_segments` removes leftovers at open.
pub fn spare_path(dir: &Path, counter: u64) -> PathBuf {
    dir.join(format!("spare-{counter:016x}{TMP_SUFFIX}"))
}

/// Creates a file of `size_bytes` written zeros and makes it durable, name included (file
/// fsync, then directory fsync): installing it later needs no directory fsync. Zeros really
/// written (not a sparse hole or an unwritten extent): overwriting written blocks needs no
/// allocation at fdatasync time, which is what makes it fast here.
pub fn create_spare(path: &Path, size_bytes: u64) -> Result<Spare, WalError> {
    let io = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    write_zeros(&file, size_bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(Spare {
        path: path.to_path_buf(),
        file,
        size_bytes,
    })
}

/// Turns a recycled segment (`recycle_segment`) into a spare: its whole length overwritten
/// with zeros in place and synced. Its blocks stay allocated: nothing is freed (which, on a
/// file system mounted with `discard`, TRIMs at the next journal commit, and the WAL's
/// fdatasync waits for that commit) and nothing allocated. Its name is already durable. `None`
/// (and the file removed) if it is smaller than `size_bytes`.
pub fn respare(path: &Path, size_bytes: u64) -> Result<Option<Spare>, WalError> {
    let io = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    if file_bytes < size_bytes {
        drop(file);
        fs::remove_file(path).map_err(io)?;
        return Ok(None);
    }
    write_zeros(&file, file_bytes).map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(Some(Spare {
        path: path.to_path_buf(),
        file,
        size_bytes: file_bytes,
    }))
}

/// Writes `size_bytes` zeros from the file's current position, paced (`paced.rs`).
fn write_zeros(file: &File, size_bytes: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut written = 0;
    let mut paced = crate::paced::PacedFile::new(file);
    while written < size_bytes {
        let chunk = (size_bytes - written).min(ZERO_CHUNK_BYTES as u64) as usize;
        paced.write_all(&zeros[..chunk])?;
        written += chunk as u64;
    }
    Ok(())
}

/// Turns a spare into a segment: header and `head` records written over its zeros, then
/// renamed. Nothing is synced here: the segment's first fdatasync (the group's, which every
/// acknowledgement of a record in it waits for) makes the header durable with the records.
/// A crash before it leaves a last segment without a valid header, and nothing acknowledged
/// in it: recovery removes it (`reader.rs`). The spare's name is already durable
/// (`create_spare`) and the rename need not be: after a crash the segment is found under
/// either name, by its header (`list_segments`). So a roll adds no fdatasync of its own and
/// no directory fsync (which commits the file system's journal and waits for every file's
/// ordered data: milliseconds under load) to the group's.
pub fn install_spare(
    dir: &Path,
    spare: Spare,
    seq: u64,
    first_index: Index,
    head: &[u8],
) -> Result<(SegmentId, File), WalError> {
    let io = |source| WalError::Io {
        path: spare.path.clone(),
        source,
    };
    let mut prefix = encode_header(seq, first_index).to_vec();
    prefix.extend_from_slice(head);
    spare.file.write_all_at(&prefix, 0).map_err(io)?;
    let path = segment_path(dir, seq, first_index);
    fs::rename(&spare.path, &path).map_err(io)?;
    Ok((
        SegmentId {
            seq,
            first_index,
            path,
        },
        spare.file,
    ))
}

/// Creates a segment synchronously (no spare at hand).
pub fn create_segment(
    dir: &Path,
    seq: u64,
    first_index: Index,
    head: &[u8],
    size_bytes: u64,
) -> Result<(SegmentId, File), WalError> {
    let tmp = dir.join(format!("{seq:016x}{TMP_SUFFIX}"));
    let spare = create_spare(&tmp, size_bytes)?;
    install_spare(dir, spare, seq, first_index, head)
}

/// Fsyncs a directory so that creations, renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    let io = |source| WalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    File::open(dir).map_err(io)?.sync_all().map_err(io)
}

/// The size to preallocate for a segment that must hold `needed_bytes`.
pub fn segment_size_bytes(segment_bytes_max: u64, needed_bytes: u64) -> u64 {
    let size = segment_bytes_max.max(needed_bytes);
    size.div_ceil(SEGMENT_ALIGN_BYTES) * SEGMENT_ALIGN_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let path = segment_path(Path::new("/x"), 3, 77);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_name(name), Some((3, 77)));
        assert_eq!(parse_name("LOCK"), None);
        let recycled = recycled_path(Path::new("/x"), 5);
        let name = recycled.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_recycled(name), Some(5));
        assert_eq!(parse_recycled("spare-0000000000000005.tmp"), None);
    }

    #[test]
    fn header_checks_name_and_checksum() {
        let segment = SegmentId {
            seq: 2,
            first_index: 9,
            path: PathBuf::new(),
        };
        let mut header = encode_header(2, 9);
        assert_eq!(check_header(&header, &segment), Ok(()));
        header[25] ^= 1;
        assert!(check_header(&header, &segment).is_err());
        let other = SegmentId {
            seq: 2,
            first_index: 10,
            path: PathBuf::new(),
        };
        assert!(check_header(&encode_header(2, 9), &other).is_err());
    }
}
