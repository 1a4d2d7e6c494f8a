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

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long dropping the proxy waits for its connection threads before leaving the rest
/// detached.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request head (and each read of a request body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a forwarded response, the client's leftover input is read (and discarded) for at
/// most this long of idleness before the socket is closed, so that closing does not reset
/// the connection under a response the client has not read yet.
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
const LINGER_MAX_BYTES: u64 = 16 << 20;
const MAX_LINE: usize = 8 << 10;
const MAX_HEADERS: usize = 100;
const MAX_ACCEPT_ERRORS: u32 = 100;

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
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// A clone of the listener, to wake the accept loop on stop.
    waker: Option<TcpListener>,
    accept: Option<JoinHandle<()>>,
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
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let waker = listener.try_clone()?;
        let shared = Arc::new(Shared {
            shutdown: AtomicBool::new(false),
            log: Mutex::new(Log {
                lines: Vec::new(),
                file,
            }),
            conns: Mutex::new(Conns::default()),
            idle: Condvar::new(),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("http-proxy-accept".to_string())
            .spawn(move || accept_loop(&accept_shared, listener))?;
        Ok(HttpProxy {
            shared,
            addr,
            waker: Some(waker),
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`, for `http.proxy` or `http_proxy`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The request lines seen so far, in arrival order: `"CONNECT host:port"` or
    /// `"<METHOD> <absolute URL>"`. A malformed request is logged as much as it could be
    /// read (possibly an empty line).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.log).lines.clone()
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wake the accept loop: a connection of our own, and (should that fail) shutting
        // the listening socket down, which makes a blocked accept() return on Linux.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(waker) = &self.waker {
            // SAFETY: the descriptor is owned by `waker`, alive for the duration of the call.
            unsafe { libc::shutdown(waker.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let _ = accept.join();
        self.waker = None;

        let mut conns = lock(&self.shared.conns);
        for streams in conns.live.values() {
            for stream in streams {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !conns.live.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            conns = self
                .shared
                .idle
                .wait_timeout(conns, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let handles = mem::take(&mut conns.handles);
        drop(conns);
        for handle in handles {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Shared {
    shutdown: AtomicBool,
    log: Mutex<Log>,
    conns: Mutex<Conns>,
    /// Notified whenever a connection thread ends.
    idle: Condvar,
}

struct Log {
    lines: Vec<String>,
    file: Option<File>,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    /// Per connection: the sockets stopping must shut down (client, then upstream).
    live: HashMap<u64, Vec<TcpStream>>,
    handles: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut conns = lock(&self.conns);
        if self.shutdown.load(Ordering::SeqCst) {
            return false;
        }
        match conns.live.get_mut(&id) {
            Some(streams) => {
                streams.push(clone);
                true
            }
            None => false,
        }
    }

    fn dispatch(self: &Arc<Self>, stream: TcpStream) {
        let Ok(registered) = stream.try_clone() else {
            return;
        };
        let id = {
            let mut conns = lock(&self.conns);
            let (done, running): (Vec<_>, Vec<_>) = mem::take(&mut conns.handles)
                .into_iter()
                .partition(|h| h.is_finished());
            conns.handles = running;
            for handle in done {
                let _ = handle.join();
            }
            let id = conns.next_id;
            conns.next_id += 1;
            conns.live.insert(id, vec![registered]);
            id
        };
        let shared = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("http-proxy-conn".to_string())
            .spawn(move || {
                let _guard = ConnGuard {
                    shared: &shared,
                    id,
                };
                serve(&shared, id, stream);
            });
        match spawned {
            Ok(handle) => lock(&self.conns).handles.push(handle),
            Err(_) => {
                lock(&self.conns).live.remove(&id);
                self.idle.notify_all();
            }
        }
    }
}

/// Deregisters a connection when its thread ends, however it ends.
struct ConnGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.conns).live.remove(&self.id);
        self.shared.idle.notify_all();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut errors = 0;
    while !shared.shutdown.load(Ordering::SeqCst) {
        let accepted = listener.accept();
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        match accepted {
            Ok((stream, _)) => {
                errors = 0;
                shared.dispatch(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                errors += 1;
                if errors >= MAX_ACCEPT_ERRORS {
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One connection

struct Head {
    method: String,
    target: String,
    /// As received (name case kept), in order.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The request's body, as its headers frame it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

fn serve(shared: &Shared, id: u64, client: TcpStream) {
    let _ = client.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut input = BufReader::new(&client);
    let head = match read_request_head(&mut input) {
        Ok(None) => return, // closed without a request
        Ok(Some(head)) => head,
        Err(line) => {
            shared.log(line);
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
    let Ok(body) = body_kind(head) else {
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
            let _ = relay_body(input, body, &mut &*upstream);
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
        let (status_line, headers) = match read_response_head(&mut from) {
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

/// Client → server: the request body, as framed (chunked bodies verbatim).
fn relay_body(input: &mut impl BufRead, body: Body, out: &mut impl Write) -> Result<(), ()> {
    fn copy_exact(input: &mut impl BufRead, n: u64, out: &mut impl Write) -> Result<(), ()> {
        match io::copy(&mut input.take(n), out) {
            Ok(copied) if copied == n => Ok(()),
            _ => Err(()),
        }
    }
    fn copy_line(input: &mut impl BufRead, out: &mut impl Write) -> Result<String, ()> {
        let line = read_raw_line(input)?.ok_or(())?;
        out.write_all(&line).map_err(|_| ())?;
        let text = String::from_utf8(line).map_err(|_| ())?;
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }
    match body {
        Body::None => Ok(()),
        Body::Length(n) => copy_exact(input, n, out),
        Body::Chunked => loop {
            let line = copy_line(input, out)?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| ())?;
            if size == 0 {
                // Trailers, up to the empty line.
                for _ in 0..=MAX_HEADERS {
                    if copy_line(input, out)?.is_empty() {
                        return out.flush().map_err(|_| ());
                    }
                }
                return Err(());
            }
            copy_exact(input, size, out)?;
            if !copy_line(input, out)?.is_empty() {
                return Err(());
            }
        },
    }
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

fn body_kind(head: &Head) -> Result<Body, ()> {
    if let Some(te) = head.header("transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or("").trim();
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(Body::Chunked)
        } else {
            Err(())
        };
    }
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    match lengths.first() {
        None => Ok(Body::None),
        Some(first) => {
            if lengths.iter().any(|l| l != first)
                || first.is_empty()
                || !first.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(());
            }
            first.parse().map(Body::Length).map_err(|_| ())
        }
    }
}

/// A line with its line end; None at a clean end of input before it.
fn read_raw_line(input: &mut impl BufRead) -> Result<Option<Vec<u8>>, ()> {
    let mut line = Vec::new();
    let n = input
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .map_err(|_| ())?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(()); // too long, or cut short
    }
    Ok(Some(line))
}

/// A line without its CRLF (or LF); None at a clean end of input before it.
fn read_line(input: &mut impl BufRead) -> Result<Option<String>, ()> {
    let Some(line) = read_raw_line(input)? else {
        return Ok(None);
    };
    let text = String::from_utf8(line).map_err(|_| ())?;
    Ok(Some(
        text.trim_end_matches('\n')
            .trim_end_matches('\r')
            .to_string(),
    ))
}

/// Header lines up to the empty line.
fn read_headers(input: &mut impl BufRead) -> Result<Vec<(String, String)>, ()> {
    let mut headers = Vec::new();
    for _ in 0..=MAX_HEADERS {
        let line = read_line(input)?.ok_or(())?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line.split_once(':').ok_or(())?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(());
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Err(()) // too many headers
}

/// Ok(None): closed before a request. Err: malformed, with what can be logged of it.
fn read_request_head(input: &mut impl BufRead) -> Result<Option<Head>, String> {
    let request_line = match read_line(input) {
        Ok(None) => return Ok(None),
        Ok(Some(line)) => line,
        Err(()) => return Err(String::new()),
    };
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(request_line);
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || target.is_empty() || !version.starts_with("HTTP/1.") {
        return Err(request_line);
    }
    let headers = read_headers(input).map_err(|()| format!("{method} {target}"))?;
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        headers,
    }))
}

/// (status line, headers).
fn read_response_head(input: &mut impl BufRead) -> Result<(String, Vec<(String, String)>), ()> {
    let status_line = read_line(input)?.ok_or(())?;
    if !status_line.starts_with("HTTP/1.") {
        return Err(());
    }
    Ok((status_line, read_headers(input)?))
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

/// Ends a connection politely: no more output, then the client's leftover input is read and
/// discarded (bounded in time and size) so that closing does not reset the connection.
fn linger(input: &mut impl Read, client: &TcpStream) {
    let _ = client.shutdown(Shutdown::Write);
    let _ = client.set_read_timeout(Some(LINGER_TIMEOUT));
    let _ = io::copy(&mut input.take(LINGER_MAX_BYTES), &mut io::sink());
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

    #[test]
    fn chunked_bodies_are_relayed_verbatim() {
        let raw: &[u8] = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut input = raw;
        let mut out = Vec::new();
        assert!(relay_body(&mut input, Body::Chunked, &mut out).is_ok());
        assert_eq!(out, &raw[..raw.len() - 4]);
        assert_eq!(input, b"NEXT");

        let mut bad: &[u8] = b"4\r\nWikiX\r\n0\r\n\r\n";
        assert!(relay_body(&mut bad, Body::Chunked, &mut Vec::new()).is_err());

        let mut input: &[u8] = b"abcdef";
        let mut out = Vec::new();
        assert!(relay_body(&mut input, Body::Length(4), &mut out).is_ok());
        assert_eq!(out, b"abcd");
    }
}
