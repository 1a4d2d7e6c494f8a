//! The store on real directories: full and incremental applies, identical trees,
//! tampering, concurrency, checkout.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{archive_listing, gunzip, gzip, listing, snapshot, symlink, write};
use sykli_sync::{
    diff, write_archive, ApplyReport, Delta, Entry, EntryKind, Error, Manifest, Rule, Store,
    SyncHeader,
};

/// The laptop's side of a sync: manifest, base from the store, delta, archive.
fn archive_for(store: &Store, root: &Path) -> (String, Vec<u8>, Delta) {
    let target = Manifest::scan(root).unwrap();
    let base_tree = store.latest().unwrap();
    let base = match &base_tree {
        Some(t) => store.manifest(t).unwrap().unwrap(),
        None => Manifest::new(),
    };
    let delta = diff(&base, &target);
    let mut bytes = Vec::new();
    let n = write_archive(root, base_tree.as_deref(), &target, &delta, &mut bytes).unwrap();
    assert_eq!(n, bytes.len() as u64);
    (target.tree_hash(), bytes, delta)
}

fn long_name() -> String {
    format!("deep/{}/{}.txt", "d".repeat(120), "n".repeat(150))
}

fn working_tree(root: &Path) {
    write(root, "README.md", b"# demo\n", false);
    write(root, "src/main.rs", b"fn main() {}\n", false);
    write(root, "src/lib.rs", b"pub fn f() {}\n", false);
    write(root, "bin/tool", b"#!/bin/sh\necho tool\n", true);
    write(root, "old/only-file", b"soon gone\n", false);
    write(root, "tamper", b"tamper-me-please\n", false);
    write(root, &long_name(), b"a long path\n", false);
    symlink(root, "link", "README.md");
    symlink(root, "src/long-link", &format!("../{}", long_name()));
}

fn published(store: &Store, tree: &str) -> std::path::PathBuf {
    store.tree_dir(tree).unwrap()
}

