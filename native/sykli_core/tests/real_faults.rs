//! Submission under API faults on the real Kubernetes components: sykli talks to
//! `sykli-kube up`'s API server through the test kit's proxy (`kube_proxy`), which logs
//! every request and injects 5xx, 429 with Retry-After, lost answers and dropped watches.
//! One control plane for this file; each test has its own namespace and its own proxy.

mod support;

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{Event, Outcome, RunOptions};
use sykli_core::cluster::Cluster;
use sykli_testkit::git_server::GitDaemon;
use sykli_testkit::kube::{ControlPlane, ControlPlaneOptions};
use sykli_testkit::kube_proxy::{Action, Fault, KubeProxy, Match, Request};

async fn plane() -> &'static ControlPlane {
    support::control_plane(ControlPlaneOptions {
        nodes: 2,
        ..ControlPlaneOptions::default()
    })
    .await
}

struct Env {
    _tmp: tempfile::TempDir,
    _daemon: GitDaemon,
    proxy: KubeProxy,
    /// Through the proxy: what the product uses.
    cluster: Arc<Cluster>,
    /// Straight to the API server: what the test checks with, unaffected by faults.
    direct: Cluster,
    namespace: String,
    url: String,
    sha: String,
}

async fn env(namespace: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let (daemon, url, sha) = support::served_repo(tmp.path());
    let plane = plane().await;
    let info = plane.info().clone();
    let proxy = tokio::task::spawn_blocking(move || KubeProxy::start(&info))
        .await
        .unwrap()
        .unwrap();
    let cluster = Arc::new(support::connect_proxied(&proxy, namespace).await);
    Env {
        direct: support::connect_real(plane, Some(namespace)).await,
        cluster,
        proxy,
        url,
        _daemon: daemon,
        sha,
        namespace: namespace.to_string(),
        _tmp: tmp,
    }
}

impl Env {
    fn job(&self, run: &str, task: Value) -> Job {
        support::job_for(
            task,
            run,
            &self.namespace,
            &self.url,
            &self.sha,
            Some("main"),
        )
    }

    async fn run(&self, job: Job, opts: RunOptions) -> (sykli_core::Result<Outcome>, Vec<Event>) {
        support::spawn_run(self.cluster.clone(), job, opts)
            .await
            .unwrap()
    }

    async fn jobs_left(&self) -> Vec<String> {
        let api: Api<Job> = Api::namespaced(self.direct.client.clone(), &self.namespace);
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .collect()
    }

    /// The requests that created Jobs in the namespace and were answered 2xx by the API
    /// server (a lost answer included: the Job was created).
    fn job_creates(&self) -> Vec<Request> {
        let jobs = format!("/apis/batch/v1/namespaces/{}/jobs", self.namespace);
        self.proxy
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == jobs && (200..300).contains(&r.status))
            .collect()
    }
}

fn create_ns() -> RunOptions {
    RunOptions {
        create_namespace: true,
        ..RunOptions::default()
    }
}

/// The watches of run `run` on `resource` (`jobs`, `pods`) in the log.
fn watches_of(log: &[Request], resource: &str, run: &str) -> usize {
    let selector = format!("sykli.io/run={run}");
    log.iter()
        .filter(|r| {
            r.watch
                && r.path.ends_with(&format!("/{resource}"))
                && r.param("labelSelector").as_deref() == Some(selector.as_str())
        })
        .count()
}

