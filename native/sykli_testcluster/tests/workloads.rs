//! Jobs and pods run by the controllers and the kubelet, with the statuses, conditions and
//! Events Kubernetes reports.

mod common;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use serde_json::{json, Value};

async fn events_for(client: &kube::Client, name: &str) -> Vec<(String, String, String)> {
    let evs = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap();
    evs.items
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

#[tokio::test]
async fn a_failing_command_exhausts_the_backoff_limit() {
    let env = env().await;
    let mut j = job(
        "fails",
        "echo boom > /dev/termination-log; echo oops >&2; exit 3",
    );
    j["spec"]["backoffLimit"] = json!(1);
    create_job(&env.client, "default", j).await;
    let done = wait_job(&env.client, "default", "fails", |j| {
        job_condition(j, "Failed").is_some()
    })
    .await;
    let st = done.status.as_ref().unwrap();
    assert_eq!(
        st.failed,
        Some(2),
        "backoffLimit 1: the first pod and one replacement"
    );
    assert_eq!(st.succeeded, None);
    assert!(
        st.completion_time.is_none(),
        "failed Jobs have no completionTime"
    );
    let types: Vec<&str> = st
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types, ["FailureTarget", "Failed"]);
    assert_eq!(
        job_condition(&done, "Failed").unwrap(),
        (
            "BackoffLimitExceeded".to_string(),
            "Job has reached the specified backoff limit".to_string()
        )
    );
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default")
        .list(&ListParams::default().labels("job-name=fails"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 2);
    for p in &pods.items {
        assert_eq!(phase(p), "Failed");
        let t = &container_state(p, "main")["terminated"];
        assert_eq!(t["exitCode"], 3);
        assert_eq!(t["reason"], "Error");
        assert_eq!(t["message"], "boom\n");
    }
    let evs = events_for(&env.client, "fails").await;
    assert_eq!(evs.iter().filter(|e| e.1 == "SuccessfulCreate").count(), 2);
    assert!(evs.contains(&(
        "Warning".into(),
        "BackoffLimitExceeded".into(),
        "Job has reached the specified backoff limit".into()
    )));
}

#[tokio::test]
async fn a_denied_image_is_never_pulled() {
    let env = env_with(|o| o.deny_images = vec!["registry.invalid/*".into()]).await;
    let mut j = job("pull", "true");
    j["spec"]["template"]["spec"]["containers"][0]["image"] = json!("registry.invalid/app:1");
    create_job(&env.client, "default", j).await;
    let pod = job_pod(&env.client, "default", "pull").await;
    let name = pod.metadata.name.unwrap();
    let pod = wait_pod(&env.client, "default", &name, |p| {
        waiting_reason(p, "main").as_deref() == Some("ImagePullBackOff")
    })
    .await;
    assert_eq!(phase(&pod), "Pending");
    assert_eq!(
        container_state(&pod, "main")["waiting"]["message"],
        "Back-off pulling image \"registry.invalid/app:1\""
    );
    let evs = events_for(&env.client, &name).await;
    let reasons: Vec<&str> = evs.iter().map(|e| e.1.as_str()).collect();
    for want in ["Scheduled", "Pulling", "Failed", "BackOff"] {
        assert!(reasons.contains(&want), "{evs:?}");
    }
    assert!(evs.contains(&(
        "Warning".into(),
        "Failed".into(),
        "Error: ErrImagePull".into()
    )));
    assert!(evs.contains(&(
        "Warning".into(),
        "Failed".into(),
        "Error: ImagePullBackOff".into()
    )));
    assert!(env.cluster.running_sandboxes().is_empty());
    // The Job keeps waiting; nothing ran.
    let j = Api::<Job>::namespaced(env.client.clone(), "default")
        .get("pull")
        .await
        .unwrap();
    assert_eq!(j.status.unwrap().active, Some(1));
}

#[tokio::test]
async fn a_missing_secret_holds_the_container_until_it_exists() {
    let env = env().await;
    let mut j = job("needs-secret", "echo \"token=$TOKEN\"");
    j["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]);
    create_job(&env.client, "default", j).await;
    let pod = job_pod(&env.client, "default", "needs-secret").await;
    let name = pod.metadata.name.unwrap();
    let pod = wait_pod(&env.client, "default", &name, |p| {
        waiting_reason(p, "main").as_deref() == Some("CreateContainerConfigError")
    })
    .await;
    assert_eq!(
        container_state(&pod, "main")["waiting"]["message"],
        "secret \"creds\" not found"
    );
    assert!(events_for(&env.client, &name).await.contains(&(
        "Warning".into(),
        "Failed".into(),
        "Error: secret \"creds\" not found".into()
    )));
    // Creating the Secret lets the kubelet start the container.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}
    }))
    .unwrap();
    let stored = Api::<Secret>::namespaced(env.client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert!(stored.string_data.is_none());
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
    wait_job(&env.client, "default", "needs-secret", |j| {
        job_condition(j, "Complete").is_some()
    })
    .await;
    let log = Api::<Pod>::namespaced(env.client.clone(), "default")
        .logs(&name, &Default::default())
        .await
        .unwrap();
    assert_eq!(log, "token=s3cret\n");
}

