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

use redb::ReadableTable;
use truce_engine::{Retention, StorageError, Timestamp};

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
}

impl CompactionPlan {
    /// Whether the pass has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.strip.is_empty() && self.delete.is_empty() && self.changes_through.is_none()
    }
}

/// Scans a snapshot for what `retention` says must go as of `now`.
pub(crate) fn plan(
    snapshot: &Snapshot,
    retention: &Retention,
    now: Timestamp,
) -> Result<CompactionPlan, StorageError> {
    let mut plan = CompactionPlan::default();
    if retention.keeps_everything() {
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
        if head.position == position
            || retention.retains(head.number, record.number, record.at, now)
        {
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
