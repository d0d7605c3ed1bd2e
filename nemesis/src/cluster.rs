//! A running cluster on either backend: starts nodes, kills/pauses/restarts them, applies
//! partitions, reads live state from metrics, and removes everything it created.
//!
//! The cluster is recorded in a JSON state file (pids, commands, netns layout) written before
//! the first node starts and after every restart, so `nemesis cleanup` can undo a run whose tool
//! crashed, and hand-run `nemesis` commands can act on a cluster another process started.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde::{Deserialize, Serialize};

use crate::fs::{self as disk, DiskError, DiskHandle, DiskReply, DiskRequest};
use crate::host::{HostError, NodeHost, RemoteNode};
use crate::metrics::{self, RaftState, Role};
use crate::netns::{self, Grudge, NetnsError, Network};
use crate::process::{self, NodeCommand, ProcessError};
use crate::spec::{self, BackendKind, ClusterSpec, ConfigFile, NetnsLayout, SpecError};
use crate::ssh::{self, SshError};
use crate::NodeId;

/// How long a SIGKILLed process may take to disappear.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a node gets to exit after SIGTERM before SIGKILL (it hands leadership over first).
pub const TERM_GRACE_MS: u64 = 3000;
/// Poll interval of `wait_for_leader`.
pub const LEADER_POLL_MS: u64 = 100;

/// Set by the interrupt handler: no node is (re)started once cleanup began.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("no node n{0} in this cluster")]
    UnknownNode(NodeId),
    #[error("n{0} is not running")]
    NotRunning(NodeId),
    #[error("no (stable) leader{} within {waited_ms} ms", other_than(excluded))]
    NoLeader {
        excluded: Vec<NodeId>,
        waited_ms: u64,
    },
    #[error(
        "{0} needs the netns backend (start the cluster with --backend netns, as root) or the \
         ssh backend"
    )]
    NeedsNetns(&'static str),
    #[error("{0} is not supported on the ssh backend")]
    NotOverSsh(&'static str),
    #[error("no cluster found: no state file at {0} and no `kvnode run` process")]
    NoCluster(PathBuf),
    #[error("interrupted: cleaning up")]
    Interrupted,
    #[error("disk: {0}")]
    Disk(#[from] DiskError),
}

/// One node as recorded in the state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// `None` while the node is down (killed and not yet restarted).
    pub pid: Option<u32>,
    pub command: NodeCommand,
    pub address: SocketAddr,
    pub metrics_address: SocketAddr,
    /// A pid file another tool keeps for this node (scripts/cluster.sh: `<config dir>/n<k>.pid`),
    /// rewritten on restart so that tool can still stop the node.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// Set on the ssh backend: the host the node runs on and its work directory there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteNode>,
}

/// The state file's content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterState {
    pub backend: BackendKind,
    pub config_path: PathBuf,
    pub netns: Option<NetnsLayout>,
    pub nodes: Vec<NodeRecord>,
    /// Nodes that refused to start (e.g. on corrupt data): never restarted again by this
    /// cluster, left out of "every node answers" checks. Node -> the reason from its log.
    #[serde(default)]
    pub refused: BTreeMap<NodeId, String>,
    /// Nodes that started by repairing their data (a torn WAL tail ended and zeroed, a corrupt
    /// snapshot skipped): node -> the last such repair from its log.
    #[serde(default)]
    pub repaired: BTreeMap<NodeId, String>,
}

impl ClusterState {
    pub fn load(path: &Path) -> Result<ClusterState, ClusterError> {
        let state_error = |reason: String| ClusterError::State {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| state_error(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| state_error(e.to_string()))
    }

    /// Write to a temporary file and rename, so a crash never leaves half a state file.
    pub fn save(&self, path: &Path) -> Result<(), ClusterError> {
        let state_error = |reason: String| ClusterError::State {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| state_error(e.to_string()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| state_error(e.to_string()))?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, text).map_err(|e| state_error(e.to_string()))?;
        std::fs::rename(&temporary, path).map_err(|e| state_error(e.to_string()))
    }
}

/// What `status` reports for one node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub pid: Option<u32>,
    pub running: bool,
    /// Stopped by SIGSTOP (a pause).
    pub paused: bool,
    pub raft: Option<RaftState>,
    /// Why `raft` is missing (metrics unreachable, node down, refused to start).
    pub error: Option<String>,
}

/// How long a restarted node is watched for an early exit (a refusal to start on corrupt
/// data happens while it reads its WAL and snapshots, well within this).
pub const START_SETTLE_MS: u64 = 2000;
/// Bytes of a node's log read to find why it exited.
const LOG_TAIL_BYTES: u64 = 4096;
/// Longest reason kept from a log line.
const REASON_CHARS_MAX: usize = 300;
/// Most of a restarted node's log read when looking for a repair.
const REPAIR_LOG_BYTES_MAX: u64 = 1 << 20;

pub struct Cluster {
    state: ClusterState,
    /// `None` for a cluster discovered from /proc (nothing to record).
    state_path: Option<PathBuf>,
    /// Nodes we started ourselves, kept to reap them after a kill.
    children: BTreeMap<NodeId, Child>,
    network: Option<Network>,
    /// Started by this value: dropping it stops the nodes and removes the network.
    owned: bool,
    /// Fault-injecting filesystems this value mounted (`ClusterSpec::disk`).
    disks: Vec<DiskHandle>,
    /// Length of each node's log when this value last restarted it: `settle` reads what the
    /// node logged since.
    log_offsets: BTreeMap<NodeId, u64>,
}

