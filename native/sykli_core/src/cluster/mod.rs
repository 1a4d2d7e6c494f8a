//! Talking to a cluster with kube-rs: connect from kubeconfig or in-cluster, retry what is
//! transient, check what a Job needs before creating it, watch a run, follow logs, clean up.
//! No rustler types: the NIF runs these futures on its runtime and forwards the events.

pub mod cleanup;
pub mod objects;
pub mod outputs;
pub mod preflight;
pub mod run;
pub mod sync;
pub mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Every await on the API is bounded by this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectOptions {
    /// A kubeconfig file; otherwise KUBECONFIG, ~/.kube/config, or the in-cluster account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A client shared by every task of a run, and the run watchers it has open.
pub struct Cluster {
    pub client: kube::Client,
    /// The namespace from the options, else the kubeconfig context's, else `default`.
    pub namespace: String,
    /// The API server's URL, for messages.
    pub server: String,
    watchers: Mutex<HashMap<(String, String), Weak<watch::RunWatcher>>>,
    /// Namespaces found ready (or made so): asked once per client, not once per task.
    /// Per namespace, the answer of [`preflight::namespace_ready`] once it was yes.
    ready_namespaces: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
    /// Deletes the finished Jobs of its runs, coalescing those that end together.
    reaper: Arc<cleanup::Reaper>,
}

/// The open-files limit [`raise_open_files_limit`] asks for at most: far more than a run
/// needs, and never "unlimited" (some programs close every descriptor up to the limit).
pub const OPEN_FILES_WANTED: u64 = 65536;

/// Raises this process's soft limit of open files to its hard limit (at most
/// [`OPEN_FILES_WANTED`]), once, as Go's runtime does: each task of a run holds a connection
/// for its live log, and the usual soft limit (1024) is less than a thousand tasks need.
/// Returns the soft limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    static RAISED: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *RAISED.get_or_init(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct passed, nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        let target = lim.rlim_max.min(OPEN_FILES_WANTED);
        if lim.rlim_cur < target {
            let wanted = libc::rlimit {
                rlim_cur: target,
                rlim_max: lim.rlim_max,
            };
            // macOS refuses more than its per-process maximum: the old limit stays then.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
                lim = wanted;
            }
        }
        Some(lim.rlim_cur)
    })
}

impl Cluster {
    pub async fn connect(opts: &ConnectOptions) -> Result<Cluster> {
        raise_open_files_limit();
        let kc_opts = KubeConfigOptions {
            context: opts.context.clone(),
            ..Default::default()
        };
        let context = opts
            .context
            .as_deref()
            .map(|c| format!(" (context {c:?})"))
            .unwrap_or_default();
        let config_error = |e: &dyn std::fmt::Display| {
            Error::cluster("config", format!("no usable kubeconfig{context}: {e}"))
        };
        let config = match &opts.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    Error::cluster(
                        "config",
                        format!("cannot read the kubeconfig {}: {e}", path.display()),
                    )
                })?;
                kube::Config::from_custom_kubeconfig(kc, &kc_opts)
                    .await
                    .map_err(|e| config_error(&e))?
            }
            None if opts.context.is_some() => kube::Config::from_kubeconfig(&kc_opts)
                .await
                .map_err(|e| config_error(&e))?,
            None => kube::Config::infer().await.map_err(|e| config_error(&e))?,
        };
        let namespace = opts
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .map_err(|e| Error::cluster("config", format!("cannot build a client: {e}")))?;
        Ok(Cluster {
            client,
            namespace,
            server,
            watchers: Mutex::new(HashMap::new()),
            ready_namespaces: Mutex::new(Default::default()),
            reaper: Default::default(),
        })
    }

    /// [`preflight::namespace_ready`], once per namespace for this client: a run's tasks
    /// (and sykli's setup before them) share the answer, and the tasks that start together
    /// wait for the first one's question instead of each asking. A failed check is not
    /// kept (the next task asks again). A namespace deleted meanwhile is named by the API
    /// when the Job is created.
    pub async fn ensure_namespace(
        &self,
        namespace: &str,
        missing: preflight::MissingNamespace,
    ) -> Result<()> {
        // `Allow` lets a missing namespace through: nothing is known then.
        if missing == preflight::MissingNamespace::Allow {
            return preflight::namespace_ready(&self.client, namespace, missing).await;
        }
        let cell = self
            .ready_namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(namespace.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| preflight::namespace_ready(&self.client, namespace, missing))
            .await
            .map(|_| ())
    }

    /// The one watcher of `run` in `namespace`, shared by all its tasks.
    pub fn watcher(self: &Arc<Self>, namespace: &str, run: &str) -> Arc<watch::RunWatcher> {
        let mut map = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_string(), run.to_string());
        if let Some(w) = map.get(&key).and_then(Weak::upgrade) {
            return w;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let w = Arc::new(watch::RunWatcher::start(
            self.client.clone(),
            namespace,
            run,
        ));
        map.insert(key, Arc::downgrade(&w));
        w
    }

    /// Deletes the finished Job `namespace/name` of `run`: see [`cleanup`].
    pub async fn delete_job(&self, namespace: &str, run: &str, name: &str) -> Result<()> {
        self.reaper
            .delete_job(&self.client, namespace, run, name)
            .await
    }

    /// How many run watchers are open (for tests: one per namespace and run).
    pub fn open_watchers(&self) -> usize {
        let map = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// Maps a kube error to ours, naming what was being done.
pub fn api_error(doing: &str, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(s) => {
            let kind = match s.code {
                400 => "invalid",
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                410 => "api",
                422 => "invalid",
                _ => "api",
            };
            let causes = s
                .details
                .as_ref()
                .map(|d| {
                    d.causes
                        .iter()
                        .map(|c| format!("{}: {}", c.field, c.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .filter(|c| !c.is_empty())
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            Error::cluster(kind, format!("{doing}: {}{causes}", s.message))
        }
        kube::Error::Auth(_) => Error::cluster("unauthorized", format!("{doing}: {e}")),
        _ => Error::cluster(
            "unreachable",
            format!("{doing}: the API server is unreachable: {e}"),
        ),
    }
}

/// When an error is worth retrying: the delay the server asked for, if it asked.
fn transient(e: &kube::Error) -> Option<Option<Duration>> {
    match e {
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 || s.code == 0 => Some(
            s.details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s.min(60)))),
        ),
        kube::Error::Api(_) | kube::Error::Auth(_) | kube::Error::SerdeError(_) => None,
        // Connection resets, timeouts, TLS hiccups: retry.
        _ => Some(None),
    }
}

/// Runs one API call with a timeout, retrying transient failures (5xx, 429 honouring the
/// server's retry-after, connection errors) with exponential backoff and jitter.
pub async fn retry<T, F, Fut>(doing: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, kube::Error>>,
{
    const ATTEMPTS: u32 = 8;
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        let wait = match tokio::time::timeout(REQUEST_TIMEOUT, call()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => match transient(&e) {
                Some(asked) if attempt < ATTEMPTS => asked.unwrap_or(delay),
                _ => return Err(api_error(doing, e)),
            },
            Err(_) if attempt < ATTEMPTS => delay,
            Err(_) => {
                return Err(Error::cluster(
                    "unreachable",
                    format!("{doing}: no answer within {}s", REQUEST_TIMEOUT.as_secs()),
                ))
            }
        };
        tokio::time::sleep(wait + jitter(wait)).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    unreachable!("the last attempt returns")
}

/// Up to a quarter of `d`, from the clock's low bits (no RNG dependency needed).
pub(crate) fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}
