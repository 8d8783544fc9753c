//! API keys and roles (SPEC §9): every endpoint's role, checked against a table
//! written here independently of the server's; 401 and 403 as a generic client
//! sees them; the key's name recorded as `by`; revocation at once; no key's
//! secret anywhere in the data directory; and the first key made with the
//! server stopped, which is what lets it bind beyond loopback.

use std::path::Path;

use reqwest::{Client, Method};
use serde_json::{Value, json};

use crate::common::{ServerProcess, TestServer, client, data_dir, header, problem};

/// Makes a key through the API (`admin`: a key with the admin role, or none
/// while the server has no keys).
pub(crate) async fn make_key(
    client: &Client,
    base: &str,
    admin: Option<&str>,
    name: &str,
    roles: &[&str],
) -> String {
    let mut request = client
        .post(format!("{base}/v1/_keys"))
        .json(&json!({"name": name, "roles": roles}));
    if let Some(admin) = admin {
        request = request.bearer_auth(admin);
    }
    let made = request.send().await.expect("create key");
    assert_eq!(made.status(), 201);
    assert_eq!(header(&made, "cache-control"), "no-store");
    let body: Value = made.json().await.expect("key body");
    assert_eq!(body["name"], name);
    body["key"].as_str().expect("the key").to_owned()
}

/// The secret part of a key (`truce_{id}_{secret}`; the secret may hold `_`).
pub(crate) fn secret_of(key: &str) -> &str {
    let secret = key.splitn(3, '_').nth(2).expect("a key's secret");
    assert!(secret.len() >= 40, "{key}");
    secret
}

/// What each endpoint needs, written from SPEC §9 (not from the server's
/// table): `None` is public.
const ROLES: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/openapi.json", None),
    ("GET", "/problems/not-found", None),
    ("GET", "/metrics", Some("admin")),
    ("POST", "/v1/_compact", Some("admin")),
    ("GET", "/v1/_changes", Some("read")),
    ("GET", "/v1/notes", Some("read")),
    ("POST", "/v1/notes", Some("write")),
    ("GET", "/v1/notes/n1", Some("read")),
    ("HEAD", "/v1/notes/n1", Some("read")),
    ("PUT", "/v1/notes/n1", Some("write")),
    ("PATCH", "/v1/notes/n1", Some("write")),
    ("DELETE", "/v1/notes/n9", Some("write")),
    ("GET", "/v1/notes/n1/versions", Some("read")),
    ("GET", "/v1/notes/n1/versions/1", Some("read")),
    ("GET", "/v1/notes/n1/diff?from=1&to=1", Some("read")),
    ("POST", "/v1/notes/n1/revert", Some("write")),
    ("GET", "/v1/_conflicts", Some("read")),
    (
        "GET",
        "/v1/_conflicts/01J0000000000000000000000A",
        Some("read"),
    ),
    (
        "POST",
        "/v1/_conflicts/01J0000000000000000000000A/resolve",
        Some("resolve"),
    ),
    (
        "POST",
        "/v1/_conflicts/01J0000000000000000000000A/dismiss",
        Some("resolve"),
    ),
    ("GET", "/v1/_collections/notes", Some("read")),
    ("PUT", "/v1/_collections/notes", Some("admin")),
    ("GET", "/v1/_subscriptions", Some("admin")),
    ("POST", "/v1/_subscriptions", Some("admin")),
    (
        "GET",
        "/v1/_subscriptions/01J0000000000000000000000A",
        Some("admin"),
    ),
    (
        "PUT",
        "/v1/_subscriptions/01J0000000000000000000000A",
        Some("admin"),
    ),
    (
        "DELETE",
        "/v1/_subscriptions/01J0000000000000000000000A",
        Some("admin"),
    ),
    (
        "GET",
        "/v1/_subscriptions/01J0000000000000000000000A/deliveries",
        Some("admin"),
    ),
    ("GET", "/v1/_keys", Some("admin")),
    ("POST", "/v1/_keys", Some("admin")),
    ("DELETE", "/v1/_keys/0123456789abcdef", Some("admin")),
];

/// Whether a key with `role` may do what `needed` needs (SPEC §9's wording).
fn allows(role: &str, needed: &str) -> bool {
    role == "admin" || role == needed || (needed == "read" && matches!(role, "write" | "resolve"))
}