impl Cluster {
    /// Prepares files, builds the network (netns), starts every node and records the cluster in
    /// `spec.state_path`. On failure everything created is removed again.
    pub fn start(spec: &ClusterSpec) -> Result<Cluster, ClusterError> {
        let mut spec = spec.clone();
        if spec.backend == BackendKind::Netns {
            netns::require_root()?;
        }
        spec.prepare()?;
        if !spec.node_binary.is_file() {
            return Err(SpecError::NodeBinary(spec.node_binary.clone()).into());
        }
        let network = match spec.backend {
            BackendKind::Netns => Some(Network::create(&spec.netns, &spec.node_ids())?),
            BackendKind::Local | BackendKind::Ssh => None,
        };
        let mut state = initial_state(&spec);
        if spec.backend == BackendKind::Ssh {
            // Connects to every host first: a host that is down or refuses the key fails the
            // run here, named, before anything is uploaded.
            let remotes = setup_hosts(&spec)?;
            for (node, remote) in state.nodes.iter_mut().zip(remotes) {
                node.command = remote_command(&remote, node.id);
                node.remote = Some(remote);
            }
        }
        let mut cluster = Cluster {
            state,
            state_path: Some(spec.state_path.clone()),
            children: BTreeMap::new(),
            network,
            owned: true,
            disks: Vec::new(),
            log_offsets: BTreeMap::new(),
        };
        // Recorded before any node runs: a crash from here on is undone by `nemesis cleanup`.
        cluster.save()?;
        if spec.disk {
            if !netns::is_root() {
                return Err(SpecError::DiskNeedsRoot.into());
            }
            if !spec.disk_binary.is_file() {
                return Err(SpecError::DiskBinary(spec.disk_binary.clone()).into());
            }
            for id in spec.node_ids() {
                let (options, log) = spec.disk_options(id);
                let handle = disk::spawn_disk(&spec.disk_binary, &options, &log)?;
                cluster.disks.push(handle);
            }
        }
        for id in spec.node_ids() {
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    /// Acts on a cluster recorded in a state file (by `nemesis up` or a campaign). Dropping the
    /// value leaves the cluster running.
    pub fn attach(state_path: &Path) -> Result<Cluster, ClusterError> {
        let state = ClusterState::load(state_path)?;
        let network = state.netns.as_ref().map(|layout| Network {
            layout: layout.clone(),
            node_ids: state.nodes.iter().map(|n| n.id).collect(),
        });
        Ok(Cluster {
            state,
            state_path: Some(state_path.to_path_buf()),
            children: BTreeMap::new(),
            network,
            owned: false,
            disks: Vec::new(),
            log_offsets: BTreeMap::new(),
        })
    }

    /// Acts on `kvnode run` processes found in /proc (e.g. a cluster from `just cluster up`),
    /// reading addresses from the config file named on their command line.
    pub fn discover_local() -> Result<Cluster, ClusterError> {
        let found = process::find_kvnode_processes();
        let Some((_, first_args, first_cwd)) = found.first() else {
            return Err(ClusterError::NoCluster(spec::default_state_path()));
        };
        let config_arg = process::flag_value(first_args, "--config").unwrap_or("cluster.toml");
        let config_path = first_cwd.join(config_arg);
        let config = load_config(&config_path)?;
        let log_dir = std::env::temp_dir().join("kvnemesis");
        let mut nodes = Vec::new();
        for entry in &config.nodes {
            let running = found.iter().find(|(_, args, _)| {
                process::flag_value(args, "--id").and_then(spec::parse_node_name) == Some(entry.id)
            });
            let Some((pid, args, cwd)) = running else {
                continue;
            };
            let name = spec::node_name(entry.id);
            // scripts/cluster.sh keeps n<k>.log and n<k>.pid next to the config: reuse them.
            let config_dir = config_path.parent().unwrap_or(Path::new("."));
            let script_log = config_dir.join(format!("{name}.log"));
            let pid_file = Some(config_dir.join(format!("{name}.pid"))).filter(|p| p.is_file());
            let command = NodeCommand {
                argv: args.clone(),
                cwd: cwd.clone(),
                namespace: None,
                log_path: if script_log.is_file() {
                    script_log
                } else {
                    log_dir.join(format!("{name}.log"))
                },
            };
            nodes.push(NodeRecord {
                id: entry.id,
                pid: Some(*pid),
                command,
                address: entry.address,
                metrics_address: entry.metrics(),
                pid_file,
                remote: None,
            });
        }
        let state = ClusterState {
            backend: BackendKind::Local,
            config_path,
            netns: None,
            nodes,
            refused: BTreeMap::new(),
            repaired: BTreeMap::new(),
        };
        Ok(Cluster {
            state,
            state_path: None,
            children: BTreeMap::new(),
            network: None,
            owned: false,
            disks: Vec::new(),
            log_offsets: BTreeMap::new(),
        })
    }

    /// `attach` if the state file exists, else `discover_local`.
    pub fn attach_or_discover(state_path: &Path) -> Result<Cluster, ClusterError> {
        if state_path.exists() {
            return Cluster::attach(state_path);
        }
        Cluster::discover_local().map_err(|error| match error {
            ClusterError::NoCluster(_) => ClusterError::NoCluster(state_path.to_path_buf()),
            other => other,
        })
    }

    /// Leaves the cluster running when this value is dropped (`nemesis up`).
    pub fn detach(mut self) {
        self.owned = false;
        for handle in self.disks.drain(..) {
            handle.detach();
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }
    pub fn backend(&self) -> BackendKind {
        self.state.backend
    }
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.state.nodes.iter().map(|n| n.id).collect()
    }
    pub fn config_path(&self) -> &Path {
        &self.state.config_path
    }
    pub fn network(&self) -> Option<&Network> {
        self.network.as_ref()
    }

    pub fn node(&self, id: NodeId) -> Result<&NodeRecord, ClusterError> {
        self.state
            .nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or(ClusterError::UnknownNode(id))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut NodeRecord, ClusterError> {
        self.state
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or(ClusterError::UnknownNode(id))
    }

    fn save(&self) -> Result<(), ClusterError> {
        match &self.state_path {
            Some(path) => self.state.save(path),
            None => Ok(()),
        }
    }

    /// Where node `id`'s process runs.
    pub fn host(&self, id: NodeId) -> Result<NodeHost, ClusterError> {
        Ok(NodeHost::of(self.node(id)?.remote.as_ref()))
    }

    /// The node's pid if it is alive and still runs the recorded command.
    pub fn running_pid(&self, id: NodeId) -> Result<Option<u32>, ClusterError> {
        Ok(self.running(id)?.map(|(pid, _)| pid))
    }

    /// The node's pid and process state letter (`T`: stopped) if it is alive and still runs
    /// the recorded command.
    fn running(&self, id: NodeId) -> Result<Option<(u32, char)>, ClusterError> {
        let node = self.node(id)?;
        let Some(pid) = node.pid else {
            return Ok(None);
        };
        if let Some(state) = self.host(id)?.process_state(pid, &node.command)? {
            return Ok(Some((pid, state)));
        }
        if self.is_child(id, pid) {
            return Ok(process::state(pid).map(|state| (pid, state)));
        }
        Ok(None)
    }

    fn is_child(&self, id: NodeId, pid: u32) -> bool {
        // Under `ip netns exec` the command line is the node's own (ip execs it), but a child
        // we hold is ours whatever /proc says.
        self.children.get(&id).is_some_and(|c| c.id() == pid) && process::is_alive(pid)
    }

    /// SIGKILL; waits until the process is gone. Returns false if it was not running.
    pub fn kill(&mut self, id: NodeId) -> Result<bool, ClusterError> {
        let Some(pid) = self.running_pid(id)? else {
            return Ok(false);
        };
        self.host(id)?.signal(pid, Signal::KILL)?;
        self.reap(id, pid)?;
        self.node_mut(id)?.pid = None;
        self.save()?;
        Ok(true)
    }

    /// SIGKILLs every node of `ids` at once, then waits until all are gone: a power cut hits
    /// every machine at the same instant, so no node may fsync after another died. With
    /// `release`, that request goes to each node's disk between the signals and the wait: a
    /// frozen disk holds fsyncs back, and a process waiting on one only dies once it is
    /// answered.
    pub fn kill_together(
        &mut self,
        ids: &[NodeId],
        release: Option<&DiskRequest>,
    ) -> Result<(), ClusterError> {
        let mut killed = Vec::new();
        for id in ids {
            if let Some(pid) = self.running_pid(*id)? {
                self.host(*id)?.signal(pid, Signal::KILL)?;
                killed.push((*id, pid));
            }
        }
        if let Some(request) = release {
            for id in ids {
                self.disk_request(*id, request)?;
            }
        }
        for (id, pid) in killed {
            self.reap(id, pid)?;
            self.node_mut(id)?.pid = None;
        }
        self.save()
    }

    fn reap(&mut self, id: NodeId, pid: u32) -> Result<(), ClusterError> {
        match self.children.remove(&id) {
            Some(mut child) if child.id() == pid => {
                let _ = child.wait();
                Ok(())
            }
            _ => Ok(self.host(id)?.wait_gone(pid, STOP_TIMEOUT)?),
        }
    }

    /// Starts the node with its recorded command if it is not running. Returns false if it was
    /// already running.
    pub fn restart(&mut self, id: NodeId) -> Result<bool, ClusterError> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(ClusterError::Interrupted);
        }
        if self.running_pid(id)?.is_some() || self.state.refused.contains_key(&id) {
            return Ok(false);
        }
        let command = self.node(id)?.command.clone();
        let spawned = self.host(id)?.spawn(&command)?;
        let pid = spawned.pid;
        self.log_offsets.insert(id, spawned.log_offset);
        if let Some(child) = spawned.child {
            self.children.insert(id, child);
        }
        let node = self.node_mut(id)?;
        node.pid = Some(pid);
        if let Some(pid_file) = &node.pid_file {
            std::fs::write(pid_file, format!("{pid}\n")).map_err(|e| ClusterError::State {
                path: pid_file.clone(),
                reason: e.to_string(),
            })?;
        }
        self.save()?;
        Ok(true)
    }

    /// SIGSTOP: the process stays, its sockets stay open, it does nothing.
    pub fn pause(&mut self, id: NodeId) -> Result<(), ClusterError> {
        let pid = self.running_pid(id)?.ok_or(ClusterError::NotRunning(id))?;
        Ok(self.host(id)?.signal(pid, Signal::STOP)?)
    }

    /// SIGCONT. Resuming a node that is not paused does nothing.
    pub fn resume(&mut self, id: NodeId) -> Result<(), ClusterError> {
        let pid = self.running_pid(id)?.ok_or(ClusterError::NotRunning(id))?;
        Ok(self.host(id)?.signal(pid, Signal::CONT)?)
    }

    /// Resumes every paused node and restarts every dead one.
    pub fn revive_all(&mut self) -> Result<(), ClusterError> {
        for id in self.node_ids() {
            match self.running(id)? {
                Some((_, 'T')) => self.resume(id)?,
                Some(_) => {}
                None => {
                    self.restart(id)?;
                }
            }
        }
        Ok(())
    }

    /// SIGCONT + SIGTERM, then SIGKILL after `TERM_GRACE_MS`.
    pub fn stop(&mut self, id: NodeId) -> Result<(), ClusterError> {
        let Some(pid) = self.running_pid(id)? else {
            return Ok(());
        };
        let host = self.host(id)?;
        let _ = host.signal(pid, Signal::CONT);
        let _ = host.signal(pid, Signal::TERM);
        if host
            .wait_gone(pid, Duration::from_millis(TERM_GRACE_MS))
            .is_err()
        {
            host.signal(pid, Signal::KILL)?;
        }
        self.reap(id, pid)?;
        self.node_mut(id)?.pid = None;
        self.save()
    }

    /// Where node `id` keeps its data, from the cluster config.
    pub fn node_data_dir(&self, id: NodeId) -> Result<PathBuf, ClusterError> {
        let config = load_config(&self.state.config_path)?;
        let base = self.state.config_path.parent().unwrap_or(Path::new("."));
        let dir = base.join(&config.data_dir).join(spec::node_name(id));
        Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
    }

    /// Sends a request to the fault-injecting filesystem mounted over node `id`'s data.
    pub fn disk_request(
        &self,
        id: NodeId,
        request: &DiskRequest,
    ) -> Result<DiskReply, ClusterError> {
        let dir = self.node_data_dir(id)?;
        let record = disk::control::find_disk(&dir).ok_or(DiskError::NoDisk(dir))?;
        Ok(disk::control::request(&record.control, request)?)
    }

    pub fn refused(&self) -> &BTreeMap<NodeId, String> {
        &self.state.refused
    }

    pub fn repaired(&self) -> &BTreeMap<NodeId, String> {
        &self.state.repaired
    }

    /// Watches freshly restarted nodes for `START_SETTLE_MS`; a node that exits is recorded
    /// as refused (with the last line of its log) and never restarted by this cluster.
    /// Returns a line per node: "restarted" or "refused to start: ...".
    pub fn settle(&mut self, ids: &[NodeId]) -> Result<Vec<(NodeId, String)>, ClusterError> {
        let start = Instant::now();
        let settle = Duration::from_millis(START_SETTLE_MS);
        let mut outcome = Vec::new();
        let mut watching: Vec<NodeId> = ids.to_vec();
        while !watching.is_empty() {
            let mut still = Vec::new();
            for id in watching {
                if self.state.refused.contains_key(&id) {
                    outcome.push((id, "refused to start (earlier)".to_string()));
                } else if self.running_pid(id)?.is_none() {
                    let log = self.host(id)?.read_log(
                        &self.node(id)?.command.log_path,
                        None,
                        LOG_TAIL_BYTES,
                    )?;
                    let reason = last_log_line(&log);
                    self.node_mut(id)?.pid = None;
                    self.children.remove(&id);
                    self.state.refused.insert(id, reason.clone());
                    self.save()?;
                    outcome.push((id, format!("refused to start: {reason}")));
                } else if start.elapsed() >= settle {
                    let since = self.log_offsets.get(&id).copied().unwrap_or(0);
                    let path = &self.node(id)?.command.log_path;
                    let log = (self.host(id)?).read_log(path, Some(since), REPAIR_LOG_BYTES_MAX)?;
                    let note = match repair_line(&log) {
                        Some(line) => {
                            self.state.repaired.insert(id, line.clone());
                            self.save()?;
                            format!("restarted, repaired: {line}")
                        }
                        None => "restarted".to_string(),
                    };
                    outcome.push((id, note));
                } else {
                    still.push(id);
                }
            }
            watching = still;
            if !watching.is_empty() {
                std::thread::sleep(Duration::from_millis(LEADER_POLL_MS));
            }
        }
        outcome.sort();
        Ok(outcome)
    }

    /// Moves node `id`'s data onto a fault-injecting filesystem served by `binary`: stops the
    /// node, renames its data directory to a sibling backing directory, mounts over the old
    /// path, starts the node again. The mount outlives this process (`nemesis disk unmount`).
    pub fn mount_disk(&mut self, id: NodeId, binary: &Path) -> Result<bool, ClusterError> {
        if self.backend() == BackendKind::Ssh {
            return Err(ClusterError::NotOverSsh("disk mount"));
        }
        let data = self.node_data_dir(id)?;
        if disk::control::find_disk(&data).is_some() {
            return Ok(false);
        }
        let was_running = self.running_pid(id)?.is_some();
        self.stop(id)?;
        let backing = disk_backing(&data);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DiskError::Io { path, source }
        };
        if data.exists() {
            std::fs::rename(&data, &backing).map_err(io(&data))?;
        }
        let options = disk::ServeOptions {
            backing: backing.clone(),
            mountpoint: data.clone(),
            control: backing.with_extension("sock"),
        };
        let handle = disk::spawn_disk(binary, &options, &backing.with_extension("log"))?;
        handle.detach();
        if was_running {
            self.restart(id)?;
        }
        Ok(true)
    }

