//! A simulated disk that honours the contracts of the real WAL and snapshot store, and no more:
//!
//! - a WAL command is durable only once a group commit that contains it finished (the WAL's
//!   `commands_durable_total` report); a crash keeps a random prefix of the unsynced commands
//!   and may tear the last one (a prefix of its entries survives, its hard state does not), as
//!   the real reader cuts a torn tail;
//! - a snapshot file installed from a leader is durable before the next action (the server
//!   writes, fsyncs and renames it synchronously); our own snapshot file becomes durable when
//!   its background write finishes, and is lost if the node crashes first;
//! - received snapshot files not yet installed do not survive a crash (the server ignores them
//!   at restart).
//!
//! Restarts read the image back through the real decoder (`StateMachine::restore`) and the real
//! recovery rule (`kvcore::NodeCore::recover`).

use std::collections::VecDeque;

use kvcore::{DiskState, WalCommand};
use kvraft::rng::Rng;
use kvraft::{EntriesToLoad, Entry, HardState, Index, SnapshotMeta, Term};
use kvstate::StateMachine;

/// What is on the platter.
#[derive(Clone, Debug, Default)]
pub(crate) struct Image {
    pub hard_state: HardState,
    /// The WAL's entries after `compacted`, contiguous.
    pub entries: Vec<Entry>,
    pub compacted: Index,
    /// The newest snapshot file: its description and the state machine bytes.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// The one before it (the real store keeps two): a leader whose log's compaction waits
    /// for a follower still sends it.
    pub previous_snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

#[derive(Debug, Default)]
pub(crate) struct Disk {
    pub image: Image,
    /// Commands handed to the WAL and not yet durable, in order.
    unsynced: VecDeque<WalCommand>,
    /// How many of `unsynced` the group commit under way covers (0: idle).
    pub in_flight: usize,
    /// Commands durable since the WAL was opened (the real WAL's report).
    durable_total: u64,
}

impl Image {
    /// Applies one WAL command; an error is a broken WAL contract (the real WAL refuses it).
    fn apply(&mut self, command: &WalCommand) -> Result<(), String> {
        match command {
            WalCommand::Append {
                entries,
                hard_state,
            } => {
                if let Some(first) = entries.first() {
                    let next = self
                        .entries
                        .last()
                        .map_or(self.compacted + 1, |e| e.index + 1);
                    if first.index > next || first.index <= self.compacted {
                        return Err(format!(
                            "WAL append at {} but the WAL continues at {next} (compacted to {})",
                            first.index, self.compacted
                        ));
                    }
                    self.entries.retain(|e| e.index < first.index);
                    self.entries.extend(entries.iter().cloned());
                }
                if let Some(hard_state) = hard_state {
                    self.hard_state = *hard_state;
                }
            }
            WalCommand::InstallSnapshot(index) => {
                self.entries.clear();
                self.compacted = *index;
            }
            WalCommand::Compact(index) => {
                self.entries.retain(|e| e.index > *index);
                self.compacted = self.compacted.max(*index);
            }
        }
        Ok(())
    }

    /// The term of the entry at `index` on disk (WAL or snapshot).
    pub fn term(&self, index: Index) -> Option<Term> {
        if let Some((meta, _)) = &self.snapshot {
            if index == meta.last_index {
                return Some(meta.last_term);
            }
        }
        let first = self.entries.first()?.index;
        let offset = index.checked_sub(first)?;
        self.entries.get(offset as usize).map(|e| e.term)
    }

    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |(m, _)| m.last_index)
    }
}

impl Disk {
    pub fn submit(&mut self, command: WalCommand) {
        self.unsynced.push_back(command);
    }

    /// Nothing written and not yet synced, nothing being synced.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.unsynced.is_empty()
    }

    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Starts a group commit of everything queued; false if one is under way or nothing waits.
    pub fn start_sync(&mut self) -> bool {
        if self.in_flight > 0 || self.unsynced.is_empty() {
            return false;
        }
        self.in_flight = self.unsynced.len();
        true
    }

    /// The group commit finished: its commands are durable. Returns the WAL's new report.
    pub fn finish_sync(&mut self) -> Result<u64, String> {
        for _ in 0..self.in_flight {
            if let Some(command) = self.unsynced.pop_front() {
                self.image.apply(&command)?;
                self.durable_total += 1;
            }
        }
        self.in_flight = 0;
        Ok(self.durable_total)
    }

    /// A power cut or kill: a random prefix of the unsynced commands reached the platter, the
    /// next one possibly torn. The WAL's count restarts at the next open.
    pub fn crash(&mut self, rng: &mut Rng, torn_per_million: u64) -> Result<(), String> {
        let keep = rng.below(self.unsynced.len() as u64 + 1) as usize;
        let commands: Vec<WalCommand> = self.unsynced.drain(..).collect();
        for command in &commands[..keep] {
            self.image.apply(command)?;
        }
        if let Some(WalCommand::Append { entries, .. }) = commands.get(keep) {
            if !entries.is_empty() && rng.chance(torn_per_million) {
                let survive = rng.below(entries.len() as u64) as usize;
                let torn = WalCommand::Append {
                    entries: entries[..survive].to_vec(),
                    hard_state: None,
                };
                self.image.apply(&torn)?;
            }
        }
        self.in_flight = 0;
        self.durable_total = 0;
        Ok(())
    }

    /// Entries read back for `load` as the real WAL reader does (`kvstorage::wal::load`): the
    /// durable entries from `load.low` on with the log's terms, contiguous, up to `load.high`
    /// and about `load.bytes_max`.
    pub fn read_entries(&self, load: &EntriesToLoad) -> Vec<Entry> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        for entry in self.image.entries.iter().filter(|e| e.index >= load.low) {
            let next = load.low + entries.len() as u64;
            let full = !entries.is_empty() && bytes >= load.bytes_max;
            if entry.index != next || load.term(next) != Some(entry.term) || full {
                break;
            }
            bytes += entry.size_bytes();
            entries.push(entry.clone());
        }
        entries
    }

    /// A received snapshot file installed by the node: durable at once.
    pub fn install_snapshot_file(&mut self, meta: SnapshotMeta, bytes: Vec<u8>) {
        self.image.previous_snapshot = self.image.snapshot.replace((meta, bytes));
    }

    /// Our own snapshot file finished writing. The store keeps the two newest.
    pub fn snapshot_written(&mut self, meta: SnapshotMeta, bytes: Vec<u8>) {
        if meta.last_index > self.image.snapshot_index() {
            self.image.previous_snapshot = self.image.snapshot.replace((meta, bytes));
        }
    }

    /// The kept snapshot file described by `meta`.
    pub fn snapshot_file(&self, meta: &SnapshotMeta) -> Option<Vec<u8>> {
        [&self.image.snapshot, &self.image.previous_snapshot]
            .into_iter()
            .flatten()
            .find(|(kept, _)| kept == meta)
            .map(|(_, bytes)| bytes.clone())
    }

    /// What a restarting node reads: the snapshot through the real decoder.
    pub fn read_back(&self) -> Result<DiskState, String> {
        let snapshot = match &self.image.snapshot {
            Some((meta, bytes)) => {
                let sm = StateMachine::restore(bytes)
                    .map_err(|e| format!("snapshot {} does not decode: {e}", meta.last_index))?;
                Some((meta.clone(), sm))
            }
            None => None,
        };
        Ok(DiskState {
            hard_state: self.image.hard_state,
            snapshot,
            wal_entries: self.image.entries.clone(),
            wal_compacted_index: self.image.compacted,
        })
    }
}
