//! What the client hands back: documents with their versions, write results, pages,
//! history entries and changes.

use serde::Deserialize;
use serde_json::Value;

/// A document (or any value decoded from it) with the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The document.
    pub value: T,
    /// Its ETag: pass it to `if_match` to write on top of exactly this version.
    pub etag: String,
    /// Its version number.
    pub version: u64,
    /// The store revision at which this version was committed.
    pub revision: u64,
}

/// What a write did (the server's `Truce-Outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new resource.
    Created,
    /// A new version.
    Updated,
    /// The content was already this; no new version.
    Unchanged,
    /// A tombstone was written.
    Deleted,
}

impl Outcome {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "created" => Self::Created,
            "updated" => Self::Updated,
            "unchanged" => Self::Unchanged,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }

    /// Whether this write made a new version.
    pub fn changed(self) -> bool {
        matches!(self, Self::Created | Self::Updated | Self::Deleted)
    }
}

/// The result of an accepted write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// What the write did.
    pub outcome: Outcome,
    /// The resource's ETag after it.
    pub etag: String,
    /// Its version after it.
    pub version: u64,
    /// The revision of that version.
    pub revision: u64,
    /// The new document (a tombstone description after a delete).
    pub body: Value,
}

/// A page of a list; pass `next` back as the cursor for the following page.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The cursor of the next page, `None` on the last.
    pub next: Option<String>,
}

/// One resource in a collection listing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Envelope {
    /// The document id.
    pub id: String,
    /// Its current version.
    pub version: u64,
    /// Its current ETag.
    pub etag: String,
    /// The revision of that version.
    pub revision: u64,
    /// When that version was committed.
    pub updated_at: String,
    /// The document.
    pub doc: Value,
}

/// One version in a resource's history.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryEntry {
    /// The version number.
    pub version: u64,
    /// Its ETag.
    pub etag: String,
    /// The revision of its commit.
    pub revision: u64,
    /// What made it: create, replace, patch, delete, revert, merge, resolve.
    pub op: String,
    /// When it was committed.
    pub at: String,
    /// Who made it.
    pub by: String,
    /// Document size in bytes.
    pub size: u64,
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Change {
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
    pub op: String,
    /// When it was committed.
    pub at: String,
    /// The document, when asked for with `include_docs`.
    #[serde(default)]
    pub doc: Option<Value>,
}

/// One conflict event (SPEC §7): a record was written in a new state.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConflictEvent {
    /// Its position in the event log (the stream resumes after it).
    pub position: u64,
    /// `conflict.detected`, `conflict.resolved` or `conflict.dismissed`.
    pub event: String,
    /// The record.
    pub conflict_id: String,
    /// Where the record is read.
    pub href: String,
    /// The record's type (a problem slug, `merged` or `overwritten`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The record's status after the event.
    pub status: String,
    /// The resource.
    pub resource: ResourceName,
    /// How a resolved record was resolved.
    #[serde(default)]
    pub resolution: Option<String>,
    /// The version the write was based on.
    #[serde(default)]
    pub base_version: Option<u64>,
    /// The version current when it was judged.
    #[serde(default)]
    pub current_version: Option<u64>,
}

/// A resource named in an event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResourceName {
    /// The collection.
    pub collection: String,
    /// The document id.
    pub id: String,
}

/// A page of the change feed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ChangesPage {
    /// The changes, in revision order.
    pub changes: Vec<Change>,
    /// Pass as `since` to continue.
    pub last_revision: u64,
}

/// Which changes to read or follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangesOptions {
    /// Start after this revision (default: the beginning for pages, now for streams
    /// of one resource).
    pub since: Option<u64>,
    /// Only this collection.
    pub collection: Option<String>,
    /// Attach documents.
    pub include_docs: bool,
}

/// Options of a collection listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only ids with this prefix.
    pub prefix: Option<String>,
    /// The `next` cursor of the previous page.
    pub cursor: Option<String>,
    /// Page size (1 to 1000).
    pub limit: Option<usize>,
}
