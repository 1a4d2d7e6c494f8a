//! One watch per namespace and run (a label selector on `sykli.io/run`), shared by every
//! task of the run, instead of one per Job; a streaming list where the server has it, so the
//! watch is the only request. kube-runtime's watcher resumes from the last resourceVersion,
//! re-lists on 410 Gone, and backs off when the API server struggles.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::ListParams;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use tokio::task::JoinHandle;

use crate::manifest::RUN_LABEL;

/// What the watches have seen of one Job: the Job and its pods (newest last).
#[derive(Debug, Clone, Default)]
pub struct JobView {
    pub job: Option<Job>,
    pub pods: Vec<Pod>,
}

/// What the watches hold, keyed so that a Job's view is a lookup and a range, never a
/// scan of the run: a run of 1,000 tasks has 1,000 Jobs and as many pods.
#[derive(Default)]
struct State {
    /// Job name → Job
    jobs: BTreeMap<String, Job>,
    /// "JOB/POD" → pod (Job names have no '/')
    pods: BTreeMap<String, Pod>,
}

/// Per Job, the channel that wakes its task when the Job or one of its pods changes: a
/// change wakes the one task it concerns, not all of the run's.
type Subscribers = Arc<Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>>;

/// Wakes the task of `job` (all of them when None: a re-list may have changed anything).
fn notify(subscribers: &Subscribers, job: Option<&str>) {
    let map = subscribers.lock().unwrap_or_else(|p| p.into_inner());
    match job {
        Some(job) => {
            if let Some(tx) = map.get(job) {
                tx.send_modify(|n| *n += 1);
            }
        }
        None => map.values().for_each(|tx| tx.send_modify(|n| *n += 1)),
    }
}

pub struct RunWatcher {
    state: Arc<Mutex<State>>,
    subscribers: Subscribers,
    tasks: Vec<JoinHandle<()>>,
    refusals: FailedCreates,
}

/// The job controller's `FailedCreate` events of the namespace (a pod it was refused:
/// Pod Security, a quota, a webhook), listed for all the run's Jobs at once: when 200
/// Jobs wait for their pods together, one list answers them all.
struct FailedCreates {
    events: Api<CoreEvent>,
    /// The last list and when it was asked for; the lock makes concurrent askers share it.
    last: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<CoreEvent>>)>>,
}

impl RunWatcher {
    pub fn start(client: kube::Client, namespace: &str, run: &str) -> RunWatcher {
        let state = Arc::new(Mutex::new(State::default()));
        let subscribers = Subscribers::default();
        let selector = format!("{RUN_LABEL}={run}");
        let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let refusals = FailedCreates {
            events: Api::namespaced(client, namespace),
            last: Default::default(),
        };
        let tasks = vec![
            spawn_watch(
                jobs,
                &selector,
                state.clone(),
                subscribers.clone(),
                Filing {
                    field: |s| &mut s.jobs,
                    job_of: |job| job.metadata.name.clone(),
                    keep_deleted: |_| false,
                    trim: |job| {
                        // The verdicts read the Job's status and deadline, never its template.
                        job.metadata.managed_fields = None;
                        if let Some(spec) = job.spec.as_mut() {
                            spec.template = Default::default();
                        }
                    },
                },
            ),
            // A pod deleted by a disruption (eviction, preemption, its node lost) stays in
            // view: its last state is the verdict's cause. Other deleted pods go.
            spawn_watch(
                pods,
                &selector,
                state.clone(),
                subscribers.clone(),
                Filing {
                    field: |s| &mut s.pods,
                    job_of: owner_job,
                    keep_deleted: |p| super::run::disruption(p).is_some(),
                    trim: |pod| pod.metadata.managed_fields = None,
                },
            ),
        ];
        RunWatcher {
            state,
            subscribers,
            tasks,
            refusals,
        }
    }

    /// Why the job controller could not create Job `job`'s pod, from its latest
    /// `FailedCreate` event, in a list made after `since` (the task's own start, so that a
    /// list older than its Job is never its answer) and at most `max_age` old. None when it
    /// has none, or when events cannot be read (RBAC: list on events).
    pub async fn pod_refusal(
        &self,
        job: &str,
        uid: Option<&str>,
        since: std::time::Instant,
        max_age: std::time::Duration,
    ) -> Option<String> {
        let events = {
            let mut last = self.refusals.last.lock().await;
            match &*last {
                Some((at, list)) if *at >= since && at.elapsed() < max_age => list.clone(),
                _ => {
                    let asked = std::time::Instant::now();
                    let lp =
                        ListParams::default().fields("involvedObject.kind=Job,reason=FailedCreate");
                    let list = Arc::new(self.refusals.events.list(&lp).await.ok()?.items);
                    *last = Some((asked, list.clone()));
                    list
                }
            }
        };
        events
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(job))
            .filter(|e| uid.is_none() || e.involved_object.uid.as_deref() == uid)
            .filter_map(|e| e.message.clone())
            .next_back()
    }

    /// Wakes its task after any change of Job `name` or of its pods, until dropped.
    pub fn subscribe(self: &Arc<Self>, name: &str) -> Subscription {
        let changes = self
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe();
        Subscription {
            watcher: self.clone(),
            name: name.to_string(),
            changes,
        }
    }

    /// The latest view of Job `name`.
    pub fn view(&self, name: &str) -> JobView {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!("{name}/");
        let mut pods: Vec<Pod> = s
            .pods
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, p)| p.clone())
            .collect();
        pods.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        JobView {
            job: s.jobs.get(name).cloned(),
            pods,
        }
    }
}

