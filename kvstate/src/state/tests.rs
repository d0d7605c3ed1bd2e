//! Unit tests of the state machine: operations, transactions, sessions, limits, snapshots.

use bytes::Bytes;

use crate::command::{Command, CommandError, COMMAND_FORMAT_VERSION};
use crate::limits::{
    KEY_BYTES_MAX, LIST_ELEMENTS_MAX, RESULT_BYTES_MAX, SESSIONS_MAX, SESSIONS_RESULT_BYTES_MAX,
    TXN_OPS_MAX, VALUE_BYTES_MAX,
};
use crate::ops::{KeyOp, KeyResult, Op, OpError, OpFailure, OpResult, Value};
use crate::state::{ApplyOutcome, KvError, StateMachine};

/// Applies commands with consecutive indexes and one fresh seq per command.
struct Driver {
    state: StateMachine,
    index: u64,
    seq: u64,
}

impl Driver {
    fn new() -> Driver {
        Driver {
            state: StateMachine::new(),
            index: 0,
            seq: 0,
        }
    }

    fn apply_as(&mut self, client_id: u64, seq: u64, op: Op) -> ApplyOutcome {
        self.apply_owned("client1", client_id, seq, op)
    }

    fn apply_owned(&mut self, owner: &str, client_id: u64, seq: u64, op: Op) -> ApplyOutcome {
        self.index += 1;
        let owner = owner.to_string();
        let command = Command {
            owner,
            client_id,
            seq,
            op,
        };
        self.state.apply(self.index, &command.encode().unwrap())
    }

    /// Applies `op` as a new request of client 1 and returns its result.
    fn run(&mut self, op: Op) -> OpResult {
        self.seq += 1;
        match self.apply_as(1, self.seq, op) {
            ApplyOutcome::Applied { result, .. } => result,
            other => panic!("expected Applied, got {other:?}"),
        }
    }

    fn run_key(&mut self, op: Op) -> KeyResult {
        match self.run(op) {
            OpResult::Key(result) => result,
            other => panic!("expected a key result, got {other:?}"),
        }
    }
}

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn plain(text: &str) -> Option<Value> {
    Some(Value::Bytes(bytes(text)))
}

fn list(elements: &[&str]) -> Option<Value> {
    Some(Value::List(elements.iter().map(|e| bytes(e)).collect()))
}

fn get(key: &str) -> KeyOp {
    KeyOp::Get { key: bytes(key) }
}

fn put(key: &str, value: &str) -> KeyOp {
    KeyOp::Put {
        key: bytes(key),
        value: bytes(value),
    }
}

fn append(key: &str, element: &str) -> KeyOp {
    KeyOp::Append {
        key: bytes(key),
        element: bytes(element),
    }
}

fn cas(key: &str, expected: Option<&str>, new: &str) -> KeyOp {
    KeyOp::Cas {
        key: bytes(key),
        expected: expected.map(bytes),
        new: bytes(new),
    }
}

#[test]
fn put_get_delete_report_previous_existence() {
    let mut driver = Driver::new();
    assert_eq!(driver.run_key(Op::get("k")), KeyResult::Get { value: None });
    assert_eq!(
        driver.run_key(Op::put("k", "1")),
        KeyResult::Put { existed: false }
    );
    assert_eq!(
        driver.run_key(Op::put("k", "2")),
        KeyResult::Put { existed: true }
    );
    assert_eq!(
        driver.run_key(Op::get("k")),
        KeyResult::Get { value: plain("2") }
    );
    assert_eq!(
        driver.run_key(Op::delete("k")),
        KeyResult::Delete { existed: true }
    );
    assert_eq!(
        driver.run_key(Op::delete("k")),
        KeyResult::Delete { existed: false }
    );
    assert_eq!(driver.state.get_local(b"k"), None);
    assert_eq!(driver.state.applied_index(), 6);
}

