//! The kubelet of a node: runs the pods bound to it with the testkit's pod runner
//! and reports their status as they go (Pending → Running → Succeeded/Failed, container
//! states, conditions, Events), refuses denied images (ErrImagePull/ImagePullBackOff), waits
//! for missing Secrets/ConfigMaps (CreateContainerConfigError, FailedMount) and retries, keeps
//! the logs, and stops a pod's containers when the pod is deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Map, Value};
use sykli_testkit::pod_runner::{exec_sandbox, ExecSandbox, ImageEntrypoint, ImageFile};
use sykli_testkit::{run_pod, ContainerKind, PodPhase, PodResult, RunOptions, RunnerError, Shell};
use tokio::sync::{mpsc, Notify};

use crate::controller::{emit_event, meta_str};
use crate::logs::LogStore;
use crate::resources::Res;
use crate::store::Store;
use crate::util::go_quote;
use crate::util::now_rfc3339;
use crate::volumes::{read_only, spec_claims, volume_name, Volumes};

#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    /// Pod work dirs go to `dir/pods`, claims to `dir/pvcs`.
    pub dir: PathBuf,
    pub shell: Shell,
    /// Glob patterns (`*`, `?`) of images that cannot be pulled.
    pub deny_images: Vec<String>,
    /// How often missing Secrets/ConfigMaps are looked for again.
    pub retry_interval: Duration,
    /// From ErrImagePull to ImagePullBackOff.
    pub image_backoff: Duration,
    /// Host files containers see because of their image.
    pub image_files: Vec<ImageFile>,
    /// Images' entrypoints, for containers that set no command.
    pub image_entrypoints: Vec<ImageEntrypoint>,
    /// The claims' directories and the volumes' attachments.
    pub volumes: Arc<Volumes>,
}

#[derive(Default)]
struct Cancel {
    flag: AtomicBool,
    notify: Notify,
}

impl Cancel {
    fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Sleeps `d`; true if cancelled meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        let n = self.notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if self.is_cancelled() {
            return true;
        }
        tokio::select! {
            _ = n => true,
            _ = tokio::time::sleep(d) => self.is_cancelled(),
        }
    }
}

type ThreadSlot = Arc<Mutex<Option<std::thread::JoinHandle<()>>>>;

/// What the pod runner was given, so that a command can run in a new sandbox of one of the
/// pod's containers (exec).
#[derive(Clone)]
struct ExecContext {
    manifest: Value,
    opts: RunOptions,
}

type ExecSlot = Arc<Mutex<Option<ExecContext>>>;

struct Worker {
    cancel: Arc<Cancel>,
    work_dir: PathBuf,
    done: Arc<AtomicBool>,
    thread: ThreadSlot,
    exec: ExecSlot,
}

pub struct Kubelet {
    store: Arc<Store>,
    logs: Arc<LogStore>,
    cfg: KubeletConfig,
    workers: Mutex<HashMap<String, Worker>>,
    /// Pods whose worker has ended (never started again).
    finished: Mutex<HashSet<String>>,
}

fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

impl Kubelet {
    pub fn new(store: Arc<Store>, logs: Arc<LogStore>, cfg: KubeletConfig) -> Arc<Self> {
        Arc::new(Kubelet {
            store,
            logs,
            cfg,
            workers: Mutex::new(HashMap::new()),
            finished: Mutex::new(HashSet::new()),
        })
    }

