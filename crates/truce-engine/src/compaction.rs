//! Retention's background half: finding what to remove, for every backend.
//!
//! Reads already apply the retention rules (a version they no longer keep answers
//! 410 at once). A compaction pass then removes the bytes: it scans a backend's
//! committed state ([`CompactionSource`]) and selects
//! - past versions retention no longer keeps: their bodies are stripped, or the
//!   whole version is deleted once the change feed no longer serves its revision;
//! - the change feed's new watermark (`changes_max_age`): revisions at or below it
//!   answer 410 in the feed;
//! - conflict records, events and delivery-log entries conflict retention removes.
//!
//! The backend applies the selection in one commit through its write path. A scan
//! from an older state is safe: heads only move forward, so what was removable
//! stays removable. Each pass is bounded. Heads are never touched.

use std::collections::HashMap;

use bytes::Bytes;

use crate::collection::StoredSettings;
use crate::conflict::record_summary;
use crate::error::StorageError;
use crate::events::{EVENTS_WATERMARK_KEY, event_at, event_position};
use crate::idempotency::read_expiry_key;
use crate::name::{CollectionName, ResourceKey};
use crate::retention::{ConflictRetention, Retention};
use crate::rules::SideTable;
use crate::time::Timestamp;
use crate::webhook::log_key_at;

/// Most versions one pass changes.
pub const MAX_REMOVALS_PER_PASS: usize = 50_000;

/// Where a version is stored: its revision and its index within it.
pub type Position = (u64, u32);

/// One stored version, as a compaction scan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// Where it is stored.
    pub position: Position,
    /// Its resource.
    pub key: ResourceKey,
    /// Its version number.
    pub number: u64,
    /// When it was committed (age-based retention).
    pub at: Timestamp,
    /// Its body was already removed.
    pub stripped: bool,
}

/// A resource's newest version, as a compaction scan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredHead {
    /// Where it is stored (never removed).
    pub position: Position,
    /// Its version number (count-based retention counts back from it).
    pub number: u64,
    /// The resource is deleted (its open conflict records are no longer kept).
    pub tombstone: bool,
}

/// A backend's committed state, as a compaction pass scans it.
pub trait CompactionSource {
    /// Up to `limit` versions after `after` (from the first without it), in
    /// position order.
    fn versions_after(
        &self,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<StoredVersion>, StorageError>;

    /// The newest version of `key`.
    fn head_of(&self, key: &ResourceKey) -> Result<Option<StoredHead>, StorageError>;

    /// Side records of `table` after `after`, in key order, at most `limit`.
    fn side_page(
        &self,
        table: SideTable,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>, StorageError>;

    /// The last key of side table `table`.
    fn last_side_key(&self, table: SideTable) -> Result<Option<Vec<u8>>, StorageError>;

    /// The newest revision the change feed no longer serves (0: none).
    fn changes_compacted_through(&self) -> Result<u64, StorageError>;
}

/// What one pass will change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionPlan {
    /// Versions whose body retention no longer keeps.
    pub strip: Vec<Position>,
    /// Versions that are neither kept as history nor served by the feed.
    pub delete: Vec<Position>,
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
    /// Other side records whose time is up: expired idempotency records and
    /// their expiry index entries.
    pub expired: Vec<(SideTable, Vec<u8>)>,
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
            && self.expired.is_empty()
    }
}

/// Pages of side records read per step.
const PAGE: usize = 1_000;

