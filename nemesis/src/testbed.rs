//! Hosts for the ssh backend without real machines: the netns backend's network (one
//! namespace per host on a bridge, `netns::Network`), each namespace running its own `sshd`
//! (OpenSSH's server, /usr/sbin/sshd) with its own config, host key and authorized key, all
//! generated into a directory of the caller's. The control node (this process, in the root
//! namespace) reaches them through the bridge. Root only.
//!
//! The hosts share this machine's filesystem and process table: each gets a work directory of
//! its own (`<dir>/host-n<k>/kvstore`), and the backend only ever signals pids from a host's
//! own pid file. Dropping the testbed stops the sshd processes and removes the network.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{self, NetnsError, Network};
use crate::spec::NetnsLayout;
use crate::ssh::{SshHost, SSH_PORT_DEFAULT};
use crate::NodeId;

/// The OpenSSH server (Debian's openssh-server).
pub const SSHD_BINARY: &str = "/usr/sbin/sshd";
/// sshd's privilege separation directory; it refuses to start without it.
pub const SSHD_PRIVSEP_DIR: &str = "/run/sshd";
/// Where Debian's openssh-server keeps the SFTP server scp uses.
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";
/// How long each sshd gets to accept connections.
pub const SSHD_READY_TIMEOUT_MS: u64 = 5000;
const SSHD_POLL_MS: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} not found (apt-get install openssh-server)")]
    Missing(&'static str),
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error(
        "sshd in {namespace} did not accept connections within {SSHD_READY_TIMEOUT_MS} ms: {log}"
    )]
    NotReady { namespace: String, log: String },
}

