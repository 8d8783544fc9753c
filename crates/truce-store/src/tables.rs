//! redb tables and the reads over them.
//!
//! [`Tables`] wraps the opened tables of one transaction, read-only or writable, and
//! implements the engine's [`StateView`] over them. The sequencer uses it inside its
//! write transaction (so later commands of a batch see earlier ones); the read path
//! uses it over an MVCC snapshot, so reads never wait for the writer.

use redb::{ReadableTable, TableDefinition};
use truce_engine::{
    Change, ChangePage, ChangeQuery, CollectionName, HistoryPage, ListPage, ListQuery, ResourceKey,
    StateView, StorageError, Version,
};

use crate::codec;
use crate::error::storage;

/// Head version of every resource that ever existed.
pub(crate) const HEADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("heads");
/// Every past (non-head) version still retained.
pub(crate) const HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history");
/// The change feed, keyed by `(revision, index within the revision)`.
pub(crate) const CHANGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("changes");
/// Counters: the last revision, how far the change feed is compacted.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` key: the revision of the last commit.
pub(crate) const META_REVISION: &str = "revision";
/// `meta` key: the newest revision removed from the change feed.
pub(crate) const META_CHANGES_COMPACTED: &str = "changes_compacted_through";

/// Readable heads and history tables of one transaction.
pub(crate) struct Tables<H, Y> {
    pub heads: H,
    pub history: Y,
}

impl<H, Y> StateView for Tables<H, Y>
where
    H: ReadableTable<&'static [u8], &'static [u8]>,
    Y: ReadableTable<&'static [u8], &'static [u8]>,
{
    fn head(&self, key: &ResourceKey) -> Result<Option<Version>, StorageError> {
        let found = self
            .heads
            .get(codec::head_key(key).as_slice())
            .map_err(storage)?;
        found.map(|v| codec::decode_version(v.value())).transpose()
    }

    fn past_version(
        &self,
        key: &ResourceKey,
        number: u64,
    ) -> Result<Option<Version>, StorageError> {
        let found = self
            .history
            .get(codec::history_key(key, number).as_slice())
            .map_err(storage)?;
        found.map(|v| codec::decode_version(v.value())).transpose()
    }

    fn oldest_past_version(&self, key: &ResourceKey) -> Result<Option<u64>, StorageError> {
        let (start, end) = codec::history_range(key);
        let mut range = self
            .history
            .range(start.as_slice()..end.as_slice())
            .map_err(storage)?;
        match range.next() {
            Some(entry) => {
                let (k, _) = entry.map_err(storage)?;
                Ok(Some(codec::decode_history_version(k.value())?))
            }
            None => Ok(None),
        }
    }
}

impl<H, Y> Tables<H, Y>
where
    H: ReadableTable<&'static [u8], &'static [u8]>,
    Y: ReadableTable<&'static [u8], &'static [u8]>,
{
    /// A page of live resources of a collection, in id order. Tombstones are skipped.
    pub fn list(
        &self,
        collection: &CollectionName,
        query: &ListQuery,
    ) -> Result<ListPage, StorageError> {
        let prefix = query.prefix.as_deref().unwrap_or("");
        let (start, end) = codec::collection_range(collection, prefix);
        let start = match &query.after {
            Some(after) if after.as_str() >= prefix => {
                let mut key = codec::head_key(&ResourceKey {
                    collection: collection.clone(),
                    id: after.clone(),
                });
                // Just after `after`: the smallest longer key.
                key.push(0);
                key
            }
            _ => start,
        };
        let mut items = Vec::new();
        let mut next = None;
        if start >= end {
            return Ok(ListPage { items, next });
        }
        for entry in self
            .heads
            .range(start.as_slice()..end.as_slice())
            .map_err(storage)?
        {
            let (k, v) = entry.map_err(storage)?;
            let version = codec::decode_version(v.value())?;
            if version.is_tombstone() {
                continue;
            }
            if items.len() == query.limit {
                next = items.last().map(|(id, _)| id.clone());
                break;
            }
            items.push((codec::decode_head_key(k.value())?.id, version));
        }
        Ok(ListPage { items, next })
    }

    /// A page of a resource's history, newest first, below `before`.
    pub fn history(
        &self,
        key: &ResourceKey,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        let mut items = Vec::new();
        let Some(head) = self.head(key)? else {
            return Ok(HistoryPage { items, next: None });
        };
        let before = before.unwrap_or(u64::MAX);
        if head.number < before {
            items.push(head.history_entry(key));
        }
        let (start, _) = codec::history_range(key);
        let end = codec::history_key(key, before.min(head.number));
        let mut more = false;
        for entry in self
            .history
            .range(start.as_slice()..end.as_slice())
            .map_err(storage)?
            .rev()
        {
            if items.len() == limit {
                more = true;
                break;
            }
            let (_, v) = entry.map_err(storage)?;
            items.push(codec::decode_version(v.value())?.history_entry(key));
        }
        let next = if more {
            items.last().map(|e| e.version)
        } else {
            None
        };
        Ok(HistoryPage { items, next })
    }

    /// The body of version `number` of `key`, if it is still retained.
    fn body_at(
        &self,
        key: &ResourceKey,
        number: u64,
    ) -> Result<Option<bytes::Bytes>, StorageError> {
        let head = self.head(key)?;
        let version = match head {
            Some(head) if head.number == number => Some(head),
            Some(_) => self.past_version(key, number)?,
            None => None,
        };
        Ok(version.and_then(|v| v.body))
    }
}

/// Reads a page of the change feed (the caller has checked retention).
pub(crate) fn read_changes<C, H, Y>(
    changes: &C,
    tables: &Tables<H, Y>,
    query: &ChangeQuery,
    head_revision: u64,
) -> Result<ChangePage, StorageError>
where
    C: ReadableTable<(u64, u32), &'static [u8]>,
    H: ReadableTable<&'static [u8], &'static [u8]>,
    Y: ReadableTable<&'static [u8], &'static [u8]>,
{
    let mut page = Vec::new();
    let mut last_revision = head_revision;
    let start = query.since.saturating_add(1);
    let mut scanned_through = query.since;
    for entry in changes.range((start, 0)..).map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (revision, _) = k.value();
        if query.page_full(page.len(), scanned_through, revision) {
            last_revision = scanned_through;
            break;
        }
        scanned_through = revision;
        let record = codec::decode_change(v.value())?;
        if !query.selects(&record.key) {
            continue;
        }
        let body = if query.include_docs {
            tables.body_at(&record.key, record.version)?
        } else {
            None
        };
        page.push(Change {
            revision,
            key: record.key,
            version: record.version,
            at: record.at,
            op: record.op,
            body,
        });
    }
    Ok(ChangePage {
        changes: page,
        last_revision,
    })
}
