//! The API's answers, checked against what kube-apiserver answers: Status objects for errors,
//! strict decoding (400), validation causes (422), conflicts, auth, watch history and 410,
//! selectors, bookmarks, pagination and discovery.

mod common;

use common::*;
use futures::TryStreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};

const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";

/// The next watch event that is not a bookmark.
async fn next_event<K: Clone + serde::de::DeserializeOwned + std::fmt::Debug>(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> WatchEvent<K> {
    let fut = async {
        loop {
            match s.try_next().await.unwrap().unwrap() {
                WatchEvent::Bookmark(_) => continue,
                other => return other,
            }
        }
    };
    tokio::time::timeout(WAIT, fut).await.unwrap()
}

fn causes(status: &Value) -> Vec<(String, String, String)> {
    status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["reason"].as_str().unwrap().to_string(),
                c["field"].as_str().unwrap().to_string(),
                c["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn unknown_fields_are_a_strict_decoding_error() {
    let env = env().await;
    let mut j = job("strict", "true");
    j["spec"]["template"]["spec"]["containers"][0]["foo"] = json!(1);
    j["spec"]["bar"] = json!(true);
    let (code, st) = raw_json(&env.client, "POST", JOBS, Some(j.clone())).await;
    assert_eq!(code, 400);
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["apiVersion"], "v1");
    assert_eq!(st["status"], "Failure");
    assert_eq!(st["reason"], "BadRequest");
    assert_eq!(st["code"], 400);
    assert_eq!(
        st["message"],
        "Job in version \"v1\" cannot be handled as a Job: strict decoding error: unknown field \"spec.bar\", unknown field \"spec.template.spec.containers[0].foo\""
    );
    // fieldValidation=Warn stores the object without the fields and says so in a header.
    let (code, headers, body) = raw(
        &env.client,
        "POST",
        &format!("{JOBS}?fieldValidation=Warn"),
        Some(j),
    )
    .await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let warnings: Vec<&str> = headers
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        warnings,
        [
            "299 - \"unknown field \\\"spec.bar\\\"\"",
            "299 - \"unknown field \\\"spec.template.spec.containers[0].foo\\\"\""
        ]
    );
    let stored: Value = serde_json::from_slice(&body).unwrap();
    assert!(stored["spec"].get("bar").is_none());
    // A type error is a 400 too.
    let mut bad = job("typed", "true");
    bad["spec"]["backoffLimit"] = json!("six");
    let (code, st) = raw_json(&env.client, "POST", JOBS, Some(bad)).await;
    assert_eq!(code, 400);
    assert!(st["message"]
        .as_str()
        .unwrap()
        .starts_with("Job in version \"v1\" cannot be handled as a Job: spec.backoffLimit: "));
}

