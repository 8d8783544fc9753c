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
//! its answer: a 2xx always means "on disk". The fsync is of the batch's frame in the
//! [write-ahead log](crate::wal); what the batch wrote sits in the active in-memory
//! [layer](crate::layer), and a [snapshot](crate::snapshot) of the new state is
//! published before any answer, so readers never see a write before it is on disk.
//! The sequencer does not write redb on this path at all.
//!
//! Checkpoints run beside it: every `checkpoint_interval` (or `checkpoint_bytes` of
//! log, or `checkpoint_heads` heads in the active layer) the active layer is frozen,
//! the log goes on in its other file, and the [checkpointer](checkpointer) thread
//! writes the frozen layer into redb in one durable commit while later batches go
//! on. When it is done, the sequencer swaps in a snapshot of that commit and drops
//! the frozen layer. Only compactions, shutdown and `--checkpoint-interval 0s` make
//! a batch wait for a checkpoint (its own, made on this thread), and so does a batch
//! that finds the active layer twice over its limits while one is still running.
//!
//! Concurrency: nothing else writes, so checks and writes are atomic without locks.
//! Readers use published MVCC snapshots and never wait for this thread. A panic
//! while planning one job fails that job only (planning writes nothing). On
//! shutdown the sequencer commits what is queued, then stops; later writes are
//! refused.
//!
//! Faults: if any durable step of a batch fails (appending or syncing its frame,
//! growing the log, a checkpoint it waits for or makes), no job of the batch took
//! effect and every one is answered with the storage error (503, `disk-full` or
//! `io-error`). A background checkpoint that fails refuses the batches after it
//! the same way, although nothing acknowledged depends on it (the log holds it). The sequencer then refuses writes (an [`Outage`]) and probes
//! with back-off until the store is back in a known-good state
//! ([`crate::recovery`]): the log's tail made unreadable, and redb reopened from
//! its file and recovered when redb itself failed. Readers keep the last published
//! snapshot throughout. Nothing is assumed to have reached the disk after a failed
//! fsync: recovery works from what is known durable.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use redb::Database;
use tokio::sync::{mpsc, oneshot, watch};
use truce_engine::{
    Batch, BatchNotes, BatchRules, CompactionPlan, CompactionReport, Delivery, EngineError,
    IdGenerator, LockJob, LockOutcome, LockSignals, ResolutionCommand, ResolutionOutcome,
    SettingsCommand, SettingsOutcome, SideCommit, SnapshotCommit, StorageError, Timestamp,
    TxnCommand, TxnOutcome, WriteCommand, WriteOutcome,
};

use crate::embedded::EmbeddedConfig;
use crate::error::{io, storage};
use crate::health::{Health, Outage};
use crate::recovery::{open_database, recover};
use crate::reserve::Reserve;
use crate::snapshot::{Base, Published, Snapshot};
use crate::wal::{FrameBuilder, Wal};
use crate::write_tables::WriteTables;
use checkpointer::{Checkpointer, Done, Work};
use jobs::Planning;

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
    /// Nothing to do but look for a finished checkpoint (the checkpointer's
    /// nudge).
    Wake,
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
pub(super) struct Failed {
    error: StorageError,
    database_suspect: bool,
}

impl Failed {
    /// A failure of redb (its state is unknown until it is opened again).
    pub(super) fn database(error: impl Into<redb::Error>) -> Self {
        Self::database_error(storage(error))
    }

