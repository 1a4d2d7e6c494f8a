//! A real S3-compatible server on 127.0.0.1 for tests: `s3s-fs` (crates.io `s3s-fs`
//! [`S3S_FS_VERSION`], the file-system backend of the `s3s` S3 service library), built by
//! scripts/setup into `~/.cache/sykli/tools` (`SYKLI_TOOLS` overrides it).
//!
//! Why this one: it was picked by testing candidates with boto3-signed requests. s3s-fs
//! verifies SigV4 header signatures (`UNSIGNED-PAYLOAD` and real payload hashes, the hash
//! checked against the body: a mismatch is refused, though as `500 InternalError` where AWS
//! says `400 XAmzContentSHA256Mismatch`) and presigned URLs, and rejects an expired
//! presigned URL (`403 AccessDenied`, "Request has expired"). moto's server (5.2.5, with
//! its IAM auth enforced through `INITIAL_NO_AUTH_ACTION_COUNT`) verifies header signatures
//! but answers every presigned URL, fresh, expired or forged, with a 500 (it reads the
//! signature from the `Authorization` header only), so it can test neither.
//!
//! * Endpoint: [`S3Server::endpoint`], `http://127.0.0.1:PORT`, path-style requests only
//!   (`http://127.0.0.1:PORT/<bucket>/<key>`; no virtual-host style).
//! * Credentials: one static key pair, random per server ([`S3Server::access_key`],
//!   [`S3Server::secret_key`]). A wrong secret is `403 SignatureDoesNotMatch`, an unknown
//!   access key `403 NotSignedUp`, an unsigned request `403 AccessDenied`. Not checked:
//!   the region of the credential scope (any region signs; [`REGION`] is the one to use)
//!   and `X-Amz-Security-Token` (ignored). There is no STS.
//! * Presigned URLs: `X-Amz-Date` more than 15 minutes in the future is
//!   `403 RequestTimeTooSkewed`; an `X-Amz-Expires` above AWS' 604800 s is accepted.
//! * Storage: a bucket is the directory `<dir>/data/<bucket>` ([`S3Server::create_bucket`]
//!   makes it, as the server's own CreateBucket does), an object the plain file
//!   `<dir>/data/<bucket>/<key>` ([`S3Server::object_path`]): overwrite it to corrupt the
//!   object. Each object's user metadata and ETag/checksums live in sidecar files
//!   `<dir>/data/.bucket-<b64(bucket)>.object-<b64(key)>.{metadata,internal}.json`
//!   (URL-safe base64 without padding), so a corrupted file is still served with the ETag
//!   of what was uploaded.
//! * Missing buckets: a PUT into a bucket that does not exist creates it (AWS answers
//!   `NoSuchBucket`) and a GET in one is `404 NoSuchKey`; HeadBucket (`404`) or a listing
//!   tells a missing bucket.
//! * Multipart: parts under 5 MiB but the last are `400 EntityTooSmall` at completion, as
//!   on AWS; the completed object's ETag is `"<hex>-<parts>"`.
//! * Request log (each request and response, errors with their reason):
//!   `<dir>/s3s-fs.log` ([`S3Server::log_path`]).
//! * HTTPS: s3s-fs serves plain HTTP; [`S3Server::tls_front`] puts a TLS terminator of a
//!   private CA made on the spot ([`crate::tls`]) in front of it, as a bucket behind a
//!   private CA (an in-cluster MinIO) is: `https://127.0.0.1:PORT`, the bytes relayed
//!   unchanged (so signatures made for its host verify).
//!
//! The server runs until the handle is dropped, or until the test process dies: a watchdog
//! (`sh`, reading a pipe from this process) kills it when the pipe closes.

use crate::launch;
use crate::server::{lock, Conn, Conns, Listener};
use crate::tls;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long [`S3Server::start`] waits for the server to listen.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The s3s-fs release scripts/setup installs (and [`S3Server::start`] insists on).
pub const S3S_FS_VERSION: &str = "0.14.0";

/// The region clients should sign for (s3s-fs does not check it).
pub const REGION: &str = "us-east-1";

/// What s3s-fs logs: its start line (which carries the port), each request and response
/// (`s3s::service`), and the reason of every rejected request (`s3s::ops`).
const LOG_FILTER: &str = "s3s_fs=info,s3s=info,s3s::service=debug";

/// The line s3s-fs logs once its socket listens, followed by the address.
const LISTENING: &str = "server is running at http://";

/// Kills the process `$1` when standard input reaches EOF.
const WATCHDOG: &str = r#"cat >/dev/null; kill -KILL "$1" 2>/dev/null"#;

