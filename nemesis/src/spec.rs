//! What cluster to build: node count, backend, ports, files. Writes the cluster TOML that
//! `kvnode run --config` reads (format fixed in the lead's interfaces) and the certificates.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use kvtransport::tls::{generate_certs, NodeCertSpec, TlsError};
use serde::{Deserialize, Serialize};

use crate::ssh::SshHost;
use crate::NodeId;

/// Largest cluster the tool builds. The netns layout gives node k the address `<subnet>.k`, and
/// 15 is far above the 3-7 nodes Raft clusters use.
pub const NODE_COUNT_MAX: u64 = 15;
/// The metrics port is the node's port plus this (interfaces: 50051 -> 51051).
pub const METRICS_PORT_OFFSET: u16 = 1000;
/// Longest netns name prefix: interface names are at most 15 bytes (IFNAMSIZ - 1) and the
/// longest one we derive is `<prefix>v<k>p` with k up to 2 digits.
pub const PREFIX_BYTES_MAX: usize = 10;
/// Last octet of the bridge's address in the root namespace (nodes use 1..=NODE_COUNT_MAX).
pub const BRIDGE_HOST_OCTET: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("node count {0} out of range 1..={NODE_COUNT_MAX}")]
    NodeCount(u64),
    #[error("base port {0} too high for {1} nodes plus metrics ports")]
    Port(u16, u64),
    #[error("netns prefix '{0}' must be 1..={PREFIX_BYTES_MAX} bytes of a-z, 0-9")]
    Prefix(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the cluster TOML: {0}")]
    Toml(#[from] toml::ser::Error),
    #[error("certificates: {0}")]
    Certs(#[from] TlsError),
    #[error("node binary not found at {0} (build it: cargo build --release -p kvnode)")]
    NodeBinary(PathBuf),
    #[error(
        "nemesis binary not found at {0} (it serves the disks; cargo build --release -p nemesis)"
    )]
    DiskBinary(PathBuf),
    #[error("disk faults mount FUSE filesystems: they need root")]
    DiskNeedsRoot,
    #[error(
        "disk faults are not supported on the ssh backend yet (they need FUSE as root on every \
         host): use --backend local or netns"
    )]
    DiskOverSsh,
    #[error("the ssh backend needs hosts (--hosts FILE): {0}")]
    Hosts(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Processes on 127.0.0.1.
    Local,
    /// One network namespace per node on a bridge (root only); partitions need it.
    Netns,
    /// One node per host of a hosts file, driven over ssh (proto-docs/operations.md);
    /// partitions with iptables on the hosts.
    Ssh,
}

impl BackendKind {
    /// As typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Netns => "netns",
            BackendKind::Ssh => "ssh",
        }
    }
}

/// Names and addresses of the netns backend. Every object carries the prefix so that cleanup
/// can find leftovers by name, and tests running in parallel use distinct prefixes/subnets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsLayout {
    /// `kv` gives namespaces `kv-n1`.., veths `kvv1`/`kvv1p`, bridge `kvbr0`.
    pub prefix: String,
    /// The first three octets of a private /24 used only by these namespaces and the bridge.
    pub subnet: [u8; 3],
}

impl Default for NetnsLayout {
    fn default() -> Self {
        NetnsLayout {
            prefix: "kv".to_string(),
            subnet: [10, 77, 0],
        }
    }
}

impl NetnsLayout {
    pub fn validate(&self) -> Result<(), SpecError> {
        let ok = !self.prefix.is_empty()
            && self.prefix.len() <= PREFIX_BYTES_MAX
            && self
                .prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok {
            Ok(())
        } else {
            Err(SpecError::Prefix(self.prefix.clone()))
        }
    }
    pub fn namespace(&self, id: NodeId) -> String {
        format!("{}-n{id}", self.prefix)
    }
    pub fn bridge(&self) -> String {
        format!("{}br0", self.prefix)
    }
    /// The veth end attached to the bridge in the root namespace.
    pub fn veth_host(&self, id: NodeId) -> String {
        format!("{}v{id}", self.prefix)
    }
    /// The other end, moved into the node's namespace and renamed `eth0` there.
    pub fn veth_peer(&self, id: NodeId) -> String {
        format!("{}v{id}p", self.prefix)
    }
    pub fn node_ip(&self, id: NodeId) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, id as u8)
    }
    pub fn bridge_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, BRIDGE_HOST_OCTET)
    }
}

