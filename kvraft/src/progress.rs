//! The leader's view of one follower: how far it matches, what to send next, and how much is in
//! flight. Invariant: `match_index < next_index`.

use std::collections::VecDeque;

use super::message::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// We do not know where the follower's log matches ours: send one append at a time and wait
    /// for its answer (or the next heartbeat response) before sending another.
    Probe,
    /// The follower is known to match: stream appends optimistically, bounded by `Inflights`.
    Replicate,
    /// The follower needs the snapshot at `pending_index`; nothing else is sent until the
    /// transport reports the outcome.
    Snapshot { pending_index: Index },
}

/// The window of append messages in flight to one follower: bounded by count and by bytes.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index of the message, entry bytes it carried), oldest first.
    window: VecDeque<(Index, u64)>,
    bytes: u64,
    messages_max: usize,
    bytes_max: u64,
}

impl Inflights {
    pub fn new(messages_max: usize, bytes_max: u64) -> Inflights {
        Inflights {
            window: VecDeque::new(),
            bytes: 0,
            messages_max,
            bytes_max,
        }
    }

    pub fn full(&self) -> bool {
        self.window.len() >= self.messages_max || self.bytes >= self.bytes_max
    }

    pub fn add(&mut self, last_index: Index, bytes: u64) {
        if let Some(&(previous, _)) = self.window.back() {
            assert!(last_index > previous, "inflights must grow");
        }
        self.window.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose entries are all acknowledged (last index <= `index`).
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.window.front() {
            if last > index {
                break;
            }
            self.window.pop_front();
            self.bytes -= bytes;
        }
    }

    pub fn free_first(&mut self) {
        if let Some((_, bytes)) = self.window.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }

    pub fn count(&self) -> usize {
        self.window.len()
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    /// In probe state: an append was sent and its answer has not come back.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Heard from in the check-quorum round before (`recent_active` when it was reset).
    pub previously_active: bool,
    /// A snapshot at this index reached the follower, which has not acknowledged it yet (it
    /// is decoding it): `Raft::follower_behind` counts it as behind, not as gone.
    pub snapshot_installing: Option<Index>,
    /// Entries from this index, evicted from memory, are being read from the WAL for this
    /// follower (`Raft::request_entries`); at most one read at a time, cleared by its answer.
    pub loading: Option<Index>,
    /// An election timeout passed since `loading` was set (`Raft::expire_loads`).
    pub loading_round_passed: bool,
    pub inflights: Inflights,
}

impl Progress {
    pub fn new(next_index: Index, messages_max: usize, bytes_max: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            previously_active: false,
            snapshot_installing: None,
            loading: None,
            loading_round_passed: false,
            inflights: Inflights::new(messages_max, bytes_max),
        }
    }

    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    pub fn become_probe(&mut self) {
        // After a snapshot, resume right after it: the follower has at least that much.
        if let ProgressState::Snapshot { pending_index } = self.state {
            self.next_index = (self.match_index + 1).max(pending_index + 1);
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_snapshot(&mut self, pending_index: Index) {
        self.snapshot_installing = None;
        self.state = ProgressState::Snapshot { pending_index };
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// The follower acknowledged everything up to `index`. Returns whether that was news.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        if self
            .snapshot_installing
            .is_some_and(|pending| index >= pending)
        {
            self.snapshot_installing = None;
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// Records an append of entries up to `last_index` carrying `bytes` of entries.
    pub fn sent_entries(&mut self, last_index: Index, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                self.next_index = last_index + 1;
                self.inflights.add(last_index, bytes);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => unreachable!("append sent in snapshot state"),
        }
    }

    /// Whether a rejection is of a probe at our match index for the follower, from a follower
    /// whose log ends (`follower_last`) below it. Either the follower lost entries it had
    /// acknowledged (a wiped or rolled-back disk: Raft assumes it never happens, but without
    /// starting over from what the follower has, the leader would probe at its match index
    /// forever, since `maybe_decrease_to` never goes below it), or the rejection is a stale
    /// answer to an older append that arrived out of order. Starting over (`restart_from`) is
    /// right for the first and harmless for the second: the follower acknowledges again what it
    /// has (commit never goes back), at the cost of a resend.
    pub fn rejected_at_match(&self, rejected: Index, follower_last: Index) -> bool {
        self.state == ProgressState::Probe
            && self.next_index.checked_sub(1) == Some(rejected)
            && rejected <= self.match_index
            && follower_last < self.match_index
    }

    /// Starts over as if the follower had just joined with a log matching ours up to `index`:
    /// probe from there (the snapshot follows if our log no longer reaches it).
    pub fn restart_from(&mut self, index: Index) {
        self.snapshot_installing = None;
        self.match_index = index;
        self.next_index = index + 1;
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// The follower rejected an append at `rejected`; `hint` is where the leader's log can match
    /// it at best. Returns false for a stale rejection (an answer to an older message).
    pub fn maybe_decrease_to(&mut self, rejected: Index, hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false;
            }
            self.state = ProgressState::Probe;
            self.inflights.reset();
        } else if self.next_index == 0 || self.next_index - 1 != rejected {
            return false;
        }
        self.next_index = rejected.min(hint + 1).max(self.match_index + 1);
        self.probe_sent = false;
        true
    }
}
