//! CostAnomalyDriver's read half against a real PostgreSQL: budgets, finding an open
//! anomaly, and the one-per-day upsert under races and at UTC midnight.

mod common;

use std::sync::{Arc, Barrier};

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::assert_invalid;
use costdb::drivers::{AnomalyInput, AnomalyKey, BudgetLimits};
use costdb::models::{AnomalyType, DerivedCause, EntityType, Severity};
use costdb::types::{BudgetScope, EntityKey, TenantId};
use costdb::{drivers::CostAnomalyDriver, drivers::CostWriteDriver, Error};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::json;

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, d, 0, 0, 0).unwrap()
}

/// A user, or the tenant as a whole for `None`.
fn who(user: Option<&str>) -> EntityKey {
    EntityKey {
        entity_type: if user.is_some() {
            EntityType::User
        } else {
            EntityType::Tenant
        },
        entity_id: user.map(Into::into),
    }
}

fn spike(user: Option<&str>, value: f64, at: DateTime<Utc>) -> AnomalyInput {
    AnomalyInput {
        key: AnomalyKey {
            anomaly_type: AnomalyType::UserSpike,
            entity: who(user),
        },
        severity: Severity::Medium,
        current_value_cents: value,
        expected_value_cents: 100.0,
        deviation_pct: value - 100.0,
        threshold_pct: 140.0,
        message: format!("spend {value}¢ against 100¢"),
        breach_count: 2,
        derived_cause: Some(DerivedCause::RetryLoop),
        metadata: Some(json!({ "value": value })),
        detected_at: at,
    }
}

#[test]
fn one_open_anomaly_per_key_and_utc_day() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut d = CostAnomalyDriver::new(&mut conn);
    let first = d
        .upsert_anomaly(
            &tenant,
            &spike(Some("u1"), 150.0, day(3) + Duration::hours(1)),
        )
        .unwrap();
    assert!(first.id.starts_with("ca_"));
    assert_eq!(
        (
            first.current_value_cents,
            first.severity,
            first.breach_count,
            first.resolved
        ),
        (150.0, Severity::Medium, Some(2), false)
    );
    // Later the same UTC day: the observation changes, the first detection stays.
    let mut later = spike(Some("u1"), 320.0, day(3) + Duration::hours(23));
    later.severity = Severity::High;
    later.expected_value_cents = 999.0;
    later.threshold_pct = 1.0;
    later.breach_count = 3;
    later.derived_cause = None;
    let second = d.upsert_anomaly(&tenant, &later).unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(
        (
            second.current_value_cents,
            second.severity,
            second.breach_count,
            second.derived_cause,
            second.metadata.clone(),
            second.message.clone()
        ),
        (
            320.0,
            Severity::High,
            Some(3),
            None,
            Some(json!({"value": 320.0})),
            later.message.clone()
        )
    );
    assert_eq!(
        (
            second.expected_value_cents,
            second.threshold_pct,
            second.detected_at
        ),
        (100.0, 140.0, first.detected_at)
    );
    // The last microsecond of the day is the same day; midnight is the next one.
    let last = d
        .upsert_anomaly(
            &tenant,
            &spike(Some("u1"), 1.0, day(4) - Duration::microseconds(1)),
        )
        .unwrap();
    assert_eq!(last.id, first.id);
    let next = d
        .upsert_anomaly(&tenant, &spike(Some("u1"), 2.0, day(4)))
        .unwrap();
    assert_ne!(next.id, first.id);
    // Another entity, the tenant as a whole, and another tenant are other anomalies.
    let other_user = d
        .upsert_anomaly(&tenant, &spike(Some("u2"), 5.0, day(3)))
        .unwrap();
    let whole = d
        .upsert_anomaly(&tenant, &spike(None, 5.0, day(3)))
        .unwrap();
    let whole_again = d
        .upsert_anomaly(&tenant, &spike(None, 6.0, day(3)))
        .unwrap();
    assert_eq!(
        whole.id, whole_again.id,
        "a tenant-wide anomaly is one row too"
    );
    let stranger = d
        .upsert_anomaly(&common::tenant(), &spike(Some("u1"), 5.0, day(3)))
        .unwrap();
    let distinct: std::collections::BTreeSet<_> =
        [&first.id, &next.id, &other_user.id, &whole.id, &stranger.id]
            .into_iter()
            .collect();
    assert_eq!(distinct.len(), 5);
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_anomalies", &tenant),
        4
    );

    // A resolved anomaly does not block a new one the same day.
    conn.batch_execute(&format!(
        "UPDATE cost_anomalies SET resolved = true WHERE id = '{}'",
        next.id
    ))
    .unwrap();
    let reopened = CostAnomalyDriver::new(&mut conn)
        .upsert_anomaly(
            &tenant,
            &spike(Some("u1"), 9.0, day(4) + Duration::hours(2)),
        )
        .unwrap();
    assert_ne!(reopened.id, next.id);
}

