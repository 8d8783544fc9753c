//! Retention's background half: finding what to remove, off the write path.
//!
//! Reads already apply the retention rules (a version they no longer keep answers
//! 410 at once). A compaction pass then removes the bytes: it scans the log on a read
//! snapshot and selects
//! - past versions retention no longer keeps: their bodies are stripped, or the whole
//!   record is deleted once the change feed no longer serves its revision;
//! - the change feed's new watermark (`changes_max_age`): revisions at or below it
//!   answer 410 in the feed.
//!
//! The sequencer applies the selection in one commit. The scan never blocks writers,
//! and each pass is bounded. Heads are never touched.

use std::collections::HashMap;

use redb::ReadableTable;
use truce_engine::{
    CollectionName, ConflictRetention, EVENTS_WATERMARK_KEY, ResourceKey, Retention, SideTable,
    StorageError, StoredSettings, Timestamp, event_at, event_position, log_key_at, record_summary,
};

use crate::codec::{self, LogPosition};
use crate::error::storage;
use crate::snapshot::Snapshot;
use crate::tables::META_CHANGES_COMPACTED;

/// Most log records one pass changes.
pub(crate) const MAX_REMOVALS_PER_PASS: usize = 50_000;

/// What one pass will change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CompactionPlan {
    /// Log records whose body retention no longer keeps.
    pub strip: Vec<LogPosition>,
    /// Log records that are neither kept as versions nor served by the feed.
    pub delete: Vec<LogPosition>,
    /// The change feed's new watermark, if it moves.
    pub changes_through: Option<u64>,
    /// Change-feed entries the new watermark hides.
    pub changes_hidden: u64,
    /// Conflict records conflict retention removes.
    pub conflicts: Vec<Vec<u8>>,
    /// Webhook delivery log entries older than the conflict retention's age.
    pub deliveries: Vec<Vec<u8>>,
    /// Conflict events through this position are removed (the newest event is
    /// always kept, so positions are never reused).
    pub events_through: Option<u64>,
}

impl CompactionPlan {
    /// Whether the pass has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.strip.is_empty()
            && self.delete.is_empty()
            && self.changes_through.is_none()
            && self.conflicts.is_empty()
            && self.deliveries.is_empty()
            && self.events_through.is_none()
    }
}

/// The retention of every collection whose settings set history limits, over
/// the server's `retention`.
fn collection_retention(
    snapshot: &Snapshot,
    retention: &Retention,
) -> Result<HashMap<String, Retention>, StorageError> {
    let mut by_collection = HashMap::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = snapshot.side_range(SideTable::Collections.code(), after.as_deref(), 1_000)?;
        let Some((last, _)) = page.last() else {
            return Ok(by_collection);
        };
        after = Some(last.clone());
        for (key, value) in &page {
            let name = String::from_utf8_lossy(key).into_owned();
            let collection = CollectionName::parse(&name)
                .map_err(|e| StorageError::Corrupt(format!("settings key {name:?}: {e}")))?;
            let stored = StoredSettings::read(&collection, Some(value))
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            by_collection.insert(name, stored.settings.retention(retention));
        }
    }
}

