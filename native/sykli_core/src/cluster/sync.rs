//! The cluster side of the PVC strategy, through the Kubernetes API only (the cluster cannot
//! reach the laptop): a receiver pod mounts the claim and runs `sykli-sync`; uploads and
//! downloads travel over `pods/exec` streams.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext,
    PodSpec, Volume, VolumeMount,
};
use kube::api::{Api, AttachParams, DeleteParams, ObjectMeta, PostParams};
use serde::Deserialize;
use sykli_sync::{diff, write_archive, Manifest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{api_error, retry, Cluster};
use crate::error::{Error, Result};
use crate::manifest::{names, ARTIFACTS_MOUNT, MANAGED_BY};
use crate::source::git_clone::{restricted_security_context, NONROOT};
use crate::source::pvc::{STORE_DIR, STORE_PATH};
use crate::source::upload::LocalTree;

/// How long the receiver pod may take to start.
const RECEIVER_START: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
pub struct Receiver {
    pub namespace: String,
    pub pod: String,
    pub claim: String,
    /// The node, when the claim is ReadWriteOnce (the Jobs must run there too).
    pub pin_node: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct UploadReport {
    pub tree: String,
    pub existed: bool,
    pub bytes_sent: u64,
    pub files_sent: usize,
    pub files_deleted: usize,
    /// Files hashed locally (the others came from the stat cache).
    pub hashed: usize,
    pub files: usize,
}

/// The claim must exist and be writable by more than one pod in turn. `setting` names the
/// option that named the claim (`source_pvc`, `artifact_pvc`), for the error.
async fn check_claim(
    cluster: &Cluster,
    namespace: &str,
    claim: &str,
    setting: &str,
) -> Result<bool> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
    let pvc = retry(&format!("reading PersistentVolumeClaim {namespace}/{claim}"), || {
        claims.get_opt(claim)
    })
    .await?
    .ok_or_else(|| {
        Error::cluster(
            "not_found",
            format!(
                "PersistentVolumeClaim {namespace}/{claim} does not exist ({setting}): create it (ReadWriteMany, or ReadWriteOnce) in namespace {namespace}, or name another"
            ),
        )
    })?;
    let modes = pvc.spec.and_then(|s| s.access_modes).unwrap_or_default();
    let has = |m: &str| modes.iter().any(|x| x == m);
    if has("ReadWriteMany") {
        return Ok(false);
    }
    if has("ReadWriteOnce") {
        return Ok(true);
    }
    let why = if has("ReadWriteOncePod") {
        "ReadWriteOncePod lets one pod at a time use it, but the upload's receiver and the Jobs take turns"
    } else if has("ReadOnlyMany") {
        "ReadOnlyMany cannot be written to, and the upload writes the tree into it"
    } else {
        "it has no access mode sykli can use"
    };
    Err(Error::cluster(
        "invalid",
        format!(
            "PersistentVolumeClaim {namespace}/{claim} has access modes [{}]: {why}; use ReadWriteMany or ReadWriteOnce",
            modes.join(", ")
        ),
    ))
}

/// The receiver pod for `claim`, started when missing, waited for until Running.
pub async fn receiver(
    cluster: &Arc<Cluster>,
    namespace: &str,
    claim: &str,
    image: &str,
) -> Result<Receiver> {
    receiver_for(cluster, namespace, claim, image, "source_pvc").await
}

/// [`receiver`] for a claim named by the option `setting` (named when the claim is missing).
pub async fn receiver_for(
    cluster: &Arc<Cluster>,
    namespace: &str,
    claim: &str,
    image: &str,
    setting: &str,
) -> Result<Receiver> {
    let rwo = check_claim(cluster, namespace, claim, setting).await?;
    let name = format!("sykli-sync-{}", names::slug(claim, 40));
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let existing = retry(&format!("reading pod {namespace}/{name}"), || {
        pods.get_opt(&name)
    })
    .await?;
    let usable = |p: &Pod| {
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let same_image = p
            .spec
            .as_ref()
            .is_some_and(|s| s.containers.first().and_then(|c| c.image.as_deref()) == Some(image));
        same_image && (phase == "Running" || phase == "Pending")
    };
    match existing {
        Some(p) if usable(&p) => {}
        Some(_) => {
            // Finished, failed, or another image: replace it.
            let _ = pods.delete(&name, &DeleteParams::background()).await;
            let gone = |p: Option<&Pod>| p.is_none();
            let _ = tokio::time::timeout(
                Duration::from_secs(60),
                kube::runtime::wait::await_condition(pods.clone(), &name, gone),
            )
            .await;
            create_receiver(&pods, namespace, &name, claim, image).await?;
        }
        None => create_receiver(&pods, namespace, &name, claim, image).await?,
    }
    let pod = wait_running(&pods, namespace, &name).await?;
    let node = pod.spec.and_then(|s| s.node_name);
    Ok(Receiver {
        namespace: namespace.into(),
        pod: name,
        claim: claim.into(),
        pin_node: if rwo { node } else { None },
    })
}

async fn create_receiver(
    pods: &Api<Pod>,
    namespace: &str,
    name: &str,
    claim: &str,
    image: &str,
) -> Result<()> {
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [
                    (MANAGED_BY.to_string(), "sykli".to_string()),
                    ("sykli.io/role".to_string(), "sync-receiver".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "receiver".into(),
                image: Some(image.into()),
                command: Some(vec!["sykli-sync".into(), "idle".into()]),
                volume_mounts: Some(vec![VolumeMount {
                    name: "store".into(),
                    mount_path: STORE_PATH.into(),
                    ..Default::default()
                }]),
                security_context: Some(restricted_security_context()),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "store".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.into(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            security_context: Some(PodSecurityContext {
                fs_group: Some(NONROOT),
                fs_group_change_policy: Some("OnRootMismatch".into()),
                ..Default::default()
            }),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            restart_policy: Some("Always".into()),
            ..Default::default()
        }),
        status: None,
    };
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(api_error(&format!("creating pod {namespace}/{name}"), e)),
    }
}