/// A cluster to build. `ClusterSpec::new` fills defaults; change fields before `prepare`.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub backend: BackendKind,
    pub node_count: u64,
    /// Node k listens on `base_port + k - 1`, its metrics on that plus 1000.
    pub base_port: u16,
    /// Holds cluster.toml, certs/, data/, logs/.
    pub work_dir: PathBuf,
    /// Where the running cluster is recorded for `nemesis` commands and `nemesis cleanup`.
    pub state_path: PathBuf,
    pub node_binary: PathBuf,
    pub netns: NetnsLayout,
    /// Client certificate names generated next to the node certificates.
    pub clients: Vec<String>,
    pub tick_ms: u64,
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub snapshot_entries: u64,
    /// Bytes of log entries a node keeps in memory; `None` keeps the node's default.
    pub log_memory_bytes_max: Option<u64>,
    /// WAL segment size; `None` keeps the node's default.
    pub wal_segment_bytes: Option<u64>,
    /// Mount the fault-injecting filesystem (`nemesis::fs`) over every node's data directory
    /// (root only: FUSE). Disk faults need it.
    pub disk: bool,
    /// The `nemesis` binary that serves those mounts (`nemesis fs serve`).
    pub disk_binary: PathBuf,
    /// The ssh backend's hosts: node k runs on `hosts[k - 1]`.
    pub hosts: Vec<SshHost>,
}

/// The cluster TOML as `kvclient::config::ClusterConfig::load` reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigFile {
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_entries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_memory_bytes_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_segment_bytes: Option<u64>,
    pub nodes: Vec<ConfigNode>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigNode {
    pub id: NodeId,
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<SocketAddr>,
}

impl ConfigNode {
    pub fn metrics(&self) -> SocketAddr {
        self.metrics_address.unwrap_or_else(|| {
            let port = self.address.port().saturating_add(METRICS_PORT_OFFSET);
            SocketAddr::new(self.address.ip(), port)
        })
    }
}

/// `kvnode` next to the current executable; from a test binary in `target/<profile>/deps`,
/// the one in `target/<profile>`.
pub fn default_node_binary() -> PathBuf {
    sibling_binary("kvnode")
}

/// `nemesis` found the same way (it serves the fault-injecting filesystem).
pub fn default_nemesis_binary() -> PathBuf {
    sibling_binary("nemesis")
}

fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(name));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir.join(name)
}

/// The default state file: one well-known place, so `nemesis cleanup` finds it after a crash.
pub fn default_state_path() -> PathBuf {
    std::env::temp_dir().join("kvnemesis").join("state.json")
}

pub fn node_name(id: NodeId) -> String {
    format!("n{id}")
}

/// `n2` or `2` -> 2.
pub fn parse_node_name(name: &str) -> Option<NodeId> {
    let digits = name.strip_prefix('n').unwrap_or(name);
    digits.parse().ok().filter(|id| *id > 0)
}

