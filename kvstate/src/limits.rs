//! Every size limit of the state machine and the client protocol.
//!
//! These are constants, not configuration, on purpose: the state machine's behaviour depends on
//! them (an append to a full list fails, a session is evicted), so two replicas configured
//! differently would diverge. Changing one is a protocol change.

/// Largest key, in bytes. Keys are kept in memory twice (map and undo log), so they stay small.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value, in bytes. For a list value this bounds the sum of its elements' bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most elements in a list value. An append to a full list fails (`OpFailure::ListFull`);
/// an append costs O(elements) to check the byte bound, so this also bounds that cost.
pub const LIST_ELEMENTS_MAX: usize = 16 * 1024;
/// Most operations in one transaction.
pub const TXN_OPS_MAX: usize = 64;
/// Most key and value bytes one operation (or transaction) may carry. Keeps one log entry, and
/// so one Raft append message, to a few MiB.
pub const OP_PAYLOAD_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Largest encoded command (a log entry's payload). Above `OP_PAYLOAD_BYTES_MAX` by the
/// framing of up to `TXN_OPS_MAX` operations; also the decode limit for log entries.
pub const COMMAND_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest result of one operation, by `OpResult::size_bytes` (an upper bound of its encoding).
/// A transaction whose reads would exceed it aborts with `OpFailure::ResultTooLarge`.
pub const RESULT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most client sessions kept. Beyond it the session used least recently (by log index) is
/// evicted; see `proto-docs/client.md` "Sessions".
pub const SESSIONS_MAX: usize = 4096;
/// Bytes of a session owner: the name in the client's TLS certificate (`proto-docs/client.md`).
pub const OWNER_BYTES_MAX: usize = 255;
/// Most bytes of cached results over all sessions (by `OpResult::size_bytes`). Beyond it the
/// least recently used sessions are evicted too, but never the session just written.
pub const SESSIONS_RESULT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest client request or response frame. Above both `COMMAND_BYTES_MAX` and
/// `RESULT_BYTES_MAX` plus framing, so any valid request and any result fits.
pub const CLIENT_FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Decode limit of one snapshot record (one key/value pair or one session).
pub const SNAPSHOT_RECORD_BYTES_MAX: usize = 8 * 1024 * 1024;

// The relations the comments above promise.
const _: () = assert!(OP_PAYLOAD_BYTES_MAX >= KEY_BYTES_MAX + VALUE_BYTES_MAX);
const _: () = assert!(COMMAND_BYTES_MAX >= OP_PAYLOAD_BYTES_MAX + TXN_OPS_MAX * 64);
const _: () = assert!(CLIENT_FRAME_BYTES_MAX >= COMMAND_BYTES_MAX + 1024);
const _: () = assert!(CLIENT_FRAME_BYTES_MAX >= RESULT_BYTES_MAX + 1024);
const _: () = assert!(SNAPSHOT_RECORD_BYTES_MAX >= RESULT_BYTES_MAX + 1024);
const _: () = assert!(SNAPSHOT_RECORD_BYTES_MAX >= KEY_BYTES_MAX + VALUE_BYTES_MAX * 2);
