//! Private and big repositories, executed: the Jobs sykli builds run in the pod runner
//! against real servers on 127.0.0.1 (sshd with key auth only, smart HTTP requiring basic
//! auth, HTTPS with a private CA, a proxy, a Git LFS server), with Secrets and ConfigMaps as
//! the kubelet projects them.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use sykli_core::manifest::BuildOptions;
use sykli_core::pipeline::{Resource, Task};
use sykli_core::source::SourcePlan;
use sykli_testkit::git_server::{GitDaemon, ServerOptions, SmartHttp};
use sykli_testkit::pod_runner::{run_pod, PodResult, RunOptions, Shell};
use sykli_testkit::sshd::GitSshd;

use support::{assert_ok, build_validated_job, git_in, logs, pod_dir};

fn write(dir: &Path, path: &str, content: &[u8]) {
    let f = dir.join(path);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, content).unwrap();
}

/// Bare repositories under `root` (what the servers serve), made from working copies.
struct Repos {
    tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Repos {
    fn new() -> Repos {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("srv");
        std::fs::create_dir_all(&root).unwrap();
        Repos { tmp, root }
    }

    /// A working copy with `files`, committed and pushed to `<name>.git`; returns (work, sha).
    fn publish(&self, name: &str, files: &[(&str, &[u8])]) -> (PathBuf, String) {
        let work = self.tmp.path().join("work").join(name);
        std::fs::create_dir_all(&work).unwrap();
        git_in(
            &self.root,
            &["init", "-q", "--bare", &format!("{name}.git")],
        );
        git_in(&work, &["init", "-q"]);
        for (p, c) in files {
            write(&work, p, c);
        }
        git_in(&work, &["add", "-A"]);
        git_in(&work, &["commit", "-q", "-m", "first"]);
        let bare = self.root.join(format!("{name}.git"));
        git_in(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        git_in(&work, &["push", "-q", "origin", "main"]);
        let sha = git_in(&work, &["rev-parse", "HEAD"]);
        (work, sha)
    }

    fn push(&self, work: &Path) -> String {
        git_in(work, &["add", "-A"]);
        git_in(work, &["commit", "-q", "-m", "more"]);
        git_in(work, &["push", "-q", "origin", "main"]);
        git_in(work, &["rev-parse", "HEAD"])
    }
}

/// The Job sykli builds for a checking task, cloning `sha` from `url` with `access`.
fn job(url: &str, sha: &str, access: Value, check: &str) -> Value {
    let task: Task = serde_json::from_value(json!({
        "name": "check", "container": "any", "env": {"EXPECTED_SHA": sha},
        "mounts": [{"resource": "src:.", "path": "/app", "type": "directory"}],
        "command": format!("set -eu; test \"$(git rev-parse HEAD)\" = \"$EXPECTED_SHA\"; {check} echo checked-ok")
    }))
    .unwrap();
    let resources: std::collections::BTreeMap<String, Resource> =
        serde_json::from_value(json!({"src:.": {"type": "directory", "path": "."}})).unwrap();
    let opts: BuildOptions = serde_json::from_value(json!({
        "run_id": "p1",
        "source": {"url": url, "sha": sha, "branch": "main",
                   "clone": {"attempts": 1, "backoff_seconds": 0, "access": access}}
    }))
    .unwrap();
    build_validated_job(&task, &resources, "sykli-check-p1", &opts)
}

#[derive(Default, Clone)]
struct Objects {
    secrets: HashMap<String, HashMap<String, Vec<u8>>>,
    config_maps: HashMap<String, HashMap<String, Vec<u8>>>,
}

impl Objects {
    fn secret(mut self, name: &str, data: &[(&str, &[u8])]) -> Self {
        self.secrets.insert(
            name.into(),
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        );
        self
    }
    fn config_map(mut self, name: &str, data: &[(&str, &[u8])]) -> Self {
        self.config_maps.insert(
            name.into(),
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        );
        self
    }
}

fn run(repos: &Repos, job: &Value, objects: Objects) -> PodResult {
    let mut opts = RunOptions::new(pod_dir(repos.tmp.path())).shell(Shell::Busybox);
    opts.secrets = objects.secrets;
    opts.config_maps = objects.config_maps;
    run_pod(job, &opts).unwrap_or_else(|e| panic!("runner: {e}"))
}

fn clone_message(r: &PodResult) -> String {
    r.container("sykli-clone")
        .unwrap()
        .termination_message
        .clone()
}

/// Every file under `dir` (hidden ones and `.git` included) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(e.path());
                }
            }
        }
    }
    hits
}

