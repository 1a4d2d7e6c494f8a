//! Test images made from host files: a container whose image is listed sees the host file (or
//! directory) read-only where the image would have it, in its pod and in exec sandboxes.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::json;

const SYNC_IMAGE: &str = "ghcr.io/sykli/sync:test";

/// A stand-in for a helper binary built on the host.
fn helper(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("sykli-sync");
    std::fs::write(&path, "#!/bin/sh\necho \"sykli-sync $*\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn with_image(mut p: serde_json::Value, image: &str) -> serde_json::Value {
    p["spec"]["containers"][0]["image"] = json!(image);
    p
}

async fn log_of(env: &Env, name: &str) -> String {
    Api::<Pod>::namespaced(env.client.clone(), "default")
        .logs(name, &Default::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn image_files_are_seen_by_the_images_containers_only() {
    let host = tempfile::tempdir().unwrap();
    let bin = helper(host.path());
    let tools = host.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::fs::write(tools.join("README"), "tools\n").unwrap();
    let env = env_with(|o| {
        o.image_files.push(
            sykli_testcluster::ImageFile::parse(&format!(
                "{SYNC_IMAGE}={}:/usr/local/bin/sykli-sync",
                bin.display()
            ))
            .unwrap(),
        );
        o.image_files.push(sykli_testcluster::ImageFile {
            image: SYNC_IMAGE.into(),
            host_path: tools.clone(),
            container_path: "/opt/tools".into(),
        });
    })
    .await;

    create_pod(
        &env.client,
        "default",
        with_image(
            pod(
                "synced",
                "sykli-sync --version; cat /opt/tools/README; \
                 if touch /usr/local/bin/sykli-sync 2>/dev/null; then echo writable; else echo read-only; fi; \
                 echo started; exec sleep 600",
            ),
            SYNC_IMAGE,
        ),
    )
    .await;
    create_pod(
        &env.client,
        "default",
        pod(
            "plain",
            "command -v sykli-sync || echo absent; ls /opt/tools 2>/dev/null || echo no-tools",
        ),
    )
    .await;
    wait_phase(&env.client, "default", "plain", "Succeeded").await;
    assert_eq!(log_of(&env, "plain").await, "absent\nno-tools\n");
    wait_phase(&env.client, "default", "synced", "Running").await;
    wait_pod_log(&env.client, "default", "synced", "main", "started").await;

    // The helper is on PATH in an exec sandbox too.
    let r = exec(
        &env.client,
        "default",
        "synced",
        None,
        &["sykli-sync", "push", "/work"],
        None,
    )
    .await
    .unwrap();
    assert!(r.succeeded(), "{:?} {}", r.status, r.err());
    assert_eq!(r.out(), "sykli-sync push /work\n");
    let r = exec(
        &env.client,
        "default",
        "synced",
        None,
        &["ls", "/opt/tools"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.out(), "README\n");

    let log = log_of(&env, "synced").await;
    assert_eq!(
        log, "sykli-sync --version\ntools\nread-only\nstarted\n",
        "the pod saw the image's files"
    );
}

#[test]
fn image_files_are_checked_when_the_cluster_starts() {
    let dir = tempfile::tempdir().unwrap();
    let o = sykli_testcluster::ClusterOptions::new(dir.path()).image_file(
        SYNC_IMAGE,
        dir.path().join("missing"),
        "/usr/local/bin/sykli-sync",
    );
    let e = sykli_testcluster::TestCluster::start(o).err().unwrap();
    assert!(e.contains("missing"), "{e}");
    let e = sykli_testcluster::ImageFile::parse("img=/a:relative").unwrap_err();
    assert!(e.contains("must be absolute"), "{e}");
    let f = sykli_testcluster::ImageFile::parse("registry:5000/img:tag=/host/x:/in/x").unwrap();
    assert_eq!(f.image, "registry:5000/img:tag");
    assert_eq!(f.host_path, std::path::Path::new("/host/x"));
    assert_eq!(f.container_path, std::path::Path::new("/in/x"));
}

#[test]
fn image_entrypoints_parse_from_a_json_array_and_refuse_anything_else() {
    let e = sykli_testcluster::ImageEntrypoint::parse(
        r#"registry:5000/web:1=["/usr/bin/python3","-c","print(1)"]"#,
    )
    .unwrap();
    assert_eq!(e.image, "registry:5000/web:1");
    assert_eq!(e.command, ["/usr/bin/python3", "-c", "print(1)"]);
    for bad in [
        "web:1",
        "web:1=/usr/bin/python3",
        "web:1=[]",
        r#"web:1=[""]"#,
        r#"=["x"]"#,
        r#"web:1=[1]"#,
    ] {
        let err = sykli_testcluster::ImageEntrypoint::parse(bad).unwrap_err();
        assert!(err.contains("JSON array"), "{bad}: {err}");
    }
}
