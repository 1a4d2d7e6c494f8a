//! Each Job fetches only what its task mounts (issue 18, item 1). The Job sykli builds for a
//! task that mounts `src:services/api` of a monorepo runs in the pod runner against a
//! smart HTTP server that allows filters and one that does not, with a real Git LFS server,
//! next to the same Job with today's full clone: the task sees exactly the same (files,
//! modes, symbolic links, attributes applied, LFS content, a submodule, git's answers),
//! while the git server sends a fraction of the bytes and the LFS server only the cone's
//! objects; without filters every blob comes, said once; a mount reached through a
//! symbolic link gets every file.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sykli_core::manifest::BuildOptions;
use sykli_core::pipeline::{Resource, Task};
use sykli_testkit::git_server::{ServerOptions, SmartHttp};
use sykli_testkit::lfs_server::LfsServer;
use sykli_testkit::pod_runner::{run_pod, PodResult, RunOptions, Shell};

use support::{build_validated_job, bytes, git_in, git_raw, logs, pod_dir, write};

/// Top-level directories of the monorepo besides `services`, `assets` and `tools`.
const TOP_DIRS: u32 = 24;

/// The bare repositories under `root`, their LFS objects on `lfs`; `work` is the monorepo's
/// working copy at `sha`.
struct Monorepo {
    tmp: tempfile::TempDir,
    root: PathBuf,
    lfs: LfsServer,
    work: PathBuf,
    sha: String,
}

/// `n` bytes no compression shrinks (xorshift64*), different for each `seed`: what a pack
/// carries of them is their size.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn commit_and_push(work: &Path, message: &str) -> String {
    git_in(work, &["add", "-A"]);
    git_in(work, &["commit", "-q", "-m", message]);
    git_in(work, &["push", "-q", "origin", "main"]);
    git_in(work, &["rev-parse", "HEAD"])
}

fn new_repo(m_root: &Path, work: &Path, name: &str) {
    std::fs::create_dir_all(work).unwrap();
    git_in(m_root, &["init", "-q", "--bare", &format!("{name}.git")]);
    git_in(work, &["init", "-q"]);
    let bare = m_root.join(format!("{name}.git"));
    git_in(work, &["remote", "add", "origin", bare.to_str().unwrap()]);
}

