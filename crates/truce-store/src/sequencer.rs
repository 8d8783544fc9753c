//! The sequencer: the single writer of the embedded store, with group commit.
//!
//! Every write (and every compaction) is a [`Job`] on one bounded queue. One dedicated
//! thread owns the write side of the database. It blocks for the first job, drains up
//! to `max_batch` more that arrived meanwhile, and opens one redb write transaction for
//! all of them. Each job is planned by the engine's rules against that transaction, so
//! it sees the committed state plus the jobs before it in the batch, and its effect is
//! written before the next job is planned.
//!
//! The batch is then made durable with one fsync, and only after that does any job get
//! its answer: a 2xx always means "on disk". Usually the fsync is of the batch's frame
//! in the [write-ahead log](crate::wal), after which a redb commit without fsync
//! appends the batch to the log table, and its new heads go to the in-memory
//! [overlay](crate::heads). Every `checkpoint_interval` (or `checkpoint_bytes` of
//! log, or `checkpoint_heads` in the overlay), and for compactions and shutdown, the
//! overlay is written into the heads table and the redb commit itself is durable, and
//! the log starts over. After each commit a [snapshot](crate::snapshot) is published,
//! before any answer; readers never see a write before it is on disk.
//!
//! Concurrency: nothing else writes, so checks and writes are atomic without locks.
//! Readers use published MVCC snapshots and never wait for this thread. A panic
//! while planning one job fails that job only (planning writes nothing). On
//! shutdown the sequencer commits what is queued, then stops; later writes are
//! refused.
//!
//! Faults: if any durable step fails (appending or syncing the batch's frame,
//! growing the log, redb's commit or checkpoint, publishing), no job of the batch
//! took effect and every one is answered with the storage error (503, `disk-full`
//! or `io-error`). The sequencer then refuses writes (an [`Outage`]) and probes
//! with back-off until the store is back in a known-good state
//! ([`crate::recovery`]): the log's tail made unreadable, and redb reopened from
//! its file and recovered when redb itself failed. Readers keep the last published
//! snapshot throughout. Nothing is assumed to have reached the disk after a failed
//! fsync: recovery works from what is known durable.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot, watch};
use truce_engine::{
    CompactionReport, Effect, EngineError, IdGenerator, ResolutionCommand, ResolutionOutcome,
    Retry, SideTable, StorageError, Timestamp, WriteCommand, WriteContext, WriteOutcome,
    plan_resolution, record_refusal, resolve_by_retry,
};

use crate::compaction::CompactionPlan;
use crate::embedded::EmbeddedConfig;
use crate::error::{io, storage};
use crate::heads::Overlay;
use crate::health::{Health, Outage};
use crate::recovery::{open_database, recover};
use crate::reserve::Reserve;
use crate::snapshot::{Published, Snapshot};
use crate::wal::{FrameBuilder, Wal};
use crate::write_tables::WriteTables;

/// A unit of work for the sequencer, with the channel its answer goes to.
pub(crate) enum Job {
    /// Plan and apply one write.
    Write {
        command: Box<WriteCommand>,
        reply: oneshot::Sender<Result<WriteOutcome, EngineError>>,
    },
    /// Resolve or dismiss a conflict record.
    Resolve {
        command: Box<ResolutionCommand>,
        reply: oneshot::Sender<Result<ResolutionOutcome, EngineError>>,
    },
    /// Remove what a compaction scan found.
    Compact {
        plan: CompactionPlan,
        reply: oneshot::Sender<Result<CompactionReport, EngineError>>,
    },
    /// Commit what came before, then stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// The answer a job will get once its batch is durable.
enum Answer {
    Write(Result<WriteOutcome, EngineError>),
    Resolve(Result<ResolutionOutcome, EngineError>),
    Compact(Result<CompactionReport, EngineError>),
    Shutdown,
}

/// Why a batch failed, and whether redb's own state is now unknown.
struct Failed {
    error: StorageError,
    database_suspect: bool,
}

impl Failed {
    /// A failure of redb (its state is unknown until it is opened again).
    fn database(error: impl Into<redb::Error>) -> Self {
        Self::database_error(storage(error))
    }

