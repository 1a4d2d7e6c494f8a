//! Submission across the NIF: one tokio runtime for all Kubernetes work; a NIF starts a run
//! and returns at once, the run sends `{tag, event}` messages to the caller, and the handle
//! it returns cancels the run (deleting the Job) when cancelled or garbage-collected.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use once_cell::sync::Lazy;
use rustler::{Encoder, Env, LocalPid, NifMap, OwnedEnv, ResourceArc, Term};
use serde::Deserialize;
use sykli_core::cluster::run::{self, Event, Outcome};
use sykli_core::cluster::{Cluster, ConnectOptions};
use sykli_core::source::s3::ArchiveSigning;

use super::NifError;

static RUNTIME: Lazy<Result<tokio::runtime::Runtime, String>> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sykli-k8s")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
});

pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime, NifError> {
    RUNTIME.as_ref().map_err(|e| {
        NifError::from(sykli_core::Error::cluster(
            "api",
            format!("cannot start the runtime: {e}"),
        ))
    })
}

mod atoms {
    rustler::atoms! { phase, log, done, ok, error, cancelled }
}

pub struct ClusterRes {
    // The client holds futures that are not unwind-safe; a panic in a NIF is caught by
    // rustler before it reaches the client, which is never used across it.
    pub(crate) cluster: std::panic::AssertUnwindSafe<Arc<Cluster>>,
}

#[rustler::resource_impl]
impl rustler::Resource for ClusterRes {}

pub struct RunRes {
    cancel: tokio::sync::watch::Sender<bool>,
}

#[rustler::resource_impl]
impl rustler::Resource for RunRes {}

impl Drop for RunRes {
    // A handle nobody holds any more (its process died) cancels the run: no Job is left.
    fn drop(&mut self) {
        let _ = self.cancel.send(true);
    }
}

/// Connects (reads kubeconfig, builds the client). File I/O and exec plugins: dirty I/O.
#[rustler::nif(schedule = "DirtyIo")]
fn k8s_connect(options_json: String) -> Result<ResourceArc<ClusterRes>, NifError> {
    let opts: ConnectOptions =
        sykli_core::pipeline::from_json(options_json.as_bytes(), "connect options")?;
    let cluster = block_on_call(Duration::from_secs(60), Cluster::connect(&opts))?;
    Ok(ResourceArc::new(ClusterRes {
        cluster: std::panic::AssertUnwindSafe(Arc::new(cluster)),
    }))
}

#[derive(NifMap)]
struct ClusterInfo {
    namespace: String,
    server: String,
    open_watchers: usize,
}

