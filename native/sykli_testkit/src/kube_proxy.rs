//! A TLS-terminating reverse proxy on 127.0.0.1 in front of the real API server
//! ([`crate::kube`]), for tests that need what only a proxy can give: a log of every request
//! (method, path, query, status, timing, and for watches the events and `ERROR` codes that
//! went through) and faults injected at any time (5xx, 429 with `Retry-After`, connection
//! resets before or after the API server saw a request, slow answers, watch streams closed
//! after N events or now, and stalled watches).
//!
//! It presents a certificate of its own CA ([`crate::tls`]) and writes a kubeconfig that
//! trusts it. Upstream it verifies the API server against the plane's CA and authenticates
//! as the client presented itself: a request with an `Authorization` header (a bearer
//! token) goes on a connection without a client certificate, the header unchanged; a
//! request without credentials goes as the plane's admin, with the client certificate the
//! plane's admin kubeconfig embeds (`pki/admin.crt`), so the proxy's kubeconfig carries
//! no key. A client certificate presented to the proxy is not asked for.
//!
//! HTTP/1.1 only, a thread per connection and one upstream connection per client
//! connection; responses stream as they come (chunked bodies are re-chunked: a watch event
//! per chunk), so watches and `follow`ed logs pass through unbuffered. Protocol upgrades
//! (exec, attach, port-forward) are refused with 501.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::http::{self, Body, Framing, Head, Limits};
use crate::kube::ClusterInfo;
use crate::server::{lock, Conn, Conns, Listener};

/// How long a client connection may sit idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Which requests a [`Fault`] applies to; an empty field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// `GET`, `POST`, … (compared without case).
    pub method: Option<String>,
    /// A substring of the path and query as sent (e.g. `/jobs`,
    /// `labelSelector=sykli.io%2Frun%3Dr1`).
    pub path: Option<String>,
    /// Only watches (`Some(true)`) or only the rest (`Some(false)`).
    pub watch: Option<bool>,
}

impl Match {
    /// Any request.
    pub fn any() -> Match {
        Match::default()
    }

    /// Requests whose path and query contain `path`.
    pub fn path(path: &str) -> Match {
        Match {
            path: Some(path.to_string()),
            ..Match::default()
        }
    }

    /// `method` requests whose path and query contain `path`.
    pub fn method_path(method: &str, path: &str) -> Match {
        Match {
            method: Some(method.to_string()),
            path: Some(path.to_string()),
            ..Match::default()
        }
    }

    /// Watches whose path and query contain `path` ("" for every watch).
    pub fn watch(path: &str) -> Match {
        Match {
            path: Some(path.to_string()),
            watch: Some(true),
            ..Match::default()
        }
    }

    fn matches(&self, method: &str, target: &str, watch: bool) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path.as_deref().is_none_or(|p| target.contains(p))
            && self.watch.is_none_or(|w| w == watch)
    }
}

/// What a [`Fault`] does to a request it hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answers this status (500, 503, …) with a Kubernetes `Status`; the API server never
    /// sees the request.
    Status(u16),
    /// Answers 429 TooManyRequests with `Retry-After` (seconds).
    Throttle { retry_after_secs: u32 },
    /// Resets the connection (TCP RST) before forwarding: the request is lost.
    Reset,
    /// Forwards the request, then resets the connection instead of answering: the API
    /// server acted, the client never hears of it.
    LoseAnswer,
    /// Waits this long before forwarding. Delays add up, and do not stop the search for
    /// another fault.
    Delay(Duration),
    /// A watch: its stream ends (cleanly, as the API server ends a watch) after this many
    /// events.
    CloseWatchAfter(u64),
    /// A watch: its response starts, then no event is passed on until the faults are set
    /// again (or cleared), or [`KubeProxy::close_watches`] ends it.
    StallWatch,
}

impl Action {
    fn watch_only(&self) -> bool {
        matches!(self, Action::CloseWatchAfter(_) | Action::StallWatch)
    }
}

