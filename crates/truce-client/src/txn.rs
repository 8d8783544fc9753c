//! Batch transactions (SPEC §5): ops across collections applied in one commit,
//! or not at all.
//!
//! ```no_run
//! use serde_json::json;
//! # async fn example(client: truce_client::Client, from_etag: String, to_etag: String)
//! # -> Result<(), truce_client::Error> {
//! let applied = client
//!     .txn()
//!     .put("accounts", "alice", &json!({"balance": 70})).if_match(&from_etag)
//!     .put("accounts", "bob", &json!({"balance": 130})).if_match(&to_etag)
//!     .create("transfers", "t-81", &json!({"from": "alice", "to": "bob", "amount": 30}))
//!     .send()
//!     .await?;
//! println!("both at revision {}", applied.revision);
//! # Ok(())
//! # }
//! ```
//!
//! A failed op refuses the whole transaction: `Error::Api` with
//! `ProblemKind::TransactionConflict`, and [`Problem::failed_op`] names the op
//! and the problem it got.

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::client::{Client, IDEMPOTENCY_KEY, new_idempotency_key};
use crate::error::{Error, Problem};

/// A batch transaction being built: add ops, give the last one its
/// conditions, then [`Txn::send`].
#[must_use = "a transaction does nothing until it is sent"]
#[derive(Debug)]
pub struct Txn<'a> {
    client: &'a Client,
    ops: Vec<Value>,
    invalid: Option<String>,
}

/// What an applied transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct TxnApplied {
    /// The revision all its writes share.
    pub revision: u64,
    /// One result per op, in order.
    pub results: Vec<OpResult>,
}

/// What one op did.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct OpResult {
    /// The op's collection.
    pub collection: String,
    /// The op's document id.
    pub id: String,
    /// `checked`, `created`, `updated`, `unchanged` or `deleted`.
    pub outcome: String,
    /// The document's version after the transaction (0: it does not exist).
    pub version: u64,
    /// Its ETag then.
    #[serde(default)]
    pub etag: Option<String>,
}

/// The op that failed a transaction, read from its 409.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedOp {
    /// Its index in the transaction.
    pub index: usize,
    /// Its name (`check`, `create`, `put`, `patch`, `delete`).
    pub op: String,
    /// The problem slug it alone would have got.
    pub reason: String,
}

impl Problem {
    /// The op that failed a transaction (`transaction-conflict`); `None` for
    /// any other problem.
    pub fn failed_op(&self) -> Option<FailedOp> {
        Some(FailedOp {
            index: usize::try_from(self.body.get("failed_op")?.as_u64()?).ok()?,
            op: self.body.get("op")?.as_str()?.to_owned(),
            reason: self.body.get("reason")?.as_str()?.to_owned(),
        })
    }
}

impl<'a> Txn<'a> {
    fn push<T: Serialize + ?Sized>(
        mut self,
        op: &str,
        collection: &str,
        id: &str,
        member: Option<(&str, &T)>,
    ) -> Self {
        let mut value = json!({"op": op, "collection": collection, "id": id});
        if let Some((name, content)) = member {
            match serde_json::to_value(content) {
                Ok(content) => value[name] = content,
                Err(error) => {
                    self.invalid.get_or_insert(error.to_string());
                }
            }
        }
        self.ops.push(value);
        self
    }

    /// Checks `collection/id`'s state without writing (give it `if_match` or
    /// `if_version`).
    pub fn check(self, collection: &str, id: &str) -> Self {
        self.push::<Value>("check", collection, id, None)
    }

    /// Creates `collection/id`, which must not exist.
    pub fn create<T: Serialize + ?Sized>(self, collection: &str, id: &str, doc: &T) -> Self {
        self.push("create", collection, id, Some(("doc", doc)))
    }

    /// Creates or replaces `collection/id`.
    pub fn put<T: Serialize + ?Sized>(self, collection: &str, id: &str, doc: &T) -> Self {
        self.push("put", collection, id, Some(("doc", doc)))
    }

    /// Applies an RFC 7396 merge patch to `collection/id`.
    pub fn merge_patch(self, collection: &str, id: &str, patch: &Value) -> Self {
        self.push("patch", collection, id, Some(("merge_patch", patch)))
    }

    /// Applies an RFC 6902 JSON Patch to `collection/id`.
    pub fn json_patch(self, collection: &str, id: &str, patch: &Value) -> Self {
        self.push("patch", collection, id, Some(("json_patch", patch)))
    }

    /// Deletes `collection/id`.
    pub fn delete(self, collection: &str, id: &str) -> Self {
        self.push::<Value>("delete", collection, id, None)
    }

    /// Sets a member of the last op added.
    fn last(mut self, name: &str, value: Value) -> Self {
        match self.ops.last_mut() {
            Some(op) => op[name] = value,
            None => {
                self.invalid
                    .get_or_insert(format!("{name} before any op: add an op first"));
            }
        }
        self
    }

    /// The last op holds only if its document is still at this ETag.
    pub fn if_match(self, etag: &str) -> Self {
        self.last("if_match", json!(etag))
    }

    /// The last op holds only if its document is at this version (0: absent).
    pub fn if_version(self, version: u64) -> Self {
        self.last("if_version", json!(version))
    }

    /// The last op is made under this lock (its `Lock-Token`).
    pub fn lock_token(self, token: &str) -> Self {
        self.last("lock_token", json!(token))
    }

    /// The ops so far, as the request body's `ops`.
    pub fn ops(&self) -> &[Value] {
        &self.ops
    }

    /// Sends the transaction (retried under one idempotency key, so one whose
    /// answer was lost is answered again, not applied twice).
    pub async fn send(self) -> Result<TxnApplied, Error> {
        if let Some(invalid) = self.invalid {
            return Err(Error::Invalid(invalid));
        }
        self.client.transact_ops(self.ops).await
    }
}

impl Client {
    /// Starts a batch transaction.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            client: self,
            ops: Vec::new(),
            invalid: None,
        }
    }

    /// Sends ops (as `POST /v1/_txn` takes them) as one transaction.
    pub async fn transact_ops(&self, ops: Vec<Value>) -> Result<TxnApplied, Error> {
        let body = json!({ "ops": ops }).to_string();
        let key = new_idempotency_key();
        self.json_with(
            || {
                self.request(Method::POST, "/v1/_txn")
                    .header(CONTENT_TYPE, "application/json")
                    .header(IDEMPOTENCY_KEY, key.clone())
                    .body(body.clone())
            },
            true,
        )
        .await
    }
}
