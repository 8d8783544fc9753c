//! A batch's writes, gathered while its jobs are planned and sent as a few
//! multi-row statements: one for the versions, one for the heads, one for side
//! records stored and one for side records removed, however many jobs the batch
//! has. A statement per row cost the database (and the node) more than the rows
//! themselves did.
//!
//! Reads of the batch still see its own writes: heads and side records through
//! the view's caches, which the batch's writes go through, and any other read
//! sends what is pending first, so the database runs the writes before it.

use std::collections::HashMap;

use truce_engine::{Effect, ResourceKey, Version};

use crate::sql::big;

/// New heads (a speculative insertion costs more than a plain one).
const HEADS_INSERT: &str = "INSERT INTO truce_heads (collection, id, revision, idx, number, tombstone) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::bigint[], $6::bool[])";

/// Heads that may exist.
const HEADS_UPSERT: &str = "INSERT INTO truce_heads (collection, id, revision, idx, number, tombstone) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::bigint[], $6::bool[]) \
     ON CONFLICT (collection, id) DO UPDATE SET revision = excluded.revision, \
     idx = excluded.idx, number = excluded.number, tombstone = excluded.tombstone";

/// What a batch wrote that is not sent yet.
#[derive(Default)]
pub(crate) struct PendingWrites {
    versions: Vec<VersionRow>,
    /// Each resource's newest head; a later write of the batch replaces an
    /// earlier one (one row may be upserted only once per statement).
    heads: HashMap<(String, String), HeadRow>,
    /// Each side record's final value (`None`: removed), last write winning.
    side: HashMap<(i16, Vec<u8>), Option<Vec<u8>>>,
}

struct VersionRow {
    revision: i64,
    idx: i32,
    collection: String,
    id: String,
    version: Version,
}

struct HeadRow {
    /// Known to have no row yet (plainly inserted; an upsert otherwise). A
    /// wrong `true` fails the batch loudly (a duplicate key), never silently.
    new: bool,
    revision: i64,
    idx: i32,
    number: i64,
    tombstone: bool,
}

/// One statement ready to send: its SQL and its array parameters.
pub(crate) struct Flush {
    pub sql: &'static str,
    pub params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
}

impl PendingWrites {
    /// Adds everything `effect` stores at `revision`; `known` tells, where it
    /// can, whether a resource had a head before (`Some(false)`: it had none).
    pub(crate) fn add(
        &mut self,
        effect: &Effect,
        revision: u64,
        known: impl Fn(&ResourceKey) -> Option<bool>,
    ) {
        let revision = big(revision);
        for (index, write) in effect.writes.iter().enumerate() {
            let idx = i32::try_from(index).unwrap_or(i32::MAX);
            let (collection, id) = (write.key.collection.as_str(), write.key.id.as_str());
            let name = (collection.to_owned(), id.to_owned());
            let new = match self.heads.get(&name) {
                Some(earlier) => earlier.new,
                None => known(&write.key) == Some(false),
            };
            self.heads.insert(
                name,
                HeadRow {
                    new,
                    revision,
                    idx,
                    number: big(write.version.number),
                    tombstone: write.version.body.is_none(),
                },
            );
            self.versions.push(VersionRow {
                revision,
                idx,
                collection: collection.to_owned(),
                id: id.to_owned(),
                version: write.version.clone(),
            });
        }
        for side in &effect.side {
            self.side.insert(
                (i16::from(side.table.code()), side.key.clone()),
                side.value.as_deref().map(<[u8]>::to_vec),
            );
        }
    }

    /// Whether nothing is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.heads.is_empty() && self.side.is_empty()
    }

    /// The statements that store everything pending, emptying it.
    pub(crate) fn take(&mut self) -> Vec<Flush> {
        let mut statements = Vec::with_capacity(4);
        let versions = std::mem::take(&mut self.versions);
        if !versions.is_empty() {
            statements.push(Flush {
                sql: "INSERT INTO truce_versions \
                      (revision, idx, collection, id, number, at_ms, op, by_principal, body) \
                      SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], \
                      $5::bigint[], $6::bigint[], $7::smallint[], $8::text[], $9::bytea[])",
                params: vec![
                    Box::new(versions.iter().map(|v| v.revision).collect::<Vec<_>>()),
                    Box::new(versions.iter().map(|v| v.idx).collect::<Vec<_>>()),
                    Box::new(column(&versions, |v| v.collection.clone())),
                    Box::new(column(&versions, |v| v.id.clone())),
                    Box::new(column(&versions, |v| big(v.version.number))),
                    Box::new(column(&versions, |v| big(v.version.at.millis()))),
                    Box::new(column(&versions, |v| i16::from(v.version.op.code()))),
                    Box::new(column(&versions, |v| v.version.by.clone())),
                    Box::new(column(&versions, |v| {
                        v.version.body.as_ref().map(|b| b.to_vec())
                    })),
                ],
            });
        }
        let (created, moved): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heads)
            .into_iter()
            .partition(|(_, head)| head.new);
        for (heads, sql) in [(created, HEADS_INSERT), (moved, HEADS_UPSERT)] {
            if heads.is_empty() {
                continue;
            }
            statements.push(Flush {
                sql,
                params: vec![
                    Box::new(column(&heads, |((c, _), _)| c.clone())),
                    Box::new(column(&heads, |((_, i), _)| i.clone())),
                    Box::new(column(&heads, |(_, h)| h.revision)),
                    Box::new(column(&heads, |(_, h)| h.idx)),
                    Box::new(column(&heads, |(_, h)| h.number)),
                    Box::new(column(&heads, |(_, h)| h.tombstone)),
                ],
            });
        }
        let (stored, removed): (Vec<_>, Vec<_>) = std::mem::take(&mut self.side)
            .into_iter()
            .partition(|(_, value)| value.is_some());
        if !stored.is_empty() {
            statements.push(Flush {
                sql: "INSERT INTO truce_side (tbl, key, value) \
                      SELECT * FROM unnest($1::smallint[], $2::bytea[], $3::bytea[]) \
                      ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
                params: vec![
                    Box::new(column(&stored, |((t, _), _)| *t)),
                    Box::new(column(&stored, |((_, k), _)| k.clone())),
                    Box::new(column(&stored, |(_, v)| v.clone().unwrap_or_default())),
                ],
            });
        }
        // One statement per table, with `= ANY`: always an index probe per key
        // (a join with the keys, planned once on a small table, would scan).
        let mut removed_by_table: HashMap<i16, Vec<Vec<u8>>> = HashMap::new();
        for ((table, key), _) in removed {
            removed_by_table.entry(table).or_default().push(key);
        }
        for (table, keys) in removed_by_table {
            statements.push(Flush {
                sql: "DELETE FROM truce_side WHERE tbl = $1 AND key = ANY($2::bytea[])",
                params: vec![Box::new(table), Box::new(keys)],
            });
        }
        statements
    }
}

/// One column of rows, as an array parameter.
fn column<R, T>(rows: &[R], value: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}
