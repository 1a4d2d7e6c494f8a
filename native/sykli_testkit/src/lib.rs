//! Test infrastructure for sykli. Never linked into the NIF.
//!
//! * [`pod_runner`]: runs a Kubernetes Pod spec (or a Job's pod template) locally, every
//!   container in a bubblewrap sandbox over the host's userland.
//! * [`validate`]: strict schema validation of manifests by an independent validator.

pub mod git_server;
pub mod pod_runner;
pub mod validate;

pub use pod_runner::{
    run_pod, ContainerKind, ContainerResult, Fixtures, LogSink, PodPhase, PodResult, RunOptions,
    RunnerError, Shell, DEFAULT_TIMEOUT,
};
