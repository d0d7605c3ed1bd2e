//! A kvnode's disk: the write-ahead log (`wal`), snapshot files (`snapshot`) and the locked
//! data directory (`datadir`). Testable and benchmarkable without the network: nothing here
//! links QUIC, TLS or an async runtime. Durability rules: `proto-docs/storage.md`.
pub mod datadir;
pub mod paced;
pub mod snapshot;
pub mod wal;
