//! SPEC §7 conflict records: every write refused for the resource's state leaves
//! one record, named by `conflict_id` in the refusal, committed before the answer
//! (so it is there after a `kill -9` right after it), and readable with the three
//! sides of the conflict.

use serde_json::{Value, json};

use crate::common::{ServerProcess, TestServer, client, data_dir, etag, fetch_json, problem};

/// A refused request: method, path, content type, body, headers, and the status
/// and slug it must get.
type Refusal<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    u16,
    &'a str,
);

/// Sends `method path` with a JSON body of `content_type` and headers.
async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = server
        .client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            server.url(path),
        )
        .header("content-type", content_type)
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn every_refusal_for_the_state_leaves_one_record() {
    let server = TestServer::start().await;
    let v1 = server
        .create("/v1/c/doc", &json!({"n": 1, "tag": "a"}))
        .await;
    let v2 = etag(
        &server
            .put("/v1/c/doc", &json!({"n": 2, "tag": "a"}), &[])
            .await,
    );
    const JSON: &str = "application/json";
    const PATCH: &str = "application/json-patch+json";
    let cases: Vec<Refusal<'_>> = vec![
        (
            "PUT",
            "/v1/c/doc",
            JSON,
            r#"{"n": 3}"#,
            vec![("if-match", &v1)],
            412,
            "precondition-failed",
        ),
        (
            "PUT",
            "/v1/c/doc",
            JSON,
            r#"{"n": 3}"#,
            vec![("if-none-match", "*")],
            412,
            "precondition-failed",
        ),
        (
            "PUT",
            "/v1/c/doc?if_version=1",
            JSON,
            r#"{"n": 3}"#,
            vec![],
            409,
            "version-conflict",
        ),
        (
            "PATCH",
            "/v1/c/doc",
            PATCH,
            r#"[{"op":"test","path":"/tag","value":"b"}]"#,
            vec![],
            409,
            "patch-test-failed",
        ),
        (
            "PATCH",
            "/v1/c/doc",
            PATCH,
            r#"[{"op":"remove","path":"/nope"}]"#,
            vec![],
            409,
            "patch-conflict",
        ),
        (
            "DELETE",
            "/v1/c/doc",
            JSON,
            "",
            vec![("if-match", &v1)],
            412,
            "precondition-failed",
        ),
    ];
    let mut ids = std::collections::HashSet::new();
    for (method, path, content_type, body, headers, status, slug) in cases {
        let label = format!("{method} {path} {headers:?}");
        let refused = send(&server, method, path, content_type, body, &headers).await;
        let answer = problem(refused, status, slug).await;
        let cid = answer["conflict_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{label}: no conflict_id"))
            .to_owned();
        assert!(ids.insert(cid.clone()), "{label}: id reused");
        let record = server.get_json(&format!("/v1/_conflicts/{cid}")).await;
        assert_eq!(record["id"], cid.as_str(), "{label}");
        assert_eq!(record["type"], slug, "{label}");
        assert_eq!(record["status"], "open", "{label}");
        assert_eq!(
            record["resource"],
            json!({"collection": "c", "id": "doc"}),
            "{label}"
        );
        assert_eq!(record["current_version"], 2, "{label}");
        assert_eq!(record["attempted"]["method"], method, "{label}");
        assert_eq!(record["by"], "anonymous", "{label}");
        assert!(record["request_id"].is_string(), "{label}");
        assert!(record["detected_at"].is_string(), "{label}");
        assert_eq!(record["theirs"], json!({"n": 2, "tag": "a"}), "{label}");
    }
    // Nothing of the refusals was applied, and the revision did not move.
    let read = server.get("/v1/c/doc", &[]).await;
    assert_eq!(etag(&read), v2);
    assert_eq!(crate::common::header(&read, "truce-revision"), "2");
    let feed = server.get_json("/v1/_changes?since=0").await;
    assert_eq!(feed["last_revision"], 2);
}