    /// Starts workers for new pods, stops the ones of deleted pods, and removes deleted pods
    /// once their containers are stopped.
    pub fn reconcile(self: &Arc<Self>) {
        let (pods, _) = self.store.list(Res::Pod, None);
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = HashSet::new();
        for pod in pods.iter().filter(|p| {
            p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(self.cfg.node_name.as_str())
        }) {
            let uid = meta_str(pod, "uid").to_string();
            present.insert(uid.clone());
            if deleting(pod) {
                let stopped = match workers.get(&uid) {
                    Some(w) => {
                        w.cancel.cancel();
                        kill_sandboxes(&w.work_dir);
                        w.done.load(Ordering::SeqCst)
                    }
                    None => true,
                };
                if stopped {
                    workers.remove(&uid);
                    self.store
                        .delete(Res::Pod, meta_str(pod, "namespace"), meta_str(pod, "name"));
                    self.logs.remove_pod(&uid);
                }
                continue;
            }
            let phase = pod.pointer("/status/phase").and_then(Value::as_str);
            let done_before = self
                .finished
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&uid);
            if phase == Some("Pending") && !workers.contains_key(&uid) && !done_before {
                let work_dir = self.cfg.dir.join("pods").join(format!(
                    "{}_{}_{}",
                    meta_str(pod, "namespace"),
                    meta_str(pod, "name"),
                    uid
                ));
                let w = Worker {
                    cancel: Arc::new(Cancel::default()),
                    work_dir: work_dir.clone(),
                    done: Arc::new(AtomicBool::new(false)),
                    thread: Arc::new(Mutex::new(None)),
                    exec: Arc::new(Mutex::new(None)),
                };
                let me = Arc::clone(self);
                let (cancel, done, thread, exec) = (
                    Arc::clone(&w.cancel),
                    Arc::clone(&w.done),
                    Arc::clone(&w.thread),
                    Arc::clone(&w.exec),
                );
                let pod = (**pod).clone();
                tokio::spawn(async move {
                    me.run(pod, work_dir, cancel, thread, exec).await;
                    done.store(true, Ordering::SeqCst);
                    me.store.poke();
                });
                workers.insert(uid, w);
            }
        }
        // Pods removed without grace: stop what still runs.
        let gone: Vec<String> = workers
            .keys()
            .filter(|u| !present.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            let w = &workers[&uid];
            w.cancel.cancel();
            kill_sandboxes(&w.work_dir);
            if w.done.load(Ordering::SeqCst) {
                workers.remove(&uid);
                self.logs.remove_pod(&uid);
            }
        }
        let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        for (uid, w) in workers.iter() {
            if w.done.load(Ordering::SeqCst) {
                finished.insert(uid.clone());
            }
        }
        finished.retain(|u| present.contains(u));
    }

    /// Kills every sandbox and waits (bounded) for the runner threads: nothing outlives this.
    pub fn stop_all(&self) {
        let workers: Vec<(Arc<Cancel>, PathBuf, ThreadSlot)> = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|w| {
                (
                    Arc::clone(&w.cancel),
                    w.work_dir.clone(),
                    Arc::clone(&w.thread),
                )
            })
            .collect();
        for (c, dir, _) in &workers {
            c.cancel();
            kill_sandboxes(dir);
        }
        for (_, dir, t) in &workers {
            let handle = t.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = handle {
                // A killed sandbox ends at once; kill again in case one started meanwhile.
                for _ in 0..600 {
                    if h.is_finished() {
                        break;
                    }
                    kill_sandboxes(dir);
                    std::thread::park_timeout(Duration::from_millis(50));
                }
                if h.is_finished() {
                    let _ = h.join();
                }
            }
        }
    }

    /// This kubelet's node.
    pub fn node_name(&self) -> &str {
        &self.cfg.node_name
    }

    /// A new sandbox of container `container` of the running pod `uid` that runs `command`
    /// (what the container runtime's exec does); Err: why not, in the runtime's words.
    pub fn exec_sandbox(
        &self,
        uid: &str,
        container: &str,
        command: &[String],
    ) -> Result<ExecSandbox, String> {
        let not_found = || format!("container not found ({})", go_quote(container));
        let ctx = {
            let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            let w = workers.get(uid).ok_or_else(not_found)?;
            if w.done.load(Ordering::SeqCst) || w.cancel.is_cancelled() {
                return Err(not_found());
            }
            let ctx = w.exec.lock().unwrap_or_else(|e| e.into_inner()).clone();
            ctx.ok_or_else(not_found)?
        };
        match exec_sandbox(&ctx.manifest, &ctx.opts, container, command) {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        }
    }

    fn update_status(&self, pod: &Value, f: impl FnOnce(&mut Map<String, Value>)) -> Option<Value> {
        self.store
            .update(
                Res::Pod,
                meta_str(pod, "namespace"),
                meta_str(pod, "name"),
                None,
                |o| {
                    if !o["status"].is_object() {
                        o["status"] = json!({});
                    }
                    f(o["status"].as_object_mut().expect("status"));
                    Ok(true)
                },
            )
            .ok()
    }

    fn event(
        &self,
        pod: &Value,
        field_path: Option<&str>,
        kind: &str,
        reason: &str,
        message: &str,
    ) {
        emit_event(
            &self.store,
            pod,
            field_path,
            kind,
            reason,
            message,
            "kubelet",
            Some(&self.cfg.node_name),
        );
    }

    async fn run(
        self: &Arc<Self>,
        pod: Value,
        work_dir: PathBuf,
        cancel: Arc<Cancel>,
        thread: ThreadSlot,
        exec: ExecSlot,
    ) {
        let spec = pod["spec"].clone();
        let containers = Containers::of(&spec);
        let mut view = PodView::new(&containers);
        let start = now_rfc3339();
        let Some(_) = self.update_status(&pod, |st| {
            st.insert("hostIP".into(), json!("127.0.0.1"));
            st.insert("hostIPs".into(), json!([{"ip": "127.0.0.1"}]));
            st.insert("startTime".into(), json!(start));
            view.render(st);
        }) else {
            return;
        };

        // Images.
        for c in &containers.all {
            if self.denied(&c.image) {
                self.image_pull_failure(&pod, c, &mut view, &cancel).await;
                return;
            }
        }
        for c in &containers.all {
            let always = c.pull_policy == "Always";
            if always {
                self.event(
                    &pod,
                    Some(&c.field_path),
                    "Normal",
                    "Pulling",
                    &format!("Pulling image \"{}\"", c.image),
                );
                self.event(&pod, Some(&c.field_path), "Normal", "Pulled", &format!("Successfully pulled image \"{}\" in 1ms (1ms including waiting). Image size: 0 bytes.", c.image));
            } else {
                self.event(
                    &pod,
                    Some(&c.field_path),
                    "Normal",
                    "Pulled",
                    &format!("Container image \"{}\" already present on machine", c.image),
                );
            }
        }

        // Secrets, ConfigMaps and claims: wait for them as the kubelet does.
        let ns = meta_str(&pod, "namespace").to_string();
        let mut reported: Option<Vec<String>> = None;
        // Looked at again on every change of the store (a Secret created, a volume attached),
        // and every retry interval.
        let mut changed = self.store.subscribe();
        let fixtures = loop {
            if cancel.is_cancelled() {
                return;
            }
            match self.check_refs(&ns, &spec, &containers) {
                Ok(f) => break f,
                Err(problems) => {
                    let keys: Vec<String> = problems.iter().map(|p| format!("{p:?}")).collect();
                    if reported.as_ref() != Some(&keys) {
                        for p in &problems {
                            match p {
                                Problem::Container { name, message } => {
                                    view.set(name, json!({"waiting": {"reason": "CreateContainerConfigError", "message": message}}), false);
                                    let fp = containers.field_path(name);
                                    self.event(
                                        &pod,
                                        Some(&fp),
                                        "Warning",
                                        "Failed",
                                        &format!("Error: {message}"),
                                    );
                                }
                                Problem::Volume { volume, message } => {
                                    self.event(&pod, None, "Warning", "FailedMount", &format!("MountVolume.SetUp failed for volume \"{volume}\" : {message}"));
                                }
                                Problem::Claim { volume, message } => {
                                    self.event(&pod, None, "Warning", "FailedMount", &format!("Unable to attach or mount volumes: unmounted volumes=[{volume}], unattached volumes=[{volume}], failed to process volumes=[{volume}]: {message}"));
                                }
                                // The attach/detach controller reports why it does not attach.
                                Problem::Unattached { .. } => {}
                            }
                        }
                        if self.update_status(&pod, |st| view.render(st)).is_none() {
                            return;
                        }
                        reported = Some(keys);
                    }
                    changed.borrow_and_update();
                    tokio::select! {
                        c = cancel.sleep(self.cfg.retry_interval) => if c { return },
                        _ = changed.changed() => {}
                    }
                }
            }
        };

        // Run.
        let first = containers.first_to_run();
        for c in &containers.all {
            self.logs.get(meta_str(&pod, "uid"), &c.name);
        }
        let timeout = pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map_or(Duration::from_secs(7 * 24 * 3600), Duration::from_secs);
        let (tx, mut rx) = mpsc::unbounded_channel::<RunMsg>();
        let logs = Arc::clone(&self.logs);
        let uid = meta_str(&pod, "uid").to_string();
        let seen: Arc<Mutex<HashSet<String>>> =
            Arc::new(Mutex::new(first.iter().cloned().collect()));
        let log_tx = tx.clone();
        let mut opts = RunOptions::new(&work_dir)
            .shell(self.cfg.shell)
            .timeout(timeout)
            .on_log(move |c, line| {
                logs.get(&uid, c).push(line);
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                if s.insert(c.to_string()) {
                    let _ = log_tx.send(RunMsg::Started(c.to_string()));
                }
            });
        opts.secrets = fixtures.secrets;
        opts.config_maps = fixtures.config_maps;
        opts.pvcs = fixtures.pvcs;
        opts.image_files = self.cfg.image_files.clone();
        opts.image_entrypoints = self.cfg.image_entrypoints.clone();
        if cancel.is_cancelled() {
            return;
        }
        // Claims the volume plugin publishes read-only are mounted read-only.
        let mut manifest = pod.clone();
        if let Some(vols) = manifest
            .pointer_mut("/spec/volumes")
            .and_then(Value::as_array_mut)
        {
            for v in vols {
                let claim = v
                    .pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if claim.is_some_and(|c| fixtures.read_only_claims.contains(&c)) {
                    v["persistentVolumeClaim"]["readOnly"] = json!(true);
                }
            }
        }
        *exec.lock().unwrap_or_else(|e| e.into_inner()) = Some(ExecContext {
            manifest: manifest.clone(),
            opts: opts.clone(),
        });
        let handle = std::thread::Builder::new()
            .name("kubelet-pod".into())
            .spawn(move || {
                let r = run_pod(&manifest, &opts);
                let _ = tx.send(RunMsg::Done(Box::new(r)));
            });
        match handle {
            Ok(h) => *thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(h),
            Err(e) => {
                self.update_status(&pod, |st| {
                    st.insert("phase".into(), json!("Failed"));
                    st.insert(
                        "message".into(),
                        json!(format!("cannot start the pod: {e}")),
                    );
                });
                return;
            }
        }
        if cancel.is_cancelled() {
            kill_sandboxes(&work_dir);
        }
        // Running once a sandbox runs (or the pod has already ended), not before.
        let mut early: Option<RunMsg> = None;
        for _ in 0..2000 {
            if let Ok(m) = rx.try_recv() {
                early = Some(m);
                break;
            }
            if !sandboxes(Some(&work_dir)).is_empty()
                || cancel.sleep(Duration::from_millis(5)).await
            {
                break;
            }
        }
        view.sandbox_ready = true;
        for c in &first {
            view.start(c);
            let fp = containers.field_path(c);
            self.event(
                &pod,
                Some(&fp),
                "Normal",
                "Created",
                &format!("Created container: {c}"),
            );
            self.event(
                &pod,
                Some(&fp),
                "Normal",
                "Started",
                &format!("Started container {c}"),
            );
        }
        if self.update_status(&pod, |st| view.render(st)).is_none() {
            return;
        }
        let result = loop {
            let msg = match early.take() {
                Some(m) => Some(m),
                None => tokio::select! {
                    m = rx.recv() => m,
                    _ = cancel.notify.notified() => { kill_sandboxes(&work_dir); continue; }
                },
            };
            match msg {
                Some(RunMsg::Started(c)) => {
                    // The runner starts a regular init container alone, and the sidecars before
                    // it (or the main containers) together with it: a container that logs means
                    // the earlier regular init containers completed and its group started.
                    let g = containers.group_of(&c);
                    for (i, group) in containers.groups().iter().enumerate().take(g + 1) {
                        for name in group {
                            let regular_init = containers
                                .get(name)
                                .is_some_and(|ci| ci.kind == ContainerKind::Init);
                            if i < g && regular_init {
                                if !view.is_terminated(name) {
                                    let at = view.started_at(name);
                                    view.set(name, json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": at, "finishedAt": now_rfc3339()}}), false);
                                }
                            } else if !view.is_running(name) && !view.is_terminated(name) {
                                view.start(name);
                                let fp = containers.field_path(name);
                                self.event(
                                    &pod,
                                    Some(&fp),
                                    "Normal",
                                    "Created",
                                    &format!("Created container: {name}"),
                                );
                                self.event(
                                    &pod,
                                    Some(&fp),
                                    "Normal",
                                    "Started",
                                    &format!("Started container {name}"),
                                );
                            }
                        }
                    }
                    self.update_status(&pod, |st| view.render(st));
                }
                Some(RunMsg::Done(r)) => break *r,
                None => return,
            }
        };
        for c in &containers.all {
            self.logs.get(meta_str(&pod, "uid"), &c.name).finish();
        }
        let cancelled = cancel.is_cancelled();
        match result {
            Ok(r) => {
                view.finish(&r, cancelled);
                if cancelled {
                    for c in containers.all.iter().filter(|c| view.was_started(&c.name)) {
                        self.event(
                            &pod,
                            Some(&c.field_path),
                            "Normal",
                            "Killing",
                            &format!("Stopping container {}", c.name),
                        );
                    }
                }
                self.update_status(&pod, |st| {
                    view.render(st);
                    let phase = if r.phase == PodPhase::Succeeded && !cancelled {
                        "Succeeded"
                    } else {
                        "Failed"
                    };
                    st.insert("phase".into(), json!(phase));
                    if r.reason.as_deref() == Some("DeadlineExceeded") {
                        st.insert("reason".into(), json!("DeadlineExceeded"));
                        st.insert(
                            "message".into(),
                            json!("Pod was active on the node longer than the specified deadline"),
                        );
                    }
                });
            }
            Err(e) => {
                let message = e.to_string();
                let kind = match e {
                    RunnerError::InvalidManifest(_)
                    | RunnerError::Unsupported(_)
                    | RunnerError::UnsupportedVolume { .. } => "RunContainerError",
                    _ => "StartError",
                };
                for c in &containers.all {
                    view.set(&c.name, json!({"terminated": {"exitCode": 128, "reason": kind, "message": message, "startedAt": null, "finishedAt": now_rfc3339()}}), false);
                }
                self.event(
                    &pod,
                    None,
                    "Warning",
                    "Failed",
                    &format!("Error: {message}"),
                );
                view.completed = true;
                self.update_status(&pod, |st| {
                    view.render(st);
                    st.insert("phase".into(), json!("Failed"));
                    st.insert("message".into(), json!(message));
                });
            }
        }
    }

    fn denied(&self, image: &str) -> bool {
        self.cfg.deny_images.iter().any(|p| glob(p, image))
    }

    async fn image_pull_failure(
        &self,
        pod: &Value,
        c: &ContainerInfo,
        view: &mut PodView,
        cancel: &Cancel,
    ) {
        let image = &c.image;
        let err = format!("failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": pull access denied by the test cluster (--deny-images)");
        loop {
            self.event(
                pod,
                Some(&c.field_path),
                "Normal",
                "Pulling",
                &format!("Pulling image \"{image}\""),
            );
            self.event(
                pod,
                Some(&c.field_path),
                "Warning",
                "Failed",
                &format!("Failed to pull image \"{image}\": {err}"),
            );
            self.event(
                pod,
                Some(&c.field_path),
                "Warning",
                "Failed",
                "Error: ErrImagePull",
            );
            view.set(
                &c.name,
                json!({"waiting": {"reason": "ErrImagePull", "message": err}}),
                false,
            );
            if self.update_status(pod, |st| view.render(st)).is_none() {
                return;
            }
            if cancel.sleep(self.cfg.image_backoff).await {
                return;
            }
            self.event(
                pod,
                Some(&c.field_path),
                "Normal",
                "BackOff",
                &format!("Back-off pulling image \"{image}\""),
            );
            self.event(
                pod,
                Some(&c.field_path),
                "Warning",
                "Failed",
                "Error: ImagePullBackOff",
            );
            view.set(&c.name, json!({"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\"")}}), false);
            if self.update_status(pod, |st| view.render(st)).is_none() {
                return;
            }
            // The kubelet retries with a growing back-off (up to 5 minutes).
            if cancel.sleep(Duration::from_secs(300)).await {
                return;
            }
        }
    }

    fn check_refs(
        &self,
        ns: &str,
        spec: &Value,
        containers: &Containers,
    ) -> Result<Fixtures, Vec<Problem>> {
        let mut f = Fixtures::default();
        let (secrets, _) = self.store.list(Res::Secret, Some(ns));
        for s in secrets {
            let mut data = HashMap::new();
            for (k, v) in s["data"].as_object().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or(""))
                    .unwrap_or_default();
                data.insert(k.clone(), bytes);
            }
            f.secrets.insert(meta_str(&s, "name").to_string(), data);
        }
        let (cms, _) = self.store.list(Res::ConfigMap, Some(ns));
        for c in cms {
            let mut data = HashMap::new();
            for (k, v) in c["data"].as_object().into_iter().flatten() {
                data.insert(k.clone(), v.as_str().unwrap_or("").as_bytes().to_vec());
            }
            for (k, v) in c["binaryData"].as_object().into_iter().flatten() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or(""))
                    .unwrap_or_default();
                data.insert(k.clone(), bytes);
            }
            f.config_maps.insert(meta_str(&c, "name").to_string(), data);
        }
        let mut problems = Vec::new();
        // Claims: fetched, not being deleted, and their volume attached to this node.
        for (vname, claim) in spec_claims(spec) {
            let claim_problem = |message: String| Problem::Claim {
                volume: vname.to_string(),
                message: format!("error processing PVC {ns}/{claim}: {message}"),
            };
            let Some(pvc) = self.store.get(Res::PersistentVolumeClaim, ns, claim) else {
                problems.push(claim_problem(format!(
                    "failed to fetch PVC from API server: persistentvolumeclaims \"{claim}\" not found"
                )));
                continue;
            };
            if pvc
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null())
            {
                problems.push(claim_problem("PVC is being deleted".into()));
                continue;
            }
            let vol = volume_name(&pvc);
            if !self.cfg.volumes.is_attached(vol, &self.cfg.node_name) {
                problems.push(Problem::Unattached {
                    volume: vname.to_string(),
                });
                continue;
            }
            let dir = self.cfg.volumes.claim_dir(ns, claim);
            if !dir.is_dir() {
                // A claim stored without the API (no provisioner ran): provision it now.
                let _guard = self.cfg.volumes.lock();
                if !dir.is_dir() {
                    let _ = self.cfg.volumes.provision(ns, claim);
                }
            }
            if read_only(&pvc) {
                f.read_only_claims.insert(claim.to_string());
            }
            f.pvcs.insert(claim.to_string(), dir);
        }
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or("").to_string();
            for (src, field, kind, map) in [
                ("secret", "secretName", "secret", &f.secrets),
                ("configMap", "name", "configmap", &f.config_maps),
            ] {
                let Some(s) = v.get(src).filter(|s| !s.is_null()) else {
                    continue;
                };
                let name = s[field].as_str().unwrap_or("");
                let optional = s["optional"].as_bool() == Some(true);
                match map.get(name) {
                    None if !optional => problems.push(Problem::Volume {
                        volume: vname.clone(),
                        message: format!("{kind} \"{name}\" not found"),
                    }),
                    Some(data) => {
                        for it in s["items"].as_array().into_iter().flatten() {
                            let key = it["key"].as_str().unwrap_or("");
                            if !data.contains_key(key) && !optional {
                                problems.push(Problem::Volume {
                                    volume: vname.clone(),
                                    message: format!(
                                        "{kind} references non-existent {} key: {key}",
                                        if kind == "secret" { "secret" } else { "config" }
                                    ),
                                });
                            }
                        }
                    }
                    None => {}
                }
            }
        }
        for c in containers.all.iter() {
            let spec_c = containers.spec_of(spec, &c.name);
            let mut msg: Option<String> = None;
            for e in spec_c["envFrom"].as_array().into_iter().flatten() {
                for (src, kind, map) in [
                    ("secretRef", "secret", &f.secrets),
                    ("configMapRef", "configmap", &f.config_maps),
                ] {
                    if let Some(r) = e.get(src).filter(|r| !r.is_null()) {
                        let name = r["name"].as_str().unwrap_or("");
                        if !map.contains_key(name)
                            && r["optional"].as_bool() != Some(true)
                            && msg.is_none()
                        {
                            msg = Some(format!("{kind} \"{name}\" not found"));
                        }
                    }
                }
            }
            for e in spec_c["env"].as_array().into_iter().flatten() {
                for (src, kind, kind_cap, map) in [
                    ("secretKeyRef", "secret", "Secret", &f.secrets),
                    ("configMapKeyRef", "configmap", "ConfigMap", &f.config_maps),
                ] {
                    let Some(r) = e
                        .pointer(&format!("/valueFrom/{src}"))
                        .filter(|r| !r.is_null())
                    else {
                        continue;
                    };
                    if msg.is_some() || r["optional"].as_bool() == Some(true) {
                        continue;
                    }
                    let name = r["name"].as_str().unwrap_or("");
                    let key = r["key"].as_str().unwrap_or("");
                    match map.get(name) {
                        None => msg = Some(format!("{kind} \"{name}\" not found")),
                        Some(d) if !d.contains_key(key) => {
                            msg = Some(format!("couldn't find key {key} in {kind_cap} {ns}/{name}"))
                        }
                        Some(_) => {}
                    }
                }
            }
            if let Some(message) = msg {
                problems.push(Problem::Container {
                    name: c.name.clone(),
                    message,
                });
                // Containers after a failing init container are not tried.
                if c.kind != ContainerKind::Main {
                    break;
                }
            }
        }
        if problems.is_empty() {
            Ok(f)
        } else {
            Err(problems)
        }
    }
}

