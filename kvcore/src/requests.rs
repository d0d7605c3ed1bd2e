//! Client requests waiting on this node: writes proposed (or about to be) and linearizable
//! reads in their ReadIndex round or waiting for the apply to catch up.
//!
//! A write is identified by the `(index, term)` its entry got. It is applied exactly when an
//! entry with that index AND term is applied; if another entry is applied at its index, it was
//! never applied and never will be. Proposals are kept by `(index, term)`, not in arrival order:
//! a node that led, was truncated as a follower and leads again holds proposals of an old term
//! at indexes above newer ones (issue 10, bug 3):
//!
//! ```text
//! term 2 (leader): proposes 10, 11, 12      proposals (10,2) (11,2) (12,2)
//! term 3 (follower): log truncated to 9
//! term 4 (leader): no-op 10, proposes 11    proposals (10,2) (11,2) (11,4) (12,2)
//! apply 10 (noop, t4): (10,2) failed         apply 11 (t4): (11,4) ok, (11,2) failed
//! ```

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use kvraft::{Index, Term};
use kvstate::client_proto::ClientError;
use kvstate::{Command, Op};

/// A write waiting for its entry (handed back by `Requests::applied` when it is applied).
#[derive(Debug, PartialEq)]
pub(crate) struct Proposal<T> {
    pub token: T,
    /// The command the entry's data encodes, kept so that the leader applies it without
    /// decoding its own bytes again (`None` for a configuration change).
    pub command: Option<Command>,
}

/// A client write that arrived since the last drive, not yet proposed.
#[derive(Debug)]
pub(crate) struct NewWrite<T> {
    /// `command.encode()`: the entry's data.
    pub data: Bytes,
    pub command: Command,
    pub token: T,
    pub deadline_tick: u64,
}

/// A linearizable read.
#[derive(Debug)]
pub(crate) struct Read<T> {
    pub op: Op,
    pub token: T,
    pub deadline_tick: u64,
}

/// A client answer the node core turns into an `Action::Answer`.
pub(crate) type Refusal<T> = (T, ClientError);

#[derive(Debug)]
pub(crate) struct Requests<T> {
    proposals: BTreeMap<(Index, Term), Proposal<T>>,
    /// Proposals in arrival order with their deadlines (deadlines grow with arrival).
    proposal_deadlines: VecDeque<(u64, Index, Term)>,
    /// Writes that arrived since the last drive; proposed together as one batch.
    new_proposals: Vec<NewWrite<T>>,
    /// Reads that arrived since the last drive; they share one ReadIndex round.
    new_reads: Vec<Read<T>>,
    /// Reads in a ReadIndex round, by the round's context.
    read_batches: BTreeMap<u64, Vec<Read<T>>>,
    /// Reads whose read index is known, waiting until the state machine applied it.
    reads_waiting_apply: VecDeque<(Index, Vec<Read<T>>)>,
    next_read_context: u64,
}

impl<T> Default for Requests<T> {
    fn default() -> Self {
        Requests {
            proposals: BTreeMap::new(),
            proposal_deadlines: VecDeque::new(),
            new_proposals: Vec::new(),
            new_reads: Vec::new(),
            read_batches: BTreeMap::new(),
            reads_waiting_apply: VecDeque::new(),
            next_read_context: 1,
        }
    }
}

impl<T> Requests<T> {
    /// Requests that hold memory on this node: counted against `requests_pending_max`.
    pub fn pending(&self) -> usize {
        let reads: usize = self.read_batches.values().map(Vec::len).sum::<usize>()
            + self
                .reads_waiting_apply
                .iter()
                .map(|(_, r)| r.len())
                .sum::<usize>();
        self.proposals.len() + self.new_proposals.len() + self.new_reads.len() + reads
    }

    pub fn add_write(&mut self, write: NewWrite<T>) {
        self.new_proposals.push(write);
    }

    pub fn add_read(&mut self, read: Read<T>) {
        self.new_reads.push(read);
    }

    /// The writes to propose now, as one batch.
    pub fn take_new_writes(&mut self) -> Vec<NewWrite<T>> {
        std::mem::take(&mut self.new_proposals)
    }

    /// The batch was proposed; its last entry got `(last, term)`.
    pub fn proposed(&mut self, batch: Vec<NewWrite<T>>, last: Index, term: Term) {
        let first = last + 1 - batch.len() as u64;
        for (offset, write) in batch.into_iter().enumerate() {
            let index = first + offset as u64;
            let proposal = Proposal {
                token: write.token,
                command: Some(write.command),
            };
            let previous = self.proposals.insert((index, term), proposal);
            assert!(
                previous.is_none(),
                "two proposals at index {index} term {term}"
            );
            self.proposal_deadlines
                .push_back((write.deadline_tick, index, term));
        }
    }

