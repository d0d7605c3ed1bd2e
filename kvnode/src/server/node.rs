//! The driver: a thin tokio loop around the sans-IO `kvcore::NodeCore`. It feeds the core
//! (client requests, peer messages, WAL durable reports, snapshot files, ticks) and performs
//! what the core asks, in order (`kvcore::Action`). It decides nothing itself: every rule about
//! what must be durable before which message or answer leaves lives in the core, which the
//! simulator drives too.
//!
//! Threads: this task on one single-threaded runtime; the WAL's writer thread (fsync: a
//! leader's always, a follower's only while it is busy, see `Node::retry_wal_backlog`); snapshot
//! files written and decoded on threads of their own at a lower CPU priority
//! (`spawn_background`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvclient::config::ClusterConfig;
use kvcore::{Action, NodeCore, Observation, WalCommand};
use kvraft::{NodeId, Role, SnapshotMeta};
use kvstate::client_proto::{encode_response, ClientResponse};
use kvstate::StateMachine;
use kvstorage::snapshot::SnapshotStore;
use kvstorage::wal::load::LoadCursor;
use kvstorage::wal::{Durable, SubmitError, Wal, WalError, WriteBatch, WriteNowError};
use kvtransport::{Inbound, Transport};
use tokio::sync::{mpsc, oneshot};

use super::metrics as m;
use super::ServerError;

/// Inbound events handled before the driver turns to the core (batching window). When a
/// burst holds more, the driver performs what the first part produced (the leader's append
/// goes out, its WAL write starts) and yields, so the connection tasks send it before the
/// rest of the burst is handled: followers and the disk start on the first part while the
/// leader takes the second. Without the cut, a wave of 64 client requests went through the
/// leader, then the followers, then back, one stage after another. Measured (bench put, 64
/// clients, embedded cluster, 6 interleaved rounds of 8 s): 64.7k ops/s with a window of 4096
/// and no yield; 79.7k with 32 and the yield, 63.7k without the yield (both of these with
/// the client's one-buffer writes and an experimental 16 KiB packet size, since dropped).
/// `bench compare` put against etcd: 6.06x before, 6.81x and 6.58x after.
const INBOUND_BATCH_MAX: usize = 32;
/// How often the driver re-resolves its peers anyway (see `Node::resolve_peers`).
const PEERS_RESOLVE_INTERVAL_MS: u64 = 1_000;
/// How long a leader waits for a leadership transfer on shutdown.
const SHUTDOWN_TRANSFER_MS_MAX: u64 = 2_000;

type LoadedSnapshot = (SnapshotMeta, PathBuf, Result<StateMachine, String>);
/// Entries read back from the WAL for a follower: (follower, first index, entries, where the
/// read stopped).
type LoadedEntries = (
    NodeId,
    kvraft::Index,
    Vec<kvraft::Entry>,
    Option<LoadCursor>,
);

/// The core's token for a client request: where the answer goes, when the request came, and
/// its operation (the metrics label, read from the frame at the edge: the core knows nothing
/// of metrics).
pub(super) struct Reply {
    sender: kvtransport::ClientReply,
    started: Instant,
    op: &'static str,
}

pub(super) struct NodeParts {
    pub core: NodeCore<Reply>,
    pub transport: Transport,
    pub inbound: mpsc::Receiver<Inbound>,
    pub wal: Wal,
    pub durable: mpsc::UnboundedReceiver<Result<Durable, WalError>>,
    pub snapshots: SnapshotStore,
    /// The WAL's largest record (`WalConfig::record_bytes_max`), for reading entries back.
    pub wal_record_bytes_max: u64,
    /// Held (locked) for as long as the node runs.
    pub data_dir: kvstorage::datadir::DataDir,
}

