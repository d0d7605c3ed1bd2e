//! The Raft core: a pure state machine. No I/O, no clock, no threads, no unseeded randomness
//! (see `../shared/STYLE.md` and `proto-docs/raft.md`).
//!
//! Drive it like this:
//!
//! ```text
//! loop {
//!     feed inputs:  tick() every tick; step(msg) per message; propose(); read_index()
//!     if has_ready():
//!         rd = ready()
//!         1. send rd.messages now (they promise nothing about our disk)
//!         2. persist rd.snapshot, rd.entries (truncating from entries[0].index), rd.hard_state
//!            (term and vote changes always; the commit index only along with them or entries)
//!         3. once that and every earlier Ready's writes are durable:
//!              send rd.persisted_messages; on_persisted(rd.persist_mark)
//!         4. install rd.snapshot into the state machine, then apply rd.committed_entries in
//!            order; on_applied(last applied index)
//!         5. serve rd.read_states once applied >= their index; fail rd.dropped_reads
//! }
//! ```
//!
//! ## Configuration changes
//!
//! The configuration (`Membership`: voters, learners and, during a joint change, the outgoing
//! voters) is data in the log. The node layer:
//!
//! - proposes a change on the leader with `propose_conf_change(ConfChange)`: add learners,
//!   promote learners, remove nodes, any combination as a joint change (C_old,new, left
//!   automatically once it commits), or one voter at a time as a simple change. One change at a
//!   time: a second is refused with `ProposeError::ConfChangePending` until the first commits.
//! - learns the configuration in force from `membership()` / `membership_index()` at any time,
//!   and sees each change go by as a committed entry of kind `EntryKind::Config` whose data is
//!   the whole new configuration (`Membership::decode`). The state machine ignores such entries
//!   (they still advance its applied index).
//! - builds snapshot metadata with `snapshot_meta(index)`, which carries the configuration in
//!   force at that index and the index of the entry that made it; recovery restores it from the
//!   snapshot and the log entries after it (no separate record is needed in the hard state).
//! - starts a node joining an existing cluster with an empty bootstrap configuration
//!   (`Membership::default()`): it cannot campaign and learns its configuration from the
//!   leader's log or snapshot once it has been added as a learner.
//!
//! A configuration takes effect on a node when its entry is appended to that node's log (Raft
//! thesis §4.1), not when it commits; it reverts if the entry is truncated. See
//! `proto-docs/raft.md`, "Configuration changes".

pub mod confchange;
pub mod config;
pub mod log;
pub mod message;
pub mod progress;
pub mod quorum;
#[allow(clippy::module_inception)]
pub mod raft;
pub mod read_only;
pub mod rng;

use bytes::Bytes;

pub use confchange::{ConfChange, ConfChangeError, ConfChangeMode, ConfChangeOp};
pub use config::{Config, ConfigError};
pub use message::{
    Entry, EntryKind, HardState, Index, Membership, MembershipError, Message, MessageBody, NodeId,
    SnapshotMeta, Term,
};
pub use raft::Role;
pub use read_only::{ReadContext, ReadState};

use self::log::RaftLog;
use self::raft::Raft;

/// The leader hint as error messages print it: `leader n2` or `no leader known`.
fn leader_text(hint: &Option<NodeId>) -> String {
    hint.map_or_else(
        || "no leader known".to_string(),
        |id| format!("leader n{id}"),
    )
}

/// Why a proposal was refused. None of these means the command was applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader ({})", leader_text(.leader_hint))]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("entry of {bytes} bytes exceeds entry_bytes_max {max}")]
    TooLarge { bytes: u64, max: u64 },
    #[error("too many uncommitted bytes: back off and retry")]
    Busy,
    /// A new leader must commit an entry of its own term before it changes the configuration
    /// (its no-op does so in one round trip); retry shortly.
    #[error("leader has not yet committed an entry in its term")]
    NoCommitInTerm,
    #[error("configuration change at index {index} is not committed yet; retry once it is")]
    ConfChangePending { index: Index },
    #[error("configuration change refused: {0}")]
    ConfChange(#[from] ConfChangeError),
}

