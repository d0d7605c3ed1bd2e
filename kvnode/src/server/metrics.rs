//! The node's metrics, named per the Prometheus naming guide: base units (`_seconds`),
//! `_total` counters, histograms with buckets (they aggregate across nodes, summaries do not),
//! labels for the operation, the outcome and the peer, `# HELP` on every one. The list is
//! `METRICS`; `proto-docs/operations.md` documents it and a test checks the two agree.
//!
//! Every node has its own recorder, installed as the thread-local default of the thread that
//! runs the node, so that several nodes in one process (bench's embedded cluster) keep their
//! figures apart. Each recorder serves its own HTTP listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use kvraft::NodeId;
use kvtransport::TransportStats;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

pub const RAFT_ROLE: &str = "raft_role";
pub const RAFT_IS_LEADER: &str = "raft_is_leader";
pub const RAFT_HAS_LEADER: &str = "raft_has_leader";
pub const RAFT_TERM: &str = "raft_term";
pub const RAFT_COMMIT_INDEX: &str = "raft_commit_index";
pub const RAFT_LAST_APPLIED: &str = "raft_last_applied";
pub const RAFT_LOG_ENTRIES: &str = "raft_log_entries";
pub const RAFT_LOG_MEMORY_BYTES: &str = "raft_log_memory_bytes";
pub const RAFT_LOG_ENTRIES_LOADED_TOTAL: &str = "raft_log_entries_loaded_total";
pub const RAFT_ELECTIONS_TOTAL: &str = "raft_elections_total";
pub const RAFT_REPLICATION_FAILURES_TOTAL: &str = "raft_replication_failures_total";
pub const RAFT_MESSAGES_SENT_TOTAL: &str = "raft_messages_sent_total";
pub const RAFT_MESSAGES_RECEIVED_TOTAL: &str = "raft_messages_received_total";
pub const RAFT_SNAPSHOTS_SENT_TOTAL: &str = "raft_snapshots_sent_total";
pub const RAFT_SNAPSHOTS_INSTALLED_TOTAL: &str = "raft_snapshots_installed_total";
pub const RAFT_SNAPSHOTS_TAKEN_TOTAL: &str = "raft_snapshots_taken_total";
pub const RAFT_SNAPSHOT_IN_PROGRESS: &str = "raft_snapshot_in_progress";
pub const RAFT_APPLY_BATCH_ENTRIES: &str = "raft_apply_batch_entries";
pub const WAL_WRITE_DURATION_SECONDS: &str = "wal_write_duration_seconds";
pub const WAL_BATCH_ENTRIES: &str = "wal_batch_entries";
pub const WAL_FSYNC_DURATION_SECONDS: &str = "wal_fsync_duration_seconds";
pub const WAL_SEGMENT_ROLL_DURATION_SECONDS: &str = "wal_segment_roll_duration_seconds";
pub const CLIENT_REQUESTS_TOTAL: &str = "client_requests_total";
pub const CLIENT_REQUEST_DURATION_SECONDS: &str = "client_request_duration_seconds";
pub const TRANSPORT_CONNECTIONS_ACCEPTED_TOTAL: &str = "transport_connections_accepted_total";
pub const TRANSPORT_CONNECTIONS_REFUSED_TOTAL: &str = "transport_connections_refused_total";
pub const TRANSPORT_PEER_CONNECT_FAILURES_TOTAL: &str = "transport_peer_connect_failures_total";
pub const TRANSPORT_MESSAGES_SENT_TOTAL: &str = "transport_messages_sent_total";
pub const TRANSPORT_MESSAGES_RECEIVED_TOTAL: &str = "transport_messages_received_total";
pub const TRANSPORT_MESSAGES_DROPPED_TOTAL: &str = "transport_messages_dropped_total";
pub const TRANSPORT_FRAMES_REFUSED_TOTAL: &str = "transport_frames_refused_total";
pub const TRANSPORT_CLIENT_REQUESTS_TOTAL: &str = "transport_client_requests_total";
pub const TRANSPORT_CLIENT_REQUESTS_REFUSED_TOTAL: &str = "transport_client_requests_refused_total";
pub const TRANSPORT_SNAPSHOTS_SENT_TOTAL: &str = "transport_snapshots_sent_total";
pub const TRANSPORT_SNAPSHOTS_RECEIVED_TOTAL: &str = "transport_snapshots_received_total";
pub const TRANSPORT_SNAPSHOT_FAILURES_TOTAL: &str = "transport_snapshot_failures_total";
pub const BUILD_INFO: &str = "kvnode_build_info";

