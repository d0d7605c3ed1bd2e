//! The payload of a Raft log entry: one client operation under its session.
//!
//! Layout: one format-version byte (`COMMAND_FORMAT_VERSION`), then `Command` in bincode 2
//! (standard config: varints, little endian) through serde. The version byte lets a later format
//! be told apart from garbage without guessing.

use serde::{Deserialize, Serialize};

use super::limits::{COMMAND_BYTES_MAX, OWNER_BYTES_MAX};
use super::ops::{Op, OpError};

/// The first byte of every encoded command.
pub const COMMAND_FORMAT_VERSION: u8 = 2;

/// One client operation as it is stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Who may use the session: the name in the TLS certificate of the connection that sent the
    /// request, filled in by the node, never taken from the client's bytes. Sessions are keyed
    /// by `(owner, client_id)`, so no client can touch another identity's session.
    pub owner: String,
    /// The client's session; chosen at random by the client (see `proto-docs/client.md`).
    pub client_id: u64,
    /// The client's request number; grows by at least one per new request.
    pub seq: u64,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command is empty")]
    Empty,
    #[error("command format version {0} is unknown (expected {COMMAND_FORMAT_VERSION})")]
    Version(u8),
    #[error("command is {bytes} bytes, the limit is {max}")]
    TooLarge { bytes: u64, max: u64 },
    #[error("command encode failed: {0}")]
    Encode(String),
    #[error("command decode failed: {0}")]
    Decode(String),
    #[error("command has {0} bytes after its end")]
    TrailingBytes(usize),
    #[error("command is invalid: {0}")]
    Invalid(#[from] OpError),
    #[error("session owner is {bytes} bytes, the limit is {OWNER_BYTES_MAX}")]
    OwnerTooLong { bytes: usize },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<COMMAND_BYTES_MAX>()
}

impl Command {
    /// Validates the operation and encodes. Fails with `TooLarge` above `COMMAND_BYTES_MAX`.
    pub fn encode(&self) -> Result<Vec<u8>, CommandError> {
        self.op.validate()?;
        check_owner(&self.owner)?;
        // Sized first, so the buffer is allocated once at its exact size: it becomes the log
        // entry's data, held in memory until the next snapshot (a growing `Vec` would end at
        // twice the size in the worst case: 512 bytes for a 300-byte put).
        let encode_error =
            |error: bincode::error::EncodeError| CommandError::Encode(error.to_string());
        let mut size = bincode::enc::write::SizeWriter::default();
        bincode::serde::encode_into_writer(self, &mut size, bincode::config::standard())
            .map_err(encode_error)?;
        let mut out = Vec::with_capacity(1 + size.bytes_written);
        out.push(COMMAND_FORMAT_VERSION);
        bincode::serde::encode_into_std_write(self, &mut out, bincode::config::standard())
            .map_err(encode_error)?;
        if out.len() > COMMAND_BYTES_MAX {
            return Err(CommandError::TooLarge {
                bytes: out.len() as u64,
                max: COMMAND_BYTES_MAX as u64,
            });
        }
        Ok(out)
    }

    /// Decodes untrusted bytes: never panics and never allocates beyond `COMMAND_BYTES_MAX`.
    /// The operation is validated too, so a decoded command is always within the limits.
    pub fn decode(data: &[u8]) -> Result<Command, CommandError> {
        let command = Command::decode_unvalidated(data)?;
        command.op.validate()?;
        Ok(command)
    }

    /// Decodes without `Op::validate`, so that the state machine can still name the client of
    /// a well-formed but invalid command. Same safety as `decode`.
    pub(crate) fn decode_unvalidated(data: &[u8]) -> Result<Command, CommandError> {
        let (version, body) = data.split_first().ok_or(CommandError::Empty)?;
        if *version != COMMAND_FORMAT_VERSION {
            return Err(CommandError::Version(*version));
        }
        if data.len() > COMMAND_BYTES_MAX {
            return Err(CommandError::TooLarge {
                bytes: data.len() as u64,
                max: COMMAND_BYTES_MAX as u64,
            });
        }
        let (command, used): (Command, usize) =
            bincode::serde::decode_from_slice(body, bincode_config())
                .map_err(|error| CommandError::Decode(error.to_string()))?;
        if used != body.len() {
            return Err(CommandError::TrailingBytes(body.len() - used));
        }
        check_owner(&command.owner)?;
        Ok(command)
    }
}

fn check_owner(owner: &str) -> Result<(), CommandError> {
    if owner.len() > OWNER_BYTES_MAX {
        return Err(CommandError::OwnerTooLong { bytes: owner.len() });
    }
    Ok(())
}
