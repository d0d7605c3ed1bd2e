//! The dialing side: the hello round trip every connection starts with, and `ClientConn`, a
//! client's connection to one node carrying its requests on one session stream.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::BufReader;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::codec::{self, CodecError};
use super::session;
use super::tls::{TlsError, TlsMaterial};
use super::wire::{self, Hello, HelloReply};
use super::{TransportError, TransportLimits};

/// How long `ClientConn::connect` waits for the handshake and the hello round trip.
pub const CLIENT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Request frames gathered into one write on a session stream.
const SESSION_WRITE_BATCH_MAX: usize = 256;
/// Read buffer of a session stream's answers.
const SESSION_READ_BUFFER_BYTES: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node refused this connection: wrong CA, no certificate, or an identity it does not
    /// accept. `reason` is what the node (or TLS) said.
    #[error("connection refused by the node: {reason}")]
    Refused { reason: String },
    #[error("connect failed: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// No answer within the timeout; a request's outcome is unknown.
    #[error("timed out")]
    Timeout,
    #[error("request or response too large")]
    TooLarge,
    /// The node reset the request's stream with this code (see `wire::STREAM_*`).
    #[error("request rejected by the node with stream code {code}")]
    Rejected { code: u64 },
    #[error("stream failed: {0}")]
    Stream(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Config(#[from] TransportError),
    #[error("cannot bind a local UDP socket: {0}")]
    Bind(std::io::Error),
}

impl From<quinn::WriteError> for ClientError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => ClientError::Rejected {
                code: code.into_inner(),
            },
            quinn::WriteError::ConnectionLost(e) => connection_error(e),
            other => ClientError::Stream(other.to_string()),
        }
    }
}

impl From<quinn::ReadExactError> for ClientError {
    fn from(e: quinn::ReadExactError) -> Self {
        match e {
            quinn::ReadExactError::FinishedEarly(_) => ClientError::Codec(CodecError::Truncated),
            quinn::ReadExactError::ReadError(e) => read_error(e),
        }
    }
}

fn read_error(e: quinn::ReadError) -> ClientError {
    match e {
        quinn::ReadError::Reset(code) => ClientError::Rejected {
            code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(e) => connection_error(e),
        other => ClientError::Stream(other.to_string()),
    }
}

/// TLS alerts travel as QUIC transport error codes 0x100..=0x1ff (RFC 9001 §4.8).
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    u64::from(code) & !0xff == 0x100
}

/// A connection closed by the node's refusal, or by TLS, is a refusal; anything else is a
/// lost connection.
fn connection_error(e: quinn::ConnectionError) -> ClientError {
    match &e {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == wire::CLOSE_REFUSED.into() =>
        {
            ClientError::Refused {
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        quinn::ConnectionError::ConnectionClosed(close) if is_crypto(close.error_code) => {
            ClientError::Refused {
                reason: close.to_string(),
            }
        }
        quinn::ConnectionError::TransportError(t) if is_crypto(t.code) => ClientError::Refused {
            reason: t.to_string(),
        },
        // Sent before the handshake when the node is at `connections_max` (or by quinn itself
        // when it cannot take more connection attempts).
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            ClientError::Refused {
                reason: "the node is at its connection limit".to_string(),
            }
        }
        _ => ClientError::Connection(e),
    }
}

/// Codec errors carry quinn's read errors as `io::Error`; recover the stream reset code.
fn codec_error(e: CodecError) -> ClientError {
    if let CodecError::Io(io) = &e {
        if let Some(read) = io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
        {
            return read_error(read.clone());
        }
    }
    ClientError::Codec(e)
}

async fn hello_round_trip(
    connection: &quinn::Connection,
    hello: &Hello,
) -> Result<HelloReply, ClientError> {
    let (mut send, mut recv) = connection.open_bi().await.map_err(connection_error)?;
    let frame = codec::encode_frame(hello, wire::HELLO_BYTES_MAX)?;
    send.write_all(&[wire::STREAM_TAG_HELLO]).await?;
    send.write_all(&frame).await?;
    send.finish()
        .map_err(|e| ClientError::Stream(e.to_string()))?;
    // TLS 1.3: a refused client certificate only shows here, on the first read.
    match codec::read_frame::<HelloReply, _>(&mut recv, wire::HELLO_BYTES_MAX).await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(ClientError::Codec(CodecError::Truncated)),
        Err(e) => Err(codec_error(e)),
    }
}

/// Connects to `addr`, checks the server's certificate against `server_name`, and does the
/// hello round trip, all within `timeout`. Returns the authorised connection.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    hello: &Hello,
    timeout: Duration,
) -> Result<(quinn::Connection, HelloReply), ClientError> {
    let attempt = async {
        let connecting = endpoint.connect_with(config, addr, server_name)?;
        let connection = connecting.await.map_err(connection_error)?;
        let reply = hello_round_trip(&connection, hello).await?;
        Ok::<_, ClientError>((connection, reply))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ClientError::Timeout)?
}

