//! The HTTP API: authentication, authorization, discovery, CRUD, list, watch, pod logs, pod exec
//! (in [`crate::exec`]), the request log and the fault knobs.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::faults::{FaultState, Faults, RequestRecord};
use crate::kubelet::Kubelet;
use crate::logs::LogStore;
use crate::resources::{Res, ALL, GROUPS};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, FieldError};
use crate::store::{EventType, Store, WatchFrom, WatchMsg};
use crate::util::{go_quote, now_rfc3339, parse_query, unix_now};
use crate::validation::{self, FieldValidation};
use crate::volumes::{Volumes, PROVISIONER, PVC_PROTECTION};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub const ADMIN_USER: &str = "sykli-admin";
pub const READONLY_USER: &str = "sykli-readonly";
const REQUEST_LOG_LIMIT: usize = 100_000;

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub bookmark_interval: Duration,
    /// What an unset `fieldValidation` means. kube-apiserver's default is Warn; this server
    /// defaults to Strict so that a test notices unknown fields.
    pub default_field_validation: FieldValidation,
    /// A watch without timeoutSeconds ends after this long.
    pub default_watch_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            bookmark_interval: Duration::from_secs(60),
            default_field_validation: FieldValidation::Strict,
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

pub struct ApiState {
    pub store: Arc<Store>,
    pub logs: Arc<LogStore>,
    pub admin_token: String,
    pub readonly_token: String,
    pub requests: Mutex<Vec<RequestRecord>>,
    pub faults: Mutex<FaultState>,
    pub config: ApiConfig,
    /// host:port, for discovery's serverAddressByClientCIDRs.
    pub address: String,
    /// The kubelets (one per node), for pods/exec.
    pub kubelets: Vec<Arc<Kubelet>>,
    /// The claims' directories (made with the claim, removed with it).
    pub volumes: Arc<Volumes>,
}

impl ApiState {
    pub fn set_faults(&self, f: Faults) {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).set(f);
    }

    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    for (k, v) in &e.headers {
        if let Ok(v) = v.parse() {
            r.headers_mut().insert(*k, v);
        }
    }
    r
}

fn warn(r: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        let v = format!("299 - {}", go_quote(w));
        if let Ok(v) = v.parse() {
            r.headers_mut().append("warning", v);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    ReadOnly,
    Anonymous,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Admin => ADMIN_USER,
            Who::ReadOnly => READONLY_USER,
            Who::Anonymous => "system:anonymous",
        }
    }
}

/// What the request addresses.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub res: Res,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

enum Route {
    Version,
    Health,
    ApiVersions,
    CoreResources,
    Groups,
    Group(String),
    GroupResources(String),
    Resource(Target),
    SykliRequests,
    SykliFaults,
    NotFound,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let segs: Vec<&str> = if segs == [""] { vec![] } else { segs };
    let resource = |by: &dyn Fn(&str) -> Option<Res>, rest: &[&str]| -> Route {
        let t = |res: Res, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
            Route::Resource(Target {
                res,
                ns: ns.map(str::to_string),
                name: name.map(str::to_string),
                sub: sub.map(str::to_string),
            })
        };
        match rest {
            ["namespaces", ns, plural] => match by(plural) {
                Some(r) if r.namespaced() => t(r, Some(ns), None, None),
                _ if by("namespaces").is_some() && ["status", "finalize"].contains(plural) => {
                    t(Res::Namespace, None, Some(ns), Some(plural))
                }
                _ => Route::NotFound,
            },
            ["namespaces", ns, plural, name] => match by(plural) {
                Some(r) if r.namespaced() => t(r, Some(ns), Some(name), None),
                _ => Route::NotFound,
            },
            ["namespaces", ns, plural, name, sub] => match by(plural) {
                Some(r) if r.namespaced() => t(r, Some(ns), Some(name), Some(sub)),
                _ => Route::NotFound,
            },
            [plural] => match by(plural) {
                Some(r) => t(r, None, None, None),
                None => Route::NotFound,
            },
            [plural, name] => match by(plural) {
                Some(r) if !r.namespaced() => t(r, None, Some(name), None),
                _ => Route::NotFound,
            },
            _ => Route::NotFound,
        }
    };
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz"] | ["livez"] | ["readyz"] => Route::Health,
        ["api"] => Route::ApiVersions,
        ["api", "v1"] => Route::CoreResources,
        ["apis"] => Route::Groups,
        ["apis", group] if GROUPS.iter().any(|(g, _)| g == group) => {
            Route::Group(group.to_string())
        }
        ["apis", group, version] if GROUPS.contains(&(*group, *version)) => {
            Route::GroupResources(format!("{group}/{version}"))
        }
        ["api", "v1", rest @ ..] => resource(&Res::core_by_plural, rest),
        ["apis", group, version, rest @ ..] if GROUPS.contains(&(*group, *version)) => {
            let group = group.to_string();
            resource(&move |p| Res::by_group_plural(&group, p), rest)
        }
        ["_sykli", "requests"] => Route::SykliRequests,
        ["_sykli", "faults"] => Route::SykliFaults,
        _ => Route::NotFound,
    }
}

/// Serves one request, recording it in the request log.
pub async fn serve(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let mut info = Info::default();
    let resp = handle(&state, req, &mut info).await;
    let record = RequestRecord {
        method,
        path,
        status: resp.status().as_u16(),
        user: info.user.clone(),
        duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        watch: info.watch,
        verb: info.verb.clone(),
        injected: info.injected,
    };
    let mut log = state.requests.lock().unwrap_or_else(|e| e.into_inner());
    if log.len() >= REQUEST_LOG_LIMIT {
        log.remove(0);
    }
    log.push(record);
    Ok(resp)
}

#[derive(Default)]
struct Info {
    user: String,
    verb: String,
    watch: bool,
    injected: bool,
}