/// Label names.
pub const LABEL_OP: &str = "op";
pub const LABEL_OUTCOME: &str = "outcome";
pub const LABEL_PEER: &str = "peer";
pub const LABEL_REASON: &str = "reason";
pub const LABEL_DIRECTION: &str = "direction";

/// Upper bounds of the latency buckets, in seconds: 100 µs to 10 s, 1-2.5-5 per decade (a
/// commit on one machine takes a fraction of a millisecond, one across an outage seconds).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Upper bounds of the batch-size buckets, in entries: powers of two up to 4096.
pub const BATCH_BUCKETS_ENTRIES: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// What kind of metric a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, kind, labels and help text. `# HELP` carries the help.
pub struct MetricDoc {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn doc(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        labels,
        help,
    }
}

/// Every metric a node exports.
pub const METRICS: [MetricDoc; 37] = [
    doc(
        RAFT_ROLE,
        Kind::Gauge,
        &[],
        "Raft role: 0 follower, 1 candidate, 2 leader.",
    ),
    doc(
        RAFT_IS_LEADER,
        Kind::Gauge,
        &[],
        "1 if this node is the leader, else 0.",
    ),
    doc(
        RAFT_HAS_LEADER,
        Kind::Gauge,
        &[],
        "1 if this node knows a leader (itself included), else 0.",
    ),
    doc(RAFT_TERM, Kind::Gauge, &[], "The current Raft term."),
    doc(
        RAFT_COMMIT_INDEX,
        Kind::Gauge,
        &[],
        "The highest log index known to be committed.",
    ),
    doc(
        RAFT_LAST_APPLIED,
        Kind::Gauge,
        &[],
        "The highest log index applied to the state machine.",
    ),
    doc(
        RAFT_LOG_ENTRIES,
        Kind::Gauge,
        &[],
        "Entries in the log since the last snapshot.",
    ),
    doc(
        RAFT_LOG_MEMORY_BYTES,
        Kind::Gauge,
        &[],
        "Bytes of log entries held in memory (payload plus 24 each); older ones are evicted \
         to the WAL beyond log_memory_bytes_max.",
    ),
    doc(
        RAFT_LOG_ENTRIES_LOADED_TOTAL,
        Kind::Counter,
        &[],
        "Evicted log entries read back from the WAL for a follower.",
    ),
    doc(
        RAFT_ELECTIONS_TOTAL,
        Kind::Counter,
        &[],
        "Elections this node started.",
    ),
    doc(
        RAFT_REPLICATION_FAILURES_TOTAL,
        Kind::Counter,
        &[LABEL_PEER],
        "Appends a follower rejected (log repair), by follower.",
    ),
    doc(
        RAFT_MESSAGES_SENT_TOTAL,
        Kind::Counter,
        &[LABEL_PEER],
        "Raft messages sent, by peer.",
    ),
    doc(
        RAFT_MESSAGES_RECEIVED_TOTAL,
        Kind::Counter,
        &[LABEL_PEER],
        "Raft messages received, by peer.",
    ),
    doc(
        RAFT_SNAPSHOTS_SENT_TOTAL,
        Kind::Counter,
        &[LABEL_PEER],
        "Snapshots streamed to a follower in full, by follower.",
    ),
    doc(
        RAFT_SNAPSHOTS_INSTALLED_TOTAL,
        Kind::Counter,
        &[],
        "Snapshots from a leader installed.",
    ),
    doc(
        RAFT_SNAPSHOTS_TAKEN_TOTAL,
        Kind::Counter,
        &[],
        "Snapshots taken (the log compacted).",
    ),
    doc(
        RAFT_SNAPSHOT_IN_PROGRESS,
        Kind::Gauge,
        &[],
        "1 while this node writes a snapshot of its state to disk, else 0.",
    ),
    doc(
        RAFT_APPLY_BATCH_ENTRIES,
        Kind::Histogram,
        &[],
        "Entries applied to the state machine together.",
    ),
    doc(
        WAL_WRITE_DURATION_SECONDS,
        Kind::Histogram,
        &[],
        "Seconds from handing a command to the WAL to its fsync (group commit included).",
    ),
    doc(
        WAL_FSYNC_DURATION_SECONDS,
        Kind::Histogram,
        &[],
        "Seconds the WAL thread took to write and fdatasync one group (etcd: \
         etcd_disk_wal_fsync_duration_seconds).",
    ),
    doc(
        WAL_SEGMENT_ROLL_DURATION_SECONDS,
        Kind::Histogram,
        &[],
        "Seconds a group spent switching to a new WAL segment (sealing the old one, installing \
         the preallocated spare).",
    ),
    doc(
        WAL_BATCH_ENTRIES,
        Kind::Histogram,
        &[],
        "Entries per WAL append command.",
    ),
    doc(
        CLIENT_REQUESTS_TOTAL,
        Kind::Counter,
        &[LABEL_OP],
        "Client requests received, by operation.",
    ),
    doc(
        CLIENT_REQUEST_DURATION_SECONDS,
        Kind::Histogram,
        &[LABEL_OP, LABEL_OUTCOME],
        "Seconds from receiving a client request to answering it, by operation and outcome.",
    ),
    doc(
        TRANSPORT_CONNECTIONS_ACCEPTED_TOTAL,
        Kind::Counter,
        &[],
        "Connections accepted and greeted.",
    ),
    doc(
        TRANSPORT_CONNECTIONS_REFUSED_TOTAL,
        Kind::Counter,
        &[LABEL_REASON],
        "Connections refused, by reason (tls, identity, limit, identity_limit).",
    ),
    doc(
        TRANSPORT_PEER_CONNECT_FAILURES_TOTAL,
        Kind::Counter,
        &[],
        "Failed connection attempts to peers.",
    ),
    doc(
        TRANSPORT_MESSAGES_SENT_TOTAL,
        Kind::Counter,
        &[],
        "Raft messages queued for a peer.",
    ),
    doc(
        TRANSPORT_MESSAGES_RECEIVED_TOTAL,
        Kind::Counter,
        &[],
        "Raft messages delivered to the node.",
    ),
    doc(
        TRANSPORT_MESSAGES_DROPPED_TOTAL,
        Kind::Counter,
        &[LABEL_REASON],
        "Raft messages dropped, by reason (queue_full, invalid, write_failed, wrong_sender).",
    ),
    doc(
        TRANSPORT_FRAMES_REFUSED_TOTAL,
        Kind::Counter,
        &[LABEL_REASON],
        "Frames refused, by reason (oversize, malformed).",
    ),
    doc(
        TRANSPORT_CLIENT_REQUESTS_TOTAL,
        Kind::Counter,
        &[],
        "Client requests handed to the node.",
    ),
    doc(
        TRANSPORT_CLIENT_REQUESTS_REFUSED_TOTAL,
        Kind::Counter,
        &[],
        "Client requests refused unread: too many request bytes in flight.",
    ),
    doc(
        TRANSPORT_SNAPSHOTS_SENT_TOTAL,
        Kind::Counter,
        &[],
        "Snapshot streams sent in full.",
    ),
    doc(
        TRANSPORT_SNAPSHOTS_RECEIVED_TOTAL,
        Kind::Counter,
        &[],
        "Snapshot streams received in full.",
    ),
    doc(
        TRANSPORT_SNAPSHOT_FAILURES_TOTAL,
        Kind::Counter,
        &[LABEL_DIRECTION],
        "Snapshot streams that failed, by direction (send, receive).",
    ),
    doc(
        BUILD_INFO,
        Kind::Gauge,
        &["version"],
        "Always 1; the labels name the kvnode build.",
    ),
];

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
    let mut builder = PrometheusBuilder::new().with_http_listener(address);
    for doc in METRICS.iter().filter(|doc| doc.kind == Kind::Histogram) {
        let buckets: &[f64] = if doc.name.ends_with("_seconds") {
            &LATENCY_BUCKETS_SECONDS
        } else {
            &BATCH_BUCKETS_ENTRIES
        };
        builder = builder
            .set_buckets_for_metric(Matcher::Full(doc.name.to_string()), buckets)
            .map_err(|e| e.to_string())?;
    }
    builder
        .build()
        .map_err(|e| format!("metrics listener on {address}: {e}"))
}

