//! kvctl: one request to a ReplicatedKVStore cluster from the command line.
//!
//! Exit codes: 0 success, 1 the request failed (the message says whether it may have been
//! applied), 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use kvclient::config::ClusterConfig;
use kvclient::{self, Client, ClientConfig, ClientError, NodeRole, NodeStatus, ReadMode, Session};
use kvstate::{KeyOp, KeyResult, NodeId, Value};

const EXIT_FAILED: u8 = 1;
/// Where certificates are looked for with `--nodes` and no `--certs`.
const CERTS_DIR_DEFAULT: &str = "certs";
const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(name = "kvctl", version, about = "Talk to a ReplicatedKVStore cluster")]
struct Cli {
    /// The cluster config (TOML): its nodes, and its certs_dir unless --certs is given.
    #[arg(long, conflicts_with = "nodes")]
    config: Option<PathBuf>,
    /// The nodes: `1=127.0.0.1:50051,2=127.0.0.1:50052,...`.
    #[arg(long, value_name = "ID=ADDR,...")]
    nodes: Option<String>,
    /// Directory with ca.pem and the client's certificate and key [default: the config's
    /// certs_dir, else `certs`].
    #[arg(long)]
    certs: Option<PathBuf>,
    /// The client certificate's name (`<certs>/<client>.pem`).
    #[arg(long, default_value = "client1")]
    client: String,
    /// How long one attempt waits for an answer, in milliseconds.
    #[arg(long, default_value_t = kvclient::REQUEST_TIMEOUT_MS_DEFAULT)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY.
    Get {
        key: String,
        /// Read from any node's local state (may be old) instead of through the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Remove KEY.
    Del { key: String },
    /// Set KEY to NEW if it holds EXPECTED (`-`: if KEY is absent).
    Cas {
        key: String,
        expected: String,
        new: String,
    },
    /// Append ELEMENT to the list at KEY.
    Append { key: String, element: String },
    /// Run operations atomically: 'append K V', 'r K' (or 'get K'), 'put K V', 'del K',
    /// 'cas K EXPECTED|- NEW'.
    Txn {
        #[arg(required = true, value_name = "OP")]
        ops: Vec<String>,
        /// For a read-only transaction: serve it from any node's local state.
        #[arg(long)]
        stale: bool,
    },
    /// Print every node's role, term, commit and applied index, and leader.
    Status,
}

#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no node answered")]
    NoNodeAnswered,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvctl: error: {error}");
            if let CtlError::Client(client_error) = &error {
                if !client_error.is_definite() {
                    eprintln!("kvctl: the request may or may not have been applied");
                }
            }
            match error {
                CtlError::Usage(_) => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::from(EXIT_FAILED),
            }
        }
    }
}

