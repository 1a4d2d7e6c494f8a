//! Exact content whatever the clone options (issue 17, item 1): the Job sykli builds runs in
//! the pod runner against a smart HTTP server that serves partial clones
//! (`uploadpack.allowFilter`, as GitHub and GitLab) and one that does not, with a real Git
//! LFS server, for every combination of depth, sparse, submodules and LFS; and an LFS file
//! the checkout cannot fill fails the clone naming it, never a pointer left behind.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sykli_core::manifest::BuildOptions;
use sykli_core::pipeline::{Resource, Task};
use sykli_testkit::git_server::{ServerOptions, SmartHttp};
use sykli_testkit::lfs_server::LfsServer;
use sykli_testkit::pod_runner::{run_pod, PodResult, RunOptions, Shell};

use support::{build_validated_job, bytes, git_in, git_raw, logs, pod_dir, write};

const POINTER_PREFIX: &[u8] = b"version https://git-lfs.github.com/spec/v1\n";

/// One file of a commit: its path, whether `*.bin` routes it through LFS, the content a
/// checkout must produce, and the blob git stores (the pointer, for an LFS file).
#[derive(Debug, Clone)]
struct File {
    path: String,
    lfs: bool,
    content: Vec<u8>,
    blob: Vec<u8>,
}

impl File {
    /// The LFS object id the pointer names.
    fn oid(&self) -> String {
        let text = String::from_utf8_lossy(&self.blob);
        text.lines()
            .find_map(|l| l.strip_prefix("oid sha256:"))
            .unwrap_or_else(|| panic!("{} is no pointer", self.path))
            .to_string()
    }
}

/// What a repository's commit holds: files, and submodules (path, repository name).
#[derive(Debug, Clone, Default)]
struct Tree {
    files: Vec<File>,
    gitlinks: Vec<(String, String)>,
}

/// The commit at HEAD of the working copy `work`, read back with git.
fn tree_of(work: &Path, submodule_repos: &[(&str, &str)]) -> Tree {
    let listing = git_raw(work, &["ls-tree", "-r", "-z", "HEAD"]);
    let mut tree = Tree::default();
    for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8(entry.to_vec()).unwrap();
        let (meta, path) = entry.split_once('\t').unwrap();
        let fields: Vec<&str> = meta.split(' ').collect();
        match fields[1] {
            "blob" => {
                let blob = git_raw(work, &["cat-file", "blob", fields[2]]);
                let lfs = path.ends_with(".bin") && blob.starts_with(POINTER_PREFIX);
                let content = std::fs::read(work.join(path)).unwrap();
                tree.files.push(File {
                    path: path.to_string(),
                    lfs,
                    content,
                    blob,
                });
            }
            "commit" => {
                let repo = submodule_repos
                    .iter()
                    .find(|(p, _)| *p == path)
                    .unwrap_or_else(|| panic!("no repository for submodule {path}"))
                    .1;
                tree.gitlinks.push((path.to_string(), repo.to_string()));
            }
            other => panic!("{other}"),
        }
    }
    tree
}

/// Bare repositories under `root`, served by both servers, their LFS objects on `lfs`.
struct Fixture {
    tmp: tempfile::TempDir,
    root: PathBuf,
    lfs: LfsServer,
    trees: BTreeMap<String, Tree>,
}

