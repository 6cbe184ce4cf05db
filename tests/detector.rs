//! The anomaly detector against a real PostgreSQL: a planted user spike with a retry loop,
//! a planted sustained drift and a planted budget breach, found day by day with the
//! causes the fixture implies, and nothing on a calm tenant.

mod common;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use costdb::detector::{severity_band, AnomalyDetector, DetectorConfig};
use costdb::drivers::BudgetLimits;
use costdb::models::CostInput;
use costdb::models::{AnomalyType, CostAnomaly, DerivedCause, EntityType, Severity};
use costdb::types::{BudgetScope, TenantId};
use costdb::{drivers::CostWriteDriver, Error};
use diesel::Connection;

/// The last day of the fixture: "today" at the end of the replay.
fn d() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 30).unwrap()
}

fn noon(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(12, 0, 0).unwrap())
}

/// One day's calls of `user`: `n` calls of `cents`, the first `retries` of them retried,
/// feature tags from `feature`, spread over the UTC day.
#[allow(clippy::too_many_arguments)]
fn calls(
    out: &mut Vec<CostInput>,
    tenant: &TenantId,
    day: NaiveDate,
    user: &str,
    n: usize,
    cents: f64,
    retries: usize,
    feature: fn(usize) -> &'static str,
) {
    let start = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap());
    for k in 0..n {
        out.push(CostInput {
            tenant_id: tenant.into(),
            user_id: Some(user.into()),
            feature_tag: Some(feature(k).into()),
            model: "gpt-4o".into(),
            input_tokens: 500,
            output_tokens: 100,
            cost_cents: cents,
            is_retry: k < retries,
            created_at: Some(
                start + Duration::seconds((k as i64 * 7919 + user.len() as i64 * 13) % 86_400),
            ),
            ..Default::default()
        });
    }
}

fn five_features(k: usize) -> &'static str {
    ["f0", "f1", "f2", "f3", "f4"][k % 5]
}

fn mostly_search(k: usize) -> &'static str {
    if k % 10 < 7 {
        "search"
    } else {
        "chat"
    }
}

struct Tenants {
    calm: TenantId,
    spike: TenantId,
    drift: TenantId,
    budget: TenantId,
}

/// 36 days of history. Every tenant has 10 users with 10 calls of 10¢ a day (1,000¢),
/// except: `spike`'s user `u-spike` makes 40 calls on the last two days (30 % then 70 %
/// retried): 4× its own baseline, but only 1.3× the tenant's and each feature's; `drift`
/// spends 1.3× from seven days before the end (a drift, never a spike), mostly on one
/// feature; `budget` spends 1,200¢ on the last day against a daily limit of 1,100¢ (95 %
/// warning threshold).
fn fixture(conn: &mut diesel::PgConnection) -> Tenants {
    let t = Tenants {
        calm: common::tenant(),
        spike: common::tenant(),
        drift: common::tenant(),
        budget: common::tenant(),
    };
    let mut rows = Vec::new();
    for back in (0..36).rev() {
        let day = d() - Duration::days(back);
        for u in 0..10 {
            let user = format!("u{u}");
            calls(&mut rows, &t.calm, day, &user, 10, 10.0, 0, five_features);
            let drift_calls = if back <= 7 { 13 } else { 10 };
            calls(
                &mut rows,
                &t.drift,
                day,
                &user,
                drift_calls,
                10.0,
                0,
                mostly_search,
            );
            let budget_calls = if back == 0 { 12 } else { 10 };
            calls(
                &mut rows,
                &t.budget,
                day,
                &user,
                budget_calls,
                10.0,
                0,
                five_features,
            );
            if u < 9 {
                calls(&mut rows, &t.spike, day, &user, 10, 10.0, 0, five_features);
            }
        }
        let (n, retries) = match back {
            1 => (40, 12),
            0 => (40, 28),
            _ => (10, 0),
        };
        calls(
            &mut rows,
            &t.spike,
            day,
            "u-spike",
            n,
            10.0,
            retries,
            five_features,
        );
    }
    conn.transaction::<_, Error, _>(|c| {
        let mut w = CostWriteDriver::new(c);
        for chunk in rows.chunks(5_000) {
            w.record_costs(chunk)?;
        }
        let limits = |daily: i32, warn: i32| BudgetLimits {
            daily_limit_cents: Some(daily),
            monthly_limit_cents: None,
            warn_threshold_pct: warn,
            hard_limit_enabled: true,
        };
        w.upsert_budget(&t.budget, &BudgetScope::Tenant, &limits(1_100, 95))?;
        w.upsert_budget(&t.calm, &BudgetScope::Tenant, &limits(5_000, 80))?;
        w.upsert_budget(&t.calm, &BudgetScope::User("u3".into()), &limits(1_000, 80))?;
        Ok(())
    })
    .unwrap();
    t
}

