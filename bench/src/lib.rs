//! bench: the load generator of ReplicatedKVStore.
//!
//! The pieces are a library so that other drivers (a fault-injection campaign) reuse them:
//! `workload` (what to send, how it is recorded), `history` (the recorder), `runner::run_load`
//! (sessions in closed or open loop, then final reads), `stats` (HdrHistogram figures),
//! `cluster` (the embedded 3-node cluster), `target` (our cluster or, with feature `etcd`,
//! etcd), `cpu` and `output`.

pub mod app;
pub mod args;
pub mod campaign;
pub mod cluster;
pub mod compare;
pub mod cpu;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod history;
pub mod index;
pub mod output;
pub mod probe;
pub mod report;
pub mod rng;
pub mod runner;
pub mod scale;
pub mod serve;
pub mod stats;
pub mod target;
pub mod workload;

pub use runner::{run_load, run_timed, LoadConfig, LoadReport, Progress, TimedLoad};
