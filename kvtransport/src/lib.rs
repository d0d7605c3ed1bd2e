//! The network edge of a node: QUIC (quinn) with mutual TLS (rustls, ring) between nodes and
//! from clients.
//!
//! - `Transport::send` queues a Raft message for its peer without blocking. One task per peer
//!   keeps one connection and one long-lived unidirectional stream, and writes everything
//!   queued in one call (`peer.rs`).
//! - `Transport::send_snapshot` streams a snapshot file on a stream of its own (`snapshot.rs`).
//! - Accepted connections are authenticated against the cluster CA and classified by
//!   certificate (`tls.rs`), greeted (`wire::Hello`), then serve raft, snapshot and client
//!   streams (`accept.rs`). Everything received reaches the node as an `Inbound`.
//!
//! All tasks are plain `tokio::spawn`s that run on the node's single current-thread runtime.

mod accept;
mod admission;
pub mod client;
pub mod codec;
mod peer;
mod session;
mod snapshot;
mod stats;
pub mod tls;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use kvraft::message::{Message, NodeId, SnapshotMeta};

pub use client::{ClientConn, ClientError};
pub use stats::TransportStats;
pub use tls::{generate_certs, Identity, NodeCertSpec, TlsError, TlsMaterial};

/// Default largest frame on a raft, hello or snapshot-header stream. A Raft `Append` must
/// encode below it (the core bounds its message size well under this).
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 16 << 20;
/// Default per-peer queue bounds: whichever is hit first drops new messages.
pub const PEER_QUEUE_MESSAGES_MAX_DEFAULT: usize = 4096;
pub const PEER_QUEUE_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Default bound of the channel to the node; a full channel stalls stream readers (QUIC flow
/// control then pushes back on the senders).
pub const INBOUND_QUEUE_MESSAGES_MAX_DEFAULT: usize = 4096;
/// Default concurrent bidirectional streams per connection (client requests in flight).
pub const CLIENT_STREAMS_MAX_DEFAULT: u32 = 256;
/// Default requests read and not yet answered on one session stream (`session.rs`): with
/// `client_streams_max`, what bounds the answers a connection can pin (see `TransportLimits`).
pub const CLIENT_SESSION_REQUESTS_INFLIGHT_MAX_DEFAULT: u32 = 256;
/// Room for the largest command the state machine accepts (kv::limits::COMMAND_BYTES_MAX,
/// 4 MiB) plus framing; the server asserts the relation at compile time.
pub const CLIENT_REQUEST_BYTES_MAX_DEFAULT: u32 = 5 << 20;
pub const CLIENT_RESPONSE_BYTES_MAX_DEFAULT: u32 = 16 << 20;
/// Default in-flight client request bytes per connection: one largest request and 3 MiB of
/// others. See `TransportLimits` for the Little's-law sizing.
pub const CLIENT_INFLIGHT_BYTES_PER_CONNECTION_MAX_DEFAULT: u64 = 8 << 20;
/// Default accepted connections (handshaking or established) per node.
pub const CONNECTIONS_MAX_DEFAULT: usize = 256;
/// Default accepted connections per certificate identity: a client process holds one
/// connection per node, a peer node one (two while a reconnect races the old one's end).
pub const CONNECTIONS_PER_IDENTITY_MAX_DEFAULT: usize = 32;
/// Default unidirectional streams a peer may open at once (one raft stream is used; slack for
/// a reconnect racing the old stream's end).
pub const UNI_STREAMS_MAX_DEFAULT: u32 = 8;
/// Default QUIC flow-control windows (what a peer may send before we read it).
pub const STREAM_RECEIVE_WINDOW_BYTES_DEFAULT: u32 = 1 << 20;
pub const CONNECTION_RECEIVE_WINDOW_BYTES_DEFAULT: u32 = 4 << 20;
/// Default bytes quinn keeps per connection for data written but not yet acknowledged.
pub const CONNECTION_SEND_WINDOW_BYTES_DEFAULT: u64 = 4 << 20;
pub const SNAPSHOT_CHUNK_BYTES_DEFAULT: usize = 1 << 20;
pub const SNAPSHOT_BYTES_MAX_DEFAULT: u64 = 64 << 30;
pub const SNAPSHOT_TRANSFER_TIMEOUT_MS_DEFAULT: u64 = 10 * 60 * 1000;
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
pub const KEEP_ALIVE_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Reconnect backoff: doubles from the minimum after each failed attempt, capped at the max,
/// so a restarted peer is reached again within about `RECONNECT_BACKOFF_MS_MAX`.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 20;
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// How long `shutdown` waits for queued messages to be written and connections to close.
pub const SHUTDOWN_FLUSH_MS_MAX: u64 = 1_000;
/// Scheduler turns `shutdown` gives quinn's endpoint driver to notice it is unreferenced.
const ENDPOINT_DRIVER_YIELDS: usize = 4;
/// Packets quinn buffers for one connection attempt before we accept or refuse it (the first
/// packet excluded). We take no 0-RTT data, so this is only handshake packets: a few KiB.
const INCOMING_BUFFER_BYTES_MAX: u64 = 64 << 10;
/// The same, summed over all pending connection attempts.
const INCOMING_BUFFER_BYTES_TOTAL_MAX: u64 = 4 << 20;
/// ACK frequency (the QUIC extension draft-ietf-quic-ack-frequency, in quinn): each side asks
/// the other to acknowledge after this many ack-eliciting packets, or after
/// `ACK_DELAY_US_MAX`, instead of after every second one. Our traffic flows both ways on
/// every connection (appends and their answers, requests and theirs), so acknowledgements
/// mostly ride along with data; without this, about one datagram in five was an
/// acknowledgement alone, each a `sendmsg` and a wake-up of the receiving thread. Measured
/// (embedded cluster, 64 clients, put, 2-vCPU VM): datagrams per put 0.34 -> 0.27, node CPU
/// per put 35-43 -> 32-42 us, bench CPU per put 6.5-8.4 -> 5.6-7.5 us over 5 pairs.
/// Out-of-order packets are still acknowledged at once (quinn's reordering threshold), so
/// loss detection keeps its speed; the delay adds to the probe timeout.
const ACK_ELICITING_THRESHOLD_PACKETS: u32 = 10;
const ACK_DELAY_US_MAX: u64 = 2_000;

/// Every limit of the transport. Units are in the names.
///
/// # What a peer can make a node hold (worst case, defaults in brackets)
///
/// Per accepted connection, whatever its certificate:
///
/// ```text
/// quinn receive buffers (stream data not read yet)  connection_receive_window_bytes    [4 MiB]
/// client request bytes: announced and being read,   client_inflight_bytes_            [8 MiB]
///   read, queued for or held by the node              per_connection_max
/// quinn send buffers (written, not acknowledged)    connection_send_window_bytes       [4 MiB]
/// hello (once, before any other stream)             wire::HELLO_BYTES_MAX             [64 KiB]
/// stream state: (client_streams_max + uni_streams_max) x ~2.4 KiB (quinn stream, our task,
///   a header being read; measured for both ends; a refused stream's data is discarded at
///   once)                                                                [264 x 2.4 KiB ~ 0.6 MiB]
/// connection state: TLS, quinn, tasks (~100 KiB measured for both ends)           [0.1 MiB]
/// ------------------------------------------------------------------------------------------
/// per connection                                                                  [~16.8 MiB]
/// per node: connections_max x per connection = 256 x 16.8 MiB                     [~4.2 GiB]
///   + pending connection attempts: INCOMING_BUFFER_BYTES_TOTAL_MAX                   [4 MiB]
/// ```
///
/// Request bytes are charged to the connection's in-flight budget when their length is read,
/// before any byte of the payload is, and stay charged until the node drops the request's
/// `Bytes` (the permit travels inside them). A request that does not fit the remaining budget
/// is refused at once (stream code `wire::STREAM_BUSY`, counted in
/// `client_requests_refused_inflight_total`) instead of waiting: a waiting stream would leave
/// its data in quinn's connection window and could starve the streams that hold the budget.
/// `ClientConn` keeps the same budget on its side, so a client using it is not refused.
///
/// Node connections (certificates of cluster peers) may also carry raft frames up to
/// `frame_bytes_max` on each of `uni_streams_max` streams and snapshot headers; those buffers
/// too grow only with bytes received. A peer node is trusted with that much (16 MiB x 8).
///
/// Not bounded here: responses. The node makes them (up to `client_response_bytes_max`) and
/// each waits in its stream task (or its session's queue) until quinn's send window takes it,
/// so a client that asks for large values and reads nothing (without stopping its streams) can
/// pin up to `client_streams_max` responses per connection, and
/// `client_session_requests_inflight_max` more per session stream (each session is one of the
/// `client_streams_max` streams): 256 x the largest value read (4 MiB) each, in theory
/// 256 x 16 MiB. Bounding them needs the node's help (a response budget it checks
/// before it builds a large answer); a stopped stream frees its response at once.
///
/// # Sizing the in-flight budget (Little's law)
///
/// Bytes in flight = arrival rate x time in flight. On the node a request's bytes are in
/// flight from its length prefix until the node has decoded it: the transfer (size / link
/// rate) plus the wait in the inbound queue, about a millisecond. 8 MiB therefore sustains
/// about 8 GB/s of requests per connection on the node, far above what a node applies. The
/// client library holds its side of the budget until the answer arrives, commit included
/// (~2 ms with fsync on this machine): 8 MiB / 2 ms = 4 GB/s of small requests per connection;
/// requests of 5 MiB go one at a time, 500 per second (2.5 GB/s). Halving the budget halves
/// both; it must stay >= `client_request_bytes_max` or the largest request could never be
/// admitted.
///
/// The windows follow the same law: a stream moves at most `stream_receive_window_bytes` per
/// round trip (1 MiB / 1 ms = 1 GB/s on a LAN, 1 MiB / 50 us = 20 GB/s on loopback), a
/// connection at most `connection_receive_window_bytes` per round trip (4 GB/s on a LAN).
#[derive(Clone, Debug)]
pub struct TransportLimits {
    pub frame_bytes_max: u32,
    pub peer_queue_messages_max: usize,
    pub peer_queue_bytes_max: u64,
    pub inbound_queue_messages_max: usize,
    /// Concurrent bidirectional streams a peer may open on one connection (QUIC
    /// `max_concurrent_bidi_streams`): client requests in flight, hello and snapshots.
    pub client_streams_max: u32,
    pub client_request_bytes_max: u32,
    pub client_response_bytes_max: u32,
    /// Requests read and not yet answered on one session stream; beyond it a request is
    /// refused unread (`wire::STREAM_BUSY`). Bounds the answers queued for one session.
    pub client_session_requests_inflight_max: u32,
    /// Client request bytes one connection may have announced, being read, or waiting for the
    /// node, summed over its streams. Trade-off: per-connection request throughput (Little's
    /// law above) against the memory each connection can pin. Must be >=
    /// `client_request_bytes_max`.
    pub client_inflight_bytes_per_connection_max: u64,
    /// Accepted connections, handshaking or established, from anyone. Connection attempts
    /// beyond it are refused before the handshake (QUIC CONNECTION_REFUSED) and counted in
    /// `connections_refused_limit_total`. Trade-off: memory (x per-connection worst case
    /// above) against how many client processes a node serves. Peer nodes count too: a node
    /// full of clients refuses a restarted peer until a connection ends.
    pub connections_max: usize,
    /// Established connections per certificate identity (its DNS name), so that one
    /// certificate cannot take all `connections_max`. Beyond it the connection is closed
    /// with `wire::CLOSE_REFUSED` after the handshake and counted in
    /// `connections_refused_identity_limit_total`.
    pub connections_per_identity_max: usize,
    /// Concurrent unidirectional streams a peer may open (QUIC `max_concurrent_uni_streams`).
    pub uni_streams_max: u32,
    /// Bytes a peer may send on one stream ahead of our reads (QUIC `stream_receive_window`).
    pub stream_receive_window_bytes: u32,
    /// Bytes a peer may send on one connection, all streams together, ahead of our reads
    /// (QUIC `receive_window`; quinn's default is unlimited).
    pub connection_receive_window_bytes: u32,
    /// Bytes quinn keeps per connection for data written and not yet acknowledged (QUIC
    /// `send_window`): what a peer that stops acknowledging pins on our side.
    pub connection_send_window_bytes: u64,
    pub snapshot_chunk_bytes: usize,
    pub snapshot_bytes_max: u64,
    pub snapshot_transfer_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    /// A connection with no traffic for this long is dead. Keep-alives keep live ones busy.
    pub idle_timeout_ms: u64,
    pub keep_alive_interval_ms: u64,
    pub reconnect_backoff_ms_min: u64,
    pub reconnect_backoff_ms_max: u64,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            peer_queue_messages_max: PEER_QUEUE_MESSAGES_MAX_DEFAULT,
            peer_queue_bytes_max: PEER_QUEUE_BYTES_MAX_DEFAULT,
            inbound_queue_messages_max: INBOUND_QUEUE_MESSAGES_MAX_DEFAULT,
            client_streams_max: CLIENT_STREAMS_MAX_DEFAULT,
            client_request_bytes_max: CLIENT_REQUEST_BYTES_MAX_DEFAULT,
            client_response_bytes_max: CLIENT_RESPONSE_BYTES_MAX_DEFAULT,
            client_session_requests_inflight_max: CLIENT_SESSION_REQUESTS_INFLIGHT_MAX_DEFAULT,
            client_inflight_bytes_per_connection_max:
                CLIENT_INFLIGHT_BYTES_PER_CONNECTION_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connections_per_identity_max: CONNECTIONS_PER_IDENTITY_MAX_DEFAULT,
            uni_streams_max: UNI_STREAMS_MAX_DEFAULT,
            stream_receive_window_bytes: STREAM_RECEIVE_WINDOW_BYTES_DEFAULT,
            connection_receive_window_bytes: CONNECTION_RECEIVE_WINDOW_BYTES_DEFAULT,
            connection_send_window_bytes: CONNECTION_SEND_WINDOW_BYTES_DEFAULT,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES_DEFAULT,
            snapshot_bytes_max: SNAPSHOT_BYTES_MAX_DEFAULT,
            snapshot_transfer_timeout_ms: SNAPSHOT_TRANSFER_TIMEOUT_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            keep_alive_interval_ms: KEEP_ALIVE_INTERVAL_MS_DEFAULT,
            reconnect_backoff_ms_min: RECONNECT_BACKOFF_MS_MIN,
            reconnect_backoff_ms_max: RECONNECT_BACKOFF_MS_MAX,
        }
    }
}

