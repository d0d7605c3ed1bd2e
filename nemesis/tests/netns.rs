//! The netns backend with real namespaces, veths, a bridge and iptables (root only; CI runs as
//! root). Traffic goes only to addresses inside the namespaces these tests create.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::Duration;

use nemesis::netns::{self, Grudge, Network};
use nemesis::process::{self, NodeCommand};
use nemesis::spec::NetnsLayout;
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

/// How long a receiver waits for a datagram before calling the link cut.
const RECEIVE_TIMEOUT_MS: u64 = 700;
/// Datagrams sent per probe (the first may wait for ARP).
const PROBE_DATAGRAMS: u32 = 3;

fn root_or_skip(test: &str) -> bool {
    if netns::is_root() {
        return true;
    }
    println!("SKIPPED {test}: needs root to create network namespaces (CI runs as root)");
    false
}

/// Removes the network even when an assertion fails.
struct NetworkGuard(Network);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        if let Err(error) = self.0.destroy() {
            eprintln!("cleanup failed: {error}");
        }
    }
}

fn layout(prefix: &str, third_octet: u8) -> NetnsLayout {
    NetnsLayout {
        prefix: prefix.to_string(),
        subnet: [10, 77, third_octet],
    }
}

fn enter(namespace: &str) {
    let file = File::open(format!("/run/netns/{namespace}")).unwrap();
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).unwrap();
}

/// True if a UDP datagram sent from inside `from_ns` reaches `to` bound inside `to_ns`.
/// Each side runs on its own thread moved into its namespace (setns is per thread).
fn udp_delivers(from_ns: &str, to_ns: &str, to: Ipv4Addr) -> bool {
    let (port_sender, port_receiver) = mpsc::channel();
    let to_ns = to_ns.to_string();
    let receiver = std::thread::spawn(move || {
        enter(&to_ns);
        let socket = UdpSocket::bind(SocketAddr::from((to, 0))).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(RECEIVE_TIMEOUT_MS)))
            .unwrap();
        port_sender
            .send(socket.local_addr().unwrap().port())
            .unwrap();
        let mut buffer = [0u8; 64];
        socket.recv_from(&mut buffer).is_ok()
    });
    let port = port_receiver.recv().unwrap();
    let from_ns = from_ns.to_string();
    let sender = std::thread::spawn(move || {
        enter(&from_ns);
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..PROBE_DATAGRAMS {
            let _ = socket.send_to(b"probe", SocketAddr::from((to, port)));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    sender.join().unwrap();
    receiver.join().unwrap()
}

#[test]
fn netns_network_connects_nodes_isolates_heals_and_is_removed() {
    if !root_or_skip("netns_network_connects_nodes_isolates_heals_and_is_removed") {
        return;
    }
    let layout = layout("kta", 201);
    let guard = NetworkGuard(Network::create(&layout, &[1, 2, 3]).unwrap());
    let (n1, n2, n3) = ("kta-n1", "kta-n2", "kta-n3");
    assert!(udp_delivers(n1, n2, layout.node_ip(2)));
    assert!(udp_delivers(n3, n1, layout.node_ip(1)));

    // Isolate n1: both directions cut for n1, n2 <-> n3 untouched.
    let grudge: Grudge = nemesis::fault::complete_grudge(&[vec![1], vec![2, 3]]);
    guard.0.block(&grudge).unwrap();
    assert!(!udp_delivers(n1, n2, layout.node_ip(2)));
    assert!(!udp_delivers(n2, n1, layout.node_ip(1)));
    assert!(udp_delivers(n2, n3, layout.node_ip(3)));
    assert!(guard
        .0
        .rules(1)
        .unwrap()
        .contains("-s 10.77.201.2/32 -j DROP"));

    guard.0.heal().unwrap();
    assert!(udp_delivers(n2, n1, layout.node_ip(1)));
    assert!(!guard.0.rules(1).unwrap().contains("DROP"));
    drop(guard);
    assert_no_objects("kta");
}

#[test]
fn netns_one_way_partition_cuts_one_direction_only() {
    if !root_or_skip("netns_one_way_partition_cuts_one_direction_only") {
        return;
    }
    let layout = layout("ktb", 202);
    let guard = NetworkGuard(Network::create(&layout, &[1, 2]).unwrap());
    let grudge = nemesis::fault::partition_grudge(
        nemesis::PartitionKind::OneWay,
        &[1, 2],
        Some(1),
        &mut nemesis::rng::Rng::new(1),
    )
    .unwrap();
    guard.0.block(&grudge).unwrap();
    assert!(
        udp_delivers("ktb-n1", "ktb-n2", layout.node_ip(2)),
        "1 -> 2 stays open"
    );
    assert!(
        !udp_delivers("ktb-n2", "ktb-n1", layout.node_ip(1)),
        "2 -> 1 is cut"
    );
    drop(guard);
    assert_no_objects("ktb");
}

#[test]
fn netns_has_no_route_out_and_the_root_namespace_reaches_nodes() {
    if !root_or_skip("netns_has_no_route_out_and_the_root_namespace_reaches_nodes") {
        return;
    }
    let forwarding_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let layout = layout("ktc", 203);
    let _guard = NetworkGuard(Network::create(&layout, &[1, 2]).unwrap());
    let routes = netns::run_in("ktc-n1", "ip", &["-4", "route", "show"]).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    assert_eq!(routes.trim().lines().count(), 1, "only the /24: {routes}");
    assert!(routes.contains("10.77.203.0/24"));
    let forwarding_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(forwarding_before, forwarding_after);

    // A receiver in n2, a sender in the root namespace (a client's position).
    let socket = {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            enter("ktc-n2");
            tx.send(UdpSocket::bind("10.77.203.2:0").unwrap()).unwrap();
        })
        .join()
        .unwrap();
        rx.recv().unwrap()
    };
    socket
        .set_read_timeout(Some(Duration::from_millis(RECEIVE_TIMEOUT_MS)))
        .unwrap();
    let client = UdpSocket::bind("10.77.203.254:0").unwrap();
    let target = socket.local_addr().unwrap();
    for _ in 0..PROBE_DATAGRAMS {
        client.send_to(b"hello", target).unwrap();
    }
    let mut buffer = [0u8; 16];
    let (length, from) = socket.recv_from(&mut buffer).unwrap();
    assert_eq!(&buffer[..length], b"hello");
    assert_eq!(from.ip().to_string(), "10.77.203.254");
}

