//! Manifests, tree hashes and deltas, on real files.

mod common;

use common::{symlink, write};
use sykli_sync::{diff, Delta, Entry, EntryKind, Error, Manifest, Rule};

/// The fixture of the stability test; its hash was computed independently (Python's
/// hashlib, from the definition documented on `Manifest::tree_hash`). It must never change:
/// stores on PVCs hold trees named by it.
fn fixture(root: &std::path::Path) {
    write(root, "README.md", b"hello\n", false);
    write(root, "bin/run.sh", b"#!/bin/sh\necho hi\n", true);
    write(root, "dir with space/new\nline", b"", false);
    symlink(root, "link", "README.md");
    symlink(root, "bin/up", "../README.md");
}
const FIXTURE_TREE: &str = "5f9c22e9cd7c03c45e878d1f55c4bf0506b32aae47a2dbc022b2fce192823593";
const EMPTY_TREE: &str = "b66fde05a5437b7272fc8e333f98100ae87eb2e03702983fa590ec12f90d1a57";

#[test]
fn tree_hash_is_stable_and_matches_the_documented_definition() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let m = Manifest::scan(dir.path()).unwrap();
    assert_eq!(m.len(), 5);
    assert_eq!(m.tree_hash(), FIXTURE_TREE);
    assert_eq!(Manifest::new().tree_hash(), EMPTY_TREE);

    // The same tree whatever the order entries arrive in, and whichever way it was built.
    let mut reversed = Manifest::new();
    for e in m.entries().cloned().collect::<Vec<_>>().into_iter().rev() {
        reversed.insert(e);
    }
    assert_eq!(reversed.tree_hash(), FIXTURE_TREE);
    let listed = Manifest::from_paths(
        dir.path(),
        &[
            "link".into(),
            "bin".into(),
            "README.md".into(),
            "dir with space".into(),
        ],
    )
    .unwrap();
    assert_eq!(listed, m);

    // Anything that matters changes it: the executable bit, a byte, a symlink target.
    let mut x = m.clone();
    let mut readme = x.get("README.md").unwrap().clone();
    if let EntryKind::File { executable, .. } = &mut readme.kind {
        *executable = true;
    }
    x.insert(readme);
    assert_ne!(x.tree_hash(), FIXTURE_TREE);
    write(dir.path(), "README.md", b"hellO\n", false);
    assert_ne!(
        Manifest::scan(dir.path()).unwrap().tree_hash(),
        FIXTURE_TREE
    );
}

#[test]
fn the_serialization_is_unambiguous() {
    // Naive "path target\n" records would collide for these two trees.
    let link = |path: &str, target: &str| Entry {
        path: path.into(),
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    };
    let mut a = Manifest::new();
    a.insert(link("a b", "c"));
    let mut b = Manifest::new();
    b.insert(link("a", "b c"));
    assert_ne!(a.tree_hash(), b.tree_hash());
}

#[test]
fn json_roundtrip_and_integrity() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let m = Manifest::scan(dir.path()).unwrap();
    let json = m.to_json();
    assert!(
        json.contains(&format!("\"tree\":\"{FIXTURE_TREE}\"")),
        "{json}"
    );
    assert!(
        json.contains(
            r#"{"path":"bin/run.sh","type":"file","size":18,"executable":true,"sha256":""#
        ),
        "{json}"
    );
    assert!(
        json.contains(r#"{"path":"link","type":"symlink","target":"README.md"}"#),
        "{json}"
    );
    assert_eq!(Manifest::from_json(&json).unwrap(), m);
    assert_eq!(serde_json::to_string(&m).unwrap(), json);

    // Entries that do not hash to the tree named, a path that escapes, a bad hash: refused.
    let tampered = json.replace("\"size\":6", "\"size\":7");
    assert!(
        matches!(Manifest::from_json(&tampered), Err(Error::InvalidManifest(msg)) if msg.contains("hash"))
    );
    let escaping = r#"{"entries":[{"path":"../x","type":"symlink","target":"a"}]}"#;
    assert_eq!(
        Manifest::from_json(escaping).unwrap_err().rule(),
        Some(Rule::ParentComponent)
    );
    let outside = r#"{"entries":[{"path":"x","type":"symlink","target":"/etc/passwd"}]}"#;
    assert_eq!(
        Manifest::from_json(outside).unwrap_err().rule(),
        Some(Rule::SymlinkAbsolute)
    );
    let bad_hash =
        r#"{"entries":[{"path":"x","type":"file","size":1,"executable":false,"sha256":"00"}]}"#;
    assert!(matches!(
        Manifest::from_json(bad_hash),
        Err(Error::InvalidManifest(_))
    ));
}

