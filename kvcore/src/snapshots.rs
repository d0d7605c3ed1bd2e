//! Snapshot bookkeeping: snapshots received from leaders (decoded, waiting for the leader's
//! InstallSnapshot message), our own snapshot being written, and InstallSnapshot messages held
//! until their file has been streamed to the follower.
//!
//! ```text
//! leader:   Ready message InstallSnapshot(meta) -> held; Action::SendSnapshot(to, meta)
//!           handle_snapshot_sent(to, ok) -> ok: Action::Send(held message); report to Raft
//! follower: handle_snapshot_arriving(meta) -> decoding: the node decodes the file elsewhere
//!           handle_message(InstallSnapshot(meta)) while decoding -> held until decoded
//!           handle_message(Append beyond our log) while decoding -> dropped (see below)
//!           handle_snapshot_received(meta, sm) -> kept (at most received_snapshots_max);
//!                                                 a held InstallSnapshot is stepped
//!           handle_snapshot_abandoned(meta) -> the file did not decode: forgotten
//!           handle_message(InstallSnapshot(meta)) -> stepped only if kept, else dropped
//!           Ready.snapshot(meta) -> state machine := sm; Action::InstallSnapshotFile(meta);
//!                                   Action::Wal(InstallSnapshot(index))
//! ```

use std::collections::{BTreeMap, VecDeque};

use kvraft::{Message, MessageBody, NodeId, SnapshotMeta};
use kvstate::StateMachine;

#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    /// Files from leaders being decoded by the node, each with the leader's InstallSnapshot
    /// message for it once that arrives.
    decoding: VecDeque<(SnapshotMeta, Option<Message>)>,
    received: VecDeque<(SnapshotMeta, StateMachine)>,
    /// Our own snapshot is being written (at most one at a time).
    pub taking: bool,
    /// The applied index when `NodeCore::maybe_snapshot` last looked (`None`: not yet), so
    /// that a window the applied index jumped over is seen (`snapshot_due`).
    pub checked_applied: Option<u64>,
    /// Our newest snapshot, written, whose compaction of the log waits for a follower
    /// (`NodeCore::handle_snapshot_taken`).
    pub compaction_deferred: Option<SnapshotMeta>,
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

    /// A file for `meta` is being decoded. At most `max` are tracked (the node decodes one
    /// at a time and queues one): beyond that the oldest is forgotten, with its held message
    /// (the leader sends it again).
    pub fn arriving(&mut self, meta: SnapshotMeta, max: usize) {
        if !self.decoding.iter().any(|(m, _)| *m == meta) {
            self.decoding.push_back((meta, None));
        }
        while self.decoding.len() > max.max(1) {
            self.decoding.pop_front();
        }
    }

    pub fn is_decoding(&self) -> bool {
        !self.decoding.is_empty()
    }

    /// Holds `message` (an InstallSnapshot) if its file is being decoded; gives it back if not.
    pub fn hold_until_decoded(&mut self, message: Message) -> Option<Message> {
        let MessageBody::InstallSnapshot { meta } = &message.body else {
            return Some(message);
        };
        match self.decoding.iter_mut().find(|(m, _)| m == meta) {
            Some((_, held)) => {
                *held = Some(message);
                None
            }
            None => Some(message),
        }
    }

    /// The file for `meta` is decoded or abandoned: returns its held InstallSnapshot, if any.
    pub fn decoded(&mut self, meta: &SnapshotMeta) -> Option<Message> {
        let position = self.decoding.iter().position(|(m, _)| m == meta)?;
        self.decoding.remove(position).and_then(|(_, held)| held)
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
