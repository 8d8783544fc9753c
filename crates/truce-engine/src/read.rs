//! Rules for reads: which version a read selects and when it is not there.

use crate::error::{EngineError, StorageError};
use crate::name::ResourceKey;
use crate::record::{HistoryPage, Version};
use crate::retention::Retention;
use crate::store::StateView;
use crate::time::Timestamp;

/// The result of looking up one version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionLookup {
    /// The version, as committed.
    Found(Version),
    /// It existed but retention removed it; `oldest` is the oldest still kept.
    Compacted {
        /// The oldest version still kept.
        oldest: u64,
    },
    /// The resource or the version never existed.
    Missing,
}

/// What the reads need besides the stored state: which versions retention keeps.
#[derive(Debug, Clone, Copy)]
pub struct ReadContext<'a> {
    /// The retention rules.
    pub retention: &'a Retention,
    /// The current time, for age-based retention.
    pub now: Timestamp,
}

/// Looks up version `number` of `key`: the head, or a past version that retention
/// still keeps.
pub fn lookup_version(
    view: &dyn StateView,
    key: &ResourceKey,
    number: u64,
    ctx: ReadContext<'_>,
) -> Result<VersionLookup, StorageError> {
    let Some(head) = view.head(key)? else {
        return Ok(VersionLookup::Missing);
    };
    if number == 0 || number > head.number {
        return Ok(VersionLookup::Missing);
    }
    if number == head.number {
        return Ok(VersionLookup::Found(head));
    }
    let mut found = None;
    view.walk_back(key, number + 1, &mut |version| {
        if version.number == number {
            found = Some(version);
            false
        } else {
            version.number > number
        }
    })?;
    match found {
        Some(version)
            if ctx
                .retention
                .retains(head.number, number, version.at, ctx.now) =>
        {
            Ok(VersionLookup::Found(version))
        }
        _ => Ok(VersionLookup::Compacted {
            oldest: oldest_retained(view, key, &head, ctx)?,
        }),
    }
}

/// `key` as it was at `revision` (a transaction's snapshot, SPEC §5): its
/// newest version committed at or below it. `Missing` when it did not exist
/// then (not yet created); a tombstone when it was deleted then; `Compacted`
/// when that version is older than what retention keeps, so the snapshot can
/// no longer be read (410).
pub fn lookup_at_revision(
    view: &dyn StateView,
    key: &ResourceKey,
    revision: u64,
    ctx: ReadContext<'_>,
) -> Result<VersionLookup, StorageError> {
    let Some(head) = view.head(key)? else {
        return Ok(VersionLookup::Missing);
    };
    if head.revision <= revision {
        return Ok(VersionLookup::Found(head));
    }
    let mut found = None;
    let mut reached_first = false;
    view.walk_back(key, head.number, &mut |version| {
        reached_first = version.number == 1;
        if version.revision <= revision {
            found = Some(version);
            false
        } else {
            true
        }
    })?;
    match found {
        Some(version)
            if ctx
                .retention
                .retains(head.number, version.number, version.at, ctx.now) =>
        {
            Ok(VersionLookup::Found(version))
        }
        // Version 1 came after the snapshot: the resource did not exist yet.
        None if reached_first || head.number == 1 => Ok(VersionLookup::Missing),
        _ => Ok(VersionLookup::Compacted {
            oldest: oldest_retained(view, key, &head, ctx)?,
        }),
    }
}

/// The oldest version of `key` that is both stored and kept by retention.
fn oldest_retained(
    view: &dyn StateView,
    key: &ResourceKey,
    head: &Version,
    ctx: ReadContext<'_>,
) -> Result<u64, StorageError> {
    let mut oldest = head.number;
    view.walk_back(key, head.number, &mut |version| {
        let kept = ctx
            .retention
            .retains(head.number, version.number, version.at, ctx.now);
        if kept {
            oldest = version.number;
        }
        kept
    })?;
    Ok(oldest)
}

/// A page of a resource's history, newest first, of the versions retention keeps;
/// 404 if the resource never existed (a deleted one still has its history).
pub fn history_page(
    view: &dyn StateView,
    key: &ResourceKey,
    before: Option<u64>,
    limit: usize,
    ctx: ReadContext<'_>,
) -> Result<HistoryPage, EngineError> {
    let mut items = Vec::new();
    let Some(head) = view.head(key)? else {
        return Err(not_found(key, None));
    };
    let before = before.unwrap_or(u64::MAX);
    if head.number < before {
        items.push(head.history_entry(key));
    }
    // One version past a full page tells whether there is a next page.
    let mut more = false;
    view.walk_back(key, before.min(head.number), &mut |version| {
        if !ctx
            .retention
            .retains(head.number, version.number, version.at, ctx.now)
        {
            return false;
        }
        if items.len() == limit {
            more = true;
            return false;
        }
        items.push(version.history_entry(key));
        true
    })?;
    let next = if more {
        items.last().map(|e| e.version)
    } else {
        None
    };
    Ok(HistoryPage { items, next })
}