#[test]
fn replaying_the_last_days_finds_exactly_the_planted_anomalies() {
    let mut conn = common::conn();
    let t = fixture(&mut conn);
    let detector = AnomalyDetector::default();
    let mut found: Vec<(NaiveDate, CostAnomaly)> = Vec::new();
    for back in (0..4).rev() {
        let day = d() - Duration::days(back);
        for tenant in [&t.calm, &t.spike, &t.drift, &t.budget] {
            let anomalies = conn
                .transaction(|c| detector.detect(c, tenant, noon(day)))
                .unwrap();
            found.extend(anomalies.into_iter().map(|a| (day, a)));
        }
    }
    let summary: Vec<_> = found
        .iter()
        .map(|(day, a)| {
            (
                *day,
                a.tenant_id.as_str(),
                a.anomaly_type,
                a.entity_type,
                a.entity_id.as_deref(),
                a.derived_cause,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                d(),
                t.spike.as_str(),
                AnomalyType::AbsoluteSpike,
                EntityType::User,
                Some("u-spike"),
                Some(DerivedCause::RetryLoop)
            ),
            (
                d(),
                t.drift.as_str(),
                AnomalyType::SustainedDrift,
                EntityType::Tenant,
                Some(t.drift.as_str()),
                Some(DerivedCause::FeatureSurge)
            ),
            (
                d(),
                t.budget.as_str(),
                AnomalyType::BudgetExceeded,
                EntityType::Tenant,
                None,
                Some(DerivedCause::Unknown)
            ),
        ],
        "{found:#?}"
    );
    // The values the fixture implies.
    let spike = &found[0].1;
    assert_eq!(
        (spike.current_value_cents, spike.expected_value_cents),
        (400.0, 100.0)
    );
    assert_eq!(
        (spike.deviation_pct, spike.threshold_pct, spike.breach_count),
        (300.0, 140.0, Some(2))
    );
    assert_eq!(
        (spike.severity, spike.detected_at),
        (Severity::High, noon(d()))
    );
    let drift = &found[1].1;
    assert!((drift.current_value_cents - 1_300.0).abs() < 1e-9);
    assert_eq!(
        (drift.expected_value_cents, drift.breach_count),
        (1_000.0, Some(3))
    );
    assert!((drift.deviation_pct - 30.0).abs() < 1e-9);
    assert_eq!(drift.severity, Severity::Medium);
    let budget = &found[2].1;
    assert_eq!(
        (budget.current_value_cents, budget.expected_value_cents),
        (1_200.0, 1_100.0)
    );
    assert_eq!(
        (budget.severity, budget.threshold_pct),
        (Severity::High, 100.0)
    );

    // Running the last day again changes nothing: the same rows come back.
    let again = conn
        .transaction(|c| detector.detect(c, &t.spike, noon(d()) + Duration::hours(3)))
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, spike.id);
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_anomalies", &t.spike),
        1
    );
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_anomalies", &t.calm),
        0
    );

    // Stricter thresholds find more: with a 1.2 spike ratio, the spike tenant as a whole
    // (1.3×) breaches on both last days, so the second raises a tenant spike.
    let strict = AnomalyDetector::new(DetectorConfig {
        spike_ratio: 1.2,
        ..DetectorConfig::default()
    });
    let before = conn
        .transaction(|c| strict.detect(c, &t.spike, noon(d() - Duration::days(1))))
        .unwrap();
    assert!(
        before.iter().all(|a| a.entity_type == EntityType::User),
        "one breach day only: {before:#?}"
    );
    let more = conn
        .transaction(|c| strict.detect(c, &t.spike, noon(d())))
        .unwrap();
    assert!(
        more.iter()
            .any(|a| a.entity_type == EntityType::Tenant
                && a.anomaly_type == AnomalyType::AbsoluteSpike),
        "{more:#?}"
    );
    // Outside a transaction nothing runs.
    assert!(matches!(
        detector.detect(&mut conn, &t.spike, noon(d())),
        Err(Error::NoTransaction)
    ));
}

