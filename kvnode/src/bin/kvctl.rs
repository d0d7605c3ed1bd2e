//! kvctl: one request to a ReplicatedKVStore cluster from the command line, in the manner of
//! etcdctl.
//!
//! The cluster: `--config`, else `--nodes`, else `$KVCTL_CONFIG`, else the config `just
//! cluster up` writes (`data/cluster/cluster.toml`, looked for in this directory and its
//! parents). Output: `-w simple` (default), `-w json` or `-w table`. The leader each cluster
//! had is remembered between runs (`$XDG_CACHE_HOME/kvctl/`), so a request goes straight to it.
//!
//! Exit codes: 0 success; 1 the request failed, the key was not found, a cas did not swap or
//! an endpoint is unhealthy (the message says which, and whether a write may have been
//! applied); 2 usage error.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use kvclient::config::ClusterConfig;
use kvclient::duration::{format_duration, parse_duration};
use kvclient::{self, Client, ClientConfig, ClientError, NodeRole, NodeStatus, ReadMode, Session};
use kvstate::limits::VALUE_BYTES_MAX;
use kvstate::members::{MemberInfo, MemberList, MemberOp};
use kvstate::{KeyOp, KeyResult, NodeId, Value};
use serde_json::json;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
/// Where certificates are looked for with `--nodes` and no `--certs`.
const CERTS_DIR_DEFAULT: &str = "certs";
/// The environment variable naming a cluster config.
const CONFIG_ENV: &str = "KVCTL_CONFIG";
/// The config `just cluster up` writes, relative to the repository root.
const CLUSTER_UP_CONFIG: &str = "data/cluster/cluster.toml";
/// Where kvctl remembers each cluster's leader between runs, under `$XDG_CACHE_HOME` (else
/// `~/.cache`): one small file per cluster, named by a hash of its node list.
const LEADER_CACHE_DIR: &str = "kvctl";
/// The help heading of the flags every command takes (before or after the command).
const GLOBAL: &str = "Global options";

