//! SPEC §10: `GET /openapi.json` is OpenAPI 3.1, documents every route the server
//! serves (and nothing it does not), and its problem schema covers every member a
//! problem body can carry.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::TestServer;

/// Every route of the contract this server implements.
const EXPECTED: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/metrics"),
    ("get", "/problems/{slug}"),
    ("get", "/v1/_changes"),
    ("post", "/v1/_compact"),
    ("get", "/v1/{collection}"),
    ("post", "/v1/{collection}"),
    ("get", "/v1/{collection}/{id}"),
    ("head", "/v1/{collection}/{id}"),
    ("put", "/v1/{collection}/{id}"),
    ("patch", "/v1/{collection}/{id}"),
    ("delete", "/v1/{collection}/{id}"),
    ("get", "/v1/{collection}/{id}/versions"),
    ("get", "/v1/{collection}/{id}/versions/{n}"),
    ("get", "/v1/{collection}/{id}/diff"),
    ("post", "/v1/{collection}/{id}/revert"),
    ("post", "/v1/{collection}/{id}/lock"),
    ("put", "/v1/{collection}/{id}/lock"),
    ("delete", "/v1/{collection}/{id}/lock"),
    ("get", "/v1/{collection}/{id}/lock"),
    ("post", "/v1/_txn"),
    ("post", "/v1/_txn/begin"),
    ("post", "/v1/_txn/{txn}/commit"),
    ("post", "/v1/_txn/{txn}/rollback"),
    ("get", "/v1/{collection}/{id}/watch"),
    ("get", "/v1/_conflicts"),
    ("get", "/v1/_conflicts/stream"),
    ("get", "/v1/_conflicts/{cid}"),
    ("post", "/v1/_conflicts/{cid}/resolve"),
    ("post", "/v1/_conflicts/{cid}/dismiss"),
    ("get", "/v1/_collections/{collection}"),
    ("put", "/v1/_collections/{collection}"),
    ("post", "/v1/_subscriptions"),
    ("get", "/v1/_subscriptions"),
    ("get", "/v1/_subscriptions/{sid}"),
    ("put", "/v1/_subscriptions/{sid}"),
    ("delete", "/v1/_subscriptions/{sid}"),
    ("get", "/v1/_keys"),
    ("post", "/v1/_keys"),
    ("delete", "/v1/_keys/{kid}"),
    ("get", "/v1/_subscriptions/{sid}/deliveries"),
];

const METHODS: &[&str] = &[
    "get", "head", "put", "post", "patch", "delete", "options", "trace",
];

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(*method).is_some() {
                found.insert(((*method).to_owned(), path.clone()));
            }
        }
    }
    found
}

