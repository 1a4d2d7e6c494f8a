//! Git context detection against real repositories.

mod support;

use std::collections::HashMap;
use std::path::Path;

use support::{git, with_origin, Repo};
use sykli_core::git::{detect, status, url, GitContext, Pushed};
use sykli_core::Error;

fn detect_with(path: &Path, env: &[(&str, &str)]) -> GitContext {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    detect(path, &|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("detect {}: {e}", path.display()))
}

fn detect_plain(path: &Path) -> GitContext {
    detect_with(path, &[])
}

fn codes(ctx: &GitContext) -> Vec<(String, String)> {
    ctx.changes
        .iter()
        .map(|c| (c.code.clone(), c.path.clone()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(c, p)| (c.to_string(), p.to_string()))
        .collect()
}

#[test]
fn clean_branch_with_pushed_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = with_origin(tmp.path());
    let ctx = detect_plain(&repo.dir);
    assert_eq!(ctx.branch.as_deref(), Some("main"));
    assert_eq!(ctx.branch_source.as_deref(), Some("HEAD"));
    assert_eq!(ctx.sha, repo.head());
    assert_eq!(ctx.sha.len(), 40);
    assert!(!ctx.dirty);
    assert!(ctx.changes.is_empty());
    assert_eq!(ctx.pushed, Pushed::Yes);
    assert_eq!(ctx.remote.as_deref(), Some("origin"));
    assert_eq!(
        ctx.root.canonicalize().unwrap(),
        repo.dir.canonicalize().unwrap()
    );
    assert!(ctx.submodules.is_empty());
    assert!(!ctx.lfs && !ctx.shallow && !ctx.worktree);
}

#[test]
fn a_commit_not_pushed_to_its_upstream_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = with_origin(tmp.path());
    repo.write("new.txt", "x\n");
    let sha = repo.commit_all("local only");
    let ctx = detect_plain(&repo.dir);
    assert_eq!(ctx.sha, sha);
    assert_eq!(ctx.pushed, Pushed::No);
    assert!(!ctx.dirty);
    repo.git(&["push", "-q"]);
    assert_eq!(detect_plain(&repo.dir).pushed, Pushed::Yes);
}

#[test]
fn pushed_is_unknown_without_remote_tracking_refs() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path());
    repo.write("a", "a\n");
    repo.commit_all("a");
    let ctx = detect_plain(&repo.dir);
    assert_eq!(ctx.pushed, Pushed::Unknown);
    assert_eq!((ctx.remote, ctx.url), (None, None));
    assert!(
        ctx.warnings.iter().any(|w| w.starts_with("no remote")),
        "{:?}",
        ctx.warnings
    );
}

#[test]
fn detached_head_takes_the_branch_from_ci_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = with_origin(tmp.path());
    let sha = repo.head();
    repo.git(&["checkout", "-q", "--detach"]);

    let ctx = detect_plain(&repo.dir);
    assert_eq!((ctx.branch, ctx.branch_source), (None, None));
    assert_eq!(ctx.sha, sha);
    assert_eq!(ctx.pushed, Pushed::Yes);

    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Env, &str, &str)] = &[
        (
            &[
                ("GITHUB_HEAD_REF", "feature/x"),
                ("GITHUB_REF_NAME", "12/merge"),
            ],
            "feature/x",
            "GITHUB_HEAD_REF",
        ),
        (
            &[("GITHUB_HEAD_REF", ""), ("GITHUB_REF_NAME", "main")],
            "main",
            "GITHUB_REF_NAME",
        ),
        (
            &[("CI_COMMIT_REF_NAME", "gl-branch")],
            "gl-branch",
            "CI_COMMIT_REF_NAME",
        ),
        (&[("BUILDKITE_BRANCH", "bk")], "bk", "BUILDKITE_BRANCH"),
        (&[("GIT_BRANCH", "origin/jenkins")], "jenkins", "GIT_BRANCH"),
        (
            &[("GIT_BRANCH", "refs/heads/release/1.0")],
            "release/1.0",
            "GIT_BRANCH",
        ),
    ];
    for (env, branch, source) in cases {
        let ctx = detect_with(&repo.dir, env);
        assert_eq!(ctx.branch.as_deref(), Some(*branch), "{env:?}");
        assert_eq!(ctx.branch_source.as_deref(), Some(*source), "{env:?}");
    }
}

