//! The accepting side: handshake, identity, hello, then one task per incoming stream.
//!
//! ```text
//! Incoming --connections_max--> TLS (CA + clientAuth, rustls) --> Identity (tls.rs)
//!    | refused: connections_refused_limit_total   | refused: connections_refused_tls_total
//!
//!   --hello--> connections_per_identity_max --hello reply--> serve streams
//!    | refused: connections_refused_identity_total
//!    |          connections_refused_identity_limit_total (per-identity cap)
//! ```
//!
//! Client requests (one per request stream, or many on a session stream: `session.rs`) are
//! admitted against the connection's in-flight byte budget (`admission.rs`) before their
//! payload is read.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::admission::{self, IdentitySlot, InflightBudget};
use super::codec::{self, CodecError};
use super::stats::TransportStats;
use super::tls::Identity;
use super::wire::{self, Hello, HelloReply};
use super::{session, snapshot, ClientReply, Inbound, Shared};
use kvraft::message::{Message, NodeId};

/// Read buffer of a raft stream: large enough that a burst of small frames is one read.
const RAFT_READ_BUFFER_BYTES: usize = 64 << 10;

/// Accepts until the endpoint closes, then waits for every connection task to end (they end
/// once their connection is closed), so that `Transport::shutdown` returns with nothing left.
pub(crate) async fn run(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    // Reap the tasks of closed connections so that `len` counts open ones.
                    while connections.try_join_next().is_some() {}
                    let open = connections.len();
                    if open >= shared.limits.connections_max {
                        refuse_full(&shared, incoming, open);
                    } else {
                        connections.spawn(handle_incoming(shared.clone(), incoming));
                    }
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(endpoint);
    while connections.join_next().await.is_some() {}
}

/// `connections_max` connections are open (handshaking or established): refuse before the
/// handshake, which costs us nothing but one packet (QUIC CONNECTION_REFUSED).
fn refuse_full(shared: &Shared, incoming: quinn::Incoming, open: usize) {
    TransportStats::inc(&shared.stats.connections_refused_limit_total);
    let remote = incoming.remote_address();
    let max = shared.limits.connections_max;
    tracing::warn!(
        %remote,
        open,
        "connection refused: {open} connections open, limits.connections_max is {max}"
    );
    incoming.refuse();
}

/// Who is on the other end of an accepted, greeted connection.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) identity: Identity,
    /// `Some` once the hello claimed, and the certificate proved, this node id.
    node_id: Option<NodeId>,
}

async fn handle_incoming(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let timeout = Duration::from_millis(shared.limits.handshake_timeout_ms);
    let handshake = async { incoming.accept()?.await };
    let connection = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => return refused_tls(&shared, remote, &e.to_string()),
        Err(_) => return refused_tls(&shared, remote, "handshake timed out"),
    };
    let refuse = |counter, reason: &str| {
        TransportStats::inc(counter);
        tracing::warn!(%remote, "connection refused: {reason}");
        connection.close(wire::CLOSE_REFUSED.into(), reason.as_bytes());
    };
    let (caller, hello_send) = match greet(&shared, &connection, timeout).await {
        Ok(greeted) => greeted,
        Err(reason) => return refuse(&shared.stats.connections_refused_identity_total, &reason),
    };
    // Before the hello reply, so that the dialer's connect fails with the reason.
    let max = shared.limits.connections_per_identity_max;
    let slot = match shared.identities.try_acquire(&caller.identity, max) {
        Ok(slot) => slot,
        Err(open) => {
            let name = caller.identity.name();
            let reason = format!(
                "identity {name} has {open} connections open, \
                 limits.connections_per_identity_max is {max}"
            );
            return refuse(
                &shared.stats.connections_refused_identity_limit_total,
                &reason,
            );
        }
    };
    if let Err(reason) = reply_hello(&shared, hello_send).await {
        return refuse(&shared.stats.connections_refused_identity_total, &reason);
    }
    TransportStats::inc(&shared.stats.connections_accepted_total);
    tracing::debug!(%remote, identity = %caller.identity, "connection accepted");
    serve_connection(shared, connection, caller, slot).await;
}

fn refused_tls(shared: &Shared, remote: std::net::SocketAddr, reason: &str) {
    TransportStats::inc(&shared.stats.connections_refused_tls_total);
    tracing::warn!(%remote, "connection refused during TLS handshake: {reason}");
}