/// A fault: `action` on the requests `on` matches, each hit with probability `rate`,
/// for the next `times` hits (None: no end).
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub on: Match,
    pub action: Action,
    pub times: Option<u32>,
    pub rate: f64,
}

impl Fault {
    /// `action` on the next `n` requests `on` matches.
    pub fn next(n: u32, on: Match, action: Action) -> Fault {
        Fault {
            on,
            action,
            times: Some(n),
            rate: 1.0,
        }
    }

    /// `action` on every request `on` matches.
    pub fn always(on: Match, action: Action) -> Fault {
        Fault {
            on,
            action,
            times: None,
            rate: 1.0,
        }
    }

    /// `action` on each request `on` matches with probability `rate` (drawn from the
    /// proxy's seeded generator, see [`KubeProxy::set_seed`]).
    pub fn rate(rate: f64, on: Match, action: Action) -> Fault {
        Fault {
            on,
            action,
            times: None,
            rate,
        }
    }
}

/// One request, as the log keeps it (written when the answer's head is known, updated
/// while a watch streams).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query as sent (percent-encoded), "" when none.
    pub query: String,
    /// The answer's status; 0 when the connection was reset instead.
    pub status: u16,
    pub watch: bool,
    /// When it arrived, since the proxy started.
    pub at: Duration,
    /// Until the answer's head (for a stream: until it started).
    pub duration: Duration,
    /// The fault that answered it, or that it streamed under (`"503"`, `"429"`,
    /// `"reset"`, `"lose-answer"`, `"close-watch-after"`, `"stall"`); delays not named.
    pub fault: Option<&'static str>,
    /// Of a watch: the events passed on so far.
    pub events: u64,
    /// Of a watch: the `code` of each `ERROR` event passed on (410 for an expired
    /// resourceVersion).
    pub watch_errors: Vec<u16>,
}

impl Request {
    /// Query parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_decode(v))
        })
    }

    /// Whether it was injected (its answer came from the proxy, not the API server).
    pub fn injected(&self) -> bool {
        matches!(
            self.fault,
            Some(f) if f != "close-watch-after" && f != "stall" && f != "lose-answer"
        )
    }
}

/// The running proxy; dropping it ends every connection.
pub struct KubeProxy {
    shared: Arc<Shared>,
    listener: Option<Listener<Streams>>,
    kubeconfig: PathBuf,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

struct Shared {
    started: Instant,
    upstream: Upstream,
    conns: Arc<Conns<Streams>>,
    state: Mutex<State>,
    /// Notified when the faults change or watches are closed (wakes stalled watches).
    changed: Condvar,
}

struct State {
    log: Vec<Request>,
    faults: Vec<Fault>,
    /// Bumped by every change of the faults: a stalled watch resumes on it.
    faults_gen: u64,
    rng: u64,
    /// The watches streaming now, by a number of their own.
    watches: HashMap<u64, LiveWatch>,
    next_watch: u64,
}

struct LiveWatch {
    upstream: TcpStream,
    closed: Arc<AtomicBool>,
}

struct Upstream {
    addr: SocketAddr,
    /// With the admin's client certificate: requests without credentials.
    admin: Arc<rustls::ClientConfig>,
    /// Without: requests that bring their own (a bearer token).
    anonymous: Arc<rustls::ClientConfig>,
}

/// A connection's sockets, for stopping to shut down: the client's, then the upstream's.
struct Streams(Vec<TcpStream>);

impl Conn for Streams {
    fn new(stream: TcpStream) -> Streams {
        Streams(vec![stream])
    }

