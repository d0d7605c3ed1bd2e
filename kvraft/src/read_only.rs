//! ReadIndex (Raft thesis §6.4): a linearizable read without a log entry.
//!
//! 1. The leader records its commit index as the read index; it must already have committed an
//!    entry of its own term (otherwise its commit index may be behind the true one).
//! 2. It confirms it is still the leader with a heartbeat round tagged with a new round number;
//!    once a majority answered that round (or any later round), every read registered at or
//!    before that round is safe.
//! 3. The caller serves the read once its state machine has applied up to the read index.

use std::collections::{BTreeSet, VecDeque};

use super::message::{Index, NodeId};

/// Opaque to Raft: the caller's handle for a read (or a batch of reads).
pub type ReadContext = u64;

/// A read that is safe to serve once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: Index,
    pub context: ReadContext,
}

#[derive(Debug)]
struct PendingRead {
    context: ReadContext,
    index: Index,
    round: u64,
}

#[derive(Debug, Default)]
pub struct ReadOnly {
    pending: VecDeque<PendingRead>,
    /// The newest round started.
    round: u64,
    /// Per round in flight, who acknowledged it (the leader counts itself).
    acks: VecDeque<(u64, BTreeSet<NodeId>)>,
}

impl ReadOnly {
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Registers a read at `index` and starts a new heartbeat round for it; returns the round.
    pub fn add(&mut self, context: ReadContext, index: Index, leader: NodeId) -> u64 {
        self.round += 1;
        let mut acks = BTreeSet::new();
        acks.insert(leader);
        self.acks.push_back((self.round, acks));
        self.pending.push_back(PendingRead {
            context,
            index,
            round: self.round,
        });
        self.round
    }

    /// A heartbeat response for `round` from `from`; `is_quorum` tells whether a set of nodes
    /// is a quorum of the configuration in force (joint or simple). Returns the reads now safe
    /// to serve.
    pub fn ack(
        &mut self,
        from: NodeId,
        round: u64,
        is_quorum: impl Fn(&BTreeSet<NodeId>) -> bool,
    ) -> Vec<ReadState> {
        let mut confirmed = 0;
        for (r, acks) in self.acks.iter_mut() {
            // An answer to round r proves leadership at the time round r started, and so for
            // every earlier round too.
            if *r <= round {
                acks.insert(from);
            }
            if is_quorum(acks) {
                confirmed = confirmed.max(*r);
            }
        }
        if confirmed == 0 {
            return Vec::new();
        }
        while self.acks.front().is_some_and(|(r, _)| *r <= confirmed) {
            self.acks.pop_front();
        }
        let mut ready = Vec::new();
        while self.pending.front().is_some_and(|p| p.round <= confirmed) {
            if let Some(p) = self.pending.pop_front() {
                ready.push(ReadState {
                    index: p.index,
                    context: p.context,
                });
            }
        }
        ready
    }

    /// Leadership lost: every pending read is dropped; returns their contexts.
    pub fn reset(&mut self) -> Vec<ReadContext> {
        self.acks.clear();
        self.pending.drain(..).map(|p| p.context).collect()
    }

    pub fn current_round(&self) -> u64 {
        self.round
    }
}
