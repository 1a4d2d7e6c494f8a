//! Test infrastructure for sykli. Never linked into the NIF.
//!
//! * [`pod_runner`]: runs a Kubernetes Pod spec (or a Job's pod template) locally, every
//!   container in a bubblewrap sandbox over the host's userland.
//! * [`sshd`]: a real OpenSSH server on 127.0.0.1 serving bare git repositories over ssh.
//! * [`git_server`]: git servers (`git://`, smart HTTP and HTTPS) on 127.0.0.1.
//! * [`hostile_archives`]: a corpus of malicious archives (escapes, symlink tricks, hard
//!   links, devices, huge names), answered by `sykli-hostile-sync`, a hostile stand-in for
//!   the sync image.
//! * [`kube`]: the real control plane (`sykli-kube up`: etcd, kube-apiserver, controller
//!   manager, scheduler and virtual-kubelet nodes running pods in bubblewrap) for tests.
//! * [`kube_proxy`]: a TLS reverse proxy in front of the real API server that logs every
//!   request and injects faults (5xx, 429, resets, delays, dropped and stalled watches).
//! * [`http_proxy`]: an HTTP proxy (`CONNECT` and absolute-form requests) that logs what
//!   goes through it.
//! * [`aws_endpoints`]: the container credentials endpoint (ECS, EKS Pod Identity) and EC2
//!   instance metadata (IMDSv2), handing out given credentials.
//! * [`moto_server`]: moto's STS and S3 on 127.0.0.1 with IAM auth enforced, for the AWS
//!   web identity exchange and the temporary credentials it gives.
//! * [`s3_server`]: a real S3-compatible server (s3s-fs) on 127.0.0.1 that verifies SigV4
//!   signatures and presigned URLs, storing objects as plain files (and a TLS front of a
//!   private CA for it).
//! * [`tls`]: a CA made on the spot and a server certificate for 127.0.0.1 it signs.
//! * [`validate`]: strict schema validation of manifests by an independent validator.

pub mod aws_endpoints;
pub mod git_server;
pub mod hostile_archives;
mod http;
pub mod http_proxy;
pub mod kube;
pub mod kube_proxy;
mod launch;
pub mod lfs_server;
pub mod moto_server;
pub mod pod_runner;
pub mod s3_server;
mod server;
pub mod sshd;
pub mod tls;
pub mod validate;

pub use pod_runner::{
    run_pod, ContainerKind, ContainerResult, Fixtures, LogSink, PodPhase, PodResult, RunOptions,
    RunnerError, Shell, DEFAULT_TIMEOUT,
};
