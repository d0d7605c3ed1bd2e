//! Membership changes on real processes: `kvnode run` and `kvctl` binaries, real QUIC with
//! mutual TLS on loopback, real WALs with fsync. A 3-node cluster grows to 5 (certificates
//! from the existing CA with `kvnode certs`, `kvctl member add`, `kvnode run --join`, `kvctl
//! member promote`) and shrinks back to 3 (`kvctl move-leader`, `kvctl member remove` of the
//! leader and of a follower) under a bounded client load; no client sees an error beyond
//! retries and every acknowledged write is read back. Ports 52300-52304 (metrics 53300-53304).
#![allow(clippy::unwrap_used)] // test helpers fail the test on any setup error

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvclient::config::ClusterConfig;
use kvclient::{Client, ClientConfig, ReadMode};
use kvstate::members::{MemberList, MemberRole};
use kvstate::{KeyOp, KeyResult, Value};

const BASE_PORT: u16 = 52300;
/// Concurrent client sessions of the load, and the bounds of each one's loop.
const LOAD_SESSIONS: usize = 4;
const LOAD_WRITES_PER_SESSION_MAX: usize = 2_000;
const LOAD_DURATION_MAX: Duration = Duration::from_secs(40);
/// Pause between two writes of one session: the load is steady, not saturating.
const LOAD_PAUSE: Duration = Duration::from_millis(4);
/// Small, so that the log is compacted before n5 joins: n5 is caught up by snapshot (and so
/// learns n4's address from the snapshot), n4 by the log.
const SNAPSHOT_ENTRIES: u64 = 200;
/// Writes made between the two additions, enough for every node to have compacted.
const WRITES_BEFORE_N5: usize = 3 * SNAPSHOT_ENTRIES as usize;
/// How long a learner may take to catch up before its promotion is accepted.
const PROMOTE_WITHIN: Duration = Duration::from_secs(15);

fn address(id: u64) -> String {
    format!("127.0.0.1:{}", BASE_PORT + id as u16 - 1)
}

/// The nodes' processes; every one is killed when the test ends, passing or not.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, Child>,
}

