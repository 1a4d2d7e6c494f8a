//! Real git repositories for tests, made with the git command line in temporary directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Repo {
    pub dir: PathBuf,
}

/// A git command isolated from the developer's own configuration.
pub fn git_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_TERMINAL_PROMPT", "0")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ]);
    cmd
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_cmd(dir).args(args).output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

impl Repo {
    pub fn init(dir: &Path) -> Repo {
        std::fs::create_dir_all(dir).unwrap();
        git(dir, &["init", "-q"]);
        Repo {
            dir: dir.to_path_buf(),
        }
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.dir, args)
    }

    pub fn write(&self, path: &str, content: &str) {
        let p = self.dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn commit_all(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// What `git status` itself reports, as (code, path) pairs in porcelain order.
    pub fn porcelain(&self) -> Vec<(String, String)> {
        let out = git_cmd(&self.dir)
            .args([
                "status",
                "--porcelain=v1",
                "-z",
                "--no-renames",
                "--untracked-files=normal",
                "--ignore-submodules=none",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
            .split(|b| *b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let e = String::from_utf8_lossy(e);
                (e[..2].to_string(), e[3..].to_string())
            })
            .collect()
    }
}

/// A repository with one commit pushed to a bare repository that serves as `origin`.
pub fn with_origin(tmp: &Path) -> (Repo, PathBuf) {
    let bare = tmp.join("origin.git");
    git(tmp, &["init", "-q", "--bare", bare.to_str().unwrap()]);
    let repo = Repo::init(&tmp.join("work"));
    repo.write("README.md", "hello\n");
    repo.commit_all("first");
    repo.git(&["remote", "add", "origin", bare.to_str().unwrap()]);
    repo.git(&["push", "-q", "-u", "origin", "main"]);
    (repo, bare)
}

/// The Job sykli builds for `task` (pipeline JSON) in `namespace`, cloning `sha` from `url`,
/// with the repository root as resource `src:.`.
pub fn job_for(
    task: serde_json::Value,
    run: &str,
    namespace: &str,
    url: &str,
    sha: &str,
    branch: Option<&str>,
) -> k8s_openapi::api::batch::v1::Job {
    use sykli_core::manifest::{build_job, names, BuildOptions};
    use sykli_core::pipeline::{Resource, Task};
    use sykli_core::source::SourcePlan;
    let task: Task = serde_json::from_value(task).unwrap();
    let resources: std::collections::BTreeMap<String, Resource> =
        serde_json::from_value(serde_json::json!({"src:.": {"type": "directory", "path": "."}}))
            .unwrap();
    let opts: BuildOptions = serde_json::from_value(serde_json::json!({
        "namespace": namespace, "run_id": run, "source": {"url": url, "sha": sha, "branch": branch}
    }))
    .unwrap();
    let plan = SourcePlan::from_options(&opts.source).unwrap();
    build_job(
        &task,
        &resources,
        &names::job_name(&task.name, run),
        &plan,
        &opts,
    )
    .unwrap()
}

/// A task that sets every task `k8s` option (in namespace `gpu-jobs`).
pub fn every_k8s_option_task() -> serde_json::Value {
    serde_json::json!({"name": "gpu", "command": "nvidia-smi", "container": "cuda:12", "timeout": 600,
    "env": {"B": "2", "A": "1"},
    "services": [{"name": "db", "image": "postgres:16"}, {"name": "DB", "image": "redis:7"}],
    "k8s": {
        "namespace": "gpu-jobs", "node_selector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}, {"key": "x", "operator": "Exists"}],
        "affinity": {"node_affinity": {"required_labels": {"zone": "a"}, "preferred_labels": {"disk": "ssd"}},
                     "pod_anti_affinity": {"required_labels": {"app": "gpu"}}},
        "priority_class_name": "high", "resources": {"request_cpu": "500m", "limit_cpu": "2", "memory": "32Gi"},
        "gpu": 2, "service_account": "builder",
        "security_context": {"run_as_user": 1000, "run_as_non_root": true, "drop_capabilities": ["ALL"]},
        "host_network": false, "dns_policy": "ClusterFirst",
        "volumes": [{"name": "cfg", "mount_path": "/etc/cfg", "config_map": {"name": "app-config"}},
                    {"name": "scratch", "mount_path": "/scratch", "empty_dir": {"medium": "Memory", "size_limit": "1Gi"}},
                    {"name": "data", "mount_path": "/data", "pvc": {"claim_name": "datasets"}}]
    }})
}

/// Runs a Job on the runtime; the outcome comes with every event the run sent.
pub fn spawn_run(
    cluster: std::sync::Arc<sykli_core::cluster::Cluster>,
    job: k8s_openapi::api::batch::v1::Job,
    opts: sykli_core::cluster::run::RunOptions,
) -> tokio::task::JoinHandle<(
    sykli_core::Result<sykli_core::cluster::run::Outcome>,
    Vec<sykli_core::cluster::run::Event>,
)> {
    tokio::spawn(async move {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel, cancel_rx) = tokio::sync::watch::channel(false);
        let outcome = sykli_core::cluster::run::run_job(cluster, job, opts, tx, cancel_rx).await;
        (outcome, drain(rx))
    })
}

pub fn drain(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<sykli_core::cluster::run::Event>,
) -> Vec<sykli_core::cluster::run::Event> {
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    events
}

pub fn logs(events: &[sykli_core::cluster::run::Event], container: &str) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            sykli_core::cluster::run::Event::Log { container: c, line } if c == container => {
                Some(format!("{line}\n"))
            }
            _ => None,
        })
        .collect()
}

