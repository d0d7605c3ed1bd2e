//! The ssh backend's transport: hosts listed in a hosts file, reached with the system OpenSSH
//! client (`ssh`, `scp`) over one multiplexed connection per host (ControlMaster, ControlPath,
//! ControlPersist). No SSH is implemented here: every remote action is a short POSIX `sh`
//! script run by `ssh host -- sh -c '<script>'`.
//!
//! Hosts file: one host per line, `#` starts a comment.
//!
//! ```text
//! # [user@]address[:port] [key=PATH] [dir=PATH] [known-hosts=PATH]
//! root@10.0.0.1
//! kv@10.0.0.2:2222 key=~/.ssh/kv_ed25519 dir=/srv/kvstore
//! ```
//! Line k runs node n<k>. `dir` is the host's work directory (relative paths are relative to
//! the login directory; default `kvstore-n<k>`): the binary, config, certificates, data, log
//! and pid file of the node live there and nowhere else, so hosts that share one filesystem
//! (the test's namespaces) do not collide, and cleanup removes exactly that.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The ssh port when a hosts line names none.
pub const SSH_PORT_DEFAULT: u16 = 22;
/// `ConnectTimeout`: a host that does not answer fails the run after this long.
pub const CONNECT_TIMEOUT_S: u64 = 5;
/// Keepalive probes (`ServerAliveInterval` x `ServerAliveCountMax`): a command to a host that
/// stopped answering fails after about interval x count instead of hanging.
pub const SERVER_ALIVE_INTERVAL_S: u64 = 2;
pub const SERVER_ALIVE_COUNT_MAX: u64 = 3;
/// How long the master connection outlives its last use (`ControlPersist`); cleanup closes it
/// earlier with `ssh -O exit`.
pub const CONTROL_PERSIST_S: u64 = 600;
/// Most hosts a hosts file may list (one node each).
pub const HOSTS_MAX: usize = crate::spec::NODE_COUNT_MAX as usize;
/// Longest hosts file read.
pub const HOSTS_FILE_BYTES_MAX: u64 = 64 << 10;
/// Poll interval on the host while waiting for a process to go.
const REMOTE_POLL_MS: u64 = 10;
/// Longest stderr kept in an error message.
const STDERR_CHARS_MAX: usize = 400;

/// File names inside a host's work directory.
pub const REMOTE_BINARY: &str = "kvnode";
pub const REMOTE_CONFIG: &str = "cluster.toml";
pub const REMOTE_CERTS: &str = "certs";
pub const REMOTE_DATA: &str = "data";
pub const REMOTE_LOG: &str = "node.log";
pub const REMOTE_PID: &str = "node.pid";
/// The iptables chain (jumped to from INPUT) that holds a host's partition rules: heal
/// flushes it and cleanup removes it, leaving every other rule of the host alone.
pub const IPTABLES_CHAIN: &str = "KVNEMESIS";

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("hosts file {path}: {reason}")]
    HostsFile { path: PathBuf, reason: String },
    #[error("hosts file line {line}: {reason}")]
    HostsLine { line: usize, reason: String },
    #[error("cannot run {program}: {source} (install openssh-client)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("host {host}: {what} failed: {stderr}")]
    Failed {
        host: String,
        what: String,
        stderr: String,
    },
    #[error("host {host}: unexpected answer to {what}: {answer}")]
    Answer {
        host: String,
        what: String,
        answer: String,
    },
    #[error("host {host}: pid {pid} still runs {waited_ms} ms after SIGKILL")]
    NotGone {
        host: String,
        pid: u32,
        waited_ms: u64,
    },
}

/// One line of the hosts file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshHost {
    /// The host's address: nodes listen on it and their certificates carry it.
    pub address: IpAddr,
    pub user: String,
    pub port: u16,
    /// Private key (`ssh -i`); default: the ssh client's own choice (agent, ~/.ssh/id_*).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Work directory on the host; `None`: `kvstore-n<k>` in the login directory.
    #[serde(default)]
    pub dir: Option<String>,
    /// `UserKnownHostsFile`; default: the ssh client's (~/.ssh/known_hosts).
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
}

