//! `AdmissionService` against a real PostgreSQL: many callers' reserves and settles
//! committed in batches, exact under racing callers, killed backends and full queues.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::assert_invalid;
use costdb::admission::{
    Admission, AdmissionConfig, AdmissionDriver, AdmissionService, Reservation, ReserveInput,
};
use costdb::db;
use costdb::drivers::{BudgetLimits, CostWriteDriver};
use costdb::models::{CostInput, ReservationStatus};
use costdb::types::{BudgetScope, TenantId};
use costdb::Error;
use costdb_testkit::EmbeddedPostgres;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 20, 12, 0, 0).unwrap()
}

fn ask(request: &str, cents: f64) -> ReserveInput {
    ReserveInput {
        request_id: request.into(),
        feature_tag: None,
        user_id: None,
        estimated_cents: cents,
        expires_at: now() + chrono::Duration::minutes(5),
        now: now(),
    }
}

fn actual(r: &Reservation, cents: f64) -> CostInput {
    CostInput {
        tenant_id: r.tenant_id.clone(),
        feature_tag: r.feature_tag.clone(),
        user_id: r.user_id.clone(),
        model: "gpt-4o".into(),
        cost_cents: cents,
        created_at: Some(now()),
        ..CostInput::default()
    }
}

/// A committed tenant-wide budget with a daily limit.
fn budget(tenant: &TenantId, daily: i32, hard: bool) -> String {
    scoped_budget(tenant, BudgetScope::Tenant, Some(daily), None, hard)
}

fn service(config: AdmissionConfig) -> AdmissionService {
    AdmissionService::start(common::database_url(), config).unwrap()
}

/// The tenant's counters match its records exactly, and no hard limit is passed.
fn assert_exact(tenant: &TenantId, limit: f64) {
    assert_exact_on(&mut common::conn(), tenant, limit);
}

/// [`assert_exact`] on the database of `conn`.
fn assert_exact_on(conn: &mut PgConnection, tenant: &TenantId, limit: f64) {
    let lines = conn
        .transaction(|c| AdmissionDriver::new(c).reconcile(tenant, now().date_naive()))
        .unwrap();
    assert!(!lines.is_empty());
    for line in lines {
        assert!(line.matches(), "{line:?}");
        assert!(
            line.counted_cents + line.reserved_cents <= limit,
            "{line:?} over {limit}"
        );
    }
}

fn admitted(a: Admission) -> Option<Reservation> {
    match a {
        Admission::Admitted { reservation, .. } => Some(reservation),
        Admission::Refused { .. } => None,
    }
}

/// Waits until `cond` holds: the state it checks comes from the service's own threads.
fn until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        std::thread::yield_now();
    }
}

