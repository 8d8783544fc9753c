//! Versions: what every accepted write leaves behind.
//!
//! A resource is a sequence of versions numbered from 1. The newest is the resource's
//! *head*; a deleted resource's head is a tombstone (a version without a body). Older
//! versions form its history until retention removes them.

use bytes::Bytes;

use crate::etag::ETag;
use crate::name::{DocId, ResourceKey};
use crate::time::Timestamp;

/// What kind of write produced a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// First version, or the first after a delete.
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

impl Op {
    /// Every op, indexed by its stored code.
    const CODES: [Op; 7] = [
        Op::Create,
        Op::Replace,
        Op::Patch,
        Op::Delete,
        Op::Revert,
        Op::Merge,
        Op::Resolve,
    ];

    /// The stable one-byte code storage backends persist.
    pub fn code(self) -> u8 {
        match self {
            Op::Create => 0,
            Op::Replace => 1,
            Op::Patch => 2,
            Op::Delete => 3,
            Op::Revert => 4,
            Op::Merge => 5,
            Op::Resolve => 6,
        }
    }

    /// The op for a stored code, if the code is known.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::CODES.get(usize::from(code)).copied()
    }
}

/// One version of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// 1 at creation, +1 for every accepted write, deletes included.
    pub number: u64,
    /// The store-wide revision of the commit that made it.
    pub revision: u64,
    /// When it was committed.
    pub at: Timestamp,
    /// What kind of write made it.
    pub op: Op,
    /// Who made it.
    pub by: String,
    /// The document as compact JSON; `None` for a tombstone.
    pub body: Option<Bytes>,
}

impl Version {
    /// Whether this version is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.body.is_none()
    }

    /// This version's strong ETag.
    pub fn etag(&self, key: &ResourceKey) -> ETag {
        ETag::derive(key, self.number, self.revision, self.at)
    }

    /// Size of the body in bytes (0 for a tombstone).
    pub fn size(&self) -> usize {
        self.body.as_ref().map_or(0, Bytes::len)
    }

    /// The summary shown in history listings.
    pub fn history_entry(&self, key: &ResourceKey) -> HistoryEntry {
        HistoryEntry {
            version: self.number,
            etag: self.etag(key),
            revision: self.revision,
            op: self.op,
            at: self.at,
            by: self.by.clone(),
            size: self.size(),
        }
    }
}

/// One row of `GET /v1/{c}/{id}/versions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The version number.
    pub version: u64,
    /// Its ETag.
    pub etag: ETag,
    /// The revision of its commit.
    pub revision: u64,
    /// What kind of write made it.
    pub op: Op,
    /// When it was committed.
    pub at: Timestamp,
    /// Who made it.
    pub by: String,
    /// Body size in bytes.
    pub size: usize,
}

/// A page of a resource's history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The versions on this page.
    pub items: Vec<HistoryEntry>,
    /// The version to continue below, if there are more.
    pub next: Option<u64>,
}

/// A query for a page of a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only ids starting with this.
    pub prefix: Option<String>,
    /// Continue after this id (from the previous page's cursor).
    pub after: Option<DocId>,
    /// Page size.
    pub limit: usize,
}

/// A page of live resources of one collection, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Each resource's id and head version.
    pub items: Vec<(DocId, Version)>,
    /// The id to continue after, if there may be more.
    pub next: Option<DocId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_codes_round_trip() {
        for op in Op::CODES {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(7), None);
    }
}