/// A body each request can carry without being refused for its shape first.
fn body_for(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        (_, p) if p.ends_with("/revert") => Some(json!({"to": 1})),
        (_, p) if p.ends_with("/resolve") => Some(json!({"take": "theirs"})),
        ("POST", "/v1/_keys") => Some(json!({"name": "made", "roles": ["read"]})),
        ("POST" | "PUT", p) if p.starts_with("/v1/_subscriptions") => {
            Some(json!({"url": "http://127.0.0.1:9/hook", "secret": "s"}))
        }
        ("PUT" | "POST", _) => Some(json!({})),
        ("PATCH", _) => Some(json!({"a": 1})),
        _ => None,
    }
}

async fn send(
    client: &Client,
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let patch = method == Method::PATCH;
    let mut request = client.request(method.clone(), format!("{base}{path}"));
    if let Some(body) = body_for(method.as_str(), path) {
        let media = if patch {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        request = request.header("content-type", media).body(body.to_string());
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("send")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_the_role_the_spec_names() {
    let server = TestServer::start().await;
    let client = &server.client;
    // Without keys, on loopback: everyone is anonymous with every role.
    let open = server.put("/v1/notes/n1", &json!({"v": 1}), &[]).await;
    assert_eq!(open.status(), 201);
    let admin = make_key(client, &server.base, None, "root", &["admin"]).await;
    let mut keys = vec![("admin", admin.clone())];
    for role in ["read", "write", "resolve"] {
        keys.push((
            role,
            make_key(client, &server.base, Some(&admin), role, &[role]).await,
        ));
    }
    server
        .put(
            "/v1/notes/n9",
            &json!({}),
            &[("authorization", &format!("Bearer {admin}"))],
        )
        .await;

    for (method, path, needed) in ROLES {
        let anonymous = send(client, &server.base, method, path, None).await;
        match needed {
            None => assert_eq!(anonymous.status(), 200, "{method} {path} is public"),
            Some(_) => {
                assert_eq!(anonymous.status(), 401, "{method} {path} without a key");
                assert_eq!(
                    header(&anonymous, "www-authenticate"),
                    "Bearer realm=\"truce\""
                );
            }
        }
        let Some(needed) = needed else { continue };
        for (role, key) in &keys {
            let answer = send(client, &server.base, method, path, Some(key)).await;
            let status = answer.status().as_u16();
            if allows(role, needed) {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} with a {role} key: {status}"
                );
            } else {
                assert_eq!(status, 403, "{method} {path} with a {role} key");
                if *method != "HEAD" {
                    let body = problem(answer, 403, "forbidden").await;
                    assert_eq!(body["required_role"], *needed, "{method} {path}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_401_and_revocation_takes_effect_at_once() {
    let server = TestServer::start().await;
    let client = &server.client;
    let admin = make_key(client, &server.base, None, "root", &["admin"]).await;
    let writer = make_key(client, &server.base, Some(&admin), "alice", &["write"]).await;
    let url = server.url("/v1/notes/a");
    let wrong_secret = format!("{}x", &writer[..writer.len() - 1]);
    for bad in [
        "Bearer nonsense",
        "Basic YWxpY2U6cHc=",
        &format!("Bearer {wrong_secret}"),
    ] {
        let refused = client
            .get(&url)
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{bad}");
        let challenge = header(&refused, "www-authenticate");
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        problem(refused, 401, "unauthenticated").await;
    }

    // The key's name is the principal: recorded as `by`.
    let written = client
        .put(&url)
        .bearer_auth(&writer)
        .json(&json!({"v": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 201);
    let stale = header(&written, "etag");
    client
        .put(&url)
        .bearer_auth(&writer)
        .json(&json!({"v": 2}))
        .send()
        .await
        .unwrap();
    let refused = client
        .put(&url)
        .bearer_auth(&writer)
        .header("if-match", &stale)
        .json(&json!({"v": 3}))
        .send()
        .await
        .unwrap();
    let cid = problem(refused, 412, "precondition-failed").await["conflict_id"].clone();
    let history: Value = client
        .get(format!("{url}/versions"))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        history["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["by"] == "alice"),
        "{history}"
    );
    let record: Value = client
        .get(server.url(&format!("/v1/_conflicts/{}", cid.as_str().unwrap())))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["by"], "alice");

    // Revoked: refused on the very next request.
    let listed: Value = client
        .get(server.url("/v1/_keys"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = listed["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .all(|k| k.get("key").is_none() && k.get("hash").is_none()),
        "{listed}"
    );
    let id = items.iter().find(|k| k["name"] == "alice").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = client
        .delete(server.url(&format!("/v1/_keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let after = client.get(&url).bearer_auth(&writer).send().await.unwrap();
    assert_eq!(after.status(), 401);
    let again = client
        .delete(server.url(&format!("/v1/_keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    problem(again, 404, "not-found").await;

    // Once keys exist, requests without one are refused although on loopback.
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_key_is_made_offline_and_no_secret_reaches_the_disk() {
    let (_dir, data) = data_dir();
    let client = client();
    // Beyond loopback without keys: refused, saying how to make the first key.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(&data)
        .output()
        .await
        .expect("run truce serve");
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(said.contains("truce keys create"), "{said}");

    let made = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args([
            "keys", "create", "--name", "ops", "--role", "admin", "--json", "--data",
        ])
        .arg(&data)
        .output()
        .await
        .expect("run truce keys create");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let made: Value = serde_json::from_slice(&made.stdout).expect("JSON");
    let admin = made["key"].as_str().expect("key").to_owned();
    let secret = crate::auth::secret_of(&admin).to_owned();

    // Now it may bind every interface (the test still speaks to loopback).
    let server = ServerProcess::start(&data, &["--listen", "0.0.0.0:0"]).await;
    assert!(
        server.first_line.contains("0.0.0.0:"),
        "{}",
        server.first_line
    );
    let base = server.base.clone();
    let anonymous = client.get(format!("{base}/v1/notes")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let writer = make_key(&client, &base, Some(&admin), "bot", &["write"]).await;
    let written = client
        .put(format!("{base}/v1/notes/n1"))
        .bearer_auth(&writer)
        .header("idempotency-key", "\"k1\"")
        .json(&json!({"v": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 201);
    server.kill().await;

    let mut files = Vec::new();
    files_under(&data, &mut files);
    assert!(!files.is_empty());
    for key in [&admin, &writer] {
        let secret_part = crate::auth::secret_of(key);
        for (path, bytes) in &files {
            assert!(
                !contains(bytes, secret_part.as_bytes()),
                "a key's secret is in {path}"
            );
        }
    }
    assert!(!secret.is_empty());

    // The CLI lists and revokes offline too.
    let listed = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args(["keys", "list", "--json", "--data"])
        .arg(&data)
        .output()
        .await
        .expect("run truce keys list");
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["ops", "bot"]);
    let id = made["id"].as_str().expect("id");
    let revoked = tokio::process::Command::new(env!("CARGO_BIN_EXE_truce"))
        .args(["keys", "revoke", id, "--data"])
        .arg(&data)
        .output()
        .await
        .expect("run truce keys revoke");
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_scoped_per_principal() {
    let server = TestServer::start().await;
    let client = &server.client;
    let admin = make_key(client, &server.base, None, "root", &["admin"]).await;
    let alice = make_key(client, &server.base, Some(&admin), "alice", &["write"]).await;
    let bob = make_key(client, &server.base, Some(&admin), "bob", &["write"]).await;
    let post = |key: &str| {
        client
            .post(server.url("/v1/orders"))
            .bearer_auth(key)
            .header("idempotency-key", "\"same\"")
            .json(&json!({"item": "tea"}))
            .send()
    };
    let first = post(&alice).await.unwrap();
    assert_eq!(first.status(), 201);
    let other = post(&bob).await.unwrap();
    assert_eq!(other.status(), 201);
    assert!(
        !other.headers().contains_key("idempotent-replayed"),
        "bob's key is his own"
    );
    let again = post(&alice).await.unwrap();
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(header(&again, "location"), header(&first, "location"));
}

/// The JSON body of a GET made with `key`.
async fn get_json_with(client: &Client, url: String, key: &str) -> Value {
    let answer = client.get(url).bearer_auth(key).send().await.unwrap();
    answer.json().await.unwrap()
}

/// The id of the key named `name`, as an admin lists it.
pub(crate) async fn key_id(client: &Client, base: &str, admin: &str, name: &str) -> String {
    let listed = get_json_with(client, format!("{base}/v1/_keys"), admin).await;
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A document write is admitted with the key the node verified before, and
/// its commit reads the key again: revoked in between, every kind of document
/// write is refused (401, `invalid_token`), leaves nothing behind (no version,
/// no conflict record, no change), and an idempotent replay of an answer the
/// key got before is refused too, as is every refusal that would come before
/// the commit (auth is the first check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_with_a_key_revoked_since_it_was_verified_are_refused_and_leave_nothing() {
    let server = TestServer::start().await;
    let client = &server.client;
    let admin = make_key(client, &server.base, None, "root", &["admin"]).await;
    let writer = make_key(client, &server.base, Some(&admin), "carol", &["write"]).await;
    let url = server.url("/v1/notes/kept");
    let first_write = || {
        client
            .put(&url)
            .bearer_auth(&writer)
            .header("idempotency-key", "\"once\"")
            .json(&json!({"v": 1}))
            .send()
    };
    let first = first_write().await.unwrap();
    assert_eq!(first.status(), 201);
    let etag = header(&first, "etag");
    let reader = make_key(client, &server.base, Some(&admin), "dave", &["read"]).await;
    let read = client.get(&url).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let feed_before = get_json_with(client, server.url("/v1/_changes"), &admin).await;

    for name in ["carol", "dave"] {
        let id = key_id(client, &server.base, &admin, name).await;
        let revoked = client
            .delete(server.url(&format!("/v1/_keys/{id}")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status(), 204);
    }

    let attempts = [
        (
            Method::PUT,
            url.clone(),
            "application/json",
            json!({"v": 2}),
        ),
        (
            Method::PATCH,
            url.clone(),
            "application/merge-patch+json",
            json!({"v": 3}),
        ),
        (Method::DELETE, url.clone(), "", Value::Null),
        (
            Method::POST,
            server.url("/v1/notes"),
            "application/json",
            json!({"v": 4}),
        ),
        (
            Method::POST,
            format!("{url}/revert"),
            "application/json",
            json!({"to": 1}),
        ),
    ];
    for (method, target, content_type, body) in attempts {
        let mut request = client
            .request(method.clone(), &target)
            .bearer_auth(&writer)
            .header("if-match", &etag);
        if !body.is_null() {
            request = request
                .header("content-type", content_type)
                .body(body.to_string());
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 401, "{method} {target}");
        let challenge = header(&refused, "www-authenticate");
        assert!(challenge.contains("invalid_token"), "{challenge}");
        problem(refused, 401, "unauthenticated").await;
    }
    let replayed = first_write().await.unwrap();
    assert_eq!(replayed.status(), 401);
    assert!(!replayed.headers().contains_key("idempotent-replayed"));
    // Refusals that come before the commit still come after auth (SPEC §8):
    // a malformed body, an idempotency key reused for another request, and a
    // role the key lacks are all 401 for a revoked key.
    let malformed = client
        .put(&url)
        .bearer_auth(&writer)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    problem(malformed, 401, "unauthenticated").await;
    let reused = client
        .put(&url)
        .bearer_auth(&writer)
        .header("idempotency-key", "\"once\"")
        .json(&json!({"v": "other"}))
        .send()
        .await
        .unwrap();
    problem(reused, 401, "unauthenticated").await;
    let beyond_its_role = client
        .put(&url)
        .bearer_auth(&reader)
        .json(&json!({"v": 5}))
        .send()
        .await
        .unwrap();
    problem(beyond_its_role, 401, "unauthenticated").await;

    let current = client.get(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(header(&current, "etag"), etag);
    assert_eq!(current.json::<Value>().await.unwrap(), json!({"v": 1}));
    let listed = get_json_with(client, server.url("/v1/notes"), &admin).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    let conflicts = get_json_with(client, server.url("/v1/_conflicts"), &admin).await;
    assert_eq!(conflicts["items"], json!([]), "{conflicts}");
    let feed_after = get_json_with(client, server.url("/v1/_changes"), &admin).await;
    assert_eq!(feed_after, feed_before);
}

/// On loopback without keys, writes are admitted without a key and their
/// commit checks that still no key exists: once the first key is made, a
/// write without one is refused (401, a plain `Bearer` challenge) and leaves
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_a_key_is_refused_once_the_first_key_exists() {
    let server = TestServer::start().await;
    let client = &server.client;
    let url = server.url("/v1/notes/open");
    let written = client
        .put(&url)
        .json(&json!({"v": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 201);
    let admin = make_key(client, &server.base, None, "root", &["admin"]).await;
    let refused = client
        .put(&url)
        .json(&json!({"v": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        header(&refused, "www-authenticate"),
        "Bearer realm=\"truce\""
    );
    problem(refused, 401, "unauthenticated").await;
    let current = client.get(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(current.json::<Value>().await.unwrap(), json!({"v": 1}));
}
