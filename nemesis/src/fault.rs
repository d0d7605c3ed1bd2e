//! Faults and their targets. Targets come from the live cluster (who leads now) and a seeded
//! RNG; partitions are grudges (node -> nodes it drops input from) applied with iptables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterError};
use crate::fs::{CrashReport, DiskReply, DiskRequest};
use crate::netns::Grudge;
use crate::rng::Rng;
use crate::spec::parse_node_name;
use crate::NodeId;

/// The history's process name for fault events.
pub const NEMESIS_PROCESS: &str = "nemesis";
/// How long the disks of a power cut's targets complete no fsync before the targets die
/// together (see `Nemesis::begin`).
const POWER_CUT_FREEZE_MS: u64 = 500;
/// How long a `disk-fsync-error` fault waits for each target's next fsync (the one that fails).
const FSYNC_ERROR_WAIT_MS: u64 = 2_000;
/// How long a target gets to stop by itself after its failed fsync before it is killed.
const FSYNC_ERROR_STOP_MS: u64 = 100;
const FSYNC_ERROR_POLL_MS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("no leader found in the cluster's metrics")]
    NoLeader,
    #[error("no node n{0} in this cluster")]
    UnknownNode(NodeId),
    #[error("{kind} needs at least {needed} nodes, the cluster has {have}")]
    TooFewNodes {
        kind: &'static str,
        needed: usize,
        have: usize,
    },
    #[error("unknown target '{0}': use n<k>, one, minority, leader or all")]
    Target(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "disk-corrupt skipped: {refused} node(s) refuse to start already; corrupting {wanted} \
         more could leave no majority"
    )]
    CorruptBudget { refused: usize, wanted: usize },
    #[error("disk-corrupt needs a target of one node, a minority or the leader, not all")]
    CorruptAll,
    #[error("unexpected reply from the disk of n{0}")]
    DiskReply(NodeId),
    #[error("membership change failed: {0}")]
    Membership(String),
}

/// The client certificate the membership fault uses (every cluster spec makes it).
const MEMBERSHIP_CLIENT: &str = "client1";
/// How long a node added back may take to catch up before its promotion gives up.
const MEMBERSHIP_PROMOTE_WAIT_MS: u64 = 20_000;

/// Which nodes a kill or pause hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// One random node.
    One,
    /// A random minority: (n - 1) / 2 nodes, at least one.
    Minority,
    /// The current leader.
    Leader,
    All,
    Node(NodeId),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::One => f.write_str("one"),
            Target::Minority => f.write_str("minority"),
            Target::Leader => f.write_str("leader"),
            Target::All => f.write_str("all"),
            Target::Node(id) => write!(f, "n{id}"),
        }
    }
}

impl FromStr for Target {
    type Err = FaultError;
    fn from_str(text: &str) -> Result<Target, FaultError> {
        match text {
            "one" => Ok(Target::One),
            "minority" => Ok(Target::Minority),
            "leader" => Ok(Target::Leader),
            "all" => Ok(Target::All),
            _ => parse_node_name(text)
                .map(Target::Node)
                .ok_or_else(|| FaultError::Target(text.to_string())),
        }
    }
}

/// Partition shapes (Jepsen's nemesis names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKind {
    /// The leader against everyone else.
    IsolateLeader,
    /// Random minority against random majority.
    Halves,
    /// Every node sees a majority, no two nodes the same one.
    Ring,
    /// Two halves plus one node that sees both.
    Bridge,
    /// The leader (a random node if none) receives nothing from the others; they still hear it.
    OneWay,
}

impl PartitionKind {
    pub const ALL: [PartitionKind; 5] = [
        PartitionKind::IsolateLeader,
        PartitionKind::Halves,
        PartitionKind::Ring,
        PartitionKind::Bridge,
        PartitionKind::OneWay,
    ];
    pub fn name(self) -> &'static str {
        match self {
            PartitionKind::IsolateLeader => "isolate-leader",
            PartitionKind::Halves => "halves",
            PartitionKind::Ring => "ring",
            PartitionKind::Bridge => "bridge",
            PartitionKind::OneWay => "one-way",
        }
    }
}

