//! [`PostgresStore`]: the [`Store`] of a node on a shared PostgreSQL database.
//!
//! Writes go to the node's [writer](crate::writer) and come back once committed.
//! Reads never block writes: each is one statement at READ COMMITTED (one
//! consistent snapshot per statement), on a pooled connection; a change-feed page
//! reads the commit row and the page's versions in one statement, so the page and
//! the revision it reports come from the same snapshot. Reads that the engine's
//! rules walk (a version under retention, a history page) run on a blocking
//! thread over the same views the writer uses, a statement per step; history only
//! grows at its head, so a walk never sees a version twice or skips one.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::NoTls;
use truce_engine::{
    Change, ChangePage, ChangeQuery, CollectionName, CompactionReport, ConflictRetention, DocId,
    DocumentLimits, EngineError, HistoryPage, IdGenerator, ListPage, ListQuery, LockJob,
    LockOutcome, LockSignals, Planner, ReadContext, ResolutionCommand, ResolutionOutcome,
    ResourceKey, Retention, SettingsCommand, SettingsOutcome, SideCommit, SideTable,
    SnapshotCommit, StorageError, Store, StoredSettings, Timestamp, TxnCommand, TxnOutcome,
    Version, VersionLookup, WriteCommand, WriteOutcome, history_page, lookup_at_revision,
    lookup_version, plan_write,
};

use crate::error::{PostgresError, storage};
use crate::sql::{HEAD_QUERY, SqlView, big, unsigned, version_of};
use crate::writer::{Job, Queued, Writer, discard, unreachable_database};

/// Settings of the PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// A PostgreSQL connection string (`postgres://user@host:port/db` or
    /// `host=... user=...`).
    pub url: String,
    /// Connections this node keeps (its writer uses one at a time).
    pub pool_size: usize,
    /// Document limits (for patch results).
    pub limits: DocumentLimits,
    /// History and change-feed retention.
    pub retention: Retention,
    /// How long conflict records and events are kept.
    pub conflict_retention: ConflictRetention,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Writes that may wait for the writer before new ones get 503.
    pub queue_capacity: usize,
    /// How long a request may wait for the database before it is answered 503.
    pub deadline: Duration,
}

impl PostgresConfig {
    /// Defaults for a database URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            limits: DocumentLimits::default(),
            retention: Retention::default(),
            conflict_retention: ConflictRetention::default(),
            max_batch: 256,
            queue_capacity: 8192,
            deadline: Duration::from_secs(5),
        }
    }
}

/// How long PostgreSQL lets one of a node's transactions sit idle before it ends
/// the session. A node cut off from the database in the middle of a batch holds
/// the commit row's lock, and every other node's writes wait for it; this bounds
/// that wait (a healthy batch is never idle for more than a few milliseconds
/// between its statements).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(2);

/// How long closing the store waits for the writes queued before it.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// A truce node's store on PostgreSQL.
pub struct PostgresStore {
    pool: Pool,
    jobs: mpsc::Sender<Queued>,
    revisions: watch::Receiver<u64>,
    events: watch::Receiver<u64>,
    /// Lock changes: this node's commits (told by the writer) and every other
    /// node's (told by the listener).
    lock_waits: Arc<LockSignals>,
    retention: Retention,
    conflict_retention: ConflictRetention,
    deadline: Duration,
    writer: Mutex<Option<JoinHandle<()>>>,
    listener: tokio::task::JoinHandle<()>,
    /// What opening found.
    opened: Opened,
}

/// What opening the database found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The newest revision.
    pub revision: u64,
    /// The schema version found before migrating (0: a new database).
    pub schema_before: i32,
}

impl PostgresStore {
    /// Connects, migrates the schema and starts the node's writer and listener.
    /// Must be called inside a Tokio runtime (connections run on it).
    pub async fn open(config: PostgresConfig) -> Result<Self, PostgresError> {
        Self::open_with(config, plan_write).await
    }

