//! The deterministic simulator: N Raft cores, a faulty network, faulty disks and clients, all
//! driven by one u64 seed. Safety invariants are checked after every event; after the faults
//! stop, liveness is checked. A failure names its seed; the same seed replays event for event.
//!
//! Time is counted in units; a node ticks every `TICK_UNITS` units (with a per-node phase).
//! Nothing here reads a clock or the OS: the only source of variation is the seed.

mod check;
mod model;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use bytes::Bytes;

use check::Checker;
pub use check::Violation;
use kvraft::log::entries_after_snapshot;
use kvraft::rng::Rng;
use kvraft::{
    Config, Entry, HardState, Index, Membership, Message, MessageBody, NodeId, RawNode, Ready,
    Restored, Role, SnapshotMeta, Term,
};
pub use model::StateMachine;

/// Time units per Raft tick.
pub const TICK_UNITS: u64 = 10;

/// The knobs of one simulated run, all derived from the seed by `SimConfig::from_seed`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Ticks during which faults strike.
    pub fault_ticks: u64,
    /// Ticks allowed after the faults stop for the cluster to converge.
    pub liveness_ticks_max: u64,
    pub loss_per_million: u64,
    pub duplicate_per_million: u64,
    /// Messages that may overtake earlier ones on their link; the rest keep FIFO order (as on
    /// the real transport's one QUIC stream per peer).
    pub reorder_per_million: u64,
    pub delay_units_max: u64,
    pub persist_units_max: u64,
    /// Per time unit: chance of a crash, a restart of a crashed node, a partition change.
    pub crash_per_million: u64,
    pub restart_per_million: u64,
    pub partition_per_million: u64,
    /// Per time unit: chance a client issues an operation.
    pub client_per_million: u64,
    /// A node snapshots and compacts once it applied this many entries past its snapshot.
    pub snapshot_entries: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Entry bytes per append message: small values split appends, so followers acknowledge a
    /// prefix of a new leader's log before its no-op (the Figure 8 window).
    pub append_batch_bytes_max: u64,
    /// Share of crashes and isolations aimed at the current leader.
    pub target_leader_per_million: u64,
    /// Chance that a node that just won an election crashes a few units later (while its
    /// first appends are in flight).
    pub crash_new_leader_per_million: u64,
    /// Chance that a node is killed while a write of its term or vote is in flight, and
    /// restarted shortly after: the window in which an unsynced vote is lost.
    pub crash_during_vote_per_million: u64,
}

impl SimConfig {
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = Rng::new(seed ^ 0x5EED_0FC0_FFEE);
        let mut config = SimConfig {
            seed,
            nodes: if rng.chance(300_000) { 5 } else { 3 },
            fault_ticks: rng.between(300, 1000),
            liveness_ticks_max: 300,
            loss_per_million: rng.between(0, 150_000),
            duplicate_per_million: rng.between(0, 50_000),
            reorder_per_million: rng.between(0, 600_000),
            delay_units_max: rng.between(2, 2 * TICK_UNITS),
            persist_units_max: rng.between(1, TICK_UNITS),
            crash_per_million: rng.between(0, 8_000),
            restart_per_million: rng.between(2_000, 30_000),
            partition_per_million: rng.between(0, 8_000),
            client_per_million: rng.between(50_000, 400_000),
            snapshot_entries: rng.between(8, 64),
            pre_vote: rng.chance(800_000),
            check_quorum: rng.chance(800_000),
            append_batch_bytes_max: rng.between(30, 400),
            target_leader_per_million: rng.between(0, 800_000),
            crash_new_leader_per_million: rng.between(0, 300_000),
            crash_during_vote_per_million: rng.between(0, 100_000),
        };
        // One seed in three is an election storm: leaders die soon after winning, messages
        // carry one entry each and many are lost. This is the weather in which old-term entries
        // get replicated to a majority by a short-lived leader (Raft paper, Figure 8).
        if rng.chance(333_333) {
            config.nodes = 5;
            config.append_batch_bytes_max = rng.between(30, 60);
            config.crash_new_leader_per_million = rng.between(500_000, 1_000_000);
            config.loss_per_million = rng.between(50_000, 250_000);
            config.reorder_per_million = 1_000_000;
            config.restart_per_million = rng.between(20_000, 60_000);
            config.client_per_million = rng.between(200_000, 600_000);
            config.crash_during_vote_per_million = rng.between(100_000, 500_000);
        }
        config
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        message: Message,
        snapshot: Option<(SnapshotMeta, StateMachine)>,
    },
    PersistDone {
        node: usize,
        epoch: u64,
    },
    SnapshotReport {
        leader: usize,
        to: NodeId,
        success: bool,
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
}