/// A task's wake-ups for its Job; dropped on every way out of the run, it takes the Job's
/// channel with it when no other task of that name listens.
pub struct Subscription {
    watcher: Arc<RunWatcher>,
    name: String,
    pub changes: tokio::sync::watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // `changes` is still alive here: it is the one receiver left when no other listens.
        let mut map = self
            .watcher
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.name)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            map.remove(&self.name);
        }
    }
}

impl Drop for RunWatcher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The Job a pod belongs to: its controller owner, else the job-name label.
pub fn owner_job(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Job" && o.controller == Some(true))
        .map(|o| o.name.clone())
        .or_else(|| {
            let labels = pod.metadata.labels.as_ref()?;
            labels
                .get("batch.kubernetes.io/job-name")
                .or_else(|| labels.get("job-name"))
                .cloned()
        })
}

/// How one resource's watch keeps its objects.
struct Filing<K> {
    /// Where in the state.
    field: fn(&mut State) -> &mut BTreeMap<String, K>,
    /// The Job an object is of: a Job itself, a pod its owner.
    job_of: fn(&K) -> Option<String>,
    /// Whether a deleted object stays in view.
    keep_deleted: fn(&K) -> bool,
    /// Drops what no verdict reads before an object is kept: a run of 1,000 tasks keeps
    /// 2,000 objects, and their managedFields alone are most of their size.
    trim: fn(&mut K),
}

fn spawn_watch<K>(
    api: Api<K>,
    selector: &str,
    state: Arc<Mutex<State>>,
    subscribers: Subscribers,
    filing: Filing<K>,
) -> JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    let list_watch = watcher::Config::default().labels(selector);
    tokio::spawn(async move {
        // A streaming list: the watch itself sends the initial state, one request instead
        // of a list and then a watch. A server without it (before 1.27, or the WatchList
        // gate off, as in 1.33) refuses the watch's parameters: then list and watch.
        let mut stream = watcher(api.clone(), list_watch.clone().streaming_lists())
            .default_backoff()
            .boxed();
        let mut streaming = true;
        let mut listed = false;
        // Objects listed during a re-list, swapped in when it is complete.
        let mut relist: Option<BTreeMap<String, K>> = None;
        // Its key in the state: "JOB/NAME" for a pod, the name for a Job.
        let key = |obj: &K| -> (String, Option<String>) {
            let name = obj.meta().name.clone().unwrap_or_default();
            let job = (filing.job_of)(obj);
            let key = match &job {
                Some(job) if job != &name => format!("{job}/{name}"),
                _ => name,
            };
            (key, job)
        };
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) if streaming && !listed && refuses_streaming(&e) => {
                    streaming = false;
                    relist = None;
                    stream = watcher(api.clone(), list_watch.clone())
                        .default_backoff()
                        .boxed();
                    continue;
                }
                Err(_) => continue, // the backoff retries; nothing is lost
            };
            listed |= matches!(event, watcher::Event::InitDone);
            let event = event.modify(filing.trim);
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            let map = (filing.field)(&mut s);
            // The Job whose task to wake; None: every task (a re-list was swapped in).
            let mut changed: Option<Option<String>> = None;
            match event {
                watcher::Event::Apply(obj) => {
                    let (k, job) = key(&obj);
                    map.insert(k, obj);
                    changed = Some(job);
                }
                watcher::Event::Delete(obj) => {
                    let (k, job) = key(&obj);
                    if (filing.keep_deleted)(&obj) {
                        map.insert(k, obj);
                    } else {
                        map.remove(&k);
                    }
                    changed = Some(job);
                }
                watcher::Event::Init => relist = Some(BTreeMap::new()),
                watcher::Event::InitApply(obj) => {
                    let (k, job) = key(&obj);
                    match &mut relist {
                        Some(r) => {
                            r.insert(k, obj);
                        }
                        None => {
                            map.insert(k, obj);
                            changed = Some(job);
                        }
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(r) = relist.take() {
                        *map = r;
                        changed = Some(None);
                    }
                }
            }
            drop(s);
            match changed {
                Some(Some(job)) => notify(&subscribers, Some(&job)),
                Some(None) => notify(&subscribers, None),
                None => {}
            }
        }
    })
}

/// The server does not do streaming lists: it refuses `sendInitialEvents` or
/// `resourceVersionMatch` on a watch as invalid.
fn refuses_streaming(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 400 || s.code == 422
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change wakes the task of its Job only; a re-list wakes every task.
    #[test]
    fn a_change_wakes_only_the_task_of_its_job() {
        let subscribers = Subscribers::default();
        let subscribe = |name: &str| {
            subscribers
                .lock()
                .unwrap()
                .entry(name.to_string())
                .or_insert_with(|| tokio::sync::watch::channel(0).0)
                .subscribe()
        };
        let (mut a, mut b) = (subscribe("a"), subscribe("b"));
        notify(&subscribers, Some("a"));
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap());
        a.mark_unchanged();
        notify(&subscribers, Some("nobody"));
        assert!(!a.has_changed().unwrap() && !b.has_changed().unwrap());
        notify(&subscribers, None);
        assert!(a.has_changed().unwrap() && b.has_changed().unwrap());
        b.mark_unchanged();
    }
}