    fn end(&self) {
        for s in &self.0 {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl KubeProxy {
    /// Starts a proxy in front of the plane `info` describes (`sykli-kube up`'s line).
    pub fn start(info: &ClusterInfo) -> io::Result<KubeProxy> {
        let pki = info
            .ca
            .parent()
            .ok_or_else(|| io::Error::other("the plane's CA path has no directory"))?;
        let upstream = upstream(&info.server, &info.ca, pki)?;
        let tls = crate::tls::generate(
            "sykli kube proxy CA",
            "sykli-kube-proxy",
            crate::tls::Chain::Leaf,
            &[],
        )?;
        let shared = Arc::new(Shared {
            started: Instant::now(),
            upstream,
            conns: Conns::new(),
            state: Mutex::new(State {
                log: Vec::new(),
                faults: Vec::new(),
                faults_gen: 0,
                rng: seed_from_clock(),
                watches: HashMap::new(),
                next_watch: 0,
            }),
            changed: Condvar::new(),
        });
        let serve_shared = Arc::clone(&shared);
        let config = Arc::clone(&tls.config);
        let listener = Listener::start("kube-proxy", &shared.conns, move |stream, id| {
            serve(&serve_shared, &config, stream, id)
        })?;
        let dir = tempfile::Builder::new()
            .prefix("sykli-kube-proxy-")
            .tempdir()?;
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, &tls.ca_pem)?;
        let kubeconfig = dir.path().join("kubeconfig");
        // JSON is YAML: kube clients read it as any kubeconfig.
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "sykli-kube-proxy", "cluster": {
                "server": format!("https://{}", listener.addr()),
                "certificate-authority": ca,
            }}],
            "users": [{"name": "sykli-admin-through-proxy", "user": {}}],
            "contexts": [{"name": "sykli-kube-proxy", "context": {
                "cluster": "sykli-kube-proxy", "user": "sykli-admin-through-proxy"}}],
            "current-context": "sykli-kube-proxy",
        });
        std::fs::write(&kubeconfig, serde_json::to_vec_pretty(&config)?)?;
        Ok(KubeProxy {
            shared,
            listener: Some(listener),
            kubeconfig,
            ca,
            _dir: dir,
        })
    }

    /// A kubeconfig of the plane's admin through the proxy (trusting the proxy's CA).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The proxy's CA certificate (PEM file): what a client must trust.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match &self.listener {
            Some(l) => format!("https://{}", l.addr()),
            None => String::new(),
        }
    }

    /// Every request since the start (or the last [`KubeProxy::clear_requests`]), in
    /// arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.state).log.clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.state).log.clear();
    }

    /// Replaces the faults (checked in order on each request); stalled watches resume.
    pub fn set_faults(&self, faults: Vec<Fault>) {
        let mut s = lock(&self.shared.state);
        s.faults = faults;
        s.faults_gen += 1;
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Adds a fault after the others (stalled watches stay stalled).
    pub fn add_fault(&self, fault: Fault) {
        lock(&self.shared.state).faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.set_faults(Vec::new());
    }

    /// Seeds the generator [`Fault::rate`] draws from: the same requests in the same order
    /// meet the same faults.
    pub fn set_seed(&self, seed: u64) {
        lock(&self.shared.state).rng = seed.max(1);
    }

    /// Ends every watch streaming now, stalled or not, passing on nothing more of it: what
    /// the API server had sent and the proxy not yet passed on is lost, as with a dropped
    /// connection. Returns how many it ended.
    pub fn close_watches(&self) -> usize {
        let mut s = lock(&self.shared.state);
        let n = s.watches.len();
        for (_, w) in s.watches.drain() {
            w.closed.store(true, Ordering::SeqCst);
            let _ = w.upstream.shutdown(Shutdown::Both);
        }
        drop(s);
        self.shared.changed.notify_all();
        n
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.close_watches();
        self.listener.take();
    }
}