    /// Undoes `mount_disk`: stops the node, unmounts, puts the data back, starts the node.
    pub fn unmount_disk(&mut self, id: NodeId) -> Result<bool, ClusterError> {
        let data = self.node_data_dir(id)?;
        let Some(record) = disk::control::find_disk(&data) else {
            return Ok(false);
        };
        let was_running = self.running_pid(id)?.is_some();
        self.stop(id)?;
        disk::stop_disk(&record)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DiskError::Io { path, source }
        };
        let trash = record.backing.join(disk::model::TRASH_DIR_NAME);
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::remove_dir(&data).map_err(io(&data))?;
        std::fs::rename(&record.backing, &data).map_err(io(&record.backing))?;
        if was_running {
            self.restart(id)?;
        }
        Ok(true)
    }

    pub fn block(&mut self, grudge: &Grudge) -> Result<(), ClusterError> {
        if self.backend() == BackendKind::Ssh {
            for (node, blocked) in grudge {
                let peers: Vec<_> = (blocked.iter())
                    .map(|other| {
                        self.node(*other)
                            .map(|n| (n.address.ip(), n.address.port()))
                    })
                    .collect::<Result<_, _>>()?;
                let record = self.node(*node)?;
                if let Some(remote) = &record.remote {
                    remote.remote().block(record.address.port(), &peers)?;
                }
            }
            return Ok(());
        }
        let network = self
            .network
            .as_ref()
            .ok_or(ClusterError::NeedsNetns("partition"))?;
        Ok(network.block(grudge)?)
    }

    /// Removes every partition rule. On the local backend there is nothing to heal.
    pub fn heal(&mut self) -> Result<(), ClusterError> {
        for node in &self.state.nodes {
            if let Some(remote) = &node.remote {
                remote.remote().heal()?;
            }
        }
        match &self.network {
            Some(network) => Ok(network.heal()?),
            None => Ok(()),
        }
    }

    /// Every node's status; on the ssh backend the hosts are asked in parallel.
    pub fn status(&self) -> Vec<NodeStatus> {
        if self.backend() != BackendKind::Ssh {
            return self
                .state
                .nodes
                .iter()
                .map(|n| self.node_status(n))
                .collect();
        }
        std::thread::scope(|scope| {
            let threads: Vec<_> = (self.state.nodes.iter())
                .map(|node| scope.spawn(|| self.node_status(node)))
                .collect();
            (self.state.nodes.iter().zip(threads))
                .map(|(node, thread)| {
                    thread.join().unwrap_or_else(|_| NodeStatus {
                        id: node.id,
                        pid: None,
                        running: false,
                        paused: false,
                        raft: None,
                        error: Some("status thread panicked".to_string()),
                    })
                })
                .collect()
        })
    }

    fn node_status(&self, node: &NodeRecord) -> NodeStatus {
        let timeout = Duration::from_millis(metrics::SCRAPE_TIMEOUT_MS);
        // An unreachable host says why (its ssh error), like an unreachable metrics endpoint.
        let (running, unreachable) = match self.running(node.id) {
            Ok(running) => (running, None),
            Err(error) => (None, Some(error.to_string())),
        };
        let pid = running.map(|(pid, _)| pid);
        let paused = running.is_some_and(|(_, state)| state == 'T');
        let refused = self.state.refused.get(&node.id);
        let (raft, error) = match (pid, paused) {
            (None, _) if refused.is_some() => {
                let reason = refused.map_or(String::new(), |r| format!("refused: {r}"));
                (None, Some(reason))
            }
            (None, _) => (None, unreachable.or(Some("not running".to_string()))),
            (Some(_), true) => (None, Some("paused".to_string())),
            (Some(_), false) => match metrics::raft_state(node.metrics_address, timeout) {
                Ok(raft) => (Some(raft), None),
                Err(error) => (None, Some(error.to_string())),
            },
        };
        NodeStatus {
            id: node.id,
            pid,
            running: pid.is_some(),
            paused,
            raft,
            error,
        }
    }

    /// The leader with the highest term among the nodes that answer, if any.
    pub fn leader(&self) -> Option<(NodeId, u64)> {
        leader_of(&self.status())
    }

    /// Polls metrics until a node other than `excluded` says it leads in `term_min` or later.
    /// Two nodes may both say they lead (an old leader that has not heard of the new term yet):
    /// `term_min` skips the stale one.
    pub fn wait_for_leader(
        &self,
        timeout: Duration,
        excluded: &[NodeId],
        term_min: u64,
    ) -> Result<(NodeId, u64), ClusterError> {
        self.wait_until_leader(timeout, excluded, |statuses| {
            leader_of(statuses).filter(|(id, term)| !excluded.contains(id) && *term >= term_min)
        })
    }

    /// Polls until every node answers, one leads, and all others follow in the same term: the
    /// cluster has recovered (after heal, before final reads).
    pub fn wait_for_stable_leader(&self, timeout: Duration) -> Result<(NodeId, u64), ClusterError> {
        let refused = self.state.refused.clone();
        self.wait_until_leader(timeout, &[], |statuses| {
            let (leader, term) = leader_of(statuses)?;
            let serving = statuses.iter().filter(|s| !refused.contains_key(&s.id));
            let stable = serving.into_iter().all(|s| {
                s.raft
                    .is_some_and(|r| r.term == term && (r.role == Role::Follower || s.id == leader))
            });
            stable.then_some((leader, term))
        })
    }

    fn wait_until_leader(
        &self,
        timeout: Duration,
        excluded: &[NodeId],
        found: impl Fn(&[NodeStatus]) -> Option<(NodeId, u64)>,
    ) -> Result<(NodeId, u64), ClusterError> {
        let start = Instant::now();
        loop {
            if let Some(leader) = found(&self.status()) {
                return Ok(leader);
            }
            if start.elapsed() >= timeout {
                return Err(ClusterError::NoLeader {
                    excluded: excluded.to_vec(),
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(LEADER_POLL_MS));
        }
    }

    /// Heals, stops every node (gracefully, then SIGKILL), removes the network and the state
    /// file. Idempotent; also run on drop of a cluster this value started.
    pub fn cleanup(&mut self) -> Result<(), ClusterError> {
        let mut first_error = None;
        for id in self.node_ids() {
            if let Err(error) = self.stop(id) {
                first_error.get_or_insert(error);
            }
        }
        for handle in self.disks.drain(..) {
            if let Err(error) = handle.stop() {
                first_error.get_or_insert(error.into());
            }
        }
        // Disks mounted by another process for these nodes (`nemesis up --disk`).
        for id in self.node_ids() {
            let found = self
                .node_data_dir(id)
                .ok()
                .and_then(|dir| disk::control::find_disk(&dir));
            if let Some(record) = found {
                if let Err(error) = disk::stop_disk(&record) {
                    first_error.get_or_insert(error.into());
                }
            }
        }
        if let Some(network) = self.network.take() {
            if let Err(error) = network.destroy() {
                first_error.get_or_insert(error.into());
            }
        }
        if let Some(error) = teardown_remotes(&self.state.nodes).into_iter().next() {
            first_error.get_or_insert(error);
        }
        if let Some(path) = &self.state_path {
            let _ = std::fs::remove_file(path);
        }
        self.owned = false;
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            if let Err(error) = self.cleanup() {
                eprintln!("nemesis: cleanup failed: {error}");
            }
        }
    }
}

