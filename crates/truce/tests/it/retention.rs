//! History retention: count-based (in the write's own commit) and age-based
//! (compaction), and 410 history-compacted for what is gone.

use std::time::Duration;

use serde_json::json;

use crate::common::{TestServer, problem};

#[tokio::test]
async fn max_versions_keeps_the_newest() {
    let server = TestServer::start_with(|_, store| {
        store.retention.max_versions = Some(3);
    })
    .await;
    for n in 1..=5 {
        server.put("/v1/kept/a", &json!({"n": n}), &[]).await;
    }
    let history = server.get_json("/v1/kept/a/versions").await;
    let versions: Vec<u64> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [5, 4, 3]);
    assert_eq!(
        server.get_json("/v1/kept/a/versions/3").await,
        json!({"n": 3})
    );
    for path in [
        "/v1/kept/a/versions/2",
        "/v1/kept/a?version=1",
        "/v1/kept/a/diff?from=1&to=5",
    ] {
        let gone = problem(server.get(path, &[]).await, 410, "history-compacted").await;
        assert_eq!(gone["oldest"], 3, "{path}");
    }
    let revert = server
        .client
        .post(server.url("/v1/kept/a/revert"))
        .header("content-type", "application/json")
        .body(r#"{"to": 1}"#)
        .send()
        .await
        .unwrap();
    let gone = problem(revert, 410, "history-compacted").await;
    assert_eq!(gone["oldest"], 3);
    // Versions that never existed are still 404, not 410.
    problem(
        server.get("/v1/kept/a/versions/6", &[]).await,
        404,
        "not-found",
    )
    .await;
    // The change feed keeps every revision: retention of versions is separate.
    let feed = server.get_json("/v1/_changes").await;
    assert_eq!(feed["changes"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn max_age_is_applied_by_compaction_and_never_touches_the_head() {
    let server = TestServer::start_with(|_, store| {
        store.retention.max_age = Some(Duration::from_millis(1));
    })
    .await;
    for n in 1..=4 {
        server.put("/v1/aged/a", &json!({"n": n}), &[]).await;
    }
    server.put("/v1/aged/b", &json!({"only": true}), &[]).await;
    let report = server
        .compact_until(|total| total["versions_removed"].as_u64() >= Some(3))
        .await;
    let removed = report["versions_removed"].as_u64().unwrap();
    assert_eq!(removed, 3);
    assert_eq!(server.get_json("/v1/aged/a").await, json!({"n": 4}));
    assert_eq!(server.get_json("/v1/aged/b").await, json!({"only": true}));
    let gone = problem(
        server.get("/v1/aged/a/versions/1", &[]).await,
        410,
        "history-compacted",
    )
    .await;
    assert_eq!(gone["oldest"], 4);
    let history = server.get_json("/v1/aged/a/versions").await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
    // Writing continues the numbering.
    let next = server.put("/v1/aged/a", &json!({"n": 5}), &[]).await;
    assert_eq!(crate::common::header(&next, "truce-version"), "5");
}