#[test]
fn netns_destroy_kills_processes_inside_and_leftovers_go_by_prefix() {
    if !root_or_skip("netns_destroy_kills_processes_inside_and_leftovers_go_by_prefix") {
        return;
    }
    let layout = layout("ktd", 204);
    let guard = NetworkGuard(Network::create(&layout, &[1, 2]).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let command = NodeCommand {
        argv: vec!["sleep".to_string(), "30".to_string()],
        cwd: dir.path().to_path_buf(),
        namespace: Some("ktd-n2".to_string()),
        log_path: dir.path().join("n2.log"),
    };
    let mut child = process::spawn(&command).unwrap();
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        process::runs(pid, &command),
        "ip netns exec must exec the program itself"
    );
    let pids = netns::run("ip", &["netns", "pids", "ktd-n2"]).unwrap();
    assert!(
        pids.split_whitespace().any(|p| p == pid.to_string()),
        "{pids}"
    );

    // Forget the Network value: removal by prefix must find everything on its own.
    std::mem::forget(guard);
    let removed = netns::remove_leftovers("ktd").unwrap();
    assert!(removed.contains(&"ktd-n1".to_string()), "{removed:?}");
    assert!(removed.contains(&"ktdbr0".to_string()), "{removed:?}");
    let _ = child.wait();
    assert!(!process::is_alive(pid));
    assert_no_objects("ktd");
    assert!(
        netns::remove_leftovers("ktd").unwrap().is_empty(),
        "idempotent"
    );
}

#[test]
fn netns_refuses_a_subnet_in_use() {
    if !root_or_skip("netns_refuses_a_subnet_in_use") {
        return;
    }
    let first = NetworkGuard(Network::create(&layout("kte", 205), &[1]).unwrap());
    let clash = Network::create(&layout("ktf", 205), &[1]);
    assert!(
        matches!(clash, Err(netns::NetnsError::SubnetInUse { .. })),
        "{clash:?}"
    );
    assert_no_objects("ktf");
    drop(first);
    assert_no_objects("kte");
}

fn assert_no_objects(prefix: &str) {
    let namespaces = netns::list_namespaces().unwrap();
    assert!(
        !namespaces
            .iter()
            .any(|n| n.starts_with(&format!("{prefix}-"))),
        "{namespaces:?}"
    );
    let links = netns::list_links().unwrap();
    assert!(!links.iter().any(|l| l.starts_with(prefix)), "{links:?}");
}