/// Many top-level directories; `services/api` with attributes of its own and of its
/// parent, an executable, symbolic links (one pointing outside it), an LFS file and a
/// submodule; LFS files and a submodule outside it; `current`, a link to it; two commits.
fn monorepo() -> Monorepo {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv");
    std::fs::create_dir_all(&root).unwrap();
    let lfs = LfsServer::start(&tmp.path().join("lfs")).unwrap();

    let lib = tmp.path().join("work/lib");
    new_repo(&root, &lib, "lib");
    write(&lib, "README.md", b"lib\n");
    write(&lib, "src/lib.rs", b"pub fn f() {}\n");
    commit_and_push(&lib, "lib");

    let work = tmp.path().join("work/mono");
    new_repo(&root, &work, "mono");
    git_in(&work, &["lfs", "install", "--local"]);
    git_in(&work, &["config", "lfs.locksverify", "false"]);
    git_in(&work, &["lfs", "track", "*.bin"]);
    let lfsconfig = format!("[lfs]\n\turl = {}\n", lfs.url_for("sykli", "mono"));
    write(&work, ".lfsconfig", lfsconfig.as_bytes());
    write(&work, "README.md", b"top\n");
    for i in 0..TOP_DIRS {
        for j in 0..6 {
            write(
                &work,
                &format!("dir{i:02}/sub/file{j}.dat"),
                &noise(u64::from(i * 10 + j), 6_000),
            );
        }
    }
    write(&work, "assets/logo.bin", &bytes(1_001, 80_000));
    write(&work, "services/README.md", b"services\nall\n");
    write(&work, "services/.gitattributes", b"*.md text eol=crlf\n");
    write(&work, "services/web/app.js", b"console.log(1)\n");
    write(&work, "services/web/big.bin", &bytes(1_002, 50_000));
    write(&work, "services/api/README.md", b"api\nreadme\n");
    write(
        &work,
        "services/api/.gitattributes",
        b"*.txt text eol=crlf\n",
    );
    write(&work, "services/api/notes.txt", b"a\nb\n");
    write(&work, "services/api/main.rs", b"fn main() {}\n");
    write(&work, "services/api/nested/deep/x.rs", b"// deep\n");
    write(&work, "services/api/model.bin", &bytes(1_003, 120_000));
    write(&work, "services/api/run.sh", b"#!/bin/sh\necho run\n");
    std::fs::set_permissions(
        work.join("services/api/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    symlink("main.rs", work.join("services/api/link")).unwrap();
    symlink("../web", work.join("services/api/web")).unwrap();
    symlink("services/api", work.join("current")).unwrap();
    for path in ["services/api/vendor/lib", "tools/lib"] {
        git_in(&work, &["submodule", "add", "-q", "../lib.git", path]);
    }
    commit_and_push(&work, "first");
    write(&work, "dir00/sub/file0.dat", &noise(2_000, 6_000));
    write(
        &work,
        "services/api/main.rs",
        b"fn main() { println!(\"2\"); }\n",
    );
    let sha = commit_and_push(&work, "second");
    Monorepo {
        tmp,
        root,
        lfs,
        work,
        sha,
    }
}

/// What the task prints: every path it sees, and git's answers there and in the submodule.
const TASK: &str = r#"cd /app || exit 1
find . -print | LC_ALL=C sort
for d in . vendor/lib; do
  echo "--- git in $d"
  (cd "$d" && git status 2>&1; echo "status: $?"; git rev-parse HEAD 2>&1; echo "rev-parse: $?"; git log -1 2>&1; echo "log: $?")
done
echo listed-ok"#;

/// The Job sykli builds for a task mounting `path` of the repository at `/app` (with LFS
/// and submodules); `full`: the same Job with today's full clone. The clone container sees
/// no system git config (no LFS filters but the script's own).
fn job(m: &Monorepo, url: &str, path: &str, full: bool) -> Value {
    let task: Task = serde_json::from_value(json!({
        "name": "api", "container": "any", "command": TASK,
        "mounts": [{"resource": "src", "path": "/app", "type": "directory"}]
    }))
    .unwrap();
    let resources: BTreeMap<String, Resource> =
        serde_json::from_value(json!({"src": {"type": "directory", "path": path}})).unwrap();
    let opts: BuildOptions = serde_json::from_value(json!({
        "run_id": "m1",
        "source": {"url": url, "sha": m.sha, "branch": "main",
                   "clone": {"attempts": 1, "backoff_seconds": 0,
                             "access": {"lfs": true, "submodules": "on"}}}
    }))
    .unwrap();
    let mut job = build_validated_job(&task, &resources, "sykli-api-m1", &opts);
    assert_eq!(
        job["metadata"]["annotations"]["sykli.io/fetch"],
        format!("sparse: {path}")
    );
    let env = job["spec"]["template"]["spec"]["initContainers"][0]["env"]
        .as_array_mut()
        .unwrap();
    assert!(env.iter().any(|e| e["name"] == "SYKLI_GIT_SPARSE"));
    if full {
        env.retain(|e| !e["name"].as_str().unwrap().starts_with("SYKLI_GIT_SPARSE"));
    }
    env.push(json!({"name": "GIT_CONFIG_NOSYSTEM", "value": "1"}));
    job
}

/// A finished run: what the task printed and saw at `/app`, the clone's log, the git
/// server's bytes, the LFS objects downloaded, and the objects the clone never fetched.
struct Run {
    result: PodResult,
    printed: String,
    seen: BTreeMap<String, Entry>,
    clone_log: String,
    git_bytes: u64,
    lfs_oids: BTreeSet<String>,
    missing: BTreeSet<String>,
}

/// One entry under the mount: its kind (`d`, `f`, `l`), permission bits, and its content
/// (a file's bytes, a link's target).
type Entry = (char, u32, Vec<u8>);

fn run(m: &Monorepo, server: &SmartHttp, path: &str, full: bool, shell: Shell) -> Run {
    let job = job(m, &server.url("mono.git"), path, full);
    let bytes_before = server.bytes_sent();
    let lfs_before = m.lfs.downloads().len();
    let result = run_pod(&job, &RunOptions::new(pod_dir(m.tmp.path())).shell(shell))
        .unwrap_or_else(|e| panic!("runner: {e}"));
    let task = result.container("task").unwrap();
    assert!(
        result.succeeded() && task.log.contains("listed-ok"),
        "{}",
        logs(&result)
    );
    let ws = result.volume("sykli-workspace").unwrap().to_path_buf();
    let downloads = m.lfs.downloads().split_off(lfs_before);
    assert!(downloads.iter().all(|d| d.status == 200), "{downloads:?}");
    let missing = String::from_utf8_lossy(&git_raw(
        &ws,
        &["rev-list", "--objects", "--all", "--missing=print"],
    ))
    .lines()
    .filter_map(|l| l.strip_prefix('?'))
    .map(str::to_string)
    .collect();
    // What the pod runner bound at /app, as the kubelet resolves a subPath.
    let mounted = ws.join(path).canonicalize().unwrap();
    assert!(mounted.starts_with(ws.canonicalize().unwrap()));
    Run {
        printed: task.log.clone(),
        seen: entries(&mounted),
        clone_log: result.container("sykli-clone").unwrap().log.clone(),
        git_bytes: server.bytes_sent() - bytes_before,
        lfs_oids: downloads.into_iter().map(|d| d.oid).collect(),
        missing,
        result,
    }
}

/// Every entry under `dir`, not following links.
fn entries(dir: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                ('l', mode, target.as_os_str().as_bytes().to_vec())
            } else if meta.is_dir() {
                stack.push(rel.clone());
                ('d', mode, Vec::new())
            } else {
                ('f', mode, std::fs::read(e.path()).unwrap())
            };
            out.insert(rel.to_str().unwrap().to_string(), entry);
        }
    }
    out
}

