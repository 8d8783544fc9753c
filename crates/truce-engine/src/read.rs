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
