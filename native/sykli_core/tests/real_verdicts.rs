//! Every way a task can end, on the real components, and the one line that names it (the
//! verdict a user reads): its own exit, its own timeout, the client-side deadline, an image
//! that cannot be pulled, a config error, no node, the clone failing, an eviction through
//! the Eviction API, its node lost (a NoExecute taint, as the node lifecycle controller puts
//! on an unreachable node, and the real taint-eviction controller), and cancellation. All
//! cases run at once, each in its namespace; every mismatch is reported together.
//!
//! OOMKilled is checked only where the verdict is made (cluster::run's unit tests): the
//! test nodes run pods in bubblewrap without a memory cgroup, so no pod here is OOM-killed.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams};
use serde_json::{json, Value};
use sykli_core::cluster::run::{run_job, Event, RunOptions};
use sykli_testkit::kube::{ControlPlane, ControlPlaneOptions};

/// Node 1 is where the node-loss case runs (alone: the others do not tolerate its taint).
const LOST_NODE: &str = "sykli-node-1";

async fn plane() -> &'static ControlPlane {
    support::control_plane(ControlPlaneOptions {
        nodes: 2,
        node_args: vec![
            "--deny-image=registry.invalid/*".into(),
            "--image-pull-backoff=500ms".into(),
        ],
        node_taints: vec!["1:dedicated=lost:NoSchedule".into()],
        ..ControlPlaneOptions::default()
    })
    .await
}

/// What the test does to the task once it printed "started".
#[derive(Clone, Copy, Debug)]
enum Then {
    Wait,
    Evict,
    TaintItsNode,
    Cancel,
}

struct Case {
    name: &'static str,
    task: Value,
    then: Then,
    /// sykli's own (client-side) deadline for the run.
    deadline: Option<u64>,
    /// The clone is asked for a commit the server does not have.
    unknown_commit: bool,
    /// The task reads a Secret that does not exist, through an account that may not read
    /// Secrets (so preflight cannot tell, and the kubelet finds out).
    reads_a_missing_secret: bool,
    kind: &'static str,
    /// The line, where `…` stands for any text (what the API server, scheduler or node
    /// writes in its own words) and `{node}` for the pod's node.
    line: &'static str,
}

fn cases() -> Vec<Case> {
    let case = |name, task, kind, line| Case {
        name,
        task,
        then: Then::Wait,
        deadline: None,
        unknown_commit: false,
        reads_a_missing_secret: false,
        kind,
        line,
    };
    let src = json!([{"resource": "src:.", "path": "/app"}]);
    let long = "echo started; sleep 300";
    vec![
        case(
            "exit",
            json!({"name": "exit", "container": "any", "command": "echo started; exit 3"}),
            "task_failed",
            "the task failed with exit code 3",
        ),
        case(
            "timeout",
            json!({"name": "timeout", "container": "any", "command": "echo started; sleep 60",
                   "timeout": 5, "mounts": src}),
            "deadline_exceeded",
            "timed out after 5 s (the task's timeout)",
        ),
        Case {
            deadline: Some(4),
            ..case(
                "deadline",
                json!({"name": "deadline", "container": "any", "command": long}),
                "timeout",
                "timed out after 4 s (the client-side deadline): the Job was deleted",
            )
        },
        case(
            "pull",
            json!({"name": "pull", "container": "registry.invalid/nope:1", "command": "true"}),
            "image_pull",
            "container task: image \"registry.invalid/nope:1\" cannot be pulled (…): …",
        ),
        Case {
            reads_a_missing_secret: true,
            ..case(
                "config",
                json!({"name": "config", "container": "any", "command": "true"}),
                "config_error",
                "container task cannot start (CreateContainerConfigError): …\"gh\"…",
            )
        },
        case(
            "unschedulable",
            json!({"name": "unschedulable", "container": "any", "command": "true",
                   "k8s": {"node_selector": {"gpu": "a100"}}}),
            "unschedulable",
            "pod cannot be scheduled: 0/2 nodes are available: …didn't match Pod's node affinity/selector…",
        ),
        Case {
            unknown_commit: true,
            ..case(
                "clone",
                json!({"name": "clone", "container": "any", "command": "true", "mounts": src}),
                "clone_failed",
                "the source clone failed (exit …): …was it pushed?…",
            )
        },
        Case {
            then: Then::Evict,
            ..case(
                "evicted",
                json!({"name": "evicted", "container": "any", "command": long}),
                "evicted",
                "the pod was evicted from node {node} (EvictionByEvictionAPI: …)",
            )
        },
        Case {
            then: Then::TaintItsNode,
            ..case(
                "node-lost",
                json!({"name": "node-lost", "container": "any", "command": long,
                       "k8s": {"node_selector": {"kubernetes.io/hostname": LOST_NODE},
                               "tolerations": [{"key": "dedicated", "operator": "Equal",
                                                "value": "lost", "effect": "NoSchedule"}]}}),
                "node_lost",
                "the pod's node {node} was lost or tainted (DeletionByTaintManager: …)",
            )
        },
        Case {
            then: Then::Cancel,
            ..case(
                "cancel",
                json!({"name": "cancel", "container": "any", "command": long}),
                "cancelled",
                "cancelled: the Job was deleted",
            )
        },
    ]
}