    /// One request whose entry was proposed on its own (a configuration change) got
    /// `(index, term)`; it is answered like a write when that entry is applied.
    pub fn proposed_one(&mut self, index: Index, term: Term, token: T, deadline_tick: u64) {
        let proposal = Proposal {
            token,
            command: None,
        };
        let previous = self.proposals.insert((index, term), proposal);
        assert!(
            previous.is_none(),
            "two proposals at index {index} term {term}"
        );
        self.proposal_deadlines
            .push_back((deadline_tick, index, term));
    }

    /// Starts a ReadIndex round for the new reads; returns its context, or `None` if no read
    /// waits.
    pub fn next_read_round(&self) -> Option<u64> {
        (!self.new_reads.is_empty()).then_some(self.next_read_context)
    }

    /// The round `context` was accepted by the Raft core.
    pub fn read_round_started(&mut self, context: u64) {
        self.next_read_context = context + 1;
        let reads = std::mem::take(&mut self.new_reads);
        self.read_batches.insert(context, reads);
    }

    /// The new reads (not yet in a round) are refused.
    pub fn refuse_new_reads(&mut self, error: &ClientError) -> Vec<Refusal<T>> {
        let reads = std::mem::take(&mut self.new_reads);
        reads
            .into_iter()
            .map(|r| (r.token, error.clone()))
            .collect()
    }

    /// The new writes (not yet proposed) are refused.
    pub fn refuse_new_writes(&mut self, error: &ClientError) -> Vec<Refusal<T>> {
        let writes = std::mem::take(&mut self.new_proposals);
        writes
            .into_iter()
            .map(|write| (write.token, error.clone()))
            .collect()
    }

    /// The round `context` confirmed read index `index`.
    pub fn read_confirmed(&mut self, context: u64, index: Index) {
        if let Some(reads) = self.read_batches.remove(&context) {
            self.reads_waiting_apply.push_back((index, reads));
        }
    }

    /// The round `context` will never be confirmed.
    pub fn read_dropped(&mut self, context: u64) -> Vec<Read<T>> {
        self.read_batches.remove(&context).unwrap_or_default()
    }

    /// Reads whose read index is at or below `applied`, in order.
    pub fn reads_ready(&mut self, applied: Index) -> Vec<Read<T>> {
        let mut ready = Vec::new();
        while self
            .reads_waiting_apply
            .front()
            .is_some_and(|(i, _)| *i <= applied)
        {
            if let Some((_, reads)) = self.reads_waiting_apply.pop_front() {
                ready.extend(reads);
            }
        }
        ready
    }

    /// The entry `(index, term)` is being applied. Returns the proposal that was this entry,
    /// if any, and the tokens of proposals that held `index` in another term: those were
    /// never applied.
    pub fn applied(&mut self, index: Index, term: Term) -> (Option<Proposal<T>>, Vec<T>) {
        let mut ours = None;
        let mut replaced = Vec::new();
        // Usually one proposal holds `index`: no list of keys is built for it.
        while let Some((&key, _)) = self.proposals.range((index, 0)..=(index, Term::MAX)).next() {
            let Some(proposal) = self.proposals.remove(&key) else {
                break;
            };
            if key.1 == term {
                ours = Some(proposal);
            } else {
                replaced.push(proposal.token);
            }
        }
        (ours, replaced)
    }

    /// A snapshot up to `index` was installed: whether the writes at or below it are in it is
    /// unknown here. Returns their tokens.
    pub fn covered_by_snapshot(&mut self, index: Index) -> Vec<T> {
        let kept = self.proposals.split_off(&(index + 1, 0));
        let covered = std::mem::replace(&mut self.proposals, kept);
        covered.into_values().map(|p| p.token).collect()
    }

    /// Requests whose deadline passed by `now_tick`.
    pub fn expire(&mut self, now_tick: u64) -> Vec<T> {
        let mut expired = Vec::new();
        while self
            .proposal_deadlines
            .front()
            .is_some_and(|(d, ..)| *d <= now_tick)
        {
            let Some((_, index, term)) = self.proposal_deadlines.pop_front() else {
                break;
            };
            if let Some(proposal) = self.proposals.remove(&(index, term)) {
                expired.push(proposal.token);
            }
        }
        // Reads are few per batch and batches are short-lived: a scan is cheap.
        for reads in self.read_batches.values_mut() {
            expired.extend(take_expired(reads, now_tick));
        }
        self.read_batches.retain(|_, reads| !reads.is_empty());
        for (_, reads) in self.reads_waiting_apply.iter_mut() {
            expired.extend(take_expired(reads, now_tick));
        }
        self.reads_waiting_apply
            .retain(|(_, reads)| !reads.is_empty());
        expired.extend(take_expired(&mut self.new_reads, now_tick));
        expired
    }