#[test]
fn cas_compares_against_bytes_or_absence() {
    let mut driver = Driver::new();
    let created = driver.run_key(Op::cas("k", None, "1"));
    assert_eq!(
        created,
        KeyResult::Cas {
            succeeded: true,
            current: None
        }
    );
    let absent_expected = driver.run_key(Op::cas("k", None, "x"));
    assert_eq!(
        absent_expected,
        KeyResult::Cas {
            succeeded: false,
            current: plain("1")
        }
    );
    let mismatch = driver.run_key(Op::cas("k", Some(bytes("0")), "x"));
    assert_eq!(
        mismatch,
        KeyResult::Cas {
            succeeded: false,
            current: plain("1")
        }
    );
    let swapped = driver.run_key(Op::cas("k", Some(bytes("1")), "2"));
    assert_eq!(
        swapped,
        KeyResult::Cas {
            succeeded: true,
            current: plain("1")
        }
    );
    assert_eq!(driver.state.get_local(b"k"), plain("2"));

    driver.run_key(Op::append("l", "a"));
    let on_list = driver.run_key(Op::cas("l", Some(bytes("a")), "x"));
    assert_eq!(
        on_list,
        KeyResult::Cas {
            succeeded: false,
            current: list(&["a"])
        }
    );
}

#[test]
fn append_builds_a_list_and_refuses_plain_values() {
    let mut driver = Driver::new();
    assert_eq!(
        driver.run_key(Op::append("l", "a")),
        KeyResult::Append { length: 1 }
    );
    assert_eq!(
        driver.run_key(Op::append("l", "b")),
        KeyResult::Append { length: 2 }
    );
    assert_eq!(
        driver.run_key(Op::get("l")),
        KeyResult::Get {
            value: list(&["a", "b"])
        }
    );
    driver.run_key(Op::put("p", "x"));
    let wrong = driver.run_key(Op::append("p", "a"));
    assert_eq!(wrong, KeyResult::Failed(OpFailure::WrongType));
    // A put replaces a list with plain bytes.
    driver.run_key(Op::put("l", "y"));
    assert_eq!(driver.state.get_local(b"l"), plain("y"));
}

#[test]
fn append_to_a_full_list_fails() {
    let mut driver = Driver::new();
    let txn: Vec<KeyOp> = (0..TXN_OPS_MAX).map(|_| append("l", "e")).collect();
    for _ in 0..LIST_ELEMENTS_MAX / TXN_OPS_MAX {
        let result = driver.run(Op::Txn(txn.clone()));
        assert!(matches!(
            result,
            OpResult::Txn {
                committed: true,
                ..
            }
        ));
    }
    let full = driver.run_key(Op::append("l", "e"));
    let expected = OpFailure::ListFull {
        elements: LIST_ELEMENTS_MAX as u64,
        bytes: LIST_ELEMENTS_MAX as u64,
    };
    assert_eq!(full, KeyResult::Failed(expected));

    let big = "x".repeat(VALUE_BYTES_MAX - 1);
    assert_eq!(
        driver.run_key(Op::append("m", big.clone())),
        KeyResult::Append { length: 1 }
    );
    assert_eq!(
        driver.run_key(Op::append("m", "y")),
        KeyResult::Append { length: 2 }
    );
    let over = driver.run_key(Op::append("m", "z"));
    assert!(matches!(
        over,
        KeyResult::Failed(OpFailure::ListFull { elements: 2, .. })
    ));
}

#[test]
fn txn_reads_its_own_writes_in_order() {
    let mut driver = Driver::new();
    driver.run_key(Op::put("k", "0"));
    let ops = vec![
        get("k"),
        put("k", "1"),
        get("k"),
        append("l", "a"),
        get("l"),
    ];
    let result = driver.run(Op::Txn(ops));
    let expected = vec![
        KeyResult::Get { value: plain("0") },
        KeyResult::Put { existed: true },
        KeyResult::Get { value: plain("1") },
        KeyResult::Append { length: 1 },
        KeyResult::Get {
            value: list(&["a"]),
        },
    ];
    assert_eq!(
        result,
        OpResult::Txn {
            committed: true,
            results: expected
        }
    );
    assert_eq!(driver.state.get_local(b"l"), list(&["a"]));
}

