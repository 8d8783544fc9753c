//! The last pass over the generated OpenAPI document: what holds for every
//! operation is added here once, instead of on forty handler attributes.
//!
//! - operation ids are unique (a route serving GET and HEAD gets `read` and
//!   `read_head`);
//! - path parameters carry the name patterns of SPEC §1;
//! - the request headers the server reads are declared where it reads them
//!   (`X-Request-Id` everywhere; the conditional headers and `Prefer` on the
//!   document operations);
//! - the response headers it sends are declared (`X-Request-Id` on every answer;
//!   `Truce-Outcome` and `Preference-Applied` on write answers, `Truce-Merged-From`
//!   and `Truce-Conflict-Id` on document writes), every operation lists 405 with
//!   `Allow`, and every one that rate limits apply to lists 429.

use serde_json::{Map, Value, json};
use truce_engine::CONFLICT_ID_PATTERN;

/// SPEC §1: collection names.
pub const COLLECTION_PATTERN: &str = "^[a-z][a-z0-9_-]{0,62}$";
/// SPEC §1: document ids.
pub const ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._~-]{0,254}$";

const METHODS: &[&str] = &["get", "head", "put", "post", "patch", "delete"];

/// Applies every rule above to the document.
pub fn finish(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        let get_id = item
            .get("get")
            .and_then(|op| op.get("operationId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        for method in METHODS {
            let Some(operation) = item.get_mut(*method).and_then(Value::as_object_mut) else {
                continue;
            };
            if *method == "head"
                && let Some(get_id) = &get_id
                && operation.get("operationId").and_then(Value::as_str) == Some(get_id)
            {
                operation.insert("operationId".into(), json!(format!("{get_id}_head")));
            }
            secure_operation(path, method, operation);
            finish_operation(path, method, operation);
        }
    }
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`truce_{id}_{secret}`, SPEC §9). Each operation lists the role it needs: `write` and `resolve` imply `read`, `admin` implies all. A server without keys, bound to loopback, serves every request as `anonymous` with all roles."
        }
    });
}

/// The operation's security requirement and its 401/403 answers, from the
/// one access table (`auth::ACCESS`).
fn secure_operation(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let Ok(method) = axum::http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        return;
    };
    match crate::auth::access_for(&method, Some(path)) {
        crate::auth::Access::Public => {
            operation.insert("security".into(), json!([]));
        }
        crate::auth::Access::Needs(role) => {
            operation.insert("security".into(), json!([{ "bearer": [role.as_str()] }]));
            let problem = |description: String| {
                json!({
                    "description": description,
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
                })
            };
            if let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            {
                responses.entry("401").or_insert_with(|| {
                    problem("`unauthenticated`: no API key, or one that is unknown or revoked; with `WWW-Authenticate: Bearer`".into())
                });
                responses.entry("403").or_insert_with(|| {
                    problem(format!(
                        "`forbidden`: the key lacks the `{role}` role; `required_role` names it"
                    ))
                });
            }
        }
    }
}

