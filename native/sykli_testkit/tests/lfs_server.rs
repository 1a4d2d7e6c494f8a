//! The Git LFS server of `sykli_testkit::lfs_server` (giftless), driven end to end by the
//! real git and git-lfs clients: push LFS objects to it, fetch them back into a clone.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use sykli_testkit::lfs_server::LfsServer;
use tempfile::TempDir;

mod support;
use support::{git_command, path};

const POINTER_HEADER: &str = "version https://git-lfs.github.com/spec/v1\n";

/// git with a throwaway `HOME` (no global config, so no user lfs filter or credential
/// helper), no system config, and no prompts.
fn git(home: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = git_command(dir, args);
    cmd.stdin(Stdio::null())
        // The global config is the throwaway HOME's.
        .env_remove("GIT_CONFIG_GLOBAL")
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run git")
}

fn git_ok(home: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = git(home, dir, args, env);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// The lfs filter for one command, without `git lfs install`.
const LFS_FILTER: [&str; 6] = [
    "-c",
    "filter.lfs.process=git-lfs filter-process",
    "-c",
    "filter.lfs.smudge=git-lfs smudge -- %f",
    "-c",
    "filter.lfs.required=true",
];

/// A work repository tracking `*.bin` with LFS, whose `.lfsconfig` points at the server,
/// with one commit holding `data.bin` (random bytes), pushed to the bare `origin.git`.
struct Pushed {
    tmp: TempDir,
    home: PathBuf,
    bare: PathBuf,
    data: Vec<u8>,
    oid: String,
    push_stderr: String,
}

impl Pushed {
    /// `git clone` of the bare repository into `<tmp>/clone`, with the lfs filter for the
    /// command only and `env`.
    fn clone_with_filter(&self, env: &[(&str, &str)]) -> PathBuf {
        let clone = self.tmp.path().join("clone");
        let mut args = LFS_FILTER.to_vec();
        args.extend(["clone", "-q", path(&self.bare), path(&clone)]);
        git_ok(&self.home, self.tmp.path(), &args, env);
        clone
    }
}

fn push_fixture(server: &LfsServer, tmp: TempDir) -> Pushed {
    let home = tmp.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let work = tmp.path().join("work");
    let bare = tmp.path().join("origin.git");
    git_ok(
        &home,
        tmp.path(),
        &["init", "-q", "-b", "main", path(&work)],
        &[],
    );
    git_ok(
        &home,
        tmp.path(),
        &["init", "-q", "--bare", "-b", "main", path(&bare)],
        &[],
    );
    git_ok(&home, &work, &["lfs", "install", "--local"], &[]);
    // No locking API on giftless: without this git-lfs hints about it on every push.
    git_ok(&home, &work, &["config", "lfs.locksverify", "false"], &[]);
    git_ok(&home, &work, &["lfs", "track", "*.bin"], &[]);
    fs::write(
        work.join(".lfsconfig"),
        format!("[lfs]\n\turl = {}\n", server.url()),
    )
    .unwrap();
    // 1 MiB and a bit, so that the object is not a round number of anything.
    let data = random_bytes((1 << 20) + 4321);
    fs::write(work.join("data.bin"), &data).unwrap();
    git_ok(
        &home,
        &work,
        &["add", ".gitattributes", ".lfsconfig", "data.bin"],
        &[],
    );
    git_ok(&home, &work, &["commit", "-q", "-m", "lfs object"], &[]);

    // What git stores is the pointer, not the bytes.
    let stored = git_ok(&home, &work, &["cat-file", "blob", "HEAD:data.bin"], &[]);
    assert!(
        stored.starts_with(POINTER_HEADER),
        "blob is a pointer: {stored}"
    );
    let oid = git_ok(&home, &work, &["lfs", "ls-files", "--long"], &[])
        .split_whitespace()
        .next()
        .expect("ls-files lists data.bin")
        .to_string();
    assert_eq!(oid.len(), 64, "sha256 oid: {oid}");
    assert!(stored.contains(&format!("oid sha256:{oid}")), "{stored}");

    // The pre-push hook uploads the objects to the LFS url; the commits go to the path.
    let out = git(&home, &work, &["push", path(&bare), "main"], &[]);
    let push_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "push failed:\n{push_stderr}\nserver log:\n{}",
        server.log()
    );
    Pushed {
        tmp,
        home,
        bare,
        data,
        oid,
        push_stderr,
    }
}

