//! The benchmarks' generated working tree: a committed git repository of varied files (see
//! `make_repo`) and the git runner, shared by the benchmarks.

// Each benchmark compiles this module and uses a part of it.
#![allow(dead_code)]

use std::fs::FileTimes;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// xorshift64*: deterministic content without a dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const WORDS: &[&str] = &[
    "fn", "let", "match", "impl", "self", "return", "value", "error", "config", "parse", "build",
    "cluster", "source", "mount", "clone", "retry", "index", "status", "commit", "branch",
    "option", "result", "stream", "token", "header", "buffer", "context", "runtime", "schema",
    "event", "pub", "struct", "enum", "use", "mod", "async", "await", "where", "trait", "const",
];

/// Word-like text with identifiers and numbers: compresses about as source code does.
pub fn text(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut s = String::with_capacity(size + 64);
    while s.len() < size {
        let indent = rng.below(4) as usize * 4;
        s.extend(std::iter::repeat_n(' ', indent));
        for i in 0..(3 + rng.below(9)) {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            if rng.below(4) == 0 {
                s.push('_');
                s.push_str(&rng.below(10_000).to_string());
            }
        }
        s.push_str(";\n");
    }
    s.truncate(size);
    s.into_bytes()
}

pub fn random_bytes(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(size);
    v
}

/// Runs git in `dir` with a fixed identity and no user or system config; its stdout.
pub fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub struct Tree {
    pub files: usize,
    pub bytes: u64,
    /// Text files, candidates for the one change.
    pub texts: Vec<PathBuf>,
}

/// `files` files in 100 directories, committed; mtimes a day old.
pub fn make_repo(root: &Path, files: usize) -> Tree {
    std::fs::create_dir_all(root).expect("repo dir");
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let old = SystemTime::now() - Duration::from_secs(86_400);
    let mut tree = Tree {
        files,
        bytes: 0,
        texts: Vec::new(),
    };
    for i in 0..files {
        // Log-uniform between 100 B and 40 KB.
        let size = (100.0 * 400f64.powf(rng.unit())) as usize;
        let binary = rng.below(100) < 15;
        let (rel, content) = if binary {
            (
                format!("assets/a{:02}/blob{i:05}.bin", i % 100),
                random_bytes(&mut rng, size),
            )
        } else {
            (
                format!("src/m{:02}/file{i:05}.rs", i % 100),
                text(&mut rng, size),
            )
        };
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
        std::fs::write(&path, &content).expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_times(FileTimes::new().set_modified(old).set_accessed(old))
            .expect("mtime");
        tree.bytes += content.len() as u64;
        if !binary && size > 2_000 && size < 10_000 {
            tree.texts.push(rel.into());
        }
    }
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "the tree"]);
    tree
}

/// Appends one line to `rel` (its mtime becomes now, as an editor's save does).
pub fn change_one(root: &Path, rel: &Path, round: usize) {
    use std::io::Write;
    let mut f = std::fs::File::options()
        .append(true)
        .open(root.join(rel))
        .expect("open");
    writeln!(f, "// changed in round {round}").expect("append");
}
