//! Planning one job of a batch against the batch's write transaction: a write (with
//! the conflict record a refusal leaves, and the record a `Truce-Resolves` retry
//! closes) or a resolution of a record. What each job decides goes into the
//! batch's tables and log frame; nothing is durable until the batch commits.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use truce_engine::{
    CollectionName, CollectionSettings, Effect, EngineError, ResolutionCommand, ResolutionOutcome,
    Retention, Retry, SettingsCommand, SettingsOutcome, SideTable, SideWrite, StorageError,
    StoredSettings, Timestamp, WriteCommand, WriteContext, WriteOutcome, parse_conflict_record,
    plan_resolution, plan_settings, record_policy, record_refusal, resolve_by_retry,
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
    /// The settings of each collection a job of the batch touched, read once per
    /// batch (and replaced when a job of the batch changes them).
    pub settings: HashMap<CollectionName, CollectionSettings>,
}

impl BatchState {
    /// Writes what a job decided into the batch (a version moves the revision;
    /// side records alone do not).
    pub(super) fn apply(
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

/// The settings of `collection` as of this point of the batch.
fn collection_settings(
    tables: &WriteTables<'_>,
    batch: &mut BatchState,
    collection: &CollectionName,
) -> Result<CollectionSettings, StorageError> {
    if let Some(settings) = batch.settings.get(collection) {
        return Ok(*settings);
    }
    let stored = tables.get_side(
        SideTable::Collections.code(),
        collection.as_str().as_bytes(),
    )?;
    let settings = StoredSettings::read(collection, stored.as_deref())
        .map_err(|e| StorageError::Corrupt(e.to_string()))?
        .settings;
    batch.settings.insert(collection.clone(), settings);
    Ok(settings)
}

impl Sequencer {
    /// What the rules know of the commit a job would join, for a write to
    /// `collection` (`retention` receives the collection's retention).
    fn context<'a>(
        &self,
        batch: &BatchState,
        settings: CollectionSettings,
        retention: &'a Retention,
    ) -> WriteContext<'a> {
        WriteContext {
            revision: batch.revision + 1,
            now: batch.now,
            limits: self.settings.limits,
            retention,
            settings,
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
        let settings = collection_settings(tables, batch, &command.key.collection)?;
        let retention = settings.retention(&self.settings.retention);
        let ctx = self.context(batch, settings, &retention);
        let planned = catch_unwind(AssertUnwindSafe(|| {
            (self.settings.planner)(&tables.view, command, &ctx)
        }));
        match planned {
            Ok(Ok(mut planned)) => {
                // A stale write the collection's policy accepted is recorded too.
                if let Some(applied) = planned.outcome.policy.clone() {
                    let new_id = || self.conflict_ids.next_id().as_str().to_owned();
                    match record_policy(command, &planned.outcome, &applied, new_id, batch.now) {
                        Ok((id, record)) => {
                            planned
                                .effect
                                .get_or_insert_with(Effect::default)
                                .side
                                .push(record);
                            planned.outcome.conflict_id = Some(id);
                        }
                        Err(error) => return Ok(Err(error)),
                    }
                }
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
        let stored = tables.get_side(SideTable::Conflicts.code(), command.cid.as_bytes())?;
        // The record's collection decides the retention its base is read under.
        let settings = match stored
            .as_deref()
            .map(|s| parse_conflict_record(&command.cid, s))
        {
            Some(Ok((_, key))) => collection_settings(tables, batch, &key.collection)?,
            _ => CollectionSettings::default(),
        };
        let retention = settings.retention(&self.settings.retention);
        let ctx = self.context(batch, settings, &retention);
        match plan_resolution(&tables.view, stored.as_deref(), command, &ctx) {
            Ok(planned) => {
                batch.apply(tables, &planned.effect, frame)?;
                Ok(Ok(planned.outcome))
            }
            Err(refusal) => Ok(Err(refusal)),
        }
    }

    /// Plans one change of a collection's settings and applies it; later jobs of
    /// the batch are planned under the new settings.
    pub(super) fn configure_job(
        &self,
        tables: &mut WriteTables<'_>,
        command: &SettingsCommand,
        batch: &mut BatchState,
        frame: &mut FrameBuilder,
    ) -> Result<Result<SettingsOutcome, EngineError>, StorageError> {
        let key = command.collection.as_str().as_bytes();
        let stored = tables.get_side(SideTable::Collections.code(), key)?;
        match plan_settings(stored.as_deref(), command, batch.now) {
            Ok((outcome, record)) => {
                if let Some(record) = record {
                    let effect = Effect {
                        writes: Vec::new(),
                        side: vec![record],
                    };
                    batch.apply(tables, &effect, frame)?;
                    batch
                        .settings
                        .insert(command.collection.clone(), outcome.stored.settings);
                }
                Ok(Ok(outcome))
            }
            Err(refusal) => Ok(Err(refusal)),
        }
    }
}
