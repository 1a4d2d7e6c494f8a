//! Serves the bare repositories under a directory over ssh on 127.0.0.1 (a real sshd) for
//! tests in other languages.
//!
//! sykli-git-sshd --root DIR
//!
//! Prints one JSON line once serving:
//! `{"url_base": "ssh://root@127.0.0.1:PORT/<abs root>", "port": N, "client_key": "<path>",
//! "known_hosts": "<line>", "wrong_known_hosts": "<line>"}`, and serves until its standard
//! input is closed (so a test that dies takes the server with it).

use std::io::Read;
use std::path::PathBuf;

use sykli_testkit::sshd::GitSshd;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut root: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = args.next().map(PathBuf::from),
            other => {
                eprintln!("sykli-git-sshd: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let Some(root) = root else {
        eprintln!("usage: sykli-git-sshd --root DIR");
        std::process::exit(2);
    };
    let server = match GitSshd::start(&root) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sykli-git-sshd: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "url_base": server.url("").trim_end_matches('/'),
            "port": server.port(),
            "client_key": server.client_key(),
            "known_hosts": server.known_hosts_line(),
            "wrong_known_hosts": server.wrong_known_hosts_line(),
        })
    );
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
}
