//! Thin wrappers: decode terms, call sykli_core, encode results. Nothing else lives here.

mod cluster;
mod git;
mod json;
mod k8s;
mod s3;
mod sync;

use rustler::{Encoder, Env, Term};

/// What the Mix compiler baked in; `unset` for a plain `cargo build`.
pub const FINGERPRINT: &str = match option_env!("SYKLI_NATIVE_FINGERPRINT") {
    Some(f) => f,
    None => "unset",
};

/// Loading fails (and Elixir explains why) when the library was built from other sources
/// than the Elixir code expects.
pub fn load(_env: Env, load_info: Term) -> bool {
    load_info
        .decode::<String>()
        .is_ok_and(|expected| expected == FINGERPRINT)
}

/// A core error on its way to Elixir: `{kind_atom, message}`, wrapped in `{:error, _}` by
/// rustler's `Result` encoding.
pub struct NifError {
    kind: &'static str,
    message: String,
}

impl From<sykli_core::Error> for NifError {
    fn from(e: sykli_core::Error) -> Self {
        NifError {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

impl Encoder for NifError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        error_tuple(env, self.kind, &self.message)
    }
}

pub fn error_tuple<'a>(env: Env<'a>, kind: &str, message: &str) -> Term<'a> {
    let kind = rustler::Atom::from_str(env, kind).unwrap_or_else(|_| rustler::types::atom::error());
    (kind, message).encode(env)
}

#[rustler::nif]
fn native_info() -> (String, String) {
    (
        env!("CARGO_PKG_VERSION").to_string(),
        FINGERPRINT.to_string(),
    )
}
