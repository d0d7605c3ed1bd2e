//! Operations, values and results.
//!
//! An `Op` is either one operation on one key (`KeyOp`) or a transaction of such operations.
//! Transactions cannot nest, and that is enforced by the types rather than by validation: a
//! recursive type would let a few MiB of untrusted bytes encode a nesting deep enough to overflow
//! the decoder's stack.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::limits::{
    KEY_BYTES_MAX, LIST_ELEMENTS_MAX, OP_PAYLOAD_BYTES_MAX, TXN_OPS_MAX, VALUE_BYTES_MAX,
};

/// A stored value. A key holds either plain bytes (`put`, `cas`) or a list (`append`).
///
/// Encoding (bincode 2, standard config, through serde): variant index as a varint (0 = Bytes,
/// 1 = List), then for `Bytes` a varint length and the bytes, for `List` a varint element count
/// and each element as a varint length and its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Bytes(Bytes),
    List(Vec<Bytes>),
}

impl Value {
    /// The payload bytes: the length of `Bytes`, the sum of element lengths of a `List`.
    /// This is what `VALUE_BYTES_MAX` bounds.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Value::Bytes(bytes) => bytes.len(),
            Value::List(elements) => elements.iter().map(Bytes::len).sum(),
        }
    }

    /// An upper bound of this value's encoded size (16 bytes of framing per element are more
    /// than bincode's varint length prefix and tag).
    pub fn size_bytes(&self) -> usize {
        match self {
            Value::Bytes(bytes) => 16 + bytes.len(),
            Value::List(elements) => 16 + elements.iter().map(|e| 16 + e.len()).sum::<usize>(),
        }
    }

    /// Whether a value (from a snapshot, say) is within the limits an append or put keeps.
    pub fn within_limits(&self) -> bool {
        let elements_ok = match self {
            Value::Bytes(_) => true,
            Value::List(elements) => elements.len() <= LIST_ELEMENTS_MAX,
        };
        elements_ok && self.payload_bytes() <= VALUE_BYTES_MAX
    }
}

/// One operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyOp {
    /// Read the value of `key`.
    Get { key: Bytes },
    /// Set `key` to plain bytes, replacing any value (a list too).
    Put { key: Bytes, value: Bytes },
    /// Remove `key`.
    Delete { key: Bytes },
    /// Set `key` to `new` if its value is now `Value::Bytes(expected)`, or if it is absent and
    /// `expected` is `None`. A list value never matches.
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    },
    /// Add `element` at the end of the list at `key`; an absent key becomes a one-element list.
    /// Fails (`OpFailure::WrongType`) if `key` holds plain bytes.
    Append { key: Bytes, element: Bytes },
}

/// What a client asks the state machine to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// One operation.
    Key(KeyOp),
    /// Operations applied in order, atomically, as one log entry: all or nothing. Each read sees
    /// the writes before it in the same transaction. If any operation fails (a `cas` that does
    /// not match, an `append` that fails, results over `RESULT_BYTES_MAX`) the transaction
    /// aborts with no effect; see `OpResult::Txn`.
    Txn(Vec<KeyOp>),
}

/// Why an operation had no effect. Deterministic: every replica reaches the same failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpFailure {
    /// `append` to a key holding plain bytes.
    WrongType,
    /// `append` to a list that already has `LIST_ELEMENTS_MAX` elements, or whose bytes would
    /// exceed `VALUE_BYTES_MAX`.
    ListFull { elements: u64, bytes: u64 },
    /// The results of a transaction would exceed `RESULT_BYTES_MAX`.
    ResultTooLarge { bytes: u64, max: u64 },
}

/// The result of one `KeyOp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyResult {
    Get {
        value: Option<Value>,
    },
    /// `existed`: the key had a value before.
    Put {
        existed: bool,
    },
    /// `existed`: the key had a value (so the delete removed something).
    Delete {
        existed: bool,
    },
    /// `current`: the value found when the cas ran, before any change (on success it equals
    /// `expected`; on failure it is what the client should compare next).
    Cas {
        succeeded: bool,
        current: Option<Value>,
    },
    /// `length`: the list's number of elements after the append.
    Append {
        length: u64,
    },
    Failed(OpFailure),
}

/// The result of an `Op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Key(KeyResult),
    /// `committed`: the transaction took effect. If true, `results` has one entry per
    /// operation. If false, nothing changed and `results` ends with the operation that failed
    /// (a `Cas { succeeded: false }` or a `Failed`); the results before it describe the
    /// aborted attempt and must not be taken as observed state.
    Txn {
        committed: bool,
        results: Vec<KeyResult>,
    },
}

/// Why an operation is refused before it is proposed (and, deterministically, at apply time).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("{what} is {bytes} bytes or items, the limit is {max}")]
    TooLarge {
        what: &'static str,
        bytes: u64,
        max: u64,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl std::fmt::Display for OpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpFailure::WrongType => write!(f, "the key holds plain bytes, not a list"),
            OpFailure::ListFull { elements, bytes } => {
                write!(f, "the list is full ({elements} elements, {bytes} bytes)")
            }
            OpFailure::ResultTooLarge { bytes, max } => {
                write!(f, "the results would be {bytes} bytes, the limit is {max}")
            }
        }
    }
}