#[test]
fn concurrent_detectors_upsert_one_row() {
    let tenant = common::tenant();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (tenant, barrier) = (tenant.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = costdb::db::connect(common::database_url()).unwrap();
                conn.transaction(|c| {
                    barrier.wait();
                    let at = day(5) + Duration::minutes(i);
                    CostAnomalyDriver::new(c)
                        .upsert_anomaly(&tenant, &spike(Some("u"), 200.0 + i as f64, at))
                })
                .unwrap()
            })
        })
        .collect();
    let rows: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(rows.iter().all(|r| r.id == rows[0].id));
    assert_eq!(
        common::count_for_tenant(&mut common::conn(), "cost_anomalies", &tenant),
        1
    );
}

#[test]
fn finding_and_budgets_are_scoped() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut d = CostAnomalyDriver::new(&mut conn);
    let user = d
        .upsert_anomaly(
            &tenant,
            &spike(Some("u1"), 150.0, day(6) + Duration::hours(8)),
        )
        .unwrap();
    let whole = d
        .upsert_anomaly(&tenant, &spike(None, 150.0, day(6) + Duration::hours(9)))
        .unwrap();
    let key = |entity: Option<&str>| AnomalyKey {
        anomaly_type: AnomalyType::UserSpike,
        entity: who(entity),
    };
    assert_eq!(
        d.fetch_open_anomaly(&tenant, &key(Some("u1")), day(6))
            .unwrap(),
        Some(user.clone())
    );
    assert_eq!(
        d.fetch_open_anomaly(&tenant, &key(None), day(6)).unwrap(),
        Some(whole)
    );
    let after = day(6) + Duration::hours(8) + Duration::microseconds(1);
    assert_eq!(
        d.fetch_open_anomaly(&tenant, &key(Some("u1")), after)
            .unwrap(),
        None
    );
    assert_eq!(
        d.fetch_open_anomaly(&common::tenant(), &key(Some("u1")), day(6))
            .unwrap(),
        None
    );
    conn.batch_execute(&format!(
        "UPDATE cost_anomalies SET resolved = true WHERE id = '{}'",
        user.id
    ))
    .unwrap();
    assert_eq!(
        CostAnomalyDriver::new(&mut conn)
            .fetch_open_anomaly(&tenant, &key(Some("u1")), day(6))
            .unwrap(),
        None
    );

    let limits = BudgetLimits {
        daily_limit_cents: Some(1_000),
        monthly_limit_cents: None,
        warn_threshold_pct: 80,
        hard_limit_enabled: true,
    };
    let mut w = CostWriteDriver::new(&mut conn);
    let t = w
        .upsert_budget(&tenant, &BudgetScope::Tenant, &limits)
        .unwrap();
    let f = w
        .upsert_budget(&tenant, &BudgetScope::Feature("a.b".into()), &limits)
        .unwrap();
    let u = w
        .upsert_budget(&tenant, &BudgetScope::User("u9".into()), &limits)
        .unwrap();
    w.upsert_budget(&common::tenant(), &BudgetScope::Tenant, &limits)
        .unwrap();
    conn.batch_execute(&format!(
        "UPDATE cost_budgets SET is_active = false WHERE id = '{}'",
        u.id
    ))
    .unwrap();
    let active = CostAnomalyDriver::new(&mut conn)
        .fetch_active_budgets(&tenant)
        .unwrap();
    let mut expected = vec![t.id, f.id];
    expected.sort();
    let mut got: Vec<String> = active.into_iter().map(|b| b.id).collect();
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let ok = spike(Some("u"), 150.0, day(7));
    let mut d = CostAnomalyDriver::new(&mut conn);
    let mut long = ok.clone();
    long.key.entity.entity_id = Some("e".repeat(129));
    let cases = [
        (
            AnomalyInput {
                current_value_cents: f64::NAN,
                ..ok.clone()
            },
            "current_value_cents",
        ),
        (
            AnomalyInput {
                expected_value_cents: -1.0,
                ..ok.clone()
            },
            "expected_value_cents",
        ),
        (
            AnomalyInput {
                deviation_pct: f64::INFINITY,
                ..ok.clone()
            },
            "deviation_pct",
        ),
        (
            AnomalyInput {
                threshold_pct: -5.0,
                ..ok.clone()
            },
            "threshold_pct",
        ),
        (
            AnomalyInput {
                message: "a\0".into(),
                ..ok.clone()
            },
            "message",
        ),
        (
            AnomalyInput {
                breach_count: 0,
                ..ok.clone()
            },
            "breach_count",
        ),
        (
            AnomalyInput {
                metadata: Some(json!([1])),
                ..ok.clone()
            },
            "metadata",
        ),
        (
            AnomalyInput {
                detected_at: DateTime::<Utc>::MIN_UTC,
                ..ok.clone()
            },
            "detected_at",
        ),
        (long, "entity_id"),
    ];
    for (bad, field) in cases {
        assert_invalid(d.upsert_anomaly(&tenant, &bad), field);
    }
    assert_invalid(TenantId::new(""), "tenant_id");
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_anomalies", &tenant),
        0
    );
    let mut bare = costdb::db::connect(common::database_url()).unwrap();
    assert!(matches!(
        CostAnomalyDriver::new(&mut bare).upsert_anomaly(&tenant, &ok),
        Err(Error::NoTransaction)
    ));
}

