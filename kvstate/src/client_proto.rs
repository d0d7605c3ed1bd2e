//! The client wire protocol: one `ClientRequest` and one `ClientResponse` per QUIC stream, each
//! a frame of bincode 2 (standard config, through serde) of at most `CLIENT_FRAME_BYTES_MAX`
//! bytes. The framing on the stream (length prefix, stream finish) belongs to `transport/`; this
//! module encodes and decodes the frame bodies. See `proto-docs/client.md`.

use serde::{Deserialize, Serialize};

use super::limits::CLIENT_FRAME_BYTES_MAX;
use super::members::{is_reserved_key, MemberList, MemberOp, MEMBER_ADDRESS_BYTES_MAX};
use super::ops::{Op, OpError, OpResult};
use super::state::ApplyOutcome;
use super::{Index, NodeId, Term};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// The session; see `Command::client_id`.
    pub client_id: u64,
    /// The request number within the session; only writes consume one (see `RequestKind`).
    pub seq: u64,
    pub kind: RequestKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// A read-only `Op` (a get, or a transaction of gets), served without a log entry: by
    /// ReadIndex on the leader (linearizable), or from the node's local state if `stale` (may
    /// return old values, served by any node). `seq` is not checked for reads.
    Read { op: Op, stale: bool },
    /// Any `Op`, committed through the log under the session `(client_id, seq)`.
    Write { op: Op },
    /// The node's Raft status; needs no leader.
    Status,
    /// The configuration in force on the node, with each member's address; needs no leader
    /// (ask the leader for match indexes and an up-to-date answer).
    Members,
    /// Changes the membership (leader only). Answered with the new `MemberList` once the
    /// configuration entry is committed and applied on the leader. Not under the session:
    /// `seq` is not checked; a change retried after a timeout may fail with "already a
    /// member" / "not a member" if the first attempt took effect.
    MemberChange { op: MemberOp },
    /// Hands leadership to voter `to` (leader only). Answered once `to` leads.
    MoveLeader { to: NodeId },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRole {
    Follower,
    Candidate,
    Leader,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: NodeRole,
    pub term: Term,
    pub commit_index: Index,
    pub applied_index: Index,
    /// The leader this node knows of, if any.
    pub leader: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    Ok(OpResult),
    Status(NodeStatus),
    Err(ClientError),
    /// The answer to `Members`, `MemberChange` and `MoveLeader`.
    Members(MemberList),
}

/// Errors a client sees. Whether a retry is safe is stated per variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    /// This node is not the leader; nothing was proposed. Retry at `leader_hint` if given.
    #[error("not the leader ({})", leader_hint_text(*.leader_hint))]
    NotLeader { leader_hint: Option<NodeId> },
    /// No answer in time; the write may or may not have been applied (outcome unknown). Retry
    /// with the same `(client_id, seq)`: the session makes it apply at most once.
    #[error("timed out; the outcome is unknown")]
    Timeout,
    /// Over a limit; nothing was proposed. Do not retry unchanged.
    #[error("{what} is {bytes} bytes or items, the limit is {max}")]
    TooLarge { what: String, bytes: u64, max: u64 },
    /// Malformed or not allowed (a write inside `Read`, an empty key); do not retry unchanged.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The session has already answered a later `seq`: this request is older than the client's
    /// last one and its result is gone. A client library bug, or a very late duplicate.
    #[error("stale request: the session has answered a later sequence number")]
    Stale,
    /// The node cannot serve now (shutting down, no quorum, overloaded); nothing was applied
    /// if this is returned before proposing, see the message. Retry later or elsewhere.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This attempt's log entry was replaced by another leader's before it committed: this
    /// attempt was not applied and never will be. If no earlier attempt of the same
    /// `(client_id, seq)` may have been applied, the write definitely did not happen (Jepsen
    /// `:fail`); otherwise retry with the same `seq` to learn its outcome.
    #[error("not applied: {0}")]
    NotApplied(String),
}

