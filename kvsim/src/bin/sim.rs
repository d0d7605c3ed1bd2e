//! The simulator soak: many seeds, with a progress line and a closing figure.
//!
//! `cargo run --release -p kvsim --bin sim -- --seeds 100000`
//! A failing seed is printed with the command that replays it.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use kvsim::run_seed;

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
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let (mut events, mut crashes, mut elections, mut writes, mut reads) = (0u64, 0, 0, 0, 0);
    let mut failed = Vec::new();
    let report_every = (args.seeds / 20).max(1);
    for (done, seed) in (args.first..args.first + args.seeds).enumerate() {
        match run_seed(seed) {
            Ok(stats) => {
                events += stats.events;
                crashes += stats.crashes;
                elections += stats.elections;
                writes += stats.writes_acked;
                reads += stats.reads_ok;
            }
            Err(violation) => {
                eprintln!("FAILED {violation}");
                failed.push(seed);
                if args.fail_fast {
                    break;
                }
            }
        }
        let done = done as u64 + 1;
        if done.is_multiple_of(report_every) {
            let seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "{done}/{} seeds, {events} events, {:.0} events/s, {} failed",
                args.seeds,
                events as f64 / seconds,
                failed.len()
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} seeds x {:.0} events = {events} events in {seconds:.1} s ({:.0} events/s); \
         {crashes} crashes, {elections} elections, {writes} writes acked, {reads} reads; \
         {} failed {:?}",
        args.seeds,
        events as f64 / args.seeds.max(1) as f64,
        events as f64 / seconds,
        failed.len(),
        failed
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
