//! AnalyticsReadDriver against a real PostgreSQL. Every expected bucket, count and sum is
//! computed here from the fixture itself.

mod common;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, TimeZone, Utc};
use common::assert_invalid;
use costdb::drivers::AnalyticsQuery;
use costdb::models::CostInput;
use costdb::models::{NewAosTrace, NewRun, TimeBucket};
use costdb::schema::{aos_traces, runs};
use costdb::types::{TenantId, TimeWindow};
use costdb::{drivers::AnalyticsReadDriver, drivers::CostWriteDriver};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, d, h, m, 0).unwrap()
}

fn trunc(t: DateTime<Utc>, bucket: TimeBucket) -> DateTime<Utc> {
    let step = match bucket {
        TimeBucket::Hour => Duration::hours(1),
        TimeBucket::Day => Duration::days(1),
    };
    t.duration_trunc(step).unwrap()
}

/// A day and a half of calls for `tenant`, with edge instants around the window.
fn fixture(tenant: &TenantId) -> Vec<CostInput> {
    let models = ["gpt-4o", "claude", "gpt-4o-mini"];
    let features = [
        Some("support.chat"),
        None,
        Some("untagged"),
        Some("search.rank"),
    ];
    let mut out = Vec::new();
    for i in 0..60u32 {
        let when = at(10, 0, 0) + Duration::minutes(i64::from(i) * 37);
        out.push(CostInput {
            tenant_id: tenant.into(),
            model: models[(i % 3) as usize].into(),
            feature_tag: features[(i % 4) as usize].map(Into::into),
            input_tokens: 100 + i as i32,
            output_tokens: 10 * i as i32,
            cost_cents: 0.25 * f64::from(i) + 1.0,
            created_at: Some(when),
            ..CostInput::default()
        });
    }
    out
}

fn window() -> TimeWindow {
    TimeWindow::new(at(10, 0, 0), at(11, 12, 0)).unwrap()
}

fn in_window(rows: &[CostInput], w: TimeWindow) -> impl Iterator<Item = &CostInput> {
    rows.iter()
        .filter(move |r| r.created_at.unwrap() >= w.from && r.created_at.unwrap() < w.to)
}

fn seed(conn: &mut PgConnection, rows: &[CostInput]) {
    CostWriteDriver::new(conn).record_costs(rows).unwrap();
}

/// A new tenant's fixture, seeded beside another tenant's (which must never show up): the
/// tenant and its rows.
fn seed_beside_another(conn: &mut PgConnection) -> (TenantId, Vec<CostInput>) {
    let (tenant, other) = (common::tenant(), common::tenant());
    let rows = fixture(&tenant);
    seed(conn, &rows);
    seed(conn, &fixture(&other));
    (tenant, rows)
}

#[test]
fn cost_buckets_match_the_fixture_hourly_and_daily() {
    let mut conn = common::test_conn();
    let (tenant, rows) = seed_beside_another(&mut conn);
    let w = window();
    for bucket in [TimeBucket::Hour, TimeBucket::Day] {
        let mut expected: BTreeMap<DateTime<Utc>, (i64, i64, f64, i64, i64)> = BTreeMap::new();
        for r in in_window(&rows, w) {
            let e = expected
                .entry(trunc(r.created_at.unwrap(), bucket))
                .or_default();
            e.0 += 1;
            e.1 += i64::from(r.input_tokens + r.output_tokens);
            e.2 += r.cost_cents;
            e.3 += i64::from(r.input_tokens);
            e.4 += i64::from(r.output_tokens);
        }
        let mut d = AnalyticsReadDriver::new(&mut conn);
        let metrics = d.fetch_cost_metrics(&tenant, w, bucket).unwrap();
        let spend = d.fetch_cost_spend(&tenant, w, bucket).unwrap();
        assert_eq!(metrics.len(), expected.len(), "{bucket}");
        assert_eq!(spend.len(), expected.len());
        for ((m, s), (start, e)) in metrics.iter().zip(&spend).zip(&expected) {
            assert_eq!((m.bucket, m.requests, m.tokens), (*start, e.0, e.1));
            assert_eq!((s.bucket, s.requests), (*start, e.0));
            assert!(
                (s.spend_cents - e.2).abs() < 1e-9,
                "{} vs {}",
                s.spend_cents,
                e.2
            );
            assert_eq!((s.input_tokens, s.output_tokens), (e.3, e.4));
        }
        if bucket == TimeBucket::Day {
            assert_eq!(metrics.len(), 2);
            assert_eq!(metrics[0].bucket, at(10, 0, 0));
        }
    }
}

