//! Submitting tasks to Kubernetes: sykli's watch-based `run_job` side by side with a 1-second
//! polling loop (create the Job, GET it every second until it has a Complete or Failed
//! condition, read the log, delete it), against the real components: `sykli-kube up`
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, two virtual-kubelet
//! nodes running pods in bubblewrap), in child processes. Every client request goes through
//! the test kit's proxy (`kube_proxy`, in this process), whose log counts them.
//!
//! Four measurements, in one run:
//!
//! 1. completion-detection latency: from the moment the container prints its last line (the
//!    wall clock in nanoseconds, `date +%s%N`, just before it exits) to the moment the client
//!    knows the result; beside it, when a watcher of this process (straight to the API
//!    server) first saw the pod's terminated state and the Job's condition;
//! 2. API requests per task, for a 10 s and a 60 s task, from the proxy's log;
//! 3. CONCURRENT (200) tasks of one run through one client, per method: correctness, wall
//!    time, requests per task, watch requests, the client's peak RSS;
//! 4. MANY (1,000) tasks of one run through one sykli client: the same.
//!
//! For (3) and (4) each client is a fresh process of its own (`--client METHOD N NAMESPACE
//! KUBECONFIG`) reporting its VmHWM, so that no client's RSS includes the proxy.
//!
//! Usage: cargo run --release -p sykli-bench --bin submit [-- LATENCY_TASKS CONCURRENT LONG_SECS MANY]
//! (default 20 200 60 1000; needs ~/.cache/sykli/bin/sykli-kube and the pod runner:
//! scripts/setup, `cargo build -p sykli_testkit --bins`)

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{run_job, Event, Outcome, Phase, RunOptions};
use sykli_core::cluster::{Cluster, ConnectOptions};
use sykli_core::manifest::{build_job, names, BuildOptions, TASK_CONTAINER};
use sykli_core::pipeline::Task;
use sykli_core::source::SourcePlan;
use sykli_testkit::kube::{ControlPlane, ControlPlaneOptions};
use sykli_testkit::kube_proxy::{KubeProxy, Request};

const SHORT_SECS: u64 = 10;
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long each of the concurrent tasks stays alive after printing, so that all of them
/// are in flight at once (pods, log streams, watch cache).
const HOLD_SECS: u64 = 5;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// What a watcher of its own sees, straight from the API server.

/// When a watcher in this process, straight to the API server (not through the proxy),
/// first saw the terminal status of one Job's task.
#[derive(Debug, Clone, Copy, Default)]
struct StatusTimes {
    /// The node's kubelet had written the task container's `terminated` state.
    pod_terminated_ns: Option<i64>,
    /// The Job controller had written the Complete (or Failed) condition.
    job_finished_ns: Option<i64>,
}

type Times = Arc<Mutex<BTreeMap<String, StatusTimes>>>;

/// Watches every pod and Job of the cluster, noting for each Job the first time its pod's
/// task container is terminated and the first time it has a Complete or Failed condition.
fn observe(client: kube::Client, times: Times) {
    use futures::StreamExt;
    use kube::runtime::watcher::{watcher, Config as WatchConfig, Event as WatchEvent};
    let pods = {
        let times = Arc::clone(&times);
        watcher(Api::<Pod>::all(client.clone()), WatchConfig::default()).for_each(move |e| {
            if let Ok(WatchEvent::Apply(pod) | WatchEvent::InitApply(pod)) = e {
                note_pod(&pod, now_ns(), &times);
            }
            std::future::ready(())
        })
    };
    let jobs = watcher(Api::<Job>::all(client), WatchConfig::default()).for_each(move |e| {
        if let Ok(WatchEvent::Apply(job) | WatchEvent::InitApply(job)) = e {
            note_job(&job, now_ns(), &times);
        }
        std::future::ready(())
    });
    tokio::spawn(pods);
    tokio::spawn(jobs);
}

