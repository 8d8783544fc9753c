//! SPEC §8 collection settings over HTTP: versioned settings, the keys refused
//! until they exist, `require_preconditions` (428), the `merge` and
//! `last_write_wins` conflict policies with their records, and per-collection
//! history.

use serde_json::{Value, json};

use crate::common::{TestServer, etag, header, problem};

/// `PUT /v1/_collections/{c}` with `settings` and extra headers.
async fn set(
    server: &TestServer,
    collection: &str,
    settings: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    server
        .put(&format!("/v1/_collections/{collection}"), settings, headers)
        .await
}

/// Sets `settings` on a fresh collection, asserting success.
async fn configure(server: &TestServer, collection: &str, settings: Value) {
    let response = set(server, collection, &settings, &[]).await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

/// A body of the current document of `path`.
async fn body(server: &TestServer, path: &str) -> Value {
    server.get_json(path).await
}

#[tokio::test]
async fn settings_are_versioned_with_an_etag() {
    let server = TestServer::start().await;
    let defaults = server.get("/v1/_collections/notes", &[]).await;
    assert_eq!(defaults.status(), 200);
    assert_eq!(header(&defaults, "truce-version"), "0");
    let never = etag(&defaults);
    assert_eq!(
        defaults.json::<Value>().await.unwrap(),
        json!({"conflict_policy": "reject", "require_preconditions": false, "history": {},
               "limits": {}})
    );

    let merge = json!({"conflict_policy": "merge", "history": {"max_versions": 5}});
    let first = set(&server, "notes", &merge, &[("if-none-match", "*")]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "truce-version"), "1");
    assert_eq!(header(&first, "truce-outcome"), "updated");
    let v1 = etag(&first);
    assert_ne!(v1, never);
    // If-None-Match: * now fails, and so does the tag of version 0.
    problem(
        set(&server, "notes", &merge, &[("if-none-match", "*")]).await,
        412,
        "precondition-failed",
    )
    .await;
    let stale = problem(
        set(&server, "notes", &json!({}), &[("if-match", &never)]).await,
        412,
        "precondition-failed",
    )
    .await;
    assert_eq!(stale["current_version"], 1);
    // The same settings again change nothing.
    let same = set(&server, "notes", &merge, &[("if-match", &v1)]).await;
    assert_eq!(
        (header(&same, "truce-outcome"), etag(&same)),
        ("unchanged".to_owned(), v1.clone())
    );

    // Prefer: return=minimal answers the headers only.
    let minimal = set(
        &server,
        "notes",
        &json!({"conflict_policy": "merge", "history": {"max_versions": 5}}),
        &[("prefer", "return=minimal")],
    )
    .await;
    assert_eq!(minimal.status(), 204);
    assert_eq!(etag(&minimal), v1);
    assert_eq!(header(&minimal, "preference-applied"), "return=minimal");

    // They survive a restart.
    let server = server.restart().await;
    let after = server.get("/v1/_collections/notes", &[]).await;
    assert_eq!(etag(&after), v1);
    assert_eq!(
        after.json::<Value>().await.unwrap(),
        json!({"conflict_policy": "merge", "require_preconditions": false,
               "history": {"max_versions": 5}, "limits": {}})
    );
}

#[tokio::test]
async fn keys_not_built_yet_and_unknown_keys_are_refused_by_name() {
    let server = TestServer::start().await;
    for (settings, pointer) in [
        (json!({"schema": {"type": "object"}}), "/schema"),
        (json!({"unique": ["/email"]}), "/unique"),
        (
            json!({"limits": {"writes_per_resource": "fast"}}),
            "/limits/writes_per_resource",
        ),
        (
            json!({"limits": {"reads_per_resource": "1/s"}}),
            "/limits/reads_per_resource",
        ),
        (json!({"colour": "red"}), "/colour"),
        (json!({"conflict_policy": "sometimes"}), "/conflict_policy"),
        (json!({"history": {"max_age": "soon"}}), "/history/max_age"),
        (
            json!({"require_preconditions": "yes"}),
            "/require_preconditions",
        ),
        (json!([1]), ""),
    ] {
        let refused = problem(
            set(&server, "notes", &settings, &[]).await,
            422,
            "validation-failed",
        )
        .await;
        assert_eq!(refused["errors"][0]["pointer"], pointer, "{refused}");
    }
    // Nothing was stored.
    let current = server.get("/v1/_collections/notes", &[]).await;
    assert_eq!(header(&current, "truce-version"), "0");
}

