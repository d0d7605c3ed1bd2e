//! Cluster control and faults for ReplicatedKVStore campaigns.
//!
//! - [`spec::ClusterSpec`]: what to build (backend, node count, ports); writes the cluster TOML
//!   and certificates.
//! - [`cluster::Cluster`]: a running cluster on the `local` (127.0.0.1 processes) or `netns`
//!   (one network namespace per node on a bridge, root only) backend; kill/pause/restart,
//!   partitions, live roles and terms from metrics, and cleanup of everything it created.
//! - [`ssh`]: the `ssh` backend's hosts file and transport (system OpenSSH, one multiplexed
//!   connection per host); [`host::NodeHost`]: the one place a node's process is started,
//!   signalled and watched, on this machine or over ssh.
//! - [`fault::Nemesis`]: seeded faults with targets from the live cluster, each returning a
//!   [`fault::FaultRecord`] for the history (process "nemesis").
//! - [`fs`]: the fault-injecting FUSE filesystem (page-cache model: lose unsynced data, torn
//!   writes, bit flips, fsync errors) mounted over node data directories.
//! - [`schedule::schedule`]: a seeded fault schedule for a campaign.

pub mod cluster;
pub mod fault;
pub mod fs;
pub mod host;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod rng;
pub mod schedule;
pub mod spec;
pub mod ssh;
pub mod testbed;

/// Raft node id, as in `kvraft::message::NodeId`.
pub type NodeId = u64;

pub use cluster::{Cluster, ClusterError, NodeStatus};
pub use fault::{Fault, FaultError, FaultRecord, Nemesis, PartitionKind, Target};
pub use schedule::{schedule, FaultKind, ScheduleSpec, ScheduledFault};
pub use spec::{BackendKind, ClusterSpec, NetnsLayout};
