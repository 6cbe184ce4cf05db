//! Budget admission against a real PostgreSQL, with many connections: exact hard limits,
//! all-or-none scopes, windows at midnight and month start, vanished holders, repeated
//! requests, and no deadlocks between overlapping scope sets.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use common::assert_invalid;
use costdb::admission::{Admission, AdmissionDriver, Reservation, ReserveInput};
use costdb::drivers::BudgetLimits;
use costdb::models::CostInput;
use costdb::models::{BudgetPeriod, BudgetType, ReservationStatus};
use costdb::types::{BudgetScope, TenantId};
use costdb::{db, drivers::CostWriteDriver, Error};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};

fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
}

fn ask(request: &str, cents: f64, now: DateTime<Utc>) -> ReserveInput {
    ReserveInput {
        request_id: request.into(),
        feature_tag: None,
        user_id: None,
        estimated_cents: cents,
        expires_at: now + chrono::Duration::minutes(5),
        now,
    }
}

fn actual(r: &Reservation, cents: f64, at: DateTime<Utc>) -> CostInput {
    CostInput {
        tenant_id: r.tenant_id.clone(),
        feature_tag: r.feature_tag.clone(),
        user_id: r.user_id.clone(),
        model: "gpt-4o".into(),
        input_tokens: 10,
        output_tokens: 5,
        cost_cents: cents,
        created_at: Some(at),
        ..CostInput::default()
    }
}

/// Creates (committed) a budget and returns its id.
fn budget(
    tenant: &TenantId,
    scope: BudgetScope,
    daily: Option<i32>,
    monthly: Option<i32>,
    hard: bool,
) -> String {
    let mut conn = common::conn();
    conn.transaction(|c| {
        CostWriteDriver::new(c).upsert_budget(
            tenant,
            &scope,
            &BudgetLimits {
                daily_limit_cents: daily,
                monthly_limit_cents: monthly,
                warn_threshold_pct: 80,
                hard_limit_enabled: hard,
            },
        )
    })
    .unwrap()
    .id
}

/// Reserves in a transaction of its own (committed).
fn reserve(
    conn: &mut PgConnection,
    tenant: &TenantId,
    input: &ReserveInput,
) -> costdb::Result<Admission> {
    conn.transaction(|c| AdmissionDriver::new(c).reserve(tenant, input))
}

fn admitted(a: Admission) -> Reservation {
    match a {
        Admission::Admitted { reservation, .. } => reservation,
        other => panic!("expected an admission, got {other:?}"),
    }
}

/// (spent, reserved) of a budget's counter, exactly as float8.
fn counter(
    conn: &mut PgConnection,
    budget_id: &str,
    period: &str,
    start: NaiveDate,
) -> Option<(f64, f64)> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Double)]
        spent: f64,
        #[diesel(sql_type = Double)]
        reserved: f64,
    }
    diesel::sql_query(
        "SELECT spent_cents::float8 AS spent, reserved_cents::float8 AS reserved \
         FROM budget_counters WHERE budget_id = $1 AND period = $2 AND window_start = $3",
    )
    .bind::<Text, _>(budget_id)
    .bind::<Text, _>(period)
    .bind::<diesel::sql_types::Date, _>(start)
    .get_result::<Row>(conn)
    .optional()
    .unwrap()
    .map(|r| (r.spent, r.reserved))
}

