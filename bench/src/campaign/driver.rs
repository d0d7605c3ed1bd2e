//! The nemesis thread: runs the seeded schedule against the cluster while the load runs, and
//! writes each fault into the history (process "nemesis": an `invoke` when it starts, an
//! `info` when it ends) and into nemesis.jsonl.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nemesis::fault::NEMESIS_PROCESS;
use nemesis::{FaultRecord, Nemesis, ScheduledFault};
use serde_json::{json, Map, Value};

use crate::history::Recorder;

/// Granularity of the waits between faults (how soon a stop request is seen).
const WAIT_STEP_MS: u64 = 50;

/// What the thread hands back: the nemesis (owning the cluster), the faults it injected and
/// the ones it could not (e.g. "leader" while no node leads).
pub struct DriverResult {
    pub nemesis: Nemesis,
    pub records: Vec<FaultRecord>,
    pub errors: Vec<String>,
}

pub struct Driver {
    thread: JoinHandle<DriverResult>,
    stop: Arc<AtomicBool>,
}

impl Driver {
    /// Starts the schedule now (offsets count from this call).
    pub fn start(
        mut nemesis: Nemesis,
        schedule: Vec<ScheduledFault>,
        recorder: Arc<Recorder>,
        injected: Arc<AtomicU64>,
    ) -> std::io::Result<Driver> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("campaign-nemesis".to_string())
            .spawn(move || {
                let start = Instant::now();
                let mut records = Vec::new();
                let mut errors = Vec::new();
                for scheduled in schedule {
                    let at = start + Duration::from_millis(scheduled.at_ms);
                    if !wait_until(at, &stopped) {
                        break;
                    }
                    match run_one(&mut nemesis, &scheduled, &recorder, &stopped) {
                        Ok(record) => {
                            injected.fetch_add(1, Ordering::Relaxed);
                            records.push(record);
                        }
                        Err(error) => errors.push(format!(
                            "{} at {} ms: {error}",
                            scheduled.fault.name(),
                            scheduled.at_ms
                        )),
                    }
                }
                DriverResult {
                    nemesis,
                    records,
                    errors,
                }
            })?;
        Ok(Driver { thread, stop })
    }

    /// Ends an active fault early and returns. `None` if the thread panicked (the cluster it
    /// owned has then been cleaned up by its drop).
    pub fn finish(self) -> Option<DriverResult> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().ok()
    }
}

/// Sleeps until `at`; false if asked to stop first.
fn wait_until(at: Instant, stop: &AtomicBool) -> bool {
    while Instant::now() < at {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = at.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_millis(WAIT_STEP_MS)));
    }
    !stop.load(Ordering::Relaxed)
}

fn run_one(
    nemesis: &mut Nemesis,
    scheduled: &ScheduledFault,
    recorder: &Recorder,
    stop: &AtomicBool,
) -> Result<FaultRecord, nemesis::FaultError> {
    let active = nemesis.begin(&scheduled.fault)?;
    recorder.note(event("invoke", &active.record));
    let end = Instant::now() + Duration::from_millis(scheduled.fault.duration_ms());
    wait_until(end, stop);
    let record = nemesis.end(active)?;
    recorder.note(event("info", &record));
    Ok(record)
}

/// A nemesis line of the history (proto-docs/history.md: skipped by the checker).
pub fn event(kind: &str, record: &FaultRecord) -> Map<String, Value> {
    let value = json!({
        "detail": record.detail,
        "targets": record.targets,
        "grudge": record.grudge,
    });
    let line = json!({
        "process": NEMESIS_PROCESS,
        "type": kind,
        "f": record.fault,
        "value": value,
        "start_unix_ms": record.start_unix_ms,
        "end_unix_ms": record.end_unix_ms,
    });
    match line {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
