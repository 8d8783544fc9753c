//! The storage fault seam: every write, sync and resize of the store's two files
//! passes through [`StoreFile`], which a test can make fail deterministically or
//! subject to a simulated power loss.
//!
//! Why a seam at all: a `kill -9` keeps the operating system's page cache, so a
//! store that never called fsync would pass every crash test; and a full disk or a
//! failing device cannot be produced on demand. [`Faults`] can do both. A test
//! arms a fault ([`Faults::fail`]: "the 3rd sync of the log fails with EIO") and
//! the store sees exactly that error from exactly that call. [`Faults::power_loss`]
//! undoes every write made since each file's last successful sync (optionally
//! keeping a torn prefix of the newest one) and fails all later I/O, which is what
//! a power cut leaves on a disk; a store then reopened on the same files must hold
//! every write it acknowledged.
//!
//! The seam is always compiled (integration tests of the server drive it through
//! `EmbeddedConfig::faults`), but it is inert unless a `Faults` is installed: no
//! flag or setting of the binary installs one, and without it each operation is
//! one `Option` check before the plain file call. redb's own file goes through the
//! same seam by way of a [`redb::StorageBackend`] wrapper around redb's file
//! backend.

use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};

use redb::StorageBackend;
use redb::backends::FileBackend;

use crate::paced::forward_file_locks;

/// Which of the store's files an operation is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `truce.wal`, the write-ahead log.
    Log,
    /// `truce.redb`, the database.
    Database,
    /// `truce.reserve`, the room kept for recovery on a full disk.
    Reserve,
}

/// An operation the seam can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Writing bytes (appending a frame, growing the log with zeros, zeroing a
    /// refused frame, redb writing pages).
    Write,
    /// fsync / fdatasync.
    Sync,
    /// Changing the file's length (redb growing or trimming its file).
    SetLen,
}

/// What an armed fault does to the call it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with ENOSPC and writes nothing.
    NoSpace,
    /// The call fails with EIO and does nothing.
    Io,
    /// (Writes) the first half of the data is written, then the call fails with
    /// ENOSPC, as when the disk fills in the middle of a write.
    ShortWrite,
    /// The power goes at this very call: it fails, [`Faults::power_loss`] is
    /// applied, and everything after fails too. A crash at a chosen point (in the
    /// middle of a batch, of a checkpoint, of growing the log).
    PowerCut(PowerLoss),
}

/// What a simulated power loss leaves of the newest unsynced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerLoss {
    /// Nothing: every file is exactly as at its last successful sync.
    DropUnsynced,
    /// The first half of the newest unsynced write of each file reached the disk;
    /// everything else unsynced is lost.
    TearNewest,
}

/// A handle to the fault plan shared by a store's files. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<Plan>>);

#[derive(Debug, Default)]
struct Plan {
    /// Calls seen so far, per file and operation.
    calls: HashMap<(FileKind, IoOp), u64>,
    /// Armed faults: at call number `.1` (1-based, counted from the start) of the
    /// operation, fail with `.2`.
    armed: Vec<((FileKind, IoOp), u64, Fault)>,
    /// Faults that hit every call of an operation until [`Faults::heal`].
    always: HashMap<(FileKind, IoOp), Fault>,
    /// After a power loss, every operation fails.
    dead: bool,
    /// What a power loss would undo, per file.
    /// (Files of one kind are told apart by their slot: the log has two.)
    unsynced: HashMap<(FileKind, u8), Unsynced>,
}

/// The writes of one file since its last successful sync, and how to undo them.
#[derive(Debug)]
struct Unsynced {
    /// A second handle to the file, to undo with.
    file: Arc<File>,
    /// The file's length at its last sync.
    synced_len: u64,
    /// Before-images of each write since, oldest first: `(offset, old bytes, new length written)`.
    undo: Vec<(u64, Vec<u8>, usize)>,
}

impl Plan {
    /// Rolls every file back to its last sync (see [`Faults::power_loss`]).
    fn cut(&mut self, loss: PowerLoss) -> std::io::Result<()> {
        self.dead = true;
        for unsynced in self.unsynced.values_mut() {
            let newest = unsynced.undo.len().checked_sub(1);
            for (i, (offset, old, written)) in unsynced.undo.iter().enumerate().rev() {
                let keep = if loss == PowerLoss::TearNewest && Some(i) == newest {
                    written / 2
                } else {
                    0
                };
                if let Some(old) = old.get(keep..) {
                    unsynced.file.write_all_at(old, offset + keep as u64)?;
                }
            }
            let torn_end = match (loss, unsynced.undo.last()) {
                (PowerLoss::TearNewest, Some((offset, _, written))) => {
                    offset + (written / 2) as u64
                }
                _ => 0,
            };
            unsynced.file.set_len(unsynced.synced_len.max(torn_end))?;
            unsynced.file.sync_all()?;
            unsynced.undo.clear();
        }
        Ok(())
    }
}

