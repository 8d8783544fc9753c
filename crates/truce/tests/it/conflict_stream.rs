//! SPEC §7 notification: the conflict stream and the conflict events of a
//! resource's watch, delivered once each, in order, resumable.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{SseEvent, TestServer, etag, next_event, problem, sse_events};

const WAIT: Duration = Duration::from_secs(10);

/// Opens an SSE stream at `path` with extra headers.
async fn open(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = server
        .client
        .get(server.url(path))
        .header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response
}

/// Makes a write to `path` that is refused with 412 (a stale If-Match), returning
/// its conflict id.
async fn refused_write(server: &TestServer, path: &str, stale: &str) -> String {
    let body = problem(
        server
            .put(path, &json!({"stale": true}), &[("if-match", stale)])
            .await,
        412,
        "precondition-failed",
    )
    .await;
    body["conflict_id"].as_str().unwrap().to_owned()
}

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

#[tokio::test]
async fn the_stream_carries_each_event_once_in_order_and_resumes() {
    let server = TestServer::start().await;
    let v1 = server.create("/v1/a/doc", &json!({"n": 1})).await;
    server.put("/v1/a/doc", &json!({"n": 2}), &[]).await;
    let o1 = server.create("/v1/other/doc", &json!({"n": 1})).await;
    server.put("/v1/other/doc", &json!({"n": 2}), &[]).await;

    let mut events = sse_events(open(&server, "/v1/_conflicts/stream?collection=a", &[]).await);
    let first = refused_write(&server, "/v1/a/doc", &v1).await;
    refused_write(&server, "/v1/other/doc", &o1).await;
    let dismissed = server
        .client
        .post(server.url(&format!("/v1/_conflicts/{first}/dismiss")))
        .send()
        .await
        .unwrap();
    assert_eq!(dismissed.status(), 200);
    let second = refused_write(&server, "/v1/a/doc", &v1).await;

    let detected = next_event(&mut events, WAIT).await;
    assert_eq!(detected.event, "conflict.detected");
    assert_eq!(data(&detected)["conflict_id"], first.as_str());
    assert_eq!(data(&detected)["href"], format!("/v1/_conflicts/{first}"));
    assert_eq!(
        data(&detected)["resource"],
        json!({"collection": "a", "id": "doc"})
    );
    let closed = next_event(&mut events, WAIT).await;
    assert_eq!(closed.event, "conflict.dismissed");
    assert_eq!(data(&closed)["conflict_id"], first.as_str());
    // The other collection's event was filtered out: the next one is `second`.
    let again = next_event(&mut events, WAIT).await;
    assert_eq!(data(&again)["conflict_id"], second.as_str());
    let positions: Vec<u64> = [&detected, &closed, &again]
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    // Resuming after the first event gives the rest, without repeats.
    let mut resumed = sse_events(
        open(
            &server,
            "/v1/_conflicts/stream?collection=a",
            &[("last-event-id", detected.id.as_deref().unwrap())],
        )
        .await,
    );
    assert_eq!(next_event(&mut resumed, WAIT).await, closed);
    assert_eq!(next_event(&mut resumed, WAIT).await, again);

    // Positions are never reused across a restart.
    let server = server.restart().await;
    let mut after_restart =
        sse_events(open(&server, "/v1/_conflicts/stream?since=0&id=doc", &[]).await);
    // Every event about an id "doc" so far: both collections' (four).
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next_event(&mut after_restart, WAIT).await);
    }
    assert_eq!(seen[0], detected);
    let newest = refused_write(&server, "/v1/a/doc", &v1).await;
    let next = next_event(&mut after_restart, WAIT).await;
    assert_eq!(data(&next)["conflict_id"], newest.as_str());
    let last_before: u64 = seen[3].id.as_deref().unwrap().parse().unwrap();
    assert_eq!(next.id.unwrap().parse::<u64>().unwrap(), last_before + 1);
}