#[tokio::test]
async fn pods_that_match_no_node_stay_pending() {
    let env = env_with(|o| {
        o.node_labels.insert("disk".into(), "ssd".into());
    })
    .await;
    let mut j = job("picky", "true");
    j["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "hdd"});
    create_job(&env.client, "default", j).await;
    let pod = job_pod(&env.client, "default", "picky").await;
    let name = pod.metadata.name.unwrap();
    let pod = wait_pod(&env.client, "default", &name, |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "PodScheduled" && c.status == "False")
            })
    })
    .await;
    let c = pod
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap()
        .clone();
    assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
    let msg = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.";
    assert_eq!(c.message.as_deref(), Some(msg));
    assert_eq!(phase(&pod), "Pending");
    assert!(pod.spec.unwrap().node_name.is_none());
    assert!(events_for(&env.client, &name).await.contains(&(
        "Warning".into(),
        "FailedScheduling".into(),
        msg.into()
    )));
    // A selector and a required node affinity that the node's labels satisfy.
    let mut j = job("fits", "true");
    j["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    j["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["sykli-node"]}]}]}}});
    j["spec"]["template"]["spec"]["tolerations"] =
        json!([{"key": "any", "operator": "Exists", "effect": "NoSchedule"}]);
    create_job(&env.client, "default", j).await;
    wait_job(&env.client, "default", "fits", |j| {
        job_condition(j, "Complete").is_some()
    })
    .await;
}

#[tokio::test]
async fn the_active_deadline_fails_the_job_and_kills_its_pod() {
    let env = env().await;
    let mut j = job("slow", "echo started; exec sleep 600");
    j["spec"]["activeDeadlineSeconds"] = json!(2);
    create_job(&env.client, "default", j).await;
    let pod = job_pod(&env.client, "default", "slow").await;
    let name = pod.metadata.name.unwrap();
    wait_pod(&env.client, "default", &name, |p| phase(p) == "Running").await;
    let done = wait_job(&env.client, "default", "slow", |j| {
        job_condition(j, "Failed").is_some()
    })
    .await;
    assert_eq!(
        job_condition(&done, "Failed").unwrap(),
        (
            "DeadlineExceeded".to_string(),
            "Job was active longer than specified deadline".to_string()
        )
    );
    // The pod was deleted and its processes killed.
    wait_pod_gone(&env.client, "default", &name).await;
    assert!(env.cluster.running_sandboxes().is_empty());
    let evs = events_for(&env.client, "slow").await;
    assert!(evs.iter().any(|e| e.1 == "DeadlineExceeded"));
    assert!(evs.iter().any(|e| e.1 == "SuccessfulDelete"));
}

