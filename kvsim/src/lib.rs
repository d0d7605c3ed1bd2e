//! The deterministic simulator: whole kvnode cores (`kvcore::NodeCore`, the very type the
//! server drives, with the real state machine and sessions), a faulty network, disks that honour
//! the WAL's contract and no more, pauses, and clients that behave like the client library, all
//! driven by one u64 seed.
//!
//! Checked after every event: the Raft invariants and durability (`check.rs`). Checked on the
//! clients' history as answers arrive: exactly-once and monotonic reads (`client.rs`). Checked
//! after the run: every replica holds the same state, and the history is linearizable per key
//! (the `checker` crate), which includes lost acknowledged writes. Then liveness: after the
//! faults heal, the cluster converges and every client finishes. A failure names its seed; the
//! same seed replays event for event.
//!
//! Nothing here reads a clock or the OS: the only source of variation is the seed.

mod check;
mod client;
mod config;
mod disk;
mod event;
mod faults;
mod lists;
mod membership;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use kvcore::{Action, CoreConfig, NodeCore};
use kvraft::rng::Rng;
use kvraft::{Config, Membership, Message, MessageBody, NodeId, Role, SnapshotMeta};

use check::Checker;
pub use check::Violation;
pub use client::ClientConfig;
use client::{Clients, Effect, Token};
pub use config::{SimConfig, TICK_UNITS};
use disk::Disk;
use event::Event;

/// Memory the black-box linearizability search may use per key and seed.
const HISTORY_MEMO_BYTES_MAX: usize = 16 << 20;

/// Counts of what happened, for the soak's report.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub events: u64,
    pub messages_delivered: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub pauses: u64,
    pub writes_acked: u64,
    pub reads_ok: u64,
    /// Writes whose outcome the clients never learned.
    pub writes_unknown: u64,
    /// Writes answered as definitely not applied.
    pub writes_failed: u64,
    pub elections: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    /// Appends a follower left unanswered while it decoded a snapshot (`AppendHeldOff`).
    pub appends_held_off: u64,
    /// Evicted entries leaders read back from the disk for their followers.
    pub entries_loaded: u64,
    /// Appends written on a non-leader's own thread (`SimConfig::wal_inline_per_million`).
    pub wal_writes_inline: u64,
    pub final_commit: u64,
    /// Client operations checked for linearizability.
    pub history_lines: u64,
    /// Histories the bounded black-box search could not decide (the exact white-box check
    /// still ran).
    pub histories_unknown: u64,
    /// Configuration changes proposed (and accepted by the leader's core).
    pub conf_changes: u64,
    /// Changes the core refused (one pending, not yet committed in the term, ...).
    pub conf_changes_refused: u64,
    /// Single-step changes of two voters the core refused as unsafe (retried as joint).
    pub conf_changes_refused_unsafe: u64,
}

