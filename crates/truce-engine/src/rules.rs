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

use crate::command::{WriteAction, WriteCommand, WriteOutcome, WriteStatus};
use crate::document::{Document, DocumentLimits};
use crate::error::{CurrentState, EngineError};
use crate::name::ResourceKey;
use crate::patch::apply_merge_patch;
use crate::precondition::{Evaluation, FailedCondition, Safety, Validators};
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
    /// The collection requires a guarding precondition on every write (428 otherwise).
    pub require_preconditions: bool,
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

/// The kinds of side record. A backend keeps each in a table (or key range) of
/// its own; the code is stable on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SideTable {
    /// Conflict records (SPEC §7).
    Conflicts,
}

impl SideTable {
    /// The stable code of the table.
    pub const fn code(self) -> u8 {
        match self {
            Self::Conflicts => 1,
        }
    }

    /// The table with this code.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Conflicts),
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
enum NextContent {
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

    if ctx.require_preconditions
        && !command.preconditions.guards_write()
        && command.if_version.is_none()
    {
        return Err(EngineError::PreconditionRequired);
    }

    let current_state = live.map(|v| CurrentState {
        resource: key.clone(),
        version: v.number,
        etag: v.etag(key),
    });
    let validators = live
        .zip(current_state.as_ref())
        .map(|(v, state)| Validators {
            etag: &state.etag,
            last_modified_secs: v.at.secs(),
        });
    match command.preconditions.evaluate(Safety::Unsafe, validators) {
        Evaluation::Proceed => {}
        Evaluation::Failed(condition) => {
            let current_matches_request = match live {
                Some(current) => would_change_nothing(view, command, current, ctx)?,
                None => false,
            };
            return Err(EngineError::PreconditionFailed {
                condition,
                current: current_state,
                current_matches_request,
            });
        }
        Evaluation::NotModified => {
            return Err(EngineError::PreconditionFailed {
                condition: FailedCondition::IfNoneMatch,
                current: current_state,
                current_matches_request: false,
            });
        }
    }

    if let Some(expected) = command.if_version {
        let actual = live.map_or(0, |v| v.number);
        if expected != actual {
            return Err(EngineError::VersionConflict {
                expected,
                current: current_state,
            });
        }
    }