/// The retention of every collection whose settings set history limits, over
/// the server's `retention`.
fn collection_retention(
    source: &dyn CompactionSource,
    retention: &Retention,
) -> Result<HashMap<String, Retention>, StorageError> {
    let mut by_collection = HashMap::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = source.side_page(SideTable::Collections, after.as_deref(), PAGE)?;
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

/// Scans `source` for what `retention` (the server's, under each collection's
/// history settings) and `conflicts` say must go as of `now`.
pub fn plan_compaction(
    source: &dyn CompactionSource,
    retention: &Retention,
    conflicts: &ConflictRetention,
    now: Timestamp,
) -> Result<CompactionPlan, StorageError> {
    let mut plan = CompactionPlan::default();
    plan_conflicts(source, conflicts, now, &mut plan)?;
    plan_expired_idempotency(source, now, &mut plan)?;
    let by_collection = collection_retention(source, retention)?;
    if retention.keeps_everything() && by_collection.values().all(Retention::keeps_everything) {
        return Ok(plan);
    }
    let watermark = source.changes_compacted_through()?;
    let feed_cutoff = retention.changes_max_age.map(|age| now.saturating_sub(age));
    let mut new_watermark = watermark;
    // The watermark only advances over a prefix of old entries.
    let mut prefix_old = feed_cutoff.is_some();
    let mut after = None;
    'scan: loop {
        let page = source.versions_after(after, PAGE)?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.position);
        for version in page {
            if plan.strip.len() + plan.delete.len() >= MAX_REMOVALS_PER_PASS {
                break 'scan;
            }
            let position = version.position;
            if prefix_old {
                if feed_cutoff.is_some_and(|cutoff| version.at < cutoff) {
                    if position.0 > new_watermark {
                        plan.changes_hidden += 1;
                    }
                    new_watermark = new_watermark.max(position.0);
                } else {
                    prefix_old = false;
                }
            }
            let Some(head) = source.head_of(&version.key)? else {
                continue;
            };
            let rules = by_collection
                .get(version.key.collection.as_str())
                .unwrap_or(retention);
            if head.position == position
                || rules.retains(head.number, version.number, version.at, now)
            {
                continue;
            }
            if position.0 <= new_watermark {
                plan.delete.push(position);
            } else if !version.stripped {
                plan.strip.push(position);
            }
        }
    }
    if new_watermark > watermark {
        plan.changes_through = Some(new_watermark);
    } else {
        plan.changes_hidden = 0;
    }
    Ok(plan)
}

/// Selects the idempotency records whose keeping time ran out (a prefix of the
/// expiry index, which sorts by time), with their index entries.
fn plan_expired_idempotency(
    source: &dyn CompactionSource,
    now: Timestamp,
    plan: &mut CompactionPlan,
) -> Result<(), StorageError> {
    let mut after: Option<Vec<u8>> = None;
    'scan: while plan.expired.len() < MAX_REMOVALS_PER_PASS {
        let page = source.side_page(SideTable::IdempotencyExpiry, after.as_deref(), PAGE)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (key, _) in page {
            let Some((expires, scope)) = read_expiry_key(&key) else {
                continue;
            };
            if expires > now {
                break 'scan;
            }
            plan.expired.push((SideTable::Idempotency, scope.to_vec()));
            plan.expired.push((SideTable::IdempotencyExpiry, key));
        }
    }
    Ok(())
}

/// Selects the conflict records, events and delivery-log entries that conflict
/// retention removes.
fn plan_conflicts(
    source: &dyn CompactionSource,
    rules: &ConflictRetention,
    now: Timestamp,
    plan: &mut CompactionPlan,
) -> Result<(), StorageError> {
    let mut records = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = source.side_page(SideTable::Conflicts, after.as_deref(), PAGE)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (key, value) in page {
            let mut failure = None;
            let mut live = |resource: &ResourceKey| match source.head_of(resource) {
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
    let mut after: Option<Vec<u8>> = None;
    while plan.deliveries.len() < MAX_REMOVALS_PER_PASS {
        let page = source.side_page(SideTable::Deliveries, after.as_deref(), PAGE)?;
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
    let cutoff = now.saturating_sub(rules.max_age);
    let mut through: Option<u64> = None;
    let mut after = Some(EVENTS_WATERMARK_KEY.to_vec());
    let mut scanned = 0;
    'scan: while scanned < MAX_REMOVALS_PER_PASS {
        let page = source.side_page(SideTable::ConflictEvents, after.as_deref(), PAGE)?;
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
    let newest = source
        .last_side_key(SideTable::ConflictEvents)?
        .and_then(|k| event_position(&k))
        .unwrap_or(0);
    // The newest event is always kept: its key is where the next position comes from.
    plan.events_through = through
        .map(|p| p.min(newest.saturating_sub(1)))
        .filter(|p| *p > 0);
    Ok(())
}
