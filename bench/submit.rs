//! Submitting tasks to Kubernetes: sykli's watch-based `run_job` side by side with a 1-second
//! polling loop (create the Job, GET it every second until it has a Complete or Failed
//! condition, read the log, delete it), against the strict test cluster.
//!
//! Three measurements, in one run:
//!
//! 1. completion-detection latency: from the moment the container prints its last line (the
//!    wall clock in nanoseconds, `date +%s%N`, just before it exits) to the moment the client
//!    knows the result;
//! 2. API requests per task, for a 10 s and a 60 s task, from the test cluster's request log;
//! 3. 200 concurrent tasks through one client: correctness, wall time, watch requests, the
//!    client's peak RSS.
//!
//! The test cluster runs in a child process (this binary with `--serve-cluster DIR`), so that
//! no client's RSS includes it. The child answers one-line commands on stdin: the request
//! log, clearing it, and when the kubelet and the Job controller wrote each task's terminal
//! status (recorded from the store's change notifications). For (3), each method's client is
//! a fresh process of its own (`--client METHOD N NAMESPACE KUBECONFIG`) reporting its VmHWM.
//!
//! Usage: cargo run --release -p sykli-bench --bin submit [-- LATENCY_TASKS CONCURRENT LONG_SECS]
//! (default 20 200 60)

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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
use sykli_testcluster::store::Store;
use sykli_testcluster::{ClusterOptions, RequestRecord, Res, TestCluster};

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
// The test cluster, in a child process.

/// When the terminal status of one Job's task was first in the store.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct StatusTimes {
    /// The kubelet wrote the task container's `terminated` state.
    pod_terminated_ns: Option<i64>,
    /// The Job controller wrote the Complete (or Failed) condition.
    job_finished_ns: Option<i64>,
}

fn serve_cluster(dir: &Path) {
    let k8s = TestCluster::start(ClusterOptions::new(dir)).expect("the test cluster starts");
    let recording = Arc::new(AtomicBool::new(false));
    let times: Arc<Mutex<BTreeMap<String, StatusTimes>>> = Arc::default();
    {
        let store = Arc::clone(k8s.store());
        let recording = Arc::clone(&recording);
        let times = Arc::clone(&times);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let mut changed = store.subscribe();
                while changed.changed().await.is_ok() {
                    if recording.load(Ordering::Relaxed) {
                        record_statuses(&store, now_ns(), &times);
                    }
                }
            });
        });
    }
    let mut out = std::io::stdout().lock();
    let hello = json!({"kubeconfig": k8s.kubeconfig(), "pid": std::process::id()});
    writeln!(out, "{hello}").expect("stdout");
    out.flush().expect("stdout");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.trim() {
            "requests" => serde_json::to_value(k8s.requests()).expect("json"),
            "clear" => {
                k8s.clear_requests();
                json!(null)
            }
            "record" => {
                recording.store(true, Ordering::Relaxed);
                json!(null)
            }
            "stop-recording" => {
                recording.store(false, Ordering::Relaxed);
                json!(null)
            }
            "times" => serde_json::to_value(&*times.lock().unwrap()).expect("json"),
            "rss" => {
                json!({"hwm_kib": proc_status_kib("VmHWM"), "rss_kib": proc_status_kib("VmRSS")})
            }
            _ => break,
        };
        writeln!(out, "{answer}").expect("stdout");
        out.flush().expect("stdout");
    }
    k8s.stop();
}

/// Notes, for every Job, the first time its pod's task container is terminated and the
/// first time the Job has a Complete or Failed condition.
fn record_statuses(store: &Store, at: i64, times: &Mutex<BTreeMap<String, StatusTimes>>) {
    let mut times = times.lock().unwrap();
    let (pods, _) = store.list(Res::Pod, None);
    for pod in &pods {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let Some(job) = pod["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["kind"] == "Job"))
            .and_then(|o| o["name"].as_str())
        else {
            continue;
        };
        let terminated = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == TASK_CONTAINER && c["state"]["terminated"].is_object());
        if terminated {
            let t = times.entry(format!("{ns}/{job}")).or_default();
            t.pod_terminated_ns.get_or_insert(at);
        }
    }
    let (jobs, _) = store.list(Res::Job, None);
    for job in &jobs {
        let finished = job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True");
        if finished {
            let ns = job["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = job["metadata"]["name"].as_str().unwrap_or_default();
            let t = times.entry(format!("{ns}/{name}")).or_default();
            t.job_finished_ns.get_or_insert(at);
        }
    }
}

struct ClusterProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    kubeconfig: PathBuf,
}