fn date(d: u32) -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 9, d).unwrap()
}

fn breach(user: Option<&str>, on: chrono::NaiveDate, value: f64) -> costdb::drivers::BreachInput {
    costdb::drivers::BreachInput {
        entity: who(user),
        breach_type: costdb::models::BreachType::AbsoluteSpike,
        breach_date: on,
        deviation_pct: value - 100.0,
        current_value_cents: value,
        baseline_value_cents: 100.0,
    }
}

#[test]
fn a_breach_run_longer_than_its_window_counts_only_the_window() {
    use chrono::NaiveDate;
    use costdb::models::BreachType;
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut d = CostAnomalyDriver::new(&mut conn);
    // Daily breaches from 02-20 to 03-05: a run of 14 days, across the end of February.
    let first = NaiveDate::from_ymd_opt(2026, 2, 20).unwrap();
    let last = NaiveDate::from_ymd_opt(2026, 3, 5).unwrap();
    let mut day = first;
    while day <= last {
        d.insert_breach_history(&tenant, &breach(Some("u1"), day, 150.0))
            .unwrap();
        day = day.succ_opt().unwrap();
    }
    let user = breach(Some("u1"), first, 0.0).entity;
    // The window is [today − 7 days, today]: 8 days at most, whatever the run's length.
    let window = 8;
    let mut today = first;
    while today <= last {
        let run_so_far = (today - first).num_days() + 1;
        assert_eq!(
            d.fetch_consecutive_breaches(&tenant, &user, BreachType::AbsoluteSpike, today)
                .unwrap(),
            run_so_far.min(window) as i32,
            "on {today}"
        );
        today = today.succ_opt().unwrap();
    }
}

#[test]
fn consecutive_breach_days_are_the_real_run_ending_today() {
    use costdb::models::BreachType;
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut d = CostAnomalyDriver::new(&mut conn);
    // Runs: the 1st alone; the 3rd and 4th; the 6th to the 10th. The tenant-wide entity
    // breaches on the 10th only.
    let days = [1, 3, 4, 6, 7, 8, 9, 10];
    for day in days {
        assert!(d
            .insert_breach_history(&tenant, &breach(Some("u1"), date(day), 150.0))
            .unwrap());
    }
    assert!(d
        .insert_breach_history(&tenant, &breach(None, date(10), 150.0))
        .unwrap());
    let user = breach(Some("u1"), date(1), 0.0).entity;
    let whole = breach(None, date(1), 0.0).entity;
    let count = |d: &mut CostAnomalyDriver, key, day| {
        d.fetch_consecutive_breaches(&tenant, key, BreachType::AbsoluteSpike, date(day))
            .unwrap()
    };
    // Expected: the length of the run of breach days ending on that day, from the fixture.
    for today in 1..=11u32 {
        let mut run = 0;
        while today > run && days.contains(&(today - run)) {
            run += 1;
        }
        assert_eq!(count(&mut d, &user, today), run as i32, "on the {today}th");
    }
    assert_eq!(count(&mut d, &whole, 10), 1);
    assert_eq!(count(&mut d, &whole, 9), 0);
    assert_eq!(
        d.fetch_consecutive_breaches(&tenant, &user, BreachType::SustainedDrift, date(10))
            .unwrap(),
        0
    );
    assert!(d
        .fetch_breach_exists_today(&tenant, &user, BreachType::AbsoluteSpike, date(4))
        .unwrap());
    assert!(!d
        .fetch_breach_exists_today(&tenant, &user, BreachType::AbsoluteSpike, date(5))
        .unwrap());
    assert!(!d
        .fetch_breach_exists_today(&tenant, &whole, BreachType::AbsoluteSpike, date(4))
        .unwrap());
    // The same day again updates the value and keeps the baseline: still one row.
    let mut again = breach(Some("u1"), date(10), 400.0);
    again.baseline_value_cents = 1.0;
    assert!(!d.insert_breach_history(&tenant, &again).unwrap());
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Double)]
        current_value_cents: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        baseline_value_cents: f64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT current_value_cents, baseline_value_cents FROM cost_breach_history \
         WHERE tenant_id = $1 AND entity_id = 'u1' AND breach_date = '2026-09-10'",
    )
    .bind::<diesel::sql_types::Text, _>(&tenant)
    .load(&mut conn)
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].current_value_cents, rows[0].baseline_value_cents),
        (400.0, 100.0)
    );
}

