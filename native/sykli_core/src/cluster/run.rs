//! One task on the cluster: preflight, create (idempotently), watch until it is decided,
//! stream its logs live, fail fast with a one-line reason, and delete it however it ends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncBufReadExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, LogParams, PostParams};
use tokio::sync::mpsc::UnboundedSender;

use super::watch::JobView;
use super::{objects, preflight, retry, Cluster};
use crate::error::{Error, Result};
use crate::manifest::{RUN_LABEL, TASK_CONTAINER};
use crate::source::s3::{self, ArchiveSigning};

pub const CLONE_CONTAINER: &str = "sykli-clone";

/// How long a failure may wait for the other watch (Job or Pod) to catch up.
const SETTLE: Duration = Duration::from_secs(2);

/// A task failure seen on one side only: the Job failed but its pod's exit is not known
/// yet, or the pod failed but the Job has no condition yet (it may say DeadlineExceeded).
fn needs_settling(
    view: &JobView,
    exit_code: Option<i32>,
    failure: &Option<(&'static str, String)>,
) -> bool {
    let Some((kind, _)) = failure else {
        return false;
    };
    if *kind != "task_failed" {
        return false;
    }
    let job_failed = view
        .job
        .as_ref()
        .and_then(|j| j.status.as_ref()?.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Failed" && c.status == "True"));
    exit_code.is_none() || !job_failed
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Client-side deadline; default: the Job's activeDeadlineSeconds plus a minute.
    pub timeout: Option<Duration>,
    /// Keep a failed Job (and its pod) for debugging instead of deleting it.
    pub keep_failed: bool,
    pub create_namespace: bool,
    /// How long a pod may be unschedulable before the task fails.
    pub unschedulable_grace: Duration,
    /// The S3 strategy: signs this Job's URL of the source archive at submission, for the
    /// task's own timeout plus a margin. The URL goes into the Job's own Secret (created
    /// right before the Job, owned by it), never into the manifest.
    pub source_url: Option<ArchiveSigning>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: None,
            keep_failed: false,
            create_namespace: false,
            unschedulable_grace: Duration::from_secs(30),
            source_url: None,
        }
    }
}

/// The container name of lines sykli itself adds to a task's log (warnings).
pub const SYKLI_LOG: &str = "sykli";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Preflight,
    Creating,
    Pending,
    Cloning,
    Running,
    Cleaning,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Creating => "creating",
            Phase::Pending => "pending",
            Phase::Cloning => "cloning",
            Phase::Running => "running",
            Phase::Cleaning => "cleaning",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    Phase { phase: Phase, message: String },
    Log { container: String, line: String },
}

/// How a task ended once its Job existed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub job: String,
    pub namespace: String,
    pub pod: Option<String>,
    pub exit_code: Option<i32>,
    /// What the clone reported checking out (its termination message).
    pub checked_out: Option<String>,
    /// Why it failed: (kind, one-line reason). None when it succeeded.
    pub failure: Option<(&'static str, String)>,
    /// The failed Job was kept (keep_failed).
    pub kept: bool,
}

enum Verdict {
    Progress(Phase, String),
    Unschedulable(String),
    Done {
        exit_code: Option<i32>,
        failure: Option<(&'static str, String)>,
    },
}

/// Runs `job` to its end. Errors are for what prevented running it (preflight, API); a task
/// that ran and failed is an `Outcome` with a failure.
pub async fn run_job(
    cluster: Arc<Cluster>,
    job: Job,
    opts: RunOptions,
    events: UnboundedSender<Event>,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<Outcome> {
    let emit = |phase: Phase, message: String| {
        let _ = events.send(Event::Phase { phase, message });
    };
    let name = job.metadata.name.clone().unwrap_or_default();
    let namespace = job
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.namespace.clone());
    let run = job
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(RUN_LABEL))
        .cloned()
        .ok_or_else(|| Error::cluster("invalid", format!("Job {name} has no {RUN_LABEL} label")))?;
    let mut job = job;
    job.metadata.namespace = Some(namespace.clone());

    emit(
        Phase::Preflight,
        format!("checking namespace {namespace} and what Job {name} references"),
    );
    cluster
        .ensure_namespace(
            &namespace,
            if opts.create_namespace {
                preflight::MissingNamespace::Create
            } else {
                preflight::MissingNamespace::Fail
            },
        )
        .await?;
    preflight::check_needs(&cluster.client, &namespace, &preflight::needs(&job)).await?;

    let url = sign_source_url(&job, &namespace, &opts, &events).await?;

