//! kvctl's command line: usage errors and unreachable clusters. Loopback only.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any setup error

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::{Command, Output};

use kvtransport::{generate_certs, NodeCertSpec};

fn kvctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn kvctl_usage_errors_exit_2_with_a_clear_message() {
    let cases: [(&[&str], &str); 6] = [
        (&["get", "k"], "--config cluster.toml or --nodes"),
        (
            &["--config", "/nonexistent.toml", "status"],
            "/nonexistent.toml",
        ),
        (&["--nodes", "1=nowhere", "get", "k"], "IP:PORT"),
        (
            &["--nodes", "1=127.0.0.1:1", "frobnicate"],
            "unrecognized subcommand",
        ),
        (&["--nodes", "1=127.0.0.1:1", "put", "k"], "required"),
        (
            &["--nodes", "1=127.0.0.1:1", "txn", "append k"],
            "transaction operation",
        ),
    ];
    for (args, needle) in cases {
        let output = kvctl(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn kvctl_unreachable_cluster_exits_1() {
    let certs = tempfile::tempdir().unwrap();
    let node = NodeCertSpec {
        name: "n1".into(),
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    generate_certs(certs.path(), &[node], &["client1".to_string()], false).unwrap();
    let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nodes = format!("1=127.0.0.1:{port}");
    let certs = certs.path().to_str().unwrap();
    let base = ["--nodes", &nodes, "--certs", certs, "--timeout-ms", "200"];
    let status = kvctl(&[&base[..], &["status"]].concat());
    assert_eq!(status.status.code(), Some(1), "{}", stderr(&status));
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("unreachable"), "{stdout}");
    let missing_certs = kvctl(&["--nodes", &nodes, "--certs", "/nonexistent", "get", "k"]);
    assert_eq!(missing_certs.status.code(), Some(1));
    assert!(
        stderr(&missing_certs).contains("ca.pem"),
        "{}",
        stderr(&missing_certs)
    );
}
