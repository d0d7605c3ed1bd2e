//! The anomalies visible without a dependency graph: internal inconsistency, version orders
//! (incompatible reads, duplicates), G1a, G1b, garbage elements and lost appends.

use crate::fxhash::{FxHashMap, FxHashSet};
use crate::history::Outcome;
use crate::report::AnomalySink;
use crate::value::Value;

use super::{anomaly, Analysis, Mop};

/// What a transaction knows of one key while it runs: its last read (if any) followed by
/// its own appends since. A later read must equal that, or end with the appends if the key
/// was not read yet.
#[derive(Default)]
struct Local<'a> {
    read: Option<&'a [Value]>,
    appended: Vec<&'a Value>,
}

impl Local<'_> {
    fn admits(&self, elements: &[Value]) -> bool {
        let tail_start = match self.read {
            Some(read) => {
                if elements.len() != read.len() + self.appended.len() || !elements.starts_with(read)
                {
                    return false;
                }
                read.len()
            }
            None => match elements.len().checked_sub(self.appended.len()) {
                Some(start) => start,
                None => return false,
            },
        };
        elements[tail_start..]
            .iter()
            .eq(self.appended.iter().copied())
    }

    fn expected(&self) -> String {
        let appended: Vec<Value> = self
            .appended
            .iter()
            .map(|&element| element.clone())
            .collect();
        match self.read {
            Some(read) => {
                let mut expected = read.to_vec();
                expected.extend(appended);
                Value::List(expected).to_string()
            }
            None => format!("a list ending in {}", Value::List(appended)),
        }
    }
}

/// Internal consistency: a read inside a transaction must reflect the transaction's own
/// earlier reads and appends of that key, and must not show an element the transaction
/// appends only later (a future read).
pub fn internal(analysis: &Analysis<'_>, sink: &mut AnomalySink) {
    for (txn_index, txn) in analysis.txns.iter().enumerate() {
        if txn.outcome != Outcome::Ok || txn.mops.len() < 2 {
            continue;
        }
        future_reads(analysis, txn_index as u32, sink);
        let mut locals: FxHashMap<u32, Local> = FxHashMap::default();
        for mop in &txn.mops {
            match *mop {
                Mop::Append { key, element } => {
                    locals.entry(key).or_default().appended.push(element)
                }
                Mop::Read {
                    key,
                    elements: Some(elements),
                } => {
                    let local = locals.entry(key).or_default();
                    if !local.admits(elements) && sink.wants("internal") {
                        let explanation = format!(
                            "the transaction read {} from key {} but its own earlier \
                             operations imply {}",
                            Value::List(elements.to_vec()),
                            analysis.keys[key as usize],
                            local.expected()
                        );
                        let txn_id = txn_index as u32;
                        sink.push(anomaly(
                            analysis,
                            "internal",
                            Some(key),
                            explanation,
                            &[txn_id],
                        ));
                    }
                    local.read = Some(elements);
                    local.appended.clear();
                }
                Mop::Read { elements: None, .. } => {}
            }
        }
    }
}

/// A read that shows an element its own transaction appends after it: no serial order has it.
fn future_reads(analysis: &Analysis<'_>, txn_index: u32, sink: &mut AnomalySink) {
    let mops = &analysis.txns[txn_index as usize].mops;
    for (position, mop) in mops.iter().enumerate() {
        let Mop::Read {
            key,
            elements: Some(elements),
        } = *mop
        else {
            continue;
        };
        let future = mops[position + 1..].iter().find_map(|later| match *later {
            Mop::Append {
                key: appended_key,
                element,
            } if appended_key == key && elements.contains(element) => Some(element),
            _ => None,
        });
        if let Some(element) = future {
            if sink.wants("internal") {
                let explanation = format!(
                    "future read: the transaction read {} from key {}, which holds {element}, \
                     an element the same transaction appends only later",
                    Value::List(elements.to_vec()),
                    analysis.keys[key as usize]
                );
                sink.push(anomaly(
                    analysis,
                    "internal",
                    Some(key),
                    explanation,
                    &[txn_index],
                ));
            }
        }
    }
}

/// Torn reads: a transaction's appends to one key take effect together and in order, so a list
/// holding one of them holds all those before it, right before it. (A list that ends inside a
/// transaction's appends is G1b, reported by `intermediate`.)
pub fn torn_reads(analysis: &Analysis<'_>, sink: &mut AnomalySink) {
    for key in 0..analysis.keys.len() {
        let order = analysis.orders[key];
        let longest_reader = analysis.reads[key]
            .iter()
            .find(|&&(txn, mop)| analysis.read_elements(txn, mop) == order)
            .map(|&(txn, _)| txn);
        if let Some(reader) = longest_reader {
            torn(analysis, key, order, reader, sink);
        }
        for &(reader, mop) in &analysis.reads[key] {
            if analysis.incompatible.contains(&(reader, mop)) {
                torn(
                    analysis,
                    key,
                    analysis.read_elements(reader, mop),
                    reader,
                    sink,
                );
            }
        }
    }
}

