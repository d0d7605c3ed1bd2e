//! Linearizability of append-only lists with unique elements, in O(n log n).
//!
//! A general search (Wing-Gong) over list values is exponential in the operations of unknown
//! outcome. With unique elements the final list fixes the order of every append that took
//! effect, and a history is linearizable exactly when:
//!
//! 1. the final list holds no element twice (exactly-once) and only elements some append
//!    invoked;
//! 2. every acknowledged append is in the final list (no lost write), and no append answered
//!    as not applied is;
//! 3. every successful read is a prefix of the final list;
//! 4. real time agrees with list order: an append (or a read) that completed before another
//!    append was invoked comes before it. That is, at each invocation, every effect that
//!    completed earlier lies within the prefix the new operation may see; for a read, the
//!    appends completed before it started are inside it, and appends invoked after it ended
//!    are not; reads that follow each other in real time see growing prefixes.
//!
//! Times are positions in the history (line order is real-time order).

use std::collections::HashMap;

/// One list operation of the history.
#[derive(Clone, Debug)]
pub(crate) struct ListOp {
    /// A register (`r<key>`) rather than a list (`l<key>`).
    pub register: bool,
    pub key: u64,
    pub kind: ListKind,
    pub invoke: u64,
    /// Line of the `ok` completion; `None` if the outcome is unknown or the op failed.
    pub ok: Option<u64>,
    /// Answered as definitely not applied (`fail`).
    pub failed: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum ListKind {
    Append {
        element: u64,
    },
    /// What the read returned (set on `ok`).
    Read {
        list: Vec<u64>,
    },
    /// A read known to have seen the first `len` elements of the final value (a register read,
    /// mapped onto its version order).
    Prefix {
        len: usize,
    },
    /// A register read before it is mapped: the value seen (`None`: absent).
    Value {
        value: Option<u64>,
    },
}

/// Checks the operations on one key against its final value.
pub(crate) fn check(key: &str, ops: &[&ListOp], last: &[u64]) -> Result<(), String> {
    let position: HashMap<u64, usize> = last.iter().enumerate().map(|(i, e)| (*e, i)).collect();
    if position.len() != last.len() {
        return Err(format!(
            "exactly-once: {key} holds an element twice: {last:?}"
        ));
    }
    check_membership(key, ops, &position)?;
    check_real_time(key, ops, &position, last)
}

fn check_membership(
    key: &str,
    ops: &[&ListOp],
    position: &HashMap<u64, usize>,
) -> Result<(), String> {
    let invoked: std::collections::HashSet<u64> = ops
        .iter()
        .filter_map(|op| match op.kind {
            ListKind::Append { element } => Some(element),
            _ => None,
        })
        .collect();
    if let Some(element) = position.keys().find(|e| !invoked.contains(e)) {
        return Err(format!("{key} holds {element}, which no append wrote"));
    }
    for op in ops {
        if let (ListKind::Append { element }, true) = (&op.kind, op.failed) {
            if position.contains_key(element) {
                return Err(format!(
                    "the write of {element} to {key} was answered as not applied, but it \
                     took effect (the final value holds it)"
                ));
            }
        }
        if let (ListKind::Append { element }, Some(_)) = (&op.kind, op.ok) {
            if !position.contains_key(element) {
                return Err(format!(
                    "lost write: the acknowledged append of {element} to {key} is not in \
                     the final list"
                ));
            }
        }
    }
    Ok(())
}

/// What an operation contributes to the sweep: the prefix length it proves exists (an
/// append's position + 1, a read's length) and the bound it must respect.
fn effect(op: &ListOp, position: &HashMap<u64, usize>) -> Option<(usize, usize)> {
    match &op.kind {
        // An append at position p: the list had p elements before it and p + 1 after.
        ListKind::Append { element } => position.get(element).map(|p| (*p, *p + 1)),
        ListKind::Read { list } => Some((list.len(), list.len())),
        ListKind::Prefix { len } => Some((*len, *len)),
        ListKind::Value { .. } => None,
    }
}

fn check_real_time(
    key: &str,
    ops: &[&ListOp],
    position: &HashMap<u64, usize>,
    last: &[u64],
) -> Result<(), String> {
    for op in ops {
        if let (ListKind::Read { list }, Some(_)) = (&op.kind, op.ok) {
            if !last.starts_with(list) {
                return Err(format!(
                    "{key} was read as {list:?}, not a prefix of its final value {last:?}"
                ));
            }
        }
    }
    // Sweep in time: `done` is the longest prefix proven by operations completed so far. An
    // operation invoked now must see at least that much: an append lands after it, a read
    // contains it.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let (Some(complete), Some(_)) = (op.ok, effect(op, position)) else {
            continue;
        };
        events.push((op.invoke, false, i));
        events.push((complete, true, i));
    }
    events.sort_unstable();
    let mut done = 0usize;
    for (_, completes, i) in events {
        let Some((before, after)) = effect(ops[i], position) else {
            continue;
        };
        if completes {
            done = done.max(after);
        } else if before < done {
            return Err(format!(
                "real time: {:?} on {key} (history line {}) sees a prefix of {before} \
                 elements, but {done} were already in place when it started",
                ops[i].kind, ops[i].invoke
            ));
        }
    }
    check_reads_exclude_later_appends(key, ops, position)
}

