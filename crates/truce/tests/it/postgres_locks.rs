//! Locks across two nodes on one PostgreSQL database (SPEC §4, §13): one queue
//! and one clock (the database's) for every node, hand-offs seen by a waiter
//! on the other node, and mutual exclusion with the clients split over both.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{client, fetch_json};
use crate::locks::{acquire, release, token_of};
use crate::pg_cluster::fresh_database;
use crate::postgres::{node, put};

/// Polls `GET {doc}/lock` until `waiting` is `n` (bounded).
async fn until_waiting(client: &reqwest::Client, doc: &str, n: u64) {
    for _ in 0..1000 {
        let shown: Value = fetch_json(client, format!("{doc}/lock")).await;
        if shown["waiting"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{doc}: the queue never reached {n} waiters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_split_over_two_nodes_update_a_counter_only_under_the_lock() {
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    let created = put(&client, format!("{a}/v1/counters/c"), json!({"n": 0}), None).await;
    assert_eq!(created.status(), 201);
    let (clients, rounds) = (32, 2);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let doc = format!("{}/v1/counters/c", if i % 2 == 0 { &a } else { &b });
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let granted =
                    acquire(&client, &doc, json!({"ttl_ms": 30000, "wait_ms": 120000})).await;
                let (token, _) = token_of(granted).await;
                let n = fetch_json(&client, doc.clone()).await["n"]
                    .as_u64()
                    .expect("n");
                // No If-Match: only the lock keeps this read-modify-write safe.
                let written = client
                    .put(&doc)
                    .header("lock-token", &token)
                    .json(&json!({"n": n + 1}))
                    .send()
                    .await
                    .expect("put");
                assert_eq!(written.status(), 200);
                assert_eq!(release(&client, &doc, &token).await.status(), 204);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let done = fetch_json(&client, format!("{b}/v1/counters/c")).await;
    assert_eq!(done["n"], clients * rounds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_either_node_are_served_in_order_and_expiry_hands_on() {
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    let (doc_a, doc_b) = (format!("{a}/v1/jobs/j"), format!("{b}/v1/jobs/j"));
    let (holder, first) = token_of(acquire(&client, &doc_a, json!({"ttl_ms": 60000})).await).await;
    // Queued alternately through B, A, B.
    let mut waiting = Vec::new();
    for n in 0..3u64 {
        let doc = if n % 2 == 0 {
            doc_b.clone()
        } else {
            doc_a.clone()
        };
        let waiter = client.clone();
        waiting.push(tokio::spawn(async move {
            let body = json!({"ttl_ms": 1000, "wait_ms": 30000});
            token_of(acquire(&waiter, &doc, body).await).await
        }));
        until_waiting(&client, &doc_a, n + 1).await;
    }
    assert_eq!(release(&client, &doc_a, &holder).await.status(), 204);
    let mut fences = Vec::new();
    for task in waiting {
        // Nobody releases: each lease runs out and the next waiter gets it
        // from whichever node expires it first.
        let (_, fence) = task.await.expect("waiter");
        fences.push(fence);
    }
    assert_eq!(fences, [first + 1, first + 2, first + 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_on_one_node_fences_writes_on_the_other() {
    let url = fresh_database();
    let ((a, _a), (b, _b)) = (node(&url).await, node(&url).await);
    let client = client();
    let (doc_a, doc_b) = (format!("{a}/v1/jobs/f"), format!("{b}/v1/jobs/f"));
    let (token, _) = token_of(acquire(&client, &doc_a, json!({"ttl_ms": 1000})).await).await;
    let unfenced = client
        .put(&doc_b)
        .json(&json!({"by": "b"}))
        .send()
        .await
        .expect("put");
    assert_eq!(unfenced.status(), 423);
    let fenced = client
        .put(&doc_b)
        .header("lock-token", &token)
        .json(&json!({"by": "holder"}))
        .send()
        .await
        .expect("put");
    assert_eq!(fenced.status(), 201);
    // Another client takes it on B once the lease ran out; the paused holder's
    // token is refused on either node.
    let body = json!({"ttl_ms": 30000, "wait_ms": 10000});
    let (_, fence) = token_of(acquire(&client, &doc_b, body).await).await;
    assert_eq!(fence, 2);
    for doc in [&doc_a, &doc_b] {
        let late = client
            .put(doc)
            .header("lock-token", &token)
            .json(&json!({"by": "late"}))
            .send()
            .await
            .expect("put");
        assert_eq!(late.status(), 423);
    }
    assert_eq!(fetch_json(&client, doc_a).await["by"], "holder");
}
