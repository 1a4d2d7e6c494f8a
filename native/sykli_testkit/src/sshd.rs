//! A real OpenSSH server on 127.0.0.1 serving the bare git repositories under a directory,
//! for tests of cloning over `ssh://` (host key checking, key authentication).
//!
//! [`GitSshd::start`] runs `/usr/sbin/sshd -D -e -f <config>` from a private temporary
//! directory that holds everything it uses: a fresh ed25519 host key, a fresh ed25519
//! client key pair (no passphrase) whose public key is the only authorized key, a second
//! host key that is never served (for [`GitSshd::wrong_known_hosts_line`]), the config and
//! sshd's log. The login user is `root` (the tests run as root, so the repositories are
//! root's), with key authentication only.
//!
//! sshd runs git the way any ssh server does: `git-upload-pack '<path>'` through the login
//! shell of `root`, so that user's shell startup files and git config (`~/.gitconfig`)
//! apply on the server side. No `AcceptEnv`: the `GIT_PROTOCOL` that git's ssh client
//! sends is dropped, so fetches over this server speak protocol v0 (only advertised refs
//! can be fetched, see [`crate::git_server`]).
//!
//! Dropping the server sends SIGTERM to sshd's connection processes (open connections are
//! cut) and then to sshd, waits for it (SIGKILL after [`STOP_TIMEOUT`]) and removes the
//! temporary directory.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian installs the server. sshd re-executes itself, so the path must be absolute.
pub const SSHD: &str = "/usr/sbin/sshd";
/// How long sshd may take to listen.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dropping the server waits for sshd (and its connection processes) to exit after
/// SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports are picked by binding port 0 and releasing it, so another process may take one
/// before sshd binds it: sshd then exits, and is started again on another port.
const BIND_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(10);
/// sshd refuses to start without its privilege separation directory (which the Debian
/// package leaves to systemd's `RuntimeDirectory=`, so a container does not have it).
const PRIVSEP_DIR: &str = "/run/sshd";

/// An sshd serving `root`'s bare repositories on 127.0.0.1.
pub struct GitSshd {
    child: Child,
    port: u16,
    /// The served root, absolute, without a trailing `/`.
    root: String,
    client_key: PathBuf,
    known_hosts: String,
    wrong_known_hosts: String,
    log: PathBuf,
    /// Declared last: removed after `drop` has stopped sshd.
    _dir: TempDir,
}