/// An s3s-fs server process, killed on drop.
pub struct S3Server {
    child: Child,
    watchdog: Option<(Child, Option<ChildStdin>)>,
    port: u16,
    access_key: String,
    secret_key: String,
    root: PathBuf,
    log: PathBuf,
}

impl S3Server {
    /// Starts s3s-fs on a free port of 127.0.0.1 with a fresh random key pair, storing
    /// under `dir/data` (its log goes to `dir/s3s-fs.log`), and returns once the port
    /// accepts connections.
    ///
    /// A missing or different s3s-fs is an error that says to run scripts/setup.
    pub fn start(dir: &Path) -> io::Result<S3Server> {
        let bin = s3s_fs_bin()?;
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let root = dir.join("data");
        fs::create_dir_all(&root)?;
        let log = dir.join("s3s-fs.log");
        let access_key = format!("AKIA{}", random_hex(8)?.to_uppercase());
        let secret_key = random_hex(20)?;

        let log_file = OpenOptions::new().create(true).append(true).open(&log)?;
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(&root)
            .current_dir(&dir)
            .env_clear()
            .env("RUST_LOG", LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file.try_clone()?)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = S3Server {
            child,
            watchdog: None,
            port: 0,
            access_key,
            secret_key,
            root,
            log,
        };
        let watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, "sh", &server.child.id().to_string()])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match watchdog {
            Ok(mut w) => {
                let stdin = w.stdin.take();
                server.watchdog = Some((w, stdin));
            }
            Err(e) => return Err(server.startup_error(&format!("starting its watchdog: {e}"))),
        }

        // Copies s3s-fs' output to the log, reporting the port of its start line.
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || copy_log(stdout, log_file, tx));
        let deadline = Instant::now() + START_TIMEOUT;
        let port = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(port)) => port,
            Ok(Err(e)) => return Err(server.startup_error(&e)),
            Err(_) => {
                return Err(
                    server.startup_error(&format!("no port reported within {START_TIMEOUT:?}"))
                )
            }
        };
        server.port = port;
        // The socket listens before the line is logged, so one connection must succeed.
        match launch::answers(port, deadline) {
            Ok(()) => Ok(server),
            Err(e) => Err(server.startup_error(&e)),
        }
    }

    /// `http://127.0.0.1:PORT`, for path-style requests (`/<bucket>/<key>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// [`REGION`].
    pub fn region(&self) -> &'static str {
        REGION
    }

    /// The process id of s3s-fs.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding the buckets: `<dir>/data`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The environment an AWS SDK or CLI needs to use this server: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
    }

    /// Creates the bucket `bucket` (its directory, which is all s3s-fs' CreateBucket does)
    /// and returns its directory. `bucket` must be a valid S3 bucket name (3 to 63 of
    /// `a-z`, `0-9`, `.`, `-`, starting and ending with a letter or digit): s3s-fs refuses
    /// requests naming any other.
    pub fn create_bucket(&self, bucket: &str) -> io::Result<PathBuf> {
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a valid S3 bucket name: {bucket:?}"),
            ));
        }
        let path = self.bucket_path(bucket);
        fs::create_dir(&path)?;
        Ok(path)
    }

    /// The directory of bucket `bucket`: `<dir>/data/<bucket>`.
    pub fn bucket_path(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    /// The file holding object `key` of `bucket` once uploaded (by PUT or a completed
    /// multipart upload): `<dir>/data/<bucket>/<key>` (a key's `/` are directories). Holds
    /// for keys without empty, `.` or `..` segments.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.bucket_path(bucket).join(key.trim_start_matches('/'))
    }

    /// A TLS front for this server: `https://127.0.0.1:PORT` with a certificate of a CA of
    /// its own (IP SAN 127.0.0.1), relaying every connection to s3s-fs unchanged. Stops
    /// when dropped.
    pub fn tls_front(&self) -> io::Result<TlsFront> {
        let generated = tls::generate(
            "sykli test S3 CA",
            "s3s-fs",
            tls::Chain::Leaf,
            &[b"http/1.1"],
        )?;
        let config = generated.config;
        let upstream = self.port;
        let handshakes = Arc::new(Mutex::new(0u64));
        let counted = Arc::clone(&handshakes);
        let conns = Conns::new();
        let listener = Listener::start("s3-tls", &conns, move |stream, _| {
            let _ = relay_tls(&config, stream, upstream, &counted);
        })?;
        Ok(TlsFront {
            listener,
            ca_pem: generated.ca_pem,
            relayed: handshakes,
        })
    }

    /// The server's log file (each request and response, and why a request failed).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn startup_error(&mut self, what: &str) -> io::Error {
        self.stop();
        io::Error::other(format!(
            "s3s-fs failed to start: {what}\n{}",
            self.log().trim_end()
        ))
    }

    fn stop(&mut self) {
        // The watchdog first: it kills s3s-fs, which stays unreaped (so its pid cannot be
        // reused) until the wait below.
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = watchdog.wait();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TLS terminator in front of an [`S3Server`] ([`S3Server::tls_front`]).
pub struct TlsFront {
    listener: Listener<Relayed>,
    ca_pem: String,
    relayed: Arc<Mutex<u64>>,
}

impl TlsFront {
    /// `https://127.0.0.1:PORT`, for path-style requests.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.listener.addr().port())
    }

    /// The CA that signed its certificate, PEM: what a client must trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Connections whose TLS handshake succeeded (a client that trusted the certificate).
    pub fn relayed(&self) -> u64 {
        *lock(&self.relayed)
    }
}

