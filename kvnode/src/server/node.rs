//! The driver: one task per node that feeds the Raft core and performs its `Ready`s. It owns
//! the core, the state machine, the WAL front and the transport handle; everything runs on one
//! single-threaded runtime, and the only other threads are the WAL's (fsync) and snapshot
//! writes (`spawn_blocking`).
//!
//! Durability order (proto-docs/durability.md): a Ready's `messages` leave at once; its writes
//! go to the WAL's group commit; its `persisted_messages` wait in `persist_waits` until the WAL
//! reports the write durable, and only then `on_persisted` is called. Client writes are
//! answered when their entry is applied, which happens only after it is committed, which needs
//! a majority's durable acknowledgements.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::metrics as m;
use super::ServerError;
use kvclient::config::ClusterConfig;
use kvraft::{
    Entry, EntryKind, Index, Message, MessageBody, NodeId, ProposeError, RawNode, ReadIndexError,
    Ready, Role, SnapshotMeta, Term,
};
use kvstate::client_proto::{
    decode_request, encode_response, ClientError, ClientRequest, ClientResponse, NodeRole,
    NodeStatus, RequestKind,
};
use kvstate::command::Command;
use kvstate::ops::Op;
use kvstate::state::StateMachine;
use kvstorage::snapshot::SnapshotStore;
use kvstorage::wal::{Durable, SubmitError, Wal, WalError, WriteBatch};
use kvtransport::{Inbound, Transport};

/// Inbound events handled before the driver turns to the core's Ready (batching window).
const INBOUND_BATCH_MAX: usize = 4096;
/// Snapshot files received from leaders and not yet installed, kept at most.
const RECEIVED_SNAPSHOTS_MAX: usize = 2;
/// How long a leader waits for a leadership transfer on shutdown.
const SHUTDOWN_TRANSFER_MS_MAX: u64 = 2_000;

/// A write waiting for its entry to be applied.
struct Proposal {
    index: Index,
    term: Term,
    reply: oneshot::Sender<Bytes>,
    started: Instant,
}

/// A linearizable read waiting for its ReadIndex round or for the apply to catch up.
struct Read {
    op: Op,
    reply: oneshot::Sender<Bytes>,
    started: Instant,
}

/// Persisted messages waiting for the WAL commands up to `commands` to be durable.
struct PersistWait {
    commands: u64,
    messages: Vec<Message>,
    mark: (Index, Term),
}

enum WalCommand {
    Batch(WriteBatch),
    InstallSnapshot(Index),
    Compact(Index),
}

pub(super) struct Node {
    id: NodeId,
    config: ClusterConfig,
    raw: RawNode,
    sm: StateMachine,
    transport: Transport,
    inbound: mpsc::Receiver<Inbound>,
    wal: Wal,
    durable: mpsc::UnboundedReceiver<Result<Durable, WalError>>,
    /// WAL commands that found the queue full; retried before any new one, in order.
    wal_backlog: VecDeque<WalCommand>,
    wal_commands_submitted: u64,
    wal_submit_times: VecDeque<(u64, Instant)>,
    persist_waits: VecDeque<PersistWait>,
    snapshots: Arc<Mutex<SnapshotStore>>,
    snapshot_in_progress: bool,
    snapshot_done_tx: mpsc::UnboundedSender<Result<SnapshotMeta, String>>,
    snapshot_done: mpsc::UnboundedReceiver<Result<SnapshotMeta, String>>,
    /// Received snapshot files by (index, term), waiting for the leader's InstallSnapshot.
    received_snapshots: Vec<(Index, Term, PathBuf)>,
    /// The leader's InstallSnapshot message per follower, sent once the file arrived.
    snapshot_messages: HashMap<NodeId, Message>,
    proposals: VecDeque<Proposal>,
    new_proposals: Vec<(Bytes, oneshot::Sender<Bytes>, Instant)>,
    new_reads: Vec<Read>,
    read_batches: HashMap<u64, Vec<Read>>,
    reads_waiting_apply: VecDeque<(Index, Vec<Read>)>,
    next_read_context: u64,
    role: Role,
    leader: NodeId,
    _data_dir: kvstorage::datadir::DataDir,
}