#[test]
fn drift_tracking_counts_days_survives_reset_and_reactivates() {
    use costdb::drivers::DriftObservation;
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let key = who(None);
    let obs = |day: u32, rolling: f64| DriftObservation {
        rolling_avg_cents: rolling,
        baseline_avg_cents: 100.0,
        drift_pct: rolling - 100.0,
        today: date(day),
    };
    let mut d = CostAnomalyDriver::new(&mut conn);
    assert_eq!(d.fetch_drift_tracking(&tenant, &key).unwrap(), None);
    assert_eq!(
        d.upsert_drift_tracking(&tenant, &key, &obs(1, 130.0))
            .unwrap(),
        1
    );
    assert_eq!(
        d.upsert_drift_tracking(&tenant, &key, &obs(1, 131.0))
            .unwrap(),
        1,
        "same day"
    );
    assert_eq!(
        d.upsert_drift_tracking(&tenant, &key, &obs(2, 132.0))
            .unwrap(),
        2
    );
    assert_eq!(
        d.upsert_drift_tracking(&tenant, &key, &obs(3, 133.0))
            .unwrap(),
        3
    );
    let t = d.fetch_drift_tracking(&tenant, &key).unwrap().unwrap();
    assert_eq!(
        (
            t.drift_days_count,
            t.first_drift_date,
            t.last_check_date,
            t.rolling_7d_avg_cents,
            t.is_active
        ),
        (3, date(1), date(3), 133.0, true)
    );
    // A gap starts the count again.
    assert_eq!(
        d.upsert_drift_tracking(&tenant, &key, &obs(5, 140.0))
            .unwrap(),
        1
    );
    let t = d.fetch_drift_tracking(&tenant, &key).unwrap().unwrap();
    assert_eq!((t.first_drift_date, t.last_check_date), (date(5), date(5)));
    // Reset, then drift again: the same row comes back active, counting from 1.
    assert_eq!(d.reset_drift_tracking(&tenant, &key).unwrap(), 1);
    assert_eq!(d.fetch_drift_tracking(&tenant, &key).unwrap(), None);
    assert_eq!(d.reset_drift_tracking(&tenant, &key).unwrap(), 0);
    assert_eq!(
        d.upsert_drift_tracking(&tenant, &key, &obs(6, 150.0))
            .unwrap(),
        1
    );
    let back = d.fetch_drift_tracking(&tenant, &key).unwrap().unwrap();
    assert_eq!(
        (back.id.clone(), back.first_drift_date),
        (t.id.clone(), date(6))
    );
    // An explicit update, by the tenant only.
    let updated = d
        .update_drift_tracking(&tenant, &back.id, 4, &obs(7, 160.0))
        .unwrap();
    assert_eq!(
        (
            updated.drift_days_count,
            updated.last_check_date,
            updated.rolling_7d_avg_cents
        ),
        (4, date(7), 160.0)
    );
    assert!(matches!(
        d.update_drift_tracking(&common::tenant(), &back.id, 4, &obs(7, 1.0)),
        Err(Error::NotFound { .. })
    ));
    // Another entity has its own tracker.
    let user = who(Some("u1"));
    assert_eq!(
        d.upsert_drift_tracking(&tenant, &user, &obs(7, 1.0))
            .unwrap(),
        1
    );
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_drift_tracking", &tenant),
        2
    );
}

#[test]
fn concurrent_breaches_and_drift_days_leave_one_row_each() {
    use costdb::drivers::DriftObservation;
    let tenant = common::tenant();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (tenant, barrier) = (tenant.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = costdb::db::connect(common::database_url()).unwrap();
                conn.transaction::<_, Error, _>(|c| {
                    barrier.wait();
                    let mut d = CostAnomalyDriver::new(c);
                    d.insert_breach_history(&tenant, &breach(Some("u"), date(12), 200.0))?;
                    let key = who(None);
                    let obs = DriftObservation {
                        rolling_avg_cents: 130.0,
                        baseline_avg_cents: 100.0,
                        drift_pct: 30.0,
                        today: date(12),
                    };
                    d.upsert_drift_tracking(&tenant, &key, &obs)
                })
                .unwrap()
            })
        })
        .collect();
    let counts: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(counts.iter().all(|c| *c == 1), "{counts:?}");
    let mut conn = common::conn();
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_breach_history", &tenant),
        1
    );
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_drift_tracking", &tenant),
        1
    );
}

