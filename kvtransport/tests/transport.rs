//! Transport over real QUIC on 127.0.0.1 with real certificates and files. Every test runs on
//! tokio's current-thread runtime, as the node does.

// Test helpers outside `#[test]` functions: a failed setup step should simply panic.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use kvraft::message::{Membership, Message, MessageBody, NodeId, SnapshotMeta};
use kvtransport::tls::quinn_client_config;
use kvtransport::wire::{self, Hello};
use kvtransport::{
    codec, generate_certs, ClientConn, ClientError, ClientReply, Inbound, NodeCertSpec, Peer,
    TlsMaterial, Transport, TransportConfig, TransportError, TransportLimits, TransportStats,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

/// Upper bound for anything a test waits for; generous for a loaded 2-core machine.
const WAIT_MS_MAX: u64 = 20_000;
const NODE_NAMES: [&str; 3] = ["n1", "n2", "n3"];

fn free_port() -> u16 {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.local_addr().unwrap().port()
}

struct Cluster {
    certs: tempfile::TempDir,
    data: tempfile::TempDir,
    addrs: Vec<SocketAddr>,
}

impl Cluster {
    fn new() -> Cluster {
        // RUST_LOG=kvnode=debug shows the transport's decisions when a test fails.
        let filter = tracing_subscriber::EnvFilter::from_default_env();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let certs = tempfile::tempdir().unwrap();
        let nodes: Vec<NodeCertSpec> = NODE_NAMES
            .iter()
            .map(|name| NodeCertSpec {
                name: name.to_string(),
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            })
            .collect();
        let clients = ["client1".to_string(), "client2".to_string()];
        generate_certs(certs.path(), &nodes, &clients, false).unwrap();
        let addrs = NODE_NAMES
            .iter()
            .map(|_| (Ipv4Addr::LOCALHOST, free_port()).into())
            .collect();
        Cluster {
            certs,
            data: tempfile::tempdir().unwrap(),
            addrs,
        }
    }

    fn tls(&self, name: &str) -> TlsMaterial {
        TlsMaterial::load(self.certs.path(), name).unwrap()
    }

    /// Node `id` (1-based) with the certificate of `cert_name`.
    fn config_as(&self, id: NodeId, cert_name: &str) -> TransportConfig {
        let index = id as usize - 1;
        let peers = (1..=NODE_NAMES.len() as NodeId)
            .filter(|peer| *peer != id)
            .map(|peer| Peer {
                id: peer,
                name: NODE_NAMES[peer as usize - 1].to_string(),
                addr: self.addrs[peer as usize - 1],
            })
            .collect();
        TransportConfig {
            self_name: NODE_NAMES[index].to_string(),
            self_id: id,
            listen: self.addrs[index],
            peers,
            tls: self.tls(cert_name),
            snapshot_dir: self.data.path().join(format!("snap-{id}")),
            limits: TransportLimits::default(),
        }
    }

    fn start(&self, id: NodeId) -> (Transport, mpsc::Receiver<Inbound>) {
        Transport::start(self.config_as(id, NODE_NAMES[id as usize - 1])).unwrap()
    }

    /// Starts node `id` again on its old port. quinn keeps the UDP socket until the closed
    /// connections have drained (3 PTOs, up to seconds for a handshake that never finished),
    /// so the port may still be busy for a moment after `shutdown`.
    async fn restart(&self, id: NodeId) -> (Transport, mpsc::Receiver<Inbound>) {
        for _ in 0..WAIT_MS_MAX / 50 {
            match Transport::start(self.config_as(id, NODE_NAMES[id as usize - 1])) {
                Ok(started) => return started,
                Err(TransportError::Bind { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("restart failed: {e}"),
            }
        }
        panic!("port of node {id} still busy after {WAIT_MS_MAX} ms");
    }
}

fn heartbeat(from: NodeId, to: NodeId, term: u64) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::Heartbeat {
            commit: 0,
            read_round: 0,
        },
    }
}

async fn next_inbound(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
    let wait = Duration::from_millis(WAIT_MS_MAX);
    tokio::time::timeout(wait, rx.recv())
        .await
        .expect("inbound timed out")
        .expect("closed")
}

async fn next_raft(rx: &mut mpsc::Receiver<Inbound>) -> Message {
    match next_inbound(rx).await {
        Inbound::Raft(msg) => msg,
        other => panic!("expected a raft message, got {other:?}"),
    }
}

/// Polls a counter until it reaches `at_least` (bounded by WAIT_MS_MAX).
async fn wait_counter(counter: &AtomicU64, at_least: u64) {
    for _ in 0..WAIT_MS_MAX / 10 {
        if TransportStats::get(counter) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "counter stayed at {} (< {at_least})",
        TransportStats::get(counter)
    );
}

/// Answers every client request with its own bytes, reversed; forwards everything else.
fn spawn_echo(mut rx: mpsc::Receiver<Inbound>) -> mpsc::UnboundedReceiver<Inbound> {
    let (tx, others) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(inbound) = rx.recv().await {
            match inbound {
                Inbound::Client { request, reply, .. } => {
                    let mut response = request.to_vec();
                    response.reverse();
                    let _ = reply.send(Bytes::from(response));
                }
                other => {
                    let _ = tx.send(other);
                }
            }
        }
    });
    others
}

