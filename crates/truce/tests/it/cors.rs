//! Cross-origin requests (CORS): off unless origins are named; then preflights
//! and answers carry what a browser needs, for those origins only.

use serde_json::json;

use crate::common::TestServer;

const APP: &str = "https://app.example";

/// Creates `/v1/notes/n` as a page of `origin` would.
async fn create_from(server: &TestServer, origin: &str) -> reqwest::Response {
    server
        .client
        .put(server.url("/v1/notes/n"))
        .header("origin", origin)
        .header("content-type", "application/json")
        .body(json!({}).to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cors_headers_unless_origins_are_named() {
    let server = TestServer::start().await;
    let created = create_from(&server, APP).await;
    assert_eq!(created.status(), 201);
    assert!(
        !created
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_origins_may_call_the_api_from_a_browser() {
    let server = TestServer::start_with(|config, _| {
        config.cors_origins = vec![APP.to_owned()];
    })
    .await;
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/v1/notes/n"))
        .header("origin", APP)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "if-match, content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert_eq!(header(&preflight, "access-control-allow-origin"), APP);
    assert!(header(&preflight, "access-control-allow-methods").contains("put"));
    assert!(header(&preflight, "access-control-allow-headers").contains("if-match"));

    let created = create_from(&server, APP).await;
    assert_eq!(created.status(), 201);
    assert_eq!(header(&created, "access-control-allow-origin"), APP);
    assert!(header(&created, "access-control-expose-headers").contains("etag"));

    let elsewhere = server
        .client
        .get(server.url("/v1/notes/n"))
        .header("origin", "https://other.example")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 200);
    assert!(
        !elsewhere
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_handler_carry_cors_headers() {
    // A browser can read a 429 (and its Retry-After) only with the CORS headers:
    // the admission checks answer inside the CORS layer.
    let server = TestServer::start_with(|config, _| {
        config.cors_origins = vec![APP.to_owned()];
        config.rate_writes = Some("1/h".parse().expect("rate"));
    })
    .await;
    assert_eq!(create_from(&server, APP).await.status(), 201);
    let limited = create_from(&server, APP).await;
    assert_eq!(limited.status(), 429);
    let allowed = limited
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok());
    assert_eq!(allowed, Some(APP));
    let exposed = limited
        .headers()
        .get("access-control-expose-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");
}