fn run(cli: Cli) -> Result<(), CtlError> {
    let config = client_config(&cli)?;
    // Usage errors first, before any connection is made.
    if let Command::Txn { ops, .. } = &cli.command {
        for op in ops {
            parse_txn_op(op)?;
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CtlError::Runtime)?;
    runtime.block_on(async {
        let client = Client::connect(config).await?;
        let mut session = client.session();
        run_command(&mut session, cli.command).await
    })
}

fn client_config(cli: &Cli) -> Result<ClientConfig, CtlError> {
    let mut config = match (&cli.config, &cli.nodes) {
        (Some(path), _) => {
            let cluster = ClusterConfig::load(path).map_err(|e| CtlError::Usage(e.to_string()))?;
            ClientConfig::from_cluster(&cluster, &cli.client)
        }
        (None, Some(nodes)) => {
            let nodes = kvclient::parse_nodes(nodes).map_err(|e| CtlError::Usage(e.to_string()))?;
            ClientConfig::new(nodes, PathBuf::from(CERTS_DIR_DEFAULT), &cli.client)
        }
        (None, None) => {
            let reason = "give the cluster with --config cluster.toml or --nodes";
            return Err(CtlError::Usage(reason.into()));
        }
    };
    if let Some(certs) = &cli.certs {
        config.certs_dir = certs.clone();
    }
    if cli.timeout_ms == 0 {
        return Err(CtlError::Usage("--timeout-ms must be > 0".into()));
    }
    config.request_timeout = Duration::from_millis(cli.timeout_ms);
    Ok(config)
}

async fn run_command(session: &mut Session, command: Command) -> Result<(), CtlError> {
    match command {
        Command::Put { key, value } => {
            session.put(key, value).await?;
            println!("OK");
        }
        Command::Get { key, stale } => {
            let value = session.get(key, read_mode(stale)).await?;
            println!("{}", show_value(value.as_ref()));
        }
        Command::Del { key } => {
            let existed = session.delete(key).await?;
            println!("{}", if existed { "deleted" } else { "absent" });
        }
        Command::Cas { key, expected, new } => {
            let expected = (expected != "-").then(|| Bytes::from(expected));
            let outcome = session.cas(key, expected, new).await?;
            if outcome.succeeded {
                println!("OK");
            } else {
                let current = show_value(outcome.current.as_ref());
                println!("not swapped: the value is {current}");
            }
        }
        Command::Append { key, element } => {
            let length = session.append(key, element).await?;
            println!("OK (length {length})");
        }
        Command::Txn { ops, stale } => {
            let ops = ops
                .iter()
                .map(|op| parse_txn_op(op))
                .collect::<Result<Vec<_>, _>>()?;
            let (committed, results) = session.txn(ops.clone(), read_mode(stale)).await?;
            println!("{}", if committed { "committed" } else { "aborted" });
            for (op, result) in ops.iter().zip(&results) {
                println!(
                    "  {}: {}",
                    String::from_utf8_lossy(op.key()),
                    show_result(result)
                );
            }
        }
        Command::Status => return print_status(session.client()).await,
    }
    Ok(())
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
                "transaction operation {text:?}: expected 'append K V', 'r K', 'put K V', \
                 'del K' or 'cas K EXPECTED|- NEW'"
            )))
        }
    };
    Ok(op)
}

fn show_value(value: Option<&Value>) -> String {
    match value {
        None => "(absent)".to_string(),
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
        KeyResult::Get { value } => show_value(value.as_ref()),
        KeyResult::Put { .. } => "put".to_string(),
        KeyResult::Delete { existed } => if *existed { "deleted" } else { "absent" }.to_string(),
        KeyResult::Cas {
            succeeded: true, ..
        } => "swapped".to_string(),
        KeyResult::Cas { current, .. } => format!("not swapped ({})", show_value(current.as_ref())),
        KeyResult::Append { length } => format!("appended (length {length})"),
        KeyResult::Failed(failure) => format!("failed: {failure:?}"),
    }
}

async fn print_status(client: &Client) -> Result<(), CtlError> {
    let name = |id: Option<NodeId>| id.map_or("-".to_string(), kvclient::node_name);
    println!(
        "{:<6} {:<22} {:<10} {:>6} {:>10} {:>10} {:<6}",
        "NODE", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER"
    );
    let mut answered = 0;
    for &(id, addr) in &client.config().nodes {
        match client.status(id).await {
            Ok(NodeStatus {
                role,
                term,
                commit_index,
                applied_index,
                leader,
                ..
            }) => {
                answered += 1;
                let role = match role {
                    NodeRole::Leader => "leader",
                    NodeRole::Candidate => "candidate",
                    NodeRole::Follower => "follower",
                };
                println!(
                    "{:<6} {:<22} {:<10} {:>6} {:>10} {:>10} {:<6}",
                    name(Some(id)),
                    addr.to_string(),
                    role,
                    term,
                    commit_index,
                    applied_index,
                    name(leader)
                );
            }
            Err(error) => {
                let addr = addr.to_string();
                println!("{:<6} {addr:<22} unreachable: {error}", name(Some(id)));
            }
        }
    }
    if answered == 0 {
        return Err(CtlError::NoNodeAnswered);
    }
    Ok(())
}