#[rustler::nif]
fn k8s_cluster_info(cluster: ResourceArc<ClusterRes>) -> ClusterInfo {
    ClusterInfo {
        namespace: cluster.cluster.namespace.clone(),
        server: cluster.cluster.server.clone(),
        open_watchers: cluster.cluster.open_watchers(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunJson {
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    keep_failed: bool,
    #[serde(default)]
    create_namespace: bool,
    #[serde(default)]
    unschedulable_grace_seconds: Option<u64>,
    /// The S3 strategy: what signs this Job's URL of the published archive.
    #[serde(default)]
    s3_source: Option<S3SourceJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct S3SourceJson {
    s3: sykli_core::s3::S3Options,
    key: String,
    /// The AWS variables and HOME as the VM sees them.
    #[serde(default)]
    env: Option<std::collections::BTreeMap<String, String>>,
}

/// Starts running a Job (with the S3 strategy, its source URL signed now, into a Secret the
/// Job owns); returns a handle at once. Messages to the caller:
/// `{tag, {:phase, phase, message}}`, `{tag, {:log, container, line}}`, then exactly one
/// `{tag, {:done, {:ok, outcome} | {:error, {kind, message, outcome}}}}`.
#[rustler::nif]
fn k8s_run_job<'a>(
    env: Env<'a>,
    cluster: ResourceArc<ClusterRes>,
    job_json: String,
    options_json: String,
    tag: Term<'a>,
) -> Result<ResourceArc<RunRes>, NifError> {
    let job: Job = sykli_core::pipeline::from_json(job_json.as_bytes(), "job")?;
    let o: RunJson = sykli_core::pipeline::from_json(options_json.as_bytes(), "run options")?;
    let opts = run::RunOptions {
        timeout: o.timeout_seconds.map(Duration::from_secs),
        keep_failed: o.keep_failed,
        create_namespace: o.create_namespace,
        unschedulable_grace: o
            .unschedulable_grace_seconds
            .map(Duration::from_secs)
            .unwrap_or(run::RunOptions::default().unschedulable_grace),
        source_url: o.s3_source.map(|s| ArchiveSigning {
            s3: s.s3,
            key: s.key,
            env: s.env,
        }),
    };
    let rt = runtime()?;
    let pid = env.pid();
    let tag = tag.to_binary().as_slice().to_vec();
    let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let cluster = Arc::clone(&cluster.cluster);
    rt.spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let run = run::run_job(cluster, job, opts, tx, cancel_rx);
        let forward = async {
            while let Some(event) = rx.recv().await {
                send(&pid, &tag, |env| match event {
                    Event::Phase { phase: p, message } => (
                        atoms::phase(),
                        rustler::Atom::from_str(env, p.as_str()).ok(),
                        message,
                    )
                        .encode(env),
                    Event::Log { container, line } => (atoms::log(), container, line).encode(env),
                });
            }
        };
        let (result, ()) = tokio::join!(run, forward);
        send(&pid, &tag, |env| {
            (atoms::done(), done(env, result)).encode(env)
        });
    });
    Ok(ResourceArc::new(RunRes { cancel }))
}

#[rustler::nif]
fn k8s_cancel(run: ResourceArc<RunRes>) -> rustler::Atom {
    let _ = run.cancel.send(true);
    atoms::ok()
}

pub(crate) fn send(pid: &LocalPid, tag: &[u8], message: impl for<'e> FnOnce(Env<'e>) -> Term<'e>) {
    let mut env = OwnedEnv::new();
    let _ = env.send_and_clear(pid, |env| {
        let tag = env
            .binary_to_term(tag)
            .map(|(t, _)| t)
            .unwrap_or_else(|| atoms::error().encode(env));
        (tag, message(env)).encode(env)
    });
}

/// Spawns `work` on the runtime; its result reaches the calling process as one
/// `{tag, {:done, {:ok, value} | {:error, {kind, message}}}}` message. Returns at once.
pub(crate) fn spawn_answer<T, F>(env: Env, tag: Term, work: F) -> Result<rustler::Atom, NifError>
where
    T: Encoder + Send + 'static,
    F: std::future::Future<Output = sykli_core::Result<T>> + Send + 'static,
{
    let rt = runtime()?;
    let pid = env.pid();
    let tag = tag.to_binary().as_slice().to_vec();
    rt.spawn(async move {
        let result = work.await;
        send(&pid, &tag, |env| {
            let done = rustler::Atom::from_str(env, "done").unwrap_or_else(|_| atoms::error());
            match result {
                Ok(v) => (done, (atoms::ok(), v)).encode(env),
                Err(e) => (done, error_result(env, &e)).encode(env),
            }
        });
    });
    Ok(atoms::ok())
}

#[derive(NifMap)]
struct OutcomeEx {
    job: String,
    namespace: String,
    pod: Option<String>,
    exit_code: Option<i32>,
    checked_out: Option<String>,
    kept: bool,
}

/// `{:error, {kind, message}}` for an error of a background operation.
pub(crate) fn error_result<'e>(env: Env<'e>, e: &sykli_core::Error) -> Term<'e> {
    (
        atoms::error(),
        super::error_tuple(env, e.kind(), &e.to_string()),
    )
        .encode(env)
}

