//! `nemesis`: start a cluster, break it by hand, look at it, clean up. CLI parsing and output
//! only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use kvclient::duration::parse_duration;
use nemesis::cluster::{self, Cluster};
use nemesis::fault::DiskFault;
use nemesis::fs::{DiskReply, DiskRequest};
use nemesis::spec::{self, ClusterSpec, NetnsLayout};
use nemesis::{BackendKind, Fault, Nemesis, PartitionKind, Target};

/// How long `up` waits for a first leader before reporting the cluster without one.
const UP_LEADER_WAIT_MS: u64 = 15_000;
/// Poll interval while a timed fault lasts (checks for Ctrl-C).
const FAULT_POLL_MS: u64 = 50;

#[derive(Parser)]
#[command(
    name = "nemesis",
    about = "Start a ReplicatedKVStore cluster and inject faults into it by hand",
    long_about = "Start a ReplicatedKVStore cluster and inject faults into it by hand.\n\n\
        Commands act on the cluster recorded in the state file (written by `nemesis up` or a \
        campaign). Without a state file they act on the `kvnode run` processes found on this \
        machine (e.g. a cluster from `just cluster up`), reading addresses from their config.\n\n\
        Targets: n<k> (a node), leader, one (random), minority (random), all. Random choices \
        use --seed. Partitions need the netns backend (`nemesis up --backend netns`, as \
        root) or the ssh backend (`nemesis up --backend ssh --hosts hosts.txt`).\n\n\
        Examples:\n  nemesis up --backend netns --nodes 3 --dir /tmp/kv\n  nemesis status\n  \
        nemesis kill leader --restart-after 2s\n  nemesis pause n1 --for 5s\n  \
        nemesis partition isolate-leader --for 10s\n  nemesis heal\n  \
        nemesis disk mount all\n  nemesis disk lose-unsynced all --restart-after 2s\n  \
        nemesis disk fsync-error leader --for 5s\n  nemesis disk unmount all\n  nemesis cleanup"
)]
struct Cli {
    /// The state file of the cluster to act on.
    #[arg(long, global = true, default_value_os_t = spec::default_state_path())]
    state: PathBuf,
    /// Seed for random target choice (default: from the clock, printed).
    #[arg(long, global = true)]
    seed: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write config and certificates, start the nodes, record them in the state file.
    Up(UpArgs),
    /// Stop the recorded cluster's nodes (SIGTERM, then SIGKILL), remove its network and state.
    Down,
    /// Each node's pid, process state, Raft role and term (from its metrics endpoint).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// SIGKILL the target; restart it after a delay if given.
    Kill {
        target: String,
        /// e.g. 2s, 500ms; without it the node stays down (`nemesis restart n2`).
        #[arg(long, value_parser = parse_duration)]
        restart_after: Option<Duration>,
    },
    /// Start a node that is down, with its recorded command.
    Restart { node: String },
    /// SIGSTOP the target; SIGCONT after the duration if given.
    Pause {
        target: String,
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// SIGCONT a paused node (or `all`).
    Resume { target: String },
    /// Cut links with iptables inside the node namespaces (netns) or on the hosts (ssh).
    Partition {
        #[arg(value_enum)]
        kind: PartitionKind,
        /// Heal after this long; without it the partition stays until `nemesis heal`.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Remove every partition rule and resume paused nodes.
    Heal,
    /// After a crash of a tool: kill recorded nodes, remove namespaces, veths, bridge and state
    /// (also leftovers named with --prefix). Safe to run twice.
    Cleanup {
        #[arg(long, default_value = "kv")]
        prefix: String,
        /// With `--backend ssh --hosts FILE` and no state file: clean the hosts of FILE (kill
        /// the node named by each host's pid file, remove the iptables chain and the work
        /// directory; logs are fetched to --dir/logs first).
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
        /// The hosts file (ssh backend).
        #[arg(long)]
        hosts: Option<PathBuf>,
        /// Where the hosts' logs are fetched to (ssh backend without a state file).
        #[arg(long, default_value = "data/nemesis-cluster")]
        dir: PathBuf,
    },
    /// Disk faults through the fault-injecting filesystem under each node's data (as root).
    Disk {
        #[command(subcommand)]
        action: DiskAction,
    },
    /// The fault-injecting filesystem itself (`serve` runs one mount in the foreground).
    #[command(subcommand)]
    Fs(FsCommand),
    /// Hosts for the ssh backend without real machines (root): a network namespace per host,
    /// each running its own sshd with a key generated into --dir. Writes <dir>/hosts.txt,
    /// runs until Ctrl-C, then removes the namespaces. Try:
    /// `bench campaign --backend ssh --hosts <dir>/hosts.txt`.
    Testbed(TestbedArgs),
}

#[derive(clap::Args)]
struct TestbedArgs {
    /// Hosts to start.
    #[arg(long, default_value_t = 3)]
    hosts: u64,
    /// Folder for keys, sshd configs and logs, hosts.txt and each host's work directory.
    #[arg(long, default_value = "data/nemesis-testbed")]
    dir: PathBuf,
    /// Namespace name prefix (namespaces <prefix>-n1.., bridge <prefix>br0).
    #[arg(long, default_value = "kvtb")]
    prefix: String,
    /// The namespaces' /24 as three octets.
    #[arg(long, default_value = "10.77.50", value_parser = parse_subnet)]
    subnet: [u8; 3],
}

#[derive(Subcommand)]
enum DiskAction {
    /// Stop the target, move its data onto the fault-injecting filesystem, start it again.
    Mount { target: String },
    /// Stop the target, unmount, put its data back, start it again.
    Unmount { target: String },
    /// What each disk holds volatile (unsynced files and directories, armed fsync errors).
    Status { target: String },
    /// SIGKILL the target, then discard everything it did not fsync (power loss).
    LoseUnsynced {
        target: String,
        /// Start it again after this long; without it the node stays down.
        #[arg(long, value_parser = parse_duration)]
        restart_after: Option<Duration>,
    },
    /// Like lose-unsynced, but the last unsynced write survives as a sector-aligned prefix.
    Torn {
        target: String,
        #[arg(long, value_parser = parse_duration)]
        restart_after: Option<Duration>,
    },
    /// SIGKILL the target and flip a bit in a synced non-last WAL segment or snapshot.
    Corrupt {
        target: String,
        #[arg(long, value_parser = parse_duration)]
        restart_after: Option<Duration>,
    },
    /// The target's next fsync fails with EIO; after the duration the target is restarted.
    FsyncError {
        target: String,
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum FsCommand {
    /// Mount the page-cache model over MOUNTPOINT (content kept in BACKING) and serve its
    /// control socket until SIGTERM or an `unmount` request (nemesis/src/fs/control.rs).
    Serve {
        #[arg(long)]
        backing: PathBuf,
        #[arg(long)]
        mountpoint: PathBuf,
        #[arg(long)]
        control: PathBuf,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// local: processes on 127.0.0.1; netns: a namespace per node (root); ssh: one node per
    /// host of --hosts.
    #[arg(long, value_enum, default_value = "local")]
    backend: BackendKind,
    /// Nodes (ssh backend: one per host of --hosts).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Hosts file of the ssh backend: `[user@]address[:port] [key=PATH] [dir=PATH]
    /// [known-hosts=PATH]` per line (see proto-docs/operations.md).
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// Folder for cluster.toml, certs/, data/ and logs/.
    #[arg(long, default_value = "data/nemesis-cluster")]
    dir: PathBuf,
    /// The kvnode binary (default: next to this executable).
    #[arg(long)]
    node_binary: Option<PathBuf>,
    #[arg(long, default_value_t = 50051)]
    base_port: u16,
    /// netns object name prefix (namespaces <prefix>-n1.., bridge <prefix>br0).
    #[arg(long, default_value = "kv")]
    prefix: String,
    /// netns /24 as three octets, used only inside the namespaces and the bridge.
    #[arg(long, default_value = "10.77.0", value_parser = parse_subnet)]
    subnet: [u8; 3],
    /// Keep running; Ctrl-C stops the cluster and removes everything.
    #[arg(long)]
    foreground: bool,
    /// Put every node's data on the fault-injecting filesystem (root; `nemesis disk ...`).
    #[arg(long)]
    disk: bool,
}

fn parse_subnet(text: &str) -> Result<[u8; 3], String> {
    let parts: Vec<u8> = text
        .split('.')
        .map(|p| p.parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("'{text}': expected three octets like 10.77.0"))?;
    <[u8; 3]>::try_from(parts).map_err(|_| format!("'{text}': expected three octets"))
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("nemesis: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> CliResult {
    let seed = cli.seed.unwrap_or_else(nemesis::fault::unix_ms_now);
    match cli.command {
        Command::Up(args) => up(&cli.state, args),
        Command::Down => {
            Cluster::attach(&cli.state)?.cleanup()?;
            println!("cluster stopped and removed");
            Ok(())
        }
        Command::Status { json } => status(&Cluster::attach_or_discover(&cli.state)?, json),
        Command::Cleanup {
            prefix,
            backend,
            hosts,
            dir,
        } => {
            let mut removed = Vec::new();
            if cli.state.exists() || backend != Some(BackendKind::Ssh) {
                removed = cluster::cleanup(&cli.state, &prefix)?;
            } else {
                let path = hosts.ok_or("--backend ssh needs --hosts FILE (no state file)")?;
                let hosts = nemesis::ssh::load_hosts(&path)?;
                removed.extend(cluster::cleanup_hosts(&hosts, &dir.join("logs"))?);
            }
            removed.iter().for_each(|line| println!("{line}"));
            println!("cleanup done ({} removed)", removed.len());
            Ok(())
        }
        Command::Fs(FsCommand::Serve {
            backing,
            mountpoint,
            control,
        }) => {
            let options = nemesis::fs::ServeOptions {
                backing,
                mountpoint,
                control,
            };
            Ok(nemesis::fs::control::serve(&options)?)
        }
        Command::Testbed(args) => testbed(args),
        command => fault_command(&cli.state, seed, command),
    }
}

fn testbed(args: TestbedArgs) -> CliResult {
    let layout = NetnsLayout {
        prefix: args.prefix,
        subnet: args.subnet,
    };
    layout.validate()?;
    if args.hosts == 0 || args.hosts > spec::NODE_COUNT_MAX {
        return Err(format!("--hosts must be in 1..={}", spec::NODE_COUNT_MAX).into());
    }
    let interrupted = cluster::interrupt_flag()?;
    let dir = std::path::absolute(&args.dir)?;
    let testbed = nemesis::testbed::Testbed::start(&layout, args.hosts, &dir)?;
    let hosts = dir.join("hosts.txt");
    std::fs::write(&hosts, testbed.hosts_file())?;
    println!(
        "{} sshd host(s) up; hosts file: {}",
        args.hosts,
        hosts.display()
    );
    println!("running; Ctrl-C stops the sshds and removes the namespaces");
    while !interrupted.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(FAULT_POLL_MS));
    }
    drop(testbed);
    println!("testbed removed");
    Ok(())
}

fn up(state_path: &std::path::Path, args: UpArgs) -> CliResult {
    let mut spec = ClusterSpec::new(args.backend, args.nodes, &args.dir);
    spec.state_path = state_path.to_path_buf();
    spec.base_port = args.base_port;
    spec.netns = NetnsLayout {
        prefix: args.prefix.clone(),
        subnet: args.subnet,
    };
    if let Some(binary) = args.node_binary {
        spec.node_binary = binary;
    }
    spec.disk = args.disk;
    if args.backend == BackendKind::Ssh {
        let path = args.hosts.ok_or("--backend ssh needs --hosts FILE")?;
        spec.hosts = nemesis::ssh::load_hosts(&path)?;
        spec.node_count = spec.hosts.len() as u64;
    }
    if state_path.exists() {
        return Err(format!(
            "{} exists: a cluster is recorded already (`nemesis down` or `nemesis cleanup`)",
            state_path.display()
        )
        .into());
    }
    if args.foreground {
        cluster::cleanup_on_interrupt(state_path.to_path_buf(), args.prefix.clone())?;
    }
    let cluster = Cluster::start(&spec)?;
    let wait = Duration::from_millis(UP_LEADER_WAIT_MS);
    if let Err(error) = cluster.wait_for_stable_leader(wait) {
        eprintln!(
            "nemesis: warning: {error}; see the logs in {}",
            spec.logs_dir().display()
        );
    }
    status(&cluster, false)?;
    println!("state: {}", state_path.display());
    if args.foreground {
        println!("running; Ctrl-C stops the cluster and removes everything");
        loop {
            std::thread::park();
        }
    }
    cluster.detach();
    Ok(())
}

fn status(cluster: &Cluster, json: bool) -> CliResult {
    let statuses = cluster.status();
    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(());
    }
    println!(
        "{:<5} {:>8} {:<8} {:<10} {:>6}  note",
        "node", "pid", "process", "role", "term"
    );
    for s in &statuses {
        let process = match (s.running, s.paused) {
            (false, _) => "down",
            (true, true) => "paused",
            (true, false) => "running",
        };
        let pid = s.pid.map_or("-".to_string(), |p| p.to_string());
        let role = s
            .raft
            .map_or("-".to_string(), |r| r.role.name().to_string());
        let term = s.raft.map_or("-".to_string(), |r| r.term.to_string());
        let note = s.error.clone().unwrap_or_default();
        println!(
            "n{:<4} {pid:>8} {process:<8} {role:<10} {term:>6}  {note}",
            s.id
        );
    }
    match cluster::leader_of(&statuses) {
        Some((id, term)) => println!("leader: n{id} (term {term})"),
        None => println!("leader: none"),
    }
    Ok(())
}

fn node_arg(cluster: &Cluster, text: &str) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    if text == "all" {
        return Ok(cluster.node_ids());
    }
    let id = spec::parse_node_name(text).ok_or_else(|| format!("'{text}': expected n<k>"))?;
    cluster.node(id)?;
    Ok(vec![id])
}

fn fault_command(state_path: &std::path::Path, seed: u64, command: Command) -> CliResult {
    let mut cluster = Cluster::attach_or_discover(state_path)?;
    match command {
        Command::Restart { node } => {
            for id in node_arg(&cluster, &node)? {
                let started = cluster.restart(id)?;
                println!(
                    "n{id}: {}",
                    if started {
                        "started"
                    } else {
                        "already running"
                    }
                );
            }
            Ok(())
        }
        Command::Resume { target } => {
            for id in node_arg(&cluster, &target)? {
                cluster.resume(id)?;
                println!("n{id}: resumed");
            }
            Ok(())
        }
        Command::Heal => {
            cluster.heal()?;
            let mut nemesis = Nemesis::new(cluster, seed);
            for id in nemesis.cluster().node_ids() {
                if nemesis
                    .cluster()
                    .status()
                    .iter()
                    .any(|s| s.id == id && s.paused)
                {
                    nemesis.cluster_mut().resume(id)?;
                }
            }
            println!("healed: partition rules removed, paused nodes resumed");
            Ok(())
        }
        Command::Disk { action } => disk_command(cluster, seed, action),
        command => timed_fault(cluster, seed, command),
    }
}

fn disk_command(mut cluster: Cluster, seed: u64, action: DiskAction) -> CliResult {
    let (kind, target, duration) = match action {
        DiskAction::Mount { target } => {
            let binary = spec::default_nemesis_binary();
            for id in node_arg(&cluster, &target)? {
                let mounted = cluster.mount_disk(id, &binary)?;
                let what = if mounted {
                    "mounted"
                } else {
                    "already mounted"
                };
                println!("n{id}: {what} ({})", cluster.node_data_dir(id)?.display());
            }
            return Ok(());
        }
        DiskAction::Unmount { target } => {
            for id in node_arg(&cluster, &target)? {
                let unmounted = cluster.unmount_disk(id)?;
                println!("n{id}: {}", if unmounted { "unmounted" } else { "no disk" });
            }
            return Ok(());
        }
        DiskAction::Status { target } => {
            for id in node_arg(&cluster, &target)? {
                match cluster.disk_request(id, &DiskRequest::Status)? {
                    DiskReply::Status(s) => println!(
                        "n{id}: {} unsynced file(s), {} unsynced directorie(s), {} B saved, \
                         {} fsync error(s) armed, {} injected",
                        s.files_unsynced,
                        s.dirs_unsynced,
                        s.saved_bytes,
                        s.fsync_errors_armed,
                        s.fsync_errors_injected
                    ),
                    _ => println!("n{id}: unexpected reply"),
                }
            }
            return Ok(());
        }
        DiskAction::LoseUnsynced {
            target,
            restart_after,
        } => (DiskFault::LoseUnsynced, target, restart_after),
        DiskAction::Torn {
            target,
            restart_after,
        } => (DiskFault::Torn, target, restart_after),
        DiskAction::Corrupt {
            target,
            restart_after,
        } => (DiskFault::Corrupt, target, restart_after),
        DiskAction::FsyncError { target, duration } => (DiskFault::FsyncError, target, duration),
    };
    let fault = Fault::Disk {
        kind,
        target: target.parse::<Target>()?,
        duration_ms: millis(duration),
    };
    run_fault(cluster, seed, fault, duration)
}

fn timed_fault(cluster: Cluster, seed: u64, command: Command) -> CliResult {
    let (fault, duration) = match command {
        Command::Kill {
            target,
            restart_after,
        } => (
            Fault::Kill {
                target: target.parse::<Target>()?,
                restart_after_ms: millis(restart_after),
            },
            restart_after,
        ),
        Command::Pause { target, duration } => (
            Fault::Pause {
                target: target.parse::<Target>()?,
                duration_ms: millis(duration),
            },
            duration,
        ),
        Command::Partition { kind, duration } => (
            Fault::Partition {
                kind,
                duration_ms: millis(duration),
            },
            duration,
        ),
        _ => return Err("not a fault command".into()),
    };
    run_fault(cluster, seed, fault, duration)
}

fn run_fault(cluster: Cluster, seed: u64, fault: Fault, duration: Option<Duration>) -> CliResult {
    let mut nemesis = Nemesis::new(cluster, seed);
    let active = nemesis.begin(&fault)?;
    println!("{} (seed {seed})", serde_json::to_string(&active.record)?);
    let Some(duration) = duration else {
        println!("{}", undo_hint(&fault));
        return Ok(());
    };
    let interrupted = cluster::interrupt_flag()?;
    let start = Instant::now();
    while start.elapsed() < duration && !interrupted.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(FAULT_POLL_MS));
    }
    let record = nemesis.end(active)?;
    println!("{}", serde_json::to_string(&record)?);
    Ok(())
}

fn millis(duration: Option<Duration>) -> u64 {
    duration.map_or(0, |d| d.as_millis() as u64)
}

fn undo_hint(fault: &Fault) -> &'static str {
    match fault {
        Fault::Kill { .. } => "left down; start again with `nemesis restart <node>`",
        Fault::Pause { .. } => "left paused; continue with `nemesis resume <node>` or `heal`",
        Fault::Partition { .. } => "left partitioned; undo with `nemesis heal`",
        Fault::Disk {
            kind: DiskFault::FsyncError,
            ..
        } => "armed: the node stops at its next fsync; start it with `nemesis restart <node>`",
        Fault::Disk { .. } => "left down; start again with `nemesis restart <node>`",
        Fault::Membership { .. } => {
            "left out of the configuration; add it back with `kvctl member add` and `promote`"
        }
    }
}
