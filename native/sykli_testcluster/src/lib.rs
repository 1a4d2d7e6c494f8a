//! A strict Kubernetes API subset for tests. Never linked into the NIF.

pub mod resources;
pub mod selectors;
pub mod status;
pub mod util;
pub mod validation;
