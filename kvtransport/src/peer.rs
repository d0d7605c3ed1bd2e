//! The outbound side of one peer: a bounded queue of encoded frames and a task that keeps one
//! connection and one long-lived unidirectional raft stream to the peer.
//!
//! The task writes everything queued with one `write_all_chunks` call, so a burst of messages
//! (say, an append to every follower plus heartbeats) costs one write and few packets. When the
//! connection breaks, what was being written is lost (Raft retransmits); the task dials again
//! with a backoff that doubles up to `reconnect_backoff_ms_max`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use super::client::{self, ClientError};
use super::stats::TransportStats;
use super::wire::{self, Hello};
use super::{Peer, Shared, TransportLimits, SHUTDOWN_FLUSH_MS_MAX};

/// quinn sends higher-priority streams first; snapshot streams keep the default 0.
const RAFT_STREAM_PRIORITY: i32 = 1;

#[derive(Default)]
struct PeerQueue {
    frames: Vec<Bytes>,
    bytes: u64,
}

pub(crate) struct PeerHandle {
    pub peer: Peer,
    queue: Mutex<PeerQueue>,
    /// Signals the task that the queue is no longer empty (stores a permit if it is busy).
    queued: Notify,
    /// The live connection, for snapshot streams (`None` while disconnected).
    connection: watch::Sender<Option<quinn::Connection>>,
    /// The peer's process incarnation, from its hellos (0: not seen yet). A change means the
    /// peer restarted: our connection to it is dead even if QUIC has not noticed yet.
    incarnation: watch::Sender<u64>,
    /// Set when the peer leaves the table: connections it opened to us close too.
    retired: watch::Sender<bool>,
}

impl PeerHandle {
    pub fn new(peer: Peer) -> PeerHandle {
        PeerHandle {
            peer,
            queue: Mutex::new(PeerQueue::default()),
            queued: Notify::new(),
            connection: watch::channel(None).0,
            incarnation: watch::channel(0).0,
            retired: watch::channel(false).0,
        }
    }

    /// The peer left the table: close the outgoing connection (the task is aborted by the
    /// caller) and the connections it opened to us, and drop what is queued.
    pub fn retire(&self) {
        self.retired.send_replace(true);
        if let Some(connection) = self.connection.borrow().as_ref() {
            connection.close(0u32.into(), b"peer removed");
        }
        self.take_all();
    }

    /// Fires (`true`) once the peer has left the table.
    pub fn retired(&self) -> watch::Receiver<bool> {
        self.retired.subscribe()
    }

    /// Records the incarnation from a hello of this peer; returns whether it restarted.
    pub fn saw_incarnation(&self, incarnation: u64) -> bool {
        self.incarnation.send_if_modified(|seen| {
            let restarted = *seen != 0 && *seen != incarnation;
            *seen = incarnation;
            restarted
        })
    }

    fn lock(&self) -> MutexGuard<'_, PeerQueue> {
        // A panic while holding this lock cannot leave the queue inconsistent (push and take
        // are single statements), so a poisoned lock is still usable.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn enqueue(&self, frame: Bytes, limits: &TransportLimits, stats: &TransportStats) {
        let mut queue = self.lock();
        let bytes = frame.len() as u64;
        if queue.frames.len() >= limits.peer_queue_messages_max
            || queue.bytes + bytes > limits.peer_queue_bytes_max
        {
            drop(queue);
            TransportStats::inc(&stats.messages_dropped_queue_full_total);
            tracing::debug!(peer = %self.peer.name, "peer queue full, message dropped");
            return;
        }
        queue.frames.push(frame);
        queue.bytes += bytes;
        drop(queue);
        TransportStats::inc(&stats.messages_sent_total);
        self.queued.notify_one();
    }

    fn take_all(&self) -> Vec<Bytes> {
        let mut queue = self.lock();
        queue.bytes = 0;
        std::mem::take(&mut queue.frames)
    }

    pub fn connection(&self) -> watch::Receiver<Option<quinn::Connection>> {
        self.connection.subscribe()
    }
}