/// What a disk fault does to the fault-injecting filesystem under a node (`nemesis::fs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFault {
    /// Power cut: SIGKILL, then every byte and directory entry not fsynced is gone.
    LoseUnsynced,
    /// Power cut during a write: as lose-unsynced, but the last unsynced write survives as a
    /// random whole-sector prefix.
    Torn,
    /// SIGKILL, one bit flipped in a synced non-last WAL segment or snapshot, restart.
    Corrupt,
    /// The next fsync/fdatasync fails with EIO (the node must stop); restart at the end.
    FsyncError,
}

impl DiskFault {
    pub const ALL: [DiskFault; 4] = [
        DiskFault::LoseUnsynced,
        DiskFault::Torn,
        DiskFault::Corrupt,
        DiskFault::FsyncError,
    ];
    /// The campaign fault name: `disk-lose-unsynced`, ...
    pub fn name(self) -> &'static str {
        match self {
            DiskFault::LoseUnsynced => "disk-lose-unsynced",
            DiskFault::Torn => "disk-torn",
            DiskFault::Corrupt => "disk-corrupt",
            DiskFault::FsyncError => "disk-fsync-error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "fault")]
pub enum Fault {
    /// SIGKILL the targets, restart them after `restart_after_ms`.
    Kill {
        target: Target,
        restart_after_ms: u64,
    },
    /// SIGSTOP the targets, SIGCONT after `duration_ms`.
    Pause { target: Target, duration_ms: u64 },
    /// Cut links (netns backend), heal after `duration_ms`.
    Partition {
        kind: PartitionKind,
        duration_ms: u64,
    },
    /// A disk fault on the targets' filesystems; the targets restart after `duration_ms`
    /// (fsync-error: the error stays armed that long).
    Disk {
        kind: DiskFault,
        target: Target,
        duration_ms: u64,
    },
    /// A random voter (the leader if `leader`: replacing the leader) is removed from the
    /// configuration (`kvctl member remove`); after `duration_ms` it is added back as a learner
    /// and promoted once caught up. The node keeps running meanwhile.
    Membership { leader: bool, duration_ms: u64 },
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Partition { .. } => "partition",
            Fault::Disk { kind, .. } => kind.name(),
            Fault::Membership { .. } => "membership",
        }
    }
    /// How long the fault lasts between `begin` and `end`.
    pub fn duration_ms(&self) -> u64 {
        match *self {
            Fault::Kill {
                restart_after_ms, ..
            } => restart_after_ms,
            Fault::Pause { duration_ms, .. }
            | Fault::Partition { duration_ms, .. }
            | Fault::Disk { duration_ms, .. }
            | Fault::Membership { duration_ms, .. } => duration_ms,
        }
    }
    fn detail(&self) -> String {
        match self {
            Fault::Kill { target, .. }
            | Fault::Pause { target, .. }
            | Fault::Disk { target, .. } => target.to_string(),
            Fault::Partition { kind, .. } => kind.name().to_string(),
            Fault::Membership { leader: true, .. } => "leader".to_string(),
            Fault::Membership { leader: false, .. } => "voter".to_string(),
        }
    }
}

/// What a fault did, for the history (process "nemesis") and the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultRecord {
    pub process: &'static str,
    /// kill, pause, partition, heal.
    pub fault: String,
    /// The target or partition kind asked for: leader, minority, n2, ring, ...
    pub detail: String,
    /// The nodes hit (for a partition, every node with a grudge).
    pub targets: Vec<NodeId>,
    /// The partition's rules: node -> nodes it drops input from.
    pub grudge: Option<Grudge>,
    pub start_unix_ms: u64,
    /// `None` while the fault is active.
    pub end_unix_ms: Option<u64>,
    /// What happened on each node, for disk faults: what the filesystem discarded, tore or
    /// flipped, whether the node stopped after a failed fsync, restarted or refused to start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The nodes a kill or pause hits.
