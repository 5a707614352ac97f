//! Typed errors: the process's ([`KeyserverError`]), the database's
//! ([`StorageError`]) and a request's ([`RequestError`], which becomes a
//! `KsError` reply).

use ward_proto::v1::{ErrorCode, KsError};

/// Why the keyserver could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum KeyserverError {
    /// Listening or accepting failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The database could not be opened or migrated.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The system's random generator failed.
    #[error("random generator failed")]
    Random,
}

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task running the query died.
    #[error("database task failed: {0}")]
    Task(String),
    /// The database file could not be created.
    #[error("creating the database file: {0}")]
    Create(#[from] std::io::Error),
    /// The database holds something the keyserver never writes.
    #[error("database is inconsistent: {0}")]
    Corrupt(String),
    /// The database was written by a newer keyserver.
    #[error("database schema version {found} is newer than this keyserver's {supported}")]
    TooNew {
        /// `PRAGMA user_version` found.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
}

/// A request the keyserver refuses, with the typed code the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {detail}")]
pub struct RequestError {
    /// The code sent to the client.
    pub code: ErrorCode,
    /// A short human-readable explanation (never secret).
    pub detail: String,
}

impl RequestError {
    /// A refusal with `code`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }

    /// `MALFORMED`.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Malformed, detail)
    }

    /// `FORBIDDEN`.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, detail)
    }

    /// The reply body.
    pub fn to_proto(&self) -> KsError {
        KsError {
            code: self.code as i32,
            detail: self.detail.clone(),
        }
    }
}

impl From<StorageError> for RequestError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "storage failure while serving a request");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

impl From<rusqlite::Error> for RequestError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::from(e).into()
    }
}
