//! The command line, checked into `Settings` before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kvclient::ReadMode;
use kvstate::limits::{SESSIONS_MAX, VALUE_BYTES_MAX};
use serde::Serialize;

use crate::workload::WorkloadKind;
pub use kvclient::duration::parse_duration;

/// Most clients: each is a session, and the state machine keeps `SESSIONS_MAX` of them; more
/// would evict live sessions and void exactly-once retries.
pub const CLIENTS_MAX: u32 = SESSIONS_MAX as u32;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    version,
    about = "Load generator for ReplicatedKVStore (brings its own 3-node cluster by default)",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// `campaign`, `compare`, `scale`, `index`, `report` or `serve`; without one, a plain load run.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Concurrent clients (sessions); each is one process of the history.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// How long the timed phase runs: `10s`, `1.5s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// What the clients do.
    #[arg(long, value_enum, default_value_t = WorkloadKind::Mixed)]
    pub workload: WorkloadKind,
    /// Keys (active keys for list-append). Default: 1000 for put/get/mixed, 3 for register,
    /// 8 for list-append.
    #[arg(long)]
    pub keys: Option<u64>,
    /// Bytes of each put value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Open loop at this many operations per second over all clients; latency is measured
    /// from each operation's intended send time. Default: closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// What to load: `kv` (our cluster: embedded, or --cluster) or `etcd` (an etcd
    /// cluster at --endpoints; bench built with `--features etcd`).
    #[arg(long, value_enum, default_value_t = TargetKind::Kv)]
    pub target: TargetKind,
    /// etcd client URLs without scheme, for --target etcd: `127.0.0.1:2379,127.0.0.1:22379`.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// gRPC connections to etcd; the clients are spread over them (as etcd's own benchmark
    /// tool's --conns).
    #[arg(long, default_value_t = ETCD_CONNS_DEFAULT)]
    pub etcd_conns: usize,
    /// An external cluster's config (TOML). Default: an embedded 3-node cluster.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Certificates for an external cluster (default: the config's certs_dir).
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// The client certificate name.
    #[arg(long, default_value = "client1")]
    pub client: String,
    /// Pids of an external cluster's nodes (ours or etcd's), to report their CPU:
    /// `123,456,789`.
    #[arg(long, value_delimiter = ',')]
    pub node_pids: Vec<u32>,
    #[arg(long, value_enum, default_value_t = ReadModeArg::Linearizable)]
    pub read_mode: ReadModeArg,
    /// Run the checker on the history (default: on for register and list-append).
    #[arg(long, overrides_with = "no_check")]
    pub check: bool,
    /// Do not run the checker.
    #[arg(long, overrides_with = "check")]
    pub no_check: bool,
    /// Record every operation in history.jsonl. Default: on for the checked workloads
    /// (register, list-append) and with --check; off for put, get and mixed, pure throughput
    /// runs (a history grows by about 2 MB per second of load).
    #[arg(long, value_enum)]
    pub history: Option<Toggle>,
    /// Print the summary as JSON on stdout (what summary.json holds), and nothing else there.
    #[arg(long)]
    pub json: bool,
    /// Workload seed (default: from the clock; printed and saved).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where `bench/<date-time>/` and `latest` go.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// How long one attempt (one node) waits for an answer before the client tries the next.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// The final reads (every key read once after the load, so that a lost write shows) stop
    /// once this long has gone by without one answered; the keys left unread count as failed
    /// final reads, and the checker's verdict cannot be `valid`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub final_reads_timeout: Duration,
    /// Worker threads of bench's own runtime (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Put the embedded nodes' data on the fault-injecting filesystem (nemesis/src/fs, root
    /// only), to measure its overhead; by default they use the real filesystem.
    #[arg(long)]
    pub disk_fs: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// A fault-injection campaign on a real kvnode cluster (exit 0 valid, 1 anomaly,
    /// 2 unknown or error).
    Campaign(Box<crate::campaign::args::CampaignArgs>),
    /// Our cluster against a local 3-member etcd (Debian's etcd-server), both started here,
    /// the same workloads interleaved round by round; prints one side-by-side table.
    Compare(crate::compare::CompareArgs),
    /// A large state: fill three kvnode processes to --keys keys, then measure put load while
    /// snapshots are written and while a wiped follower catches up; peak RSS per node.
    Scale(crate::scale::ScaleArgs),
    /// Regenerate `<results>/index.html` from the runs found there.
    Index {
        /// The results directory.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Redraw a run directory's report.html (a campaign's or a plain run's) from its files.
    Report {
        /// The run's directory (`results/<name>/<date-time>`).
        run_dir: PathBuf,
    },
    /// Browse the results over HTTP: the index of every run, each run's report and files.
    Serve {
        /// The results directory to serve (nothing outside it is served).
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// Address to listen on (port 0: any free port; the URL is printed).
        #[arg(long, default_value = crate::serve::LISTEN_DEFAULT)]
        listen: std::net::SocketAddr,
    },
}

