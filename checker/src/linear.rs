//! Linearizability: the Wing–Gong search with Lowe's memoization (as in Porcupine), split per
//! key and run on all cores.
//!
//! The history of one key becomes a doubly linked list of call and return entries in real-time
//! order. The search walks the list: at a call entry it tries to linearize that call now (the
//! model accepts it and the pair (set of linearized calls, state) was never seen), which lifts
//! the call and its return out of the list and restarts from the head; at a return entry whose
//! call is not linearized yet it backtracks. `info` calls return after every other event, so
//! they may be linearized at any point after their invocation, or left to the very end, which
//! is the same as never.
//!
//! ```text
//!   list:  C0 C1 R0 C2 R1 R2        lift(C1): C0 R0 C2 R2   (C1 linearized first)
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::fxhash::{hash_words, FxHashMap};
use crate::model::{compile, Interner, KeyModel, StateId, Step};
use crate::value::Value;
use crate::History;

const NIL: u32 = u32::MAX;
const HEAD: u32 = 0;
/// Loop iterations between two looks at the clock and the cancel flag.
const CLOCK_CHECK_INTERVAL_ITERATIONS: u64 = 4096;
/// Pending calls listed around a failure point.
const FAILURE_PENDING_CALLS_MAX: usize = 24;

/// The calls of one key, by index into [`History::calls`], in invocation order.
pub struct Partition {
    pub key: Option<Value>,
    pub calls: Vec<usize>,
}

/// Why no linearization exists, from the deepest point the search reached.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The longest partial linearization, calls in linearization order (empty when only its
    /// length is known).
    pub longest: Vec<usize>,
    /// Calls in the longest partial linearization.
    pub longest_length: usize,
    /// The model state after `longest`.
    pub state_after: Value,
    /// The call whose return could not be passed: it cannot be linearized there.
    pub stuck: usize,
    /// Other calls that were open (invoked, not linearized) at that point.
    pub pending: Vec<usize>,
    /// Why, when the check can say more than "no order fits".
    pub reason: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Verdict {
    Linearizable,
    Violation(Failure),
    Unknown(String),
}

/// Limits of one search run.
pub struct Limits {
    pub deadline: Option<Instant>,
    /// Memo table size limit per partition, in bytes (keeps a hard history from eating RAM).
    pub memo_bytes_max: usize,
}

/// A compiled partition: steps and the real-time order of their call/return entries.
struct Compiled {
    calls: Vec<usize>,
    steps: Vec<Step>,
    model: KeyModel,
    initial: StateId,
    /// Entries sorted by time: `2 * step` is a call entry, `2 * step + 1` its return.
    order: Vec<u32>,
}

fn compile_partition(
    history: &History,
    partition: &Partition,
) -> Result<Compiled, (usize, String)> {
    let mut interner = Interner::default();
    let initial = interner.intern(&history.initial_value);
    let mut calls = Vec::new();
    let mut steps = Vec::new();
    let mut timed: Vec<(u64, u32)> = Vec::new();
    for &call_index in &partition.calls {
        let call = &history.calls()[call_index];
        let step =
            compile(history, call, &mut interner).map_err(|reason| (call.invoke_event, reason))?;
        let Some(step) = step else { continue };
        let entry = 2 * steps.len() as u32;
        let return_position = if call.returned() {
            call.complete_event
        } else {
            None
        };
        timed.push((call.invoke_event as u64, entry));
        timed.push((
            return_position.map_or(u64::MAX, |event| event as u64),
            entry + 1,
        ));
        calls.push(call_index);
        steps.push(step);
    }
    timed.sort_unstable();
    let order = timed.into_iter().map(|(_, entry)| entry).collect();
    Ok(Compiled {
        calls,
        steps,
        model: KeyModel::new(interner),
        initial,
        order,
    })
}

/// Set of (linearized calls, state) pairs already explored. Bitsets live in one flat arena;
/// `heads` maps a hash to the newest arena slot with that hash, `chain` links older ones.
struct Memo {
    words: usize,
    arena: Vec<u64>,
    states: Vec<StateId>,
    chain: Vec<u32>,
    heads: FxHashMap<u64, u32>,
}

impl Memo {
    fn new(words: usize) -> Self {
        Memo {
            words,
            arena: Vec::new(),
            states: Vec::new(),
            chain: Vec::new(),
            heads: FxHashMap::default(),
        }
    }

