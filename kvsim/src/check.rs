//! The simulator's Raft invariants (Raft paper Figure 3) plus durability: election safety, log
//! matching, leader completeness, state machine safety, committed entries immutable, committed
//! entries durable on a majority. Client-visible properties (linearizability, lost writes,
//! exactly-once, monotonic reads) are checked on the history (`history.rs`).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use crate::disk::Image;
use kvraft::quorum::has_quorum;
use kvraft::{Entry, Index, Membership, NodeId, RawNode, Term};
use kvstate::StateMachine;

/// A broken invariant, with the seed that replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub time: u64,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} at time {}: {}\nreplay: SIM_SEED={} cargo test --release -p kvsim --test sim",
            self.seed, self.time, self.what, self.seed
        )
    }
}

pub(super) struct NodeView<'a> {
    pub id: NodeId,
    /// `None` while the node is down.
    pub raw: Option<&'a RawNode>,
    /// `None` while the node is down.
    pub sm: Option<&'a StateMachine>,
    pub disk: &'a Image,
}

fn data_hash(entry: &Entry) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    entry.kind.hash(&mut hasher);
    entry.data.hash(&mut hasher);
    hasher.finish()
}

#[derive(Default)]
pub(super) struct Checker {
    /// Election safety: at most one leader per term.
    leaders: BTreeMap<Term, NodeId>,
    /// Log matching: (index, term) identifies the entry's content and its predecessor's term.
    entries: HashMap<(Index, Term), (u64, Option<Term>)>,
    /// Committed entries (index -> term), from every node's commit index.
    committed: BTreeMap<Index, Term>,
    /// The lowest term in which each committed entry was seen committed (the term of the node
    /// whose commit index covered it). Leader completeness binds leaders of later terms only:
    /// with messages delayed past an election timeout, a leader of an older term can still be
    /// elected while a newer term commits.
    commit_terms: BTreeMap<Index, Term>,
    commit_recorded: Vec<Index>,
    /// The configuration in force on the leader each time its commit index advanced: the
    /// quorum that made those entries committed (its entry may since have been lost from every
    /// log, if it was appended on the leader alone and the leader crashed).
    commit_configs: BTreeMap<Index, Membership>,
    /// State machine safety: what was applied at each index.
    applied: HashMap<Index, (Term, u64)>,
}

impl Checker {
    pub fn new(nodes: usize) -> Checker {
        Checker {
            commit_recorded: vec![0; nodes],
            ..Checker::default()
        }
    }

    pub fn check_leader(&mut self, id: NodeId, term: Term, raw: &RawNode) -> Result<(), String> {
        if let Some(&other) = self.leaders.get(&term) {
            if other != id {
                return Err(format!(
                    "election safety: nodes {other} and {id} both lead term {term}"
                ));
            }
        }
        self.leaders.insert(term, id);
        // Leader completeness: every committed entry is in the new leader's log.
        let snapshot_index = raw.status().snapshot_index;
        for (&index, &committed_term) in self.committed.range(snapshot_index + 1..) {
            let commit_term = self.commit_terms.get(&index).copied().unwrap_or(0);
            if commit_term >= term {
                continue;
            }
            if raw.log_term(index) != Some(committed_term) {
                return Err(format!(
                    "leader completeness: leader {id} of term {term} lacks committed entry \
                     {index} (term {committed_term}), has {:?}",
                    raw.log_term(index)
                ));
            }
        }
        Ok(())
    }

    pub fn check_appended(
        &mut self,
        raw: Option<&RawNode>,
        appended: &[Entry],
    ) -> Result<(), String> {
        let Some(raw) = raw else { return Ok(()) };
        for entry in appended {
            let previous = if entry.index == 1 {
                Some(0)
            } else {
                raw.log_term(entry.index - 1)
            };
            let fingerprint = (data_hash(entry), previous);
            match self.entries.get(&(entry.index, entry.term)) {
                Some(&(hash, prev))
                    if hash != fingerprint.0
                        || (prev.is_some() && previous.is_some() && prev != previous) =>
                {
                    return Err(format!(
                        "log matching: node {} holds a different entry at index {} term {} \
                         (previous term {:?} vs {:?})",
                        raw.id(),
                        entry.index,
                        entry.term,
                        previous,
                        prev
                    ));
                }
                Some(_) => {}
                None => {
                    self.entries.insert((entry.index, entry.term), fingerprint);
                }
            }
        }
        Ok(())
    }

