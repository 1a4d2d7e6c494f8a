//! Bytes and time to put one exact commit into a workspace, on a large repository served by
//! a loopback `git daemon`: sykli's clone script at depth 1 against the known-broken
//! "anchor" sequence (`clone --depth=1 --branch && checkout SHA`), a full clone, and a plain
//! `git fetch --depth=1 origin <sha>` (the floor). The commit is one behind the branch tip:
//! the branch has moved on since the pipeline started, as it does in a busy repository.
//!
//! Usage: cargo run --release -p sykli-bench --bin clone [-- COMMITS FILES]   (default 20000 20000)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sykli_core::source::git_clone::CLONE_SCRIPT;
use sykli_testkit::git_server::{GitDaemon, ServerOptions};

const ROUNDS: usize = 3;

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(args)
        .output()
        .expect("git runs")
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// How the history is made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    /// Every commit changes one line of one small file: history is nearly free to send.
    OneLine,
    /// Every commit rewrites a paragraph of varied text in three files, like code changes.
    Realistic,
}

/// Deterministic words, so the text does not compress to nothing.
struct Words(u64);
impl Words {
    fn next(&mut self, n: usize) -> String {
        const W: &[&str] = &[
            "fn", "let", "match", "impl", "self", "return", "value", "error", "config", "parse",
            "build", "cluster", "source", "mount", "clone", "retry", "index", "status", "commit",
            "branch", "option", "result", "stream", "token", "header", "buffer", "context",
            "runtime", "schema", "event",
        ];
        (0..n)
            .map(|i| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let w = W[(self.0 >> 33) as usize % W.len()];
                if i % 12 == 11 {
                    format!("{w}_{}\n", self.0 % 9973)
                } else {
                    format!("{w}_{} ", self.0 % 97)
                }
            })
            .collect()
    }
}

/// A bare repository with `files` files in its first commit and `commits` commits in all,
/// written with git fast-import.
fn generate(root: &Path, commits: usize, files: usize, shape: Shape) -> PathBuf {
    let bare = root.join(format!("{shape:?}.git").to_lowercase());
    git_ok(root, &["init", "-q", "--bare", bare.to_str().unwrap()]);
    let mut child = Command::new("git")
        .current_dir(&bare)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import runs");
    let mut s = std::io::BufWriter::new(child.stdin.take().unwrap());
    let mut words = Words(42);
    let path = |i: usize| format!("src/d{}/e{}/file{i}.txt", i / 1000, (i / 50) % 20);
    writeln!(
        s,
        "commit refs/heads/main\ncommitter Bench <b@example.com> 1700000000 +0000\ndata 4\ninit"
    )
    .unwrap();
    for i in 0..files {
        let b = format!("file {i}\n{}", words.next(30));
        write!(s, "M 100644 inline {}\ndata {}\n{b}\n", path(i), b.len()).unwrap();
    }
    for c in 1..commits {
        let msg = format!("change {c}");
        write!(
            s,
            "commit refs/heads/main\ncommitter Bench <b@example.com> {} +0000\ndata {}\n{msg}\n",
            1700000000 + c,
            msg.len()
        )
        .unwrap();
        let touched = if shape == Shape::OneLine { 1 } else { 3 };
        for t in 0..touched {
            let i = (c * 7919 + t * 104729) % files;
            let b = match shape {
                Shape::OneLine => format!("file {i} revision {c}\n"),
                Shape::Realistic => format!("file {i} revision {c}\n{}", words.next(60)),
            };
            write!(s, "M 100644 inline {}\ndata {}\n{b}\n", path(i), b.len()).unwrap();
        }
    }
    drop(s);
    assert!(child.wait().unwrap().success());
    git_ok(&bare, &["repack", "-adq"]);
    bare
}

struct Outcome {
    ok: bool,
    bytes: u64,
    time: Duration,
}

