//! Lock operations spoken to truce and to etcd's lock API (v3 JSON gateway),
//! for the `lock` and `lock-handoff` workloads.
//!
//! | operation | truce | etcd |
//! | --- | --- | --- |
//! | session | (none: a lease comes with each lock) | `lease/grant` (TTL 300 s), once per client |
//! | lock | `POST .../lock` `{ttl_ms, wait_ms}` | `lock/lock` `{name, lease}` (waits while held) |
//! | unlock | `DELETE .../lock` with `Lock-Token` | `lock/unlock` `{key}` |

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::BenchError;
use super::conn::Connection;
use super::protocol::{Outcome, Protocol};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const LOCK_TOKEN: HeaderName = HeaderName::from_static("lock-token");

/// The lease of a truce lock taken by the benchmark (released at once).
const TTL_MS: u64 = 30_000;
/// How long a contended truce lock waits in the queue (longer than any run).
const WAIT_MS: u64 = 120_000;

impl Protocol {
    /// What a client needs before it can lock: an etcd lease (its ID); nothing
    /// for truce.
    pub async fn lock_session(&self, conn: &mut Connection) -> Result<Option<String>, BenchError> {
        match self {
            Self::Truce { .. } => Ok(None),
            Self::Etcd { .. } => {
                let reply = post_json(conn, "/v3/lease/grant", &json!({"TTL": 300})).await?;
                let id = answer(reply.0, &reply.1)
                    .and_then(|a| a["ID"].as_str().map(str::to_owned))
                    .ok_or_else(|| BenchError::Setup("etcd granted no lease".into()))?;
                Ok(Some(id))
            }
        }
    }

    /// Takes the lock on `id` (waiting while another holds it when `wait`);
    /// returns what unlocks it (truce's token, etcd's lock key).
    pub async fn lock(
        &self,
        conn: &mut Connection,
        id: &str,
        session: Option<&str>,
        wait: bool,
    ) -> Result<Outcome<String>, BenchError> {
        match self {
            Self::Truce { collection } => {
                let path = format!("/v1/{collection}/{id}/lock");
                let wait_ms = if wait { WAIT_MS } else { 0 };
                let body = json!({"ttl_ms": TTL_MS, "wait_ms": wait_ms});
                let reply = conn
                    .send(Method::POST, &path, &[(CONTENT_TYPE, JSON)], bytes(&body))
                    .await?;
                Ok(match reply.status {
                    StatusCode::CREATED => match reply.header("lock-token") {
                        Some(token) => Outcome::Done(token.to_owned()),
                        None => Outcome::Failed("a grant without Lock-Token".into()),
                    },
                    StatusCode::LOCKED => Outcome::Refused,
                    other => Outcome::Failed(format!("lock answered {other}")),
                })
            }
            Self::Etcd { prefix } => {
                let lease = session.ok_or_else(|| BenchError::Setup("no etcd lease".into()))?;
                let name = STANDARD.encode(format!("{prefix}/locks/{id}"));
                let request = json!({"name": name, "lease": lease});
                let (status, body) = post_json(conn, "/v3/lock/lock", &request).await?;
                Ok(
                    match answer(status, &body).and_then(|a| a["key"].as_str().map(str::to_owned)) {
                        Some(key) => Outcome::Done(key),
                        None => Outcome::Failed(format!("lock answered {status}")),
                    },
                )
            }
        }
    }

    /// Gives up the lock `held` (what [`Protocol::lock`] returned).
    pub async fn unlock(
        &self,
        conn: &mut Connection,
        id: &str,
        held: &str,
    ) -> Result<Outcome<()>, BenchError> {
        match self {
            Self::Truce { collection } => {
                let path = format!("/v1/{collection}/{id}/lock");
                let token = HeaderValue::from_str(held)
                    .map_err(|_| BenchError::Setup("an unusable lock token".into()))?;
                let reply = conn
                    .send(Method::DELETE, &path, &[(LOCK_TOKEN, token)], Bytes::new())
                    .await?;
                Ok(if reply.status == StatusCode::NO_CONTENT {
                    Outcome::Done(())
                } else {
                    Outcome::Failed(format!("unlock answered {}", reply.status))
                })
            }
            Self::Etcd { .. } => {
                let (status, body) =
                    post_json(conn, "/v3/lock/unlock", &json!({"key": held})).await?;
                Ok(match answer(status, &body) {
                    Some(_) => Outcome::Done(()),
                    None => Outcome::Failed(format!("unlock answered {status}")),
                })
            }
        }
    }
}

async fn post_json(
    conn: &mut Connection,
    path: &str,
    body: &Value,
) -> Result<(StatusCode, Bytes), BenchError> {
    let reply = conn
        .send(Method::POST, path, &[(CONTENT_TYPE, JSON)], bytes(body))
        .await?;
    Ok((reply.status, reply.body))
}

fn answer(status: StatusCode, body: &[u8]) -> Option<Value> {
    (status == StatusCode::OK)
        .then(|| serde_json::from_slice(body).ok())
        .flatten()
}

fn bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}
