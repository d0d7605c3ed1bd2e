//! Running the filesystem and talking to it.
//!
//! `nemesis fs serve --backing B --mountpoint M --control S` mounts the filesystem over `M`
//! (content in `B`) and answers one JSON request per connection on the Unix socket `S`:
//!
//! ```text
//! {"command":"freeze"}                   -> {"reply":"done"} (no fsync completes until a crash)
//! {"command":"release"}                  -> {"reply":"released","fsyncs":..} (held fsyncs: EIO)
//! {"command":"lose-unsynced"}            -> {"reply":"crashed","files_reverted":..,...}
//! {"command":"torn","seed":7}            -> {"reply":"crashed",...,"torn":{...}}
//! {"command":"corrupt","seed":7}         -> {"reply":"corrupted","file":..,"offset":..,"bit":..}
//! {"command":"fsync-error"}              -> {"reply":"armed"}
//! {"command":"disarm"}                   -> {"reply":"done"}
//! {"command":"status"}                   -> {"reply":"status","files_unsynced":..,...}
//! {"command":"unmount"}                  -> {"reply":"done"}, then it unmounts and exits
//! ```
//!
//! Every serving process records itself in `<tmp>/kvnemesis/disks/` so that `nemesis cleanup`
//! finds and unmounts whatever a crashed run left; mounts named `kvdisk` in
//! /proc/mounts are unmounted too.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::fuse::{release_parked, DiskFs, Parked};
use super::model::{Corruption, CrashReport, Model, ModelError, ModelStatus};
use crate::process;
use crate::rng::Rng;

/// The filesystem type's subtype: mounts show as `fuse.kvdisk`.
pub const FS_SUBTYPE: &str = "kvdisk";
/// Longest request line on the control socket.
const REQUEST_BYTES_MAX: u64 = 4096;
/// How long a control request may take (a crash rewrites the volatile bytes and walks the
/// directory tree; a corrupt scans a segment).
const CONTROL_TIMEOUT_MS: u64 = 30_000;
/// How long a new serving process gets to mount and answer.
const READY_TIMEOUT_MS: u64 = 10_000;
/// How long an unmounting process gets to exit before SIGKILL.
const STOP_TIMEOUT_MS: u64 = 5_000;
const POLL_MS: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mount over {path} failed: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is mounted already (run `nemesis cleanup`)")]
    Mounted(PathBuf),
    #[error("disk control {path}: {reason}")]
    Control { path: PathBuf, reason: String },
    #[error("the disk over {path} did not answer within {waited_ms} ms (log: {log})")]
    NotReady {
        path: PathBuf,
        waited_ms: u64,
        log: PathBuf,
    },
    #[error("no fault-injecting disk is mounted over {0}")]
    NoDisk(PathBuf),
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum DiskRequest {
    Freeze,
    Release,
    LoseUnsynced,
    Torn { seed: u64 },
    Corrupt { seed: u64 },
    FsyncError,
    Disarm,
    Status,
    Unmount,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum DiskReply {
    Crashed(CrashReport),
    Corrupted(Corruption),
    Armed,
    Released { fsyncs: usize },
    Status(ModelStatus),
    Done,
    Error { message: String },
}

/// A serving process as recorded in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub backing: PathBuf,
    pub control: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub control: PathBuf,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where serving processes record themselves.
pub fn registry_dir() -> PathBuf {
    std::env::temp_dir().join("kvnemesis").join("disks")
}

fn registry_path(mountpoint: &Path) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    mountpoint.hash(&mut hasher);
    registry_dir().join(format!("{:016x}.json", hasher.finish()))
}

/// Every disk recorded in the registry.
pub fn recorded_disks() -> Vec<DiskRecord> {
    let Ok(entries) = std::fs::read_dir(registry_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|text| serde_json::from_str(&text).ok())
        .collect()
}

