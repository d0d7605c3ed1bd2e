//! The simulator's events and what each does to a node.

use kvraft::{Entry, Index, Message, NodeId, SnapshotMeta};
use kvstate::client_proto::ClientResponse;
use kvstate::StateMachine;

use crate::client::Token;
use crate::{Sim, Violation};

#[derive(Debug)]
pub(crate) enum Event {
    Deliver {
        message: Message,
    },
    /// A snapshot file streamed from `from` arrives at `to`.
    SnapshotArrive {
        from: usize,
        from_epoch: u64,
        to: usize,
        meta: SnapshotMeta,
        bytes: Vec<u8>,
    },
    /// Node `node` finished decoding a received snapshot file.
    SnapshotDecoded {
        node: usize,
        epoch: u64,
        meta: SnapshotMeta,
        bytes: Vec<u8>,
    },
    /// Entries read back from node `node`'s disk for its follower `to` arrive.
    EntriesLoaded {
        node: usize,
        epoch: u64,
        to: NodeId,
        low: Index,
        entries: Vec<Entry>,
    },
    /// The leader learns how its snapshot stream to `to` ended.
    SnapshotReport {
        leader: usize,
        epoch: u64,
        to: NodeId,
        ok: bool,
    },
    /// A group commit of node `node` finished.
    WalSynced {
        node: usize,
        epoch: u64,
    },
    /// The background write of a snapshot file of our own finished.
    SnapshotWritten {
        node: usize,
        epoch: u64,
        meta: SnapshotMeta,
        bytes: Vec<u8>,
    },
    ClientRequest {
        node: usize,
        token: Token,
        owner: String,
        bytes: Vec<u8>,
    },
    ClientAnswer {
        token: Token,
        response: ClientResponse,
    },
    ClientWake {
        client: usize,
        generation: u64,
    },
    Crash {
        node: usize,
        epoch: u64,
        /// Restart the node this many units after the crash (kill -9 under a supervisor).
        restart_after: Option<u64>,
    },
    Restart {
        node: usize,
    },
    Resume {
        node: usize,
        epoch: u64,
    },
    /// A leader flap after its first isolation: `isolated` rejoins (and hears the new leader);
    /// with `then_isolate_new`, the new leader is isolated a little later.
    FlapMove {
        isolated: usize,
        then_isolate_new: bool,
    },
}

impl Event {
    /// The node whose process must run for this event to happen (it waits while paused).
    fn target(&self) -> Option<usize> {
        match self {
            Event::Deliver { message } => Some((message.to - 1) as usize),
            Event::SnapshotArrive { to, .. } => Some(*to),
            Event::SnapshotReport { leader, .. } => Some(*leader),
            Event::WalSynced { node, .. }
            | Event::SnapshotDecoded { node, .. }
            | Event::EntriesLoaded { node, .. }
            | Event::SnapshotWritten { node, .. }
            | Event::ClientRequest { node, .. } => Some(*node),
            Event::ClientAnswer { .. }
            | Event::ClientWake { .. }
            | Event::Crash { .. }
            | Event::Restart { .. }
            | Event::Resume { .. }
            | Event::FlapMove { .. } => None,
        }
    }
}

impl Sim {
    pub(crate) fn handle_event(&mut self, event: Event) -> Result<(), Violation> {
        if let Some(node) = event.target() {
            if self.nodes[node].paused {
                self.nodes[node].deferred.push(event);
                return Ok(());
            }
        }
        match event {
            Event::Deliver { message } => self.deliver(message),
            Event::SnapshotArrive {
                from,
                from_epoch,
                to,
                meta,
                bytes,
            } => self.snapshot_arrive(from, from_epoch, to, meta, bytes),
            Event::SnapshotDecoded {
                node,
                epoch,
                meta,
                bytes,
            } => self.snapshot_decoded(node, epoch, meta, bytes),
            Event::SnapshotReport {
                leader,
                epoch,
                to,
                ok,
            } => {
                if self.nodes[leader].epoch != epoch {
                    return Ok(());
                }
                if let Some(core) = self.nodes[leader].core.as_mut() {
                    core.handle_snapshot_sent(to, ok);
                }
                self.drive(leader)
            }
            Event::WalSynced { node, epoch } => self.wal_synced(node, epoch),
            Event::EntriesLoaded {
                node,
                epoch,
                to,
                low,
                entries,
            } => {
                if self.nodes[node].epoch != epoch {
                    return Ok(());
                }
                let Some(core) = self.nodes[node].core.as_mut() else {
                    return Ok(());
                };
                self.stats.entries_loaded += entries.len() as u64;
                core.handle_entries_loaded(to, low, entries);
                self.drive(node)
            }
            Event::SnapshotWritten {
                node,
                epoch,
                meta,
                bytes,
            } => self.snapshot_written(node, epoch, meta, bytes),
            Event::ClientRequest {
                node,
                token,
                owner,
                bytes,
            } => {
                let Some(core) = self.nodes[node].core.as_mut() else {
                    return Ok(());
                };
                core.handle_client(token, &owner, &bytes);
                self.drive(node)
            }
            other => self.handle_other(other),
        }
    }

