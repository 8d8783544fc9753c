//! One batch of jobs planned against one write transaction: the part of the write
//! path every backend shares.
//!
//! A backend opens its transaction (a redb write transaction, one SQL transaction),
//! wraps it in [`BatchTables`] and hands each job to a [`Batch`], in queue order.
//! The batch runs the rules for it against what the transaction sees (earlier jobs
//! of the batch included), adds what follows from the outcome (the conflict record
//! a refusal leaves, the record a policy outcome or a `Truce-Resolves` retry
//! closes, the event of every record written and its webhook outbox rows) and
//! gives the backend the complete effect to store. The backend decides nothing: it
//! stores effects, makes the batch durable and answers.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;

use crate::collection::{CollectionSettings, SettingsCommand, SettingsOutcome, StoredSettings};
use crate::command::{WriteCommand, WriteOutcome};
use crate::conflict::{Retry, parse_record, record_policy, record_refusal, resolve_by_retry};
use crate::document::DocumentLimits;
use crate::error::{EngineError, StorageError};
use crate::events::{EVENTS_WATERMARK_KEY, EventLine, RecordWritten, decode_watermark};
use crate::events::{RecordFacts, event_position};
use crate::idempotency::{Idempotent, keep_answer, refusal_for};
use crate::ids::IdGenerator;
use crate::keys::KeyCheck;
use crate::lock_signals::LockGroups;
use crate::locks::LockEvent;
use crate::name::CollectionName;
use crate::resolution::{ResolutionCommand, ResolutionOutcome, plan_resolution};
use crate::retention::Retention;
use crate::rules::{Effect, Planned, SideCommit, SideTable, SideWrite, WriteContext};
use crate::store::StateView;
use crate::time::Timestamp;
use crate::webhook::{Delivery, Subscription, claim as claim_delivery, outbox_rows};

mod lock_jobs;
mod txn_jobs;