/// A read does not contain an append invoked after the read completed (any append in the
/// final list, acknowledged or not).
fn check_reads_exclude_later_appends(
    key: &str,
    ops: &[&ListOp],
    position: &HashMap<u64, usize>,
) -> Result<(), String> {
    let mut appends: Vec<(u64, usize)> = ops
        .iter()
        .filter_map(|op| match op.kind {
            ListKind::Append { element } => position.get(&element).map(|p| (op.invoke, *p)),
            _ => None,
        })
        .collect();
    appends.sort_unstable();
    // suffix_min[i]: the smallest position among appends invoked at or after appends[i].
    let mut suffix_min = vec![usize::MAX; appends.len() + 1];
    for i in (0..appends.len()).rev() {
        suffix_min[i] = suffix_min[i + 1].min(appends[i].1);
    }
    for op in ops {
        let len = match &op.kind {
            ListKind::Read { list } => list.len(),
            ListKind::Prefix { len } => *len,
            _ => continue,
        };
        let Some(complete) = op.ok else { continue };
        let first_later = appends.partition_point(|(invoke, _)| *invoke <= complete);
        if suffix_min[first_later] < len {
            return Err(format!(
                "real time: the read of {key} completed at history line {complete} saw an \
                 element written by an operation invoked later ({:?})",
                op.kind
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(element: u64, invoke: u64, ok: Option<u64>) -> ListOp {
        ListOp {
            register: false,
            key: 0,
            kind: ListKind::Append { element },
            invoke,
            ok,
            failed: false,
        }
    }

    fn read(list: &[u64], invoke: u64, ok: u64) -> ListOp {
        ListOp {
            register: false,
            key: 0,
            kind: ListKind::Read {
                list: list.to_vec(),
            },
            invoke,
            ok: Some(ok),
            failed: false,
        }
    }

    fn run(ops: &[ListOp], last: &[u64]) -> Result<(), String> {
        let refs: Vec<&ListOp> = ops.iter().collect();
        check("l0", &refs, last)
    }

    #[test]
    fn a_concurrent_history_passes() {
        let ops = [
            append(1, 0, Some(3)),
            append(2, 1, None),
            read(&[], 2, 4),
            read(&[1, 2], 5, 6),
        ];
        assert_eq!(run(&ops, &[1, 2]), Ok(()));
    }

    #[test]
    fn each_violation_is_caught() {
        let lost = [append(1, 0, Some(1))];
        assert!(run(&lost, &[]).unwrap_err().contains("lost write"));
        let twice = [append(1, 0, Some(1))];
        assert!(run(&twice, &[1, 1]).unwrap_err().contains("exactly-once"));
        let order = [append(1, 0, Some(1)), append(2, 2, Some(3))];
        assert!(run(&order, &[2, 1]).unwrap_err().contains("real time"));
        let stale = [append(1, 0, Some(1)), read(&[], 2, 3)];
        assert!(run(&stale, &[1]).unwrap_err().contains("real time"));
        let future = [read(&[1], 0, 1), append(1, 2, Some(3))];
        assert!(run(&future, &[1]).unwrap_err().contains("real time"));
        let shrink = [append(1, 0, Some(1)), read(&[1], 2, 3), read(&[], 4, 5)];
        assert!(run(&shrink, &[1]).is_err());
        let mut failed = append(1, 0, None);
        failed.failed = true;
        assert!(run(&[failed], &[1]).unwrap_err().contains("not applied"));
        let phantom = [read(&[7], 0, 1)];
        assert!(run(&phantom, &[7]).unwrap_err().contains("no append wrote"));
    }
}
