//! The write rules against an in-memory store.

use serde_json::json;

use super::*;
use crate::etag::TagCondition;
use crate::patch::JsonPatch;
use crate::test_view::{MemoryView, command, if_match, key, put};

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
    let required = CollectionSettings {
        require_preconditions: true,
        ..CollectionSettings::default()
    };
    assert!(matches!(
        view.run_with(put(json!({})), required),
        Err(EngineError::PreconditionRequired)
    ));
    let mut guarded = put(json!({}));
    guarded.preconditions.if_none_match = Some(TagCondition::Any);
    let created = view.run_with(guarded, required).unwrap();
    assert_eq!(
        (created.status, created.version.number),
        (WriteStatus::Created, 1)
    );
    // A guard that holds lets the write through; `?if_version` counts as one.
    let mut by_version = put(json!({"n": 2}));
    by_version.if_version = Some(1);
    let updated = view.run_with(by_version, required).unwrap();
    assert_eq!(
        (updated.status, updated.version.number),
        (WriteStatus::Updated, 2)
    );
}

fn policy(conflict_policy: ConflictPolicy) -> CollectionSettings {
    CollectionSettings {
        conflict_policy,
        ..CollectionSettings::default()
    }
}

#[test]
fn merge_applies_disjoint_changes_of_a_stale_write() {
    let view = MemoryView::default();
    let merge = policy(ConflictPolicy::Merge);
    let base = view.run(put(json!({"a": 1, "b": 1}))).unwrap();
    let base_tag = base.version.etag(&key());
    view.run(put(json!({"a": 2, "b": 1}))).unwrap();
    let merged = view
        .run_with(if_match(put(json!({"a": 1, "b": 2})), &base_tag), merge)
        .unwrap();
    assert_eq!(merged.version.number, 3);
    assert_eq!(
        merged.policy,
        Some(PolicyApplied::Merged { base: 1, over: 2 })
    );
    let body: Value = serde_json::from_slice(merged.version.body.as_ref().unwrap()).unwrap();
    assert_eq!(body, json!({"a": 2, "b": 2}));

    // A merge patch made against the base is applied to the base first.
    let mut patch = command(WriteAction::MergePatch(json!({"c": 3})));
    patch.if_version = Some(1);
    let patched = view.run_with(patch, merge).unwrap();
    let body: Value = serde_json::from_slice(patched.version.body.as_ref().unwrap()).unwrap();
    assert_eq!(body, json!({"a": 2, "b": 2, "c": 3}));
}

#[test]
fn merge_refuses_overlaps_and_missing_bases() {
    let view = MemoryView::default();
    let merge = policy(ConflictPolicy::Merge);
    let base = view.run(put(json!({"a": 1}))).unwrap();
    let base_tag = base.version.etag(&key());
    view.run(put(json!({"a": 2}))).unwrap();
    let overlap = view
        .run_with(if_match(put(json!({"a": 3})), &base_tag), merge)
        .unwrap_err();
    let EngineError::MergeConflict {
        base_version: 1,
        overlaps,
        ..
    } = overlap
    else {
        panic!("{overlap:?}");
    };
    assert_eq!(overlaps[0].path, vec!["a".to_owned()]);
    // A deletion collides with every change since its base.
    let delete = if_match(command(WriteAction::Delete), &base_tag);
    assert!(matches!(
        view.run_with(delete, merge),
        Err(EngineError::MergeConflict { .. })
    ));
    // A tag with a right version number but a wrong hash names no base.
    let forged = crate::ETag::derive(&key(), 1, 99, Timestamp::from_millis(1));
    let refused = view
        .run_with(if_match(put(json!({"b": 1})), &forged), merge)
        .unwrap_err();
    assert!(
        matches!(refused, EngineError::Unmergeable { .. }),
        "{refused:?}"
    );
    assert_eq!(refused.kind(), crate::ProblemKind::PreconditionFailed);
    assert_eq!(view.head(&key()).unwrap().unwrap().number, 2);
}

#[test]
fn last_write_wins_overwrites_and_keeps_the_other_preconditions() {
    let view = MemoryView::default();
    let lww = policy(ConflictPolicy::LastWriteWins);
    let base = view.run(put(json!({"a": 1}))).unwrap();
    let base_tag = base.version.etag(&key());
    view.run(put(json!({"a": 2}))).unwrap();
    let won = view
        .run_with(if_match(put(json!({"b": 9})), &base_tag), lww)
        .unwrap();
    assert_eq!(
        won.policy,
        Some(PolicyApplied::Overwritten { base: 1, over: 2 })
    );
    assert_eq!(won.version.body.unwrap().as_ref(), br#"{"b":9}"#);
    // If-None-Match still counts, and `*` is not a stale version.
    let mut both = if_match(put(json!({"c": 1})), &base_tag);
    both.preconditions.if_none_match = Some(TagCondition::Any);
    assert!(matches!(
        view.run_with(both, lww),
        Err(EngineError::PreconditionFailed {
            condition: FailedCondition::IfNoneMatch,
            ..
        })
    ));
    let mut future = put(json!({"c": 1}));
    future.if_version = Some(7);
    assert!(matches!(
        view.run_with(future, lww),
        Err(EngineError::VersionConflict { expected: 7, .. })
    ));
    // Under reject the same stale write is refused.
    assert!(matches!(
        view.run(if_match(put(json!({"d": 1})), &base_tag)),
        Err(EngineError::PreconditionFailed { .. })
    ));
}
