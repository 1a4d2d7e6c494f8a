//! An HTTP proxy on 127.0.0.1 for tests, that records what goes through it.
//!
//! * `CONNECT host:port` (how clients reach `https://` through a proxy): the proxy connects
//!   to the target, answers `200 Connection established` and then relays bytes both ways
//!   until either side closes.
//! * Absolute-form requests (`GET http://host:port/path HTTP/1.1`, `POST …`: how clients
//!   reach `http://` through a proxy): the request is forwarded in origin form (`GET /path`)
//!   with `Connection: close`, its body following its framing (`Content-Length` or
//!   chunked), and the response is relayed until the server closes, with
//!   `Connection: close` in place of the server's own connection headers. So every request
//!   gets its own connection and its own log line; clients (git, curl) open a new
//!   connection for the next one.
//!
//! Every request is logged (`"CONNECT 127.0.0.1:443"`,
//! `"GET http://127.0.0.1:8080/repo.git/info/refs?service=git-upload-pack"`) as soon as its
//! head has been read, before it is forwarded: once a client has seen a response, its
//! request is in [`HttpProxy::requests`] (and in the log file, if any).
//!
//! Connections are served by a thread each. Dropping the proxy stops it: the listener is
//! closed, every connection (both sides) is shut down and the threads are joined (a thread
//! still running after [`STOP_TIMEOUT`] is left detached).
//!
//! Remember that clients skip proxies for the hosts in `NO_PROXY`/`no_proxy`: a test
//! proxying `127.0.0.1` must clear them.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::http::{self, Framing, Head, Limits, Malformed};
use crate::server::{linger, lock, Conn, Conns, Listener};

pub use crate::server::STOP_TIMEOUT;

/// How long a client may take to send a request head (and each read of a request body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers that concern one hop only: not forwarded (RFC 9110, 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// A logging HTTP proxy on 127.0.0.1.
pub struct HttpProxy {
    listener: Listener<Streams>,
    shared: Arc<Shared>,
}

impl HttpProxy {
    /// A proxy on a free port of 127.0.0.1.
    pub fn start() -> io::Result<HttpProxy> {
        HttpProxy::start_with(None)
    }

    /// A proxy that also appends each request line (and a newline) to the file at
    /// `log_path` (created if needed) as the request arrives.
    pub fn start_with_log(log_path: &Path) -> io::Result<HttpProxy> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        HttpProxy::start_with(Some(file))
    }

    fn start_with(file: Option<File>) -> io::Result<HttpProxy> {
        let conns = Conns::new();
        let shared = Arc::new(Shared {
            log: Mutex::new(Log {
                lines: Vec::new(),
                file,
            }),
            conns: Arc::clone(&conns),
        });
        let serving = Arc::clone(&shared);
        let listener = Listener::start("http-proxy", &conns, move |stream, id| {
            serve(&serving, id, stream)
        })?;
        Ok(HttpProxy { listener, shared })
    }

    /// `http://127.0.0.1:PORT`, for `http.proxy` or `http_proxy`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    pub fn port(&self) -> u16 {
        self.listener.addr().port()
    }

    /// The request lines seen so far, in arrival order: `"CONNECT host:port"` or
    /// `"<METHOD> <absolute URL>"`. A malformed request is logged as much as it could be
    /// read (possibly an empty line).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.log).lines.clone()
    }
}

struct Shared {
    log: Mutex<Log>,
    conns: Arc<Conns<Streams>>,
}

struct Log {
    lines: Vec<String>,
    file: Option<File>,
}

/// A connection's sockets, for stopping to shut down: the client's, then the upstream's.
struct Streams(Vec<TcpStream>);

impl Conn for Streams {
    fn new(stream: TcpStream) -> Streams {
        Streams(vec![stream])
    }

