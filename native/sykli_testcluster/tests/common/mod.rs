//! Helpers shared by the integration tests: a cluster in a temp dir, kube-rs clients from its
//! kubeconfig, raw requests, and waiting on watches (never on sleeps).

#![allow(dead_code)]

use std::time::Duration;

use http_body_util::BodyExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Client, Config};
use serde_json::{json, Value};
use sykli_testcluster::{ClusterOptions, TestCluster};

pub const WAIT: Duration = Duration::from_secs(90);

pub struct Env {
    pub cluster: TestCluster,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

pub fn options(dir: &std::path::Path) -> ClusterOptions {
    let mut o = ClusterOptions::new(dir);
    o.bookmark_interval = Duration::from_millis(200);
    o.backoff_base = Duration::from_millis(100);
    o.image_backoff = Duration::from_millis(200);
    o.retry_interval = Duration::from_millis(200);
    o
}

pub async fn env() -> Env {
    env_with(|_| {}).await
}

pub async fn env_with(f: impl FnOnce(&mut ClusterOptions)) -> Env {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut o = options(dir.path());
    f(&mut o);
    let cluster = TestCluster::start(o).expect("cluster starts");
    let client = client_for(&cluster, sykli_testcluster::CONTEXT).await;
    Env {
        cluster,
        client,
        dir,
    }
}

/// A kube-rs client built from the kubeconfig the cluster wrote.
pub async fn client_for(cluster: &TestCluster, context: &str) -> Client {
    let kc = Kubeconfig::read_from(cluster.kubeconfig()).expect("kubeconfig parses");
    let cfg = Config::from_custom_kubeconfig(
        kc,
        &KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        },
    )
    .await
    .expect("config from kubeconfig");
    Client::try_from(cfg).expect("client")
}

/// A kube-rs client without its default retries (kube 5 retries 429, 503 and 504 up to 15
/// times with growing delays): for looking at injected faults one by one.
pub async fn client_no_retry(cluster: &TestCluster) -> Client {
    let kc = Kubeconfig::read_from(cluster.kubeconfig()).expect("kubeconfig parses");
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig");
    cfg.default_retry = false;
    Client::try_from(cfg).expect("client")
}

/// A client whose token is `token` (same cluster and CA).
pub async fn client_with_token(cluster: &TestCluster, token: &str) -> Client {
    let text = std::fs::read_to_string(cluster.kubeconfig()).expect("kubeconfig");
    let mut v: Value = serde_json::from_str(&text).expect("json kubeconfig");
    for u in v["users"].as_array_mut().expect("users") {
        u["user"]["token"] = json!(token);
    }
    let kc = Kubeconfig::from_yaml(&v.to_string()).expect("kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

/// A client that sends no credentials.
pub async fn client_anonymous(cluster: &TestCluster) -> Client {
    let text = std::fs::read_to_string(cluster.kubeconfig()).expect("kubeconfig");
    let mut v: Value = serde_json::from_str(&text).expect("json kubeconfig");
    for u in v["users"].as_array_mut().expect("users") {
        u["user"] = json!({});
    }
    let kc = Kubeconfig::from_yaml(&v.to_string()).expect("kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(cfg).expect("client")
}

/// A raw request; returns (status, headers, body).
pub async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let mut b = http::Request::builder().method(method).uri(path);
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let req = b.body(kube::client::Body::from(bytes)).expect("request");
    let resp = client.send(req).await.expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

pub async fn raw_json(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, _, b) = raw(client, method, path, body).await;
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// A Job running `script` with `sh -c` in one container named `main`.
pub fn job(name: &str, script: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}]
            }}
        }
    })
}

pub fn typed_job(v: Value) -> Job {
    serde_json::from_value(v).expect("job")
}

pub async fn create_job(client: &Client, ns: &str, v: Value) -> Job {
    Api::<Job>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &typed_job(v))
        .await
        .expect("job created")
}

/// Waits (on a watch) until the Job satisfies `cond`.
pub async fn wait_job(
    client: &Client,
    ns: &str,
    name: &str,
    cond: impl Fn(&Job) -> bool + Send + 'static,
) -> Job {
    let api = Api::<Job>::namespaced(client.clone(), ns);
    let fut = await_condition(api, name, move |o: Option<&Job>| o.is_some_and(&cond));
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("job {name}: condition not reached in {WAIT:?}"))
        .expect("watch")
        .expect("job exists")
}

pub async fn wait_pod(
    client: &Client,
    ns: &str,
    name: &str,
    cond: impl Fn(&Pod) -> bool + Send + 'static,
) -> Pod {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let fut = await_condition(api, name, move |o: Option<&Pod>| o.is_some_and(&cond));
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("pod {name}: condition not reached in {WAIT:?}"))
        .expect("watch")
        .expect("pod exists")
}

pub async fn wait_pod_gone(client: &Client, ns: &str, name: &str) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let fut = await_condition(api, name, |o: Option<&Pod>| o.is_none());
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("pod {name} not deleted in {WAIT:?}"))
        .expect("watch");
}

