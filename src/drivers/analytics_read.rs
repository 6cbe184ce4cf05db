//! `AnalyticsReadDriver`: tenant-scoped, UTC-bucketed usage and cost aggregates.

use diesel::PgConnection;

/// Read-only analytics over cost records, runs and traces.
pub struct AnalyticsReadDriver<'c> {
    #[allow(dead_code)]
    conn: &'c mut PgConnection,
}
