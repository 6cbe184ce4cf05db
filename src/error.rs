//! The crate's one error type.
//!
//! Each variant's `Display` says what went wrong at its own level only; the underlying
//! error, when there is one, is returned by [`std::error::Error::source`]. [`report`] prints
//! the whole chain on one line, each cause once.

use diesel::result::Error as DieselError;

/// A boxed error from a lower layer (migrations report theirs this way).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every failure a costdb call can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A leader's write was refused: its fencing term is no longer the latest, so another
    /// process has led since. Nothing was written by the check.
    #[error("lock {lock_id}: term {term} is stale, the latest is {current}")]
    StaleTerm {
        /// The leader lock.
        lock_id: i64,
        /// The term the writer holds.
        term: i64,
        /// The latest term (0 when the lock was never taken).
        current: i64,
    },
    /// The [`CostRecorder`](crate::recorder::CostRecorder) could not commit this record.
    /// Unless `outcome_unknown`, it is not stored; with it, a commit was sent whose answer
    /// never came, so the record may be stored once under `id`: look it up by that id.
    #[error("cost record {id} was not recorded: {reason}")]
    NotRecorded {
        /// The id the record was given before the first attempt.
        id: String,
        /// Whether a commit holding it may have succeeded.
        outcome_unknown: bool,
        /// The last error the writer saw.
        reason: String,
    },
    /// The [`AdmissionService`](crate::admission::AdmissionService) could not commit the
    /// batch holding this request. Unless `outcome_unknown`, nothing of it changed; with
    /// it, a commit was sent whose answer never came: look the reservation up by its
    /// request id.
    #[error("admission request {request_id} was not committed: {reason}")]
    NotAdmitted {
        /// The request (for a settle or release, the reservation's).
        request_id: String,
        /// Whether a commit holding it may have succeeded.
        outcome_unknown: bool,
        /// The last error the service saw.
        reason: String,
    },
    /// The replica is further behind its primary than the caller allows, and no primary
    /// was given to read from instead.
    #[error("the replica is {lag:?} behind its primary, more than the {max_lag:?} allowed")]
    ReplicaLag {
        /// How far behind it was.
        lag: std::time::Duration,
        /// The bound.
        max_lag: std::time::Duration,
    },
    /// Retention would drop days whose rollups differ from their records: nothing was
    /// dropped. `costdb rollup verify` names the keys; `costdb rollup rebuild` repairs them.
    #[error("cannot retire the records of {days:?}: their rollups differ from them")]
    RetentionRefused {
        /// The UTC days whose rollups differ.
        days: Vec<chrono::NaiveDate>,
    },
    /// The queue of a recorder or an admission service is full (`try_record`,
    /// `try_reserve`); nothing was queued.
    #[error("the queue is full")]
    Busy,
    /// The recorder or admission service was shut down; nothing was queued.
    #[error("the service is shut down")]
    Closed,
    /// PostgreSQL or Diesel reported an error (including rows it could not decode).
    #[error("database error")]
    Database(#[from] DieselError),
    /// A connection could not be opened.
    #[error("cannot connect to PostgreSQL")]
    Connection(#[from] diesel::ConnectionError),
    /// The connection pool could not be built or lend a connection in time.
    #[error("connection pool error")]
    Pool(#[from] diesel::r2d2::PoolError),
    /// A schema migration failed, could not be read, or the database has applied
    /// migrations this build does not know.
    #[error("migration failed: {what}")]
    Migration {
        /// What the runner was doing or found.
        what: String,
        /// The migration harness's own error, when it gave one.
        #[source]
        source: Option<BoxError>,
    },
    /// The operating system refused to start a thread the crate needs.
    #[error("cannot start {what}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn migration(what: impl Into<String>, source: Option<BoxError>) -> Self {
        Error::Migration {
            what: what.into(),
            source,
        }
    }
}

/// The error and each of its causes, joined by `": "` on one line, e.g.
/// `database error: Error deserializing field 'status': unknown worker run status value`.
pub fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let line = c.to_string();
        // Some libraries repeat their cause in their own message: print it once.
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = c.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no folder");
        let e = Error::migration("cannot read the migrations", Some(Box::new(io)));
        assert_eq!(
            e.to_string(),
            "migration failed: cannot read the migrations"
        );
        assert_eq!(e.source().unwrap().to_string(), "no folder");
        assert_eq!(
            report(&e),
            "migration failed: cannot read the migrations: no folder"
        );
        let db = Error::from(DieselError::NotFound);
        assert_eq!(report(&db), "database error: Record not found");
    }
}
