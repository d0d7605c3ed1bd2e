//! The in-memory Raft log: every entry since the last snapshot, with the marks that tell which
//! part is durable (`stable`), which part was handed out for persistence (`unstable_from`), what
//! is committed and what was handed out for applying.
//!
//! ```text
//!   snapshot.last_index   stable      unstable_from-1      last_index
//!        |                  |                |                 |
//!   ... [s] [ e ... persisted ... e ] [ e .. in flight .. e ] [ e .. not yet handed out .. e ]
//! ```
//!
//! Invariants (asserted): `applied <= applying <= committed <= last_index`,
//! `snapshot.last_index <= applied`, `stable <= last_index`.
//!
//! ## Evicted entries
//!
//! The entries after the snapshot are all in the WAL, but not all in memory: `evict` drops
//! the oldest applied, durable ones from memory once the log outgrows its memory budget (a
//! follower catching up after a snapshot install replays up to a million entries, about
//! 450 MB at 8M keys, more than the state's margin; `proto-docs/storage.md`). Their terms stay
//! (one `(first index, term)` run per term, for the log matching checks) and so do their
//! configuration entries (for `membership_at`). A leader that needs them for a follower asks
//! its driver to read them back from the WAL (`Ready::entries_to_load`).
//!
//! ```text
//!   snapshot.last_index   memory_base              last_index
//!        |                     |                        |
//!   ... [s] [ evicted: terms only ] [ e ... in memory ... e ]
//! ```
//! `snapshot.last_index <= memory_base <= min(applied, stable)`.

use std::collections::VecDeque;

use bytes::Bytes;

use super::message::{Entry, EntryKind, Index, SnapshotMeta, Term};

#[derive(Debug)]
pub struct RaftLog {
    snapshot: SnapshotMeta,
    /// The last evicted index (`snapshot.last_index` when none is):
    /// `entries[i].index == memory_base + 1 + i`.
    memory_base: Index,
    /// The terms of the evicted entries `(snapshot.last_index, memory_base]`: `(first index,
    /// term)` of each run of one term, ascending.
    evicted_terms: Vec<(Index, Term)>,
    /// The evicted configuration entries `(index, data)`, ascending.
    evicted_configs: Vec<(Index, Bytes)>,
    /// `Entry::size_bytes` summed over `entries`.
    memory_bytes: u64,
    /// A ring buffer: dropping from the front (eviction, compaction) moves only the entries
    /// dropped, never the ones kept, and its capacity stays (a `Vec` moved every kept entry
    /// into a fresh allocation, which then regrew).
    entries: VecDeque<Entry>,
    pub(crate) committed: Index,
    /// Highest index handed out in a `Ready` for applying.
    pub(crate) applying: Index,
    /// Highest index the caller reported applied.
    pub(crate) applied: Index,
    /// Highest index known durable on this node.
    pub(crate) stable: Index,
    /// First index not yet handed out in a `Ready` for persisting.
    pub(crate) unstable_from: Index,
}