#[test]
fn txn_with_a_failing_cas_aborts_without_effect() {
    let mut driver = Driver::new();
    driver.run_key(Op::put("a", "0"));
    driver.run_key(Op::append("l", "x"));
    let before = driver.state.clone();
    let ops = vec![
        put("a", "1"),
        KeyOp::Delete { key: bytes("a") },
        append("l", "y"),
        append("new", "z"),
        put("b", "1"),
        cas("c", Some("missing"), "1"),
        put("after", "never"),
    ];
    let result = driver.run(Op::Txn(ops));
    let OpResult::Txn { committed, results } = result else {
        panic!("not a txn result")
    };
    assert!(!committed);
    assert_eq!(results.len(), 6, "results end with the failing op");
    assert_eq!(
        results[5],
        KeyResult::Cas {
            succeeded: false,
            current: None
        }
    );
    for key in [&b"a"[..], b"l", b"new", b"b", b"c", b"after"] {
        assert_eq!(driver.state.get_local(key), before.get_local(key));
    }
    assert_eq!(driver.state.len(), before.len());
}

#[test]
fn txn_with_a_failing_append_aborts() {
    let mut driver = Driver::new();
    driver.run_key(Op::put("p", "x"));
    let result = driver.run(Op::Txn(vec![append("l", "a"), append("p", "b")]));
    let expected = vec![
        KeyResult::Append { length: 1 },
        KeyResult::Failed(OpFailure::WrongType),
    ];
    assert_eq!(
        result,
        OpResult::Txn {
            committed: false,
            results: expected
        }
    );
    assert_eq!(driver.state.get_local(b"l"), None);
}

#[test]
fn txn_results_over_the_limit_abort() {
    let mut driver = Driver::new();
    let big = "v".repeat(VALUE_BYTES_MAX);
    for key in ["a", "b", "c", "d", "e"] {
        driver.run_key(Op::put(key, big.clone()));
    }
    let ops = vec![
        put("w", "1"),
        get("a"),
        get("b"),
        get("c"),
        get("d"),
        get("e"),
    ];
    let OpResult::Txn { committed, results } = driver.run(Op::Txn(ops)) else {
        panic!("not a txn result")
    };
    assert!(!committed);
    let Some(KeyResult::Failed(OpFailure::ResultTooLarge { bytes, max })) = results.last() else {
        panic!("expected ResultTooLarge, got {results:?}")
    };
    assert!(*bytes > *max);
    assert_eq!(*max, RESULT_BYTES_MAX as u64);
    assert_eq!(driver.state.get_local(b"w"), None);
}

#[test]
fn retried_request_applies_once_and_returns_the_cached_result() {
    let mut driver = Driver::new();
    let first = driver.apply_as(7, 1, Op::append("l", "a"));
    let result = OpResult::Key(KeyResult::Append { length: 1 });
    assert_eq!(
        first,
        ApplyOutcome::Applied {
            client_id: 7,
            seq: 1,
            result: result.clone()
        }
    );
    let retry = driver.apply_as(7, 1, Op::append("l", "a"));
    assert_eq!(
        retry,
        ApplyOutcome::Duplicate {
            client_id: 7,
            seq: 1,
            result
        }
    );
    assert_eq!(driver.state.get_local(b"l"), list(&["a"]));
    // Another client's same seq is its own request.
    let other = driver.apply_as(8, 1, Op::append("l", "a"));
    assert!(matches!(other, ApplyOutcome::Applied { client_id: 8, .. }));
    assert_eq!(driver.state.get_local(b"l"), list(&["a", "a"]));
}