fn injected(fault: Fault) -> std::io::Error {
    match fault {
        Fault::Io | Fault::PowerCut(_) => std::io::Error::from_raw_os_error(libc_eio()),
        Fault::NoSpace | Fault::ShortWrite => std::io::Error::from_raw_os_error(libc_enospc()),
    }
}

/// `EIO` on Linux.
const fn libc_eio() -> i32 {
    5
}

/// `ENOSPC` on Linux.
const fn libc_enospc() -> i32 {
    28
}

impl Faults {
    /// An empty plan: nothing fails until a fault is armed.
    pub fn new() -> Self {
        Self::default()
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Arms a fault for the `nth` call (1 = the next one) of `op` on `file` from now.
    pub fn fail(&self, file: FileKind, op: IoOp, nth: u64, fault: Fault) {
        let mut plan = self.plan();
        let seen = plan.calls.get(&(file, op)).copied().unwrap_or(0);
        plan.armed.push(((file, op), seen + nth.max(1), fault));
    }

    /// Makes every call of `op` on `file` fail until [`Faults::heal`] (a disk that
    /// stays full, a device that stays broken).
    pub fn fail_always(&self, file: FileKind, op: IoOp, fault: Fault) {
        self.plan().always.insert((file, op), fault);
    }

    /// Removes every armed and standing fault (the disk was freed, the device
    /// replaced).
    pub fn heal(&self) {
        let mut plan = self.plan();
        plan.armed.clear();
        plan.always.clear();
    }

    /// Removes the standing fault of `op` on `file` only.
    pub fn heal_one(&self, file: FileKind, op: IoOp) {
        self.plan().always.remove(&(file, op));
    }

    /// How many calls of `op` on `file` were made so far.
    pub fn calls(&self, file: FileKind, op: IoOp) -> u64 {
        self.plan().calls.get(&(file, op)).copied().unwrap_or(0)
    }

    /// Cuts the power: every file goes back to what its last successful sync made
    /// durable (`loss` says whether a torn prefix of the newest write survives),
    /// and every later operation fails with EIO. The store must then be dropped and
    /// opened again without this plan.
    pub fn power_loss(&self, loss: PowerLoss) -> std::io::Result<()> {
        self.plan().cut(loss)
    }

    /// Whether the power was cut (by [`Faults::power_loss`] or a
    /// [`Fault::PowerCut`]).
    pub fn is_dead(&self) -> bool {
        self.plan().dead
    }
}

impl Faults {
    /// Counts a call and decides whether it fails.
    fn check(&self, file: FileKind, op: IoOp) -> Result<(), Fault> {
        let mut plan = self.plan();
        if plan.dead {
            return Err(Fault::Io);
        }
        let count = plan.calls.entry((file, op)).or_insert(0);
        *count += 1;
        let count = *count;
        if let Some(fault) = plan.always.get(&(file, op)) {
            return Err(*fault);
        }
        if let Some(i) = plan
            .armed
            .iter()
            .position(|(at, nth, _)| *at == (file, op) && *nth == count)
        {
            let (_, _, fault) = plan.armed.swap_remove(i);
            if let Fault::PowerCut(loss) = fault
                && let Err(error) = plan.cut(loss)
            {
                tracing::error!(%error, "simulated power loss could not roll the files back");
            }
            return Err(fault);
        }
        Ok(())
    }