/// How two views differ, path by path (empty when they are the same).
fn differences(want: &BTreeMap<String, Entry>, got: &BTreeMap<String, Entry>) -> Vec<String> {
    let paths: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    paths
        .into_iter()
        .filter_map(|p| match (want.get(p), got.get(p)) {
            (Some(w), Some(g)) if w == g => None,
            (Some(w), Some(g)) => Some(format!(
                "{p}: {} {:o} ({} bytes), want {} {:o} ({} bytes)",
                g.0,
                g.1,
                g.2.len(),
                w.0,
                w.1,
                w.2.len()
            )),
            (Some(_), None) => Some(format!("{p}: missing")),
            (None, _) => Some(format!("{p}: unexpected")),
        })
        .collect()
}

/// The LFS object id of the pointer committed at `path`.
fn lfs_oid(m: &Monorepo, path: &str) -> String {
    let pointer = git_raw(&m.work, &["cat-file", "blob", &format!("HEAD:{path}")]);
    String::from_utf8_lossy(&pointer)
        .lines()
        .find_map(|l| l.strip_prefix("oid sha256:"))
        .unwrap_or_else(|| panic!("{path} is no pointer"))
        .to_string()
}

/// The blobs of the commit that a cone of `services/api` does not check out: neither at
/// the top, nor directly in `services`, nor below `services/api`.
fn blobs_outside_the_cone(m: &Monorepo) -> BTreeSet<String> {
    let listing = git_raw(&m.work, &["ls-tree", "-r", "-z", "HEAD"]);
    let mut inside = BTreeSet::new();
    let mut outside = BTreeSet::new();
    for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8(entry.to_vec()).unwrap();
        let (meta, path) = entry.split_once('\t').unwrap();
        let fields: Vec<&str> = meta.split(' ').collect();
        if fields[1] != "blob" {
            continue;
        }
        let in_cone = !path.contains('/')
            || path
                .strip_prefix("services/")
                .is_some_and(|rest| !rest.contains('/') || rest.starts_with("api/"));
        if in_cone {
            inside.insert(fields[2].to_string());
        } else {
            outside.insert(fields[2].to_string());
        }
    }
    outside.difference(&inside).cloned().collect()
}

fn serve(m: &Monorepo, allow_filter: bool) -> SmartHttp {
    SmartHttp::start(
        &m.root,
        ServerOptions {
            allow_filter,
            ..ServerOptions::default()
        },
    )
    .unwrap()
}

/// The task sees and prints exactly what it does with the full clone.
fn assert_same_view(full: &Run, other: &Run, what: &str) {
    let diff = differences(&full.seen, &other.seen);
    assert!(diff.is_empty(), "{what}: {}", diff.join("\n"));
    assert_eq!(full.printed, other.printed, "{what}: what the task printed");
}