#[tokio::test]
async fn invalid_objects_are_422_with_every_cause() {
    let env = env().await;
    let j = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "bad"},
        "spec": {"backoffLimit": -1, "template": {"spec": {
            "restartPolicy": "Always",
            "containers": [
                {"name": "Bad_Name", "image": "busybox", "volumeMounts": [{"name": "nope", "mountPath": "/data"}]},
                {"name": "dup", "image": ""},
                {"name": "dup", "image": "busybox", "env": [{"name": "A=B", "value": "x"}],
                 "resources": {"requests": {"cpu": "2000m"}, "limits": {"cpu": "1"}}}
            ]
        }}}
    });
    let (code, st) = raw_json(&env.client, "POST", JOBS, Some(j)).await;
    assert_eq!(code, 422, "{st}");
    assert_eq!(st["reason"], "Invalid");
    assert_eq!(st["details"]["name"], "bad");
    assert_eq!(st["details"]["group"], "batch");
    assert_eq!(st["details"]["kind"], "Job");
    let label_msg = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
    let c = |r: &str, f: &str, m: &str| (r.to_string(), f.to_string(), m.to_string());
    assert_eq!(
        causes(&st),
        vec![
            c("FieldValueInvalid", "spec.backoffLimit", "Invalid value: -1: must be greater than or equal to 0"),
            c("FieldValueInvalid", "spec.template.spec.containers[0].name", &format!("Invalid value: \"Bad_Name\": {label_msg}")),
            c("FieldValueNotFound", "spec.template.spec.containers[0].volumeMounts[0].name", "Not found: \"nope\""),
            c("FieldValueRequired", "spec.template.spec.containers[1].image", "Required value"),
            c("FieldValueInvalid", "spec.template.spec.containers[2].env[0].name", "Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='"),
            c("FieldValueInvalid", "spec.template.spec.containers[2].resources.requests", "Invalid value: \"2\": must be less than or equal to cpu limit of 1"),
            c("FieldValueDuplicate", "spec.template.spec.containers[2].name", "Duplicate value: \"dup\""),
            c("FieldValueRequired", "spec.template.spec.restartPolicy", "Required value: valid values: \"OnFailure\", \"Never\""),
        ]
    );
    let msg = st["message"].as_str().unwrap();
    assert!(msg.starts_with("Job.batch \"bad\" is invalid: [spec.backoffLimit: Invalid value: -1: must be greater than or equal to 0, "), "{msg}");

    // More rules: names, volumes, mounts, subPath, init containers, tolerations, dnsPolicy.
    let j = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "Bad.Name", "labels": {"ok": "not ok!"}},
        "spec": {"activeDeadlineSeconds": -5, "ttlSecondsAfterFinished": -1, "template": {"spec": {
            "restartPolicy": "Sometimes",
            "dnsPolicy": "Google",
            "volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "busybox", "restartPolicy": "Never"}],
            "containers": [{"name": "main", "image": "busybox",
                "volumeMounts": [{"name": "v", "mountPath": "/a", "subPath": "../x"}, {"name": "v", "mountPath": "/a"}]}],
            "tolerations": [{"key": "k", "operator": "Maybe", "effect": "NoSchedule"}]
        }}}
    });
    let (code, st) = raw_json(&env.client, "POST", JOBS, Some(j)).await;
    assert_eq!(code, 422, "{st}");
    let got = causes(&st);
    let fields: Vec<&str> = got.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "metadata.labels",
            "spec.activeDeadlineSeconds",
            "spec.ttlSecondsAfterFinished",
            "spec.template.spec.volumes[1].name",
            "spec.template.spec.containers[0].volumeMounts.subPath",
            "spec.template.spec.containers[0].volumeMounts[1].mountPath",
            "spec.template.spec.initContainers[0].restartPolicy",
            "spec.template.spec.restartPolicy",
            "spec.template.spec.dnsPolicy",
            "spec.template.spec.tolerations[0].operator",
            "spec.template.spec.restartPolicy",
        ],
        "{got:#?}"
    );
    assert_eq!(got[0].2, "Invalid value: \"Bad.Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')");
    assert_eq!(got[4].0, "FieldValueDuplicate");
    assert_eq!(got[5].2, "Invalid value: \"../x\": must not contain '..'");
    assert_eq!(got[6].2, "Invalid value: \"/a\": must be unique");
    assert_eq!(
        got[7].2,
        "Unsupported value: \"Never\": supported values: \"Always\""
    );
    assert_eq!(got[8].0, "FieldValueNotSupported");
    assert_eq!(got[9].2, "Unsupported value: \"Google\": supported values: \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\"");
    assert_eq!(
        got[11].2,
        "Unsupported value: \"Sometimes\": supported values: \"OnFailure\", \"Never\""
    );

    // generateName is checked as a prefix, and the generated name as a name.
    let mut g = job("x", "true");
    g["metadata"] = json!({"generateName": "Bad-"});
    let (code, st) = raw_json(&env.client, "POST", JOBS, Some(g)).await;
    assert_eq!(code, 422);
    let got = causes(&st);
    assert_eq!(got[0].1, "metadata.generateName");
    assert!(got[0]
        .2
        .starts_with("Invalid value: \"Bad-\": a lowercase RFC 1123 subdomain"));
    assert_eq!(got[1].1, "metadata.name");
    let mut g = job("x", "true");
    g["metadata"] = json!({"generateName": "good-"});
    let (code, made) = raw_json(&env.client, "POST", JOBS, Some(g)).await;
    assert_eq!(code, 201);
    assert!(made["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("good-"));

    // A Job name is a label value on its pods: 64 characters are too many.
    let long = "a".repeat(64);
    let (code, st) = raw_json(&env.client, "POST", JOBS, Some(job(&long, "true"))).await;
    assert_eq!(code, 422);
    assert_eq!(
        st["message"],
        format!("Job.batch \"{long}\" is invalid: spec.template.labels: Invalid value: \"{long}\": must be no more than 63 characters")
    );
    // 63 are fine.
    let (code, _) = raw_json(
        &env.client,
        "POST",
        JOBS,
        Some(job(&"a".repeat(63), "true")),
    )
    .await;
    assert_eq!(code, 201);
}

#[tokio::test]
async fn conflicts_missing_objects_and_auth_are_statuses() {
    let env = env().await;
    let (code, _) = raw_json(&env.client, "POST", JOBS, Some(job("twice", "true"))).await;
    assert_eq!(code, 201);
    let (code, st) = raw_json(&env.client, "POST", JOBS, Some(job("twice", "true"))).await;
    assert_eq!(code, 409);
    assert_eq!(
        st,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "jobs.batch \"twice\" already exists", "reason": "AlreadyExists",
               "details": {"name": "twice", "group": "batch", "kind": "jobs"}, "code": 409})
    );
    let (code, st) = raw_json(&env.client, "GET", &format!("{JOBS}/nope"), None).await;
    assert_eq!(code, 404);
    assert_eq!(
        st,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "jobs.batch \"nope\" not found", "reason": "NotFound",
               "details": {"name": "nope", "group": "batch", "kind": "jobs"}, "code": 404})
    );
    // kube-rs sees the same.
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default");
    match pods.get("nope").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.message, "pods \"nope\" not found");
        }
        other => panic!("{other:?}"),
    }
    // A namespace that does not exist.
    let (code, st) = raw_json(
        &env.client,
        "POST",
        "/apis/batch/v1/namespaces/ghost/jobs",
        Some(job("j", "true")),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(st["message"], "namespaces \"ghost\" not found");

    // Wrong token: 401.
    let bad = client_with_token(&env.cluster, "not-the-token").await;
    let (code, st) = raw_json(&bad, "GET", "/api/v1/namespaces/default/pods", None).await;
    assert_eq!(code, 401);
    assert_eq!(
        st,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    );

    // No token: public endpoints only.
    let anon = client_anonymous(&env.cluster).await;
    let (code, _) = raw_json(&anon, "GET", "/version", None).await;
    assert_eq!(code, 200);
    let (code, st) = raw_json(&anon, "GET", "/api/v1/pods", None).await;
    assert_eq!(code, 403);
    assert_eq!(st["message"], "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" at the cluster scope");

    // Read-only: reads work, writes are 403.
    let ro = client_for(&env.cluster, sykli_testcluster::READONLY_CONTEXT).await;
    let jobs = Api::<Job>::namespaced(ro.clone(), "default");
    assert_eq!(
        jobs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    match jobs
        .create(&PostParams::default(), &typed_job(job("ro", "true")))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403);
            assert_eq!(s.reason, "Forbidden");
            assert_eq!(s.message, "jobs.batch is forbidden: User \"sykli-readonly\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"default\"");
        }
        other => panic!("{other:?}"),
    }
    let (code, st) = raw_json(&ro, "DELETE", &format!("{JOBS}/twice"), None).await;
    assert_eq!(code, 403);
    assert_eq!(st["message"], "jobs.batch \"twice\" is forbidden: User \"sykli-readonly\" cannot delete resource \"jobs\" in API group \"batch\" in the namespace \"default\"");
    // The request log saw who did what.
    let log = env.cluster.requests();
    assert!(log.iter().any(|r| r.status == 401 && r.user.is_empty()));
    assert!(log
        .iter()
        .any(|r| r.status == 403 && r.user == "sykli-readonly" && r.verb == "create"));
}