/// Connections to etcd by default (etcd's benchmark spreads clients over a few).
pub const ETCD_CONNS_DEFAULT: usize = 8;
/// Most connections to etcd.
pub const ETCD_CONNS_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// Our cluster.
    Kv,
    /// An etcd cluster (v3 gRPC API).
    Etcd,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Kv => "kv",
            TargetKind::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadModeArg {
    Linearizable,
    Stale,
}

/// The checked settings of a run (saved in `summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub clients: u32,
    pub duration_s: f64,
    pub workload: WorkloadKind,
    pub keys: u64,
    pub value_size: usize,
    pub rate: Option<f64>,
    pub target: TargetKind,
    pub endpoints: Vec<String>,
    pub etcd_conns: usize,
    pub cluster: Option<PathBuf>,
    pub certs: Option<PathBuf>,
    pub client: String,
    pub node_pids: Vec<u32>,
    pub read_mode: &'static str,
    pub check: bool,
    /// Whether history.jsonl is written.
    pub history: bool,
    #[serde(skip)]
    pub json: bool,
    pub seed: u64,
    pub results: PathBuf,
    pub timeout_ms: u64,
    pub final_reads_timeout_ms: u64,
    pub threads: usize,
    pub quiet: bool,
    pub disk_fs: bool,
}

impl Settings {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }

    pub fn read_mode(&self) -> ReadMode {
        match self.read_mode {
            "stale" => ReadMode::Stale,
            _ => ReadMode::Linearizable,
        }
    }
}

/// Checks what clap cannot; the message names the flag.
pub fn settings(args: Args, clock_seed: u64) -> Result<Settings, String> {
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return Err(format!(
            "--clients must be in 1..={CLIENTS_MAX}, got {}",
            args.clients
        ));
    }
    if args.duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    if args.value_size == 0 || args.value_size > VALUE_BYTES_MAX {
        let size = args.value_size;
        return Err(format!(
            "--value-size must be in 1..={VALUE_BYTES_MAX}, got {size}"
        ));
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("--rate must be a positive number, got {rate}"));
        }
    }
    let keys = args.keys.unwrap_or(args.workload.keys_default());
    if keys == 0 {
        return Err("--keys must be > 0".into());
    }
    check_target(&args)?;
    if args.request_timeout.is_zero() || args.final_reads_timeout.is_zero() || args.threads == 0 {
        return Err("--request-timeout, --final-reads-timeout and --threads must be > 0".into());
    }
    let check = if args.no_check {
        false
    } else {
        args.check || args.workload.check_default()
    };
    let history = match args.history {
        Some(Toggle::Off) if check => {
            return Err(
                "the checker reads the history: --check needs --history on (or give \
                        --no-check)"
                    .into(),
            )
        }
        Some(toggle) => toggle == Toggle::On,
        None => check,
    };
    Ok(Settings {
        clients: args.clients,
        duration_s: args.duration.as_secs_f64(),
        workload: args.workload,
        keys,
        value_size: args.value_size,
        rate: args.rate,
        target: args.target,
        endpoints: args.endpoints,
        etcd_conns: args.etcd_conns,
        cluster: args.cluster,
        certs: args.certs,
        client: args.client,
        node_pids: args.node_pids,
        read_mode: match args.read_mode {
            ReadModeArg::Linearizable => "linearizable",
            ReadModeArg::Stale => "stale",
        },
        check,
        history,
        json: args.json,
        seed: args.seed.unwrap_or(clock_seed),
        results: args.results,
        timeout_ms: args.request_timeout.as_millis() as u64,
        final_reads_timeout_ms: args.final_reads_timeout.as_millis() as u64,
        threads: args.threads,
        quiet: args.quiet,
        disk_fs: args.disk_fs,
    })
}