#[tokio::test]
async fn deleting_a_running_pod_stops_its_containers() {
    let env = env().await;
    create_job(&env.client, "default", job("victim", "exec sleep 600")).await;
    let pod = job_pod(&env.client, "default", "victim").await;
    let name = pod.metadata.name.clone().unwrap();
    wait_pod(&env.client, "default", &name, |p| phase(p) == "Running").await;
    assert!(!env.cluster.running_sandboxes().is_empty());
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default");
    let r = pods.delete(&name, &DeleteParams::default()).await.unwrap();
    let marked = r
        .left()
        .expect("a running pod is marked, then removed by the kubelet");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    wait_pod_gone(&env.client, "default", &name).await;
    let uid = pod.metadata.uid.clone().unwrap();
    let work_dir = env
        .cluster
        .dir()
        .join("pods")
        .join(format!("default_{name}_{uid}"));
    assert!(work_dir.is_dir());
    assert_eq!(
        sykli_testcluster::kubelet::sandboxes(Some(&work_dir)),
        Vec::<i32>::new()
    );
    // The killed pod ended Failed, and a deleted pod that failed counts against the Job's
    // backoffLimit (0 here), as with the job-tracking finalizer on a real cluster. The
    // replacement made at once for the terminating pod (podReplacementPolicy
    // TerminatingOrFailed) is deleted when the Job fails, and counts too if it had started.
    let done = wait_job(&env.client, "default", "victim", |j| {
        job_condition(j, "Failed").is_some()
    })
    .await;
    let failed = done.status.as_ref().unwrap().failed.unwrap_or(0);
    assert!((1..=2).contains(&failed), "{failed}");
    assert_eq!(
        job_condition(&done, "Failed").unwrap().0,
        "BackoffLimitExceeded"
    );
    let jobs = Api::<Job>::namespaced(env.client.clone(), "default");
    jobs.delete("victim", &DeleteParams::background())
        .await
        .unwrap();
}

#[tokio::test]
async fn propagation_policies_decide_what_happens_to_pods() {
    let env = env().await;
    let jobs = Api::<Job>::namespaced(env.client.clone(), "default");
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default");

    // Foreground: the Job stays, marked, until its pods are gone.
    create_job(&env.client, "default", job("fg", "exec sleep 600")).await;
    let pod = job_pod(&env.client, "default", "fg").await;
    let fg_pod = pod.metadata.name.unwrap();
    let r = jobs
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    let marked = r.left().expect("foreground deletion returns the object");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(
        marked.metadata.finalizers.as_deref(),
        Some(&["foregroundDeletion".to_string()][..])
    );
    wait_pod_gone(&env.client, "default", &fg_pod).await;
    let api = jobs.clone();
    tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(api, "fg", |o: Option<&Job>| o.is_none()),
    )
    .await
    .unwrap()
    .unwrap();

    // Orphan (also the default for batch/v1 Jobs, with a warning): pods stay, unowned.
    create_job(&env.client, "default", job("orphan", "true")).await;
    let pod = job_pod(&env.client, "default", "orphan").await;
    let orphan_pod = pod.metadata.name.unwrap();
    let (code, headers, _) = raw(
        &env.client,
        "DELETE",
        "/apis/batch/v1/namespaces/default/jobs/orphan",
        None,
    )
    .await;
    assert_eq!(code, 200);
    let warning = headers.get("warning").unwrap().to_str().unwrap();
    assert!(
        warning.contains("child pods are preserved by default when jobs are deleted"),
        "{warning}"
    );
    tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(jobs.clone(), "orphan", |o: Option<&Job>| o.is_none()),
    )
    .await
    .unwrap()
    .unwrap();
    let p = wait_pod(&env.client, "default", &orphan_pod, |p| {
        p.metadata.owner_references.is_none()
    })
    .await;
    assert!(p.metadata.deletion_timestamp.is_none());
    // An explicit policy in DeleteOptions (kube-rs sends it in the body).
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    create_job(&env.client, "default", job("bg", "true")).await;
    let bg_pod = job_pod(&env.client, "default", "bg")
        .await
        .metadata
        .name
        .unwrap();
    jobs.delete("bg", &dp).await.unwrap();
    wait_pod_gone(&env.client, "default", &bg_pod).await;
    assert!(pods.get_opt(&orphan_pod).await.unwrap().is_some());
    // An unknown policy is invalid.
    let (code, st) = raw_json(
        &env.client,
        "DELETE",
        &format!("/api/v1/namespaces/default/pods/{orphan_pod}"),
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Sideways"})),
    )
    .await;
    assert_eq!(code, 422, "{st}");
}

#[tokio::test]
async fn finished_jobs_are_deleted_after_their_ttl() {
    let env = env().await;
    let mut j = job("short-lived", "true");
    j["spec"]["ttlSecondsAfterFinished"] = json!(0);
    create_job(&env.client, "default", j).await;
    let jobs = Api::<Job>::namespaced(env.client.clone(), "default");
    let saw: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
    let seen = saw.clone();
    tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(jobs, "short-lived", move |o: Option<&Job>| {
            if o.is_some() {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            o.is_none() && seen.load(std::sync::atomic::Ordering::SeqCst)
        }),
    )
    .await
    .unwrap()
    .unwrap();
}

