//! Runs a real Git LFS server (giftless, from the test venv) on 127.0.0.1 for tests in other
//! languages.
//!
//! sykli-lfs-server [--dir DIR]
//!
//! Objects are stored under `DIR/objects` and the server's log is `DIR/giftless.log`;
//! without `--dir`, a temporary directory removed on exit. Prints one JSON line
//! `{"url": "http://127.0.0.1:PORT/sykli/test.git/info/lfs", "port": N}` once serving (the
//! URL is the LFS endpoint for a repository's `.lfsconfig`), and serves until its standard
//! input is closed (so a test that dies takes the server with it).

use std::io::Read;
use std::path::PathBuf;

use sykli_testkit::lfs_server::LfsServer;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--dir", Some(d)) => dir = Some(PathBuf::from(d)),
            _ => {
                eprintln!("usage: sykli-lfs-server [--dir DIR]");
                std::process::exit(2);
            }
        }
    }
    let tmp = match dir {
        Some(_) => None,
        None => match tempfile::tempdir() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("sykli-lfs-server: tempdir: {e}");
                std::process::exit(1);
            }
        },
    };
    let dir = dir.unwrap_or_else(|| tmp.as_ref().expect("tempdir").path().to_path_buf());
    let server = match LfsServer::start(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sykli-lfs-server: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "{}",
        serde_json::json!({"url": server.url(), "port": server.port()})
    );
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
    drop(tmp);
}
