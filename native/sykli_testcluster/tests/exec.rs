//! pods/exec over WebSocket with kube-rs: stdin, stdout and stderr streams, exit statuses, the
//! container's own sandbox (volumes, environment, identity, working directory), and the API
//! server's refusals.

mod common;

use common::*;
use serde_json::json;

/// A pod that runs until the test is done with it.
fn sleeper(name: &str) -> serde_json::Value {
    pod(name, "echo started; exec sleep 600")
}

async fn running(env: &Env, v: serde_json::Value) -> String {
    let name = v["metadata"]["name"].as_str().unwrap().to_string();
    create_pod(&env.client, "default", v).await;
    wait_phase(&env.client, "default", &name, "Running").await;
    name
}

/// Deterministic bytes covering every value.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn exec_streams_stdin_stdout_and_stderr_and_reports_the_exit_status() {
    let env = env().await;
    let name = running(&env, sleeper("shell")).await;

    let r = exec(
        &env.client,
        "default",
        &name,
        None,
        &["echo", "hello", "world"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.out(), "hello world\n");
    assert_eq!(r.err(), "");
    assert!(r.succeeded(), "{:?}", r.status);

    let r = exec(
        &env.client,
        "default",
        &name,
        None,
        &["cat"],
        Some(b"line one\nline two\n".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(r.out(), "line one\nline two\n");
    assert!(r.succeeded());

    // A few MB of binary data through cat, byte for byte.
    let data = noise(3 * 1024 * 1024 + 17);
    let r = exec(
        &env.client,
        "default",
        &name,
        None,
        &["cat"],
        Some(data.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.stdout.len(), data.len());
    assert!(r.stdout == data, "cat returned other bytes");
    assert!(r.succeeded());

    // stdin read to its end by a pipeline: the end of stdin reaches the command.
    let r = exec(
        &env.client,
        "default",
        &name,
        None,
        &["sh", "-c", "wc -c; echo done >&2"],
        Some(vec![b'x'; 100_000]),
    )
    .await
    .unwrap();
    assert_eq!(r.out().trim(), "100000");
    assert_eq!(r.err(), "done\n");

    let r = exec(
        &env.client,
        "default",
        &name,
        None,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.out(), "out\n");
    assert_eq!(r.err(), "err\n");
    assert_eq!(r.exit_code(), Some(3));
    assert_eq!(r.status.status.as_deref(), Some("Failure"));
    assert_eq!(
        r.status.message.as_deref(),
        Some("command terminated with non-zero exit code: command terminated with exit code 3")
    );

    // Killed by a signal: 128+N, as runtimes report it.
    let r = exec(
        &env.client,
        "default",
        &name,
        None,
        &["sh", "-c", "kill -9 $$"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.exit_code(), Some(137));

    // A command that does not exist is the runtime's exec failure, not an exit code.
    let r = exec(
        &env.client,
        "default",
        &name,
        None,
        &["no-such-command"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status.reason.as_deref(), Some("InternalError"));
    assert_eq!(r.status.code, Some(500));
    let m = r.status.message.clone().unwrap_or_default();
    assert!(
        m.contains("exec: \"no-such-command\": executable file not found in $PATH"),
        "{m}"
    );
    assert_eq!(r.err(), "", "setpriv's complaint is the status, not output");

    // Arguments arrive as given: no shell, no $(VAR) expansion.
    let r = exec(
        &env.client,
        "default",
        &name,
        None,
        &["printf", "%s|", "a b", "$(HOME)", "*"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.out(), "a b|$(HOME)|*|");
}

#[tokio::test]
async fn exec_runs_in_the_containers_sandbox() {
    let env = env().await;
    let mut p = pod(
        "shaped",
        "echo from-main > /shared/x; echo started; exec sleep 600",
    );
    p["spec"]["securityContext"] = json!({"runAsUser": 1000, "runAsGroup": 3000});
    p["spec"]["volumes"] = json!([{"name": "shared", "emptyDir": {}}]);
    p["spec"]["containers"][0]["workingDir"] = json!("/work");
    p["spec"]["containers"][0]["env"] = json!([{"name": "GREETING", "value": "hi"}]);
    p["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "shared", "mountPath": "/shared"}]);
    p["spec"]["containers"].as_array_mut().unwrap().push(json!({
        "name": "other", "image": "busybox:1.36", "command": ["sh", "-c", "exec sleep 600"]
    }));
    let name = running(&env, p).await;
    wait_pod(&env.client, "default", &name, |p| {
        container_state(p, "other").get("running").is_some()
    })
    .await;
    // The main container has written its file (it logs "started" afterwards).
    wait_pod_log(&env.client, "default", &name, "main", "started").await;

    let r = exec(
        &env.client,
        "default",
        &name,
        Some("main"),
        &[
            "sh",
            "-c",
            "id -u; id -g; pwd; echo $GREETING; echo $HOSTNAME; cat /shared/x; echo from-exec > /shared/y",
        ],
        None,
    )
    .await
    .unwrap();
    assert!(r.succeeded(), "{:?} {}", r.status, r.err());
    assert_eq!(
        r.out(),
        format!("1000\n3000\n/work\nhi\n{name}\nfrom-main\n"),
        "{}",
        r.err()
    );
    let work_dir = std::fs::read_dir(env.cluster.dir().join("pods"))
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("default_shaped_")
        })
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_to_string(work_dir.join("volumes/shared/y")).unwrap(),
        "from-exec\n"
    );

    // Two containers: the container must be named, as the API server says.
    let e = exec(&env.client, "default", &name, None, &["true"], None)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(s.code, 400);
    assert_eq!(
        s.message,
        "a container name must be specified for pod shaped, choose one of: [main other]"
    );
    let r = exec(
        &env.client,
        "default",
        &name,
        Some("other"),
        &["true"],
        None,
    )
    .await
    .unwrap();
    assert!(r.succeeded());
}

#[tokio::test]
async fn exec_is_refused_as_the_api_server_refuses_it() {
    let env = env().await;
    let name = running(&env, sleeper("target")).await;

    // A missing pod: 404 before any upgrade.
    let e = exec(&env.client, "default", "nope", None, &["true"], None)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, "pods \"nope\" not found");

    // A container the pod does not have: 400.
    let e = exec(
        &env.client,
        "default",
        &name,
        Some("sidecar"),
        &["true"],
        None,
    )
    .await
    .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    assert_eq!(s.message, "container sidecar is not valid for pod target");

    // The read-only token may read pods but not create pods/exec (WebSocket or not).
    let ro = client_for(&env.cluster, sykli_testcluster::READONLY_CONTEXT).await;
    let e = exec(&ro, "default", &name, None, &["true"], None)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        "pods \"target\" is forbidden: User \"sykli-readonly\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
    );
    let log = env.cluster.requests();
    assert!(log
        .iter()
        .any(|r| r.path.contains("/pods/target/exec") && r.status == 403 && r.verb == "get"));

    // A pod that no node took: 400 before any upgrade.
    let mut p = pod("unscheduled", "true");
    p["spec"]["nodeSelector"] = json!({"pool": "none"});
    create_pod(&env.client, "default", p).await;
    let e = exec(&env.client, "default", "unscheduled", None, &["true"], None)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("{e}")
    };
    assert_eq!(s.code, 400);
    assert_eq!(s.message, "pod unscheduled does not have a host assigned");

    // A pod whose container has not started: the upgrade succeeds, the kubelet has no such
    // container, and the status on the error channel says so.
    let mut p = pod("waiting", "true");
    p["spec"]["containers"][0]["env"] =
        json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]);
    create_pod(&env.client, "default", p).await;
    wait_pod(&env.client, "default", "waiting", |p| {
        waiting_reason(p, "main").as_deref() == Some("CreateContainerConfigError")
    })
    .await;
    let r = exec(&env.client, "default", "waiting", None, &["true"], None)
        .await
        .unwrap();
    assert_eq!(r.status.reason.as_deref(), Some("InternalError"));
    assert_eq!(
        r.status.message.as_deref(),
        Some(
            "Internal error occurred: unable to upgrade connection: container not found (\"main\")"
        )
    );

    // A pod that has finished.
    create_pod(&env.client, "default", pod("done", "echo bye")).await;
    wait_phase(&env.client, "default", "done", "Succeeded").await;
    let r = exec(&env.client, "default", "done", None, &["true"], None)
        .await
        .unwrap();
    assert_eq!(r.status.status.as_deref(), Some("Failure"));
    assert_eq!(r.status.reason.as_deref(), Some("InternalError"));
    assert_eq!(r.status.code, Some(500));
    assert_eq!(
        r.status.message.as_deref(),
        Some(
            "Internal error occurred: unable to upgrade connection: container not found (\"main\")"
        )
    );
}