    /// Registers a freshly opened file (replacing an earlier handle of the same kind).
    /// A file opened again (redb reopened after a fault) keeps what was not synced
    /// through the earlier handle: a power loss undoes it all the same.
    fn register(&self, kind: (FileKind, u8), file: &File) -> std::io::Result<()> {
        let handle = Arc::new(file.try_clone()?);
        let mut plan = self.plan();
        match plan.unsynced.get_mut(&kind) {
            Some(unsynced) => unsynced.file = handle,
            None => {
                let synced_len = handle.metadata()?.len();
                plan.unsynced.insert(
                    kind,
                    Unsynced {
                        file: handle,
                        synced_len,
                        undo: Vec::new(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset` of `file`, keeping what was there to undo it.
    /// Done under the plan's lock, so a power cut on another thread comes
    /// wholly before or after it (after a cut, it fails).
    fn write_through(
        &self,
        kind: (FileKind, u8),
        file: &File,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        let mut plan = self.plan();
        if plan.dead {
            return Err(injected(Fault::Io));
        }
        plan.keep_before(kind, offset, data.len())?;
        file.write_all_at(data, offset)
    }

    /// Syncs through `sync`, under the plan's lock (as [`Faults::write_through`]),
    /// and forgets what a power loss would have undone.
    fn sync_through(
        &self,
        kind: (FileKind, u8),
        sync: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut plan = self.plan();
        if plan.dead {
            return Err(injected(Fault::Io));
        }
        sync()?;
        if let Some(unsynced) = plan.unsynced.get_mut(&kind) {
            unsynced.undo.clear();
            unsynced.synced_len = unsynced.file.metadata()?.len();
        }
        Ok(())
    }

    /// Keeps the bytes a shrink cuts off, to undo it.
    fn before_set_len(&self, kind: (FileKind, u8), len: u64) -> std::io::Result<()> {
        let mut plan = self.plan();
        let current = match plan.unsynced.get(&kind) {
            Some(unsynced) => unsynced.file.metadata()?.len(),
            None => return Ok(()),
        };
        if len < current {
            plan.keep_before(kind, len, (current - len) as usize)?;
        }
        Ok(())
    }
}

impl Plan {
    /// Keeps what `len` bytes at `offset` hold now, to undo a write there.
    fn keep_before(
        &mut self,
        kind: (FileKind, u8),
        offset: u64,
        len: usize,
    ) -> std::io::Result<()> {
        let Some(unsynced) = self.unsynced.get_mut(&kind) else {
            return Ok(());
        };
        let current = unsynced.file.metadata()?.len();
        let readable = current.saturating_sub(offset).min(len as u64) as usize;
        let mut old = vec![0; readable];
        unsynced.file.read_exact_at(&mut old, offset)?;
        unsynced.undo.push((offset, old, len));
        Ok(())
    }
}

/// One of the store's files, with its I/O passing the fault seam.
#[derive(Debug)]
pub(crate) struct StoreFile {
    file: File,
    kind: FileKind,
    /// Which file of its kind it is (the log's two files are slots 0 and 1).
    slot: u8,
    faults: Option<Faults>,
}

impl StoreFile {
    /// Wraps an open file.
    pub fn new(file: File, kind: FileKind, faults: Option<Faults>) -> std::io::Result<Self> {
        Self::in_slot(file, kind, 0, faults)
    }

    /// Wraps an open file, one of several of its kind.
    pub fn in_slot(
        file: File,
        kind: FileKind,
        slot: u8,
        faults: Option<Faults>,
    ) -> std::io::Result<Self> {
        if let Some(faults) = &faults {
            faults.register((kind, slot), &file)?;
        }
        Ok(Self {
            file,
            kind,
            slot,
            faults,
        })
    }

    /// The plain file, for reads (which the seam does not fail).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn check(&self, op: IoOp) -> Result<(), Fault> {
        match &self.faults {
            Some(faults) => faults.check(self.kind, op),
            None => Ok(()),
        }
    }

    /// `write_all_at`, through the seam.
    pub fn write_all_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let Some(faults) = &self.faults else {
            return self.file.write_all_at(data, offset);
        };
        let outcome = self.check(IoOp::Write);
        let len = match outcome {
            Ok(()) => data.len(),
            Err(Fault::ShortWrite) => data.len() / 2,
            Err(fault) => return Err(injected(fault)),
        };
        faults.write_through((self.kind, self.slot), &self.file, offset, &data[..len])?;
        outcome.map_err(injected)
    }

    /// `sync_data`, through the seam. A failed sync leaves what was written
    /// undone by a later power loss.
    pub fn sync_data(&self) -> std::io::Result<()> {
        self.check(IoOp::Sync).map_err(injected)?;
        match &self.faults {
            Some(faults) => faults.sync_through((self.kind, self.slot), || self.file.sync_data()),
            None => self.file.sync_data(),
        }
    }

    /// `sync_all`, through the seam (counted as a sync).
    pub fn sync_all(&self) -> std::io::Result<()> {
        self.check(IoOp::Sync).map_err(injected)?;
        match &self.faults {
            Some(faults) => faults.sync_through((self.kind, self.slot), || self.file.sync_all()),
            None => self.file.sync_all(),
        }
    }

    /// `set_len`, through the seam.
    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check(IoOp::SetLen).map_err(injected)?;
        if let Some(faults) = &self.faults {
            faults.before_set_len((self.kind, self.slot), len)?;
        }
        self.file.set_len(len)
    }
}

/// redb's file backend with its writes, syncs and resizes passing the fault seam.
/// Reads, the length and the file locks are redb's own.
#[derive(Debug)]
pub(crate) struct FaultyBackend {
    inner: FileBackend,
    /// A second handle on the same file, through which faults are decided and
    /// before-images taken.
    seam: StoreFile,
}

impl FaultyBackend {
    /// Wraps `file` (the database file) under `faults`.
    pub fn new(file: File, faults: Faults) -> std::io::Result<Self> {
        let seam = StoreFile::new(file.try_clone()?, FileKind::Database, Some(faults))?;
        let inner = FileBackend::new(file).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self { inner, seam })
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.seam.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.seam.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.seam.write_all_at(data, offset)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    forward_file_locks!();
}

/// Whether an I/O error means the disk is full (as opposed to any other failure).
pub(crate) fn is_disk_full(error: &std::io::Error) -> bool {
    error.kind() == ErrorKind::StorageFull
        || error.raw_os_error() == Some(libc_enospc())
        || error.raw_os_error() == Some(122) // EDQUOT: the quota is full
}