fn torn(
    analysis: &Analysis<'_>,
    key: usize,
    elements: &[Value],
    reader: u32,
    sink: &mut AnomalySink,
) {
    let mut position = 0;
    while position < elements.len() {
        let Some(writer) = analysis.writers[key].get(&elements[position]) else {
            position += 1;
            continue;
        };
        let single = analysis.txns[writer.txn as usize]
            .mops
            .iter()
            .filter(|mop| matches!(mop, Mop::Append { key: k, .. } if *k == key as u32))
            .nth(1)
            .is_none();
        if single {
            // One append to the key: nothing to tear (and no allocation on the common path).
            position += 1;
            continue;
        }
        let block = analysis.appended(writer.txn, key as u32);
        let run = elements[position..]
            .iter()
            .zip(block.iter())
            .take_while(|(read, appended)| read == *appended)
            .count();
        let reaches_end = position + run == elements.len();
        let whole = run == block.len() || (run > 0 && reaches_end);
        if !whole && writer.txn != reader && sink.wants("torn-read") {
            let explanation = format!(
                "read of key {} returned {}, a non-atomic view of call {}: it appended {} to \
                 the key in one transaction, but the read shows {} where all of them, in \
                 order, belong",
                analysis.keys[key],
                Value::List(elements.to_vec()),
                analysis.txns[writer.txn as usize].call,
                Value::List(block.iter().map(|&element| element.clone()).collect()),
                elements[position]
            );
            let involved = [reader, writer.txn];
            sink.push(anomaly(
                analysis,
                "torn-read",
                Some(key as u32),
                explanation,
                &involved,
            ));
            return;
        }
        position += run.max(1);
    }
}

/// Collects the ok reads of each key and picks its version order (the longest read). Reads
/// that are not a prefix of it are incompatible orders and are left out of the graph.
pub fn version_orders(analysis: &mut Analysis<'_>, sink: &mut AnomalySink) {
    for (txn_index, txn) in analysis.txns.iter().enumerate() {
        if txn.outcome != Outcome::Ok {
            continue;
        }
        for (mop_index, mop) in txn.mops.iter().enumerate() {
            if let Mop::Read {
                key,
                elements: Some(_),
            } = mop
            {
                analysis.reads[*key as usize].push((txn_index as u32, mop_index as u32));
            }
        }
    }
    for key in 0..analysis.keys.len() {
        let reads = &analysis.reads[key];
        let longest = reads.iter().copied().max_by_key(|&(txn, mop)| {
            (
                analysis.read_elements(txn, mop).len(),
                std::cmp::Reverse(txn),
            )
        });
        let Some((longest_txn, longest_mop)) = longest else {
            continue;
        };
        let order = analysis.read_elements(longest_txn, longest_mop);
        let mut incompatible = Vec::new();
        for &(txn, mop) in reads {
            let elements = analysis.read_elements(txn, mop);
            if !order.starts_with(elements) {
                incompatible.push((txn, mop));
            }
        }
        for &(txn, mop) in &incompatible {
            if sink.wants("incompatible-order") {
                let explanation = format!(
                    "read of key {} returned {}, which is not a prefix of {} read by another \
                     transaction",
                    analysis.keys[key],
                    Value::List(analysis.read_elements(txn, mop).to_vec()),
                    Value::List(order.to_vec())
                );
                let involved = [txn, longest_txn];
                sink.push(anomaly(
                    analysis,
                    "incompatible-order",
                    Some(key as u32),
                    explanation,
                    &involved,
                ));
            }
        }
        duplicates(analysis, key, order, longest_txn, sink);
        for &(txn, mop) in &incompatible {
            duplicates(analysis, key, analysis.read_elements(txn, mop), txn, sink);
        }
        analysis.incompatible.extend(incompatible);
        analysis.orders[key] = order;
    }
}

fn duplicates(
    analysis: &Analysis<'_>,
    key: usize,
    elements: &[Value],
    reader: u32,
    sink: &mut AnomalySink,
) {
    let mut seen = FxHashSet::default();
    let Some(duplicate) = elements.iter().find(|element| !seen.insert(*element)) else {
        return;
    };
    if sink.wants("duplicate-elements") {
        let explanation = format!(
            "read of key {} returned {} with element {duplicate} more than once",
            analysis.keys[key],
            Value::List(elements.to_vec())
        );
        sink.push(anomaly(
            analysis,
            "duplicate-elements",
            Some(key as u32),
            explanation,
            &[reader],
        ));
    }
}