fn respond(reply: oneshot::Sender<Bytes>, response: &ClientResponse, started: Instant) {
    metrics::histogram!(m::CLIENT_REQUEST_LATENCY_US).record(started.elapsed().as_micros() as f64);
    match encode_response(response) {
        Ok(bytes) => {
            let _ = reply.send(Bytes::from(bytes));
        }
        Err(error) => tracing::error!("cannot encode a client response: {error}"),
    }
}

fn refuse(reply: oneshot::Sender<Bytes>, error: ClientError, started: Instant) {
    respond(reply, &ClientResponse::Err(error), started);
}

pub(super) struct NodeParts {
    pub raw: RawNode,
    pub sm: StateMachine,
    pub transport: Transport,
    pub inbound: mpsc::Receiver<Inbound>,
    pub wal: Wal,
    pub durable: mpsc::UnboundedReceiver<Result<Durable, WalError>>,
    pub snapshots: SnapshotStore,
    /// Held (locked) for as long as the node runs.
    pub data_dir: kvstorage::datadir::DataDir,
}

impl Node {
    pub(super) fn new(config: ClusterConfig, id: NodeId, parts: NodeParts) -> Node {
        let (snapshot_done_tx, snapshot_done) = mpsc::unbounded_channel();
        Node {
            id,
            config,
            raw: parts.raw,
            sm: parts.sm,
            transport: parts.transport,
            inbound: parts.inbound,
            wal: parts.wal,
            durable: parts.durable,
            wal_backlog: VecDeque::new(),
            wal_commands_submitted: 0,
            wal_submit_times: VecDeque::new(),
            persist_waits: VecDeque::new(),
            snapshots: Arc::new(Mutex::new(parts.snapshots)),
            snapshot_in_progress: false,
            snapshot_done_tx,
            snapshot_done,
            received_snapshots: Vec::new(),
            snapshot_messages: HashMap::new(),
            proposals: VecDeque::new(),
            new_proposals: Vec::new(),
            new_reads: Vec::new(),
            read_batches: HashMap::new(),
            reads_waiting_apply: VecDeque::new(),
            next_read_context: 1,
            role: Role::Follower,
            leader: 0,
            _data_dir: parts.data_dir,
        }
    }