async fn wait_running(pods: &Api<Pod>, namespace: &str, name: &str) -> Result<Pod> {
    let running = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Running")
    };
    let waited = tokio::time::timeout(
        RECEIVER_START,
        kube::runtime::wait::await_condition(pods.clone(), name, running),
    )
    .await;
    match waited {
        Ok(Ok(Some(p))) => Ok(p),
        _ => {
            let why = match pods.get_opt(name).await {
                Ok(Some(p)) => describe_waiting(&p),
                _ => "it does not exist".into(),
            };
            Err(Error::cluster(
                "timeout",
                format!(
                    "the upload's receiver pod {namespace}/{name} did not start within {}s: {why}",
                    RECEIVER_START.as_secs()
                ),
            ))
        }
    }
}

fn describe_waiting(p: &Pod) -> String {
    let Some(s) = &p.status else {
        return "no status yet".into();
    };
    if let Some(c) = s
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return format!("unschedulable: {}", c.message.clone().unwrap_or_default());
    }
    for cs in s.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|st| st.waiting.as_ref()) {
            return format!(
                "{}: {}",
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            );
        }
    }
    format!("phase {}", s.phase.clone().unwrap_or_default())
}

/// Runs `sykli-sync` in the receiver with `args`, feeding `stdin` (chunks) when given;
/// returns its stdout. A non-zero exit is an error carrying its one-line message.
pub async fn exec(
    cluster: &Cluster,
    r: &Receiver,
    args: &[&str],
    stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
) -> Result<Vec<u8>> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &r.namespace);
    let argv: Vec<String> = std::iter::once("sykli-sync")
        .chain(args.iter().copied())
        .map(str::to_string)
        .collect();
    let what = format!(
        "sykli-sync {} in pod {}/{}",
        args.first().unwrap_or(&""),
        r.namespace,
        r.pod
    );
    let ap = AttachParams::default()
        .container("receiver")
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true);
    let mut proc = pods
        .exec(&r.pod, argv, &ap)
        .await
        .map_err(|e| api_error(&format!("starting {what} (RBAC: create on pods/exec)"), e))?;
    let mut out = proc
        .stdout()
        .ok_or_else(|| Error::cluster("api", "exec has no stdout"))?;
    let mut err = proc
        .stderr()
        .ok_or_else(|| Error::cluster("api", "exec has no stderr"))?;
    let status = proc.take_status();
    let writer = proc.stdin().zip(stdin).map(|(mut w, mut chunks)| {
        tokio::spawn(async move {
            while let Some(chunk) = chunks.recv().await {
                w.write_all(&chunk).await?;
            }
            w.shutdown().await
        })
    });
    let read_out = async {
        let mut v = Vec::new();
        out.read_to_end(&mut v).await.map(|_| v)
    };
    let read_err = async {
        let mut v = Vec::new();
        err.read_to_end(&mut v).await.map(|_| v)
    };
    let (stdout, stderr) = tokio::join!(read_out, read_err);
    if let Some(w) = writer {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Error::cluster(
                    "api",
                    format!("{what}: sending the upload failed: {e}"),
                ))
            }
            Err(e) => return Err(Error::cluster("api", format!("{what}: {e}"))),
        }
    }
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let stderr = String::from_utf8_lossy(&stderr.unwrap_or_default())
        .trim()
        .to_string();
    let ok = status
        .as_ref()
        .is_some_and(|s| s.status.as_deref() == Some("Success"));
    if !ok {
        let detail = if stderr.is_empty() {
            status
                .and_then(|s| s.message)
                .unwrap_or_else(|| "no status".into())
        } else {
            stderr
        };
        return Err(Error::cluster(
            "sync_failed",
            format!("{what} failed: {detail}"),
        ));
    }
    stdout.map_err(|e| Error::cluster("api", format!("{what}: reading its output: {e}")))
}