#[derive(Parser, Debug)]
#[command(
    name = "kvctl",
    version,
    about = "Talk to a ReplicatedKVStore cluster",
    after_help = "The cluster: --config, else --nodes, else $KVCTL_CONFIG, else \
                  data/cluster/cluster.toml (written by `just cluster up`) in this directory \
                  or a parent.\n\nExit codes: 0 success; 1 failed, key not found, cas not \
                  swapped or endpoint unhealthy; 2 usage error."
)]
struct Cli {
    /// The cluster config (TOML): its nodes, and its certs_dir unless --certs is given.
    #[arg(long, conflicts_with = "nodes", global = true, help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// The nodes: `1=127.0.0.1:50051,2=127.0.0.1:50052,...`.
    #[arg(long, value_name = "ID=ADDR,...", global = true, help_heading = GLOBAL)]
    nodes: Option<String>,
    /// Directory with ca.pem and the client's certificate and key [default: the config's
    /// certs_dir, else `certs`].
    #[arg(long, global = true, help_heading = GLOBAL)]
    certs: Option<PathBuf>,
    /// The client certificate's name (`<certs>/<client>.pem`).
    #[arg(long, default_value = "client1", global = true, help_heading = GLOBAL)]
    client: String,
    /// Output format.
    #[arg(
        short = 'w',
        long = "write-out",
        value_enum,
        default_value_t = Format::Simple,
        global = true,
        help_heading = GLOBAL
    )]
    write_out: Format,
    /// How long connecting to the cluster may take: past it, with no node connected, the
    /// command fails naming every node's address.
    #[arg(
        long,
        default_value = "1s",
        value_parser = parse_duration,
        global = true,
        help_heading = GLOBAL
    )]
    dial_timeout: Duration,
    /// How long one attempt (one node) waits for an answer before trying the next.
    #[arg(
        long,
        default_value = "2s",
        value_parser = parse_duration,
        global = true,
        help_heading = GLOBAL
    )]
    request_timeout: Duration,
    /// How long the whole command may take, retries included.
    #[arg(
        long,
        default_value = "5s",
        value_parser = parse_duration,
        global = true,
        help_heading = GLOBAL
    )]
    command_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Simple,
    Json,
    Table,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set KEY to VALUE (read from standard input if VALUE is not given).
    Put { key: String, value: Option<String> },
    /// Print KEY and its value; a missing key is an error (exit 1).
    Get {
        key: String,
        /// Read from any node's local state (may be old) instead of through the leader.
        #[arg(long)]
        stale: bool,
        /// Print the value only, without the key.
        #[arg(long)]
        print_value_only: bool,
    },
    /// Remove KEY; prints how many keys were removed (0 or 1).
    Del { key: String },
    /// Set KEY to NEW if it holds EXPECTED (`-`: if KEY is absent). Exit 1 if it did not.
    Cas {
        key: String,
        expected: String,
        new: String,
    },
    /// Append ELEMENT (read from standard input if not given) to the list at KEY.
    Append {
        key: String,
        element: Option<String>,
    },
    /// Run operations atomically: 'append K V', 'r K' (or 'get K'), 'put K V', 'del K',
    /// 'cas K EXPECTED|- NEW'.
    Txn {
        #[arg(required = true, value_name = "OP")]
        ops: Vec<String>,
        /// For a read-only transaction: serve it from any node's local state.
        #[arg(long)]
        stale: bool,
    },
    /// Every node's role, term, commit and applied index, and leader (`endpoint status`).
    Status,
    /// Per-node health and status.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// The cluster's members: list, add (as a learner), promote, remove.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Hand leadership to voter NODE (`n3` or `3`); returns once it leads.
    MoveLeader { node: String },
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// Every member: role (voter, learner), peer address, and, as the leader sees it, how far
    /// its log matches the leader's.
    List,
    /// Add NODE (`n4` or `4`) as a learner reachable at --peer-address. Then start it (empty)
    /// with `kvnode run --id NODE --join`, and promote it once it has caught up.
    Add {
        node: String,
        /// The new node's QUIC address, IP:PORT (what its certificate and `kvnode run`
        /// use); replicated to every member with the change.
        #[arg(long, value_name = "IP:PORT")]
        peer_address: std::net::SocketAddr,
    },
    /// Make learner NODE a voter; refused while its log is far behind the leader's.
    Promote { node: String },
    /// Remove voter or learner NODE. A removed leader hands leadership over once the change
    /// is committed.
    Remove { node: String },
}

#[derive(Subcommand, Debug)]
enum EndpointCommand {
    /// Whether each node answers and knows a leader; exit 1 if any does not.
    Health,
    /// Each node's role, term, commit and applied index, and leader.
    Status,
}

#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("key '{0}' not found")]
    NotFound(String),
    #[error("compare failed: '{key}' holds {current}")]
    CompareFailed { key: String, current: String },
    #[error("{0}")]
    Append(String),
    #[error("no node answered")]
    NoNodeAnswered,
    #[error("unhealthy cluster")]
    Unhealthy,
    #[error("no answer within the command timeout of {within}{}", last_failure_text(.last))]
    CommandTimeout {
        within: String,
        last: Option<String>,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// A node argument: `n4` or `4`.
fn parse_node(text: &str) -> Result<NodeId, CtlError> {
    let number = text.strip_prefix('n').unwrap_or(text);
    match number.parse::<NodeId>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(CtlError::Usage(format!(
            "node '{text}': expected a node name like n4 or an id like 4 (ids start at 1)"
        ))),
    }
}

/// ` (last failures: ...)` when there were some.
fn last_failure_text(last: &Option<String>) -> String {
    last.as_ref()
        .map_or_else(String::new, |last| format!(" (last failures: {last})"))
}

