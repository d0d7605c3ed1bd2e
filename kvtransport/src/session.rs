//! Client sessions: one long-lived bidirectional stream per client connection carrying many
//! requests, each tagged with an id, and their answers in any order.
//!
//! ```text
//! bi  SESSION  -> [id u64][len u32][request]  [id u64][len u32][request]  ...
//!              <- [id u64][code u32][len u32][response]  ...   (any order)
//! ```
//!
//! Code 0 is an answer; any other code is one of the `wire::STREAM_*` refusals for that request
//! alone, with no body (`STREAM_BUSY`: over the connection's in-flight budget, nothing done;
//! `STREAM_UNAVAILABLE`: the node dropped the request unanswered; `STREAM_TOO_LARGE`: the
//! answer is over `client_response_bytes_max`). A frame the node cannot parse, or a request
//! over `client_request_bytes_max`, resets the whole stream (framing is lost or not worth
//! keeping) with `STREAM_MALFORMED` or `STREAM_TOO_LARGE`.
//!
//! Why: a stream per request costs the node a task, stream state, and FIN and flow-control
//! frames per request; a session pays them once per connection.
//!
//! Bounds, per session: request bytes in flight share the connection's budget
//! (`client_inflight_bytes_per_connection_max`, charged before the payload is read, as for a
//! request stream); requests read and not yet answered are at most
//! `client_session_requests_inflight_max` (beyond it: `STREAM_BUSY`, payload skipped unread
//! into memory), which also bounds the answers waiting to be written.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, BufReader};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::admission::{self, InflightBudget};
use super::codec::{self, CodecError};
use super::stats::TransportStats;
use super::{wire, Inbound, Shared};
use crate::accept::Caller;

/// Bytes of a request frame's header: id (u64 LE) and payload length (u32 LE).
pub const REQUEST_HEADER_BYTES: usize = 12;
/// Bytes of an answer frame's header: id (u64 LE), code (u32 LE), body length (u32 LE).
pub const ANSWER_HEADER_BYTES: usize = 16;
/// Read buffer of a session stream: a burst of small requests is one read.
const SESSION_READ_BUFFER_BYTES: usize = 16 << 10;
/// Frame bodies (answers, and the client's requests) up to this size are copied next to their
/// header into one write buffer; larger ones are written as they are (no copy of a body of
/// megabytes). One buffer per write, not two chunks per frame: quinn keeps each written chunk
/// as a segment until acknowledged and walks the segments for every frame it sends, so a
/// burst of small chunks costs time quadratic in the burst.
const FRAME_COPY_BYTES_MAX: usize = 4 << 10;
/// Answers gathered into one write.
const WRITE_BATCH_ANSWERS_MAX: usize = 256;

/// One answer on its way to the session's writer. `_slot` is the request's place among the
/// session's `client_session_requests_inflight_max`, given back once the answer is written.
#[derive(Debug)]
pub(crate) struct Answer {
    id: u64,
    code: u32,
    body: Bytes,
    _slot: Option<OwnedSemaphorePermit>,
}

/// The node's handle to answer one request of a session.
#[derive(Debug)]
pub(crate) struct SessionReply {
    id: u64,
    answers: mpsc::UnboundedSender<Answer>,
    slot: Option<OwnedSemaphorePermit>,
}

impl SessionReply {
    pub fn send(mut self, body: Bytes) -> Result<(), Bytes> {
        let answer = Answer {
            id: self.id,
            code: 0,
            body,
            _slot: self.slot.take(),
        };
        self.answers.send(answer).map_err(|e| e.0.body)
    }
}

impl Drop for SessionReply {
    /// Dropped unanswered (`send` takes the slot): tell the client, or it would wait for its
    /// timeout.
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let _ = self.answers.send(Answer {
                id: self.id,
                code: wire::STREAM_UNAVAILABLE,
                body: Bytes::new(),
                _slot: Some(slot),
            });
        }
    }
}

fn refusal(id: u64, code: u32) -> Answer {
    Answer {
        id,
        code,
        body: Bytes::new(),
        _slot: None,
    }
}

/// Serves one session stream until the client finishes it (then once every request read has
/// been answered) or it fails. Reading and writing run side by side in this one task.
pub(crate) async fn serve(
    shared: &Shared,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    caller: &Caller,
    budget: &InflightBudget,
) {
    let (answers_tx, mut answers) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(
        shared.limits.client_session_requests_inflight_max as usize,
    ));
    let mut reader = BufReader::with_capacity(SESSION_READ_BUFFER_BYTES, recv);
    let read = async {
        let outcome = read_requests(shared, &mut reader, caller, budget, &slots, answers_tx).await;
        if let Err(code) = outcome {
            let _ = reader.get_mut().stop(code.into());
            return Some(code);
        }
        None
    };
    let write = write_answers(shared, &mut send, &mut answers, caller);
    let (refused, ()) = tokio::join!(read, write);
    match refused {
        Some(code) => {
            let _ = send.reset(code.into());
        }
        None => {
            let _ = send.finish();
        }
    }
}

