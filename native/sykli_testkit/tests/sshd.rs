//! `sykli_testkit::sshd`: a real sshd, driven by the real git and ssh clients, with ssh
//! made independent of the user's own ssh setup (`-F /dev/null`, no agent, no global
//! known_hosts).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sykli_testkit::sshd::GitSshd;
use tempfile::TempDir;

mod support;
use support::{git_command, ok, path, stderr, Running};

/// `GIT_SSH_COMMAND` authenticating with `key` and trusting only the hosts in `known_hosts`.
fn ssh_command(key: &Path, known_hosts: &Path) -> String {
    format!(
        "ssh -F /dev/null -i '{}' -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
         -o UserKnownHostsFile='{}' -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes \
         -o ConnectTimeout=30",
        key.display(),
        known_hosts.display()
    )
}

fn git(dir: &Path, args: &[&str], ssh: Option<&str>) -> Output {
    let mut cmd = git_command(dir, args);
    if let Some(ssh) = ssh {
        cmd.env("GIT_SSH_COMMAND", ssh);
    }
    cmd.env_remove("SSH_AUTH_SOCK").output().expect("run git")
}

fn git_ok(dir: &Path, args: &[&str], ssh: Option<&str>) -> String {
    ok(git(dir, args, ssh), &format!("git {args:?}"))
}

/// A bare `<root>/repo.git` with one commit on `main`.
struct Fixture {
    tmp: TempDir,
    root: PathBuf,
    commit: String,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let work = tmp.path().join("work");
        let root = tmp.path().join("root");
        fs::create_dir_all(&root).expect("mkdir root");
        git_ok(tmp.path(), &["init", "-q", "-b", "main", path(&work)], None);
        fs::write(work.join("README"), "hello over ssh\n").expect("write");
        git_ok(&work, &["add", "README"], None);
        git_ok(&work, &["commit", "-q", "-m", "first"], None);
        let commit = git_ok(&work, &["rev-parse", "HEAD"], None);
        let bare = root.join("repo.git");
        git_ok(
            tmp.path(),
            &["clone", "-q", "--bare", path(&work), path(&bare)],
            None,
        );
        Fixture { tmp, root, commit }
    }

    /// A known_hosts file holding `line`.
    fn known_hosts(&self, name: &str, line: &str) -> PathBuf {
        let file = self.tmp.path().join(name);
        fs::write(&file, format!("{line}\n")).expect("write known_hosts");
        file
    }
}

#[test]
fn clone_with_the_known_host_key_and_the_client_key() {
    let fx = Fixture::new();
    let sshd = GitSshd::start(&fx.root).expect("start sshd");
    let known_hosts = fx.known_hosts("known_hosts", sshd.known_hosts_line());
    let ssh = ssh_command(sshd.client_key(), &known_hosts);

    let url = sshd.url("repo.git");
    assert_eq!(
        url,
        format!(
            "ssh://root@127.0.0.1:{}{}/repo.git",
            sshd.port(),
            path(&fx.root.canonicalize().unwrap())
        )
    );
    let dest = fx.tmp.path().join("clone");
    git_ok(
        fx.tmp.path(),
        &["clone", "-q", &url, path(&dest)],
        Some(&ssh),
    );
    assert_eq!(git_ok(&dest, &["rev-parse", "HEAD"], None), fx.commit);
    assert_eq!(
        fs::read_to_string(dest.join("README")).unwrap(),
        "hello over ssh\n"
    );

    let refs = git_ok(fx.tmp.path(), &["ls-remote", &url], Some(&ssh));
    assert!(
        refs.contains(&format!("{}\trefs/heads/main", fx.commit)),
        "{refs}"
    );
    let log = sshd.log();
    assert!(log.contains("Accepted publickey for root"), "{log}");
}

#[test]
fn known_hosts_lines_name_the_port_and_differ_only_in_the_key() {
    let fx = Fixture::new();
    let sshd = GitSshd::start(&fx.root).expect("start sshd");
    let host = format!("[127.0.0.1]:{} ssh-ed25519 AAAA", sshd.port());
    let right = sshd.known_hosts_line();
    let wrong = sshd.wrong_known_hosts_line();
    for line in [right, wrong] {
        assert!(line.starts_with(&host), "{line}");
        assert_eq!(line.split(' ').count(), 3, "{line}");
    }
    assert_ne!(right, wrong);
}

/// `git ls-remote` of `repo.git` with `ssh`, which must fail: its stderr.
fn refused_ls_remote(fx: &Fixture, sshd: &GitSshd, ssh: &str) -> String {
    let out = git(
        fx.tmp.path(),
        &["ls-remote", &sshd.url("repo.git")],
        Some(ssh),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    err
}

#[test]
fn a_changed_host_key_is_refused() {
    let fx = Fixture::new();
    let sshd = GitSshd::start(&fx.root).expect("start sshd");
    let known_hosts = fx.known_hosts("known_hosts", sshd.wrong_known_hosts_line());
    let ssh = ssh_command(sshd.client_key(), &known_hosts);

    let err = refused_ls_remote(&fx, &sshd, &ssh);
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || err.contains("Host key verification failed"),
        "{err}"
    );
    // Refused before authenticating.
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[test]
fn an_unauthorized_client_key_is_refused() {
    let fx = Fixture::new();
    let sshd = GitSshd::start(&fx.root).expect("start sshd");
    let known_hosts = fx.known_hosts("known_hosts", sshd.known_hosts_line());
    let other_key = fx.tmp.path().join("other_key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "unauthorized", "-f"])
        .arg(&other_key)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let ssh = ssh_command(&other_key, &known_hosts);

    let err = refused_ls_remote(&fx, &sshd, &ssh);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[test]
fn dropping_the_server_removes_its_files() {
    let fx = Fixture::new();
    let sshd = GitSshd::start(&fx.root).expect("start sshd");
    let dir = sshd.client_key().parent().unwrap().to_path_buf();
    assert!(dir.join("sshd_config").is_file());
    drop(sshd);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn the_binary_prints_its_json_line_and_serves_until_stdin_closes() {
    let fx = Fixture::new();
    let server = Running::start(
        env!("CARGO_BIN_EXE_sykli-git-sshd"),
        &["--root", path(&fx.root)],
    );
    let info = &server.line;

    let port = info["port"].as_u64().expect("port");
    let root = fx.root.canonicalize().unwrap();
    assert_eq!(
        info["url_base"],
        format!("ssh://root@127.0.0.1:{port}{}", path(&root))
    );
    let known = info["known_hosts"].as_str().expect("known_hosts");
    let wrong = info["wrong_known_hosts"]
        .as_str()
        .expect("wrong_known_hosts");
    assert!(known.starts_with(&format!("[127.0.0.1]:{port} ssh-ed25519 ")));
    assert!(wrong.starts_with(&format!("[127.0.0.1]:{port} ssh-ed25519 ")));
    assert_ne!(known, wrong);
    let key = PathBuf::from(info["client_key"].as_str().expect("client_key"));

    let known_hosts = fx.known_hosts("known_hosts", known);
    let url = format!("{}/repo.git", info["url_base"].as_str().unwrap());
    let refs = git_ok(
        fx.tmp.path(),
        &["ls-remote", &url],
        Some(&ssh_command(&key, &known_hosts)),
    );
    assert!(refs.contains(&fx.commit), "{refs}");

    server.stop(); // closing stdin stops the server
    assert!(!key.exists(), "{} left behind", key.display());
}
