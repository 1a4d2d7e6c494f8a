//! sykli's Kubernetes source mounting, free of rustler types so that it is tested with plain
//! `cargo test`. The NIF crate (`sykli_native`) is a thin layer over this one.

pub mod cluster;
pub mod error;
pub mod git;
pub mod manifest;
pub mod pipeline;
pub mod s3;
pub mod source;

pub use error::{Error, Result};