#[tokio::test]
async fn required_preconditions_answer_428_naming_what_to_send() {
    let server = TestServer::start().await;
    configure(&server, "strict", json!({"require_preconditions": true})).await;
    let refused = problem(
        server.put("/v1/strict/a", &json!({"n": 1}), &[]).await,
        428,
        "precondition-required",
    )
    .await;
    assert!(refused["detail"].as_str().unwrap().contains("If-Match"));
    let created = server
        .put("/v1/strict/a", &json!({"n": 1}), &[("if-none-match", "*")])
        .await;
    assert_eq!(created.status(), 201);
    let tag = etag(&created);
    problem(
        server
            .client
            .delete(server.url("/v1/strict/a"))
            .send()
            .await
            .unwrap(),
        428,
        "precondition-required",
    )
    .await;
    let updated = server
        .put("/v1/strict/a", &json!({"n": 2}), &[("if-match", &tag)])
        .await;
    assert_eq!(updated.status(), 200);
    // Other collections are not affected.
    assert_eq!(
        server.put("/v1/free/a", &json!({}), &[]).await.status(),
        201
    );
}

#[tokio::test]
async fn merge_applies_disjoint_stale_writes_and_records_them() {
    let server = TestServer::start().await;
    configure(&server, "m", json!({"conflict_policy": "merge"})).await;
    let v1 = server
        .create("/v1/m/doc", &json!({"title": "a", "body": "x", "tags": []}))
        .await;
    // Someone else changes the title.
    server
        .put(
            "/v1/m/doc",
            &json!({"title": "b", "body": "x", "tags": []}),
            &[("if-match", &v1)],
        )
        .await;
    // A stale write of the body is merged.
    let merged = server
        .put(
            "/v1/m/doc",
            &json!({"title": "a", "body": "y", "tags": []}),
            &[("if-match", &v1)],
        )
        .await;
    assert_eq!(merged.status(), 200);
    assert_eq!(header(&merged, "truce-merged-from"), "1");
    assert_eq!(header(&merged, "truce-version"), "3");
    let cid = header(&merged, "truce-conflict-id");
    assert_eq!(
        merged.json::<Value>().await.unwrap(),
        json!({"title": "b", "body": "y", "tags": []})
    );
    let record = body(&server, &format!("/v1/_conflicts/{cid}")).await;
    assert_eq!(record["type"], "merged");
    assert_eq!(record["status"], "auto_merged");
    assert_eq!(record["base_version"], 1);
    assert_eq!(record["current_version"], 2);
    assert_eq!(record["resolved_version"], 3);

    // A merge patch with a stale ?if_version is applied to its base first.
    let patched = server
        .client
        .patch(server.url("/v1/m/doc?if_version=1"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"tags": ["new"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(header(&patched, "truce-merged-from"), "1");
    assert_eq!(
        patched.json::<Value>().await.unwrap(),
        json!({"title": "b", "body": "y", "tags": ["new"]})
    );

    // An overlap is refused with the paths and all three values, and recorded.
    let overlap = problem(
        server
            .put(
                "/v1/m/doc",
                &json!({"title": "c", "body": "x", "tags": []}),
                &[("if-match", &v1)],
            )
            .await,
        409,
        "merge-conflict",
    )
    .await;
    // Only the title collides: the body and tags of this write equal the base.
    assert_eq!(overlap["paths"], json!(["/title"]));
    assert_eq!(
        overlap["overlaps"][0],
        json!({"path": "/title", "base": "a", "ours": "c", "theirs": "b"})
    );
    assert_eq!(overlap["base_version"], 1);
    let record = body(
        &server,
        &format!(
            "/v1/_conflicts/{}",
            overlap["conflict_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        (record["type"].clone(), record["status"].clone()),
        (json!("merge-conflict"), json!("open"))
    );
    assert_eq!(
        body(&server, "/v1/m/doc").await,
        json!({"title": "b", "body": "y", "tags": ["new"]})
    );
}

#[tokio::test]
async fn merge_without_a_base_is_refused_as_under_reject() {
    let server = TestServer::start().await;
    configure(
        &server,
        "m",
        json!({"conflict_policy": "merge", "history": {"max_versions": 1}}),
    )
    .await;
    let v1 = server.create("/v1/m/doc", &json!({"a": 1})).await;
    server.put("/v1/m/doc", &json!({"a": 2}), &[]).await;
    let refused = problem(
        server
            .put("/v1/m/doc", &json!({"a": 1, "b": 1}), &[("if-match", &v1)])
            .await,
        412,
        "precondition-failed",
    )
    .await;
    assert!(
        refused["merge_refused"]
            .as_str()
            .unwrap()
            .contains("no longer in the history"),
        "{refused}"
    );
    assert!(refused["conflict_id"].is_string());
}

#[tokio::test]
async fn last_write_wins_overwrites_and_keeps_the_loser_in_history() {
    let server = TestServer::start().await;
    configure(&server, "l", json!({"conflict_policy": "last_write_wins"})).await;
    let v1 = server.create("/v1/l/doc", &json!({"n": 1})).await;
    server
        .put("/v1/l/doc", &json!({"n": 2}), &[("if-match", &v1)])
        .await;
    let won = server
        .put("/v1/l/doc", &json!({"n": 3}), &[("if-match", &v1)])
        .await;
    assert_eq!(won.status(), 200);
    let cid = header(&won, "truce-conflict-id");
    assert!(won.headers().get("truce-merged-from").is_none());
    let record = body(&server, &format!("/v1/_conflicts/{cid}")).await;
    assert_eq!(
        (record["type"].clone(), record["status"].clone()),
        (json!("overwritten"), json!("overwritten"))
    );
    assert_eq!(record["current_version"], 2);
    assert_eq!(body(&server, "/v1/l/doc/versions/2").await, json!({"n": 2}));
    assert_eq!(body(&server, "/v1/l/doc").await, json!({"n": 3}));
    // If-None-Match: * is not a stale version: still refused.
    problem(
        server
            .put("/v1/l/doc", &json!({"n": 4}), &[("if-none-match", "*")])
            .await,
        412,
        "precondition-failed",
    )
    .await;
}

#[tokio::test]
async fn history_limits_are_per_collection() {
    let server = TestServer::start().await;
    configure(&server, "short", json!({"history": {"max_versions": 2}})).await;
    for collection in ["short", "long"] {
        for n in 1..=3 {
            server
                .put(&format!("/v1/{collection}/doc"), &json!({"n": n}), &[])
                .await;
        }
    }
    let gone = problem(
        server.get("/v1/short/doc/versions/1", &[]).await,
        410,
        "history-compacted",
    )
    .await;
    assert_eq!(gone["oldest"], 2);
    assert_eq!(
        body(&server, "/v1/long/doc/versions/1").await,
        json!({"n": 1})
    );
    // Compaction removes the bytes in the short collection only.
    let report = server
        .compact_until(|total| total["versions_removed"] == 1)
        .await;
    assert_eq!(report["versions_removed"], 1);
    assert_eq!(
        body(&server, "/v1/long/doc/versions/1").await,
        json!({"n": 1})
    );
}
