//! The control plane's controllers: the Job controller, the garbage collector (owner
//! references, propagation policies, finalizers), the namespace controller, the TTL-after-
//! finished controller, the scheduler (over the configured nodes), the PVC protection
//! controller and the attach/detach controller. They reconcile from the store's state whenever
//! it changes, and periodically for time-based work (deadlines, back-off, TTL).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{create_prepared, prepare};
use crate::resources::{Res, ALL};
use crate::store::Store;
use crate::util::{now_rfc3339, parse_rfc3339, unix_now};
use crate::volumes::{
    access_modes, multi_attach_allowed, pod_claims, volume_name, Volumes, PVC_PROTECTION,
};

/// What the controllers need to know about the cluster.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The nodes, in the order ties between equally loaded nodes are broken.
    pub nodes: Vec<NodeConfig>,
    /// The claims' directories and the volumes' attachments.
    pub volumes: Arc<Volumes>,
    /// The Job controller's pod failure back-off base (Kubernetes: 10s, doubling, max 6m).
    pub backoff_base: Duration,
}

pub fn meta_str<'a>(o: &'a Value, k: &str) -> &'a str {
    o.pointer(&format!("/metadata/{k}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Records an Event about `obj`, as the component would.
#[allow(clippy::too_many_arguments)]
pub fn emit_event(
    store: &Store,
    obj: &Value,
    field_path: Option<&str>,
    kind: &str,
    reason: &str,
    message: &str,
    component: &str,
    host: Option<&str>,
) {
    let ns = meta_str(obj, "namespace");
    let ns = if ns.is_empty() { "default" } else { ns };
    let suffix = store.with_rng(|r| format!("{:016x}", r.next_u64()));
    let now = now_rfc3339();
    let mut involved = json!({
        "kind": obj["kind"], "namespace": meta_str(obj, "namespace"), "name": meta_str(obj, "name"),
        "uid": meta_str(obj, "uid"), "apiVersion": obj["apiVersion"],
        "resourceVersion": meta_str(obj, "resourceVersion"),
    });
    if let Some(fp) = field_path {
        involved["fieldPath"] = json!(fp);
    }
    let mut source = json!({"component": component});
    if let Some(h) = host {
        source["host"] = json!(h);
    }
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{}.{suffix}", meta_str(obj, "name")), "namespace": ns},
        "involvedObject": involved, "reason": reason, "message": message, "source": source,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": kind,
        "eventTime": null, "reportingComponent": component,
        "reportingInstance": host.unwrap_or(""),
    });
    let _ = store.create(Res::Event, ev);
}

fn condition(type_: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({"type": type_, "status": "True", "lastProbeTime": now, "lastTransitionTime": now,
           "reason": reason, "message": message})
}

fn has_condition(job: &Value, type_: &str) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        })
}

fn condition_of<'a>(job: &'a Value, type_: &str) -> Option<&'a Value> {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
}

fn controller_uid(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["uid"].as_str())
}

/// An object's owner references (none: empty).
fn owner_refs(o: &Value) -> &[Value] {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The kind an owner reference names, when this server serves it.
fn owner_kind(r: &Value) -> Option<Res> {
    ALL.into_iter()
        .find(|k| r["kind"] == k.kind() && r["apiVersion"] == k.api_version())
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Deletes a pod as an API DELETE does: scheduled pods that still run are marked, and the
/// kubelet removes them once their containers are stopped.
pub fn delete_pod(store: &Store, pod: &Value) {
    let ns = meta_str(pod, "namespace");
    let name = meta_str(pod, "name");
    let scheduled = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let terminal = matches!(phase(pod), "Succeeded" | "Failed");
    if !scheduled || terminal {
        store.delete(Res::Pod, ns, name);
        return;
    }
    let grace = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30);
    let _ = store.update(Res::Pod, ns, name, None, |o| {
        if deleting(o) {
            return Ok(false);
        }
        let at = jiff::Timestamp::from_second(unix_now() + grace)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|_| now_rfc3339());
        o["metadata"]["deletionTimestamp"] = json!(at);
        o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        Ok(true)
    });
}

#[derive(Default)]
struct JobMemory {
    counted: std::collections::HashSet<String>,
    /// Pods seen unfinished and not yet counted, by uid. Kubernetes keeps a Job's pods
    /// (job-tracking finalizer) until they are counted; here a pod may be removed between two
    /// syncs, so one that vanishes unfinished counts as failed, as it would there.
    seen: std::collections::HashSet<String>,
    next_create: Option<Instant>,
}

pub struct Controllers {
    store: Arc<Store>,
    cfg: ControlConfig,
    jobs: HashMap<String, JobMemory>,
    /// Pods whose FailedScheduling message was already reported, by uid.
    unschedulable: HashMap<String, String>,
    /// (pod uid, volume) whose Multi-Attach error was already reported.
    multi_attach_reported: HashSet<(String, String)>,
}

