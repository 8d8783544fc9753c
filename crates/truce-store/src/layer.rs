//! The in-memory layers over the last checkpoint: what the write path writes
//! instead of redb.
//!
//! A batch is made durable by its frame in the write-ahead log; what it wrote
//! (log records, heads, side records) goes into the *active* [`Layer`], a set of
//! persistent ordered maps (`imbl`: cloning one is a reference count, and each
//! insert copies only the path it changes), published with the redb snapshot of
//! the last checkpoint it sits on. So the sequencer never writes redb on its way
//! to an answer.
//!
//! A checkpoint *freezes* the active layer: it becomes the frozen layer, a new
//! empty one takes its place, and the checkpointer thread writes the frozen one
//! into redb in one durable commit while batches go on into the new active layer.
//! Once that commit is done, the sequencer swaps in a snapshot of it and drops
//! the frozen layer. A read looks in the active layer, then the frozen one, then
//! redb; the newest answer wins.
//!
//! Log positions only grow, so the log parts of the three never overlap: redb
//! holds the oldest revisions, the frozen layer the next, the active layer the
//! newest. Heads and side records are keyed by resource and record, so a newer
//! layer's entry hides an older one; a side record's removal is kept as `None`
//! until a checkpoint removes it from redb.

use std::cmp::Ordering;
use std::iter::Peekable;
use std::sync::Arc;

use bytes::Bytes;
use truce_engine::StorageError;

use crate::codec::{HeadRecord, LogPosition};

/// What batches wrote since a checkpoint.
#[derive(Clone, Default)]
pub(crate) struct Layer {
    /// New log records (encoded as in the `log` table), by position.
    pub log: imbl::OrdMap<LogPosition, Bytes>,
    /// The newest head of each resource written, by `heads` key.
    pub heads: imbl::OrdMap<Arc<[u8]>, HeadRecord>,
    /// Side records written (`Some`) or removed (`None`), by `side` key (table
    /// code, then the record's key).
    pub side: imbl::OrdMap<Arc<[u8]>, Option<Bytes>>,
}

impl Layer {
    /// Whether nothing was written into it.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty() && self.heads.is_empty() && self.side.is_empty()
    }
}

/// The layers over one checkpoint: the active one, and the frozen one a
/// checkpoint is writing, if any.
#[derive(Clone, Default)]
pub(crate) struct Layers {
    pub active: Layer,
    pub frozen: Option<Layer>,
}

impl Layers {
    /// The layers newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.active).chain(self.frozen.as_ref())
    }

    /// The layers oldest first (the order of their log records).
    pub fn oldest_first(&self) -> impl Iterator<Item = &Layer> {
        self.frozen.iter().chain(std::iter::once(&self.active))
    }

    /// The newest entry for `key` among the layers' heads.
    pub fn head(&self, key: &[u8]) -> Option<HeadRecord> {
        self.newest_first()
            .find_map(|layer| layer.heads.get(key).copied())
    }

    /// The newest entry for `key` among the layers' side records: `Some(None)`
    /// when a layer removed it.
    pub fn side(&self, key: &[u8]) -> Option<Option<Bytes>> {
        self.newest_first()
            .find_map(|layer| layer.side.get(key).cloned())
    }

    /// The log record at `position`, if a layer holds it.
    pub fn log(&self, position: LogPosition) -> Option<Bytes> {
        self.newest_first()
            .find_map(|layer| layer.log.get(&position).cloned())
    }

    /// The newest position in the layers' log records.
    pub fn last_log_position(&self) -> Option<LogPosition> {
        self.newest_first()
            .find_map(|layer| layer.log.get_max().map(|(position, _)| *position))
    }
}

/// One entry of a merged scan: a key and what the newest source holds for it.
pub(crate) type Entry<V> = Result<(Vec<u8>, V), StorageError>;

/// Two key-ordered sources merged into one: on equal keys the newer source's
/// entry wins and the older one's is skipped. Both must be ordered the same way
/// (`descending` for reverse scans).
pub(crate) struct NewestFirst<A: Iterator, B: Iterator> {
    newer: Peekable<A>,
    older: Peekable<B>,
    descending: bool,
}

impl<A: Iterator, B: Iterator> NewestFirst<A, B> {
    pub fn new(newer: A, older: B, descending: bool) -> Self {
        Self {
            newer: newer.peekable(),
            older: older.peekable(),
            descending,
        }
    }
}

