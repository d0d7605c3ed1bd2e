//! `checker check HISTORY [--workload register|kv|list-append] [--model knossos|porcupine]`:
//! prints a verdict, writes checker.json (and an HTML page for a violation; Jepsen-style EDN on
//! request). Exit codes: 0 valid, 1 invalid, 2 unknown (time limit), 3 bad input or usage, 4 an
//! output file could not be written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use checker::history::{self, Format};
use checker::{check, html, resolve_workload, Model, Options, Validity, Workload};

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
    /// History file: JSON lines, Jepsen's history.edn, Knossos' EDN, or jepsen.util log lines.
    history: PathBuf,
    /// What the history exercised [default: the history's header, else inferred from its
    /// operations]. Must agree with the header if both are given.
    #[arg(long, value_enum)]
    workload: Option<Workload>,
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// Register semantics: knossos (a fail never happened, a read of nil constrains nothing) or
    /// porcupine (a fail cas without error ran and missed, nil means never written)
    /// [default: knossos for EDN, porcupine for JSON lines and Jepsen log lines].
    #[arg(long, value_enum)]
    model: Option<Model>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "checker.json")]
    out: PathBuf,
    /// Where to write the HTML page of a violation [default: checker.html beside --out].
    #[arg(long)]
    html: Option<PathBuf>,
    /// Also write the result as Jepsen-style EDN (`{:valid? false, :anomaly-types [...]}`).
    #[arg(long)]
    edn: Option<PathBuf>,
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
    let bad_input = |error: &dyn std::fmt::Display| {
        eprintln!("bad input: {}: {error}", arguments.history.display());
        EXIT_BAD_INPUT
    };
    let mut history = match history::read(&arguments.history, arguments.format) {
        Ok(history) => history,
        Err(error) => return bad_input(&error),
    };
    if let Some(model) = arguments.model {
        history.set_model(model);
    }
    let (workload, source) = match resolve_workload(&history, arguments.workload) {
        Ok(resolved) => resolved,
        Err(error) => return bad_input(&error),
    };
    let options = Options {
        time_limit: arguments.time_limit.map(Duration::from_secs_f64),
        threads: arguments.threads,
        ..Options::default()
    };
    let report = match check(&history, workload, &options) {
        Ok(report) => report,
        Err(error) => return bad_input(&error),
    };
    println!(
        "{} [{:.3} s; {} history, workload {} ({source}), model {}{}]",
        report.verdict_line(),
        started.elapsed().as_secs_f64(),
        history.format.name(),
        workload.name(),
        history.model.name(),
        match history.nemesis_events {
            0 => String::new(),
            count => format!(", {count} nemesis events skipped"),
        }
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
    if let Some(path) = &arguments.edn {
        std::fs::write(path, report.to_edn() + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
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