/// Issue 10, bug 5: a session belongs to the certificate identity that opened it. Another
/// identity reusing the `client_id` with `seq = u64::MAX` gets a session of its own and leaves
/// the victim's exactly-once state untouched (before the fix, every later write of the victim
/// was answered `Stale`).
#[test]
fn another_identity_cannot_hijack_a_session() {
    let mut driver = Driver::new();
    driver.apply_owned("alice", 9, 1, Op::put("k", "a1"));
    let attack = driver.apply_owned("mallory", 9, u64::MAX, Op::put("k", "m"));
    assert!(matches!(attack, ApplyOutcome::Applied { .. }));
    let next = driver.apply_owned("alice", 9, 2, Op::put("k", "a2"));
    assert!(
        matches!(next, ApplyOutcome::Applied { seq: 2, .. }),
        "{next:?}"
    );
    let retry = driver.apply_owned("alice", 9, 2, Op::put("k", "a2"));
    assert!(matches!(retry, ApplyOutcome::Duplicate { seq: 2, .. }));
    assert_eq!(driver.state.session_seq("alice", 9), Some(2));
    assert_eq!(driver.state.session_seq("mallory", 9), Some(u64::MAX));
    // Sessions and their owners survive a snapshot.
    let restored = StateMachine::restore(&driver.state.snapshot()).unwrap();
    assert_eq!(restored, driver.state);
    assert_eq!(restored.session_seq("alice", 9), Some(2));
}

#[test]
fn an_owner_over_the_limit_is_refused() {
    let command = Command {
        owner: "x".repeat(crate::limits::OWNER_BYTES_MAX + 1),
        client_id: 1,
        seq: 1,
        op: Op::put("k", "v"),
    };
    assert!(matches!(
        command.encode(),
        Err(CommandError::OwnerTooLong { .. })
    ));
}

/// The encoded command becomes a log entry's data, held until the next snapshot: its buffer is
/// exactly its size, with no spare capacity.
#[test]
fn an_encoded_command_has_no_spare_capacity() {
    for value_bytes in [0, 1, 200, 256, 300, 70_000] {
        let command = Command {
            owner: "client1".into(),
            client_id: u64::MAX,
            seq: 1 << 40,
            op: Op::put("k1234567", vec![7u8; value_bytes]),
        };
        let encoded = command.encode().unwrap();
        assert_eq!(
            encoded.capacity(),
            encoded.len(),
            "{value_bytes}-byte value"
        );
        assert_eq!(Command::decode(&encoded).unwrap(), command);
    }
    let txn = Op::Txn(vec![
        KeyOp::Put {
            key: Bytes::from("a"),
            value: Bytes::from(vec![1u8; 300]),
        },
        KeyOp::Append {
            key: Bytes::from("b"),
            element: Bytes::from("e"),
        },
    ]);
    let command = Command {
        owner: String::new(),
        client_id: 0,
        seq: 0,
        op: txn,
    };
    let encoded = command.encode().unwrap();
    assert_eq!(encoded.capacity(), encoded.len());
    assert_eq!(Command::decode(&encoded).unwrap(), command);
}

#[test]
fn older_seq_is_stale_and_gaps_are_allowed() {
    let mut driver = Driver::new();
    driver.apply_as(3, 5, Op::put("k", "5"));
    let stale = driver.apply_as(3, 4, Op::put("k", "4"));
    assert_eq!(
        stale,
        ApplyOutcome::Stale {
            client_id: 3,
            seq: 4,
            last_seq: 5
        }
    );
    assert_eq!(driver.state.get_local(b"k"), plain("5"));
    let next = driver.apply_as(3, 9, Op::put("k", "9"));
    assert!(matches!(next, ApplyOutcome::Applied { seq: 9, .. }));
    assert_eq!(driver.state.session_seq("client1", 3), Some(9));
}