#[test]
fn a_task_mounting_a_directory_fetches_only_it_and_sees_exactly_what_a_full_clone_shows() {
    let m = monorepo();
    let with_filters = serve(&m, true);
    let without_filters = serve(&m, false);
    let model = lfs_oid(&m, "services/api/model.bin");
    let all_lfs: BTreeSet<String> = [
        "services/api/model.bin",
        "services/web/big.bin",
        "assets/logo.bin",
    ]
    .iter()
    .map(|p| lfs_oid(&m, p))
    .collect();

    let full = run(&m, &with_filters, "services/api", true, Shell::Host);
    // The anchor is what it should be: the real content, attributes applied, every LFS
    // object and blob fetched.
    let seen = &full.seen;
    assert_eq!(
        seen["README.md"].2, b"api\r\nreadme\r\n",
        "the parent's attributes"
    );
    assert_eq!(
        seen["notes.txt"].2, b"a\r\nb\r\n",
        "the cone's own attributes"
    );
    assert_eq!(seen["model.bin"].2, bytes(1_003, 120_000), "LFS content");
    assert_eq!(seen["run.sh"].1, 0o777, "executable, written with umask 0");
    assert_eq!(seen["link"], ('l', 0o777, b"main.rs".to_vec()));
    assert_eq!(seen["web"].2, b"../web");
    assert_eq!(seen["vendor/lib/src/lib.rs"].2, b"pub fn f() {}\n");
    assert!(
        full.printed
            .contains("--- git in .\nfatal: not a git repository"),
        "{}",
        full.printed
    );
    assert_eq!(full.lfs_oids, all_lfs);
    assert!(full.missing.is_empty(), "{:?}", full.missing);
    assert!(
        !full.clone_log.contains("checking out only"),
        "{}",
        full.clone_log
    );

    // Sparse, against a server that allows filters: the same view, a fraction of the bytes,
    // the cone's LFS object alone, no blob outside the cone, no submodule outside it.
    let sparse = run(&m, &with_filters, "services/api", false, Shell::Host);
    assert_same_view(&full, &sparse, "sparse");
    eprintln!(
        "git server bytes: sparse {} of full {}",
        sparse.git_bytes, full.git_bytes
    );
    assert!(
        sparse.git_bytes * 10 <= full.git_bytes,
        "sparse {} bytes vs full {}",
        sparse.git_bytes,
        full.git_bytes
    );
    assert_eq!(sparse.lfs_oids, BTreeSet::from([model]));
    let outside = blobs_outside_the_cone(&m);
    assert!(
        outside.len() >= (TOP_DIRS * 6) as usize,
        "{}",
        outside.len()
    );
    assert_eq!(sparse.missing, outside, "the blobs the clone never fetched");
    let ws = sparse.result.volume("sykli-workspace").unwrap();
    assert!(ws.join(".git/modules/services/api/vendor/lib").is_dir());
    assert!(!ws.join(".git/modules/tools/lib").exists());
    assert!(
        sparse
            .clone_log
            .contains("checking out only services/api (and the files at the top)"),
        "{}",
        sparse.clone_log
    );
    assert!(!sparse.clone_log.contains("does not allow filters"));

    // A server without filters sends every blob, as today, and the clone says so once.
    let unfiltered = run(&m, &without_filters, "services/api", false, Shell::Busybox);
    assert_same_view(&full, &unfiltered, "without filters");
    assert!(unfiltered.missing.is_empty(), "{:?}", unfiltered.missing);
    assert_eq!(
        unfiltered
            .clone_log
            .matches("the server does not allow filters")
            .count(),
        1,
        "{}",
        unfiltered.clone_log
    );
    assert!(
        !unfiltered
            .clone_log
            .contains("filtering not recognized by server"),
        "{}",
        unfiltered.clone_log
    );
    assert_eq!(unfiltered.lfs_oids, sparse.lfs_oids);

    // A mount reached through a symbolic link of the commit: every file, as today.
    let linked = run(&m, &with_filters, "current", false, Shell::Busybox);
    assert_same_view(&full, &linked, "through a symbolic link");
    assert!(
        linked.clone_log.contains(
            "a mounted directory is reached through a symbolic link: checking out every file instead"
        ),
        "{}",
        linked.clone_log
    );
    assert!(linked.missing.is_empty(), "{:?}", linked.missing);
    assert_eq!(linked.lfs_oids, all_lfs);
}
