//! The node server: the only async code besides `transport/`. It opens the data directory,
//! recovers state (snapshot, then WAL), starts the transport, and runs the driver
//! (`node.rs`) on one single-threaded tokio runtime.

pub mod metrics;
mod node;

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use kvclient::config::ClusterConfig;
use kvcore::{CoreConfig, DiskState, NodeCore};
use kvraft::{Config, Membership, NodeId};
use kvstate::state::StateMachine;
use kvstorage::datadir::DataDir;
use kvstorage::snapshot::SnapshotStore;
use kvstorage::wal::{Wal, WalConfig};
use kvtransport::tls::TlsMaterial;
use kvtransport::{Peer, Transport, TransportConfig, TransportLimits};
use node::{Node, NodeParts};

// A command at the state machine's size limit must fit a client request and a Raft entry.
const _: () = assert!(
    kvtransport::CLIENT_REQUEST_BYTES_MAX_DEFAULT as usize
        >= kvstate::limits::COMMAND_BYTES_MAX + 64 * 1024
);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] kvclient::config::ConfigError),
    #[error(transparent)]
    DataDir(#[from] kvstorage::datadir::DataDirError),
    #[error("recovery: {0}")]
    Recovery(String),
    #[error("wal: {0}")]
    Wal(String),
    #[error("the WAL writer stopped after a fatal error")]
    WalStopped,
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("runtime: {0}")]
    Runtime(String),
}

/// A node running on a thread of its own (see `spawn`).
pub struct NodeHandle {
    id: NodeId,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl NodeHandle {
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Stops the node gracefully (a leader hands over first) and waits for it.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ServerError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServerError::Runtime("node thread panicked".into())),
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::error!("node {} stopped with an error: {error}", self.id);
        }
    }
}

/// Turns transparent huge pages off for this whole process (`prctl(PR_SET_THP_DISABLE)`;
/// children inherit it). Call it first thing in a binary that hosts nodes.
///
/// The allocator (mimalloc) asks for huge pages on its arenas (`MADV_HUGEPAGE`), and Debian's
/// default honours that (`madvise` mode). Then the first touch of each 2 MiB of fresh or
/// purged heap zeroes all 2 MiB in one page fault, inside whatever allocation touched it.
/// Measured on a 2-vCPU VM, embedded cluster, 64 clients, put: during the stalls that made the
/// put tail, a node's thread spent up to 18 ms of a 26-ms window in `clear_page_erms` under
/// `do_huge_pmd_anonymous_page`; with huge pages off, p99.9 fell from 12-14 ms to 6.0-6.5 ms
/// and the max from 40-54 ms to 9-14 ms (4 of 4 interleaved 8-s pairs), throughput unchanged.
/// Memory is then faulted 4 KiB at a time; the TLB cost of small pages did not show.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(true).map_err(std::io::Error::from)
}

/// Starts node `id` of `config` on its own OS thread with its own single-threaded runtime
/// (bench's embedded cluster, tests). Returns once the node is listening.
pub fn spawn(config: ClusterConfig, id: NodeId) -> Result<NodeHandle, ServerError> {
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("kvnode-n{id}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ServerError::Runtime(e.to_string()))?;
            runtime.block_on(async move {
                let started = start(config, id).await;
                let (node, recorder) = match started {
                    Ok(parts) => {
                        let _ = started_tx.send(Ok(()));
                        parts
                    }
                    Err(error) => {
                        let message = error.to_string();
                        let _ = started_tx.send(Err(error));
                        return Err(ServerError::Runtime(message));
                    }
                };
                let _guard = ::metrics::set_default_local_recorder(&recorder);
                node.run(shutdown_rx).await
            })
        })
        .map_err(|e| ServerError::Runtime(e.to_string()))?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(NodeHandle {
            id,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => Err(ServerError::Runtime(
            "node thread ended during start".into(),
        )),
    }
}

/// Runs node `id` in the current thread until SIGINT or SIGTERM (the `kvnode run` command).
pub fn run_until_signal(config: ClusterConfig, id: NodeId) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Runtime(e.to_string()))?;
    runtime.block_on(async move {
        let (node, recorder) = start(config, id).await?;
        let _guard = ::metrics::set_default_local_recorder(&recorder);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: shutting down");
            let _ = shutdown_tx.send(());
        });
        node.run(shutdown_rx).await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    match (terminate, interrupt) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Opens everything and returns the driver ready to run, with its metrics recorder.
