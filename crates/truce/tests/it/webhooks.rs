//! SPEC §7 webhooks: subscriptions, deliveries to a loopback receiver signed with
//! HMAC-SHA256, retries while it fails, the delivery log, and no loss across a
//! restart (at least once, one `Truce-Delivery-Id` per event).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;
use truce_engine::RetryRule;

use crate::common::{TestServer, header, problem};

const WAIT: Duration = Duration::from_secs(20);

/// One post the receiver got.
#[derive(Debug, Clone)]
struct Received {
    delivery_id: String,
    signature: String,
    body: Bytes,
}

/// A loopback receiver that fails its first `failures` posts with 500.
async fn receiver(
    failures: usize,
) -> (String, mpsc::UnboundedReceiver<Received>, Arc<AtomicUsize>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let counter = Arc::clone(&counter);
            async move {
                let text = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let _ = tx.send(Received {
                    delivery_id: text("truce-delivery-id"),
                    signature: text("truce-signature"),
                    body,
                });
                if counter.fetch_add(1, Ordering::SeqCst) < failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx, seen)
}

/// Verifies `Truce-Signature: t=...,v1=...` over `{t}.{body}`, independently of the
/// server's code.
fn verify(secret: &str, received: &Received) -> bool {
    let Some((t, v1)) = received
        .signature
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&received.body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex == v1
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery in time")
        .expect("receiver running")
}

/// A fast retry rule for tests.
fn quick(server: &mut truce_server::ServerConfig) {
    server.webhook_retry = RetryRule {
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        retry_for: Duration::from_secs(60),
    };
}

