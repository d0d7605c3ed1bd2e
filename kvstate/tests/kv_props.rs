//! Property tests of the state machine: determinism across replicas, snapshot equivalence,
//! exactly-once sessions, and robustness to garbage log entries and frames.

// Test code: a failed unwrap is a failed test (clippy.toml allows it only inside #[test] fns).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use kvstate::client_proto::{decode_request, decode_response};
use kvstate::{
    ApplyOutcome, Command, KeyOp, KeyResult, Op, OpFailure, OpResult, StateMachine, Value,
};
use proptest::prelude::*;

fn key_strategy() -> impl Strategy<Value = Bytes> {
    // A few keys, so operations collide.
    (0u8..5).prop_map(|k| Bytes::from(vec![b'a' + k]))
}

fn value_strategy() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..4).prop_map(Bytes::from)
}

fn key_op_strategy() -> impl Strategy<Value = KeyOp> {
    prop_oneof![
        key_strategy().prop_map(|key| KeyOp::Get { key }),
        (key_strategy(), value_strategy()).prop_map(|(key, value)| KeyOp::Put { key, value }),
        key_strategy().prop_map(|key| KeyOp::Delete { key }),
        (
            key_strategy(),
            proptest::option::of(value_strategy()),
            value_strategy()
        )
            .prop_map(|(key, expected, new)| KeyOp::Cas { key, expected, new }),
        (key_strategy(), value_strategy())
            .prop_map(|(key, element)| KeyOp::Append { key, element }),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => key_op_strategy().prop_map(Op::Key),
        1 => proptest::collection::vec(key_op_strategy(), 1..6).prop_map(Op::Txn),
    ]
}

/// How a request's seq relates to its client's last one.
#[derive(Clone, Copy, Debug)]
enum SeqChoice {
    Next,
    Retry,
    Older,
}

fn seq_choice_strategy() -> impl Strategy<Value = SeqChoice> {
    prop_oneof![
        6 => Just(SeqChoice::Next),
        2 => Just(SeqChoice::Retry),
        1 => Just(SeqChoice::Older),
    ]
}

/// A log of encoded commands from a few clients, some retried, some stale.
fn log_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
    command_strategy().prop_map(|commands| {
        (commands.iter())
            .map(|command| command.encode().unwrap())
            .collect()
    })
}

/// The commands of `log_strategy`, before encoding.
fn command_strategy() -> impl Strategy<Value = Vec<Command>> {
    let step = (0u64..4, seq_choice_strategy(), op_strategy());
    proptest::collection::vec(step, 1..80).prop_map(|steps| {
        let mut seqs: BTreeMap<u64, u64> = BTreeMap::new();
        let mut log = Vec::new();
        for (client_id, choice, op) in steps {
            let last = seqs.entry(client_id).or_insert(0);
            let seq = match choice {
                SeqChoice::Next => *last + 1,
                SeqChoice::Retry => *last,
                SeqChoice::Older => last.saturating_sub(1),
            };
            *last = (*last).max(seq);
            let owner = "client1".to_string();
            let command = Command {
                owner,
                client_id,
                seq,
                op,
            };
            log.push(command);
        }
        log
    })
}

