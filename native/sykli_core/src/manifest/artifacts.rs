//! Artifacts between the tasks of a run, on the artifact claim: a task's declared outputs
//! are collected from its workspace into its Job's directory when the task ends; a task's
//! inputs are placed into its workspace from the producing Jobs' directories before it
//! starts. Both run `sykli-sync` (no shell: every value is one argument).
//!
//! Every container sees only its part of the claim, through `subPath` mounts: the outputs
//! sidecar its own Job's directory (read-write), the inputs placer each producing Job's
//! directory (read-only), the task container its own task's directory (read-write) or,
//! when outputs are collected, nothing. So no task of one run can reach what another run,
//! or another task, produced and consumes.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, VolumeMount};

use super::ARTIFACTS_MOUNT;
use crate::pipeline::ArtifactInput;
use crate::source::git_clone::{restricted_security_context, WORKSPACE_PATH};
use crate::source::pvc::SYNC_BIN;

/// Where the runs' collected outputs live on the claim, one directory per run, one per Job
/// below it. Reserved: no task's own directory (`/artifacts/<task>`) may be it.
pub const RUNS_DIR: &str = "sykli-runs";

/// A Job's directory on the claim: what its task produced in run `run`.
pub fn job_dir(run: &str, job: &str) -> String {
    format!("{RUNS_DIR}/{run}/{job}")
}

/// Why `task` cannot name a task's own directory on the claim (the `subPath` of
/// `/artifacts/<task>`, as `artifact_path/4` builds it), if it cannot.
pub fn task_dir_problem(task: &str) -> Option<String> {
    let why = if task.is_empty() {
        "it is empty"
    } else if task.contains('\0') {
        "it contains a NUL byte"
    } else if task.starts_with('/') {
        "it is absolute"
    } else if task
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        "it has an empty, \".\" or \"..\" component"
    } else {
        return None;
    };
    Some(format!(
        "task name {task:?} cannot be its directory {ARTIFACTS_MOUNT}/<task> on the artifact claim: {why} (rename the task)"
    ))
}

/// The first component of the claim below which each run keeps its tasks' own
/// directories, the artifacts of `artifact_path/4` and `copy_artifact/4`.
pub const TASKS_DIR: &str = "sykli-tasks";

/// Where `/artifacts/<task>` of run `run` is on the claim: a directory of the run's, so
/// a task of another run (another branch) reaches neither it nor what is copied into it.
pub fn task_dir(run: &str, task: &str) -> String {
    format!("{TASKS_DIR}/{run}/{task}")
}

/// The task container's mount of its own directory on the claim, `/artifacts/<task>`
/// (where `artifact_path/4` puts its artifacts and `copy_artifact/4` its inputs), the
/// run's [`task_dir`].
pub fn task_mount(claim_volume: &str, run: &str, task: &str) -> VolumeMount {
    VolumeMount {
        name: claim_volume.into(),
        mount_path: format!("{ARTIFACTS_MOUNT}/{task}"),
        sub_path: Some(task_dir(run, task)),
        ..Default::default()
    }
}

/// Where the outputs sidecar says it is ready.
const READY_PATH: &str = "/sykli-artifacts-ready";

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn helper(name: &str, image: &str, args: Vec<String>, mounts: Vec<VolumeMount>) -> Container {
    Container {
        name: name.into(),
        image: Some(image.into()),
        command: Some(std::iter::once(SYNC_BIN.to_string()).chain(args).collect()),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The native sidecar that copies `outputs` (paths of the repository) from the workspace
/// into the Job's directory of run `run` when the task ends, and the gate that holds the
/// task until the sidecar can no longer miss that end. The sidecar mounts that directory
/// alone (a `subPath`, made by the kubelet when missing), at [`ARTIFACTS_MOUNT`].
pub fn outputs_collector(
    image: &str,
    run: &str,
    job: &str,
    outputs: &[String],
    workspace_volume: &str,
    claim_volume: &str,
    ready_volume: &str,
) -> Vec<Container> {
    let marker = format!("{READY_PATH}/ready");
    let mut args: Vec<String> = [
        "collect",
        "--from",
        WORKSPACE_PATH,
        "--to",
        ARTIFACTS_MOUNT,
        "--ready",
        &marker,
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(outputs.iter().cloned());
    let own = VolumeMount {
        sub_path: Some(job_dir(run, job)),
        ..mount(claim_volume, ARTIFACTS_MOUNT, false)
    };
    let mut sidecar = helper(
        "sykli-artifacts-out",
        image,
        args,
        vec![
            mount(workspace_volume, WORKSPACE_PATH, true),
            own,
            mount(ready_volume, READY_PATH, false),
        ],
    );
    sidecar.restart_policy = Some("Always".into());
    let gate = helper(
        "sykli-artifacts-ready",
        image,
        ["wait-ready", "--file", &marker, "--timeout", "120"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        vec![mount(ready_volume, READY_PATH, true)],
    );
    vec![sidecar, gate]
}

/// The init container that places each input (a path of a producing Job's directory in
/// run `run`) at its destination in the workspace. Each producing Job's directory is
/// mounted on its own, read-only, at `/artifacts/<job>`: nothing else of the claim.
pub fn inputs_placer(
    image: &str,
    run: &str,
    inputs: &[ArtifactInput],
    workspace_volume: &str,
    claim_volume: &str,
) -> Container {
    let mut args: Vec<String> = [
        "place",
        "--from",
        ARTIFACTS_MOUNT,
        "--to",
        WORKSPACE_PATH,
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut mounts = vec![mount(workspace_volume, WORKSPACE_PATH, false)];
    let mut producers = BTreeSet::new();
    for input in inputs {
        args.push(format!("{}/{}", input.job, input.path));
        args.push(input.to.clone());
        if producers.insert(input.job.as_str()) {
            mounts.push(VolumeMount {
                sub_path: Some(job_dir(run, &input.job)),
                ..mount(
                    claim_volume,
                    &format!("{ARTIFACTS_MOUNT}/{}", input.job),
                    true,
                )
            });
        }
    }
    helper("sykli-artifacts-in", image, args, mounts)
}
