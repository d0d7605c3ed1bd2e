//! kvnode: a Raft-replicated key-value store node.
//!
//! Layout (see `../shared/STYLE.md`): `raft/` is the sans-IO consensus core; everything that
//! touches disks, sockets or clocks lives outside it.
pub mod datadir;
pub mod raft;
pub mod snapshot;
pub mod wal;