fn note_pod(pod: &Pod, at: i64, times: &Mutex<BTreeMap<String, StatusTimes>>) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let Some(job) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Job")
    else {
        return;
    };
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.name == TASK_CONTAINER && c.state.as_ref().is_some_and(|s| s.terminated.is_some())
        });
    if terminated {
        let mut times = times.lock().unwrap();
        let t = times.entry(format!("{ns}/{}", job.name)).or_default();
        t.pod_terminated_ns.get_or_insert(at);
    }
}

fn note_job(job: &Job, at: i64, times: &Mutex<BTreeMap<String, StatusTimes>>) {
    let finished = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    if finished {
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let mut times = times.lock().unwrap();
        let t = times.entry(format!("{ns}/{name}")).or_default();
        t.job_finished_ns.get_or_insert(at);
    }
}

/// The process's resident set size (kB) of `field` (VmRSS, VmHWM) of /proc/`pid`/status.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn proc_status_kib(field: &str) -> u64 {
    proc_kib(std::process::id(), field)
}

// ---------------------------------------------------------------------------------------
// The two clients.

fn job(name: &str, run: &str, namespace: &str, command: &str) -> Job {
    let task: Task = serde_json::from_value(json!({
        "name": name, "container": "any", "command": command
    }))
    .expect("a task");
    let opts: BuildOptions = serde_json::from_value(json!({
        "namespace": namespace, "run_id": run,
        // No mounts: the Job has no clone container, the source is never fetched.
        "source": {"url": "https://git.example.invalid/bench.git", "sha": "0123456789abcdef0123456789abcdef01234567"}
    }))
    .expect("build options");
    let plan = SourcePlan::from_options(&opts.source).expect("a source plan");
    build_job(
        &task,
        &BTreeMap::new(),
        &names::job_name(name, run),
        &plan,
        &opts,
    )
    .expect("a Job")
}

/// What one task's run gave the client.
struct Run {
    job: String,
    namespace: String,
    succeeded: bool,
    error: Option<String>,
    /// The task container's log lines.
    log: Vec<String>,
    /// The client knows the result (sykli: the Cleaning phase, after the verdict and the
    /// log; polling: the GET that shows the condition).
    known_ns: Option<i64>,
    /// The call returned (after deleting the Job).
    returned_ns: i64,
}

impl Run {
    /// The nanosecond timestamp the task printed last.
    fn exit_ns(&self) -> Option<i64> {
        self.log.iter().rev().find_map(|l| l.trim().parse().ok())
    }
}

async fn run_sykli(cluster: Arc<Cluster>, job: Job) -> Run {
    let name = job.metadata.name.clone().unwrap_or_default();
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
    // Timestamps the events as they arrive; nothing is sent after Cleaning.
    let collector = tokio::spawn(async move {
        let mut log = Vec::new();
        while let Some(event) = rx.recv().await {
            match event {
                Event::Phase {
                    phase: Phase::Cleaning,
                    ..
                } => return (Some(now_ns()), log),
                Event::Log { container, line } if container == TASK_CONTAINER => log.push(line),
                _ => {}
            }
        }
        (None, log)
    });
    let outcome: sykli_core::Result<Outcome> =
        run_job(cluster, job, RunOptions::default(), tx, cancel_rx).await;
    let returned_ns = now_ns();
    let (known_ns, log) = collector.await.expect("the collector");
    let (succeeded, error) = match outcome {
        Ok(o) if o.failure.is_none() && o.exit_code == Some(0) => (true, None),
        Ok(o) => (false, Some(format!("{:?} {:?}", o.exit_code, o.failure))),
        Err(e) => (false, Some(e.to_string())),
    };
    Run {
        job: name,
        namespace,
        succeeded,
        error,
        log,
        known_ns,
        returned_ns,
    }
}

/// The baseline: create, GET the Job every second until it is Complete or Failed, read the
/// task's log, delete.
async fn run_polling(client: kube::Client, job: Job) -> Run {
    let name = job.metadata.name.clone().unwrap_or_default();
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    let mut run = Run {
        job: name.clone(),
        namespace: namespace.clone(),
        succeeded: false,
        error: None,
        log: Vec::new(),
        known_ns: None,
        returned_ns: 0,
    };
    let result = poll(client, &job, &name, &namespace, &mut run).await;
    run.returned_ns = now_ns();
    if let Err(e) = result {
        run.succeeded = false;
        run.error = Some(e);
    }
    run
}

