//! Linearizability of one register whose written values are unique: near-linear, where the
//! general search (linear.rs) is exponential.
//!
//! When every write and every cas writes a value nobody else writes (and not the initial
//! value), each read names the one operation it saw, and a value, once overwritten, never comes
//! back. The check sweeps the history in real-time order keeping the set of *configurations*
//! a linearization can be in at that point (Lowe's just-in-time linearization, as in Knossos'
//! `linear` algorithm): the current value, how many of its readers are linearized, and which
//! open operations are linearized. At each return, every configuration is extended by
//! linearizing open operations until the returning one is linearized. Unique values keep that
//! set tiny:
//!
//! - reads of the current value and failed cas' that do not match it change nothing, so they
//!   are linearized as soon as they can be (never worse than later);
//! - a value may be overwritten only once all its readers (reads of it, cas' from it) are
//!   linearized: a reader not yet invoked could never see it again. This prunes every order of
//!   concurrent writes but the ones reads allow;
//! - a write of a value nobody reads is linearized as early as allowed, unless a write of a
//!   value some failed cas expects could precede it (placed after that write, it could end
//!   the expected value early, which the failed cas may need);
//! - without failed cas' and optional ops, a configuration that linearized a superset of
//!   another's operations while holding the same value dominates it (`Maximal`);
//! - an `info` write or cas whose value nobody observed may never have happened, and can only
//!   matter to a failed cas (Porcupine's "ran, found another value"), by moving the register
//!   off the value the cas expected: without failed cas' it is left out; with them it is
//!   *optional*, linearized only when a failed cas returns while the register still holds the
//!   value it expected. One whose value was observed happened, some time after its invocation.
//!
//! ```text
//!   W(1) |-----|           config before R(2) returns: {cur 1}
//!   W(2)    |--------|     R(2) returns: linearize W(2) (all readers of 1 done) -> {cur 2}
//!   R(2)      |---|        R(1) has not been invoked yet -> W(2) may not overwrite 1: no
//!   R(1)            |--|   configuration survives: nonlinearizable, R(2) stuck
//! ```
//!
//! Exact (the differential test in tests/oracle.rs compares it with an exhaustive search);
//! the cost is O(events x configurations x open operations).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::fxhash::{FxHashMap, FxHashSet};
use crate::history::{History, Outcome};
use crate::linear::{Failure, Limits, Partition, Verdict};
use crate::model::{compile, Interner, StateId, Step};

/// Configurations kept at once; past it the key's verdict is `unknown` (thousands of
/// concurrent unread writes would be needed to get there).
pub const CONFIGURATIONS_MAX: usize = 100_000;
/// Events between two looks at the clock and the cancel flag.
const CLOCK_CHECK_INTERVAL_EVENTS: usize = 4096;
const NEVER: usize = usize::MAX;

/// What an operation does, on interned values.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Read(StateId),
    Write(StateId),
    Cas {
        from: StateId,
        to: StateId,
    },
    /// A cas that ran and found another value (Porcupine's `fail` without error).
    CasFail {
        from: StateId,
    },
}

impl Kind {
    fn changes_state(self) -> bool {
        matches!(self, Kind::Write(_) | Kind::Cas { .. })
    }
}

struct UniqueOp {
    call: usize,
    kind: Kind,
    invoke: usize,
    /// Event of the return; `NEVER` for an `info` operation.
    ret: usize,
    /// Unobserved `info` op: may be linearized or not.
    optional: bool,
}

/// Whether a step is kept, and how.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    Required,
    Optional,
    Dropped,
}

/// One state a linearization can be in: the current value, how many of its readers are
/// linearized, and which open operations are (sorted op numbers).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Config {
    current: StateId,
    current_readers_done: u32,
    applied: Vec<u32>,
}

impl Config {
    fn has(&self, op: u32) -> bool {
        self.applied.binary_search(&op).is_ok()
    }

    fn add(&mut self, op: u32) {
        if let Err(at) = self.applied.binary_search(&op) {
            self.applied.insert(at, op);
        }
    }

