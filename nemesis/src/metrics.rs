//! Reads a node's live state (role, term) from its Prometheus endpoint with a minimal HTTP/1.0
//! GET over std TCP: nemesis needs two gauges, not an HTTP stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::Serialize;

/// Largest metrics response read; a node's page is a few KiB.
pub const RESPONSE_BYTES_MAX: u64 = 1 << 20;
/// Connect/read/write timeout of one scrape. A paused node never answers, so this bounds how
/// long a status round takes.
pub const SCRAPE_TIMEOUT_MS: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics at {address}: {source}")]
    Io {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics at {address}: {reason}")]
    Http { address: SocketAddr, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

impl Role {
    /// `follower`, `candidate`, `leader`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }

    /// interfaces: raft_role 0 follower, 1 candidate/pre-candidate, 2 leader.
    pub fn from_gauge(value: f64) -> Option<Role> {
        match value as i64 {
            0 => Some(Role::Follower),
            1 => Some(Role::Candidate),
            2 => Some(Role::Leader),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RaftState {
    pub role: Role,
    pub term: u64,
}

/// GET any path; returns the body.
pub fn scrape(address: SocketAddr, timeout: Duration) -> Result<String, MetricsError> {
    let io = |source| MetricsError::Io { address, source };
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    parse_response(&text).map_err(|reason| MetricsError::Http { address, reason })
}

fn parse_response(text: &str) -> Result<String, String> {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "response has no header end".to_string())?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("status line '{status}'"));
    }
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if chunked {
        return dechunk(body);
    }
    Ok(body.to_string())
}

/// Decodes `Transfer-Encoding: chunked` (a server may use it even for HTTP/1.0 requests).
fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body
            .split_once("\r\n")
            .ok_or_else(|| "truncated chunk".to_string())?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|e| format!("chunk size: {e}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| "truncated chunk".to_string())?;
        out.push_str(chunk);
        body = rest
            .get(size..)
            .unwrap_or_default()
            .trim_start_matches("\r\n");
    }
}

/// The value of the first sample named `name` (any labels), e.g. `raft_term{node="n1"} 4`.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            &labels[labels.find('}')? + 1..]
        } else if rest.starts_with(' ') {
            rest
        } else {
            return None;
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

pub fn parse_raft_state(text: &str) -> Option<RaftState> {
    let role = Role::from_gauge(gauge(text, "raft_role")?)?;
    let term = gauge(text, "raft_term")?;
    Some(RaftState {
        role,
        term: term as u64,
    })
}

/// Scrapes and parses; a page without the two gauges is an error.
pub fn raft_state(address: SocketAddr, timeout: Duration) -> Result<RaftState, MetricsError> {
    let text = scrape(address, timeout)?;
    parse_raft_state(&text).ok_or_else(|| MetricsError::Http {
        address,
        reason: "no raft_role/raft_term samples".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const PAGE: &str = "# HELP raft_role role\n# TYPE raft_role gauge\nraft_role 2\n\
                        raft_term{node=\"n1\"} 7\nraft_term_other 9\n";

    #[test]
    fn gauges_parse_with_and_without_labels() {
        assert_eq!(gauge(PAGE, "raft_role"), Some(2.0));
        assert_eq!(gauge(PAGE, "raft_term"), Some(7.0));
        assert_eq!(gauge(PAGE, "raft_commit_index"), None);
        let state = parse_raft_state(PAGE).unwrap();
        assert_eq!(state.role, Role::Leader);
        assert_eq!(state.term, 7);
    }

    #[test]
    fn scrape_reads_a_real_http_server_plain_and_chunked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let replies = [
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{PAGE}"),
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{PAGE}\r\n{}",
                    PAGE.len(),
                    "0\r\n\r\n"
                ),
                "HTTP/1.1 404 Not Found\r\n\r\n".to_string(),
            ];
            for reply in replies {
                let (mut stream, _) = listener.accept().unwrap();
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer).unwrap();
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        let timeout = Duration::from_millis(SCRAPE_TIMEOUT_MS);
        assert_eq!(raft_state(address, timeout).unwrap().term, 7);
        assert_eq!(raft_state(address, timeout).unwrap().role, Role::Leader);
        assert!(matches!(
            raft_state(address, timeout),
            Err(MetricsError::Http { .. })
        ));
        server.join().unwrap();
    }
}
