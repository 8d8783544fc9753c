//! Rules for reads: which version a read selects and when it is not there.

use crate::error::{EngineError, StorageError};
use crate::name::ResourceKey;
use crate::record::Version;
use crate::store::StateView;

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

/// Looks up version `number` of `key`: the head, or a past version from history.
pub fn lookup_version(
    view: &dyn StateView,
    key: &ResourceKey,
    number: u64,
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
    match view.past_version(key, number)? {
        Some(version) => Ok(VersionLookup::Found(version)),
        None => Ok(VersionLookup::Compacted {
            oldest: view.oldest_past_version(key)?.unwrap_or(head.number),
        }),
    }
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
