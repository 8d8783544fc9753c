//! The Rust client against a real server: every operation, `update` under
//! contention, back-off that honours `Retry-After`, and change streams that resume
//! after the server drops them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::StreamExt;
use serde_json::{Value, json};
use truce_client::{ChangesOptions, Client, Error, ListOptions, Outcome, ProblemKind, RetryPolicy};

use crate::common::TestServer;

fn client(server: &TestServer) -> Client {
    Client::new(&server.base).unwrap()
}

#[tokio::test]
async fn every_operation() {
    let server = TestServer::start().await;
    let client = client(&server);

    let created = client
        .put("notes", "a", &json!({"title": "milk", "done": false}))
        .if_none_match_any()
        .send()
        .await
        .unwrap();
    assert_eq!((created.outcome, created.version), (Outcome::Created, 1));
    let again = client
        .put("notes", "a", &json!({}))
        .if_none_match_any()
        .send()
        .await;
    assert_eq!(
        again.unwrap_err().kind(),
        Some(ProblemKind::PreconditionFailed)
    );

    let read = client.get::<Value>("notes", "a").await.unwrap();
    assert_eq!(read.value, json!({"title": "milk", "done": false}));
    assert_eq!(
        (read.etag.clone(), read.version, read.revision),
        (created.etag.clone(), 1, 1)
    );

    let patched = client
        .merge_patch("notes", "a", &json!({"done": true}))
        .if_match(&read.etag)
        .send()
        .await
        .unwrap();
    assert_eq!((patched.outcome, patched.version), (Outcome::Updated, 2));
    assert_eq!(patched.body, json!({"title": "milk", "done": true}));

    // A stale ETag: typed, with the current state.
    let stale = client
        .put("notes", "a", &json!({"title": "x"}))
        .if_match(&read.etag)
        .send()
        .await
        .unwrap_err();
    assert!(stale.is_conflict());
    assert_eq!(stale.kind(), Some(ProblemKind::PreconditionFailed));
    let problem = stale.problem().unwrap();
    assert_eq!(problem.current_version, Some(2));
    assert_eq!(problem.current_etag.as_deref(), Some(patched.etag.as_str()));

    let conflict = client
        .put("notes", "a", &json!({}))
        .if_version(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(conflict.kind(), Some(ProblemKind::VersionConflict));

    let json_patched = client
        .json_patch(
            "notes",
            "a",
            &json!([{"op": "add", "path": "/tags", "value": ["home"]}]),
        )
        .if_version(2)
        .send()
        .await
        .unwrap();
    assert_eq!(json_patched.version, 3);

    let created_by_server = client
        .create("notes", &json!({"title": "eggs"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created_by_server.outcome, Outcome::Created);

    let page = client
        .list(
            "notes",
            &ListOptions {
                limit: Some(1),
                ..ListOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = client
        .list(
            "notes",
            &ListOptions {
                cursor: page.next.clone(),
                ..ListOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next, None);

    let old = client.get_version::<Value>("notes", "a", 1).await.unwrap();
    assert_eq!(old.value["done"], false);
    assert_eq!(old.etag, created.etag);

    let history = client.versions("notes", "a", None, None).await.unwrap();
    let numbers: Vec<u64> = history.items.iter().map(|e| e.version).collect();
    assert_eq!(numbers, [3, 2, 1]);
    assert_eq!(history.items[0].op, "patch");

    let diff = client.diff("notes", "a", Some(1), Some(2)).await.unwrap();
    assert_eq!(
        diff,
        json!([{"op": "replace", "path": "/done", "value": true}])
    );

    let reverted = client.revert("notes", "a", 1).send().await.unwrap();
    assert_eq!(reverted.version, 4);
    assert_eq!(
        client.get::<Value>("notes", "a").await.unwrap().value["done"],
        false
    );

    let deleted = client.delete("notes", "a").send().await.unwrap();
    assert_eq!((deleted.outcome, deleted.version), (Outcome::Deleted, 5));
    let gone = client.get::<Value>("notes", "a").await.unwrap_err();
    assert!(gone.is_not_found());
    assert_eq!(gone.problem().unwrap().body["version"], 5);

    let feed = client
        .changes_page(&ChangesOptions::default())
        .await
        .unwrap();
    assert_eq!(feed.changes.len(), 6);
    assert_eq!(client.head_revision().await.unwrap(), 6);

    let typed: truce_client::Versioned<Value> = client
        .get("notes", &created_by_server_id(&client).await)
        .await
        .unwrap();
    assert_eq!(typed.value["title"], "eggs");
}

async fn created_by_server_id(client: &Client) -> String {
    let page = client.list("notes", &ListOptions::default()).await.unwrap();
    page.items
        .into_iter()
        .find(|e| e.doc["title"] == "eggs")
        .map(|e| e.id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_never_loses_an_increment() {
    let server = TestServer::start().await;
    let client = Client::builder(&server.base)
        .retry(RetryPolicy {
            max_attempts: 200,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    client
        .put("counters", "hits", &json!({"n": 0}))
        .send()
        .await
        .unwrap();
    let tasks = 16;
    let each = 10;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..each {
                client
                    .update("counters", "hits", |doc: &mut Value| {
                        doc["n"] = json!(doc["n"].as_u64().unwrap() + 1);
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let total = (tasks * each) as u64;
    let counter = client.get::<Value>("counters", "hits").await.unwrap();
    assert_eq!(counter.value["n"], total);
    assert_eq!(counter.version, total + 1, "one version per increment");
    // Every refusal left a record, and every retry closed the one before it: the
    // loop leaves none open.
    let all = server.get_json("/v1/_conflicts?limit=1000").await;
    assert!(
        !all["items"].as_array().unwrap().is_empty(),
        "16 clients on one document were never refused"
    );
    let open = server.get_json("/v1/_conflicts?status=open").await;
    assert_eq!(open["items"], json!([]), "records left open: {open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_gives_up_with_the_last_error() {
    let server = TestServer::start().await;
    let client = Client::builder(&server.base)
        .retry(RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    client
        .put("c", "racy", &json!({"n": 0}))
        .send()
        .await
        .unwrap();
    // Every attempt loses: the closure itself writes first, as another client would.
    let sneaky = client.clone();
    let runtime = tokio::runtime::Handle::current();
    let result = client
        .update("c", "racy", |doc: &mut Value| {
            let n = doc["n"].as_u64().unwrap();
            doc["n"] = json!(n + 1);
            tokio::task::block_in_place(|| {
                runtime
                    .block_on(sneaky.put("c", "racy", &json!({"n": n + 100})).send())
                    .unwrap();
            });
        })
        .await;
    match result {
        Err(Error::GaveUp { attempts, last }) => {
            assert_eq!(attempts, 3);
            assert_eq!(last.kind(), Some(ProblemKind::PreconditionFailed));
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
}

/// A server that answers 429 (with `Retry-After: 1`) until `throttled` requests were
/// refused, then a document.
async fn throttling_server(throttled: usize) -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let app = Router::new().route(
        "/v1/c/a",
        get(move || {
            let counter = Arc::clone(&counter);
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < throttled {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1"), ("content-type", "application/problem+json")],
                        r#"{"type":"/problems/rate-limited","title":"Rate limited","status":429,"detail":"slow down"}"#,
                    )
                        .into_response()
                } else {
                    (
                        StatusCode::OK,
                        [("etag", "\"1-x\""), ("truce-version", "1"), ("truce-revision", "1")],
                        r#"{"ok":true}"#,
                    )
                        .into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (base, seen) = throttling_server(1).await;
    let client = Client::new(&base).unwrap();
    let started = Instant::now();
    let doc = client.get::<Value>("c", "a").await.unwrap();
    let waited = started.elapsed();
    assert_eq!(doc.value, json!({"ok": true}));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(10));

    // Always throttled: the client gives up with the problem it got.
    let (base, _) = throttling_server(usize::MAX).await;
    let client = Client::builder(&base)
        .retry(RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let error = client.get::<Value>("c", "a").await.unwrap_err();
    assert_eq!(error.kind(), Some(ProblemKind::RateLimited));
    assert!(matches!(error, Error::GaveUp { attempts: 2, .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_resumes_after_the_server_drops_it() {
    let server = TestServer::start().await;
    let client = Client::builder(&server.base)
        .retry(RetryPolicy {
            max_attempts: 1000,
            max_delay: Duration::from_millis(100),
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let mut stream = Box::pin(client.changes(ChangesOptions::default()));
    for n in 1..=3 {
        client
            .put("feed", &format!("d{n}"), &json!({"n": n}))
            .send()
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let change = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(change.revision);
    }
    // The server goes away (ending the stream) and comes back on the same address.
    let server = server.restart().await;
    for n in 4..=5 {
        client
            .put("feed", &format!("d{n}"), &json!({"n": n}))
            .send()
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let change = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(change.revision);
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);

    // A watch of one document only sees that document.
    let mut watch = Box::pin(client.watch("feed", "d1", Some(0)));
    client
        .put("feed", "d2", &json!({"n": 22}))
        .send()
        .await
        .unwrap();
    client
        .put("feed", "d1", &json!({"n": 11}))
        .send()
        .await
        .unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("a watch event within 10 s")
            .unwrap()
            .unwrap()
    };
    let first = next().await;
    let second = next().await;
    assert_eq!((first.id.as_str(), first.version), ("d1", 1));
    assert_eq!((second.id.as_str(), second.version), ("d1", 2));
    drop(server);
}

#[tokio::test]
async fn a_compacted_position_ends_the_stream_with_410() {
    let server = TestServer::start_with(|_, store| {
        store.retention.changes_max_age = Some(Duration::from_millis(1));
    })
    .await;
    let client = client(&server);
    for n in 0..3 {
        client
            .put("old", "a", &json!({"n": n}))
            .send()
            .await
            .unwrap();
    }
    server
        .compact_until(|total| total["oldest_revision"] == 3)
        .await;
    let mut stream = Box::pin(client.changes(ChangesOptions {
        since: Some(1),
        ..ChangesOptions::default()
    }));
    let error = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an answer within 10 s")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), Some(ProblemKind::HistoryCompacted));
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_stream_gives_up_when_the_server_stays_away() {
    // Nothing listens on port 1.
    let client = Client::builder("http://127.0.0.1:1")
        .retry(RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let mut stream = Box::pin(client.changes(ChangesOptions::default()));
    let error = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, Error::GaveUp { attempts: 3, .. }),
        "{error:?}"
    );
    assert!(stream.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_settings_merge_conflicts_and_the_conflict_stream() {
    let server = TestServer::start().await;
    let client = client(&server);

    // Settings: read (defaults), set guarded by their ETag, a stale tag refused.
    let defaults = client.collection_settings("docs").await.unwrap();
    assert_eq!(defaults.version, 0);
    assert_eq!(defaults.settings["conflict_policy"], "reject");
    let merge = client
        .set_collection_settings(
            "docs",
            &json!({"conflict_policy": "merge"}),
            Some(&defaults.etag),
        )
        .await
        .unwrap();
    assert_eq!(
        (merge.version, merge.settings["conflict_policy"].clone()),
        (1, json!("merge"))
    );
    let stale = client
        .set_collection_settings("docs", &json!({}), Some(&defaults.etag))
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), Some(ProblemKind::PreconditionFailed));

    // The conflict stream, from the first event (a stream connects when first
    // polled, so "from now" would start after the writes below).
    let mut events = Box::pin(client.conflict_events(Some("docs"), None, Some(0)));
    let base = client
        .put("docs", "a", &json!({"title": "a", "body": "x"}))
        .send()
        .await
        .unwrap();
    client
        .put("docs", "a", &json!({"title": "b", "body": "x"}))
        .send()
        .await
        .unwrap();
    // An overlapping stale write: a typed merge conflict naming its record.
    let refused = client
        .put("docs", "a", &json!({"title": "c", "body": "x"}))
        .if_match(&base.etag)
        .send()
        .await
        .unwrap_err();
    let merge_conflict = refused.problem().unwrap().merge_conflict().unwrap();
    assert_eq!(merge_conflict.base_version, 1);
    assert_eq!(merge_conflict.paths, ["/title"]);
    assert_eq!(merge_conflict.overlaps[0].ours, Some(json!("c")));
    assert_eq!(merge_conflict.overlaps[0].theirs, Some(json!("b")));
    let cid = merge_conflict.conflict_id.unwrap();
    // A disjoint stale write merges.
    client
        .put("docs", "a", &json!({"title": "a", "body": "y"}))
        .if_match(&base.etag)
        .send()
        .await
        .unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap()
    };
    let detected = next().await;
    assert_eq!(
        (
            detected.event.as_str(),
            detected.conflict_id.as_str(),
            detected.kind.as_str()
        ),
        ("conflict.detected", cid.as_str(), "merge-conflict")
    );
    let merged = next().await;
    assert_eq!(
        (merged.event.as_str(), merged.status.as_str()),
        ("conflict.resolved", "auto_merged")
    );
    assert!(merged.position > detected.position);
    assert_eq!(merged.resource.id, "a");
}

/// A front for `upstream` that passes every request on but, for the first
/// write, answers only after `delay` (longer than the client waits): the write
/// lands, its answer is lost to the client.
async fn slow_first_answer(upstream: String, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let writes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&writes);
    let http = crate::common::client();
    let app = Router::new().fallback(move |request: axum::extract::Request| {
        let (http, upstream, seen) = (http.clone(), upstream.clone(), Arc::clone(&seen));
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let url = format!("{upstream}{}", parts.uri);
            let mut forward = http.request(parts.method.clone(), url).body(body);
            for (name, value) in &parts.headers {
                if name != "host" {
                    forward = forward.header(name, value);
                }
            }
            let answer = forward.send().await.expect("upstream");
            let first_write =
                parts.method != axum::http::Method::GET && seen.fetch_add(1, Ordering::SeqCst) == 0;
            let status = answer.status().as_u16();
            let headers: Vec<(String, String)> = answer
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let bytes = answer.bytes().await.unwrap_or_default();
            if first_write {
                tokio::time::sleep(delay).await;
            }
            let mut response = (StatusCode::from_u16(status).unwrap(), bytes).into_response();
            for (name, value) in headers {
                if let (Ok(n), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(name.as_bytes()),
                    axum::http::HeaderValue::from_str(&value),
                ) {
                    response.headers_mut().insert(n, v);
                }
            }
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, writes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_retried_and_replayed_not_applied_twice() {
    let server = TestServer::start().await;
    let (front, writes) = slow_first_answer(server.base.clone(), Duration::from_secs(3)).await;
    let client = Client::builder(&front)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let written = client
        .create("orders", &json!({"item": "tea"}))
        .send()
        .await
        .expect("the retry gets the first attempt's answer");
    assert_eq!(written.outcome, Outcome::Created);
    assert!(
        writes.load(Ordering::SeqCst) >= 2,
        "the write was sent again"
    );
    let page: Value = server.get_json("/v1/orders").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(written.version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ratelimit_fields_pace_the_client_before_it_is_refused() {
    let server = TestServer::start_with(|config, _| {
        config.rate_writes = Some("3/s".parse().expect("rate"));
    })
    .await;
    // No retries: a 429 would be an error.
    let client = Client::builder(&server.base)
        .retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let started = Instant::now();
    for n in 0..7 {
        client
            .put("notes", &format!("n{n}"), &json!({"n": n}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("write {n} was refused: {e}"));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "7 writes at 3/s took {:?}",
        started.elapsed()
    );
}
