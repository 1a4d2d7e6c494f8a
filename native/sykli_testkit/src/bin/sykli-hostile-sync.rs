//! `sykli-hostile-sync`: a hostile stand-in for the sync image (`sykli-sync`), for end-to-end
//! tests of the sync back. Mapped over the image with the pod runner's `--image-file`, it
//! runs as the claim's receiver pod and answers the product's commands — but `pack` (how
//! the laptop fetches a task's outputs) answers with an archive of the malicious corpus
//! (`sykli_testkit::hostile_archives`) instead of the outputs: the first output named is
//! the case. `pack … benign` answers a well-formed archive; `pack … oversized-N` a
//! well-formed one of more than N bytes (one file of incompressible bytes), streamed, for
//! the laptop's limit on what a sync back takes.
//!
//! ```text
//! sykli-hostile-sync idle                              wait for SIGTERM or SIGINT (the pod)
//! sykli-hostile-sync pack --root DIR CASE [PATH...]    the archive of CASE on stdout
//! sykli-hostile-sync remove-run --store DIR --run JOB  {"removed": JOB} (nothing removed)
//! sykli-hostile-sync corpus --sentinel DIR             the cases, one JSON object a line
//! ```
//!
//! The sentinel directory the absolute paths aim at is read from `/etc/sykli-hostile/sentinel`
//! (another image file: its contents are the host path), or `--sentinel`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use sykli_testkit::hostile_archives::{benign, corpus, file, gzip, symlink};

const SENTINEL_FILE: &str = "/etc/sykli-hostile/sentinel";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("sykli-hostile-sync: {msg}");
            ExitCode::from(2)
        }
    }
}

fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].as_str())
}

fn sentinel(args: &[String]) -> Result<PathBuf, String> {
    if let Some(s) = option(args, "--sentinel") {
        return Ok(PathBuf::from(s));
    }
    let s = std::fs::read_to_string(SENTINEL_FILE)
        .map_err(|e| format!("{SENTINEL_FILE}: {e} (map it with --image-file)"))?;
    Ok(PathBuf::from(s.trim()))
}

fn run(args: &[String]) -> Result<(), String> {
    let stdout = |bytes: &[u8]| {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    };
    match args.first().map(String::as_str) {
        Some("idle") => idle(),
        Some("pack") => {
            // pack --root DIR PATH...: the first path that is not the root's value.
            let rest = &args[1..];
            let mut paths = Vec::new();
            let mut i = 0;
            while i < rest.len() {
                if rest[i].starts_with("--") {
                    i += 2;
                } else {
                    paths.push(rest[i].as_str());
                    i += 1;
                }
            }
            let name = *paths.first().ok_or("pack: no path")?;
            if name == "benign" {
                return stdout(&benign().0);
            }
            if let Some(n) = name.strip_prefix("oversized-") {
                let n: u64 = n
                    .parse()
                    .map_err(|_| format!("pack: {name:?}: N is a size"))?;
                return oversized(n).map_err(|e| format!("stdout: {e}"));
            }
            if let Some(archive) = repository_case(name) {
                return stdout(&archive);
            }
            let cases = corpus(&sentinel(args)?);
            let case = cases
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| format!("pack: no case {name:?}"))?;
            stdout(&case.archive())
        }
        Some("remove-run") => {
            let job = option(args, "--run").ok_or("remove-run: --run is required")?;
            stdout(format!("{}\n", serde_json::json!({ "removed": job })).as_bytes())
        }
        Some("corpus") => {
            let sentinel = sentinel(args)?;
            let mut lines = String::new();
            for c in corpus(&sentinel) {
                let line = serde_json::json!({
                    "name": c.name,
                    "rule": c.rule,
                    "entry": c.entry,
                    "planted_symlink": c.planted_symlink,
                });
                lines.push_str(&format!("{line}\n"));
            }
            stdout(lines.as_bytes())
        }
        Some(other) => Err(format!(
            "{other:?}: not something this hostile receiver answers"
        )),
        None => Err("a command is required".into()),
    }
}

/// Streams a gzip tar of one file, `big.bin`, of `n` incompressible bytes (an xorshift
/// stream) to stdout: more than `n` bytes in all, never held in memory.
fn oversized(n: u64) -> std::io::Result<()> {
    struct Noise(u64, u64);
    impl std::io::Read for Noise {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let k = buf.len().min(usize::try_from(self.1).unwrap_or(usize::MAX));
            for b in &mut buf[..k] {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                *b = (self.0 >> 24) as u8;
            }
            self.1 -= k as u64;
            Ok(k)
        }
    }
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(n);
    h.set_mode(0o644);
    b.append_data(&mut h, "big.bin", Noise(0x2545_f491_4f6c_dd1d, n))?;
    b.into_inner()?.finish()?.flush()
}

/// Archives that are well formed, but write where a task's outputs must not: into the
/// repository's `.git` (in the spellings filesystems fold to it), or outside the declared
/// outputs. Each starts with a harmless `ok.txt` (or `undeclared/ok.txt`) that must not be
/// written either: the laptop checks the whole archive first.
fn repository_case(name: &str) -> Option<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let fsmonitor = b"[core]\n\tfsmonitor = touch /tmp/sykli-pwned\n";
    match name {
        "dotgit-config" => {
            file(&mut b, b"ok.txt", b"ok\n");
            file(&mut b, b".git/config", fsmonitor);
        }
        "dotgit-hook" => {
            file(&mut b, b"ok.txt", b"ok\n");
            file(
                &mut b,
                b".git/hooks/post-checkout",
                b"#!/bin/sh\ntouch /tmp/sykli-pwned\n",
            );
        }
        "dotgit-case" => {
            file(&mut b, b"ok.txt", b"ok\n");
            file(&mut b, b".GIT/config", fsmonitor);
        }
        "dotgit-short-name" => {
            file(&mut b, b"ok.txt", b"ok\n");
            file(&mut b, b"git~1/config", fsmonitor);
        }
        "dotgit-link" => {
            file(&mut b, b"ok.txt", b"ok\n");
            symlink(&mut b, b"cfg", b".git/config");
        }
        "undeclared" => {
            file(&mut b, b"undeclared/ok.txt", b"ok\n");
            file(&mut b, b"src/main.rs", b"fn main() { /* replaced */ }\n");
        }
        _ => return None,
    }
    Some(gzip(&b.into_inner().ok()?))
}

/// The pod's main process: waits for SIGTERM or SIGINT (blocked, then `sigwait`: works as
/// PID 1, which ignores default-action signals).
fn idle() -> Result<(), String> {
    // SAFETY: a signal set we own, filled and used by this single thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!("pthread_sigmask: {rc}"));
        }
        let mut sig: libc::c_int = 0;
        loop {
            match libc::sigwait(&set, &mut sig) {
                0 => return Ok(()),
                libc::EINTR => continue,
                rc => return Err(format!("sigwait: {rc}")),
            }
        }
    }
}
