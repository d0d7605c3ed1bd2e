//! Metric names (units last, see STYLE.md) and the per-node Prometheus recorder.
//!
//! Every node has its own recorder, installed as the thread-local default of the thread that
//! runs the node, so that several nodes in one process (bench's embedded cluster) keep their
//! figures apart. Each recorder serves its own HTTP listener.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

pub const RAFT_ROLE: &str = "raft_role";
pub const RAFT_TERM: &str = "raft_term";
pub const RAFT_COMMIT_INDEX: &str = "raft_commit_index";
pub const RAFT_LAST_APPLIED: &str = "raft_last_applied";
pub const RAFT_LOG_SIZE: &str = "raft_log_size";
pub const RAFT_ELECTIONS_TOTAL: &str = "raft_elections_total";
pub const RAFT_REPLICATION_FAILURES_TOTAL: &str = "raft_replication_failures_total";
pub const RAFT_SNAPSHOTS_SENT_TOTAL: &str = "raft_snapshots_sent_total";
pub const RAFT_SNAPSHOTS_INSTALLED_TOTAL: &str = "raft_snapshots_installed_total";
pub const RAFT_SNAPSHOTS_TAKEN_TOTAL: &str = "raft_snapshots_taken_total";
pub const WAL_FSYNC_LATENCY_US: &str = "wal_fsync_latency_us";
pub const WAL_BATCH_ENTRIES: &str = "wal_batch_entries";
pub const CLIENT_REQUEST_LATENCY_US: &str = "client_request_latency_us";
pub const CLIENT_REQUESTS_TOTAL: &str = "client_requests_total";
pub const APPLY_BATCH_ENTRIES: &str = "apply_batch_entries";
pub const TRANSPORT_CONNECTIONS_REFUSED_TOTAL: &str = "transport_connections_refused_total";

/// Quantiles reported for the summaries.
const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// Builds this node's recorder and its HTTP exporter (which the caller spawns). Must run
/// inside a tokio runtime.
pub fn recorder(
    address: SocketAddr,
) -> Result<
    (
        PrometheusRecorder,
        metrics_exporter_prometheus::ExporterFuture,
    ),
    String,
> {
    PrometheusBuilder::new()
        .with_http_listener(address)
        .set_quantiles(&QUANTILES)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| format!("metrics listener on {address}: {e}"))
}

/// Registers every counter and gauge at zero, so a scrape lists them all from the start (a
/// counter that never moved is information too).
pub fn register_all() {
    for name in [
        RAFT_ELECTIONS_TOTAL,
        RAFT_REPLICATION_FAILURES_TOTAL,
        RAFT_SNAPSHOTS_SENT_TOTAL,
        RAFT_SNAPSHOTS_INSTALLED_TOTAL,
        RAFT_SNAPSHOTS_TAKEN_TOTAL,
        CLIENT_REQUESTS_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        RAFT_ROLE,
        RAFT_TERM,
        RAFT_COMMIT_INDEX,
        RAFT_LAST_APPLIED,
        RAFT_LOG_SIZE,
        TRANSPORT_CONNECTIONS_REFUSED_TOTAL,
    ] {
        metrics::gauge!(name).set(0.0);
    }
}
