//! The engine's views over SQL: [`SqlView`] is the [`StateView`] the rules read
//! and the [`BatchTables`] a batch writes through, over one connection (inside the
//! batch's transaction for the writer, a plain connection for reads).
//!
//! The rules are synchronous; each call here blocks its thread on one statement
//! (the writer's own thread, or a blocking-pool thread for reads), never a
//! runtime worker.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use deadpool_postgres::ClientWrapper;
use futures_util::FutureExt;
use tokio::runtime::Handle;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use truce_engine::{
    BatchTables, CollectionName, Effect, KeyCheck, Op, ResourceKey, SideTable, StateView,
    StorageError, Timestamp, Version,
};

use crate::error::storage;
use crate::pending::PendingWrites;

/// A `u64` as PostgreSQL's `bigint` (every counter of truce stays far below 2^63).
pub(crate) fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `bigint` read back.
pub(crate) fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A version from a row holding `revision, number, at_ms, op, by_principal, body`
/// from column `at` on.
pub(crate) fn version_of(row: &Row, at: usize) -> Result<Version, StorageError> {
    let op: i16 = row.try_get(at + 3).map_err(storage)?;
    let op = u8::try_from(op)
        .ok()
        .and_then(Op::from_code)
        .ok_or_else(|| StorageError::Corrupt(format!("unknown op code {op}")))?;
    let body: Option<Vec<u8>> = row.try_get(at + 5).map_err(storage)?;
    Ok(Version {
        revision: unsigned(row.try_get(at).map_err(storage)?),
        number: unsigned(row.try_get(at + 1).map_err(storage)?),
        at: Timestamp::from_millis(unsigned(row.try_get(at + 2).map_err(storage)?)),
        op,
        by: row.try_get(at + 4).map_err(storage)?,
        body: body.map(Bytes::from),
    })
}

/// The head of a resource with its version.
pub(crate) const HEAD_QUERY: &str = "SELECT v.revision, v.number, v.at_ms, v.op, v.by_principal, v.body \
     FROM truce_heads h JOIN truce_versions v ON v.revision = h.revision AND v.idx = h.idx \
     WHERE h.collection = $1 AND h.id = $2";

/// The heads of the resources named by two arrays (collections, ids). A
/// lateral lookup per key (its `LIMIT` keeps the planner from turning it into
/// a join), so the plan is an index probe per key: a connection keeps the
/// generic plan it made first, and a join planned on a near-empty table is a
/// sequential scan forever after.
const PREFETCH_QUERY: &str = "SELECT k.collection, k.id, v.revision, v.number, v.at_ms, v.op, v.by_principal, v.body \
     FROM unnest($1::text[], $2::text[]) AS k(collection, id), LATERAL ( \
       SELECT w.revision, w.number, w.at_ms, w.op, w.by_principal, w.body \
       FROM truce_heads h JOIN truce_versions w ON w.revision = h.revision AND w.idx = h.idx \
       WHERE h.collection = k.collection COLLATE \"C\" AND h.id = k.id COLLATE \"C\" LIMIT 1) v";

/// Whether a side table holds any record.
const ANY_SIDE_QUERY: &str = "SELECT 1 FROM truce_side WHERE tbl = $1 LIMIT 1";

/// Side records of one table by their keys.
const SIDES_QUERY: &str =
    "SELECT key, value FROM truce_side WHERE tbl = $1 AND key = ANY($2::bytea[])";

/// Past versions of a resource below a number, newest first, a page at a time.
const WALK_QUERY: &str = "SELECT v.revision, v.number, v.at_ms, v.op, v.by_principal, v.body, v.stripped \
     FROM truce_versions v WHERE v.collection = $1 AND v.id = $2 AND v.number < $3 \
     ORDER BY v.number DESC LIMIT 64";

/// A side record's table code and key.
type SideKey = (i16, Vec<u8>);

/// One connection seen synchronously.
///
/// Writes are gathered ([`PendingWrites`]) and sent as a few multi-row
/// statements before the next statement of any other kind (or by
/// [`SqlView::flush`]), without waiting for their answers: the connection runs
/// them in order before that later statement, so every later read of the
/// transaction sees them. A write that fails aborts the transaction, and every
/// later statement then fails: the writer awaits the commit row's update
/// before its COMMIT, so a batch with a failed write never commits.
pub(crate) struct SqlView<'c> {
    pub handle: Handle,
    pub client: &'c ClientWrapper,
    /// Heads this view read or wrote, so a batch reads each at most once: only
    /// the writer holding the commit row's lock writes heads, and it updates
    /// these as it stores.
    pub heads: RefCell<HashMap<ResourceKey, Option<Version>>>,
    /// Writes not sent yet.
    pending: RefCell<PendingWrites>,
    /// Side records this view read or wrote (`None`: absent), by table code and
    /// key: written through by [`BatchTables::store`], so they stay true after
    /// the pending writes are sent.
    sides: RefCell<HashMap<SideKey, Option<Bytes>>>,
    /// Side tables known to hold a record (`true`) or none (`false`), by table
    /// code: read with the commit row when the batch's key checks need it, and
    /// kept true by the batch's own writes.
    filled: RefCell<HashMap<i16, bool>>,
    /// When the work on this view must be done: a statement still waiting then
    /// counts as the database being unreachable (a partition must not hang a
    /// request).
    pub until: tokio::time::Instant,
}

