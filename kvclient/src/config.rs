//! The cluster configuration file (TOML). Every node of a cluster reads the same file and picks
//! its own entry by id. See `proto-docs/operations.md` for an annotated example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use kvraft::NodeId;

/// A mistake in the configuration, named by its setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is in the message, not a `source`: printed with its causes (`{:#}`),
    /// it would be said twice.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config setting `{setting}`: {reason}")]
    Invalid { setting: String, reason: String },
    #[error("node `{0}` is not in the config (nodes: {1})")]
    UnknownNode(String, String),
}

fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_string(),
        reason: reason.into(),
    }
}

/// One member of the cluster.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The Raft id (> 0). The node's name, in certificates and on the command line, is `n<id>`.
    pub id: NodeId,
    /// QUIC (UDP) address for peers and clients.
    pub address: SocketAddr,
    /// Prometheus metrics over HTTP. Defaults to the same IP with port + 1000.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    /// Not part of the initial configuration: the node was (or will be) added to the running
    /// cluster with `kvctl member add`, and starts as a non-member waiting to be added as a
    /// learner (`kvnode run --join` says the same for one node).
    #[serde(default)]
    pub join: bool,
}

impl NodeSpec {
    pub fn name(&self) -> String {
        format!("n{}", self.id)
    }

    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics_address.unwrap_or_else(|| {
            let mut address = self.address;
            address.set_port(self.address.port().saturating_add(METRICS_PORT_OFFSET));
            address
        })
    }
}

/// The metrics port is the node's port plus this.
pub const METRICS_PORT_OFFSET: u16 = 1000;

fn default_tick_ms() -> u64 {
    10
}
fn default_election_timeout_ms() -> u64 {
    1000
}
fn default_heartbeat_interval_ms() -> u64 {
    100
}
/// The node's default `snapshot_entries` (cluster.toml).
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 100_000;
fn default_snapshot_entries() -> u64 {
    SNAPSHOT_ENTRIES_DEFAULT
}
/// The node's default `log_memory_bytes_max` (kvcore's `LOG_MEMORY_BYTES_MAX_DEFAULT`).
pub const LOG_MEMORY_BYTES_MAX_DEFAULT: u64 = 16 << 20;
fn default_log_memory_bytes_max() -> u64 {
    LOG_MEMORY_BYTES_MAX_DEFAULT
}
/// The WAL's default segment size (kvstorage's `WalConfig` default).
pub const WAL_SEGMENT_BYTES_DEFAULT: u64 = 16 << 20;
/// The smallest WAL segment a config may ask for: a segment holds its header, the current hard
/// state and compaction point, and at least a few records.
pub const WAL_SEGMENT_BYTES_MIN: u64 = 64 << 10;

fn default_wal_segment_bytes() -> u64 {
    WAL_SEGMENT_BYTES_DEFAULT
}
fn default_wal_sync_inline_when_following() -> bool {
    true
}
fn default_proposals_pending_max() -> usize {
    65_536
}
fn default_request_timeout_ms() -> u64 {
    5_000
}

