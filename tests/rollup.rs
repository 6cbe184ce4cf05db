//! The rollups of `cost_records`: exact whatever the write path, the concurrency, the
//! rollbacks and the session time zone; `verify` and `rebuild`; the migration's fill; and
//! the indexes left on `cost_records`, each shown in use.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier, Mutex, MutexGuard};

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use costdb::admission::{Admission, AdmissionDriver, ReserveInput};
use costdb::db;
use costdb::drivers::{
    AnalyticsReadDriver, CostAnomalyDriver, CostWriteDriver, EntityColumn, PartitionDriver, Rollup,
    RollupDifference, RollupDriver, RollupRange,
};
use costdb::models::{CostInput, CostRecord, TimeBucket};
use costdb::recorder::{CostRecorder, RecorderConfig};
use costdb::schema::{cost_records as cr, cost_request_keys as k};
use costdb::types::{BudgetScope, TenantId, TimeWindow};

/// A small deterministic generator (splitmix64), so a failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn maybe(&mut self, items: &[&str]) -> Option<String> {
        (self.below(4) > 0).then(|| self.pick(items).to_owned())
    }
}

/// The tests of this binary share a database. Those that fold every tenant's deltas
/// (folds, rebuilds) or count one tenant's pending deltas take turns holding this.
fn deltas_turn() -> MutexGuard<'static, ()> {
    static DELTAS: Mutex<()> = Mutex::new(());
    DELTAS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A call of `model` costing `cents`, everything else empty.
fn base(tenant: &TenantId, model: &str, cents: f64) -> CostInput {
    CostInput {
        tenant_id: tenant.into(),
        model: model.into(),
        cost_cents: cents,
        ..CostInput::default()
    }
}

/// Around a UTC midnight that ends a month (2026-01-31 → 02-01).
fn month_end() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()
}

/// A random call of one of `tenants`: users, tags and models from small sets (some
/// absent), instants within two days of a month end at any microsecond, one in ten
/// forty days in the past, request ids from a small pool so that retries repeat them.
fn call(rng: &mut Rng, tenants: &[TenantId]) -> CostInput {
    let tenant = tenants[rng.below(tenants.len() as u64) as usize].clone();
    let micros = rng.below(4 * 86_400_000_000) as i64 - 2 * 86_400_000_000;
    let past = if rng.below(10) == 0 {
        Duration::days(40)
    } else {
        Duration::zero()
    };
    CostInput {
        user_id: rng.maybe(&["ann", "bob", "cy", "dee"]),
        feature_tag: rng.maybe(&["chat", "search", "summarize"]),
        request_id: (rng.below(3) == 0).then(|| format!("rq-{}", rng.below(40))),
        model: rng.pick(&["gpt-4o", "claude-haiku", "o3"]).to_owned(),
        input_tokens: rng.below(5_000) as i32,
        output_tokens: rng.below(2_000) as i32,
        cost_cents: rng.below(1_000_000) as f64 / 997.0,
        is_retry: rng.below(5) == 0,
        created_at: Some(month_end() + Duration::microseconds(micros) - past),
        ..base(&tenant, "gpt-4o", 0.0)
    }
}

/// Writes `n` random calls through one write path, in transactions of up to 8 calls of
/// which one in four is rolled back. Paths: 0 one record a call, 1 `record_costs` (its
/// records as deltas, mostly a row each), 2 admission's settle, 3 `record_costs` folded as
/// it lands, 4 `record_costs` of one tenant's 3 to 8 calls (a batch row).
fn write(path: usize, seed: u64, tenants: &[TenantId], n: usize) {
    let mut rng = Rng(seed);
    let mut conn = if path == 3 {
        folding_in_slot(1 + (seed % 63) as i32)
    } else {
        db::connect(common::database_url()).unwrap()
    };
    let mut left = n;
    while left > 0 {
        let size = if path == 4 {
            3 + rng.below(6)
        } else {
            1 + rng.below(8)
        };
        let mut batch: Vec<CostInput> = (0..left.min(size as usize))
            .map(|_| call(&mut rng, tenants))
            .collect();
        if path == 4 {
            let tenant = batch[0].tenant_id.clone();
            batch.iter_mut().for_each(|c| c.tenant_id = tenant.clone());
        }
        left -= batch.len();
        let keep = rng.below(4) > 0;
        let result = conn.transaction::<_, costdb::Error, _>(|c| {
            match path {
                0 => {
                    for cost in &batch {
                        CostWriteDriver::new(c).insert_cost_record(cost)?;
                    }
                }
                1 | 3 | 4 => {
                    CostWriteDriver::new(c).record_costs(&batch)?;
                }
                _ => {
                    for cost in &batch {
                        settle(c, cost)?;
                    }
                }
            }
            if keep {
                Ok(())
            } else {
                Err(costdb::Error::invalid("test", "rolled back on purpose"))
            }
        });
        match result {
            Ok(()) => assert!(keep),
            Err(costdb::Error::InvalidInput { field: "test", .. }) => assert!(!keep),
            Err(e) => panic!("write path {path}: {e}"),
        }
    }
}

/// Admission's path: reserve the call (no budget refuses it) and settle it. A request is
/// reserved once (a repeat is admission's conflict), so each gets an id of its own here;
/// the other paths repeat theirs.
fn settle(c: &mut PgConnection, cost: &CostInput) -> costdb::Result<()> {
    let at = cost.created_at.unwrap();
    let request = format!("adm-{}", uuid::Uuid::new_v4().simple());
    let input = ReserveInput {
        request_id: request.clone(),
        feature_tag: cost.feature_tag.clone(),
        user_id: cost.user_id.clone(),
        estimated_cents: cost.cost_cents,
        expires_at: at + Duration::minutes(5),
        now: at,
    };
    let mut d = AdmissionDriver::new(c);
    match d.reserve(&TenantId::new(cost.tenant_id.as_str())?, &input)? {
        Admission::Admitted { reservation, .. } => {
            let actual = CostInput {
                request_id: Some(request),
                ..cost.clone()
            };
            d.settle(&reservation, &actual)?;
            Ok(())
        }
        other => panic!("no budget should refuse: {other:?}"),
    }
}

/// The recorder's path: many callers, one group commit.
fn record(seed: u64, tenants: &[TenantId], n: usize) {
    let recorder = CostRecorder::start(common::database_url(), RecorderConfig::default()).unwrap();
    let mut rng = Rng(seed);
    let calls: Vec<CostInput> = (0..n).map(|_| call(&mut rng, tenants)).collect();
    std::thread::scope(|s| {
        for part in calls.chunks(n.div_ceil(4)) {
            let recorder = &recorder;
            s.spawn(move || {
                for cost in part {
                    recorder.record(cost.clone()).unwrap();
                }
            });
        }
    });
    recorder.shutdown();
}

fn records(conn: &mut PgConnection, tenant: &TenantId) -> Vec<CostRecord> {
    cr::table
        .filter(cr::tenant_id.eq(tenant))
        .select(CostRecord::as_select())
        .load(conn)
        .unwrap()
}

/// Equal within the rounding of summing in another order.
#[track_caller]
fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * got.abs().max(want.abs()),
        "{what}: {got} != {want}"
    );
}

/// The UTC hour or midnight that holds `at`.
fn bucket_of(at: DateTime<Utc>, bucket: TimeBucket) -> DateTime<Utc> {
    let day = at.date_naive().and_time(NaiveTime::MIN).and_utc();
    match bucket {
        TimeBucket::Day => day,
        TimeBucket::Hour => day + Duration::hours(at.signed_duration_since(day).num_hours()),
    }
}

/// (requests, input, output, retries, cents) per key of the records `pick` keeps.
type Sums = (i64, i64, i64, i64, f64);

fn sums<K: Ord>(rows: &[CostRecord], pick: impl Fn(&CostRecord) -> Option<K>) -> BTreeMap<K, Sums> {
    let mut out = BTreeMap::new();
    for r in rows {
        if let Some(k) = pick(r) {
            let e: &mut Sums = out.entry(k).or_default();
            e.0 += 1;
            e.1 += r.input_tokens as i64;
            e.2 += r.output_tokens as i64;
            e.3 += r.is_retry as i64;
            e.4 += r.cost_cents;
        }
    }
    out
}

