//! The write-ahead log: how a batch becomes durable without rewriting B-tree pages.
//!
//! A redb commit that fsyncs writes every page the batch dirtied: for a batch of
//! inserts at scattered keys that is dozens of 4 KiB pages. Instead, the sequencer
//! appends what the batch wrote to the log as one *frame*, fsyncs it (a few pages,
//! written sequentially), and keeps the batch in the in-memory
//! [layers](crate::layer). Every so often a *checkpoint* writes the layers into
//! redb with an fsync, after which the frames before it are no longer needed.
//!
//! The log is two files, used in turn: a checkpoint runs in the background while
//! batches go on, so the frames after its start must live beside the frames it is
//! making redundant. When a checkpoint begins, the next frames go to the other
//! file from its start, in the next *epoch*; the checkpoint's durable commit
//! records that epoch in redb (`meta.wal_epoch`), which makes every frame of an
//! older epoch stale. On open, each file's frames are read from its start while
//! they share the first frame's epoch (a frame of another epoch, or a torn or
//! corrupt one, ends the file's run), and the runs of the database's epoch and the
//! next are applied again in epoch order. So a frame is recognised as current by
//! its epoch, not by the revisions it holds, and a batch that moves no revision
//! (side records only) is recovered like any other. A frame is written and synced
//! before any of its writes is answered, so a torn frame belongs to a batch nobody
//! was told succeeded.
//!
//! Frame layout (integers big-endian):
//! `magic "TRW2"(4) epoch(8) payload_len(4) crc32(epoch ‖ payload)(4) payload`, where
//! the payload is a list of entries, each `kind(1)` then, for a version (kind 0),
//! `revision(8) index(4) record_len(4) record` with the record encoded as in the
//! `log` table. Frames of the first format (`TRW1`, no epoch, no kinds) are still
//! read, and recovered by their revisions as that format was. The file is grown in
//! zero-filled chunks and synced once per chunk, so a frame's fsync flushes data
//! pages only, never the file's size.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::codec::LogPosition;
use crate::faults::{Faults, FileKind, StoreFile};

/// The write-ahead log's two files inside the data directory (stores from before
/// background checkpoints have only the first).
pub(crate) const WAL_FILES: [&str; 2] = ["truce.wal", "truce-2.wal"];

/// First bytes of every frame.
const MAGIC: [u8; 4] = *b"TRW2";
/// First bytes of a frame of the first format (no epoch, no entry kinds).
const MAGIC_V1: [u8; 4] = *b"TRW1";
/// Size of a frame's header: magic, epoch, payload length, checksum.
const FRAME_HEADER: usize = 20;
/// Size of a first-format frame's header: magic, payload length, checksum.
const FRAME_HEADER_V1: usize = 12;
/// Size of a version entry's header: revision, index, record length.
const ENTRY_HEADER: usize = 16;
/// Entry kind: a version (a `log` record).
const KIND_VERSION: u8 = 0;
/// Entry kind: a side record written: `table(1) key_len(4) key value_len(4) value`.
const KIND_SIDE_PUT: u8 = 1;
/// Entry kind: a side record removed: `table(1) key_len(4) key`.
const KIND_SIDE_DELETE: u8 = 2;
/// The file grows by at least this much at a time.
const GROWTH: u64 = 8 * 1024 * 1024;

/// An open write-ahead log, positioned where the next frame goes.
pub(crate) struct Wal {
    files: [LogFile; 2],
    /// The file new frames go to.
    current: usize,
    /// The epoch new frames carry.
    epoch: u64,
}

/// One of the log's files.
struct LogFile {
    file: StoreFile,
    /// Where the next frame is written.
    offset: u64,
    /// Bytes of the file known to be allocated and synced.
    allocated: u64,
}

/// One log record found in a frame on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub position: LogPosition,
    pub record: Vec<u8>,
}

/// One side record written or removed, found in a frame on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SideEntry {
    /// The table's code (`SideTable::code`).
    pub table: u8,
    pub key: Vec<u8>,
    /// `None`: removed.
    pub value: Option<Vec<u8>>,
}

/// The entries of one frame, in the order they were written (versions and side
/// records each in their own order; they live in different tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The log epoch the frame was written in; `None` for the first format, whose
    /// frames are recognised by their revisions.
    pub epoch: Option<u64>,
    pub entries: Vec<Entry>,
    pub side: Vec<SideEntry>,
}

