//! Elle-style checking of list-append histories under strict serializability.
//!
//! Every append writes a value unique to its key, so a read of a key reveals the order of all
//! appends it contains. From the reads we take a version order per key (the longest read; the
//! others must be its prefixes), then derive dependencies between transactions:
//!
//! ```text
//!   ww  T1 appended x, T2 appended the next element y          T1 -> T2
//!   wr  T2 read a list whose last element T1 appended            T1 -> T2
//!   rw  T1 read a list of length n, T2 appended element n + 1    T1 -> T2
//!   realtime  T1 completed before T2 was invoked                T1 -> T2
//!   process   T1 and T2 ran on the same process, T1 first       T1 -> T2
//! ```
//!
//! A cycle means no serial order exists. Cycles come from Tarjan's strongly connected
//! components and a breadth-first search for a short cycle inside each, tried from the most
//! to the least severe class (G0, G1c, G-single, G2-item; then the same with realtime/process
//! edges). An acknowledged append that no read shows came after every element any read shows:
//! every read of the key gets an rw edge to it, and the order's last appender a ww edge (Adya's
//! anti-dependencies from empty and prefix reads to every later appender). Non-cycle anomalies
//! are found directly: G1a, G1b, internal inconsistency (including future reads), torn reads,
//! duplicate elements, garbage elements, incompatible orders and lost appends.

use crate::fxhash::{FxHashMap, FxHashSet};
use crate::history::{History, Outcome, F};
use crate::report::{Anomaly, AnomalySink, OpRef, Report, Workload};
use crate::value::Value;
use crate::{CheckError, Options};

mod graph;
mod reads;

pub use graph::{EdgeKind, Graph};

/// One micro-operation of a transaction, borrowing its values from the history.
#[derive(Clone, Copy, Debug)]
pub enum Mop<'a> {
    Append {
        key: u32,
        element: &'a Value,
    },
    Read {
        key: u32,
        elements: Option<&'a [Value]>,
    },
}

/// A transaction call, its micro-operations parsed.
pub struct Txn<'a> {
    pub call: usize,
    pub mops: Vec<Mop<'a>>,
    pub outcome: Outcome,
    pub process: u64,
    pub invoke_event: usize,
    /// `usize::MAX` for info calls: they may complete at any time.
    pub complete_event: usize,
}

/// The appender of one element.
#[derive(Clone, Copy, Debug)]
pub struct Writer {
    pub txn: u32,
    /// `true` if the same transaction appended to the key again afterwards.
    pub intermediate: bool,
}

/// Everything the checks share.
pub struct Analysis<'a> {
    pub history: &'a History,
    pub txns: Vec<Txn<'a>>,
    pub keys: Vec<&'a Value>,
    /// Per key: element -> appender.
    pub writers: Vec<FxHashMap<&'a Value, Writer>>,
    /// Per key: the version order (the longest read).
    pub orders: Vec<&'a [Value]>,
    /// Per key: ok reads as (txn, mop index).
    pub reads: Vec<Vec<(u32, u32)>>,
    /// Reads that are not a prefix of their key's version order.
    pub incompatible: FxHashSet<(u32, u32)>,
}

impl<'a> Analysis<'a> {
    /// The elements transaction `txn` appended to `key`, in its own order.
    pub fn appended(&self, txn: u32, key: u32) -> Vec<&'a Value> {
        self.txns[txn as usize]
            .mops
            .iter()
            .filter_map(|mop| match *mop {
                Mop::Append {
                    key: appended,
                    element,
                } if appended == key => Some(element),
                _ => None,
            })
            .collect()
    }

    pub fn op(&self, txn: u32) -> OpRef {
        OpRef::new(self.history, self.txns[txn as usize].call)
    }

    pub fn read_elements(&self, txn: u32, mop: u32) -> &'a [Value] {
        match self.txns[txn as usize].mops[mop as usize] {
            Mop::Read {
                elements: Some(elements),
                ..
            } => elements,
            _ => &[],
        }
    }

    pub fn line(&self, txn: u32) -> usize {
        self.history.line_of(self.txns[txn as usize].invoke_event)
    }
}

/// Checks a list-append history.
pub fn check(history: &History, options: &Options) -> Result<Report, CheckError> {
    let mut analysis = parse_txns(history)?;
    index_writers(&mut analysis)?;
    let mut sink = AnomalySink::new(options.anomalies_per_type_max);
    reads::internal(&analysis, &mut sink);
    reads::version_orders(&mut analysis, &mut sink);
    reads::bad_elements(&analysis, &mut sink);
    reads::torn_reads(&analysis, &mut sink);
    reads::lost_appends(&analysis, &mut sink);
    let graph = Graph::build(&analysis);
    graph::cycles(&analysis, &graph, &mut sink);
    let key_count = analysis.keys.len();
    Ok(Report::assemble(
        history,
        Workload::ListAppend,
        key_count,
        sink,
        None,
    ))
}