/// Collects every `$ref` in the document.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_matches_the_routes() {
    let server = TestServer::start().await;
    let response = server.get("/openapi.json", &[]).await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let expected: BTreeSet<(String, String)> = EXPECTED
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(operations(&doc), expected);

    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for reference in all_refs {
        let pointer = reference.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "dangling {reference}");
    }

    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path} documents no success"
        );
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/problem+json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/Problem",
                    "{method} {path} {status} is not a problem"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let server = TestServer::start().await;
    server.create("/v1/probe/x", &json!({"n": 1})).await;
    let doc: Value = server.get_json("/openapi.json").await;
    for (method, path) in operations(&doc) {
        // Every probe finds the resource alive (an earlier probe may have deleted it).
        server.put("/v1/probe/x", &json!({"n": 1}), &[]).await;
        let concrete = path
            .replace("{collection}", "probe")
            .replace("{id}", "x")
            .replace("{n}", "1")
            .replace("{slug}", "not-found");
        let request = server
            .client
            .request(
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                server.url(&concrete),
            )
            .timeout(Duration::from_secs(5));
        let request = match (method.as_str(), concrete.as_str()) {
            ("patch", _) => request
                .header("content-type", "application/merge-patch+json")
                .body("{}"),
            ("put" | "post", p) if p.ends_with("/revert") => request
                .header("content-type", "application/json")
                .body(r#"{"to": 1}"#),
            ("put" | "post", _) => request
                .header("content-type", "application/json")
                .body("{}"),
            _ => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert_ne!(status, 405, "{method} {path} is documented but not routed");
        if status == 404 && method != "head" {
            let body: Value = response.json().await.unwrap();
            let detail = body["detail"].as_str().unwrap();
            assert!(
                !detail.starts_with("there is no resource at"),
                "{method} {path} is documented but not routed"
            );
        }
    }
}

#[tokio::test]
async fn problem_bodies_only_use_documented_members() {
    let server = TestServer::start_with(|_, store| {
        store.retention.max_versions = Some(1);
    })
    .await;
    let doc: Value = server.get_json("/openapi.json").await;
    let documented: BTreeSet<String> = doc["components"]["schemas"]["Problem"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let stale = server.create("/v1/pb/a", &json!({"n": 1})).await;
    server.put("/v1/pb/a", &json!({"n": 2}), &[]).await;
    server.create("/v1/pb/gone", &json!({})).await;
    server
        .client
        .delete(server.url("/v1/pb/gone"))
        .send()
        .await
        .unwrap();
    let json_type = ("content-type", "application/json");
    let mut bodies = vec![
        server
            .put("/v1/pb/a", &json!({"n": 3}), &[("if-match", &stale)])
            .await,
        server
            .put("/v1/pb/a?if_version=1", &json!({"n": 3}), &[])
            .await,
        server.get("/v1/pb/gone", &[]).await,
        server.get("/v1/pb/a/versions/1", &[]).await,
        server.get("/v1/Bad/a", &[]).await,
        server
            .client
            .patch(server.url("/v1/pb/a"))
            .header("content-type", "application/json-patch+json")
            .body(r#"[{"op":"test","path":"/n","value":0}]"#)
            .send()
            .await
            .unwrap(),
        server
            .client
            .patch(server.url("/v1/pb/a"))
            .header("content-type", "application/merge-patch+json")
            .body("[]")
            .send()
            .await
            .unwrap(),
    ];
    bodies.push(
        server
            .client
            .put(server.url("/v1/pb/big"))
            .header(json_type.0, json_type.1)
            .body(vec![b' '; 2 * 1024 * 1024])
            .send()
            .await
            .unwrap(),
    );
    for response in bodies {
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        for key in body.as_object().unwrap().keys() {
            assert!(
                documented.contains(key),
                "{status}: member {key} is not in the Problem schema"
            );
        }
    }
}

/// A Python virtual environment under `target/` with the OpenAPI validator, made
/// once and reused. The validator is a PyPI package, pinned.
fn openapi_validator() -> std::path::PathBuf {
    const PACKAGE: &str = "openapi-spec-validator==0.9.0";
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools");
    let venv = target.join("openapi-venv");
    let validator = venv.join("bin/openapi-spec-validator");
    if validator.exists() {
        return validator;
    }
    std::fs::create_dir_all(&target).expect("target/test-tools");
    let run = |program: &std::path::Path, args: &[&str]| {
        let status = std::process::Command::new(program).args(args).status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "{} {args:?} failed ({status:?}): this test needs python3 with venv and pip, \
             and PyPI reachable (Debian: apt-get install python3-venv)",
            program.display()
        );
    };
    run(
        std::path::Path::new("python3"),
        &["-m", "venv", venv.to_str().expect("path")],
    );
    run(&venv.join("bin/pip"), &["install", "--quiet", PACKAGE]);
    validator
}

#[tokio::test]
async fn the_document_passes_an_openapi_3_1_validator() {
    let server = TestServer::start().await;
    let doc = server.get_json("/openapi.json").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let validator = openapi_validator();
    let output = tokio::process::Command::new(&validator)
        .arg(&file)
        .output()
        .await
        .expect("run the validator");
    assert!(
        output.status.success(),
        "the OpenAPI document does not validate:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // What the validator does not check, but clients rely on: unique operation
    // ids, name patterns on path parameters, declared headers, 405 everywhere.
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(operation) = item.get(*method) else {
                continue;
            };
            let id = operation["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "operation id {id} is not unique");
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses["405"]["headers"].get("Allow").is_some(),
                "{method} {path}: 405"
            );
            for (status, response) in responses {
                assert!(
                    response["headers"].get("X-Request-Id").is_some(),
                    "{method} {path} {status}: X-Request-Id"
                );
            }
            let parameters = operation["parameters"].as_array().unwrap();
            for parameter in parameters {
                if parameter["in"] == "path" && parameter["schema"]["type"] == "string" {
                    assert!(
                        parameter["schema"]["pattern"].is_string(),
                        "{method} {path}: {} has no pattern",
                        parameter["name"]
                    );
                }
            }
            let headers: BTreeSet<&str> = parameters
                .iter()
                .filter(|p| p["in"] == "header")
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert!(headers.contains("X-Request-Id"), "{method} {path}");
            let lock = path.ends_with("/lock");
            if path.starts_with("/v1/{collection}/{id}") && !path.ends_with("/watch") && !lock {
                for conditional in ["If-Match", "If-None-Match", "If-Unmodified-Since"] {
                    assert!(
                        headers.contains(conditional),
                        "{method} {path}: {conditional}"
                    );
                }
            }
            // Every write a lock guards names Lock-Token and its 423.
            let guarded = path.starts_with("/v1/{collection}/{id}")
                && !lock
                && matches!(*method, "put" | "patch" | "delete" | "post")
                || path.ends_with("/resolve");
            if guarded {
                assert!(
                    headers.contains("Lock-Token"),
                    "{method} {path}: Lock-Token"
                );
                assert!(responses.contains_key("423"), "{method} {path}: 423");
            }
            // Prefer: return=minimal is honoured by writes of documents and of
            // collection settings (docs/HTTP.md); subscriptions answer in full.
            let prefers =
                path.starts_with("/v1/{collection}") || path.starts_with("/v1/_collections");
            if prefers
                && !lock
                && (matches!(*method, "put" | "patch" | "delete") || path.ends_with("/revert"))
            {
                assert!(headers.contains("Prefer"), "{method} {path}: Prefer");
                let ok = responses
                    .iter()
                    .find(|(status, _)| status.starts_with('2'))
                    .map(|(_, r)| r)
                    .unwrap();
                assert!(
                    ok["headers"].get("Truce-Outcome").is_some(),
                    "{method} {path}"
                );
                assert!(
                    ok["headers"].get("Preference-Applied").is_some(),
                    "{method} {path}"
                );
                if path.starts_with("/v1/{collection}/{id}") {
                    for name in ["Truce-Merged-From", "Truce-Conflict-Id"] {
                        assert!(ok["headers"].get(name).is_some(), "{method} {path}: {name}");
                    }
                }
            }
        }
    }
}