#[test]
fn a_branch_checked_out_ignores_ci_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = with_origin(tmp.path());
    let ctx = detect_with(&repo.dir, &[("GITHUB_REF_NAME", "other")]);
    assert_eq!(ctx.branch.as_deref(), Some("main"));
}

#[test]
fn each_kind_of_change_is_reported_with_its_porcelain_code() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path());
    for f in [
        "mod.txt",
        "del.txt",
        "staged.txt",
        "both.txt",
        "rm.txt",
        "exec.sh",
        "link",
        "same.txt",
    ] {
        repo.write(f, &format!("{f}\n"));
    }
    repo.write(".gitignore", "*.log\nignored-dir/\n");
    repo.commit_all("base");

    repo.write("mod.txt", "modified content\n");
    std::fs::remove_file(repo.dir.join("del.txt")).unwrap();
    repo.write("staged.txt", "staged change\n");
    repo.git(&["add", "staged.txt"]);
    repo.write("both.txt", "staged\n");
    repo.git(&["add", "both.txt"]);
    repo.write("both.txt", "staged then changed\n");
    repo.git(&["rm", "-q", "rm.txt"]);
    repo.write("added.txt", "new\n");
    repo.git(&["add", "added.txt"]);
    repo.git(&["update-index", "--chmod=+x", "exec.sh"]);
    std::fs::remove_file(repo.dir.join("link")).unwrap();
    std::os::unix::fs::symlink("mod.txt", repo.dir.join("link")).unwrap();
    repo.write("same.txt", "SAME.TXT\n"); // same size, same second as the commit
    repo.write("untracked.txt", "u\n");
    repo.write("newdir/a.txt", "u\n");
    repo.write("newdir/deep/b.txt", "u\n");
    repo.write("debug.log", "ignored\n");
    repo.write("ignored-dir/x.txt", "ignored\n");
    repo.write("only-ignored/x.log", "ignored\n");

    let ctx = detect_plain(&repo.dir);
    let expected = pairs(&[
        ("A ", "added.txt"),
        ("MM", "both.txt"),
        (" D", "del.txt"),
        ("MM", "exec.sh"),
        (" T", "link"),
        (" M", "mod.txt"),
        ("D ", "rm.txt"),
        (" M", "same.txt"),
        ("M ", "staged.txt"),
        ("??", "newdir/"),
        ("??", "untracked.txt"),
    ]);
    assert_eq!(codes(&ctx), expected);
    assert_eq!(repo.porcelain(), expected, "git itself agrees");
    assert!(ctx.dirty);
}

#[test]
fn untracked_files_alone_make_the_tree_dirty() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path());
    repo.write("a", "a\n");
    repo.commit_all("a");
    repo.write("new", "n\n");
    let ctx = detect_plain(&repo.dir);
    assert!(ctx.dirty);
    assert_eq!(codes(&ctx), pairs(&[("??", "new")]));
}