#[tokio::test]
async fn exec_without_websocket_or_a_known_subprotocol_is_refused() {
    let env = env().await;
    let name = running(&env, sleeper("plain")).await;
    let (code, v) = raw_json(
        &env.client,
        "POST",
        &format!("/api/v1/namespaces/default/pods/{name}/exec?command=true&stdout=true"),
        None,
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("Upgrade request required"));
    let (_, v) = raw_json(&env.client, "GET", "/api/v1", None).await;
    let exec_resource = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/exec")
        .cloned()
        .unwrap();
    assert_eq!(exec_resource["verbs"], json!(["create", "get"]));
}

/// A WebSocket to the cluster with a client of our own (kube-rs always offers v5 and v4).
async fn raw_ws(
    env: &Env,
    path: &str,
    protocols: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        String,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use rustls::pki_types::pem::PemObject;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::CertificateDer::from_pem_slice(env.cluster.ca_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr = env.cluster.url().trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut req = format!("wss://{addr}{path}").into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "authorization",
        format!("Bearer {}", env.cluster.admin_token())
            .parse()
            .unwrap(),
    );
    h.insert("sec-websocket-protocol", protocols.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, tls).await?;
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((ws, proto))
}

/// Reads frames until the status (channel 3, non-empty) and the server's close: (the first
/// frame, stdout, stderr, status, whether a close frame came).
async fn collect(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    >,
) -> (Vec<u8>, Vec<u8>, Vec<u8>, serde_json::Value, bool) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let fut = async {
        let mut first = None;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut status = serde_json::Value::Null;
        let mut closed = false;
        while let Some(m) = ws.next().await {
            match m.unwrap() {
                Message::Binary(b) => {
                    if first.is_none() {
                        first = Some(b.to_vec());
                    }
                    match b[0] {
                        1 => out.extend_from_slice(&b[1..]),
                        2 => err.extend_from_slice(&b[1..]),
                        3 if b.len() > 1 => status = serde_json::from_slice(&b[1..]).unwrap(),
                        _ => {}
                    }
                }
                Message::Close(_) => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        (first.unwrap_or_default(), out, err, status, closed)
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("the session ends")
}

#[tokio::test]
async fn the_channel_protocols_frame_streams_and_statuses_as_kubernetes_does() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let env = env().await;
    let name = running(&env, sleeper("framed")).await;
    let base =
        format!("/api/v1/namespaces/default/pods/{name}/exec?stdin=true&stdout=true&stderr=true");

    // v5 (what the API server's translator speaks): stdin ends with the close message.
    let (mut ws, proto) = raw_ws(
        &env,
        &format!("{base}&command=cat"),
        "v5.channel.k8s.io, v4.channel.k8s.io",
    )
    .await
    .unwrap();
    assert_eq!(proto, "v5.channel.k8s.io");
    ws.send(Message::binary(b"\x00abc".to_vec())).await.unwrap();
    ws.send(Message::binary(b"\x00def".to_vec())).await.unwrap();
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let (first, out, err, status, closed) = collect(&mut ws).await;
    assert_eq!(first, [1], "an empty stdout message opens the session");
    assert_eq!(out, b"abcdef");
    assert!(err.is_empty());
    assert_eq!(status, json!({"metadata": {}, "status": "Success"}));
    assert!(closed, "the server closes after the status");

    // v4 (what the kubelet speaks to a client that offers no v5): no close message, so the
    // command reads what it needs.
    let (mut ws, proto) = raw_ws(
        &env,
        &format!("{base}&command=sh&command=-c&command=read+l%3B+echo+got+%24l%3B+echo+oops+%3E%262%3B+exit+2"),
        "v4.channel.k8s.io",
    )
    .await
    .unwrap();
    assert_eq!(proto, "v4.channel.k8s.io");
    ws.send(Message::binary(b"\x00hello\n".to_vec()))
        .await
        .unwrap();
    let (first, out, err, status, closed) = collect(&mut ws).await;
    assert_eq!(first, [1]);
    assert_eq!(out, b"got hello\n");
    assert_eq!(err, b"oops\n");
    assert_eq!(
        status,
        json!({"metadata": {}, "status": "Failure",
               "message": "command terminated with non-zero exit code: command terminated with exit code 2",
               "reason": "NonZeroExitCode",
               "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}})
    );
    assert!(closed);

    // Without stdout, the session opens on stderr; without either, on the error channel.
    let (mut ws, _) = raw_ws(
        &env,
        &format!("/api/v1/namespaces/default/pods/{name}/exec?stderr=true&command=true"),
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    assert_eq!(collect(&mut ws).await.0, [2]);
    let (mut ws, _) = raw_ws(
        &env,
        &format!("/api/v1/namespaces/default/pods/{name}/exec?stdin=true&command=true"),
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    let (first, _, _, status, _) = collect(&mut ws).await;
    assert_eq!(first, [3]);
    assert_eq!(status["status"], "Success");

    // No stream at all is the kubelet's refusal, relayed.
    let (mut ws, _) = raw_ws(
        &env,
        &format!("/api/v1/namespaces/default/pods/{name}/exec?command=true"),
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    let (_, _, _, status, _) = collect(&mut ws).await;
    assert_eq!(
        status["message"],
        "Internal error occurred: unable to upgrade connection: you must specify at least 1 of stdin, stdout, stderr"
    );

    // A subprotocol this cluster does not speak.
    let e = raw_ws(&env, &format!("{base}&command=true"), "channel.k8s.io")
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(resp) = e else {
        panic!("{e}")
    };
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn a_terminal_merges_the_output_and_follows_resizes() {
    use futures::SinkExt;
    use kube::api::{AttachParams, TerminalSize};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = env().await;
    let name = running(&env, sleeper("term")).await;
    let api =
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(env.client.clone(), "default");

    let ap = AttachParams::default()
        .stdin(false)
        .stdout(true)
        .stderr(false)
        .tty(true);
    let session = async {
        let mut p = api
            .exec(
                &name,
                [
                    "sh",
                    "-c",
                    "test -t 0 && test -t 1 && echo on-a-terminal; stty size; echo to-stderr >&2; \
                     while [ \"$(stty size)\" = \"24 80\" ]; do :; done; stty size",
                ],
                &ap,
            )
            .await
            .unwrap();
        let mut out = p.stdout().unwrap();
        let status = p.take_status().unwrap();
        let mut size = p.terminal_size().unwrap();
        // The first lines arrive before the resize.
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("to-stderr\r\n") {
            let n = out.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "output ended early: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        size.send(TerminalSize {
            width: 100,
            height: 40,
        })
        .await
        .unwrap();
        out.read_to_end(&mut seen).await.unwrap();
        (
            String::from_utf8_lossy(&seen).into_owned(),
            status.await.unwrap(),
        )
    };
    let (out, status) = tokio::time::timeout(WAIT, session).await.expect("in time");
    assert_eq!(out, "on-a-terminal\r\n24 80\r\nto-stderr\r\n40 100\r\n");
    assert_eq!(status.status.as_deref(), Some("Success"));

    // Input goes through the terminal (echoed, line-edited); the end of stdin is its EOF.
    let ap = AttachParams::interactive_tty();
    let session = async {
        let mut p = api
            .exec(&name, ["sh", "-c", "read line; echo got:$line; cat"], &ap)
            .await
            .unwrap();
        let mut out = p.stdout().unwrap();
        let mut input = p.stdin().unwrap();
        let status = p.take_status().unwrap();
        input.write_all(b"hello\n").await.unwrap();
        input.write_all(b"more\n").await.unwrap();
        input.shutdown().await.unwrap();
        let mut seen = Vec::new();
        out.read_to_end(&mut seen).await.unwrap();
        (
            String::from_utf8_lossy(&seen).into_owned(),
            status.await.unwrap(),
        )
    };
    let (out, status) = tokio::time::timeout(WAIT, session).await.expect("in time");
    // The terminal echoes input as it comes, so echoes and output interleave.
    assert!(out.ends_with("\r\n"), "{out:?}");
    let mut lines: Vec<&str> = out.split("\r\n").filter(|l| !l.is_empty()).collect();
    lines.sort_unstable();
    assert_eq!(lines, ["got:hello", "hello", "more", "more"], "{out:?}");
    assert_eq!(status.status.as_deref(), Some("Success"));
}