impl TransportLimits {
    pub(crate) fn validate(&self) -> Result<(), TransportError> {
        self.validate_frames()?;
        self.validate_connections()?;
        if self.peer_queue_messages_max == 0 || self.inbound_queue_messages_max == 0 {
            return config_error("*_queue_messages_max", "must be > 0");
        }
        if self.snapshot_chunk_bytes == 0 {
            return config_error("snapshot_chunk_bytes", "must be > 0");
        }
        if self.reconnect_backoff_ms_min == 0
            || self.reconnect_backoff_ms_min > self.reconnect_backoff_ms_max
        {
            return config_error(
                "reconnect_backoff_ms_min",
                "must be in 1..=reconnect_backoff_ms_max",
            );
        }
        Ok(())
    }

    fn validate_frames(&self) -> Result<(), TransportError> {
        let frame_limit = codec::FRAME_BYTES_LIMIT;
        if self.frame_bytes_max == 0 || self.frame_bytes_max > frame_limit {
            return config_error("frame_bytes_max", &format!("must be in 1..={frame_limit}"));
        }
        if self.client_request_bytes_max > frame_limit {
            return config_error(
                "client_request_bytes_max",
                &format!("must be <= {frame_limit}"),
            );
        }
        if self.client_response_bytes_max > frame_limit {
            return config_error(
                "client_response_bytes_max",
                &format!("must be <= {frame_limit}"),
            );
        }
        // Below the request maximum the largest request could never be admitted; above
        // tokio's semaphore limit the budget cannot be represented.
        let inflight = self.client_inflight_bytes_per_connection_max;
        if inflight < u64::from(self.client_request_bytes_max)
            || inflight > tokio::sync::Semaphore::MAX_PERMITS as u64
        {
            return config_error(
                "client_inflight_bytes_per_connection_max",
                "must be >= client_request_bytes_max (and below 2^61)",
            );
        }
        Ok(())
    }

