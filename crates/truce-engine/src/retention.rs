//! How much history is kept.
//!
//! By default every version and every change-feed entry is kept forever. A server-wide
//! [`Retention`] can cap each resource's history by count (`max_versions`, enforced in
//! the same commit as each write) and by age (`max_age`, enforced by background
//! compaction), and the change feed by age (`changes_max_age`). The head version of a
//! resource is never removed. Reading a removed version or revision answers 410
//! history-compacted with the oldest one still available.

use std::time::Duration;

use serde::Serialize;

/// Server-wide retention settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many versions per resource, the head included.
    pub max_versions: Option<u64>,
    /// Remove past versions committed longer ago than this.
    pub max_age: Option<Duration>,
    /// Remove change-feed entries committed longer ago than this.
    pub changes_max_age: Option<Duration>,
}

impl Retention {
    /// After writing version `head` of a resource, the versions at or below the
    /// returned number must go (count-based retention).
    pub fn prune_through(&self, head: u64) -> Option<u64> {
        let keep = self.max_versions?.max(1);
        head.checked_sub(keep).filter(|&through| through > 0)
    }
}

/// What one compaction pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CompactionReport {
    /// Past versions removed.
    pub versions_removed: u64,
    /// Change-feed entries removed.
    pub changes_removed: u64,
    /// The oldest `since` the change feed still answers without 410.
    pub oldest_revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_retention_keeps_the_newest() {
        let keep_three = Retention {
            max_versions: Some(3),
            ..Retention::default()
        };
        assert_eq!(keep_three.prune_through(1), None);
        assert_eq!(keep_three.prune_through(3), None);
        assert_eq!(keep_three.prune_through(4), Some(1));
        assert_eq!(keep_three.prune_through(10), Some(7));
        assert_eq!(Retention::default().prune_through(1000), None);
        let keep_zero = Retention {
            max_versions: Some(0),
            ..Retention::default()
        };
        assert_eq!(keep_zero.prune_through(2), Some(1));
    }
}