/// The secret is nowhere but where it must be: not in the Job, the workspace (`.git`
/// included), the clone's private scratch space, or any container's log.
fn assert_secret_nowhere(job: &Value, r: &PodResult, secret: &str) {
    assert!(
        !job.to_string().contains(secret),
        "the Job holds the secret"
    );
    for vol in ["sykli-workspace", "sykli-tmp"] {
        let dir = r.work_dir.join("volumes").join(vol);
        let hits = files_containing(&dir, secret.as_bytes());
        assert!(hits.is_empty(), "{vol} holds the secret in {hits:?}");
    }
    assert!(
        !logs(r).contains(secret),
        "a log holds the secret:\n{}",
        logs(r)
    );
}

mod ssh {
    use super::*;

    fn access(known_hosts: bool, accept_new: bool) -> Value {
        let mut a = json!({"ssh": {"secret": "deploy-key", "accept_new": accept_new}});
        if known_hosts {
            a["ssh"]["known_hosts"] = json!({"kind": "config_map", "name": "ssh-hosts"});
        }
        a
    }

    fn objects(sshd: &GitSshd, known_hosts: &str) -> Objects {
        let key = std::fs::read(sshd.client_key()).unwrap();
        Objects::default()
            .secret("deploy-key", &[("ssh-privatekey", &key)])
            .config_map(
                "ssh-hosts",
                &[("known_hosts", format!("{known_hosts}\n").as_bytes())],
            )
    }

    #[test]
    fn the_right_host_key_clones_a_wrong_one_fails_saying_so() {
        let repos = Repos::new();
        let (_, sha) = repos.publish("app", &[("Cargo.toml", b"[package]\n")]);
        let sshd = GitSshd::start(&repos.root).unwrap();
        let url = sshd.url("app.git");

        let j = job(&url, &sha, access(true, false), "test -f Cargo.toml;");
        let r = run(&repos, &j, objects(&sshd, sshd.known_hosts_line()));
        assert_ok(&r);
        let key = std::fs::read_to_string(sshd.client_key()).unwrap();
        let key_body = key.lines().nth(1).unwrap();
        assert_secret_nowhere(&j, &r, key_body);
        // The key reaches the clone as a file only, and the task sees none of it.
        let clone = &j["spec"]["template"]["spec"]["initContainers"][0];
        assert!(!clone["env"].to_string().contains("deploy-key"));
        let task = &j["spec"]["template"]["spec"]["containers"][0];
        assert!(!task.to_string().contains("sykli-git-ssh"));

        let r = run(&repos, &j, objects(&sshd, sshd.wrong_known_hosts_line()));
        assert!(!r.succeeded());
        let message = clone_message(&r);
        assert!(
            message.contains("the ssh host key of the server does not match git_known_hosts"),
            "{message}\n{}",
            logs(&r)
        );
        assert!(
            r.container("task").unwrap().log.is_empty(),
            "the task must not run"
        );
    }