    fn remove(&mut self, op: u32) {
        if let Ok(at) = self.applied.binary_search(&op) {
            self.applied.remove(at);
        }
    }
}

/// A compiled key: its operations, values and the readers each value needs.
struct Compiled {
    ops: Vec<UniqueOp>,
    interner: Interner,
    initial: StateId,
    /// Per value: reads of it plus cas' from it.
    readers: Vec<u32>,
    /// Per value: the op that wrote it, if any.
    writer: Vec<Option<u32>>,
    /// Per op, for required writes of values nobody reads or expects (`eager_blockers` from
    /// `eager_offsets[op]` to `eager_offsets[op + 1]`): the writes that keep it from being
    /// linearized early until they are (see `expected_writers`). `None` for other ops.
    eager_offsets: Vec<u32>,
    eager_blockers: Vec<u32>,
    /// Per op: whether it writes a value nobody reads or expects (a candidate for early).
    eager_candidate: Vec<bool>,
    /// No failed cas and no optional op: then a configuration that linearized a superset of
    /// another's operations, with the same current value, dominates it (see `Maximal`).
    dominance: bool,
}

/// Configurations kept only if no kept one dominates them. Without failed cas' and optional
/// ops, a configuration X dominates Y when both hold the same value and X linearized every
/// operation Y did: X can follow any continuation of Y, skipping what it already did (every
/// value it skips past had all its readers linearized, or it could not have been overwritten).
#[derive(Default)]
struct Maximal {
    by_value: FxHashMap<StateId, Vec<Config>>,
    count: usize,
}

fn is_subset(small: &[u32], big: &[u32]) -> bool {
    let mut rest = big.iter();
    small
        .iter()
        .all(|item| rest.by_ref().any(|other| other == item))
}

impl Maximal {
    /// Keeps `config` unless dominated; drops the kept ones it dominates. `true` if kept.
    fn admit(&mut self, config: &Config) -> bool {
        let kept = self.by_value.entry(config.current).or_default();
        if kept
            .iter()
            .any(|other| is_subset(&config.applied, &other.applied))
        {
            return false;
        }
        let before = kept.len();
        kept.retain(|other| !is_subset(&other.applied, &config.applied));
        kept.push(config.clone());
        self.count = self.count + kept.len() - before;
        true
    }

    fn into_configs(self) -> Vec<Config> {
        self.by_value.into_values().flatten().collect()
    }
}

/// The tables of `Compiled` for linearizing unread writes early: offsets and blockers (see
/// `expected_writers`) and which ops are candidates.
fn eager_tables(ops: &[UniqueOp], readers: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<bool>) {
    let mut expected = vec![false; readers.len()];
    for op in ops {
        if let Kind::CasFail { from } = op.kind {
            expected[from as usize] = true;
        }
    }
    let (offsets, blockers) = expected_writers(ops, readers, &expected);
    let candidate = ops
        .iter()
        .map(|op| {
            let to = match op.kind {
                Kind::Write(to) | Kind::Cas { to, .. } => to,
                _ => return false,
            };
            !op.optional && readers[to as usize] == 0 && !expected[to as usize]
        })
        .collect();
    (offsets, blockers, candidate)
}

