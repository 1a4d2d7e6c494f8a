//! Fault injection (errors per verb, throttling, latency, dropped and expiring watches), its
//! determinism with a seed, and the request log.

mod common;

use std::time::Instant;

use common::*;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use sykli_testcluster::Faults;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

#[tokio::test]
async fn errors_are_injected_per_verb() {
    let env = env().await;
    let client = client_no_retry(&env.cluster).await;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "default");
    // Through the HTTP knob, as a non-Rust test would.
    let (code, _) = raw_json(
        &env.client,
        "POST",
        "/_sykli/faults",
        Some(json!({"error_rate": {"create": 1.0}, "error_code": 503})),
    )
    .await;
    assert_eq!(code, 200);
    match cms.create(&PostParams::default(), &cm("a")).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 503);
            assert_eq!(s.reason, "ServiceUnavailable");
        }
        other => panic!("{other:?}"),
    }
    // Other verbs are untouched.
    cms.list(&ListParams::default()).await.unwrap();
    env.cluster.set_faults(Faults {
        error_rate: [("*".to_string(), 1.0)].into(),
        ..Faults::default()
    });
    match cms.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 500);
            assert_eq!(s.reason, "InternalError");
        }
        other => panic!("{other:?}"),
    }
    // Throttling: 429 with Retry-After.
    env.cluster.set_faults(Faults {
        throttle_rate: 1.0,
        ..Faults::default()
    });
    let (code, headers, body) = raw(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        None,
    )
    .await;
    assert_eq!(code, 429);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    let st: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(st["reason"], "TooManyRequests");
    assert_eq!(st["details"]["retryAfterSeconds"], 1);
    // Latency.
    env.cluster.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let t = Instant::now();
    cms.list(&ListParams::default()).await.unwrap();
    assert!(t.elapsed().as_millis() >= 300);
    env.cluster.set_faults(Faults::default());
    // Only the admin may turn the knobs.
    let ro = client_for(&env.cluster, sykli_testcluster::READONLY_CONTEXT).await;
    let (code, _) = raw_json(&ro, "POST", "/_sykli/faults", Some(json!({}))).await;
    assert_eq!(code, 403);
    let (code, _) = raw_json(
        &env.client,
        "POST",
        "/_sykli/faults",
        Some(json!({"error_rate": {"get": 2.0}})),
    )
    .await;
    assert_eq!(code, 400);
    // The request log records the injected ones.
    let log = env.cluster.requests();
    let injected: Vec<u16> = log
        .iter()
        .filter(|r| r.injected)
        .map(|r| r.status)
        .collect();
    assert_eq!(injected, [503, 500, 429]);
    assert!(log
        .iter()
        .all(|r| r.user == "sykli-admin" || r.user == "sykli-readonly"));

    // kube-rs's default client retries a transient 503 and gets through.
    env.cluster.set_faults(Faults {
        seed: Some(7),
        error_rate: [("create".to_string(), 0.5)].into(),
        error_code: Some(503),
        ..Faults::default()
    });
    env.cluster.clear_requests();
    let retrying = Api::<ConfigMap>::namespaced(env.client.clone(), "default");
    for i in 0..4 {
        retrying
            .create(&PostParams::default(), &cm(&format!("r{i}")))
            .await
            .unwrap();
    }
    let creates: Vec<u16> = env
        .cluster
        .requests()
        .iter()
        .filter(|r| r.verb == "create")
        .map(|r| r.status)
        .collect();
    assert_eq!(
        creates.iter().filter(|c| **c == 201).count(),
        4,
        "{creates:?}"
    );
    assert!(creates.contains(&503), "{creates:?}");
}

#[tokio::test]
async fn a_seed_makes_faults_repeatable() {
    let env = env().await;
    let client = client_no_retry(&env.cluster).await;
    let cms = Api::<ConfigMap>::namespaced(client, "default");
    let run = || async {
        env.cluster.set_faults(Faults {
            seed: Some(42),
            error_rate: [("get".to_string(), 0.5)].into(),
            throttle_rate: 0.2,
            ..Faults::default()
        });
        let mut codes = Vec::new();
        for _ in 0..30 {
            let code = match cms.get_opt("missing").await {
                Ok(_) => 404,
                Err(kube::Error::Api(s)) => s.code,
                Err(e) => panic!("{e}"),
            };
            codes.push(code);
        }
        codes
    };
    let first = run().await;
    let second = run().await;
    assert_eq!(first, second);
    assert!(first.contains(&500) && first.contains(&404), "{first:?}");
}

#[tokio::test]
async fn watches_can_be_dropped_or_expired() {
    let env = env().await;
    let cms = Api::<ConfigMap>::namespaced(env.client.clone(), "default");
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("c{i}")))
            .await
            .unwrap();
    }
    env.cluster.set_faults(Faults {
        watch_drop_after_events: Some(2),
        ..Faults::default()
    });
    let mut s = Box::pin(cms.watch(&WatchParams::default(), "0").await.unwrap());
    let mut added = 0;
    let fut = async {
        while let Some(ev) = s.try_next().await.unwrap() {
            if let WatchEvent::Added(_) = ev {
                added += 1;
            }
        }
    };
    tokio::time::timeout(WAIT, fut).await.unwrap();
    assert_eq!(added, 2, "the stream ended after two events");

    env.cluster.set_faults(Faults {
        next_watch_gone: 1,
        ..Faults::default()
    });
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut s = Box::pin(cms.watch(&WatchParams::default(), &rv).await.unwrap());
    match tokio::time::timeout(WAIT, s.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("{other:?}"),
    }
    assert!(tokio::time::timeout(WAIT, s.try_next())
        .await
        .unwrap()
        .unwrap()
        .is_none());
    // Only the next one.
    let mut s = Box::pin(
        cms.watch(&WatchParams::default().timeout(5), &rv)
            .await
            .unwrap(),
    );
    cms.create(&PostParams::default(), &cm("after"))
        .await
        .unwrap();
    let fut = async {
        loop {
            match s.try_next().await.unwrap().unwrap() {
                WatchEvent::Added(c) => return c,
                WatchEvent::Bookmark(_) => {}
                other => panic!("{other:?}"),
            }
        }
    };
    let c = tokio::time::timeout(WAIT, fut).await.unwrap();
    assert_eq!(c.metadata.name.as_deref(), Some("after"));
    // kube-rs's watcher recovers from a 410 by listing again.
    env.cluster.set_faults(Faults {
        next_watch_gone: 1,
        ..Faults::default()
    });
    let stream = kube::runtime::watcher(cms.clone(), Default::default());
    let fut = async {
        let mut stream = Box::pin(stream);
        let mut errors = 0;
        loop {
            match stream.try_next().await {
                Ok(Some(kube::runtime::watcher::Event::InitDone)) => return errors,
                Ok(_) => {}
                Err(_) => errors += 1,
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, fut).await.unwrap();
    let log = env.cluster.requests();
    assert!(log.iter().any(|r| r.watch && r.verb == "watch"));

    // A version from the future: 504 after a short wait, as the watch cache answers.
    let client = client_no_retry(&env.cluster).await;
    let future = env.cluster.store().current_rv() + 1000;
    let (code, st) = raw_json(
        &client,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={future}"),
        None,
    )
    .await;
    assert_eq!(code, 504);
    assert_eq!(st["reason"], "Timeout");
    assert_eq!(
        st["details"]["causes"][0]["reason"],
        "ResourceVersionTooLarge"
    );
}