    #[test]
    fn without_known_hosts_the_build_fails_unless_accept_new_is_asked_for() {
        let repos = Repos::new();
        let (_, sha) = repos.publish("app", &[("Cargo.toml", b"[package]\n")]);
        let sshd = GitSshd::start(&repos.root).unwrap();
        let url = sshd.url("app.git");
        let opts: BuildOptions = serde_json::from_value(json!({
            "source": {"url": url, "sha": sha, "clone": {"access": access(false, false)}}
        }))
        .unwrap();
        let e = SourcePlan::from_options(&opts.source)
            .unwrap_err()
            .to_string();
        assert!(e.contains("git_ssh_secret needs git_known_hosts"), "{e}");

        let j = job(&url, &sha, access(false, true), "test -f Cargo.toml;");
        let r = run(&repos, &j, objects(&sshd, ""));
        assert_ok(&r);
        assert!(r
            .container("sykli-clone")
            .unwrap()
            .log
            .contains("trusting the ssh host key"));
    }

    #[test]
    fn submodules_relative_over_ssh_recursive_with_their_own_depth() {
        let repos = Repos::new();
        let (leaf_work, _) = repos.publish("leaf", &[("leaf.txt", b"leaf\n")]);
        // More leaf history, so a depth of 1 is visible.
        write(&leaf_work, "leaf.txt", b"leaf 2\n");
        repos.push(&leaf_work);
        let (mid_work, _) = repos.publish("mid", &[("mid.txt", b"mid\n")]);
        git_in(
            &mid_work,
            &["submodule", "add", "-q", "../leaf.git", "leaf"],
        );
        repos.push(&mid_work);
        let (app_work, _) = repos.publish("app", &[("Cargo.toml", b"[package]\n")]);
        git_in(&app_work, &["submodule", "add", "-q", "../mid.git", "mid"]);
        git_in(
            &app_work,
            &["submodule", "update", "--init", "--recursive", "-q"],
        );
        let sha = repos.push(&app_work);
        let sshd = GitSshd::start(&repos.root).unwrap();

        let mut a = access(true, false);
        a["submodules"] = json!("recursive");
        a["submodule_depth"] = json!(1);
        let check =
            "test \"$(cat mid/mid.txt)\" = mid; test \"$(cat mid/leaf/leaf.txt)\" = 'leaf 2'; \
                     test \"$(git -C mid/leaf rev-list --count HEAD)\" = 1;";
        let r = run(
            &repos,
            &job(&sshd.url("app.git"), &sha, a.clone(), check),
            objects(&sshd, sshd.known_hosts_line()),
        );
        assert_ok(&r);

        // Not recursive: the first level only.
        a["submodules"] = json!("on");
        let check = "test -f mid/mid.txt; test ! -e mid/leaf/leaf.txt;";
        let r = run(
            &repos,
            &job(&sshd.url("app.git"), &sha, a, check),
            objects(&sshd, sshd.known_hosts_line()),
        );
        assert_ok(&r);
    }
}

mod https {
    use super::*;

    const TOKEN: &str = "ghp-s3cret-token-9f8e7d";

    /// HTTPS requiring `ci-bot` and the token; its CA is in the `corp-ca` ConfigMap.
    fn server(repos: &Repos) -> SmartHttp {
        SmartHttp::start(
            &repos.root,
            ServerOptions {
                basic_auth: Some(("ci-bot".into(), TOKEN.into())),
                tls: true,
                ..ServerOptions::default()
            },
        )
        .unwrap()
    }

    /// A server of someone else's (another port of the same host, https with a CA the
    /// clone trusts, or plain http): it answers 401 to everything and records whether
    /// an Authorization header came.
    fn hostile(repos: &Repos, tls: bool) -> SmartHttp {
        SmartHttp::start(
            &repos.root,
            ServerOptions {
                basic_auth: Some(("someone".into(), "else".into())),
                tls,
                ..ServerOptions::default()
            },
        )
        .unwrap()
    }

    fn with_ca(mut access: Value) -> Value {
        access["ca_bundle"] = json!({"kind": "config_map", "name": "corp-ca"});
        access
    }

