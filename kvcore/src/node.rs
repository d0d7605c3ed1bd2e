//! `NodeCore`: the Raft core, the state machine and every decision around them.
//!
//! Durability order (proto-docs/durability.md): a Ready's `messages` leave at once; its writes
//! become WAL commands; its `persisted_messages` and its persist mark wait in the pipeline until
//! the WAL reports those commands durable. Client writes are answered when their entry is
//! applied, which happens only after it is committed, which needs a majority's durable
//! acknowledgements.

use bytes::Bytes;
use kvraft::{
    ConfChange, ConfChangeOp, Config as RaftConfig, Entry, EntryKind, Index, Membership, Message,
    MessageBody, NodeId, ProposeError, RawNode, ReadIndexError, Ready, Role, SnapshotMeta, Status,
    Term,
};
use kvstate::client_proto::{
    decode_request, ClientError, ClientRequest, ClientResponse, NodeRole, NodeStatus, RequestKind,
};
use kvstate::members::{member_address_key, MemberInfo, MemberList, MemberOp, MemberRole};
use kvstate::{Command, Op, StateMachine, Value};

use crate::action::{Action, Observation, WalCommand};
use crate::config::CoreConfig;
use crate::pipeline::{Pipeline, Release};
use crate::recovery::{self, DiskState, RecoveryError};
use crate::requests::{NewWrite, Read, Requests};
use crate::snapshots::Snapshots;
use crate::LEADERSHIP_CHANGED;

/// One node's logic. `T` is the driver's token for a client request (a reply channel in the
/// server, an operation id in the simulator); the core hands it back in `Action::Answer`.
pub struct NodeCore<T> {
    id: NodeId,
    config: CoreConfig,
    raw: RawNode,
    sm: StateMachine,
    requests: Requests<T>,
    pipeline: Pipeline,
    snapshots: Snapshots,
    role: Role,
    leader: NodeId,
    ticks: u64,
    actions: Vec<Action<T>>,
    observations: Vec<Observation>,
    /// A `MoveLeader` request waiting for its target to lead.
    transfer: Option<Transfer<T>>,
    /// Entries dropped by a compaction, for the caller to free (`take_dropped_entries`).
    dropped: Vec<Entry>,
    /// Committed entries handed out by the Raft core, applied by `apply_committed`.
    to_apply: Vec<Entry>,
}

/// A `MoveLeader` request in progress.
struct Transfer<T> {
    to: NodeId,
    token: T,
    deadline_tick: u64,
}

/// The session (owner "", which no TLS identity has) under which the nodes write the peer
/// addresses of members added at runtime. Its sequence number is the entry's log index, which
/// grows along the log whoever leads.
const MEMBER_SESSION_CLIENT_ID: u64 = 0;

/// A learner is promoted only once it has acknowledged part of the log and its log is within
/// this many entries of the leader's commit index (etcd refuses to promote a learner that is
/// not in sync, for the same reason: a voter far behind weakens the quorum while it catches
/// up).
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 1000;
/// How long a leader may keep its log past a new snapshot while a follower catches up, in
/// snapshot cycles (`snapshot_entries`): beyond this many cycles of entries it compacts anyway.
/// With the log in memory bounded (`log_memory_bytes_max`) this bounds the WAL on disk (about
/// 330 bytes a 256-byte put: 660 MB at 2M entries) and what a restart reads back. It was 10:
/// on a slower run of `bench scale` (8M keys) a leader's snapshots took 20 s and covered 400k
/// entries each, 10 cycles ran out during one catch-up, and the follower needed a second
/// snapshot (52 s to catch up instead of 19).
pub const COMPACTION_DEFERRED_CYCLES_MAX: u64 = 20;
/// An eviction keeps this many eighths of `log_memory_bytes_max` in memory (`maybe_evict`):
/// each drops about an eighth, 2 MiB at the default budget.
pub const LOG_EVICT_KEEP_EIGHTHS: u64 = 7;

impl<T> NodeCore<T> {
    /// Builds the node from its disk. The WAL commands recovery needs (realigning the WAL with
    /// the snapshot) are the first actions, counted like every later one.
    pub fn recover(
        config: CoreConfig,
        raft: RaftConfig,
        bootstrap: Membership,
        disk: DiskState,
        seed: u64,
    ) -> Result<NodeCore<T>, RecoveryError> {
        let id = raft.id;
        let plan = recovery::plan(disk)?;
        let raw = RawNode::new(raft, bootstrap, plan.restored, seed)?;
        let mut core = NodeCore {
            id,
            config,
            raw,
            sm: plan.sm,
            requests: Requests::default(),
            pipeline: Pipeline::default(),
            snapshots: Snapshots::default(),
            role: Role::Follower,
            leader: 0,
            ticks: 0,
            actions: Vec::new(),
            observations: Vec::new(),
            transfer: None,
            dropped: Vec::new(),
            to_apply: Vec::new(),
        };
        if plan.discarded > 0 {
            core.observations.push(Observation::RecoveryDiscarded {
                entries: plan.discarded,
                snapshot_index: core.sm.applied_index(),
            });
        }
        for command in plan.commands {
            core.wal(command);
        }
        Ok(core)
    }

    // ------------------------------------------------------------------ inputs

