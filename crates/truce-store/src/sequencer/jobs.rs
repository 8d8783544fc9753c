//! Planning one job of a batch against the batch's write transaction: a write (with
//! the conflict record a refusal leaves, and the record a `Truce-Resolves` retry
//! closes) or a resolution of a record. What each job decides goes into the
//! batch's tables and log frame; nothing is durable until the batch commits.

use std::panic::{AssertUnwindSafe, catch_unwind};

use truce_engine::{
    Effect, EngineError, ResolutionCommand, ResolutionOutcome, Retry, SideTable, SideWrite,
    StorageError, Timestamp, WriteCommand, WriteContext, WriteOutcome, plan_resolution,
    record_refusal, resolve_by_retry,
};

use super::Sequencer;
use crate::wal::FrameBuilder;
use crate::write_tables::WriteTables;

/// Where a batch stands while its jobs are planned.
pub(super) struct BatchState {
    /// The revision the batch has reached.
    pub revision: u64,
    /// The batch's commit time.
    pub now: Timestamp,
    /// Whether any job wrote a side record (then the batch commits, although no
    /// revision moved).
    pub side_written: bool,
}

impl BatchState {
    /// Writes what a job decided into the batch (a version moves the revision;
    /// side records alone do not).
    fn apply(
        &mut self,
        tables: &mut WriteTables<'_>,
        effect: &Effect,
        frame: &mut FrameBuilder,
    ) -> Result<(), StorageError> {
        if !effect.writes.is_empty() {
            self.revision += 1;
        }
        self.side_written |= !effect.side.is_empty();
        tables.apply(effect, self.revision, frame)
    }
}

/// The record a retry's `Truce-Resolves` names, closed as `retry` says, if it is
/// one the retry can close.
fn close_retried(
    tables: &WriteTables<'_>,
    command: &WriteCommand,
    retry: Retry,
    now: Timestamp,
) -> Result<Option<SideWrite>, StorageError> {
    let Some(cid) = &command.resolves else {
        return Ok(None);
    };
    let stored = tables.get_side(SideTable::Conflicts.code(), cid.as_bytes())?;
    Ok(stored.and_then(|stored| resolve_by_retry(&stored, &command.key, retry, now)))
}

impl Sequencer {
    /// What the rules know of the commit a job would join.
    fn context(&self, batch: &BatchState) -> WriteContext<'_> {
        WriteContext {
            revision: batch.revision + 1,
            now: batch.now,
            limits: self.settings.limits,
            retention: &self.settings.retention,
            require_preconditions: false,
        }
    }

    /// Plans one write and applies what it decided.
    pub(super) fn write_job(
        &self,
        tables: &mut WriteTables<'_>,
        command: &WriteCommand,
        batch: &mut BatchState,
        frame: &mut FrameBuilder,
    ) -> Result<Result<WriteOutcome, EngineError>, StorageError> {
        let ctx = self.context(batch);
        let planned = catch_unwind(AssertUnwindSafe(|| {
            (self.settings.planner)(&tables.view, command, &ctx)
        }));
        match planned {
            Ok(Ok(mut planned)) => {
                // `Truce-Resolves`: the retried record closes with it.
                let retry = Retry::Landed {
                    version: planned.outcome.version.number,
                };
                if let Some(closed) = close_retried(tables, command, retry, batch.now)? {
                    planned
                        .effect
                        .get_or_insert_with(Effect::default)
                        .side
                        .push(closed);
                }
                if let Some(effect) = &planned.effect {
                    batch.apply(tables, effect, frame)?;
                }
                Ok(Ok(planned.outcome))
            }
            Ok(Err(refusal)) => Ok(Err(self.refused(tables, command, refusal, batch, frame)?)),
            Err(_) => {
                tracing::error!(key = %command.key, "panic while planning a write");
                Ok(Err(EngineError::Internal(
                    "panic while planning a write".into(),
                )))
            }
        }
    }

    /// A refusal for the resource's state is kept as a conflict record, committed
    /// with the batch before it is answered; a retry refused again supersedes the
    /// record it named. Returns the answer.
    fn refused(
        &self,
        tables: &mut WriteTables<'_>,
        command: &WriteCommand,
        refusal: EngineError,
        batch: &mut BatchState,
        frame: &mut FrameBuilder,
    ) -> Result<EngineError, StorageError> {
        let new_id = || self.conflict_ids.next_id().as_str().to_owned();
        let (answer, record) = match record_refusal(command, refusal, new_id, batch.now) {
            Ok(recorded) => recorded,
            Err(unrecorded) => return Ok(unrecorded),
        };
        let mut side = Vec::new();
        if let EngineError::Recorded { conflict_id, .. } = &answer {
            let retry = Retry::RefusedAgain {
                by: conflict_id.clone(),
            };
            side.extend(close_retried(tables, command, retry, batch.now)?);
        }
        side.push(record);
        let effect = Effect {
            writes: Vec::new(),
            side,
        };
        batch.apply(tables, &effect, frame)?;
        Ok(answer)
    }

    /// Plans one resolution (or dismissal) of a conflict record and applies it.
    pub(super) fn resolve_job(
        &self,
        tables: &mut WriteTables<'_>,
        command: &ResolutionCommand,
        batch: &mut BatchState,
        frame: &mut FrameBuilder,
    ) -> Result<Result<ResolutionOutcome, EngineError>, StorageError> {
        let ctx = self.context(batch);
        let stored = tables.get_side(SideTable::Conflicts.code(), command.cid.as_bytes())?;
        match plan_resolution(&tables.view, stored.as_deref(), command, &ctx) {
            Ok(planned) => {
                batch.apply(tables, &planned.effect, frame)?;
                Ok(Ok(planned.outcome))
            }
            Err(refusal) => Ok(Err(refusal)),
        }
    }
}