    fn validate_connections(&self) -> Result<(), TransportError> {
        if self.connections_max == 0 {
            return config_error("connections_max", "must be > 0");
        }
        if self.connections_per_identity_max == 0
            || self.connections_per_identity_max > self.connections_max
        {
            return config_error(
                "connections_per_identity_max",
                "must be in 1..=connections_max",
            );
        }
        if self.client_streams_max == 0 || self.uni_streams_max == 0 {
            return config_error("client_streams_max / uni_streams_max", "must be > 0");
        }
        if self.client_session_requests_inflight_max == 0 {
            return config_error("client_session_requests_inflight_max", "must be > 0");
        }
        if self.stream_receive_window_bytes == 0
            || self.stream_receive_window_bytes > self.connection_receive_window_bytes
        {
            return config_error(
                "stream_receive_window_bytes",
                "must be in 1..=connection_receive_window_bytes",
            );
        }
        if self.connection_send_window_bytes == 0 {
            return config_error("connection_send_window_bytes", "must be > 0");
        }
        Ok(())
    }

    /// QUIC transport parameters shared by the server and the dialing side. Every parameter
    /// that bounds what a peer can make us buffer is set here, from these limits (see the
    /// worst-case table on `TransportLimits`).
    pub fn quinn_transport(&self) -> Result<Arc<quinn::TransportConfig>, TransportError> {
        let idle = quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
            .map_err(|_| TransportError::Config("limits.idle_timeout_ms: too large".into()))?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(self.client_streams_max.into())
            .max_concurrent_uni_streams(self.uni_streams_max.into())
            .stream_receive_window(self.stream_receive_window_bytes.into())
            .receive_window(self.connection_receive_window_bytes.into())
            .send_window(self.connection_send_window_bytes)
            // We use no datagrams; quinn would otherwise buffer 1.25 MB of them per connection.
            .datagram_receive_buffer_size(None)
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(Duration::from_millis(self.keep_alive_interval_ms)));
        let mut ack_frequency = quinn::AckFrequencyConfig::default();
        ack_frequency
            .ack_eliciting_threshold(ACK_ELICITING_THRESHOLD_PACKETS.into())
            .max_ack_delay(Some(Duration::from_micros(ACK_DELAY_US_MAX)));
        transport.ack_frequency_config(Some(ack_frequency));
        Ok(Arc::new(transport))
    }

    /// Applies the limits on connection attempts not yet accepted to a server configuration.
    fn limit_incoming(&self, server: &mut quinn::ServerConfig) {
        server
            .max_incoming(self.connections_max)
            .incoming_buffer_size(INCOMING_BUFFER_BYTES_MAX)
            .incoming_buffer_size_total(INCOMING_BUFFER_BYTES_TOTAL_MAX);
    }
}

