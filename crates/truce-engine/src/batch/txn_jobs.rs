//! A batch's transactions (SPEC §5): every op planned under its own lock and
//! settings, committed as one effect at one revision, or the failed op's
//! record alone.

use std::panic::{AssertUnwindSafe, catch_unwind};

use super::{Batch, BatchTables, idempotency_refusal};
use crate::collection::{CollectionSettings, ConflictPolicy};
use crate::conflict::record_txn_refusal;
use crate::error::{EngineError, StorageError};
use crate::rules::{Effect, WriteContext};
use crate::txn::{SnapshotCommit, TxnCommand, TxnOp, TxnOutcome, TxnResult, check_op};

impl Batch<'_> {
    /// Plans a transaction's ops and stores them as one effect at one revision,
    /// or, when an op fails, stores only the record of its refusal.
    pub fn transaction(
        &mut self,
        tables: &mut dyn BatchTables,
        command: &TxnCommand,
    ) -> Result<Result<TxnOutcome, EngineError>, StorageError> {
        let request = command.idempotency.as_ref();
        if let Some(refusal) = idempotency_refusal(tables, request)? {
            return Ok(Err(refusal));
        }
        let result = self.plan_transaction(tables, command)?;
        self.keep_answer(tables, request, &result)?;
        Ok(result)
    }

    /// [`Batch::transaction`] without its idempotency record.
    fn plan_transaction(
        &mut self,
        tables: &mut dyn BatchTables,
        command: &TxnCommand,
    ) -> Result<Result<TxnOutcome, EngineError>, StorageError> {
        let mut effect = Effect::default();
        let mut results = Vec::with_capacity(command.ops.len());
        let planner = self.rules.planner;
        for (index, op) in command.ops.iter().enumerate() {
            let key = op.key();
            // A collection's conflict policy does not apply inside a
            // transaction: a stale op fails it (see `txn`).
            let settings = CollectionSettings {
                conflict_policy: ConflictPolicy::Reject,
                ..self.collection_settings(tables, &key.collection)?
            };
            let retention = settings.retention(self.rules.retention);
            let locked = self.lock_refusal(tables, key, op.lock_token())?;
            let ctx = WriteContext {
                locked: locked.as_ref(),
                ..self.context(settings, &retention)
            };
            let view = tables.view();
            let planned = catch_unwind(AssertUnwindSafe(|| match op {
                TxnOp::Check(check) => {
                    check_op(view, check, locked.as_ref()).map(|result| (result, None))
                }
                TxnOp::Write(write) => planner(view, write, &ctx)
                    .map(|planned| (TxnResult::written(&planned.outcome), planned.effect)),
            }));
            match planned {
                Ok(Ok((result, planned_effect))) => {
                    if let Some(planned_effect) = planned_effect {
                        effect.writes.extend(planned_effect.writes);
                        effect.side.extend(planned_effect.side);
                    }
                    results.push(result);
                }
                Ok(Err(refusal)) => {
                    return self.transaction_refused(tables, command, index, refusal);
                }
                Err(_) => {
                    tracing::error!(op = index, "panic while planning a transaction");
                    return Ok(Err(EngineError::Internal(
                        "panic while planning a transaction".into(),
                    )));
                }
            }
        }
        if !effect.writes.is_empty() || !effect.side.is_empty() {
            self.apply(tables, &effect)?;
        }
        Ok(Ok(TxnOutcome {
            revision: self.revision,
            results,
        }))
    }

    /// A failed op refuses its whole transaction; its refusal is kept as one
    /// conflict record when SPEC §7 records it.
    fn transaction_refused(
        &mut self,
        tables: &mut dyn BatchTables,
        command: &TxnCommand,
        index: usize,
        refusal: EngineError,
    ) -> Result<Result<TxnOutcome, EngineError>, StorageError> {
        let Some(op) = command.ops.get(index) else {
            return Ok(Err(refusal));
        };
        let ids = self.rules.conflict_ids;
        let new_id = || ids.next_id().as_str().to_owned();
        let ops = command.ops.len();
        match record_txn_refusal(op, index, ops, command, refusal, new_id, self.now) {
            Ok((answer, Some(record))) => {
                let effect = Effect {
                    writes: Vec::new(),
                    side: vec![record.side],
                };
                self.apply_with(tables, &effect, vec![record.facts])?;
                Ok(Err(answer))
            }
            Ok((answer, None)) => Ok(Err(answer)),
            Err(error) => Ok(Err(error)),
        }
    }

    /// Commits an interactive transaction: refused (nothing applied) when
    /// anything it read, wrote or listed changed after its snapshot, else its
    /// writes applied like a batch transaction, at one revision.
    pub fn commit_snapshot(
        &mut self,
        tables: &mut dyn BatchTables,
        commit: &SnapshotCommit,
    ) -> Result<Result<TxnOutcome, EngineError>, StorageError> {
        let request = commit.writes.idempotency.as_ref();
        if let Some(refusal) = idempotency_refusal(tables, request)? {
            return Ok(Err(refusal));
        }
        let mut resources = Vec::new();
        for key in &commit.reads {
            if tables
                .view()
                .head(key)?
                .is_some_and(|head| head.revision > commit.snapshot)
            {
                resources.push(key.clone());
            }
        }
        let mut ranges = Vec::new();
        for (collection, prefix) in &commit.ranges {
            if tables.changed_since(collection, prefix, commit.snapshot)? {
                ranges.push((collection.as_str().to_owned(), prefix.clone()));
            }
        }
        let result = if resources.is_empty() && ranges.is_empty() {
            self.plan_transaction(tables, &commit.writes)?
        } else {
            Err(EngineError::SnapshotStale {
                snapshot: commit.snapshot,
                resources,
                ranges,
            })
        };
        self.keep_answer(tables, request, &result)?;
        Ok(result)
    }
}
