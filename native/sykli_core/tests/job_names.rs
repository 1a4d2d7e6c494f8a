//! One Job per task: look-alike task names get Job names of their own, and a pipeline whose
//! tasks would still share one is refused before any call. That a Job already under a
//! task's name is adopted only when it provably is that task's Job of that run is shown on
//! the real components, in real_job_names.rs.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use sykli_core::manifest::{build_pipeline, names, BuildOptions};
use sykli_core::pipeline::Pipeline;
use sykli_testkit::validate::kube_validate;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TASK_NAME: &str = "sykli.io/task-name";

fn opts(run: &str) -> BuildOptions {
    serde_json::from_value(json!({
        "namespace": "ci",
        "run_id": run,
        "source": {"url": "https://git.example.com/org/repo.git", "sha": SHA, "branch": "main"}
    }))
    .unwrap()
}

fn pipeline_of(tasks: &[&str]) -> Pipeline {
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|t| json!({"name": t, "command": "true", "container": "alpine"}))
        .collect();
    Pipeline::from_json(
        json!({"version": "2", "tasks": tasks})
            .to_string()
            .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn look_alike_task_names_get_jobs_of_their_own() {
    let tasks = [
        "test unit",
        "test/unit",
        "Test Unit",
        "test-unit",
        "test_unit",
        "A",
        "a",
    ];
    for run in ["r1x2", "r1x2-a2"] {
        let jobs: Vec<Value> = build_pipeline(&pipeline_of(&tasks), &opts(run))
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|j| serde_json::to_value(j).unwrap())
            .collect();
        let job_names: BTreeSet<&str> = jobs
            .iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(job_names.len(), tasks.len(), "{job_names:?}");
        for (task, job) in tasks.iter().zip(&jobs) {
            let name = job["metadata"]["name"].as_str().unwrap();
            assert!(names::is_dns_label(name), "{name}");
            assert_eq!(name, names::job_name(task, run));
            // The exact name is on the Job, for telling its owner apart on a 409.
            assert_eq!(job["metadata"]["annotations"][TASK_NAME], *task);
        }
        // A name that is its own slug keeps today's Job name.
        assert!(job_names.contains(format!("sykli-test-unit-{run}").as_str()));
        assert!(job_names.contains(format!("sykli-a-{run}").as_str()));
        kube_validate(&jobs);
    }
}

#[test]
fn tasks_that_would_share_a_job_name_are_refused_before_any_call() {
    // Both slug to "x" and their SHA-256 share the first 10 hex digits (found by search).
    let (one, two) = ("x>}>^", "x!(.)*");
    assert_eq!(names::job_name(one, "r1x2"), names::job_name(two, "r1x2"));
    let p = pipeline_of(&["build", one, "test unit", two, "test/unit"]);
    let err = build_pipeline(&p, &opts("r1x2")).unwrap_err();
    assert_eq!(err.kind(), "invalid_pipeline");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{one:?}")) && msg.contains(&format!("{two:?}")),
        "{msg}"
    );
    assert!(
        msg.contains(&names::job_name(one, "r1x2")) && msg.contains("rename one"),
        "{msg}"
    );
    assert!(
        !msg.contains("test unit"),
        "look-alikes are no problem: {msg}"
    );
    // Apart, each is fine.
    assert!(build_pipeline(&pipeline_of(&["build", one]), &opts("r1x2")).is_ok());
}
