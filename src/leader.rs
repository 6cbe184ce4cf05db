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
use diesel::dsl::{exists, now};
use diesel::prelude::*;
use diesel::upsert::excluded;
use serde::Serialize;

use crate::connect::connect_within;
use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::sql_fns::{
    current_database, pg_advisory_unlock, pg_backend_pid, pg_database, pg_locks,
    pg_try_advisory_lock, pg_try_advisory_xact_lock, set_config,
};
use crate::types::limits;
use crate::types::locks::{LOCK_ALERT_WORKER, LOCK_CANARY_RUNNER, LOCK_PROVENANCE_ARCHIVER};

/// How long [`LeaderGuard::acquire`] waits by default, as the original did.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the session-level lock `lock_id` on `conn` if no other session holds it; never
/// waits. Taking it twice on one session needs two releases.
///
/// The lock outlives transactions and ends with the session: on a pooled connection it
/// stays behind when the connection goes back to the pool. Hold it on a dedicated
/// connection ([`LeaderGuard`]) or release it before giving the connection back.
pub fn try_acquire_leader_lock(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    Ok(diesel::select(pg_try_advisory_lock(lock_id)).get_result(conn)?)
}

/// Releases one hold of the session-level lock `lock_id`; `false` when this session did
/// not hold it.
pub fn release_leader_lock(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    Ok(diesel::select(pg_advisory_unlock(lock_id)).get_result(conn)?)
}

/// The two halves of a single-key advisory lock as `pg_locks` shows them: `classid` is
/// the high 32 bits, `objid` the low 32 bits (and `objsubid` is 1).
fn halves(lock_id: i64) -> (u32, u32) {
    ((lock_id as u64 >> 32) as u32, lock_id as u32)
}

/// The granted single-key advisory locks of this database (`objsubid` 1).
#[diesel::dsl::auto_type]
fn advisory_locks_here() -> _ {
    pg_locks::table
        .filter(pg_locks::locktype.eq::<&'static str>("advisory"))
        .filter(pg_locks::granted)
        .filter(pg_locks::objsubid.eq::<i16>(1))
        .filter(
            pg_locks::database.eq(pg_database::table
                .filter(pg_database::datname.eq(current_database()))
                .select(pg_database::oid)
                .single_value()),
        )
}

/// Whether a session of this database (this very session, with `own_session`) holds the
/// single-key advisory lock `lock_id`: its exact `pg_locks` row.
fn held(conn: &mut PgConnection, lock_id: i64, own_session: bool) -> Result<bool> {
    let (high, low) = halves(lock_id);
    let rows = advisory_locks_here()
        .filter(pg_locks::classid.eq(high))
        .filter(pg_locks::objid.eq(low));
    Ok(if own_session {
        let mine = rows.filter(pg_locks::pid.eq(pg_backend_pid().nullable()));
        diesel::select(exists(mine)).get_result(conn)?
    } else {
        diesel::select(exists(rows)).get_result(conn)?
    })
}

/// Whether any session of this database holds the lock `lock_id` (informational: the
/// answer may change at once).
pub fn is_lock_held(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    held(conn, lock_id, false)
}

/// Whether this very session holds the lock `lock_id`.
pub fn holds_lock(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    held(conn, lock_id, true)
}

/// Takes the lock `lock_id` until the caller's transaction ends (commit or rollback); never
/// waits. Safe on pooled connections.
///
/// # Errors
/// [`Error::NoTransaction`] outside a transaction, where the lock would end at once.
pub fn try_acquire_xact_lock(conn: &mut PgConnection, lock_id: i64) -> Result<bool> {
    require_transaction(conn)?;
    Ok(diesel::select(pg_try_advisory_xact_lock(lock_id)).get_result(conn)?)
}

/// Starts a new term of `lock_id` for `holder` and returns it: one more than the last.
/// Call it only while holding the lock.
fn next_term(conn: &mut PgConnection, lock_id: i64, holder: &str) -> Result<i64> {
    use crate::schema::leader_terms::dsl as t;
    Ok(diesel::insert_into(t::leader_terms)
        .values((
            t::lock_id.eq(lock_id),
            t::term.eq(1i64),
            t::holder.eq(holder),
        ))
        .on_conflict(t::lock_id)
        .do_update()
        .set((
            t::term.eq(t::term + 1i64),
            t::holder.eq(excluded(t::holder)),
            t::acquired_at.eq(now),
        ))
        .returning(t::term)
        .get_result(conn)?)
}

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
    use crate::schema::leader_terms::dsl as t;
    let current = t::leader_terms
        .filter(t::lock_id.eq(lock_id))
        .select(t::term)
        .for_share()
        .get_result::<i64>(conn)
        .optional()?
        .unwrap_or(0);
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
        let millis = left.as_millis().max(1).to_string();
        diesel::select(set_config("statement_timeout", millis, false)).execute(&mut conn)?;
        if !try_acquire_leader_lock(&mut conn, lock_id)? {
            return Ok(None);
        }
        // From here on the lock is held: a failure drops `conn`, which ends the session
        // and with it the lock.
        let term = next_term(&mut conn, lock_id, holder)?;
        let pid = diesel::select(pg_backend_pid()).get_result(&mut conn)?;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockStatus {
    /// The lock id.
    pub lock_id: i64,
    /// Server process id of the session holding it, if one does.
    pub holder_pid: Option<i32>,
    /// The latest term, if the lock was ever taken through [`LeaderGuard`].
    pub term: Option<i64>,
    /// Who took the latest term.
    pub holder: Option<String>,
    /// When the latest term began.
    pub since: Option<DateTime<Utc>>,
}

/// Holder and latest term of each of `lock_ids` in this database, in the order given.
pub fn lock_status(conn: &mut PgConnection, lock_ids: &[i64]) -> Result<Vec<LockStatus>> {
    use crate::schema::leader_terms::dsl as t;
    let (highs, lows): (Vec<u32>, Vec<u32>) = lock_ids.iter().map(|&id| halves(id)).unzip();
    let held: Vec<(Option<u32>, Option<u32>, Option<i32>)> = advisory_locks_here()
        .filter(pg_locks::classid.eq_any(&highs))
        .filter(pg_locks::objid.eq_any(&lows))
        .select((pg_locks::classid, pg_locks::objid, pg_locks::pid))
        .load(conn)?;
    let terms: Vec<(i64, i64, String, DateTime<Utc>)> = t::leader_terms
        .filter(t::lock_id.eq_any(lock_ids))
        .select((t::lock_id, t::term, t::holder, t::acquired_at))
        .load(conn)?;
    Ok(lock_ids
        .iter()
        .map(|&lock_id| {
            let (high, low) = halves(lock_id);
            let holder_pid = held
                .iter()
                .find(|(c, o, _)| (*c, *o) == (Some(high), Some(low)))
                .and_then(|(_, _, pid)| *pid);
            let term = terms.iter().find(|(id, ..)| *id == lock_id);
            LockStatus {
                lock_id,
                holder_pid,
                term: term.map(|t| t.1),
                holder: term.map(|t| t.2.clone()),
                since: term.map(|t| t.3),
            }
        })
        .collect())
}
