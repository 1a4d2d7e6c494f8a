//! Real git servers on 127.0.0.1, for tests that run the git-clone init container and for
//! benchmarks.
//!
//! * [`GitDaemon`] serves `git://`: every connection is proxied, byte for byte, to its own
//!   `git daemon --inetd` child.
//! * [`SmartHttp`] serves git's smart HTTP protocol: a minimal HTTP/1.1 server that runs
//!   `git http-backend` as a CGI program for every request (one request per connection).
//!   With [`ServerOptions::tls`] it speaks HTTPS instead, with a certificate for
//!   `127.0.0.1` and `localhost` signed by a CA made when the server starts
//!   ([`SmartHttp::ca_pem`], [`SmartHttp::ca_file`]), so that a client trusts it only when
//!   told to (`GIT_SSL_CAINFO`, `http.sslCAInfo`).
//!
//! Both serve every bare repository under their root directory (`<root>/<repo>`, export-all),
//! listen on an ephemeral port of 127.0.0.1 only, handle concurrent clients (a thread per
//! connection), record every request ([`RequestRecord`]) and stop on drop: the listener is
//! closed, connections are shut down, git children are killed and connection threads are
//! joined (a thread still running after [`STOP_TIMEOUT`] is left detached; it holds nothing
//! but its connection and shared counters).
//!
//! The server side is hermetic: git runs with a cleared environment (`PATH`, `HOME`,
//! `TMPDIR` kept; `LC_ALL=C` so error messages on the wire are untranslated) and ignores the
//! system and global git config. Repository config (`<root>/<repo>/config`) still applies.
//! `git` is looked up on `PATH`.
//!
//! [`ServerOptions::protocol_v2`]`= false` forces protocol v0 even when the client asks for
//! v2 (which git ≥ 2.26 does by default):
//! * HTTP: `GIT_PROTOCOL` is not passed to `git http-backend`, so the `Git-Protocol` request
//!   header is ignored.
//! * git://: the client puts `version=2` in the extra parameters of its request packet and
//!   `git daemon` turns them into `GIT_PROTOCOL` for upload-pack; `git -c
//!   protocol.version=0 daemon` does not change that (the server still answers `version 2`).
//!   So the proxy rewrites the request packet without its `version=` parameters before the
//!   daemon sees it.
//!
//! Either way a v0 upload-pack advertises only its refs, and without
//! [`ServerOptions::allow_reachable_sha1_in_want`] the client refuses to ask for any other
//! commit: `error: Server does not allow request for unadvertised object <sha>`. A v2
//! upload-pack serves any commit by id.

use std::cell::RefCell;
use std::env;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde::Serialize;
use tempfile::TempDir;

use crate::http::{self, Body, BodyError, Framing, Head, Limits, Malformed};
use crate::server::{self, lock, Conn, Conns, Listener, LINGER_MAX_BYTES, LINGER_TIMEOUT};
use crate::tls::{self, Chain};

pub use crate::server::STOP_TIMEOUT;

/// How long a client may take to send its request (HTTP request head and body, or the first
/// packet of a git:// connection).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What a request body may hold.
const BODY_LIMITS: Limits = Limits {
    bytes: 256 << 20,
    chunks: 1 << 20,
};
const MAX_CGI_HEAD: usize = 64 << 10;
const MAX_PKT: usize = 65520;
const COPY_BUF: usize = 64 << 10;

/// What a server does beyond serving plainly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Serve protocol v2 to clients that ask for it (default). `false`: a v0-only server,
    /// which answers v0 whatever the client asks and so refuses to serve unadvertised
    /// objects (see the module documentation for how, per server type).
    pub protocol_v2: bool,
    /// The first N requests fail: HTTP answers `503 Service Unavailable`; the daemon closes
    /// the connection right after reading the request packet, without answering. Requests
    /// are counted in arrival order, whatever they ask for; a malformed request or a
    /// connection closed before sending anything does not count.
    pub fail_first: usize,
    /// HTTP only: requests without a matching `Authorization: Basic` header get `401` with
    /// `WWW-Authenticate: Basic realm="git"`. The user name is passed to the CGI as
    /// `REMOTE_USER`.
    pub basic_auth: Option<(String, String)>,
    /// Run the server's git with `-c uploadpack.allowReachableSHA1InWant=true`, so that a v0
    /// upload-pack serves any reachable commit by id. `false` leaves git's default (or the
    /// repository's own config).
    pub allow_reachable_sha1_in_want: bool,
    /// Run the server's git with `-c uploadpack.allowFilter=true`: it serves partial clones
    /// (`--filter=blob:none`), as GitHub and GitLab do. `false` leaves git's default, which
    /// ignores the filter and sends every blob (or the repository's own config).
    pub allow_filter: bool,
    /// HTTP only: serve HTTPS (TLS 1.2/1.3, HTTP/1.1) with a certificate for IP
    /// `127.0.0.1` and DNS `localhost`, signed by a CA generated when the server starts
    /// (see [`SmartHttp::ca_pem`]). [`GitDaemon::start`] refuses it.
    pub tls: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            protocol_v2: true,
            fail_first: 0,
            basic_auth: None,
            allow_reachable_sha1_in_want: false,
            allow_filter: false,
            tls: false,
        }
    }
}

