//! The write rules: from a command and the current state to the next version, or to
//! the precise reason the write is refused.
//!
//! [`plan_write`] is pure with respect to storage: it only reads through a
//! [`StateView`] and returns what to write. A backend's sequencer calls it inside its
//! write transaction, applies the [`Effect`], and commits. The order of checks:
//!
//! 1. a write that needs a live resource (PATCH, DELETE) on a missing one is 404,
//!    whatever its preconditions (RFC 9110 §13.2.1);
//! 2. `require_preconditions` (428);
//! 3. RFC 9110 preconditions in §13.2.2 order; a false `If-Match` is always 412 (truce
//!    does not use §13.1.1's "already applied" permission: two clients computing the
//!    same state from one stale version would both be told they wrote it), and the
//!    412 says whether the current content already equals what the write would make;
//! 4. `?if_version` (409 version-conflict, `0` = must not exist);
//! 5. the new content (patch, revert target, ...);
//! 6. the no-op rule: equal content makes no new version.

use serde_json::Value;

use crate::collection::{CollectionSettings, ConflictPolicy};
use crate::command::{PolicyApplied, WriteAction, WriteCommand, WriteOutcome, WriteStatus};
use crate::document::{Document, DocumentLimits};
use crate::error::{CurrentState, EngineError};
use crate::name::ResourceKey;
use crate::patch::apply_merge_patch;
use crate::policy::{self, NamedBy};
use crate::precondition::{Evaluation, FailedCondition, Preconditions, Safety, Validators};
use crate::read::{ReadContext, VersionLookup, lookup_version, not_found};
use crate::record::{Op, Version};
use crate::retention::Retention;
use crate::store::StateView;
use crate::time::Timestamp;

/// What the sequencer knows about the commit a write would join.
#[derive(Debug, Clone, Copy)]
pub struct WriteContext<'a> {
    /// The revision the write gets if it is applied.
    pub revision: u64,
    /// The commit's wall-clock time.
    pub now: Timestamp,
    /// Document limits, for patch results.
    pub limits: DocumentLimits,
    /// Retention, for what `revert` may still read.
    pub retention: &'a Retention,
    /// The settings of the written collection (428, conflict policy).
    pub settings: CollectionSettings,
    /// The refusal the resource's lock gives this write (SPEC §4: a live lock
    /// without its token, or a token whose lease is gone), checked after the
    /// write's preconditions.
    pub locked: Option<&'a EngineError>,
}

/// One version to store as the new head of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionWrite {
    /// The resource.
    pub key: ResourceKey,
    /// Its new head; the previous head becomes history.
    pub version: Version,
}

/// Everything one command writes, committed atomically at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effect {
    /// New head versions, each with its change-feed entry.
    pub writes: Vec<VersionWrite>,
    /// Records kept beside the versions, in the same commit.
    pub side: Vec<SideWrite>,
}

/// A record kept beside the versions (conflict records, and later locks,
/// idempotency records, outbox rows): the rules decide it, a backend stores it in
/// the same commit as the rest of the effect. Side records never move the
/// revision, and are not in the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideWrite {
    /// Which kind of record.
    pub table: SideTable,
    /// Its key within the table (bytes the rules chose; ordered as bytes).
    pub key: Vec<u8>,
    /// The record; `None` removes it.
    pub value: Option<bytes::Bytes>,
}

/// Side records committed outside a write (a subscription, a delivery attempt),
/// atomically, and, where they belong to another record, only while that
/// record still exists: a handler reads, decides, then commits, and a record
/// removed in between must not come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideCommit {
    /// The records stored or removed.
    pub writes: Vec<SideWrite>,
    /// `(table, key)` of a record that must exist when the writes commit;
    /// otherwise nothing is written and the answer is not-found.
    pub requires: Option<(SideTable, Vec<u8>)>,
}

impl SideCommit {
    /// These writes, unconditionally.
    pub fn new(writes: Vec<SideWrite>) -> Self {
        Self {
            writes,
            requires: None,
        }
    }

    /// Only while record `key` of `table` exists.
    #[must_use]
    pub fn while_present(mut self, table: SideTable, key: impl Into<Vec<u8>>) -> Self {
        self.requires = Some((table, key.into()));
        self
    }
}

