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

/// How long conflict records (and their events) are kept (SPEC §7): by age, and
/// at most `max_per_collection` per collection, where the cap never removes an
/// open record whose resource still exists (it stays until its age runs out, so
/// the losing client's work is never dropped while it can still be applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictRetention {
    /// Records detected longer ago than this are removed, whatever their status.
    pub max_age: Duration,
    /// Records kept per collection, oldest removed first.
    pub max_per_collection: u64,
}

impl Default for ConflictRetention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 86_400),
            max_per_collection: 10_000,
        }
    }
}

/// What conflict retention knows of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSummary {
    /// The record's key.
    pub key: Vec<u8>,
    /// Its resource's collection.
    pub collection: String,
    /// When it was detected.
    pub detected_at: Timestamp,
    /// Open, and its resource is live: the cap does not remove it.
    pub protected: bool,
}

impl ConflictRetention {
    /// The keys of the records to remove at `now`; `records` oldest first.
    pub fn select(&self, records: &[RecordSummary], now: Timestamp) -> Vec<Vec<u8>> {
        let cutoff = now.saturating_sub(self.max_age);
        let mut remove = Vec::new();
        let mut kept: std::collections::HashMap<&str, Vec<&RecordSummary>> =
            std::collections::HashMap::new();
        for record in records {
            if record.detected_at < cutoff {
                remove.push(record.key.clone());
            } else {
                kept.entry(&record.collection).or_default().push(record);
            }
        }
        for records in kept.values() {
            let cap = usize::try_from(self.max_per_collection).unwrap_or(usize::MAX);
            let mut excess = records.len().saturating_sub(cap);
            for record in records.iter().filter(|r| !r.protected) {
                if excess == 0 {
                    break;
                }
                remove.push(record.key.clone());
                excess -= 1;
            }
        }
        remove
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
    /// Conflict records removed.
    pub conflicts_removed: u64,
    /// Conflict events removed.
    pub conflict_events_removed: u64,
    /// Expired idempotency records removed.
    pub idempotency_removed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(key: u8, collection: &str, at: u64, protected: bool) -> RecordSummary {
        RecordSummary {
            key: vec![key],
            collection: collection.into(),
            detected_at: Timestamp::from_millis(at),
            protected,
        }
    }

    #[test]
    fn conflict_records_go_by_age_and_by_cap_but_open_ones_stay_until_their_age() {
        let rules = ConflictRetention {
            max_age: Duration::from_secs(10),
            max_per_collection: 2,
        };
        let now = Timestamp::from_millis(100_000);
        let records = [
            summary(1, "a", 80_000, true), // too old: goes, open or not
            summary(2, "a", 95_000, true), // protected from the cap
            summary(3, "a", 96_000, false),
            summary(4, "a", 97_000, false),
            summary(5, "a", 98_000, false),
            summary(6, "b", 99_000, false),
        ];
        // "a" keeps 4 young records against a cap of 2: the two oldest
        // unprotected ones go, the protected one stays.
        assert_eq!(rules.select(&records, now), vec![vec![1], vec![3], vec![4]]);
    }

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
