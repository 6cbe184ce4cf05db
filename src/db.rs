//! Connections, the pool, UTC sessions, migrations and the transaction guard.

use std::time::Duration;

use diesel::connection::{Connection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{BoxError, Error, Result};

/// The schema steps in `migrations/`, compiled into the library and the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// A pool of UTC sessions.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;
/// A connection lent by [`PgPool`].
pub type PooledConn = PooledConnection<ConnectionManager<PgConnection>>;

/// Sets the session's `TimeZone` to UTC.
fn utc_session(conn: &mut PgConnection) -> diesel::QueryResult<()> {
    use diesel::RunQueryDsl;
    diesel::select(crate::sql_fns::set_config("TimeZone", "UTC", false)).execute(conn)?;
    Ok(())
}

/// Opens one connection whose session runs with `TimeZone = UTC`.
pub fn connect(database_url: &str) -> Result<PgConnection> {
    let mut conn = PgConnection::establish(database_url)?;
    utc_session(&mut conn)?;
    Ok(conn)
}

#[derive(Debug, Clone, Copy)]
struct UtcSession;

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for UtcSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        utc_session(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Builds an r2d2 pool of at most `max_size` connections, each running with `TimeZone = UTC`.
///
/// `connection_timeout` bounds how long building the pool, and later each `get`, waits for
/// a connection: an unreachable server is reported after it, as [`Error::Pool`].
pub fn pool(database_url: &str, max_size: u32, connection_timeout: Duration) -> Result<PgPool> {
    if max_size == 0 {
        return Err(Error::invalid(
            "max_size",
            "a pool needs at least one connection",
        ));
    }
    if connection_timeout.is_zero() {
        return Err(Error::invalid("connection_timeout", "must be positive"));
    }
    Ok(Pool::builder()
        .max_size(max_size)
        .connection_timeout(connection_timeout)
        .connection_customizer(Box::new(UtcSession))
        .build(ConnectionManager::new(database_url))?)
}

/// Where the schema stands: migration names, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    /// Steps already applied to the database.
    pub applied: Vec<String>,
    /// Steps this build knows that the database lacks.
    pub pending: Vec<String>,
    /// Versions the database has applied that this build does not know (a newer costdb,
    /// or a migration removed since): nothing is applied or reverted while there are any.
    pub unknown: Vec<String>,
}

fn harness_error(what: &str) -> impl FnOnce(BoxError) -> Error + '_ {
    move |e| Error::migration(what, Some(e))
}

/// Applies every pending migration; returns the names applied, oldest first.
///
/// # Errors
/// [`Error::Migration`] when a step fails (it is rolled back; the steps before it stay) or
/// when the database has applied versions this build does not know.
pub fn run_migrations(conn: &mut PgConnection) -> Result<Vec<String>> {
    let status = migration_status(conn)?;
    refuse_unknown(&status)?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(harness_error("cannot apply the pending steps"))?;
    Ok(status.pending)
}

fn refuse_unknown(status: &MigrationStatus) -> Result<()> {
    if status.unknown.is_empty() {
        return Ok(());
    }
    Err(Error::migration(
        format!(
            "the database has applied versions this build does not know: {} \
             (applied by a newer costdb?)",
            status.unknown.join(", ")
        ),
        None,
    ))
}

/// Lists applied, pending and unknown migrations by name (unknown ones by version).
pub fn migration_status(conn: &mut PgConnection) -> Result<MigrationStatus> {
    use diesel::migration::MigrationSource;
    let applied: Vec<String> = conn
        .applied_migrations()
        .map_err(harness_error("cannot read the applied versions"))?
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    let mut known = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(harness_error("cannot read the embedded migrations"))?
        .into_iter()
        .map(|m| (m.name().version().to_string(), m.name().to_string()))
        .collect::<Vec<_>>();
    known.sort();
    let mut unknown: Vec<String> = applied
        .iter()
        .filter(|v| !known.iter().any(|(k, _)| k == *v))
        .cloned()
        .collect();
    unknown.sort();
    let (done, pending): (Vec<_>, Vec<_>) =
        known.into_iter().partition(|(v, _)| applied.contains(v));
    Ok(MigrationStatus {
        applied: done.into_iter().map(|(_, n)| n).collect(),
        pending: pending.into_iter().map(|(_, n)| n).collect(),
        unknown,
    })
}

/// Undoes the newest applied migration; returns its name, or `None` when nothing is applied.
///
/// # Errors
/// [`Error::Migration`] when its `down.sql` fails or the database has applied versions
/// this build does not know.
pub fn revert_last_migration(conn: &mut PgConnection) -> Result<Option<String>> {
    let mut status = migration_status(conn)?;
    refuse_unknown(&status)?;
    let Some(last) = status.applied.pop() else {
        return Ok(None);
    };
    conn.revert_last_migration(MIGRATIONS)
        .map_err(harness_error("cannot revert the newest step"))?;
    Ok(Some(last))
}

/// `EXPLAIN` of any Diesel query with its bound values, one line per plan node: to see
/// which index serves a driver's query (the drivers expose their queries for this).
pub fn explain<Q>(conn: &mut PgConnection, query: &Q) -> Result<Vec<String>>
where
    Q: diesel::query_builder::QueryFragment<diesel::pg::Pg> + diesel::query_builder::QueryId,
{
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let lines: Vec<Line> = Explain(query).load(conn)?;
    Ok(lines.into_iter().map(|l| l.line).collect())
}

/// `EXPLAIN <query>`, keeping the query's bind values.
struct Explain<'q, Q>(&'q Q);

impl<Q> diesel::query_builder::QueryId for Explain<'_, Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> diesel::query_builder::Query for Explain<'_, Q> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<Q> diesel::RunQueryDsl<PgConnection> for Explain<'_, Q> {}

impl<Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>>
    diesel::query_builder::QueryFragment<diesel::pg::Pg> for Explain<'_, Q>
{
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("EXPLAIN ");
        self.0.walk_ast(out.reborrow())
    }
}

/// Returns [`Error::NoTransaction`] unless a transaction opened through Diesel is active.
///
/// Every write method calls this first, so a write is never committed by accident in
/// autocommit mode. Open transactions with `conn.transaction(..)`,
/// `conn.build_transaction()` or `conn.begin_test_transaction()`.
pub fn require_transaction(conn: &mut PgConnection) -> Result<()> {
    let depth =
        <PgConnection as Connection>::TransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth()?;
    match depth {
        Some(_) => Ok(()),
        None => Err(Error::NoTransaction),
    }
}

/// A serialization failure or deadlock: the statement was rolled back and may succeed.
pub(crate) fn must_retry(e: &Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as DieselError};
    matches!(e, Error::Database(DieselError::DatabaseError(kind, info))
        if *kind == DatabaseErrorKind::SerializationFailure
            || info.message().contains("deadlock detected"))
}

/// The connection broke.
pub(crate) fn lost(e: &Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error as DieselError};
    matches!(
        e,
        Error::Database(DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _
        ))
    )
}

/// Whether the connection still answers.
pub(crate) fn alive(conn: &mut PgConnection) -> bool {
    use diesel::{IntoSql, RunQueryDsl};
    diesel::select(1_i32.into_sql::<diesel::sql_types::Int4>())
        .execute(conn)
        .is_ok()
}
