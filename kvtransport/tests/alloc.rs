//! What one client connection can make a node allocate, measured with a counting global
//! allocator against a real transport on 127.0.0.1 (issue 10, bug 4: the frame codec allocated
//! each announced length before the payload arrived; nothing bounded the bytes in flight).
//!
//! One test in its own binary: the allocator counts the whole process, so nothing else may run
//! beside it. The client lives in the same process, so its allocations count too (they are
//! small: every stream sends slices of one shared buffer allocated before the baseline).

// The allocator below must implement `GlobalAlloc`, an unsafe trait: its methods only forward
// to the system allocator with the caller's own arguments, and count.
#![allow(unsafe_code)]
// A failed setup step should simply panic.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kvtransport::wire;
use kvtransport::{
    generate_certs, ClientConn, Inbound, NodeCertSpec, TlsMaterial, Transport, TransportConfig,
    TransportLimits,
};
use tokio::sync::mpsc;

struct Counting;

static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED_BYTES_PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = ALLOCATED_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    ALLOCATED_BYTES_PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    ALLOCATED_BYTES.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with unchanged arguments; the counters have no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Zeroed memory may not be touched yet (calloc maps it lazily), but it is ours: a
        // peer that can make us allocate it can make us touch it too.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Starts measuring: returns the bytes allocated now; the peak restarts from here.
fn baseline() -> usize {
    let now = ALLOCATED_BYTES.load(Ordering::Relaxed);
    ALLOCATED_BYTES_PEAK.store(now, Ordering::Relaxed);
    now
}

fn peak_above(baseline: usize) -> usize {
    ALLOCATED_BYTES_PEAK
        .load(Ordering::Relaxed)
        .saturating_sub(baseline)
}

/// Upper bound for anything the test waits for; generous for a loaded 2-core machine.
const WAIT_MS_MAX: u64 = 20_000;
/// How long the node gets to read what has arrived before the peak is read.
const SETTLE_MS: u64 = 500;
const MIB: usize = 1 << 20;

/// The peak a client may cause, both scenarios: the default in-flight budget per connection
/// (8 MiB, `client_inflight_bytes_per_connection_max`) plus the connection's receive window
/// (4 MiB, `connection_receive_window_bytes`), plus 12 MiB for what is not request bytes:
/// quinn's packet buffers on both endpoints, stream state and tasks for every stream opened.
/// The old codec needed streams x announced bytes: 64 x 5 MiB, then 24 x 4 MiB.
const PEAK_BYTES_MAX: usize = 24 * MIB;

struct Node {
    transport: Transport,
    client: ClientConn,
    _certs: tempfile::TempDir,
    _data: tempfile::TempDir,
}

/// One node (no peers) on 127.0.0.1 with default limits, and a client connected to it. The
/// node answers no request: the requests of this test never finish arriving.
async fn start_node() -> (Node, mpsc::Receiver<Inbound>) {
    // RUST_LOG=kvtransport=debug shows the transport's decisions when the test fails.
    let filter = tracing_subscriber::EnvFilter::from_default_env();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    // RUST_LOG=kvtransport=debug shows the transport's decisions when the test fails.
    let filter = tracing_subscriber::EnvFilter::from_default_env();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let certs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let spec = [NodeCertSpec {
        name: "n1".into(),
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
    }];
    generate_certs(certs.path(), &spec, &["client1".to_string()], false).unwrap();
    let config = TransportConfig {
        self_name: "n1".into(),
        self_id: 1,
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        peers: Vec::new(),
        tls: TlsMaterial::load(certs.path(), "n1").unwrap(),
        snapshot_dir: data.path().join("snap"),
        limits: TransportLimits::default(),
    };
    let (transport, inbound) = Transport::start(config).unwrap();
    let addr = transport.local_addr().unwrap();
    let tls = TlsMaterial::load(certs.path(), "client1").unwrap();
    let client = ClientConn::connect(addr, "n1", &tls).await.unwrap();
    let node = Node {
        transport,
        client,
        _certs: certs,
        _data: data,
    };
    (node, inbound)
}

/// Opens `streams` client streams, each announcing `announced` bytes and sending the first
/// `sent` of them (slices of `payload`). Returns, once every write ended, the streams the node
/// did not refuse, still open.
async fn announce(
    client: &ClientConn,
    streams: usize,
    announced: usize,
    sent: usize,
    payload: &Bytes,
) -> Vec<quinn::SendStream> {
    let mut writes = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (mut send, _recv) = client.connection().open_bi().await.unwrap();
        let mut head = vec![wire::STREAM_TAG_CLIENT];
        head.extend_from_slice(&(announced as u32).to_le_bytes());
        let mut chunks = [Bytes::from(head), payload.slice(..sent)];
        writes.spawn(async move {
            // quinn reports a stream stopped by the peer to a blocked write only once the
            // write is unblocked, and that stream's unsent bytes keep counting against the
            // connection's flow control until it is reset: watch for the stop beside the
            // write, or streams the node refused would block those it admitted.
            let stopped = send.stopped();
            let written = tokio::select! {
                written = send.write_all_chunks(&mut chunks) => written.is_ok(),
                _ = stopped => false,
            };
            if written {
                Some(send)
            } else {
                // Refused by the node: reset it, as `ClientConn` does by dropping it.
                let _ = send.reset(0u32.into());
                None
            }
        });
    }
    let mut open = Vec::new();
    let wait = Duration::from_millis(WAIT_MS_MAX);
    while let Some(done) = tokio::time::timeout(wait, writes.join_next())
        .await
        .unwrap()
    {
        open.extend(done.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    open
}

#[tokio::test]
async fn alloc_one_client_cannot_make_the_node_hold_streams_times_announced_bytes() {
    let (node, inbound) = start_node().await;
    let payload = Bytes::from(vec![0x5a_u8; 4 * MIB]);

    // 1. 64 streams each announce the largest request (5 MiB) and send 16 bytes of it.
    let before = baseline();
    let streams = announce(&node.client, 64, 5 * MIB, 16, &payload).await;
    let peak = peak_above(before);
    println!(
        "announce 64 x 5 MiB, send 16 B each: peak +{} KiB",
        peak >> 10
    );
    assert!(
        peak <= PEAK_BYTES_MAX,
        "64 streams announcing 5 MiB and sending 16 B made the process allocate {} MiB more \
         (bound {} MiB)",
        peak / MIB,
        PEAK_BYTES_MAX / MIB
    );
    drop(streams);

    // 2. 24 streams each announce 4 MiB and send all of it but the last byte.
    let before = baseline();
    let streams = announce(&node.client, 24, 4 * MIB, 4 * MIB - 1, &payload).await;
    let peak = peak_above(before);
    println!(
        "announce 24 x 4 MiB, send all but 1 B each: peak +{} KiB",
        peak >> 10
    );
    assert!(
        peak <= PEAK_BYTES_MAX,
        "24 streams sending 4 MiB - 1 B each made the process allocate {} MiB more \
         (bound {} MiB)",
        peak / MIB,
        PEAK_BYTES_MAX / MIB
    );
    drop(streams);

    node.client.close().await;
    node.transport.shutdown().await;
    drop(inbound);
}
