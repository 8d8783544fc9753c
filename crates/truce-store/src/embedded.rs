//! The embedded store: one redb file in the data directory, one sequencer thread.
//!
//! Writes are queued to the [`sequencer`](crate::sequencer) and answered once their
//! batch is durable. Reads run on the calling task over the newest published
//! [snapshot](crate::snapshot); they are short (point lookups and bounded range
//! scans) and never wait for the writer.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use truce_engine::{
    ChangePage, ChangeQuery, CollectionName, CompactionReport, ConflictRetention, DocumentLimits,
    EngineError, HistoryPage, ListPage, ListQuery, LockJob, LockOutcome, LockSignals, Planner,
    ReadContext, ResolutionCommand, ResolutionOutcome, ResourceKey, Retention, SettingsCommand,
    SettingsOutcome, SideCommit, SideTable, SnapshotCommit, StateView, StorageError, Store,
    StoredSettings, Timestamp, TxnCommand, TxnOutcome, Version, VersionLookup, WriteCommand,
    WriteOutcome, event_position, history_page, lookup_at_revision, lookup_version, plan_write,
};

use crate::error::OpenError;
use crate::faults::Faults;
use crate::health::Health;
use crate::recovery::{open_database, recover};
use crate::reserve::{RESERVE_FILE, Reserve};
use crate::sequencer::{Job, Sequencer, SequencerStart};
use crate::snapshot::{Base, Published, Snapshot};
use crate::wal::Wal;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "truce.redb";

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The data directory; created if missing.
    pub data_dir: PathBuf,
    /// Document limits (for patch results).
    pub limits: DocumentLimits,
    /// History and change-feed retention.
    pub retention: Retention,
    /// How long conflict records and events are kept.
    pub conflict_retention: ConflictRetention,
    /// Most writes committed in one fsync; 1 disables group commit.
    pub max_batch: usize,
    /// Writes that may wait for the sequencer before new ones get 503.
    pub queue_capacity: usize,
    /// redb's page cache, in bytes.
    pub cache_bytes: usize,
    /// Longest time between checkpoints (durable redb commits); in between, batches
    /// are made durable in the write-ahead log. Zero makes every commit a checkpoint.
    pub checkpoint_interval: Duration,
    /// Most write-ahead log bytes between checkpoints.
    pub checkpoint_bytes: u64,
    /// Most heads kept in memory between checkpoints (the overlay, about 140 bytes
    /// each): bounds its memory when the interval is long and the documents small.
    pub checkpoint_heads: usize,
    /// The storage fault seam (tests only: no setting of the server installs one).
    /// With it, every write, sync and resize of the store's files can be made to
    /// fail, and a power loss simulated (see [`Faults`]).
    pub faults: Option<Faults>,
    /// Bytes kept free on the disk in `truce.reserve` for recovering from a full disk
    /// (0: none). The library's default is none; `truce serve` keeps 64 MiB.
    pub reserve_bytes: u64,
    /// The rules a write is planned with: always the engine's `plan_write`, except
    /// in tests, which swap in one that panics or waits ([`Self::with_planner`]).
    pub(crate) planner: Planner,
}

impl EmbeddedConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            limits: DocumentLimits::default(),
            retention: Retention::default(),
            conflict_retention: ConflictRetention::default(),
            max_batch: 256,
            queue_capacity: 8192,
            cache_bytes: 128 * 1024 * 1024,
            checkpoint_interval: Duration::from_millis(250),
            checkpoint_bytes: 64 * 1024 * 1024,
            checkpoint_heads: 65_536,
            faults: None,
            reserve_bytes: 0,
            planner: plan_write,
        }
    }

    /// These settings with another planner than the engine's: for tests that
    /// hold a batch in planning so that the next one forms.
    #[doc(hidden)]
    pub fn with_planner(mut self, planner: Planner) -> Self {
        self.planner = planner;
        self
    }
}

/// What opening the store found, for the caller to log (after its own first line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// The revision the store opened at.
    pub revision: u64,
    /// Versions brought back from the write-ahead log (0 after a clean close).
    pub recovered_versions: usize,
    /// Why the recovery reserve could not be made, if it could not (the store
    /// works without it, but may not serve all reads while the disk is full).
    pub reserve_problem: Option<String>,
}

