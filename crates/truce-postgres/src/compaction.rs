//! Compaction on PostgreSQL: the engine's planner
//! ([`truce_engine::plan_compaction`]) scans the database through [`SqlView`] on
//! a blocking thread, and the node's writer applies the plan in one transaction
//! under the commit-row lock, so it is ordered with every node's writes. Several
//! nodes may compact at once: removing what is already gone removes nothing.

use bytes::Bytes;
use truce_engine::{
    BatchTables, CompactionPlan, CompactionReport, CompactionSource, EVENTS_WATERMARK_KEY,
    Position, ResourceKey, SideTable, StorageError, StoredHead, StoredVersion, Timestamp,
    decode_watermark, encode_watermark,
};

use crate::error::storage;
use crate::sql::{SqlView, big, unsigned};

/// The `truce_meta` counter of the change feed's watermark.
pub(crate) const CHANGES_COMPACTED: &str = "changes_compacted_through";

impl CompactionSource for SqlView<'_> {
    fn versions_after(
        &self,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<StoredVersion>, StorageError> {
        let (revision, idx): (i64, i32) = after.map_or((-1, -1), |(r, i)| {
            (big(r), i32::try_from(i).unwrap_or(i32::MAX))
        });
        let rows = self.query(
            "SELECT revision, idx, collection, id, number, at_ms, stripped FROM truce_versions \
             WHERE (revision, idx) > ($1, $2) ORDER BY revision, idx LIMIT $3",
            &[&revision, &idx, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )?;
        rows.iter()
            .map(|row| {
                let collection: String = row.try_get(2).map_err(storage)?;
                let id: String = row.try_get(3).map_err(storage)?;
                let key = ResourceKey::parse(&collection, &id).map_err(|e| {
                    StorageError::Corrupt(format!("stored key {collection}/{id}: {e}"))
                })?;
                let idx: i32 = row.try_get(1).map_err(storage)?;
                Ok(StoredVersion {
                    position: (
                        unsigned(row.try_get(0).map_err(storage)?),
                        u32::try_from(idx).unwrap_or(0),
                    ),
                    key,
                    number: unsigned(row.try_get(4).map_err(storage)?),
                    at: Timestamp::from_millis(unsigned(row.try_get(5).map_err(storage)?)),
                    stripped: row.try_get(6).map_err(storage)?,
                })
            })
            .collect()
    }

    fn head_of(&self, key: &ResourceKey) -> Result<Option<StoredHead>, StorageError> {
        let rows = self.query(
            "SELECT revision, idx, number, tombstone FROM truce_heads \
             WHERE collection = $1 AND id = $2",
            &[&key.collection.as_str(), &key.id.as_str()],
        )?;
        rows.first()
            .map(|row| {
                let idx: i32 = row.try_get(1).map_err(storage)?;
                Ok(StoredHead {
                    position: (
                        unsigned(row.try_get(0).map_err(storage)?),
                        u32::try_from(idx).unwrap_or(0),
                    ),
                    number: unsigned(row.try_get(2).map_err(storage)?),
                    tombstone: row.try_get(3).map_err(storage)?,
                })
            })
            .transpose()
    }

    fn side_page(
        &self,
        table: SideTable,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        let rows = self.query(
            "SELECT key, value FROM truce_side WHERE tbl = $1 \
             AND ($2::bytea IS NULL OR key > $2) ORDER BY key LIMIT $3",
            &[
                &i16::from(table.code()),
                &after,
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )?;
        rows.iter()
            .map(|row| {
                let key: Vec<u8> = row.try_get(0).map_err(storage)?;
                let value: Vec<u8> = row.try_get(1).map_err(storage)?;
                Ok((key, Bytes::from(value)))
            })
            .collect()
    }

    fn last_side_key(&self, table: SideTable) -> Result<Option<Vec<u8>>, StorageError> {
        BatchTables::last_side_key(self, table)
    }

    fn changes_compacted_through(&self) -> Result<u64, StorageError> {
        let rows = self.query(
            "SELECT value FROM truce_meta WHERE name = $1",
            &[&CHANGES_COMPACTED],
        )?;
        Ok(rows
            .first()
            .map(|row| row.try_get::<_, i64>(0))
            .transpose()
            .map_err(storage)?
            .map_or(0, unsigned))
    }
}

/// Applies `plan` inside the writer's transaction; returns what it removed.
pub(crate) fn apply(
    view: &SqlView<'_>,
    plan: &CompactionPlan,
) -> Result<CompactionReport, StorageError> {
    let mut report = CompactionReport::default();
    let split = |positions: &[Position]| -> (Vec<i64>, Vec<i32>) {
        positions
            .iter()
            .map(|(r, i)| (big(*r), i32::try_from(*i).unwrap_or(i32::MAX)))
            .unzip()
    };
    let (revisions, idxs) = split(&plan.strip);
    report.versions_removed += view.execute(
        "UPDATE truce_versions SET body = NULL, stripped = true \
         WHERE (revision, idx) IN (SELECT * FROM unnest($1::bigint[], $2::int[])) AND NOT stripped",
        &[&revisions, &idxs],
    )?;
    let (revisions, idxs) = split(&plan.delete);
    let removed = view.query(
        "DELETE FROM truce_versions \
         WHERE (revision, idx) IN (SELECT * FROM unnest($1::bigint[], $2::int[])) RETURNING stripped",
        &[&revisions, &idxs],
    )?;
    for row in &removed {
        let stripped: bool = row.try_get(0).map_err(storage)?;
        if !stripped {
            report.versions_removed += 1;
        }
    }
    let mut through = view.changes_compacted_through()?;
    if let Some(to) = plan.changes_through.filter(|to| *to > through) {
        report.changes_removed = plan.changes_hidden;
        through = to;
        view.execute(
            "INSERT INTO truce_meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = greatest(truce_meta.value, excluded.value)",
            &[&CHANGES_COMPACTED, &big(to)],
        )?;
    }
    report.oldest_revision = through;
    let remove = |table: SideTable, keys: &[Vec<u8>]| {
        view.execute(
            "DELETE FROM truce_side WHERE tbl = $1 AND key = ANY($2)",
            &[&i16::from(table.code()), &keys],
        )
    };
    report.conflicts_removed = remove(SideTable::Conflicts, &plan.conflicts)?;
    remove(SideTable::Deliveries, &plan.deliveries)?;
    for table in [SideTable::Idempotency, SideTable::IdempotencyExpiry] {
        let keys: Vec<Vec<u8>> = plan
            .expired
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, key)| key.clone())
            .collect();
        let removed = remove(table, &keys)?;
        if table == SideTable::Idempotency {
            report.idempotency_removed = removed;
        }
    }
    if let Some(to) = plan.events_through {
        let events = SideTable::ConflictEvents;
        let watermark = view
            .side(events, &EVENTS_WATERMARK_KEY)?
            .map_or(0, |v| decode_watermark(&v));
        if to > watermark {
            report.conflict_events_removed = view.execute(
                "DELETE FROM truce_side WHERE tbl = $1 AND key > $2 AND key <= $3",
                &[
                    &i16::from(events.code()),
                    &EVENTS_WATERMARK_KEY.as_slice(),
                    &to.to_be_bytes().as_slice(),
                ],
            )?;
            view.execute(
                "INSERT INTO truce_side (tbl, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value",
                &[
                    &i16::from(events.code()),
                    &EVENTS_WATERMARK_KEY.as_slice(),
                    &encode_watermark(to),
                ],
            )?;
        }
    }
    Ok(report)
}
