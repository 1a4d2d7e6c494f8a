//! `sykli-sync copy`: the K8s target's `copy_artifact`, run in the receiver pod on the
//! artifact claim. It copies within the root and never follows a symlink out of it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{snapshot, symlink, write};

fn bin() -> String {
    std::env::var("SYKLI_SYNC_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sykli-sync").to_string())
}

fn copy(root: &Path, from: &str, to: &str) -> Output {
    Command::new(bin())
        .args([
            "copy",
            "--root",
            root.to_str().unwrap(),
            "--from",
            from,
            "--to",
            to,
        ])
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn refused(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(out));
    assert!(
        stderr(out).starts_with("sykli-sync: error[refused]"),
        "{what}: {}",
        stderr(out)
    );
}

#[test]
fn copies_a_file_and_a_tree_within_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "producer/out.txt", b"artifact\n", false);
    write(root, "producer/dist/bin/app", b"#!/bin/sh\n", true);
    write(root, "producer/dist/lib/a.txt", b"a\n", false);
    symlink(root, "producer/dist/current", "bin/app");

    let out = copy(root, "producer/out.txt", "consumer/in/x");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files"], 1);
    assert_eq!(
        std::fs::read(root.join("consumer/in/x")).unwrap(),
        b"artifact\n"
    );

    let out = copy(root, "producer/dist", "consumer/dist");
    assert!(out.status.success(), "{}", stderr(&out));
    let copied = snapshot(&root.join("consumer/dist"));
    assert_eq!(copied, snapshot(&root.join("producer/dist")));
    assert_eq!(copied["current"], "symlink -> bin/app");
    assert_eq!(copied["bin/app"], "file 755 \"#!/bin/sh\\n\"");
    // The source is left as it was.
    assert_eq!(
        std::fs::read(root.join("producer/out.txt")).unwrap(),
        b"artifact\n"
    );
}

#[test]
fn a_symlink_pointing_outside_the_root_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret", b"host secret\n", false);
    let root = dir.path().join("claim");
    std::fs::create_dir(&root).unwrap();
    let secret = outside.path().join("secret");

    // The source itself is a symlink out of the root (absolute, and by `..`).
    symlink(&root, "producer/abs", secret.to_str().unwrap());
    refused(&copy(&root, "producer/abs", "consumer/abs"), "absolute");
    let up = format!("../../../{}", secret.strip_prefix("/").unwrap().display());
    symlink(&root, "producer/up", &up);
    refused(&copy(&root, "producer/up", "consumer/up"), "..");

    // A directory reached through a symlink.
    symlink(&root, "producer/dir", outside.path().to_str().unwrap());
    refused(&copy(&root, "producer/dir/secret", "consumer/s"), "parent");

    // A symlink inside a copied tree that points out of it.
    write(&root, "producer/tree/ok.txt", b"ok\n", false);
    symlink(&root, "producer/tree/leak", "../../../secret");
    refused(&copy(&root, "producer/tree", "consumer/tree"), "inside");

    // A symlink that is fine where it is but would point outside where it lands.
    write(&root, "producer/deep/target.txt", b"t\n", false);
    symlink(&root, "producer/deep/link", "../deep/target.txt");
    refused(&copy(&root, "producer/deep/link", "top"), "re-rooted");

    // The destination's parent is a symlink out of the root.
    let outside_dest = tempfile::tempdir().unwrap();
    symlink(&root, "escape", outside_dest.path().to_str().unwrap());
    write(&root, "producer/out.txt", b"artifact\n", false);
    refused(&copy(&root, "producer/out.txt", "escape/x"), "destination");

    assert!(!root.join("consumer").exists(), "{:?}", snapshot(&root));
    assert!(!root.join("top").exists());
    assert_eq!(std::fs::read_dir(outside_dest.path()).unwrap().count(), 0);
    assert_eq!(std::fs::read(&secret).unwrap(), b"host secret\n");
}

#[test]
fn paths_must_stay_relative_and_the_source_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("claim");
    write(&root, "producer/out.txt", b"artifact\n", false);
    for (from, to) in [
        ("../producer/out.txt", "x"),
        ("/etc/passwd", "x"),
        ("producer/out.txt", "../x"),
        ("producer/out.txt", "/tmp/x"),
        ("producer/out.txt", "a/../../x"),
        ("", "x"),
    ] {
        refused(&copy(&root, from, to), &format!("{from} -> {to}"));
    }
    assert!(!dir.path().join("x").exists());

    let out = copy(&root, "producer/missing", "consumer/x");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("sykli-sync: error[not_found]: producer/missing does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(!root.join("consumer").exists());
}

#[test]
fn overlapping_source_and_destination_are_refused_and_nothing_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("claim");
    write(&root, "producer/dist/app.txt", b"app\n", false);
    let before = snapshot(&root);
    for (from, to) in [
        ("producer", "producer/dist/again"),
        ("producer/dist", "producer"),
        ("producer", "producer"),
    ] {
        let out = copy(&root, from, to);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{from} -> {to}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("one contains the other"),
            "{}",
            stderr(&out)
        );
    }
    // A copy leaves only the copy: its spool file is gone too.
    let out = copy(&root, "producer/dist", "consumer/dist");
    assert!(out.status.success(), "{}", stderr(&out));
    let mut after = snapshot(&root);
    after.retain(|k, _| !k.starts_with("consumer"));
    assert_eq!(after, before);
}

fn place(from: &Path, to: &Path, pairs: &[&str]) -> Output {
    Command::new(bin())
        .args([
            "place",
            "--from",
            from.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
            "--",
        ])
        .args(pairs)
        .output()
        .unwrap()
}