#[tokio::test]
async fn transport_three_nodes_exchange_raft_messages() {
    let cluster = Cluster::new();
    let mut nodes: Vec<_> = (1..=3).map(|id| cluster.start(id)).collect();
    for from in 1..=3u64 {
        for to in (1..=3u64).filter(|to| *to != from) {
            for term in 1..=100 {
                nodes[from as usize - 1].0.send(heartbeat(from, to, term));
            }
        }
    }
    // Each node gets 100 messages from each of the two others, in order per sender.
    for (index, (_, rx)) in nodes.iter_mut().enumerate() {
        let mut last_term = [0u64; 4];
        for _ in 0..200 {
            let msg = next_raft(rx).await;
            assert_eq!(msg.to, index as u64 + 1);
            assert_eq!(
                msg.term,
                last_term[msg.from as usize] + 1,
                "in order per sender"
            );
            last_term[msg.from as usize] = msg.term;
        }
    }
    for (transport, _) in nodes {
        let stats = transport.stats();
        assert_eq!(TransportStats::get(&stats.messages_sent_total), 200);
        assert_eq!(TransportStats::get(&stats.messages_received_total), 200);
        assert_eq!(stats.connections_refused_total(), 0);
        transport.shutdown().await;
    }
}

#[tokio::test]
async fn transport_restarted_peer_receives_messages_again() {
    let cluster = Cluster::new();
    let (n1, mut rx1) = cluster.start(1);
    let (n2, mut rx2) = cluster.start(2);
    n1.send(heartbeat(1, 2, 1));
    assert_eq!(next_raft(&mut rx2).await.term, 1);

    n2.shutdown().await;
    drop(rx2);
    // Sent while n2 is down: lost or delivered late, Raft tolerates both.
    n1.send(heartbeat(1, 2, 2));
    let (n2, mut rx2) = cluster.restart(2).await;
    // n1 notices the old connection is gone and redials with backoff; keep sending until a
    // fresh message arrives.
    let mut delivered = None;
    for term in 3..3 + WAIT_MS_MAX / 50 {
        n1.send(heartbeat(1, 2, term));
        let wait = tokio::time::timeout(Duration::from_millis(50), rx2.recv()).await;
        if let Ok(Some(Inbound::Raft(msg))) = wait {
            if msg.term >= 3 {
                delivered = Some(msg.term);
                break;
            }
        }
    }
    assert!(delivered.is_some(), "no message reached the restarted peer");
    n2.send(heartbeat(2, 1, 7));
    let msg = next_raft(&mut rx1).await;
    assert_eq!((msg.from, msg.term), (2, 7));
    n1.shutdown().await;
    n2.shutdown().await;
}

/// A directory holding the cluster's CA but the client cert and key of another CA.
fn foreign_client_dir(cluster: &Cluster) -> tempfile::TempDir {
    let other = tempfile::tempdir().unwrap();
    let spec = [NodeCertSpec {
        name: "n1".into(),
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
    }];
    generate_certs(other.path(), &spec, &["client1".to_string()], false).unwrap();
    let mixed = tempfile::tempdir().unwrap();
    std::fs::copy(
        cluster.certs.path().join("ca.pem"),
        mixed.path().join("ca.pem"),
    )
    .unwrap();
    for file in ["client1.pem", "client1.key"] {
        std::fs::copy(other.path().join(file), mixed.path().join(file)).unwrap();
    }
    mixed
}

#[tokio::test]
async fn transport_client_with_cert_of_another_ca_is_refused() {
    let cluster = Cluster::new();
    let (n1, rx1) = cluster.start(1);
    let _others = spawn_echo(rx1);
    let mixed = foreign_client_dir(&cluster);
    let foreign = TlsMaterial::load(mixed.path(), "client1").unwrap();
    let result = ClientConn::connect(cluster.addrs[0], "n1", &foreign).await;
    let Err(ClientError::Refused { reason }) = result else {
        panic!("expected a refusal, got {:?}", result.err());
    };
    assert!(
        reason.contains("UnknownIssuer") || reason.contains("certificate"),
        "{reason}"
    );
    wait_counter(&n1.stats().connections_refused_tls_total, 1).await;

    // The real client still gets in.
    let client = ClientConn::connect(cluster.addrs[0], "n1", &cluster.tls("client1")).await;
    let response = client
        .unwrap()
        .request(Bytes::from_static(b"abc"), wait())
        .await;
    assert_eq!(response.unwrap(), Bytes::from_static(b"cba"));
    n1.shutdown().await;
}

