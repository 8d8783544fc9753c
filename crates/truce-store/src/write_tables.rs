//! The tables of the sequencer's write transaction, and what a batch does to them.
//!
//! [`WriteTables`] opens `heads` (under the overlay of heads since the last
//! checkpoint), `log` and `meta` in one redb write transaction. The sequencer applies
//! each command's effect through it (a log record at the command's revision, the
//! new head in the overlay, the record in the batch's log frame), runs compactions
//! through it, and a checkpoint flushes the overlay into `heads` with it. Recovery
//! uses the same type, so a version is written one way whoever writes it.

use bytes::Bytes;
use redb::{ReadableTable, Table, WriteTransaction};
use truce_engine::{
    CompactionPlan, CompactionReport, EVENTS_WATERMARK_KEY, Effect, SideTable, StorageError,
    decode_watermark, encode_watermark,
};

use crate::codec::{self, HeadRecord};
use crate::error::storage;
use crate::heads::{Heads, Overlay};
use crate::recovery::restore_head;
use crate::tables::{
    HEADS, LOG, META, META_CHANGES_COMPACTED, META_HEADS_THROUGH, META_WAL_EPOCH, SIDE, Tables,
    last_revision, side_key,
};
use crate::wal::FrameBuilder;

/// The writable heads table.
type HeadsTable<'t> = Table<'t, &'static [u8], &'static [u8]>;
/// The writable log table.
type LogTable<'t> = Table<'t, (u64, u32), &'static [u8]>;

/// The opened tables of the batch's write transaction.
pub(crate) struct WriteTables<'t> {
    pub view: Tables<HeadsTable<'t>, LogTable<'t>>,
    meta: Table<'t, &'static str, u64>,
    side: Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> WriteTables<'t> {
    /// Opens the tables of `txn` under `overlay`, the heads since the last checkpoint.
    pub(crate) fn open(txn: &'t WriteTransaction, overlay: Overlay) -> Result<Self, StorageError> {
        Ok(Self {
            view: Tables {
                heads: Heads {
                    overlay,
                    table: txn.open_table(HEADS).map_err(storage)?,
                },
                log: txn.open_table(LOG).map_err(storage)?,
            },
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

    /// The heads written since the last checkpoint, once the tables are done with.
    pub(crate) fn into_overlay(self) -> Overlay {
        self.view.heads.overlay
    }

    /// Makes the heads table complete through `revision`: the overlay goes into it.
    pub(crate) fn flush_heads(&mut self, revision: u64) -> Result<(), StorageError> {
        self.view.heads.flush()?;
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
        for entry in self.view.log.range((through + 1, 0)..).map_err(storage)? {
            let (position, record) = entry.map_err(storage)?;
            restore_head(&mut self.view.heads, position.value(), record.value())?;
            restored += 1;
        }
        Ok(restored)
    }

    pub(crate) fn revision(&self) -> Result<u64, StorageError> {
        last_revision(&self.view.log)
    }

    /// Writes one command's effect at `revision`: each new version is appended to the
    /// log (pointing back at the resource's previous version) and becomes its head.
    /// The encoded versions are also added to the batch's log frame.
    pub(crate) fn apply(
        &mut self,
        effect: &Effect,
        revision: u64,
        frame: &mut FrameBuilder,
    ) -> Result<(), StorageError> {
        for (index, write) in effect.writes.iter().enumerate() {
            let position = (revision, u32::try_from(index).unwrap_or(u32::MAX));
            // Numbers continue across deletes, so only a resource's very first version
            // has no previous one; that saves creates a second index lookup.
            let prev = if write.version.number <= 1 {
                None
            } else {
                self.view.head_record(&write.key)?.map(|h| h.position)
            };
            let record = codec::LogRecord {
                key: write.key.clone(),
                number: write.version.number,
                at: write.version.at,
                op: write.version.op,
                by: write.version.by.clone(),
                prev,
                body: write.version.body.clone(),
                stripped: false,
            };
            let encoded = codec::encode_log(&record);
            self.view
                .log
                .insert(position, encoded.as_slice())
                .map_err(storage)?;
            self.view.heads.insert(
                codec::head_key(&write.key),
                HeadRecord::of(position, &record),
            );
            frame.push(position, &encoded);
        }
        for side in &effect.side {
            let code = side.table.code();
            let value = side.value.as_deref();
            self.put_side(code, &side.key, value)?;
            frame.push_side(code, &side.key, value);
        }
        Ok(())
    }

    /// The last key (without its table code) of side table `table`.
    pub(crate) fn last_side_key(&self, table: u8) -> Result<Option<Vec<u8>>, StorageError> {
        let (start, end) = ([table], [table + 1]);
        let last = self
            .side
            .range::<&[u8]>(&start[..]..&end[..])
            .map_err(storage)?
            .next_back()
            .transpose()
            .map_err(storage)?;
        Ok(last.map(|(key, _)| key.value()[1..].to_vec()))
    }

    /// The first `limit` records of side table `table` whose keys start with
    /// `prefix`, keys without the table code.
    pub(crate) fn side_records(
        &self,
        table: u8,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        let mut start = vec![table];
        start.extend_from_slice(prefix);
        let end =
            truce_engine::prefix_end(&start).unwrap_or_else(|| vec![u8::MAX; start.len() + 1]);
        let mut found = Vec::new();
        for entry in self
            .side
            .range::<&[u8]>(&start[..]..&end[..])
            .map_err(storage)?
            .take(limit)
        {
            let (key, value) = entry.map_err(storage)?;
            found.push((
                key.value()[1..].to_vec(),
                Bytes::copy_from_slice(value.value()),
            ));
        }
        Ok(found)
    }

    /// Whether a version of a resource of `collection` whose id starts with
    /// `prefix` was committed after `since` (true when compaction removed the
    /// log past `since`: the answer is then unknown).
    pub(crate) fn changed_since(
        &self,
        collection: &truce_engine::CollectionName,
        prefix: &str,
        since: u64,
    ) -> Result<bool, StorageError> {
        let compacted = self
            .meta
            .get(META_CHANGES_COMPACTED)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        if since < compacted {
            return Ok(true);
        }
        for entry in self
            .view
            .log
            .range((since.saturating_add(1), 0)..)
            .map_err(storage)?
        {
            let (_, value) = entry.map_err(storage)?;
            let record = codec::decode_log(value.value(), false)?;
            if record.key.collection == *collection && record.key.id.as_str().starts_with(prefix) {
                return Ok(true);
            }
        }
        Ok(false)
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
            let Some(mut record) = self.view.log_record(position, false)? else {
                continue;
            };
            if record.stripped {
                continue;
            }
            record.stripped = true;
            record.body = None;
            let bytes = codec::encode_log(&record);
            self.view
                .log
                .insert(position, bytes.as_slice())
                .map_err(storage)?;
            report.versions_removed += 1;
        }
        for &position in &plan.delete {
            if let Some(old) = self.view.log.remove(position).map_err(storage)? {
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
