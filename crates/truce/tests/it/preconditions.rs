//! SPEC §2: RFC 9110 preconditions, one table row per case, each header alone and
//! combined in the §13.2.2 order, on live, missing and deleted resources.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::common::{TestServer, etag, header, problem};

/// The state of the resource before the request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Two versions: `{"n": 1}` then `{"n": 2}` (current).
    Live,
    /// Never created.
    Missing,
    /// Two versions, then deleted (tombstone at version 3).
    Deleted,
}

/// The body a write sends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Body {
    None,
    /// `{"n": 3}`: a real change.
    Change,
    /// `{"n": 2}`: what the current version already holds.
    Same,
}

struct Case {
    method: &'static str,
    state: State,
    headers: &'static [(&'static str, &'static str)],
    query: &'static str,
    body: Body,
    status: u16,
    /// The current version afterwards (0: not live).
    version_after: u64,
}

const fn case(
    method: &'static str,
    state: State,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    version_after: u64,
) -> Case {
    let body = if matches!(method.as_bytes(), b"PUT") {
        Body::Change
    } else {
        Body::None
    };
    Case {
        method,
        state,
        headers,
        query: "",
        body,
        status,
        version_after,
    }
}

use State::{Deleted, Live, Missing};

fn cases() -> Vec<Case> {
    vec![
        // GET: If-Match (strong).
        case("GET", Live, &[("if-match", "{current}")], 200, 2),
        case("GET", Live, &[("if-match", "{stale}")], 412, 2),
        case("GET", Live, &[("if-match", "{weak_current}")], 412, 2),
        case("GET", Live, &[("if-match", "*")], 200, 2),
        case("GET", Live, &[("if-match", "{stale}, {current}")], 200, 2),
        case(
            "GET",
            Live,
            &[("if-match", "{stale}"), ("if-match", "{current}")],
            200,
            2,
        ),
        // GET: If-None-Match (weak).
        case("GET", Live, &[("if-none-match", "{current}")], 304, 2),
        case("GET", Live, &[("if-none-match", "{weak_current}")], 304, 2),
        case("GET", Live, &[("if-none-match", "{stale}")], 200, 2),
        case("GET", Live, &[("if-none-match", "*")], 304, 2),
        case(
            "GET",
            Live,
            &[("if-none-match", "{stale}, {weak_current}")],
            304,
            2,
        ),
        // GET: dates.
        case("GET", Live, &[("if-modified-since", "{lm}")], 304, 2),
        case("GET", Live, &[("if-modified-since", "{lm_future}")], 304, 2),
        case("GET", Live, &[("if-modified-since", "{lm_past}")], 200, 2),
        case("GET", Live, &[("if-modified-since", "not a date")], 200, 2),
        case("GET", Live, &[("if-unmodified-since", "{lm}")], 200, 2),
        case("GET", Live, &[("if-unmodified-since", "{lm_past}")], 412, 2),
        case(
            "GET",
            Live,
            &[("if-unmodified-since", "not a date")],
            200,
            2,
        ),
        // GET: the RFC 9110 §13.2.2 order.
        case(
            "GET",
            Live,
            &[
                ("if-match", "{current}"),
                ("if-unmodified-since", "{lm_past}"),
            ],
            200,
            2,
        ),
        case(
            "GET",
            Live,
            &[
                ("if-none-match", "{stale}"),
                ("if-modified-since", "{lm_future}"),
            ],
            200,
            2,
        ),
        case(
            "GET",
            Live,
            &[("if-match", "{stale}"), ("if-none-match", "{stale}")],
            412,
            2,
        ),
        case(
            "GET",
            Live,
            &[("if-match", "{current}"), ("if-none-match", "{current}")],
            304,
            2,
        ),
        case(
            "GET",
            Live,
            &[
                ("if-unmodified-since", "{lm_past}"),
                ("if-none-match", "{current}"),
            ],
            412,
            2,
        ),
        case(
            "GET",
            Live,
            &[
                ("if-unmodified-since", "{lm}"),
                ("if-none-match", "{current}"),
            ],
            304,
            2,
        ),
        // GET on missing or deleted resources: 404 whatever the conditions.
        case("GET", Missing, &[("if-none-match", "*")], 404, 0),
        case("GET", Missing, &[("if-match", "*")], 404, 0),
        case("GET", Deleted, &[("if-none-match", "*")], 404, 0),
        case("GET", Deleted, &[("if-match", "*")], 404, 0),
        // HEAD behaves like GET.
        case("HEAD", Live, &[("if-none-match", "{current}")], 304, 2),
        case("HEAD", Live, &[("if-match", "{stale}")], 412, 2),
        // PUT: If-Match.
        case("PUT", Live, &[("if-match", "{current}")], 200, 3),
        case("PUT", Live, &[("if-match", "{stale}")], 412, 2),
        case("PUT", Live, &[("if-match", "{weak_current}")], 412, 2),
        case("PUT", Live, &[("if-match", "*")], 200, 3),
        case("PUT", Live, &[("if-match", "\"x\", {current}")], 200, 3),
        case("PUT", Missing, &[("if-match", "*")], 412, 0),
        case("PUT", Missing, &[("if-match", "{stale}")], 412, 0),
        case("PUT", Deleted, &[("if-match", "*")], 412, 0),
        // PUT: If-None-Match (create-only with *).
        case("PUT", Live, &[("if-none-match", "*")], 412, 2),
        case("PUT", Missing, &[("if-none-match", "*")], 201, 1),
        case("PUT", Deleted, &[("if-none-match", "*")], 201, 4),
        case("PUT", Live, &[("if-none-match", "{weak_current}")], 412, 2),
        case("PUT", Live, &[("if-none-match", "{stale}")], 200, 3),
        // PUT: dates; If-Modified-Since does not apply to writes.
        case("PUT", Live, &[("if-unmodified-since", "{lm}")], 200, 3),
        case("PUT", Live, &[("if-unmodified-since", "{lm_past}")], 412, 2),
        case(
            "PUT",
            Live,
            &[("if-unmodified-since", "not a date")],
            200,
            3,
        ),
        case(
            "PUT",
            Missing,
            &[("if-unmodified-since", "{lm_past}")],
            201,
            1,
        ),
        case("PUT", Live, &[("if-modified-since", "{lm_future}")], 200, 3),
        // PUT: order.
        case(
            "PUT",
            Live,
            &[
                ("if-match", "{current}"),
                ("if-unmodified-since", "{lm_past}"),
            ],
            200,
            3,
        ),
        case(
            "PUT",
            Live,
            &[("if-match", "{current}"), ("if-none-match", "*")],
            412,
            2,
        ),
        case(
            "PUT",
            Live,
            &[("if-match", "{stale}"), ("if-none-match", "{stale}")],
            412,
            2,
        ),
        // DELETE and PATCH need a live resource first.
        case("DELETE", Live, &[("if-match", "{current}")], 200, 0),
        case("DELETE", Live, &[("if-match", "{stale}")], 412, 2),
        case("DELETE", Missing, &[("if-match", "*")], 404, 0),
        case("DELETE", Deleted, &[("if-match", "{stale}")], 404, 0),
        case("PATCH", Missing, &[("if-match", "*")], 404, 0),
        case("PATCH", Live, &[("if-match", "{stale}")], 412, 2),
        case("PATCH", Live, &[("if-match", "{current}")], 200, 3),
        // Malformed entity-tags are a 400, not a silently false condition.
        case("GET", Live, &[("if-match", "unquoted")], 400, 2),
        case("PUT", Live, &[("if-none-match", "\"a\" \"b\"")], 400, 2),
        case("PUT", Live, &[("if-match", "*, {current}")], 400, 2),
        // A stale If-Match is refused even when the content is already what the
        // write would make (no RFC 9110 §13.1.1 "already applied" success); the 412
        // says so with `current_matches_request`.
        Case {
            body: Body::Same,
            ..case("PUT", Live, &[("if-match", "{stale}")], 412, 2)
        },
        Case {
            body: Body::Same,
            ..case("PUT", Live, &[("if-unmodified-since", "{lm_past}")], 412, 2)
        },
        Case {
            body: Body::Same,
            ..case("PUT", Live, &[("if-none-match", "*")], 412, 2)
        },
        // ?if_version: body-level optimistic locking.
        Case {
            query: "?if_version=2",
            ..case("PUT", Live, &[], 200, 3)
        },
        Case {
            query: "?if_version=1",
            ..case("PUT", Live, &[], 409, 2)
        },
        Case {
            query: "?if_version=0",
            ..case("PUT", Live, &[], 409, 2)
        },
        Case {
            query: "?if_version=0",
            ..case("PUT", Missing, &[], 201, 1)
        },
        Case {
            query: "?if_version=0",
            ..case("PUT", Deleted, &[], 201, 4)
        },
        Case {
            query: "?if_version=1",
            ..case("PUT", Missing, &[], 409, 0)
        },
        Case {
            query: "?if_version=2",
            ..case("DELETE", Live, &[], 200, 0)
        },
        Case {
            query: "?if_version=1",
            ..case("DELETE", Live, &[], 409, 2)
        },
        Case {
            query: "?if_version=1",
            ..case("PATCH", Live, &[], 409, 2)
        },
        Case {
            query: "?if_version=abc",
            ..case("PUT", Live, &[], 400, 2)
        },
        // Header preconditions come before ?if_version.
        Case {
            query: "?if_version=1",
            ..case("PUT", Live, &[("if-match", "{stale}")], 412, 2)
        },
        Case {
            query: "?if_version=2",
            ..case("PUT", Live, &[("if-match", "{current}")], 200, 3)
        },
    ]
}