impl CtlError {
    /// Whether a write may have been applied although the command failed.
    fn outcome_unknown(&self) -> bool {
        match self {
            CtlError::Client(error) => !error.is_definite(),
            CtlError::CommandTimeout { .. } => true,
            _ => false,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let writes = matches!(
        cli.command,
        Command::Put { .. }
            | Command::Del { .. }
            | Command::Cas { .. }
            | Command::Append { .. }
            | Command::Txn { .. }
    );
    let member_change = matches!(
        cli.command,
        Command::Member {
            command: MemberCommand::Add { .. }
                | MemberCommand::Promote { .. }
                | MemberCommand::Remove { .. }
        }
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvctl: error: {error}");
            if writes && error.outcome_unknown() {
                eprintln!("kvctl: the write may or may not have been applied");
            }
            if member_change && error.outcome_unknown() {
                eprintln!(
                    "kvctl: the change may or may not have been made; see `kvctl member list`"
                );
            }
            match error {
                CtlError::Usage(_) => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::from(EXIT_FAILED),
            }
        }
    }
}

fn run(mut cli: Cli) -> Result<(), CtlError> {
    let config = client_config(&cli)?;
    // Usage errors first, before any connection is made.
    if let Command::Txn { ops, .. } = &cli.command {
        for op in ops {
            parse_txn_op(op)?;
        }
    }
    match &cli.command {
        Command::MoveLeader { node }
        | Command::Member {
            command:
                MemberCommand::Add { node, .. }
                | MemberCommand::Promote { node }
                | MemberCommand::Remove { node },
        } => {
            parse_node(node)?;
        }
        _ => {}
    }
    read_stdin_values(&mut cli.command)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime)?;
    let (format, dial_timeout, command_timeout) =
        (cli.write_out, cli.dial_timeout, cli.command_timeout);
    let leader_cache = leader_cache_path(&config.nodes);
    runtime.block_on(async {
        let client = Client::connect(config).await?;
        let remembered = leader_cache.as_deref().and_then(read_leader);
        if let Some(leader) = remembered {
            client.prefer_leader(leader);
        }
        let command = async {
            match cli.command {
                Command::Status => print_status(&client, format).await,
                Command::Endpoint { command } => match command {
                    EndpointCommand::Status => print_status(&client, format).await,
                    EndpointCommand::Health => print_health(&client, format).await,
                },
                Command::Member { command } => {
                    client.wait_connected(dial_timeout).await?;
                    run_member(&client, command, format).await
                }
                Command::MoveLeader { node } => {
                    client.wait_connected(dial_timeout).await?;
                    let to = parse_node(&node)?;
                    let list = client.move_leader(to).await?;
                    match format {
                        Format::Json => print_json(&json!({
                            "from": kvclient::node_name(list.node),
                            "to": kvclient::node_name(to),
                        })),
                        _ => println!(
                            "Leadership transferred from {} to {}",
                            kvclient::node_name(list.node),
                            kvclient::node_name(to)
                        ),
                    }
                    Ok(())
                }
                command => {
                    client.wait_connected(dial_timeout).await?;
                    let mut session = client.session();
                    run_command(&mut session, command, format).await
                }
            }
        };
        let result = tokio::time::timeout(command_timeout, command)
            .await
            .map_err(|_| CtlError::CommandTimeout {
                within: format_duration(command_timeout),
                last: client.last_failures(),
            })?;
        if let (Some(path), Some(leader)) = (&leader_cache, client.leader()) {
            if remembered != Some(leader) {
                remember_leader(path, leader);
            }
        }
        result
    })
}

/// The file that remembers the leader of the cluster made of `nodes`, if there is a cache
/// directory (`$XDG_CACHE_HOME`, else `$HOME/.cache`).
fn leader_cache_path(nodes: &[(NodeId, std::net::SocketAddr)]) -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    let base = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    let mut members: Vec<String> = nodes
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    members.sort();
    // FNV-1a: a stable name for the node list (not a secret, only a file name).
    let hash = (members.join(",").bytes()).fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Some(
        base.join(LEADER_CACHE_DIR)
            .join(format!("leader-{hash:016x}")),
    )
}

/// The remembered leader; nothing if there is none or the file is unreadable.
fn read_leader(path: &Path) -> Option<NodeId> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().trim_start_matches('n').parse().ok()
}

