//! The artifact claim in the Job: mounted read-write at /artifacts exactly for tasks that
//! declare `outputs` or `task_inputs`.

use serde_json::{json, Value};
use sykli_core::cluster::preflight;
use sykli_core::manifest::{build_job, BuildOptions};
use sykli_core::pipeline::Pipeline;
use sykli_core::source::SourcePlan;
use sykli_testkit::validate::kube_validate;

fn build(task: Value, artifact_pvc: Option<&str>) -> Result<Value, String> {
    let o: BuildOptions = serde_json::from_value(json!({
        "namespace": "ci",
        "run_id": "r1x2",
        "artifact_pvc": artifact_pvc,
        "source": {"url": "https://git.example.com/org/repo.git",
                   "sha": "0123456789abcdef0123456789abcdef01234567"}
    }))
    .unwrap();
    let p: Pipeline = serde_json::from_value(json!({"version": "2", "tasks": [task],
        "resources": {"src:.": {"type": "directory", "path": "."}}}))
    .unwrap();
    let plan = SourcePlan::from_options(&o.source).unwrap();
    let job = build_job(&p.tasks[0], &p.resources, "sykli-t-r1x2", &plan, &o)
        .map_err(|e| e.to_string())?;
    let needs = preflight::needs(&job);
    let job = serde_json::to_value(job).unwrap();
    kube_validate(std::slice::from_ref(&job));
    let claims: Vec<_> = needs
        .iter()
        .filter(|n| n.kind == preflight::Kind::PersistentVolumeClaim)
        .map(|n| n.name.clone())
        .collect();
    Ok(json!({"job": job, "claims": claims}))
}

/// (volume name, claim) of the pod's claims, and (name, path, readOnly) of the task's mounts.
fn artifacts(built: &Value) -> (Vec<Value>, Vec<Value>) {
    let spec = &built["job"]["spec"]["template"]["spec"];
    let volumes = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("persistentVolumeClaim").is_some())
        .map(|v| json!([v["name"], v["persistentVolumeClaim"]["claimName"]]))
        .collect();
    let mounts = spec["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["mountPath"] == "/artifacts")
        .map(|m| json!([m["name"], m["mountPath"], m.get("readOnly")]))
        .collect();
    (volumes, mounts)
}

#[test]
fn outputs_or_task_inputs_mount_the_artifact_claim_read_write() {
    let claim = Some("shared-artifacts");
    let with_outputs = json!({"name": "build", "container": "alpine", "command": "true",
                              "outputs": ["dist/app"]});
    let with_map = json!({"name": "build", "container": "alpine", "command": "true",
                          "outputs": {"app": "dist/app"}});
    let with_inputs = json!({"name": "test", "container": "alpine", "command": "true",
                             "task_inputs": [{"from_task": "build", "output": "app", "dest": "app"}],
                             "mounts": [{"resource": "src:.", "path": "/app"}]});
    for task in [with_outputs.clone(), with_map, with_inputs] {
        let built = build(task.clone(), claim).unwrap();
        let (volumes, mounts) = artifacts(&built);
        assert_eq!(
            volumes,
            vec![json!(["sykli-artifacts", "shared-artifacts"])],
            "{task}"
        );
        assert_eq!(mounts, vec![json!(["sykli-artifacts", "/artifacts", null])]);
        // The pre-flight checks the claim exists, like any claim a Job references.
        assert_eq!(built["claims"], json!(["shared-artifacts"]));
        // The claim is shared with the (non-root) receiver pod through the group.
        assert_eq!(
            built["job"]["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
            65534
        );
    }

    // Neither outputs nor task_inputs (or empty ones): no claim.
    for task in [
        json!({"name": "lint", "container": "alpine", "command": "true"}),
        json!({"name": "lint", "container": "alpine", "command": "true", "outputs": [], "task_inputs": {}}),
    ] {
        let built = build(task, claim).unwrap();
        assert_eq!(artifacts(&built), (vec![], vec![]));
        assert_eq!(built["claims"], json!([]));
    }
    // No artifact claim configured: nothing mounted.
    let built = build(with_outputs, None).unwrap();
    assert_eq!(artifacts(&built), (vec![], vec![]));
}

#[test]
fn a_bad_claim_name_or_a_mount_at_artifacts_is_an_error_naming_it() {
    let task = json!({"name": "build", "container": "alpine", "command": "true",
                      "outputs": ["dist/app"]});
    let err = build(task, Some("Not_A_Name")).unwrap_err();
    assert!(
        err.contains(r#"artifact_pvc "Not_A_Name" is not a valid PersistentVolumeClaim name"#),
        "{err}"
    );

    let task = json!({"name": "build", "container": "alpine", "command": "true",
                      "outputs": ["dist/app"],
                      "mounts": [{"resource": "src:.", "path": "/artifacts"}]});
    let err = build(task, Some("sykli-artifacts")).unwrap_err();
    assert!(err.contains("a mount at /artifacts"), "{err}");

    let task = json!({"name": "build", "container": "alpine", "command": "true",
                      "outputs": ["dist/app"],
                      "k8s": {"volumes": [{"name": "mine", "mount_path": "/artifacts",
                                           "empty_dir": {}}]}});
    let err = build(task, Some("sykli-artifacts")).unwrap_err();
    assert!(
        err.contains(r#"k8s.volumes[mine]: something else is already mounted at "/artifacts""#),
        "{err}"
    );
}
