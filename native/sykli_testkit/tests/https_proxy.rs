//! HTTPS (private CA), basic authentication over HTTPS, and the logging HTTP proxy, driven
//! by the real git client (and the real `sykli-git-server` / `sykli-http-proxy` binaries) on
//! real repositories.
//!
//! Every git command runs with a cleared proxy environment (`NO_PROXY` included: curl
//! would otherwise skip the proxy for 127.0.0.1 if told so) and no TLS overrides from the
//! environment, so each test states exactly what git gets.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use sykli_testkit::git_server::{ServerOptions, SmartHttp};
use sykli_testkit::http_proxy::HttpProxy;
use tempfile::TempDir;

mod support;
use support::{failed, git_command, ok, path, Running};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const USER: &str = "sykli";
const PASS: &str = "s3cret-pw";

/// Environment variables that would change where git connects or what it trusts.
const CLEARED: &[&str] = &[
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "SSH_ASKPASS",
];

/// `timeout 120 git <args>` in `dir`, hermetic: no system or global config, no prompts, no
/// inherited GIT_* or proxy/TLS variables, `HOME` in the fixture; then `envs`.
fn git_with(dir: &Path, home: &Path, args: &[&str], envs: &[(&str, &OsStr)]) -> Output {
    let mut cmd = git_command(dir, args);
    for key in CLEARED {
        cmd.env_remove(key);
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    for (key, value) in envs {
        cmd.env(key, value);
    }
    cmd.output().expect("run git")
}

/// A bare `<root>/repo.git` with two commits on `main`.
struct Fixture {
    tmp: TempDir,
    root: PathBuf,
    work: PathBuf,
    head: String,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fx = Fixture {
            root: tmp.path().join("root"),
            work: tmp.path().join("work"),
            head: String::new(),
            tmp,
        };
        fs::create_dir_all(&fx.root).expect("mkdir root");
        fs::create_dir_all(fx.home()).expect("mkdir home");
        fx.git_ok(fx.tmp.path(), &["init", "-q", "-b", "main", path(&fx.work)]);
        for i in 0..2 {
            fs::write(fx.work.join("README"), format!("commit {i}\n")).expect("write");
            fx.git_ok(&fx.work, &["add", "-A"]);
            fx.git_ok(&fx.work, &["commit", "-q", "-m", &format!("commit {i}")]);
        }
        let head = fx.git_ok(&fx.work, &["rev-parse", "HEAD"]);
        fx.git_ok(
            fx.tmp.path(),
            &[
                "clone",
                "-q",
                "--bare",
                path(&fx.work),
                path(&fx.root.join("repo.git")),
            ],
        );
        Fixture { head, ..fx }
    }

    fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn git(&self, dir: &Path, args: &[&str], envs: &[(&str, &OsStr)]) -> Output {
        git_with(dir, &self.home(), args, envs)
    }

    fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        ok(self.git(dir, args, &[]), &format!("git {args:?}"))
    }

    /// `git clone -q <config…> <url> <tmp>/<name>`.
    fn clone(&self, name: &str, config: &[String], url: &str, envs: &[(&str, &OsStr)]) -> Output {
        let dst = self.dir(name);
        let mut args: Vec<&str> = Vec::new();
        for c in config {
            args.extend(["-c", c.as_str()]);
        }
        args.extend(["clone", "-q", url, path(&dst)]);
        self.git(self.tmp.path(), &args, envs)
    }

    fn cloned_head(&self, name: &str) -> String {
        self.git_ok(&self.dir(name), &["rev-parse", "HEAD"])
    }

    /// A `GIT_ASKPASS` program answering `user`/`pass`, and appending every prompt it gets
    /// to `<name>.prompts`.
    fn askpass(&self, name: &str, user: &str, pass: &str) -> (PathBuf, PathBuf) {
        let script = self.dir(name);
        let prompts = self.dir(&format!("{name}.prompts"));
        fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\ncase \"$1\" in\n  \
                 Username*) echo '{user}' ;;\n  *) echo '{pass}' ;;\nesac\n",
                path(&prompts)
            ),
        )
        .expect("write askpass");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        (script, prompts)
    }
}