pub fn pick_targets(
    target: Target,
    nodes: &[NodeId],
    leader: Option<NodeId>,
    rng: &mut Rng,
) -> Result<Vec<NodeId>, FaultError> {
    let mut shuffled = nodes.to_vec();
    rng.shuffle(&mut shuffled);
    let mut picked = match target {
        Target::One => shuffled.into_iter().take(1).collect(),
        Target::Minority => {
            let count = ((nodes.len().saturating_sub(1)) / 2).max(1);
            shuffled.into_iter().take(count).collect()
        }
        Target::Leader => vec![leader.ok_or(FaultError::NoLeader)?],
        Target::All => shuffled,
        Target::Node(id) if nodes.contains(&id) => vec![id],
        Target::Node(id) => return Err(FaultError::UnknownNode(id)),
    };
    picked.sort();
    Ok(picked)
}

/// One line for a crash: what the filesystem discarded and what survived torn.
fn crash_note(report: &CrashReport) -> String {
    let mut note = format!(
        "killed; {} file(s) lost {} unsynced byte(s), {} directory change(s) undone",
        report.files_reverted, report.bytes_restored, report.entries_undone
    );
    if let Some(torn) = &report.torn {
        note.push_str(&format!(
            "; torn write of {} B at byte {} of {}: {} B kept",
            torn.written_bytes, torn.offset, torn.file, torn.kept_bytes
        ));
    }
    note
}

/// Each node drops input from every node outside its own component.
pub fn complete_grudge(components: &[Vec<NodeId>]) -> Grudge {
    let mut grudge = Grudge::new();
    for (index, component) in components.iter().enumerate() {
        for node in component {
            let others: BTreeSet<NodeId> = components
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .flat_map(|(_, c)| c)
                .copied()
                .collect();
            grudge.insert(*node, others);
        }
    }
    grudge
}

/// The grudge for a partition kind. Needs 2 nodes (bridge: 3).
pub fn partition_grudge(
    kind: PartitionKind,
    nodes: &[NodeId],
    leader: Option<NodeId>,
    rng: &mut Rng,
) -> Result<Grudge, FaultError> {
    let needed = if kind == PartitionKind::Bridge { 3 } else { 2 };
    if nodes.len() < needed {
        return Err(FaultError::TooFewNodes {
            kind: kind.name(),
            needed,
            have: nodes.len(),
        });
    }
    let mut shuffled = nodes.to_vec();
    rng.shuffle(&mut shuffled);
    let grudge = match kind {
        PartitionKind::IsolateLeader => {
            let leader = leader.ok_or(FaultError::NoLeader)?;
            let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != leader).collect();
            complete_grudge(&[vec![leader], rest])
        }
        PartitionKind::Halves => {
            let minority = shuffled.split_off(nodes.len() / 2);
            complete_grudge(&[shuffled, minority])
        }
        PartitionKind::Ring => ring_grudge(&shuffled),
        PartitionKind::Bridge => {
            let rest = shuffled.split_off(1);
            let (left, right) = rest.split_at(rest.len() / 2);
            let mut grudge = complete_grudge(&[left.to_vec(), right.to_vec()]);
            grudge.insert(shuffled[0], BTreeSet::new());
            grudge
        }
        PartitionKind::OneWay => {
            let victim = leader.unwrap_or(shuffled[0]);
            let others = nodes.iter().copied().filter(|n| *n != victim).collect();
            BTreeMap::from([(victim, others)])
        }
    };
    Ok(grudge)
}

/// Nodes on a ring (in shuffled order); each accepts input from the majority-sized window
/// around itself and drops the rest. With 5 nodes: a accepts e,a,b; b accepts a,b,c; ...
/// With 3 nodes the window is itself and its successor, so every link is cut one way.
fn ring_grudge(ring: &[NodeId]) -> Grudge {
    let n = ring.len();
    let majority = n / 2 + 1;
    let before = (majority - 1) / 2;
    let mut grudge = Grudge::new();
    for (i, node) in ring.iter().enumerate() {
        let window: BTreeSet<NodeId> = (0..majority)
            .map(|offset| ring[(i + n - before + offset) % n])
            .collect();
        let dropped = ring
            .iter()
            .copied()
            .filter(|m| !window.contains(m))
            .collect();
        grudge.insert(*node, dropped);
    }
    grudge
}