fn finish_operation(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
    if let Some(parameters) = parameters.as_array_mut() {
        for parameter in parameters.iter_mut() {
            constrain_path_parameter(parameter);
            if parameter["in"] == "header" && parameter["name"] == "Last-Event-ID" {
                parameter["schema"] = json!({"type": "integer", "minimum": 0, "maximum": u64::MAX});
            }
        }
        let mut add = |name: &str, description: &str| {
            let present = parameters.iter().any(|p| {
                p["in"] == "header"
                    && p["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
            });
            if !present {
                parameters.push(json!({
                    "name": name, "in": "header", "required": false,
                    "description": description, "schema": header_schema(name)
                }));
            }
        };
        add(
            "X-Request-Id",
            "Correlates logs; 1 to 128 visible ASCII characters, echoed back (made when absent or invalid)",
        );
        let document = path.starts_with("/v1/{collection}/{id}");
        let lock = path.ends_with("/lock");
        let writes = document && !lock && matches!(method, "put" | "patch" | "delete" | "post");
        let reads = document && matches!(method, "get" | "head") && !path.ends_with("/watch");
        if reads || writes {
            add(
                "If-Match",
                "RFC 9110 §13.1.1: entity-tags (strong comparison) or `*`",
            );
            add(
                "If-None-Match",
                "RFC 9110 §13.1.2: entity-tags (weak comparison) or `*`",
            );
            add("If-Unmodified-Since", "RFC 9110 §13.1.4: an HTTP-date");
        }
        if reads {
            add("If-Modified-Since", "RFC 9110 §13.1.3: an HTTP-date");
        }
        let settings_write = path.starts_with("/v1/_collections/") && method == "put";
        if settings_write {
            add(
                "If-Match",
                "RFC 9110 §13.1.1: the settings' ETag (strong comparison) or `*`",
            );
            add(
                "If-None-Match",
                "`*`: only if the collection was never configured (version 0)",
            );
        }
        if path.ends_with("/resolve") {
            add(
                "If-Match",
                "The current ETag: resolve although the resource moved past the record's current_version",
            );
        }
        if writes || path.ends_with("/resolve") {
            add(
                "Lock-Token",
                "SPEC §4: while the resource is locked, the holder's token (else 423 `locked`); a token whose lease ran out or was broken is refused with 423",
            );
        }
        if lock && matches!(method, "put" | "delete") {
            add(
                "Lock-Token",
                "The token the lock was granted with (`DELETE ...?force=true` breaks the lock without it: admin)",
            );
        }
        let in_txn =
            path == "/v1/{collection}/{id}" || (path == "/v1/{collection}" && method == "get");
        if in_txn {
            add(
                "Truce-Txn",
                "SPEC §5: the interactive transaction this request belongs to (from POST /v1/_txn/begin, on the node that began it): reads see its snapshot and its own writes; writes are buffered (202) until it commits",
            );
        }
        if writes {
            add(
                "Truce-Resolves",
                "SPEC §7: the conflict record this write retries; marked resolved (`retried`) in the same commit if the write succeeds",
            );
        }
        let keyed = writes
            || settings_write
            || (lock && method != "get")
            || (path == "/v1/{collection}" && method == "post")
            || path.ends_with("/resolve")
            || path.ends_with("/dismiss")
            || path == "/v1/_txn"
            || path.ends_with("/commit");
        if keyed {
            add(
                "Idempotency-Key",
                "SPEC §9: a repeat with the same key and request replays the first answer (`Idempotent-Replayed: true`); 409 `idempotency-in-flight` while the first runs; 422 `idempotency-key-reused` for another request",
            );
        }
        if writes || settings_write || (path == "/v1/{collection}" && method == "post") {
            add(
                "Prefer",
                "RFC 7240: `return=minimal` answers with the headers only (204, or 201 for a creation)",
            );
        }
    }
    if let Some(patch) = operation
        .get_mut("requestBody")
        .and_then(|b| b.get_mut("content"))
        .and_then(|c| c.get_mut("application/json-patch+json"))
    {
        patch["schema"] = json_patch_schema();
    }
    let is_write = matches!(method, "put" | "patch" | "delete" | "post")
        && path.starts_with("/v1/{collection}");
    let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    responses.entry("405").or_insert_with(|| {
        json!({
            "description": "`method-not-allowed`: the path exists but not with this method; `Allow` lists the methods it takes",
            "headers": {"Allow": {"description": "The methods the path accepts", "schema": {"type": "string"}}},
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        })
    });
    if path == "/v1/{collection}/{id}" && matches!(method, "put" | "patch" | "delete") {
        responses.entry("202").or_insert_with(|| {
            json!({
                "description": "With `Truce-Txn`: buffered in the transaction (`{txn, buffered: {collection, id, outcome, version}}`), applied when it commits; the `ETag` is the transaction's own",
                "content": {"application/json": {"schema": {"type": "object"}}}
            })
        });
    }
    let fenced = is_write && path.starts_with("/v1/{collection}/{id}") && !path.ends_with("/lock");
    if fenced || path.ends_with("/resolve") {
        responses.entry("423").or_insert_with(|| {
            json!({
                "description": "`locked`: the resource is locked and the request carries no Lock-Token, another holder's, or one whose lease is gone; the refusal is kept as a conflict record (`conflict_id`); `Retry-After` says when the holder's lease runs out",
                "headers": {"Retry-After": {"description": "Seconds until the holder's lease runs out", "schema": {"type": "integer", "minimum": 1}}},
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            })
        });
    }
    let limited = !matches!(
        path,
        "/healthz" | "/readyz" | "/openapi.json" | "/problems/{slug}"
    );
    if limited {
        responses.entry("429").or_insert_with(|| {
            json!({
                "description": "`rate-limited`: the principal's quota of reads or writes is used up (`--rate-reads`, `--rate-writes`); `Retry-After` says when to retry",
                "headers": {
                    "Retry-After": {"description": "Seconds until a request may pass", "schema": {"type": "integer", "minimum": 1}},
                    "RateLimit": {"description": "What is left of the quota (`r`) and the seconds until a request may pass (`t`)", "schema": {"type": "string"}},
                    "RateLimit-Policy": {"description": "The quota: `q` requests per `w` seconds", "schema": {"type": "string"}}
                },
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            })
        });
    }
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        if let Some(stream) = response
            .get_mut("content")
            .and_then(|c| c.get_mut("text/event-stream"))
        {
            stream["schema"] = event_schema();
        }
        let headers = response.entry("headers").or_insert_with(|| json!({}));
        let Some(headers) = headers.as_object_mut() else {
            continue;
        };
        headers.entry("X-Request-Id").or_insert_with(|| {
            json!({"description": "The request id (from the request, or made)", "schema": {"type": "string"}})
        });
        if is_write && status.starts_with('2') {
            headers.entry("Truce-Outcome").or_insert_with(|| {
                json!({"description": "What the write did", "schema": {"type": "string", "enum": ["created", "updated", "unchanged", "deleted"]}})
            });
            headers.entry("Preference-Applied").or_insert_with(|| {
                json!({"description": "`return=minimal` when that preference was honoured (RFC 7240)", "schema": {"type": "string"}})
            });
            if path.starts_with("/v1/{collection}/{id}") {
                headers.entry("Truce-Merged-From").or_insert_with(|| {
                    json!({"description": "Under the collection's `merge` policy: the version a stale write was based on and merged from", "schema": {"type": "integer", "minimum": 1}})
                });
                headers.entry("Truce-Conflict-Id").or_insert_with(|| {
                    json!({"description": "The record (`auto_merged` or `overwritten`) a conflict policy's automatic outcome left", "schema": {"type": "string", "pattern": CONFLICT_ID_PATTERN}})
                });
            }
        }
    }
}

