//! The PVC source strategy's sync (`sykli_core::source::upload::local_tree`, then
//! `sykli_core::cluster::sync::{receiver, upload}`) against a plain
//! `tar czf - . | kubectl exec -i receiver -- tar xzf - -C /store/plain` stream, over the same
//! channel: `pods/exec` over WebSocket through the API server to the node's exec in the same
//! receiver pod, on the real components: `sykli-kube up` (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and one virtual-kubelet node running pods in
//! bubblewrap through `sykli-pod-runner`), in child processes. Each round's claim is a
//! hostPath PersistentVolume on a directory of this machine, pre-bound to the claim.
//!
//! The working tree is a generated git repository of FILES files (default 10,000) of varied
//! sizes (log-uniform from 100 B to 40 KB, ~65 MB in all; 85% word-like text, 15% random
//! bytes), committed, with old mtimes (files checked out a while ago). Per round, a fresh
//! ReadWriteMany claim and receiver pod, and no stat cache for the first sync:
//!
//! 1. first sync: sykli, then the full tar stream;
//! 2. one text file changed (a line appended): sykli's re-sync, then the full tar stream again
//!    (tar has no increments: it resends everything);
//! 3. nothing changed: sykli's re-sync, then the tar stream once more.
//!
//! sykli's time is `local_tree` + `upload`, both measured; its bytes are the archive it sends
//! (`UploadReport.bytes_sent`), and, separately, what the receiver answers before the upload
//! (its `status`, asked again afterwards, untimed). tar's bytes are the gzip
//! stream, its time from spawning `tar czf` to the exec's Success status. The receiver's
//! copies are checked against the working tree (`diff -r`) at the end of every round.
//!
//! The `sykli-sync` binary stands in for the image `ghcr.io/sykli/sync:bench` (the node maps
//! it at /usr/local/bin/sykli-sync, `--image-file`): it is looked up next to this executable,
//! or set SYKLI_SYNC_BIN. The node's pod runner is `sykli-pod-runner` next to this
//! executable, or SYKLI_POD_RUNNER; the control plane is ~/.cache/sykli/bin/sykli-kube
//! (scripts/setup builds it), or SYKLI_KUBE_BIN.
//!
//! Usage: cargo build --release -p sykli_sync -p sykli_testkit --bins &&
//!        cargo run --release -p sykli-bench --bin sync [-- FILES ROUNDS]   (default 10000 5)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, AttachParams, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;
use sykli_core::cluster::sync::{self, Receiver, UploadReport};
use sykli_core::cluster::{Cluster, ConnectOptions};
use sykli_core::source::pvc::{STORE_DIR, STORE_PATH};
use sykli_core::source::upload::local_tree;
use sykli_sync::Manifest;
use sykli_testkit::kube::{ControlPlane, ControlPlaneOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = "ghcr.io/sykli/sync:bench";
const NAMESPACE: &str = "sync-bench";
const PLAIN: &str = "/store/plain";
/// A well-formed tree hash no store has.
const NO_TREE: &str = "0000000000000000000000000000000000000000000000000000000000000000";

// ---------------------------------------------------------------------------------------
// The working tree.

#[path = "worktree.rs"]
mod worktree;
use worktree::{change_one, make_repo, Tree};

// ---------------------------------------------------------------------------------------
// Measurements.

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    /// Bytes from the laptop to the receiver.
    up: u64,
    /// Bytes the receiver sent back (sykli: manifests; tar: nothing).
    down: u64,
    files_sent: usize,
    hashed: usize,
    wall_ms: f64,
    local_ms: f64,
}

fn store() -> String {
    format!("{STORE_PATH}/{STORE_DIR}")
}

/// One sykli sync: the working tree's manifest, then the upload.
async fn sykli_sync(cluster: &Cluster, r: &Receiver, root: &Path) -> (Sample, UploadReport) {
    let t0 = Instant::now();
    let local = local_tree(root, &[]).expect("local_tree");
    let local_ms = t0.elapsed().as_secs_f64() * 1e3;
    let report = sync::upload(cluster, r, local).await.expect("upload");
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    (
        Sample {
            up: report.bytes_sent,
            down: 0,
            files_sent: report.files_sent,
            hashed: report.hashed,
            wall_ms,
            local_ms,
        },
        report,
    )
}

/// The size of what `sykli-sync status` answers (what `upload` reads back first).
async fn status_bytes(cluster: &Cluster, r: &Receiver, tree: &str) -> u64 {
    let store = store();
    let args = ["status", "--store", store.as_str(), "--tree", tree];
    sync::exec(cluster, r, &args, None)
        .await
        .expect("status")
        .len() as u64
}