impl Frame {
    /// The revisions the frame covers, first and last.
    pub fn revisions(&self) -> Option<(u64, u64)> {
        Some((
            self.entries.first()?.position.0,
            self.entries.last()?.position.0,
        ))
    }
}

/// Builds the frame of one batch while the sequencer applies it.
#[derive(Debug, Default)]
pub(crate) struct FrameBuilder {
    bytes: Vec<u8>,
}

impl FrameBuilder {
    /// Adds one log record written at `position`.
    pub fn push(&mut self, position: LogPosition, record: &[u8]) {
        if self.bytes.is_empty() {
            self.bytes.extend_from_slice(&[0; FRAME_HEADER]);
        }
        self.bytes.push(KIND_VERSION);
        self.bytes.extend_from_slice(&position.0.to_be_bytes());
        self.bytes.extend_from_slice(&position.1.to_be_bytes());
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(record);
    }

    /// Adds a side record written (`Some`) or removed (`None`).
    pub fn push_side(&mut self, table: u8, key: &[u8], value: Option<&[u8]>) {
        if self.bytes.is_empty() {
            self.bytes.extend_from_slice(&[0; FRAME_HEADER]);
        }
        let len = |bytes: &[u8]| u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes();
        self.bytes.push(if value.is_some() {
            KIND_SIDE_PUT
        } else {
            KIND_SIDE_DELETE
        });
        self.bytes.push(table);
        self.bytes.extend_from_slice(&len(key));
        self.bytes.extend_from_slice(key);
        if let Some(value) = value {
            self.bytes.extend_from_slice(&len(value));
            self.bytes.extend_from_slice(value);
        }
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Empties the builder for the next batch, keeping its buffer unless one huge
    /// batch grew it: allocating a fresh buffer per batch showed up in profiles.
    pub fn clear(&mut self) {
        const KEEP: usize = 4 * 1024 * 1024;
        if self.bytes.capacity() > KEEP {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
    }

    /// The complete frame of `epoch`: header filled in over the entries.
    fn seal(&mut self, epoch: u64) -> std::io::Result<&[u8]> {
        let payload = self
            .bytes
            .get(FRAME_HEADER..)
            .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "empty frame"))?;
        let len = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "frame over 4 GiB"))?;
        let crc = frame_crc(epoch, payload);
        self.bytes[0..4].copy_from_slice(&MAGIC);
        self.bytes[4..12].copy_from_slice(&epoch.to_be_bytes());
        self.bytes[12..16].copy_from_slice(&len.to_be_bytes());
        self.bytes[16..20].copy_from_slice(&crc.to_be_bytes());
        Ok(&self.bytes)
    }
}

