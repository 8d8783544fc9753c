//! The write-ahead log: how a batch becomes durable without rewriting B-tree pages.
//!
//! A redb commit that fsyncs writes every page the batch dirtied: for a batch of
//! inserts at scattered keys that is dozens of 4 KiB pages. Instead, the sequencer
//! appends the batch's new log records to this file as one *frame*, fsyncs it (a few
//! pages, written sequentially), and only then commits to redb without an fsync, which
//! makes the batch visible to readers. Every so often a *checkpoint* commits to redb
//! with an fsync, after which the frames before it are no longer needed and the file
//! is rewritten from its start.
//!
//! On open, frames that continue the revision sequence of the redb file are applied
//! again. Stale frames (from before the last checkpoint) carry revisions the redb file
//! already holds and are skipped; a torn or corrupt frame ends the scan. A frame is
//! written and synced before any of its writes is answered, so a torn frame belongs
//! to a batch nobody was told succeeded.
//!
//! Frame layout (integers big-endian):
//! `magic(4) payload_len(4) crc32(payload)(4) payload`, where the payload is a list
//! of `revision(8) index(4) record_len(4) record`, each record encoded as in the
//! `log` table. The file is grown in zero-filled chunks and synced once per chunk, so
//! a frame's fsync flushes data pages only, never the file's size.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::codec::LogPosition;
use crate::faults::{Faults, FileKind, StoreFile};

/// The write-ahead log's file inside the data directory.
pub(crate) const WAL_FILE: &str = "truce.wal";

/// First bytes of every frame.
const MAGIC: [u8; 4] = *b"TRW1";
/// Size of a frame's header: magic, payload length, checksum.
const FRAME_HEADER: usize = 12;
/// Size of an entry's header: revision, index, record length.
const ENTRY_HEADER: usize = 16;
/// The file grows by at least this much at a time.
const GROWTH: u64 = 8 * 1024 * 1024;

/// An open write-ahead log, positioned where the next frame goes.
pub(crate) struct Wal {
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

/// The entries of one frame, in the order they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub entries: Vec<Entry>,
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
        self.bytes.extend_from_slice(&position.0.to_be_bytes());
        self.bytes.extend_from_slice(&position.1.to_be_bytes());
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(record);
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

    /// The complete frame: header filled in over the entries.
    fn seal(&mut self) -> std::io::Result<&[u8]> {
        let payload = self
            .bytes
            .get(FRAME_HEADER..)
            .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidInput, "empty frame"))?;
        let len = u32::try_from(payload.len())
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "frame over 4 GiB"))?;
        let crc = crc32fast::hash(payload);
        self.bytes[0..4].copy_from_slice(&MAGIC);
        self.bytes[4..8].copy_from_slice(&len.to_be_bytes());
        self.bytes[8..12].copy_from_slice(&crc.to_be_bytes());
        Ok(&self.bytes)
    }
}

impl Wal {
    /// Opens (or creates) the log and reads every intact frame from its start. Its
    /// writes and syncs pass the fault seam when `faults` is set.
    pub fn open(path: &Path, faults: Option<Faults>) -> std::io::Result<(Self, Vec<Frame>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let file = StoreFile::new(file, FileKind::Log, faults)?;
        let mut wal = Self {
            file,
            offset: 0,
            allocated: 0,
        };
        let frames = wal.read_frames()?;
        Ok((wal, frames))
    }

    /// Reads every intact frame from the start of the file as it is now. After a
    /// failed write or sync, this is what the log really holds (recovery trusts the
    /// file, not what was meant to be written).
    pub fn read_frames(&mut self) -> std::io::Result<Vec<Frame>> {
        let file = self.file.file();
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "log larger than memory"))?;
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, 0)?;
        self.allocated = bytes.len() as u64;
        Ok(parse(&bytes))
    }

    /// Bytes written since the last reset.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// Appends a batch's frame and waits until it is on disk.
    pub fn append(&mut self, frame: &mut FrameBuilder) -> std::io::Result<()> {
        if frame.is_empty() {
            return Ok(());
        }
        let bytes = frame.seal()?;
        let end = self.offset + bytes.len() as u64;
        if end > self.allocated {
            self.grow(end)?;
        }
        self.file.write_all_at(bytes, self.offset)?;
        self.file.sync_data()?;
        self.offset = end;
        Ok(())
    }

    /// Takes back the frame just appended, when the redb commit that should have
    /// followed it failed: its writes were refused, so recovery must never apply them,
    /// and the next batch reuses its revisions.
    pub fn discard(&mut self, start: u64) -> std::io::Result<()> {
        self.offset = start;
        self.invalidate_tail()
    }

    /// Makes sure nothing after the last accepted frame can ever be read back: zeros
    /// over the next frame's header, synced. After a failed append (or a failed sync
    /// of one) the bytes there are unknown: the whole frame, part of it, or nothing
    /// may reach the disk later, so they are overwritten rather than trusted.
    pub fn invalidate_tail(&mut self) -> std::io::Result<()> {
        self.file.write_all_at(&[0; FRAME_HEADER], self.offset)?;
        self.file.sync_data()
    }

    /// Starts again from the file's beginning, once a checkpoint made every frame
    /// so far redundant. Old bytes stay until overwritten; recovery skips them.
    pub fn reset(&mut self) {
        self.offset = 0;
    }

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