impl KeyResult {
    /// The operation this answers, as users name it (`get`, `put`, `delete`, `cas`, `append`),
    /// or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            KeyResult::Get { .. } => "get",
            KeyResult::Put { .. } => "put",
            KeyResult::Delete { .. } => "delete",
            KeyResult::Cas { .. } => "cas",
            KeyResult::Append { .. } => "append",
            KeyResult::Failed(_) => "failed",
        }
    }
}

impl KeyOp {
    pub fn key(&self) -> &Bytes {
        match self {
            KeyOp::Get { key }
            | KeyOp::Put { key, .. }
            | KeyOp::Delete { key }
            | KeyOp::Cas { key, .. }
            | KeyOp::Append { key, .. } => key,
        }
    }

    pub fn is_read_only(&self) -> bool {
        matches!(self, KeyOp::Get { .. })
    }

    /// Key and value bytes this operation carries.
    pub fn payload_bytes(&self) -> usize {
        let values = match self {
            KeyOp::Get { .. } | KeyOp::Delete { .. } => 0,
            KeyOp::Put { value, .. } => value.len(),
            KeyOp::Cas { expected, new, .. } => expected.as_ref().map_or(0, Bytes::len) + new.len(),
            KeyOp::Append { element, .. } => element.len(),
        };
        self.key().len() + values
    }

    /// Checks the per-field limits.
    pub fn validate(&self) -> Result<(), OpError> {
        check_size("key", self.key().len(), KEY_BYTES_MAX)?;
        if self.key().is_empty() {
            return Err(OpError::BadRequest("the key is empty".to_string()));
        }
        match self {
            KeyOp::Get { .. } | KeyOp::Delete { .. } => Ok(()),
            KeyOp::Put { value, .. } => check_size("value", value.len(), VALUE_BYTES_MAX),
            KeyOp::Cas { expected, new, .. } => {
                let expected_bytes = expected.as_ref().map_or(0, Bytes::len);
                check_size("cas expected value", expected_bytes, VALUE_BYTES_MAX)?;
                check_size("cas new value", new.len(), VALUE_BYTES_MAX)
            }
            KeyOp::Append { element, .. } => {
                check_size("list element", element.len(), VALUE_BYTES_MAX)
            }
        }
    }
}

impl Op {
    pub fn get(key: impl Into<Bytes>) -> Op {
        Op::Key(KeyOp::Get { key: key.into() })
    }

    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Op {
        Op::Key(KeyOp::Put {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn delete(key: impl Into<Bytes>) -> Op {
        Op::Key(KeyOp::Delete { key: key.into() })
    }

    pub fn cas(key: impl Into<Bytes>, expected: Option<Bytes>, new: impl Into<Bytes>) -> Op {
        Op::Key(KeyOp::Cas {
            key: key.into(),
            expected,
            new: new.into(),
        })
    }

    pub fn append(key: impl Into<Bytes>, element: impl Into<Bytes>) -> Op {
        Op::Key(KeyOp::Append {
            key: key.into(),
            element: element.into(),
        })
    }

    /// The operations, one for `Key`, all for `Txn`.
    pub fn key_ops(&self) -> &[KeyOp] {
        match self {
            Op::Key(op) => std::slice::from_ref(op),
            Op::Txn(ops) => ops,
        }
    }

    /// Only reads: may be served without a log entry (ReadIndex or stale).
    pub fn is_read_only(&self) -> bool {
        self.key_ops().iter().all(KeyOp::is_read_only)
    }

    /// Checks every limit: each operation's fields, the transaction's length, the total payload.
    /// An empty transaction is a bad request.
    pub fn validate(&self) -> Result<(), OpError> {
        if let Op::Txn(ops) = self {
            if ops.is_empty() {
                return Err(OpError::BadRequest("the transaction is empty".to_string()));
            }
            check_size("transaction operations", ops.len(), TXN_OPS_MAX)?;
        }
        let mut payload_bytes = 0;
        for op in self.key_ops() {
            op.validate()?;
            payload_bytes += op.payload_bytes();
        }
        check_size("operation payload", payload_bytes, OP_PAYLOAD_BYTES_MAX)
    }
}

impl KeyResult {
    /// An upper bound of the encoded size, for `RESULT_BYTES_MAX` and the session cache bound.
    pub fn size_bytes(&self) -> usize {
        let value_bytes = match self {
            KeyResult::Get { value } | KeyResult::Cas { current: value, .. } => {
                value.as_ref().map_or(0, Value::size_bytes)
            }
            _ => 0,
        };
        32 + value_bytes
    }
}

impl OpResult {
    /// An upper bound of the encoded size.
    pub fn size_bytes(&self) -> usize {
        match self {
            OpResult::Key(result) => result.size_bytes(),
            OpResult::Txn { results, .. } => {
                16 + results.iter().map(KeyResult::size_bytes).sum::<usize>()
            }
        }
    }
}

fn check_size(what: &'static str, bytes: usize, max: usize) -> Result<(), OpError> {
    if bytes > max {
        return Err(OpError::TooLarge {
            what,
            bytes: bytes as u64,
            max: max as u64,
        });
    }
    Ok(())
}
