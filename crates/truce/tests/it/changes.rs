//! SPEC §6: the change feed under concurrent writers (ordered, gap-free, never
//! repeated), long polls that wake on a write, SSE that resumes from Last-Event-ID,
//! heartbeats, watches, and 410 once compacted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    ServerProcess, TestServer, client, data_dir, next_event, problem, sse_events, wait_for_metric,
};

const WAIT: Duration = Duration::from_secs(10);

/// Reads the whole feed from `since` in pages of `limit`.
async fn read_feed(server: &TestServer, since: u64, limit: usize) -> (Vec<Value>, u64) {
    let mut since = since;
    let mut changes = Vec::new();
    loop {
        let page = server
            .get_json(&format!("/v1/_changes?since={since}&limit={limit}"))
            .await;
        let items = page["changes"].as_array().unwrap().clone();
        let last = page["last_revision"].as_u64().unwrap();
        assert!(last >= since, "the feed never goes back");
        since = last;
        if items.is_empty() {
            return (changes, since);
        }
        changes.extend(items);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_is_ordered_and_gap_free_under_concurrent_writers() {
    let server = Arc::new(TestServer::start().await);
    let writers = 8;
    let writes_each = 40;
    // A reader follows the feed while the writers run.
    let reader = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut since = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.len() < writers * writes_each && Instant::now() < deadline {
                let page = server
                    .get_json(&format!(
                        "/v1/_changes?since={since}&limit=7&feed=longpoll&timeout_ms=2000"
                    ))
                    .await;
                seen.extend(page["changes"].as_array().unwrap().iter().cloned());
                since = page["last_revision"].as_u64().unwrap();
            }
            seen
        })
    };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            for i in 0..writes_each {
                // Half the writes go to a shared document, half to the writer's own.
                let path = if i % 2 == 0 {
                    "/v1/feed/shared".to_owned()
                } else {
                    format!("/v1/feed/own-{w}")
                };
                let response = server.put(&path, &json!({"w": w, "i": i}), &[]).await;
                assert!(response.status().is_success());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let followed = reader.await.unwrap();
    let (paged, last) = read_feed(&server, 0, 13).await;
    let total = writers * writes_each;
    for changes in [&followed, &paged] {
        assert_eq!(changes.len(), total);
        let revisions: Vec<u64> = changes
            .iter()
            .map(|c| c["revision"].as_u64().unwrap())
            .collect();
        assert_eq!(revisions, (1..=total as u64).collect::<Vec<_>>());
        // Per resource, versions come in order with no gap.
        let mut versions: HashMap<String, u64> = HashMap::new();
        for change in changes.iter() {
            let id = change["id"].as_str().unwrap().to_owned();
            let expected = versions.get(&id).copied().unwrap_or(0) + 1;
            assert_eq!(change["version"], expected, "{change}");
            versions.insert(id, expected);
        }
    }
    assert_eq!(last, total as u64);
    assert_eq!(followed, paged);
}

#[tokio::test]
async fn change_entries_carry_their_fields_and_filters_apply() {
    let server = TestServer::start().await;
    let tag = server.create("/v1/one/a", &json!({"n": 1})).await;
    server.create("/v1/two/b", &json!({"n": 2})).await;
    server
        .client
        .delete(server.url("/v1/one/a"))
        .send()
        .await
        .unwrap();
    let all = server.get_json("/v1/_changes?include_docs=true").await;
    let changes = all["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3);
    assert_eq!(changes[0]["collection"], "one");
    assert_eq!(changes[0]["id"], "a");
    assert_eq!(changes[0]["version"], 1);
    assert_eq!(changes[0]["etag"], tag);
    assert_eq!(changes[0]["op"], "create");
    assert_eq!(changes[0]["doc"], json!({"n": 1}));
    assert_eq!(changes[2]["op"], "delete");
    assert!(
        changes[2].get("doc").is_none(),
        "a deletion has no document"
    );
    assert_eq!(all["last_revision"], 3);
    let without_docs = server.get_json("/v1/_changes").await;
    assert!(without_docs["changes"][0].get("doc").is_none());
    let one = server.get_json("/v1/_changes?collection=one").await;
    let revisions: Vec<u64> = one["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, [1, 3]);
    assert_eq!(one["last_revision"], 3);
    let after = server.get_json("/v1/_changes?since=3").await;
    assert_eq!(after, json!({"changes": [], "last_revision": 3}));
}

/// A server process of its own, so its waiters gauge counts only this test's polls.
async fn poll_server() -> (tempfile::TempDir, ServerProcess, reqwest::Client) {
    let (tmp, data) = data_dir();
    let server = ServerProcess::start(&data, &[]).await;
    let client = client();
    server.ready(&client).await;
    (tmp, server, client)
}

/// Starts a long poll of `query` and returns once the server says it is waiting.
async fn waiting_poll(
    server: &ServerProcess,
    client: &reqwest::Client,
    query: &str,
) -> tokio::task::JoinHandle<(Value, Duration)> {
    let url = format!("{}/v1/_changes?{query}&feed=longpoll", server.base);
    let poll_client = client.clone();
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let page = poll_client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (page, started.elapsed())
    });
    wait_for_metric(
        client,
        &server.base,
        "truce_change_waiters{kind=\"longpoll\"} 1",
    )
    .await;
    poll
}