#[test]
fn sixty_four_callers_never_pass_a_hard_limit_and_settle_exactly() {
    const THREADS: usize = 64;
    const EACH: usize = 4;
    let tenant = common::tenant();
    budget(&tenant, 1_000, true);
    let svc = service(AdmissionConfig::default());
    let start = Barrier::new(THREADS);
    let admitted: Vec<Reservation> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (svc, start, tenant) = (&svc, &start, &tenant);
                s.spawn(move || {
                    start.wait();
                    let mut mine = Vec::new();
                    for i in 0..EACH {
                        let input = ask(&format!("r-{t}-{i}"), 7.0);
                        if let Some(r) = admitted(svc.reserve(tenant, &input).unwrap()) {
                            let settled = svc.settle(&r, &actual(&r, 7.0)).unwrap();
                            assert!(settled.charged && settled.released);
                            mine.push(r);
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    // ⌊1000 ÷ 7⌋ calls fit; every one settled at its estimate.
    assert_eq!(admitted.len(), 1_000 / 7);
    let ids: HashSet<&str> = admitted.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids.len(), admitted.len());
    let mut conn = common::conn();
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_records", &tenant),
        admitted.len() as i64
    );
    assert_exact(&tenant, 1_000.0);
    let stats = svc.stats();
    assert!(stats.batches >= 1 && stats.requests >= (THREADS * EACH) as u64);
    svc.shutdown();
}

#[test]
fn a_common_batch_is_one_statement_and_answers_what_it_stored() {
    use costdb::models::CostRecord;
    use costdb::schema::{budget_reservations, cost_records};
    let tenant = common::tenant();
    budget(&tenant, 1_000, true);
    let chat = scoped_budget(
        &tenant,
        BudgetScope::Feature("chat".into()),
        Some(50),
        None,
        true,
    );
    let svc = service(AdmissionConfig::default());
    let chat_ask = |request: &str, cents: f64| ReserveInput {
        feature_tag: Some("chat".into()),
        ..ask(request, cents)
    };
    // Reservations, settlements and releases racing in: whatever batches they form, each
    // one is decided by a single statement.
    let (settled, released) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (svc, chat_ask, tenant) = (&svc, &chat_ask, &tenant);
                s.spawn(move || {
                    let asked = chat_ask(&format!("c-{i}"), 6.0);
                    let r = admitted(svc.reserve(tenant, &asked).unwrap()).unwrap();
                    if i % 2 == 0 {
                        let cost = CostInput {
                            workflow_id: Some(format!("wf-{i}")),
                            skill_id: Some("summarize".into()),
                            input_tokens: 100 + i,
                            output_tokens: 7,
                            is_retry: i == 4,
                            created_at: Some(now() + chrono::Duration::seconds(i.into())),
                            ..actual(&r, 4.25 + f64::from(i))
                        };
                        (Some(svc.settle(&r, &cost).unwrap()), None)
                    } else {
                        (None, Some((r.id.clone(), svc.release(&r).unwrap())))
                    }
                })
            })
            .collect();
        let mut settled = Vec::new();
        let mut released = Vec::new();
        for h in handles {
            let (s, r) = h.join().unwrap();
            settled.extend(s);
            released.extend(r);
        }
        (settled, released)
    });
    let stats = svc.stats();
    assert_eq!(stats.one_statement, stats.batches, "{stats:?}");
    assert_eq!(stats.requests, 16);

    let mut conn = common::conn();
    // Each settlement answers the record as stored, charged and released.
    assert_eq!(settled.len(), 4);
    for settlement in &settled {
        assert!(settlement.charged && settlement.released);
        let stored: CostRecord = cost_records::table
            .find((&tenant, settlement.cost.created_at, &settlement.cost.id))
            .select(CostRecord::as_select())
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(settlement.cost, stored);
        let (status, actual_cents, record): (String, Option<f64>, Option<String>) =
            budget_reservations::table
                .filter(budget_reservations::tenant_id.eq(&tenant))
                .filter(budget_reservations::request_id.eq(stored.request_id.as_ref().unwrap()))
                .select((
                    budget_reservations::status,
                    budget_reservations::actual_cents,
                    budget_reservations::cost_record_id,
                ))
                .get_result(&mut conn)
                .unwrap();
        assert_eq!(status, "settled");
        assert_eq!(actual_cents, Some(stored.cost_cents));
        assert_eq!(record.as_deref(), Some(stored.id.as_str()));
    }
    for (id, was_held) in &released {
        assert!(was_held);
        let status: String = budget_reservations::table
            .find((&tenant, id))
            .select(budget_reservations::status)
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(status, "released");
    }
    // Nothing is held any more; the counters hold exactly the four actual costs.
    assert_eq!(held_reservations(&mut conn, &tenant), 0);
    assert_exact(&tenant, 50.0);
    let spent: f64 = (0..8).step_by(2).map(|i| 4.25 + f64::from(i)).sum();
    let lines = conn
        .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, now().date_naive()))
        .unwrap();
    for line in lines.iter().filter(|l| l.budget_id == chat) {
        assert_eq!(
            (line.counted_cents, line.reserved_cents),
            (spent, 0.0),
            "{line:?}"
        );
    }

    // A repeat of a settled request, and one that does not fit: still one statement, each
    // answered as the driver would.
    let again = svc.reserve(&tenant, &chat_ask("c-0", 6.0));
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    let refused = svc
        .reserve(&tenant, &chat_ask("c-big", 50.0 - spent + 0.01))
        .unwrap();
    assert!(matches!(refused, Admission::Refused { ref budget } if budget.budget_id == chat));
    // A settlement on another day than its reservation's goes the full path.
    let r = admitted(svc.reserve(&tenant, &chat_ask("c-late", 1.0)).unwrap()).unwrap();
    let late = CostInput {
        created_at: Some(now() + chrono::Duration::days(1)),
        ..actual(&r, 1.0)
    };
    assert!(svc.settle(&r, &late).unwrap().charged);
    let after = svc.stats();
    assert_eq!(after.batches, stats.batches + 4);
    assert_eq!(after.one_statement, stats.one_statement + 3);
    svc.shutdown();
}