struct Node {
    id: NodeId,
    core: Option<NodeCore<Token>>,
    disk: Disk,
    /// Incremented at every crash, so events scheduled before it are ignored.
    epoch: u64,
    /// Snapshot files received from leaders and not yet installed or discarded.
    received: Vec<(SnapshotMeta, Vec<u8>)>,
    /// SIGSTOPped: no ticks; its events wait in `deferred` until it resumes.
    paused: bool,
    deferred: Vec<Event>,
    tick_phase: u64,
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
    long_delay_per_million: u64,
    /// The latest delivery time scheduled on each directed link (for FIFO delivery).
    link_clock: Vec<Vec<u64>>,
    clients: Clients,
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
                core: None,
                disk: Disk::default(),
                epoch: 0,
                received: Vec::new(),
                paused: false,
                deferred: Vec::new(),
                tick_phase: rng.below(TICK_UNITS),
            })
            .collect();
        let clients = Clients::new(config.clients.clone(), &ids, &mut rng);
        Sim {
            loss_per_million: config.loss_per_million,
            duplicate_per_million: config.duplicate_per_million,
            reorder_per_million: config.reorder_per_million,
            long_delay_per_million: config.long_delay_per_million,
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
            clients,
            stats: SimStats::default(),
            trace: None,
        }
    }

    fn raft_config(&self, id: NodeId) -> Config {
        let mut config = Config::new(id);
        config.pre_vote = self.config.pre_vote;
        config.check_quorum = self.config.check_quorum;
        config.election_timeout_ticks = 10;
        config.heartbeat_interval_ticks = 2;
        config.append_batch_bytes_max = self.config.append_batch_bytes_max;
        config.inflight_messages_max = 4;
        config.inflight_bytes_max = 2048;
        config
    }

    fn core_config(&self) -> CoreConfig {
        CoreConfig {
            request_timeout_ticks: self.config.request_timeout_ticks,
            requests_pending_max: 64,
            snapshot_entries: self.config.snapshot_entries,
            received_snapshots_max: 2,
            log_memory_bytes_max: self.config.log_memory_bytes_max,
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

    fn fault_end(&self) -> u64 {
        self.config.fault_ticks * TICK_UNITS
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.config.seed,
            time: self.now,
            what,
        }
    }

    /// Runs the whole scenario: faults, then healing, convergence and the final checks.
    pub fn run(&mut self) -> Result<SimStats, Violation> {
        for index in 0..self.nodes.len() {
            self.start_node(index)?;
        }
        for effect in self.clients.start(&mut self.rng) {
            self.client_effect(effect);
        }
        let fault_end = self.fault_end();
        while self.now < fault_end {
            self.step_time(true)?;
        }
        self.heal_all()?;
        // Converging takes longer when more log is left to replicate: the bound grows by a tick
        // per entry of backlog (appends in the slowest configurations carry one entry each).
        let liveness_ticks = self.config.liveness_ticks_max + self.backlog_entries();
        let deadline = self.now + liveness_ticks * TICK_UNITS;
        while self.now < deadline {
            self.step_time(false)?;
            // Bring every node back as a voter, one change at a time.
            if self.now.is_multiple_of(TICK_UNITS) && !self.full_membership() {
                self.conf_change(true)?;
            }
            if self.now.is_multiple_of(TICK_UNITS) && self.converged() {
                return self.finish();
            }
        }
        let clients = self.clients.busy();
        Err(self.violation(format!(
            "liveness: no convergence within {liveness_ticks} ticks after the faults stopped \
             ({clients} clients still waiting); {}",
            self.describe_nodes()
        )))
    }

    /// The final checks: identical replicas, then the history through the checker.
    fn finish(&mut self) -> Result<SimStats, Violation> {
        self.checker
            .check_final(&self.nodes_view())
            .map_err(|what| self.violation(what))?;
        let leader = self.nodes.iter().filter_map(|n| n.core.as_ref());
        let leader = leader.into_iter().find(|c| c.role() == Role::Leader);
        if let Some(leader) = leader {
            let now = self.now;
            let reference = self
                .clients
                .reference()
                .map_err(|what| self.violation(what))?;
            if reference != leader.state_machine() {
                let what = "the converged state differs from a reference replica that applied \
                            every committed entry once, in order"
                    .to_string();
                return Err(self.violation(what));
            }
            let result = self.clients.final_reads(leader.state_machine(), now);
            result.map_err(|what| self.violation(what))?;
        }
        self.check_history()?;
        self.stats.final_commit = self.max_commit();
        self.stats.writes_acked = self.clients.acked_writes;
        self.stats.reads_ok = self.clients.ok_reads;
        self.stats.writes_unknown = self.clients.unknown;
        self.stats.writes_failed = self.clients.failed_writes;
        Ok(self.stats.clone())
    }

    fn check_history(&mut self) -> Result<(), Violation> {
        self.stats.history_lines = self.clients.history().lines().count() as u64;
        let text = self.clients.register_history();
        if text.is_empty() {
            return Ok(());
        }
        let history = checker::History::parse_jsonl(text)
            .map_err(|e| self.violation(format!("the simulator wrote a bad history: {e}")))?;
        // The register check in `client.rs` is white-box (it knows the version order); the
        // checker crate's black-box check is the second opinion. Its memory is bounded so that
        // no history can stall the run; a check that gives up is counted (the soak prints it),
        // not failed.
        let options = checker::Options {
            threads: 1,
            memo_bytes_max: HISTORY_MEMO_BYTES_MAX,
            ..checker::Options::default()
        };
        let report = checker::check(&history, checker::Workload::Kv, &options)
            .map_err(|e| self.violation(format!("the history cannot be checked: {e}")))?;
        match report.valid {
            checker::Validity::Valid => return Ok(()),
            checker::Validity::Unknown => {
                self.stats.histories_unknown += 1;
                return Ok(());
            }
            checker::Validity::Invalid => {}
        }
        let first = report.anomalies.first().map(|a| a.explanation.clone());
        Err(self.violation(format!(
            "history check: {}; {}\nhistory:\n{}",
            report.verdict_line(),
            first.unwrap_or_default(),
            history_tail(text)
        )))
    }

    fn step_time(&mut self, faults: bool) -> Result<(), Violation> {
        while let Some(&Reverse((time, sequence))) = self.queue.peek() {
            if time > self.now {
                break;
            }
            self.queue.pop();
            if let Some(event) = self.events.remove(&sequence) {
                self.stats.events += 1;
                self.handle_event(event)?;
            }
        }
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            if self.now % TICK_UNITS != node.tick_phase || node.paused {
                continue;
            }
            if let Some(core) = node.core.as_mut() {
                core.tick();
                self.stats.events += 1;
                self.drive(index)?;
            }
        }
        if faults {
            self.maybe_fault()?;
        }
        self.now += 1;
        Ok(())
    }

    // ---------------------------------------------------------------- driving a node

    /// Drives node `index`'s core, checking every Ready, and performs its actions, in the
    /// server's two phases: the Readies and their messages and WAL writes first
    /// (`NodeCore::drive_io`), then the apply (`NodeCore::apply_committed`) and its answers.
    fn drive(&mut self, index: usize) -> Result<(), Violation> {
        loop {
            let io = self.drive_phase(index, true)?;
            let applied = self.drive_phase(index, false)?;
            if !io && !applied {
                break;
            }
        }
        self.checker
            .check_durable(&self.nodes_view())
            .map_err(|what| self.violation(what))
    }

    /// One phase of `drive` (`io`: the Readies, else the apply); false if it left no action.
    fn drive_phase(&mut self, index: usize, io: bool) -> Result<bool, Violation> {
        let mut errors = Vec::new();
        let mut new_leader = false;
        let node = &mut self.nodes[index];
        let Some(core) = node.core.as_mut() else {
            return Ok(false);
        };
        let (checker, clients) = (&mut self.checker, &mut self.clients);
        if io {
            core.drive_io_inspect(|ready, raw| {
                // The commit index is read from the node, not from `ready.hard_state`: a
                // change of the commit index alone is not handed out to persist.
                let status = raw.status();
                if ready.soft_state.is_some_and(|s| s.role == Role::Leader) {
                    new_leader = true;
                    errors.extend(checker.check_leader(status.id, status.term, raw).err());
                }
                errors.extend(checker.check_appended(Some(raw), &ready.entries).err());
                if status.role == Role::Leader {
                    checker.record_leader_commit(status.commit_index, raw.membership());
                }
                let result = checker.record_commit(index, status.commit_index, Some(raw));
                errors.extend(result.err());
                for entry in &ready.committed_entries {
                    errors.extend(checker.check_apply(entry).err());
                    clients.note_committed(entry);
                }
            });
        } else {
            core.apply_committed();
        }
        drop(core.take_dropped_entries());
        let actions = core.take_actions();
        let observations = core.take_observations();
        if let Some(what) = errors.into_iter().next() {
            return Err(self.violation(what));
        }
        self.note_observations(index, observations);
        if new_leader {
            self.on_new_leader(index);
        }
        if actions.is_empty() {
            return Ok(false);
        }
        for action in actions {
            self.perform(index, action)?;
        }
        Ok(true)
    }

    fn note_observations(&mut self, index: usize, observations: Vec<kvcore::Observation>) {
        for observation in observations {
            match observation {
                kvcore::Observation::SnapshotInstalled { .. } => {
                    self.stats.snapshots_installed += 1
                }
                kvcore::Observation::AppendHeldOff { .. } => self.stats.appends_held_off += 1,
                _ => {}
            }
            self.log(|| format!("node {} {observation:?}", index + 1));
        }
    }

    fn on_new_leader(&mut self, index: usize) {
        self.stats.elections += 1;
        if self.now < self.fault_end() && self.rng.chance(self.config.crash_new_leader_per_million)
        {
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

    fn perform(&mut self, index: usize, action: Action<Token>) -> Result<(), Violation> {
        match action {
            Action::Send(message) => self.send(message, index),
            Action::SendSnapshot { to, meta } => self.send_snapshot(index, to, meta),
            Action::Wal(command) => {
                self.maybe_crash_during_vote(index, &command);
                let inline = self.may_write_inline(index, &command);
                self.nodes[index].disk.submit(command);
                if inline {
                    return self.write_inline(index);
                }
                self.start_sync(index);
            }
            Action::InstallSnapshotFile { meta } => {
                let node = &mut self.nodes[index];
                let Some(at) = node.received.iter().position(|(m, _)| *m == meta) else {
                    let what = format!("node {} installs a snapshot file it never got", index + 1);
                    return Err(self.violation(what));
                };
                let (meta, bytes) = node.received.remove(at);
                node.disk.install_snapshot_file(meta, bytes);
            }
            Action::DiscardSnapshotFile { meta } => {
                self.nodes[index].received.retain(|(m, _)| *m != meta);
            }
            Action::TakeSnapshot { meta, state } => {
                let body = state.snapshot();
                let delay = self.rng.between(1, self.config.persist_units_max);
                let epoch = self.nodes[index].epoch;
                let event = Event::SnapshotWritten {
                    node: index,
                    epoch,
                    meta,
                    bytes: body,
                };
                self.schedule(delay, event);
            }
            Action::LoadEntries(load) => {
                // Read now (the entries are durable: only those are evicted), handed back
                // later, off the node's loop as the node does.
                let entries = self.nodes[index].disk.read_entries(&load);
                let delay = self.rng.between(1, self.config.persist_units_max);
                let epoch = self.nodes[index].epoch;
                let event = Event::EntriesLoaded {
                    node: index,
                    epoch,
                    to: load.to,
                    low: load.low,
                    entries,
                };
                self.schedule(delay, event);
            }
            Action::Answer { token, response } => {
                let delay = self.rng.between(1, self.config.delay_units_max);
                self.schedule(delay, Event::ClientAnswer { token, response });
            }
        }
        Ok(())
    }

    /// Whether node `index` writes `command` on its own thread, as kvnode's driver does
    /// (`Node::retry_wal_backlog`): an append, on a node that does not lead, with nothing
    /// else in flight or waiting on its disk.
    fn may_write_inline(&mut self, index: usize, command: &kvcore::WalCommand) -> bool {
        let node = &self.nodes[index];
        let Some(core) = node.core.as_ref() else {
            return false;
        };
        matches!(command, kvcore::WalCommand::Append { .. })
            && core.role() != Role::Leader
            && node.disk.is_idle()
            && self.rng.chance(self.config.wal_inline_per_million)
    }

    /// The append just submitted is written and synced now, and the core told at once.
    fn write_inline(&mut self, index: usize) -> Result<(), Violation> {
        self.nodes[index].disk.start_sync();
        let total = self.finish_sync(index)?;
        self.stats.wal_writes_inline += 1;
        self.log(|| format!("node {} wrote inline: {total} commands durable", index + 1));
        Ok(())
    }

    /// The group commit under way is durable: the disk keeps it, the core is told. Returns
    /// the WAL's new count.
    fn finish_sync(&mut self, index: usize) -> Result<u64, Violation> {
        let total = self.nodes[index]
            .disk
            .finish_sync()
            .map_err(|what| self.violation(format!("node {}: {what}", index + 1)))?;
        if let Some(core) = self.nodes[index].core.as_mut() {
            core.handle_durable(total);
        }
        Ok(total)
    }

    fn start_sync(&mut self, index: usize) {
        if !self.nodes[index].disk.start_sync() {
            return;
        }
        let delay = self.rng.between(1, self.config.persist_units_max);
        let epoch = self.nodes[index].epoch;
        self.schedule(delay, Event::WalSynced { node: index, epoch });
    }

    /// A node is killed while a write of its term or vote is in flight, and restarted shortly
    /// after: the window in which an unsynced vote is lost.
    fn maybe_crash_during_vote(&mut self, index: usize, command: &kvcore::WalCommand) {
        let kvcore::WalCommand::Append {
            hard_state: Some(hard_state),
            ..
        } = command
        else {
            return;
        };
        let disk = self.nodes[index].disk.image.hard_state;
        if !hard_state.vote_differs(&disk)
            || !self.rng.chance(self.config.crash_during_vote_per_million)
        {
            return;
        }
        let delay = self.rng.between(0, self.config.persist_units_max);
        let restart_after = Some(self.rng.between(1, 2 * TICK_UNITS));
        let epoch = self.nodes[index].epoch;
        let event = Event::Crash {
            node: index,
            epoch,
            restart_after,
        };
        self.schedule(delay, event);
    }

    fn send(&mut self, message: Message, from: usize) {
        if self.rng.chance(self.loss_per_million) {
            return;
        }
        let copies = if self.rng.chance(self.duplicate_per_million) {
            2
        } else {
            1
        };
        let to = (message.to - 1) as usize;
        for _ in 0..copies {
            let mut delay = self.rng.between(1, self.config.delay_units_max);
            if self.rng.chance(self.long_delay_per_million) {
                delay = self.rng.between(10 * TICK_UNITS, 30 * TICK_UNITS);
            }
            let mut at = self.now + delay;
            if !self.rng.chance(self.reorder_per_million) {
                at = at.max(self.link_clock[from][to]);
                self.link_clock[from][to] = at;
            }
            let event = Event::Deliver {
                message: message.clone(),
            };
            self.schedule(at - self.now, event);
        }
    }

    /// Streams our snapshot file to `to` (a reliable stream: no random loss; it fails when the
    /// link is cut or the receiver is down).
    fn send_snapshot(&mut self, index: usize, to: NodeId, meta: SnapshotMeta) {
        let file = self.nodes[index].disk.snapshot_file(&meta);
        let epoch = self.nodes[index].epoch;
        match file {
            Some(bytes) => {
                self.stats.snapshots_sent += 1;
                let delay = self.rng.between(1, self.config.delay_units_max);
                let event = Event::SnapshotArrive {
                    from: index,
                    from_epoch: epoch,
                    to: (to - 1) as usize,
                    meta,
                    bytes,
                };
                self.schedule(delay, event);
            }
            // The file is not (yet) there: the core retries later.
            _ => self.schedule(
                1,
                Event::SnapshotReport {
                    leader: index,
                    epoch,
                    to,
                    ok: false,
                },
            ),
        }
    }

    fn client_effect(&mut self, effect: Effect) {
        match effect {
            Effect::Send {
                node,
                token,
                owner,
                bytes,
            } => {
                let delay = self.rng.between(1, self.config.delay_units_max);
                let event = Event::ClientRequest {
                    node: (node - 1) as usize,
                    token,
                    owner,
                    bytes,
                };
                self.schedule(delay, event);
            }
            Effect::Wake {
                client,
                generation,
                after,
            } => self.schedule(after, Event::ClientWake { client, generation }),
        }
    }

    // ---------------------------------------------------------------- convergence

    fn converged(&self) -> bool {
        let leaders: Vec<&NodeCore<Token>> = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .filter(|c| c.role() == Role::Leader)
            .collect();
        let [leader] = leaders.as_slice() else {
            return false;
        };
        let status = leader.status();
        if status.last_term != status.term || status.commit_index != status.last_index {
            return false;
        }
        let caught_up = self.nodes.iter().all(|n| {
            n.core.as_ref().is_some_and(|c| {
                c.status().leader == status.id
                    && c.state_machine().applied_index() == status.last_index
                    && !c.is_taking_snapshot()
            }) && !n.disk.has_unsynced()
        });
        caught_up && self.clients.busy() == 0 && self.full_membership()
    }

    fn backlog_entries(&self) -> u64 {
        let last = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.status().last_index);
        let applied = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.state_machine().applied_index())
            .min()
            .unwrap_or(0);
        last.max().unwrap_or(0).saturating_sub(applied)
    }

    fn max_commit(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.status().commit_index)
            .max()
            .unwrap_or(0)
    }

    fn nodes_view(&self) -> Vec<check::NodeView<'_>> {
        self.nodes
            .iter()
            .map(|n| check::NodeView {
                id: n.id,
                raw: n.core.as_ref().map(|c| c.raw()),
                sm: n.core.as_ref().map(|c| c.state_machine()),
                disk: &n.disk.image,
            })
            .collect()
    }

    fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            match &node.core {
                Some(core) => {
                    let s = core.status();
                    out.push_str(&format!(
                        "[n{} {:?} term {} leader {} commit {} applied {} last {}/{}{}] ",
                        s.id,
                        s.role,
                        s.term,
                        s.leader,
                        s.commit_index,
                        core.state_machine().applied_index(),
                        s.last_index,
                        s.last_term,
                        if node.paused { " paused" } else { "" }
                    ));
                }
                None => out.push_str(&format!("[n{} down] ", node.id)),
            }
        }
        out
    }
}