    fn database_error(error: StorageError) -> Self {
        Self {
            error,
            database_suspect: true,
        }
    }

    /// A failure of the write-ahead log alone (redb is untouched).
    fn log(error: std::io::Error) -> Self {
        Self {
            error: io(error),
            database_suspect: false,
        }
    }
}

/// The writer thread's state.
pub(crate) struct Sequencer {
    /// Declared before `db`, so the snapshot's read transaction ends before the
    /// database closes.
    published: Arc<Published>,
    /// The database; `None` only while it is being opened again after a fault.
    db: Option<Database>,
    wal: Wal,
    /// The frame of the batch being built, reused from batch to batch.
    frame: FrameBuilder,
    /// The revision of the last published snapshot: nothing above it was ever
    /// acknowledged.
    published_revision: u64,
    /// Set while writes are refused after a storage fault.
    outage: Option<Outage>,
    /// Room kept for recovering from a full disk.
    reserve: Reserve,
    /// Makes conflict records' ids (time-ordered).
    conflict_ids: IdGenerator,
    health: Arc<Health>,
    last_checkpoint: Instant,
    /// The heads committed since the last checkpoint.
    overlay: Overlay,
    jobs: mpsc::Receiver<Job>,
    revisions: watch::Sender<u64>,
    settings: EmbeddedConfig,
}

/// What the sequencer starts from.
pub(crate) struct SequencerStart {
    pub db: Database,
    /// Must hold nothing the database lacks (see [`recover`]).
    pub wal: Wal,
    /// Readers' snapshot of the recovered state (its overlay is empty).
    pub published: Arc<Published>,
    /// The revision of that snapshot.
    pub revision: u64,
    /// Room kept for recovering from a full disk.
    pub reserve: Reserve,
    pub health: Arc<Health>,
    pub jobs: mpsc::Receiver<Job>,
    pub revisions: watch::Sender<u64>,
    pub settings: EmbeddedConfig,
}

impl Sequencer {
    /// Starts the writer thread on a freshly recovered store.
    pub fn spawn(start: SequencerStart) -> std::io::Result<JoinHandle<()>> {
        let sequencer = Self {
            db: Some(start.db),
            wal: start.wal,
            frame: FrameBuilder::default(),
            published_revision: start.revision,
            outage: None,
            reserve: start.reserve,
            conflict_ids: IdGenerator::new(),
            health: start.health,
            last_checkpoint: Instant::now(),
            overlay: Overlay::new(),
            published: start.published,
            jobs: start.jobs,
            revisions: start.revisions,
            settings: start.settings,
        };
        std::thread::Builder::new()
            .name("truce-sequencer".into())
            .spawn(move || sequencer.run())
    }