fn authenticate(state: &ApiState, req: &Request<Incoming>) -> Result<Who, ApiError> {
    let Some(h) = req.headers().get("authorization") else {
        return Ok(Who::Anonymous);
    };
    let h = h.to_str().unwrap_or("");
    let token = h
        .strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .map(str::trim);
    match token {
        Some(t) if t == state.admin_token => Ok(Who::Admin),
        Some(t) if t == state.readonly_token => Ok(Who::ReadOnly),
        _ => Err(ApiError::unauthorized()),
    }
}

fn verb_of(method: &Method, t: &Target, watch: bool) -> &'static str {
    match *method {
        Method::GET if t.name.is_none() => {
            if watch {
                "watch"
            } else {
                "list"
            }
        }
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if t.name.is_none() => "deletecollection",
        Method::DELETE => "delete",
        _ => "",
    }
}

fn query_flag(q: &[(String, String)], key: &str) -> bool {
    q.iter()
        .any(|(k, v)| k == key && (v == "true" || v == "1" || v.is_empty()))
}

pub(crate) fn query_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn handle(state: &Arc<ApiState>, req: Request<Incoming>, info: &mut Info) -> Response<Body> {
    let who = match authenticate(state, &req) {
        Ok(w) => w,
        Err(e) => return error_response(&e),
    };
    info.user = who.name().to_string();
    let route = route(req.uri().path());
    let query = parse_query(req.uri().query());
    // Anonymous requests may read the public endpoints only (system:public-info-viewer).
    if who == Who::Anonymous
        && !matches!(route, Route::Version | Route::Health | Route::Resource(_))
    {
        return error_response(&ApiError::forbidden_message(format!(
            "forbidden: User \"system:anonymous\" cannot {} path {}",
            req.method().as_str().to_lowercase(),
            go_quote(req.uri().path())
        )));
    }
    match route {
        Route::Version => json_response(200, &version()),
        Route::Health => {
            let mut r = Response::new(full("ok"));
            r.headers_mut()
                .insert("content-type", "text/plain".parse().expect("header"));
            r
        }
        Route::ApiVersions => json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": state.address}]}),
        ),
        Route::CoreResources => json_response(200, &resource_list("v1")),
        Route::GroupResources(gv) => json_response(200, &resource_list(&gv)),
        Route::Groups => json_response(
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": GROUPS.iter().map(|(g, v)| api_group(g, v)).collect::<Vec<_>>()}),
        ),
        Route::Group(name) => {
            let v = GROUPS
                .iter()
                .find(|(g, _)| *g == name)
                .map_or("v1", |(_, v)| *v);
            let mut g = api_group(&name, v);
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            json_response(200, &g)
        }
        Route::SykliRequests | Route::SykliFaults => {
            if who != Who::Admin {
                return error_response(&ApiError::forbidden_message(
                    "the test cluster's control endpoints need the admin token",
                ));
            }
            sykli(state, route, req).await
        }
        Route::NotFound => error_response(&ApiError::no_route()),
        Route::Resource(t) => {
            let watch =
                *req.method() == Method::GET && t.name.is_none() && (query_flag(&query, "watch"));
            info.watch = watch;
            let verb = verb_of(req.method(), &t, watch);
            info.verb = verb.to_string();
            if verb.is_empty() {
                return error_response(&ApiError::method_not_allowed());
            }
            if who == Who::Anonymous {
                return error_response(&ApiError::forbidden(
                    "system:anonymous",
                    verb,
                    t.res.qualified(),
                    t.sub.as_deref(),
                    t.name.as_deref(),
                    t.ns.as_deref(),
                ));
            }
            let is_write = !matches!(verb, "get" | "list" | "watch");
            // Connecting to a pod (exec) is a create on the subresource, also when a WebSocket
            // asks with GET (AuthorizePodWebsocketUpgradeCreatePermission, on since 1.35).
            let connect = t.res == Res::Pod && t.sub.as_deref() == Some("exec");
            if (is_write || connect) && who == Who::ReadOnly {
                return error_response(&ApiError::forbidden(
                    READONLY_USER,
                    if connect { "create" } else { verb },
                    t.res.qualified(),
                    t.sub.as_deref(),
                    t.name.as_deref(),
                    t.ns.as_deref(),
                ));
            }
            let (latency, fault) = state.faults().draw(verb);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if let Some(e) = fault {
                info.injected = true;
                return error_response(&e);
            }
            match resource(state, req, &t, verb, &query).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            }
        }
    }
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "37",
        "emulationMajor": "1", "emulationMinor": "37",
        "minCompatibilityMajor": "1", "minCompatibilityMinor": "36",
        "gitVersion": "v1.37.0-sykli-test-cluster",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

fn api_group(name: &str, version: &str) -> Value {
    let gv = format!("{name}/{version}");
    json!({"name": name,
           "versions": [{"groupVersion": gv, "version": version}],
           "preferredVersion": {"groupVersion": gv, "version": version}})
}