pub(super) struct Node {
    id: NodeId,
    config: ClusterConfig,
    core: NodeCore<Reply>,
    transport: Transport,
    inbound: mpsc::Receiver<Inbound>,
    wal: Wal,
    durable: mpsc::UnboundedReceiver<Result<Durable, WalError>>,
    /// WAL commands that found the queue full; retried before any new one, in order.
    wal_backlog: VecDeque<WalCommand>,
    /// Commands handed to the WAL (`submit`), counted as the WAL counts them, and when (fsync
    /// latency metric).
    wal_submitted: u64,
    /// The WAL's count in the last report handled (`on_durable`).
    wal_reported: u64,
    wal_submit_times: VecDeque<(u64, Instant)>,
    snapshots: Arc<Mutex<SnapshotStore>>,
    snapshot_done_tx: mpsc::UnboundedSender<Result<SnapshotMeta, String>>,
    snapshot_done: mpsc::UnboundedReceiver<Result<SnapshotMeta, String>>,
    /// Received snapshot files decoded on a blocking thread: (meta, path, state or error).
    snapshot_loaded_tx: mpsc::UnboundedSender<LoadedSnapshot>,
    snapshot_loaded: mpsc::UnboundedReceiver<LoadedSnapshot>,
    /// Files of the received snapshots the core holds.
    received_files: Vec<(SnapshotMeta, PathBuf)>,
    /// Received snapshots being decoded or queued to be. The core knows of each
    /// (`handle_snapshot_arriving`): it holds the leader's `InstallSnapshot` for it until the
    /// state is decoded, instead of dropping it (the leader would send the whole file again,
    /// and a second decode would hold a second copy of the state: measured 7.4 GB on a
    /// follower catching up from a 2.1 GB state, 3 decodes at once), and leaves appends our
    /// log cannot take unanswered meanwhile. At most one decodes at a time (each holds a whole
    /// state); `queued` is the newest one waiting (its meta is in `loading` too), an older
    /// waiting one is deleted.
    loading: Vec<SnapshotMeta>,
    queued: Option<(SnapshotMeta, PathBuf)>,
    /// Evicted entries read back from the WAL on a blocking thread (`Action::LoadEntries`),
    /// and where each follower's last read stopped (its next read starts there).
    entries_loaded_tx: mpsc::UnboundedSender<LoadedEntries>,
    entries_loaded: mpsc::UnboundedReceiver<LoadedEntries>,
    load_cursors: std::collections::BTreeMap<NodeId, LoadCursor>,
    wal_record_bytes_max: u64,
    metrics: m::NodeMetrics,
    /// The configuration index the transport's peers were last resolved for.
    peers_config_index: Option<kvraft::Index>,
    /// When they were last resolved, and whether a member's address was missing then.
    peers_resolved_at: Instant,
    peers_unresolved: Vec<NodeId>,
    /// The leader known when they were last resolved.
    peers_leader: NodeId,
    _data_dir: kvstorage::datadir::DataDir,
}

/// The nice value of the snapshot threads: encoding or decoding a large state takes a core for
/// seconds, and the node's runtime (heartbeats, appends, answers) must come first.
const BACKGROUND_NICE: i32 = 10;

/// Runs `work` on a thread of its own at nice `BACKGROUND_NICE` (Linux: the nice value is per
/// thread). Priority is best effort: if it cannot be lowered, or the thread cannot be started,
/// the work runs anyway (on tokio's blocking pool).
fn spawn_background(name: &str, work: impl FnOnce() + Send + 'static) {
    let work = Arc::new(Mutex::new(Some(work)));
    let ours = Arc::clone(&work);
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // PRIO_PROCESS with no pid: on Linux, the calling thread only.
            if let Err(error) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
                tracing::debug!("cannot lower the priority of a snapshot thread: {error}");
            }
            if let Some(work) = ours.lock().ok().and_then(|mut slot| slot.take()) {
                work();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!("cannot start a snapshot thread ({error}): using the blocking pool");
        tokio::task::spawn_blocking(move || {
            if let Some(work) = work.lock().ok().and_then(|mut slot| slot.take()) {
                work();
            }
        });
    }
}

fn respond(reply: Reply, response: &ClientResponse, metrics: &mut m::NodeMetrics) {
    let seconds = reply.started.elapsed().as_secs_f64();
    metrics.request_answered(reply.op, response.outcome_name(), seconds);
    match encode_response(response) {
        Ok(bytes) => {
            let _ = reply.sender.send(Bytes::from(bytes));
        }
        Err(error) => tracing::error!("cannot encode a client response: {error}"),
    }
}