#[test]
fn severity_bands() {
    assert_eq!(severity_band(10.0), Severity::Low);
    assert_eq!(severity_band(24.999), Severity::Low);
    assert_eq!(severity_band(25.0), Severity::Medium);
    assert_eq!(severity_band(39.9), Severity::Medium);
    assert_eq!(severity_band(40.0), Severity::High);
}

#[test]
fn a_budget_just_under_its_limit_never_reads_as_reached() {
    let mut conn = common::conn();
    let tenant = common::tenant();
    let mut rows = Vec::new();
    // 999.99¢ today against a daily limit of 1,000¢: a warning (≥ 90 %), not exceeded.
    calls(&mut rows, &tenant, d(), "u1", 1, 999.99, 0, five_features);
    conn.transaction::<_, Error, _>(|c| {
        let mut w = CostWriteDriver::new(c);
        w.record_costs(&rows)?;
        w.upsert_budget(
            &tenant,
            &BudgetScope::Tenant,
            &BudgetLimits {
                daily_limit_cents: Some(1_000),
                monthly_limit_cents: None,
                warn_threshold_pct: 90,
                hard_limit_enabled: false,
            },
        )?;
        Ok(())
    })
    .unwrap();
    let found = conn
        .transaction(|c| AnomalyDetector::default().detect(c, &tenant, noon(d())))
        .unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");
    let warning = &found[0];
    assert_eq!(warning.anomaly_type, AnomalyType::BudgetWarning);
    assert!(warning.deviation_pct < 100.0);
    assert_eq!(
        warning.message,
        "Daily budget WARNING for tenant: 99.9% of the limit"
    );
}

#[test]
fn percentages_never_round_across_their_ceiling() {
    use costdb::detector::percent_text;
    assert_eq!(percent_text(99.999, Some(100.0)), "99.9");
    assert_eq!(percent_text(99.95, Some(100.0)), "99.9");
    assert_eq!(percent_text(99.94, Some(100.0)), "99.9");
    assert_eq!(percent_text(100.0, Some(100.0)), "100.0");
    assert_eq!(percent_text(103.96, None), "104.0");
    assert_eq!(percent_text(39.99999999999999, None), "40.0");
    assert_eq!(percent_text(94.96, Some(95.0)), "94.9");
}

/// What a replay of the last four days finds, tenants named by their role in the fixture
/// so that two databases' replays compare.
fn replay(url: &str, all_at_once: bool) -> Vec<String> {
    let mut conn = costdb::db::connect(url).unwrap();
    let t = fixture(&mut conn);
    let roles = [
        (&t.calm, "calm"),
        (&t.spike, "spike"),
        (&t.drift, "drift"),
        (&t.budget, "budget"),
    ];
    let role = |tenant: &str| {
        roles
            .iter()
            .find(|(t, _)| t.as_str() == tenant)
            .map_or(tenant.to_owned(), |(_, r)| (*r).to_owned())
    };
    let detector = AnomalyDetector::default();
    let mut found = Vec::new();
    for back in (0..4).rev() {
        let now = noon(d() - Duration::days(back));
        let anomalies = if all_at_once {
            conn.transaction(|c| detector.detect_all(c, now)).unwrap()
        } else {
            let mut each = Vec::new();
            let mut by_id: Vec<&TenantId> = roles.iter().map(|(t, _)| *t).collect();
            by_id.sort();
            for tenant in by_id {
                each.extend(
                    conn.transaction(|c| detector.detect(c, tenant, now))
                        .unwrap(),
                );
            }
            each
        };
        found.extend(anomalies.into_iter().map(|a| {
            let entity = a.entity_id.as_deref().map(role);
            format!(
                "{} {} {:?} {:?} {entity:?} {:?} {:?} {} {} {} {:?} {}",
                now.date_naive(),
                role(&a.tenant_id),
                a.anomaly_type,
                a.entity_type,
                a.derived_cause,
                a.severity,
                a.current_value_cents,
                a.expected_value_cents,
                a.deviation_pct,
                a.breach_count,
                a.message.replace(&a.tenant_id, &role(&a.tenant_id)),
            )
        }));
    }
    found
}

#[test]
fn every_tenant_at_once_finds_what_each_tenant_alone_finds() {
    // Tenant ids are random, so each database orders its tenants differently.
    let mut each = replay(&common::migrated_database(), false);
    let mut all = replay(&common::migrated_database(), true);
    each.sort();
    all.sort();
    assert_eq!(each.len(), 3, "{each:#?}");
    assert_eq!(all, each);
}