impl Wal {
    /// Opens (or creates) the log's files in `dir` and reads every current frame
    /// (see [`Wal::read_frames`]). Their writes and syncs pass the fault seam when
    /// `faults` is set.
    pub fn open(dir: &Path, faults: Option<Faults>) -> std::io::Result<(Self, Vec<Frame>)> {
        let open = |slot: u8| -> std::io::Result<LogFile> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(WAL_FILES[usize::from(slot)]))?;
            Ok(LogFile {
                file: StoreFile::in_slot(file, FileKind::Log, slot, faults.clone())?,
                offset: 0,
                allocated: 0,
            })
        };
        let mut wal = Self {
            files: [open(0)?, open(1)?],
            current: 0,
            epoch: 0,
        };
        let frames = wal.read_frames()?;
        Ok((wal, frames))
    }

    /// Reads each file from its start as it is now: the frames that share the
    /// first frame's epoch, until a torn, corrupt or zero-filled one. Returns both
    /// runs in epoch order. After a failed write or sync, this is what the log
    /// really holds (recovery trusts the files, not what was meant to be written).
    pub fn read_frames(&mut self) -> std::io::Result<Vec<Frame>> {
        let mut frames = Vec::new();
        for log in &mut self.files {
            let file = log.file.file();
            let len = usize::try_from(file.metadata()?.len()).map_err(|_| {
                std::io::Error::new(ErrorKind::InvalidData, "log larger than memory")
            })?;
            let mut bytes = vec![0; len];
            file.read_exact_at(&mut bytes, 0)?;
            log.allocated = bytes.len() as u64;
            let mut run = parse(&bytes);
            if let Some(first) = run.first().map(|f| f.epoch) {
                let end = run
                    .iter()
                    .position(|f| f.epoch != first)
                    .unwrap_or(run.len());
                run.truncate(end);
            }
            frames.extend(run);
        }
        // Stable: each run keeps its order; first-format frames (no epoch) first.
        frames.sort_by_key(|f| f.epoch);
        Ok(frames)
    }

    /// Bytes written to the current file since it was started.
    pub fn len(&self) -> u64 {
        self.files[self.current].offset
    }

    /// The epoch new frames carry.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts the current file over in `epoch`: after a checkpoint of
    /// everything (or a recovery), every frame so far is redundant.
    pub fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.files[self.current].offset = 0;
    }

    /// Starts the other file in `epoch`, when a checkpoint of everything so far
    /// begins: the current file's frames stay until it is durable. The other
    /// file's frames must be redundant already (the checkpoint before finished).
    pub fn switch(&mut self, epoch: u64) {
        self.current = 1 - self.current;
        self.restart(epoch);
    }

    /// Appends a batch's frame and waits until it is on disk.
    pub fn append(&mut self, frame: &mut FrameBuilder) -> std::io::Result<()> {
        if frame.is_empty() {
            return Ok(());
        }
        let bytes = frame.seal(self.epoch)?;
        let log = &mut self.files[self.current];
        let end = log.offset + bytes.len() as u64;
        if end > log.allocated {
            log.grow(end)?;
        }
        log.file.write_all_at(bytes, log.offset)?;
        log.file.sync_data()?;
        log.offset = end;
        Ok(())
    }

    /// Makes sure the current file has `bytes` allocated after its last frame,
    /// growing it now if not: after a full disk, writes resume only once the log
    /// has room to take them.
    pub fn ensure_room(&mut self, bytes: u64) -> std::io::Result<()> {
        let log = &mut self.files[self.current];
        let end = log.offset + bytes;
        if end > log.allocated {
            log.grow(end)?;
        }
        Ok(())
    }

    /// Makes sure nothing after the last accepted frame can ever be read back: zeros
    /// over the next frame's header, synced. After a failed append (or a failed sync
    /// of one) the bytes there are unknown: the whole frame, part of it, or nothing
    /// may reach the disk later, so they are overwritten rather than trusted.
    pub fn invalidate_tail(&mut self) -> std::io::Result<()> {
        let log = &mut self.files[self.current];
        log.file.write_all_at(&[0; FRAME_HEADER], log.offset)?;
        log.file.sync_data()
    }
}

impl LogFile {
    /// Extends the file with zeros to cover `end` (and a chunk more) and syncs its
    /// size, so later appends inside it only flush data pages.
    fn grow(&mut self, end: u64) -> std::io::Result<()> {
        let target = end.max(self.allocated + GROWTH);
        let zeros = vec![0u8; 1024 * 1024];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }
}

/// The checksum of a frame: its epoch and its payload.
fn frame_crc(epoch: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&epoch.to_be_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// What the log's reader finds in a file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalScan {
    /// Intact frames, from the start.
    pub frames: usize,
    /// Their version entries.
    pub versions: usize,
    /// Their side-record entries.
    pub side_records: usize,
}

/// Reads `bytes` as recovery reads the log file: for fuzzing the decoder, and
/// for tools that inspect a log.
pub fn scan_wal(bytes: &[u8]) -> WalScan {
    let frames = parse(bytes);
    WalScan {
        frames: frames.len(),
        versions: frames.iter().map(|f| f.entries.len()).sum(),
        side_records: frames.iter().map(|f| f.side.len()).sum(),
    }
}

/// Reads intact frames from the start of the log until the first torn, corrupt or
/// zero-filled one.
fn parse(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0usize;
    while let Some(magic) = bytes.get(at..at + 4) {
        let parsed = if magic == MAGIC {
            parse_frame(bytes, at)
        } else if magic == MAGIC_V1 {
            parse_frame_v1(bytes, at)
        } else {
            None
        };
        let Some((frame, end)) = parsed else {
            break;
        };
        frames.push(frame);
        at = end;
    }
    frames
}

fn be_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The frame at `at`, and where the next one starts.
fn parse_frame(bytes: &[u8], at: usize) -> Option<(Frame, usize)> {
    let header = bytes.get(at..at + FRAME_HEADER)?;
    let epoch = be_u64(&header[4..12])?;
    let len = be_u32(&header[12..16])? as usize;
    let crc = be_u32(&header[16..20])?;
    let start = at + FRAME_HEADER;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    if frame_crc(epoch, payload) != crc {
        return None;
    }
    let mut entries = Vec::new();
    let mut side = Vec::new();
    let mut rest = payload;
    while let Some((&kind, after)) = rest.split_first() {
        rest = match kind {
            KIND_VERSION => {
                let (entry, after) = parse_version(after)?;
                entries.push(entry);
                after
            }
            KIND_SIDE_PUT | KIND_SIDE_DELETE => {
                let (entry, after) = parse_side(after, kind == KIND_SIDE_PUT)?;
                side.push(entry);
                after
            }
            // A kind this build does not know: not a frame it can apply.
            _ => return None,
        };
    }
    Some((
        Frame {
            epoch: Some(epoch),
            entries,
            side,
        },
        start + len,
    ))
}