impl Node {
    pub(super) fn new(config: ClusterConfig, id: NodeId, parts: NodeParts) -> Node {
        let (snapshot_done_tx, snapshot_done) = mpsc::unbounded_channel();
        let (snapshot_loaded_tx, snapshot_loaded) = mpsc::unbounded_channel();
        let (entries_loaded_tx, entries_loaded) = mpsc::unbounded_channel();
        metrics::gauge!(m::RAFT_SNAPSHOT_IN_PROGRESS).set(0.0);
        Node {
            snapshot_loaded_tx,
            snapshot_loaded,
            id,
            config,
            core: parts.core,
            transport: parts.transport,
            inbound: parts.inbound,
            wal: parts.wal,
            durable: parts.durable,
            wal_backlog: VecDeque::new(),
            wal_submitted: 0,
            wal_reported: 0,
            wal_submit_times: VecDeque::new(),
            snapshots: Arc::new(Mutex::new(parts.snapshots)),
            snapshot_done_tx,
            snapshot_done,
            received_files: Vec::new(),
            loading: Vec::new(),
            queued: None,
            entries_loaded_tx,
            entries_loaded,
            load_cursors: std::collections::BTreeMap::new(),
            wal_record_bytes_max: parts.wal_record_bytes_max,
            metrics: m::NodeMetrics::register(std::iter::empty()),
            peers_config_index: None,
            peers_resolved_at: Instant::now(),
            peers_unresolved: Vec::new(),
            peers_leader: 0,
            _data_dir: parts.data_dir,
        }
    }

