//! Transport counters. Plain atomics: the server exports them as metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters, all `_total`. Read them with `get`.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Handshakes that failed: wrong CA, no client certificate, bad TLS, timeout.
    pub connections_refused_tls_total: AtomicU64,
    /// Connections whose certificate verified but whose identity was refused: unknown node,
    /// a hello claiming another identity, a certificate without exactly one DNS name.
    pub connections_refused_identity_total: AtomicU64,
    /// Connection attempts refused before the handshake because `connections_max` connections
    /// were open.
    pub connections_refused_limit_total: AtomicU64,
    /// Connections refused after the handshake because their certificate identity already held
    /// `connections_per_identity_max` connections.
    pub connections_refused_identity_limit_total: AtomicU64,
    /// Connections accepted and greeted.
    pub connections_accepted_total: AtomicU64,
    /// Outbound connection attempts to peers that failed (the peer task backs off and retries).
    pub peer_connect_failures_total: AtomicU64,
    /// Raft messages queued for a peer.
    pub messages_sent_total: AtomicU64,
    /// Raft messages dropped because the peer's queue was full (messages or bytes).
    pub messages_dropped_queue_full_total: AtomicU64,
    /// Raft messages dropped because they encode larger than `frame_bytes_max`, or name an
    /// unknown peer.
    pub messages_dropped_invalid_total: AtomicU64,
    /// Raft messages lost because the connection broke while they were being written.
    pub messages_dropped_write_failed_total: AtomicU64,
    /// Raft messages delivered to the node.
    pub messages_received_total: AtomicU64,
    /// Raft messages dropped because `from` was not the authenticated peer or `to` not us.
    pub messages_dropped_wrong_sender_total: AtomicU64,
    /// Frames longer than their limit (refused before allocation).
    pub frames_oversize_total: AtomicU64,
    /// Frames that did not decode, streams cut inside a frame, unknown stream tags.
    pub frames_malformed_total: AtomicU64,
    /// Client requests refused unread because their connection's request bytes in flight would
    /// have exceeded `client_inflight_bytes_per_connection_max` (stream code `STREAM_BUSY`).
    pub client_requests_refused_inflight_total: AtomicU64,
    /// Client requests handed to the node.
    pub client_requests_total: AtomicU64,
    pub snapshots_sent_total: AtomicU64,
    pub snapshots_send_failures_total: AtomicU64,
    pub snapshots_received_total: AtomicU64,
    pub snapshots_receive_failures_total: AtomicU64,
}

impl TransportStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Every refused connection, whatever the reason.
    pub fn connections_refused_total(&self) -> u64 {
        Self::get(&self.connections_refused_tls_total)
            + Self::get(&self.connections_refused_identity_total)
            + Self::get(&self.connections_refused_limit_total)
            + Self::get(&self.connections_refused_identity_limit_total)
    }
}