/// A first-format frame at `at`, and where the next one starts.
fn parse_frame_v1(bytes: &[u8], at: usize) -> Option<(Frame, usize)> {
    let header = bytes.get(at..at + FRAME_HEADER_V1)?;
    let len = be_u32(&header[4..8])? as usize;
    let crc = be_u32(&header[8..12])?;
    let start = at + FRAME_HEADER_V1;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let mut entries = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let (entry, after) = parse_version(rest)?;
        entries.push(entry);
        rest = after;
    }
    Some((
        Frame {
            epoch: None,
            entries,
            side: Vec::new(),
        },
        start + len,
    ))
}

/// A length-prefixed byte string, and what follows it.
fn parse_bytes(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = be_u32(bytes.get(..4)?)? as usize;
    let end = 4usize.checked_add(len)?;
    Some((bytes.get(4..end)?, &bytes[end..]))
}

/// A side entry's body (after its kind), and what follows it.
fn parse_side(bytes: &[u8], with_value: bool) -> Option<(SideEntry, &[u8])> {
    let (&table, rest) = bytes.split_first()?;
    let (key, rest) = parse_bytes(rest)?;
    let (value, rest) = if with_value {
        let (value, rest) = parse_bytes(rest)?;
        (Some(value.to_vec()), rest)
    } else {
        (None, rest)
    };
    Some((
        SideEntry {
            table,
            key: key.to_vec(),
            value,
        },
        rest,
    ))
}