impl Fixture {
    fn empty() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("srv");
        std::fs::create_dir_all(&root).unwrap();
        let lfs = LfsServer::start(&tmp.path().join("lfs")).unwrap();
        Fixture {
            tmp,
            root,
            lfs,
            trees: BTreeMap::new(),
        }
    }

    /// A working copy whose `*.bin` files go to the LFS server (namespace `sykli/<name>`),
    /// pushed to `<name>.git`, with `files` committed.
    fn lfs_repo(&self, name: &str, lfsconfig_extra: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let work = self.tmp.path().join("work").join(name);
        std::fs::create_dir_all(&work).unwrap();
        git_in(
            &self.root,
            &["init", "-q", "--bare", &format!("{name}.git")],
        );
        git_in(&work, &["init", "-q"]);
        git_in(&work, &["lfs", "install", "--local"]);
        git_in(&work, &["config", "lfs.locksverify", "false"]);
        git_in(&work, &["lfs", "track", "*.bin"]);
        write(
            &work,
            ".lfsconfig",
            format!(
                "[lfs]\n\turl = {}\n{lfsconfig_extra}",
                self.lfs.url_for("sykli", name)
            )
            .as_bytes(),
        );
        for (p, c) in files {
            write(&work, p, c);
        }
        let bare = self.root.join(format!("{name}.git"));
        git_in(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        commit_and_push(&work, "first");
        work
    }

    fn url(server: &SmartHttp, name: &str) -> String {
        server.url(&format!("{name}.git"))
    }
}

fn commit_and_push(work: &Path, message: &str) -> String {
    git_in(work, &["add", "-A"]);
    git_in(work, &["commit", "-q", "-m", message]);
    git_in(work, &["push", "-q", "origin", "main"]);
    git_in(work, &["rev-parse", "HEAD"])
}

