//! The metrics as Prometheus and Grafana see them, on a live 3-node cluster of `kvnode`
//! processes (loopback, every wait bounded): `promtool check metrics` passes on a scrape
//! without a warning, and every query of the Grafana dashboard names metrics the scrape has.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvclient::config::ClusterConfig;
use kvclient::{Client, ClientConfig, ReadMode};
use kvtransport::{generate_certs, NodeCertSpec};

const NODES: u64 = 3;
/// How long the cluster gets to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bound of one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Prefixes of this project's metric names (anything else in a query is PromQL).
const METRIC_PREFIXES: [&str; 5] = ["raft_", "wal_", "client_", "transport_", "kvnode_"];

struct Cluster {
    dir: tempfile::TempDir,
    metrics: Vec<SocketAddr>,
    children: Vec<Child>,
}

fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let specs: Vec<NodeCertSpec> = (1..=NODES)
            .map(|id| NodeCertSpec {
                name: format!("n{id}"),
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            })
            .collect();
        generate_certs(
            &dir.path().join("certs"),
            &specs,
            &["client1".into()],
            false,
        )
        .unwrap();
        let mut toml = String::from("data_dir = \"data\"\ncerts_dir = \"certs\"\n");
        let mut metrics = Vec::new();
        for id in 1..=NODES {
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(true)));
            let metrics_address = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(false)));
            metrics.push(metrics_address);
            toml.push_str(&format!(
                "[[nodes]]\nid = {id}\naddress = \"{address}\"\n\
                 metrics_address = \"{metrics_address}\"\n"
            ));
        }
        std::fs::write(dir.path().join("cluster.toml"), toml).unwrap();
        let children = (1..=NODES)
            .map(|id| {
                let log = std::fs::File::create(dir.path().join(format!("n{id}.log"))).unwrap();
                Command::new(env!("CARGO_BIN_EXE_kvnode"))
                    .args(["run", "--config"])
                    .arg(dir.path().join("cluster.toml"))
                    .args(["--id", &id.to_string()])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap()
            })
            .collect();
        let cluster = Cluster {
            dir,
            metrics,
            children,
        };
        cluster.wait_for_leader();
        cluster.traffic();
        cluster
    }

    fn wait_for_leader(&self) {
        let deadline = Instant::now() + LEADER_WAIT;
        while Instant::now() < deadline {
            let leaders = (self.metrics.iter())
                .filter_map(|&address| scrape(address))
                .filter(|text| text.lines().any(|line| line == "raft_is_leader 1"))
                .count();
            if leaders == 1 {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        panic!("no leader within {LEADER_WAIT:?}");
    }

    /// Writes and reads through the client library, so that the labelled request metrics
    /// have series.
    fn traffic(&self) {
        let config = ClusterConfig::load(&self.dir.path().join("cluster.toml")).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = Client::connect(ClientConfig::from_cluster(&config, "client1")).await;
            let mut session = client.unwrap().session();
            for index in 0..20 {
                session.put(format!("k{index}"), "v").await.unwrap();
                session
                    .get(format!("k{index}"), ReadMode::Linearizable)
                    .await
                    .unwrap();
            }
            session.cas("k0", None, "w").await.unwrap();
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The metrics page over plain HTTP/1.0, or `None` if the node does not answer.
fn scrape(address: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, SCRAPE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT)).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

/// Whether `program --version` runs.
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn promtool_passes_every_node_s_metrics_without_a_warning() {
    if !installed("promtool") || !installed("curl") {
        println!(
            "SKIPPED: promtool (Debian package `prometheus`) or curl is not installed; \
             .ci/run installs both"
        );
        return;
    }
    let cluster = Cluster::start();
    let mut histograms = 0;
    for address in &cluster.metrics {
        let curl = Command::new("curl")
            .args(["-sSf", "--max-time", "5"])
            .arg(format!("http://{address}/metrics"))
            .output()
            .unwrap();
        assert!(curl.status.success(), "curl {address}: {curl:?}");
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(&curl.stdout)
            .unwrap();
        let checked = promtool.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
        assert!(checked.status.success(), "promtool on {address}: {said}");
        assert_eq!(said.trim(), "", "promtool warnings on {address}");
        let text = String::from_utf8_lossy(&curl.stdout);
        assert!(text.contains("# HELP raft_role "), "{address}: {text}");
        // The leader answered the traffic: its request latencies are a histogram.
        histograms +=
            usize::from(text.contains("# TYPE client_request_duration_seconds histogram"));
    }
    assert!(histograms >= 1, "no node reported request latencies");
}

/// The series names in a scrape (`name` of `name{labels} value` and `name value`).
fn series_names(text: &str) -> BTreeSet<String> {
    (text.lines())
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The project's metric names a PromQL expression uses.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| {
            METRIC_PREFIXES
                .iter()
                .any(|prefix| word.starts_with(prefix))
        })
        .map(str::to_string)
        .collect()
}

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/kvstore-cluster.json")
}

#[test]
fn every_dashboard_panel_queries_metrics_a_live_node_exports() {
    let text = std::fs::read_to_string(dashboard_path()).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(
        panels.len() >= 8,
        "a cluster at a glance needs more than {}",
        panels.len()
    );
    let cluster = Cluster::start();
    let mut exported = BTreeSet::new();
    for &address in &cluster.metrics {
        exported.extend(series_names(&scrape(address).unwrap()));
    }
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = metrics_in(expr);
            assert!(!names.is_empty(), "panel {title:?}: {expr} names no metric");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "panel {title:?}: {name} is not exported"
                );
                used.insert(name);
            }
        }
    }
    for core in [
        "raft_is_leader",
        "raft_term",
        "client_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(core), "the dashboard does not show {core}");
    }
}