    /// Inserts; `false` if the pair was already present.
    fn insert(&mut self, bits: &[u64], state: StateId) -> bool {
        let hash = hash_words(bits, u64::from(state));
        let head = self.heads.get(&hash).copied().unwrap_or(NIL);
        let mut slot = head;
        while slot != NIL {
            let start = slot as usize * self.words;
            if self.states[slot as usize] == state && self.arena[start..start + self.words] == *bits
            {
                return false;
            }
            slot = self.chain[slot as usize];
        }
        let new_slot = self.states.len() as u32;
        self.arena.extend_from_slice(bits);
        self.states.push(state);
        self.chain.push(head);
        self.heads.insert(hash, new_slot);
        true
    }

    fn bytes(&self) -> usize {
        self.arena.len() * 8 + self.states.len() * 8 + self.heads.len() * 16
    }
}

/// The entry list: node `entry + 1` holds `entry`, node 0 is the head.
struct EntryList {
    next: Vec<u32>,
    prev: Vec<u32>,
}

impl EntryList {
    fn new(order: &[u32]) -> Self {
        let nodes = order.len() + 1;
        let mut next = vec![NIL; nodes];
        let mut prev = vec![NIL; nodes];
        let mut last = HEAD;
        for &entry in order {
            let node = entry + 1;
            next[last as usize] = node;
            prev[node as usize] = last;
            last = node;
        }
        EntryList { next, prev }
    }

    fn unlink(&mut self, node: u32) {
        let (before, after) = (self.prev[node as usize], self.next[node as usize]);
        self.next[before as usize] = after;
        if after != NIL {
            self.prev[after as usize] = before;
        }
    }

    fn relink(&mut self, node: u32) {
        let (before, after) = (self.prev[node as usize], self.next[node as usize]);
        self.next[before as usize] = node;
        if after != NIL {
            self.prev[after as usize] = node;
        }
    }

    /// Removes call `step`'s call and return entries.
    fn lift(&mut self, step: u32) {
        self.unlink(2 * step + 1);
        self.unlink(2 * step + 2);
    }

    /// Undoes [`Self::lift`]; the removals must be undone in reverse order.
    fn unlift(&mut self, step: u32) {
        self.relink(2 * step + 2);
        self.relink(2 * step + 1);
    }
}

fn bit_set(bits: &mut [u64], index: u32) {
    bits[(index / 64) as usize] |= 1 << (index % 64);
}

fn bit_clear(bits: &mut [u64], index: u32) {
    bits[(index / 64) as usize] &= !(1 << (index % 64));
}

/// Runs the search on one compiled partition.
fn search(compiled: &mut Compiled, limits: &Limits, cancel: &AtomicBool) -> Verdict {
    let step_count = compiled.steps.len();
    let mut list = EntryList::new(&compiled.order);
    let mut linearized = vec![0u64; step_count.div_ceil(64).max(1)];
    let mut memo = Memo::new(linearized.len());
    let mut stack: Vec<(u32, StateId)> = Vec::new();
    let mut state = compiled.initial;
    let mut node = list.next[HEAD as usize];
    let mut failure: Option<Failure> = None;
    let mut iterations: u64 = 0;
    while list.next[HEAD as usize] != NIL {
        iterations += 1;
        if iterations.is_multiple_of(CLOCK_CHECK_INTERVAL_ITERATIONS) {
            if let Some(reason) = stop_reason(limits, cancel, &memo) {
                return Verdict::Unknown(reason);
            }
        }
        let entry = node - 1;
        let step = entry / 2;
        if entry.is_multiple_of(2) {
            let next_state = compiled
                .model
                .apply(state, &compiled.steps[step as usize], step);
            if let Some(next_state) = next_state {
                bit_set(&mut linearized, step);
                if memo.insert(&linearized, next_state) {
                    stack.push((step, state));
                    state = next_state;
                    list.lift(step);
                    node = list.next[HEAD as usize];
                    continue;
                }
                bit_clear(&mut linearized, step);
            }
            node = list.next[node as usize];
            continue;
        }
        let deeper = failure
            .as_ref()
            .is_none_or(|known| stack.len() > known.longest_length);
        if deeper {
            failure = Some(describe_failure(compiled, &list, &stack, state, node));
        }
        let Some((undone, previous_state)) = stack.pop() else {
            return failure.map_or(Verdict::Linearizable, Verdict::Violation);
        };
        state = previous_state;
        bit_clear(&mut linearized, undone);
        list.unlift(undone);
        node = list.next[undone as usize * 2 + 1];
    }
    Verdict::Linearizable
}

