//! Faults and their targets. Targets come from the live cluster (who leads now) and a seeded
//! RNG; partitions are grudges (node -> nodes it drops input from) applied with iptables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterError};
use crate::netns::Grudge;
use crate::rng::Rng;
use crate::spec::parse_node_name;
use crate::NodeId;

/// The history's process name for fault events.
pub const NEMESIS_PROCESS: &str = "nemesis";

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
}

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
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Partition { .. } => "partition",
        }
    }
    /// How long the fault lasts between `begin` and `end`.
    pub fn duration_ms(&self) -> u64 {
        match *self {
            Fault::Kill {
                restart_after_ms, ..
            } => restart_after_ms,
            Fault::Pause { duration_ms, .. } | Fault::Partition { duration_ms, .. } => duration_ms,
        }
    }
    fn detail(&self) -> String {
        match self {
            Fault::Kill { target, .. } | Fault::Pause { target, .. } => target.to_string(),
            Fault::Partition { kind, .. } => kind.name().to_string(),
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
            } | Fault::Partition {
                kind: PartitionKind::IsolateLeader,
                ..
            } | Fault::Partition {
                kind: PartitionKind::OneWay,
                ..
            }
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
        };
        let record = FaultRecord {
            process: NEMESIS_PROCESS,
            fault: fault.name().to_string(),
            detail: fault.detail(),
            targets,
            grudge,
            start_unix_ms,
            end_unix_ms: None,
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
        }
        let mut record = active.record;
        record.end_unix_ms = Some(unix_ms_now());
        Ok(record)
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
        self.cluster.revive_all()?;
        Ok(FaultRecord {
            process: NEMESIS_PROCESS,
            fault: "heal".to_string(),
            detail: "all".to_string(),
            targets: self.cluster.node_ids(),
            grudge: None,
            start_unix_ms,
            end_unix_ms: Some(unix_ms_now()),
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