    async fn open_with(config: PostgresConfig, planner: Planner) -> Result<Self, PostgresError> {
        let pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| PostgresError::Url(e.to_string()))?;
        let mut pg_for_pool = pg.clone();
        pg_for_pool.connect_timeout(config.deadline);
        let options = format!(
            "{} -c idle_in_transaction_session_timeout={}",
            pg.get_options().unwrap_or_default(),
            IDLE_IN_TRANSACTION.as_millis()
        );
        pg_for_pool.options(options.trim());
        let manager = Manager::from_config(
            pg_for_pool,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.deadline))
            .create_timeout(Some(config.deadline))
            .recycle_timeout(Some(config.deadline))
            .build()
            .map_err(|e| PostgresError::Pool(e.to_string()))?;
        let client = pool.get().await?;
        let schema_before = crate::schema::migrate(&client).await?;
        let row = client
            .query_one("SELECT revision, events, locks FROM truce_commit", &[])
            .await?;
        let (revision, events, locks): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        drop(client);
        let (revisions_tx, revisions_rx) = watch::channel(unsigned(revision));
        let (events_tx, events_rx) = watch::channel(unsigned(events));
        let lock_waits = Arc::new(LockSignals::default());
        let listener = tokio::spawn(crate::listener::follow(
            pg,
            revisions_tx.clone(),
            events_tx.clone(),
            unsigned(locks),
            Arc::clone(&lock_waits),
        ));
        let (jobs_tx, jobs_rx) = mpsc::channel(config.queue_capacity.max(1));
        let writer = Writer {
            pool: pool.clone(),
            handle: tokio::runtime::Handle::current(),
            jobs: jobs_rx,
            revisions: revisions_tx,
            events: events_tx,
            lock_waits: Arc::clone(&lock_waits),
            limits: config.limits,
            retention: config.retention,
            planner,
            max_batch: config.max_batch.max(1),
            deadline: config.deadline,
            conflict_ids: IdGenerator::new(),
        };
        let writer = std::thread::Builder::new()
            .name("truce-pg-writer".into())
            .spawn(move || writer.run())
            .map_err(PostgresError::Thread)?;
        Ok(Self {
            pool,
            jobs: jobs_tx,
            revisions: revisions_rx,
            events: events_rx,
            lock_waits,
            retention: config.retention,
            conflict_retention: config.conflict_retention,
            deadline: config.deadline,
            writer: Mutex::new(Some(writer)),
            listener,
            opened: Opened {
                revision: unsigned(revision),
                schema_before,
            },
        })
    }

    /// What opening found.
    pub fn opened(&self) -> Opened {
        self.opened
    }

    /// [`PostgresStore::open`] with another planner than the engine's: for
    /// tests that hold a batch in planning so that the next one forms.
    #[doc(hidden)]
    pub async fn open_with_planner(
        config: PostgresConfig,
        planner: Planner,
    ) -> Result<Self, PostgresError> {
        Self::open_with(config, planner).await
    }

    /// How many jobs wait for the writer (for tests that need a batch to form).
    #[doc(hidden)]
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Queues the job `make` builds around a reply channel and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Job,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            until: tokio::time::Instant::now() + self.deadline,
            job: make(reply),
        };
        self.jobs.try_send(queued).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("truce_write_queue_full_total").increment(1);
                EngineError::Storage(StorageError::Overloaded)
            }
            mpsc::error::TrySendError::Closed(_) => EngineError::Storage(StorageError::Closed),
        })?;
        answer
            .await
            .map_err(|_| EngineError::Storage(StorageError::Closed))?
    }

    /// A pooled connection, or 503 once `until` passes.
    async fn client(
        &self,
        until: tokio::time::Instant,
    ) -> Result<deadpool_postgres::Object, StorageError> {
        tokio::time::timeout_at(until, self.pool.get())
            .await
            .map_err(|_| unreachable_database())?
            .map_err(storage)
    }

    /// Runs one statement on a pooled connection within the deadline.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StorageError> {
        let until = tokio::time::Instant::now() + self.deadline;
        let client = self.client(until).await?;
        let run = async {
            let statement = client.prepare_cached(sql).await.map_err(storage)?;
            client.query(&statement, params).await.map_err(storage)
        };
        match tokio::time::timeout_at(until, run).await {
            Ok(result) => result,
            Err(_) => {
                // A statement may still be in flight on it: never reuse it.
                discard(client);
                Err(unreachable_database())
            }
        }
    }

    /// Runs `read` over a synchronous view of a pooled connection, on a blocking
    /// thread (the engine's read rules walk the view a statement at a time).
    async fn with_view<T: Send + 'static>(
        &self,
        read: impl FnOnce(&SqlView<'_>, &Retention) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let until = tokio::time::Instant::now() + self.deadline;
        let client = self.client(until).await?;
        let handle = tokio::runtime::Handle::current();
        let retention = self.retention;
        tokio::task::spawn_blocking(move || {
            let view = SqlView::new(handle, &client, until);
            let result = read(&view, &retention);
            if matches!(
                result,
                Err(EngineError::Storage(StorageError::Unreachable(_)))
            ) {
                // Timed out or failed mid-statement: never reuse it.
                discard(client);
            }
            result
        })
        .await
        .map_err(|e| EngineError::Internal(format!("read task failed: {e}")))?
    }
}

