//! Runs a real S3-compatible server (s3s-fs, which verifies SigV4 signatures and presigned
//! URLs; see `sykli_testkit::s3_server`) on 127.0.0.1 for tests in other languages.
//!
//! sykli-s3-server [--dir DIR] [--bucket NAME]... [--tls]
//!
//! Buckets are directories of `DIR/data` (each `--bucket` is created before serving), an
//! object of one is the file `DIR/data/<bucket>/<key>`, and the server's log is
//! `DIR/s3s-fs.log`; without `--dir`, a temporary directory removed on exit. Prints one
//! JSON line once serving:
//!
//! `{"endpoint": "http://127.0.0.1:PORT", "access_key": ..., "secret_key": ...,
//!   "region": "us-east-1", "root": "DIR/data", "log": "DIR/s3s-fs.log", "pid": N}`
//!
//! (requests are path-style, `endpoint/<bucket>/<key>`; `pid` is s3s-fs'); with `--tls`, also
//! `"tls_endpoint": "https://127.0.0.1:PORT"` (a TLS front of a private CA) and
//! `"ca_file": "DIR/ca.pem"` (that CA), and serves until
//! its standard input is closed (so a test that dies takes the server with it).

use std::io::Read;
use std::path::PathBuf;

use sykli_testkit::s3_server::S3Server;

fn fail(what: impl std::fmt::Display) -> ! {
    eprintln!("sykli-s3-server: {what}");
    std::process::exit(1);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut buckets = Vec::new();
    let mut tls = false;
    while let Some(a) = args.next() {
        if a == "--tls" {
            tls = true;
            continue;
        }
        match (a.as_str(), args.next()) {
            ("--dir", Some(d)) => dir = Some(PathBuf::from(d)),
            ("--bucket", Some(b)) => buckets.push(b),
            _ => {
                eprintln!("usage: sykli-s3-server [--dir DIR] [--bucket NAME]... [--tls]");
                std::process::exit(2);
            }
        }
    }
    let tmp = match dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().unwrap_or_else(|e| fail(format!("tempdir: {e}")))),
    };
    let dir = dir.unwrap_or_else(|| tmp.as_ref().expect("tempdir").path().to_path_buf());
    let server = S3Server::start(&dir).unwrap_or_else(|e| fail(e));
    for bucket in &buckets {
        if let Err(e) = server.create_bucket(bucket) {
            fail(format!("bucket {bucket}: {e}"));
        }
    }
    let mut line = serde_json::json!({
        "endpoint": server.endpoint(),
        "access_key": server.access_key(),
        "secret_key": server.secret_key(),
        "region": server.region(),
        "root": server.root(),
        "log": server.log_path(),
        "pid": server.pid(),
    });
    let front = if tls {
        let front = server
            .tls_front()
            .unwrap_or_else(|e| fail(format!("tls: {e}")));
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, front.ca_pem())
            .unwrap_or_else(|e| fail(format!("{}: {e}", ca.display())));
        line["tls_endpoint"] = serde_json::json!(front.endpoint());
        line["ca_file"] = serde_json::json!(ca);
        Some(front)
    } else {
        None
    };
    println!("{line}");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(front);
    drop(server);
    drop(tmp);
}