/// The size of what `sykli-sync manifest` prints now (what `upload` read back), and how long
/// the exec took.
async fn manifest_bytes(cluster: &Cluster, r: &Receiver, tree: Option<&str>) -> (Vec<u8>, f64) {
    let store = store();
    let mut args = vec!["manifest", "--store", store.as_str()];
    if let Some(t) = tree {
        args.extend(["--tree", t]);
    }
    let t0 = Instant::now();
    let out = sync::exec(cluster, r, &args, None).await.expect("manifest");
    (out, t0.elapsed().as_secs_f64() * 1e3)
}

/// Runs `argv` in the receiver, feeding it `stdin` when given; panics unless it succeeds.
async fn exec_in(
    pods: &Api<Pod>,
    r: &Receiver,
    argv: &[&str],
    stdin: Option<&mut (dyn tokio::io::AsyncRead + Unpin + Send)>,
) -> u64 {
    let ap = AttachParams::default()
        .container("receiver")
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true);
    let mut proc = pods.exec(&r.pod, argv.to_vec(), &ap).await.expect("exec");
    let mut out = proc.stdout().expect("stdout");
    let mut err = proc.stderr().expect("stderr");
    let status = proc.take_status().expect("status");
    let writer = async {
        let mut sent = 0u64;
        if let (Some(src), Some(mut w)) = (stdin, proc.stdin()) {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = src.read(&mut buf).await.expect("reading tar's output");
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n]).await.expect("sending");
                sent += n as u64;
            }
            w.shutdown().await.expect("closing stdin");
        }
        sent
    };
    let read_out = async {
        let mut v = Vec::new();
        out.read_to_end(&mut v).await.map(|_| v)
    };
    let read_err = async {
        let mut v = Vec::new();
        err.read_to_end(&mut v).await.map(|_| v)
    };
    let (sent, _, stderr) = tokio::join!(writer, read_out, read_err);
    let status = status.await;
    let ok = status
        .as_ref()
        .is_some_and(|s| s.status.as_deref() == Some("Success"));
    assert!(
        ok,
        "{argv:?} in the receiver: {status:?} {}",
        String::from_utf8_lossy(&stderr.unwrap_or_default())
    );
    sent
}

/// `tar czf - -C root --exclude=./.git . | exec -i receiver -- tar xzf - -C /store/plain`.
async fn tar_stream(pods: &Api<Pod>, r: &Receiver, root: &Path) -> Sample {
    let t0 = Instant::now();
    let mut tar = tokio::process::Command::new("tar")
        .args(["czf", "-", "--exclude=./.git", "-C"])
        .arg(root)
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar runs");
    let mut stdout = tar.stdout.take().expect("tar's stdout");
    let sent = exec_in(
        pods,
        r,
        &["tar", "xzf", "-", "-C", PLAIN],
        Some(&mut stdout),
    )
    .await;
    let status = tar.wait().await.expect("tar ends");
    assert!(status.success(), "tar czf: {status}");
    Sample {
        up: sent,
        wall_ms: t0.elapsed().as_secs_f64() * 1e3,
        ..Sample::default()
    }
}

/// Flushes the claim's filesystem (untimed, before every measurement): each one starts with
/// no dirty pages left by the one before, which `apply`'s own syncfs would otherwise pay for.
fn settle(dir: &Path) -> f64 {
    let t0 = Instant::now();
    let status = Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status()
        .expect("sync runs");
    assert!(status.success(), "sync -f {}", dir.display());
    t0.elapsed().as_secs_f64() * 1e3
}