    fn ca_objects(servers: &[&SmartHttp]) -> Objects {
        let bundle: String = servers.iter().filter_map(|s| s.ca_pem()).collect();
        Objects::default().config_map("corp-ca", &[("ca.crt", bundle.as_bytes())])
    }

    #[test]
    fn a_token_clones_and_appears_nowhere() {
        let repos = Repos::new();
        let (_, sha) = repos.publish("app", &[("Cargo.toml", b"[package]\n")]);
        let http = server(&repos);
        let a = with_ca(json!({"token": {"secret": "git-token", "username_key": "username"}}));
        let j = job(
            &http.url("app.git"),
            &sha,
            a,
            "test -f Cargo.toml; test ! -e /sykli;",
        );
        let objects = ca_objects(&[&http]).secret(
            "git-token",
            &[("token", TOKEN.as_bytes()), ("username", b"ci-bot")],
        );
        let r = run(&repos, &j, objects);
        assert_ok(&r);
        assert_secret_nowhere(&j, &r, TOKEN);

        // The wrong token: refused, said so, nothing leaked either.
        let a = with_ca(json!({"token": {"secret": "git-token", "username": "ci-bot"}}));
        let j = job(&http.url("app.git"), &sha, a, "");
        let r = run(
            &repos,
            &j,
            ca_objects(&[&http]).secret("git-token", &[("token", b"wrong")]),
        );
        assert!(!r.succeeded());
        assert!(clone_message(&r).contains("refused access"), "{}", logs(&r));
    }

    #[test]
    fn git_credentials_clone_and_appear_nowhere() {
        let repos = Repos::new();
        let (_, sha) = repos.publish("app", &[("Cargo.toml", b"[package]\n")]);
        let http = server(&repos);
        let line = format!("https://ci-bot:{TOKEN}@127.0.0.1:{}\n", http.port());
        let a = with_ca(json!({"credentials": {"secret": "git-creds"}}));
        let j = job(&http.url("app.git"), &sha, a, "test -f Cargo.toml;");
        let objects =
            ca_objects(&[&http]).secret("git-creds", &[(".git-credentials", line.as_bytes())]);
        let r = run(&repos, &j, objects);
        assert_ok(&r);
        assert_secret_nowhere(&j, &r, TOKEN);
    }

