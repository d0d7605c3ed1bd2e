//! The deterministic simulation of whole nodes, many seeds with faults.
//!
//! - `cargo test --release -p kvsim --test sim` runs `SIM_SEEDS` seeds (default 4000) from
//!   `SIM_FIRST` (default 0), on every core.
//! - `SIM_SEED=<n> cargo test --release -p kvsim --test sim` replays one seed and prints its
//!   trace tail (`SIM_TRACE_LINES`, default 80).

use kvsim::{run_seeds, Sim, SimConfig};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn replay(seed: u64) {
    let mut sim = Sim::new(SimConfig::from_seed(seed));
    sim.trace = Some(Vec::new());
    let result = sim.run();
    if let Some(trace) = &sim.trace {
        let lines = env_u64("SIM_TRACE_LINES").unwrap_or(80) as usize;
        let tail = trace.len().saturating_sub(lines);
        for line in &trace[tail..] {
            eprintln!("{line}");
        }
    }
    if let Err(violation) = result {
        panic!("{violation}");
    }
}

#[test]
fn sim_seeds_with_faults_keep_every_invariant() {
    if let Some(seed) = env_u64("SIM_SEED") {
        return replay(seed);
    }
    let first = env_u64("SIM_FIRST").unwrap_or(0);
    let count = env_u64("SIM_SEEDS").unwrap_or(4000);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let summary = run_seeds(first, count, threads, &|_| {});
    for violation in &summary.failures {
        eprintln!("FAILED {violation}");
    }
    let totals = &summary.totals;
    eprintln!("{count} seeds: {totals}");
    // Faults must actually happen, or the run proves little.
    let passed = count - summary.failures.len() as u64;
    assert!(
        totals.crashes > passed / 4,
        "too few crashes: {}",
        totals.crashes
    );
    assert!(
        totals.pauses > passed / 8,
        "too few pauses: {}",
        totals.pauses
    );
    assert!(
        totals.snapshots_installed > passed / 8,
        "too few snapshot installs"
    );
    // Followers decode received snapshots while the leader's probes arrive.
    assert!(
        totals.appends_held_off > passed / 100,
        "too few appends held off while a snapshot decodes: {}",
        totals.appends_held_off
    );
    // Leaders read entries evicted from memory back from the disk (two seeds in three).
    assert!(
        totals.entries_loaded > passed,
        "too few evicted entries read back: {}",
        totals.entries_loaded
    );
    // Followers write appends on their own thread, reported mid-perform (two seeds in three).
    assert!(
        totals.wal_writes_inline > passed,
        "too few appends written inline: {}",
        totals.wal_writes_inline
    );
    assert!(
        totals.writes_acked > passed * 10,
        "too few acknowledged writes"
    );
    assert!(
        totals.reads_ok > passed * 5,
        "too few reads: {}",
        totals.reads_ok
    );
    // Configuration changes interleave with the other faults (about two seeds in three).
    assert!(
        totals.conf_changes > passed,
        "too few configuration changes: {}",
        totals.conf_changes
    );
    assert!(
        totals.conf_changes_refused_unsafe > passed / 20,
        "too few unsafe single-step changes tried: {}",
        totals.conf_changes_refused_unsafe
    );
    let failed: Vec<u64> = summary.failures.iter().map(|v| v.seed).collect();
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}

#[test]
fn sim_replays_a_seed_event_for_event() {
    let run = |seed| {
        let mut sim = Sim::new(SimConfig::from_seed(seed));
        sim.trace = Some(Vec::new());
        let result = sim.run().map(|s| s.events);
        (
            result.map_err(|v| v.to_string()),
            sim.trace.take().unwrap_or_default(),
        )
    };
    let (first, trace_a) = run(7);
    let (second, trace_b) = run(7);
    assert_eq!(first, second);
    assert!(trace_a.len() > 100, "trace too short to prove anything");
    assert_eq!(trace_a, trace_b);
}
