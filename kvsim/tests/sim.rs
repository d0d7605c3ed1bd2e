//! The deterministic simulation, many seeds with faults.
//!
//! - `cargo test --release -p kvsim --test sim` runs `SIM_SEEDS` seeds (default 2000) from `SIM_FIRST`
//!   (default 0).
//! - `SIM_SEED=<n> cargo test --release -p kvsim --test sim` replays one seed and prints its trace tail.

use kvsim::{run_seed, Sim, SimConfig};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn sim_seeds_with_faults_keep_every_invariant() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let mut sim = Sim::new(SimConfig::from_seed(seed));
        sim.trace = Some(Vec::new());
        let result = sim.run();
        if let Some(trace) = &sim.trace {
            let tail = trace.len().saturating_sub(60);
            for line in &trace[tail..] {
                eprintln!("{line}");
            }
        }
        if let Err(violation) = result {
            panic!("{violation}");
        }
        return;
    }
    let first = env_u64("SIM_FIRST").unwrap_or(0);
    let count = env_u64("SIM_SEEDS").unwrap_or(2000);
    let mut failures = Vec::new();
    let mut events = 0;
    let mut crashes = 0;
    let mut writes = 0;
    let mut reads = 0;
    let mut elections = 0;
    for seed in first..first + count {
        match run_seed(seed) {
            Ok(stats) => {
                events += stats.events;
                crashes += stats.crashes;
                writes += stats.writes_acked;
                reads += stats.reads_ok;
                elections += stats.elections;
            }
            Err(violation) => {
                eprintln!("FAILED {violation}");
                failures.push(violation.seed);
            }
        }
    }
    eprintln!(
        "{count} seeds: {events} events, {crashes} crashes, {elections} elections, \
         {writes} writes acked, {reads} reads"
    );
    // Faults must actually happen, or the run proves little.
    assert!(crashes > count / 4, "too few crashes: {crashes}");
    assert!(writes > count * 10, "too few acknowledged writes: {writes}");
    assert!(reads > count * 5, "too few reads: {reads}");
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
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