/// The lists (GETs of the collection that are not watches) of run `run` on `resource`.
fn lists_of(log: &[Request], resource: &str, run: &str) -> usize {
    let selector = format!("sykli.io/run={run}");
    log.iter()
        .filter(|r| {
            !r.watch
                && r.method == "GET"
                && r.path.ends_with(&format!("/{resource}"))
                && r.param("labelSelector").as_deref() == Some(selector.as_str())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_run_share_one_watch_per_resource() {
    let e = env("faults-shared").await;
    let (ok, _) = e
        .run(
            e.job(
                "w0",
                json!({"name": "warm", "container": "any", "command": "true"}),
            ),
            create_ns(),
        )
        .await;
    assert!(ok.unwrap().failure.is_none());
    e.proxy.clear_requests();
    let runs: Vec<_> = (0..5)
        .map(|i| {
            let job = e.job("shared", json!({"name": format!("t{i}"), "container": "any", "command": format!("echo {i}")}));
            support::spawn_run(e.cluster.clone(), job, RunOptions::default())
        })
        .collect();
    for r in runs {
        assert!(r.await.unwrap().0.unwrap().failure.is_none());
    }
    let log = e.proxy.requests();
    assert_eq!(
        (
            watches_of(&log, "jobs", "shared"),
            watches_of(&log, "pods", "shared")
        ),
        (1, 1),
        "{:#?}",
        log.iter().filter(|r| r.watch).collect::<Vec<_>>()
    );
    // Streaming lists: each watch brought its initial state, no list was made.
    assert_eq!(
        (
            lists_of(&log, "jobs", "shared"),
            lists_of(&log, "pods", "shared")
        ),
        (0, 0)
    );
    assert!(log
        .iter()
        .filter(|r| r.watch)
        .all(|r| r.param("sendInitialEvents").as_deref() == Some("true")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_streaming_lists_is_listed_then_watched() {
    let e = env("faults-no-stream").await;
    // As a server before 1.27 or with the WatchList gate off answers the streaming watch.
    e.proxy.set_faults(vec![Fault::always(
        Match::path("sendInitialEvents=true"),
        Action::Status(422),
    )]);
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let job = e.job("nostream", json!({"name": format!("t{i}"), "container": "any", "command": format!("echo {i}")}));
            support::spawn_run(e.cluster.clone(), job, create_ns())
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let (outcome, events) = r.await.unwrap();
        assert!(outcome.unwrap().failure.is_none(), "task {i}");
        assert_eq!(support::logs(&events, "task"), format!("{i}\n"));
    }
    let log = e.proxy.requests();
    for resource in ["jobs", "pods"] {
        let refused = log
            .iter()
            .filter(|r| r.path.ends_with(resource) && r.status == 422)
            .count();
        assert_eq!(refused, 1, "{resource}: the streaming watch asked once");
        assert_eq!(lists_of(&log, resource, "nostream"), 1, "{resource}");
        assert_eq!(watches_of(&log, resource, "nostream"), 2, "{resource}");
    }
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_its_namespace_once_not_once_per_task() {
    let e = env("faults-ns").await;
    for task in ["one", "two", "three"] {
        let job = e.job(
            "r-ns",
            json!({"name": task, "container": "any", "command": "true"}),
        );
        let (outcome, _) = e.run(job, create_ns()).await;
        assert!(outcome.unwrap().failure.is_none(), "{task}");
    }
    let reads = e
        .proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/namespaces/faults-ns")
        .count();
    assert_eq!(reads, 1, "three tasks of one run");
}

/// Tasks that start together wait for the first one's question: 200 tasks of a run used
/// to read their namespace 200 times, as none had an answer yet when the others asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_starting_together_read_their_namespace_once() {
    let e = env("faults-ns-together").await;
    // Every namespace read answers slowly, so that all tasks ask while the first waits.
    e.proxy.set_faults(vec![Fault::next(
        1,
        Match::method_path("GET", "/api/v1/namespaces/faults-ns-together"),
        Action::Delay(std::time::Duration::from_millis(500)),
    )]);
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let job = e.job(
                "r-ns2",
                json!({"name": format!("t{i}"), "container": "any", "command": "true"}),
            );
            support::spawn_run(e.cluster.clone(), job, create_ns())
        })
        .collect();
    for r in runs {
        assert!(r.await.unwrap().0.unwrap().failure.is_none());
    }
    let path = "/api/v1/namespaces/faults-ns-together";
    let reads = e
        .proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .count();
    assert_eq!(reads, 1, "eight tasks starting together");
}

/// Jobs refused their pods together (here by Pod Security) are each named by the job
/// controller's FailedCreate event, from a list shared by the run's tasks: not one list of
/// events per Job every few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_refused_their_pods_together_share_one_list_of_events() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::PostParams;
    let e = env("faults-refused").await;
    let namespaces: Api<Namespace> = Api::all(e.direct.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": e.namespace, "labels": {
                "pod-security.kubernetes.io/enforce": "restricted"}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    support::default_account(&e.direct.client, &e.namespace).await;
    let n = 8;
    let runs: Vec<_> = (0..n)
        .map(|i| {
            let job = e.job(
                "r-refused",
                json!({"name": format!("t{i}"), "container": "any", "command": "true"}),
            );
            let opts = RunOptions {
                timeout: Some(std::time::Duration::from_secs(120)),
                ..RunOptions::default()
            };
            support::spawn_run(e.cluster.clone(), job, opts)
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let (kind, why) = r.await.unwrap().0.unwrap().failure.unwrap();
        assert_eq!(kind, "pod_rejected", "task {i}: {why}");
        assert!(why.contains("violates PodSecurity"), "task {i}: {why}");
    }
    let events = format!("/api/v1/namespaces/{}/events", e.namespace);
    let lists = e
        .proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == events)
        .count();
    assert!(
        (1..n / 2).contains(&lists),
        "{lists} lists of events for {n} refused Jobs"
    );
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_errors_create_nothing() {
    let e = env("faults-preflight").await;
    // No namespace, and not allowed to create it: nothing is written at all.
    let job = e.job(
        "r5",
        json!({"name": "t", "container": "any", "command": "true"}),
    );
    let (outcome, _) = e.run(job, RunOptions::default()).await;
    let err = outcome.unwrap_err();
    assert_eq!(err.kind(), "not_found");
    assert!(
        err.to_string()
            .contains("namespace \"faults-preflight\" does not exist"),
        "{err}"
    );
    let log = e.proxy.requests();
    assert!(!log.is_empty(), "the namespace was read through the proxy");
    assert!(
        log.iter().all(|r| r.method == "GET"),
        "only reads: {log:#?}"
    );

    // A Secret without the key the task reads: no Job is created.
    support::create_namespace(&e.direct, &e.namespace).await;
    let secrets: Api<Secret> = Api::namespaced(e.direct.client.clone(), &e.namespace);
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "gh"}, "stringData": {"user": "x"}}))
            .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mut job = e.job(
        "r5c",
        json!({"name": "needs-token", "container": "any", "command": "true"}),
    );
    let c = &mut job
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0];
    c.env = Some(vec![serde_json::from_value(
        json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "gh", "key": "token"}}}),
    )
    .unwrap()]);
    e.proxy.clear_requests();
    let (outcome, _) = e.run(job, create_ns()).await;
    let err = outcome.unwrap_err();
    assert_eq!(err.kind(), "not_found");
    assert!(
        err.to_string().contains(
            "Secret faults-preflight/gh has no key \"token\" (env TOKEN of container task reads it)"
        ),
        "{err}"
    );
    let log = e.proxy.requests();
    assert!(
        log.iter()
            .any(|r| r.path.ends_with("/secrets/gh") && r.status == 200),
        "the Secret was read: {log:#?}"
    );
    assert!(
        log.iter().all(|r| r.method != "POST"),
        "nothing was created: {log:#?}"
    );
    assert!(e.jobs_left().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_is_lost_is_adopted_and_run_once() {
    let e = env("faults-lost").await;
    // The API server creates the Job; its answer never arrives; the retry meets 409 and
    // adopts the run's own Job.
    e.proxy.set_faults(vec![Fault::next(
        1,
        Match::method_path("POST", "/jobs"),
        Action::LoseAnswer,
    )]);
    let job = e.job(
        "lost",
        json!({"name": "once", "container": "any", "command": "echo once"}),
    );
    let (outcome, events) = e.run(job, create_ns()).await;
    assert!(outcome.unwrap().failure.is_none());
    assert_eq!(support::logs(&events, "task"), "once\n");
    let jobs = format!("/apis/batch/v1/namespaces/{}/jobs", e.namespace);
    let creates: Vec<(u16, Option<&str>)> = e
        .proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == jobs)
        .map(|r| (r.status, r.fault))
        .collect();
    assert_eq!(creates, [(201, Some("lose-answer")), (409, None)]);
    assert!(e.jobs_left().await.is_empty());
}