/// Reads intact frames from the start of the log until the first torn, corrupt or
/// zero-filled one.
fn parse(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
        if header[0..4] != MAGIC {
            break;
        }
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let crc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let start = at + FRAME_HEADER;
        let Some(payload) = start.checked_add(len).and_then(|end| bytes.get(start..end)) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(frame) = parse_entries(payload) else {
            break;
        };
        frames.push(frame);
        at = start + len;
    }
    frames
}

/// Splits a checked payload into its entries.
fn parse_entries(mut payload: &[u8]) -> Option<Frame> {
    let mut entries = Vec::new();
    while !payload.is_empty() {
        let header = payload.get(..ENTRY_HEADER)?;
        let revision = u64::from_be_bytes(header[0..8].try_into().ok()?);
        let index = u32::from_be_bytes(header[8..12].try_into().ok()?);
        let len = u32::from_be_bytes(header[12..16].try_into().ok()?) as usize;
        let record = payload.get(ENTRY_HEADER..ENTRY_HEADER.checked_add(len)?)?;
        entries.push(Entry {
            position: (revision, index),
            record: record.to_vec(),
        });
        payload = &payload[ENTRY_HEADER + len..];
    }
    Some(Frame { entries })
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

    fn reopen(path: &Path) -> Vec<Frame> {
        Wal::open(path, None).unwrap().1
    }

    /// A new, empty log in a temporary directory (kept alive by the returned guard).
    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(WAL_FILE);
        let (wal, found) = Wal::open(&path, None).unwrap();
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
    fn after_a_reset_old_frames_follow_the_new_ones() {
        let (_dir, path, mut wal) = fresh();
        for revision in 1..=3 {
            wal.append(&mut frame(revision, &[b"old record"])).unwrap();
        }
        wal.reset();
        wal.append(&mut frame(4, &[b"new record"])).unwrap();
        let revisions: Vec<_> = reopen(&path).iter().filter_map(Frame::revisions).collect();
        // The new frame overwrote the first old one exactly; the rest are stale, and
        // recovery skips them by revision.
        assert_eq!(revisions, vec![(4, 4), (2, 2), (3, 3)]);
    }

    #[test]
    fn a_discarded_frame_is_never_read_back() {
        let (_dir, path, mut wal) = fresh();
        wal.append(&mut frame(1, &[b"kept"])).unwrap();
        let start = wal.len();
        wal.append(&mut frame(2, &[b"refused, and longer than what follows"]))
            .unwrap();
        wal.discard(start).unwrap();
        assert_eq!(wal.len(), start);
        let revisions: Vec<_> = reopen(&path).iter().filter_map(Frame::revisions).collect();
        assert_eq!(revisions, vec![(1, 1)]);
        // The next batch reuses the refused batch's revision, in its place.
        wal.append(&mut frame(2, &[b"accepted"])).unwrap();
        let frames = reopen(&path);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].entries[0].record, b"accepted");
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

    /// The frame layout on disk, fixed: magic, length, CRC-32 of the payload, then
    /// each entry's revision, index, length and bytes (big-endian).
    #[test]
    fn a_frame_is_these_bytes() {
        let (_dir, path, mut wal) = fresh();
        let mut builder = FrameBuilder::default();
        builder.push((7, 1), b"ab");
        wal.append(&mut builder).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let hex: String = bytes[..FRAME_HEADER + ENTRY_HEADER + 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "545257310000001234895f86000000000000000700000001000000026162"
        );
    }
}