/// The target's flags fit together (and bench can drive it).
fn check_target(args: &Args) -> Result<(), String> {
    match args.target {
        TargetKind::Kv => {
            if !args.endpoints.is_empty() {
                return Err("--endpoints is for --target etcd (ours: --cluster)".into());
            }
            if args.cluster.is_none() && (!args.node_pids.is_empty() || args.certs.is_some()) {
                return Err("--node-pids and --certs are for an external --cluster".into());
            }
        }
        TargetKind::Etcd => {
            if !cfg!(feature = "etcd") {
                return Err(
                    "--target etcd: this bench was built without etcd support; build \
                            it with `cargo build --release -p bench --features etcd`"
                        .into(),
                );
            }
            if args.endpoints.is_empty() {
                return Err("--target etcd needs --endpoints host:port[,host:port...]".into());
            }
            if args.cluster.is_some() || args.certs.is_some() {
                return Err("--cluster and --certs are for --target kv".into());
            }
            if args.workload == WorkloadKind::ListAppend {
                return Err(
                    "--target etcd runs put, get, mixed and register; list-append \
                            needs multi-key appends etcd does not have"
                        .into(),
                );
            }
            if args.etcd_conns == 0 || args.etcd_conns > ETCD_CONNS_MAX {
                return Err(format!(
                    "--etcd-conns must be in 1..={ETCD_CONNS_MAX}, got {}",
                    args.etcd_conns
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let args = Args::try_parse_from([&["bench"], args].concat()).map_err(|e| e.to_string())?;
        settings(args, 1)
    }

    #[test]
    fn argument_errors_name_the_flag() {
        let cases: [(&[&str], &str); 8] = [
            (&["--clients", "0"], "--clients"),
            (&["--clients", "100000"], "--clients"),
            (&["--duration", "0s"], "--duration"),
            (&["--duration", "soon"], "not a duration"),
            (&["--value-size", "0"], "--value-size"),
            (&["--rate=-5"], "--rate"),
            (&["--workload", "scan"], "invalid value 'scan'"),
            (&["--node-pids", "1,2"], "--cluster"),
        ];
        for (args, needle) in cases {
            let error = parse(args).unwrap_err();
            assert!(error.contains(needle), "{args:?}: {error}");
        }
    }

    #[test]
    fn target_flags_fit_together() {
        let error = parse(&["--endpoints", "127.0.0.1:2379"]).unwrap_err();
        assert!(error.contains("--target etcd"), "{error}");
        let error = parse(&["--target", "etcd"]).unwrap_err();
        let expected = if cfg!(feature = "etcd") {
            "needs --endpoints"
        } else {
            "--features etcd"
        };
        assert!(error.contains(expected), "{error}");
        if cfg!(feature = "etcd") {
            let etcd = ["--target", "etcd", "--endpoints", "127.0.0.1:2379"];
            let error = parse(&[&etcd[..], &["--workload", "list-append"]].concat()).unwrap_err();
            assert!(error.contains("list-append"), "{error}");
            let error = parse(&[&etcd[..], &["--etcd-conns", "0"]].concat()).unwrap_err();
            assert!(error.contains("--etcd-conns"), "{error}");
            let settings = parse(&[&etcd[..], &["--workload", "register"]].concat()).unwrap();
            assert_eq!(settings.target, TargetKind::Etcd);
            assert_eq!(settings.endpoints, ["127.0.0.1:2379"]);
        }
    }

    #[test]
    fn defaults_follow_the_workload() {
        let settings = parse(&["--workload", "register"]).unwrap();
        assert_eq!((settings.keys, settings.check), (3, true));
        let settings = parse(&["--workload", "put", "--check"]).unwrap();
        assert_eq!((settings.keys, settings.check), (1000, true));
        let settings = parse(&["--workload", "list-append", "--no-check"]).unwrap();
        assert!(!settings.check && !settings.history);
        assert!(parse(&["--workload", "register"]).unwrap().history);
        assert!(!parse(&["--workload", "mixed"]).unwrap().history);
        assert!(parse(&["--workload", "mixed", "--check"]).unwrap().history);
        assert!(
            parse(&["--workload", "put", "--history", "on"])
                .unwrap()
                .history
        );
        let error = parse(&["--workload", "register", "--history", "off"]).unwrap_err();
        assert!(error.contains("--check needs --history on"), "{error}");
        assert_eq!(parse(&[]).unwrap().seed, 1);
    }
}
