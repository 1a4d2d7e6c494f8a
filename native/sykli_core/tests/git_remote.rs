//! What the remote has: refs resolved with `git ls-remote` against real remotes.

mod support;

use std::path::Path;
use std::process::Command;

use support::{with_origin, Repo};
use sykli_core::git::remote::{
    fetchable, not_on_remote, refs_from_ls_remote, resolve, RemoteRef, Resolved,
};
use sykli_core::{Error, Result};

// What the Elixir side does: run the user's git, hand over what it printed.
fn listing(dir: &Path, remote: &str) -> Result<Vec<RemoteRef>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["ls-remote", "--quiet", "--", remote])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    refs_from_ls_remote(remote, out.status.success(), &text)
}

fn resolve_ref(dir: &Path, remote: &str, want: &str) -> Result<Resolved> {
    let refs = listing(dir, remote)?;
    resolve(&sykli_core::git::open(dir)?, &refs, remote, want)
}

fn confirm_pushed(dir: &Path, remote: &str, sha: &str) -> Result<String, Error> {
    let refs = listing(dir, remote)?;
    fetchable(&sykli_core::git::open(dir)?, &refs, sha)
        .ok_or_else(|| not_on_remote(sha, remote, "HEAD"))
}

#[test]
fn branches_tags_and_commits_resolve_to_what_the_remote_has() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = with_origin(tmp.path());
    let first = repo.head();
    repo.write("b.txt", "b\n");
    let second = repo.commit_all("second");
    repo.git(&["tag", "-a", "-m", "release", "v1"]);
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("f.txt", "f\n");
    let feature = repo.commit_all("feature");
    repo.git(&["push", "-q", "origin", "main", "feature", "v1"]);
    repo.git(&["checkout", "-q", "main"]);

    let r = resolve_ref(&repo.dir, "origin", "feature").unwrap();
    assert_eq!(r.sha, feature);
    assert_eq!(r.branch.as_deref(), Some("feature"));
    assert_eq!(r.ref_name.as_deref(), Some("refs/heads/feature"));

    // An annotated tag names the commit it points at, not the tag object.
    let r = resolve_ref(&repo.dir, "origin", "v1").unwrap();
    assert_eq!(r.sha, second);
    assert_eq!(r.ref_name.as_deref(), Some("refs/tags/v1"));
    assert_eq!(r.branch, None);

    let r = resolve_ref(&repo.dir, "origin", "refs/heads/main").unwrap();
    assert_eq!(r.sha, second);

    // An older commit is fetchable through the branch that contains it; a prefix works too.
    let r = resolve_ref(&repo.dir, "origin", &first).unwrap();
    assert_eq!(r.sha, first);
    assert!(
        matches!(r.branch.as_deref(), Some("main" | "feature")),
        "{r:?}"
    );
    let r = resolve_ref(&repo.dir, "origin", &first[..10]).unwrap();
    assert_eq!(r.sha, first);
}

#[test]
fn what_the_remote_does_not_have_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = with_origin(tmp.path());
    repo.git(&["push", "-q", "origin", "main:release-2"]);
    repo.write("local.txt", "x\n");
    let local = repo.commit_all("local only");

    let e = resolve_ref(&repo.dir, "origin", "release").unwrap_err();
    assert_eq!(e.kind(), "unknown_ref");
    assert!(e.to_string().contains("did you mean release-2?"), "{e}");
    // Near misses as one types them, from what the remote lists.
    repo.git(&["tag", "v1.0.0", "HEAD~1"]);
    repo.git(&["push", "-q", "origin", "v1.0.0"]);
    for (want, hint) in [
        ("mainn", "(did you mean main?)"),
        ("v1.0", "(did you mean v1.0.0?)"),
    ] {
        let e = resolve_ref(&repo.dir, "origin", want).unwrap_err();
        assert_eq!(e.kind(), "unknown_ref");
        assert_eq!(
            e.to_string(),
            format!("{want:?} is no branch, tag or commit of remote origin {hint}")
        );
    }

    let e = resolve_ref(&repo.dir, "origin", &local).unwrap_err();
    assert_eq!(e.kind(), "not_pushed");
    assert!(e.to_string().contains(&local), "{e}");

    let e = confirm_pushed(&repo.dir, "origin", &local).unwrap_err();
    assert_eq!(e.kind(), "not_pushed");
    repo.git(&["push", "-q", "origin", "main"]);
    assert_eq!(
        confirm_pushed(&repo.dir, "origin", &local).unwrap(),
        "refs/heads/main"
    );

    for bad in ["--upload-pack=touch /tmp/x", "", "a..b", "has space"] {
        let e = resolve_ref(&repo.dir, "origin", bad).unwrap_err();
        assert_eq!(e.kind(), "invalid_option", "{bad:?}: {e}");
    }
}

#[test]
fn an_unreachable_remote_fails_without_echoing_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("work"));
    repo.write("a", "a\n");
    repo.commit_all("first");
    // Port 1 on loopback refuses at once.
    repo.git(&[
        "remote",
        "add",
        "origin",
        "http://deploy:s3cr3t-token@127.0.0.1:1/repo.git",
    ]);
    let e = resolve_ref(&repo.dir, "origin", "main").unwrap_err();
    assert_eq!(e.kind(), "remote_unreachable");
    let message = e.to_string();
    assert!(message.contains("git ls-remote origin failed"), "{message}");
    assert!(!message.contains("s3cr3t-token"), "{message}");
}