fn done<'e>(env: Env<'e>, result: sykli_core::Result<Outcome>) -> Term<'e> {
    match result {
        Ok(o) => {
            let ex = OutcomeEx {
                job: o.job,
                namespace: o.namespace,
                pod: o.pod,
                exit_code: o.exit_code,
                checked_out: o.checked_out,
                kept: o.kept,
            };
            match o.failure {
                None => (atoms::ok(), ex).encode(env),
                Some((kind, message)) => {
                    let kind =
                        rustler::Atom::from_str(env, kind).unwrap_or_else(|_| atoms::error());
                    (atoms::error(), (kind, message, ex)).encode(env)
                }
            }
        }
        Err(e) => {
            let kind = rustler::Atom::from_str(env, e.kind()).unwrap_or_else(|_| atoms::error());
            let empty: std::collections::HashMap<String, String> = std::collections::HashMap::new();
            (atoms::error(), (kind, e.to_string(), empty)).encode(env)
        }
    }
}

/// Runs one short API call to completion on the runtime, from a dirty I/O scheduler,
/// bounded by `limit`.
fn block_on_call<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = sykli_core::Result<T>>,
) -> Result<T, NifError> {
    let rt = runtime()?;
    rt.block_on(async {
        tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
            Err(sykli_core::Error::cluster(
                "unreachable",
                format!("no answer within {}s", limit.as_secs()),
            ))
        })
    })
    .map_err(NifError::from)
}

/// The value of a Secret's key (for the Target's resolve_secret).
#[rustler::nif(schedule = "DirtyIo")]
fn k8s_read_secret(
    cluster: ResourceArc<ClusterRes>,
    namespace: String,
    name: String,
    key: String,
) -> Result<String, NifError> {
    let c = Arc::clone(&cluster.cluster);
    block_on_call(Duration::from_secs(120), async move {
        sykli_core::cluster::objects::read_secret(&c.client, &namespace, &name, &key).await
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeJson {
    name: String,
    size: String,
    #[serde(default)]
    storage_class: Option<String>,
    #[serde(default)]
    access_mode: Option<String>,
}

/// Creates a PersistentVolumeClaim unless it exists (for the Target's create_volume).
#[rustler::nif(schedule = "DirtyIo")]
fn k8s_create_volume(
    cluster: ResourceArc<ClusterRes>,
    namespace: String,
    volume_json: String,
) -> Result<rustler::Atom, NifError> {
    let v: VolumeJson = sykli_core::pipeline::from_json(volume_json.as_bytes(), "volume")?;
    let req = sykli_core::cluster::objects::VolumeRequest {
        name: v.name,
        size: v.size,
        storage_class: v.storage_class,
        access_mode: v.access_mode,
    };
    let c = Arc::clone(&cluster.cluster);
    block_on_call(Duration::from_secs(120), async move {
        sykli_core::cluster::objects::create_pvc(&c.client, &namespace, &req).await
    })?;
    Ok(atoms::ok())
}

/// Makes sure the run's namespace exists, creating it when `create`; an error names the
/// namespace and how to have it created or choose another.
#[rustler::nif(schedule = "DirtyIo")]
fn k8s_ensure_namespace(
    cluster: ResourceArc<ClusterRes>,
    namespace: String,
    create: bool,
) -> Result<rustler::Atom, NifError> {
    let mode = if create {
        sykli_core::cluster::preflight::MissingNamespace::Create
    } else {
        sykli_core::cluster::preflight::MissingNamespace::Fail
    };
    let c = Arc::clone(&cluster.cluster);
    block_on_call(Duration::from_secs(120), async move {
        c.ensure_namespace(&namespace, mode).await
    })?;
    Ok(atoms::ok())
}

/// What would stop these Jobs (a JSON list) from starting: missing namespaces, objects and
/// keys, one line each. Creates nothing.
#[rustler::nif(schedule = "DirtyIo")]
fn k8s_check_jobs(
    cluster: ResourceArc<ClusterRes>,
    jobs_json: String,
    create_namespace: bool,
) -> Result<Vec<String>, NifError> {
    let jobs: Vec<Job> = sykli_core::pipeline::from_json(jobs_json.as_bytes(), "jobs")?;
    let mode = if create_namespace {
        sykli_core::cluster::preflight::MissingNamespace::Allow
    } else {
        sykli_core::cluster::preflight::MissingNamespace::Fail
    };
    let c = Arc::clone(&cluster.cluster);
    block_on_call(Duration::from_secs(120), async move {
        sykli_core::cluster::preflight::check_jobs(&c.client, &jobs, mode).await
    })
}