/// For each required op writing a value nobody reads (and no failed cas expects): the writes
/// of values some failed cas expects that could be linearized before it (invoked before it
/// returns, returning after it is invoked). Placed after such a write, the unread write would
/// end that value early, which a failed cas may need; otherwise it only ever helps to place it
/// as early as allowed. Found by a sweep over those writes sorted by invocation.
fn expected_writers(ops: &[UniqueOp], readers: &[u32], expected: &[bool]) -> (Vec<u32>, Vec<u32>) {
    let written = |op: &UniqueOp| match op.kind {
        Kind::Write(to) | Kind::Cas { to, .. } => Some(to),
        _ => None,
    };
    let (mut candidates, unbounded): (Vec<u32>, Vec<u32>) = (0..ops.len() as u32)
        .filter(|&op| written(&ops[op as usize]).is_some_and(|to| expected[to as usize]))
        .partition(|&op| ops[op as usize].ret != NEVER);
    candidates.sort_unstable_by_key(|&op| ops[op as usize].invoke);
    let longest = candidates
        .iter()
        .map(|&op| ops[op as usize].ret.saturating_sub(ops[op as usize].invoke))
        .max()
        .unwrap_or(0);
    let mut offsets = Vec::with_capacity(ops.len() + 1);
    let mut lists = Vec::new();
    offsets.push(0);
    for op in ops {
        let unread =
            written(op).is_some_and(|to| readers[to as usize] == 0 && !expected[to as usize]);
        if unread && !op.optional {
            let earliest = op.invoke.saturating_sub(longest);
            let start = candidates.partition_point(|&c| ops[c as usize].invoke < earliest);
            for &candidate in &candidates[start..] {
                let other = &ops[candidate as usize];
                if other.invoke >= op.ret {
                    break;
                }
                if other.ret > op.invoke {
                    lists.push(candidate);
                }
            }
            // `info` writes never return: any invoked before this one returns may precede it.
            let early = unbounded
                .iter()
                .filter(|&&other| ops[other as usize].invoke < op.ret);
            lists.extend(early);
        }
        offsets.push(lists.len() as u32);
    }
    (offsets, lists)
}

/// The compiled steps of a partition, or `None` if a value is written twice (or the initial
/// value is written, or an append makes values): then only the general search applies.
fn compile_unique(
    history: &History,
    partition: &Partition,
) -> Result<Option<Compiled>, (usize, String)> {
    let mut interner = Interner::default();
    let initial = interner.intern(&history.initial_value);
    let mut steps = Vec::new();
    for &call_index in &partition.calls {
        let call = &history.calls()[call_index];
        let step =
            compile(history, call, &mut interner).map_err(|reason| (call.invoke_event, reason))?;
        if let Some(step) = step {
            steps.push((call_index, step));
        }
    }
    let value_count = interner.len();
    let mut written = vec![false; value_count];
    written[initial as usize] = true;
    for (_, step) in &steps {
        let target = match step {
            Step::Write(value) => *value,
            Step::CasOk { to, .. } | Step::CasMaybe { to, .. } => *to,
            Step::Append(_) => return Ok(None),
            Step::Read(_) | Step::CasFail { .. } => continue,
        };
        if std::mem::replace(&mut written[target as usize], true) {
            return Ok(None);
        }
    }
    let kept = observed_steps(history, &steps, value_count);
    Ok(Some(build(history, steps, kept, interner, initial)))
}

/// Which steps are required: all but unobserved `info` writes and cas' (those may never have
/// happened), which are optional if a failed cas could use them, else dropped. A required
/// `info` cas needs its `from` value, which may require another `info` op: a fixpoint.
fn observed_steps(history: &History, steps: &[(usize, Step)], value_count: usize) -> Vec<Keep> {
    let mut needed = vec![false; value_count];
    let mut writer_step = vec![usize::MAX; value_count];
    for (position, (call, step)) in steps.iter().enumerate() {
        let info = history.calls()[*call].outcome == Outcome::Info;
        match *step {
            Step::Read(value) => needed[value as usize] = true,
            Step::CasOk { from, .. } if !info => needed[from as usize] = true,
            _ => {}
        }
        if let Step::Write(to) | Step::CasOk { to, .. } | Step::CasMaybe { to, .. } = *step {
            writer_step[to as usize] = position;
        }
    }
    let mut kept: Vec<bool> = steps
        .iter()
        .map(|(call, _)| history.calls()[*call].outcome != Outcome::Info)
        .collect();
    let any_failed_cas = steps
        .iter()
        .any(|(_, step)| matches!(step, Step::CasFail { .. }));
    let mut work: Vec<usize> = (0..value_count).filter(|&v| needed[v]).collect();
    while let Some(value) = work.pop() {
        let position = writer_step[value];
        if position == usize::MAX || kept[position] {
            continue;
        }
        kept[position] = true;
        if let Step::CasOk { from, .. } | Step::CasMaybe { from, .. } = steps[position].1 {
            if !std::mem::replace(&mut needed[from as usize], true) {
                work.push(from as usize);
            }
        }
    }
    kept.into_iter()
        .zip(steps)
        .map(|(kept, (_, step))| match (kept, step) {
            (true, _) => Keep::Required,
            (false, Step::Read(_)) => Keep::Dropped,
            (false, _) if any_failed_cas => Keep::Optional,
            (false, _) => Keep::Dropped,
        })
        .collect()
}

