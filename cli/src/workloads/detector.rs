//! The anomaly detector over every tenant at once, against one query that reads the same
//! rows.

use std::time::{Duration, Instant};

use chrono::{NaiveTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz};

use super::{Ctx, Scale, Target, Workload};
use costdb::db;
use costdb::detector::AnomalyDetector;
use costdb::Error;
use costdb_testkit::{url_with_database, Result, ScratchDatabase};

/// 50 calls a day for 30 days for each tenant `det-tenant-<n>`, 5 users, 6 features; every
/// tenth tenant's user `u1` spends ten times as much on the last two days (a user spike,
/// and with it a tenant and a feature spike).
const LOAD: &str = "\
INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, model, input_tokens, \
    output_tokens, cost_cents, is_retry, created_at) \
SELECT 'cr_d' || lpad(to_hex(t * 100000 + d * 100 + k), 15, '0'), \
    'det-tenant-' || lpad(t::text, 4, '0'), 'u' || (k % 5), 'f' || (k % 5 + d % 2), 'gpt-4o', \
    500 + k, 100, CASE WHEN t % 10 = 0 AND d < 2 AND k % 5 = 1 THEN 100 ELSE 10 END, \
    k % 17 = 0, $2 - make_interval(days => d, secs => k * 1600) \
FROM generate_series(0, $1 - 1) AS t, generate_series(0, 29) AS d, generate_series(0, 49) AS k";

/// The baseline: one statement over the same 30 days of records that the rules read,
/// summed per tenant, user, feature and day.
const SAME_ROWS: &str = "\
SELECT count(*) AS n FROM ( \
    SELECT tenant_id, user_id, feature_tag, (created_at AT TIME ZONE 'UTC')::date, \
           sum(cost_cents) \
    FROM cost_records WHERE created_at >= $1 - interval '30 days' \
    GROUP BY 1, 2, 3, 4) per_day";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The detector over every tenant of a database of its own (so that no other workload's
/// tenants count), beside one aggregate over the same rows.
struct Detector {
    tenants: usize,
    anomalies: usize,
    target: Target,
    /// The workload's database and a connection to it, from `prepare`.
    db: Option<(ScratchDatabase, PgConnection)>,
}

impl Detector {
    fn now() -> chrono::DateTime<Utc> {
        Utc::now()
            .date_naive()
            .and_time(NaiveTime::from_hms_opt(23, 0, 0).expect("a time"))
            .and_utc()
    }

    fn conn(&mut self) -> Result<&mut PgConnection> {
        self.db
            .as_mut()
            .map(|(_, conn)| conn)
            .ok_or_else(|| Error::invalid("database", "prepare() was not called").into())
    }
}

impl Workload for Detector {
    fn name(&self) -> String {
        format!(
            "detector {} tenants × 30 days ({} anomalies a run)",
            self.tenants, self.anomalies
        )
    }
    fn baseline_name(&self) -> &'static str {
        "one aggregate over the same rows"
    }
    fn target(&self) -> Target {
        self.target
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        let admin = url_with_database(&ctx.url, "postgres")?;
        let database = ScratchDatabase::create(&admin, "costdb_bench_detector")?;
        let mut conn = db::connect(database.url())?;
        db::run_migrations(&mut conn)?;
        super::day_partitions(&mut conn, 32)?;
        diesel::sql_query(LOAD)
            .bind::<BigInt, _>(self.tenants as i64)
            .bind::<Timestamptz, _>(Self::now())
            .execute(&mut conn)?;
        conn.batch_execute("VACUUM ANALYZE cost_records, cost_rollup_hourly, cost_rollup_daily")?;
        // Yesterday's run records yesterday's breaches, so today's can be the second day.
        let yesterday = Self::now() - chrono::Duration::days(1);
        conn.transaction(|c| AnomalyDetector::default().detect_all(c, yesterday))?;
        self.db = Some((database, conn));
        Ok(())
    }
    fn contender(&mut self, _ctx: &mut Ctx) -> Result<Duration> {
        let detector = AnomalyDetector::default();
        let conn = self.conn()?;
        let started = Instant::now();
        let found = conn.transaction(|c| detector.detect_all(c, Self::now()))?;
        let elapsed = started.elapsed();
        self.anomalies = found.len();
        Ok(elapsed)
    }
    fn baseline(&mut self, _ctx: &mut Ctx) -> Result<Duration> {
        let conn = self.conn()?;
        let started = Instant::now();
        let groups = diesel::sql_query(SAME_ROWS)
            .bind::<Timestamptz, _>(Self::now())
            .get_result::<Count>(conn)?
            .n;
        std::hint::black_box(groups);
        Ok(started.elapsed())
    }
}

/// The detector workloads at `scale`: 100 tenants (target: at least as fast as the one
/// aggregate) and 1,000 (reported).
pub fn detector_workloads(scale: Scale) -> Vec<Box<dyn Workload>> {
    [(100, Target::AtLeast(1.0)), (1_000, Target::Report)]
        .into_iter()
        .map(|(tenants, target)| {
            Box::new(Detector {
                tenants: scale.of(tenants),
                anomalies: 0,
                target,
                db: None,
            }) as Box<dyn Workload>
        })
        .collect()
}