pub fn job_condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// The single pod of a Job (by the job-name label), once it exists.
pub async fn job_pod(client: &Client, ns: &str, job: &str) -> Pod {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let sel = format!("batch.kubernetes.io/job-name={job}");
    let mut stream = Box::pin(kube::runtime::watcher(
        api,
        kube::runtime::watcher::Config::default().labels(&sel),
    ));
    use futures::StreamExt;
    let fut = async {
        while let Some(ev) = stream.next().await {
            match ev.expect("watch") {
                kube::runtime::watcher::Event::Apply(p)
                | kube::runtime::watcher::Event::InitApply(p) => return p,
                _ => {}
            }
        }
        panic!("watch ended")
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("job pod appears")
}

pub fn container_state(pod: &Pod, name: &str) -> Value {
    let st = pod.status.as_ref().expect("status");
    st.init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .map(|c| serde_json::to_value(&c.state).expect("state"))
        .unwrap_or(Value::Null)
}

pub fn waiting_reason(pod: &Pod, name: &str) -> Option<String> {
    container_state(pod, name)
        .pointer("/waiting/reason")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Creates a standalone pod from JSON.
pub async fn create_pod(client: &Client, ns: &str, v: Value) -> Pod {
    let pod: Pod = serde_json::from_value(v).expect("pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod created")
}

/// A pod running `script` with `sh -c` in one container named `main` (restartPolicy Never).
pub fn pod(name: &str, script: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}]
        }
    })
}

/// A pod that mounts claim `claim` at /data.
pub fn pod_with_claim(name: &str, claim: &str, script: &str) -> Value {
    let mut p = pod(name, script);
    p["spec"]["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    p
}

pub fn pod_phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub async fn wait_phase(client: &Client, ns: &str, name: &str, phase: &'static str) -> Pod {
    wait_pod(client, ns, name, move |p| pod_phase(p) == phase).await
}

/// The pod's Events as (type, reason, message).
pub async fn events_of(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    use k8s_openapi::api::core::v1::Event;
    let evs = Api::<Event>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("events");
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

/// Waits (on a watch of Events) until an Event about `name` has `reason`; returns it as
/// (type, reason, message).
pub async fn wait_event(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> (String, String, String) {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Event;
    let api = Api::<Event>::namespaced(client.clone(), ns);
    let cfg =
        kube::runtime::watcher::Config::default().fields(&format!("involvedObject.name={name}"));
    let mut stream = Box::pin(kube::runtime::watcher(api, cfg));
    let fut = async {
        while let Some(ev) = stream.next().await {
            match ev.expect("watch") {
                kube::runtime::watcher::Event::Apply(e)
                | kube::runtime::watcher::Event::InitApply(e)
                    if e.reason.as_deref() == Some(reason) =>
                {
                    return (
                        e.type_.unwrap_or_default(),
                        e.reason.unwrap_or_default(),
                        e.message.unwrap_or_default(),
                    );
                }
                _ => {}
            }
        }
        panic!("watch ended")
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("no {reason} Event for {name} in {WAIT:?}"))
}

/// What an exec returned.
#[derive(Debug)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
}

impl ExecOutput {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    pub fn succeeded(&self) -> bool {
        self.status.status.as_deref() == Some("Success")
    }

    /// The exit code a NonZeroExitCode status reports.
    pub fn exit_code(&self) -> Option<i32> {
        if self.status.reason.as_deref() != Some("NonZeroExitCode") {
            return None;
        }
        self.status
            .details
            .as_ref()?
            .causes
            .as_ref()?
            .iter()
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message.as_deref()?.parse().ok())
    }
}

/// Runs `command` in container `container` (None: the only one) of pod `name` with kube-rs's
/// exec, feeding `stdin` (None: no stdin stream) and collecting stdout, stderr and the status.
pub async fn exec(
    client: &Client,
    ns: &str,
    name: &str,
    container: Option<&str>,
    command: &[&str],
    stdin: Option<Vec<u8>>,
) -> Result<ExecOutput, kube::Error> {
    use kube::api::AttachParams;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ap = AttachParams::default()
        .stdin(stdin.is_some())
        .stdout(true)
        .stderr(true);
    if let Some(c) = container {
        ap = ap.container(c);
    }
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let fut = async {
        let mut p = api
            .exec(name, command.iter().map(|s| s.to_string()), &ap)
            .await?;
        let mut out = p.stdout().expect("stdout");
        let mut err = p.stderr().expect("stderr");
        let status = p.take_status().expect("status");
        let input = p.stdin();
        let feed = async move {
            if let (Some(mut w), Some(data)) = (input, stdin) {
                w.write_all(&data).await.expect("stdin");
                w.shutdown().await.expect("stdin closed");
            }
        };
        let read_out = async {
            let mut v = Vec::new();
            out.read_to_end(&mut v).await.expect("stdout");
            v
        };
        let read_err = async {
            let mut v = Vec::new();
            err.read_to_end(&mut v).await.expect("stderr");
            v
        };
        let (stdout, stderr, ()) = tokio::join!(read_out, read_err, feed);
        let status = status.await.expect("a status on the error channel");
        p.join().await.expect("the session ends cleanly");
        Ok(ExecOutput {
            stdout,
            stderr,
            status,
        })
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("exec into {name} did not end in {WAIT:?}"))
}

/// Follows the container's log until it has written `line`.
pub async fn wait_pod_log(client: &Client, ns: &str, name: &str, container: &str, line: &str) {
    use futures::{AsyncBufReadExt, StreamExt};
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let lp = kube::api::LogParams {
        container: Some(container.to_string()),
        follow: true,
        ..Default::default()
    };
    let stream = api.log_stream(name, &lp).await.expect("log stream");
    let mut lines = stream.lines();
    let fut = async {
        while let Some(l) = lines.next().await {
            if l.expect("log line") == line {
                return;
            }
        }
        panic!("{name}/{container} never logged {line:?}")
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{name}/{container} did not log {line:?} in {WAIT:?}"));
}