#[tokio::test]
async fn init_containers_volumes_and_claims_run_in_order() {
    let env = env().await;
    let pvcs = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
        env.client.clone(),
        "default",
    );
    let pvc = serde_json::from_value(json!({"metadata": {"name": "cache"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
    .unwrap();
    let stored = pvcs.create(&PostParams::default(), &pvc).await.unwrap();
    assert_eq!(stored.status.unwrap().phase.as_deref(), Some("Bound"));
    let j: Value = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "steps"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "work", "emptyDir": {}}, {"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}}],
            "initContainers": [{"name": "prepare", "image": "busybox", "command": ["sh", "-c", "echo prepared > /work/x; echo init-log"],
                                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "cat /work/x; echo kept > /cache/y"],
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}, {"name": "cache", "mountPath": "/cache"}]}]
        }}}
    });
    create_job(&env.client, "default", j).await;
    wait_job(&env.client, "default", "steps", |j| {
        job_condition(j, "Complete").is_some()
    })
    .await;
    let pod = job_pod(&env.client, "default", "steps").await;
    let name = pod.metadata.name.unwrap();
    let pod = wait_pod(&env.client, "default", &name, |p| phase(p) == "Succeeded").await;
    assert_eq!(
        container_state(&pod, "prepare")["terminated"]["reason"],
        "Completed"
    );
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default");
    let lp = kube::api::LogParams {
        container: Some("main".into()),
        ..Default::default()
    };
    assert_eq!(pods.logs(&name, &lp).await.unwrap(), "prepared\n");
    let lp = kube::api::LogParams {
        container: Some("prepare".into()),
        ..Default::default()
    };
    assert_eq!(pods.logs(&name, &lp).await.unwrap(), "init-log\n");
    // Without a container name the API asks for one.
    let (code, st) = raw_json(
        &env.client,
        "GET",
        &format!("/api/v1/namespaces/default/pods/{name}/log"),
        None,
    )
    .await;
    assert_eq!(code, 200, "one main container: no name needed");
    let _ = st;
    let claim_dir = env.cluster.dir().join("pvcs/default/cache");
    assert_eq!(
        std::fs::read_to_string(claim_dir.join("y")).unwrap(),
        "kept\n"
    );
}