#[tokio::test]
async fn a_record_shows_base_ours_theirs_and_where_they_differ() {
    let server = TestServer::start().await;
    let base = server
        .create("/v1/c/doc", &json!({"title": "milk", "n": 1}))
        .await;
    server
        .put("/v1/c/doc", &json!({"title": "milk", "n": 5}), &[])
        .await;
    let refused = send(
        &server,
        "PATCH",
        "/v1/c/doc",
        "application/merge-patch+json",
        r#"{"title": "oat milk"}"#,
        &[("if-match", &base)],
    )
    .await;
    let cid = problem(refused, 412, "precondition-failed").await["conflict_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let record = server.get_json(&format!("/v1/_conflicts/{cid}")).await;
    assert_eq!(record["base_version"], 1);
    assert_eq!(record["attempted"]["patch"], json!({"title": "oat milk"}));
    assert_eq!(record["base"], json!({"title": "milk", "n": 1}));
    assert_eq!(record["ours"], json!({"title": "oat milk", "n": 1}));
    assert_eq!(record["theirs"], json!({"title": "milk", "n": 5}));
    let mut paths: Vec<String> = record["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/n", "/title"]);
}

#[tokio::test]
async fn unknown_and_malformed_conflict_ids() {
    let server = TestServer::start().await;
    problem(
        server.get("/v1/_conflicts/01NOSUCHRECORD", &[]).await,
        404,
        "not-found",
    )
    .await;
    problem(
        server.get("/v1/_conflicts/not-an-id", &[]).await,
        400,
        "malformed-request",
    )
    .await;
}

