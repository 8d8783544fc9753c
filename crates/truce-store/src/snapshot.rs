//! Read snapshots: the last checkpoint's redb state under the in-memory layers of
//! one revision, published by the sequencer after each commit.
//!
//! A [`Snapshot`] pairs a [`Base`] (a redb read transaction of the last checkpoint,
//! shared by every snapshot until the next one) with the [layers](crate::layer)
//! written since; neither alone is the state. The sequencer publishes one right
//! after each batch is durable and before any write of the batch is answered, so
//! a client that got a 2xx reads its own write. Readers take the newest one
//! without waiting for the writer. The sequencer plans each batch against one as
//! well, writing into its active layer.

use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use redb::{
    AccessGuard, Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
};
use truce_engine::{
    Change, ChangePage, ChangeQuery, CollectionName, ListPage, ListQuery, ResourceKey, StateView,
    StorageError, Version,
};

use crate::codec::{self, HeadRecord, LogPosition, LogRecord};
use crate::error::storage;
use crate::layer::{Entry, Layers, NewestFirst, map_range};
use crate::tables::{HEADS, LOG, META, META_CHANGES_COMPACTED, SIDE, side_key};

/// The state of the last checkpoint, as a redb read transaction with its tables
/// open.
pub(crate) struct Base {
    heads: ReadOnlyTable<&'static [u8], &'static [u8]>,
    log: ReadOnlyTable<(u64, u32), &'static [u8]>,
    /// `None` in files from before side records that never wrote one.
    side: Option<ReadOnlyTable<&'static [u8], &'static [u8]>>,
    /// How far the change feed is compacted (moved only by a checkpoint).
    changes_compacted: u64,
    /// Declared last: the tables above are dropped before it.
    _txn: ReadTransaction,
}

impl Base {
    /// Opens the committed state of `db`.
    pub fn open(db: &Database) -> Result<Arc<Self>, StorageError> {
        let txn = db.begin_read().map_err(storage)?;
        let side = match txn.open_table(SIDE) {
            Ok(side) => Some(side),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(error) => return Err(storage(error)),
        };
        let meta = txn.open_table(META).map_err(storage)?;
        let changes_compacted = meta
            .get(META_CHANGES_COMPACTED)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        Ok(Arc::new(Self {
            heads: txn.open_table(HEADS).map_err(storage)?,
            log: txn.open_table(LOG).map_err(storage)?,
            side,
            changes_compacted,
            _txn: txn,
        }))
    }
}

/// What a scan of heads calls for each head: `false` stops the scan.
type VisitHead<'v> = dyn FnMut(&[u8], HeadRecord) -> Result<bool, StorageError> + 'v;

/// A log record's bytes, wherever they are kept.
pub(crate) enum LogBytes<'a> {
    Stored(AccessGuard<'a, &'static [u8]>),
    Layered(Bytes),
}

impl LogBytes<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Stored(guard) => guard.value(),
            Self::Layered(bytes) => bytes,
        }
    }
}

/// The committed state at one revision.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub base: Arc<Base>,
    pub layers: Layers,
}

impl Snapshot {
    /// A snapshot of `base` with nothing written since.
    pub fn of(base: Arc<Base>) -> Self {
        Self {
            base,
            layers: Layers::default(),
        }
    }

    /// The head record of `key`.
    pub fn head_record(&self, key: &ResourceKey) -> Result<Option<HeadRecord>, StorageError> {
        let key = codec::head_key(key);
        if let Some(head) = self.layers.head(&key) {
            return Ok(Some(head));
        }
        self.base
            .heads
            .get(key.as_slice())
            .map_err(storage)?
            .map(|v| codec::decode_head(v.value()))
            .transpose()
    }

