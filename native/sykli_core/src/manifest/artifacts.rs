//! Artifacts between the tasks of a run, on the artifact claim: a task's declared outputs
//! are collected from its workspace into its Job's directory when the task ends; a task's
//! inputs are placed into its workspace from the producing Jobs' directories before it
//! starts. Both run `sykli-sync` (no shell: every value is one argument).

use k8s_openapi::api::core::v1::{Container, VolumeMount};

use super::ARTIFACTS_MOUNT;
use crate::pipeline::ArtifactInput;
use crate::source::git_clone::{restricted_security_context, WORKSPACE_PATH};

/// A Job's directory on the claim, below [`ARTIFACTS_MOUNT`]: what its task produced.
pub fn job_dir(job: &str) -> String {
    format!("sykli-jobs/{job}")
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
        command: Some(
            std::iter::once("sykli-sync".to_string())
                .chain(args)
                .collect(),
        ),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The native sidecar that copies `outputs` (paths of the repository) from the workspace
/// into the Job's directory when the task ends, and the gate that holds the task until the
/// sidecar can no longer miss that end.
pub fn outputs_collector(
    image: &str,
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
        &format!("{ARTIFACTS_MOUNT}/{}", job_dir(job)),
        "--ready",
        &marker,
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(outputs.iter().cloned());
    let mut sidecar = helper(
        "sykli-artifacts-out",
        image,
        args,
        vec![
            mount(workspace_volume, WORKSPACE_PATH, true),
            mount(claim_volume, ARTIFACTS_MOUNT, false),
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

/// The init container that places each input (a path of a producing Job's directory) at
/// its destination in the workspace.
pub fn inputs_placer(
    image: &str,
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
    for input in inputs {
        args.push(format!("{}/{}", job_dir(&input.job), input.path));
        args.push(input.to.clone());
    }
    helper(
        "sykli-artifacts-in",
        image,
        args,
        vec![
            mount(workspace_volume, WORKSPACE_PATH, false),
            mount(claim_volume, ARTIFACTS_MOUNT, true),
        ],
    )
}