/// Classifies the certificate, reads the hello and checks the identity it claims. The error is
/// the refusal reason sent to the peer. Returns the hello stream's sending half for the reply.
async fn greet(
    shared: &Shared,
    connection: &quinn::Connection,
    timeout: Duration,
) -> Result<(Caller, quinn::SendStream), String> {
    let chain = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or("no client certificate")?;
    let identity = shared
        .identifier
        .identify(&chain)
        .map_err(|e| e.to_string())?;
    let (send, mut recv) = tokio::time::timeout(timeout, connection.accept_bi())
        .await
        .map_err(|_| "no hello in time".to_string())?
        .map_err(|e| format!("no hello: {e}"))?;
    let hello = tokio::time::timeout(timeout, read_hello(&mut recv))
        .await
        .map_err(|_| "no hello in time".to_string())??;
    let node_id = check_claim(shared, &identity, &hello)?;
    if let (Some(id), Some(claim)) = (node_id, &hello.node) {
        let restarted = shared
            .peer(id)
            .is_some_and(|p| p.saw_incarnation(claim.incarnation));
        if restarted {
            tracing::info!(peer = %claim.name, "peer restarted: replacing our connection to it");
            // The node may be shutting down (receiver gone): nothing to tell then.
            let _ = shared
                .inbound
                .send(Inbound::PeerRestarted { peer: id })
                .await;
        }
    }
    Ok((Caller { identity, node_id }, send))
}

async fn reply_hello(shared: &Shared, mut send: quinn::SendStream) -> Result<(), String> {
    let reply = HelloReply {
        version: wire::PROTOCOL_VERSION,
        name: shared.self_name.clone(),
    };
    let frame = codec::encode_frame(&reply, wire::HELLO_BYTES_MAX).map_err(|e| e.to_string())?;
    send.write_all(&frame)
        .await
        .map_err(|e| format!("hello reply: {e}"))?;
    let _ = send.finish();
    Ok(())
}

async fn read_hello(recv: &mut quinn::RecvStream) -> Result<Hello, String> {
    let tag = recv.read_u8().await.map_err(|e| format!("hello: {e}"))?;
    if tag != wire::STREAM_TAG_HELLO {
        return Err(format!("first stream has tag {tag}, expected hello"));
    }
    match codec::read_frame::<Hello, _>(recv, wire::HELLO_BYTES_MAX).await {
        Ok(Some(hello)) if hello.version == wire::PROTOCOL_VERSION => Ok(hello),
        Ok(Some(hello)) => Err(format!("protocol version {} not supported", hello.version)),
        Ok(None) => Err("hello stream ended without a hello".to_string()),
        Err(e) => Err(format!("hello: {e}")),
    }
}

/// A node claim must match the certificate's node name and that name's id in the peer table;
/// a node certificate must belong to a known peer even when it connects as a client.
fn check_claim(
    shared: &Shared,
    identity: &Identity,
    hello: &Hello,
) -> Result<Option<NodeId>, String> {
    let known_id = match identity {
        Identity::Node(name) => match shared.peer_id_by_name(name) {
            Some(id) => Some(id),
            None => return Err(format!("node certificate '{name}' is not a cluster peer")),
        },
        Identity::Client(_) => None,
    };
    let Some(claim) = &hello.node else {
        return Ok(None);
    };
    match known_id {
        Some(id) if id == claim.id && identity.name() == claim.name => Ok(Some(id)),
        _ => Err(format!(
            "certificate of {identity} cannot act as node {} ({})",
            claim.id, claim.name
        )),
    }
}

/// Serves the connection's streams until it closes. `_slot` is its identity's connection slot,
/// given back when this returns.
async fn serve_connection(
    shared: Arc<Shared>,
    connection: quinn::Connection,
    caller: Caller,
    _slot: IdentitySlot,
) {
    let budget = InflightBudget::new(shared.limits.client_inflight_bytes_per_connection_max);
    let mut streams = JoinSet::new();
    // A peer node removed from the table (a membership change) loses this connection too.
    let mut retired = (caller.node_id)
        .and_then(|id| shared.peer(id))
        .map(|peer| peer.retired());
    let closed = loop {
        tokio::select! {
            () = wait_retired(&mut retired) => {
                retired = None;
                connection.close(wire::CLOSE_REFUSED.into(), b"no longer a cluster peer");
            }
            bi = connection.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let caller = caller.clone();
                    streams.spawn(serve_bi(shared.clone(), send, recv, caller, budget.clone()));
                }
                Err(e) => break e,
            },
            uni = connection.accept_uni() => match uni {
                Ok(recv) => {
                    streams.spawn(serve_uni(shared.clone(), recv, caller.clone()));
                }
                Err(e) => break e,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    };
    tracing::debug!(identity = %caller.identity, "connection closed: {closed}");
    // Stream tasks fail fast on a closed connection; wait so none outlives the transport.
    while streams.join_next().await.is_some() {}
}