    pub fn record_commit(
        &mut self,
        node: usize,
        commit: Index,
        raw: Option<&RawNode>,
    ) -> Result<(), String> {
        let Some(raw) = raw else { return Ok(()) };
        let from = self.commit_recorded[node] + 1;
        for index in from..=commit {
            let Some(term) = raw.log_term(index) else {
                continue;
            };
            match self.committed.get(&index) {
                Some(&t) if t != term => {
                    return Err(format!(
                        "committed entry changed: node {} commits index {index} with term {term}, \
                         earlier committed with term {t}",
                        raw.id()
                    ));
                }
                Some(_) => {}
                None => {
                    self.committed.insert(index, term);
                }
            }
            let node_term = raw.status().term;
            let commit_term = self.commit_terms.entry(index).or_insert(node_term);
            *commit_term = (*commit_term).min(node_term);
        }
        self.commit_recorded[node] = self.commit_recorded[node].max(commit);
        Ok(())
    }

    /// A leader's commit index was `commit` while `membership` was in force on it.
    pub fn record_leader_commit(&mut self, commit: Index, membership: &Membership) {
        if self.commit_configs.contains_key(&commit) {
            return;
        }
        self.commit_configs.insert(commit, membership.clone());
    }

    /// Committed entries are durable on a quorum (so no crash can lose them): a quorum of the
    /// configuration that committed the newest committed entry, as recorded when a leader's
    /// commit index reached it. Without a record (the leader stepped down in the same step),
    /// the configuration in force at the entry or the next one after it (a change may be
    /// appended, and become the leader's configuration, before earlier entries commit; the
    /// one after that waits for it to commit), read from the logs of live nodes holding the
    /// entry. A joint configuration needs a majority of each half.
    pub fn check_durable(&self, nodes: &[NodeView<'_>]) -> Result<(), String> {
        let Some((&index, &term)) = self.committed.last_key_value() else {
            return Ok(());
        };
        let holds =
            |n: &NodeView<'_>| n.disk.snapshot_index() >= index || n.disk.term(index) == Some(term);
        let holder_ids: Vec<NodeId> = nodes.iter().filter(|n| holds(n)).map(|n| n.id).collect();
        let mut configs: Vec<Membership> = Vec::new();
        configs.extend(self.commit_configs.get(&index).cloned());
        let recorded = !configs.is_empty();
        let live = nodes.iter().filter_map(|n| n.raw);
        for raw in live.filter(|_| !recorded) {
            if raw.log_term(index) != Some(term) {
                continue;
            }
            configs.push(raw.membership_at(index).0);
            // Evicted configuration entries count too (`configs_after`).
            let next = (raw.configs_after(index).first())
                .and_then(|(_, data)| Membership::decode(data).ok());
            configs.extend(next);
        }
        if configs.is_empty()
            || configs
                .iter()
                .any(|c| has_quorum(c, |id| holder_ids.contains(&id)))
        {
            return Ok(());
        }
        let holders = holder_ids.len();
        {
            let disks: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let first = n.disk.entries.first().map(|e| e.index);
                    let last = n.disk.entries.last().map(|e| e.index);
                    format!(
                        "[snapshot {} entries {first:?}..={last:?} term at {index}: {:?}]",
                        n.disk.snapshot_index(),
                        n.disk.term(index)
                    )
                })
                .collect();
            let configs: Vec<String> = configs.iter().map(|c| c.to_string()).collect();
            Err(format!(
                "committed entry {index} (term {term}) is durable on only {holders} nodes \
                 ({holder_ids:?}), not a quorum of its configuration ({}): {}",
                configs.join(" or "),
                disks.join(" ")
            ))
        }
    }

    pub fn check_apply(&mut self, entry: &Entry) -> Result<(), String> {
        let fingerprint = (entry.term, data_hash(entry));
        match self.applied.get(&entry.index) {
            Some(&existing) if existing != fingerprint => {
                return Err(format!(
                    "state machine safety: index {} applied as term {} and as term {}",
                    entry.index, existing.0, entry.term
                ));
            }
            Some(_) => {}
            None => {
                self.applied.insert(entry.index, fingerprint);
            }
        }
        if let Some(&term) = self.committed.get(&entry.index) {
            if term != entry.term {
                return Err(format!(
                    "applied entry {} of term {} but term {term} was committed there",
                    entry.index, entry.term
                ));
            }
        }
        Ok(())
    }

    /// After convergence: every replica holds the same state, sessions included.
    pub fn check_final(&self, nodes: &[NodeView<'_>]) -> Result<(), String> {
        let states: Vec<&StateMachine> = nodes.iter().filter_map(|n| n.sm).collect();
        let Some(first) = states.first() else {
            return Ok(());
        };
        for (node, sm) in states.iter().enumerate() {
            if *sm != *first {
                return Err(format!(
                    "replicas diverged at applied index {}: node {} holds {} keys and {} \
                     sessions, node 1 {} keys and {} sessions (or different values)",
                    sm.applied_index(),
                    node + 1,
                    sm.len(),
                    sm.sessions_len(),
                    first.len(),
                    first.sessions_len()
                ));
            }
        }
        Ok(())
    }
}
