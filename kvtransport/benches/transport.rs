//! Client request throughput and latency over one QUIC connection with mutual TLS.
//!
//! The node side (a transport plus an echo loop) runs on its own thread with a current-thread
//! runtime, as a node does; the client side runs 64 tasks sharing one `ClientConn` on a second
//! current-thread runtime. Each request is 64 bytes; all travel on the connection's session
//! stream. Prints the CPU both sides used per request (all threads of the process).
//!
//! Run: `cargo bench -p kvtransport --bench transport`. Prints requests/s and latency percentiles.

// A benchmark's setup failing should simply panic.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use kvtransport::{
    generate_certs, ClientConn, Inbound, NodeCertSpec, TlsMaterial, Transport, TransportConfig,
    TransportLimits,
};

const TASKS: usize = 64;
const REQUEST_BYTES: usize = 64;
const WARMUP_REQUESTS_PER_TASK: usize = 500;
const REQUESTS_PER_TASK: usize = 5_000;
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// On-CPU time of every thread of this process so far (Linux schedstat, nanoseconds).
fn process_cpu_ns() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path().join("schedstat");
        let stat = std::fs::read_to_string(path).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the node on a thread of its own; returns its address once it listens.
fn start_node(certs: &std::path::Path, data: &std::path::Path) -> SocketAddr {
    let tls = TlsMaterial::load(certs, "n1").unwrap();
    let snapshot_dir = data.join("snap");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        current_thread().block_on(async move {
            let config = TransportConfig {
                self_name: "n1".into(),
                self_id: 1,
                listen: (Ipv4Addr::LOCALHOST, 0).into(),
                peers: Vec::new(),
                tls,
                snapshot_dir,
                limits: TransportLimits::default(),
            };
            let (transport, mut inbound) = Transport::start(config).unwrap();
            addr_tx.send(transport.local_addr().unwrap()).unwrap();
            while let Some(message) = inbound.recv().await {
                if let Inbound::Client { request, reply, .. } = message {
                    let _ = reply.send(request);
                }
            }
        });
    });
    addr_rx.recv().unwrap()
}

async fn run_tasks(client: &Arc<ClientConn>, requests_per_task: usize) -> Histogram<u64> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let client = client.clone();
        tasks.spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).unwrap();
            let request = Bytes::from(vec![7u8; REQUEST_BYTES]);
            let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
            for _ in 0..requests_per_task {
                let start = Instant::now();
                let response = client.request(request.clone(), timeout).await.unwrap();
                assert_eq!(response.len(), REQUEST_BYTES);
                histogram
                    .record(start.elapsed().as_micros() as u64)
                    .unwrap();
            }
            histogram
        });
    }
    let mut total = Histogram::<u64>::new(3).unwrap();
    while let Some(histogram) = tasks.join_next().await {
        total.add(histogram.unwrap()).unwrap();
    }
    total
}

fn main() {
    let certs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let node = NodeCertSpec {
        name: "n1".into(),
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    generate_certs(certs.path(), &[node], &["client1".to_string()], false).unwrap();
    let addr = start_node(certs.path(), data.path());
    let tls = TlsMaterial::load(certs.path(), "client1").unwrap();
    current_thread().block_on(async move {
        let client = Arc::new(ClientConn::connect(addr, "n1", &tls).await.unwrap());
        run_tasks(&client, WARMUP_REQUESTS_PER_TASK).await;
        let start = Instant::now();
        let cpu_start = process_cpu_ns();
        let histogram = run_tasks(&client, REQUESTS_PER_TASK).await;
        let elapsed = start.elapsed();
        let cpu_ns = process_cpu_ns().saturating_sub(cpu_start);
        let requests = (TASKS * REQUESTS_PER_TASK) as f64;
        println!(
            "transport client requests: {TASKS} tasks x {REQUESTS_PER_TASK} x {REQUEST_BYTES} B, \
             one connection, current-thread runtimes (node and client on separate threads)"
        );
        println!(
            "  throughput: {:.0} requests/s",
            requests / elapsed.as_secs_f64()
        );
        println!(
            "  CPU (node and client together): {:.1} us per request",
            cpu_ns as f64 / 1000.0 / requests
        );
        println!(
            "  latency us: p50 {} p99 {} p99.9 {} max {}",
            histogram.value_at_quantile(0.50),
            histogram.value_at_quantile(0.99),
            histogram.value_at_quantile(0.999),
            histogram.max()
        );
    });
}
