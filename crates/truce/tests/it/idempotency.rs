//! `Idempotency-Key` (SPEC §9): a repeat replays the first answer exactly, a
//! different request under a used key is 422, a repeat racing the first is
//! refused or replayed but never applied twice, answers expire, and a keyed
//! write acknowledged before a crash replays after it.

use std::time::Duration;

use reqwest::{Client, Method, Response};
use serde_json::{Value, json};

use crate::common::{ServerProcess, TestServer, client, data_dir, header, problem};

/// Headers the request envelope sets for each request anew: not part of the
/// stored answer.
const PER_REQUEST: [&str; 5] = [
    "x-request-id",
    "date",
    "content-length",
    "idempotent-replayed",
    "connection",
];

/// An answer as a generic client sees it: status, headers, body.
#[derive(Debug, PartialEq)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub replayed: bool,
}

pub(crate) async fn answer(response: Response) -> Answer {
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| !PER_REQUEST.contains(&name.as_str()))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    headers.sort();
    let body = response.bytes().await.expect("body").to_vec();
    Answer {
        status,
        headers,
        body,
        replayed,
    }
}

/// Sends `method url` with a JSON body (`content_type`) under `key`.
pub(crate) async fn keyed(
    client: &Client,
    method: Method,
    url: &str,
    key: &str,
    content_type: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> Response {
    let mut request = client
        .request(method, url)
        .header("idempotency-key", key)
        .header("content-type", content_type)
        .body(body.to_string());
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.expect("send")
}

/// [`keyed`] with a JSON body and no other header.
pub(crate) async fn send_json(
    client: &Client,
    method: Method,
    url: &str,
    key: &str,
    body: &Value,
) -> Response {
    keyed(client, method, url, key, "application/json", body, &[]).await
}

pub(crate) async fn count_documents(client: &Client, url: &str) -> usize {
    let page: Value = client
        .get(url)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("page");
    page["items"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_replays_the_first_answer_exactly_and_applies_nothing() {
    let server = TestServer::start().await;
    let client = &server.client;
    let url = server.url("/v1/notes");
    let json = "application/json";
    let first = send_json(client, Method::POST, &url, "\"k-1\"", &json!({"a": 1})).await;
    let first = answer(first).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed);
    for _ in 0..2 {
        let again = send_json(client, Method::POST, &url, "\"k-1\"", &json!({"a": 1})).await;
        let again = answer(again).await;
        assert!(again.replayed, "a repeat is marked as a replay");
        assert_eq!(again.status, first.status);
        assert_eq!(again.headers, first.headers);
        assert_eq!(again.body, first.body);
    }
    assert_eq!(count_documents(client, &url).await, 1, "created once");

    // The bare form of the same key is the same key.
    let bare = send_json(client, Method::POST, &url, "k-1", &json!({"a": 1})).await;
    assert!(answer(bare).await.replayed);

    // A refusal that left a conflict record replays too: the same record, not a
    // second one.
    let doc = server.url("/v1/notes/n1");
    let made = server.put("/v1/notes/n1", &json!({"v": 1}), &[]).await;
    let stale = header(&made, "etag");
    server
        .put("/v1/notes/n1", &json!({"v": 2}), &[("if-match", &stale)])
        .await;
    let body = json!({"v": 3});
    let condition = [("if-match", stale.as_str())];
    let refused = || {
        keyed(
            client,
            Method::PUT,
            &doc,
            "\"k-stale\"",
            json,
            &body,
            &condition,
        )
    };
    let first = answer(refused().await).await;
    assert_eq!(first.status, 412);
    let again = answer(refused().await).await;
    assert!(again.replayed);
    assert_eq!((again.status, &again.body), (412, &first.body));
    let records: Value = server.get_json("/v1/_conflicts?collection=notes").await;
    assert_eq!(
        records["items"].as_array().map(Vec::len),
        Some(1),
        "{records}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_key_with_another_request_is_refused() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/notes/n1");
    let json = "application/json";
    let first = send_json(client, Method::PUT, &doc, "\"k\"", &json!({"v": 1})).await;
    assert_eq!(first.status(), 201);
    // Another body, another method, another target: each 422, nothing applied.
    let other_body = send_json(client, Method::PUT, &doc, "\"k\"", &json!({"v": 2})).await;
    problem(other_body, 422, "idempotency-key-reused").await;
    let merge = "application/merge-patch+json";
    let other_method = keyed(
        client,
        Method::PATCH,
        &doc,
        "\"k\"",
        merge,
        &json!({"v": 1}),
        &[],
    )
    .await;
    problem(other_method, 422, "idempotency-key-reused").await;
    let other_target = server.url("/v1/notes/n2");
    let elsewhere = send_json(
        client,
        Method::PUT,
        &other_target,
        "\"k\"",
        &json!({"v": 1}),
    )
    .await;
    problem(elsewhere, 422, "idempotency-key-reused").await;
    let current: Value = server.get_json("/v1/notes/n1").await;
    assert_eq!(current, json!({"v": 1}));
    assert_eq!(server.get("/v1/notes/n2", &[]).await.status(), 404);

    // Malformed keys are refused before anything runs.
    for bad in ["\"\"", "\"open", &format!("\"{}\"", "k".repeat(256))] {
        let refused = keyed(
            client,
            Method::PUT,
            &other_target,
            bad,
            json,
            &json!({}),
            &[],
        )
        .await;
        problem(refused, 400, "malformed-request").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_apply_once() {
    let server = TestServer::start().await;
    let url = server.url("/v1/orders");
    let bases = vec![url.clone()];
    let (fresh, locations) = duplicates_until_answered(&server.client, &bases, 16).await;
    assert_eq!(fresh, 1, "exactly one request ran");
    assert_eq!(locations.len(), 1, "every client learnt the same resource");
    assert_eq!(count_documents(&server.client, &url).await, 1);
}

/// Sends `clients` duplicates of one keyed create, spread over `urls`, each
/// retried after 409 idempotency-in-flight until it gets its answer; returns
/// how many answers were not replays and the distinct `Location`s answered.
pub(crate) async fn duplicates_until_answered(
    client: &Client,
    urls: &[String],
    clients: usize,
) -> (usize, std::collections::BTreeSet<String>) {
    let mut tasks = Vec::new();
    for n in 0..clients {
        let client = client.clone();
        let url = urls[n % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..500 {
                let sent = keyed(
                    &client,
                    Method::POST,
                    &url,
                    "\"order-7\"",
                    "application/json",
                    &json!({"item": "tea"}),
                    &[],
                )
                .await;
                let answer = answer(sent).await;
                if answer.status != 409 {
                    return answer;
                }
                let body: Value = serde_json::from_slice(&answer.body).expect("problem");
                assert_eq!(body["type"], "/problems/idempotency-in-flight");
                assert!(answer.headers.iter().any(|(n, _)| n == "retry-after"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("still in flight after 500 tries");
        }));
    }
    let mut fresh = 0;
    let mut locations = std::collections::BTreeSet::new();
    for task in tasks {
        let answer = task.await.expect("task");
        assert_eq!(answer.status, 201, "{answer:?}");
        fresh += usize::from(!answer.replayed);
        let location = answer.headers.iter().find(|(n, _)| n == "location");
        locations.insert(location.map(|(_, v)| v.clone()).unwrap_or_default());
    }
    (fresh, locations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_commit_nothing_keep_nothing() {
    let server = TestServer::start().await;
    let client = &server.client;
    let doc = server.url("/v1/notes/later");
    let merge = "application/merge-patch+json";
    let missing = keyed(
        client,
        Method::PATCH,
        &doc,
        "\"p\"",
        merge,
        &json!({"a": 1}),
        &[],
    )
    .await;
    assert_eq!(missing.status(), 404);
    server.put("/v1/notes/later", &json!({}), &[]).await;
    let retried = keyed(
        client,
        Method::PATCH,
        &doc,
        "\"p\"",
        merge,
        &json!({"a": 1}),
        &[],
    )
    .await;
    assert_eq!(
        retried.status(),
        200,
        "the retry ran: nothing was kept for the 404"
    );
    assert!(!retried.headers().contains_key("idempotent-replayed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolutions_and_settings_replay_too() {
    let server = TestServer::start().await;
    let client = &server.client;
    let settings = server.url("/v1/_collections/notes");
    let body = json!({"conflict_policy": "reject"});
    let first = answer(send_json(client, Method::PUT, &settings, "\"s\"", &body).await).await;
    assert_eq!(first.status, 200);
    let again = answer(send_json(client, Method::PUT, &settings, "\"s\"", &body).await).await;
    assert!(again.replayed);
    assert_eq!((again.headers, again.body), (first.headers, first.body));

    let made = server.put("/v1/notes/n1", &json!({"v": 1}), &[]).await;
    let stale = header(&made, "etag");
    server.put("/v1/notes/n1", &json!({"v": 2}), &[]).await;
    let refused = server
        .put("/v1/notes/n1", &json!({"v": 3}), &[("if-match", &stale)])
        .await;
    let cid = problem(refused, 412, "precondition-failed").await["conflict_id"]
        .as_str()
        .expect("conflict id")
        .to_owned();
    let resolve = server.url(&format!("/v1/_conflicts/{cid}/resolve"));
    let take = json!({"take": "ours"});
    let first = answer(send_json(client, Method::POST, &resolve, "\"r\"", &take).await).await;
    assert_eq!(
        first.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&first.body)
    );
    let again = answer(send_json(client, Method::POST, &resolve, "\"r\"", &take).await).await;
    assert!(again.replayed, "a resolved record's retry replays, not 409");
    assert_eq!((again.status, again.body), (200, first.body));
    let history: Value = server.get_json("/v1/notes/n1/versions").await;
    assert_eq!(
        history["items"].as_array().map(Vec::len),
        Some(3),
        "resolved once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_expire_and_compaction_removes_them() {
    let server = TestServer::start_with(|config, _| {
        config.idempotency_keep = Duration::from_millis(300);
    })
    .await;
    let client = &server.client;
    let url = server.url("/v1/notes");
    let sent = send_json(client, Method::POST, &url, "\"e\"", &json!({})).await;
    assert_eq!(sent.status(), 201);
    let kept = send_json(client, Method::POST, &url, "\"e\"", &json!({})).await;
    assert!(kept.headers().contains_key("idempotent-replayed"));
    let report = server
        .compact_until(|total| total["idempotency_removed"] == 1)
        .await;
    assert_eq!(report["idempotency_removed"], 1);
    let anew = send_json(client, Method::POST, &url, "\"e\"", &json!({})).await;
    assert_eq!(anew.status(), 201);
    assert!(!anew.headers().contains_key("idempotent-replayed"));
    assert_eq!(count_documents(client, &url).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_write_acknowledged_before_a_crash_replays_after_it() {
    let (_dir, data) = data_dir();
    let client = client();
    let server = ServerProcess::start(&data, &[]).await;
    server.ready(&client).await;
    let url = format!("{}/v1/orders", server.base);
    let first = send_json(&client, Method::POST, &url, "\"crash\"", &json!({"n": 1})).await;
    let first = answer(first).await;
    assert_eq!(first.status, 201);
    server.kill().await;

    let server = ServerProcess::start(&data, &[]).await;
    server.ready(&client).await;
    let url = format!("{}/v1/orders", server.base);
    let again = send_json(&client, Method::POST, &url, "\"crash\"", &json!({"n": 1})).await;
    let again = answer(again).await;
    assert!(again.replayed, "the retry after the crash replays");
    assert_eq!(
        (again.status, again.headers, again.body),
        (201, first.headers, first.body)
    );
    assert_eq!(count_documents(&client, &url).await, 1);
    server.kill().await;
}