/// How many tasks the many-tasks test runs (two virtual nodes on two cores run them in
/// under half a minute).
const MANY: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_tasks_through_api_faults_and_dropped_watches() {
    let e = env("faults-many").await;
    e.proxy.set_seed(7);
    e.proxy.set_faults(vec![
        // The first watch of each resource, then a third of the others, end after a few
        // events (kube's watcher resumes them).
        Fault::next(2, Match::watch(""), Action::CloseWatchAfter(3)),
        Fault::rate(0.3, Match::watch(""), Action::CloseWatchAfter(3)),
        Fault::rate(
            0.03,
            Match::method_path("POST", "/jobs"),
            Action::LoseAnswer,
        ),
        Fault::rate(0.10, Match::any(), Action::Status(503)),
        Fault::rate(
            0.02,
            Match::any(),
            Action::Throttle {
                retry_after_secs: 1,
            },
        ),
    ]);
    let runs: Vec<_> = (0..MANY)
        .map(|i| {
            let fail = i % 10 == 9;
            let cmd = if fail {
                format!("echo task {i}; exit 4")
            } else {
                format!("echo task {i}")
            };
            let job = e.job(
                "many",
                json!({"name": format!("t{i:03}"), "container": "any", "command": cmd}),
            );
            (
                i,
                fail,
                support::spawn_run(e.cluster.clone(), job, create_ns()),
            )
        })
        .collect();
    for (i, fail, run) in runs {
        let (outcome, events) = run.await.unwrap();
        let o = outcome.unwrap_or_else(|err| panic!("task {i}: {err}"));
        if fail {
            assert_eq!(
                (o.exit_code, o.failure.map(|f| f.0)),
                (Some(4), Some("task_failed")),
                "task {i}"
            );
        } else {
            assert!(o.failure.is_none(), "task {i}: {:?}", o.failure);
        }
        assert!(
            support::logs(&events, "task").contains(&format!("task {i}")),
            "task {i}: live log; events: {events:?}"
        );
    }
    assert!(e.jobs_left().await.is_empty(), "no Job is left");
    let log = e.proxy.requests();
    let injected = log.iter().filter(|r| r.injected()).count();
    assert!(injected > MANY / 5, "faults were injected ({injected})");
    let dropped = log
        .iter()
        .filter(|r| r.fault == Some("close-watch-after") && r.events == 3)
        .count();
    assert!(dropped >= 2, "watches were dropped ({dropped})");
    // Each task's Job was created once: no duplicate made it into the API server.
    assert_eq!(e.job_creates().len(), MANY);
}

