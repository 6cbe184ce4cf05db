//! Connections, the pool, UTC sessions, migrations and the transaction guard.

use std::time::Duration;

use diesel::connection::{Connection, SimpleConnection, TransactionManager};
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

fn database_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(Error::invalid(
            "name",
            "a database name here is 1 to 63 ASCII letters, digits and underscores",
        ));
    }
    Ok(())
}

/// Creates the database `name` on the server at `admin_url` and returns its URL.
///
/// # Errors
/// [`Error::InvalidInput`] for a name that is not 1 to 63 ASCII letters, digits and
/// underscores, or an `admin_url` that is not a URL; [`Error::Database`] when it exists.
pub fn create_database(admin_url: &str, name: &str) -> Result<String> {
    database_name(name)?;
    let url = url_with_database(admin_url, name)?;
    connect(admin_url)?.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
    Ok(url)
}

/// Drops the database `name` on the server at `admin_url`, ending its sessions first;
/// a database that does not exist is not an error.
pub fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    database_name(name)?;
    connect(admin_url)?
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
    Ok(())
}

/// A database of its own that this process created on a server, dropped when the value
/// is dropped unless [`ScratchDatabase::keep`] was called. The demo and the benchmarks use
/// one so they never write into an existing database.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
    keep: bool,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<UTC time>_<random>` on the server at `admin_url`.
    pub fn create(admin_url: &str, prefix: &str) -> Result<Self> {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let name = format!(
            "{prefix}_{}_{}",
            chrono::Utc::now().format("%Y%m%d_%H%M%S"),
            &random[..6]
        );
        let url = create_database(admin_url, &name)?;
        Ok(ScratchDatabase {
            admin_url: admin_url.into(),
            name,
            url,
            keep: false,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Keeps the database after this value is dropped; returns its URL.
    pub fn keep(mut self) -> String {
        self.keep = true;
        std::mem::take(&mut self.url)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if !self.keep {
            let _ = drop_database(&self.admin_url, &self.name);
        }
    }
}

/// The same server as `url`, with its database replaced by `database`.
///
/// `url` is a `postgres://` or `postgresql://` URL (RFC 3986); user, password, host, port
/// and query string are kept, and the database name is percent-encoded.
///
/// # Errors
/// [`Error::InvalidInput`] for anything else, such as a key/value string
/// (`host=… dbname=…`), whose database cannot be replaced this way.
pub fn url_with_database(url: &str, database: &str) -> Result<String> {
    let not_a_url = || {
        Error::invalid(
            "url",
            "expected a postgres://user@host:port/database URL (a key/value connection \
             string cannot be rewritten)",
        )
    };
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
        })
        .ok_or_else(not_a_url)?;
    // RFC 3986: the authority ends at the first '/', '?' or '#'; the path at '?' or '#'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if authority.contains(char::is_whitespace) {
        return Err(not_a_url());
    }
    let suffix_start = after.find(['?', '#']).unwrap_or(after.len());
    let suffix = &after[suffix_start..];
    let mut encoded = String::with_capacity(database.len());
    for b in database.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(format!("{scheme}://{authority}/{encoded}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::url_with_database;

    #[test]
    fn replaces_or_adds_the_database() {
        let cases = [
            ("postgres://u@h:5432/test", "x", "postgres://u@h:5432/x"),
            ("postgres://u@h", "x", "postgres://u@h/x"),
            (
                "postgres://u@h/db?sslmode=disable",
                "x",
                "postgres://u@h/x?sslmode=disable",
            ),
            (
                "postgresql://u:p%2Fw@h?a=b/c",
                "x",
                "postgresql://u:p%2Fw@h/x?a=b/c",
            ),
            (
                "postgres://[::1]:5/db#frag",
                "a b",
                "postgres://[::1]:5/a%20b#frag",
            ),
            ("POSTGRES://h/db", "x", "POSTGRES://h/x"),
        ];
        for (url, db, want) in cases {
            assert_eq!(url_with_database(url, db).unwrap(), want, "{url}");
        }
    }

    #[test]
    fn a_key_value_string_is_refused() {
        for url in [
            "host=h dbname=postgres",
            "mysql://h/db",
            "",
            "postgres://h h/x",
        ] {
            assert!(url_with_database(url, "x").is_err(), "{url}");
        }
    }
}
