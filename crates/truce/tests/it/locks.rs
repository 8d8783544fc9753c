//! Pessimistic locks (SPEC §4), as a plain HTTP client sees them: grants with
//! tokens and fences, 423 for everyone else, writes fenced by the token, FIFO
//! hand-off, expiry, restarts, breaking, the queue's bound and bad input.

use std::time::Duration;

use reqwest::{Client, Response};
use serde_json::{Value, json};
use truce_engine::{LockGroups, ResourceKey};

use crate::common::{TestServer, header, next_event, problem, sse_events};

/// `POST {url}/lock` with this body.
pub(crate) async fn acquire(client: &Client, doc_url: &str, body: Value) -> Response {
    client
        .post(format!("{doc_url}/lock"))
        .json(&body)
        .send()
        .await
        .expect("acquire")
}

/// The token of a grant (checked against its `Lock-Token` header).
pub(crate) async fn token_of(granted: Response) -> (String, u64) {
    assert_eq!(granted.status(), 201);
    let header_token = header(&granted, "lock-token");
    let body: Value = granted.json().await.expect("lock body");
    assert_eq!(body["token"], header_token.as_str());
    (header_token, body["fence"].as_u64().expect("fence"))
}

/// `DELETE {url}/lock` with the token.
pub(crate) async fn release(client: &Client, doc_url: &str, token: &str) -> Response {
    client
        .delete(format!("{doc_url}/lock"))
        .header("lock-token", token)
        .send()
        .await
        .expect("release")
}

