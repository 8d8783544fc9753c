//! The tables of a redb write transaction, and what a checkpoint, a compaction
//! and recovery do to them.
//!
//! [`WriteTables`] opens `heads` (under the heads gathered for it), `log`, `meta`
//! and `side` in one redb write transaction. A checkpoint writes a frozen
//! [layer](crate::layer) into them (`write_layer`), a compaction removes what its
//! plan selected, and recovery replays the write-ahead log's frames through them.
//! Batches never use it: they write into the active layer.

use std::ops::Bound;

use redb::{CursorError, ReadableTable, Table, WriteTransaction};
use truce_engine::{
    CompactionPlan, CompactionReport, EVENTS_WATERMARK_KEY, SideTable, StorageError,
    decode_watermark, encode_watermark,
};

use crate::codec::{self, LogPosition, LogRecord};
use crate::error::storage;
use crate::heads::{Heads, Overlay};
use crate::layer::Layer;
use crate::recovery::restore_head;
use crate::tables::{
    HEADS, LOG, META, META_CHANGES_COMPACTED, META_HEADS_THROUGH, META_WAL_EPOCH, SIDE,
    last_revision, side_key,
};

/// The writable heads table.
type HeadsTable<'t> = Table<'t, &'static [u8], &'static [u8]>;
/// The writable log table.
type LogTable<'t> = Table<'t, (u64, u32), &'static [u8]>;