impl ClusterSpec {
    pub fn new(backend: BackendKind, node_count: u64, work_dir: &Path) -> ClusterSpec {
        ClusterSpec {
            backend,
            node_count,
            base_port: 50051,
            work_dir: work_dir.to_path_buf(),
            state_path: default_state_path(),
            node_binary: default_node_binary(),
            netns: NetnsLayout::default(),
            clients: vec!["client1".to_string()],
            tick_ms: 10,
            election_timeout_ms: 1000,
            heartbeat_interval_ms: 100,
            snapshot_entries: 100_000,
            log_memory_bytes_max: None,
            wal_segment_bytes: None,
            disk: false,
            disk_binary: default_nemesis_binary(),
            hosts: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.node_count == 0 || self.node_count > NODE_COUNT_MAX {
            return Err(SpecError::NodeCount(self.node_count));
        }
        let top = u64::from(self.base_port) + self.node_count + u64::from(METRICS_PORT_OFFSET);
        if top > u64::from(u16::MAX) || self.base_port == 0 {
            return Err(SpecError::Port(self.base_port, self.node_count));
        }
        if self.backend == BackendKind::Ssh {
            if self.hosts.len() as u64 != self.node_count {
                return Err(SpecError::Hosts(format!(
                    "{} host(s) listed for {} node(s)",
                    self.hosts.len(),
                    self.node_count
                )));
            }
            if self.disk {
                return Err(SpecError::DiskOverSsh);
            }
        }
        self.netns.validate()
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        (1..=self.node_count).collect()
    }

    pub fn node_ip(&self, id: NodeId) -> IpAddr {
        match self.backend {
            BackendKind::Local => IpAddr::V4(Ipv4Addr::LOCALHOST),
            BackendKind::Netns => IpAddr::V4(self.netns.node_ip(id)),
            BackendKind::Ssh => (self.hosts.get((id as usize).wrapping_sub(1)))
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |host| host.address),
        }
    }

    pub fn node_address(&self, id: NodeId) -> SocketAddr {
        SocketAddr::new(self.node_ip(id), self.base_port + (id as u16) - 1)
    }

    pub fn metrics_address(&self, id: NodeId) -> SocketAddr {
        let address = self.node_address(id);
        SocketAddr::new(address.ip(), address.port() + METRICS_PORT_OFFSET)
    }

    pub fn config_path(&self) -> PathBuf {
        self.work_dir.join("cluster.toml")
    }
    pub fn certs_dir(&self) -> PathBuf {
        self.work_dir.join("certs")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.work_dir.join("data")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.work_dir.join("logs")
    }
    pub fn node_log(&self, id: NodeId) -> PathBuf {
        self.logs_dir().join(format!("{}.log", node_name(id)))
    }
    /// Where node k keeps its data (`kvclient::config::ClusterConfig::node_data_dir`).
    pub fn node_data_dir(&self, id: NodeId) -> PathBuf {
        self.data_dir().join(node_name(id))
    }
    /// The fault-injecting filesystem of node k: backing directory, control socket, log.
    pub fn disk_options(&self, id: NodeId) -> (crate::fs::ServeOptions, PathBuf) {
        let disks = self.work_dir.join("disks");
        let options = crate::fs::ServeOptions {
            backing: disks.join(node_name(id)),
            mountpoint: self.node_data_dir(id),
            control: disks.join(format!("{}.sock", node_name(id))),
        };
        (
            options,
            self.logs_dir().join(format!("{}-disk.log", node_name(id))),
        )
    }

    pub fn config_file(&self) -> ConfigFile {
        let nodes = self
            .node_ids()
            .into_iter()
            .map(|id| ConfigNode {
                id,
                address: self.node_address(id),
                metrics_address: None,
            })
            .collect();
        ConfigFile {
            data_dir: self.data_dir(),
            certs_dir: self.certs_dir(),
            tick_ms: Some(self.tick_ms),
            election_timeout_ms: Some(self.election_timeout_ms),
            heartbeat_interval_ms: Some(self.heartbeat_interval_ms),
            snapshot_entries: Some(self.snapshot_entries),
            log_memory_bytes_max: self.log_memory_bytes_max,
            wal_segment_bytes: self.wal_segment_bytes,
            nodes,
        }
    }

    pub fn config_toml(&self) -> Result<String, SpecError> {
        Ok(toml::to_string(&self.config_file())?)
    }

    /// The cluster TOML a node on an ssh host reads: data and certificates next to it.
    pub fn remote_config_toml(&self) -> Result<String, SpecError> {
        let mut config = self.config_file();
        config.data_dir = PathBuf::from(crate::ssh::REMOTE_DATA);
        config.certs_dir = PathBuf::from(crate::ssh::REMOTE_CERTS);
        Ok(toml::to_string(&config)?)
    }

