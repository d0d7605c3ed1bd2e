//! What travels on each QUIC stream (see `proto-docs/transport.md` once written).
//!
//! Every stream a peer opens starts with one tag byte naming its kind, then frames
//! (`codec.rs`: u32 LE length + payload):
//!
//! ```text
//! bi  HELLO     -> Hello            <- HelloReply          (first stream of every connection)
//! uni RAFT      -> Message Message Message ...             (node -> node, long-lived)
//! bi  SNAPSHOT  -> SnapshotHeader, raw file bytes          <- SnapshotAck
//! bi  CLIENT    -> raw request frame                       <- raw response frame
//! bi  SESSION   -> [id][len][request] ...                  <- [id][code][len][response] ...
//! ```
//!
//! `ClientConn` uses one SESSION stream per connection (`session.rs`); a CLIENT stream per
//! request stays for simple tools.
//!
//! A refused connection is closed with `CLOSE_REFUSED` and a reason; a refused stream is reset
//! (and stopped) with one of the `STREAM_*` codes.

use serde::{Deserialize, Serialize};

use kvraft::message::{NodeId, SnapshotMeta};

/// Bumped on any incompatible change of the frames below.
pub const PROTOCOL_VERSION: u32 = 1;

/// Stream kind tags: the first byte of every stream.
pub const STREAM_TAG_HELLO: u8 = 1;
pub const STREAM_TAG_RAFT: u8 = 2;
pub const STREAM_TAG_SNAPSHOT: u8 = 3;
pub const STREAM_TAG_CLIENT: u8 = 4;
pub const STREAM_TAG_SESSION: u8 = 5;

/// Hello and hello-reply frames are tiny; anything longer is refused before allocation.
pub const HELLO_BYTES_MAX: u32 = 64 << 10;

/// Connection close codes.
pub const CLOSE_SHUTDOWN: u32 = 0;
pub const CLOSE_REFUSED: u32 = 1;
/// Stream reset / stop codes.
pub const STREAM_MALFORMED: u32 = 2;
pub const STREAM_TOO_LARGE: u32 = 3;
/// The node accepted the request but dropped it without answering (shutting down, overloaded).
pub const STREAM_UNAVAILABLE: u32 = 4;
/// The stream's kind is not allowed for this identity (e.g. a client opening a raft stream).
pub const STREAM_FORBIDDEN: u32 = 5;
/// Refused unread: the connection's client request bytes in flight are at their limit
/// (`client_inflight_bytes_per_connection_max`). Nothing was executed; retrying later is safe.
pub const STREAM_BUSY: u32 = 6;

/// The first frame of every connection. The identity itself comes from the certificate; the
/// hello states which identity the dialer means to act as, so that a node presenting another
/// node's certificate is refused, and gives the dialer a round trip that proves it was accepted
/// (TLS 1.3 client authentication failures only show on the first read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// `Some` when the dialer is a node of the cluster and will open a raft stream.
    pub node: Option<HelloNode>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloNode {
    pub id: NodeId,
    pub name: String,
    /// Differs between two runs of the node's process (a restart). A node whose peer reports a
    /// new incarnation drops its own connection to that peer at once instead of writing into a
    /// dead connection until the idle timeout.
    pub incarnation: u64,
}

/// This process's incarnation: the start time in nanoseconds mixed with the pid, never 0.
pub fn incarnation() -> u64 {
    static INCARNATION: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INCARNATION.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        (nanos ^ (u64::from(std::process::id()) << 40)) | 1
    })
}

impl Hello {
    pub fn client() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            node: None,
        }
    }

    pub fn node(id: NodeId, name: &str) -> Hello {
        let node = Some(HelloNode {
            id,
            name: name.to_string(),
            incarnation: incarnation(),
        });
        Hello {
            version: PROTOCOL_VERSION,
            node,
        }
    }
}

/// The answer to a `Hello`. A refusal closes the connection instead (with the reason).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u32,
    /// The accepting node's name.
    pub name: String,
}

/// Sent before the snapshot file's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta,
    /// The exact number of file bytes that follow the header.
    pub total_bytes: u64,
    /// CRC32 (crc32fast, IEEE) of the whole file.
    pub crc32: u32,
}

/// The receiver's answer once the file is on its disk (fsynced, length and CRC checked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAck {
    pub ok: bool,
    pub reason: String,
}
