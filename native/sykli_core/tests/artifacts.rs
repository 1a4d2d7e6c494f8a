//! The artifact claim in the Job, exactly for tasks that declare `outputs` or `task_inputs`,
//! each container mounting only its part of it: the task its own `/artifacts/<task>`, or
//! (outputs collected) nothing; the outputs sidecar its Job's directory of its run; the
//! inputs placer each producing Job's directory of its run, read-only.

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

/// (volume name, claim) of the pod's claims, and (name, path, readOnly, subPath) of the
/// task's mounts at or below /artifacts.
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
        .filter(|m| m["mountPath"].as_str().unwrap().starts_with("/artifacts"))
        .map(|m| {
            json!([
                m["name"],
                m["mountPath"],
                m.get("readOnly"),
                m.get("subPath")
            ])
        })
        .collect();
    (volumes, mounts)
}

#[test]
fn outputs_or_task_inputs_mount_the_tasks_own_directory_of_the_artifact_claim() {
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
        // Its own directory, read-write; never the claim's root, so never another task's.
        let name = task["name"].as_str().unwrap();
        assert_eq!(
            mounts,
            vec![json!([
                "sykli-artifacts",
                format!("/artifacts/{name}"),
                null,
                format!("sykli-tasks/r1x2/{name}")
            ])]
        );
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
        err.contains(r#"k8s.volumes[mine]: a mount at "/artifacts": /artifacts is where the artifact claim goes"#),
        "{err}"
    );

    // Below /artifacts too: the task's own directory, or another's, is the claim's.
    for path in ["/artifacts/build", "/artifacts/other/x"] {
        let task = json!({"name": "build", "container": "alpine", "command": "true",
                          "outputs": ["dist/app"],
                          "mounts": [{"resource": "src:.", "path": path}]});
        let err = build(task, Some("sykli-artifacts")).unwrap_err();
        assert!(err.contains("a mount at /artifacts"), "{path}: {err}");
    }
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
            "/usr/local/bin/sykli-sync",
            "collect",
            "--from",
            "/workspace",
            "--to",
            "/artifacts",
            "--ready",
            "/sykli-artifacts-ready/ready",
            "--",
            "dist",
            "out/report.txt"
        ])
    );
    assert_eq!(out["image"], "ghcr.io/sykli/sync:test");
    assert_eq!(out["securityContext"]["runAsNonRoot"], true);
    // It reads the workspace, and writes its own Job's directory of its run: that
    // directory alone is its view of the claim.
    assert_eq!(
        claim_mounts(&out),
        vec![json!(["/artifacts", null, "sykli-runs/r1x2/sykli-t-r1x2"])]
    );
    assert!(
        out["volumeMounts"].as_array().unwrap().contains(
            &json!({"name": "sykli-workspace", "mountPath": "/workspace", "readOnly": true})
        ),
        "{out}"
    );
    // The task itself mounts nothing of the claim: its outputs leave through the sidecar.
    assert_eq!(
        claim_mounts(&job["spec"]["template"]["spec"]["containers"][0]),
        Vec::<Value>::new()
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        300
    );
}

/// (mountPath, readOnly, subPath) of a container's mounts of the artifact claim.
fn claim_mounts(container: &Value) -> Vec<Value> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == "sykli-artifacts")
        .map(|m| json!([m["mountPath"], m.get("readOnly"), m.get("subPath")]))
        .collect()
}

#[test]
fn inputs_are_placed_from_the_producers_directories_before_the_task() {
    let task = json!({"name": "deploy", "container": "alpine", "command": "deploy",
                      "artifact_inputs": [{"job": "sykli-build-r1x2", "path": "dist", "to": "incoming"},
                                          {"job": "sykli-docs-r1x2-a2", "path": "site", "to": "public/site"},
                                          {"job": "sykli-build-r1x2", "path": "README.md", "to": "BUILT.md"}],
                      "mounts": [{"resource": "src:.", "path": "/app"}]});
    let job = build_collecting(task).unwrap();
    let placer = init(&job, "sykli-artifacts-in");
    assert_eq!(
        placer["command"],
        json!([
            "/usr/local/bin/sykli-sync",
            "place",
            "--from",
            "/artifacts",
            "--to",
            "/workspace",
            "--",
            "sykli-build-r1x2/dist",
            "incoming",
            "sykli-docs-r1x2-a2/site",
            "public/site",
            "sykli-build-r1x2/README.md",
            "BUILT.md"
        ])
    );
    // Each producing Job's directory of this run, once, read-only; nothing else of the claim
    // (an input named after another run's Job would be looked for in this run's directory).
    assert_eq!(
        claim_mounts(&placer),
        vec![
            json!([
                "/artifacts/sykli-build-r1x2",
                true,
                "sykli-runs/r1x2/sykli-build-r1x2"
            ]),
            json!([
                "/artifacts/sykli-docs-r1x2-a2",
                true,
                "sykli-runs/r1x2/sykli-docs-r1x2-a2"
            ])
        ]
    );
    // No outputs: nothing to collect, and the task mounts nothing of the claim.
    assert_eq!(init(&job, "sykli-artifacts-out"), Value::Null);
    assert_eq!(
        claim_mounts(&job["spec"]["template"]["spec"]["containers"][0]),
        Vec::<Value>::new()
    );
}

