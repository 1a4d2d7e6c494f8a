//! The git servers of `sykli_testkit::git_server`, driven by the real git client on real
//! repositories made with the git CLI.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use sykli_testkit::git_server::{GitDaemon, RequestRecord, ServerOptions, SmartHttp, STOP_TIMEOUT};
use tempfile::TempDir;

mod support;
use support::{git_command, ok, path, stderr};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn git(dir: &Path, args: &[&str]) -> Output {
    git_command(dir, args).output().expect("run git")
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    ok(git(dir, args), &format!("git {args:?}"))
}

/// A bare `<root>/repo.git` with `commits` commits on `main`, each rewriting a 32 KiB file
/// of incompressible-ish text, so that packs grow with history.
struct Fixture {
    tmp: TempDir,
    root: PathBuf,
    work: PathBuf,
    commits: Vec<String>,
}

impl Fixture {
    fn new(commits: usize) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let work = tmp.path().join("work");
        let root = tmp.path().join("root");
        fs::create_dir_all(&root).expect("mkdir root");
        git_ok(tmp.path(), &["init", "-q", "-b", "main", path(&work)]);
        let mut shas = Vec::new();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..commits {
            let mut data = String::with_capacity(32 << 10);
            while data.len() < 32 << 10 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                data.push_str(&format!("{:016x}\n", state));
            }
            fs::write(work.join("data.txt"), data).expect("write data");
            fs::write(work.join("README"), format!("commit {i}\n")).expect("write readme");
            git_ok(&work, &["add", "-A"]);
            git_ok(&work, &["commit", "-q", "-m", &format!("commit {i}")]);
            shas.push(git_ok(&work, &["rev-parse", "HEAD"]));
        }
        git_ok(
            tmp.path(),
            &[
                "clone",
                "-q",
                "--bare",
                path(&work),
                path(&root.join("repo.git")),
            ],
        );
        Fixture {
            tmp,
            root,
            work,
            commits: shas,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `git init` in a fresh directory.
    fn empty_repo(&self, name: &str) -> PathBuf {
        let dir = self.dir(name);
        git_ok(self.tmp.path(), &["init", "-q", path(&dir)]);
        dir
    }
}

/// The two servers behind one face, to run the same checks on both.
trait Served {
    fn url(&self, repo: &str) -> String;
    fn port(&self) -> u16;
    fn requests(&self) -> Vec<RequestRecord>;
    fn bytes_sent(&self) -> u64;
}

impl Served for GitDaemon {
    fn url(&self, repo: &str) -> String {
        GitDaemon::url(self, repo)
    }
    fn port(&self) -> u16 {
        GitDaemon::port(self)
    }
    fn requests(&self) -> Vec<RequestRecord> {
        GitDaemon::requests(self)
    }
    fn bytes_sent(&self) -> u64 {
        GitDaemon::bytes_sent(self)
    }
}

impl Served for SmartHttp {
    fn url(&self, repo: &str) -> String {
        SmartHttp::url(self, repo)
    }
    fn port(&self) -> u16 {
        SmartHttp::port(self)
    }
    fn requests(&self) -> Vec<RequestRecord> {
        SmartHttp::requests(self)
    }
    fn bytes_sent(&self) -> u64 {
        SmartHttp::bytes_sent(self)
    }
}

fn servers(root: &Path, opts: &ServerOptions) -> Vec<(&'static str, Box<dyn Served>)> {
    vec![
        (
            "git",
            Box::new(GitDaemon::start(root, opts.clone()).expect("start daemon")),
        ),
        (
            "http",
            Box::new(SmartHttp::start(root, opts.clone()).expect("start http")),
        ),
    ]
}

fn v0_only() -> ServerOptions {
    ServerOptions {
        protocol_v2: false,
        ..ServerOptions::default()
    }
}

