//! The simulator soak: many seeds, with a progress line and a closing figure.
//!
//! `cargo run --release -p kvsim --bin sim -- --seeds 100000`
//! A failing seed is printed with the command that replays it.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use kvsim::run_seeds;

#[derive(Parser)]
#[command(
    about = "Run the deterministic Raft simulator over many seeds (faults, crashes, \
                   partitions); every invariant is checked after every event."
)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 10_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let report_every = (args.seeds / 20).max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let progress = |done: u64| {
        if done.is_multiple_of(report_every) {
            let seconds = started.elapsed().as_secs_f64();
            eprintln!("{done}/{} seeds, {seconds:.0} s", args.seeds);
        }
    };
    let summary = run_seeds(args.first, args.seeds, threads, &progress);
    let seconds = started.elapsed().as_secs_f64();
    for violation in &summary.failures {
        eprintln!("FAILED {violation}");
    }
    let totals = &summary.totals;
    let failed: Vec<u64> = summary.failures.iter().map(|v| v.seed).collect();
    println!(
        "{} seeds x {:.0} events = {} events in {seconds:.1} s on {threads} threads \
         ({:.0} events/s); {totals}; {} failed {failed:?}",
        args.seeds,
        totals.events as f64 / args.seeds.max(1) as f64,
        totals.events,
        totals.events as f64 / seconds,
        failed.len(),
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