    /// Every request still waiting (shutdown): returns all tokens.
    pub fn take_all(&mut self) -> Vec<T> {
        let mut all: Vec<T> = std::mem::take(&mut self.proposals)
            .into_values()
            .map(|p| p.token)
            .collect();
        self.proposal_deadlines.clear();
        all.extend(self.new_proposals.drain(..).map(|write| write.token));
        all.extend(self.new_reads.drain(..).map(|r| r.token));
        for (_, reads) in std::mem::take(&mut self.read_batches) {
            all.extend(reads.into_iter().map(|r| r.token));
        }
        for (_, reads) in std::mem::take(&mut self.reads_waiting_apply) {
            all.extend(reads.into_iter().map(|r| r.token));
        }
        all
    }
}

fn take_expired<T>(reads: &mut Vec<Read<T>>, now_tick: u64) -> Vec<T> {
    if !reads.iter().any(|r| r.deadline_tick <= now_tick) {
        return Vec::new();
    }
    let (expired, kept): (Vec<Read<T>>, Vec<Read<T>>) = std::mem::take(reads)
        .into_iter()
        .partition(|r| r.deadline_tick <= now_tick);
    *reads = kept;
    expired.into_iter().map(|r| r.token).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(token: u32, deadline_tick: u64) -> NewWrite<u32> {
        NewWrite {
            data: Bytes::new(),
            command: Command {
                owner: String::new(),
                client_id: 1,
                seq: u64::from(token),
                op: Op::put("k", "v"),
            },
            token,
            deadline_tick,
        }
    }

    fn batch(tokens: &[u32]) -> Vec<NewWrite<u32>> {
        tokens.iter().map(|&token| write(token, 100)).collect()
    }

    /// The tokens `applied` answers: the proposal that was the entry, the ones replaced.
    fn applied(requests: &mut Requests<u32>, index: Index, term: Term) -> (Option<u32>, Vec<u32>) {
        let (ours, replaced) = requests.applied(index, term);
        (ours.map(|ours| ours.token), replaced)
    }

    /// Issue 10, bug 3: the scenario of the module doc. Before the fix, proposals were answered
    /// in arrival order, so applying (11, 4) answered the old (10, 2) and (11, 2) as failed and
    /// never found (11, 4) at the front.
    #[test]
    fn proposals_of_an_old_term_do_not_hide_newer_ones() {
        let mut requests = Requests::default();
        requests.proposed(batch(&[10, 11, 12]), 12, 2);
        requests.proposed(batch(&[111]), 11, 4);
        assert_eq!(applied(&mut requests, 10, 4), (None, vec![10]));
        assert_eq!(applied(&mut requests, 11, 4), (Some(111), vec![11]));
        assert_eq!(applied(&mut requests, 12, 4), (None, vec![12]));
        assert_eq!(requests.pending(), 0);
    }

    #[test]
    fn a_snapshot_covers_only_lower_indexes() {
        let mut requests = Requests::default();
        requests.proposed(batch(&[1, 2, 3]), 3, 1);
        assert_eq!(requests.covered_by_snapshot(2), vec![1, 2]);
        assert_eq!(applied(&mut requests, 3, 1), (Some(3), vec![]));
    }

    /// The leader gets back the command it proposed, to apply without decoding its bytes; a
    /// configuration change holds none.
    #[test]
    fn an_applied_proposal_hands_back_its_command() {
        let mut requests = Requests::default();
        requests.proposed(batch(&[1, 2]), 2, 1);
        requests.proposed_one(3, 1, 3, 100);
        let (ours, _) = requests.applied(2, 1);
        let expected = Proposal {
            token: 2,
            command: Some(write(2, 100).command),
        };
        assert_eq!(ours, Some(expected));
        let (ours, _) = requests.applied(3, 1);
        assert_eq!(ours.and_then(|ours| ours.command), None);
    }

    #[test]
    fn deadlines_expire_writes_and_reads() {
        let mut requests = Requests::default();
        requests.proposed(vec![write(1, 5), write(2, 9)], 2, 1);
        let read = |token, deadline_tick| Read {
            op: Op::get("k"),
            token,
            deadline_tick,
        };
        requests.add_read(read(3, 5));
        requests.read_round_started(1);
        requests.add_read(read(4, 9));
        assert_eq!(requests.expire(4), Vec::<u32>::new());
        assert_eq!(requests.expire(5), vec![1, 3]);
        assert_eq!(applied(&mut requests, 1, 1), (None, vec![]));
        assert_eq!(requests.take_all(), vec![2, 4]);
    }
}