    pub(super) fn database_error(error: StorageError) -> Self {
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
    /// The state after the last committed batch (what the next batch plans
    /// against); `None` once stopped.
    current: Option<Snapshot>,
    /// The database; `None` only while it is being opened again after a fault.
    /// Shared with the checkpointer while it writes.
    db: Option<Arc<Database>>,
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
    /// When the last checkpoint began.
    last_checkpoint: Instant,
    checkpointer: Checkpointer,
    jobs: mpsc::Receiver<Job>,
    revisions: watch::Sender<u64>,
    /// The newest conflict event's position.
    events: watch::Sender<u64>,
    /// Told after each commit that changed a lock.
    lock_waits: Arc<LockSignals>,
    settings: EmbeddedConfig,
}

/// What the sequencer starts from.
pub(crate) struct SequencerStart {
    pub db: Database,
    /// Must hold nothing the database lacks (see [`recover`]).
    pub wal: Wal,
    /// Readers' snapshot of the recovered state (no layers).
    pub published: Arc<Published>,
    /// The revision of that snapshot.
    pub revision: u64,
    /// Room kept for recovering from a full disk.
    pub reserve: Reserve,
    pub health: Arc<Health>,
    pub jobs: mpsc::Receiver<Job>,
    /// For the checkpointer's nudges; does not keep the queue open.
    pub wake: mpsc::WeakSender<Job>,
    pub revisions: watch::Sender<u64>,
    pub events: watch::Sender<u64>,
    pub lock_waits: Arc<LockSignals>,
    pub settings: EmbeddedConfig,
}

/// What one batch came to once durable.
struct Committed {
    answers: Vec<Answer>,
    revision: u64,
    /// Whether anything changed (and was published).
    changed: bool,
}

impl Sequencer {
    /// Starts the writer thread on a freshly recovered store.
    pub fn spawn(start: SequencerStart) -> std::io::Result<JoinHandle<()>> {
        let current = start
            .published
            .load()
            .map(|snapshot| (*snapshot).clone())
            .ok();
        let sequencer = Self {
            current,
            db: Some(Arc::new(start.db)),
            wal: start.wal,
            frame: FrameBuilder::default(),
            published_revision: start.revision,
            outage: None,
            reserve: start.reserve,
            conflict_ids: IdGenerator::new(),
            health: start.health,
            last_checkpoint: Instant::now(),
            checkpointer: Checkpointer::spawn(start.wake)?,
            published: start.published,
            jobs: start.jobs,
            revisions: start.revisions,
            events: start.events,
            lock_waits: start.lock_waits,
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
        self.checkpointer.stop();
        self.published.clear();
        self.current = None;
        drop(self.db.take());
        tracing::debug!("sequencer stopped");
    }

    /// Builds, commits and answers one batch (or refuses it during an outage).
    fn run_batch(&mut self, batch: Vec<Job>) {
        self.collect_checkpoint();
        let batch: Vec<Job> = batch
            .into_iter()
            .filter(|job| !matches!(job, Job::Wake))
            .collect();
        if batch.is_empty() {
            // Woken by the checkpointer: a layer that came due while it ran
            // goes next, rather than waiting for the next write to notice.
            self.start_checkpoint_if_due(self.published_revision);
            return;
        }
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
            Ok(Committed {
                answers,
                revision,
                changed,
            }) => {
                if changed {
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
                self.start_checkpoint_if_due(revision);
            }
            Err(failed) => {
                tracing::error!(error = %failed.error, batch = size, "commit failed; the whole batch is refused");
                metrics::counter!("truce_commit_failures_total").increment(1);
                let error = failed.error.clone();
                self.begin_outage(failed);
                for job in batch {
                    fail(job, error.clone());
                }
            }
        }
    }

    /// Refuses writes from now on, until a probe brings the store back. The
    /// outage (and readiness) is in place before anyone hears of the failure.
    fn begin_outage(&mut self, failed: Failed) {
        self.outage = Some(Outage::begin(
            self.outage.take(),
            failed.error,
            failed.database_suspect,
            &self.health,
        ));
    }

    /// Takes in a background checkpoint that finished, if one did.
    fn collect_checkpoint(&mut self) {
        if let Some(done) = self.checkpointer.collect()
            && let Err(failed) = self.finish_checkpoint(done)
        {
            tracing::error!(error = %failed.error, "checkpoint failed; writes are refused until the store is recovered");
            metrics::counter!("truce_commit_failures_total").increment(1);
            self.begin_outage(failed);
        }
    }

    /// Waits for the checkpoint in flight, if any, and takes it in.
    fn await_checkpoint(&mut self) -> Result<(), Failed> {
        let started = Instant::now();
        match self.checkpointer.wait() {
            Some(done) => {
                metrics::histogram!("truce_checkpoint_wait_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.finish_checkpoint(done)
            }
            None => Ok(()),
        }
    }

    /// A checkpoint is durable: its snapshot replaces the base of the state, and
    /// the frozen layer it wrote is dropped. Readers get the same state on the
    /// new base.
    fn finish_checkpoint(&mut self, done: Done) -> Result<(), Failed> {
        let base = done?;
        if let Some(current) = &mut self.current {
            current.base = base;
            current.layers.frozen = None;
            self.published.store(current.clone());
        }
        Ok(())
    }

    /// Freezes the active layer and hands it to the checkpointer when a
    /// checkpoint is due and none is running.
    fn start_checkpoint_if_due(&mut self, revision: u64) {
        if self.checkpointer.in_flight || self.outage.is_some() {
            return;
        }
        let (Some(current), Some(db)) = (&mut self.current, &self.db) else {
            return;
        };
        let active = &current.layers.active;
        let settings = &self.settings;
        let due = self.wal.len() >= settings.checkpoint_bytes
            || active.heads.len() >= settings.checkpoint_heads
            || self.last_checkpoint.elapsed() >= settings.checkpoint_interval;
        if active.is_empty() || !due {
            return;
        }
        let frozen = std::mem::take(&mut current.layers.active);
        current.layers.frozen = Some(frozen.clone());
        let epoch = self.wal.epoch() + 1;
        self.wal.switch(epoch);
        self.last_checkpoint = Instant::now();
        let work = Work {
            db: Arc::clone(db),
            layer: frozen,
            revision,
            epoch,
        };
        if self.checkpointer.start(work).is_err() {
            // Never expected: the log holds everything; recovery rebuilds from it.
            self.begin_outage(Failed::database_error(StorageError::Io(
                "the checkpointer is gone".into(),
            )));
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
    /// resume only once the log has room for more frames and the reserve is whole
    /// again.
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
        if disk_full {
            // A refused frame may have been the log growing; room for the next
            // ones first, or the next write fails the same way.
            self.wal.ensure_room(1024 * 1024).map_err(Failed::log)?;
        }
        self.reserve.ensure().map_err(Failed::log)
    }

    /// Closes redb, opens it again from its file, recovers as on open and publishes
    /// a fresh snapshot.
    fn reopen(&mut self) -> Result<(), Failed> {
        // The checkpointer must let go of the database first; whatever it did,
        // recovery starts from the file.
        let _ = self.checkpointer.wait();
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
        let snapshot = Snapshot::of(Base::open(&db).map_err(Failed::database_error)?);
        self.published.store(snapshot.clone());
        self.current = Some(snapshot);
        self.db = Some(Arc::new(db));
        Ok(())
    }

    /// Whether this batch must be made durable by a checkpoint of its own, on this
    /// thread: compactions and shutdown write redb directly, and a zero interval
    /// makes every commit one.
    fn checkpoints_itself(&self, batch: &[Job]) -> bool {
        self.settings.checkpoint_interval.is_zero()
            || batch
                .iter()
                .any(|j| matches!(j, Job::Compact { .. } | Job::Shutdown { .. }))
    }

    /// Whether the active layer is twice over a checkpoint's limits while the
    /// last checkpoint still runs: the next batch waits for it rather than grow
    /// memory without bound.
    fn layer_overfull(&self) -> bool {
        let Some(current) = &self.current else {
            return false;
        };
        self.checkpointer.in_flight
            && (self.wal.len() >= self.settings.checkpoint_bytes.saturating_mul(2)
                || current.layers.active.heads.len()
                    >= self.settings.checkpoint_heads.saturating_mul(2))
    }

    /// Plans every job against the current state, then makes the batch durable
    /// (its frame, or a checkpoint of its own) and publishes it if anything
    /// changed.
    fn build_and_commit(&mut self, batch: &[Job]) -> Result<Committed, Failed> {
        let checkpoint = self.checkpoints_itself(batch);
        if checkpoint || self.layer_overfull() {
            self.await_checkpoint()?;
        }
        let mut state = self
            .current
            .clone()
            .ok_or_else(|| Failed::database_error(StorageError::Closed))?;
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        let (mut answers, revision, mut changed, notes) = self
            .apply_jobs(&mut state, batch, &mut frame)
            .map_err(Failed::database_error)?;
        let result = if checkpoint {
            let unflushed = !state.layers.active.is_empty();
            if changed || unflushed {
                self.checkpoint_now(&mut state, revision, batch, &mut answers)
                    .map(|()| changed = true)
            } else {
                Ok(())
            }
        } else if changed {
            // On failure the state is dropped unapplied; the log's tail is
            // invalidated by the outage's probe.
            let appending = Instant::now();
            let appended = self.wal.append(&mut frame).map_err(Failed::log);
            metrics::histogram!("truce_log_append_seconds")
                .record(appending.elapsed().as_secs_f64());
            appended
        } else {
            Ok(())
        };
        self.frame = frame;
        result?;
        if changed {
            self.published.store(state.clone());
            self.published_revision = revision;
        }
        self.current = Some(state);
        // Conflict streams wake once the batch's events are readable.
        if let Some(position) = notes.last_event {
            self.events.send_replace(position);
        }
        self.lock_waits.signal(notes.lock_groups);
        notes.report();
        Ok(Committed {
            answers,
            revision,
            changed,
        })
    }

    /// Makes `state` durable in redb on this thread, with the batch's
    /// compactions, as one commit: afterwards every frame in the log is
    /// redundant, and `state` is a snapshot of the commit with no layers. The
    /// compactions' answers replace their placeholders in `answers`.
    fn checkpoint_now(
        &mut self,
        state: &mut Snapshot,
        revision: u64,
        batch: &[Job],
        answers: &mut [Answer],
    ) -> Result<(), Failed> {
        let started = Instant::now();
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| Failed::database_error(StorageError::Closed))?;
        let next_epoch = self.wal.epoch() + 1;
        let txn = db.begin_write().map_err(Failed::database)?;
        {
            let mut tables = WriteTables::open(&txn).map_err(Failed::database_error)?;
            tables
                .write_layer(&state.layers.active, revision)
                .map_err(Failed::database_error)?;
            for (job, answer) in batch.iter().zip(answers.iter_mut()) {
                if let Job::Compact { plan, .. } = job {
                    *answer = Answer::Compact(Ok(tables
                        .compact(plan)
                        .map_err(Failed::database_error)?));
                }
            }
            tables
                .set_wal_epoch(next_epoch)
                .map_err(Failed::database_error)?;
        }
        txn.commit().map_err(Failed::database)?;
        self.wal.restart(next_epoch);
        self.last_checkpoint = Instant::now();
        *state = Snapshot::of(Base::open(db).map_err(Failed::database_error)?);
        metrics::histogram!("truce_checkpoint_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Plans each job against `state` and writes its effect into its active layer
    /// (and into `frame`), in order; returns the answers (a compaction's is filled
    /// in by the checkpoint that applies it), the revision reached, whether
    /// anything changed and what is left to do once the batch is durable.
    fn apply_jobs(
        &self,
        state: &mut Snapshot,
        batch: &[Job],
        frame: &mut FrameBuilder,
    ) -> Result<(Vec<Answer>, u64, bool, BatchNotes), StorageError> {
        let start = state.revision()?;
        let rules = BatchRules {
            limits: self.settings.limits,
            retention: &self.settings.retention,
            planner: self.settings.planner,
            conflict_ids: &self.conflict_ids,
        };
        let mut batch_state = Batch::new(rules, start, Timestamp::now());
        let mut compacted = false;
        let mut answers = Vec::with_capacity(batch.len());
        let mut tables = Planning { state, frame };
        for job in batch {
            let answer = match job {
                Job::Compact { .. } => {
                    compacted = true;
                    Answer::Compact(Ok(CompactionReport::default()))
                }
                Job::Shutdown { .. } | Job::Wake => Answer::Shutdown,
                Job::Write { command, .. } => {
                    Answer::Write(batch_state.write(&mut tables, command)?)
                }
                Job::Resolve { command, .. } => {
                    Answer::Resolve(batch_state.resolve(&mut tables, command)?)
                }
                Job::Configure { command, .. } => {
                    Answer::Configure(batch_state.configure(&mut tables, command)?)
                }
                Job::Lock { job, .. } => Answer::Lock(batch_state.lock(&mut tables, job)?),
                Job::Txn { command, .. } => {
                    Answer::Txn(batch_state.transaction(&mut tables, command)?)
                }
                Job::Snapshot { commit, .. } => {
                    Answer::Txn(batch_state.commit_snapshot(&mut tables, commit)?)
                }
                Job::Side { commit, .. } => Answer::Side(batch_state.side(&mut tables, commit)?),
                Job::Claim {
                    keys, node, until, ..
                } => Answer::Claim(Ok(batch_state.claim(&mut tables, keys, node, *until)?)),
            };
            answers.push(answer);
        }
        let revision = batch_state.revision();
        let changed = batch_state.changed() || compacted;
        Ok((answers, revision, changed, batch_state.into_notes()))
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
        (Job::Wake, _) => {}
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
        Job::Wake => {}
    }
}

mod checkpointer;
mod jobs;
#[cfg(test)]
mod tests;