/// The backing directory `mount_disk` moves a node's data to: `<parent>/.<name>.kvdisk`.
fn disk_backing(data: &Path) -> PathBuf {
    let name = data.file_name().map(|n| n.to_string_lossy().into_owned());
    let parent = data.parent().unwrap_or(Path::new("."));
    parent.join(format!(".{}.kvdisk", name.unwrap_or_default()))
}

/// What a node logs when it recovers by repairing its data (kvstorage's torn-tail repair,
/// kvnode skipping a corrupt snapshot for an older one).
const REPAIR_MARKERS: [&str; 2] = ["torn tail repaired", "ignoring a corrupt snapshot"];

/// The last line of `text` (a log read from where the node was restarted) that reports a
/// repair, without its timestamp and level.
fn repair_line(text: &str) -> Option<String> {
    let line = text
        .lines()
        .rev()
        .find(|l| REPAIR_MARKERS.iter().any(|marker| l.contains(marker)))?;
    let message = line.split_once(": ").map_or(line, |(_, rest)| rest);
    Some(message.trim().chars().take(REASON_CHARS_MAX).collect())
}

/// The last non-empty line of a log's tail (why a node exited), shortened.
fn last_log_line(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let line = line.trim();
    if line.is_empty() {
        return "exited (its log says nothing)".to_string();
    }
    line.chars().take(REASON_CHARS_MAX).collect()
}