    fn handle_other(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::ClientAnswer { token, response } => {
                let effects = self
                    .clients
                    .answer(token, response, self.now, &mut self.rng)
                    .map_err(|what| self.violation(what))?;
                for effect in effects {
                    self.client_effect(effect);
                }
                Ok(())
            }
            Event::ClientWake { client, generation } => {
                let open = self.now < self.fault_end();
                let effects = self
                    .clients
                    .wake(client, generation, self.now, open, &mut self.rng);
                for effect in effects {
                    self.client_effect(effect);
                }
                Ok(())
            }
            Event::Crash {
                node,
                epoch,
                restart_after,
            } => {
                if self.nodes[node].epoch == epoch && self.now < self.fault_end() {
                    self.crash(node)?;
                    if let Some(delay) = restart_after {
                        self.schedule(delay, Event::Restart { node });
                    }
                }
                Ok(())
            }
            Event::Restart { node } => {
                if self.nodes[node].core.is_none() {
                    self.restart(node)?;
                }
                Ok(())
            }
            Event::Resume { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].paused {
                    self.resume(node)?;
                }
                Ok(())
            }
            Event::FlapMove {
                isolated,
                then_isolate_new,
            } => {
                if self.now < self.fault_end() {
                    self.flap_move(isolated, then_isolate_new);
                }
                Ok(())
            }
            // Handled by handle_event.
            _ => Ok(()),
        }
    }

    fn deliver(&mut self, message: Message) -> Result<(), Violation> {
        let to = (message.to - 1) as usize;
        let from = (message.from - 1) as usize;
        if self.blocked[from][to] || self.nodes[to].core.is_none() {
            return Ok(());
        }
        self.stats.messages_delivered += 1;
        self.log(|| {
            format!(
                "deliver {}->{} {:?}",
                message.from, message.to, message.body
            )
        });
        if let Some(core) = self.nodes[to].core.as_mut() {
            core.handle_message(message);
        }
        self.drive(to)
    }

    fn snapshot_arrive(
        &mut self,
        from: usize,
        from_epoch: u64,
        to: usize,
        meta: SnapshotMeta,
        bytes: Vec<u8>,
    ) -> Result<(), Violation> {
        let delivered = !self.blocked[from][to] && self.nodes[to].core.is_some();
        let delay = self.rng.between(1, self.config.delay_units_max);
        let report = Event::SnapshotReport {
            leader: from,
            epoch: from_epoch,
            to: (to + 1) as NodeId,
            ok: delivered,
        };
        self.schedule(delay, report);
        if !delivered {
            return Ok(());
        }
        self.log(|| format!("snapshot {} arrives at node {}", meta.last_index, to + 1));
        let node = &mut self.nodes[to];
        node.received.retain(|(m, _)| *m != meta);
        node.received.push((meta.clone(), bytes.clone()));
        if let Some(core) = node.core.as_mut() {
            core.handle_snapshot_arriving(meta.clone());
        }
        // Decoded off the node's loop, as the node does: messages keep coming meanwhile.
        let decoded = Event::SnapshotDecoded {
            node: to,
            epoch: node.epoch,
            meta,
            bytes,
        };
        let delay = self.rng.between(1, self.config.decode_units_max);
        self.schedule(delay, decoded);
        self.drive(to)
    }

    fn snapshot_decoded(
        &mut self,
        index: usize,
        epoch: u64,
        meta: SnapshotMeta,
        bytes: Vec<u8>,
    ) -> Result<(), Violation> {
        if self.nodes[index].epoch != epoch {
            return Ok(());
        }
        let sm = StateMachine::restore(&bytes).map_err(|e| {
            self.violation(format!("snapshot {} does not decode: {e}", meta.last_index))
        })?;
        self.log(|| format!("snapshot {} decoded at node {}", meta.last_index, index + 1));
        if let Some(core) = self.nodes[index].core.as_mut() {
            core.handle_snapshot_received(meta, sm);
        }
        self.drive(index)
    }

    fn wal_synced(&mut self, index: usize, epoch: u64) -> Result<(), Violation> {
        if self.nodes[index].epoch != epoch {
            return Ok(());
        }
        self.finish_sync(index)?;
        self.start_sync(index);
        self.drive(index)
    }

    fn snapshot_written(
        &mut self,
        index: usize,
        epoch: u64,
        meta: SnapshotMeta,
        bytes: Vec<u8>,
    ) -> Result<(), Violation> {
        if self.nodes[index].epoch != epoch {
            return Ok(());
        }
        self.nodes[index].disk.snapshot_written(meta.clone(), bytes);
        if let Some(core) = self.nodes[index].core.as_mut() {
            drop(core.handle_snapshot_taken(meta));
        }
        self.drive(index)
    }
}
