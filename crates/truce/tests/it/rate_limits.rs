//! Rate limits per principal and class (SPEC §9): a quota of reads and one of
//! writes, the RateLimit header fields on every answer of a limited class, and
//! 429 before anything else is looked at.

use serde_json::json;

use crate::common::{TestServer, header, problem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_quota_are_refused_first_and_say_when_to_retry() {
    let server = TestServer::start_with(|config, _| {
        config.rate_writes = Some("3/min".parse().expect("rate"));
    })
    .await;
    for left in [2, 1, 0] {
        let created = server
            .put(&format!("/v1/notes/n{left}"), &json!({}), &[])
            .await;
        assert_eq!(created.status(), 201);
        assert_eq!(header(&created, "ratelimit-policy"), "\"writes\";q=3;w=60");
        let limit = header(&created, "ratelimit");
        assert!(
            limit.starts_with(&format!("\"writes\";r={left};t=")),
            "{limit}"
        );
    }

    // Over the quota: 429, for a write that would otherwise be a 404 too
    // (rate limits come before everything but auth).
    let refused = server
        .client
        .patch(server.url("/v1/notes/missing"))
        .header("content-type", "application/merge-patch+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let retry = header(&refused, "retry-after");
    let seconds: u64 = retry.parse().expect("Retry-After in seconds");
    assert!((1..=20).contains(&seconds), "{seconds}");
    assert_eq!(
        header(&refused, "ratelimit"),
        format!("\"writes\";r=0;t={retry}")
    );
    problem(refused, 429, "rate-limited").await;
    let refused_put = server.put("/v1/notes/late", &json!({}), &[]).await;
    assert_eq!(refused_put.status(), 429);

    // Reads are another class, not limited here; health is never limited.
    let read = server.get("/v1/notes/late", &[]).await;
    assert_eq!(read.status(), 404, "a refused write was applied");
    assert!(!read.headers().contains_key("ratelimit"));
    let ready = server.get("/readyz", &[]).await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_have_a_quota_of_their_own() {
    let server = TestServer::start_with(|config, _| {
        config.rate_reads = Some("2/h".parse().expect("rate"));
    })
    .await;
    for left in [1, 0] {
        let read = server.get("/v1/notes/n", &[]).await;
        assert_eq!(read.status(), 404);
        assert_eq!(header(&read, "ratelimit-policy"), "\"reads\";q=2;w=3600");
        assert!(header(&read, "ratelimit").starts_with(&format!("\"reads\";r={left};")));
    }
    let refused = server.get("/v1/notes/n", &[]).await;
    problem(refused, 429, "rate-limited").await;
    let written = server.put("/v1/notes/n", &json!({}), &[]).await;
    assert_eq!(written.status(), 201, "writes are not limited here");
    assert!(!written.headers().contains_key("ratelimit"));
}

/// A collection's `limits.writes_per_resource` caps the writes each of its
/// documents takes, from all clients together: one document over it is refused
/// with 429 (before its preconditions are looked at), another document of the
/// collection and reads are not, and a change of the setting through this
/// node applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_limits_the_writes_each_document_takes() {
    let server = TestServer::start().await;
    let settings = |limit: &str| json!({"limits": {"writes_per_resource": limit}});
    let set = server
        .put("/v1/_collections/hot", &settings("2/h"), &[])
        .await;
    assert_eq!(set.status(), 200);
    let shown = server.get_json("/v1/_collections/hot").await;
    assert_eq!(shown["limits"]["writes_per_resource"], "2/h", "{shown}");

    for left in [1, 0] {
        let written = server.put("/v1/hot/a", &json!({"left": left}), &[]).await;
        assert!(written.status().is_success(), "{}", written.status());
        assert_eq!(
            header(&written, "ratelimit-policy"),
            "\"resource\";q=2;w=3600"
        );
        assert!(header(&written, "ratelimit").starts_with(&format!("\"resource\";r={left};")));
    }
    // Over: refused first, even with a precondition that would fail.
    let refused = server
        .put("/v1/hot/a", &json!({}), &[("if-match", "\"stale\"")])
        .await;
    assert!(header(&refused, "ratelimit").starts_with("\"resource\";r=0;t="));
    let body = problem(refused, 429, "rate-limited").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("this resource"),
        "{body}"
    );
    assert_eq!(server.put("/v1/hot/b", &json!({}), &[]).await.status(), 201);
    let read = server.get("/v1/hot/a", &[]).await;
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.json::<serde_json::Value>().await.unwrap(),
        json!({"left": 0})
    );
    // Other collections are not limited.
    let elsewhere = server.put("/v1/cold/a", &json!({}), &[]).await;
    assert!(!elsewhere.headers().contains_key("ratelimit"));

    // Raising the limit through this node applies to the next write.
    let raised = server
        .put("/v1/_collections/hot", &settings("100/s"), &[])
        .await;
    assert_eq!(raised.status(), 200);
    let again = server.put("/v1/hot/a", &json!({"left": 9}), &[]).await;
    assert_eq!(again.status(), 200);
}
