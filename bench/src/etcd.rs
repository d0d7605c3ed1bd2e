//! etcd as a second target (`--target etcd`, feature `etcd`): the same workloads, sent through
//! etcd's gRPC client, answered in our own `OpResult`s so that histories, figures and the
//! checker treat both targets alike.
//!
//! Mapping: `get` is a Range (serializable with `--read-mode stale`, linearizable otherwise);
//! `put` a Put; `cas` a transaction comparing the key's value (or, for an absent expected
//! value, its create revision with 0) that puts on success and reads the key on failure.
//! Appends and multi-key transactions (list-append) have no one-request equivalent in etcd
//! and are refused before the run starts.
//!
//! Errors: a write whose answer did not arrive (transport error, deadline, `Unavailable`)
//! may have been applied: `Timeout` (history `info`); a read that failed, and anything etcd
//! refused as invalid, did not change state: `Unavailable` or `BadRequest` (history `fail`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use kvclient::{ClientError, ReadMode};
use kvstate::{KeyOp, KeyResult, Op, OpResult, Value};

/// How long connecting to the endpoints may take.
const ETCD_CONNECT_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot connect to etcd at {endpoints}: {message}")]
    Connect { endpoints: String, message: String },
    #[error(
        "etcd at {endpoints} did not answer a linearizable read within {within_ms} ms: {last}"
    )]
    NotReady {
        endpoints: String,
        within_ms: u128,
        last: String,
    },
}

/// Connections to one etcd cluster; sessions take them in turn.
pub struct EtcdTarget {
    endpoints: String,
    clients: Vec<KvClient>,
    next: AtomicUsize,
    request_timeout: Duration,
}

impl EtcdTarget {
    /// Opens `conns` channels to `endpoints` (`host:port`, plain gRPC).
    pub async fn connect(
        endpoints: &[String],
        conns: usize,
        request_timeout: Duration,
    ) -> Result<EtcdTarget, EtcdError> {
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(ETCD_CONNECT_TIMEOUT_MS))
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(conns);
        for _ in 0..conns.max(1) {
            let client = etcd_client::Client::connect(&urls, Some(options.clone()))
                .await
                .map_err(|error| EtcdError::Connect {
                    endpoints: endpoints.join(","),
                    message: error.to_string(),
                })?;
            clients.push(client.kv_client());
        }
        Ok(EtcdTarget {
            endpoints: endpoints.join(","),
            clients,
            next: AtomicUsize::new(0),
            request_timeout,
        })
    }

    /// A session on the next connection.
    pub fn session(&self) -> EtcdSession {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        EtcdSession {
            kv: self.clients[index].clone(),
            request_timeout: self.request_timeout,
        }
    }

    /// Waits until a linearizable read is answered (the cluster has a leader).
    pub async fn wait_ready(&self, within: Duration) -> Result<(), EtcdError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut session = self.session();
        loop {
            let probe = Op::Key(KeyOp::Get {
                key: Bytes::from_static(b"bench-ready"),
            });
            match session.execute(probe, ReadMode::Linearizable).await {
                Ok(_) => return Ok(()),
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(EtcdError::NotReady {
                        endpoints: self.endpoints.clone(),
                        within_ms: within.as_millis(),
                        last: error.to_string(),
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// One client's view of etcd (etcd has no sessions: retries are the caller's).
pub struct EtcdSession {
    kv: KvClient,
    request_timeout: Duration,
}

impl EtcdSession {
    /// Sends `op` once and maps the answer.
    pub async fn execute(&mut self, op: Op, mode: ReadMode) -> Result<OpResult, ClientError> {
        let key_op = match op {
            Op::Key(key_op) => key_op,
            Op::Txn(_) => {
                return Err(ClientError::BadRequest(
                    "etcd target: multi-key transactions are not supported".into(),
                ))
            }
        };
        let write = !matches!(key_op, KeyOp::Get { .. });
        let timeout = self.request_timeout;
        match tokio::time::timeout(timeout, self.send(key_op, mode)).await {
            Ok(Ok(result)) => Ok(OpResult::Key(result)),
            Ok(Err(error)) => Err(map_error(&error, write)),
            Err(_) if write => Err(ClientError::Timeout {
                attempts: 1,
                last: format!("no answer from etcd within {} ms", timeout.as_millis()),
            }),
            Err(_) => Err(ClientError::Unavailable {
                attempts: 1,
                last: format!("no answer from etcd within {} ms", timeout.as_millis()),
            }),
        }
    }

    async fn send(&mut self, op: KeyOp, mode: ReadMode) -> Result<KeyResult, etcd_client::Error> {
        match op {
            KeyOp::Get { key } => {
                let options = match mode {
                    ReadMode::Stale => Some(GetOptions::new().with_serializable()),
                    ReadMode::Linearizable => None,
                };
                let response = self.kv.get(key.to_vec(), options).await?;
                Ok(KeyResult::Get {
                    value: first_value(response.kvs()),
                })
            }
            KeyOp::Put { key, value } => {
                self.kv.put(key.to_vec(), value.to_vec(), None).await?;
                // etcd does not say whether the key existed without prev_kv (a cost we do
                // not ask it to pay); nothing in the workloads reads this.
                Ok(KeyResult::Put { existed: false })
            }
            KeyOp::Cas { key, expected, new } => {
                let compare = match &expected {
                    Some(value) => Compare::value(key.to_vec(), CompareOp::Equal, value.to_vec()),
                    None => Compare::create_revision(key.to_vec(), CompareOp::Equal, 0),
                };
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.to_vec(), new.to_vec(), None)])
                    .or_else([TxnOp::get(key.to_vec(), None)]);
                let response = self.kv.txn(txn).await?;
                if response.succeeded() {
                    return Ok(KeyResult::Cas {
                        succeeded: true,
                        current: expected.map(Value::Bytes),
                    });
                }
                let current = response.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(get) => Some(first_value(get.kvs())),
                    _ => None,
                });
                Ok(KeyResult::Cas {
                    succeeded: false,
                    current: current.flatten(),
                })
            }
            KeyOp::Delete { .. } | KeyOp::Append { .. } => Err(etcd_client::Error::InvalidArgs(
                "etcd target: only get, put and cas are supported".into(),
            )),
        }
    }
}

fn first_value(kvs: &[etcd_client::KeyValue]) -> Option<Value> {
    kvs.first()
        .map(|kv| Value::Bytes(Bytes::copy_from_slice(kv.value())))
}

/// A failed request: definite for reads and for what etcd refused as invalid; unknown for a
/// write that may have reached the leader.
fn map_error(error: &etcd_client::Error, write: bool) -> ClientError {
    use etcd_client::Error;
    // tonic's Display of a status ends with its source's Debug form: keep code and message.
    let last = match error {
        Error::GRpcStatus(status) => {
            format!("{}: {}", status.code().description(), status.message())
        }
        other => other.to_string(),
    };
    let invalid = match error {
        Error::InvalidArgs(_) => true,
        Error::GRpcStatus(status) => matches!(
            i32::from(status.code()),
            GRPC_INVALID_ARGUMENT | GRPC_OUT_OF_RANGE
        ),
        _ => false,
    };
    if invalid {
        ClientError::BadRequest(last)
    } else if write {
        ClientError::Timeout { attempts: 1, last }
    } else {
        ClientError::Unavailable { attempts: 1, last }
    }
}

/// gRPC status codes (grpc/status.proto) of requests refused as invalid.
const GRPC_INVALID_ARGUMENT: i32 = 3;
const GRPC_OUT_OF_RANGE: i32 = 11;