#[test]
fn full_then_incremental_apply_and_checkout() {
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    let root = work.path();
    let store = Store::new(pvc.path().join("store"));
    working_tree(root);
    assert_eq!(store.latest().unwrap(), None);

    // Full upload.
    let (t1, archive1, delta1) = archive_for(&store, root);
    assert!(delta1.deleted.is_empty());
    let r1 = store.apply(&t1, &archive1[..]).unwrap();
    assert_eq!(
        r1,
        ApplyReport {
            tree: t1.clone(),
            existed: false,
            files_written: 9,
            bytes_read: archive1.len() as u64
        }
    );
    assert_eq!(store.latest().unwrap().as_deref(), Some(t1.as_str()));
    assert_eq!(
        store.manifest(&t1).unwrap().unwrap(),
        Manifest::scan(root).unwrap()
    );
    assert_eq!(snapshot(&published(&store, &t1)), snapshot(root));
    let before = snapshot(&published(&store, &t1));

    // One changed file, one deleted (its directory goes too), one new symlink.
    write(
        root,
        "src/main.rs",
        b"fn main() { println!(\"v2\"); }\n",
        false,
    );
    std::fs::remove_dir_all(root.join("old")).unwrap();
    symlink(root, "src/alias", "lib.rs");
    let (t2, archive2, delta2) = archive_for(&store, root);
    assert_eq!(delta2.changed, ["src/alias", "src/main.rs"]);
    assert_eq!(delta2.deleted, ["old/only-file"]);
    // Only the delta travels: the header, then exactly the changed entries.
    assert_eq!(
        archive_listing(&archive2),
        [
            (".sykli-sync/header.json".to_string(), '0'),
            ("src/alias".into(), '2'),
            ("src/main.rs".into(), '0')
        ]
    );
    let mut tar2 = tar::Archive::new(flate2::read::GzDecoder::new(&archive2[..]));
    let header: SyncHeader =
        serde_json::from_reader(tar2.entries().unwrap().next().unwrap().unwrap()).unwrap();
    assert_eq!(
        header,
        SyncHeader {
            format: 1,
            base: Some(t1.clone()),
            tree: t2.clone(),
            deleted: vec!["old/only-file".into()]
        }
    );

    let r2 = store.apply(&t2, &archive2[..]).unwrap();
    assert!(!r2.existed);
    assert_eq!(r2.files_written, 2);
    assert_eq!(store.latest().unwrap().as_deref(), Some(t2.as_str()));
    assert_eq!(snapshot(&published(&store, &t2)), snapshot(root));
    // The base is untouched. An unchanged file is shared with it (a hard link: published
    // trees are never written in place), which makes a re-sync cost what changed.
    assert_eq!(snapshot(&published(&store, &t1)), before);
    let ino = |t: &str| std::fs::metadata(published(&store, t).join("README.md")).unwrap();
    assert_eq!(ino(&t1).ino(), ino(&t2).ino());
    assert_eq!(ino(&t2).nlink(), 2);

    // The same tree again: drained, nothing written.
    let trees_before = listing(&pvc.path().join("store/trees"));
    let r3 = store.apply(&t2, &archive2[..]).unwrap();
    assert_eq!(
        r3,
        ApplyReport {
            tree: t2.clone(),
            existed: true,
            files_written: 0,
            bytes_read: archive2.len() as u64
        }
    );
    assert_eq!(listing(&pvc.path().join("store/trees")), trees_before);
    assert_eq!(snapshot(&published(&store, &t2)), snapshot(root));
    assert!(listing(&pvc.path().join("store/staging")).is_empty());

    // Checkout: the same bytes, exec bits and symlinks, in a Job's own directory.
    let job = tempfile::tempdir().unwrap();
    let dest = job.path().join("app");
    let c = store.checkout(&t2, &dest).unwrap();
    assert_eq!((c.files, c.symlinks), (6, 3));
    assert_eq!(snapshot(&dest), snapshot(root));
    assert_eq!(Manifest::scan(&dest).unwrap().tree_hash(), t2);
    let mode = std::fs::metadata(dest.join("bin/tool")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o755);
    // A Job writing to its copy never reaches the store.
    std::fs::write(dest.join("README.md"), b"scribbled").unwrap();
    assert_eq!(
        std::fs::read(published(&store, &t2).join("README.md")).unwrap(),
        b"# demo\n"
    );
    assert!(matches!(
        store.checkout(&t2, &dest),
        Err(Error::DestinationNotEmpty(_))
    ));
    assert!(matches!(
        store.checkout(&"0".repeat(64), &job.path().join("x")),
        Err(Error::UnknownTree(_))
    ));
    assert!(matches!(
        store.checkout("../../etc", &job.path().join("x")),
        Err(Error::InvalidTreeHash(_))
    ));

    // Back to the first tree: it exists, so nothing is sent but `latest` moves to it.
    let r4 = store.apply(&t1, &b""[..]).unwrap();
    assert!(r4.existed);
    assert_eq!(store.latest().unwrap().as_deref(), Some(t1.as_str()));
}

#[test]
fn a_tampered_archive_publishes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    let store = Store::new(pvc.path());
    working_tree(work.path());
    let (tree, archive, _) = archive_for(&store, work.path());

    // Same length, one byte different, valid gzip and tar checksums: only the hash can tell.
    let raw = gunzip(&archive);
    let at = raw
        .windows(16)
        .position(|w| w == b"tamper-me-please")
        .unwrap();
    let mut evil = raw.clone();
    evil[at + 7..at + 9].copy_from_slice(b"ME");
    let err = store.apply(&tree, &gzip(&evil)[..]).unwrap_err();
    assert!(
        matches!(&err, Error::TreeMismatch { expected, .. } if *expected == tree),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was published"));
    assert!(listing(&pvc.path().join("trees")).is_empty());
    assert!(listing(&pvc.path().join("manifests")).is_empty());
    assert!(listing(&pvc.path().join("staging")).is_empty());
    assert_eq!(store.latest().unwrap(), None);

    // Cut short at an entry boundary: the gzip trailer is missing, so it is an error too.
    let err = store
        .apply(&tree, &archive[..archive.len() - 8])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArchive(_)), "{err}");

    // The archive of another tree.
    let err = store.apply(&"1".repeat(64), &archive[..]).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArchive(m) if m.contains("is for tree")),
        "{err}"
    );
    assert!(listing(&pvc.path().join("trees")).is_empty());
    assert!(listing(&pvc.path().join("staging")).is_empty());

    // The untouched archive still applies.
    assert!(!store.apply(&tree, &archive[..]).unwrap().existed);
}