/// A fault between `begin` and `end`.
#[derive(Clone, Debug)]
pub struct ActiveFault {
    pub fault: Fault,
    pub record: FaultRecord,
}

/// Injects faults into a cluster it owns. Target choice is reproducible from the seed given the
/// same live states.
pub struct Nemesis {
    cluster: Cluster,
    rng: Rng,
}

impl Nemesis {
    pub fn new(cluster: Cluster, seed: u64) -> Nemesis {
        Nemesis {
            cluster,
            rng: Rng::new(seed),
        }
    }
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
    pub fn cluster_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
    pub fn into_cluster(self) -> Cluster {
        self.cluster
    }

    fn needs_leader(fault: &Fault) -> bool {
        matches!(
            fault,
            Fault::Kill {
                target: Target::Leader,
                ..
            } | Fault::Pause {
                target: Target::Leader,
                ..
            } | Fault::Disk {
                target: Target::Leader,
                ..
            } | Fault::Partition {
                kind: PartitionKind::IsolateLeader,
                ..
            } | Fault::Partition {
                kind: PartitionKind::OneWay,
                ..
            } | Fault::Membership { leader: true, .. }
        )
    }

    /// Starts the fault. The returned record has no end time yet.
    pub fn begin(&mut self, fault: &Fault) -> Result<ActiveFault, FaultError> {
        let leader = if Self::needs_leader(fault) {
            self.cluster.leader().map(|(id, _)| id)
        } else {
            None
        };
        let nodes = self.cluster.node_ids();
        let start_unix_ms = unix_ms_now();
        let mut notes = Vec::new();
        let (targets, grudge) = match *fault {
            Fault::Kill { target, .. } => {
                let targets = pick_targets(target, &nodes, leader, &mut self.rng)?;
                for id in &targets {
                    self.cluster.kill(*id)?;
                }
                (targets, None)
            }
            Fault::Pause { target, .. } => {
                let targets = pick_targets(target, &nodes, leader, &mut self.rng)?;
                for id in &targets {
                    self.cluster.pause(*id)?;
                }
                (targets, None)
            }
            Fault::Partition { kind, .. } => {
                let grudge = partition_grudge(kind, &nodes, leader, &mut self.rng)?;
                self.cluster.block(&grudge)?;
                let targets = grudge
                    .iter()
                    .filter(|(_, d)| !d.is_empty())
                    .map(|(n, _)| *n);
                (targets.collect(), Some(grudge))
            }
            Fault::Disk { kind, target, .. } => {
                let targets = self.disk_targets(kind, target, leader)?;
                let power_cut = matches!(kind, DiskFault::LoseUnsynced | DiskFault::Torn);
                if power_cut {
                    // A power cut: the disks stop completing flushes first (an fsync then
                    // blocks), for POWER_CUT_FREEZE_MS, then all targets die together.
                    // Whatever a node acknowledges meanwhile rests on no completed fsync and
                    // is lost; a node that waits for its fsyncs acknowledges nothing.
                    for id in &targets {
                        self.disk(*id, &DiskRequest::Freeze)?;
                    }
                    std::thread::sleep(Duration::from_millis(POWER_CUT_FREEZE_MS));
                }
                if kind != DiskFault::FsyncError {
                    let release = power_cut.then_some(&DiskRequest::Release);
                    self.cluster.kill_together(&targets, release)?;
                }
                for id in &targets {
                    notes.push(format!("n{id}: {}", self.begin_disk(kind, *id)?));
                }
                if kind == DiskFault::FsyncError {
                    notes.append(&mut self.watch_fsync_errors(&targets)?);
                }
                (targets, None)
            }
            Fault::Membership { leader: true, .. } => {
                let victim = leader.ok_or(FaultError::NoLeader)?;
                notes.push(self.remove_member(victim)?);
                (vec![victim], None)
            }
            Fault::Membership { leader: false, .. } => {
                let voters = self.voters()?;
                let victim = *self.rng.choose(&voters).ok_or(FaultError::NoLeader)?;
                notes.push(self.remove_member(victim)?);
                (vec![victim], None)
            }
        };
        let record = FaultRecord {
            process: NEMESIS_PROCESS,
            fault: fault.name().to_string(),
            detail: fault.detail(),
            targets,
            grudge,
            start_unix_ms,
            end_unix_ms: None,
            notes,
        };
        Ok(ActiveFault {
            fault: *fault,
            record,
        })
    }

