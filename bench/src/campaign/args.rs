//! `bench campaign` options, checked into `CampaignSettings` before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use nemesis::schedule::{parse_fault_kinds, FaultKind};
use nemesis::{BackendKind, Target};
use serde::Serialize;

use crate::args::{parse_duration, CLIENTS_MAX};
use crate::workload::WorkloadKind;

/// Default first node port: away from `just cluster up` (50051) and the nemesis tests.
pub const BASE_PORT_DEFAULT: u16 = 47051;
/// Netns names (`kvc-n1`, bridge `kvcbr0`) and subnet, apart from `nemesis up`'s `kv`.
pub const NETNS_PREFIX: &str = "kvc";
pub const NETNS_SUBNET: [u8; 3] = [10, 77, 41];

/// Keys of a campaign's workload (register: independent registers; list-append: active keys).
pub const KEYS_DEFAULT: u64 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendArg {
    Local,
    Netns,
    Ssh,
}

impl BackendArg {
    /// As typed on the command line: `local`, `netns`.
    pub fn name(self) -> &'static str {
        match self {
            BackendArg::Local => "local",
            BackendArg::Netns => "netns",
            BackendArg::Ssh => "ssh",
        }
    }

    pub fn kind(self) -> BackendKind {
        match self {
            BackendArg::Local => BackendKind::Local,
            BackendArg::Netns => BackendKind::Netns,
            BackendArg::Ssh => BackendKind::Ssh,
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct CampaignArgs {
    /// The checked workload: register (read/write/cas, linearizability) or list-append
    /// (transactions, Elle-style serializability).
    #[arg(long, default_value = "register", value_parser = checked_workload())]
    pub workload: WorkloadKind,
    /// Fault kinds, comma-separated: kill, pause, partition (needs --backend netns or ssh),
    /// membership (a voter or the leader removed, added back as a learner, promoted),
    /// disk-lose-unsynced, disk-torn, disk-corrupt, disk-fsync-error (need root and the local
    /// or netns backend: every node's data then lives on the fault-injecting filesystem,
    /// nemesis/src/fs).
    #[arg(long, default_value = "kill,pause")]
    pub faults: String,
    /// Every kill, pause and disk fault hits this target (one, minority, leader, all) instead
    /// of one drawn from the seed; `all` with disk-lose-unsynced is a whole-cluster power loss.
    #[arg(long)]
    pub target: Option<String>,
    /// Length of the load (faults happen inside it): `60s`, `2m`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub time_limit: Duration,
    /// Concurrent clients (sessions); each is one process of the history.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Quiet time before each fault.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// How long each fault lasts (kill: the restart delay). Default: the interval.
    #[arg(long, value_parser = parse_duration)]
    pub fault_duration: Option<Duration>,
    /// Open loop at this many operations per second over all clients. Default: closed loop
    /// (register values are unique, so the checker stays near-linear in the ops).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Keys. Default: 8 for register (independent registers), 8 active keys for list-append.
    #[arg(long)]
    pub keys: Option<u64>,
    /// Seed of the workload and the fault schedule (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the nodes run: local processes on loopback, one network namespace per node
    /// (root; partitions), or one node per host of --hosts over ssh (partitions with iptables
    /// on the hosts).
    #[arg(long, value_enum, default_value_t = BackendArg::Local)]
    pub backend: BackendArg,
    /// Nodes in the cluster (ssh backend: one per host of --hosts).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Hosts file of the ssh backend, one host per line: `[user@]address[:port] [key=PATH]
    /// [dir=PATH] [known-hosts=PATH]` (proto-docs/operations.md).
    #[arg(long)]
    pub hosts: Option<PathBuf>,
    /// Directory name under --results (default: `<workload>-<faults>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Where `<name>/<date-time>/` and `latest` go.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// First node port (local backend; metrics on port + 1000).
    #[arg(long, default_value_t = BASE_PORT_DEFAULT)]
    pub base_port: u16,
    /// How long the healed cluster gets to elect a stable leader and take a write.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub recovery_timeout: Duration,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// The checked settings (saved in summary.json).
#[derive(Clone, Debug, Serialize)]
pub struct CampaignSettings {
    pub name: String,
    pub workload: WorkloadKind,
    pub faults: Vec<FaultKind>,
    pub target: Option<Target>,
    pub time_limit_s: f64,
    pub clients: u32,
    pub interval_s: f64,
    pub fault_duration_s: f64,
    pub seed: u64,
    pub backend: BackendArg,
    pub nodes: u64,
    /// The ssh backend's hosts (node k on host k); empty on the other backends. summary.json
    /// names them under `hosts` (keys and paths stay out of the results).
    #[serde(skip)]
    pub hosts: Vec<nemesis::ssh::SshHost>,
    pub keys: u64,
    pub rate: Option<f64>,
    pub results: PathBuf,
    pub base_port: u16,
    pub recovery_timeout_s: f64,
    pub quiet: bool,
}

/// Parses `--workload`: only the workloads the checker verifies are offered.
fn checked_workload() -> impl clap::builder::TypedValueParser<Value = WorkloadKind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["register", "list-append"]).map(|name| {
        match name.as_str() {
            "list-append" => WorkloadKind::ListAppend,
            _ => WorkloadKind::Register,
        }
    })
}

pub fn settings(args: CampaignArgs, clock_seed: u64) -> Result<CampaignSettings, String> {
    if !matches!(
        args.workload,
        WorkloadKind::Register | WorkloadKind::ListAppend
    ) {
        return Err("--workload must be register or list-append".into());
    }
    let faults = parse_fault_kinds(&args.faults).map_err(|e| format!("--faults: {e}"))?;
    if faults.contains(&FaultKind::Partition) && args.backend == BackendArg::Local {
        return Err("--faults partition needs --backend netns (run as root) or ssh".into());
    }
    let disk = faults.iter().any(|f| f.disk().is_some());
    if disk && args.backend == BackendArg::Ssh {
        return Err(
            "--faults disk-* are not supported on the ssh backend yet (FUSE on every host): \
             use --backend local or netns"
                .into(),
        );
    }
    if disk && !nemesis::netns::is_root() {
        return Err("--faults disk-* mount FUSE filesystems: run as root".into());
    }
    let (hosts, nodes) = match (args.backend, &args.hosts) {
        (BackendArg::Ssh, Some(path)) => {
            let hosts = nemesis::ssh::load_hosts(path).map_err(|e| format!("--hosts: {e}"))?;
            let count = hosts.len() as u64;
            (hosts, count)
        }
        (BackendArg::Ssh, None) => return Err("--backend ssh needs --hosts FILE".into()),
        (_, Some(_)) => return Err("--hosts is for --backend ssh".into()),
        (_, None) => (Vec::new(), args.nodes),
    };
    let target = match args.target.as_deref() {
        None => None,
        Some(text) => Some(match text.parse::<Target>() {
            Ok(Target::Node(_)) | Err(_) => {
                return Err(format!(
                    "--target \"{text}\": use one, minority, leader or all"
                ))
            }
            Ok(target) => target,
        }),
    };
    if let Some(target) = target {
        if let Some(kind) = faults
            .iter()
            .find(|k| **k != FaultKind::Partition && !k.targets().contains(&target))
        {
            return Err(format!(
                "--target {target} does not apply to {}",
                kind.name()
            ));
        }
    }
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return Err(format!("--clients must be in 1..={CLIENTS_MAX}"));
    }
    if args.time_limit.is_zero() || args.interval.is_zero() {
        return Err("--time-limit and --interval must be > 0".into());
    }
    let fault_duration = args.fault_duration.unwrap_or(args.interval);
    if fault_duration.is_zero() {
        return Err("--fault-duration must be > 0".into());
    }
    if nodes == 0 || nodes > nemesis::spec::NODE_COUNT_MAX {
        return Err(format!(
            "--nodes must be in 1..={}",
            nemesis::spec::NODE_COUNT_MAX
        ));
    }
    let rate = match args.rate {
        Some(rate) if !(rate.is_finite() && rate > 0.0) => {
            return Err(format!("--rate must be a positive number, got {rate}"))
        }
        rate => rate,
    };
    let keys = args.keys.unwrap_or(KEYS_DEFAULT);
    if keys == 0 {
        return Err("--keys must be > 0".into());
    }
    let fault_names: Vec<&str> = faults.iter().map(|kind| kind_name(*kind)).collect();
    let target_suffix = target.map_or(String::new(), |t| format!("@{t}"));
    let name = args.name.unwrap_or_else(|| {
        format!(
            "{}-{}{target_suffix}",
            args.workload.name(),
            fault_names.join("+")
        )
    });
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(format!("--name '{name}' must be a plain directory name"));
    }
    Ok(CampaignSettings {
        name,
        workload: args.workload,
        faults,
        target,
        time_limit_s: args.time_limit.as_secs_f64(),
        clients: args.clients,
        interval_s: args.interval.as_secs_f64(),
        fault_duration_s: fault_duration.as_secs_f64(),
        seed: args.seed.unwrap_or(clock_seed),
        backend: args.backend,
        nodes,
        hosts,
        keys,
        rate,
        results: args.results,
        base_port: args.base_port,
        recovery_timeout_s: args.recovery_timeout.as_secs_f64(),
        quiet: args.quiet,
    })
}

