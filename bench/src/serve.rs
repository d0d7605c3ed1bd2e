//! `bench serve`: browse `results/` over HTTP, as Jepsen's `serve` does: `/` is the index of
//! every run (built fresh on each request), directories list their files, files are served
//! with their content type. GET and HEAD only, paths confined to the results directory, one
//! thread per connection with bounded request size and time. Plain HTTP/1.1 on std's
//! `TcpListener`: a file browser needs no HTTP stack.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::report::svg::escape;

/// The default address: loopback only (results may hold logs and configs).
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// Longest request head read (request line and headers).
pub const REQUEST_HEAD_BYTES_MAX: u64 = 16 * 1024;
/// How long a connection may take to send its request, and to take each write.
pub const IO_TIMEOUT_MS: u64 = 10_000;
/// Connections served at once; more are closed at once.
pub const CONNECTIONS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("results directory {path}: {source}")]
    Results {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound server; `run` serves until the process ends.
pub struct Server {
    root: PathBuf,
    listener: TcpListener,
}

impl Server {
    /// Binds `address` (port 0: any free port) to serve `results`.
    pub fn bind(results: &Path, address: SocketAddr) -> Result<Server, ServeError> {
        let root = results
            .canonicalize()
            .map_err(|source| ServeError::Results {
                path: results.display().to_string(),
                source,
            })?;
        let listener =
            TcpListener::bind(address).map_err(|source| ServeError::Listen { address, source })?;
        Ok(Server { root, listener })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Accepts connections forever, each on a thread of its own.
    pub fn run(self) {
        let root = Arc::new(self.root);
        let active = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming().flatten() {
            if active.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
                active.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (root, done) = (root.clone(), active.clone());
            let spawned = std::thread::Builder::new()
                .name("bench-serve".into())
                .spawn(move || {
                    serve_connection(stream, &root);
                    done.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// One response.
struct Response {
    status: &'static str,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    File(std::fs::File, u64),
}

impl Response {
    fn html(status: &'static str, html: String) -> Response {
        Response {
            status,
            content_type: "text/html; charset=utf-8",
            headers: Vec::new(),
            body: Body::Bytes(html.into_bytes()),
        }
    }

    fn error(status: &'static str, message: &str) -> Response {
        let html = format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{status}</title></head>\
             <body><h1>{status}</h1><p>{}</p><p><a href=\"/\">All runs</a></p></body></html>",
            escape(message)
        );
        Response::html(status, html)
    }
}

fn serve_connection(stream: TcpStream, root: &Path) {
    let timeout = Some(Duration::from_millis(IO_TIMEOUT_MS));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return;
    }
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader.take(REQUEST_HEAD_BYTES_MAX));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The headers are read and ignored (nothing here depends on them).
    let mut header = String::new();
    loop {
        header.clear();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut words = request_line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let response = match method {
        "GET" | "HEAD" => route(root, target),
        _ => Response::error("405 Method Not Allowed", "only GET and HEAD"),
    };
    let _ = write_response(stream, response, method == "HEAD");
}

fn write_response(
    mut stream: TcpStream,
    response: Response,
    head_only: bool,
) -> std::io::Result<()> {
    let length = match &response.body {
        Body::Bytes(bytes) => bytes.len() as u64,
        Body::File(_, length) => *length,
    };
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {length}\r\nConnection: close\r\n",
        response.status, response.content_type
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        match response.body {
            Body::Bytes(bytes) => stream.write_all(&bytes)?,
            Body::File(mut file, _) => {
                std::io::copy(&mut file, &mut stream)?;
            }
        }
    }
    stream.flush()
}

/// What `target` (`/a/b?query`) names under `root`.
fn route(root: &Path, target: &str) -> Response {
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let Some(relative) = decode_path(path) else {
        return Response::error("400 Bad Request", "malformed path");
    };
    if relative.as_os_str().is_empty() || relative == Path::new("index.html") {
        return Response::html("200 OK", crate::index::render_index(root));
    }
    let Some(full) = confined(root, &relative) else {
        return Response::error("404 Not Found", &format!("no such file: {path}"));
    };
    if full.is_dir() {
        if !path.ends_with('/') {
            return Response {
                status: "301 Moved Permanently",
                content_type: "text/plain; charset=utf-8",
                headers: vec![("Location", format!("{path}/"))],
                body: Body::Bytes(Vec::new()),
            };
        }
        return listing(&full, path);
    }
    match std::fs::File::open(&full).and_then(|file| Ok((file.metadata()?.len(), file))) {
        Ok((length, file)) => Response {
            status: "200 OK",
            content_type: content_type(&full),
            headers: Vec::new(),
            body: Body::File(file, length),
        },
        Err(error) => Response::error("404 Not Found", &format!("{path}: {error}")),
    }
}

/// Percent-decodes a URL path into a relative path of normal components; `None` for `..`,
/// bad escapes or anything else that could leave the root.
fn decode_path(path: &str) -> Option<PathBuf> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    let text = String::from_utf8(decoded).ok()?;
    let mut relative = PathBuf::new();
    for component in Path::new(text.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(relative)
}

/// `root/relative` if it exists and, symlinks resolved, is still under `root`.
fn confined(root: &Path, relative: &Path) -> Option<PathBuf> {
    let full = root.join(relative).canonicalize().ok()?;
    full.starts_with(root).then_some(full)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "css" => "text/css",
        // History lines, logs, CSV, HdrHistogram output, EDN: readable in the browser.
        "jsonl" | "log" | "csv" | "hgrm" | "txt" | "edn" | "toml" | "md" => {
            "text/plain; charset=utf-8"
        }
        _ => "application/octet-stream",
    }
}

/// A directory's files and subdirectories, like Jepsen's file browser.
fn listing(dir: &Path, path: &str) -> Response {
    let mut entries: Vec<(String, bool, u64)> = std::fs::read_dir(dir)
        .map(|read| {
            read.flatten()
                .map(|entry| {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let metadata = entry.path().metadata().ok();
                    let is_dir = metadata.as_ref().is_some_and(|m| m.is_dir());
                    (name, is_dir, metadata.map_or(0, |m| m.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0}</title><style>\
         body{{font-family:sans-serif;margin:20px}}td{{padding:2px 12px}}</style></head><body>\
         <p><a href=\"/\">All runs</a></p><h1>{0}</h1><table>",
        escape(path)
    );
    if path != "/" {
        html.push_str("<tr><td><a href=\"../\">../</a></td><td></td></tr>");
    }
    for (name, is_dir, length) in entries {
        let shown = if is_dir { format!("{name}/") } else { name };
        let size = if is_dir {
            String::new()
        } else {
            format!("{length} B")
        };
        html.push_str(&format!(
            "<tr><td><a href=\"{0}\">{0}</a></td><td>{size}</td></tr>",
            escape(&shown)
        ));
    }
    html.push_str("</table></body></html>\n");
    Response::html("200 OK", html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_results() {
        assert_eq!(
            decode_path("/a/b%20c.html"),
            Some(PathBuf::from("a/b c.html"))
        );
        assert_eq!(decode_path("/"), Some(PathBuf::new()));
        for bad in ["/../etc/passwd", "/a/%2e%2e/%2e%2e/x", "/a/%zz", "/a/%2"] {
            assert_eq!(decode_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn symlinks_out_of_the_root_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        let root = root.path().canonicalize().unwrap();
        assert_eq!(confined(&root, Path::new("out/secret")), None);
        assert_eq!(
            content_type(Path::new("a/history.jsonl")),
            "text/plain; charset=utf-8"
        );
    }
}