/// Compacts the plane's etcd at its current revision (through etcd's HTTP gateway,
/// physically), so that a watch resuming from an older resourceVersion meets 410 Gone:
/// with `--apiserver-arg=--watch-cache=false`, as the watch cache would hide it. Returns
/// the revision.
pub fn compact_etcd(info: &ClusterInfo) -> io::Result<u64> {
    // Any key: the answer's header holds the store's revision.
    let range = etcd_post(
        &info.etcd,
        "/v3/kv/range",
        r#"{"key":"Lw==","count_only":true}"#,
    )?;
    let revision: u64 = range["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| io::Error::other(format!("etcd's range answer has no revision: {range}")))?;
    let body = serde_json::json!({"revision": revision.to_string(), "physical": true});
    match etcd_post(&info.etcd, "/v3/kv/compaction", &body.to_string()) {
        // Another test of the plane compacted it at this revision (or later) meanwhile:
        // what was asked for holds.
        Err(e)
            if e.to_string()
                .contains("required revision has been compacted") => {}
        other => {
            other?;
        }
    }
    Ok(revision)
}

/// POSTs JSON to etcd's gateway (HTTP/1.0: the answer ends with the connection).
fn etcd_post(etcd: &str, path: &str, body: &str) -> io::Result<serde_json::Value> {
    let addr = etcd
        .strip_prefix("http://")
        .unwrap_or(etcd)
        .trim_end_matches('/');
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        tcp,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if status_of(head.lines().next().unwrap_or("")) != Some(200) {
        return Err(io::Error::other(format!("etcd {path}: {head} {body}")));
    }
    serde_json::from_str(body).map_err(io::Error::other)
}

fn upstream(server: &str, ca: &Path, pki: &Path) -> io::Result<Upstream> {
    let addr: SocketAddr = server
        .strip_prefix("https://")
        .unwrap_or(server)
        .trim_end_matches('/')
        .parse()
        .map_err(|_| {
            io::Error::other(format!(
                "the plane's server {server} is not https://IP:PORT"
            ))
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(io::Error::other)? {
        roots
            .add(cert.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.join("admin.crt"))
        .map_err(io::Error::other)?
        .collect::<Result<_, _>>()
        .map_err(io::Error::other)?;
    let key = PrivateKeyDer::from_pem_file(pki.join("admin.key")).map_err(io::Error::other)?;
    let builder = || {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots.clone()))
        .map_err(io::Error::other)
    };
    let mut admin = builder()?
        .with_client_auth_cert(chain, key)
        .map_err(io::Error::other)?;
    let mut anonymous = builder()?.with_no_client_auth();
    // HTTP/1.1, not h2: the proxy relays HTTP/1.1 messages.
    admin.alpn_protocols = vec![b"http/1.1".to_vec()];
    anonymous.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Upstream {
        addr,
        admin: Arc::new(admin),
        anonymous: Arc::new(anonymous),
    })
}

type ServerTls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;
type ClientTls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The upstream connection of a client connection, and whether it carries the admin's
/// certificate.
struct UpConn {
    io: BufReader<ClientTls>,
    tcp: TcpStream,
    admin: bool,
}

fn serve(shared: &Shared, config: &Arc<rustls::ServerConfig>, stream: TcpStream, id: u64) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(tcp) = stream.try_clone() else { return };
    let Ok(conn) = rustls::ServerConnection::new(Arc::clone(config)) else {
        return;
    };
    let mut client = BufReader::new(rustls::StreamOwned::new(conn, stream));
    let mut up: Option<UpConn> = None;
    loop {
        let head = match http::read_request_head(&mut client, false, |t| t.starts_with('/')) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(_) => {
                answer(
                    client.get_mut(),
                    400,
                    "Bad Request",
                    &[],
                    "malformed request",
                );
                return;
            }
        };
        match relay(shared, id, &mut client, &tcp, &mut up, head) {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let tls = client.get_mut();
                tls.conn.send_close_notify();
                let _ = tls.flush();
                let _ = tcp.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// What the faults decide for one request.
#[derive(Default)]
struct Decision {
    delay: Duration,
    action: Option<Action>,
    /// The faults' generation it was made under: a stall lasts until it changes.
    faults_gen: u64,
}

fn decide(shared: &Shared, method: &str, target: &str, watch: bool) -> Decision {
    let mut s = lock(&shared.state);
    let mut d = Decision {
        faults_gen: s.faults_gen,
        ..Decision::default()
    };
    let mut rng = s.rng;
    for f in s.faults.iter_mut() {
        if f.times == Some(0)
            || !f.on.matches(method, target, watch)
            || (f.action.watch_only() && !watch)
        {
            continue;
        }
        if f.rate < 1.0 && next_f64(&mut rng) >= f.rate {
            continue;
        }
        if let Some(t) = f.times.as_mut() {
            *t -= 1;
        }
        match &f.action {
            Action::Delay(by) => d.delay += *by,
            a => {
                d.action = Some(a.clone());
                break;
            }
        }
    }
    s.rng = rng;
    d
}

/// Logs a request; its index, for updates.
fn record(shared: &Shared, r: Request) -> usize {
    let mut s = lock(&shared.state);
    s.log.push(r);
    s.log.len() - 1
}

/// Updates the record at `index` (if the log was not cleared since).
fn update(shared: &Shared, index: usize, at: Duration, f: impl FnOnce(&mut Request)) {
    let mut s = lock(&shared.state);
    if let Some(r) = s.log.get_mut(index).filter(|r| r.at == at) {
        f(r);
    }
}

/// Relays one request and its answer. Ok(true): the connection can take another request.
fn relay(
    shared: &Shared,
    id: u64,
    client: &mut BufReader<ServerTls>,
    client_tcp: &TcpStream,
    up: &mut Option<UpConn>,
    head: Head,
) -> io::Result<bool> {
    let arrived = Instant::now();
    let at = arrived - shared.started;
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let watch = path.starts_with("/api/v1/watch/")
        || path.contains("/watch/")
        || query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1");
    let mut rec = Request {
        method: head.method.clone(),
        path: path.to_string(),
        query: query.to_string(),
        status: 0,
        watch,
        at,
        duration: Duration::ZERO,
        fault: None,
        events: 0,
        watch_errors: Vec::new(),
    };
    let body = head
        .body()
        .map_err(|()| io::Error::other("bad body framing"))?;
    let decision = decide(shared, &head.method, &head.target, watch);
    if !decision.delay.is_zero() {
        std::thread::sleep(decision.delay);
    }
    let injected = |rec: &mut Request, status: u16, fault: &'static str| {
        rec.status = status;
        rec.fault = Some(fault);
        rec.duration = arrived.elapsed();
    };
    match decision.action {
        Some(Action::Status(code)) => {
            http::copy_body(client, body, &mut io::sink(), Framing::Decode, Limits::NONE)
                .map_err(|_| io::Error::other("request body"))?;
            let fault = match code {
                500 => "500",
                502 => "502",
                503 => "503",
                504 => "504",
                _ => "status",
            };
            injected(&mut rec, code, fault);
            record(shared, rec);
            let reason = match code {
                503 => "ServiceUnavailable",
                504 => "Timeout",
                _ => "InternalError",
            };
            let status = status_body(code, reason, "injected by the test proxy", None);
            answer(client.get_mut(), code, reason, &[], &status);
            return Ok(true);
        }
        Some(Action::Throttle { retry_after_secs }) => {
            http::copy_body(client, body, &mut io::sink(), Framing::Decode, Limits::NONE)
                .map_err(|_| io::Error::other("request body"))?;
            injected(&mut rec, 429, "429");
            record(shared, rec);
            let status = status_body(
                429,
                "TooManyRequests",
                "injected by the test proxy: please try again later",
                Some(retry_after_secs),
            );
            let retry = retry_after_secs.to_string();
            answer(
                client.get_mut(),
                429,
                "Too Many Requests",
                &[("Retry-After", &retry)],
                &status,
            );
            return Ok(true);
        }
        Some(Action::Reset) => {
            injected(&mut rec, 0, "reset");
            record(shared, rec);
            reset(client_tcp);
            return Ok(false);
        }
        _ => {}
    }

    // Forward: on the connection of the request's kind of credentials.
    let admin = head.header("authorization").is_none();
    if up.as_ref().is_some_and(|u| u.admin != admin) {
        if let Some(u) = up.take() {
            let _ = u.tcp.shutdown(Shutdown::Both);
        }
    }
    if up.is_none() {
        *up = Some(connect_upstream(shared, id, admin)?);
    }
    let Some(u) = up.as_mut() else {
        return Ok(false);
    };
    let mut out = Vec::with_capacity(512);
    write!(out, "{} {} HTTP/1.1\r\n", head.method, head.target)?;
    for (n, v) in &head.headers {
        write!(out, "{n}: {v}\r\n")?;
    }
    out.extend_from_slice(b"\r\n");
    let sent = u.io.get_mut().write_all(&out).and_then(|()| {
        http::copy_body(client, body, u.io.get_mut(), Framing::Keep, Limits::NONE)
            .map_err(|_| io::Error::other("request body"))
    });
    if let Err(e) = sent {
        record(shared, rec);
        return Err(e);
    }
    if decision.action == Some(Action::LoseAnswer) {
        // Wait for the API server's answer (so it has acted), then drop it.
        let got = http::read_response_head(&mut u.io);
        rec.status = got
            .as_ref()
            .ok()
            .and_then(|(line, _)| status_of(line))
            .unwrap_or(0);
        rec.fault = Some("lose-answer");
        rec.duration = arrived.elapsed();
        record(shared, rec);
        reset(client_tcp);
        let _ = u.tcp.shutdown(Shutdown::Both);
        return Ok(false);
    }
    let Ok((status_line, headers)) = http::read_response_head(&mut u.io) else {
        rec.duration = arrived.elapsed();
        record(shared, rec);
        answer(
            client.get_mut(),
            502,
            "Bad Gateway",
            &[],
            &status_body(
                502,
                "InternalError",
                "the test proxy lost the API server",
                None,
            ),
        );
        return Ok(false);
    };
    let status = status_of(&status_line).unwrap_or(0);
    rec.status = status;
    rec.duration = arrived.elapsed();
    let stream_fault = match &decision.action {
        Some(Action::CloseWatchAfter(_)) => Some("close-watch-after"),
        Some(Action::StallWatch) => Some("stall"),
        _ => None,
    };
    rec.fault = stream_fault;
    let index = record(shared, rec);
    if status == 101 {
        answer(
            client.get_mut(),
            501,
            "Not Implemented",
            &[],
            &status_body(
                501,
                "InternalError",
                "the test proxy does not relay upgrades",
                None,
            ),
        );
        return Ok(false);
    }
    let framing = Head {
        method: String::new(),
        target: String::new(),
        headers: headers.clone(),
    };
    let close = |hs: &[(String, String)]| {
        hs.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("connection") && v.to_ascii_lowercase().contains("close")
        })
    };
    let keep_alive = !close(&headers) && !close(&head.headers);
    let mut out = Vec::with_capacity(512);
    write!(out, "{status_line}\r\n")?;
    for (n, v) in &headers {
        write!(out, "{n}: {v}\r\n")?;
    }
    out.extend_from_slice(b"\r\n");
    // A watch is registered before its client hears of it, so that a test that has seen
    // the head can close it.
    let live = if watch {
        Some(LiveGuard::register(shared, &u.tcp)?)
    } else {
        None
    };
    client.get_mut().write_all(&out)?;
    client.get_mut().flush()?;

    let no_body = head.method == "HEAD" || status == 204 || status == 304 || status < 200;
    let body = if no_body {
        Body::None
    } else {
        match framing.body() {
            Ok(Body::None) => {
                // Delimited by the close of the connection.
                io::copy(&mut u.io, client.get_mut())?;
                return Ok(false);
            }
            Ok(b) => b,
            Err(()) => return Ok(false),
        }
    };
    match body {
        Body::Chunked if live.is_some() => {
            let closed = live
                .as_ref()
                .map(|l| Arc::clone(&l.closed))
                .unwrap_or_default();
            let ended = stream_watch(shared, u, client.get_mut(), &decision, &closed, index, at)?;
            Ok(ended && keep_alive)
        }
        Body::Chunked => {
            let mut decoded = Chunked::new(&mut u.io);
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = decoded.read(&mut buf)?;
                write_chunk(client.get_mut(), &buf[..n])?;
                if n == 0 {
                    return Ok(keep_alive);
                }
            }
        }
        b => {
            http::copy_body(&mut u.io, b, client.get_mut(), Framing::Keep, Limits::NONE)
                .map_err(|_| io::Error::other("response body"))?;
            Ok(keep_alive)
        }
    }
}