/// The receiver's copy of the working tree is the working tree.
fn check_same(root: &Path, copy: &Path) {
    let out = Command::new("diff")
        .args(["-rq", "--no-dereference", "--exclude=.git"])
        .arg(root)
        .arg(copy)
        .output()
        .expect("diff runs");
    assert!(
        out.status.success(),
        "{} differs from {}: {}",
        copy.display(),
        root.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[derive(Default)]
struct Round {
    receiver_ms: f64,
    /// One `sykli-sync manifest` exec answering {"tree":null}: an exec's round trip.
    null_exec_ms: f64,
    /// One `sykli-sync manifest` exec answering the base tree's whole manifest.
    manifest_exec_ms: f64,
    /// `Manifest::from_json` of that manifest, here.
    parse_ms: f64,
    /// `sykli-sync checkout` of the whole tree in the receiver (an exec), then `sync -f`.
    copy_ms: f64,
    copy_syncfs_ms: f64,
    /// `sync -f` right after the tar streams: making tar's writes durable.
    tar_first_syncfs_ms: f64,
    tar_change_syncfs_ms: f64,
    sykli_first: Sample,
    sykli_change: Sample,
    sykli_same: Sample,
    tar_first: Sample,
    tar_change: Sample,
    tar_same: Sample,
}

/// Claim `NAMESPACE/name`, ReadWriteMany, bound by the real PV binder to a hostPath
/// PersistentVolume on `dir` (made world-writable: the receiver runs as non-root) and
/// pre-bound to it by `claimRef`; returns once the claim is Bound.
async fn bound_claim(cluster: &Cluster, name: &str, dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).expect("the claim's directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .expect("the claim's directory made writable");
    let path = dir.to_str().expect("a UTF-8 temp dir");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": format!("{NAMESPACE}-{name}")},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                 "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": path, "type": "Directory"},
                 "claimRef": {"namespace": NAMESPACE, "name": name}}
    }))
    .expect("a volume");
    Api::<PersistentVolume>::all(cluster.client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .expect("volume created");
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "resources": {"requests": {"storage": "10Gi"}}}
    }))
    .expect("a claim");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    claims
        .create(&PostParams::default(), &pvc)
        .await
        .expect("claim created");
    let bound = |c: Option<&PersistentVolumeClaim>| {
        c.and_then(|c| c.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Bound")
    };
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        await_condition(claims, name, bound),
    )
    .await
    .unwrap_or_else(|_| panic!("claim {NAMESPACE}/{name} was not bound within 60 s"))
    .expect("watching the claim");
}

async fn round(
    claims_dir: &Path,
    cluster: &Arc<Cluster>,
    root: &Path,
    tree: &Tree,
    i: usize,
) -> Round {
    let claim = format!("source-{i}");
    let claim_dir = claims_dir.join(&claim);
    bound_claim(cluster, &claim, &claim_dir).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let mut out = Round::default();

    let t0 = Instant::now();
    let r = sync::receiver(cluster, NAMESPACE, &claim, IMAGE)
        .await
        .expect("receiver");
    out.receiver_ms = t0.elapsed().as_secs_f64() * 1e3;
    // Warm-up: one exec of each kind, untimed.
    sync::exec(cluster, &r, &["version"], None)
        .await
        .expect("sykli-sync version");
    exec_in(&pods, &r, &["mkdir", "-p", PLAIN], None).await;

    // A cold first sync: no stat cache.
    let _ = std::fs::remove_file(root.join(".git/sykli/upload-stat-cache"));

    // 1. The whole tree.
    settle(&claim_dir);
    let (s, first) = sykli_sync(cluster, &r, root).await;
    out.sykli_first = s;
    // What upload read back: two {"tree":null} (no such tree, no latest).
    let (null, exec_ms) = manifest_bytes(cluster, &r, Some(NO_TREE)).await;
    out.sykli_first.down = 2 * null.len() as u64;
    out.null_exec_ms = exec_ms;
    assert_eq!(
        first.files_sent, tree.files,
        "the first sync sends every file"
    );
    settle(&claim_dir);
    out.tar_first = tar_stream(&pods, &r, root).await;
    out.tar_first_syncfs_ms = settle(&claim_dir);

    // 2. One file changed.
    let changed = &tree.texts[(i * 7919) % tree.texts.len()];
    change_one(root, changed, i);
    settle(&claim_dir);
    let (s, resync) = sykli_sync(cluster, &r, root).await;
    out.sykli_change = s;
    assert_eq!(resync.files_sent, 1, "one file changed");
    assert!(!resync.existed);
    // What upload read back: the receiver's short status (the base manifest is the one this
    // repository uploaded, cached locally) and the apply report. For comparison, what
    // downloading the store's manifest would cost.
    out.sykli_change.down = status_bytes(cluster, &r, &resync.tree).await;
    let (base, base_ms) = manifest_bytes(cluster, &r, Some(&first.tree)).await;
    out.manifest_exec_ms = base_ms;
    // As upload does with it: parse and check it (paths, tree hash).
    let t0 = Instant::now();
    let parsed = Manifest::from_json(&String::from_utf8_lossy(&base)).expect("the manifest");
    out.parse_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(parsed.tree_hash(), first.tree);
    settle(&claim_dir);
    out.tar_change = tar_stream(&pods, &r, root).await;
    out.tar_change_syncfs_ms = settle(&claim_dir);

    // 3. Nothing changed.
    settle(&claim_dir);
    let (s, same) = sykli_sync(cluster, &r, root).await;
    out.sykli_same = s;
    assert!(same.existed, "the tree is already there");
    out.sykli_same.down = status_bytes(cluster, &r, &same.tree).await;
    settle(&claim_dir);
    out.tar_same = tar_stream(&pods, &r, root).await;
    settle(&claim_dir);

    // What the receiver's apply does besides extracting one file: a copy of the base tree
    // (here `sykli-sync checkout`, the same kind of copy) and a syncfs.
    let t0 = Instant::now();
    let store = store();
    sync::exec(
        cluster,
        &r,
        &[
            "checkout",
            "--store",
            &store,
            "--tree",
            &same.tree,
            "--to",
            "/store/probe",
        ],
        None,
    )
    .await
    .expect("checkout");
    out.copy_ms = t0.elapsed().as_secs_f64() * 1e3;
    out.copy_syncfs_ms = settle(&claim_dir);
    check_same(root, &claim_dir.join("probe"));
    check_same(
        root,
        &claim_dir.join(STORE_DIR).join("trees").join(&same.tree),
    );
    check_same(root, &claim_dir.join("plain"));
    // Gone before the next round starts, so that its teardown is not measured there.
    pods.delete(&r.pod, &DeleteParams::background())
        .await
        .expect("receiver deleted");
    let uid = r.uid.as_deref().expect("the receiver's uid");
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        await_condition(pods, &r.pod, conditions::is_deleted(uid)),
    )
    .await
    .unwrap_or_else(|_| panic!("receiver {} still there 60 s after its deletion", r.pod))
    .expect("watching the receiver");
    out
}