impl Controllers {
    pub fn new(store: Arc<Store>, cfg: ControlConfig) -> Self {
        Controllers {
            store,
            cfg,
            jobs: HashMap::new(),
            unschedulable: HashMap::new(),
            multi_attach_reported: HashSet::new(),
        }
    }

    /// One pass of every controller.
    pub fn reconcile(&mut self) {
        self.namespaces();
        self.garbage_collect();
        self.job_controller();
        self.scheduler();
        self.pvc_protection();
        self.attach_detach();
    }

    fn namespaces(&mut self) {
        let (nss, _) = self.store.list(Res::Namespace, None);
        for ns in nss.iter().filter(|n| !deleting(n)) {
            crate::api::ensure_default_service_account(&self.store, meta_str(ns, "name"));
        }
        for ns in nss.iter().filter(|n| deleting(n)) {
            let name = meta_str(ns, "name");
            let mut remaining = 0;
            for res in ALL.iter().filter(|r| r.namespaced()) {
                let (items, _) = self.store.list(*res, Some(name));
                for o in items {
                    remaining += 1;
                    match res {
                        Res::Pod => delete_pod(&self.store, &o),
                        // Held by their protection finalizer until no pod uses them.
                        Res::PersistentVolumeClaim => {
                            let _ =
                                self.store
                                    .update(*res, name, meta_str(&o, "name"), None, |p| {
                                        if deleting(p) {
                                            return Ok(false);
                                        }
                                        p["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                                        p["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                                        Ok(true)
                                    });
                        }
                        _ => {
                            self.store.delete(*res, name, meta_str(&o, "name"));
                        }
                    }
                }
            }
            if remaining == 0 {
                self.store.delete(Res::Namespace, "", name);
            }
        }
    }

    /// The garbage collector, as Kubernetes' own: a namespaced object whose owners are all
    /// gone (deleted with Background propagation, or never there) is deleted; references to
    /// owners that are gone are dropped while another owner lives; an owner held by the
    /// `orphan` finalizer lets go of its dependents, one held by `foregroundDeletion` deletes
    /// them and waits for those with `blockOwnerDeletion`. Owners are resolved by kind, name
    /// and uid, in the dependent's namespace for a namespaced kind; an owner of a kind this
    /// server does not serve cannot be resolved, and its dependents are left alone.
    fn garbage_collect(&mut self) {
        let all: Vec<(Res, Arc<Value>)> = ALL
            .iter()
            .flat_map(|r| {
                self.store
                    .list(*r, None)
                    .0
                    .into_iter()
                    .map(move |o| (*r, o))
            })
            .collect();
        let live: HashMap<(Res, &str, &str), &str> = all
            .iter()
            .map(|(r, o)| {
                (
                    (*r, meta_str(o, "namespace"), meta_str(o, "name")),
                    meta_str(o, "uid"),
                )
            })
            .collect();
        for (res, o) in all.iter().filter(|(r, o)| r.namespaced() && !deleting(o)) {
            let refs = owner_refs(o);
            if refs.is_empty() {
                continue;
            }
            let ns = meta_str(o, "namespace");
            let mut absent: Vec<&str> = Vec::new();
            let mut unresolved = false;
            for r in refs {
                let Some(kind) = owner_kind(r) else {
                    unresolved = true;
                    continue;
                };
                let owner_ns = if kind.namespaced() { ns } else { "" };
                let name = r["name"].as_str().unwrap_or("");
                let uid = r["uid"].as_str().unwrap_or("");
                if live.get(&(kind, owner_ns, name)) != Some(&uid) {
                    absent.push(uid);
                }
            }
            if unresolved {
                continue;
            }
            if absent.len() == refs.len() {
                self.delete_dependent(*res, o);
            } else if !absent.is_empty() {
                self.drop_owner_refs(*res, o, &absent);
            }
        }
        // Owners held by the GC's finalizers.
        for (res, owner) in all.iter().filter(|(_, o)| deleting(o)) {
            let finalizers: Vec<String> = owner
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let orphan = finalizers.iter().any(|f| f == "orphan");
            let foreground = finalizers.iter().any(|f| f == "foregroundDeletion");
            if !orphan && !foreground {
                continue;
            }
            let uid = meta_str(owner, "uid");
            let ns = meta_str(owner, "namespace");
            let name = meta_str(owner, "name");
            let dependents: Vec<&(Res, Arc<Value>)> = all
                .iter()
                .filter(|(r, d)| {
                    r.namespaced()
                        && (!res.namespaced() || meta_str(d, "namespace") == ns)
                        && owner_refs(d).iter().any(|r| r["uid"] == uid)
                })
                .collect();
            let mut done: Vec<&str> = Vec::new();
            if orphan {
                for (r, d) in &dependents {
                    self.drop_owner_refs(*r, d, &[uid]);
                }
                done.push("orphan");
            }
            if foreground {
                for (r, d) in &dependents {
                    if !deleting(d) {
                        self.delete_dependent(*r, d);
                    }
                }
                // Only dependents that block their owner's deletion hold it.
                let blocking = dependents.iter().any(|(_, d)| {
                    owner_refs(d)
                        .iter()
                        .any(|r| r["uid"] == uid && r["blockOwnerDeletion"] == true)
                });
                if !blocking {
                    done.push("foregroundDeletion");
                }
            }
            let left: Vec<String> = finalizers
                .iter()
                .filter(|f| !done.contains(&f.as_str()))
                .cloned()
                .collect();
            if left.is_empty() && *res == Res::Job {
                self.store.delete(Res::Job, ns, name);
            } else if left.len() != finalizers.len() {
                // Other kinds go through their own controller (the kubelet, claim
                // protection) or the sweep below once no finalizer is left.
                let _ = self.store.update(*res, ns, name, None, |o| {
                    o["metadata"]["finalizers"] = json!(left);
                    Ok(true)
                });
            }
        }
        // Any other object whose finalizers are gone.
        for res in [Res::Secret, Res::ConfigMap, Res::ServiceAccount, Res::Event] {
            let (items, _) = self.store.list(res, None);
            for o in items.iter().filter(|o| deleting(o)) {
                let empty = o
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_none_or(|a| a.is_empty());
                if empty {
                    self.store
                        .delete(res, meta_str(o, "namespace"), meta_str(o, "name"));
                }
            }
        }
    }

    /// Deletes a dependent as a Background-propagation DELETE of it would: pods through their
    /// grace period, objects with finalizers only marked (claims then go through claim
    /// protection), the others at once.
    fn delete_dependent(&self, res: Res, o: &Value) {
        let ns = meta_str(o, "namespace");
        let name = meta_str(o, "name");
        let has_finalizers = o
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        match res {
            Res::Pod => delete_pod(&self.store, o),
            _ if has_finalizers || res == Res::PersistentVolumeClaim => {
                let _ = self.store.update(res, ns, name, None, |o| {
                    if deleting(o) {
                        return Ok(false);
                    }
                    o["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    Ok(true)
                });
            }
            _ => {
                self.store.delete(res, ns, name);
            }
        }
    }

    /// Removes the references to the owners `uids` from a dependent.
    fn drop_owner_refs(&self, res: Res, o: &Value, uids: &[&str]) {
        let _ = self.store.update(
            res,
            meta_str(o, "namespace"),
            meta_str(o, "name"),
            None,
            |o| {
                let Some(refs) = o
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(Value::as_array_mut)
                else {
                    return Ok(false);
                };
                let before = refs.len();
                refs.retain(|r| !uids.contains(&r["uid"].as_str().unwrap_or("")));
                if refs.len() == before {
                    return Ok(false);
                }
                if refs.is_empty() {
                    o["metadata"]
                        .as_object_mut()
                        .expect("metadata")
                        .remove("ownerReferences");
                }
                Ok(true)
            },
        );
    }

    fn job_controller(&mut self) {
        let (jobs, _) = self.store.list(Res::Job, None);
        let (pods, _) = self.store.list(Res::Pod, None);
        let live: std::collections::HashSet<String> = jobs
            .iter()
            .map(|j| meta_str(j, "uid").to_string())
            .collect();
        self.jobs.retain(|uid, _| live.contains(uid));
        for job in &jobs {
            if deleting(job) {
                continue;
            }
            let uid = meta_str(job, "uid").to_string();
            let mine: Vec<&Arc<Value>> = pods
                .iter()
                .filter(|p| controller_uid(p) == Some(uid.as_str()))
                .collect();
            self.sync_job(job, &mine);
        }
    }

    fn sync_job(&mut self, job: &Value, pods: &[&Arc<Value>]) {
        let store = Arc::clone(&self.store);
        let uid = meta_str(job, "uid").to_string();
        let ns = meta_str(job, "namespace").to_string();
        let name = meta_str(job, "name").to_string();
        let spec = &job["spec"];
        let status = &job["status"];
        let mem = self.jobs.entry(uid.clone()).or_default();
        let now = unix_now();

        let finished = has_condition(job, "Complete") || has_condition(job, "Failed");
        if finished {
            // TTL-after-finished.
            if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_i64() {
                let at = condition_of(job, "Complete")
                    .or_else(|| condition_of(job, "Failed"))
                    .and_then(|c| c["lastTransitionTime"].as_str())
                    .and_then(parse_rfc3339)
                    .unwrap_or(now);
                if now >= at + ttl {
                    store.delete(Res::Job, &ns, &name);
                }
            }
            return;
        }
        if spec["suspend"].as_bool() == Some(true) {
            // Pods a suspension removes are not failures.
            mem.seen.clear();
            // Nothing runs; the Job says so once (there is no update to resume it).
            if !has_condition(job, "Suspended") {
                let _ = store.update(Res::Job, &ns, &name, None, |o| {
                    let mut st = o["status"].as_object().cloned().unwrap_or_default();
                    let mut cs = st
                        .get("conditions")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    cs.push(condition("Suspended", "JobSuspended", "Job suspended"));
                    st.insert("conditions".into(), json!(cs));
                    o["status"] = Value::Object(st);
                    Ok(true)
                });
                emit_event(
                    &store,
                    job,
                    None,
                    "Normal",
                    "Suspended",
                    "Job suspended",
                    "job-controller",
                    None,
                );
            }
            return;
        }

        let mut succeeded = status["succeeded"].as_i64().unwrap_or(0);
        let mut failed = status["failed"].as_i64().unwrap_or(0);
        let mut new_failure = false;
        let present: std::collections::HashSet<&str> =
            pods.iter().map(|p| meta_str(p, "uid")).collect();
        for puid in std::mem::take(&mut mem.seen) {
            if !present.contains(puid.as_str()) && mem.counted.insert(puid) {
                failed += 1;
                new_failure = true;
            }
        }
        for p in pods {
            let puid = meta_str(p, "uid").to_string();
            if mem.counted.contains(&puid) {
                continue;
            }
            match phase(p) {
                "Succeeded" => {
                    succeeded += 1;
                    mem.counted.insert(puid);
                }
                "Failed" => {
                    failed += 1;
                    new_failure = true;
                    mem.counted.insert(puid);
                }
                _ => {
                    mem.seen.insert(puid);
                }
            }
        }
        let active: Vec<&&Arc<Value>> = pods
            .iter()
            .filter(|p| !matches!(phase(p), "Succeeded" | "Failed") && !deleting(p))
            .collect();
        let terminating = pods
            .iter()
            .filter(|p| !matches!(phase(p), "Succeeded" | "Failed") && deleting(p))
            .count() as i64;
        let ready = active.iter().filter(|p| pod_ready(p)).count() as i64;

        let mut conditions: Vec<Value> =
            status["conditions"].as_array().cloned().unwrap_or_default();
        let has =
            |cs: &[Value], t: &str| cs.iter().any(|c| c["type"] == t && c["status"] == "True");
        let start_time = status["startTime"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(now_rfc3339);
        let started_at = parse_rfc3339(&start_time).unwrap_or(now);
        let completions = spec["completions"].as_i64();
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);

        if !has(&conditions, "FailureTarget") && !has(&conditions, "SuccessCriteriaMet") {
            let deadline = spec["activeDeadlineSeconds"]
                .as_i64()
                .is_some_and(|d| now >= started_at + d);
            let complete = match completions {
                Some(c) => succeeded >= c,
                // Work-queue Jobs: any success and nothing left running.
                None => succeeded > 0 && active.is_empty(),
            };
            if deadline {
                conditions.push(condition(
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ));
                emit_event(
                    &store,
                    job,
                    None,
                    "Warning",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    "job-controller",
                    None,
                );
            } else if failed > backoff_limit {
                conditions.push(condition(
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ));
                emit_event(
                    &store,
                    job,
                    None,
                    "Warning",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    "job-controller",
                    None,
                );
            } else if complete {
                conditions.push(condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ));
            }
        }
        let mut completion_time = status["completionTime"].as_str().map(str::to_string);
        let mut active_count = active.len() as i64;
        if has(&conditions, "FailureTarget") || has(&conditions, "SuccessCriteriaMet") {
            // Finishing: no pod may keep running; the final condition waits until none do.
            for p in &active {
                delete_pod(&store, p);
                emit_event(
                    &store,
                    job,
                    None,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {}", meta_str(p, "name")),
                    "job-controller",
                    None,
                );
            }
            let terminating = terminating + active.len() as i64;
            active_count = 0;
            if terminating == 0 {
                if let Some(ft) = conditions
                    .iter()
                    .find(|c| c["type"] == "FailureTarget")
                    .cloned()
                {
                    if !has(&conditions, "Failed") {
                        let reason = ft["reason"].as_str().unwrap_or("");
                        let message = ft["message"].as_str().unwrap_or("");
                        conditions.push(condition("Failed", reason, message));
                    }
                } else if !has(&conditions, "Complete") {
                    conditions.push(condition(
                        "Complete",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ));
                    completion_time = Some(now_rfc3339());
                    emit_event(
                        &store,
                        job,
                        None,
                        "Normal",
                        "Completed",
                        "Job completed",
                        "job-controller",
                        None,
                    );
                }
            }
            self.write_status(
                job,
                &start_time,
                active_count,
                ready.min(active_count),
                terminating,
                succeeded,
                failed,
                &conditions,
                completion_time.as_deref(),
            );
            return;
        }

        // Running: keep the wanted number of pods.
        if new_failure {
            let exp = (failed - 1).clamp(0, 10) as u32;
            let delay = self
                .cfg
                .backoff_base
                .saturating_mul(1 << exp)
                .min(Duration::from_secs(360));
            self.jobs.get_mut(&uid).expect("memory").next_create = Some(Instant::now() + delay);
        }
        let wanted = match completions {
            Some(c) => parallelism.min(c - succeeded).max(0),
            None => {
                if succeeded > 0 {
                    0
                } else {
                    parallelism
                }
            }
        };
        let replace_terminating = spec["podReplacementPolicy"].as_str() != Some("Failed");
        let busy = active_count + if replace_terminating { 0 } else { terminating };
        let may_create = self.jobs[&uid]
            .next_create
            .is_none_or(|t| Instant::now() >= t);
        if busy < wanted && may_create {
            for _ in busy..wanted {
                match self.create_pod(job) {
                    Ok(pod) => {
                        active_count += 1;
                        emit_event(
                            &store,
                            job,
                            None,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {}", meta_str(&pod, "name")),
                            "job-controller",
                            None,
                        );
                    }
                    Err(e) => {
                        emit_event(
                            &store,
                            job,
                            None,
                            "Warning",
                            "FailedCreate",
                            &format!("Error creating: {}", e.message),
                            "job-controller",
                            None,
                        );
                        // Retried, as the controller's rate-limited queue would, not at once.
                        self.jobs.get_mut(&uid).expect("memory").next_create =
                            Some(Instant::now() + Duration::from_secs(1));
                        break;
                    }
                }
            }
        }
        self.write_status(
            job,
            &start_time,
            active_count,
            ready,
            terminating,
            succeeded,
            failed,
            &conditions,
            completion_time.as_deref(),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn write_status(
        &self,
        job: &Value,
        start_time: &str,
        active: i64,
        ready: i64,
        terminating: i64,
        succeeded: i64,
        failed: i64,
        conditions: &[Value],
        completion_time: Option<&str>,
    ) {
        let mut st = serde_json::Map::new();
        if !conditions.is_empty() {
            st.insert("conditions".into(), json!(conditions));
        }
        st.insert("startTime".into(), json!(start_time));
        if let Some(c) = completion_time {
            st.insert("completionTime".into(), json!(c));
        }
        if active > 0 {
            st.insert("active".into(), json!(active));
        }
        if succeeded > 0 {
            st.insert("succeeded".into(), json!(succeeded));
        }
        if failed > 0 {
            st.insert("failed".into(), json!(failed));
        }
        st.insert("terminating".into(), json!(terminating));
        st.insert("uncountedTerminatedPods".into(), json!({}));
        st.insert("ready".into(), json!(ready));
        let st = Value::Object(st);
        if job["status"] == st {
            return;
        }
        let _ = self.store.update(
            Res::Job,
            meta_str(job, "namespace"),
            meta_str(job, "name"),
            None,
            |o| {
                o["status"] = st;
                Ok(true)
            },
        );
    }

    fn create_pod(&self, job: &Value) -> Result<Value, crate::status::ApiError> {
        let t = &job["spec"]["template"];
        let mut meta = t["metadata"].clone();
        if !meta.is_object() {
            meta = json!({});
        }
        let m = meta.as_object_mut().expect("object");
        m.remove("name");
        m.remove("creationTimestamp");
        m.insert(
            "generateName".into(),
            json!(format!("{}-", meta_str(job, "name"))),
        );
        m.insert(
            "ownerReferences".into(),
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": meta_str(job, "name"),
                    "uid": meta_str(job, "uid"), "controller": true, "blockOwnerDeletion": true}]),
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"]});
        let pod = prepare(&self.store, Res::Pod, meta_str(job, "namespace"), pod)?;
        create_prepared(&self.store, Res::Pod, pod)
    }

    fn scheduler(&mut self) {
        let (pods, _) = self.store.list(Res::Pod, None);
        let live: HashSet<&str> = pods.iter().map(|p| meta_str(p, "uid")).collect();
        self.unschedulable.retain(|u, _| live.contains(u.as_str()));
        // What the scheduler's cache holds: the assigned pods that have not terminated.
        let mut assigned: Vec<Value> = pods
            .iter()
            .filter(|p| bound_node(p).is_some() && !terminal(p))
            .map(|p| (**p).clone())
            .collect();
        for pod in &pods {
            if bound_node(pod).is_some() || deleting(pod) || phase(pod) != "Pending" {
                continue;
            }
            let ns = meta_str(pod, "namespace");
            let name = meta_str(pod, "name");
            match self.select_node(pod, &assigned) {
                Ok(node) => {
                    let now = now_rfc3339();
                    let updated = self.store.update(Res::Pod, ns, name, None, |o| {
                        o["spec"]["nodeName"] = json!(node);
                        if !o["status"].is_object() {
                            o["status"] = json!({});
                        }
                        let conds = o["status"]
                            .as_object_mut()
                            .expect("an object, just made one")
                            .entry("conditions")
                            .or_insert_with(|| json!([]));
                        if let Some(cs) = conds.as_array_mut() {
                            cs.retain(|c| c["type"] != "PodScheduled");
                            cs.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
                        }
                        Ok(true)
                    });
                    if let Ok(p) = updated {
                        emit_event(
                            &self.store,
                            &p,
                            None,
                            "Normal",
                            "Scheduled",
                            &format!("Successfully assigned {ns}/{name} to {node}"),
                            "default-scheduler",
                            None,
                        );
                        assigned.push(p);
                    }
                }
                Err(message) => {
                    let uid = meta_str(pod, "uid").to_string();
                    if self.unschedulable.get(&uid) == Some(&message) {
                        continue;
                    }
                    self.unschedulable.insert(uid, message.clone());
                    let now = now_rfc3339();
                    let msg = message.clone();
                    let _ = self.store.update(Res::Pod, ns, name, None, |o| {
                        if !o["status"].is_object() {
                            o["status"] = json!({});
                        }
                        let conds = o["status"]
                            .as_object_mut()
                            .expect("an object, just made one")
                            .entry("conditions")
                            .or_insert_with(|| json!([]));
                        if let Some(cs) = conds.as_array_mut() {
                            cs.retain(|c| c["type"] != "PodScheduled");
                            cs.push(json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null,
                                           "lastTransitionTime": now, "reason": "Unschedulable", "message": msg}));
                        }
                        Ok(true)
                    });
                    emit_event(
                        &self.store,
                        pod,
                        None,
                        "Warning",
                        "FailedScheduling",
                        &message,
                        "default-scheduler",
                        None,
                    );
                }
            }
        }
    }

    /// The node the pod goes to (the feasible node with the fewest pods, then the first
    /// configured), or the scheduler's FitError message.
    fn select_node(&self, pod: &Value, assigned: &[Value]) -> Result<String, String> {
        let n = self.cfg.nodes.len();
        let ns = meta_str(pod, "namespace");
        // PreFilter: the claims must exist (VolumeRestrictions, VolumeBinding) and not be
        // going away (VolumeBinding).
        let mut rwop = Vec::new();
        for (_, claim) in pod_claims(pod) {
            let Some(pvc) = self.store.get(Res::PersistentVolumeClaim, ns, claim) else {
                return Err(fit_error(
                    n,
                    Some(&format!("persistentvolumeclaim \"{claim}\" not found")),
                    &[],
                ));
            };
            if access_modes(&pvc).contains(&"ReadWriteOncePod") {
                rwop.push(claim);
            }
            if deleting(&pvc) {
                return Err(fit_error(
                    n,
                    Some(&format!(
                        "persistentvolumeclaim \"{claim}\" is being deleted"
                    )),
                    &[],
                ));
            }
        }
        // A ReadWriteOncePod claim that an assigned pod uses makes every node unfit.
        let rwop_conflict = rwop.iter().any(|claim| {
            assigned.iter().any(|p| {
                meta_str(p, "namespace") == ns && pod_claims(p).iter().any(|(_, c)| c == claim)
            })
        });
        let mut fits = Vec::new();
        let mut reasons = Vec::new();
        for node in &self.cfg.nodes {
            let affinity = self.node_matches(pod, node);
            if !affinity {
                reasons.push(Unfit::NodeAffinity);
            } else if rwop_conflict {
                reasons.push(Unfit::ReadWriteOncePod);
            } else {
                fits.push(node.name.as_str());
            }
        }
        let load = |node: &str| {
            assigned
                .iter()
                .filter(|p| bound_node(p) == Some(node))
                .count()
        };
        // min_by_key keeps the first of equal elements: ties go to the earlier node.
        fits.into_iter()
            .min_by_key(|node| load(node))
            .map(str::to_string)
            .ok_or_else(|| fit_error(n, None, &reasons))
    }

    /// nodeSelector and required node affinity.
    fn node_matches(&self, pod: &Value, node: &NodeConfig) -> bool {
        let labels = &node.labels;
        let selector_ok = pod
            .pointer("/spec/nodeSelector")
            .and_then(Value::as_object)
            .is_none_or(|sel| {
                sel.iter()
                    .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
            });
        let affinity_ok = match pod
            .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
            .and_then(Value::as_array)
        {
            None => true,
            Some(terms) => terms.iter().any(|t| term_matches(t, &node.name, labels)),
        };
        selector_ok && affinity_ok
    }

    /// The PVC protection controller: a claim being deleted goes once no scheduled pod names
    /// it, and its volume (the directory) with it.
    fn pvc_protection(&mut self) {
        let (pvcs, _) = self.store.list(Res::PersistentVolumeClaim, None);
        let (pods, _) = self.store.list(Res::Pod, None);
        for pvc in pvcs.iter().filter(|p| deleting(p)) {
            let ns = meta_str(pvc, "namespace");
            let name = meta_str(pvc, "name");
            let in_use = pods.iter().any(|p| {
                meta_str(p, "namespace") == ns
                    && bound_node(p).is_some()
                    && pod_claims(p).iter().any(|(_, c)| *c == name)
            });
            if in_use {
                continue;
            }
            let finalizers: Vec<String> = pvc
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .filter(|f| f != PVC_PROTECTION)
                        .collect()
                })
                .unwrap_or_default();
            if finalizers.is_empty() {
                // The claim goes, and its dynamically provisioned volume (reclaim policy
                // Delete) with it.
                let _guard = self.cfg.volumes.lock();
                // The volume first: a watcher that sees the claim gone finds no directory.
                self.cfg.volumes.remove(ns, name);
                let _ = self.store.delete(Res::PersistentVolumeClaim, ns, name);
            } else {
                let _ = self
                    .store
                    .update(Res::PersistentVolumeClaim, ns, name, None, |o| {
                        o["metadata"]["finalizers"] = json!(finalizers);
                        Ok(true)
                    });
            }
        }
    }

    /// The attach/detach controller: a claim's volume is attached to the nodes of the
    /// non-terminated pods that use it; a volume that may not be attached to several nodes
    /// (neither ReadWriteMany nor ReadOnlyMany) waits until it is detached from the other node,
    /// and the pods waiting for it get a FailedAttachVolume Multi-Attach error (once).
    fn attach_detach(&mut self) {
        let (pods, _) = self.store.list(Res::Pod, None);
        let (pvcs, _) = self.store.list(Res::PersistentVolumeClaim, None);
        let claim = |ns: &str, name: &str| {
            pvcs.iter()
                .find(|p| meta_str(p, "namespace") == ns && meta_str(p, "name") == name)
        };
        // volume → node → pods that want it there.
        let mut desired: BTreeMap<String, BTreeMap<String, Vec<&Arc<Value>>>> = BTreeMap::new();
        let mut multi: HashMap<String, bool> = HashMap::new();
        for pod in &pods {
            let Some(node) = bound_node(pod) else {
                continue;
            };
            if terminal(pod) {
                continue;
            }
            for (_, c) in pod_claims(pod) {
                let Some(pvc) = claim(meta_str(pod, "namespace"), c) else {
                    continue;
                };
                let vol = volume_name(pvc);
                if vol.is_empty() {
                    continue;
                }
                multi.insert(vol.to_string(), multi_attach_allowed(pvc));
                desired
                    .entry(vol.to_string())
                    .or_default()
                    .entry(node.to_string())
                    .or_default()
                    .push(pod);
            }
        }
        let volumes = Arc::clone(&self.cfg.volumes);
        for (vol, nodes) in volumes.attachments() {
            for node in nodes {
                if !desired.get(&vol).is_some_and(|d| d.contains_key(&node)) {
                    volumes.detach(&vol, &node);
                }
            }
        }
        let mut waiting = HashSet::new();
        for (vol, nodes) in &desired {
            for (node, wanting) in nodes {
                if volumes.is_attached(vol, node) {
                    continue;
                }
                let elsewhere: Vec<String> = volumes
                    .attachments()
                    .get(vol)
                    .map(|n| n.iter().filter(|n| *n != node).cloned().collect())
                    .unwrap_or_default();
                if elsewhere.is_empty() || multi.get(vol).copied().unwrap_or(false) {
                    volumes.attach(vol, node);
                    // The kubelets waiting for it look again.
                    self.store.poke();
                    continue;
                }
                // Multi-Attach error: name the pods that use the volume on the other nodes.
                let users: Vec<&Arc<Value>> = elsewhere
                    .iter()
                    .filter_map(|n| nodes.get(n))
                    .flatten()
                    .copied()
                    .collect();
                for pod in wanting {
                    let key = (meta_str(pod, "uid").to_string(), vol.clone());
                    waiting.insert(key.clone());
                    if self.multi_attach_reported.contains(&key) {
                        continue;
                    }
                    self.multi_attach_reported.insert(key);
                    let ns = meta_str(pod, "namespace");
                    let local: Vec<&str> = users
                        .iter()
                        .filter(|u| meta_str(u, "namespace") == ns)
                        .map(|u| meta_str(u, "name"))
                        .collect();
                    let others = users.len() - local.len();
                    let why = if users.is_empty() {
                        "Volume is already exclusively attached to one node and can't be attached to another".to_string()
                    } else if local.is_empty() {
                        format!("Volume is already used by {others} pod(s) in different namespaces")
                    } else if others > 0 {
                        format!(
                            "Volume is already used by pod(s) {} and {others} pod(s) in different namespaces",
                            local.join(", ")
                        )
                    } else {
                        format!("Volume is already used by pod(s) {}", local.join(", "))
                    };
                    emit_event(
                        &self.store,
                        pod,
                        None,
                        "Warning",
                        "FailedAttachVolume",
                        &format!("Multi-Attach error for volume \"{vol}\" {why}"),
                        "attachdetach-controller",
                        None,
                    );
                }
            }
        }
        self.multi_attach_reported.retain(|k| waiting.contains(k));
    }
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// Every label, kubernetes.io/hostname, os and arch included.
    pub labels: BTreeMap<String, String>,
}

