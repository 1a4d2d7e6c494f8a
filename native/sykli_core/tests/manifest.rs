//! The Job builder: wiring of the source into the task, options, and every error path.

mod support;

use serde_json::{json, Value};
use sykli_core::manifest::{build_job, build_pipeline, names, yaml, BuildOptions};
use sykli_core::pipeline::Pipeline;
use sykli_core::source::SourcePlan;
use sykli_core::Error;
use sykli_testkit::validate::{kube_validate, parse_yaml};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn opts() -> BuildOptions {
    serde_json::from_value(json!({
        "namespace": "ci",
        "run_id": "r1x2",
        "source": {"url": "https://git.example.com/org/repo.git", "sha": SHA, "branch": "main"}
    }))
    .unwrap()
}

fn pipeline(v: Value) -> Pipeline {
    Pipeline::from_json(v.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn job_json(task: Value, resources: Value) -> Result<Value, Error> {
    let p: Pipeline =
        serde_json::from_value(json!({"version": "2", "tasks": [task], "resources": resources}))
            .unwrap();
    let o = opts();
    let plan = SourcePlan::from_options(&o.source)?;
    let job = build_job(&p.tasks[0], &p.resources, "sykli-build-r1x2", &plan, &o)?;
    let job = serde_json::to_value(job).unwrap();
    kube_validate(std::slice::from_ref(&job));
    Ok(job)
}

fn build(task: Value) -> Value {
    job_json(task, json!({"src:.": {"type": "directory", "path": "."}, "fe": {"type": "directory", "path": "./frontend/"}, "cargo": {"type": "cache", "name": "cargo-registry"}}))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_err(task: Value) -> String {
    match job_json(task, json!({"src:.": {"type": "directory", "path": "."}})) {
        Err(e) => {
            assert_eq!(e.kind(), "invalid_task");
            e.to_string()
        }
        Ok(j) => panic!("expected an error, got {j}"),
    }
}

#[test]
fn the_sdk_example_mounts_the_cloned_workspace_at_app() {
    let p = pipeline(json!({"version": "2",
        "tasks": [{"name": "build", "command": "cargo build", "container": "rust:1.75",
                   "mounts": [{"resource": "src:.", "path": "/app", "type": "directory"}]}],
        "resources": {"src:.": {"type": "directory", "path": "."}}}));
    let jobs = build_pipeline(&p, &opts()).unwrap();
    let j = serde_json::to_value(&jobs[0]).unwrap();
    kube_validate(std::slice::from_ref(&j));
    assert_eq!(j["apiVersion"], "batch/v1");
    assert_eq!(j["kind"], "Job");
    assert_eq!(j["metadata"]["name"], "sykli-build-r1x2");
    assert_eq!(j["metadata"]["namespace"], "ci");
    let spec = &j["spec"]["template"]["spec"];
    let task = &spec["containers"][0];
    assert_eq!(task["image"], "rust:1.75");
    assert_eq!(task["command"], json!(["sh", "-c", "cargo build"]));
    assert_eq!(task["workingDir"], "/app");
    assert_eq!(
        task["volumeMounts"],
        json!([{"name": "sykli-workspace", "mountPath": "/app"}])
    );
    // The volume at /app is the one the clone init container fills.
    let clone = &spec["initContainers"][0];
    assert_eq!(clone["name"], "sykli-clone");
    assert!(clone["volumeMounts"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "sykli-workspace", "mountPath": "/workspace"})));
    let env: Vec<(String, String)> = clone["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(env.contains(&("SYKLI_GIT_SHA".into(), SHA.into())));
    assert!(env.contains(&(
        "SYKLI_GIT_URL".into(),
        "https://git.example.com/org/repo.git".into()
    )));
    assert!(env.contains(&("SYKLI_GIT_REF".into(), "main".into())));
    assert!(env.contains(&("SYKLI_GIT_DEPTH".into(), "1".into())));
    // No directory mount is an empty directory that nothing fills.
    for m in task["volumeMounts"].as_array().unwrap() {
        let filled = spec["initContainers"].as_array().unwrap().iter().any(|c| {
            c["volumeMounts"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|cm| cm["name"] == m["name"]))
        });
        assert!(filled, "{m} is filled by an init container");
    }
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(j["spec"]["backoffLimit"], 0);
    assert_eq!(j["spec"]["ttlSecondsAfterFinished"], 300);
}

#[test]
fn a_sub_directory_resource_is_a_sub_path_and_caches_get_their_own_volume() {
    let j = build(
        json!({"name": "fe", "command": "npm test", "container": "node:20", "workdir": "src",
        "mounts": [{"resource": "fe", "path": "/app", "type": "directory"}, {"resource": "src:.", "path": "/repo"},
                   {"resource": "cargo", "path": "/cache", "type": "cache"}]}),
    );
    let c = &j["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["volumeMounts"],
        json!([
            {"name": "sykli-workspace", "mountPath": "/app", "subPath": "frontend"},
            {"name": "sykli-workspace", "mountPath": "/repo"},
            {"name": "sykli-cache-cargo-registry", "mountPath": "/cache"},
        ])
    );
    assert_eq!(c["workingDir"], "/app/src");
    let vols: Vec<&str> = j["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        vols,
        ["sykli-workspace", "sykli-tmp", "sykli-cache-cargo-registry"]
    );
}

#[test]
fn labels_annotations_and_names() {
    let j = build(
        json!({"name": "Build & Test: all!", "command": "make", "container": "alpine:3.20",
        "mounts": [{"resource": "src:.", "path": "/src"}],
        "k8s": {"labels": {"team": "core"}, "annotations": {"example.com/owner": "me"}}}),
    );
    let labels = &j["metadata"]["labels"];
    assert_eq!(labels["sykli.io/task"], "Build---Test--all");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "sykli");
    assert_eq!(labels["sykli.io/run"], "r1x2");
    assert_eq!(labels["sykli.io/job"], j["metadata"]["name"]);
    let pod_labels = &j["spec"]["template"]["metadata"]["labels"];
    assert!(pod_labels.get("sykli.io/job").is_none(), "{pod_labels}");
    assert_eq!(pod_labels["sykli.io/run"], "r1x2");
    assert_eq!(labels["team"], "core");
    let ann = &j["metadata"]["annotations"];
    assert_eq!(ann["sykli.io/task-name"], "Build & Test: all!");
    assert_eq!(ann["sykli.io/git-sha"], SHA);
    assert_eq!(
        ann["sykli.io/git-url"],
        "https://git.example.com/org/repo.git"
    );
    assert_eq!(ann["example.com/owner"], "me");
    let mut job_labels = labels.clone();
    job_labels.as_object_mut().unwrap().remove("sykli.io/job");
    assert_eq!(*pod_labels, job_labels);
    assert!(names::is_dns_label(&names::job_name(
        "Build & Test: all!",
        "r1x2"
    )));
}