#[test]
fn model_spend_per_bucket_matches_the_fixture() {
    let mut conn = common::test_conn();
    let (tenant, rows) = seed_beside_another(&mut conn);
    let w = window();
    for bucket in [TimeBucket::Hour, TimeBucket::Day] {
        let mut expected: BTreeMap<(DateTime<Utc>, String), (f64, i64)> = BTreeMap::new();
        for r in in_window(&rows, w) {
            let e = expected
                .entry((trunc(r.created_at.unwrap(), bucket), r.model.clone()))
                .or_default();
            e.0 += r.cost_cents;
            e.1 += 1;
        }
        let got = AnalyticsReadDriver::new(&mut conn)
            .fetch_model_spend(&tenant, w, bucket)
            .unwrap();
        let got: Vec<_> = got
            .into_iter()
            .map(|b| ((b.bucket, b.model), (b.spend_cents, b.requests)))
            .collect();
        let expected: Vec<_> = expected.into_iter().collect();
        assert_eq!(got.len(), expected.len(), "{bucket:?}");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.0, e.0);
            assert_eq!(g.1 .1, e.1 .1);
            assert!((g.1 .0 - e.1 .0).abs() < 1e-9, "{g:?} {e:?}");
        }
    }
    assert_invalid(TenantId::new(""), "tenant_id");
}

#[test]
fn a_record_at_from_is_in_and_a_record_at_to_is_out() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let w = TimeWindow::new(at(10, 6, 0), at(10, 8, 0)).unwrap();
    let mut rows = Vec::new();
    for (when, cents) in [
        (w.from - Duration::microseconds(1), 1.0),
        (w.from, 2.0),
        (w.to - Duration::microseconds(1), 4.0),
        (w.to, 8.0),
    ] {
        rows.push(CostInput {
            tenant_id: tenant.to_string(),
            model: "m".into(),
            cost_cents: cents,
            created_at: Some(when),
            ..CostInput::default()
        });
    }
    seed(&mut conn, &rows);
    let spend = AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_spend(&tenant, w, TimeBucket::Hour)
        .unwrap();
    let got: Vec<_> = spend
        .iter()
        .map(|s| (s.bucket, s.requests, s.spend_cents))
        .collect();
    assert_eq!(got, vec![(at(10, 6, 0), 1, 2.0), (at(10, 7, 0), 1, 4.0)]);
}

#[test]
fn buckets_are_utc_whatever_the_session_time_zone() {
    let mut conn = common::test_conn();
    // +05:30: 20:00 UTC on the 10th is already the 11th there, and hours are offset.
    conn.batch_execute("SET TIME ZONE 'Asia/Kolkata'").unwrap();
    let tenant = common::tenant();
    let rows: Vec<CostInput> = [at(10, 20, 15), at(10, 23, 59), at(11, 0, 30)]
        .into_iter()
        .map(|t| CostInput {
            tenant_id: tenant.to_string(),
            model: "m".into(),
            cost_cents: 1.0,
            created_at: Some(t),
            ..CostInput::default()
        })
        .collect();
    seed(&mut conn, &rows);
    let w = TimeWindow::new(at(10, 0, 0), at(12, 0, 0)).unwrap();
    let mut d = AnalyticsReadDriver::new(&mut conn);
    let days: Vec<_> = d
        .fetch_cost_metrics(&tenant, w, TimeBucket::Day)
        .unwrap()
        .into_iter()
        .map(|b| (b.bucket, b.requests))
        .collect();
    assert_eq!(days, vec![(at(10, 0, 0), 2), (at(11, 0, 0), 1)]);
    let hours: Vec<_> = d
        .fetch_cost_metrics(&tenant, w, TimeBucket::Hour)
        .unwrap()
        .into_iter()
        .map(|b| b.bucket)
        .collect();
    assert_eq!(hours, vec![at(10, 20, 0), at(10, 23, 0), at(11, 0, 0)]);
}