fn build(
    history: &History,
    steps: Vec<(usize, Step)>,
    kept: Vec<Keep>,
    interner: Interner,
    initial: StateId,
) -> Compiled {
    let value_count = interner.len();
    let mut readers = vec![0u32; value_count];
    let mut writer = vec![None; value_count];
    let mut ops = Vec::with_capacity(steps.len());
    for ((call_index, step), keep) in steps.into_iter().zip(kept) {
        let optional = keep == Keep::Optional;
        let kind = match step {
            _ if keep == Keep::Dropped => continue,
            Step::Read(value) => Kind::Read(value),
            Step::Write(value) => Kind::Write(value),
            Step::CasOk { from, to } | Step::CasMaybe { from, to } => Kind::Cas { from, to },
            Step::CasFail { from } => Kind::CasFail { from },
            // compile_unique refuses partitions with appends before they get here.
            Step::Append(_) => continue,
        };
        let op = ops.len() as u32;
        match kind {
            Kind::Read(value) => readers[value as usize] += 1,
            Kind::Cas { from, .. } if !optional => readers[from as usize] += 1,
            _ => {}
        }
        if let Kind::Write(to) | Kind::Cas { to, .. } = kind {
            writer[to as usize] = Some(op);
        }
        let call = &history.calls()[call_index];
        let ret = match call.outcome {
            Outcome::Info => NEVER,
            Outcome::Ok | Outcome::Fail => call.complete_event.unwrap_or(NEVER),
        };
        ops.push(UniqueOp {
            call: call_index,
            kind,
            invoke: call.invoke_event,
            ret,
            optional,
        });
    }
    let (eager_offsets, eager_blockers, eager_candidate) = eager_tables(&ops, &readers);
    let dominance = !ops
        .iter()
        .any(|op| op.optional || matches!(op.kind, Kind::CasFail { .. }));
    Compiled {
        ops,
        interner,
        initial,
        readers,
        writer,
        eager_offsets,
        eager_blockers,
        eager_candidate,
        dominance,
    }
}

/// The sweep's state.
struct Sweep<'a> {
    compiled: &'a Compiled,
    /// Invoked, not returned (observed `info` ops stay until every config linearized them).
    open: Vec<u32>,
    /// Invoked optional ops (unobserved `info`), until linearized everywhere or useless.
    optional: Vec<u32>,
    configs: Vec<Config>,
    returned: usize,
    /// Ops linearized in every configuration and no longer tracked.
    done: Vec<bool>,
    /// Required `info` ops in `open` (they have no return to remove them).
    never_returning_open: usize,
}

