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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{api_error, retry, Cluster};
use crate::error::{Error, Result};
use crate::manifest::{names, ARTIFACTS_MOUNT, MANAGED_BY};
use crate::source::git_clone::{restricted_security_context, NONROOT};
use crate::source::pvc::{STORE_DIR, STORE_PATH, SYNC_BIN};
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
    /// The uid of the pod that was checked: an exec answered by a pod created under the
    /// same name since (deleted and planted in between) is not used.
    pub uid: Option<String>,
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
///
/// Whatever answers as the receiver gets the working tree and writes what the sync back
/// brings home, so a pod is used only when it is exactly the one sykli would create: a
/// pod of that name with any other spec (another command, `env`, an init container, more
/// volumes, another service account…) fails the run, naming the pod and the field. Only
/// one of sykli's own receivers that ended, or that runs another sync image, is replaced.
pub async fn receiver_for(
    cluster: &Arc<Cluster>,
    namespace: &str,
    claim: &str,
    image: &str,
    setting: &str,
) -> Result<Receiver> {
    let rwo = check_claim(cluster, namespace, claim, setting).await?;
    let name = names::receiver_name(claim);
    let want = receiver_pod(&name, claim, image);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let existing = retry(&format!("reading pod {namespace}/{name}"), || {
        pods.get_opt(&name)
    })
    .await?;
    let not_ours = |field: &str| {
        Error::cluster(
            "conflict",
            format!(
                "pod {namespace}/{name} is not the receiver sykli creates for claim {claim}: its {field} differs, and sykli sends the working tree only to its own; delete it (kubectl delete pod -n {namespace} {name}) once you know who created it"
            ),
        )
    };
    match existing {
        None => create_receiver(&pods, namespace, &want).await?,
        Some(p) => {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            let ended = !matches!(phase, Some("Running") | Some("Pending"));
            match receiver_mismatch(&p, &want) {
                Some(field) if field != IMAGE_FIELD => return Err(not_ours(&field)),
                None if !ended => {}
                // Ours, but ended or of another sync image: replaced.
                _ => {
                    let _ = pods.delete(&name, &DeleteParams::background()).await;
                    let gone = |p: Option<&Pod>| p.is_none();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(60),
                        kube::runtime::wait::await_condition(pods.clone(), &name, gone),
                    )
                    .await;
                    create_receiver(&pods, namespace, &want).await?;
                }
            }
        }
    }
    let pod = wait_running(&pods, namespace, &name).await?;
    // What runs now is what is used: checked again, for a pod created in between (a 409).
    if let Some(field) = receiver_mismatch(&pod, &want) {
        return Err(not_ours(&field));
    }
    let uid = pod.metadata.uid.clone();
    let node = pod.spec.and_then(|s| s.node_name);
    Ok(Receiver {
        namespace: namespace.into(),
        pod: name,
        claim: claim.into(),
        pin_node: if rwo { node } else { None },
        uid,
    })
}

/// The receiver pod sykli creates for `claim`: `sykli-sync idle` by its absolute path in
/// `image`, the claim its only volume, non-root and without privileges, no
/// service-account token, no environment.
pub fn receiver_pod(name: &str, claim: &str, image: &str) -> Pod {
    Pod {
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
                command: Some(vec![SYNC_BIN.into(), "idle".into()]),
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
    }
}

/// The field [`receiver_mismatch`] names when only the image differs.
const IMAGE_FIELD: &str = "spec.containers[0].image";

/// Pod fields the API server, its admission plugins or the scheduler fill in: where and
/// when the pod runs, never what runs in it or what it can reach.
const SERVER_POD_FIELDS: &[&str] = &[
    "nodeName",
    "schedulerName",
    "dnsPolicy",
    "terminationGracePeriodSeconds",
    "tolerations",
    "priority",
    "priorityClassName",
    "preemptionPolicy",
    "nodeSelector",
    "affinity",
    "topologySpreadConstraints",
    "runtimeClassName",
    "overhead",
];
/// Container fields filled in the same way (requests and limits from a LimitRange).
const SERVER_CONTAINER_FIELDS: &[&str] = &[
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "resources",
    "resizePolicy",
];

