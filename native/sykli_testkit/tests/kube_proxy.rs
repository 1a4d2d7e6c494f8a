//! The fault-injecting proxy in front of the real API server (`sykli-kube up`, no nodes),
//! spoken to over TLS with plain HTTP/1.1, so that what it answers (statuses, headers,
//! resets, chunks) is seen as a client sees it. One plane for this file; each test has
//! its own proxy and its own objects. The API server runs without its watch cache, so that
//! an etcd compaction reaches watches.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use sykli_testkit::kube::{ControlPlane, ControlPlaneOptions};
use sykli_testkit::kube_proxy::{compact_etcd, Action, Fault, KubeProxy, Match};

fn plane() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(|| {
        // Without the watch cache, which would hide etcd's compaction from watches.
        ControlPlane::start(&ControlPlaneOptions {
            up_args: vec!["--apiserver-arg=--watch-cache=false".into()],
            ..ControlPlaneOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    })
}

fn proxy() -> KubeProxy {
    KubeProxy::start(plane().info()).unwrap()
}

/// Header (name lowercased, value) pairs, in order.
type Headers = Vec<(String, String)>;

/// An HTTP/1.1 connection to the proxy, trusting its CA only.
struct Client {
    io: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl Client {
    fn connect(p: &KubeProxy) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(p.ca()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let addr = p.url().trim_start_matches("https://").to_string();
        let tcp = TcpStream::connect(&addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        Client {
            io: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        }
    }

    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &str) {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        self.io.get_mut().write_all(req.as_bytes()).unwrap();
        self.io.get_mut().flush().unwrap();
    }

    /// The status and headers of the answer.
    fn head(&mut self) -> io::Result<(u16, Headers)> {
        let mut line = String::new();
        if self.io.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status = line
            .split(' ')
            .nth(1)
            .unwrap_or_else(|| panic!("status line {line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.io.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                return Ok((status, headers));
            }
            let (n, v) = h.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
    }

    /// One chunk of a chunked body; None after the last.
    fn chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut size = String::new();
        if self.io.read_line(&mut size)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            self.io.read_line(&mut String::new())?;
            return Ok(None);
        }
        let mut data = vec![0; size + 2];
        self.io.read_exact(&mut data)?;
        data.truncate(size);
        Ok(Some(data))
    }

    /// The next watch event (the proxy passes one a chunk).
    fn event(&mut self) -> io::Result<Option<Value>> {
        Ok(self
            .chunk()?
            .map(|c| serde_json::from_slice(&c).expect("one event a chunk")))
    }

    /// A whole answer: status, headers, body.
    fn answer(&mut self) -> io::Result<(u16, Headers, Value)> {
        let (status, headers) = self.head()?;
        let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if let Some(len) = header("content-length") {
            let mut b = vec![0; len.parse().unwrap()];
            self.io.read_exact(&mut b)?;
            b
        } else {
            let mut b = Vec::new();
            while let Some(c) = self.chunk()? {
                b.extend(c);
            }
            b
        };
        Ok((
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        ))
    }

    fn call(&mut self, method: &str, target: &str, body: &str) -> (u16, Value) {
        self.send(method, target, &[], body);
        let (status, _, body) = self.answer().unwrap();
        (status, body)
    }
}

fn config_map(name: &str, label: &str) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"test": label}}, "data": {"k": "v"}})
    .to_string()
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[test]
fn requests_pass_as_the_client_presented_itself_and_are_logged() {
    let p = proxy();
    let mut c = Client::connect(&p);
    // No credentials: the plane's admin (system:masters may read anything).
    let (status, ns) = c.call("GET", "/api/v1/namespaces/default?pretty=false", "");
    assert_eq!(
        (status, ns["metadata"]["name"].as_str()),
        (200, Some("default"))
    );
    // Keep-alive: the same connection takes a second request.
    let (status, _) = c.call("GET", "/version", "");
    assert_eq!(status, 200);
    // A bearer token is passed on as it is, without the admin's certificate: a bogus one
    // is refused by the API server itself.
    let mut c = Client::connect(&p);
    c.send(
        "GET",
        "/api/v1/namespaces/default",
        &[("Authorization", "Bearer not-a-token")],
        "",
    );
    let (status, _, body) = c.answer().unwrap();
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("Unauthorized"))
    );

    let log = p.requests();
    let seen: Vec<(&str, &str, &str, u16, bool)> = log
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.path.as_str(),
                r.query.as_str(),
                r.status,
                r.watch,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "GET",
                "/api/v1/namespaces/default",
                "pretty=false",
                200,
                false
            ),
            ("GET", "/version", "", 200, false),
            ("GET", "/api/v1/namespaces/default", "", 401, false),
        ]
    );
    assert!(log.iter().all(|r| r.fault.is_none() && !r.injected()));
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    p.clear_requests();
    assert!(p.requests().is_empty());

    // The kubeconfig points at the proxy and trusts its CA only.
    let kc: Value = serde_json::from_slice(&std::fs::read(p.kubeconfig()).unwrap()).unwrap();
    let cluster = &kc["clusters"][0]["cluster"];
    assert_eq!(cluster["server"].as_str(), Some(p.url().as_str()));
    assert_eq!(cluster["certificate-authority"].as_str(), p.ca().to_str());
    assert_eq!(
        kc["users"][0]["user"],
        json!({}),
        "no key in the kubeconfig"
    );
}