/// A client's connection to one node. `request` may be called from many tasks at once; all
/// requests travel on one session stream (`session.rs`), tagged with ids, and their answers
/// come back in any order. A writer task and a reader task serve the stream.
///
/// Requests wait (within their timeout) for room in `client_inflight_bytes_per_connection_max`
/// before they are sent, a budget released when their answer arrives (or the request times
/// out). The node keeps the same budget per connection for bytes it has not yet decoded and
/// refuses, unread, a request over it (`wire::STREAM_BUSY`); since the node releases its charge
/// before it answers, a client that keeps its own budget never reaches the node's.
pub struct ClientConn {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    request_bytes_max: u32,
    inflight: Arc<Semaphore>,
    session: Arc<SessionState>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    tasks: [JoinHandle<()>; 2],
}

/// Why the session ended: every later request fails with it.
#[derive(Clone, Debug)]
enum Closed {
    Connection(quinn::ConnectionError),
    Reset(u64),
    Other(String),
}

impl Closed {
    fn error(&self) -> ClientError {
        match self {
            Closed::Connection(e) => connection_error(e.clone()),
            Closed::Reset(code) => ClientError::Rejected { code: *code },
            Closed::Other(reason) => ClientError::Stream(reason.clone()),
        }
    }

    fn from_codec(e: CodecError) -> Closed {
        Closed::from_error(codec_error(e))
    }

    fn from_error(e: ClientError) -> Closed {
        match e {
            ClientError::Connection(e) => Closed::Connection(e),
            ClientError::Rejected { code } => Closed::Reset(code),
            other => Closed::Other(other.to_string()),
        }
    }
}

/// A request waiting for its answer, with its share of the in-flight budget once written.
struct Waiting {
    answer: oneshot::Sender<Result<Bytes, ClientError>>,
    _charge: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, Waiting>,
    closed: Option<Closed>,
}

#[derive(Default)]
struct SessionState {
    pending: Mutex<Pending>,
    next_id: AtomicU64,
}

impl SessionState {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every update is a single map operation: a poisoned lock is still consistent.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends the session: every waiting request, and every later one, fails with `why`.
    fn close(&self, why: Closed) {
        let mut pending = self.lock();
        if pending.closed.is_none() {
            pending.closed = Some(why.clone());
        }
        for (_, waiting) in pending.waiting.drain() {
            let _ = waiting.answer.send(Err(why.error()));
        }
    }
}

/// A request frame for the writer task, with its charge (held until the answer arrives).
struct Outgoing {
    id: u64,
    request: Bytes,
    charge: OwnedSemaphorePermit,
}

/// Forgets a request that stopped waiting (its timeout fired): a late answer is dropped.
struct Forget<'a> {
    session: &'a SessionState,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.session.lock().waiting.remove(&self.id);
    }
}

/// Writes request frames as they are queued, many per write. A frame is written whole even
/// when its request stopped waiting meanwhile, so framing is never cut.
async fn write_requests(
    mut send: quinn::SendStream,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    session: Arc<SessionState>,
) {
    let mut batch = Vec::with_capacity(SESSION_WRITE_BATCH_MAX);
    let mut chunks = Vec::with_capacity(2 * SESSION_WRITE_BATCH_MAX);
    let mut buf = BytesMut::new();
    while outgoing
        .recv_many(&mut batch, SESSION_WRITE_BATCH_MAX)
        .await
        > 0
    {
        for queued in &batch {
            // `request` checked the length against `request_bytes_max` (a u32).
            let header = session::request_header(queued.id, queued.request.len() as u32);
            session::push_frame(&mut buf, &mut chunks, &header, queued.request.clone());
        }
        session::finish_frames(&mut buf, &mut chunks);
        if let Err(e) = send.write_all_chunks(&mut chunks).await {
            return session.close(Closed::from_error(e.into()));
        }
        chunks.clear();
        let mut pending = session.lock();
        for queued in batch.drain(..) {
            if let Some(waiting) = pending.waiting.get_mut(&queued.id) {
                waiting._charge = Some(queued.charge);
            }
        }
    }
    let _ = send.finish();
}