/// The retention reads of `collection` apply: the server's, under the
/// collection's history settings.
fn retention_of(
    view: &SqlView<'_>,
    collection: &CollectionName,
    server: &Retention,
) -> Result<Retention, EngineError> {
    use truce_engine::BatchTables;
    let stored = view.side(SideTable::Collections, collection.as_str().as_bytes())?;
    let stored = StoredSettings::read(collection, stored.as_deref())?;
    Ok(stored.settings.retention(server))
}

/// Rows of the change feed read per statement.
const CHANGES_CHUNK: i64 = 512;

#[async_trait]
impl Store for PostgresStore {
    async fn write(&self, command: WriteCommand) -> Result<WriteOutcome, EngineError> {
        self.ask(|reply| Job::Write {
            command: Box::new(command),
            reply,
        })
        .await
    }

    async fn head(&self, key: &ResourceKey) -> Result<Option<Version>, EngineError> {
        let rows = self
            .query(HEAD_QUERY, &[&key.collection.as_str(), &key.id.as_str()])
            .await?;
        Ok(rows.first().map(|row| version_of(row, 0)).transpose()?)
    }

    async fn version(&self, key: &ResourceKey, number: u64) -> Result<VersionLookup, EngineError> {
        let key = key.clone();
        self.with_view(move |view, server| {
            let retention = retention_of(view, &key.collection, server)?;
            let ctx = ReadContext {
                retention: &retention,
                now: Timestamp::now(),
            };
            Ok(lookup_version(view, &key, number, ctx)?)
        })
        .await
    }

    async fn version_at(
        &self,
        key: &ResourceKey,
        revision: u64,
    ) -> Result<VersionLookup, EngineError> {
        let key = key.clone();
        self.with_view(move |view, server| {
            let retention = retention_of(view, &key.collection, server)?;
            let ctx = ReadContext {
                retention: &retention,
                now: Timestamp::now(),
            };
            Ok(lookup_at_revision(view, &key, revision, ctx)?)
        })
        .await
    }

    async fn list(
        &self,
        collection: &CollectionName,
        query: &ListQuery,
    ) -> Result<ListPage, EngineError> {
        let prefix = query.prefix.clone().unwrap_or_default();
        let after = query.after.as_ref().map(|a| a.as_str().to_owned());
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        // Ids from `prefix` up to (not including) the first id past it: a range
        // the primary key serves, with no LIKE escaping.
        let rows = self
            .query(
                "SELECT h.id, v.revision, v.number, v.at_ms, v.op, v.by_principal, v.body \
                 FROM truce_heads h JOIN truce_versions v ON v.revision = h.revision AND v.idx = h.idx \
                 WHERE h.collection = $1 AND NOT h.tombstone AND h.id >= $2 \
                 AND ($3::text IS NULL OR h.id > $3) \
                 AND left(h.id, length($2)) = $2 \
                 ORDER BY h.id LIMIT $4",
                &[&collection.as_str(), &prefix, &after, &(limit + 1)],
            )
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows.iter().take(query.limit) {
            let id: String = row.try_get(0).map_err(storage)?;
            let id = DocId::parse(&id)
                .map_err(|e| StorageError::Corrupt(format!("stored id {id:?}: {e}")))?;
            items.push((id, version_of(row, 1)?));
        }
        let next = if rows.len() > query.limit {
            items.last().map(|(id, _)| id.clone())
        } else {
            None
        };
        Ok(ListPage { items, next })
    }