#[test]
fn a_merge_conflict_is_reported_as_unmerged() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path());
    repo.write("f", "base\n");
    repo.commit_all("base");
    repo.git(&["checkout", "-q", "-b", "other"]);
    repo.write("f", "other\n");
    repo.commit_all("other");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("f", "main\n");
    repo.commit_all("main");
    let out = support::git_cmd(&repo.dir)
        .args(["merge", "-q", "other"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the merge conflicts");
    let ctx = detect_plain(&repo.dir);
    assert_eq!(codes(&ctx), pairs(&[("UU", "f")]));
    assert_eq!(repo.porcelain(), codes(&ctx));
}

#[test]
fn credentials_in_the_remote_url_are_stripped_and_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = with_origin(tmp.path());
    repo.git(&[
        "remote",
        "set-url",
        "origin",
        "https://oauth2:s3cr3t-t0ken@git.example.com/group/sub/repo.git",
    ]);
    let ctx = detect_plain(&repo.dir);
    assert_eq!(
        ctx.url.as_deref(),
        Some("https://git.example.com/group/sub/repo.git")
    );
    assert_eq!(ctx.warnings.len(), 1, "{:?}", ctx.warnings);
    assert!(ctx.warnings[0].contains("embeds credentials"));
    assert!(
        !format!("{ctx:?}").contains("s3cr3t"),
        "the token appears nowhere in the context"
    );
}

#[test]
fn remote_urls_of_every_form_are_reported_as_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, bare) = with_origin(tmp.path());
    for u in [
        "https://github.com/org/repo.git",
        "http://git.local:8080/org/repo",
        "ssh://git@host.example:2222/group/sub/repo.git",
        "git@github.com:org/repo.git",
        "git://127.0.0.1/repo.git",
    ] {
        repo.git(&["remote", "set-url", "origin", u]);
        let ctx = detect_plain(&repo.dir);
        assert_eq!(ctx.url.as_deref(), Some(u));
        assert!(ctx.warnings.is_empty(), "{u}: {:?}", ctx.warnings);
    }
    repo.git(&["remote", "set-url", "origin", bare.to_str().unwrap()]);
    let ctx = detect_plain(&repo.dir);
    assert!(
        ctx.warnings.iter().any(|w| w.contains("is a local path")),
        "{:?}",
        ctx.warnings
    );
}

#[test]
fn the_upstream_remote_wins_then_origin_then_the_only_remote() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, bare) = with_origin(tmp.path());
    repo.git(&["remote", "add", "upstream", bare.to_str().unwrap()]);
    repo.git(&["fetch", "-q", "upstream"]);
    repo.git(&["remote", "set-url", "origin", "https://h/origin.git"]);
    repo.git(&["branch", "-q", "-u", "upstream/main"]);
    assert_eq!(detect_plain(&repo.dir).remote.as_deref(), Some("upstream"));

    repo.git(&["branch", "-q", "--unset-upstream"]);
    assert_eq!(detect_plain(&repo.dir).remote.as_deref(), Some("origin"));

    repo.git(&["remote", "remove", "origin"]);
    assert_eq!(detect_plain(&repo.dir).remote.as_deref(), Some("upstream"));

    repo.git(&["remote", "add", "gitlab", "https://h/gl.git"]);
    let ctx = detect_plain(&repo.dir);
    assert_eq!(ctx.remote, None);
    assert!(
        ctx.warnings
            .iter()
            .any(|w| w.contains("several remotes (gitlab, upstream)")),
        "{:?}",
        ctx.warnings
    );
}

#[test]
fn works_from_a_subdirectory() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path());
    repo.write("src/deep/file.rs", "x\n");
    let sha = repo.commit_all("a");
    let ctx = detect_plain(&repo.dir.join("src/deep"));
    assert_eq!(ctx.sha, sha);
    assert_eq!(
        ctx.root.canonicalize().unwrap(),
        repo.dir.canonicalize().unwrap()
    );
}

#[test]
fn works_in_a_linked_worktree() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = with_origin(tmp.path());
    let wt = tmp.path().join("wt");
    repo.git(&[
        "worktree",
        "add",
        "-q",
        "-b",
        "wt-branch",
        wt.to_str().unwrap(),
    ]);
    std::fs::write(wt.join("wt-only.txt"), "x\n").unwrap();
    let ctx = detect_plain(&wt);
    assert_eq!(ctx.branch.as_deref(), Some("wt-branch"));
    assert!(ctx.worktree);
    assert_eq!(ctx.root.canonicalize().unwrap(), wt.canonicalize().unwrap());
    assert_eq!(codes(&ctx), pairs(&[("??", "wt-only.txt")]));
    assert_eq!(ctx.url, detect_plain(&repo.dir).url);
    assert!(
        !detect_plain(&repo.dir).dirty,
        "the main worktree is not affected"
    );
}