/// Scans a snapshot for what `retention` (the server's, under each collection's
/// history settings) says must go as of `now`.
pub(crate) fn plan(
    snapshot: &Snapshot,
    retention: &Retention,
    conflicts: &ConflictRetention,
    now: Timestamp,
) -> Result<CompactionPlan, StorageError> {
    let mut plan = CompactionPlan::default();
    plan_conflicts(snapshot, conflicts, now, &mut plan)?;
    let by_collection = collection_retention(snapshot, retention)?;
    if retention.keeps_everything() && by_collection.values().all(Retention::keeps_everything) {
        return Ok(plan);
    }
    let tables = &snapshot.tables;
    let watermark = snapshot.meta(META_CHANGES_COMPACTED)?;
    let feed_cutoff = retention.changes_max_age.map(|age| now.saturating_sub(age));
    let mut new_watermark = watermark;
    // The watermark only advances over a prefix of old entries.
    let mut prefix_old = feed_cutoff.is_some();
    for entry in tables.log.iter().map_err(storage)? {
        if plan.strip.len() + plan.delete.len() >= MAX_REMOVALS_PER_PASS {
            break;
        }
        let (position, value) = entry.map_err(storage)?;
        let position = position.value();
        let record = codec::decode_log(value.value(), false)?;
        if prefix_old {
            if feed_cutoff.is_some_and(|cutoff| record.at < cutoff) {
                if position.0 > new_watermark {
                    plan.changes_hidden += 1;
                }
                new_watermark = new_watermark.max(position.0);
            } else {
                prefix_old = false;
            }
        }
        let Some(head) = tables.head_record(&record.key)? else {
            continue;
        };
        let rules = by_collection
            .get(record.key.collection.as_str())
            .unwrap_or(retention);
        if head.position == position || rules.retains(head.number, record.number, record.at, now) {
            continue;
        }
        if position.0 <= new_watermark {
            plan.delete.push(position);
        } else if !record.stripped {
            plan.strip.push(position);
        }
    }
    if new_watermark > watermark {
        plan.changes_through = Some(new_watermark);
    } else {
        plan.changes_hidden = 0;
    }
    Ok(plan)
}

/// Selects the conflict records and events that conflict retention removes.
fn plan_conflicts(
    snapshot: &Snapshot,
    rules: &ConflictRetention,
    now: Timestamp,
    plan: &mut CompactionPlan,
) -> Result<(), StorageError> {
    let code = SideTable::Conflicts.code();
    let mut records = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = snapshot.side_range(code, after.as_deref(), 1_000)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (key, value) in page {
            let mut failure = None;
            let mut live = |resource: &ResourceKey| match snapshot.tables.head_record(resource) {
                Ok(head) => head.is_some_and(|h| !h.tombstone),
                Err(error) => {
                    failure = Some(error);
                    true
                }
            };
            let summary = record_summary(&key, &value, &mut live);
            if let Some(error) = failure {
                return Err(error);
            }
            records.extend(summary);
        }
        if records.len() >= MAX_REMOVALS_PER_PASS {
            break;
        }
    }
    plan.conflicts = rules.select(&records, now);

    // The delivery log: entries older than the age limit.
    let log = SideTable::Deliveries.code();
    let mut after: Option<Vec<u8>> = None;
    while plan.deliveries.len() < MAX_REMOVALS_PER_PASS {
        let page = snapshot.side_range(log, after.as_deref(), 1_000)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (key, _) in page {
            if log_key_at(&key).is_some_and(|at| at < now.saturating_sub(rules.max_age)) {
                plan.deliveries.push(key);
            }
        }
    }

    // Events: the prefix older than the age limit, all but the newest.
    let events = SideTable::ConflictEvents.code();
    let cutoff = now.saturating_sub(rules.max_age);
    let mut through: Option<u64> = None;
    let mut after = Some(EVENTS_WATERMARK_KEY.to_vec());
    let mut scanned = 0;
    'scan: while scanned < MAX_REMOVALS_PER_PASS {
        let page = snapshot.side_range(events, after.as_deref(), 1_000)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        scanned += page.len();
        for (key, value) in &page {
            let old = event_at(value).is_some_and(|at| at < cutoff);
            if !old {
                break 'scan;
            }
            through = event_position(key).or(through);
        }
    }
    let newest = snapshot
        .last_side_key(events)?
        .and_then(|k| event_position(&k))
        .unwrap_or(0);
    // The newest event is always kept: its key is where the next position comes from.
    plan.events_through = through
        .map(|p| p.min(newest.saturating_sub(1)))
        .filter(|p| *p > 0);
    Ok(())
}