#[test]
fn scanning_refuses_what_cannot_be_synced() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ok", b"1", false);
    symlink(dir.path(), "abs", "/etc/passwd");
    assert_eq!(
        Manifest::scan(dir.path()).unwrap_err().rule(),
        Some(Rule::SymlinkAbsolute)
    );

    let dir = tempfile::tempdir().unwrap();
    let fifo = std::ffi::CString::new(dir.path().join("pipe").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert!(matches!(
        Manifest::scan(dir.path()),
        Err(Error::UnsupportedFile { kind: "fifo", .. })
    ));

    // A listed path reached through a symlinked directory is refused, not followed.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "real/f", b"1", false);
    symlink(dir.path(), "via", "real");
    let err = Manifest::from_paths(dir.path(), &["via/f".into()]).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::SymlinkInPath), "{err}");
    let err = Manifest::from_paths(dir.path(), &["../etc/passwd".into()]).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::ParentComponent), "{err}");
}

#[test]
fn symlinks_are_checked_together_when_a_manifest_is_read_or_made() {
    // Inside one by one; together `e` climbs out (`l/l` is the root, then `..`).
    let chain = r#"{"entries":[{"path":"e","type":"symlink","target":"l/l/../x"},{"path":"l","type":"symlink","target":"."}]}"#;
    let err = Manifest::from_json(chain).unwrap_err();
    assert_eq!(err.rule(), Some(Rule::SymlinkEscapes), "{err}");
    assert!(err.to_string().contains("\"e\""), "{err}");
    let lonely = r#"{"entries":[{"path":"e","type":"symlink","target":"l/l/../x"}]}"#;
    Manifest::from_json(lonely).unwrap();
    let looping = r#"{"entries":[{"path":"a","type":"symlink","target":"b"},{"path":"b","type":"symlink","target":"a"}]}"#;
    assert_eq!(
        Manifest::from_json(looping).unwrap_err().rule(),
        Some(Rule::SymlinkLoop)
    );

    // A link through a link to `..`, on disk: scan and from_paths refuse it.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "d/f", b"1", false);
    symlink(dir.path(), "d/up", "..");
    symlink(dir.path(), "d/x", "up/../secret");
    for err in [
        Manifest::scan(dir.path()).unwrap_err(),
        Manifest::from_paths(dir.path(), &["d".into()]).unwrap_err(),
    ] {
        assert_eq!(err.rule(), Some(Rule::SymlinkEscapes), "{err}");
        assert!(err.to_string().contains("d/x"), "{err}");
    }
    // Legitimate links through links stay fine.
    std::fs::remove_file(dir.path().join("d/x")).unwrap();
    symlink(dir.path(), "d/lib", "../lib64");
    symlink(dir.path(), "d/libc.so", "lib/libc.so.6");
    write(dir.path(), "lib64/libc.so.6", b"ELF", false);
    let m = Manifest::scan(dir.path()).unwrap();
    m.validate().unwrap();
    assert_eq!(m.len(), 5);
}

#[test]
fn diff_lists_changed_and_deleted_paths() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "same", b"1", false);
    write(root, "edited", b"old", false);
    write(root, "chmod", b"x", false);
    write(root, "gone", b"bye", false);
    symlink(root, "retarget", "same");
    let base = Manifest::scan(root).unwrap();
    assert_eq!(diff(&base, &base), Delta::default());
    assert!(diff(&base, &base).is_empty());

    write(root, "edited", b"new", false);
    write(root, "chmod", b"x", true);
    std::fs::remove_file(root.join("gone")).unwrap();
    symlink(root, "retarget", "edited");
    write(root, "added/deep", b"+", false);
    let target = Manifest::scan(root).unwrap();
    let d = diff(&base, &target);
    assert_eq!(d.changed, ["added/deep", "chmod", "edited", "retarget"]);
    assert_eq!(d.deleted, ["gone"]);
    // From nothing, everything is changed.
    assert_eq!(diff(&Manifest::new(), &target).changed.len(), target.len());
}

