//! SPEC §3: problem bodies, problem pages, bad input of every kind (each followed by
//! a check that the server still serves and the data is intact), panics, and slow
//! clients.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use truce_engine::ProblemKind;

use crate::common::{TestServer, client, header, problem};

#[tokio::test]
async fn every_problem_type_has_a_page() {
    let server = TestServer::start().await;
    for kind in ProblemKind::ALL {
        let info = kind.info();
        let page = server.get(&format!("/problems/{}", info.slug), &[]).await;
        assert_eq!(page.status(), 200, "{}", info.slug);
        assert!(header(&page, "content-type").starts_with("text/html"));
        let html = page.text().await.unwrap();
        assert!(html.contains(info.title), "{}", info.slug);
        assert!(html.contains(&format!("HTTP {}", info.status)));
    }
    problem(
        server.get("/problems/no-such-thing", &[]).await,
        404,
        "not-found",
    )
    .await;
}

/// A request that must be refused, and how.
struct BadInput {
    label: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    slug: &'static str,
    /// Words the detail must contain.
    says: Vec<&'static str>,
}

/// Adds words the case's detail must contain.
fn saying(mut case: BadInput, words: &[&'static str]) -> BadInput {
    case.says.extend_from_slice(words);
    case
}

/// Framework and parser wording that must never reach a client.
const FOREIGN_WORDING: &[&str] = &[
    "Failed to deserialize",
    "variant",
    "recursion limit",
    "invalid digit",
    "provided string",
    "`",
];

fn bad(
    label: &'static str,
    method: &'static str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    slug: &'static str,
) -> BadInput {
    BadInput {
        label,
        method,
        path: path.to_owned(),
        headers: content_type
            .map(|ct| vec![("content-type", ct.to_owned())])
            .unwrap_or_default(),
        body: body.into(),
        status,
        slug,
        says: Vec::new(),
    }
}

fn nested(depth: usize) -> String {
    format!(
        "{}{}{}",
        "{\"a\":".repeat(depth - 1),
        "{}",
        "}".repeat(depth - 1)
    )
}

fn bad_inputs() -> Vec<BadInput> {
    const JSON: Option<&str> = Some("application/json");
    const MERGE: Option<&str> = Some("application/merge-patch+json");
    const JSON_PATCH: Option<&str> = Some("application/json-patch+json");
    let doc = "/v1/safe/doc";
    let mut cases = vec![
        bad(
            "bad JSON",
            "PUT",
            doc,
            JSON,
            "{\"n\": ",
            400,
            "malformed-request",
        ),
        bad(
            "trailing garbage",
            "PUT",
            doc,
            JSON,
            "{} x",
            400,
            "malformed-request",
        ),
        bad(
            "array document",
            "PUT",
            doc,
            JSON,
            "[1]",
            400,
            "malformed-request",
        ),
        bad(
            "string document",
            "PUT",
            doc,
            JSON,
            "\"x\"",
            400,
            "malformed-request",
        ),
        bad(
            "null document",
            "PUT",
            doc,
            JSON,
            "null",
            400,
            "malformed-request",
        ),
        bad("empty body", "PUT", doc, JSON, "", 400, "malformed-request"),
        bad(
            "invalid UTF-8",
            "PUT",
            doc,
            JSON,
            b"{\"n\":\"\xff\"}".to_vec(),
            400,
            "malformed-request",
        ),
        bad(
            "too deep",
            "PUT",
            doc,
            JSON,
            nested(65),
            400,
            "malformed-request",
        ),
        saying(
            bad(
                "far too deep",
                "PUT",
                doc,
                JSON,
                nested(5000),
                400,
                "malformed-request",
            ),
            &["deeper than", "64"],
        ),
        saying(
            bad(
                "misspelt precondition",
                "PUT",
                "/v1/safe/doc?ifversion=1",
                JSON,
                "{\"n\": 2}",
                400,
                "malformed-request",
            ),
            &["ifversion", "if_version"],
        ),
        saying(
            bad(
                "query parameter on a route without any",
                "GET",
                "/healthz?verbose=1",
                None,
                "",
                400,
                "malformed-request",
            ),
            &["verbose", "no query parameters"],
        ),
        saying(
            bad(
                "unknown feed",
                "GET",
                "/v1/_changes?feed=bogus",
                None,
                "",
                400,
                "malformed-request",
            ),
            &["feed", "normal", "longpoll"],
        ),
        saying(
            bad(
                "include_docs not a flag",
                "GET",
                "/v1/_changes?include_docs=maybe",
                None,
                "",
                400,
                "malformed-request",
            ),
            &["include_docs", "true or false"],
        ),
        saying(
            bad(
                "raw slash in an id",
                "PUT",
                "/v1/safe/a/b",
                JSON,
                "{}",
                400,
                "malformed-request",
            ),
            &["cannot contain"],
        ),
        bad(
            "text/plain",
            "PUT",
            doc,
            Some("text/plain"),
            "{}",
            415,
            "unsupported-media-type",
        ),
        bad(
            "no content type",
            "PUT",
            doc,
            None,
            "{}",
            415,
            "unsupported-media-type",
        ),
        bad(
            "merge patch type on PUT",
            "PUT",
            doc,
            MERGE,
            "{}",
            415,
            "unsupported-media-type",
        ),
        bad(
            "too large",
            "PUT",
            doc,
            JSON,
            format!("{{\"a\":\"{}\"}}", "x".repeat(1024 * 1024)),
            413,
            "payload-too-large",
        ),
        bad(
            "uppercase collection",
            "PUT",
            "/v1/Safe/doc",
            JSON,
            "{}",
            400,
            "malformed-request",
        ),
        bad(
            "system-looking collection",
            "PUT",
            "/v1/_safe/doc",
            JSON,
            "{}",
            400,
            "malformed-request",
        ),
        bad(
            "id with a dot first",
            "PUT",
            "/v1/safe/.doc",
            JSON,
            "{}",
            400,
            "malformed-request",
        ),
        bad(
            "id too long",
            "PUT",
            &format!("/v1/safe/{}", "x".repeat(256)),
            JSON,
            "{}",
            400,
            "malformed-request",
        ),
        bad(
            "encoded space in id",
            "PUT",
            "/v1/safe/a%20b",
            JSON,
            "{}",
            400,
            "malformed-request",
        ),
        bad(
            "limit zero",
            "GET",
            "/v1/safe?limit=0",
            None,
            "",
            400,
            "malformed-request",
        ),
        saying(
            bad(
                "limit not a number",
                "GET",
                "/v1/safe?limit=ten",
                None,
                "",
                400,
                "malformed-request",
            ),
            &["limit", "non-negative integer"],
        ),
        bad(
            "garbage cursor",
            "GET",
            "/v1/safe?cursor=%21%21",
            None,
            "",
            400,
            "malformed-request",
        ),
        bad(
            "bad version",
            "GET",
            "/v1/safe/doc?version=-1",
            None,
            "",
            400,
            "malformed-request",
        ),
        bad(
            "bad since",
            "GET",
            "/v1/_changes?since=yesterday",
            None,
            "",
            400,
            "malformed-request",
        ),
        bad(
            "bad collection filter",
            "GET",
            "/v1/_changes?collection=Nope",
            None,
            "",
            400,
            "malformed-request",
        ),
        saying(
            bad(
                "malformed JSON Patch",
                "PATCH",
                doc,
                JSON_PATCH,
                "[{\"op\":\"explode\"}]",
                400,
                "malformed-request",
            ),
            &["operation 0", "explode"],
        ),
        saying(
            bad(
                "JSON Patch op without its value",
                "PATCH",
                doc,
                JSON_PATCH,
                "[{\"op\":\"add\",\"path\":\"/x\"}]",
                400,
                "malformed-request",
            ),
            &["operation 0", "\"value\""],
        ),
        bad(
            "JSON Patch not an array",
            "PATCH",
            doc,
            JSON_PATCH,
            "{}",
            400,
            "malformed-request",
        ),
        bad(
            "merge patch bad JSON",
            "PATCH",
            doc,
            MERGE,
            "{",
            400,
            "malformed-request",
        ),
        bad(
            "merge patch making an array",
            "PATCH",
            doc,
            MERGE,
            "[1]",
            422,
            "validation-failed",
        ),
        bad(
            "JSON Patch making a string",
            "PATCH",
            doc,
            JSON_PATCH,
            "[{\"op\":\"replace\",\"path\":\"\",\"value\":\"s\"}]",
            422,
            "validation-failed",
        ),
        bad(
            "JSON Patch test fails",
            "PATCH",
            doc,
            JSON_PATCH,
            "[{\"op\":\"test\",\"path\":\"/n\",\"value\":99}]",
            409,
            "patch-test-failed",
        ),
        bad(
            "JSON Patch missing path",
            "PATCH",
            doc,
            JSON_PATCH,
            "[{\"op\":\"remove\",\"path\":\"/nope\"}]",
            409,
            "patch-conflict",
        ),
        bad(
            "revert body not JSON",
            "POST",
            "/v1/safe/doc/revert",
            JSON,
            "to=1",
            400,
            "malformed-request",
        ),
        saying(
            bad(
                "revert unknown field",
                "POST",
                "/v1/safe/doc/revert",
                JSON,
                "{\"to\":1,\"x\":2}",
                400,
                "malformed-request",
            ),
            &["unknown member \"x\""],
        ),
        bad(
            "no such route",
            "GET",
            "/v2/safe/doc",
            None,
            "",
            404,
            "not-found",
        ),
        bad(
            "no such system route",
            "GET",
            "/v1/_nothing/a/b/c",
            None,
            "",
            404,
            "not-found",
        ),
        bad(
            "method not allowed",
            "POST",
            doc,
            JSON,
            "{}",
            405,
            "method-not-allowed",
        ),
    ];
    let mut gzip = bad(
        "content coding",
        "PUT",
        doc,
        JSON,
        "{}",
        415,
        "unsupported-media-type",
    );
    gzip.headers.push(("content-encoding", "gzip".into()));
    cases.push(gzip);
    let mut etag = bad(
        "malformed If-Match",
        "PUT",
        doc,
        JSON,
        "{}",
        400,
        "malformed-request",
    );
    etag.headers.push(("if-match", "no-quotes".into()));
    cases.push(etag);
    let mut event_id = bad(
        "bad Last-Event-ID",
        "GET",
        "/v1/_changes",
        None,
        "",
        400,
        "malformed-request",
    );
    event_id
        .headers
        .push(("accept", "text/event-stream".into()));
    event_id.headers.push(("last-event-id", "x".into()));
    cases.push(event_id);
    cases
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_changes_nothing() {
    let server = TestServer::start().await;
    let original = json!({"n": 1, "keep": ["me"]});
    let tag = server.create("/v1/safe/doc", &original).await;
    // The deepest allowed document is accepted.
    let deepest: Value = serde_json::from_str(&nested(64)).unwrap();
    assert_eq!(
        server.put("/v1/safe/deep", &deepest, &[]).await.status(),
        201
    );

    for case in bad_inputs() {
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut request = server
            .client
            .request(method, server.url(&case.path))
            .body(case.body.clone());
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        if case.status == 405 {
            assert!(header(&response, "allow").contains("PUT"), "{}", case.label);
        }
        let body = problem(response, case.status, case.slug).await;
        let detail = body["detail"].as_str().unwrap();
        assert!(!detail.is_empty(), "{}", case.label);
        for words in &case.says {
            assert!(
                detail.contains(words),
                "{}: {detail:?} lacks {words:?}",
                case.label
            );
        }
        for foreign in FOREIGN_WORDING {
            assert!(!detail.contains(foreign), "{}: {detail:?}", case.label);
        }
        match case.slug {
            "patch-test-failed" | "patch-conflict" => {
                assert_eq!(body["operation"], 0, "{}", case.label);
                assert_eq!(body["current_version"], 1, "{}", case.label);
                assert_eq!(body["current_etag"], tag, "{}", case.label);
                assert!(body["path"].is_string(), "{}", case.label);
            }
            "validation-failed" => {
                assert_eq!(body["errors"][0]["pointer"], "", "{}", case.label);
                assert!(body["errors"][0]["message"].is_string());
            }
            "payload-too-large" => assert_eq!(body["limit"], 1024 * 1024),
            _ => {}
        }
        // The server still serves, and the document is untouched.
        let read = server.get("/v1/safe/doc", &[]).await;
        assert_eq!(read.status(), 200, "after {}", case.label);
        assert_eq!(crate::common::etag(&read), tag, "after {}", case.label);
        assert_eq!(
            read.json::<Value>().await.unwrap(),
            original,
            "after {}",
            case.label
        );
    }
    let history = server.get_json("/v1/safe/doc/versions").await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_oversized_chunked_body_is_refused() {
    let server = TestServer::start_with(|config, store| {
        config.limits.max_body_bytes = 1000;
        store.limits.max_body_bytes = 1000;
    })
    .await;
    // No Content-Length: the limit applies while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..20)
        .map(|i| {
            Ok(if i == 0 {
                b"{\"a\":\"".to_vec()
            } else {
                vec![b'x'; 100]
            })
        })
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = server
        .client
        .put(server.url("/v1/safe/big"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    problem(response, 413, "payload-too-large").await;
    problem(server.get("/v1/safe/big", &[]).await, 404, "not-found").await;
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_lives_on() {
    async fn boom() -> &'static str {
        panic!("secret internal detail")
    }
    let app = truce_server::with_envelope(
        Router::new()
            .route("/boom", get(boom))
            .route("/ok", get(|| async { "ok" })),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = client();
    for _ in 0..3 {
        let response = client
            .get(format!("{base}/boom"))
            .header("x-request-id", "req-panic-1")
            .send()
            .await
            .unwrap();
        let body = problem(response, 500, "internal-error").await;
        assert_eq!(body["request_id"], "req-panic-1");
        assert!(!body.to_string().contains("secret"), "{body}");
        assert!(!body.to_string().contains("panicked"), "{body}");
        let ok = client.get(format!("{base}/ok")).send().await.unwrap();
        assert_eq!(ok.text().await.unwrap(), "ok");
    }
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let server = TestServer::start().await;
    let given = server.get("/healthz", &[("x-request-id", "abc-123")]).await;
    assert_eq!(header(&given, "x-request-id"), "abc-123");
    let made = server.get("/healthz", &[]).await;
    let a = header(&made, "x-request-id");
    let again = server.get("/healthz", &[]).await;
    assert_ne!(a, header(&again, "x-request-id"));
    // An unusable id (too long) is replaced.
    let long = "x".repeat(300);
    let replaced = server.get("/healthz", &[("x-request-id", &long)]).await;
    assert_ne!(header(&replaced, "x-request-id"), long);
}

#[tokio::test]
async fn a_stalled_body_times_out_with_408() {
    let server = TestServer::start_with(|config, _| {
        config.body_timeout = Duration::from_millis(300);
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(
            b"PUT /v1/slow/doc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"n\":",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("/problems/request-timeout"), "{text}");
    problem(server.get("/v1/slow/doc", &[]).await, 404, "not-found").await;
}

#[tokio::test]
async fn a_stalled_request_head_is_disconnected() {
    let server = TestServer::start_with(|config, _| {
        config.header_timeout = Duration::from_millis(300);
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    // Closed (cleanly, or reset) without an answer to the half-sent request.
    match read {
        Ok(_) => assert!(
            answer.is_empty() || String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        ),
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
    }
    // Everyone else is still served.
    assert_eq!(server.get("/healthz", &[]).await.status(), 200);
}

/// Sends `head` (and nothing more) on a fresh connection, reading the answer
/// while it is still being sent; returns the answer's bytes.
async fn raw_answer(server: &TestServer, head: Vec<u8>) -> String {
    let address = server.base.trim_start_matches("http://").to_owned();
    let stream = TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        // The server may stop reading (and close) before all of it is sent.
        let _ = writer.write_all(&head).await;
        writer
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes");
    drop(sending.await);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The answer's problem body, checked against its status line.
fn raw_problem(answer: &str, status: u16, slug: &str) -> Value {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).expect("a JSON problem");
    assert_eq!(body["type"], format!("/problems/{slug}"));
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_hyper_refuses_still_get_problem_answers() {
    let server = TestServer::start().await;
    let big = format!(
        "GET /v1/notes HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(2 << 20)
    );
    raw_problem(
        &raw_answer(&server, big.into_bytes()).await,
        431,
        "header-fields-too-large",
    );

    let mut many = String::from("GET /v1/notes HTTP/1.1\r\nhost: x\r\n");
    for n in 0..120 {
        many.push_str(&format!("x-h{n}: v\r\n"));
    }
    many.push_str("\r\n");
    raw_problem(
        &raw_answer(&server, many.into_bytes()).await,
        431,
        "header-fields-too-large",
    );

    let garbage = b"GET /v1/notes HTTP/1.1\r\nbad header line\r\n\r\n".to_vec();
    raw_problem(
        &raw_answer(&server, garbage).await,
        400,
        "malformed-request",
    );

    let long = format!("GET /v1/{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    raw_problem(
        &raw_answer(&server, long.into_bytes()).await,
        414,
        "uri-too-long",
    );

    // Nothing else is touched: the server still answers as before.
    assert_eq!(server.get("/healthz", &[]).await.status(), 200);
}
