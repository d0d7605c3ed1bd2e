//! Lost writes on a register/kv key: an acknowledged write W that a later read does not see.
//!
//! A read R that returns x, written by X, loses W when X completed before W was invoked and W
//! completed before R was invoked: every linearization orders X < W < R, so R cannot see x.
//! The check needs to know which write produced x, so it runs only on keys where every
//! written value (write, cas target) is distinct from the others and from the initial value,
//! and where no append or delete rebuilds an old value. Linearizability catches the rest; this
//! check names the lost write directly, and costs O(n log n).

use crate::fxhash::FxHashMap as HashMap;

use crate::history::{History, Model, Outcome, F};
use crate::linear::Partition;
use crate::report::{Anomaly, AnomalySink, OpRef};
use crate::value::Value;

/// `complete_event` of the writer of each value; `None` means the initial value.
type Writers<'a> = HashMap<&'a Value, (usize, Option<usize>)>;

fn unique_writers<'a>(history: &'a History, partition: &Partition) -> Option<Writers<'a>> {
    let mut writers: Writers<'a> = HashMap::default();
    for &index in &partition.calls {
        let call = &history.calls()[index];
        let written = match call.f {
            F::Write => history.invoke_value(call),
            F::Cas => history.invoke_value(call).as_list()?.get(1)?,
            F::Append | F::Delete | F::Txn => return None,
            F::Read => continue,
        };
        let complete = match call.outcome {
            Outcome::Ok => call.complete_event,
            // An unacknowledged writer could take effect at any time: never "old".
            Outcome::Info | Outcome::Fail => Some(usize::MAX),
        };
        if written == &history.initial_value || writers.insert(written, (index, complete)).is_some()
        {
            return None;
        }
    }
    Some(writers)
}

/// Adds a `lost-write` anomaly per write that some read proves lost.
pub fn lost_writes(history: &History, partition: &Partition, sink: &mut AnomalySink) {
    let Some(writers) = unique_writers(history, partition) else {
        return;
    };
    let calls = history.calls();
    // Acknowledged writes by completion; for each prefix, the latest-invoked one.
    let mut acknowledged: Vec<(usize, usize)> = partition
        .calls
        .iter()
        .filter(|&&index| {
            let call = &calls[index];
            call.outcome == Outcome::Ok && matches!(call.f, F::Write | F::Cas)
        })
        .filter_map(|&index| calls[index].complete_event.map(|event| (event, index)))
        .collect();
    acknowledged.sort_unstable();
    let mut latest: Vec<usize> = Vec::with_capacity(acknowledged.len());
    for &(_, index) in &acknowledged {
        let best = match latest.last() {
            Some(&previous) if calls[previous].invoke_event > calls[index].invoke_event => previous,
            _ => index,
        };
        latest.push(best);
    }
    let mut reported = std::collections::HashSet::new();
    for &read_index in &partition.calls {
        let read = &calls[read_index];
        if read.f != F::Read || read.outcome != Outcome::Ok {
            continue;
        }
        let observed = history.complete_value(read);
        if history.model == Model::Knossos && observed.is_null() {
            // Knossos: a read of nil constrains nothing.
            continue;
        }
        let writer_complete = if observed == &history.initial_value {
            None
        } else {
            match writers.get(observed) {
                Some(&(_, complete)) => complete,
                // A value nobody wrote: linearizability reports it.
                None => continue,
            }
        };
        let before = acknowledged.partition_point(|&(event, _)| event < read.invoke_event);
        let Some(&lost_index) = before.checked_sub(1).and_then(|last| latest.get(last)) else {
            continue;
        };
        let overwritten =
            writer_complete.is_none_or(|event| event < calls[lost_index].invoke_event);
        if overwritten && reported.insert(lost_index) && sink.wants("lost-write") {
            sink.push(lost_anomaly(
                history, partition, lost_index, read_index, &writers, observed,
            ));
        }
    }
}

fn lost_anomaly(
    history: &History,
    partition: &Partition,
    lost_index: usize,
    read_index: usize,
    writers: &Writers<'_>,
    observed: &Value,
) -> Anomaly {
    let lost = OpRef::new(history, lost_index);
    let read = OpRef::new(history, read_index);
    let mut ops = vec![lost.clone(), read.clone()];
    let source = match writers.get(observed) {
        Some(&(writer, _)) => {
            ops.push(OpRef::new(history, writer));
            format!("written by call {writer}, which completed before the lost write began")
        }
        None => "the initial value".to_string(),
    };
    let explanation = format!(
        "acknowledged {} of {} (call {}, line {}) is lost: read call {} (line {}), invoked after \
         it completed, returned {}, {}",
        lost.f.name(),
        lost.value,
        lost.call,
        lost.line,
        read.call,
        read.line,
        observed,
        source
    );
    Anomaly::new("lost-write", partition.key.clone(), explanation, ops)
}
