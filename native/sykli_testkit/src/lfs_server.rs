//! A real Git LFS server on 127.0.0.1 for tests: giftless (PyPI `giftless`, Datopian's LFS
//! server, installed into the test venv by scripts/setup), with its local-disk storage
//! backend and anonymous read-write access.
//!
//! The server is giftless' own Flask application served by werkzeug's threaded WSGI server
//! (what `flask run` uses); the few lines of Python below only bind the socket on an
//! ephemeral port of 127.0.0.1, report that port, and stop the server when its standard
//! input closes (so a test process that dies takes the server with it).
//!
//! * Endpoint: `http://127.0.0.1:PORT/<org>/<repo>.git/info/lfs` (giftless' non-legacy
//!   endpoint layout; any `<org>/<repo>` works, each is its own object namespace). Put it
//!   in a repository's `.lfsconfig` (`[lfs] url = ...`).
//! * Transfers: the `basic` adapter streamed through giftless itself. The batch API answers
//!   anonymous requests; upload and download actions carry a short-lived JWT (an
//!   `Authorization` header for uploads, a `?jwt=` query parameter for downloads) that
//!   git-lfs passes back as told, so no credentials are ever asked for.
//! * Storage: `<dir>/objects/<org>/<repo>/<oid>` ([`LfsServer::object_path`]).
//! * No locking API: `POST .../locks/verify` answers 404, which git-lfs reports as a hint on
//!   push (the push still succeeds); set `lfs.locksverify=false` to silence it.
//! * Request log (werkzeug's access log) and Python errors: `<dir>/giftless.log`.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::launch;
use crate::validate::venv_bin;

/// How long [`LfsServer::start`] waits for the server to listen.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository namespace of [`LfsServer::url`].
pub const DEFAULT_ORG: &str = "sykli";
pub const DEFAULT_REPO: &str = "test";

/// Runs giftless' app on 127.0.0.1:0, prints `{"port": N}` once listening, serves until
/// standard input reaches EOF. Configuration comes from `GIFTLESS_CONFIG_STR`.
const LAUNCHER: &str = r#"
import json, os, sys, threading
from werkzeug.serving import make_server
from giftless.app import init_app

app = init_app()
server = make_server("127.0.0.1", 0, app, threaded=True)

def watch_stdin():
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)

threading.Thread(target=watch_stdin, daemon=True).start()
print(json.dumps({"port": server.server_port}), flush=True)
server.serve_forever()
"#;

/// A giftless LFS server process, killed on drop.
pub struct LfsServer {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    storage: PathBuf,
    log: PathBuf,
}

