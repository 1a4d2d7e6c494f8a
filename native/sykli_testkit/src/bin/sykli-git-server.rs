//! Serves the bare repositories under a directory on 127.0.0.1 for tests in other languages.
//!
//! sykli-git-server --root DIR [--http] [--v0] [--fail-first N]
//!
//! Prints one JSON line `{"url_base": "...", "port": N}` once serving, and serves until its
//! standard input is closed (so a test that dies takes the server with it).

use std::io::Read;
use std::path::PathBuf;

use sykli_testkit::git_server::{GitDaemon, ServerOptions, SmartHttp};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut root: Option<PathBuf> = None;
    let mut http = false;
    let mut opts = ServerOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = args.next().map(PathBuf::from),
            "--http" => http = true,
            "--v0" => opts.protocol_v2 = false,
            "--fail-first" => {
                opts.fail_first = args.next().and_then(|n| n.parse().ok()).unwrap_or(0)
            }
            other => {
                eprintln!("sykli-git-server: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let Some(root) = root else {
        eprintln!("usage: sykli-git-server --root DIR [--http] [--v0] [--fail-first N]");
        std::process::exit(2);
    };
    let started = if http {
        SmartHttp::start(&root, opts)
            .map(|s| (s.url(""), s.port(), Box::new(s) as Box<dyn std::any::Any>))
    } else {
        GitDaemon::start(&root, opts)
            .map(|s| (s.url(""), s.port(), Box::new(s) as Box<dyn std::any::Any>))
    };
    let (url, port, server) = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sykli-git-server: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "{}",
        serde_json::json!({"url_base": url.trim_end_matches('/'), "port": port})
    );
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
}