/// Three weeks of calls for one tenant: users u1/u2, features f1/f2/untagged, some
/// retried, one exactly at each UTC midnight; days 5 and 6 have none. Returns the inputs.
fn history(conn: &mut PgConnection, tenant: &TenantId) -> Vec<costdb::models::CostInput> {
    let mut rows = Vec::new();
    for d in 1..=21u32 {
        if d == 5 || d == 6 {
            continue;
        }
        for k in 0..(3 + d % 4) {
            let at = day(d) + Duration::minutes(i64::from(k) * 217 % 1440);
            rows.push(costdb::models::CostInput {
                tenant_id: tenant.into(),
                user_id: Some(if k % 2 == 0 { "u1" } else { "u2" }.into()),
                feature_tag: [Some("f1"), Some("f2"), None][(k % 3) as usize].map(Into::into),
                model: "m".into(),
                input_tokens: (100 + d * 10 + k) as i32,
                output_tokens: 5,
                cost_cents: f64::from(d * 3 + k),
                is_retry: (d + k) % 5 == 0,
                created_at: Some(at),
                ..Default::default()
            });
        }
    }
    CostWriteDriver::new(conn).record_costs(&rows).unwrap();
    rows
}

#[test]
fn spend_baselines_and_cause_inputs_match_the_fixture() {
    use costdb::drivers::EntityColumn;
    use costdb::models::CostInput;
    use costdb::types::BudgetScope;
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let rows = history(&mut conn, &tenant);
    let utc_day = |r: &CostInput| r.created_at.unwrap().date_naive();
    let within =
        |r: &CostInput, from: u32, to: u32| utc_day(r) >= date(from) && utc_day(r) <= date(to);
    let mut d = CostAnomalyDriver::new(&mut conn);

    // Per-user baseline over days 2..=12: spend ÷ the user's active days.
    let baseline = d
        .fetch_entity_baseline(&tenant, EntityColumn::User, date(2), date(12))
        .unwrap();
    for b in &baseline {
        let mine: Vec<&CostInput> = rows
            .iter()
            .filter(|r| within(r, 2, 12) && r.user_id.as_deref() == Some(b.entity.as_str()))
            .collect();
        let active: std::collections::BTreeSet<_> = mine.iter().map(|r| utc_day(r)).collect();
        let sum: f64 = mine.iter().map(|r| r.cost_cents).sum();
        assert!((b.cents - sum / active.len() as f64).abs() < 1e-9, "{b:?}");
    }
    assert_eq!(
        baseline
            .iter()
            .map(|b| b.entity.as_str())
            .collect::<Vec<_>>(),
        ["u1", "u2"]
    );
    // Feature spend today (day 21), untagged left out; the record at midnight counts.
    let today: Vec<_> = d
        .fetch_entity_today_spend(&tenant, EntityColumn::Feature, date(21))
        .unwrap();
    for f in &today {
        let sum: f64 = rows
            .iter()
            .filter(|r| within(r, 21, 21) && r.feature_tag.as_deref() == Some(f.entity.as_str()))
            .map(|r| r.cost_cents)
            .sum();
        assert_eq!(f.cents, sum);
    }
    assert!(rows.iter().any(|r| r.created_at == Some(day(21))));

    // Tenant baseline and averages: active days only (days 5 and 6 had none), and /7.
    let total = |from, to| {
        rows.iter()
            .filter(|r| within(r, from, to))
            .map(|r| r.cost_cents)
            .sum::<f64>()
    };
    let active_days =
        |from: u32, to: u32| (from..=to).filter(|d| *d != 5 && *d != 6).count() as f64;
    let tb = d
        .fetch_tenant_baseline(&tenant, date(1), date(10))
        .unwrap()
        .unwrap();
    assert!((tb - total(1, 10) / active_days(1, 10)).abs() < 1e-9);
    assert_eq!(
        d.fetch_baseline_avg(&tenant, date(5), date(6)).unwrap(),
        0.0
    );
    assert_eq!(
        d.fetch_tenant_baseline(&tenant, date(5), date(6)).unwrap(),
        None
    );
    assert!(
        (d.fetch_rolling_avg(&tenant, date(15), date(21)).unwrap() - total(15, 21) / 7.0).abs()
            < 1e-9
    );
    assert_eq!(
        d.fetch_tenant_today_spend(&tenant, date(21)).unwrap(),
        total(21, 21)
    );
    assert_eq!(d.fetch_tenant_today_spend(&tenant, date(22)).unwrap(), 0.0);

    // Budget scopes, a day and a month to date.
    let scoped = |scope: &BudgetScope, r: &CostInput| match scope {
        BudgetScope::Tenant => true,
        BudgetScope::User(u) => r.user_id.as_deref() == Some(u.as_str()),
        BudgetScope::Feature(f) => r.feature_tag.as_deref() == Some(f.as_str()),
    };
    for scope in [
        BudgetScope::Tenant,
        BudgetScope::User("u2".into()),
        BudgetScope::Feature("f1".into()),
    ] {
        let daily: f64 = rows
            .iter()
            .filter(|r| within(r, 20, 20) && scoped(&scope, r))
            .map(|r| r.cost_cents)
            .sum();
        let monthly: f64 = rows
            .iter()
            .filter(|r| within(r, 1, 20) && scoped(&scope, r))
            .map(|r| r.cost_cents)
            .sum();
        assert_eq!(
            d.fetch_daily_spend(&tenant, date(20), &scope).unwrap(),
            daily,
            "{scope:?}"
        );
        assert_eq!(
            d.fetch_monthly_spend(&tenant, date(20), &scope).unwrap(),
            monthly,
            "{scope:?}"
        );
    }

    // Cause inputs: today (21) against yesterday (20).
    let of_day = |day: u32| {
        rows.iter()
            .filter(move |r| within(r, day, day))
            .collect::<Vec<_>>()
    };
    let share =
        |rs: &[&CostInput]| rs.iter().filter(|r| r.is_retry).count() as f64 / rs.len() as f64;
    let prompt = |rs: &[&CostInput]| {
        rs.iter().map(|r| f64::from(r.input_tokens)).sum::<f64>() / rs.len() as f64
    };
    let retry = d
        .fetch_retry_comparison(&tenant, date(21), &BudgetScope::Tenant)
        .unwrap();
    assert_eq!(
        (retry.today, retry.yesterday),
        (Some(share(&of_day(21))), Some(share(&of_day(20))))
    );
    let p = d
        .fetch_prompt_comparison(&tenant, date(21), &BudgetScope::Tenant)
        .unwrap();
    assert_eq!(
        (p.today, p.yesterday),
        (Some(prompt(&of_day(21))), Some(prompt(&of_day(20))))
    );
    let req = d
        .fetch_request_comparison(&tenant, date(7), &BudgetScope::User("u1".into()))
        .unwrap();
    let u1 = |day| {
        of_day(day)
            .iter()
            .filter(|r| r.user_id.as_deref() == Some("u1"))
            .count() as f64
    };
    assert_eq!(
        (req.today, req.yesterday),
        (Some(u1(7)), Some(0.0)),
        "day 6 had no calls"
    );
    let none = d
        .fetch_prompt_comparison(&tenant, date(6), &BudgetScope::Tenant)
        .unwrap();
    assert_eq!((none.today, none.yesterday), (None, None));

    let c = d.fetch_feature_concentration(&tenant, date(21)).unwrap();
    let per = |f: &str| {
        of_day(21)
            .iter()
            .filter(|r| r.feature_tag.as_deref() == Some(f))
            .map(|r| r.cost_cents)
            .sum::<f64>()
    };
    assert_eq!(c.total_cents, total(21, 21));
    assert_eq!(c.top_feature_cents, per("f1").max(per("f2")));

    // Another tenant has nothing; a reversed range is refused.
    let stranger = common::tenant();
    assert!(d
        .fetch_entity_baseline(&stranger, EntityColumn::User, date(1), date(21))
        .unwrap()
        .is_empty());
    assert_invalid(
        d.fetch_entity_baseline(&tenant, EntityColumn::User, date(3), date(2)),
        "window",
    );
}