pub struct Testbed {
    network: Network,
    sshds: Vec<Child>,
    dir: PathBuf,
    /// One per namespace, as a hosts file lists them (root, the generated key, a work dir
    /// of its own, known hosts in `dir`).
    pub hosts: Vec<SshHost>,
    /// The client key the hosts accept.
    pub key: PathBuf,
    made_privsep_dir: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestbedError {
    let path = path.to_path_buf();
    move |source| TestbedError::Io { path, source }
}

fn keygen(path: &Path) -> Result<(), TestbedError> {
    let output = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "kvnemesis-testbed",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(io(Path::new("ssh-keygen")))?;
    if !output.status.success() {
        return Err(TestbedError::Failed {
            command: format!("ssh-keygen -f {}", path.display()),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

impl Testbed {
    /// Builds `count` namespaces named and addressed by `layout`, and an sshd in each.
    pub fn start(layout: &NetnsLayout, count: u64, dir: &Path) -> Result<Testbed, TestbedError> {
        netns::require_root()?;
        for binary in [SSHD_BINARY, SFTP_SERVER] {
            if !Path::new(binary).is_file() {
                return Err(TestbedError::Missing(binary));
            }
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ids: Vec<NodeId> = (1..=count).collect();
        let network = Network::create(layout, &ids)?;
        let made_privsep_dir = !Path::new(SSHD_PRIVSEP_DIR).is_dir();
        let mut testbed = Testbed {
            network,
            sshds: Vec::new(),
            dir: dir.to_path_buf(),
            hosts: Vec::new(),
            key: dir.join("client_key"),
            made_privsep_dir,
        };
        if made_privsep_dir {
            std::fs::create_dir_all(SSHD_PRIVSEP_DIR).map_err(io(Path::new(SSHD_PRIVSEP_DIR)))?;
        }
        testbed.start_sshds(layout, &ids)?;
        Ok(testbed)
    }

    fn start_sshds(&mut self, layout: &NetnsLayout, ids: &[NodeId]) -> Result<(), TestbedError> {
        let dir = self.dir.clone();
        let host_key = dir.join("host_key");
        keygen(&host_key)?;
        keygen(&self.key)?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(self.key.with_extension("pub"), &authorized).map_err(io(&authorized))?;
        for id in ids {
            let address = layout.node_ip(*id);
            let namespace = layout.namespace(*id);
            let config = dir.join(format!("sshd-n{id}.conf"));
            // `SetEnv SHLVL=2`: bash (root's login shell) sources ~/.bashrc for ssh commands
            // only when SHLVL < 2, and a bashrc that runs tools (pyenv init on the machine
            // this was written on: ~200 ms) would otherwise be timed instead of the backend.
            let text = format!(
                "ListenAddress {address}:{SSH_PORT_DEFAULT}\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PidFile none\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 Subsystem sftp {SFTP_SERVER}\n\
                 SetEnv SHLVL=2\n",
                host_key = host_key.display(),
                authorized = authorized.display(),
            );
            std::fs::write(&config, text).map_err(io(&config))?;
            let log_path = dir.join(format!("sshd-n{id}.log"));
            let log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
            let log_err = log.try_clone().map_err(io(&log_path))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &namespace, SSHD_BINARY, "-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(io(Path::new("ip netns exec sshd")))?;
            self.sshds.push(child);
            wait_listening(
                SocketAddr::from((address, SSH_PORT_DEFAULT)),
                &namespace,
                &log_path,
            )?;
            self.hosts.push(SshHost {
                address: address.into(),
                user: "root".to_string(),
                port: SSH_PORT_DEFAULT,
                key: Some(self.key.clone()),
                dir: Some(self.work_dir(*id).display().to_string()),
                known_hosts: Some(dir.join("known_hosts")),
            });
        }
        Ok(())
    }

    /// Host k's work directory (it does not exist until a cluster uses the host).
    pub fn work_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("host-n{id}")).join("kvstore")
    }

    /// The hosts as a hosts file's text.
    pub fn hosts_file(&self) -> String {
        let mut text = String::from("# sshd in network namespaces (nemesis::testbed)\n");
        for host in &self.hosts {
            text.push_str(&host_line(host));
            text.push('\n');
        }
        text
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Host k's iptables rules (`iptables -S` in its namespace).
    pub fn rules(&self, id: NodeId) -> Result<String, NetnsError> {
        netns::run_in(
            &self.network.layout.namespace(id),
            "iptables",
            &["-w", "-S"],
        )
    }

    /// Whether a process started from host k's work directory runs (the hosts share this
    /// machine's process table).
    pub fn runs_from(&self, id: NodeId) -> bool {
        let needle = self.work_dir(id).display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return false;
        };
        entries.flatten().any(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
            pid.and_then(crate::process::cmdline)
                .is_some_and(|args| args.iter().any(|arg| arg.contains(&needle)))
        })
    }

    /// What a run left on the hosts, one line each: a work directory, a process started from
    /// one, partition rules. Empty once teardown or cleanup did its job.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for id in 1..=self.hosts.len() as NodeId {
            let dir = self.work_dir(id);
            if dir.exists() {
                left.push(format!("n{id}: {} is left", dir.display()));
            }
            if self.runs_from(id) {
                left.push(format!(
                    "n{id}: a process from {} still runs",
                    dir.display()
                ));
            }
            match self.rules(id) {
                Ok(rules)
                    if rules.contains(crate::ssh::IPTABLES_CHAIN) || rules.contains("DROP") =>
                {
                    left.push(format!("n{id}: iptables rules are left: {rules}"))
                }
                Ok(_) => {}
                Err(error) => left.push(format!("n{id}: iptables rules unreadable: {error}")),
            }
        }
        left
    }

    /// Stops the sshds, removes the network (and every process left in its namespaces).
    pub fn stop(&mut self) -> Result<(), TestbedError> {
        for child in &mut self.sshds {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.sshds.clear();
        self.network.destroy()?;
        // The ssh client's control sockets' directory, if no connection is left in it.
        let _ = std::fs::remove_dir(crate::ssh::default_control_dir());
        if self.made_privsep_dir {
            let _ = std::fs::remove_dir(SSHD_PRIVSEP_DIR);
            self.made_privsep_dir = false;
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("testbed: cleanup failed: {error}");
        }
    }
}

/// A hosts file line for `host`.
pub fn host_line(host: &SshHost) -> String {
    let mut line = host.name();
    if let Some(key) = &host.key {
        line.push_str(&format!(" key={}", key.display()));
    }
    if let Some(dir) = &host.dir {
        line.push_str(&format!(" dir={dir}"));
    }
    if let Some(known) = &host.known_hosts {
        line.push_str(&format!(" known-hosts={}", known.display()));
    }
    line
}

/// Polls until a TCP connection to `address` succeeds (sshd listens).
fn wait_listening(address: SocketAddr, namespace: &str, log: &Path) -> Result<(), TestbedError> {
    let start = Instant::now();
    let poll = Duration::from_millis(SSHD_POLL_MS);
    while TcpStream::connect_timeout(&address, poll).is_err() {
        if start.elapsed() >= Duration::from_millis(SSHD_READY_TIMEOUT_MS) {
            return Err(TestbedError::NotReady {
                namespace: namespace.to_string(),
                log: std::fs::read_to_string(log).unwrap_or_default(),
            });
        }
        std::thread::sleep(poll);
    }
    Ok(())
}