    /// The bytes of the log record at `position`.
    fn log_bytes(&self, position: LogPosition) -> Result<Option<LogBytes<'_>>, StorageError> {
        if let Some(bytes) = self.layers.log(position) {
            return Ok(Some(LogBytes::Layered(bytes)));
        }
        Ok(self
            .base
            .log
            .get(position)
            .map_err(storage)?
            .map(LogBytes::Stored))
    }

    /// The log record at `position`.
    pub fn log_record(
        &self,
        position: LogPosition,
        with_body: bool,
    ) -> Result<Option<LogRecord>, StorageError> {
        self.log_bytes(position)?
            .map(|bytes| codec::decode_log(bytes.as_slice(), with_body))
            .transpose()
    }

    /// The log records from `start` on, in position order: redb's, then the
    /// frozen layer's, then the active layer's (their positions never overlap).
    pub fn log_from(
        &self,
        start: LogPosition,
    ) -> Result<impl Iterator<Item = Result<(LogPosition, LogBytes<'_>), StorageError>>, StorageError>
    {
        let stored = self.base.log.range(start..).map_err(storage)?.map(|entry| {
            let (position, value) = entry.map_err(storage)?;
            Ok((position.value(), LogBytes::Stored(value)))
        });
        let layered = self.layers.oldest_first().flat_map(move |layer| {
            layer
                .log
                .range(start..)
                .map(|(position, bytes)| Ok((*position, LogBytes::Layered(bytes.clone()))))
        });
        Ok(stored.chain(layered))
    }

    /// The revision of the last commit: the newest log record's. The newest
    /// record is always some resource's head, so compaction never removes it.
    pub fn revision(&self) -> Result<u64, StorageError> {
        if let Some((revision, _)) = self.layers.last_log_position() {
            return Ok(revision);
        }
        Ok(self
            .base
            .log
            .last()
            .map_err(storage)?
            .map_or(0, |(key, _)| key.value().0))
    }

    /// How far the change feed is compacted.
    pub fn changes_compacted(&self) -> u64 {
        self.base.changes_compacted
    }

    /// Visits the heads with keys in `[start, end)` in key order, the newest
    /// layer's winning, until `visit` returns `false`.
    fn scan_heads(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut VisitHead<'_>,
    ) -> Result<(), StorageError> {
        if start >= end {
            return Ok(());
        }
        let stored = self
            .base
            .heads
            .range::<&[u8]>(start..end)
            .map_err(storage)?
            .map(|entry| -> Entry<HeadRecord> {
                let (key, value) = entry.map_err(storage)?;
                Ok((key.value().to_vec(), codec::decode_head(value.value())?))
            });
        let frozen = self
            .layers
            .frozen
            .as_ref()
            .map(|layer| map_range(&layer.heads, start, Some(end), false))
            .unwrap_or_else(|| Box::new(std::iter::empty()));
        let active = map_range(&self.layers.active.heads, start, Some(end), false);
        let merged = NewestFirst::new(active, NewestFirst::new(frozen, stored, false), false);
        for entry in merged {
            let (key, head) = entry?;
            if !visit(&key, head)? {
                break;
            }
        }
        Ok(())
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
        self.scan_heads(&start, &end, &mut |k, head| {
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

    /// A page of the change feed (the caller has checked retention).
    pub fn changes(&self, query: &ChangeQuery) -> Result<ChangePage, StorageError> {
        let mut page = Vec::new();
        let mut last_revision = self.revision()?;
        let mut scanned_through = query.since;
        for entry in self.log_from((query.since.saturating_add(1), 0))? {
            let (position, bytes) = entry?;
            let revision = position.0;
            if query.page_full(page.len(), scanned_through, revision) {
                last_revision = scanned_through;
                break;
            }
            scanned_through = revision;
            let record = codec::decode_log(bytes.as_slice(), query.include_docs)?;
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

    /// Whether a version of a resource of `collection` whose id starts with
    /// `prefix` was committed after `since` (true when compaction removed the
    /// log past `since`: the answer is then unknown).
    pub fn changed_since(
        &self,
        collection: &CollectionName,
        prefix: &str,
        since: u64,
    ) -> Result<bool, StorageError> {
        if since < self.changes_compacted() {
            return Ok(true);
        }
        for entry in self.log_from((since.saturating_add(1), 0))? {
            let (_, bytes) = entry?;
            let record = codec::decode_log(bytes.as_slice(), false)?;
            if record.key.collection == *collection && record.key.id.as_str().starts_with(prefix) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One side record.
    pub fn side(&self, table: u8, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let full = side_key(table, key);
        if let Some(layered) = self.layers.side(&full) {
            return Ok(layered);
        }
        let Some(side) = &self.base.side else {
            return Ok(None);
        };
        let found = side.get(full.as_slice()).map_err(storage)?;
        Ok(found.map(|v| Bytes::copy_from_slice(v.value())))
    }

    /// The live side records with `side` keys in `[start, end)` (`end` `None`:
    /// to the end of the table space), newest layer winning, removals skipped;
    /// keys without the table code.
    fn side_scan<'s>(
        &'s self,
        start: &[u8],
        end: &[u8],
        descending: bool,
    ) -> Result<impl Iterator<Item = Result<(Vec<u8>, Bytes), StorageError>> + 's, StorageError>
    {
        let stored: Box<dyn Iterator<Item = Entry<Option<Bytes>>> + 's> = match &self.base.side {
            None => Box::new(std::iter::empty()),
            Some(side) if start < end => {
                let range = side.range::<&[u8]>(start..end).map_err(storage)?;
                let owned = |entry: Result<_, redb::StorageError>| -> Entry<Option<Bytes>> {
                    let (key, value): (AccessGuard<&[u8]>, AccessGuard<&[u8]>) =
                        entry.map_err(storage)?;
                    Ok((
                        key.value().to_vec(),
                        Some(Bytes::copy_from_slice(value.value())),
                    ))
                };
                if descending {
                    Box::new(range.rev().map(owned))
                } else {
                    Box::new(range.map(owned))
                }
            }
            Some(_) => Box::new(std::iter::empty()),
        };
        let frozen = self
            .layers
            .frozen
            .as_ref()
            .map(|layer| map_range(&layer.side, start, Some(end), descending))
            .unwrap_or_else(|| Box::new(std::iter::empty()));
        let active = map_range(&self.layers.active.side, start, Some(end), descending);
        let merged = NewestFirst::new(
            active,
            NewestFirst::new(frozen, stored, descending),
            descending,
        );
        Ok(merged.filter_map(|entry| match entry {
            Ok((key, Some(value))) => Some(Ok((key[1..].to_vec(), value))),
            Ok((_, None)) => None,
            Err(error) => Some(Err(error)),
        }))
    }

    /// Side records of `table` after `after`, in key order, at most `limit`.
    pub fn side_range(
        &self,
        table: u8,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        let start = match after {
            // Just after `after`: the smallest longer key.
            Some(after) => {
                let mut start = side_key(table, after);
                start.push(0);
                start
            }
            None => vec![table],
        };
        let end = table_end(table);
        self.side_scan(&start, &end, false)?.take(limit).collect()
    }

    /// The first `limit` records of side table `table` whose keys start with
    /// `prefix`, keys without the table code.
    pub fn side_prefix(
        &self,
        table: u8,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        let start = side_key(table, prefix);
        let end = truce_engine::prefix_end(&start).unwrap_or_else(|| table_end(table));
        self.side_scan(&start, &end, false)?.take(limit).collect()
    }

    /// The last key of side table `table`, if it has any record.
    pub fn last_side_key(&self, table: u8) -> Result<Option<Vec<u8>>, StorageError> {
        let end = table_end(table);
        let last = self.side_scan(&[table], &end, true)?.next().transpose()?;
        Ok(last.map(|(key, _)| key))
    }
}

/// The first `side` key after every key of table `table`.
fn table_end(table: u8) -> Vec<u8> {
    match table.checked_add(1) {
        Some(next) => vec![next],
        None => vec![u8::MAX; 2],
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

impl StateView for Snapshot {
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
            let Some(bytes) = self.log_bytes(position)? else {
                return Ok(());
            };
            // Bodies are only copied for the versions handed to `visit`.
            let header = codec::decode_log(bytes.as_slice(), false)?;
            if header.stripped {
                return Ok(());
            }
            next = header.prev;
            if header.number >= below {
                continue;
            }
            let record = codec::decode_log(bytes.as_slice(), true)?;
            if !visit(version_of(position, record)) {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The newest snapshot, shared by the sequencer (which replaces it) and readers.
/// Empty once the store has closed.
pub(crate) struct Published(RwLock<Option<Arc<Snapshot>>>);

impl Published {
    /// Starts with `first`.
    pub fn new(first: Snapshot) -> Self {
        Self(RwLock::new(Some(Arc::new(first))))
    }

    /// The newest snapshot.
    pub fn load(&self) -> Result<Arc<Snapshot>, StorageError> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StorageError::Closed)
    }

    /// Makes `next` the newest snapshot; the previous one lives on while readers hold
    /// it.
    pub fn store(&self, next: Snapshot) {
        self.replace(Some(Arc::new(next)));
    }

    /// Lets go of the newest snapshot, before the database closes.
    pub fn clear(&self) {
        self.replace(None);
    }

    fn replace(&self, next: Option<Arc<Snapshot>>) {
        let previous = std::mem::replace(
            &mut *self.0.write().unwrap_or_else(PoisonError::into_inner),
            next,
        );
        // Dropped outside the lock: closing a read transaction takes redb's locks.
        drop(previous);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use redb::Database;

    use super::*;
    use crate::layer::Layer;
    use crate::write_tables::WriteTables;

    const TABLE: u8 = 7;

    fn value(text: &'static str) -> Option<Bytes> {
        Some(Bytes::from_static(text.as_bytes()))
    }

    fn put(layer: &mut Layer, key: &str, to: Option<Bytes>) {
        layer
            .side
            .insert(Arc::from(side_key(TABLE, key.as_bytes())), to);
    }

    /// A checkpoint holding side records `a`, `b`, `c` and log records at
    /// revisions 1 and 2, under a frozen layer (removes `b`, adds `d`, revision
    /// 3) and an active one (replaces `a`, removes `d` and `c`, adds `e`,
    /// revision 4). The database is returned too: reads end when it closes.
    fn layered() -> (tempfile::TempDir, Database, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut tables = WriteTables::open(&txn).unwrap();
            let mut stored = Layer::default();
            for key in ["a", "b", "c"] {
                put(&mut stored, key, value("stored"));
            }
            for revision in [1, 2] {
                stored.log.insert((revision, 0), Bytes::from_static(b"x"));
            }
            tables.write_layer(&stored, 2).unwrap();
        }
        txn.commit().unwrap();
        let mut frozen = Layer::default();
        put(&mut frozen, "b", None);
        put(&mut frozen, "d", value("frozen"));
        frozen.log.insert((3, 0), Bytes::from_static(b"x"));
        let mut active = Layer::default();
        put(&mut active, "a", value("active"));
        put(&mut active, "c", None);
        put(&mut active, "d", None);
        put(&mut active, "e", value("active"));
        active.log.insert((4, 0), Bytes::from_static(b"x"));
        active.log.insert((4, 1), Bytes::from_static(b"x"));
        let snapshot = Snapshot {
            base: Base::open(&db).unwrap(),
            layers: Layers {
                active,
                frozen: Some(frozen),
            },
        };
        (dir, db, snapshot)
    }

    fn keys(records: Vec<(Vec<u8>, Bytes)>) -> Vec<(String, Bytes)> {
        records
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), v))
            .collect()
    }

    #[test]
    fn side_records_read_through_the_layers_newest_first() {
        let (_dir, _db, snapshot) = layered();
        let side = |key: &str| snapshot.side(TABLE, key.as_bytes()).unwrap();
        assert_eq!(side("a"), value("active"));
        // Removed in a layer: gone, although redb still holds it.
        assert_eq!(side("b"), None);
        assert_eq!(side("c"), None);
        // Added by the frozen layer, removed by the active one.
        assert_eq!(side("d"), None);
        assert_eq!(side("e"), value("active"));
        let all = keys(snapshot.side_range(TABLE, None, 10).unwrap());
        assert_eq!(
            all,
            vec![
                ("a".to_string(), value("active").unwrap()),
                ("e".to_string(), value("active").unwrap()),
            ]
        );
        let after_a = keys(snapshot.side_range(TABLE, Some(b"a"), 10).unwrap());
        assert_eq!(after_a.len(), 1);
        assert_eq!(after_a[0].0, "e");
        assert_eq!(snapshot.side_prefix(TABLE, b"b", 10).unwrap(), vec![]);
        assert_eq!(snapshot.last_side_key(TABLE).unwrap(), Some(b"e".to_vec()));
        // Other tables see none of it.
        assert_eq!(snapshot.last_side_key(TABLE + 1).unwrap(), None);
    }

    #[test]
    fn the_last_key_skips_removals_in_newer_layers() {
        let (_dir, _db, mut snapshot) = layered();
        put(&mut snapshot.layers.active, "e", None);
        // `e` removed, `d` removed, `c` removed: `a` is the last one standing.
        assert_eq!(snapshot.last_side_key(TABLE).unwrap(), Some(b"a".to_vec()));
    }

    #[test]
    fn the_log_runs_from_redb_through_the_frozen_to_the_active_layer() {
        let (_dir, _db, snapshot) = layered();
        let positions: Vec<LogPosition> = snapshot
            .log_from((2, 0))
            .unwrap()
            .map(|entry| entry.unwrap().0)
            .collect();
        assert_eq!(positions, vec![(2, 0), (3, 0), (4, 0), (4, 1)]);
        assert_eq!(snapshot.revision().unwrap(), 4);
        assert!(snapshot.log_bytes((1, 0)).unwrap().is_some());
        assert!(snapshot.log_bytes((3, 0)).unwrap().is_some());
        assert!(snapshot.log_bytes((5, 0)).unwrap().is_none());
    }
}