    /// Runs until `shutdown` fires (then hands leadership over and flushes) or a fatal error.
    pub(super) async fn run(
        mut self,
        mut shutdown: oneshot::Receiver<()>,
    ) -> Result<(), ServerError> {
        m::register_all();
        // The node's recorder is installed now (it was not when `new` ran).
        let peers = self.config.nodes.iter().map(|node| node.id);
        self.metrics = m::NodeMetrics::register(peers.filter(|&peer| peer != self.id));
        // Recovery's WAL commands come first.
        self.perform()?;
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
                    for _ in 1..INBOUND_BATCH_MAX {
                        match self.inbound.try_recv() {
                            Ok(event) => self.on_inbound(event),
                            Err(_) => break,
                        }
                    }
                }
                Some(done) = self.snapshot_done.recv() => self.on_snapshot_taken(done)?,
                Some(loaded) = self.snapshot_loaded.recv() => self.on_snapshot_loaded(loaded),
                Some(loaded) = self.entries_loaded.recv() => self.on_entries_loaded(loaded),
            }
            while let Ok(report) = self.durable.try_recv() {
                self.on_durable(report)?;
            }
            self.perform_io()?;
            if self.core.has_committed_to_apply() {
                // The appends, acknowledgements and WAL writes just queued leave before the
                // apply, whose time is then off the commit path.
                tokio::task::yield_now().await;
            }
            self.perform_apply()?;
            if !self.inbound.is_empty() {
                // More of a burst is queued: let what was just sent leave first.
                tokio::task::yield_now().await;
            }
        }
        self.shutdown().await
    }

    fn on_tick(&mut self) {
        self.core.tick();
        let status = self.core.status();
        metrics::gauge!(m::RAFT_COMMIT_INDEX).set(status.commit_index as f64);
        let applied = self.core.state_machine().applied_index();
        metrics::gauge!(m::RAFT_LAST_APPLIED).set(applied as f64);
        metrics::gauge!(m::RAFT_TERM).set(status.term as f64);
        let log_entries = status.last_index + 1 - status.first_index;
        metrics::gauge!(m::RAFT_LOG_ENTRIES).set(log_entries as f64);
        let memory_bytes = self.core.raw().log_memory_bytes();
        metrics::gauge!(m::RAFT_LOG_MEMORY_BYTES).set(memory_bytes as f64);
        self.metrics.export_transport(&self.transport.stats());
        if self.peers_resolved_at.elapsed() >= Duration::from_millis(PEERS_RESOLVE_INTERVAL_MS) {
            self.resolve_peers();
        }
    }

    /// Makes the transport's peers follow the configuration in force: its members (voters,
    /// learners, both halves of a joint configuration), the nodes the leader still
    /// replicates to (removed ones, until they know), the leader (removed, until its removal
    /// commits), or, while this node has no configuration
    /// yet (it is joining), the config file's nodes. A member's address is the one replicated
    /// with `member add`, else the config file's. Runs when the configuration changes, every
    /// `PEERS_RESOLVE_INTERVAL_MS`, and after every drive while an address is missing (a
    /// configuration entry takes effect when appended, the address entry before it only when
    /// applied).
    fn resolve_peers(&mut self) {
        self.peers_resolved_at = Instant::now();
        let status = self.core.status();
        self.peers_config_index = Some(status.membership_index);
        self.peers_leader = status.leader;
        let mut ids: std::collections::BTreeSet<NodeId> =
            self.core.membership().members().into_iter().collect();
        if ids.is_empty() {
            ids.extend(self.config.nodes.iter().map(|n| n.id));
        }
        ids.extend(self.core.raw().progress().into_iter().map(|(id, ..)| id));
        // A leader that removed itself leads until the change commits: its followers must
        // still answer it.
        let leader = status.leader;
        if leader != 0 {
            ids.insert(leader);
        }
        ids.remove(&self.id);
        let mut peers = Vec::new();
        let mut unresolved = Vec::new();
        for id in ids {
            let replicated = (self.core.member_address(id)).and_then(|a| a.parse().ok());
            let from_file = (self.config.nodes.iter().find(|n| n.id == id)).map(|n| n.address);
            match replicated.or(from_file) {
                Some(addr) => peers.push(kvtransport::Peer {
                    id,
                    name: format!("n{id}"),
                    addr,
                }),
                None => unresolved.push(id),
            }
        }
        if !unresolved.is_empty() && unresolved != self.peers_unresolved {
            let ids: Vec<String> = unresolved.iter().map(|id| format!("n{id}")).collect();
            tracing::info!(
                node = self.id,
                "no address known yet for {} (waiting for the entry that carries it)",
                ids.join(", ")
            );
        }
        self.peers_unresolved = unresolved;
        if peers == self.transport.peers() {
            return;
        }
        for peer in &peers {
            self.metrics.add_peer(peer.id);
        }
        let names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
        tracing::info!(
            node = self.id,
            leader = status.leader,
            config_index = status.membership_index,
            "peers: {}",
            names.join(", ")
        );
        if let Err(error) = self.transport.set_peers(peers) {
            tracing::warn!(node = self.id, "cannot update the peers: {error}");
        }
    }

    /// Fills in the addresses of members of the initial configuration (the core knows only
    /// the replicated ones) from the config file.
    fn complete_member_list(&self, response: &mut ClientResponse) {
        if let ClientResponse::Members(list) = response {
            for member in &mut list.members {
                if member.address.is_none() {
                    member.address = (self.config.nodes.iter())
                        .find(|n| n.id == member.id)
                        .map(|n| n.address.to_string());
                }
            }
        }
    }

    fn on_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Raft(message) => {
                self.metrics.message_received(message.from);
                self.core.handle_message(message);
            }
            Inbound::Client {
                client,
                request,
                reply,
            } => {
                let op = kvstate::client_proto::request_op_name(&request);
                self.metrics.request_received(op);
                let token = Reply {
                    sender: reply,
                    started: Instant::now(),
                    op,
                };
                self.core.handle_client(token, &client, &request);
            }
            Inbound::Snapshot { meta, path, .. } => self.on_snapshot_received(meta, path),
            Inbound::PeerRestarted { peer } => self.core.handle_peer_restarted(peer),
            Inbound::SnapshotSent { to, ok, .. } => {
                if ok {
                    self.metrics.snapshot_sent(to);
                }
                self.core.handle_snapshot_sent(to, ok);
            }
        }
    }

    /// A snapshot file from a leader: decode it on a blocking thread (a large state must not
    /// stall this loop), then `on_snapshot_loaded`.
    fn on_snapshot_received(&mut self, meta: SnapshotMeta, path: PathBuf) {
        let applied = self.core.state_machine().applied_index();
        if meta.last_index <= applied {
            // Never installable (the core has applied past it, so it steps the leader's
            // InstallSnapshot for it without a file): decoding it would only hold another state.
            tracing::info!(
                "snapshot {} received at applied {applied}: deleted",
                meta.last_index
            );
            let _ = std::fs::remove_file(&path);
            return;
        }
        let loading = self.loading.contains(&meta);
        if loading || self.received_files.iter().any(|(m, _)| *m == meta) {
            // The same snapshot again (the leader's retry): the first copy is decoded or
            // being decoded, and a second decode would hold the state twice.
            tracing::info!(
                "snapshot {} received again: kept the first",
                meta.last_index
            );
            let _ = std::fs::remove_file(&path);
            return;
        }
        let decoding = !self.loading.is_empty();
        self.loading.push(meta.clone());
        self.core.handle_snapshot_arriving(meta.clone());
        if decoding {
            if let Some((older, file)) = self.queued.replace((meta, path)) {
                self.loading.retain(|m| *m != older);
                self.core.handle_snapshot_abandoned(&older);
                let _ = std::fs::remove_file(file);
            }
            return;
        }
        self.start_loading(meta, path);
    }

    fn start_loading(&mut self, meta: SnapshotMeta, path: PathBuf) {
        let store = Arc::clone(&self.snapshots);
        let loaded = self.snapshot_loaded_tx.clone();
        // A cheap clone: the decoded state shares the values this node already holds.
        let base = self.core.state_machine().clone();
        spawn_background("snapshot-loader", move || {
            let state = load_state_machine(&store, &path, &base);
            drop(base);
            let _ = loaded.send((meta, path, state));
        });
    }

    /// Hands a decoded snapshot to the core. A file that does not decode is deleted (the
    /// leader sends it again).
    fn on_snapshot_loaded(&mut self, (meta, path, state): LoadedSnapshot) {
        self.loading.retain(|m| *m != meta);
        match state {
            Ok(sm) => {
                self.received_files.push((meta.clone(), path));
                self.core.handle_snapshot_received(meta, sm);
            }
            Err(error) => {
                tracing::warn!("received snapshot {} is unusable: {error}", meta.last_index);
                self.core.handle_snapshot_abandoned(&meta);
                let _ = std::fs::remove_file(&path);
            }
        }
        if let Some((meta, path)) = self.queued.take() {
            self.start_loading(meta, path);
        }
    }

    fn on_snapshot_taken(&mut self, done: Result<SnapshotMeta, String>) -> Result<(), ServerError> {
        metrics::gauge!(m::RAFT_SNAPSHOT_IN_PROGRESS).set(0.0);
        let meta = done.map_err(ServerError::Snapshot)?;
        let dropped = self.core.handle_snapshot_taken(meta);
        free_entries(dropped);
        Ok(())
    }

    fn on_durable(&mut self, report: Result<Durable, WalError>) -> Result<(), ServerError> {
        let durable = report.map_err(|e| ServerError::Wal(e.to_string()))?;
        self.record_durable(durable);
        self.retry_wal_backlog()
    }

    /// Counts a WAL report and tells the core what is durable now.
    fn record_durable(&mut self, durable: Durable) {
        let total = durable.commands_durable_total;
        self.wal_reported = total;
        metrics::histogram!(m::WAL_FSYNC_DURATION_SECONDS)
            .record(durable.group_duration.as_secs_f64());
        if !durable.roll_duration.is_zero() {
            metrics::histogram!(m::WAL_SEGMENT_ROLL_DURATION_SECONDS)
                .record(durable.roll_duration.as_secs_f64());
        }
        while let Some(&(count, at)) = self.wal_submit_times.front() {
            if count > total {
                break;
            }
            self.wal_submit_times.pop_front();
            metrics::histogram!(m::WAL_WRITE_DURATION_SECONDS).record(at.elapsed().as_secs_f64());
        }
        self.core.handle_durable(total);
    }

    // ------------------------------------------------------------------ performing

    /// Drives the core and performs its actions until it has nothing more to do.
    fn perform(&mut self) -> Result<(), ServerError> {
        self.perform_io()?;
        self.perform_apply()
    }

    /// The rest of `perform` once `perform_io` is done: applies (`NodeCore::apply_committed`)
    /// and performs, driving again while that gave actions.
    fn perform_apply(&mut self) -> Result<(), ServerError> {
        loop {
            self.core.apply_committed();
            if !self.perform_actions()? {
                break;
            }
            self.perform_io()?;
        }
        let status = self.core.status();
        if self.peers_config_index != Some(status.membership_index)
            || self.peers_leader != status.leader
            || !self.peers_unresolved.is_empty()
        {
            self.resolve_peers();
        }
        self.retry_wal_backlog()
    }

    /// Drives the core without applying (`NodeCore::drive_io`) and performs its actions,
    /// until it has nothing more to do.
    fn perform_io(&mut self) -> Result<(), ServerError> {
        loop {
            self.core.drive_io();
            if !self.perform_actions()? {
                return Ok(());
            }
        }
    }

    /// Performs the actions the core holds; false if it held none.
    fn perform_actions(&mut self) -> Result<bool, ServerError> {
        // A compaction that waited for a follower may have happened in `apply_committed`.
        free_entries(self.core.take_dropped_entries());
        let actions = self.core.take_actions();
        self.observe();
        if actions.is_empty() {
            return Ok(false);
        }
        for action in actions {
            self.perform_one(action)?;
        }
        Ok(true)
    }

    fn perform_one(&mut self, action: Action<Reply>) -> Result<(), ServerError> {
        match action {
            Action::Send(message) => {
                self.metrics.message_sent(message.to);
                self.transport.send(message);
            }
            Action::SendSnapshot { to, meta } => self.send_snapshot(to, meta),
            Action::Wal(command) => self.submit(command)?,
            Action::InstallSnapshotFile { meta } => self.install_snapshot_file(&meta)?,
            Action::DiscardSnapshotFile { meta } => {
                if let Some(at) = self.received_files.iter().position(|(m, _)| *m == meta) {
                    let (_, path) = self.received_files.remove(at);
                    let _ = std::fs::remove_file(path);
                }
            }
            Action::TakeSnapshot { meta, state } => self.take_snapshot(meta, state),
            Action::LoadEntries(load) => self.load_entries(load),
            Action::Answer {
                token,
                mut response,
            } => {
                self.complete_member_list(&mut response);
                respond(token, &response, &mut self.metrics);
            }
        }
        Ok(())
    }

    fn send_snapshot(&mut self, to: NodeId, meta: SnapshotMeta) {
        // Usually the newest; the one before while the log's compaction waits for a follower.
        let file = self
            .snapshots
            .lock()
            .ok()
            .and_then(|store| store.find(&meta));
        match file {
            Some(path) => {
                let status = self.core.status();
                let progress = (self.core.progress().into_iter())
                    .find(|(peer, ..)| *peer == to)
                    .map(|(_, matched, next, _)| format!("match {matched}, next {next}"))
                    .unwrap_or_default();
                tracing::info!(
                    to,
                    index = meta.last_index,
                    "sending snapshot (our log: {}..={}; the follower: {progress})",
                    status.first_index,
                    status.last_index
                );
                self.transport.send_snapshot(to, meta, path)
            }
            None => {
                tracing::error!("no snapshot file for index {}", meta.last_index);
                self.core.handle_snapshot_sent(to, false);
            }
        }
    }

    fn submit(&mut self, command: WalCommand) -> Result<(), ServerError> {
        if let WalCommand::Append { entries, .. } = &command {
            metrics::histogram!(m::WAL_BATCH_ENTRIES).record(entries.len() as f64);
        }
        self.wal_submitted += 1;
        self.wal_submit_times
            .push_back((self.wal_submitted, Instant::now()));
        self.wal_backlog.push_back(command);
        self.retry_wal_backlog()
    }

    /// Hands the waiting WAL commands over in order. A node that does not lead writes an
    /// append on this thread instead (`Wal::write_now`) when nothing else is outstanding:
    /// every command before it reported durable, so the WAL thread is idle and the counts
    /// stay in order. Its report is handled at once, in the middle of performing the core's
    /// actions, as the simulator does too: the core has queued whatever waits for it.
    fn retry_wal_backlog(&mut self) -> Result<(), ServerError> {
        while let Some(command) = self.wal_backlog.pop_front() {
            let result = match &command {
                WalCommand::Append {
                    entries,
                    hard_state,
                } => {
                    let batch = WriteBatch {
                        entries: entries.clone(),
                        hard_state: *hard_state,
                    };
                    if let Some(durable) = self.write_now(&batch)? {
                        self.record_durable(durable);
                        continue;
                    }
                    self.wal.submit(batch)
                }
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

    /// Writes the append being handed over (the last command submitted) on this thread if
    /// this node may (see `retry_wal_backlog`); `None`: submit it.
    fn write_now(&mut self, batch: &WriteBatch) -> Result<Option<Durable>, ServerError> {
        // Every command before this one reported: the WAL thread is idle, counts stay in order.
        let earlier_reported = self.wal_reported + 1 == self.wal_submitted;
        if !self.config.wal_sync_inline_when_following
            || !self.wal_backlog.is_empty()
            || !earlier_reported
            || self.core.role() == Role::Leader
        {
            return Ok(None);
        }
        match self.wal.write_now(batch) {
            Ok(durable) => Ok(Some(durable)),
            Err(WriteNowError::Busy) => Ok(None),
            Err(WriteNowError::Failed(error)) => Err(ServerError::Wal(error.to_string())),
        }
    }

    /// Makes the received file the current snapshot, durably, before the next action.
    fn install_snapshot_file(&mut self, meta: &SnapshotMeta) -> Result<(), ServerError> {
        let position = self
            .received_files
            .iter()
            .position(|(m, _)| m == meta)
            .ok_or_else(|| ServerError::Snapshot(format!("file {} missing", meta.last_index)))?;
        let (_, path) = self.received_files.remove(position);
        let snapshot_error = |e: String| ServerError::Snapshot(e);
        let mut store = self
            .snapshots
            .lock()
            .map_err(|e| snapshot_error(e.to_string()))?;
        store
            .install_file(&path)
            .map_err(|e| snapshot_error(e.to_string()))?;
        metrics::counter!(m::RAFT_SNAPSHOTS_INSTALLED_TOTAL).increment(1);
        Ok(())
    }

    /// Streams the state into a file and fsyncs it on a blocking thread, holding the store's
    /// lock only to pick the file name and to install it; the core compacts once it is durable.
    fn take_snapshot(&mut self, meta: SnapshotMeta, state: Box<StateMachine>) {
        metrics::gauge!(m::RAFT_SNAPSHOT_IN_PROGRESS).set(1.0);
        let store = Arc::clone(&self.snapshots);
        let done = self.snapshot_done_tx.clone();
        spawn_background("snapshot-writer", move || {
            let result = write_snapshot(&store, &meta, *state).map(|()| meta);
            let _ = done.send(result);
        });
    }

    /// Reads evicted entries back from the WAL on a blocking thread (the reads of one
    /// follower follow each other: the core asks for the next once these were sent).
    fn load_entries(&mut self, load: kvraft::EntriesToLoad) {
        let dir = self._data_dir.wal_dir();
        let record_bytes_max = self.wal_record_bytes_max;
        let cursor = self.load_cursors.remove(&load.to);
        if cursor.as_ref().is_none_or(|c| c.next_index != load.low) {
            // A new catch-up (later reads continue where this one stops).
            tracing::info!(
                to = load.to,
                "reading entries {}..={} back from the WAL for n{} (evicted from memory)",
                load.low,
                load.high,
                load.to
            );
        }
        let loaded = self.entries_loaded_tx.clone();
        tokio::task::spawn_blocking(move || {
            let read =
                kvstorage::wal::load::read_entries(&dir, record_bytes_max, &load, cursor.as_ref());
            let (entries, stopped) = read.unwrap_or_else(|error| {
                tracing::warn!(
                    to = load.to,
                    "cannot read entries {}.. back: {error}",
                    load.low
                );
                (Vec::new(), None)
            });
            let _ = loaded.send((load.to, load.low, entries, stopped));
        });
    }

    fn on_entries_loaded(&mut self, (to, low, entries, stopped): LoadedEntries) {
        metrics::counter!(m::RAFT_LOG_ENTRIES_LOADED_TOTAL).increment(entries.len() as u64);
        if let Some(cursor) = stopped {
            self.load_cursors.insert(to, cursor);
        }
        self.core.handle_entries_loaded(to, low, entries);
    }

    /// Logs and metrics from what the core observed.
    fn observe(&mut self) {
        for observation in self.core.take_observations() {
            match observation {
                Observation::RoleChanged { role, leader, term } => {
                    let code = match role {
                        Role::Follower => 0.0,
                        Role::PreCandidate | Role::Candidate => 1.0,
                        Role::Leader => 2.0,
                    };
                    metrics::gauge!(m::RAFT_ROLE).set(code);
                    let is_leader = f64::from(u8::from(role == Role::Leader));
                    metrics::gauge!(m::RAFT_IS_LEADER).set(is_leader);
                    let has_leader = f64::from(u8::from(leader != 0));
                    metrics::gauge!(m::RAFT_HAS_LEADER).set(has_leader);
                    let role = role_name(role);
                    tracing::info!(node = self.id, role, leader, term, "role changed");
                }
                Observation::ElectionStarted => {
                    metrics::counter!(m::RAFT_ELECTIONS_TOTAL).increment(1);
                }
                Observation::Applied { entries } => {
                    metrics::histogram!(m::RAFT_APPLY_BATCH_ENTRIES).record(entries as f64);
                }
                Observation::AppendRejected { from } => self.metrics.replication_failed(from),
                other => log_observation(self.id, &other),
            }
        }
    }

    // ------------------------------------------------------------------ shutdown

    async fn shutdown(mut self) -> Result<(), ServerError> {
        if self.core.role() == Role::Leader {
            self.transfer_leadership().await?;
        }
        self.core.abandon_requests();
        self.perform()?;
        // Let the WAL finish what was queued; persisted messages may still go out.
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_TRANSFER_MS_MAX);
        while self.core.is_waiting_for_wal() && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(50), self.durable.recv()).await {
                Ok(Some(report)) => {
                    self.on_durable(report)?;
                    self.perform()?;
                }
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
        let Some(target) = self.core.transfer_leadership() else {
            return Ok(());
        };
        tracing::info!(node = self.id, target, "shutdown: transferring leadership");
        self.perform()?;
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_TRANSFER_MS_MAX);
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.tick_ms));
        while self.core.role() == Role::Leader && Instant::now() < deadline {
            tokio::select! {
                Some(report) = self.durable.recv() => self.on_durable(report)?,
                Some(event) = self.inbound.recv() => self.on_inbound(event),
                _ = ticker.tick() => self.core.tick(),
            }
            self.perform()?;
        }
        Ok(())
    }
}