async fn subscribe(server: &TestServer, body: Value) -> reqwest::Response {
    server
        .client
        .post(server.url("/v1/_subscriptions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Makes a stale write (412), returning its conflict id.
async fn conflict(server: &TestServer, path: &str) -> String {
    let v1 = server.create(path, &json!({"n": 1})).await;
    server.put(path, &json!({"n": 2}), &[]).await;
    let refused = problem(
        server
            .put(path, &json!({"n": 3}), &[("if-match", &v1)])
            .await,
        412,
        "precondition-failed",
    )
    .await;
    refused["conflict_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn subscriptions_are_checked_kept_without_their_secret_and_deleted() {
    let server = TestServer::start().await;
    let refused = problem(
        subscribe(&server, json!({"url": "file:///etc/passwd", "secret": ""})).await,
        422,
        "validation-failed",
    )
    .await;
    let pointers: Vec<&str> = refused["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/url", "/secret"]);
    let created = subscribe(
        &server,
        json!({"url": "http://127.0.0.1:9/hook", "secret": "s3cret", "collection": "a"}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let location = header(&created, "location");
    let body: Value = created.json().await.unwrap();
    assert!(body.get("secret").is_none());
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    let read = server.get_json(&location).await;
    assert_eq!(read, body);
    assert!(!read.to_string().contains("s3cret"));
    let listed = server.get_json("/v1/_subscriptions").await;
    assert_eq!(listed["items"][0]["id"], body["id"]);
    let deleted = server
        .client
        .delete(server.url(&location))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    problem(server.get(&location, &[]).await, 404, "not-found").await;
}

#[tokio::test]
async fn deliveries_are_signed_retried_and_logged() {
    let server = TestServer::start_with(|server, _| quick(server)).await;
    let (url, mut posts, _) = receiver(2).await;
    let created = subscribe(
        &server,
        json!({"url": url, "secret": "topsecret", "events": ["conflict.detected"], "collection": "a"}),
    )
    .await;
    let sid = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // An event of another collection is not delivered; this one is.
    conflict(&server, "/v1/b/doc").await;
    let cid = conflict(&server, "/v1/a/doc").await;

    let attempts = [
        next(&mut posts).await,
        next(&mut posts).await,
        next(&mut posts).await,
    ];
    for attempt in &attempts {
        assert!(verify("topsecret", attempt), "bad signature: {attempt:?}");
        assert_eq!(attempt.delivery_id, attempts[0].delivery_id);
        assert_eq!(attempt.body, attempts[0].body);
    }
    let event: Value = serde_json::from_slice(&attempts[0].body).unwrap();
    assert_eq!(event["event"], "conflict.detected");
    assert_eq!(event["conflict_id"], cid.as_str());
    // A wrong secret does not verify.
    assert!(!verify("guess", &attempts[0]));

    // The log: two failures, then the delivery; nothing left waiting.
    // (The third post is answered before its attempt is committed: read the log
    // until the commit shows, within the test's bound.)
    let log = tokio::time::timeout(WAIT, async {
        loop {
            let log = server
                .get_json(&format!("/v1/_subscriptions/{sid}/deliveries"))
                .await;
            if log["items"].as_array().unwrap().len() == 3 && log["pending"] == 0 {
                return log;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the delivery log complete in time");
    let outcomes: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "failed", "delivered"]);
    assert_eq!(log["items"][0]["status"], 500);
    assert_eq!(log["items"][2]["attempt"], 3);
    // Nothing more arrives (the other collection's event was not for it).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), posts.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn nothing_waiting_is_lost_across_a_restart() {
    // The receiver is down (refuses connections) while events happen.
    let server = TestServer::start_with(|server, _| quick(server)).await;
    let parked = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = parked.local_addr().unwrap();
    drop(parked);
    let url = format!("http://{address}/hook");
    subscribe(&server, json!({"url": url, "secret": "k"})).await;
    let mut cids = Vec::new();
    for n in 0..3 {
        cids.push(conflict(&server, &format!("/v1/r/doc{n}")).await);
    }
    let server = server.restart().await;
    // Now it comes up on the same address, answering 204.
    let (tx, mut posts) = mpsc::unbounded_channel::<Received>();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Received {
                    delivery_id: headers["truce-delivery-id"].to_str().unwrap().to_owned(),
                    signature: headers["truce-signature"].to_str().unwrap().to_owned(),
                    body,
                });
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut delivered = std::collections::BTreeMap::new();
    while delivered.len() < 3 {
        let post = next(&mut posts).await;
        assert!(verify("k", &post));
        let event: Value = serde_json::from_slice(&post.body).unwrap();
        // A repeat (at least once) carries the same id and the same content.
        let previous = delivered.insert(post.delivery_id.clone(), event.clone());
        assert!(previous.is_none_or(|p| p == event));
    }
    let mut got: Vec<String> = delivered
        .values()
        .map(|e| e["conflict_id"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    cids.sort();
    assert_eq!(got, cids);
    drop(server);
}

#[tokio::test]
async fn the_delivery_log_ages_out_with_conflict_retention() {
    let server = TestServer::start_with(|server, store| {
        quick(server);
        store.conflict_retention.max_age = Duration::from_millis(200);
    })
    .await;
    let (url, mut posts, _) = receiver(0).await;
    let created = subscribe(&server, json!({"url": url, "secret": "k"})).await;
    let sid = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    conflict(&server, "/v1/old/doc").await;
    next(&mut posts).await;
    let log_path = format!("/v1/_subscriptions/{sid}/deliveries");
    tokio::time::timeout(WAIT, async {
        // Logged once the attempt commits; then gone once compaction passes its age.
        let mut seen = false;
        loop {
            let log = server.get_json(&log_path).await;
            let entries = log["items"].as_array().unwrap().len();
            seen |= entries == 1;
            if seen && entries == 0 {
                return;
            }
            server.compact_until(|_| true).await;
        }
    })
    .await
    .expect("the log entry removed in time");
}

/// Side records committed on condition that another record exists (the
/// subscription a replace or a delivery attempt belongs to) are not written
/// once it is gone, so a subscription deleted while a handler or the delivery
/// worker was between its read and its commit stays deleted; while it
/// exists they are written. On the store itself, so the race is not needed to
/// see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_records_requiring_a_removed_record_are_not_written() {
    use truce_engine::{EngineError, SideCommit, SideTable, SideWrite};
    let (store, _dir) = crate::common::backend_store().await;
    let write = |table, key: &[u8], value: Option<&'static [u8]>| SideWrite {
        table,
        key: key.to_vec(),
        value: value.map(bytes::Bytes::from_static),
    };
    let subscription = write(SideTable::Subscriptions, b"s1", Some(b"v1"));
    store
        .commit_side(SideCommit::new(vec![subscription.clone()]))
        .await
        .expect("create");
    store
        .commit_side(SideCommit::new(vec![write(
            SideTable::Subscriptions,
            b"s1",
            None,
        )]))
        .await
        .expect("delete");

    let late = SideCommit::new(vec![
        write(SideTable::Subscriptions, b"s1", Some(b"v2")),
        write(SideTable::Deliveries, b"s1\0log", Some(b"attempt")),
    ])
    .while_present(SideTable::Subscriptions, b"s1".to_vec());
    let refused = store.commit_side(late.clone()).await;
    assert!(
        matches!(refused, Err(EngineError::NotFound { .. })),
        "{refused:?}"
    );
    for (table, key) in [
        (SideTable::Subscriptions, &b"s1"[..]),
        (SideTable::Deliveries, &b"s1\0log"[..]),
    ] {
        let found = store.side_record(table, key).await.expect("read");
        assert_eq!(found, None, "{table:?} came back");
    }

    store
        .commit_side(SideCommit::new(vec![subscription]))
        .await
        .expect("create again");
    store
        .commit_side(late)
        .await
        .expect("written while present");
    let found = store
        .side_record(SideTable::Deliveries, b"s1\0log")
        .await
        .expect("read");
    assert_eq!(found.as_deref(), Some(&b"attempt"[..]));
}