#[test]
fn errors_throttles_and_delays_hit_only_the_requests_they_match() {
    let p = proxy();
    p.set_faults(vec![
        Fault::next(
            1,
            Match::method_path("GET", "/namespaces/default"),
            Action::Status(503),
        ),
        Fault::next(
            1,
            Match::path("/namespaces/default"),
            Action::Throttle {
                retry_after_secs: 3,
            },
        ),
        Fault::next(
            1,
            Match::path("/version"),
            Action::Delay(Duration::from_millis(400)),
        ),
    ]);
    let mut c = Client::connect(&p);
    // Not matched: passes.
    assert_eq!(c.call("GET", "/api/v1/namespaces/kube-system", "").0, 200);
    let (status, body) = c.call("GET", "/api/v1/namespaces/default", "");
    assert_eq!(
        (status, body["kind"].as_str(), body["reason"].as_str()),
        (503, Some("Status"), Some("ServiceUnavailable"))
    );
    c.send("GET", "/api/v1/namespaces/default", &[], "");
    let (status, headers, body) = c.answer().unwrap();
    assert_eq!(status, 429);
    assert!(headers.contains(&("retry-after".to_string(), "3".to_string())));
    assert_eq!(body["details"]["retryAfterSeconds"], 3);
    // Both faults are spent.
    assert_eq!(c.call("GET", "/api/v1/namespaces/default", "").0, 200);
    assert_eq!(c.call("GET", "/version", "").0, 200);
    assert_eq!(c.call("GET", "/version", "").0, 200);

    let log = p.requests();
    let statuses: Vec<(u16, Option<&str>)> = log.iter().map(|r| (r.status, r.fault)).collect();
    assert_eq!(
        statuses,
        [
            (200, None),
            (503, Some("503")),
            (429, Some("429")),
            (200, None),
            (200, None),
            (200, None)
        ]
    );
    assert_eq!(log.iter().filter(|r| r.injected()).count(), 2);
    assert!(
        log[4].duration >= Duration::from_millis(400),
        "{:?}",
        log[4]
    );
    assert!(log[5].duration < Duration::from_millis(400), "{:?}", log[5]);

    // Rates draw from the seed: the same seed, the same hits.
    let mut hits = |seed| {
        p.set_seed(seed);
        p.set_faults(vec![Fault::rate(
            0.5,
            Match::path("/version"),
            Action::Status(500),
        )]);
        (0..16)
            .map(|_| c.call("GET", "/version", "").0)
            .collect::<Vec<u16>>()
    };
    let first = hits(11);
    assert_eq!(first, hits(11));
    assert!(first.contains(&500) && first.contains(&200), "{first:?}");
}

#[test]
fn a_reset_loses_the_request_and_a_lost_answer_loses_only_the_answer() {
    let p = proxy();
    let label = "reset";
    p.set_faults(vec![
        Fault::next(1, Match::method_path("POST", "/configmaps"), Action::Reset),
        Fault::next(
            1,
            Match::method_path("POST", "/configmaps"),
            Action::LoseAnswer,
        ),
    ]);
    for name in ["reset-lost", "reset-acted"] {
        let mut c = Client::connect(&p);
        c.send("POST", CMS, &[], &config_map(name, label));
        let err = c.answer().unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
            ),
            "{name}: {err}"
        );
    }
    let mut c = Client::connect(&p);
    // The reset one never reached the API server; the other did.
    assert_eq!(c.call("GET", &format!("{CMS}/reset-lost"), "").0, 404);
    assert_eq!(c.call("GET", &format!("{CMS}/reset-acted"), "").0, 200);
    let log = p.requests();
    assert_eq!((log[0].status, log[0].fault), (0, Some("reset")));
    assert_eq!((log[1].status, log[1].fault), (201, Some("lose-answer")));
    c.call("DELETE", &format!("{CMS}/reset-acted"), "");
}

/// A watch of the ConfigMaps labelled `label`, from now (its response head read).
fn watch(p: &KubeProxy, label: &str) -> Client {
    let mut c = Client::connect(p);
    let (_, list) = c.call("GET", &format!("{CMS}?labelSelector=test%3D{label}"), "");
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    c.send(
        "GET",
        &format!("{CMS}?labelSelector=test%3D{label}&watch=true&resourceVersion={rv}"),
        &[],
        "",
    );
    let (status, headers) = c.head().unwrap();
    assert_eq!(status, 200);
    assert!(headers.contains(&("transfer-encoding".to_string(), "chunked".to_string())));
    c
}