fn wait() -> Duration {
    Duration::from_millis(WAIT_MS_MAX)
}

#[tokio::test]
async fn transport_client_without_cert_is_refused() {
    let cluster = Cluster::new();
    let (n1, rx1) = cluster.start(1);
    let _others = spawn_echo(rx1);
    let ca_pem = std::fs::read(cluster.certs.path().join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&ca_pem).unwrap())
        .unwrap();
    let provider = kvtransport::tls::crypto_provider();
    let crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let limits = TransportLimits::default();
    let config = quinn_client_config(crypto, limits.quinn_transport().unwrap()).unwrap();
    let result =
        ClientConn::connect_with(cluster.addrs[0], "n1", config, Hello::client(), &limits).await;
    assert!(
        matches!(result, Err(ClientError::Refused { .. })),
        "{:?}",
        result.err()
    );
    wait_counter(&n1.stats().connections_refused_tls_total, 1).await;
    n1.shutdown().await;
}

#[tokio::test]
async fn transport_node_cert_with_wrong_identity_is_refused() {
    let cluster = Cluster::new();
    let (n1, rx1) = cluster.start(1);
    let mut others = spawn_echo(rx1);
    let limits = TransportLimits::default();
    let transport = limits.quinn_transport().unwrap();
    let addr = cluster.addrs[0];

    // n3's certificate claiming to be node 2.
    let n3 = cluster.tls("n3").client_config(transport.clone()).unwrap();
    let result = ClientConn::connect_with(addr, "n1", n3, Hello::node(2, "n2"), &limits).await;
    let Err(ClientError::Refused { reason }) = result else {
        panic!("expected a refusal, got {:?}", result.err());
    };
    assert!(reason.contains("cannot act as node 2"), "{reason}");
    wait_counter(&n1.stats().connections_refused_identity_total, 1).await;

    // A client certificate claiming to be a node.
    let client = cluster
        .tls("client1")
        .client_config(transport.clone())
        .unwrap();
    let result = ClientConn::connect_with(addr, "n1", client, Hello::node(2, "n2"), &limits).await;
    assert!(
        matches!(result, Err(ClientError::Refused { .. })),
        "{:?}",
        result.err()
    );
    wait_counter(&n1.stats().connections_refused_identity_total, 2).await;

    // The dialing side: n1 answering when we dial "n2" is refused by our verifier.
    let n3 = cluster.tls("n3").client_config(transport.clone()).unwrap();
    let result = ClientConn::connect_with(addr, "n2", n3, Hello::node(3, "n3"), &limits).await;
    let Err(ClientError::Refused { reason }) = result else {
        panic!("expected a refusal, got {:?}", result.err());
    };
    assert!(reason.contains("not valid for name"), "{reason}");

    // Node 2, properly authenticated, sending a message that claims to come from node 3.
    let n2 = cluster.tls("n2").client_config(transport).unwrap();
    let conn = ClientConn::connect_with(addr, "n1", n2, Hello::node(2, "n2"), &limits).await;
    let conn = conn.unwrap();
    let mut stream = conn.connection().open_uni().await.unwrap();
    let forged = codec::encode_frame(&heartbeat(3, 1, 1), 1 << 20).unwrap();
    let genuine = codec::encode_frame(&heartbeat(2, 1, 2), 1 << 20).unwrap();
    let mut chunks = [
        Bytes::from_static(&[wire::STREAM_TAG_RAFT]),
        forged,
        genuine,
    ];
    stream.write_all_chunks(&mut chunks).await.unwrap();
    let Some(Inbound::Raft(msg)) = others.recv().await else {
        panic!("no message")
    };
    assert_eq!(
        (msg.from, msg.term),
        (2, 2),
        "the forged message was dropped"
    );
    assert_eq!(
        TransportStats::get(&n1.stats().messages_dropped_wrong_sender_total),
        1
    );
    n1.shutdown().await;
}

async fn raw_client_stream(conn: &ClientConn, bytes: &[u8]) -> Result<Bytes, ClientError> {
    let (mut send, mut recv) = conn.connection().open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    match codec::read_raw_frame(&mut recv, 1 << 20).await {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(ClientError::Stream("no response".into())),
        Err(e) => Err(ClientError::Stream(e.to_string())),
    }
}