fn reservations_of(conn: &mut PgConnection, tenant: &TenantId) -> i64 {
    common::count_for_tenant(conn, "budget_reservations", tenant)
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

#[test]
fn sixty_four_racers_never_pass_a_hard_limit() {
    const THREADS: usize = 64;
    let now = at(2026, 3, 10, 12);
    let conns: Vec<PgConnection> = (0..THREADS)
        .map(|_| db::connect(common::database_url()).unwrap())
        .collect();
    let mut conns: Vec<Option<PgConnection>> = conns.into_iter().map(Some).collect();
    for rep in 0..20u32 {
        let tenant = common::tenant();
        let limit = 1_000 + 37 * rep as i32;
        let b = budget(&tenant, BudgetScope::Tenant, Some(limit), None, true);
        // Spend some first, settled through the gate, so what is left is not the limit.
        let mut setup = common::conn();
        let pre = f64::from(100 + 13 * rep);
        let r = admitted(reserve(&mut setup, &tenant, &ask("pre", pre, now)).unwrap());
        setup
            .transaction(|c| AdmissionDriver::new(c).settle(&r, &actual(&r, pre, now)))
            .unwrap();
        let estimate = f64::from(17 + 3 * rep);
        let left = f64::from(limit) - pre;
        let expected = (left / estimate).floor() as usize;
        assert!(
            expected < THREADS,
            "the racers must ask for more than is left"
        );

        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let mut conn = conns[i].take().unwrap();
                let (tenant, barrier) = (tenant.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let verdict =
                        reserve(&mut conn, &tenant, &ask(&format!("r{i}"), estimate, now));
                    (conn, verdict)
                })
            })
            .collect();
        let mut admitted_n = 0;
        for (i, h) in handles.into_iter().enumerate() {
            let (conn, verdict) = h.join().unwrap();
            conns[i] = Some(conn);
            match verdict.unwrap() {
                Admission::Admitted { .. } => admitted_n += 1,
                Admission::Refused { budget } => {
                    assert_eq!(budget.budget_id, b);
                    assert_eq!(budget.period, BudgetPeriod::Daily);
                    assert!(
                        budget.spent_cents + budget.reserved_cents + estimate > f64::from(limit)
                    );
                }
            }
        }
        assert_eq!(admitted_n, expected, "rep {rep}: ⌊{left} ÷ {estimate}⌋");
        let (spent, reserved) = counter(&mut setup, &b, "daily", now.date_naive()).unwrap();
        assert_eq!(spent, pre);
        assert_eq!(reserved, estimate * expected as f64);
        assert!(spent + reserved <= f64::from(limit));
        assert_eq!(reservations_of(&mut setup, &tenant), expected as i64 + 1);
    }
}

#[test]
fn reclaiming_goes_tenant_by_tenant_within_its_limit_and_gives_every_estimate_back() {
    // A database of its own: reclaiming sweeps every tenant's expired holds.
    let url = common::migrated_database();
    let mut conn = db::connect(&url).unwrap();
    let now = at(2026, 4, 9, 9);
    let tenants: Vec<TenantId> = (0..3).map(|_| common::tenant()).collect();
    let mut budgets = Vec::new();
    for tenant in &tenants {
        budgets.push(common::hard_daily_budget(&mut conn, tenant, 1_000));
        for request in ["a", "b"] {
            admitted(reserve(&mut conn, tenant, &ask(request, 30.0, now)).unwrap());
        }
    }
    let reclaim = |conn: &mut PgConnection, limit: i64| {
        conn.transaction(|c| {
            AdmissionDriver::new(c).reclaim_expired(now + chrono::Duration::hours(1), limit)
        })
        .unwrap()
    };
    for b in &budgets {
        assert_eq!(
            counter(&mut conn, b, "daily", now.date_naive()),
            Some((0.0, 60.0))
        );
    }
    assert_eq!(reclaim(&mut conn, 4), 4);
    assert_eq!(reclaim(&mut conn, 4), 2);
    assert_eq!(reclaim(&mut conn, 4), 0);
    for b in &budgets {
        assert_eq!(
            counter(&mut conn, b, "daily", now.date_naive()),
            Some((0.0, 0.0))
        );
    }
}

