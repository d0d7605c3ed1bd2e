//! Every knob and limit of the core. Durations are in ticks (the caller decides how long a tick
//! is; the node uses 10 ms), sizes in bytes, counts in messages or entries.

use super::message::NodeId;

#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id. Never 0.
    pub id: NodeId,
    /// A follower that hears nothing from a leader for a randomized time in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)` starts an election. Larger values
    /// ride out longer pauses (GC, fsync stalls) at the cost of slower fail-over.
    pub election_timeout_ticks: u64,
    /// A leader sends heartbeats this often. Must be well below the election timeout so that one
    /// lost heartbeat does not start an election (etcd uses a ratio of 10).
    pub heartbeat_interval_ticks: u64,
    /// Upper bound of the entries' bytes in one Append message. Bigger batches amortize per-message
    /// cost; smaller ones keep latency fair between followers and bound receive buffers.
    pub append_batch_bytes_max: u64,
    /// Append messages in flight to one follower in replicate state (a pipeline window).
    pub inflight_messages_max: usize,
    /// Entry bytes in flight to one follower. With Little's law: a 1 ms round trip at 50 MB/s of
    /// entries needs ~50 KB in flight; the default leaves room for slow disks on followers while
    /// bounding what a leader buffers for a stuck follower.
    pub inflight_bytes_max: u64,
    /// Bytes of proposed but uncommitted entries a leader accepts before refusing proposals
    /// (`ProposeError::Busy`). Stops a leader that lost its followers from buffering without end.
    pub uncommitted_bytes_max: u64,
    /// One entry's payload may not exceed this (`ProposeError::TooLarge`).
    pub entry_bytes_max: u64,
    /// Committed entries handed out in one `Ready` (bytes). Bounds apply batches.
    pub apply_batch_bytes_max: u64,
    /// ReadIndex requests waiting for their heartbeat round.
    pub read_pending_max: usize,
    /// Run a pre-vote round before a real election (thesis §9.6), so that a node that was
    /// partitioned away does not disrupt a healthy leader by bumping the term when it returns.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority for an election timeout steps down; followers
    /// that heard from a leader within the election timeout ignore vote requests (leader lease).
    pub check_quorum: bool,
}

impl Config {
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            append_batch_bytes_max: 1024 * 1024,
            inflight_messages_max: 256,
            inflight_bytes_max: 8 * 1024 * 1024,
            uncommitted_bytes_max: 64 * 1024 * 1024,
            entry_bytes_max: 2 * 1024 * 1024,
            apply_batch_bytes_max: 4 * 1024 * 1024,
            read_pending_max: 4096,
            pre_vote: true,
            check_quorum: true,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::Invalid("id must not be 0"));
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(ConfigError::Invalid(
                "heartbeat_interval_ticks must be at least 1",
            ));
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return Err(ConfigError::Invalid(
                "election_timeout_ticks must be greater than heartbeat_interval_ticks",
            ));
        }
        if self.inflight_messages_max == 0 || self.inflight_bytes_max == 0 {
            return Err(ConfigError::Invalid("inflight limits must be positive"));
        }
        if self.append_batch_bytes_max == 0 || self.apply_batch_bytes_max == 0 {
            return Err(ConfigError::Invalid("batch limits must be positive"));
        }
        if self.entry_bytes_max > self.uncommitted_bytes_max {
            return Err(ConfigError::Invalid(
                "entry_bytes_max exceeds uncommitted_bytes_max",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid raft config: {0}")]
    Invalid(&'static str),
}