/// Returns once the peer is retired; never if there is nothing to watch.
async fn wait_retired(retired: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match retired {
        // A dropped sender means the handle is gone from the table: retired too.
        Some(receiver) => {
            let _ = receiver.wait_for(|retired| *retired).await;
        }
        None => std::future::pending().await,
    }
}

/// Counts a frame error and returns the stream code to refuse the stream with (`None`: the
/// connection itself failed, nothing to count).
pub(crate) fn frame_error(shared: &Shared, caller: &Caller, error: &CodecError) -> Option<u32> {
    let (counter, code) = match error {
        CodecError::Oversize { .. } => {
            (&shared.stats.frames_oversize_total, wire::STREAM_TOO_LARGE)
        }
        CodecError::Malformed(_) | CodecError::Truncated => {
            (&shared.stats.frames_malformed_total, wire::STREAM_MALFORMED)
        }
        CodecError::Io(_) | CodecError::Encode(_) => return None,
    };
    TransportStats::inc(counter);
    tracing::warn!(identity = %caller.identity, "bad frame: {error}");
    Some(code)
}

fn refuse_stream(send: Option<&mut quinn::SendStream>, recv: &mut quinn::RecvStream, code: u32) {
    if let Some(send) = send {
        let _ = send.reset(code.into());
    }
    let _ = recv.stop(code.into());
}

async fn serve_bi(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    caller: Caller,
    budget: InflightBudget,
) {
    let tag = match recv.read_u8().await {
        Ok(tag) => tag,
        Err(_) => return refuse_stream(Some(&mut send), &mut recv, wire::STREAM_MALFORMED),
    };
    match (tag, caller.node_id) {
        (wire::STREAM_TAG_CLIENT, _) => serve_client(&shared, send, recv, &caller, &budget).await,
        (wire::STREAM_TAG_SESSION, _) => {
            session::serve(&shared, send, recv, &caller, &budget).await
        }
        (wire::STREAM_TAG_SNAPSHOT, Some(from)) => {
            snapshot::receive(&shared, from, send, recv).await
        }
        (wire::STREAM_TAG_SNAPSHOT, None) => {
            tracing::warn!(identity = %caller.identity, "snapshot stream from a non-node refused");
            refuse_stream(Some(&mut send), &mut recv, wire::STREAM_FORBIDDEN);
        }
        (other, _) => {
            TransportStats::inc(&shared.stats.frames_malformed_total);
            tracing::warn!(identity = %caller.identity, tag = other, "unknown stream tag");
            refuse_stream(Some(&mut send), &mut recv, wire::STREAM_MALFORMED);
        }
    }
}

async fn serve_uni(shared: Arc<Shared>, mut recv: quinn::RecvStream, caller: Caller) {
    let tag = match recv.read_u8().await {
        Ok(tag) => tag,
        Err(_) => return refuse_stream(None, &mut recv, wire::STREAM_MALFORMED),
    };
    match (tag, caller.node_id) {
        (wire::STREAM_TAG_RAFT, Some(from)) => read_raft(&shared, recv, &caller, from).await,
        (wire::STREAM_TAG_RAFT, None) => {
            tracing::warn!(identity = %caller.identity, "raft stream from a non-node refused");
            refuse_stream(None, &mut recv, wire::STREAM_FORBIDDEN);
        }
        (other, _) => {
            TransportStats::inc(&shared.stats.frames_malformed_total);
            tracing::warn!(identity = %caller.identity, tag = other, "unknown stream tag");
            refuse_stream(None, &mut recv, wire::STREAM_MALFORMED);
        }
    }
}

