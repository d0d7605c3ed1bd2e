//! The client library's errors. Each says whether the operation may have been applied: a
//! caller recording a history needs `fail` (certainly not applied) apart from `info` (unknown).

use kvstate::NodeId;
use kvtransport::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Every attempt ended before the request could have been applied (no leader, nodes
    /// unreachable, `NotLeader` everywhere). Certainly not applied.
    #[error("unavailable after {}: {last}", attempts_text(*.attempts))]
    Unavailable { attempts: u32, last: String },
    /// No node could be connected to in time (`Client::wait_connected`); `nodes` gives each
    /// node's address and reason. Certainly not applied.
    #[error("no node reachable within {within}: {nodes}")]
    NoNodeReachable { within: String, nodes: String },
    /// The attempts ran out and at least one of them may have reached the leader: the outcome
    /// is unknown (the write may be applied later, at most once).
    #[error("timed out after {}, the outcome is unknown: {last}", attempts_text(*.attempts))]
    Timeout { attempts: u32, last: String },
    /// Over a protocol limit; certainly not applied. Do not retry unchanged.
    #[error("{what} is {bytes} bytes or items, the limit is {max}")]
    TooLarge { what: String, bytes: u64, max: u64 },
    /// Malformed (empty key, empty transaction); certainly not applied.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The node's session has answered a later sequence number: this request was refused.
    /// Only a duplicated `client_id` (two sessions sharing one) can cause it.
    #[error("stale request: the session has answered a later sequence number")]
    Stale,
    /// The node answered something that does not fit the request (a bug on one side). For a
    /// write the outcome is unknown.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client configuration is unusable (no nodes, id 0, duplicate ids, node not listed).
    #[error("client configuration: {0}")]
    Config(String),
    #[error("no such node in the client configuration: {0}")]
    UnknownNode(NodeId),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// `1 attempt`, `16 attempts`.
fn attempts_text(attempts: u32) -> String {
    match attempts {
        1 => "1 attempt".to_string(),
        n => format!("{n} attempts"),
    }
}

impl ClientError {
    /// `true` if the operation certainly had no effect (a history records `fail`); `false` if
    /// it may have been applied (a history records `info`).
    pub fn is_definite(&self) -> bool {
        !matches!(self, ClientError::Timeout { .. } | ClientError::Protocol(_))
    }

    /// A short stable name for reports ("timeout", "unavailable", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Unavailable { .. } => "unavailable",
            ClientError::NoNodeReachable { .. } => "unreachable",
            ClientError::Timeout { .. } => "timeout",
            ClientError::TooLarge { .. } => "too-large",
            ClientError::BadRequest(_) => "bad-request",
            ClientError::Stale => "stale",
            ClientError::Protocol(_) => "protocol",
            ClientError::Config(_) => "config",
            ClientError::UnknownNode(_) => "unknown-node",
            ClientError::Tls(_) => "tls",
        }
    }
}
