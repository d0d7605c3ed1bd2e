//! `bench`: see `bench --help` and the crate docs.
//!
//! Exit codes: 0 success, 1 the run failed or the checker found the history invalid, 2 usage.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use bench::app;
use bench::args::{self, Args, Command};
use bench::campaign::{self, args::CampaignArgs};
use clap::Parser;

/// mimalloc instead of glibc's malloc: allocation was about 12% of a node's CPU on puts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
/// Clock seeds keep 53 bits, so summary.json's seed survives any JSON reader's doubles.
const SEED_MASK: u64 = (1 << 53) - 1;

fn main() -> ExitCode {
    // The embedded cluster's nodes run in this process (see the function's measurements).
    if let Err(error) = kvnode::server::disable_transparent_huge_pages() {
        eprintln!("bench: warning: cannot turn transparent huge pages off: {error}");
    }
    let mut args = Args::parse();
    let clock_seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
        & SEED_MASK;
    if let Some(command) = args.command.take() {
        return run_command(command, clock_seed);
    }
    let settings = match args::settings(args, clock_seed) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("bench: error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let cluster = match (&settings.target, &settings.cluster) {
        (args::TargetKind::Etcd, _) => format!("etcd at {}", settings.endpoints.join(",")),
        (_, Some(path)) => path.display().to_string(),
        (_, None) => "embedded 3-node cluster".to_string(),
    };
    let history = if settings.history { "on" } else { "off" };
    eprintln!(
        "bench: {} clients, {} workload, {}, {} keys, {} B values, seed {}, history {history}, {}",
        settings.clients,
        settings.workload.name(),
        kvclient::duration::format_duration(settings.duration()),
        settings.keys,
        settings.value_size,
        settings.seed,
        cluster
    );
    match app::run(&settings) {
        Ok(outcome) => {
            if settings.json {
                println!("{}", outcome.summary);
            } else {
                print!("{}", outcome.summary_text);
                if let Some(check) = &outcome.check {
                    println!("\nChecker: {}", check.verdict);
                }
                println!("\nResults: {}", outcome.run_dir.display());
                println!("Report: {}", outcome.run_dir.join("report.html").display());
            }
            if let Some(shortfall) = &outcome.final_reads_shortfall {
                eprintln!("bench: {shortfall}");
            }
            if outcome.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(error) => {
            eprintln!("bench: error: {error}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn run_command(command: Command, clock_seed: u64) -> ExitCode {
    match command {
        Command::Campaign(campaign_args) => run_campaign(*campaign_args, clock_seed),
        Command::Compare(compare_args) => match bench::compare::run(&compare_args, clock_seed) {
            Ok(dir) => {
                println!("\nResults: {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("bench: compare: {error}");
                ExitCode::from(EXIT_FAILED)
            }
        },
        Command::Scale(scale_args) => match bench::scale::run(&scale_args, clock_seed) {
            Ok((dir, report)) => {
                print!("{}", bench::scale::table(&report));
                println!("\nResults: {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("bench: scale: {error}");
                ExitCode::from(EXIT_FAILED)
            }
        },
        Command::Index { results } => match bench::index::write_index(&results) {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("bench: error: {}: {error}", results.display());
                ExitCode::from(EXIT_FAILED)
            }
        },
        Command::Serve { results, listen } => match bench::serve::Server::bind(&results, listen) {
            Ok(server) => {
                let address = server.local_addr().unwrap_or(listen);
                println!(
                    "serving {} at http://{address}/ (Ctrl-C stops)",
                    results.display()
                );
                let _ = std::io::Write::flush(&mut std::io::stdout());
                server.run();
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("bench: error: {error}");
                ExitCode::from(EXIT_FAILED)
            }
        },
        Command::Report { run_dir } => match bench::report::render_run(&run_dir) {
            Ok(()) => {
                println!("{}", run_dir.join("report.html").display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("bench: error: {error}");
                ExitCode::from(EXIT_FAILED)
            }
        },
    }
}

fn run_campaign(campaign_args: CampaignArgs, clock_seed: u64) -> ExitCode {
    let settings = match campaign::args::settings(campaign_args, clock_seed) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("bench: error: {message}");
            return ExitCode::from(campaign::EXIT_UNKNOWN);
        }
    };
    let faults: Vec<&str> = (settings.faults.iter())
        .map(|kind| campaign::args::kind_name(*kind))
        .collect();
    eprintln!(
        "campaign {}: {} workload, faults {}, {}, {} clients, seed {}, backend {}",
        settings.name,
        settings.workload.name(),
        faults.join(","),
        kvclient::duration::format_duration(std::time::Duration::from_secs_f64(
            settings.time_limit_s
        )),
        settings.clients,
        settings.seed,
        settings.backend.name()
    );
    match campaign::run(&settings) {
        Ok(outcome) => {
            println!("Operations: {}", outcome.ops);
            println!("Faults injected: {}", outcome.faults);
            println!("Checker: {}", outcome.verdict);
            println!("Report: {}", outcome.run_dir.join("report.html").display());
            ExitCode::from(outcome.exit_code())
        }
        Err(error) => {
            eprintln!("bench: campaign error: {error}");
            ExitCode::from(campaign::EXIT_UNKNOWN)
        }
    }
}
