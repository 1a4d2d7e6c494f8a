//! A strict Kubernetes API subset for tests, with a Job controller, a scheduler, claims backed by
//! directories, and a kubelet per node that runs pods with the testkit's pod runner (and
//! commands in them: pods/exec over WebSocket). Never linked into the NIF.
//!
//! Start one with [`TestCluster::start`]; it serves HTTPS on 127.0.0.1 with a CA made at start,
//! writes a kubeconfig (contexts `sykli-test` and `sykli-test-readonly`), and stops (killing
//! every pod) when dropped. The `sykli-test-cluster` binary does the same for other processes.

pub mod api;
pub mod cluster;
pub mod controller;
pub mod exec;
pub mod faults;
pub mod kubelet;
pub mod logs;
pub mod resources;
pub mod selectors;
pub mod status;
pub mod store;
pub mod tls;
pub mod util;
pub mod validation;
pub mod volumes;

pub use cluster::{ClusterInfo, ClusterOptions, TestCluster, CONTEXT, NODE_NAME, READONLY_CONTEXT};
pub use faults::{Faults, RequestRecord};
pub use resources::Res;
pub use sykli_testkit::pod_runner::{ImageEntrypoint, ImageFile};
pub use sykli_testkit::Shell;
pub use validation::FieldValidation;
