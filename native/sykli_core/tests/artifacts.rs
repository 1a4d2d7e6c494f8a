//! The artifact claim in the Job: mounted read-write at /artifacts exactly for tasks that
//! declare `outputs` or `task_inputs`.

use serde_json::{json, Value};
use sykli_core::cluster::preflight;
use sykli_core::manifest::{build_job, BuildOptions};
use sykli_core::pipeline::Pipeline;
use sykli_core::source::SourcePlan;
use sykli_testkit::validate::kube_validate;

fn build(task: Value, artifact_pvc: Option<&str>) -> Result<Value, String> {
    build_with(task, json!({"artifact_pvc": artifact_pvc}))
}

/// The Job and the claims its pre-flight checks, with `extra` build options.
fn build_with(task: Value, extra: Value) -> Result<Value, String> {
    let mut opts = json!({
        "namespace": "ci",
        "run_id": "r1x2",
        "source": {"url": "https://git.example.com/org/repo.git",
                   "sha": "0123456789abcdef0123456789abcdef01234567"}
    });
    for (k, v) in extra.as_object().unwrap() {
        opts[k] = v.clone();
    }
    let o: BuildOptions = serde_json::from_value(opts).unwrap();
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

fn build_collecting(task: Value) -> Result<Value, String> {
    let extra = json!({"artifact_pvc": "sykli-artifacts", "collect_outputs": true,
                       "sync_image": "ghcr.io/sykli/sync:test"});
    build_with(task, extra).map(|built| built["job"].clone())
}

fn init(job: &Value, name: &str) -> Value {
    job["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn collected_outputs_leave_through_a_sidecar_into_the_jobs_directory() {
    let task = json!({"name": "build", "container": "alpine", "command": "make",
                      "outputs": ["dist", "out/report.txt"],
                      "mounts": [{"resource": "src:.", "path": "/app"}]});
    let job = build_collecting(task).unwrap();
    let names: Vec<&str> = job["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // The clone, then the sidecar, then the gate that waits for it: all before the task.
    assert_eq!(
        names,
        [
            "sykli-clone",
            "sykli-artifacts-out",
            "sykli-artifacts-ready"
        ]
    );
    let out = init(&job, "sykli-artifacts-out");
    assert_eq!(out["restartPolicy"], "Always");
    assert_eq!(
        out["command"],
        json!([
            "sykli-sync",
            "collect",
            "--from",
            "/workspace",
            "--to",
            "/artifacts/sykli-jobs/sykli-t-r1x2",
            "--ready",
            "/sykli-artifacts-ready/ready",
            "--",
            "dist",
            "out/report.txt"
        ])
    );
    assert_eq!(out["image"], "ghcr.io/sykli/sync:test");
    assert_eq!(out["securityContext"]["runAsNonRoot"], true);
    // It reads the workspace, writes the claim.
    let mounts: Vec<Value> = out["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!([m["mountPath"], m.get("readOnly")]))
        .collect();
    assert!(mounts.contains(&json!(["/workspace", true])), "{mounts:?}");
    assert!(mounts.contains(&json!(["/artifacts", null])), "{mounts:?}");
    assert_eq!(
        job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        300
    );
}

#[test]
fn inputs_are_placed_from_the_producers_directories_before_the_task() {
    let task = json!({"name": "deploy", "container": "alpine", "command": "deploy",
                      "artifact_inputs": [{"job": "sykli-build-r1x2", "path": "dist", "to": "incoming"},
                                          {"job": "sykli-docs-r1x2-a2", "path": "site", "to": "public/site"}],
                      "mounts": [{"resource": "src:.", "path": "/app"}]});
    let job = build_collecting(task).unwrap();
    let placer = init(&job, "sykli-artifacts-in");
    assert_eq!(
        placer["command"],
        json!([
            "sykli-sync",
            "place",
            "--from",
            "/artifacts",
            "--to",
            "/workspace",
            "--",
            "sykli-jobs/sykli-build-r1x2/dist",
            "incoming",
            "sykli-jobs/sykli-docs-r1x2-a2/site",
            "public/site"
        ])
    );
    // No outputs: nothing to collect.
    assert_eq!(init(&job, "sykli-artifacts-out"), Value::Null);
}

#[test]
fn bad_artifact_inputs_and_sourceless_artifact_tasks_are_refused_by_name() {
    let bad = json!({"name": "t", "container": "alpine", "command": "true",
                     "artifact_inputs": [{"job": "Not A Job", "path": "../x", "to": "."}],
                     "mounts": [{"resource": "src:.", "path": "/app"}]});
    let err = build_collecting(bad).unwrap_err();
    assert!(err.contains("\"Not A Job\": not a Job name"), "{err}");
    assert!(err.contains("path \"../x\""), "{err}");
    assert!(
        err.contains("destination \".\" is the whole repository"),
        "{err}"
    );

    let sourceless = json!({"name": "t", "container": "alpine", "command": "true",
                            "outputs": ["dist"]});
    let err = build_collecting(sourceless).unwrap_err();
    assert!(
        err.contains("artifacts move through the workspace"),
        "{err}"
    );
}