/// G1a (an element of a failed transaction was read), garbage (an element nobody appended)
/// and G1b (a read ending at an append its transaction followed with another append).
pub fn bad_elements(analysis: &Analysis<'_>, sink: &mut AnomalySink) {
    for key in 0..analysis.keys.len() {
        for &(reader, mop) in &analysis.reads[key] {
            let elements = analysis.read_elements(reader, mop);
            // Compatible reads are prefixes of the order: check each element once, on the
            // shortest read that contains it, below; incompatible ones element by element.
            if analysis.incompatible.contains(&(reader, mop)) {
                for element in elements {
                    aborted_or_garbage(analysis, key, element, reader, sink);
                }
            }
            intermediate(analysis, key, elements, reader, sink);
        }
        let order = analysis.orders[key];
        for (position, element) in order.iter().enumerate() {
            let writer = analysis.writers[key].get(element);
            let bad = writer
                .is_none_or(|writer| analysis.txns[writer.txn as usize].outcome == Outcome::Fail);
            if !bad {
                continue;
            }
            let first_reader = analysis.reads[key]
                .iter()
                .filter(|&&(txn, mop)| !analysis.incompatible.contains(&(txn, mop)))
                .filter(|&&(txn, mop)| analysis.read_elements(txn, mop).len() > position)
                .min_by_key(|&&(txn, mop)| analysis.read_elements(txn, mop).len());
            if let Some(&(reader, _)) = first_reader {
                aborted_or_garbage(analysis, key, element, reader, sink);
            }
        }
    }
}

fn aborted_or_garbage(
    analysis: &Analysis<'_>,
    key: usize,
    element: &Value,
    reader: u32,
    sink: &mut AnomalySink,
) {
    let name = &analysis.keys[key];
    match analysis.writers[key].get(element) {
        None => {
            if sink.wants("garbage") {
                let explanation =
                    format!("read of key {name} contains {element}, which no operation appended");
                sink.push(anomaly(
                    analysis,
                    "garbage",
                    Some(key as u32),
                    explanation,
                    &[reader],
                ));
            }
        }
        Some(writer) if analysis.txns[writer.txn as usize].outcome == Outcome::Fail => {
            if sink.wants("G1a") {
                let explanation = format!(
                    "read of key {name} contains {element}, appended by a transaction that failed"
                );
                let involved = [reader, writer.txn];
                sink.push(anomaly(
                    analysis,
                    "G1a",
                    Some(key as u32),
                    explanation,
                    &involved,
                ));
            }
        }
        Some(_) => {}
    }
}

fn intermediate(
    analysis: &Analysis<'_>,
    key: usize,
    elements: &[Value],
    reader: u32,
    sink: &mut AnomalySink,
) {
    let Some(last) = elements.last() else { return };
    let Some(writer) = analysis.writers[key].get(last) else {
        return;
    };
    if !writer.intermediate || writer.txn == reader || !sink.wants("G1b") {
        return;
    }
    let explanation = format!(
        "read of key {} ends at {last}, an intermediate state: its transaction appended to the \
         key again afterwards",
        analysis.keys[key]
    );
    let involved = [reader, writer.txn];
    sink.push(anomaly(
        analysis,
        "G1b",
        Some(key as u32),
        explanation,
        &involved,
    ));
}

/// Lost appends: an ok append whose transaction completed before the key's final read was
/// invoked must be in that read.
pub fn lost_appends(analysis: &Analysis<'_>, sink: &mut AnomalySink) {
    for key in 0..analysis.keys.len() {
        let final_read = analysis.reads[key]
            .iter()
            .copied()
            .max_by_key(|&(txn, _)| analysis.txns[txn as usize].invoke_event);
        let Some((reader, mop)) = final_read else {
            continue;
        };
        let read_invoke = analysis.txns[reader as usize].invoke_event;
        let seen: FxHashSet<&Value> = analysis.read_elements(reader, mop).iter().collect();
        let mut lost: Vec<(&Value, u32)> = analysis.writers[key]
            .iter()
            .filter(|(element, writer)| {
                let txn = &analysis.txns[writer.txn as usize];
                txn.outcome == Outcome::Ok
                    && txn.complete_event < read_invoke
                    && !seen.contains(*element)
            })
            .map(|(&element, writer)| (element, writer.txn))
            .collect();
        lost.sort_by_key(|&(_, txn)| txn);
        for (element, writer) in lost {
            if sink.wants("lost-append") {
                let explanation = format!(
                    "append of {element} to key {} was acknowledged (line {}) before the key's \
                     final read (line {}) began, but that read does not contain it",
                    analysis.keys[key],
                    analysis.line(writer),
                    analysis.line(reader)
                );
                let involved = [writer, reader];
                sink.push(anomaly(
                    analysis,
                    "lost-append",
                    Some(key as u32),
                    explanation,
                    &involved,
                ));
            }
        }
    }
}