#[tokio::test]
async fn parallel_jobs_keep_at_most_parallelism_pods() {
    let env = env().await;
    let mut j = job("par", "echo done");
    j["spec"]["completions"] = json!(3);
    j["spec"]["parallelism"] = json!(2);
    let jobs = Api::<Job>::namespaced(env.client.clone(), "default");
    let rv = jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let stream = jobs
        .watch(&kube::api::WatchParams::default().timeout(60), &rv)
        .await
        .unwrap();
    create_job(&env.client, "default", j).await;
    let mut stream = Box::pin(stream);
    let mut max_active = 0;
    let fut = async {
        use futures::TryStreamExt;
        while let Some(ev) = stream.try_next().await.unwrap() {
            if let kube::api::WatchEvent::Modified(j) = ev {
                let st = j.status.clone().unwrap_or_default();
                max_active = max_active.max(st.active.unwrap_or(0));
                if job_condition(&j, "Complete").is_some() {
                    return j;
                }
            }
        }
        panic!("watch ended");
    };
    let done = tokio::time::timeout(WAIT, fut).await.unwrap();
    assert_eq!(max_active, 2);
    assert_eq!(done.status.unwrap().succeeded, Some(3));
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default")
        .list(&ListParams::default().labels("job-name=par"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 3);
}

#[tokio::test]
async fn a_suspended_job_runs_nothing() {
    let env = env().await;
    let mut j = job("later", "true");
    j["spec"]["suspend"] = json!(true);
    create_job(&env.client, "default", j).await;
    let j = wait_job(&env.client, "default", "later", |j| {
        job_condition(j, "Suspended").is_some()
    })
    .await;
    assert_eq!(
        job_condition(&j, "Suspended").unwrap(),
        ("JobSuspended".to_string(), "Job suspended".to_string())
    );
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default")
        .list(&ListParams::default().labels("job-name=later"))
        .await
        .unwrap();
    assert!(pods.items.is_empty());
    assert!(j.status.unwrap().start_time.is_none());
}

#[tokio::test]
async fn logs_since_and_limited() {
    let env = env().await;
    create_job(
        &env.client,
        "default",
        job("chatty", "echo one; echo two; echo three"),
    )
    .await;
    wait_job(&env.client, "default", "chatty", |j| {
        job_condition(j, "Complete").is_some()
    })
    .await;
    let name = job_pod(&env.client, "default", "chatty")
        .await
        .metadata
        .name
        .unwrap();
    let path = format!("/api/v1/namespaces/default/pods/{name}/log");
    let (_, _, body) = raw(&env.client, "GET", &format!("{path}?limitBytes=6"), None).await;
    assert_eq!(String::from_utf8(body).unwrap(), "one\ntw");
    let (_, _, body) = raw(
        &env.client,
        "GET",
        &format!("{path}?sinceSeconds=3600"),
        None,
    )
    .await;
    assert_eq!(String::from_utf8(body).unwrap(), "one\ntwo\nthree\n");
    let (_, _, body) = raw(
        &env.client,
        "GET",
        &format!("{path}?sinceTime=2999-01-01T00:00:00Z"),
        None,
    )
    .await;
    assert_eq!(String::from_utf8(body).unwrap(), "");
    let (code, _) = raw_json(&env.client, "GET", &format!("{path}?sinceSeconds=0"), None).await;
    assert_eq!(code, 422);
}

#[tokio::test]
async fn sidecars_start_with_the_main_container_after_the_init_containers() {
    let env = env().await;
    let fifo_dir = env.dir.path().join("fifo");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    let fifo = fifo_dir.join("go");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    let j = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "svc"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "sync", "hostPath": {"path": fifo_dir.to_str().unwrap()}}],
            "initContainers": [
                {"name": "clone", "image": "busybox", "command": ["sh", "-c", "echo cloned"]},
                {"name": "db", "image": "busybox", "restartPolicy": "Always", "command": ["sh", "-c", "exec sleep 600"]}
            ],
            "containers": [{"name": "task", "image": "busybox", "command": ["sh", "-c", "echo up; read l < /sync/go; echo done"],
                            "volumeMounts": [{"name": "sync", "mountPath": "/sync"}]}]
        }}}
    });
    create_job(&env.client, "default", j).await;
    let name = job_pod(&env.client, "default", "svc")
        .await
        .metadata
        .name
        .unwrap();
    let pod = wait_pod(&env.client, "default", &name, |p| {
        container_state(p, "task").get("running").is_some() && phase(p) == "Running"
    })
    .await;
    assert_eq!(
        container_state(&pod, "clone")["terminated"]["reason"],
        "Completed"
    );
    assert!(
        container_state(&pod, "db").get("running").is_some(),
        "{:?}",
        container_state(&pod, "db")
    );
    let st = pod.status.as_ref().unwrap();
    let db = st
        .init_container_statuses
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.name == "db")
        .unwrap();
    assert_eq!(db.started, Some(true));
    let initialized = st
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Initialized")
        .unwrap();
    assert_eq!(initialized.status, "True");
    let writer = std::thread::spawn(move || std::fs::write(&fifo, "go\n").unwrap());
    let pod = wait_pod(&env.client, "default", &name, |p| phase(p) == "Succeeded").await;
    writer.join().unwrap();
    assert_eq!(container_state(&pod, "task")["terminated"]["exitCode"], 0);
    assert!(container_state(&pod, "db").get("terminated").is_some());
    wait_job(&env.client, "default", "svc", |j| {
        job_condition(j, "Complete").is_some()
    })
    .await;
}

