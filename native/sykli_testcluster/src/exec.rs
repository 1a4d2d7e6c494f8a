//! `pods/exec` over WebSocket, as kube-apiserver serves it since 1.30 (its stream translator):
//! the checks of the pod registry before the upgrade (404 for a missing pod, 400 for a bad
//! container or a pod without a node), then the channel protocol (`v5.channel.k8s.io`; also
//! `v4.channel.k8s.io`, which the kubelet serves when a client offers no v5): every binary
//! message starts with its channel — 0 stdin, 1 stdout, 2 stderr, 3 the final `Status` (JSON),
//! 4 terminal resize, 255 (v5) "close the channel in the next byte" — and the command runs in a
//! new sandbox of the container.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::api::{full, ns_of, pick_container, ApiState, Body, Target};
use crate::resources::Res;
use crate::status::ApiError;
use crate::util::go_quote;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

/// What setpriv writes when it cannot execute the command (the runtime's exec failure).
const EXEC_FAILED: &[u8] = b"setpriv: failed to execute ";

/// How long the server waits, after the status, for the client to close the connection.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// A query flag as the API server converts it to a bool: absent is false; "0" and "false"
/// (any case) are false; anything else, the empty string included, is true.
fn flag(q: &[(String, String)], key: &str) -> bool {
    q.iter()
        .find(|(k, _)| k == key)
        .is_some_and(|(_, v)| !(v == "0" || v.eq_ignore_ascii_case("false")))
}

