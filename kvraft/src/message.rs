//! The data the Raft core exchanges with the outside world: log entries, hard state, snapshot
//! metadata and peer messages. These types are shared with `wal/`, `snapshot/` and `transport/`
//! (see STYLE.md: they depend on `raft::message` only).
//!
//! The wire encoding of all of these is bincode 2 through serde; see `proto-docs/raft.md`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's identity inside a cluster. 0 is never a valid id (it means "none").
pub type NodeId = u64;
/// A Raft term. Terms start at 0 (nothing has happened) and only grow.
pub type Term = u64;
/// A log index. Index 0 is the empty prefix: the first real entry has index 1.
pub type Index = u64;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// A client command: `data` goes to the state machine.
    Normal,
    /// The empty entry a new leader appends to commit entries of earlier terms (Raft §5.4.2).
    /// `data` is empty.
    Noop,
    /// A configuration change: `data` is the whole configuration in force from this entry on
    /// (`Membership::encode`), not a delta, so the configuration at any index is the newest
    /// such entry at or below it (or the snapshot's). Nothing for the state machine.
    Config,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub kind: EntryKind,
    /// The command, opaque to Raft. `Bytes` so that the same buffer is shared (not copied)
    /// between the unstable log, the WAL batch and every follower's append message.
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for in size limits (payload plus a fixed header estimate).
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.data.len() as u64
    }
}

/// The fixed per-entry cost counted in byte limits, on top of the payload.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// The state that must be on stable storage before a node answers a vote or an append
/// (Raft paper, Figure 2 "Persistent state on all servers"). `commit` is persisted too, along
/// with entries or a term or vote change (never synced for itself, see `Ready::hard_state`), so
/// that a restarted node can re-apply up to it without waiting for a leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    /// The candidate voted for in `term`, 0 for none.
    pub vote: NodeId,
    pub commit: Index,
}

impl HardState {
    /// Whether the term or the vote differs from `other`'s: what must be durable before the
    /// messages that depend on it, as opposed to the commit index alone.
    pub fn vote_differs(&self, other: &HardState) -> bool {
        self.term != other.term || self.vote != other.vote
    }
}

/// A cluster configuration (Raft thesis §4.3, etcd-io/raft's `ConfState`): who votes, who only
/// receives the log.
///
/// Outside a change `voters_outgoing` is empty. During a joint change (C_old,new) `voters` is
/// C_new and `voters_outgoing` is C_old: every decision (commit, election, check-quorum,
/// ReadIndex) then needs a majority of both. Learners receive the log and snapshots but count
/// in no quorum and never campaign. A node is in at most one of `voters` ∪ `voters_outgoing`
/// and `learners`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// Sorted, without duplicates.
    pub voters: Vec<NodeId>,
    /// The outgoing voters of a joint configuration; empty otherwise. Sorted, no duplicates.
    pub voters_outgoing: Vec<NodeId>,
    /// Non-voting members. Sorted, no duplicates, disjoint from both voter sets.
    pub learners: Vec<NodeId>,
}

/// Bytes a `Membership` may take encoded in a log entry (a few bytes per member); anything
/// longer is refused as corrupt.
pub const MEMBERSHIP_BYTES_MAX: usize = 64 * 1024;

/// Why a configuration entry's data is not a configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("configuration entry does not decode: {0}")]
    Decode(String),
    #[error("configuration is invalid: {0}")]
    Invalid(&'static str),
}