/// Every rollup-served read of `tenant` against the same read computed from its records.
fn compare_reads(conn: &mut PgConnection, tenant: &TenantId, rows: &[CostRecord]) {
    let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let windows = [
        (t("2026-01-29T00:00:00Z"), t("2026-02-04T00:00:00Z")),
        (
            t("2026-01-30T13:17:05.123456Z"),
            t("2026-02-01T02:00:00.5Z"),
        ),
        (t("2026-01-31T23:10:00.000001Z"), t("2026-01-31T23:50:00Z")),
        (
            t("2026-01-31T23:59:59.999999Z"),
            t("2026-02-01T00:00:00.000001Z"),
        ),
        (t("2025-12-01T00:00:00Z"), t("2026-03-01T00:00:00Z")),
    ];
    for (from, to) in windows {
        let window = TimeWindow::new(from, to).unwrap();
        let inside: Vec<CostRecord> = rows
            .iter()
            .filter(|r| r.created_at >= from && r.created_at < to)
            .cloned()
            .collect();
        let mut d = AnalyticsReadDriver::new(conn);
        for bucket in [TimeBucket::Hour, TimeBucket::Day] {
            let want = sums(&inside, |r| Some(bucket_of(r.created_at, bucket)));
            let spend = d.fetch_cost_spend(tenant, window, bucket).unwrap();
            let metrics = d.fetch_cost_metrics(tenant, window, bucket).unwrap();
            assert_eq!(spend.len(), want.len(), "{from}..{to} {bucket:?}");
            assert_eq!(metrics.len(), want.len());
            for ((s, m), (at, w)) in spend.iter().zip(&metrics).zip(&want) {
                assert_eq!((s.bucket, s.requests), (*at, w.0));
                assert_eq!((s.input_tokens, s.output_tokens), (w.1, w.2));
                assert_eq!((m.bucket, m.requests, m.tokens), (*at, w.0, w.1 + w.2));
                close(s.spend_cents, w.4, "spend");
            }
            let want = sums(&inside, |r| {
                Some((bucket_of(r.created_at, bucket), r.model.clone()))
            });
            let got = d.fetch_model_spend(tenant, window, bucket).unwrap();
            assert_eq!(got.len(), want.len());
            for (g, ((at, model), w)) in got.iter().zip(&want) {
                assert_eq!((&g.bucket, &g.model, g.requests), (at, model, w.0));
                close(g.spend_cents, w.4, "model spend");
            }
        }
        let want = sums(&inside, |r| Some(r.model.clone()));
        let got = d.fetch_cost_by_model(tenant, window).unwrap();
        assert_eq!(got.len(), want.len());
        for g in &got {
            let w = want[&g.model];
            assert_eq!(
                (g.requests, g.input_tokens, g.output_tokens),
                (w.0, w.1, w.2)
            );
            close(g.spend_cents, w.4, "by model");
        }
        let want = sums(&inside, |r| Some(r.feature_tag.clone()));
        let got = d.fetch_cost_by_feature(tenant, window).unwrap();
        assert_eq!(got.len(), want.len());
        for g in &got {
            let w = want[&g.feature_tag];
            assert_eq!(g.requests, w.0);
            close(g.spend_cents, w.4, "by feature");
        }
    }
}