/// The opened tables of the batch's write transaction.
pub(crate) struct WriteTables<'t> {
    pub heads: Heads<HeadsTable<'t>>,
    pub log: LogTable<'t>,
    meta: Table<'t, &'static str, u64>,
    side: Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> WriteTables<'t> {
    /// Opens the tables of `txn` (creating them in a new file).
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            heads: Heads {
                overlay: Overlay::new(),
                table: txn.open_table(HEADS).map_err(storage)?,
            },
            log: txn.open_table(LOG).map_err(storage)?,
            meta: txn.open_table(META).map_err(storage)?,
            side: txn.open_table(SIDE).map_err(storage)?,
        })
    }

    /// One side record as this transaction sees it (earlier jobs of the batch
    /// included).
    pub(crate) fn get_side(&self, table: u8, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .side
            .get(side_key(table, key).as_slice())
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }

    /// Writes (`Some`) or removes (`None`) one side record.
    pub(crate) fn put_side(
        &mut self,
        table: u8,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let full = side_key(table, key);
        match value {
            Some(value) => {
                self.side.insert(full.as_slice(), value).map_err(storage)?;
            }
            None => {
                self.side.remove(full.as_slice()).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Makes the heads table complete through `revision`: the overlay goes into it.
    pub(crate) fn flush_heads(&mut self, revision: u64) -> Result<(), StorageError> {
        self.heads.flush()?;
        self.meta
            .insert(META_HEADS_THROUGH, revision)
            .map_err(storage)?;
        Ok(())
    }

    /// The log epoch of the last checkpoint (0 when never recorded).
    pub(crate) fn wal_epoch(&self) -> Result<u64, StorageError> {
        Ok(self
            .meta
            .get(META_WAL_EPOCH)
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }

    /// Records that this commit is a checkpoint of log epoch `epoch`: frames of
    /// earlier epochs are redundant once it is durable.
    pub(crate) fn set_wal_epoch(&mut self, epoch: u64) -> Result<(), StorageError> {
        self.meta.insert(META_WAL_EPOCH, epoch).map_err(storage)?;
        Ok(())
    }

    /// Puts the heads of the log records after the heads table's last checkpoint (up
    /// to `revision`, the log's end) into the overlay; returns how many there were.
    pub(crate) fn restore_heads(&mut self, revision: u64) -> Result<usize, StorageError> {
        let through = self.meta.get(META_HEADS_THROUGH).map_err(storage)?;
        let Some(through) = through.map(|t| t.value()) else {
            // A store from before the overlay: its heads table is always complete.
            return Ok(0);
        };
        if through >= revision {
            return Ok(0);
        }
        let mut restored = 0;
        for entry in self.log.range((through + 1, 0)..).map_err(storage)? {
            let (position, record) = entry.map_err(storage)?;
            restore_head(&mut self.heads, position.value(), record.value())?;
            restored += 1;
        }
        Ok(restored)
    }

    pub(crate) fn revision(&self) -> Result<u64, StorageError> {
        last_revision(&self.log)
    }

    /// The log record at `position`.
    pub(crate) fn log_record(
        &self,
        position: LogPosition,
        with_body: bool,
    ) -> Result<Option<LogRecord>, StorageError> {
        let found = self.log.get(position).map_err(storage)?;
        found
            .map(|v| codec::decode_log(v.value(), with_body))
            .transpose()
    }

    /// Writes what batches wrote into `layer` (log records, side records and
    /// their removals, heads) and makes the heads table complete through
    /// `revision`, the layer's last. The checkpoint's work.
    pub(crate) fn write_layer(&mut self, layer: &Layer, revision: u64) -> Result<(), StorageError> {
        self.append_log(layer)?;
        for (key, value) in layer.side.iter() {
            match value {
                Some(value) => {
                    self.side
                        .insert(key.as_ref(), value.as_ref())
                        .map_err(storage)?;
                }
                None => {
                    self.side.remove(key.as_ref()).map_err(storage)?;
                }
            }
        }
        self.heads.overlay = layer.heads.clone();
        self.flush_heads(revision)
    }

    /// Writes the layer's log records. They come in position order and, written by
    /// checkpoints in turn, after every record in the table: so they are appended
    /// through one cursor at the table's end, whose buffered run fills each leaf
    /// once instead of copying the last leaf per record. A record that does not
    /// sort after the table's last (never expected) is written by a plain insert.
    fn append_log(&mut self, layer: &Layer) -> Result<(), StorageError> {
        let mut records = layer.log.iter().peekable();
        let mut cursor = self
            .log
            .upper_bound_mut(Bound::<LogPosition>::Unbounded)
            .map_err(storage)?;
        while let Some((position, record)) = records.peek() {
            match cursor.insert_before(**position, record.as_ref()) {
                Ok(()) => {
                    records.next();
                }
                Err(CursorError::UnorderedKey) => break,
                Err(error) => return Err(storage(redb::Error::from(error))),
            }
        }
        cursor.close().map_err(storage)?;
        for (position, record) in records {
            self.log
                .insert(*position, record.as_ref())
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Applies what a compaction scan selected: strips the bodies of versions
    /// retention no longer keeps, deletes log records neither the feed nor history
    /// needs, and moves the change feed's watermark. A scan from an older snapshot is
    /// safe: heads only move forward, so what was removable stays removable.
    pub(crate) fn compact(
        &mut self,
        plan: &CompactionPlan,
    ) -> Result<CompactionReport, StorageError> {
        let mut report = CompactionReport::default();
        for &position in &plan.strip {
            let Some(mut record) = self.log_record(position, false)? else {
                continue;
            };
            if record.stripped {
                continue;
            }
            record.stripped = true;
            record.body = None;
            let bytes = codec::encode_log(&record);
            self.log
                .insert(position, bytes.as_slice())
                .map_err(storage)?;
            report.versions_removed += 1;
        }
        for &position in &plan.delete {
            if let Some(old) = self.log.remove(position).map_err(storage)? {
                let record = codec::decode_log(old.value(), false)?;
                if !record.stripped {
                    report.versions_removed += 1;
                }
            }
        }
        let mut compacted_through = self
            .meta
            .get(META_CHANGES_COMPACTED)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        if let Some(through) = plan.changes_through.filter(|t| *t > compacted_through) {
            report.changes_removed = plan.changes_hidden;
            compacted_through = through;
            self.meta
                .insert(META_CHANGES_COMPACTED, compacted_through)
                .map_err(storage)?;
        }
        report.oldest_revision = compacted_through;
        for key in &plan.conflicts {
            let code = SideTable::Conflicts.code();
            if self.get_side(code, key)?.is_some() {
                self.put_side(code, key, None)?;
                report.conflicts_removed += 1;
            }
        }
        for key in &plan.deliveries {
            self.put_side(SideTable::Deliveries.code(), key, None)?;
        }
        for (table, key) in &plan.expired {
            if *table == SideTable::Idempotency && self.get_side(table.code(), key)?.is_some() {
                report.idempotency_removed += 1;
            }
            self.put_side(table.code(), key, None)?;
        }
        if let Some(through) = plan.events_through {
            report.conflict_events_removed = self.remove_events_through(through)?;
        }
        Ok(report)
    }

    /// Removes the conflict events at positions up to `through` and moves the
    /// event log's watermark there; returns how many went.
    fn remove_events_through(&mut self, through: u64) -> Result<u64, StorageError> {
        let code = SideTable::ConflictEvents.code();
        let watermark = self.events_watermark()?;
        if through <= watermark {
            return Ok(0);
        }
        let mut removed = 0;
        for position in watermark + 1..=through {
            if self.get_side(code, &position.to_be_bytes())?.is_some() {
                self.put_side(code, &position.to_be_bytes(), None)?;
                removed += 1;
            }
        }
        let mark = encode_watermark(through);
        self.put_side(code, &EVENTS_WATERMARK_KEY, Some(&mark))?;
        Ok(removed)
    }

    /// The highest conflict event position compaction removed (0: none).
    pub(crate) fn events_watermark(&self) -> Result<u64, StorageError> {
        let stored = self.get_side(SideTable::ConflictEvents.code(), &EVENTS_WATERMARK_KEY)?;
        Ok(stored.map_or(0, |v| decode_watermark(&v)))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use redb::{Database, ReadableDatabase, ReadableTable};

    use super::*;

    fn layer_of(positions: &[LogPosition]) -> Layer {
        let mut layer = Layer::default();
        for &position in positions {
            let record = format!("{position:?}");
            layer.log.insert(position, Bytes::from(record));
        }
        layer
    }

    /// The log table's records, in order, as `(position, record)`.
    fn log_of(db: &Database) -> Vec<(LogPosition, String)> {
        let txn = db.begin_read().unwrap();
        let log = txn.open_table(LOG).unwrap();
        log.iter()
            .unwrap()
            .map(|entry| {
                let (position, record) = entry.unwrap();
                let record = String::from_utf8(record.value().to_vec()).unwrap();
                (position.value(), record)
            })
            .collect()
    }

    fn checkpoint(db: &Database, layer: &Layer, revision: u64) {
        let txn = db.begin_write().unwrap();
        WriteTables::open(&txn)
            .unwrap()
            .write_layer(layer, revision)
            .unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn layers_append_their_log_records_in_order_and_out_of_order_ones_still_land() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        // Enough records to fill several leaves, appended by two checkpoints.
        let first: Vec<LogPosition> = (1..=600).map(|r| (r, 0)).collect();
        let second: Vec<LogPosition> = (601..=1200).flat_map(|r| [(r, 0), (r, 1)]).collect();
        checkpoint(&db, &layer_of(&first), 600);
        checkpoint(&db, &layer_of(&second), 1200);
        // Records that sort before the table's last one (never made by the
        // sequencer) are written all the same, in their place.
        let late = [(0, 5), (300, 1), (1300, 0)];
        checkpoint(&db, &layer_of(&late), 1300);

        let mut expected: Vec<LogPosition> = first;
        expected.extend(second);
        expected.extend(late);
        expected.sort_unstable();
        let stored = log_of(&db);
        assert_eq!(stored.iter().map(|(p, _)| *p).collect::<Vec<_>>(), expected);
        assert!(stored.iter().all(|(p, record)| *record == format!("{p:?}")));
    }
}
