//! `kvnode`: run a node of a Raft-replicated key-value store, or make its certificates.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kvclient::config::ClusterConfig;
use kvtransport::tls::{generate_certs, NodeCertSpec};

/// mimalloc instead of glibc's malloc: allocation was about 12% of a node's CPU on puts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kvnode",
    version,
    about = "A node of ReplicatedKVStore: Raft over QUIC with mutual TLS, durable WAL, \
             linearizable reads",
    long_about = "A node of ReplicatedKVStore.\n\n\
        Every node of a cluster reads the same TOML config and picks its own entry by id. \
        Nodes and clients talk QUIC with mutual TLS: make the certificates once with \
        `kvnode certs`. Metrics are served over HTTP on the node's port + 1000.\n\n\
        Quick start: `just cluster up` (3 nodes on 127.0.0.1:50051-50053)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node until SIGTERM/SIGINT (a leader hands over leadership before exiting).
    Run {
        /// The cluster config file (TOML; see proto-docs/operations.md).
        #[arg(long, short)]
        config: PathBuf,
        /// This node's id in the config: `n1` or `1`.
        #[arg(long)]
        id: String,
        /// Log filter (tracing EnvFilter syntax), e.g. `info` or `kvnode=debug`.
        #[arg(long, default_value = "info")]
        log: String,
        /// Join a running cluster: start outside any configuration and wait to be added as
        /// a learner (`kvctl member add`), then catch up from the leader by log or snapshot.
        /// The same as `join = true` on the node's [[nodes]] entry; without either, a node
        /// with an empty data directory takes the config file's nodes (those without
        /// `join = true`) as the initial voters.
        #[arg(long)]
        join: bool,
    },
    /// Make a cluster CA and certificates for nodes and clients (existing files are kept).
    Certs {
        /// Where to write ca.pem, n<k>.pem/.key, <client>.pem/.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Node names, comma-separated: n1,n2,n3.
        #[arg(long, value_delimiter = ',', default_value = "n1,n2,n3")]
        nodes: Vec<String>,
        /// Each node's IP address, in the same order (default: 127.0.0.1 for all).
        #[arg(long, value_delimiter = ',')]
        addresses: Vec<IpAddr>,
        /// Client names, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "client1")]
        clients: Vec<String>,
        /// Overwrite existing files, CA included.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            id,
            log,
            join,
        } => run(config, &id, &log, join),
        Command::Certs {
            dir,
            nodes,
            addresses,
            clients,
            force,
        } => certs(dir, nodes, addresses, clients, force),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvnode: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: PathBuf, id: &str, log: &str, join: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(log)
        .with_context(|| format!("bad --log filter '{log}'"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    if let Err(error) = kvnode::server::disable_transparent_huge_pages() {
        tracing::warn!("cannot turn transparent huge pages off ({error}): expect latency spikes");
    }
    let mut config = ClusterConfig::load(&config_path)?;
    let node = config.node(id)?.id;
    if join {
        for spec in config.nodes.iter_mut().filter(|n| n.id == node) {
            spec.join = true;
        }
    }
    kvnode::server::run_until_signal(config, node)
        .with_context(|| format!("node n{node} stopped"))?;
    Ok(())
}

fn certs(
    dir: PathBuf,
    nodes: Vec<String>,
    addresses: Vec<IpAddr>,
    clients: Vec<String>,
    force: bool,
) -> anyhow::Result<()> {
    if !addresses.is_empty() && addresses.len() != nodes.len() {
        anyhow::bail!(
            "--addresses has {} entries for {} nodes",
            addresses.len(),
            nodes.len()
        );
    }
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let specs: Vec<NodeCertSpec> = nodes
        .iter()
        .enumerate()
        .map(|(i, name)| NodeCertSpec {
            name: name.clone(),
            addr: addresses.get(i).copied().unwrap_or(localhost),
        })
        .collect();
    generate_certs(&dir, &specs, &clients, force)
        .with_context(|| format!("making certificates in {}", dir.display()))?;
    println!(
        "certificates for {} and {} in {}",
        nodes.join(","),
        clients.join(","),
        dir.display()
    );
    Ok(())
}