/// The first key after every key that starts with `prefix` (none: no key is
/// after them all), so that a backend can read a prefix as a key range.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The kinds of side record. A backend keeps each in a table (or key range) of
/// its own; the code is stable on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SideTable {
    /// Conflict records (SPEC §7).
    Conflicts,
    /// Collection settings (SPEC §8), keyed by collection name.
    Collections,
    /// Conflict events (SPEC §7), keyed by position (big-endian u64).
    ConflictEvents,
    /// Webhook subscriptions, keyed by id.
    Subscriptions,
    /// Deliveries waiting, keyed by subscription and event position.
    Outbox,
    /// The delivery log, keyed by subscription, time and event position.
    Deliveries,
    /// Idempotency records (SPEC §9), keyed by principal and key.
    Idempotency,
    /// Idempotency records by expiry time (the key says which; no value).
    IdempotencyExpiry,
    /// API keys (SPEC §9), keyed by id: name, roles, salted hash.
    Keys,
    /// Lock records (SPEC §4), keyed by resource: last fence, live holder.
    Locks,
    /// Queued lock waiters, keyed by resource and sequence number.
    LockWaiters,
    /// Live leases by expiry time (the key says which; no value).
    LockExpiries,
}

impl SideTable {
    /// The stable code of the table.
    pub const fn code(self) -> u8 {
        match self {
            Self::Conflicts => 1,
            Self::Collections => 2,
            Self::ConflictEvents => 3,
            Self::Subscriptions => 4,
            Self::Outbox => 5,
            Self::Deliveries => 6,
            Self::Idempotency => 7,
            Self::IdempotencyExpiry => 8,
            Self::Keys => 9,
            Self::Locks => 10,
            Self::LockWaiters => 11,
            Self::LockExpiries => 12,
        }
    }

    /// The table with this code.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Conflicts),
            2 => Some(Self::Collections),
            3 => Some(Self::ConflictEvents),
            4 => Some(Self::Subscriptions),
            5 => Some(Self::Outbox),
            6 => Some(Self::Deliveries),
            7 => Some(Self::Idempotency),
            8 => Some(Self::IdempotencyExpiry),
            9 => Some(Self::Keys),
            10 => Some(Self::Locks),
            11 => Some(Self::LockWaiters),
            12 => Some(Self::LockExpiries),
            _ => None,
        }
    }
}

/// The result of planning a write: the answer, and what to store for it (nothing for
/// a no-op).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// What to answer once the commit is durable.
    pub outcome: WriteOutcome,
    /// What to write; `None` when nothing changes.
    pub effect: Option<Effect>,
}

/// The content a write would leave: a document, or a tombstone.
pub(crate) enum NextContent {
    Document(Document),
    Tombstone,
}