#[test]
fn a_mixed_batch_answers_each_request_as_the_driver_would() {
    let (tight, soft, free) = (common::tenant(), common::tenant(), common::tenant());
    let tight_budget = budget(&tight, 10, true);
    budget(&soft, 10, false);
    let svc = service(AdmissionConfig::default());
    // The first request goes alone and creates the counters; the rest go as one batch.
    let first = admitted(svc.reserve(&tight, &ask("t-1", 6.0)).unwrap()).unwrap();
    let requests = [
        (&tight, "t-0", 1.0), // held in the worker by the lock: 7 of 10
        (&tight, "t-2", 5.0), // 12 would pass the limit: refused
        (&tight, "t-3", 3.0), // 10 fits exactly
        (&tight, "t-1", 6.0), // a repeat: t-1's reservation back, charged once
        (&soft, "s-1", 12.0), // over a soft limit: admitted, warned
        (&free, "f-1", 3.0),  // no budget applies: admitted
    ];
    let answers = one_batch_behind_a_lock(&svc, &tight_budget, &requests, || {
        // Bad input is refused at once, while the batch waits.
        assert_invalid(
            svc.reserve(&tight, &ask("bad", f64::NAN)),
            "estimated_cents",
        );
    });
    assert!(svc.stats().batches >= 3);
    let ok = |a: &Admission| matches!(a, Admission::Admitted { .. });
    assert!(ok(&answers[0]));
    assert!(
        matches!(&answers[1], Admission::Refused { budget } if budget.budget_id == tight_budget)
    );
    assert!(ok(&answers[2]));
    match &answers[3] {
        Admission::Admitted { reservation, .. } => assert_eq!(reservation.id, first.id),
        other => panic!("{other:?}"),
    }
    match &answers[4] {
        Admission::Admitted { warnings, .. } => assert_eq!(warnings.len(), 1),
        other => panic!("{other:?}"),
    }
    match &answers[5] {
        Admission::Admitted { reservation, .. } => assert!(reservation.budget_ids.is_empty()),
        other => panic!("{other:?}"),
    }
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = diesel::sql_types::Double)]
        v: f64,
    }
    let mut conn = common::conn();
    let held: Held = diesel::sql_query(
        "SELECT coalesce(sum(estimated_cents), 0)::float8 AS v FROM budget_reservations \
         WHERE tenant_id = $1 AND status = 'held'",
    )
    .bind::<diesel::sql_types::Text, _>(tight.as_str())
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(held.v, 10.0);
    assert_eq!(
        common::count_for_tenant(&mut conn, "budget_reservations", &tight),
        3
    );
    assert_exact(&tight, 10.0);
}

#[test]
fn a_batch_that_fits_with_one_repeated_request_charges_the_repeat_once() {
    let tenant = common::tenant();
    let limit = budget(&tenant, 100, true);
    let svc = service(AdmissionConfig::default());
    let first = admitted(svc.reserve(&tenant, &ask("r-1", 6.0)).unwrap()).unwrap();
    // One batch in which every request fits and one repeats r-1.
    let requests = [
        (&tenant, "r-0", 1.0),
        (&tenant, "r-2", 2.0),
        (&tenant, "r-1", 6.0),
        (&tenant, "r-3", 3.0),
    ];
    let answers: Vec<Reservation> = one_batch_behind_a_lock(&svc, &limit, &requests, || {})
        .into_iter()
        .map(|a| admitted(a).unwrap())
        .collect();
    assert_eq!(answers[2].id, first.id, "the repeat gets r-1's reservation");
    let ids: std::collections::BTreeSet<&str> = answers.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 4, "r-0, r-2 and r-3 are new: {answers:?}");
    let mut conn = common::conn();
    assert_eq!(held_reservations(&mut conn, &tenant), 4);
    assert_eq!(
        common::count_for_tenant(&mut conn, "budget_reservations", &tenant),
        4
    );
    // 6 + 1 + 2 + 3: the repeat counted once, every new one counted.
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Reserved {
        #[diesel(sql_type = diesel::sql_types::Text)]
        period: String,
        #[diesel(sql_type = diesel::sql_types::Double)]
        cents: f64,
    }
    let reserved: Vec<Reserved> = diesel::sql_query(
        "SELECT period, reserved_cents::float8 AS cents FROM budget_counters \
         WHERE tenant_id = $1 ORDER BY period",
    )
    .bind::<diesel::sql_types::Text, _>(tenant.as_str())
    .load(&mut conn)
    .unwrap();
    let cents = |period: &str| Reserved {
        period: period.into(),
        cents: 12.0,
    };
    assert_eq!(reserved, [cents("daily"), cents("monthly")]);
    assert_exact(&tenant, 12.0);
}