/// Every rollup-served input of the detector for `tenant` on `today`, against the records.
fn compare_detector_inputs(
    conn: &mut PgConnection,
    tenant: &TenantId,
    rows: &[CostRecord],
    today: NaiveDate,
) {
    let day = |r: &CostRecord| r.created_at.date_naive();
    let from = today - Duration::days(45);
    let mut d = CostAnomalyDriver::new(conn);
    // Entity baselines: spend over active days, per user and per tag.
    for column in [EntityColumn::User, EntityColumn::Feature] {
        let entity = |r: &CostRecord| match column {
            EntityColumn::User => r.user_id.clone(),
            EntityColumn::Feature => r.feature_tag.clone(),
        };
        let in_range = |r: &CostRecord| day(r) >= from && day(r) <= today;
        let spend = sums(rows, |r| in_range(r).then(|| entity(r)).flatten());
        let active = sums(rows, |r| {
            in_range(r)
                .then(|| entity(r).map(|e| (e, day(r))))
                .flatten()
        });
        let got = d
            .fetch_entity_baseline(tenant, column, from, today)
            .unwrap();
        let want: Vec<(String, f64)> = spend
            .iter()
            .filter(|(_, s)| s.4 > 0.0)
            .map(|(e, s)| {
                let days = active.keys().filter(|(a, _)| a == e).count();
                (e.clone(), s.4 / days as f64)
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{column:?}");
        for (g, (e, cents)) in got.iter().zip(&want) {
            assert_eq!(&g.entity, e);
            close(g.cents, *cents, "entity baseline");
        }
        let today_spend = sums(rows, |r| (day(r) == today).then(|| entity(r)).flatten());
        let got = d.fetch_entity_today_spend(tenant, column, today).unwrap();
        assert_eq!(got.len(), today_spend.len());
        for (g, (e, s)) in got.iter().zip(&today_spend) {
            assert_eq!(&g.entity, e);
            close(g.cents, s.4, "entity today");
        }
    }
    // The scopes of budgets: today, the month so far, and the activity of today and
    // yesterday.
    let first = today.with_day0(0).unwrap();
    let scopes = [
        BudgetScope::Tenant,
        BudgetScope::User("ann".into()),
        BudgetScope::Feature("chat".into()),
    ];
    for scope in &scopes {
        let of_scope = |r: &CostRecord| match scope {
            BudgetScope::Tenant => true,
            BudgetScope::User(u) => r.user_id.as_ref() == Some(u),
            BudgetScope::Feature(f) => r.feature_tag.as_ref() == Some(f),
        };
        let spent = |a: NaiveDate, b: NaiveDate| {
            sums(rows, |r| {
                (of_scope(r) && day(r) >= a && day(r) <= b).then_some(())
            })
            .get(&())
            .copied()
            .unwrap_or_default()
        };
        close(
            d.fetch_daily_spend(tenant, today, scope).unwrap(),
            spent(today, today).4,
            "daily",
        );
        close(
            d.fetch_monthly_spend(tenant, today, scope).unwrap(),
            spent(first, today).4,
            "monthly",
        );
        let activity = d.fetch_activity_comparison(tenant, today, scope).unwrap();
        for (got, s) in [
            (activity.today, spent(today, today)),
            (
                activity.yesterday,
                spent(today.pred_opt().unwrap(), today.pred_opt().unwrap()),
            ),
        ] {
            assert_eq!(
                (got.calls, got.retried, got.prompt_tokens),
                (s.0, s.3, s.1),
                "{scope:?}"
            );
        }
    }
    let per_tag = sums(rows, |r| (day(r) == today).then(|| r.feature_tag.clone()));
    let f = d.fetch_feature_concentration(tenant, today).unwrap();
    close(f.total_cents, per_tag.values().map(|s| s.4).sum(), "total");
    close(
        f.top_feature_cents,
        per_tag
            .iter()
            .filter(|(t, _)| t.is_some())
            .map(|(_, s)| s.4)
            .fold(0.0, f64::max),
        "top feature",
    );
    let base = sums(rows, |r| {
        (day(r) >= from && day(r) <= today).then_some(day(r))
    });
    let total: f64 = base.values().map(|s| s.4).sum();
    let got = d.fetch_tenant_baseline(tenant, from, today).unwrap();
    match got {
        Some(avg) => close(avg, total / base.len() as f64, "tenant baseline"),
        None => assert_eq!(total, 0.0),
    }
}

use chrono::Datelike;

#[test]
fn every_write_path_at_once_leaves_rollups_equal_to_the_records_in_every_time_zone() {
    let tenants: Vec<TenantId> = (0..3).map(|_| common::tenant()).collect();
    let seed = 0x5eed_2026;
    std::thread::scope(|s| {
        for path in 0..5 {
            let tenants = &tenants;
            s.spawn(move || write(path, seed + path as u64, tenants, 150));
        }
        s.spawn(|| record(seed + 7, &tenants, 200));
    });
    let mut conn = db::connect(common::database_url()).unwrap();
    let mut total = 0;
    for zone in ["UTC", "America/St_Johns", "Asia/Kathmandu"] {
        conn.batch_execute(&format!("SET TIME ZONE '{zone}'"))
            .unwrap();
        for tenant in &tenants {
            let rows = records(&mut conn, tenant);
            total += rows.len();
            compare_reads(&mut conn, tenant, &rows);
            for today in [
                NaiveDate::from_ymd_opt(2026, 1, 31).unwrap(),
                NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
                NaiveDate::from_ymd_opt(2026, 2, 2).unwrap(),
            ] {
                compare_detector_inputs(&mut conn, tenant, &rows, today);
            }
        }
    }
    // Some of every kind were written: rolled back ones and repeats left out.
    assert!(total > 3 * 300, "{total}");
    for tenant in &tenants {
        let range = RollupRange {
            tenant_id: Some(tenant.to_string()),
            ..RollupRange::default()
        };
        let differences = RollupDriver::new(&mut conn)
            .fetch_differences(&range)
            .unwrap();
        assert_eq!(differences, vec![]);
    }
}

#[test]
fn a_repeated_request_a_rollback_and_a_past_instant_count_as_the_records_do() {
    let _turn = deltas_turn();
    let mut conn = db::connect(common::database_url()).unwrap();
    let tenant = common::tenant();
    let at = Utc.with_ymd_and_hms(2026, 5, 4, 10, 30, 0).unwrap();
    let past = at - Duration::days(400);
    let cost = |request: &str, cents: f64, at: DateTime<Utc>| CostInput {
        request_id: Some(request.into()),
        created_at: Some(at),
        ..base(&tenant, "o3", cents)
    };
    conn.transaction::<_, costdb::Error, _>(|c| {
        let mut d = CostWriteDriver::new(c);
        d.insert_cost_record(&cost("a", 10.0, at))?;
        d.insert_cost_record(&cost("a", 99.0, at))?; // a retry: billed once
        d.record_costs(&[cost("a", 99.0, at), cost("b", 5.0, past)])?;
        Ok(())
    })
    .unwrap();
    let rolled_back = conn.transaction::<(), costdb::Error, _>(|c| {
        CostWriteDriver::new(c).record_costs(&[cost("c", 1000.0, at)])?;
        Err(costdb::Error::invalid("test", "rolled back"))
    });
    assert!(rolled_back.is_err());
    let mut d = AnalyticsReadDriver::new(&mut conn);
    let window = |a: DateTime<Utc>| TimeWindow::new(a - Duration::days(1), a + Duration::days(1));
    let now = d
        .fetch_cost_spend(&tenant, window(at).unwrap(), TimeBucket::Hour)
        .unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(
        (now[0].bucket, now[0].requests, now[0].spend_cents),
        (Utc.with_ymd_and_hms(2026, 5, 4, 10, 0, 0).unwrap(), 1, 10.0)
    );
    let then = d
        .fetch_cost_spend(&tenant, window(past).unwrap(), TimeBucket::Day)
        .unwrap();
    assert_eq!(
        (
            then[0].bucket.date_naive(),
            then[0].requests,
            then[0].spend_cents
        ),
        (past.date_naive(), 1, 5.0)
    );
    let deltas = PENDING;
    let hourly = "SELECT count(*) AS n FROM cost_rollup_hourly WHERE tenant_id = $1";
    // Both statements were small: their records wait as deltas, none in the rollup.
    assert_eq!(tenant_rows(&mut conn, deltas, &tenant), 2);
    assert_eq!(tenant_rows(&mut conn, hourly, &tenant), 0);
    let moved = conn
        .transaction::<_, costdb::Error, _>(|c| RollupDriver::new(c).fold_deltas())
        .unwrap();
    assert!(moved >= 2, "this tenant's deltas are among those moved");
    assert_eq!(tenant_rows(&mut conn, deltas, &tenant), 0);
    assert_eq!(
        tenant_rows(&mut conn, hourly, &tenant),
        2,
        "one row per hour that has records, none for the rollback"
    );
    let mut d = AnalyticsReadDriver::new(&mut conn);
    let after = d
        .fetch_cost_spend(&tenant, window(at).unwrap(), TimeBucket::Hour)
        .unwrap();
    assert_eq!(after, now, "folding the deltas changes no read");
}

/// The count `sql` (`SELECT count(*) AS n … WHERE tenant_id = $1`) gives for `tenant`.
/// The rows of tenant $1 in the batch deltas.
const BATCH_ROWS: &str = "SELECT count(*) AS n FROM cost_rollup_delta_batches WHERE tenant_id = $1";

/// The rows of tenant $1 in the narrow deltas, a record each.
const SINGLE_ROWS: &str = "SELECT count(*) AS n FROM cost_rollup_deltas WHERE tenant_id = $1";

/// The records of tenant $1 waiting as deltas, single or in batches.
const PENDING: &str = "SELECT (SELECT count(*) FROM cost_rollup_deltas WHERE tenant_id = $1) \
     + (SELECT coalesce(sum(cardinality(created_at)), 0) FROM cost_rollup_delta_batches \
        WHERE tenant_id = $1) AS n";

/// One record of `cents` at `at` with request id `request`, as costdb before migration 26
/// wrote a single record: claim, record and delta in one statement that set the two
/// markers of migrations 22 and 24. Returns the records stored (0 when the id was
/// claimed).
fn previous_release_record(
    conn: &mut PgConnection,
    tenant: &TenantId,
    request: &str,
    (at, cents): (DateTime<Utc>, f64),
) -> usize {
    use diesel::sql_types::{Double, Text, Timestamptz};
    diesel::sql_query(
        "WITH claimed AS ( \
             INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING \
             RETURNING record_id, set_config('costdb.request_keys', 'claimed', true) \
         ), stored AS ( \
             INSERT INTO cost_records (id, tenant_id, request_id, model, cost_cents, created_at) \
             SELECT $3, $1, $2, 'o3', $5, $4 WHERE EXISTS (SELECT FROM claimed) \
             RETURNING * \
         ), delta AS ( \
             INSERT INTO cost_rollup_deltas (tenant_id, created_at, record_id, model, \
                 feature_tag, user_id, is_retry, input_tokens, output_tokens, cost_cents) \
             SELECT tenant_id, created_at, id, model, feature_tag, user_id, is_retry, \
                 input_tokens, output_tokens, cost_cents FROM stored \
             RETURNING set_config('costdb.rollups', 'deltas', true) \
         ) SELECT stored.id FROM stored, delta",
    )
    .bind::<Text, _>(tenant.as_str())
    .bind::<Text, _>(request)
    .bind::<Text, _>(costdb::models::ids::cost_record_id())
    .bind::<Timestamptz, _>(at)
    .bind::<Double, _>(cents)
    .execute(conn)
    .unwrap()
}

/// One record of two cents for each of `tenants` at `at`, in one plain statement of no
/// costdb path: the trigger counts its records and tenants itself.
fn one_record_each(
    conn: &mut PgConnection,
    tenants: [&TenantId; 2],
    at: DateTime<Utc>,
) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO cost_records (id, tenant_id, model, cost_cents, created_at) \
         VALUES ($1, $3, 'o3', 2.0, $5), ($2, $4, 'o3', 2.0, $5)",
    )
    .bind::<diesel::sql_types::Text, _>(costdb::models::ids::cost_record_id())
    .bind::<diesel::sql_types::Text, _>(costdb::models::ids::cost_record_id())
    .bind::<diesel::sql_types::Text, _>(tenants[0].as_str())
    .bind::<diesel::sql_types::Text, _>(tenants[1].as_str())
    .bind::<diesel::sql_types::Timestamptz, _>(at)
    .execute(conn)
}

/// The requests and spend of `tenant`'s first UTC day in `window`.
fn day_spend(conn: &mut PgConnection, tenant: &TenantId, window: TimeWindow) -> (i64, f64) {
    let s = AnalyticsReadDriver::new(conn)
        .fetch_cost_spend(tenant, window, TimeBucket::Day)
        .unwrap();
    (s[0].requests, s[0].spend_cents)
}

/// What `rollup verify` finds between the rollups and the records: of `tenant`, or of
/// every tenant.
fn differences(conn: &mut PgConnection, tenant: Option<&TenantId>) -> Vec<RollupDifference> {
    let range = RollupRange {
        tenant_id: tenant.map(|t| t.as_str().into()),
        ..RollupRange::default()
    };
    RollupDriver::new(conn).fetch_differences(&range).unwrap()
}

fn tenant_rows(conn: &mut PgConnection, sql: &str, tenant: &TenantId) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .bind::<diesel::sql_types::Text, _>(tenant.as_str())
        .get_result::<N>(conn)
        .unwrap()
        .n
}

