// The Mix compiler passes a fingerprint of the native sources; baking it into the library
// lets the Elixir side refuse a library built from other sources (stale) with a clear message.
fn main() {
    println!("cargo:rerun-if-env-changed=SYKLI_NATIVE_FINGERPRINT");
}