/// Why a ReadIndex request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadIndexError {
    #[error("not the leader ({})", leader_text(.leader_hint))]
    NotLeader { leader_hint: Option<NodeId> },
    /// A new leader must commit an entry of its own term first (its no-op does so in one
    /// round trip); retry shortly.
    #[error("leader has not yet committed an entry in its term")]
    NoCommitInTerm,
    #[error("too many reads pending")]
    Busy,
}

/// A message the core will not accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StepError {
    #[error("message for node {to} delivered to node {id}")]
    WrongRecipient { to: NodeId, id: NodeId },
    #[error("message from node 0 or from ourselves")]
    BadSender,
}

/// Volatile state worth reporting when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader: NodeId,
    pub role: Role,
}

/// Everything the caller must do after feeding inputs. Fields are listed in the order they must
/// be acted on; each documents its rule.
#[derive(Debug, Default)]
pub struct Ready {
    /// Changed role or leader, for metrics and for failing requests waiting on a lost leadership.
    pub soft_state: Option<SoftState>,
    /// May be sent immediately, before or while persisting: the leader's appends and heartbeats
    /// (Raft thesis §10.2.1: a leader writes to its disk in parallel with its followers), and
    /// messages that make no promise about durable state.
    pub messages: Vec<Message>,
    /// A snapshot received from the leader. Persist it first (it replaces the whole log), then
    /// install it into the state machine before applying `committed_entries`.
    pub snapshot: Option<SnapshotMeta>,
    /// Entries to append durably. If `entries[0].index` is at or below the last index already
    /// handed out, the log suffix from that index is truncated first (conflict repair).
    pub entries: Vec<Entry>,
    /// Term, vote and commit to persist, with or after `entries` in the same durable write.
    /// Present when the term or the vote changed, or with `entries` when any of the three
    /// did. A change of the commit index alone is not handed out: nothing waits for it to be
    /// durable (the commit index is volatile in Raft, §3.8; a restarted node learns it again
    /// from the leader, and one recovered from an older commit only applies later), so it
    /// costs no fdatasync of its own. It rides along with the next entries or vote. Measured,
    /// one client putting on the embedded cluster: the leader's WAL synced twice per put (the
    /// entry, then the commit), now once.
    pub hard_state: Option<HardState>,
    /// Send only once this Ready's writes, and every earlier Ready's, are durable: votes and
    /// append acknowledgements are promises about our disk.
    pub persisted_messages: Vec<Message>,
    /// Report with `on_persisted` once this Ready's writes are durable: the last log position
    /// they cover.
    pub persist_mark: (Index, Term),
    /// Committed entries to apply in order. They may include entries of `entries`: a committed
    /// entry is durable on a majority, so applying it before our own write finishes is safe.
    pub committed_entries: Vec<Entry>,
    /// Reads that are linearizable once the state machine has applied `index`.
    pub read_states: Vec<ReadState>,
    /// Reads that will never be confirmed (leadership lost): fail them, the client retries.
    pub dropped_reads: Vec<ReadContext>,
    /// Entries evicted from memory that a follower needs: read each range from the WAL (off
    /// the event loop) and hand it back with `RawNode::entries_loaded`, also when the read
    /// failed (with no entries), or the follower waits for the next heartbeat to ask again.
    pub entries_to_load: Vec<EntriesToLoad>,
}

/// A read of evicted entries from the WAL, for the leader to send to follower `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntriesToLoad {
    pub to: NodeId,
    /// The first index wanted: where the follower's append starts.
    pub low: Index,
    /// The last evicted index when asked; read at most up to it.
    pub high: Index,
    /// The terms of `low..=high` in our log, as runs `(first index, term)`; the first starts at
    /// `low`. The WAL may hold older records for the same indexes (an overwritten suffix):
    /// only a record with our term for its index is one of our entries.
    pub terms: Vec<(Index, Term)>,
    /// Stop after this many bytes of entries (`Entry::size_bytes`), but read at least one.
    pub bytes_max: u64,
}

