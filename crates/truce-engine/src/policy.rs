//! Conflict policies (SPEC §8): what a collection does with a write based on a
//! version that is no longer current.
//!
//! Under `reject` (the default) such a write is refused. Under `merge` and
//! `last_write_wins`, a write is *stale* when its `If-Match` names a strong truce
//! ETag of an older version of the resource, or its `?if_version` names an older
//! version, and the resource is live. Everything else keeps its usual answer: `*`,
//! tags that name no version of the resource, `If-None-Match`, an
//! `If-Unmodified-Since`, a deleted resource, and the other preconditions of the
//! request (evaluated as if `If-Match` were absent).
//!
//! - `last_write_wins` applies the write to the current version as if it were not
//!   stale (a merge patch or JSON Patch applies to the current document).
//! - `merge` rebuilds what the write made of its base (the named version; a patch
//!   is applied to it) and merges that with the current version field by field
//!   ([`crate::merge::three_way`]). Disjoint changes apply; overlaps are a 409
//!   merge-conflict naming each path. A base that history no longer has, a base
//!   whose ETag is not the one sent, or a patch that does not apply to its own
//!   base cannot be merged: the write is refused as under `reject`, saying why.
//!   A deletion removes the whole document, so under `merge` it overlaps with
//!   whatever the current version changed.

use crate::collection::ConflictPolicy;
use crate::command::WriteCommand;
use crate::error::{CurrentState, EngineError};
use crate::etag::TagCondition;
use crate::merge::{MergeOutcome, Overlap, three_way};
use crate::read::{ReadContext, VersionLookup, lookup_version};
use crate::record::Version;
use crate::rules::{NextContent, WriteContext, next_content};
use crate::store::StateView;

/// A write that the collection's policy may accept although it is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stale {
    /// The version the write was based on.
    pub base: u64,
    /// How the named base was given.
    pub named_by: NamedBy,
}

/// Which part of the request named the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NamedBy {
    /// `If-Match`.
    IfMatch,
    /// `?if_version`.
    IfVersion,
}

/// The version a strong truce entity-tag names (`"7-3f9a2c1d"` names version 7).
pub(crate) fn tag_version(condition: &TagCondition) -> Option<u64> {
    match condition {
        TagCondition::Any => None,
        TagCondition::Tags(tags) => tags
            .iter()
            .filter(|t| !t.weak)
            .find_map(|t| t.opaque.split_once('-')?.0.parse().ok()),
    }
}

/// Whether a write based on version `base` of `live` is one the collection's
/// policy handles: a policy other than `reject`, a live resource, an older base.
pub(crate) fn stale(
    ctx: &WriteContext<'_>,
    live: Option<&Version>,
    base: Option<u64>,
    named_by: NamedBy,
) -> Option<Stale> {
    if ctx.settings.conflict_policy == ConflictPolicy::Reject {
        return None;
    }
    let current = live?.number;
    let base = base.filter(|b| (1..current).contains(b))?;
    Some(Stale { base, named_by })
}

