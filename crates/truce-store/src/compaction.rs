//! Age-based retention: finding what to remove, off the write path.
//!
//! A compaction pass scans a read snapshot for past versions and change-feed entries
//! older than the retention allows, then hands the list to the sequencer, which
//! removes them in one commit. The scan never blocks writers; the removal is bounded
//! per pass so one pass never holds the writer for long. Count-based retention
//! (`max_versions`) does not need this: it is applied in each write's own commit.

use redb::{Database, ReadableDatabase, ReadableTable};
use truce_engine::{Retention, StorageError, Timestamp};

use crate::codec;
use crate::error::storage;
use crate::tables::{CHANGES, HISTORY};

/// Most entries one pass removes from each table.
pub(crate) const MAX_REMOVALS_PER_PASS: usize = 50_000;

/// What one pass will remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CompactionPlan {
    /// `history` keys of past versions older than `max_age`.
    pub history_keys: Vec<Vec<u8>>,
    /// Remove change-feed entries up to and including this revision.
    pub changes_through: Option<u64>,
}

impl CompactionPlan {
    /// Whether the pass has nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.history_keys.is_empty() && self.changes_through.is_none()
    }
}

/// Scans a snapshot for what `retention` says must go as of `now`.
pub(crate) fn plan(
    db: &Database,
    retention: &Retention,
    now: Timestamp,
) -> Result<CompactionPlan, StorageError> {
    let txn = db.begin_read().map_err(storage)?;
    let mut plan = CompactionPlan::default();
    if let Some(max_age) = retention.max_age {
        let cutoff = now.saturating_sub(max_age);
        let history = txn.open_table(HISTORY).map_err(storage)?;
        for entry in history.iter().map_err(storage)? {
            if plan.history_keys.len() >= MAX_REMOVALS_PER_PASS {
                break;
            }
            let (key, value) = entry.map_err(storage)?;
            if codec::version_at(value.value())? < cutoff {
                plan.history_keys.push(key.value().to_vec());
            }
        }
    }
    if let Some(max_age) = retention.changes_max_age {
        let cutoff = now.saturating_sub(max_age);
        let changes = txn.open_table(CHANGES).map_err(storage)?;
        let mut scanned = 0;
        for entry in changes.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let (revision, _) = key.value();
            // All changes of one revision share their commit instant, so stopping at
            // the first young one never splits a revision.
            if codec::decode_change(value.value())?.at >= cutoff {
                break;
            }
            scanned += 1;
            if scanned > MAX_REMOVALS_PER_PASS && plan.changes_through != Some(revision) {
                break;
            }
            plan.changes_through = Some(revision);
        }
    }
    Ok(plan)
}