fn config_error(setting: &str, reason: &str) -> Result<(), TransportError> {
    Err(TransportError::Config(format!(
        "limits.{setting}: {reason}"
    )))
}

/// Another node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    /// Its certificate's DNS name (`n2`).
    pub name: String,
    pub addr: SocketAddr,
}

pub struct TransportConfig {
    pub self_name: String,
    pub self_id: NodeId,
    pub listen: SocketAddr,
    /// The other nodes (not this one).
    pub peers: Vec<Peer>,
    pub tls: TlsMaterial,
    /// Where received snapshot files are written (created if missing).
    pub snapshot_dir: PathBuf,
    pub limits: TransportLimits,
}

/// What the transport hands to the node.
#[derive(Debug)]
pub enum Inbound {
    /// A Raft message whose `from` is the authenticated sending node and `to` is us.
    Raft(Message),
    /// A snapshot file, fsynced, length and CRC verified, now owned by the node.
    Snapshot {
        from: NodeId,
        meta: SnapshotMeta,
        path: PathBuf,
    },
    /// The outcome of `send_snapshot`: `ok` once the receiver acknowledged a verified file.
    SnapshotSent {
        to: NodeId,
        meta: SnapshotMeta,
        ok: bool,
    },
    /// A peer node connected as a new process (a new incarnation: it restarted, and may have
    /// lost its disk).
    PeerRestarted { peer: NodeId },
    /// One client request; send the response through `reply` (dropping it tells the client
    /// the node dropped the request: `wire::STREAM_UNAVAILABLE`).
    /// `request` holds part of its connection's in-flight budget
    /// (`client_inflight_bytes_per_connection_max`) until its last handle is dropped: decode
    /// it and drop it, do not keep slices of it.
    Client {
        client: String,
        request: Bytes,
        reply: ClientReply,
    },
}

