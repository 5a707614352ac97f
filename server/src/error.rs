//! The relay's typed errors.

/// Why the relay failed to start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer relay.
    #[error("database schema version {0} is newer than this relay's")]
    SchemaTooNew(i64),
    /// The writer thread is gone (shut down or crashed).
    #[error("writer stopped")]
    WriterGone,
    /// The transaction holding this command failed to commit.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// A blocking task failed to run.
    #[error("blocking task failed: {0}")]
    Join(String),
    /// Stored bytes did not decode.
    #[error("corrupt stored data: {0}")]
    Corrupt(&'static str),
    /// The database file could not be created.
    #[error("creating the database file: {0}")]
    Create(#[from] std::io::Error),
}
