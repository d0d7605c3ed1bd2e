//! Snapshot bookkeeping: snapshots received from leaders (decoded, waiting for the leader's
//! InstallSnapshot message), our own snapshot being written, and InstallSnapshot messages held
//! until their file has been streamed to the follower.
//!
//! ```text
//! leader:   Ready message InstallSnapshot(meta) -> held; Action::SendSnapshot(to, meta)
//!           handle_snapshot_sent(to, ok) -> ok: Action::Send(held message); report to Raft
//! follower: handle_snapshot_received(meta, sm) -> kept (at most received_snapshots_max)
//!           handle_message(InstallSnapshot(meta)) -> stepped only if kept, else dropped
//!           Ready.snapshot(meta) -> state machine := sm; Action::InstallSnapshotFile(meta);
//!                                   Action::Wal(InstallSnapshot(index))
//! ```

use std::collections::{BTreeMap, VecDeque};

use kvraft::{Message, NodeId, SnapshotMeta};
use kvstate::StateMachine;

#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    received: VecDeque<(SnapshotMeta, StateMachine)>,
    /// Our own snapshot is being written (at most one at a time).
    pub taking: bool,
    /// InstallSnapshot messages waiting for their file to reach the follower.
    outgoing: BTreeMap<NodeId, Message>,
}

impl Snapshots {
    /// Keeps a received snapshot; returns the ones pushed out (oldest first) beyond `max`.
    pub fn receive(
        &mut self,
        meta: SnapshotMeta,
        sm: StateMachine,
        max: usize,
    ) -> Vec<SnapshotMeta> {
        let mut discarded = Vec::new();
        if let Some(position) = self.received.iter().position(|(m, _)| *m == meta) {
            // The same snapshot again (a retried stream): the driver replaced the file, so
            // nothing is discarded (discarding `meta` would delete the new file).
            self.received.remove(position);
        }
        self.received.push_back((meta, sm));
        while self.received.len() > max.max(1) {
            if let Some((old, _)) = self.received.pop_front() {
                discarded.push(old);
            }
        }
        discarded
    }

    pub fn has_received(&self, meta: &SnapshotMeta) -> bool {
        self.received.iter().any(|(m, _)| m == meta)
    }

    /// Takes the received snapshot for `meta` out (to install it).
    pub fn take_received(&mut self, meta: &SnapshotMeta) -> Option<StateMachine> {
        let position = self.received.iter().position(|(m, _)| m == meta)?;
        self.received.remove(position).map(|(_, sm)| sm)
    }

    /// Received snapshots at or below `index` are useless once `index` is installed.
    pub fn drop_received_up_to(&mut self, index: u64) -> Vec<SnapshotMeta> {
        let (old, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.received)
            .into_iter()
            .partition(|(m, _)| m.last_index <= index);
        self.received = kept;
        old.into_iter().map(|(m, _)| m).collect()
    }

    pub fn hold(&mut self, message: Message) {
        self.outgoing.insert(message.to, message);
    }

    pub fn release(&mut self, to: NodeId) -> Option<Message> {
        self.outgoing.remove(&to)
    }
}