/// The content a stale write leaves under `merge`: the write's changes to its
/// base applied to `current`. `refusal` is the answer under `reject`, given
/// (with the reason) when the write cannot be merged.
pub(crate) fn merged_content(
    view: &dyn StateView,
    command: &WriteCommand,
    current: &Version,
    stale: Stale,
    ctx: &WriteContext<'_>,
    refusal: impl FnOnce() -> EngineError,
) -> Result<NextContent, EngineError> {
    let key = &command.key;
    let unmergeable = |reason: String| EngineError::Unmergeable {
        source: Box::new(refusal()),
        reason,
    };
    let base = match lookup_version(
        view,
        key,
        stale.base,
        ReadContext {
            retention: ctx.retention,
            now: ctx.now,
        },
    )? {
        VersionLookup::Found(base) => base,
        VersionLookup::Compacted { .. } | VersionLookup::Missing => {
            return Err(unmergeable(format!(
                "version {} is no longer in the history, so there is no base to merge from",
                stale.base
            )));
        }
    };
    let tag_matches = match (&command.preconditions.if_match, stale.named_by) {
        (Some(condition), NamedBy::IfMatch) => condition.matches_strong(&base.etag(key)),
        _ => true,
    };
    if !tag_matches {
        return Err(unmergeable(format!(
            "If-Match is not the ETag of version {}, so it names no base to merge from",
            stale.base
        )));
    }
    let Some(base_body) = base.body.clone() else {
        return Err(unmergeable(format!(
            "version {} is a deletion, so there is no base to merge from",
            stale.base
        )));
    };
    let base_value = crate::document::Document::from_stored(base_body)?.into_value();
    let current_body = current
        .body
        .clone()
        .ok_or_else(|| EngineError::Internal("merge planned over a tombstone".into()))?;
    let theirs = crate::document::Document::from_stored(current_body)?.into_value();
    let ours = match next_content(view, command, Some(&base), ctx) {
        Ok(NextContent::Document(doc)) => Some(doc.into_value()),
        Ok(NextContent::Tombstone) => None,
        Err(EngineError::PatchTestFailed { .. } | EngineError::PatchConflict { .. }) => {
            return Err(unmergeable(format!(
                "the patch does not apply to version {}, which it names as its base",
                stale.base
            )));
        }
        Err(other) => return Err(other),
    };
    let outcome = match &ours {
        Some(ours) => three_way(&base_value, ours, &theirs),
        // Removing the document collides with every change made to it since.
        None => MergeOutcome::Conflict {
            overlaps: vec![Overlap {
                path: Vec::new(),
                base: Some(base_value.clone()),
                ours: None,
                theirs: Some(theirs.clone()),
            }],
        },
    };
    match outcome {
        MergeOutcome::Clean { merged, .. } => Ok(NextContent::Document(
            crate::document::Document::from_result(merged, ctx.limits)?,
        )),
        MergeOutcome::Conflict { overlaps } => Err(EngineError::MergeConflict {
            base_version: stale.base,
            overlaps,
            current: Box::new(CurrentState::of(key, current)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::collection::{CollectionSettings, ConflictPolicy};
    use crate::error::EngineError;
    use crate::merge::{FieldPath, changes, value_at};
    use crate::test_view::{MemoryView, if_match, key, put};

    /// Small JSON objects with nested objects.
    fn doc() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            (0i64..4).prop_map(Value::from),
            "[ab]{0,1}".prop_map(Value::from),
            proptest::collection::vec((0i64..2).prop_map(Value::from), 0..2).prop_map(Value::Array),
        ];
        let value = leaf.prop_recursive(2, 12, 3, |inner| {
            proptest::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        });
        proptest::collection::btree_map("[a-d]", value, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// Whether one side's change at `a` and the other's at `b` collide (SPEC §8:
    /// the same path to different values, or a path and its descendant), judged
    /// from the change lists alone.
    fn collide(a: &(FieldPath, Option<Value>), b: &(FieldPath, Option<Value>)) -> bool {
        if a.0 == b.0 {
            return a.1 != b.1;
        }
        a.0.starts_with(&b.0) || b.0.starts_with(&a.0)
    }

    proptest! {
        /// A stale write under `merge`, through the write rules: applied only
        /// when no change of one side collides with a change of the other, and
        /// then holding every change of both sides; refused with merge-conflict
        /// (and nothing written) exactly when they collide.
        #[test]
        fn the_merge_policy_never_loses_a_change_nor_merges_an_overlap(
            base in doc(), ours in doc(), theirs in doc()
        ) {
            prop_assume!(base != theirs);
            let view = MemoryView::default();
            let merge = CollectionSettings {
                conflict_policy: ConflictPolicy::Merge,
                ..CollectionSettings::default()
            };
            let first = view.run(put(base.clone())).unwrap();
            let base_tag = first.version.etag(&key());
            view.run(put(theirs.clone())).unwrap();

            let pairs = |side: &Value| -> Vec<(FieldPath, Option<Value>)> {
                changes(&base, side).into_iter().map(|c| (c.path, c.value)).collect()
            };
            let (our_changes, their_changes) = (pairs(&ours), pairs(&theirs));
            let overlap = our_changes
                .iter()
                .any(|o| their_changes.iter().any(|t| collide(o, t)));

            match view.run_with(if_match(put(ours.clone()), &base_tag), merge) {
                Ok(outcome) => {
                    prop_assert!(!overlap, "merged an overlap");
                    let merged: Value =
                        serde_json::from_slice(outcome.version.body.as_ref().unwrap()).unwrap();
                    for (path, value) in our_changes.iter().chain(&their_changes) {
                        prop_assert_eq!(value_at(&merged, path), value.as_ref());
                    }
                }
                Err(EngineError::MergeConflict { overlaps, .. }) => {
                    prop_assert!(overlap, "refused disjoint changes: {:?}", overlaps);
                    let head = view.head_body();
                    prop_assert_eq!(head, theirs);
                }
                Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
        }
    }
}