/// Plans one write against the current state.
pub fn plan_write(
    view: &dyn StateView,
    command: &WriteCommand,
    ctx: &WriteContext<'_>,
) -> Result<Planned, EngineError> {
    let key = &command.key;
    let head = view.head(key)?;
    let live = head.as_ref().filter(|v| !v.is_tombstone());

    let reverts = matches!(command.action, WriteAction::Revert { .. });
    if (command.action.needs_live_resource() && live.is_none()) || (reverts && head.is_none()) {
        return Err(not_found(key, head.as_ref()));
    }

    // Only a refusal reports the current state (and hashes its ETag).
    let current_state = || live.map(|v| CurrentState::of(key, v));
    let precondition_failed = |condition| -> Result<EngineError, EngineError> {
        let current_matches_request = match live {
            Some(current) => would_change_nothing(view, command, current, ctx)?,
            None => false,
        };
        Ok(EngineError::PreconditionFailed {
            condition,
            current: current_state(),
            current_matches_request,
        })
    };
    let version_conflict = |expected| EngineError::VersionConflict {
        expected,
        current: current_state(),
    };

    // A stale If-Match or ?if_version is refused, unless the collection's conflict
    // policy takes it (then the write's other preconditions still hold).
    let mut stale = None;
    match evaluate(&command.preconditions, live, key) {
        Evaluation::Proceed => {}
        Evaluation::Failed(FailedCondition::IfMatch)
            if let Some(found) = policy::stale(
                ctx,
                live,
                command
                    .preconditions
                    .if_match
                    .as_ref()
                    .and_then(policy::tag_version),
                NamedBy::IfMatch,
            ) =>
        {
            let rest = Preconditions {
                if_match: None,
                ..command.preconditions.clone()
            };
            match evaluate(&rest, live, key) {
                Evaluation::Proceed => stale = Some(found),
                Evaluation::Failed(condition) => return Err(precondition_failed(condition)?),
                Evaluation::NotModified => {
                    return Err(precondition_failed(FailedCondition::IfNoneMatch)?);
                }
            }
        }
        Evaluation::Failed(condition) => return Err(precondition_failed(condition)?),
        Evaluation::NotModified => return Err(precondition_failed(FailedCondition::IfNoneMatch)?),
    }

    if let Some(expected) = command.if_version {
        let actual = live.map_or(0, |v| v.number);
        if expected != actual {
            match policy::stale(ctx, live, Some(expected), NamedBy::IfVersion) {
                Some(found) if stale.is_none_or(|s| s.base == found.base) => stale = Some(found),
                _ => return Err(version_conflict(expected)),
            }
        }
    }

    if ctx.settings.require_preconditions
        && !command.preconditions.guards_write()
        && command.if_version.is_none()
    {
        return Err(EngineError::PreconditionRequired);
    }

    if let Some(refusal) = ctx.locked {
        return Err(refusal.clone());
    }

    let (next, policy_applied) = match (stale, live) {
        (Some(stale), Some(current)) => {
            let applied = match ctx.settings.conflict_policy {
                ConflictPolicy::Merge => {
                    let refusal = || match stale.named_by {
                        NamedBy::IfMatch => {
                            precondition_failed(FailedCondition::IfMatch).unwrap_or_else(|e| e)
                        }
                        NamedBy::IfVersion => version_conflict(stale.base),
                    };
                    let next = policy::merged_content(view, command, current, stale, ctx, refusal)?;
                    let applied = PolicyApplied::Merged {
                        base: stale.base,
                        over: current.number,
                    };
                    (next, applied)
                }
                _ => (
                    next_content(view, command, live, ctx)?,
                    PolicyApplied::Overwritten {
                        base: stale.base,
                        over: current.number,
                    },
                ),
            };
            (applied.0, Some(applied.1))
        }
        _ => (next_content(view, command, live, ctx)?, None),
    };
    if let Some(head) = head.as_ref()
        && is_same_content(live, Some(head), &next)
    {
        let mut planned = unchanged(key, head, WriteStatus::Unchanged);
        planned.outcome.policy = policy_applied;
        return Ok(planned);
    }

    let (body, status) = match next {
        NextContent::Document(doc) => {
            let status = if live.is_some() {
                WriteStatus::Updated
            } else {
                WriteStatus::Created
            };
            (Some(doc.bytes().clone()), status)
        }
        NextContent::Tombstone => (None, WriteStatus::Deleted),
    };
    let op = match (&command.action, status) {
        (WriteAction::Revert { .. }, _) => Op::Revert,
        (WriteAction::Delete, _) => Op::Delete,
        (WriteAction::MergePatch(_) | WriteAction::JsonPatch(_), _) => Op::Patch,
        (_, WriteStatus::Created) => Op::Create,
        _ => Op::Replace,
    };
    let version = next_version(head.as_ref(), ctx, op, &command.by, body);
    Ok(Planned {
        outcome: WriteOutcome {
            key: key.clone(),
            status,
            version: version.clone(),
            policy: policy_applied,
            conflict_id: None,
        },
        effect: Some(Effect {
            writes: vec![VersionWrite {
                key: key.clone(),
                version,
            }],
            side: Vec::new(),
        }),
    })
}

/// The version a write makes after `head`: numbered on from it (across deletes),
/// at the commit's revision, with a time that never goes back.
pub(crate) fn next_version(
    head: Option<&Version>,
    ctx: &WriteContext<'_>,
    op: Op,
    by: &crate::command::Principal,
    body: Option<bytes::Bytes>,
) -> Version {
    Version {
        number: head.map_or(1, |h| h.number + 1),
        revision: ctx.revision,
        // Keep each resource's timestamps monotonic even if the wall clock steps back.
        at: head.map_or(ctx.now, |h| h.at.max(ctx.now)),
        op,
        by: by.as_str().to_owned(),
        body,
    }
}