/// Decodes the state machine in a snapshot file, streaming (never the whole file in memory),
/// sharing every value equal in `base` (the node's state when the decode began).
fn load_state_machine(
    store: &Arc<Mutex<SnapshotStore>>,
    path: &std::path::Path,
    base: &StateMachine,
) -> Result<StateMachine, String> {
    let store = store.lock().map_err(|e| e.to_string())?;
    let (_, body) = store.open_body(path).map_err(|e| e.to_string())?;
    drop(store);
    StateMachine::restore_from_base(body, base).map_err(|e| e.to_string())
}

/// Writes `state` as the snapshot `meta` without holding the store's lock during the write.
/// Consumes the state (a clone): each shard is let go of once written, so the node's live state
/// stops copying it on write (`StateMachine::into_snapshot`).
fn write_snapshot(
    store: &Arc<Mutex<SnapshotStore>>,
    meta: &SnapshotMeta,
    state: StateMachine,
) -> Result<(), String> {
    let tmp = store.lock().map_err(|e| e.to_string())?.draft_path();
    let verified = kvstorage::snapshot::write_file(&tmp, meta, |out| state.into_snapshot(out))
        .map_err(|e| e.to_string())?;
    let mut store = store.lock().map_err(|e| e.to_string())?;
    store
        .install(verified)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Frees log entries dropped by a compaction on a blocking thread: freeing a snapshot
/// interval's entries (100k by default) took milliseconds of the node's loop, a stall every
/// interval that every request in flight waited for.
fn free_entries(entries: Vec<kvraft::Entry>) {
    if !entries.is_empty() {
        drop(tokio::task::spawn_blocking(move || drop(entries)));
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

fn log_observation(id: NodeId, observation: &Observation) {
    match observation {
        Observation::MessageDropped { from, reason } => {
            tracing::warn!(node = id, from, "dropped a raft message: {reason}");
        }
        Observation::AppendHeldOff { from } => {
            tracing::debug!(
                node = id,
                from,
                "append left unanswered: a snapshot from the leader is being decoded"
            );
        }
        Observation::SnapshotInstalled { index } => {
            tracing::info!(node = id, index, "installed snapshot from leader");
        }
        Observation::SnapshotTaken { index } => {
            metrics::counter!(m::RAFT_SNAPSHOTS_TAKEN_TOTAL).increment(1);
            tracing::info!(node = id, index, "took snapshot, compacted log");
        }
        Observation::CompactionWaiting { index } => {
            tracing::info!(
                node = id,
                index,
                "took snapshot; the log is compacted once the followers behind it caught up"
            );
        }
        Observation::SnapshotSent { to, ok } => {
            tracing::info!(node = id, to, ok, "snapshot stream finished");
        }
        Observation::SnapshotDiscarded { index } => {
            tracing::info!(node = id, index, "discarded a received snapshot");
        }
        Observation::MembershipChanged { index, membership } => {
            tracing::info!(node = id, index, "configuration changed: {membership}");
        }
        Observation::RecoveryDiscarded {
            entries,
            snapshot_index,
        } => tracing::warn!(
            node = id,
            "recovery: discarded {entries} WAL entries above snapshot {snapshot_index}: they \
             do not follow it (a crash came between installing a snapshot from the leader and \
             resetting the WAL)"
        ),
        _ => {}
    }
}
