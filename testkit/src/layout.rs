//! The two layouts the test suite runs in: the migrated schema as it is, and the same
//! schema with every distributed table (see `costdb::placement`) hash-partitioned by
//! `tenant_id`, where PostgreSQL enforces Citus's rule that every unique key includes
//! the distribution column.

use diesel::connection::SimpleConnection;

use crate::{fresh_database, Result};

/// How a test database's tables are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The migrated schema as it is.
    Plain,
    /// Every distributed table hash-partitioned by `tenant_id` into [`PARTITIONS`].
    Partitioned,
}

/// How many hash partitions each distributed table gets in [`Layout::Partitioned`].
pub const PARTITIONS: u32 = 8;

/// The layout of this run's test databases: `COSTDB_TEST_LAYOUT=partitioned` or plain.
///
/// # Panics
/// When `COSTDB_TEST_LAYOUT` holds anything else.
pub fn layout() -> Layout {
    match std::env::var("COSTDB_TEST_LAYOUT").as_deref() {
        Err(_) | Ok("" | "plain") => Layout::Plain,
        Ok("partitioned") => Layout::Partitioned,
        Ok(other) => panic!("COSTDB_TEST_LAYOUT is `plain` or `partitioned`, not {other:?}"),
    }
}

/// Rebuilds the distributed tables of the migrated database at `url` (but `cost_records`,
/// which the migrations partition by day) as tables hash-partitioned by `tenant_id` into `partitions` partitions (`<table>_p0`, …), keeping
/// rows, columns, defaults, checks, keys, indexes, triggers and foreign keys, in one
/// transaction.
///
/// # Errors
/// [`crate::Error::Costdb`] when the server refuses, e.g. a unique key of a distributed
/// table that does not include `tenant_id`; nothing changes then.
pub fn partition_by_tenant(url: &str, partitions: u32) -> Result<()> {
    let tables: Vec<&str> = costdb::placement::distributed_tables().collect();
    let mut conn = costdb::db::connect(url)?;
    conn.batch_execute(&format!(
        "BEGIN;\n{}\n;SELECT pg_temp.costdb_partition_by_tenant('{{{}}}', {partitions});\nCOMMIT;",
        include_str!("partition_by_tenant.sql"),
        tables.join(",")
    ))?;
    Ok(())
}

/// Migrates the database at `url` and lays it out as [`layout`] says.
///
/// # Errors
/// When the migrations or the layout fail.
pub fn migrate_and_lay_out(url: &str) -> Result<()> {
    costdb::db::run_migrations(&mut costdb::db::connect(url)?)?;
    if layout() == Layout::Partitioned {
        partition_by_tenant(url, PARTITIONS)?;
    }
    Ok(())
}

/// A fresh database on the test server, migrated and laid out as [`layout`] says.
///
/// # Panics
/// When the database cannot be created, migrated or laid out.
pub fn migrated_database() -> String {
    let url = fresh_database();
    migrate_and_lay_out(&url).expect("a migrated test database in this run's layout");
    url
}
