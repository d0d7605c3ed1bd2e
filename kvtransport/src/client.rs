//! The dialing side: the hello round trip every connection starts with, and `ClientConn`, a
//! client's connection to one node carrying one bidirectional stream per request.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::codec::{self, CodecError};
use super::tls::{TlsError, TlsMaterial};
use super::wire::{self, Hello, HelloReply};
use super::{TransportError, TransportLimits};

/// How long `ClientConn::connect` waits for the handshake and the hello round trip.
pub const CLIENT_CONNECT_TIMEOUT_MS: u64 = 5_000;

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

/// A client's connection to one node. `request` may be called from many tasks at once; each
/// request is a bidirectional stream of its own.
///
/// Requests wait (within their timeout) for room in `client_inflight_bytes_per_connection_max`
/// before they are sent, a budget released when their answer arrives. The node keeps the same
/// budget per connection for bytes it has not yet decoded and refuses, unread, a request over
/// it (`wire::STREAM_BUSY`); since the node releases its charge before it answers, a client
/// that keeps its own budget never reaches the node's.
pub struct ClientConn {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    response_bytes_max: u32,
    request_bytes_max: u32,
    inflight: Arc<Semaphore>,
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
        // Validated: at least the largest request, at most `Semaphore::MAX_PERMITS`.
        let inflight = usize::try_from(limits.client_inflight_bytes_per_connection_max)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Ok(ClientConn {
            endpoint,
            connection,
            response_bytes_max: limits.client_response_bytes_max,
            request_bytes_max: limits.client_request_bytes_max,
            inflight: Arc::new(Semaphore::new(inflight)),
        })
    }

    /// Sends one request and waits up to `timeout` for its response. On `Timeout` the
    /// request's outcome is unknown.
    pub async fn request(&self, request: Bytes, timeout: Duration) -> Result<Bytes, ClientError> {
        if request.len() as u64 > u64::from(self.request_bytes_max) {
            return Err(ClientError::TooLarge);
        }
        let exchange = self.exchange(request);
        let response = tokio::time::timeout(timeout, exchange).await;
        let response = response.map_err(|_| ClientError::Timeout)?;
        match response {
            Err(ClientError::Rejected { code }) if code == u64::from(wire::STREAM_TOO_LARGE) => {
                Err(ClientError::TooLarge)
            }
            other => other,
        }
    }

    async fn exchange(&self, request: Bytes) -> Result<Bytes, ClientError> {
        // `request` checked its length against `request_bytes_max` (a u32).
        let charge = self.inflight.acquire_many(request.len() as u32).await;
        // The semaphore is never closed.
        let _charge = charge.map_err(|e| ClientError::Stream(e.to_string()))?;
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(connection_error)?;
        let header = (request.len() as u32).to_le_bytes();
        let tag = [wire::STREAM_TAG_CLIENT];
        let mut chunks = [
            Bytes::copy_from_slice(&tag),
            Bytes::copy_from_slice(&header),
            request,
        ];
        send.write_all_chunks(&mut chunks).await?;
        send.finish()
            .map_err(|e| ClientError::Stream(e.to_string()))?;
        match codec::read_raw_frame(&mut recv, self.response_bytes_max).await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(ClientError::Codec(CodecError::Truncated)),
            Err(CodecError::Oversize { .. }) => Err(ClientError::TooLarge),
            Err(e) => Err(codec_error(e)),
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
