//! kube-rs, configured from the kubeconfig the cluster writes, against the test cluster over
//! TLS: the calls the product makes (create, get, list, watch, logs, delete).

mod common;

use common::*;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};

#[tokio::test]
async fn job_runs_to_completion_and_serves_its_log() {
    let env = env().await;
    let jobs = Api::<Job>::namespaced(env.client.clone(), "default");
    let created = create_job(&env.client, "default", job("hello", "echo hi")).await;
    let meta = &created.metadata;
    assert_eq!(meta.name.as_deref(), Some("hello"));
    assert!(meta.uid.is_some());
    assert_eq!(meta.generation, Some(1));
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.completions, Some(1));
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(labels["batch.kubernetes.io/job-name"], "hello");
    assert_eq!(labels["controller-uid"], *meta.uid.as_ref().unwrap());

    let got = jobs.get("hello").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let list = jobs.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    let done = wait_job(&env.client, "default", "hello", |j| {
        job_condition(j, "Complete").is_some()
    })
    .await;
    let st = done.status.as_ref().unwrap();
    assert_eq!(st.succeeded, Some(1));
    assert!(st.start_time.is_some() && st.completion_time.is_some());
    let types: Vec<&str> = st
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
    assert_eq!(
        job_condition(&done, "Complete").unwrap().0,
        "CompletionsReached"
    );

    let pod = job_pod(&env.client, "default", "hello").await;
    let pod_name = pod.metadata.name.clone().unwrap();
    assert!(pod_name.starts_with("hello-") && pod_name.len() == "hello-".len() + 5);
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "Job");
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default");
    let pod = wait_pod(&env.client, "default", &pod_name, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
    })
    .await;
    let state = container_state(&pod, "main");
    assert_eq!(state["terminated"]["exitCode"], 0);
    assert_eq!(state["terminated"]["reason"], "Completed");
    let log = pods.logs(&pod_name, &LogParams::default()).await.unwrap();
    assert_eq!(log, "hi\n");

    // Delete with Background propagation: the Job goes at once, its pod shortly after.
    let r = jobs
        .delete("hello", &DeleteParams::background())
        .await
        .unwrap();
    assert!(r.is_right(), "a Job deleted at once answers with a Status");
    assert!(jobs.get_opt("hello").await.unwrap().is_none());
    wait_pod_gone(&env.client, "default", &pod_name).await;
}

#[tokio::test]
async fn watch_reports_the_job_through_to_completion() {
    let env = env().await;
    let jobs = Api::<Job>::namespaced(env.client.clone(), "default");
    let list = jobs.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let stream = jobs
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .unwrap();
    create_job(&env.client, "default", job("w", "true")).await;
    let mut stream = Box::pin(stream);
    let mut seen = Vec::new();
    let fut = async {
        while let Some(ev) = stream.try_next().await.unwrap() {
            match ev {
                WatchEvent::Added(j) => seen.push(("ADDED", j)),
                WatchEvent::Modified(j) => {
                    let complete = job_condition(&j, "Complete").is_some();
                    seen.push(("MODIFIED", j));
                    if complete {
                        return;
                    }
                }
                WatchEvent::Deleted(j) => seen.push(("DELETED", j)),
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => panic!("watch error {e:?}"),
            }
        }
        panic!("watch ended before the Job completed");
    };
    tokio::time::timeout(WAIT, fut).await.unwrap();
    assert_eq!(seen[0].0, "ADDED");
    // Versions increase along the stream.
    let rvs: Vec<u64> = seen
        .iter()
        .map(|(_, j)| {
            j.metadata
                .resource_version
                .as_ref()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
    // The status went through active=1 before it completed.
    assert!(seen
        .iter()
        .any(|(_, j)| j.status.as_ref().and_then(|s| s.active) == Some(1)));
}

#[tokio::test]
async fn log_follow_streams_lines_while_the_container_runs() {
    let env = env().await;
    let fifo_dir = env.dir.path().join("fifo");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    let fifo = fifo_dir.join("go");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    std::fs::set_permissions(
        &fifo_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let script = "echo first; read line < /sync/go; echo \"second $line\"";
    let mut j = job("follow", script);
    j["spec"]["template"]["spec"]["volumes"] =
        serde_json::json!([{"name": "sync", "hostPath": {"path": fifo_dir.to_str().unwrap()}}]);
    j["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] =
        serde_json::json!([{"name": "sync", "mountPath": "/sync"}]);
    create_job(&env.client, "default", j).await;
    let pod = job_pod(&env.client, "default", "follow").await;
    let name = pod.metadata.name.unwrap();
    wait_pod(&env.client, "default", &name, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default");
    let reader = pods
        .log_stream(
            &name,
            &LogParams {
                follow: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    let mut lines = reader.lines();
    let first = tokio::time::timeout(WAIT, lines.next()).await.unwrap();
    assert_eq!(first.unwrap().unwrap(), "first");
    // The container is blocked on the FIFO: the stream is live, not a finished log.
    let writer = std::thread::spawn(move || std::fs::write(&fifo, "go\n").unwrap());
    let second = tokio::time::timeout(WAIT, lines.next()).await.unwrap();
    assert_eq!(second.unwrap().unwrap(), "second go");
    writer.join().unwrap();
    // The stream ends when the container terminates.
    let end = tokio::time::timeout(WAIT, lines.next()).await.unwrap();
    assert!(end.is_none());
    let pod = wait_pod(&env.client, "default", &name, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
    })
    .await;
    assert_eq!(container_state(&pod, "main")["terminated"]["exitCode"], 0);
    // tailLines and timestamps.
    let tail = pods
        .logs(
            &name,
            &LogParams {
                tail_lines: Some(1),
                timestamps: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    let (ts, rest) = tail.split_once(' ').unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{tail}");
    assert_eq!(rest, "second go\n");
}

#[tokio::test]
async fn kube_runtime_watcher_lists_then_watches() {
    let env = env().await;
    create_job(&env.client, "default", job("rt", "true")).await;
    let api = Api::<Job>::namespaced(env.client.clone(), "default");
    let stream = kube::runtime::watcher(
        api,
        kube::runtime::watcher::Config::default().any_semantic(),
    );
    let fut = async {
        let mut stream = Box::pin(stream);
        while let Some(ev) = stream.next().await {
            if let kube::runtime::watcher::Event::Apply(j)
            | kube::runtime::watcher::Event::InitApply(j) = ev.unwrap()
            {
                if job_condition(&j, "Complete").is_some() {
                    return j;
                }
            }
        }
        panic!("watcher ended");
    };
    let j = tokio::time::timeout(WAIT, fut).await.unwrap();
    assert_eq!(j.metadata.name.as_deref(), Some("rt"));
    // And with bookmarks and streaming lists.
    let api = Api::<Job>::namespaced(env.client.clone(), "default");
    let cfg = kube::runtime::watcher::Config::default().streaming_lists();
    let mut stream = Box::pin(kube::runtime::watcher(api, cfg));
    let fut = async {
        let mut got = false;
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                kube::runtime::watcher::Event::InitApply(j) => {
                    got = j.metadata.name.as_deref() == Some("rt")
                }
                kube::runtime::watcher::Event::InitDone => return got,
                _ => {}
            }
        }
        false
    };
    assert!(tokio::time::timeout(WAIT, fut).await.unwrap());
    let _ = PostParams::default();
}
