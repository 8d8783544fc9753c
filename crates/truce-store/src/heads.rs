//! The heads index as checkpoints and recovery write it: the `heads` table of a
//! redb write transaction under the heads gathered for it.
//!
//! Every write moves one head. Written into the `heads` B-tree at each commit, that
//! cost a copy-on-write of a page somewhere in the key space per write (fresh ids
//! land all over it), while the log beside it only ever appends. So heads live in
//! the in-memory [layers](crate::layer) between checkpoints, and a checkpoint
//! writes them into the table in key order, each leaf once however many of its
//! heads moved; the `heads_through` counter says which revision the table is
//! complete to. Recovery gathers the heads of the log records it replays the same
//! way before writing them.
//!
//! Nothing is lost in a crash: every head in a layer points at a log record that
//! is in the write-ahead log, and opening the store replays those records.

use std::sync::Arc;

use redb::Table;
use truce_engine::StorageError;

use crate::codec::{self, HeadRecord};
use crate::error::storage;

/// Heads written since the last checkpoint, by `heads` key.
pub(crate) type Overlay = imbl::OrdMap<Arc<[u8]>, HeadRecord>;

/// The heads of one write transaction: `overlay` over `table`.
pub(crate) struct Heads<T> {
    pub overlay: Overlay,
    pub table: T,
}

impl Heads<Table<'_, &'static [u8], &'static [u8]>> {
    /// Makes `head` the newest version under `key` (in the overlay).
    pub fn insert(&mut self, key: Vec<u8>, head: HeadRecord) {
        self.overlay.insert(Arc::from(key), head);
    }

    /// Writes the overlay into the table, in key order, and empties it: the table
    /// alone is then complete. Part of every checkpoint.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        let overlay = std::mem::take(&mut self.overlay);
        for (key, head) in overlay.iter() {
            self.table
                .insert(key.as_ref(), codec::encode_head(head).as_slice())
                .map_err(storage)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableTable};
    use truce_engine::{Op, Timestamp};

    use super::*;
    use crate::tables::HEADS;

    fn head(revision: u64) -> HeadRecord {
        HeadRecord {
            number: revision,
            position: (revision, 0),
            at: Timestamp::from_millis(revision),
            op: Op::Replace,
            tombstone: false,
        }
    }

    #[test]
    fn a_flush_writes_the_overlay_over_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut heads = Heads {
                overlay: Overlay::new(),
                table: txn.open_table(HEADS).unwrap(),
            };
            for (key, revision) in [("k", 1), ("old", 2)] {
                let value = codec::encode_head(&head(revision));
                heads
                    .table
                    .insert(key.as_bytes(), value.as_slice())
                    .unwrap();
            }
            heads.insert(b"k".to_vec(), head(3));
            heads.insert(b"new".to_vec(), head(4));
            heads.flush().unwrap();
            assert!(heads.overlay.is_empty());
            let read = |key: &str| {
                heads
                    .table
                    .get(key.as_bytes())
                    .unwrap()
                    .map(|v| codec::decode_head(v.value()).unwrap())
            };
            assert_eq!(read("k"), Some(head(3)));
            assert_eq!(read("old"), Some(head(2)));
            assert_eq!(read("new"), Some(head(4)));
        }
        txn.commit().unwrap();
    }
}
