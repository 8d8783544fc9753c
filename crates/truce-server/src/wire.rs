//! The JSON shapes truce sends and receives, one type each, with their OpenAPI schema.
//!
//! Handlers render these types and nothing else, so the published OpenAPI document
//! describes exactly what goes over the wire. Documents are embedded as raw JSON (they
//! are stored as compact JSON and never re-serialised).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use truce_engine::{Change, DocId, HistoryEntry, Op, ResourceKey, Version};
use utoipa::ToSchema;

/// A stored document body, embedded without re-serialising it.
pub(crate) fn raw_document(bytes: &[u8]) -> Box<RawValue> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_owned()).ok())
        // Stored bodies are always valid JSON; a damaged one shows as null.
        .unwrap_or_default()
}

/// What kind of write made a version.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WireOp {
    /// First version, or first after a delete.
    Create,
    /// Whole-document replacement.
    Replace,
    /// Merge patch or JSON Patch.
    Patch,
    /// Tombstone.
    Delete,
    /// Content copied from an earlier version.
    Revert,
    /// Automatic three-way merge.
    Merge,
    /// Conflict resolution.
    Resolve,
}

impl From<Op> for WireOp {
    fn from(op: Op) -> Self {
        match op {
            Op::Create => Self::Create,
            Op::Replace => Self::Replace,
            Op::Patch => Self::Patch,
            Op::Delete => Self::Delete,
            Op::Revert => Self::Revert,
            Op::Merge => Self::Merge,
            Op::Resolve => Self::Resolve,
        }
    }
}

/// One resource in a collection listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope {
    /// The document id.
    pub id: String,
    /// Its current version.
    pub version: u64,
    /// Its current ETag (quoted, as in the header).
    pub etag: String,
    /// The revision at which this version was committed.
    pub revision: u64,
    /// When this version was committed (RFC 3339).
    pub updated_at: String,
    /// The document.
    #[schema(value_type = Object)]
    pub doc: Box<RawValue>,
}

impl Envelope {
    /// The envelope of a live head version.
    pub fn new(collection: &truce_engine::CollectionName, id: DocId, version: &Version) -> Self {
        let key = ResourceKey {
            collection: collection.clone(),
            id,
        };
        Self {
            etag: version.etag(&key).to_header(),
            id: key.id.as_str().to_owned(),
            version: version.number,
            revision: version.revision,
            updated_at: version.at.rfc3339(),
            doc: raw_document(version.body.as_deref().unwrap_or(b"null")),
        }
    }
}

/// A page of a collection.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvelopePage {
    /// The resources on this page, in id order.
    pub items: Vec<Envelope>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// One version in a resource's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryItem {
    /// The version number.
    pub version: u64,
    /// Its ETag.
    pub etag: String,
    /// The revision of its commit.
    pub revision: u64,
    /// What kind of write made it.
    pub op: WireOp,
    /// When it was committed (RFC 3339).
    pub at: String,
    /// Who made it.
    pub by: String,
    /// Size of the document in bytes (0 for a deletion).
    pub size: usize,
}

impl From<HistoryEntry> for HistoryItem {
    fn from(entry: HistoryEntry) -> Self {
        Self {
            version: entry.version,
            etag: entry.etag.to_header(),
            revision: entry.revision,
            op: entry.op.into(),
            at: entry.at.rfc3339(),
            by: entry.by,
            size: entry.size,
        }
    }
}

/// A page of a resource's history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPageBody {
    /// The versions on this page.
    pub items: Vec<HistoryItem>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// One entry of the change feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangeItem {
    /// The revision of the commit.
    pub revision: u64,
    /// The collection.
    pub collection: String,
    /// The document id.
    pub id: String,
    /// The version the change made.
    pub version: u64,
    /// That version's ETag.
    pub etag: String,
    /// What kind of write it was.
    pub op: WireOp,
    /// When it was committed (RFC 3339).
    pub at: String,
    /// The document at that version (with `include_docs=true`; absent for deletions
    /// and versions removed by retention).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub doc: Option<Box<RawValue>>,
}

impl From<Change> for ChangeItem {
    fn from(change: Change) -> Self {
        Self {
            etag: change.etag().to_header(),
            revision: change.revision,
            collection: change.key.collection.as_str().to_owned(),
            id: change.key.id.as_str().to_owned(),
            version: change.version,
            op: change.op.into(),
            at: change.at.rfc3339(),
            doc: change.body.as_deref().map(raw_document),
        }
    }
}

