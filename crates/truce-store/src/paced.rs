//! The database file's writes reach the disk a slice at a time.
//!
//! A checkpoint's redb commit writes a few megabytes of pages and then syncs them.
//! Left to the kernel, the sync sends them to the disk all at once, and the
//! write-ahead log's next sync (a few pages, the thing every waiting write is
//! answered after) queues behind them: that flush was the slowest step of the
//! slowest batches. So the database file's sync first writes its dirty ranges out
//! a slice at a time, each slice waited for before the next is started, and only
//! then syncs: a log sync in between waits for one slice, not for the checkpoint.
//! The pages written and the durability promise are the same; only their order in
//! time changes.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use redb::StorageBackend;

/// How much of the database file is sent to the disk at a time.
const SLICE: u64 = 256 * 1024;

/// The methods of a `redb::StorageBackend` that lock ranges of the file, passed to
/// `self.inner`: the wrappers of redb's file backend (this one, and the fault
/// seam's) change how bytes reach the disk, never how the file is locked.
macro_rules! forward_file_locks {
    () => {
        fn try_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.inner.try_lock_range(start, end)
        }

        fn try_lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.inner.try_lock_shared_range(start, end)
        }

        fn lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.inner.lock_range(start, end)
        }

        fn lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.inner.lock_shared_range(start, end)
        }

        fn unlock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.inner.unlock_range(start, end)
        }

        fn query_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.inner.query_lock_range(start, end)
        }
    };
}
pub(crate) use forward_file_locks;

/// A redb storage backend that paces its sync (see the module's docs).
#[derive(Debug)]
pub(crate) struct PacedBackend<B> {
    inner: B,
    /// A handle on the same file, for starting and awaiting writeback.
    file: File,
    /// Byte ranges written since the last sync: `(start, end)`.
    dirty: Mutex<Vec<(u64, u64)>>,
}

impl<B: StorageBackend> PacedBackend<B> {
    /// Paces `inner`, whose file is `file`.
    pub fn new(inner: B, file: File) -> Self {
        Self {
            inner,
            file,
            dirty: Mutex::new(Vec::new()),
        }
    }

    /// Writes out the ranges written since the last sync, a slice at a time.
    fn write_out_dirty(&self) {
        let mut ranges = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        for (offset, len) in slices(&mut ranges, SLICE) {
            // Best effort: whatever this leaves is written by the sync after it,
            // which reports any failure.
            if write_out(&self.file, offset, len).is_err() {
                return;
            }
        }
    }
}

/// The written `ranges` (`(start, end)`, in any order, possibly overlapping) as
/// `(offset, len)` slices of at most `slice` bytes, in file order, each byte once.
fn slices(ranges: &mut [(u64, u64)], slice: u64) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = Vec::new();
    for (start, end) in merged {
        let mut at = start;
        while at < end {
            let len = (end - at).min(slice.max(1));
            out.push((at, len));
            at += len;
        }
    }
    out
}

/// Starts writeback of `len` bytes at `offset` and waits until it is done
/// (`sync_file_range(2)`; it makes nothing durable by itself).
fn write_out(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: the descriptor is owned by `file`, open for the call's duration, and
    // the call reads no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl<B: StorageBackend> StorageBackend for PacedBackend<B> {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.write_out_dirty();
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)?;
        let end = offset.saturating_add(data.len() as u64);
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((offset, end));
        Ok(())
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    forward_file_locks!();
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_sync_writes_out_and_forgets_the_ranges_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("db"))
            .unwrap();
        let handle = file.try_clone().unwrap();
        let backend = PacedBackend::new(redb::backends::FileBackend::new(file).unwrap(), handle);
        backend.set_len(3 * SLICE).unwrap();
        backend.write(10, &[7; 100]).unwrap();
        backend.write(SLICE, &vec![9; SLICE as usize + 5]).unwrap();
        assert_eq!(backend.dirty.lock().unwrap().len(), 2);
        // The system call itself is accepted (wrong flags would be EINVAL).
        write_out(&backend.file, 0, SLICE).unwrap();
        backend.sync_data().unwrap();
        assert!(backend.dirty.lock().unwrap().is_empty());
        let mut back = [0; 4];
        backend.read(2 * SLICE + 1, &mut back).unwrap();
        assert_eq!(back, [9; 4]);
    }

    #[test]
    fn touching_and_overlapping_ranges_are_written_once_in_slices() {
        let mut ranges = vec![(4096, 8192), (0, 4096), (6000, 10_000), (20_000, 20_001)];
        assert_eq!(
            slices(&mut ranges, 4096),
            vec![(0, 4096), (4096, 4096), (8192, 1808), (20_000, 1)]
        );
    }

    proptest! {
        /// Every byte written is in exactly one slice, no byte that was not
        /// written is in one, and no slice is over the limit.
        #[test]
        fn slices_cover_exactly_what_was_written(
            raw in proptest::collection::vec((0u64..2000, 0u64..300), 0..40),
            slice in 1u64..500,
        ) {
            let mut ranges: Vec<(u64, u64)> = raw.iter().map(|&(s, l)| (s, s + l)).collect();
            let mut written = std::collections::BTreeSet::new();
            for &(start, end) in &ranges {
                written.extend(start..end);
            }
            let mut covered = std::collections::BTreeSet::new();
            let out = slices(&mut ranges, slice);
            for (offset, len) in &out {
                prop_assert!(*len >= 1 && *len <= slice);
                for byte in *offset..offset + len {
                    prop_assert!(covered.insert(byte), "byte {} in two slices", byte);
                }
            }
            prop_assert_eq!(covered, written);
            prop_assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }
}