/// Reads answers and hands each to its waiting request until the stream ends.
async fn read_answers(recv: quinn::RecvStream, session: Arc<SessionState>, response_max: u32) {
    let mut reader = BufReader::with_capacity(SESSION_READ_BUFFER_BYTES, recv);
    let why = loop {
        let (id, code, len) = match session::read_answer_header(&mut reader).await {
            Ok(Some(header)) => header,
            Ok(None) => break Closed::Other("the node ended the session".to_string()),
            Err(e) => break Closed::from_codec(e),
        };
        let answer = if len > response_max {
            if let Err(e) = codec::skip_payload(&mut reader, len as usize).await {
                break Closed::from_codec(e);
            }
            Err(ClientError::TooLarge)
        } else {
            let body = match codec::read_payload(&mut reader, len).await {
                Ok(body) => body,
                Err(e) => break Closed::from_codec(e),
            };
            match code {
                0 => Ok(body),
                code if code == wire::STREAM_TOO_LARGE => Err(ClientError::TooLarge),
                code => Err(ClientError::Rejected {
                    code: u64::from(code),
                }),
            }
        };
        if let Some(waiting) = session.lock().waiting.remove(&id) {
            let _ = waiting.answer.send(answer);
        }
    };
    session.close(why);
}

impl ClientConn {
    /// Connects with `tls` (a client certificate of the cluster CA) to the node `server_name`
    /// at `addr`. A refused certificate fails here with `ClientError::Refused`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: &TlsMaterial,
    ) -> Result<ClientConn, ClientError> {
        let limits = TransportLimits::default();
        let config = tls.client_config(limits.quinn_transport()?)?;
        ClientConn::connect_with(addr, server_name, config, Hello::client(), &limits).await
    }

    /// `connect` with a caller-made QUIC client configuration and hello (tools and tests).
    pub async fn connect_with(
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
        hello: Hello,
        limits: &TransportLimits,
    ) -> Result<ClientConn, ClientError> {
        limits.validate()?;
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let endpoint = quinn::Endpoint::client(local).map_err(ClientError::Bind)?;
        let timeout = Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS);
        let (connection, _reply) =
            dial(&endpoint, config, addr, server_name, &hello, timeout).await?;
        let (mut send, recv) = connection.open_bi().await.map_err(connection_error)?;
        // Opening a stream sends nothing: the tag goes out with the first request.
        send.write_all(&[wire::STREAM_TAG_SESSION]).await?;
        // Validated: at least the largest request, at most `Semaphore::MAX_PERMITS`.
        let inflight = usize::try_from(limits.client_inflight_bytes_per_connection_max)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        let session = Arc::new(SessionState::default());
        let (outgoing, queued) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_requests(send, queued, session.clone()));
        let response_max = limits.client_response_bytes_max;
        let reader = tokio::spawn(read_answers(recv, session.clone(), response_max));
        Ok(ClientConn {
            endpoint,
            connection,
            request_bytes_max: limits.client_request_bytes_max,
            inflight: Arc::new(Semaphore::new(inflight)),
            session,
            outgoing,
            tasks: [writer, reader],
        })
    }

    /// Sends one request and waits up to `timeout` for its response. On `Timeout` the
    /// request's outcome is unknown.
    pub async fn request(&self, request: Bytes, timeout: Duration) -> Result<Bytes, ClientError> {
        if request.len() as u64 > u64::from(self.request_bytes_max) {
            return Err(ClientError::TooLarge);
        }
        let exchange = self.exchange(request);
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn exchange(&self, request: Bytes) -> Result<Bytes, ClientError> {
        // `request` checked its length against `request_bytes_max` (a u32).
        let charge = self
            .inflight
            .clone()
            .acquire_many_owned(request.len() as u32)
            .await;
        // The semaphore is never closed.
        let charge = charge.map_err(|e| ClientError::Stream(e.to_string()))?;
        let id = self.session.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        {
            let mut pending = self.session.lock();
            if let Some(closed) = &pending.closed {
                return Err(closed.error());
            }
            let waiting = Waiting {
                answer,
                _charge: None,
            };
            pending.waiting.insert(id, waiting);
        }
        let _forget = Forget {
            session: &self.session,
            id,
        };
        let queued = Outgoing {
            id,
            request,
            charge,
        };
        if self.outgoing.send(queued).is_err() {
            return Err(ClientError::Stream("the session writer ended".to_string()));
        }
        match answered.await {
            Ok(answer) => answer,
            // Closing drains every waiting request with an error first: not reached, but
            // an answer channel dropped without one is a lost session all the same.
            Err(_) => Err(ClientError::Stream("the session ended".to_string())),
        }
    }

    /// The underlying QUIC connection (already greeted), for tools that open streams of
    /// their own.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Closes the connection and waits (bounded) for the close to reach the node.
    pub async fn close(self) {
        self.connection
            .close(wire::CLOSE_SHUTDOWN.into(), b"client done");
        let wait = Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS);
        let _ = tokio::time::timeout(wait, self.endpoint.wait_idle()).await;
    }
}

impl Drop for ClientConn {
    /// The session's tasks end with the connection; abort them now rather than leave them to
    /// a connection that may linger until its idle timeout.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
