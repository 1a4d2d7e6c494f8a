//! Starting and stopping the whole test cluster: the API server on 127.0.0.1 over TLS, the
//! controllers and the kubelet, on a runtime of their own (so tests on any runtime can start
//! one), and the kubeconfig that points at it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use serde_json::{json, Value};
use sykli_testkit::pod_runner::{ImageEntrypoint, ImageFile};
use sykli_testkit::Shell;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::api::{self, ApiConfig, ApiState};
use crate::controller::{ControlConfig, Controllers, NodeConfig};
use crate::faults::{FaultState, Faults, RequestRecord};
use crate::kubelet::{self, Kubelet, KubeletConfig};
use crate::logs::LogStore;
use crate::resources::Res;
use crate::store::Store;
use crate::util::{random_token, Rng};
use crate::validation::FieldValidation;
use crate::volumes::Volumes;

pub const NODE_NAME: &str = "sykli-node";
pub const CONTEXT: &str = "sykli-test";
pub const READONLY_CONTEXT: &str = "sykli-test-readonly";

/// How to run the cluster. [`ClusterOptions::new`] gives Kubernetes' own timings except where
/// noted.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The kubeconfig, pod work dirs and claim directories go here.
    pub dir: PathBuf,
    pub shell: Shell,
    /// The nodes, by name (default: one, [`NODE_NAME`]); each has a kubelet. The scheduler puts
    /// a pod on the feasible node with the fewest pods (ties: the first in this list).
    pub nodes: Vec<String>,
    /// Labels of every node, besides kubernetes.io/hostname, os and arch.
    pub node_labels: BTreeMap<String, String>,
    /// Labels of one node (by name), on top of `node_labels`.
    pub per_node_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Files that images stand for: a container whose image is `image` sees `host_path`
    /// read-only at `container_path`, in its pod and in exec sandboxes.
    pub image_files: Vec<ImageFile>,
    /// Images' entrypoints: what a container of the image that sets no `command` runs.
    pub image_entrypoints: Vec<ImageEntrypoint>,
    /// Glob patterns of images that fail to pull.
    pub deny_images: Vec<String>,
    /// Watch history kept per resource type (events).
    pub history_limit: usize,
    /// How often watches with allowWatchBookmarks get a bookmark (kube-apiserver: ~1 minute).
    pub bookmark_interval: Duration,
    /// What an unset `fieldValidation` means (this server: Strict; kube-apiserver: Warn).
    pub default_field_validation: FieldValidation,
    /// The Job controller's back-off after a failed pod (Kubernetes: 10s, doubling).
    pub backoff_base: Duration,
    /// From ErrImagePull to ImagePullBackOff.
    pub image_backoff: Duration,
    /// How often the kubelet looks again for missing Secrets/ConfigMaps.
    pub retry_interval: Duration,
    /// Periodic reconcile (deadlines, TTL), besides reconciling on every change.
    pub resync: Duration,
    pub faults: Faults,
    /// Seeds uids, names and tokens (not the faults: they have their own seed).
    pub seed: Option<u64>,
}

impl ClusterOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ClusterOptions {
            dir: dir.into(),
            shell: Shell::Host,
            nodes: vec![NODE_NAME.to_string()],
            node_labels: BTreeMap::new(),
            per_node_labels: BTreeMap::new(),
            image_files: Vec::new(),
            image_entrypoints: Vec::new(),
            deny_images: Vec::new(),
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(60),
            default_field_validation: FieldValidation::Strict,
            backoff_base: Duration::from_secs(10),
            image_backoff: Duration::from_secs(1),
            retry_interval: Duration::from_secs(1),
            resync: Duration::from_millis(200),
            faults: Faults::default(),
            seed: None,
        }
    }

    /// Adds an image file (see [`ClusterOptions::image_files`]).
    pub fn image_file(
        mut self,
        image: impl Into<String>,
        host_path: impl Into<PathBuf>,
        container_path: impl Into<PathBuf>,
    ) -> Self {
        self.image_files.push(ImageFile {
            image: image.into(),
            host_path: host_path.into(),
            container_path: container_path.into(),
        });
        self
    }

    /// Checks the nodes and image files; resolves the image files' host paths.
    fn check(&mut self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("the cluster needs at least one node".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if !crate::validation::dns1123_subdomain_errors(n).is_empty() {
                return Err(format!(
                    "node name {n:?} is not a DNS-1123 subdomain (lower case letters, digits, '-' and '.')"
                ));
            }
            if !seen.insert(n) {
                return Err(format!("node {n:?} is named twice"));
            }
        }
        for n in self.per_node_labels.keys() {
            if !seen.contains(n) {
                return Err(format!(
                    "labels for node {n:?}, which is not one of the nodes"
                ));
            }
        }
        for f in &mut self.image_files {
            if f.image.is_empty() {
                return Err("an image file needs an image".into());
            }
            if !f.container_path.is_absolute() {
                return Err(format!(
                    "image {}: the container path {} is not absolute",
                    f.image,
                    f.container_path.display()
                ));
            }
            f.host_path = std::fs::canonicalize(&f.host_path).map_err(|e| {
                format!(
                    "image {}: host path {}: {e}",
                    f.image,
                    f.host_path.display()
                )
            })?;
        }
        Ok(())
    }
}

