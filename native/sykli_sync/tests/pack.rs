//! `pack` (a task's outputs, for the sync back) and `extract_hardened`, round trip.

mod common;

use std::os::unix::ffi::OsStrExt;

use common::{archive_listing, listing, snapshot, symlink, write};
use sykli_sync::{extract_hardened, pack, Error, Limits, Rule};

fn outputs(root: &std::path::Path) {
    write(root, "dist/app", b"\x7fELF binary", true);
    write(root, "dist/lib/util.js", b"export {}\n", false);
    write(
        root,
        &format!("dist/{}/deep.txt", "long".repeat(40)),
        b"deep\n",
        false,
    );
    std::fs::create_dir_all(root.join("dist/empty")).unwrap();
    symlink(root, "dist/current", "lib/util.js");
    symlink(root, "dist/lib/up", "../app");
    write(root, "report.txt", b"42 passed\n", false);
    symlink(root, "latest", "dist/app");
}

#[test]
fn pack_then_extract_roundtrip() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    outputs(&root);
    write(&root, "not-an-output", b"stays home", false);

    let mut bytes = Vec::new();
    let packed = pack(
        &root,
        &[
            "dist".into(),
            "report.txt".into(),
            "latest".into(),
            "dist/app".into(),
        ],
        &mut bytes,
    )
    .unwrap();
    assert_eq!(
        (packed.files, packed.symlinks, packed.directories),
        (4, 3, 4)
    );
    // "dist/app" was named twice (directly and inside dist): once in the archive.
    assert_eq!(
        archive_listing(&bytes)
            .iter()
            .filter(|(p, _)| p == "dist/app")
            .count(),
        1
    );

    let dest = work.path().join("back");
    let report = extract_hardened(&bytes[..], &dest, Limits::default()).unwrap();
    assert_eq!(
        (report.files, report.symlinks, report.directories),
        (4, 3, 4)
    );
    assert_eq!(report.bytes, packed.bytes);
    std::fs::remove_file(root.join("not-an-output")).unwrap();
    assert_eq!(snapshot(&dest), snapshot(&root));

    // The sync back lands on the user's working directory: existing files are replaced.
    write(&root, "report.txt", b"old report", false);
    extract_hardened(&bytes[..], &root, Limits::default()).unwrap();
    assert_eq!(
        std::fs::read(root.join("report.txt")).unwrap(),
        b"42 passed\n"
    );

    // "." packs the whole root.
    let mut all = Vec::new();
    pack(&root, &[".".into()], &mut all).unwrap();
    let dest2 = work.path().join("all");
    extract_hardened(&all[..], &dest2, Limits::default()).unwrap();
    assert_eq!(snapshot(&dest2), snapshot(&root));
}

#[test]
fn a_walk_packs_everything_but_git_in_any_spelling() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    write(&root, "built.txt", b"built\n", false);
    write(
        &root,
        ".git/config",
        b"[core]\n\tfsmonitor = touch pwned\n",
        false,
    );
    write(&root, ".git/hooks/post-checkout", b"#!/bin/sh\n", true);
    write(
        &root,
        "vendor/lib/.git",
        b"gitdir: ../../.git/modules/lib\n",
        false,
    );
    write(&root, "vendor/lib/lib.c", b"int x;\n", false);
    write(&root, ".GIT/config", b"case\n", false);
    write(&root, "git~1/config", b"short name\n", false);
    write(&root, "dist/app.git.tar", b"not git\n", false);

    let mut bytes = Vec::new();
    pack(&root, &[".".into()], &mut bytes).unwrap();
    let mut paths: Vec<String> = archive_listing(&bytes)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "built.txt",
            "dist/",
            "dist/app.git.tar",
            "vendor/",
            "vendor/lib/",
            "vendor/lib/lib.c"
        ]
    );
}

#[test]
fn pack_refuses_paths_that_escape_the_root() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    outputs(&root);
    write(work.path(), "outside/secret", b"secret", false);
    symlink(&root, "via", "../outside");
    let err = |paths: &[&str]| {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        pack(&root, &paths, std::io::sink()).unwrap_err()
    };
    assert_eq!(
        err(&["../outside/secret"]).rule(),
        Some(Rule::ParentComponent)
    );
    assert_eq!(
        err(&["dist/../../outside/secret"]).rule(),
        Some(Rule::ParentComponent)
    );
    assert_eq!(err(&["/etc/passwd"]).rule(), Some(Rule::AbsolutePath));
    assert_eq!(err(&["via/secret"]).rule(), Some(Rule::SymlinkInPath));
    // The symlink itself is packed as a symlink... whose target leaves the root: refused,
    // as the extractor on the other side would.
    assert_eq!(err(&["via"]).rule(), Some(Rule::SymlinkEscapes));
    assert!(matches!(err(&["missing"]), Error::Io { path, .. } if path == "missing"));

    let fifo = std::ffi::CString::new(root.join("dist/pipe").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert!(matches!(
        err(&["dist"]),
        Error::UnsupportedFile { kind: "fifo", .. }
    ));
    assert_eq!(listing(&work.path().join("outside")), ["secret"]);
}

#[test]
fn pack_refuses_symlinks_that_leave_the_root_through_other_symlinks() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    outputs(&root);
    // Each inside on its own; together, `e` climbs out of the root.
    symlink(&root, "dist/l", ".");
    symlink(&root, "dist/e", "l/l/../../outside/secret");
    write(work.path(), "outside/secret", b"secret", false);
    let err = pack(&root, &[".".into()], std::io::sink()).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::SymlinkEscapes), "{err}");
    assert!(err.to_string().contains("dist/e"), "{err}");
    // The links packed are the set: without `dist/l` in it, `dist/e` is a dangling link
    // inside the archive's tree.
    pack(&root, &["dist/e".into()], std::io::sink()).unwrap();
    let err = pack(&root, &["dist".into()], std::io::sink()).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::SymlinkEscapes), "{err}");

    // A loop.
    std::fs::remove_file(root.join("dist/e")).unwrap();
    symlink(&root, "dist/a", "b");
    symlink(&root, "dist/b", "a");
    let err = pack(&root, &["dist".into()], std::io::sink()).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::SymlinkLoop), "{err}");
}

/// The symlink cases of the hostile corpus, built on disk as a tree: `pack` (what the
/// receiver answers the sync back with, and what `copy` and `place` go through) refuses
/// them all, by the case's rule.
#[test]
fn pack_refuses_the_symlink_trees_of_the_corpus() {
    let sentinel = tempfile::tempdir().unwrap();
    let mut packed = 0;
    for case in sykli_testkit::hostile_archives::corpus(sentinel.path()) {
        let links = case.symlinks();
        let target_rule = ["symlink-escapes", "symlink-absolute", "symlink-loop"];
        if links.is_empty() || !target_rule.contains(&case.rule) || case.planted_symlink.is_some() {
            continue;
        }
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        write(&root, "keep.txt", b"ok", false);
        for (path, target) in &links {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &p).unwrap();
        }
        let err = pack(&root, &[".".into()], std::io::sink()).expect_err(case.name);
        assert_eq!(
            err.rule().map(Rule::name),
            Some(case.rule),
            "{}: {err}",
            case.name
        );
        assert!(
            links
                .iter()
                .any(|(p, _)| err.to_string().contains(p.as_str())),
            "{}: {err}",
            case.name
        );
        packed += 1;
    }
    // The nested, long, dotdot and absolute escapes, the chains and the loop.
    assert!(packed >= 9, "{packed}");
}