/// One request: an HTTP request, or a git:// connection.
///
/// A record is created as soon as the request has been read, before anything is answered,
/// and is updated as the response goes out: `status` is 0 until the answer starts, and
/// `bytes_out` counts a chunk before it is written. So once a client has seen the end of a
/// response, its record is complete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    /// The HTTP method; `"git"` for a git:// connection.
    pub method: String,
    /// HTTP: the request target as sent (path and `?query`), e.g.
    /// `/repo.git/info/refs?service=git-upload-pack`. git://: the service and path of the
    /// request packet, e.g. `git-upload-pack /repo.git`. Empty when it could not be parsed.
    pub path: String,
    /// The HTTP status answered (the CGI's `Status:`, 200 by default). git://: 200 when the
    /// daemon answered, 404 when it answered an `ERR` packet (no such repository, service
    /// not enabled), 503 for a `fail_first` connection, 400 for a malformed request packet,
    /// 500 when the daemon could not run or closed without a word.
    pub status: u16,
    /// Bytes sent to the client, headers included.
    pub bytes_out: u64,
    /// Bytes received from the client, headers included.
    pub bytes_in: u64,
    /// The request carried an `Authorization` header (HTTP only).
    pub authorization_present: bool,
    /// What the client asked for: the `Git-Protocol` header (HTTP), or the request packet's
    /// extra parameters joined with `:` (git://), e.g. `version=2`. Recorded even when the
    /// server is v0-only and ignores it.
    pub git_protocol: Option<String>,
}

/// A `git://` server: `git daemon --inetd` per connection.
pub struct GitDaemon {
    server: Server,
}

impl GitDaemon {
    /// Serves the bare repositories under `root` on 127.0.0.1, on a free port.
    pub fn start(root: &Path, opts: ServerOptions) -> io::Result<GitDaemon> {
        if opts.tls {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "git:// has no TLS: ServerOptions::tls is for SmartHttp",
            ));
        }
        Ok(GitDaemon {
            server: Server::start(root, opts, None, "git-daemon", serve_daemon)?,
        })
    }

    /// `git://127.0.0.1:PORT/<repo>`.
    pub fn url(&self, repo: &str) -> String {
        format!(
            "git://127.0.0.1:{}/{}",
            self.port(),
            repo.trim_start_matches('/')
        )
    }

    pub fn port(&self) -> u16 {
        self.server.listener.addr().port()
    }

    /// One record per connection that sent something, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.server.core.requests()
    }

    /// Total bytes sent to clients.
    pub fn bytes_sent(&self) -> u64 {
        self.server.core.bytes_sent.load(Ordering::SeqCst)
    }
}

/// A git smart HTTP server: `git http-backend` (CGI) per request; HTTPS with
/// [`ServerOptions::tls`].
pub struct SmartHttp {
    // Declared first: dropped (stopped) before the CA file goes.
    server: Server,
    tls: Option<CaFile>,
}

/// The CA of an HTTPS server, and the file it is written to.
struct CaFile {
    pem: String,
    path: PathBuf,
    _dir: TempDir,
}