    // Subscribe before creating, so no event of this Job is missed.
    let watcher = cluster.watcher(&namespace, &run);
    let mut subscription = watcher.subscribe(&name);
    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &namespace);
    let secret = s3::url_secret_name(&name);
    if let Some(url) = &url {
        emit(
            Phase::Creating,
            format!("creating Secret {namespace}/{secret} (the source URL)"),
        );
        create_url_secret(&secrets, &job, &secret, url, &run).await?;
    }
    emit(Phase::Creating, format!("creating Job {namespace}/{name}"));
    let created = match create(&jobs, &job, &run).await {
        Ok(created) => created,
        Err(e) => {
            // No Job will own the Secret: the URL goes now, not with a Job.
            if url.is_some() {
                let _ = objects::delete_if_there(&secrets, "Secret", &secret).await;
            }
            return Err(e);
        }
    };
    if url.is_some() {
        // Owned by the Job, the Secret goes with it: deleted here, by its TTL, or by hand.
        if let Err(e) = objects::own_by_job(&secrets, &secret, &created).await {
            let _ = objects::delete_if_there(&jobs, "Job", &name).await;
            let _ = objects::delete_if_there(&secrets, "Secret", &secret).await;
            return Err(e);
        }
    }

    let started = Instant::now();
    let deadline = opts.timeout.or_else(|| {
        job.spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64) + CLIENT_MARGIN)
    });
    let mut followed: HashSet<(String, String)> = HashSet::new();
    let mut followers = Vec::new();
    let mut last_phase: Option<Phase> = None;
    let mut unschedulable_since: Option<Instant> = None;
    let mut settling_since: Option<Instant> = None;
    let mut pod_name = None;
    let job_uid = created.metadata.uid.clone();
    // Neither Job is read again: a run of 1,000 tasks would hold 2,000 of them to its end.
    let timeout_message = client_timed_out(&opts, &job);
    drop(created);
    drop(job);
    let mut refusal_checked: Option<Instant> = None;

    let (exit_code, failure) = loop {
        let view = watcher.view(&name);
        // A Job without a pod a while after its creation: the job controller may be
        // refused the pod (admission), which only its events say; its deadline would
        // otherwise be the verdict.
        let podless = view.job.is_some() && view.pods.is_empty();
        if podless
            && started.elapsed() >= REFUSAL_FIRST_CHECK
            && refusal_checked.is_none_or(|t| t.elapsed() >= REFUSAL_RECHECK)
        {
            refusal_checked = Some(Instant::now());
            let why = watcher
                .pod_refusal(&name, job_uid.as_deref(), started, REFUSAL_RECHECK)
                .await;
            if let Some(why) = why {
                break (
                    None,
                    Some(("pod_rejected", refused_message(&namespace, &name, &why))),
                );
            }
        }
        if let Some(pod) = view.pods.last() {
            pod_name = pod.metadata.name.clone();
            for (container, ready) in loggable(pod) {
                let key = (pod_name.clone().unwrap_or_default(), container.clone());
                if ready && followed.insert(key.clone()) {
                    followers.push(tokio::spawn(follow(
                        pods.clone(),
                        key.0,
                        container,
                        events.clone(),
                    )));
                }
            }
        }
        match diagnose(&view) {
            // The Job's and the Pod's watches arrive in either order: before calling a
            // failure, let both settle briefly, so the exit code and a deadline are not missed.
            Verdict::Done { exit_code, failure } if needs_settling(&view, exit_code, &failure) => {
                let since = *settling_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= SETTLE {
                    break (exit_code, failure);
                }
            }
            Verdict::Done { exit_code, failure } => {
                // Out of time without ever having a pod: why it had none is the cause.
                if podless {
                    // The last word: a list made now.
                    let why = watcher
                        .pod_refusal(&name, job_uid.as_deref(), started, Duration::ZERO)
                        .await;
                    if let Some(why) = why {
                        break (
                            None,
                            Some(("pod_rejected", refused_message(&namespace, &name, &why))),
                        );
                    }
                }
                break (exit_code, failure);
            }
            Verdict::Unschedulable(msg) => {
                let since = *unschedulable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= opts.unschedulable_grace {
                    break (
                        None,
                        Some(("unschedulable", format!("pod cannot be scheduled: {msg}"))),
                    );
                }
                if last_phase != Some(Phase::Pending) {
                    emit(Phase::Pending, format!("unschedulable so far: {msg}"));
                    last_phase = Some(Phase::Pending);
                }
            }
            Verdict::Progress(phase, msg) => {
                unschedulable_since = None;
                if last_phase != Some(phase) {
                    emit(phase, msg);
                    last_phase = Some(phase);
                }
            }
        }
        let until_deadline = deadline.map(|d| d.saturating_sub(started.elapsed()));
        if until_deadline == Some(Duration::ZERO) {
            break (None, Some(("timeout", timeout_message)));
        }
        // Re-check at least every few seconds (grace periods) even when nothing changes.
        let max_tick = if settling_since.is_some() {
            SETTLE / 4
        } else {
            Duration::from_secs(5)
        };
        let tick = until_deadline.unwrap_or(max_tick).min(max_tick);
        tokio::select! {
            _ = subscription.changes.changed() => {}
            r = cancel.changed() => {
                if r.is_err() || *cancel.borrow() {
                    break (None, Some(("cancelled", "cancelled: the Job was deleted".to_string())));
                }
            }
            _ = tokio::time::sleep(tick) => {}
        }
    };

    // The watch may have missed the pod's last status (dropped streams): ask the API.
    let (exit_code, failure) = match (&exit_code, &failure) {
        (None, Some(("task_failed", _))) => confirm_failure(&pods, &watcher.view(&name), &name)
            .await
            .unwrap_or((exit_code, failure)),
        _ => (exit_code, failure),
    };

    // Let the log streams of finished containers drain, but never wait long for them.
    if failure
        .as_ref()
        .is_none_or(|(k, _)| *k != "cancelled" && *k != "timeout")
    {
        let drain = futures::future::join_all(followers.iter_mut());
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    }
    for f in &followers {
        f.abort();
    }
    // A watch that lagged (or was dropped) may never have shown a container running: fetch
    // whatever log was not streamed, so a task's output is never lost.
    let streamed_everything = watcher.view(&name).pods.last().is_some_and(|p| {
        let pod = p.metadata.name.clone().unwrap_or_default();
        let finished = statuses(p, false).any(|st| {
            st.name == TASK_CONTAINER && st.state.as_ref().is_some_and(|s| s.terminated.is_some())
        });
        finished
            && loggable(p)
                .iter()
                .all(|(c, ready)| *ready && followed.contains(&(pod.clone(), c.clone())))
    });
    if !streamed_everything && failure.as_ref().is_none_or(|(k, _)| *k != "cancelled") {
        catch_up_logs(&pods, &name, &followed, &events).await;
    }

    let view = watcher.view(&name);
    let checked_out = view.pods.last().and_then(|p| {
        statuses(p, true)
            .find(|s| s.name == CLONE_CONTAINER)
            .and_then(|s| s.state.as_ref()?.terminated.as_ref()?.message.clone())
            .map(|m| m.trim().to_string())
    });
    let kept = failure.is_some()
        && opts.keep_failed
        && failure.as_ref().is_some_and(|(k, _)| *k != "cancelled");
    if !kept {
        emit(Phase::Cleaning, format!("deleting Job {namespace}/{name}"));
        cluster.delete_job(&namespace, &run, &name).await?;
    }
    Ok(Outcome {
        job: name,
        namespace,
        pod: pod_name,
        exit_code,
        checked_out,
        failure,
        kept,
    })
}