/// The disk mounted over `mountpoint`, if a serving process recorded one.
pub fn find_disk(mountpoint: &Path) -> Option<DiskRecord> {
    let text = std::fs::read_to_string(registry_path(mountpoint)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Mount points of `fuse.kvdisk` filesystems (from /proc/self/mounts).
pub fn kvdisk_mounts() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (source, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            // Mounted by fusermount3 the type is `fuse.kvdisk`; mounted directly by root it is
            // `fuse` with the source `kvdisk`.
            let ours = kind == format!("fuse.{FS_SUBTYPE}")
                || (kind.starts_with("fuse") && source == FS_SUBTYPE);
            ours.then(|| PathBuf::from(unescape(point)))
        })
        .collect()
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn is_mounted(path: &Path) -> bool {
    kvdisk_mounts().iter().any(|mount| mount == path)
}

/// Mounts the filesystem and serves its control socket until an `unmount` request, SIGINT or
/// SIGTERM. Runs in the `nemesis fs serve` process.
pub fn serve(options: &ServeOptions) -> Result<(), DiskError> {
    for dir in [&options.backing, &options.mountpoint] {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    }
    let mountpoint =
        std::fs::canonicalize(&options.mountpoint).map_err(io_at(&options.mountpoint))?;
    let backing = std::fs::canonicalize(&options.backing).map_err(io_at(&options.backing))?;
    if is_mounted(&mountpoint) {
        return Err(DiskError::Mounted(mountpoint));
    }
    let model = Model::open(&backing)?;
    let root_inode = model.root_inode();
    let model = Arc::new(Mutex::new(model));
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(FS_SUBTYPE.to_string()),
        fuser::MountOption::Subtype(FS_SUBTYPE.to_string()),
    ];
    let parked = Parked::default();
    let filesystem = DiskFs::new(model.clone(), root_inode, parked.clone());
    let session = fuser::spawn_mount(filesystem, &mountpoint, &config).map_err(|source| {
        DiskError::Mount {
            path: mountpoint.clone(),
            source,
        }
    })?;
    let record = DiskRecord {
        pid: std::process::id(),
        mountpoint: mountpoint.clone(),
        backing,
        control: options.control.clone(),
    };
    let served = serve_control(&record, &model, &parked);
    let _ = std::fs::remove_file(registry_path(&mountpoint));
    let _ = std::fs::remove_file(&options.control);
    let unmounted = session
        .umount_and_join()
        .map_err(|source| DiskError::Mount {
            path: mountpoint,
            source,
        });
    served.and(unmounted)
}

fn serve_control(
    record: &DiskRecord,
    model: &Arc<Mutex<Model>>,
    parked: &Parked,
) -> Result<(), DiskError> {
    let control = &record.control;
    let _ = std::fs::remove_file(control);
    if let Some(dir) = control.parent() {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    }
    let listener = UnixListener::bind(control).map_err(io_at(control))?;
    listener.set_nonblocking(true).map_err(io_at(control))?;
    let registry = registry_path(&record.mountpoint);
    std::fs::create_dir_all(registry_dir()).map_err(io_at(&registry))?;
    let text = serde_json::to_string(record).map_err(|e| DiskError::Control {
        path: registry.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&registry, text).map_err(io_at(&registry))?;
    let interrupted = crate::cluster::interrupt_flag().map_err(io_at(control))?;
    while !interrupted.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if answer(stream, model, parked) {
                    return Ok(());
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(POLL_MS));
            }
            Err(error) => return Err(io_at(control)(error)),
        }
    }
    Ok(())
}

/// Answers one connection; true when asked to unmount.
fn answer(stream: UnixStream, model: &Arc<Mutex<Model>>, parked: &Parked) -> bool {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(CONTROL_TIMEOUT_MS)));
    let mut line = String::new();
    let mut reader = BufReader::new((&stream).take(REQUEST_BYTES_MAX));
    let request = match reader.read_line(&mut line) {
        Ok(_) => serde_json::from_str::<DiskRequest>(&line)
            .map_err(|error| format!("bad request: {error}")),
        Err(error) => Err(format!("reading the request: {error}")),
    };
    let reply = match &request {
        Ok(request) => execute(request, model, parked),
        Err(message) => DiskReply::Error {
            message: message.clone(),
        },
    };
    if let Ok(mut text) = serde_json::to_string(&reply) {
        text.push('\n');
        let _ = (&stream).write_all(text.as_bytes());
    }
    matches!(request, Ok(DiskRequest::Unmount))
}

fn execute(request: &DiskRequest, model: &Arc<Mutex<Model>>, parked: &Parked) -> DiskReply {
    let mut model = model
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let failed = |error: ModelError| DiskReply::Error {
        message: error.to_string(),
    };
    match request {
        DiskRequest::LoseUnsynced => model.crash(None).map_or_else(failed, DiskReply::Crashed),
        DiskRequest::Torn { seed } => model
            .crash(Some(&mut Rng::new(*seed)))
            .map_or_else(failed, DiskReply::Crashed),
        DiskRequest::Corrupt { seed } => model
            .corrupt(&mut Rng::new(*seed))
            .map_or_else(failed, DiskReply::Corrupted),
        DiskRequest::FsyncError => {
            model.arm_fsync_error();
            DiskReply::Armed
        }
        DiskRequest::Freeze => {
            model.freeze();
            DiskReply::Done
        }
        DiskRequest::Release => DiskReply::Released {
            fsyncs: release_parked(parked),
        },
        DiskRequest::Disarm => {
            model.disarm_fsync_error();
            DiskReply::Done
        }
        DiskRequest::Status => DiskReply::Status(model.status()),
        DiskRequest::Unmount => DiskReply::Done,
    }
}

