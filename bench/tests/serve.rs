//! `bench serve` on loopback: plain HTTP checks, then headless Chromium (Debian's `chromium`)
//! loads the index and a run's report: the DOM must show the runs and the plots, and the
//! screenshots must be real pictures of them (not a blank or an error page). Skipped, with a
//! message, where Chromium is not installed (.ci/run installs it). Everything started is
//! stopped, and every wait is bounded.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long Chromium gets for one page (start, load, screenshot).
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `bench serve` gets to print its address.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The screenshots' size.
const WINDOW: (u32, u32) = (1280, 1000);
/// A screenshot of a page with text and plots compresses to several times a blank one's.
const CONTENT_TO_BLANK_BYTES_MIN: u64 = 3;
const STAMP: &str = "2026-01-02T03-04-05Z";

/// A child process killed (with its process group) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> Option<PathBuf> {
    let found = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    found.then(|| PathBuf::from("chromium"))
}

/// A results directory with one campaign run (its report drawn by bench itself) and one
/// plain bench run.
fn results() -> tempfile::TempDir {
    let results = tempfile::tempdir().unwrap();
    let run = results.path().join("register-kill").join(STAMP);
    std::fs::create_dir_all(run.join("logs")).unwrap();
    let summary = serde_json::json!({
        "kind": "campaign", "valid": true, "verdict": "valid (2 calls, 1 keys)",
        "config": {"name": "register-kill", "rate": 100.0, "faults": ["kill"]},
        "start_unix_ms": 0, "ops": 2, "ops_ok": 2, "ops_failed": 0, "seed": 5,
        "faults_injected": 1,
        "faults": [{"fault": "kill", "detail": "leader", "targets": [2],
                    "start_unix_ms": 1000, "end_unix_ms": 3000}],
    });
    std::fs::write(run.join("summary.json"), summary.to_string()).unwrap();
    let history = [
        serde_json::json!({"index": 0, "time": 3_000_000_000u64, "intended_time": 1_200_000_000u64,
            "process": 0, "type": "invoke", "f": "read", "key": 1}),
        serde_json::json!({"index": 1, "time": 3_001_000_000u64, "process": 0, "type": "ok",
            "f": "read", "key": 1, "value": null}),
    ];
    let lines: String = history.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(run.join("history.jsonl"), lines).unwrap();
    std::fs::write(run.join("logs/n1.log"), "started\n").unwrap();
    bench::report::render_run(&run).unwrap();
    let plain = results.path().join("bench").join(STAMP);
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(
        plain.join("summary.json"),
        r#"{"kind":"bench","config":{"workload":"put","clients":2},"figures":{"ops":10}}"#,
    )
    .unwrap();
    results
}

/// Starts `bench serve` on a free port; returns it and its address.
fn serve(results: &Path) -> (Guard, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["serve", "--listen", "127.0.0.1:0", "--results"])
        .arg(results)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver.recv_timeout(SERVE_START_TIMEOUT).unwrap();
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (guard, address.parse().unwrap())
}

/// One GET: status code, headers and body.
fn get(address: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// Runs headless Chromium with `args` on `url`, killing it after `CHROMIUM_TIMEOUT`.
fn run_chromium(chromium: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let mut command = Command::new(chromium);
    command
        .args(["--headless=new", "--no-sandbox", "--disable-gpu"])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .args(["--no-first-run", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut guard = Guard(child);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?} {url}: {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chromium took over {CHROMIUM_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(guard);
    reader.join().unwrap()
}

/// The width and height in a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let number = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (number(16), number(20))
}

fn screenshot(chromium: &Path, profile: &Path, url: &str, path: &Path) -> u64 {
    let args = [
        format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        format!("--screenshot={}", path.display()),
    ];
    run_chromium(chromium, profile, &args, url);
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(png_size(&bytes), WINDOW, "{url}");
    bytes.len() as u64
}

#[test]
fn bench_serve_browses_results_in_headless_chromium() {
    let results = results();
    let (_server, address) = serve(results.path());
    // Plain HTTP first: the index, a run's directory and files, and nothing outside.
    let (status, _, index) = get(address, "/");
    assert_eq!(status, 200);
    assert!(
        index.contains("register-kill") && index.contains(STAMP),
        "{index}"
    );
    let report = format!("/register-kill/{STAMP}/report.html");
    assert!(
        index.contains(&format!("href=\"{}\"", &report[1..])),
        "{index}"
    );
    let (status, head, listing) = get(address, &format!("/register-kill/{STAMP}/"));
    assert_eq!(status, 200);
    assert!(head.contains("text/html"));
    for file in ["history.jsonl", "summary.json", "report.html", "logs/"] {
        assert!(
            listing.contains(&format!("href=\"{file}\"")),
            "{file}: {listing}"
        );
    }
    let (status, head, _) = get(address, &format!("/register-kill/{STAMP}/history.jsonl"));
    assert!(status == 200 && head.contains("text/plain"), "{head}");
    let (status, head, _) = get(address, &format!("/register-kill/{STAMP}"));
    assert_eq!(status, 301);
    assert!(
        head.contains(&format!("Location: /register-kill/{STAMP}/")),
        "{head}"
    );
    for outside in [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/nothing-here",
    ] {
        let (status, _, _) = get(address, outside);
        assert!(status == 400 || status == 404, "{outside}: {status}");
    }

    let Some(chromium) = chromium() else {
        println!(
            "SKIPPED the headless Chromium part: `chromium` is not installed (Debian package \
             `chromium`; .ci/run installs it)"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let base = format!("http://{address}");
    let dom = run_chromium(&chromium, profile.path(), &["--dump-dom".into()], &base);
    assert!(
        dom.contains("register-kill") && dom.contains("report</a>"),
        "{dom}"
    );
    let dom = run_chromium(
        &chromium,
        profile.path(),
        &["--dump-dom".into()],
        &format!("{base}{report}"),
    );
    assert!(dom.contains("<h1>Campaign register-kill</h1>"), "{dom}");
    assert!(
        dom.contains("<svg") && dom.contains("intended send time"),
        "{dom}"
    );
    let shots = tempfile::tempdir().unwrap();
    let blank = screenshot(
        &chromium,
        profile.path(),
        "about:blank",
        &shots.path().join("blank.png"),
    );
    let index_shot = shots.path().join("index.png");
    let index_bytes = screenshot(&chromium, profile.path(), &base, &index_shot);
    let report_shot = shots.path().join("report.png");
    let report_url = format!("{base}{report}");
    let report_bytes = screenshot(&chromium, profile.path(), &report_url, &report_shot);
    println!("screenshots: blank {blank} B, index {index_bytes} B, report {report_bytes} B");
    assert!(
        index_bytes > CONTENT_TO_BLANK_BYTES_MIN * blank,
        "{index_bytes} vs {blank}"
    );
    assert!(
        report_bytes > CONTENT_TO_BLANK_BYTES_MIN * blank,
        "{report_bytes} vs {blank}"
    );
}