/// How a write is planned: always [`crate::plan_write`], except in backends' tests,
/// which swap in one that panics or waits.
pub type Planner =
    fn(&dyn StateView, &WriteCommand, &WriteContext<'_>) -> Result<Planned, EngineError>;

/// A backend's write transaction, as a batch uses it.
pub trait BatchTables {
    /// The state the rules read: committed data plus the batch's earlier jobs.
    fn view(&self) -> &dyn StateView;

    /// One side record as the transaction sees it.
    fn side(&self, table: SideTable, key: &[u8]) -> Result<Option<Bytes>, StorageError>;

    /// The last key of side table `table`, if it holds any record.
    fn last_side_key(&self, table: SideTable) -> Result<Option<Vec<u8>>, StorageError>;

    /// The first `limit` records of side table `table` whose keys start with
    /// `prefix` (empty: the whole table), in key order, as the transaction sees
    /// them (the batch's own earlier writes included).
    fn side_records(
        &self,
        table: SideTable,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError>;

    /// Whether side table `table` holds any record, as the transaction sees it.
    fn has_side_records(&self, table: SideTable) -> Result<bool, StorageError> {
        Ok(!self.side_records(table, b"", 1)?.is_empty())
    }

    /// Whether any resource of `collection` whose id starts with `prefix` got a
    /// version committed after revision `since` (true also when the change
    /// feed no longer reaches back to `since`, as it then cannot tell).
    fn changed_since(
        &self,
        collection: &crate::name::CollectionName,
        prefix: &str,
        since: u64,
    ) -> Result<bool, StorageError>;

    /// Stores one job's effect: each version of `effect.writes` at `revision`
    /// (the index within it is its position in the revision) as its resource's
    /// new head, then each side write, in order.
    fn store(&mut self, effect: &Effect, revision: u64) -> Result<(), StorageError>;
}

/// What every batch of one store is planned with.
pub struct BatchRules<'a> {
    /// The store's document limits.
    pub limits: DocumentLimits,
    /// The store's default retention (collections may set their own).
    pub retention: &'a Retention,
    /// The write rules.
    pub planner: Planner,
    /// Makes conflict records' ids.
    pub conflict_ids: &'a IdGenerator,
}

/// What a batch leaves to do once it is durable.
#[derive(Debug, Default)]
pub struct BatchNotes {
    /// `(collection, type, outcome)` of each conflict record written, for the
    /// conflict metric.
    pub conflict_metrics: Vec<(String, String, String)>,
    /// The log line of each conflict event appended.
    pub event_lines: Vec<EventLine>,
    /// The newest conflict event's position, when the batch appended any (the
    /// conflict streams wake up).
    pub last_event: Option<u64>,
    /// The groups of the locks that changed, empty when none did (their
    /// waiters wake up; on any change the expiry keeper looks again).
    pub lock_groups: LockGroups,
    /// The lock events of the batch, for the log and the metrics.
    pub lock_events: Vec<LockEvent>,
}

impl BatchNotes {
    /// Logs one line per conflict event (the rule and the versions it stood
    /// between) and counts the records by collection, type and outcome; called
    /// once the batch is durable.
    pub fn report(&self) {
        for line in &self.event_lines {
            tracing::info!(
                event = %line.event,
                conflict_id = %line.conflict_id,
                collection = %line.collection,
                id = %line.id,
                rule = %line.kind,
                status = %line.status,
                base_version = line.base_version,
                current_version = line.current_version,
                request_id = %line.request_id,
                "conflict"
            );
        }
        for event in &self.lock_events {
            tracing::info!(
                event = event.event,
                collection = %event.resource.collection,
                id = %event.resource.id,
                fence = event.fence,
                "lock"
            );
            metrics::counter!("truce_lock_events_total", "event" => event.event).increment(1);
            if let Some(waited) = event.waited_ms {
                metrics::histogram!("truce_lock_wait_seconds").record(waited as f64 / 1000.0);
            }
        }
        for (collection, kind, outcome) in &self.conflict_metrics {
            metrics::counter!(
                "truce_conflicts_total",
                "collection" => collection.clone(),
                "type" => kind.clone(),
                "outcome" => outcome.clone()
            )
            .increment(1);
        }
    }
}

/// One batch being planned.
pub struct Batch<'a> {
    rules: BatchRules<'a>,
    start: u64,
    /// The revision the batch has reached.
    revision: u64,
    /// The batch's commit time.
    now: Timestamp,
    /// Whether any job wrote a side record (then the batch commits, although no
    /// revision moved).
    side_written: bool,
    /// The settings of each collection a job touched, read once per batch (and
    /// replaced when a job of the batch changes them).
    settings: HashMap<CollectionName, CollectionSettings>,
    /// The newest conflict event's position, once needed (read once, then counted).
    last_event: Option<u64>,
    /// The webhook subscriptions, read when the batch first appends an event (and
    /// again after a subscription changes in it).
    subscriptions: Option<Vec<Subscription>>,
    /// The key checks made in the batch and whether each held, read once per
    /// batch (and again after a job of it changes a key).
    key_checks: HashMap<KeyCheck, bool>,
    notes: BatchNotes,
}

impl<'a> Batch<'a> {
    /// A batch on top of `revision`, the newest committed one, at `now`.
    pub fn new(rules: BatchRules<'a>, revision: u64, now: Timestamp) -> Self {
        Self {
            rules,
            start: revision,
            revision,
            now,
            side_written: false,
            settings: HashMap::new(),
            last_event: None,
            subscriptions: None,
            key_checks: HashMap::new(),
            notes: BatchNotes::default(),
        }
    }

    /// The revision the batch has reached.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The batch's commit time.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Whether the batch has anything to commit.
    pub fn changed(&self) -> bool {
        self.revision != self.start || self.side_written
    }

    /// What is left to do once the batch is durable.
    pub fn into_notes(self) -> BatchNotes {
        self.notes
    }