impl SmartHttp {
    /// Serves the bare repositories under `root` on 127.0.0.1, on a free port; over HTTPS
    /// when `opts.tls`.
    pub fn start(root: &Path, opts: ServerOptions) -> io::Result<SmartHttp> {
        let (config, tls) = if opts.tls {
            let identity = tls::generate(
                "sykli-testkit git CA",
                "127.0.0.1",
                Chain::Leaf,
                &[b"http/1.1"],
            )?;
            let dir = tempfile::Builder::new()
                .prefix("sykli-git-https-")
                .tempdir()?;
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, &identity.ca_pem)?;
            let ca = CaFile {
                pem: identity.ca_pem,
                path,
                _dir: dir,
            };
            (Some(identity.config), Some(ca))
        } else {
            (None, None)
        };
        Ok(SmartHttp {
            server: Server::start(root, opts, config, "git-http", serve_http)?,
            tls,
        })
    }

    /// `http://127.0.0.1:PORT/<repo>`, or `https://…` for a TLS server.
    pub fn url(&self, repo: &str) -> String {
        format!(
            "{}://127.0.0.1:{}/{}",
            if self.tls.is_some() { "https" } else { "http" },
            self.port(),
            repo.trim_start_matches('/')
        )
    }

    /// The CA certificate (PEM) that signed the server's certificate; None for plain HTTP.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|ca| ca.pem.as_str())
    }

    /// A file holding [`SmartHttp::ca_pem`] (for `GIT_SSL_CAINFO` or `http.sslCAInfo`),
    /// removed when the server is dropped; None for plain HTTP.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|ca| ca.path.as_path())
    }

    pub fn port(&self) -> u16 {
        self.server.listener.addr().port()
    }

    /// One record per request, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.server.core.requests()
    }

    /// Total bytes sent to clients.
    pub fn bytes_sent(&self) -> u64 {
        self.server.core.bytes_sent.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// The common part: the listener (see `crate::server`), live connections, records.

type Handler = fn(&Arc<Core>, TcpStream, u64);

struct Server {
    // Declared first: dropped (stopped) first.
    listener: Listener<Live>,
    core: Arc<Core>,
}

struct Core {
    root: PathBuf,
    opts: ServerOptions,
    /// HTTPS: every connection starts with a TLS handshake.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Requests seen so far, for `fail_first`.
    counted: AtomicUsize,
    bytes_sent: AtomicU64,
    records: Mutex<Vec<Arc<Slot>>>,
    conns: Arc<Conns<Live>>,
}

/// A connection being served: what stopping the server must end.
struct Live {
    stream: TcpStream,
    /// The git child, until it is reaped (so a kill never hits a reused pid).
    child: Option<u32>,
}

impl Conn for Live {
    fn new(stream: TcpStream) -> Live {
        Live {
            stream,
            child: None,
        }
    }

    fn end(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(pid) = self.child {
            kill(pid);
        }
    }
}

struct Slot {
    rec: Mutex<RequestRecord>,
    bytes_in: Arc<AtomicU64>,
    bytes_out: AtomicU64,
}

impl Server {
    fn start(
        root: &Path,
        opts: ServerOptions,
        tls: Option<Arc<rustls::ServerConfig>>,
        name: &str,
        handler: Handler,
    ) -> io::Result<Server> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let conns = Conns::new();
        let core = Arc::new(Core {
            root,
            opts,
            tls,
            counted: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
            conns: Arc::clone(&conns),
        });
        let serving = Arc::clone(&core);
        let listener = Listener::start(name, &conns, move |stream, id| {
            handler(&serving, stream, id)
        })?;
        Ok(Server { listener, core })
    }
}

