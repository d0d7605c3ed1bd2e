//! The replicated state machine: an ordered map from bytes to values, client sessions for
//! exactly-once writes, snapshots, and the client wire protocol types.
//!
//! Pure like `raft/`: no I/O, no clock, no threads. Everything here must be deterministic,
//! because every replica applies the same log and must end in the same state (Raft §5.3
//! "state machine safety"). The client-visible rules are in `proto-docs/client.md`.
pub mod client_proto;
pub mod command;
pub mod limits;
pub mod members;
pub mod ops;
pub mod route;
pub mod state;

pub use command::{Command, CommandError};
pub use ops::{KeyOp, KeyResult, Op, OpError, OpFailure, OpResult, Value};
pub use state::{ApplyOutcome, KvError, SessionKey, StateMachine};

/// A log index, as in `raft::message::Index` (repeated here so `kv/` depends on nothing in
/// the workspace; both are `u64`).
pub type Index = u64;
/// A node id, as in `raft::message::NodeId`; 0 means "none".
pub type NodeId = u64;
/// A Raft term, as in `raft::message::Term`.
pub type Term = u64;