impl EntriesToLoad {
    /// Our term for `index` (within `low..=high`).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index < self.low || index > self.high {
            return None;
        }
        log::term_in_runs(&self.terms, index)
    }
}

impl Ready {
    /// Whether anything must be written before `persisted_messages` may leave.
    pub fn must_persist(&self) -> bool {
        self.snapshot.is_some() || !self.entries.is_empty() || self.hard_state.is_some()
    }
}

/// What a node had on disk when it (re)started.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub hard_state: HardState,
    /// The snapshot the state machine was restored from; `Default` (index 0) for none.
    pub snapshot: Option<SnapshotMeta>,
    /// The entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// A snapshot of the node's state for status displays and checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: NodeId,
    pub leader: NodeId,
    pub commit_index: Index,
    /// The highest commit index known cluster-wide: ours, or the highest a leader's append
    /// carried. A follower whose applied index is far below it is catching up.
    pub leader_commit_index: Index,
    pub applied_index: Index,
    pub first_index: Index,
    /// The first index held in memory; entries from `first_index` up to it are evicted (in
    /// the WAL only).
    pub memory_first_index: Index,
    pub last_index: Index,
    pub last_term: Term,
    pub stable_index: Index,
    pub snapshot_index: Index,
    /// The index of the entry that made the configuration in force (0: bootstrap).
    pub membership_index: Index,
}

/// The node's whole Raft state machine, with the bookkeeping that turns it into `Ready`s.
#[derive(Debug)]
pub struct RawNode {
    raft: Raft,
    previous_hard_state: HardState,
    previous_soft_state: SoftState,
}

