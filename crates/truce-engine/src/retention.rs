//! How much history is kept.
//!
//! By default every version and every change-feed entry is kept forever. A server-wide
//! [`Retention`] can cap each resource's history by count (`max_versions`) and by age
//! (`max_age`), and the change feed by age (`changes_max_age`). The rules apply to
//! reads at once (a version the rules no longer keep answers 410 history-compacted
//! with the oldest one still available); background compaction then removes the bytes.
//! The head version of a resource is always kept.

use std::time::Duration;

use crate::time::Timestamp;

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
    /// Whether version `number`, committed at `at`, of a resource whose head is version
    /// `head` is still kept at `now`. The head is always kept; past versions must be
    /// among the newest `max_versions` and younger than `max_age`.
    pub fn retains(&self, head: u64, number: u64, at: Timestamp, now: Timestamp) -> bool {
        if number >= head {
            return true;
        }
        let within_count = self
            .max_versions
            .is_none_or(|max| number > head.saturating_sub(max.max(1)));
        let within_age = self.max_age.is_none_or(|age| at >= now.saturating_sub(age));
        within_count && within_age
    }

    /// Whether compaction can ever remove anything.
    pub fn keeps_everything(&self) -> bool {
        self.max_versions.is_none() && self.max_age.is_none() && self.changes_max_age.is_none()
    }
}

/// What one compaction pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

    const NOW: Timestamp = Timestamp::from_millis(100_000);

    #[test]
    fn count_retention_keeps_the_newest() {
        let keep_three = Retention {
            max_versions: Some(3),
            ..Retention::default()
        };
        let at = NOW;
        assert!(keep_three.retains(10, 10, at, NOW));
        assert!(keep_three.retains(10, 8, at, NOW));
        assert!(!keep_three.retains(10, 7, at, NOW));
        assert!(keep_three.retains(2, 1, at, NOW));
        assert!(Retention::default().retains(1000, 1, at, NOW));
        assert!(Retention::default().keeps_everything());
        assert!(!keep_three.keeps_everything());
    }

    #[test]
    fn age_retention_never_drops_the_head() {
        let one_second = Retention {
            max_age: Some(Duration::from_secs(1)),
            ..Retention::default()
        };
        let old = Timestamp::from_millis(1_000);
        let young = Timestamp::from_millis(99_500);
        assert!(!one_second.retains(5, 4, old, NOW));
        assert!(one_second.retains(5, 4, young, NOW));
        assert!(one_second.retains(5, 5, old, NOW));
    }
}
