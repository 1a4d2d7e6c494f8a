//! The `sykli-sync` binary, as a receiver pod and a Job's init container would run it.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{snapshot, symlink, write};
use sykli_sync::{diff, write_archive, Manifest};

/// The binary under test: this build's, or another one (the static musl build) named by
/// `SYKLI_SYNC_BIN`.
fn bin() -> String {
    std::env::var("SYKLI_SYNC_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sykli-sync").to_string())
}

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_receiver_flow() {
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    let root = work.path().join("repo");
    let store = pvc.path().join("store");
    let store = store.to_str().unwrap();
    write(&root, "src/main.rs", b"fn main() {}\n", false);
    write(&root, "run.sh", b"#!/bin/sh\n", true);
    symlink(&root, "link", "run.sh");

    // Nothing yet.
    let out = run(&["manifest", "--store", store], b"");
    assert_eq!(json(&out), serde_json::json!({ "tree": null }));

    let target = Manifest::scan(&root).unwrap();
    let tree = target.tree_hash();
    let scanned = json(&run(&["scan", "--root", root.to_str().unwrap()], b""));
    assert_eq!(scanned["tree"], tree.as_str());

    let mut archive = Vec::new();
    write_archive(
        &root,
        None,
        &target,
        &diff(&Manifest::new(), &target),
        &mut archive,
    )
    .unwrap();
    let report = json(&run(
        &["apply", "--store", store, "--tree", &tree],
        &archive,
    ));
    assert_eq!(
        report,
        serde_json::json!({"tree": tree, "existed": false, "files_written": 3, "bytes_read": archive.len()})
    );
    let again = json(&run(
        &["apply", "--store", store, &format!("--tree={tree}")],
        &archive,
    ));
    assert_eq!(again["existed"], true);

    let latest = run(&["manifest", "--store", store], b"");
    assert_eq!(
        Manifest::from_json(std::str::from_utf8(&latest.stdout).unwrap()).unwrap(),
        target
    );
    let by_hash = json(&run(&["manifest", "--store", store, "--tree", &tree], b""));
    assert_eq!(by_hash["tree"], tree.as_str());
    let unknown = json(&run(
        &["manifest", "--store", store, "--tree", &"0".repeat(64)],
        b"",
    ));
    assert_eq!(unknown, serde_json::json!({ "tree": null }));

    let dest = work.path().join("job/app");
    let checkout = json(&run(
        &[
            "checkout",
            "--store",
            store,
            "--tree",
            &tree,
            "--to",
            dest.to_str().unwrap(),
        ],
        b"",
    ));
    assert_eq!(
        checkout,
        serde_json::json!({"tree": tree, "files": 2, "symlinks": 1, "bytes": 23})
    );
    assert_eq!(snapshot(&dest), snapshot(&root));

    // Errors: one line on stderr with the kind, exit 1.
    let wrong = run(
        &["apply", "--store", store, "--tree", &"1".repeat(64)],
        &archive,
    );
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).starts_with("sykli-sync: error[invalid_archive]: "),
        "{}",
        stderr(&wrong)
    );
    let bad = run(&["apply", "--store", store, "--tree", "../../etc"], b"");
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("error[invalid_tree_hash]"),
        "{}",
        stderr(&bad)
    );
    let busy = run(
        &[
            "checkout",
            "--store",
            store,
            "--tree",
            &tree,
            "--to",
            dest.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        stderr(&busy).contains("not an empty directory"),
        "{}",
        stderr(&busy)
    );
}

#[test]
fn pack_and_extract_through_pipes() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("job");
    write(&root, "out/bin", b"binary", true);
    write(&root, "out/log.txt", b"log\n", false);
    let packed = run(&["pack", "--root", root.to_str().unwrap(), "out"], b"");
    assert!(packed.status.success(), "{}", stderr(&packed));
    let dest = work.path().join("laptop");
    let report = json(&run(
        &["extract", "--to", dest.to_str().unwrap()],
        &packed.stdout,
    ));
    assert_eq!(
        report,
        serde_json::json!({"entries": 3, "files": 2, "directories": 1, "symlinks": 0, "bytes": 10})
    );
    assert_eq!(snapshot(&dest), snapshot(&root));

    let escaping = run(&["pack", "--root", root.to_str().unwrap(), "../etc"], b"");
    assert_eq!(escaping.status.code(), Some(1));
    assert!(
        stderr(&escaping).contains("rule parent-component"),
        "{}",
        stderr(&escaping)
    );
    let limited = run(
        &[
            "extract",
            "--to",
            dest.to_str().unwrap(),
            "--max-bytes",
            "5",
        ],
        &packed.stdout,
    );
    assert_eq!(limited.status.code(), Some(1));
    assert!(
        stderr(&limited).contains("sykli-sync: error[refused]: refused \"out/bin\""),
        "{}",
        stderr(&limited)
    );
    assert!(
        stderr(&limited).contains("rule too-large"),
        "{}",
        stderr(&limited)
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["nope"],
        &["manifest"],
        &["apply", "--store", "/x"],
        &["manifest", "--store", "/x", "--bogus", "1"],
        &["pack", "--root", "/x"],
    ] {
        let out = run(args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("usage"), "{args:?}");
    }
    assert!(run(&["version"], b"").stdout.starts_with(b"sykli-sync "));
}

#[test]
fn idle_exits_0_on_sigterm_and_sigint() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut child = Command::new(bin()).arg("idle").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().unwrap().is_none(),
            "idle must keep running"
        );
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "idle did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "signal {signal}");
    }
}

/// Over an exec stream stdin's end may never arrive: `apply` must finish on the archive's
/// own end (the gzip trailer), with stdin still open.
#[test]
fn apply_does_not_wait_for_the_end_of_stdin() {
    let work = tempfile::tempdir().unwrap();
    let pvc = tempfile::tempdir().unwrap();
    let root = work.path().join("repo");
    write(&root, "a", b"a", false);
    let target = Manifest::scan(&root).unwrap();
    let tree = target.tree_hash();
    let mut archive = Vec::new();
    write_archive(
        &root,
        None,
        &target,
        &diff(&Manifest::new(), &target),
        &mut archive,
    )
    .unwrap();
    let store = pvc.path().to_str().unwrap();

    for existed in [false, true] {
        let mut child = Command::new(bin())
            .args(["apply", "--store", store, "--tree", &tree])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&archive).unwrap();
        stdin.flush().unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "apply waited for stdin's end"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(stdin);
        assert!(status.success());
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["existed"], existed, "{out}");
    }
}
