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

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot, watch};
use truce_engine::{
    Batch, BatchNotes, BatchRules, CompactionPlan, CompactionReport, Delivery, EngineError,
    IdGenerator, LockJob, LockOutcome, ResolutionCommand, ResolutionOutcome, SettingsCommand,
    SettingsOutcome, SideCommit, SnapshotCommit, StorageError, Timestamp, TxnCommand, TxnOutcome,
    WriteCommand, WriteOutcome,
};

use crate::embedded::EmbeddedConfig;
use crate::error::{io, storage};
use crate::heads::Overlay;
use crate::health::{Health, Outage};
use crate::recovery::{open_database, recover};
use crate::reserve::Reserve;
use crate::snapshot::{Published, Snapshot};
use crate::wal::{FrameBuilder, Wal};
use crate::write_tables::WriteTables;
use jobs::FramedTables;

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
    /// Replace a collection's settings.
    Configure {
        command: Box<SettingsCommand>,
        reply: oneshot::Sender<Result<SettingsOutcome, EngineError>>,
    },
    /// Change a lock, or expire the leases that ran out.
    Lock {
        job: Box<LockJob>,
        reply: oneshot::Sender<Result<LockOutcome, EngineError>>,
    },
    /// Check and apply a batch transaction.
    Txn {
        command: Box<TxnCommand>,
        reply: oneshot::Sender<Result<TxnOutcome, EngineError>>,
    },
    /// Validate and apply an interactive transaction's commit.
    Snapshot {
        commit: Box<SnapshotCommit>,
        reply: oneshot::Sender<Result<TxnOutcome, EngineError>>,
    },
    /// Write side records the rules decided outside a write (subscriptions,
    /// delivery attempts), atomically.
    Side {
        commit: SideCommit,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Claim due webhook outbox rows for a node.
    Claim {
        keys: Vec<Vec<u8>>,
        node: String,
        until: Timestamp,
        reply: oneshot::Sender<Result<Vec<Delivery>, EngineError>>,
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
    Configure(Result<SettingsOutcome, EngineError>),
    Lock(Result<LockOutcome, EngineError>),
    Txn(Result<TxnOutcome, EngineError>),
    Side(Result<(), EngineError>),
    Claim(Result<Vec<Delivery>, EngineError>),
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
    /// The newest conflict event's position.
    events: watch::Sender<u64>,
    /// Moved after each commit that changed a lock.
    locks: watch::Sender<u64>,
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
    pub events: watch::Sender<u64>,
    pub locks: watch::Sender<u64>,
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
            events: start.events,
            locks: start.locks,
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
        let (answers, revision, changed, notes) = self
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
        // Conflict streams wake once the batch's events are readable.
        if let Some(position) = notes.last_event {
            self.events.send_replace(position);
        }
        if notes.locks_changed {
            self.locks.send_modify(|n| *n += 1);
        }
        notes.report();
        Ok((answers, revision, changed))
    }

    /// Plans each job against `tables` and writes its effect there (and into
    /// `frame`), in order; returns the answers, the revision reached, whether
    /// anything changed and what is left to do once the batch is durable.
    fn apply_jobs(
        &self,
        tables: &mut WriteTables<'_>,
        batch: &[Job],
        frame: &mut FrameBuilder,
    ) -> Result<(Vec<Answer>, u64, bool, BatchNotes), StorageError> {
        let start = tables.revision()?;
        let rules = BatchRules {
            limits: self.settings.limits,
            retention: &self.settings.retention,
            planner: self.settings.planner,
            conflict_ids: &self.conflict_ids,
        };
        let mut state = Batch::new(rules, start, Timestamp::now());
        let mut compacted = false;
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            let answer = match job {
                Job::Compact { plan, .. } => {
                    compacted = true;
                    Answer::Compact(Ok(tables.compact(plan)?))
                }
                Job::Shutdown { .. } => Answer::Shutdown,
                job => {
                    let mut framed = FramedTables {
                        tables: &mut *tables,
                        frame: &mut *frame,
                    };
                    match job {
                        Job::Write { command, .. } => {
                            Answer::Write(state.write(&mut framed, command)?)
                        }
                        Job::Resolve { command, .. } => {
                            Answer::Resolve(state.resolve(&mut framed, command)?)
                        }
                        Job::Configure { command, .. } => {
                            Answer::Configure(state.configure(&mut framed, command)?)
                        }
                        Job::Lock { job, .. } => Answer::Lock(state.lock(&mut framed, job)?),
                        Job::Txn { command, .. } => {
                            Answer::Txn(state.transaction(&mut framed, command)?)
                        }
                        Job::Snapshot { commit, .. } => {
                            Answer::Txn(state.commit_snapshot(&mut framed, commit)?)
                        }
                        Job::Side { commit, .. } => Answer::Side(state.side(&mut framed, commit)?),
                        Job::Claim {
                            keys, node, until, ..
                        } => Answer::Claim(Ok(state.claim(&mut framed, keys, node, *until)?)),
                        Job::Compact { .. } | Job::Shutdown { .. } => Answer::Shutdown,
                    }
                }
            };
            answers.push(answer);
        }
        let revision = state.revision();
        let changed = state.changed() || compacted;
        Ok((answers, revision, changed, state.into_notes()))
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
        (Job::Configure { reply, .. }, Answer::Configure(result)) => {
            let _ = reply.send(result);
        }
        (Job::Lock { reply, .. }, Answer::Lock(result)) => {
            let _ = reply.send(result);
        }
        (Job::Txn { reply, .. } | Job::Snapshot { reply, .. }, Answer::Txn(result)) => {
            let _ = reply.send(result);
        }
        (Job::Side { reply, .. }, Answer::Side(result)) => {
            let _ = reply.send(result);
        }
        (Job::Claim { reply, .. }, Answer::Claim(result)) => {
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
        Job::Configure { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Lock { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Txn { reply, .. } | Job::Snapshot { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Side { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Claim { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Job::Shutdown { reply } => {
            let _ = reply.send(());
        }
    }
}

mod jobs;
#[cfg(test)]
mod tests;