#[tokio::test]
async fn a_record_outlives_a_kill_right_after_the_refusal() {
    let (_tmp, data) = data_dir();
    let client = client();
    // Only the write-ahead log holds what is written (no checkpoint before the kill).
    let server = ServerProcess::start(&data, &["--checkpoint-interval", "1h"]).await;
    server.ready(&client).await;
    let put = |tag: Option<String>| {
        let mut request = client
            .put(format!("{}/v1/c/doc", server.base))
            .header("content-type", "application/json")
            .body(r#"{"n": 1}"#);
        if let Some(tag) = tag {
            request = request.header("if-match", tag);
        }
        request.send()
    };
    assert_eq!(put(None).await.unwrap().status(), 201);
    let refused = put(Some("\"9-00000000\"".into())).await.unwrap();
    assert_eq!(refused.status(), 412);
    let body: Value = refused.json().await.unwrap();
    let cid = body["conflict_id"].as_str().unwrap().to_owned();
    server.kill().await;

    let server = ServerProcess::start(&data, &[]).await;
    server.ready(&client).await;
    let record: Value = fetch_json(&client, format!("{}/v1/_conflicts/{cid}", server.base)).await;
    assert_eq!(record["id"], cid.as_str());
    assert_eq!(record["type"], "precondition-failed");
    assert_eq!(record["base_version"], 9);
    server.kill().await;
}

#[tokio::test]
async fn records_list_oldest_first_under_filters_in_pages() {
    let server = TestServer::start().await;
    for id in ["a", "b"] {
        server
            .create(&format!("/v1/c/{id}"), &json!({"n": 1}))
            .await;
    }
    server.create("/v1/other/a", &json!({"n": 1})).await;
    let mut made = Vec::new();
    for (path, query) in [
        ("/v1/c/a", "?if_version=5"),
        ("/v1/c/b", ""),
        ("/v1/other/a", ""),
        ("/v1/c/a", ""),
    ] {
        let headers: &[(&str, &str)] = if query.is_empty() {
            &[("if-match", "\"9-00000000\"")]
        } else {
            &[]
        };
        let refused = server
            .put(&format!("{path}{query}"), &json!({"n": 2}), headers)
            .await;
        let body: Value = refused.json().await.unwrap();
        made.push(body["conflict_id"].as_str().unwrap().to_owned());
    }
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = server.get_json("/v1/_conflicts").await;
    assert_eq!(ids(&all), made, "oldest first");
    assert_eq!(all["next"], Value::Null);
    let in_c = server
        .get_json("/v1/_conflicts?collection=c&status=open")
        .await;
    assert_eq!(
        ids(&in_c),
        [made[0].clone(), made[1].clone(), made[3].clone()]
    );
    let one = server.get_json("/v1/_conflicts?collection=c&id=a").await;
    assert_eq!(ids(&one), [made[0].clone(), made[3].clone()]);
    let by_type = server
        .get_json("/v1/_conflicts?type=version-conflict")
        .await;
    assert_eq!(ids(&by_type), [made[0].clone()]);
    let none = server.get_json("/v1/_conflicts?status=resolved").await;
    assert_eq!(ids(&none), Vec::<String>::new());
    // Pages of one under a filter, following `next`.
    let mut seen = Vec::new();
    let mut path = "/v1/_conflicts?collection=c&limit=1".to_owned();
    loop {
        let page = server.get_json(&path).await;
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/_conflicts?collection=c&limit=1&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids(&in_c));
    problem(
        server.get("/v1/_conflicts?status=closed", &[]).await,
        400,
        "malformed-request",
    )
    .await;
}

#[tokio::test]
async fn truce_resolves_closes_the_record_a_retry_names() {
    let server = TestServer::start().await;
    let stale = server.create("/v1/c/doc", &json!({"n": 1})).await;
    let current = etag(&server.put("/v1/c/doc", &json!({"n": 2}), &[]).await);
    let cid = |response: Value| response["conflict_id"].as_str().unwrap().to_owned();
    let first = cid(server
        .put("/v1/c/doc", &json!({"n": 3}), &[("if-match", &stale)])
        .await
        .json()
        .await
        .unwrap());
    // A retry refused again leaves a newer record, which supersedes the first.
    let second = cid(server
        .put(
            "/v1/c/doc",
            &json!({"n": 3}),
            &[("if-match", &stale), ("truce-resolves", &first)],
        )
        .await
        .json()
        .await
        .unwrap());
    let record = server.get_json(&format!("/v1/_conflicts/{first}")).await;
    assert_eq!(record["status"], "resolved");
    assert_eq!(record["resolution"], "superseded");
    assert_eq!(record["superseded_by"], second.as_str());
    // A record of another resource is not closed by this one's retry.
    server.create("/v1/c/other", &json!({"n": 1})).await;
    let elsewhere = cid(server
        .put(
            "/v1/c/other",
            &json!({"n": 9}),
            &[("if-match", "\"9-00000000\"")],
        )
        .await
        .json()
        .await
        .unwrap());
    let landed = server
        .put(
            "/v1/c/doc",
            &json!({"n": 3}),
            &[("if-match", &current), ("truce-resolves", &elsewhere)],
        )
        .await;
    assert_eq!(landed.status(), 200);
    let untouched = server
        .get_json(&format!("/v1/_conflicts/{elsewhere}"))
        .await;
    assert_eq!(untouched["status"], "open");
    // The retry that lands closes the record it names, in the same commit.
    let current = etag(&landed);
    let landed = server
        .put(
            "/v1/c/doc",
            &json!({"n": 4}),
            &[("if-match", &current), ("truce-resolves", &second)],
        )
        .await;
    assert_eq!(landed.status(), 200);
    let record = server.get_json(&format!("/v1/_conflicts/{second}")).await;
    assert_eq!(record["status"], "resolved");
    assert_eq!(record["resolution"], "retried");
    assert_eq!(record["resolved_version"], 4);
    assert!(record["resolved_at"].is_string());
    let open = server
        .get_json("/v1/_conflicts?collection=c&id=doc&status=open")
        .await;
    assert_eq!(open["items"], json!([]));
    problem(
        server
            .put(
                "/v1/c/doc",
                &json!({"n": 5}),
                &[("truce-resolves", "not a record")],
            )
            .await,
        400,
        "malformed-request",
    )
    .await;
}

/// A refused merge patch of `/v1/r/{id}`: returns the record's id.
async fn refused_patch(server: &TestServer, id: &str) -> String {
    let base = server
        .create(&format!("/v1/r/{id}"), &json!({"title": "milk", "n": 1}))
        .await;
    server
        .put(
            &format!("/v1/r/{id}"),
            &json!({"title": "milk", "n": 5}),
            &[],
        )
        .await;
    let refused = send(
        server,
        "PATCH",
        &format!("/v1/r/{id}"),
        "application/merge-patch+json",
        r#"{"title": "oat milk"}"#,
        &[("if-match", &base)],
    )
    .await;
    problem(refused, 412, "precondition-failed").await["conflict_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn resolve(
    server: &TestServer,
    cid: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    send(
        server,
        "POST",
        &format!("/v1/_conflicts/{cid}/resolve"),
        "application/json",
        body,
        headers,
    )
    .await
}

#[tokio::test]
async fn resolving_takes_a_side_and_writes_op_resolve() {
    let server = TestServer::start().await;
    // Ours: the refused change applied to its base, as a new version.
    let cid = refused_patch(&server, "ours").await;
    let done = resolve(&server, &cid, r#"{"take": "ours"}"#, &[]).await;
    assert_eq!(done.status(), 200);
    assert_eq!(crate::common::header(&done, "truce-version"), "3");
    let record: Value = done.json().await.unwrap();
    assert_eq!(record["status"], "resolved");
    assert_eq!(record["resolution"], "ours");
    assert_eq!(record["resolved_version"], 3);
    assert_eq!(
        server.get_json("/v1/r/ours").await,
        json!({"title": "oat milk", "n": 1})
    );
    let history = server.get_json("/v1/r/ours/versions?limit=1").await;
    assert_eq!(history["items"][0]["op"], "resolve");
    // Theirs: nothing written but the record.
    let cid = refused_patch(&server, "theirs").await;
    let done = resolve(&server, &cid, r#"{"take": "theirs"}"#, &[]).await;
    assert_eq!(done.status(), 200);
    assert!(done.headers().get("etag").is_none());
    assert_eq!(
        server.get_json("/v1/r/theirs").await,
        json!({"title": "milk", "n": 5})
    );
    assert_eq!(
        server.get_json(&format!("/v1/_conflicts/{cid}")).await["resolution"],
        "theirs"
    );
    // A supplied document.
    let cid = refused_patch(&server, "doc").await;
    let done = resolve(
        &server,
        &cid,
        r#"{"take": "doc", "doc": {"title": "oat milk", "n": 5}}"#,
        &[],
    )
    .await;
    assert_eq!(done.status(), 200);
    assert_eq!(
        server.get_json("/v1/r/doc").await,
        json!({"title": "oat milk", "n": 5})
    );
}

#[tokio::test]
async fn a_resolution_is_conflict_protected() {
    let server = TestServer::start().await;
    let cid = refused_patch(&server, "moved").await;
    let now = etag(
        &server
            .put("/v1/r/moved", &json!({"title": "tea", "n": 6}), &[])
            .await,
    );
    // The resource moved past the record: refused unless If-Match names what is there.
    let refused = problem(
        resolve(&server, &cid, r#"{"take": "ours"}"#, &[]).await,
        409,
        "version-conflict",
    )
    .await;
    assert_eq!(refused["expected_version"], 2);
    assert_eq!(refused["current_version"], 3);
    problem(
        resolve(
            &server,
            &cid,
            r#"{"take": "ours"}"#,
            &[("if-match", "\"2-00000000\"")],
        )
        .await,
        412,
        "precondition-failed",
    )
    .await;
    assert_eq!(
        server.get_json(&format!("/v1/_conflicts/{cid}")).await["status"],
        "open"
    );
    let done = resolve(&server, &cid, r#"{"take": "ours"}"#, &[("if-match", &now)]).await;
    assert_eq!(done.status(), 200);
    // Closed: neither resolved nor dismissed again.
    let again = problem(
        resolve(&server, &cid, r#"{"take": "theirs"}"#, &[]).await,
        409,
        "state-conflict",
    )
    .await;
    assert_eq!(again["from"], "resolved");
    assert_eq!(again["to"], "resolved");
    assert_eq!(again["allowed"], json!([]));
    let dismissed = send(
        &server,
        "POST",
        &format!("/v1/_conflicts/{cid}/dismiss"),
        "application/json",
        "",
        &[],
    )
    .await;
    problem(dismissed, 409, "state-conflict").await;
}

#[tokio::test]
async fn dismissing_and_bad_resolutions() {
    let server = TestServer::start().await;
    let cid = refused_patch(&server, "d").await;
    for (body, slug, status) in [
        (r#"{"take": "mine"}"#, "malformed-request", 400),
        (r#"{"take": "doc"}"#, "malformed-request", 400),
        (r#"{"take": "doc", "doc": [1]}"#, "malformed-request", 400),
        (r#"{"take": "theirs", "doc": {}}"#, "malformed-request", 400),
    ] {
        problem(resolve(&server, &cid, body, &[]).await, status, slug).await;
    }
    problem(
        resolve(&server, "01NOSUCHRECORD", r#"{"take": "theirs"}"#, &[]).await,
        404,
        "not-found",
    )
    .await;
    let dismissed = send(
        &server,
        "POST",
        &format!("/v1/_conflicts/{cid}/dismiss"),
        "application/json",
        "",
        &[],
    )
    .await;
    assert_eq!(dismissed.status(), 200);
    let record: Value = dismissed.json().await.unwrap();
    assert_eq!(record["status"], "dismissed");
    assert!(record["dismissed_at"].is_string());
    assert_eq!(
        server.get_json("/v1/r/d").await,
        json!({"title": "milk", "n": 5})
    );
    let open = server.get_json("/v1/_conflicts?status=open").await;
    assert_eq!(open["items"], json!([]));
}