#[test]
fn the_json_writer_is_serdes_byte_for_byte_and_reading_is_strict_where_it_matters() {
    let file = |path: &str, sha256: &str| Entry {
        path: path.into(),
        kind: EntryKind::File {
            size: 12,
            executable: false,
            sha256: sha256.into(),
        },
    };
    let link = |path: &str, target: &str| Entry {
        path: path.into(),
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    };
    let mut m = Manifest::new();
    m.insert(file("plain.rs", &"a".repeat(64)));
    m.insert(file("quote\"back\\slash", &"b".repeat(64)));
    m.insert(file("ctl\u{1}\t\r\u{1f}\u{7f}é🙂", &"c".repeat(64)));
    m.insert(link("l1", "plain.rs"));
    m.insert(link("l2", "ctl\u{1}\t\r\u{1f}\u{7f}é🙂"));
    let json = m.to_json();
    assert_eq!(serde_json::to_string(&m).unwrap(), json);
    assert_eq!(Manifest::from_json(&json).unwrap(), m);
    assert_eq!(
        serde_json::to_string(m.get("l1").unwrap()).unwrap(),
        r#"{"path":"l1","type":"symlink","target":"plain.rs"}"#
    );

    // Entries in any order, unknown fields ignored; missing, doubled or unknown ones are not.
    let sha = "d".repeat(64);
    let any_order = format!(
        r#"{{"entries":[{{"sha256":"{sha}","x":[1],"executable":true,"type":"file","size":3,"path":"z"}},{{"target":"z","path":"a","type":"symlink"}}]}}"#
    );
    let parsed = Manifest::from_json(&any_order).unwrap();
    assert_eq!(
        parsed
            .entries()
            .map(|e| e.path.as_str())
            .collect::<Vec<_>>(),
        ["a", "z"]
    );
    for (bad, why) in [
        (
            r#"{"entries":[{"path":"x","type":"file","size":1,"executable":false}]}"#,
            "missing field `sha256`",
        ),
        (
            r#"{"entries":[{"path":"x","target":"y"}]}"#,
            "missing field `type`",
        ),
        (
            r#"{"entries":[{"path":"x","type":"fifo"}]}"#,
            "unknown variant `fifo`",
        ),
        (
            r#"{"entries":[{"path":"x","path":"y","type":"symlink","target":"z"}]}"#,
            "duplicate field `path`",
        ),
        (
            r#"{"entries":[{"path":"x","type":"symlink","target":"a"},{"path":"x","type":"symlink","target":"b"}]}"#,
            "\"x\" appears twice",
        ),
    ] {
        let err = Manifest::from_json(bad).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidManifest(msg) if msg.contains(why)),
            "{bad}: {err}"
        );
    }
}

#[test]
fn diff_of_interleaved_paths() {
    // "a-b/…" and "a.c" sort between "a" and "a/…": the merge must not lose its place.
    let entry = |path: &str, sha: char| Entry {
        path: path.into(),
        kind: EntryKind::File {
            size: 1,
            executable: false,
            sha256: sha.to_string().repeat(64),
        },
    };
    let manifest = |entries: &[(&str, char)]| {
        let mut m = Manifest::new();
        for (p, s) in entries {
            m.insert(entry(p, *s));
        }
        m
    };
    let base = manifest(&[
        ("a-b/x", '1'),
        ("a.c", '1'),
        ("a/x", '1'),
        ("a/y", '1'),
        ("b", '1'),
    ]);
    let target = manifest(&[
        ("a", '1'),
        ("a-b/x", '2'),
        ("a/y", '1'),
        ("a/z", '1'),
        ("c", '1'),
    ]);
    let d = diff(&base, &target);
    assert_eq!(d.changed, ["a", "a-b/x", "a/z", "c"]);
    assert_eq!(d.deleted, ["a.c", "a/x", "b"]);
    assert_eq!(diff(&target, &base).changed, ["a-b/x", "a.c", "a/x", "b"]);
    assert_eq!(diff(&target, &base).deleted, ["a", "a/z", "c"]);
}