/// The client-side deadline's verdict: the one asked for, or the task's own timeout plus
/// the margin the cluster had to report it.
fn client_timed_out(opts: &RunOptions, job: &Job) -> String {
    match (opts.timeout, job.spec.as_ref().and_then(|s| s.active_deadline_seconds)) {
        (Some(t), _) => format!(
            "timed out after {} s (the client-side deadline): the Job was deleted",
            t.as_secs()
        ),
        (None, Some(task)) => format!(
            "timed out after {task} s (the task's timeout), and the cluster did not say so within {} s more: the Job was deleted",
            CLIENT_MARGIN.as_secs()
        ),
        (None, None) => "timed out: the Job was deleted".into(),
    }
}

/// How long after a task's own timeout the client gives up on the cluster reporting it.
const CLIENT_MARGIN: Duration = Duration::from_secs(60);

/// The annotation the manifest builder puts the task's exact name in (labels hold only a
/// lossy form of it).
const TASK_NAME_ANNOTATION: &str = "sykli.io/task-name";

/// Creates the Job. A Job of that name already there is ours only when it provably is this
/// task's Job of this run (a create whose answer was lost, then retried): the same run label
/// and the exact task name in its annotation. Anything else is a conflict, never adopted:
/// adopting another task's Job would report that task's result as this one's. Returns the
/// Job as the API has it (its uid owns the Job's Secret).
async fn create(jobs: &Api<Job>, job: &Job, run: &str) -> Result<Job> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let params = PostParams::default();
    match retry(&format!("creating Job {name}"), || {
        jobs.create(&params, job)
    })
    .await
    {
        Ok(created) => Ok(created),
        Err(Error::Cluster {
            kind: "conflict",
            message,
        }) => {
            let existing = retry(&format!("reading Job {name}"), || jobs.get(&name)).await?;
            match adoptable("Job", &existing.metadata, job, run) {
                Ok(()) => Ok(existing),
                Err(why) => Err(Error::cluster("conflict", format!("{message}: {why}"))),
            }
        }
        Err(e) => Err(e),
    }
}

/// Signs the Job's source URL when the Job reads one from its own Secret (the S3 strategy);
/// warnings (credentials that expire sooner) go into the task's log. A Job that reads the
/// Secret with nothing to sign its URL would wait for it forever: an error before anything
/// is created.
async fn sign_source_url(
    job: &Job,
    namespace: &str,
    opts: &RunOptions,
    events: &UnboundedSender<Event>,
) -> Result<Option<String>> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let secret = s3::url_secret_name(&name);
    let reads_url = reads_secret(job, &secret);
    let signing = match (&opts.source_url, reads_url) {
        (_, false) => return Ok(None),
        (Some(signing), true) => signing.clone(),
        (None, true) => {
            return Err(Error::cluster(
                "invalid",
                format!(
                    "Job {namespace}/{name} reads its source URL from Secret {secret}, but the run has no published archive to sign it for: publish the source first (SykliK8s.Target.publish_source/2)"
                ),
            ))
        }
    };
    let deadline = job.spec.as_ref().and_then(|s| s.active_deadline_seconds);
    let signed = tokio::task::spawn_blocking(move || signing.presign(deadline))
        .await
        .map_err(|e| Error::cluster("api", format!("signing the source URL: {e}")))??;
    for w in &signed.warnings {
        let _ = events.send(Event::Log {
            container: SYKLI_LOG.into(),
            line: format!("warning: {w}"),
        });
    }
    Ok(Some(signed.url))
}

/// Whether a container of `job` reads a key of Secret `name` into its environment.
fn reads_secret(job: &Job, name: &str) -> bool {
    let Some(pod) = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return false;
    };
    pod.init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
        .flat_map(|c| c.env.iter().flatten())
        .filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .any(|r| r.name == name)
}

/// Creates the Job's Secret holding its source URL: immutable, labelled and annotated as the
/// Job is (so a 409 is adopted only for this very task's Secret of this run, as for the Job).
async fn create_url_secret(
    secrets: &Api<Secret>,
    job: &Job,
    name: &str,
    url: &str,
    run: &str,
) -> Result<()> {
    let meta = ObjectMeta {
        name: Some(name.to_string()),
        labels: job.metadata.labels.clone(),
        annotations: job
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get_key_value(TASK_NAME_ANNOTATION))
            .map(|(k, v)| [(k.clone(), v.clone())].into()),
        ..Default::default()
    };
    match objects::create_secret(secrets, meta, s3::URL_SECRET_KEY, url).await {
        Ok(()) => Ok(()),
        Err(Error::Cluster {
            kind: "conflict",
            message,
        }) => {
            let existing = retry(&format!("reading Secret {name}"), || secrets.get(name)).await?;
            adoptable("Secret", &existing.metadata, job, run)
                .map_err(|why| Error::cluster("conflict", format!("{message}: {why}")))
        }
        Err(e) => Err(e),
    }
}

