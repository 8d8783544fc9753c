//! The embedded store as a compaction pass scans it: a published snapshot, read
//! off the write path. What to remove is the engine's decision
//! ([`truce_engine::plan_compaction`]); the sequencer applies it in one commit
//! (`WriteTables::compact`).

use bytes::Bytes;
use truce_engine::{
    CompactionSource, Position, ResourceKey, SideTable, StorageError, StoredHead, StoredVersion,
};

use crate::codec;
use crate::snapshot::Snapshot;

impl CompactionSource for Snapshot {
    fn versions_after(
        &self,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<StoredVersion>, StorageError> {
        let mut found = Vec::new();
        for entry in self.log_from(after.unwrap_or((0, 0)))? {
            if found.len() == limit {
                break;
            }
            let (position, bytes) = entry?;
            if Some(position) == after {
                continue;
            }
            let record = codec::decode_log(bytes.as_slice(), false)?;
            found.push(StoredVersion {
                position,
                key: record.key,
                number: record.number,
                at: record.at,
                stripped: record.stripped,
            });
        }
        Ok(found)
    }

    fn head_of(&self, key: &ResourceKey) -> Result<Option<StoredHead>, StorageError> {
        Ok(self.head_record(key)?.map(|head| StoredHead {
            position: head.position,
            number: head.number,
            tombstone: head.tombstone,
        }))
    }

    fn side_page(
        &self,
        table: SideTable,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        self.side_range(table.code(), after, limit)
    }

    fn last_side_key(&self, table: SideTable) -> Result<Option<Vec<u8>>, StorageError> {
        Snapshot::last_side_key(self, table.code())
    }

    fn changes_compacted_through(&self) -> Result<u64, StorageError> {
        Ok(self.changes_compacted())
    }
}
