//! What can go wrong in the store, typed, so callers answer without looking inside errors:
//! the HTTP layer maps [`StoreError`] to 404, 409, 422, 503 or 500.

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An activity names a personal broadcast that does not exist (nothing was recorded).
    #[error("activity {index}: no personal broadcast {broadcast_id} for customer {customer_id}")]
    UnknownBroadcast {
        index: usize,
        broadcast_id: i64,
        customer_id: i64,
    },
    /// What was asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Another writer changed the same thing at the same time, and retrying did not help.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store cannot take the work now (a full disk, an I/O error, a database that does
    /// not answer, a database file deleted or replaced): worth retrying later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or damaged data.
    #[error(transparent)]
    Other(anyhow::Error),
}

/// The result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Whether retrying later may succeed (the HTTP layer answers 503 with `Retry-After`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    pub fn unavailable(why: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(why.to_string())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if matches!(
                f.code,
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::DiskFull
                    | ErrorCode::CannotOpen
                    | ErrorCode::ReadOnly
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::OutOfMemory
            ) {
                return StoreError::Unavailable(e.to_string());
            }
            if f.code == ErrorCode::ConstraintViolation {
                return StoreError::Conflict(e.to_string());
            }
        }
        StoreError::Other(e.into())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let outage = matches!(
            e,
            sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed
        );
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned());
        match code.as_deref() {
            // Class 53 (insufficient resources), 57P0x (shutdown), 08 (connection).
            Some(c) if c.starts_with("53") || c.starts_with("57P") || c.starts_with("08") => {
                StoreError::Unavailable(e.to_string())
            }
            // A unique key another instance took first; 40001/40P01: serialization, deadlock.
            Some("23505" | "40001" | "40P01") => StoreError::Conflict(e.to_string()),
            _ if outage => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Other(e.into()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Other(anyhow::Error::new(e).context("a stored value is not the JSON expected"))
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(28) {
            // ENOSPC
            return StoreError::Unavailable(e.to_string());
        }
        StoreError::Other(e.into())
    }
}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<StoreError>() {
            Ok(s) => s,
            Err(e) => StoreError::Other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_and_races_are_told_apart_from_bugs() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(StoreError::from(full).is_unavailable());
        let unique = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE),
            None,
        );
        assert!(matches!(StoreError::from(unique), StoreError::Conflict(_)));
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        let enospc = std::io::Error::from_raw_os_error(28);
        assert!(StoreError::from(enospc).is_unavailable());
        let bug = StoreError::from(rusqlite::Error::InvalidQuery);
        assert!(matches!(bug, StoreError::Other(_)));
    }
}