impl SshHost {
    /// `user@address:port`, as errors and reports name the host.
    pub fn name(&self) -> String {
        match self.address {
            IpAddr::V4(ip) => format!("{}@{ip}:{}", self.user, self.port),
            IpAddr::V6(ip) => format!("{}@[{ip}]:{}", self.user, self.port),
        }
    }

    /// The work directory as given (or the default for node `id`).
    pub fn dir_for(&self, id: crate::NodeId) -> String {
        let dir = self.dir.clone().unwrap_or_else(|| format!("kvstore-n{id}"));
        // The login directory is where ssh runs commands: `~/x` is `x`.
        match dir.strip_prefix("~/") {
            Some(rest) => rest.to_string(),
            None => dir,
        }
    }

    fn is_root(&self) -> bool {
        self.user == "root"
    }
}

fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            if rustix::process::getuid().is_root() {
                "root".to_string()
            } else {
                "nobody".to_string()
            }
        })
}

/// `~/x` as `$HOME/x` for local paths (keys, known hosts).
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Parses one non-empty, non-comment line.
pub fn parse_host_line(line: &str) -> Result<SshHost, String> {
    let mut words = line.split_whitespace();
    let first = words.next().ok_or("empty line")?;
    let (user, rest) = match first.split_once('@') {
        Some((user, rest)) if !user.is_empty() => (user.to_string(), rest),
        Some(_) => return Err(format!("'{first}': empty user before '@'")),
        None => (current_user(), first),
    };
    let (address_text, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (address, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("'{rest}': missing ']' after an IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(format!("'{rest}': expected ':<port>' after ']'")),
        };
        (address, port)
    } else {
        match rest.split_once(':') {
            Some((address, port)) => (address, Some(port)),
            None => (rest, None),
        }
    };
    let address: IpAddr = address_text.parse().map_err(|_| {
        format!(
            "'{address_text}' is not an IP address (nodes listen on it and their certificates \
             carry it; use the host's address, not its name)"
        )
    })?;
    let port = match port {
        None => SSH_PORT_DEFAULT,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("'{text}' is not a port")),
        },
    };
    let mut host = SshHost {
        address,
        user,
        port,
        key: None,
        dir: None,
        known_hosts: None,
    };
    for word in words {
        let (field, value) = word
            .split_once('=')
            .filter(|(_, value)| !value.is_empty())
            .ok_or_else(|| format!("'{word}': expected key=PATH, dir=PATH or known-hosts=PATH"))?;
        match field {
            "key" => host.key = Some(expand_home(value)),
            "known-hosts" => host.known_hosts = Some(expand_home(value)),
            "dir" => {
                if value == "/" || value == "~" || value == "~/" || value.contains("..") {
                    return Err(format!("dir={value}: name a directory of its own"));
                }
                host.dir = Some(value.to_string());
            }
            _ => return Err(format!("unknown field '{field}' (key, dir, known-hosts)")),
        }
    }
    Ok(host)
}

/// Parses a hosts file's text: one host per line, `#` comments, blank lines skipped.
pub fn parse_hosts(text: &str) -> Result<Vec<SshHost>, SshError> {
    let mut hosts: Vec<SshHost> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let line_error = |reason: String| SshError::HostsLine {
            line: index + 1,
            reason,
        };
        let host = parse_host_line(line).map_err(line_error)?;
        if let Some(other) = hosts
            .iter()
            .find(|h| h.address == host.address && h.port == host.port)
        {
            return Err(line_error(format!("{} is listed twice", other.name())));
        }
        hosts.push(host);
        if hosts.len() > HOSTS_MAX {
            return Err(line_error(format!("more than {HOSTS_MAX} hosts")));
        }
    }
    Ok(hosts)
}

pub fn load_hosts(path: &Path) -> Result<Vec<SshHost>, SshError> {
    use std::io::Read;
    let file_error = |reason: String| SshError::HostsFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(HOSTS_FILE_BYTES_MAX).read_to_string(&mut text))
        .map_err(|e| file_error(e.to_string()))?;
    let hosts = parse_hosts(&text).map_err(|e| file_error(e.to_string()))?;
    if hosts.is_empty() {
        return Err(file_error("lists no host".to_string()));
    }
    Ok(hosts)
}