    #[test]
    fn credentials_over_plain_http_are_refused_before_any_job() {
        for (access, key) in [
            (json!({"token": {"secret": "t"}}), "git_token_secret"),
            (
                json!({"credentials": {"secret": "c"}}),
                "git_credentials_secret",
            ),
        ] {
            let opts: BuildOptions = serde_json::from_value(json!({
                "source": {"url": "http://git.example.com/app.git", "sha": "a".repeat(40),
                           "clone": {"access": access}}
            }))
            .unwrap();
            let e = SourcePlan::from_options(&opts.source)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("clear text"), "{e}");
        }
    }

    /// A repository whose submodule lives on `sub_url`, and one whose `.lfsconfig` sends
    /// its LFS objects to `lfs_url`: both hosts the repository's author chose.
    /// `tag` keeps the names apart between calls.
    fn hostile_repos(repos: &Repos, tag: &str, sub_url: &str, lfs_url: &str) -> (String, String) {
        let (_, sub_sha) = repos.publish(&format!("sub-{tag}"), &[("s.txt", b"s\n")]);
        let (subs, _) = repos.publish(&format!("subs-{tag}"), &[("README.md", b"subs\n")]);
        write(
            &subs,
            ".gitmodules",
            format!("[submodule \"evil\"]\n\tpath = evil\n\turl = {sub_url}\n").as_bytes(),
        );
        git_in(
            &subs,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{sub_sha},evil"),
            ],
        );
        // Committed as staged (`add -A` would drop the gitlink: nothing is checked out there).
        git_in(&subs, &["add", ".gitmodules"]);
        git_in(&subs, &["commit", "-q", "-m", "a submodule elsewhere"]);
        git_in(&subs, &["push", "-q", "origin", "main"]);
        let subs_sha = git_in(&subs, &["rev-parse", "HEAD"]);

        let oid = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";
        let (lfs, _) = repos.publish(&format!("lfs-{tag}"), &[("README.md", b"lfs\n")]);
        write(
            &lfs,
            ".gitattributes",
            b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        );
        write(
            &lfs,
            ".lfsconfig",
            format!("[lfs]\n\turl = {lfs_url}\n").as_bytes(),
        );
        // A pointer committed as is (no LFS filter here): the clone must fetch its object.
        let pointer =
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 12\n");
        write(&lfs, "data.bin", pointer.as_bytes());
        git_in(
            &lfs,
            &[
                "-c",
                "filter.lfs.clean=cat",
                "-c",
                "filter.lfs.required=false",
                "add",
                "-A",
            ],
        );
        let lfs_sha = repos.push(&lfs);
        (subs_sha, lfs_sha)
    }

    #[test]
    fn submodule_and_lfs_hosts_of_the_repositorys_choosing_get_no_credential() {
        let repos = Repos::new();
        let origin = server(&repos);
        let https_other = hostile(&repos, true);
        let http_other = hostile(&repos, false);
        let sshd = GitSshd::start(&repos.root).unwrap();
        let key = std::fs::read(sshd.client_key()).unwrap();
        let creds = format!("https://ci-bot:{TOKEN}@127.0.0.1:{}\n", origin.port());

        for (tag, other) in [("https", &https_other), ("http", &http_other)] {
            let (subs_sha, lfs_sha) = hostile_repos(
                &repos,
                tag,
                &other.url(&format!("sub-{tag}.git")),
                &other.url(&format!("lfs-{tag}.git/info/lfs")),
            );
            let setups: Vec<(&str, String, Value, Objects)> = vec![
                (
                    "token",
                    origin.url(""),
                    with_ca(json!({"token": {"secret": "git-token", "username": "ci-bot"}})),
                    ca_objects(&[&origin, &https_other])
                        .secret("git-token", &[("token", TOKEN.as_bytes())]),
                ),
                (
                    "git-credentials",
                    origin.url(""),
                    with_ca(json!({"credentials": {"secret": "git-creds"}})),
                    ca_objects(&[&origin, &https_other])
                        .secret("git-creds", &[(".git-credentials", creds.as_bytes())]),
                ),
                (
                    "ssh",
                    sshd.url(""),
                    with_ca(json!({"ssh": {"secret": "deploy-key",
                        "known_hosts": {"kind": "config_map", "name": "ssh-hosts"}}})),
                    ca_objects(&[&origin, &https_other])
                        .secret("deploy-key", &[("ssh-privatekey", &key)])
                        .config_map(
                            "ssh-hosts",
                            &[(
                                "known_hosts",
                                format!("{}\n", sshd.known_hosts_line()).as_bytes(),
                            )],
                        ),
                ),
            ];
            for (setup, base, access, objects) in setups {
                let base = base.trim_end_matches('/').to_string();
                // The same setup, once for each place the repository names the other host.
                for (option, value, repo, failure) in [
                    (
                        "submodules",
                        json!("on"),
                        "subs",
                        "could not fetch the submodules",
                    ),
                    (
                        "lfs",
                        json!(true),
                        "lfs",
                        "could not fetch the Git LFS content",
                    ),
                ] {
                    let mut a = access.clone();
                    a[option] = value;
                    let sha = if repo == "subs" { &subs_sha } else { &lfs_sha };
                    let r = run(
                        &repos,
                        &job(&format!("{base}/{repo}-{tag}.git"), sha, a, ""),
                        objects.clone(),
                    );
                    assert!(!r.succeeded(), "{setup}, {option}: the clone must fail");
                    assert!(
                        clone_message(&r).contains(failure),
                        "{setup}, {option}: {}",
                        logs(&r)
                    );
                }
            }
            let seen = other.requests();
            assert!(
                seen.iter().any(|q| q.path.contains("sub-"))
                    && seen.iter().any(|q| q.path.contains("info/lfs")),
                "the other host was asked for the submodule and the LFS object: {seen:?}"
            );
            assert!(
                seen.iter().all(|q| !q.authorization_present),
                "a credential reached a host the repository chose: {seen:?}"
            );
        }
        // The origin itself did get them (the clone worked up to the other host).
        assert!(origin.requests().iter().any(|q| q.authorization_present));
    }
}