/// Describes every metric (`# HELP`) and registers the unlabelled ones at zero, so a scrape
/// lists them from the start (a counter that never moved is information too). Call with the
/// node's recorder installed.
pub fn register_all() {
    for doc in &METRICS {
        match doc.kind {
            Kind::Counter => metrics::describe_counter!(doc.name, doc.help),
            Kind::Gauge => metrics::describe_gauge!(doc.name, doc.help),
            Kind::Histogram => metrics::describe_histogram!(doc.name, doc.help),
        }
        if !doc.labels.is_empty() {
            continue;
        }
        match doc.kind {
            Kind::Counter => metrics::counter!(doc.name).increment(0),
            Kind::Gauge => metrics::gauge!(doc.name).set(0.0),
            Kind::Histogram => drop(metrics::histogram!(doc.name)),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Reads one of the transport's counters.
type TransportCounter = fn(&TransportStats) -> &AtomicU64;

/// A metric's one label and its value, for the labelled ones.
type MetricLabel = Option<(&'static str, &'static str)>;

/// The transport's counters (cumulative atomics) and the metric each is exported as: name,
/// and a label with its value for the labelled ones.
const TRANSPORT_COUNTERS: [(&str, MetricLabel, TransportCounter); 20] = [
    (TRANSPORT_CONNECTIONS_ACCEPTED_TOTAL, None, |s| {
        &s.connections_accepted_total
    }),
    (TRANSPORT_PEER_CONNECT_FAILURES_TOTAL, None, |s| {
        &s.peer_connect_failures_total
    }),
    (TRANSPORT_MESSAGES_SENT_TOTAL, None, |s| {
        &s.messages_sent_total
    }),
    (TRANSPORT_MESSAGES_RECEIVED_TOTAL, None, |s| {
        &s.messages_received_total
    }),
    (TRANSPORT_CLIENT_REQUESTS_TOTAL, None, |s| {
        &s.client_requests_total
    }),
    (TRANSPORT_CLIENT_REQUESTS_REFUSED_TOTAL, None, |s| {
        &s.client_requests_refused_inflight_total
    }),
    (TRANSPORT_SNAPSHOTS_SENT_TOTAL, None, |s| {
        &s.snapshots_sent_total
    }),
    (TRANSPORT_SNAPSHOTS_RECEIVED_TOTAL, None, |s| {
        &s.snapshots_received_total
    }),
    (
        TRANSPORT_CONNECTIONS_REFUSED_TOTAL,
        Some((LABEL_REASON, "tls")),
        |s| &s.connections_refused_tls_total,
    ),
    (
        TRANSPORT_CONNECTIONS_REFUSED_TOTAL,
        Some((LABEL_REASON, "identity")),
        |s| &s.connections_refused_identity_total,
    ),
    (
        TRANSPORT_CONNECTIONS_REFUSED_TOTAL,
        Some((LABEL_REASON, "limit")),
        |s| &s.connections_refused_limit_total,
    ),
    (
        TRANSPORT_CONNECTIONS_REFUSED_TOTAL,
        Some((LABEL_REASON, "identity_limit")),
        |s| &s.connections_refused_identity_limit_total,
    ),
    (
        TRANSPORT_MESSAGES_DROPPED_TOTAL,
        Some((LABEL_REASON, "queue_full")),
        |s| &s.messages_dropped_queue_full_total,
    ),
    (
        TRANSPORT_MESSAGES_DROPPED_TOTAL,
        Some((LABEL_REASON, "invalid")),
        |s| &s.messages_dropped_invalid_total,
    ),
    (
        TRANSPORT_MESSAGES_DROPPED_TOTAL,
        Some((LABEL_REASON, "write_failed")),
        |s| &s.messages_dropped_write_failed_total,
    ),
    (
        TRANSPORT_MESSAGES_DROPPED_TOTAL,
        Some((LABEL_REASON, "wrong_sender")),
        |s| &s.messages_dropped_wrong_sender_total,
    ),
    (
        TRANSPORT_FRAMES_REFUSED_TOTAL,
        Some((LABEL_REASON, "oversize")),
        |s| &s.frames_oversize_total,
    ),
    (
        TRANSPORT_FRAMES_REFUSED_TOTAL,
        Some((LABEL_REASON, "malformed")),
        |s| &s.frames_malformed_total,
    ),
    (
        TRANSPORT_SNAPSHOT_FAILURES_TOTAL,
        Some((LABEL_DIRECTION, "send")),
        |s| &s.snapshots_send_failures_total,
    ),
    (
        TRANSPORT_SNAPSHOT_FAILURES_TOTAL,
        Some((LABEL_DIRECTION, "receive")),
        |s| &s.snapshots_receive_failures_total,
    ),
];

/// The counters kept per peer.
struct PeerCounters {
    sent: Counter,
    received: Counter,
    replication_failures: Counter,
    snapshots_sent: Counter,
}

impl PeerCounters {
    fn register(id: NodeId) -> PeerCounters {
        let counter = |name: &'static str| metrics::counter!(name, LABEL_PEER => peer(id));
        let counters = PeerCounters {
            sent: counter(RAFT_MESSAGES_SENT_TOTAL),
            received: counter(RAFT_MESSAGES_RECEIVED_TOTAL),
            replication_failures: counter(RAFT_REPLICATION_FAILURES_TOTAL),
            snapshots_sent: counter(RAFT_SNAPSHOTS_SENT_TOTAL),
        };
        for each in [
            &counters.sent,
            &counters.received,
            &counters.replication_failures,
            &counters.snapshots_sent,
        ] {
            each.increment(0);
        }
        counters
    }
}

/// Handles of the labelled metrics the driver updates on its hot paths, registered once (a
/// handle's update is one atomic operation; a labelled macro call would build a key each time).
pub struct NodeMetrics {
    peers: HashMap<NodeId, PeerCounters>,
    transport: Vec<(Counter, TransportCounter)>,
    requests: HashMap<&'static str, Counter>,
    durations: HashMap<(&'static str, &'static str), Histogram>,
}

impl NodeMetrics {
    /// Registers the per-peer counters with the current recorder. Call again once the node's
    /// recorder is installed: handles made before it go nowhere.
    pub fn register(peers: impl Iterator<Item = NodeId>) -> NodeMetrics {
        let peers = peers.map(|id| (id, PeerCounters::register(id))).collect();
        let transport = (TRANSPORT_COUNTERS.iter())
            .map(|&(name, label, read)| {
                let counter = match label {
                    Some((label, value)) => metrics::counter!(name, label => value),
                    None => metrics::counter!(name),
                };
                (counter, read)
            })
            .collect();
        NodeMetrics {
            peers,
            transport,
            requests: HashMap::new(),
            durations: HashMap::new(),
        }
    }

    /// Registers the counters of a peer added at runtime (a membership change); a removed
    /// peer's counters stay (counters never go back).
    pub fn add_peer(&mut self, id: NodeId) {
        self.peers
            .entry(id)
            .or_insert_with(|| PeerCounters::register(id));
    }

    /// Copies the transport's counters into their metrics.
    pub fn export_transport(&self, stats: &TransportStats) {
        for (counter, read) in &self.transport {
            counter.absolute(TransportStats::get(read(stats)));
        }
    }

    pub fn message_sent(&self, to: NodeId) {
        if let Some(peer) = self.peers.get(&to) {
            peer.sent.increment(1);
        }
    }

    pub fn message_received(&self, from: NodeId) {
        if let Some(peer) = self.peers.get(&from) {
            peer.received.increment(1);
        }
    }

    pub fn replication_failed(&self, follower: NodeId) {
        if let Some(peer) = self.peers.get(&follower) {
            peer.replication_failures.increment(1);
        }
    }

    pub fn snapshot_sent(&self, follower: NodeId) {
        if let Some(peer) = self.peers.get(&follower) {
            peer.snapshots_sent.increment(1);
        }
    }

    /// A client request for `op` arrived.
    pub fn request_received(&mut self, op: &'static str) {
        self.requests
            .entry(op)
            .or_insert_with(|| metrics::counter!(CLIENT_REQUESTS_TOTAL, LABEL_OP => op))
            .increment(1);
    }

    /// A client request for `op` was answered with `outcome` after `seconds`.
    pub fn request_answered(&mut self, op: &'static str, outcome: &'static str, seconds: f64) {
        self.durations
            .entry((op, outcome))
            .or_insert_with(|| {
                let labels = [(LABEL_OP, op), (LABEL_OUTCOME, outcome)];
                metrics::histogram!(CLIENT_REQUEST_DURATION_SECONDS, &labels)
            })
            .record(seconds);
    }
}

/// The peer label of node `id`: its name, `n2`.
pub fn peer(id: NodeId) -> String {
    format!("n{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_guide() {
        let mut names = std::collections::BTreeSet::new();
        for doc in &METRICS {
            assert!(names.insert(doc.name), "{} listed twice", doc.name);
            assert!(!doc.help.is_empty(), "{}", doc.name);
            let is_total = doc.name.ends_with("_total");
            assert_eq!(
                doc.kind == Kind::Counter,
                is_total,
                "{}: counters, and only they, end _total",
                doc.name
            );
            for unit in ["_us", "_ms", "_micros", "_millis", "latency"] {
                assert!(!doc.name.contains(unit), "{}: base units only", doc.name);
            }
        }
    }

    #[test]
    fn buckets_ascend() {
        for buckets in [&LATENCY_BUCKETS_SECONDS[..], &BATCH_BUCKETS_ENTRIES[..]] {
            assert!(buckets.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }

    #[test]
    fn operations_md_lists_every_metric() {
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto-docs/operations.md");
        let text = std::fs::read_to_string(docs).unwrap();
        for doc in &METRICS {
            assert!(
                text.contains(&format!("`{}`", doc.name)),
                "{} not documented",
                doc.name
            );
        }
    }
}