/// Whether `existing` (a `kind` of this Job's task: the Job itself, or its Secret) is this
/// task's own object of this run, created before; else why not, naming the object, whose it
/// is, and what to do.
fn adoptable(
    kind: &str,
    existing: &ObjectMeta,
    job: &Job,
    run: &str,
) -> std::result::Result<(), String> {
    let label = |m: &ObjectMeta, k: &str| m.labels.as_ref()?.get(k).cloned();
    let task_name = |m: &ObjectMeta| m.annotations.as_ref()?.get(TASK_NAME_ANNOTATION).cloned();
    let name = existing.name.clone().unwrap_or_default();
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    let ours = task_name(&job.metadata);
    let (their_run, theirs) = (label(existing, RUN_LABEL), task_name(existing));
    if their_run.as_deref() == Some(run) && ours.is_some() && theirs == ours {
        return Ok(());
    }
    let ours = ours.map_or_else(|| "(unnamed)".to_string(), |t| format!("{t:?}"));
    let owner = match (&theirs, &their_run) {
        (Some(t), Some(r)) => format!("task {t:?} of run {r}"),
        (Some(t), None) => format!("task {t:?} of no sykli run"),
        (None, Some(r)) => {
            format!("no known task (no {TASK_NAME_ANNOTATION} annotation) of run {r}")
        }
        (None, None) => "no sykli task or run".to_string(),
    };
    let fix = format!(
        "kubectl -n {namespace} delete {} {name}",
        kind.to_lowercase()
    );
    Err(if their_run.as_deref() != Some(run) {
        format!(
            "{kind} {namespace}/{name} exists and is not this run's: it belongs to {owner}, not to task {ours} of run {run}; delete it ({fix}) or use another run id"
        )
    } else {
        format!(
            "{kind} {namespace}/{name} of this run belongs to {owner}, not to task {ours}: two tasks got one Job name and it was not adopted; rename one of the tasks (or, if that {kind} is stale, {fix})"
        )
    })
}

/// When a Job without a pod is first asked why, and how often again.
const REFUSAL_FIRST_CHECK: Duration = Duration::from_secs(2);
const REFUSAL_RECHECK: Duration = Duration::from_secs(5);

/// The one line for a pod the cluster refused, with the fix when it is Pod Security.
fn refused_message(namespace: &str, job: &str, why: &str) -> String {
    let why = why.strip_prefix("Error creating: ").unwrap_or(why);
    let fix = if why.contains("violates PodSecurity") {
        format!(
            "; namespace {namespace} enforces that Pod Security profile and the task's own container does not meet it (sykli's containers do): change the task's k8s security_context, or run the task in a namespace whose profile it meets (-n, SYKLI_K8S_NAMESPACE, namespace:)"
        )
    } else {
        String::new()
    };
    format!("the cluster refused the pod of Job {namespace}/{job}: {why}{fix}")
}

