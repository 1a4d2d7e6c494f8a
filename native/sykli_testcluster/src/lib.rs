//! A strict Kubernetes API subset for tests. Never linked into the NIF.