impl LfsServer {
    /// Starts giftless on a free port of 127.0.0.1, storing objects under `dir/objects`
    /// (its log goes to `dir/giftless.log`), and returns once the port accepts connections.
    ///
    /// Panics, like [`venv_bin`], when the venv is missing (run scripts/setup); a venv
    /// without giftless is a startup error whose message carries the Python traceback.
    pub fn start(dir: &Path) -> io::Result<LfsServer> {
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let storage = dir.join("objects");
        fs::create_dir_all(&storage)?;
        let log = dir.join("giftless.log");
        let config = serde_json::json!({
            "LEGACY_ENDPOINTS": false,
            "AUTH_PROVIDERS": ["giftless.auth.allow_anon:read_write"],
            "TRANSFER_ADAPTERS": {
                "basic": {
                    "factory": "giftless.transfer.basic_streaming:factory",
                    "options": {
                        "storage_class": "giftless.storage.local_storage:LocalStorage",
                        "storage_options": {"path": path_str(&storage)?},
                    },
                },
            },
        });
        let mut cmd = Command::new(venv_bin("python"));
        // -I: isolated mode (no PYTHON* variables, no user site, no cwd on sys.path).
        cmd.args(["-I", "-c", LAUNCHER])
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C.UTF-8")
            .env("GIFTLESS_CONFIG_STR", config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let deadline = Instant::now() + START_TIMEOUT;
        let mut server = LfsServer {
            child,
            stdin,
            port: 0,
            storage,
            log,
        };
        let port = match launch::reported_port(stdout, START_TIMEOUT) {
            Ok(port) => port,
            Err(e) => return Err(server.startup_error(&e)),
        };
        server.port = port;
        match launch::answers(port, deadline) {
            Ok(()) => Ok(server),
            Err(e) => Err(server.startup_error(&e)),
        }
    }

    /// The LFS endpoint of the default repository namespace, for `.lfsconfig`:
    /// `http://127.0.0.1:PORT/sykli/test.git/info/lfs`.
    pub fn url(&self) -> String {
        self.url_for(DEFAULT_ORG, DEFAULT_REPO)
    }

    /// The LFS endpoint of `<org>/<repo>` (a namespace of its own; `org` may contain `/`).
    pub fn url_for(&self, org: &str, repo: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}/{}.git/info/lfs",
            self.port,
            org.trim_matches('/'),
            repo.trim_matches('/').trim_end_matches(".git")
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where objects are stored: `<dir>/objects`.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// Where the object `oid` (sha256 hex) of the default namespace is stored once uploaded.
    pub fn object_path(&self, oid: &str) -> PathBuf {
        self.storage.join(DEFAULT_ORG).join(DEFAULT_REPO).join(oid)
    }

    /// Where the object `oid` of the namespace `<org>/<repo>` ([`LfsServer::url_for`]) is
    /// stored once uploaded: delete it and the server no longer has it.
    pub fn object_path_in(&self, org: &str, repo: &str, oid: &str) -> PathBuf {
        let mut p = self.storage.clone();
        p.extend(org.trim_matches('/').split('/'));
        p.join(repo.trim_matches('/').trim_end_matches(".git"))
            .join(oid)
    }

    /// Every object download so far (`GET .../objects/storage/<oid>`), in order, from the
    /// access log: what the server was asked for, whatever it answered.
    pub fn downloads(&self) -> Vec<LfsDownload> {
        self.log().lines().filter_map(parse_download).collect()
    }

    /// The server's log file (werkzeug's access log, one line per request, and errors).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn startup_error(&mut self, what: &str) -> io::Error {
        self.stop();
        let mut log = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut log);
        }
        io::Error::other(format!(
            "giftless LFS server failed to start: {what} (is giftless in the venv? run \
             scripts/setup)\n{}",
            log.trim_end()
        ))
    }

    fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LfsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One object download the server was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfsDownload {
    /// The namespace, `<org>/<repo>` as in [`LfsServer::url_for`] (without `.git`).
    pub namespace: String,
    /// The object's SHA-256, hex.
    pub oid: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// `... "GET /<org>/<repo>.git/info/lfs/objects/storage/<oid>?jwt=... HTTP/1.1" 200 -`
fn parse_download(line: &str) -> Option<LfsDownload> {
    let (_, request) = line.split_once("\"GET /")?;
    let (target, rest) = request.split_once(' ')?;
    let (namespace, object) = target.split_once(".git/info/lfs/objects/storage/")?;
    let oid = object.split('?').next()?;
    if oid.len() != 64 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let status = rest.split_once("\" ")?.1.split(' ').next()?.parse().ok()?;
    Some(LfsDownload {
        namespace: namespace.to_string(),
        oid: oid.to_string(),
        status,
    })
}

fn path_str(p: &Path) -> io::Result<&str> {
    p.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not UTF-8: {}", p.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_lines_of_the_access_log_parse() {
        let oid = "07fc36397fc754153e57df6de49a9505f8e2ed275cde199a89579c6ada6068ab";
        let line = format!(
            "2026-12-07 21:12:40,859 werkzeug        INFO 127.0.0.1 - - [07/Dec/2026 21:12:40] \
             \"GET /sykli/mono.git/info/lfs/objects/storage/{oid}?jwt=eyJ.x-Y HTTP/1.1\" 404 -"
        );
        assert_eq!(
            parse_download(&line),
            Some(LfsDownload {
                namespace: "sykli/mono".into(),
                oid: oid.into(),
                status: 404
            })
        );
        let batch = "... \"POST /sykli/mono.git/info/lfs/objects/batch HTTP/1.1\" 200 -";
        assert_eq!(parse_download(batch), None);
    }
}