/// A connection whose statements of many records fold as they land (no deltas), into
/// rollup slot `slot`.
fn folding_in_slot(slot: i32) -> PgConnection {
    let mut conn = db::connect(common::database_url()).unwrap();
    conn.batch_execute(&format!(
        "SET costdb.rollup_slot = {slot}; SET costdb.fold_from = 1"
    ))
    .unwrap();
    conn
}

#[test]
fn concurrent_batches_over_the_same_keys_in_opposite_orders_do_not_deadlock() {
    let tenant = common::tenant();
    let at = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    // 40 keys (hours × models × users); one batch lists them forwards, the other backwards.
    let keys: Vec<CostInput> = (0..40)
        .map(|i| CostInput {
            user_id: Some(format!("u{}", i % 5)),
            created_at: Some(at + Duration::hours(i % 8)),
            ..base(
                &tenant,
                ["o3", "gpt-4o", "claude-haiku"][i as usize % 3],
                1.0,
            )
        })
        .collect();
    let reversed: Vec<CostInput> = keys.iter().rev().cloned().collect();
    // One slot for both, so their batches meet on the same rollup rows.
    let (a, b) = (folding_in_slot(5), folding_in_slot(5));
    let rounds = 30;
    let barrier = Arc::new(Barrier::new(2));
    let run = |mut conn: PgConnection, batch: Vec<CostInput>, barrier: Arc<Barrier>| {
        std::thread::spawn(move || {
            for _ in 0..rounds {
                barrier.wait();
                conn.transaction::<_, costdb::Error, _>(|c| {
                    // Two statements per transaction, each over every key.
                    CostWriteDriver::new(c).record_costs(&batch)?;
                    CostWriteDriver::new(c).record_costs(&batch)?;
                    Ok(())
                })
                .expect("no deadlock");
            }
        })
    };
    let ta = run(a, keys.clone(), barrier.clone());
    let tb = run(b, reversed, barrier);
    ta.join().unwrap();
    tb.join().unwrap();
    let mut conn = db::connect(common::database_url()).unwrap();
    let spend = AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_spend(
            &tenant,
            TimeWindow::new(at, at + Duration::days(1)).unwrap(),
            TimeBucket::Day,
        )
        .unwrap();
    assert_eq!(spend[0].requests, 40 * 2 * 2 * rounds);
}

#[test]
fn verify_names_a_planted_difference_and_rebuild_repairs_it() {
    let _turn = deltas_turn();
    let mut conn = db::connect(common::database_url()).unwrap();
    let tenant = common::tenant();
    let at = Utc.with_ymd_and_hms(2026, 7, 9, 15, 45, 0).unwrap();
    conn.transaction::<_, costdb::Error, _>(|c| {
        CostWriteDriver::new(c).record_costs(&[
            CostInput {
                feature_tag: Some("chat".into()),
                user_id: Some("ann".into()),
                created_at: Some(at),
                ..base(&tenant, "o3", 4.0)
            },
            CostInput {
                created_at: Some(at + Duration::days(3)),
                ..base(&tenant, "o3", 6.0)
            },
        ])?;
        Ok(())
    })
    .unwrap();
    let range = RollupRange {
        tenant_id: Some(tenant.to_string()),
        from: Some(at.date_naive()),
        to: Some(at.date_naive()),
    };
    assert_eq!(
        RollupDriver::new(&mut conn)
            .fetch_differences(&range)
            .unwrap(),
        vec![]
    );
    // Behind the crate's back: a record's cost changed without its rollups.
    diesel::update(
        cr::table
            .filter(cr::tenant_id.eq(&tenant))
            .filter(cr::cost_cents.eq(4.0)),
    )
    .set(cr::cost_cents.eq(4.5))
    .execute(&mut conn)
    .unwrap();
    let found = RollupDriver::new(&mut conn)
        .fetch_differences(&range)
        .unwrap();
    assert_eq!(found.len(), 2, "{found:#?}");
    let hourly = &found[0];
    assert_eq!(hourly.rollup, Rollup::Hourly);
    assert_eq!(
        (
            hourly.tenant_id.as_str(),
            hourly.bucket,
            hourly.model.as_deref(),
            hourly.feature_tag.as_deref()
        ),
        (
            tenant.as_str(),
            Utc.with_ymd_and_hms(2026, 7, 9, 15, 0, 0).unwrap(),
            Some("o3"),
            Some("chat")
        )
    );
    assert_eq!(
        (hourly.rolled.cost_cents, hourly.recorded.cost_cents),
        (4.0, 4.5)
    );
    let daily = &found[1];
    assert_eq!(daily.rollup, Rollup::Daily);
    assert_eq!(
        (
            daily.feature_tag.as_deref(),
            daily.user_id.as_deref(),
            daily.bucket.date_naive()
        ),
        (Some("chat"), Some("ann"), at.date_naive())
    );
    // The other day is not in the range, and has no difference anyway.
    let everything = RollupRange {
        tenant_id: Some(tenant.to_string()),
        ..RollupRange::default()
    };
    assert_eq!(
        RollupDriver::new(&mut conn)
            .fetch_differences(&everything)
            .unwrap()
            .len(),
        2
    );
    let summary = conn
        .transaction(|c| RollupDriver::new(c).rebuild(&range))
        .unwrap();
    assert_eq!((summary.hourly_rows, summary.daily_rows), (1, 1));
    assert_eq!(
        RollupDriver::new(&mut conn)
            .fetch_differences(&everything)
            .unwrap(),
        vec![]
    );
    let spend = AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_by_model(
            &tenant,
            TimeWindow::new(at - Duration::days(1), at + Duration::days(5)).unwrap(),
        )
        .unwrap();
    assert_eq!((spend[0].requests, spend[0].spend_cents), (2, 10.5));
}

#[test]
fn rebuild_refuses_outside_a_transaction_and_bad_ranges_before_any_sql() {
    let mut conn = db::connect(common::database_url()).unwrap();
    let day = NaiveDate::from_ymd_opt(2026, 7, 9).unwrap();
    let mut d = RollupDriver::new(&mut conn);
    assert!(matches!(
        d.rebuild(&RollupRange::default()),
        Err(costdb::Error::NoTransaction)
    ));
    let reversed = RollupRange {
        from: Some(day),
        to: day.pred_opt(),
        ..RollupRange::default()
    };
    common::assert_invalid(d.fetch_differences(&reversed), "to");
    let long = RollupRange {
        tenant_id: Some("x".repeat(65)),
        ..RollupRange::default()
    };
    common::assert_invalid(d.fetch_differences(&long), "tenant_id");
}

#[test]
fn the_migration_fills_the_rollups_from_the_records_already_there() {
    let url = common::fresh_database();
    let mut conn = db::connect(&url).unwrap();
    db::run_migrations(&mut conn).unwrap();
    // Back to the schema before the rollups (and the migrations after them).
    common::revert_through(&mut conn, "cost_rollups");
    // Records of the shape before the rollups, written by another system.
    conn.batch_execute(
        "INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, model, input_tokens, \
             output_tokens, cost_cents, created_at, is_retry) \
         SELECT 'cr_' || i, 't' || (i % 3), CASE WHEN i % 4 = 0 THEN NULL ELSE 'u' || (i % 5) END, \
                CASE WHEN i % 6 = 0 THEN NULL ELSE 'f' || (i % 2) END, 'm' || (i % 2), i, 2 * i, \
                i / 7.0, '2026-03-31 20:00+00'::timestamptz + i * interval '7 minutes', i % 9 = 0 \
         FROM generate_series(1, 500) AS i",
    )
    .unwrap();
    db::run_migrations(&mut conn).unwrap();
    assert_eq!(
        RollupDriver::new(&mut conn)
            .fetch_differences(&RollupRange::default())
            .unwrap(),
        vec![]
    );
    for tenant in ["t0", "t1", "t2"].map(common::tid) {
        let rows = records(&mut conn, &tenant);
        assert!(!rows.is_empty());
        compare_reads(&mut conn, &tenant, &rows);
    }
    // And from then on the trigger keeps them.
    conn.transaction::<_, costdb::Error, _>(|c| {
        CostWriteDriver::new(c).insert_cost_record(&CostInput {
            created_at: Some(Utc.with_ymd_and_hms(2026, 4, 1, 1, 0, 0).unwrap()),
            ..base(&common::tid("t0"), "m0", 3.0)
        })?;
        Ok(())
    })
    .unwrap();
    assert_eq!(
        RollupDriver::new(&mut conn)
            .fetch_differences(&RollupRange::default())
            .unwrap(),
        vec![]
    );
}

