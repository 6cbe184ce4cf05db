//! Connections, the pool, UTC sessions, migrations and the transaction guard.

use std::fmt;

use diesel::connection::{Connection, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{Error, Result};

/// The schema steps in `migrations/`, compiled into the library and the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// A pool of UTC sessions.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;
/// A connection lent by [`PgPool`].
pub type PooledConn = PooledConnection<ConnectionManager<PgConnection>>;

const UTC_SESSION: &str = "SET TIME ZONE 'UTC'";

/// Opens one connection whose session runs with `TimeZone = UTC`.
pub fn connect(database_url: &str) -> Result<PgConnection> {
    let mut conn = PgConnection::establish(database_url)?;
    conn.batch_execute(UTC_SESSION)?;
    Ok(conn)
}

#[derive(Debug, Clone, Copy)]
struct UtcSession;

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for UtcSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(UTC_SESSION)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Builds an r2d2 pool of at most `max_size` connections, each running with `TimeZone = UTC`.
///
/// Fails when the first connection cannot be opened, so a wrong URL shows up here.
pub fn pool(database_url: &str, max_size: u32) -> Result<PgPool> {
    if max_size == 0 {
        return Err(Error::invalid(
            "max_size",
            "a pool needs at least one connection",
        ));
    }
    Pool::builder()
        .max_size(max_size)
        .connection_customizer(Box::new(UtcSession))
        .build(ConnectionManager::new(database_url))
        .map_err(|e| Error::Pool(e.to_string()))
}

/// Where the schema stands: migration names, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    /// Steps already applied to the database.
    pub applied: Vec<String>,
    /// Steps the binary knows that the database lacks.
    pub pending: Vec<String>,
}

fn migration_error(e: impl fmt::Display) -> Error {
    Error::Migration(e.to_string())
}

/// Applies every pending migration; returns the names applied, oldest first.
pub fn run_migrations(conn: &mut PgConnection) -> Result<Vec<String>> {
    let pending = migration_status(conn)?.pending;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(migration_error)?;
    Ok(pending)
}

/// Lists applied and pending migrations by name.
pub fn migration_status(conn: &mut PgConnection) -> Result<MigrationStatus> {
    use diesel::migration::MigrationSource;
    let applied: Vec<String> = conn
        .applied_migrations()
        .map_err(migration_error)?
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    let mut all = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(migration_error)?
        .into_iter()
        .map(|m| (m.name().version().to_string(), m.name().to_string()))
        .collect::<Vec<_>>();
    all.sort();
    let (done, pending): (Vec<_>, Vec<_>) = all.into_iter().partition(|(v, _)| applied.contains(v));
    Ok(MigrationStatus {
        applied: done.into_iter().map(|(_, n)| n).collect(),
        pending: pending.into_iter().map(|(_, n)| n).collect(),
    })
}

/// Undoes the newest applied migration; returns its name, or `None` when nothing is applied.
pub fn revert_last_migration(conn: &mut PgConnection) -> Result<Option<String>> {
    let Some(last) = migration_status(conn)?.applied.pop() else {
        return Ok(None);
    };
    conn.revert_last_migration(MIGRATIONS)
        .map_err(migration_error)?;
    Ok(Some(last))
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

/// The same server as `url`, with its database replaced by `database`.
///
/// Works on `postgres://user@host:port/db?params` URLs; the query string is kept.
pub fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn replaces_or_adds_the_database() {
        assert_eq!(
            url_with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(url_with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            url_with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
