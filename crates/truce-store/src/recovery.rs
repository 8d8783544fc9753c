//! Getting back to a known-good state: on open, and after a storage fault while
//! the server runs.
//!
//! What is on disk is the truth. The redb file holds everything up to its last
//! durable commit (a checkpoint); the write-ahead log holds the frames of every
//! batch acknowledged since. [`recover`] brings the file up to the log: it restores
//! the heads of log records a non-durable commit left in the file, applies the
//! frames that continue the file's revisions, and, after a fault, removes anything
//! above the last revision readers were given (a refused checkpoint whose data
//! reached the disk although its fsync failed). Then it commits durably, after
//! which every frame in the log is redundant.
//!
//! After a fault the sequencer runs this again in place (see
//! [`crate::sequencer`]): it first makes sure the log's tail can never be read back
//! (the refused batch's frame may be on disk whole, in part, or not at all), then,
//! if redb itself failed (its in-memory state is then unknown, and redb refuses
//! every later operation), it closes the database, opens it again from the file and
//! recovers as on open.

use redb::backends::FileBackend;
use redb::{Database, ReadableTable, Table};
use truce_engine::StorageError;

use crate::codec::{self, HeadRecord, LogPosition};
use crate::embedded::EmbeddedConfig;
use crate::error::{OpenError, storage};
use crate::faults::FaultyBackend;
use crate::heads::Heads;
use crate::paced::PacedBackend;
use crate::wal::Frame;
use crate::write_tables::WriteTables;

/// Opens the database file of `config`, telling "in use" apart from other failures.
/// Its syncs are paced ([`PacedBackend`]); with a fault plan installed, redb's I/O
/// also passes the fault seam.
pub(crate) fn open_database(config: &EmbeddedConfig) -> Result<Database, OpenError> {
    let path = config.data_dir.join(crate::embedded::DATABASE_FILE);
    let mut builder = Database::builder();
    builder.set_cache_size(config.cache_bytes);
    let failed = |message: String| OpenError::Open {
        path: path.clone(),
        message,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| failed(e.to_string()))?;
    let handle = file.try_clone().map_err(|e| failed(e.to_string()))?;
    let opened = match &config.faults {
        None => {
            let inner = FileBackend::new(file).map_err(|e| failed(e.to_string()))?;
            builder.create_with_backend(PacedBackend::new(inner, handle))
        }
        Some(faults) => {
            let inner =
                FaultyBackend::new(file, faults.clone()).map_err(|e| failed(e.to_string()))?;
            builder.create_with_backend(PacedBackend::new(inner, handle))
        }
    };
    opened.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse(config.data_dir.clone()),
        other => failed(other.to_string()),
    })
}

/// What recovery reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// The newest revision.
    pub revision: u64,
    /// Versions recovered: log records whose heads were restored, and versions
    /// replayed from frames.
    pub versions: usize,
    /// The log epoch new frames carry: recovery is a checkpoint, so every frame
    /// already in the log is stale after it.
    pub epoch: u64,
}

/// Creates the tables of a new store, brings the heads table up to the log, applies
/// the write-ahead log's frames of the file's epoch and the next, in epoch order
/// (and, for frames of the first format, those that continue the database's
/// revisions), removes every revision
/// above `keep_through` (when given: the newest revision that was ever
/// acknowledged) and makes the result durable as a checkpoint of a new epoch.
/// Afterwards every frame in the log is redundant and the heads table is complete.
pub(crate) fn recover(
    db: &Database,
    frames: &[Frame],
    keep_through: Option<u64>,
) -> Result<Recovered, StorageError> {
    let txn = db.begin_write().map_err(storage)?;
    let (revision, replayed, epoch) = {
        let mut tables = WriteTables::open(&txn)?;
        let mut revision = tables.revision()?;
        let epoch = tables.wal_epoch()?;
        // Log records committed after the last checkpoint may have reached the file
        // (a commit without fsync survives a process crash); their heads never did.
        let mut replayed = tables.restore_heads(revision)?;
        // The log's two files hold the frames of the file's epoch (written before
        // a checkpoint that did not finish) and of the next (written since it
        // began); older ones are from before the last checkpoint, and stale.
        let mut newest_epoch = epoch;
        for frame in frames {
            if let Some(frame_epoch) = frame.epoch {
                newest_epoch = newest_epoch.max(frame_epoch);
                if frame_epoch < epoch {
                    continue;
                }
                if frame_epoch > epoch + 1 {
                    break;
                }
            }
            if let Some((first, last)) = frame.revisions() {
                if last <= revision {
                    // Already in the database: a commit without fsync that reached
                    // the file, or (first format) a frame from before the last
                    // checkpoint. Its side records came with it.
                    continue;
                }
                if first != revision + 1 {
                    break;
                }
                for entry in &frame.entries {
                    tables
                        .log
                        .insert(entry.position, entry.record.as_slice())
                        .map_err(storage)?;
                    restore_head(&mut tables.heads, entry.position, &entry.record)?;
                    replayed += 1;
                }
                revision = last;
            }
            // Side records are written again in order; writing one twice is
            // harmless, and the frames after it carry its later states.
            for side in &frame.side {
                tables.put_side(side.table, &side.key, side.value.as_deref())?;
            }
        }
        tables.flush_heads(revision)?;
        if let Some(keep) = keep_through.filter(|keep| *keep < revision) {
            let removed = trim_after(&mut tables, keep)?;
            tracing::warn!(
                removed,
                from = keep + 1,
                to = revision,
                "removed refused writes that reached the disk although their commit failed"
            );
            tables.flush_heads(keep)?;
            revision = keep;
        }
        // Every frame read, of either file, is stale after this commit.
        tables.set_wal_epoch(newest_epoch + 1)?;
        (revision, replayed, newest_epoch + 1)
    };
    txn.commit().map_err(storage)?;
    Ok(Recovered {
        revision,
        versions: replayed,
        epoch,
    })
}

