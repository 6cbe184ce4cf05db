//! Shared test harness: the test server and fresh databases of `costdb-testkit`, one
//! migrated database per test binary with a pool on it, and assertions.
#![allow(dead_code)]

use std::sync::OnceLock;

use costdb::db::{self, PgPool, PooledConn};
#[allow(unused_imports)]
pub use costdb_testkit::{admin_url, fresh_database, migrated_database, ExpectedPanic};

static POOL: OnceLock<(String, PgPool)> = OnceLock::new();

/// The migrated database of this test binary, and a pool on it.
pub fn pool() -> &'static PgPool {
    &POOL
        .get_or_init(|| {
            let url = migrated_database();
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
pub fn tenant() -> costdb::types::TenantId {
    tid(&format!("t-{}", uuid::Uuid::new_v4().simple()))
}

/// A tenant id that fits.
#[allow(dead_code)]
pub fn tid(id: &str) -> costdb::types::TenantId {
    costdb::types::TenantId::new(id).unwrap()
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

/// Reverts the migrations from the newest back to the first whose name contains `name`,
/// that one included: the schema as it was before it.
#[allow(dead_code)]
pub fn revert_through(conn: &mut diesel::PgConnection, name: &str) {
    loop {
        let reverted = costdb::db::revert_last_migration(conn)
            .unwrap()
            .unwrap_or_else(|| panic!("no migration named {name:?} to revert"));
        if reverted.contains(name) {
            return;
        }
    }
}

/// Commits a hard tenant-wide budget of `daily_cents` a day for `tenant` on `conn`'s
/// database; returns its id.
pub fn hard_daily_budget(
    conn: &mut diesel::PgConnection,
    tenant: &costdb::types::TenantId,
    daily_cents: i32,
) -> String {
    use diesel::Connection;
    conn.transaction(|c| {
        costdb::drivers::CostWriteDriver::new(c).upsert_budget(
            tenant,
            &costdb::types::BudgetScope::Tenant,
            &costdb::drivers::BudgetLimits {
                daily_limit_cents: Some(daily_cents),
                monthly_limit_cents: None,
                warn_threshold_pct: 80,
                hard_limit_enabled: true,
            },
        )
    })
    .expect("a tenant-wide budget")
    .id
}

/// The server process id of `conn`'s session.
pub fn backend_pid(conn: &mut diesel::PgConnection) -> i32 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Int4)]
        pid: i32,
    }
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Pid>(conn)
        .expect("backend pid")
        .pid
}