    let next = next_content(view, command, live, current_state.as_ref(), ctx)?;
    if let Some(head) = head.as_ref()
        && is_same_content(live, Some(head), &next)
    {
        return Ok(unchanged(key, head, WriteStatus::Unchanged));
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

/// The answer for a write that changes nothing.
fn unchanged(key: &ResourceKey, head: &Version, status: WriteStatus) -> Planned {
    Planned {
        outcome: WriteOutcome {
            key: key.clone(),
            status,
            version: head.clone(),
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
    let state = CurrentState {
        resource: command.key.clone(),
        version: current.number,
        etag: current.etag(&command.key),
    };
    match next_content(view, command, Some(current), Some(&state), ctx) {
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

/// Computes the content the write would leave.
fn next_content(
    view: &dyn StateView,
    command: &WriteCommand,
    live: Option<&Version>,
    current: Option<&CurrentState>,
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
        current
            .cloned()
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
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::command::Principal;
    use crate::error::StorageError;
    use crate::etag::TagCondition;
    use crate::patch::JsonPatch;
    use crate::precondition::Preconditions;
    use serde_json::json;

    /// A whole store in a map, for testing the rules alone.
    #[derive(Default)]
    struct MemoryView {
        versions: RefCell<BTreeMap<(ResourceKey, u64), Version>>,
        revision: RefCell<u64>,
    }

    impl StateView for MemoryView {
        fn head(&self, key: &ResourceKey) -> Result<Option<Version>, StorageError> {
            Ok(self
                .versions
                .borrow()
                .range((key.clone(), 0)..=(key.clone(), u64::MAX))
                .next_back()
                .map(|(_, v)| v.clone()))
        }
        fn walk_back(
            &self,
            key: &ResourceKey,
            below: u64,
            visit: &mut dyn FnMut(Version) -> bool,
        ) -> Result<(), StorageError> {
            let versions = self.versions.borrow();
            for (_, version) in versions.range((key.clone(), 0)..(key.clone(), below)).rev() {
                if !visit(version.clone()) {
                    break;
                }
            }
            Ok(())
        }
    }

    impl MemoryView {
        fn run(&self, command: WriteCommand) -> Result<WriteOutcome, EngineError> {
            self.run_with(command, false)
        }

        fn run_with(
            &self,
            command: WriteCommand,
            require_preconditions: bool,
        ) -> Result<WriteOutcome, EngineError> {
            let retention = Retention::default();
            let ctx = WriteContext {
                revision: *self.revision.borrow() + 1,
                now: Timestamp::from_millis(1_000_000),
                limits: DocumentLimits::default(),
                retention: &retention,
                require_preconditions,
            };
            let planned = plan_write(self, &command, &ctx)?;
            if let Some(effect) = planned.effect {
                *self.revision.borrow_mut() += 1;
                for write in effect.writes {
                    self.versions
                        .borrow_mut()
                        .insert((write.key, write.version.number), write.version);
                }
            }
            Ok(planned.outcome)
        }
    }

    fn key() -> ResourceKey {
        ResourceKey::parse("things", "a").unwrap()
    }

    fn command(action: WriteAction) -> WriteCommand {
        WriteCommand {
            key: key(),
            action,
            preconditions: Preconditions::default(),
            if_version: None,
            by: Principal::anonymous(),
            request_id: None,
            resolves: None,
        }
    }

    fn put(doc: Value) -> WriteCommand {
        let doc = Document::parse(doc.to_string().as_bytes(), DocumentLimits::default()).unwrap();
        command(WriteAction::Put(doc))
    }

    fn if_match(mut command: WriteCommand, etag: &crate::ETag) -> WriteCommand {
        command.preconditions.if_match =
            Some(TagCondition::parse([etag.to_header().as_str()]).unwrap());
        command
    }

    #[test]
    fn versions_count_up_and_continue_after_delete() {
        let view = MemoryView::default();
        assert_eq!(
            view.run(put(json!({"n": 1}))).unwrap().status,
            WriteStatus::Created
        );
        assert_eq!(view.run(put(json!({"n": 2}))).unwrap().version.number, 2);
        let deleted = view.run(command(WriteAction::Delete)).unwrap();
        assert_eq!(
            (deleted.status, deleted.version.number),
            (WriteStatus::Deleted, 3)
        );
        let again = view.run(put(json!({"n": 1}))).unwrap();
        assert_eq!(
            (again.status, again.version.number, again.version.op),
            (WriteStatus::Created, 4, Op::Create)
        );
    }

    #[test]
    fn equal_content_makes_no_version() {
        let view = MemoryView::default();
        view.run(put(json!({"a": 1, "b": 2}))).unwrap();
        let same = view.run(put(json!({"b": 2, "a": 1}))).unwrap();
        assert_eq!(
            (same.status, same.version.number),
            (WriteStatus::Unchanged, 1)
        );
        let patch = view
            .run(command(WriteAction::MergePatch(json!({"a": 1}))))
            .unwrap();
        assert_eq!(patch.status, WriteStatus::Unchanged);
    }

    #[test]
    fn stale_if_match_is_always_refused() {
        let view = MemoryView::default();
        let first = view.run(put(json!({"n": 1}))).unwrap();
        let stale = first.version.etag(&key());
        view.run(put(json!({"n": 2}))).unwrap();
        let refused = view
            .run(if_match(put(json!({"n": 3})), &stale))
            .unwrap_err();
        assert!(matches!(
            refused,
            EngineError::PreconditionFailed {
                condition: FailedCondition::IfMatch,
                current: Some(CurrentState { version: 2, .. }),
                current_matches_request: false,
            }
        ));
        // The same state from the same stale base: still refused, but it says so.
        let same = view
            .run(if_match(put(json!({"n": 2})), &stale))
            .unwrap_err();
        assert!(matches!(
            same,
            EngineError::PreconditionFailed {
                condition: FailedCondition::IfMatch,
                current: Some(CurrentState { version: 2, .. }),
                current_matches_request: true,
            }
        ));
        assert_eq!(view.head(&key()).unwrap().unwrap().number, 2);
    }

    #[test]
    fn patch_and_delete_need_a_live_resource_whatever_the_preconditions() {
        let view = MemoryView::default();
        let mut delete = command(WriteAction::Delete);
        delete.preconditions.if_match = Some(TagCondition::Any);
        assert!(matches!(
            view.run(delete.clone()),
            Err(EngineError::NotFound {
                tombstone: None,
                ..
            })
        ));
        view.run(put(json!({}))).unwrap();
        view.run(command(WriteAction::Delete)).unwrap();
        assert!(matches!(
            view.run(delete),
            Err(EngineError::NotFound {
                tombstone: Some((2, _)),
                ..
            })
        ));
    }

    #[test]
    fn if_version_zero_means_must_not_exist() {
        let view = MemoryView::default();
        let mut create = put(json!({"n": 1}));
        create.if_version = Some(0);
        view.run(create.clone()).unwrap();
        assert!(matches!(
            view.run(create),
            Err(EngineError::VersionConflict {
                expected: 0,
                current: Some(CurrentState { version: 1, .. })
            })
        ));
    }

    #[test]
    fn json_patch_failures_are_typed() {
        let view = MemoryView::default();
        view.run(put(json!({"n": 1}))).unwrap();
        let test = JsonPatch::parse(br#"[{"op":"test","path":"/n","value":2}]"#).unwrap();
        assert!(matches!(
            view.run(command(WriteAction::JsonPatch(test))),
            Err(EngineError::PatchTestFailed { operation: 0, .. })
        ));
        let missing = JsonPatch::parse(br#"[{"op":"replace","path":"/x/y","value":2}]"#).unwrap();
        assert!(matches!(
            view.run(command(WriteAction::JsonPatch(missing))),
            Err(EngineError::PatchConflict { .. })
        ));
        let not_object = JsonPatch::parse(br#"[{"op":"replace","path":"","value":[1]}]"#).unwrap();
        assert!(matches!(
            view.run(command(WriteAction::JsonPatch(not_object))),
            Err(EngineError::Invalid { .. })
        ));
    }

    #[test]
    fn revert_restores_content_and_undeletes() {
        let view = MemoryView::default();
        view.run(put(json!({"n": 1}))).unwrap();
        view.run(put(json!({"n": 2}))).unwrap();
        view.run(command(WriteAction::Delete)).unwrap();
        let reverted = view.run(command(WriteAction::Revert { to: 1 })).unwrap();
        assert_eq!(
            (
                reverted.status,
                reverted.version.number,
                reverted.version.op
            ),
            (WriteStatus::Created, 4, Op::Revert)
        );
        assert_eq!(reverted.version.body.unwrap().as_ref(), br#"{"n":1}"#);
        assert!(matches!(
            view.run(command(WriteAction::Revert { to: 9 })),
            Err(EngineError::NotFound { .. })
        ));
    }

    #[test]
    fn required_preconditions_refuse_unguarded_writes() {
        let view = MemoryView::default();
        assert!(matches!(
            view.run_with(put(json!({})), true),
            Err(EngineError::PreconditionRequired)
        ));
        let mut guarded = put(json!({}));
        guarded.preconditions.if_none_match = Some(TagCondition::Any);
        let created = view.run_with(guarded, true).unwrap();
        assert_eq!(
            (created.status, created.version.number),
            (WriteStatus::Created, 1)
        );
        // A guard that holds lets the write through; `?if_version` counts as one.
        let mut by_version = put(json!({"n": 2}));
        by_version.if_version = Some(1);
        let updated = view.run_with(by_version, true).unwrap();
        assert_eq!(
            (updated.status, updated.version.number),
            (WriteStatus::Updated, 2)
        );
    }
}