#[tokio::test]
async fn watch_from_a_version_older_than_the_history_is_410_expired() {
    let env = env_with(|o| o.history_limit = 5).await;
    let cms = Api::<ConfigMap>::namespaced(env.client.clone(), "default");
    let cm = |n: &str| {
        serde_json::from_value::<ConfigMap>(json!({"metadata": {"name": n}, "data": {"k": "v"}}))
            .unwrap()
    };
    let first = cms.create(&PostParams::default(), &cm("c0")).await.unwrap();
    let old = first.metadata.resource_version.unwrap();
    // Within the history: replayed.
    for i in 1..4 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}")))
            .await
            .unwrap();
    }
    let mut s = Box::pin(
        cms.watch(&WatchParams::default().timeout(5), &old)
            .await
            .unwrap(),
    );
    let mut names = Vec::new();
    while names.len() < 3 {
        match next_event(&mut s).await {
            WatchEvent::Added(c) => names.push(c.metadata.name.unwrap()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(names, ["c1", "c2", "c3"]);
    drop(s);
    // Overflow the history: the old version is gone.
    for i in 4..12 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}")))
            .await
            .unwrap();
    }
    let mut s = Box::pin(cms.watch(&WatchParams::default(), &old).await.unwrap());
    match next_event(&mut s).await {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
            assert!(
                e.message
                    .starts_with(&format!("too old resource version: {old} (")),
                "{}",
                e.message
            );
        }
        other => panic!("expected 410, got {other:?}"),
    }
    // kube-rs's watcher re-lists after the 410 and carries on.
    let (code, body) = raw_json(
        &env.client,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={old}"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["type"], "ERROR");
    assert_eq!(body["object"]["code"], 410);
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let env = env().await;
    let cms = Api::<ConfigMap>::namespaced(env.client.clone(), "default");
    for (name, labels) in [
        ("a", json!({"app": "x", "tier": "web"})),
        ("b", json!({"app": "y", "tier": "db"})),
        ("c", json!({"app": "x"})),
    ] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    for (sel, want) in [
        ("app=x", vec!["a", "c"]),
        ("app==x,tier", vec!["a"]),
        ("app!=x", vec!["b"]),
        ("tier in (web,db)", vec!["a", "b"]),
        ("tier notin (web)", vec!["b", "c"]),
        ("!tier", vec!["c"]),
    ] {
        let got = names(cms.list(&ListParams::default().labels(sel)).await.unwrap());
        assert_eq!(got, want, "labelSelector {sel}");
    }
    let got = names(
        cms.list(&ListParams::default().fields("metadata.name=b"))
            .await
            .unwrap(),
    );
    assert_eq!(got, ["b"]);
    let got = names(
        cms.list(&ListParams::default().fields("metadata.name!=b,metadata.namespace=default"))
            .await
            .unwrap(),
    );
    assert_eq!(got, ["a", "c"]);
    // Unknown field labels are refused as the real server refuses them.
    let (code, st) = raw_json(
        &env.client,
        "GET",
        "/api/v1/namespaces/default/pods?fieldSelector=spec.foo%3Dbar",
        None,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(st["message"], "field label not supported: spec.foo");
    let (code, _) = raw_json(
        &env.client,
        "GET",
        "/api/v1/pods?fieldSelector=status.phase%3DRunning",
        None,
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = raw_json(
        &env.client,
        "GET",
        "/api/v1/pods?labelSelector=a%20in%20b",
        None,
    )
    .await;
    assert_eq!(code, 400);

    // Pagination.
    let page = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().unwrap();
    assert_eq!(page.metadata.remaining_item_count, Some(1));
    // The next page shows the list as it was when the first page was read.
    cms.delete("c", &Default::default()).await.unwrap();
    let late: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "bb", "labels": {"app": "x"}}}))
            .unwrap();
    cms.create(&PostParams::default(), &late).await.unwrap();
    let rest = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        rest.metadata.resource_version,
        page.metadata.resource_version
    );
    assert_eq!(names(rest), ["c"]);
    // An Exact list at that version shows the same; a current list does not.
    let then = cms
        .list(
            &ListParams::default()
                .at(page.metadata.resource_version.as_ref().unwrap())
                .matching(kube::api::VersionMatch::Exact),
        )
        .await
        .unwrap();
    assert_eq!(names(then), ["a", "b", "c"]);
    let now = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(now), ["a", "b", "bb"]);
    cms.delete("bb", &Default::default()).await.unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value::<ConfigMap>(
            json!({"metadata": {"name": "c", "labels": {"app": "x"}}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let (code, _) = raw_json(
        &env.client,
        "GET",
        "/api/v1/namespaces/default/configmaps?resourceVersionMatch=Exact",
        None,
    )
    .await;
    assert_eq!(code, 422);

    // A watch with a selector sees only what matches, and an object leaving the selection
    // as DELETED.
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut s = Box::pin(
        cms.watch(&WatchParams::default().labels("app=x").timeout(10), &rv)
            .await
            .unwrap(),
    );
    let d: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "d", "labels": {"app": "x"}}})).unwrap();
    let e: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "e", "labels": {"app": "z"}}})).unwrap();
    cms.create(&PostParams::default(), &e).await.unwrap();
    cms.create(&PostParams::default(), &d).await.unwrap();
    match next_event(&mut s).await {
        WatchEvent::Added(c) => assert_eq!(c.metadata.name.as_deref(), Some("d")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn watches_get_bookmarks() {
    let env = env().await;
    let cms = Api::<ConfigMap>::namespaced(env.client.clone(), "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut s = Box::pin(
        cms.watch(&WatchParams::default().timeout(30), &rv)
            .await
            .unwrap(),
    );
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "bm"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let created_rv: u64 = created.metadata.resource_version.unwrap().parse().unwrap();
    let mut added = false;
    let fut = async {
        loop {
            match s.try_next().await.unwrap().unwrap() {
                WatchEvent::Added(_) => added = true,
                WatchEvent::Bookmark(b) => {
                    let brv: u64 = b.metadata.resource_version.parse().unwrap();
                    if added {
                        assert!(brv >= created_rv);
                        return b;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    };
    let b = tokio::time::timeout(WAIT, fut).await.unwrap();
    assert_eq!(b.types.kind, "ConfigMap");
    // A watch that times out ends with a bookmark.
    let (code, _, body) = raw(
        &env.client,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=true&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion={rv}"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let text = String::from_utf8(body).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "BOOKMARK");
    // sendInitialEvents: the current objects, then a bookmark marking their end.
    let (_, _, body) = raw(
        &env.client,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1",
        None,
    )
    .await;
    let events: Vec<Value> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    // Without allowWatchBookmarks it is refused.
    let (code, st) = raw_json(
        &env.client,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
        None,
    )
    .await;
    assert_eq!(code, 422, "{st}");
}

#[tokio::test]
async fn discovery_describes_the_served_resources() {
    let env = env().await;
    let (code, v) = raw_json(&env.client, "GET", "/version", None).await;
    assert_eq!(code, 200);
    assert_eq!(v["major"], "1");
    let (_, v) = raw_json(&env.client, "GET", "/api", None).await;
    assert_eq!(v["versions"], json!(["v1"]));
    let (_, v) = raw_json(&env.client, "GET", "/apis", None).await;
    assert_eq!(v["groups"][0]["name"], "batch");
    let (_, v) = raw_json(&env.client, "GET", "/apis/batch/v1", None).await;
    let names: Vec<&str> = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jobs", "jobs/status"]);
    let (_, v) = raw_json(&env.client, "GET", "/api/v1", None).await;
    let names: Vec<&str> = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for want in [
        "namespaces",
        "pods",
        "pods/log",
        "secrets",
        "configmaps",
        "persistentvolumeclaims",
        "events",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    let kube_version = env.client.apiserver_version().await.unwrap();
    assert_eq!(kube_version.minor, "37");
    let (code, _) = raw_json(&env.client, "GET", "/apis/apps/v1/deployments", None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn namespaces_are_created_listed_and_deleted_with_their_contents() {
    use k8s_openapi::api::core::v1::Namespace;
    let env = env().await;
    let nss = Api::<Namespace>::all(env.client.clone());
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["default", "kube-public", "kube-system"]);
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    let created = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    assert_eq!(
        created.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "team-a"
    );
    let bad: Namespace = serde_json::from_value(json!({"metadata": {"name": "a.b"}})).unwrap();
    match nss.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert_eq!(s.message, "Namespace \"a.b\" is invalid: metadata.name: Invalid value: \"a.b\": must not contain dots");
        }
        other => panic!("{other:?}"),
    }
    create_job(&env.client, "team-a", job("j", "true")).await;
    let cms = Api::<ConfigMap>::namespaced(env.client.clone(), "team-a");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let r = nss.delete("team-a", &Default::default()).await.unwrap();
    let terminating = r.left().unwrap();
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    tokio::time::timeout(
        WAIT,
        kube::runtime::wait::await_condition(nss.clone(), "team-a", |o: Option<&Namespace>| {
            o.is_none()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(cms.get_opt("c").await.unwrap().is_none());
    match nss.delete("default", &Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn updates_are_conditional_on_the_resource_version() {
    let env = env().await;
    let cms = Api::<ConfigMap>::namespaced(env.client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "conf"}, "data": {"a": "1"}})).unwrap();
    let v1 = cms.create(&PostParams::default(), &cm).await.unwrap();
    let mut v2 = v1.clone();
    v2.data = Some([("a".to_string(), "2".to_string())].into());
    let stored = cms
        .replace("conf", &PostParams::default(), &v2)
        .await
        .unwrap();
    assert_eq!(stored.data.as_ref().unwrap()["a"], "2");
    assert_eq!(stored.metadata.uid, v1.metadata.uid);
    assert_ne!(
        stored.metadata.resource_version,
        v1.metadata.resource_version
    );
    // Replacing from the stale copy conflicts.
    match cms.replace("conf", &PostParams::default(), &v2).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
            assert_eq!(s.message, "Operation cannot be fulfilled on configmaps \"conf\": the object has been modified; please apply your changes to the latest version and try again");
        }
        other => panic!("{other:?}"),
    }
    // Jobs are not updated through this API.
    let (code, st) = raw_json(
        &env.client,
        "PUT",
        &format!("{JOBS}/x"),
        Some(job("x", "true")),
    )
    .await;
    assert_eq!(code, 405, "{st}");
    assert_eq!(st["reason"], "MethodNotAllowed");
}

#[tokio::test]
async fn standalone_pods_run_and_logs_follow_the_api_rules() {
    let env = env().await;
    let pods = Api::<Pod>::namespaced(env.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "solo-"},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "a", "image": "busybox", "command": ["sh", "-c", "echo from-a"]},
            {"name": "b", "image": "busybox", "command": ["sh", "-c", "echo from-b"]}
        ]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("solo-") && name.len() == 10);
    let spec = created.spec.unwrap();
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(
        spec.containers[0].termination_message_path.as_deref(),
        Some("/dev/termination-log")
    );
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("Always")
    );
    assert_eq!(
        created.status.unwrap().qos_class.as_deref(),
        Some("BestEffort")
    );
    wait_pod(&env.client, "default", &name, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
    })
    .await;
    let path = format!("/api/v1/namespaces/default/pods/{name}/log");
    let (code, st) = raw_json(&env.client, "GET", &path, None).await;
    assert_eq!(code, 400);
    assert_eq!(
        st["message"],
        format!("a container name must be specified for pod {name}, choose one of: [a b]")
    );
    let (code, st) = raw_json(&env.client, "GET", &format!("{path}?container=c"), None).await;
    assert_eq!(code, 400);
    assert_eq!(
        st["message"],
        format!("container c is not valid for pod {name}")
    );
    let (code, _, body) = raw(&env.client, "GET", &format!("{path}?container=b"), None).await;
    assert_eq!(
        (code, String::from_utf8(body).unwrap()),
        (200, "from-b\n".to_string())
    );
    let (code, st) = raw_json(
        &env.client,
        "GET",
        &format!("{path}?container=b&previous=true"),
        None,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        st["message"],
        format!("previous terminated container \"b\" in pod \"{name}\" not found")
    );
}