fn kill(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain syscall; the pid is a child of ours not yet reaped (see `Live`).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

impl Core {
    fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.records).iter().map(|s| s.snapshot()).collect()
    }

    fn record(
        &self,
        method: &str,
        path: String,
        git_protocol: Option<String>,
        authorization_present: bool,
        bytes_in: Arc<AtomicU64>,
    ) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            rec: Mutex::new(RequestRecord {
                method: method.to_string(),
                path,
                status: 0,
                bytes_out: 0,
                bytes_in: 0,
                authorization_present,
                git_protocol,
            }),
            bytes_in,
            bytes_out: AtomicU64::new(0),
        });
        lock(&self.records).push(Arc::clone(&slot));
        slot
    }

    /// Counts a request; true when it is one of the first `fail_first`.
    fn should_fail(&self) -> bool {
        self.counted.fetch_add(1, Ordering::SeqCst) < self.opts.fail_first
    }

    /// Writes to the client, counting first: whatever the client receives is already counted.
    fn send(&self, slot: &Slot, mut stream: impl Write, data: &[u8]) -> io::Result<()> {
        let n = data.len() as u64;
        slot.bytes_out.fetch_add(n, Ordering::SeqCst);
        self.bytes_sent.fetch_add(n, Ordering::SeqCst);
        stream.write_all(data)?;
        stream.flush()
    }

    /// Registers a connection's child for killing on stop. False when the server is
    /// stopping: the caller kills it itself.
    fn set_child(&self, id: u64, pid: Option<u32>) -> bool {
        let mut registry = self.conns.lock();
        if pid.is_some() && self.conns.stopping() {
            return false;
        }
        if let Some(live) = registry.live.get_mut(&id) {
            live.child = pid;
        }
        true
    }

    fn spawn(&self, id: u64, cmd: &mut Command) -> io::Result<Child> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        if !self.set_child(id, Some(child.id())) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("the server is stopping"));
        }
        Ok(child)
    }

    fn reap(&self, id: u64, child: &mut Child, kill_it: bool) {
        if kill_it {
            let _ = child.kill();
        }
        self.set_child(id, None);
        let _ = child.wait();
    }

    /// `git` with a hermetic environment and the options' config.
    fn git(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.env_clear();
        for key in ["PATH", "HOME", "TMPDIR"] {
            if let Some(value) = env::var_os(key) {
                cmd.env(key, value);
            }
        }
        if env::var_os("PATH").is_none() {
            cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        }
        cmd.env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
        if self.opts.allow_reachable_sha1_in_want {
            cmd.args(["-c", "uploadpack.allowReachableSHA1InWant=true"]);
        }
        if self.opts.allow_filter {
            cmd.args(["-c", "uploadpack.allowFilter=true"]);
        }
        cmd
    }
}

impl Slot {
    fn set_status(&self, status: u16) {
        lock(&self.rec).status = status;
    }

    fn snapshot(&self) -> RequestRecord {
        let mut rec = lock(&self.rec).clone();
        rec.bytes_in = self.bytes_in.load(Ordering::SeqCst);
        rec.bytes_out = self.bytes_out.load(Ordering::SeqCst);
        rec
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// git://

struct DaemonRequest {
    /// `git-upload-pack /repo.git`.
    path: String,
    git_protocol: Option<String>,
    /// The request packet as received.
    packet: Vec<u8>,
    /// The request packet without `version=` parameters.
    packet_v0: Vec<u8>,
}

fn serve_daemon(core: &Arc<Core>, stream: TcpStream, id: u64) {
    let bytes_in = Arc::new(AtomicU64::new(0));
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut input = Counting {
        inner: &stream,
        count: Arc::clone(&bytes_in),
    };
    let request = match read_pkt(&mut input) {
        Ok(None) => return, // closed without a word: not a request
        Ok(Some(payload)) => parse_daemon_request(&payload),
        Err(_) => None,
    };
    let Some(request) = request else {
        let slot = core.record("git", String::new(), None, false, bytes_in);
        slot.set_status(400);
        server::linger(&mut input, &stream);
        return;
    };
    let slot = core.record(
        "git",
        request.path.clone(),
        request.git_protocol.clone(),
        false,
        Arc::clone(&bytes_in),
    );
    if core.should_fail() {
        slot.set_status(503);
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }

    let mut cmd = core.git();
    cmd.arg("daemon")
        .args([
            "--inetd",
            "--informative-errors",
            "--export-all",
            "--enable=upload-pack",
        ])
        .arg(concat_os("--base-path=", &core.root))
        .arg(&core.root)
        .env("REMOTE_ADDR", "127.0.0.1");
    if let Ok(peer) = stream.peer_addr() {
        cmd.env("REMOTE_PORT", peer.port().to_string());
    }
    let mut child = match core.spawn(id, &mut cmd) {
        Ok(child) => child,
        Err(_) => {
            slot.set_status(500);
            server::linger(&mut input, &stream);
            return;
        }
    };
    let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        core.reap(id, &mut child, true);
        slot.set_status(500);
        server::linger(&mut input, &stream);
        return;
    };
    // From here the client may be silent for as long as upload-pack works.
    let _ = stream.set_read_timeout(None);
    let first = if core.opts.protocol_v2 {
        request.packet
    } else {
        request.packet_v0
    };
    thread::scope(|scope| {
        let stream = &stream;
        scope.spawn(move || feed(input, stdin, &first));
        let completed = pump_daemon(core, &slot, stream, &mut stdout);
        let _ = stream.shutdown(Shutdown::Write);
        // The feeder ends when the client closes (it will, having seen our end) or falls
        // silent for this long.
        let _ = stream.set_read_timeout(Some(LINGER_TIMEOUT));
        core.reap(id, &mut child, !completed);
    });
}

/// Client → daemon: the (possibly rewritten) request packet, then everything the client
/// sends. Once the daemon stops reading, the client's input is drained (bounded).
fn feed(mut input: Counting<&TcpStream>, stdin: ChildStdin, first: &[u8]) {
    let mut to_child = Some(stdin);
    if let Some(w) = to_child.as_mut() {
        if w.write_all(first).is_err() {
            to_child = None;
        }
    }
    let mut buf = vec![0u8; COPY_BUF];
    let mut drained = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        match to_child.as_mut() {
            Some(w) => {
                if w.write_all(&buf[..n]).is_err() {
                    to_child = None;
                }
            }
            None => {
                drained += n as u64;
                if drained > LINGER_MAX_BYTES {
                    break;
                }
            }
        }
    }
}