fn stop_reason(limits: &Limits, cancel: &AtomicBool, memo: &Memo) -> Option<String> {
    if cancel.load(Ordering::Relaxed) {
        return Some("cancelled: another key already failed".to_string());
    }
    if limits
        .deadline
        .is_some_and(|deadline| Instant::now() >= deadline)
    {
        return Some("time limit reached".to_string());
    }
    if memo.bytes() > limits.memo_bytes_max {
        return Some(format!(
            "memo table exceeded {} bytes",
            limits.memo_bytes_max
        ));
    }
    None
}

/// Describes the point where the return entry `node` could not be passed.
fn describe_failure(
    compiled: &Compiled,
    list: &EntryList,
    stack: &[(u32, StateId)],
    state: StateId,
    node: u32,
) -> Failure {
    let global = |step: u32| compiled.calls[step as usize];
    let mut pending = Vec::new();
    let mut cursor = list.next[HEAD as usize];
    while cursor != node && cursor != NIL && pending.len() < FAILURE_PENDING_CALLS_MAX {
        let entry = cursor - 1;
        if entry.is_multiple_of(2) {
            pending.push(global(entry / 2));
        }
        cursor = list.next[cursor as usize];
    }
    Failure {
        longest: stack.iter().map(|&(step, _)| global(step)).collect(),
        longest_length: stack.len(),
        state_after: compiled.model.interner.value(state).clone(),
        stuck: global((node - 1) / 2),
        pending,
        reason: None,
    }
}

/// Which algorithm decided a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// unique.rs: every written value unique.
    UniqueValues,
    /// The Wing–Gong/Lowe search.
    Search,
}

/// A partition's outcome, or a call the model cannot compile (event position, reason).
pub type PartitionOutcome = Result<(Verdict, Algorithm), (usize, String)>;

/// Checks every partition, largest first, on `threads` threads. Once one partition fails,
/// the others stop early (their verdicts are `Unknown("cancelled...")`).
pub fn check_partitions(
    history: &History,
    partitions: &[Partition],
    limits: &Limits,
    threads: usize,
) -> Vec<PartitionOutcome> {
    let mut order: Vec<usize> = (0..partitions.len()).collect();
    order.sort_by_key(|&index| std::cmp::Reverse(partitions[index].calls.len()));
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let workers = threads.clamp(1, partitions.len().max(1));
    let mut results: Vec<Option<PartitionOutcome>> = vec![None; partitions.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let position = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&index) = order.get(position) else {
                            break;
                        };
                        let outcome = check_one(history, &partitions[index], limits, &cancel);
                        if matches!(outcome, Ok((Verdict::Violation(_), _)) | Err(_)) {
                            cancel.store(true, Ordering::Relaxed);
                        }
                        done.push((index, outcome));
                    }
                    done
                })
            })
            .collect();
        for handle in handles {
            // A panicking worker is a checker bug: propagate it.
            let done = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (index, outcome) in done {
                results[index] = Some(outcome);
            }
        }
    });
    let cancelled = || {
        let reason = "cancelled: another key already failed".to_string();
        Ok((Verdict::Unknown(reason), Algorithm::Search))
    };
    results
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(cancelled))
        .collect()
}

fn check_one(
    history: &History,
    partition: &Partition,
    limits: &Limits,
    cancel: &AtomicBool,
) -> PartitionOutcome {
    if cancel.load(Ordering::Relaxed) {
        let reason = "cancelled: another key already failed".to_string();
        return Ok((Verdict::Unknown(reason), Algorithm::Search));
    }
    if limits
        .deadline
        .is_some_and(|deadline| Instant::now() >= deadline)
    {
        let reason = "time limit reached".to_string();
        return Ok((Verdict::Unknown(reason), Algorithm::Search));
    }
    if let Some(verdict) = crate::unique::check(history, partition, limits, cancel)? {
        return Ok((verdict, Algorithm::UniqueValues));
    }
    let mut compiled = compile_partition(history, partition)?;
    Ok((search(&mut compiled, limits, cancel), Algorithm::Search))
}

/// The general search alone (tests compare it with the unique-value check).
pub fn search_partition(
    history: &History,
    partition: &Partition,
    limits: &Limits,
) -> PartitionOutcome {
    let cancel = AtomicBool::new(false);
    let mut compiled = compile_partition(history, partition)?;
    Ok((search(&mut compiled, limits, &cancel), Algorithm::Search))
}
