//! Strict validation of manifests against the Kubernetes OpenAPI schema by an independent
//! validator (PyPI kubernetes-validate, installed by scripts/setup).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

pub const KUBERNETES_VERSION: &str = "1.37.0";

/// A tool from the venv scripts/setup installs (`SYKLI_VENV`, else ~/.cache/sykli/venv).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var("SYKLI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sykli/venv")
        });
    let bin = venv.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup",
        bin.display()
    );
    bin
}

/// Validates each document strictly (unknown fields are errors) and checks that every one
/// was recognised: the validator exits 0 for kinds it has no schema for.
pub fn kube_validate(docs: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    // JSON is YAML (one JSON document per YAML document) once every character YAML cannot
    // hold raw is escaped; outside strings JSON is plain ASCII, so escaping is safe.
    let text: String = docs
        .iter()
        .map(|d| format!("---\n{}\n", yaml_safe(&d.to_string())))
        .collect();
    std::fs::write(&file, text).unwrap();
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed:\n{text}"
    );
    assert_eq!(
        text.matches(" passed for resource ").count(),
        docs.len(),
        "every document validated:\n{text}"
    );
}

fn yaml_safe(json: &str) -> String {
    json.chars()
        .map(|c| match c {
            ' '..='~' => c.to_string(),
            c if (c as u32) <= 0xffff => format!("\\u{:04x}", c as u32),
            c => format!("\\U{:08x}", c as u32),
        })
        .collect()
}

/// Parses YAML with PyYAML (a real YAML parser) into JSON values.
pub fn parse_yaml(text: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import sys, json, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "PyYAML could not parse:\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}