/// Sends one request to the control socket and returns the reply (an `Error` reply becomes
/// `DiskError::Control`).
pub fn request(control: &Path, request: &DiskRequest) -> Result<DiskReply, DiskError> {
    let failed = |reason: String| DiskError::Control {
        path: control.to_path_buf(),
        reason,
    };
    let mut stream = UnixStream::connect(control).map_err(|e| failed(e.to_string()))?;
    let timeout = Some(Duration::from_millis(CONTROL_TIMEOUT_MS));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| failed(e.to_string()))?;
    let mut text = serde_json::to_string(request).map_err(|e| failed(e.to_string()))?;
    text.push('\n');
    stream
        .write_all(text.as_bytes())
        .map_err(|e| failed(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| failed(e.to_string()))?;
    match serde_json::from_str::<DiskReply>(&line) {
        Ok(DiskReply::Error { message }) => Err(failed(message)),
        Ok(reply) => Ok(reply),
        Err(error) => Err(failed(format!("bad reply \"{}\": {error}", line.trim()))),
    }
}

/// A serving process this process started. Dropping it unmounts and reaps the process.
pub struct DiskHandle {
    pub record: DiskRecord,
    child: Child,
    stopped: bool,
}

impl DiskHandle {
    /// Leaves the filesystem mounted and its process running after this value is gone.
    pub fn detach(mut self) {
        self.stopped = true;
    }

    /// Unmounts and waits for the process (SIGKILL and a lazy unmount if it does not exit).
    pub fn stop(mut self) -> Result<(), DiskError> {
        self.stopped = true;
        let result = stop_disk(&self.record);
        let _ = self.child.wait();
        result
    }
}

impl Drop for DiskHandle {
    fn drop(&mut self) {
        if !self.stopped {
            if let Err(error) = stop_disk(&self.record) {
                eprintln!("nemesis: {error}");
            }
            let _ = self.child.wait();
        }
    }
}

/// Starts `binary fs serve` over `mountpoint` and waits until it answers. Its output goes to
/// `log`.
pub fn spawn_disk(
    binary: &Path,
    options: &ServeOptions,
    log: &Path,
) -> Result<DiskHandle, DiskError> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    }
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_at(log))?;
    let errors = output.try_clone().map_err(io_at(log))?;
    let mut command = Command::new(binary);
    command
        .args(["fs", "serve", "--backing"])
        .arg(&options.backing)
        .arg("--mountpoint")
        .arg(&options.mountpoint)
        .arg("--control")
        .arg(&options.control)
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().map_err(io_at(binary))?;
    let start = Instant::now();
    loop {
        if request(&options.control, &DiskRequest::Status).is_ok() {
            break;
        }
        let exited = child.try_wait().ok().flatten().is_some();
        if exited || start.elapsed() >= Duration::from_millis(READY_TIMEOUT_MS) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DiskError::NotReady {
                path: options.mountpoint.clone(),
                waited_ms: start.elapsed().as_millis() as u64,
                log: log.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    let mountpoint =
        std::fs::canonicalize(&options.mountpoint).map_err(io_at(&options.mountpoint))?;
    let record = find_disk(&mountpoint).ok_or(DiskError::NoDisk(mountpoint))?;
    Ok(DiskHandle {
        record,
        child,
        stopped: false,
    })
}

/// Asks a serving process to unmount; if it does not exit in time, SIGKILLs it and unmounts
/// lazily. Removes its registry record. Idempotent.
pub fn stop_disk(record: &DiskRecord) -> Result<(), DiskError> {
    let _ = request(&record.control, &DiskRequest::Unmount);
    let timeout = Duration::from_millis(STOP_TIMEOUT_MS);
    if process::is_alive(record.pid) && process::wait_gone(record.pid, timeout).is_err() {
        if serves(record.pid) {
            let _ = process::send_signal(record.pid, rustix::process::Signal::KILL);
        }
        let _ = process::wait_gone(record.pid, timeout);
    }
    if is_mounted(&record.mountpoint) {
        lazy_unmount(&record.mountpoint)?;
    }
    let _ = std::fs::remove_file(registry_path(&record.mountpoint));
    let _ = std::fs::remove_file(&record.control);
    Ok(())
}

/// True if `pid` runs `nemesis fs serve`.
fn serves(pid: u32) -> bool {
    process::cmdline(pid).is_some_and(|args| {
        args.get(1).is_some_and(|a| a == "fs") && args.get(2).is_some_and(|a| a == "serve")
    })
}

fn lazy_unmount(mountpoint: &Path) -> Result<(), DiskError> {
    let status = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mountpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(io_at(Path::new("fusermount3")))?;
    if status.success() || !is_mounted(mountpoint) {
        return Ok(());
    }
    Err(DiskError::Control {
        path: mountpoint.to_path_buf(),
        reason: format!("fusermount3 -u -z failed ({status})"),
    })
}

/// Stops every recorded disk and unmounts every `fuse.kvdisk` mount left. Returns a line per
/// thing removed.
pub fn cleanup_disks() -> Result<Vec<String>, DiskError> {
    let mut removed = Vec::new();
    for record in recorded_disks() {
        stop_disk(&record)?;
        removed.push(format!("unmounted disk {}", record.mountpoint.display()));
    }
    for mountpoint in kvdisk_mounts() {
        lazy_unmount(&mountpoint)?;
        removed.push(format!("unmounted {}", mountpoint.display()));
    }
    Ok(removed)
}
