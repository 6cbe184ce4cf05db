//! Leader election on PostgreSQL advisory locks, with fencing terms.
//!
//! One process among many runs a singleton job (the canary runner, the alert worker, the
//! provenance archiver) while it holds a session-level advisory lock. [`LeaderGuard`] holds
//! it on a **dedicated** connection that no pool ever sees, so the lock cannot leak into a
//! pool or be recycled away; dropping the guard unlocks and closes that connection, also
//! when the work panics.
//!
//! A session lock ends with its session, and a paused leader may not notice. Every
//! acquisition therefore gets a **term** from `leader_terms` that is greater than every
//! earlier term of that lock; a leader's writes call [`check_term`] inside their own
//! transaction, which refuses a term that is no longer the latest with
//! [`Error::StaleTerm`]. The check takes a share lock on the term's row, so a new leader's
//! acquisition waits until such a write has committed or rolled back.
//!
//! For work that fits in one transaction, [`try_acquire_xact_lock`] takes a lock that the
//! transaction's end releases: the only kind that is safe on a pooled connection.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Int4, Nullable, Text, Timestamptz};
use serde::Serialize;

use crate::connect::connect_within;
use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::types::limits;
use crate::types::locks::{LOCK_ALERT_WORKER, LOCK_CANARY_RUNNER, LOCK_PROVENANCE_ARCHIVER};

/// How long [`LeaderGuard::acquire`] waits by default, as the original did.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    ok: bool,
}

#[derive(QueryableByName)]
struct Term {
    #[diesel(sql_type = BigInt)]
    term: i64,
}

fn flag(conn: &mut PgConnection, sql: &str, lock_id: i64) -> Result<bool> {
    Ok(diesel::sql_query(sql)
        .bind::<BigInt, _>(lock_id)
        .get_result::<Flag>(conn)?
        .ok)
}

/// Takes the session-level lock `lock_id` on `conn` if no other session holds it; never
/// waits. Taking it twice on one session needs two releases.
///
/// The lock outlives transactions and ends with the session: on a pooled connection it
/// stays behind when the connection goes back to the pool. Hold it on a dedicated
/// connection ([`LeaderGuard`]) or release it before giving the connection back.
pub fn try_acquire_leader_lock(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    flag(conn, "SELECT pg_try_advisory_lock($1) AS ok", lock_id)
}

/// Releases one hold of the session-level lock `lock_id`; `false` when this session did
/// not hold it.
pub fn release_leader_lock(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    flag(conn, "SELECT pg_advisory_unlock($1) AS ok", lock_id)
}

/// The exact `pg_locks` row of the single-key advisory lock `lock_id` in this database:
/// `classid` is the high 32 bits, `objid` the low 32 bits, `objsubid` 1.
const HELD: &str = "\
SELECT EXISTS ( \
    SELECT 1 FROM pg_locks \
    WHERE locktype = 'advisory' AND granted \
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
      AND classid = (($1 >> 32) & 4294967295)::oid AND objid = ($1 & 4294967295)::oid \
      AND objsubid = 1";

/// Whether any session of this database holds the lock `lock_id` (informational: the
/// answer may change at once).
pub fn is_lock_held(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    flag(conn, &format!("{HELD}) AS ok"), lock_id)
}

/// Whether this very session holds the lock `lock_id`.
pub fn holds_lock(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    flag(
        conn,
        &format!("{HELD} AND pid = pg_backend_pid()) AS ok"),
        lock_id,
    )
}

/// Takes the lock `lock_id` until the caller's transaction ends (commit or rollback); never
/// waits. Safe on pooled connections.
///
/// # Errors
/// [`Error::NoTransaction`] outside a transaction, where the lock would end at once.
pub fn try_acquire_xact_lock(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    require_transaction(conn)?;
    flag(conn, "SELECT pg_try_advisory_xact_lock($1) AS ok", lock_id)
}

/// Starts a new term of `lock_id` for `holder` and returns it: one more than the last.
/// Call it only while holding the lock.
const NEXT_TERM: &str = "\
INSERT INTO leader_terms AS t (lock_id, term, holder) VALUES ($1, 1, $2) \
ON CONFLICT (lock_id) DO UPDATE SET term = t.term + 1, holder = EXCLUDED.holder, \
    acquired_at = now() \
RETURNING term";