/// The end of a history, for a failure report.
fn history_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    lines[from..].join("\n")
}

/// Runs one seed; the error names the seed and what broke. A panic inside the node core (a
/// broken assertion) is reported as a violation of that seed too.
pub fn run_seed(seed: u64) -> Result<SimStats, Violation> {
    let result = std::panic::catch_unwind(|| Sim::new(SimConfig::from_seed(seed)).run());
    match result {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string());
            Err(Violation {
                seed,
                time: 0,
                what: format!("panicked: {what}"),
            })
        }
    }
}

/// `true` for messages that carry no log entries (for traces).
pub fn is_heartbeat(message: &Message) -> bool {
    matches!(
        message.body,
        MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse { .. }
    )
}

/// What a batch of seeds did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub totals: SimStats,
    /// Failed seeds with their violations, in seed order.
    pub failures: Vec<Violation>,
}

/// Runs seeds `first..first + count` on `threads` threads (each seed alone is deterministic;
/// threads only change which core runs it). `progress` is called after each seed with the
/// number done so far.
pub fn run_seeds(
    first: u64,
    count: u64,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Summary {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    let next = AtomicU64::new(first);
    let done = AtomicU64::new(0);
    let summary = Mutex::new(Summary {
        seeds: count,
        ..Summary::default()
    });
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    return;
                }
                let result = run_seed(seed);
                if let Ok(mut summary) = summary.lock() {
                    match result {
                        Ok(stats) => add_stats(&mut summary.totals, &stats),
                        Err(violation) => summary.failures.push(violation),
                    }
                }
                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            });
        }
    });
    let mut summary = summary.into_inner().unwrap_or_default();
    summary.failures.sort_by_key(|v| v.seed);
    summary
}