static CONTROL_PLANE: std::sync::OnceLock<sykli_testkit::kube::ControlPlane> =
    std::sync::OnceLock::new();

/// The real control plane of this test binary (`sykli-kube up`), started by the first
/// caller with `o` (every caller of one binary passes the same options); it stops when
/// the test process ends and its stdin closes.
pub async fn control_plane(
    o: sykli_testkit::kube::ControlPlaneOptions,
) -> &'static sykli_testkit::kube::ControlPlane {
    tokio::task::spawn_blocking(move || {
        CONTROL_PLANE.get_or_init(|| {
            sykli_testkit::kube::ControlPlane::start(&o).unwrap_or_else(|e| panic!("{e}"))
        })
    })
    .await
    .unwrap()
}

/// A kube client of the real control plane's admin, in `namespace`.
pub async fn connect_real(
    plane: &sykli_testkit::kube::ControlPlane,
    namespace: Option<&str>,
) -> sykli_core::cluster::Cluster {
    sykli_core::cluster::Cluster::connect(&sykli_core::cluster::ConnectOptions {
        kubeconfig: Some(plane.kubeconfig().to_path_buf()),
        context: None,
        namespace: namespace.map(str::to_string),
    })
    .await
    .unwrap()
}

/// Sets env `name` of container `container` of a Job's pod.
pub fn set_env(
    job: &mut k8s_openapi::api::batch::v1::Job,
    container: &str,
    name: &str,
    value: &str,
) {
    let pod = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
    for c in pod
        .init_containers
        .iter_mut()
        .flatten()
        .chain(pod.containers.iter_mut())
    {
        if c.name == container {
            for e in c.env.iter_mut().flatten() {
                if e.name == name {
                    e.value = Some(value.to_string());
                }
            }
        }
    }
}

// --- real plane helpers (strategies) ---

/// A binary the workspace builds, in this build's target dir (`cargo build --bins` first).
pub fn target_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = dir.join("debug").join(name);
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p sykli_testkit -p sykli_sync --bins",
        bin.display()
    );
    bin
}

/// The node flag that makes `image` a sync image: `bin` at /usr/local/bin/sykli-sync.
pub fn sync_image_arg(image: &str, bin: &Path) -> String {
    format!(
        "--runner-arg=--image-file={image}={}:/usr/local/bin/sykli-sync",
        bin.display()
    )
}

/// Creates namespace `name` on the real plane.
pub async fn create_namespace(cluster: &sykli_core::cluster::Cluster, name: &str) {
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(cluster.client.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap();
}

/// Claim `namespace/name` (`mode`, e.g. ReadWriteMany) bound by the real PV binder to a
/// hostPath PersistentVolume on `dir` (made world-writable: the pods run as non-root);
/// returns once the claim is Bound. The volume is pre-bound to the claim (`claimRef`), so
/// the claims of tests running side by side cannot swap volumes.
pub async fn bound_claim(
    cluster: &sykli_core::cluster::Cluster,
    namespace: &str,
    name: &str,
    mode: &str,
    dir: &Path,
) {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{namespace}-{name}")},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": [mode], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": dir.to_str().unwrap(), "type": "Directory"},
                 "claimRef": {"namespace": namespace, "name": name}}
    }))
    .unwrap();
    kube::Api::<PersistentVolume>::all(cluster.client.clone())
        .create(&Default::default(), &pv)
        .await
        .unwrap();
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"accessModes": [mode], "storageClassName": "",
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    let claims: kube::Api<PersistentVolumeClaim> =
        kube::Api::namespaced(cluster.client.clone(), namespace);
    claims.create(&Default::default(), &pvc).await.unwrap();
    let bound = |c: Option<&PersistentVolumeClaim>| {
        c.and_then(|c| c.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some("Bound")
    };
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        kube::runtime::wait::await_condition(claims, name, bound),
    )
    .await
    .unwrap_or_else(|_| panic!("claim {namespace}/{name} was not bound within 60s"))
    .unwrap();
}

// --- real plane helpers (faults) ---

