//! kvnode: a Raft-replicated key-value store node.
//!
//! Layout (see `../shared/STYLE.md`): `raft/` and `kv/` are pure state machines (no I/O, no
//! clock); `wal/`, `snapshot/` and `datadir` own the disk; `transport/` owns the network.
pub mod config;
pub mod datadir;
pub mod kv;
pub mod raft;
pub mod server;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod snapshot;
pub mod transport;
pub mod wal;