    /// Ends the fault: restarts killed nodes, resumes paused ones, heals a partition.
    pub fn end(&mut self, active: ActiveFault) -> Result<FaultRecord, FaultError> {
        match active.fault {
            Fault::Kill { .. } => {
                for id in &active.record.targets {
                    self.cluster.restart(*id)?;
                }
            }
            Fault::Pause { .. } => {
                for id in &active.record.targets {
                    self.cluster.resume(*id)?;
                }
            }
            Fault::Partition { .. } => self.cluster.heal()?,
            Fault::Membership { .. } => {
                let mut record = active.record;
                for id in record.targets.clone() {
                    let mut notes = self.add_back(id)?;
                    record.notes.append(&mut notes);
                }
                record.end_unix_ms = Some(unix_ms_now());
                return Ok(record);
            }
            Fault::Disk { kind, .. } => {
                let mut notes = self.end_disk(kind, &active.record.targets)?;
                let mut record = active.record;
                record.notes.append(&mut notes);
                record.end_unix_ms = Some(unix_ms_now());
                return Ok(record);
            }
        }
        let mut record = active.record;
        record.end_unix_ms = Some(unix_ms_now());
        Ok(record)
    }

    /// Runs one membership request through the cluster's client (`client1`), retried by the
    /// client library across leader changes.
    fn members<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, kvclient::ClientError>>,
    ) -> Result<T, FaultError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FaultError::Membership(e.to_string()))?;
        runtime
            .block_on(request)
            .map_err(|e| FaultError::Membership(e.to_string()))
    }

    fn client(&self) -> Result<kvclient::ClientConfig, FaultError> {
        let config = kvclient::config::ClusterConfig::load(self.cluster.config_path())
            .map_err(|e| FaultError::Membership(e.to_string()))?;
        Ok(kvclient::ClientConfig::from_cluster(
            &config,
            MEMBERSHIP_CLIENT,
        ))
    }

    /// The voters of the configuration in force, as the leader sees it.
    fn voters(&self) -> Result<Vec<NodeId>, FaultError> {
        let config = self.client()?;
        let list = self.members(async move {
            let client = kvclient::Client::connect(config).await?;
            client.members().await
        })?;
        Ok((list.members.iter())
            .filter(|m| m.role == kvstate::members::MemberRole::Voter)
            .map(|m| m.id)
            .collect())
    }

    /// Removes `id`. A change whose answer was lost in a leader change (a leader removing
    /// itself) counts as done when the member list shows it (`Client::member_change`).
    fn remove_member(&self, id: NodeId) -> Result<String, FaultError> {
        let config = self.client()?;
        let list = self.members(async move {
            let client = kvclient::Client::connect(config).await?;
            let op = kvstate::members::MemberOp::Remove { id };
            client.member_change(op).await
        })?;
        Ok(format!(
            "n{id} removed (configuration index {})",
            list.config_index
        ))
    }

    /// Adds `id` back as a learner at its address and promotes it once it has caught up
    /// (within `MEMBERSHIP_PROMOTE_WAIT_MS`).
    fn add_back(&self, id: NodeId) -> Result<Vec<String>, FaultError> {
        let config = self.client()?;
        let address = self.cluster.node(id)?.address.to_string();
        let (added, promoted) = self.members(async move {
            let client = kvclient::Client::connect(config).await?;
            let op = kvstate::members::MemberOp::AddLearner { id, address };
            let added = client.member_change(op).await?;
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(MEMBERSHIP_PROMOTE_WAIT_MS);
            loop {
                let promote = kvstate::members::MemberOp::Promote { id };
                match client.member_change(promote).await {
                    Ok(promoted) => return Ok((added, Ok(promoted))),
                    Err(error) if tokio::time::Instant::now() >= deadline => {
                        return Ok((added, Err(error.to_string())))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })?;
        let promoted = promoted.map_err(|last_error| {
            FaultError::Membership(format!(
                "n{id} was not promoted within {MEMBERSHIP_PROMOTE_WAIT_MS} ms (last answer: \
                 {last_error}); it stays a learner"
            ))
        })?;
        Ok(vec![
            format!(
                "n{id} added back as a learner (configuration index {})",
                added.config_index
            ),
            format!(
                "n{id} promoted (configuration index {})",
                promoted.config_index
            ),
        ])
    }

    /// Targets among the nodes that still start. Corruption is kept to a minority over the
    /// whole run (a node refusing to start on corrupt data stays down), so a majority always
    /// remains.
    fn disk_targets(
        &mut self,
        kind: DiskFault,
        target: Target,
        leader: Option<NodeId>,
    ) -> Result<Vec<NodeId>, FaultError> {
        let nodes = self.cluster.node_ids();
        let refused = self.cluster.refused().len();
        let live: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|id| !self.cluster.refused().contains_key(id))
            .collect();
        let targets = match target {
            // A minority of the whole cluster, chosen among the nodes that still start.
            Target::Minority if kind == DiskFault::Corrupt => {
                let count = (nodes.len().saturating_sub(1) / 2).max(1);
                let mut picked = pick_targets(Target::All, &live, leader, &mut self.rng)?;
                picked.truncate(count);
                picked
            }
            _ => pick_targets(target, &live, leader, &mut self.rng)?,
        };
        if kind == DiskFault::Corrupt {
            if target == Target::All {
                return Err(FaultError::CorruptAll);
            }
            if refused + targets.len() > nodes.len().saturating_sub(1) / 2 {
                return Err(FaultError::CorruptBudget {
                    refused,
                    wanted: targets.len(),
                });
            }
        }
        Ok(targets)
    }

    fn begin_disk(&mut self, kind: DiskFault, id: NodeId) -> Result<String, FaultError> {
        let seed = self.rng.next_u64();
        let request = match kind {
            DiskFault::FsyncError => {
                self.disk(id, &DiskRequest::FsyncError)?;
                return Ok("the next fsync fails with EIO".to_string());
            }
            DiskFault::LoseUnsynced => DiskRequest::LoseUnsynced,
            DiskFault::Torn => DiskRequest::Torn { seed },
            DiskFault::Corrupt => DiskRequest::Corrupt { seed },
        };
        match self.cluster.disk_request(id, &request) {
            Ok(DiskReply::Crashed(report)) => Ok(crash_note(&report)),
            Ok(DiskReply::Corrupted(c)) => Ok(format!(
                "flipped bit {} of byte {} in {}",
                c.bit, c.offset, c.file
            )),
            Ok(_) => Err(FaultError::DiskReply(id)),
            // Nothing sealed to corrupt yet: the node is started again, the fault says so.
            Err(ClusterError::Disk(error)) if kind == DiskFault::Corrupt => {
                self.cluster.restart(id)?;
                Ok(format!("nothing corrupted: {error}"))
            }
            Err(error) => Err(error.into()),
        }
    }

    fn disk(&mut self, id: NodeId, request: &DiskRequest) -> Result<DiskReply, FaultError> {
        Ok(self.cluster.disk_request(id, request)?)
    }

    /// Whether the fsync error armed on `id` was injected (one is armed per fault: none left
    /// means it was).
    fn fsync_error_injected(&mut self, id: NodeId) -> Result<bool, FaultError> {
        match self.disk(id, &DiskRequest::Status)? {
            DiskReply::Status(status) => Ok(status.fsync_errors_armed == 0),
            _ => Err(FaultError::DiskReply(id)),
        }
    }

    /// After arming fsync errors: waits up to `FSYNC_ERROR_WAIT_MS` for each target's failed
    /// fsync, then gives it `FSYNC_ERROR_STOP_MS` to stop by itself. A target still running
    /// then is killed: it carried on past a failed fsync, and killing it before a snapshot or
    /// a peer's copy covers what the failed fsync dropped lets the checker see what it
    /// acknowledged without it. Returns a note per target whose error was injected.
    fn watch_fsync_errors(&mut self, targets: &[NodeId]) -> Result<Vec<String>, FaultError> {
        let start = Instant::now();
        let wait = Duration::from_millis(FSYNC_ERROR_WAIT_MS);
        let grace = Duration::from_millis(FSYNC_ERROR_STOP_MS);
        let mut injected_at: BTreeMap<NodeId, Instant> = BTreeMap::new();
        let mut watching: Vec<NodeId> = targets.to_vec();
        let mut notes = Vec::new();
        while !watching.is_empty() {
            let now = Instant::now();
            let mut due = Vec::new();
            let mut still = Vec::new();
            for id in watching {
                let Some(at) = injected_at.get(&id).copied() else {
                    if self.fsync_error_injected(id)? {
                        injected_at.insert(id, now);
                        still.push(id);
                    } else if now.duration_since(start) < wait {
                        still.push(id);
                    }
                    // Not injected within the wait: left armed, `end_disk` looks again.
                    continue;
                };
                let since = now.duration_since(at);
                if self.cluster.running_pid(id)?.is_none() {
                    notes.push(format!("n{id}: stopped after its failed fsync"));
                } else if since >= grace {
                    due.push(id);
                } else {
                    still.push(id);
                }
            }
            if !due.is_empty() {
                self.cluster.kill_together(&due, None)?;
                for id in due {
                    notes.push(format!(
                        "n{id}: still running {FSYNC_ERROR_STOP_MS} ms after its failed fsync \
                         (killed)"
                    ));
                }
            }
            watching = still;
            std::thread::sleep(Duration::from_millis(FSYNC_ERROR_POLL_MS));
        }
        Ok(notes)
    }

    /// Restarts the targets, then watches them start. fsync-error: a target whose error came
    /// only after `watch_fsync_errors` gave up is noted and, if still running, killed (all
    /// at once, before any restart: one restarted early would copy back from a live peer
    /// what the others lost); a target whose error never came is disarmed and left running.
    fn end_disk(&mut self, kind: DiskFault, targets: &[NodeId]) -> Result<Vec<String>, FaultError> {
        let mut notes = Vec::new();
        if kind == DiskFault::FsyncError {
            let mut late = Vec::new();
            for id in targets {
                let running = self.cluster.running_pid(*id)?.is_some();
                let injected = running && self.fsync_error_injected(*id)?;
                self.disk(*id, &DiskRequest::Disarm)?;
                let note = match (running, injected) {
                    (false, _) => continue,
                    (true, false) => "no fsync failed during the fault",
                    (true, true) => "still running after a late failed fsync (killed now)",
                };
                notes.push(format!("n{id}: {note}"));
                if injected {
                    late.push(*id);
                }
            }
            self.cluster.kill_together(&late, None)?;
        }
        for id in targets {
            self.cluster.restart(*id)?;
        }
        for (id, outcome) in self.cluster.settle(targets)? {
            notes.push(format!("n{id}: {outcome}"));
        }
        Ok(notes)
    }

    /// `begin`, sleep the fault's duration, `end`.
    pub fn run(&mut self, fault: &Fault) -> Result<FaultRecord, FaultError> {
        let active = self.begin(fault)?;
        std::thread::sleep(Duration::from_millis(fault.duration_ms()));
        self.end(active)
    }

    /// Heals partitions, resumes paused nodes and restarts dead ones (end of a campaign).
    pub fn heal_all(&mut self) -> Result<FaultRecord, FaultError> {
        let start_unix_ms = unix_ms_now();
        self.cluster.heal()?;
        let mut down = Vec::new();
        for id in self.cluster.node_ids() {
            let refused = self.cluster.refused().contains_key(&id);
            if !refused && self.cluster.running_pid(id)?.is_none() {
                down.push(id);
            }
        }
        self.cluster.revive_all()?;
        let notes = self.cluster.settle(&down)?;
        Ok(FaultRecord {
            process: NEMESIS_PROCESS,
            fault: "heal".to_string(),
            detail: "all".to_string(),
            targets: self.cluster.node_ids(),
            grudge: None,
            start_unix_ms,
            end_unix_ms: Some(unix_ms_now()),
            notes: notes
                .into_iter()
                .map(|(id, outcome)| format!("n{id}: {outcome}"))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reachable(grudge: &Grudge, from: NodeId, to: NodeId) -> bool {
        !grudge
            .get(&to)
            .is_some_and(|dropped| dropped.contains(&from))
    }

    #[test]
    fn targets_follow_the_request_and_the_seed() {
        let nodes = [1, 2, 3, 4, 5];
        let mut rng = Rng::new(1);
        assert_eq!(
            pick_targets(Target::Leader, &nodes, Some(4), &mut rng).unwrap(),
            [4]
        );
        assert!(matches!(
            pick_targets(Target::Leader, &nodes, None, &mut rng),
            Err(FaultError::NoLeader)
        ));
        assert_eq!(
            pick_targets(Target::Minority, &nodes, None, &mut rng)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            pick_targets(Target::All, &nodes, None, &mut rng).unwrap(),
            nodes
        );
        let a = pick_targets(Target::One, &nodes, None, &mut Rng::new(9)).unwrap();
        let b = pick_targets(Target::One, &nodes, None, &mut Rng::new(9)).unwrap();
        assert_eq!(a, b);
        assert_eq!("n3".parse::<Target>().unwrap(), Target::Node(3));
        assert!("n3x".parse::<Target>().is_err());
    }

    #[test]
    fn isolate_leader_and_halves_cut_both_ways_between_components() {
        let nodes = [1, 2, 3, 4, 5];
        let grudge = partition_grudge(
            PartitionKind::IsolateLeader,
            &nodes,
            Some(2),
            &mut Rng::new(3),
        )
        .unwrap();
        for other in [1, 3, 4, 5] {
            assert!(!reachable(&grudge, 2, other) && !reachable(&grudge, other, 2));
            assert!(reachable(&grudge, other, 1) && reachable(&grudge, 1, other));
        }
        let grudge =
            partition_grudge(PartitionKind::Halves, &nodes, None, &mut Rng::new(5)).unwrap();
        let sizes: BTreeSet<usize> = grudge.values().map(|d| d.len()).collect();
        assert_eq!(sizes, BTreeSet::from([2, 3]));
    }

    #[test]
    fn ring_gives_every_node_a_distinct_majority() {
        for n in [3u64, 4, 5, 7] {
            let nodes: Vec<NodeId> = (1..=n).collect();
            let grudge =
                partition_grudge(PartitionKind::Ring, &nodes, None, &mut Rng::new(n)).unwrap();
            let mut views = BTreeSet::new();
            for node in &nodes {
                let seen: BTreeSet<NodeId> = nodes
                    .iter()
                    .copied()
                    .filter(|m| reachable(&grudge, *m, *node))
                    .collect();
                assert!(seen.len() as u64 > n / 2, "n={n} node={node} sees {seen:?}");
                assert!(seen.contains(node));
                views.insert(seen);
            }
            assert_eq!(views.len() as u64, n, "n={n}: views must differ");
        }
    }

    #[test]
    fn bridge_keeps_one_node_connected_to_both_sides() {
        let nodes = [1, 2, 3, 4, 5];
        let grudge =
            partition_grudge(PartitionKind::Bridge, &nodes, None, &mut Rng::new(2)).unwrap();
        let bridges: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|b| {
                nodes
                    .iter()
                    .all(|o| reachable(&grudge, *o, *b) && reachable(&grudge, *b, *o))
            })
            .collect();
        assert_eq!(bridges.len(), 1);
        let cut = grudge.values().filter(|d| d.len() == 2).count();
        assert_eq!(cut, 4);
        assert!(partition_grudge(PartitionKind::Bridge, &[1, 2], None, &mut Rng::new(1)).is_err());
    }

    #[test]
    fn one_way_drops_only_into_the_leader() {
        let grudge =
            partition_grudge(PartitionKind::OneWay, &[1, 2, 3], Some(3), &mut Rng::new(1)).unwrap();
        assert!(!reachable(&grudge, 1, 3) && !reachable(&grudge, 2, 3));
        assert!(reachable(&grudge, 3, 1) && reachable(&grudge, 3, 2) && reachable(&grudge, 1, 2));
    }
}