    /// A client request (`request`: an encoded `ClientRequest`) from the TLS identity `owner`.
    /// Sessions are bound to `owner` (issue 10, bug 5).
    pub fn handle_client(&mut self, token: T, owner: &str, request: &[u8]) {
        let request = match decode_request(request) {
            Ok(request) => request,
            Err(error) => {
                return self.answer_error(token, ClientError::BadRequest(error.to_string()))
            }
        };
        if let Err(error) = request.validate() {
            return self.answer_error(token, error);
        }
        let ClientRequest {
            client_id,
            seq,
            kind,
        } = request;
        match kind {
            RequestKind::Status => {
                let response = ClientResponse::Status(self.node_status());
                self.answer(token, response);
            }
            RequestKind::Read { op, stale: true } => {
                let response = read_response(&self.sm, &op);
                self.answer(token, response);
            }
            RequestKind::Read { op, stale: false } => {
                if let Some(error) = self.refusal() {
                    return self.answer_error(token, error);
                }
                let deadline_tick = self.deadline();
                self.requests.add_read(Read {
                    op,
                    token,
                    deadline_tick,
                });
            }
            RequestKind::Members => {
                let response = ClientResponse::Members(self.member_list());
                self.answer(token, response);
            }
            RequestKind::MemberChange { op } => self.change_members(token, op),
            RequestKind::MoveLeader { to } => self.move_leader(token, to),
            RequestKind::Write { op } => {
                let owner = owner.to_string();
                self.write(
                    token,
                    Command {
                        owner,
                        client_id,
                        seq,
                        op,
                    },
                )
            }
        }
    }

    fn write(&mut self, token: T, command: Command) {
        if let Some(error) = self.refusal() {
            return self.answer_error(token, error);
        }
        match command.encode() {
            Ok(data) => {
                let deadline_tick = self.deadline();
                self.requests.add_write(NewWrite {
                    data: Bytes::from(data),
                    command,
                    token,
                    deadline_tick,
                });
            }
            Err(error) => self.answer_error(token, ClientError::BadRequest(error.to_string())),
        }
    }

    /// A Raft message from a peer.
    pub fn handle_message(&mut self, message: Message) {
        let Some(message) = self.snapshots.hold_until_decoded(message) else {
            return;
        };
        match &message.body {
            MessageBody::Append { prev_log_index, .. }
                if self.snapshots.is_decoding()
                    && *prev_log_index > self.raw.status().last_index =>
            {
                // A snapshot from the leader is being decoded and will replace this log.
                // Rejected now, against the log it replaces, this append would tell the leader
                // that we need the snapshot again (measured: `bench scale` streamed a wiped
                // follower its 2 GB snapshot twice). Unanswered, it is sent again after the
                // install.
                let from = message.from;
                self.observations.push(Observation::AppendHeldOff { from });
                return;
            }
            MessageBody::InstallSnapshot { meta }
                if !self.snapshots.has_received(meta)
                    && meta.last_index > self.raw.status().commit_index =>
            {
                // Step it only once the file is here: the core replaces its log on this message.
                // A snapshot at or below our commit needs no file (Raft only answers with its
                // commit index), so that one is stepped at once: the leader learns where we are.
                let reason = format!("InstallSnapshot {} without its file", meta.last_index);
                let from = message.from;
                self.observations
                    .push(Observation::MessageDropped { from, reason });
                return;
            }
            MessageBody::AppendResponse {
                reject: Some(_), ..
            } => {
                let from = message.from;
                self.observations.push(Observation::AppendRejected { from });
            }
            _ => {}
        }
        let from = message.from;
        if let Err(error) = self.raw.step(message) {
            let reason = error.to_string();
            self.observations
                .push(Observation::MessageDropped { from, reason });
        }
    }

    /// The WAL reports that its first `commands_durable_total` commands are durable.
    pub fn handle_durable(&mut self, commands_durable_total: u64) {
        for release in self.pipeline.on_durable(commands_durable_total) {
            self.release(release);
        }
    }

    /// A snapshot file from a leader arrived and the node started decoding it (off its event
    /// loop: a large state takes seconds). Until `handle_snapshot_received` or
    /// `handle_snapshot_abandoned`, the leader's InstallSnapshot for it is held and appends
    /// our log cannot take are dropped (see `handle_message`).
    pub fn handle_snapshot_arriving(&mut self, meta: SnapshotMeta) {
        self.snapshots
            .arriving(meta, self.config.received_snapshots_max);
    }

    /// A snapshot file from a leader arrived and decoded to `sm`. A held InstallSnapshot for
    /// it is stepped now.
    pub fn handle_snapshot_received(&mut self, meta: SnapshotMeta, sm: StateMachine) {
        let held = self.snapshots.decoded(&meta);
        let max = self.config.received_snapshots_max;
        for old in self.snapshots.receive(meta, sm, max) {
            self.discard_received(old);
        }
        if let Some(message) = held {
            self.handle_message(message);
        }
    }

    /// A snapshot file from a leader did not decode (or the node gave up on it): forgotten,
    /// with its held InstallSnapshot. The leader sends it again.
    pub fn handle_snapshot_abandoned(&mut self, meta: &SnapshotMeta) {
        self.snapshots.decoded(meta);
    }

    /// The transport saw `peer` come back as a new process (it may have lost its disk).
    pub fn handle_peer_restarted(&mut self, peer: NodeId) {
        self.raw.report_restarted(peer);
    }

    /// The snapshot stream to `to` finished (`ok`) or failed.
    pub fn handle_snapshot_sent(&mut self, to: NodeId, ok: bool) {
        let message = self.snapshots.release(to);
        if ok {
            if let Some(message) = message {
                self.actions.push(Action::Send(message));
            }
        }
        self.observations.push(Observation::SnapshotSent { to, ok });
        self.raw.report_snapshot(to, ok);
    }

