//! kvctl's command line without a cluster: usage errors, where the config comes from, and
//! unreachable addresses. Loopback only.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any setup error

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kvtransport::{generate_certs, NodeCertSpec};

/// How long kvctl may take to give up on an address where no node answers (the bar).
const WRONG_ADDRESS_FAILS_WITHIN: Duration = Duration::from_secs(3);

/// kvctl run in `cwd` without `$KVCTL_CONFIG` unless `config_env` gives it.
fn kvctl_in(cwd: &Path, config_env: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    command
        .current_dir(cwd)
        .args(args)
        .env_remove("KVCTL_CONFIG")
        .env("XDG_CACHE_HOME", cwd.join(".cache"));
    if let Some(path) = config_env {
        command.env("KVCTL_CONFIG", path);
    }
    command.output().unwrap()
}

fn kvctl(args: &[&str]) -> Output {
    let empty = tempfile::tempdir().unwrap();
    kvctl_in(empty.path(), None, args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Certificates for n1 and client1 in `dir`.
fn certs(dir: &Path) {
    let node = NodeCertSpec {
        name: "n1".into(),
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    generate_certs(dir, &[node], &["client1".to_string()], false).unwrap();
}

/// A one-node config at `path` naming `port`, with certificates beside it.
fn config(path: &Path, port: u16) {
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    certs(&dir.join("certs"));
    let text = format!(
        "data_dir = \"data\"\ncerts_dir = \"certs\"\n[[nodes]]\nid = 1\n\
         address = \"127.0.0.1:{port}\"\n"
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn kvctl_usage_errors_exit_2_with_a_clear_message() {
    let cases: [(&[&str], &str); 13] = [
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
        (
            &["--nodes", "1=127.0.0.1:1", "-w", "yaml", "get", "k"],
            "invalid value 'yaml'",
        ),
        (
            &[
                "--nodes",
                "1=127.0.0.1:1",
                "--dial-timeout",
                "10",
                "get",
                "k",
            ],
            "not a duration",
        ),
        (
            &[
                "--nodes",
                "1=127.0.0.1:1",
                "--command-timeout",
                "0s",
                "get",
                "k",
            ],
            "--command-timeout must be > 0",
        ),
        (
            &["--nodes", "1=127.0.0.1:1", "txn", "append k"],
            "transaction operation",
        ),
        (
            &["--nodes", "1=127.0.0.1:1", "member", "add", "n4"],
            "--peer-address <IP:PORT>",
        ),
        (
            &[
                "--nodes",
                "1=127.0.0.1:1",
                "member",
                "add",
                "n4",
                "--peer-address",
                "localhost:1",
            ],
            "invalid socket address",
        ),
        (
            &["--nodes", "1=127.0.0.1:1", "member", "promote", "x4"],
            "node 'x4': expected a node name like n4",
        ),
        (
            &["--nodes", "1=127.0.0.1:1", "member", "remove", "n0"],
            "ids start at 1",
        ),
        (
            &["--nodes", "1=127.0.0.1:1", "move-leader", "leader"],
            "expected a node name like n4",
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
fn kvctl_wrong_address_fails_fast_naming_it() {
    let certs_dir = tempfile::tempdir().unwrap();
    certs(certs_dir.path());
    let port = free_udp_port();
    let nodes = format!("1=127.0.0.1:{port}");
    let certs = certs_dir.path().to_str().unwrap();
    let started = Instant::now();
    let get = kvctl(&["--nodes", &nodes, "--certs", certs, "get", "k"]);
    let took = started.elapsed();
    assert_eq!(get.status.code(), Some(1), "{}", stderr(&get));
    assert!(took < WRONG_ADDRESS_FAILS_WITHIN, "took {took:?}");
    let message = stderr(&get);
    assert!(
        message.contains(&format!("n1 at 127.0.0.1:{port}")),
        "{message}"
    );
    assert!(message.contains("no node reachable within 1s"), "{message}");
    assert!(!message.contains("Some("), "{message}");
    // Flags go before or after the command, as with etcdctl.
    let status = kvctl(&[
        "endpoint",
        "status",
        "--nodes",
        &nodes,
        "--certs",
        certs,
        "--dial-timeout",
        "200ms",
        "-w",
        "table",
    ]);
    assert_eq!(status.status.code(), Some(1), "{}", stderr(&status));
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("| NODE "), "{stdout}");
    assert!(stdout.contains("unreachable"), "{stdout}");
    let missing_certs = kvctl(&["--nodes", &nodes, "--certs", "/nonexistent", "get", "k"]);
    assert_eq!(missing_certs.status.code(), Some(1));
    assert!(
        stderr(&missing_certs).contains("ca.pem"),
        "{}",
        stderr(&missing_certs)
    );
}

/// Without flags kvctl takes `$KVCTL_CONFIG`, else `data/cluster/cluster.toml` in the working
/// directory or a parent (what `just cluster up` writes). Each config here names a port
/// where no node listens, so the error message shows which config was used.
#[test]
fn kvctl_finds_its_config_without_flags() {
    let repo = tempfile::tempdir().unwrap();
    let cluster_up_port = free_udp_port();
    config(
        &repo.path().join("data/cluster/cluster.toml"),
        cluster_up_port,
    );
    let subdir = repo.path().join("kvnode/src");
    std::fs::create_dir_all(&subdir).unwrap();
    let args = ["--dial-timeout", "200ms", "get", "k"];
    for cwd in [repo.path(), subdir.as_path()] {
        let output = kvctl_in(cwd, None, &args);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let expected = format!("127.0.0.1:{cluster_up_port}");
        assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let env_port = free_udp_port();
    let env_config = elsewhere.path().join("mine.toml");
    config(&env_config, env_port);
    let output = kvctl_in(repo.path(), Some(&env_config), &args);
    let expected = format!("127.0.0.1:{env_port}");
    assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
}