/// Remembers `leader`, best effort: a cache that cannot be written only costs the next run a
/// redirect. Written aside and renamed, so concurrent runs never read half a file.
fn remember_leader(path: &Path, leader: NodeId) {
    let Some(dir) = path.parent() else {
        return;
    };
    let temporary = dir.join(format!(".leader-{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&temporary, format!("n{leader}\n")))
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
}

fn client_config(cli: &Cli) -> Result<ClientConfig, CtlError> {
    let usage = |message: String| CtlError::Usage(message);
    let mut config = match (&cli.config, &cli.nodes) {
        (Some(path), _) => load_cluster(path, &cli.client)?,
        (None, Some(nodes)) => {
            let nodes = kvclient::parse_nodes(nodes).map_err(|e| usage(e.to_string()))?;
            ClientConfig::new(nodes, PathBuf::from(CERTS_DIR_DEFAULT), &cli.client)
        }
        (None, None) => match default_config_path() {
            Some(path) => load_cluster(&path, &cli.client)?,
            None => {
                return Err(usage(format!(
                    "no cluster given: use --config cluster.toml or --nodes, set \
                     ${CONFIG_ENV}, or start one with `just cluster up` (which writes \
                     {CLUSTER_UP_CONFIG})"
                )))
            }
        },
    };
    if let Some(certs) = &cli.certs {
        config.certs_dir = certs.clone();
    }
    for (flag, value) in [
        ("--dial-timeout", cli.dial_timeout),
        ("--request-timeout", cli.request_timeout),
        ("--command-timeout", cli.command_timeout),
    ] {
        if value.is_zero() {
            return Err(usage(format!("{flag} must be > 0")));
        }
    }
    config.request_timeout = cli.request_timeout;
    config.connect_timeout = cli.dial_timeout;
    Ok(config)
}

fn load_cluster(path: &Path, client: &str) -> Result<ClientConfig, CtlError> {
    let cluster = ClusterConfig::load(path).map_err(|e| CtlError::Usage(e.to_string()))?;
    Ok(ClientConfig::from_cluster(&cluster, client))
}

/// `$KVCTL_CONFIG` if set, else `data/cluster/cluster.toml` in this directory or the nearest
/// parent that has one.
fn default_config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let here = std::env::current_dir().ok()?;
    here.ancestors()
        .map(|dir| dir.join(CLUSTER_UP_CONFIG))
        .find(|path| path.is_file())
}

/// Fills a `put` value or `append` element that was not given from standard input.
fn read_stdin_values(command: &mut Command) -> Result<(), CtlError> {
    let missing = match command {
        Command::Put { value, .. } => value,
        Command::Append { element, .. } => element,
        _ => return Ok(()),
    };
    if missing.is_some() {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CtlError::Usage(
            "the value is missing: give it as an argument or pipe it on standard input".into(),
        ));
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .take(VALUE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CtlError::Usage(format!("cannot read standard input: {e}")))?;
    if bytes.len() > VALUE_BYTES_MAX {
        return Err(CtlError::Usage(format!(
            "the value on standard input is over the limit of {VALUE_BYTES_MAX} bytes"
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| CtlError::Usage("the value on standard input is not UTF-8".into()))?;
    *missing = Some(text);
    Ok(())
}

async fn run_command(
    session: &mut Session,
    command: Command,
    format: Format,
) -> Result<(), CtlError> {
    match command {
        Command::Put { key, value } => {
            let existed = session.put(key.clone(), value.unwrap_or_default()).await?;
            match format {
                Format::Json => print_json(&json!({"key": key, "existed": existed})),
                _ => println!("OK"),
            }
        }
        Command::Get {
            key,
            stale,
            print_value_only,
        } => {
            let value = session.get(key.clone(), read_mode(stale)).await?;
            print_get(&key, value.as_ref(), print_value_only, format);
            if value.is_none() {
                return Err(CtlError::NotFound(key));
            }
        }
        Command::Del { key } => {
            let deleted = u8::from(session.delete(key.clone()).await?);
            match format {
                Format::Json => print_json(&json!({"key": key, "deleted": deleted})),
                _ => println!("{deleted}"),
            }
        }
        Command::Cas { key, expected, new } => {
            let expected = (expected != "-").then(|| Bytes::from(expected));
            let outcome = session.cas(key.clone(), expected, new).await?;
            if format == Format::Json {
                let current = json_value(outcome.current.as_ref());
                let body = json!({"key": key, "swapped": outcome.succeeded, "current": current});
                print_json(&body);
            } else if outcome.succeeded {
                println!("OK");
            }
            if !outcome.succeeded {
                let current = show_value(outcome.current.as_ref());
                return Err(CtlError::CompareFailed { key, current });
            }
        }
        Command::Append { key, element } => {
            let element = element.unwrap_or_default();
            let length = match session.append(key.clone(), element).await {
                Ok(length) => length,
                Err(ClientError::BadRequest(reason)) => return Err(CtlError::Append(reason)),
                Err(error) => return Err(error.into()),
            };
            match format {
                Format::Json => print_json(&json!({"key": key, "length": length})),
                _ => println!("OK (length {length})"),
            }
        }
        Command::Txn { ops, stale } => run_txn(session, &ops, stale, format).await?,
        Command::Status
        | Command::Endpoint { .. }
        | Command::Member { .. }
        | Command::MoveLeader { .. } => {}
    }
    Ok(())
}

async fn run_member(
    client: &Client,
    command: MemberCommand,
    format: Format,
) -> Result<(), CtlError> {
    let (list, done, hint) = match command {
        MemberCommand::List => {
            let list = client.members().await?;
            print_members(&list, format);
            return Ok(());
        }
        MemberCommand::Add { node, peer_address } => {
            let id = parse_node(&node)?;
            let address = peer_address.to_string();
            let op = MemberOp::AddLearner { id, address };
            let list = client.member_change(op).await?;
            let name = kvclient::node_name(id);
            let done = format!("Member {name} added to the cluster as a learner at {peer_address}");
            let hint = format!(
                "Start it with an empty data directory: kvnode run --config <cluster.toml> \
                 --id {name} --join\nOnce it has caught up: kvctl member promote {name}"
            );
            (list, done, Some(hint))
        }
        MemberCommand::Promote { node } => {
            let id = parse_node(&node)?;
            let list = client.member_change(MemberOp::Promote { id }).await?;
            let name = kvclient::node_name(id);
            (list, format!("Member {name} promoted to a voter"), None)
        }
        MemberCommand::Remove { node } => {
            let id = parse_node(&node)?;
            let list = client.member_change(MemberOp::Remove { id }).await?;
            let name = kvclient::node_name(id);
            (
                list,
                format!("Member {name} removed from the cluster"),
                None,
            )
        }
    };
    match format {
        Format::Json => print_json(&members_json(&list)),
        Format::Table => {
            println!("{done}");
            print_members(&list, format);
        }
        Format::Simple => println!("{done} (configuration index {})", list.config_index),
    }
    if let (Some(hint), false) = (hint, format == Format::Json) {
        println!("{hint}");
    }
    Ok(())
}

fn members_json(list: &MemberList) -> serde_json::Value {
    let members: Vec<serde_json::Value> = (list.members.iter())
        .map(|m| {
            json!({
                "node": kvclient::node_name(m.id),
                "role": m.role.name(),
                "address": m.address,
                "match_index": m.match_index,
                "is_leader": list.leader == Some(m.id),
            })
        })
        .collect();
    json!({
        "answered_by": kvclient::node_name(list.node),
        "leader": list.leader.map(kvclient::node_name),
        "config_index": list.config_index,
        "committed": list.committed,
        "members": members,
    })
}

fn print_members(list: &MemberList, format: Format) {
    let address = |m: &MemberInfo| m.address.clone().unwrap_or_else(|| "unknown".into());
    let matched = |m: &MemberInfo| m.match_index.map_or("-".to_string(), |i| i.to_string());
    match format {
        Format::Json => print_json(&members_json(list)),
        Format::Table => {
            let rows: Vec<Vec<String>> = (list.members.iter())
                .map(|m| {
                    vec![
                        kvclient::node_name(m.id),
                        m.role.name().to_string(),
                        address(m),
                        matched(m),
                        (list.leader == Some(m.id)).to_string(),
                    ]
                })
                .collect();
            let headers = ["NODE", "ROLE", "PEER ADDRESS", "MATCH", "IS LEADER"];
            print!("{}", table(&headers, &rows));
        }
        Format::Simple => {
            for m in &list.members {
                println!(
                    "{}, {}, {}, match {}, {}",
                    kvclient::node_name(m.id),
                    m.role.name(),
                    address(m),
                    matched(m),
                    if list.leader == Some(m.id) {
                        "leader"
                    } else {
                        "-"
                    }
                );
            }
        }
    }
    if !list.committed {
        eprintln!(
            "kvctl: the configuration at index {} is not committed yet (a change is in progress)",
            list.config_index
        );
    }
}

async fn run_txn(
    session: &mut Session,
    ops: &[String],
    stale: bool,
    format: Format,
) -> Result<(), CtlError> {
    let ops = ops
        .iter()
        .map(|op| parse_txn_op(op))
        .collect::<Result<Vec<_>, _>>()?;
    let (committed, results) = session.txn(ops.clone(), read_mode(stale)).await?;
    let keys: Vec<String> = (ops.iter())
        .map(|op| String::from_utf8_lossy(op.key()).into_owned())
        .collect();
    match format {
        Format::Json => {
            let results: Vec<serde_json::Value> = (keys.iter().zip(&results))
                .map(|(key, result)| json_result(key, result))
                .collect();
            print_json(&json!({"committed": committed, "results": results}));
        }
        Format::Table => {
            println!("{}", if committed { "committed" } else { "aborted" });
            let rows: Vec<Vec<String>> = (keys.iter().zip(&results))
                .map(|(key, result)| {
                    vec![result.name().to_string(), key.clone(), show_result(result)]
                })
                .collect();
            print!("{}", table(&["OP", "KEY", "RESULT"], &rows));
        }
        Format::Simple => {
            println!("{}", if committed { "committed" } else { "aborted" });
            for (key, result) in keys.iter().zip(&results) {
                println!("  {key}: {}", show_result(result));
            }
        }
    }
    Ok(())
}

fn print_get(key: &str, value: Option<&Value>, value_only: bool, format: Format) {
    match (format, value) {
        (Format::Json, value) => {
            let mut body = json!({"key": key, "found": value.is_some()});
            if value.is_some() {
                body["value"] = json_value(value);
            }
            print_json(&body);
        }
        (_, None) => {}
        (Format::Table, Some(value)) => {
            let rows = [vec![key.to_string(), show_value(Some(value))]];
            print!("{}", table(&["KEY", "VALUE"], &rows));
        }
        (Format::Simple, Some(value)) => {
            if !value_only {
                println!("{key}");
            }
            println!("{}", show_value(Some(value)));
        }
    }
}

fn read_mode(stale: bool) -> ReadMode {
    if stale {
        ReadMode::Stale
    } else {
        ReadMode::Linearizable
    }
}

/// Parses one transaction operation, e.g. `append k 1`.
fn parse_txn_op(text: &str) -> Result<KeyOp, CtlError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let key = |index: usize| Bytes::from(words[index].to_string());
    let op = match words.as_slice() {
        ["append", _, _] => KeyOp::Append {
            key: key(1),
            element: key(2),
        },
        ["r" | "get", _] => KeyOp::Get { key: key(1) },
        ["put", _, _] => KeyOp::Put {
            key: key(1),
            value: key(2),
        },
        ["del", _] => KeyOp::Delete { key: key(1) },
        ["cas", _, expected, _] => KeyOp::Cas {
            key: key(1),
            expected: (*expected != "-").then(|| key(2)),
            new: key(3),
        },
        _ => {
            return Err(CtlError::Usage(format!(
                "transaction operation '{text}': expected 'append K V', 'r K', 'put K V', \
                 'del K' or 'cas K EXPECTED|- NEW'"
            )))
        }
    };
    Ok(op)
}

fn show_value(value: Option<&Value>) -> String {
    match value {
        None => "nothing (the key is absent)".to_string(),
        Some(Value::Bytes(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::List(elements)) => {
            let shown: Vec<_> = elements
                .iter()
                .map(|e| String::from_utf8_lossy(e))
                .collect();
            format!("[{}]", shown.join(", "))
        }
    }
}

fn show_result(result: &KeyResult) -> String {
    match result {
        KeyResult::Get { value: None } => "absent".to_string(),
        KeyResult::Get { value } => show_value(value.as_ref()),
        KeyResult::Put { .. } => "put".to_string(),
        KeyResult::Delete { existed } => if *existed { "deleted" } else { "absent" }.to_string(),
        KeyResult::Cas {
            succeeded: true, ..
        } => "swapped".to_string(),
        KeyResult::Cas { current, .. } => format!("not swapped ({})", show_value(current.as_ref())),
        KeyResult::Append { length } => format!("appended (length {length})"),
        KeyResult::Failed(failure) => format!("failed: {failure}"),
    }
}

/// Bytes as a JSON string when they are UTF-8, else `{"hex": "..."}`.
fn json_bytes(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => json!(text),
        Err(_) => {
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            json!({ "hex": hex })
        }
    }
}

fn json_value(value: Option<&Value>) -> serde_json::Value {
    match value {
        None => serde_json::Value::Null,
        Some(Value::Bytes(bytes)) => json_bytes(bytes),
        Some(Value::List(elements)) => {
            serde_json::Value::Array(elements.iter().map(|e| json_bytes(e)).collect())
        }
    }
}

fn json_result(key: &str, result: &KeyResult) -> serde_json::Value {
    let mut body = json!({"op": result.name(), "key": key});
    match result {
        KeyResult::Get { value } => body["value"] = json_value(value.as_ref()),
        KeyResult::Put { existed } => body["existed"] = json!(existed),
        KeyResult::Delete { existed } => body["deleted"] = json!(u8::from(*existed)),
        KeyResult::Cas { succeeded, current } => {
            body["swapped"] = json!(succeeded);
            body["current"] = json_value(current.as_ref());
        }
        KeyResult::Append { length } => body["length"] = json!(length),
        KeyResult::Failed(failure) => body["error"] = json!(failure.to_string()),
    }
    body
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// An etcdctl-style table: `+---+` borders, a header row, left-aligned cells.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let border: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let cells: String = (widths.iter().zip(cells))
            .map(|(width, cell)| format!("| {cell:<width$} "))
            .collect();
        format!("{cells}|\n")
    };
    let mut text = format!("{border}+\n");
    text.push_str(&line(&mut headers.iter().copied()));
    text.push_str(&format!("{border}+\n"));
    for row in rows {
        text.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    text.push_str(&format!("{border}+\n"));
    text
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Leader => "leader",
        NodeRole::Candidate => "candidate",
        NodeRole::Follower => "follower",
    }
}

/// One node's answer to `status`: id, address, how long it took, status or error.
type StatusAnswer = (NodeId, String, Duration, Result<NodeStatus, String>);

/// Every node's status, asked concurrently: a dead node costs one connect timeout, not one
/// per node.
async fn statuses(client: &Client) -> Vec<StatusAnswer> {
    let mut asks = tokio::task::JoinSet::new();
    for &(id, addr) in &client.config().nodes {
        let client = client.clone();
        asks.spawn(async move {
            let started = Instant::now();
            let status = client.status(id).await.map_err(|e| e.to_string());
            (id, addr.to_string(), started.elapsed(), status)
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = asks.join_next().await {
        if let Ok(answer) = answer {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|(id, ..)| *id);
    answers
}

fn leader_name(leader: Option<NodeId>) -> String {
    leader.map_or("-".to_string(), kvclient::node_name)
}

async fn print_status(client: &Client, format: Format) -> Result<(), CtlError> {
    let answers = statuses(client).await;
    let answered = answers.iter().filter(|(.., status)| status.is_ok()).count();
    match format {
        Format::Json => {
            let nodes: Vec<serde_json::Value> = (answers.iter())
                .map(|(id, address, _, status)| match status {
                    Ok(status) => json!({
                        "node": kvclient::node_name(*id), "address": address,
                        "role": role_name(status.role), "term": status.term,
                        "commit_index": status.commit_index,
                        "applied_index": status.applied_index,
                        "leader": status.leader.map(kvclient::node_name),
                    }),
                    Err(error) => json!({
                        "node": kvclient::node_name(*id), "address": address, "error": error,
                    }),
                })
                .collect();
            print_json(&serde_json::Value::Array(nodes));
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = (answers.iter())
                .map(|(id, address, _, status)| {
                    let mut row = vec![kvclient::node_name(*id), address.clone()];
                    match status {
                        Ok(s) => row.extend([
                            role_name(s.role).to_string(),
                            s.term.to_string(),
                            s.commit_index.to_string(),
                            s.applied_index.to_string(),
                            leader_name(s.leader),
                            String::new(),
                        ]),
                        Err(error) => {
                            row.extend(["unreachable", "", "", "", ""].map(String::from));
                            row.push(error.clone());
                        }
                    }
                    row
                })
                .collect();
            let headers = [
                "NODE", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER", "ERROR",
            ];
            print!("{}", table(&headers, &rows));
        }
        Format::Simple => {
            for (id, address, _, status) in &answers {
                let name = kvclient::node_name(*id);
                match status {
                    Ok(s) => println!(
                        "{address}, {name}, {}, term {}, commit {}, applied {}, leader {}",
                        role_name(s.role),
                        s.term,
                        s.commit_index,
                        s.applied_index,
                        leader_name(s.leader)
                    ),
                    Err(error) => println!("{address}, {name}, unreachable: {error}"),
                }
            }
        }
    }
    if answered == 0 {
        return Err(CtlError::NoNodeAnswered);
    }
    Ok(())
}

async fn print_health(client: &Client, format: Format) -> Result<(), CtlError> {
    let answers = statuses(client).await;
    let mut healthy_all = true;
    let mut rows = Vec::new();
    for (id, address, took, status) in &answers {
        let (healthy, error) = match status {
            Ok(status) if status.leader.is_some() => (true, String::new()),
            Ok(_) => (false, "the node knows no leader".to_string()),
            Err(error) => (false, error.clone()),
        };
        healthy_all &= healthy;
        rows.push((
            kvclient::node_name(*id),
            address.clone(),
            healthy,
            *took,
            error,
        ));
    }
    match format {
        Format::Json => {
            let nodes: Vec<serde_json::Value> = (rows.iter())
                .map(|(node, address, healthy, took, error)| {
                    json!({"node": node, "address": address, "healthy": healthy,
                           "took_seconds": took.as_secs_f64(),
                           "error": (!error.is_empty()).then_some(error)})
                })
                .collect();
            print_json(&serde_json::Value::Array(nodes));
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = (rows.iter())
                .map(|(node, address, healthy, took, error)| {
                    vec![
                        address.clone(),
                        node.clone(),
                        healthy.to_string(),
                        format!("{:.1}ms", took.as_secs_f64() * 1000.0),
                        error.clone(),
                    ]
                })
                .collect();
            let headers = ["ENDPOINT", "NODE", "HEALTH", "TOOK", "ERROR"];
            print!("{}", table(&headers, &cells));
        }
        Format::Simple => {
            for (node, address, healthy, took, error) in &rows {
                let took = format!("{:.1}ms", took.as_secs_f64() * 1000.0);
                if *healthy {
                    println!("{address} ({node}) is healthy: answered in {took}");
                } else {
                    println!("{address} ({node}) is unhealthy: {error}");
                }
            }
        }
    }
    if !healthy_all {
        return Err(CtlError::Unhealthy);
    }
    Ok(())
}