/// Delivers raft messages until the stream ends. A bad frame ends the stream (framing is lost);
/// the sender reconnects.
async fn read_raft(shared: &Shared, recv: quinn::RecvStream, caller: &Caller, from: NodeId) {
    let mut reader = BufReader::with_capacity(RAFT_READ_BUFFER_BYTES, recv);
    loop {
        let frame = codec::read_frame::<Message, _>(&mut reader, shared.limits.frame_bytes_max);
        let msg = match frame.await {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(e) => {
                if let Some(code) = frame_error(shared, caller, &e) {
                    refuse_stream(None, reader.get_mut(), code);
                }
                return;
            }
        };
        if msg.from != from || msg.to != shared.self_id {
            TransportStats::inc(&shared.stats.messages_dropped_wrong_sender_total);
            tracing::warn!(
                from,
                msg.from,
                msg.to,
                "raft message with wrong from/to dropped"
            );
            continue;
        }
        TransportStats::inc(&shared.stats.messages_received_total);
        if shared.inbound.send(Inbound::Raft(msg)).await.is_err() {
            return; // The node is gone.
        }
    }
}

/// Reads one client request: its length, then (if the connection's budget has room for it)
/// its payload, charged to the budget until the node drops it. `Err`: the stream code to
/// refuse the stream with.
async fn read_client_request(
    shared: &Shared,
    recv: &mut quinn::RecvStream,
    caller: &Caller,
    budget: &InflightBudget,
) -> Result<Bytes, u32> {
    let request_max = shared.limits.client_request_bytes_max;
    let bad_frame =
        |e: CodecError| frame_error(shared, caller, &e).unwrap_or(wire::STREAM_MALFORMED);
    let len = match codec::read_frame_header(recv, request_max).await {
        Ok(Some(len)) => len,
        Ok(None) => return Err(wire::STREAM_MALFORMED),
        Err(e) => return Err(bad_frame(e)),
    };
    let Some(charge) = budget.try_charge(len) else {
        TransportStats::inc(&shared.stats.client_requests_refused_inflight_total);
        tracing::debug!(
            identity = %caller.identity,
            len,
            "client request refused: connection at client_inflight_bytes_per_connection_max"
        );
        return Err(wire::STREAM_BUSY);
    };
    let mut payload = Vec::new();
    match codec::read_payload_into(recv, len as usize, &mut payload).await {
        Ok(()) => Ok(admission::charged_bytes(payload, charge)),
        Err(e) => Err(bad_frame(e)),
    }
}

/// One client request: read it, hand it to the node, write its answer.
async fn serve_client(
    shared: &Shared,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    caller: &Caller,
    budget: &InflightBudget,
) {
    let request = match read_client_request(shared, &mut recv, caller, budget).await {
        Ok(request) => request,
        Err(code) => return refuse_stream(Some(&mut send), &mut recv, code),
    };
    TransportStats::inc(&shared.stats.client_requests_total);
    let (reply, response) = oneshot::channel();
    let client = caller.identity.name().to_string();
    if shared
        .inbound
        .send(Inbound::Client {
            client,
            request,
            reply: ClientReply::stream(reply),
        })
        .await
        .is_err()
    {
        return refuse_stream(Some(&mut send), &mut recv, wire::STREAM_UNAVAILABLE);
    }
    // quinn reports a stop to a write blocked by flow control only once it unblocks: watch for
    // it beside every wait, so that a client that gives up frees its response at once.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let response = tokio::select! {
        response = response => response,
        _ = &mut stopped => return, // The client gave up (or the connection is gone).
    };
    let Ok(response) = response else {
        return refuse_stream(Some(&mut send), &mut recv, wire::STREAM_UNAVAILABLE);
    };
    let header =
        match codec::raw_frame_header(response.len(), shared.limits.client_response_bytes_max) {
            Ok(header) => header,
            Err(e) => {
                tracing::warn!(identity = %caller.identity, "client response refused: {e}");
                return refuse_stream(Some(&mut send), &mut recv, wire::STREAM_TOO_LARGE);
            }
        };
    // Header and response as they are: no copy of a response of megabytes.
    let mut chunks = [Bytes::copy_from_slice(&header), response];
    tokio::select! {
        written = send.write_all_chunks(&mut chunks) => {
            if written.is_ok() {
                let _ = send.finish();
            }
        }
        _ = &mut stopped => {}
    }
}