/// Runs `sql` with `tenant` as $1 (the original's statements, as its drivers sent them).
fn original(conn: &mut diesel::PgConnection, sql: &str, tenant: &TenantId) -> usize {
    diesel::sql_query(sql)
        .bind::<diesel::sql_types::Text, _>(tenant)
        .execute(conn)
        .unwrap()
}

/// The original's breach upsert for the tenant as a whole (`entity_id = ''`) on 2026-09-`day`.
fn original_breach(day: u32) -> String {
    format!(
        "INSERT INTO cost_breach_history (id, tenant_id, entity_type, entity_id, breach_type, \
             breach_date, deviation_pct, current_value_cents, baseline_value_cents, created_at) \
         VALUES ('bh_' || md5(random()::text)::varchar(16), $1, 'tenant', '', \
                 'ABSOLUTE_SPIKE', '2026-09-{day:02}', 50, 150, 100, now()) \
         ON CONFLICT ON CONSTRAINT uq_breach_per_entity_day \
         DO UPDATE SET deviation_pct = EXCLUDED.deviation_pct, \
                       current_value_cents = EXCLUDED.current_value_cents"
    )
}

#[test]
fn rows_the_original_writes_with_an_empty_entity_are_the_tenant_wide_entity() {
    use costdb::drivers::DriftObservation;
    use costdb::models::BreachType;
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    // The original's services write the tenant-wide breach of the 9th and 10th with ''.
    original(&mut conn, &original_breach(9), &tenant);
    original(&mut conn, &original_breach(10), &tenant);
    let whole = who(None);
    let blank = EntityKey {
        entity_type: EntityType::Tenant,
        entity_id: Some(String::new()),
    };
    let mut d = CostAnomalyDriver::new(&mut conn);
    for key in [&whole, &blank] {
        assert!(d
            .fetch_breach_exists_today(&tenant, key, BreachType::AbsoluteSpike, date(10))
            .unwrap());
        assert_eq!(
            d.fetch_consecutive_breaches(&tenant, key, BreachType::AbsoluteSpike, date(10))
                .unwrap(),
            2
        );
    }
    // costdb's breach of the same day updates that row; the original's next write too.
    assert!(!d
        .insert_breach_history(&tenant, &breach(None, date(10), 300.0))
        .unwrap());
    original(&mut conn, &original_breach(10), &tenant);
    original(&mut conn, &original_breach(11), &tenant);
    let mut d = CostAnomalyDriver::new(&mut conn);
    assert!(!d
        .insert_breach_history(&tenant, &breach(None, date(11), 300.0))
        .unwrap());
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        entity_id: Option<String>,
        #[diesel(sql_type = diesel::sql_types::Date)]
        breach_date: chrono::NaiveDate,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT entity_id, breach_date FROM cost_breach_history WHERE tenant_id = $1 \
         ORDER BY breach_date",
    )
    .bind::<diesel::sql_types::Text, _>(&tenant)
    .load(&mut conn)
    .unwrap();
    assert_eq!(
        rows,
        (9..=11)
            .map(|day| Row {
                entity_id: None,
                breach_date: date(day),
            })
            .collect::<Vec<_>>()
    );

    // The original's plain insert of a drift tracker with '': costdb's upsert of the next
    // day counts on it (a second tracker would have started at 1).
    original(
        &mut conn,
        "INSERT INTO cost_drift_tracking (id, tenant_id, entity_type, entity_id, \
             rolling_7d_avg_cents, baseline_7d_avg_cents, drift_pct, drift_days_count, \
             first_drift_date, last_check_date, is_active, created_at, updated_at) \
         VALUES ('dt_0123456789abcdef', $1, 'tenant', '', 130, 100, 30, 1, \
                 '2026-09-09', '2026-09-09', true, now(), now())",
        &tenant,
    );
    let mut d = CostAnomalyDriver::new(&mut conn);
    let observation = DriftObservation {
        rolling_avg_cents: 140.0,
        baseline_avg_cents: 100.0,
        drift_pct: 40.0,
        today: date(10),
    };
    assert_eq!(
        d.upsert_drift_tracking(&tenant, &blank, &observation)
            .unwrap(),
        2
    );
    let tracker = d.fetch_drift_tracking(&tenant, &whole).unwrap().unwrap();
    assert_eq!(
        (
            tracker.id.as_str(),
            tracker.entity_id,
            tracker.drift_days_count
        ),
        ("dt_0123456789abcdef", None, 2)
    );
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_drift_tracking", &tenant),
        1
    );
}

