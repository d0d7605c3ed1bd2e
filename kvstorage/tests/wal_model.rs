//! Model-based property test of the WAL: random appends (with conflict repair), hard states,
//! syncs, compactions and crashes, against an in-memory model.
//!
//! A crash either cuts the current segment at a random byte after the last sync (the rest reads
//! as zeros, or the file ends there) or flips a random bit in the unsynced tail, then reopens.
//! After every reopen the recovered log must equal the model's synced state, or that state
//! plus a prefix of the records written since (whole records only): never less, never a
//! corrupt record.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{batch, entry, small_config};
use kvraft::message::{Entry, HardState, Index};
use kvstorage::wal::{Recovered, WalConfig, WalWriter, WriteBatch};
use proptest::prelude::*;

const HEADER_BYTES: u64 = kvstorage::wal::segment::SEGMENT_HEADER_BYTES as u64;

#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    first_index: Index,
    entries: Vec<Entry>,
    hard_state: HardState,
    compacted_index: Index,
}

impl State {
    fn new() -> State {
        State {
            first_index: 1,
            entries: vec![],
            hard_state: HardState::default(),
            compacted_index: 0,
        }
    }

    fn last_index(&self) -> Index {
        self.first_index + self.entries.len() as u64 - 1
    }

    fn truncate_from(&mut self, from: Index) {
        if from <= self.first_index {
            self.entries.clear();
            self.first_index = from;
        } else {
            self.entries.truncate((from - self.first_index) as usize);
        }
    }

    fn compact(&mut self, up_to: Index) {
        self.compacted_index = self.compacted_index.max(up_to);
        if up_to >= self.first_index {
            let dropped = ((up_to - self.first_index + 1) as usize).min(self.entries.len());
            self.entries.drain(..dropped);
            self.first_index = up_to + 1;
        }
    }

    fn of(recovered: &Recovered) -> State {
        State {
            first_index: recovered.first_index,
            entries: recovered.entries.clone(),
            hard_state: recovered.hard_state,
            compacted_index: recovered.compacted_index,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        conflict: u8,
        count: u8,
        payload_bytes: u16,
        with_hard_state: bool,
        new_term: bool,
    },
    Sync,
    Compact {
        back: u8,
        beyond: bool,
    },
    Crash {
        mode: u8,
        at: u64,
        bit: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0u8..5, 0u16..400, any::<bool>(), proptest::bool::weighted(0.1)).prop_map(
            |(conflict, count, payload_bytes, with_hard_state, new_term)| Op::Append {
                conflict, count, payload_bytes, with_hard_state, new_term
            }
        ),
        2 => Just(Op::Sync),
        1 => (0u8..8, proptest::bool::weighted(0.15))
            .prop_map(|(back, beyond)| Op::Compact { back, beyond }),
        2 => (0u8..3, any::<u64>(), 0u8..8).prop_map(|(mode, at, bit)| Op::Crash { mode, at, bit }),
    ]
}

/// The test's model: the synced state and the states after each unsynced record since.
struct Model {
    term: u64,
    durable: State,
    unsynced: Vec<State>,
}

impl Model {
    fn current(&self) -> &State {
        self.unsynced.last().unwrap_or(&self.durable)
    }

    fn make_batch(&mut self, op: &Op) -> (WriteBatch, Option<Index>) {
        let Op::Append {
            conflict,
            count,
            payload_bytes,
            with_hard_state,
            new_term,
        } = *op
        else {
            unreachable!()
        };
        let current = self.current().clone();
        let mut from = current.last_index() + 1;
        if conflict > 0 && count > 0 {
            from = from
                .saturating_sub(u64::from(conflict))
                .max(current.compacted_index + 1);
        }
        let truncating = count > 0 && from <= current.last_index();
        if new_term || truncating {
            self.term += 1;
        }
        let entries: Vec<Entry> = (from..from + u64::from(count))
            .map(|index| entry(index, self.term, usize::from(payload_bytes)))
            .collect();
        let hard_state = with_hard_state.then(|| HardState {
            term: self.term,
            vote: u64::from(payload_bytes % 3),
            commit: current.last_index().min(u64::from(payload_bytes)),
        });
        (batch(entries, hard_state), truncating.then_some(from))
    }