/// What a client needs: also the one line the binary prints.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    pub url: String,
    pub kubeconfig: PathBuf,
    pub admin_token: String,
    pub readonly_token: String,
    /// PEM of the CA that signed the server's certificate.
    #[serde(skip)]
    pub ca_pem: String,
    pub pid: u32,
}

/// A running test cluster; stopped (every pod killed) on drop.
pub struct TestCluster {
    info: ClusterInfo,
    dir: PathBuf,
    state: Arc<ApiState>,
    kubelets: Vec<Arc<Kubelet>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Started {
    info: ClusterInfo,
    state: Arc<ApiState>,
    kubelets: Vec<Arc<Kubelet>>,
}

impl TestCluster {
    /// Starts the cluster and returns once it serves.
    pub fn start(mut opts: ClusterOptions) -> Result<TestCluster, String> {
        opts.check()?;
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| format!("creating {}: {e}", opts.dir.display()))?;
        let dir = std::fs::canonicalize(&opts.dir)
            .map_err(|e| format!("resolving {}: {e}", opts.dir.display()))?;
        let opts = ClusterOptions {
            dir: dir.clone(),
            ..opts
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Started, String>>();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sykli-test-cluster".into())
            .spawn(move || run(opts, ready_tx, shutdown_rx))
            .map_err(|e| format!("starting the cluster thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(s)) => Ok(TestCluster {
                info: s.info,
                dir,
                state: s.state,
                kubelets: s.kubelets,
                shutdown: Some(shutdown_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err("the cluster thread ended before it was ready".into())
            }
        }
    }

    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    pub fn url(&self) -> &str {
        &self.info.url
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.info.kubeconfig
    }

    pub fn admin_token(&self) -> &str {
        &self.info.admin_token
    }

    pub fn readonly_token(&self) -> &str {
        &self.info.readonly_token
    }

    pub fn ca_pem(&self) -> &str {
        &self.info.ca_pem
    }

    /// The object store (reads and writes bypass the API: no validation, no auth).
    pub fn store(&self) -> &Arc<Store> {
        &self.state.store
    }

    pub fn get(&self, res: Res, namespace: &str, name: &str) -> Option<Value> {
        self.state.store.get(res, namespace, name)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    pub fn faults(&self) -> Faults {
        self.state
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .faults
            .clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.request_log()
    }

    pub fn clear_requests(&self) {
        self.state
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The directory that backs claim `ns/name` (while the claim exists).
    pub fn claim_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.state.volumes.claim_dir(namespace, name)
    }

    /// The directory the cluster keeps its kubeconfig, pod work dirs and claims in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod sandboxes (bwrap processes) of this cluster that run now.
    pub fn running_sandboxes(&self) -> Vec<i32> {
        kubelet::sandboxes(Some(&self.dir.join("pods")))
    }

    /// Stops the cluster: every pod's containers are killed before this returns.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for k in &self.kubelets {
            k.stop_all();
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

fn run(
    opts: ClusterOptions,
    ready: std::sync::mpsc::Sender<Result<Started, String>>,
    shutdown: oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sykli-test-cluster-rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("building the runtime: {e}")));
            return;
        }
    };
    let kubelet_slot: Arc<Mutex<Vec<Arc<Kubelet>>>> = Arc::new(Mutex::new(Vec::new()));
    let slot = Arc::clone(&kubelet_slot);
    rt.block_on(async move {
        if let Err(e) = serve(opts, ready, shutdown, slot).await {
            eprintln!("sykli-test-cluster: {e}");
        }
    });
    let kubelets = std::mem::take(&mut *kubelet_slot.lock().unwrap_or_else(|e| e.into_inner()));
    for k in kubelets {
        k.stop_all();
    }
    rt.shutdown_timeout(Duration::from_secs(2));
}

