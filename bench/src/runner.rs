//! The workload runner: sessions driven closed loop (next op when the last is answered) or
//! open loop (`rate`: each op has an intended send time and its latency counts from it, so a
//! stall is charged to every op it delays: no coordinated omission), every op recorded in the
//! history, then final reads of every key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvclient::ReadMode;
use tokio::time::Instant;

use crate::history::{Completion, Recorder};
use crate::rng::Rng;
use crate::stats::Stats;
use crate::target::{Target, TargetSession};
use crate::workload::{self, Planned, Workload};

/// Times a final read of one key is tried before it is left `fail`/`info` in the history.
pub const FINAL_READ_ATTEMPTS_MAX: u32 = 5;
/// Default of `LoadConfig::final_reads_timeout` (`--final-reads-timeout`).
pub const FINAL_READS_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Concurrent sessions; each is a process of the history.
    pub clients: u32,
    pub duration: Duration,
    /// Total operations per second over all clients (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    pub seed: u64,
    /// The final reads stop once this long has gone by without one of them answered: a
    /// cluster that died (or never recovered) would otherwise hold the run for every key's
    /// attempts (measured: a 6 s run whose cluster was killed was still reading after 90 s).
    /// The keys left unread count as failed final reads.
    pub final_reads_timeout: Duration,
}

/// Live counters for a progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub answered: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug)]
pub struct LoadReport {
    pub stats: Stats,
    /// From the first intended send to the last answer of the timed phase.
    pub elapsed: Duration,
    pub final_reads_ok: u64,
    /// Keys whose final read was tried and never answered, or never tried (see
    /// `final_reads_gave_up`).
    pub final_reads_failed: u64,
    /// The final reads stopped early: none answered for `LoadConfig::final_reads_timeout`.
    pub final_reads_gave_up: bool,
}

impl LoadReport {
    /// Why the final reads leave the history short, if they do: a write lost on a key whose
    /// final read failed may show in no read, so such a history cannot be called valid (as
    /// Jepsen's set checker says `unknown` for a set it never read).
    pub fn final_reads_shortfall(&self) -> Option<String> {
        if self.final_reads_failed == 0 {
            return None;
        }
        let failed = self.final_reads_failed;
        let total = failed + self.final_reads_ok;
        let why = if self.final_reads_gave_up {
            " (none was answered for the final-reads timeout)"
        } else {
            ""
        };
        Some(format!(
            "{failed} of {total} final reads failed{why}: a lost write on those keys may show \
             in no read"
        ))
    }
}

/// Process ids: workers start as `0..clients`; one whose operation ended `info` continues as a
/// fresh id, as Jepsen does, and final reads take fresh ids too.
struct Processes(AtomicU64);

