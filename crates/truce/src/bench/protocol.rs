//! The same operations spoken to truce and to etcd's v3 JSON gateway, so both are
//! driven by the same client and the same workloads.
//!
//! | operation | truce | etcd |
//! | --- | --- | --- |
//! | create | `PUT` with `If-None-Match: *` | txn: `create_revision == 0` → put |
//! | update | `PUT` with `If-Match` (or `?if_version`) | txn: `mod_revision == r` → put |
//! | read | `GET` | range |
//! | unchanged read | `GET` with `If-None-Match` (304) | (none) |

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, IF_MATCH, IF_NONE_MATCH};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::BenchError;
use super::conn::{Connection, Reply};

/// What a client holds to make its next write conditional.
#[derive(Debug, Clone)]
pub enum Token {
    /// truce: the ETag, for `If-Match`.
    Etag(HeaderValue),
    /// truce: the version, for `?if_version` (documents whose ETag was never seen).
    Version(u64),
    /// etcd: the key's `mod_revision`.
    Revision(i64),
}

/// How one operation ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// It did what it was asked.
    Done(T),
    /// A conditional write lost against another writer (409/412, or a failed txn).
    Refused,
    /// Anything else: a wrong status or an unreadable answer.
    Failed(String),
}

/// The wire protocol of the system under test.
#[derive(Debug, Clone)]
pub enum Protocol {
    /// truce (or the ceiling server, which answers truce-shaped requests).
    Truce {
        /// The collection the documents live in.
        collection: String,
    },
    /// etcd's v3 JSON gateway; keys are `prefix/id`.
    Etcd {
        /// Key prefix.
        prefix: String,
    },
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Protocol {
    /// Whether the protocol has a conditional read answering 304.
    pub fn has_unchanged_read(&self) -> bool {
        matches!(self, Self::Truce { .. })
    }

    /// Creates `id`, which must not exist yet.
    pub async fn create(
        &self,
        conn: &mut Connection,
        id: &str,
        body: Bytes,
    ) -> Result<Outcome<Token>, BenchError> {
        match self {
            Self::Truce { collection } => {
                let path = format!("/v1/{collection}/{id}");
                let condition = (IF_NONE_MATCH, HeaderValue::from_static("*"));
                let reply = truce_put(conn, &path, Some(condition), body).await?;
                Ok(truce_write(&reply, StatusCode::CREATED))
            }
            Self::Etcd { prefix } => {
                let compare = json!({"target": "CREATE", "create_revision": "0"});
                etcd_put_if(conn, prefix, id, compare, &body).await
            }
        }
    }

    /// Replaces `id` on the condition that it is still at `token`.
    pub async fn update(
        &self,
        conn: &mut Connection,
        id: &str,
        body: Bytes,
        token: &Token,
    ) -> Result<Outcome<Token>, BenchError> {
        match (self, token) {
            (Self::Truce { collection }, Token::Etag(etag)) => {
                let path = format!("/v1/{collection}/{id}");
                let reply = truce_put(conn, &path, Some((IF_MATCH, etag.clone())), body).await?;
                Ok(truce_write(&reply, StatusCode::OK))
            }
            (Self::Truce { collection }, Token::Version(version)) => {
                let path = format!("/v1/{collection}/{id}?if_version={version}");
                let reply = truce_put(conn, &path, None, body).await?;
                Ok(match truce_write(&reply, StatusCode::OK) {
                    Outcome::Done(_) => match truce_version(&reply) {
                        Some(version) => Outcome::Done(Token::Version(version)),
                        None => Outcome::Failed("answer without Truce-Version".into()),
                    },
                    other => other,
                })
            }
            (Self::Etcd { prefix }, Token::Revision(revision)) => {
                let compare = json!({"target": "MOD", "mod_revision": revision.to_string()});
                etcd_put_if(conn, prefix, id, compare, &body).await
            }
            _ => Err(BenchError::Setup("token of another protocol".into())),
        }
    }

    /// Reads `id`: its token and its document.
    pub async fn read(
        &self,
        conn: &mut Connection,
        id: &str,
    ) -> Result<Outcome<(Token, Bytes)>, BenchError> {
        match self {
            Self::Truce { collection } => {
                let reply = conn
                    .send(
                        Method::GET,
                        &format!("/v1/{collection}/{id}"),
                        &[],
                        Bytes::new(),
                    )
                    .await?;
                if reply.status != StatusCode::OK {
                    return Ok(Outcome::Failed(format!("GET answered {}", reply.status)));
                }
                Ok(match reply.headers.get("etag") {
                    Some(etag) => Outcome::Done((Token::Etag(etag.clone()), reply.body)),
                    None => Outcome::Failed("GET without ETag".into()),
                })
            }
            Self::Etcd { prefix } => {
                let request = json!({"key": etcd_key(prefix, id)});
                let reply = conn
                    .send(
                        Method::POST,
                        "/v3/kv/range",
                        &[(CONTENT_TYPE, JSON)],
                        json_bytes(&request),
                    )
                    .await?;
                let Some(answer) = json_answer(&reply) else {
                    return Ok(Outcome::Failed(format!("range answered {}", reply.status)));
                };
                let kv = &answer["kvs"][0];
                let revision = kv["mod_revision"].as_str().and_then(|r| r.parse().ok());
                let value = kv["value"].as_str().and_then(|v| STANDARD.decode(v).ok());
                Ok(match (revision, value) {
                    (Some(revision), Some(value)) => {
                        Outcome::Done((Token::Revision(revision), Bytes::from(value)))
                    }
                    _ => Outcome::Failed("range without the key".into()),
                })
            }
        }
    }

    /// A conditional read that should answer 304 Not Modified.
    pub async fn read_unchanged(
        &self,
        conn: &mut Connection,
        id: &str,
        token: &Token,
    ) -> Result<Outcome<()>, BenchError> {
        match (self, token) {
            (Self::Truce { collection }, Token::Etag(etag)) => {
                let reply = conn
                    .send(
                        Method::GET,
                        &format!("/v1/{collection}/{id}"),
                        &[(IF_NONE_MATCH, etag.clone())],
                        Bytes::new(),
                    )
                    .await?;
                Ok(if reply.status == StatusCode::NOT_MODIFIED {
                    Outcome::Done(())
                } else {
                    Outcome::Failed(format!("conditional GET answered {}", reply.status))
                })
            }
            _ => Err(BenchError::Setup(
                "this target has no conditional read".into(),
            )),
        }
    }
}

/// A truce write's outcome: `expected` is done; 409/412 are refusals.
fn truce_write(reply: &Reply, expected: StatusCode) -> Outcome<Token> {
    let status = reply.status;
    if status == StatusCode::CONFLICT || status == StatusCode::PRECONDITION_FAILED {
        return Outcome::Refused;
    }
    if status != expected && !(status.is_success() && expected.is_success()) {
        return Outcome::Failed(format!("write answered {status}"));
    }
    match reply.headers.get("etag") {
        Some(etag) => Outcome::Done(Token::Etag(etag.clone())),
        None => Outcome::Failed("write without ETag".into()),
    }
}

fn truce_version(reply: &Reply) -> Option<u64> {
    reply.header("truce-version")?.parse().ok()
}

/// `base64(prefix/id)`.
fn etcd_key(prefix: &str, id: &str) -> String {
    STANDARD.encode(format!("{prefix}/{id}"))
}

/// A truce `PUT` of a JSON body, with one conditional header when given.
async fn truce_put(
    conn: &mut Connection,
    path: &str,
    condition: Option<(HeaderName, HeaderValue)>,
    body: Bytes,
) -> Result<Reply, BenchError> {
    let mut headers = vec![(CONTENT_TYPE, JSON)];
    headers.extend(condition);
    conn.send(Method::PUT, path, &headers, body).await
}

/// An etcd txn: put `body` at `prefix/id` if `compare` (a compare object without
/// its key and result) holds.
async fn etcd_put_if(
    conn: &mut Connection,
    prefix: &str,
    id: &str,
    mut compare: Value,
    body: &[u8],
) -> Result<Outcome<Token>, BenchError> {
    let key = etcd_key(prefix, id);
    compare["key"] = json!(key);
    compare["result"] = json!("EQUAL");
    let txn = json!({
        "compare": [compare],
        "success": [{"request_put": {"key": key, "value": STANDARD.encode(body)}}],
    });
    let reply = conn
        .send(
            Method::POST,
            "/v3/kv/txn",
            &[(CONTENT_TYPE, JSON)],
            json_bytes(&txn),
        )
        .await?;
    let Some(answer) = json_answer(&reply) else {
        return Ok(Outcome::Failed(format!("txn answered {}", reply.status)));
    };
    if answer["succeeded"] != Value::Bool(true) {
        return Ok(Outcome::Refused);
    }
    Ok(
        match answer["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
        {
            Some(revision) => Outcome::Done(Token::Revision(revision)),
            None => Outcome::Failed("txn without a revision".into()),
        },
    )
}

fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn json_answer(reply: &Reply) -> Option<Value> {
    if reply.status != StatusCode::OK {
        return None;
    }
    serde_json::from_slice(&reply.body).ok()
}