/// Whether `line` is `pattern`, `…` matching any text (anchored at both ends).
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let (first, rest) = parts.split_first().unwrap();
    let Some(mut left) = line.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return left.is_empty();
    };
    for part in middle {
        match left.find(part) {
            Some(i) => left = &left[i + part.len()..],
            None => return false,
        }
    }
    left.ends_with(last)
}

#[test]
fn the_pattern_matcher_is_anchored_and_ordered() {
    assert!(matches("a … b", "a x y b"));
    assert!(matches("exact", "exact"));
    assert!(!matches("exact", "exact and more"));
    assert!(!matches("a…b…c", "a c b"));
    assert!(matches("a…b…c", "a b c"));
    assert!(!matches("x…", "y x"));
}

/// The pod of a Job (there is one: backoffLimit 0).
async fn pod_of(client: &kube::Client, namespace: &str, job: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .unwrap()
        .items
        .pop()
        .unwrap_or_else(|| panic!("no pod of Job {namespace}/{job}"))
}

/// Runs one case: (kind, line, the pod's node) or why it could not run.
async fn run_case(
    case: &Case,
    admin: &kube::Client,
    url: &str,
    sha: &str,
) -> (String, String, String) {
    let namespace = format!("verdict-{}", case.name);
    let cluster = if case.reads_a_missing_secret {
        support::account_with(
            plane().await,
            admin,
            &namespace,
            json!([
                {"apiGroups": ["batch"], "resources": ["jobs"],
                 "verbs": ["create", "get", "list", "watch", "delete", "deletecollection"]},
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}
            ]),
        )
        .await
    } else {
        std::sync::Arc::new(support::connect_real(plane().await, Some(&namespace)).await)
    };
    let mut job = support::job_for(case.task.clone(), "v1", &namespace, url, sha, Some("main"));
    let job_name = job.metadata.name.clone().unwrap();
    if case.unknown_commit {
        support::set_env(
            &mut job,
            "sykli-clone",
            "SYKLI_GIT_SHA",
            "0123456789abcdef0123456789abcdef01234567",
        );
    }
    if case.reads_a_missing_secret {
        let pod = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.containers[0].env = Some(vec![serde_json::from_value(
            json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "gh", "key": "token"}}}),
        )
        .unwrap()]);
    }
    let opts = RunOptions {
        create_namespace: !case.reads_a_missing_secret,
        timeout: Some(Duration::from_secs(case.deadline.unwrap_or(180))),
        unschedulable_grace: Duration::from_secs(1),
        ..RunOptions::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(run_job(cluster, job, opts, tx, cancel_rx));
    let mut node = String::new();
    while let Some(event) = rx.recv().await {
        let Event::Log { container, line } = event else {
            continue;
        };
        if container != "task" || line != "started" {
            continue;
        }
        let pod = pod_of(admin, &namespace, &job_name).await;
        node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let pod_name = pod.metadata.name.unwrap();
        match case.then {
            Then::Wait => {}
            Then::Cancel => cancel.send(true).unwrap(),
            Then::Evict => {
                Api::<Pod>::namespaced(admin.clone(), &namespace)
                    .evict(&pod_name, &EvictParams::default())
                    .await
                    .unwrap();
            }
            Then::TaintItsNode => {
                assert_eq!(node, LOST_NODE, "the node-loss case runs on its own node");
                let nodes: Api<Node> = Api::all(admin.clone());
                let mut taints = nodes
                    .get(&node)
                    .await
                    .unwrap()
                    .spec
                    .unwrap()
                    .taints
                    .unwrap_or_default();
                taints.push(
                    serde_json::from_value(json!({"key": "sykli.io/lost", "effect": "NoExecute"}))
                        .unwrap(),
                );
                nodes
                    .patch(
                        &node,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": taints}})),
                    )
                    .await
                    .unwrap();
            }
        }
    }
    let outcome = run
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let (kind, line) = outcome.failure.unwrap_or(("", "it succeeded".into()));
    (kind.to_string(), line, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_a_task_ends_is_named_by_its_true_cause_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (_daemon, url, sha) = support::served_repo(tmp.path());
    let admin = support::connect_real(plane().await, None).await.client;
    let cases = cases();
    let results =
        futures::future::join_all(cases.iter().map(|c| run_case(c, &admin, &url, &sha))).await;
    let mut wrong = Vec::new();
    for (case, (kind, line, node)) in cases.iter().zip(results) {
        let pattern = case.line.replace("{node}", &node);
        eprintln!("{}: {kind}: {line}", case.name);
        if kind != case.kind
            || !matches(&pattern, &line)
            || line.contains('\n')
            || line.contains(&sha)
        {
            wrong.push(format!(
                "{}: got {kind}: {line:?}\n   want {}: {pattern:?}",
                case.name, case.kind
            ));
        }
    }
    // The lost node is usable again for whatever runs after this test.
    let nodes: Api<Node> = Api::all(admin.clone());
    let taints: Vec<_> = nodes
        .get(LOST_NODE)
        .await
        .unwrap()
        .spec
        .unwrap()
        .taints
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != "sykli.io/lost")
        .collect();
    nodes
        .patch(
            LOST_NODE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await
        .unwrap();
    assert!(
        wrong.is_empty(),
        "verdicts that do not name their cause:\n{}",
        wrong.join("\n")
    );
}