/// Daemon → client. Sets the status from the first packet before anything goes out. False
/// when the client went away first.
fn pump_daemon(core: &Core, slot: &Slot, stream: &TcpStream, stdout: &mut ChildStdout) -> bool {
    let status_of = |head: &[u8]| match head.get(4..8) {
        Some(b"ERR ") => 404,
        _ if head.is_empty() => 500,
        _ => 200,
    };
    let mut buf = vec![0u8; COPY_BUF];
    let mut head = Vec::new();
    let mut started = false;
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = if started {
            &buf[..n]
        } else {
            head.extend_from_slice(&buf[..n]);
            if head.len() < 8 {
                continue;
            }
            started = true;
            slot.set_status(status_of(&head));
            &head[..]
        };
        if core.send(slot, stream, chunk).is_err() {
            return false;
        }
    }
    if !started {
        slot.set_status(status_of(&head));
        if !head.is_empty() && core.send(slot, stream, &head).is_err() {
            return false;
        }
    }
    true
}

/// Reads one pkt-line; None at a clean end of input before it. A flush packet or a bad
/// length is an error (the request packet has content).
fn read_pkt(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad pkt-line length");
    let len = std::str::from_utf8(&len).map_err(|_| bad())?;
    let len = usize::from_str_radix(len, 16).map_err(|_| bad())?;
    if !(5..=MAX_PKT).contains(&len) {
        return Err(bad());
    }
    let mut payload = vec![0u8; len - 4];
    input.read_exact(&mut payload)?;
    Ok(Some(payload))
}

fn pkt(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// `<service> <path>\0[host=<host>\0][\0<extra>\0...]`, as `git daemon` reads it.
fn parse_daemon_request(payload: &[u8]) -> Option<DaemonRequest> {
    let mut fields = payload.split(|&b| b == 0);
    let command = fields.next()?;
    let command = command.strip_suffix(b"\n").unwrap_or(command);
    if !command.starts_with(b"git-") || !command.contains(&b' ') {
        return None;
    }
    let rest: Vec<&[u8]> = fields.collect();
    let mut i = 0;
    let host = match rest.first() {
        Some(field) if field.starts_with(b"host=") => {
            i = 1;
            Some(*field)
        }
        _ => None,
    };
    let extras: Vec<&[u8]> = match rest.get(i) {
        Some([]) => rest[i + 1..]
            .iter()
            .copied()
            .filter(|f| !f.is_empty())
            .collect(),
        _ => Vec::new(),
    };
    let git_protocol = (!extras.is_empty()).then(|| {
        extras
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    });

    let mut v0 = command.to_vec();
    v0.push(0);
    if let Some(host) = host {
        v0.extend_from_slice(host);
        v0.push(0);
    }
    let kept: Vec<&[u8]> = extras
        .into_iter()
        .filter(|e| !e.starts_with(b"version="))
        .collect();
    if !kept.is_empty() {
        v0.push(0);
        for extra in kept {
            v0.extend_from_slice(extra);
            v0.push(0);
        }
    }
    Some(DaemonRequest {
        path: String::from_utf8_lossy(command).into_owned(),
        git_protocol,
        packet: pkt(payload),
        packet_v0: pkt(&v0),
    })
}

fn concat_os(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

// ---------------------------------------------------------------------------------------
// Smart HTTP

type Input<'a> = BufReader<Counting<&'a HttpConn>>;

/// A client connection of the HTTP server: plain TCP, or TLS over it. Read and written
/// (through `&HttpConn`) by its connection thread only.
struct HttpConn {
    /// The socket: timeouts, addresses, shutdown (for TLS, a second handle on it).
    tcp: TcpStream,
    tls: Option<RefCell<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>>,
}

impl HttpConn {
    /// For TLS, the handshake is done here (within the socket's read timeout).
    fn new(core: &Core, stream: TcpStream) -> io::Result<HttpConn> {
        let Some(config) = &core.tls else {
            return Ok(HttpConn {
                tcp: stream,
                tls: None,
            });
        };
        let conn = rustls::ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, stream.try_clone()?);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(HttpConn {
            tcp: stream,
            tls: Some(RefCell::new(tls)),
        })
    }

    /// Ends our side: TLS `close_notify`, then no more output.
    fn shutdown_write(&self) {
        if let Some(tls) = &self.tls {
            let mut tls = tls.borrow_mut();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
        let _ = self.tcp.shutdown(Shutdown::Write);
    }
}

impl Read for &HttpConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            Some(tls) => tls.borrow_mut().read(buf),
            None => (&self.tcp).read(buf),
        }
    }
}

