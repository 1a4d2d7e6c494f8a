//! The sykli-test-cluster program: its JSON line, a kubeconfig that works, and a clean exit
//! (no process left behind) when its stdin closes or it is signalled.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::Value;

fn start(dir: &Path) -> (Child, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sykli-test-cluster"))
        .arg("--dir")
        .arg(dir)
        .args([
            "--node-labels",
            "pool=ci",
            "--deny-images",
            "registry.invalid/*",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sykli-test-cluster starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("a line");
    let info: Value = serde_json::from_str(&line).expect("JSON line");
    (child, info)
}

/// Processes (other than zombies) whose command line mentions `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            out.push(cmd);
        }
    }
    out
}

async fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    let h = tokio::task::spawn_blocking(move || child.wait().expect("wait"));
    tokio::time::timeout(WAIT, h)
        .await
        .expect("exits in time")
        .unwrap()
}

async fn running_job(info: &Value) -> kube::Client {
    let kubeconfig = info["kubeconfig"].as_str().unwrap();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let mut j = job("long", "echo up; exec sleep 600");
    j["spec"]["template"]["spec"]["nodeSelector"] = serde_json::json!({"pool": "ci"});
    create_job(&client, "default", j).await;
    let pod = job_pod(&client, "default", "long").await;
    let name = pod.metadata.name.unwrap();
    wait_pod(&client, "default", &name, |p: &Pod| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    let _ = Api::<Pod>::namespaced(client.clone(), "default");
    client
}

#[tokio::test]
async fn prints_its_address_and_exits_when_stdin_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, info) = start(dir.path());
    let url = info["url"].as_str().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert_eq!(info["pid"], child.id());
    assert!(!info["admin_token"].as_str().unwrap().is_empty());
    assert_eq!(
        Path::new(info["kubeconfig"].as_str().unwrap()),
        std::fs::canonicalize(dir.path())
            .unwrap()
            .join("kubeconfig")
    );
    let client = running_job(&info).await;
    assert!(
        processes_under(dir.path())
            .iter()
            .any(|c| c.starts_with("/usr/bin/bwrap")),
        "the pod's sandbox runs"
    );
    // The admin token reads the request log.
    let (code, log) = raw_json(&client, "GET", "/_sykli/requests", None).await;
    assert_eq!(code, 200);
    assert!(log["requests"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["verb"] == "create"));
    drop(child.stdin.take());
    let status = wait_exit(child).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(processes_under(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, info) = start(dir.path());
    running_job(&info).await;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_exit(child).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(processes_under(dir.path()), Vec::<String>::new());
}

#[test]
fn rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_sykli-test-cluster"))
        .args(["--shell", "zsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_sykli-test-cluster"))
        .args(["--dir", "/tmp/x", "--shell", "zsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shell"));
}

#[tokio::test]
async fn nodes_labels_and_image_files_come_from_flags() {
    let dir = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let greeting = host.path().join("greeting");
    std::fs::write(&greeting, "hello from the image\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sykli-test-cluster"))
        .arg("--dir")
        .arg(dir.path())
        .args(["--nodes", "n1,n2", "--node-labels", "tier=ci,n2:pool=gpu"])
        .arg("--image-file")
        .arg(format!(
            "ghcr.io/sykli/sync:test={}:/opt/sykli/greeting",
            greeting.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sykli-test-cluster starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("a line");
    let info: Value = serde_json::from_str(&line).expect("JSON line");
    let kc = kube::config::Kubeconfig::read_from(info["kubeconfig"].as_str().unwrap()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let mut p = pod("greet", "cat /opt/sykli/greeting");
    p["spec"]["containers"][0]["image"] = serde_json::json!("ghcr.io/sykli/sync:test");
    p["spec"]["nodeSelector"] = serde_json::json!({"pool": "gpu", "tier": "ci"});
    create_pod(&client, "default", p).await;
    let done = wait_phase(&client, "default", "greet", "Succeeded").await;
    assert_eq!(done.spec.unwrap().node_name.as_deref(), Some("n2"));
    let log = Api::<Pod>::namespaced(client.clone(), "default")
        .logs("greet", &Default::default())
        .await
        .unwrap();
    assert_eq!(log, "hello from the image\n");
    drop(child.stdin.take());
    let status = wait_exit(child).await;
    assert!(status.success(), "{status:?}");
}

#[test]
fn rejects_bad_node_and_image_file_flags() {
    for args in [
        &["--nodes", "N_1"][..],
        &["--nodes", "n1", "--node-labels", "n9:pool=x"][..],
        &["--image-file", "img-without-paths"][..],
        &["--image-entrypoint", "img=not-json"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sykli-test-cluster"))
            .args(["--dir", "/tmp/sykli-test-cluster-bad-flags"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}