impl<V, A, B> Iterator for NewestFirst<A, B>
where
    A: Iterator<Item = Entry<V>>,
    B: Iterator<Item = Entry<V>>,
{
    type Item = Entry<V>;

    fn next(&mut self) -> Option<Entry<V>> {
        let take_newer = match (self.newer.peek(), self.older.peek()) {
            (None, None) => return None,
            (Some(_), None) | (Some(Err(_)), _) => true,
            (None, Some(_)) | (_, Some(Err(_))) => false,
            (Some(Ok((newer, _))), Some(Ok((older, _)))) => {
                let order = if self.descending {
                    older.cmp(newer)
                } else {
                    newer.cmp(older)
                };
                match order {
                    Ordering::Less => true,
                    Ordering::Greater => false,
                    Ordering::Equal => {
                        // The older source's entry is an earlier state of the same key.
                        self.older.next();
                        true
                    }
                }
            }
        };
        if take_newer {
            self.newer.next()
        } else {
            self.older.next()
        }
    }
}

/// The entries of a layer map in `[start, end)` (`end` `None`: to the end), in
/// key order or reversed, as owned entries for [`NewestFirst`].
pub(crate) fn map_range<'a, V: Clone + 'a>(
    map: &'a imbl::OrdMap<Arc<[u8]>, V>,
    start: &[u8],
    end: Option<&[u8]>,
    descending: bool,
) -> Box<dyn Iterator<Item = Entry<V>> + 'a> {
    use std::ops::Bound;
    let end = match end {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    let range = map.range::<_, [u8]>((Bound::Included(start), end));
    let owned = |(key, value): (&Arc<[u8]>, &V)| Ok((key.to_vec(), value.clone()));
    if descending {
        Box::new(range.rev().map(owned))
    } else {
        Box::new(range.map(owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(entries: &[(&str, u32)]) -> impl Iterator<Item = Entry<u32>> + use<> {
        entries
            .iter()
            .map(|(k, v)| Ok((k.as_bytes().to_vec(), *v)))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn merged(
        newer: &[(&str, u32)],
        older: &[(&str, u32)],
        descending: bool,
    ) -> Vec<(String, u32)> {
        NewestFirst::new(source(newer), source(older), descending)
            .map(|e| {
                let (k, v) = e.unwrap();
                (String::from_utf8(k).unwrap(), v)
            })
            .collect()
    }

    #[test]
    fn the_newer_source_wins_and_order_is_kept() {
        let newer = [("b", 10), ("c", 11), ("f", 12)];
        let older = [("a", 1), ("c", 2), ("e", 3)];
        let expected: Vec<(String, u32)> = [("a", 1), ("b", 10), ("c", 11), ("e", 3), ("f", 12)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        assert_eq!(merged(&newer, &older, false), expected);
        let mut reversed: Vec<_> = expected.clone();
        reversed.reverse();
        let newer_desc: Vec<_> = newer.iter().rev().copied().collect();
        let older_desc: Vec<_> = older.iter().rev().copied().collect();
        assert_eq!(merged(&newer_desc, &older_desc, true), reversed);
    }

    #[test]
    fn layers_answer_newest_first() {
        let mut frozen = Layer::default();
        frozen
            .side
            .insert(Arc::from(&b"k"[..]), Some(Bytes::from_static(b"old")));
        frozen
            .side
            .insert(Arc::from(&b"gone"[..]), Some(Bytes::from_static(b"x")));
        frozen.log.insert((1, 0), Bytes::from_static(b"one"));
        let mut active = Layer::default();
        active
            .side
            .insert(Arc::from(&b"k"[..]), Some(Bytes::from_static(b"new")));
        active.side.insert(Arc::from(&b"gone"[..]), None);
        active.log.insert((2, 0), Bytes::from_static(b"two"));
        let layers = Layers {
            active,
            frozen: Some(frozen),
        };
        assert_eq!(layers.side(b"k"), Some(Some(Bytes::from_static(b"new"))));
        assert_eq!(layers.side(b"gone"), Some(None));
        assert_eq!(layers.side(b"none"), None);
        assert_eq!(layers.log((1, 0)), Some(Bytes::from_static(b"one")));
        assert_eq!(layers.last_log_position(), Some((2, 0)));
    }
}