impl ClusterProcess {
    fn start(dir: &Path) -> ClusterProcess {
        let exe = std::env::current_exe().expect("this executable");
        let mut child = Command::new(exe)
            .arg("--serve-cluster")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the cluster process starts");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("the cluster's first line");
        let hello: Value = serde_json::from_str(&line).expect("the cluster's JSON line");
        ClusterProcess {
            child,
            stdin,
            stdout,
            kubeconfig: PathBuf::from(hello["kubeconfig"].as_str().expect("kubeconfig")),
        }
    }

    fn ask(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").expect("the cluster process reads");
        self.stdin.flush().expect("the cluster process reads");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("the cluster process answers");
        serde_json::from_str(&line).expect("a JSON answer")
    }

    fn requests(&mut self) -> Vec<RequestRecord> {
        serde_json::from_value(self.ask("requests")).expect("request records")
    }

    fn times(&mut self) -> BTreeMap<String, StatusTimes> {
        serde_json::from_value(self.ask("times")).expect("status times")
    }

    fn stop(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
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

fn path_only(r: &RequestRecord) -> &str {
    r.path.split('?').next().unwrap_or_default()
}

fn in_namespace(r: &RequestRecord, ns: &str) -> bool {
    let p = path_only(r);
    let at = format!("/namespaces/{ns}");
    p.ends_with(&at) || p.contains(&format!("{at}/"))
}

/// "get namespaces", "watch jobs", "get pods/log (follow)", ...
fn request_kind(r: &RequestRecord) -> String {
    let segs: Vec<&str> = path_only(r).split('/').collect();
    let rest = segs
        .iter()
        .position(|s| *s == "namespaces")
        .map(|i| &segs[i + 1..])
        .unwrap_or(&[]);
    let what = match rest {
        [_ns] => "namespaces".to_string(),
        [_ns, plural] | [_ns, plural, _] => plural.to_string(),
        [_ns, plural, _, sub] => format!("{plural}/{sub}"),
        _ => path_only(r).to_string(),
    };
    let follow = if r.path.contains("follow=true") {
        " (follow)"
    } else {
        ""
    };
    format!("{} {what}{follow}", r.verb)
}

fn breakdown(reqs: &[&RequestRecord]) -> String {
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
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve-cluster") {
        serve_cluster(Path::new(args.get(2).expect("a directory")));
        return;
    }
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
    let dir = std::env::temp_dir().join(format!("sykli-bench-submit-{}", std::process::id()));
    let mut k8s = ClusterProcess::start(&dir);
    let cluster = Arc::new(
        Cluster::connect(&ConnectOptions {
            kubeconfig: Some(k8s.kubeconfig.clone()),
            context: None,
            namespace: Some("default".into()),
        })
        .await
        .expect("a client"),
    );
    let namespaces = [
        "lat",
        "req-sykli-short",
        "req-sykli-long",
        "req-poll-short",
        "req-poll-long",
        "conc-sykli",
        "conc-poll",
        "warm",
    ];
    let ns_api: Api<Namespace> = Api::all(cluster.client.clone());
    for ns in namespaces {
        let obj: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).expect("a namespace");
        ns_api
            .create(&PostParams::default(), &obj)
            .await
            .expect("namespace created");
    }

    // Warm-up: connections, page cache, the kubelet's first sandbox.
    for m in [Method::Sykli, Method::Polling] {
        let r = m
            .run(
                &cluster,
                job(
                    &format!("warm-{m:?}").to_lowercase(),
                    "warm",
                    "warm",
                    "echo warm",
                ),
            )
            .await;
        assert!(r.succeeded, "warm-up {m:?}: {:?}", r.error);
    }