/// A version entry's body (after its kind), and what follows it.
fn parse_version(bytes: &[u8]) -> Option<(Entry, &[u8])> {
    let header = bytes.get(..ENTRY_HEADER)?;
    let revision = be_u64(&header[0..8])?;
    let index = be_u32(&header[8..12])?;
    let len = be_u32(&header[12..16])? as usize;
    let end = ENTRY_HEADER.checked_add(len)?;
    let record = bytes.get(ENTRY_HEADER..end)?;
    Some((
        Entry {
            position: (revision, index),
            record: record.to_vec(),
        },
        &bytes[end..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(revision: u64, records: &[&[u8]]) -> FrameBuilder {
        let mut builder = FrameBuilder::default();
        for (index, record) in records.iter().enumerate() {
            builder.push((revision + index as u64, 0), record);
        }
        builder
    }

    /// The frames a reopened log in `path`'s directory finds.
    fn reopen(path: &Path) -> Vec<Frame> {
        Wal::open(path.parent().unwrap(), None).unwrap().1
    }

    /// A new, empty log in a temporary directory (kept alive by the returned
    /// guard), with the path of its first file.
    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WAL_FILES[0]);
        let (wal, found) = Wal::open(dir.path(), None).unwrap();
        assert!(found.is_empty());
        (dir, path, wal)
    }

    #[test]
    fn frames_read_back_in_order() {
        let (_dir, path, mut wal) = fresh();
        wal.append(&mut frame(1, &[b"a", b"bb"])).unwrap();
        wal.append(&mut frame(3, &[b"ccc"])).unwrap();
        let frames = reopen(&path);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].revisions(), Some((1, 2)));
        assert_eq!(frames[0].entries[1].record, b"bb");
        assert_eq!(frames[1].entries[0].position, (3, 0));
        assert_eq!(frames[1].entries[0].record, b"ccc");
    }

    #[test]
    fn a_torn_frame_ends_the_scan() {
        let (_dir, path, mut wal) = fresh();
        wal.append(&mut frame(1, &[b"first"])).unwrap();
        let first_end = wal.len();
        wal.append(&mut frame(2, &[b"second, torn"])).unwrap();
        // Tear the second frame: cut the file in its middle.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(first_end + 10).unwrap();
        let frames = reopen(&path);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].entries[0].record, b"first");
    }

    #[test]
    fn a_corrupt_byte_ends_the_scan() {
        let (_dir, path, mut wal) = fresh();
        wal.append(&mut frame(1, &[b"first"])).unwrap();
        let first_end = wal.len();
        wal.append(&mut frame(2, &[b"second"])).unwrap();
        wal.append(&mut frame(3, &[b"third"])).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", first_end + FRAME_HEADER as u64 + 20)
            .unwrap();
        let frames = reopen(&path);
        assert_eq!(frames.len(), 1, "nothing after a corrupt frame is trusted");
    }

    #[test]
    fn after_a_restart_old_frames_are_not_read() {
        let (_dir, path, mut wal) = fresh();
        for revision in 1..=3 {
            wal.append(&mut frame(revision, &[b"old record"])).unwrap();
        }
        wal.restart(1);
        wal.append(&mut frame(4, &[b"new record"])).unwrap();
        let frames = reopen(&path);
        // The new frame overwrote the first old one exactly; the rest, of the
        // epoch before, end the file's run.
        let revisions: Vec<_> = frames.iter().filter_map(Frame::revisions).collect();
        assert_eq!(revisions, vec![(4, 4)]);
        assert_eq!(frames[0].epoch, Some(1));
    }

    #[test]
    fn both_files_read_back_in_epoch_order() {
        let (_dir, path, mut wal) = fresh();
        wal.restart(7);
        wal.append(&mut frame(1, &[b"first file"])).unwrap();
        wal.append(&mut frame(2, &[b"first file"])).unwrap();
        // A checkpoint begins: the next frames go to the other file.
        wal.switch(8);
        assert_eq!(wal.len(), 0);
        wal.append(&mut frame(3, &[b"second file"])).unwrap();
        let frames = reopen(&path);
        let seen: Vec<_> = frames
            .iter()
            .map(|f| (f.epoch, f.revisions().unwrap()))
            .collect();
        assert_eq!(
            seen,
            vec![(Some(7), (1, 1)), (Some(7), (2, 2)), (Some(8), (3, 3))]
        );
        // The checkpoint done, the next one starts the first file over, after
        // the second file's frames in epoch order.
        wal.switch(9);
        wal.append(&mut frame(4, &[b"first file again"])).unwrap();
        let epochs: Vec<_> = reopen(&path).iter().map(|f| f.epoch).collect();
        assert_eq!(epochs, vec![Some(8), Some(9)]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0; 8]);
        assert!(parse(&bytes).is_empty());
        // A valid checksum over entries that overrun their payload.
        let payload = [0u8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 1];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        bytes.extend_from_slice(&payload);
        assert!(parse(&bytes).is_empty());
    }

    /// The frame layout on disk, fixed: magic, epoch, length, CRC-32 of epoch and
    /// payload, then each entry's kind, revision, index, length and bytes
    /// (big-endian).
    #[test]
    fn a_frame_is_these_bytes() {
        let (_dir, path, mut wal) = fresh();
        wal.restart(5);
        let mut builder = FrameBuilder::default();
        builder.push((7, 1), b"ab");
        wal.append(&mut builder).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let hex: String = bytes[..FRAME_HEADER + 1 + ENTRY_HEADER + 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "545257320000000000000005000000136262126700000000000000000700000001000000026162"
        );
    }

    /// A frame of the first format (no epoch, no entry kinds) still reads.
    #[test]
    fn a_first_format_frame_still_reads() {
        let hex = "545257310000001234895f86000000000000000700000001000000026162";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let frames = parse(&bytes);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].epoch, None);
        assert_eq!(frames[0].entries[0].position, (7, 1));
        assert_eq!(frames[0].entries[0].record, b"ab");
    }

    #[test]
    fn side_entries_read_back_in_order() {
        let (_dir, path, mut wal) = fresh();
        let mut builder = FrameBuilder::default();
        builder.push((1, 0), b"version");
        builder.push_side(1, b"k", Some(b"value"));
        builder.push_side(1, b"k", None);
        wal.append(&mut builder).unwrap();
        // A frame of side records alone.
        let mut builder = FrameBuilder::default();
        builder.push_side(1, b"other", Some(b""));
        wal.append(&mut builder).unwrap();
        let frames = reopen(&path);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].entries[0].record, b"version");
        let side: Vec<_> = frames[0]
            .side
            .iter()
            .map(|e| (e.table, e.key.as_slice(), e.value.as_deref()))
            .collect();
        assert_eq!(
            side,
            vec![(1, &b"k"[..], Some(&b"value"[..])), (1, &b"k"[..], None)]
        );
        assert_eq!(frames[1].revisions(), None);
        assert_eq!(frames[1].side[0].value.as_deref(), Some(&b""[..]));
    }
}