/// The embedded, crash-safe store.
pub struct EmbeddedStore {
    opened: OpenReport,
    /// The newest snapshot; the sequencer owns the database and replaces this.
    published: Arc<Published>,
    /// Whether writes are refused after a storage fault, and why.
    health: Arc<Health>,
    jobs: mpsc::Sender<Job>,
    revisions: watch::Receiver<u64>,
    /// The newest conflict event's position, moved after each commit that made one.
    events: watch::Receiver<u64>,
    /// Lock changes, told by the sequencer after each commit that made some.
    lock_waits: Arc<LockSignals>,
    retention: Retention,
    conflict_retention: ConflictRetention,
    sequencer: Mutex<Option<JoinHandle<()>>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `config.data_dir` and starts its sequencer.
    pub fn open(config: EmbeddedConfig) -> Result<Self, OpenError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| OpenError::CreateDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let path = config.data_dir.join(DATABASE_FILE);
        let db = open_database(&config)?;
        let failed = |message: String| OpenError::Open {
            path: path.clone(),
            message,
        };
        let (mut wal, frames) = Wal::open(&config.data_dir, config.faults.clone())
            .map_err(|e| failed(format!("cannot read the write-ahead log: {e}")))?;
        let recovered = recover(&db, &frames, None)
            .map_err(|e| failed(format!("cannot recover from the write-ahead log: {e}")))?;
        wal.restart(recovered.epoch);
        let (revision, replayed) = (recovered.revision, recovered.versions);
        let reserve = Reserve::new(
            config.data_dir.join(RESERVE_FILE),
            config.reserve_bytes,
            config.faults.clone(),
        );
        let reserve_problem = reserve.ensure().err().map(|e| e.to_string());
        let first = Base::open(&db)
            .map(Snapshot::of)
            .map_err(|e| failed(format!("cannot read the recovered store: {e}")))?;
        let last_event = first
            .last_side_key(SideTable::ConflictEvents.code())
            .map_err(|e| failed(format!("cannot read the recovered store: {e}")))?
            .and_then(|key| event_position(&key))
            .unwrap_or(0);
        let published = Arc::new(Published::new(first));
        let health = Arc::new(Health::new());
        let (jobs_tx, jobs_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (revisions_tx, revisions_rx) = watch::channel(revision);
        let (events_tx, events_rx) = watch::channel(last_event);
        let lock_waits = Arc::new(LockSignals::default());
        let retention = config.retention;
        let conflict_retention = config.conflict_retention;
        let handle = Sequencer::spawn(SequencerStart {
            db,
            wal,
            published: Arc::clone(&published),
            revision,
            reserve,
            health: Arc::clone(&health),
            jobs: jobs_rx,
            wake: jobs_tx.downgrade(),
            revisions: revisions_tx,
            events: events_tx,
            lock_waits: Arc::clone(&lock_waits),
            settings: config,
        })
        .map_err(OpenError::Thread)?;
        Ok(Self {
            opened: OpenReport {
                revision,
                recovered_versions: replayed,
                reserve_problem,
            },
            health,
            published,
            jobs: jobs_tx,
            revisions: revisions_rx,
            events: events_rx,
            lock_waits,
            retention,
            conflict_retention,
            sequencer: Mutex::new(Some(handle)),
        })
    }

    /// What opening found: the revision and what recovery brought back.
    pub fn open_report(&self) -> OpenReport {
        self.opened.clone()
    }