// ---------------------------------------------------------------------------------------
// Reporting.

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn mib(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map(|a| a.parse().expect("a number"))
            .unwrap_or(default)
    };
    let files = arg(1, 10_000);
    let rounds = arg(2, 5);
    let helper = std::env::var_os("SYKLI_SYNC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .expect("this executable")
                .with_file_name("sykli-sync")
        });
    assert!(
        helper.is_file(),
        "{} is missing: run `cargo build -p sykli_sync --bins` first, or set SYKLI_SYNC_BIN",
        helper.display()
    );

    let dir = std::env::temp_dir().join(format!("sykli-bench-sync-{}", std::process::id()));
    let root = dir.join("repo");
    let t0 = Instant::now();
    let tree = make_repo(&root, files);
    eprintln!(
        "repository: {} files, {} in {:.1} s (generated and committed)",
        tree.files,
        mib(tree.bytes as f64),
        t0.elapsed().as_secs_f64()
    );
    let k8s = ControlPlane::start(&ControlPlaneOptions {
        nodes: 1,
        node_args: vec![format!(
            "--runner-arg=--image-file={IMAGE}={}:/usr/local/bin/sykli-sync",
            helper.display()
        )],
        ..ControlPlaneOptions::default()
    })
    .unwrap_or_else(|e| panic!("the control plane starts: {e}"));
    eprintln!(
        "control plane: {} (node {})",
        k8s.info().server,
        k8s.info().nodes.join(", ")
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let results: Vec<Round> = rt.block_on(async {
        let cluster = Arc::new(
            Cluster::connect(&ConnectOptions {
                kubeconfig: Some(k8s.kubeconfig().to_path_buf()),
                context: None,
                namespace: Some(NAMESPACE.into()),
            })
            .await
            .expect("a client"),
        );
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).expect("a namespace");
        Api::<Namespace>::all(cluster.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("namespace created");
        let mut results = Vec::new();
        for i in 1..=rounds {
            let r = round(&dir.join("claims"), &cluster, &root, &tree, i).await;
            eprintln!(
                "round {i}: receiver {:.0} ms; sykli first {} {:.0} ms, change {} {:.0} ms (hashed {}), same {} {:.0} ms; tar {:.0} / {:.0} / {:.0} ms, {}",
                r.receiver_ms,
                r.sykli_first.up,
                r.sykli_first.wall_ms,
                r.sykli_change.up,
                r.sykli_change.wall_ms,
                r.sykli_change.hashed,
                r.sykli_same.up,
                r.sykli_same.wall_ms,
                r.tar_first.wall_ms,
                r.tar_change.wall_ms,
                r.tar_same.wall_ms,
                r.tar_first.up,
            );
            results.push(r);
        }
        results
    });
    drop(rt);
    drop(k8s);

    let med = |f: &dyn Fn(&Round) -> f64| median(results.iter().map(f).collect());
    type Get = fn(&Round) -> Sample;
    let rows: [(&str, &str, Get); 6] = [
        ("sykli (local_tree + upload)", "first sync", |r| {
            r.sykli_first
        }),
        ("sykli (local_tree + upload)", "one file changed", |r| {
            r.sykli_change
        }),
        ("sykli (local_tree + upload)", "no change", |r| r.sykli_same),
        ("tar czf \\| exec tar xzf", "first sync", |r| r.tar_first),
        ("tar czf \\| exec tar xzf", "one file changed", |r| {
            r.tar_change
        }),
        ("tar czf \\| exec tar xzf", "no change", |r| r.tar_same),
    ];
    println!(
        "\n### {} files, {} ({} bytes), {} rounds (medians)\n",
        tree.files,
        mib(tree.bytes as f64),
        tree.bytes,
        results.len()
    );
    println!("| method | case | bytes sent | bytes received | files sent | hashed locally | wall time, median | min–max | of which local manifest |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (method, case, get) in rows {
        let is_sykli = method.starts_with("sykli");
        let opt = |s: String| if is_sykli { s } else { "—".to_string() };
        println!(
            "| {method} | {case} | {:.0} | {} | {} | {} | {:.0} ms | {:.0}–{:.0} ms | {} |",
            med(&|r| get(r).up as f64),
            opt(format!("{:.0}", med(&|r| get(r).down as f64))),
            opt(format!("{:.0}", med(&|r| get(r).files_sent as f64))),
            opt(format!("{:.0}", med(&|r| get(r).hashed as f64))),
            med(&|r| get(r).wall_ms),
            results
                .iter()
                .map(|r| get(r).wall_ms)
                .fold(f64::INFINITY, f64::min),
            results.iter().map(|r| get(r).wall_ms).fold(0.0, f64::max),
            opt(format!("{:.0} ms", med(&|r| get(r).local_ms))),
        );
    }
    let first_b = med(&|r| r.sykli_first.up as f64);
    let first_t = med(&|r| r.sykli_first.wall_ms);
    let change_b = med(&|r| r.sykli_change.up as f64);
    let change_t = med(&|r| r.sykli_change.wall_ms);
    let same_b = med(&|r| r.sykli_same.up as f64);
    let same_t = med(&|r| r.sykli_same.wall_ms);
    let tar_b = med(&|r| r.tar_change.up as f64);
    let tar_t = med(&|r| r.tar_change.wall_ms);
    let byte_ratio = change_b / first_b;
    let time_ratio = change_t / first_t;
    println!(
        "\nreceiver pod start (once per claim): {:.0} ms",
        med(&|r| r.receiver_ms)
    );
    let local = med(&|r| r.sykli_change.local_ms);
    let null = med(&|r| r.null_exec_ms);
    let base = med(&|r| r.manifest_exec_ms);
    let parse = med(&|r| r.parse_ms);
    println!(
        "re-sync after one change, {change_t:.0} ms: local manifest {local:.0} ms, upload {:.0} ms (the `status` exec, an exec's round trip ~{null:.0} ms, beside the start of the `apply` exec, which then gets the delta: the receiver hard-links the base tree, extracts, hashes, syncfs); the base manifest came from the local cache (downloading the store's would add {base:.0} ms + {parse:.0} ms to parse)",
        change_t - local,
    );
    println!(
        "in the receiver: copying the whole tree (`sykli-sync checkout`, one exec) {:.0} ms, then syncfs {:.0} ms; syncfs after tar's full stream {:.0} ms (first) and {:.0} ms (after the change), not in tar's times",
        med(&|r| r.copy_ms),
        med(&|r| r.copy_syncfs_ms),
        med(&|r| r.tar_first_syncfs_ms),
        med(&|r| r.tar_change_syncfs_ms),
    );
    println!(
        "re-sync after one change ÷ first sync: bytes {:.4}% (target ≤ 1%: {}), time {:.1}% (target ≤ 10%: {})",
        byte_ratio * 100.0,
        if byte_ratio <= 0.01 { "met" } else { "NOT met" },
        time_ratio * 100.0,
        if time_ratio <= 0.10 { "met" } else { "NOT met" },
    );
    println!(
        "re-sync with no change: {same_b:.0} bytes sent (target 0: {}), {same_t:.0} ms ({:.1}% of the first sync)",
        if same_b == 0.0 { "met" } else { "NOT met" },
        same_t / first_t * 100.0
    );
    println!(
        "after one change, tar ÷ sykli: bytes {:.0}×, time {:.1}×; first sync, sykli ÷ tar: bytes {:.3}×, time {:.2}×",
        tar_b / change_b,
        tar_t / change_t,
        first_b / med(&|r| r.tar_first.up as f64),
        first_t / med(&|r| r.tar_first.wall_ms),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