#[test]
fn a_vanished_holder_is_reclaimed_after_expiry_and_nothing_counts_twice() {
    let tenant = common::tenant();
    let now = at(2026, 4, 2, 9);
    let b = budget(&tenant, BudgetScope::Tenant, Some(100), Some(1_000), true);
    // The holder reserves, commits, and its connection goes away.
    let reservation = {
        let mut holder = db::connect(common::database_url()).unwrap();
        admitted(reserve(&mut holder, &tenant, &ask("lost", 80.0, now)).unwrap())
    };
    // A holder whose transaction never committed leaves nothing.
    {
        let mut holder = db::connect(common::database_url()).unwrap();
        holder.begin_test_transaction().unwrap();
        admitted(
            AdmissionDriver::new(&mut holder)
                .reserve(&tenant, &ask("uncommitted", 10.0, now))
                .unwrap(),
        );
    }
    let mut conn = common::conn();
    assert_eq!(reservations_of(&mut conn, &tenant), 1);
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((0.0, 80.0))
    );
    // While it is held, the budget has no room for another 80.
    assert!(matches!(
        reserve(&mut conn, &tenant, &ask("blocked", 80.0, now)).unwrap(),
        Admission::Refused { .. }
    ));
    let reclaim = |conn: &mut PgConnection, at: DateTime<Utc>| {
        conn.transaction(|c| AdmissionDriver::new(c).reclaim_expired(at, 100))
            .unwrap()
    };
    assert_eq!(
        reclaim(
            &mut conn,
            reservation.expires_at - chrono::Duration::microseconds(1)
        ),
        0
    );
    assert_eq!(reclaim(&mut conn, reservation.expires_at), 1);
    assert_eq!(
        reclaim(&mut conn, reservation.expires_at),
        0,
        "reclaimed once"
    );
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((0.0, 0.0))
    );
    assert_eq!(
        counter(&mut conn, &b, "monthly", day(2026, 4, 1)),
        Some((0.0, 0.0))
    );
    let stored = conn
        .transaction(|c| AdmissionDriver::new(c).fetch_reservation(&tenant, &reservation.id))
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, ReservationStatus::Expired);
    // The budget is available again.
    let again = admitted(reserve(&mut conn, &tenant, &ask("again", 100.0, now)).unwrap());
    // The lost holder comes back late: its call is billed once, its estimate is not given
    // back a second time, and releasing it again changes nothing.
    let late = conn
        .transaction(|c| {
            AdmissionDriver::new(c).settle(&reservation, &actual(&reservation, 70.0, now))
        })
        .unwrap();
    assert!(late.charged && !late.released);
    assert!(!conn
        .transaction(|c| AdmissionDriver::new(c).release(&reservation))
        .unwrap());
    assert!(conn
        .transaction(|c| AdmissionDriver::new(c).release(&again))
        .unwrap());
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((70.0, 0.0))
    );
    let lines = conn
        .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, now.date_naive()))
        .unwrap();
    assert_eq!(lines.len(), 2);
    assert!(
        lines
            .iter()
            .all(|l| l.matches() && l.recorded_cents == 70.0),
        "{lines:?}"
    );
}

#[test]
fn settling_a_request_already_billed_charges_nothing_and_releases() {
    let tenant = common::tenant();
    let now = at(2026, 5, 5, 5);
    let b = budget(&tenant, BudgetScope::Tenant, Some(1_000), None, true);
    let mut conn = common::conn();
    // The request was billed before, outside the gate.
    conn.transaction(|c| {
        CostWriteDriver::new(c).insert_cost_record(&CostInput {
            tenant_id: tenant.to_string(),
            request_id: Some("req".into()),
            model: "m".into(),
            cost_cents: 42.0,
            created_at: Some(now),
            ..CostInput::default()
        })
    })
    .unwrap();
    let r = admitted(reserve(&mut conn, &tenant, &ask("req", 50.0, now)).unwrap());
    let s = conn
        .transaction(|c| AdmissionDriver::new(c).settle(&r, &actual(&r, 50.0, now)))
        .unwrap();
    assert!(!s.charged && s.released);
    assert_eq!(s.cost.cost_cents, 42.0, "the first record stands");
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((0.0, 0.0))
    );
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_records", &tenant),
        1
    );
    // Settling again is a no-op too.
    let twice = conn
        .transaction(|c| AdmissionDriver::new(c).settle(&r, &actual(&r, 50.0, now)))
        .unwrap();
    assert!(!twice.charged && !twice.released);
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((0.0, 0.0))
    );
    // The record bypassed the gate: reconcile shows it.
    let lines = conn
        .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, now.date_naive()))
        .unwrap();
    let daily = lines
        .iter()
        .find(|l| l.period == BudgetPeriod::Daily)
        .unwrap();
    assert_eq!(
        (
            daily.counted_cents,
            daily.recorded_cents,
            daily.difference_cents
        ),
        (0.0, 42.0, -42.0)
    );
    assert!(!daily.matches());
}