#[test]
fn cost_records_keeps_only_the_indexes_a_query_uses() {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        indexname: String,
    }
    let mut conn = common::test_conn();
    let names: Vec<String> = diesel::sql_query(
        "SELECT indexname::text FROM pg_indexes WHERE tablename = 'cost_records' ORDER BY 1",
    )
    .load::<Name>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|n| n.indexname)
    .collect();
    assert_eq!(names, ["cost_records_pkey"]);
    // A day of one tenant's records in its own partition, so the planner chooses on
    // statistics, not on ties between empty indexes that all lead with the tenant.
    let day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let made = PartitionDriver::new(&mut conn)
        .create_partitions(day, day)
        .unwrap();
    // (Other tests' stray days in the default partition got theirs too.)
    assert!(
        made.contains(&"cost_records_p20260101".to_owned()),
        "{made:?}"
    );
    conn.batch_execute(
        "INSERT INTO cost_records (id, tenant_id, model, cost_cents, created_at, request_id) \
         SELECT 'cr_' || lpad(to_hex(i), 16, '0'), 't', 'm', 1, \
                '2026-01-01'::timestamptz + i * interval '59 seconds', 'rq' || i \
         FROM generate_series(1, 1440) AS i; \
         ANALYZE cost_records; ANALYZE cost_request_keys; \
         SET LOCAL enable_seqscan = off",
    )
    .unwrap();
    let plan =
        |conn: &mut PgConnection, q: &dyn Fn(&mut PgConnection) -> Vec<String>| q(conn).join("\n");
    // The recorder's retry finds the rows an earlier attempt stored by tenant, id and
    // instant: one partition's key.
    let ids = ["cr_0123456789abcdef"];
    let at = [Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap()];
    let by_id = plan(&mut conn, &|c| {
        db::explain(
            c,
            &cr::table
                .filter(cr::tenant_id.eq_any(["t"]))
                .filter(cr::id.eq_any(&ids))
                .filter(cr::created_at.eq_any(&at))
                .select(cr::id),
        )
        .unwrap()
    });
    assert!(
        by_id.contains("using cost_records_p20260101_pkey"),
        "{by_id}"
    );
    assert!(by_id.contains("created_at = ANY"), "{by_id}");
    assert!(!by_id.contains("cost_records_default"), "{by_id}");
    // A repeated request id finds the record it repeats through its key.
    let by_request = plan(&mut conn, &|c| {
        db::explain(
            c,
            &k::table
                .filter(k::tenant_id.eq_any(["t"]))
                .filter(k::request_id.eq_any(["rq"]))
                .select(k::record_id),
        )
        .unwrap()
    });
    assert!(
        by_request.contains("cost_request_keys_pkey"),
        "{by_request}"
    );
    // The partial hours at the edges of a window are read from the records of that day,
    // by the same key: it leads with the tenant and the instant.
    let from = Utc.with_ymd_and_hms(2026, 1, 1, 10, 30, 0).unwrap();
    let edge = plan(&mut conn, &|c| {
        db::explain(
            c,
            &cr::table
                .filter(cr::tenant_id.eq("t"))
                .filter(cr::created_at.ge(from))
                .filter(cr::created_at.lt(from + Duration::minutes(30)))
                .select(cr::id),
        )
        .unwrap()
    });
    assert!(
        edge.contains("Scan on cost_records_p20260101_pkey")
            || edge.contains("Scan using cost_records_p20260101_pkey"),
        "{edge}"
    );
    assert!(
        edge.contains("Index Cond: (((tenant_id)::text = 't'::text) AND (created_at >="),
        "{edge}"
    );
    assert!(!edge.contains("cost_records_default"), "{edge}");
}

#[test]
fn compacting_while_writers_add_to_past_days_neither_deadlocks_nor_loses_a_call() {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 30;
    let tenant = common::tenant();
    let day = Utc.with_ymd_and_hms(2026, 2, 3, 0, 0, 0).unwrap();
    // Each writer commits small batches over the same past hours, models and features,
    // in its own slot, while another session folds the past days again and again.
    let barrier = Arc::new(Barrier::new(WRITERS + 1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (tenant, barrier) = (tenant.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = folding_in_slot(w as i32 + 1);
                barrier.wait();
                for round in 0..ROUNDS {
                    let costs: Vec<CostInput> = (0..6)
                        .map(|i| CostInput {
                            created_at: Some(day + Duration::hours(((w + i + round) % 5) as i64)),
                            feature_tag: Some(format!("f{}", (i + w) % 3)),
                            ..base(&tenant, ["o3", "gpt-4o"][i % 2], 0.5)
                        })
                        .collect();
                    conn.transaction(|c| CostWriteDriver::new(c).record_costs(&costs))
                        .unwrap();
                }
            })
        })
        .collect();
    let mut conn = db::connect(common::database_url()).unwrap();
    barrier.wait();
    let mut folds = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        conn.transaction(|c| RollupDriver::new(c).compact(day.date_naive() + Duration::days(1)))
            .unwrap();
        folds += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(folds > 0);
    let window = TimeWindow::new(day, day + Duration::days(1)).unwrap();
    let by_model = AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_by_model(&tenant, window)
        .unwrap();
    let calls: i64 = by_model.iter().map(|m| m.requests).sum();
    assert_eq!(calls, (WRITERS * ROUNDS * 6) as i64);
    assert_eq!(
        RollupDriver::new(&mut conn)
            .fetch_differences(&RollupRange {
                tenant_id: Some(tenant.as_str().into()),
                from: Some(day.date_naive()),
                to: Some(day.date_naive()),
            })
            .unwrap(),
        vec![]
    );
}

#[test]
fn a_session_cannot_pin_the_folded_slot() {
    let tenant = common::tenant();
    let mut conn = folding_in_slot(0);
    // A statement that folds is refused (a single record writes a delta, in no slot).
    let err = conn
        .transaction(|c| CostWriteDriver::new(c).record_costs(&[base(&tenant, "o3", 1.0)]))
        .unwrap_err();
    assert!(
        costdb::report(&err).contains("costdb.rollup_slot is 0"),
        "{err}"
    );
    let stored: i64 = cr::table
        .filter(cr::tenant_id.eq(tenant.as_str()))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(stored, 0);
}