fn pkt(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Sends `request` on a fresh connection and reads until the server closes.
fn raw_exchange(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.write_all(request).expect("send request");
    let mut out = Vec::new();
    // A reset after the answer is not the point of these tests.
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(reqs: &[RequestRecord]) -> Vec<u16> {
    reqs.iter().map(|r| r.status).collect()
}

#[test]
fn clone_over_git_and_http_matches_the_source() {
    let fx = Fixture::new(3);
    for (name, server) in servers(&fx.root, &ServerOptions::default()) {
        let dst = fx.dir(&format!("clone-{name}"));
        git_ok(
            fx.tmp.path(),
            &["clone", "-q", &server.url("repo.git"), path(&dst)],
        );
        assert_eq!(
            git_ok(&dst, &["rev-parse", "HEAD"]),
            *fx.commits.last().unwrap(),
            "{name}"
        );
        assert_eq!(
            git_ok(&dst, &["rev-list", "--count", "HEAD"]),
            "3",
            "{name}"
        );
        assert_eq!(
            fs::read(dst.join("data.txt")).unwrap(),
            fs::read(fx.work.join("data.txt")).unwrap(),
            "{name}"
        );

        let reqs = server.requests();
        assert!(!reqs.is_empty(), "{name}");
        assert!(reqs.iter().all(|r| r.status == 200), "{name}: {reqs:#?}");
        assert!(reqs.iter().all(|r| r.bytes_in > 0), "{name}: {reqs:#?}");
        let total: u64 = reqs.iter().map(|r| r.bytes_out).sum();
        assert_eq!(total, server.bytes_sent(), "{name}");
        // The client asks for v2 (git's default).
        assert!(
            reqs.iter()
                .all(|r| r.git_protocol.as_deref() == Some("version=2")),
            "{name}: {reqs:#?}"
        );
        if name == "git" {
            assert_eq!(reqs.len(), 1, "one connection: {reqs:#?}");
            assert_eq!(reqs[0].method, "git");
            assert_eq!(reqs[0].path, "git-upload-pack /repo.git");
        } else {
            assert_eq!(reqs[0].method, "GET");
            assert_eq!(reqs[0].path, "/repo.git/info/refs?service=git-upload-pack");
            assert!(reqs[1..]
                .iter()
                .all(|r| r.method == "POST" && r.path == "/repo.git/git-upload-pack"));
        }
    }
}

#[test]
fn fetch_by_a_non_tip_sha_works_on_a_v2_server() {
    let fx = Fixture::new(3);
    let sha = &fx.commits[1];
    for (name, server) in servers(&fx.root, &ServerOptions::default()) {
        let dir = fx.empty_repo(&format!("fetch-{name}"));
        git_ok(&dir, &["fetch", "--depth=1", &server.url("repo.git"), sha]);
        git_ok(&dir, &["cat-file", "-e", &format!("{sha}^{{commit}}")]);
        assert_eq!(git_ok(&dir, &["rev-parse", "FETCH_HEAD"]), *sha, "{name}");
        assert_eq!(
            git_ok(&dir, &["rev-list", "--count", "FETCH_HEAD"]),
            "1",
            "{name}"
        );
    }
}

#[test]
fn a_v0_only_server_refuses_unadvertised_objects_though_the_client_asks_for_v2() {
    let fx = Fixture::new(3);
    let sha = &fx.commits[1];
    for (name, server) in servers(&fx.root, &v0_only()) {
        let dir = fx.empty_repo(&format!("fetch-{name}"));
        let out = git(&dir, &["fetch", "--depth=1", &server.url("repo.git"), sha]);
        assert!(!out.status.success(), "{name}: fetch by sha succeeded");
        assert!(
            stderr(&out).contains("unadvertised object"),
            "{name}: {}",
            stderr(&out)
        );
        let reqs = server.requests();
        assert!(
            reqs.iter()
                .all(|r| r.git_protocol.as_deref() == Some("version=2")),
            "{name}: the client asked for v2: {reqs:#?}"
        );
        // Advertised refs are still served.
        git_ok(
            &dir,
            &["fetch", "--depth=1", &server.url("repo.git"), "main"],
        );
        assert_eq!(
            git_ok(&dir, &["rev-parse", "FETCH_HEAD"]),
            *fx.commits.last().unwrap()
        );
    }
}

#[test]
fn a_v0_server_with_allow_reachable_sha1_in_want_serves_a_non_tip_sha() {
    let fx = Fixture::new(3);
    let sha = &fx.commits[1];
    let opts = ServerOptions {
        allow_reachable_sha1_in_want: true,
        ..v0_only()
    };
    for (name, server) in servers(&fx.root, &opts) {
        let dir = fx.empty_repo(&format!("fetch-{name}"));
        git_ok(&dir, &["fetch", "--depth=1", &server.url("repo.git"), sha]);
        assert_eq!(git_ok(&dir, &["rev-parse", "FETCH_HEAD"]), *sha, "{name}");
    }
}

/// The direct evidence of the protocol each server speaks, whatever the client asked.
#[test]
fn the_version_answered_follows_protocol_v2_on_both_servers() {
    let fx = Fixture::new(1);
    let daemon_request = pkt(b"git-upload-pack /repo.git\0host=127.0.0.1\0\0version=2\0");
    let mut daemon_exchange = daemon_request.clone();
    daemon_exchange.extend_from_slice(b"0000");
    let http_request = "GET /repo.git/info/refs?service=git-upload-pack HTTP/1.1\r\n\
                        Host: 127.0.0.1\r\nGit-Protocol: version=2\r\n\r\n";

    for (v2, opts) in [(true, ServerOptions::default()), (false, v0_only())] {
        let daemon = GitDaemon::start(&fx.root, opts.clone()).unwrap();
        let answer = raw_exchange(daemon.port(), &daemon_exchange);
        assert_eq!(
            answer.contains("version 2"),
            v2,
            "daemon, v2={v2}: {answer:?}"
        );
        assert_eq!(
            answer.contains("refs/heads/main"),
            !v2,
            "daemon, v2={v2}: a v0 server advertises its refs at once: {answer:?}"
        );

        let http = SmartHttp::start(&fx.root, opts).unwrap();
        let answer = raw_exchange(http.port(), http_request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
        assert_eq!(
            answer.contains("# service=git-upload-pack"),
            !v2,
            "http, v2={v2}: {answer:?}"
        );
        assert_eq!(
            answer.contains("version 2"),
            v2,
            "http, v2={v2}: {answer:?}"
        );
        assert_eq!(
            answer.contains("refs/heads/main"),
            !v2,
            "http, v2={v2}: {answer:?}"
        );
    }
}

#[test]
fn fail_first_fails_the_first_two_requests() {
    let fx = Fixture::new(1);
    let opts = ServerOptions {
        fail_first: 2,
        ..ServerOptions::default()
    };
    for (name, server) in servers(&fx.root, &opts) {
        let url = server.url("repo.git");
        for attempt in 1..=2 {
            let out = git(fx.tmp.path(), &["ls-remote", &url]);
            assert!(!out.status.success(), "{name}: attempt {attempt} succeeded");
            if name == "http" {
                assert!(stderr(&out).contains("503"), "{}", stderr(&out));
            }
        }
        let refs = git_ok(fx.tmp.path(), &["ls-remote", &url]);
        assert!(refs.contains("refs/heads/main"), "{name}: {refs}");

        let reqs = server.requests();
        assert!(reqs.len() >= 3, "{name}: {reqs:#?}");
        assert_eq!(statuses(&reqs[..2]), [503, 503], "{name}: {reqs:#?}");
        assert!(
            reqs[2..].iter().all(|r| r.status == 200),
            "{name}: {reqs:#?}"
        );
    }
}

#[test]
fn basic_auth_guards_http() {
    let fx = Fixture::new(2);
    let opts = ServerOptions {
        basic_auth: Some(("user".to_string(), "s3cret".to_string())),
        ..ServerOptions::default()
    };
    let server = SmartHttp::start(&fx.root, opts).unwrap();
    let port = server.port();

    let dir = fx.empty_repo("anonymous");
    let out = git(&dir, &["fetch", &server.url("repo.git"), "main"]);
    assert!(!out.status.success(), "fetched without credentials");
    let reqs = server.requests();
    assert_eq!(statuses(&reqs), [401], "{reqs:#?}");
    assert!(!reqs[0].authorization_present);

    let wrong = format!("http://user:nope@127.0.0.1:{port}/repo.git");
    let out = git(&dir, &["fetch", &wrong, "main"]);
    assert!(!out.status.success(), "fetched with a wrong password");
    assert!(
        stderr(&out).contains("Authentication failed"),
        "{}",
        stderr(&out)
    );
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .any(|r| r.status == 401 && r.authorization_present),
        "{reqs:#?}"
    );

    let before = server.requests().len();
    let good = format!("http://user:s3cret@127.0.0.1:{port}/repo.git");
    git_ok(&dir, &["fetch", &good, "main"]);
    assert_eq!(
        git_ok(&dir, &["rev-parse", "FETCH_HEAD"]),
        *fx.commits.last().unwrap()
    );
    let reqs = server.requests();
    let after = &reqs[before..];
    // curl asks anonymously first, then answers the challenge.
    assert!(
        after
            .iter()
            .all(|r| r.status == 200 && r.authorization_present
                || r.status == 401 && !r.authorization_present),
        "{after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|r| r.status == 200 && r.path.ends_with("/git-upload-pack")),
        "{after:#?}"
    );
}

#[test]
fn bytes_sent_grows_with_a_clone_and_a_shallow_fetch_sends_less() {
    let fx = Fixture::new(12);
    for (name, server) in servers(&fx.root, &ServerOptions::default()) {
        let start = server.bytes_sent();
        git_ok(
            fx.tmp.path(),
            &[
                "clone",
                "-q",
                &server.url("repo.git"),
                path(&fx.dir(&format!("full-{name}"))),
            ],
        );
        let after_clone = server.bytes_sent();
        let dir = fx.empty_repo(&format!("shallow-{name}"));
        git_ok(
            &dir,
            &["fetch", "--depth=1", &server.url("repo.git"), "main"],
        );
        let after_fetch = server.bytes_sent();

        let full = after_clone - start;
        let shallow = after_fetch - after_clone;
        assert!(
            full > 12 * 10_000,
            "{name}: a full clone sent only {full} bytes"
        );
        assert!(shallow > 0, "{name}");
        assert!(
            shallow * 4 < full,
            "{name}: shallow fetch {shallow} bytes vs full clone {full}"
        );
        let total: u64 = server.requests().iter().map(|r| r.bytes_out).sum();
        assert_eq!(total, after_fetch, "{name}");
    }
}

#[test]
fn concurrent_clones_all_succeed() {
    let fx = Fixture::new(4);
    let tip = fx.commits.last().unwrap().clone();
    for (name, server) in servers(&fx.root, &ServerOptions::default()) {
        let url = server.url("repo.git");
        thread::scope(|scope| {
            let clones: Vec<_> = (0..6)
                .map(|i| {
                    let dst = fx.dir(&format!("par-{name}-{i}"));
                    let url = url.clone();
                    let parent = fx.tmp.path();
                    scope.spawn(move || {
                        git_ok(parent, &["clone", "-q", &url, path(&dst)]);
                        git_ok(&dst, &["rev-parse", "HEAD"])
                    })
                })
                .collect();
            for clone in clones {
                assert_eq!(clone.join().expect("clone thread"), tip, "{name}");
            }
        });
        let reqs = server.requests();
        assert!(reqs.iter().all(|r| r.status == 200), "{name}: {reqs:#?}");
        if name == "git" {
            assert_eq!(reqs.len(), 6);
        }
    }
}

#[test]
fn a_missing_repository_is_a_404() {
    let fx = Fixture::new(1);
    for (name, server) in servers(&fx.root, &ServerOptions::default()) {
        let out = git(fx.tmp.path(), &["ls-remote", &server.url("nope.git")]);
        assert!(!out.status.success(), "{name}");
        let reqs = server.requests();
        assert_eq!(statuses(&reqs), [404], "{name}: {reqs:#?}");
    }
}

#[test]
fn malformed_requests_are_recorded_as_400() {
    let fx = Fixture::new(1);

    let http = SmartHttp::start(&fx.root, ServerOptions::default()).unwrap();
    let answer = raw_exchange(http.port(), b"this is not http\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    let answer = raw_exchange(
        http.port(),
        b"POST /repo.git/git-upload-pack HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    assert_eq!(statuses(&http.requests()), [400, 400]);

    let daemon = GitDaemon::start(&fx.root, ServerOptions::default()).unwrap();
    let answer = raw_exchange(daemon.port(), b"zzzznonsense");
    assert_eq!(answer, "");
    let reqs = daemon.requests();
    assert_eq!(statuses(&reqs), [400], "{reqs:#?}");
    assert_eq!(reqs[0].path, "");
}

#[test]
fn http_accepts_chunked_request_bodies() {
    let fx = Fixture::new(1);
    let http = SmartHttp::start(&fx.root, ServerOptions::default()).unwrap();
    // A protocol v2 ls-refs command, sent in two chunks.
    let mut body = pkt(b"command=ls-refs\n");
    body.extend_from_slice(b"0000");
    let (a, b) = body.split_at(7);
    let mut request = b"POST /repo.git/git-upload-pack HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        Content-Type: application/x-git-upload-pack-request\r\n\
        Accept: application/x-git-upload-pack-result\r\n\
        Git-Protocol: version=2\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for chunk in [a, b] {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");

    let answer = raw_exchange(http.port(), &request);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(
        answer.contains(&format!("{} refs/heads/main", fx.commits[0])),
        "{answer:?}"
    );
    let reqs = http.requests();
    assert_eq!(reqs[0].bytes_in, request.len() as u64, "{reqs:#?}");
}

/// Many distinct wants make large upload-pack requests: git gzips a v0 request body over
/// 1 KiB, and sends a request larger than `http.postBuffer` chunked.
#[test]
fn http_serves_large_gzipped_and_chunked_requests() {
    const BRANCHES: usize = 3000;
    let fx = Fixture::new(1);
    let repo = fx.root.join("many.git");
    git_ok(fx.tmp.path(), &["init", "-q", "--bare", path(&repo)]);
    let mut stream = String::new();
    for i in 0..BRANCHES {
        let message = format!("branch {i}");
        stream.push_str(&format!(
            "commit refs/heads/b{i}\ncommitter T <t@sykli.invalid> {} +0000\ndata {}\n{message}\n\n",
            1_700_000_000 + i,
            message.len()
        ));
    }
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(&repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("git fast-import");
    import
        .stdin
        .take()
        .unwrap()
        .write_all(stream.as_bytes())
        .unwrap();
    assert!(import.wait().unwrap().success());

    for (opts, post_buffer) in [
        (v0_only(), None),                          // gzip
        (v0_only(), Some("http.postBuffer=65536")), // chunked
        (ServerOptions::default(), Some("http.postBuffer=65536")),
    ] {
        let http = SmartHttp::start(&fx.root, opts.clone()).unwrap();
        let dst = fx.dir(&format!(
            "many-{}-{}",
            opts.protocol_v2,
            post_buffer.is_some()
        ));
        let url = http.url("many.git");
        let mut args = Vec::new();
        if let Some(config) = post_buffer {
            args.extend(["-c", config]);
        }
        args.extend(["clone", "-q", "--bare", &url, path(&dst)]);
        git_ok(fx.tmp.path(), &args);
        let refs = git_ok(&dst, &["for-each-ref", "--format=%(refname)"]);
        assert_eq!(refs.lines().count(), BRANCHES);
        let reqs = http.requests();
        assert!(reqs.iter().all(|r| r.status == 200), "{reqs:#?}");
        assert!(reqs.iter().any(|r| r.bytes_in > 65536), "{reqs:#?}");
    }
}

#[test]
fn dropping_a_server_frees_its_port() {
    let fx = Fixture::new(1);
    for (name, server) in servers(&fx.root, &ServerOptions::default()) {
        git_ok(fx.tmp.path(), &["ls-remote", &server.url("repo.git")]);
        let port = server.port();
        drop(server);
        let err = TcpStream::connect(("127.0.0.1", port)).expect_err(name);
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{name}");
    }
}

#[test]
fn dropping_a_server_ends_connections_in_flight() {
    let fx = Fixture::new(1);

    let daemon = GitDaemon::start(&fx.root, ServerOptions::default()).unwrap();
    // A v2 session left open: the daemon child waits for a command.
    let mut session = TcpStream::connect(("127.0.0.1", daemon.port())).unwrap();
    session.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    session
        .write_all(&pkt(
            b"git-upload-pack /repo.git\0host=127.0.0.1\0\0version=2\0",
        ))
        .unwrap();
    let mut first = [0u8; 4];
    session.read_exact(&mut first).unwrap(); // the child is running
                                             // And a connection that never sends anything.
    let silent = TcpStream::connect(("127.0.0.1", daemon.port())).unwrap();
    silent.set_read_timeout(Some(IO_TIMEOUT)).unwrap();

    let http = SmartHttp::start(&fx.root, ServerOptions::default()).unwrap();
    let mut partial = TcpStream::connect(("127.0.0.1", http.port())).unwrap();
    partial.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    partial
        .write_all(b"GET /repo.git/info/refs HTTP/1.1\r\n")
        .unwrap();

    let started = Instant::now();
    drop(daemon);
    drop(http);
    assert!(started.elapsed() < STOP_TIMEOUT, "{:?}", started.elapsed());
    for (name, mut conn) in [
        ("session", session),
        ("silent", silent),
        ("partial", partial),
    ] {
        let mut rest = Vec::new();
        // The server's end is closed: end of stream (or a reset), not a timeout.
        match conn.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{name}: {e}"
            ),
        }
    }
}