#[derive(Deserialize)]
struct NoTree {
    tree: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    present: bool,
    latest: Option<String>,
}

// The manifest of the last tree this repository put on the claim, kept next to git's own
// files: when the claim's latest tree is that one, its manifest need not be downloaded.
fn cache_file(root: &std::path::Path, r: &Receiver) -> Option<std::path::PathBuf> {
    let repo = crate::git::open(root).ok()?;
    Some(repo.path().join("sykli").join(format!(
        "store-{}-{}.json",
        names::slug(&r.namespace, 63),
        names::slug(&r.claim, 63)
    )))
}

/// The manifest in the cache file and the tree it is (checked: its entries hash to it).
fn cached_manifest(file: Option<&std::path::Path>) -> Option<(String, Manifest)> {
    let text = std::fs::read_to_string(file?).ok()?;
    let m = Manifest::from_json(&text).ok()?;
    let tree = cached_tree(&text).map_or_else(|| m.tree_hash(), str::to_string);
    Some((tree, m))
}

/// The tree a cached manifest names, from the start of its JSON (`{"format":1,"tree":"…"`,
/// as `Manifest::to_json` writes it), without parsing the rest.
fn cached_tree(text: &str) -> Option<&str> {
    let tree = text.strip_prefix(r#"{"format":1,"tree":""#)?.get(..64)?;
    sykli_sync::check_tree_hash(tree).ok()?;
    Some(tree)
}

/// The tree of the cached manifest in `file`, from its first bytes only.
fn cached_tree_in(file: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let mut start = [0u8; 128];
    let mut f = std::fs::File::open(file).ok()?;
    let mut n = 0;
    while n < start.len() {
        match f.read(&mut start[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    cached_tree(std::str::from_utf8(&start[..n]).ok()?).map(str::to_string)
}

fn save_manifest(file: Option<&std::path::Path>, json: &str) {
    let Some(file) = file else { return };
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".store-manifest.{}.{call}", std::process::id()));
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, file);
        }
    }
}

#[derive(Deserialize)]
struct ApplyReport {
    tree: String,
    existed: bool,
}

fn store() -> String {
    format!("{STORE_PATH}/{STORE_DIR}")
}

