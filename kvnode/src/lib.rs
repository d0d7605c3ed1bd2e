//! kvnode: a Raft-replicated key-value store node.
//!
//! The crates of the workspace and their direction (README "Layout"): `kvraft` (Raft core) and
//! `kvstate` (state machine) are pure; `kvcore` is the sans-IO node core that owns every
//! decision; `kvstorage` owns the disk, `kvtransport` the network; this crate's `server` is the
//! thin tokio loop that performs what the core asks for.
pub mod server;
