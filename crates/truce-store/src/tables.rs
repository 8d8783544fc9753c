//! redb tables and the reads over them.
//!
//! [`Tables`] wraps the heads (the `heads` table of one transaction, read-only or
//! writable, under its overlay) and the `log` table, and implements the engine's
//! [`StateView`] over them. The sequencer uses it inside its write transaction (so
//! later commands of a batch see earlier ones); the read path uses it over a
//! published snapshot, so reads never wait for the writer.

use redb::{ReadableTable, TableDefinition};
use truce_engine::{
    Change, ChangePage, ChangeQuery, CollectionName, ListPage, ListQuery, ResourceKey, StateView,
    StorageError, Version,
};

use crate::codec::{self, HeadRecord, LogPosition, LogRecord};
use crate::error::storage;
use crate::heads::Heads;

/// Newest version of every resource that ever existed, as of the last checkpoint: an
/// index into the log (see [`crate::heads`]).
pub(crate) const HEADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("heads");
/// Every version, keyed by `(revision, index within the revision)`; also the change feed.
pub(crate) const LOG: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("log");
/// Side records (conflict records, ...), keyed by `table code ‖ key`.
pub(crate) const SIDE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("side");
/// Counters: how far the change feed is compacted.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` key: the newest revision no longer served by the change feed.
pub(crate) const META_CHANGES_COMPACTED: &str = "changes_compacted_through";
/// `meta` key: the revision the `heads` table is complete to (the last checkpoint).
/// Absent in stores from before the overlay, whose table was always complete.
pub(crate) const META_HEADS_THROUGH: &str = "heads_through";
/// `meta` key: the write-ahead log's epoch, the checkpoints the file has had. Frames
/// of this epoch are the ones after the last checkpoint (see `crate::wal`). Absent
/// in stores from before epochs (0).
pub(crate) const META_WAL_EPOCH: &str = "wal_epoch";

/// The key of a side record in the `side` table: its table's code, then its key.
pub(crate) fn side_key(table: u8, key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(key.len() + 1);
    full.push(table);
    full.extend_from_slice(key);
    full
}

/// The heads and the log of one snapshot.
pub(crate) struct Tables<H, L> {
    pub heads: Heads<H>,
    pub log: L,
}

impl<H, L> Tables<H, L>
where
    H: ReadableTable<&'static [u8], &'static [u8]>,
    L: ReadableTable<(u64, u32), &'static [u8]>,
{
    /// The head record of `key`.
    pub fn head_record(&self, key: &ResourceKey) -> Result<Option<HeadRecord>, StorageError> {
        self.heads.get(codec::head_key(key).as_slice())
    }

    /// The log record at `position`.
    pub fn log_record(
        &self,
        position: LogPosition,
        with_body: bool,
    ) -> Result<Option<LogRecord>, StorageError> {
        let found = self.log.get(position).map_err(storage)?;
        found
            .map(|v| codec::decode_log(v.value(), with_body))
            .transpose()
    }

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
        self.heads.scan(&start, &end, &mut |k, head| {
            if head.tombstone {
                return Ok(true);
            }
            if items.len() == query.limit {
                next = items.last().map(|(id, _)| Clone::clone(id));
                return Ok(false);
            }
            let key = codec::decode_head_key(k)?;
            let version = self.head_version(&key, &head)?;
            items.push((key.id, version));
            Ok(true)
        })?;
        Ok(ListPage { items, next })
    }

    /// The full version a head record points at.
    fn head_version(&self, key: &ResourceKey, head: &HeadRecord) -> Result<Version, StorageError> {
        let record = self.log_record(head.position, true)?.ok_or_else(|| {
            StorageError::Corrupt(format!("head of {key} points at no log record"))
        })?;
        Ok(version_of(head.position, record))
    }
}

/// The engine's view of a version stored at `position`.
fn version_of(position: LogPosition, record: LogRecord) -> Version {
    Version {
        number: record.number,
        revision: position.0,
        at: record.at,
        op: record.op,
        by: record.by,
        body: record.body,
    }
}

impl<H, L> StateView for Tables<H, L>
where
    H: ReadableTable<&'static [u8], &'static [u8]>,
    L: ReadableTable<(u64, u32), &'static [u8]>,
{
    fn head(&self, key: &ResourceKey) -> Result<Option<Version>, StorageError> {
        match self.head_record(key)? {
            Some(head) => Ok(Some(self.head_version(key, &head)?)),
            None => Ok(None),
        }
    }

    fn walk_back(
        &self,
        key: &ResourceKey,
        below: u64,
        visit: &mut dyn FnMut(Version) -> bool,
    ) -> Result<(), StorageError> {
        let Some(head) = self.head_record(key)? else {
            return Ok(());
        };
        let mut next = Some(head.position);
        while let Some(position) = next {
            let Some(entry) = self.log.get(position).map_err(storage)? else {
                return Ok(());
            };
            // Bodies are only copied for the versions handed to `visit`.
            let header = codec::decode_log(entry.value(), false)?;
            if header.stripped {
                return Ok(());
            }
            next = header.prev;
            if header.number >= below {
                continue;
            }
            let record = codec::decode_log(entry.value(), true)?;
            if !visit(version_of(position, record)) {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The revision of the last commit: the newest log entry's. The newest entry is
/// always some resource's head, so compaction never removes it, and deriving the
/// revision from it saves a write per commit.
pub(crate) fn last_revision<L>(log: &L) -> Result<u64, StorageError>
where
    L: ReadableTable<(u64, u32), &'static [u8]>,
{
    Ok(log
        .last()
        .map_err(storage)?
        .map_or(0, |(key, _)| key.value().0))
}

/// Reads a page of the change feed from the log (the caller has checked retention).
pub(crate) fn read_changes<L>(
    log: &L,
    query: &ChangeQuery,
    head_revision: u64,
) -> Result<ChangePage, StorageError>
where
    L: ReadableTable<(u64, u32), &'static [u8]>,
{
    let mut page = Vec::new();
    let mut last_revision = head_revision;
    let start = query.since.saturating_add(1);
    let mut scanned_through = query.since;
    for entry in log.range((start, 0)..).map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let (revision, _) = k.value();
        if query.page_full(page.len(), scanned_through, revision) {
            last_revision = scanned_through;
            break;
        }
        scanned_through = revision;
        let record = codec::decode_log(v.value(), query.include_docs)?;
        if !query.selects(&record.key) {
            continue;
        }
        page.push(Change {
            revision,
            key: record.key,
            version: record.number,
            at: record.at,
            op: record.op,
            body: record.body,
        });
    }
    Ok(ChangePage {
        changes: page,
        last_revision,
    })
}
