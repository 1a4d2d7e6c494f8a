//! Serves the bare repositories under a directory on 127.0.0.1 for tests in other languages.
//!
//! sykli-git-server --root DIR [--http] [--tls] [--basic-auth USER:PASS] [--v0]
//!                  [--fail-first N]
//!
//! Without `--http` it serves `git://`. `--tls` (HTTPS, with a CA made at start) and
//! `--basic-auth` are HTTP features: either implies `--http`.
//!
//! Prints one JSON line once serving, and serves until its standard input is closed (so a
//! test that dies takes the server with it):
//!
//! `{"url_base": "git://127.0.0.1:PORT" | "http://…" | "https://…", "port": N}`, plus
//! `"ca_file": "/path/ca.pem"` with `--tls` (the CA certificate, PEM, for `GIT_SSL_CAINFO`;
//! removed when the server exits).

use std::io::Read;
use std::path::PathBuf;

use sykli_testkit::git_server::{GitDaemon, ServerOptions, SmartHttp};

const USAGE: &str = "usage: sykli-git-server --root DIR [--http] [--tls] \
                     [--basic-auth USER:PASS] [--v0] [--fail-first N]";

fn usage_error(message: &str) -> ! {
    eprintln!("sykli-git-server: {message}\n{USAGE}");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut root: Option<PathBuf> = None;
    let mut http = false;
    let mut opts = ServerOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = args.next().map(PathBuf::from),
            "--http" => http = true,
            "--tls" => {
                http = true;
                opts.tls = true;
            }
            "--basic-auth" => {
                let Some((user, pass)) = args.next().and_then(|v| {
                    v.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                }) else {
                    usage_error("--basic-auth needs USER:PASS");
                };
                http = true;
                opts.basic_auth = Some((user, pass));
            }
            "--v0" => opts.protocol_v2 = false,
            "--fail-first" => {
                opts.fail_first = args.next().and_then(|n| n.parse().ok()).unwrap_or(0)
            }
            other => usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let Some(root) = root else {
        usage_error("--root is required");
    };
    let started = if http {
        SmartHttp::start(&root, opts).map(|s| {
            let mut line = serde_json::json!({
                "url_base": s.url("").trim_end_matches('/'),
                "port": s.port(),
            });
            if let Some(ca) = s.ca_file() {
                line["ca_file"] = serde_json::json!(ca.to_string_lossy());
            }
            (line, Box::new(s) as Box<dyn std::any::Any>)
        })
    } else {
        GitDaemon::start(&root, opts).map(|s| {
            let line = serde_json::json!({
                "url_base": s.url("").trim_end_matches('/'),
                "port": s.port(),
            });
            (line, Box::new(s) as Box<dyn std::any::Any>)
        })
    };
    let (line, server) = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sykli-git-server: {e}");
            std::process::exit(1);
        }
    };
    println!("{line}");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
}