impl RaftLog {
    /// A log rebuilt from durable state: everything in it is stable.
    pub fn restore_from_storage(
        snapshot: SnapshotMeta,
        entries: Vec<Entry>,
        commit: Index,
    ) -> Self {
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, snapshot.last_index + 1 + offset as u64);
        }
        let last = snapshot.last_index + entries.len() as u64;
        let committed = commit.clamp(snapshot.last_index, last);
        RaftLog {
            memory_base: snapshot.last_index,
            evicted_terms: Vec::new(),
            evicted_configs: Vec::new(),
            memory_bytes: entries.iter().map(Entry::size_bytes).sum(),
            committed,
            applying: snapshot.last_index,
            applied: snapshot.last_index,
            stable: last,
            unstable_from: last + 1,
            snapshot,
            entries: entries.into(),
        }
    }

    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    pub fn first_index(&self) -> Index {
        self.snapshot.last_index + 1
    }

    pub fn last_index(&self) -> Index {
        self.memory_base + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        match self.entries.back() {
            Some(entry) => entry.term,
            None => self
                .term(self.memory_base)
                .unwrap_or(self.snapshot.last_term),
        }
    }

    /// The first index held in memory: entries below it (and after the snapshot) are evicted.
    pub fn memory_first_index(&self) -> Index {
        self.memory_base + 1
    }

    /// `Entry::size_bytes` summed over the entries held in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// The term of the entry at `index`; `None` when compacted away or beyond the end.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.last_index {
            return Some(self.snapshot.last_term);
        }
        if index > self.snapshot.last_index && index <= self.memory_base {
            return Some(self.evicted_term(index));
        }
        self.entry(index).map(|e| e.term)
    }

    /// The term of an evicted entry (`snapshot.last_index < index <= memory_base`).
    fn evicted_term(&self, index: Index) -> Term {
        let term = term_in_runs(&self.evicted_terms, index);
        term.unwrap_or_else(|| panic!("no term run for evicted entry {index}"))
    }

    /// The term runs `(first index, term)` covering `low..=high`, all evicted; the first run
    /// starts at `low`. What the WAL reader needs to pick the records of our log among
    /// overwritten ones.
    pub fn evicted_terms_between(&self, low: Index, high: Index) -> Vec<(Index, Term)> {
        assert!(low > self.snapshot.last_index && high <= self.memory_base && low <= high);
        let mut runs = vec![(low, self.evicted_term(low))];
        let later = self.evicted_terms.iter();
        runs.extend(later.filter(|&&(first, _)| first > low && first <= high));
        runs
    }

    /// The entry at `index` if it is held in memory.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.memory_base {
            return None;
        }
        self.entries.get((index - self.memory_base - 1) as usize)
    }

    /// The newest configuration entry at or below `index` after the snapshot, evicted or not:
    /// `(index, data)`.
    pub fn config_at_or_below(&self, index: Index) -> Option<(Index, &Bytes)> {
        let mut at = index.min(self.last_index());
        while at > self.memory_base {
            let entry = self.entry(at)?;
            if entry.kind == EntryKind::Config {
                return Some((at, &entry.data));
            }
            at -= 1;
        }
        (self.evicted_configs.iter().rev())
            .find(|(config_index, _)| *config_index <= at)
            .map(|(config_index, data)| (*config_index, data))
    }

    /// The configuration entries after `index`, evicted or not: `(index, data)`, ascending.
    pub fn configs_after(&self, index: Index) -> Vec<(Index, Bytes)> {
        let evicted = self.evicted_configs.iter().cloned();
        let held = self.entries.iter().filter(|e| e.kind == EntryKind::Config);
        evicted
            .chain(held.map(|e| (e.index, e.data.clone())))
            .filter(|(config_index, _)| *config_index > index)
            .collect()
    }

    pub fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft §5.4.1: is a candidate's log at least as up-to-date as ours?
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries from `low` on, at most `bytes_max` of them but always at least one if any exist.
    /// `low` must not be compacted.
    /// `low` must be held in memory (neither compacted nor evicted).
    pub fn entries_from(&self, low: Index, bytes_max: u64) -> Vec<Entry> {
        assert!(
            low > self.memory_base,
            "entries_from an index not in memory"
        );
        let mut out = Vec::new();
        let mut bytes = 0;
        let start = (low - self.memory_base - 1) as usize;
        for entry in self.entries.iter().skip(start) {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Appends entries whose first index is at most `last_index + 1`, truncating a conflicting
    /// suffix first. Committed entries are never truncated.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(
            first.index > self.committed,
            "truncating committed entry {}",
            first.index
        );
        assert!(
            first.index <= self.last_index() + 1,
            "gap before entry {}",
            first.index
        );
        assert!(first.index > self.memory_base);
        let keep = (first.index - self.memory_base - 1) as usize;
        let truncated: u64 = self.entries.iter().skip(keep).map(Entry::size_bytes).sum();
        self.entries.truncate(keep);
        self.stable = self.stable.min(first.index - 1);
        self.unstable_from = self.unstable_from.min(first.index);
        self.entries.extend(entries.iter().cloned());
        let added: u64 = entries.iter().map(Entry::size_bytes).sum();
        self.memory_bytes = self.memory_bytes - truncated + added;
    }

    /// The index of the first entry in `entries` that is new to this log or conflicts with it;
    /// `None` when this log already holds all of them.
    pub fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries
            .iter()
            .find(|e| !self.match_term(e.index, e.term) && e.index > self.snapshot.last_index)
            .map(|e| e.index)
    }

    /// The last index at or below `index` whose term is at most `term`, with that term. Used in
    /// both directions of the rejection hint, so that the leader skips a whole term per round
    /// trip instead of one entry.
    ///
    /// ```text
    ///   idx        1 2 3 4 5 6 7 8 9
    ///   leader     1 3 3 3 5 5 5 5 5
    ///   follower   1 1 1 1 2 2
    /// ```
    /// The leader probes with (prev 9, term 5). The follower's log ends at 6, so it looks at
    /// `find_conflict_by_term(6, 5)` = (6, 2) and answers with the hint (6, term 2). The leader
    /// looks at `find_conflict_by_term(6, 2)` on its own log = (1, 1) and next probes (1, 1),
    /// which matches: two round trips instead of eight.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Some(t) if t > term => index -= 1,
                Some(t) => return (index, t),
                // Compacted: everything at or below the snapshot is committed and matches.
                None => return (self.snapshot.last_index, self.snapshot.last_term),
            }
        }
    }

    pub fn commit_to(&mut self, index: Index) {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {index} beyond last index"
            );
            self.committed = index;
        }
    }

    /// Entries not yet handed out for persisting; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.unstable_from > last {
            return Vec::new();
        }
        let start = (self.unstable_from - self.memory_base - 1) as usize;
        self.unstable_from = last + 1;
        self.entries.range(start..).cloned().collect()
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// The caller made entries up to `(index, term)` durable. Ignored if that entry has been
    /// overwritten since (its term no longer matches): the newer entries report on their own.
    pub fn on_persisted(&mut self, index: Index, term: Term) -> bool {
        if index > self.stable && index < self.unstable_from && self.match_term(index, term) {
            self.stable = index;
            return true;
        }
        false
    }

    /// Committed entries not yet handed out for applying, at most `bytes_max` (at least one).
    pub fn take_committed(&mut self, bytes_max: u64) -> Vec<Entry> {
        if self.applying >= self.committed {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = self.applying + 1;
        while index <= self.committed {
            let Some(entry) = self.entry(index) else {
                break;
            };
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        self.applying = index - 1;
        out
    }

    pub fn has_committed_to_apply(&self) -> bool {
        self.applying < self.committed
    }

    pub fn applied_to(&mut self, index: Index) {
        assert!(
            index <= self.applying,
            "applied {index} beyond what was handed out"
        );
        self.applied = self.applied.max(index);
    }

    /// Drops entries up to the snapshot (which the caller has made durable) from the log and
    /// returns them: freeing a snapshot interval's entries (100k by default) takes
    /// milliseconds, which the caller may spend elsewhere than on its event loop.
    pub fn compact(&mut self, meta: SnapshotMeta) -> Vec<Entry> {
        assert!(meta.last_index <= self.applied, "compacting beyond applied");
        if meta.last_index <= self.snapshot.last_index {
            return Vec::new();
        }
        assert_eq!(
            self.term(meta.last_index),
            Some(meta.last_term),
            "snapshot term mismatch"
        );
        let index = meta.last_index;
        self.evicted_configs
            .retain(|(config_index, _)| *config_index > index);
        if index < self.memory_base {
            // Only evicted entries are covered: keep the runs of the rest.
            let first_kept = (index + 1, self.evicted_term(index + 1));
            self.evicted_terms
                .retain(|&(first, _)| first > first_kept.0);
            self.evicted_terms.insert(0, first_kept);
            self.snapshot = meta;
            return Vec::new();
        }
        self.evicted_terms.clear();
        let dropped = self.drop_front(index);
        self.snapshot = meta;
        dropped
    }

    /// Drops the entries held in memory up to `index` (at or after `memory_base`).
    fn drop_front(&mut self, index: Index) -> Vec<Entry> {
        let drop = (index - self.memory_base) as usize;
        let dropped: Vec<Entry> = self.entries.drain(..drop.min(self.entries.len())).collect();
        self.memory_bytes -= dropped.iter().map(Entry::size_bytes).sum::<u64>();
        self.memory_base = index;
        dropped
    }

    /// Evicts the oldest entries held in memory until at most `bytes_max` of them are left,
    /// as far as they are applied and durable (the WAL holds them: they are read back with
    /// `Ready::entries_to_load` when a follower needs them). Returns them, for the caller to
    /// free where it does not stall its loop.
    pub fn evict(&mut self, bytes_max: u64) -> Vec<Entry> {
        let limit = self.applied.min(self.stable);
        let mut index = self.memory_base;
        let mut left = self.memory_bytes;
        for entry in &self.entries {
            if left <= bytes_max || entry.index > limit {
                break;
            }
            left -= entry.size_bytes();
            index = entry.index;
        }
        if index == self.memory_base {
            return Vec::new();
        }
        let dropped = self.drop_front(index);
        for entry in &dropped {
            if self.evicted_terms.last().map(|&(_, term)| term) != Some(entry.term) {
                self.evicted_terms.push((entry.index, entry.term));
            }
            if entry.kind == EntryKind::Config {
                self.evicted_configs.push((entry.index, entry.data.clone()));
            }
        }
        dropped
    }

    /// Replaces the whole log by a snapshot received from the leader.
    pub fn restore(&mut self, meta: SnapshotMeta) {
        assert!(meta.last_index > self.committed);
        self.entries.clear();
        self.evicted_terms.clear();
        self.evicted_configs.clear();
        self.memory_bytes = 0;
        self.memory_base = meta.last_index;
        self.committed = meta.last_index;
        self.applying = meta.last_index;
        self.applied = meta.last_index;
        self.stable = meta.last_index;
        self.unstable_from = meta.last_index + 1;
        self.snapshot = meta;
    }

    /// All entries held in memory, from `memory_first_index` (for tests and the simulator's
    /// checks).
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &Entry> {
        self.entries.iter()
    }
}

/// The term of `index` in runs of `(first index, term)`, ascending: the run starting at or
/// before it. `None` before the first run.
pub fn term_in_runs(runs: &[(Index, Term)], index: Index) -> Option<Term> {
    let before = runs.partition_point(|&(first, _)| first <= index);
    before.checked_sub(1).map(|run| runs[run].1)
}

/// The WAL's entries to restore next to a snapshot, after a restart.
///
/// A snapshot received from the leader is installed (file fsynced, renamed) before the WAL
/// drops the old log; a crash in between leaves WAL entries above the snapshot that follow a
/// different history. They are kept only if they follow the snapshot: the WAL's entry at the
/// snapshot index has the snapshot's term, or the WAL continues right after the snapshot.
/// Otherwise they are discarded (safe: they conflict with a committed prefix, so none of them
/// is committed). Returns the entries and how many were discarded, or the first index after a
/// gap (records missing between the snapshot and the WAL: the node must not start).
pub fn entries_after_snapshot(
    snapshot_index: Index,
    snapshot_term: Term,
    entries: Vec<Entry>,
) -> Result<(Vec<Entry>, usize), Index> {
    let at_snapshot = entries
        .iter()
        .find(|e| e.index == snapshot_index)
        .map(|e| e.term);
    let follows = at_snapshot.is_none_or(|term| term == snapshot_term);
    let after: Vec<Entry> = entries
        .into_iter()
        .filter(|e| e.index > snapshot_index)
        .collect();
    if !follows {
        return Ok((Vec::new(), after.len()));
    }
    match after.first() {
        Some(first) if first.index != snapshot_index + 1 => Err(first.index),
        _ => Ok((after, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::EntryKind;

    fn entries(first: Index, terms: &[Term]) -> Vec<Entry> {
        let kind = EntryKind::Noop;
        let data = bytes::Bytes::new();
        (0..terms.len())
            .map(|i| Entry {
                index: first + i as u64,
                term: terms[i],
                kind,
                data: data.clone(),
            })
            .collect()
    }

    #[test]
    fn compaction_hands_back_exactly_the_entries_it_drops() {
        let terms = [1; 10];
        let mut log =
            RaftLog::restore_from_storage(SnapshotMeta::default(), entries(1, &terms), 10);
        assert_eq!(log.take_committed(u64::MAX).len(), 10);
        log.applied_to(10);
        let meta = |last_index| SnapshotMeta {
            last_index,
            last_term: 1,
            ..SnapshotMeta::default()
        };
        let dropped = log.compact(meta(6));
        let indexes: Vec<Index> = dropped.iter().map(|e| e.index).collect();
        assert_eq!(indexes, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!((log.first_index(), log.last_index()), (7, 10));
        assert_eq!(log.entry(7).map(|e| e.index), Some(7));
        assert!(log.compact(meta(6)).is_empty(), "nothing left to drop at 6");
        assert_eq!(log.compact(meta(10)).len(), 4);
        assert_eq!((log.first_index(), log.last_index()), (11, 10));
    }

    #[test]
    fn entries_after_a_snapshot_are_kept_only_if_they_follow_it() {
        // The WAL holds 1..=6; the snapshot covers 4 with the same term: 5, 6 follow it.
        let (kept, dropped) =
            entries_after_snapshot(4, 2, entries(1, &[1, 1, 2, 2, 2, 3])).unwrap();
        assert_eq!((kept.len(), dropped, kept[0].index), (2, 0, 5));
        // The snapshot's entry 4 has term 5, the WAL's term 2: 5, 6 belong to another history.
        let (kept, dropped) =
            entries_after_snapshot(4, 5, entries(1, &[1, 1, 2, 2, 2, 3])).unwrap();
        assert_eq!((kept.len(), dropped), (0, 2));
        // The WAL was compacted at the snapshot: it continues right after it.
        let (kept, _) = entries_after_snapshot(4, 5, entries(5, &[5, 5])).unwrap();
        assert_eq!(kept.len(), 2);
        // A hole between the snapshot and the WAL.
        assert_eq!(
            entries_after_snapshot(4, 5, entries(7, &[5])).unwrap_err(),
            7
        );
        // Nothing above the snapshot.
        assert_eq!(
            entries_after_snapshot(9, 5, entries(1, &[1, 2]))
                .unwrap()
                .0
                .len(),
            0
        );
    }

    #[test]
    fn evicted_entries_keep_their_terms_and_configurations() {
        let mut all = entries(1, &[1, 1, 2, 2, 3, 3, 3, 3]);
        all[2].kind = EntryKind::Config;
        all[2].data = Bytes::from_static(b"c3");
        let mut log = RaftLog::restore_from_storage(SnapshotMeta::default(), all, 8);
        let bytes_per_entry = log.memory_bytes() / 8;
        assert_eq!(log.take_committed(u64::MAX).len(), 8);
        // Only applied entries go: 1..=5 of the 6 that leave 3 entries' bytes.
        log.applied_to(5);
        let evicted: Vec<Index> = log
            .evict(3 * bytes_per_entry)
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(evicted, vec![1, 2, 3, 4, 5]);
        assert_eq!((log.first_index(), log.memory_first_index()), (1, 6));
        assert_eq!(log.memory_bytes(), 3 * bytes_per_entry);
        let terms: Vec<Option<Term>> = (0..=9).map(|index| log.term(index)).collect();
        let expected = [0, 1, 1, 2, 2, 3, 3, 3, 3].map(Some);
        assert_eq!(terms[..9], expected, "terms of evicted and held entries");
        assert_eq!(terms[9], None);
        assert_eq!(
            log.evicted_terms_between(2, 5),
            vec![(2, 1), (3, 2), (5, 3)]
        );
        assert_eq!(log.config_at_or_below(8).map(|(i, _)| i), Some(3));
        assert_eq!(log.config_at_or_below(2), None);
        assert_eq!(log.configs_after(2).len(), 1);
        // A snapshot inside the evicted range keeps the rest's terms and drops the config.
        log.applied_to(8);
        let meta = SnapshotMeta {
            last_index: 4,
            last_term: 2,
            ..SnapshotMeta::default()
        };
        assert!(
            log.compact(meta).is_empty(),
            "nothing held in memory is covered"
        );
        assert_eq!(
            (log.term(4), log.term(5), log.term(3)),
            (Some(2), Some(3), None)
        );
        assert_eq!(log.config_at_or_below(8), None);
        // Evicting everything applied, then compacting past it, leaves an empty log.
        assert_eq!(log.evict(0).len(), 3);
        assert_eq!((log.last_index(), log.last_term()), (8, 3));
        let meta = SnapshotMeta {
            last_index: 8,
            last_term: 3,
            ..SnapshotMeta::default()
        };
        assert!(log.compact(meta).is_empty());
        assert_eq!(
            (
                log.first_index(),
                log.memory_first_index(),
                log.memory_bytes()
            ),
            (9, 9, 0)
        );
    }
}
