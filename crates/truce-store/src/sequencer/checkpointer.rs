//! The checkpointer: a thread that writes a frozen layer into redb in one durable
//! commit while the sequencer goes on with later batches.
//!
//! The sequencer hands it one checkpoint at a time (the database, the frozen
//! layer, the revision it is complete to and the log epoch it starts); it answers
//! with a read snapshot of the commit, or why it failed, on a channel of its own,
//! and wakes the sequencer with a [`Job::Wake`] in case it is idle. A panic while
//! writing is a failed checkpoint, not a dead thread.

use std::sync::Arc;
use std::sync::mpsc as sync_mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use redb::Database;
use tokio::sync::mpsc;

use super::{Failed, Job};
use crate::layer::Layer;
use crate::snapshot::Base;
use crate::write_tables::WriteTables;

/// One checkpoint to make.
pub(super) struct Work {
    pub db: Arc<Database>,
    pub layer: Layer,
    /// The revision the layer is complete to.
    pub revision: u64,
    /// The log epoch frames written since the layer was frozen carry.
    pub epoch: u64,
}

/// What a checkpoint came to: the state it committed, or why it failed.
pub(super) type Done = Result<Arc<Base>, Failed>;

/// The sequencer's handle on the checkpointer thread.
pub(super) struct Checkpointer {
    work: Option<sync_mpsc::Sender<Work>>,
    done: sync_mpsc::Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// Whether a checkpoint was handed over and not yet collected.
    pub in_flight: bool,
}

impl Checkpointer {
    /// Starts the thread; `wake` reaches the sequencer without keeping its queue
    /// open.
    pub fn spawn(wake: mpsc::WeakSender<Job>) -> std::io::Result<Self> {
        let (work_tx, work_rx) = sync_mpsc::channel::<Work>();
        let (done_tx, done_rx) = sync_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("truce-checkpointer".into())
            .spawn(move || {
                yield_to_writers();
                while let Ok(work) = work_rx.recv() {
                    let started = Instant::now();
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        write_checkpoint(&work)
                    }))
                    .unwrap_or_else(|_| {
                        Err(Failed::database_error(truce_engine::StorageError::Io(
                            "the checkpoint panicked".into(),
                        )))
                    });
                    // The database is the sequencer's again before it hears back.
                    drop(work);
                    metrics::histogram!("truce_checkpoint_seconds")
                        .record(started.elapsed().as_secs_f64());
                    if done_tx.send(result).is_err() {
                        break;
                    }
                    if let Some(jobs) = wake.upgrade() {
                        // A full queue means the sequencer is busy and collects
                        // the result before its next batch anyway.
                        let _ = jobs.try_send(Job::Wake);
                    }
                }
            })?;
        Ok(Self {
            work: Some(work_tx),
            done: done_rx,
            thread: Some(thread),
            in_flight: false,
        })
    }

    /// Hands a checkpoint over; gives it back if the thread is gone.
    pub fn start(&mut self, work: Work) -> Result<(), Work> {
        let sent = match &self.work {
            Some(sender) => sender.send(work).map_err(|e| e.0),
            None => Err(work),
        };
        if sent.is_ok() {
            self.in_flight = true;
        }
        sent
    }

    /// The finished checkpoint's result, if one finished.
    pub fn collect(&mut self) -> Option<Done> {
        if !self.in_flight {
            return None;
        }
        let done = self.done.try_recv().ok()?;
        self.in_flight = false;
        Some(done)
    }

    /// Waits for the checkpoint in flight, if any.
    pub fn wait(&mut self) -> Option<Done> {
        if !self.in_flight {
            return None;
        }
        self.in_flight = false;
        Some(self.done.recv().unwrap_or_else(|_| {
            Err(Failed::database_error(truce_engine::StorageError::Io(
                "the checkpointer stopped".into(),
            )))
        }))
    }

    /// Stops the thread (after the checkpoint in flight).
    pub fn stop(&mut self) {
        drop(self.work.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Lowers this thread's CPU priority (nice 10): a checkpoint is background
/// work, and on a machine whose cores the request path keeps busy it should take
/// the time that path leaves over, not delay its answers. (On Linux `nice`
/// applies to the calling thread.) Not being allowed to is no reason to stop.
fn yield_to_writers() {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), 10) {
        tracing::debug!(%error, "the checkpointer keeps its priority");
    }
}

/// Writes `work.layer` into redb, durably, and opens a snapshot of the result.
fn write_checkpoint(work: &Work) -> Done {
    let txn = work.db.begin_write().map_err(Failed::database)?;
    {
        let mut tables = WriteTables::open(&txn).map_err(Failed::database_error)?;
        tables
            .write_layer(&work.layer, work.revision)
            .map_err(Failed::database_error)?;
        tables
            .set_wal_epoch(work.epoch)
            .map_err(Failed::database_error)?;
    }
    txn.commit().map_err(Failed::database)?;
    Base::open(&work.db).map_err(Failed::database_error)
}
