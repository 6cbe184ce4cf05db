//! The test server of a test binary: the PostgreSQL server in `DATABASE_URL`, else a
//! throwaway embedded cluster, started once per process; and fresh databases on it, so
//! test binaries run in parallel without seeing each other.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::{create_database, drop_database, EmbeddedPostgres};

/// The server of this process: its administrative URL, and the cluster if one was started.
#[derive(Debug)]
pub struct TestServer {
    _embedded: Option<EmbeddedPostgres>,
    admin_url: String,
}

static SERVER: OnceLock<TestServer> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);
/// Databases this binary created on a `DATABASE_URL` server, dropped at exit if no test
/// failed.
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());
static FAILED: AtomicBool = AtomicBool::new(false);

/// Test databases older than this, on a `DATABASE_URL` server, are left-overs of a failed
/// run (kept for inspection) and are swept when a new run starts.
const STALE_AFTER_SECS: u64 = 6 * 3600;

/// The server of this process, started on first use: `DATABASE_URL`'s when it is set
/// (databases this process creates there are dropped at exit unless a test failed, and
/// left-overs older than six hours are swept), else a throwaway cluster.
///
/// # Panics
/// When no server can be had: the message says what to install or set.
pub fn server() -> &'static TestServer {
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
            TestServer {
                _embedded: None,
                admin_url: url,
            }
        }
        _ => {
            let pg = EmbeddedPostgres::start().unwrap_or_else(|e| panic!("{e}"));
            TestServer {
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
        let _ = drop_database(&server.admin_url, &name);
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
    let Ok(mut conn) = costdb::db::connect(admin_url) else {
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
            let _ = drop_database(admin_url, &datname);
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

/// Creates a new, empty database on [`server`] and returns its URL. On a `DATABASE_URL`
/// server it is dropped when the process exits, unless a test failed.
///
/// # Panics
/// When the database cannot be created.
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
    let url = create_database(admin_url(), &name).expect("create test database");
    CREATED.lock().unwrap_or_else(|e| e.into_inner()).push(name);
    url
}