async fn put(client: &reqwest::Client, server: &ServerProcess, path: &str, body: Value) {
    let response = client
        .put(format!("{}{path}", server.base))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
}

#[tokio::test]
async fn a_long_poll_wakes_on_a_write() {
    let (_tmp, server, client) = poll_server().await;
    put(&client, &server, "/v1/poll/a", json!({"n": 1})).await;
    let poll = waiting_poll(&server, &client, "since=1&timeout_ms=20000").await;
    put(&client, &server, "/v1/poll/a", json!({"n": 2})).await;
    let (page, waited) = poll.await.unwrap();
    assert!(waited < Duration::from_secs(10), "woke on the write");
    assert_eq!(page["changes"][0]["version"], 2);
    assert_eq!(page["last_revision"], 2);
    server.kill().await;
}

#[tokio::test]
async fn a_filtered_long_poll_sleeps_through_other_writes() {
    let (_tmp, server, client) = poll_server().await;
    put(&client, &server, "/v1/poll/a", json!({"n": 1})).await;
    // Waiting on `quiet`: a write elsewhere must not end the poll...
    let poll = waiting_poll(
        &server,
        &client,
        "since=1&collection=quiet&timeout_ms=20000",
    )
    .await;
    put(&client, &server, "/v1/poll/b", json!({})).await;
    // ...so the next write to `quiet` is what it answers with. Had the first write
    // woken it, the answer would be empty, at revision 2.
    put(&client, &server, "/v1/quiet/q", json!({})).await;
    let (page, _) = poll.await.unwrap();
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{page}");
    assert_eq!(changes[0]["collection"], "quiet");
    assert_eq!(page["last_revision"], 3);

    // With nothing to wake it, the timeout ends it, with nothing.
    let poll = waiting_poll(&server, &client, "since=3&collection=quiet&timeout_ms=300").await;
    put(&client, &server, "/v1/poll/c", json!({})).await;
    let (page, waited) = poll.await.unwrap();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["last_revision"], 4);
    server.kill().await;
}

