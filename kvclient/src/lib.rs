//! The client library: a `Client` holds one QUIC connection per node (shared by every session,
//! reconnected lazily), remembers the leader, and hands out `Session`s. A `Session` is one
//! exactly-once write stream (`client_id`, `seq`, see `proto-docs/client.md` "Sessions"): it
//! finds the leader, follows `NotLeader` hints, backs off while there is none, and retries a
//! write with the same `seq` until it gets an answer or runs out of attempts.
//!
//! Failover is fast: every node is dialed at once in the background, a request starts at the
//! leader last seen (else at a node already connected), a node whose connect just failed is
//! skipped for `RECONNECT_INTERVAL_MS`, and a node still dialing is skipped after
//! `CONNECTING_WAIT_MS` when another is connected. A dead node costs at most one connect
//! timeout, and no request waits for it while another node can answer.
//!
//! ```no_run
//! # async fn example() -> Result<(), kvclient::ClientError> {
//! use kvclient::{Client, ClientConfig, ReadMode};
//! let nodes = vec![(1, "127.0.0.1:50051".parse().unwrap())];
//! let client = Client::connect(ClientConfig::new(nodes, "certs".into(), "client1")).await?;
//! let mut session = client.session();
//! session.put("k", "v").await?;
//! let value = session.get("k", ReadMode::Linearizable).await?;
//! # Ok(()) }
//! ```

pub mod config;
mod connection;
pub mod duration;
mod error;

mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use connection::Client;
pub use error::ClientError;
pub use kvstate::route::{Route, BACKOFF_MS_MAX, BACKOFF_MS_MIN};
pub use session::{CasOutcome, ReadMode, Session};

use crate::config::ClusterConfig;
pub use kvstate::client_proto::{NodeRole, NodeStatus};
use kvstate::NodeId;

/// How long one attempt waits for its answer (and for a connection to be set up). A leader
/// commits in a few milliseconds; seconds mean it is gone or overloaded.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Attempts per request, redirects included. See `route.rs` for the backoff this spans.
pub const ATTEMPTS_MAX_DEFAULT: u32 = 16;
/// After a failed connect, requests to that node fail at once for this long instead of each
/// waiting for a connect timeout of its own (a down node would otherwise stall every session).
pub const RECONNECT_INTERVAL_MS: u64 = 200;
/// How long a connect (QUIC and TLS handshake, hello round trip) may take. A loopback or LAN
/// handshake takes milliseconds; a node that is down never answers (QUIC over UDP hears no
/// "connection refused"), so this is what a dead node costs a request that must dial it.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// A request whose node is still being dialed waits this long for the handshake before it
/// goes to another node that is already connected (a live node's handshake ends well within
/// it, a dead node's never does).
pub const CONNECTING_WAIT_MS: u64 = 50;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Every node of the cluster: id and QUIC address. Node `k` is dialed by the name `n<k>`.
    pub nodes: Vec<(NodeId, SocketAddr)>,
    /// Holds `ca.pem`, `<client_name>.pem` and `<client_name>.key`.
    pub certs_dir: PathBuf,
    pub client_name: String,
    /// Per attempt.
    pub request_timeout: Duration,
    /// Per connect (handshake and hello).
    pub connect_timeout: Duration,
    /// Attempts per request before giving up (`Timeout` or `Unavailable`).
    pub attempts_max: u32,
}