    /// Runs until `shutdown` fires (then hands leadership over and flushes) or a fatal error.
    pub(super) async fn run(
        mut self,
        mut shutdown: oneshot::Receiver<()>,
    ) -> Result<(), ServerError> {
        m::register_all();
        let tick = Duration::from_millis(self.config.tick_ms);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(report) = self.durable.recv() => self.on_durable(report)?,
                // Before inbound: under a steady client load ticks (heartbeats, expiry) must
                // not starve. The ticker is ready only once per tick.
                _ = ticker.tick() => self.on_tick(),
                Some(event) = self.inbound.recv() => {
                    self.on_inbound(event);
                    for _ in 0..INBOUND_BATCH_MAX {
                        match self.inbound.try_recv() {
                            Ok(event) => self.on_inbound(event),
                            Err(_) => break,
                        }
                    }
                }
                Some(done) = self.snapshot_done.recv() => self.on_snapshot_taken(done)?,
            }
            while let Ok(report) = self.durable.try_recv() {
                self.on_durable(report)?;
            }
            self.drive()?;
        }
        self.shutdown().await
    }

    /// Feeds batched proposals and reads to the core and performs every Ready.
    fn drive(&mut self) -> Result<(), ServerError> {
        self.flush_proposals();
        self.flush_reads();
        while self.raw.has_ready() {
            let ready = self.raw.ready();
            self.handle_ready(ready)?;
        }
        self.retry_wal_backlog()
    }

    fn on_tick(&mut self) {
        self.raw.tick();
        self.expire_requests();
        let status = self.raw.status();
        metrics::gauge!(m::RAFT_COMMIT_INDEX).set(status.commit_index as f64);
        metrics::gauge!(m::RAFT_LAST_APPLIED).set(self.sm.applied_index() as f64);
        metrics::gauge!(m::RAFT_TERM).set(status.term as f64);
        let log_size = status.last_index + 1 - status.first_index;
        metrics::gauge!(m::RAFT_LOG_SIZE).set(log_size as f64);
        let refused = self.transport.stats().connections_refused_total();
        metrics::gauge!(m::TRANSPORT_CONNECTIONS_REFUSED_TOTAL).set(refused as f64);
    }

    /// Answers `Timeout` to requests older than the request timeout (their outcome is unknown:
    /// the entry may still commit; a retry with the same seq is deduplicated).
    fn expire_requests(&mut self) {
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        while self
            .proposals
            .front()
            .is_some_and(|p| p.started.elapsed() > timeout)
        {
            if let Some(p) = self.proposals.pop_front() {
                refuse(p.reply, ClientError::Timeout, p.started);
            }
        }
        while self
            .reads_waiting_apply
            .front()
            .is_some_and(|(_, reads)| reads.first().is_some_and(|r| r.started.elapsed() > timeout))
        {
            if let Some((_, reads)) = self.reads_waiting_apply.pop_front() {
                for read in reads {
                    refuse(read.reply, ClientError::Timeout, read.started);
                }
            }
        }
    }

    // ------------------------------------------------------------------ inbound

    fn on_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Raft(message) => self.on_raft_message(message),
            Inbound::Client { request, reply, .. } => self.on_client(request, reply),
            Inbound::Snapshot { meta, path, .. } => {
                self.received_snapshots
                    .push((meta.last_index, meta.last_term, path));
                while self.received_snapshots.len() > RECEIVED_SNAPSHOTS_MAX {
                    let (_, _, old) = self.received_snapshots.remove(0);
                    let _ = std::fs::remove_file(old);
                }
            }
            Inbound::SnapshotSent { to, ok, .. } => {
                let message = self.snapshot_messages.remove(&to);
                if ok {
                    if let Some(message) = message {
                        self.transport.send(message);
                    }
                    metrics::counter!(m::RAFT_SNAPSHOTS_SENT_TOTAL).increment(1);
                }
                self.raw.report_snapshot(to, ok);
            }
        }
    }

    fn on_raft_message(&mut self, message: Message) {
        match &message.body {
            MessageBody::InstallSnapshot { meta } => {
                // Step it only once the file is here: the core replaces its log on this message.
                let present = self
                    .received_snapshots
                    .iter()
                    .any(|(i, t, _)| *i == meta.last_index && *t == meta.last_term);
                if !present {
                    tracing::warn!(
                        "InstallSnapshot {} without its file; dropped",
                        meta.last_index
                    );
                    return;
                }
            }
            MessageBody::AppendResponse {
                reject: Some(_), ..
            } => {
                metrics::counter!(m::RAFT_REPLICATION_FAILURES_TOTAL).increment(1);
            }
            _ => {}
        }
        if let Err(error) = self.raw.step(message) {
            tracing::warn!("dropped a raft message: {error}");
        }
    }

    fn on_client(&mut self, request: Bytes, reply: oneshot::Sender<Bytes>) {
        let started = Instant::now();
        metrics::counter!(m::CLIENT_REQUESTS_TOTAL).increment(1);
        let request = match decode_request(&request) {
            Ok(request) => request,
            Err(error) => {
                return refuse(reply, ClientError::BadRequest(error.to_string()), started)
            }
        };
        if let Err(error) = request.validate() {
            return refuse(reply, error, started);
        }
        let ClientRequest {
            client_id,
            seq,
            kind,
        } = request;
        match kind {
            RequestKind::Status => {
                let response = ClientResponse::Status(self.node_status());
                respond(reply, &response, started);
            }
            RequestKind::Read { op, stale: true } => {
                let response = match self.sm.read_local(&op) {
                    Ok(result) => ClientResponse::Ok(result),
                    Err(error) => ClientResponse::Err(error.into()),
                };
                respond(reply, &response, started);
            }
            RequestKind::Read { op, stale: false } => {
                if let Some(error) = self.not_leader() {
                    return refuse(reply, error, started);
                }
                if self.pending_requests() >= self.config.proposals_pending_max {
                    return refuse(reply, overloaded(), started);
                }
                self.new_reads.push(Read { op, reply, started });
            }
            RequestKind::Write { op } => {
                if let Some(error) = self.not_leader() {
                    return refuse(reply, error, started);
                }
                if self.pending_requests() >= self.config.proposals_pending_max {
                    return refuse(reply, overloaded(), started);
                }
                match (Command { client_id, seq, op }).encode() {
                    Ok(data) => self.new_proposals.push((Bytes::from(data), reply, started)),
                    Err(error) => {
                        refuse(reply, ClientError::BadRequest(error.to_string()), started)
                    }
                }
            }
        }
    }

    fn pending_requests(&self) -> usize {
        self.proposals.len() + self.new_proposals.len() + self.new_reads.len()
    }

    fn not_leader(&self) -> Option<ClientError> {
        if self.role == Role::Leader {
            return None;
        }
        let leader_hint = (self.leader != 0).then_some(self.leader);
        Some(ClientError::NotLeader { leader_hint })
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

    /// All writes that arrived since the last Ready become one batched append.
    fn flush_proposals(&mut self) {
        if self.new_proposals.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.new_proposals);
        let count = batch.len() as u64;
        let data: Vec<Bytes> = batch.iter().map(|(d, _, _)| d.clone()).collect();
        match self.raw.propose_batch(data) {
            Ok((last, term)) => {
                for (offset, (_, reply, started)) in batch.into_iter().enumerate() {
                    let index = last + 1 - count + offset as u64;
                    self.proposals.push_back(Proposal {
                        index,
                        term,
                        reply,
                        started,
                    });
                }
            }
            Err(error) => {
                let error = match error {
                    ProposeError::NotLeader { leader_hint } => {
                        ClientError::NotLeader { leader_hint }
                    }
                    ProposeError::TooLarge { bytes, max } => ClientError::TooLarge {
                        what: "command".into(),
                        bytes,
                        max,
                    },
                    other => ClientError::Unavailable(other.to_string()),
                };
                for (_, reply, started) in batch {
                    refuse(reply, error.clone(), started);
                }
            }
        }
    }

    /// All linearizable reads that arrived since the last Ready share one ReadIndex round.
    fn flush_reads(&mut self) {
        if self.new_reads.is_empty() {
            return;
        }
        let context = self.next_read_context;
        match self.raw.read_index(context) {
            Ok(()) => {
                self.next_read_context += 1;
                let reads = std::mem::take(&mut self.new_reads);
                self.read_batches.insert(context, reads);
            }
            // A new leader's no-op commits within a round trip: keep the reads and retry then.
            Err(ReadIndexError::NoCommitInTerm) => {}
            Err(error) => {
                let error = match error {
                    ReadIndexError::NotLeader { leader_hint } => {
                        ClientError::NotLeader { leader_hint }
                    }
                    other => ClientError::Unavailable(other.to_string()),
                };
                for read in std::mem::take(&mut self.new_reads) {
                    refuse(read.reply, error.clone(), read.started);
                }
            }
        }
    }

    // ------------------------------------------------------------------ Ready

    fn handle_ready(&mut self, mut ready: Ready) -> Result<(), ServerError> {
        if let Some(soft) = ready.soft_state {
            self.on_soft_state(soft.role, soft.leader);
        }
        for message in std::mem::take(&mut ready.messages) {
            self.send(message);
        }
        self.persist(&mut ready)?;
        self.apply(&ready.committed_entries);
        for state in &ready.read_states {
            if let Some(reads) = self.read_batches.remove(&state.context) {
                self.reads_waiting_apply.push_back((state.index, reads));
            }
        }
        for context in &ready.dropped_reads {
            if let Some(reads) = self.read_batches.remove(context) {
                let error = self
                    .not_leader()
                    .unwrap_or(ClientError::NotLeader { leader_hint: None });
                for read in reads {
                    refuse(read.reply, error.clone(), read.started);
                }
            }
        }
        self.serve_reads();
        self.maybe_snapshot();
        Ok(())
    }

    fn on_soft_state(&mut self, role: Role, leader: NodeId) {
        if role == Role::Candidate && self.role != Role::Candidate {
            metrics::counter!(m::RAFT_ELECTIONS_TOTAL).increment(1);
        }
        let code = match role {
            Role::Follower => 0.0,
            Role::PreCandidate | Role::Candidate => 1.0,
            Role::Leader => 2.0,
        };
        metrics::gauge!(m::RAFT_ROLE).set(code);
        tracing::info!(node = self.id, ?role, leader, "role changed");
        self.role = role;
        self.leader = leader;
        if role != Role::Leader {
            let error = ClientError::NotLeader {
                leader_hint: (leader != 0).then_some(leader),
            };
            for (_, reply, started) in std::mem::take(&mut self.new_proposals) {
                refuse(reply, error.clone(), started);
            }
            for read in std::mem::take(&mut self.new_reads) {
                refuse(read.reply, error.clone(), read.started);
            }
        }
    }

    fn send(&mut self, message: Message) {
        if let MessageBody::InstallSnapshot { meta } = &message.body {
            let latest = self.snapshots.lock().ok().and_then(|store| store.latest());
            match latest {
                Some((file_meta, path)) if file_meta.last_index == meta.last_index => {
                    let to = message.to;
                    self.snapshot_messages.insert(to, message);
                    self.transport.send_snapshot(to, file_meta, path);
                }
                _ => {
                    tracing::error!("no snapshot file for index {}", meta.last_index);
                    self.raw.report_snapshot(message.to, false);
                }
            }
            return;
        }
        self.transport.send(message);
    }

    fn persist(&mut self, ready: &mut Ready) -> Result<(), ServerError> {
        if let Some(meta) = ready.snapshot.take() {
            self.install_snapshot(&meta)?;
            self.submit(WalCommand::InstallSnapshot(meta.last_index))?;
        }
        let entries = std::mem::take(&mut ready.entries);
        if !entries.is_empty() || ready.hard_state.is_some() {
            metrics::histogram!(m::WAL_BATCH_ENTRIES).record(entries.len() as f64);
            let batch = WriteBatch {
                entries,
                hard_state: ready.hard_state,
            };
            self.submit(WalCommand::Batch(batch))?;
        }
        let messages = std::mem::take(&mut ready.persisted_messages);
        if self.persist_waits.is_empty() && !ready.must_persist() {
            for message in messages {
                self.send(message);
            }
            self.raw.on_persisted(ready.persist_mark);
            return Ok(());
        }
        let commands = self.wal_commands_submitted;
        self.persist_waits.push_back(PersistWait {
            commands,
            messages,
            mark: ready.persist_mark,
        });
        Ok(())
    }

    fn submit(&mut self, command: WalCommand) -> Result<(), ServerError> {
        self.wal_commands_submitted += 1;
        self.wal_submit_times
            .push_back((self.wal_commands_submitted, Instant::now()));
        self.wal_backlog.push_back(command);
        self.retry_wal_backlog()
    }

    fn retry_wal_backlog(&mut self) -> Result<(), ServerError> {
        while let Some(command) = self.wal_backlog.pop_front() {
            let result = match &command {
                WalCommand::Batch(batch) => self.wal.submit(batch.clone()),
                WalCommand::InstallSnapshot(index) => self.wal.install_snapshot(*index),
                WalCommand::Compact(index) => self.wal.compact(*index),
            };
            match result {
                Ok(()) => {}
                Err(SubmitError::QueueFull { .. }) => {
                    // The disk is behind: keep the order, retry after the next durable report.
                    self.wal_backlog.push_front(command);
                    return Ok(());
                }
                Err(SubmitError::Closed) => return Err(ServerError::WalStopped),
            }
        }
        Ok(())
    }

    fn on_durable(&mut self, report: Result<Durable, WalError>) -> Result<(), ServerError> {
        let durable = report.map_err(|e| ServerError::Wal(e.to_string()))?;
        let total = durable.commands_durable_total;
        while self
            .wal_submit_times
            .front()
            .is_some_and(|(count, _)| *count <= total)
        {
            if let Some((_, at)) = self.wal_submit_times.pop_front() {
                metrics::histogram!(m::WAL_FSYNC_LATENCY_US)
                    .record(at.elapsed().as_micros() as f64);
            }
        }
        while self
            .persist_waits
            .front()
            .is_some_and(|w| w.commands <= total)
        {
            if let Some(wait) = self.persist_waits.pop_front() {
                for message in wait.messages {
                    self.send(message);
                }
                self.raw.on_persisted(wait.mark);
            }
        }
        self.retry_wal_backlog()
    }

    // ------------------------------------------------------------------ apply

    fn apply(&mut self, entries: &[Entry]) {
        let Some(last) = entries.last() else { return };
        metrics::histogram!(m::APPLY_BATCH_ENTRIES).record(entries.len() as f64);
        for entry in entries {
            let outcome = match entry.kind {
                EntryKind::Normal => Some(self.sm.apply(entry.index, &entry.data)),
                EntryKind::Noop => {
                    self.sm.apply_empty(entry.index);
                    None
                }
            };
            self.answer_proposals(entry, outcome);
        }
        self.raw.on_applied(last.index);
    }

    fn answer_proposals(&mut self, entry: &Entry, outcome: Option<kvstate::state::ApplyOutcome>) {
        while self
            .proposals
            .front()
            .is_some_and(|p| p.index <= entry.index)
        {
            let Some(proposal) = self.proposals.pop_front() else {
                break;
            };
            if proposal.index == entry.index && proposal.term == entry.term {
                if let Some(outcome) = outcome.clone() {
                    respond(
                        proposal.reply,
                        &ClientResponse::from(outcome),
                        proposal.started,
                    );
                }
                continue;
            }
            // Another leader's entry took this index: ours was never applied.
            let error = ClientError::Unavailable("leadership changed before commit; retry".into());
            refuse(proposal.reply, error, proposal.started);
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.sm.applied_index();
        while self
            .reads_waiting_apply
            .front()
            .is_some_and(|(index, _)| *index <= applied)
        {
            let Some((_, reads)) = self.reads_waiting_apply.pop_front() else {
                break;
            };
            for read in reads {
                let response = match self.sm.read_local(&read.op) {
                    Ok(result) => ClientResponse::Ok(result),
                    Err(error) => ClientResponse::Err(error.into()),
                };
                respond(read.reply, &response, read.started);
            }
        }
    }

    // ------------------------------------------------------------------ snapshots

    /// Installs a snapshot received from the leader into the state machine (the core already
    /// replaced its log). Waiting writes at or below it get `Timeout`: whether they are in it is
    /// unknown here.
    fn install_snapshot(&mut self, meta: &SnapshotMeta) -> Result<(), ServerError> {
        let position = self
            .received_snapshots
            .iter()
            .position(|(i, t, _)| *i == meta.last_index && *t == meta.last_term)
            .ok_or_else(|| ServerError::Snapshot(format!("file {} missing", meta.last_index)))?;
        let (_, _, path) = self.received_snapshots.remove(position);
        let snapshot_error = |e: String| ServerError::Snapshot(e);
        let mut store = self
            .snapshots
            .lock()
            .map_err(|e| snapshot_error(e.to_string()))?;
        store
            .install_file(&path)
            .map_err(|e| snapshot_error(e.to_string()))?;
        let (_, installed) = store
            .latest()
            .ok_or_else(|| snapshot_error("vanished".into()))?;
        let (_, mut body) = store
            .open_body(&installed)
            .map_err(|e| snapshot_error(e.to_string()))?;
        drop(store);
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut body, &mut bytes)
            .map_err(|e| snapshot_error(e.to_string()))?;
        self.sm = StateMachine::restore(&bytes).map_err(|e| snapshot_error(e.to_string()))?;
        while self
            .proposals
            .front()
            .is_some_and(|p| p.index <= meta.last_index)
        {
            if let Some(p) = self.proposals.pop_front() {
                refuse(p.reply, ClientError::Timeout, p.started);
            }
        }
        metrics::counter!(m::RAFT_SNAPSHOTS_INSTALLED_TOTAL).increment(1);
        tracing::info!(
            node = self.id,
            index = meta.last_index,
            "installed snapshot from leader"
        );
        Ok(())
    }

    /// Every `snapshot_entries` applied entries: serialize the state machine here (cheap,
    /// in memory), write and fsync the file on a blocking thread, then compact.
    fn maybe_snapshot(&mut self) {
        let applied = self.sm.applied_index();
        let snapshot_index = self.raw.status().snapshot_index;
        if self.snapshot_in_progress || applied < snapshot_index + self.config.snapshot_entries {
            return;
        }
        let Some(last_term) = self.raw.log_term(applied) else {
            return;
        };
        let meta = SnapshotMeta {
            last_index: applied,
            last_term,
            membership: self.raw.membership().clone(),
        };
        let body = self.sm.snapshot();
        let store = Arc::clone(&self.snapshots);
        let done = self.snapshot_done_tx.clone();
        self.snapshot_in_progress = true;
        tokio::task::spawn_blocking(move || {
            let result = match store.lock() {
                Ok(mut store) => store
                    .write(&meta, body.as_slice())
                    .map(|_| meta)
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            let _ = done.send(result);
        });
    }

    fn on_snapshot_taken(&mut self, done: Result<SnapshotMeta, String>) -> Result<(), ServerError> {
        self.snapshot_in_progress = false;
        let meta = done.map_err(ServerError::Snapshot)?;
        // A snapshot installed from the leader meanwhile may be newer: the core knows.
        if meta.last_index <= self.raw.status().snapshot_index {
            return Ok(());
        }
        let index = meta.last_index;
        self.raw.compact(meta);
        self.submit(WalCommand::Compact(index))?;
        metrics::counter!(m::RAFT_SNAPSHOTS_TAKEN_TOTAL).increment(1);
        tracing::info!(node = self.id, index, "took snapshot, compacted log");
        Ok(())
    }

    // ------------------------------------------------------------------ shutdown

    async fn shutdown(mut self) -> Result<(), ServerError> {
        if self.role == Role::Leader {
            self.transfer_leadership().await?;
        }
        // Proposed entries may still commit under the next leader: their outcome is unknown.
        for p in std::mem::take(&mut self.proposals) {
            refuse(p.reply, ClientError::Timeout, p.started);
        }
        // Let the WAL finish what was queued; persisted messages may still go out.
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_TRANSFER_MS_MAX);
        while !self.persist_waits.is_empty() && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(50), self.durable.recv()).await {
                Ok(Some(report)) => self.on_durable(report)?,
                Ok(None) | Err(_) => break,
            }
        }
        self.transport.shutdown().await;
        self.wal
            .close()
            .map_err(|e| ServerError::Wal(e.to_string()))?;
        tracing::info!(node = self.id, "stopped");
        Ok(())
    }

    /// Hands leadership to the most caught-up follower so the cluster does not wait an election
    /// timeout for a new leader.
    async fn transfer_leadership(&mut self) -> Result<(), ServerError> {
        let target = self
            .raw
            .progress()
            .into_iter()
            .filter(|(id, ..)| *id != self.id)
            .max_by_key(|(_, matched, ..)| *matched)
            .map(|(id, ..)| id);
        let Some(target) = target else { return Ok(()) };
        if self.raw.transfer_leader(target).is_err() {
            return Ok(());
        }
        tracing::info!(node = self.id, target, "shutdown: transferring leadership");
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_TRANSFER_MS_MAX);
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.tick_ms));
        while self.role == Role::Leader && Instant::now() < deadline {
            tokio::select! {
                Some(report) = self.durable.recv() => self.on_durable(report)?,
                Some(event) = self.inbound.recv() => self.on_inbound(event),
                _ = ticker.tick() => self.raw.tick(),
            }
            self.drive()?;
        }
        Ok(())
    }
}

fn overloaded() -> ClientError {
    ClientError::Unavailable("too many requests pending on this node; back off".into())
}