/// A kube client of the real plane's admin through `proxy` (the test kit's logging,
/// fault-injecting proxy in front of the API server), in `namespace`.
pub async fn connect_proxied(
    proxy: &sykli_testkit::kube_proxy::KubeProxy,
    namespace: &str,
) -> sykli_core::cluster::Cluster {
    sykli_core::cluster::Cluster::connect(&sykli_core::cluster::ConnectOptions {
        kubeconfig: Some(proxy.kubeconfig().to_path_buf()),
        context: None,
        namespace: Some(namespace.to_string()),
    })
    .await
    .unwrap()
}

/// A bare repository with one commit (`Cargo.toml`, `src/main.rs`) served by a git
/// daemon on 127.0.0.1: (the daemon, its URL, the commit).
pub fn served_repo(tmp: &Path) -> (sykli_testkit::git_server::GitDaemon, String, String) {
    let repo = Repo::init(&tmp.join("work"));
    repo.write("Cargo.toml", "[package]\nname = \"app\"\n");
    repo.write("src/main.rs", "fn main() {}\n");
    let sha = repo.commit_all("first");
    let srv = tmp.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    git(
        &srv,
        &[
            "clone",
            "-q",
            "--bare",
            repo.dir.to_str().unwrap(),
            "repo.git",
        ],
    );
    let daemon = sykli_testkit::git_server::GitDaemon::start(
        &srv,
        sykli_testkit::git_server::ServerOptions::default(),
    )
    .unwrap();
    let url = daemon.url("repo.git");
    (daemon, url, sha)
}

/// Pods are admitted once the service-account controller made the namespace's default.
pub async fn default_account(client: &kube::Client, namespace: &str) {
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client.clone(), namespace);
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        kube::runtime::wait::await_condition(
            accounts,
            "default",
            |sa: Option<&k8s_openapi::api::core::v1::ServiceAccount>| sa.is_some(),
        ),
    )
    .await
    .expect("the namespace's default service account within 120 s")
    .unwrap();
}

/// A namespace with a ServiceAccount bound to exactly `rules`, and a kubeconfig of its token.
pub async fn account_with(
    plane: &sykli_testkit::kube::ControlPlane,
    admin: &kube::Client,
    namespace: &str,
    rules: serde_json::Value,
) -> std::sync::Arc<sykli_core::cluster::Cluster> {
    async fn create<K>(api: kube::Api<K>, object: serde_json::Value) -> K
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_json::from_value(object).unwrap();
        api.create(&kube::api::PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {object:?}: {e}"))
    }
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    create(
        kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone()),
        serde_json::json!({"metadata": {"name": namespace}}),
    )
    .await;
    default_account(admin, namespace).await;
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(admin.clone(), namespace);
    create(
        accounts.clone(),
        serde_json::json!({"metadata": {"name": "sykli"}}),
    )
    .await;
    create(
        kube::Api::<Role>::namespaced(admin.clone(), namespace),
        serde_json::json!({"metadata": {"name": "sykli"}, "rules": rules}),
    )
    .await;
    create(
        kube::Api::<RoleBinding>::namespaced(admin.clone(), namespace),
        serde_json::json!({"metadata": {"name": "sykli"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sykli"},
            "subjects": [{"kind": "ServiceAccount", "name": "sykli", "namespace": namespace}]}),
    )
    .await;
    let request = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                         "spec": {"audiences": [], "expirationSeconds": 3600}});
    let answer: serde_json::Value = accounts
        .create_subresource(
            "token",
            "sykli",
            &kube::api::PostParams::default(),
            &request,
        )
        .await
        .unwrap();
    let token = answer["status"]["token"].as_str().unwrap().to_string();
    let p = plane;
    let file = p.dir().join(format!("{namespace}.kubeconfig"));
    std::fs::write(
        &file,
        serde_json::to_vec(&serde_json::json!({"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": p.info().server, "certificate-authority": p.info().ca}}],
            "users": [{"name": "sykli", "user": {"token": token}}],
            "contexts": [{"name": "sykli", "context": {"cluster": "c", "user": "sykli", "namespace": namespace}}],
            "current-context": "sykli"}))
        .unwrap(),
    )
    .unwrap();
    std::sync::Arc::new(
        sykli_core::cluster::Cluster::connect(&sykli_core::cluster::ConnectOptions {
            kubeconfig: Some(file),
            context: None,
            namespace: Some(namespace.into()),
        })
        .await
        .unwrap(),
    )
}

/// A small git repository (at `dir/work`) with a committed and an uncommitted file.
pub fn committed_and_dirty(dir: &Path) -> PathBuf {
    let repo = Repo::init(&dir.join("work"));
    repo.write("committed.txt", "committed\n");
    repo.commit_all("first");
    repo.write("src/dirty.rs", "fn dirty() {}\n");
    repo.dir
}