#[test]
fn killed_backends_lose_no_answer_and_nothing_counts_twice() {
    const THREADS: usize = 16;
    const EACH: usize = 25;
    let tenant = common::tenant();
    budget(&tenant, 2_000, true);
    let svc = service(AdmissionConfig::default());
    let done = AtomicBool::new(false);
    let (admitted, kills) = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut conn = common::test_conn();
            let mut kills = 0;
            while !done.load(Ordering::Relaxed) {
                #[derive(QueryableByName)]
                struct Killed {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                let killed: Killed = diesel::sql_query(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n \
                     FROM pg_stat_activity WHERE application_name = 'costdb-admission' \
                       AND datname = current_database()",
                )
                .get_result(&mut conn)
                .unwrap();
                kills += killed.n;
                // Fault injection, not a wait for a race: let some batches commit.
                std::thread::sleep(Duration::from_millis(30));
            }
            kills
        });
        let callers = spawn_callers(s, &svc, &tenant, "k", THREADS, EACH);
        let admitted: Vec<Reservation> = callers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        done.store(true, Ordering::Relaxed);
        (admitted, killer.join().unwrap())
    });
    assert!(kills > 0, "the worker's backend was never killed");
    assert!(svc.stats().retries > 0);
    assert_each_once(&mut common::conn(), &tenant, &admitted, THREADS * EACH);
}