/// Passes a watch's events on, one chunk each, under the stream's faults. Ok(true): the
/// stream ended cleanly and the connections can go on.
fn stream_watch(
    shared: &Shared,
    u: &mut UpConn,
    client: &mut ServerTls,
    decision: &Decision,
    closed: &AtomicBool,
    index: usize,
    at: Duration,
) -> io::Result<bool> {
    {
        let mut events = BufReader::new(Chunked::new(&mut u.io));
        let mut sent = 0u64;
        let mut stalled = decision.action == Some(Action::StallWatch);
        loop {
            if stalled {
                let mut s = lock(&shared.state);
                while s.faults_gen == decision.faults_gen && !closed.load(Ordering::SeqCst) {
                    s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                stalled = false;
            }
            if closed.load(Ordering::SeqCst) {
                // Closed now: end the client's stream as the API server ends a watch.
                write_chunk(client, b"")?;
                return Ok(false);
            }
            if let Some(Action::CloseWatchAfter(n)) = decision.action {
                if sent >= n {
                    write_chunk(client, b"")?;
                    return Ok(false);
                }
            }
            let mut line = Vec::new();
            let n = match events.read_until(b'\n', &mut line) {
                Ok(n) => n,
                Err(_) if closed.load(Ordering::SeqCst) => continue,
                Err(e) => return Err(e),
            };
            if closed.load(Ordering::SeqCst) {
                continue; // what was read after the close is lost
            }
            if n == 0 {
                write_chunk(client, b"")?;
                return Ok(true);
            }
            let error = serde_json::from_slice::<serde_json::Value>(&line)
                .ok()
                .filter(|e| e["type"] == "ERROR")
                .map(|e| e["object"]["code"].as_u64().unwrap_or(0) as u16);
            // Logged before it is passed on: a test that has read it sees it logged.
            sent += 1;
            update(shared, index, at, |r| {
                r.events = sent;
                r.watch_errors.extend(error);
            });
            write_chunk(client, &line)?;
        }
    }
}

/// A watch's place among the live ones ([`KubeProxy::close_watches`]), left when dropped.
struct LiveGuard<'a> {
    shared: &'a Shared,
    id: u64,
    closed: Arc<AtomicBool>,
}