#[test]
fn place_copies_between_two_roots_into_an_existing_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (claim, workspace) = (dir.path().join("claim"), dir.path().join("workspace"));
    write(&claim, "sykli-jobs/j1/dist/app.txt", b"built\n", false);
    write(&claim, "sykli-jobs/j2/report.txt", b"report\n", false);
    write(&workspace, "src/main.rs", b"fn main() {}\n", false);

    let out = place(
        &claim,
        &workspace,
        &[
            "sykli-jobs/j1/dist",
            "incoming/dist",
            "sykli-jobs/j2/report.txt",
            "src/report.txt",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(workspace.join("incoming/dist/app.txt")).unwrap(),
        b"built\n"
    );
    assert_eq!(
        std::fs::read(workspace.join("src/report.txt")).unwrap(),
        b"report\n"
    );
    assert_eq!(
        std::fs::read(workspace.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    // No spool is left behind in the workspace.
    let left: Vec<_> = std::fs::read_dir(&workspace)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !left.iter().any(|n| n.starts_with(".sykli-spool")),
        "{left:?}"
    );
}

#[test]
fn place_refuses_escapes_a_missing_source_and_odd_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let (claim, workspace) = (dir.path().join("claim"), dir.path().join("workspace"));
    write(&claim, "sykli-jobs/j1/ok.txt", b"ok\n", false);
    write(dir.path(), "secret.txt", b"secret\n", false);
    symlink(&claim, "sykli-jobs/j1/leak", "../../../secret.txt");
    std::fs::create_dir_all(&workspace).unwrap();
    let before = snapshot(dir.path());

    refused(
        &place(&claim, &workspace, &["sykli-jobs/j1/leak", "leak"]),
        "a symlink out of the claim",
    );
    refused(
        &place(&claim, &workspace, &["sykli-jobs/j1/ok.txt", "../out.txt"]),
        "a destination out of the workspace",
    );
    let missing = place(&claim, &workspace, &["sykli-jobs/j9/none", "none"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("error[not_found]"),
        "{}",
        stderr(&missing)
    );
    let odd = place(&claim, &workspace, &["sykli-jobs/j1/ok.txt"]);
    assert_eq!(odd.status.code(), Some(2), "{}", stderr(&odd));
    assert_eq!(snapshot(dir.path()), before);
}

/// The symlink cases of the hostile corpus through `place`: each symlink of a case is
/// copied on its own from the claim (where it sits one level deeper, `j/<path>`) to its
/// path in a workspace that keeps what the earlier ones left, so the last one lands among
/// the others. Each case is refused by its rule: by `pack` in the claim, or by the
/// extractor, which resolves a new symlink through those the workspace already holds.
#[test]
fn place_refuses_the_symlink_cases_of_the_corpus() {
    use std::os::unix::ffi::OsStrExt;
    // A symlink that only goes out once a later one is written cannot be seen by the later
    // extraction (it does not read all of the destination): the tree it leaves is refused
    // by a scan, as a manifest of it would be.
    let later_only = ["symlink-chain-out-reversed"];
    let sentinel = tempfile::tempdir().unwrap();
    let mut placed = 0;
    for case in sykli_testkit::hostile_archives::corpus(sentinel.path()) {
        let links = case.symlinks();
        let target_rule = ["symlink-escapes", "symlink-absolute", "symlink-loop"];
        if links.is_empty() || !target_rule.contains(&case.rule) || case.planted_symlink.is_some() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let (claim, workspace) = (dir.path().join("claim"), dir.path().join("workspace"));
        std::fs::create_dir_all(&workspace).unwrap();
        for (path, target) in &links {
            let p = claim.join("j").join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &p).unwrap();
        }
        let mut refusal = None;
        for (path, _) in &links {
            let out = place(&claim, &workspace, &[&format!("j/{path}"), path]);
            if !out.status.success() {
                refusal = Some(out);
                break;
            }
        }
        if later_only.contains(&case.name) {
            assert!(refusal.is_none(), "{}", case.name);
            let out = Command::new(bin())
                .args(["scan", "--root", workspace.to_str().unwrap()])
                .output()
                .unwrap();
            refused(&out, case.name);
            assert!(
                stderr(&out).contains(&format!("(rule {})", case.rule)),
                "{}: {}",
                case.name,
                stderr(&out)
            );
        } else {
            let out = refusal.unwrap_or_else(|| panic!("{}: every symlink placed", case.name));
            refused(&out, case.name);
            assert!(
                stderr(&out).contains(&format!("(rule {})", case.rule)),
                "{}: {}",
                case.name,
                stderr(&out)
            );
        }
        placed += 1;
    }
    assert!(placed >= 9, "{placed}");
}

#[test]
fn copy_refuses_a_tree_whose_symlinks_leave_the_root_together() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("claim");
    write(dir.path(), "secret", b"host secret\n", false);
    // In producer/tree, `l` → `.` and `e` → `l/l/../../../secret`: inside one by one, but
    // `l/l` is producer/tree, so `e` is the claim's parent's `secret`.
    symlink(&root, "producer/tree/l", ".");
    symlink(&root, "producer/tree/e", "l/l/../../../secret");
    write(&root, "producer/tree/ok.txt", b"ok\n", false);
    let out = copy(&root, "producer/tree", "consumer/tree");
    refused(&out, "a chain of symlinks");
    assert!(
        stderr(&out).contains("rule symlink-escapes"),
        "{}",
        stderr(&out)
    );
    assert!(!root.join("consumer").exists(), "{:?}", snapshot(&root));
}
