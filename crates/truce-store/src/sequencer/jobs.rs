//! Planning one job of a batch against the batch's write transaction: a write (with
//! the conflict record a refusal leaves, and the record a `Truce-Resolves` retry
//! closes) or a resolution of a record. What each job decides goes into the
//! batch's tables and log frame; nothing is durable until the batch commits.

use std::panic::{AssertUnwindSafe, catch_unwind};

use truce_engine::{
    Effect, EngineError, ResolutionCommand, ResolutionOutcome, Retry, SideTable, StorageError,
    Timestamp, WriteCommand, WriteContext, WriteOutcome, plan_resolution, record_refusal,
    resolve_by_retry,
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

impl Sequencer {
    /// Plans one write and applies what it decided.
    pub(super) fn write_job(
        &self,
        tables: &mut WriteTables<'_>,
        command: &WriteCommand,
        batch: &mut BatchState,
        frame: &mut FrameBuilder,
    ) -> Result<Result<WriteOutcome, EngineError>, StorageError> {
        let ctx = WriteContext {
            revision: batch.revision + 1,
            now: batch.now,
            limits: self.settings.limits,
            retention: &self.settings.retention,
            require_preconditions: false,
        };
        let planned = catch_unwind(AssertUnwindSafe(|| {
            (self.settings.planner)(&tables.view, command, &ctx)
        }));
        Ok(match planned {
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
                        resolve_by_retry(&stored, &command.key, retry, batch.now)
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
                        batch.revision += 1;
                    }
                    batch.side_written |= !effect.side.is_empty();
                    tables.apply(effect, batch.revision, frame)?;
                }
                Ok(planned.outcome)
            }
            // A refusal for the resource's state is kept as a conflict
            // record, committed with the batch before it is answered.
            Ok(Err(refusal)) => match record_refusal(
                command,
                refusal,
                || self.conflict_ids.next_id().as_str().to_owned(),
                batch.now,
            ) {
                Ok((answer, record)) => {
                    batch.side_written = true;
                    let mut side = Vec::new();
                    // A retry refused again: its record supersedes the
                    // one it named.
                    if let (Some(cid), EngineError::Recorded { conflict_id, .. }) =
                        (&command.resolves, &answer)
                        && let Some(stored) =
                            tables.get_side(SideTable::Conflicts.code(), cid.as_bytes())?
                    {
                        let retry = Retry::RefusedAgain {
                            by: conflict_id.clone(),
                        };
                        side.extend(resolve_by_retry(&stored, &command.key, retry, batch.now));
                    }
                    side.push(record);
                    let effect = Effect {
                        writes: Vec::new(),
                        side,
                    };
                    tables.apply(&effect, batch.revision, frame)?;
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

    /// Plans one resolution (or dismissal) of a conflict record and applies it.
    pub(super) fn resolve_job(
        &self,
        tables: &mut WriteTables<'_>,
        command: &ResolutionCommand,
        batch: &mut BatchState,
        frame: &mut FrameBuilder,
    ) -> Result<Result<ResolutionOutcome, EngineError>, StorageError> {
        let ctx = WriteContext {
            revision: batch.revision + 1,
            now: batch.now,
            limits: self.settings.limits,
            retention: &self.settings.retention,
            require_preconditions: false,
        };
        let stored = tables.get_side(SideTable::Conflicts.code(), command.cid.as_bytes())?;
        Ok(
            match plan_resolution(&tables.view, stored.as_deref(), command, &ctx) {
                Ok(planned) => {
                    if !planned.effect.writes.is_empty() {
                        batch.revision += 1;
                    }
                    batch.side_written = true;
                    tables.apply(&planned.effect, batch.revision, frame)?;
                    Ok(planned.outcome)
                }
                Err(refusal) => Err(refusal),
            },
        )
    }
}