#[test]
fn reservers_at_midnight_and_month_start_land_in_their_own_windows() {
    let tenant = common::tenant();
    let b = budget(&tenant, BudgetScope::Tenant, Some(100), Some(150), true);
    let before = Utc.with_ymd_and_hms(2026, 1, 31, 23, 59, 59).unwrap()
        + chrono::Duration::microseconds(999_999);
    let after = at(2026, 2, 1, 0);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (tenant, barrier) = (tenant.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = db::connect(common::database_url()).unwrap();
                let now = if i % 2 == 0 { before } else { after };
                barrier.wait();
                reserve(&mut conn, &tenant, &ask(&format!("m{i}"), 60.0, now)).unwrap()
            })
        })
        .collect();
    let verdicts: Vec<Admission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let days: Vec<NaiveDate> = verdicts
        .into_iter()
        .filter_map(|v| match v {
            Admission::Admitted { reservation, .. } => Some(reservation.day),
            Admission::Refused { .. } => None,
        })
        .collect();
    // One 60-cent call fits each day's 100; one fits each month's 150.
    assert_eq!(days.len(), 2, "{days:?}");
    assert!(days.contains(&day(2026, 1, 31)) && days.contains(&day(2026, 2, 1)));
    let mut conn = common::conn();
    assert_eq!(
        counter(&mut conn, &b, "daily", day(2026, 1, 31)),
        Some((0.0, 60.0))
    );
    assert_eq!(
        counter(&mut conn, &b, "daily", day(2026, 2, 1)),
        Some((0.0, 60.0))
    );
    assert_eq!(
        counter(&mut conn, &b, "monthly", day(2026, 1, 1)),
        Some((0.0, 60.0))
    );
    assert_eq!(
        counter(&mut conn, &b, "monthly", day(2026, 2, 1)),
        Some((0.0, 60.0))
    );
}

#[test]
fn a_settlement_after_midnight_charges_the_new_day() {
    let tenant = common::tenant();
    let b = budget(&tenant, BudgetScope::Tenant, Some(100), None, true);
    let mut conn = common::conn();
    let evening = at(2026, 6, 30, 23);
    let r = admitted(reserve(&mut conn, &tenant, &ask("late", 40.0, evening)).unwrap());
    let next = at(2026, 7, 1, 0) + chrono::Duration::seconds(5);
    conn.transaction(|c| AdmissionDriver::new(c).settle(&r, &actual(&r, 30.0, next)))
        .unwrap();
    assert_eq!(
        counter(&mut conn, &b, "daily", day(2026, 6, 30)),
        Some((0.0, 0.0))
    );
    assert_eq!(
        counter(&mut conn, &b, "daily", day(2026, 7, 1)),
        Some((30.0, 0.0))
    );
    assert_eq!(
        counter(&mut conn, &b, "monthly", day(2026, 7, 1)),
        Some((30.0, 0.0))
    );
    for d in [day(2026, 6, 30), day(2026, 7, 1)] {
        let lines = conn
            .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, d))
            .unwrap();
        assert!(lines.iter().all(|l| l.matches()), "{d}: {lines:?}");
    }
}