/// Sends `bytes` on a raw stream of its own and checks that the node reset it with `code`.
async fn assert_raw_stream_reset(client: &ClientConn, bytes: &[u8], code: u32) {
    let error = raw_client_stream(client, bytes)
        .await
        .unwrap_err()
        .to_string();
    let expected = format!("reset by peer: error {code}");
    assert!(error.contains(&expected), "{error}");
}

#[tokio::test]
async fn transport_oversize_and_malformed_frames_fail_and_node_keeps_serving() {
    let cluster = Cluster::new();
    let (n1, rx1) = cluster.start(1);
    let (n2, _rx2) = cluster.start(2);
    let mut others = spawn_echo(rx1);
    let stats = n1.stats();
    let client = ClientConn::connect(cluster.addrs[0], "n1", &cluster.tls("client1")).await;
    let client = client.unwrap();

    // A request announcing 512 MiB: refused on the length, nothing allocated or read.
    let mut oversize = vec![wire::STREAM_TAG_CLIENT];
    oversize.extend_from_slice(&(512u32 << 20).to_le_bytes());
    assert_raw_stream_reset(&client, &oversize, 3).await;
    assert_eq!(TransportStats::get(&stats.frames_oversize_total), 1);
    // The library refuses a too large request before sending it.
    let limit = kvtransport::CLIENT_REQUEST_BYTES_MAX_DEFAULT as usize;
    let big = Bytes::from(vec![0u8; limit + 1]);
    assert!(matches!(
        client.request(big, wait()).await,
        Err(ClientError::TooLarge)
    ));

    // An unknown stream tag, and a request cut inside its frame.
    assert_raw_stream_reset(&client, &[99], 2).await;
    assert_raw_stream_reset(&client, &[wire::STREAM_TAG_CLIENT, 10, 0, 0, 0, 1], 2).await;
    assert_eq!(TransportStats::get(&stats.frames_malformed_total), 2);

    // A raft stream with a frame that does not decode as a Message.
    let limits = TransportLimits::default();
    let n2_config = cluster
        .tls("n2")
        .client_config(limits.quinn_transport().unwrap())
        .unwrap();
    let hello = Hello::node(2, "n2");
    let raw = ClientConn::connect_with(cluster.addrs[0], "n1", n2_config, hello, &limits).await;
    let raw = raw.unwrap();
    let mut stream = raw.connection().open_uni().await.unwrap();
    let garbage = codec::encode_raw_frame(&[0xff; 32], 1024).unwrap();
    stream.write_all(&[wire::STREAM_TAG_RAFT]).await.unwrap();
    stream.write_all(&garbage).await.unwrap();
    wait_counter(&stats.frames_malformed_total, 3).await;

    // Still serving: the same client connection, and n2's own raft stream.
    let response = client
        .request(Bytes::from_static(b"ok?"), wait())
        .await
        .unwrap();
    assert_eq!(response, Bytes::from_static(b"?ko"));
    n2.send(heartbeat(2, 1, 9));
    let Some(Inbound::Raft(msg)) = others.recv().await else {
        panic!("no message")
    };
    assert_eq!((msg.from, msg.term), (2, 9));
    n1.shutdown().await;
    n2.shutdown().await;
}

fn write_test_file(path: &Path, bytes_len: usize) -> Vec<u8> {
    // xorshift: incompressible, deterministic content.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut content = Vec::with_capacity(bytes_len);
    while content.len() < bytes_len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        content.extend_from_slice(&state.to_le_bytes());
    }
    content.truncate(bytes_len);
    std::fs::write(path, &content).unwrap();
    content
}