#[test]
fn compact_folds_the_slots_of_past_days_and_leaves_every_sum_as_it_was() {
    #[derive(QueryableByName)]
    struct Rows {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let tenant = common::tenant();
    let yesterday = Utc.with_ymd_and_hms(2026, 8, 1, 9, 30, 0).unwrap();
    let today = yesterday + Duration::days(1);
    let midnight = today.date_naive().and_time(NaiveTime::MIN).and_utc();
    // (rows of the hourly rollup before today, rows of today)
    let rows = |conn: &mut PgConnection| -> (i64, i64) {
        let mut count = |sql: &str| {
            diesel::sql_query(sql)
                .bind::<diesel::sql_types::Text, _>(&tenant)
                .bind::<diesel::sql_types::Timestamptz, _>(midnight)
                .get_result::<Rows>(conn)
                .unwrap()
                .n
        };
        (
            count(
                "SELECT count(*) AS n FROM cost_rollup_hourly \
                 WHERE tenant_id = $1 AND bucket_hour < $2",
            ),
            count(
                "SELECT count(*) AS n FROM cost_rollup_hourly \
                 WHERE tenant_id = $1 AND bucket_hour >= $2",
            ),
        )
    };
    // Four writers in four slots: each key lands in four rows.
    for slot in [3, 17, 40, 63] {
        let mut conn = folding_in_slot(slot);
        conn.transaction::<_, costdb::Error, _>(|c| {
            let cost = |at| CostInput {
                user_id: Some("ann".into()),
                feature_tag: Some("chat".into()),
                created_at: Some(at),
                input_tokens: 7,
                ..base(&tenant, "o3", 1.25)
            };
            CostWriteDriver::new(c).record_costs(&[cost(yesterday), cost(today)])?;
            Ok(())
        })
        .unwrap();
    }
    let mut conn = db::connect(common::database_url()).unwrap();
    assert_eq!(rows(&mut conn), (4, 4));
    let window = TimeWindow::new(yesterday - Duration::days(1), today + Duration::days(1)).unwrap();
    let spend = |conn: &mut PgConnection| {
        AnalyticsReadDriver::new(conn)
            .fetch_cost_spend(&tenant, window, TimeBucket::Hour)
            .unwrap()
    };
    let read_before = spend(&mut conn);
    assert_eq!(read_before[0].requests, 4);
    let (removed, _) = conn
        .transaction(|c| RollupDriver::new(c).compact(today.date_naive()))
        .unwrap();
    // Yesterday's key is one row now (3 moved in each rollup, maybe more of other tests'
    // past days); today's slots are left as they were.
    assert!(removed >= 6, "{removed}");
    assert_eq!(rows(&mut conn), (1, 4));
    assert_eq!(spend(&mut conn), read_before);
    assert_eq!(
        RollupDriver::new(&mut conn)
            .fetch_differences(&RollupRange {
                tenant_id: Some(tenant.to_string()),
                ..RollupRange::default()
            })
            .unwrap(),
        vec![]
    );
    assert!(matches!(
        RollupDriver::new(&mut conn).compact(today.date_naive()),
        Err(costdb::Error::NoTransaction)
    ));
}

#[test]
fn history_stays_readable_after_its_records_are_dropped() {
    let mut conn = db::connect(common::database_url()).unwrap();
    let tenant = common::tenant();
    let old = Utc.with_ymd_and_hms(2025, 3, 3, 8, 15, 0).unwrap();
    conn.transaction::<_, costdb::Error, _>(|c| {
        let cost = |minutes: i64, model: &str, cents: f64| CostInput {
            feature_tag: Some("chat".into()),
            user_id: Some("ann".into()),
            created_at: Some(old + Duration::minutes(minutes)),
            ..base(&tenant, model, cents)
        };
        CostWriteDriver::new(c).record_costs(&[
            cost(0, "o3", 2.0),
            cost(90, "o3", 3.0),
            cost(600, "gpt-4o", 5.0),
        ])?;
        Ok(())
    })
    .unwrap();
    let day = old.date_naive().and_time(NaiveTime::MIN).and_utc();
    let window = TimeWindow::new(day, day + Duration::days(1)).unwrap();
    let read = |conn: &mut PgConnection| {
        let mut d = AnalyticsReadDriver::new(conn);
        (
            d.fetch_cost_spend(&tenant, window, TimeBucket::Hour)
                .unwrap(),
            d.fetch_cost_by_model(&tenant, window).unwrap(),
            d.fetch_cost_by_feature(&tenant, window).unwrap(),
            CostAnomalyDriver::new(conn)
                .fetch_monthly_spend(&tenant, old.date_naive(), &BudgetScope::User("ann".into()))
                .unwrap(),
        )
    };
    let before = read(&mut conn);
    assert_eq!(before.0.len(), 3);
    assert_eq!(before.3, 10.0);
    // Retention drops the day's records; the rollups keep its history.
    let dropped = diesel::delete(cr::table.filter(cr::tenant_id.eq(&tenant)))
        .execute(&mut conn)
        .unwrap();
    assert_eq!(dropped, 3);
    assert_eq!(read(&mut conn), before);
}

/// Sums of the tenant's records in `[from, to)` read from the records themselves.
#[derive(QueryableByName, Debug, PartialEq)]
struct RawSums {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    cents: f64,
}

fn raw_sums(
    conn: &mut PgConnection,
    tenant: &TenantId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> RawSums {
    diesel::sql_query(
        "SELECT count(*) AS n, coalesce(sum(cost_cents), 0) AS cents FROM cost_records \
         WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3",
    )
    .bind::<diesel::sql_types::Text, _>(tenant.as_str())
    .bind::<diesel::sql_types::Timestamptz, _>(from)
    .bind::<diesel::sql_types::Timestamptz, _>(to)
    .get_result(conn)
    .unwrap()
}

#[test]
fn single_record_writers_and_the_delta_fold_agree_with_the_records_in_every_snapshot() {
    let _turn = deltas_turn();
    use std::sync::atomic::{AtomicBool, Ordering};
    let tenant = common::tenant();
    let from = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let to = from + Duration::hours(6);
    let (writers, each) = (4, 150);
    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(writers + 2));
    let written: Vec<_> = (0..writers)
        .map(|w| {
            let (tenant, start) = (tenant.clone(), start.clone());
            std::thread::spawn(move || {
                let mut conn = db::connect(common::database_url()).unwrap();
                start.wait();
                for n in 0..each {
                    let cost = CostInput {
                        request_id: Some(format!("w{w}-{n}")),
                        feature_tag: Some(format!("tag-{}", n % 3)),
                        user_id: Some(format!("user-{w}")),
                        created_at: Some(from + Duration::minutes(((w * each + n) % 360) as i64)),
                        ..base(&tenant, "o3", 0.25 + n as f64 / 7.0)
                    };
                    conn.transaction::<_, costdb::Error, _>(|c| {
                        CostWriteDriver::new(c).insert_cost_record(&cost)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    let folder = {
        let (done, start) = (done.clone(), start.clone());
        std::thread::spawn(move || {
            let mut conn = db::connect(common::database_url()).unwrap();
            start.wait();
            let mut moved = 0;
            while !done.load(Ordering::SeqCst) {
                moved += conn
                    .transaction::<_, costdb::Error, _>(|c| RollupDriver::new(c).fold_deltas())
                    .unwrap();
            }
            moved
        })
    };
    // Each snapshot: the rollups with their deltas against the records, in one
    // repeatable-read transaction.
    let mut conn = db::connect(common::database_url()).unwrap();
    start.wait();
    let mut snapshots = 0;
    loop {
        let finished = written.iter().all(|w| w.is_finished());
        let (read, raw) = conn
            .build_transaction()
            .repeatable_read()
            .run::<_, costdb::Error, _>(|c| {
                let window = TimeWindow::new(from, to)?;
                let spend = AnalyticsReadDriver::new(c).fetch_cost_spend(
                    &tenant,
                    window,
                    TimeBucket::Hour,
                )?;
                let read = RawSums {
                    n: spend.iter().map(|b| b.requests).sum(),
                    cents: spend.iter().map(|b| b.spend_cents).sum(),
                };
                Ok((read, raw_sums(c, &tenant, from, to)))
            })
            .unwrap();
        assert_eq!(read.n, raw.n, "snapshot {snapshots}");
        assert!(
            (read.cents - raw.cents).abs() <= 1e-9 * raw.cents.max(1.0),
            "snapshot {snapshots}: {read:?} against {raw:?}"
        );
        snapshots += 1;
        if finished {
            break;
        }
    }
    for w in written {
        w.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let moved = folder.join().unwrap();
    assert!(snapshots > 1);
    assert_eq!(
        raw_sums(&mut conn, &tenant, from, to).n,
        (writers * each) as i64
    );
    // What the folder left is folded now; nothing differs from the records.
    let left = conn
        .transaction::<_, costdb::Error, _>(|c| RollupDriver::new(c).fold_deltas())
        .unwrap();
    assert!(moved + left >= (writers * each) as i64);
    let range = RollupRange {
        tenant_id: Some(tenant.to_string()),
        ..RollupRange::default()
    };
    let differences = RollupDriver::new(&mut conn)
        .fetch_differences(&range)
        .unwrap();
    assert_eq!(differences, vec![]);
}

#[test]
fn a_rebuild_takes_the_pending_deltas_in() {
    let _turn = deltas_turn();
    let mut conn = db::connect(common::database_url()).unwrap();
    let tenant = common::tenant();
    let at = Utc.with_ymd_and_hms(2026, 7, 9, 15, 20, 0).unwrap();
    conn.transaction::<_, costdb::Error, _>(|c| {
        let mut d = CostWriteDriver::new(c);
        for n in 0..3 {
            d.insert_cost_record(&CostInput {
                created_at: Some(at + Duration::minutes(n)),
                ..base(&tenant, "o3", 2.0)
            })?;
        }
        Ok(())
    })
    .unwrap();
    let range = RollupRange {
        tenant_id: Some(tenant.to_string()),
        from: Some(at.date_naive()),
        to: Some(at.date_naive()),
    };
    let summary = conn
        .transaction::<_, costdb::Error, _>(|c| RollupDriver::new(c).rebuild(&range))
        .unwrap();
    assert_eq!((summary.hourly_rows, summary.daily_rows), (1, 1));
    let deltas: RawSums = diesel::sql_query(
        "SELECT count(*) AS n, coalesce(sum(cost_cents), 0) AS cents \
         FROM cost_rollup_deltas WHERE tenant_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(tenant.as_str())
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(
        deltas,
        RawSums { n: 0, cents: 0.0 },
        "the records' sums hold them now"
    );
    let spend = AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_spend(
            &tenant,
            TimeWindow::new(at - Duration::hours(1), at + Duration::hours(1)).unwrap(),
            TimeBucket::Day,
        )
        .unwrap();
    assert_eq!(
        spend
            .iter()
            .map(|b| (b.requests, b.spend_cents))
            .collect::<Vec<_>>(),
        [(3, 6.0)],
        "counted once, not once as a delta and once in the rebuilt rollup"
    );
    assert_eq!(
        RollupDriver::new(&mut conn)
            .fetch_differences(&range)
            .unwrap(),
        vec![]
    );
}

#[test]
fn the_delta_tables_are_vacuumed_outside_a_transaction_and_refused_inside_one() {
    let mut conn = db::connect(common::database_url()).unwrap();
    let inside = conn.transaction(costdb::drivers::vacuum_deltas);
    assert!(
        costdb::report(&inside.unwrap_err()).contains("VACUUM cannot run inside a transaction"),
    );
    costdb::drivers::vacuum_deltas(&mut conn).unwrap();
}

#[test]
fn the_bulk_insert_tells_the_trigger_its_shape_and_leaves_no_hint_behind() {
    let _turn = deltas_turn();
    let (a, b) = (common::tenant(), common::tenant());
    let at = Utc.with_ymd_and_hms(2026, 9, 15, 8, 0, 0).unwrap();
    let mut conn = db::connect(common::database_url()).unwrap();
    // Six records of two tenants, a request id repeated: the statement is the bulk
    // insert (binary COPY cannot skip the repeat), given three records a tenant.
    let given: Vec<CostInput> = (0..6)
        .map(|i| CostInput {
            request_id: Some(format!("shape-{}", i.min(4))),
            created_at: Some(at + Duration::seconds(i)),
            ..base(if i < 3 { &a } else { &b }, "o3", 1.0)
        })
        .collect();
    conn.transaction(|c| {
        let recorded = CostWriteDriver::new(c).record_costs(&given)?;
        assert_eq!(recorded.len(), 6);
        // Then, in the same transaction, a statement of one record a tenant: counted by
        // the trigger itself, it writes narrow rows (a hint left behind would make them
        // batch rows).
        one_record_each(c, [&a, &b], at)?;
        Ok::<_, costdb::Error>(())
    })
    .unwrap();
    // a: three records in one batch row; b: two (its repeat skipped) in one.
    for (tenant, pending) in [(&a, 4), (&b, 3)] {
        assert_eq!(tenant_rows(&mut conn, BATCH_ROWS, tenant), 1);
        assert_eq!(tenant_rows(&mut conn, SINGLE_ROWS, tenant), 1);
        assert_eq!(tenant_rows(&mut conn, PENDING, tenant), pending);
    }
    assert_eq!(differences(&mut conn, Some(&b)), vec![]);
}

#[test]
fn the_copy_tells_the_trigger_its_shape_in_its_savepoint_and_leaves_no_hint_behind() {
    let _turn = deltas_turn();
    let (a, b) = (common::tenant(), common::tenant());
    let at = Utc.with_ymd_and_hms(2026, 9, 16, 8, 0, 0).unwrap();
    let mut conn = db::connect(common::database_url()).unwrap();
    let records = |prefix: &str| -> Vec<CostInput> {
        (0..6)
            .map(|i| CostInput {
                request_id: Some(format!("{prefix}-{i}")),
                created_at: Some(at + Duration::seconds(i)),
                ..base(if i < 3 { &a } else { &b }, "o3", 1.0)
            })
            .collect()
    };
    conn.transaction(|c| {
        // New request ids: the COPY, told three records a tenant (one batch row each).
        assert!(CostWriteDriver::new(c)
            .record_costs(&records("copy"))?
            .iter()
            .all(|r| r.inserted));
        one_record_each(c, [&a, &b], at)?;
        // The same ids again: the COPY fails in its savepoint (its shape undone with
        // it) and the bulk insert skips them all, telling its own shape.
        assert!(CostWriteDriver::new(c)
            .record_costs(&records("copy"))?
            .iter()
            .all(|r| !r.inserted));
        one_record_each(c, [&a, &b], at)?;
        Ok::<_, costdb::Error>(())
    })
    .unwrap();
    // Each tenant: three records in a batch row, two single ones in narrow rows (a hint
    // left behind would have made them batch rows).
    for tenant in [&a, &b] {
        assert_eq!(tenant_rows(&mut conn, BATCH_ROWS, tenant), 1);
        assert_eq!(tenant_rows(&mut conn, SINGLE_ROWS, tenant), 2);
        assert_eq!(tenant_rows(&mut conn, PENDING, tenant), 5);
    }
    let hints: (String, String) = diesel::select((
        diesel::dsl::sql::<diesel::sql_types::Text>(
            "coalesce(current_setting('costdb.statement_shape', true), '')",
        ),
        diesel::dsl::sql::<diesel::sql_types::Text>(
            "coalesce(current_setting('costdb.rollups', true), '')",
        ),
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(hints, (String::new(), String::new()));
    assert_eq!(differences(&mut conn, Some(&a)), vec![]);
}

#[test]
fn a_small_statement_appends_deltas_by_tenant_or_by_record_and_a_large_one_folds_as_it_lands() {
    let _turn = deltas_turn();
    let (a, b) = (common::tenant(), common::tenant());
    let at = Utc.with_ymd_and_hms(2026, 9, 14, 12, 0, 0).unwrap();
    let mut conn = db::connect(common::database_url()).unwrap();
    let small: Vec<CostInput> = (0..6)
        .map(|i| CostInput {
            created_at: Some(at + Duration::seconds(i)),
            ..base(if i % 2 == 0 { &a } else { &b }, "o3", 1.0)
        })
        .collect();
    conn.transaction(|c| CostWriteDriver::new(c).record_costs(&small))
        .unwrap();
    // Three records a tenant: one batch row each.
    let delta_records = PENDING;
    let hourly = "SELECT count(*) AS n FROM cost_rollup_hourly WHERE tenant_id = $1";
    for tenant in [&a, &b] {
        assert_eq!(tenant_rows(&mut conn, BATCH_ROWS, tenant), 1);
        assert_eq!(tenant_rows(&mut conn, SINGLE_ROWS, tenant), 0);
        assert_eq!(tenant_rows(&mut conn, delta_records, tenant), 3);
        assert_eq!(tenant_rows(&mut conn, hourly, tenant), 0);
    }
    // One record a tenant: a narrow row each.
    let one_each = [base(&a, "o3", 1.0), base(&b, "o3", 1.0)].map(|c| CostInput {
        created_at: Some(at),
        ..c
    });
    conn.transaction(|c| CostWriteDriver::new(c).record_costs(&one_each))
        .unwrap();
    for tenant in [&a, &b] {
        assert_eq!(tenant_rows(&mut conn, BATCH_ROWS, tenant), 1);
        assert_eq!(tenant_rows(&mut conn, SINGLE_ROWS, tenant), 1);
        assert_eq!(tenant_rows(&mut conn, delta_records, tenant), 4);
        assert_eq!(tenant_rows(&mut conn, hourly, tenant), 0);
    }

    // One chunk of the bulk path, 5,000 records over the 83 minutes before `at`: folded
    // into its three hours at once, no delta.
    let large: Vec<CostInput> = (0..5000)
        .map(|i| CostInput {
            created_at: Some(at - Duration::seconds(i)),
            ..base(&a, "o3", 0.5)
        })
        .collect();
    conn.transaction(|c| CostWriteDriver::new(c).record_costs(&large))
        .unwrap();
    assert_eq!(tenant_rows(&mut conn, delta_records, &a), 4);
    assert_eq!(tenant_rows(&mut conn, hourly, &a), 3);
    let day = TimeWindow::new(at - Duration::hours(12), at + Duration::hours(12)).unwrap();
    let spend = AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_spend(&a, day, TimeBucket::Day)
        .unwrap();
    assert_eq!((spend[0].requests, spend[0].spend_cents), (5004, 2504.0));

    // A threshold below one is refused, and the statement stores nothing.
    conn.batch_execute("SET costdb.fold_from = 0").unwrap();
    let err = conn
        .transaction(|c| CostWriteDriver::new(c).record_costs(&small))
        .unwrap_err();
    assert!(
        costdb::report(&err).contains("costdb.fold_from is 0"),
        "{err}"
    );
    let stored: i64 = cr::table
        .filter(cr::tenant_id.eq(a.as_str()))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(stored, 5004);
}

#[test]
fn single_records_of_this_and_the_previous_release_count_once_and_clear_their_markers() {
    let tenant = common::tenant();
    let at = Utc.with_ymd_and_hms(2026, 4, 2, 23, 59, 59).unwrap();
    let mut conn = db::connect(common::database_url()).unwrap();
    // A plain INSERT after each single record in the same transaction: its key must be
    // claimed and its sums kept, so no marker of the statement before may be left set.
    let plain = |c: &mut PgConnection, request: &str| {
        diesel::sql_query(
            "INSERT INTO cost_records (id, tenant_id, request_id, model, cost_cents, created_at) \
             VALUES ($1, $2, $3, 'o3', 1.25, $4)",
        )
        .bind::<diesel::sql_types::Text, _>(costdb::models::ids::cost_record_id())
        .bind::<diesel::sql_types::Text, _>(tenant.as_str())
        .bind::<diesel::sql_types::Text, _>(request)
        .bind::<diesel::sql_types::Timestamptz, _>(at)
        .execute(c)
    };
    conn.transaction(|c| {
        assert_eq!(previous_release_record(c, &tenant, "old", (at, 2.5)), 1);
        assert_eq!(previous_release_record(c, &tenant, "old", (at, 2.5)), 0);
        plain(c, "after-old")?;
        let mut d = CostWriteDriver::new(c);
        d.insert_cost_record(&CostInput {
            request_id: Some("new".into()),
            created_at: Some(at),
            ..base(&tenant, "o3", 4.0)
        })?;
        d.insert_cost_record(&CostInput {
            created_at: Some(at),
            ..base(&tenant, "o3", 8.0)
        })?;
        plain(c, "after-new")?;
        Ok::<_, costdb::Error>(())
    })
    .unwrap();
    let keys: Vec<String> = k::table
        .filter(k::tenant_id.eq(tenant.as_str()))
        .select(k::request_id)
        .order(k::request_id)
        .load(&mut conn)
        .unwrap();
    assert_eq!(keys, ["after-new", "after-old", "new", "old"]);
    // A repeated plain INSERT of a claimed key is refused: the claim is the trigger's.
    assert!(conn.transaction(|c| plain(c, "after-new")).is_err());
    let day = TimeWindow::new(at - Duration::hours(1), at + Duration::hours(1)).unwrap();
    let spend = AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_spend(&tenant, day, TimeBucket::Day)
        .unwrap();
    assert_eq!(
        spend
            .iter()
            .map(|s| (s.requests, s.spend_cents))
            .collect::<Vec<_>>(),
        [(5, 2.5 + 1.25 + 4.0 + 8.0 + 1.25)]
    );
    let range = RollupRange {
        tenant_id: Some(tenant.as_str().into()),
        ..RollupRange::default()
    };
    assert_eq!(
        RollupDriver::new(&mut conn)
            .fetch_differences(&range)
            .unwrap(),
        vec![]
    );
}

#[test]
fn the_migration_to_delta_batches_keeps_the_single_deltas_and_its_revert_folds_the_batches() {
    let url = common::fresh_database();
    let mut conn = db::connect(&url).unwrap();
    db::run_migrations(&mut conn).unwrap();
    common::revert_through(&mut conn, "delta_batches");
    let tenant = common::tid("t0");
    let at = Utc.with_ymd_and_hms(2026, 4, 1, 10, 15, 0).unwrap();
    // Single records as migration 24's release wrote them (this release's statement marks
    // them for migration 26's trigger).
    conn.transaction(|c| {
        for n in 0..3 {
            let stored = previous_release_record(
                c,
                &tenant,
                &format!("r{n}"),
                (at + Duration::minutes(n), 2.5),
            );
            assert_eq!(stored, 1);
        }
        Ok::<_, diesel::result::Error>(())
    })
    .unwrap();
    assert_eq!(tenant_rows(&mut conn, SINGLE_ROWS, &tenant), 3);
    let day = TimeWindow::new(at - Duration::hours(10), at + Duration::hours(10)).unwrap();
    let spend = |conn: &mut PgConnection| day_spend(conn, &tenant, day);
    assert_eq!(spend(&mut conn), (3, 7.5));

    // Forward: migration 24's deltas stay where they are, and reads still add them.
    db::run_migrations(&mut conn).unwrap();
    assert_eq!(tenant_rows(&mut conn, PENDING, &tenant), 3);
    assert_eq!(spend(&mut conn), (3, 7.5));
    assert_eq!(differences(&mut conn, None), vec![]);

    // A small statement's batch, then back: everything pending is folded, nothing lost.
    conn.transaction(|c| {
        CostWriteDriver::new(c).record_costs(&[
            CostInput {
                created_at: Some(at),
                ..base(&tenant, "o3", 1.0)
            },
            CostInput {
                created_at: Some(at),
                ..base(&tenant, "gpt-4o", 1.0)
            },
        ])
    })
    .unwrap();
    assert_eq!(tenant_rows(&mut conn, PENDING, &tenant), 5);
    common::revert_through(&mut conn, "delta_batches");
    assert_eq!(tenant_rows(&mut conn, SINGLE_ROWS, &tenant), 0);
    assert_eq!(spend(&mut conn), (5, 9.5));
    assert_eq!(differences(&mut conn, None), vec![]);
    db::run_migrations(&mut conn).unwrap();
    assert_eq!(spend(&mut conn), (5, 9.5));
}

#[test]
fn pending_batches_stay_pending_and_counted_across_the_migration_that_drops_their_ids() {
    let url = common::fresh_database();
    let mut conn = db::connect(&url).unwrap();
    db::run_migrations(&mut conn).unwrap();
    let tenant = common::tid("t0");
    let at = Utc.with_ymd_and_hms(2026, 4, 1, 10, 15, 0).unwrap();
    // Three records of one tenant in one statement: one batch row of three.
    let batch = |conn: &mut PgConnection, cents: f64| {
        let costs: Vec<CostInput> = ["gpt-4o", "o3", "gpt-4o"]
            .into_iter()
            .map(|model| CostInput {
                created_at: Some(at),
                ..base(&tenant, model, cents)
            })
            .collect();
        conn.transaction(|c| CostWriteDriver::new(c).record_costs(&costs))
            .unwrap();
    };
    let day = TimeWindow::new(at - Duration::hours(10), at + Duration::hours(10)).unwrap();
    let spend = |conn: &mut PgConnection| day_spend(conn, &tenant, day);
    batch(&mut conn, 1.5);
    assert_eq!(tenant_rows(&mut conn, BATCH_ROWS, &tenant), 1);

    // Back to numbered batches: the pending one is kept and numbered, and so is the
    // next statement's.
    common::revert_through(&mut conn, "batches_found_by_tenant");
    let numbered = "SELECT count(id) AS n FROM cost_rollup_delta_batches WHERE tenant_id = $1";
    assert_eq!(tenant_rows(&mut conn, numbered, &tenant), 1);
    assert_eq!(spend(&mut conn), (3, 4.5));
    batch(&mut conn, 2.0);
    assert_eq!(tenant_rows(&mut conn, numbered, &tenant), 2);

    // Forward again: both stay pending, every read still adds them, and they fold.
    db::run_migrations(&mut conn).unwrap();
    assert_eq!(tenant_rows(&mut conn, BATCH_ROWS, &tenant), 2);
    assert_eq!(tenant_rows(&mut conn, PENDING, &tenant), 6);
    assert_eq!(spend(&mut conn), (6, 10.5));
    assert_eq!(differences(&mut conn, None), vec![]);
    conn.transaction::<_, costdb::Error, _>(|c| RollupDriver::new(c).fold_deltas())
        .unwrap();
    assert_eq!(tenant_rows(&mut conn, PENDING, &tenant), 0);
    assert_eq!(spend(&mut conn), (6, 10.5));
    assert_eq!(differences(&mut conn, None), vec![]);
}
