//! Lost updates: many clients doing the textbook read-modify-write loop on one
//! document with If-Match (and with ?if_version), through a plain HTTP client that
//! judges only the status code, as any generic client would. Nothing may be lost:
//! the final count is exact and there is exactly one version per increment.

use serde_json::{Value, json};

use crate::common::{TestServer, etag, header};

const CLIENTS: usize = 16;
const INCREMENTS: u64 = 40;

/// GET, add one, PUT with If-Match; a 2xx is this client's increment, a 412 means
/// start over. Nothing else is looked at.
async fn increment_with_if_match(server: &TestServer, path: &str) -> u64 {
    let mut refused = 0;
    loop {
        let read = server.get(path, &[]).await;
        assert_eq!(read.status(), 200);
        let tag = etag(&read);
        let mut doc: Value = read.json().await.unwrap();
        doc["n"] = json!(doc["n"].as_u64().unwrap() + 1);
        let write = server.put(path, &doc, &[("if-match", &tag)]).await;
        match write.status().as_u16() {
            200 => return refused,
            412 => refused += 1,
            status => panic!("unexpected {status}"),
        }
    }
}

/// The same with `?if_version=N`; a conflict is a 409.
async fn increment_with_if_version(server: &TestServer, path: &str) -> u64 {
    let mut refused = 0;
    loop {
        let read = server.get(path, &[]).await;
        let version = header(&read, "truce-version");
        let mut doc: Value = read.json().await.unwrap();
        doc["n"] = json!(doc["n"].as_u64().unwrap() + 1);
        let write = server
            .put(&format!("{path}?if_version={version}"), &doc, &[])
            .await;
        match write.status().as_u16() {
            200 => return refused,
            409 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
}

async fn hammer(server: &std::sync::Arc<TestServer>, path: &'static str, by_version: bool) -> u64 {
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let server = std::sync::Arc::clone(server);
        tasks.push(tokio::spawn(async move {
            let mut refused = 0;
            for _ in 0..INCREMENTS {
                refused += if by_version {
                    increment_with_if_version(&server, path).await
                } else {
                    increment_with_if_match(&server, path).await
                };
            }
            refused
        }));
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await.unwrap();
    }
    refused
}

async fn assert_nothing_lost(server: &TestServer, path: &str) {
    let total = CLIENTS as u64 * INCREMENTS;
    let read = server.get(path, &[]).await;
    assert_eq!(header(&read, "truce-version"), (total + 1).to_string());
    assert_eq!(read.json::<Value>().await.unwrap()["n"], total);
    // One version per increment, each exactly one more than the last.
    let history = server
        .get_json(&format!("{path}/versions?limit=1000"))
        .await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len() as u64, total + 1);
    for (i, item) in items.iter().enumerate() {
        let version = total + 1 - i as u64;
        assert_eq!(item["version"], version);
        let body = server.get_json(&format!("{path}/versions/{version}")).await;
        assert_eq!(body["n"], version - 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_lost_updates_with_if_match() {
    let server = std::sync::Arc::new(TestServer::start().await);
    server.create("/v1/counters/hot", &json!({"n": 0})).await;
    let refused = hammer(&server, "/v1/counters/hot", false).await;
    assert_nothing_lost(&server, "/v1/counters/hot").await;
    // With 16 clients on one document, some writes must have been refused.
    assert!(refused > 0, "no contention was produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_lost_updates_with_if_version() {
    let server = std::sync::Arc::new(TestServer::start().await);
    server.create("/v1/counters/hot", &json!({"n": 0})).await;
    hammer(&server, "/v1/counters/hot", true).await;
    assert_nothing_lost(&server, "/v1/counters/hot").await;
}