#[test]
fn push_then_clone_and_pull_round_trips_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = LfsServer::start(&tmp.path().join("lfs")).expect("start giftless");
    assert!(
        server
            .url()
            .starts_with(&format!("http://127.0.0.1:{}/", server.port()))
            && server.url().ends_with(".git/info/lfs"),
        "{}",
        server.url()
    );
    let p = push_fixture(&server, tmp);

    // The object reached the server's storage, byte for byte.
    let stored = fs::read(server.object_path(&p.oid)).unwrap_or_else(|e| {
        panic!(
            "object {} not in storage ({e}); push:\n{}\nserver log:\n{}",
            p.oid,
            p.push_stderr,
            server.log()
        )
    });
    assert!(stored == p.data, "stored object differs from the file");
    let log = server.log();
    assert!(
        log.contains("POST /sykli/test.git/info/lfs/objects/batch"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "PUT /sykli/test.git/info/lfs/objects/storage/{}",
            p.oid
        )),
        "{log}"
    );

    // A clone that skips the smudge filter has the pointer in the work tree.
    let clone = p.clone_with_filter(&[("GIT_LFS_SKIP_SMUDGE", "1")]);
    let pointer = fs::read_to_string(clone.join("data.bin")).expect("pointer is text");
    assert!(pointer.starts_with(POINTER_HEADER), "{pointer}");
    assert!(
        pointer.contains(&format!("oid sha256:{}", p.oid)),
        "{pointer}"
    );
    assert!(
        pointer.contains(&format!("size {}", p.data.len())),
        "{pointer}"
    );
    assert!(
        !log_has_download(&server, &p.oid),
        "nothing downloaded yet:\n{}",
        server.log()
    );

    // `git lfs pull` downloads the object from the server (per the committed .lfsconfig)
    // and checks it out.
    git_ok(&p.home, &clone, &["lfs", "install", "--local"], &[]);
    git_ok(&p.home, &clone, &["lfs", "pull"], &[]);
    let pulled = fs::read(clone.join("data.bin")).unwrap();
    assert_eq!(pulled.len(), p.data.len());
    assert!(pulled == p.data, "pulled bytes differ from the original");
    assert!(log_has_download(&server, &p.oid), "{}", server.log());
    assert_eq!(
        git_ok(&p.home, &clone, &["status", "--porcelain"], &[]),
        "",
        "the work tree is clean after the pull"
    );
}

#[test]
fn clone_with_the_filter_smudges_from_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = LfsServer::start(&tmp.path().join("lfs")).expect("start giftless");
    let p = push_fixture(&server, tmp);

    let clone = p.clone_with_filter(&[]);
    assert!(
        fs::read(clone.join("data.bin")).unwrap() == p.data,
        "smudged bytes differ from the original"
    );
    assert!(log_has_download(&server, &p.oid), "{}", server.log());
}

#[test]
fn missing_object_fails_the_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let server = LfsServer::start(&tmp.path().join("lfs")).expect("start giftless");
    let p = push_fixture(&server, tmp);
    fs::remove_file(server.object_path(&p.oid)).unwrap();

    let clone = p.clone_with_filter(&[("GIT_LFS_SKIP_SMUDGE", "1")]);
    git_ok(&p.home, &clone, &["lfs", "install", "--local"], &[]);
    let out = git(&p.home, &clone, &["lfs", "pull"], &[]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "pull of a missing object fails:\n{text}"
    );
    let still = fs::read_to_string(clone.join("data.bin")).unwrap();
    assert!(
        still.starts_with(POINTER_HEADER),
        "still a pointer: {still}"
    );
}

#[test]
fn each_server_has_its_own_port_and_storage_and_stops_on_drop() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = LfsServer::start(a_dir.path()).expect("start a");
    let b = LfsServer::start(b_dir.path()).expect("start b");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.storage_dir(), b.storage_dir());
    assert!(a
        .storage_dir()
        .starts_with(a_dir.path().canonicalize().unwrap()));
    assert_eq!(
        a.url_for("org/sub", "repo.git"),
        format!("http://127.0.0.1:{}/org/sub/repo.git/info/lfs", a.port())
    );
    let port = a.port();
    drop(a);
    // Dropping kills and reaps the process, so its listening socket is gone.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers after drop"
    );
}

#[test]
fn binary_prints_url_and_port_and_stops_when_stdin_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sykli-lfs-server"))
        .args(["--dir", path(dir.path())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sykli-lfs-server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("JSON line in time");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    let port = v["port"].as_u64().expect("port") as u16;
    assert_eq!(
        v["url"].as_str().expect("url"),
        format!("http://127.0.0.1:{port}/sykli/test.git/info/lfs")
    );
    assert_eq!(v.as_object().unwrap().len(), 2, "{line}");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("server answers");

    drop(child.stdin.take());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("exits once stdin is closed")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still answers after exit"
    );
}

/// giftless logged a GET of the object (downloads carry a `?jwt=` query).
fn log_has_download(server: &LfsServer, oid: &str) -> bool {
    server.log().contains(&format!(
        "GET /sykli/test.git/info/lfs/objects/storage/{oid}"
    ))
}