fn header_has(req: &Request<Incoming>, name: &str, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// `Status` objects as the stream writes them (`json.Marshal(status.Status())`: no kind or
/// apiVersion).
fn success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

fn non_zero_exit(code: i32) -> Value {
    json!({"metadata": {}, "status": "Failure",
           "message": format!("command terminated with non-zero exit code: command terminated with exit code {code}"),
           "reason": "NonZeroExitCode",
           "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

/// `apierrors.NewInternalError(err)` with `err` saying `why`.
fn internal(why: &str) -> Value {
    json!({"metadata": {}, "status": "Failure",
           "message": format!("Internal error occurred: {why}"),
           "reason": "InternalError",
           "details": {"causes": [{"message": why}]},
           "code": 500})
}

/// An error of the kubelet's exec handler, as the stream translator relays it: the kubelet's
/// own InternalError status, decoded by the translator's SPDY client into an error with its
/// message, wrapped into an InternalError again.
fn runtime_error(why: &str) -> Value {
    internal(&format!(
        "Internal error occurred: error executing command in container: {why}"
    ))
}

/// POST or GET `/api/v1/namespaces/{ns}/pods/{name}/exec`.
pub(crate) async fn pod_exec(
    state: &Arc<ApiState>,
    mut req: Request<Incoming>,
    t: &Target,
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let ns = ns_of(t).to_string();
    let name = t.name.clone().unwrap_or_default();
    if q.iter().any(|(k, _)| k == "dryRun") {
        return Err(ApiError::bad_request("dryRun is not supported"));
    }
    let tty = flag(q, "tty");
    let streams = Streams {
        stdin: flag(q, "stdin"),
        stdout: flag(q, "stdout"),
        // With a terminal, stderr is not a stream of its own.
        stderr: flag(q, "stderr") && !tty,
        tty,
    };
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();

    // The pod registry's checks (pod.ExecLocation), before any upgrade.
    let pod = state
        .store
        .get(Res::Pod, &ns, &name)
        .ok_or_else(|| ApiError::not_found(Res::Pod.qualified(), &name))?;
    let container = pick_container(&pod, &name, q)?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    if command.is_empty() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }

    // The WebSocket handshake (RFC 6455) and the subprotocol.
    let key = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let websocket = header_has(&req, "upgrade", "websocket")
        && header_has(&req, "connection", "upgrade")
        && req
            .headers()
            .get("sec-websocket-version")
            .is_some_and(|v| v == "13");
    let Some(key) = key.filter(|_| websocket) else {
        return Err(ApiError::bad_request(
            "Upgrade request required: this test cluster serves pods/exec over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io)",
        ));
    };
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    // A client offering v5 is served by the API server's translator (v5 only); any other by
    // the kubelet, which speaks v4 (and older protocols this cluster does not serve).
    let protocol = if offered.iter().any(|p| p == V5) {
        V5
    } else if offered.iter().any(|p| p == V4) {
        V4
    } else {
        return Err(ApiError::bad_request(format!(
            "requested protocol(s) are not supported: [{}]; supports [{V5} {V4}]",
            offered.join(" ")
        )));
    };

    // What the session will do: run the command, or report why it cannot.
    let plan: Result<sykli_testkit::pod_runner::ExecSandbox, Value> = (|| {
        if !streams.stdin && !streams.stdout && !streams.stderr {
            return Err(internal(
                "unable to upgrade connection: you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        let not_found = || {
            internal(&format!(
                "unable to upgrade connection: container not found ({})",
                go_quote(&container)
            ))
        };
        let running = ["initContainerStatuses", "containerStatuses"]
            .iter()
            .filter_map(|k| {
                pod.pointer(&format!("/status/{k}"))
                    .and_then(Value::as_array)
            })
            .flatten()
            .any(|s| s["name"] == container.as_str() && s.pointer("/state/running").is_some());
        if !running || pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(not_found());
        }
        let kubelet = state
            .kubelets
            .iter()
            .find(|k| k.node_name() == node)
            .ok_or_else(|| {
                internal(&format!(
                    "unable to upgrade connection: no kubelet serves node {}",
                    go_quote(&node)
                ))
            })?;
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        kubelet
            .exec_sandbox(uid, &container, &command)
            .map_err(|e| {
                if e.starts_with("container not found") {
                    internal(&format!("unable to upgrade connection: {e}"))
                } else {
                    runtime_error(&e)
                }
            })
    })();

    let on_upgrade = hyper::upgrade::on(&mut req);
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                session(ws, protocol == V5, streams, command, plan).await;
            }
            Err(e) => eprintln!("sykli-test-cluster: exec: the upgrade failed: {e}"),
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().expect("header"));
    h.insert("connection", "Upgrade".parse().expect("header"));
    h.insert(
        "sec-websocket-accept",
        accept.parse().expect("base64 is a header value"),
    );
    h.insert("sec-websocket-protocol", protocol.parse().expect("header"));
    Ok(r)
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::binary(v)
}

/// One exec session on an upgraded connection: runs the command, streams its input and output,
/// then writes the status, closes, and waits (bounded) for the client to close.
async fn session(
    ws: Ws,
    v5: bool,
    streams: Streams,
    command: Vec<String>,
    plan: Result<sykli_testkit::pod_runner::ExecSandbox, Value>,
) {
    let (mut sink, source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    // One writer: frames go out in the order they were queued.
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                // The client is gone: drain, so that nothing blocks on the queue.
                while rx.recv().await.is_some() {}
                return;
            }
        }
        let _ = sink.close().await;
    });
    // The translator's "connection established" message: an empty one on the lowest writable
    // channel.
    let first = if streams.stdout {
        STDOUT
    } else if streams.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(frame(first, &[])).await;

    let mut reader = match plan {
        Err(status) => {
            // Whatever the client sends is read and dropped until it closes.
            let reader = drain(source);
            finish(&tx, status).await;
            reader
        }
        Ok(sandbox) => {
            let (status, reader) = run(sandbox, v5, streams, &command, &tx, source).await;
            finish(&tx, status).await;
            reader
        }
    };
    // The status is the last frame; then the close frame, and the client closes.
    drop(tx);
    let _ = writer.await;
    if tokio::time::timeout(FINISH_TIMEOUT, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

async fn finish(tx: &mpsc::Sender<Message>, status: Value) {
    let bytes = serde_json::to_vec(&status).unwrap_or_default();
    let _ = tx.send(frame(ERROR, &bytes)).await;
}

/// Where the client's stdin goes.
enum Input {
    None,
    Pipe(tokio::process::ChildStdin),
    /// The terminal: a writer thread owns the writes (None: the client's stdin ended).
    Tty {
        tx: std::sync::mpsc::Sender<Option<Vec<u8>>>,
        master: Arc<std::fs::File>,
    },
}

/// A terminal size message (`{"Width": w, "Height": h}`) applied to the terminal.
fn resize(master: &std::fs::File, json: &[u8]) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    if let Ok(size) = serde_json::from_slice::<Size>(json) {
        let ws = libc::winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on the terminal we opened, with a valid winsize.
        unsafe {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// A pseudo-terminal: (main side, replica side), 80x24 until the client resizes it.
fn open_pty() -> std::io::Result<(std::fs::File, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut main: libc::c_int = -1;
    let mut replica: libc::c_int = -1;
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty(3) with out-pointers to two ints and a valid winsize.
    let r = unsafe {
        libc::openpty(
            &mut main,
            &mut replica,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    let (main, replica) = unsafe { (OwnedFd::from_raw_fd(main), OwnedFd::from_raw_fd(replica)) };
    for fd in [main.as_raw_fd(), replica.as_raw_fd()] {
        // SAFETY: fcntl(2) on descriptors we own: close-on-exec, so that only the stdio
        // copies reach the sandbox.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok((std::fs::File::from(main), replica))
}

/// Runs the sandbox with the client's streams; returns the status and the task that still reads
/// the client (until it closes).
async fn run(
    sandbox: sykli_testkit::pod_runner::ExecSandbox,
    v5: bool,
    streams: Streams,
    command: &[String],
    tx: &mpsc::Sender<Message>,
    mut source: futures::stream::SplitStream<Ws>,
) -> (Value, tokio::task::JoinHandle<()>) {
    use std::io::Write;
    use std::process::Stdio;
    let fail = |e: std::io::Error, source| (runtime_error(&format!("pipe: {e}")), drain(source));
    let (mut status_r, status_w) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(e, source),
    };
    // The output readers: (channel, pipe or terminal); stderr's comes back with what it held.
    let mut readers: Vec<(u8, Box<dyn Read + Send>)> = Vec::new();
    let mut input_pipe = false;
    let mut tty: Option<Arc<std::fs::File>> = None;
    let mut cmd = if streams.tty {
        // A terminal: stdin, stdout and stderr are its replica side.
        let (main, replica) = match open_pty() {
            Ok(p) => p,
            Err(e) => return fail(e, source),
        };
        let mut cmd = sandbox.tty_command(Some(status_w.as_raw_fd()));
        let copies = (replica.try_clone(), replica.try_clone());
        let (Ok(r1), Ok(r2)) = copies else {
            return fail(std::io::Error::other("dup"), source);
        };
        cmd.stdin(r1).stdout(r2).stderr(replica);
        let main = Arc::new(main);
        if streams.stdout {
            let reading = Arc::clone(&main);
            readers.push((STDOUT, Box::new(SharedFile(reading))));
        }
        tty = Some(main);
        cmd
    } else {
        let mut cmd = sandbox.command(Some(status_w.as_raw_fd()));
        input_pipe = streams.stdin;
        cmd.stdin(if streams.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        for (wanted, channel) in [(streams.stdout, STDOUT), (streams.stderr, STDERR)] {
            if !wanted {
                if channel == STDOUT {
                    cmd.stdout(Stdio::null());
                } else {
                    cmd.stderr(Stdio::null());
                }
                continue;
            }
            let (r, w) = match std::io::pipe() {
                Ok(p) => p,
                Err(e) => return fail(e, source),
            };
            if channel == STDOUT {
                cmd.stdout(w);
            } else {
                cmd.stderr(w);
            }
            readers.push((channel, Box::new(r)));
        }
        cmd
    };
    cmd.current_dir("/");
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let spawned = cmd.spawn();
    // Our copies of the write ends (and of the terminal's replica) must go, or the readers
    // never see the end.
    drop(cmd);
    drop(status_w);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return (
                runtime_error(&format!("starting bwrap: {e}")),
                drain(source),
            )
        }
    };
    let exit = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = status_r.read_to_string(&mut text);
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .filter_map(Result::ok)
            .filter_map(|d| d.get("exit-code").and_then(Value::as_i64))
            .last()
    });
    let mut pumps = Vec::new();
    for (channel, mut r) in readers {
        let tx = tx.clone();
        pumps.push(tokio::task::spawn_blocking(move || {
            // setpriv's exec failure on stderr is held back: it becomes the status, as a
            // runtime's failed exec does.
            let mut held = Vec::new();
            let mut holding = channel == STDERR;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) if holding => {
                        held.extend_from_slice(&buf[..n]);
                        let k = held.len().min(EXEC_FAILED.len());
                        if held[..k] != EXEC_FAILED[..k] || held.len() > 4096 {
                            holding = false;
                            let _ = tx.blocking_send(frame(channel, &std::mem::take(&mut held)));
                        }
                    }
                    Ok(n) => {
                        let _ = tx.blocking_send(frame(channel, &buf[..n]));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // A terminal's main side reads EIO once every replica is closed.
                    Err(_) => break,
                }
            }
            held
        }));
    }

    let input = match (&tty, input_pipe) {
        (Some(main), _) if streams.stdin => {
            let (in_tx, in_rx) = std::sync::mpsc::channel::<Option<Vec<u8>>>();
            let writing = Arc::clone(main);
            std::thread::spawn(move || {
                let mut w = SharedFile(writing);
                while let Ok(Some(data)) = in_rx.recv() {
                    if w.write_all(&data).is_err() {
                        return;
                    }
                }
                // The client's stdin ended: the terminal's end-of-file character.
                let _ = w.write_all(&[4]);
            });
            Input::Tty {
                tx: in_tx,
                master: Arc::clone(main),
            }
        }
        (Some(main), _) => Input::Tty {
            tx: std::sync::mpsc::channel().0,
            master: Arc::clone(main),
        },
        (None, true) => child.stdin.take().map_or(Input::None, Input::Pipe),
        (None, false) => Input::None,
    };

    // The client: stdin, its end (v5), terminal resizes, the close.
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut input = input;
        let mut closed = false;
        while let Some(m) = source.next().await {
            match m {
                Ok(Message::Binary(b)) if !b.is_empty() => match (b[0], &mut input) {
                    (STDIN, Input::Pipe(w)) => {
                        let broken = w.write_all(&b[1..]).await.is_err();
                        if broken {
                            // The command has closed its stdin (or ended).
                            input = Input::None;
                        }
                    }
                    (STDIN, Input::Tty { tx, .. }) => {
                        let _ = tx.send(Some(b[1..].to_vec()));
                    }
                    (CLOSE, _) if v5 && b.get(1) == Some(&STDIN) => {
                        match std::mem::replace(&mut input, Input::None) {
                            Input::Pipe(mut w) => {
                                let _ = w.shutdown().await;
                            }
                            Input::Tty { tx, master } => {
                                let _ = tx.send(None);
                                // Resizes still apply.
                                input = Input::Tty {
                                    tx: std::sync::mpsc::channel().0,
                                    master,
                                };
                            }
                            Input::None => {}
                        }
                    }
                    (RESIZE, Input::Tty { master, .. }) => resize(master, &b[1..]),
                    _ => {}
                },
                Ok(Message::Close(_)) => {
                    closed = true;
                    if let Input::Tty { tx, .. } = &input {
                        let _ = tx.send(None);
                    }
                    input = Input::None;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        drop(input);
        if !closed {
            // The connection went away without a close: nobody reads the output any more.
            let _ = gone_tx.send(());
        }
    });

    let waited = tokio::select! {
        w = child.wait() => Some(w),
        _ = &mut gone_rx => None,
    };
    if waited.is_none() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let mut held = Vec::new();
    for p in pumps {
        held.extend(p.await.unwrap_or_default());
    }
    let code = exit.await.ok().flatten();
    let status = match code {
        Some(c) if (c == 126 || c == 127) && held.starts_with(EXEC_FAILED) => {
            runtime_error(&exec_failure(&held, command))
        }
        _ => {
            if !held.is_empty() {
                let _ = tx.send(frame(STDERR, &held)).await;
            }
            match code {
                Some(0) => success(),
                Some(c) => non_zero_exit(c as i32),
                None => runtime_error("the sandbox failed to start"),
            }
        }
    };
    (status, reader)
}

/// A file shared between threads, read and written through `&File`.
struct SharedFile(Arc<std::fs::File>);

impl Read for SharedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl std::io::Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        (&*self.0).flush()
    }
}