fn tls() -> ServerOptions {
    ServerOptions {
        tls: true,
        ..ServerOptions::default()
    }
}

fn ca_file(server: &SmartHttp) -> &Path {
    server.ca_file().expect("a TLS server has a CA file")
}

fn ssl_ca_info(server: &SmartHttp) -> String {
    format!("http.sslCAInfo={}", path(ca_file(server)))
}

#[test]
fn https_is_trusted_only_with_the_servers_ca() {
    let fx = Fixture::new();
    let server = SmartHttp::start(&fx.root, tls()).expect("start https");
    let url = server.url("repo.git");
    assert_eq!(url, format!("https://127.0.0.1:{}/repo.git", server.port()));
    let pem = server.ca_pem().expect("CA PEM");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(fs::read_to_string(ca_file(&server)).expect("read CA"), pem);

    // Not trusted by default: the handshake fails, and is no request.
    let err = failed(
        fx.git(fx.tmp.path(), &["ls-remote", &url], &[]),
        "ls-remote without the CA",
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(server.requests().is_empty(), "{:#?}", server.requests());

    // GIT_SSL_CAINFO.
    let ca = ca_file(&server).as_os_str();
    let refs = ok(
        fx.git(
            fx.tmp.path(),
            &["ls-remote", &url],
            &[("GIT_SSL_CAINFO", ca)],
        ),
        "ls-remote with GIT_SSL_CAINFO",
    );
    assert!(
        refs.contains(&format!("{}\trefs/heads/main", fx.head)),
        "{refs}"
    );

    // http.sslCAInfo.
    ok(
        fx.clone("clone", &[ssl_ca_info(&server)], &url, &[]),
        "clone with http.sslCAInfo",
    );
    assert_eq!(fx.cloned_head("clone"), fx.head);

    // The certificate is for DNS localhost too (pinned to 127.0.0.1, where we listen).
    let by_name = format!("https://localhost:{}/repo.git", server.port());
    let pin = format!("http.curloptResolve=localhost:{}:127.0.0.1", server.port());
    ok(
        fx.git(
            fx.tmp.path(),
            &[
                "-c",
                &pin,
                "-c",
                &ssl_ca_info(&server),
                "ls-remote",
                &by_name,
            ],
            &[],
        ),
        "ls-remote https://localhost",
    );

    let reqs = server.requests();
    assert!(!reqs.is_empty());
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/repo.git/info/refs?service=git-upload-pack");
    assert!(reqs.iter().all(|r| r.status == 200), "{reqs:#?}");
    assert!(reqs.iter().all(|r| r.bytes_in > 0 && r.bytes_out > 0));
}

#[test]
fn another_servers_ca_is_not_trusted() {
    let fx = Fixture::new();
    let server = SmartHttp::start(&fx.root, tls()).expect("start https");
    let other = SmartHttp::start(&fx.root, tls()).expect("start another https");
    assert_ne!(server.ca_pem(), other.ca_pem());
    let err = failed(
        fx.git(
            fx.tmp.path(),
            &["ls-remote", &server.url("repo.git")],
            &[("GIT_SSL_CAINFO", ca_file(&other).as_os_str())],
        ),
        "ls-remote with another server's CA",
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(server.requests().is_empty());
}

#[test]
fn plain_http_is_unchanged() {
    let fx = Fixture::new();
    let server = SmartHttp::start(&fx.root, ServerOptions::default()).expect("start http");
    assert!(server.url("repo.git").starts_with("http://127.0.0.1:"));
    assert_eq!(server.ca_pem(), None);
    assert_eq!(server.ca_file(), None);
    ok(
        fx.clone("clone", &[], &server.url("repo.git"), &[]),
        "clone over http",
    );
    assert_eq!(fx.cloned_head("clone"), fx.head);
}

#[test]
fn https_with_basic_auth_takes_the_credentials_from_askpass() {
    let fx = Fixture::new();
    let opts = ServerOptions {
        basic_auth: Some((USER.to_string(), PASS.to_string())),
        ..tls()
    };
    let server = SmartHttp::start(&fx.root, opts).expect("start https");
    let url = server.url("repo.git");
    assert!(!url.contains('@'), "no credentials in the URL: {url}");
    let ca = [ssl_ca_info(&server)];

    // No credentials at all (no askpass, no terminal prompt).
    let err = failed(fx.clone("anonymous", &ca, &url, &[]), "anonymous clone");
    assert!(err.contains("could not read Username"), "{err}");
    let reqs = server.requests();
    assert!(
        !reqs.is_empty()
            && reqs
                .iter()
                .all(|r| r.status == 401 && !r.authorization_present),
        "{reqs:#?}"
    );

    // Wrong password.
    let (wrong, _) = fx.askpass("askpass-wrong", USER, "not-the-password");
    let err = failed(
        fx.clone("wrong", &ca, &url, &[("GIT_ASKPASS", wrong.as_os_str())]),
        "clone with a wrong password",
    );
    assert!(err.contains("Authentication failed"), "{err}");

    // The right ones.
    let before = server.requests().len();
    let (right, prompts) = fx.askpass("askpass-right", USER, PASS);
    ok(
        fx.clone("clone", &ca, &url, &[("GIT_ASKPASS", right.as_os_str())]),
        "clone with credentials",
    );
    assert_eq!(fx.cloned_head("clone"), fx.head);
    let prompts = fs::read_to_string(&prompts).expect("askpass was run");
    let origin = format!("https://127.0.0.1:{}", server.port());
    assert!(
        prompts.contains(&format!("Username for '{origin}'")),
        "{prompts}"
    );
    let reqs = &server.requests()[before..];
    // git asks without credentials first, is told 401, asks askpass and retries.
    assert_eq!(reqs[0].status, 401, "{reqs:#?}");
    let authorized: Vec<_> = reqs.iter().filter(|r| r.authorization_present).collect();
    assert!(
        authorized.len() >= 2 && authorized.iter().all(|r| r.status == 200),
        "{reqs:#?}"
    );
}

#[test]
fn an_http_clone_through_the_proxy_sends_absolute_form_requests() {
    let fx = Fixture::new();
    let server = SmartHttp::start(&fx.root, ServerOptions::default()).expect("start http");
    let proxy = HttpProxy::start().expect("start proxy");
    assert_eq!(proxy.url(), format!("http://127.0.0.1:{}", proxy.port()));
    let url = server.url("repo.git");

    // Without the proxy configured, nothing goes through it.
    ok(fx.clone("direct", &[], &url, &[]), "direct clone");
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
    let direct = server.requests().len();

    ok(
        fx.clone(
            "proxied",
            &[format!("http.proxy={}", proxy.url())],
            &url,
            &[],
        ),
        "clone through the proxy",
    );
    assert_eq!(fx.cloned_head("proxied"), fx.head);

    let logged = proxy.requests();
    let origin = format!("http://127.0.0.1:{}", server.port());
    assert_eq!(
        logged.first().map(String::as_str),
        Some(format!("GET {origin}/repo.git/info/refs?service=git-upload-pack").as_str()),
        "{logged:#?}"
    );
    assert!(
        logged.contains(&format!("POST {origin}/repo.git/git-upload-pack")),
        "{logged:#?}"
    );
    // Each logged request reached the server once, in origin form.
    let reached: Vec<String> = server.requests()[direct..]
        .iter()
        .map(|r| format!("{} {origin}{}", r.method, r.path))
        .collect();
    assert_eq!(reached, logged);
    assert!(server.requests()[direct..].iter().all(|r| r.status == 200));
}

#[test]
fn an_https_clone_through_the_proxy_tunnels_with_connect() {
    let fx = Fixture::new();
    let opts = ServerOptions {
        basic_auth: Some((USER.to_string(), PASS.to_string())),
        ..tls()
    };
    let server = SmartHttp::start(&fx.root, opts).expect("start https");
    let proxy = HttpProxy::start().expect("start proxy");
    let (askpass, _) = fx.askpass("askpass", USER, PASS);
    ok(
        fx.clone(
            "clone",
            &[ssl_ca_info(&server), format!("http.proxy={}", proxy.url())],
            &server.url("repo.git"),
            &[("GIT_ASKPASS", askpass.as_os_str())],
        ),
        "clone through the proxy",
    );
    assert_eq!(fx.cloned_head("clone"), fx.head);
    let logged = proxy.requests();
    let connect = format!("CONNECT 127.0.0.1:{}", server.port());
    assert!(
        !logged.is_empty() && logged.iter().all(|l| *l == connect),
        "{logged:#?}"
    );
    assert!(server
        .requests()
        .iter()
        .any(|r| r.authorization_present && r.status == 200));

    // The proxy is also taken from the environment (https_proxy), NO_PROXY being clear.
    let before = proxy.requests().len();
    let proxy_url = proxy.url();
    ok(
        fx.clone(
            "clone-env",
            &[ssl_ca_info(&server)],
            &server.url("repo.git"),
            &[
                ("GIT_ASKPASS", askpass.as_os_str()),
                ("https_proxy", OsStr::new(&proxy_url)),
            ],
        ),
        "clone through the proxy from https_proxy",
    );
    assert!(proxy.requests().len() > before, "{:#?}", proxy.requests());
}

/// A push of a pack larger than `http.postBuffer` (1 MiB): git sends it chunked, and the
/// proxy relays the chunked body.
#[test]
fn a_large_push_through_the_proxy_relays_a_chunked_body() {
    let fx = Fixture::new();
    // An authenticated user may push (git http-backend enables receive-pack for them).
    let opts = ServerOptions {
        basic_auth: Some((USER.to_string(), PASS.to_string())),
        ..ServerOptions::default()
    };
    let server = SmartHttp::start(&fx.root, opts).expect("start http");
    let proxy = HttpProxy::start().expect("start proxy");
    let (askpass, _) = fx.askpass("askpass", USER, PASS);

    let mut data = Vec::with_capacity(3 << 20);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 3 << 20 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        data.extend_from_slice(&state.to_le_bytes());
    }
    fs::write(fx.work.join("big.bin"), &data).expect("write big file");
    fx.git_ok(&fx.work, &["add", "big.bin"]);
    fx.git_ok(&fx.work, &["commit", "-q", "-m", "big"]);
    let pushed = fx.git_ok(&fx.work, &["rev-parse", "HEAD"]);

    ok(
        fx.git(
            &fx.work,
            &[
                "-c",
                &format!("http.proxy={}", proxy.url()),
                "push",
                "-q",
                &server.url("repo.git"),
                "main",
            ],
            &[("GIT_ASKPASS", askpass.as_os_str())],
        ),
        "push through the proxy",
    );
    let bare = fx.root.join("repo.git");
    assert_eq!(fx.git_ok(&bare, &["rev-parse", "refs/heads/main"]), pushed);
    let origin = format!("http://127.0.0.1:{}", server.port());
    let logged = proxy.requests();
    assert!(
        logged.contains(&format!("POST {origin}/repo.git/git-receive-pack")),
        "{logged:#?}"
    );
    let big_post = server
        .requests()
        .into_iter()
        .find(|r| r.path == "/repo.git/git-receive-pack" && r.bytes_in > 3 << 20);
    assert!(
        big_post.as_ref().is_some_and(|r| r.status == 200),
        "{:#?}",
        server.requests()
    );
}

#[test]
fn the_proxy_answers_502_for_an_unreachable_target() {
    let proxy = HttpProxy::start().expect("start proxy");
    // A port nobody listens on (any more).
    let port = {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let requests = [
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
        format!("GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    ];
    for request in &requests {
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    }
    assert_eq!(
        proxy.requests(),
        vec![
            format!("CONNECT 127.0.0.1:{port}"),
            format!("GET http://127.0.0.1:{port}/x"),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// The binaries

#[test]
fn the_binaries_serve_https_with_basic_auth_through_the_proxy() {
    let fx = Fixture::new();
    let server = Running::start(
        env!("CARGO_BIN_EXE_sykli-git-server"),
        &[
            "--root",
            path(&fx.root),
            "--tls",
            "--basic-auth",
            &format!("{USER}:{PASS}"),
        ],
    );
    let port = server.line["port"].as_u64().expect("port");
    let url_base = server.str("url_base").to_string();
    assert_eq!(url_base, format!("https://127.0.0.1:{port}"));
    let ca_file = PathBuf::from(server.str("ca_file"));
    assert!(fs::read_to_string(&ca_file)
        .expect("read the CA file")
        .starts_with("-----BEGIN CERTIFICATE-----"));

    let proxy = Running::start(env!("CARGO_BIN_EXE_sykli-http-proxy"), &[]);
    let proxy_port = proxy.line["port"].as_u64().expect("port");
    let proxy_url = proxy.str("url").to_string();
    assert_eq!(proxy_url, format!("http://127.0.0.1:{proxy_port}"));
    let log = PathBuf::from(proxy.str("log"));
    assert!(log.is_absolute(), "{}", log.display());

    let url = format!("{url_base}/repo.git");
    let proxy_cfg = [format!("http.proxy={proxy_url}")];
    let ca = ("GIT_SSL_CAINFO", ca_file.as_os_str());

    let err = failed(
        fx.clone("anonymous", &proxy_cfg, &url, &[ca]),
        "anonymous clone",
    );
    assert!(err.contains("could not read Username"), "{err}");

    let (askpass, _) = fx.askpass("askpass", USER, PASS);
    ok(
        fx.clone(
            "clone",
            &proxy_cfg,
            &url,
            &[ca, ("GIT_ASKPASS", askpass.as_os_str())],
        ),
        "clone through both binaries",
    );
    assert_eq!(fx.cloned_head("clone"), fx.head);

    let logged = fs::read_to_string(&log).expect("read the proxy log");
    let lines: Vec<&str> = logged.lines().collect();
    let connect = format!("CONNECT 127.0.0.1:{port}");
    assert!(
        lines.len() >= 2 && lines.iter().all(|l| *l == connect),
        "{logged}"
    );
    assert!(logged.ends_with('\n'));

    server.stop();
    proxy.stop();
    assert!(!ca_file.exists(), "the CA file outlived the server");
    assert!(!log.exists(), "the default log outlived the proxy");
}

#[test]
fn the_server_binary_serves_plain_http_with_basic_auth() {
    let fx = Fixture::new();
    let server = Running::start(
        env!("CARGO_BIN_EXE_sykli-git-server"),
        &[
            "--root",
            path(&fx.root),
            "--http",
            "--basic-auth",
            &format!("{USER}:{PASS}"),
        ],
    );
    let url_base = server.str("url_base").to_string();
    assert!(url_base.starts_with("http://127.0.0.1:"), "{url_base}");
    assert!(server.line.get("ca_file").is_none(), "{}", server.line);
    let url = format!("{url_base}/repo.git");
    failed(fx.clone("anonymous", &[], &url, &[]), "anonymous clone");
    let (askpass, _) = fx.askpass("askpass", USER, PASS);
    ok(
        fx.clone("clone", &[], &url, &[("GIT_ASKPASS", askpass.as_os_str())]),
        "clone with credentials",
    );
    server.stop();
}

#[test]
fn the_proxy_binary_appends_to_a_given_log() {
    let fx = Fixture::new();
    let log = fx.dir("proxy.log");
    fs::write(&log, "earlier\n").expect("write log");
    let http = SmartHttp::start(&fx.root, ServerOptions::default()).expect("start http");
    let proxy = Running::start(
        env!("CARGO_BIN_EXE_sykli-http-proxy"),
        &["--log", path(&log)],
    );
    assert_eq!(
        proxy.str("log"),
        path(&log.canonicalize().expect("canonical"))
    );
    let refs = ok(
        fx.git(
            fx.tmp.path(),
            &[
                "-c",
                &format!("http.proxy={}", proxy.str("url")),
                "ls-remote",
                &http.url("repo.git"),
            ],
            &[],
        ),
        "ls-remote through the proxy",
    );
    assert!(refs.contains(&fx.head), "{refs}");
    let logged = fs::read_to_string(&log).expect("read log");
    assert!(
        logged.starts_with(&format!(
            "earlier\nGET http://127.0.0.1:{}/repo.git/info/refs?service=git-upload-pack\n",
            http.port()
        )),
        "{logged}"
    );
    proxy.stop();
    assert!(log.exists(), "a given log is kept");
}