/// `leader is n3` or `no leader known`.
fn leader_hint_text(hint: Option<NodeId>) -> String {
    hint.map_or("no leader known".to_string(), |leader| {
        format!("leader is n{leader}")
    })
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

impl From<ApplyOutcome> for ClientResponse {
    /// The answer to the client whose write produced `outcome`.
    fn from(outcome: ApplyOutcome) -> ClientResponse {
        match outcome {
            ApplyOutcome::Applied { result, .. } | ApplyOutcome::Duplicate { result, .. } => {
                ClientResponse::Ok(result)
            }
            ApplyOutcome::Stale { .. } => ClientResponse::Err(ClientError::Stale),
            ApplyOutcome::Rejected { error, .. } => {
                ClientResponse::Err(ClientError::BadRequest(error.to_string()))
            }
        }
    }
}

impl ClientRequest {
    /// What a node checks before serving or proposing: the limits, and that a `Read` reads only.
    pub fn validate(&self) -> Result<(), ClientError> {
        match &self.kind {
            RequestKind::Read { op, .. } => {
                op.validate()?;
                if !op.is_read_only() {
                    return Err(ClientError::BadRequest(
                        "a read may only contain get".into(),
                    ));
                }
                check_unreserved(op)
            }
            RequestKind::Write { op } => {
                op.validate()?;
                check_unreserved(op)
            }
            RequestKind::Status | RequestKind::Members => Ok(()),
            RequestKind::MemberChange { op } => {
                if op.node() == 0 {
                    return Err(ClientError::BadRequest("node id 0 is not valid".into()));
                }
                if let MemberOp::AddLearner { address, .. } = op {
                    if address.len() > MEMBER_ADDRESS_BYTES_MAX {
                        return Err(ClientError::TooLarge {
                            what: "member address".into(),
                            bytes: address.len() as u64,
                            max: MEMBER_ADDRESS_BYTES_MAX as u64,
                        });
                    }
                    if !looks_like_socket_address(address) {
                        return Err(ClientError::BadRequest(format!(
                            "member address '{address}' is not IP:PORT"
                        )));
                    }
                }
                Ok(())
            }
            RequestKind::MoveLeader { to } => {
                if *to == 0 {
                    return Err(ClientError::BadRequest("node id 0 is not valid".into()));
                }
                Ok(())
            }
        }
    }
}

/// `IP:PORT` as `std::net::SocketAddr` writes it (`1.2.3.4:5`, `[::1]:5`), checked without
/// `std::net` (this crate stays free of I/O types); the node parses it for real.
fn looks_like_socket_address(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host_chars = |c: char| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']');
    !host.is_empty() && host.chars().all(host_chars) && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// Keys under `members::RESERVED_KEY_PREFIX` belong to the nodes.
fn check_unreserved(op: &Op) -> Result<(), ClientError> {
    if op.key_ops().iter().any(|k| is_reserved_key(k.key())) {
        return Err(ClientError::BadRequest(
            "keys starting with \\0kvnode/ are reserved for the cluster's own use".into(),
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("frame is {bytes} bytes, the limit is {max}")]
    TooLarge { bytes: u64, max: u64 },
    #[error("frame encode failed: {0}")]
    Encode(String),
    #[error("frame decode failed: {0}")]
    Decode(String),
    #[error("frame has {0} bytes after its end")]
    TrailingBytes(usize),
}

pub fn encode_request(request: &ClientRequest) -> Result<Vec<u8>, ProtoError> {
    encode_frame(request)
}

/// Decodes an untrusted frame; never panics, never allocates beyond `CLIENT_FRAME_BYTES_MAX`.
/// Does not validate the operation: call `ClientRequest::validate` to answer with a typed error.
pub fn decode_request(frame: &[u8]) -> Result<ClientRequest, ProtoError> {
    decode_frame(frame)
}

pub fn encode_response(response: &ClientResponse) -> Result<Vec<u8>, ProtoError> {
    encode_frame(response)
}

pub fn decode_response(frame: &[u8]) -> Result<ClientResponse, ProtoError> {
    decode_frame(frame)
}

fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtoError> {
    let frame = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|error| ProtoError::Encode(error.to_string()))?;
    check_frame_size(frame.len())?;
    Ok(frame)
}

fn decode_frame<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, ProtoError> {
    check_frame_size(frame.len())?;
    let config = bincode::config::standard().with_limit::<CLIENT_FRAME_BYTES_MAX>();
    let (value, used) = bincode::serde::decode_from_slice(frame, config)
        .map_err(|error| ProtoError::Decode(error.to_string()))?;
    if used != frame.len() {
        return Err(ProtoError::TrailingBytes(frame.len() - used));
    }
    Ok(value)
}

fn check_frame_size(bytes: usize) -> Result<(), ProtoError> {
    if bytes > CLIENT_FRAME_BYTES_MAX {
        let (bytes, max) = (bytes as u64, CLIENT_FRAME_BYTES_MAX as u64);
        return Err(ProtoError::TooLarge { bytes, max });
    }
    Ok(())
}

impl ClientResponse {
    /// How a request ended, as a metrics label: `ok` (answered with a result, a cas that did not
    /// swap included, or a status), else the error's name.
    pub fn outcome_name(&self) -> &'static str {
        match self {
            ClientResponse::Ok(_) | ClientResponse::Status(_) | ClientResponse::Members(_) => "ok",
            ClientResponse::Err(error) => match error {
                ClientError::NotLeader { .. } => "not_leader",
                ClientError::Timeout => "timeout",
                ClientError::TooLarge { .. } => "too_large",
                ClientError::BadRequest(_) => "bad_request",
                ClientError::Stale => "stale",
                ClientError::Unavailable(_) => "unavailable",
                ClientError::NotApplied(_) => "not_applied",
            },
        }
    }
}

/// The operation a request frame carries, as a metrics label (`get`, `put`, `delete`, `cas`,
/// `append`, `txn`, `status`; `invalid` if the frame does not start like a request), read from
/// its first bytes without decoding it. The frame is bincode 2's standard configuration:
/// `client_id` and `seq` as varints, then the variant indices of `RequestKind`, `Op` and
/// `KeyOp` as varints (a test checks this against the encoder).
pub fn request_op_name(frame: &[u8]) -> &'static str {
    const INVALID: &str = "invalid";
    let mut rest = frame;
    let (Some(_client_id), Some(_seq), Some(kind)) = (
        take_varint(&mut rest),
        take_varint(&mut rest),
        take_varint(&mut rest),
    ) else {
        return INVALID;
    };
    match kind {
        // Read { op, .. } and Write { op }: the op comes first.
        0 | 1 => {}
        2 => return "status",
        3 => return "member_list",
        4 => return "member_change",
        5 => return "move_leader",
        _ => return INVALID,
    }
    match take_varint(&mut rest) {
        Some(0) => {}
        Some(1) => return "txn",
        _ => return INVALID,
    }
    match take_varint(&mut rest) {
        Some(0) => "get",
        Some(1) => "put",
        Some(2) => "delete",
        Some(3) => "cas",
        Some(4) => "append",
        _ => INVALID,
    }
}