fn add_stats(total: &mut SimStats, stats: &SimStats) {
    total.events += stats.events;
    total.messages_delivered += stats.messages_delivered;
    total.crashes += stats.crashes;
    total.partitions += stats.partitions;
    total.pauses += stats.pauses;
    total.writes_acked += stats.writes_acked;
    total.reads_ok += stats.reads_ok;
    total.writes_unknown += stats.writes_unknown;
    total.writes_failed += stats.writes_failed;
    total.elections += stats.elections;
    total.snapshots_sent += stats.snapshots_sent;
    total.snapshots_installed += stats.snapshots_installed;
    total.appends_held_off += stats.appends_held_off;
    total.entries_loaded += stats.entries_loaded;
    total.wal_writes_inline += stats.wal_writes_inline;
    total.final_commit += stats.final_commit;
    total.history_lines += stats.history_lines;
    total.histories_unknown += stats.histories_unknown;
    total.conf_changes += stats.conf_changes;
    total.conf_changes_refused += stats.conf_changes_refused;
    total.conf_changes_refused_unsafe += stats.conf_changes_refused_unsafe;
}

impl std::fmt::Display for SimStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} events, {} crashes, {} pauses, {} partitions, {} elections, {} snapshots \
             installed ({} appends held off while decoding), {} evicted entries read back, \
             {} appends written inline, {} writes acked, {} writes \
             unknown, {} writes failed, {} reads, {} history lines, {} histories undecided by \
             the search, {} configuration changes ({} refused, {} unsafe single-step changes \
             refused)",
            self.events,
            self.crashes,
            self.pauses,
            self.partitions,
            self.elections,
            self.snapshots_installed,
            self.appends_held_off,
            self.entries_loaded,
            self.wal_writes_inline,
            self.writes_acked,
            self.writes_unknown,
            self.writes_failed,
            self.reads_ok,
            self.history_lines,
            self.histories_unknown,
            self.conf_changes,
            self.conf_changes_refused,
            self.conf_changes_refused_unsafe
        )
    }
}