/// The monorepo of the report: LFS files inside and outside the cone `services/api` (one
/// sorting before it), two commits, submodules inside the cone (one at the top) and one
/// outside, of repositories with LFS files (and one with an LFS submodule of its own).
fn monorepo() -> (Fixture, String) {
    let mut fx = Fixture::empty();
    let leaf = fx.lfs_repo(
        "leaf",
        "",
        &[("README.md", b"leaf\n"), ("leaf.bin", &bytes(7, 40_000))],
    );
    let assets = fx.lfs_repo(
        "assets",
        "",
        &[
            ("README.md", b"assets\n"),
            ("data/sub.bin", &bytes(5, 150_000)),
            // Real content smaller than a pointer: read and hashed by the check, and fine.
            ("data/tiny.bin", b"tiny\n"),
        ],
    );
    git_in(&assets, &["submodule", "add", "-q", "../leaf.git", "leaf"]);
    commit_and_push(&assets, "a submodule");
    let mono = fx.lfs_repo(
        "mono",
        "",
        &[
            ("README.md", b"top\n"),
            ("assets/logo.bin", &bytes(1, 200_000)),
            ("services/api/main.rs", b"fn main() {}\n"),
            ("services/api/model.bin", &bytes(2, 300_000)),
            ("services/api/nested/deep.bin", &bytes(3, 100_000)),
            ("services/web/app.js", b"console.log(1)\n"),
            ("services/web/big.bin", &bytes(4, 250_000)),
        ],
    );
    write(&mono, "services/api/model.bin", &bytes(9, 310_000));
    git_in(
        &mono,
        &[
            "submodule",
            "add",
            "-q",
            "../assets.git",
            "services/api/vendor/assets",
        ],
    );
    git_in(
        &mono,
        &["submodule", "add", "-q", "../assets.git", "tools/assets"],
    );
    // At the top: in the cone, as every file there.
    git_in(&mono, &["submodule", "add", "-q", "../leaf.git", "leafmod"]);
    let sha = commit_and_push(&mono, "second");
    fx.trees.insert("leaf".into(), tree_of(&leaf, &[]));
    fx.trees
        .insert("assets".into(), tree_of(&assets, &[("leaf", "leaf")]));
    fx.trees.insert(
        "mono".into(),
        tree_of(
            &mono,
            &[
                ("services/api/vendor/assets", "assets"),
                ("tools/assets", "assets"),
                ("leafmod", "leaf"),
            ],
        ),
    );
    (fx, sha)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Submodules {
    Off,
    On,
    Recursive,
}

#[derive(Debug, Clone, Copy)]
struct Combo {
    full_depth: bool,
    sparse: bool,
    filter_server: bool,
    submodules: Submodules,
    lfs: bool,
}

impl Combo {
    fn all() -> Vec<Combo> {
        let mut all = Vec::new();
        for full_depth in [false, true] {
            for sparse in [false, true] {
                for filter_server in [true, false] {
                    for submodules in [Submodules::Off, Submodules::On, Submodules::Recursive] {
                        for lfs in [true, false] {
                            all.push(Combo {
                                full_depth,
                                sparse,
                                filter_server,
                                submodules,
                                lfs,
                            });
                        }
                    }
                }
            }
        }
        all
    }

    fn access(&self) -> Value {
        let mut a = json!({
            "lfs": self.lfs,
            "submodules": match self.submodules {
                Submodules::Off => "off",
                Submodules::On => "on",
                Submodules::Recursive => "recursive",
            },
        });
        if self.sparse {
            a["sparse"] = json!(["services/api"]);
        }
        a
    }

    /// Inside the cone: the top-level files and `services/api`.
    fn visible(&self, path: &str) -> bool {
        !self.sparse || !path.contains('/') || path.starts_with("services/api/")
    }
}

/// What a run must give, from the fixture's trees.
struct Expected {
    /// Every file the task can see: path → content.
    files: BTreeMap<String, Vec<u8>>,
    /// The LFS objects fetched for them: (namespace, oid).
    objects: BTreeSet<(String, String)>,
}

fn expected(fx: &Fixture, c: &Combo) -> Expected {
    fn add(
        fx: &Fixture,
        c: &Combo,
        repo: &str,
        prefix: &str,
        level: usize,
        files: &mut BTreeMap<String, Vec<u8>>,
        objects: &mut BTreeSet<(String, String)>,
    ) {
        let tree = &fx.trees[repo];
        let shown = |p: &str| level > 0 || c.visible(p);
        for f in tree.files.iter().filter(|f| shown(&f.path)) {
            let content = if f.lfs && c.lfs {
                objects.insert((format!("sykli/{repo}"), f.oid()));
                f.content.clone()
            } else {
                f.blob.clone()
            };
            files.insert(format!("{prefix}{}", f.path), content);
        }
        let deeper = match c.submodules {
            Submodules::Off => false,
            Submodules::On => level == 0,
            Submodules::Recursive => true,
        };
        if deeper {
            for (path, sub) in tree.gitlinks.iter().filter(|(p, _)| shown(p)) {
                add(
                    fx,
                    c,
                    sub,
                    &format!("{prefix}{path}/"),
                    level + 1,
                    files,
                    objects,
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    let mut objects = BTreeSet::new();
    add(fx, c, "mono", "", 0, &mut files, &mut objects);
    Expected { files, objects }
}

/// Every regular file under `dir` but git's own (`.git` directories and files).
fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_name() == ".git" {
                continue;
            }
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// The Job sykli builds for a task that checks it is at `sha`, cloning `url`; the clone
/// container sees no system git config (no LFS filters but the script's own).
fn job(url: &str, sha: &str, depth: Value, access: Value, extra_env: &[(&str, &str)]) -> Value {
    let task: Task = serde_json::from_value(json!({
        "name": "check", "container": "any", "env": {"EXPECTED_SHA": sha},
        "mounts": [{"resource": "src:.", "path": "/app", "type": "directory"}],
        "command": "set -eu; test \"$(git rev-parse HEAD)\" = \"$EXPECTED_SHA\"; echo checked-ok"
    }))
    .unwrap();
    let resources: BTreeMap<String, Resource> =
        serde_json::from_value(json!({"src:.": {"type": "directory", "path": "."}})).unwrap();
    let opts: BuildOptions = serde_json::from_value(json!({
        "run_id": "l1",
        "source": {"url": url, "sha": sha, "branch": "main",
                   "clone": {"depth": depth, "attempts": 1, "backoff_seconds": 0, "access": access}}
    }))
    .unwrap();
    let mut job = build_validated_job(&task, &resources, "sykli-check-l1", &opts);
    let env = job["spec"]["template"]["spec"]["initContainers"][0]["env"]
        .as_array_mut()
        .unwrap();
    env.push(json!({"name": "GIT_CONFIG_NOSYSTEM", "value": "1"}));
    for (name, value) in extra_env {
        env.push(json!({"name": name, "value": value}));
    }
    job
}

fn run(fx: &Fixture, job: &Value, shell: Shell) -> PodResult {
    run_pod(job, &RunOptions::new(pod_dir(fx.tmp.path())).shell(shell))
        .unwrap_or_else(|e| panic!("runner: {e}"))
}

fn clone_log(r: &PodResult) -> &str {
    &r.container("sykli-clone").unwrap().log
}

/// Objects the partial clone never downloaded (`?` lines of rev-list; nothing is fetched).
fn missing_objects(ws: &Path) -> usize {
    let out = git_raw(ws, &["rev-list", "--objects", "--all", "--missing=print"]);
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| l.starts_with('?'))
        .count()
}

/// What is wrong with one run of `c`, if anything.
fn check_combo(
    fx: &Fixture,
    server: &SmartHttp,
    sha: &str,
    c: &Combo,
    shell: Shell,
) -> Vec<String> {
    let mut problems = Vec::new();
    let depth = if c.full_depth {
        json!("full")
    } else {
        json!(1)
    };
    let before = fx.lfs.downloads().len();
    let r = run(
        fx,
        &job(&Fixture::url(server, "mono"), sha, depth, c.access(), &[]),
        shell,
    );
    if !r.succeeded() || !r.container("task").unwrap().log.contains("checked-ok") {
        return vec![format!("the run failed:\n{}", logs(&r))];
    }
    let clone = r.container("sykli-clone").unwrap();
    if clone.termination_message.trim() != sha {
        problems.push(format!(
            "termination message {:?}",
            clone.termination_message
        ));
    }
    let ws = r.volume("sykli-workspace").unwrap().to_path_buf();

    // Exactly the files the options say, each with the commit's real content.
    let Expected {
        files: want,
        objects,
    } = expected(fx, c);
    let seen = files_under(&ws);
    let want_paths: BTreeSet<&String> = want.keys().collect();
    let seen_paths: BTreeSet<&String> = seen.keys().collect();
    if want_paths != seen_paths {
        problems.push(format!(
            "files: missing {:?}, unexpected {:?}",
            want_paths.difference(&seen_paths).collect::<Vec<_>>(),
            seen_paths.difference(&want_paths).collect::<Vec<_>>()
        ));
    }
    for (path, content) in &want {
        if let Some(got) = seen.get(path) {
            if got != content {
                let what = if got.starts_with(POINTER_PREFIX) {
                    "an LFS pointer"
                } else {
                    "other bytes"
                };
                problems.push(format!(
                    "{path}: {what} ({} bytes, want {})",
                    got.len(),
                    content.len()
                ));
            }
        }
    }
    if c.lfs {
        let pointers: Vec<&String> = seen
            .iter()
            .filter(|(_, b)| b.starts_with(POINTER_PREFIX))
            .map(|(p, _)| p)
            .collect();
        if !pointers.is_empty() {
            problems.push(format!("pointers left: {pointers:?}"));
        }
    }

    // The LFS objects of exactly those files were downloaded, and nothing else.
    let fetched: Vec<_> = fx.lfs.downloads().split_off(before);
    let fetched_set: BTreeSet<(String, String)> = fetched
        .iter()
        .map(|d| (d.namespace.clone(), d.oid.clone()))
        .collect();
    if fetched_set != objects || fetched.iter().any(|d| d.status != 200) {
        problems.push(format!("LFS downloads {fetched:?}, want {objects:?}"));
    }

    // The history asked for.
    let count = String::from_utf8_lossy(&git_raw(&ws, &["rev-list", "--count", "HEAD"]))
        .trim()
        .to_string();
    let want_count = if c.full_depth { "2" } else { "1" };
    if count != want_count {
        problems.push(format!("{count} commits, want {want_count}"));
    }

    // A partial clone where the server allows it: the blobs outside the cone (at least
    // assets/logo.bin, services/web/app.js and services/web/big.bin) never came.
    let missing = missing_objects(&ws);
    let log = clone_log(&r);
    if c.sparse && c.filter_server {
        if missing < 3 {
            problems.push(format!(
                "a partial clone, but only {missing} objects missing"
            ));
        }
    } else if missing != 0 {
        problems.push(format!("{missing} objects missing from a full clone"));
    }
    if c.sparse && !c.filter_server && log.matches("the server does not allow filters").count() != 1
    {
        problems.push("the server without filters did not say so".into());
    }
    if log.contains("Scanner error") || log.contains("error:") {
        problems.push(format!("the clone log has errors:\n{log}"));
    }
    if c.lfs && !log.contains("checking that no Git LFS pointer is left") {
        problems.push("the clone did not check for pointers".into());
    }
    problems
}

/// The fixture's repositories over smart HTTP, from a server that allows filters
/// (`uploadpack.allowFilter`, as GitHub and GitLab do) or one that does not.
fn serve(fx: &Fixture, allow_filter: bool) -> SmartHttp {
    SmartHttp::start(
        &fx.root,
        ServerOptions {
            allow_filter,
            ..ServerOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn every_combination_of_depth_sparse_submodules_and_lfs_sees_the_real_content() {
    let (fx, sha) = monorepo();
    let with_filters = serve(&fx, true);
    let without_filters = serve(&fx, false);
    let mut failures = Vec::new();
    let combos = Combo::all();
    assert_eq!(combos.len(), 48);
    for (i, c) in combos.iter().enumerate() {
        let server = if c.filter_server {
            &with_filters
        } else {
            &without_filters
        };
        let shell = if i % 2 == 0 {
            Shell::Busybox
        } else {
            Shell::Host
        };
        let problems = check_combo(&fx, server, &sha, c, shell);
        if !problems.is_empty() {
            failures.push(format!("{c:?} ({shell:?}):\n  {}", problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} combinations failed:\n{}",
        failures.len(),
        combos.len(),
        failures.join("\n")
    );
}

/// The clone failed with exit code 1, its one-line message (stderr and termination
/// message) starts with `prefix`, and the task never started.
fn assert_clone_failed(r: &PodResult, prefix: &str) -> String {
    assert!(!r.succeeded(), "the clone must fail:\n{}", logs(r));
    let clone = r.container("sykli-clone").unwrap();
    assert_eq!(clone.exit_code, Some(1), "{}", logs(r));
    let message = clone.termination_message.clone();
    assert!(message.starts_with(prefix), "{message:?}\n{}", logs(r));
    assert_eq!(message.trim_end().lines().count(), 1, "{message:?}");
    assert!(
        clone
            .log
            .contains(&format!("sykli-clone: error: {}", message.trim_end())),
        "{}",
        clone.log
    );
    assert!(
        !r.container("task").unwrap().started,
        "the task must not run"
    );
    message
}

#[test]
fn an_lfs_object_the_server_lacks_fails_the_clone_naming_the_file_unless_outside_the_cone() {
    let (fx, sha) = monorepo();
    let server = serve(&fx, true);
    let url = Fixture::url(&server, "mono");
    let model = fx.trees["mono"]
        .files
        .iter()
        .find(|f| f.path == "services/api/model.bin")
        .unwrap()
        .oid();
    let object = fx.lfs.object_path_in("sykli", "mono", &model);
    let saved = std::fs::read(&object).unwrap();
    std::fs::remove_file(&object).unwrap();
    for (i, access) in [
        json!({"lfs": true}),
        json!({"lfs": true, "sparse": ["services/api"]}),
        json!({"lfs": true, "sparse": ["services/api/nested", "services/api"], "submodules": "recursive"}),
    ]
    .into_iter()
    .enumerate()
    {
        let shell = if i % 2 == 0 { Shell::Busybox } else { Shell::Host };
        let r = run(&fx, &job(&url, &sha, json!(1), access.clone(), &[]), shell);
        let message = assert_clone_failed(
            &r,
            "could not fetch the Git LFS content of services/api/model.bin (",
        );
        assert!(message.contains("404"), "{access}: {message}");
    }
    // Outside the cone it is never needed.
    let r = run(
        &fx,
        &job(
            &url,
            &sha,
            json!(1),
            json!({"lfs": true, "sparse": ["services/web"]}),
            &[],
        ),
        Shell::Busybox,
    );
    assert!(r.succeeded(), "{}", logs(&r));
    std::fs::write(&object, saved).unwrap();

    // A submodule's object: the file is named with the submodule.
    let sub = fx.trees["assets"]
        .files
        .iter()
        .find(|f| f.path == "data/sub.bin")
        .unwrap()
        .oid();
    std::fs::remove_file(fx.lfs.object_path_in("sykli", "assets", &sub)).unwrap();
    let r = run(
        &fx,
        &job(
            &url,
            &sha,
            json!(1),
            json!({"lfs": true, "submodules": "on", "sparse": ["services/api"]}),
            &[],
        ),
        Shell::Host,
    );
    let message = assert_clone_failed(
        &r,
        "could not fetch the Git LFS content of data/sub.bin (submodule services/api/vendor/assets)",
    );
    assert!(message.contains("404"), "{message}");
}

#[test]
fn neither_the_repository_nor_the_image_can_make_the_checkout_skip_a_download() {
    let fx = Fixture::empty();
    let content = bytes(11, 120_000);
    // The repository's .lfsconfig excludes everything from fetches; the image's
    // environment says to skip smudging and download errors.
    let work = fx.lfs_repo(
        "excluded",
        "\tfetchexclude = *\n",
        &[("README.md", b"x\n"), ("lib/blob.bin", &content)],
    );
    let sha = git_in(&work, &["rev-parse", "HEAD"]);
    let server = serve(&fx, false);
    let env = [
        ("GIT_LFS_SKIP_SMUDGE", "1"),
        ("GIT_LFS_SKIP_DOWNLOAD_ERRORS", "1"),
    ];
    for shell in [Shell::Busybox, Shell::Host] {
        let r = run(
            &fx,
            &job(
                &Fixture::url(&server, "excluded"),
                &sha,
                json!(1),
                json!({"lfs": true}),
                &env,
            ),
            shell,
        );
        assert!(r.succeeded(), "{}", logs(&r));
        let ws = r.volume("sykli-workspace").unwrap();
        assert!(
            std::fs::read(ws.join("lib/blob.bin")).unwrap() == content,
            "lib/blob.bin is not its content"
        );
    }
}

#[test]
fn a_pointer_git_lfs_leaves_in_place_fails_the_clone_naming_it_in_one_line() {
    let fx = Fixture::empty();
    let server = serve(&fx, true);
    // Committed as is, with no LFS filter in the working copies: git-lfs passes a pointer
    // it cannot parse through unchanged, so the checkout itself succeeds.
    let bad = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 12\n",
        "z".repeat(64)
    );
    let attributes: &[u8] = b"*.bin filter=lfs diff=lfs merge=lfs -text\n";
    let publish = |name: &str, files: &[(&str, &[u8])]| -> PathBuf {
        let work = fx.tmp.path().join("work").join(name);
        std::fs::create_dir_all(&work).unwrap();
        git_in(&fx.root, &["init", "-q", "--bare", &format!("{name}.git")]);
        git_in(&work, &["init", "-q"]);
        write(&work, ".gitattributes", attributes);
        for (p, c) in files {
            write(&work, p, c);
        }
        let bare = fx.root.join(format!("{name}.git"));
        git_in(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        commit_and_push(&work, "first");
        work
    };
    publish(
        "lib",
        &[("README.md", b"lib\n"), ("bad.bin", bad.as_bytes())],
    );
    // Pointer text at a path no attribute routes through LFS, and small real content at
    // one that does: neither is a pointer left behind.
    let app = publish(
        "app",
        &[
            ("services/api/main.rs", b"fn main() {}\n"),
            ("services/api/raw.bin", b"hello\n"),
            ("docs/pointer.txt", bad.as_bytes()),
        ],
    );
    let ok_sha = git_in(&app, &["rev-parse", "HEAD"]);
    let weird = "services/api/bad\"name\nx.bin";
    write(&app, weird, bad.as_bytes());
    let bad_sha = commit_and_push(&app, "a bad pointer");
    std::fs::remove_file(app.join(weird)).unwrap();
    git_in(
        &app,
        &["submodule", "add", "-q", "../lib.git", "services/api/lib"],
    );
    let sub_sha = commit_and_push(&app, "a submodule with a bad pointer");
    let url = Fixture::url(&server, "app");

    for (i, access) in [
        json!({"lfs": true}),
        json!({"lfs": true, "sparse": ["services/api", "docs"]}),
    ]
    .into_iter()
    .enumerate()
    {
        let shell = if i % 2 == 0 {
            Shell::Busybox
        } else {
            Shell::Host
        };
        let r = run(
            &fx,
            &job(&url, &ok_sha, json!(1), access.clone(), &[]),
            shell,
        );
        assert!(r.succeeded(), "{access}: {}", logs(&r));

        let r = run(
            &fx,
            &job(&url, &bad_sha, json!(1), access.clone(), &[]),
            shell,
        );
        // git quotes the name: one line, the newline and the quote escaped.
        assert_clone_failed(
            &r,
            "the checkout left a Git LFS pointer instead of the content of \"services/api/bad\\\"name\\nx.bin\"",
        );

        let mut a = access.clone();
        a["submodules"] = json!("on");
        let r = run(&fx, &job(&url, &sub_sha, json!(1), a, &[]), shell);
        assert_clone_failed(
            &r,
            "the checkout left a Git LFS pointer instead of the content of services/api/lib/bad.bin",
        );
    }
    // Without LFS the pointer is what the user asked for.
    let r = run(
        &fx,
        &job(&url, &bad_sha, json!(1), json!({"lfs": false}), &[]),
        Shell::Busybox,
    );
    assert!(r.succeeded(), "{}", logs(&r));
}

/// `lfs: :auto` decides on the laptop, which cannot see a submodule it has not checked out:
/// LFS then stays off, and the clone still checks the checkout (`lfs_check`), failing on a
/// pointer in one line that asks for `lfs: true`. `lfs: false`, said by the user, gets the
/// pointers it asked for.
#[test]
fn with_lfs_undetected_a_pointer_left_fails_the_clone_asking_for_lfs() {
    let (fx, sha) = monorepo();
    let server = serve(&fx, true);
    let url = Fixture::url(&server, "mono");
    let auto = json!({"lfs": false, "lfs_check": true, "submodules": "recursive"});
    let r = run(&fx, &job(&url, &sha, json!(1), auto, &[]), Shell::Busybox);
    let message = assert_clone_failed(&r, "");
    assert!(
        message.contains(" is a Git LFS pointer, not its content: ")
            && message.trim_end().ends_with("; set lfs: true"),
        "{message}"
    );
    assert!(fx.lfs.downloads().is_empty(), "no LFS object was fetched");
    let off = json!({"lfs": false, "submodules": "recursive"});
    let r = run(&fx, &job(&url, &sha, json!(1), off, &[]), Shell::Host);
    assert!(r.succeeded(), "{}", logs(&r));
    assert!(!clone_log(&r).contains("checking that no Git LFS pointer is left"));
}