/// Where the master connections' sockets live (`ControlPath=<dir>/%C`): a short path, since a
/// unix socket path has at most 107 bytes.
pub fn default_control_dir() -> PathBuf {
    std::env::temp_dir().join("kvnemesis-ssh")
}

/// Single-quotes `text` for `sh`.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// One host as the control node reaches it.
#[derive(Clone, Debug)]
pub struct Remote {
    pub host: SshHost,
    pub control_dir: PathBuf,
}

impl Remote {
    pub fn new(host: SshHost, control_dir: PathBuf) -> Remote {
        Remote { host, control_dir }
    }

    pub fn name(&self) -> String {
        self.host.name()
    }

    /// Options shared by ssh and scp.
    fn options(&self) -> Vec<String> {
        let mut options: Vec<String> = [
            "BatchMode=yes".to_string(),
            format!("ConnectTimeout={CONNECT_TIMEOUT_S}"),
            format!("ServerAliveInterval={SERVER_ALIVE_INTERVAL_S}"),
            format!("ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}"),
            // Trust on first use: a host seen before must keep its key.
            "StrictHostKeyChecking=accept-new".to_string(),
            format!("ControlPath={}", self.control_path()),
            "ControlMaster=auto".to_string(),
            "LogLevel=ERROR".to_string(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_string(), option])
        .collect();
        if let Some(key) = &self.host.key {
            options.extend(["-i".to_string(), key.display().to_string()]);
            options.extend(["-o".to_string(), "IdentitiesOnly=yes".to_string()]);
        }
        if let Some(known) = &self.host.known_hosts {
            options.extend([
                "-o".to_string(),
                format!("UserKnownHostsFile={}", known.display()),
            ]);
        }
        options
    }

    /// `<control_dir>/<hash of key and known hosts>-%C` (%C: ssh's hash of local host, remote
    /// host, port and user): a connection opened with one key is never reused for a hosts
    /// line that names another, so a wrong key always fails at `connect`.
    fn control_path(&self) -> String {
        let show = |path: &Option<PathBuf>| path.as_ref().map(|p| p.display().to_string());
        let identity = format!(
            "{}|{}",
            show(&self.host.key).unwrap_or_default(),
            show(&self.host.known_hosts).unwrap_or_default()
        );
        // FNV-1a: a stable short name, not a security boundary (the directory is 0700).
        let hash = identity
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        format!("{}/{hash:016x}-%C", self.control_dir.display())
    }

    fn destination(&self) -> String {
        format!("{}@{}", self.host.user, self.host.address)
    }