/// `working_tree` published in a store of its own: (the working tree's directory, the
/// store's, the store, the tree).
fn published_working_tree() -> (tempfile::TempDir, tempfile::TempDir, Store, String) {
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    let store = Store::new(pvc.path().join("store"));
    working_tree(work.path());
    let (tree, archive, _) = archive_for(&store, work.path());
    store.apply(&tree, &archive[..]).unwrap();
    (work, pvc, store, tree)
}

#[test]
fn a_shared_tree_is_verified_in_place_exactly() {
    let (_work, _pvc, store, tree) = published_working_tree();
    let report = store.verify(&tree).unwrap();
    assert_eq!(report.tree, tree);
    // working_tree's seven files and two links.
    assert_eq!((report.files, report.symlinks), (7, 2));

    let dir = published(&store, &tree);
    let refused = |what: &str, expect: &str| {
        let err = store.verify(&tree).unwrap_err().to_string();
        assert!(
            err.contains(expect) && err.contains("the tree was modified on the claim"),
            "{what}: {err}"
        );
    };
    // Same size, other bytes.
    let file = dir.join("tamper");
    let original = std::fs::read(&file).unwrap();
    let mut other = original.clone();
    other[0] ^= 1;
    std::fs::write(&file, &other).unwrap();
    refused("changed", "/tamper: it differs from the published tree");
    std::fs::write(&file, &original).unwrap();
    store.verify(&tree).unwrap();

    // One more file (a hook the task would run), or one less.
    std::fs::write(dir.join("planted.sh"), b"#!/bin/sh\n").unwrap();
    refused("added", "/planted.sh: it is not in the published tree");
    std::fs::remove_file(dir.join("planted.sh")).unwrap();
    std::fs::remove_file(&file).unwrap();
    refused("removed", "/tamper: it is missing from the published tree");

    // The Job's init container: one line, exit 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sykli-sync"))
        .args(["verify", "--store"])
        .arg(store.root())
        .args(["--tree", &tree])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("sykli-sync: error[tampered]: ") && stderr.contains("/tamper"),
        "{stderr}"
    );
}

#[test]
fn a_published_file_changed_on_the_claim_fails_the_checkout_naming_it() {
    let (work, _pvc, store, tree) = published_working_tree();

    // Same size, other bytes, written in place on the claim (by anything else mounting it):
    // its size says nothing, only its hash does.
    let file = published(&store, &tree).join("tamper");
    let before = std::fs::metadata(&file).unwrap().len();
    std::fs::write(&file, b"tamper-ME-please\n").unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), before);

    let job = tempfile::tempdir().unwrap();
    let err = store.checkout(&tree, &job.path().join("app")).unwrap_err();
    assert!(
        matches!(&err, Error::Tampered { path, detail }
            if path.ends_with(&format!("trees/{tree}/tamper")) && detail.contains("hashes to")),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("the published tree was modified on the claim"),
        "{err}"
    );

    // The Job's init container (`sykli-sync checkout`) fails with one line naming the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sykli-sync"))
        .args(["checkout", "--store"])
        .arg(store.root())
        .args(["--tree", &tree, "--to"])
        .arg(job.path().join("again"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("sykli-sync: error[tampered]: ") && stderr.contains("/tamper: "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // Put back as published, the tree checks out again.
    std::fs::write(&file, b"tamper-me-please\n").unwrap();
    let dest = job.path().join("restored");
    store.checkout(&tree, &dest).unwrap();
    assert_eq!(snapshot(&dest), snapshot(work.path()));
}

#[test]
fn an_unknown_base_is_an_error() {
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    write(work.path(), "f", b"1", false);
    let target = Manifest::scan(work.path()).unwrap();
    let mut archive = Vec::new();
    let delta = diff(&Manifest::new(), &target);
    write_archive(
        work.path(),
        Some(&"a".repeat(64)),
        &target,
        &delta,
        &mut archive,
    )
    .unwrap();
    let err = Store::new(pvc.path())
        .apply(&target.tree_hash(), &archive[..])
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownTree(t) if *t == "a".repeat(64)),
        "{err}"
    );
    assert!(listing(&pvc.path().join("staging")).is_empty());
}

