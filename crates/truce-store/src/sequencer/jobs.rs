//! The batch's write transaction as the engine's [`Batch`](truce_engine::Batch)
//! sees it: reads go to the tables (earlier jobs of the batch included), and each
//! effect the batch decides is written into the tables and the batch's log frame.
//! Nothing is durable until the batch commits.

use bytes::Bytes;
use truce_engine::{BatchTables, Effect, SideTable, StateView, StorageError};

use crate::wal::FrameBuilder;
use crate::write_tables::WriteTables;

/// The tables of one batch with its log frame.
pub(super) struct FramedTables<'a, 't> {
    pub tables: &'a mut WriteTables<'t>,
    pub frame: &'a mut FrameBuilder,
}

impl BatchTables for FramedTables<'_, '_> {
    fn view(&self) -> &dyn StateView {
        &self.tables.view
    }

    fn side(&self, table: SideTable, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        Ok(self.tables.get_side(table.code(), key)?.map(Bytes::from))
    }

    fn last_side_key(&self, table: SideTable) -> Result<Option<Vec<u8>>, StorageError> {
        self.tables.last_side_key(table.code())
    }

    fn side_records(
        &self,
        table: SideTable,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        self.tables.side_records(table.code(), prefix, limit)
    }

    fn changed_since(
        &self,
        collection: &truce_engine::CollectionName,
        prefix: &str,
        since: u64,
    ) -> Result<bool, StorageError> {
        self.tables.changed_since(collection, prefix, since)
    }

    fn store(&mut self, effect: &Effect, revision: u64) -> Result<(), StorageError> {
        self.tables.apply(effect, revision, self.frame)
    }
}