impl<'c> SqlView<'c> {
    /// A view over `client` whose statements must be done by `until`.
    pub(crate) fn new(
        handle: Handle,
        client: &'c ClientWrapper,
        until: tokio::time::Instant,
    ) -> Self {
        Self {
            handle,
            client,
            until,
            heads: RefCell::default(),
            pending: RefCell::default(),
            sides: RefCell::default(),
            filled: RefCell::default(),
        }
    }

    /// Begins a batch's transaction and takes the commit row's lock, reading
    /// the heads of `keys`, the settings of `collections`, the lock records of
    /// `keys` and what the batch's `key_checks` read, for the planning to come,
    /// all in one round trip (the statements are pipelined, so the reads run
    /// after the lock is taken). Returns the revision and the transaction's id
    /// (what a lost COMMIT answer is settled by).
    pub(crate) fn begin(
        &self,
        keys: &[&ResourceKey],
        collections: &[&CollectionName],
        key_checks: &[&KeyCheck],
    ) -> Result<(u64, i64, Timestamp), StorageError> {
        let names: Vec<&str> = keys.iter().map(|k| k.collection.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        let settings = i16::from(SideTable::Collections.code());
        let settings_keys: Vec<&[u8]> = collections.iter().map(|c| c.as_str().as_bytes()).collect();
        let locks = i16::from(SideTable::Locks.code());
        let lock_keys: Vec<Vec<u8>> = keys.iter().map(|k| truce_engine::lock_key(k)).collect();
        let api_keys = i16::from(SideTable::Keys.code());
        let key_ids: Vec<&[u8]> = key_checks
            .iter()
            .filter_map(|check| match check {
                KeyCheck::Key { id, .. } => Some(id.as_bytes()),
                KeyCheck::NoKeys => None,
            })
            .collect();
        let any_key_wanted = key_checks.iter().any(|c| matches!(c, KeyCheck::NoKeys));
        let (lock, heads, sides, lock_rows, key_rows, any_key) = self.within(async {
            let heads = self
                .client
                .prepare_cached(PREFETCH_QUERY)
                .await
                .map_err(storage)?;
            let sides = self
                .client
                .prepare_cached(SIDES_QUERY)
                .await
                .map_err(storage)?;
            let any_side = self
                .client
                .prepare_cached(ANY_SIDE_QUERY)
                .await
                .map_err(storage)?;
            // What the batch's key checks read, when it has any.
            let key_rows = async {
                if key_ids.is_empty() {
                    return Ok(Vec::new());
                }
                self.client.query(&sides, &[&api_keys, &key_ids]).await
            };
            let any_key = async {
                if !any_key_wanted {
                    return Ok::<_, tokio_postgres::Error>(None);
                }
                let found = self.client.query(&any_side, &[&api_keys]).await?;
                Ok(Some(!found.is_empty()))
            };
            // Each request is sent when first polled, and `join3` polls in
            // order (the second triple after the first).
            let ((lock, heads, sides), (lock_rows, key_rows, any_key)) =
                futures_util::future::join(
                    futures_util::future::join3(
                        self.client.simple_query(
                            "BEGIN; SELECT revision, txid_current(), \
                         (extract(epoch from clock_timestamp()) * 1000)::bigint \
                         FROM truce_commit FOR UPDATE",
                        ),
                        self.client.query(&heads, &[&names, &ids]),
                        self.client.query(&sides, &[&settings, &settings_keys]),
                    ),
                    futures_util::future::join3(
                        self.client.query(&sides, &[&locks, &lock_keys]),
                        key_rows,
                        any_key,
                    ),
                )
                .await;
            Ok((
                lock.map_err(storage)?,
                heads.map_err(storage)?,
                sides.map_err(storage)?,
                lock_rows.map_err(storage)?,
                key_rows.map_err(storage)?,
                any_key.map_err(storage)?,
            ))
        })?;
        let (revision, xid, now) = lock
            .iter()
            .find_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .and_then(|row| {
                let revision = row.get(0)?.parse::<u64>().ok()?;
                let now = Timestamp::from_millis(row.get(2)?.parse::<u64>().ok()?);
                Some((revision, row.get(1)?.parse::<i64>().ok()?, now))
            })
            .ok_or_else(|| StorageError::Corrupt("the commit row is missing".into()))?;
        let mut known = self.heads.borrow_mut();
        for key in keys {
            known.insert((*key).clone(), None);
        }
        for row in &heads {
            let (collection, id): (&str, &str) = (
                row.try_get(0).map_err(storage)?,
                row.try_get(1).map_err(storage)?,
            );
            let key = ResourceKey::parse(collection, id)
                .map_err(|e| StorageError::Corrupt(format!("stored key {collection}/{id}: {e}")))?;
            known.insert(key, Some(version_of(row, 2)?));
        }
        self.remember_sides(settings, &settings_keys, &sides)?;
        self.remember_sides(locks, &lock_keys, &lock_rows)?;
        self.remember_sides(api_keys, &key_ids, &key_rows)?;
        if let Some(any_key) = any_key {
            self.filled.borrow_mut().insert(api_keys, any_key);
        }
        Ok((revision, xid, now))
    }

    /// Remembers the side records of `table` asked for by `keys` as `rows`
    /// (`key, value`) answered: each key found, or absent.
    fn remember_sides(
        &self,
        table: i16,
        keys: &[impl AsRef<[u8]>],
        rows: &[tokio_postgres::Row],
    ) -> Result<(), StorageError> {
        let mut read = self.sides.borrow_mut();
        for key in keys {
            read.insert((table, key.as_ref().to_vec()), None);
        }
        for row in rows {
            let key: Vec<u8> = row.try_get(0).map_err(storage)?;
            let value: Vec<u8> = row.try_get(1).map_err(storage)?;
            read.insert((table, key), Some(Bytes::from(value)));
        }
        Ok(())
    }

    /// Forgets what was read, for statements that change rows behind the
    /// caches' back (compaction).
    pub(crate) fn forget_reads(&self) {
        self.heads.borrow_mut().clear();
        self.sides.borrow_mut().clear();
        self.filled.borrow_mut().clear();
    }

    /// Sends the pending writes, without waiting for their answers (see the
    /// type's doc for why that is safe).
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        if self.pending.borrow().is_empty() {
            return Ok(());
        }
        let statements = self.pending.borrow_mut().take();
        for flush in statements {
            let params: Vec<&(dyn ToSql + Sync)> = flush
                .params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            self.within(async {
                let statement = self
                    .client
                    .prepare_cached(flush.sql)
                    .await
                    .map_err(storage)?;
                // tokio-postgres sends a request when its future is first
                // polled; the answer is then dropped unread.
                let _ = self.client.execute(&statement, &params).now_or_never();
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Runs one statement (prepared once per connection) and waits for its rows.
    pub(crate) fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StorageError> {
        self.flush()?;
        self.within(async {
            let statement = self.client.prepare_cached(sql).await.map_err(storage)?;
            self.client.query(&statement, params).await.map_err(storage)
        })
    }

    /// Runs one statement for its effect.
    pub(crate) fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StorageError> {
        self.flush()?;
        self.within(async {
            let statement = self.client.prepare_cached(sql).await.map_err(storage)?;
            self.client
                .execute(&statement, params)
                .await
                .map_err(storage)
        })
    }

    /// Waits for `work`, at most until the view's deadline.
    pub(crate) fn within<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        self.handle.block_on(async {
            tokio::time::timeout_at(self.until, work)
                .await
                .map_err(|_| crate::writer::unreachable_database())?
        })
    }
}

impl StateView for SqlView<'_> {
    fn head(&self, key: &ResourceKey) -> Result<Option<Version>, StorageError> {
        if let Some(known) = self.heads.borrow().get(key) {
            return Ok(known.clone());
        }
        let rows = self.query(HEAD_QUERY, &[&key.collection.as_str(), &key.id.as_str()])?;
        let head = rows.first().map(|row| version_of(row, 0)).transpose()?;
        self.heads.borrow_mut().insert(key.clone(), head.clone());
        Ok(head)
    }

    fn walk_back(
        &self,
        key: &ResourceKey,
        below: u64,
        visit: &mut dyn FnMut(Version) -> bool,
    ) -> Result<(), StorageError> {
        let (collection, id) = (key.collection.as_str(), key.id.as_str());
        let mut below = below;
        loop {
            let rows = self.query(WALK_QUERY, &[&collection, &id, &big(below)])?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in &rows {
                let version = version_of(row, 0)?;
                let stripped: bool = row.try_get(6).map_err(storage)?;
                // Numbers are consecutive per resource: a gap is where compaction
                // removed the older versions, and a stripped body ends the history
                // retention keeps.
                if stripped || version.number + 1 != below {
                    return Ok(());
                }
                below = version.number;
                if !visit(version) {
                    return Ok(());
                }
            }
        }
    }
}

impl BatchTables for SqlView<'_> {
    fn view(&self) -> &dyn StateView {
        self
    }

    fn side(&self, table: SideTable, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let code = i16::from(table.code());
        if let Some(read) = self.sides.borrow().get(&(code, key.to_vec())) {
            return Ok(read.clone());
        }
        let rows = self.query(
            "SELECT value FROM truce_side WHERE tbl = $1 AND key = $2",
            &[&code, &key],
        )?;
        let value = rows
            .first()
            .map(|row| row.try_get::<_, Vec<u8>>(0).map(Bytes::from))
            .transpose()
            .map_err(storage)?;
        self.sides
            .borrow_mut()
            .insert((code, key.to_vec()), value.clone());
        Ok(value)
    }

    fn has_side_records(&self, table: SideTable) -> Result<bool, StorageError> {
        let code = i16::from(table.code());
        if let Some(filled) = self.filled.borrow().get(&code) {
            return Ok(*filled);
        }
        let filled = !self.side_records(table, b"", 1)?.is_empty();
        self.filled.borrow_mut().insert(code, filled);
        Ok(filled)
    }

    fn last_side_key(&self, table: SideTable) -> Result<Option<Vec<u8>>, StorageError> {
        let rows = self.query(
            "SELECT key FROM truce_side WHERE tbl = $1 ORDER BY key DESC LIMIT 1",
            &[&i16::from(table.code())],
        )?;
        rows.first()
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(storage)
    }

    fn side_records(
        &self,
        table: SideTable,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError> {
        let code = i16::from(table.code());
        let end = truce_engine::prefix_end(prefix);
        // The batch's own writes (and deletions) under the prefix overlay what
        // is committed; read enough committed rows that deletions cannot hide
        // records inside the limit.
        let overlay: BTreeMap<Vec<u8>, Option<Bytes>> = self
            .sides
            .borrow()
            .iter()
            .filter(|((t, key), _)| *t == code && key.starts_with(prefix))
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect();
        let fetch = i64::try_from(limit.saturating_add(overlay.len())).unwrap_or(i64::MAX);
        let rows = self.query(
            "SELECT key, value FROM truce_side WHERE tbl = $1 AND key >= $2 \
             AND ($3::bytea IS NULL OR key < $3) ORDER BY key LIMIT $4",
            &[&code, &prefix, &end, &fetch],
        )?;
        let mut found = BTreeMap::new();
        for row in &rows {
            let key: Vec<u8> = row.try_get(0).map_err(storage)?;
            let value: Vec<u8> = row.try_get(1).map_err(storage)?;
            found.insert(key, Bytes::from(value));
        }
        for (key, value) in overlay {
            match value {
                Some(value) => found.insert(key, value),
                None => found.remove(&key),
            };
        }
        Ok(found.into_iter().take(limit).collect())
    }

    fn changed_since(
        &self,
        collection: &truce_engine::CollectionName,
        prefix: &str,
        since: u64,
    ) -> Result<bool, StorageError> {
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        let rows = self.query(
            "SELECT (SELECT coalesce(max(value), 0) FROM truce_meta \
                     WHERE name = 'changes_compacted_through') > $1 \
                 OR EXISTS (SELECT 1 FROM truce_versions WHERE revision > $1 \
                     AND collection = $2 AND left(id, length($3)) = $3)",
            &[&since, &collection.as_str(), &prefix],
        )?;
        rows.first()
            .map(|row| row.try_get::<_, bool>(0))
            .transpose()
            .map_err(storage)
            .map(|changed| changed.unwrap_or(true))
    }

    fn store(&mut self, effect: &Effect, revision: u64) -> Result<(), StorageError> {
        let mut heads = self.heads.borrow_mut();
        self.pending
            .borrow_mut()
            .add(effect, revision, |key| heads.get(key).map(Option::is_some));
        for write in &effect.writes {
            let head = Version {
                revision,
                ..write.version.clone()
            };
            heads.insert(write.key.clone(), Some(head));
        }
        let mut sides = self.sides.borrow_mut();
        let mut filled = self.filled.borrow_mut();
        for side in &effect.side {
            let code = i16::from(side.table.code());
            // A record written fills its table; one removed may empty it.
            if side.value.is_some() {
                filled.insert(code, true);
            } else {
                filled.remove(&code);
            }
            sides.insert((code, side.key.clone()), side.value.clone());
        }
        Ok(())
    }
}