/// The DELETE requests on the namespace's Jobs: (by name, of the collection).
fn job_deletes(log: &[Request], namespace: &str) -> (Vec<Request>, Vec<Request>) {
    let jobs = format!("/apis/batch/v1/namespaces/{namespace}/jobs");
    log.iter()
        .filter(|r| r.method == "DELETE" && r.path.starts_with(&jobs))
        .cloned()
        .partition(|r| r.path != jobs)
}

/// Runs `n` tasks of run `run` at once, the first Job delete held `hold` at the proxy so
/// that the others end while it is in flight (and `faults` set too); checks every verdict
/// and that no Job is left.
async fn tasks_ending_together(
    e: &Env,
    run: &str,
    n: usize,
    hold: std::time::Duration,
    faults: Vec<Fault>,
) {
    let mut all = vec![Fault::next(
        1,
        Match::method_path("DELETE", "/jobs/"),
        Action::Delay(hold),
    )];
    all.extend(faults);
    e.proxy.set_faults(all);
    let runs: Vec<_> = (0..n)
        .map(|i| {
            let job = e.job(
                run,
                json!({"name": format!("t{i}"), "container": "any", "command": "true"}),
            );
            support::spawn_run(e.cluster.clone(), job, create_ns())
        })
        .collect();
    for (i, r) in runs.into_iter().enumerate() {
        let o = r
            .await
            .unwrap()
            .0
            .unwrap_or_else(|err| panic!("task {i}: {err}"));
        assert!(o.failure.is_none(), "task {i}: {:?}", o.failure);
    }
    assert!(e.jobs_left().await.is_empty(), "no Job is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_end_while_a_delete_is_in_flight_are_deleted_in_one_request() {
    let e = env("faults-reap").await;
    const N: usize = 12;
    tasks_ending_together(&e, "reap", N, std::time::Duration::from_secs(8), vec![]).await;
    let (by_name, collection) = job_deletes(&e.proxy.requests(), &e.namespace);
    assert!(!collection.is_empty(), "a collection delete: {by_name:#?}");
    // Every Job was named by exactly one delete, and the selector of a collection delete
    // names the run: nothing else of the namespace could go with it.
    let mut named: Vec<String> = by_name
        .iter()
        .map(|r| r.path.rsplit('/').next().unwrap().to_string())
        .collect();
    for r in &collection {
        assert_eq!(r.status, 200, "{r:?}");
        let selector = r.param("labelSelector").unwrap();
        let names = selector
            .strip_prefix("sykli.io/run=reap,sykli.io/job in (")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{selector}"));
        named.extend(names.split(',').map(String::from));
    }
    named.sort();
    let mut expected: Vec<String> = (0..N)
        .map(|i| sykli_core::manifest::names::job_name(&format!("t{i}"), "reap"))
        .collect();
    expected.sort();
    assert_eq!(named, expected);
    assert!(
        by_name.len() + collection.len() < N,
        "{} by name and {} collection deletes for {N} Jobs",
        by_name.len(),
        collection.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_deletecollection_each_job_is_deleted_by_name_and_the_refusal_is_asked_once() {
    let e = env("faults-reap-403").await;
    let refused = || {
        vec![Fault::always(
            Match::method_path("DELETE", "labelSelector="),
            Action::Status(403),
        )]
    };
    const N: usize = 8;
    tasks_ending_together(
        &e,
        "reap403",
        N,
        std::time::Duration::from_secs(8),
        refused(),
    )
    .await;
    let (by_name, collection) = job_deletes(&e.proxy.requests(), &e.namespace);
    assert_eq!(
        collection.iter().map(|r| r.status).collect::<Vec<_>>(),
        [403],
        "asked once"
    );
    assert_eq!(by_name.len(), N, "{by_name:#?}");
    // A second round on the same client does not ask again.
    e.proxy.clear_requests();
    tasks_ending_together(
        &e,
        "reap403b",
        4,
        std::time::Duration::from_secs(4),
        refused(),
    )
    .await;
    let (by_name, collection) = job_deletes(&e.proxy.requests(), &e.namespace);
    assert_eq!((by_name.len(), collection.len()), (4, 0));
}