#[test]
fn a_full_feature_budget_refuses_and_leaves_no_partial_reservation() {
    let tenant = common::tenant();
    let now = at(2026, 8, 8, 8);
    let t = budget(
        &tenant,
        BudgetScope::Tenant,
        Some(10_000),
        Some(100_000),
        true,
    );
    let f = budget(
        &tenant,
        BudgetScope::Feature("chat".into()),
        Some(50),
        None,
        true,
    );
    let u = budget(
        &tenant,
        BudgetScope::User("ann".into()),
        None,
        Some(5_000),
        false,
    );
    let mut conn = common::conn();
    let input = ReserveInput {
        feature_tag: Some("chat".into()),
        user_id: Some("ann".into()),
        ..ask("big", 60.0, now)
    };
    match reserve(&mut conn, &tenant, &input).unwrap() {
        Admission::Refused { budget } => {
            assert_eq!(budget.budget_id, f);
            assert_eq!(budget.budget_type, BudgetType::Feature);
            assert_eq!(budget.entity_id.as_deref(), Some("chat"));
            assert_eq!(
                (
                    budget.limit_cents,
                    budget.spent_cents,
                    budget.reserved_cents
                ),
                (50, 0.0, 0.0)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reservations_of(&mut conn, &tenant), 0);
    for b in [&t, &f, &u] {
        for (period, start) in [("daily", now.date_naive()), ("monthly", day(2026, 8, 1))] {
            let c = counter(&mut conn, b, period, start);
            assert!(c.is_none() || c == Some((0.0, 0.0)), "{b} {period}: {c:?}");
        }
    }
    // Another feature's call only meets the tenant and user budgets.
    let other = ReserveInput {
        feature_tag: Some("search".into()),
        ..input.clone()
    };
    let r = admitted(reserve(&mut conn, &tenant, &other).unwrap());
    let mut want = vec![t.clone(), u.clone()];
    want.sort();
    assert_eq!(r.budget_ids, want);
    assert_eq!(
        counter(&mut conn, &t, "daily", now.date_naive()),
        Some((0.0, 60.0))
    );
    assert_eq!(
        counter(&mut conn, &u, "monthly", day(2026, 8, 1)),
        Some((0.0, 60.0))
    );
}

#[test]
fn soft_budgets_admit_and_warn() {
    let tenant = common::tenant();
    let now = at(2026, 9, 9, 9);
    let b = budget(&tenant, BudgetScope::Tenant, Some(100), None, false);
    let mut conn = common::conn();
    let first = reserve(&mut conn, &tenant, &ask("a", 70.0, now)).unwrap();
    assert!(matches!(&first, Admission::Admitted { warnings, .. } if warnings.is_empty()));
    // 70 + 10 = 80 % of 100: the threshold is reached.
    match reserve(&mut conn, &tenant, &ask("b", 10.0, now)).unwrap() {
        Admission::Admitted { warnings, .. } => {
            assert_eq!(warnings.len(), 1);
            assert_eq!(
                (warnings[0].budget_id.as_str(), warnings[0].reserved_cents),
                (b.as_str(), 70.0)
            );
        }
        other => panic!("{other:?}"),
    }
    // Past the limit: a soft budget still admits.
    assert!(matches!(
        reserve(&mut conn, &tenant, &ask("c", 500.0, now)).unwrap(),
        Admission::Admitted { warnings, .. } if warnings.len() == 1
    ));
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((0.0, 580.0))
    );
}

#[test]
fn the_largest_limits_work() {
    let tenant = common::tenant();
    let now = at(2026, 9, 10, 9);
    let b = budget(
        &tenant,
        BudgetScope::Tenant,
        Some(i32::MAX),
        Some(i32::MAX),
        true,
    );
    let mut conn = common::conn();
    let big = f64::from(i32::MAX) - 1.0;
    match reserve(&mut conn, &tenant, &ask("max", big, now)).unwrap() {
        Admission::Admitted { warnings, .. } => assert_eq!(warnings.len(), 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        reserve(&mut conn, &tenant, &ask("over", 2.0, now)).unwrap(),
        Admission::Refused { .. }
    ));
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((0.0, big))
    );
}

#[test]
fn a_repeated_request_gets_its_reservation_once() {
    let tenant = common::tenant();
    let now = at(2026, 10, 1, 1);
    let b = budget(&tenant, BudgetScope::Tenant, Some(100), None, true);
    let mut conn = common::conn();
    // An instant with nanoseconds and an estimate that is not a short decimal: what comes
    // back is what is stored.
    let odd = ReserveInput {
        estimated_cents: 0.1 + 0.2,
        expires_at: now + chrono::Duration::nanoseconds(300_000_123_456),
        ..ask("same", 30.0, now)
    };
    let first = admitted(reserve(&mut conn, &tenant, &odd).unwrap());
    let stored = conn
        .transaction(|c| AdmissionDriver::new(c).fetch_reservation(&tenant, &first.id))
        .unwrap()
        .unwrap();
    assert_eq!(first, stored);
    let second = admitted(reserve(&mut conn, &tenant, &odd).unwrap());
    assert_eq!(first, second);
    assert_eq!(first.estimated_cents, 0.3, "stored as an exact decimal");
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((0.0, 0.3))
    );
    assert!(conn
        .transaction(|c| AdmissionDriver::new(c).release(&first))
        .unwrap());
    assert!(!conn
        .transaction(|c| AdmissionDriver::new(c).release(&first))
        .unwrap());
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((0.0, 0.0))
    );
    // A released request cannot be reserved again under the same id.
    assert!(matches!(
        reserve(&mut conn, &tenant, &ask("same", 30.0, now)),
        Err(Error::Conflict(_))
    ));
    // Without any budget, a request is admitted and holds nothing.
    let free = admitted(reserve(&mut conn, &common::tenant(), &ask("x", 5.0, now)).unwrap());
    assert!(free.budget_ids.is_empty());
}