impl Write for &HttpConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.tls {
            Some(tls) => tls.borrow_mut().write(buf),
            None => (&self.tcp).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.tls {
            Some(tls) => tls.borrow_mut().flush(),
            None => Ok(()),
        }
    }
}

/// [`server::linger`] for HTTP(S).
fn linger_http(input: &mut Input, conn: &HttpConn) {
    conn.shutdown_write();
    server::discard_input(input, &conn.tcp);
}

fn serve_http(core: &Arc<Core>, stream: TcpStream, id: u64) {
    let bytes_in = Arc::new(AtomicU64::new(0));
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    // A failed TLS handshake (say, a client that does not trust the CA) is not a request.
    let Ok(conn) = HttpConn::new(core, stream) else {
        return;
    };
    let stream = &conn;
    let mut input = BufReader::new(Counting {
        inner: stream,
        count: Arc::clone(&bytes_in),
    });
    // One empty line before the request is tolerated (RFC 9112, 2.2).
    let head = match http::read_request_head(&mut input, true, |t| t.starts_with('/')) {
        Ok(None) => return, // closed without a request
        Ok(Some(head)) => head,
        Err(m) => {
            let (method, target) = method_and_target(m);
            let slot = core.record(&method, target, None, false, bytes_in);
            let _ = respond(core, &slot, stream, 400, &[], "malformed request\n");
            linger_http(&mut input, stream);
            return;
        }
    };
    let slot = core.record(
        &head.method,
        head.target.clone(),
        head.header("git-protocol").map(str::to_string),
        head.header("authorization").is_some(),
        bytes_in,
    );
    handle_http(core, id, &slot, stream, &mut input, &head);
    linger_http(&mut input, stream);
}

fn handle_http(
    core: &Core,
    id: u64,
    slot: &Slot,
    stream: &HttpConn,
    input: &mut Input,
    head: &Head,
) {
    let Ok(body) = head.body() else {
        let _ = respond(core, slot, stream, 400, &[], "bad message framing\n");
        return;
    };
    let expect_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));

    let rejection = if core.should_fail() {
        Some((503, Vec::new(), "service unavailable (fail_first)\n"))
    } else {
        match authorize(core, head) {
            Ok(_) => None,
            Err(()) => Some((
                401,
                vec![("WWW-Authenticate", "Basic realm=\"git\"")],
                "authentication required\n",
            )),
        }
    };
    if let Some((status, headers, text)) = rejection {
        if !expect_continue {
            // Read the body first: answering over unread input risks a reset.
            let _ = read_body(input, body, &mut io::sink());
        }
        let _ = respond(core, slot, stream, status, &headers, text);
        return;
    }
    let user = authorize(core, head).ok().flatten();

    if expect_continue
        && body != Body::None
        && core
            .send(slot, stream, b"HTTP/1.1 100 Continue\r\n\r\n")
            .is_err()
    {
        return;
    }
    let mut content = Vec::new();
    match read_body(input, body, &mut content) {
        Ok(()) => {}
        Err(BodyError::TooLarge) => {
            let _ = respond(core, slot, stream, 413, &[], "request body too large\n");
            return;
        }
        Err(BodyError::Bad) => {
            let _ = respond(core, slot, stream, 400, &[], "bad request body\n");
            return;
        }
    }
    run_cgi(
        core,
        id,
        slot,
        stream,
        head,
        content,
        body != Body::None,
        user,
    );
}