#[tokio::test]
async fn sse_streams_changes_and_resumes_from_last_event_id() {
    let server = TestServer::start().await;
    let open = |last_event_id: Option<String>| {
        let mut request = server
            .client
            .get(server.url("/v1/_changes?since=0"))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send()
    };
    let response = open(None).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(crate::common::header(&response, "content-type").starts_with("text/event-stream"));
    let mut events = sse_events(response);
    for n in 1..=5 {
        server
            .put(&format!("/v1/sse/d{n}"), &json!({"n": n}), &[])
            .await;
    }
    let mut last_id = String::new();
    for n in 1..=5u64 {
        let event = next_event(&mut events, WAIT).await;
        assert_eq!(event.event, "change");
        assert_eq!(event.id.as_deref(), Some(n.to_string().as_str()));
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data["revision"], n);
        assert_eq!(data["id"], format!("d{n}"));
        last_id = n.to_string();
    }
    drop(events);
    // Writes while disconnected are not lost.
    for n in 6..=10 {
        server
            .put(&format!("/v1/sse/d{n}"), &json!({"n": n}), &[])
            .await;
    }
    let mut events = sse_events(open(Some(last_id)).await.unwrap());
    let mut seen = Vec::new();
    for _ in 6..=10 {
        let event = next_event(&mut events, WAIT).await;
        seen.push(event.id.unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(seen, [6, 7, 8, 9, 10]);
    server.put("/v1/sse/d11", &json!({}), &[]).await;
    assert_eq!(
        next_event(&mut events, WAIT).await.id.as_deref(),
        Some("11")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_resumes_without_loss_or_duplicate_under_concurrent_writers() {
    let server = Arc::new(TestServer::start().await);
    let writers = 4;
    let writes_each = 60;
    let total = (writers * writes_each) as u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            for i in 0..writes_each {
                let path = format!("/v1/resume/w{w}-{}", i % 3);
                assert!(
                    server
                        .put(&path, &json!({"i": i}), &[])
                        .await
                        .status()
                        .is_success()
                );
            }
        }));
    }
    // Read a few events at a time, dropping the connection after each handful and
    // resuming from the last event id seen, while the writers keep writing.
    let mut seen: Vec<u64> = Vec::new();
    let mut last_id: Option<String> = None;
    while (seen.len() as u64) < total {
        let mut request = server
            .client
            .get(server.url("/v1/_changes"))
            .header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let mut events = sse_events(request.send().await.unwrap());
        for _ in 0..7 {
            if seen.len() as u64 == total {
                break;
            }
            let event = next_event(&mut events, WAIT).await;
            let data: Value = serde_json::from_str(&event.data).unwrap();
            seen.push(data["revision"].as_u64().unwrap());
            if let Some(id) = event.id {
                last_id = Some(id);
            }
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_stream_opens_with_its_position() {
    let server = TestServer::start().await;
    for n in 0..3 {
        server.put("/v1/pos/a", &json!({"n": n}), &[]).await;
    }
    let response = server
        .get("/v1/_changes?since=3", &[("accept", "text/event-stream")])
        .await;
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // An `id:` alone: browsers and clients keep it as the last event id.
    assert!(text.starts_with("id: 3\n\n"), "{text:?}");
}

#[tokio::test]
async fn sse_sends_heartbeats() {
    let server = TestServer::start_with(|config, _| {
        config.sse_keepalive = Duration::from_millis(100);
    })
    .await;
    let response = server
        .client
        .get(server.url("/v1/_changes"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut events = sse_events(response);
    let heartbeat = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        heartbeat.event, ":",
        "a comment line keeps the stream alive"
    );
}

#[tokio::test]
async fn watch_streams_one_resource() {
    let server = TestServer::start().await;
    server.create("/v1/watched/a", &json!({"n": 0})).await;
    let response = server
        .client
        .get(server.url("/v1/watched/a/watch"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = sse_events(response);
    server.put("/v1/watched/b", &json!({}), &[]).await;
    server.put("/v1/watched/a", &json!({"n": 1}), &[]).await;
    server.put("/v1/other/a", &json!({}), &[]).await;
    server
        .client
        .delete(server.url("/v1/watched/a"))
        .send()
        .await
        .unwrap();
    let first = next_event(&mut events, WAIT).await;
    let data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(
        (data["id"].as_str(), data["version"].as_u64()),
        (Some("a"), Some(2))
    );
    assert_eq!(data["collection"], "watched");
    // Revision 3, and no conflict event yet.
    assert_eq!(first.id.as_deref(), Some("3.0"));
    let second: Value = serde_json::from_str(&next_event(&mut events, WAIT).await.data).unwrap();
    assert_eq!(second["op"], "delete");
    assert_eq!(second["revision"], 5);
    // From a past revision with ?since.
    let replay = server
        .client
        .get(server.url("/v1/watched/a/watch?since=0"))
        .send()
        .await
        .unwrap();
    let mut replay = sse_events(replay);
    let versions: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let event = next_event(&mut replay, WAIT).await;
            let data: Value = serde_json::from_str(&event.data).unwrap();
            v.push(data["version"].as_u64().unwrap());
        }
        v
    };
    assert_eq!(versions, [1, 2, 3]);
}

#[tokio::test]
async fn a_compacted_since_is_410() {
    let server = TestServer::start_with(|_, store| {
        store.retention.changes_max_age = Some(Duration::from_millis(1));
    })
    .await;
    for n in 1..=3 {
        server.put("/v1/old/a", &json!({"n": n}), &[]).await;
    }
    let report = server
        .compact_until(|total| total["oldest_revision"] == 3)
        .await;
    assert_eq!(report["changes_removed"], 3, "{report}");
    let gone = problem(
        server.get("/v1/_changes?since=0", &[]).await,
        410,
        "history-compacted",
    )
    .await;
    assert_eq!(gone["oldest"], 3);
    let stream = server
        .get("/v1/_changes?since=1", &[("accept", "text/event-stream")])
        .await;
    problem(stream, 410, "history-compacted").await;
    let resumed = server
        .get(
            "/v1/_changes",
            &[("accept", "text/event-stream"), ("last-event-id", "2")],
        )
        .await;
    problem(resumed, 410, "history-compacted").await;
    // From the oldest retained revision on, the feed answers.
    let ok = server.get_json("/v1/_changes?since=3").await;
    assert_eq!(ok["last_revision"], 3);
    server.put("/v1/old/a", &json!({"n": 4}), &[]).await;
    let next = server.get_json("/v1/_changes?since=3").await;
    let revisions: HashSet<u64> = next["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, HashSet::from([4]));
}

#[tokio::test]
async fn streams_end_when_the_server_stops() {
    let server = TestServer::start().await;
    let mut streams = Vec::new();
    for path in ["/v1/_changes", "/v1/any/thing/watch"] {
        let response = server
            .client
            .get(server.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        streams.push(sse_events(response));
    }
    server.stop().await;
    for mut events in streams {
        let ended =
            tokio::time::timeout(WAIT, async { while events.recv().await.is_some() {} }).await;
        assert!(ended.is_ok(), "the stream closed");
    }
}

/// The server holds at most `max_streams` SSE streams and long polls open: one
/// more, of any kind, is answered at once with 503 `too-many-streams` and
/// `Retry-After`; once a stream closes its place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_cap_are_refused_until_one_closes() {
    let server = TestServer::start_with(|config, _| {
        config.max_streams = 2;
        // Heartbeats are how a server notices that a stream's client left.
        config.sse_keepalive = std::time::Duration::from_millis(50);
    })
    .await;
    let sse = |path: &str| {
        server
            .client
            .get(server.url(path))
            .header("accept", "text/event-stream")
            .send()
    };
    let first = sse("/v1/_changes").await.unwrap();
    assert_eq!(first.status(), 200);
    let second = sse("/v1/_conflicts/stream").await.unwrap();
    assert_eq!(second.status(), 200);

    let long_poll = server
        .client
        .get(server.url("/v1/_changes?feed=longpoll&timeout_ms=20000"))
        .send();
    let started = std::time::Instant::now();
    for refused in [
        sse("/v1/_changes").await.unwrap(),
        sse("/v1/_conflicts/stream").await.unwrap(),
        sse("/v1/notes/n/watch").await.unwrap(),
        long_poll.await.unwrap(),
    ] {
        assert!(refused.headers().contains_key("retry-after"));
        let body = problem(refused, 503, "unavailable").await;
        assert_eq!(body["reason"], "too-many-streams", "{body}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "a refusal waited"
    );

    drop(first);
    let started = std::time::Instant::now();
    loop {
        let again = sse("/v1/_changes").await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 503);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the closed stream's place never came free"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(second);
}

/// Each principal holds at most `max_streams_per_principal` streams open, so
/// one client cannot take every place: another principal still gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_principal_cannot_take_every_stream() {
    let server = TestServer::start_with(|config, _| {
        config.max_streams_per_principal = 2;
    })
    .await;
    let client = &server.client;
    let admin = crate::auth::make_key(client, &server.base, None, "root", &["admin"]).await;
    let alice = crate::auth::make_key(client, &server.base, Some(&admin), "alice", &["read"]).await;
    let bob = crate::auth::make_key(client, &server.base, Some(&admin), "bob", &["read"]).await;
    let sse = |key: &str| {
        client
            .get(server.url("/v1/_changes"))
            .header("accept", "text/event-stream")
            .bearer_auth(key)
            .send()
    };
    let held = [sse(&alice).await.unwrap(), sse(&alice).await.unwrap()];
    assert!(held.iter().all(|r| r.status() == 200));
    let refused = sse(&alice).await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    let body = problem(refused, 503, "unavailable").await;
    assert_eq!(body["reason"], "too-many-streams", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("principal")),
        "{body}"
    );
    let other = sse(&bob).await.unwrap();
    assert_eq!(other.status(), 200, "another principal is still served");
}