/// The first field of `found`'s spec that is not what `want` (a [`receiver_pod`]) says,
/// as a path (`spec.initContainers`, `spec.containers[0].env`); `None` when it is that
/// pod. Everything counts but the fields the server fills in; the service account may
/// only be `default` (which the server fills in), with its token not mounted.
fn receiver_mismatch(found: &Pod, want: &Pod) -> Option<String> {
    let spec = |p: &Pod| serde_json::to_value(&p.spec).unwrap_or_default();
    let (mut found, want) = (spec(found), spec(want));
    if let Some(f) = found.as_object_mut() {
        for key in SERVER_POD_FIELDS {
            f.remove(*key);
        }
        for key in ["serviceAccountName", "serviceAccount"] {
            if f.get(key).and_then(|v| v.as_str()) == Some("default") {
                f.remove(key);
            }
        }
        // Pod-level lists the server leaves empty rather than absent.
        f.retain(|_, v| !is_empty(v));
        if let Some(containers) = f.get_mut("containers").and_then(|c| c.as_array_mut()) {
            for c in containers.iter_mut().filter_map(|c| c.as_object_mut()) {
                for key in SERVER_CONTAINER_FIELDS {
                    c.remove(*key);
                }
                c.retain(|_, v| !is_empty(v));
            }
        }
    }
    first_difference("spec", &found, &want)
}

fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The path of the first place where `a` and `b` differ.
fn first_difference(path: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let null = Value::Null;
                first_difference(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b)),
        _ if a == b => None,
        _ => Some(path.to_string()),
    }
}

async fn create_receiver(pods: &Api<Pod>, namespace: &str, pod: &Pod) -> Result<()> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match pods.create(&PostParams::default(), pod).await {
        Ok(_) => Ok(()),
        // Created in between by someone else: checked once it runs.
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

/// The most of a receiver's answer (`status`, `manifest`, reports: JSON) held in memory:
/// the size of the largest sync header the store takes, which the manifest of a tree of a
/// million files fits in. A pod that says more is not sykli's receiver.
pub const EXEC_OUTPUT_MAX: u64 = 256 << 20;
/// How much of an exec's stderr is kept for its error message (the rest is read, unkept).
const EXEC_STDERR_KEPT: usize = 64 << 10;
/// The largest sync-back archive, as it arrives (compressed): it is spooled to an unnamed
/// temporary file to be checked whole before anything is written, so this bounds the
/// disk that takes, never memory. Outputs larger than this belong on the artifact claim.
pub const SYNC_BACK_MAX_BYTES: u64 = 4 << 30;

/// Runs `sykli-sync` in the receiver with `args`, feeding `stdin` (chunks) when given;
/// returns its stdout, at most [`EXEC_OUTPUT_MAX`] bytes. A non-zero exit is an error
/// carrying its one-line message.
pub async fn exec(
    cluster: &Cluster,
    r: &Receiver,
    args: &[&str],
    stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    exec_into(cluster, r, args, stdin, &mut out, EXEC_OUTPUT_MAX, |what| {
        format!(
            "{what} answered more than {EXEC_OUTPUT_MAX} bytes, more than any answer of sykli-sync: \
             nothing more was read (is the pod sykli's receiver?)"
        )
    })
    .await?;
    Ok(out)
}

/// [`exec`] with its stdout streamed into `sink`, at most `max` bytes: a byte more stops
/// the exec at once with the error `too_much(what)` (`what` names the command and the pod).
/// Returns the bytes written.
async fn exec_into<W: tokio::io::AsyncWrite + Unpin>(
    cluster: &Cluster,
    r: &Receiver,
    args: &[&str],
    stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    sink: &mut W,
    max: u64,
    too_much: impl FnOnce(&str) -> String,
) -> Result<u64> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &r.namespace);
    let argv: Vec<String> = std::iter::once(SYNC_BIN)
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
    // Over the limit, reading stops there and then: the pod, which would block writing
    // the rest (and never end), is left behind with the exec's connection.
    let read_out = async {
        let n = tokio::io::copy(&mut (&mut out).take(max.saturating_add(1)), sink).await;
        match n {
            Ok(n) if n > max => Err(Error::cluster("sync_failed", too_much(&what))),
            Ok(n) => Ok(sink.flush().await.map(|()| n)),
            Err(e) => Ok(Err(e)),
        }
    };
    let read_err = async { Ok(read_head(&mut err, EXEC_STDERR_KEPT).await) };
    let (stdout, stderr) = tokio::try_join!(read_out, read_err)?;
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
    let stdout =
        stdout.map_err(|e| Error::cluster("api", format!("{what}: reading its output: {e}")))?;
    // Exec reaches a pod by name: the one that answered must still be the one checked.
    let now = retry(&format!("reading pod {}/{}", r.namespace, r.pod), || {
        pods.get_opt(&r.pod)
    })
    .await?
    .and_then(|p| p.metadata.uid);
    if now != r.uid {
        return Err(Error::cluster(
            "conflict",
            format!(
                "{what}: the pod was replaced while it ran (uid {}, now {}); its answer is not used: find out who deleted and created pod {}/{}",
                r.uid.as_deref().unwrap_or("none"),
                now.as_deref().unwrap_or("none"),
                r.namespace,
                r.pod
            ),
        ));
    }
    Ok(stdout)
}

