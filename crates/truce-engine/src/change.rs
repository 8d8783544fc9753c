//! The change feed: one entry per committed version, in revision order.
//!
//! Every accepted write appends a [`Change`] at the revision of its commit. Readers ask
//! for the changes after a revision (`since`); a page never splits the changes of one
//! revision, so resuming from a page's `last_revision` neither skips nor repeats a
//! change. Entries older than the change-feed retention are compacted away, and asking
//! for them answers 410.

use bytes::Bytes;

use crate::error::EngineError;
use crate::etag::ETag;
use crate::name::{CollectionName, ResourceKey};
use crate::record::Op;
use crate::time::Timestamp;

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The revision of the commit.
    pub revision: u64,
    /// The resource changed.
    pub key: ResourceKey,
    /// Its new version.
    pub version: u64,
    /// When it was committed.
    pub at: Timestamp,
    /// What kind of write it was.
    pub op: Op,
    /// The document at that version, when asked for and still retained.
    pub body: Option<Bytes>,
}

impl Change {
    /// The ETag of the version this change made.
    pub fn etag(&self) -> ETag {
        ETag::derive(&self.key, self.version, self.revision, self.at)
    }
}

/// Which changes to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeQuery {
    /// Only changes with a revision greater than this.
    pub since: u64,
    /// Only this collection.
    pub collection: Option<CollectionName>,
    /// Only this resource.
    pub key: Option<ResourceKey>,
    /// At most about this many changes (a revision is never split).
    pub limit: usize,
    /// Attach each version's document.
    pub include_docs: bool,
}

impl ChangeQuery {
    /// Whether `change` passes the collection and resource filters.
    pub fn selects(&self, key: &ResourceKey) -> bool {
        self.collection
            .as_ref()
            .is_none_or(|c| *c == key.collection)
            && self.key.as_ref().is_none_or(|k| k == key)
    }

    /// Refuses a `since` that points into compacted history: changes after it may be
    /// gone. `compacted_through` is the newest revision compaction removed.
    pub fn check_retained(&self, compacted_through: u64) -> Result<(), EngineError> {
        if self.since < compacted_through {
            Err(EngineError::HistoryCompacted {
                what: format!("revision {}", self.since),
                oldest: compacted_through,
            })
        } else {
            Ok(())
        }
    }

    /// Whether a page holding `taken` changes, the last at `last_revision`, is full
    /// before `next_revision`: only at a revision boundary.
    pub fn page_full(&self, taken: usize, last_revision: u64, next_revision: u64) -> bool {
        taken >= self.limit && next_revision != last_revision
    }
}

/// A page of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// The changes, in revision order.
    pub changes: Vec<Change>,
    /// Pass this as `since` to continue: the last revision the page covers.
    pub last_revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(since: u64) -> ChangeQuery {
        ChangeQuery {
            since,
            collection: None,
            key: None,
            limit: 2,
            include_docs: false,
        }
    }

    #[test]
    fn compacted_since_is_refused() {
        assert!(query(5).check_retained(5).is_ok());
        assert!(query(0).check_retained(0).is_ok());
        assert!(matches!(
            query(4).check_retained(5),
            Err(EngineError::HistoryCompacted { oldest: 5, .. })
        ));
    }

    #[test]
    fn pages_end_on_revision_boundaries() {
        let q = query(0);
        assert!(!q.page_full(1, 3, 4));
        assert!(!q.page_full(2, 3, 3));
        assert!(q.page_full(2, 3, 4));
    }
}