mod big {
    use super::*;

    #[test]
    fn sparse_checks_out_the_cone_and_never_downloads_the_rest() {
        let repos = Repos::new();
        let big: Vec<u8> = (0..400_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let (_, sha) = repos.publish(
            "mono",
            &[
                ("README.md", b"top\n"),
                ("services/api/main.rs", b"fn main() {}\n"),
                ("services/web/big.bin", &big),
                ("assets/huge.bin", &big[..300_000]),
            ],
        );
        git_in(
            &repos.root.join("mono.git"),
            &["config", "uploadpack.allowFilter", "true"],
        );
        git_in(
            &repos.root.join("mono.git"),
            &["config", "uploadpack.allowAnySHA1InWant", "true"],
        );

        let full_server = GitDaemon::start(&repos.root, ServerOptions::default()).unwrap();
        let full = job(
            &full_server.url("mono.git"),
            &sha,
            json!({}),
            "test -f assets/huge.bin;",
        );
        assert_ok(&run(&repos, &full, Objects::default()));
        let full_bytes = full_server.bytes_sent();

        let sparse_server = GitDaemon::start(&repos.root, ServerOptions::default()).unwrap();
        let check = "test -f README.md; test -f services/api/main.rs; test ! -e services/web; test ! -e assets; \
                     test \"$(git rev-list --objects --all --missing=print | grep -c '^?')\" = 2;";
        let j = job(
            &sparse_server.url("mono.git"),
            &sha,
            json!({"sparse": ["services/api"]}),
            check,
        );
        assert_ok(&run(&repos, &j, Objects::default()));
        let sparse_bytes = sparse_server.bytes_sent();
        eprintln!("sparse clone received {sparse_bytes} bytes; full {full_bytes}");
        assert!(
            sparse_bytes * 5 < full_bytes,
            "sparse {sparse_bytes} bytes vs full {full_bytes}"
        );
    }
}

mod lfs {
    use super::*;
    use sykli_testkit::lfs_server::LfsServer;