    async fn history(
        &self,
        key: &ResourceKey,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        let key = key.clone();
        self.with_view(move |view, server| {
            let retention = retention_of(view, &key.collection, server)?;
            let ctx = ReadContext {
                retention: &retention,
                now: Timestamp::now(),
            };
            history_page(view, &key, before, limit, ctx)
        })
        .await
    }

    async fn changes(&self, query: &ChangeQuery) -> Result<ChangePage, EngineError> {
        let collection = query.collection.as_ref().map(|c| c.as_str().to_owned());
        let id = query.key.as_ref().map(|k| k.id.as_str().to_owned());
        let key_collection = query.key.as_ref().map(|k| k.collection.as_str().to_owned());
        let collection = collection.or(key_collection);
        let mut head: Option<u64> = None;
        let mut changes = Vec::new();
        // Where the next chunk starts: after this (revision, idx).
        let mut cursor = (big(query.since), i32::MAX);
        let mut scanned_through = query.since;
        loop {
            // The commit row and the chunk in one statement: one snapshot, and
            // later chunks stop at the revision the first one saw.
            let rows = self
                .query(
                    "SELECT c.revision, \
                     (SELECT coalesce(max(value), 0) FROM truce_meta WHERE name = 'changes_compacted_through'), \
                     v.revision, v.idx, v.collection, v.id, v.number, v.at_ms, v.op, \
                     CASE WHEN $6 AND NOT v.stripped THEN v.body END \
                     FROM truce_commit c LEFT JOIN LATERAL ( \
                       SELECT * FROM truce_versions w WHERE (w.revision, w.idx) > ($1, $2) \
                       AND w.revision <= coalesce($7, c.revision) \
                       AND ($3::text IS NULL OR w.collection = $3) AND ($4::text IS NULL OR w.id = $4) \
                       ORDER BY w.revision, w.idx LIMIT $5) v ON true",
                    &[
                        &cursor.0,
                        &cursor.1,
                        &collection,
                        &id,
                        &CHANGES_CHUNK,
                        &query.include_docs,
                        &head.map(big),
                    ],
                )
                .await?;
            let Some(first) = rows.first() else {
                return Err(StorageError::Corrupt("the commit row is missing".into()).into());
            };
            if head.is_none() {
                let compacted: i64 = first.try_get(1).map_err(storage)?;
                query.check_retained(unsigned(compacted))?;
                head = Some(unsigned(first.try_get(0).map_err(storage)?));
            }
            let mut read = 0;
            for row in &rows {
                let Some(revision) = row.try_get::<_, Option<i64>>(2).map_err(storage)? else {
                    continue;
                };
                read += 1;
                cursor = (revision, row.try_get(3).map_err(storage)?);
                let revision = unsigned(revision);
                if query.page_full(changes.len(), scanned_through, revision) {
                    return Ok(ChangePage {
                        changes,
                        last_revision: scanned_through,
                    });
                }
                scanned_through = revision;
                changes.push(change_of(row, revision)?);
            }
            if read < CHANGES_CHUNK {
                return Ok(ChangePage {
                    changes,
                    last_revision: head.unwrap_or(scanned_through),
                });
            }
        }
    }

    async fn commit_side(&self, commit: SideCommit) -> Result<(), EngineError> {
        self.ask(|reply| Job::Side { commit, reply }).await
    }

    async fn claim_deliveries(
        &self,
        keys: Vec<Vec<u8>>,
        node: String,
        until: Timestamp,
    ) -> Result<Vec<truce_engine::Delivery>, EngineError> {
        self.ask(|reply| Job::Claim {
            keys,
            node,
            until,
            reply,
        })
        .await
    }

    async fn configure(&self, command: SettingsCommand) -> Result<SettingsOutcome, EngineError> {
        self.ask(|reply| Job::Configure {
            command: Box::new(command),
            reply,
        })
        .await
    }

    async fn resolve(&self, command: ResolutionCommand) -> Result<ResolutionOutcome, EngineError> {
        self.ask(|reply| Job::Resolve {
            command: Box::new(command),
            reply,
        })
        .await
    }