#[test]
fn a_server_restart_mid_stream_answers_every_caller_and_counts_nothing_twice() {
    const THREADS: usize = 16;
    const EACH: usize = 25;
    // A cluster of its own: this test stops it.
    let pg = EmbeddedPostgres::start().unwrap();
    let url = costdb_testkit::create_database(&pg.url("postgres"), "admission_restart").unwrap();
    costdb_testkit::migrate_and_lay_out(&url).unwrap();
    let mut conn = db::connect(&url).unwrap();
    let tenant = common::tenant();
    let limits = BudgetLimits {
        daily_limit_cents: Some(2_000),
        monthly_limit_cents: None,
        warn_threshold_pct: 80,
        hard_limit_enabled: true,
    };
    conn.transaction(|c| {
        CostWriteDriver::new(c).upsert_budget(&tenant, &BudgetScope::Tenant, &limits)
    })
    .unwrap();
    let config = AdmissionConfig {
        retry_deadline: Duration::from_secs(60),
        ..AdmissionConfig::default()
    };
    let svc = AdmissionService::start(&url, config).unwrap();
    let admitted: Vec<Reservation> = std::thread::scope(|s| {
        let callers = spawn_callers(s, &svc, &tenant, "restart", THREADS, EACH);
        // Restart once some requests are in, while the callers go on.
        until(|| svc.stats().requests >= 200);
        pg.stop_server().unwrap();
        pg.start_server().unwrap();
        callers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        svc.stats().retries > 0,
        "the restart was seen: {:?}",
        svc.stats()
    );
    assert_each_once(
        &mut db::connect(&url).unwrap(),
        &tenant,
        &admitted,
        THREADS * EACH,
    );
    svc.shutdown();
}

/// `threads` callers in scope `s`, each reserving `each` calls of 3¢ and settling the
/// admitted ones at 2.5¢; every call must be answered (faults or not). Each returns its
/// admitted reservations.
#[test]
fn a_service_on_a_fresh_database_analyzes_the_tables_it_outgrows() {
    // A plain database of its own, as a fresh install starts: the tables the service reads
    // by key have never been analyzed.
    let url = common::fresh_database();
    let mut conn = db::connect(&url).unwrap();
    db::run_migrations(&mut conn).unwrap();
    let tenant = common::tenant();
    common::hard_daily_budget(&mut conn, &tenant, 100_000);
    let pages = |conn: &mut PgConnection| -> i32 {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "relpages FROM pg_class WHERE relname = 'budget_reservations'",
        ))
        .get_result(conn)
        .unwrap()
    };
    assert_eq!(pages(&mut conn), 0, "never analyzed");
    let svc = AdmissionService::start(&url, AdmissionConfig::default()).unwrap();
    let admitted: Vec<Reservation> = std::thread::scope(|s| {
        spawn_callers(s, &svc, &tenant, "grow", 16, 60)
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(admitted.len(), 16 * 60);
    let stats = svc.stats();
    svc.shutdown();
    // Hundreds of batches in, the table has outgrown its (empty) statistics many times
    // over: the service analyzed it on the way, so its plans fit the table.
    assert!(stats.batches > 64, "{stats:?}");
    assert!(pages(&mut conn) > 0, "budget_reservations was analyzed");
}

/// Sends `requests` to `svc` in order, the first alone: a lock on `budget_id`'s counters
/// holds it in the worker while the others queue behind it, so the worker takes those as
/// one batch, in the order they arrived. `while_queued` runs before the lock is let go.
/// The answers, in the order of `requests`.
fn one_batch_behind_a_lock(
    svc: &AdmissionService,
    budget_id: &str,
    requests: &[(&TenantId, &str, f64)],
    while_queued: impl FnOnce(),
) -> Vec<Admission> {
    let mut blocker = common::test_conn();
    blocker.batch_execute("BEGIN").unwrap();
    diesel::sql_query("SELECT 1 FROM budget_counters WHERE budget_id = $1 FOR UPDATE")
        .bind::<diesel::sql_types::Text, _>(budget_id)
        .execute(&mut blocker)
        .unwrap();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, &(tenant, request, cents)) in requests.iter().enumerate() {
            handles.push(s.spawn(move || svc.reserve(tenant, &ask(request, cents))));
            if i == 0 {
                until(|| svc.stats().in_flight == 1);
            } else {
                until(|| svc.stats().queue_depth == i);
            }
        }
        while_queued();
        blocker.batch_execute("COMMIT").unwrap();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    })
}

fn spawn_callers<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    svc: &'scope AdmissionService,
    tenant: &'scope TenantId,
    prefix: &'static str,
    threads: usize,
    each: usize,
) -> Vec<std::thread::ScopedJoinHandle<'scope, Vec<Reservation>>> {
    (0..threads)
        .map(|t| {
            s.spawn(move || {
                let mut mine = Vec::new();
                for i in 0..each {
                    let input = ask(&format!("{prefix}-{t}-{i}"), 3.0);
                    if let Some(r) = admitted(svc.reserve(tenant, &input).unwrap()) {
                        let settled = svc.settle(&r, &actual(&r, 2.5)).unwrap();
                        assert_eq!(settled.cost.cost_cents, 2.5);
                        mine.push(r);
                    }
                }
                mine
            })
        })
        .collect()
}

/// After [`spawn_callers`]' `calls` against a 2,000¢ budget (which they all fit): every
/// call admitted, reserved once and billed once whatever was retried, none left held,
/// the counters equal to the records and within the limit.
fn assert_each_once(
    conn: &mut PgConnection,
    tenant: &TenantId,
    admitted: &[Reservation],
    calls: usize,
) {
    assert_eq!(admitted.len(), calls);
    assert_eq!(
        common::count_for_tenant(conn, "budget_reservations", tenant),
        calls as i64
    );
    assert_eq!(
        common::count_for_tenant(conn, "cost_records", tenant),
        calls as i64
    );
    assert_eq!(held_reservations(conn, tenant), 0);
    assert_exact_on(conn, tenant, 2_000.0);
}

fn held_reservations(conn: &mut PgConnection, tenant: &TenantId) -> i64 {
    use costdb::schema::budget_reservations as r;
    r::table
        .filter(r::tenant_id.eq(tenant))
        .filter(r::status.eq(ReservationStatus::Held.as_str()))
        .count()
        .get_result(conn)
        .unwrap()
}