#[test]
fn llm_usage_counts_input_plus_output_tokens_of_runs() {
    let mut conn = common::test_conn();
    let (tenant, other) = (common::tenant(), common::tenant());
    let fixture = [
        (at(10, 1, 5), Some(100), Some(50)),
        (at(10, 1, 40), None, Some(7)),
        (at(10, 3, 0), Some(9), None),
        (at(10, 3, 1), None, None),
    ];
    let rows: Vec<NewRun> = fixture
        .iter()
        .enumerate()
        .map(|(i, (t, inp, out))| NewRun {
            id: format!("{tenant}-{i}"),
            tenant_id: Some(tenant.to_string()),
            created_at: *t,
            input_tokens: *inp,
            output_tokens: *out,
        })
        .chain([
            NewRun {
                id: format!("{other}-x"),
                tenant_id: Some(other.to_string()),
                created_at: at(10, 1, 0),
                input_tokens: Some(1),
                output_tokens: Some(1),
            },
            NewRun {
                id: format!("{tenant}-null"),
                tenant_id: None,
                created_at: at(10, 1, 0),
                input_tokens: Some(1),
                output_tokens: Some(1),
            },
        ])
        .collect();
    diesel::insert_into(runs::table)
        .values(&rows)
        .execute(&mut conn)
        .unwrap();
    let mut expected: BTreeMap<DateTime<Utc>, (i64, i64)> = BTreeMap::new();
    for (t, inp, out) in fixture {
        let e = expected.entry(trunc(t, TimeBucket::Hour)).or_default();
        e.0 += 1;
        e.1 += i64::from(inp.unwrap_or(0) + out.unwrap_or(0));
    }
    let got = AnalyticsReadDriver::new(&mut conn)
        .fetch_llm_usage(&tenant, window(), TimeBucket::Hour)
        .unwrap();
    let got: BTreeMap<_, _> = got
        .into_iter()
        .map(|b| (b.bucket, (b.requests, b.tokens)))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn worker_executions_are_counted_from_traces() {
    let mut conn = common::test_conn();
    let (tenant, other) = (common::tenant(), common::tenant());
    let times = [at(10, 2, 0), at(10, 2, 59), at(11, 4, 0), at(12, 0, 0)];
    let traces: Vec<NewAosTrace> = times
        .iter()
        .enumerate()
        .map(|(i, t)| NewAosTrace {
            trace_id: format!("{tenant}-{i}"),
            tenant_id: tenant.to_string(),
            created_at: *t,
        })
        .chain([NewAosTrace {
            trace_id: format!("{other}-0"),
            tenant_id: other.to_string(),
            created_at: at(10, 2, 0),
        }])
        .collect();
    diesel::insert_into(aos_traces::table)
        .values(&traces)
        .execute(&mut conn)
        .unwrap();
    let w = window();
    let mut expected: BTreeMap<DateTime<Utc>, i64> = BTreeMap::new();
    for t in times.iter().filter(|t| **t >= w.from && **t < w.to) {
        *expected.entry(trunc(*t, TimeBucket::Day)).or_default() += 1;
    }
    let got: BTreeMap<_, _> = AnalyticsReadDriver::new(&mut conn)
        .fetch_worker_execution(&tenant, w, TimeBucket::Day)
        .unwrap()
        .into_iter()
        .map(|b| (b.bucket, b.requests))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn breakdowns_have_one_row_per_label_largest_first() {
    let mut conn = common::test_conn();
    let (tenant, rows) = seed_beside_another(&mut conn);
    let w = window();
    let mut by_model: BTreeMap<String, (f64, i64, i64, i64)> = BTreeMap::new();
    let mut by_feature: BTreeMap<Option<String>, (f64, i64)> = BTreeMap::new();
    for r in in_window(&rows, w) {
        let m = by_model.entry(r.model.clone()).or_default();
        m.0 += r.cost_cents;
        m.1 += 1;
        m.2 += i64::from(r.input_tokens);
        m.3 += i64::from(r.output_tokens);
        let f = by_feature.entry(r.feature_tag.clone()).or_default();
        f.0 += r.cost_cents;
        f.1 += 1;
    }
    let mut d = AnalyticsReadDriver::new(&mut conn);
    let models = d.fetch_cost_by_model(&tenant, w).unwrap();
    assert_eq!(models.len(), by_model.len());
    for pair in models.windows(2) {
        assert!(pair[0].spend_cents >= pair[1].spend_cents);
    }
    for m in &models {
        let e = by_model[&m.model];
        assert!((m.spend_cents - e.0).abs() < 1e-9);
        assert_eq!(
            (m.requests, m.input_tokens, m.output_tokens),
            (e.1, e.2, e.3)
        );
    }
    let features = d.fetch_cost_by_feature(&tenant, w).unwrap();
    assert_eq!(features.len(), by_feature.len(), "{features:?}");
    // The untagged group and a real tag named "untagged" are two different rows.
    assert!(features.iter().any(|f| f.feature_tag.is_none()));
    assert!(features
        .iter()
        .any(|f| f.feature_tag.as_deref() == Some("untagged")));
    for pair in features.windows(2) {
        assert!(pair[0].spend_cents >= pair[1].spend_cents);
    }
    for f in &features {
        let e = by_feature[&f.feature_tag];
        assert!((f.spend_cents - e.0).abs() < 1e-9);
        assert_eq!(f.requests, e.1);
    }
}

#[test]
fn equal_spend_is_ordered_by_label() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let rows: Vec<CostInput> = ["b-model", "a-model", "c-model"]
        .into_iter()
        .map(|m| CostInput {
            tenant_id: tenant.to_string(),
            model: m.into(),
            feature_tag: Some(m.into()),
            cost_cents: 5.0,
            created_at: Some(at(10, 1, 0)),
            ..CostInput::default()
        })
        .collect();
    seed(&mut conn, &rows);
    let mut d = AnalyticsReadDriver::new(&mut conn);
    let models: Vec<_> = d
        .fetch_cost_by_model(&tenant, window())
        .unwrap()
        .into_iter()
        .map(|m| m.model)
        .collect();
    assert_eq!(models, ["a-model", "b-model", "c-model"]);
    let tags: Vec<_> = d
        .fetch_cost_by_feature(&tenant, window())
        .unwrap()
        .into_iter()
        .map(|f| f.feature_tag.unwrap())
        .collect();
    assert_eq!(tags, ["a-model", "b-model", "c-model"]);
}

#[test]
fn with_sequential_scans_disabled_every_query_uses_a_tenant_index() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    seed(&mut conn, &fixture(&tenant));
    conn.batch_execute("SET LOCAL enable_seqscan = off")
        .unwrap();
    let mut d = AnalyticsReadDriver::new(&mut conn);
    for query in AnalyticsQuery::ALL {
        let plan = d
            .explain(query, &tenant, window(), TimeBucket::Hour)
            .unwrap()
            .join("\n");
        assert!(!plan.contains("Seq Scan"), "{query:?}:\n{plan}");
        // The rollup by its primary key (tenant first), the other system's tables by
        // their tenant index.
        let index_prefix = match query.table() {
            "cost_rollup_hourly" => "cost_rollup_hourly_pkey".to_owned(),
            table => format!("ix_{table}_tenant"),
        };
        assert!(
            plan.contains(&index_prefix),
            "{query:?} should use {index_prefix}*:\n{plan}"
        );
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let t = at(10, 0, 0);
    assert_invalid(TimeWindow::new(t, t), "window");
    assert_invalid(TimeWindow::new(t, t - Duration::seconds(1)), "window");
    let mut conn = common::test_conn();
    let mut d = AnalyticsReadDriver::new(&mut conn);
    // Tenant ids that fit no column are refused when they are made.
    assert_invalid(TenantId::new(""), "tenant_id");
    assert_invalid(TenantId::new("x".repeat(65)), "tenant_id");
    let acme = common::tid("acme");
    // A window built by hand past the constructor is checked again.
    let reversed = TimeWindow { from: t, to: t };
    assert_invalid(
        d.fetch_cost_spend(&acme, reversed, TimeBucket::Hour),
        "window",
    );
    assert_invalid(
        d.fetch_llm_usage(&acme, reversed, TimeBucket::Hour),
        "window",
    );
    // Instants PostgreSQL cannot store, and NUL in text, never reach it.
    let ancient = TimeWindow {
        from: DateTime::<Utc>::MIN_UTC,
        to: t,
    };
    assert_invalid(TimeWindow::new(ancient.from, t), "window.from");
    assert_invalid(
        d.fetch_cost_spend(&acme, ancient, TimeBucket::Day),
        "window.from",
    );
    assert_invalid(TenantId::new("t\0"), "tenant_id");
    // The connection is still usable.
    assert!(d.fetch_cost_by_model(&acme, window()).unwrap().is_empty());
}