    fn bytes(seed: u32, n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 11) as u8)
            .collect()
    }

    // A repository whose *.bin files live on the LFS server.
    fn publish_lfs(repos: &Repos, lfs: &LfsServer, name: &str, bin: &[u8]) -> PathBuf {
        let (work, _) = repos.publish(name, &[("README.md", b"readme\n")]);
        git_in(&work, &["lfs", "install", "--local"]);
        git_in(&work, &["config", "lfs.locksverify", "false"]);
        git_in(&work, &["lfs", "track", "*.bin"]);
        write(
            &work,
            ".lfsconfig",
            format!("[lfs]\n\turl = {}\n", lfs.url_for("sykli", name)).as_bytes(),
        );
        write(&work, "data/blob.bin", bin);
        repos.push(&work);
        work
    }

    #[test]
    fn the_task_sees_real_content_in_the_parent_and_in_a_submodule() {
        let repos = Repos::new();
        let lfs = LfsServer::start(&repos.tmp.path().join("lfs")).unwrap();
        let parent_bin = bytes(1, 300_000);
        let sub_bin = bytes(2, 200_000);
        publish_lfs(&repos, &lfs, "assets", &sub_bin);
        let app = publish_lfs(&repos, &lfs, "app", &parent_bin);
        git_in(&app, &["submodule", "add", "-q", "../assets.git", "assets"]);
        let sha = repos.push(&app);
        // What the task must see, byte for byte: the SHA-256 of the original contents.
        let daemon = GitDaemon::start(&repos.root, ServerOptions::default()).unwrap();
        let check = format!(
            "test \"$(sha256sum data/blob.bin)\" = '{}  data/blob.bin'; \
             test \"$(sha256sum assets/data/blob.bin)\" = '{}  assets/data/blob.bin';",
            sha256(&repos, &parent_bin),
            sha256(&repos, &sub_bin)
        );
        let a = json!({"lfs": true, "submodules": "on"});
        let r = run(
            &repos,
            &job(&daemon.url("app.git"), &sha, a, &check),
            Objects::default(),
        );
        assert_ok(&r);
        assert!(r
            .container("sykli-clone")
            .unwrap()
            .log
            .contains("fetching Git LFS content"));

        // Without LFS the task would see pointers: the same check fails. The pod runner
        // uses this machine's git, whose system config may have LFS filters of its own
        // (Debian's git-lfs package installs them): the clone must not read it here.
        let a = json!({"submodules": "on"});
        let mut without = job(&daemon.url("app.git"), &sha, a, &check);
        without["spec"]["template"]["spec"]["initContainers"][0]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "GIT_CONFIG_NOSYSTEM", "value": "1"}));
        let r = run(&repos, &without, Objects::default());
        assert!(!r.succeeded(), "pointer files must not pass for content");
        let task_log = &r.container("task").unwrap().log;
        assert!(!task_log.contains("checked-ok"), "{task_log}");
    }

    fn sha256(repos: &Repos, data: &[u8]) -> String {
        let f = repos.tmp.path().join("hash-input");
        std::fs::write(&f, data).unwrap();
        let out = Command::new("sha256sum").arg(&f).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

mod network {
    use super::*;
    use sykli_testkit::http_proxy::HttpProxy;

    #[test]
    fn a_private_ca_clones_with_its_bundle_and_fails_clearly_without() {
        let repos = Repos::new();
        let (_, sha) = repos.publish("app", &[("Cargo.toml", b"[package]\n")]);
        let https = SmartHttp::start(
            &repos.root,
            ServerOptions {
                tls: true,
                ..ServerOptions::default()
            },
        )
        .unwrap();
        let ca = https.ca_pem().unwrap().as_bytes().to_vec();
        let url = https.url("app.git");
        assert!(url.starts_with("https://"));

        let a = json!({"ca_bundle": {"kind": "config_map", "name": "corp-ca"}});
        let r = run(
            &repos,
            &job(&url, &sha, a, "test -f Cargo.toml;"),
            Objects::default().config_map("corp-ca", &[("ca.crt", &ca)]),
        );
        assert_ok(&r);

        let r = run(&repos, &job(&url, &sha, json!({}), ""), Objects::default());
        assert!(!r.succeeded());
        let message = clone_message(&r);
        assert!(
            message.contains("is not trusted (a private CA? set git_ca_bundle)"),
            "{message}"
        );
    }

    #[test]
    fn the_clone_goes_through_the_configured_proxy() {
        let repos = Repos::new();
        let (_, sha) = repos.publish("app", &[("Cargo.toml", b"[package]\n")]);
        let http = SmartHttp::start(&repos.root, ServerOptions::default()).unwrap();
        let proxy = HttpProxy::start().unwrap();
        let a = json!({"proxy": {"http": proxy.url()}});
        let r = run(
            &repos,
            &job(&http.url("app.git"), &sha, a, "test -f Cargo.toml;"),
            Objects::default(),
        );
        assert_ok(&r);
        let seen = proxy.requests();
        assert!(
            seen.iter().any(|l| l.starts_with("GET http://127.0.0.1:") && l.contains("/app.git/info/refs")),
            "{seen:?}"
        );
        assert!(
            seen.iter()
                .any(|l| l.starts_with("POST ") && l.contains("git-upload-pack")),
            "{seen:?}"
        );
    }
}