fn create(p: &KubeProxy, name: &str, label: &str) {
    let (status, body) = Client::connect(p).call("POST", CMS, &config_map(name, label));
    assert_eq!(status, 201, "{body}");
}

#[test]
fn watch_events_stream_one_at_a_time_and_a_watch_closes_after_n_events() {
    let p = proxy();
    let label = "stream";
    let mut w = watch(&p, label);
    // Each event arrives before the next object exists: nothing is held back.
    for i in 0..3 {
        create(&p, &format!("stream-{i}"), label);
        let e = w.event().unwrap().unwrap();
        assert_eq!(
            (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
            (Some("ADDED"), Some(format!("stream-{i}").as_str()))
        );
    }
    let logged = p.requests().into_iter().find(|r| r.watch).unwrap();
    assert_eq!(
        (logged.events, logged.param("labelSelector")),
        (3, Some(format!("test={label}")))
    );

    p.set_faults(vec![Fault::next(
        1,
        Match::watch("test%3Dclosing"),
        Action::CloseWatchAfter(2),
    )]);
    let mut w = watch(&p, "closing");
    for i in 0..3 {
        create(&p, &format!("closing-{i}"), "closing");
    }
    assert!(w.event().unwrap().is_some());
    assert!(w.event().unwrap().is_some());
    assert!(
        w.event().unwrap().is_none(),
        "the stream ended after two events"
    );
    let closed = p.requests().into_iter().rfind(|r| r.watch).unwrap();
    assert_eq!(
        (closed.events, closed.fault),
        (2, Some("close-watch-after"))
    );
    let mut c = Client::connect(&p);
    for name in [
        "stream-0",
        "stream-1",
        "stream-2",
        "closing-0",
        "closing-1",
        "closing-2",
    ] {
        c.call("DELETE", &format!("{CMS}/{name}"), "");
    }
}

#[test]
fn a_stalled_watch_passes_nothing_until_released_and_close_watches_ends_it_now() {
    let p = proxy();
    let label = "stall";
    p.set_faults(vec![Fault::next(
        1,
        Match::watch("test%3Dstall"),
        Action::StallWatch,
    )]);
    let mut w = watch(&p, label);
    create(&p, "stall-0", label);
    // The API server has sent the event (the create is answered); the proxy holds it.
    let stalled = || p.requests().into_iter().find(|r| r.watch).unwrap();
    assert_eq!((stalled().events, stalled().fault), (0, Some("stall")));
    p.clear_faults(); // releases it
    let e = w.event().unwrap().unwrap();
    assert_eq!(e["object"]["metadata"]["name"], "stall-0");
    assert_eq!(stalled().events, 1);
    // Closed now, live or stalled: the stream ends with its last chunk.
    assert_eq!(p.close_watches(), 1);
    assert!(w.event().unwrap().is_none());
    p.set_faults(vec![Fault::next(
        1,
        Match::watch("test%3Dstall"),
        Action::StallWatch,
    )]);
    let mut stalled_watch = watch(&p, label);
    assert_eq!(p.close_watches(), 1);
    assert!(stalled_watch.event().unwrap().is_none());
    Client::connect(&p).call("DELETE", &format!("{CMS}/stall-0"), "");
}

#[test]
fn a_watch_resuming_after_an_etcd_compaction_meets_410_and_the_log_shows_it() {
    let p = proxy();
    let label = "expired";
    let mut c = Client::connect(&p);
    let (_, list) = c.call("GET", &format!("{CMS}?labelSelector=test%3D{label}"), "");
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    create(&p, "expired-0", label);
    create(&p, "expired-1", label);
    let compacted = compact_etcd(plane().info()).unwrap();
    assert!(compacted > rv.parse::<u64>().unwrap() + 1);
    c.send(
        "GET",
        &format!("{CMS}?labelSelector=test%3D{label}&watch=true&resourceVersion={rv}"),
        &[],
        "",
    );
    let (status, _) = c.head().unwrap();
    let e = c.event().unwrap().unwrap();
    assert_eq!(
        (status, e["type"].as_str(), e["object"]["code"].as_u64()),
        (200, Some("ERROR"), Some(410)),
        "{e}"
    );
    assert!(
        c.event().unwrap().is_none(),
        "the watch ends after its ERROR"
    );
    let w = p.requests().into_iter().find(|r| r.watch).unwrap();
    assert_eq!(w.watch_errors, [410]);
    for name in ["expired-0", "expired-1"] {
        c.call("DELETE", &format!("{CMS}/{name}"), "");
    }
}