/// The peer task: dial, stream, and on failure back off and dial again, until shutdown.
pub(crate) async fn run(shared: Arc<Shared>, endpoint: quinn::Endpoint, handle: Arc<PeerHandle>) {
    let limits = &shared.limits;
    let mut shutdown = shared.shutdown.clone();
    let mut backoff_ms = limits.reconnect_backoff_ms_min;
    while !*shutdown.borrow() {
        let dialed = tokio::select! {
            dialed = dial(&shared, &endpoint, &handle.peer) => dialed,
            _ = shutdown.changed() => return,
        };
        match dialed {
            Ok((connection, stream)) => {
                backoff_ms = limits.reconnect_backoff_ms_min;
                handle.connection.send_replace(Some(connection.clone()));
                let ended = stream_frames(&shared, &handle, &connection, stream).await;
                handle.connection.send_replace(None);
                match ended {
                    StreamEnd::Shutdown => return,
                    StreamEnd::Broken(reason) => {
                        tracing::info!(peer = %handle.peer.name, "connection lost: {reason}");
                    }
                }
            }
            Err(e) => {
                TransportStats::inc(&shared.stats.peer_connect_failures_total);
                tracing::debug!(peer = %handle.peer.name, "connect failed: {e}");
            }
        }
        let sleep = tokio::time::sleep(Duration::from_millis(backoff_ms));
        tokio::select! {
            _ = sleep => {}
            _ = shutdown.changed() => {}
        }
        backoff_ms = (backoff_ms * 2).min(limits.reconnect_backoff_ms_max);
    }
}

async fn dial(
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    peer: &Peer,
) -> Result<(quinn::Connection, quinn::SendStream), ClientError> {
    let hello = Hello::node(shared.self_id, &shared.self_name);
    let timeout = Duration::from_millis(shared.limits.handshake_timeout_ms);
    let config = shared.client_config.clone();
    let (connection, _reply) =
        client::dial(endpoint, config, peer.addr, &peer.name, &hello, timeout).await?;
    let mut stream = connection.open_uni().await?;
    // Heartbeats and votes must not queue behind a snapshot's megabytes on the same connection.
    let _ = stream.set_priority(RAFT_STREAM_PRIORITY);
    stream.write_all(&[wire::STREAM_TAG_RAFT]).await?;
    Ok((connection, stream))
}

enum StreamEnd {
    Shutdown,
    Broken(String),
}

/// Writes queued frames until the connection breaks or the transport shuts down.
async fn stream_frames(
    shared: &Shared,
    handle: &PeerHandle,
    connection: &quinn::Connection,
    mut stream: quinn::SendStream,
) -> StreamEnd {
    let mut shutdown = shared.shutdown.clone();
    let mut incarnation = handle.incarnation.subscribe();
    incarnation.borrow_and_update();
    loop {
        if *shutdown.borrow() {
            finish(handle, stream).await;
            return StreamEnd::Shutdown;
        }
        tokio::select! {
            _ = handle.queued.notified() => {}
            error = connection.closed() => return StreamEnd::Broken(error.to_string()),
            _ = incarnation.changed() => {
                connection.close(0u32.into(), b"peer restarted");
                return StreamEnd::Broken("the peer restarted".to_string());
            }
            _ = shutdown.changed() => continue,
        }
        let mut frames = handle.take_all();
        if frames.is_empty() {
            continue;
        }
        let count = frames.len() as u64;
        if let Err(e) = stream.write_all_chunks(&mut frames).await {
            TransportStats::add(&shared.stats.messages_dropped_write_failed_total, count);
            return StreamEnd::Broken(e.to_string());
        }
    }
}

/// Shutdown: writes what is still queued, finishes the stream and waits (bounded) for the peer
/// to acknowledge it.
async fn finish(handle: &PeerHandle, mut stream: quinn::SendStream) {
    let mut frames = handle.take_all();
    let flush = async {
        stream.write_all_chunks(&mut frames).await.ok()?;
        stream.finish().ok()?;
        stream.stopped().await.ok()
    };
    let deadline = Duration::from_millis(SHUTDOWN_FLUSH_MS_MAX);
    if tokio::time::timeout(deadline, flush).await.is_err() {
        tracing::debug!(peer = %handle.peer.name, "raft stream flush timed out at shutdown");
    }
}