fn resource_list(gv: &str) -> Value {
    let mut resources = Vec::new();
    for r in ALL.iter().filter(|r| r.api_version() == gv) {
        resources.push(json!({
            "name": r.plural(), "singularName": r.singular(), "namespaced": r.namespaced(),
            "kind": r.kind(), "verbs": r.verbs(), "shortNames": r.short_names(),
        }));
        match r {
            Res::Pod => {
                resources.push(json!({"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]}));
                resources.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
                resources.push(json!({"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
            }
            Res::Job => resources.push(json!({"name": "jobs/status", "singularName": "", "namespaced": true, "kind": "Job", "verbs": ["get"]})),
            Res::Namespace => resources.push(json!({"name": "namespaces/status", "singularName": "", "namespaced": false, "kind": "Namespace", "verbs": ["get"]})),
            _ => {}
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

async fn sykli(state: &Arc<ApiState>, route: Route, req: Request<Incoming>) -> Response<Body> {
    match (route, req.method().clone()) {
        (Route::SykliRequests, Method::GET) => {
            json_response(200, &json!({"requests": state.request_log()}))
        }
        (Route::SykliFaults, Method::GET) => json_response(
            200,
            &serde_json::to_value(&state.faults().faults).unwrap_or_default(),
        ),
        (Route::SykliFaults, Method::POST | Method::PUT) => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(e) => return error_response(&e),
            };
            let faults: Faults = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => return error_response(&ApiError::bad_request(format!("faults: {e}"))),
            };
            if let Err(e) = faults.check() {
                return error_response(&ApiError::bad_request(e));
            }
            state.set_faults(faults.clone());
            json_response(200, &serde_json::to_value(&faults).unwrap_or_default())
        }
        _ => error_response(&ApiError::method_not_allowed()),
    }
}

async fn resource(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
    t: &Target,
    verb: &str,
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    if let Some(sub) = &t.sub {
        return match (t.res, sub.as_str(), verb) {
            (Res::Pod, "log", "get") => pod_log(state, t, q).await,
            (Res::Pod, "exec", "get" | "create") => crate::exec::pod_exec(state, req, t, q).await,
            (_, "status", "get") => get(state, t),
            _ => Err(ApiError::method_not_allowed()),
        };
    }
    match verb {
        "get" => get(state, t),
        "list" => list(state, t, q),
        "watch" => watch(state, t, q).await,
        "create" if t.name.is_none() && t.res.verbs().contains(&"create") => {
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            if !ct.starts_with("application/json") {
                return Err(ApiError::unsupported_media_type(&ct));
            }
            let body = read_body(req).await?;
            create(state, t, &body, q)
        }
        "delete" if t.res.verbs().contains(&"delete") => {
            let body = read_body(req).await?;
            delete(state, t, &body, q)
        }
        "update" if t.name.is_some() && t.res.verbs().contains(&"update") => {
            let body = read_body(req).await?;
            update(state, t, &body, q)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

pub(crate) fn ns_of(t: &Target) -> &str {
    if t.res.namespaced() {
        t.ns.as_deref().unwrap_or("")
    } else {
        ""
    }
}

fn get(state: &ApiState, t: &Target) -> Result<Response<Body>, ApiError> {
    let name = t.name.as_deref().unwrap_or("");
    match state.store.get(t.res, ns_of(t), name) {
        Some(o) => Ok(json_response(200, &o)),
        None => Err(ApiError::not_found(t.res.qualified(), name)),
    }
}

struct Selection {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selection {
    fn parse(res: Res, q: &[(String, String)]) -> Result<Self, ApiError> {
        Ok(Selection {
            labels: LabelSelector::parse(query_get(q, "labelSelector").unwrap_or(""))?,
            fields: FieldSelector::parse(query_get(q, "fieldSelector").unwrap_or(""), res)?,
        })
    }

    fn matches(&self, res: Res, ns: Option<&str>, obj: &Value) -> bool {
        if let Some(ns) = ns {
            if obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns) {
                return false;
            }
        }
        self.labels.matches(obj.pointer("/metadata/labels")) && self.fields.matches(res, obj)
    }
}

fn list(state: &ApiState, t: &Target, q: &[(String, String)]) -> Result<Response<Body>, ApiError> {
    let sel = Selection::parse(t.res, q)?;
    let limit = match query_get(q, "limit") {
        Some(l) if !l.is_empty() => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?,
        ),
        _ => None,
    }
    .filter(|l| *l > 0);
    let cont = query_get(q, "continue").filter(|c| !c.is_empty());
    let req_rv = query_get(q, "resourceVersion").filter(|v| !v.is_empty());
    let rv_match = query_get(q, "resourceVersionMatch").filter(|v| !v.is_empty());
    let forbidden = |f: &str, m: &str| {
        ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[FieldError::forbidden(f, m)],
        )
    };
    if cont.is_some() && req_rv.is_some_and(|v| v != "0") {
        return Err(forbidden(
            "resourceVersion",
            "specifying resource version is not allowed when using continue",
        ));
    }
    let mut exact: Option<u64> = None;
    match (rv_match, req_rv) {
        (Some(_), None) => {
            return Err(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ))
        }
        (Some("Exact"), Some("0")) => {
            return Err(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ))
        }
        (Some("Exact"), Some(v)) => {
            exact = Some(v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {}", go_quote(v)))
            })?)
        }
        (Some("NotOlderThan") | None, _) => {}
        (Some(other), _) => {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[FieldError::not_supported(
                    "resourceVersionMatch",
                    other,
                    &["Exact", "NotOlderThan", ""],
                )],
            ))
        }
    }
    if let Some(v) = req_rv
        .filter(|v| *v != "0")
        .and_then(|v| v.parse::<u64>().ok())
    {
        let current = state.store.current_rv();
        if v > current {
            return Err(ApiError::too_large_resource_version(v, current));
        }
    }
    let mut start_after: Option<(String, String)> = None;
    if let Some(c) = cont {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: illegal base64 data")
            })?;
        exact = Some(decoded["rv"].as_u64().ok_or_else(|| {
            ApiError::bad_request("continue key is not valid: no resource version")
        })?);
        let start = decoded["start"]
            .as_str()
            .unwrap_or("")
            .trim_end_matches('\0');
        let (ns, name) = start.split_once('/').unwrap_or(("", start));
        start_after = Some((ns.to_string(), name.to_string()));
    }
    // Every page of a paginated list, and an Exact list, shows the store as it was at that
    // resourceVersion (rebuilt from the history; older than the history is 410).
    let (items, rv) = match exact {
        None => state.store.list(t.res, t.ns.as_deref()),
        Some(at) => match state.store.list_at(t.res, t.ns.as_deref(), at) {
            Ok(items) => (items, at),
            Err(_) if cont.is_some() => {
                return Err(ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
            }
            Err(e) => return Err(e),
        },
    };
    let key = |o: &Value| {
        (
            o.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            o.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        )
    };
    let matching: Vec<&Arc<Value>> = items
        .iter()
        .filter(|o| start_after.as_ref().is_none_or(|s| key(o) > *s))
        .filter(|o| sel.matches(t.res, None, o))
        .collect();
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    let shown: Vec<&Arc<Value>> = match limit {
        Some(l) if matching.len() > l => {
            let last = key(matching[l - 1]);
            let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{}/{}\u{0}", last.0, last.1)});
            meta.insert(
                "continue".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(token.to_string())),
            );
            meta.insert("remainingItemCount".into(), json!(matching.len() - l));
            matching[..l].to_vec()
        }
        _ => matching,
    };
    let items: Vec<Value> = shown
        .into_iter()
        .map(|o| {
            let mut o = (**o).clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", t.res.kind()), "apiVersion": t.res.api_version(),
                "metadata": meta, "items": items}),
    ))
}

