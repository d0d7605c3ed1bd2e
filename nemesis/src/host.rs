//! Where a node's process runs: on this machine (the local and netns backends share this
//! machine's process table and files, so /proc and the log are read directly) or on an ssh
//! host (the same questions asked with a short shell script over ssh). Every process operation
//! of `Cluster` (start, signal, is it alive, wait for it to go, read its log) goes through
//! `NodeHost`, so the cluster's logic is written once for all backends.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use rustix::process::Signal;
use serde::{Deserialize, Serialize};

use crate::process::{self, NodeCommand, ProcessError};
use crate::ssh::{self, Remote, SshError, SshHost};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// A node of the ssh backend, as recorded in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteNode {
    pub host: SshHost,
    /// The absolute work directory on the host (binary, config, certs, data, log, pid file).
    pub dir: String,
    /// Where teardown fetches the node's log to on the control node.
    pub local_log: PathBuf,
    /// Where the master connection's socket lives on the control node.
    pub control_dir: PathBuf,
    /// The node's port: it names the host's iptables chain.
    pub port: u16,
}

impl RemoteNode {
    pub fn remote(&self) -> Remote {
        Remote::new(self.host.clone(), self.control_dir.clone())
    }
    /// `<dir>/<name>` on the host.
    pub fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }
    pub fn pid_file(&self) -> String {
        self.path(ssh::REMOTE_PID)
    }
}

/// A started node.
pub struct Spawned {
    pub pid: u32,
    /// The log's length before the start.
    pub log_offset: u64,
    /// Our child, on this machine (reaped after a kill).
    pub child: Option<Child>,
}

/// How to reach one node's process.
pub enum NodeHost {
    Here,
    Ssh(Box<RemoteNode>),
}

fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::KILL => "KILL",
        Signal::STOP => "STOP",
        Signal::CONT => "CONT",
        _ => "TERM",
    }
}

impl NodeHost {
    pub fn of(remote: Option<&RemoteNode>) -> NodeHost {
        match remote {
            Some(remote) => NodeHost::Ssh(Box::new(remote.clone())),
            None => NodeHost::Here,
        }
    }

    /// The process state letter (`R`, `S`, `T` stopped, ...) if `pid` is alive and runs
    /// `command` (pids are reused: a pid running something else is not our node).
    pub fn process_state(
        &self,
        pid: u32,
        command: &NodeCommand,
    ) -> Result<Option<char>, HostError> {
        match self {
            NodeHost::Here => Ok(process::runs(pid, command)
                .then(|| process::state(pid))
                .flatten()),
            NodeHost::Ssh(node) => Ok(node
                .remote()
                .process(pid)?
                .filter(|(_, args)| {
                    args.len() == command.argv.len() && args[1..] == command.argv[1..]
                })
                .map(|(state, _)| state)),
        }
    }

    pub fn signal(&self, pid: u32, signal: Signal) -> Result<(), HostError> {
        match self {
            NodeHost::Here => Ok(process::send_signal(pid, signal)?),
            NodeHost::Ssh(node) => Ok(node.remote().signal(pid, signal_name(signal))?),
        }
    }

    pub fn wait_gone(&self, pid: u32, timeout: Duration) -> Result<(), HostError> {
        match self {
            NodeHost::Here => Ok(process::wait_gone(pid, timeout)?),
            NodeHost::Ssh(node) => Ok(node.remote().wait_gone(pid, timeout)?),
        }
    }

    /// Starts the node. Returns its pid, the log's length before the start (what the node
    /// logs from now on starts there) and, on this machine, the child to reap later.
    pub fn spawn(&self, command: &NodeCommand) -> Result<Spawned, HostError> {
        match self {
            NodeHost::Here => {
                let log_offset = std::fs::metadata(&command.log_path).map_or(0, |m| m.len());
                let child = process::spawn(command)?;
                Ok(Spawned {
                    pid: child.id(),
                    log_offset,
                    child: Some(child),
                })
            }
            NodeHost::Ssh(node) => {
                let cwd = command.cwd.to_string_lossy();
                let log = command.log_path.to_string_lossy();
                let (pid, log_offset) =
                    (node.remote()).spawn(&command.argv, &cwd, &log, &node.pid_file())?;
                Ok(Spawned {
                    pid,
                    log_offset,
                    child: None,
                })
            }
        }
    }

    /// At most `max` bytes of the log from byte `from`, or its last `max` bytes.
    pub fn read_log(&self, path: &Path, from: Option<u64>, max: u64) -> Result<String, HostError> {
        let bytes = match self {
            NodeHost::Here => read_local(path, from, max),
            NodeHost::Ssh(node) => node.remote().read(&path.to_string_lossy(), from, max)?,
        };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn read_local(path: &Path, from: Option<u64>, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let size = file.metadata().map_or(0, |m| m.len());
        let start = from.unwrap_or(size.saturating_sub(max));
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let _ = file.take(max).read_to_end(&mut bytes);
        }
    }
    bytes
}