/// Reads (and drops) what the client sends until it closes.
fn drain(mut source: futures::stream::SplitStream<Ws>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while let Some(Ok(_)) = source.next().await {} })
}

/// setpriv's failure to execute the command, worded as runc's OCI runtime error through
/// containerd.
fn exec_failure(setpriv: &[u8], command: &[String]) -> String {
    let line = String::from_utf8_lossy(setpriv);
    let line = line.lines().next().unwrap_or("");
    let why = line.rsplit_once(": ").map_or("", |(_, w)| w);
    let arg0 = command.first().map(String::as_str).unwrap_or("");
    let detail = match why {
        "No such file or directory" if !arg0.contains('/') => {
            "executable file not found in $PATH".to_string()
        }
        "No such file or directory" => format!("stat {arg0}: no such file or directory"),
        "Permission denied" => "permission denied".to_string(),
        other => other.to_lowercase(),
    };
    format!(
        "failed to exec in container: failed to start exec: OCI runtime exec failed: exec failed: unable to start container process: exec: {}: {detail}: unknown",
        go_quote(arg0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_convert_as_the_api_server_does() {
        let q = |v: &str| vec![("stdin".to_string(), v.to_string())];
        assert!(flag(&q("true"), "stdin"));
        assert!(flag(&q("1"), "stdin"));
        assert!(flag(&q(""), "stdin"));
        assert!(!flag(&q("false"), "stdin"));
        assert!(!flag(&q("0"), "stdin"));
        assert!(!flag(&[], "stdin"));
    }

    #[test]
    fn statuses_read_like_the_stream_translator() {
        let s = non_zero_exit(3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(
            s["message"],
            "command terminated with non-zero exit code: command terminated with exit code 3"
        );
        assert!(s.get("kind").is_none() && s.get("code").is_none());
        assert_eq!(
            exec_failure(
                b"setpriv: failed to execute nope: No such file or directory\n",
                &["nope".into()]
            ),
            "failed to exec in container: failed to start exec: OCI runtime exec failed: exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown"
        );
    }
}
