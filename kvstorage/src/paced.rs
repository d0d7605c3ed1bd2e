//! Paced writeback for background writers (snapshot files, spare WAL segments): they fdatasync
//! every `WRITEBACK_SYNC_BYTES`, so the disk never holds a large dirty backlog. Without it a
//! snapshot's or a spare segment's final fsync flushes hundreds of megabytes at once, and the
//! WAL's own fdatasync, which every acknowledgement waits for, queues behind that flush (the
//! reason RocksDB has `bytes_per_sync`). The background writer pays the syncs; the WAL's
//! latency stays bounded by one chunk in flight.

use std::fs::File;
use std::io::{self, Write};

/// Bytes a background writer may leave unsynced before it fdatasyncs.
pub const WRITEBACK_SYNC_BYTES: u64 = 4 << 20;

/// Counts bytes written to one file since its last fdatasync and syncs when the backlog is
/// full: for writers that own their file (and `PacedFile` for those that borrow it).
#[derive(Debug, Default)]
pub struct Writeback {
    unsynced_bytes: u64,
}

impl Writeback {
    /// Counts `bytes` just written to `file`; fdatasyncs it if the backlog is full.
    pub fn wrote(&mut self, file: &File, bytes: u64) -> io::Result<()> {
        self.unsynced_bytes += bytes;
        if self.unsynced_bytes >= WRITEBACK_SYNC_BYTES {
            file.sync_data()?;
            self.unsynced_bytes = 0;
        }
        Ok(())
    }
}

/// A file writer that fdatasyncs every `WRITEBACK_SYNC_BYTES` written through it.
#[derive(Debug)]
pub struct PacedFile<'a> {
    file: &'a File,
    writeback: Writeback,
}

impl<'a> PacedFile<'a> {
    pub fn new(file: &'a File) -> PacedFile<'a> {
        PacedFile {
            file,
            writeback: Writeback::default(),
        }
    }
}

impl Write for PacedFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = (&mut &*self.file).write(buf)?;
        self.writeback.wrote(self.file, written as u64)?;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_written_reaches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paced");
        let file = File::create(&path).unwrap();
        let mut paced = PacedFile::new(&file);
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..9 {
            paced.write_all(&chunk).unwrap();
        }
        assert_eq!(paced.writeback.unsynced_bytes, 1 << 20);
        assert_eq!(std::fs::read(&path).unwrap().len(), 9 << 20);
    }
}
