//! `detect` against the way sykli detected git context before (four git subprocesses) and
//! against `git status --porcelain` alone (git's own multi-threaded status: the floor), on
//! generated repositories, measured side by side in one run, interleaved round-robin so
//! that cache state and machine noise hit every method alike.
//!
//! Usage: cargo run --release -p sykli-bench --bin git_detect [-- SIZES…]   (default 10000 100000)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "worktree.rs"]
mod worktree;
use worktree::git;

const ROUNDS: usize = 15;

/// A repository of `files` files, 100 to a directory, two levels deep, committed, with an
/// origin remote and a remote-tracking ref at HEAD.
fn generate(root: &Path, files: usize) -> PathBuf {
    let dir = root.join(format!("repo-{files}"));
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q"]);
    for i in 0..files {
        let sub = dir.join(format!("d{}/e{}", i / 10_000, (i / 100) % 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        std::fs::write(sub.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "generated"]);
    git(
        &dir,
        &[
            "remote",
            "add",
            "origin",
            "https://git.example.com/org/repo.git",
        ],
    );
    git(&dir, &["update-ref", "refs/remotes/origin/main", "HEAD"]);
    // Let the index age past the racy window, then let git refresh it once, as any
    // developer's repository would be.
    std::thread::sleep(Duration::from_millis(1100));
    git(&dir, &["status", "--porcelain"]);
    dir
}

fn four_subprocesses(dir: &Path) {
    git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["rev-parse", "--abbrev-ref", "HEAD"]);
    git(dir, &["remote", "get-url", "origin"]);
    git(dir, &["status", "--porcelain"]);
}

/// A method's name and one run of it.
type Method<'a> = (&'a str, &'a dyn Fn(&Path));

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![10_000, 100_000]
        } else {
            args
        }
    };
    let tmp = std::env::temp_dir().join(format!("sykli-bench-{}", std::process::id()));
    let methods: [Method; 4] = [
        ("sykli detect (git2 + parallel status)", &|d| {
            let ctx = sykli_core::git::detect(d, &|_| None).expect("detect");
            assert!(!ctx.dirty && ctx.sha.len() == 40);
        }),
        ("git status --porcelain (floor)", &|d| {
            assert!(git(d, &["status", "--porcelain"]).is_empty());
        }),
        ("four git subprocesses (sykli before)", &|d| {
            four_subprocesses(d)
        }),
        ("libgit2 status, single thread", &|d| {
            let repo = git2::Repository::open(d).unwrap();
            assert!(sykli_core::git::status::libgit2_status(&repo)
                .unwrap()
                .is_empty());
        }),
    ];
    println!("| files | method | median | vs floor |");
    println!("|---:|---|---:|---:|");
    for &files in &sizes {
        let dir = generate(&tmp, files);
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); methods.len()];
        for (_, m) in &methods {
            m(&dir); // warm the page cache and the index
        }
        for _ in 0..ROUNDS {
            for (i, (_, m)) in methods.iter().enumerate() {
                let start = Instant::now();
                m(&dir);
                times[i].push(start.elapsed());
            }
        }
        let medians: Vec<Duration> = times.into_iter().map(median).collect();
        let floor = medians[1].as_secs_f64();
        for ((name, _), t) in methods.iter().zip(&medians) {
            println!(
                "| {files} | {name} | {:.1} ms | {:.2}× |",
                t.as_secs_f64() * 1e3,
                t.as_secs_f64() / floor
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
