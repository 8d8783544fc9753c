//! Room kept on the disk for recovery: a file of zeros the store gives back when the
//! disk fills up.
//!
//! When redb itself fails (a checkpoint that hit a full disk), it must be closed and
//! opened again before it can serve anything but cached pages, and opening it writes
//! (a repair of the unclean file, the replay of the log, a checkpoint). On a full
//! disk that would fail for as long as the disk stays full, and reads of pages not
//! in the cache with it. So the store keeps `truce.reserve`, and during a disk-full
//! outage deletes it just before reopening: recovery has room, readers get a fresh
//! snapshot, and writes stay refused until the reserve can be written again (which
//! is also the proof that space was freed).

use std::fs::OpenOptions;
use std::path::PathBuf;

use crate::faults::{Faults, FileKind, StoreFile};

/// The reserve file inside the data directory.
pub(crate) const RESERVE_FILE: &str = "truce.reserve";

/// The reserve of one data directory.
#[derive(Debug)]
pub(crate) struct Reserve {
    path: PathBuf,
    bytes: u64,
    faults: Option<Faults>,
}

impl Reserve {
    /// The reserve of `bytes` bytes (0: none) at `path`.
    pub fn new(path: PathBuf, bytes: u64, faults: Option<Faults>) -> Self {
        Self {
            path,
            bytes,
            faults,
        }
    }

    /// Makes sure the reserve is on disk, whole and synced (written with zeros, so
    /// the space is really taken, not a sparse hole).
    pub fn ensure(&self) -> std::io::Result<()> {
        if self.bytes == 0 {
            return Ok(());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        let have = file.metadata()?.len();
        if have >= self.bytes {
            return Ok(());
        }
        let file = StoreFile::new(file, FileKind::Reserve, self.faults.clone())?;
        let zeros = vec![0u8; 1024 * 1024];
        let mut at = have;
        while at < self.bytes {
            let n = (self.bytes - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        file.sync_all()
    }

    /// Gives the space back; true if there was a reserve to give.
    pub fn release(&self) -> bool {
        self.bytes > 0 && std::fs::remove_file(&self.path).is_ok()
    }
}
