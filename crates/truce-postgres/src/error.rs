//! The backend's errors: opening it, and how a database failure reaches the engine.

use truce_engine::StorageError;

/// Why the PostgreSQL backend cannot open or go on.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The database answered with an error, or the connection failed.
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("no database connection: {0}")]
    Pool(String),
    /// `--database-url` is not a PostgreSQL connection string.
    #[error("invalid database URL: {0}")]
    Url(String),
    /// The database was migrated by a newer truce.
    #[error(
        "the database schema is version {found}, newer than this truce knows ({known}): run a truce at least as new as the one that migrated it"
    )]
    SchemaTooNew { found: i32, known: i32 },
    /// A stored value this binary cannot read.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The writer thread could not start.
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

impl From<deadpool_postgres::PoolError> for PostgresError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Pool(error.to_string())
    }
}

impl From<PostgresError> for StorageError {
    /// Every failure of the database is a 503 the client may retry: the database
    /// is down, restarting or unreachable, or refused the statement.
    fn from(error: PostgresError) -> Self {
        match error {
            PostgresError::Corrupt(what) => StorageError::Corrupt(what),
            PostgresError::Database(error) if !is_answer(&error) => {
                StorageError::Unreachable(error.to_string())
            }
            PostgresError::Pool(why) => StorageError::Unreachable(why),
            other => StorageError::Io(other.to_string()),
        }
    }
}

/// Whether `error` is the database's answer to a statement (as opposed to a
/// connection that failed, or a server that is shutting down or starting up).
fn is_answer(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    match error.as_db_error() {
        None => false,
        Some(db) => ![
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            SqlState::CONNECTION_FAILURE,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(db.code()),
    }
}

/// A database failure as the engine sees it.
pub(crate) fn storage(error: impl Into<PostgresError>) -> StorageError {
    error.into().into()
}
