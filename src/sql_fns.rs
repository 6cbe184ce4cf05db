//! The SQL functions and catalog views the queries use, declared for Diesel's DSL.
//!
//! `schema.rs` holds the migrated tables; the two system views here are the part of
//! PostgreSQL's catalog that leader election reads.
#![allow(missing_docs)]

use diesel::sql_types::{
    BigInt, Bool, Date, Double, Nullable, Numeric, Text, Timestamp, Timestamptz,
};

diesel::define_sql_function! {
    /// Takes a session-level advisory lock if it is free.
    fn pg_try_advisory_lock(key: BigInt) -> Bool;
}
diesel::define_sql_function! {
    /// Releases one hold of a session-level advisory lock.
    fn pg_advisory_unlock(key: BigInt) -> Bool;
}
diesel::define_sql_function! {
    /// Takes a transaction-level advisory lock if it is free.
    fn pg_try_advisory_xact_lock(key: BigInt) -> Bool;
}
diesel::define_sql_function! {
    /// Takes a transaction-level advisory lock, waiting for it.
    fn pg_advisory_xact_lock(key: BigInt);
}
diesel::define_sql_function! {
    /// The server process id of this session.
    fn pg_backend_pid() -> Int4;
}
diesel::define_sql_function! {
    /// The start of the current transaction (what `now()` gives inside it).
    fn transaction_timestamp() -> Timestamptz;
}
diesel::define_sql_function! {
    /// The current database's name.
    fn current_database() -> Text;
}
diesel::define_sql_function! {
    /// Sets a run-time parameter; `is_local` limits it to the transaction.
    fn set_config(name: Text, value: Text, is_local: Bool) -> Text;
}
diesel::define_sql_function! {
    /// The sample standard deviation of a column (an aggregate).
    #[aggregate]
    fn stddev_samp(x: Nullable<Double>) -> Nullable<Double>;
}
diesel::define_sql_function! {
    /// `t` as local time in `zone` (`t AT TIME ZONE zone`).
    fn timezone(zone: Text, t: Timestamptz) -> Timestamp;
}
diesel::define_sql_function! {
    /// The day of a local time.
    #[sql_name = "date"]
    fn utc_date(t: Timestamp) -> Date;
}
diesel::define_sql_function! {
    /// 1 for true, 0 for false.
    #[sql_name = "int4"]
    fn bool_int4(b: Bool) -> Int4;
}
diesel::define_sql_function! {
    /// An exact decimal as a bigint (rounded; an error beyond its range): a `sum` of
    /// bigints is a decimal.
    #[sql_name = "int8"]
    fn numeric_int8(x: Nullable<Numeric>) -> Nullable<BigInt>;
}
diesel::define_sql_function! {
    /// An exact decimal as a double.
    #[sql_name = "float8"]
    fn numeric_float8(x: Numeric) -> Double;
}
diesel::define_sql_function! {
    /// The first of two texts that is not NULL.
    #[sql_name = "coalesce"]
    fn coalesce_text(first: Nullable<Text>, second: Nullable<Text>) -> Nullable<Text>;
}
diesel::define_sql_function! {
    /// The first of two instants that is not NULL.
    #[sql_name = "coalesce"]
    fn coalesce_instant(first: Nullable<Timestamptz>, second: Timestamptz) -> Timestamptz;
}
diesel::define_sql_function! {
    /// Recomputes the rollups of a tenant's records (every tenant's when NULL) between two
    /// UTC midnights (unbounded when NULL), under a `SHARE` lock on `cost_records`;
    /// returns the rows each rollup gained (migration `rollup_upkeep`).
    fn costdb_rebuild_rollups(
        tenant: Nullable<Text>,
        from_at: Nullable<Timestamptz>,
        to_at: Nullable<Timestamptz>,
    ) -> Record<(BigInt, BigInt)>;
}
diesel::define_sql_function! {
    /// Creates the partitions of cost records of the UTC days `first..=last` and of the
    /// days with rows in the default partition (moving them) where none covers them;
    /// returns those created, one row each (migration `time_partitions`).
    fn costdb_create_cost_partitions(first: Date, last: Date) -> Text;
}
diesel::define_sql_function! {
    /// Detaches a bounded partition of cost records and moves the retention boundary to
    /// its end; returns the end (migration `time_partitions`).
    fn costdb_detach_cost_partition(part: Text) -> Timestamptz;
}
diesel::define_sql_function! {
    /// The partitions of cost records detached and not dropped yet (migration
    /// `time_partitions`).
    fn costdb_detached_cost_partitions() -> Text;
}
diesel::define_sql_function! {
    /// Deletes the request keys of a detached partition's records and drops it; returns
    /// the keys deleted (migration `time_partitions`).
    fn costdb_drop_detached_cost_partition(part: Text) -> BigInt;
}
diesel::define_sql_function! {
    /// Folds the slots of the rollup rows of the UTC days before `before` into slot 0;
    /// returns the rows removed and the rows they were folded into (migration
    /// `rollup_upkeep`).
    fn costdb_compact_rollups(before: Date) -> Record<(BigInt, BigInt)>;
}

diesel::define_sql_function! {
    /// Moves every delta (`cost_rollup_deltas`, `cost_rollup_delta_batches`) into the
    /// rollups; returns how many records (migrations `rollup_deltas`, `delta_batches`).
    fn costdb_fold_rollup_deltas() -> BigInt;
}

diesel::table! {
    /// Locks held or awaited by active sessions (read-only).
    pg_catalog.pg_locks (pid) {
        locktype -> Text,
        database -> Nullable<Oid>,
        classid -> Nullable<Oid>,
        objid -> Nullable<Oid>,
        objsubid -> Nullable<Int2>,
        pid -> Nullable<Int4>,
        granted -> Bool,
    }
}

diesel::table! {
    /// The databases of the cluster (read-only).
    pg_catalog.pg_database (oid) {
        oid -> Oid,
        datname -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(pg_locks, pg_database);
