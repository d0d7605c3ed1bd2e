//! What the node core asks its driver to do (`Action`), and what it reports for logs and
//! metrics only (`Observation`).

use kvraft::{
    EntriesToLoad, Entry, HardState, Index, Membership, Message, NodeId, Role, SnapshotMeta, Term,
};
use kvstate::client_proto::ClientResponse;
use kvstate::StateMachine;

/// One command for the WAL's FIFO writer. Every command counts as one in the WAL's
/// `commands_durable_total`, which the driver hands back through `NodeCore::handle_durable`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalCommand {
    /// Append `entries` (truncating the WAL's suffix from `entries[0].index` first if it
    /// overlaps) and then record `hard_state`, in one durable write.
    Append {
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    },
    /// A snapshot received from the leader replaced the log: drop every entry, continue after
    /// this index.
    InstallSnapshot(Index),
    /// A snapshot of our own covers the log up to this index: the WAL may drop it.
    Compact(Index),
}

/// An effect to perform. Perform the actions of one `take_actions()` **in the order given**:
/// the order is the durability contract (`proto-docs/durability.md`). In particular an
/// `InstallSnapshotFile` must be durable before the `Wal(InstallSnapshot)` after it is queued,
/// and `Wal` commands must reach the WAL in order.
#[derive(Debug)]
pub enum Action<T> {
    /// Send a message to a peer now. It promises nothing about our disk that is not already
    /// durable: acknowledgements and votes are only handed out after `handle_durable` said so.
    Send(Message),
    /// Stream our snapshot file described by `meta` to `to`, then report the outcome with
    /// `handle_snapshot_sent` (also when there is no such file: `ok = false`).
    SendSnapshot { to: NodeId, meta: SnapshotMeta },
    /// Queue a command on the WAL (group commit). Completion arrives as `handle_durable`.
    Wal(WalCommand),
    /// Make the snapshot file received for `meta` the node's current snapshot, durably (written,
    /// fsynced, renamed, directory fsynced) before performing the next action.
    InstallSnapshotFile { meta: SnapshotMeta },
    /// A received snapshot file that will never be installed: delete it.
    DiscardSnapshotFile { meta: SnapshotMeta },
    /// Write `state` (the state machine at `meta.last_index`, a cheap clone that shares the
    /// node's map) as a snapshot file with `StateMachine::into_snapshot`, durably, in the
    /// background. Then call `handle_snapshot_taken(meta)`.
    TakeSnapshot {
        meta: SnapshotMeta,
        state: Box<StateMachine>,
    },
    /// Read the entries `load` describes back from the WAL (`kvstorage::wal::load`), off the
    /// event loop, and hand them to `handle_entries_loaded` (none if the read failed: the
    /// leader asks again at the follower's next heartbeat answer).
    LoadEntries(EntriesToLoad),
    /// Answer the client request that came with `token`.
    Answer { token: T, response: ClientResponse },
}

/// Facts worth a log line or a metric. Nothing depends on them being acted upon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    RoleChanged {
        role: Role,
        leader: NodeId,
        term: Term,
    },
    /// This node started an election (became a candidate).
    ElectionStarted,
    /// Entries applied to the state machine by one Ready.
    Applied {
        entries: usize,
    },
    /// A follower rejected our append (log repair in progress).
    AppendRejected {
        from: NodeId,
    },
    /// An append our log cannot take, left unanswered while a snapshot from the leader is
    /// decoded (the snapshot replaces the log; rejected, the append would make the leader
    /// send the snapshot again). The leader sends it again after the install.
    AppendHeldOff {
        from: NodeId,
    },
    /// A message the core did not accept.
    MessageDropped {
        from: NodeId,
        reason: String,
    },
    SnapshotInstalled {
        index: Index,
    },
    SnapshotTaken {
        index: Index,
    },
    /// Our snapshot at `index` is written, but the log is kept (not compacted) until the
    /// followers behind it caught up (`NodeCore::handle_snapshot_taken`).
    CompactionWaiting {
        index: Index,
    },
    SnapshotSent {
        to: NodeId,
        ok: bool,
    },
    /// A received snapshot was discarded before installation (a newer one arrived, or it does
    /// not match what the leader asked for).
    SnapshotDiscarded {
        index: Index,
    },
    /// A configuration entry was applied (it took effect when appended).
    MembershipChanged {
        index: Index,
        membership: Membership,
    },
    /// Recovery dropped WAL entries above the snapshot that do not follow it.
    RecoveryDiscarded {
        entries: usize,
        snapshot_index: Index,
    },
}