    /// Plans one write and stores what it decided: the new version (with the
    /// record a policy outcome leaves and the record a `Truce-Resolves` retry
    /// closes), or the conflict record of a refusal.
    pub fn write(
        &mut self,
        tables: &mut dyn BatchTables,
        command: &WriteCommand,
    ) -> Result<Result<WriteOutcome, EngineError>, StorageError> {
        // The caller's key first (SPEC §8: authentication before anything else);
        // a refusal here leaves nothing, not even a conflict record.
        if let Some(check) = &command.key_check
            && !self.key_check_holds(tables, check)?
        {
            return Ok(Err(EngineError::KeyRefused(check.refusal())));
        }
        let request = command.idempotency.as_ref();
        if let Some(refusal) = idempotency_refusal(tables, request)? {
            return Ok(Err(refusal));
        }
        let result = self.plan_and_store(tables, command)?;
        self.keep_answer(tables, request, &result)?;
        Ok(result)
    }

    /// Whether `check` holds in this batch (read once per batch for all the
    /// writes that share it: on PostgreSQL one statement, not one per write).
    fn key_check_holds(
        &mut self,
        tables: &dyn BatchTables,
        check: &KeyCheck,
    ) -> Result<bool, StorageError> {
        if let Some(holds) = self.key_checks.get(check) {
            return Ok(*holds);
        }
        let holds = check.holds(tables)?;
        self.key_checks.insert(check.clone(), holds);
        Ok(holds)
    }

    /// [`Batch::write`] without its idempotency record.
    fn plan_and_store(
        &mut self,
        tables: &mut dyn BatchTables,
        command: &WriteCommand,
    ) -> Result<Result<WriteOutcome, EngineError>, StorageError> {
        let settings = self.collection_settings(tables, &command.key.collection)?;
        let retention = settings.retention(self.rules.retention);
        let locked = self.lock_refusal(tables, &command.key, command.lock_token.as_deref())?;
        let ctx = WriteContext {
            locked: locked.as_ref(),
            ..self.context(settings, &retention)
        };
        let planner = self.rules.planner;
        let planned = catch_unwind(AssertUnwindSafe(|| planner(tables.view(), command, &ctx)));
        match planned {
            Ok(Ok(mut planned)) => {
                let mut facts = Vec::new();
                // A stale write the collection's policy accepted is recorded too.
                if let Some(applied) = planned.outcome.policy.clone() {
                    let ids = self.rules.conflict_ids;
                    let new_id = || ids.next_id().as_str().to_owned();
                    match record_policy(command, &planned.outcome, &applied, new_id, self.now) {
                        Ok((id, record)) => {
                            planned
                                .effect
                                .get_or_insert_with(Effect::default)
                                .side
                                .push(record.side);
                            facts.push(record.facts);
                            planned.outcome.conflict_id = Some(id);
                        }
                        Err(error) => return Ok(Err(error)),
                    }
                }
                // `Truce-Resolves`: the retried record closes with it.
                let retry = Retry::Landed {
                    version: planned.outcome.version.number,
                };
                if let Some(closed) = self.close_retried(tables, command, retry)? {
                    planned
                        .effect
                        .get_or_insert_with(Effect::default)
                        .side
                        .push(closed);
                }
                if let Some(effect) = &planned.effect {
                    self.apply_with(tables, effect, facts)?;
                }
                Ok(Ok(planned.outcome))
            }
            Ok(Err(refusal)) => Ok(Err(self.refused(tables, command, refusal)?)),
            Err(_) => {
                tracing::error!(key = %command.key, "panic while planning a write");
                Ok(Err(EngineError::Internal(
                    "panic while planning a write".into(),
                )))
            }
        }
    }