impl Sweep<'_> {
    /// Linearizes every open operation that changes nothing and may happen now.
    ///
    /// So is a required write of a value nobody reads or expects, once it may happen and no
    /// unplaced write of an expected value could come before it: linearizing it as early as
    /// allowed destroys no value anyone still needs, and only later could it end an expected
    /// value early (which a failed cas may need). This keeps concurrent unread writes from
    /// multiplying the configurations.
    fn settle(&self, config: &mut Config) {
        let mut changed = true;
        while changed {
            changed = false;
            for &op in &self.open {
                if config.has(op) {
                    continue;
                }
                match self.compiled.ops[op as usize].kind {
                    Kind::Read(value) if value == config.current => {
                        config.current_readers_done += 1;
                        config.add(op);
                    }
                    Kind::CasFail { from } if from != config.current => config.add(op),
                    Kind::Write(_) | Kind::Cas { .. } if self.unread_write_free(config, op) => {
                        if let Some(to) = self.target(config, op) {
                            config.current = to;
                            config.current_readers_done = 0;
                            config.add(op);
                            changed = true;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Whether `op` writes a value nobody reads or expects, and every write of an expected
    /// value that could precede it is placed.
    fn unread_write_free(&self, config: &Config, op: u32) -> bool {
        let compiled = self.compiled;
        if !compiled.eager_candidate[op as usize] {
            return false;
        }
        let range = compiled.eager_offsets[op as usize] as usize
            ..compiled.eager_offsets[op as usize + 1] as usize;
        compiled.eager_blockers[range]
            .iter()
            .all(|&writer| config.has(writer) || self.done[writer as usize])
    }

    /// The value a state-changing `op` writes, if it may happen in `config` now: a write once
    /// every reader of the current value is linearized; a cas from the current value once
    /// every other reader is (the cas itself reads it, unless it is optional).
    fn target(&self, config: &Config, op: u32) -> Option<StateId> {
        let current = config.current;
        let readers = self.compiled.readers[current as usize];
        let unique_op = &self.compiled.ops[op as usize];
        let own = u32::from(!unique_op.optional);
        match unique_op.kind {
            Kind::Write(to) if config.current_readers_done == readers => Some(to),
            Kind::Cas { from, to } if from == current => {
                (config.current_readers_done + own == readers).then_some(to)
            }
            _ => None,
        }
    }

    /// `config` after linearizing the state-changing `op`, if it may happen now.
    fn step(&self, config: &Config, op: u32) -> Option<Config> {
        let to = self.target(config, op)?;
        let mut next = config.clone();
        next.current = to;
        next.current_readers_done = 0;
        next.add(op);
        self.settle(&mut next);
        Some(next)
    }

    /// Every configuration reachable from `start` in which `target` is linearized (stopping
    /// there: later operations can wait for later returns).
    fn extend(&self, start: &Config, target: u32, found: &mut FxHashSet<Config>) -> bool {
        let mut start = start.clone();
        self.settle(&mut start);
        let mut seen: FxHashSet<Config> = FxHashSet::default();
        let mut maximal = Maximal::default();
        let dominance = self.compiled.dominance;
        let mut stack = vec![start];
        // Optional ops only ever help a failed cas off the value it expected.
        let failed_cas = matches!(
            self.compiled.ops[target as usize].kind,
            Kind::CasFail { .. }
        );
        let optional: &[u32] = if failed_cas { &self.optional } else { &[] };
        while let Some(config) = stack.pop() {
            if config.has(target) {
                found.insert(config);
                if found.len() > CONFIGURATIONS_MAX {
                    return false;
                }
                continue;
            }
            for &op in self.open.iter().chain(optional) {
                let unique_op = &self.compiled.ops[op as usize];
                if config.has(op) || !unique_op.kind.changes_state() {
                    continue;
                }
                if let Some(next) = self.step(&config, op) {
                    let new = match dominance {
                        true => maximal.admit(&next),
                        false => seen.insert(next.clone()),
                    };
                    if new {
                        stack.push(next);
                    }
                }
            }
            if seen.len().max(maximal.count) > CONFIGURATIONS_MAX {
                return false;
            }
        }
        true
    }

    /// Handles the return of `op`; `Err` with a reason when the key must be given up.
    fn handle_return(&mut self, op: u32) -> Result<bool, String> {
        if self.configs.len() == 1 {
            // The common case: one configuration, and the returning op is already linearized
            // or only needs the ops that change nothing.
            let mut only = self.configs[0].clone();
            self.settle(&mut only);
            if only.has(op) {
                only.remove(op);
                self.configs[0] = only;
                self.finish_return(op);
                return Ok(true);
            }
        }
        let mut found = FxHashSet::default();
        for config in &self.configs {
            if !self.extend(config, op, &mut found) {
                return Err(format!(
                    "more than {CONFIGURATIONS_MAX} configurations (too many concurrent unread \
                     writes)"
                ));
            }
        }
        if found.is_empty() {
            return Ok(false);
        }
        let found: Vec<Config> = match self.compiled.dominance {
            true => {
                let mut maximal = Maximal::default();
                for config in &found {
                    maximal.admit(config);
                }
                maximal.into_configs()
            }
            false => found.into_iter().collect(),
        };
        self.configs = found
            .into_iter()
            .map(|mut config| {
                config.remove(op);
                config
            })
            .collect();
        self.finish_return(op);
        Ok(true)
    }

    fn finish_return(&mut self, op: u32) {
        if let Some(at) = self.open.iter().position(|&open| open == op) {
            self.open.swap_remove(at);
        }
        self.returned += 1;
        self.done[op as usize] = true;
        if self.never_returning_open > 0 || !self.optional.is_empty() || self.configs.len() > 1 {
            self.retire_never_returning();
        }
    }

    /// An `info` op that every configuration has linearized is done for good; so is an
    /// optional cas whose `from` is gone for good in every configuration.
    fn retire_never_returning(&mut self) {
        let mut open = std::mem::take(&mut self.open);
        let before = open.len();
        self.retire(&mut open);
        self.never_returning_open -= before - open.len();
        self.open = open;
        let mut optional = std::mem::take(&mut self.optional);
        self.retire(&mut optional);
        self.optional = optional;
        self.configs.sort_unstable_by(|a, b| {
            (a.current, a.current_readers_done, &a.applied).cmp(&(
                b.current,
                b.current_readers_done,
                &b.applied,
            ))
        });
        self.configs.dedup();
    }

    fn retire(&mut self, list: &mut Vec<u32>) {
        let compiled = self.compiled;
        let configs = &mut self.configs;
        let done = &mut self.done;
        list.retain(|&op| {
            let unique_op = &compiled.ops[op as usize];
            if unique_op.ret != NEVER {
                return true;
            }
            let unreachable = |config: &Config| match unique_op.kind {
                Kind::Cas { from, .. } if unique_op.optional => {
                    from != config.current
                        && (from == compiled.initial
                            || compiled.writer[from as usize]
                                .is_some_and(|writer| config.has(writer) || done[writer as usize]))
                }
                _ => false,
            };
            let applied = configs.iter().all(|config| config.has(op));
            if !applied && !configs.iter().all(unreachable) {
                return true;
            }
            for config in configs.iter_mut() {
                config.remove(op);
            }
            done[op as usize] = applied;
            false
        });
    }
}

/// Checks one partition if its values are unique; `Ok(None)` if they are not.
pub fn check(
    history: &History,
    partition: &Partition,
    limits: &Limits,
    cancel: &AtomicBool,
) -> Result<Option<Verdict>, (usize, String)> {
    let Some(compiled) = compile_unique(history, partition)? else {
        return Ok(None);
    };
    let mut events: Vec<(usize, bool, u32)> = Vec::with_capacity(compiled.ops.len() * 2);
    for (position, op) in compiled.ops.iter().enumerate() {
        events.push((op.invoke, false, position as u32));
        if op.ret != NEVER {
            events.push((op.ret, true, position as u32));
        }
    }
    events.sort_unstable();
    let start = Config {
        current: compiled.initial,
        current_readers_done: 0,
        applied: Vec::new(),
    };
    let mut sweep = Sweep {
        compiled: &compiled,
        open: Vec::new(),
        optional: Vec::new(),
        configs: vec![start],
        returned: 0,
        done: vec![false; compiled.ops.len()],
        never_returning_open: 0,
    };
    for (count, &(_, is_return, op)) in events.iter().enumerate() {
        if count % CLOCK_CHECK_INTERVAL_EVENTS == 0 {
            if let Some(reason) = stop_reason(limits, cancel) {
                return Ok(Some(Verdict::Unknown(reason)));
            }
        }
        if !is_return {
            let unique_op = &compiled.ops[op as usize];
            match unique_op.optional {
                true => sweep.optional.push(op),
                false => sweep.open.push(op),
            }
            if !unique_op.optional && unique_op.ret == NEVER {
                sweep.never_returning_open += 1;
            }
            continue;
        }
        match sweep.handle_return(op) {
            Ok(true) => {}
            Ok(false) => {
                let failure = failure(history, &sweep, op);
                return Ok(Some(Verdict::Violation(failure)));
            }
            Err(reason) => return Ok(Some(Verdict::Unknown(reason))),
        }
    }
    Ok(Some(Verdict::Linearizable))
}

fn stop_reason(limits: &Limits, cancel: &AtomicBool) -> Option<String> {
    if cancel.load(Ordering::Relaxed) {
        return Some("cancelled: another key already failed".to_string());
    }
    limits
        .deadline
        .is_some_and(|deadline| Instant::now() >= deadline)
        .then(|| "time limit reached".to_string())
}

/// A value some configuration holds that an operation invoked after `stuck` returned still
/// needs: why the register could not move on in time.
fn later_reader<'a>(
    compiled: &'a Compiled,
    states: &[StateId],
    stuck: &UniqueOp,
) -> Option<(StateId, &'a UniqueOp)> {
    states.iter().find_map(|&held| {
        compiled
            .ops
            .iter()
            .filter(|op| op.invoke > stuck.ret && !op.optional)
            .find(|op| match op.kind {
                Kind::Read(value) => value == held,
                Kind::Cas { from, .. } => from == held,
                _ => false,
            })
            .map(|op| (held, op))
    })
}

/// Why `stuck` could not be linearized before its return, in words a person can check.
fn failure(history: &History, sweep: &Sweep<'_>, stuck: u32) -> Failure {
    let compiled = sweep.compiled;
    let op = &compiled.ops[stuck as usize];
    let value = |id: StateId| compiled.interner.value(id).clone();
    let mut states: Vec<StateId> = sweep.configs.iter().map(|config| config.current).collect();
    states.sort_unstable();
    states.dedup();
    let held: Vec<String> = states.iter().map(|&id| value(id).to_string()).collect();
    let needed = match op.kind {
        Kind::Read(v) | Kind::Cas { from: v, .. } => Some(v),
        _ => None,
    };
    let reason = match needed.map(|v| (v, compiled.writer[v as usize])) {
        Some((v, None)) if v != compiled.initial => {
            format!("no operation wrote {}", value(v))
        }
        Some((v, Some(writer))) if compiled.ops[writer as usize].invoke > op.ret => format!(
            "{} was written by call {}, invoked only after this call returned (a read from \
             the future)",
            value(v),
            compiled.ops[writer as usize].call
        ),
        Some((v, _)) => match later_reader(compiled, &states, op) {
            Some((held_value, reader)) => format!(
                "{} would have to replace {} by then, but call {} (line {}) reads {} later, \
                 and a value, once overwritten, never comes back",
                value(v),
                value(held_value),
                reader.call,
                history.line_of(reader.invoke),
                value(held_value)
            ),
            None => format!(
                "the register cannot hold {} then: it could only hold {} (a value, once \
                 overwritten, never comes back)",
                value(v),
                held.join(" or ")
            ),
        },
        None => format!(
            "its write could not be placed: the register held {} and some of its readers had \
             not run yet",
            held.join(" or ")
        ),
    };
    Failure {
        longest: Vec::new(),
        longest_length: sweep.returned,
        state_after: value(states.first().copied().unwrap_or(compiled.initial)),
        stuck: op.call,
        pending: sweep
            .open
            .iter()
            .chain(&sweep.optional)
            .filter(|&&open| open != stuck)
            .map(|&open| compiled.ops[open as usize].call)
            .take(24)
            .collect(),
        reason: Some(reason),
    }
}