/// One bincode varint: a byte below 251 is the value; 251, 252 and 253 announce a u16, u32
/// or u64 in little-endian after it.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = bytes.split_first()?;
    let width = match first {
        0..=250 => {
            *bytes = rest;
            return Some(u64::from(first));
        }
        251 => 2,
        252 => 4,
        253 => 8,
        _ => return None,
    };
    let (value, rest) = (rest.get(..width)?, rest.get(width..)?);
    let mut le = [0u8; 8];
    le[..width].copy_from_slice(value);
    *bytes = rest;
    Some(u64::from_le_bytes(le))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::VALUE_BYTES_MAX;
    use crate::ops::KeyResult;

    #[test]
    fn request_op_names_match_the_encoder() {
        use crate::ops::KeyOp;
        let ops = [
            (Op::get("k"), "get"),
            (Op::put("k", "v"), "put"),
            (Op::delete("k"), "delete"),
            (Op::cas("k", None, "v"), "cas"),
            (Op::append("k", "e"), "append"),
            (Op::Txn(vec![KeyOp::Get { key: "k".into() }]), "txn"),
        ];
        // Small and large ids exercise every varint width.
        for (client_id, seq) in [(1, 0), (300, 70_000), (u64::MAX, 1 << 40)] {
            for (op, name) in &ops {
                for kind in [
                    RequestKind::Write { op: op.clone() },
                    RequestKind::Read {
                        op: op.clone(),
                        stale: true,
                    },
                ] {
                    let request = ClientRequest {
                        client_id,
                        seq,
                        kind,
                    };
                    let frame = encode_request(&request).unwrap();
                    assert_eq!(request_op_name(&frame), *name, "{request:?}");
                }
            }
            let status = ClientRequest {
                client_id,
                seq,
                kind: RequestKind::Status,
            };
            assert_eq!(request_op_name(&encode_request(&status).unwrap()), "status");
        }
        assert_eq!(request_op_name(&[]), "invalid");
        assert_eq!(request_op_name(&[1, 2, 9]), "invalid");
        assert_eq!(request_op_name(&[255]), "invalid");
    }

    fn request(kind: RequestKind) -> ClientRequest {
        ClientRequest {
            client_id: 42,
            seq: 7,
            kind,
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            request(RequestKind::Read {
                op: Op::get("k"),
                stale: true,
            }),
            request(RequestKind::Write {
                op: Op::Txn(vec![]),
            }),
            request(RequestKind::Status),
        ];
        for sent in requests {
            let frame = encode_request(&sent).unwrap();
            assert_eq!(decode_request(&frame), Ok(sent));
        }
        let status = NodeStatus {
            id: 2,
            role: NodeRole::Leader,
            term: 3,
            commit_index: 10,
            applied_index: 9,
            leader: Some(2),
        };
        let responses = [
            ClientResponse::Ok(OpResult::Key(KeyResult::Put { existed: true })),
            ClientResponse::Status(status),
            ClientResponse::Err(ClientError::NotLeader {
                leader_hint: Some(3),
            }),
            ClientResponse::Err(ClientError::TooLarge {
                what: "value".into(),
                bytes: 9,
                max: 8,
            }),
        ];
        for sent in responses {
            let frame = encode_response(&sent).unwrap();
            assert_eq!(decode_response(&frame), Ok(sent));
        }
    }

    #[test]
    fn validate_refuses_writes_in_reads_and_oversize_values() {
        let write_in_read = request(RequestKind::Read {
            op: Op::put("k", "v"),
            stale: false,
        });
        assert!(matches!(
            write_in_read.validate(),
            Err(ClientError::BadRequest(_))
        ));
        let value = vec![0u8; VALUE_BYTES_MAX + 1];
        let oversize = request(RequestKind::Write {
            op: Op::put("k", value),
        });
        let Err(ClientError::TooLarge { what, bytes, max }) = oversize.validate() else {
            panic!("expected TooLarge")
        };
        assert_eq!(
            (what.as_str(), bytes, max),
            ("value", VALUE_BYTES_MAX as u64 + 1, VALUE_BYTES_MAX as u64)
        );
        assert_eq!(request(RequestKind::Status).validate(), Ok(()));
    }

    #[test]
    fn member_requests_are_validated_and_named() {
        use crate::members::{member_address_key, MemberOp};
        let add = |address: &str| {
            request(RequestKind::MemberChange {
                op: MemberOp::AddLearner {
                    id: 4,
                    address: address.to_string(),
                },
            })
        };
        assert_eq!(add("127.0.0.1:50054").validate(), Ok(()));
        assert_eq!(add("[::1]:50054").validate(), Ok(()));
        for bad in [
            "nowhere",
            "127.0.0.1",
            "127.0.0.1:0",
            ":5",
            "host:5",
            "1.2.3.4:70000",
        ] {
            assert!(
                matches!(add(bad).validate(), Err(ClientError::BadRequest(_))),
                "{bad}"
            );
        }
        let long = format!("{}:5", "1".repeat(MEMBER_ADDRESS_BYTES_MAX));
        assert!(matches!(
            add(&long).validate(),
            Err(ClientError::TooLarge { .. })
        ));
        let zero = request(RequestKind::MemberChange {
            op: MemberOp::Remove { id: 0 },
        });
        assert!(matches!(zero.validate(), Err(ClientError::BadRequest(_))));
        let move_zero = request(RequestKind::MoveLeader { to: 0 });
        assert!(matches!(
            move_zero.validate(),
            Err(ClientError::BadRequest(_))
        ));
        // Reserved keys: neither written nor read by clients, also inside a transaction.
        let key = member_address_key(4);
        let reserved = [
            request(RequestKind::Write {
                op: Op::put(key.clone(), "x"),
            }),
            request(RequestKind::Read {
                op: Op::Txn(vec![
                    crate::ops::KeyOp::Get { key: "k".into() },
                    crate::ops::KeyOp::Get {
                        key: key.clone().into(),
                    },
                ]),
                stale: true,
            }),
        ];
        for reserved in reserved {
            assert!(matches!(
                reserved.validate(),
                Err(ClientError::BadRequest(_))
            ));
        }
        for (kind, name) in [
            (RequestKind::Members, "member_list"),
            (
                RequestKind::MemberChange {
                    op: MemberOp::Promote { id: 4 },
                },
                "member_change",
            ),
            (RequestKind::MoveLeader { to: 2 }, "move_leader"),
        ] {
            let frame = encode_request(&request(kind)).unwrap();
            assert_eq!(request_op_name(&frame), name);
        }
    }

    #[test]
    fn apply_outcomes_map_to_responses() {
        let result = OpResult::Key(KeyResult::Append { length: 1 });
        let duplicate = ApplyOutcome::Duplicate {
            client_id: 1,
            seq: 2,
            result: result.clone(),
        };
        assert_eq!(duplicate.client(), Some((1, 2)));
        assert_eq!(ClientResponse::from(duplicate), ClientResponse::Ok(result));
        let stale = ApplyOutcome::Stale {
            client_id: 1,
            seq: 1,
            last_seq: 2,
        };
        assert_eq!(
            ClientResponse::from(stale),
            ClientResponse::Err(ClientError::Stale)
        );
    }

    #[test]
    fn oversize_and_garbage_frames_are_errors() {
        let frame = vec![0u8; CLIENT_FRAME_BYTES_MAX + 1];
        assert!(matches!(
            decode_request(&frame),
            Err(ProtoError::TooLarge { .. })
        ));
        // A claimed length far beyond the frame limit must fail without allocating it.
        let huge_length = [
            0u8, 42, 7, 1, 0, 0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(decode_request(&huge_length).is_err());
        assert!(matches!(
            decode_response(&[0xff]),
            Err(ProtoError::Decode(_))
        ));
        let mut frame = encode_request(&request(RequestKind::Status)).unwrap();
        frame.push(0);
        assert_eq!(decode_request(&frame), Err(ProtoError::TrailingBytes(1)));
    }
}
