//! A node's writer: group commit over one SQL transaction per batch.
//!
//! One thread per node takes the writes queued on the node, drains up to
//! `max_batch` of them and runs them as one transaction at READ COMMITTED:
//!
//! 1. `SELECT ... FROM truce_commit FOR UPDATE` locks the one commit row. Every
//!    write transaction of every node takes this lock first, so writers are
//!    serialised across nodes, each sees everything committed before it (each
//!    statement at READ COMMITTED reads the newest committed data), and the
//!    revision it reads is the newest one.
//! 2. The engine's [`Batch`] plans each job against the transaction
//!    ([`SqlView`]) and stores its effect in it; a refused job leaves nothing but
//!    its conflict record.
//! 3. The commit row gets the batch's revision, `pg_notify('truce', ...)` wakes
//!    the other nodes' listeners, and the transaction commits. Only then does any
//!    job get its answer.
//!
//! Revisions are therefore gap-free and in commit order across nodes. The cost:
//! writers of all nodes take turns on one row, so a batch's transaction time
//! (its round trips to the database) bounds the store's write rate; group commit
//! makes each turn carry many writes.
//!
//! Any failure (the database down, a statement refused, a lost connection) fails
//! the whole batch: the transaction is rolled back (or dies with its connection),
//! every job is answered with a storage error (503), and the next batch starts
//! on a fresh connection.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use truce_engine::{
    Batch, BatchNotes, BatchRules, CompactionPlan, CompactionReport, Delivery, DocumentLimits,
    EngineError, IdGenerator, LockJob, LockOutcome, LockSignals, Planner, ResolutionCommand,
    ResolutionOutcome, Retention, SettingsCommand, SettingsOutcome, SideCommit, SnapshotCommit,
    StorageError, Timestamp, TxnCommand, TxnOutcome, WriteCommand, WriteOutcome,
};

use crate::error::storage;
use crate::sql::{SqlView, big};