/// The HTTP-date of `last_modified` moved by `offset` seconds.
fn shifted(last_modified: &str, offset: i64) -> String {
    let time = httpdate::parse_http_date(last_modified).unwrap();
    let moved = if offset >= 0 {
        time + Duration::from_secs(offset as u64)
    } else {
        time - Duration::from_secs(offset.unsigned_abs())
    };
    httpdate::fmt_http_date(moved)
}

#[tokio::test]
async fn every_precondition_case() {
    let server = TestServer::start().await;
    for (i, case) in cases().into_iter().enumerate() {
        let path = format!("/v1/pre/case-{i}");
        let mut stale = "\"0-none\"".to_owned();
        let mut current = "\"0-none\"".to_owned();
        let mut last_modified = httpdate::fmt_http_date(SystemTime::now());
        if case.state != Missing {
            stale = server.create(&path, &json!({"n": 1})).await;
            let second = server.put(&path, &json!({"n": 2}), &[]).await;
            current = etag(&second);
            last_modified = header(&second, "last-modified");
        }
        if case.state == Deleted {
            let deleted = server
                .client
                .delete(server.url(&path))
                .send()
                .await
                .unwrap();
            assert_eq!(deleted.status(), 200);
        }
        let weak_current = format!("W/{current}");
        let lm_past = shifted(&last_modified, -3600);
        let lm_future = shifted(&last_modified, 3600);
        let fill = |template: &str| {
            template
                .replace("{current}", &current)
                .replace("{stale}", &stale)
                .replace("{weak_current}", &weak_current)
                .replace("{lm_past}", &lm_past)
                .replace("{lm_future}", &lm_future)
                .replace("{lm}", &last_modified)
        };
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
        let mut request = server
            .client
            .request(method, server.url(&format!("{path}{}", case.query)));
        for (name, value) in case.headers {
            request = request.header(*name, fill(value));
        }
        request = match (case.method, case.body) {
            ("PATCH", _) => request
                .header("content-type", "application/merge-patch+json")
                .body(r#"{"n": 3}"#),
            (_, Body::Change) => request
                .header("content-type", "application/json")
                .body(r#"{"n": 3}"#),
            (_, Body::Same) => request
                .header("content-type", "application/json")
                .body(r#"{"n": 2}"#),
            (_, Body::None) => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let label = format!(
            "case {i}: {} {:?} {:?}{}",
            case.method, case.state, case.headers, case.query
        );
        assert_eq!(status, case.status, "{label}");
        match status {
            412 if case.method == "HEAD" => {
                // No body on HEAD, but the headers are the problem's.
                assert_eq!(
                    header(&response, "content-type"),
                    "application/problem+json"
                );
                assert_eq!(etag(&response), current, "{label}");
            }
            304 => {
                assert_eq!(etag(&response), current, "{label}: 304 carries the ETag");
                assert_eq!(header(&response, "cache-control"), "no-cache");
            }
            412 => {
                let live = case.state == Live;
                let body = problem(response, 412, "precondition-failed").await;
                let matches = live && case.body == Body::Same;
                assert_eq!(
                    body.get("current_matches_request").cloned(),
                    matches.then_some(json!(true)),
                    "{label}"
                );
                if live {
                    assert_eq!(body["current_version"], 2, "{label}");
                    assert_eq!(body["current_etag"], current, "{label}");
                    assert_eq!(
                        body["resource"],
                        json!({"collection": "pre", "id": format!("case-{i}")}),
                        "{label}"
                    );
                }
            }
            409 => {
                if case.state == Live {
                    assert_eq!(etag(&response), current, "{label}: 409 carries the ETag");
                }
                let body = problem(response, 409, "version-conflict").await;
                assert!(body["expected_version"].is_u64(), "{label}");
                if case.state == Live {
                    assert_eq!(body["current_version"], 2, "{label}");
                    assert_eq!(body["current_etag"], current, "{label}");
                    assert_eq!(body["resource"]["id"], format!("case-{i}"), "{label}");
                }
            }
            400 => {
                problem(response, 400, "malformed-request").await;
            }
            404 => {
                problem(response, 404, "not-found").await;
            }
            _ => {}
        }
        // The resource's version afterwards: refused requests changed nothing.
        let after = server.get(&path, &[]).await;
        let version_after = if after.status() == 200 {
            header(&after, "truce-version").parse::<u64>().unwrap()
        } else {
            0
        };
        assert_eq!(
            version_after, case.version_after,
            "{label}: version afterwards"
        );
    }
}

#[tokio::test]
async fn a_refused_write_carries_the_current_etag_header() {
    let server = TestServer::start().await;
    let stale = server.create("/v1/pre/a", &json!({"n": 1})).await;
    let current = etag(&server.put("/v1/pre/a", &json!({"n": 2}), &[]).await);
    let refused = server
        .put("/v1/pre/a", &json!({"n": 3}), &[("if-match", &stale)])
        .await;
    assert_eq!(etag(&refused), current);
    let body: Value = problem(refused, 412, "precondition-failed").await;
    assert_eq!(body["current_etag"], current);
    // Retrying with the ETag from the refusal succeeds.
    let retried = server
        .put("/v1/pre/a", &json!({"n": 3}), &[("if-match", &current)])
        .await;
    assert_eq!(retried.status(), 200);
}