/// A failure diagnosed again from the Job's pods as the API has them now.
async fn confirm_failure(
    pods: &Api<Pod>,
    view: &JobView,
    job: &str,
) -> Option<(Option<i32>, Option<(&'static str, String)>)> {
    let list = job_pods(pods, job).await?;
    let fresh = JobView {
        job: view.job.clone(),
        pods: list,
    };
    match diagnose(&fresh) {
        Verdict::Done {
            exit_code: Some(code),
            failure,
        } => Some((Some(code), failure)),
        _ => None,
    }
}

/// The Job's pods as the API has them now, oldest first; None when they cannot be listed.
async fn job_pods(pods: &Api<Pod>, job: &str) -> Option<Vec<Pod>> {
    let params = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    let mut list = retry(&format!("listing the pods of Job {job}"), || {
        pods.list(&params)
    })
    .await
    .ok()?
    .items;
    list.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    Some(list)
}

async fn catch_up_logs(
    pods: &Api<Pod>,
    job: &str,
    followed: &HashSet<(String, String)>,
    events: &UnboundedSender<Event>,
) {
    let Some(list) = job_pods(pods, job).await else {
        return;
    };
    for pod in list {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        for (container, ready) in loggable(&pod) {
            if !ready || followed.contains(&(pod_name.clone(), container.clone())) {
                continue;
            }
            let lp = LogParams {
                container: Some(container.clone()),
                ..LogParams::default()
            };
            let Ok(stream) = retry(
                &format!("reading the log of {pod_name}/{container}"),
                || pods.log_stream(&pod_name, &lp),
            )
            .await
            else {
                continue;
            };
            send_lines(stream, &container, events).await;
        }
    }
}

/// Streams one container's log, line by line, as it is written.
async fn follow(pods: Api<Pod>, pod: String, container: String, events: UnboundedSender<Event>) {
    let params = LogParams {
        container: Some(container.clone()),
        follow: true,
        ..LogParams::default()
    };
    let doing = format!("reading the log of {pod}/{container}");
    let Ok(stream) = retry(&doing, || pods.log_stream(&pod, &params)).await else {
        return;
    };
    send_lines(stream, &container, &events).await;
}

/// The longest log line delivered whole: a pod's line goes into memory, the event and the
/// terminal, so a longer one is cut here and marked ([`truncated_marker`]).
pub const MAX_LOG_LINE: usize = 64 << 10;

/// What ends a line cut at `max` bytes.
pub fn truncated_marker(max: usize) -> String {
    format!("… [line truncated at {max} bytes]")
}

/// Sends each line of `log` as an event of `container`, until the log ends, fails or no
/// one listens.
async fn send_lines(
    log: impl futures::AsyncBufRead + Unpin,
    container: &str,
    events: &UnboundedSender<Event>,
) {
    let mut log = log;
    while let Ok(Some(line)) = read_log_line(&mut log, MAX_LOG_LINE).await {
        let event = Event::Log {
            container: container.to_string(),
            line,
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// The next line of `log` without its `\n` (or `\r\n`), or `None` at its end. A line of
/// more than `max` bytes keeps its first `max` (cut at a character) plus the truncation
/// marker, and the rest of it is read and dropped as it comes: never more than `max` bytes
/// of a line are held, however long it is, newline or not. Invalid UTF-8 is replaced, not
/// an end of the log (futures' `lines()` would stop there, and read any line whole).
pub async fn read_log_line(
    log: &mut (impl futures::AsyncBufRead + Unpin),
    max: usize,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut truncated = false;
    let mut any = false;
    loop {
        let buf = log.fill_buf().await?;
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = max - line.len();
        if chunk.len() > room {
            truncated = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len() + usize::from(newline);
        log.consume_unpin(used);
        if newline {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if truncated {
        // Cut at a character: a sequence split by the limit is dropped, not replaced.
        if let Err(e) = std::str::from_utf8(&line) {
            if e.error_len().is_none() {
                line.truncate(e.valid_up_to());
            }
        }
    } else if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(&line).into_owned();
    if truncated {
        text.push_str(&truncated_marker(max));
    }
    Ok(Some(text))
}

fn statuses(pod: &Pod, init: bool) -> impl Iterator<Item = &ContainerStatus> {
    let s = pod.status.as_ref();
    let list = if init {
        s.and_then(|s| s.init_container_statuses.as_ref())
    } else {
        s.and_then(|s| s.container_statuses.as_ref())
    };
    list.into_iter().flatten()
}

/// Containers whose log can be read (running or finished), in start order.
fn loggable(pod: &Pod) -> Vec<(String, bool)> {
    statuses(pod, true)
        .chain(statuses(pod, false))
        .map(|s| {
            let state = s.state.as_ref();
            let ready = state.is_some_and(|st| st.running.is_some() || st.terminated.is_some());
            (s.name.clone(), ready)
        })
        .collect()
}

fn diagnose(view: &JobView) -> Verdict {
    let Some(job) = &view.job else {
        return Verdict::Progress(Phase::Creating, "waiting for the Job to appear".into());
    };
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    let condition = |t: &str| {
        conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if let Some(c) = condition("Failed") {
        if c.reason.as_deref() == Some("DeadlineExceeded") {
            return Verdict::Done {
                exit_code: None,
                failure: Some(("deadline_exceeded", timed_out(view))),
            };
        }
    }
    if let Some(pod) = view.pods.last() {
        // Evicted, preempted, its node lost: whatever the containers' exit says after that
        // (143, 137), the cause is the disruption.
        if let Some(failure) = disruption(pod) {
            return Verdict::Done {
                exit_code: None,
                failure: Some(failure),
            };
        }
        let all = statuses(pod, true)
            .map(|s| (s, true))
            .chain(statuses(pod, false).map(|s| (s, false)));
        for (s, init) in all {
            let state = s.state.as_ref();
            if let Some(w) = state.and_then(|st| st.waiting.as_ref()) {
                let reason = w.reason.as_deref().unwrap_or_default();
                let message = w.message.clone().unwrap_or_default();
                if matches!(
                    reason,
                    "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull"
                ) {
                    return Verdict::Done {
                        exit_code: None,
                        failure: Some((
                            "image_pull",
                            format!(
                                "container {}: image {:?} cannot be pulled ({reason}): {message}",
                                s.name, s.image
                            ),
                        )),
                    };
                }
                if matches!(
                    reason,
                    "CreateContainerConfigError" | "CreateContainerError"
                ) {
                    return Verdict::Done {
                        exit_code: None,
                        failure: Some((
                            "config_error",
                            format!("container {} cannot start ({reason}): {message}", s.name),
                        )),
                    };
                }
            }
            let Some(t) = state.and_then(|st| st.terminated.as_ref()) else {
                continue;
            };
            let reason = t.reason.clone().unwrap_or_default();
            let detail = t
                .message
                .clone()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty());
            if init && t.exit_code != 0 && s.name == CLONE_CONTAINER {
                // The clone's termination message is the commit it checked out when it
                // succeeds: never a reason.
                let detail = detail
                    .filter(|d| !crate::git::remote::is_full_sha(d))
                    .or_else(|| (!reason.is_empty()).then(|| reason.clone()));
                return Verdict::Done {
                    exit_code: Some(t.exit_code),
                    failure: Some((
                        "clone_failed",
                        format!(
                            "the source clone failed (exit {}){}",
                            t.exit_code,
                            detail.map(|d| format!(": {d}")).unwrap_or_default()
                        ),
                    )),
                };
            }
            // A native sidecar is stopped (SIGTERM) once the task is done: its exit status is
            // not the task's, as the pod phase does not count it either.
            let sidecar = pod
                .spec
                .as_ref()
                .and_then(|sp| sp.init_containers.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.name == s.name))
                .is_some_and(|c| c.restart_policy.as_deref() == Some("Always"));
            if init && t.exit_code != 0 && !sidecar {
                return Verdict::Done {
                    exit_code: Some(t.exit_code),
                    failure: Some((
                        "task_failed",
                        format!("init container {} failed (exit {})", s.name, t.exit_code),
                    )),
                };
            }
            if !init && s.name == TASK_CONTAINER {
                if reason == "OOMKilled" {
                    let limit = memory_limit(pod)
                        .map(|l| format!(" of {l}"))
                        .unwrap_or_default();
                    return Verdict::Done {
                        exit_code: Some(t.exit_code),
                        failure: Some((
                            "oom_killed",
                            format!(
                                "the task ran out of memory (OOMKilled at its limit{limit}): raise k8s memory"
                            ),
                        )),
                    };
                }
                if reason == "DeadlineExceeded" {
                    return Verdict::Done {
                        exit_code: Some(t.exit_code),
                        failure: Some(("deadline_exceeded", timed_out(view))),
                    };
                }
                // A task that succeeded with outputs to copy back is done once its outputs
                // sidecar has copied them (it starts when the task ends); deleting the Job
                // earlier would stop the copy.
                if t.exit_code == 0 && copying_outputs(pod) {
                    return Verdict::Progress(Phase::Running, "copying the task's outputs".into());
                }
                return Verdict::Done {
                    exit_code: Some(t.exit_code),
                    failure: (t.exit_code != 0).then(|| {
                        (
                            "task_failed",
                            format!(
                                "the task failed with exit code {}{}",
                                t.exit_code,
                                detail.map(|d| format!(": {d}")).unwrap_or_default()
                            ),
                        )
                    }),
                };
            }
        }
        let unschedulable = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            });
        if let Some(c) = unschedulable {
            return Verdict::Unschedulable(c.message.clone().unwrap_or_default());
        }
        let running = |init: bool, name: Option<&str>| {
            statuses(pod, init).any(|s| {
                name.is_none_or(|n| s.name == n)
                    && s.state.as_ref().is_some_and(|st| st.running.is_some())
            })
        };
        if running(false, Some(TASK_CONTAINER)) {
            return Verdict::Progress(
                Phase::Running,
                format!(
                    "pod {} is running the task",
                    pod.metadata.name.clone().unwrap_or_default()
                ),
            );
        }
        if running(true, Some(CLONE_CONTAINER)) {
            return Verdict::Progress(Phase::Cloning, "cloning the source".into());
        }
    }
    if let Some(c) = condition("Failed") {
        return Verdict::Done {
            exit_code: None,
            failure: Some((
                "task_failed",
                format!(
                    "the Job failed ({}): {}",
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                ),
            )),
        };
    }
    if condition("Complete").is_some() {
        return Verdict::Done {
            exit_code: Some(0),
            failure: None,
        };
    }
    Verdict::Progress(Phase::Pending, "waiting for the pod to start".into())
}

/// "timed out after 5 s (the task's timeout)", and where it was when it did.
fn timed_out(view: &JobView) -> String {
    let seconds = view
        .job
        .as_ref()
        .and_then(|j| j.spec.as_ref()?.active_deadline_seconds)
        .map(|s| format!(" after {s} s"))
        .unwrap_or_default();
    // The pod has a clone that has not succeeded (yet).
    let cloning = view.pods.last().is_some_and(|p| {
        statuses(p, true)
            .find(|s| s.name == CLONE_CONTAINER)
            .is_some_and(|s| {
                s.state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .is_none_or(|t| t.exit_code != 0)
            })
    });
    let during = if cloning {
        ", while the source was being cloned"
    } else {
        ""
    };
    format!("timed out{seconds} (the task's timeout){during}")
}

/// Why a pod was disrupted, from its `DisruptionTarget` condition (what the API server's
/// eviction, the scheduler's preemption, the taint manager, the pod garbage collector and
/// the kubelet write) or its status reason: (kind, one line).
pub fn disruption(pod: &Pod) -> Option<(&'static str, String)> {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_else(|| "?".into());
    let status = pod.status.as_ref()?;
    let condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True");
    if let Some(c) = condition {
        let reason = c.reason.clone().unwrap_or_default();
        let message = c.message.clone().unwrap_or_default();
        let why = format!("({reason}: {message})");
        return Some(match reason.as_str() {
            "DeletionByPodGC" | "DeletionByTaintManager" => (
                "node_lost",
                format!("the pod's node {node} was lost or tainted {why}"),
            ),
            "PreemptionByScheduler" => (
                "evicted",
                format!("the pod was preempted on node {node} by a pod of higher priority {why}"),
            ),
            _ => (
                "evicted",
                format!("the pod was evicted from node {node} {why}"),
            ),
        });
    }
    let message = status.message.clone().unwrap_or_default();
    match status.reason.as_deref() {
        Some("Evicted") => Some((
            "evicted",
            format!("the pod was evicted by node {node}: {message}"),
        )),
        Some("NodeLost") => Some((
            "node_lost",
            format!("the pod's node {node} was lost: {message}"),
        )),
        _ => None,
    }
}

/// The task container's memory limit, as written in the pod.
fn memory_limit(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == TASK_CONTAINER)?
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")
        .map(|q| q.0.clone())
}

/// Whether the pod has an outputs sidecar (the PVC strategy's sync back) still at work.
fn copying_outputs(pod: &Pod) -> bool {
    let declared = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == OUTPUTS_CONTAINER));
    declared
        && !statuses(pod, true).any(|s| {
            s.name == OUTPUTS_CONTAINER
                && s.state.as_ref().is_some_and(|st| st.terminated.is_some())
        })
}

/// The PVC strategy's sidecar that copies a task's outputs when it ends.
const OUTPUTS_CONTAINER: &str = "sykli-outputs";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(job_status: serde_json::Value, pod_status: Option<serde_json::Value>) -> JobView {
        let job: Job =
            serde_json::from_value(json!({"metadata": {"name": "j"}, "status": job_status}))
                .unwrap();
        let pods = pod_status
            .map(|s| {
                vec![serde_json::from_value::<Pod>(
                    json!({"metadata": {"name": "j-abcde"}, "status": s}),
                )
                .unwrap()]
            })
            .unwrap_or_default();
        JobView {
            job: Some(job),
            pods,
        }
    }

    fn failure(v: &JobView) -> (Option<i32>, &'static str, String) {
        match diagnose(v) {
            Verdict::Done {
                exit_code,
                failure: Some((k, m)),
            } => (exit_code, k, m),
            Verdict::Done { failure: None, .. } => panic!("succeeded"),
            Verdict::Progress(p, m) => panic!("still {p:?}: {m}"),
            Verdict::Unschedulable(m) => panic!("unschedulable: {m}"),
        }
    }

    fn waiting(name: &str, reason: &str, message: &str) -> serde_json::Value {
        json!({"name": name, "image": "registry.invalid/x:1", "imageID": "", "ready": false, "restartCount": 0,
               "state": {"waiting": {"reason": reason, "message": message}}})
    }

    fn terminated(name: &str, code: i32, reason: &str, message: &str) -> serde_json::Value {
        json!({"name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
               "state": {"terminated": {"exitCode": code, "reason": reason, "message": message}}})
    }

    #[test]
    fn image_pull_and_config_errors_fail_fast_naming_what() {
        let v = view(
            json!({}),
            Some(
                json!({"phase": "Pending", "initContainerStatuses": [terminated(CLONE_CONTAINER, 0, "Completed", "abc")],
            "containerStatuses": [waiting("task", "ImagePullBackOff", "Back-off pulling image \"registry.invalid/x:1\"")]}),
            ),
        );
        let (_, kind, msg) = failure(&v);
        assert_eq!(kind, "image_pull");
        assert!(
            msg.contains("registry.invalid/x:1") && msg.contains("ImagePullBackOff"),
            "{msg}"
        );

        let v = view(
            json!({}),
            Some(json!({"phase": "Pending",
            "containerStatuses": [waiting("task", "CreateContainerConfigError", "couldn't find key token in Secret ci/gh")]})),
        );
        let (_, kind, msg) = failure(&v);
        assert_eq!(kind, "config_error");
        assert!(
            msg.contains("couldn't find key token in Secret ci/gh"),
            "{msg}"
        );
    }

    #[test]
    fn a_failed_clone_reports_its_exit_code_and_message() {
        let v = view(
            json!({}),
            Some(json!({"phase": "Failed",
            "initContainerStatuses": [terminated(CLONE_CONTAINER, 1, "Error", "commit 0123 is not on branch main of https://h/r.git: was it pushed?")]})),
        );
        let (code, kind, msg) = failure(&v);
        assert_eq!((code, kind), (Some(1), "clone_failed"));
        assert!(msg.contains("was it pushed?"), "{msg}");
    }

    #[test]
    fn the_task_container_decides_exit_code_oom_and_success() {
        let ok = view(
            json!({}),
            Some(
                json!({"phase": "Succeeded", "containerStatuses": [terminated("task", 0, "Completed", "")]}),
            ),
        );
        assert!(matches!(
            diagnose(&ok),
            Verdict::Done {
                exit_code: Some(0),
                failure: None
            }
        ));

        let v = view(
            json!({}),
            Some(
                json!({"phase": "Failed", "containerStatuses": [terminated("task", 3, "Error", "")]}),
            ),
        );
        assert_eq!(failure(&v).0, Some(3));
        assert_eq!(failure(&v).1, "task_failed");
        assert!(failure(&v).2.contains("exit code 3"));

        let v = view(
            json!({}),
            Some(
                json!({"phase": "Failed", "containerStatuses": [terminated("task", 137, "OOMKilled", "")]}),
            ),
        );
        assert_eq!(failure(&v).1, "oom_killed");
    }

    #[test]
    fn deadline_and_unschedulable() {
        let v = view(
            json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}),
            Some(
                json!({"phase": "Failed", "containerStatuses": [terminated("task", 137, "Error", "")]}),
            ),
        );
        assert_eq!(failure(&v).1, "deadline_exceeded");

        let v = view(
            json!({}),
            Some(
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]}),
            ),
        );
        assert!(matches!(diagnose(&v), Verdict::Unschedulable(m) if m.contains("didn't match")));
    }

    /// A view whose Job has `activeDeadlineSeconds` and whose pod has `spec` and `status`.
    fn view_with(
        deadline: Option<i64>,
        job_status: serde_json::Value,
        pod_spec: serde_json::Value,
        pod_status: serde_json::Value,
    ) -> JobView {
        let mut v = view(job_status, Some(pod_status));
        v.job.as_mut().unwrap().spec = Some(
            serde_json::from_value(json!({"activeDeadlineSeconds": deadline, "template": {}}))
                .unwrap(),
        );
        v.pods[0].spec = Some(serde_json::from_value(pod_spec).unwrap());
        v
    }

    #[test]
    fn each_way_of_ending_names_its_true_cause_in_one_line() {
        let deadline = json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
            "message": "Job was active longer than specified deadline"}]});
        let spec = json!({"nodeName": "node-1", "containers": [{"name": "task",
            "resources": {"limits": {"memory": "64Mi"}}}]});
        let cloned = terminated(CLONE_CONTAINER, 0, "Completed", &"a".repeat(40));
        let cases = [
            // The task's own timeout, whatever the containers' exit (killed: 137).
            (
                view_with(Some(5), deadline.clone(), spec.clone(), json!({"phase": "Failed",
                    "initContainerStatuses": [cloned.clone()],
                    "containerStatuses": [terminated("task", 137, "Error", "")]})),
                "deadline_exceeded",
                "timed out after 5 s (the task's timeout)".to_string(),
            ),
            // … while the clone was still at work: said so, never a clone failure.
            (
                view_with(Some(5), deadline.clone(), spec.clone(), json!({"phase": "Failed",
                    "initContainerStatuses": [terminated(CLONE_CONTAINER, 137, "Error", "")]})),
                "deadline_exceeded",
                "timed out after 5 s (the task's timeout), while the source was being cloned"
                    .to_string(),
            ),
            (
                view_with(None, json!({}), spec.clone(), json!({"phase": "Failed",
                    "containerStatuses": [terminated("task", 137, "OOMKilled", "")]})),
                "oom_killed",
                "the task ran out of memory (OOMKilled at its limit of 64Mi): raise k8s memory"
                    .to_string(),
            ),
            // A clone killed with the commit id as its message: the id is no reason.
            (
                view_with(None, json!({}), spec.clone(), json!({"phase": "Failed",
                    "initContainerStatuses": [terminated(CLONE_CONTAINER, 137, "Error", &"b".repeat(40))]})),
                "clone_failed",
                "the source clone failed (exit 137): Error".to_string(),
            ),
            (
                view_with(Some(5), json!({}), spec.clone(), json!({"phase": "Running",
                    "conditions": [{"type": "DisruptionTarget", "status": "True",
                        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}],
                    "containerStatuses": [terminated("task", 143, "Error", "")]})),
                "evicted",
                "the pod was evicted from node node-1 (EvictionByEvictionAPI: Eviction API: evicting)"
                    .to_string(),
            ),
            (
                view_with(None, json!({}), spec.clone(), json!({"phase": "Running",
                    "conditions": [{"type": "DisruptionTarget", "status": "True",
                        "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists"}]})),
                "node_lost",
                "the pod's node node-1 was lost or tainted (DeletionByPodGC: PodGC: node no longer exists)"
                    .to_string(),
            ),
            (
                view_with(None, json!({}), spec.clone(), json!({"phase": "Running",
                    "conditions": [{"type": "DisruptionTarget", "status": "True",
                        "reason": "PreemptionByScheduler", "message": "preempted by ci/urgent"}]})),
                "evicted",
                "the pod was preempted on node node-1 by a pod of higher priority (PreemptionByScheduler: preempted by ci/urgent)"
                    .to_string(),
            ),
            (
                view_with(None, json!({}), spec.clone(), json!({"phase": "Failed", "reason": "Evicted",
                    "message": "The node was low on resource: ephemeral-storage."})),
                "evicted",
                "the pod was evicted by node node-1: The node was low on resource: ephemeral-storage."
                    .to_string(),
            ),
        ];
        for (v, kind, line) in cases {
            let (_, k, m) = failure(&v);
            assert_eq!((k, m.as_str()), (kind, line.as_str()));
            assert!(!m.contains('\n'), "one line: {m}");
        }
    }

    #[test]
    fn the_client_side_deadline_says_which_deadline_it_was() {
        let job = |deadline: Option<i64>| -> Job {
            serde_json::from_value(
                json!({"spec": {"activeDeadlineSeconds": deadline, "template": {}}}),
            )
            .unwrap()
        };
        let asked = RunOptions {
            timeout: Some(Duration::from_secs(3)),
            ..RunOptions::default()
        };
        assert_eq!(
            client_timed_out(&asked, &job(Some(600))),
            "timed out after 3 s (the client-side deadline): the Job was deleted"
        );
        assert_eq!(
            client_timed_out(&RunOptions::default(), &job(Some(5))),
            "timed out after 5 s (the task's timeout), and the cluster did not say so within 60 s more: the Job was deleted"
        );
    }

    #[test]
    fn progress_phases() {
        let running_clone = view(
            json!({}),
            Some(json!({"phase": "Pending", "initContainerStatuses": [
            {"name": CLONE_CONTAINER, "image": "g", "imageID": "", "ready": false, "restartCount": 0, "state": {"running": {}}}]})),
        );
        assert!(matches!(
            diagnose(&running_clone),
            Verdict::Progress(Phase::Cloning, _)
        ));
        let running = view(
            json!({}),
            Some(json!({"phase": "Running", "containerStatuses": [
            {"name": "task", "image": "i", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]})),
        );
        assert!(matches!(
            diagnose(&running),
            Verdict::Progress(Phase::Running, _)
        ));
        assert!(matches!(
            diagnose(&view(json!({}), None)),
            Verdict::Progress(Phase::Pending, _)
        ));
        assert!(matches!(
            diagnose(&JobView::default()),
            Verdict::Progress(Phase::Creating, _)
        ));
        let complete = view(
            json!({"conditions": [{"type": "Complete", "status": "True"}]}),
            None,
        );
        assert!(matches!(
            diagnose(&complete),
            Verdict::Done {
                exit_code: Some(0),
                failure: None
            }
        ));
    }

    /// Every line `read_log_line` gives for `log`, read through a small buffer (so lines
    /// arrive in pieces, as from a stream).
    fn log_lines(log: &[u8], max: usize) -> Vec<String> {
        let mut r =
            futures::io::BufReader::with_capacity(7, futures::io::Cursor::new(log.to_vec()));
        let mut lines = Vec::new();
        while let Some(line) = futures::executor::block_on(read_log_line(&mut r, max)).unwrap() {
            lines.push(line);
        }
        lines
    }

    #[test]
    fn log_lines_are_capped_and_marked_and_bad_utf8_does_not_end_the_log() {
        assert_eq!(log_lines(b"a\r\nb\n\nc", 10), ["a", "b", "", "c"]);
        let long = format!("{}\nnext\n{}", "x".repeat(100), "y".repeat(30));
        assert_eq!(
            log_lines(long.as_bytes(), 10),
            [
                format!("{}… [line truncated at 10 bytes]", "x".repeat(10)),
                "next".to_string(),
                format!("{}… [line truncated at 10 bytes]", "y".repeat(10)),
            ]
        );
        // Cut at a character, never inside one.
        assert_eq!(
            log_lines("ééééé\n".as_bytes(), 5),
            ["éé… [line truncated at 5 bytes]"]
        );
        assert_eq!(
            log_lines(b"bad \xff byte\nafter\n", 64),
            ["bad \u{fffd} byte", "after"]
        );
        assert!(log_lines(b"", 10).is_empty());
    }
}