#[test]
fn fractional_cents_add_up_exactly() {
    let tenant = common::tenant();
    let now = at(2026, 11, 11, 11);
    let b = budget(&tenant, BudgetScope::Tenant, Some(1), None, true);
    let mut conn = common::conn();
    // Ten reservations of 0.1 cents fill a 1-cent budget exactly (as doubles, 0.1 × 10 is
    // not 1); the eleventh is refused.
    let held: Vec<Reservation> = (0..10)
        .map(|i| admitted(reserve(&mut conn, &tenant, &ask(&format!("f{i}"), 0.1, now)).unwrap()))
        .collect();
    assert!(matches!(
        reserve(&mut conn, &tenant, &ask("f10", 0.1, now)).unwrap(),
        Admission::Refused { .. }
    ));
    for r in &held {
        conn.transaction(|c| AdmissionDriver::new(c).settle(r, &actual(r, 0.1, now)))
            .unwrap();
    }
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((1.0, 0.0))
    );
    let lines = conn
        .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, now.date_naive()))
        .unwrap();
    assert!(lines.iter().all(|l| l.matches()), "{lines:?}");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let tenant = common::tenant();
    let now = at(2026, 12, 1, 0);
    let b = budget(&tenant, BudgetScope::Tenant, Some(100), None, true);
    let mut conn = common::test_conn();
    let mut gate = AdmissionDriver::new(&mut conn);
    let base = ask("ok", 1.0, now);
    let cases: Vec<(ReserveInput, &str)> = vec![
        (
            ReserveInput {
                request_id: "".into(),
                ..base.clone()
            },
            "request_id",
        ),
        (
            ReserveInput {
                request_id: "x".repeat(65),
                ..base.clone()
            },
            "request_id",
        ),
        (
            ReserveInput {
                feature_tag: Some("a\0b".into()),
                ..base.clone()
            },
            "feature_tag",
        ),
        (
            ReserveInput {
                user_id: Some("é".repeat(65)),
                ..base.clone()
            },
            "user_id",
        ),
        (
            ReserveInput {
                estimated_cents: -1.0,
                ..base.clone()
            },
            "estimated_cents",
        ),
        (
            ReserveInput {
                estimated_cents: f64::NAN,
                ..base.clone()
            },
            "estimated_cents",
        ),
        (
            ReserveInput {
                estimated_cents: f64::INFINITY,
                ..base.clone()
            },
            "estimated_cents",
        ),
        (
            ReserveInput {
                estimated_cents: 1e13,
                ..base.clone()
            },
            "estimated_cents",
        ),
        (
            ReserveInput {
                expires_at: now,
                ..base.clone()
            },
            "expires_at",
        ),
        (
            ReserveInput {
                now: DateTime::<Utc>::MIN_UTC,
                ..base.clone()
            },
            "now",
        ),
    ];
    for (input, field) in cases {
        assert_invalid(gate.reserve(&tenant, &input), field);
    }
    assert_invalid(TenantId::new(""), "tenant_id");
    assert_invalid(gate.reclaim_expired(now, 0), "limit");
    let r = admitted(gate.reserve(&tenant, &base).unwrap());
    // A settlement that does not match the reservation writes nothing.
    let good = actual(&r, 1.0, now);
    for (bad, field) in [
        (
            CostInput {
                tenant_id: common::tenant().to_string(),
                ..good.clone()
            },
            "tenant_id",
        ),
        (
            CostInput {
                request_id: Some("other".into()),
                ..good.clone()
            },
            "request_id",
        ),
        (
            CostInput {
                feature_tag: Some("chat".into()),
                ..good.clone()
            },
            "feature_tag",
        ),
        (
            CostInput {
                user_id: Some("bob".into()),
                ..good.clone()
            },
            "user_id",
        ),
        (
            CostInput {
                cost_cents: f64::NAN,
                ..good.clone()
            },
            "cost_cents",
        ),
    ] {
        assert_invalid(gate.settle(&r, &bad), field);
    }
    let missing = Reservation {
        id: "rsv_missing".into(),
        ..r.clone()
    };
    assert!(matches!(
        gate.settle(&missing, &good),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_records", &tenant),
        0
    );
    assert_eq!(
        counter(&mut conn, &b, "daily", now.date_naive()),
        Some((0.0, 1.0))
    );
    // Outside a transaction, nothing is written.
    let mut plain = common::conn();
    assert!(matches!(
        AdmissionDriver::new(&mut plain).reserve(&tenant, &ask("nt", 1.0, now)),
        Err(Error::NoTransaction)
    ));
    assert!(matches!(
        AdmissionDriver::new(&mut plain).release(&r),
        Err(Error::NoTransaction)
    ));
    assert_eq!(reservations_of(&mut plain, &tenant), 0);
}