#[tokio::test]
async fn transport_snapshot_file_streams_and_arrives_identical() {
    let cluster = Cluster::new();
    let (n1, mut rx1) = cluster.start(1);
    let (n2, mut rx2) = cluster.start(2);
    let source: PathBuf = cluster.data.path().join("outgoing.snap");
    let content = write_test_file(&source, 5 * (1 << 20) + 12_345);
    let meta = SnapshotMeta {
        last_index: 42,
        last_term: 3,
        membership: Membership::new(vec![1, 2]),
        membership_index: 0,
    };
    n1.send_snapshot(2, meta.clone(), source);

    let Inbound::Snapshot {
        from,
        meta: got_meta,
        path,
    } = next_inbound(&mut rx2).await
    else {
        panic!("expected a snapshot");
    };
    assert_eq!((from, &got_meta), (1, &meta));
    assert!(path.starts_with(cluster.data.path().join("snap-2")));
    assert_eq!(std::fs::read(&path).unwrap(), content);
    let Inbound::SnapshotSent {
        to,
        meta: sent_meta,
        ok,
    } = next_inbound(&mut rx1).await
    else {
        panic!("expected the sender's outcome");
    };
    assert_eq!((to, sent_meta, ok), (2, meta, true));
    assert_eq!(TransportStats::get(&n1.stats().snapshots_sent_total), 1);
    assert_eq!(TransportStats::get(&n2.stats().snapshots_received_total), 1);
    // No temporary file is left behind.
    let leftovers = std::fs::read_dir(cluster.data.path().join("snap-2"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 1);
    n1.shutdown().await;
    n2.shutdown().await;
}

/// One node answering client requests with their bytes reversed, and `tasks` tasks sharing
/// one client connection, each sending `requests_per_task` requests made by
/// `body(task, request)`: every answer must be its own request reversed, and the node must
/// count every request.
async fn echo_concurrently(
    tasks: usize,
    requests_per_task: usize,
    body: fn(usize, usize) -> Vec<u8>,
) {
    let cluster = Cluster::new();
    let (n1, rx1) = cluster.start(1);
    let _others = spawn_echo(rx1);
    let client = ClientConn::connect(cluster.addrs[0], "n1", &cluster.tls("client1")).await;
    let client = std::sync::Arc::new(client.unwrap());
    let mut running = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let client = client.clone();
        running.spawn(async move {
            for request in 0..requests_per_task {
                let sent = body(task, request);
                let response = client.request(Bytes::from(sent.clone()), wait()).await;
                let mut expected = sent;
                expected.reverse();
                let response = response.unwrap();
                assert_eq!(response, Bytes::from(expected), "task {task} #{request}");
            }
        });
    }
    while let Some(result) = running.join_next().await {
        result.unwrap();
    }
    let answered = TransportStats::get(&n1.stats().client_requests_total);
    assert_eq!(answered, (tasks * requests_per_task) as u64);
    n1.shutdown().await;
}

#[tokio::test]
async fn transport_concurrent_client_requests_all_answered() {
    echo_concurrently(64, 200, |task, request| {
        format!("{task}:{request}").into_bytes()
    })
    .await;
}

/// Requests below and above the size the client copies into its batched write
/// (`FRAME_COPY_BYTES_MAX`, 4 KiB) interleave on one session and are each answered with
/// their own bytes: the copied and the uncopied frames keep their order and framing.
#[tokio::test]
async fn transport_mixed_request_sizes_in_one_batch_are_framed_whole() {
    const SIZES: [usize; 5] = [1, 300, 4 << 10, (4 << 10) + 1, 40_000];
    echo_concurrently(16, 20, |task, request| {
        let len = SIZES[(task + request) % SIZES.len()];
        (0..len).map(|i| (i * 31 + task + request) as u8).collect()
    })
    .await;
}