#[test]
fn works_with_a_git_file_pointing_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(
        tmp.path(),
        &[
            "init",
            "-q",
            "--separate-git-dir",
            tmp.path().join("sep.git").to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    let repo = Repo { dir: work };
    repo.write("f", "f\n");
    let sha = repo.commit_all("f");
    assert!(repo.dir.join(".git").is_file());
    let ctx = detect_plain(&repo.dir);
    assert_eq!(ctx.sha, sha);
    assert!(!ctx.dirty);
}

#[test]
fn submodules_are_listed_and_their_changes_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = Repo::init(&tmp.path().join("sub"));
    sub.write("s.txt", "s\n");
    sub.commit_all("s");
    let top = Repo::init(&tmp.path().join("top"));
    top.write("t.txt", "t\n");
    top.git(&["submodule", "add", "-q", "../sub", "libs/sub"]);
    top.commit_all("with submodule");
    let ctx = detect_plain(&top.dir);
    assert_eq!(ctx.submodules, vec!["libs/sub".to_string()]);
    assert!(!ctx.dirty, "{:?}", ctx.changes);

    std::fs::write(top.dir.join("libs/sub/untracked"), "u\n").unwrap();
    let ctx = detect_plain(&top.dir);
    assert_eq!(codes(&ctx), pairs(&[(" M", "libs/sub")]));
    assert_eq!(top.porcelain(), codes(&ctx));
}

#[test]
fn lfs_attributes_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(tmp.path());
    repo.write(".gitattributes", "*.txt text\n# *.bin filter=lfs\n");
    repo.write("a.txt", "a\n");
    repo.commit_all("no lfs");
    assert!(
        !detect_plain(&repo.dir).lfs,
        "a commented-out rule does not count"
    );
    repo.write(
        "assets/.gitattributes",
        "*.psd filter=lfs diff=lfs merge=lfs -text\n",
    );
    repo.commit_all("lfs");
    let ctx = detect_plain(&repo.dir);
    assert!(ctx.lfs);
    assert!(!ctx.dirty, "{:?}", ctx.changes);
}

/// `lfs: :auto` follows this: a submodule whose attributes use LFS (here nested two levels
/// down, the parent's own attributes silent) needs LFS in the clone.
#[test]
fn lfs_attributes_of_a_checked_out_submodule_count() {
    let tmp = tempfile::tempdir().unwrap();
    let leaf = Repo::init(&tmp.path().join("leaf"));
    leaf.write(
        ".gitattributes",
        "*.bin filter=lfs diff=lfs merge=lfs -text\n",
    );
    leaf.write("l.txt", "l\n");
    leaf.commit_all("leaf");
    let mid = Repo::init(&tmp.path().join("mid"));
    mid.write("m.txt", "m\n");
    mid.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        "../leaf",
        "leaf",
    ]);
    mid.commit_all("mid");
    let top = Repo::init(&tmp.path().join("top"));
    top.write(".gitattributes", "*.txt text\n");
    top.write("t.txt", "t\n");
    top.commit_all("top");
    assert!(!detect_plain(&top.dir).lfs);
    top.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        "../mid",
        "libs/mid",
    ]);
    top.git(&[
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "update",
        "--init",
        "--recursive",
        "-q",
    ]);
    top.commit_all("with submodules");
    let ctx = detect_plain(&top.dir);
    assert!(
        ctx.lfs,
        "the nested submodule's LFS attributes were not seen"
    );
    assert!(!ctx.dirty, "{:?}", ctx.changes);
}

#[test]
fn a_shallow_clone_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, bare) = with_origin(tmp.path());
    let url = format!("file://{}", bare.display());
    git(
        tmp.path(),
        &["clone", "-q", "--depth", "1", &url, "shallow"],
    );
    let ctx = detect_plain(&tmp.path().join("shallow"));
    assert!(ctx.shallow);
    assert_eq!(ctx.pushed, Pushed::Yes);
}

