//! PersistentVolumeClaims backed by directories: provisioning, binding, persistence across pods,
//! protection while in use, the scheduler's and the kubelet's view of a missing claim, and the
//! access modes across several nodes (Multi-Attach errors for ReadWriteOnce, one pod at a time
//! for ReadWriteOncePod, anywhere for ReadWriteMany and ReadOnlyMany).

mod common;

use common::*;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::{json, Value};

async fn create_claim(env: &Env, name: &str, modes: &[&str]) -> PersistentVolumeClaim {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"accessModes": modes, "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), "default")
        .create(&PostParams::default(), &pvc)
        .await
        .expect("claim created")
}

async fn claim_gone(env: &Env, name: &str) {
    let api = Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), "default");
    let fut = await_condition(api, name, |o: Option<&PersistentVolumeClaim>| o.is_none());
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("claim {name} not removed in {WAIT:?}"))
        .expect("watch");
}

fn on_node(mut p: Value, node: &str) -> Value {
    p["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    p
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn scheduled_condition(p: &Pod) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| {
            (
                c.status.clone(),
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

async fn log_of(env: &Env, name: &str) -> String {
    Api::<Pod>::namespaced(env.client.clone(), "default")
        .logs(name, &Default::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_claim_is_a_directory_that_outlives_its_pods() {
    let env = env().await;
    let pvc = create_claim(&env, "cache", &["ReadWriteOnce"]).await;
    let st = pvc.status.as_ref().unwrap();
    assert_eq!(st.phase.as_deref(), Some("Bound"));
    assert_eq!(
        st.capacity.as_ref().unwrap()["storage"].0,
        "1Gi",
        "the capacity is what was asked"
    );
    assert_eq!(
        st.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );
    let volume = pvc.spec.as_ref().unwrap().volume_name.clone().unwrap();
    assert_eq!(volume, format!("pvc-{}", pvc.metadata.uid.clone().unwrap()));
    assert_eq!(
        pvc.metadata.finalizers.as_deref(),
        Some(&["kubernetes.io/pvc-protection".to_string()][..])
    );
    let dir = env.cluster.claim_dir("default", "cache");
    assert_eq!(dir, env.cluster.dir().join("pvcs/default/cache"));
    assert!(dir.is_dir(), "provisioned with the claim");

    create_pod(
        &env.client,
        "default",
        pod_with_claim(
            "writer",
            "cache",
            "echo kept > /data/file; id -u > /data/uid",
        ),
    )
    .await;
    wait_phase(&env.client, "default", "writer", "Succeeded").await;
    assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "kept\n");
    create_pod(
        &env.client,
        "default",
        pod_with_claim("reader", "cache", "cat /data/file"),
    )
    .await;
    wait_phase(&env.client, "default", "reader", "Succeeded").await;
    assert_eq!(log_of(&env, "reader").await, "kept\n");

    // Deleted while pods name it: Terminating until they are gone (finished pods count).
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), "default");
    let deleted = pvcs
        .delete("cache", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("the claim is returned, marked");
    assert!(deleted.metadata.deletion_timestamp.is_some());
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default");
    pods.delete("writer", &DeleteParams::default())
        .await
        .unwrap();
    wait_pod_gone(&env.client, "default", "writer").await;
    let still = pvcs.get("cache").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    assert!(dir.is_dir(), "the reader pod still names the claim");
    // A new pod cannot use a claim that is being deleted.
    create_pod(
        &env.client,
        "default",
        pod_with_claim("late", "cache", "true"),
    )
    .await;
    let late = wait_pod(&env.client, "default", "late", |p| {
        scheduled_condition(p).is_some_and(|c| c.0 == "False")
    })
    .await;
    assert_eq!(
        scheduled_condition(&late).unwrap().2,
        "0/1 nodes are available: persistentvolumeclaim \"cache\" is being deleted. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
    for name in ["reader", "late"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    claim_gone(&env, "cache").await;
    assert!(!dir.exists(), "the volume goes with its claim");

    // A claim of the same name is a new, empty volume.
    create_claim(&env, "cache", &["ReadWriteOnce"]).await;
    assert!(dir.is_dir());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    // Unused: deleted at once.
    pvcs.delete("cache", &DeleteParams::default())
        .await
        .unwrap();
    claim_gone(&env, "cache").await;
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_sub_path_of_a_claim_is_made_when_missing_and_is_all_a_mount_sees() {
    let env = env().await;
    create_claim(&env, "artifacts", &["ReadWriteMany"]).await;
    let dir = env.cluster.claim_dir("default", "artifacts");
    std::fs::write(dir.join("elsewhere"), "not this mount's\n").unwrap();
    let mut p = pod(
        "sub",
        "echo made > /out/file && ls -A /out && cat /in/file && \
         if touch /in/new 2>/dev/null; then echo writable; else echo read-only; fi",
    );
    p["spec"]["volumes"] =
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "artifacts"}}]);
    // As the kubelet does: the missing directories are made (with the volume's mode), then
    // bound; a readOnly mount of one is read-only, whatever the claim allows.
    p["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "data", "mountPath": "/out", "subPath": "runs/r1/job"},
        {"name": "data", "mountPath": "/in", "subPath": "runs/r1/job", "readOnly": true}
    ]);
    create_pod(&env.client, "default", p).await;
    wait_phase(&env.client, "default", "sub", "Succeeded").await;
    assert_eq!(log_of(&env, "sub").await, "file\nmade\nread-only\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("runs/r1/job/file")).unwrap(),
        "made\n"
    );
    assert!(!dir.join("runs/r1/job/new").exists());
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o7777
    };
    assert_eq!(mode(&dir.join("runs/r1")), mode(&dir));
    assert_eq!(mode(&dir.join("runs/r1/job")), mode(&dir));
}

#[tokio::test]
async fn a_missing_claim_keeps_the_pod_pending_until_it_exists() {
    let env = env().await;
    create_pod(
        &env.client,
        "default",
        pod_with_claim("early", "later", "cat /data/seed"),
    )
    .await;
    let (kind, _, message) = wait_event(&env.client, "default", "early", "FailedScheduling").await;
    assert_eq!(kind, "Warning");
    assert_eq!(
        message,
        "0/1 nodes are available: persistentvolumeclaim \"later\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
    let p = Api::<Pod>::namespaced(env.client.clone(), "default")
        .get("early")
        .await
        .unwrap();
    assert_eq!(pod_phase(&p), "Pending");
    let (status, reason, msg) = scheduled_condition(&p).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Unschedulable")
    );
    assert_eq!(msg, message);

    // A pod given a node directly skips the scheduler: the kubelet's volume manager waits.
    let mut direct = pod_with_claim("direct", "later", "cat /data/seed");
    direct["spec"]["nodeName"] = json!(sykli_testcluster::NODE_NAME);
    create_pod(&env.client, "default", direct).await;
    let (_, _, message) = wait_event(&env.client, "default", "direct", "FailedMount").await;
    assert_eq!(
        message,
        "Unable to attach or mount volumes: unmounted volumes=[data], unattached volumes=[data], failed to process volumes=[data]: error processing PVC default/later: failed to fetch PVC from API server: persistentvolumeclaims \"later\" not found"
    );
    let p = Api::<Pod>::namespaced(env.client.clone(), "default")
        .get("direct")
        .await
        .unwrap();
    assert_eq!(pod_phase(&p), "Pending");
    assert_eq!(
        waiting_reason(&p, "main").as_deref(),
        Some("ContainerCreating")
    );

    create_claim(&env, "later", &["ReadWriteOnce"]).await;
    std::fs::write(
        env.cluster.claim_dir("default", "later").join("seed"),
        "s\n",
    )
    .unwrap();
    wait_phase(&env.client, "default", "early", "Succeeded").await;
    wait_phase(&env.client, "default", "direct", "Succeeded").await;
    assert_eq!(log_of(&env, "early").await, "s\n");
}

#[tokio::test]
async fn read_write_once_cannot_attach_to_a_second_node_until_the_first_pod_ends() {
    let env = env_with(|o| o.nodes = vec!["n1".into(), "n2".into()]).await;
    let pvc = create_claim(&env, "data", &["ReadWriteOnce"]).await;
    let volume = pvc.spec.unwrap().volume_name.unwrap();
    let dir = env.cluster.claim_dir("default", "data");

    // The first pod holds the volume on n1 until the test releases it.
    create_pod(
        &env.client,
        "default",
        on_node(
            pod_with_claim(
                "first",
                "data",
                "echo one > /data/one; while [ ! -e /data/release ]; do sleep 0.05; done",
            ),
            "n1",
        ),
    )
    .await;
    let first = wait_phase(&env.client, "default", "first", "Running").await;
    assert_eq!(node_of(&first), "n1");

    // Another pod on n1 shares it (ReadWriteOnce is per node).
    create_pod(
        &env.client,
        "default",
        on_node(pod_with_claim("neighbour", "data", "cat /data/one"), "n1"),
    )
    .await;
    wait_phase(&env.client, "default", "neighbour", "Succeeded").await;
    assert_eq!(log_of(&env, "neighbour").await, "one\n");

    // A pod on n2 is scheduled, but its volume cannot be attached there.
    create_pod(
        &env.client,
        "default",
        on_node(
            pod_with_claim("second", "data", "cat /data/one; echo two > /data/two"),
            "n2",
        ),
    )
    .await;
    let (kind, _, message) =
        wait_event(&env.client, "default", "second", "FailedAttachVolume").await;
    assert_eq!(kind, "Warning");
    assert_eq!(
        message,
        format!(
            "Multi-Attach error for volume \"{volume}\" Volume is already used by pod(s) first"
        )
    );
    // The kubelet of n2 has the pod, and waits.
    let second = wait_pod(&env.client, "default", "second", |p| {
        waiting_reason(p, "main").is_some()
    })
    .await;
    assert_eq!(node_of(&second), "n2");
    assert_eq!(pod_phase(&second), "Pending");
    assert_eq!(
        waiting_reason(&second, "main").as_deref(),
        Some("ContainerCreating")
    );
    assert!(!dir.join("two").exists());

    // The first pod ends; the volume moves to n2.
    std::fs::write(dir.join("release"), "").unwrap();
    wait_phase(&env.client, "default", "first", "Succeeded").await;
    wait_phase(&env.client, "default", "second", "Succeeded").await;
    assert_eq!(log_of(&env, "second").await, "one\n");
    assert_eq!(std::fs::read_to_string(dir.join("two")).unwrap(), "two\n");
}

#[tokio::test]
async fn read_write_once_pod_lets_one_pod_at_a_time_use_the_claim() {
    let env = env_with(|o| o.nodes = vec!["n1".into(), "n2".into()]).await;
    create_claim(&env, "solo", &["ReadWriteOncePod"]).await;
    let dir = env.cluster.claim_dir("default", "solo");
    create_pod(
        &env.client,
        "default",
        pod_with_claim(
            "holder",
            "solo",
            "echo held > /data/h; while [ ! -e /data/release ]; do sleep 0.05; done",
        ),
    )
    .await;
    wait_phase(&env.client, "default", "holder", "Running").await;

    // Not even on the same node.
    create_pod(
        &env.client,
        "default",
        pod_with_claim("queued", "solo", "cat /data/h"),
    )
    .await;
    let (_, _, message) = wait_event(&env.client, "default", "queued", "FailedScheduling").await;
    assert_eq!(
        message,
        "0/2 nodes are available: 2 node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    let queued = Api::<Pod>::namespaced(env.client.clone(), "default")
        .get("queued")
        .await
        .unwrap();
    assert_eq!(pod_phase(&queued), "Pending");
    assert_eq!(node_of(&queued), "");

    std::fs::write(dir.join("release"), "").unwrap();
    wait_phase(&env.client, "default", "holder", "Succeeded").await;
    wait_phase(&env.client, "default", "queued", "Succeeded").await;
    assert_eq!(log_of(&env, "queued").await, "held\n");

    // ReadWriteOncePod stands alone.
    let bad: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "mixed"},
        "spec": {"accessModes": ["ReadWriteOncePod", "ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    let e = Api::<PersistentVolumeClaim>::namespaced(env.client.clone(), "default")
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(s.code, 422);
    assert_eq!(
        s.message,
        "PersistentVolumeClaim \"mixed\" is invalid: spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes"
    );
}

#[tokio::test]
async fn many_node_claims_are_used_everywhere_and_read_only_many_is_read_only() {
    let env = env_with(|o| o.nodes = vec!["n1".into(), "n2".into()]).await;
    create_claim(&env, "shared", &["ReadWriteMany"]).await;
    create_claim(&env, "published", &["ReadOnlyMany"]).await;
    let shared = env.cluster.claim_dir("default", "shared");
    std::fs::write(
        env.cluster.claim_dir("default", "published").join("doc"),
        "read me\n",
    )
    .unwrap();

    // Both pods run at once, one per node, and see each other's writes.
    for (name, node) in [("left", "n1"), ("right", "n2")] {
        let script = format!(
            "echo {name} > /data/{name}; while [ ! -e /data/left ] || [ ! -e /data/right ]; do sleep 0.05; done"
        );
        create_pod(
            &env.client,
            "default",
            on_node(pod_with_claim(name, "shared", &script), node),
        )
        .await;
    }
    for name in ["left", "right"] {
        let p = wait_phase(&env.client, "default", name, "Succeeded").await;
        assert_eq!(node_of(&p), if name == "left" { "n1" } else { "n2" });
    }
    assert!(shared.join("left").is_file() && shared.join("right").is_file());

    for (name, node) in [("ro1", "n1"), ("ro2", "n2")] {
        create_pod(
            &env.client,
            "default",
            on_node(
                pod_with_claim(
                    name,
                    "published",
                    "cat /data/doc; if touch /data/new 2>/dev/null; then echo writable; else echo read-only; fi",
                ),
                node,
            ),
        )
        .await;
    }
    for name in ["ro1", "ro2"] {
        wait_phase(&env.client, "default", name, "Succeeded").await;
        assert_eq!(log_of(&env, name).await, "read me\nread-only\n");
    }
    assert!(!env
        .cluster
        .claim_dir("default", "published")
        .join("new")
        .exists());
}

#[tokio::test]
async fn the_scheduler_spreads_pods_and_follows_selectors_across_nodes() {
    let env = env_with(|o| {
        o.nodes = vec!["n1".into(), "n2".into(), "n3".into()];
        o.per_node_labels.insert(
            "n3".into(),
            [("pool".to_string(), "gpu".to_string())].into(),
        );
    })
    .await;
    for name in ["a", "b"] {
        create_pod(&env.client, "default", pod(name, "exec sleep 600")).await;
    }
    let a = wait_phase(&env.client, "default", "a", "Running").await;
    let b = wait_phase(&env.client, "default", "b", "Running").await;
    assert_ne!(node_of(&a), node_of(&b), "the least loaded node wins");

    let mut gpu = pod("gpu", "echo on $NODE");
    gpu["spec"]["nodeSelector"] = json!({"pool": "gpu"});
    gpu["spec"]["containers"][0]["env"] =
        json!([{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]);
    create_pod(&env.client, "default", gpu).await;
    let g = wait_phase(&env.client, "default", "gpu", "Succeeded").await;
    assert_eq!(node_of(&g), "n3");
    assert_eq!(log_of(&env, "gpu").await, "on n3\n");

    let mut nowhere = pod("nowhere", "true");
    nowhere["spec"]["nodeSelector"] = json!({"pool": "tpu"});
    create_pod(&env.client, "default", nowhere).await;
    let (_, _, message) = wait_event(&env.client, "default", "nowhere", "FailedScheduling").await;
    assert_eq!(
        message,
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
}