#[test]
fn the_migration_folds_the_originals_empty_entities_into_one_row_per_key() {
    use costdb::db;
    let url = common::fresh_database();
    let mut conn = db::connect(&url).unwrap();
    db::run_migrations(&mut conn).unwrap();
    // Back to the shape before the fold (the rollups came after it).
    common::revert_through(&mut conn, "tenant_wide_entity");
    // A database both wrote to before the fold: '' rows of the original, NULL rows of
    // costdb, and both for one day and for one tracker.
    conn.batch_execute(
        "INSERT INTO cost_breach_history (id, tenant_id, entity_type, entity_id, breach_type, \
             breach_date, deviation_pct, current_value_cents, baseline_value_cents) VALUES \
           ('bh_original_9', 't1', 'tenant', '',   'ABSOLUTE_SPIKE', '2026-09-09', 50, 150, 100), \
           ('bh_costdb_9',   't1', 'tenant', NULL, 'ABSOLUTE_SPIKE', '2026-09-09', 60, 160, 100), \
           ('bh_original_8', 't1', 'tenant', '',   'ABSOLUTE_SPIKE', '2026-09-08', 50, 150, 100), \
           ('bh_user_9',     't1', 'user',   'u1', 'ABSOLUTE_SPIKE', '2026-09-09', 50, 150, 100); \
         INSERT INTO cost_drift_tracking (id, tenant_id, entity_type, entity_id, \
             rolling_7d_avg_cents, baseline_7d_avg_cents, drift_pct, drift_days_count, \
             first_drift_date, last_check_date, is_active) VALUES \
           ('dt_original', 't1', 'tenant', '',   130, 100, 30, 4, '2026-09-06', '2026-09-09', true), \
           ('dt_costdb',   't1', 'tenant', NULL, 130, 100, 30, 1, '2026-09-02', '2026-09-02', false), \
           ('dt_other',    't2', 'tenant', '',   130, 100, 30, 1, '2026-09-09', '2026-09-09', true);",
    )
    .unwrap();
    db::run_migrations(&mut conn).unwrap();
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        entity_id: Option<String>,
    }
    let rows = |conn: &mut diesel::PgConnection, table: &str| -> Vec<(String, Option<String>)> {
        diesel::sql_query(format!("SELECT id, entity_id FROM {table} ORDER BY id"))
            .load::<Row>(conn)
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.entity_id))
            .collect()
    };
    let s = |id: &str, entity: Option<&str>| (id.to_owned(), entity.map(str::to_owned));
    assert_eq!(
        rows(&mut conn, "cost_breach_history"),
        vec![
            s("bh_costdb_9", None),
            s("bh_original_8", None),
            s("bh_user_9", Some("u1")),
        ]
    );
    // The tracker checked last is kept.
    assert_eq!(
        rows(&mut conn, "cost_drift_tracking"),
        vec![s("dt_original", None), s("dt_other", None)]
    );
    // From now on a '' written by anyone is the tenant-wide entity.
    assert!(conn
        .batch_execute(
            "INSERT INTO cost_breach_history (id, tenant_id, entity_type, entity_id, \
                 breach_type, breach_date, deviation_pct, current_value_cents, \
                 baseline_value_cents) \
             VALUES ('bh_again', 't1', 'tenant', '', 'ABSOLUTE_SPIKE', '2026-09-09', 1, 1, 1)",
        )
        .is_err());
}