#[test]
fn a_file_changing_during_the_sync_fails_the_archive() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    write(root, "f", b"12345", false);
    write(root, "g", b"x", false);
    let target = Manifest::scan(root).unwrap();
    let delta = diff(&Manifest::new(), &target);
    let try_archive = || write_archive(root, None, &target, &delta, std::io::sink()).unwrap_err();

    write(root, "f", b"12346", false);
    let err = try_archive();
    assert!(
        matches!(&err, Error::Changed { path, detail } if path == "f" && detail.contains("content")),
        "{err}"
    );
    write(root, "f", b"123", false);
    assert!(matches!(try_archive(), Error::Changed { detail, .. } if detail.contains("3 bytes")));
    write(root, "f", b"1234567", false);
    assert!(matches!(try_archive(), Error::Changed { detail, .. } if detail.contains("grew")));
    std::fs::remove_file(root.join("f")).unwrap();
    assert!(
        matches!(try_archive(), Error::Changed { detail, .. } if detail.contains("no longer exists"))
    );
    symlink(root, "f", "g");
    assert!(
        matches!(try_archive(), Error::Changed { detail, .. } if detail.contains("regular file"))
    );
}

#[test]
fn concurrent_applies_of_the_same_tree() {
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    working_tree(work.path());
    for i in 0..200 {
        write(
            work.path(),
            &format!("many/{i}.txt"),
            format!("file {i}\n").as_bytes(),
            false,
        );
    }
    let store = Store::new(pvc.path());
    let (tree, archive, _) = archive_for(&store, work.path());
    let reports: Vec<ApplyReport> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| store.apply(&tree, &archive[..]).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        reports.iter().filter(|r| !r.existed).count(),
        1,
        "{reports:?}"
    );
    assert_eq!(
        snapshot(&store.tree_dir(&tree).unwrap()),
        snapshot(work.path())
    );
    assert_eq!(
        listing(&pvc.path().join("trees")),
        std::slice::from_ref(&tree)
    );
    assert!(listing(&pvc.path().join("staging")).is_empty());
    assert_eq!(store.latest().unwrap(), Some(tree));
}

/// Builds an archive by hand: a header, then raw entries.
fn crafted(header: &SyncHeader, entries: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let json = serde_json::to_vec(header).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, ".sykli-sync/header.json", &json[..])
        .unwrap();
    entries(&mut b);
    gzip(&b.into_inner().unwrap())
}

#[test]
fn deletions_never_follow_symlinks() {
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    let root = work.path();
    write(root, "real/f", b"keep me", false);
    symlink(root, "d", "real");
    let store = Store::new(pvc.path());
    let (base, archive, _) = archive_for(&store, root);
    store.apply(&base, &archive[..]).unwrap();

    // "d/f" is not in the base (d is a symlink): deleting it must not reach real/f.
    std::fs::remove_file(root.join("d")).unwrap();
    let target = Manifest::scan(root).unwrap();
    let header = SyncHeader {
        format: 1,
        base: Some(base.clone()),
        tree: target.tree_hash(),
        deleted: vec!["d/f".into(), "d".into()],
    };
    let report = store
        .apply(&target.tree_hash(), &crafted(&header, |_| {})[..])
        .unwrap();
    assert_eq!(report.files_written, 0);
    let published = store.tree_dir(&target.tree_hash()).unwrap();
    assert_eq!(std::fs::read(published.join("real/f")).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(published.join("d")).is_err());
    assert_eq!(snapshot(&published), snapshot(root));
}