/// Runs `f` in a fresh directory and measures what the server sent for it.
fn measure(daemon: &GitDaemon, scratch: &Path, f: &dyn Fn(&Path) -> bool) -> Outcome {
    let dir = scratch.join(format!(
        "w{}",
        std::process::id() as u128 + Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let before = daemon.bytes_sent();
    let start = Instant::now();
    let ok = f(&dir);
    let time = start.elapsed();
    let bytes = daemon.bytes_sent() - before;
    let _ = std::fs::remove_dir_all(&dir);
    Outcome { ok, bytes, time }
}

fn sykli_clone(url: &str, sha: &str, branch: &str, dir: &Path) -> bool {
    let ws = dir.join("ws");
    let out = Command::new("sh")
        .args(["-c", CLONE_SCRIPT])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("TMPDIR", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("SYKLI_GIT_URL", url)
        .env("SYKLI_GIT_SHA", sha)
        .env("SYKLI_GIT_REF", branch)
        .env("SYKLI_GIT_DEPTH", "1")
        .env("SYKLI_WORKSPACE", &ws)
        .env("SYKLI_CLONE_BACKOFF", "0")
        .output()
        .unwrap();
    out.status.success() && git_ok(&ws, &["rev-parse", "HEAD"]) == sha
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (commits, files) = (
        args.first().copied().unwrap_or(20_000),
        args.get(1).copied().unwrap_or(20_000),
    );
    let tmp = std::env::temp_dir().join(format!("sykli-bench-clone-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let daemon = GitDaemon::start(&tmp, ServerOptions::default()).expect("git daemon starts");
    let scratch = tmp.join("scratch");
    for shape in [Shape::Realistic, Shape::OneLine] {
        let gen_start = Instant::now();
        let bare = generate(&tmp, commits, files, shape);
        eprintln!(
            "generated {shape:?}: {commits} commits, {files} files in {:.1}s",
            gen_start.elapsed().as_secs_f64()
        );
        let repo = bare.file_name().unwrap().to_string_lossy().into_owned();
        let tip = git_ok(&bare, &["rev-parse", "main"]);
        let sha = git_ok(&bare, &["rev-parse", "main~1"]); // the branch moved on by one commit
        let url = daemon.url(&repo);

        type Method<'a> = (&'a str, Box<dyn Fn(&Path) -> bool + 'a>);
        let methods: Vec<Method> = vec![
            (
                "git fetch --depth=1 origin <sha> (floor)",
                Box::new(|d: &Path| {
                    git_ok(d, &["init", "-q"]);
                    git(d, &["fetch", "-q", "--depth=1", &url, &sha])
                        .status
                        .success()
                        && git(d, &["checkout", "-q", "--detach", &sha])
                            .status
                            .success()
                }),
            ),
            (
                "sykli clone script, depth 1",
                Box::new(|d: &Path| sykli_clone(&url, &sha, "main", d)),
            ),
            (
                "anchor: clone --depth=1 --branch main && checkout SHA",
                Box::new(|d: &Path| {
                    git(
                        d,
                        &["clone", "-q", "--depth=1", "--branch", "main", &url, "w"],
                    )
                    .status
                    .success()
                        && git(&d.join("w"), &["checkout", "-q", &sha])
                            .status
                            .success()
                }),
            ),
            (
                "full clone",
                Box::new(|d: &Path| {
                    git(d, &["clone", "-q", "--no-checkout", &url, "w"])
                        .status
                        .success()
                        && git(&d.join("w"), &["checkout", "-q", &sha])
                            .status
                            .success()
                }),
            ),
        ];
        let mut results: Vec<Vec<Outcome>> = methods.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (i, (_, f)) in methods.iter().enumerate() {
                results[i].push(measure(&daemon, &scratch, f.as_ref()));
            }
        }
        let bytes_of = |i: usize| results[i].iter().map(|o| o.bytes).min().unwrap_or(0);
        let floor_bytes = bytes_of(0).max(1) as f64;
        println!("\n{shape:?} history: {commits} commits, {files} files; the commit is tip~1 of main (tip {})", &tip[..12]);
        println!(
            "| method | succeeds | bytes received | vs floor | full clone ÷ this | median time |"
        );
        println!("|---|---|---:|---:|---:|---:|");
        for (i, ((name, _), outcomes)) in methods.iter().zip(&results).enumerate() {
            let mut times: Vec<Duration> = outcomes.iter().map(|o| o.time).collect();
            times.sort();
            let bytes = bytes_of(i);
            println!(
                "| {name} | {} | {bytes} | {:.3}× | {:.1}× | {:.0} ms |",
                if outcomes.iter().all(|o| o.ok) {
                    "yes"
                } else {
                    "**no**"
                },
                bytes as f64 / floor_bytes,
                bytes_of(3) as f64 / bytes.max(1) as f64,
                times[times.len() / 2].as_secs_f64() * 1e3
            );
        }
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(&tmp);
}