/// The request's preconditions against the live version of `key`.
fn evaluate(
    preconditions: &Preconditions,
    live: Option<&Version>,
    key: &ResourceKey,
) -> Evaluation {
    let etag = live.map(|v| v.etag(key));
    let validators = live.zip(etag.as_ref()).map(|(v, etag)| Validators {
        etag,
        last_modified_secs: v.at.secs(),
    });
    preconditions.evaluate(Safety::Unsafe, validators)
}

/// The answer for a write that changes nothing.
fn unchanged(key: &ResourceKey, head: &Version, status: WriteStatus) -> Planned {
    Planned {
        outcome: WriteOutcome {
            key: key.clone(),
            status,
            version: head.clone(),
            policy: None,
            conflict_id: None,
        },
        effect: None,
    }
}

/// True when applying the write to the current version would change nothing: told
/// to a refused client (`current_matches_request`) so it can tell "someone already
/// made this state" from "someone made another state", without being told it wrote.
fn would_change_nothing(
    view: &dyn StateView,
    command: &WriteCommand,
    current: &Version,
    ctx: &WriteContext<'_>,
) -> Result<bool, EngineError> {
    match next_content(view, command, Some(current), ctx) {
        Ok(next) => Ok(is_same_content(Some(current), Some(current), &next)),
        // A write that cannot apply to the current version was not applied.
        Err(EngineError::Storage(e)) => Err(EngineError::Storage(e)),
        Err(_) => Ok(false),
    }
}

/// Whether `next` equals the current content (a live document, or a tombstone).
fn is_same_content(live: Option<&Version>, head: Option<&Version>, next: &NextContent) -> bool {
    match next {
        NextContent::Document(doc) => live
            .and_then(|v| v.body.as_ref())
            .is_some_and(|body| doc.same_content_as(body)),
        NextContent::Tombstone => head.is_some() && live.is_none(),
    }
}

/// Computes the content the write would leave on top of `live`.
pub(crate) fn next_content(
    view: &dyn StateView,
    command: &WriteCommand,
    live: Option<&Version>,
    ctx: &WriteContext<'_>,
) -> Result<NextContent, EngineError> {
    let key = &command.key;
    let current_value = || -> Result<Value, EngineError> {
        let body = live
            .and_then(|v| v.body.clone())
            .ok_or_else(|| EngineError::Internal("patch planned without a live version".into()))?;
        Ok(Document::from_stored(body)?.into_value())
    };
    let current_state = || {
        live.map(|v| CurrentState::of(key, v))
            .ok_or_else(|| EngineError::Internal("patch planned without a current state".into()))
    };
    match &command.action {
        WriteAction::Put(doc) => Ok(NextContent::Document(doc.clone())),
        WriteAction::Create(doc) => {
            if live.is_some() {
                return Err(EngineError::Internal(format!(
                    "server-made id {key} already exists"
                )));
            }
            Ok(NextContent::Document(doc.clone()))
        }
        WriteAction::MergePatch(patch) => {
            let merged = apply_merge_patch(&current_value()?, patch);
            Ok(NextContent::Document(Document::from_result(
                merged, ctx.limits,
            )?))
        }
        WriteAction::JsonPatch(patch) => match patch.apply(&current_value()?) {
            Ok(result) => Ok(NextContent::Document(Document::from_result(
                result, ctx.limits,
            )?)),
            Err(failure) if failure.test_failed => Err(EngineError::PatchTestFailed {
                operation: failure.operation,
                path: failure.path,
                current: Box::new(current_state()?),
            }),
            Err(failure) => Err(EngineError::PatchConflict {
                operation: failure.operation,
                path: failure.path,
                reason: failure.reason,
                current: Box::new(current_state()?),
            }),
        },
        WriteAction::Delete => Ok(NextContent::Tombstone),
        WriteAction::Revert { to } => match lookup_version(
            view,
            key,
            *to,
            ReadContext {
                retention: ctx.retention,
                now: ctx.now,
            },
        )? {
            VersionLookup::Found(target) => match target.body {
                Some(body) => Ok(NextContent::Document(Document::from_stored(body)?)),
                None => Ok(NextContent::Tombstone),
            },
            VersionLookup::Compacted { oldest } => Err(EngineError::HistoryCompacted {
                what: format!("version {to} of {key}"),
                oldest,
            }),
            VersionLookup::Missing => Err(EngineError::NotFound {
                detail: format!("{key} has no version {to} to revert to"),
                tombstone: None,
            }),
        },
    }
}

#[cfg(test)]
mod tests;