#[derive(Debug)]
enum Problem {
    Container {
        name: String,
        message: String,
    },
    Volume {
        volume: String,
        message: String,
    },
    /// A claim the volume manager cannot process.
    Claim {
        volume: String,
        message: String,
    },
    /// A claim whose volume is not attached to this node (yet).
    Unattached {
        // Read through Debug: the key of what was reported.
        #[allow(dead_code)]
        volume: String,
    },
}

#[derive(Default)]
struct Fixtures {
    secrets: HashMap<String, HashMap<String, Vec<u8>>>,
    config_maps: HashMap<String, HashMap<String, Vec<u8>>>,
    pvcs: HashMap<String, PathBuf>,
    /// Claims mounted read-only whatever the pod asks (ReadOnlyMany).
    read_only_claims: HashSet<String>,
}

enum RunMsg {
    Started(String),
    Done(Box<Result<PodResult, RunnerError>>),
}

#[derive(Debug, Clone)]
struct ContainerInfo {
    name: String,
    image: String,
    kind: ContainerKind,
    pull_policy: String,
    field_path: String,
}

struct Containers {
    all: Vec<ContainerInfo>,
}

impl Containers {
    fn of(spec: &Value) -> Self {
        let mut all = Vec::new();
        for (list, main) in [("initContainers", false), ("containers", true)] {
            for c in spec[list].as_array().into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or("").to_string();
                let kind = if main {
                    ContainerKind::Main
                } else if c["restartPolicy"] == "Always" {
                    ContainerKind::Sidecar
                } else {
                    ContainerKind::Init
                };
                all.push(ContainerInfo {
                    field_path: format!("spec.{list}{{{name}}}"),
                    name,
                    image: c["image"].as_str().unwrap_or("").to_string(),
                    kind,
                    pull_policy: c["imagePullPolicy"].as_str().unwrap_or("").to_string(),
                });
            }
        }
        Containers { all }
    }

    fn get(&self, name: &str) -> Option<&ContainerInfo> {
        self.all.iter().find(|c| c.name == name)
    }

    fn field_path(&self, name: &str) -> String {
        self.get(name)
            .map(|c| c.field_path.clone())
            .unwrap_or_default()
    }

    fn spec_of<'a>(&self, spec: &'a Value, name: &str) -> &'a Value {
        ["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec[*k].as_array())
            .flatten()
            .find(|c| c["name"] == name)
            .unwrap_or(&Value::Null)
    }

    /// Containers in the order the runner launches them, grouped by what starts together:
    /// sidecars with whatever follows them, each regular init container closing a group, and
    /// the main containers together.
    fn groups(&self) -> Vec<Vec<String>> {
        let mut groups = Vec::new();
        let mut cur = Vec::new();
        for c in &self.all {
            cur.push(c.name.clone());
            if c.kind == ContainerKind::Init {
                groups.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            groups.push(cur);
        }
        groups
    }

    fn group_of(&self, name: &str) -> usize {
        self.groups()
            .iter()
            .position(|g| g.iter().any(|n| n == name))
            .unwrap_or(0)
    }

    /// The containers that start first.
    fn first_to_run(&self) -> Vec<String> {
        self.groups().into_iter().next().unwrap_or_default()
    }
}