#[tokio::test]
async fn admission_refuses_pods_with_unknown_accounts_or_priority_classes() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let env = env().await;
    let mut j = job("acct", "true");
    j["spec"]["template"]["spec"]["serviceAccountName"] = json!("builder");
    j["spec"]["template"]["spec"]["priorityClassName"] = json!("high");
    create_job(&env.client, "default", j).await;
    let evs = Api::<Event>::namespaced(env.client.clone(), "default");
    let fut = async {
        let mut stream = Box::pin(kube::runtime::watcher(
            evs.clone(),
            kube::runtime::watcher::Config::default()
                .fields("involvedObject.name=acct,reason=FailedCreate"),
        ));
        use futures::StreamExt;
        while let Some(ev) = stream.next().await {
            if let Ok(
                kube::runtime::watcher::Event::Apply(e)
                | kube::runtime::watcher::Event::InitApply(e),
            ) = ev
            {
                return e.message.unwrap_or_default();
            }
        }
        panic!("watch ended");
    };
    let msg = tokio::time::timeout(WAIT, fut).await.unwrap();
    assert_eq!(msg, "Error creating: pods \"acct-\" is forbidden: error looking up service account default/builder: serviceaccount \"builder\" not found");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "builder"}})).unwrap();
    Api::<ServiceAccount>::namespaced(env.client.clone(), "default")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    // Now the priority class is what is missing.
    let fut = async {
        loop {
            let list = evs
                .list(&ListParams::default().fields("involvedObject.name=acct,reason=FailedCreate"))
                .await
                .unwrap();
            if let Some(m) = list
                .items
                .iter()
                .filter_map(|e| e.message.clone())
                .find(|m| m.contains("PriorityClass"))
            {
                return m;
            }
            // Bounded by the timeout; waits on the next event rather than polling blindly.
            let rv = list.metadata.resource_version.unwrap();
            let mut w = Box::pin(
                evs.watch(&kube::api::WatchParams::default().timeout(5), &rv)
                    .await
                    .unwrap(),
            );
            use futures::TryStreamExt;
            let _ = w.try_next().await;
        }
    };
    let msg = tokio::time::timeout(WAIT, fut).await.unwrap();
    assert_eq!(
        msg,
        "Error creating: pods \"acct-\" is forbidden: no PriorityClass with name high was found"
    );
    let pc: PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": "high"}, "value": 1000})).unwrap();
    Api::<PriorityClass>::all(env.client.clone())
        .create(&PostParams::default(), &pc)
        .await
        .unwrap();
    wait_job(&env.client, "default", "acct", |j| {
        job_condition(j, "Complete").is_some()
    })
    .await;
    let pod = job_pod(&env.client, "default", "acct").await;
    let spec = pod.spec.unwrap();
    assert_eq!(spec.priority, Some(1000));
    assert_eq!(
        spec.preemption_policy.as_deref(),
        Some("PreemptLowerPriority")
    );
    // Namespaces get their default account.
    let sas = Api::<ServiceAccount>::namespaced(env.client.clone(), "kube-system");
    assert!(sas.get_opt("default").await.unwrap().is_some());
}

#[tokio::test]
async fn a_pod_removed_before_it_was_counted_still_fails_the_job() {
    // Without a job-tracking finalizer a pod can vanish between two controller syncs; the
    // controller must count it from what it last saw, or the Job runs a replacement forever.
    let env = env().await;
    create_job(&env.client, "default", job("vanished", "exec sleep 600")).await;
    let pod = job_pod(&env.client, "default", "vanished").await;
    let name = pod.metadata.name.clone().unwrap();
    wait_pod(&env.client, "default", &name, |p| phase(p) == "Running").await;
    assert!(env
        .cluster
        .store()
        .delete(sykli_testcluster::Res::Pod, "default", &name)
        .is_some());
    let done = wait_job(&env.client, "default", "vanished", |j| {
        job_condition(j, "Failed").is_some()
    })
    .await;
    assert_eq!(
        job_condition(&done, "Failed").unwrap().0,
        "BackoffLimitExceeded"
    );
    assert!(done.status.as_ref().unwrap().failed.unwrap_or(0) >= 1);
}

/// Waits (on a watch) until the object `name` of `api` satisfies `cond` (None: it is gone).
async fn wait_for<K>(api: Api<K>, name: &str, cond: impl Fn(Option<&K>) -> bool + Send + 'static)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(WAIT, kube::runtime::wait::await_condition(api, name, cond))
        .await
        .unwrap_or_else(|_| panic!("{name}: condition not reached in {WAIT:?}"))
        .unwrap();
}

fn owned_secret(name: &str, owners: Value) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owners},
        "stringData": {"k": "v"}
    }))
    .unwrap()
}

fn job_ref(job: &Job) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "name": job.metadata.name,
           "uid": job.metadata.uid, "controller": false, "blockOwnerDeletion": false})
}

fn owner_uids(meta: &kube::api::ObjectMeta) -> Vec<String> {
    meta.owner_references
        .iter()
        .flatten()
        .map(|r| r.uid.clone())
        .collect()
}