async fn put(client: &Client, doc_url: &str, body: Value, headers: &[(&str, &str)]) -> Response {
    let mut request = client.put(doc_url).json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("put")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_granted_once_and_fences_every_write() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/accounts/a1");
    let created = put(client, &doc, json!({"n": 0}), &[]).await;
    let etag = header(&created, "etag");

    let (token, fence) =
        token_of(acquire(client, &doc, json!({"ttl_ms": 60000, "owner": "job 7"})).await).await;
    assert_eq!(fence, 1);
    let refused = acquire(client, &doc, json!({})).await;
    let seconds: u64 = header(&refused, "retry-after")
        .parse()
        .expect("Retry-After");
    assert!((1..=60).contains(&seconds));
    let body = problem(refused, 423, "locked").await;
    assert_eq!(body["holder"]["owner"], "job 7");
    assert!(body["expires_at"].is_string());
    let shown: Value = server.get_json("/v1/accounts/a1/lock").await;
    assert_eq!(
        (shown["fence"].as_u64(), shown.get("token")),
        (Some(1), None)
    );

    // Without the token: 423, kept as a conflict record like any refusal.
    let unfenced = put(client, &doc, json!({"n": 1}), &[]).await;
    let body = problem(unfenced, 423, "locked").await;
    assert!(body["conflict_id"].is_string(), "{body}");
    // Preconditions come first: a stale If-Match is 412 even with the token.
    let stale = put(
        client,
        &doc,
        json!({"n": 1}),
        &[("lock-token", &token), ("if-match", "\"9-x\"")],
    )
    .await;
    assert_eq!(stale.status(), 412);
    // With the token (and a true If-Match): written.
    let fenced = put(
        client,
        &doc,
        json!({"n": 1}),
        &[("lock-token", &token), ("if-match", &etag)],
    )
    .await;
    assert_eq!(fenced.status(), 200);

    assert_eq!(release(client, &doc, &token).await.status(), 204);
    // The lease is gone: its token can never write again; without one, anyone can.
    let late = put(client, &doc, json!({"n": 2}), &[("lock-token", &token)]).await;
    problem(late, 423, "locked").await;
    assert_eq!(put(client, &doc, json!({"n": 2}), &[]).await.status(), 200);
    let (_, next_fence) = token_of(acquire(client, &doc, json!({})).await).await;
    assert_eq!(next_fence, 2, "fences grow across locks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lock_requests_get_their_problems() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/accounts/a1");
    for ttl in [0, 999, 3_600_001] {
        let refused = acquire(client, &doc, json!({"ttl_ms": ttl})).await;
        let body = problem(refused, 422, "validation-failed").await;
        assert!(
            body["detail"].as_str().unwrap_or("").contains("1000"),
            "{body}"
        );
    }
    problem(
        acquire(client, &doc, json!({"wait_ms": 300_001})).await,
        422,
        "validation-failed",
    )
    .await;
    problem(
        acquire(client, &doc, json!({"ttl": 5})).await,
        400,
        "malformed-request",
    )
    .await;
    let malformed = put(client, &doc, json!({}), &[("lock-token", "nope")]).await;
    problem(malformed, 400, "malformed-request").await;
    let (token, _) = token_of(acquire(client, &doc, json!({})).await).await;
    let other = "0123456789abcdef0123456789abcdef";
    let renew = client
        .put(format!("{doc}/lock"))
        .header("lock-token", other)
        .send()
        .await
        .unwrap();
    problem(renew, 423, "locked").await;
    problem(release(client, &doc, other).await, 423, "locked").await;
    let renewed = client
        .put(format!("{doc}/lock"))
        .header("lock-token", &token)
        .json(&json!({"ttl_ms": 90_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    assert_eq!(header(&renewed, "lock-token"), token);
    problem(
        server.get("/v1/accounts/free/lock", &[]).await,
        404,
        "not-found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_order_and_expiry_hands_the_lock_on() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/jobs/j1");
    let (holder, first) = token_of(acquire(client, &doc, json!({"ttl_ms": 60000})).await).await;
    let mut waiting = Vec::new();
    for n in 0..3u64 {
        let (client, doc) = (client.clone(), doc.clone());
        waiting.push(tokio::spawn(async move {
            let granted = acquire(
                &client,
                &doc,
                json!({"ttl_ms": 1000, "wait_ms": 30000, "owner": format!("w{n}")}),
            )
            .await;
            let at = std::time::Instant::now();
            let (token, fence) = token_of(granted).await;
            (token, fence, at)
        }));
        // The next one queues only once this one is in the queue.
        let mut queued = false;
        for _ in 0..500 {
            let shown: Value = server.get_json("/v1/jobs/j1/lock").await;
            if shown["waiting"] == n + 1 {
                queued = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(queued, "waiter {n} never showed in the queue");
    }
    assert_eq!(release(client, &doc, &holder).await.status(), 204);
    let mut waiting = waiting.into_iter();
    // The first waiter holds it and never releases: its lease (1 s) runs out
    // and the lock passes to the second.
    let (_, fence0, got0) = waiting.next().expect("w0").await.expect("w0");
    assert_eq!(fence0, first + 1);
    let (token1, fence1, got1) = waiting.next().expect("w1").await.expect("w1");
    assert_eq!(fence1, first + 2);
    assert!(
        got1.duration_since(got0) >= Duration::from_millis(900),
        "handed on before the lease ran out"
    );
    assert_eq!(release(client, &doc, &token1).await.status(), 204);
    let (token2, fence2, _) = waiting.next().expect("w2").await.expect("w2");
    assert_eq!(fence2, first + 3);
    assert_eq!(release(client, &doc, &token2).await.status(), 204);
}

/// `truce_lock_waiter_wakeups_total` from `/metrics` (0 before the first).
async fn waiter_wakeups(server: &TestServer) -> u64 {
    let text = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix("truce_lock_waiter_wakeups_total "))
        .map_or(0, |n| n.trim().parse::<f64>().expect("a count") as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_sleeps_through_other_locks_changing() {
    let server = TestServer::start().await;
    let client = &server.client;
    let mine = ResourceKey::parse("jobs", "mine").expect("key");
    // A resource whose lock falls into another wake-up group than `mine`'s.
    let other = (0..200)
        .map(|n| format!("other{n}"))
        .find(|id| {
            LockGroups::of(&ResourceKey::parse("jobs", id).expect("key")) != LockGroups::of(&mine)
        })
        .expect("ids spread over the groups");
    let (doc, other_doc) = (
        server.url("/v1/jobs/mine"),
        server.url(&format!("/v1/jobs/{other}")),
    );
    let (holder, _) = token_of(acquire(client, &doc, json!({"ttl_ms": 60000})).await).await;
    let waiter = {
        let (client, doc) = (client.clone(), doc.clone());
        tokio::spawn(async move { acquire(&client, &doc, json!({"wait_ms": 30000})).await })
    };
    let mut queued = false;
    for _ in 0..500 {
        if server.get_json("/v1/jobs/mine/lock").await["waiting"] == 1 {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(queued, "the waiter never showed in the queue");

    // 60 changes of the other lock.
    let before = waiter_wakeups(&server).await;
    for _ in 0..30 {
        let (token, _) = token_of(acquire(client, &other_doc, json!({})).await).await;
        assert_eq!(release(client, &other_doc, &token).await.status(), 204);
    }
    let woken = waiter_wakeups(&server).await - before;
    // Woken on every lock change, it would have looked 60 times. (Across
    // PostgreSQL nodes a catch-up that outruns a notification wakes every
    // group once, hence not exactly zero there.)
    assert!(woken < 20, "the waiter woke {woken} times for another lock");

    // Its own lock's change wakes it, and it gets the lock.
    assert_eq!(release(client, &doc, &holder).await.status(), 204);
    let granted = waiter.await.expect("waiter");
    token_of(granted).await;
    assert!(waiter_wakeups(&server).await > before + woken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_refused_once_its_lease_ran_out() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/jobs/j2");
    put(client, &doc, json!({"owner": "nobody"}), &[]).await;
    let (paused, _) = token_of(acquire(client, &doc, json!({"ttl_ms": 1000})).await).await;
    // Another client waits for it and gets it when the lease runs out.
    let granted = acquire(client, &doc, json!({"ttl_ms": 30000, "wait_ms": 10000})).await;
    let (token, fence) = token_of(granted).await;
    assert_eq!(fence, 2);
    assert_eq!(
        put(
            client,
            &doc,
            json!({"owner": "second"}),
            &[("lock-token", &token)]
        )
        .await
        .status(),
        200
    );
    // The first holder wakes up and writes with its old token: refused.
    let late = put(
        client,
        &doc,
        json!({"owner": "first"}),
        &[("lock-token", &paused)],
    )
    .await;
    problem(late, 423, "locked").await;
    let current: Value = server.get_json("/v1/jobs/j2").await;
    assert_eq!(current["owner"], "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_clients_update_a_counter_only_under_the_lock() {
    let server = TestServer::start().await;
    let doc = server.url("/v1/counters/c1");
    put(&server.client, &doc, json!({"n": 0}), &[]).await;
    let (clients, rounds) = (32, 3);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, doc) = (server.client.clone(), doc.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let granted =
                    acquire(&client, &doc, json!({"ttl_ms": 30000, "wait_ms": 60000})).await;
                let (token, _) = token_of(granted).await;
                let read: Value = client.get(&doc).send().await.unwrap().json().await.unwrap();
                let n = read["n"].as_u64().expect("n");
                // No If-Match: only the lock keeps this read-modify-write safe.
                let written = put(
                    &client,
                    &doc,
                    json!({"n": n + 1}),
                    &[("lock-token", &token)],
                )
                .await;
                assert_eq!(written.status(), 200);
                assert_eq!(release(&client, &doc, &token).await.status(), 204);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let done: Value = server.get_json("/v1/counters/c1").await;
    assert_eq!(done["n"], clients * rounds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_live_locks_and_expires_dead_ones() {
    let server = TestServer::start().await;
    let client = server.client.clone();
    let live = server.url("/v1/jobs/live");
    let dead = server.url("/v1/jobs/dead");
    let (token, _) = token_of(acquire(&client, &live, json!({"ttl_ms": 600000})).await).await;
    token_of(acquire(&client, &dead, json!({"ttl_ms": 1000})).await).await;
    let server = server.restart().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let live = server.url("/v1/jobs/live");
    let dead = server.url("/v1/jobs/dead");
    problem(put(&client, &live, json!({}), &[]).await, 423, "locked").await;
    assert_eq!(
        put(&client, &live, json!({}), &[("lock-token", &token)])
            .await
            .status(),
        201
    );
    let (_, fence) = token_of(acquire(&client, &dead, json!({})).await).await;
    assert_eq!(fence, 2, "the dead lease expired; its fence is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaking_needs_admin_and_the_queue_is_bounded() {
    let server = TestServer::start().await;
    let client = &server.client;
    let admin = crate::auth::make_key(client, &server.base, None, "root", &["admin"]).await;
    let writer = crate::auth::make_key(client, &server.base, Some(&admin), "w", &["write"]).await;
    let doc = server.url("/v1/jobs/j3");
    let granted = client
        .post(format!("{doc}/lock"))
        .bearer_auth(&writer)
        .json(&json!({"ttl_ms": 600000}))
        .send()
        .await
        .unwrap();
    token_of(granted).await;
    let forced = |key: &str| {
        client
            .delete(format!("{doc}/lock?force=true"))
            .bearer_auth(key)
            .send()
    };
    let body = problem(forced(&writer).await.unwrap(), 403, "forbidden").await;
    assert_eq!(body["required_role"], "admin");

    // The queue holds 64 waiters; the 65th is refused at once.
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, doc, writer) = (client.clone(), doc.clone(), writer.clone());
        waiters.spawn(async move {
            client
                .post(format!("{doc}/lock"))
                .bearer_auth(&writer)
                .json(&json!({"ttl_ms": 1000, "wait_ms": 30000}))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    for _ in 0..1000 {
        let shown: Value = client
            .get(format!("{doc}/lock"))
            .bearer_auth(&writer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if shown["waiting"] == 64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let full = client
        .post(format!("{doc}/lock"))
        .bearer_auth(&writer)
        .json(&json!({"wait_ms": 1000}))
        .send()
        .await
        .unwrap();
    assert!(full.headers().contains_key("retry-after"));
    let body = problem(full, 503, "unavailable").await;
    assert_eq!(body["reason"], "lock-queue-full");

    // Broken by the admin: the first waiter gets it at once.
    assert_eq!(forced(&admin).await.unwrap().status(), 204);
    let first = waiters
        .join_next()
        .await
        .expect("a waiter")
        .expect("waiter");
    assert_eq!(first, 201);
    waiters.abort_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_events_reach_the_resources_watch_but_not_the_conflict_stream() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/jobs/w1");
    put(client, &doc, json!({"n": 0}), &[]).await;
    let open = |path: &str| {
        client
            .get(server.url(path))
            .header("accept", "text/event-stream")
            .send()
    };
    let mut watch = sse_events(open("/v1/jobs/w1/watch").await.unwrap());
    let mut conflicts = sse_events(open("/v1/_conflicts/stream").await.unwrap());
    let (token, fence) =
        token_of(acquire(client, &doc, json!({"ttl_ms": 60000, "owner": "nightly"})).await).await;
    problem(put(client, &doc, json!({"n": 9}), &[]).await, 423, "locked").await;
    let renewed = client
        .put(format!("{doc}/lock"))
        .header("lock-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    put(client, &doc, json!({"n": 1}), &[("lock-token", &token)]).await;
    assert_eq!(release(client, &doc, &token).await.status(), 204);

    let wait = Duration::from_secs(10);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let event = next_event(&mut watch, wait).await;
        let data: Value = serde_json::from_str(&event.data).expect("event data");
        if event.event.starts_with("lock.") {
            assert_eq!(
                (data["fence"].as_u64(), &data["owner"]),
                (Some(fence), &json!("nightly"))
            );
            assert!(
                data.get("token").is_none(),
                "no token on the stream: {data}"
            );
        }
        seen.push(event.event);
    }
    // Lock events in their order; changes and conflicts may come between
    // them in any order the stream woke up in.
    let locks: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|e| e.starts_with("lock."))
        .collect();
    assert_eq!(locks, ["lock.acquired", "lock.renewed", "lock.released"]);
    assert!(seen.iter().any(|e| e == "conflict.detected"), "{seen:?}");
    assert!(seen.iter().any(|e| e == "change"), "{seen:?}");
    // The conflict stream has the 423's record and nothing of the lock.
    let only = next_event(&mut conflicts, wait).await;
    assert_eq!(only.event, "conflict.detected");
    let data: Value = serde_json::from_str(&only.data).expect("event data");
    assert_eq!(data["type"], "locked");
    put(client, &doc, json!({"n": 2}), &[("if-match", "\"1-x\"")]).await;
    let next = next_event(&mut conflicts, wait).await;
    assert_eq!(next.event, "conflict.detected", "lock events are skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_lock_requests_replay_their_answers() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/jobs/k1");
    let keyed = |key: &'static str, body: Value| {
        client
            .post(format!("{doc}/lock"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = keyed("\"grab-1\"", json!({"ttl_ms": 60000})).await.unwrap();
    let (token, fence) = token_of(first).await;
    // The answer was lost: the retry gets the same grant, not a 423.
    let again = keyed("\"grab-1\"", json!({"ttl_ms": 60000})).await.unwrap();
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(token_of(again).await, (token.clone(), fence));

    // A waiter's grant, handed over later, is kept for its key too.
    let waiter = {
        let keyed = keyed("\"grab-2\"", json!({"ttl_ms": 60000, "wait_ms": 20000}));
        tokio::spawn(keyed)
    };
    let mut queued = false;
    for _ in 0..500 {
        let shown: Value = server.get_json("/v1/jobs/k1/lock").await;
        if shown["waiting"] == 1 {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(queued, "the waiter never queued");
    assert_eq!(release(client, &doc, &token).await.status(), 204);
    let (handed, next_fence) = token_of(waiter.await.unwrap().unwrap()).await;
    assert_eq!(next_fence, fence + 1);
    let replayed = keyed("\"grab-2\"", json!({"ttl_ms": 60000, "wait_ms": 20000}))
        .await
        .unwrap();
    assert_eq!(header(&replayed, "idempotent-replayed"), "true");
    assert_eq!(token_of(replayed).await, (handed, next_fence));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_write_to_a_locked_resource_needs_the_token() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/jobs/g1");
    put(client, &doc, json!({"n": 1}), &[]).await;
    put(client, &doc, json!({"n": 2}), &[]).await;
    // A conflict record to resolve later: a stale write before the lock.
    let refused = put(client, &doc, json!({"n": 9}), &[("if-match", "\"1-x\"")]).await;
    let cid = problem(refused, 412, "precondition-failed").await["conflict_id"]
        .as_str()
        .expect("conflict_id")
        .to_owned();
    let (token, _) = token_of(acquire(client, &doc, json!({})).await).await;

    let attempts = |token: Option<&str>| {
        let mut requests = vec![
            client
                .post(server.url(&format!("/v1/_conflicts/{cid}/resolve")))
                .json(&json!({"take": "ours"})),
            client
                .patch(&doc)
                .header("content-type", "application/merge-patch+json")
                .body(r#"{"n": 3}"#),
            client.post(format!("{doc}/revert")).json(&json!({"to": 1})),
            client.delete(&doc),
        ];
        if let Some(token) = token {
            requests = requests
                .into_iter()
                .map(|r| r.header("lock-token", token))
                .collect();
        }
        requests
    };
    for (n, request) in attempts(None).into_iter().enumerate() {
        let answer = request.send().await.expect("send");
        assert_eq!(answer.status(), 423, "attempt {n}");
        let body = problem(answer, 423, "locked").await;
        assert!(body["holder"]["fence"].is_u64(), "{body}");
    }
    for (n, request) in attempts(Some(&token)).into_iter().enumerate() {
        let answer = request.send().await.expect("send");
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "attempt {n} with the token: {status} {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_client_goes_away_leaves_the_queue() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/jobs/gone");
    let (token, _) = token_of(acquire(client, &doc, json!({})).await).await;
    let waiter = {
        let (client, doc) = (client.clone(), doc.clone());
        tokio::spawn(async move { acquire(&client, &doc, json!({"wait_ms": 60000})).await })
    };
    let waiting = |n: u64| {
        let server = &server;
        async move {
            for _ in 0..500 {
                let shown: Value = server.get_json("/v1/jobs/gone/lock").await;
                if shown["waiting"] == n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
    };
    assert!(waiting(1).await, "the waiter never queued");
    // The client gives up: its connection closes, and its place is given up.
    waiter.abort();
    assert!(
        waiting(0).await,
        "the place of a client that went away was kept"
    );
    assert_eq!(release(client, &doc, &token).await.status(), 204);
    problem(
        server.get("/v1/jobs/gone/lock", &[]).await,
        404,
        "not-found",
    )
    .await;
    // Breaks and expiries are counted.
    let (_, _) = token_of(acquire(client, &doc, json!({})).await).await;
    let broken = client
        .delete(format!("{doc}/lock?force=true"))
        .send()
        .await
        .expect("break");
    assert_eq!(broken.status(), 204);
    let metrics = server
        .get("/metrics", &[])
        .await
        .text()
        .await
        .expect("metrics");
    assert!(
        metrics.contains("truce_lock_events_total{event=\"lock.broken\"}"),
        "{metrics}"
    );
}