/// Connects `tls` to `addr` until the node accepts (it notices closed connections a moment
/// after their client does), bounded by WAIT_MS_MAX.
async fn connect_eventually(addr: SocketAddr, tls: &TlsMaterial) -> ClientConn {
    for _ in 0..WAIT_MS_MAX / 50 {
        if let Ok(conn) = ClientConn::connect(addr, "n1", tls).await {
            return conn;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no connection accepted within {WAIT_MS_MAX} ms");
}

/// Regression (issue 10, bug 4): connections were unbounded, in total and per certificate.
#[tokio::test]
async fn transport_connection_caps_refuse_and_count_the_connection_over_each_limit() {
    let cluster = Cluster::new();
    let mut config = cluster.config_as(1, "n1");
    config.limits.connections_max = 3;
    config.limits.connections_per_identity_max = 2;
    let (n1, rx1) = Transport::start(config).unwrap();
    let _others = spawn_echo(rx1);
    let stats = n1.stats();
    let addr = cluster.addrs[0];
    let (client1, client2) = (cluster.tls("client1"), cluster.tls("client2"));

    // Per identity: client1's third connection is refused after the handshake, with a reason.
    let first = ClientConn::connect(addr, "n1", &client1).await.unwrap();
    let second = ClientConn::connect(addr, "n1", &client1).await.unwrap();
    let result = ClientConn::connect(addr, "n1", &client1).await;
    let Err(ClientError::Refused { reason }) = result else {
        panic!("expected a refusal, got {:?}", result.err());
    };
    assert!(
        reason.contains("connections_per_identity_max is 2"),
        "{reason}"
    );
    wait_counter(&stats.connections_refused_identity_limit_total, 1).await;

    // In total: with three open (client1 twice, client2 once), a fourth is refused before its
    // handshake.
    let third = ClientConn::connect(addr, "n1", &client2).await.unwrap();
    let result = ClientConn::connect(addr, "n1", &client2).await;
    let Err(ClientError::Refused { reason }) = result else {
        panic!("expected a refusal, got {:?}", result.err());
    };
    assert!(reason.contains("connection limit"), "{reason}");
    wait_counter(&stats.connections_refused_limit_total, 1).await;
    assert_eq!(stats.connections_refused_total(), 2);
    assert_eq!(TransportStats::get(&stats.connections_accepted_total), 3);

    // The connections within the limits are served.
    let response = first.request(Bytes::from_static(b"ab"), wait()).await;
    assert_eq!(response.unwrap(), Bytes::from_static(b"ba"));

    // A closed connection gives back both its slots: client1 may connect again, and so may
    // anyone once the total is below the limit.
    second.close().await;
    let again = connect_eventually(addr, &client1).await;
    let response = again.request(Bytes::from_static(b"cd"), wait()).await;
    assert_eq!(response.unwrap(), Bytes::from_static(b"dc"));
    assert_eq!(
        stats.connections_refused_total(),
        2,
        "no refusal once below the limits"
    );
    for conn in [first, third, again] {
        conn.close().await;
    }
    n1.shutdown().await;
}

/// Regression (issue 10, bug 4): a connection's concurrent client streams could each make the
/// node hold a whole request (256 x 5 MiB).
#[tokio::test]
async fn transport_inflight_budget_refuses_unread_and_client_conn_stays_within_it() {
    const KIB: usize = 1 << 10;
    let cluster = Cluster::new();
    let limits = TransportLimits {
        client_request_bytes_max: 256 * KIB as u32,
        client_inflight_bytes_per_connection_max: 256 * KIB as u64,
        ..TransportLimits::default()
    };
    let mut config = cluster.config_as(1, "n1");
    config.limits = limits.clone();
    let (n1, rx1) = Transport::start(config).unwrap();
    let _others = spawn_echo(rx1);
    let stats = n1.stats();
    let quic = cluster
        .tls("client1")
        .client_config(limits.quinn_transport().unwrap())
        .unwrap();
    let hello = Hello::client();
    let client = ClientConn::connect_with(cluster.addrs[0], "n1", quic, hello, &limits).await;
    let client = client.unwrap();

    // Two raw requests announcing 200 KiB and 100 KiB, each sending 10 bytes: together over
    // the 256 KiB budget, so whichever arrives second is refused unread with STREAM_BUSY.
    let mut streams = Vec::new();
    for announced in [200 * KIB, 100 * KIB] {
        let (mut send, recv) = client.connection().open_bi().await.unwrap();
        let mut head = vec![wire::STREAM_TAG_CLIENT];
        head.extend_from_slice(&(announced as u32).to_le_bytes());
        head.extend_from_slice(&[0u8; 10]);
        send.write_all(&head).await.unwrap();
        streams.push((send, recv));
    }
    wait_counter(&stats.client_requests_refused_inflight_total, 1).await;
    let mut busy = 0;
    for (_, recv) in &mut streams {
        let read = tokio::time::timeout(Duration::from_millis(200), recv.read_to_end(16)).await;
        if let Ok(Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)))) = read {
            assert_eq!(code, wire::STREAM_BUSY.into());
            busy += 1;
        }
    }
    assert_eq!(busy, 1, "exactly one of the two is refused");
    // Ending the admitted one early gives its charge back.
    drop(streams);
    wait_counter(&stats.frames_malformed_total, 1).await;

    // ClientConn keeps the same budget: 32 concurrent requests of 100 KiB (3.2 MiB) all pass.
    let client = std::sync::Arc::new(client);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..32u8 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut body = vec![task; 100 * KIB];
            body[0] = 255;
            let response = client.request(Bytes::from(body.clone()), wait()).await;
            body.reverse();
            assert_eq!(response.unwrap(), Bytes::from(body));
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    assert_eq!(
        TransportStats::get(&stats.client_requests_refused_inflight_total),
        1,
        "a client within its budget is never refused"
    );
    n1.shutdown().await;
}

/// Hands every client request, with its reply, to the test to answer (or drop) when it likes.
fn spawn_holder(mut rx: mpsc::Receiver<Inbound>) -> mpsc::UnboundedReceiver<(Bytes, ClientReply)> {
    let (tx, held) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(inbound) = rx.recv().await {
            if let Inbound::Client { request, reply, .. } = inbound {
                let _ = tx.send((request, reply));
            }
        }
    });
    held
}

async fn next_held(
    held: &mut mpsc::UnboundedReceiver<(Bytes, ClientReply)>,
) -> (Bytes, ClientReply) {
    let wait = Duration::from_millis(WAIT_MS_MAX);
    tokio::time::timeout(wait, held.recv())
        .await
        .expect("no request reached the node")
        .expect("holder ended")
}