/// What survives a crash: what was reported durable, plus whatever part of the in-flight writes
/// the crash let through. It behaves like the server's files: a snapshot (own or received) is
/// durable at once (file written, fsynced, renamed), while the WAL's reset for a received
/// snapshot is a write in the group-commit queue like any other.
#[derive(Clone, Debug, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: Option<(SnapshotMeta, StateMachine)>,
    /// The WAL's entries, contiguous among themselves. They may overlap the snapshot and, after
    /// a crash between a snapshot install and the WAL reset, need not follow it.
    entries: Vec<Entry>,
}

impl Disk {
    fn write(&mut self, write: &PendingWrite) {
        if write.reset_wal {
            // WalWriter::install_snapshot: everything above the snapshot truncated, everything
            // at or below compacted.
            self.entries.clear();
        }
        if let Some(first) = write.entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend(write.entries.iter().cloned());
        }
        if let Some(hard_state) = write.hard_state {
            self.hard_state = hard_state;
        }
    }

    fn compact(&mut self, index: Index) {
        self.entries.retain(|e| e.index > index);
    }

    fn term(&self, index: Index) -> Option<Term> {
        if let Some((meta, _)) = &self.snapshot {
            if index == meta.last_index {
                return Some(meta.last_term);
            }
        }
        let first = self.entries.first()?.index;
        let offset = index.checked_sub(first)?;
        self.entries.get(offset as usize).map(|e| e.term)
    }

    fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |(m, _)| m.last_index)
    }
}

#[derive(Debug)]
struct PendingWrite {
    /// The WAL drops its log for a snapshot received from the leader.
    reset_wal: bool,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    persisted_messages: Vec<Message>,
    mark: (Index, Term),
}

struct Node {
    id: NodeId,
    raw: Option<RawNode>,
    disk: Disk,
    pending: VecDeque<PendingWrite>,
    /// Writes in the group commit under way (a prefix of `pending`); 0 when idle.
    persist_in_flight: usize,
    /// Incremented at every crash, so events scheduled before it are ignored.
    epoch: u64,
    sm: StateMachine,
    /// The snapshot that arrived with the last InstallSnapshot message.
    received_snapshot: Option<(SnapshotMeta, StateMachine)>,
    tick_phase: u64,
}

/// A client operation in flight.
#[derive(Clone, Debug)]
enum PendingOp {
    Write {
        node: usize,
        key: u8,
        value: u64,
        index: Index,
        term: Term,
        invoked: u64,
    },
    Read {
        node: usize,
        key: u8,
        context: u64,
        invoked: u64,
        index: Option<Index>,
    },
}

/// Counts of what happened, for the soak's report.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub events: u64,
    pub messages_delivered: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub writes_acked: u64,
    pub reads_ok: u64,
    pub elections: u64,
    pub snapshots_sent: u64,
    pub final_commit: Index,
}