#[test]
fn every_mount_of_the_artifact_claim_is_a_sub_path() {
    let task = json!({"name": "deploy", "container": "alpine", "command": "deploy",
                      "outputs": ["out"],
                      "artifact_inputs": [{"job": "sykli-build-r1x2", "path": "dist", "to": "incoming"}],
                      "mounts": [{"resource": "src:.", "path": "/app"}]});
    for extra in [
        json!({"artifact_pvc": "sykli-artifacts", "collect_outputs": true}),
        json!({"artifact_pvc": "sykli-artifacts"}),
    ] {
        let job = build_with(task.clone(), extra.clone()).unwrap()["job"].clone();
        let spec = &job["spec"]["template"]["spec"];
        let containers = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(spec["containers"].as_array().unwrap());
        let mut seen = 0;
        for c in containers {
            for m in claim_mounts(c) {
                seen += 1;
                let sub = m[2].as_str().unwrap_or("");
                assert!(
                    !sub.is_empty(),
                    "{extra}: {} mounts the claim's root",
                    c["name"]
                );
            }
        }
        assert!(seen >= 2, "{extra}");
    }
}

#[test]
fn the_artifact_claim_is_never_the_source_claim() {
    let tree = "a".repeat(64);
    let task = json!({"name": "build", "container": "alpine", "command": "true",
                      "outputs": ["dist"],
                      "mounts": [{"resource": "src:.", "path": "/app"}]});
    let pvc = |claim: &str| {
        json!({"namespace": "ci", "run_id": "r1x2", "artifact_pvc": "shared",
               "source": {"strategy": "pvc", "pvc": {"claim": claim, "tree": tree}}})
    };
    let build_pvc = |opts: Value| {
        let o: BuildOptions = serde_json::from_value(opts).unwrap();
        let p: Pipeline = serde_json::from_value(json!({"version": "2", "tasks": [task.clone()],
            "resources": {"src:.": {"type": "directory", "path": "."}}}))
        .unwrap();
        let plan = SourcePlan::from_options(&o.source).unwrap();
        build_job(&p.tasks[0], &p.resources, "sykli-build-r1x2", &plan, &o)
            .map_err(|e| e.to_string())
    };
    let err = build_pvc(pvc("shared")).unwrap_err();
    assert!(
        err.contains(r#"artifact_pvc and source_pvc are both "shared""#)
            && err.contains("give them two claims in .sykli/config.exs"),
        "{err}"
    );
    assert!(build_pvc(pvc("sykli-source")).is_ok());
}

#[test]
fn a_run_id_is_needed_and_a_task_directory_is_one_of_its_runs() {
    let collecting = json!({"name": "build", "container": "alpine", "command": "true",
                            "outputs": ["dist"],
                            "mounts": [{"resource": "src:.", "path": "/app"}]});
    let err = build_with(
        collecting,
        json!({"artifact_pvc": "sykli-artifacts", "collect_outputs": true, "run_id": null}),
    )
    .unwrap_err();
    assert!(err.contains("no run_id in the build options"), "{err}");

    // A task's own directory is `/artifacts/<task>`: never above or beside its own.
    for (name, why) in [
        ("a/../b", "component"),
        ("./a", "component"),
        ("a//b", "component"),
    ] {
        let task = json!({"name": name, "container": "alpine", "command": "true",
                          "outputs": ["dist"]});
        let err = build(task, Some("sykli-artifacts")).unwrap_err();
        assert!(
            err.contains(&format!(
                "task name {name:?} cannot be its directory /artifacts/<task>"
            )) && err.contains(why),
            "{name}: {err}"
        );
    }
    // A name below a directory of its own is fine: `artifact_path/4` allows it too.
    let built = build(
        json!({"name": "web/build", "container": "alpine", "command": "true", "outputs": ["d"]}),
        Some("sykli-artifacts"),
    )
    .unwrap();
    assert_eq!(
        artifacts(&built).1,
        vec![json!([
            "sykli-artifacts",
            "/artifacts/web/build",
            null,
            "sykli-tasks/r1x2/web/build"
        ])]
    );
    // Without a run id, a task's own directory has no run to be in.
    let err = build_with(
        json!({"name": "build", "container": "alpine", "command": "true", "outputs": ["d"]}),
        json!({"artifact_pvc": "sykli-artifacts", "run_id": null}),
    )
    .unwrap_err();
    assert!(err.contains("no run_id in the build options"), "{err}");
    assert!(err.contains("sykli-tasks/<run>"), "{err}");
}

#[test]
fn copies_name_paths_below_artifacts_of_one_run() {
    use sykli_core::cluster::sync::{artifact_rel, check_run_id};
    assert_eq!(artifact_rel("/artifacts/build/app").unwrap(), "build/app");
    for run in ["", ".", "..", "a/b", "r\0"] {
        let err = check_run_id(run).unwrap_err().to_string();
        assert!(err.contains("give one path component"), "{run:?}: {err}");
    }
    assert!(check_run_id("r1x2").is_ok());
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