pub fn kind_name(kind: FaultKind) -> &'static str {
    kind.name()
}

impl CampaignSettings {
    /// Whether the nodes' data lives on the fault-injecting filesystem.
    pub fn disk(&self) -> bool {
        self.faults.iter().any(|kind| kind.disk().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: CampaignArgs,
    }

    fn parse(args: &[&str]) -> Result<CampaignSettings, String> {
        let wrapper =
            Wrapper::try_parse_from([&["campaign"], args].concat()).map_err(|e| e.to_string())?;
        settings(wrapper.args, 7)
    }

    #[test]
    fn names_follow_workload_and_faults_and_errors_name_the_flag() {
        let settings = parse(&["--workload", "list-append", "--faults", "kill,pause"]).unwrap();
        assert_eq!(settings.name, "list-append-kill+pause");
        assert_eq!((settings.seed, settings.fault_duration_s), (7, 5.0));
        let cases: [(&[&str], &str); 8] = [
            (&["--workload", "put"], "--workload"),
            (&["--faults", "partition"], "netns"),
            (&["--backend", "ssh"], "--hosts"),
            (
                &["--backend", "ssh", "--hosts", "/nonexistent/hosts.txt"],
                "hosts.txt",
            ),
            (&["--hosts", "h.txt"], "--backend ssh"),
            (&["--faults", "explode"], "--faults"),
            (&["--clients", "0"], "--clients"),
            (&["--name", "../x"], "--name"),
        ];
        for (args, needle) in cases {
            let args: &[&str] = args;
            let error = parse(args).unwrap_err();
            assert!(error.contains(needle), "{args:?}: {error}");
        }
    }
}