struct Relayed(TcpStream);

impl Conn for Relayed {
    fn new(stream: TcpStream) -> Relayed {
        Relayed(stream)
    }
    fn end(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// How long a relayed connection may sit idle.
const RELAY_IDLE: Duration = Duration::from_secs(120);

/// Terminates TLS on `client` and relays the plaintext both ways to 127.0.0.1:`port`
/// until either side ends: one thread, poll(2) on both sockets.
fn relay_tls(
    config: &Arc<rustls::ServerConfig>,
    mut client: TcpStream,
    port: u16,
    handshakes: &Mutex<u64>,
) -> io::Result<()> {
    let mut up = TcpStream::connect(("127.0.0.1", port))?;
    let mut tls = rustls::ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut client_done = false;
    let mut established = false;
    loop {
        if !established && !tls.is_handshaking() {
            established = true;
            *lock(handshakes) += 1;
        }
        while tls.wants_write() {
            tls.write_tls(&mut client)?;
        }
        let mut fds = [
            libc::pollfd {
                fd: client.as_raw_fd(),
                events: if client_done { 0 } else { libc::POLLIN },
                revents: 0,
            },
            libc::pollfd {
                fd: up.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, RELAY_IDLE.as_millis() as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle"));
        }
        let ready =
            |f: &libc::pollfd| f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        if !client_done && ready(&fds[0]) {
            if tls.read_tls(&mut client)? == 0 {
                client_done = true;
                let _ = up.shutdown(Shutdown::Write);
            } else {
                tls.process_new_packets().map_err(io::Error::other)?;
                loop {
                    match io::Read::read(&mut tls.reader(), &mut buf) {
                        Ok(0) => {
                            client_done = true;
                            let _ = up.shutdown(Shutdown::Write);
                            break;
                        }
                        Ok(n) => up.write_all(&buf[..n])?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if ready(&fds[1]) {
            let n = io::Read::read(&mut up, &mut buf)?;
            if n == 0 {
                tls.send_close_notify();
                while tls.wants_write() {
                    tls.write_tls(&mut client)?;
                }
                return Ok(());
            }
            tls.writer().write_all(&buf[..n])?;
        }
    }
}

/// `s3s-fs` from the tools root scripts/setup installs into (`SYKLI_TOOLS`, else
/// `~/.cache/sykli/tools`), checked to be release [`S3S_FS_VERSION`].
fn s3s_fs_bin() -> io::Result<PathBuf> {
    let tools = std::env::var_os("SYKLI_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sykli/tools")
        });
    let bin = tools.join("bin/s3s-fs");
    let version = Command::new(&bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match version {
        Ok(v) if v == format!("s3s-fs {S3S_FS_VERSION}") => Ok(bin),
        Ok(v) => Err(io::Error::other(format!(
            "{} is {v:?}, not s3s-fs {S3S_FS_VERSION}: run scripts/setup",
            bin.display()
        ))),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{}: {e}: run scripts/setup", bin.display()),
        )),
    }
}

/// Appends each line of `output` to `log`; sends the port of the [`LISTENING`] line, or
/// why there was none.
fn copy_log(output: impl Read, mut log: File, tx: mpsc::Sender<Result<u16, String>>) {
    let mut reader = BufReader::new(output);
    let mut tx = Some(tx);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(format!("reading its output: {e}")));
                }
                return;
            }
        }
        let _ = log.write_all(line.as_bytes());
        if let Some(at) = line.find(LISTENING) {
            let addr = line[at + LISTENING.len()..].trim();
            let port = addr
                .parse::<SocketAddr>()
                .map(|a| a.port())
                .map_err(|_| format!("unexpected start line {:?}", line.trim()));
            if let Some(tx) = tx.take() {
                let _ = tx.send(port);
            }
        }
    }
    if let Some(tx) = tx.take() {
        let _ = tx.send(Err("it exited before reporting its port".to_string()));
    }
}

/// `bytes` random bytes from /dev/urandom, in hex.
fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