impl<'a> LiveGuard<'a> {
    fn register(shared: &'a Shared, upstream: &TcpStream) -> io::Result<LiveGuard<'a>> {
        let closed = Arc::new(AtomicBool::new(false));
        let upstream = upstream.try_clone()?;
        let mut s = lock(&shared.state);
        let id = s.next_watch;
        s.next_watch += 1;
        s.watches.insert(
            id,
            LiveWatch {
                upstream,
                closed: Arc::clone(&closed),
            },
        );
        Ok(LiveGuard { shared, id, closed })
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.state).watches.remove(&self.id);
    }
}

fn connect_upstream(shared: &Shared, id: u64, admin: bool) -> io::Result<UpConn> {
    let up = &shared.upstream;
    let tcp = TcpStream::connect_timeout(&up.addr, Duration::from_secs(10))?;
    let _ = tcp.set_nodelay(true);
    // Registered, so that stopping the proxy ends it too.
    {
        let clone = tcp.try_clone()?;
        let mut registry = shared.conns.lock();
        if shared.conns.stopping() {
            return Err(io::Error::other("stopping"));
        }
        if let Some(streams) = registry.live.get_mut(&id) {
            streams.0.push(clone);
        }
    }
    let config = if admin { &up.admin } else { &up.anonymous };
    let name = ServerName::IpAddress(up.addr.ip().into());
    let conn = rustls::ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
    Ok(UpConn {
        io: BufReader::new(rustls::StreamOwned::new(conn, tcp.try_clone()?)),
        tcp,
        admin,
    })
}