/// Uploads `local` into the receiver's store: nothing when the tree is already there,
/// otherwise only what differs from the store's latest tree.
///
/// Local work and round trips overlap the receiver's work: the cached base manifest is
/// read during the `status` exec; unless the tree is the one this repository uploaded last
/// (then it is most likely there: only `status` asks), the `apply` exec starts beside the
/// `status` exec and waits for its input — the delta once `status` has named the base, or
/// nothing when the tree is there (the receiver then only notes it as its latest); the
/// archive is written, and the next sync's cached manifest serialized, while it applies.
pub async fn upload(cluster: &Cluster, r: &Receiver, local: LocalTree) -> Result<UploadReport> {
    let store = store();
    let mut report = UploadReport {
        tree: local.tree.clone(),
        hashed: local.hashed,
        files: local.manifest.len(),
        ..Default::default()
    };
    let cache = cache_file(&local.root, r);
    let last_uploaded = cache.as_deref().and_then(cached_tree_in);
    let cached = {
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || cached_manifest(cache.as_deref()))
    };
    let manifest = Arc::new(local.manifest);
    let root = local.root;
    let apply_args = ["apply", "--store", &store, "--tree", &local.tree];
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let mut apply_input = Some(rx);

    // Asks `status`, then feeds the `apply` exec: the delta against the base (writing it on
    // a blocking thread, streamed as it grows), or nothing (`None`) when the tree is there.
    let feed = async {
        let mut tx = Some(tx);
        let fed = async {
            let status = exec(
                cluster,
                r,
                &["status", "--store", &store, "--tree", &local.tree],
                None,
            )
            .await?;
            let status: Status = serde_json::from_slice(&status).map_err(|e| {
                Error::cluster("sync_failed", format!("the receiver's status: {e}"))
            })?;
            let cached = cached.await.ok().flatten();
            if status.present {
                return Ok::<_, Error>((cached.map(|(tree, _)| tree), None));
            }
            let base = match status.latest.as_deref() {
                None => None,
                Some(latest) => match cached.filter(|(tree, _)| tree == latest) {
                    Some(cached) => Some(cached),
                    None => manifest_of(
                        &exec(cluster, r, &["manifest", "--store", &store], None).await?,
                    )?
                    .map(|m| (m.tree_hash(), m)),
                },
            };
            let (base_tree, base) = base.unzip();
            let delta = diff(&base.unwrap_or_default(), &manifest);
            let counts = (delta.changed.len(), delta.deleted.len());
            let (root, manifest) = (root.clone(), manifest.clone());
            let tx = tx.take().expect("taken once");
            let writer = tokio::task::spawn_blocking(move || {
                let sink = ChannelWriter {
                    tx,
                    buf: Vec::new(),
                };
                write_archive(&root, base_tree.as_deref(), &manifest, &delta, sink)
            });
            Ok((None, Some((writer, counts))))
        }
        .await;
        if let Some(tx) = tx {
            // Nothing to send (the tree is there, or asking failed): one empty gzip member
            // ends the apply's input, which never waits for the end of stdin (an exec over
            // WebSocket v4 cannot signal it).
            let _ = tx.send(EMPTY_GZIP_MEMBER.to_vec()).await;
        }
        fed
    };
    let (fed, mut early_apply) = if last_uploaded.as_deref() == Some(local.tree.as_str()) {
        (feed.await, None)
    } else {
        let applying = exec(cluster, r, &apply_args, apply_input.take());
        let (fed, applied) = tokio::join!(feed, applying);
        (fed, Some(applied))
    };
    let (cached_tree, sending) = fed?;
    let Some((writer, (files_sent, files_deleted))) = sending else {
        // The tree is there (an early `apply`, fed nothing, only noted it as the latest).
        report.existed = true;
        if cached_tree.as_ref() != Some(&local.tree) {
            let _ = tokio::task::spawn_blocking(move || {
                save_manifest(cache.as_deref(), &manifest.to_json())
            })
            .await;
        }
        return Ok(report);
    };
    report.files_sent = files_sent;
    report.files_deleted = files_deleted;
    // The next sync's base, ready to be saved once the receiver has published it.
    let next_cache = tokio::task::spawn_blocking(move || manifest.to_json());
    let applied = match early_apply.take() {
        Some(applied) => applied,
        None => exec(cluster, r, &apply_args, apply_input.take()).await,
    };
    let written = writer
        .await
        .map_err(|e| Error::cluster("api", format!("writing the upload: {e}")))?
        .map_err(|e| Error::cluster("sync_failed", format!("packing the working tree: {e}")))?;
    let applied: ApplyReport = serde_json::from_slice(&applied?)
        .map_err(|e| Error::cluster("sync_failed", format!("the receiver's answer: {e}")))?;
    if applied.tree != local.tree {
        return Err(Error::cluster(
            "sync_failed",
            format!(
                "the receiver published {} instead of {}",
                applied.tree, local.tree
            ),
        ));
    }
    report.existed = applied.existed;
    report.bytes_sent = written;
    if let Ok(json) = next_cache.await {
        let _ = tokio::task::spawn_blocking(move || save_manifest(cache.as_deref(), &json)).await;
    }
    Ok(report)
}