/// A unit of work for the writer, with the channel its answer goes to.
pub(crate) enum Job {
    Write {
        command: Box<WriteCommand>,
        reply: oneshot::Sender<Result<WriteOutcome, EngineError>>,
    },
    Resolve {
        command: Box<ResolutionCommand>,
        reply: oneshot::Sender<Result<ResolutionOutcome, EngineError>>,
    },
    Configure {
        command: Box<SettingsCommand>,
        reply: oneshot::Sender<Result<SettingsOutcome, EngineError>>,
    },
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
    /// Remove what a compaction scan selected.
    Compact {
        plan: Box<CompactionPlan>,
        reply: oneshot::Sender<Result<CompactionReport, EngineError>>,
    },
    /// Commit what came before, then stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// A job with the moment its request must have been answered by.
pub(crate) struct Queued {
    pub until: Instant,
    pub job: Job,
}

/// The answer a job gets once its batch committed.
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

/// What the writer works with.
pub(crate) struct Writer {
    pub pool: Pool,
    pub handle: Handle,
    pub jobs: mpsc::Receiver<Queued>,
    pub revisions: watch::Sender<u64>,
    pub events: watch::Sender<u64>,
    /// Told after each commit that changed a lock (this node's lock waiters
    /// and expiry keeper; other nodes hear through the listener).
    pub lock_waits: Arc<LockSignals>,
    pub limits: DocumentLimits,
    pub retention: Retention,
    pub planner: Planner,
    pub max_batch: usize,
    /// How long a request may wait for the database (queued, planned,
    /// committed) before it is answered 503.
    pub deadline: Duration,
    pub conflict_ids: IdGenerator,
}

impl Writer {
    /// Runs until a shutdown job or until every sender is gone.
    pub(crate) fn run(mut self) {
        let mut queued = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.jobs.blocking_recv() {
            queued.push(first);
            while queued.len() < self.max_batch {
                match self.jobs.try_recv() {
                    Ok(job) => queued.push(job),
                    Err(_) => break,
                }
            }
            // A job whose request ran out of time while it waited (the database
            // is slow or gone, and earlier batches took their full time) is
            // answered without trying, so no request waits past its deadline.
            let now = Instant::now();
            let (late, batch): (Vec<_>, Vec<_>) = queued
                .drain(..)
                .partition(|q| q.until <= now && !matches!(q.job, Job::Shutdown { .. }));
            for q in late {
                fail(q.job, &unreachable_database());
            }
            let Some(until) = batch.iter().map(|q| q.until).min() else {
                continue;
            };
            let batch: Vec<Job> = batch.into_iter().map(|q| q.job).collect();
            let stop = batch.iter().any(|j| matches!(j, Job::Shutdown { .. }));
            let started = Instant::now();
            match self.commit(&batch, until) {
                Ok((answers, committed)) => {
                    if committed {
                        metrics::histogram!("truce_commit_batch_size").record(batch.len() as f64);
                        metrics::histogram!("truce_commit_seconds")
                            .record(started.elapsed().as_secs_f64());
                    }
                    for (job, answer) in batch.into_iter().zip(answers) {
                        deliver(job, answer);
                    }
                }
                Err(error) => {
                    metrics::counter!("truce_commit_failures_total").increment(1);
                    if let Some(reason) = error.reason() {
                        metrics::counter!("truce_storage_faults_total", "reason" => reason)
                            .increment(1);
                    }
                    tracing::warn!(%error, jobs = batch.len(), "a batch failed");
                    for job in batch {
                        fail(job, &error);
                    }
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Plans and commits one batch in one transaction, done by `until`;
    /// answers come back only once it committed (with whether anything was
    /// committed).
    fn commit(&self, jobs: &[Job], until: Instant) -> Result<(Vec<Answer>, bool), StorageError> {
        let client = self.handle.block_on(async {
            tokio::time::timeout_at(until, self.pool.get())
                .await
                .map_err(|_| unreachable_database())?
                .map_err(storage)
        })?;
        let mut view = SqlView::new(self.handle.clone(), &client, until);
        let staged = match self.stage(&mut view, jobs) {
            Ok(staged) => staged,
            Err(error) => {
                // The connection may be dead or stuck mid-statement: never hand
                // it out again. Closing it ends the transaction.
                discard(client);
                return Err(error);
            }
        };
        let outcome = if staged.changed {
            view.within(async { view.client.batch_execute("COMMIT").await.map_err(storage) })
        } else {
            view.within(async { view.client.batch_execute("ROLLBACK").await.map_err(storage) })
        };
        match outcome {
            Ok(()) => drop(client),
            // Nothing to commit: the answers stand whatever became of the
            // ROLLBACK (the transaction ends with its connection).
            Err(_) if !staged.changed => discard(client),
            // The COMMIT was sent and its answer is lost: ask, within the
            // requests' time (and at least a quarter of a deadline, so a COMMIT
            // that failed at the last moment still gets an honest try).
            Err(error @ StorageError::Unreachable(_)) => {
                discard(client);
                tracing::warn!(%error, xid = staged.xid, "the answer to a COMMIT was lost; asking whether it committed");
                self.settle(staged.xid, until.max(Instant::now() + self.deadline / 4))?;
            }
            // The database answered: the transaction did not commit.
            Err(error) => {
                discard(client);
                return Err(error);
            }
        }
        let Staged {
            answers,
            notes,
            revision,
            changed,
            ..
        } = staged;
        self.lock_waits.signal(notes.lock_groups);
        if changed {
            self.revisions
                .send_if_modified(|seen| raise(seen, revision));
        }
        if let Some(position) = notes.last_event {
            self.events.send_if_modified(|seen| raise(seen, position));
        }
        notes.report();
        Ok((answers, changed))
    }

    /// Everything of one batch's transaction but its end: the answers, what is
    /// left to do once committed, and whether there is anything to commit.
    fn stage(&self, view: &mut SqlView<'_>, jobs: &[Job]) -> Result<Staged, StorageError> {
        // The resources the batch writes (a transaction's every op) or locks:
        // their heads, settings and lock records are read with the commit row,
        // in one round trip, rather than one statement each later.
        let mut keys: Vec<&truce_engine::ResourceKey> = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::Write { command, .. } => keys.push(&command.key),
                Job::Txn { command, .. } => keys.extend(command.ops.iter().map(|op| op.key())),
                Job::Snapshot { commit, .. } => keys.extend(commit.reads.iter()),
                Job::Lock { job, .. } => {
                    if let truce_engine::LockJob::On { key, .. } = job.as_ref() {
                        keys.push(key);
                    }
                }
                _ => {}
            }
        }
        let mut collections: Vec<&truce_engine::CollectionName> =
            keys.iter().map(|key| &key.collection).collect();
        collections.sort_unstable();
        collections.dedup();
        // The API keys the batch's writes must still find (or that none exists).
        let mut key_checks: Vec<&truce_engine::KeyCheck> = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Write { command, .. } => command.key_check.as_ref(),
                _ => None,
            })
            .collect();
        key_checks.dedup();
        let (revision, xid, now) = view.begin(&keys, &collections, &key_checks)?;
        let rules = BatchRules {
            limits: self.limits,
            retention: &self.retention,
            planner: self.planner,
            conflict_ids: &self.conflict_ids,
        };
        // The database's clock: leases expire on one clock across nodes.
        let mut batch = Batch::new(rules, revision, now);
        let mut answers = Vec::with_capacity(jobs.len());
        let mut compacted = false;
        for job in jobs {
            answers.push(match job {
                Job::Write { command, .. } => Answer::Write(batch.write(view, command)?),
                Job::Resolve { command, .. } => Answer::Resolve(batch.resolve(view, command)?),
                Job::Configure { command, .. } => {
                    Answer::Configure(batch.configure(view, command)?)
                }
                Job::Lock { job, .. } => Answer::Lock(batch.lock(view, job)?),
                Job::Txn { command, .. } => Answer::Txn(batch.transaction(view, command)?),
                Job::Snapshot { commit, .. } => Answer::Txn(batch.commit_snapshot(view, commit)?),
                Job::Side { commit, .. } => Answer::Side(batch.side(view, commit)?),
                Job::Claim {
                    keys, node, until, ..
                } => Answer::Claim(Ok(batch.claim(view, keys, node, *until)?)),
                Job::Compact { plan, .. } => {
                    compacted = true;
                    view.forget_reads();
                    Answer::Compact(Ok(crate::compaction::apply(view, plan)?))
                }
                Job::Shutdown { .. } => Answer::Shutdown,
            });
        }
        let changed = batch.changed() || compacted;
        let revision = batch.revision();
        let notes = batch.into_notes();
        if changed {
            let events = big(notes.last_event.unwrap_or(0));
            // One statement: the commit row moves and the other nodes are
            // woken. Awaited, so a write of the batch that failed (and aborted
            // the transaction) fails it here, before any COMMIT. The
            // notification says `revision events lock-groups lock-counter`
            // (`crate::listener`).
            let groups = notes.lock_groups;
            let locks = i64::from(!groups.is_empty());
            view.query(
                "UPDATE truce_commit SET revision = $1, events = greatest(events, $2), \
                 locks = locks + $4 \
                 RETURNING pg_notify('truce', $3::text || ' ' || locks::text)",
                &[
                    &big(revision),
                    &events,
                    &format!("{revision} {events} {}", groups.bits()),
                    &locks,
                ],
            )?;
        }
        Ok(Staged {
            answers,
            notes,
            revision,
            changed,
            xid,
        })
    }