fn apply_all(state: &mut StateMachine, log: &[Vec<u8>], first_index: u64) -> Vec<ApplyOutcome> {
    let entries = log
        .iter()
        .zip(first_index..)
        .map(|(data, index)| (index, data.as_slice()));
    state
        .apply_batch(entries)
        .into_iter()
        .map(|(_, outcome)| outcome)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn replicas_applying_the_same_log_agree(log in log_strategy()) {
        let mut first = StateMachine::new();
        let mut second = StateMachine::new();
        let outcomes_first = apply_all(&mut first, &log, 1);
        let outcomes_second = apply_all(&mut second, &log, 1);
        prop_assert_eq!(outcomes_first, outcomes_second);
        prop_assert_eq!(first.snapshot(), second.snapshot());
    }

    /// The leader applies its own proposals from the commands it encoded
    /// (`StateMachine::apply_command`), the followers from the bytes: same outcomes, same
    /// state. A mismatch would let the leader's answers and state drift from the replicas'.
    #[test]
    fn a_leader_applying_its_commands_agrees_with_replicas_decoding_them(
        commands in command_strategy(),
        from_bytes in proptest::collection::vec(any::<bool>(), 80),
    ) {
        let mut leader = StateMachine::new();
        let mut follower = StateMachine::new();
        for ((index, command), bytes) in (1u64..).zip(commands).zip(from_bytes) {
            let data = command.encode().unwrap();
            let outcome = if bytes {
                leader.apply(index, &data)
            } else {
                leader.apply_command(index, command)
            };
            prop_assert_eq!(outcome, follower.apply(index, &data));
        }
        prop_assert_eq!(leader.snapshot(), follower.snapshot());
    }

    #[test]
    fn snapshot_then_restore_continues_like_never_snapshotting(
        log in log_strategy(),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(log.len() + 1);
        let mut straight = StateMachine::new();
        apply_all(&mut straight, &log[..cut], 1);
        let mut restored = StateMachine::restore(&straight.snapshot()).unwrap();
        prop_assert_eq!(&restored, &straight);
        let suffix_straight = apply_all(&mut straight, &log[cut..], cut as u64 + 1);
        let suffix_restored = apply_all(&mut restored, &log[cut..], cut as u64 + 1);
        prop_assert_eq!(suffix_straight, suffix_restored);
        prop_assert_eq!(straight.snapshot(), restored.snapshot());
    }

    /// Exactly-once and operation semantics against a naive model: transactions on a cloned
    /// map, sessions as a plain map of (last seq, result).
    #[test]
    fn state_machine_matches_a_naive_model(log in log_strategy()) {
        let mut state = StateMachine::new();
        let outcomes = apply_all(&mut state, &log, 1);
        let mut model = Model::default();
        for (outcome, data) in outcomes.iter().zip(&log) {
            let command = Command::decode(data).unwrap();
            prop_assert_eq!(outcome, &model.apply(command));
        }
        for (key, value) in &model.map {
            prop_assert_eq!(state.get_local(key), Some(value.clone()));
        }
        prop_assert_eq!(state.len(), model.map.len());
    }

    #[test]
    fn garbage_command_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut state = StateMachine::new();
        let outcome = state.apply(1, &data);
        prop_assert_eq!(state.applied_index(), 1);
        let mut versioned = vec![1u8];
        versioned.extend_from_slice(&data);
        let again = StateMachine::new().apply(1, &versioned);
        // A fresh state machine has no sessions: a command is applied or rejected.
        let fresh = matches!(again, ApplyOutcome::Rejected { .. } | ApplyOutcome::Applied { .. });
        prop_assert!(fresh);
        // Only bytes starting with the format version can decode to a client's command.
        let anonymous = matches!(outcome, ApplyOutcome::Rejected { client: None, .. });
        prop_assert!(anonymous || data[0] == 1);
        let _ = StateMachine::restore(&data);
        let _ = decode_request(&data);
        let _ = decode_response(&data);
    }

    #[test]
    fn corrupted_valid_commands_never_panic(
        log in log_strategy(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut state = StateMachine::new();
        let mut other = StateMachine::new();
        for (index, data) in (1u64..).zip(&log) {
            let mut corrupted = data.clone();
            for (position, byte) in &flips {
                let position = position.index(corrupted.len());
                corrupted[position] ^= byte;
            }
            let outcome = state.apply(index, &corrupted);
            prop_assert_eq!(outcome, other.apply(index, &corrupted));
        }
        prop_assert_eq!(state.snapshot(), other.snapshot());
    }

    #[test]
    fn corrupted_snapshots_never_panic(
        log in log_strategy(),
        position in any::<prop::sample::Index>(),
        byte in 1u8..,
    ) {
        let mut state = StateMachine::new();
        apply_all(&mut state, &log, 1);
        let mut snapshot = state.snapshot();
        let position = position.index(snapshot.len());
        snapshot[position] ^= byte;
        if let Ok(restored) = StateMachine::restore(&snapshot) {
            // A flip that still decodes (a changed value byte, say) must give a consistent
            // state: one whose own snapshot restores to it. (Not necessarily the same bytes:
            // bincode accepts non-minimal varints.)
            let again = StateMachine::restore(&restored.snapshot()).unwrap();
            prop_assert_eq!(again, restored);
        }
    }
}

/// The naive model: no undo log, no limits (the generated values are far below them), no
/// eviction (the generated clients are far fewer than `SESSIONS_MAX`).
#[derive(Default)]
struct Model {
    map: BTreeMap<Bytes, Value>,
    sessions: BTreeMap<u64, (u64, OpResult)>,
}

impl Model {
    fn apply(&mut self, command: Command) -> ApplyOutcome {
        let Command {
            client_id, seq, op, ..
        } = command;
        if let Some((last_seq, result)) = self.sessions.get(&client_id) {
            if seq == *last_seq {
                return ApplyOutcome::Duplicate {
                    client_id,
                    seq,
                    result: result.clone(),
                };
            }
            if seq < *last_seq {
                return ApplyOutcome::Stale {
                    client_id,
                    seq,
                    last_seq: *last_seq,
                };
            }
        }
        let result = match op {
            Op::Key(key_op) => OpResult::Key(model_key_op(&mut self.map, &key_op)),
            Op::Txn(ops) => {
                let mut map = self.map.clone();
                let mut results = Vec::new();
                let mut committed = true;
                for key_op in &ops {
                    let result = model_key_op(&mut map, key_op);
                    let failed = matches!(
                        result,
                        KeyResult::Failed(_)
                            | KeyResult::Cas {
                                succeeded: false,
                                ..
                            }
                    );
                    results.push(result);
                    if failed {
                        committed = false;
                        break;
                    }
                }
                if committed {
                    self.map = map;
                }
                OpResult::Txn { committed, results }
            }
        };
        self.sessions.insert(client_id, (seq, result.clone()));
        ApplyOutcome::Applied {
            client_id,
            seq,
            result,
        }
    }
}

fn model_key_op(map: &mut BTreeMap<Bytes, Value>, op: &KeyOp) -> KeyResult {
    match op {
        KeyOp::Get { key } => KeyResult::Get {
            value: map.get(key).cloned(),
        },
        KeyOp::Put { key, value } => {
            let existed = map
                .insert(key.clone(), Value::Bytes(value.clone()))
                .is_some();
            KeyResult::Put { existed }
        }
        KeyOp::Delete { key } => KeyResult::Delete {
            existed: map.remove(key).is_some(),
        },
        KeyOp::Cas { key, expected, new } => {
            let current = map.get(key).cloned();
            let expected = expected.clone().map(Value::Bytes);
            if current != expected {
                return KeyResult::Cas {
                    succeeded: false,
                    current,
                };
            }
            map.insert(key.clone(), Value::Bytes(new.clone()));
            KeyResult::Cas {
                succeeded: true,
                current,
            }
        }
        KeyOp::Append { key, element } => match map.get_mut(key) {
            None => {
                map.insert(key.clone(), Value::List(vec![element.clone()]));
                KeyResult::Append { length: 1 }
            }
            Some(Value::Bytes(_)) => KeyResult::Failed(OpFailure::WrongType),
            Some(Value::List(elements)) => {
                elements.push(element.clone());
                KeyResult::Append {
                    length: elements.len() as u64,
                }
            }
        },
    }
}