#[test]
fn sessions_evict_the_least_recently_used_by_log_index() {
    let mut driver = Driver::new();
    for client_id in 0..SESSIONS_MAX as u64 {
        driver.apply_as(client_id, 1, Op::put("k", "v"));
    }
    // Client 0 is the oldest; a retry touches it, so client 1 becomes the oldest.
    assert!(matches!(
        driver.apply_as(0, 1, Op::put("k", "v")),
        ApplyOutcome::Duplicate { .. }
    ));
    driver.apply_as(SESSIONS_MAX as u64, 1, Op::put("k", "v"));
    assert_eq!(driver.state.sessions_len(), SESSIONS_MAX);
    assert_eq!(driver.state.session_seq("client1", 0), Some(1));
    assert_eq!(driver.state.session_seq("client1", 1), None);
    assert_eq!(driver.state.session_seq("client1", 2), Some(1));
}

#[test]
fn sessions_evict_by_cached_result_bytes() {
    let mut driver = Driver::new();
    let big = "v".repeat(VALUE_BYTES_MAX);
    driver.run_key(Op::put("big", big.clone()));
    let sessions_fitting = SESSIONS_RESULT_BYTES_MAX / VALUE_BYTES_MAX;
    for client_id in 100..100 + sessions_fitting as u64 + 8 {
        driver.apply_as(client_id, 1, Op::get("big"));
    }
    assert!(driver.state.sessions_len() < sessions_fitting);
    assert_eq!(
        driver.state.session_seq("client1", 100),
        None,
        "the oldest big result is evicted"
    );
    let newest = 100 + sessions_fitting as u64 + 7;
    assert_eq!(driver.state.session_seq("client1", newest), Some(1));
}

fn encode_unvalidated(command: &Command) -> Vec<u8> {
    let mut data = vec![COMMAND_FORMAT_VERSION];
    let body = bincode::serde::encode_to_vec(command, bincode::config::standard()).unwrap();
    data.extend_from_slice(&body);
    data
}

#[test]
fn malformed_commands_are_rejected_deterministically() {
    let mut state = StateMachine::new();
    let outcome = state.apply(1, &[]);
    assert_eq!(
        outcome,
        ApplyOutcome::Rejected {
            client: None,
            error: CommandError::Empty
        }
    );
    let outcome = state.apply(2, &[9, 1, 2]);
    assert_eq!(
        outcome,
        ApplyOutcome::Rejected {
            client: None,
            error: CommandError::Version(9)
        }
    );
    let outcome = state.apply(3, &[COMMAND_FORMAT_VERSION, 0xff, 0xff, 0xff]);
    assert!(matches!(
        outcome,
        ApplyOutcome::Rejected { client: None, .. }
    ));

    let key = Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]);
    let command = Command {
        owner: "client1".into(),
        client_id: 4,
        seq: 1,
        op: Op::Key(KeyOp::Get { key }),
    };
    let outcome = state.apply(4, &encode_unvalidated(&command));
    let ApplyOutcome::Rejected {
        client: Some((4, 1)),
        error: CommandError::Invalid(error),
    } = outcome
    else {
        panic!("expected an invalid command, got {outcome:?}")
    };
    assert!(matches!(error, OpError::TooLarge { what: "key", .. }));
    assert_eq!(state.applied_index(), 4);
    assert_eq!(state.sessions_len(), 0);
}

#[test]
#[should_panic(expected = "applied twice or out of order")]
fn applying_an_index_twice_is_a_bug() {
    let mut state = StateMachine::new();
    state.apply_empty(5);
    state.apply_empty(5);
}