#[test]
fn every_k8s_option_lands_where_kubernetes_expects_it() {
    let j = build(support::every_k8s_option_task());
    let spec = &j["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    assert_eq!(j["metadata"]["namespace"], "gpu-jobs");
    assert_eq!(j["spec"]["activeDeadlineSeconds"], 600);
    assert_eq!(
        c["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "500m", "memory": "32Gi"}, "limits": {"cpu": "2", "memory": "32Gi", "nvidia.com/gpu": "2"}})
    );
    assert_eq!(
        c["securityContext"],
        json!({"runAsUser": 1000, "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(spec["nodeSelector"], json!({"gpu": "a100"}));
    assert_eq!(
        spec["tolerations"],
        json!([{"key": "nvidia.com/gpu", "operator": "Equal", "effect": "NoSchedule"}, {"key": "x", "operator": "Exists"}])
    );
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"],
        json!([{"key": "zone", "operator": "In", "values": ["a"]}])
    );
    assert_eq!(
        spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
            ["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(spec["priorityClassName"], "high");
    assert_eq!(spec["serviceAccountName"], "builder");
    assert_eq!(spec["automountServiceAccountToken"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    let sidecars: Vec<(&str, &str)> = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["restartPolicy"] == "Always")
        .map(|c| (c["name"].as_str().unwrap(), c["image"].as_str().unwrap()))
        .collect();
    assert_eq!(sidecars, [("db", "postgres:16"), ("db-2", "redis:7")]);
    // Reached by name, as on sykli's local target: "DB" is no hostname, its container's is.
    assert_eq!(
        spec["hostAliases"],
        json!([{"ip": "127.0.0.1", "hostnames": ["db", "db-2"]}])
    );
    let vols = spec["volumes"].as_array().unwrap();
    assert!(vols.contains(&json!({"name": "cfg", "configMap": {"name": "app-config"}})));
    assert!(vols.contains(
        &json!({"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
    ));
    assert!(
        vols.contains(&json!({"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}}))
    );
}

#[test]
fn the_flat_k8s_form_and_shorthands() {
    let j = build(
        json!({"name": "t", "command": "x", "container": "a", "k8s": {"memory": "8Gi", "cpu": 4, "gpu": 1}}),
    );
    assert_eq!(
        j["spec"]["template"]["spec"]["containers"][0]["resources"],
        json!({
        "requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}})
    );
    // No source mount: no clone, no service account token.
    assert!(j["spec"]["template"]["spec"]["initContainers"].is_null());
    assert!(j["spec"]["template"]["spec"]["hostAliases"].is_null());
    assert_eq!(
        j["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
}

#[test]
fn bad_values_are_clear_errors_naming_the_key() {
    let cases = [
        (
            json!({"memory": "32gb"}),
            "k8s.resources memory \"32gb\" has the unknown unit \"gb\"",
        ),
        (json!({"memory": "32gb"}), "did you mean \"32Gi\"?"),
        (
            json!({"resources": {"memory": "512m"}}),
            "did you mean \"512Mi\"?",
        ),
        (
            json!({"resources": {"request_cpu": "4", "limit_cpu": "2"}}),
            "the cpu request is more than its limit",
        ),
        (
            json!({"namespace": "Bad_NS"}),
            "k8s.namespace \"Bad_NS\" is not a valid namespace name",
        ),
        (
            json!({"labels": {"sykli.io/task": "x"}}),
            "\"sykli.io/task\" is set by sykli",
        ),
        (
            json!({"labels": {"team": "has space"}}),
            "is not a valid label value",
        ),
        (
            json!({"tolerations": [{"key": "k", "operator": "Maybe"}]}),
            "k8s.tolerations[0].operator \"Maybe\"",
        ),
        (
            json!({"dns_policy": "Cluster"}),
            "k8s.dns_policy \"Cluster\" is not one of",
        ),
        (
            json!({"volumes": [{"name": "v", "mount_path": "/app", "secret": {"name": "s"}}]}),
            "something else is already mounted at \"/app\"",
        ),
        (
            json!({"volumes": [{"name": "v", "mount_path": "/v"}]}),
            "give exactly one of",
        ),
        (
            json!({"volumes": [{"name": "sykli-x", "mount_path": "/v", "empty_dir": {}}]}),
            "the name is taken",
        ),
    ];
    for (k8s, expected) in cases {
        let err = build_err(
            json!({"name": "build", "command": "make", "container": "alpine",
            "mounts": [{"resource": "src:.", "path": "/app"}], "k8s": k8s}),
        );
        assert!(err.contains(expected), "{k8s}: {err}");
        assert!(err.starts_with("task \"build\": "), "{err}");
    }
}

#[test]
fn all_problems_of_a_task_are_reported_together() {
    let err = build_err(
        json!({"name": "t", "container": "alpine", "env": {"1BAD": "x"},
        "mounts": [{"resource": "nope", "path": "app"}], "k8s": {"memory": "1gb"}}),
    );
    for part in [
        "no command",
        "mount path \"app\" must be absolute",
        "resource \"nope\", which the pipeline does not define",
        "env \"1BAD\"",
        "did you mean \"1Gi\"",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
}

#[test]
fn unknown_k8s_keys_name_the_place() {
    let text =
        json!({"tasks": [{"name": "a", "command": "x", "k8s": {"memroy": "1Gi"}}]}).to_string();
    let err = Pipeline::from_json(text.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tasks[0].k8s") && err.contains("unknown field `memroy`"),
        "{err}"
    );
}

#[test]
fn pipeline_errors() {
    let bad = json!({"tasks": [
        {"name": "a", "command": "x", "mounts": [{"resource": "r", "path": "/app"}, {"resource": "r", "path": "/app/"}]},
        {"name": "a", "command": ""},
        {"name": "b", "command": "y", "depends_on": ["zzz"]}],
        "resources": {"r": {"type": "directory", "path": "../outside"}, "abs": {"type": "directory", "path": "/etc"}}});
    let err = Pipeline::from_json(bad.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.kind(), "invalid_pipeline");
    let msg = err.to_string();
    for part in [
        "resource \"r\": path \"../outside\" contains \"..\"",
        "resource \"abs\": path \"/etc\" is absolute",
        "task \"a\": two mounts at \"/app/\"",
        "task \"a\" is defined twice",
        "task \"a\": the command is empty",
        "task \"b\" depends on \"zzz\"",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
}

#[test]
fn a_dirty_tree_is_refused_unless_allowed() {
    let mut o = opts();
    o.source.dirty = true;
    o.source.dirty_summary = Some("2 changes: M a.rs, ?? b.txt".into());
    let err = SourcePlan::from_options(&o.source).unwrap_err();
    assert_eq!(err.kind(), "dirty_workdir");
    assert!(
        err.to_string().contains("2 changes: M a.rs, ?? b.txt")
            && err.to_string().contains("--allow-dirty")
    );
    o.source.allow_dirty = true;
    assert!(SourcePlan::from_options(&o.source).is_ok());
}

#[test]
fn yaml_output_is_multi_document() {
    let p = pipeline(
        json!({"tasks": [{"name": "a", "command": "x", "container": "i"}, {"name": "b", "command": "y", "container": "i"}]}),
    );
    let jobs: Vec<Value> = build_pipeline(&p, &opts())
        .unwrap()
        .iter()
        .map(|j| serde_json::to_value(j).unwrap())
        .collect();
    let y = yaml::to_multi_doc(&jobs);
    assert_eq!(y.matches("---\napiVersion: \"batch/v1\"\n").count(), 2);
    assert_eq!(
        parse_yaml(&y),
        jobs,
        "a real YAML parser reads back exactly the Jobs"
    );
    kube_validate(&jobs);
}

/// Deterministic pseudo-random values, hostile to shells and YAML alike.
fn hostile(seed: u64, len: usize) -> String {
    const PARTS: &[&str] = &[
        "'",
        "\"",
        "$(touch /tmp/pwned)",
        "`id`",
        "\n",
        ";",
        "|",
        "&&",
        " ",
        "\\",
        "#",
        ": ",
        "- ",
        "{}",
        "[]",
        "*",
        "~",
        "é",
        "\t",
        "\r",
        "%",
        "!",
        "yes",
        "null",
        "0x1f",
        "${HOME}",
        "\u{7f}",
        "\u{85}",
        "\u{2028}",
        "\u{feff}",
        "\u{1}",
    ];
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            PARTS[(x >> 33) as usize % PARTS.len()]
        })
        .collect()
}

#[test]
fn hostile_values_stay_data_in_yaml_and_never_reach_a_script() {
    for seed in 0..40u64 {
        let value = hostile(seed, 1 + (seed as usize * 7) % 60);
        let task = json!({"name": value, "command": value, "container": "alpine",
            "env": {"HOSTILE": value}, "mounts": [{"resource": "src:.", "path": "/app"}],
            "k8s": {"annotations": {"example.com/v": value}}});
        let job = build(task);
        // Through a real YAML parser, every value comes back byte for byte.
        assert_eq!(
            parse_yaml(&yaml::to_yaml(&job)),
            vec![job.clone()],
            "seed {seed}"
        );
        // The clone script is the constant; the value only travels as data.
        let clone = &job["spec"]["template"]["spec"]["initContainers"][0];
        assert_eq!(
            clone["command"][2],
            sykli_core::source::git_clone::CLONE_SCRIPT
        );
    }
    // A value as long as a whole script.
    let long = hostile(99, 5000);
    let job =
        build(json!({"name": "t", "command": long, "container": "alpine", "env": {"X": long}}));
    assert_eq!(parse_yaml(&yaml::to_yaml(&job)), vec![job]);
}

#[test]
fn ssh_and_local_urls_and_missing_sha() {
    let mut o = opts();
    o.source.url = Some("/srv/repo.git".into());
    assert_eq!(
        SourcePlan::from_options(&o.source).unwrap_err().kind(),
        "local_remote"
    );
    o.source.url = None;
    assert!(SourcePlan::from_options(&o.source)
        .unwrap_err()
        .to_string()
        .contains("no remote"));
    o.source.sha = None;
    assert!(SourcePlan::from_options(&o.source)
        .unwrap_err()
        .to_string()
        .contains("needs the commit"));
}

#[test]
fn dependency_cycles_are_named() {
    let p = json!({"tasks": [
        {"name": "a", "command": "x", "depends_on": ["c"]},
        {"name": "b", "command": "x", "depends_on": ["a"]},
        {"name": "c", "command": "x", "depends_on": ["b"]},
        {"name": "d", "command": "x", "depends_on": ["d"]},
        {"name": "e", "command": "x", "depends_on": ["a"]}]});
    let err = Pipeline::from_json(p.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tasks depend on each other in a cycle: a → c → b → a"),
        "{err}"
    );
    let ok = json!({"tasks": [
        {"name": "a", "command": "x"}, {"name": "b", "command": "x", "depends_on": ["a"]},
        {"name": "c", "command": "x", "depends_on": ["a", "b"]}]});
    assert!(Pipeline::from_json(ok.to_string().as_bytes()).is_ok());
    let self_loop = json!({"tasks": [{"name": "d", "command": "x", "depends_on": ["d"]}]});
    let err = Pipeline::from_json(self_loop.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cycle: d → d"), "{err}");
}

#[test]
fn a_task_name_that_looks_like_a_message_prefix_stays_intact() {
    let err = build_err(json!({"name": "a\": b", "container": "alpine"}));
    assert_eq!(
        err,
        "task \"a\\\": b\": no command (every task run on Kubernetes needs one)"
    );
}

#[test]
fn a_namespace_from_the_command_line_wins_over_the_tasks_own() {
    let p = pipeline(json!({"version": "2", "tasks": [
        {"name": "own", "command": "true", "container": "alpine", "k8s": {"namespace": "gpu-jobs"}},
        {"name": "plain", "command": "true", "container": "alpine"}]}));
    let mut o = opts();
    assert_eq!(
        namespaces(&build_pipeline(&p, &o).unwrap()),
        ["gpu-jobs", "ci"]
    );
    o.namespace_override = Some("flagged".into());
    assert_eq!(
        namespaces(&build_pipeline(&p, &o).unwrap()),
        ["flagged", "flagged"]
    );
}

fn namespaces(jobs: &[k8s_openapi::api::batch::v1::Job]) -> Vec<String> {
    jobs.iter()
        .map(|j| j.metadata.namespace.clone().unwrap_or_default())
        .collect()
}

const TREE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn pvc_job(mount: &str, node: Option<&str>) -> Value {
    let p = pipeline(json!({"version": "2",
        "tasks": [{"name": "build", "command": "make", "container": "gcc:14",
                   "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"},
                              {"resource": "fe", "path": "/web", "type": "directory"}]}],
        "resources": {"src:.": {"type": "directory", "path": "."}, "fe": {"type": "directory", "path": "frontend"}}}));
    let o: BuildOptions = serde_json::from_value(json!({
        "namespace": "ci", "run_id": "r1x2",
        "source": {"strategy": "pvc", "pvc": {"claim": "sykli-source", "tree": TREE, "mount": mount, "node": node}}
    }))
    .unwrap();
    let j = serde_json::to_value(&build_pipeline(&p, &o).unwrap()[0]).unwrap();
    kube_validate(std::slice::from_ref(&j));
    j
}

#[test]
fn the_pvc_strategy_gives_each_job_its_own_copy_of_the_uploaded_tree() {
    let j = pvc_job("copy", Some("node-a"));
    let spec = &j["spec"]["template"]["spec"];
    assert_eq!(
        spec["volumes"][0],
        json!({"name": "sykli-workspace", "emptyDir": {"sizeLimit": "10Gi"}})
    );
    assert_eq!(
        spec["volumes"][1],
        json!({"name": "sykli-store", "persistentVolumeClaim": {"claimName": "sykli-source"}})
    );
    let name = j["metadata"]["name"].as_str().unwrap();
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "sykli-sync");
    assert_eq!(
        init["command"],
        json!([
            "/usr/local/bin/sykli-sync",
            "checkout",
            "--store",
            "/store/sykli",
            "--tree",
            TREE,
            "--to",
            "/workspace"
        ])
    );
    // The claim is read-only to the copy: a Job never writes into a published tree.
    assert_eq!(
        init["volumeMounts"][1],
        json!({"name": "sykli-store", "mountPath": "/store", "readOnly": true})
    );
    let mounts = &spec["containers"][0]["volumeMounts"];
    assert_eq!(
        mounts[0],
        json!({"name": "sykli-workspace", "mountPath": "/src"})
    );
    assert_eq!(mounts[1]["subPath"], "frontend");
    assert_eq!(
        spec["securityContext"]["fsGroupChangePolicy"],
        "OnRootMismatch"
    );
    assert_eq!(spec["nodeSelector"]["kubernetes.io/hostname"], "node-a");
    assert_eq!(j["metadata"]["annotations"]["sykli.io/source-tree"], TREE);
    // No outputs to sync back: no sidecar.
    assert_eq!(spec["initContainers"].as_array().unwrap().len(), 1);
    let _ = name;
}

#[test]
fn declared_outputs_are_collected_by_a_sidecar_when_syncing_back() {
    let p = pipeline(json!({"version": "2",
        "tasks": [{"name": "build", "command": "make", "container": "gcc:14", "outputs": ["dist/app", "reports"],
                   "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"}]}],
        "resources": {"src:.": {"type": "directory", "path": "."}}}));
    let o: BuildOptions = serde_json::from_value(json!({
        "namespace": "ci", "run_id": "r1x2",
        "source": {"strategy": "pvc", "pvc": {"claim": "sykli-source", "tree": TREE, "sync_back": true}}
    }))
    .unwrap();
    let j = serde_json::to_value(&build_pipeline(&p, &o).unwrap()[0]).unwrap();
    kube_validate(std::slice::from_ref(&j));
    let name = j["metadata"]["name"].as_str().unwrap();
    let side = &j["spec"]["template"]["spec"]["initContainers"][1];
    assert_eq!(side["restartPolicy"], "Always");
    assert_eq!(
        side["command"],
        json!([
            "/usr/local/bin/sykli-sync",
            "collect",
            "--from",
            "/workspace",
            "--to",
            format!("/store/sykli/runs/{name}"),
            "--ready",
            "/sykli-ready/ready",
            "--",
            "dist/app",
            "reports"
        ])
    );
    // The task starts only once the sidecar can no longer miss its end.
    let gate = &j["spec"]["template"]["spec"]["initContainers"][2];
    assert_eq!(gate["name"], "sykli-outputs-ready");
    assert_eq!(
        gate["command"],
        json!([
            "/usr/local/bin/sykli-sync",
            "wait-ready",
            "--file",
            "/sykli-ready/ready",
            "--timeout",
            "120"
        ])
    );

    let bad = json!({"version": "2", "tasks": [{"name": "b", "command": "x", "container": "c", "outputs": ["../etc"]}]});
    let e = Pipeline::from_json(bad.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("task \"b\": output \"../etc\" contains"), "{e}");
}

#[test]
fn the_shared_pvc_mount_is_the_published_tree_read_only() {
    let j = pvc_job("shared", None);
    let spec = &j["spec"]["template"]["spec"];
    // No copy, so the tree is checked where it is, before the task sees it: the claim
    // read-only, nothing else.
    let verify = &spec["initContainers"][0];
    assert_eq!(spec["initContainers"].as_array().unwrap().len(), 1);
    assert_eq!(verify["name"], "sykli-verify");
    assert_eq!(
        verify["command"],
        json!([
            "/usr/local/bin/sykli-sync",
            "verify",
            "--store",
            "/store/sykli",
            "--tree",
            TREE
        ])
    );
    assert_eq!(
        verify["volumeMounts"],
        json!([{"name": spec["volumes"][0]["name"], "mountPath": "/store", "readOnly": true}])
    );
    let mount = &spec["containers"][0]["volumeMounts"][0];
    assert_eq!(
        spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "sykli-source"
    );
    assert_eq!(mount["subPath"], format!("sykli/trees/{TREE}"));
    assert_eq!(mount["readOnly"], true);
    assert!(spec.get("nodeSelector").is_none());
}

#[test]
fn the_s3_fetch_reads_its_url_from_the_jobs_own_secret_never_from_the_manifest() {
    let p = pipeline(json!({"version": "2",
        "tasks": [{"name": "build", "command": "make", "container": "gcc:14", "timeout": 900,
                   "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"}]}],
        "resources": {"src:.": {"type": "directory", "path": "."}}}));
    let sha = "f".repeat(64);
    let o: BuildOptions = serde_json::from_value(json!({
        "namespace": "ci", "run_id": "r1x2",
        "source": {"strategy": "s3", "s3": {"sha256": sha, "size": 42, "tree": TREE,
                   "key": format!("ci/sykli-source/{TREE}.tar.gz")}}
    }))
    .unwrap();
    let jobs = build_pipeline(&p, &o).unwrap();
    let j = serde_json::to_value(&jobs[0]).unwrap();
    kube_validate(std::slice::from_ref(&j));
    let name = j["metadata"]["name"].as_str().unwrap();
    let fetch = &j["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(fetch["name"], "sykli-fetch");
    assert_eq!(
        fetch["env"],
        json!([{"name": "SYKLI_SOURCE_URL", "valueFrom": {"secretKeyRef": {
            "name": format!("{name}-source"), "key": "url", "optional": false}}}])
    );
    assert_eq!(j["spec"]["activeDeadlineSeconds"], 900);
    // A URL given as before is refused: the options no longer carry one.
    let with_url = json!({"strategy": "s3", "s3": {"url": "https://b.s3/k?X-Amz-Signature=ab",
        "sha256": "f".repeat(64), "size": 1, "tree": TREE}});
    let e = serde_json::from_value::<sykli_core::source::SourceOptions>(with_url).unwrap_err();
    assert!(e.to_string().contains("unknown field `url`"), "{e}");
    // YAML, as a dry run prints it: the Secret's name, no URL and no signature.
    let text = yaml::to_multi_doc(std::slice::from_ref(&j));
    assert!(text.contains(&format!("{name}-source")), "{text}");
    assert!(!text.contains("X-Amz-"), "{text}");
    assert!(!text.contains("https://"), "{text}");
    // A Secret name is a DNS-1123 subdomain (the API server limits the whole to 253, not each
    // label to 63); a Job name is a label of at most 63.
    let long = names::job_name(&"t".repeat(300), "r1x2");
    let secret = sykli_core::source::s3::url_secret_name(&long);
    assert!(
        secret.len() <= 253
            && secret
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !secret.starts_with('-')
            && !secret.ends_with('-'),
        "{secret}"
    );
}

/// The emptyDir volumes of every Job sykli builds for `extra` options, over the source
/// strategies and the features that add volumes of their own: name → sizeLimit.
fn empty_dirs(extra: Value) -> Result<Vec<(String, Value)>, Error> {
    let p = pipeline(json!({"version": "2",
        "tasks": [{"name": "build", "command": "make", "container": "gcc:14", "outputs": ["dist"],
                   "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"},
                              {"resource": "cargo", "path": "/cache", "type": "cache"}]},
                  {"name": "test", "command": "make test", "container": "gcc:14",
                   "mounts": [{"resource": "src:.", "path": "/src", "type": "directory"}]}],
        "resources": {"src:.": {"type": "directory", "path": "."},
                      "cargo": {"type": "cache", "name": "cargo-registry"}}}));
    let bundle = json!({"sha": SHA});
    let sources = [
        json!({"url": "https://git.example.com/org/repo.git", "sha": SHA, "branch": "main"}),
        json!({"strategy": "pvc", "pvc": {"claim": "sykli-source", "tree": TREE, "sync_back": true, "bundle": bundle}}),
        json!({"strategy": "s3", "s3": {"sha256": "f".repeat(64), "size": 42, "tree": TREE, "bundle": bundle}}),
    ];
    let mut found = Vec::new();
    for source in sources {
        let mut o = json!({"namespace": "ci", "run_id": "r1x2", "source": source,
                           "artifact_pvc": "sykli-artifacts", "collect_outputs": true});
        o.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let o: BuildOptions = serde_json::from_value(o).unwrap();
        for job in build_pipeline(&p, &o)? {
            let j = serde_json::to_value(&job).unwrap();
            kube_validate(std::slice::from_ref(&j));
            for v in j["spec"]["template"]["spec"]["volumes"].as_array().unwrap() {
                if let Some(e) = v.get("emptyDir") {
                    found.push((
                        v["name"].as_str().unwrap().to_string(),
                        e["sizeLimit"].clone(),
                    ));
                }
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.dedup();
    Ok(found)
}

#[test]
fn every_emptydir_sykli_adds_has_a_size_limit_and_workspace_size_limit_sets_it() {
    let names =
        |found: &[(String, Value)]| found.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let defaults = empty_dirs(json!({})).unwrap();
    assert_eq!(
        names(&defaults),
        [
            "sykli-artifacts-ready",
            "sykli-bundle",
            "sykli-cache-cargo-registry",
            "sykli-download",
            "sykli-ready",
            "sykli-tmp",
            "sykli-workspace"
        ]
    );
    let expect = |workspace: &str| {
        vec![
            ("sykli-artifacts-ready".to_string(), json!("1Mi")),
            ("sykli-bundle".to_string(), json!(workspace)),
            ("sykli-cache-cargo-registry".to_string(), json!(workspace)),
            ("sykli-download".to_string(), json!(workspace)),
            ("sykli-ready".to_string(), json!("1Mi")),
            ("sykli-tmp".to_string(), json!("1Gi")),
            ("sykli-workspace".to_string(), json!(workspace)),
        ]
    };
    assert_eq!(defaults, expect("10Gi"));
    assert_eq!(
        empty_dirs(json!({"workspace_size_limit": "20Gi"})).unwrap(),
        expect("20Gi")
    );
    assert_eq!(
        empty_dirs(json!({"workspace_size_limit": 21474836480u64})).unwrap(),
        expect("21474836480")
    );

    // Refused before anything is built, once for the pipeline, naming the key and the fix.
    for (value, why) in [
        (json!("20gb"), "did you mean \"20Gi\"?"),
        (json!("512m"), "thousandths of a byte"),
        (json!("0"), "leaves the workspace no room"),
        (json!("-1Gi"), "negative"),
    ] {
        let e = empty_dirs(json!({"workspace_size_limit": value})).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.kind(), "invalid_option", "{msg}");
        assert!(
            msg.starts_with("workspace_size_limit: ") && msg.contains(why),
            "{value}: {msg}"
        );
        assert_eq!(msg.matches("workspace_size_limit").count(), 1, "{msg}");
    }
}

/// The clone container's environment of a git-clone Job: name → value.
fn clone_env(j: &Value) -> std::collections::BTreeMap<String, String> {
    let init = &j["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["name"], "sykli-clone");
    init["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The Jobs of `tasks` over a monorepo's resources, with the config's `sparse` directories
/// and `extra` build options.
fn monorepo_jobs(tasks: Value, sparse: Value, extra: Value) -> Result<Vec<Value>, Error> {
    let p = pipeline(json!({"version": "2", "tasks": tasks,
        "resources": {"src:.": {"type": "directory", "path": "."},
                      "src:services/api": {"type": "directory", "path": "./services/api/"},
                      "src:services/api/proto": {"type": "directory", "path": "services/api/proto"},
                      "src:libs/common": {"type": "directory", "path": "libs/common"},
                      "src:docs": {"type": "directory", "path": "docs"},
                      "cargo": {"type": "cache", "name": "cargo"}}}));
    let mut o = json!({
        "namespace": "ci", "run_id": "r1x2",
        "source": {"url": "https://git.example.com/org/repo.git", "sha": SHA, "branch": "main",
                   "clone": {"access": {"sparse": sparse}}}
    });
    for (k, v) in extra.as_object().unwrap() {
        o[k] = v.clone();
    }
    let o: BuildOptions = serde_json::from_value(o).unwrap();
    let jobs: Vec<Value> = build_pipeline(&p, &o)?
        .iter()
        .map(|j| serde_json::to_value(j).unwrap())
        .collect();
    kube_validate(&jobs);
    Ok(jobs)
}

fn task(name: &str, mounts: &[(&str, &str)]) -> Value {
    let mounts: Vec<Value> = mounts
        .iter()
        .map(|(r, p)| json!({"resource": r, "path": p, "type": if r == &"cargo" { "cache" } else { "directory" }}))
        .collect();
    json!({"name": name, "command": "make", "container": "gcc:14", "mounts": mounts})
}

#[test]
fn a_task_that_mounts_only_sub_directories_fetches_only_them() {
    let jobs = monorepo_jobs(
        json!([
            task(
                "api",
                &[
                    ("src:services/api", "/app"),
                    ("src:libs/common", "/libs"),
                    ("cargo", "/cache")
                ]
            ),
            task(
                "proto",
                &[
                    ("src:services/api/proto", "/proto"),
                    ("src:services/api", "/app")
                ]
            ),
            task("all", &[("src:services/api", "/app"), ("src:.", "/repo")]),
            task("none", &[("cargo", "/cache")]),
        ]),
        json!([]),
        json!({}),
    )
    .unwrap();
    let fetch = |j: &Value| j["metadata"]["annotations"]["sykli.io/fetch"].clone();

    let env = clone_env(&jobs[0]);
    assert_eq!(env["SYKLI_GIT_SPARSE"], "libs/common\nservices/api");
    assert_eq!(env["SYKLI_GIT_SPARSE_WIDE"], ".");
    assert_eq!(fetch(&jobs[0]), "sparse: libs/common, services/api");
    // The mounts themselves are as before: the sub-directory of the one workspace.
    assert_eq!(
        jobs[0]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0],
        json!({"name": "sykli-workspace", "mountPath": "/app", "subPath": "services/api"})
    );

    // A directory inside another mounted one adds nothing.
    assert_eq!(clone_env(&jobs[1])["SYKLI_GIT_SPARSE"], "services/api");
    assert_eq!(fetch(&jobs[1]), "sparse: services/api");

    // The whole repository mounted: the whole commit, no partial clone.
    let env = clone_env(&jobs[2]);
    assert!(!env.contains_key("SYKLI_GIT_SPARSE"), "{env:?}");
    assert!(!env.contains_key("SYKLI_GIT_SPARSE_WIDE"), "{env:?}");
    assert_eq!(fetch(&jobs[2]), "full");

    // No source mounted: no clone, nothing to say.
    assert!(jobs[3]["spec"]["template"]["spec"]
        .get("initContainers")
        .is_none());
    assert!(jobs[3]["metadata"]["annotations"]
        .get("sykli.io/fetch")
        .is_none());
}

#[test]
fn the_configs_sparse_directories_combine_with_the_mounts() {
    let jobs = monorepo_jobs(
        json!([
            task("api", &[("src:services/api", "/app")]),
            task("all", &[("src:.", "/repo")]),
            task("libs", &[("src:libs/common", "/libs")]),
        ]),
        json!(["services", "libs/common/"]),
        json!({}),
    )
    .unwrap();
    let env = clone_env(&jobs[0]);
    assert_eq!(env["SYKLI_GIT_SPARSE"], "services/api");
    // Through a symbolic link, the checkout the config asks for.
    assert_eq!(env["SYKLI_GIT_SPARSE_WIDE"], "libs/common\nservices");
    assert_eq!(
        jobs[0]["metadata"]["annotations"]["sykli.io/fetch"],
        "sparse: services/api"
    );
    // The whole repository mounted: the config's cone, as always.
    let env = clone_env(&jobs[1]);
    assert_eq!(env["SYKLI_GIT_SPARSE"], "libs/common\nservices");
    assert!(!env.contains_key("SYKLI_GIT_SPARSE_WIDE"), "{env:?}");
    assert_eq!(
        jobs[1]["metadata"]["annotations"]["sykli.io/fetch"],
        "sparse: libs/common, services"
    );
    assert_eq!(clone_env(&jobs[2])["SYKLI_GIT_SPARSE"], "libs/common");

    // A mount outside the config's directories would be empty: an error naming it.
    let e = monorepo_jobs(
        json!([task(
            "docs",
            &[("src:docs", "/docs"), ("src:services/api", "/app")]
        )]),
        json!(["services"]),
        json!({}),
    )
    .unwrap_err();
    assert_eq!(e.kind(), "invalid_pipeline");
    let e = e.to_string();
    assert!(
        e.contains("the mount at \"/docs\" (src:docs = \"docs\") is outside the directories the config's sparse key checks out (sparse: services)"),
        "{e}"
    );
    assert!(!e.contains("/app"), "{e}");
}

#[test]
fn collected_outputs_outside_the_mounts_are_fetched_too() {
    let mut t = task("api", &[("src:services/api", "/app")]);
    t["outputs"] = json!(["services/api/target/app", "dist/report.txt"]);
    let jobs = monorepo_jobs(
        json!([t]),
        json!([]),
        json!({"artifact_pvc": "sykli-artifacts", "collect_outputs": true, "sync_image": "sync:1"}),
    )
    .unwrap();
    assert_eq!(
        clone_env(&jobs[0])["SYKLI_GIT_SPARSE"],
        "dist/report.txt\nservices/api"
    );
}

#[test]
fn other_strategies_ignore_the_cone() {
    let p = pipeline(json!({"version": "2",
        "tasks": [task("api", &[("src:services/api", "/app")])],
        "resources": {"src:services/api": {"type": "directory", "path": "services/api"}}}));
    let o: BuildOptions = serde_json::from_value(json!({
        "namespace": "ci", "run_id": "r1x2",
        "source": {"strategy": "pvc", "pvc": {"claim": "sykli-source", "tree": TREE},
                   "clone": {"access": {"sparse": ["docs"]}}}
    }))
    .unwrap();
    let j = serde_json::to_value(&build_pipeline(&p, &o).unwrap()[0]).unwrap();
    assert!(j["metadata"]["annotations"].get("sykli.io/fetch").is_none());
    let text = j.to_string();
    assert!(!text.contains("SYKLI_GIT_SPARSE"), "{text}");
}
