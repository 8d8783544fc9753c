//! The heads index in two layers: the `heads` table as of the last checkpoint, and an
//! in-memory overlay of the heads written since.
//!
//! Every write moves one head. Written into the `heads` B-tree at each commit, that
//! cost a copy-on-write of a page somewhere in the key space per write (fresh ids
//! land all over it), while the log beside it only ever appends. So between
//! checkpoints new heads go to an overlay instead: a persistent ordered map (shared
//! structure, cheap to clone), which each commit publishes together with the redb
//! snapshot it completes, so a reader sees exactly one revision. A checkpoint
//! writes the overlay into the table in key order, in its durable commit, and
//! starts an empty one; the `heads_through` counter says which revision the table
//! is complete to. The overlay holds at most one checkpoint interval of writes, and
//! at most `checkpoint_heads` heads.
//!
//! Nothing is lost in a crash: every head in the overlay points at a log record that
//! is in the write-ahead log, and opening the store rebuilds the overlay from the log
//! records after `heads_through` (see `recover` in the sequencer).

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use redb::{ReadableTable, Table};
use truce_engine::StorageError;

use crate::codec::{self, HeadRecord};
use crate::error::storage;

/// Heads written since the last checkpoint, by `heads` key.
pub(crate) type Overlay = imbl::OrdMap<Arc<[u8]>, HeadRecord>;

/// What [`Heads::scan`] calls for each head: `false` stops the scan.
pub(crate) type Visit<'v> = dyn FnMut(&[u8], HeadRecord) -> Result<bool, StorageError> + 'v;

/// The heads of one snapshot: `overlay` over `table`.
pub(crate) struct Heads<T> {
    pub overlay: Overlay,
    pub table: T,
}

impl<T> Heads<T>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    /// The head stored under `key` (a `heads` key).
    pub fn get(&self, key: &[u8]) -> Result<Option<HeadRecord>, StorageError> {
        if let Some(head) = self.overlay.get(key) {
            return Ok(Some(*head));
        }
        self.table
            .get(key)
            .map_err(storage)?
            .map(|v| codec::decode_head(v.value()))
            .transpose()
    }

    /// Visits the heads with keys in `[start, end)` in key order, the overlay's
    /// winning over the table's, until `visit` returns `false`.
    pub fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut Visit<'_>,
    ) -> Result<(), StorageError> {
        if start >= end {
            // A reversed range holds nothing.
            return Ok(());
        }
        let mut overlay = self
            .overlay
            .range::<_, [u8]>((Bound::Included(start), Bound::Excluded(end)))
            .peekable();
        let mut table = self.table.range(start..end).map_err(storage)?.peekable();
        loop {
            let from_overlay = match (overlay.peek(), table.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => true,
                (None, Some(_)) | (Some(_), Some(Err(_))) => false,
                (Some((newer, _)), Some(Ok((older, _)))) => {
                    match newer.as_ref().cmp(older.value()) {
                        Ordering::Less => true,
                        Ordering::Greater => false,
                        Ordering::Equal => {
                            // The table's entry is an older head of the same resource.
                            table.next();
                            true
                        }
                    }
                }
            };
            let more = if from_overlay {
                match overlay.next() {
                    Some((key, head)) => visit(key, *head)?,
                    None => false,
                }
            } else {
                match table.next() {
                    Some(entry) => {
                        let (key, value) = entry.map_err(storage)?;
                        visit(key.value(), codec::decode_head(value.value())?)?
                    }
                    None => false,
                }
            };
            if !more {
                return Ok(());
            }
        }
    }
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
    use redb::{Database, ReadableDatabase};
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

    /// A table holding `in_table` and an overlay holding `in_overlay`, each key's
    /// head at the given revision; returns what a scan of `[start, end)` visits.
    fn scan(
        in_table: &[(&str, u64)],
        in_overlay: &[(&str, u64)],
        start: &str,
        end: &str,
        stop_after: usize,
    ) -> Vec<(String, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(HEADS).unwrap();
            for (key, revision) in in_table {
                let value = codec::encode_head(&head(*revision));
                table.insert(key.as_bytes(), value.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        let mut overlay = Overlay::new();
        for (key, revision) in in_overlay {
            overlay.insert(Arc::from(key.as_bytes()), head(*revision));
        }
        let read = db.begin_read().unwrap();
        let heads = Heads {
            overlay,
            table: read.open_table(HEADS).unwrap(),
        };
        let mut seen = Vec::new();
        heads
            .scan(start.as_bytes(), end.as_bytes(), &mut |key, head| {
                seen.push((String::from_utf8(key.to_vec()).unwrap(), head.number));
                Ok(seen.len() < stop_after)
            })
            .unwrap();
        seen
    }

    fn owned(expected: &[(&str, u64)]) -> Vec<(String, u64)> {
        expected.iter().map(|(k, r)| (k.to_string(), *r)).collect()
    }

    #[test]
    fn scan_merges_in_key_order_and_the_overlay_wins() {
        let table = [("a", 1), ("c", 2), ("e", 3)];
        let overlay = [("b", 4), ("c", 5), ("f", 6)];
        assert_eq!(
            scan(&table, &overlay, "a", "z", usize::MAX),
            owned(&[("a", 1), ("b", 4), ("c", 5), ("e", 3), ("f", 6)])
        );
    }

    #[test]
    fn scan_keeps_to_its_range_and_stops_when_told() {
        let table = [("a", 1), ("c", 2), ("e", 3)];
        let overlay = [("b", 4), ("d", 5), ("f", 6)];
        assert_eq!(
            scan(&table, &overlay, "b", "e", usize::MAX),
            owned(&[("b", 4), ("c", 2), ("d", 5)])
        );
        assert_eq!(
            scan(&table, &overlay, "a", "z", 2),
            owned(&[("a", 1), ("b", 4)])
        );
        assert_eq!(scan(&table, &[], "a", "z", usize::MAX), owned(&table));
        assert_eq!(scan(&table, &overlay, "e", "b", usize::MAX), owned(&[]));
        assert_eq!(scan(&[], &overlay, "a", "z", usize::MAX), owned(&overlay));
    }

    #[test]
    fn get_prefers_the_overlay() {
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
            assert_eq!(heads.get(b"k").unwrap(), Some(head(3)));
            assert_eq!(heads.get(b"old").unwrap(), Some(head(2)));
            assert_eq!(heads.get(b"none").unwrap(), None);
            // After a flush the table alone answers the same.
            heads.flush().unwrap();
            assert!(heads.overlay.is_empty());
            assert_eq!(heads.get(b"k").unwrap(), Some(head(3)));
        }
        txn.commit().unwrap();
    }
}