/// The head of a resource if it is live; otherwise 404 (with the tombstone's version
/// and `deleted_at` when it was deleted).
pub fn require_live(key: &ResourceKey, head: Option<Version>) -> Result<Version, EngineError> {
    match head {
        Some(version) if !version.is_tombstone() => Ok(version),
        other => Err(not_found(key, other.as_ref())),
    }
}

/// The 404 for a resource that is not live: deleted (with the tombstone's version and
/// `deleted_at`) or never created.
pub(crate) fn not_found(key: &ResourceKey, head: Option<&Version>) -> EngineError {
    match head {
        Some(tombstone) => EngineError::NotFound {
            detail: format!("{key} was deleted"),
            tombstone: Some((tombstone.number, tombstone.at)),
        },
        None => EngineError::NotFound {
            detail: format!("{key} does not exist"),
            tombstone: None,
        },
    }
}

/// A version with a body, or the problem for why there is none: 404 for a version
/// that never existed or is a deletion, 410 for one removed by retention.
pub fn require_live_version(
    key: &ResourceKey,
    number: u64,
    lookup: VersionLookup,
) -> Result<Version, EngineError> {
    match lookup {
        VersionLookup::Found(version) if !version.is_tombstone() => Ok(version),
        VersionLookup::Found(tombstone) => Err(EngineError::NotFound {
            detail: format!("version {number} of {key} is a deletion"),
            tombstone: Some((tombstone.number, tombstone.at)),
        }),
        VersionLookup::Compacted { oldest } => Err(EngineError::HistoryCompacted {
            what: format!("version {number} of {key}"),
            oldest,
        }),
        VersionLookup::Missing => Err(EngineError::NotFound {
            detail: format!("{key} has no version {number}"),
            tombstone: None,
        }),
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;
    use crate::command::WriteAction;
    use crate::retention::Retention;
    use crate::test_view::{MemoryView, command, key, put};
    use crate::time::Timestamp;

    proptest::proptest! {
        /// At every revision, the version read is the newest one committed at
        /// or below it (`Missing` before the first), deletes included; and a
        /// version retention no longer keeps is `Compacted`, never another one.
        #[test]
        fn a_snapshot_reads_the_newest_version_at_or_below_its_revision(
            steps in proptest::collection::vec(proptest::bool::weighted(0.8), 1..12),
            other_writes in proptest::collection::vec(0usize..3, 12),
            keep in proptest::option::of(1u64..4),
        ) {
            let view = MemoryView::default();
            let other = crate::name::ResourceKey::parse("things", "other")
                .unwrap_or_else(|_| unreachable!());
            // (version number, revision) of every version of `key`.
            let mut written: Vec<(u64, u64)> = Vec::new();
            let mut revision = 0;
            for (i, live) in steps.iter().enumerate() {
                // Writes of another resource move the revision between ours.
                for _ in 0..other_writes[i] {
                    let mut write = put(serde_json::json!({"i": i, "r": revision}));
                    write.key = other.clone();
                    view.run(write).unwrap_or_else(|e| panic!("{e}"));
                    revision += 1;
                }
                let exists = written.last().is_some_and(|_| {
                    matches!(view.head(&key()), Ok(Some(v)) if !v.is_tombstone())
                });
                let write = if *live || !exists {
                    put(serde_json::json!({"i": i}))
                } else {
                    command(WriteAction::Delete)
                };
                let outcome = view.run(write).unwrap_or_else(|e| panic!("{e}"));
                revision += 1;
                written.push((outcome.version.number, revision));
            }
            let retention = Retention { max_versions: keep, ..Retention::default() };
            let ctx = ReadContext { retention: &retention, now: Timestamp::from_millis(1_000_000) };
            let head = written.last().map_or(0, |w| w.0);
            for at in 0..=revision {
                let expected = written.iter().rev().find(|(_, r)| *r <= at).map(|(n, _)| *n);
                let got = lookup_at_revision(&view, &key(), at, ctx)
                    .unwrap_or_else(|e| panic!("{e}"));
                match (expected, got) {
                    (None, VersionLookup::Missing) => {}
                    (Some(n), VersionLookup::Found(version)) => {
                        proptest::prop_assert_eq!(version.number, n);
                        proptest::prop_assert!(keep.is_none_or(|k| n + k > head));
                    }
                    (Some(n), VersionLookup::Compacted { .. }) => {
                        proptest::prop_assert!(keep.is_some_and(|k| n + k <= head), "version {} compacted", n);
                    }
                    (expected, got) => proptest::prop_assert!(false, "at {}: {:?} vs {:?}", at, expected, got),
                }
            }
        }
    }
}
