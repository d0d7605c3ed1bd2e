//! Node processes: spawn (optionally inside a network namespace), signal, and watch by pid.
//! Pids come from our own children or from the state file of an earlier `nemesis` run, so every
//! signal to a recorded pid first checks that the pid still runs the node we recorded (pids are
//! reused after a process dies).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde::{Deserialize, Serialize};

/// How often `wait_gone` looks at /proc.
const POLL_INTERVAL_MS: u64 = 10;
/// Longest wait for a spawned child to finish exec (normally well under a millisecond).
const EXEC_WAIT_MS: u64 = 2000;
const EXEC_POLL_MS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot send {signal} to pid {pid}: {source}")]
    Signal {
        pid: u32,
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("pid {0} is not a valid process id")]
    Pid(u32),
    #[error("pid {pid} still runs {waited_ms} ms after SIGKILL")]
    NotGone { pid: u32, waited_ms: u64 },
}

/// Everything needed to (re)start one node the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCommand {
    /// Program and arguments, e.g. `[".../kvnode", "run", "--config", "...", "--id", "n1"]`.
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// Run under `ip netns exec <namespace>`; `ip` execs the program, so the pid we get is the
    /// node's own pid and signals reach it directly.
    pub namespace: Option<String>,
    /// stdout and stderr are appended here (restarts append to the same file).
    pub log_path: PathBuf,
}

/// Starts the command in its own process group, so a Ctrl-C in the terminal reaches only the
/// tool, which then stops the nodes in order and removes the namespaces.
pub fn spawn(command: &NodeCommand) -> Result<Child, ProcessError> {
    let log_error = |source| ProcessError::Log {
        path: command.log_path.clone(),
        source,
    };
    if let Some(dir) = command.log_path.parent() {
        std::fs::create_dir_all(dir).map_err(log_error)?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&command.log_path)
        .map_err(log_error)?;
    let log_clone = log.try_clone().map_err(log_error)?;
    let mut argv: Vec<String> = Vec::new();
    if let Some(namespace) = &command.namespace {
        argv.extend(["ip", "netns", "exec", namespace].map(String::from));
    }
    argv.extend(command.argv.iter().cloned());
    let program = argv.first().cloned().unwrap_or_default();
    let child = Command::new(&program)
        .args(&argv[1..])
        .current_dir(&command.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_clone)
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn { program, source })?;
    wait_exec(child.id(), command);
    Ok(child)
}

/// `spawn` returns while the child may still be inside execve (its /proc cmdline is empty
/// then), and under `ip netns exec` there is a second exec. Waiting until the pid shows the
/// node's own command line makes `runs` exact from the first call on, also for other
/// processes reading the state file. A child that dies instead ends the wait early.
fn wait_exec(pid: u32, command: &NodeCommand) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(EXEC_WAIT_MS) {
        if !is_alive(pid) || runs(pid, command) {
            return;
        }
        std::thread::sleep(Duration::from_millis(EXEC_POLL_MS));
    }
}

fn pid_of(pid: u32) -> Result<Pid, ProcessError> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(ProcessError::Pid(pid))
}

fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::KILL => "SIGKILL",
        Signal::STOP => "SIGSTOP",
        Signal::CONT => "SIGCONT",
        Signal::TERM => "SIGTERM",
        _ => "a signal",
    }
}

pub fn send_signal(pid: u32, signal: Signal) -> Result<(), ProcessError> {
    kill_process(pid_of(pid)?, signal).map_err(|errno| ProcessError::Signal {
        pid,
        signal: signal_name(signal),
        source: errno.into(),
    })
}

/// The process state letter from /proc/<pid>/stat (`R`, `S`, `T` stopped, `Z` zombie, ...),
/// or `None` when there is no such process.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Alive means it exists and is not a zombie (a killed child nobody reaped yet).
pub fn is_alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

pub fn is_stopped(pid: u32) -> bool {
    state(pid).is_some_and(|s| s == 'T')
}

pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    Some(args)
}

/// True if `pid` is alive and runs `command` (same arguments after the program, which may have
/// been resolved differently).
pub fn runs(pid: u32, command: &NodeCommand) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match cmdline(pid) {
        Some(args) => args.len() == command.argv.len() && args[1..] == command.argv[1..],
        None => false,
    }
}

/// Polls until the pid is gone or a zombie. A zombie is dead: its parent (us, or init for an
/// orphan) reaps it.
pub fn wait_gone(pid: u32, timeout: Duration) -> Result<(), ProcessError> {
    let start = Instant::now();
    while is_alive(pid) {
        if start.elapsed() >= timeout {
            return Err(ProcessError::NotGone {
                pid,
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
    Ok(())
}

/// Every live process whose command line is `<...>kvnode run ... --id <name>`, as
/// (pid, argv, cwd). Used when no state file exists (a cluster started by other means).
pub fn find_kvnode_processes() -> Vec<(u32, Vec<String>, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(args) = cmdline(pid) else { continue };
        let is_kvnode = args
            .first()
            .is_some_and(|p| Path::new(p).file_name().is_some_and(|f| f == "kvnode"));
        if is_kvnode && args.get(1).is_some_and(|a| a == "run") && is_alive(pid) {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            found.push((pid, args, cwd));
        }
    }
    found.sort();
    found
}

/// The value following `flag` in `args`.
pub fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let position = args.iter().position(|a| a == flag)?;
    args.get(position + 1).map(String::as_str)
}