#[test]
fn a_full_queue_answers_busy_and_shutdown_drains_it() {
    let tenant = common::tenant();
    let id = budget(&tenant, 100, true);
    let svc = service(AdmissionConfig {
        capacity: 1,
        ..AdmissionConfig::default()
    });
    admitted(svc.reserve(&tenant, &ask("q-0", 1.0)).unwrap()).unwrap();
    let mut blocker = common::test_conn();
    blocker.batch_execute("BEGIN").unwrap();
    diesel::sql_query("SELECT 1 FROM budget_counters WHERE budget_id = $1 FOR UPDATE")
        .bind::<diesel::sql_types::Text, _>(&id)
        .execute(&mut blocker)
        .unwrap();
    std::thread::scope(|s| {
        let svc = &svc;
        let tenant = &tenant;
        let held = s.spawn(move || svc.reserve(tenant, &ask("q-1", 1.0)));
        until(|| svc.stats().in_flight == 1);
        let queued = s.spawn(move || svc.reserve(tenant, &ask("q-2", 1.0)));
        until(|| svc.stats().queue_depth == 1);
        assert!(matches!(
            svc.try_reserve(tenant, &ask("q-3", 1.0)),
            Err(Error::Busy)
        ));
        // Shutting down takes no new request and answers the queued ones.
        let closer = s.spawn(move || svc.shutdown());
        until(|| matches!(svc.reserve(tenant, &ask("q-4", 1.0)), Err(Error::Closed)));
        blocker.batch_execute("COMMIT").unwrap();
        closer.join().unwrap();
        assert!(admitted(held.join().unwrap().unwrap()).is_some());
        assert!(admitted(queued.join().unwrap().unwrap()).is_some());
    });
    let mut conn = common::conn();
    assert_eq!(
        common::count_for_tenant(&mut conn, "budget_reservations", &tenant),
        3
    );
}

