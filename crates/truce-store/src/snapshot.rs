//! Read snapshots, published by the sequencer after each commit.
//!
//! A snapshot pairs a redb read transaction with the heads overlay of the same
//! revision (see [`crate::heads`]); neither alone is the state. The sequencer opens
//! one right after each commit and publishes it before any write of the batch is
//! answered, so a client that got a 2xx reads its own write. Readers take the
//! newest one without waiting for the writer and without opening a transaction of
//! their own.

use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, ReadOnlyTable, ReadTransaction, ReadableDatabase};
use truce_engine::StorageError;

use crate::error::storage;
use crate::heads::{Heads, Overlay};
use crate::tables::{HEADS, LOG, META, SIDE, Tables, side_key};

/// The tables of a read snapshot.
pub(crate) type ReadTables =
    Tables<ReadOnlyTable<&'static [u8], &'static [u8]>, ReadOnlyTable<(u64, u32), &'static [u8]>>;

/// The committed state at one revision.
pub(crate) struct Snapshot {
    /// Heads and log as of this revision.
    pub tables: ReadTables,
    /// The transaction the tables were opened in, for the other tables.
    txn: ReadTransaction,
}

impl Snapshot {
    /// Opens the committed state of `db` with the heads written since its last
    /// checkpoint.
    pub fn open(db: &Database, overlay: Overlay) -> Result<Self, StorageError> {
        let txn = db.begin_read().map_err(storage)?;
        Ok(Self {
            tables: Tables {
                heads: Heads {
                    overlay,
                    table: txn.open_table(HEADS).map_err(storage)?,
                },
                log: txn.open_table(LOG).map_err(storage)?,
            },
            txn,
        })
    }

    /// One side record.
    pub fn side(&self, table: u8, key: &[u8]) -> Result<Option<bytes::Bytes>, StorageError> {
        let side = match self.txn.open_table(SIDE) {
            Ok(side) => side,
            // A store that never wrote one has no table yet in old files.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(storage(error)),
        };
        let found = side.get(side_key(table, key).as_slice()).map_err(storage)?;
        Ok(found.map(|v| bytes::Bytes::copy_from_slice(v.value())))
    }

    /// Side records of `table` after `after`, in key order, at most `limit`.
    pub fn side_range(
        &self,
        table: u8,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, bytes::Bytes)>, StorageError> {
        use std::ops::Bound;
        let side = match self.txn.open_table(SIDE) {
            Ok(side) => side,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(storage(error)),
        };
        let start_key;
        let start = match after {
            Some(after) => {
                start_key = side_key(table, after);
                Bound::Excluded(start_key.as_slice())
            }
            None => Bound::Included(&[table][..]),
        };
        let end = [table.saturating_add(1)];
        let mut found = Vec::new();
        for entry in side
            .range::<&[u8]>((start, Bound::Excluded(&end[..])))
            .map_err(storage)?
        {
            if found.len() == limit {
                break;
            }
            let (key, value) = entry.map_err(storage)?;
            found.push((
                key.value()[1..].to_vec(),
                bytes::Bytes::copy_from_slice(value.value()),
            ));
        }
        Ok(found)
    }

    /// The last key of side table `table`, if it has any record.
    pub fn last_side_key(&self, table: u8) -> Result<Option<Vec<u8>>, StorageError> {
        let side = match self.txn.open_table(SIDE) {
            Ok(side) => side,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(storage(error)),
        };
        let (start, end) = ([table], [table.saturating_add(1)]);
        let last = side
            .range::<&[u8]>(&start[..]..&end[..])
            .map_err(storage)?
            .next_back()
            .transpose()
            .map_err(storage)?;
        Ok(last.map(|(key, _)| key.value()[1..].to_vec()))
    }

    /// A counter of the `meta` table (0 if never set).
    pub fn meta(&self, name: &str) -> Result<u64, StorageError> {
        let meta = self.txn.open_table(META).map_err(storage)?;
        Ok(meta.get(name).map_err(storage)?.map_or(0, |v| v.value()))
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
