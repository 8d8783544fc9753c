//! Interactive transactions (SPEC §5): reads of one snapshot, writes buffered
//! until a commit that applies them only if nothing read changed meanwhile.
//!
//! [`Client::transact`] runs a closure in a transaction and commits it, running
//! it again (with back-off) when the commit finds a change, so the closure sees
//! a consistent state every time and its writes land on that state or not at
//! all:
//!
//! ```no_run
//! use serde_json::{json, Value};
//! # async fn example(client: truce_client::Client) -> Result<(), truce_client::Error> {
//! client
//!     .transact(|tx| async move {
//!         let from = tx.get::<Value>("accounts", "alice").await?;
//!         let to = tx.get::<Value>("accounts", "bob").await?;
//!         let (a, b) = (from.value["balance"].as_u64().unwrap_or(0), to.value["balance"].as_u64().unwrap_or(0));
//!         tx.put("accounts", "alice", &json!({"balance": a.saturating_sub(30)})).await?;
//!         tx.put("accounts", "bob", &json!({"balance": b + 30})).await?;
//!         Ok(())
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! A transaction lives on the server node that began it: use one base URL
//! (or a load balancer that routes on `Truce-Txn`) for its requests.

use std::future::Future;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{Client, full_jitter, problem_of, query_of, read_versioned, resource_path};
use crate::error::Error;
use crate::txn::TxnApplied;
use crate::types::{Envelope, ListOptions, Page, Versioned};
use truce_engine::ProblemKind;

/// `Truce-Txn`.
const TRUCE_TXN: &str = "truce-txn";

/// An open interactive transaction; cheap to clone (all clones are the same
/// transaction).
#[derive(Debug, Clone)]
pub struct Transaction {
    client: Client,
    id: String,
    snapshot: u64,
}

/// A write buffered in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BufferedWrite {
    /// What the write will do: `created`, `updated`, `unchanged` or `deleted`.
    pub outcome: String,
    /// The version the transaction now sees (its own numbering).
    pub version: u64,
}

#[derive(Deserialize)]
struct Begun {
    txn: String,
    snapshot_revision: u64,
}

#[derive(Deserialize)]
struct Buffered {
    buffered: BufferedWrite,
}

impl Transaction {
    /// The transaction's id (`Truce-Txn`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The revision its reads see.
    pub fn snapshot_revision(&self) -> u64 {
        self.snapshot
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, path)
            .header(TRUCE_TXN, &self.id)
    }

    /// Reads a document as of the snapshot (or as this transaction wrote it).
    pub async fn get<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Versioned<T>, Error> {
        let path = resource_path(collection, id);
        let response = self
            .client
            .execute(|| self.request(Method::GET, &path), true)
            .await?;
        read_versioned(response).await
    }

    /// A page of a collection as of the snapshot; the range read (the
    /// collection and prefix) takes part in the commit's check.
    pub async fn list(
        &self,
        collection: &str,
        options: &ListOptions,
    ) -> Result<Page<Envelope>, Error> {
        let query = query_of([
            ("prefix", options.prefix.clone()),
            ("cursor", options.cursor.clone()),
            ("limit", options.limit.map(|l| l.to_string())),
        ]);
        let path = format!("/v1/{collection}");
        self.client
            .json(|| self.request(Method::GET, &path).query(&query))
            .await
    }

    async fn buffer(
        &self,
        method: Method,
        path: String,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<BufferedWrite, Error> {
        let answer: Buffered = self
            .client
            .json_with(
                || {
                    let request = self.request(method.clone(), &path);
                    match &body {
                        Some((media, bytes)) => {
                            request.header(CONTENT_TYPE, *media).body(bytes.clone())
                        }
                        None => request,
                    }
                },
                // Buffering the same write twice leaves what once does.
                true,
            )
            .await?;
        Ok(answer.buffered)
    }

    /// Creates or replaces a document in the transaction.
    pub async fn put<T: Serialize + ?Sized>(
        &self,
        collection: &str,
        id: &str,
        doc: &T,
    ) -> Result<BufferedWrite, Error> {
        let bytes = serde_json::to_vec(doc).map_err(|e| Error::Invalid(e.to_string()))?;
        self.buffer(
            Method::PUT,
            resource_path(collection, id),
            Some(("application/json", bytes)),
        )
        .await
    }

    /// Applies an RFC 7396 merge patch in the transaction.
    pub async fn merge_patch(
        &self,
        collection: &str,
        id: &str,
        patch: &Value,
    ) -> Result<BufferedWrite, Error> {
        let bytes = serde_json::to_vec(patch).map_err(|e| Error::Invalid(e.to_string()))?;
        self.buffer(
            Method::PATCH,
            resource_path(collection, id),
            Some(("application/merge-patch+json", bytes)),
        )
        .await
    }

    /// Deletes a document in the transaction.
    pub async fn delete(&self, collection: &str, id: &str) -> Result<BufferedWrite, Error> {
        self.buffer(Method::DELETE, resource_path(collection, id), None)
            .await
    }

    /// Commits: applied in one commit if nothing read, written or listed
    /// changed since the snapshot; else `ProblemKind::TransactionConflict`.
    pub async fn commit(&self) -> Result<TxnApplied, Error> {
        let path = format!("/v1/_txn/{}/commit", self.id);
        let key = crate::client::new_idempotency_key();
        self.client
            .json_with(
                || {
                    self.client
                        .request(Method::POST, &path)
                        .header(crate::client::IDEMPOTENCY_KEY, key.clone())
                },
                true,
            )
            .await
    }

    /// Drops the buffered writes.
    pub async fn rollback(&self) -> Result<(), Error> {
        let path = format!("/v1/_txn/{}/rollback", self.id);
        let response = self
            .client
            .execute(|| self.client.request(Method::POST, &path), false)
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(Error::Api(Box::new(problem_of(response).await)))
        }
    }
}

impl Client {
    /// Begins an interactive transaction.
    pub async fn begin(&self) -> Result<Transaction, Error> {
        let begun: Begun = self
            .json_with(|| self.request(Method::POST, "/v1/_txn/begin"), false)
            .await?;
        Ok(Transaction {
            client: self.clone(),
            id: begun.txn,
            snapshot: begun.snapshot_revision,
        })
    }

    /// Runs `work` in a transaction and commits it. When the commit (or a
    /// request inside) answers `transaction-conflict` (something read changed,
    /// or the transaction expired), `work` runs again in a new transaction after
    /// a back-off with full jitter, up to the retry policy's `max_attempts`;
    /// then `Error::GaveUp` with the last conflict. Any other error rolls the
    /// transaction back and is returned as is.
    pub async fn transact<T, F, Fut>(&self, mut work: F) -> Result<T, Error>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let policy = self.retry_policy();
        let mut delays = policy.schedule();
        let mut attempt = 1;
        loop {
            let tx = self.begin().await?;
            let result = match work(tx.clone()).await {
                Ok(value) => tx.commit().await.map(|_| value),
                Err(error) => {
                    if error.kind() != Some(ProblemKind::TransactionConflict) {
                        let _ = tx.rollback().await;
                    }
                    Err(error)
                }
            };
            match result {
                Err(error) if error.kind() == Some(ProblemKind::TransactionConflict) => {
                    if attempt >= policy.max_attempts {
                        return Err(Error::GaveUp {
                            attempts: attempt,
                            last: Box::new(error),
                        });
                    }
                    attempt += 1;
                    tokio::time::sleep(full_jitter(delays.next().unwrap_or_default())).await;
                }
                other => return other,
            }
        }
    }
}