    /// Our snapshot at `meta` is durable: compact the log up to it. Returns the entries the
    /// log dropped: freeing them (a snapshot interval's worth) is milliseconds of work, which
    /// a caller with an event loop should do on another thread.
    ///
    /// A leader with a follower behind `meta` (one catching up from our previous snapshot, by
    /// snapshot and then by log) keeps its log until that follower is past it: compacted now,
    /// the follower would need this snapshot too once it installed the previous one, and a
    /// large state (seconds to stream and decode) could be chased for ever (measured: `bench
    /// scale`, 8M keys, 100k entries a snapshot: a wiped follower needed 4 snapshots and
    /// 80 s). The compaction then happens in a later `drive` (`take_dropped_entries`), at
    /// the latest once the log holds `COMPACTION_DEFERRED_CYCLES_MAX` snapshot cycles.
    pub fn handle_snapshot_taken(&mut self, meta: SnapshotMeta) -> Vec<Entry> {
        self.snapshots.taking = false;
        let index = meta.last_index;
        self.snapshots.compaction_deferred = Some(meta);
        self.maybe_compact();
        if self.snapshots.compaction_deferred.is_some() {
            self.observations
                .push(Observation::CompactionWaiting { index });
        }
        std::mem::take(&mut self.dropped)
    }