#[test]
fn overlapping_scope_sets_in_any_order_never_deadlock_and_reconcile() {
    const THREADS: usize = 8;
    let tenant = common::tenant();
    let now = at(2027, 1, 15, 15);
    let mut budgets = vec![budget(
        &tenant,
        BudgetScope::Tenant,
        Some(2_000),
        Some(200_000),
        true,
    )];
    for f in ["a", "b", "c"] {
        budgets.push(budget(
            &tenant,
            BudgetScope::Feature(f.into()),
            Some(300),
            None,
            true,
        ));
    }
    for u in ["x", "y"] {
        budgets.push(budget(
            &tenant,
            BudgetScope::User(u.into()),
            Some(400),
            Some(900),
            true,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let tenant = tenant.clone();
            std::thread::spawn(move || {
                let mut conn = db::connect(common::database_url()).unwrap();
                let (mut admitted_n, mut refused, mut n) = (0u32, 0u32, 0u32);
                while Instant::now() < deadline {
                    n += 1;
                    let feature = ["a", "b", "c"][(i + n as usize) % 3];
                    let user = ["x", "y"][(i * 7 + n as usize) % 2];
                    let estimate = f64::from(5 + (n % 7) * 3) + 0.25;
                    let input = ReserveInput {
                        feature_tag: Some(feature.into()),
                        user_id: Some(user.into()),
                        ..ask(&format!("o{i}-{n}"), estimate, now)
                    };
                    match reserve(&mut conn, &tenant, &input).expect("no deadlock, no error") {
                        Admission::Admitted { reservation, .. } => {
                            admitted_n += 1;
                            conn.transaction(|c| {
                                let mut gate = AdmissionDriver::new(c);
                                if n % 5 == 0 {
                                    gate.release(&reservation).map(|_| ())
                                } else {
                                    let cents = estimate * f64::from(n % 3 + 1) / 2.0;
                                    gate.settle(&reservation, &actual(&reservation, cents, now))
                                        .map(|_| ())
                                }
                            })
                            .expect("no deadlock, no error");
                        }
                        Admission::Refused { .. } => refused += 1,
                    }
                }
                (admitted_n, refused)
            })
        })
        .collect();
    let (mut admitted_n, mut refused) = (0, 0);
    for h in handles {
        let (a, r) = h.join().unwrap();
        admitted_n += a;
        refused += r;
    }
    assert!(
        admitted_n > 0 && refused > 0,
        "admitted {admitted_n}, refused {refused}"
    );
    let mut conn = common::conn();
    let lines = conn
        .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, now.date_naive()))
        .unwrap();
    assert_eq!(lines.len(), budgets.len() * 2);
    for l in &lines {
        assert!(l.matches(), "{l:?}");
        assert_eq!(l.reserved_cents, 0.0, "{l:?}");
        let limit = match (l.budget_type, l.period) {
            (BudgetType::Tenant, BudgetPeriod::Daily) => 2_000.0,
            (BudgetType::Feature, BudgetPeriod::Daily) => 300.0,
            (BudgetType::User, BudgetPeriod::Daily) => 400.0,
            (BudgetType::User, BudgetPeriod::Monthly) => 900.0,
            _ => f64::INFINITY,
        };
        // Settled actuals may run over their estimates (up to 1.5×), never further.
        assert!(l.counted_cents <= limit * 1.5, "{l:?}");
    }
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let held: N = diesel::sql_query(
        "SELECT count(*) AS n FROM budget_reservations WHERE tenant_id = $1 AND status = 'held'",
    )
    .bind::<Text, _>(&tenant)
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(held.n, 0);
}