#[tokio::test]
async fn the_garbage_collector_deletes_any_dependent_whose_owners_are_gone() {
    let env = env().await;
    let jobs = Api::<Job>::namespaced(env.client.clone(), "default");
    let secrets = Api::<Secret>::namespaced(env.client.clone(), "default");
    let pp = PostParams::default();

    // Background propagation: the Job goes at once, its Secret after it; a dependent with
    // another live owner only loses the reference to the Job.
    let owner = create_job(&env.client, "default", job("owner", "true")).await;
    let keeper = secrets
        .create(&pp, &owned_secret("keeper", json!([])))
        .await
        .unwrap();
    secrets
        .create(&pp, &owned_secret("dep", json!([job_ref(&owner)])))
        .await
        .unwrap();
    let keeper_ref = json!({"apiVersion": "v1", "kind": "Secret", "name": "keeper",
                            "uid": keeper.metadata.uid});
    secrets
        .create(
            &pp,
            &owned_secret("shared", json!([job_ref(&owner), keeper_ref])),
        )
        .await
        .unwrap();
    // A kind this server does not serve cannot be resolved: left alone, as the real GC does.
    secrets
        .create(
            &pp,
            &owned_secret(
                "foreign",
                json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u-rs"}]),
            ),
        )
        .await
        .unwrap();
    jobs.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_for(secrets.clone(), "dep", |s: Option<&Secret>| s.is_none()).await;
    let keeper_uid = keeper.metadata.uid.clone().unwrap();
    wait_for(secrets.clone(), "shared", move |s: Option<&Secret>| {
        s.is_some_and(|s| owner_uids(&s.metadata) == [keeper_uid.clone()])
    })
    .await;
    // An owner that never existed (same name, another uid) is gone too.
    let again = create_job(&env.client, "default", job("owner", "true")).await;
    let mut stale = job_ref(&again);
    stale["uid"] = json!("not-the-owners-uid");
    secrets
        .create(&pp, &owned_secret("stale", json!([stale])))
        .await
        .unwrap();
    wait_for(secrets.clone(), "stale", |s: Option<&Secret>| s.is_none()).await;
    assert!(secrets.get_opt("foreign").await.unwrap().is_some());
    assert!(jobs.get_opt("owner").await.unwrap().is_some());

    // Orphan: the dependent stays, unowned.
    let orphaning = create_job(&env.client, "default", job("orphaning", "true")).await;
    secrets
        .create(&pp, &owned_secret("orphaned", json!([job_ref(&orphaning)])))
        .await
        .unwrap();
    jobs.delete("orphaning", &DeleteParams::orphan())
        .await
        .unwrap();
    wait_for(jobs.clone(), "orphaning", |j: Option<&Job>| j.is_none()).await;
    wait_for(secrets.clone(), "orphaned", |s: Option<&Secret>| {
        s.is_some_and(|s| s.metadata.owner_references.is_none())
    })
    .await;

    // Foreground: the dependent is deleted; without blockOwnerDeletion it does not hold the
    // owner, which goes once its pods (that block it) are gone.
    let fg = create_job(&env.client, "default", job("fg-owner", "true")).await;
    secrets
        .create(&pp, &owned_secret("fg-dep", json!([job_ref(&fg)])))
        .await
        .unwrap();
    jobs.delete("fg-owner", &DeleteParams::foreground())
        .await
        .unwrap();
    wait_for(secrets.clone(), "fg-dep", |s: Option<&Secret>| s.is_none()).await;
    wait_for(jobs.clone(), "fg-owner", |j: Option<&Job>| j.is_none()).await;
}

#[tokio::test]
async fn owner_references_are_validated_as_the_api_server_does() {
    let env = env().await;
    let (code, st) = raw_json(
        &env.client,
        "POST",
        "/api/v1/namespaces/default/secrets",
        Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad", "ownerReferences": [
            {"apiVersion": "", "kind": "Job", "name": "a", "uid": ""},
            {"apiVersion": "batch/v1", "kind": "Job", "name": "b", "uid": "1", "controller": true},
            {"apiVersion": "batch/v1", "kind": "Job", "name": "c", "uid": "2", "controller": true}]}})),
    )
    .await;
    assert_eq!(code, 422, "{st}");
    let message = st["message"].as_str().unwrap();
    for part in [
        "metadata.ownerReferences.apiVersion: Invalid value: \"\": version must not be empty",
        "metadata.ownerReferences.uid: Invalid value: \"\": must not be empty",
        "Only one reference can have Controller set to true. Found \"true\" in references for Job/b and Job/c",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
}