impl ClientConfig {
    /// A configuration with the default timeout and attempts.
    pub fn new(
        nodes: Vec<(NodeId, SocketAddr)>,
        certs_dir: PathBuf,
        client_name: &str,
    ) -> ClientConfig {
        ClientConfig {
            nodes,
            certs_dir,
            client_name: client_name.to_string(),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS_DEFAULT),
            attempts_max: ATTEMPTS_MAX_DEFAULT,
        }
    }

    /// The nodes and certificates of a cluster configuration.
    pub fn from_cluster(cluster: &ClusterConfig, client_name: &str) -> ClientConfig {
        let nodes = cluster
            .nodes
            .iter()
            .map(|node| (node.id, node.address))
            .collect();
        ClientConfig::new(nodes, cluster.certs_dir.clone(), client_name)
    }

    fn validate(&self) -> Result<(), ClientError> {
        if self.nodes.is_empty() {
            return Err(ClientError::Config("no nodes given".into()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (id, _) in &self.nodes {
            if *id == 0 {
                return Err(ClientError::Config("node ids start at 1, not 0".into()));
            }
            if !ids.insert(*id) {
                return Err(ClientError::Config(format!("node id {id} is listed twice")));
            }
        }
        if self.attempts_max == 0
            || self.request_timeout.is_zero()
            || self.connect_timeout.is_zero()
        {
            let reason = "attempts_max, request_timeout and connect_timeout must be > 0";
            let reason = reason.to_string();
            return Err(ClientError::Config(reason));
        }
        Ok(())
    }
}

/// Parses a node list `1=127.0.0.1:50051,2=127.0.0.1:50052` (ids may be written `n1`).
pub fn parse_nodes(text: &str) -> Result<Vec<(NodeId, SocketAddr)>, ClientError> {
    let mut nodes = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let bad = |reason: &str| ClientError::Config(format!("node '{item}': {reason}"));
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| bad("expected ID=ADDRESS, e.g. 1=127.0.0.1:50051"))?;
        let id = id.trim();
        let id: NodeId = id
            .strip_prefix('n')
            .unwrap_or(id)
            .parse()
            .map_err(|_| bad("the id is not a number"))?;
        let addr = addr
            .trim()
            .parse()
            .map_err(|_| bad("the address is not IP:PORT"))?;
        if id == 0 {
            return Err(bad("node ids start at 1"));
        }
        if nodes.iter().any(|&(listed, _)| listed == id) {
            return Err(bad("this id is listed twice"));
        }
        nodes.push((id, addr));
    }
    if nodes.is_empty() {
        return Err(ClientError::Config("the node list is empty".into()));
    }
    Ok(nodes)
}

/// The certificate name of node `id` (`n1`), as `kvnode certs` makes it.
pub fn node_name(id: NodeId) -> String {
    format!("n{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ids: &[NodeId]) -> ClientConfig {
        let nodes = ids
            .iter()
            .map(|&id| (id, SocketAddr::from(([127, 0, 0, 1], 50_000 + id as u16))))
            .collect();
        ClientConfig::new(nodes, PathBuf::from("certs"), "client1")
    }

    #[test]
    fn config_refuses_no_nodes_zero_and_duplicate_ids() {
        assert!(config(&[1, 2, 3]).validate().is_ok());
        for ids in [&[][..], &[0, 1], &[1, 2, 1]] {
            let result = config(ids).validate();
            assert!(matches!(result, Err(ClientError::Config(_))), "{ids:?}");
        }
        let mut zero_attempts = config(&[1]);
        zero_attempts.attempts_max = 0;
        assert!(zero_attempts.validate().is_err());
    }

    #[test]
    fn node_lists_parse_and_bad_ones_say_why() {
        let nodes = parse_nodes("1=127.0.0.1:50051, n2=127.0.0.1:50052").unwrap();
        let expected: Vec<(NodeId, SocketAddr)> = vec![
            (1, "127.0.0.1:50051".parse().unwrap()),
            (2, "127.0.0.1:50052".parse().unwrap()),
        ];
        assert_eq!(nodes, expected);
        for (text, needle) in [
            ("", "empty"),
            ("1:127.0.0.1:1", "ID=ADDRESS"),
            ("x=127.0.0.1:1", "not a number"),
            ("1=localhost", "IP:PORT"),
            ("0=127.0.0.1:1", "start at 1"),
            ("1=127.0.0.1:1,n1=127.0.0.1:2", "listed twice"),
        ] {
            let error = parse_nodes(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn node_names_follow_the_certs_convention() {
        assert_eq!(node_name(3), "n3");
    }
}