impl NodeConfig {
    /// A node with the well-known labels plus `extra`.
    pub fn new(name: &str, extra: &BTreeMap<String, String>) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert("kubernetes.io/hostname".to_string(), name.to_string());
        labels.insert("kubernetes.io/os".to_string(), "linux".to_string());
        labels.insert(
            "kubernetes.io/arch".to_string(),
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        );
        labels.extend(extra.clone());
        NodeConfig {
            name: name.to_string(),
            labels,
        }
    }
}

/// Why a node does not fit a pod (a Filter plugin's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unfit {
    /// NodeAffinity: UnschedulableAndUnresolvable.
    NodeAffinity,
    /// VolumeRestrictions: Unschedulable (preemption is tried and finds no victims).
    ReadWriteOncePod,
}

impl Unfit {
    fn reason(self) -> &'static str {
        match self {
            Unfit::NodeAffinity => "node(s) didn't match Pod's node affinity/selector",
            Unfit::ReadWriteOncePod => "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode",
        }
    }

    fn preemption(self) -> &'static str {
        match self {
            Unfit::NodeAffinity => "Preemption is not helpful for scheduling",
            Unfit::ReadWriteOncePod => "No preemption victims found for incoming pod",
        }
    }
}

/// The scheduler's FitError message, followed by what preemption (PostFilter) found: a
/// PreFilter rejection is stated once; Filter rejections are counted per reason, sorted.
fn fit_error(nodes: usize, prefilter: Option<&str>, unfit: &[Unfit]) -> String {
    fn histogram<'a>(items: impl Iterator<Item = &'a str>) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in items {
            *counts.entry(i).or_default() += 1;
        }
        counts
            .iter()
            .map(|(r, c)| format!("{c} {r}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
    match prefilter {
        Some(msg) => format!(
            "0/{nodes} nodes are available: {msg}. preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling."
        ),
        None => format!(
            "0/{nodes} nodes are available: {}. preemption: 0/{nodes} nodes are available: {}.",
            histogram(unfit.iter().map(|u| u.reason())),
            histogram(unfit.iter().map(|u| u.preemption()))
        ),
    }
}

fn bound_node(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

fn terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn term_matches(term: &Value, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
    let exprs = term["matchExpressions"].as_array();
    let fields = term["matchFields"].as_array();
    if exprs.is_none_or(|e| e.is_empty()) && fields.is_none_or(|f| f.is_empty()) {
        return false;
    }
    let check = |e: &Value, value: Option<&str>| {
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e["operator"].as_str().unwrap_or("") {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => value.is_none_or(|v| !values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" | "Lt" => {
                let (Some(v), Some(b)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    values.first().and_then(|b| b.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if e["operator"] == "Gt" {
                    v > b
                } else {
                    v < b
                }
            }
            _ => false,
        }
    };
    exprs.into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or("");
        check(e, labels.get(key).map(String::as_str))
    }) && fields.into_iter().flatten().all(|e| {
        let value = (e["key"] == "metadata.name").then_some(node_name);
        check(e, value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_errors_read_like_the_scheduler() {
        assert_eq!(
            fit_error(1, Some("persistentvolumeclaim \"x\" not found"), &[]),
            "0/1 nodes are available: persistentvolumeclaim \"x\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            fit_error(2, None, &[Unfit::ReadWriteOncePod, Unfit::NodeAffinity]),
            "0/2 nodes are available: 1 node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode, 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
        );
    }
}
