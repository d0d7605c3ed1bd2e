//! The embedded cluster: three nodes on threads of this process, with their own temporary data
//! directory and certificates, on free loopback ports.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use kvclient::config::ClusterConfig;
use kvclient::{Client, ClientConfig, ReadMode};
use kvnode::server::{self, NodeHandle};
use kvtransport::{generate_certs, NodeCertSpec};

/// Nodes of the embedded cluster.
pub const EMBEDDED_NODES: u64 = 3;
/// The client certificate made for bench.
pub const CLIENT_NAME: &str = "client1";
/// How long `wait_for_leader` waits for a leader that serves a linearizable read.
pub const LEADER_WAIT_MS_MAX: u64 = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("embedded cluster: {0}")]
    Setup(String),
    #[error("embedded cluster: node {id}: {source}")]
    Node {
        id: u64,
        source: kvnode::server::ServerError,
    },
    #[error("no leader served a read within {0} ms")]
    NoLeader(u64),
}

/// A running embedded cluster; `shutdown` stops it and removes its files.
pub struct EmbeddedCluster {
    config: ClusterConfig,
    nodes: Vec<NodeHandle>,
    /// Fault-injecting filesystems under the nodes' data (`--disk-fs`); unmounted on drop,
    /// after the nodes stopped and before the directory goes.
    _disks: Vec<nemesis::fs::DiskHandle>,
    /// Holds the data and certificates; removed on drop.
    _dir: tempfile::TempDir,
}

impl EmbeddedCluster {
    /// Makes certificates and a config in a temporary directory and starts every node. With
    /// `disk_fs`, each node's data directory is a mount of the fault-injecting filesystem
    /// (served by the `nemesis` binary next to this one).
    pub fn start(disk_fs: bool) -> Result<EmbeddedCluster, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("kv-bench-")
            .tempdir()
            .map_err(|e| ClusterError::Setup(format!("temporary directory: {e}")))?;
        let certs = dir.path().join("certs");
        let specs: Vec<NodeCertSpec> = (1..=EMBEDDED_NODES)
            .map(|id| NodeCertSpec {
                name: format!("n{id}"),
                addr: Ipv4Addr::LOCALHOST.into(),
            })
            .collect();
        generate_certs(&certs, &specs, &[CLIENT_NAME.to_string()], false)
            .map_err(|e| ClusterError::Setup(format!("certificates: {e}")))?;
        let config = write_config(dir.path())?;
        let mut disks = Vec::new();
        if disk_fs {
            let binary = nemesis::spec::default_nemesis_binary();
            for spec in &config.nodes {
                let name = format!("n{}", spec.id);
                let options = nemesis::fs::ServeOptions {
                    backing: dir.path().join("disks").join(&name),
                    mountpoint: config.node_data_dir(spec.id),
                    control: dir.path().join("disks").join(format!("{name}.sock")),
                };
                let log = dir.path().join("disks").join(format!("{name}.log"));
                let disk = nemesis::fs::spawn_disk(&binary, &options, &log)
                    .map_err(|e| ClusterError::Setup(format!("disk of {name}: {e}")))?;
                disks.push(disk);
            }
        }
        let mut nodes = Vec::new();
        for spec in &config.nodes {
            let node =
                server::spawn(config.clone(), spec.id).map_err(|source| ClusterError::Node {
                    id: spec.id,
                    source,
                })?;
            nodes.push(node);
        }
        Ok(EmbeddedCluster {
            config,
            nodes,
            _disks: disks,
            _dir: dir,
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::from_cluster(&self.config, CLIENT_NAME)
    }

    /// Stops every node (a leader hands over first); reports the first error.
    pub fn shutdown(self) -> Result<(), ClusterError> {
        let mut first = Ok(());
        for node in self.nodes {
            let id = node.id();
            if let Err(source) = node.shutdown() {
                first = first.and(Err(ClusterError::Node { id, source }));
            }
        }
        first
    }
}

/// Writes `cluster.toml` with free ports and loads it back through the node's own parser.
fn write_config(dir: &Path) -> Result<ClusterConfig, ClusterError> {
    let mut text = String::from("data_dir = \"data\"\ncerts_dir = \"certs\"\n");
    for id in 1..=EMBEDDED_NODES {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()?));
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?));
        text.push_str(&format!(
            "\n[[nodes]]\nid = {id}\naddress = \"{address}\"\nmetrics_address = \"{metrics}\"\n"
        ));
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).map_err(|e| ClusterError::Setup(format!("config: {e}")))?;
    ClusterConfig::load(&path).map_err(|e| ClusterError::Setup(format!("config: {e}")))
}

fn free_udp_port() -> Result<u16, ClusterError> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|socket| socket.local_addr())
        .map_err(|e| ClusterError::Setup(format!("free UDP port: {e}")))?;
    Ok(socket.port())
}

/// A TCP port on 127.0.0.1 free now (the OS picks it; a race with other binders is possible).
pub fn free_tcp_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map_err(|e| ClusterError::Setup(format!("free TCP port: {e}")))?;
    Ok(listener.port())
}

/// Waits until a leader serves a linearizable read (of a key no workload uses).
pub async fn wait_for_leader(client: &Client) -> Result<(), ClusterError> {
    let started = Instant::now();
    let mut session = client.session();
    loop {
        if session
            .get("bench-ready", ReadMode::Linearizable)
            .await
            .is_ok()
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_millis(LEADER_WAIT_MS_MAX) {
            return Err(ClusterError::NoLeader(LEADER_WAIT_MS_MAX));
        }
    }
}
