//! Client library scenarios. Loopback only.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any setup error

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use kvclient::{Client, ClientConfig, ClientError, ReadMode};
use kvtransport::{generate_certs, NodeCertSpec};

fn free_port() -> u16 {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.local_addr().unwrap().port()
}

fn certs(dir: &std::path::Path, node_count: u64) {
    let nodes: Vec<NodeCertSpec> = (1..=node_count)
        .map(|id| NodeCertSpec {
            name: format!("n{id}"),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        })
        .collect();
    generate_certs(dir, &nodes, &["client1".to_string()], false).unwrap();
}

#[tokio::test]
async fn client_no_node_listening_gives_a_definite_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), 3);
    let nodes = (1..=3)
        .map(|id| (id, SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))))
        .collect();
    let mut config = ClientConfig::new(nodes, dir.path().to_path_buf(), "client1");
    config.request_timeout = Duration::from_millis(200);
    config.attempts_max = 4;
    let client = Client::connect(config).await.unwrap();
    let mut session = client.session();
    let error = session.put("k", "v").await.unwrap_err();
    assert!(
        matches!(error, ClientError::Unavailable { attempts: 4, .. }),
        "{error:?}"
    );
    assert!(error.is_definite());
    let error = client.status(2).await.unwrap_err();
    assert!(error.is_definite(), "{error:?}");
    assert!(matches!(
        client.status(9).await,
        Err(ClientError::UnknownNode(9))
    ));
}

#[tokio::test]
async fn client_refuses_bad_requests_before_sending() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), 1);
    let nodes = vec![(1, SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())))];
    let mut config = ClientConfig::new(nodes, dir.path().to_path_buf(), "client1");
    config.request_timeout = Duration::from_millis(200);
    let client = Client::connect(config).await.unwrap();
    let mut session = client.session();
    let empty_key = session.get("", ReadMode::Stale).await.unwrap_err();
    assert!(
        matches!(empty_key, ClientError::BadRequest(_)),
        "{empty_key:?}"
    );
    let value = vec![0u8; kvstate::limits::VALUE_BYTES_MAX + 1];
    let too_large = session.put("k", value).await.unwrap_err();
    assert!(
        matches!(too_large, ClientError::TooLarge { .. }),
        "{too_large:?}"
    );
    assert!(too_large.is_definite());
}

#[tokio::test]
async fn client_missing_certificates_is_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = vec![(1, SocketAddr::from((Ipv4Addr::LOCALHOST, 1)))];
    let config = ClientConfig::new(nodes, dir.path().to_path_buf(), "client1");
    assert!(matches!(
        Client::connect(config).await,
        Err(ClientError::Tls(_))
    ));
}

#[test]
fn client_sessions_get_distinct_ids() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), 1);
    let nodes = vec![(1, SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())))];
    let mut config = ClientConfig::new(nodes, dir.path().to_path_buf(), "client1");
    config.request_timeout = Duration::from_millis(100);
    let client = runtime.block_on(Client::connect(config)).unwrap();
    let ids: std::collections::HashSet<u64> =
        (0..1000).map(|_| client.session().client_id()).collect();
    assert_eq!(ids.len(), 1000);
    assert!(!ids.contains(&0));
}