/// A gzip member of no content: an archive input that ends without the end of stdin.
const EMPTY_GZIP_MEMBER: [u8; 20] = [
    0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn manifest_of(json: &[u8]) -> Result<Option<Manifest>> {
    let text = String::from_utf8_lossy(json);
    if let Ok(NoTree { tree: None }) = serde_json::from_str::<NoTree>(&text) {
        return Ok(None);
    }
    Manifest::from_json(&text)
        .map(Some)
        .map_err(|e| Error::cluster("sync_failed", format!("the store's manifest: {e}")))
}

/// Copies the Job's declared outputs from its directory on the claim into `dest`, with the
/// hardened extractor (nothing lands outside `dest`).
pub async fn sync_back(
    cluster: &Cluster,
    r: &Receiver,
    job: &str,
    paths: &[String],
    dest: &std::path::Path,
) -> Result<sykli_sync::Report> {
    let root = format!("{}/runs/{job}", store());
    let mut args = vec!["pack", "--root", root.as_str()];
    args.extend(paths.iter().map(String::as_str));
    let archive = exec(cluster, r, &args, None).await?;
    let dest = dest.to_path_buf();
    let (outputs, job_name) = (paths.to_vec(), job.to_string());
    tokio::task::spawn_blocking(move || {
        // The whole archive first: a hostile receiver gets nothing written.
        super::outputs::check_archive(&archive, &outputs, &job_name)?;
        sykli_sync::extract_hardened(&archive[..], &dest, sykli_sync::Limits::default())
            .map_err(|e| Error::cluster("sync_failed", format!("the outputs of {job_name}: {e}")))
    })
    .await
    .map_err(|e| Error::cluster("api", format!("extracting outputs: {e}")))?
}

/// Deletes the Job's own copy of the tree from the claim.
pub async fn remove_run(cluster: &Cluster, r: &Receiver, job: &str) -> Result<()> {
    exec(
        cluster,
        r,
        &["remove-run", "--store", &store(), "--run", job],
        None,
    )
    .await
    .map(|_| ())
}

/// What `sykli-sync copy` copied.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CopyReport {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Copies the artifact at `from` to `to` on the receiver's claim, in the cluster
/// (`sykli-sync copy`, hardened: nothing reached or left pointing out of the claim). Both
/// are paths where Jobs see the claim (below [`ARTIFACTS_MOUNT`]).
pub async fn copy_artifact(
    cluster: &Cluster,
    r: &Receiver,
    from: &str,
    to: &str,
) -> Result<CopyReport> {
    let (from_rel, to_rel) = (artifact_rel(from)?, artifact_rel(to)?);
    let out = exec(
        cluster,
        r,
        &[
            "copy", "--root", STORE_PATH, "--from", from_rel, "--to", to_rel,
        ],
        None,
    )
    .await
    .map_err(|e| match e {
        Error::Cluster { message, .. } if message.contains("error[not_found]") => {
            Error::cluster(
                "not_found",
                format!(
                    "the artifact {from} does not exist on PersistentVolumeClaim {}/{} (artifact_pvc): did the task that produces it write it there?",
                    r.namespace, r.claim
                ),
            )
        }
        e => e,
    })?;
    serde_json::from_slice(&out)
        .map_err(|e| Error::cluster("sync_failed", format!("sykli-sync copy's report: {e}")))
}

/// `/artifacts/<path>` → `<path>`, refusing anything else (the receiver checks it again).
pub fn artifact_rel(path: &str) -> Result<&str> {
    path.strip_prefix(ARTIFACTS_MOUNT)
        .and_then(|p| p.strip_prefix('/'))
        .filter(|p| sykli_sync::check_path(p.as_bytes()).is_ok())
        .ok_or_else(|| {
            Error::cluster(
                "invalid_option",
                format!(
                    "artifact path {path:?} is not below {ARTIFACTS_MOUNT}/ (relative, without \"..\")"
                ),
            )
        })
}

/// A `Write` that hands full chunks to the async side.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.tx.blocking_send(chunk).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the receiver stopped reading",
                )
            })?;
        }
        Ok(())
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}