impl Cluster {
    /// Certificates for n1-n3 and client1 (`kvnode certs`) and a config naming n1-n5, where
    /// n4 and n5 are `join = true` (not in the initial configuration).
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!(
            "data_dir = \"data\"\ncerts_dir = \"certs\"\nelection_timeout_ms = 1000\n\
             snapshot_entries = {SNAPSHOT_ENTRIES}\n",
        );
        for id in 1..=5u64 {
            let join = if id > 3 { "join = true\n" } else { "" };
            let address = address(id);
            text.push_str(&format!(
                "[[nodes]]\nid = {id}\naddress = \"{address}\"\n{join}"
            ));
        }
        std::fs::write(dir.path().join("cluster.toml"), text).unwrap();
        let cluster = Cluster {
            dir,
            nodes: BTreeMap::new(),
        };
        cluster.certs("n1,n2,n3");
        cluster
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kvnode certs` for `nodes`: the CA made first is kept and signs them.
    fn certs(&self, nodes: &str) {
        let output = Command::new(env!("CARGO_BIN_EXE_kvnode"))
            .args(["certs", "--dir"])
            .arg(self.path("certs"))
            .args(["--nodes", nodes, "--clients", "client1"])
            .output()
            .unwrap();
        assert!(output.status.success(), "kvnode certs: {}", stderr(&output));
    }

    fn start(&mut self, id: u64, join: bool) {
        self.start_with(id, join, "cluster.toml");
    }

    /// Starts node `id` with the config file `config` (in the test's directory).
    fn start_with(&mut self, id: u64, join: bool, config: &str) {
        let log = std::fs::File::create(self.path(&format!("n{id}.log"))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kvnode"));
        command
            .args(["run", "--config"])
            .arg(self.path(config))
            .args(["--id", &format!("n{id}")])
            .stdout(Stdio::null())
            .stderr(log);
        if join {
            command.arg("--join");
        }
        self.nodes.insert(id, command.spawn().unwrap());
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.path(&format!("n{id}.log"))).unwrap_or_default()
    }

    fn kvctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .arg("--config")
            .arg(self.path("cluster.toml"))
            .args(["--command-timeout", "10s"])
            .args(args)
            .env("XDG_CACHE_HOME", self.path("cache"))
            .output()
            .unwrap()
    }

    /// A kvctl command that must succeed; returns its standard output.
    fn kvctl_ok(&self, args: &[&str]) -> String {
        let output = self.kvctl(args);
        assert!(
            output.status.success(),
            "kvctl {}: {}{}\n{}",
            args.join(" "),
            stdout(&output),
            stderr(&output),
            self.logs()
        );
        stdout(&output)
    }

    /// The last lines of every node's log, for failure messages.
    fn logs(&self) -> String {
        let mut text = String::new();
        for id in 1..=5 {
            let log = self.log(id);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            text.push_str(&format!(
                "--- n{id}.log (last lines)\n{}\n",
                tail.join("\n")
            ));
        }
        text
    }

    fn client_config(&self) -> ClientConfig {
        let cluster = ClusterConfig::load(&self.path("cluster.toml")).unwrap();
        ClientConfig::from_cluster(&cluster, "client1")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The member list once it shows exactly `voters` as voters (and no learner), committed.
async fn wait_voters(client: &Client, voters: &[u64], cluster: &Cluster) -> MemberList {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(list) = client.members().await {
            let ids: Vec<u64> = (list.members.iter())
                .filter(|m| m.role == MemberRole::Voter)
                .map(|m| m.id)
                .collect();
            if ids == voters
                && list.members.len() == voters.len()
                && list.committed
                && list.leader.is_some_and(|l| voters.contains(&l))
            {
                return list;
            }
            last = Some(list);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "voters never became {voters:?}; last list {last:?}; n1 log:\n{}",
        cluster.log(1)
    );
}

/// What the load saw: acknowledged writes and errors (beyond the client library's retries).
#[derive(Default)]
struct LoadResult {
    acknowledged: Vec<(String, String)>,
    errors: Vec<String>,
}

async fn load(client: Client, session_index: usize, stop: Arc<AtomicBool>) -> LoadResult {
    let mut session = client.session();
    let mut result = LoadResult::default();
    let started = Instant::now();
    for i in 0..LOAD_WRITES_PER_SESSION_MAX {
        if stop.load(Ordering::Relaxed) || started.elapsed() > LOAD_DURATION_MAX {
            break;
        }
        let (key, value) = (format!("s{session_index}-k{i}"), format!("v{i}"));
        match session.put(key.clone(), value.clone()).await {
            Ok(_) => result.acknowledged.push((key, value)),
            Err(error) => result.errors.push(format!("{key}: {error}")),
        }
        tokio::time::sleep(LOAD_PAUSE).await;
    }
    result
}

/// Adds `id` as a learner, starts it empty with `--join` and promotes it once caught up.
fn grow(cluster: &mut Cluster, id: u64) {
    let name = format!("n{id}");
    cluster.certs(&name);
    let added = cluster.kvctl_ok(&["member", "add", &name, "--peer-address", &address(id)]);
    assert!(
        added.starts_with(&format!("Member {name} added to the cluster as a learner")),
        "{added}"
    );
    cluster.start(id, true);
    let deadline = Instant::now() + PROMOTE_WITHIN;
    loop {
        let output = cluster.kvctl(&["member", "promote", &name]);
        if output.status.success() {
            assert!(stdout(&output).contains(&format!("Member {name} promoted")));
            return;
        }
        let error = stderr(&output);
        assert!(
            error.contains("not caught up") && Instant::now() < deadline,
            "promote {name}: {error}; its log:\n{}",
            cluster.log(id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_to_five_and_shrinks_to_three_under_load() {
    let started = Instant::now();
    let mut cluster = Cluster::new();
    for id in 1..=3 {
        cluster.start(id, false);
    }
    let client = Client::connect(cluster.client_config()).await.unwrap();
    wait_voters(&client, &[1, 2, 3], &cluster).await;

    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..LOAD_SESSIONS)
        .map(|i| tokio::spawn(load(client.clone(), i, stop.clone())))
        .collect();

    // Grow: 3 -> 5; n4 by the log, then the log is compacted, n5 by a snapshot.
    tokio::task::block_in_place(|| grow(&mut cluster, 4));
    let mut burst = client.session();
    let mut acknowledged = Vec::new();
    for i in 0..WRITES_BEFORE_N5 {
        let (key, value) = (format!("burst-k{i}"), format!("v{i}"));
        burst.put(key.clone(), value.clone()).await.unwrap();
        acknowledged.push((key, value));
    }
    tokio::task::block_in_place(|| grow(&mut cluster, 5));
    assert!(
        cluster.log(5).contains("installed snapshot from leader"),
        "n5 was not caught up by a snapshot; its log:\n{}",
        cluster.log(5)
    );
    let list = wait_voters(&client, &[1, 2, 3, 4, 5], &cluster).await;
    for member in &list.members {
        assert_eq!(member.address.as_deref(), Some(address(member.id).as_str()));
    }

    // Shrink: 5 -> 3, the leader first (moved to n1 so that it is an original node), then a
    // follower.
    tokio::task::block_in_place(|| {
        let moved = cluster.kvctl_ok(&["move-leader", "n1"]);
        assert!(moved.contains("to n1"), "{moved}");
        let removed = cluster.kvctl_ok(&["member", "remove", "n1"]);
        assert!(removed.starts_with("Member n1 removed"), "{removed}");
        cluster.kill(1);
        let removed = cluster.kvctl_ok(&["member", "remove", "n2"]);
        assert!(removed.starts_with("Member n2 removed"), "{removed}");
        cluster.kill(2);
    });
    wait_voters(&client, &[3, 4, 5], &cluster).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for load in loads {
        let result = load.await.unwrap();
        acknowledged.extend(result.acknowledged);
        errors.extend(result.errors);
    }
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(
        acknowledged.len() >= WRITES_BEFORE_N5 + 200,
        "only {} writes acknowledged",
        acknowledged.len()
    );

    // A joined node restarts with its configuration and its peers' addresses from its disk:
    // with n5 leading and a config file that does not name n5, n4 must take n5's address
    // from its own snapshot and log (else it refuses n5's connections and learns nothing),
    // and serves a write made after its restart from its own state.
    tokio::task::block_in_place(|| {
        let moved = cluster.kvctl_ok(&["move-leader", "n5"]);
        assert!(moved.contains("to n5"), "{moved}");
    });
    cluster.kill(4);
    let without_n5 = format!(
        "data_dir = \"data\"\ncerts_dir = \"certs\"\nsnapshot_entries = {SNAPSHOT_ENTRIES}\n\
         [[nodes]]\nid = 3\naddress = \"{}\"\n[[nodes]]\nid = 4\naddress = \"{}\"\n\
         join = true\n",
        address(3),
        address(4)
    );
    std::fs::write(cluster.path("without-n5.toml"), without_n5).unwrap();
    cluster.start_with(4, false, "without-n5.toml");
    let mut session = client.session();
    session.put("after-restart", "yes").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let n4 = ClientConfig::new(
        vec![(4, address(4).parse().unwrap())],
        cluster.path("certs"),
        "client1",
    );
    let n4 = Client::connect(n4).await.unwrap();
    let mut n4_session = n4.session();
    loop {
        let value = n4_session.get("after-restart", ReadMode::Stale).await;
        if matches!(&value, Ok(Some(Value::Bytes(v))) if v.as_ref() == b"yes") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted n4 does not catch up: {value:?}; its log:\n{}",
            cluster.log(4)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = cluster.log(4);
    assert!(
        recovered.contains("recovered") && !recovered.contains("snapshot_index=0 "),
        "n4 did not restart from a snapshot of its own; its log:\n{recovered}"
    );

    // Every acknowledged write is there (linearizable reads, 32 keys per transaction).
    for chunk in acknowledged.chunks(32) {
        let ops = (chunk.iter())
            .map(|(key, _)| KeyOp::Get {
                key: key.clone().into(),
            })
            .collect();
        let (_, results) = session.txn(ops, ReadMode::Linearizable).await.unwrap();
        for ((key, value), result) in chunk.iter().zip(results) {
            let expected = Some(Value::Bytes(value.clone().into()));
            assert_eq!(result, KeyResult::Get { value: expected }, "{key}");
        }
    }
    let took = started.elapsed();
    eprintln!(
        "membership: {} acknowledged writes, 3 -> 5 -> 3 voters, {:.1} s",
        acknowledged.len(),
        took.as_secs_f64()
    );
}