/// The whole cluster's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Node k keeps its state (wal/, snap/, LOCK) in `<data_dir>/n<k>`. Relative paths are
    /// relative to the config file's directory.
    pub data_dir: PathBuf,
    /// The cluster CA and the nodes' and clients' certificates (`kvnode certs`).
    pub certs_dir: PathBuf,
    /// One Raft tick. Smaller ticks react faster and cost more wake-ups.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Followers start an election after a random time in [1x, 2x) this without a leader.
    /// Must cover a few heartbeats plus the worst fsync stall.
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Take a snapshot and compact the log every this many applied entries.
    #[serde(default = "default_snapshot_entries")]
    pub snapshot_entries: u64,
    /// Bytes of log entries (payload plus 24 each) a node holds in memory; older applied
    /// entries are evicted (they stay in the WAL, and a leader reads them back for a follower
    /// that needs them). Smaller keeps a node's memory closer to its state's size; larger
    /// serves lagging followers from memory. 0 evicts every applied, durable entry.
    #[serde(default = "default_log_memory_bytes_max")]
    pub log_memory_bytes_max: u64,
    /// Preallocated size of a WAL segment. Smaller segments roll and get deleted by compaction
    /// more often (campaigns that corrupt sealed segments use small ones so that some exist).
    #[serde(default = "default_wal_segment_bytes")]
    pub wal_segment_bytes: u64,
    /// A node that does not lead writes and fdatasyncs its WAL on its own thread, when the
    /// WAL thread is idle, instead of handing each write over and waiting for the report:
    /// two thread wake-ups fewer on every append's path, for a follower that has nothing to
    /// do meanwhile but wait for that sync anyway. The node answers nothing (heartbeats
    /// included) while its disk syncs, so turn it off where one sync can stall for a good
    /// part of `election_timeout_ms`. A leader always uses the WAL thread: it keeps
    /// serving while its disk syncs.
    #[serde(default = "default_wal_sync_inline_when_following")]
    pub wal_sync_inline_when_following: bool,
    /// Client writes proposed and waiting to be applied on the leader; beyond, writes get
    /// `Unavailable` (back off) instead of queueing without bound.
    #[serde(default = "default_proposals_pending_max")]
    pub proposals_pending_max: usize,
    /// A client request still unanswered after this gets `Timeout` (outcome unknown).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    pub nodes: Vec<NodeSpec>,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut config: ClusterConfig =
            toml::from_str(&text).map_err(|error| ConfigError::Parse {
                path: path.to_path_buf(),
                message: error.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.certs_dir = base.join(&config.certs_dir);
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(invalid("nodes", "at least one [[nodes]] entry is needed"));
        }
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        if ids.contains(&0) {
            return Err(invalid("nodes.id", "ids start at 1"));
        }
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("nodes.id", "ids must be unique"));
        }
        if self.nodes.iter().all(|n| n.join) {
            return Err(invalid(
                "nodes.join",
                "at least one node must be in the initial configuration (join = false)",
            ));
        }
        let mut addresses: Vec<SocketAddr> = self.nodes.iter().map(|n| n.address).collect();
        addresses.sort_unstable();
        if addresses.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("nodes.address", "addresses must be unique"));
        }
        if self.tick_ms == 0 {
            return Err(invalid("tick_ms", "must be at least 1"));
        }
        if self.heartbeat_interval_ms < self.tick_ms {
            return Err(invalid("heartbeat_interval_ms", "must be at least tick_ms"));
        }
        if self.election_timeout_ms < 3 * self.heartbeat_interval_ms {
            return Err(invalid(
                "election_timeout_ms",
                "must be at least 3 x heartbeat_interval_ms (one lost heartbeat must not \
                 start an election)",
            ));
        }
        if self.snapshot_entries == 0 {
            return Err(invalid("snapshot_entries", "must be at least 1"));
        }
        if self.wal_segment_bytes < WAL_SEGMENT_BYTES_MIN {
            return Err(invalid(
                "wal_segment_bytes",
                format!("must be at least {WAL_SEGMENT_BYTES_MIN}"),
            ));
        }
        if self.proposals_pending_max == 0 || self.request_timeout_ms == 0 {
            return Err(invalid(
                "proposals_pending_max / request_timeout_ms",
                "must be positive",
            ));
        }
        Ok(())
    }

    /// The initial configuration's voters: every node not marked `join`.
    pub fn initial_voters(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| !n.join)
            .map(|n| n.id)
            .collect()
    }

    /// Finds a node by `n3`, `3`.
    pub fn node(&self, id: &str) -> Result<&NodeSpec, ConfigError> {
        let number = id.strip_prefix('n').unwrap_or(id);
        let known = || {
            self.nodes
                .iter()
                .map(NodeSpec::name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Ok(number) = number.parse::<NodeId>() else {
            return Err(ConfigError::UnknownNode(id.to_string(), known()));
        };
        self.nodes
            .iter()
            .find(|n| n.id == number)
            .ok_or_else(|| ConfigError::UnknownNode(id.to_string(), known()))
    }

    pub fn election_timeout_ticks(&self) -> u64 {
        (self.election_timeout_ms / self.tick_ms).max(2)
    }

    pub fn heartbeat_interval_ticks(&self) -> u64 {
        (self.heartbeat_interval_ms / self.tick_ms).max(1)
    }

    pub fn node_data_dir(&self, id: NodeId) -> PathBuf {
        self.data_dir.join(format!("n{id}"))
    }

    /// A config for `count` nodes on 127.0.0.1 from `first_port`, for tests and the embedded
    /// cluster.
    pub fn local(count: u64, first_port: u16, data_dir: PathBuf, certs_dir: PathBuf) -> Self {
        let nodes = (1..=count)
            .map(|id| NodeSpec {
                id,
                address: SocketAddr::from(([127, 0, 0, 1], first_port + id as u16 - 1)),
                metrics_address: None,
                join: false,
            })
            .collect();
        ClusterConfig {
            data_dir,
            certs_dir,
            tick_ms: default_tick_ms(),
            election_timeout_ms: default_election_timeout_ms(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            snapshot_entries: default_snapshot_entries(),
            log_memory_bytes_max: default_log_memory_bytes_max(),
            wal_segment_bytes: default_wal_segment_bytes(),
            wal_sync_inline_when_following: default_wal_sync_inline_when_following(),
            proposals_pending_max: default_proposals_pending_max(),
            request_timeout_ms: default_request_timeout_ms(),
            nodes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| invalid("tempdir", e.to_string()))?;
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, text).map_err(|e| invalid("write", e.to_string()))?;
        ClusterConfig::load(&path)
    }

    const GOOD: &str = r#"
data_dir = "data"
certs_dir = "certs"
[[nodes]]
id = 1
address = "127.0.0.1:50051"
[[nodes]]
id = 2
address = "127.0.0.1:50052"
"#;

    #[test]
    fn a_good_config_loads_with_defaults_and_metrics_ports() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.tick_ms, 10);
        assert_eq!(config.election_timeout_ticks(), 100);
        let node = config.node("n2").expect("n2 exists");
        assert_eq!(node.metrics_address().port(), 51052);
        assert!(config.data_dir.ends_with("data"));
        assert!(config.node("7").is_err());
        assert!(config.wal_sync_inline_when_following);
        let off = format!("wal_sync_inline_when_following = false\n{GOOD}");
        assert!(!parse(&off).expect("valid").wal_sync_inline_when_following);
    }

    #[test]
    fn mistakes_name_the_setting() {
        let typo = GOOD.replace("certs_dir", "cert_dir");
        let error = parse(&typo).expect_err("unknown field").to_string();
        assert!(error.contains("cert_dir"), "{error}");
        let duplicate = GOOD.replace("id = 2", "id = 1");
        let error = parse(&duplicate).expect_err("duplicate id").to_string();
        assert!(error.contains("nodes.id"), "{error}");
        let fast = format!("election_timeout_ms = 100\nheartbeat_interval_ms = 50\n{GOOD}");
        let error = parse(&fast).expect_err("timeouts").to_string();
        assert!(error.contains("election_timeout_ms"), "{error}");
        let bad_address = GOOD.replace("127.0.0.1:50052", "localhost");
        assert!(parse(&bad_address).is_err());
    }
}
