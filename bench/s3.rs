//! The S3 source strategy against s3s-fs on 127.0.0.1 (a real S3 implementation that
//! verifies SigV4; sykli_testkit::s3_server), all in one run:
//!
//! 1. a generated working tree of FILES files (default 10,000, ~65 MB; see worktree.rs),
//!    no stat cache: `local_tree` + `publish` (pack, HEAD, PUT or multipart) — time and
//!    bytes uploaded, under a fresh prefix each round so nothing is cached;
//! 2. the same tree again (stat cache warm): time and bytes uploaded (target: 0);
//! 3. one archive of BIG MiB of incompressible files (default 256), uploaded once, then
//!    downloaded and verified (`sykli_sync::download`, as the pod's `sykli-sync fetch`
//!    does) single-stream and with 4 parallel ranged requests, alternating.
//!
//! Usage: cargo run --release -p sykli-bench --bin s3 [-- FILES ROUNDS BIG_MIB]
//! (needs s3s-fs: scripts/setup)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sykli_core::s3::{Bucket, S3Options};
use sykli_core::source::{s3, upload};
use sykli_sync::Download;
use sykli_testkit::s3_server::S3Server;

#[path = "worktree.rs"]
mod worktree;
use worktree::{git, make_repo, random_bytes, Rng};

const BUCKET: &str = "bench";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (files, rounds, big_mib) = (num(0, 10_000), num(1, 3), num(2, 256));
    let tmp = std::env::temp_dir().join(format!("sykli-bench-s3-{}", std::process::id()));
    let server = S3Server::start(&tmp.join("s3")).expect("s3s-fs starts (scripts/setup)");
    server.create_bucket(BUCKET).expect("bucket");
    let env: BTreeMap<String, String> = server
        .aws_env()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain([("HOME".to_string(), "/nonexistent".to_string())])
        .collect();
    let bucket_at = |prefix: &str| {
        Bucket::new(
            &S3Options {
                bucket: BUCKET.into(),
                prefix: Some(prefix.into()),
                endpoint: Some(server.endpoint()),
                ..Default::default()
            },
            &env,
        )
        .expect("bucket settings")
    };

    let root = tmp.join("work");
    let tree = make_repo(&root, files);
    println!(
        "tree: {} files, {:.1} MB; {rounds} rounds",
        tree.files,
        tree.bytes as f64 / 1e6
    );
    let scratch = tmp.join("scratch");
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let _ = std::fs::remove_file(root.join(".git/sykli/upload-stat-cache.json"));
        let bucket = bucket_at(&format!("round{round}"));
        let t = Instant::now();
        let local = upload::local_tree(&root, &[]).expect("local tree");
        let p = s3::publish(&bucket, &local, &scratch).expect("publish");
        first.push((t.elapsed(), p.uploaded_bytes, p.size));
        assert!(!p.existed);

        let t = Instant::now();
        let local = upload::local_tree(&root, &[]).expect("local tree");
        let q = s3::publish(&bucket, &local, &scratch).expect("publish");
        again.push((t.elapsed(), q.uploaded_bytes, q.size));
        assert!(q.existed && q.uploaded_bytes == 0);
    }
    let med = |v: &mut Vec<(Duration, u64, u64)>| {
        v.sort();
        v[v.len() / 2]
    };
    let (f, a) = (med(&mut first), med(&mut again));
    println!("\n| 10k-file tree (median of {rounds}) | time | bytes uploaded |");
    println!("|---|---:|---:|");
    println!(
        "| first run: local_tree (no stat cache) + pack + upload | {:.0} ms | {} (archive {}) |",
        ms(f.0),
        f.1,
        f.2
    );
    println!(
        "| unchanged tree: local_tree (stat cache) + HEAD | {:.0} ms | {} |",
        ms(a.0),
        a.1
    );
    println!(
        "| ratio unchanged / first | {:.3} | {:.4} |",
        ms(a.0) / ms(f.0),
        a.1 as f64 / f.1 as f64
    );

    // A large archive: incompressible files, so the archive is about BIG MiB.
    let big = tmp.join("big");
    std::fs::create_dir_all(&big).expect("dir");
    let mut rng = Rng(0xb16_b16);
    for i in 0..(big_mib / 16).max(1) {
        std::fs::write(
            big.join(format!("blob{i:03}.bin")),
            random_bytes(&mut rng, 16 << 20),
        )
        .expect("write");
    }
    git(&big, &["init", "-q", "-b", "main"]);
    let bucket = bucket_at("big");
    let local = upload::local_tree(&big, &[]).expect("local tree");
    let t = Instant::now();
    let p = s3::publish(&bucket, &local, &scratch).expect("publish");
    println!(
        "\nlarge archive: {:.1} MiB, uploaded (multipart) in {:.0} ms",
        p.size as f64 / (1 << 20) as f64,
        ms(t.elapsed())
    );
    let url = bucket.presign_get(&p.key, 3600).expect("presign");
    let (mut single, mut parallel) = (Vec::new(), Vec::new());
    let file = tmp.join("download.tar.gz");
    for _ in 0..rounds {
        for (n, out) in [(1usize, &mut single), (4, &mut parallel)] {
            let d = Download {
                url: url.clone(),
                sha256: p.sha256.clone(),
                size: p.size,
                parallel: n,
                parallel_min: 1,
                attempts: 1,
                ca_pem: None,
            };
            let t = Instant::now();
            let r = sykli_sync::download(&d, &file).expect("download verifies");
            out.push(t.elapsed());
            assert_eq!(r.bytes, p.size);
            let _ = std::fs::remove_file(&file);
        }
    }
    single.sort();
    parallel.sort();
    let (s, q) = (single[single.len() / 2], parallel[parallel.len() / 2]);
    let mbps = |d: Duration| p.size as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "\n| download + SHA-256 of {:.0} MiB (median of {rounds}) | time | MiB/s |",
        p.size as f64 / (1 << 20) as f64
    );
    println!("|---|---:|---:|");
    println!("| single stream | {:.0} ms | {:.0} |", ms(s), mbps(s));
    println!(
        "| 4 ranged requests in parallel | {:.0} ms | {:.0} |",
        ms(q),
        mbps(q)
    );
    println!("| ratio parallel / single | {:.2} | |", ms(q) / ms(s));
    drop(server);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
