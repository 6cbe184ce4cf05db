//! The crate's one error type.

use diesel::result::Error as DieselError;

/// Every failure a costdb call can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input was refused before any SQL ran; `field` names the offending argument.
    #[error("invalid input for `{field}`: {reason}")]
    InvalidInput {
        /// The argument or struct field that was refused.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The row the call needed does not exist (for this tenant).
    #[error("{entity} not found: {id}")]
    NotFound {
        /// What kind of row was looked for.
        entity: &'static str,
        /// The key that was looked up.
        id: String,
    },
    /// The write would break a uniqueness or ownership rule; nothing was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A finished worker run (completed, failed or crashed) cannot be changed.
    #[error("worker run {run_id} is {status} and can no longer be changed")]
    FinishedRun {
        /// The run that was left as it was.
        run_id: String,
        /// Its terminal status.
        status: String,
    },
    /// A write method was called outside a transaction; it wrote nothing.
    #[error(
        "this write must run inside a transaction the caller owns (e.g. conn.transaction(..))"
    )]
    NoTransaction,
    /// PostgreSQL or Diesel reported an error (including rows it could not decode).
    #[error("database error: {}", with_causes(.0))]
    Database(#[from] DieselError),
    /// A connection could not be opened.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connection(#[from] diesel::ConnectionError),
    /// The connection pool could not be built or lend a connection.
    #[error("connection pool error: {0}")]
    Pool(String),
    /// A schema migration failed or could not be read.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The throwaway local PostgreSQL could not be started.
    #[error("embedded PostgreSQL: {0}")]
    Embedded(String),
}

/// The error and its causes, e.g. "Error deserializing field 'status': unknown … value".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<diesel::r2d2::PoolError> for Error {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        Error::Pool(e.to_string())
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            reason: reason.into(),
        }
    }
}