fn bookmark(res: Res, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": res.kind(), "apiVersion": res.api_version(), "metadata": meta}})
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn stream_response(rx: mpsc::Receiver<Bytes>, content_type: &str) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut()
        .insert("content-type", content_type.parse().expect("header"));
    r.headers_mut().insert(
        "cache-control",
        "no-cache, private".parse().expect("header"),
    );
    r
}

async fn watch(
    state: &Arc<ApiState>,
    t: &Target,
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let sel = Selection::parse(t.res, q)?;
    let bookmarks = query_flag(q, "allowWatchBookmarks");
    let rv = query_get(q, "resourceVersion").unwrap_or("");
    let send_initial = query_get(q, "sendInitialEvents").map(|v| v == "true" || v == "1");
    if send_initial.is_some() {
        let mut errs = Vec::new();
        if query_get(q, "resourceVersionMatch") != Some("NotOlderThan") {
            errs.push(FieldError::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if send_initial == Some(true) && !bookmarks {
            errs.push(FieldError::forbidden(
                "allowWatchBookmarks",
                "sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", &errs));
        }
    } else if query_get(q, "resourceVersionMatch").is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            &[FieldError::forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            )],
        ));
    }
    let from = match (send_initial, rv) {
        (Some(true), _) | (None, "" | "0") => WatchFrom::Current,
        (_, "") => WatchFrom::After(state.store.current_rv()),
        (_, rv) => WatchFrom::After(rv.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid resource version: {}", go_quote(rv)))
        })?),
    };
    let timeout = match query_get(q, "timeoutSeconds").filter(|s| !s.is_empty()) {
        Some(s) => Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {s:?}")))?,
        ),
        None => state.config.default_watch_timeout,
    };
    // A version the store has not reached yet: wait a little, as the watch cache does.
    if let WatchFrom::After(n) = from {
        let mut changed = state.store.subscribe();
        let wait = async {
            while state.store.current_rv() < n {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), wait).await;
        let current = state.store.current_rv();
        if current < n {
            return Err(ApiError::too_large_resource_version(n, current));
        }
    }
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    // A watch that is to fail starts and ends with the watch cache's ERROR event.
    let gone = state.faults().take_watch_gone();
    let start = if gone {
        Err(ApiError::expired(format!(
            "too old resource version: {} ({})",
            rv,
            state.store.current_rv()
        )))
    } else {
        state.store.watch(t.res, from)
    };
    let w = match start {
        Ok(w) => w,
        Err(e) => {
            let _ = tx.try_send(line(&json!({"type": "ERROR", "object": e.to_status()})));
            return Ok(stream_response(rx, "application/json"));
        }
    };
    let state = Arc::clone(state);
    let t = t.clone();
    tokio::spawn(async move {
        run_watch(
            state,
            t,
            sel,
            w,
            tx,
            bookmarks,
            send_initial == Some(true),
            timeout,
        )
        .await;
    });
    Ok(stream_response(rx, "application/json"))
}

#[allow(clippy::too_many_arguments)]
async fn run_watch(
    state: Arc<ApiState>,
    t: Target,
    sel: Selection,
    w: crate::store::WatchStart,
    tx: mpsc::Sender<Bytes>,
    bookmarks: bool,
    initial_end: bool,
    timeout: Duration,
) {
    let res = t.res;
    let ns = t.ns.clone();
    let id = w.id;
    let mut rx = w.rx;
    let mut sent: u64 = 0;
    let mut ok = true;
    // Sends one event; false when the client is gone or the stream is to be dropped.
    macro_rules! send {
        ($v:expr) => {{
            if tx.send(line(&$v)).await.is_err() {
                false
            } else {
                sent += 1;
                !state.faults().drop_watch(sent)
            }
        }};
    }
    for ev in &w.initial {
        if sel.matches(res, ns.as_deref(), &ev.object)
            && !send!(json!({"type": ev.kind.as_str(), "object": *ev.object}))
        {
            ok = false;
            break;
        }
    }
    if ok && initial_end {
        ok = tx.send(line(&bookmark(res, w.rv, true))).await.is_ok();
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ticker = tokio::time::interval(state.config.bookmark_interval);
    ticker.tick().await;
    let mut closing = false;
    if !ok {
        state.store.unwatch(res, id);
        return;
    }
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    WatchMsg::Event(ev) => {
                        let now = sel.matches(res, ns.as_deref(), &ev.object);
                        let before = ev.prev.as_ref().is_some_and(|p| sel.matches(res, ns.as_deref(), p));
                        let kind = match (ev.kind, now, before) {
                            (EventType::Added, true, _) => Some("ADDED"),
                            (EventType::Deleted, _, true) => Some("DELETED"),
                            (EventType::Modified, true, true) => Some("MODIFIED"),
                            (EventType::Modified, true, false) => Some("ADDED"),
                            (EventType::Modified, false, true) => Some("DELETED"),
                            _ => None,
                        };
                        if let Some(kind) = kind {
                            if !send!(json!({"type": kind, "object": *ev.object})) {
                                break;
                            }
                        }
                    }
                    WatchMsg::Bookmark(rv) => {
                        if bookmarks && tx.send(line(&bookmark(res, rv, false))).await.is_err() {
                            break;
                        }
                        if closing {
                            break;
                        }
                    }
                }
            }
            _ = ticker.tick(), if bookmarks && !closing => {
                state.store.request_bookmark(res, id);
            }
            _ = tokio::time::sleep_until(deadline), if !closing => {
                if bookmarks {
                    // A last bookmark, after everything already sent, then the end.
                    closing = true;
                    state.store.request_bookmark(res, id);
                } else {
                    break;
                }
            }
            _ = tx.closed() => break,
        }
    }
    state.store.unwatch(res, id);
}