async fn start(
    config: ClusterConfig,
    id: NodeId,
) -> Result<(Node, metrics_exporter_prometheus::PrometheusRecorder), ServerError> {
    let spec = config.node(&id.to_string())?.clone();
    let (recorder, exporter) =
        metrics::recorder(spec.metrics_address()).map_err(ServerError::Metrics)?;
    tokio::spawn(async move {
        if exporter.await.is_err() {
            tracing::warn!("metrics exporter stopped");
        }
    });
    let data_dir = DataDir::lock(&config.node_data_dir(id))?;
    let mut snapshots = SnapshotStore::open(&data_dir.snap_dir())
        .map_err(|e| ServerError::Snapshot(e.to_string()))?;
    for corrupt in snapshots.corrupt() {
        tracing::warn!(
            "ignoring a corrupt snapshot file {}: {}",
            corrupt.path.display(),
            corrupt.reason
        );
    }
    let snapshot = restore_state_machine(&mut snapshots)?;
    let (durable_tx, durable) = mpsc::unbounded_channel();
    let callback = Box::new(move |report| {
        let _ = durable_tx.send(report);
    });
    let wal_config = WalConfig {
        segment_bytes_max: config.wal_segment_bytes,
        ..WalConfig::default()
    };
    let wal_record_bytes_max = wal_config.record_bytes_max;
    let (wal, recovered) = Wal::open(&data_dir.wal_dir(), wal_config, callback)
        .map_err(|e| ServerError::Wal(e.to_string()))?;
    tracing::info!(
        node = id,
        snapshot_index = snapshot.as_ref().map_or(0, |(m, _)| m.last_index),
        entries = recovered.entries.len(),
        term = recovered.hard_state.term,
        commit = recovered.hard_state.commit,
        "recovered"
    );
    let disk = DiskState {
        hard_state: recovered.hard_state,
        snapshot,
        wal_entries: recovered.entries,
        wal_compacted_index: recovered.compacted_index,
    };
    let core = new_core(&config, id, disk)?;
    let (transport, inbound) = start_transport(&config, id, &data_dir)?;
    let parts = NodeParts {
        core,
        transport,
        inbound,
        wal,
        durable,
        snapshots,
        wal_record_bytes_max,
        data_dir,
    };
    Ok((Node::new(config, id, parts), recorder))
}

fn restore_state_machine(
    snapshots: &mut SnapshotStore,
) -> Result<Option<(kvraft::SnapshotMeta, StateMachine)>, ServerError> {
    let Some((meta, path)) = snapshots.latest() else {
        return Ok(None);
    };
    let (_, body) = snapshots
        .open_body(&path)
        .map_err(|e| ServerError::Snapshot(e.to_string()))?;
    let sm = StateMachine::restore_from(body).map_err(|e| ServerError::Snapshot(e.to_string()))?;
    Ok(Some((meta, sm)))
}

fn new_core(
    config: &ClusterConfig,
    id: NodeId,
    disk: DiskState,
) -> Result<NodeCore<node::Reply>, ServerError> {
    let mut raft = Config::new(id);
    raft.election_timeout_ticks = config.election_timeout_ticks();
    raft.heartbeat_interval_ticks = config.heartbeat_interval_ticks();
    raft.entry_bytes_max = kvstate::limits::COMMAND_BYTES_MAX as u64;
    // A joining node starts outside any configuration and learns it from the leader.
    let joining = config.node(&id.to_string())?.join;
    let membership = if joining {
        Membership::default()
    } else {
        Membership::new(config.initial_voters())
    };
    let core_config = CoreConfig {
        request_timeout_ticks: config.request_timeout_ms.div_ceil(config.tick_ms.max(1)),
        requests_pending_max: config.proposals_pending_max,
        snapshot_entries: config.snapshot_entries,
        log_memory_bytes_max: config.log_memory_bytes_max,
        ..CoreConfig::default()
    };
    // The core's randomness (election timeouts) is seeded here, at the edge.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        ^ id;
    NodeCore::recover(core_config, raft, membership, disk, seed)
        .map_err(|e| ServerError::Recovery(e.to_string()))
}

fn start_transport(
    config: &ClusterConfig,
    id: NodeId,
    data_dir: &DataDir,
) -> Result<(Transport, mpsc::Receiver<kvtransport::Inbound>), ServerError> {
    let spec = config.node(&id.to_string())?;
    let tls = TlsMaterial::load(&config.certs_dir, &spec.name()).map_err(|e| {
        ServerError::Tls(format!(
            "{e} (certs_dir {}; make certificates with `kvnode certs`)",
            config.certs_dir.display()
        ))
    })?;
    // The config file's nodes to begin with; the driver then follows the configuration in
    // force (`Node::resolve_peers`).
    let peers = config
        .nodes
        .iter()
        .filter(|n| n.id != id)
        .map(|n| Peer {
            id: n.id,
            name: n.name(),
            addr: n.address,
        })
        .collect();
    let transport_config = TransportConfig {
        self_name: spec.name(),
        self_id: id,
        listen: spec.address,
        peers,
        tls,
        snapshot_dir: data_dir.root().join("incoming"),
        limits: TransportLimits::default(),
    };
    Transport::start(transport_config).map_err(|e| ServerError::Transport(e.to_string()))
}
