//! The redb tables of the embedded store and the keys of their counters.
//!
//! Reads go through a [`Snapshot`](crate::snapshot::Snapshot) (the last
//! checkpoint under the layers written since); only checkpoints, compactions and
//! recovery write these tables (see [`crate::write_tables`]).

use redb::{ReadableTable, TableDefinition};
use truce_engine::StorageError;

use crate::error::storage;

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
/// of this epoch and the next are the ones after the last checkpoint (see
/// `crate::wal`). Absent in stores from before epochs (0).
pub(crate) const META_WAL_EPOCH: &str = "wal_epoch";

/// The key of a side record in the `side` table: its table's code, then its key.
pub(crate) fn side_key(table: u8, key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(key.len() + 1);
    full.push(table);
    full.extend_from_slice(key);
    full
}

/// The revision of the last commit in `log`: the newest entry's. The newest entry
/// is always some resource's head, so compaction never removes it, and deriving
/// the revision from it saves a write per commit.
pub(crate) fn last_revision<L>(log: &L) -> Result<u64, StorageError>
where
    L: ReadableTable<(u64, u32), &'static [u8]>,
{
    Ok(log
        .last()
        .map_err(storage)?
        .map_or(0, |(key, _)| key.value().0))
}