#[test]
fn validate_enforces_every_limit() {
    let key_over = "k".repeat(KEY_BYTES_MAX + 1);
    let value_max = "v".repeat(VALUE_BYTES_MAX);
    let value_over = "v".repeat(VALUE_BYTES_MAX + 1);
    let too_large = |op: Op| matches!(op.validate(), Err(OpError::TooLarge { .. }));
    assert!(too_large(Op::get(key_over.clone())));
    assert!(too_large(Op::put("k", value_over.clone())));
    assert!(too_large(Op::append("k", value_over.clone())));
    assert!(too_large(Op::cas(
        "k",
        Some(Bytes::from(value_over.clone())),
        "v"
    )));
    assert!(too_large(Op::Txn(vec![get("k"); TXN_OPS_MAX + 1])));
    let payload_over = vec![put("a", &value_max), put("b", &value_max), put("c", "v")];
    assert!(too_large(Op::Txn(payload_over)));
    assert!(matches!(
        Op::Txn(vec![]).validate(),
        Err(OpError::BadRequest(_))
    ));
    assert!(matches!(
        Op::get("").validate(),
        Err(OpError::BadRequest(_))
    ));
    assert_eq!(
        Op::put(key_over.as_str()[..KEY_BYTES_MAX].to_string(), value_max).validate(),
        Ok(())
    );
    assert_eq!(Op::Txn(vec![get("k"); TXN_OPS_MAX]).validate(), Ok(()));
}

#[test]
fn command_round_trips_and_refuses_trailing_bytes() {
    let command = Command {
        owner: "client1".into(),
        client_id: 1,
        seq: 2,
        op: Op::Txn(vec![put("a", "1"), get("a")]),
    };
    let mut data = command.encode().unwrap();
    assert_eq!(Command::decode(&data), Ok(command));
    data.push(0);
    assert_eq!(Command::decode(&data), Err(CommandError::TrailingBytes(1)));
    let invalid = Command {
        owner: "client1".into(),
        client_id: 1,
        seq: 2,
        op: Op::Txn(vec![]),
    };
    assert!(matches!(invalid.encode(), Err(CommandError::Invalid(_))));
}

#[test]
fn read_local_serves_reads_only() {
    let mut driver = Driver::new();
    driver.run_key(Op::put("a", "1"));
    let read = driver
        .state
        .read_local(&Op::Txn(vec![get("a"), get("b")]))
        .unwrap();
    let results = vec![
        KeyResult::Get { value: plain("1") },
        KeyResult::Get { value: None },
    ];
    assert_eq!(
        read,
        OpResult::Txn {
            committed: true,
            results
        }
    );
    let write = driver
        .state
        .read_local(&Op::Txn(vec![get("a"), put("b", "1")]));
    assert!(matches!(write, Err(OpError::BadRequest(_))));
    assert_eq!(
        driver.state.session_seq("client1", 1),
        Some(1),
        "reads do not touch sessions"
    );
}

#[test]
fn snapshot_restores_exactly() {
    let mut driver = Driver::new();
    driver.run_key(Op::put("a", "1"));
    driver.run_key(Op::append("l", "x"));
    driver.apply_as(9, 4, Op::cas("c", None, "1"));
    driver.state.apply_empty(10);
    let snapshot = driver.state.snapshot();
    let restored = StateMachine::restore(&snapshot).unwrap();
    assert_eq!(restored, driver.state);
    assert_eq!(restored.snapshot(), snapshot);
    assert_eq!(restored.applied_index(), 10);
    assert_eq!(restored.session_seq("client1", 9), Some(4));
}

#[test]
fn restore_refuses_corrupt_snapshots() {
    let mut driver = Driver::new();
    driver.run_key(Op::put("a", "1"));
    driver.run_key(Op::put("b", "2"));
    let snapshot = driver.state.snapshot();
    let truncated = StateMachine::restore(&snapshot[..snapshot.len() - 1]);
    assert!(matches!(truncated, Err(KvError::SnapshotDecode { .. })));
    let mut trailing = snapshot.clone();
    trailing.push(0);
    assert!(matches!(
        StateMachine::restore(&trailing),
        Err(KvError::SnapshotInvalid(_))
    ));
    let mut bad_magic = snapshot;
    bad_magic[0] ^= 0xff;
    assert!(StateMachine::restore(&bad_magic).is_err());
    assert!(StateMachine::restore(&[]).is_err());
}