#[tokio::test]
async fn a_watch_carries_the_resources_conflict_events() {
    let server = TestServer::start().await;
    let v1 = server.create("/v1/w/doc", &json!({"n": 1})).await;
    let mut events = sse_events(open(&server, "/v1/w/doc/watch", &[]).await);
    let v2 = etag(&server.put("/v1/w/doc", &json!({"n": 2}), &[]).await);
    let cid = refused_write(&server, "/v1/w/doc", &v1).await;
    // Another resource's conflict is not in this watch.
    let x1 = server.create("/v1/w/other", &json!({"n": 1})).await;
    server.put("/v1/w/other", &json!({"n": 2}), &[]).await;
    refused_write(&server, "/v1/w/other", &x1).await;
    server
        .put("/v1/w/doc", &json!({"n": 3}), &[("if-match", &v2)])
        .await;

    let change = next_event(&mut events, WAIT).await;
    assert_eq!(change.event, "change");
    assert_eq!(data(&change)["version"], 2);
    let conflict = next_event(&mut events, WAIT).await;
    assert_eq!(conflict.event, "conflict.detected");
    assert_eq!(data(&conflict)["conflict_id"], cid.as_str());
    let last = next_event(&mut events, WAIT).await;
    assert_eq!(
        (last.event.as_str(), data(&last)["version"].clone()),
        ("change", json!(3))
    );

    // Resuming from the conflict event's id gives only the later change.
    let mut resumed = sse_events(
        open(
            &server,
            "/v1/w/doc/watch",
            &[("last-event-id", conflict.id.as_deref().unwrap())],
        )
        .await,
    );
    let again = next_event(&mut resumed, WAIT).await;
    assert_eq!((again.event, again.data), (last.event, last.data));
    problem(
        server
            .client
            .get(server.url("/v1/w/doc/watch"))
            .header("accept", "text/event-stream")
            .header("last-event-id", "3.x")
            .send()
            .await
            .unwrap(),
        400,
        "malformed-request",
    )
    .await;
}

/// The ids of every record, oldest first.
async fn record_ids(server: &TestServer) -> Vec<String> {
    let page = server.get_json("/v1/_conflicts?limit=1000").await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_cap_removes_the_oldest_records_but_keeps_open_ones_of_live_resources() {
    let server = TestServer::start_with(|_, store| {
        store.conflict_retention.max_per_collection = 2;
    })
    .await;
    let v1 = server.create("/v1/c/live", &json!({"n": 1})).await;
    server.put("/v1/c/live", &json!({"n": 2}), &[]).await;
    let g1 = server.create("/v1/c/gone", &json!({"n": 1})).await;
    server.put("/v1/c/gone", &json!({"n": 2}), &[]).await;

    let open_live = refused_write(&server, "/v1/c/live", &v1).await;
    let open_gone = refused_write(&server, "/v1/c/gone", &g1).await;
    let mut closed = Vec::new();
    for _ in 0..2 {
        let cid = refused_write(&server, "/v1/c/live", &v1).await;
        server
            .client
            .post(server.url(&format!("/v1/_conflicts/{cid}/dismiss")))
            .send()
            .await
            .unwrap();
        closed.push(cid);
    }
    server
        .client
        .delete(server.url("/v1/c/gone"))
        .send()
        .await
        .unwrap();
    // Another collection has its own cap.
    let o1 = server.create("/v1/other/x", &json!({"n": 1})).await;
    server.put("/v1/other/x", &json!({"n": 2}), &[]).await;
    let other = refused_write(&server, "/v1/other/x", &o1).await;

    let report = server
        .compact_until(|total| total["conflicts_removed"] == 2)
        .await;
    assert_eq!(report["conflicts_removed"], 2);
    // Four in "c" against a cap of 2: the two oldest that are not open records of
    // live resources go (the deleted resource's, then the first dismissed one).
    assert_eq!(
        record_ids(&server).await,
        vec![open_live, closed[1].clone(), other]
    );
    assert!(!record_ids(&server).await.contains(&open_gone));
}

#[tokio::test]
async fn records_and_events_age_out_and_an_old_stream_position_is_410() {
    let server = TestServer::start_with(|_, store| {
        store.conflict_retention.max_age = Duration::from_millis(300);
    })
    .await;
    let v1 = server.create("/v1/a/doc", &json!({"n": 1})).await;
    server.put("/v1/a/doc", &json!({"n": 2}), &[]).await;
    for _ in 0..3 {
        refused_write(&server, "/v1/a/doc", &v1).await;
    }
    let report = server
        .compact_until(|total| {
            total["conflicts_removed"] == 3 && total["conflict_events_removed"] == 2
        })
        .await;
    assert_eq!(
        report["conflict_events_removed"], 2,
        "the newest event stays"
    );
    assert!(record_ids(&server).await.is_empty());
    let gone = problem(
        server
            .client
            .get(server.url("/v1/_conflicts/stream?since=0"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap(),
        410,
        "history-compacted",
    )
    .await;
    assert_eq!(gone["oldest"], 2);
    // From the oldest position still served, the stream carries on; positions go on.
    let mut events = sse_events(open(&server, "/v1/_conflicts/stream?since=2", &[]).await);
    let cid = refused_write(&server, "/v1/a/doc", &v1).await;
    let kept = next_event(&mut events, WAIT).await;
    assert_eq!(
        kept.id.as_deref(),
        Some("3"),
        "the newest old event is kept"
    );
    let event = next_event(&mut events, WAIT).await;
    assert_eq!(event.id.as_deref(), Some("4"));
    assert_eq!(data(&event)["conflict_id"], cid.as_str());
}
