//! The anomaly detector over many tenants, against one query that reads the same rows.

use std::time::{Duration, Instant};

use chrono::{NaiveTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamptz};

use super::{Ctx, Scale, Target, Workload};
use costdb::detector::AnomalyDetector;
use costdb_testkit::Result;

/// 50 calls a day for 30 days for each tenant `det-tenant-<n>`, 5 users, 6 features; every
/// tenth tenant's user `u1` spends ten times as much on the last two days (a user spike,
/// and with it a tenant and a feature spike).
const LOAD: &str = "\
INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, model, input_tokens, \
    output_tokens, cost_cents, is_retry, created_at) \
SELECT 'cr_d' || lpad(to_hex(t * 100000 + d * 100 + k), 15, '0'), \
    'det-tenant-' || lpad(t::text, 3, '0'), 'u' || (k % 5), 'f' || (k % 5 + d % 2), 'gpt-4o', \
    500 + k, 100, CASE WHEN t % 10 = 0 AND d < 2 AND k % 5 = 1 THEN 100 ELSE 10 END, \
    k % 17 = 0, $2 - make_interval(days => d, secs => k * 1600) \
FROM generate_series(0, $1 - 1) AS t, generate_series(0, 29) AS d, generate_series(0, 49) AS k";

/// The statement the baseline runs per tenant: the 30 days of records the rules read,
/// summed per user, feature and day.
const SAME_ROWS: &str = "\
SELECT count(*) AS n FROM ( \
    SELECT user_id, feature_tag, (created_at AT TIME ZONE 'UTC')::date, sum(cost_cents) \
    FROM cost_records WHERE tenant_id = $1 AND created_at >= $2 - interval '30 days' \
    GROUP BY 1, 2, 3) per_day";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

struct Detector {
    tenants: usize,
    anomalies: usize,
}

impl Detector {
    fn tenant(i: usize) -> String {
        format!("det-tenant-{i:03}")
    }

    fn now() -> chrono::DateTime<Utc> {
        Utc::now()
            .date_naive()
            .and_time(NaiveTime::from_hms_opt(23, 0, 0).expect("a time"))
            .and_utc()
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
        Target::Report
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        diesel::sql_query(LOAD)
            .bind::<BigInt, _>(self.tenants as i64)
            .bind::<Timestamptz, _>(Self::now())
            .execute(&mut ctx.conn)?;
        ctx.conn.batch_execute("ANALYZE cost_records")?;
        // Yesterday's run records yesterday's breaches, so today's can be the second day.
        let detector = AnomalyDetector::default();
        let yesterday = Self::now() - chrono::Duration::days(1);
        for i in 0..self.tenants {
            ctx.conn
                .transaction(|c| detector.detect(c, &Self::tenant(i), yesterday))?;
        }
        Ok(())
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let detector = AnomalyDetector::default();
        let started = Instant::now();
        let mut found = 0;
        for i in 0..self.tenants {
            found += ctx
                .conn
                .transaction(|c| detector.detect(c, &Self::tenant(i), Self::now()))?
                .len();
        }
        self.anomalies = found;
        Ok(started.elapsed())
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let started = Instant::now();
        let mut groups = 0;
        for i in 0..self.tenants {
            groups += diesel::sql_query(SAME_ROWS)
                .bind::<Text, _>(Self::tenant(i))
                .bind::<Timestamptz, _>(Self::now())
                .get_result::<Count>(&mut ctx.conn)?
                .n;
        }
        std::hint::black_box(groups);
        Ok(started.elapsed())
    }
}

/// The detector workload at `scale`.
pub fn detector_workloads(scale: Scale) -> Vec<Box<dyn Workload>> {
    vec![Box::new(Detector {
        tenants: scale.of(100),
        anomalies: 0,
    })]
}