    /// Entries a compaction dropped in `drive` (see `handle_snapshot_taken`): freeing them is
    /// milliseconds of work, which a caller with an event loop should do on another thread.
    pub fn take_dropped_entries(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.dropped)
    }

    /// Compacts the log up to the snapshot waiting for it, unless a follower still needs the
    /// entries (see `handle_snapshot_taken`).
    fn maybe_compact(&mut self) {
        let Some(meta) = self.snapshots.compaction_deferred.take() else {
            return;
        };
        let index = meta.last_index;
        let status = self.raw.status();
        // A snapshot installed from the leader meanwhile may be newer: the Raft core knows.
        if index <= status.snapshot_index {
            return;
        }
        let log_entries = status.last_index.saturating_sub(status.snapshot_index);
        let deferred_entries_max =
            (self.config.snapshot_entries).saturating_mul(COMPACTION_DEFERRED_CYCLES_MAX);
        if self.raw.follower_behind(index) && log_entries < deferred_entries_max {
            self.snapshots.compaction_deferred = Some(meta);
            return;
        }
        let mut dropped = self.raw.compact(meta);
        self.dropped.append(&mut dropped);
        self.wal(WalCommand::Compact(index));
        self.observations.push(Observation::SnapshotTaken { index });
    }

    /// Proposes a configuration change on the leader; it goes out with the next `drive`.
    /// Returns the (index, term) of its entry. The configuration takes effect when the entry
    /// is appended; `membership()` shows the one in force, `Observation::MembershipChanged`
    /// reports each one as it is applied.
    pub fn propose_conf_change(
        &mut self,
        change: &ConfChange,
    ) -> Result<(Index, Term), ProposeError> {
        self.raw.propose_conf_change(change)
    }

    /// A `MemberChange` request: one operation as a simple configuration change (at most one
    /// voter changes), answered when its entry is applied here. A node added as a learner
    /// gets its address written to the state machine first, one entry before the change, so
    /// that every replica knows it when it applies the change.
    fn change_members(&mut self, token: T, op: MemberOp) {
        if let Some(error) = self.refusal() {
            return self.answer_error(token, error);
        }
        let change = ConfChange::simple(match &op {
            MemberOp::AddLearner { id, .. } => ConfChangeOp::AddLearner(*id),
            MemberOp::Promote { id } => ConfChangeOp::Promote(*id),
            MemberOp::Remove { id } => ConfChangeOp::Remove(*id),
        });
        // What the Raft core would refuse is refused before the address goes into the log.
        if let Err(error) = change.apply(self.raw.membership()) {
            return self.answer_error(token, ClientError::BadRequest(error.to_string()));
        }
        if let MemberOp::Promote { id } = op {
            if let Some(error) = self.promote_refusal(id) {
                return self.answer_error(token, error);
            }
        }
        if let MemberOp::AddLearner { id, address } = op {
            let seq = self.raw.status().last_index + 1;
            let command = Command {
                owner: String::new(),
                client_id: MEMBER_SESSION_CLIENT_ID,
                seq,
                op: Op::put(member_address_key(id), address),
            };
            let proposed = match command.encode() {
                Ok(data) => self.raw.propose(Bytes::from(data)).map_err(propose_error),
                Err(error) => Err(ClientError::BadRequest(error.to_string())),
            };
            if let Err(error) = proposed {
                return self.answer_error(token, error);
            }
        }
        match self.raw.propose_conf_change(&change) {
            Ok((index, term)) => {
                let deadline = self.deadline();
                self.requests.proposed_one(index, term, token, deadline);
            }
            Err(error) => self.answer_error(token, propose_error(error)),
        }
    }

    /// Why learner `id` cannot be promoted yet, if it cannot (`PROMOTE_LAG_ENTRIES_MAX`).
    fn promote_refusal(&self, id: NodeId) -> Option<ClientError> {
        let commit = self.raw.status().commit_index;
        let matched = self
            .raw
            .progress()
            .into_iter()
            .find(|(peer, ..)| *peer == id)
            .map_or(0, |(_, matched, ..)| matched);
        (matched == 0 || matched + PROMOTE_LAG_ENTRIES_MAX < commit).then(|| {
            ClientError::BadRequest(format!(
                "learner n{id} is not caught up yet (its log reaches {matched}, the commit index \
                 is {commit}); retry once it is"
            ))
        })
    }

    /// A `MoveLeader` request: leadership transfer (thesis §3.10), answered once `to` leads.
    fn move_leader(&mut self, token: T, to: NodeId) {
        if let Some(error) = self.refusal() {
            return self.answer_error(token, error);
        }
        if to == self.id {
            let response = ClientResponse::Members(self.member_list());
            return self.answer(token, response);
        }
        let membership = self.raw.membership();
        if !membership.voters.contains(&to) {
            let error = format!("n{to} is not a voter (members: {membership})");
            return self.answer_error(token, ClientError::BadRequest(error));
        }
        if self.transfer.is_some() {
            let error = "a leadership transfer is already in progress; retry once it ends";
            return self.answer_error(token, ClientError::Unavailable(error.into()));
        }
        match self.raw.transfer_leader(to) {
            Ok(()) => {
                let deadline_tick = self.deadline();
                self.transfer = Some(Transfer {
                    to,
                    token,
                    deadline_tick,
                });
            }
            Err(error) => self.answer_error(token, propose_error(error)),
        }
    }

    /// The configuration in force here, with each member's replicated address (members of
    /// the initial configuration have none: their addresses are in the config file) and, on
    /// the leader, how far each member's log is known to match.
    pub fn member_list(&self) -> MemberList {
        let membership = self.raw.membership();
        let status = self.raw.status();
        let progress = if status.role == Role::Leader {
            self.raw.progress()
        } else {
            Vec::new()
        };
        let mut members: Vec<MemberInfo> = Vec::new();
        let roles = [
            (&membership.voters, MemberRole::Voter),
            (&membership.voters_outgoing, MemberRole::OutgoingVoter),
            (&membership.learners, MemberRole::Learner),
        ];
        for (ids, role) in roles {
            for &id in ids.iter() {
                if members.iter().any(|m| m.id == id) {
                    continue;
                }
                let match_index = if id == self.id && status.role == Role::Leader {
                    Some(status.last_index)
                } else {
                    progress
                        .iter()
                        .find(|(peer, ..)| *peer == id)
                        .map(|(_, matched, ..)| *matched)
                };
                members.push(MemberInfo {
                    id,
                    role,
                    address: self.member_address(id),
                    match_index,
                });
            }
        }
        members.sort_by_key(|m| m.id);
        MemberList {
            node: self.id,
            leader: (status.leader != 0).then_some(status.leader),
            config_index: status.membership_index,
            committed: status.membership_index <= status.commit_index,
            members,
        }
    }

    /// The peer address of node `id` as replicated with `member add`, if any.
    pub fn member_address(&self, id: NodeId) -> Option<String> {
        match self.sm.get_local(&member_address_key(id)) {
            Some(Value::Bytes(address)) => String::from_utf8(address.to_vec()).ok(),
            _ => None,
        }
    }

    /// One tick of the logical clock: Raft timers and request deadlines.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
        for token in self.requests.expire(self.ticks) {
            self.answer_error(token, ClientError::Timeout);
        }
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.deadline_tick <= self.ticks)
        {
            if let Some(transfer) = self.transfer.take() {
                self.answer_error(transfer.token, ClientError::Timeout);
            }
        }
        // Still leading, and the Raft core gave the transfer up (the target did not catch up
        // within an election timeout).
        if self.role == Role::Leader && self.raw.transferee() == 0 {
            if let Some(transfer) = self.transfer.take() {
                let to = transfer.to;
                let reason = format!(
                    "the transfer to n{to} was abandoned: n{to} did not catch up within an \
                     election timeout (is it running and reachable?)"
                );
                self.answer_error(transfer.token, ClientError::Unavailable(reason));
            }
        }
    }

    // ------------------------------------------------------------------ driving

    /// Proposes and reads what arrived, then handles every Ready the Raft core has.
    pub fn drive(&mut self) {
        self.drive_inspect(|_, _| {});
    }

    /// `drive`, showing each Ready and the Raft core to `inspect` before it is handled (the
    /// simulator checks its invariants there; the server passes nothing).
    pub fn drive_inspect(&mut self, inspect: impl FnMut(&Ready, &RawNode)) {
        self.drive_io_inspect(inspect);
        self.apply_committed();
    }

    /// The first half of `drive`: everything but applying the committed entries, which wait
    /// for `apply_committed`. The actions it leaves (messages, WAL writes) are on the commit
    /// path, applying is not: a driver that performs them first, sends them on their way, then
    /// applies, takes the apply's time off the path of every write (the leader's appends, the
    /// followers' acknowledgements and WAL writes).
    pub fn drive_io(&mut self) {
        self.drive_io_inspect(|_, _| {});
    }

    /// `drive_io`, showing each Ready to `inspect` (see `drive_inspect`).
    pub fn drive_io_inspect(&mut self, mut inspect: impl FnMut(&Ready, &RawNode)) {
        self.flush_writes();
        self.flush_reads();
        while self.raw.has_ready() {
            let ready = self.raw.ready();
            inspect(&ready, &self.raw);
            self.handle_ready(ready);
        }
    }

    /// Whether `drive_io` left committed entries to apply.
    pub fn has_committed_to_apply(&self) -> bool {
        !self.to_apply.is_empty()
    }

    /// The second half of `drive`: applies the committed entries (answering the writes among
    /// them), serves the reads now applied, and takes, compacts or evicts what the applied
    /// index allows.
    pub fn apply_committed(&mut self) {
        self.apply_left();
        self.serve_reads();
        self.maybe_snapshot();
        self.maybe_compact();
        self.maybe_evict();
    }

    /// Keeps the log's entries in memory within `log_memory_bytes_max`: beyond it, evicts the
    /// oldest applied, durable ones down to `LOG_EVICT_KEEP_EIGHTHS` eighths of it. The
    /// caller frees them (`take_dropped_entries`). An eviction costs the loop a move of each
    /// entry it drops, never of those kept (the log is a ring buffer), so small, frequent ones
    /// keep each pause short. Halving, as before, moved the kept half into a new `Vec` that
    /// then regrew: at the default budget about 27k entries of 56 bytes copied twice into
    /// fresh memory (1.5 MB, then 3 MB) per eviction.
    fn maybe_evict(&mut self) {
        let bytes_max = self.config.log_memory_bytes_max;
        if self.raw.log_memory_bytes() > bytes_max {
            let keep_bytes = bytes_max / 8 * LOG_EVICT_KEEP_EIGHTHS;
            let mut evicted = self.raw.evict_entries(keep_bytes);
            self.dropped.append(&mut evicted);
        }
    }

    /// The entries of `Action::LoadEntries` for follower `to` from `low`, read back from the
    /// WAL (none if the read failed).
    pub fn handle_entries_loaded(&mut self, to: NodeId, low: Index, entries: Vec<Entry>) {
        self.raw.entries_loaded(to, low, entries);
    }

    /// The effects to perform, in order.
    pub fn take_actions(&mut self) -> Vec<Action<T>> {
        std::mem::take(&mut self.actions)
    }

    pub fn take_observations(&mut self) -> Vec<Observation> {
        std::mem::take(&mut self.observations)
    }

    fn flush_writes(&mut self) {
        let batch = self.requests.take_new_writes();
        if batch.is_empty() {
            return;
        }
        let data: Vec<Bytes> = batch.iter().map(|write| write.data.clone()).collect();
        match self.raw.propose_batch(data) {
            Ok((last, term)) => self.requests.proposed(batch, last, term),
            Err(error) => {
                let error = propose_error(error);
                for write in batch {
                    self.answer_error(write.token, error.clone());
                }
            }
        }
    }

    /// All linearizable reads that arrived since the last drive share one ReadIndex round.
    fn flush_reads(&mut self) {
        let Some(context) = self.requests.next_read_round() else {
            return;
        };
        let error = match self.raw.read_index(context) {
            Ok(()) => return self.requests.read_round_started(context),
            // A new leader's no-op commits within a round trip: keep the reads, retry then.
            Err(ReadIndexError::NoCommitInTerm) => return,
            Err(ReadIndexError::NotLeader { leader_hint }) => {
                ClientError::NotLeader { leader_hint }
            }
            Err(other) => ClientError::Unavailable(other.to_string()),
        };
        for (token, error) in self.requests.refuse_new_reads(&error) {
            self.answer_error(token, error);
        }
    }

    fn handle_ready(&mut self, mut ready: Ready) {
        if let Some(soft) = ready.soft_state {
            self.on_soft_state(soft.role, soft.leader);
        }
        // Before anything is taken out of the Ready (issue 10, bug 1).
        let wrote = ready.must_persist();
        for message in std::mem::take(&mut ready.messages) {
            self.send(message);
        }
        if let Some(meta) = ready.snapshot.take() {
            // What an earlier Ready committed comes first, as it came first in the log.
            self.apply_left();
            self.install_snapshot(meta);
        }
        let entries = std::mem::take(&mut ready.entries);
        if !entries.is_empty() || ready.hard_state.is_some() {
            let hard_state = ready.hard_state;
            self.wal(WalCommand::Append {
                entries,
                hard_state,
            });
        }
        let messages = std::mem::take(&mut ready.persisted_messages);
        if let Some(release) = self
            .pipeline
            .after_ready(wrote, messages, ready.persist_mark)
        {
            self.release(release);
        }
        self.to_apply.append(&mut ready.committed_entries);
        for state in &ready.read_states {
            self.requests.read_confirmed(state.context, state.index);
        }
        for &context in &ready.dropped_reads {
            let error = self
                .refusal()
                .unwrap_or(ClientError::NotLeader { leader_hint: None });
            for read in self.requests.read_dropped(context) {
                self.answer_error(read.token, error.clone());
            }
        }
        for load in ready.entries_to_load {
            self.actions.push(Action::LoadEntries(load));
        }
    }

    fn on_soft_state(&mut self, role: Role, leader: NodeId) {
        if role == Role::Candidate && self.role != Role::Candidate {
            self.observations.push(Observation::ElectionStarted);
        }
        let term = self.raw.status().term;
        self.observations
            .push(Observation::RoleChanged { role, leader, term });
        self.role = role;
        self.leader = leader;
        if role != Role::Leader && leader != 0 {
            if let Some(transfer) = self.transfer.take() {
                let response = if leader == transfer.to {
                    ClientResponse::Members(self.member_list())
                } else {
                    let to = transfer.to;
                    let reason = format!("leadership went to n{leader}, not n{to}");
                    ClientResponse::Err(ClientError::Unavailable(reason))
                };
                self.answer(transfer.token, response);
            }
        }
        if role != Role::Leader {
            let error = ClientError::NotLeader {
                leader_hint: (leader != 0).then_some(leader),
            };
            let mut refused = self.requests.refuse_new_writes(&error);
            refused.extend(self.requests.refuse_new_reads(&error));
            for (token, error) in refused {
                self.answer_error(token, error);
            }
        }
    }

    fn send(&mut self, message: Message) {
        if let MessageBody::InstallSnapshot { meta } = &message.body {
            let (to, meta) = (message.to, meta.clone());
            self.snapshots.hold(message);
            self.actions.push(Action::SendSnapshot { to, meta });
            return;
        }
        self.actions.push(Action::Send(message));
    }

    fn wal(&mut self, command: WalCommand) {
        self.pipeline.submit();
        self.actions.push(Action::Wal(command));
    }

    fn release(&mut self, release: Release) {
        for message in release.messages {
            self.send(message);
        }
        self.raw.on_persisted(release.mark);
    }

    // ------------------------------------------------------------------ applying

    /// Applies the committed entries `drive_io` left, in log order.
    fn apply_left(&mut self) {
        let entries = std::mem::take(&mut self.to_apply);
        self.apply(&entries);
    }

    fn apply(&mut self, entries: &[Entry]) {
        let Some(last) = entries.last() else { return };
        for entry in entries {
            let (ours, replaced) = self.requests.applied(entry.index, entry.term);
            let (ours, command) =
                ours.map_or((None, None), |ours| (Some(ours.token), ours.command));
            let outcome = match entry.kind {
                // Our own proposal: its data is `command.encode()` (same index, same term).
                EntryKind::Normal => Some(match command {
                    Some(command) => self.sm.apply_command(entry.index, command),
                    None => self.sm.apply(entry.index, &entry.data),
                }),
                EntryKind::Noop => {
                    self.sm.apply_empty(entry.index);
                    None
                }
                // The Raft core acted on it when it was appended; the state machine only
                // advances its applied index.
                EntryKind::Config => {
                    self.sm.apply_empty(entry.index);
                    if let Ok(membership) = Membership::decode(&entry.data) {
                        let index = entry.index;
                        self.observations
                            .push(Observation::MembershipChanged { index, membership });
                    }
                    None
                }
            };
            if let Some(token) = ours {
                let response = match outcome {
                    Some(outcome) => ClientResponse::from(outcome),
                    // A membership change: committed and applied.
                    None if entry.kind == EntryKind::Config => {
                        ClientResponse::Members(self.member_list())
                    }
                    None => {
                        ClientResponse::Err(ClientError::Unavailable(LEADERSHIP_CHANGED.into()))
                    }
                };
                self.answer(token, response);
            }
            for token in replaced {
                self.answer_error(token, ClientError::NotApplied(LEADERSHIP_CHANGED.into()));
            }
        }
        self.raw.on_applied(last.index);
        let entries = entries.len();
        self.observations.push(Observation::Applied { entries });
    }

    fn serve_reads(&mut self) {
        for read in self.requests.reads_ready(self.sm.applied_index()) {
            let response = read_response(&self.sm, &read.op);
            self.answer(read.token, response);
        }
    }

    // ------------------------------------------------------------------ snapshots

    /// Installs the snapshot the leader sent (the Raft core already replaced its log): the
    /// file first, then the WAL reset behind every earlier command. Writes waiting at or below
    /// it get `Timeout`: whether they are in it is unknown here.
    fn install_snapshot(&mut self, meta: SnapshotMeta) {
        let index = meta.last_index;
        let Some(sm) = self.snapshots.take_received(&meta) else {
            // handle_message steps InstallSnapshot only when the snapshot is held.
            panic!("the Raft core installs snapshot {index}, which was never received");
        };
        assert_eq!(
            sm.applied_index(),
            index,
            "received snapshot's state is not at its index"
        );
        self.sm = sm;
        self.actions.push(Action::InstallSnapshotFile { meta });
        self.wal(WalCommand::InstallSnapshot(index));
        for old in self.snapshots.drop_received_up_to(index) {
            self.discard_received(old);
        }
        for token in self.requests.covered_by_snapshot(index) {
            self.answer_error(token, ClientError::Timeout);
        }
        self.observations
            .push(Observation::SnapshotInstalled { index });
    }

    fn discard_received(&mut self, meta: SnapshotMeta) {
        let index = meta.last_index;
        self.observations
            .push(Observation::SnapshotDiscarded { index });
        self.actions.push(Action::DiscardSnapshotFile { meta });
    }

    /// Every `snapshot_entries` applied entries: hand a clone of the state machine to the
    /// driver to write; the log is compacted once the file is durable
    /// (`handle_snapshot_taken`).
    ///
    /// The voters take turns: writing a large snapshot takes the disk and a core for seconds,
    /// and if every node wrote at once, every quorum would include a node that is writing. So
    /// each cycle of `snapshot_entries` indexes is cut into one window per voter (the same on
    /// every node: it depends only on the index), and a node snapshots in its own window.
    fn maybe_snapshot(&mut self) {
        let applied = self.sm.applied_index();
        // Windows passed while a snapshot is written (or while blocked below) are spent: only
        // a window the applied index jumped over since the last look is caught up on.
        let checked = self.snapshots.checked_applied.replace(applied);
        let from = checked.unwrap_or(applied.saturating_sub(1));
        let status = self.raw.status();
        let snapshot_index = status.snapshot_index;
        let every = self.config.snapshot_entries;
        let voters = &self.raw.membership().voters;
        let due = snapshot_due(from, applied, snapshot_index, every, self.id, voters);
        if self.snapshots.taking || !due {
            return;
        }
        // One snapshot waiting to compact the log is enough (see `maybe_compact`).
        if self.snapshots.compaction_deferred.is_some() {
            return;
        }
        if self.catching_up(applied, snapshot_index, status.leader_commit_index) {
            return;
        }
        // The configuration in force at `applied`, which may differ from the newest one.
        let Some(meta) = self.raw.snapshot_meta(applied) else {
            return;
        };
        // O(1): the clone shares the map's nodes (see `StateMachine`).
        let state = Box::new(self.sm.clone());
        self.snapshots.taking = true;
        self.actions.push(Action::TakeSnapshot { meta, state });
    }

    /// Whether this node is replaying a backlog of more than a snapshot interval (a follower
    /// that installed the leader's snapshot and now applies the log after it), not for longer
    /// than `COMPACTION_DEFERRED_CYCLES_MAX` intervals. A snapshot started now would hold every
    /// value the replay overwrites, and copy every shard it writes, for as long as it is
    /// written (measured, `bench scale`: the wiped follower, 0.19 GB above the other nodes,
    /// 1.51x the state); its log stays small meanwhile (`log_memory_bytes_max`).
    fn catching_up(&self, applied: Index, snapshot_index: Index, leader_commit: Index) -> bool {
        let every = self.config.snapshot_entries;
        let backlog = leader_commit.saturating_sub(applied);
        let since = applied.saturating_sub(snapshot_index);
        backlog > every && since < every.saturating_mul(COMPACTION_DEFERRED_CYCLES_MAX)
    }

    // ------------------------------------------------------------------ answers

    fn answer(&mut self, token: T, response: ClientResponse) {
        self.actions.push(Action::Answer { token, response });
    }

    fn answer_error(&mut self, token: T, error: ClientError) {
        self.answer(token, ClientResponse::Err(error));
    }

    fn deadline(&self) -> u64 {
        self.ticks + self.config.request_timeout_ticks
    }

    /// Why this node cannot take a write or a linearizable read now, if it cannot.
    fn refusal(&self) -> Option<ClientError> {
        if self.role != Role::Leader {
            let leader_hint = (self.leader != 0).then_some(self.leader);
            return Some(ClientError::NotLeader { leader_hint });
        }
        if self.requests.pending() >= self.config.requests_pending_max {
            let reason = "too many requests pending on this node; back off";
            return Some(ClientError::Unavailable(reason.into()));
        }
        None
    }

    fn node_status(&self) -> NodeStatus {
        let status = self.raw.status();
        let role = match status.role {
            Role::Leader => NodeRole::Leader,
            Role::Candidate | Role::PreCandidate => NodeRole::Candidate,
            Role::Follower => NodeRole::Follower,
        };
        NodeStatus {
            id: self.id,
            role,
            term: status.term,
            commit_index: status.commit_index,
            applied_index: self.sm.applied_index(),
            leader: (status.leader != 0).then_some(status.leader),
        }
    }

    // ------------------------------------------------------------------ shutdown

    /// Starts handing leadership to the most caught-up follower (graceful shutdown of a
    /// leader). Returns the target, or `None` if there is no one to hand over to.
    pub fn transfer_leadership(&mut self) -> Option<NodeId> {
        if self.role != Role::Leader {
            return None;
        }
        let id = self.id;
        let membership = self.raw.membership();
        let target = self
            .raw
            .progress()
            .into_iter()
            .filter(|(peer, ..)| *peer != id && membership.contains(*peer))
            .max_by_key(|(_, matched, ..)| *matched)
            .map(|(peer, ..)| peer)?;
        self.raw.transfer_leader(target).ok()?;
        Some(target)
    }

    /// Shutdown: every waiting request is answered. Writes get `Timeout` (they may still commit
    /// under the next leader); reads are refused.
    pub fn abandon_requests(&mut self) {
        if let Some(transfer) = self.transfer.take() {
            self.answer_error(transfer.token, ClientError::Timeout);
        }
        for token in self.requests.take_all() {
            self.answer_error(token, ClientError::Timeout);
        }
    }

    // ------------------------------------------------------------------ views

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Per-peer replication state (peer, match, next, state), for logs and status displays.
    pub fn progress(&self) -> Vec<(NodeId, Index, Index, String)> {
        self.raw.progress()
    }

    pub fn status(&self) -> Status {
        self.raw.status()
    }

    /// The configuration in force (possibly not committed yet).
    pub fn membership(&self) -> &Membership {
        self.raw.membership()
    }

    /// The Raft core, for checks and status displays.
    pub fn raw(&self) -> &RawNode {
        &self.raw
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    /// Whether acknowledgements or persist marks still wait for the WAL.
    pub fn is_waiting_for_wal(&self) -> bool {
        self.pipeline.is_waiting()
    }

    /// WAL commands handed out since the WAL was opened.
    pub fn wal_commands_total(&self) -> u64 {
        self.pipeline.submitted_total()
    }

    /// Requests waiting on this node.
    pub fn requests_pending(&self) -> usize {
        self.requests.pending()
    }

    /// Whether our own snapshot is being written.
    pub fn is_taking_snapshot(&self) -> bool {
        self.snapshots.taking
    }

    /// A read-only `Op` against local state, as a stale read would see it.
    pub fn read_local(&self, op: &Op) -> ClientResponse {
        read_response(&self.sm, op)
    }
}

