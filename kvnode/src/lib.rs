//! kvnode: a Raft-replicated key-value store node.
//!
//! Layout (see `../shared/STYLE.md`): `raft/` is the sans-IO consensus core; everything that
//! touches disks, sockets or clocks lives outside it.
pub mod kv;
pub mod raft;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod transport;