fn create(
    state: &ApiState,
    t: &Target,
    body: &[u8],
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let res = t.res;
    let fv = match query_get(q, "fieldValidation").filter(|s| !s.is_empty()) {
        Some(s) => FieldValidation::parse(s)?,
        None => state.config.default_field_validation,
    };
    if query_get(q, "dryRun").is_some_and(|d| !d.is_empty()) {
        // Accepted and validated, not stored.
    }
    let decoded = validation::decode_bytes(res, body, fv)?;
    let ns = ns_of(t).to_string();
    let obj = prepare(&state.store, res, &ns, decoded.body)?;
    let dry_run = query_get(q, "dryRun").is_some_and(|d| d == "All");
    let created = if dry_run {
        obj
    } else if res == Res::PersistentVolumeClaim {
        // Provisioned at once (Immediate binding): the claim and its directory appear together.
        let _guard = state.volumes.lock();
        let created = create_prepared(&state.store, res, obj)?;
        if let Err(e) = state.volumes.provision(&ns, meta_name(&created)) {
            state.store.delete(res, &ns, meta_name(&created));
            return Err(ApiError::internal(format!(
                "provisioning the volume of claim {ns}/{}: {e}",
                meta_name(&created)
            )));
        }
        created
    } else {
        create_prepared(&state.store, res, obj)?
    };
    if res == Res::Namespace && !dry_run {
        ensure_default_service_account(&state.store, meta_name(&created));
    }
    let mut r = json_response(201, &created);
    warn(&mut r, &decoded.warnings);
    Ok(r)
}

/// Fills in the server-set fields, defaults and validates: what a create stores.
pub fn prepare(store: &Store, res: Res, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
    let m = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object is not a JSON object"))?;
    m.insert("apiVersion".into(), json!(res.api_version()));
    m.insert("kind".into(), json!(res.kind()));
    let meta = m.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    if res.namespaced() {
        match meta.get("namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {}
        }
        meta.insert("namespace".into(), json!(ns));
        match store.get(Res::Namespace, "", ns) {
            None => return Err(ApiError::not_found(Res::Namespace.qualified(), ns)),
            Some(n)
                if n.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") =>
            {
                let mut e = ApiError::forbidden_message(format!(
                    "{} {} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    res.qualified().resource(),
                    go_quote(meta.get("name").and_then(Value::as_str).unwrap_or(""))
                ));
                e.reason = "Forbidden";
                return Err(e);
            }
            Some(_) => {}
        }
    } else {
        meta.remove("namespace");
    }
    if meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|r| !r.is_empty())
    {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "resourceVersion",
        "generation",
        "selfLink",
    ] {
        meta.remove(k);
    }
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // Admission sees the object before its name is generated (and says generateName).
    let admission_name = if name.is_empty() {
        meta.get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    } else {
        name.clone()
    };
    if name.is_empty() {
        if let Some(base) = meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
        {
            let generated = store.with_rng(|r| crate::util::generate_name(base, r));
            meta.insert("name".into(), json!(generated));
        }
    }
    let uid = store.new_uid();
    meta.insert("uid".into(), json!(uid));
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match res {
        Res::Job => {
            meta.insert("generation".into(), json!(1));
            m.insert("status".into(), json!({}));
            validation::default_job(&mut obj, &uid, &name);
        }
        Res::Pod => {
            if let Some(spec) = m.get_mut("spec") {
                validation::default_pod_spec(spec, true);
                admit_pod(store, ns, &admission_name, spec)?;
            }
            let qos = qos_class(m.get("spec").unwrap_or(&Value::Null));
            m.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
        Res::Namespace => {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            m.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
            m.insert("status".into(), json!({"phase": "Active"}));
        }
        Res::Secret => {
            if !m.contains_key("type") || m["type"].is_null() {
                m.insert("type".into(), json!("Opaque"));
            }
            if let Some(Value::Object(sd)) = m.remove("stringData") {
                let data = m.entry("data").or_insert_with(|| json!({}));
                if data.is_null() {
                    *data = json!({});
                }
                if let Some(d) = data.as_object_mut() {
                    for (k, v) in sd {
                        let v = v.as_str().unwrap_or("");
                        d.insert(
                            k,
                            json!(base64::engine::general_purpose::STANDARD.encode(v)),
                        );
                    }
                }
            }
        }
        Res::PersistentVolumeClaim => {
            // StorageObjectInUseProtection admission, then the provisioner and the PV
            // controller's binding, all at once.
            let fs = meta.entry("finalizers").or_insert_with(|| json!([]));
            if !fs.is_array() {
                *fs = json!([]);
            }
            if let Some(a) = fs.as_array_mut() {
                if !a.iter().any(|f| f == PVC_PROTECTION) {
                    a.push(json!(PVC_PROTECTION));
                }
            }
            let ann = meta.entry("annotations").or_insert_with(|| json!({}));
            if !ann.is_object() {
                *ann = json!({});
            }
            if let Some(a) = ann.as_object_mut() {
                a.insert("pv.kubernetes.io/bind-completed".into(), json!("yes"));
                a.insert("pv.kubernetes.io/bound-by-controller".into(), json!("yes"));
                a.insert(
                    "volume.beta.kubernetes.io/storage-provisioner".into(),
                    json!(PROVISIONER),
                );
                a.insert(
                    "volume.kubernetes.io/storage-provisioner".into(),
                    json!(PROVISIONER),
                );
            }
            let spec = m.entry("spec").or_insert_with(|| json!({}));
            if let Some(s) = spec.as_object_mut() {
                s.entry("volumeMode").or_insert_with(|| json!("Filesystem"));
                s.entry("volumeName")
                    .or_insert_with(|| json!(format!("pvc-{uid}")));
                s.entry("storageClassName")
                    .or_insert_with(|| json!("standard"));
            }
            let access = spec.get("accessModes").cloned().unwrap_or(json!([]));
            let storage = spec
                .pointer("/resources/requests/storage")
                .cloned()
                .unwrap_or(Value::Null);
            m.insert(
                "status".into(),
                json!({"phase": "Bound", "accessModes": access, "capacity": {"storage": storage}}),
            );
        }
        Res::PriorityClass => {
            m.entry("preemptionPolicy")
                .or_insert_with(|| json!("PreemptLowerPriority"));
            m.entry("value").or_insert_with(|| json!(0));
        }
        Res::ConfigMap | Res::Event | Res::ServiceAccount => {}
    }
    validation::validate_create(res, &obj)?;
    Ok(obj)
}