    /// Makes `work_dir` absolute, creates its folders, writes cluster.toml and the certificates
    /// (node certificates carry the node's IP for either backend).
    pub fn prepare(&mut self) -> Result<(), SpecError> {
        self.validate()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpecError::Io { path, source }
        };
        std::fs::create_dir_all(&self.work_dir).map_err(io(&self.work_dir))?;
        self.work_dir = std::fs::canonicalize(&self.work_dir).map_err(io(&self.work_dir))?;
        for dir in [self.data_dir(), self.logs_dir()] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let config_path = self.config_path();
        std::fs::write(&config_path, self.config_toml()?).map_err(io(&config_path))?;
        let nodes: Vec<NodeCertSpec> = self
            .node_ids()
            .into_iter()
            .map(|id| NodeCertSpec {
                name: node_name(id),
                addr: self.node_ip(id),
            })
            .collect();
        generate_certs(&self.certs_dir(), &nodes, &self.clients, false)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_spec_writes_node_addresses_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ClusterSpec::new(BackendKind::Netns, 3, dir.path());
        spec.prepare().unwrap();
        let text = std::fs::read_to_string(spec.config_path()).unwrap();
        assert!(text.contains("address = \"10.77.0.2:50052\""), "{text}");
        let parsed: ConfigFile = toml::from_str(&text).unwrap();
        assert_eq!(parsed.nodes.len(), 3);
        assert_eq!(
            parsed.nodes[2].metrics(),
            "10.77.0.3:51053".parse().unwrap()
        );
        let loaded = kvclient::config::ClusterConfig::load(&spec.config_path()).unwrap();
        assert_eq!(loaded.nodes.len(), 3);
        assert_eq!(loaded.election_timeout_ms, spec.election_timeout_ms);
        for name in ["ca.pem", "n1.pem", "n3.key", "client1.pem"] {
            assert!(spec.certs_dir().join(name).exists(), "{name}");
        }
    }

    #[test]
    fn ssh_spec_takes_addresses_from_hosts_and_refuses_a_mismatch_and_disks() {
        let hosts = crate::ssh::parse_hosts("root@10.1.0.5\nroot@10.1.0.6\n").unwrap();
        let mut spec = ClusterSpec::new(BackendKind::Ssh, 2, Path::new("/tmp/x"));
        spec.hosts = hosts;
        spec.validate().unwrap();
        assert_eq!(spec.node_address(2), "10.1.0.6:50052".parse().unwrap());
        let remote = spec.remote_config_toml().unwrap();
        assert!(remote.contains("data_dir = \"data\""), "{remote}");
        assert!(remote.contains("\"10.1.0.5:50051\""), "{remote}");
        let mut bad = spec.clone();
        bad.node_count = 3;
        assert!(matches!(bad.validate(), Err(SpecError::Hosts(_))));
        let mut bad = spec;
        bad.disk = true;
        assert!(matches!(bad.validate(), Err(SpecError::DiskOverSsh)));
    }

    #[test]
    fn local_spec_uses_loopback_and_validates_limits() {
        let spec = ClusterSpec::new(BackendKind::Local, 3, Path::new("/tmp/x"));
        assert_eq!(spec.node_address(3), "127.0.0.1:50053".parse().unwrap());
        assert_eq!(spec.metrics_address(1), "127.0.0.1:51051".parse().unwrap());
        let mut bad = spec.clone();
        bad.node_count = NODE_COUNT_MAX + 1;
        assert!(matches!(bad.validate(), Err(SpecError::NodeCount(_))));
        let mut bad = spec.clone();
        bad.base_port = 65000;
        assert!(matches!(bad.validate(), Err(SpecError::Port(..))));
        let mut bad = spec;
        bad.netns.prefix = "Bad-Prefix".to_string();
        assert!(matches!(bad.validate(), Err(SpecError::Prefix(_))));
        assert_eq!(parse_node_name("n12"), Some(12));
        assert_eq!(parse_node_name("0"), None);
    }
}