pub fn leader_of(statuses: &[NodeStatus]) -> Option<(NodeId, u64)> {
    statuses
        .iter()
        .filter_map(|s| {
            s.raft
                .filter(|r| r.role == Role::Leader)
                .map(|r| (s.id, r.term))
        })
        .max_by_key(|(_, term)| *term)
}

fn initial_state(spec: &ClusterSpec) -> ClusterState {
    let config = spec.config_path().to_string_lossy().into_owned();
    let binary = spec.node_binary.to_string_lossy().into_owned();
    let nodes = spec
        .node_ids()
        .into_iter()
        .map(|id| {
            let argv = [
                &binary,
                "run",
                "--config",
                &config,
                "--id",
                &spec::node_name(id),
            ];
            let namespace = (spec.backend == BackendKind::Netns).then(|| spec.netns.namespace(id));
            NodeRecord {
                id,
                pid: None,
                command: NodeCommand {
                    argv: argv.map(String::from).to_vec(),
                    cwd: spec.work_dir.clone(),
                    namespace,
                    log_path: spec.node_log(id),
                },
                address: spec.node_address(id),
                metrics_address: spec.metrics_address(id),
                pid_file: None,
                remote: None,
            }
        })
        .collect();
    ClusterState {
        backend: spec.backend,
        config_path: spec.config_path(),
        netns: (spec.backend == BackendKind::Netns).then(|| spec.netns.clone()),
        nodes,
        refused: BTreeMap::new(),
        repaired: BTreeMap::new(),
    }
}