    async fn side_records(
        &self,
        table: SideTable,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, EngineError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT key, value FROM truce_side WHERE tbl = $1 \
                 AND ($2::bytea IS NULL OR key > $2) ORDER BY key LIMIT $3",
                &[&i16::from(table.code()), &after, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let key: Vec<u8> = row.try_get(0)?;
                let value: Vec<u8> = row.try_get(1)?;
                Ok((key, Bytes::from(value)))
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| storage(e).into())
    }

    async fn side_record(
        &self,
        table: SideTable,
        key: &[u8],
    ) -> Result<Option<Bytes>, EngineError> {
        let rows = self
            .query(
                "SELECT value FROM truce_side WHERE tbl = $1 AND key = $2",
                &[&i16::from(table.code()), &key],
            )
            .await?;
        Ok(rows
            .first()
            .map(|row| row.try_get::<_, Vec<u8>>(0).map(Bytes::from))
            .transpose()
            .map_err(storage)?)
    }

    fn revisions(&self) -> watch::Receiver<u64> {
        self.revisions.clone()
    }

    fn conflict_events(&self) -> watch::Receiver<u64> {
        self.events.clone()
    }

    fn lock_changes(&self) -> watch::Receiver<u64> {
        self.lock_waits.subscribe_any()
    }

    fn lock_waits(&self, key: &ResourceKey) -> watch::Receiver<u64> {
        self.lock_waits.subscribe(key)
    }

    async fn transact(&self, command: TxnCommand) -> Result<TxnOutcome, EngineError> {
        self.ask(|reply| Job::Txn {
            command: Box::new(command),
            reply,
        })
        .await
    }

    async fn commit_snapshot(&self, commit: SnapshotCommit) -> Result<TxnOutcome, EngineError> {
        self.ask(|reply| Job::Snapshot {
            commit: Box::new(commit),
            reply,
        })
        .await
    }

    async fn lock(&self, job: LockJob) -> Result<LockOutcome, EngineError> {
        self.ask(|reply| Job::Lock {
            job: Box::new(job),
            reply,
        })
        .await
    }

    async fn compact(&self) -> Result<CompactionReport, EngineError> {
        let conflicts = self.conflict_retention;
        let (plan, oldest_revision) = self
            .with_view(move |view, retention| {
                use truce_engine::CompactionSource;
                let plan =
                    truce_engine::plan_compaction(view, retention, &conflicts, Timestamp::now())?;
                Ok((plan, view.changes_compacted_through()?))
            })
            .await?;
        if plan.is_empty() {
            // Nothing to remove: answer without a transaction.
            return Ok(CompactionReport {
                oldest_revision,
                ..CompactionReport::default()
            });
        }
        self.ask(|reply| Job::Compact {
            plan: Box::new(plan),
            reply,
        })
        .await
    }

    async fn check_ready(&self) -> Result<(), EngineError> {
        if self.jobs.is_closed() {
            return Err(EngineError::Storage(StorageError::Closed));
        }
        self.query("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn close(&self) {
        let (reply, done) = oneshot::channel();
        let queued = Queued {
            until: tokio::time::Instant::now() + SHUTDOWN_WAIT,
            job: Job::Shutdown { reply },
        };
        if self.jobs.send(queued).await.is_ok() {
            let _ = done.await;
        }
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        self.listener.abort();
        self.pool.close();
    }
}

/// A change from a row of the change-feed statement.
fn change_of(row: &tokio_postgres::Row, revision: u64) -> Result<Change, StorageError> {
    let collection: String = row.try_get(4).map_err(storage)?;
    let id: String = row.try_get(5).map_err(storage)?;
    let key = ResourceKey::parse(&collection, &id)
        .map_err(|e| StorageError::Corrupt(format!("stored key {collection}/{id}: {e}")))?;
    let op: i16 = row.try_get(8).map_err(storage)?;
    let op = u8::try_from(op)
        .ok()
        .and_then(truce_engine::Op::from_code)
        .ok_or_else(|| StorageError::Corrupt(format!("unknown op code {op}")))?;
    let body: Option<Vec<u8>> = row.try_get(9).map_err(storage)?;
    Ok(Change {
        revision,
        key,
        version: unsigned(row.try_get(6).map_err(storage)?),
        at: Timestamp::from_millis(unsigned(row.try_get(7).map_err(storage)?)),
        op,
        body: body.map(Bytes::from),
    })
}