pub struct Sim {
    config: SimConfig,
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    membership: Membership,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    sequence: u64,
    /// Directed links that drop everything: blocked[from][to].
    blocked: Vec<Vec<bool>>,
    loss_per_million: u64,
    duplicate_per_million: u64,
    reorder_per_million: u64,
    /// The latest delivery time scheduled on each directed link (for FIFO delivery).
    link_clock: Vec<Vec<u64>>,
    ops: Vec<PendingOp>,
    next_value: u64,
    next_context: u64,
    checker: Checker,
    pub stats: SimStats,
    /// Every event, for replay diffs (kept only when tracing).
    pub trace: Option<Vec<String>>,
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let ids: Vec<NodeId> = (1..=config.nodes as u64).collect();
        let membership = Membership::new(ids.clone());
        let mut rng = Rng::new(config.seed);
        let nodes = ids
            .iter()
            .map(|&id| Node {
                id,
                raw: None,
                disk: Disk::default(),
                pending: VecDeque::new(),
                persist_in_flight: 0,
                epoch: 0,
                sm: StateMachine::default(),
                received_snapshot: None,
                tick_phase: rng.below(TICK_UNITS),
            })
            .collect();
        let mut sim = Sim {
            loss_per_million: config.loss_per_million,
            duplicate_per_million: config.duplicate_per_million,
            reorder_per_million: config.reorder_per_million,
            link_clock: vec![vec![0; config.nodes]; config.nodes],
            blocked: vec![vec![false; config.nodes]; config.nodes],
            checker: Checker::new(config.nodes),
            config,
            rng,
            now: 0,
            nodes,
            membership,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            sequence: 0,
            ops: Vec::new(),
            next_value: 1,
            next_context: 1,
            stats: SimStats::default(),
            trace: None,
        };
        for index in 0..sim.nodes.len() {
            sim.start_node(index);
        }
        sim
    }

    fn raft_config(&self, id: NodeId) -> Config {
        let mut config = Config::new(id);
        config.pre_vote = self.config.pre_vote;
        config.check_quorum = self.config.check_quorum;
        config.election_timeout_ticks = 10;
        config.heartbeat_interval_ticks = 2;
        config.append_batch_bytes_max = self.config.append_batch_bytes_max;
        config.inflight_messages_max = 4;
        config.inflight_bytes_max = 1024;
        config
    }

    fn start_node(&mut self, index: usize) {
        let seed = self.rng.next_u64();
        let config = self.raft_config(self.nodes[index].id);
        let node = &mut self.nodes[index];
        let snapshot = node.disk.snapshot.as_ref().map(|(m, _)| m.clone());
        let (snapshot_index, snapshot_term) = snapshot
            .as_ref()
            .map_or((0, 0), |m| (m.last_index, m.last_term));
        // The server's recovery rule (raft::log::entries_after_snapshot).
        let entries = match entries_after_snapshot(
            snapshot_index,
            snapshot_term,
            node.disk.entries.clone(),
        ) {
            Ok((entries, _)) => {
                // The server then makes its WAL continue right after the snapshot (compact, or
                // reset when stale entries were discarded) before appending anything.
                node.disk.entries = entries.clone();
                entries
            }
            Err(first) => panic!(
                "seed {}: node {} cannot restart: WAL resumes at {first} after snapshot \
                 {snapshot_index}",
                self.config.seed, node.id
            ),
        };
        let restored = Restored {
            hard_state: node.disk.hard_state,
            snapshot,
            entries,
        };
        node.sm = node
            .disk
            .snapshot
            .as_ref()
            .map(|(_, sm)| sm.clone())
            .unwrap_or_default();
        let raw = RawNode::new(config, self.membership.clone(), restored, seed);
        match raw {
            Ok(raw) => self.nodes[index].raw = Some(raw),
            Err(error) => panic!("seed {}: cannot start node: {error}", self.config.seed),
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{:>7} {}", self.now, line()));
        }
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse((self.now + delay, self.sequence)));
        self.events.insert(self.sequence, event);
    }

    /// Runs the whole scenario: faults, then healing and the liveness check.
    fn fault_end(&self) -> u64 {
        self.config.fault_ticks * TICK_UNITS
    }

    pub fn run(&mut self) -> Result<SimStats, Violation> {
        let fault_end = self.fault_end();
        while self.now < fault_end {
            self.step_time(true)?;
        }
        self.heal_all();
        // Converging takes longer when more log is left to replicate: the bound grows by a tick
        // per entry of backlog (appends in the slowest configurations carry one entry each).
        let backlog = self.backlog_entries();
        let liveness_ticks = self.config.liveness_ticks_max + backlog;
        let deadline = self.now + liveness_ticks * TICK_UNITS;
        while self.now < deadline {
            self.step_time(false)?;
            if self.now.is_multiple_of(TICK_UNITS) && self.converged() {
                self.checker
                    .check_final(&self.nodes_view())
                    .map_err(|what| self.violation(what))?;
                self.stats.final_commit = self.max_commit();
                return Ok(self.stats.clone());
            }
        }
        Err(self.violation(format!(
            "liveness: no convergence within {} ticks after the faults stopped; {}",
            liveness_ticks,
            self.describe_nodes()
        )))
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.config.seed,
            time: self.now,
            what,
        }
    }

    fn step_time(&mut self, faults: bool) -> Result<(), Violation> {
        while let Some(&Reverse((time, sequence))) = self.queue.peek() {
            if time > self.now {
                break;
            }
            self.queue.pop();
            if let Some(event) = self.events.remove(&sequence) {
                self.handle_event(event)?;
            }
        }
        for index in 0..self.nodes.len() {
            if self.now % TICK_UNITS == self.nodes[index].tick_phase {
                if let Some(raw) = self.nodes[index].raw.as_mut() {
                    raw.tick();
                    self.stats.events += 1;
                    self.process_ready(index)?;
                }
            }
        }
        // After the faults stop the clients stop too, so that convergence is observable.
        if faults {
            self.maybe_fault()?;
            if self.rng.chance(self.config.client_per_million) {
                self.client_op()?;
            }
        }
        self.now += 1;
        Ok(())
    }

    fn handle_event(&mut self, event: Event) -> Result<(), Violation> {
        self.stats.events += 1;
        match event {
            Event::Deliver { message, snapshot } => self.deliver(message, snapshot),
            Event::PersistDone { node, epoch } => self.persist_done(node, epoch),
            Event::SnapshotReport {
                leader,
                to,
                success,
            } => {
                if let Some(raw) = self.nodes[leader].raw.as_mut() {
                    raw.report_snapshot(to, success);
                }
                self.process_ready(leader)
            }
            Event::Crash {
                node,
                epoch,
                restart_after,
            } => {
                if self.nodes[node].epoch == epoch && self.now < self.fault_end() {
                    self.crash(node);
                    if let Some(delay) = restart_after {
                        self.schedule(delay, Event::Restart { node });
                    }
                }
                Ok(())
            }
            Event::Restart { node } => {
                if self.nodes[node].raw.is_none() {
                    self.restart(node)?;
                }
                Ok(())
            }
        }
    }

    fn deliver(
        &mut self,
        message: Message,
        snapshot: Option<(SnapshotMeta, StateMachine)>,
    ) -> Result<(), Violation> {
        let to = (message.to - 1) as usize;
        let from = (message.from - 1) as usize;
        let is_snapshot = snapshot.is_some();
        let lost = self.blocked[from][to] || self.nodes[to].raw.is_none();
        if is_snapshot {
            let delay = self.rng.between(1, self.config.delay_units_max);
            let report = Event::SnapshotReport {
                leader: from,
                to: message.to,
                success: !lost,
            };
            self.schedule(delay, report);
        }
        if lost {
            return Ok(());
        }
        self.stats.messages_delivered += 1;
        self.log(|| {
            format!(
                "deliver {}->{} {:?}",
                message.from, message.to, message.body
            )
        });
        let node = &mut self.nodes[to];
        if snapshot.is_some() {
            node.received_snapshot = snapshot;
        }
        if let Some(raw) = node.raw.as_mut() {
            if let Err(error) = raw.step(message) {
                return Err(self.violation(format!("step refused a well-formed message: {error}")));
            }
        }
        self.process_ready(to)
    }

    fn send(&mut self, message: Message, from: usize) {
        let mut snapshot = None;
        if let MessageBody::InstallSnapshot { meta } = &message.body {
            let disk = &self.nodes[from].disk.snapshot;
            match disk {
                Some((disk_meta, sm)) if disk_meta == meta => {
                    snapshot = Some((meta.clone(), sm.clone()));
                }
                // The core asked for a snapshot it does not have on disk: a core bug.
                _ => panic!(
                    "seed {}: InstallSnapshot without a matching snapshot",
                    self.config.seed
                ),
            }
            self.stats.snapshots_sent += 1;
        }
        // A snapshot stream is not subject to random loss (it rides a reliable stream); its
        // delivery still fails when the link is cut or the receiver is down.
        if snapshot.is_none() && self.rng.chance(self.loss_per_million) {
            return;
        }
        let copies = if self.rng.chance(self.duplicate_per_million) {
            2
        } else {
            1
        };
        let to = (message.to - 1) as usize;
        for _ in 0..copies {
            let mut at = self.now + self.rng.between(1, self.config.delay_units_max);
            if !self.rng.chance(self.reorder_per_million) {
                at = at.max(self.link_clock[from][to]);
                self.link_clock[from][to] = at;
            }
            let event = Event::Deliver {
                message: message.clone(),
                snapshot: snapshot.clone(),
            };
            self.schedule(at - self.now, event);
        }
    }

    /// A group commit finished: every write queued when it started is durable now.
    fn persist_done(&mut self, index: usize, epoch: u64) -> Result<(), Violation> {
        let node = &mut self.nodes[index];
        if node.epoch != epoch {
            return Ok(());
        }
        let batch: Vec<PendingWrite> = node.pending.drain(..node.persist_in_flight).collect();
        node.persist_in_flight = 0;
        let mut mark = None;
        for write in &batch {
            node.disk.write(write);
            mark = Some(write.mark);
        }
        if let (Some(raw), Some(mark)) = (node.raw.as_mut(), mark) {
            raw.on_persisted(mark);
        }
        for write in batch {
            for message in write.persisted_messages {
                self.send(message, index);
            }
        }
        self.schedule_persist(index);
        self.checker
            .check_durable(&self.nodes_view(), self.membership.quorum())
            .map_err(|what| self.violation(what))?;
        self.process_ready(index)
    }

    fn schedule_persist(&mut self, index: usize) {
        let node = &self.nodes[index];
        if node.persist_in_flight > 0 || node.pending.is_empty() {
            return;
        }
        let epoch = node.epoch;
        self.nodes[index].persist_in_flight = self.nodes[index].pending.len();
        let delay = self.rng.between(1, self.config.persist_units_max);
        self.schedule(delay, Event::PersistDone { node: index, epoch });
    }

    fn process_ready(&mut self, index: usize) -> Result<(), Violation> {
        loop {
            let Some(raw) = self.nodes[index].raw.as_mut() else {
                return Ok(());
            };
            if !raw.has_ready() {
                return Ok(());
            }
            let ready = raw.ready();
            self.handle_ready(index, ready)?;
        }
    }

    fn handle_ready(&mut self, index: usize, mut ready: Ready) -> Result<(), Violation> {
        if let Some(soft) = ready.soft_state {
            self.log(|| format!("node {} soft state {:?}", index + 1, soft));
            if soft.role == Role::Leader {
                self.stats.elections += 1;
                self.check_new_leader(index)?;
                if self.rng.chance(self.config.crash_new_leader_per_million) {
                    let delay = self.rng.between(1, 3 * TICK_UNITS);
                    let epoch = self.nodes[index].epoch;
                    let crash = Event::Crash {
                        node: index,
                        epoch,
                        restart_after: None,
                    };
                    self.schedule(delay, crash);
                }
            }
        }
        for message in std::mem::take(&mut ready.messages) {
            self.send(message, index);
        }
        self.checker
            .check_appended(self.nodes[index].raw.as_ref(), &ready.entries)
            .map_err(|what| self.violation(what))?;
        let reset_wal = ready.snapshot.is_some();
        if let Some(meta) = &ready.snapshot {
            // Installed like the server does: the file is durable at once, the WAL reset
            // queues behind the writes before it.
            let received = self.take_received_snapshot(index, meta)?;
            self.nodes[index].sm = received.1.clone();
            self.nodes[index].disk.snapshot = Some(received);
        }
        if ready.must_persist() || !ready.persisted_messages.is_empty() {
            let write = PendingWrite {
                reset_wal,
                entries: std::mem::take(&mut ready.entries),
                hard_state: ready.hard_state,
                persisted_messages: std::mem::take(&mut ready.persisted_messages),
                mark: ready.persist_mark,
            };
            let vote_changes = write.hard_state.is_some_and(|h| {
                let disk = self.nodes[index].disk.hard_state;
                h.term != disk.term || h.vote != disk.vote
            });
            self.nodes[index].pending.push_back(write);
            self.schedule_persist(index);
            if vote_changes && self.rng.chance(self.config.crash_during_vote_per_million) {
                let delay = self.rng.between(0, self.config.persist_units_max);
                let restart_after = Some(self.rng.between(1, 2 * TICK_UNITS));
                let epoch = self.nodes[index].epoch;
                self.schedule(
                    delay,
                    Event::Crash {
                        node: index,
                        epoch,
                        restart_after,
                    },
                );
            }
        }
        if let Some(hard_state) = ready.hard_state {
            let raw = self.nodes[index].raw.as_ref();
            self.checker
                .record_commit(index, hard_state.commit, raw)
                .map_err(|w| self.violation(w))?;
        }
        self.apply(index, &ready.committed_entries)?;
        self.serve_reads(index, &ready)?;
        self.maybe_compact(index);
        self.checker
            .check_durable(&self.nodes_view(), self.membership.quorum())
            .map_err(|what| self.violation(what))
    }

    fn take_received_snapshot(
        &mut self,
        index: usize,
        meta: &SnapshotMeta,
    ) -> Result<(SnapshotMeta, StateMachine), Violation> {
        match self.nodes[index].received_snapshot.take() {
            Some((received, sm)) if &received == meta => Ok((received, sm)),
            _ => Err(self.violation("core installs a snapshot that did not arrive".to_string())),
        }
    }

    fn check_new_leader(&mut self, index: usize) -> Result<(), Violation> {
        let Some(raw) = self.nodes[index].raw.as_ref() else {
            return Ok(());
        };
        let status = raw.status();
        self.checker
            .check_leader(status.id, status.term, raw)
            .map_err(|w| self.violation(w))
    }

    fn apply(&mut self, index: usize, entries: &[Entry]) -> Result<(), Violation> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        for entry in entries {
            let expected = self.nodes[index].sm.applied_index + 1;
            if entry.index != expected {
                let what = format!(
                    "node {} applies {} after {}",
                    index + 1,
                    entry.index,
                    expected - 1
                );
                return Err(self.violation(what));
            }
            self.checker
                .check_apply(entry)
                .map_err(|w| self.violation(w))?;
            self.nodes[index].sm.apply(entry);
            self.complete_writes(index, entry);
        }
        if let Some(raw) = self.nodes[index].raw.as_mut() {
            raw.on_applied(last);
        }
        Ok(())
    }

    fn complete_writes(&mut self, node: usize, entry: &Entry) {
        let now = self.now;
        let mut acked = Vec::new();
        self.ops.retain(|op| match op {
            PendingOp::Write {
                node: n,
                index,
                term,
                key,
                value,
                invoked,
            } if *n == node => {
                if *index != entry.index {
                    return true;
                }
                if *term == entry.term {
                    acked.push((*key, *value, *index, *invoked, now));
                }
                false
            }
            _ => true,
        });
        for (key, value, index, invoked, completed) in acked {
            self.stats.writes_acked += 1;
            self.checker
                .record_write_ack(key, value, index, invoked, completed);
        }
    }

    fn serve_reads(&mut self, node: usize, ready: &Ready) -> Result<(), Violation> {
        for state in &ready.read_states {
            for op in self.ops.iter_mut() {
                if let PendingOp::Read {
                    node: n,
                    context,
                    index,
                    ..
                } = op
                {
                    if *n == node && *context == state.context {
                        *index = Some(state.index);
                    }
                }
            }
        }
        let dropped = &ready.dropped_reads;
        self.ops.retain(|op| {
            !matches!(op, PendingOp::Read { node: n, context, .. }
                if *n == node && dropped.contains(context))
        });
        let applied = self.nodes[node].sm.applied_index;
        let mut served = Vec::new();
        self.ops.retain(|op| match op {
            PendingOp::Read {
                node: n,
                key,
                index: Some(i),
                invoked,
                ..
            } if *n == node && *i <= applied => {
                served.push((*key, *invoked));
                false
            }
            _ => true,
        });
        for (key, invoked) in served {
            self.stats.reads_ok += 1;
            let value = self.nodes[node].sm.get(key);
            self.checker
                .check_read(key, value, invoked, self.now)
                .map_err(|w| self.violation(w))?;
        }
        Ok(())
    }

    fn maybe_compact(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let Some(raw) = node.raw.as_mut() else { return };
        let applied = node.sm.applied_index;
        if applied < node.disk.snapshot_index() + self.config.snapshot_entries {
            return;
        }
        let Some(last_term) = raw.log_term(applied) else {
            return;
        };
        let meta = SnapshotMeta {
            last_index: applied,
            last_term,
            membership: raw.membership().clone(),
        };
        // Taking a snapshot is synchronous and durable here (the real node writes, fsyncs and
        // renames the file before compacting), so it goes straight to disk.
        node.disk.snapshot = Some((meta.clone(), node.sm.clone()));
        node.disk.compact(applied);
        if node.disk.hard_state.commit < applied {
            node.disk.hard_state.commit = applied;
        }
        raw.compact(meta);
    }

    // ---------------------------------------------------------------- faults and clients

    fn maybe_fault(&mut self) -> Result<(), Violation> {
        if self.rng.chance(self.config.crash_per_million) {
            let index = self.pick_target();
            self.crash(index);
        }
        if self.rng.chance(self.config.restart_per_million) {
            let down: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].raw.is_none())
                .collect();
            if !down.is_empty() {
                let index = down[self.rng.below(down.len() as u64) as usize];
                self.restart(index)?;
            }
        }
        if self.rng.chance(self.config.partition_per_million) {
            self.change_partition();
        }
        Ok(())
    }

    /// A node to strike: the leader with probability `target_leader_per_million`, else any.
    fn pick_target(&mut self) -> usize {
        if self.rng.chance(self.config.target_leader_per_million) {
            let leader = self.nodes.iter().position(|n| {
                n.raw
                    .as_ref()
                    .is_some_and(|r| r.status().role == Role::Leader)
            });
            if let Some(leader) = leader {
                return leader;
            }
        }
        self.rng.below(self.nodes.len() as u64) as usize
    }

    fn crash(&mut self, index: usize) {
        if self.nodes[index].raw.is_none() {
            return;
        }
        self.stats.crashes += 1;
        self.log(|| format!("crash node {}", index + 1));
        // Writes in flight may or may not have reached the platter: keep a random prefix.
        let keep = self.rng.below(self.nodes[index].pending.len() as u64 + 1) as usize;
        let node = &mut self.nodes[index];
        let pending: Vec<PendingWrite> = node.pending.drain(..).collect();
        for write in pending.iter().take(keep) {
            node.disk.write(write);
        }
        node.raw = None;
        node.epoch += 1;
        node.persist_in_flight = 0;
        node.received_snapshot = None;
        node.sm = StateMachine::default();
        // The clients of this node see no answer: their outcome is unknown.
        self.ops.retain(|op| match op {
            PendingOp::Write { node, .. } | PendingOp::Read { node, .. } => *node != index,
        });
    }

    fn restart(&mut self, index: usize) -> Result<(), Violation> {
        self.log(|| format!("restart node {}", index + 1));
        self.start_node(index);
        self.process_ready(index)
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

    fn heal_all(&mut self) {
        self.log(|| "heal all".to_string());
        for row in self.blocked.iter_mut() {
            row.fill(false);
        }
        // Loss, duplication and reordering are faults too: they stop with the others.
        self.loss_per_million = 0;
        self.duplicate_per_million = 0;
        self.reorder_per_million = 0;
        for index in 0..self.nodes.len() {
            if self.nodes[index].raw.is_none() {
                self.start_node(index);
            }
        }
    }

    fn client_op(&mut self) -> Result<(), Violation> {
        // Clients mostly reach a node that believes it leads (real clients follow leader
        // hints); the rest land anywhere, stale leaders included.
        let index = if self.rng.chance(700_000) {
            self.nodes
                .iter()
                .position(|n| {
                    n.raw
                        .as_ref()
                        .is_some_and(|r| r.status().role == Role::Leader)
                })
                .unwrap_or(0)
        } else {
            self.rng.below(self.nodes.len() as u64) as usize
        };
        let key = self.rng.below(3) as u8;
        let is_write = self.rng.chance(600_000);
        let now = self.now;
        let Some(raw) = self.nodes[index].raw.as_mut() else {
            return Ok(());
        };
        if is_write {
            let value = self.next_value;
            self.next_value += 1;
            if let Ok((log_index, term)) = raw.propose(model::encode(key, value)) {
                let op = PendingOp::Write {
                    node: index,
                    key,
                    value,
                    index: log_index,
                    term,
                    invoked: now,
                };
                self.ops.push(op);
            }
        } else {
            let context = self.next_context;
            self.next_context += 1;
            if raw.read_index(context).is_ok() {
                let op = PendingOp::Read {
                    node: index,
                    key,
                    context,
                    invoked: now,
                    index: None,
                };
                self.ops.push(op);
            }
        }
        self.stats.events += 1;
        self.process_ready(index)
    }

    // ---------------------------------------------------------------- convergence

    fn converged(&self) -> bool {
        let leaders: Vec<&RawNode> = self
            .nodes
            .iter()
            .filter_map(|n| n.raw.as_ref())
            .filter(|r| r.status().role == Role::Leader)
            .collect();
        let [leader] = leaders.as_slice() else {
            return false;
        };
        let status = leader.status();
        if status.last_term != status.term || status.commit_index != status.last_index {
            return false;
        }
        self.nodes.iter().all(|n| {
            n.raw
                .as_ref()
                .is_some_and(|r| r.status().leader == status.id)
                && n.sm.applied_index == status.last_index
                && n.pending.is_empty()
        })
    }

    fn backlog_entries(&self) -> u64 {
        let last = self
            .nodes
            .iter()
            .filter_map(|n| n.raw.as_ref())
            .map(|r| r.status().last_index);
        let applied = self
            .nodes
            .iter()
            .map(|n| n.sm.applied_index)
            .min()
            .unwrap_or(0);
        last.max().unwrap_or(0).saturating_sub(applied)
    }

    fn max_commit(&self) -> Index {
        self.nodes
            .iter()
            .filter_map(|n| n.raw.as_ref())
            .map(|r| r.status().commit_index)
            .max()
            .unwrap_or(0)
    }

    fn nodes_view(&self) -> Vec<check::NodeView<'_>> {
        self.nodes
            .iter()
            .map(|n| check::NodeView {
                sm: &n.sm,
                disk: &n.disk,
            })
            .collect()
    }

    fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            match &node.raw {
                Some(raw) => {
                    let s = raw.status();
                    out.push_str(&format!(
                        "[n{} {:?} term {} leader {} commit {} applied {} last {}/{}] ",
                        s.id,
                        s.role,
                        s.term,
                        s.leader,
                        s.commit_index,
                        node.sm.applied_index,
                        s.last_index,
                        s.last_term
                    ));
                }
                None => out.push_str(&format!("[n{} down] ", node.id)),
            }
        }
        out
    }

    /// Marks an op as the bytes a client proposes (used by tests that drive the sim by hand).
    pub fn encode_command(key: u8, value: u64) -> Bytes {
        model::encode(key, value)
    }
}

/// Runs one seed; the error names the seed and what broke.
pub fn run_seed(seed: u64) -> Result<SimStats, Violation> {
    Sim::new(SimConfig::from_seed(seed)).run()
}
