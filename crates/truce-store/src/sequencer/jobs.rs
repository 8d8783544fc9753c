//! A batch as the engine's [`Batch`](truce_engine::Batch) sees it: reads go to the
//! state after the previous batch (the last checkpoint under its layers) plus the
//! batch's own earlier jobs, and each effect the batch decides is written into the
//! active layer and the batch's log frame. Nothing is durable until the frame is.

use std::sync::Arc;

use bytes::Bytes;
use truce_engine::{BatchTables, Effect, SideTable, StateView, StorageError};

use crate::codec::{self, HeadRecord};
use crate::snapshot::Snapshot;
use crate::tables::side_key;
use crate::wal::FrameBuilder;

/// The state a batch plans against and writes into, with its log frame.
pub(super) struct Planning<'a> {
    pub state: &'a mut Snapshot,
    pub frame: &'a mut FrameBuilder,
}

impl BatchTables for Planning<'_> {
    fn view(&self) -> &dyn StateView {
        &*self.state
    }

    fn side(&self, table: SideTable, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        self.state.side(table.code(), key)
    }

    fn last_side_key(&self, table: SideTable) -> Result<Option<Vec<u8>>, StorageError> {
        self.state.last_side_key(table.code())
    }

    fn side_records(
        &self,
        table: SideTable,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        self.state.side_prefix(table.code(), prefix, limit)
    }

    fn changed_since(
        &self,
        collection: &truce_engine::CollectionName,
        prefix: &str,
        since: u64,
    ) -> Result<bool, StorageError> {
        self.state.changed_since(collection, prefix, since)
    }

    /// Each new version is appended to the log at `revision` (pointing back at the
    /// resource's previous version) and becomes its head; side records are written
    /// or removed. All of it goes into the active layer and the frame.
    fn store(&mut self, effect: &Effect, revision: u64) -> Result<(), StorageError> {
        for (index, write) in effect.writes.iter().enumerate() {
            let position = (revision, u32::try_from(index).unwrap_or(u32::MAX));
            // Numbers continue across deletes, so only a resource's very first version
            // has no previous one; that saves creates a second lookup.
            let prev = if write.version.number <= 1 {
                None
            } else {
                self.state.head_record(&write.key)?.map(|h| h.position)
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
            self.frame.push(position, &encoded);
            let head = HeadRecord::of(position, &record);
            let active = &mut self.state.layers.active;
            active.log.insert(position, Bytes::from(encoded));
            active
                .heads
                .insert(Arc::from(codec::head_key(&write.key)), head);
        }
        for side in &effect.side {
            let code = side.table.code();
            let value = side.value.as_deref();
            self.frame.push_side(code, &side.key, value);
            self.state.layers.active.side.insert(
                Arc::from(side_key(code, &side.key)),
                value.map(Bytes::copy_from_slice),
            );
        }
        Ok(())
    }
}