/// The syntax of a request header the server reads. Entity-tag lists are refused
/// with 400 when malformed, so their syntax is part of the contract; the others are
/// ignored when they do not parse (RFC 9110 §13.1.3, §13.1.4, RFC 7240).
fn header_schema(name: &str) -> Value {
    match name {
        "If-Match" | "If-None-Match" => json!({
            "type": "string",
            "pattern": ENTITY_TAGS_PATTERN,
        }),
        "Truce-Resolves" => json!({"type": "string", "pattern": CONFLICT_ID_PATTERN}),
        "Lock-Token" => json!({"type": "string", "pattern": "^[0-9a-f]{32}$"}),
        _ => json!({"type": "string"}),
    }
}

/// `*` or a comma-separated list of (optionally weak) quoted entity-tags.
const ENTITY_TAGS_PATTERN: &str =
    r#"^(\*|(W/)?"[\x21\x23-\x7e]*"([ \t]*,[ \t]*(W/)?"[\x21\x23-\x7e]*")*)$"#;

/// RFC 6902: an array of operations, each naming its `op` and `path`.
fn json_patch_schema() -> Value {
    let op = |names: &[&str], required: &[&str]| {
        let mut properties = json!({
            "op": {"type": "string", "enum": names},
            "path": {"type": "string", "pattern": "^(/[^/]*)*$", "description": "A JSON Pointer (RFC 6901)"}
        });
        for member in required {
            properties[*member] = match *member {
                "from" => {
                    json!({"type": "string", "pattern": "^(/[^/]*)*$", "description": "The JSON Pointer to take from"})
                }
                _ => json!({"description": "The value"}),
            };
        }
        let mut all = vec!["op", "path"];
        all.extend_from_slice(required);
        json!({"type": "object", "required": all, "properties": properties})
    };
    json!({
        "type": "array",
        "description": "RFC 6902 operations, applied in order, all or none",
        "items": {"oneOf": [
            op(&["add", "replace", "test"], &["value"]),
            op(&["remove"], &[]),
            op(&["move", "copy"], &["from"]),
        ]}
    })
}

/// Server-Sent Events, as clients parse them: one object per event.
/// Every `event:` name a stream sends.
fn event_names() -> Vec<&'static str> {
    let mut names = vec!["change", "error"];
    names.extend(truce_engine::CONFLICT_EVENTS);
    names.extend(truce_engine::LOCK_EVENTS);
    names
}

fn event_schema() -> Value {
    json!({
        "type": "object",
        "description": "One Server-Sent Event: `event` names it, `id` is the position to resume from (`Last-Event-ID`), `data` is its JSON payload",
        "properties": {
            "event": {"type": "string", "enum": event_names()},
            "id": {"type": "string"},
            "data": {"type": "string"},
            "retry": {"type": "integer"}
        }
    })
}

/// Gives `{collection}`, `{id}`, `{n}` and `{slug}` path parameters (and the
/// `collection` filter) their syntax.
fn constrain_path_parameter(parameter: &mut Value) {
    let schema = match parameter["name"].as_str() {
        // Also the change feed's `?collection=` filter.
        Some("collection") if parameter["in"] == "path" || parameter["in"] == "query" => {
            json!({"type": "string", "pattern": COLLECTION_PATTERN})
        }
        _ if parameter["in"] != "path" => return,
        Some("id") => json!({"type": "string", "pattern": ID_PATTERN}),
        Some("n") => json!({"type": "integer", "minimum": 1}),
        Some("slug") => json!({"type": "string", "pattern": "^[a-z][a-z-]*$"}),
        Some("cid" | "sid") => json!({"type": "string", "pattern": CONFLICT_ID_PATTERN}),
        Some("txn") => json!({"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"}),
        Some("kid") => json!({"type": "string", "pattern": "^[0-9a-f]{16}$"}),
        _ => return,
    };
    parameter["schema"] = schema;
}