/// All of a `ClientConn`'s requests share one session stream: answers are matched to requests
/// by id whatever their order, a late answer to a request that timed out is dropped (the next
/// request gets its own), and a request the node drops is answered at once, not timed out.
#[tokio::test]
async fn transport_session_matches_answers_by_id_in_any_order() {
    let cluster = Cluster::new();
    let (n1, rx1) = cluster.start(1);
    let mut held = spawn_holder(rx1);
    let client = ClientConn::connect(cluster.addrs[0], "n1", &cluster.tls("client1")).await;
    let client = std::sync::Arc::new(client.unwrap());

    // Two requests in flight; the node answers the second first.
    let mut first = tokio::spawn({
        let client = client.clone();
        async move { client.request(Bytes::from_static(b"one"), wait()).await }
    });
    let (request_a, reply_a) = next_held(&mut held).await;
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.request(Bytes::from_static(b"two"), wait()).await }
    });
    let (request_b, reply_b) = next_held(&mut held).await;
    assert_eq!((&request_a[..], &request_b[..]), (&b"one"[..], &b"two"[..]));
    reply_b.send(Bytes::from_static(b"answer two")).unwrap();
    assert_eq!(
        second.await.unwrap().unwrap(),
        Bytes::from_static(b"answer two")
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut first)
            .await
            .is_err(),
        "the first request got an answer that was not its own"
    );
    reply_a.send(Bytes::from_static(b"answer one")).unwrap();
    assert_eq!(
        first.await.unwrap().unwrap(),
        Bytes::from_static(b"answer one")
    );

    // A request that times out; its late answer must not reach the next request.
    let timed_out = client
        .request(Bytes::from_static(b"slow"), Duration::from_millis(200))
        .await;
    assert!(
        matches!(timed_out, Err(ClientError::Timeout)),
        "{timed_out:?}"
    );
    let (_, slow_reply) = next_held(&mut held).await;
    let next = tokio::spawn({
        let client = client.clone();
        async move { client.request(Bytes::from_static(b"next"), wait()).await }
    });
    let (_, next_reply) = next_held(&mut held).await;
    slow_reply.send(Bytes::from_static(b"late")).unwrap();
    next_reply.send(Bytes::from_static(b"mine")).unwrap();
    assert_eq!(next.await.unwrap().unwrap(), Bytes::from_static(b"mine"));

    // The node drops a request unanswered: the client hears STREAM_UNAVAILABLE at once.
    let dropped = tokio::spawn({
        let client = client.clone();
        async move { client.request(Bytes::from_static(b"drop me"), wait()).await }
    });
    let (_, reply) = next_held(&mut held).await;
    drop(reply);
    let started = std::time::Instant::now();
    let answer = dropped.await.unwrap();
    let unavailable = u64::from(wire::STREAM_UNAVAILABLE);
    assert!(
        matches!(answer, Err(ClientError::Rejected { code }) if code == unavailable),
        "{answer:?}"
    );
    assert!(started.elapsed() < wait() / 2, "answered, not timed out");
    n1.shutdown().await;
}

/// A session holds at most `client_session_requests_inflight_max` requests the node has not
/// answered; one more is refused with STREAM_BUSY (nothing executed) and the session goes on.
#[tokio::test]
async fn transport_session_requests_inflight_max_refuses_one_more_and_keeps_serving() {
    let cluster = Cluster::new();
    let mut config = cluster.config_as(1, "n1");
    config.limits.client_session_requests_inflight_max = 2;
    let (n1, rx1) = Transport::start(config).unwrap();
    let stats = n1.stats();
    let mut held = spawn_holder(rx1);
    let client = ClientConn::connect(cluster.addrs[0], "n1", &cluster.tls("client1")).await;
    let client = std::sync::Arc::new(client.unwrap());
    let ask = |body: &'static [u8]| {
        let client = client.clone();
        tokio::spawn(async move { client.request(Bytes::from_static(body), wait()).await })
    };
    let first = ask(b"a");
    let (_, reply_a) = next_held(&mut held).await;
    let second = ask(b"b");
    let (_, reply_b) = next_held(&mut held).await;
    let third = ask(b"c").await.unwrap();
    let busy = u64::from(wire::STREAM_BUSY);
    assert!(
        matches!(third, Err(ClientError::Rejected { code }) if code == busy),
        "{third:?}"
    );
    assert_eq!(
        TransportStats::get(&stats.client_requests_refused_inflight_total),
        1
    );
    reply_a.send(Bytes::from_static(b"A")).unwrap();
    reply_b.send(Bytes::from_static(b"B")).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), Bytes::from_static(b"A"));
    assert_eq!(second.await.unwrap().unwrap(), Bytes::from_static(b"B"));
    // Room again: the same session serves the next request.
    let fourth = ask(b"d");
    let (request, reply) = next_held(&mut held).await;
    assert_eq!(&request[..], b"d");
    reply.send(Bytes::from_static(b"D")).unwrap();
    assert_eq!(fourth.await.unwrap().unwrap(), Bytes::from_static(b"D"));
    n1.shutdown().await;
}