async fn poll(
    client: kube::Client,
    job: &Job,
    name: &str,
    namespace: &str,
    run: &mut Run,
) -> Result<(), String> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    jobs.create(&PostParams::default(), job)
        .await
        .map_err(|e| format!("create: {e}"))?;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let complete = loop {
        tick.tick().await;
        let j = jobs.get(name).await.map_err(|e| format!("get: {e}"))?;
        let condition = j
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
        if let Some(c) = condition {
            run.known_ns = Some(now_ns());
            break c.type_ == "Complete";
        }
    };
    let params = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}"));
    let list = pods
        .list(&params)
        .await
        .map_err(|e| format!("list pods: {e}"))?;
    if let Some(pod) = list.items.last().and_then(|p| p.metadata.name.clone()) {
        let lp = LogParams {
            container: Some(TASK_CONTAINER.into()),
            ..LogParams::default()
        };
        let text = pods
            .logs(&pod, &lp)
            .await
            .map_err(|e| format!("log: {e}"))?;
        run.log = text.lines().map(str::to_string).collect();
    }
    jobs.delete(name, &DeleteParams::background())
        .await
        .map_err(|e| format!("delete: {e}"))?;
    run.succeeded = complete;
    if !complete {
        run.error = Some("the Job failed".into());
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Method {
    Sykli,
    Polling,
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::Sykli => "sykli run_job (shared watch)",
            Method::Polling => "polling loop, GET Job every 1 s",
        }
    }

    async fn run(self, cluster: &Arc<Cluster>, job: Job) -> Run {
        match self {
            Method::Sykli => run_sykli(Arc::clone(cluster), job).await,
            Method::Polling => run_polling(cluster.client.clone(), job).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reporting helpers.

/// Nearest-rank percentile of unsorted values.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

fn in_namespace(r: &Request, ns: &str) -> bool {
    let at = format!("/namespaces/{ns}");
    r.path.ends_with(&at) || r.path.contains(&format!("{at}/"))
}

/// "get namespaces", "watch jobs", "get pods/log (follow)", ...
fn request_kind(r: &Request) -> String {
    let segs: Vec<&str> = r.path.split('/').collect();
    let rest = segs
        .iter()
        .position(|s| *s == "namespaces")
        .map(|i| &segs[i + 1..])
        .unwrap_or(&[]);
    let (what, collection) = match rest {
        [_ns] => ("namespaces".to_string(), false),
        [_ns, plural] => (plural.to_string(), true),
        [_ns, plural, _] => (plural.to_string(), false),
        [_ns, plural, _, sub] => (format!("{plural}/{sub}"), false),
        _ => (r.path.clone(), false),
    };
    let verb = match (r.method.as_str(), r.watch, collection) {
        ("GET", true, _) => "watch",
        ("GET", false, true) => "list",
        ("GET", false, false) => "get",
        ("POST", ..) => "create",
        ("DELETE", _, true) => "deletecollection",
        ("DELETE", ..) => "delete",
        ("PATCH", ..) => "patch",
        ("PUT", ..) => "update",
        (other, ..) => other,
    };
    let follow = if r.param("follow").as_deref() == Some("true") {
        " (follow)"
    } else {
        ""
    };
    format!("{verb} {what}{follow}")
}

fn breakdown(reqs: &[&Request]) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for r in reqs {
        *by.entry(request_kind(r)).or_default() += 1;
    }
    by.into_iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// The benchmark.

struct Config {
    latency_tasks: usize,
    concurrent: usize,
    long_secs: u64,
    many: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        let method = match args.get(2).map(String::as_str) {
            Some("Sykli") => Method::Sykli,
            Some("Polling") => Method::Polling,
            other => panic!("unknown method {other:?}"),
        };
        let n = args
            .get(3)
            .and_then(|a| a.parse().ok())
            .expect("a task count");
        let ns = args.get(4).expect("a namespace");
        let kubeconfig = PathBuf::from(args.get(5).expect("a kubeconfig"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let report = rt.block_on(concurrent_client(method, n, ns, kubeconfig));
        println!("{report}");
        return;
    }
    let arg = |i: usize, default: u64| {
        args.get(i)
            .map(|a| a.parse().expect("a number"))
            .unwrap_or(default)
    };
    let cfg = Config {
        latency_tasks: arg(1, 20) as usize,
        concurrent: arg(2, 200) as usize,
        long_secs: arg(3, 60),
        many: arg(4, 1000) as usize,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(bench(cfg));
}

/// One client process running `n` tasks of one run at once; reports what it saw and its
/// own peak RSS.
async fn concurrent_client(method: Method, n: usize, ns: &str, kubeconfig: PathBuf) -> Value {
    let cluster = Arc::new(
        Cluster::connect(&ConnectOptions {
            kubeconfig: Some(kubeconfig),
            context: None,
            namespace: Some(ns.into()),
        })
        .await
        .expect("a client"),
    );
    let connected_kib = proc_status_kib("VmRSS");
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let cluster = Arc::clone(&cluster);
            let command = format!("echo task-{i}; sleep {HOLD_SECS}");
            let j = job(&format!("t{i:03}"), ns, ns, &command);
            tokio::spawn(async move { method.run(&cluster, j).await })
        })
        .collect();
    let mut correct = 0;
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.expect("the run");
        if r.succeeded && r.log.iter().any(|l| *l == format!("task-{i}")) {
            correct += 1;
        } else {
            eprintln!("{method:?} task {i}: {:?}, log {:?}", r.error, r.log);
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    json!({
        "correct": correct,
        "wall_s": wall_s,
        "peak_kib": proc_status_kib("VmHWM"),
        "connected_kib": connected_kib,
    })
}

async fn bench(cfg: Config) {
    let nodes = 2;
    // Room for every task of (4) at once, and the controllers' clients at the pace of
    // 1,000 pods (the defaults, 20 requests per second, would be what is measured).
    let pods_per_node = cfg.many.max(cfg.concurrent).div_ceil(nodes) + 20;
    let plane = tokio::task::spawn_blocking(move || {
        ControlPlane::start(&ControlPlaneOptions {
            nodes,
            node_args: vec![format!("--capacity=pods={pods_per_node}")],
            up_args: vec![
                "--etcd-unsafe-no-fsync".into(),
                "--controller-manager-arg=--kube-api-qps=500".into(),
                "--controller-manager-arg=--kube-api-burst=1000".into(),
                "--controller-manager-arg=--concurrent-job-syncs=20".into(),
            ],
            ..ControlPlaneOptions::default()
        })
    })
    .await
    .expect("the plane starts")
    .unwrap_or_else(|e| panic!("{e}"));
    let info = plane.info().clone();
    let proxy = tokio::task::spawn_blocking(move || KubeProxy::start(&info))
        .await
        .expect("the proxy starts")
        .expect("the proxy starts");
    let direct = Cluster::connect(&ConnectOptions {
        kubeconfig: Some(plane.kubeconfig().to_path_buf()),
        context: None,
        namespace: Some("default".into()),
    })
    .await
    .expect("an admin client");
    let cluster = Arc::new(
        Cluster::connect(&ConnectOptions {
            kubeconfig: Some(proxy.kubeconfig().to_path_buf()),
            context: None,
            namespace: Some("default".into()),
        })
        .await
        .expect("a client through the proxy"),
    );
    let namespaces = [
        "lat",
        "req-sykli-short",
        "req-sykli-long",
        "req-poll-short",
        "req-poll-long",
        "conc-sykli",
        "conc-poll",
        "many-sykli",
        "warm",
    ];
    let ns_api: Api<Namespace> = Api::all(direct.client.clone());
    for ns in namespaces {
        let obj: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).expect("a namespace");
        ns_api
            .create(&PostParams::default(), &obj)
            .await
            .expect("namespace created");
    }
    let times: Times = Arc::default();
    observe(direct.client.clone(), Arc::clone(&times));

    // Warm-up: connections, page cache, each node's first sandbox.
    for i in 0..2 * nodes {
        for m in [Method::Sykli, Method::Polling] {
            let name = format!("warm-{m:?}-{i}").to_lowercase();
            let r = m
                .run(&cluster, job(&name, "warm", "warm", "echo warm"))
                .await;
            assert!(r.succeeded, "warm-up {m:?}: {:?}", r.error);
        }
    }

    // 1. Completion-detection latency. Tasks end at staggered times (sleep 1 + i/N s), so
    //    that where the end falls within the polling interval is spread evenly over it.
    eprintln!(
        "latency: {} tasks per method, one at a time, interleaved",
        cfg.latency_tasks
    );
    let mut samples: Vec<(Method, Run)> = Vec::new();
    for i in 0..cfg.latency_tasks {
        let secs = 1.0 + (i as f64 + 0.5) / cfg.latency_tasks as f64;
        let command = format!("sleep {secs:.3}; date +%s%N");
        let order = if i % 2 == 0 {
            [Method::Sykli, Method::Polling]
        } else {
            [Method::Polling, Method::Sykli]
        };
        for m in order {
            let tag = if m == Method::Sykli { "s" } else { "p" };
            let run_id = format!("lat-{tag}{i}");
            let r = m
                .run(&cluster, job(&format!("t{i}"), &run_id, "lat", &command))
                .await;
            samples.push((m, r));
        }
    }
    let times = times.lock().unwrap().clone();
    println!("\n### Completion-detection latency ({} tasks per method, `sleep 1.0xx-1.9xx; date +%s%N`)\n", cfg.latency_tasks);
    println!("| method | correct | exit → client knows, p50 | p90 | exit → status seen by a watcher, p50 | seen by a watcher → client knows, p50 | exit → call returns, p50 | p50 ÷ sykli's |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut p50s = HashMap::new();
    for m in [Method::Sykli, Method::Polling] {
        let mut known = Vec::new();
        let mut status = Vec::new();
        let mut detect = Vec::new();
        let mut returned = Vec::new();
        let mut correct = 0;
        let mut total = 0;
        for (_, r) in samples.iter().filter(|(mm, _)| *mm == m) {
            total += 1;
            let (Some(exit), Some(k), true) = (r.exit_ns(), r.known_ns, r.succeeded) else {
                eprintln!("{m:?} {}: {:?} log {:?}", r.job, r.error, r.log);
                continue;
            };
            correct += 1;
            known.push(ms(k - exit));
            returned.push(ms(r.returned_ns - exit));
            let t = times
                .get(&format!("{}/{}", r.namespace, r.job))
                .copied()
                .unwrap_or_default();
            // What each client reads: sykli the pod's status, polling the Job's condition.
            let seen = match m {
                Method::Sykli => t.pod_terminated_ns,
                Method::Polling => t.job_finished_ns,
            };
            if let Some(w) = seen {
                status.push(ms(w - exit));
                detect.push(ms(k - w));
            }
        }
        let p50 = percentile(&known, 50.0);
        p50s.insert(m, p50);
        println!(
            "| {} | {correct}/{total} | {p50:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1}× |",
            m.label(),
            percentile(&known, 90.0),
            percentile(&status, 50.0),
            percentile(&detect, 50.0),
            percentile(&returned, 50.0),
            p50 / p50s[&Method::Sykli],
        );
    }

    // 2. API requests per task: a short and a long task per method, all four at once, each
    //    in a namespace of its own (every request path names its namespace).
    eprintln!(
        "requests: {SHORT_SECS} s and {} s tasks, both methods, concurrently",
        cfg.long_secs
    );
    proxy.clear_requests();
    let cases = [
        (Method::Sykli, SHORT_SECS, "req-sykli-short"),
        (Method::Sykli, cfg.long_secs, "req-sykli-long"),
        (Method::Polling, SHORT_SECS, "req-poll-short"),
        (Method::Polling, cfg.long_secs, "req-poll-long"),
    ];
    let handles: Vec<_> = cases
        .iter()
        .map(|&(m, secs, ns)| {
            let cluster = Arc::clone(&cluster);
            let j = job(&format!("sleep{secs}"), ns, ns, &format!("sleep {secs}"));
            tokio::spawn(async move { m.run(&cluster, j).await })
        })
        .collect();
    let mut req_ok = Vec::new();
    for h in handles {
        req_ok.push(h.await.expect("the run").succeeded);
    }
    let reqs = proxy.requests();
    println!("\n### API requests per task (one task per run)\n");
    println!("| method | task | correct | requests | ÷ sykli | long-lived watches | what |");
    println!("|---|---|---|---:|---:|---:|---|");
    let mut sykli_counts: HashMap<u64, usize> = HashMap::new();
    for (&(m, secs, ns), ok) in cases.iter().zip(&req_ok) {
        let mine: Vec<&Request> = reqs.iter().filter(|r| in_namespace(r, ns)).collect();
        let watches = mine.iter().filter(|r| r.watch).count();
        if m == Method::Sykli {
            sykli_counts.insert(secs, mine.len());
        }
        let ratio = sykli_counts
            .get(&secs)
            .map(|s| mine.len() as f64 / *s as f64)
            .unwrap_or(f64::NAN);
        println!(
            "| {} | sleep {secs} | {} | {} | {ratio:.1}× | {watches} | {} |",
            m.label(),
            if *ok { "yes" } else { "**no**" },
            mine.len(),
            breakdown(&mine),
        );
    }

    // 3. and 4. Many concurrent tasks through one client, each client in a fresh process
    //    of its own so that its peak RSS (VmHWM) is its own.
    println!(
        "\n### Concurrent tasks through one client (`echo task-i; sleep {HOLD_SECS}`, one run id, one client process per row)\n"
    );
    println!("| method | tasks | correct | wall time | API requests | per task | ÷ sykli | watch requests | client peak RSS | client RSS after connecting |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut sykli_total = 0usize;
    for (m, n, ns) in [
        (Method::Sykli, cfg.concurrent, "conc-sykli"),
        (Method::Polling, cfg.concurrent, "conc-poll"),
        (Method::Sykli, cfg.many, "many-sykli"),
    ] {
        if n == 0 {
            continue;
        }
        eprintln!("concurrent: {n} tasks, {m:?}");
        proxy.clear_requests();
        let out = Command::new(std::env::current_exe().expect("this executable"))
            .args(["--client", &format!("{m:?}"), &n.to_string(), ns])
            .arg(proxy.kubeconfig())
            .stderr(Stdio::inherit())
            .output()
            .expect("the client process runs");
        let report: Value = serde_json::from_slice(&out.stdout).expect("the client's report");
        let reqs = proxy.requests();
        let mine: Vec<&Request> = reqs.iter().filter(|r| in_namespace(r, ns)).collect();
        let watches = mine.iter().filter(|r| r.watch).count();
        if m == Method::Sykli && n == cfg.concurrent {
            sykli_total = mine.len();
        }
        let ratio = if n == cfg.concurrent {
            format!("{:.2}×", mine.len() as f64 / sykli_total as f64)
        } else {
            "—".into()
        };
        println!(
            "| {} | {n} | {}/{n} | {:.1} s | {} | {:.3} | {ratio} | {watches} | {:.1} MiB | {:.1} MiB |",
            m.label(),
            report["correct"],
            report["wall_s"].as_f64().unwrap_or(f64::NAN),
            mine.len(),
            mine.len() as f64 / n as f64,
            report["peak_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            report["connected_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        );
        eprintln!("{m:?} {n} requests: {}", breakdown(&mine));
    }
    drop(cluster);
    drop(proxy);
    drop(plane);
    // Let stragglers (aborted log followers) finish before the runtime shuts down.
    tokio::time::sleep(Duration::from_millis(10)).await;
}