    // 1. Completion-detection latency. Tasks end at staggered times (sleep 1 + i/N s), so
    //    that where the end falls within the polling interval is spread evenly over it.
    eprintln!(
        "latency: {} tasks per method, one at a time, interleaved",
        cfg.latency_tasks
    );
    k8s.ask("record");
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
    k8s.ask("stop-recording");
    let times = k8s.times();
    println!("\n### Completion-detection latency ({} tasks per method, `sleep 1.0xx-1.9xx; date +%s%N`)\n", cfg.latency_tasks);
    println!("| method | correct | exit → client knows, p50 | p90 | exit → status written, p50 | status written → client knows, p50 | exit → call returns, p50 | p50 ÷ sykli's |");
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
            let written = match m {
                Method::Sykli => t.pod_terminated_ns,
                Method::Polling => t.job_finished_ns,
            };
            if let Some(w) = written {
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
    k8s.ask("clear");
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
    let reqs = k8s.requests();
    println!("\n### API requests per task (one task per run)\n");
    println!("| method | task | correct | requests | ÷ sykli | long-lived watches | what |");
    println!("|---|---|---|---:|---:|---:|---|");
    let mut sykli_counts: HashMap<u64, usize> = HashMap::new();
    for (&(m, secs, ns), ok) in cases.iter().zip(&req_ok) {
        let mine: Vec<&RequestRecord> = reqs.iter().filter(|r| in_namespace(r, ns)).collect();
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

    // 3. Many concurrent tasks through one client, per method, each client in a fresh
    //    process of its own so that its peak RSS (VmHWM) is its own.
    println!(
        "\n### {} concurrent tasks through one client (`echo task-i; sleep {HOLD_SECS}`, one run id, one client process per method)\n",
        cfg.concurrent
    );
    println!("| method | correct | wall time | API requests | per task | ÷ sykli | watch requests | client peak RSS | client RSS after connecting |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut sykli_total = 0usize;
    for (m, ns) in [
        (Method::Sykli, "conc-sykli"),
        (Method::Polling, "conc-poll"),
    ] {
        eprintln!("concurrent: {} tasks, {m:?}", cfg.concurrent);
        k8s.ask("clear");
        let out = Command::new(std::env::current_exe().expect("this executable"))
            .args([
                "--client",
                &format!("{m:?}"),
                &cfg.concurrent.to_string(),
                ns,
            ])
            .arg(&k8s.kubeconfig)
            .stderr(Stdio::inherit())
            .output()
            .expect("the client process runs");
        let report: Value = serde_json::from_slice(&out.stdout).expect("the client's report");
        let reqs = k8s.requests();
        let mine: Vec<&RequestRecord> = reqs.iter().filter(|r| in_namespace(r, ns)).collect();
        let watches = mine.iter().filter(|r| r.watch).count();
        if m == Method::Sykli {
            sykli_total = mine.len();
        }
        println!(
            "| {} | {}/{} | {:.1} s | {} | {:.2} | {:.2}× | {watches} | {:.1} MiB | {:.1} MiB |",
            m.label(),
            report["correct"],
            cfg.concurrent,
            report["wall_s"].as_f64().unwrap_or(f64::NAN),
            mine.len(),
            mine.len() as f64 / cfg.concurrent as f64,
            mine.len() as f64 / sykli_total as f64,
            report["peak_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            report["connected_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        );
        eprintln!("{m:?} requests: {}", breakdown(&mine));
    }
    let cluster_rss = k8s.ask("rss");
    println!(
        "\ntest cluster process (separate, not counted above): peak RSS {:.1} MiB",
        cluster_rss["hwm_kib"].as_f64().unwrap_or(0.0) / 1024.0
    );
    drop(cluster);
    k8s.stop();
    let _ = std::fs::remove_dir_all(&dir);
    // Let stragglers (aborted log followers) finish before the runtime shuts down.
    tokio::time::sleep(Duration::from_millis(10)).await;
}