/// The command that starts node `id` from its work directory on the host. The binary's
/// absolute path makes the command line differ between hosts that share one process table.
pub fn remote_command(remote: &RemoteNode, id: NodeId) -> NodeCommand {
    let argv = [
        remote.path(ssh::REMOTE_BINARY),
        "run".to_string(),
        "--config".to_string(),
        remote.path(ssh::REMOTE_CONFIG),
        "--id".to_string(),
        spec::node_name(id),
    ];
    NodeCommand {
        argv: argv.to_vec(),
        cwd: PathBuf::from(&remote.dir),
        namespace: None,
        log_path: PathBuf::from(remote.path(ssh::REMOTE_LOG)),
    }
}

/// The ssh backend's setup: opens a connection to every host (failing early, naming the host),
/// then on each host in parallel: creates the work directory, stops and removes what a crashed
/// earlier run left there, uploads `kvnode`, the node's config and its certificates.
fn setup_hosts(spec: &ClusterSpec) -> Result<Vec<RemoteNode>, ClusterError> {
    let control_dir = ssh::default_control_dir();
    let mut remotes = Vec::new();
    for (id, host) in spec.node_ids().into_iter().zip(&spec.hosts) {
        let remote = ssh::Remote::new(host.clone(), control_dir.clone());
        if let Err(error) = remote.connect() {
            for (_, connected) in &remotes {
                ssh::Remote::disconnect(connected);
            }
            return Err(error.into());
        }
        remotes.push((id, remote));
    }
    let staged = spec.work_dir.join("remote");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SpecError::Io { path, source }
    };
    std::fs::create_dir_all(&staged).map_err(io(&staged))?;
    let config = staged.join(ssh::REMOTE_CONFIG);
    std::fs::write(&config, spec.remote_config_toml()?).map_err(io(&config))?;
    let binary = staged.join(ssh::REMOTE_BINARY);
    stage_binary(&spec.node_binary, &binary).map_err(io(&binary))?;
    let results: Vec<Result<RemoteNode, ClusterError>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (remotes.iter())
            .map(|(id, remote)| scope.spawn(|| setup_host(spec, *id, remote, &[&binary, &config])))
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap_or(Err(ClusterError::Interrupted)))
            .collect()
    });
    let mut nodes = Vec::new();
    let mut first_error = None;
    for (result, (id, _)) in results.into_iter().zip(&remotes) {
        match result {
            Ok(node) => nodes.push((*id, node)),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        // The hosts that were set up are torn down again (a failed host cleaned up after
        // itself in `setup_host`); teardown also closes their connections.
        for (id, node) in &nodes {
            let record = NodeRecord {
                id: *id,
                pid: None,
                command: remote_command(node, *id),
                address: spec.node_address(*id),
                metrics_address: spec.metrics_address(*id),
                pid_file: None,
                remote: Some(node.clone()),
            };
            let _ = teardown_remote(&record);
        }
        for (_, remote) in &remotes {
            remote.disconnect();
        }
        return Err(error);
    }
    Ok(nodes.into_iter().map(|(_, node)| node).collect())
}

