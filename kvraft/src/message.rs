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
/// (Raft paper, Figure 2 "Persistent state on all servers"). `commit` is persisted too, so that a
/// restarted node can re-apply up to it without waiting for a leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    /// The candidate voted for in `term`, 0 for none.
    pub vote: NodeId,
    pub commit: Index,
}

/// The voting members of the cluster. Membership changes arrive in a later issue; until then the
/// configuration is fixed at bootstrap and carried in snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Sorted, without duplicates.
    pub voters: Vec<NodeId>,
}

impl Membership {
    pub fn new(mut voters: Vec<NodeId>) -> Membership {
        voters.sort_unstable();
        voters.dedup();
        Membership { voters }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Votes (or acknowledgements) needed for a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// Describes a snapshot: the state machine after applying every entry up to `last_index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub last_index: Index,
    pub last_term: Term,
    pub membership: Membership,
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
