//! Rules no other test pins down: a full write queue, `?if_version` on revert, the
//! exact body limit, and the SPEC §10 metrics after a scripted workload.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::common::{ServerProcess, TestServer, client, data_dir, header, problem};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_write_queue_is_503_with_retry_after_and_writes_nothing() {
    // One queued write at a time, one write per fsync: a burst overflows the queue.
    let server = Arc::new(
        TestServer::start_with(|_, store| {
            store.queue_capacity = 1;
            store.max_batch = 1;
            store.checkpoint_interval = std::time::Duration::ZERO;
        })
        .await,
    );
    let mut tasks = Vec::new();
    for n in 0..200 {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            let response = server
                .put(&format!("/v1/burst/d{n}"), &json!({"n": n}), &[])
                .await;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap();
            (n, status, retry_after, body)
        }));
    }
    let mut refused = HashSet::new();
    for task in tasks {
        let (n, status, retry_after, body) = task.await.unwrap();
        match status {
            201 => {}
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(body["type"], "/problems/unavailable");
                assert_eq!(body["reason"], "overloaded");
                refused.insert(n);
            }
            other => panic!("write {n} answered {other}"),
        }
    }
    assert!(!refused.is_empty(), "the queue never filled");
    assert!(refused.len() < 200, "nothing was accepted");
    // Refused writes left nothing; accepted ones are there.
    for n in 0..200 {
        let read = server.get(&format!("/v1/burst/d{n}"), &[]).await;
        let expected = if refused.contains(&n) { 404 } else { 200 };
        assert_eq!(read.status(), expected, "d{n}");
    }
}

#[tokio::test]
async fn revert_honours_if_version() {
    let server = TestServer::start().await;
    server.create("/v1/rv/a", &json!({"n": 1})).await;
    server.put("/v1/rv/a", &json!({"n": 2}), &[]).await;
    let revert = |query: &'static str| {
        let client = server.client.clone();
        let url = server.url(&format!("/v1/rv/a/revert{query}"));
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"to": 1}"#)
                .send()
                .await
                .unwrap()
        }
    };
    let stale = problem(revert("?if_version=1").await, 409, "version-conflict").await;
    assert_eq!(stale["expected_version"], 1);
    assert_eq!(stale["current_version"], 2);
    assert_eq!(server.get_json("/v1/rv/a").await, json!({"n": 2}));
    let done = revert("?if_version=2").await;
    assert_eq!(done.status(), 200);
    assert_eq!(header(&done, "truce-version"), "3");
    assert_eq!(server.get_json("/v1/rv/a").await, json!({"n": 1}));
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not() {
    let server = TestServer::start().await;
    let limit = 1024 * 1024;
    // {"a":"xxx…"}: 8 bytes of JSON around the string.
    let exact = format!("{{\"a\":\"{}\"}}", "x".repeat(limit - 8));
    assert_eq!(exact.len(), limit);
    let send = |body: String| {
        server
            .client
            .put(server.url("/v1/big/doc"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(send(exact.clone()).await.unwrap().status(), 201);
    let over = format!("{{\"a\":\"{}\"}}", "x".repeat(limit - 7));
    let refused = problem(send(over).await.unwrap(), 413, "payload-too-large").await;
    assert_eq!(refused["limit"], limit);
    let stored = server.get("/v1/big/doc", &[]).await;
    assert_eq!(header(&stored, "truce-version"), "1");
    assert_eq!(stored.text().await.unwrap().len(), limit);
}

/// The value of one metric line (`name{labels} value`), or 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_what_a_scripted_workload_did() {
    // A process of its own: the metrics recorder is per process.
    let (_tmp, data) = data_dir();
    let server = ServerProcess::start(&data, &[]).await;
    let client = client();
    server.ready(&client).await;
    let base = &server.base;
    let put = |id: String, body: Value, if_match: Option<String>| {
        let mut request = client
            .put(format!("{base}/v1/m/{id}"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        request.send()
    };
    let mut first_etag = None;
    for n in 0..5 {
        let created = put(format!("d{n}"), json!({"n": n}), None).await.unwrap();
        assert_eq!(created.status(), 201);
        first_etag.get_or_insert_with(|| header(&created, "etag"));
    }
    for n in 0..3 {
        let updated = put(format!("d{n}"), json!({"n": n + 10}), None)
            .await
            .unwrap();
        assert_eq!(updated.status(), 200);
    }
    // d0 has moved on: its first ETag is stale twice.
    for _ in 0..2 {
        let refused = put("d0".into(), json!({"n": 99}), first_etag.clone())
            .await
            .unwrap();
        assert_eq!(refused.status(), 412);
    }
    let missing = client
        .get(format!("{base}/v1/m/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let route = r#"route="/v1/{collection}/{id}""#;
    let requests = |method: &str, status: u16| {
        metric(
            &text,
            &format!(r#"truce_http_requests_total{{{route},method="{method}",status="{status}"}}"#),
        )
    };
    assert_eq!(requests("PUT", 201), 5.0, "{text}");
    assert_eq!(requests("PUT", 200), 3.0);
    assert_eq!(requests("PUT", 412), 2.0);
    assert_eq!(requests("GET", 404), 1.0);
    // Eight versions and two conflict records (the refusals) were committed, each
    // write in a batch of its own (they were sent one after the other).
    assert_eq!(metric(&text, "truce_commit_batch_size_sum"), 10.0, "{text}");
    let batches = metric(&text, "truce_commit_batch_size_count");
    assert_eq!(batches, 10.0);
    assert_eq!(metric(&text, "truce_commit_seconds_count"), batches);
    // Nothing failed, and the failure counters are there to say so.
    for zero in [
        "truce_commit_failures_total",
        "truce_write_queue_full_total",
        "truce_handler_panics_total",
        r#"truce_storage_faults_total{reason="disk-full"}"#,
        r#"truce_storage_faults_total{reason="io-error"}"#,
    ] {
        assert!(
            text.lines().any(|l| l == format!("{zero} 0")),
            "{zero} is not exported at 0"
        );
    }
    assert_eq!(metric(&text, "truce_store_writable"), 1.0);
    // The two refusals, counted as conflicts of their collection, type and outcome.
    let conflicts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("truce_conflicts_total{"))
        .collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    for label in [
        r#"collection="m""#,
        r#"type="precondition-failed""#,
        r#"outcome="open""#,
    ] {
        assert!(conflicts[0].contains(label), "{conflicts:?}");
    }
    assert!(conflicts[0].ends_with(" 2"), "{conflicts:?}");
    let latency = format!(r#"truce_http_request_seconds_count{{{route},method="PUT"}}"#);
    assert_eq!(metric(&text, &latency), 10.0);
    server.kill().await;
}