    /// Records the states after each record of `batch`. A segment roll synced what came before
    /// (and made a truncation boundary durable with the new segment's header).
    fn written(&mut self, batch: &WriteBatch, truncation: Option<Index>, rolled: bool) {
        let mut state = self.current().clone();
        if rolled {
            if let Some(from) = truncation {
                state.truncate_from(from);
            }
            self.durable = state.clone();
            self.unsynced.clear();
        } else if let Some(from) = truncation {
            state.truncate_from(from);
            self.unsynced.push(state.clone());
        }
        for entry in &batch.entries {
            state.entries.push(entry.clone());
            self.unsynced.push(state.clone());
        }
        if let Some(hard_state) = batch.hard_state {
            state.hard_state = hard_state;
            self.unsynced.push(state);
        }
    }

    fn synced(&mut self) {
        self.durable = self.current().clone();
        self.unsynced.clear();
    }
}

fn crash(writer: WalWriter, mode: u8, at: u64, bit: u8) {
    let tail = writer.tail_position();
    drop(writer);
    let unsynced_bytes = tail.written_bytes - tail.synced_bytes;
    if unsynced_bytes == 0 || mode == 0 {
        return;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tail.path)
        .unwrap();
    match mode {
        1 => {
            // Cut at a random byte after the last sync; what follows reads as zeros, or (one
            // time in four) the file itself ends there.
            let cut = tail.synced_bytes + at % (unsynced_bytes + 1);
            if at.is_multiple_of(4) {
                file.set_len(cut).unwrap();
            } else {
                let zeros = vec![0u8; (tail.written_bytes - cut) as usize];
                file.write_all_at(&zeros, cut).unwrap();
            }
        }
        _ => {
            let offset = tail.synced_bytes + at % unsynced_bytes;
            let mut offsets = vec![offset];
            // A segment's header (unsynced right after a roll) shares its sector with the
            // first record: a garbled write garbles both. A bad header before an intact record
            // is damage to synced data, refused (wal_crash.rs tests that).
            if offset < HEADER_BYTES && tail.written_bytes >= HEADER_BYTES + 8 {
                offsets.push(HEADER_BYTES + offset % 8);
            }
            for offset in offsets {
                let mut byte = [0u8; 1];
                file.read_exact_at(&mut byte, offset).unwrap();
                byte[0] ^= 1 << bit;
                file.write_all_at(&byte, offset).unwrap();
            }
        }
    }
}

fn reopen(dir: &Path, config: &WalConfig, model: &mut Model) -> Result<WalWriter, TestCaseError> {
    let (writer, recovered) = WalWriter::open(dir, config.clone())
        .map_err(|error| TestCaseError::fail(format!("reopen refused: {error}")))?;
    let found = State::of(&recovered);
    let candidates = std::iter::once(&model.durable).chain(model.unsynced.iter());
    prop_assert!(
        candidates.clone().any(|candidate| *candidate == found),
        "recovered {:?}\nsynced {:?}\nunsynced candidates {}",
        found,
        model.durable,
        model.unsynced.len()
    );
    model.durable = found;
    model.unsynced.clear();
    Ok(writer)
}

fn run(ops: Vec<Op>, segment_bytes_max: u64) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(segment_bytes_max);
    let mut model = Model {
        term: 1,
        durable: State::new(),
        unsynced: vec![],
    };
    let (mut writer, _) = WalWriter::open(dir.path(), config.clone()).unwrap();
    for op in ops {
        match op {
            Op::Append { .. } => {
                let (batch, truncation) = model.make_batch(&op);
                let before = writer.tail_position().path;
                writer.write(&batch).unwrap();
                let rolled = writer.tail_position().path != before;
                model.written(&batch, truncation, rolled);
            }
            Op::Sync => {
                let durable = writer.sync().unwrap();
                model.synced();
                prop_assert_eq!(durable.last_index, model.durable.last_index());
                prop_assert_eq!(durable.hard_state, model.durable.hard_state);
            }
            Op::Compact { back, beyond } => {
                let last = model.current().last_index();
                let up_to = if beyond {
                    last + 3
                } else {
                    last.saturating_sub(u64::from(back))
                };
                writer.compact(up_to).unwrap();
                model.synced();
                model.durable.compact(up_to);
            }
            Op::Crash { mode, at, bit } => {
                crash(writer, mode, at, bit);
                writer = reopen(dir.path(), &config, &mut model)?;
            }
        }
    }
    // A final clean sync and restart gives back exactly the model's state.
    writer.sync().unwrap();
    model.synced();
    drop(writer);
    let (_, recovered) = WalWriter::open(dir.path(), config).unwrap();
    prop_assert_eq!(State::of(&recovered), model.durable);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn wal_model_with_crashes(
        ops in proptest::collection::vec(op(), 1..60),
        segment_bytes_max in prop_oneof![Just(2048u64), Just(8192u64)],
    ) {
        run(ops, segment_bytes_max)?;
    }
}