fn bad_input(history: &History, event: usize, reason: impl Into<String>) -> CheckError {
    CheckError::BadInput {
        line: history.line_of(event),
        reason: reason.into(),
    }
}

fn parse_txns(history: &History) -> Result<Analysis<'_>, CheckError> {
    let mut key_ids: FxHashMap<&Value, u32> = FxHashMap::default();
    let mut keys = Vec::new();
    let mut txns = Vec::with_capacity(history.calls().len());
    for (index, call) in history.calls().iter().enumerate() {
        let event = match call.outcome {
            Outcome::Ok => call.complete_event.unwrap_or(call.invoke_event),
            Outcome::Fail | Outcome::Info => call.invoke_event,
        };
        if call.f != F::Txn {
            return Err(bad_input(
                history,
                event,
                "list-append histories hold only f = txn",
            ));
        }
        let Some(items) = history.value(call).as_list() else {
            return Err(bad_input(
                history,
                event,
                "txn value must be a list of micro-ops",
            ));
        };
        let mut mops = Vec::with_capacity(items.len());
        for item in items {
            let mop = parse_mop(item, &mut key_ids, &mut keys)
                .map_err(|reason| bad_input(history, event, reason))?;
            mops.push(mop);
        }
        let complete_event = match call.outcome {
            Outcome::Info => usize::MAX,
            Outcome::Ok | Outcome::Fail => call.complete_event.unwrap_or(usize::MAX),
        };
        let (outcome, process, invoke_event) = (call.outcome, call.process, call.invoke_event);
        txns.push(Txn {
            call: index,
            mops,
            outcome,
            process,
            invoke_event,
            complete_event,
        });
    }
    let key_count = keys.len();
    Ok(Analysis {
        history,
        txns,
        keys,
        writers: vec![FxHashMap::default(); key_count],
        orders: vec![&[]; key_count],
        reads: vec![Vec::new(); key_count],
        incompatible: FxHashSet::default(),
    })
}

fn parse_mop<'a>(
    item: &'a Value,
    key_ids: &mut FxHashMap<&'a Value, u32>,
    keys: &mut Vec<&'a Value>,
) -> Result<Mop<'a>, String> {
    let Some([function, key, argument]) = item.as_list().and_then(|parts| parts.get(..3)) else {
        return Err(format!("micro-op {item} is not [f, key, value]"));
    };
    if item.as_list().is_some_and(|parts| parts.len() != 3) {
        return Err(format!("micro-op {item} is not [f, key, value]"));
    }
    let next_id = keys.len() as u32;
    let key = *key_ids.entry(key).or_insert_with(|| {
        keys.push(key);
        next_id
    });
    match function.as_name() {
        Some("append") => Ok(Mop::Append {
            key,
            element: argument,
        }),
        Some("r") | Some("read") => match argument {
            Value::Null => Ok(Mop::Read {
                key,
                elements: None,
            }),
            Value::List(elements) => Ok(Mop::Read {
                key,
                elements: Some(elements),
            }),
            other => Err(format!("read result {other} is neither null nor a list")),
        },
        _ => Err(format!("micro-op {item}: f must be \"append\" or \"r\"")),
    }
}

/// Records the appender of every element; an element appended twice to one key makes the
/// version order ambiguous, so it is refused as bad input.
fn index_writers(analysis: &mut Analysis<'_>) -> Result<(), CheckError> {
    for (txn_index, txn) in analysis.txns.iter().enumerate() {
        let mut last_append: FxHashMap<u32, &Value> = FxHashMap::default();
        for mop in &txn.mops {
            let Mop::Append { key, element } = *mop else {
                continue;
            };
            let writers = &mut analysis.writers[key as usize];
            let writer = Writer {
                txn: txn_index as u32,
                intermediate: false,
            };
            if let Some(previous) = writers.insert(element, writer) {
                let other = analysis.txns[previous.txn as usize].invoke_event;
                let reason = format!(
                    "element {element} is appended to key {} twice (also on line {}); \
                     list-append needs unique elements per key",
                    analysis.keys[key as usize],
                    analysis.history.line_of(other)
                );
                return Err(bad_input(analysis.history, txn.invoke_event, reason));
            }
            if let Some(earlier) = last_append.insert(key, element) {
                if let Some(entry) = writers.get_mut(earlier) {
                    entry.intermediate = true;
                }
            }
        }
    }
    Ok(())
}

/// Builds an anomaly naming the given transactions.
pub fn anomaly(
    analysis: &Analysis<'_>,
    kind: &str,
    key: Option<u32>,
    explanation: String,
    txns: &[u32],
) -> Anomaly {
    let key = key.map(|key| analysis.keys[key as usize].clone());
    let ops = txns.iter().map(|&txn| analysis.op(txn)).collect();
    Anomaly::new(kind, key, explanation, ops)
}