/// Reads `r` to its end, keeping its first `keep` bytes.
async fn read_head(r: &mut (impl AsyncRead + Unpin), keep: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = keep.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
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
/// hardened extractor (nothing lands outside `dest`). The archive may be at most
/// [`SYNC_BACK_MAX_BYTES`].
pub async fn sync_back(
    cluster: &Cluster,
    r: &Receiver,
    job: &str,
    paths: &[String],
    dest: &std::path::Path,
) -> Result<sykli_sync::Report> {
    sync_back_limited(cluster, r, job, paths, dest, SYNC_BACK_MAX_BYTES).await
}

/// [`sync_back`] taking an archive of at most `max_bytes`.
///
/// The archive is spooled, as it arrives, into an unnamed temporary file in `dest` (on
/// its filesystem, where the outputs go anyway; private, and gone with its handle), then
/// checked whole, then extracted: a receiver never gets more than `max_bytes` of disk,
/// nor any memory, and a hostile one gets nothing written.
pub async fn sync_back_limited(
    cluster: &Cluster,
    r: &Receiver,
    job: &str,
    paths: &[String],
    dest: &std::path::Path,
    max_bytes: u64,
) -> Result<sykli_sync::Report> {
    let root = format!("{}/runs/{job}", store());
    let mut args = vec!["pack", "--root", root.as_str()];
    args.extend(paths.iter().map(String::as_str));
    let dest = dest.to_path_buf();
    let spool_dir = dest.clone();
    let spool = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&spool_dir).and_then(|()| tempfile::tempfile_in(&spool_dir))
    })
    .await
    .map_err(|e| Error::cluster("api", format!("spooling outputs: {e}")))?
    .map_err(|e| Error::Io {
        path: dest.clone(),
        source: e,
    })?;
    let mut spool = tokio::fs::File::from_std(spool);
    exec_into(cluster, r, &args, None, &mut spool, max_bytes, |what| {
        format!(
            "the outputs of {job}: {what} sent more than {max_bytes} bytes, the most a sync back takes: \
             nothing was written (declare smaller outputs, or pass large ones as artifacts)"
        )
    })
    .await?;
    let spool = spool.into_std().await;
    let (outputs, job_name) = (paths.to_vec(), job.to_string());
    tokio::task::spawn_blocking(move || {
        let from_start = |mut f: &std::fs::File| {
            use std::io::Seek;
            f.rewind().map_err(|e| {
                Error::cluster(
                    "sync_failed",
                    format!("the outputs of {job_name}: rereading the archive: {e}"),
                )
            })
        };
        let read = |f| std::io::BufReader::with_capacity(1 << 20, f);
        // The whole archive first: a hostile receiver gets nothing written.
        from_start(&spool)?;
        super::outputs::check_archive(read(&spool), &outputs, &job_name)?;
        from_start(&spool)?;
        sykli_sync::extract_hardened(read(&spool), &dest, sykli_sync::Limits::default())
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
    run: &str,
    from: &str,
    to: &str,
) -> Result<CopyReport> {
    check_run_id(run)?;
    let on_claim = |path: &str| -> Result<String> {
        let rel = artifact_rel(path)?;
        // `/artifacts/<task>/…` is the task's own directory of this run.
        let (task, rest) = rel.split_once('/').unwrap_or((rel, ""));
        let dir = crate::manifest::artifacts::task_dir(run, task);
        Ok(if rest.is_empty() {
            dir
        } else {
            format!("{dir}/{rest}")
        })
    };
    let (from_rel, to_rel) = (on_claim(from)?, on_claim(to)?);
    let (from_rel, to_rel) = (from_rel.as_str(), to_rel.as_str());
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

/// A run id names one directory of the artifact claim: one path component.
pub fn check_run_id(run: &str) -> Result<()> {
    let one_component = !run.is_empty()
        && !run.contains('/')
        && sykli_sync::check_path(run.as_bytes()).is_ok()
        && run != "."
        && run != "..";
    if one_component {
        Ok(())
    } else {
        Err(Error::cluster(
            "invalid_option",
            format!(
                "run id {run:?} cannot name the run's directory on the artifact claim: give one path component"
            ),
        ))
    }
}

/// `/artifacts/<path>` → `<path>`, refusing anything else (the receiver checks it again),
/// and the runs' collected outputs: only their own Jobs write those.
pub fn artifact_rel(path: &str) -> Result<&str> {
    let rel = path
        .strip_prefix(ARTIFACTS_MOUNT)
        .and_then(|p| p.strip_prefix('/'))
        .filter(|p| sykli_sync::check_path(p.as_bytes()).is_ok())
        .ok_or_else(|| {
            Error::cluster(
                "invalid_option",
                format!(
                    "artifact path {path:?} is not below {ARTIFACTS_MOUNT}/ (relative, without \"..\")"
                ),
            )
        })?;
    Ok(rel)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn want() -> Pod {
        receiver_pod(
            "sykli-sync-src-0123456789",
            "src",
            "ghcr.io/sykli/sync:0.1.0",
        )
    }

    /// `want()` as the API server, its admission and the scheduler leave it.
    fn as_served() -> Value {
        let mut v = serde_json::to_value(want()).unwrap();
        let spec = &mut v["spec"];
        for (k, val) in [
            ("serviceAccountName", json!("default")),
            ("serviceAccount", json!("default")),
            ("dnsPolicy", json!("ClusterFirst")),
            ("schedulerName", json!("default-scheduler")),
            ("terminationGracePeriodSeconds", json!(30)),
            ("priority", json!(0)),
            ("preemptionPolicy", json!("PreemptLowerPriority")),
            ("nodeName", json!("n1")),
            (
                "tolerations",
                json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                        "effect": "NoExecute", "tolerationSeconds": 300}]),
            ),
            ("initContainers", json!([])),
        ] {
            spec[k] = val;
        }
        let c = &mut spec["containers"][0];
        c["terminationMessagePath"] = json!("/dev/termination-log");
        c["terminationMessagePolicy"] = json!("File");
        c["imagePullPolicy"] = json!("IfNotPresent");
        c["resources"] = json!({"limits": {"cpu": "1"}});
        c["env"] = json!([]);
        v
    }

    fn mismatch(v: Value) -> Option<String> {
        receiver_mismatch(&serde_json::from_value(v).unwrap(), &want())
    }

    #[test]
    fn sykli_s_own_receiver_as_the_server_returns_it_is_accepted() {
        assert_eq!(mismatch(as_served()), None);
    }

    #[test]
    fn any_other_spec_is_named_by_the_field_that_differs() {
        type Change = fn(&mut Value);
        let cases: Vec<(&str, Change)> = vec![
            ("spec.containers[0].env", |s| {
                s["containers"][0]["env"] = json!([{"name": "PATH", "value": "/evil"}])
            }),
            ("spec.containers[0].envFrom", |s| {
                s["containers"][0]["envFrom"] = json!([{"secretRef": {"name": "x"}}])
            }),
            ("spec.containers[0].command[0]", |s| {
                s["containers"][0]["command"] = json!(["sykli-sync", "idle"])
            }),
            ("spec.containers[0].args", |s| {
                s["containers"][0]["args"] = json!(["--evil"])
            }),
            ("spec.containers[0].lifecycle", |s| {
                s["containers"][0]["lifecycle"] =
                    json!({"postStart": {"exec": {"command": ["/bin/sh"]}}})
            }),
            ("spec.containers[0].livenessProbe", |s| {
                s["containers"][0]["livenessProbe"] = json!({"exec": {"command": ["/x"]}})
            }),
            ("spec.containers[0].securityContext.runAsNonRoot", |s| {
                s["containers"][0]["securityContext"]["runAsNonRoot"] = json!(false)
            }),
            ("spec.containers[0].volumeMounts[0].subPath", |s| {
                s["containers"][0]["volumeMounts"][0]["subPath"] = json!("other")
            }),
            ("spec.containers", |s| {
                let second = s["containers"][0].clone();
                s["containers"].as_array_mut().unwrap().push(second)
            }),
            ("spec.initContainers", |s| {
                s["initContainers"] = json!([{"name": "i", "image": "evil"}])
            }),
            ("spec.ephemeralContainers", |s| {
                s["ephemeralContainers"] = json!([{"name": "e", "image": "evil"}])
            }),
            ("spec.volumes", |s| {
                s["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "h", "hostPath": {"path": "/"}}))
            }),
            ("spec.volumes[0].persistentVolumeClaim.claimName", |s| {
                s["volumes"][0]["persistentVolumeClaim"]["claimName"] = json!("other")
            }),
            ("spec.serviceAccountName", |s| {
                s["serviceAccountName"] = json!("deployer")
            }),
            ("spec.automountServiceAccountToken", |s| {
                s["automountServiceAccountToken"] = json!(true)
            }),
            ("spec.hostPID", |s| s["hostPID"] = json!(true)),
            ("spec.securityContext.fsGroup", |s| {
                s["securityContext"]["fsGroup"] = json!(0)
            }),
            ("spec.restartPolicy", |s| {
                s["restartPolicy"] = json!("Never")
            }),
            (IMAGE_FIELD, |s| {
                s["containers"][0]["image"] = json!("ghcr.io/sykli/sync:0.0.9")
            }),
        ];
        for (field, change) in cases {
            let mut v = as_served();
            change(&mut v["spec"]);
            assert_eq!(mismatch(v).as_deref(), Some(field));
        }
    }

    #[test]
    fn the_receiver_runs_the_helper_by_its_absolute_path() {
        let spec = want().spec.unwrap();
        let command = spec.containers[0].command.clone().unwrap();
        assert_eq!(command, [SYNC_BIN, "idle"]);
        assert!(SYNC_BIN.starts_with('/'));
        assert!(spec.containers[0].env.is_none() && spec.init_containers.is_none());
    }
}
