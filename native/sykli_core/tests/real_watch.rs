//! The run's watch across an etcd compaction on the real components (issue 16, item 5):
//! the watch of a run is held at the test kit's proxy while its tasks finish, etcd is
//! compacted past the watch's resourceVersion, and the held stream is dropped; resuming
//! meets 410 Gone, kube's watcher re-lists, and the run's verdicts, exit codes and logs
//! are complete. The API server runs without its watch cache, which would otherwise hide
//! etcd's compaction from watches. One control plane for this file.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use serde_json::json;
use sykli_core::cluster::run::RunOptions;
use sykli_testkit::kube::ControlPlaneOptions;
use sykli_testkit::kube_proxy::{compact_etcd, Action, Fault, KubeProxy, Match, Request};

/// Whether a Job has finished, either way.
fn finished(job: Option<&Job>) -> bool {
    job.and_then(|j| j.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_etcd_compaction_a_stale_watch_gets_410_and_the_run_loses_no_event() {
    across_a_compaction("watch-compacted", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_streaming_lists_a_stale_watch_gets_410_and_the_run_lists_again() {
    across_a_compaction("watch-compacted-lists", false).await;
}

/// How the watch of a held run is held: its watches' initial state is passed (a streaming
/// list's initial events, or a list), then each watch that resumes from a resourceVersion
/// is stalled while the tasks finish; etcd is compacted and the stalled streams dropped.
/// `streaming`: as the API server has it; else the server refuses streaming lists (as
/// before 1.27, or with the WatchList gate off) and the run lists, then watches.
async fn across_a_compaction(namespace: &str, streaming: bool) {
    let plane = support::control_plane(ControlPlaneOptions {
        nodes: 1,
        up_args: vec!["--apiserver-arg=--watch-cache=false".into()],
        ..ControlPlaneOptions::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let (_daemon, url, sha) = support::served_repo(tmp.path());
    let info = plane.info().clone();
    let proxy = tokio::task::spawn_blocking(move || KubeProxy::start(&info))
        .await
        .unwrap()
        .unwrap();
    let cluster = Arc::new(support::connect_proxied(&proxy, namespace).await);
    let direct = support::connect_real(plane, Some(namespace)).await;
    support::create_namespace(&direct, namespace).await;

    // The run's watches bring its (empty) initial state, then the ones that resume from
    // it pass nothing on.
    let of_run = Match::watch("sykli.io%2Frun%3Dgone");
    let mut faults = vec![];
    if streaming {
        // The initial events of nothing are one bookmark; the watch ends after it.
        faults.push(Fault::next(
            2,
            Match::watch("sendInitialEvents=true"),
            Action::CloseWatchAfter(1),
        ));
    } else {
        faults.push(Fault::always(
            Match::path("sendInitialEvents=true"),
            Action::Status(422),
        ));
    }
    faults.push(Fault::always(of_run, Action::StallWatch));
    proxy.set_faults(faults);
    let watcher = cluster.watcher(namespace, "gone");
    let resumed_held = || {
        let log = proxy.requests();
        ["/jobs", "/pods"].iter().all(|res| {
            log.iter()
                .any(|r| r.fault == Some("stall") && r.path.ends_with(res))
        })
    };
    let waiting = std::time::Instant::now();
    while !resumed_held() {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "the run's watches were not resumed: {:#?}",
            proxy.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tasks = [
        ("ok", "echo one; echo two; echo three"),
        ("bad", "echo before failing; exit 4"),
    ];
    let runs: Vec<_> = tasks
        .iter()
        .map(|(name, cmd)| {
            let job = support::job_for(
                json!({"name": name, "container": "any", "command": cmd}),
                "gone",
                namespace,
                &url,
                &sha,
                Some("main"),
            );
            let job_name = job.metadata.name.clone().unwrap();
            (
                job_name,
                support::spawn_run(cluster.clone(), job, RunOptions::default()),
            )
        })
        .collect();

    // Both Jobs finish while the run sees none of it.
    let jobs: Api<Job> = Api::namespaced(direct.client.clone(), namespace);
    for (name, _) in &runs {
        tokio::time::timeout(
            Duration::from_secs(120),
            kube::runtime::wait::await_condition(jobs.clone(), name, finished),
        )
        .await
        .unwrap_or_else(|_| panic!("Job {name} did not finish within 120s"))
        .unwrap();
    }
    let held = proxy.requests();
    let stalled: Vec<&Request> = held.iter().filter(|r| r.fault == Some("stall")).collect();
    assert!(
        stalled.len() >= 2 && stalled.iter().all(|r| r.events == 0),
        "the Jobs' and the pods' watches are held: {stalled:#?}"
    );

    // etcd forgets the revisions the watches stand on; the held streams are dropped
    // (what they held is lost) and the watches resume from their resourceVersion.
    tokio::task::spawn_blocking(move || compact_etcd(plane.info()))
        .await
        .unwrap()
        .unwrap();
    proxy.close_watches();
    proxy.clear_faults();

    for ((name, run), (task, _)) in runs.into_iter().zip(tasks) {
        let (outcome, events) = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .unwrap_or_else(|_| panic!("the run of {name} did not end after the re-list"))
            .unwrap();
        let o = outcome.unwrap();
        let log = support::logs(&events, "task");
        if task == "ok" {
            assert_eq!((o.exit_code, &o.failure), (Some(0), &None), "{name}");
            assert_eq!(log, "one\ntwo\nthree\n", "{name}");
        } else {
            assert_eq!(
                (o.exit_code, o.failure.map(|f| f.0)),
                (Some(4), Some("task_failed")),
                "{name}"
            );
            assert_eq!(log, "before failing\n", "{name}");
        }
    }

    drop(watcher);
    // The proof: each resource's watch met 410, then its initial state was read again:
    // a new streaming watch, or a list.
    let log = proxy.requests();
    for resource in ["jobs", "pods"] {
        let path = format!(
            "/api{}/namespaces/{namespace}/{resource}",
            if resource == "jobs" {
                "s/batch/v1"
            } else {
                "/v1"
            }
        );
        let of_run = |r: &&Request| {
            r.path == path && r.param("labelSelector").as_deref() == Some("sykli.io/run=gone")
        };
        let gone = log
            .iter()
            .filter(of_run)
            .find(|r| r.watch && (r.status == 410 || r.watch_errors.contains(&410)))
            .unwrap_or_else(|| panic!("no 410 on the {resource} watch: {log:#?}"));
        let relisted = log.iter().filter(of_run).any(|r| {
            let streamed = r.param("sendInitialEvents").as_deref() == Some("true");
            let initial = if streaming {
                r.watch && streamed
            } else {
                !r.watch
            };
            initial && r.status == 200 && r.at > gone.at
        });
        assert!(
            relisted,
            "{resource} were listed again after the 410: {log:#?}"
        );
    }
    let left = jobs.list(&Default::default()).await.unwrap().items.len();
    assert_eq!(left, 0, "the run deleted its Jobs");
}