/// A committed budget of `scope` with the given limits.
fn scoped_budget(
    tenant: &TenantId,
    scope: BudgetScope,
    daily: Option<i32>,
    monthly: Option<i32>,
    hard: bool,
) -> String {
    common::conn()
        .transaction(|c| {
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

#[test]
fn the_service_and_the_gate_side_by_side_on_overlapping_scopes_never_deadlock() {
    const SERVICE_THREADS: usize = 8;
    const GATE_THREADS: usize = 4;
    const EACH: u32 = 40;
    let tenant = common::tenant();
    scoped_budget(
        &tenant,
        BudgetScope::Tenant,
        Some(2_000),
        Some(200_000),
        true,
    );
    for f in ["a", "b", "c"] {
        scoped_budget(
            &tenant,
            BudgetScope::Feature(f.into()),
            Some(300),
            None,
            true,
        );
    }
    for u in ["x", "y"] {
        scoped_budget(
            &tenant,
            BudgetScope::User(u.into()),
            Some(400),
            Some(900),
            true,
        );
    }
    let svc = service(AdmissionConfig::default());
    // Thread i's n-th request: its scopes in an order that differs between threads.
    let input = |i: usize, n: u32| {
        let feature = ["a", "b", "c"][(i + n as usize) % 3];
        let user = ["x", "y"][(i * 7 + n as usize) % 2];
        ReserveInput {
            feature_tag: Some(feature.into()),
            user_id: Some(user.into()),
            ..ask(&format!("o{i}-{n}"), f64::from(5 + (n % 7) * 3) + 0.25)
        }
    };
    let settle_or_release = |n: u32, r: &Reservation| {
        (n % 5 != 0).then(|| actual(r, r.estimated_cents * f64::from(n % 3 + 1) / 2.0))
    };
    let (admitted_n, refused) = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for i in 0..SERVICE_THREADS {
            let (svc, tenant) = (&svc, &tenant);
            handles.push(s.spawn(move || {
                let (mut a, mut r) = (0, 0);
                for n in 0..EACH {
                    match svc
                        .reserve(tenant, &input(i, n))
                        .expect("no deadlock, no error")
                    {
                        Admission::Admitted { reservation, .. } => {
                            a += 1;
                            match settle_or_release(n, &reservation) {
                                Some(cost) => drop(svc.settle(&reservation, &cost).unwrap()),
                                None => assert!(svc.release(&reservation).unwrap()),
                            }
                        }
                        Admission::Refused { .. } => r += 1,
                    }
                }
                (a, r)
            }));
        }
        // The gate's callers commit each reservation and settlement on their own.
        for i in SERVICE_THREADS..SERVICE_THREADS + GATE_THREADS {
            let tenant = &tenant;
            handles.push(s.spawn(move || {
                let mut conn = costdb::db::connect(common::database_url()).unwrap();
                let (mut a, mut r) = (0, 0);
                for n in 0..EACH {
                    let verdict = conn
                        .transaction(|c| AdmissionDriver::new(c).reserve(tenant, &input(i, n)))
                        .expect("no deadlock, no error");
                    match verdict {
                        Admission::Admitted { reservation, .. } => {
                            a += 1;
                            conn.transaction(|c| {
                                let mut gate = AdmissionDriver::new(c);
                                match settle_or_release(n, &reservation) {
                                    Some(cost) => gate.settle(&reservation, &cost).map(drop),
                                    None => gate.release(&reservation).map(drop),
                                }
                            })
                            .expect("no deadlock, no error");
                        }
                        Admission::Refused { .. } => r += 1,
                    }
                }
                (a, r)
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(a, r), (x, y)| (a + x, r + y))
    });
    assert!(
        admitted_n > 0 && refused > 0,
        "admitted {admitted_n}, refused {refused}"
    );
    let mut conn = common::conn();
    assert_eq!(held_reservations(&mut conn, &tenant), 0);
    let lines = conn
        .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, now().date_naive()))
        .unwrap();
    assert_eq!(lines.len(), 12);
    for l in &lines {
        assert!(l.matches() && l.reserved_cents == 0.0, "{l:?}");
    }
}

#[test]
fn requests_at_midnight_and_month_start_in_one_batch_land_in_their_own_windows() {
    let tenant = common::tenant();
    let b = scoped_budget(&tenant, BudgetScope::Tenant, Some(100), Some(150), true);
    let before = Utc.with_ymd_and_hms(2026, 1, 31, 23, 59, 59).unwrap()
        + chrono::Duration::microseconds(999_999);
    let after = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    let svc = service(AdmissionConfig::default());
    let at = |i: usize| if i % 2 == 0 { before } else { after };
    let verdicts: Vec<Admission> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (svc, tenant) = (&svc, &tenant);
                s.spawn(move || {
                    let input = ReserveInput {
                        now: at(i),
                        expires_at: at(i) + chrono::Duration::minutes(5),
                        ..ask(&format!("m{i}"), 60.0)
                    };
                    svc.reserve(tenant, &input).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut days: Vec<chrono::NaiveDate> = verdicts
        .into_iter()
        .filter_map(admitted)
        .map(|r| r.day)
        .collect();
    days.sort();
    // One 60-cent call fits each day's 100, and each month's 150.
    let (jan31, feb1) = (before.date_naive(), after.date_naive());
    assert_eq!(days, vec![jan31, feb1]);
    let mut conn = common::conn();
    #[derive(QueryableByName)]
    struct Counter {
        #[diesel(sql_type = diesel::sql_types::Text)]
        period: String,
        #[diesel(sql_type = diesel::sql_types::Date)]
        window_start: chrono::NaiveDate,
        #[diesel(sql_type = diesel::sql_types::Double)]
        reserved: f64,
    }
    let counters: Vec<Counter> = diesel::sql_query(
        "SELECT period, window_start, reserved_cents::float8 AS reserved FROM budget_counters \
         WHERE budget_id = $1 ORDER BY window_start, period",
    )
    .bind::<diesel::sql_types::Text, _>(&b)
    .load(&mut conn)
    .unwrap();
    let got: Vec<(&str, chrono::NaiveDate, f64)> = counters
        .iter()
        .map(|c| (c.period.as_str(), c.window_start, c.reserved))
        .collect();
    let jan1 = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    assert_eq!(
        got,
        vec![
            ("monthly", jan1, 60.0),
            ("daily", jan31, 60.0),
            ("daily", feb1, 60.0),
            ("monthly", feb1, 60.0),
        ]
    );
}

#[test]
fn a_settlement_after_midnight_through_the_service_charges_the_new_day() {
    let tenant = common::tenant();
    let b = budget(&tenant, 100, true);
    let svc = service(AdmissionConfig::default());
    let evening = Utc.with_ymd_and_hms(2026, 6, 30, 23, 0, 0).unwrap();
    let input = ReserveInput {
        now: evening,
        expires_at: evening + chrono::Duration::minutes(5),
        ..ask("late", 40.0)
    };
    let r = admitted(svc.reserve(&tenant, &input).unwrap()).unwrap();
    let next = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 5).unwrap();
    let settled = svc
        .settle(
            &r,
            &CostInput {
                created_at: Some(next),
                ..actual(&r, 30.0)
            },
        )
        .unwrap();
    assert!(settled.charged && settled.released);
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Counter {
        #[diesel(sql_type = diesel::sql_types::Text)]
        period: String,
        #[diesel(sql_type = diesel::sql_types::Date)]
        window_start: chrono::NaiveDate,
        #[diesel(sql_type = diesel::sql_types::Double)]
        spent: f64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        reserved: f64,
    }
    let mut conn = common::conn();
    let counters: Vec<Counter> = diesel::sql_query(
        "SELECT period, window_start, spent_cents::float8 AS spent, \
                reserved_cents::float8 AS reserved \
         FROM budget_counters WHERE budget_id = $1 ORDER BY window_start, period",
    )
    .bind::<diesel::sql_types::Text, _>(&b)
    .load(&mut conn)
    .unwrap();
    let day = |m, d| chrono::NaiveDate::from_ymd_opt(2026, m, d).unwrap();
    let row = |period: &str, window_start, spent, reserved| Counter {
        period: period.into(),
        window_start,
        spent,
        reserved,
    };
    // The estimate left June's windows; the actual cost went to July's.
    assert_eq!(
        counters,
        vec![
            row("monthly", day(6, 1), 0.0, 0.0),
            row("daily", day(6, 30), 0.0, 0.0),
            row("daily", day(7, 1), 30.0, 0.0),
            row("monthly", day(7, 1), 30.0, 0.0),
        ]
    );
    for d in [day(6, 30), day(7, 1)] {
        let lines = conn
            .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, d))
            .unwrap();
        assert!(lines.iter().all(|l| l.matches()), "{d}: {lines:?}");
    }
}

#[test]
fn a_vanished_holder_reclaimed_at_expiry_is_billed_once_when_it_settles_late() {
    let tenant = common::tenant();
    let b = budget(&tenant, 100, true);
    let svc = service(AdmissionConfig::default());
    // Reclaiming expires every tenant's reservations up to an instant: this test's come
    // before every other test's of this binary, so it reclaims only its own.
    let then = Utc.with_ymd_and_hms(2025, 3, 3, 9, 0, 0).unwrap();
    let ask = |request: &str, cents: f64| ReserveInput {
        now: then,
        expires_at: then + chrono::Duration::minutes(5),
        ..ask(request, cents)
    };
    let actual = |r: &Reservation, cents: f64| CostInput {
        created_at: Some(then),
        ..actual(r, cents)
    };
    let lost = admitted(svc.reserve(&tenant, &ask("lost", 80.0)).unwrap()).unwrap();
    // While it is held there is no room for another 80.
    assert!(admitted(svc.reserve(&tenant, &ask("blocked", 80.0)).unwrap()).is_none());
    let mut conn = common::conn();
    let reclaimed = conn
        .transaction(|c| AdmissionDriver::new(c).reclaim_expired(lost.expires_at, 100))
        .unwrap();
    assert_eq!(reclaimed, 1);
    // The budget has room again; the lost holder comes back late and is billed once, its
    // estimate not given back a second time, and a release changes nothing.
    let again = admitted(svc.reserve(&tenant, &ask("again", 100.0)).unwrap()).unwrap();
    let late = svc.settle(&lost, &actual(&lost, 70.0)).unwrap();
    assert!(late.charged && !late.released);
    assert!(!svc.release(&lost).unwrap());
    assert!(svc.release(&again).unwrap());
    let lines = conn
        .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, then.date_naive()))
        .unwrap();
    assert!(
        lines
            .iter()
            .all(|l| l.matches() && l.recorded_cents == 70.0 && l.reserved_cents == 0.0),
        "{lines:?}"
    );
    assert_eq!(
        lines
            .iter()
            .map(|l| l.budget_id.as_str())
            .collect::<Vec<_>>(),
        vec![b.as_str(), b.as_str()]
    );
}