async fn serve(
    opts: ClusterOptions,
    ready: std::sync::mpsc::Sender<Result<Started, String>>,
    mut shutdown: oneshot::Receiver<()>,
    kubelet_slot: Arc<Mutex<Vec<Arc<Kubelet>>>>,
) -> Result<(), String> {
    let fail = |ready: &std::sync::mpsc::Sender<Result<Started, String>>, e: String| {
        let _ = ready.send(Err(e.clone()));
        e
    };
    let tls = crate::tls::generate().map_err(|e| fail(&ready, format!("TLS: {e}")))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail(&ready, format!("binding 127.0.0.1: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| fail(&ready, e.to_string()))?;
    let mut rng = opts.seed.map_or_else(Rng::from_entropy, Rng::new);
    let admin_token = random_token(&mut rng);
    let readonly_token = random_token(&mut rng);
    let store = Arc::new(Store::new(opts.history_limit, rng));
    for ns in ["default", "kube-system", "kube-public"] {
        let obj = api::prepare(
            &store,
            Res::Namespace,
            "",
            json!({"metadata": {"name": ns}}),
        )
        .map_err(|e| fail(&ready, e.message.clone()))?;
        store
            .create(Res::Namespace, obj)
            .map_err(|e| fail(&ready, e.message.clone()))?;
        api::ensure_default_service_account(&store, ns);
    }
    // The built-in priority classes.
    for (name, value) in [
        ("system-cluster-critical", 2_000_000_000),
        ("system-node-critical", 2_000_001_000),
    ] {
        let pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                        "metadata": {"name": name}, "value": value, "globalDefault": false,
                        "preemptionPolicy": "PreemptLowerPriority",
                        "description": "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."});
        store
            .create(Res::PriorityClass, pc)
            .map_err(|e| fail(&ready, e.message.clone()))?;
    }
    let logs = Arc::new(LogStore::default());
    let volumes = Arc::new(Volumes::new(&opts.dir));
    let kubelets: Vec<Arc<Kubelet>> = opts
        .nodes
        .iter()
        .map(|node| {
            Kubelet::new(
                Arc::clone(&store),
                Arc::clone(&logs),
                KubeletConfig {
                    node_name: node.clone(),
                    dir: opts.dir.clone(),
                    shell: opts.shell,
                    deny_images: opts.deny_images.clone(),
                    retry_interval: opts.retry_interval,
                    image_backoff: opts.image_backoff,
                    image_files: opts.image_files.clone(),
                    image_entrypoints: opts.image_entrypoints.clone(),
                    volumes: Arc::clone(&volumes),
                },
            )
        })
        .collect();
    let state = Arc::new(ApiState {
        store: Arc::clone(&store),
        logs: Arc::clone(&logs),
        admin_token: admin_token.clone(),
        readonly_token: readonly_token.clone(),
        requests: Mutex::new(Vec::new()),
        faults: Mutex::new(FaultState::new(opts.faults.clone())),
        config: ApiConfig {
            bookmark_interval: opts.bookmark_interval,
            default_field_validation: opts.default_field_validation,
            ..ApiConfig::default()
        },
        address: addr.to_string(),
        kubelets: kubelets.clone(),
        volumes: Arc::clone(&volumes),
    });
    *kubelet_slot.lock().unwrap_or_else(|e| e.into_inner()) = kubelets.clone();
    let url = format!("https://{addr}");
    let kubeconfig = opts.dir.join("kubeconfig");
    write_kubeconfig(
        &kubeconfig,
        &url,
        &tls.ca_pem,
        &admin_token,
        &readonly_token,
    )
    .map_err(|e| fail(&ready, e))?;

    // Controllers and kubelet.
    let nodes = opts
        .nodes
        .iter()
        .map(|n| {
            let mut labels = opts.node_labels.clone();
            labels.extend(opts.per_node_labels.get(n).cloned().unwrap_or_default());
            NodeConfig::new(n, &labels)
        })
        .collect();
    let mut controllers = Controllers::new(
        Arc::clone(&store),
        ControlConfig {
            nodes,
            volumes: Arc::clone(&volumes),
            backoff_base: opts.backoff_base,
        },
    );
    let mut changed = store.subscribe();
    let ks = kubelets.clone();
    let resync = opts.resync;
    let control = tokio::spawn(async move {
        loop {
            changed.borrow_and_update();
            controllers.reconcile();
            for k in &ks {
                k.reconcile();
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(resync) => {}
            }
        }
    });

    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server_config));
    let _ = ready.send(Ok(Started {
        info: ClusterInfo {
            url,
            kubeconfig,
            admin_token,
            readonly_token,
            ca_pem: tls.ca_pem.clone(),
            pid: std::process::id(),
        },
        state: Arc::clone(&state),
        kubelets: kubelets.clone(),
    }));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            conn = listener.accept() => {
                let Ok((tcp, _)) = conn else { continue };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| api::serve(Arc::clone(&state), req));
                    // With upgrades: pods/exec switches an HTTP/1.1 connection to WebSocket.
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                });
            }
        }
    }
    control.abort();
    for k in &kubelets {
        k.stop_all();
    }
    Ok(())
}

fn write_kubeconfig(
    path: &Path,
    url: &str,
    ca_pem: &str,
    admin: &str,
    readonly: &str,
) -> Result<(), String> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    // JSON is YAML: every kubeconfig reader takes it.
    let cfg = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": {"server": url, "certificate-authority-data": ca}}],
        "users": [
            {"name": "sykli-test-admin", "user": {"token": admin}},
            {"name": "sykli-test-readonly", "user": {"token": readonly}},
        ],
        "contexts": [
            {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": "sykli-test-admin", "namespace": "default"}},
            {"name": READONLY_CONTEXT, "context": {"cluster": CONTEXT, "user": "sykli-test-readonly", "namespace": "default"}},
        ],
        "current-context": CONTEXT,
    });
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    // Credentials: owner only.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}
