//! A logging HTTP proxy on 127.0.0.1 for tests in other languages
//! (see `sykli_testkit::http_proxy`).
//!
//! sykli-http-proxy [--log FILE]
//!
//! Prints one JSON line once serving:
//! `{"url": "http://127.0.0.1:PORT", "port": N, "log": "/path/requests.log"}`, and runs until
//! its standard input is closed (so a test that dies takes the proxy with it). Each request
//! line (`CONNECT host:port`, `GET http://host:port/path`, …) is appended to the log file,
//! with a newline, as the request arrives (before it is forwarded). With `--log` that file
//! is kept (and appended to if it exists); without, it is in a temporary directory removed
//! when the proxy exits.

use std::io::Read;
use std::path::PathBuf;

use sykli_testkit::http_proxy::HttpProxy;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut log: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--log", Some(path)) => log = Some(PathBuf::from(path)),
            _ => {
                eprintln!("usage: sykli-http-proxy [--log FILE]");
                std::process::exit(2);
            }
        }
    }
    let fail = |e: std::io::Error| -> ! {
        eprintln!("sykli-http-proxy: {e}");
        std::process::exit(1);
    };
    let (_tmp, log) = match log {
        Some(path) => (None, path),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("sykli-http-proxy-")
                .tempdir()
                .unwrap_or_else(|e| fail(e));
            let path = tmp.path().join("requests.log");
            (Some(tmp), path)
        }
    };
    let proxy = HttpProxy::start_with_log(&log).unwrap_or_else(|e| fail(e));
    // Absolute, so that the caller may resolve it from any directory.
    let log = log.canonicalize().unwrap_or(log);
    println!(
        "{}",
        serde_json::json!({"url": proxy.url(), "port": proxy.port(), "log": log.to_string_lossy()})
    );
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(proxy);
}