impl Processes {
    fn fresh(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// How one operation ended, for the figures.
struct Executed {
    /// The client error kind, if it was not answered.
    error: Option<&'static str>,
    /// Recorded as `info`: the process id must not be reused.
    info: bool,
}

/// Everything a worker task needs.
struct Worker {
    session: TargetSession,
    index: u32,
    workload: Arc<Workload>,
    recorder: Arc<Recorder>,
    processes: Arc<Processes>,
    progress: Arc<Progress>,
}

/// Runs the load: preload (get workload), timed phase, final reads. Every operation is in the
/// history recorded by `recorder`.
pub async fn run_load(
    target: Target<'_>,
    workload: Arc<Workload>,
    config: &LoadConfig,
    recorder: Arc<Recorder>,
    progress: Arc<Progress>,
) -> LoadReport {
    let timed = run_timed(target, workload.clone(), config, recorder.clone(), progress).await;
    timed.final_reads(target, &workload, &recorder).await
}

/// The timed phase's result; `final_reads` completes it into a `LoadReport`. A campaign heals
/// the cluster between the two.
pub struct TimedLoad {
    pub stats: Stats,
    /// From the first intended send to the last answer of the timed phase.
    pub elapsed: Duration,
    clients: u32,
    processes: Arc<Processes>,
    final_reads_timeout: Duration,
}

impl TimedLoad {
    /// Reads every key the workload used (fresh process ids), retrying each a few times.
    /// The report when the cluster never came back: no final reads were tried.
    pub fn without_final_reads(self) -> LoadReport {
        LoadReport {
            stats: self.stats,
            elapsed: self.elapsed,
            final_reads_ok: 0,
            final_reads_failed: 0,
            final_reads_gave_up: false,
        }
    }

    pub async fn final_reads(
        self,
        target: Target<'_>,
        workload: &Arc<Workload>,
        recorder: &Arc<Recorder>,
    ) -> LoadReport {
        let stall = Arc::new(Stall::new(self.final_reads_timeout));
        let (final_reads_ok, final_reads_failed) = final_reads(
            target,
            workload,
            recorder,
            &self.processes,
            self.clients,
            &stall,
        )
        .await;
        LoadReport {
            stats: self.stats,
            elapsed: self.elapsed,
            final_reads_ok,
            final_reads_failed,
            final_reads_gave_up: stall.expired(),
        }
    }
}

/// Preload and the timed phase, without the final reads.
pub async fn run_timed(
    target: Target<'_>,
    workload: Arc<Workload>,
    config: &LoadConfig,
    recorder: Arc<Recorder>,
    progress: Arc<Progress>,
) -> TimedLoad {
    let processes = Arc::new(Processes(AtomicU64::new(u64::from(config.clients))));
    let workers: Vec<Worker> = (0..config.clients)
        .map(|index| Worker {
            session: target.session(),
            index,
            workload: workload.clone(),
            recorder: recorder.clone(),
            processes: processes.clone(),
            progress: progress.clone(),
        })
        .collect();
    let workers = preload(workers, config.clients).await;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in workers {
        let config = config.clone();
        tasks.spawn(async move { worker.run(&config, start).await });
    }
    let mut stats = Stats::default();
    while let Some(joined) = tasks.join_next().await {
        // A panicked worker has recorded `info` for its open op (Pending's drop); its figures
        // are lost, which the summary's counts then show.
        if let Ok(worker_stats) = joined {
            stats.merge(&worker_stats);
        }
    }
    TimedLoad {
        stats,
        elapsed: start.elapsed(),
        clients: config.clients,
        processes,
        final_reads_timeout: config.final_reads_timeout,
    }
}

/// When the final reads last made progress, shared by their workers: past `timeout` without
/// an answer, they give up.
struct Stall {
    timeout: Duration,
    /// Nanoseconds from `start` to the last answered final read (or to the start).
    answered_ns: AtomicU64,
    start: Instant,
}

impl Stall {
    fn new(timeout: Duration) -> Stall {
        Stall {
            timeout,
            answered_ns: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// When the final reads give up unless one is answered before.
    fn deadline(&self) -> Instant {
        let answered = Duration::from_nanos(self.answered_ns.load(Ordering::Relaxed));
        self.start + answered + self.timeout
    }

    fn answered(&self) {
        let now = self.start.elapsed().as_nanos() as u64;
        self.answered_ns.fetch_max(now, Ordering::Relaxed);
    }

    /// Whether to stop; once the final reads ended, whether they gave up.
    fn expired(&self) -> bool {
        Instant::now() >= self.deadline()
    }
}

/// Writes every preload key once (recorded, not timed), the keys split over the workers.
async fn preload(workers: Vec<Worker>, clients: u32) -> Vec<Worker> {
    let mut tasks = tokio::task::JoinSet::new();
    for mut worker in workers {
        tasks.spawn(async move {
            let keys = worker.workload.preload_keys();
            let index = u64::from(worker.index);
            let mine = keys.filter(move |key| key % u64::from(clients) == index);
            let mut process = u64::from(worker.index);
            for key in mine {
                let planned = worker.workload.write(key);
                if worker.execute(process, &planned, None).await.info {
                    process = worker.processes.fresh();
                }
            }
            worker
        });
    }
    let mut ready = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(worker) = joined {
            ready.push(worker);
        }
    }
    ready
}

/// Reads every key the workload used, retrying each up to `FINAL_READ_ATTEMPTS_MAX` times,
/// until `stall` says to give up.
async fn final_reads(
    target: Target<'_>,
    workload: &Arc<Workload>,
    recorder: &Arc<Recorder>,
    processes: &Arc<Processes>,
    clients: u32,
    stall: &Arc<Stall>,
) -> (u64, u64) {
    let keys = workload.keys_used();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..clients {
        let worker = Worker {
            session: target.session(),
            index,
            workload: workload.clone(),
            recorder: recorder.clone(),
            processes: processes.clone(),
            progress: Arc::new(Progress::default()),
        };
        let (keys, stall) = (keys.clone(), stall.clone());
        tasks.spawn(async move { worker.final_reads(keys, clients, &stall).await });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (worker_ok, worker_failed) = joined.unwrap_or((0, 0));
        ok += worker_ok;
        failed += worker_failed;
    }
    (ok, failed)
}

impl Worker {
    async fn run(mut self, config: &LoadConfig, start: Instant) -> Stats {
        let mut rng = Rng::new(config.seed ^ splitmix(u64::from(self.index)));
        let deadline = start + config.duration;
        // Open loop: this worker's share of the rate, its sends staggered over one interval.
        let interval = config
            .rate
            .map(|rate| Duration::from_secs_f64(f64::from(config.clients) / rate));
        let mut intended = start
            + interval.map_or(Duration::ZERO, |interval| {
                interval.mul_f64(f64::from(self.index) / f64::from(config.clients))
            });
        let mut process = u64::from(self.index);
        let mut stats = Stats::default();
        // The clock read that ends an op starts the next one of a closed loop.
        let mut now = Instant::now();
        loop {
            let send_at = match interval {
                Some(interval) => {
                    let at = intended;
                    intended += interval;
                    if at >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(at).await;
                    at
                }
                None => now,
            };
            if send_at >= deadline {
                break;
            }
            let planned = self.workload.next(&mut rng);
            let intended = interval.map(|_| send_at.into_std());
            let executed = self.execute(process, &planned, intended).await;
            now = Instant::now();
            stats.record(
                send_at - start,
                now - send_at,
                planned.f.name(),
                executed.error,
            );
            let counter = match executed.error {
                None => &self.progress.answered,
                Some(_) => &self.progress.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if executed.info {
                process = self.processes.fresh();
            }
        }
        stats
    }

    /// Runs one planned op and records it; `intended`: when an open loop meant to send it.
    async fn execute(
        &mut self,
        process: u64,
        planned: &Planned,
        intended: Option<std::time::Instant>,
    ) -> Executed {
        let read_mode = self.workload.config.read_mode;
        let pending =
            self.recorder
                .invoke(process, planned.f, &planned.key, &planned.value, intended);
        let answer = self.session.execute(planned.op.clone(), read_mode).await;
        let completion = workload::completion(planned, &answer);
        let info = matches!(completion, Completion::Info { .. });
        pending.complete(completion);
        let error = match &answer {
            Err(error) => Some(error.kind()),
            Ok(_) if info => Some("unexpected-result"),
            Ok(_) => None,
        };
        Executed { error, info }
    }

    /// This worker's share of the final reads; a key left unread (`stall` expired) counts as
    /// failed.
    async fn final_reads(
        mut self,
        keys: std::ops::Range<u64>,
        clients: u32,
        stall: &Stall,
    ) -> (u64, u64) {
        let (mut ok, mut failed) = (0, 0);
        let mut process = self.processes.fresh();
        let index = u64::from(self.index);
        let mine = keys.filter(move |key| key % u64::from(clients) == index);
        for key in mine {
            let planned = self.workload.final_read(key);
            let mut answered = false;
            for _ in 0..FINAL_READ_ATTEMPTS_MAX {
                if stall.expired() {
                    break;
                }
                // Cut at the deadline, the read is recorded `info` (its `Pending` dropped).
                let attempt = self.execute(process, &planned, None);
                let Ok(executed) = tokio::time::timeout_at(stall.deadline(), attempt).await else {
                    process = self.processes.fresh();
                    continue;
                };
                if executed.error.is_none() {
                    stall.answered();
                    answered = true;
                    break;
                }
                if executed.info {
                    process = self.processes.fresh();
                }
            }
            if answered {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        (ok, failed)
    }
}

fn splitmix(seed: u64) -> u64 {
    Rng::new(seed).next_u64()
}

/// Read mode names for summaries.
pub fn read_mode_name(mode: ReadMode) -> &'static str {
    match mode {
        ReadMode::Linearizable => "linearizable",
        ReadMode::Stale => "stale",
    }
}