    fn run(mut self) {
        let max_batch = self.settings.max_batch.max(1);
        // Waiting for a job with a time-out (for the next probe during an outage)
        // needs a timer; a runtime of this thread's own provides it.
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .inspect_err(
                |e| tracing::warn!(%e, "no timer for storage probes; probing on writes only"),
            )
            .ok();
        loop {
            let first = match (&self.outage, &timer) {
                (Some(outage), Some(timer)) => {
                    let wait = outage.next_probe.saturating_duration_since(Instant::now());
                    let jobs = &mut self.jobs;
                    match timer.block_on(async { tokio::time::timeout(wait, jobs.recv()).await }) {
                        Ok(job) => job,
                        Err(_) => {
                            self.probe();
                            continue;
                        }
                    }
                }
                _ => self.jobs.blocking_recv(),
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if self
                .outage
                .as_ref()
                .is_some_and(|o| Instant::now() >= o.next_probe)
            {
                self.probe();
            }
            let stop = batch.iter().any(|j| matches!(j, Job::Shutdown { .. }));
            self.run_batch(batch);
            if stop {
                self.jobs.close();
                while let Ok(job) = self.jobs.try_recv() {
                    fail(job, StorageError::Closed);
                }
                break;
            }
        }
        // Readers must let go of the database's snapshot before it closes, so the
        // close finds no transaction open and leaves a clean file.
        self.published.clear();
        drop(self.db.take());
        tracing::debug!("sequencer stopped");
    }

    /// Builds, commits and answers one batch (or refuses it during an outage).
    fn run_batch(&mut self, batch: Vec<Job>) {
        if let Some(outage) = &self.outage {
            let error = outage.error.clone();
            for job in batch {
                fail(job, error.clone());
            }
            return;
        }
        let size = batch.len();
        let started = Instant::now();
        match self.build_and_commit(&batch) {
            Ok((answers, revision, committed)) => {
                if committed {
                    metrics::histogram!("truce_commit_batch_size").record(size as f64);
                    metrics::histogram!("truce_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    // Waiters wake only for a new revision, not for side records.
                    self.revisions.send_if_modified(|current| {
                        let moved = *current != revision;
                        *current = revision;
                        moved
                    });
                }
                for (job, answer) in batch.into_iter().zip(answers) {
                    send(job, answer);
                }
            }
            Err(failed) => {
                tracing::error!(error = %failed.error, batch = size, "commit failed; the whole batch is refused");
                metrics::counter!("truce_commit_failures_total").increment(1);
                // The outage (and readiness) is in place before anyone hears of it.
                let error = failed.error.clone();
                self.outage = Some(Outage::begin(
                    self.outage.take(),
                    failed.error,
                    failed.database_suspect,
                    &self.health,
                ));
                for job in batch {
                    fail(job, error.clone());
                }
            }
        }
    }

    /// Tries to bring the store back to a known-good state; ends the outage if it
    /// worked, or waits longer before the next try.
    fn probe(&mut self) {
        let Some(outage) = &self.outage else { return };
        let database_suspect = outage.database_suspect;
        let disk_full = matches!(outage.error, StorageError::DiskFull(_));
        match self.restore(database_suspect, disk_full) {
            Ok(()) => {
                if let Some(outage) = self.outage.take() {
                    outage.end(&self.health);
                }
            }
            Err(failed) => {
                if let Some(outage) = &mut self.outage {
                    outage.database_suspect |= failed.database_suspect;
                    outage.probe_failed(failed.error, &self.health);
                }
            }
        }
    }

    /// What is on disk is the truth: the log's tail is made unreadable (the refused
    /// frame's bytes are unknown), and, when redb failed, the database is closed,
    /// opened again from its file, recovered from the log as on open (without any
    /// revision above the last acknowledged one) and published afresh. On a full
    /// disk the reserve is given back first, so that recovery has room; writes
    /// resume only once the reserve is whole again.
    fn restore(&mut self, database_suspect: bool, disk_full: bool) -> Result<(), Failed> {
        self.wal.invalidate_tail().map_err(Failed::log)?;
        if database_suspect {
            if disk_full && self.reserve.release() {
                tracing::warn!(
                    "the disk is full: gave back the recovery reserve to reopen the store"
                );
            }
            self.reopen()?;
            // Readers are served again; what remains is room for new writes.
            if let Some(outage) = &mut self.outage {
                outage.database_suspect = false;
            }
        }
        self.reserve.ensure().map_err(Failed::log)
    }

    /// Closes redb, opens it again from its file, recovers as on open and publishes
    /// a fresh snapshot.
    fn reopen(&mut self) -> Result<(), Failed> {
        // Closing releases the file; readers keep the snapshot they hold.
        drop(self.db.take());
        let db =
            open_database(&self.settings).map_err(|e| Failed::database_error(open_failure(e)))?;
        let frames = self.wal.read_frames().map_err(Failed::log)?;
        let recovered =
            recover(&db, &frames, Some(self.published_revision)).map_err(Failed::database_error)?;
        let revision = recovered.revision;
        if revision != self.published_revision {
            // Fewer revisions than were acknowledged: never expected; stay down
            // rather than build on a store that lost acknowledged writes.
            tracing::error!(
                revision,
                acknowledged = self.published_revision,
                "the store reopened behind the last acknowledged revision"
            );
            return Err(Failed::database_error(StorageError::Corrupt(format!(
                "reopened at revision {revision}, not at the acknowledged {}",
                self.published_revision
            ))));
        }
        self.wal.restart(recovered.epoch);
        self.last_checkpoint = Instant::now();
        let snapshot = Snapshot::open(&db, Overlay::new()).map_err(Failed::database_error)?;
        self.published.store(snapshot);
        self.overlay = Overlay::new();
        self.db = Some(db);
        Ok(())
    }

    /// Whether this batch's commit is a checkpoint: durable in redb itself.
    fn checkpoint_due(&self, batch: &[Job]) -> bool {
        let settings = &self.settings;
        settings.checkpoint_interval.is_zero()
            || self.wal.len() >= settings.checkpoint_bytes
            || self.overlay.len() >= settings.checkpoint_heads
            || self.last_checkpoint.elapsed() >= settings.checkpoint_interval
            || batch
                .iter()
                .any(|j| matches!(j, Job::Compact { .. } | Job::Shutdown { .. }))
    }

    /// Plans and writes every job in one transaction, then makes it durable if
    /// anything changed.
    fn build_and_commit(&mut self, batch: &[Job]) -> Result<(Vec<Answer>, u64, bool), Failed> {
        let checkpoint = self.checkpoint_due(batch);
        // What earlier batches left for a checkpoint to make durable.
        let unflushed = !self.overlay.is_empty() || self.wal.len() > 0;
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| Failed::database_error(StorageError::Closed))?;
        let mut txn = db.begin_write().map_err(Failed::database)?;
        if !checkpoint {
            txn.set_durability(Durability::None)
                .map_err(Failed::database)?;
        }
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        let mut tables =
            WriteTables::open(&txn, self.overlay.clone()).map_err(Failed::database_error)?;
        let (answers, revision, changed) = self
            .apply_jobs(&mut tables, batch, &mut frame)
            .map_err(Failed::database_error)?;
        let checkpointing = checkpoint && (changed || unflushed);
        let checkpoint_started = Instant::now();
        let next_epoch = self.wal.epoch() + 1;
        if checkpointing {
            tables
                .flush_heads(revision)
                .map_err(Failed::database_error)?;
            tables
                .set_wal_epoch(next_epoch)
                .map_err(Failed::database_error)?;
        }
        let conflict_events = std::mem::take(&mut tables.conflict_events);
        let overlay = tables.into_overlay();
        let mut frame_start = None;
        if checkpointing {
            // Durable in redb: every frame so far is redundant.
            txn.commit().map_err(Failed::database)?;
            self.wal.restart(next_epoch);
            self.last_checkpoint = Instant::now();
            metrics::histogram!("truce_checkpoint_seconds")
                .record(checkpoint_started.elapsed().as_secs_f64());
        } else if changed {
            let start = self.wal.len();
            // On failure the transaction is dropped unapplied; redb is untouched.
            self.wal.append(&mut frame).map_err(Failed::log)?;
            frame_start = Some(start);
            if let Err(error) = txn.commit() {
                // The batch is refused, so its frame must never be replayed. If
                // this fails too, the outage's probe tries again before any write.
                if let Err(discard) = self.wal.discard(start) {
                    tracing::error!(%discard, "cannot take back a refused batch's log frame yet");
                }
                return Err(Failed::database(error));
            }
        } else {
            txn.abort().map_err(Failed::database)?;
        }
        self.frame = frame;
        if changed || checkpointing {
            self.publish(overlay, revision, frame_start)?;
        }
        // Counted once durable: conflicts by collection, type and outcome.
        for (collection, kind, outcome) in conflict_events {
            metrics::counter!(
                "truce_conflicts_total",
                "collection" => collection,
                "type" => kind,
                "outcome" => outcome
            )
            .increment(1);
        }
        Ok((answers, revision, changed))
    }
    /// Plans each job against `tables` and writes its effect there (and into
    /// `frame`), in order; returns the answers, the revision reached and whether
    /// anything changed.
    fn apply_jobs(
        &self,
        tables: &mut WriteTables<'_>,
        batch: &[Job],
        frame: &mut FrameBuilder,
    ) -> Result<(Vec<Answer>, u64, bool), StorageError> {
        let start = tables.revision()?;
        let mut revision = start;
        let mut compacted = false;
        let mut side_written = false;
        let now = Timestamp::now();
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            let answer = match job {
                Job::Write { command, .. } => {
                    let ctx = WriteContext {
                        revision: revision + 1,
                        now,
                        limits: self.settings.limits,
                        retention: &self.settings.retention,
                        require_preconditions: false,
                    };
                    let planned = catch_unwind(AssertUnwindSafe(|| {
                        (self.settings.planner)(&tables.view, command, &ctx)
                    }));
                    Answer::Write(match planned {
                        Ok(Ok(mut planned)) => {
                            // `Truce-Resolves`: the retried record closes with it.
                            if let Some(cid) = &command.resolves
                                && let Some(stored) =
                                    tables.get_side(SideTable::Conflicts.code(), cid.as_bytes())?
                            {
                                let retry = Retry::Landed {
                                    version: planned.outcome.version.number,
                                };
                                if let Some(resolution) =
                                    resolve_by_retry(&stored, &command.key, retry, now)
                                {
                                    planned
                                        .effect
                                        .get_or_insert_with(Effect::default)
                                        .side
                                        .push(resolution);
                                }
                            }
                            if let Some(effect) = &planned.effect {
                                // Side records alone do not move the revision.
                                if !effect.writes.is_empty() {
                                    revision += 1;
                                }
                                side_written |= !effect.side.is_empty();
                                tables.apply(effect, revision, frame)?;
                            }
                            Ok(planned.outcome)
                        }
                        // A refusal for the resource's state is kept as a conflict
                        // record, committed with the batch before it is answered.
                        Ok(Err(refusal)) => match record_refusal(
                            command,
                            refusal,
                            || self.conflict_ids.next_id().as_str().to_owned(),
                            now,
                        ) {
                            Ok((answer, record)) => {
                                side_written = true;
                                let mut side = Vec::new();
                                // A retry refused again: its record supersedes the
                                // one it named.
                                if let (Some(cid), EngineError::Recorded { conflict_id, .. }) =
                                    (&command.resolves, &answer)
                                    && let Some(stored) = tables
                                        .get_side(SideTable::Conflicts.code(), cid.as_bytes())?
                                {
                                    let retry = Retry::RefusedAgain {
                                        by: conflict_id.clone(),
                                    };
                                    side.extend(resolve_by_retry(
                                        &stored,
                                        &command.key,
                                        retry,
                                        now,
                                    ));
                                }
                                side.push(record);
                                let effect = Effect {
                                    writes: Vec::new(),
                                    side,
                                };
                                tables.apply(&effect, revision, frame)?;
                                Err(answer)
                            }
                            Err(refusal) => Err(refusal),
                        },
                        Err(_) => {
                            tracing::error!(key = %command.key, "panic while planning a write");
                            Err(EngineError::Internal("panic while planning a write".into()))
                        }
                    })
                }
                Job::Resolve { command, .. } => {
                    let ctx = WriteContext {
                        revision: revision + 1,
                        now,
                        limits: self.settings.limits,
                        retention: &self.settings.retention,
                        require_preconditions: false,
                    };
                    let stored =
                        tables.get_side(SideTable::Conflicts.code(), command.cid.as_bytes())?;
                    Answer::Resolve(
                        match plan_resolution(&tables.view, stored.as_deref(), command, &ctx) {
                            Ok(planned) => {
                                if !planned.effect.writes.is_empty() {
                                    revision += 1;
                                }
                                side_written = true;
                                tables.apply(&planned.effect, revision, frame)?;
                                Ok(planned.outcome)
                            }
                            Err(refusal) => Err(refusal),
                        },
                    )
                }
                Job::Compact { plan, .. } => {
                    compacted = true;
                    Answer::Compact(Ok(tables.compact(plan)?))
                }
                Job::Shutdown { .. } => Answer::Shutdown,
            };
            answers.push(answer);
        }
        Ok((
            answers,
            revision,
            revision != start || compacted || side_written,
        ))
    }

