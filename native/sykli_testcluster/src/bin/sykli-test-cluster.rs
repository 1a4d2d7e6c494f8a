//! sykli-test-cluster: the test cluster as a process, for tests outside Rust.
//!
//! ```text
//! sykli-test-cluster --dir DIR [--shell host|busybox] [--nodes NAME,...]
//!                    [--node-labels [NODE:]k=v,...] [--image-file IMAGE=HOSTPATH:CONTAINERPATH]...
//!                    [--image-entrypoint IMAGE=JSON-ARRAY]...
//!                    [--deny-images pattern,...] [--seed N] [--history-limit N]
//!                    [--bookmark-interval-ms N] [--backoff-base-ms N]
//!                    [--field-validation Strict|Warn|Ignore]
//! ```
//!
//! `--nodes` names the nodes (default: one, `sykli-node`). `--node-labels` labels every node,
//! or with `NODE:` one of them. `--image-file` (repeatable) makes every container whose image is
//! exactly IMAGE see HOSTPATH read-only at CONTAINERPATH, in its pod and in exec sandboxes.
//! `--image-entrypoint` (repeatable) gives IMAGE an entrypoint, a JSON array of strings such
//! as `["/usr/bin/python3","-m","http.server"]`: what its containers that set no `command`
//! run (their `args` follow), as a runtime runs an image's ENTRYPOINT.
//!
//! Prints one line of JSON once it serves — `{"url", "kubeconfig", "admin_token",
//! "readonly_token", "pid"}` — and runs until its stdin is closed or it gets SIGTERM/SIGINT;
//! then it kills every pod's processes and exits 0.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use sykli_testcluster::{
    ClusterOptions, FieldValidation, ImageEntrypoint, ImageFile, Shell, TestCluster,
};

const USAGE: &str = "usage: sykli-test-cluster --dir DIR [--shell host|busybox] [--nodes NAME,...] [--node-labels [NODE:]k=v,...] [--image-file IMAGE=HOSTPATH:CONTAINERPATH]... [--image-entrypoint IMAGE=JSON-ARRAY]... [--deny-images pattern,...] [--seed N] [--history-limit N] [--bookmark-interval-ms N] [--backoff-base-ms N] [--field-validation Strict|Warn|Ignore]";

fn parse(args: &[String]) -> Result<ClusterOptions, String> {
    let mut opts: Option<ClusterOptions> = None;
    let mut rest: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "-h" || a == "--help" {
            return Err(USAGE.to_string());
        }
        let (key, value) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), v.to_string()),
            _ => {
                let v = args
                    .get(i + 1)
                    .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
                i += 1;
                (a.clone(), v.clone())
            }
        };
        i += 1;
        if key == "--dir" {
            opts = Some(ClusterOptions::new(value));
        } else {
            rest.push((key, value));
        }
    }
    let mut opts = opts.ok_or_else(|| format!("--dir is required\n{USAGE}"))?;
    let number = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{k}: not a number: {v:?}"))
    };
    for (k, v) in rest {
        match k.as_str() {
            "--shell" => {
                opts.shell = match v.as_str() {
                    "host" => Shell::Host,
                    "busybox" => Shell::Busybox,
                    _ => return Err(format!("--shell must be host or busybox, not {v:?}")),
                }
            }
            "--nodes" => {
                opts.nodes = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if opts.nodes.is_empty() {
                    return Err("--nodes needs at least one node name".into());
                }
            }
            "--node-labels" => {
                for kv in v.split(',').filter(|s| !s.is_empty()) {
                    let (k2, v2) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("--node-labels: {kv:?} is not [NODE:]k=v"))?;
                    // Neither label keys nor values contain ':': what precedes one is a node.
                    match k2.split_once(':') {
                        Some((node, key)) => {
                            opts.per_node_labels
                                .entry(node.to_string())
                                .or_default()
                                .insert(key.to_string(), v2.to_string());
                        }
                        None => {
                            opts.node_labels.insert(k2.to_string(), v2.to_string());
                        }
                    }
                }
            }
            "--image-file" => {
                opts.image_files
                    .push(ImageFile::parse(&v).map_err(|e| format!("--image-file: {e}"))?);
            }
            "--image-entrypoint" => {
                opts.image_entrypoints.push(
                    ImageEntrypoint::parse(&v).map_err(|e| format!("--image-entrypoint: {e}"))?,
                );
            }
            "--deny-images" => {
                opts.deny_images
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(str::to_string));
            }
            "--seed" => opts.seed = Some(number(&k, &v)?),
            "--history-limit" => opts.history_limit = number(&k, &v)? as usize,
            "--bookmark-interval-ms" => {
                opts.bookmark_interval = Duration::from_millis(number(&k, &v)?.max(1))
            }
            "--backoff-base-ms" => opts.backoff_base = Duration::from_millis(number(&k, &v)?),
            "--field-validation" => {
                opts.default_field_validation = FieldValidation::parse(&v).map_err(|e| e.message)?
            }
            _ => return Err(format!("unknown option {k}\n{USAGE}")),
        }
    }
    Ok(opts)
}

/// Blocks until stdin reaches EOF, SIGTERM or SIGINT.
fn wait_for_stop() {
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let stdin_tx = tx.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = stdin_tx.send("stdin closed");
    });
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(_) => return,
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => { let _ = tx.send("SIGTERM"); }
                _ = int.recv() => { let _ = tx.send("SIGINT"); }
            }
        });
    });
    let _ = rx.recv();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let cluster = match TestCluster::start(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sykli-test-cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let line = serde_json::to_string(cluster.info()).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    drop(out);
    wait_for_stop();
    cluster.stop();
    ExitCode::SUCCESS
}