/// Resets a connection: SO_LINGER 0, then close, sends RST.
fn reset(tcp: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is owned by `tcp`, alive for the duration of the call, and
    // `linger` is a valid option value of its size.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = tcp.shutdown(Shutdown::Both);
}

fn status_of(line: &str) -> Option<u16> {
    line.split(' ').nth(1)?.parse().ok()
}

/// A Kubernetes `Status` object.
fn status_body(code: u16, reason: &str, message: &str, retry_after: Option<u32>) -> String {
    let mut s = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(secs) = retry_after {
        s["details"] = serde_json::json!({"retryAfterSeconds": secs});
    }
    s.to_string()
}

fn answer(out: &mut ServerTls, code: u16, reason: &str, headers: &[(&str, &str)], body: &str) {
    let mut msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        msg.push_str(&format!("{n}: {v}\r\n"));
    }
    msg.push_str("\r\n");
    msg.push_str(body);
    let _ = out.write_all(msg.as_bytes());
    let _ = out.flush();
}

/// One chunk (the last one when `data` is empty), flushed.
fn write_chunk(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        out.write_all(b"0\r\n\r\n")?;
    } else {
        write!(out, "{:x}\r\n", data.len())?;
        out.write_all(data)?;
        out.write_all(b"\r\n")?;
    }
    out.flush()
}