    /// Makes the state just committed (with `overlay`, its heads since the last
    /// checkpoint) the one readers see.
    fn publish(
        &mut self,
        overlay: Overlay,
        revision: u64,
        frame_start: Option<u64>,
    ) -> Result<(), Failed> {
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| Failed::database_error(StorageError::Closed))?;
        // If this fails the batch is committed but invisible: answering success
        // would break read-your-writes, so it is refused, and recovery takes it out
        // again (its frame is discarded, redb reopened without it).
        let snapshot = Snapshot::open(db, overlay.clone()).map_err(|error| {
            if let Some(start) = frame_start
                && let Err(discard) = self.wal.discard(start)
            {
                tracing::error!(%discard, "cannot take back an unpublished batch's log frame yet");
            }
            Failed::database_error(error)
        })?;
        self.published.store(snapshot);
        self.published_revision = revision;
        self.overlay = overlay;
        Ok(())
    }
}

/// The storage error behind a failed reopen.
fn open_failure(error: crate::error::OpenError) -> StorageError {
    match error {
        crate::error::OpenError::CreateDir { source, .. } => io(source),
        other => StorageError::Io(other.to_string()),
    }
}

/// Sends a computed answer to the job's caller (who may have gone away).
fn send(job: Job, answer: Answer) {
    match (job, answer) {
        (Job::Write { reply, .. }, Answer::Write(result)) => {
            let _ = reply.send(result);
        }
        (Job::Compact { reply, .. }, Answer::Compact(result)) => {
            let _ = reply.send(result);
        }
        (Job::Resolve { reply, .. }, Answer::Resolve(result)) => {
            let _ = reply.send(result);
        }
        (Job::Shutdown { reply }, _) => {
            let _ = reply.send(());
        }
        (job, _) => fail(
            job,
            StorageError::Corrupt("answer does not match its job".into()),
        ),
    }
}

