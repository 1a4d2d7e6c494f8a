//! The file set of a working-tree upload, against real repositories: git's own view.

mod support;

use support::Repo;
use sykli_core::git::fileset::{working_tree_files, FileKind};

fn paths(repo: &Repo, excludes: &[&str]) -> Vec<String> {
    let ex: Vec<String> = excludes.iter().map(|s| s.to_string()).collect();
    working_tree_files(&repo.dir, &ex)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|f| f.path)
        .collect()
}

#[test]
fn what_git_sees_dirty_changes_included() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("w"));
    repo.write(".gitignore", "target/\n*.log\n");
    repo.write("src/main.rs", "fn main() {}\n");
    repo.write("src/gone.rs", "x\n");
    repo.write("README.md", "hi\n");
    repo.commit_all("first");
    repo.write("src/main.rs", "fn main() { changed() }\n"); // modified
    std::fs::remove_file(repo.dir.join("src/gone.rs")).unwrap(); // deleted
    repo.write("src/new.rs", "staged\n");
    repo.git(&["add", "src/new.rs"]); // added
    repo.write("notes/todo.txt", "untracked\n"); // untracked, in a new directory
    repo.write("target/debug/app", "ignored\n"); // ignored
    repo.write("build.log", "ignored\n");
    std::os::unix::fs::symlink("../README.md", repo.dir.join("src/readme-link")).unwrap();

    assert_eq!(
        paths(&repo, &[]),
        [
            ".gitignore",
            "README.md",
            "notes/todo.txt",
            "src/main.rs",
            "src/new.rs",
            "src/readme-link"
        ]
    );
    let files = working_tree_files(&repo.dir, &[]).unwrap();
    let link = files.iter().find(|f| f.path == "src/readme-link").unwrap();
    assert_eq!(
        link.kind,
        FileKind::Symlink {
            target: "../README.md".into()
        }
    );
    let main = files.iter().find(|f| f.path == "src/main.rs").unwrap();
    assert!(
        matches!(
            main.kind,
            FileKind::File {
                size: 24,
                executable: false,
                ..
            }
        ),
        "{main:?}"
    );

    assert_eq!(
        paths(&repo, &["notes/", "*.md"]),
        [".gitignore", "src/main.rs", "src/new.rs", "src/readme-link"]
    );
}

#[test]
fn a_symlink_out_of_the_tree_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("w"));
    repo.write("a.txt", "a\n");
    repo.commit_all("first");
    std::os::unix::fs::symlink("/etc/passwd", repo.dir.join("passwd")).unwrap();
    let e = working_tree_files(&repo.dir, &[]).unwrap_err().to_string();
    assert!(
        e.contains("the symlink passwd points outside the repository (/etc/passwd)"),
        "{e}"
    );
    // Excluding it is the way out.
    assert!(working_tree_files(&repo.dir, &["passwd".to_string()]).is_ok());
}

#[test]
fn tracked_and_untracked_files_merge_in_path_order_whatever_became_of_them() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("w"));
    // More files in one directory than one thread's share of the stat calls.
    for i in 0..700 {
        repo.write(&format!("big/f{i:03}"), "x\n");
    }
    repo.write("a/x", "1\n");
    repo.write("a/y", "1\n");
    repo.write("gone/only", "1\n");
    repo.write("was-file", "1\n");
    repo.write("odd name/new\nline", "1\n");
    repo.commit_all("first");
    // Untracked paths sorting between tracked ones ("a-b/…" and "a.c" before "a/…").
    repo.write("a-b/new", "u\n");
    repo.write("a.c", "u\n");
    repo.write("a/z", "u\n");
    repo.write("big/f350-new", "u\n");
    // A tracked file deleted with its directory, one replaced by a directory.
    std::fs::remove_dir_all(repo.dir.join("gone")).unwrap();
    std::fs::remove_file(repo.dir.join("was-file")).unwrap();
    repo.write("was-file/inner", "u\n");

    let got = paths(&repo, &[]);
    let mut want: Vec<String> = (0..700).map(|i| format!("big/f{i:03}")).collect();
    want.extend(
        [
            "a/x",
            "a/y",
            "odd name/new\nline",
            "a-b/new",
            "a.c",
            "a/z",
            "big/f350-new",
            "was-file/inner",
        ]
        .map(String::from),
    );
    want.sort();
    assert_eq!(got, want);
    let excluded = paths(&repo, &["big/", "a.c"]);
    assert_eq!(
        excluded,
        [
            "a-b/new",
            "a/x",
            "a/y",
            "a/z",
            "odd name/new\nline",
            "was-file/inner"
        ]
    );
}