/// The content of a chunked body, read as it arrives.
struct Chunked<'a, R: BufRead> {
    input: &'a mut R,
    /// Left of the current chunk; None between chunks.
    left: Option<u64>,
    done: bool,
}

impl<'a, R: BufRead> Chunked<'a, R> {
    fn new(input: &'a mut R) -> Self {
        Chunked {
            input,
            left: None,
            done: false,
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if (&mut *self.input).take(8 << 10).read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end().to_string())
    }
}

impl<R: BufRead> Read for Chunked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            match self.left {
                Some(0) => {
                    if !self.line()?.is_empty() {
                        return Err(io::Error::other("bad chunk end"));
                    }
                    self.left = None;
                }
                Some(left) => {
                    let want = buf.len().min(left as usize);
                    let n = self.input.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    self.left = Some(left - n as u64);
                    return Ok(n);
                }
                None => {
                    let line = self.line()?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16)
                        .map_err(|_| io::Error::other("bad chunk size"))?;
                    if size == 0 {
                        while !self.line()?.is_empty() {} // trailers
                        self.done = true;
                    } else {
                        self.left = Some(size);
                    }
                }
            }
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn seed_from_clock() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) | 1
}

/// xorshift64*: a uniform draw in [0, 1).
fn next_f64(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_decode() {
        let r = Request {
            method: "GET".into(),
            path: "/api/v1/namespaces/ci/pods".into(),
            query: "labelSelector=sykli.io%2Frun%3Dr1&watch=true&x".into(),
            status: 200,
            watch: true,
            at: Duration::ZERO,
            duration: Duration::ZERO,
            fault: None,
            events: 0,
            watch_errors: vec![],
        };
        assert_eq!(r.param("labelSelector").as_deref(), Some("sykli.io/run=r1"));
        assert_eq!(r.param("watch").as_deref(), Some("true"));
        assert_eq!(r.param("x").as_deref(), Some(""));
        assert_eq!(r.param("y"), None);
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn chunked_bodies_decode_as_they_come() {
        let mut raw: &[u8] = b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\nT: 1\r\n\r\nNEXT";
        let mut out = String::new();
        Chunked::new(&mut raw).read_to_string(&mut out).unwrap();
        assert_eq!(out, "Wikipedia");
        assert_eq!(raw, b"NEXT");
    }

    #[test]
    fn rates_draw_repeatably() {
        let (mut a, mut b) = (7u64, 7u64);
        let xs: Vec<f64> = (0..5).map(|_| next_f64(&mut a)).collect();
        let ys: Vec<f64> = (0..5).map(|_| next_f64(&mut b)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