/// Answers a job with a storage failure.
fn fail(job: Job, error: StorageError) {
    let error = EngineError::Storage(error);
    match job {
        Job::Write { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Compact { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Resolve { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Shutdown { reply } => {
            let _ = reply.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    use truce_engine::ResourceKey;

    use super::*;
    use crate::tables::HEADS;

    /// With a long interval, the overlay's size alone brings a checkpoint: the
    /// durable file holds the heads once `checkpoint_heads` are waiting.
    #[tokio::test]
    async fn a_full_overlay_brings_a_checkpoint() {
        use truce_engine::{
            Document, DocumentLimits, Preconditions, Principal, Store, WriteAction,
        };

        use crate::embedded::{DATABASE_FILE, EmbeddedStore};

        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::new(dir.path());
        config.checkpoint_interval = std::time::Duration::from_secs(3600);
        config.checkpoint_heads = 4;
        let store = EmbeddedStore::open(config).unwrap();
        for n in 0..12 {
            let key = ResourceKey::parse("things", &format!("t{n}")).unwrap();
            let doc = Document::parse(b"{}", DocumentLimits::default()).unwrap();
            store
                .write(WriteCommand {
                    key,
                    action: WriteAction::Put(doc),
                    preconditions: Preconditions::default(),
                    if_version: None,
                    by: Principal::anonymous(),
                    request_id: None,
                    resolves: None,
                })
                .await
                .unwrap();
        }
        // What a crash would leave of the file: its last durable commit.
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join(DATABASE_FILE),
            copy.path().join(DATABASE_FILE),
        )
        .unwrap();
        store.close().await;
        let db = Database::open(copy.path().join(DATABASE_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let heads = txn.open_table(HEADS).unwrap().len().unwrap();
        // Checkpoints came at the 5th and 10th writes (4 heads waiting each time);
        // the last two wait in the overlay. (Every commit a checkpoint: 12; none: 0.)
        assert_eq!(heads, 10);
    }

    /// Holds the planning of the `gate` write until the test opens it.
    static GATE: std::sync::Mutex<(bool, bool)> = std::sync::Mutex::new((false, false));
    static GATE_MOVED: std::sync::Condvar = std::sync::Condvar::new();

    /// The engine's rules, except that `boom` panics and `gate` waits for the test.
    fn test_planner(
        view: &dyn truce_engine::StateView,
        command: &WriteCommand,
        ctx: &WriteContext<'_>,
    ) -> Result<truce_engine::Planned, EngineError> {
        match command.key.id.as_str() {
            "boom" => panic!("a bug in the rules"),
            "gate" => {
                let mut gate = GATE.lock().unwrap();
                gate.0 = true; // planning has started
                GATE_MOVED.notify_all();
                while !gate.1 {
                    gate = GATE_MOVED.wait(gate).unwrap();
                }
            }
            _ => {}
        }
        truce_engine::plan_write(view, command, ctx)
    }

    /// A panic while planning one write of a batch fails that write only: the
    /// others of the same batch commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_planning_fails_only_that_write() {
        use std::sync::Arc;
        use truce_engine::{
            Document, DocumentLimits, Preconditions, Principal, Store, WriteAction,
        };

        use crate::embedded::EmbeddedStore;

        let dir = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::new(dir.path());
        config.planner = test_planner;
        let store = Arc::new(EmbeddedStore::open(config).unwrap());
        let write = |id: &'static str| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let doc = Document::parse(br#"{"n":1}"#, DocumentLimits::default()).unwrap();
                store
                    .write(WriteCommand {
                        key: ResourceKey::parse("things", id).unwrap(),
                        action: WriteAction::Put(doc),
                        preconditions: Preconditions::default(),
                        if_version: None,
                        by: Principal::anonymous(),
                        request_id: None,
                        resolves: None,
                    })
                    .await
            })
        };
        // The first batch is held in planning while the next three queue up.
        let gate = write("gate");
        tokio::task::spawn_blocking(|| {
            let mut state = GATE.lock().unwrap();
            while !state.0 {
                state = GATE_MOVED.wait(state).unwrap();
            }
        })
        .await
        .unwrap();
        let batch = [write("a"), write("boom"), write("b")];
        for spins in 0.. {
            if store.queued() >= 3 {
                break;
            }
            assert!(spins < 10_000_000, "the three writes never queued");
            tokio::task::yield_now().await;
        }
        {
            let mut state = GATE.lock().unwrap();
            state.1 = true;
            GATE_MOVED.notify_all();
        }
        assert!(gate.await.unwrap().is_ok());
        let [a, boom, b] = batch;
        assert!(matches!(boom.await.unwrap(), Err(EngineError::Internal(_))));
        for (id, task) in [("a", a), ("b", b)] {
            let outcome = task.await.unwrap().unwrap();
            assert_eq!(outcome.version.number, 1, "{id}");
            let key = ResourceKey::parse("things", id).unwrap();
            assert!(store.head(&key).await.unwrap().is_some(), "{id}");
        }
        let boom = ResourceKey::parse("things", "boom").unwrap();
        assert!(store.head(&boom).await.unwrap().is_none());
        store.close().await;
    }

    /// The engine's rules, plus a side record named by the document: `{"side":
    /// key, "value": text}` writes it, `"value": null` removes it; with
    /// If-Unmodified-Since `t` the value is `t{t}` instead. A write that changes
    /// nothing still carries it (a side record alone).
    fn side_planner(
        view: &dyn truce_engine::StateView,
        command: &WriteCommand,
        ctx: &WriteContext<'_>,
    ) -> Result<truce_engine::Planned, EngineError> {
        use truce_engine::{Effect, SideTable, SideWrite, WriteAction};
        let mut planned = truce_engine::plan_write(view, command, ctx)?;
        if let WriteAction::Put(doc) = &command.action {
            let doc: serde_json::Value = serde_json::from_slice(doc.bytes()).unwrap();
            let side = SideWrite {
                table: SideTable::Conflicts,
                key: doc["side"].as_str().unwrap().as_bytes().to_vec(),
                value: doc["value"].as_str().map(|v| {
                    let v = match command.preconditions.if_unmodified_since {
                        Some(t) => format!("t{t}"),
                        None => v.to_owned(),
                    };
                    bytes::Bytes::from(v)
                }),
            };
            planned
                .effect
                .get_or_insert_with(Effect::default)
                .side
                .push(side);
        }
        Ok(planned)
    }

    /// Side records commit with their write, survive a crash and a power loss, and
    /// a batch of side records alone moves no revision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn side_records_are_durable_and_move_no_revision() {
        use truce_engine::{
            Document, DocumentLimits, Preconditions, Principal, SideTable, Store, WriteAction,
        };

        use crate::embedded::EmbeddedStore;
        use crate::faults::{Faults, PowerLoss};

        async fn read(store: &EmbeddedStore, key: &str) -> Option<bytes::Bytes> {
            store
                .side_record(SideTable::Conflicts, key.as_bytes())
                .await
                .unwrap()
        }
        for power_loss in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let copy = tempfile::tempdir().unwrap();
            let faults = Faults::new();
            let mut config = EmbeddedConfig::new(dir.path());
            config.planner = side_planner;
            config.checkpoint_interval = std::time::Duration::from_secs(3600);
            config.faults = Some(faults.clone());
            let store = EmbeddedStore::open(config).unwrap();
            let put = |body: serde_json::Value| WriteCommand {
                key: ResourceKey::parse("things", "a").unwrap(),
                action: WriteAction::Put(
                    Document::parse(body.to_string().as_bytes(), DocumentLimits::default())
                        .unwrap(),
                ),
                preconditions: Preconditions::default(),
                if_version: None,
                by: Principal::anonymous(),
                request_id: None,
                resolves: None,
            };
            let first = store
                .write(put(serde_json::json!({"side": "k1", "value": "v1"})))
                .await
                .unwrap();
            assert_eq!(first.version.revision, 1);
            let second = store
                .write(put(serde_json::json!({"side": "k2", "value": "v2"})))
                .await
                .unwrap();
            assert_eq!(second.version.revision, 2);
            // The same content again: no version, only a new state of k2.
            let mut side_only = put(serde_json::json!({"side": "k2", "value": "v2"}));
            side_only.preconditions.if_unmodified_since = Some(4_102_444_800);
            let unchanged = store.write(side_only).await.unwrap();
            assert_eq!(
                unchanged.version.revision, 2,
                "a side record alone moved the revision"
            );
            let gone = store
                .write(put(serde_json::json!({"side": "k1", "value": null})))
                .await
                .unwrap();
            assert_eq!(gone.version.revision, 3);
            assert_eq!(read(&store, "k1").await, None);
            assert_eq!(
                read(&store, "k2").await.as_deref(),
                Some(&b"t4102444800"[..])
            );
            // Only the log holds them durably: crash (or lose power) and reopen.
            if power_loss {
                faults.power_loss(PowerLoss::DropUnsynced).unwrap();
            } else {
                for entry in std::fs::read_dir(dir.path()).unwrap() {
                    let entry = entry.unwrap();
                    std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
                }
            }
            store.close().await;
            let path = if power_loss { dir.path() } else { copy.path() };
            let reopened = EmbeddedStore::open(EmbeddedConfig::new(path)).unwrap();
            assert_eq!(reopened.open_report().revision, 3);
            assert_eq!(read(&reopened, "k1").await, None);
            assert_eq!(
                read(&reopened, "k2").await.as_deref(),
                Some(&b"t4102444800"[..])
            );
            reopened.close().await;
        }
    }
}