/// Refuses to go on unless `term` is still the latest term of `lock_id`.
///
/// Call it inside the transaction that does the leader's write, before the write: it
/// takes a share lock on the term's row until that transaction ends, so no new term can
/// begin before the write is committed or rolled back.
///
/// # Errors
/// [`Error::StaleTerm`] when a newer term exists (another process has led since);
/// [`Error::NoTransaction`] outside a transaction.
pub fn check_term(conn: &mut PgConnection, lock_id: i64, term: i64) -> Result<()> {
    require_transaction(conn)?;
    let current = diesel::sql_query("SELECT term FROM leader_terms WHERE lock_id = $1 FOR SHARE")
        .bind::<BigInt, _>(lock_id)
        .get_result::<Term>(conn)
        .optional()?
        .map_or(0, |t| t.term);
    if current != term {
        return Err(Error::StaleTerm {
            lock_id,
            term,
            current,
        });
    }
    Ok(())
}

/// Leadership of one lock, held on a connection of its own.
///
/// Dropping the guard releases the lock and closes the connection; nothing else ever
/// uses that connection.
pub struct LeaderGuard {
    conn: PgConnection,
    lock_id: i64,
    term: i64,
    pid: i32,
    released: bool,
}

impl std::fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGuard")
            .field("lock_id", &self.lock_id)
            .field("term", &self.term)
            .field("pid", &self.pid)
            .finish()
    }
}

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Int4)]
    pid: i32,
}

impl LeaderGuard {
    /// Opens a dedicated connection to `database_url` and tries once to take `lock_id`;
    /// `Ok(None)` when another session leads.
    ///
    /// `timeout` bounds the whole acquisition, also below libpq's 2 s floor: the
    /// connection ([`crate::connect::connect_within`]) and then the statements, with what
    /// is left of it. `holder` names this process in `leader_terms`.
    ///
    /// # Errors
    /// [`Error::Connection`] when the server cannot be reached in time, and database errors
    /// (for example a schema without `leader_terms`). Nothing is held then.
    pub fn acquire(
        database_url: &str,
        lock_id: i64,
        holder: &str,
        timeout: Duration,
    ) -> Result<Option<LeaderGuard>> {
        crate::validate::required("holder", holder, limits::HOLDER)?;
        if timeout.is_zero() {
            return Err(Error::invalid("timeout", "must be positive"));
        }
        let deadline = Instant::now() + timeout;
        let mut conn = connect_within(database_url, timeout)?;
        let left = deadline.saturating_duration_since(Instant::now());
        diesel::sql_query("SELECT set_config('statement_timeout', $1, false)")
            .bind::<Text, _>(left.as_millis().max(1).to_string())
            .execute(&mut conn)?;
        if !try_acquire_leader_lock(&mut conn, lock_id)? {
            return Ok(None);
        }
        // From here on the lock is held: a failure drops `conn`, which ends the session
        // and with it the lock.
        let term = diesel::sql_query(NEXT_TERM)
            .bind::<BigInt, _>(lock_id)
            .bind::<Text, _>(holder)
            .get_result::<Term>(&mut conn)?
            .term;
        let pid = diesel::sql_query("SELECT pg_backend_pid() AS pid")
            .get_result::<Pid>(&mut conn)?
            .pid;
        Ok(Some(LeaderGuard {
            conn,
            lock_id,
            term,
            pid,
            released: false,
        }))
    }

    /// The lock this guard holds.
    pub fn lock_id(&self) -> i64 {
        self.lock_id
    }

    /// This leadership's fencing term: pass it to [`check_term`] with every write.
    pub fn term(&self) -> i64 {
        self.term
    }

    /// The server process id of the guard's session (as in `pg_locks.pid`).
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// Whether this guard's own session still holds the lock: `false` once its backend was
    /// terminated or its connection broke.
    pub fn still_leader(&mut self) -> bool {
        holds_lock(&mut self.conn, self.lock_id).unwrap_or(false)
    }

