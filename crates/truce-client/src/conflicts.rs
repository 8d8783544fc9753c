//! Conflict records (SPEC §7): listing, reading, resolving and dismissing them.
//!
//! Records are returned as JSON (`serde_json::Value`) with the fields of SPEC §7:
//! `id`, `type`, `status`, `resource`, `base_version`, `current_version`,
//! `attempted`, `by`, `request_id`, `detected_at`, and once closed `resolution`,
//! `resolved_at`, `resolved_version` or `dismissed_at`. A single record read with
//! [`Client::conflict`] adds `base`, `ours`, `theirs` and `paths`.

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use crate::client::Client;
use crate::error::Error;
use crate::types::Page;

/// Filters and paging of [`Client::conflicts`].
#[derive(Debug, Clone, Default)]
pub struct ConflictQuery {
    /// `open`, `resolved`, `dismissed`, `auto_merged` or `overwritten`.
    pub status: Option<String>,
    /// Only records of this collection.
    pub collection: Option<String>,
    /// Only records of resources with this id.
    pub id: Option<String>,
    /// Only records of this type (a problem slug).
    pub kind: Option<String>,
    /// The `next` cursor of the previous page.
    pub cursor: Option<String>,
    /// Page size (server default 100).
    pub limit: Option<usize>,
}

/// Which side a resolution takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Keep the current document.
    Theirs,
    /// Apply the refused change to the version it was based on.
    Ours,
    /// Write this document.
    Doc(Value),
}

impl Client {
    /// A page of conflict records, oldest first.
    pub async fn conflicts(&self, query: &ConflictQuery) -> Result<Page<Value>, Error> {
        let params: Vec<(&str, String)> = [
            ("status", query.status.clone()),
            ("collection", query.collection.clone()),
            ("id", query.id.clone()),
            ("type", query.kind.clone()),
            ("cursor", query.cursor.clone()),
            ("limit", query.limit.map(|l| l.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        self.json(|| self.request(Method::GET, "/v1/_conflicts").query(&params))
            .await
    }

    /// One record, with `base`, `ours`, `theirs` and the differing `paths`.
    pub async fn conflict(&self, cid: &str) -> Result<Value, Error> {
        let path = format!("/v1/_conflicts/{cid}");
        self.json(|| self.request(Method::GET, &path)).await
    }

    /// Resolves a record by taking a side; `if_match` (the current ETag) resolves
    /// a resource that moved on since the record. Returns the closed record.
    pub async fn resolve(
        &self,
        cid: &str,
        take: Resolution,
        if_match: Option<&str>,
    ) -> Result<Value, Error> {
        let body = match take {
            Resolution::Theirs => json!({"take": "theirs"}),
            Resolution::Ours => json!({"take": "ours"}),
            Resolution::Doc(doc) => json!({"take": "doc", "doc": doc}),
        }
        .to_string();
        let path = format!("/v1/_conflicts/{cid}/resolve");
        let if_match = match if_match {
            Some(tag) => Some(
                HeaderValue::from_str(tag)
                    .map_err(|_| Error::Invalid(format!("{tag:?} is not a valid ETag")))?,
            ),
            None => None,
        };
        let key = crate::client::new_idempotency_key();
        self.json_with(
            || {
                let request = self
                    .request(Method::POST, &path)
                    .header(crate::client::IDEMPOTENCY_KEY, key.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
                match &if_match {
                    Some(tag) => request.header("if-match", tag.clone()),
                    None => request,
                }
            },
            // Keyed: a retry of a resolution that landed is replayed.
            true,
        )
        .await
    }

    /// Dismisses a record (closed without a change). Returns the closed record.
    pub async fn dismiss(&self, cid: &str) -> Result<Value, Error> {
        let path = format!("/v1/_conflicts/{cid}/dismiss");
        let key = crate::client::new_idempotency_key();
        let build = || {
            self.request(Method::POST, &path)
                .header(crate::client::IDEMPOTENCY_KEY, key.clone())
        };
        // Keyed: a retry of a dismissal that landed is replayed.
        self.json_with(build, true).await
    }
}