/// Reads requests and hands them to the node until the client finishes its side. `Err`: the
/// code to reset the session with. Returning drops this side's sender of `answers`; the writer
/// ends once the node has answered (or dropped) every request handed to it.
async fn read_requests(
    shared: &Shared,
    reader: &mut BufReader<quinn::RecvStream>,
    caller: &Caller,
    budget: &InflightBudget,
    slots: &Arc<Semaphore>,
    answers: mpsc::UnboundedSender<Answer>,
) -> Result<(), u32> {
    let request_max = shared.limits.client_request_bytes_max;
    let bad_frame = |e: CodecError| {
        crate::accept::frame_error(shared, caller, &e).unwrap_or(wire::STREAM_MALFORMED)
    };
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    loop {
        match codec::read_exact_or_end(reader, &mut header).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(bad_frame(e)),
        }
        let (id_bytes, len_bytes) = header.split_at(8);
        let id = u64::from_le_bytes(id_bytes.try_into().unwrap_or_default());
        let len = u32::from_le_bytes(len_bytes.try_into().unwrap_or_default());
        if len > request_max {
            return Err(bad_frame(CodecError::Oversize {
                len: u64::from(len),
                max: request_max,
            }));
        }
        let slot = slots.clone().try_acquire_owned().ok();
        let charge = slot.as_ref().and_then(|_| budget.try_charge(len));
        let (Some(slot), Some(charge)) = (slot, charge) else {
            TransportStats::inc(&shared.stats.client_requests_refused_inflight_total);
            tracing::debug!(
                identity = %caller.identity,
                len,
                "client request refused: session at client_session_requests_inflight_max \
                 or connection at client_inflight_bytes_per_connection_max"
            );
            codec::skip_payload(reader, len as usize)
                .await
                .map_err(bad_frame)?;
            // The writer outlives this function: a failed send means it already failed.
            let _ = answers.send(refusal(id, wire::STREAM_BUSY));
            continue;
        };
        let mut payload = Vec::new();
        codec::read_payload_into(reader, len as usize, &mut payload)
            .await
            .map_err(bad_frame)?;
        let request = admission::charged_bytes(payload, charge);
        TransportStats::inc(&shared.stats.client_requests_total);
        let reply = crate::ClientReply::session(SessionReply {
            id,
            answers: answers.clone(),
            slot: Some(slot),
        });
        let client = caller.identity.name().to_string();
        let inbound = Inbound::Client {
            client,
            request,
            reply,
        };
        // The node is gone: the reply, dropped with the event, answers STREAM_UNAVAILABLE.
        if shared.inbound.send(inbound).await.is_err() {
            return Ok(());
        }
    }
}

/// Writes answers as they come, many per write, until every sender is gone (the reader ended
/// and the node answered or dropped every request) or the stream fails.
async fn write_answers(
    shared: &Shared,
    send: &mut quinn::SendStream,
    answers: &mut mpsc::UnboundedReceiver<Answer>,
    caller: &Caller,
) {
    let response_max = shared.limits.client_response_bytes_max;
    let mut batch = Vec::with_capacity(WRITE_BATCH_ANSWERS_MAX);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut buf = BytesMut::new();
    while answers.recv_many(&mut batch, WRITE_BATCH_ANSWERS_MAX).await > 0 {
        for answer in batch.drain(..) {
            let (code, body) = if answer.body.len() > response_max as usize {
                tracing::warn!(
                    identity = %caller.identity,
                    len = answer.body.len(),
                    "client response refused: over client_response_bytes_max"
                );
                (wire::STREAM_TOO_LARGE, Bytes::new())
            } else {
                (answer.code, answer.body)
            };
            // Bounded by client_response_bytes_max (a u32) above.
            let header = answer_header(answer.id, code, body.len() as u32);
            push_frame(&mut buf, &mut chunks, &header, body);
        }
        finish_frames(&mut buf, &mut chunks);
        if send.write_all_chunks(&mut chunks).await.is_err() {
            // The client is gone or stopped reading answers: drop the rest as they come.
            return;
        }
        chunks.clear();
    }
}

/// Adds a frame (`header`, `body`) to a write: copied into `buf` if the body is small, else
/// `buf` so far and the body as chunks of their own. `finish_frames` ends the write.
pub(crate) fn push_frame(buf: &mut BytesMut, chunks: &mut Vec<Bytes>, header: &[u8], body: Bytes) {
    buf.reserve(header.len() + body.len().min(FRAME_COPY_BYTES_MAX));
    buf.put_slice(header);
    if body.len() <= FRAME_COPY_BYTES_MAX {
        buf.put_slice(&body);
    } else {
        chunks.push(buf.split().freeze());
        chunks.push(body);
    }
}

/// Moves what `push_frame` left in `buf` into `chunks`, ready for `write_all_chunks`.
pub(crate) fn finish_frames(buf: &mut BytesMut, chunks: &mut Vec<Bytes>) {
    if !buf.is_empty() {
        chunks.push(buf.split().freeze());
    }
}

/// Encodes a request frame's header (client side).
pub(crate) fn request_header(id: u64, len: u32) -> [u8; REQUEST_HEADER_BYTES] {
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    header[..8].copy_from_slice(&id.to_le_bytes());
    header[8..].copy_from_slice(&len.to_le_bytes());
    header
}

/// Encodes an answer frame's header (node side); `read_answer_header` reads it.
fn answer_header(id: u64, code: u32, len: u32) -> [u8; ANSWER_HEADER_BYTES] {
    let mut header = [0u8; ANSWER_HEADER_BYTES];
    header[..8].copy_from_slice(&id.to_le_bytes());
    header[8..12].copy_from_slice(&code.to_le_bytes());
    header[12..].copy_from_slice(&len.to_le_bytes());
    header
}

/// Reads an answer frame's header (client side): `(id, code, len)`, `None` at a clean end.
pub(crate) async fn read_answer_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<(u64, u32, u32)>, CodecError> {
    let mut header = [0u8; ANSWER_HEADER_BYTES];
    if !codec::read_exact_or_end(reader, &mut header).await? {
        return Ok(None);
    }
    let id = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
    let code = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(header[12..].try_into().unwrap_or_default());
    Ok(Some((id, code, len)))
}
