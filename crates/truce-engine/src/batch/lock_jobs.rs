//! A batch's lock jobs (SPEC §4): a resource's lock changed and handed on, the
//! leases that ran out expired, and the lock a write must hold.

use bytes::Bytes;

use super::{Batch, BatchTables, idempotency_refusal};
use crate::error::{EngineError, StorageError};
use crate::lock_signals::LockGroups;
use crate::locks::{
    LockJob, LockOutcome, LockState, MAX_WAITERS, due_locks, lock_key, stale_expiry, waiters_prefix,
};
use crate::rules::{Effect, SideTable, SideWrite};

/// Most leases one expiry pass reads; more due ones are left to the next pass.
const EXPIRY_PASS: usize = 256;

impl Batch<'_> {
    /// The refusal `key`'s lock gives a write carrying `token` (none when the
    /// resource was never locked and the write carries no token).
    pub(super) fn lock_refusal(
        &self,
        tables: &dyn BatchTables,
        key: &crate::name::ResourceKey,
        token: Option<&str>,
    ) -> Result<Option<EngineError>, StorageError> {
        let stored = tables.side(SideTable::Locks, &lock_key(key))?;
        if stored.is_none() && token.is_none() {
            return Ok(None);
        }
        Ok(
            match LockState::load(key, stored.as_deref(), &[], self.now) {
                Ok(state) => state.admits(token).err(),
                Err(error) => Some(error),
            },
        )
    }

    /// Runs one lock job: a resource's lock changed (and handed on), or every
    /// lease that ran out expired.
    pub fn lock(
        &mut self,
        tables: &mut dyn BatchTables,
        job: &LockJob,
    ) -> Result<Result<LockOutcome, EngineError>, StorageError> {
        match job {
            LockJob::On {
                key,
                action,
                by,
                idempotency,
            } => {
                let request = idempotency.as_deref();
                if let Some(refusal) = idempotency_refusal(tables, request)? {
                    return Ok(Err(refusal));
                }
                let mut state = match self.lock_state(tables, key)? {
                    Ok(state) => state,
                    Err(error) => return Ok(Err(error)),
                };
                let outcome = state.apply(action, by);
                // What time decided (a lease ran out, the lock was handed on) is
                // kept even when the action itself was refused.
                if let Err(error) = self.store_lock(tables, state)? {
                    return Ok(Err(error));
                }
                let answered = matches!(
                    outcome,
                    Ok(LockOutcome::Granted(_)
                        | LockOutcome::Renewed(_)
                        | LockOutcome::Released
                        | LockOutcome::Broken(_))
                );
                if answered {
                    self.keep_answer(tables, request, &outcome)?;
                }
                Ok(outcome)
            }
            LockJob::ExpireDue => {
                let keys: Vec<Vec<u8>> = tables
                    .side_records(SideTable::LockExpiries, &[], EXPIRY_PASS)?
                    .into_iter()
                    .map(|(key, _)| key)
                    .collect();
                let mut expired = 0;
                let mut stale = Vec::new();
                for (index_key, resource) in due_locks(&keys, self.now) {
                    let Some(resource) = resource else {
                        stale.push(stale_expiry(index_key));
                        continue;
                    };
                    let mut state = match self.lock_state(tables, &resource)? {
                        Ok(state) => state,
                        Err(error) => return Ok(Err(error)),
                    };
                    match state.settle() {
                        Ok(true) => expired += 1,
                        // No lease of this resource ran out at this entry's
                        // time: the entry outlived its lease.
                        Ok(false) => stale.push(stale_expiry(index_key)),
                        Err(error) => return Ok(Err(error)),
                    }
                    if let Err(error) = self.store_lock(tables, state)? {
                        return Ok(Err(error));
                    }
                }
                if !stale.is_empty() {
                    let effect = Effect {
                        writes: Vec::new(),
                        side: stale,
                    };
                    self.apply(tables, &effect)?;
                    // Only the expiry index changed: no lock's group is
                    // known, so every waiter (and the keeper) looks again.
                    self.notes.lock_groups.add(LockGroups::ALL);
                }
                Ok(Ok(LockOutcome::Expired(expired)))
            }
        }
    }

    /// `key`'s lock state as this transaction sees it.
    fn lock_state(
        &self,
        tables: &dyn BatchTables,
        key: &crate::name::ResourceKey,
    ) -> Result<Result<LockState, EngineError>, StorageError> {
        let stored = tables.side(SideTable::Locks, &lock_key(key))?;
        let waiters = tables.side_records(
            SideTable::LockWaiters,
            &waiters_prefix(&lock_key(key)),
            MAX_WAITERS + 1,
        )?;
        Ok(LockState::load(key, stored.as_deref(), &waiters, self.now))
    }

    /// Stores what a lock state's changes wrote, and notes its events.
    fn store_lock(
        &mut self,
        tables: &mut dyn BatchTables,
        state: LockState,
    ) -> Result<Result<(), EngineError>, StorageError> {
        let groups = LockGroups::of(state.resource());
        let (writes, events) = match state.finish() {
            Ok(finished) => finished,
            Err(error) => return Ok(Err(error)),
        };
        if writes.is_empty() {
            return Ok(Ok(()));
        }
        self.notes.lock_groups.add(groups);
        let mut side = writes;
        // Lock events join the event log, so that the resource's watch stream
        // carries them in commit order with its conflict events.
        for event in &events {
            let position = self.last_event_position(tables)? + 1;
            let value = event.to_json(position).to_string();
            side.push(SideWrite {
                table: SideTable::ConflictEvents,
                key: position.to_be_bytes().to_vec(),
                value: Some(Bytes::from(value)),
            });
            self.last_event = Some(position);
            self.notes.last_event = Some(position);
        }
        self.notes.lock_events.extend(events);
        let effect = Effect {
            writes: Vec::new(),
            side,
        };
        self.apply(tables, &effect)?;
        Ok(Ok(()))
    }
}