/// Ok(None): no authentication configured; Ok(Some(user)): authenticated; Err: rejected.
fn authorize(core: &Core, head: &Head) -> Result<Option<String>, ()> {
    let Some((user, pass)) = &core.opts.basic_auth else {
        return Ok(None);
    };
    let expected = base64(format!("{user}:{pass}").as_bytes());
    let given = head.header("authorization").unwrap_or("").trim();
    match given.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("basic") && token.trim() == expected =>
        {
            Ok(Some(user.clone()))
        }
        _ => Err(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_cgi(
    core: &Core,
    id: u64,
    slot: &Slot,
    stream: &HttpConn,
    head: &Head,
    body: Vec<u8>,
    has_body: bool,
    user: Option<String>,
) {
    let (path, query) = head
        .target
        .split_once('?')
        .unwrap_or((head.target.as_str(), ""));
    let Some(path_info) = percent_decode(path) else {
        let _ = respond(core, slot, stream, 400, &[], "bad path\n");
        return;
    };
    let mut cmd = core.git();
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &core.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("SERVER_SOFTWARE", "sykli-testkit")
        .env("SERVER_NAME", "127.0.0.1")
        .envs(core.tls.as_ref().map(|_| ("HTTPS", "on")))
        .env("REQUEST_METHOD", &head.method)
        .env("PATH_INFO", OsStr::from_bytes(&path_info))
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", "127.0.0.1");
    if let Ok(local) = stream.tcp.local_addr() {
        cmd.env("SERVER_PORT", local.port().to_string());
    }
    if has_body {
        cmd.env("CONTENT_LENGTH", body.len().to_string());
    }
    if let Some(v) = head.header("content-type") {
        cmd.env("CONTENT_TYPE", v);
    }
    if let Some(v) = head.header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    if let Some(user) = &user {
        cmd.env("REMOTE_USER", user).env("AUTH_TYPE", "Basic");
    }
    if core.opts.protocol_v2 {
        if let Some(v) = head.header("git-protocol") {
            cmd.env("GIT_PROTOCOL", v);
        }
    }
    let mut child = match core.spawn(id, &mut cmd) {
        Ok(child) => child,
        Err(_) => {
            let _ = respond(
                core,
                slot,
                stream,
                500,
                &[],
                "could not run git http-backend\n",
            );
            return;
        }
    };
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        core.reap(id, &mut child, true);
        let _ = respond(
            core,
            slot,
            stream,
            500,
            &[],
            "could not run git http-backend\n",
        );
        return;
    };
    thread::scope(|scope| {
        scope.spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let completed = match read_cgi_head(&mut stdout) {
            Some(cgi) => {
                slot.set_status(cgi.status);
                let mut out = format!("HTTP/1.1 {} {}\r\n", cgi.status, cgi.reason);
                for (name, value) in &cgi.headers {
                    out.push_str(&format!("{name}: {value}\r\n"));
                }
                out.push_str("Connection: close\r\n\r\n");
                core.send(slot, stream, out.as_bytes()).is_ok()
                    && core.send(slot, stream, &cgi.rest).is_ok()
                    && pump(core, slot, stream, &mut stdout)
            }
            None => {
                let _ = respond(core, slot, stream, 500, &[], "git http-backend failed\n");
                false
            }
        };
        // Dropping our end of its stdout first: a child still writing gets EPIPE.
        drop(stdout);
        core.reap(id, &mut child, !completed);
    });
}

/// Child → client until the child's output ends; false when the client went away.
fn pump(core: &Core, slot: &Slot, stream: &HttpConn, from: &mut impl Read) -> bool {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                if core.send(slot, stream, &buf[..n]).is_err() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Our own answers: a short text body.
fn respond(
    core: &Core,
    slot: &Slot,
    stream: &HttpConn,
    status: u16,
    headers: &[(&str, &str)],
    text: &str,
) -> io::Result<()> {
    slot.set_status(status);
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    ));
    core.send(slot, stream, out.as_bytes())
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// What a malformed request's record shows: its method and target, as far as they could be
/// made out.
fn method_and_target(m: Malformed) -> (String, String) {
    match m {
        Malformed::NoRequestLine => (String::new(), String::new()),
        Malformed::RequestLine(line) => {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                [method, target, _] => (method.to_string(), target.to_string()),
                _ => (parts[0].to_string(), String::new()),
            }
        }
        Malformed::Headers { method, target } => (method, target),
    }
}