/// The admission plugins every cluster runs that can refuse a pod: ServiceAccount (the
/// account must exist) and Priority (the class must exist; it sets priority and
/// preemptionPolicy).
fn admit_pod(store: &Store, ns: &str, name: &str, spec: &mut Value) -> Result<(), ApiError> {
    let forbidden = |why: String| {
        let mut e =
            ApiError::forbidden_message(format!("pods {} is forbidden: {why}", go_quote(name)));
        e.details = Some(json!({"name": name, "kind": "pods"}));
        e
    };
    let sa = spec["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    if store.get(Res::ServiceAccount, ns, &sa).is_none() {
        return Err(forbidden(format!(
            "error looking up service account {ns}/{sa}: serviceaccount {} not found",
            go_quote(&sa)
        )));
    }
    if let Some(pc) = spec["priorityClassName"].as_str().filter(|p| !p.is_empty()) {
        let Some(class) = store.get(Res::PriorityClass, "", pc) else {
            return Err(forbidden(format!(
                "no PriorityClass with name {pc} was found"
            )));
        };
        spec["priority"] = class["value"].clone();
        spec["preemptionPolicy"] = class
            .get("preemptionPolicy")
            .cloned()
            .unwrap_or_else(|| json!("PreemptLowerPriority"));
    }
    Ok(())
}

/// The `default` ServiceAccount the service account controller puts in every namespace.
pub fn ensure_default_service_account(store: &Store, ns: &str) {
    if store.get(Res::ServiceAccount, ns, "default").is_some() {
        return;
    }
    if let Ok(sa) = prepare(
        store,
        Res::ServiceAccount,
        ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    ) {
        let _ = store.create(Res::ServiceAccount, sa);
    }
}

/// Stores a prepared object; a generated name that collides is generated again.
pub fn create_prepared(store: &Store, res: Res, mut obj: Value) -> Result<Value, ApiError> {
    for _ in 0..8 {
        match store.create(res, obj.clone()) {
            Err(e) if e.reason == "AlreadyExists" => {
                let Some(base) = obj
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                else {
                    return Err(e);
                };
                let name = store.with_rng(|r| crate::util::generate_name(&base, r));
                obj["metadata"]["name"] = json!(name);
            }
            other => return other,
        }
    }
    Err(ApiError::internal("could not generate a unique name"))
}