/// A page of the change feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChangesBody {
    /// The changes, in revision order.
    pub changes: Vec<ChangeItem>,
    /// Pass as `since` to continue; no change at or below it is ever delivered again.
    pub last_revision: u64,
}

/// The answer to a `DELETE`: the tombstone version.
#[derive(Debug, Serialize, ToSchema)]
pub struct TombstoneBody {
    /// Always `true`.
    pub deleted: bool,
    /// The document id.
    pub id: String,
    /// The tombstone's version.
    pub version: u64,
    /// The tombstone's ETag.
    pub etag: String,
    /// The revision of the delete.
    pub revision: u64,
    /// When it was deleted (RFC 3339).
    pub deleted_at: String,
}

/// The body of `POST /v1/{collection}/{id}/revert`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertRequest {
    /// The version whose content becomes the new version.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 1)]
    pub to: u64,
}

/// A non-negative whole number, also when written `3.0` (JSON Schema's `integer`
/// accepts it, so clients generated from the document may send it).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    match number.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not a non-negative whole number"
        ))),
    }
}

/// The answer of a compaction pass.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompactionBody {
    /// Past versions removed.
    pub versions_removed: u64,
    /// Change-feed entries removed.
    pub changes_removed: u64,
    /// The oldest `since` the change feed still answers without 410.
    pub oldest_revision: u64,
    /// Conflict records removed (older than the record retention, or over a
    /// collection's cap).
    pub conflicts_removed: u64,
    /// Conflict events removed (older than the record retention).
    pub conflict_events_removed: u64,
    /// Idempotency records removed (kept longer than `idempotency_keep`).
    pub idempotency_removed: u64,
}

/// Health and readiness answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// `ok`, or what is wrong.
    pub status: String,
}

/// An RFC 9457 problem. Every error answer has this shape; the extension members
/// appear where the problem type says so.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody {
    /// `/problems/{slug}`; a human page is served there.
    #[serde(rename = "type")]
    pub type_: String,
    /// A fixed title per problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened, for this request.
    pub detail: String,
    /// The request path.
    pub instance: String,
    /// The request id (also in `X-Request-Id`); quote it to an operator.
    pub request_id: String,
    /// 409/412: the resource the conflict is about.
    pub resource: Option<ResourceRef>,
    /// 409/412: the current version of the resource.
    pub current_version: Option<u64>,
    /// 409/412: the current ETag of the resource (also in the `ETag` header).
    pub current_etag: Option<String>,
    /// 409/412 about the resource's state: the conflict record this refusal
    /// created (SPEC §7).
    pub conflict_id: Option<String>,
    /// precondition-failed: `true` when the current content already equals what
    /// the refused request would make (absent otherwise). The request was still
    /// refused: another write made that content.
    pub current_matches_request: Option<bool>,
    /// state-conflict: the current state.
    pub from: Option<String>,
    /// state-conflict: the state asked for.
    pub to: Option<String>,
    /// state-conflict: the states allowed from `from`.
    pub allowed: Option<Vec<String>>,
    /// version-conflict: the version `?if_version` expected.
    pub expected_version: Option<u64>,
    /// not-found on a deleted resource: when it was deleted.
    pub deleted_at: Option<String>,
    /// not-found on a deleted resource: the tombstone's version.
    pub version: Option<u64>,
    /// patch-test-failed / patch-conflict: index of the failed operation.
    pub operation: Option<usize>,
    /// patch-test-failed / patch-conflict: the failed operation's path.
    pub path: Option<String>,
    /// history-compacted: the oldest version or revision still available.
    pub oldest: Option<u64>,
    /// validation-failed: each problem with a JSON pointer.
    pub errors: Option<Vec<FieldError>>,
    /// unavailable: why (`disk-full`, `io-error`, `overloaded`, `shutting-down`).
    pub reason: Option<String>,
    /// payload-too-large: the limit in bytes.
    pub limit: Option<usize>,
}

/// A resource named in a problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceRef {
    /// The collection.
    pub collection: String,
    /// The document id.
    pub id: String,
}

/// One validation problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer to the offending value.
    pub pointer: String,
    /// What is wrong with it.
    pub message: String,
}