/// Where the answer to one client request goes: its request stream, or its session stream
/// (`session.rs`). Dropped unanswered, it tells the client the node dropped the request.
#[derive(Debug)]
pub struct ClientReply(ReplyTo);

#[derive(Debug)]
enum ReplyTo {
    Stream(oneshot::Sender<Bytes>),
    Session(session::SessionReply),
}

impl ClientReply {
    pub(crate) fn stream(sender: oneshot::Sender<Bytes>) -> ClientReply {
        ClientReply(ReplyTo::Stream(sender))
    }

    pub(crate) fn session(reply: session::SessionReply) -> ClientReply {
        ClientReply(ReplyTo::Session(reply))
    }

    /// Sends the answer; `Err` gives it back when the client is gone.
    pub fn send(self, response: Bytes) -> Result<(), Bytes> {
        match self.0 {
            ReplyTo::Stream(sender) => sender.send(response),
            ReplyTo::Session(reply) => reply.send(response),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid transport configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// State shared by the transport's tasks.
pub(crate) struct Shared {
    pub self_name: String,
    pub self_id: NodeId,
    pub limits: TransportLimits,
    pub stats: Arc<TransportStats>,
    /// The peers, changed at runtime by `Transport::set_peers` (membership changes).
    pub peers: RwLock<PeerTable>,
    pub identifier: tls::Identifier,
    /// Established connections per certificate identity.
    pub identities: Arc<admission::IdentityCounts>,
    pub client_config: quinn::ClientConfig,
    pub inbound: mpsc::Sender<Inbound>,
    pub snapshot_dir: PathBuf,
    pub shutdown: watch::Receiver<bool>,
}

/// The known peers, by id and by certificate name.
#[derive(Default)]
pub(crate) struct PeerTable {
    pub by_id: HashMap<NodeId, Arc<peer::PeerHandle>>,
    pub ids_by_name: HashMap<String, NodeId>,
}

impl Shared {
    pub(crate) fn peer(&self, id: NodeId) -> Option<Arc<peer::PeerHandle>> {
        let table = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        table.by_id.get(&id).cloned()
    }

    pub(crate) fn peer_id_by_name(&self, name: &str) -> Option<NodeId> {
        let table = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        table.ids_by_name.get(name).copied()
    }
}

/// A running transport. Call `shutdown` to stop it cleanly; dropping it stops it abruptly.
pub struct Transport {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    shutdown_tx: watch::Sender<bool>,
    peer_tasks: HashMap<NodeId, JoinHandle<()>>,
    accept_task: Option<JoinHandle<()>>,
}

fn validate_peers(self_id: NodeId, self_name: &str, peers: &[Peer]) -> Result<(), TransportError> {
    let mut ids = std::collections::BTreeSet::from([self_id]);
    let mut names = std::collections::BTreeSet::from([self_name]);
    for peer in peers {
        if peer.id == 0 || !ids.insert(peer.id) || !names.insert(peer.name.as_str()) {
            let reason = format!(
                "peer {} ({}): id 0, or id or name used twice",
                peer.id, peer.name
            );
            return Err(TransportError::Config(reason));
        }
    }
    if self_id == 0 {
        return Err(TransportError::Config(
            "self_id: 0 is not a valid node id".into(),
        ));
    }
    Ok(())
}

impl Transport {
    /// Binds the endpoint and starts the accept task and one task per peer. Must be called
    /// inside a tokio runtime (the node runs a current-thread one).
    pub fn start(
        cfg: TransportConfig,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        cfg.limits.validate()?;
        validate_peers(cfg.self_id, &cfg.self_name, &cfg.peers)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TransportError::Config(
                "start must run inside a tokio runtime".into(),
            ));
        }
        std::fs::create_dir_all(&cfg.snapshot_dir).map_err(|e| {
            TransportError::Config(format!("snapshot_dir {}: {e}", cfg.snapshot_dir.display()))
        })?;
        let transport = cfg.limits.quinn_transport()?;
        let mut server_config = cfg.tls.server_config(transport.clone())?;
        cfg.limits.limit_incoming(&mut server_config);
        let client_config = cfg.tls.client_config(transport)?;
        let endpoint = quinn::Endpoint::server(server_config, cfg.listen).map_err(|source| {
            TransportError::Bind {
                addr: cfg.listen,
                source,
            }
        })?;
        let (inbound_tx, inbound_rx) = mpsc::channel(cfg.limits.inbound_queue_messages_max);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            self_name: cfg.self_name,
            self_id: cfg.self_id,
            limits: cfg.limits,
            stats: Arc::new(TransportStats::default()),
            peers: RwLock::default(),
            identifier: cfg.tls.identifier()?,
            identities: Arc::default(),
            client_config,
            inbound: inbound_tx,
            snapshot_dir: cfg.snapshot_dir,
            shutdown: shutdown_rx,
        });
        let accept_task = Some(tokio::spawn(accept::run(shared.clone(), endpoint.clone())));
        let mut transport = Transport {
            shared,
            endpoint,
            shutdown_tx,
            peer_tasks: HashMap::new(),
            accept_task,
        };
        transport.set_peers(cfg.peers)?;
        Ok((transport, inbound_rx))
    }

    /// Makes `peers` the peer table (a membership change): a task is started for each new
    /// peer; removed peers (and peers whose address changed) lose their queue, their task and
    /// their outgoing connection, and connections from their certificates are refused from
    /// now on. Peers that did not change keep their connections.
    pub fn set_peers(&mut self, peers: Vec<Peer>) -> Result<(), TransportError> {
        validate_peers(self.shared.self_id, &self.shared.self_name, &peers)?;
        let mut started = Vec::new();
        {
            let mut table = (self.shared.peers.write()).unwrap_or_else(PoisonError::into_inner);
            let stale: Vec<NodeId> = (table.by_id.iter())
                .filter(|(id, handle)| !peers.iter().any(|p| p.id == **id && p == &handle.peer))
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                if let Some(handle) = table.by_id.remove(&id) {
                    table.ids_by_name.remove(&handle.peer.name);
                    handle.retire();
                    tracing::info!(peer = %handle.peer.name, "peer removed");
                }
                if let Some(task) = self.peer_tasks.remove(&id) {
                    task.abort();
                }
            }
            for peer in peers {
                if table.by_id.contains_key(&peer.id) {
                    continue;
                }
                tracing::info!(peer = %peer.name, addr = %peer.addr, "peer added");
                let handle = Arc::new(peer::PeerHandle::new(peer.clone()));
                table.ids_by_name.insert(peer.name.clone(), peer.id);
                table.by_id.insert(peer.id, handle.clone());
                started.push(handle);
            }
        }
        for handle in started {
            let id = handle.peer.id;
            let task = tokio::spawn(peer::run(
                self.shared.clone(),
                self.endpoint.clone(),
                handle,
            ));
            self.peer_tasks.insert(id, task);
        }
        Ok(())
    }

    /// The peers now in the table.
    pub fn peers(&self) -> Vec<Peer> {
        let table = (self.shared.peers.read()).unwrap_or_else(PoisonError::into_inner);
        let mut peers: Vec<Peer> = table.by_id.values().map(|h| h.peer.clone()).collect();
        peers.sort_by_key(|p| p.id);
        peers
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    pub fn stats(&self) -> Arc<TransportStats> {
        self.shared.stats.clone()
    }

    /// Queues `msg` for `msg.to` without waiting. Dropped (and counted) if the peer's queue is
    /// full, the peer is unknown, or the message encodes larger than `frame_bytes_max`: Raft
    /// retries whatever matters.
    pub fn send(&self, msg: Message) {
        let stats = &self.shared.stats;
        let Some(peer) = self.shared.peer(msg.to) else {
            tracing::debug!(to = msg.to, "message to unknown peer dropped");
            TransportStats::inc(&stats.messages_dropped_invalid_total);
            return;
        };
        match codec::encode_frame(&msg, self.shared.limits.frame_bytes_max) {
            Ok(frame) => peer.enqueue(frame, &self.shared.limits, stats),
            Err(e) => {
                tracing::warn!(to = msg.to, kind = msg.body.name(), "message dropped: {e}");
                TransportStats::inc(&stats.messages_dropped_invalid_total);
            }
        }
    }

    /// Streams the snapshot file at `path` to `to` on a stream of its own. The outcome arrives
    /// as `Inbound::SnapshotSent`.
    pub fn send_snapshot(&self, to: NodeId, meta: SnapshotMeta, path: PathBuf) {
        tokio::spawn(snapshot::send(self.shared.clone(), to, meta, path));
    }

    /// Lets each peer task write what is queued, then closes every connection and waits for
    /// the connection tasks and the endpoint. Each wait is bounded by `SHUTDOWN_FLUSH_MS_MAX`;
    /// what is still running then is aborted. quinn releases the UDP port only once closed
    /// connections have drained (3 PTOs: up to a few seconds for a dial that never completed),
    /// so an in-process restart on the same port may briefly see `AddrInUse`.
    pub async fn shutdown(mut self) {
        let flush = Duration::from_millis(SHUTDOWN_FLUSH_MS_MAX);
        self.shutdown_tx.send_replace(true);
        let deadline = tokio::time::Instant::now() + flush;
        for (_, task) in self.peer_tasks.drain() {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("peer task did not flush before the shutdown deadline");
                abort.abort();
            }
        }
        self.endpoint
            .close(wire::CLOSE_SHUTDOWN.into(), b"shutdown");
        if let Some(task) = self.accept_task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(flush, task).await.is_err() {
                abort.abort();
            }
        }
        let _ = tokio::time::timeout(flush, self.endpoint.wait_idle()).await;
        drop(self);
        // Dropping the last endpoint handle wakes quinn's endpoint driver, which then ends and
        // closes the socket; let it run before returning so the port is free.
        for _ in 0..ENDPOINT_DRIVER_YIELDS {
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
        self.endpoint
            .close(wire::CLOSE_SHUTDOWN.into(), b"shutdown");
        for task in self.peer_tasks.values().chain(&self.accept_task) {
            task.abort();
        }
    }
}