fn meta_name(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let limits = c.pointer("/resources/limits");
        let requests = c.pointer("/resources/requests");
        for r in ["cpu", "memory"] {
            let l = limits.and_then(|l| l.get(r)).and_then(Value::as_str);
            let q = requests
                .and_then(|l| l.get(r))
                .and_then(Value::as_str)
                .or(l);
            if l.is_some() || q.is_some() {
                any = true;
            }
            let same = match (l, q) {
                (Some(l), Some(q)) => {
                    validation::parse_quantity(l) == validation::parse_quantity(q)
                }
                _ => false,
            };
            if !same {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// PUT of a ConfigMap or Secret: a full replacement, conditional on metadata.resourceVersion
/// when the body has one (409 Conflict when it is stale).
fn update(
    state: &ApiState,
    t: &Target,
    body: &[u8],
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let res = t.res;
    let ns = ns_of(t).to_string();
    let name = t.name.clone().unwrap_or_default();
    let fv = match query_get(q, "fieldValidation").filter(|s| !s.is_empty()) {
        Some(s) => FieldValidation::parse(s)?,
        None => state.config.default_field_validation,
    };
    let decoded = validation::decode_bytes(res, body, fv)?;
    let mut obj = decoded.body;
    let body_name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != ns => return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {}
    }
    let expected_rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let Some(cur) = state.store.get(res, &ns, &name) else {
        return Err(ApiError::not_found(res.qualified(), &name));
    };
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind());
    for k in [
        "uid",
        "creationTimestamp",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match cur["metadata"].get(k) {
            Some(v) => obj["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    if res == Res::Secret {
        if obj.get("type").is_none_or(Value::is_null) {
            obj["type"] = cur["type"].clone();
        }
        if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
            if !obj["data"].is_object() {
                obj["data"] = json!({});
            }
            for (k, v) in sd {
                obj["data"][k] = json!(
                    base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or(""))
                );
            }
        }
    }
    validation::validate_create(res, &obj)?;
    let mut errs = Vec::new();
    if res == Res::Secret && obj["type"] != cur["type"] {
        errs.push(FieldError::invalid(
            "type",
            obj["type"].as_str().unwrap_or(""),
            "field is immutable",
        ));
    }
    if cur["immutable"] == true {
        for f in ["data", "binaryData"] {
            if obj.get(f) != cur.get(f) {
                errs.push(FieldError::forbidden(
                    f,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        if obj["immutable"] != true {
            errs.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(res.group(), res.kind(), &name, &errs));
    }
    let updated = state
        .store
        .update(res, &ns, &name, expected_rv.as_deref(), |o| {
            let rv = o["metadata"]["resourceVersion"].clone();
            *o = obj;
            o["metadata"]["resourceVersion"] = rv;
            Ok(true)
        })?;
    let mut r = json_response(200, &updated);
    warn(&mut r, &decoded.warnings);
    Ok(r)
}

fn delete(
    state: &ApiState,
    t: &Target,
    body: &[u8],
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let res = t.res;
    let ns = ns_of(t).to_string();
    let name = t.name.clone().unwrap_or_default();
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let mut policy = opts
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(p) = query_get(q, "propagationPolicy").filter(|p| !p.is_empty()) {
        policy = Some(p.to_string());
    }
    if policy.is_none() {
        if let Some(o) = opts.get("orphanDependents").and_then(Value::as_bool) {
            policy = Some(if o { "Orphan" } else { "Background" }.to_string());
        }
    }
    if let Some(p) = &policy {
        if !["Foreground", "Background", "Orphan"].contains(&p.as_str()) {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "DeleteOptions",
                "",
                &[FieldError::not_supported(
                    "propagationPolicy",
                    p,
                    &["Foreground", "Background", "Orphan", "nil"],
                )],
            ));
        }
    }
    let grace = query_get(q, "gracePeriodSeconds")
        .and_then(|g| g.parse::<i64>().ok())
        .or_else(|| opts.get("gracePeriodSeconds").and_then(Value::as_i64));
    let Some(cur) = state.store.get(res, &ns, &name) else {
        return Err(ApiError::not_found(res.qualified(), &name));
    };
    if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
        let actual = cur
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if uid != actual {
            return Err(ApiError::conflict(
                res.qualified(),
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(rv) = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        let actual = cur
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if rv != actual {
            return Err(ApiError::conflict(
                res.qualified(),
                &name,
                &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"),
            ));
        }
    }
    let mut warnings = Vec::new();
    let success = |obj: &Value| {
        let mut d = json!({"name": name, "kind": res.plural(),
                           "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null)});
        if !res.group().is_empty() {
            d["group"] = json!(res.group());
        }
        json_response(
            200,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d}),
        )
    };
    let already_deleting = cur.pointer("/metadata/deletionTimestamp").is_some();
    // Objects still held by finalizers are only marked.
    let mark = |finalizer: Option<&str>, grace: i64| -> Result<Value, ApiError> {
        state.store.update(res, &ns, &name, None, |o| {
            let meta = o["metadata"].as_object_mut().expect("metadata");
            if !meta.contains_key("deletionTimestamp") {
                meta.insert("deletionTimestamp".into(), json!(deletion_time(grace)));
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            if let Some(f) = finalizer {
                let fs = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(a) = fs.as_array_mut() {
                    if !a.iter().any(|x| x == f) {
                        a.push(json!(f));
                    }
                }
            }
            Ok(true)
        })
    };
    let has_finalizers = cur
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let resp = match res {
        Res::Namespace => {
            if ["default", "kube-system", "kube-public"].contains(&name.as_str()) {
                return Err(ApiError::forbidden_message(format!(
                    "namespaces {} is forbidden: this namespace may not be deleted",
                    go_quote(&name)
                )));
            }
            let o = state.store.update(res, "", &name, None, |o| {
                if o.pointer("/metadata/deletionTimestamp").is_none() {
                    o["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                }
                o["status"]["phase"] = json!("Terminating");
                Ok(true)
            })?;
            json_response(200, &o)
        }
        Res::Pod => {
            let terminal = matches!(
                cur.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            let scheduled = cur
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let grace = grace
                .or_else(|| {
                    cur.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
                .max(0);
            if (grace == 0 || !scheduled || terminal) && !has_finalizers {
                let gone = state
                    .store
                    .delete(res, &ns, &name)
                    .ok_or_else(|| ApiError::not_found(res.qualified(), &name))?;
                json_response(200, &gone)
            } else {
                // The kubelet stops the containers, then removes the pod.
                json_response(200, &mark(None, grace)?)
            }
        }
        Res::Job => {
            let policy = match policy.as_deref() {
                Some(p) => p.to_string(),
                None => {
                    warnings.push("child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress this warning".to_string());
                    "Orphan".to_string()
                }
            };
            match policy.as_str() {
                "Foreground" => json_response(200, &mark(Some("foregroundDeletion"), 0)?),
                "Orphan" => json_response(200, &mark(Some("orphan"), 0)?),
                _ if has_finalizers || already_deleting => json_response(200, &mark(None, 0)?),
                _ => {
                    let gone = state
                        .store
                        .delete(res, &ns, &name)
                        .ok_or_else(|| ApiError::not_found(res.qualified(), &name))?;
                    success(&gone)
                }
            }
        }
        _ => {
            if has_finalizers || policy.as_deref() == Some("Foreground") {
                let f = (policy.as_deref() == Some("Foreground")).then_some("foregroundDeletion");
                json_response(200, &mark(f, 0)?)
            } else if res == Res::PersistentVolumeClaim {
                let _guard = state.volumes.lock();
                // The volume first: a watcher that sees the claim gone finds no directory.
                if state.store.get(res, &ns, &name).is_some() {
                    state.volumes.remove(&ns, &name);
                }
                let gone = state
                    .store
                    .delete(res, &ns, &name)
                    .ok_or_else(|| ApiError::not_found(res.qualified(), &name))?;
                success(&gone)
            } else {
                let gone = state
                    .store
                    .delete(res, &ns, &name)
                    .ok_or_else(|| ApiError::not_found(res.qualified(), &name))?;
                success(&gone)
            }
        }
    };
    let mut resp = resp;
    warn(&mut resp, &warnings);
    Ok(resp)
}

/// Cuts `s` to at most `n` bytes without splitting a character.
fn truncate_at_char(s: &mut String, n: usize) {
    if s.len() > n {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

fn deletion_time(grace: i64) -> String {
    let t = unix_now() + grace;
    jiff::Timestamp::from_second(t)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| now_rfc3339())
}

/// The container a `pods/log` or `pods/exec` request names, or the pod's only one, with the
/// API server's messages when it names none of them or leaves the choice open.
pub(crate) fn pick_container(
    pod: &Value,
    name: &str,
    q: &[(String, String)],
) -> Result<String, ApiError> {
    let names = |k: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{k}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mains = names("containers");
    let inits = names("initContainers");
    match query_get(q, "container").filter(|c| !c.is_empty()) {
        Some(c) => {
            if !mains.iter().chain(inits.iter()).any(|n| n == c) {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            Ok(c.to_string())
        }
        None if mains.len() == 1 => Ok(mains[0].clone()),
        None => {
            let mut m = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                mains.join(" ")
            );
            if !inits.is_empty() {
                m.push_str(&format!(
                    " or one of the init containers: [{}]",
                    inits.join(" ")
                ));
            }
            Err(ApiError::bad_request(m))
        }
    }
}

async fn pod_log(
    state: &Arc<ApiState>,
    t: &Target,
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let ns = ns_of(t);
    let name = t.name.as_deref().unwrap_or("");
    let pod = state
        .store
        .get(Res::Pod, ns, name)
        .ok_or_else(|| ApiError::not_found(Res::Pod.qualified(), name))?;
    let container = pick_container(&pod, name, q)?;
    if query_flag(q, "previous") {
        // Containers are never restarted here: there is no previous instance.
        return Err(ApiError::bad_request(format!(
            "previous terminated container {} in pod {} not found",
            go_quote(&container),
            go_quote(name)
        )));
    }
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let status = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|k| {
            pod.pointer(&format!("/status/{k}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .find(|s| s["name"].as_str() == Some(container.as_str()))
        .cloned();
    let waiting_reason = match &status {
        None => Some("ContainerCreating".to_string()),
        Some(s) => s.pointer("/state/waiting").map(|w| {
            w["reason"]
                .as_str()
                .unwrap_or("ContainerCreating")
                .to_string()
        }),
    };
    if let Some(reason) = waiting_reason {
        return Err(ApiError::bad_request(format!(
            "container {} in pod {} is waiting to start: {reason}",
            go_quote(&container),
            go_quote(name)
        )));
    }
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let timestamps = query_flag(q, "timestamps");
    let follow = query_flag(q, "follow");
    let tail: Option<usize> = query_get(q, "tailLines")
        .and_then(|v| v.parse::<i64>().ok())
        .map(|v| v.max(0) as usize);
    let limit_bytes: Option<usize> = query_get(q, "limitBytes").and_then(|v| v.parse().ok());
    let since: Option<jiff::Timestamp> = match (
        query_get(q, "sinceSeconds").filter(|v| !v.is_empty()),
        query_get(q, "sinceTime").filter(|v| !v.is_empty()),
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "",
                "PodLogOptions",
                "",
                &[FieldError::forbidden(
                    "sinceSeconds",
                    "at most one of `sinceTime` or `sinceSeconds` may be specified",
                )],
            ))
        }
        (Some(secs), None) => {
            let secs: i64 = secs.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                ApiError::invalid(
                    "",
                    "PodLogOptions",
                    "",
                    &[FieldError::invalid(
                        "sinceSeconds",
                        secs,
                        "must be greater than 0",
                    )],
                )
            })?;
            jiff::Timestamp::from_second(unix_now() - secs).ok()
        }
        (None, Some(t)) => Some(t.parse::<jiff::Timestamp>().map_err(|e| {
            ApiError::bad_request(format!("invalid sinceTime {}: {e}", go_quote(t)))
        })?),
        (None, None) => None,
    };
    let log = state.logs.get(&uid, &container);
    let (lines, _) = log.read_from(0);
    let mut skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
    if let Some(since) = since {
        let first = lines
            .iter()
            .position(|(ts, _)| ts.parse::<jiff::Timestamp>().is_ok_and(|t| t >= since))
            .unwrap_or(lines.len());
        skip = skip.max(first);
    }
    let render = move |(ts, l): &(String, String)| -> String {
        if timestamps {
            format!("{ts} {l}\n")
        } else {
            format!("{l}\n")
        }
    };
    if !follow {
        let mut text: String = lines[skip..].iter().map(&render).collect();
        if let Some(n) = limit_bytes {
            truncate_at_char(&mut text, n);
        }
        let mut r = Response::new(full(text));
        r.headers_mut()
            .insert("content-type", "text/plain".parse().expect("header"));
        return Ok(r);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut next = skip;
        let mut budget = limit_bytes.unwrap_or(usize::MAX);
        loop {
            let (new, done) = log.read_from(next);
            next += new.len();
            for l in &new {
                let mut s = render(l);
                truncate_at_char(&mut s, budget);
                budget -= s.len();
                if tx.send(Bytes::from(s)).await.is_err() || budget == 0 {
                    return;
                }
            }
            if done && new.is_empty() {
                return;
            }
            tokio::select! {
                _ = log.wait_beyond(next) => {}
                _ = tx.closed() => return,
            }
        }
    });
    Ok(stream_response(rx, "text/plain"))
}
