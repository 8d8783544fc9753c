//! Errors of the embedded store: opening it, and mapping redb's errors onto the
//! engine's [`StorageError`].

use std::path::PathBuf;

use truce_engine::StorageError;

use crate::faults::is_disk_full;

/// Why the embedded store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Another process holds the database.
    #[error("the data directory {0} is in use by another truce process")]
    InUse(PathBuf),
    /// The database file could not be opened or initialised.
    #[error("cannot open the store at {path}: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's reason.
        message: String,
    },
    /// The sequencer thread could not be started.
    #[error("cannot start the sequencer thread: {0}")]
    Thread(std::io::Error),
}

/// Maps any redb error onto the engine's storage error.
pub(crate) fn storage(error: impl Into<redb::Error>) -> StorageError {
    match error.into() {
        redb::Error::Corrupted(message) => StorageError::Corrupt(message),
        redb::Error::DatabaseClosed => StorageError::Closed,
        redb::Error::Io(error) => io(error),
        other => StorageError::Io(other.to_string()),
    }
}

/// Maps a failed file operation onto the engine's storage error, telling a full
/// disk apart.
pub(crate) fn io(error: std::io::Error) -> StorageError {
    if is_disk_full(&error) {
        StorageError::DiskFull(error.to_string())
    } else {
        StorageError::Io(error.to_string())
    }
}