impl RawNode {
    /// Builds a node from its durable state. `bootstrap` is the initial configuration, used when
    /// neither the snapshot nor the log carries one; a node joining an existing cluster passes
    /// an empty one (`Membership::default()`) and learns its configuration from the leader.
    pub fn new(
        config: Config,
        bootstrap: Membership,
        restored: Restored,
        seed: u64,
    ) -> Result<RawNode, ConfigError> {
        config.validate()?;
        if bootstrap.validate().is_err() {
            return Err(ConfigError::Invalid(
                "bootstrap membership is not a valid configuration",
            ));
        }
        let mut snapshot = restored.snapshot.unwrap_or_default();
        if snapshot.last_index == 0 {
            snapshot.membership = bootstrap;
            snapshot.membership_index = 0;
        }
        let hard_state = restored.hard_state;
        let log = RaftLog::restore_from_storage(snapshot, restored.entries, hard_state.commit);
        let mut raft = Raft::new(config, hard_state, log, (Membership::default(), 0), seed);
        // The newest configuration entry in the log, else the snapshot's.
        let (membership, index) = raft.membership_at(raft.log.last_index());
        raft.membership = membership;
        raft.membership_index = index;
        let previous_hard_state = raft.hard_state();
        let previous_soft_state = SoftState {
            leader: 0,
            role: Role::Follower,
        };
        Ok(RawNode {
            raft,
            previous_hard_state,
            previous_soft_state,
        })
    }

    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    pub fn tick(&mut self) {
        self.raft.tick();
    }

    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        if message.to != self.raft.id {
            return Err(StepError::WrongRecipient {
                to: message.to,
                id: self.raft.id,
            });
        }
        if message.from == 0 || message.from == self.raft.id {
            return Err(StepError::BadSender);
        }
        self.raft.step(message);
        Ok(())
    }

    /// Proposes one command; returns the (index, term) it will have if it commits. A command
    /// is applied exactly when an entry with that index AND term is applied.
    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term), ProposeError> {
        self.raft.propose(vec![data])
    }

    /// Proposes several commands as consecutive entries in one append (batched proposals);
    /// returns the index and term of the last one.
    pub fn propose_batch(&mut self, commands: Vec<Bytes>) -> Result<(Index, Term), ProposeError> {
        self.raft.propose(commands)
    }

    /// Asks for a linearizable read point; the answer arrives as a `ReadState` with `context`.
    pub fn read_index(&mut self, context: ReadContext) -> Result<(), ReadIndexError> {
        self.raft.read_index(context)
    }

    /// Starts an election now (tests, and operators forcing a campaign).
    pub fn campaign(&mut self) {
        if self.raft.role != Role::Leader {
            self.raft.campaign(false);
        }
    }

    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        self.raft.transfer_leader(to)
    }

    /// Proposes a configuration change (leader only); returns the (index, term) its entry will
    /// have. Joint changes leave their joint configuration by themselves once it commits.
    pub fn propose_conf_change(
        &mut self,
        change: &ConfChange,
    ) -> Result<(Index, Term), ProposeError> {
        self.raft.propose_conf_change(change)
    }

    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        self.raft.report_snapshot(to, success);
    }

    /// On a leader: whether a follower heard from recently has not acknowledged `index` yet.
    /// Compacting the log up to `index` now would make it need a snapshot (see
    /// `NodeCore::handle_snapshot_taken`).
    pub fn follower_behind(&self, index: Index) -> bool {
        self.raft.follower_behind(index)
    }

    /// `peer` came back as a new process (the transport tells): see `Raft::report_restarted`.
    pub fn report_restarted(&mut self, peer: NodeId) {
        self.raft.report_restarted(peer);
    }

    /// The caller took a durable snapshot at `meta.last_index` (at most the applied index):
    /// drop the log up to it. Followers too far behind will be sent this snapshot. Returns the
    /// entries dropped, for the caller to free where it does not stall its loop.
    pub fn compact(&mut self, meta: SnapshotMeta) -> Vec<Entry> {
        self.raft.compact(meta)
    }

    /// The entries of `Ready::entries_to_load` for follower `to` from `low`, read back from the
    /// WAL (none if the read failed). Those still in our log go out in an append.
    pub fn entries_loaded(&mut self, to: NodeId, low: Index, entries: Vec<Entry>) {
        self.raft.entries_loaded(to, low, entries);
    }

    /// Evicts the oldest applied, durable entries from memory until at most `bytes_max` of
    /// entries are left in it (`RaftLog::evict`). Returns them, for the caller to free.
    pub fn evict_entries(&mut self, bytes_max: u64) -> Vec<Entry> {
        self.raft.log.evict(bytes_max)
    }

    /// `Entry::size_bytes` summed over the entries held in memory.
    pub fn log_memory_bytes(&self) -> u64 {
        self.raft.log.memory_bytes()
    }

    /// The configuration entries after `index` in the log, held in memory or evicted:
    /// `(index, data)`. For checks.
    pub fn configs_after(&self, index: Index) -> Vec<(Index, Bytes)> {
        self.raft.log.configs_after(index)
    }

    pub fn has_ready(&self) -> bool {
        let raft = &self.raft;
        !raft.messages.is_empty()
            || !raft.messages_after_persist.is_empty()
            || raft.log.has_unstable()
            || raft.log.has_committed_to_apply()
            || !raft.read_states.is_empty()
            || !raft.dropped_reads.is_empty()
            || raft.pending_snapshot.is_some()
            || !raft.entries_to_load.is_empty()
            || raft.hard_state().vote_differs(&self.previous_hard_state)
            || self.soft_state() != self.previous_soft_state
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.raft.leader,
            role: self.raft.role,
        }
    }

    pub fn ready(&mut self) -> Ready {
        let raft = &mut self.raft;
        let mut ready = Ready {
            messages: std::mem::take(&mut raft.messages),
            snapshot: raft.pending_snapshot.take(),
            entries: raft.log.take_unstable(),
            persisted_messages: std::mem::take(&mut raft.messages_after_persist),
            committed_entries: raft.log.take_committed(raft.config.apply_batch_bytes_max),
            read_states: std::mem::take(&mut raft.read_states),
            dropped_reads: std::mem::take(&mut raft.dropped_reads),
            entries_to_load: std::mem::take(&mut raft.entries_to_load),
            ..Ready::default()
        };
        ready.persist_mark = (raft.log.last_index(), raft.log.last_term());
        let hard_state = raft.hard_state();
        let previous = &self.previous_hard_state;
        if hard_state.vote_differs(previous)
            || (hard_state != *previous && !ready.entries.is_empty())
        {
            ready.hard_state = Some(hard_state);
            self.previous_hard_state = hard_state;
        }
        let soft_state = self.soft_state();
        if soft_state != self.previous_soft_state {
            ready.soft_state = Some(soft_state);
            self.previous_soft_state = soft_state;
        }
        ready
    }

    /// Everything handed out up to the Ready whose `persist_mark` was `(index, term)` is durable.
    pub fn on_persisted(&mut self, mark: (Index, Term)) {
        self.raft.on_persisted(mark.0, mark.1);
    }

    /// The state machine has applied every committed entry up to `index`.
    pub fn on_applied(&mut self, index: Index) {
        self.raft.log.applied_to(index);
    }

    pub fn status(&self) -> Status {
        let raft = &self.raft;
        Status {
            id: raft.id,
            role: raft.role,
            term: raft.term,
            vote: raft.vote,
            leader: raft.leader,
            commit_index: raft.log.committed,
            leader_commit_index: raft.leader_commit.max(raft.log.committed),
            applied_index: raft.log.applied,
            first_index: raft.log.first_index(),
            memory_first_index: raft.log.memory_first_index(),
            last_index: raft.log.last_index(),
            last_term: raft.log.last_term(),
            stable_index: raft.log.stable,
            snapshot_index: raft.log.snapshot().last_index,
            membership_index: raft.membership_index,
        }
    }

    /// The configuration in force on this node (possibly not yet committed).
    pub fn membership(&self) -> &Membership {
        &self.raft.membership
    }

    /// The configuration in force at `index` (the newest configuration entry at or below it,
    /// else the snapshot's) and the index of the entry that made it.
    pub fn membership_at(&self, index: Index) -> (Membership, Index) {
        self.raft.membership_at(index)
    }

    /// The voter a leadership transfer is handing over to (0: no transfer in progress; an
    /// abandoned transfer goes back to 0).
    pub fn transferee(&self) -> NodeId {
        self.raft.transferee
    }

    /// The index of the entry that made `membership()` (0: bootstrap).
    pub fn membership_index(&self) -> Index {
        self.raft.membership_index
    }

    /// The metadata of a snapshot at `index` (applied, not compacted): its term and the
    /// configuration in force there. `None` if `index` is not in the log.
    pub fn snapshot_meta(&self, index: Index) -> Option<SnapshotMeta> {
        let last_term = self.raft.log.term(index)?;
        let (membership, membership_index) = self.raft.membership_at(index);
        Some(SnapshotMeta {
            last_index: index,
            last_term,
            membership,
            membership_index,
        })
    }

    /// The entries held in memory (the log after the snapshot, from its first entry not
    /// evicted). For checks and tests.
    pub fn log_entries(&self) -> impl ExactSizeIterator<Item = &Entry> {
        self.raft.log.entries()
    }

    pub fn log_term(&self, index: Index) -> Option<Term> {
        self.raft.log.term(index)
    }

    /// Per-peer replication state, for status displays and tests: (peer, match, next, state).
    pub fn progress(&self) -> Vec<(NodeId, Index, Index, String)> {
        self.raft
            .progress
            .iter()
            .map(|(&id, p)| (id, p.match_index, p.next_index, format!("{:?}", p.state)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(entries: Vec<Entry>) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Append {
                prev_log_index: 0,
                prev_log_term: 0,
                entries,
                commit: 0,
            },
        }
    }

    fn config_entry(data: Vec<u8>) -> Entry {
        Entry {
            term: 1,
            index: 1,
            kind: EntryKind::Config,
            data: Bytes::from(data),
        }
    }

    #[test]
    fn a_follower_refuses_an_append_with_an_undecodable_configuration() {
        let bootstrap = Membership::new(vec![1, 2, 3]);
        let mut node = RawNode::new(Config::new(2), bootstrap, Restored::default(), 7).unwrap();
        node.step(append(vec![config_entry(vec![0xff, 0xff, 0xff])]))
            .unwrap();
        let ready = node.ready();
        assert!(ready.entries.is_empty() && ready.persisted_messages.is_empty());
        assert_eq!(node.membership().voters, vec![1, 2, 3]);
        // The same entry with a real configuration is appended and in force at once.
        let next = Membership {
            voters: vec![1, 2, 3],
            voters_outgoing: Vec::new(),
            learners: vec![4],
        };
        node.step(append(vec![config_entry(next.encode())]))
            .unwrap();
        let ready = node.ready();
        assert_eq!(ready.entries.len(), 1);
        assert_eq!(ready.persisted_messages.len(), 1);
        assert_eq!(node.membership(), &next);
        assert_eq!(node.membership_index(), 1);
    }

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            data: Bytes::from(format!("e{index}")),
        }
    }

    /// Handles every Ready at once (instant disk, everything applied); returns its messages
    /// and its loads.
    fn settle(node: &mut RawNode) -> (Vec<Message>, Vec<EntriesToLoad>) {
        let (mut messages, mut loads) = (Vec::new(), Vec::new());
        while node.has_ready() {
            let ready = node.ready();
            node.on_persisted(ready.persist_mark);
            if let Some(last) = ready.committed_entries.last() {
                node.on_applied(last.index);
            }
            messages.extend(ready.messages);
            messages.extend(ready.persisted_messages);
            loads.extend(ready.entries_to_load);
        }
        (messages, loads)
    }

    fn from_2(body: MessageBody) -> Message {
        Message {
            from: 2,
            to: 1,
            term: 2,
            body,
        }
    }

    /// Node 1 holds 1..=5 of term 1, all committed; it leads {1, 2} in term 2 (its no-op 6
    /// not yet committed) and evicted 1..=5 from memory.
    fn leader_with_evicted_log() -> RawNode {
        let restored = Restored {
            hard_state: HardState {
                term: 1,
                vote: 1,
                commit: 5,
            },
            snapshot: None,
            entries: (1..=5).map(|index| entry(index, 1)).collect(),
        };
        let config = Config {
            pre_vote: false,
            ..Config::new(1)
        };
        let mut node =
            RawNode::new(config, Membership::new(vec![1, 2]), restored, 7).expect("valid config");
        node.campaign();
        settle(&mut node);
        let granted = MessageBody::VoteResponse {
            pre_vote: false,
            granted: true,
        };
        node.step(from_2(granted)).expect("step");
        settle(&mut node);
        assert_eq!(node.status().role, Role::Leader);
        // Everything applied and durable is evicted: 1..=5 (the no-op 6 is not committed).
        let evicted: Vec<Index> = node.evict_entries(0).iter().map(|e| e.index).collect();
        assert_eq!(evicted, vec![1, 2, 3, 4, 5]);
        assert_eq!(node.log_term(3), Some(1), "an evicted entry keeps its term");
        node
    }

    #[test]
    fn a_leader_sends_evicted_entries_only_as_read_back_with_its_terms() {
        let mut node = leader_with_evicted_log();
        // Node 2 has only entry 1: the leader asks for 2..=5 from the WAL, once.
        let hint = Some(message::RejectHint { index: 1, term: 1 });
        let rejected = || MessageBody::AppendResponse {
            index: 5,
            reject: hint,
        };
        node.step(from_2(rejected())).expect("step");
        let (messages, loads) = settle(&mut node);
        assert!(messages.is_empty(), "nothing to send before the read");
        assert_eq!(loads.len(), 1);
        assert_eq!((loads[0].to, loads[0].low, loads[0].high), (2, 2, 5));
        assert_eq!(loads[0].terms, vec![(2, 1)]);
        // An answer for another read, or entries of another term (an overwritten record), is
        // not sent.
        node.entries_loaded(2, 3, (3..=5).map(|index| entry(index, 1)).collect());
        node.entries_loaded(2, 2, (2..=5).map(|index| entry(index, 9)).collect());
        let (messages, _) = settle(&mut node);
        assert!(messages.is_empty(), "sent {messages:?}");
        // Asked again (at the next heartbeat answer), answered with our entries: sent from 2.
        let heartbeat_answer = MessageBody::HeartbeatResponse { read_round: 0 };
        node.step(from_2(heartbeat_answer)).expect("step");
        let (_, loads) = settle(&mut node);
        assert_eq!(loads.len(), 1);
        node.entries_loaded(2, 2, (2..=5).map(|index| entry(index, 1)).collect());
        let (messages, _) = settle(&mut node);
        let sent: Vec<(Index, Vec<Index>)> = (messages.iter())
            .filter_map(|m| match &m.body {
                MessageBody::Append {
                    prev_log_index,
                    entries,
                    ..
                } => Some((*prev_log_index, entries.iter().map(|e| e.index).collect())),
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![(1, vec![2, 3, 4, 5])]);
    }

    /// Node 2 rejects the leader's append at 5: it holds only entry 1. Returns the reads of
    /// evicted entries that follow.
    fn rejected_back_to_1(node: &mut RawNode) -> Vec<EntriesToLoad> {
        let hint = Some(message::RejectHint { index: 1, term: 1 });
        let rejected = MessageBody::AppendResponse {
            index: 5,
            reject: hint,
        };
        node.step(from_2(rejected)).expect("step");
        settle(node).1
    }

    #[test]
    fn a_leader_reads_evicted_entries_for_a_follower_one_read_at_a_time() {
        let mut node = leader_with_evicted_log();
        let loads = rejected_back_to_1(&mut node);
        assert_eq!(loads.iter().map(|l| l.low).collect::<Vec<_>>(), vec![2]);
        // The follower acknowledges 3 meanwhile (it needs 4 on): no second read while the
        // first is out.
        let acknowledged = MessageBody::AppendResponse {
            index: 3,
            reject: None,
        };
        node.step(from_2(acknowledged)).expect("step");
        let (messages, loads) = settle(&mut node);
        assert!(
            loads.is_empty() && messages.is_empty(),
            "{loads:?} {messages:?}"
        );
        // The first read's answer comes too late for the follower: it is not sent, and the
        // read of what the follower needs now starts.
        node.entries_loaded(2, 2, (2..=5).map(|index| entry(index, 1)).collect());
        let (messages, loads) = settle(&mut node);
        assert!(messages.is_empty(), "sent {messages:?}");
        assert_eq!(loads.iter().map(|l| l.low).collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn a_leader_gives_up_a_read_of_evicted_entries_never_answered() {
        let mut node = leader_with_evicted_log();
        let loads = rejected_back_to_1(&mut node);
        assert_eq!(loads.len(), 1);
        let heartbeat_answer = || MessageBody::HeartbeatResponse { read_round: 0 };
        // Within an election timeout the read is still awaited: nothing is asked again.
        node.step(from_2(heartbeat_answer())).expect("step");
        assert!(settle(&mut node).1.is_empty());
        // The driver never answers: after two election timeouts the read is given up, and the
        // next heartbeat answer asks again.
        for _ in 0..2 * Config::new(1).election_timeout_ticks {
            node.tick();
            let granted = MessageBody::HeartbeatResponse { read_round: 0 };
            node.step(from_2(granted)).expect("step");
            let (_, loads) = settle(&mut node);
            if !loads.is_empty() {
                assert_eq!(loads[0].low, 2);
                return;
            }
        }
        panic!("the read was never asked again");
    }
}
