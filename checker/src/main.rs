//! `checker check HISTORY --workload register|kv|list-append`: prints a verdict, writes
//! checker.json (and an HTML page for a violation). Exit codes: 0 valid, 1 invalid,
//! 2 unknown (time limit), 3 bad input or usage, 4 an output file could not be written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use checker::history::{self, Format};
use checker::{check, html, Options, Validity, Workload};

const EXIT_VALID: u8 = 0;
const EXIT_INVALID: u8 = 1;
const EXIT_UNKNOWN: u8 = 2;
const EXIT_BAD_INPUT: u8 = 3;
const EXIT_OUTPUT_FAILED: u8 = 4;

#[derive(Parser)]
#[command(
    name = "checker",
    version,
    about = "Checks recorded histories of ReplicatedKVStore"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check one history file.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// History file (JSON lines, or the Jepsen log / EDN formats with --format).
    history: PathBuf,
    #[arg(long, value_enum)]
    workload: Workload,
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// Where to write the JSON report.
    #[arg(long, default_value = "checker.json")]
    out: PathBuf,
    /// Where to write the HTML page of a violation [default: checker.html beside --out].
    #[arg(long)]
    html: Option<PathBuf>,
    /// Give up with "unknown" after this many seconds.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // clap exits 2 on usage errors, which would read as "unknown".
            let _ = error.print();
            let code = if error.use_stderr() {
                EXIT_BAD_INPUT
            } else {
                EXIT_VALID
            };
            return ExitCode::from(code);
        }
    };
    let Command::Check(arguments) = cli.command;
    ExitCode::from(run(&arguments))
}

fn run(arguments: &CheckArgs) -> u8 {
    let started = Instant::now();
    let history = match history::read(&arguments.history, arguments.format) {
        Ok(history) => history,
        Err(error) => {
            eprintln!("bad input: {}: {error}", arguments.history.display());
            return EXIT_BAD_INPUT;
        }
    };
    let options = Options {
        time_limit: arguments.time_limit.map(Duration::from_secs_f64),
        threads: arguments.threads,
        ..Options::default()
    };
    let report = match check(&history, arguments.workload, &options) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("bad input: {}: {error}", arguments.history.display());
            return EXIT_BAD_INPUT;
        }
    };
    println!(
        "{} [{:.3} s]",
        report.verdict_line(),
        started.elapsed().as_secs_f64()
    );
    if let Err(error) = write_outputs(arguments, &history, &report) {
        eprintln!("error: {error:#}");
        return EXIT_OUTPUT_FAILED;
    }
    match report.valid {
        Validity::Valid => EXIT_VALID,
        Validity::Invalid => EXIT_INVALID,
        Validity::Unknown => EXIT_UNKNOWN,
    }
}

fn write_outputs(
    arguments: &CheckArgs,
    history: &history::History,
    report: &checker::Report,
) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report).context("serializing the report")?;
    std::fs::write(&arguments.out, json + "\n")
        .with_context(|| format!("writing {}", arguments.out.display()))?;
    if report.valid != Validity::Invalid {
        return Ok(());
    }
    let html_path = arguments.html.clone().unwrap_or_else(|| {
        arguments
            .out
            .parent()
            .unwrap_or(Path::new(""))
            .join("checker.html")
    });
    std::fs::write(&html_path, html::render(history, report))
        .with_context(|| format!("writing {}", html_path.display()))?;
    println!("violation drawn in {}", html_path.display());
    Ok(())
}