fn read_body(input: &mut impl BufRead, body: Body, out: &mut impl Write) -> Result<(), BodyError> {
    http::copy_body(input, body, out, Framing::Decode, BODY_LIMITS)
}

struct CgiHead {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    /// Body bytes read along with the head.
    rest: Vec<u8>,
}

/// The CGI response head; None when the child ends (or errs) before a complete, valid one.
fn read_cgi_head(from: &mut impl Read) -> Option<CgiHead> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, body_start) = loop {
        if let Some(found) = find_head_end(&buf) {
            break found;
        }
        if buf.len() > MAX_CGI_HEAD {
            return None;
        }
        match from.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    };
    let head = std::str::from_utf8(&buf[..head_len]).ok()?;
    let mut status = 200;
    let mut reason_phrase = None;
    let mut headers = Vec::new();
    for line in head.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("status") {
            let (code, text) = value.split_once(' ').unwrap_or((value, ""));
            status = code.parse().ok().filter(|c| (100..=599).contains(c))?;
            if !text.trim().is_empty() {
                reason_phrase = Some(text.trim().to_string());
            }
        } else if !["connection", "transfer-encoding", "keep-alive"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    Some(CgiHead {
        status,
        reason: reason_phrase.unwrap_or_else(|| reason(status).to_string()),
        headers,
        rest: buf[body_start..].to_vec(),
    })
}

/// (length of the header lines, start of the body) once an empty line has been seen.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    for (i, &b) in buf.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        match &buf[i + 1..] {
            [b'\n', ..] => return Some((i, i + 2)),
            [b'\r', b'\n', ..] => return Some((i, i + 3)),
            _ => {}
        }
    }
    None
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("user:pass", "dXNlcjpwYXNz"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
    }

    #[test]
    fn daemon_request_v0_rewrite_drops_only_version() {
        let req = parse_daemon_request(b"git-upload-pack /r.git\0host=h:1\0\0version=2\0x=y\0")
            .expect("parses");
        assert_eq!(req.path, "git-upload-pack /r.git");
        assert_eq!(req.git_protocol.as_deref(), Some("version=2:x=y"));
        assert_eq!(
            req.packet_v0,
            pkt(b"git-upload-pack /r.git\0host=h:1\0\0x=y\0")
        );

        let req = parse_daemon_request(b"git-upload-pack /r.git\0host=h:1\0\0version=2\0")
            .expect("parses");
        assert_eq!(req.packet_v0, pkt(b"git-upload-pack /r.git\0host=h:1\0"));

        let req = parse_daemon_request(b"git-upload-pack /r.git\0\0version=1\0").expect("parses");
        assert_eq!(req.git_protocol.as_deref(), Some("version=1"));
        assert_eq!(req.packet_v0, pkt(b"git-upload-pack /r.git\0"));

        let req = parse_daemon_request(b"git-upload-pack /r.git\n").expect("parses");
        assert_eq!(req.git_protocol, None);
        assert_eq!(req.path, "git-upload-pack /r.git");

        assert!(parse_daemon_request(b"hello").is_none());
        assert!(parse_daemon_request(b"upload-pack /r.git\0").is_none());
    }

    #[test]
    fn cgi_heads_parse() {
        let mut input: &[u8] = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nbody";
        let head = read_cgi_head(&mut input).expect("parses");
        assert_eq!(head.status, 404);
        assert_eq!(head.reason, "Not Found");
        assert_eq!(
            head.headers,
            vec![("Content-Type".to_string(), "text/plain".to_string())]
        );
        assert_eq!(head.rest, b"body");

        let mut input: &[u8] = b"Content-Type: x\n\n";
        assert_eq!(read_cgi_head(&mut input).expect("parses").status, 200);
        let mut truncated: &[u8] = b"Content-Type: x\r\n";
        assert!(read_cgi_head(&mut truncated).is_none());
    }
}
