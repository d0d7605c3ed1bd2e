//! The node core: everything a kvnode decides, as one synchronous type with no I/O, no clock
//! and no threads (the quinn-proto / `ConnectionDriver` split, one level above the Raft core).
//!
//! `NodeCore` owns the Raft core (`kvraft::RawNode`) and the state machine
//! (`kvstate::StateMachine`), and decides:
//!
//! - which client requests become proposals or ReadIndex rounds, and how each is answered
//!   (`requests.rs`);
//! - what must be durable before which message or answer leaves: the persist pipeline and its
//!   WAL command accounting, from the very first command of recovery (`pipeline.rs`);
//! - when to take, send, receive and install snapshots (`snapshots.rs`);
//! - how the disk found at start becomes a running node (`recovery.rs`).
//!
//! Inputs are `handle_*` calls and `tick`; after feeding inputs the caller runs `drive` and
//! performs `take_actions()` **in order** (see `Action`). The tokio server (`kvnode::server`)
//! and the deterministic simulator (`kvsim`) are both thin loops around this type, so no
//! decision exists twice. The ordering contract is drawn in `proto-docs/durability.md`.
//!
//! ```text
//! loop {
//!     core.handle_client(..) / handle_message(..) / handle_durable(..) / tick() / ...
//!     core.drive();
//!     for action in core.take_actions() { perform it, in order }
//! }
//! ```
//!
//! Both loops run `drive` in its two halves: `drive_io` (the Readies: messages, WAL writes,
//! snapshot installs), its actions performed, then `apply_committed` (the apply, answers,
//! reads, snapshots) and its actions. kvnode lets the first half's messages leave before it
//! applies, so the apply's time is off the path of every write.

mod action;
mod config;
mod node;
mod pipeline;
mod recovery;
mod requests;
mod snapshots;

pub use action::{Action, Observation, WalCommand};
pub use config::{CoreConfig, LOG_MEMORY_BYTES_MAX_DEFAULT};
pub use node::{NodeCore, COMPACTION_DEFERRED_CYCLES_MAX};
pub use recovery::{DiskState, RecoveryError};

/// The reason given with `ClientError::NotApplied` to a write whose entry was replaced by
/// another leader's before it committed: that entry was never applied and never will be.
pub const LEADERSHIP_CHANGED: &str = "leadership changed before the entry committed";
