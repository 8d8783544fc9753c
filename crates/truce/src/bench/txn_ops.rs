//! A transaction of conditional replaces, spoken to truce and to etcd, for the
//! `txn` workload.
//!
//! | | truce | etcd |
//! | --- | --- | --- |
//! | txn | `POST /v1/_txn`: one `put` op with `if_match` per document | `kv/txn`: one `mod_revision` compare and one put per key |

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::BenchError;
use super::conn::Connection;
use super::protocol::{Outcome, Protocol, Token};

/// Documents one transaction replaces.
pub const TXN_OPS: usize = 10;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Protocol {
    /// Replaces every document of `docs` (each on the condition that it is
    /// still at its token) in one transaction; the documents' new tokens.
    pub async fn txn_update(
        &self,
        conn: &mut Connection,
        docs: &[(String, Option<Token>)],
        body: &Bytes,
    ) -> Result<Outcome<Vec<Token>>, BenchError> {
        let doc: Value = serde_json::from_slice(body).unwrap_or_default();
        match self {
            Self::Truce { collection } => {
                let mut ops = Vec::with_capacity(docs.len());
                for (id, token) in docs {
                    let Some(Token::Etag(etag)) = token else {
                        return Err(BenchError::Setup("a document without its ETag".into()));
                    };
                    let etag = etag.to_str().unwrap_or_default();
                    ops.push(json!({"op": "put", "collection": collection, "id": id, "if_match": etag, "doc": doc}));
                }
                let request = Bytes::from(json!({ "ops": ops }).to_string());
                let reply = conn
                    .send(Method::POST, "/v1/_txn", &[(CONTENT_TYPE, JSON)], request)
                    .await?;
                if reply.status == StatusCode::CONFLICT {
                    return Ok(Outcome::Refused);
                }
                if reply.status != StatusCode::OK {
                    return Ok(Outcome::Failed(format!("txn answered {}", reply.status)));
                }
                let answer: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
                let tokens: Option<Vec<Token>> = answer["results"].as_array().map(|results| {
                    results
                        .iter()
                        .filter_map(|r| r["etag"].as_str())
                        .filter_map(|etag| HeaderValue::from_str(etag).ok())
                        .map(Token::Etag)
                        .collect()
                });
                Ok(match tokens {
                    Some(tokens) if tokens.len() == docs.len() => Outcome::Done(tokens),
                    _ => Outcome::Failed("txn answer without an ETag per op".into()),
                })
            }
            Self::Etcd { prefix } => {
                let value = STANDARD.encode(body);
                let mut compare = Vec::with_capacity(docs.len());
                let mut success = Vec::with_capacity(docs.len());
                for (id, token) in docs {
                    let Some(Token::Revision(revision)) = token else {
                        return Err(BenchError::Setup("a key without its revision".into()));
                    };
                    let key = STANDARD.encode(format!("{prefix}/{id}"));
                    compare.push(json!({"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string()}));
                    success.push(json!({"request_put": {"key": key, "value": value}}));
                }
                let request =
                    Bytes::from(json!({"compare": compare, "success": success}).to_string());
                let reply = conn
                    .send(Method::POST, "/v3/kv/txn", &[(CONTENT_TYPE, JSON)], request)
                    .await?;
                if reply.status != StatusCode::OK {
                    return Ok(Outcome::Failed(format!("txn answered {}", reply.status)));
                }
                let answer: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
                if answer["succeeded"] != Value::Bool(true) {
                    return Ok(Outcome::Refused);
                }
                Ok(
                    match answer["header"]["revision"]
                        .as_str()
                        .and_then(|r| r.parse().ok())
                    {
                        Some(revision) => {
                            Outcome::Done(vec![Token::Revision(revision); docs.len()])
                        }
                        None => Outcome::Failed("txn without a revision".into()),
                    },
                )
            }
        }
    }
}

impl Protocol {
    /// One interactive transaction (truce only): begin, read `id`, write it
    /// back changed, commit. Refused when the commit found `id` changed.
    pub async fn interactive_update(
        &self,
        conn: &mut Connection,
        id: &str,
        body: &Bytes,
    ) -> Result<Outcome<()>, BenchError> {
        let Self::Truce { collection } = self else {
            return Err(BenchError::Unsupported(
                "interactive transactions are truce's; etcd has none".into(),
            ));
        };
        let begun = conn
            .send(Method::POST, "/v1/_txn/begin", &[], Bytes::new())
            .await?;
        if begun.status != StatusCode::CREATED {
            return Ok(Outcome::Failed(format!("begin answered {}", begun.status)));
        }
        let answer: Value = serde_json::from_slice(&begun.body).unwrap_or_default();
        let Some(txn) = answer["txn"]
            .as_str()
            .and_then(|t| HeaderValue::from_str(t).ok())
        else {
            return Ok(Outcome::Failed("begin without a txn".into()));
        };
        let in_txn = hyper::header::HeaderName::from_static("truce-txn");
        let path = format!("/v1/{collection}/{id}");
        let read = conn
            .send(
                Method::GET,
                &path,
                &[(in_txn.clone(), txn.clone())],
                Bytes::new(),
            )
            .await?;
        if read.status != StatusCode::OK {
            return Ok(Outcome::Failed(format!("read answered {}", read.status)));
        }
        let written = conn
            .send(
                Method::PUT,
                &path,
                &[(in_txn, txn.clone()), (CONTENT_TYPE, JSON)],
                body.clone(),
            )
            .await?;
        if written.status != StatusCode::ACCEPTED {
            return Ok(Outcome::Failed(format!(
                "write answered {}",
                written.status
            )));
        }
        let commit = format!("/v1/_txn/{}/commit", txn.to_str().unwrap_or_default());
        let committed = conn.send(Method::POST, &commit, &[], Bytes::new()).await?;
        Ok(match committed.status {
            StatusCode::OK => Outcome::Done(()),
            StatusCode::CONFLICT => Outcome::Refused,
            other => Outcome::Failed(format!("commit answered {other}")),
        })
    }
}