/// Raw session streams: a request announcing more than `client_request_bytes_max` resets the
/// session with STREAM_TOO_LARGE, a frame cut short with STREAM_MALFORMED; both are counted and
/// the node goes on serving other sessions.
#[tokio::test]
async fn transport_session_oversize_and_truncated_frames_reset_the_session() {
    let cluster = Cluster::new();
    let (n1, rx1) = cluster.start(1);
    let _others = spawn_echo(rx1);
    let stats = n1.stats();
    let client = ClientConn::connect(cluster.addrs[0], "n1", &cluster.tls("client1")).await;
    let client = client.unwrap();
    let mut oversize = vec![wire::STREAM_TAG_SESSION];
    oversize.extend_from_slice(&7u64.to_le_bytes());
    oversize.extend_from_slice(&(512u32 << 20).to_le_bytes());
    assert_raw_stream_reset(&client, &oversize, 3).await;
    assert_eq!(TransportStats::get(&stats.frames_oversize_total), 1);
    let mut truncated = vec![wire::STREAM_TAG_SESSION];
    truncated.extend_from_slice(&7u64.to_le_bytes());
    truncated.extend_from_slice(&10u32.to_le_bytes());
    truncated.push(1);
    assert_raw_stream_reset(&client, &truncated, 2).await;
    assert_eq!(TransportStats::get(&stats.frames_malformed_total), 1);
    let response = client.request(Bytes::from_static(b"ok?"), wait()).await;
    assert_eq!(response.unwrap(), Bytes::from_static(b"?ko"));
    n1.shutdown().await;
}

/// Peers follow membership changes: a node that does not know n3 refuses its connections and
/// cannot send to it; once n3 is added with `set_peers` both directions work; once removed,
/// messages to it are dropped as to an unknown peer and its connections are refused again,
/// while the peer that stayed keeps working.
#[tokio::test]
async fn transport_peers_added_and_removed_at_runtime() {
    let cluster = Cluster::new();
    let peer = |id: NodeId| Peer {
        id,
        name: NODE_NAMES[id as usize - 1].to_string(),
        addr: cluster.addrs[id as usize - 1],
    };
    let mut n1_config = cluster.config_as(1, "n1");
    n1_config.peers = vec![peer(2)];
    let (mut n1, mut n1_rx) = Transport::start(n1_config).unwrap();
    let (n3, mut n3_rx) = cluster.start(3);
    let n1_stats = n1.stats();
    // n3 knows n1, n1 does not know n3: n3's connection is refused.
    n3.send(heartbeat(3, 1, 1));
    wait_counter(&n1_stats.connections_refused_identity_total, 1).await;
    n1.send(heartbeat(1, 3, 1));
    wait_counter(&n1_stats.messages_dropped_invalid_total, 1).await;

    n1.set_peers(vec![peer(2), peer(3)]).unwrap();
    assert_eq!(n1.peers(), vec![peer(2), peer(3)]);
    n1.send(heartbeat(1, 3, 2));
    let message = next_raft(&mut n3_rx).await;
    assert_eq!((message.from, message.term), (1, 2));
    // n3 redials (backoff) and is accepted now; its queued heartbeat may have been lost.
    for term in 2..=WAIT_MS_MAX / 100 {
        n3.send(heartbeat(3, 1, term));
        let wait = Duration::from_millis(100);
        if let Ok(Some(Inbound::Raft(message))) = tokio::time::timeout(wait, n1_rx.recv()).await {
            assert_eq!(message.from, 3);
            break;
        }
        assert!(term < WAIT_MS_MAX / 100, "n3 never got through to n1");
    }

    n1.set_peers(vec![peer(2)]).unwrap();
    assert_eq!(n1.peers(), vec![peer(2)]);
    let dropped = TransportStats::get(&n1_stats.messages_dropped_invalid_total);
    n1.send(heartbeat(1, 3, 3));
    assert_eq!(
        TransportStats::get(&n1_stats.messages_dropped_invalid_total),
        dropped + 1
    );
    // n1 closed its connection to n3; n3's own connection to n1 ends with it or at the next
    // redial, which is refused.
    let refused = TransportStats::get(&n1_stats.connections_refused_identity_total);
    let quiet = async {
        for term in 100.. {
            n3.send(heartbeat(3, 1, term));
            tokio::time::sleep(Duration::from_millis(50)).await;
            if TransportStats::get(&n1_stats.connections_refused_identity_total) > refused {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), quiet)
        .await
        .expect("n3 was not refused after its removal");
    n1.shutdown().await;
    n3.shutdown().await;
}
