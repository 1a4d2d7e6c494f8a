//! Deleting the finished Jobs of a run, with group commit: a Job that ends while no delete
//! of its run is in flight is deleted at once, by name (one request, as before); the Jobs
//! that end while one is in flight wait for it and are then deleted together, in one
//! DELETE of the collection selected by their run and their `sykli.io/job` labels. Nothing
//! waits for a batch to fill: a run whose tasks end one at a time makes one request per
//! Job, and a run whose tasks end together makes a few for all of them.
//!
//! `deletecollection` is an extra verb on `jobs`. An account without it (or any failure of
//! the collection request) falls back to one DELETE per Job, each with its own error; a
//! refusal is remembered for the client, so it is asked once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, ListParams};
use tokio::sync::oneshot;

use super::{objects, retry};
use crate::error::{Error, Result};
use crate::manifest::{JOB_LABEL, RUN_LABEL};

/// At most this many Jobs per collection request: ~64 bytes of selector each keeps the
/// URL within what proxies in front of API servers accept (8 KiB is common).
pub const MAX_BATCH: usize = 50;

type Waiter = (String, oneshot::Sender<Result<()>>);

#[derive(Default)]
struct Queue {
    /// A delete of this run is in flight (its task drains the queue).
    leading: bool,
    waiting: Vec<Waiter>,
}

/// One per client ([`super::Cluster`]): its queues are per namespace and run.
#[derive(Default)]
pub struct Reaper {
    queues: Mutex<HashMap<(String, String), Queue>>,
    /// The account may not `deletecollection` jobs: one DELETE per Job from now on.
    collection_refused: AtomicBool,
}

impl Reaper {
    /// Deletes Job `namespace/name` of run `run` (background propagation: its pods and
    /// owned Secrets go with it); a Job already gone is fine. Returns once it is deleted.
    pub async fn delete_job(
        self: &Arc<Self>,
        client: &kube::Client,
        namespace: &str,
        run: &str,
        name: &str,
    ) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let key = (namespace.to_string(), run.to_string());
        let lead = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let queue = queues.entry(key.clone()).or_default();
            queue.waiting.push((name.to_string(), tx));
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            let reaper = self.clone();
            let api: Api<Job> = Api::namespaced(client.clone(), namespace);
            tokio::spawn(async move { reaper.drain(api, key).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::cluster(
                "api",
                format!("deleting Job {namespace}/{name}: the cleanup stopped before answering"),
            ))
        })
    }

    /// Deletes what is queued for `key`, batch after batch, until the queue is empty.
    async fn drain(self: Arc<Self>, api: Api<Job>, key: (String, String)) {
        loop {
            let batch = {
                let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                let Some(queue) = queues.get_mut(&key) else {
                    return;
                };
                if queue.waiting.is_empty() {
                    queues.remove(&key);
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            for chunk in chunks(batch, MAX_BATCH) {
                self.delete(&api, &key.1, chunk).await;
            }
        }
    }

    async fn delete(&self, api: &Api<Job>, run: &str, batch: Vec<Waiter>) {
        if batch.len() > 1 && !self.collection_refused.load(Ordering::Relaxed) {
            let names: Vec<&str> = batch.iter().map(|(n, _)| n.as_str()).collect();
            let params = ListParams::default().labels(&selector(run, &names));
            let background = DeleteParams::background();
            let doing = format!("deleting the {} Jobs of run {run} that ended", names.len());
            match retry(&doing, || api.delete_collection(&background, &params)).await {
                Ok(_) => {
                    for (_, tx) in batch {
                        let _ = tx.send(Ok(()));
                    }
                    return;
                }
                Err(Error::Cluster {
                    kind: "forbidden", ..
                }) => self.collection_refused.store(true, Ordering::Relaxed),
                // Anything else: each Job by name, so each gets its own answer.
                Err(_) => {}
            }
        }
        let deletes = batch.into_iter().map(|(name, tx)| async move {
            let _ = tx.send(objects::delete_if_there(api, "Job", &name).await);
        });
        futures::future::join_all(deletes).await;
    }
}

/// `sykli.io/run=RUN,sykli.io/job in (A,B,…)`: exactly the named Jobs of the run (Job
/// names are DNS labels, valid label values, unique in the namespace).
pub fn selector(run: &str, names: &[&str]) -> String {
    format!("{RUN_LABEL}={run},{JOB_LABEL} in ({})", names.join(","))
}

fn chunks<T>(mut all: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    while all.len() > size {
        let rest = all.split_off(size);
        out.push(std::mem::replace(&mut all, rest));
    }
    out.push(all);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selector_names_the_run_and_each_job() {
        assert_eq!(
            selector("r1", &["a-1", "b-2"]),
            "sykli.io/run=r1,sykli.io/job in (a-1,b-2)"
        );
    }

    #[test]
    fn batches_keep_every_job_once_in_order_and_none_is_larger_than_the_limit() {
        let sizes = |n: usize| {
            let c = chunks((0..n).collect::<Vec<_>>(), MAX_BATCH);
            assert_eq!(c.concat(), (0..n).collect::<Vec<_>>());
            c.iter().map(Vec::len).collect::<Vec<_>>()
        };
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(MAX_BATCH), [MAX_BATCH]);
        assert_eq!(sizes(MAX_BATCH + 1), [MAX_BATCH, 1]);
        assert_eq!(sizes(2 * MAX_BATCH + 3), [MAX_BATCH, MAX_BATCH, 3]);
    }
}