    /// Plans one resolution (or dismissal) of a conflict record and stores it.
    pub fn resolve(
        &mut self,
        tables: &mut dyn BatchTables,
        command: &ResolutionCommand,
    ) -> Result<Result<ResolutionOutcome, EngineError>, StorageError> {
        let request = command.idempotency.as_ref();
        if let Some(refusal) = idempotency_refusal(tables, request)? {
            return Ok(Err(refusal));
        }
        let stored = tables.side(SideTable::Conflicts, command.cid.as_bytes())?;
        // The record's collection decides the retention its base is read under.
        let settings = match stored.as_deref().map(|s| parse_record(&command.cid, s)) {
            Some(Ok((_, key))) => self.collection_settings(tables, &key.collection)?,
            _ => CollectionSettings::default(),
        };
        let retention = settings.retention(self.rules.retention);
        let locked = match stored.as_deref().map(|s| parse_record(&command.cid, s)) {
            Some(Ok((_, key))) => self.lock_refusal(tables, &key, command.lock_token.as_deref())?,
            _ => None,
        };
        let ctx = WriteContext {
            locked: locked.as_ref(),
            ..self.context(settings, &retention)
        };
        let result = match plan_resolution(tables.view(), stored.as_deref(), command, &ctx) {
            Ok(planned) => {
                self.apply(tables, &planned.effect)?;
                Ok(planned.outcome)
            }
            Err(refusal) => Err(refusal),
        };
        self.keep_answer(tables, request, &result)?;
        Ok(result)
    }

    /// Plans one change of a collection's settings and stores it; later jobs of
    /// the batch are planned under the new settings.
    pub fn configure(
        &mut self,
        tables: &mut dyn BatchTables,
        command: &SettingsCommand,
    ) -> Result<Result<SettingsOutcome, EngineError>, StorageError> {
        let request = command.idempotency.as_ref();
        if let Some(refusal) = idempotency_refusal(tables, request)? {
            return Ok(Err(refusal));
        }
        let result = self.plan_settings(tables, command)?;
        self.keep_answer(tables, request, &result)?;
        Ok(result)
    }

    /// [`Batch::configure`] without its idempotency record.
    fn plan_settings(
        &mut self,
        tables: &mut dyn BatchTables,
        command: &SettingsCommand,
    ) -> Result<Result<SettingsOutcome, EngineError>, StorageError> {
        let key = command.collection.as_str().as_bytes();
        let stored = tables.side(SideTable::Collections, key)?;
        match crate::collection::plan_settings(stored.as_deref(), command, self.now) {
            Ok((outcome, record)) => {
                if let Some(record) = record {
                    let effect = Effect {
                        writes: Vec::new(),
                        side: vec![record],
                    };
                    self.apply(tables, &effect)?;
                    self.settings
                        .insert(command.collection.clone(), outcome.stored.settings);
                }
                Ok(Ok(outcome))
            }
            Err(refusal) => Ok(Err(refusal)),
        }
    }

    /// Stores side records the rules decided outside a write (a subscription, a
    /// delivery attempt), unless the record they require is gone (then
    /// not-found, and nothing is stored).
    pub fn side(
        &mut self,
        tables: &mut dyn BatchTables,
        commit: &SideCommit,
    ) -> Result<Result<(), EngineError>, StorageError> {
        if let Some((table, key)) = &commit.requires
            && tables.side(*table, key)?.is_none()
        {
            return Ok(Err(EngineError::NotFound {
                detail: "the record these changes belong to no longer exists".into(),
                tombstone: None,
            }));
        }
        let effect = Effect {
            writes: Vec::new(),
            side: commit.writes.clone(),
        };
        self.apply(tables, &effect)?;
        Ok(Ok(()))
    }

    /// Claims the due outbox rows under `keys` for `node` until `until` (see
    /// [`crate::claim_delivery`]); returns the deliveries it got.
    pub fn claim(
        &mut self,
        tables: &mut dyn BatchTables,
        keys: &[Vec<u8>],
        node: &str,
        until: Timestamp,
    ) -> Result<Vec<Delivery>, StorageError> {
        let mut writes = Vec::new();
        let mut claimed = Vec::new();
        for key in keys {
            let Some(stored) = tables.side(SideTable::Outbox, key)? else {
                continue;
            };
            if let Some((write, delivery)) = claim_delivery(&stored, node, self.now, until) {
                writes.push(write);
                claimed.push(delivery);
            }
        }
        if !writes.is_empty() {
            let effect = Effect {
                writes: Vec::new(),
                side: writes,
            };
            self.apply(tables, &effect)?;
        }
        Ok(claimed)
    }