/// The binary uploaded to the hosts: `kvnode` without its debug sections (`objcopy
/// --strip-debug`: a release build with debuginfo shrinks about six-fold, symbols stay, so
/// backtraces keep their function names), or a plain copy where objcopy is missing or fails.
fn stage_binary(binary: &Path, staged: &Path) -> std::io::Result<()> {
    let stripped = std::process::Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(staged)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !stripped {
        std::fs::copy(binary, staged)?;
    }
    Ok(())
}

fn setup_host(
    spec: &ClusterSpec,
    id: NodeId,
    remote: &ssh::Remote,
    files: &[&Path],
) -> Result<RemoteNode, ClusterError> {
    let dir = remote.make_dir(&remote.host.dir_for(id))?;
    let node = RemoteNode {
        host: remote.host.clone(),
        dir,
        local_log: spec.node_log(id),
        control_dir: remote.control_dir.clone(),
        port: spec.node_address(id).port(),
    };
    let record = NodeRecord {
        id,
        pid: None,
        command: remote_command(&node, id),
        address: spec.node_address(id),
        metrics_address: spec.metrics_address(id),
        pid_file: None,
        remote: Some(node.clone()),
    };
    let filled = fill_host(spec, id, remote, files, &record, &node);
    if filled.is_err() {
        // Best effort: the error to report is the first one.
        let _ = remote.remove_work_dir(&node.dir);
    }
    filled.map(|()| node)
}

/// Stops a crashed run's node, removes its rules and files, uploads this run's.
fn fill_host(
    spec: &ClusterSpec,
    id: NodeId,
    remote: &ssh::Remote,
    files: &[&Path],
    record: &NodeRecord,
    node: &RemoteNode,
) -> Result<(), ClusterError> {
    kill_remote_leftover(record, node)?;
    remote.remove_chain()?;
    remote.reset_work_dir(&node.dir)?;
    remote.upload(files, &node.dir)?;
    let name = spec::node_name(id);
    let certs_dir = spec.certs_dir();
    let files = [
        certs_dir.join("ca.pem"),
        certs_dir.join(format!("{name}.pem")),
        certs_dir.join(format!("{name}.key")),
    ];
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    remote.upload(&files, &node.path(ssh::REMOTE_CERTS))?;
    Ok(())
}

/// SIGKILLs the process named in the host's pid file if it still runs this node's command
/// (a pid file from a crashed run; only pids from the host's own pid file are touched).
fn kill_remote_leftover(record: &NodeRecord, node: &RemoteNode) -> Result<bool, ClusterError> {
    let remote = node.remote();
    Ok(remote.kill_from_pid_file(&node.pid_file(), &record.command.argv, STOP_TIMEOUT)?)
}

/// `teardown_remote` for every node, the hosts in parallel. Returns the errors.
fn teardown_remotes(nodes: &[NodeRecord]) -> Vec<ClusterError> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = (nodes.iter())
            .filter(|node| node.remote.is_some())
            .map(|node| scope.spawn(|| teardown_remote(node)))
            .collect();
        threads
            .into_iter()
            .filter_map(|thread| {
                thread
                    .join()
                    .unwrap_or(Err(ClusterError::Interrupted))
                    .err()
            })
            .collect()
    })
}