#[test]
fn apply_refuses_malicious_entries_and_publishes_nothing() {
    let pvc = tempfile::tempdir().unwrap();
    let store_root = pvc.path().join("store");
    let store = Store::new(&store_root);
    let tree = "2".repeat(64);
    let header = SyncHeader {
        format: 1,
        base: None,
        tree: tree.clone(),
        deleted: vec![],
    };

    let escape = crafted(&header, |b| {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..9].copy_from_slice(b"../pwned\0");
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"bad"[..]).unwrap();
    });
    let err = store.apply(&tree, &escape[..]).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::ParentComponent), "{err}");
    assert!(err.to_string().contains("\"../pwned\""), "{err}");

    let directory = crafted(&header, |b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, "empty/", std::io::empty()).unwrap();
    });
    assert_eq!(
        store.apply(&tree, &directory[..]).unwrap_err().rule(),
        Some(Rule::DirectoryNotAllowed)
    );

    // Not a sync archive: no header first.
    let plain = gzip(&{
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        b.append_data(&mut h, "x", &b"1"[..]).unwrap();
        b.into_inner().unwrap()
    });
    assert!(
        matches!(store.apply(&tree, &plain[..]), Err(Error::InvalidArchive(m)) if m.contains("header.json"))
    );

    assert_eq!(listing(&store_root), ["manifests", "staging", "trees"]);
    assert!(listing(&store_root.join("trees")).is_empty());
    assert!(listing(&store_root.join("staging")).is_empty());
    assert_eq!(listing(pvc.path()), ["store"]);
}

#[test]
fn apply_refuses_symlinks_that_leave_the_tree_through_the_base() {
    // The base holds `l` → `.`; an archive on top of it adds `e` → `l/../x`, inside on
    // its own, outside through `l`.
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    let root = work.path();
    write(root, "f", b"1", false);
    symlink(root, "l", ".");
    let store = Store::new(pvc.path());
    let (base, archive, _) = archive_for(&store, root);
    store.apply(&base, &archive[..]).unwrap();

    let mut target = store.manifest(&base).unwrap().unwrap();
    target.insert(Entry {
        path: "e".into(),
        kind: EntryKind::Symlink {
            target: "l/../x".into(),
        },
    });
    let tree = target.tree_hash();
    let header = SyncHeader {
        format: 1,
        base: Some(base.clone()),
        tree: tree.clone(),
        deleted: vec![],
    };
    let bytes = crafted(&header, |b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_link_name("l/../x").unwrap();
        b.append_data(&mut h, "e", std::io::empty()).unwrap();
    });
    let err = store.apply(&tree, &bytes[..]).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::SymlinkEscapes), "{err}");
    assert!(!store.has_tree(&tree).unwrap());
    assert!(listing(&pvc.path().join("staging")).is_empty());
    // The laptop would not have written it: the manifest is refused.
    assert_eq!(
        target.validate().unwrap_err().rule(),
        Some(Rule::SymlinkEscapes)
    );
}