fn sorted(mut ids: Vec<NodeId>) -> Vec<NodeId> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Membership {
    /// A simple configuration of `voters` and no learners.
    pub fn new(voters: Vec<NodeId>) -> Membership {
        Membership {
            voters: sorted(voters),
            ..Membership::default()
        }
    }

    /// Whether `id` votes (in either half of a joint configuration).
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok() || self.voters_outgoing.binary_search(&id).is_ok()
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    /// Whether `id` is in the configuration at all (voter or learner).
    pub fn is_member(&self, id: NodeId) -> bool {
        self.contains(id) || self.is_learner(id)
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every member, voters and learners, sorted.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all = self.voters.clone();
        all.extend_from_slice(&self.voters_outgoing);
        all.extend_from_slice(&self.learners);
        sorted(all)
    }

    /// The configuration after leaving a joint one: C_new alone.
    pub fn leave_joint(&self) -> Membership {
        Membership {
            voters: self.voters.clone(),
            voters_outgoing: Vec::new(),
            learners: self.learners.clone(),
        }
    }

    /// Checks the structural rules: sorted sets, no id 0, learners disjoint from voters, and at
    /// least one voter unless the configuration is empty (a node that has not yet learned one).
    pub fn validate(&self) -> Result<(), MembershipError> {
        let is_set = |ids: &[NodeId]| ids.windows(2).all(|w| w[0] < w[1]);
        if !is_set(&self.voters) || !is_set(&self.voters_outgoing) || !is_set(&self.learners) {
            return Err(MembershipError::Invalid("member lists must be sorted sets"));
        }
        if self.members().first() == Some(&0) {
            return Err(MembershipError::Invalid("node id 0 is not a member"));
        }
        if self.learners.iter().any(|&id| self.contains(id)) {
            return Err(MembershipError::Invalid("a node is both voter and learner"));
        }
        let empty = self.voters.is_empty() && self.voters_outgoing.is_empty();
        if self.voters.is_empty() && !(empty && self.learners.is_empty()) {
            return Err(MembershipError::Invalid("configuration has no voters"));
        }
        Ok(())
    }

    /// The bytes of a `EntryKind::Config` entry.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding three vectors of integers into a Vec cannot fail.
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    /// Decodes and validates a `EntryKind::Config` entry's data.
    pub fn decode(bytes: &[u8]) -> Result<Membership, MembershipError> {
        let config = bincode::config::standard().with_limit::<MEMBERSHIP_BYTES_MAX>();
        let (membership, used): (Membership, usize) =
            bincode::serde::decode_from_slice(bytes, config)
                .map_err(|e| MembershipError::Decode(e.to_string()))?;
        if used != bytes.len() {
            return Err(MembershipError::Decode("trailing bytes".to_string()));
        }
        membership.validate()?;
        Ok(membership)
    }
}

impl std::fmt::Display for Membership {
    /// `voters=1,2,3 learners=4` or, joint, `voters=1,2,4 outgoing=1,2,3`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |ids: &[NodeId]| {
            ids.iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(f, "voters={}", list(&self.voters))?;
        if self.is_joint() {
            write!(f, " outgoing={}", list(&self.voters_outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners={}", list(&self.learners))?;
        }
        Ok(())
    }
}

/// Describes a snapshot: the state machine after applying every entry up to `last_index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub last_index: Index,
    pub last_term: Term,
    /// The configuration in force at `last_index`.
    pub membership: Membership,
    /// The index of the entry that made `membership` (0: the bootstrap configuration).
    pub membership_index: Index,
}

/// A message between two Raft nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term; for a pre-vote request, the term the sender would campaign in.
    pub term: Term,
    pub body: MessageBody,
}

/// A rejected append's hint: the follower's view of where the leader should retry.
///
/// The follower answers with the last index at or below the leader's `prev_log_index` whose
/// term is at most the leader's `prev_log_term`, together with that term. The leader then
/// skips back a whole term at a time (see `raft/log.rs`, `find_conflict_by_term`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectHint {
    pub index: Index,
    pub term: Term,
}

/// The message kinds. See `proto-docs/raft.md` for the table of who sends what, when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// RequestVote, or the pre-vote probe (thesis §9.6) when `pre_vote` is set.
    VoteRequest {
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
        /// Set when the election was started by a leadership transfer: the receiver then votes
        /// even if it heard from the (outgoing) leader recently.
        transfer: bool,
    },
    VoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    /// AppendEntries. An empty `entries` still carries `commit` and probes the follower's log.
    Append {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    AppendResponse {
        /// On success: the index of the last entry the follower now matches with the leader.
        /// On rejection: the `prev_log_index` that was rejected.
        index: Index,
        reject: Option<RejectHint>,
    },
    /// Leader liveness, commit propagation, and the ReadIndex confirmation round.
    Heartbeat {
        commit: Index,
        /// The newest ReadIndex round this heartbeat confirms (0: none).
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    /// Tells the transport to stream the leader's current snapshot to `to`. The bytes travel on a
    /// stream of their own; the follower's node installs them and then calls
    /// `RawNode::restore`. The leader learns the outcome from `RawNode::report_snapshot` and from
    /// the follower's `AppendResponse` afterwards.
    InstallSnapshot {
        meta: SnapshotMeta,
    },
    /// Leadership transfer: the receiver starts an election at once (thesis §3.10).
    TimeoutNow,
}

impl MessageBody {
    /// A short name for logs and scripts.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::VoteRequest { pre_vote: true, .. } => "PreVote",
            MessageBody::VoteRequest { .. } => "Vote",
            MessageBody::VoteResponse { pre_vote: true, .. } => "PreVoteResp",
            MessageBody::VoteResponse { .. } => "VoteResp",
            MessageBody::Append { .. } => "App",
            MessageBody::AppendResponse { .. } => "AppResp",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResp",
            MessageBody::InstallSnapshot { .. } => "Snap",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}
