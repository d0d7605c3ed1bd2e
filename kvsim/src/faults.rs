//! Faults: crashes and restarts (through the real recovery path), partitions, pauses, and
//! healing them all.

use kvcore::NodeCore;
use kvraft::Role;

use crate::event::Event;
use crate::{Sim, Violation, TICK_UNITS};

impl Sim {
    /// Starts node `index` from its disk, as the server does after a restart.
    pub(crate) fn start_node(&mut self, index: usize) -> Result<(), Violation> {
        let seed = self.rng.next_u64();
        let raft = self.raft_config(self.nodes[index].id);
        let config = self.core_config();
        let disk = self.nodes[index]
            .disk
            .read_back()
            .map_err(|what| self.violation(format!("node {}: {what}", index + 1)))?;
        let core = NodeCore::recover(config, raft, self.membership.clone(), disk, seed)
            .map_err(|e| self.violation(format!("node {} cannot restart: {e}", index + 1)))?;
        self.nodes[index].core = Some(core);
        self.drive(index)
    }

    pub(crate) fn maybe_fault(&mut self) -> Result<(), Violation> {
        if self.rng.chance(self.config.crash_per_million) {
            let index = self.pick_target();
            self.crash(index)?;
        }
        if self.rng.chance(self.config.restart_per_million) {
            let down: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].core.is_none())
                .collect();
            if !down.is_empty() {
                let index = down[self.rng.below(down.len() as u64) as usize];
                self.restart(index)?;
            }
        }
        if self.rng.chance(self.config.partition_per_million) {
            self.change_partition();
        }
        if self.rng.chance(self.config.pause_per_million) {
            let index = self.pick_target();
            self.pause(index);
        }
        if self.rng.chance(self.config.flap_per_million) {
            self.flap();
        }
        if self.rng.chance(self.config.conf_change_per_million) {
            self.conf_change(false)?;
        }
        Ok(())
    }

    fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.core.as_ref().is_some_and(|c| c.role() == Role::Leader))
    }

    fn isolate(&mut self, lonely: usize) {
        for row in self.blocked.iter_mut() {
            row.fill(false);
        }
        for other in 0..self.nodes.len() {
            self.blocked[lonely][other] = other != lonely;
            self.blocked[other][lonely] = other != lonely;
        }
    }

    /// A leader flap, first half: isolate the leader for one to three election timeouts.
    fn flap(&mut self) {
        let Some(leader) = self.leader() else { return };
        self.stats.partitions += 1;
        self.log(|| format!("flap: isolate leader {}", leader + 1));
        self.isolate(leader);
        let ticks = self.rng.between(12, 25);
        let event = Event::FlapMove {
            isolated: leader,
            then_isolate_new: true,
        };
        self.schedule(ticks * TICK_UNITS, event);
    }

    /// A leader flap, second and third steps: the old leader rejoins for a few ticks (long
    /// enough for the new leader to truncate its log), then the new leader is isolated.
    pub(crate) fn flap_move(&mut self, isolated: usize, then_isolate_new: bool) {
        if !then_isolate_new {
            if let Some(leader) = self.leader().filter(|&l| l != isolated) {
                self.log(|| format!("flap: isolate new leader {}", leader + 1));
                self.isolate(leader);
            }
            return;
        }
        for row in self.blocked.iter_mut() {
            row.fill(false);
        }
        let ticks = self.rng.between(1, 4);
        let event = Event::FlapMove {
            isolated,
            then_isolate_new: false,
        };
        self.schedule(ticks * TICK_UNITS, event);
    }

    /// A node to strike: the leader with probability `target_leader_per_million`, else any.
    fn pick_target(&mut self) -> usize {
        if self.rng.chance(self.config.target_leader_per_million) {
            let leader = self
                .nodes
                .iter()
                .position(|n| n.core.as_ref().is_some_and(|c| c.role() == Role::Leader));
            if let Some(leader) = leader {
                return leader;
            }
        }
        self.rng.below(self.nodes.len() as u64) as usize
    }

    pub(crate) fn crash(&mut self, index: usize) -> Result<(), Violation> {
        if self.nodes[index].core.is_none() {
            return Ok(());
        }
        self.stats.crashes += 1;
        self.log(|| format!("crash node {}", index + 1));
        let torn = self.config.torn_per_million;
        let node = &mut self.nodes[index];
        node.disk
            .crash(&mut self.rng, torn)
            .map_err(|what| Violation {
                seed: self.config.seed,
                time: self.now,
                what: format!("node {}: {what}", index + 1),
            })?;
        node.core = None;
        node.epoch += 1;
        node.received.clear();
        node.paused = false;
        // Snapshot streams to the dead process fail: their senders hear of it (the real
        // transport reports a broken stream), or their followers stay in Snapshot state forever.
        for event in std::mem::take(&mut node.deferred) {
            if let Event::SnapshotArrive {
                from,
                from_epoch,
                to,
                ..
            } = event
            {
                let report = Event::SnapshotReport {
                    leader: from,
                    epoch: from_epoch,
                    to: (to + 1) as u64,
                    ok: false,
                };
                self.schedule(1, report);
            }
        }
        Ok(())
    }

    pub(crate) fn restart(&mut self, index: usize) -> Result<(), Violation> {
        self.log(|| format!("restart node {}", index + 1));
        self.start_node(index)
    }

    /// SIGSTOP: the node's process (WAL thread included) stops; everything addressed to it
    /// waits. It resumes with a backlog of stale messages.
    fn pause(&mut self, index: usize) {
        let node = &self.nodes[index];
        if node.core.is_none() || node.paused {
            return;
        }
        self.stats.pauses += 1;
        self.log(|| format!("pause node {}", index + 1));
        self.nodes[index].paused = true;
        let ticks = self.rng.between(1, self.config.pause_ticks_max);
        let epoch = self.nodes[index].epoch;
        self.schedule(ticks * TICK_UNITS, Event::Resume { node: index, epoch });
    }

    pub(crate) fn resume(&mut self, index: usize) -> Result<(), Violation> {
        self.log(|| format!("resume node {}", index + 1));
        self.nodes[index].paused = false;
        for event in std::mem::take(&mut self.nodes[index].deferred) {
            self.handle_event(event)?;
        }
        Ok(())
    }

    fn change_partition(&mut self) {
        let n = self.nodes.len();
        self.stats.partitions += 1;
        for row in self.blocked.iter_mut() {
            row.fill(false);
        }
        match self.rng.below(4) {
            0 => {} // heal
            1 => {
                // Symmetric split into two sides.
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500_000)).collect();
                for a in 0..n {
                    for b in 0..n {
                        self.blocked[a][b] = side[a] != side[b];
                    }
                }
            }
            2 => {
                // One node isolated (often the leader).
                let lonely = self.pick_target();
                for other in 0..n {
                    self.blocked[lonely][other] = other != lonely;
                    self.blocked[other][lonely] = other != lonely;
                }
            }
            _ => {
                // One-way drops on random links.
                for a in 0..n {
                    for b in 0..n {
                        self.blocked[a][b] = a != b && self.rng.chance(300_000);
                    }
                }
            }
        }
        let blocked = self.blocked.clone();
        self.log(|| format!("partition {blocked:?}"));
    }

    /// The faults stop: links heal, loss, duplication, reordering and long delays stop, paused
    /// nodes resume and crashed nodes restart.
    pub(crate) fn heal_all(&mut self) -> Result<(), Violation> {
        self.log(|| "heal all".to_string());
        for row in self.blocked.iter_mut() {
            row.fill(false);
        }
        self.loss_per_million = 0;
        self.duplicate_per_million = 0;
        self.reorder_per_million = 0;
        self.long_delay_per_million = 0;
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused {
                self.resume(index)?;
            }
            if self.nodes[index].core.is_none() {
                self.start_node(index)?;
            }
        }
        Ok(())
    }
}