    fn end(&self) {
        for stream in &self.0 {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    fn log(&self, line: String) {
        let mut log = lock(&self.log);
        if let Some(file) = log.file.as_mut() {
            let _ = file.write_all(format!("{line}\n").as_bytes());
            let _ = file.flush();
        }
        log.lines.push(line);
    }

    /// Registers an upstream socket for shutdown on stop. False when the proxy is stopping.
    fn register(&self, id: u64, stream: &TcpStream) -> bool {
        let Ok(clone) = stream.try_clone() else {
            return false;
        };
        let mut registry = self.conns.lock();
        if self.conns.stopping() {
            return false;
        }
        match registry.live.get_mut(&id) {
            Some(streams) => {
                streams.0.push(clone);
                true
            }
            None => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// One connection

fn serve(shared: &Shared, id: u64, client: TcpStream) {
    let _ = client.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut input = BufReader::new(&client);
    let head = match http::read_request_head(&mut input, false, |t| !t.is_empty()) {
        Ok(None) => return, // closed without a request
        Ok(Some(head)) => head,
        Err(m) => {
            shared.log(match m {
                Malformed::NoRequestLine => String::new(),
                Malformed::RequestLine(line) => line,
                Malformed::Headers { method, target } => format!("{method} {target}"),
            });
            answer(&client, "400 Bad Request", "malformed request\n");
            linger(&mut input, &client);
            return;
        }
    };
    shared.log(format!("{} {}", head.method, head.target));
    if head.method == "CONNECT" {
        tunnel(shared, id, &client, input, &head.target);
    } else {
        forward(shared, id, &client, &mut input, &head);
        linger(&mut input, &client);
    }
}

/// `CONNECT host:port`: a byte relay.
fn tunnel(
    shared: &Shared,
    id: u64,
    client: &TcpStream,
    mut input: BufReader<&TcpStream>,
    target: &str,
) {
    let Some(upstream) = connect(target) else {
        answer(client, "502 Bad Gateway", "cannot connect\n");
        linger(&mut input, client);
        return;
    };
    if !shared.register(id, &upstream) {
        return;
    }
    if (&*client)
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    // The tunnel may be idle for long (the server thinking): no timeouts from here.
    let _ = client.set_read_timeout(None);
    let upstream = &upstream;
    thread::scope(|scope| {
        scope.spawn(move || {
            // Whatever the client sent after the head is already in the buffer.
            let _ = io::copy(&mut input, &mut &*upstream);
            let _ = upstream.shutdown(Shutdown::Write);
        });
        let _ = io::copy(&mut &*upstream, &mut &*client);
        let _ = client.shutdown(Shutdown::Write);
    });
}

/// An absolute-form request: forwarded in origin form, one request per connection.
fn forward(
    shared: &Shared,
    id: u64,
    client: &TcpStream,
    input: &mut BufReader<&TcpStream>,
    head: &Head,
) {
    let Some((authority, path)) = split_absolute(&head.target) else {
        answer(client, "400 Bad Request", "not an absolute http:// URL\n");
        return;
    };
    let Ok(body) = head.body() else {
        answer(client, "400 Bad Request", "bad message framing\n");
        return;
    };
    let target = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let Some(upstream) = connect(&target) else {
        answer(client, "502 Bad Gateway", "cannot connect\n");
        return;
    };
    if !shared.register(id, &upstream) {
        return;
    }

    let mut out = format!("{} {path} HTTP/1.1\r\n", head.method);
    // Headers the client's Connection header names are hop-by-hop too.
    let named: Vec<String> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if !HOP_BY_HOP.contains(&lower.as_str()) && !named.contains(&lower) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if head.header("host").is_none() {
        out.push_str(&format!("Host: {authority}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    if (&upstream).write_all(out.as_bytes()).is_err() {
        answer(client, "502 Bad Gateway", "upstream closed\n");
        return;
    }

    // The body goes up while the response comes down: a server may answer `100 Continue`
    // before reading it, or answer early without reading it at all.
    let upstream = &upstream;
    thread::scope(|scope| {
        scope.spawn(move || {
            let _ = http::copy_body(input, body, &mut &*upstream, Framing::Keep, Limits::NONE);
        });
        relay_response(client, upstream);
        // The response is complete (the client may be waiting for our end to know it).
        let _ = client.shutdown(Shutdown::Write);
        // Unblocks the body relay should the server have stopped reading.
        let _ = upstream.shutdown(Shutdown::Both);
    });
}

/// Server → client: interim (1xx) responses as they are, then the final response head with
/// `Connection: close`, then everything until the server closes.
fn relay_response(client: &TcpStream, upstream: &TcpStream) {
    let mut from = BufReader::new(upstream);
    let mut sent_anything = false;
    loop {
        let (status_line, headers) = match http::read_response_head(&mut from) {
            Ok(head) => head,
            Err(()) => {
                if !sent_anything {
                    answer(client, "502 Bad Gateway", "bad response from upstream\n");
                }
                return;
            }
        };
        let code: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let interim = (100..200).contains(&code) && code != 101;
        let mut out = format!("{status_line}\r\n");
        for (name, value) in &headers {
            let lower = name.to_ascii_lowercase();
            if interim
                || !["connection", "proxy-connection", "keep-alive"].contains(&lower.as_str())
            {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        if !interim {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        if (&*client).write_all(out.as_bytes()).is_err() {
            return;
        }
        sent_anything = true;
        if !interim {
            break;
        }
    }
    let _ = io::copy(&mut from, &mut &*client);
}

/// `host:port` → a connected socket.
fn connect(target: &str) -> Option<TcpStream> {
    let addrs = target.to_socket_addrs().ok()?;
    for addr in addrs {
        if let Ok(stream) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            return Some(stream);
        }
    }
    None
}

/// `http://authority/path?query` → (authority without user info, `/path?query`).
fn split_absolute(target: &str) -> Option<(&str, String)> {
    let (scheme, rest) = target.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return None;
    }
    let rest = &rest[end..];
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let path = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    Some((authority, path))
}

/// The proxy's own answer: a short text body.
fn answer(client: &TcpStream, status: &str, text: &str) {
    let out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = (&*client).write_all(out.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_targets_split() {
        assert_eq!(
            split_absolute("http://127.0.0.1:8080/repo.git/info/refs?service=x"),
            Some((
                "127.0.0.1:8080",
                "/repo.git/info/refs?service=x".to_string()
            ))
        );
        assert_eq!(
            split_absolute("HTTP://u:p@example.com"),
            Some(("example.com", "/".to_string()))
        );
        assert_eq!(
            split_absolute("http://h?q=1#frag"),
            Some(("h", "/?q=1".to_string()))
        );
        assert_eq!(split_absolute("https://h/"), None);
        assert_eq!(split_absolute("/relative"), None);
        assert_eq!(split_absolute("http:///x"), None);
    }
}