#[test]
fn staging_links_every_run_of_a_directory_and_notices_a_damaged_base() {
    // Paths whose directories interleave in path order ("a/…", "a-b/…", "a.d", "a/…"), deep
    // ones, a directory of more entries than one unit of work, symlinks, root files.
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    let root = work.path();
    for p in ["a/1", "a-b/x", "a.d", "a/b/c/d/e", "a/z", "z", "a-b/y/deep"] {
        write(root, p, p.as_bytes(), false);
    }
    for i in 0..600 {
        write(
            root,
            &format!("big/f{i:03}"),
            format!("{i}").as_bytes(),
            i % 7 == 0,
        );
    }
    symlink(root, "a/b/link", "c/d/e");
    let store = Store::new(pvc.path());
    let (t1, archive, _) = archive_for(&store, root);
    store.apply(&t1, &archive[..]).unwrap();

    write(root, "a/z", b"changed", false);
    std::fs::remove_file(root.join("a-b/y/deep")).unwrap();
    std::fs::remove_dir(root.join("a-b/y")).unwrap();
    let (t2, archive, delta) = archive_for(&store, root);
    assert_eq!(delta.changed, ["a/z"]);
    assert_eq!(delta.deleted, ["a-b/y/deep"]);
    store.apply(&t2, &archive[..]).unwrap();
    let p2 = published(&store, &t2);
    assert!(
        snapshot(&p2) == snapshot(root),
        "the published tree differs"
    );
    // Unchanged files are the base's inodes; the changed one is new; a deleted file's
    // directory, empty now, is not made at all.
    let ino = |tree: &str, p: &str| {
        std::fs::metadata(published(&store, tree).join(p))
            .unwrap()
            .ino()
    };
    assert_eq!(ino(&t1, "big/f599"), ino(&t2, "big/f599"));
    assert_eq!(ino(&t1, "a/b/c/d/e"), ino(&t2, "a/b/c/d/e"));
    assert_ne!(ino(&t1, "a/z"), ino(&t2, "a/z"));
    assert!(!p2.join("a-b/y").exists());

    // A published tree missing a file (damaged by hand) cannot be a base: the apply says
    // which file and publishes nothing.
    std::fs::remove_file(p2.join("big/f300")).unwrap();
    write(root, "z", b"again", false);
    let (t3, archive, _) = archive_for(&store, root);
    let err = store.apply(&t3, &archive[..]).unwrap_err();
    assert!(
        matches!(&err, Error::Tampered { path, detail } if path.ends_with("/big/f300") && detail.contains("missing")),
        "{err}"
    );
    assert!(!published(&store, &t3).exists());
    assert!(listing(&pvc.path().join("staging")).is_empty());
}

#[test]
fn a_base_other_than_the_latest_tree_works_and_an_empty_member_ends_the_input() {
    // The receiver reads the latest tree's manifest ahead of the header: a header naming
    // another base must not get it.
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    let root = work.path();
    let store = Store::new(pvc.path());
    write(root, "f", b"one", false);
    let (t1, archive, _) = archive_for(&store, root);
    store.apply(&t1, &archive[..]).unwrap();
    write(root, "f", b"two", false);
    let (t2, archive, _) = archive_for(&store, root);
    store.apply(&t2, &archive[..]).unwrap();
    assert_eq!(store.latest().unwrap().as_deref(), Some(t2.as_str()));

    write(root, "g", b"new", false);
    let target = Manifest::scan(root).unwrap();
    let base = store.manifest(&t1).unwrap().unwrap();
    let delta = diff(&base, &target);
    assert_eq!(delta.changed, ["f", "g"]);
    let mut bytes = Vec::new();
    write_archive(root, Some(&t1), &target, &delta, &mut bytes).unwrap();
    let t3 = target.tree_hash();
    assert!(!store.apply(&t3, &bytes[..]).unwrap().existed);
    assert!(snapshot(&published(&store, &t3)) == snapshot(root));

    // What the laptop sends when the tree turns out to be there already: one empty gzip
    // member, so the apply ends without waiting for the end of its input.
    let empty_member = [
        0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let never_ends = std::io::Read::chain(&empty_member[..], std::io::repeat(0));
    let report = store.apply(&t1, never_ends).unwrap();
    assert!(report.existed);
    assert_eq!(store.latest().unwrap().as_deref(), Some(t1.as_str()));
    // For a tree that is not there it is no archive: an error, nothing published.
    let err = store.apply(&"3".repeat(64), &empty_member[..]).unwrap_err();
    assert!(matches!(err, Error::InvalidArchive(_)), "{err}");
}