/// What a client is told when the Raft core refuses a proposal.
fn propose_error(error: ProposeError) -> ClientError {
    match error {
        ProposeError::NotLeader { leader_hint } => ClientError::NotLeader { leader_hint },
        ProposeError::TooLarge { bytes, max } => ClientError::TooLarge {
            what: "command".into(),
            bytes,
            max,
        },
        ProposeError::ConfChange(error) => ClientError::BadRequest(error.to_string()),
        other => ClientError::Unavailable(other.to_string()),
    }
}

fn read_response(sm: &StateMachine, op: &Op) -> ClientResponse {
    match sm.read_local(op) {
        Ok(result) => ClientResponse::Ok(result),
        Err(error) => ClientResponse::Err(error.into()),
    }
}

/// Whether a node that applied up to `applied` (up to `from` when it last looked) and last
/// snapshotted at `snapshot_index` takes a snapshot now (see `NodeCore::maybe_snapshot`): in
/// its own window of the cycle, once at least the longest window's entries (the last voter's)
/// have gone by since its last one. So a node snapshots once per cycle (never twice in one
/// window), and the log holds at most `every` entries (plus those applied while a snapshot is
/// written): a node out of turn (one that installed the leader's snapshot, or restarted)
/// snapshots early in its next window rather than a whole cycle later. The log is most of a
/// node's memory after the state (`proto-docs/storage.md`): waiting for the window after next
/// let it grow to `every` plus a window.
///
/// An applied index that jumps (a follower that lagged applies what it missed in one batch)
/// may pass a whole window between two looks: the node snapshots then if any index in
/// `from + 1..=applied` was in its window with the longest window's entries gone by. Waiting
/// for its next window instead let the log grow to two cycles, and without further writes the
/// node never snapshotted (found by CI: a follower that caught up in one batch after 100
/// writes took no snapshot). A node that is not a voter, or a cycle too short to cut, has no
/// window: it snapshots every `every` entries.
fn snapshot_due(
    from: Index,
    applied: Index,
    snapshot_index: Index,
    every: u64,
    id: NodeId,
    voters: &[NodeId],
) -> bool {
    let since = applied.saturating_sub(snapshot_index);
    let position = voters.iter().position(|&voter| voter == id);
    let window = every / voters.len().max(1) as u64;
    let (Some(position), true) = (position, window > 0) else {
        return since >= every;
    };
    let last = voters.len() as u64 - 1;
    // The remainder of an uneven cut belongs to the last voter.
    let slot = |index: Index| ((index % every) / window).min(last);
    let longest_window = every - window * last;
    // The first index since the last look at which the longest window had gone by.
    let first = (from + 1).max(snapshot_index.saturating_add(longest_window));
    if first > applied {
        return false;
    }
    let position = position as u64;
    if slot(first) == position {
        return true;
    }
    // The start of the node's next window after `first` (less than a cycle after it).
    let mut start = first - first % every + position * window;
    if start < first {
        start += every;
    }
    start <= applied
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn voters_take_turns_at_snapshots() {
        let voters = [1, 2, 3];
        // Applying one index at a time: `applied`, last snapshot at `snapshot`.
        let due = |applied: u64, snapshot: u64, every: u64, id: u64| {
            snapshot_due(applied - 1, applied, snapshot, every, id, &voters)
        };
        // Who snapshots at `applied`, each having last snapshotted a cycle (90) earlier.
        let turns = |applied: u64| -> Vec<u64> {
            (1..=3)
                .filter(|&id| due(applied, applied.saturating_sub(90), 90, id))
                .collect()
        };
        assert_eq!(turns(90), vec![1]);
        assert_eq!(turns(119), vec![1]);
        assert_eq!(turns(120), vec![2]);
        assert_eq!(turns(150), vec![3]);
        assert_eq!(turns(179), vec![3]);
        assert_eq!(turns(90 * 7 + 31), vec![2]);
        // Once per window: node 2 snapshotted at 121, in its window (120..150).
        assert!(!due(149, 121, 90, 2));
        assert!(!due(179, 121, 90, 2));
        assert!(due(210, 121, 90, 2));
        // The first snapshots: node 2 at 30 (a window in, in its window), node 3 at 60, node 1
        // at 90.
        let first = |id: u64| (1..1000).find(|&a| due(a, 0, 90, id));
        assert_eq!(
            [first(1), first(2), first(3)],
            [Some(90), Some(30), Some(60)]
        );
        // A node out of turn (node 1 installed a snapshot at 61, in node 3's window) snapshots
        // in its next window once a window has gone by, not in the one after: the log never
        // holds more than a cycle (90) of entries.
        let next = |id: u64, from: u64| (from + 1..1000).find(|&a| due(a, from, 90, id));
        assert_eq!(next(1, 61), Some(91));
        for (id, from) in [
            (1, 0),
            (1, 29),
            (1, 30),
            (1, 61),
            (1, 89),
            (2, 5),
            (3, 59),
            (3, 89),
        ] {
            let at = next(id, from).unwrap();
            assert!(at - from <= 90, "node {id} from {from}: at {at}");
        }
        // Applied indexes that jump over the window (a follower catching up in one batch):
        // node 2 (window 30..60) went from 20 to 65: it snapshots at once, out of turn. A jump
        // that ends in its window, or passes it before the longest window has gone by since
        // its last snapshot, is the same as applying one at a time.
        let jump = |from: u64, applied: u64, snapshot: u64, id: u64| {
            snapshot_due(from, applied, snapshot, 90, id, &voters)
        };
        assert!(jump(20, 65, 0, 2));
        assert!(jump(20, 200, 0, 2) && jump(20, 200, 0, 1) && jump(20, 200, 0, 3));
        assert!(jump(20, 35, 0, 2) && !jump(20, 35, 0, 1));
        assert!(
            jump(20, 65, 20, 2),
            "at 50, a window (30) after its snapshot at 20"
        );
        assert!(
            !jump(41, 65, 40, 2),
            "not a window since its snapshot at 40"
        );
        assert!(jump(20, 65, 29, 2) && !jump(20, 65, 31, 2));
        assert!(!jump(65, 100, 0, 2), "its window was before the last look");
        assert!(jump(65, 125, 0, 2), "120: its next window");
        // What the node test saw: 40 a cycle (windows of 13, 13, 14), node 1 applied 1..=101
        // at once.
        assert!(snapshot_due(1, 101, 0, 40, 1, &voters));
        assert!(!snapshot_due(1, 101, 95, 40, 1, &voters));
        // A node that spent its window writing a snapshot (it looked at every index meanwhile)
        // waits for its next window: voters keep taking turns when a snapshot takes longer
        // than a cycle (`bench scale`: 8M keys, 100k entries a cycle, 15 s a snapshot).
        let free_at = |from: u64| (from + 1..1000).find(|&a| due(a, 30, 90, 2));
        assert_eq!(free_at(200), Some(210));
        // Applying one index at a time, a node is never out of turn: from a snapshot in its
        // window, the next one is in its window too, even or uneven cut.
        for every in [90, 100] {
            let window = every / 3;
            for id in 1..=3u64 {
                let slot = |a: u64| ((a % every) / window).min(2) + 1;
                for from in (every..3 * every).filter(|&from| slot(from) == id) {
                    let at = (from + 1..10 * every)
                        .find(|&a| due(a, from, every, id))
                        .unwrap();
                    assert_eq!(
                        slot(at),
                        id,
                        "every {every}, node {id} from {from}: at {at}"
                    );
                }
            }
        }
        // An uneven cut: the remainder (index 99 of 100 = 3 x 33 + 1) is the last voter's, and
        // the last voter does not snapshot twice in its longer window (66..100).
        assert!(due(199, 100, 100, 3));
        assert!(!due(199, 100, 100, 1));
        assert!(!due(199, 166, 100, 3));
        // No window to cut, or not a voter: every `every` entries.
        assert!(due(3, 1, 2, 1) && due(3, 1, 2, 2));
        assert!(!due(3, 2, 2, 1));
        assert!(due(95, 5, 90, 9) && !due(94, 5, 90, 9));
    }
}
