//! From what is on disk to a node: the one recovery rule, used by the server and the simulator.
//!
//! The newest valid snapshot restores the state machine; the WAL's entries must continue right
//! after it. Three cases (`kvraft::log::entries_after_snapshot`):
//!
//! ```text
//! snapshot 10 (term 3), WAL 8..15 with term(10) = 3  -> entries 11..15; WAL compacted to 10
//! snapshot 10 (term 3), WAL 8..15 with term(10) = 2  -> entries none; WAL reset at 10 (a crash
//!                                                       came between installing a leader's
//!                                                       snapshot and resetting the WAL)
//! snapshot 10, WAL 13..15                            -> refuse to start: entries are missing
//! ```
//!
//! The WAL commands that realign the WAL are the node's first commands and are counted like
//! every other (issue 10, bug 2).

use kvraft::log::entries_after_snapshot;
use kvraft::{Entry, HardState, Index, Restored, SnapshotMeta};
use kvstate::StateMachine;

use crate::action::WalCommand;

/// What a node found on its disk at start.
#[derive(Clone, Debug, Default)]
pub struct DiskState {
    /// The newest hard state in the WAL.
    pub hard_state: HardState,
    /// The newest valid snapshot file and the state machine it holds.
    pub snapshot: Option<(SnapshotMeta, StateMachine)>,
    /// The WAL's entries, contiguous.
    pub wal_entries: Vec<Entry>,
    /// The highest index the WAL was compacted to (0: never).
    pub wal_compacted_index: Index,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "the WAL continues at index {first} but the newest snapshot ends at {snapshot_index}: \
         records are missing"
    )]
    Gap { first: Index, snapshot_index: Index },
    #[error(
        "the snapshot file says index {meta_index} but its state machine was taken at \
         {state_index}"
    )]
    SnapshotMismatch {
        meta_index: Index,
        state_index: Index,
    },
    #[error("raft: {0}")]
    Raft(#[from] kvraft::ConfigError),
}

/// What recovery decided.
pub(crate) struct Plan {
    pub restored: Restored,
    pub sm: StateMachine,
    /// WAL commands to run before anything else.
    pub commands: Vec<WalCommand>,
    /// WAL entries discarded because they do not follow the snapshot.
    pub discarded: usize,
}

pub(crate) fn plan(disk: DiskState) -> Result<Plan, RecoveryError> {
    let (meta, sm) = match disk.snapshot {
        Some((meta, sm)) => (Some(meta), sm),
        None => (None, StateMachine::new()),
    };
    let snapshot_index = meta.as_ref().map_or(0, |m| m.last_index);
    let snapshot_term = meta.as_ref().map_or(0, |m| m.last_term);
    if sm.applied_index() != snapshot_index {
        return Err(RecoveryError::SnapshotMismatch {
            meta_index: snapshot_index,
            state_index: sm.applied_index(),
        });
    }
    let mut commands = Vec::new();
    let (entries, discarded) =
        match entries_after_snapshot(snapshot_index, snapshot_term, disk.wal_entries) {
            Ok((entries, 0)) => {
                if snapshot_index > disk.wal_compacted_index {
                    commands.push(WalCommand::Compact(snapshot_index));
                }
                (entries, 0)
            }
            Ok((entries, discarded)) => {
                commands.push(WalCommand::InstallSnapshot(snapshot_index));
                (entries, discarded)
            }
            Err(first) => {
                return Err(RecoveryError::Gap {
                    first,
                    snapshot_index,
                })
            }
        };
    let restored = Restored {
        hard_state: disk.hard_state,
        snapshot: meta,
        entries,
    };
    Ok(Plan {
        restored,
        sm,
        commands,
        discarded,
    })
}