    fn ssh(&self) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(self.options())
            .args(["-p", &self.host.port.to_string()]);
        command
    }

    fn failed(&self, what: &str, stderr: &[u8]) -> SshError {
        let text = String::from_utf8_lossy(stderr);
        let mut stderr: String = text.trim().chars().take(STDERR_CHARS_MAX).collect();
        if stderr.is_empty() {
            stderr = "no message".to_string();
        }
        SshError::Failed {
            host: self.name(),
            what: what.to_string(),
            stderr,
        }
    }

    fn output(&self, mut command: Command, what: &str) -> Result<Vec<u8>, SshError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let output = command
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SshError::Spawn { program, source })?;
        if !output.status.success() {
            return Err(self.failed(what, &output.stderr));
        }
        Ok(output.stdout)
    }

    /// Opens the master connection (and fails, naming the host, when the host is down or
    /// refuses the key), or reuses a live one for the same host, user and key. Later commands
    /// ride on it.
    pub fn connect(&self) -> Result<(), SshError> {
        let mut check = self.ssh();
        check
            .args(["-O", "check", &self.destination()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if check.status().is_ok_and(|status| status.success()) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.control_dir).map_err(|source| SshError::Spawn {
            program: format!("mkdir {}", self.control_dir.display()),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.control_dir, std::fs::Permissions::from_mode(0o700));
        let mut command = self.ssh();
        command
            .args(["-o", &format!("ControlPersist={CONTROL_PERSIST_S}")])
            .args(["-M", "-N", "-f", &self.destination()])
            .stdout(Stdio::null());
        // `-f` returns once the master is authenticated and in the background; its stdout
        // is /dev/null, so `output` does not wait for it.
        let program = "ssh".to_string();
        let output = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|child| child.wait_with_output())
            .map_err(|source| SshError::Spawn { program, source })?;
        if !output.status.success() {
            return Err(self.failed("ssh login", &output.stderr));
        }
        Ok(())
    }

    /// Closes the master connection (nothing if there is none).
    pub fn disconnect(&self) {
        let mut command = self.ssh();
        command
            .args(["-O", "exit", &self.destination()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = command.stdin(Stdio::null()).status();
    }

    /// Runs `script` with `sh -c` on the host; stdout on success, stderr in the error.
    pub fn sh(&self, script: &str, what: &str) -> Result<Vec<u8>, SshError> {
        let mut command = self.ssh();
        command.args([&self.destination(), "--", "sh", "-c", &quote(script)]);
        self.output(command, what)
    }

    /// `sh` as root: through `sudo -n` unless the login is root already.
    pub fn sh_root(&self, script: &str, what: &str) -> Result<Vec<u8>, SshError> {
        if self.host.is_root() {
            return self.sh(script, what);
        }
        let mut command = self.ssh();
        let line = format!("sudo -n sh -c {}", quote(script));
        command.args([&self.destination(), "--", &line]);
        self.output(command, what)
    }

    /// Copies local files into a remote directory with scp.
    pub fn upload(&self, files: &[&Path], remote_dir: &str) -> Result<(), SshError> {
        let mut command = Command::new("scp");
        command
            .arg("-q")
            .args(self.options())
            .args(["-P", &self.host.port.to_string()])
            .args(files)
            .arg(format!("{}:{}/", self.scp_destination(), remote_dir));
        self.output(command, "scp upload").map(|_| ())
    }

    /// Copies one remote file to a local path with scp.
    pub fn download(&self, remote: &str, local: &Path) -> Result<(), SshError> {
        let mut command = Command::new("scp");
        command
            .arg("-q")
            .args(self.options())
            .args(["-P", &self.host.port.to_string()])
            .arg(format!("{}:{remote}", self.scp_destination()))
            .arg(local);
        self.output(command, "scp download").map(|_| ())
    }

    fn scp_destination(&self) -> String {
        match self.host.address {
            IpAddr::V4(ip) => format!("{}@{ip}", self.host.user),
            IpAddr::V6(ip) => format!("{}@[{ip}]", self.host.user),
        }
    }

    /// Creates the work directory and returns its absolute path.
    pub fn make_dir(&self, dir: &str) -> Result<String, SshError> {
        let script = format!("mkdir -p {d} && cd {d} && pwd -P", d = quote(dir));
        let out = self.sh(&script, "mkdir")?;
        self.absolute(out, "mkdir")
    }

    /// The absolute path of an existing work directory, `None` if there is none.
    pub fn find_dir(&self, dir: &str) -> Result<Option<String>, SshError> {
        let script = format!("if cd {} 2>/dev/null; then pwd -P; fi", quote(dir));
        let out = self.sh(&script, "cd")?;
        if out.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        self.absolute(out, "cd").map(Some)
    }

    fn absolute(&self, out: Vec<u8>, what: &str) -> Result<String, SshError> {
        let path = String::from_utf8_lossy(&out).trim().to_string();
        if !path.starts_with('/') || path == "/" {
            return Err(SshError::Answer {
                host: self.name(),
                what: what.to_string(),
                answer: path,
            });
        }
        Ok(path)
    }

    /// Starts `argv` detached (own session, stdio appended to `log`), writes its pid to
    /// `pid_file`, and returns once the pid shows `argv` (exec done) or has exited: the pid and
    /// the log's length before the start (one round trip).
    pub fn spawn(
        &self,
        argv: &[String],
        cwd: &str,
        log: &str,
        pid_file: &str,
    ) -> Result<(u32, u64), SshError> {
        let command: Vec<String> = argv.iter().map(|a| quote(a)).collect();
        // A background job of a non-interactive sh is not a process group leader, so setsid
        // does not fork: `$!` is the node's own pid.
        let script = format!(
            "cd {cwd} || exit 1\n\
             size=$(stat -c %s {log} 2>/dev/null || echo 0)\n\
             setsid {command} >>{log} 2>&1 </dev/null &\n\
             pid=$!\n\
             echo $pid > {pid_file}\n\
             i=0\n\
             while [ $i -lt 200 ] && [ -e /proc/$pid ] && \
               [ \"$(tr '\\0' ' ' </proc/$pid/cmdline 2>/dev/null)\" != {expected} ]; do\n\
               sleep 0.01; i=$((i+1))\n\
             done\n\
             echo $size $pid",
            cwd = quote(cwd),
            command = command.join(" "),
            log = quote(log),
            pid_file = quote(pid_file),
            expected = quote(&format!("{} ", argv.join(" "))),
        );
        let out = self.sh(&script, "start kvnode")?;
        let text = String::from_utf8_lossy(&out).trim().to_string();
        let parsed = text
            .split_once(' ')
            .and_then(|(size, pid)| Some((pid.parse().ok()?, size.parse().ok()?)));
        parsed.ok_or_else(|| SshError::Answer {
            host: self.name(),
            what: "start kvnode".to_string(),
            answer: text,
        })
    }

    /// The state letter of `pid` (`R`, `S`, `T`, ...) and its command line, `None` if there is
    /// no such process or it is a zombie.
    pub fn process(&self, pid: u32) -> Result<Option<(char, Vec<String>)>, SshError> {
        let script = format!(
            "if s=$(cat /proc/{pid}/stat 2>/dev/null); then echo \"$s\"; \
             cat /proc/{pid}/cmdline 2>/dev/null; fi"
        );
        let out = self.sh(&script, "process state")?;
        Ok(parse_process(&out))
    }

    pub fn signal(&self, pid: u32, signal: &str) -> Result<(), SshError> {
        self.sh(
            &format!("kill -s {signal} {pid}"),
            &format!("kill -s {signal}"),
        )
        .map(|_| ())
    }

    /// Waits until `pid` is gone or a zombie; the polling runs on the host (one round trip).
    pub fn wait_gone(&self, pid: u32, timeout: Duration) -> Result<(), SshError> {
        let start = Instant::now();
        let out = self.sh(&wait_gone_script(pid, timeout), "wait for exit")?;
        let answer = String::from_utf8_lossy(&out).trim().to_string();
        if answer == "gone" {
            return Ok(());
        }
        if !answer.starts_with("alive") {
            return Err(SshError::Answer {
                host: self.name(),
                what: "wait for exit".to_string(),
                answer,
            });
        }
        Err(SshError::NotGone {
            host: self.name(),
            pid,
            waited_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// SIGKILLs the process `pid_file` names if its command line is still `argv` (a node a
    /// crashed run left; nothing else is ever signalled), and waits for it to go. Returns
    /// whether it killed one.
    pub fn kill_from_pid_file(
        &self,
        pid_file: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<bool, SshError> {
        let script = format!(
            "pid=$(cat {pid_file} 2>/dev/null) || exit 0\n\
             case \"$pid\" in ''|*[!0-9]*) exit 0;; esac\n\
             [ \"$(tr '\\0' ' ' </proc/$pid/cmdline 2>/dev/null)\" = {expected} ] || exit 0\n\
             kill -s CONT $pid; kill -s KILL $pid\n\
             {wait}",
            pid_file = quote(pid_file),
            expected = quote(&format!("{} ", argv.join(" "))),
            wait = wait_gone_script_for("$pid", timeout),
        );
        let out = self.sh(&script, "kill leftover node")?;
        let answer = String::from_utf8_lossy(&out).trim().to_string();
        if answer.is_empty() {
            return Ok(false);
        }
        if answer == "gone" {
            return Ok(true);
        }
        match answer.strip_prefix("alive ").map(str::parse) {
            Some(Ok(pid)) => Err(SshError::NotGone {
                host: self.name(),
                pid,
                waited_ms: timeout.as_millis() as u64,
            }),
            _ => Err(SshError::Answer {
                host: self.name(),
                what: "kill leftover node".to_string(),
                answer,
            }),
        }
    }

    /// Size of a remote file (0 when it does not exist).
    pub fn file_len(&self, path: &str) -> Result<u64, SshError> {
        let out = self.sh(
            &format!("stat -c %s {} 2>/dev/null; true", quote(path)),
            "stat",
        )?;
        Ok(String::from_utf8_lossy(&out).trim().parse().unwrap_or(0))
    }

    /// At most `max` bytes of a remote file from byte `from`, or its last `max` bytes.
    pub fn read(&self, path: &str, from: Option<u64>, max: u64) -> Result<Vec<u8>, SshError> {
        let script = match from {
            Some(from) => format!(
                "tail -c +{} {} 2>/dev/null | head -c {max}; true",
                from + 1,
                quote(path)
            ),
            None => format!("tail -c {max} {} 2>/dev/null; true", quote(path)),
        };
        self.sh(&script, "read log")
    }

    fn iptables(&self) -> &'static str {
        match self.host.address {
            IpAddr::V4(_) => "iptables",
            IpAddr::V6(_) => "ip6tables",
        }
    }

    /// Drops the node traffic from each `(address, port)` peer: packets to this node's port
    /// and packets from the peer's port (answers on connections this node opened). Only the
    /// nodes' UDP is cut; ssh keeps working.
    pub fn block(&self, port: u16, peers: &[(IpAddr, u16)]) -> Result<(), SshError> {
        let ipt = format!("{} -w", self.iptables());
        let chain = IPTABLES_CHAIN;
        let mut script = format!(
            "{ipt} -N {chain} 2>/dev/null\n\
             {ipt} -C INPUT -j {chain} 2>/dev/null || {ipt} -I INPUT -j {chain} || exit 1\n"
        );
        for (address, peer_port) in peers {
            script.push_str(&format!(
                "{ipt} -A {chain} -s {address} -p udp --dport {port} -j DROP || exit 1\n\
                 {ipt} -A {chain} -s {address} -p udp --sport {peer_port} -j DROP || exit 1\n"
            ));
        }
        self.sh_root(&script, "iptables block").map(|_| ())
    }

    /// Removes the partition rules (the chain stays, empty).
    pub fn heal(&self) -> Result<(), SshError> {
        let ipt = format!("{} -w", self.iptables());
        let chain = IPTABLES_CHAIN;
        let script = format!("if {ipt} -n -L {chain} >/dev/null 2>&1; then {ipt} -F {chain}; fi");
        self.sh_root(&script, "iptables heal").map(|_| ())
    }

    /// Removes the chain and its jump from INPUT.
    pub fn remove_chain(&self) -> Result<(), SshError> {
        let ipt = format!("{} -w", self.iptables());
        let chain = IPTABLES_CHAIN;
        let script = format!(
            "while {ipt} -D INPUT -j {chain} 2>/dev/null; do :; done\n\
             if {ipt} -n -L {chain} >/dev/null 2>&1; then {ipt} -F {chain} && {ipt} -X {chain}; fi"
        );
        self.sh_root(&script, "iptables cleanup").map(|_| ())
    }

    /// The rules of the chain (`iptables -S`), empty when there is none.
    pub fn rules(&self) -> Result<String, SshError> {
        let ipt = format!("{} -w", self.iptables());
        let chain = IPTABLES_CHAIN;
        let out = self.sh_root(
            &format!("{ipt} -S {chain} 2>/dev/null; true"),
            "iptables -S",
        )?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Removes what setup puts in the work directory (a crashed run's leftovers) and creates
    /// its empty `certs/`.
    pub fn reset_work_dir(&self, dir: &str) -> Result<(), SshError> {
        let script = format!(
            "cd {} || exit 1\n{} && mkdir {REMOTE_CERTS}",
            quote(dir),
            clear_script()
        );
        self.sh(&script, "reset work dir").map(|_| ())
    }

    /// `clear_work_dir`, then removes the directory itself (only if nothing else is left in
    /// it: a directory the user keeps other files in stays, and the error says so).
    pub fn remove_work_dir(&self, dir: &str) -> Result<(), SshError> {
        let script = format!(
            "cd {d} 2>/dev/null || exit 0\n{clear}\ncd / && rmdir {d}",
            d = quote(dir),
            clear = clear_script()
        );
        self.sh(&script, "remove work dir").map(|_| ())
    }
}

/// Prints `gone` once `pid` has no /proc entry or is a zombie, `alive <pid>` after `timeout`.
fn wait_gone_script(pid: u32, timeout: Duration) -> String {
    wait_gone_script_for(&pid.to_string(), timeout)
}

fn wait_gone_script_for(pid: &str, timeout: Duration) -> String {
    let rounds = (timeout.as_millis() as u64 / REMOTE_POLL_MS).max(1);
    format!(
        "i=0\n\
         while [ $i -lt {rounds} ]; do\n\
           s=$(cat /proc/{pid}/stat 2>/dev/null) || {{ echo gone; exit 0; }}\n\
           case \"${{s##*) }}\" in Z*) echo gone; exit 0;; esac\n\
           sleep {sleep}; i=$((i+1))\n\
         done\n\
         echo alive {pid}",
        sleep = REMOTE_POLL_MS as f64 / 1000.0
    )
}

/// Removes, in the current directory, exactly what setup creates there.
fn clear_script() -> String {
    format!(
        "rm -rf {REMOTE_DATA} {REMOTE_CERTS} && \
         rm -f {REMOTE_BINARY} {REMOTE_CONFIG} {REMOTE_LOG} {REMOTE_PID}"
    )
}

/// Parses `process`'s answer: the stat line, then the NUL-separated command line.
fn parse_process(out: &[u8]) -> Option<(char, Vec<String>)> {
    let newline = out.iter().position(|b| *b == b'\n')?;
    let stat = String::from_utf8_lossy(&out[..newline]);
    let after = &stat[stat.rfind(')')? + 1..];
    let state = after.trim_start().chars().next()?;
    if state == 'Z' {
        return None;
    }
    let args = out[newline + 1..]
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    Some((state, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lines_parse_with_defaults_and_fields() {
        let hosts = parse_hosts(
            "# cluster\nroot@10.0.0.1\n\nkv@10.0.0.2:2222 key=/k dir=/srv/kv known-hosts=/kh\n\
             admin@[fd00::3]:22 # v6\n",
        )
        .unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0].name(), "root@10.0.0.1:22");
        assert_eq!(hosts[0].dir_for(1), "kvstore-n1");
        assert_eq!(hosts[1].port, 2222);
        assert_eq!(hosts[1].key.as_deref(), Some(Path::new("/k")));
        assert_eq!(hosts[1].dir_for(2), "/srv/kv");
        assert_eq!(hosts[1].known_hosts.as_deref(), Some(Path::new("/kh")));
        assert_eq!(hosts[2].name(), "admin@[fd00::3]:22");
    }

    #[test]
    fn bad_hosts_lines_name_the_line_and_the_problem() {
        let cases = [
            ("root@db1.example", "not an IP address"),
            ("root@10.0.0.1:0", "not a port"),
            ("root@10.0.0.1 colour=red", "unknown field"),
            ("root@10.0.0.1 dir=/", "directory of its own"),
            ("root@10.0.0.1\nroot@10.0.0.1", "listed twice"),
            ("@10.0.0.1", "empty user"),
        ];
        for (text, needle) in cases {
            let error = parse_hosts(text).unwrap_err().to_string();
            assert!(
                error.contains(needle) && error.contains("line"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn process_answers_parse_state_and_command_line() {
        let out = b"42 (kvnode) T 1 42\n/w/kvnode\0run\0--id\0n1\0";
        let (state, args) = parse_process(out).unwrap();
        assert_eq!(state, 'T');
        assert_eq!(args, ["/w/kvnode", "run", "--id", "n1"]);
        assert_eq!(parse_process(b"42 (kvnode) Z 1\n"), None);
        assert_eq!(parse_process(b""), None);
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
