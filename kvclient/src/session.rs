//! `Session`: one exactly-once request stream (`client_id`, `seq`) with typed helpers.

use bytes::Bytes;

use super::{Client, ClientError};
use kvstate::client_proto::{ClientRequest, RequestKind};
use kvstate::{KeyOp, KeyResult, Op, OpError, OpResult, Value};

/// How a read-only operation is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// By the leader after a ReadIndex round: sees every write acknowledged before it started.
    Linearizable,
    /// By any node from its local state: fast, possibly old. Sessions spread these over the
    /// nodes by their `client_id`.
    Stale,
}

/// One session: operations run one at a time (`&mut self`), as the protocol requires of a
/// `client_id`. Use one session per concurrent worker.
pub struct Session {
    client: Client,
    client_id: u64,
    /// The last write's sequence number (0 before the first).
    seq: u64,
}

/// The outcome of a `cas`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    pub succeeded: bool,
    /// The value found before the cas ran.
    pub current: Option<Value>,
}

impl From<OpError> for ClientError {
    fn from(error: OpError) -> ClientError {
        match error {
            OpError::TooLarge { what, bytes, max } => ClientError::TooLarge {
                what: what.to_string(),
                bytes,
                max,
            },
            OpError::BadRequest(reason) => ClientError::BadRequest(reason),
        }
    }
}

impl Session {
    pub(super) fn new(client: Client, client_id: u64) -> Session {
        Session {
            client,
            client_id,
            seq: 0,
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `op`. A read-only op (gets only) is a read served as `mode` says; any other op is
    /// a write under the next `seq`, retried with that same `seq` until answered. On
    /// `ClientError::Timeout` the write's outcome is unknown; see `ClientError::is_definite`.
    pub async fn execute(&mut self, op: Op, mode: ReadMode) -> Result<OpResult, ClientError> {
        op.validate()?;
        if op.is_read_only() {
            let stale = mode == ReadMode::Stale;
            let request = ClientRequest {
                client_id: self.client_id,
                seq: self.seq,
                kind: RequestKind::Read { op, stale },
            };
            let frame = self.client.encode(&request)?;
            let start = stale.then(|| self.stale_node());
            return self.client.call(frame, start, !stale).await;
        }
        self.seq += 1;
        let request = ClientRequest {
            client_id: self.client_id,
            seq: self.seq,
            kind: RequestKind::Write { op },
        };
        let frame = self.client.encode(&request)?;
        self.client.call(frame, None, true).await
    }

    /// The value at `key` (`None` if absent).
    pub async fn get(
        &mut self,
        key: impl Into<Bytes>,
        mode: ReadMode,
    ) -> Result<Option<Value>, ClientError> {
        match self.key_op(Op::get(key), mode).await? {
            KeyResult::Get { value } => Ok(value),
            other => Err(unexpected("get", &other)),
        }
    }

    /// Sets `key`; returns whether it had a value before.
    pub async fn put(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<bool, ClientError> {
        match self.write(Op::put(key, value)).await? {
            KeyResult::Put { existed } => Ok(existed),
            other => Err(unexpected("put", &other)),
        }
    }

    /// Removes `key`; returns whether it had a value.
    pub async fn delete(&mut self, key: impl Into<Bytes>) -> Result<bool, ClientError> {
        match self.write(Op::delete(key)).await? {
            KeyResult::Delete { existed } => Ok(existed),
            other => Err(unexpected("delete", &other)),
        }
    }

    /// Sets `key` to `new` if it holds `expected` (`None`: if it is absent).
    pub async fn cas(
        &mut self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: impl Into<Bytes>,
    ) -> Result<CasOutcome, ClientError> {
        match self.write(Op::cas(key, expected, new)).await? {
            KeyResult::Cas { succeeded, current } => Ok(CasOutcome { succeeded, current }),
            other => Err(unexpected("cas", &other)),
        }
    }

    /// Appends `element` to the list at `key`; returns the list's new length. An append to a
    /// key holding plain bytes is answered `KeyResult::Failed`, reported as `BadRequest`.
    pub async fn append(
        &mut self,
        key: impl Into<Bytes>,
        element: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        match self.write(Op::append(key, element)).await? {
            KeyResult::Append { length } => Ok(length),
            KeyResult::Failed(failure) => Err(ClientError::BadRequest(failure.to_string())),
            other => Err(unexpected("append", &other)),
        }
    }

    /// Runs `ops` as one transaction; returns `(committed, results)` as in `OpResult::Txn`.
    pub async fn txn(
        &mut self,
        ops: Vec<KeyOp>,
        mode: ReadMode,
    ) -> Result<(bool, Vec<KeyResult>), ClientError> {
        match self.execute(Op::Txn(ops), mode).await? {
            OpResult::Txn { committed, results } => Ok((committed, results)),
            OpResult::Key(other) => Err(unexpected("txn", &other)),
        }
    }

    async fn write(&mut self, op: Op) -> Result<KeyResult, ClientError> {
        self.key_op(op, ReadMode::Linearizable).await
    }

    async fn key_op(&mut self, op: Op, mode: ReadMode) -> Result<KeyResult, ClientError> {
        match self.execute(op, mode).await? {
            OpResult::Key(result) => Ok(result),
            OpResult::Txn { .. } => Err(ClientError::Protocol(
                "a single operation was answered with a transaction result".into(),
            )),
        }
    }

    fn stale_node(&self) -> kvstate::NodeId {
        let nodes = self.client.node_ids();
        nodes[(self.client_id % nodes.len() as u64) as usize]
    }
}

fn unexpected(what: &str, result: &KeyResult) -> ClientError {
    let answer = result.name();
    ClientError::Protocol(format!("{what} was answered with the result of {answer}"))
}