/// The kubelet's view of a pod, rendered into its status.
struct PodView {
    order: Vec<(String, ContainerKind, String)>,
    states: BTreeMap<String, (Value, bool)>,
    started_at: BTreeMap<String, String>,
    sandbox_ready: bool,
    completed: bool,
}

impl PodView {
    fn new(c: &Containers) -> Self {
        let has_init = c.all.iter().any(|c| c.kind != ContainerKind::Main);
        let mut states = BTreeMap::new();
        for (i, ci) in c.all.iter().enumerate() {
            let reason = if (ci.kind == ContainerKind::Main && has_init)
                || (ci.kind != ContainerKind::Main && i > 0)
            {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            states.insert(
                ci.name.clone(),
                (json!({"waiting": {"reason": reason}}), false),
            );
        }
        PodView {
            order: c
                .all
                .iter()
                .map(|c| (c.name.clone(), c.kind, c.image.clone()))
                .collect(),
            states,
            started_at: BTreeMap::new(),
            sandbox_ready: false,
            completed: false,
        }
    }

    fn set(&mut self, name: &str, state: Value, ready: bool) {
        self.states.insert(name.to_string(), (state, ready));
    }

    fn start(&mut self, name: &str) {
        let at = now_rfc3339();
        self.started_at.insert(name.to_string(), at.clone());
        self.set(name, json!({"running": {"startedAt": at}}), true);
    }

    fn started_at(&self, name: &str) -> Value {
        self.started_at.get(name).map_or(Value::Null, |s| json!(s))
    }

    fn was_started(&self, name: &str) -> bool {
        self.started_at.contains_key(name)
    }

    fn is_running(&self, name: &str) -> bool {
        self.states
            .get(name)
            .is_some_and(|(s, _)| s.get("running").is_some())
    }

    fn is_terminated(&self, name: &str) -> bool {
        self.states
            .get(name)
            .is_some_and(|(s, _)| s.get("terminated").is_some())
    }

    fn finish(&mut self, r: &PodResult, cancelled: bool) {
        let now = now_rfc3339();
        for c in &r.containers {
            let state = match c.exit_code {
                Some(code) => {
                    // Only what was still running is killed: a container that had already
                    // ended (a finished init container) keeps its own exit status.
                    let (code, reason) = if cancelled && c.started && !self.is_terminated(&c.name) {
                        (137, "Error".to_string())
                    } else {
                        (code, c.reason.clone().unwrap_or_else(|| "Error".into()))
                    };
                    let mut t = json!({"exitCode": code, "reason": reason,
                                       "startedAt": self.started_at(&c.name), "finishedAt": now});
                    let message = if !c.termination_message.is_empty() {
                        Some(c.termination_message.clone())
                    } else if reason == "StartError" {
                        c.message.clone()
                    } else {
                        None
                    };
                    if let Some(m) = message {
                        t["message"] = json!(m);
                    }
                    if t["startedAt"].is_null() {
                        t["startedAt"] = json!(now);
                    }
                    json!({"terminated": t})
                }
                None => match c.reason.as_deref() {
                    Some("CreateContainerConfigError") => {
                        json!({"waiting": {"reason": "CreateContainerConfigError", "message": c.message.clone().unwrap_or_default()}})
                    }
                    _ => json!({"waiting": {"reason": "PodInitializing"}}),
                },
            };
            self.set(&c.name, state, false);
        }
        self.completed = true;
        self.sandbox_ready = false;
    }

    fn render(&self, st: &mut Map<String, Value>) {
        let now = now_rfc3339();
        let mut inits = Vec::new();
        let mut mains = Vec::new();
        for (name, kind, image) in &self.order {
            let (state, ready) = self
                .states
                .get(name)
                .cloned()
                .unwrap_or((json!({"waiting": {"reason": "ContainerCreating"}}), false));
            let running = state.get("running").is_some();
            let mut s = json!({"name": name, "image": image, "imageID": image, "ready": ready && running,
                               "restartCount": 0, "started": running, "state": state, "lastState": {}});
            if self.started_at.contains_key(name) {
                s["containerID"] = json!(format!("sykli://{name}"));
            }
            if *kind == ContainerKind::Main {
                mains.push(s);
            } else {
                if *kind == ContainerKind::Sidecar {
                    s["restartPolicy"] = json!("Always");
                }
                inits.push(s);
            }
        }
        let main_running = mains.iter().any(|m| m["state"].get("running").is_some());
        let all_ready = !mains.is_empty() && mains.iter().all(|m| m["ready"] == true);
        let init_done = inits.iter().all(|i| {
            i["state"].pointer("/terminated/exitCode") == Some(&json!(0))
                || (i.get("restartPolicy").is_some() && i["started"] == true)
        });
        let unready: Vec<&str> = mains
            .iter()
            .filter(|m| m["ready"] != true)
            .filter_map(|m| m["name"].as_str())
            .collect();
        let incomplete: Vec<&str> = inits
            .iter()
            .filter(|i| i["state"].pointer("/terminated/exitCode") != Some(&json!(0)))
            .filter_map(|i| i["name"].as_str())
            .collect();
        let scheduled = st
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
            .unwrap_or_else(|| json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
        let old: Vec<Value> = st
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let cond = |t: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
            let prev = old.iter().find(|c| c["type"] == t);
            let status = if ok { "True" } else { "False" };
            let since = match prev {
                Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
                _ => json!(now),
            };
            let mut c = json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            c
        };
        let completed = self.completed;
        let conditions = vec![
            cond("PodReadyToStartContainers", self.sandbox_ready, None, None),
            if completed {
                cond("Initialized", init_done, Some("PodCompleted"), None)
            } else if init_done {
                cond("Initialized", true, None, None)
            } else {
                cond(
                    "Initialized",
                    false,
                    Some("ContainersNotInitialized"),
                    Some(format!(
                        "containers with incomplete status: [{}]",
                        incomplete.join(" ")
                    )),
                )
            },
            if completed {
                cond("Ready", false, Some("PodCompleted"), None)
            } else if all_ready {
                cond("Ready", true, None, None)
            } else {
                cond(
                    "Ready",
                    false,
                    Some("ContainersNotReady"),
                    Some(format!(
                        "containers with unready status: [{}]",
                        unready.join(" ")
                    )),
                )
            },
            if completed {
                cond("ContainersReady", false, Some("PodCompleted"), None)
            } else if all_ready {
                cond("ContainersReady", true, None, None)
            } else {
                cond(
                    "ContainersReady",
                    false,
                    Some("ContainersNotReady"),
                    Some(format!(
                        "containers with unready status: [{}]",
                        unready.join(" ")
                    )),
                )
            },
            scheduled,
        ];
        st.insert("conditions".into(), json!(conditions));
        if !inits.is_empty() {
            st.insert("initContainerStatuses".into(), json!(inits));
        }
        st.insert("containerStatuses".into(), json!(mains));
        if !completed {
            st.insert(
                "phase".into(),
                json!(if main_running { "Running" } else { "Pending" }),
            );
        }
        if self.sandbox_ready {
            st.insert("podIP".into(), json!("127.0.0.1"));
            st.insert("podIPs".into(), json!([{"ip": "127.0.0.1"}]));
        }
    }
}

/// `*` and `?` globbing, as the deny list is written.
pub fn glob(pattern: &str, s: &str) -> bool {
    fn rec(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len()).any(|i| rec(&p[1..], &s[i..])),
            Some('?') => !s.is_empty() && rec(&p[1..], &s[1..]),
            Some(c) => s.first() == Some(c) && rec(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    rec(&p, &s)
}

/// The bubblewrap processes whose command line names a path under `dir` (a pod's work dir,
/// or the cluster's `pods` dir). Both bwrap processes of a sandbox match (the one the runner
/// started and the pid-namespace init it forked), whatever their parent is now.
pub fn sandboxes(dir: Option<&Path>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = dir.map(|d| d.to_string_lossy().into_owned());
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != me && is_sandbox(pid, needle.as_deref()) {
            out.push(pid);
        }
    }
    out
}

fn is_sandbox(pid: i32, needle: Option<&str>) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.first().is_some_and(|a| a.ends_with("bwrap"))
        && needle.is_none_or(|n| args.iter().any(|a| a.contains(n)))
}

/// SIGKILLs the sandboxes of the pod whose work dir is `work_dir`: both bwrap processes, so
/// the pid namespace's init dies and takes every process inside with it (killing only the
/// outer bwrap can leave the inner one behind when it happens during the sandbox's set-up).
/// A pidfd pins each process while its command line is checked again, so a recycled pid is
/// never signalled.
pub fn kill_sandboxes(work_dir: &Path) -> usize {
    let needle = work_dir.to_string_lossy().into_owned();
    let mut n = 0;
    for pid in sandboxes(Some(work_dir)) {
        // SAFETY: pidfd_open(2) with a pid and no flags; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        if fd < 0 {
            continue;
        }
        if is_sandbox(pid, Some(&needle)) {
            // SAFETY: pidfd_send_signal(2) on the pidfd we hold, no siginfo.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            if r == 0 {
                n += 1;
            }
        }
        // SAFETY: closing the fd we opened.
        unsafe {
            libc::close(fd);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("registry.invalid/*", "registry.invalid/app:1"));
        assert!(!glob("registry.invalid/*", "docker.io/busybox"));
        assert!(glob("*:latest", "busybox:latest"));
        assert!(glob("b?sybox", "busybox"));
    }
}
