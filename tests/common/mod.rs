//! Shared test harness: one PostgreSQL server per test binary (the one in `DATABASE_URL`,
//! else a throwaway embedded cluster) and one fresh, migrated database per test binary, so
//! test files run in parallel without seeing each other.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use costdb::db::{self, PgPool, PooledConn};
use costdb::embedded::EmbeddedPostgres;

struct Server {
    _embedded: Option<EmbeddedPostgres>,
    admin_url: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static POOL: OnceLock<(String, PgPool)> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Databases this binary created on a `DATABASE_URL` server, dropped at exit if no test
/// failed.
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static FAILED: AtomicBool = AtomicBool::new(false);

/// Test databases older than this, on a `DATABASE_URL` server, are left-overs of a failed
/// run (kept for inspection) and are swept when a new run starts.
const STALE_AFTER_SECS: u64 = 6 * 3600;

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            sweep_stale_databases(&url);
            // A failing test panics: remember it, so its databases are kept to inspect.
            // A test that panics on purpose (and catches it) panics with `ExpectedPanic`.
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if info.payload().downcast_ref::<ExpectedPanic>().is_none() {
                    FAILED.store(true, Ordering::SeqCst);
                    default_hook(info);
                }
            }));
            // SAFETY: registers a plain `extern "C"` function with the C runtime.
            unsafe { libc::atexit(drop_created_databases) };
            Server {
                _embedded: None,
                admin_url: url,
            }
        }
        _ => {
            let pg = EmbeddedPostgres::start().unwrap_or_else(|e| panic!("{e}"));
            Server {
                admin_url: pg.url("postgres"),
                _embedded: Some(pg),
            }
        }
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

extern "C" fn drop_created_databases() {
    if FAILED.load(Ordering::SeqCst) {
        return;
    }
    let Some(server) = SERVER.get() else { return };
    let names = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    for name in names {
        let _ = db::drop_database(&server.admin_url, &name);
    }
}

/// Drops `costdb_test_<secs>_…` databases created more than [`STALE_AFTER_SECS`] ago.
fn sweep_stale_databases(admin_url: &str) {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let Ok(mut conn) = db::connect(admin_url) else {
        return;
    };
    let names: Vec<Name> = diesel::sql_query(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'costdb_test_%'",
    )
    .load(&mut conn)
    .unwrap_or_default();
    let cutoff = now_secs().saturating_sub(STALE_AFTER_SECS);
    for Name { datname } in names {
        let created = datname
            .strip_prefix("costdb_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|secs| secs < cutoff) {
            let _ = db::drop_database(admin_url, &datname);
        }
    }
}

/// The payload of a panic a test causes on purpose and catches: it does not count as a
/// failed test when deciding whether to keep the test databases.
#[derive(Debug)]
pub struct ExpectedPanic;

/// URL of the server's administrative database.
pub fn admin_url() -> &'static str {
    &server().admin_url
}

/// Creates a new, empty database and returns its URL. On a `DATABASE_URL` server it is
/// dropped when the test binary exits, unless a test failed.
pub fn fresh_database() -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let stem: String = exe
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("t")
        .split('-')
        .next()
        .unwrap_or("t")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(20)
        .collect();
    let name = format!(
        "costdb_test_{}_{}_{}_{stem}",
        now_secs(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let url = db::create_database(admin_url(), &name).expect("create test database");
    CREATED.lock().unwrap_or_else(|e| e.into_inner()).push(name);
    url
}

/// The migrated database of this test binary, and a pool on it.
pub fn pool() -> &'static PgPool {
    &POOL
        .get_or_init(|| {
            let url = fresh_database();
            let mut conn = db::connect(&url).expect("connect");
            db::run_migrations(&mut conn).expect("migrations");
            let pool = db::pool(&url, 12, std::time::Duration::from_secs(30)).expect("pool");
            (url, pool)
        })
        .1
}

/// URL of this binary's migrated database.
pub fn database_url() -> &'static str {
    pool();
    &POOL.get().expect("initialised").0
}

/// A connection to this binary's migrated database.
pub fn conn() -> PooledConn {
    pool().get().expect("pooled connection")
}

/// A connection of its own, inside a transaction that is never committed.
///
/// Not from the pool: Diesel hands test-transaction connections back to a pool as
/// healthy, and the next borrower would find itself inside the transaction.
pub fn test_conn() -> diesel::PgConnection {
    use diesel::Connection;
    let mut c = db::connect(database_url()).expect("connect");
    c.begin_test_transaction().expect("test transaction");
    c
}

/// A tenant id no other test uses, so committed rows never collide (34 characters: fits
/// every tenant column, the narrowest being `worker_runs.tenant_id`, varchar(36)).
pub fn tenant() -> String {
    format!("t-{}", uuid::Uuid::new_v4().simple())
}

/// The current transaction's `now()`: what server-side stamps in it are set to.
pub fn tx_now(conn: &mut diesel::PgConnection) -> chrono::DateTime<chrono::Utc> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Now {
        #[diesel(sql_type = diesel::sql_types::Timestamptz)]
        t: chrono::DateTime<chrono::Utc>,
    }
    diesel::sql_query("SELECT now() AS t")
        .get_result::<Now>(conn)
        .expect("now()")
        .t
}

/// Asserts `r` is `Error::InvalidInput` naming `field`.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(r: costdb::Result<T>, field: &str) {
    match r {
        Err(costdb::Error::InvalidInput { field: f, .. }) if f == field => {}
        other => panic!("expected InvalidInput for {field}, got {other:?}"),
    }
}

/// Rows of `table` that belong to `tenant`.
pub fn count_for_tenant(conn: &mut diesel::PgConnection, table: &str, tenant: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    // `table` is a test constant, never input.
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM {table} WHERE tenant_id = $1"
    ))
    .bind::<diesel::sql_types::Text, _>(tenant)
    .get_result::<Count>(conn)
    .expect("count")
    .n
}