    /// Releases the lock and closes the connection now, reporting a failed release (the
    /// connection is closed either way, which ends the lock).
    pub fn release(mut self) -> Result<bool> {
        // Drop closes the connection without releasing again.
        self.released = true;
        release_leader_lock(&mut self.conn, self.lock_id)
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if !self.released {
            let _ = release_leader_lock(&mut self.conn, self.lock_id);
        }
        // `conn` is dropped next: the session ends, and any hold left with it.
    }
}

/// Runs `work` only while leading `lock_id`: `Ok(Some(result))` when it ran,
/// `Ok(None)` when another process leads. The work's own error comes back unchanged; the
/// lock is released when the work returns or panics.
///
/// # Errors
/// The work's error, or an acquisition error converted into `E`.
pub fn with_leader_lock<T, E>(
    database_url: &str,
    lock_id: i64,
    holder: &str,
    work: impl FnOnce(&mut LeaderGuard) -> std::result::Result<T, E>,
) -> std::result::Result<Option<T>, E>
where
    E: From<Error>,
{
    match LeaderGuard::acquire(database_url, lock_id, holder, DEFAULT_TIMEOUT)? {
        Some(mut guard) => work(&mut guard).map(Some),
        None => Ok(None),
    }
}

/// [`with_leader_lock`] on [`LOCK_CANARY_RUNNER`].
pub fn with_canary_lock<T, E: From<Error>>(
    database_url: &str,
    holder: &str,
    work: impl FnOnce(&mut LeaderGuard) -> std::result::Result<T, E>,
) -> std::result::Result<Option<T>, E> {
    with_leader_lock(database_url, LOCK_CANARY_RUNNER, holder, work)
}

/// [`with_leader_lock`] on [`LOCK_ALERT_WORKER`].
pub fn with_alert_worker_lock<T, E: From<Error>>(
    database_url: &str,
    holder: &str,
    work: impl FnOnce(&mut LeaderGuard) -> std::result::Result<T, E>,
) -> std::result::Result<Option<T>, E> {
    with_leader_lock(database_url, LOCK_ALERT_WORKER, holder, work)
}

/// [`with_leader_lock`] on [`LOCK_PROVENANCE_ARCHIVER`].
pub fn with_archiver_lock<T, E: From<Error>>(
    database_url: &str,
    holder: &str,
    work: impl FnOnce(&mut LeaderGuard) -> std::result::Result<T, E>,
) -> std::result::Result<Option<T>, E> {
    with_leader_lock(database_url, LOCK_PROVENANCE_ARCHIVER, holder, work)
}

/// One lock as `costdb leader status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, QueryableByName)]
pub struct LockStatus {
    /// The lock id.
    #[diesel(sql_type = BigInt)]
    pub lock_id: i64,
    /// Server process id of the session holding it, if one does.
    #[diesel(sql_type = Nullable<Int4>)]
    pub holder_pid: Option<i32>,
    /// The latest term, if the lock was ever taken through [`LeaderGuard`].
    #[diesel(sql_type = Nullable<BigInt>)]
    pub term: Option<i64>,
    /// Who took the latest term.
    #[diesel(sql_type = Nullable<Text>)]
    pub holder: Option<String>,
    /// When the latest term began.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub since: Option<DateTime<Utc>>,
}

/// Holder and latest term of each of `lock_ids` in this database, in the order given.
pub fn lock_status(conn: &mut PgConnection, lock_ids: &[i64]) -> Result<Vec<LockStatus>> {
    Ok(diesel::sql_query(
        "SELECT k.lock_id, l.pid AS holder_pid, t.term, t.holder, t.acquired_at AS since \
         FROM unnest($1::bigint[]) WITH ORDINALITY AS k(lock_id, n) \
         LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
              AND l.classid = ((k.lock_id >> 32) & 4294967295)::oid \
              AND l.objid = (k.lock_id & 4294967295)::oid \
         LEFT JOIN leader_terms t ON t.lock_id = k.lock_id \
         ORDER BY k.n",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(lock_ids)
    .load(conn)?)
}