impl GitSshd {
    /// Starts sshd on a free port of 127.0.0.1, serving the bare repositories under `root`,
    /// and returns once it accepts connections.
    pub fn start(root: &Path) -> io::Result<GitSshd> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(invalid(format!("{} is not a directory", root.display())));
        }
        let root = root
            .to_str()
            .ok_or_else(|| invalid(format!("{} is not UTF-8", root.display())))?
            .trim_end_matches('/')
            .to_string();

        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(PRIVSEP_DIR)?;

        let dir = tempfile::Builder::new().prefix("sykli-sshd-").tempdir()?;
        let path = |name: &str| dir.path().join(name);
        let host_key = path("host_key");
        let client_key = path("client_key");
        let wrong_host_key = path("wrong_host_key");
        let authorized_keys = path("authorized_keys");
        let config = path("sshd_config");
        let log = path("sshd.log");
        keygen(&host_key, "sykli-sshd-host")?;
        keygen(&client_key, "sykli-sshd-client")?;
        keygen(&wrong_host_key, "sykli-sshd-wrong-host")?;
        fs::copy(pub_path(&client_key), &authorized_keys)?;
        let host_pub = public_key(&host_key)?;
        let wrong_pub = public_key(&wrong_host_key)?;

        let mut last_log = String::new();
        for _ in 0..BIND_ATTEMPTS {
            let port = free_port()?;
            fs::write(
                &config,
                config_text(port, &host_key, &authorized_keys, &path("sshd.pid"))?,
            )?;
            let out = File::create(&log)?;
            let mut child = Command::new(SSHD)
                .arg("-D") // stay in the foreground: the child is sshd itself
                .arg("-e") // log to stderr (the log file), not syslog
                .arg("-f")
                .arg(&config)
                .env_clear() // sessions get their environment from sshd, not from us
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()?;
            match wait_listening(&mut child, port, &log) {
                Ok(()) => {
                    let host = format!("[127.0.0.1]:{port}");
                    return Ok(GitSshd {
                        child,
                        port,
                        root,
                        client_key,
                        known_hosts: format!("{host} {host_pub}"),
                        wrong_known_hosts: format!("{host} {wrong_pub}"),
                        log,
                        _dir: dir,
                    });
                }
                Err(Start::PortTaken) => last_log = read_lossy(&log),
                Err(Start::Failed(e)) => {
                    stop(&mut child);
                    return Err(e);
                }
            }
        }
        Err(io::Error::new(
            ErrorKind::AddrInUse,
            format!("sshd could not bind a port in {BIND_ATTEMPTS} attempts:\n{last_log}"),
        ))
    }

    /// `ssh://root@127.0.0.1:PORT/<abs root>/<repo>`.
    pub fn url(&self, repo: &str) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}/{}",
            self.port,
            self.root,
            repo.trim_start_matches('/')
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client's private key (ed25519, no passphrase, mode 0600), the only one sshd
    /// accepts.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA…`: the known_hosts line of this server.
    pub fn known_hosts_line(&self) -> &str {
        &self.known_hosts
    }

    /// The same host pattern with another ed25519 key, one this server never presents.
    pub fn wrong_known_hosts_line(&self) -> &str {
        &self.wrong_known_hosts
    }

    /// sshd's output so far (LogLevel VERBOSE: connections, accepted and refused keys). Its
    /// first connection is the readiness check of [`GitSshd::start`].
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for GitSshd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, msg)
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn pub_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// A new ed25519 key pair without passphrase at `path` and `path.pub`.
fn keygen(path: &Path, comment: &str) -> io::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ssh-keygen {}: {}\n{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// `ssh-ed25519 AAAA…` of a key pair, without its comment.
fn public_key(key: &Path) -> io::Result<String> {
    let text = fs::read_to_string(pub_path(key))?;
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [kind, blob, ..] => Ok(format!("{kind} {blob}")),
        _ => Err(io::Error::other(format!("unexpected public key {text:?}"))),
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A config token, double-quoted (sshd_config's quoting) so that paths may hold spaces.
fn quoted(path: &Path) -> io::Result<String> {
    let s = path
        .to_str()
        .filter(|s| !s.contains(['"', '\n', '\r']))
        .ok_or_else(|| invalid(format!("unusable path for sshd_config: {path:?}")))?;
    Ok(format!("\"{s}\""))
}

fn config_text(
    port: u16,
    host_key: &Path,
    authorized_keys: &Path,
    pid_file: &Path,
) -> io::Result<String> {
    Ok(format!(
        "\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {pid_file}
LogLevel VERBOSE
# Key authentication only, as root (the tests run as root).
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AuthorizedKeysFile {authorized_keys}
# No PAM: nothing of the host's login stack (and no pam_systemd) in the way.
UsePAM no
# The temporary directory's owner and modes are not sshd's business.
StrictModes no
# git needs a command channel and nothing else.
DisableForwarding yes
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTTY no
PermitUserRC no
# No AcceptEnv and no SetEnv: sessions get sshd's own environment only.
# Concurrent clients past the default 10 unauthenticated connections are not dropped.
MaxStartups 100
",
        host_key = quoted(host_key)?,
        pid_file = quoted(pid_file)?,
        authorized_keys = quoted(authorized_keys)?,
    ))
}

enum Start {
    /// sshd exited because the port was taken: try another one.
    PortTaken,
    Failed(io::Error),
}

/// Waits until the sshd just spawned listens on `port`: its log says so (which tells it
/// from another process that took the port meanwhile) and a connection to the port gets
/// sshd's greeting.
fn wait_listening(child: &mut Child, port: u16, log: &Path) -> Result<(), Start> {
    let listening = format!("Server listening on 127.0.0.1 port {port}.");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                let text = read_lossy(log);
                return Err(if text.contains("Address already in use") {
                    Start::PortTaken
                } else {
                    Start::Failed(io::Error::other(format!("sshd exited ({status}):\n{text}")))
                });
            }
            Err(e) => return Err(Start::Failed(e)),
        }
        if read_lossy(log).contains(&listening) && greets(&addr) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Start::Failed(io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "sshd did not listen on port {port} within {START_TIMEOUT:?}:\n{}",
                    read_lossy(log)
                ),
            )));
        }
        thread::sleep(POLL);
    }
}

/// Whether the server at `addr` sends an SSH identification line. Its connection process
/// sends it, so by then sshd has accepted the connection and forked for it: a server
/// dropped right after starting finds that process among its children (see [`stop`]).
fn greets(addr: &SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut banner = [0u8; 4];
    conn.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

/// Ends sshd's connection processes, then sshd itself: SIGTERM, then SIGKILL if sshd is
/// still running after [`STOP_TIMEOUT`]; always reaped.
fn stop(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return; // already reaped: its pid may belong to another process by now
    }
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    let deadline = Instant::now() + STOP_TIMEOUT;
    // Connection processes call setsid(), so sshd's exit does not end them: they would
    // outlive the server (and its temporary directory) and, orphaned, be left to init to
    // reap. So they go first, while sshd is there to reap them.
    let mut signalled = HashSet::new();
    loop {
        let conns = children_of(pid);
        if conns.is_empty() || Instant::now() >= deadline {
            break;
        }
        for conn in conns {
            if signalled.insert(conn) {
                // SAFETY: plain syscall. `conn` is a child of the live sshd, which alone
                // could reap it (and free its pid) between the scan and now.
                unsafe { libc::kill(conn, libc::SIGTERM) };
            }
        }
        thread::sleep(POLL);
    }
    // SAFETY: plain syscall on our own child, which has not been reaped (checked above).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(None) => thread::sleep(POLL),
            _ => return,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The processes whose parent is `pid`, from `/proc/<pid>/stat`.
fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&p| {
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
                    == Some(pid)
            })
        })
        .collect()
}