#[test]
fn clear_errors_outside_a_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let none = |_: &str| None;
    match detect(tmp.path(), &none) {
        Err(e @ Error::NotAGitRepo { .. }) => assert_eq!(e.kind(), "not_a_git_repo"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        detect(&tmp.path().join("missing"), &none),
        Err(Error::PathNotFound { .. })
    ));
    Repo::init(&tmp.path().join("empty"));
    match detect(&tmp.path().join("empty"), &none) {
        Err(e @ Error::NoCommits { .. }) => assert!(e.to_string().contains("no commits yet")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn parse_errors_name_the_url() {
    let e = url::RemoteUrl::parse("ftp://h/r").unwrap_err();
    assert_eq!(e.kind(), "invalid_url");
    assert!(e.to_string().contains("ftp://h/r"));
}

/// Deterministic pseudo-random numbers, so a failing seed can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

#[test]
fn status_agrees_with_git_on_random_changes() {
    for seed in 1..=12u64 {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo::init(tmp.path());
        let mut rng = Lcg(seed);
        let dirs = ["", "a/", "a/b/", "c/", "c/d/e/", "f-g/", "f/"];
        let mut files = Vec::new();
        for i in 0..60 {
            let path = format!("{}file{i}.txt", dirs[rng.next(dirs.len())]);
            repo.write(&path, &format!("content {i}\n"));
            files.push(path);
        }
        repo.write(".gitignore", "*.log\nbuild/\n");
        repo.commit_all("base");
        for _ in 0..25 {
            let f = files[rng.next(files.len())].clone();
            let p = repo.dir.join(&f);
            if !p.exists() {
                continue;
            }
            match rng.next(10) {
                0 => repo.write(&f, "a longer modification\n"),
                1 => repo.write(&f, &std::fs::read_to_string(&p).unwrap().to_uppercase()),
                2 => std::fs::remove_file(&p).unwrap(),
                3 => {
                    repo.write(&f, "staged\n");
                    repo.git(&["add", &f]);
                }
                4 => {
                    repo.git(&["rm", "-q", "--cached", &f]);
                }
                5 => repo.write(&format!("{}.new", f), "untracked\n"),
                6 => repo.write(&format!("{}.log", f), "ignored\n"),
                7 => repo.write(
                    &format!("newdir{}/x/y.txt", rng.next(3)),
                    "deep untracked\n",
                ),
                8 => repo.write(&format!("build/out{}", rng.next(3)), "ignored dir\n"),
                _ => {
                    repo.write(&f, "staged then changed\n");
                    repo.git(&["add", &f]);
                    repo.write(&f, "changed again after staging\n");
                }
            }
        }
        let ours = codes(&detect_plain(&repo.dir));
        let libgit2 = status::libgit2_status(&git2::Repository::open(&repo.dir).unwrap()).unwrap();
        let libgit2: Vec<_> = libgit2
            .iter()
            .map(|c| (c.code.clone(), c.path.clone()))
            .collect();
        let theirs = repo.porcelain();
        assert_eq!(ours, theirs, "seed {seed}: ours vs git");
        assert_eq!(libgit2, theirs, "seed {seed}: libgit2 fallback vs git");
    }
}

#[test]
fn counts_follow_the_porcelain_codes() {
    use sykli_core::git::status::Counts;
    let changes: Vec<_> = [
        "M ", "MM", " M", " T", " D", "D ", "A ", "??", "??", "UU", "AA", "DD",
    ]
    .iter()
    .enumerate()
    .map(|(i, code)| sykli_core::git::Change {
        path: format!("p{i}"),
        code: code.to_string(),
    })
    .collect();
    let c = Counts::of(&changes);
    assert_eq!(
        (c.staged, c.modified, c.deleted, c.untracked, c.conflicted),
        (4, 3, 1, 2, 3)
    );
}