    /// Keeps the answer of an idempotent job that committed something (an
    /// accepted write, a recorded refusal, a resolution, a settings change) in
    /// the same commit. A refusal that committed nothing keeps nothing: its
    /// retry runs again.
    fn keep_answer<T>(
        &mut self,
        tables: &mut dyn BatchTables,
        request: Option<&Idempotent<T>>,
        result: &Result<T, EngineError>,
    ) -> Result<(), StorageError> {
        let Some(request) = request else {
            return Ok(());
        };
        if matches!(result, Err(error) if !matches!(error, EngineError::Recorded { .. })) {
            return Ok(());
        }
        let rendered = catch_unwind(AssertUnwindSafe(|| (request.answer)(result)));
        let Ok(Some(answer)) = rendered else {
            tracing::error!("an idempotent request's answer could not be rendered for keeping");
            return Ok(());
        };
        let effect = Effect {
            writes: Vec::new(),
            side: keep_answer(request, answer, self.now),
        };
        self.apply(tables, &effect)
    }

    /// What the rules know of the commit a job would join.
    fn context<'r>(
        &self,
        settings: CollectionSettings,
        retention: &'r Retention,
    ) -> WriteContext<'r> {
        WriteContext {
            revision: self.revision + 1,
            now: self.now,
            limits: self.rules.limits,
            retention,
            settings,
            locked: None,
        }
    }

    /// A refusal for the resource's state is kept as a conflict record, committed
    /// with the batch before it is answered; a retry refused again supersedes the
    /// record it named. Returns the answer.
    fn refused(
        &mut self,
        tables: &mut dyn BatchTables,
        command: &WriteCommand,
        refusal: EngineError,
    ) -> Result<EngineError, StorageError> {
        let ids = self.rules.conflict_ids;
        let new_id = || ids.next_id().as_str().to_owned();
        let (answer, record) = match record_refusal(command, refusal, new_id, self.now) {
            Ok(recorded) => recorded,
            Err(unrecorded) => return Ok(unrecorded),
        };
        let mut side = Vec::new();
        if let EngineError::Recorded { conflict_id, .. } = &answer {
            let retry = Retry::RefusedAgain {
                by: conflict_id.clone(),
            };
            side.extend(self.close_retried(tables, command, retry)?);
        }
        side.push(record.side);
        let effect = Effect {
            writes: Vec::new(),
            side,
        };
        self.apply_with(tables, &effect, vec![record.facts])?;
        Ok(answer)
    }

    /// The record a retry's `Truce-Resolves` names, closed as `retry` says, if it
    /// is one the retry can close.
    fn close_retried(
        &self,
        tables: &dyn BatchTables,
        command: &WriteCommand,
        retry: Retry,
    ) -> Result<Option<SideWrite>, StorageError> {
        let Some(cid) = &command.resolves else {
            return Ok(None);
        };
        let stored = tables.side(SideTable::Conflicts, cid.as_bytes())?;
        Ok(stored.and_then(|stored| resolve_by_retry(&stored, &command.key, retry, self.now)))
    }

    /// The settings of `collection` as of this point of the batch.
    fn collection_settings(
        &mut self,
        tables: &dyn BatchTables,
        collection: &CollectionName,
    ) -> Result<CollectionSettings, StorageError> {
        if let Some(settings) = self.settings.get(collection) {
            return Ok(*settings);
        }
        let stored = tables.side(SideTable::Collections, collection.as_str().as_bytes())?;
        let settings = StoredSettings::read(collection, stored.as_deref())
            .map_err(|e| StorageError::Corrupt(e.to_string()))?
            .settings;
        self.settings.insert(collection.clone(), settings);
        Ok(settings)
    }

    /// Stores one job's effect, completed: every conflict record written is an
    /// event at the next position (in commit order), and the event's webhook
    /// deliveries wait in the outbox, durable with it. A version moves the
    /// revision; side records alone do not.
    fn apply(&mut self, tables: &mut dyn BatchTables, effect: &Effect) -> Result<(), StorageError> {
        self.apply_with(tables, effect, Vec::new())
    }

    /// [`Batch::apply`], given the facts of the conflict records the rules have
    /// just made (the others are read from the records written).
    fn apply_with(
        &mut self,
        tables: &mut dyn BatchTables,
        effect: &Effect,
        mut facts: Vec<RecordFacts>,
    ) -> Result<(), StorageError> {
        if !effect.writes.is_empty() {
            self.revision += 1;
        }
        self.side_written |= !effect.side.is_empty();
        let mut side = Vec::with_capacity(effect.side.len() * 2);
        for write in &effect.side {
            side.push(write.clone());
            if write.table == SideTable::Subscriptions {
                self.subscriptions = None;
            }
            if write.table == SideTable::Keys {
                self.key_checks.clear();
            }
            let Some(value) = write.value.as_deref() else {
                continue;
            };
            if write.table != SideTable::Conflicts {
                continue;
            }
            let known = facts.iter().position(|f| f.id.as_bytes() == write.key);
            let Some(record) = known
                .map(|at| facts.swap_remove(at))
                .or_else(|| RecordFacts::read(value))
            else {
                continue;
            };
            let position = self.last_event_position(tables)? + 1;
            let Some(written) = record.written(position) else {
                continue;
            };
            let now = self.now;
            let subscriptions = self.subscriptions(tables)?;
            let rows = if subscriptions.is_empty() {
                Vec::new()
            } else {
                outbox_rows(subscriptions, &written.event_value(), position, now)
            };
            let RecordWritten {
                event,
                line,
                labels,
            } = written;
            side.push(event);
            side.extend(rows);
            self.last_event = Some(position);
            self.notes.last_event = Some(position);
            self.notes.conflict_metrics.push(labels);
            self.notes.event_lines.push(line);
        }
        let complete = Effect {
            writes: effect.writes.clone(),
            side,
        };
        tables.store(&complete, self.revision)
    }

    /// Every webhook subscription, as this transaction sees them.
    fn subscriptions(&mut self, tables: &dyn BatchTables) -> Result<&[Subscription], StorageError> {
        if self.subscriptions.is_none() {
            let found = tables
                .side_records(SideTable::Subscriptions, &[], usize::MAX)?
                .iter()
                .filter_map(|(_, value)| Subscription::read(value))
                .collect();
            self.subscriptions = Some(found);
        }
        Ok(self.subscriptions.as_deref().unwrap_or_default())
    }

    /// The newest conflict event's position (0: none yet; never below what
    /// compaction removed).
    fn last_event_position(&mut self, tables: &dyn BatchTables) -> Result<u64, StorageError> {
        if let Some(position) = self.last_event {
            return Ok(position);
        }
        let last = tables
            .last_side_key(SideTable::ConflictEvents)?
            .and_then(|key| event_position(&key))
            .unwrap_or(0);
        let watermark = tables
            .side(SideTable::ConflictEvents, &EVENTS_WATERMARK_KEY)?
            .map_or(0, |v| decode_watermark(&v));
        let position = last.max(watermark);
        self.last_event = Some(position);
        Ok(position)
    }
}

/// The refusal for an idempotent job whose key already has a record in this
/// transaction (see [`crate::idempotency`]).
fn idempotency_refusal<T>(
    tables: &dyn BatchTables,
    request: Option<&Idempotent<T>>,
) -> Result<Option<EngineError>, StorageError> {
    let Some(request) = request else {
        return Ok(None);
    };
    let stored = tables.side(SideTable::Idempotency, &request.scope)?;
    Ok(stored.map(|stored| refusal_for(&stored, &request.fingerprint)))
}