/// Makes the version stored at `position` (encoded as `record`) its resource's head,
/// as writing it did.
pub(crate) fn restore_head(
    heads: &mut Heads<Table<'_, &'static [u8], &'static [u8]>>,
    position: LogPosition,
    record: &[u8],
) -> Result<(), StorageError> {
    let decoded = codec::decode_log(record, true)?;
    heads.insert(
        codec::head_key(&decoded.key),
        HeadRecord::of(position, &decoded),
    );
    Ok(())
}

/// Deletes every log record above revision `keep`, newest first, pointing each
/// resource's head back at the version before it (or removing the head of a
/// resource that did not exist before). Runs on a complete heads table (the
/// overlay flushed). Returns how many records were removed.
fn trim_after(tables: &mut WriteTables<'_>, keep: u64) -> Result<usize, StorageError> {
    let mut doomed = Vec::new();
    for entry in tables.log.range((keep + 1, 0)..).map_err(storage)? {
        let (position, record) = entry.map_err(storage)?;
        doomed.push((position.value(), record.value().to_vec()));
    }
    for (position, record) in doomed.iter().rev() {
        let decoded = codec::decode_log(record, false)?;
        let key = codec::head_key(&decoded.key);
        tables.log.remove(*position).map_err(storage)?;
        let previous = match decoded.prev {
            Some(prev) => tables
                .log_record(prev, true)?
                .map(|record| HeadRecord::of(prev, &record)),
            None => None,
        };
        let heads = &mut tables.heads.table;
        match previous {
            Some(head) => {
                heads
                    .insert(key.as_slice(), codec::encode_head(&head).as_slice())
                    .map_err(storage)?;
            }
            None => {
                heads.remove(key.as_slice()).map_err(storage)?;
            }
        }
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use redb::ReadableDatabase;
    use truce_engine::{Op, ResourceKey, Timestamp};

    use super::*;
    use crate::codec::LogRecord;
    use crate::tables::{HEADS, LOG};

    fn record(id: &str, number: u64, body: Option<&str>) -> Vec<u8> {
        record_after(id, number, body, None)
    }

    fn record_after(
        id: &str,
        number: u64,
        body: Option<&str>,
        prev: Option<LogPosition>,
    ) -> Vec<u8> {
        codec::encode_log(&LogRecord {
            key: ResourceKey::parse("things", id).unwrap(),
            number,
            at: Timestamp::from_millis(number),
            op: if body.is_some() {
                Op::Replace
            } else {
                Op::Delete
            },
            by: String::new(),
            prev,
            body: body.map(|b| Bytes::copy_from_slice(b.as_bytes())),
            stripped: false,
        })
    }

    fn head_of(db: &Database, id: &str) -> Option<HeadRecord> {
        let txn = db.begin_read().unwrap();
        let heads = txn.open_table(HEADS).unwrap();
        let key = codec::head_key(&ResourceKey::parse("things", id).unwrap());
        heads
            .get(key.as_slice())
            .unwrap()
            .map(|v| codec::decode_head(v.value()).unwrap())
    }

    /// Log records that reached the file after the last checkpoint (a commit without
    /// fsync can survive a process crash) get their heads back on open.
    #[test]
    fn recovery_restores_the_heads_of_log_records_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        assert_eq!(recover(&db, &[], None).unwrap().revision, 0);
        // As a commit between checkpoints leaves it: log records, no heads.
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            log.insert((1, 0), record("a", 1, Some("1")).as_slice())
                .unwrap();
            log.insert((2, 0), record("b", 1, Some("1")).as_slice())
                .unwrap();
            log.insert((3, 0), record("a", 2, None).as_slice()).unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(head_of(&db, "a"), None);

        let recovered = recover(&db, &[], None).unwrap();
        assert_eq!((recovered.revision, recovered.versions), (3, 3));
        let a = head_of(&db, "a").unwrap();
        assert_eq!((a.number, a.position, a.tombstone), (2, (3, 0), true));
        let b = head_of(&db, "b").unwrap();
        assert_eq!((b.number, b.position, b.tombstone), (1, (2, 0), false));
        // The table is now complete: opening again restores nothing.
        let again = recover(&db, &[], None).unwrap();
        assert_eq!((again.revision, again.versions), (3, 0));
    }

    /// Refused writes that reached the file (a checkpoint whose fsync failed after
    /// its data was written) are removed on recovery after a fault, and every head
    /// points at the version before them again.
    #[test]
    fn recovery_after_a_fault_removes_what_was_never_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            let rows = [
                ((1, 0), record("a", 1, Some("1"))),
                ((2, 0), record("b", 1, Some("1"))),
                // Refused: a new version of a, a deletion of b, a new resource c.
                ((3, 0), record_after("a", 2, Some("2"), Some((1, 0)))),
                ((3, 1), record_after("b", 2, None, Some((2, 0)))),
                ((4, 0), record("c", 1, Some("1"))),
            ];
            for (position, bytes) in rows {
                log.insert(position, bytes.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        assert_eq!(recover(&db, &[], Some(2)).unwrap().revision, 2);
        let a = head_of(&db, "a").unwrap();
        assert_eq!((a.number, a.position, a.tombstone), (1, (1, 0), false));
        let b = head_of(&db, "b").unwrap();
        assert_eq!((b.number, b.position, b.tombstone), (1, (2, 0), false));
        assert_eq!(head_of(&db, "c"), None);
        let txn = db.begin_read().unwrap();
        let log = txn.open_table(LOG).unwrap();
        assert_eq!(crate::tables::last_revision(&log).unwrap(), 2);
    }

    fn frame(epoch: Option<u64>, revision: u64, id: &str, number: u64) -> Frame {
        Frame {
            epoch,
            entries: vec![crate::wal::Entry {
                position: (revision, 0),
                record: record(id, number, Some("1")),
            }],
            side: Vec::new(),
        }
    }

    /// Frames of the file's epoch and the next are applied in order (the log
    /// hands them over in epoch order); older ones (from before the last
    /// checkpoint) are skipped, and a newer one ends them; frames of the first
    /// format are recognised by their revisions.
    #[test]
    fn frames_are_applied_by_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let fresh = recover(&db, &[], None).unwrap();
        assert_eq!((fresh.revision, fresh.epoch), (0, 1));
        let frames = [
            // Stale: written before the checkpoint that began epoch 1.
            frame(Some(0), 1, "c", 1),
            frame(Some(1), 1, "a", 1),
            frame(Some(1), 2, "b", 1),
            // Written while the checkpoint of epoch 1 ran (the log's other file).
            frame(Some(2), 3, "d", 1),
            // Cannot follow: ends the frames.
            frame(Some(4), 4, "x", 1),
        ];
        let recovered = recover(&db, &frames, None).unwrap();
        assert_eq!((recovered.revision, recovered.epoch), (3, 5));
        assert!(head_of(&db, "b").is_some() && head_of(&db, "d").is_some());
        assert!(head_of(&db, "c").is_none() && head_of(&db, "x").is_none());
        // Every frame read is stale now; a first-format frame continuing the
        // revisions is applied, one that does not is not.
        let stale = [frame(Some(4), 4, "e", 1)];
        assert_eq!(recover(&db, &stale, None).unwrap().revision, 3);
        assert!(head_of(&db, "e").is_none());
        let legacy = [frame(None, 4, "f", 1), frame(None, 6, "g", 1)];
        assert_eq!(recover(&db, &legacy, None).unwrap().revision, 4);
        assert!(head_of(&db, "f").is_some() && head_of(&db, "g").is_none());
    }
}