#[test]
fn the_set_based_reads_and_writes_refuse_bad_input_and_write_nothing() {
    use costdb::models::BreachType;
    use costdb::types::Tenants;
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut d = CostAnomalyDriver::new(&mut conn);
    let (from, to) = (date(1), date(9));
    // Tenant ids that fit no column are refused when they are made.
    assert_invalid(TenantId::new(""), "tenant_id");
    assert_invalid(TenantId::new("t".repeat(65)), "tenant_id");
    assert_invalid(TenantId::new(" "), "tenant_id");
    assert_invalid(d.fetch_days(Tenants::All, to, from), "window");
    // One bad breach refuses the batch: nothing of it is written.
    let good = breach(Some("u"), date(9), 150.0);
    let mut bad = breach(Some("v"), date(9), 150.0);
    bad.deviation_pct = f64::NAN;
    assert_invalid(
        d.insert_breach_histories(&[(&tenant, &good), (&tenant, &bad)]),
        "deviation_pct",
    );
    assert_eq!(
        d.fetch_breach_days(&[&tenant], BreachType::AbsoluteSpike, from, to)
            .unwrap(),
        vec![]
    );
    // Written, the good one reads back; twice is still one row.
    for _ in 0..2 {
        assert_eq!(d.insert_breach_histories(&[(&tenant, &good)]).unwrap(), 1);
    }
    assert_eq!(
        d.fetch_breach_days(&[&tenant], BreachType::AbsoluteSpike, from, to)
            .unwrap(),
        vec![(tenant.to_string(), good.entity.clone(), date(9))]
    );
    let mut bare = costdb::db::connect(common::database_url()).unwrap();
    assert!(matches!(
        CostAnomalyDriver::new(&mut bare).insert_breach_histories(&[(&tenant, &good)]),
        Err(Error::NoTransaction)
    ));
    assert!(matches!(
        CostAnomalyDriver::new(&mut bare).reset_tenant_drift(&[&tenant]),
        Err(Error::NoTransaction)
    ));
}
