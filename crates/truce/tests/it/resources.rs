//! SPEC §1: every row of the resource table, the headers, the no-op rule, version
//! numbering across deletes, and `Prefer: return=minimal`.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::common::{TestServer, etag, header, problem};

#[tokio::test]
async fn put_creates_then_replaces_with_headers() {
    let server = TestServer::start().await;
    let created = server
        .put("/v1/users/ada", &json!({"name": "Ada"}), &[])
        .await;
    assert_eq!(created.status(), 201);
    assert_eq!(header(&created, "location"), "/v1/users/ada");
    assert_eq!(header(&created, "truce-version"), "1");
    assert_eq!(header(&created, "truce-outcome"), "created");
    assert_eq!(header(&created, "truce-revision"), "1");
    let first = etag(&created);
    assert!(first.starts_with("\"1-") && first.ends_with('"'), "{first}");
    assert_eq!(
        created.json::<Value>().await.unwrap(),
        json!({"name": "Ada"})
    );

    let replaced = server
        .put("/v1/users/ada", &json!({"name": "Ada L."}), &[])
        .await;
    assert_eq!(replaced.status(), 200);
    assert_eq!(header(&replaced, "truce-version"), "2");
    assert_ne!(etag(&replaced), first);

    let read = server.get("/v1/users/ada", &[]).await;
    assert_eq!(read.status(), 200);
    assert_eq!(header(&read, "cache-control"), "no-cache");
    assert_eq!(header(&read, "content-type"), "application/json");
    assert_eq!(header(&read, "truce-version"), "2");
    assert_eq!(header(&read, "truce-revision"), "2");
    assert!(httpdate::parse_http_date(&header(&read, "last-modified")).is_ok());
    assert_eq!(read.text().await.unwrap(), r#"{"name":"Ada L."}"#);
}

#[tokio::test]
async fn head_answers_headers_without_a_body() {
    let server = TestServer::start().await;
    let tag = server
        .create("/v1/users/ada", &json!({"name": "Ada"}))
        .await;
    let head = server
        .client
        .head(server.url("/v1/users/ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(etag(&head), tag);
    assert_eq!(header(&head, "content-length"), "14");
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn equal_content_creates_no_version() {
    let server = TestServer::start().await;
    let tag = server
        .create("/v1/users/ada", &json!({"a": 1, "b": [1, 2]}))
        .await;
    // Same content, different member order and spacing.
    let again = server
        .client
        .put(server.url("/v1/users/ada"))
        .header("content-type", "application/json")
        .body(r#"{ "b": [1,2], "a": 1 }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(etag(&again), tag);
    assert_eq!(header(&again, "truce-version"), "1");
    assert_eq!(header(&again, "truce-outcome"), "unchanged");
    let patch = server
        .client
        .patch(server.url("/v1/users/ada"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"a": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    assert_eq!(etag(&patch), tag);
    let history = server.get_json("/v1/users/ada/versions").await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
    let changes = server.get_json("/v1/_changes").await;
    assert_eq!(changes["changes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn post_makes_time_ordered_ids() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let response = server
            .client
            .post(server.url("/v1/events"))
            .header("content-type", "application/json")
            .body(json!({"n": n}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let location = header(&response, "location");
        let id = location.strip_prefix("/v1/events/").unwrap().to_owned();
        assert_eq!(header(&response, "truce-version"), "1");
        assert_eq!(response.json::<Value>().await.unwrap(), json!({"n": n}));
        ids.push(id);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ids sort in creation order");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    // A listing (id order) is creation order.
    let page = server.get_json("/v1/events?limit=1000").await;
    let listed: Vec<Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["doc"]["n"].clone())
        .collect();
    assert_eq!(listed, (0..20).map(|n| json!(n)).collect::<Vec<_>>());
}

#[tokio::test]
async fn list_pages_with_cursors_and_prefix() {
    let server = TestServer::start().await;
    for i in 0..25 {
        server
            .create(&format!("/v1/items/item-{i:02}"), &json!({"i": i}))
            .await;
    }
    server.create("/v1/items/other", &json!({"i": -1})).await;
    server.create("/v1/elsewhere/item-00", &json!({})).await;
    // Deleted resources are not listed.
    server.create("/v1/items/item-zz", &json!({})).await;
    let deleted = server
        .client
        .delete(server.url("/v1/items/item-zz"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/items?prefix=item-&limit=10&cursor={c}"),
            None => "/v1/items?prefix=item-&limit=10".to_owned(),
        };
        let page = server.get_json(&path).await;
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["version"], 1);
            assert!(item["etag"].as_str().unwrap().starts_with("\"1-"));
            assert!(item["revision"].as_u64().is_some());
            assert!(item["updated_at"].as_str().unwrap().ends_with('Z'));
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("item-{i:02}")).collect();
    assert_eq!(seen, expected);
    let all = server.get_json("/v1/items").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 26);
    assert_eq!(all["next"], Value::Null);
    let empty = server.get_json("/v1/nothing-here").await;
    assert_eq!(empty, json!({"items": [], "next": null}));
}

#[tokio::test]
async fn patch_merge_and_json_patch() {
    let server = TestServer::start().await;
    server
        .create(
            "/v1/users/ada",
            &json!({"name": "Ada", "tags": ["a"], "x": {"y": 1}}),
        )
        .await;
    let merged = server
        .client
        .patch(server.url("/v1/users/ada"))
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"name": "Ada L.", "x": {"y": null, "z": 2}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(merged.status(), 200);
    assert_eq!(header(&merged, "truce-version"), "2");
    assert_eq!(
        merged.json::<Value>().await.unwrap(),
        json!({"name": "Ada L.", "tags": ["a"], "x": {"z": 2}})
    );
    let patched = server
        .client
        .patch(server.url("/v1/users/ada"))
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"test","path":"/name","value":"Ada L."},{"op":"add","path":"/tags/-","value":"b"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(
        patched.json::<Value>().await.unwrap()["tags"],
        json!(["a", "b"])
    );
    let history = server.get_json("/v1/users/ada/versions").await;
    let ops: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["patch", "patch", "create"]);
}

#[tokio::test]
async fn patch_refuses_other_media_types_with_accept_patch() {
    let server = TestServer::start().await;
    server.create("/v1/users/ada", &json!({"n": 1})).await;
    for content_type in [Some("application/json"), Some("text/plain"), None] {
        let mut request = server
            .client
            .patch(server.url("/v1/users/ada"))
            .body(r#"{"n": 2}"#);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        let accept_patch = header(&response, "accept-patch");
        assert!(accept_patch.contains("application/merge-patch+json"));
        assert!(accept_patch.contains("application/json-patch+json"));
        problem(response, 415, "unsupported-media-type").await;
    }
    assert_eq!(server.get_json("/v1/users/ada").await, json!({"n": 1}));
}

#[tokio::test]
async fn delete_writes_a_tombstone_and_numbering_continues() {
    let server = TestServer::start().await;
    let first = server.create("/v1/users/ada", &json!({"n": 1})).await;
    server.put("/v1/users/ada", &json!({"n": 2}), &[]).await;
    let deleted = server
        .client
        .delete(server.url("/v1/users/ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(header(&deleted, "truce-version"), "3");
    assert_eq!(header(&deleted, "truce-outcome"), "deleted");
    let tombstone_etag = etag(&deleted);
    let body: Value = deleted.json().await.unwrap();
    assert_eq!(body["deleted"], true);
    assert_eq!(body["version"], 3);
    assert_eq!(body["etag"], tombstone_etag);

    let gone = problem(server.get("/v1/users/ada", &[]).await, 404, "not-found").await;
    assert_eq!(gone["version"], 3);
    assert_eq!(gone["deleted_at"], body["deleted_at"]);
    // Deleting again is 404: there is nothing to delete.
    let again = server
        .client
        .delete(server.url("/v1/users/ada"))
        .send()
        .await
        .unwrap();
    problem(again, 404, "not-found").await;

    let recreated = server.put("/v1/users/ada", &json!({"n": 1}), &[]).await;
    assert_eq!(recreated.status(), 201);
    assert_eq!(header(&recreated, "truce-version"), "4");
    // Same content as version 1, yet a new ETag: ETags are never reused.
    assert_ne!(etag(&recreated), first);
    let history = server.get_json("/v1/users/ada/versions").await;
    let versions: Vec<(u64, &str)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        versions,
        [(4, "create"), (3, "delete"), (2, "replace"), (1, "create")]
    );
    let tags: HashSet<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["etag"].as_str().unwrap())
        .collect();
    assert_eq!(tags.len(), 4);
    assert!(tags.contains(tombstone_etag.as_str()));
}

#[tokio::test]
async fn versions_page_newest_first_with_entry_fields() {
    let server = TestServer::start().await;
    for n in 1..=7 {
        server
            .put("/v1/docs/a", &json!({"n": n, "pad": "x".repeat(n)}), &[])
            .await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/docs/a/versions?limit=3".to_owned();
    loop {
        let page = server.get_json(&path).await;
        for item in page["items"].as_array().unwrap() {
            let version = item["version"].as_u64().unwrap();
            let size = item["size"].as_u64().unwrap();
            assert_eq!(
                size as usize,
                json!({"n": version, "pad": "x".repeat(version as usize)})
                    .to_string()
                    .len()
            );
            assert_eq!(item["by"], "anonymous");
            assert!(item["at"].as_str().unwrap().ends_with('Z'));
            assert_eq!(item["revision"], version);
            seen.push(version);
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/docs/a/versions?limit=3&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, [7, 6, 5, 4, 3, 2, 1]);
    problem(
        server.get("/v1/docs/none/versions", &[]).await,
        404,
        "not-found",
    )
    .await;
}

#[tokio::test]
async fn past_versions_read_by_number() {
    let server = TestServer::start().await;
    let v1 = server.create("/v1/docs/a", &json!({"n": 1})).await;
    server.put("/v1/docs/a", &json!({"n": 2}), &[]).await;
    for path in ["/v1/docs/a/versions/1", "/v1/docs/a?version=1"] {
        let old = server.get(path, &[]).await;
        assert_eq!(old.status(), 200, "{path}");
        assert_eq!(etag(&old), v1);
        assert_eq!(header(&old, "truce-version"), "1");
        assert_eq!(old.json::<Value>().await.unwrap(), json!({"n": 1}));
    }
    problem(
        server.get("/v1/docs/a/versions/3", &[]).await,
        404,
        "not-found",
    )
    .await;
    problem(
        server.get("/v1/docs/a/versions/0", &[]).await,
        404,
        "not-found",
    )
    .await;
    problem(
        server.get("/v1/docs/a/versions/x", &[]).await,
        400,
        "malformed-request",
    )
    .await;
    server
        .client
        .delete(server.url("/v1/docs/a"))
        .send()
        .await
        .unwrap();
    let tombstone = problem(
        server.get("/v1/docs/a/versions/3", &[]).await,
        404,
        "not-found",
    )
    .await;
    assert_eq!(tombstone["version"], 3);
}

#[tokio::test]
async fn diff_is_a_json_patch_between_versions() {
    let server = TestServer::start().await;
    server
        .create("/v1/docs/a", &json!({"a": 1, "b": {"c": [1, 2]}}))
        .await;
    server
        .put(
            "/v1/docs/a",
            &json!({"a": 2, "b": {"c": [1]}, "d": true}),
            &[],
        )
        .await;
    server.put("/v1/docs/a", &json!({"a": 3}), &[]).await;
    let response = server.get("/v1/docs/a/diff?from=1&to=2", &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "application/json-patch+json"
    );
    let patch: Value = response.json().await.unwrap();
    let mut doc = json!({"a": 1, "b": {"c": [1, 2]}});
    json_patch_apply(&mut doc, &patch);
    assert_eq!(doc, json!({"a": 2, "b": {"c": [1]}, "d": true}));
    // Defaults: from the previous version to the current one.
    let latest: Value = server.get_json("/v1/docs/a/diff").await;
    let mut doc = json!({"a": 2, "b": {"c": [1]}, "d": true});
    json_patch_apply(&mut doc, &latest);
    assert_eq!(doc, json!({"a": 3}));
    problem(
        server.get("/v1/docs/a/diff?from=1&to=9", &[]).await,
        404,
        "not-found",
    )
    .await;
    problem(
        server.get("/v1/docs/a/diff?from=x", &[]).await,
        400,
        "malformed-request",
    )
    .await;
}

/// Applies add/remove/replace operations (all `diff` emits here) to `doc`.
fn json_patch_apply(doc: &mut Value, patch: &Value) {
    for op in patch.as_array().unwrap() {
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let target = doc.pointer_mut(parent).unwrap();
        match (op["op"].as_str().unwrap(), target) {
            ("remove", Value::Object(map)) => {
                map.remove(last);
            }
            ("remove", Value::Array(items)) => {
                items.remove(last.parse::<usize>().unwrap());
            }
            ("add" | "replace", Value::Object(map)) => {
                map.insert(last.to_owned(), op["value"].clone());
            }
            ("replace", Value::Array(items)) => {
                items[last.parse::<usize>().unwrap()] = op["value"].clone();
            }
            (other, _) => panic!("unexpected op {other}"),
        }
    }
}

#[tokio::test]
async fn revert_writes_a_new_version_with_old_content() {
    let server = TestServer::start().await;
    server.create("/v1/docs/a", &json!({"n": 1})).await;
    let current = etag(&server.put("/v1/docs/a", &json!({"n": 2}), &[]).await);
    let revert = |tag: String| {
        let client = server.client.clone();
        let url = server.url("/v1/docs/a/revert");
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .header("if-match", tag)
                .body(r#"{"to": 1}"#)
                .send()
                .await
                .unwrap()
        }
    };
    let reverted = revert(current.clone()).await;
    assert_eq!(reverted.status(), 200);
    assert_eq!(header(&reverted, "truce-version"), "3");
    assert_eq!(reverted.json::<Value>().await.unwrap(), json!({"n": 1}));
    // Preconditions apply: the old ETag is stale, so the same revert again is a 412
    // (saying the content already matches), and no version is made.
    let again = revert(current).await;
    let refused = problem(again, 412, "precondition-failed").await;
    assert_eq!(refused["current_matches_request"], true);
    assert_eq!(refused["current_version"], 3);
    let history = server.get_json("/v1/docs/a/versions?limit=1").await;
    assert_eq!(history["items"][0]["op"], "revert");

    // Reverting brings a deleted resource back.
    server
        .client
        .delete(server.url("/v1/docs/a"))
        .send()
        .await
        .unwrap();
    let undeleted = server
        .client
        .post(server.url("/v1/docs/a/revert"))
        .header("content-type", "application/json")
        .body(r#"{"to": 2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(undeleted.status(), 201);
    assert_eq!(header(&undeleted, "truce-version"), "5");
    assert_eq!(server.get_json("/v1/docs/a").await, json!({"n": 2}));
    let missing = server
        .client
        .post(server.url("/v1/docs/a/revert"))
        .header("content-type", "application/json")
        .body(r#"{"to": 99}"#)
        .send()
        .await
        .unwrap();
    problem(missing, 404, "not-found").await;
    let malformed = server
        .client
        .post(server.url("/v1/docs/a/revert"))
        .header("content-type", "application/json")
        .body(r#"{"to": "one"}"#)
        .send()
        .await
        .unwrap();
    problem(malformed, 400, "malformed-request").await;
}

#[tokio::test]
async fn prefer_return_minimal_answers_headers_only() {
    let server = TestServer::start().await;
    let created = server
        .put(
            "/v1/docs/a",
            &json!({"n": 1}),
            &[("prefer", "return=minimal")],
        )
        .await;
    assert_eq!(created.status(), 201);
    assert_eq!(header(&created, "preference-applied"), "return=minimal");
    assert_eq!(header(&created, "location"), "/v1/docs/a");
    assert!(created.headers().contains_key("etag"));
    assert!(created.bytes().await.unwrap().is_empty());
    let updated = server
        .put(
            "/v1/docs/a",
            &json!({"n": 2}),
            &[("prefer", "return=minimal")],
        )
        .await;
    assert_eq!(updated.status(), 204);
    assert_eq!(header(&updated, "truce-version"), "2");
    assert!(updated.headers().contains_key("etag"));
    let deleted = server
        .client
        .delete(server.url("/v1/docs/a"))
        .header("prefer", "return=minimal")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(header(&deleted, "truce-version"), "3");
}