    /// How many jobs wait for the sequencer (for tests that need a batch to form).
    #[doc(hidden)]
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Queues the job `make` builds around a reply channel and waits for its answer
    /// (a sequencer that went away answers as a closed store).
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Job,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.submit(make(reply))?;
        answer
            .await
            .map_err(|_| EngineError::Storage(StorageError::Closed))?
    }

    /// Queues a job; refuses at once when the queue is full or the store closed.
    fn submit(&self, job: Job) -> Result<(), EngineError> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("truce_write_queue_full_total").increment(1);
                EngineError::Storage(StorageError::Overloaded)
            }
            mpsc::error::TrySendError::Closed(_) => EngineError::Storage(StorageError::Closed),
        })
    }

    /// The newest committed state.
    fn snapshot(&self) -> Result<Arc<Snapshot>, StorageError> {
        self.published.load()
    }

    /// The retention reads of `collection` apply in `snapshot`: the server's,
    /// under the collection's history settings.
    fn retention_of(
        &self,
        snapshot: &Snapshot,
        collection: &CollectionName,
    ) -> Result<Retention, EngineError> {
        let stored = snapshot.side(
            SideTable::Collections.code(),
            collection.as_str().as_bytes(),
        )?;
        let stored = StoredSettings::read(collection, stored.as_deref())?;
        Ok(stored.settings.retention(&self.retention))
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn write(&self, command: WriteCommand) -> Result<WriteOutcome, EngineError> {
        self.ask(|reply| Job::Write {
            command: Box::new(command),
            reply,
        })
        .await
    }

    async fn head(&self, key: &ResourceKey) -> Result<Option<Version>, EngineError> {
        Ok(self.snapshot()?.head(key)?)
    }

    async fn version(&self, key: &ResourceKey, number: u64) -> Result<VersionLookup, EngineError> {
        let snapshot = self.snapshot()?;
        let retention = self.retention_of(&snapshot, &key.collection)?;
        Ok(lookup_version(
            &*snapshot,
            key,
            number,
            ReadContext {
                retention: &retention,
                now: Timestamp::now(),
            },
        )?)
    }

    async fn version_at(
        &self,
        key: &ResourceKey,
        revision: u64,
    ) -> Result<VersionLookup, EngineError> {
        let snapshot = self.snapshot()?;
        let retention = self.retention_of(&snapshot, &key.collection)?;
        Ok(lookup_at_revision(
            &*snapshot,
            key,
            revision,
            ReadContext {
                retention: &retention,
                now: Timestamp::now(),
            },
        )?)
    }

    async fn list(
        &self,
        collection: &CollectionName,
        query: &ListQuery,
    ) -> Result<ListPage, EngineError> {
        Ok(self.snapshot()?.list(collection, query)?)
    }

    async fn history(
        &self,
        key: &ResourceKey,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        let snapshot = self.snapshot()?;
        let retention = self.retention_of(&snapshot, &key.collection)?;
        Ok(history_page(
            &*snapshot,
            key,
            before,
            limit,
            ReadContext {
                retention: &retention,
                now: Timestamp::now(),
            },
        )?)
    }

    async fn changes(&self, query: &ChangeQuery) -> Result<ChangePage, EngineError> {
        let snapshot = self.snapshot()?;
        query.check_retained(snapshot.changes_compacted())?;
        Ok(snapshot.changes(query)?)
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

    fn lock_changes(&self) -> watch::Receiver<u64> {
        self.lock_waits.subscribe_any()
    }

    fn lock_waits(&self, key: &ResourceKey) -> watch::Receiver<u64> {
        self.lock_waits.subscribe(key)
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
    ) -> Result<Vec<(Vec<u8>, bytes::Bytes)>, EngineError> {
        Ok(self.snapshot()?.side_range(table.code(), after, limit)?)
    }

    async fn side_record(
        &self,
        table: SideTable,
        key: &[u8],
    ) -> Result<Option<bytes::Bytes>, EngineError> {
        Ok(self.snapshot()?.side(table.code(), key)?)
    }

    fn revisions(&self) -> watch::Receiver<u64> {
        self.revisions.clone()
    }

    fn conflict_events(&self) -> watch::Receiver<u64> {
        self.events.clone()
    }

    async fn compact(&self) -> Result<CompactionReport, EngineError> {
        let snapshot = self.snapshot()?;
        let (retention, conflicts) = (self.retention, self.conflict_retention);
        let (plan, oldest_revision) = tokio::task::spawn_blocking(move || {
            let plan = truce_engine::plan_compaction(
                &*snapshot,
                &retention,
                &conflicts,
                Timestamp::now(),
            )?;
            Ok::<_, StorageError>((plan, snapshot.changes_compacted()))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("compaction scan failed: {e}")))??;
        if plan.is_empty() {
            // Nothing to remove: answer without a commit (and its fsync).
            return Ok(CompactionReport {
                oldest_revision,
                ..CompactionReport::default()
            });
        }
        self.ask(|reply| Job::Compact { plan, reply }).await
    }

    async fn check_ready(&self) -> Result<(), EngineError> {
        if self.jobs.is_closed() {
            return Err(EngineError::Storage(StorageError::Closed));
        }
        match self.health.fault() {
            Some(fault) => Err(EngineError::Storage(fault)),
            None => Ok(()),
        }
    }

    async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.jobs.send(Job::Shutdown { reply }).await.is_ok() {
            let _ = done.await;
        }
        let handle = self
            .sequencer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