    /// The answer to a batch's COMMIT was lost (the connection failed or went
    /// silent): asks the database, on fresh connections, whether transaction
    /// `xid` committed, until `until`. Committed: the batch is answered as
    /// committed. Aborted: a 503 (nothing was applied). Still unknown then:
    /// 503 `commit-unknown`.
    fn settle(&self, xid: i64, until: Instant) -> Result<(), StorageError> {
        let mut pause = Duration::from_millis(20);
        loop {
            match self.handle.block_on(commit_status(&self.pool, xid, until)) {
                Some(true) => {
                    tracing::info!(xid, "the batch whose COMMIT answer was lost committed");
                    return Ok(());
                }
                Some(false) => {
                    return Err(StorageError::Unreachable(
                        "the connection to the database failed before the batch committed".into(),
                    ));
                }
                None => {}
            }
            if Instant::now() + pause >= until {
                return Err(StorageError::CommitUnknown(format!(
                    "transaction {xid}: the database could not be asked in time"
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// A batch's transaction, planned and stored, before its COMMIT.
struct Staged {
    answers: Vec<Answer>,
    notes: BatchNotes,
    /// The revision the batch commits at (the one it found if nothing moved it).
    revision: u64,
    /// Whether there is anything to commit.
    changed: bool,
    /// The transaction's id, to ask after a lost COMMIT answer.
    xid: i64,
}

/// Whether transaction `xid` committed (`Some(true)`), was rolled back
/// (`Some(false)`), or cannot be told yet (still in progress, or the database
/// cannot be reached before `until`).
async fn commit_status(pool: &Pool, xid: i64, until: Instant) -> Option<bool> {
    let client = tokio::time::timeout_at(until, pool.get())
        .await
        .ok()?
        .ok()?;
    let asked = tokio::time::timeout_at(
        until,
        client.query_one("SELECT txid_status($1)::text", &[&xid]),
    )
    .await;
    let Ok(Ok(row)) = asked else {
        discard(client);
        return None;
    };
    match row.try_get::<_, Option<String>>(0).ok()??.as_str() {
        "committed" => Some(true),
        "aborted" => Some(false),
        _ => None,
    }
}

/// Takes a connection out of the pool for good (closing it), for one that failed
/// or may be stuck with a statement in flight.
pub(crate) fn discard(client: deadpool_postgres::Object) {
    drop(deadpool_postgres::Object::take(client));
}

/// Moves a watched counter forward only.
fn raise(seen: &mut u64, to: u64) -> bool {
    if to > *seen {
        *seen = to;
        true
    } else {
        false
    }
}

/// The database did not answer within the batch's deadline.
pub(crate) fn unreachable_database() -> StorageError {
    StorageError::Unreachable("the database did not answer in time".into())
}

fn deliver(job: Job, answer: Answer) {
    match (job, answer) {
        (Job::Write { reply, .. }, Answer::Write(result)) => {
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
        (Job::Compact { reply, .. }, Answer::Compact(result)) => {
            let _ = reply.send(result);
        }
        (Job::Claim { reply, .. }, Answer::Claim(result)) => {
            let _ = reply.send(result);
        }
        (Job::Shutdown { reply }, _) => {
            let _ = reply.send(());
        }
        (job, _) => fail(job, &StorageError::Corrupt("answer of another job".into())),
    }
}

fn fail(job: Job, error: &StorageError) {
    let error = || EngineError::Storage(error.clone());
    match job {
        Job::Write { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Job::Resolve { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Job::Configure { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Job::Lock { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Job::Txn { reply, .. } | Job::Snapshot { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Job::Side { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Job::Compact { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Job::Claim { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Job::Shutdown { reply } => {
            let _ = reply.send(());
        }
    }
}
