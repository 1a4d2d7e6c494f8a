//! The laptop side of the PVC strategy: the manifest of the working tree, and the stat cache
//! that keeps a re-sync from hashing what did not change.

mod support;

use std::process::Command;

use support::Repo;
use sykli_core::source::upload::local_tree;

// Old mtimes: files written a moment ago are "racy" and always hashed again.
fn age(repo: &Repo, paths: &[&str], stamp: &str) {
    let status = Command::new("touch")
        .args(["-h", "-d", stamp])
        .args(paths)
        .current_dir(&repo.dir)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_resync_hashes_only_what_changed_and_the_tree_follows_the_content() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("w"));
    for i in 0..20 {
        repo.write(&format!("src/f{i}.rs"), &format!("// file {i}\n"));
    }
    repo.commit_all("first");
    repo.write("notes.txt", "untracked, dirty\n");
    let all: Vec<String> = (0..20)
        .map(|i| format!("src/f{i}.rs"))
        .chain(["notes.txt".into()])
        .collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    age(&repo, &all, "2020-01-01 00:00:00");

    let first = local_tree(&repo.dir, &[]).unwrap();
    assert_eq!(first.manifest.len(), 21);
    assert_eq!(first.hashed, 21);

    let again = local_tree(&repo.dir, &[]).unwrap();
    assert_eq!(again.hashed, 0, "nothing changed: nothing hashed");
    assert_eq!(again.tree, first.tree);

    repo.write("src/f3.rs", "// changed\n");
    age(&repo, &["src/f3.rs"], "2020-01-02 00:00:00");
    let changed = local_tree(&repo.dir, &[]).unwrap();
    assert_eq!(changed.hashed, 1);
    assert_ne!(changed.tree, first.tree);

    // Same size, same mtime, new content (a copy that kept the stamp): the inode tells.
    let f5 = repo.dir.join("src/f5.rs");
    let tmp_copy = repo.dir.join("f5.tmp");
    std::fs::write(&tmp_copy, "// file X\n").unwrap();
    std::fs::rename(&tmp_copy, &f5).unwrap();
    age(&repo, &["src/f5.rs"], "2020-01-01 00:00:00");
    let swapped = local_tree(&repo.dir, &[]).unwrap();
    assert_eq!(swapped.hashed, 1);
    assert_ne!(swapped.tree, changed.tree);

    let excluded = local_tree(&repo.dir, &["notes.txt".to_string()]).unwrap();
    assert_eq!(excluded.manifest.len(), 20);
}

#[test]
fn the_stat_cache_survives_odd_paths_and_a_damaged_cache_only_costs_hashing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("w"));
    let odd = ["a b/c d.txt", "new\nline", "tab\there", "ünï/cödé"];
    for p in odd {
        repo.write(p, p);
    }
    repo.commit_all("first");
    age(&repo, &odd, "2020-01-01 00:00:00");
    let first = local_tree(&repo.dir, &[]).unwrap();
    assert_eq!(first.hashed, 4);
    let again = local_tree(&repo.dir, &[]).unwrap();
    assert_eq!(again.hashed, 0, "every odd path found in the cache");
    assert_eq!(again.manifest, first.manifest);

    let cache = repo.dir.join(".git/sykli/upload-stat-cache");
    let text = std::fs::read(&cache).unwrap();
    std::fs::write(&cache, &text[..text.len() / 2]).unwrap();
    let truncated = local_tree(&repo.dir, &[]).unwrap();
    assert_eq!(truncated.hashed, 4, "a torn cache is not trusted");
    assert_eq!(truncated.tree, first.tree);
    std::fs::write(&cache, b"{\"written_ns\":1,\"files\":{}}").unwrap();
    assert_eq!(local_tree(&repo.dir, &[]).unwrap().hashed, 4);
    assert_eq!(local_tree(&repo.dir, &[]).unwrap().hashed, 0);
}