/// The ssh backend's teardown of one node (nothing for other backends): kills what its pid
/// file names if that still runs, removes its iptables chain, fetches its log to
/// `local_log`, removes its work directory and closes the connection.
fn teardown_remote(record: &NodeRecord) -> Result<(), ClusterError> {
    let Some(node) = &record.remote else {
        return Ok(());
    };
    let remote = node.remote();
    let result = (|| {
        kill_remote_leftover(record, node)?;
        remote.remove_chain()?;
        let log = node.path(ssh::REMOTE_LOG);
        if remote.find_dir(&node.dir)?.is_some() && remote.file_len(&log)? > 0 {
            if let Some(parent) = node.local_log.parent() {
                std::fs::create_dir_all(parent).map_err(|source| SpecError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            remote.download(&log, &node.local_log)?;
        }
        remote.remove_work_dir(&node.dir)?;
        Ok(())
    })();
    remote.disconnect();
    result
}

fn load_config(path: &Path) -> Result<ConfigFile, ClusterError> {
    let config_error = |reason: String| ClusterError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
    toml::from_str(&text).map_err(|e| config_error(e.to_string()))
}

/// Undoes a recorded cluster without attaching to it: SIGKILLs recorded pids that still run the
/// recorded command, removes the network and the state file, then (as root) removes leftovers
/// named with `prefix`. Idempotent. Returns a line per thing removed.
pub fn cleanup(state_path: &Path, prefix: &str) -> Result<Vec<String>, ClusterError> {
    let mut removed = Vec::new();
    if state_path.exists() {
        let state = ClusterState::load(state_path)?;
        // Nodes on ssh hosts are handled by `teardown_remote` below, through their host.
        for node in state.nodes.iter().filter(|n| n.remote.is_none()) {
            if let Some(pid) = node.pid.filter(|pid| process::runs(*pid, &node.command)) {
                let _ = process::send_signal(pid, Signal::KILL);
                process::wait_gone(pid, STOP_TIMEOUT)?;
                removed.push(format!("killed n{} (pid {pid})", node.id));
            }
        }
        if let Some(error) = teardown_remotes(&state.nodes).into_iter().next() {
            return Err(error);
        }
        for node in &state.nodes {
            if let Some(remote) = &node.remote {
                removed.push(format!("n{}: {} cleaned", node.id, remote.host.name()));
            }
        }
        if let Some(layout) = &state.netns {
            let node_ids = state.nodes.iter().map(|n| n.id).collect();
            let network = Network {
                layout: layout.clone(),
                node_ids,
            };
            network.destroy()?;
            removed.extend(netns::remove_leftovers(&layout.prefix)?);
        }
        std::fs::remove_file(state_path).map_err(|e| ClusterError::State {
            path: state_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        removed.push(format!("removed {}", state_path.display()));
    }
    if netns::is_root() {
        removed.extend(netns::remove_leftovers(prefix)?);
    }
    removed.extend(disk::cleanup_disks()?);
    Ok(removed)
}

/// `nemesis cleanup --backend ssh --hosts FILE` without a state file: on each host (line k:
/// node n<k>), kills the node its pid file names if it still runs, removes the iptables chain
/// and the work directory (logs are fetched to `logs_dir/n<k>.log` first). Returns a line per
/// host.
pub fn cleanup_hosts(hosts: &[ssh::SshHost], logs_dir: &Path) -> Result<Vec<String>, ClusterError> {
    let mut removed = Vec::new();
    for (index, host) in hosts.iter().enumerate() {
        let id = index as NodeId + 1;
        let remote = ssh::Remote::new(host.clone(), ssh::default_control_dir());
        let Some(dir) = remote.find_dir(&host.dir_for(id))? else {
            remote.remove_chain()?;
            remote.disconnect();
            removed.push(format!("{}: no work directory", host.name()));
            continue;
        };
        let node = RemoteNode {
            host: host.clone(),
            dir: dir.clone(),
            local_log: logs_dir.join(format!("{}.log", spec::node_name(id))),
            control_dir: ssh::default_control_dir(),
            port: 0,
        };
        let record = NodeRecord {
            id,
            pid: None,
            command: remote_command(&node, id),
            address: std::net::SocketAddr::new(host.address, 0),
            metrics_address: std::net::SocketAddr::new(host.address, 0),
            pid_file: None,
            remote: Some(node),
        };
        teardown_remote(&record)?;
        removed.push(format!("{}: removed {dir}", host.name()));
    }
    Ok(removed)
}

/// A flag set on SIGINT or SIGTERM (instead of dying), for loops that end a fault early.
pub fn interrupt_flag() -> std::io::Result<std::sync::Arc<AtomicBool>> {
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let setter = flag.clone();
    on_interrupt(move || setter.store(true, Ordering::SeqCst))?;
    Ok(flag)
}

/// Runs `then` on a thread of its own at the first SIGINT or SIGTERM.
fn on_interrupt(then: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let (runtime, mut interrupt, mut terminate) = signal_streams()?;
    std::thread::Builder::new()
        .name("nemesis-interrupt".to_string())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            });
            then();
        })?;
    Ok(())
}

type SignalStreams = (
    tokio::runtime::Runtime,
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
);

/// Registered before returning, so no signal between now and the wait is missed. Tokio's
/// signal handling needs no unsafe code here.
fn signal_streams() -> std::io::Result<SignalStreams> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (interrupt, terminate) = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    Ok((runtime, interrupt, terminate))
}

/// On SIGINT or SIGTERM: stop (re)starting nodes, run `cleanup(state_path, prefix)`, exit 130.
pub fn cleanup_on_interrupt(state_path: PathBuf, prefix: String) -> std::io::Result<()> {
    on_interrupt(move || {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("nemesis: interrupted, cleaning up");
        match cleanup(&state_path, &prefix) {
            Ok(removed) => removed.iter().for_each(|line| eprintln!("nemesis: {line}")),
            Err(error) => eprintln!("nemesis: cleanup failed: {error}"),
        }
        std::process::exit(130);
    })
}

/// ` other than n1, n2`, or nothing when no node is excluded.
fn other_than(excluded: &[NodeId]) -> String {
    if excluded.is_empty() {
        return String::new();
    }
    let names: Vec<String> = excluded.iter().map(|id| format!("n{id}")).collect();
    format!(" other than {}", names.join(", "))
}
