//! Reliability against a real PostgreSQL: the server restarted in the middle of every kind
//! of traffic, backends killed at the worst moments, mixed load for a bounded time, and
//! hostile input through the write methods. Whatever happens, nothing acknowledged is lost
//! or counted twice, no alert is delivered twice, no hard budget is exceeded, and there is
//! never more than one leader that can still write.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use costdb::admission::{Admission, AdmissionDriver, ReserveInput};
use costdb::drivers::{BudgetLimits, FeatureTagInput, NewAlert, Outcome, ProvenanceInput};
use costdb::leader::{self, LeaderGuard};
use costdb::models::CostInput;
use costdb::models::{AlertStatus, AlertType};
use costdb::recorder::{CostRecorder, RecorderConfig};
use costdb::types::{BudgetScope, RunId, TenantId};
use costdb::{
    db, drivers::AlertDriver, drivers::CostWriteDriver, drivers::ProvenanceDriver, Error,
};
use costdb_testkit::EmbeddedPostgres;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut PgConnection, sql: &str, tenant: &str) -> i64 {
    diesel::sql_query(sql)
        .bind::<Text, _>(tenant)
        .get_result::<N>(conn)
        .unwrap()
        .n
}

fn call(tenant: &str, request: String, cents: f64) -> CostInput {
    CostInput {
        tenant_id: tenant.into(),
        request_id: Some(request),
        model: "gpt-4o".into(),
        input_tokens: 100,
        output_tokens: 20,
        cost_cents: cents,
        ..CostInput::default()
    }
}

fn hard_budget(conn: &mut PgConnection, tenant: &TenantId, daily: i32) {
    conn.transaction(|c| {
        CostWriteDriver::new(c).upsert_budget(
            tenant,
            &BudgetScope::Tenant,
            &BudgetLimits {
                daily_limit_cents: Some(daily),
                monthly_limit_cents: None,
                warn_threshold_pct: 80,
                hard_limit_enabled: true,
            },
        )
    })
    .unwrap();
}

fn queue_alerts(conn: &mut PgConnection, n: usize) {
    conn.transaction(|c| {
        let mut q = AlertDriver::new(c);
        for i in 0..n {
            q.insert_alert(&NewAlert {
                payload: serde_json::json!([{ "labels": { "n": i } }]),
                alert_type: AlertType::Disable,
                circuit_breaker_name: None,
                incident_id: None,
                max_attempts: 10,
            })?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
}

/// Delivers due alerts in batches until none is due or `stop`; returns the ids it marked
/// sent in committed transactions. Errors (a restarting server) are retried with a new
/// connection until `deadline`.
fn deliver(url: &str, stop: &AtomicBool, deadline: Instant) -> Vec<i64> {
    let mut mine = Vec::new();
    let mut conn: Option<PgConnection> = None;
    while Instant::now() < deadline {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match db::connect(url) {
                Ok(c) => conn.insert(c),
                Err(_) => continue,
            },
        };
        let batch = c.transaction(|c| {
            let mut q = AlertDriver::new(c);
            let due = q.fetch_pending_alerts(Utc::now(), 5)?;
            let ids: Vec<i64> = due.iter().map(|a| a.id).collect();
            q.update_alerts_sent(&ids, Utc::now())?;
            Ok::<_, Error>(ids)
        });
        match batch {
            Ok(ids) if ids.is_empty() => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            Ok(ids) => mine.extend(ids),
            Err(_) => conn = None,
        }
    }
    mine
}

/// What each writer was told, by request id: the stored record's id, or the error.
type Told = Vec<(String, costdb::Result<String>)>;

#[test]
fn a_server_restart_in_the_middle_of_all_traffic_loses_and_doubles_nothing() {
    let pg = EmbeddedPostgres::start().unwrap();
    let url = costdb_testkit::create_database(&pg.url("postgres"), "faults").unwrap();
    costdb_testkit::migrate_and_lay_out(&url).unwrap();
    let mut setup = db::connect(&url).unwrap();
    let tenant = common::tenant();
    hard_budget(&mut setup, &tenant, 5_000);
    queue_alerts(&mut setup, 300);
    let pool = db::pool(&url, 6, Duration::from_secs(30)).unwrap();
    let recorder = CostRecorder::start(
        &url,
        RecorderConfig {
            retry_deadline: Duration::from_secs(60),
            ..RecorderConfig::default()
        },
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stop = Arc::new(AtomicBool::new(false));
    let told: Arc<Mutex<Told>> = Arc::default();
    let admitted = Arc::new(Mutex::new(0.0f64));
    let mut threads = Vec::new();
    // Bulk ingestion through the pool, 50 rows a transaction.
    for w in 0..2 {
        let (pool, tenant, told, stop) = (pool.clone(), tenant.clone(), told.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut batch = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                batch += 1;
                let rows: Vec<CostInput> = (0..50)
                    .map(|k| call(&tenant, format!("bulk-{w}-{batch}-{k}"), 1.0))
                    .collect();
                let result = pool.get().map_err(Error::from).and_then(|mut c| {
                    c.transaction(|c| CostWriteDriver::new(c).record_costs(&rows))
                });
                let mut told = told.lock().unwrap();
                for (i, row) in rows.iter().enumerate() {
                    let r = result
                        .as_ref()
                        .map(|ids| ids[i].id.clone())
                        .map_err(|e| Error::Conflict(costdb::report(e)));
                    told.push((row.request_id.clone().unwrap(), r));
                }
            }
        }));
    }
    // Recorder traffic.
    for w in 0..4 {
        let (recorder, tenant, told, stop) =
            (recorder.clone(), tenant.clone(), told.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                n += 1;
                let request = format!("rec-{w}-{n}");
                let r = recorder.record(call(&tenant, request.clone(), 1.0));
                told.lock().unwrap().push((request, r.map(|r| r.id)));
            }
        }));
    }
    // Admission: reserve and settle 7¢ calls against the hard 5,000¢ budget.
    for w in 0..2 {
        let (pool, tenant, told, stop, admitted) = (
            pool.clone(),
            tenant.clone(),
            told.clone(),
            stop.clone(),
            admitted.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let now = Utc::now();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                n += 1;
                let request = format!("adm-{w}-{n}");
                let ask = ReserveInput {
                    request_id: request.clone(),
                    feature_tag: None,
                    user_id: None,
                    estimated_cents: 7.0,
                    expires_at: now + chrono::Duration::hours(1),
                    now,
                };
                let Ok(mut c) = pool.get() else { continue };
                let Ok(Admission::Admitted { reservation, .. }) =
                    c.transaction(|c| AdmissionDriver::new(c).reserve(&tenant, &ask))
                else {
                    continue;
                };
                let actual = CostInput {
                    created_at: Some(now),
                    ..call(&tenant, request.clone(), 7.0)
                };
                let settled =
                    c.transaction(|c| AdmissionDriver::new(c).settle(&reservation, &actual));
                if let Ok(s) = &settled {
                    if s.charged {
                        *admitted.lock().unwrap() += 7.0;
                    }
                }
                told.lock()
                    .unwrap()
                    .push((request, settled.map(|s| s.cost.id)));
            }
        }));
    }
    // Two alert workers.
    let delivered: Vec<_> = (0..2)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || deliver(&url, &stop, deadline))
        })
        .collect();

    // Restart once every kind of traffic has made progress.
    while recorder.stats().rows < 200 {
        std::thread::yield_now();
    }
    pg.stop_server().unwrap();
    pg.start_server().unwrap();
    let after_restart = recorder.stats().rows;
    while recorder.stats().rows < after_restart + 200 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(
        recorder.stats().rows >= after_restart + 200,
        "the recorder recovered by itself: {:?}",
        recorder.stats()
    );
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("no writer panicked");
    }
    let delivered: Vec<i64> = delivered
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    recorder.shutdown();
    // The pool recovered by itself: its next connection works.
    let after = [call(&tenant, "after-restart".into(), 1.0)];
    let ids = pool
        .get()
        .unwrap()
        .transaction(|c| CostWriteDriver::new(c).record_costs(&after))
        .unwrap();
    told.lock()
        .unwrap()
        .push(("after-restart".into(), Ok(ids[0].id.clone())));

    let mut conn = db::connect(&url).unwrap();
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(sql_type = Text)]
        request_id: String,
    }
    let rows: Vec<Row> =
        diesel::sql_query("SELECT id, request_id FROM cost_records WHERE tenant_id = $1")
            .bind::<Text, _>(&tenant)
            .load(&mut conn)
            .unwrap();
    let mut stored: HashMap<String, Vec<String>> = HashMap::new();
    for r in rows {
        stored.entry(r.request_id).or_default().push(r.id);
    }
    let told = told.lock().unwrap();
    let (mut ok, mut failed) = (0, 0);
    for (request, result) in told.iter() {
        let ids = stored.get(request).cloned().unwrap_or_default();
        match result {
            Ok(id) => {
                ok += 1;
                assert_eq!(ids, vec![id.clone()], "{request}: acknowledged once");
            }
            Err(Error::NotRecorded {
                id,
                outcome_unknown: true,
                ..
            }) => {
                failed += 1;
                assert!(ids.is_empty() || ids == vec![id.clone()], "{request}");
            }
            Err(_) => {
                failed += 1;
                // A bulk transaction or settlement that failed left nothing behind, unless
                // its COMMIT's answer was lost with the connection.
                assert!(ids.len() <= 1, "{request}: {ids:?}");
            }
        }
    }
    assert!(ok > 400, "{ok} acknowledged, {failed} failed");
    // No alert delivered twice, none lost: every alert is sent or still pending.
    let distinct: HashSet<i64> = delivered.iter().copied().collect();
    assert_eq!(distinct.len(), delivered.len(), "no alert delivered twice");
    let stats = AlertDriver::new(&mut conn).fetch_queue_stats().unwrap();
    assert_eq!(stats.sent + stats.pending, 300);
    assert!(stats.sent as usize >= distinct.len());
    // The budget: counters equal the records settled through it, never over the limit.
    let lines = conn
        .transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, Utc::now().date_naive()))
        .unwrap();
    let daily = lines
        .iter()
        .find(|l| l.period == costdb::models::BudgetPeriod::Daily)
        .unwrap();
    assert!(
        daily.counted_cents + daily.reserved_cents <= 5_000.0,
        "{daily:?}"
    );
    assert!(daily.counted_cents >= *admitted.lock().unwrap());
}

#[test]
fn killed_backends_lose_leadership_and_give_back_claims_and_reservations() {
    let url = common::database_url();
    let mut killer = common::conn();
    let kill = |killer: &mut PgConnection, pid: i32| {
        diesel::sql_query("SELECT pg_terminate_backend($1)::int AS n")
            .bind::<diesel::sql_types::Int4, _>(pid)
            .execute(killer)
            .unwrap();
    };
    let pid_of = common::backend_pid;

    // Leadership: the leader's backend is killed; it knows, and its term is stale.
    let lock = 7_777_001;
    let mut first = LeaderGuard::acquire(url, lock, "first", Duration::from_secs(5))
        .unwrap()
        .unwrap();
    kill(&mut killer, first.backend_pid());
    assert!(!first.still_leader(), "the leader knows it lost the lock");
    let second = LeaderGuard::acquire(url, lock, "second", Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert!(second.term() > first.term());
    let mut writer = common::test_conn();
    assert!(matches!(
        leader::check_term(&mut writer, lock, first.term()),
        Err(Error::StaleTerm { .. })
    ));
    leader::check_term(&mut writer, lock, second.term()).unwrap();
    drop(second);

    // Locked delivery: the worker dies holding locked alerts; they are due again at once.
    let mut setup = common::conn();
    setup
        .batch_execute("DELETE FROM costsim_alert_queue")
        .unwrap();
    queue_alerts(&mut setup, 6);
    let mut worker = db::connect(url).unwrap();
    let pid = pid_of(&mut worker);
    let held = worker.transaction(|c| {
        let due = AlertDriver::new(c).fetch_pending_alerts(Utc::now(), 3)?;
        kill(&mut killer, pid);
        // The marks never commit: the backend is gone.
        let ids: Vec<i64> = due.iter().map(|a| a.id).collect();
        AlertDriver::new(c).update_alerts_sent(&ids, Utc::now())
    });
    assert!(held.is_err());
    let stats = AlertDriver::new(&mut setup).fetch_queue_stats().unwrap();
    assert_eq!((stats.pending, stats.sent), (6, 0));

    // Leased delivery: the worker dies after claiming; after the lease the alerts come back
    // and its late outcome is refused.
    let mut worker = db::connect(url).unwrap();
    let now = Utc::now();
    let claims = worker
        .transaction(|c| AlertDriver::new(c).claim_alerts(now, chrono::Duration::seconds(30), 6))
        .unwrap();
    assert_eq!(claims.len(), 6);
    let pid = pid_of(&mut worker);
    kill(&mut killer, pid);
    let mut other = db::connect(url).unwrap();
    let early = other
        .transaction(|c| AlertDriver::new(c).claim_alerts(now, chrono::Duration::seconds(30), 6))
        .unwrap();
    assert!(
        early.is_empty(),
        "leased alerts are not due before the lease ends"
    );
    let later = now + chrono::Duration::seconds(31);
    let again = other
        .transaction(|c| AlertDriver::new(c).claim_alerts(later, chrono::Duration::seconds(30), 6))
        .unwrap();
    assert_eq!(again.len(), 6);
    let late = other
        .transaction(|c| AlertDriver::new(c).settle_claim(&claims[0], &Outcome::Sent { at: later }))
        .unwrap();
    assert!(!late, "the dead worker's outcome is refused");

    // A driver call whose backend is killed while it runs leaves nothing.
    let tenant = common::tenant();
    let mut victim = db::connect(url).unwrap();
    let pid = pid_of(&mut victim);
    let rows: Vec<CostInput> = (0..5_000)
        .map(|k| call(&tenant, format!("k{k}"), 1.0))
        .collect();
    let result = victim.transaction(|c| {
        CostWriteDriver::new(c).record_costs(&rows[..2_500])?;
        kill(&mut killer, pid);
        CostWriteDriver::new(c).record_costs(&rows[2_500..])
    });
    assert!(result.is_err());
    assert_eq!(
        common::count_for_tenant(&mut setup, "cost_records", &tenant),
        0
    );

    // Between reserve and settle: the holder's backend dies; after expiry the estimate is
    // reclaimed.
    hard_budget(&mut setup, &tenant, 100);
    let at = Utc::now();
    let mut holder = db::connect(url).unwrap();
    let ask = ReserveInput {
        request_id: "dies".into(),
        feature_tag: None,
        user_id: None,
        estimated_cents: 100.0,
        expires_at: at + chrono::Duration::seconds(10),
        now: at,
    };
    assert!(matches!(
        holder
            .transaction(|c| AdmissionDriver::new(c).reserve(&tenant, &ask))
            .unwrap(),
        Admission::Admitted { .. }
    ));
    let pid = pid_of(&mut holder);
    kill(&mut killer, pid);
    let full = ReserveInput {
        request_id: "next".into(),
        ..ask.clone()
    };
    assert!(matches!(
        setup
            .transaction(|c| AdmissionDriver::new(c).reserve(&tenant, &full))
            .unwrap(),
        Admission::Refused { .. }
    ));
    let back = setup
        .transaction(|c| {
            AdmissionDriver::new(c).reclaim_expired(at + chrono::Duration::seconds(10), 1_000)
        })
        .unwrap();
    assert!(back >= 1);
    assert!(matches!(
        setup
            .transaction(|c| AdmissionDriver::new(c).reserve(&tenant, &full))
            .unwrap(),
        Admission::Admitted { .. }
    ));
}

#[test]
fn mixed_load_for_a_bounded_time_keeps_every_promise() {
    let url = common::database_url().to_owned();
    let tenant = common::tenant();
    let mut setup = common::conn();
    let budgets: Vec<TenantId> = (0..3)
        .map(|i| common::tid(&format!("{tenant}-b{i}")))
        .collect();
    for b in &budgets {
        hard_budget(&mut setup, b, 700);
    }
    queue_alerts(&mut setup, 200);
    let recorder = CostRecorder::start(&url, RecorderConfig::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let lock = 7_777_002;
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS reliability_leader_log (lock_id bigint, term bigint, holder text, at timestamptz DEFAULT clock_timestamp())")
        .unwrap();
    let acknowledged: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut threads = Vec::new();
    for w in 0..8 {
        let (url, tenant, recorder, acknowledged) = (
            url.clone(),
            tenant.clone(),
            recorder.clone(),
            acknowledged.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut conn = db::connect(&url).unwrap();
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                // Every fifth request repeats an earlier one of this writer.
                let request = |k: usize| format!("m{w}-{}", if k % 5 == 4 { k - 2 } else { k });
                if w % 2 == 0 {
                    let r = recorder.record(call(&tenant, request(n), 2.0)).unwrap();
                    let first = acknowledged
                        .lock()
                        .unwrap()
                        .entry(request(n))
                        .or_insert(r.id.clone())
                        .clone();
                    assert_eq!(first, r.id, "a repeated request gets the first id");
                } else {
                    let rows: Vec<CostInput> = (0..20)
                        .map(|k| call(&tenant, request(n * 20 + k), 2.0))
                        .collect();
                    let ids = conn
                        .transaction(|c| CostWriteDriver::new(c).record_costs(&rows))
                        .unwrap();
                    let mut ack = acknowledged.lock().unwrap();
                    for (row, r) in rows.iter().zip(ids) {
                        let first = ack
                            .entry(row.request_id.clone().unwrap())
                            .or_insert(r.id.clone())
                            .clone();
                        assert_eq!(first, r.id);
                    }
                }
            }
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || deliver(&url, &stop, deadline))
        })
        .collect();
    for r in 0..16 {
        let (url, budgets) = (url.clone(), budgets.clone());
        threads.push(std::thread::spawn(move || {
            let mut conn = db::connect(&url).unwrap();
            let now = Utc::now();
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                let tenant = &budgets[(r + n) % budgets.len()];
                let ask = ReserveInput {
                    request_id: format!("r{r}-{n}"),
                    feature_tag: None,
                    user_id: None,
                    estimated_cents: 9.0,
                    expires_at: now + chrono::Duration::hours(1),
                    now,
                };
                if let Admission::Admitted { reservation, .. } = conn
                    .transaction(|c| AdmissionDriver::new(c).reserve(tenant, &ask))
                    .unwrap()
                {
                    let actual = CostInput {
                        created_at: Some(now),
                        ..call(tenant, ask.request_id.clone(), 9.0)
                    };
                    conn.transaction(|c| AdmissionDriver::new(c).settle(&reservation, &actual))
                        .unwrap();
                }
            }
        }));
    }
    // Two contenders for leadership: whoever leads writes fenced rows.
    for name in ["leader-a", "leader-b"] {
        let url = url.clone();
        threads.push(std::thread::spawn(move || {
            let mut conn = db::connect(&url).unwrap();
            while Instant::now() < deadline {
                let Some(guard) = LeaderGuard::acquire(&url, lock, name, Duration::from_secs(5)).unwrap() else {
                    std::thread::yield_now();
                    continue;
                };
                for _ in 0..5 {
                    conn.transaction(|c| {
                        leader::check_term(c, lock, guard.term())?;
                        diesel::sql_query("INSERT INTO reliability_leader_log (lock_id, term, holder) VALUES ($1, $2, $3)")
                            .bind::<BigInt, _>(lock)
                            .bind::<BigInt, _>(guard.term())
                            .bind::<Text, _>(name)
                            .execute(c)?;
                        Ok::<_, Error>(())
                    })
                    .unwrap();
                }
                guard.release().unwrap();
            }
        }));
    }
    for t in threads {
        t.join().expect("no thread failed");
    }
    stop.store(true, Ordering::SeqCst);
    let delivered: Vec<i64> = workers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    recorder.shutdown();

    // Totals equal what was acknowledged; no duplicates.
    let acknowledged = acknowledged.lock().unwrap();
    let stored = count(
        &mut setup,
        "SELECT count(*) AS n FROM cost_records WHERE tenant_id = $1",
        &tenant,
    );
    assert_eq!(stored as usize, acknowledged.len());
    let distinct = count(
        &mut setup,
        "SELECT count(DISTINCT request_id) AS n FROM cost_records WHERE tenant_id = $1",
        &tenant,
    );
    assert_eq!(distinct, stored);
    // Alerts: each delivered once, all delivered.
    let once: HashSet<i64> = delivered.iter().copied().collect();
    assert_eq!(once.len(), delivered.len());
    assert_eq!(
        count(
            &mut setup,
            "SELECT count(*) AS n FROM costsim_alert_queue WHERE status = $1",
            AlertStatus::Sent.as_str()
        ),
        once.len() as i64
    );
    // No budget over its limit; counters match the records.
    for b in &budgets {
        let lines = setup
            .transaction(|c| AdmissionDriver::new(c).reconcile(b, Utc::now().date_naive()))
            .unwrap();
        for l in lines
            .iter()
            .filter(|l| l.period == costdb::models::BudgetPeriod::Daily)
        {
            assert!(l.matches(), "{l:?}");
            assert!(l.counted_cents <= 700.0, "{l:?}");
            assert!(l.counted_cents > 600.0, "the budget was filled: {l:?}");
        }
    }
    // One leader at a time: each term has one holder, and the terms' rows never interleave.
    #[derive(QueryableByName)]
    struct Log {
        #[diesel(sql_type = BigInt)]
        term: i64,
        #[diesel(sql_type = Text)]
        holder: String,
    }
    let log: Vec<Log> = diesel::sql_query(
        "SELECT term, holder FROM reliability_leader_log WHERE lock_id = $1 ORDER BY at",
    )
    .bind::<BigInt, _>(lock)
    .load(&mut setup)
    .unwrap();
    assert!(log.len() >= 10, "leadership changed hands: {}", log.len());
    assert!(
        log.windows(2).all(|w| w[0].term <= w[1].term),
        "terms never go back"
    );
    let mut holders: HashMap<i64, &str> = HashMap::new();
    for l in &log {
        assert_eq!(
            *holders.entry(l.term).or_insert(&l.holder),
            l.holder,
            "one holder per term"
        );
    }
}

/// Strings that must be stored and read back exactly.
const HOSTILE: [&str; 6] = [
    "'; DROP TABLE cost_records; --",
    "\" OR 1=1 --",
    "$1 $2 \\x00 %s %n",
    "Robert'); DELETE FROM cost_budgets WHERE ('a' = 'a",
    "\u{202e}rtl\u{200b}zero-width",
    "😀𝄞漢字",
];

#[test]
fn hostile_text_is_stored_exactly_or_refused_naming_the_field() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    for (i, text) in HOSTILE.iter().enumerate() {
        let cost = CostInput {
            user_id: Some((*text).into()),
            feature_tag: Some((*text).into()),
            workflow_id: Some((*text).into()),
            model: (*text).into(),
            ..call(&tenant, format!("{text}-{i}"), 1.0)
        };
        let stored = CostWriteDriver::new(&mut conn)
            .insert_cost_record(&cost)
            .unwrap();
        assert_eq!(stored.model, *text);
        assert_eq!(stored.user_id.as_deref(), Some(*text));
        let tag = CostWriteDriver::new(&mut conn)
            .insert_feature_tag(
                &tenant,
                &FeatureTagInput {
                    tag: format!("{i}{text}"),
                    display_name: (*text).into(),
                    description: Some((*text).into()),
                    budget_cents: None,
                },
            )
            .unwrap();
        assert_eq!(tag.display_name, *text);
    }
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_records", &tenant),
        HOSTILE.len() as i64
    );
    // Column lengths are counted in characters, also for 4-byte UTF-8.
    let at_limit = "𝄞".repeat(64);
    let over = "𝄞".repeat(65);
    let ok = CostWriteDriver::new(&mut conn)
        .insert_cost_record(&CostInput {
            model: at_limit.clone(),
            ..call(&tenant, "len".into(), 1.0)
        })
        .unwrap();
    assert_eq!(ok.model, at_limit);
    let before = common::count_for_tenant(&mut conn, "cost_records", &tenant);
    let mut w = CostWriteDriver::new(&mut conn);
    common::assert_invalid(
        w.insert_cost_record(&CostInput {
            model: over.clone(),
            ..call(&tenant, "o".into(), 1.0)
        }),
        "model",
    );
    common::assert_invalid(
        w.insert_cost_record(&call(&over, "o".into(), 1.0)),
        "tenant_id",
    );
    common::assert_invalid(
        w.insert_cost_record(&call(&tenant, "a\0b".into(), 1.0)),
        "request_id",
    );
    common::assert_invalid(
        w.record_costs(&[
            call(&tenant, "x".into(), 1.0),
            CostInput {
                user_id: Some("\0".into()),
                ..call(&tenant, "y".into(), 1.0)
            },
        ]),
        "user_id",
    );
    for cents in [
        -1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e12 + 1.0,
        f64::MAX,
    ] {
        common::assert_invalid(
            w.insert_cost_record(&call(&tenant, "c".into(), cents)),
            "cost_cents",
        );
    }
    common::assert_invalid(
        w.insert_cost_record(&CostInput {
            input_tokens: -1,
            ..call(&tenant, "t".into(), 1.0)
        }),
        "input_tokens",
    );
    // Instants at the edges: the first PostgreSQL holds is stored; one before is refused.
    let first = Utc.with_ymd_and_hms(-4713, 11, 24, 0, 0, 0).unwrap();
    let edge = w
        .insert_cost_record(&CostInput {
            created_at: Some(first),
            ..call(&tenant, "edge".into(), 0.0)
        })
        .unwrap();
    assert_eq!(edge.created_at, first);
    common::assert_invalid(
        w.insert_cost_record(&CostInput {
            created_at: Some(first - chrono::Duration::microseconds(1)),
            ..call(&tenant, "edge2".into(), 0.0)
        }),
        "created_at",
    );
    let last: DateTime<Utc> = DateTime::<Utc>::MAX_UTC;
    let far = w
        .insert_cost_record(&CostInput {
            created_at: Some(last),
            ..call(&tenant, "far".into(), 0.0)
        })
        .unwrap();
    assert_eq!(far.created_at.timestamp(), last.timestamp());
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_records", &tenant),
        before + 2
    );
    // Zero and huge-but-allowed amounts are stored exactly.
    let big = CostWriteDriver::new(&mut conn)
        .insert_cost_record(&call(&tenant, "big".into(), 1e12))
        .unwrap();
    assert_eq!(big.cost_cents, 1e12);
}

/// `[{"k": [{"k": … "leaf" …}]}]`, `depth` levels.
fn nested(depth: usize) -> serde_json::Value {
    let mut deep = serde_json::json!("leaf");
    for i in 0..depth {
        // Built by hand: `json!` would serialize `deep` again at every level.
        deep = if i % 2 == 0 {
            serde_json::Value::Array(vec![deep])
        } else {
            serde_json::Value::Object(serde_json::Map::from_iter([("k".to_owned(), deep)]))
        };
    }
    deep
}

/// Takes `value` apart level by level: dropping thousands of levels at once would recurse.
fn dismantle(mut value: serde_json::Value) {
    loop {
        value = match value {
            serde_json::Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
            serde_json::Value::Object(mut map) if !map.is_empty() => {
                map.remove("k").unwrap_or_default()
            }
            _ => return,
        };
    }
}

#[test]
fn json_nested_thousands_deep_is_hashed_and_refused_or_stored_exactly() {
    let deep = nested(5_000);
    // The hash walks any depth without recursion.
    let hash = costdb::input_hash::compute_input_hash(&deep);
    assert_eq!(hash.len(), 16);
    let shallower = nested(4_999);
    assert_ne!(hash, costdb::input_hash::compute_input_hash(&shallower));
    dismantle(shallower);
    let mut conn = common::test_conn();
    let input = ProvenanceInput {
        input_hash: Some(hash.clone()),
        payload: Some(deep),
        ..ProvenanceInput::default()
    };
    common::assert_invalid(
        ProvenanceDriver::new(&mut conn).insert_provenance(&input),
        "payload",
    );
    dismantle(input.payload.unwrap());
    let over = nested(costdb::MAX_JSON_DEPTH);
    common::assert_invalid(
        ProvenanceDriver::new(&mut conn).insert_provenance(&ProvenanceInput {
            payload: Some(over),
            ..ProvenanceInput::default()
        }),
        "payload",
    );
    // At the bound it is stored and read back exactly.
    let ok = nested(costdb::MAX_JSON_DEPTH - 1);
    let id = ProvenanceDriver::new(&mut conn)
        .insert_provenance(&ProvenanceInput {
            payload: Some(ok.clone()),
            ..ProvenanceInput::default()
        })
        .unwrap();
    #[derive(QueryableByName)]
    struct Payload {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        payload: serde_json::Value,
    }
    let back: Payload = diesel::sql_query("SELECT payload FROM costsim_provenance WHERE id = $1")
        .bind::<BigInt, _>(id)
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(back.payload, ok);
    // NUL in a JSON key is refused before SQL, naming the field.
    common::assert_invalid(
        ProvenanceDriver::new(&mut conn).insert_provenance(&ProvenanceInput {
            payload: Some(serde_json::json!({ "a\u{0}b": 1 })),
            ..ProvenanceInput::default()
        }),
        "payload",
    );
}

#[test]
fn hostile_text_through_the_other_write_methods_is_stored_exactly() {
    use costdb::drivers::{FeedbackInput, PredictionInput, WorkerRunData};
    use costdb::models::{PatternSeverity, PatternType, PredictionType, SubjectType};
    use costdb::{
        drivers::PatternDetectionDriver, drivers::PredictionDriver, drivers::WorkerWriteDriver,
    };
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    for (i, text) in HOSTILE.iter().enumerate() {
        let run_id = RunId::new(format!("run-{i}")).unwrap();
        let run = WorkerWriteDriver::new(&mut conn)
            .upsert_worker_run(
                &tenant,
                &run_id,
                &WorkerRunData {
                    task: Some((*text).into()),
                    error: Some(Some((*text).into())),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            (run.task.as_str(), run.error.as_deref()),
            (*text, Some(*text))
        );
        let budget = CostWriteDriver::new(&mut conn)
            .upsert_budget(
                &tenant,
                &BudgetScope::Feature((*text).into()),
                &BudgetLimits {
                    daily_limit_cents: Some(1),
                    monthly_limit_cents: None,
                    warn_threshold_pct: 80,
                    hard_limit_enabled: false,
                },
            )
            .unwrap();
        assert_eq!(budget.entity_id.as_deref(), Some(*text));
        let alert = AlertDriver::new(&mut conn)
            .insert_alert(&NewAlert {
                payload: serde_json::json!([{ "labels": { *text: *text } }]),
                alert_type: AlertType::Enable,
                circuit_breaker_name: Some((*text).into()),
                incident_id: Some((*text).into()),
                max_attempts: 1,
            })
            .unwrap();
        assert_eq!(alert.circuit_breaker_name.as_deref(), Some(*text));
        assert_eq!(alert.payload[0]["labels"][*text], *text);
        let feedback = PatternDetectionDriver::new(&mut conn)
            .insert_feedback(
                &tenant,
                &FeedbackInput {
                    pattern_type: PatternType::FailurePattern,
                    severity: PatternSeverity::Info,
                    description: (*text).into(),
                    signature: Some((*text).into()),
                    provenance: vec![(*text).into()],
                    occurrence_count: 1,
                    time_window_minutes: None,
                    threshold_used: Some((*text).into()),
                    metadata: Some(serde_json::json!({ "why": *text })),
                    detected_at: None,
                },
            )
            .unwrap();
        assert_eq!(
            (feedback.description.as_str(), feedback.signature.as_deref()),
            (*text, Some(*text))
        );
        let prediction = PredictionDriver::new(&mut conn)
            .insert_prediction(
                &tenant,
                &PredictionInput {
                    prediction_type: PredictionType::CostOverrun,
                    subject_type: SubjectType::Run,
                    subject_id: (*text).into(),
                    confidence_score: 0.5,
                    prediction_value: serde_json::json!({ "v": *text }),
                    contributing_factors: vec![],
                    expires_at: Utc::now() + chrono::Duration::days(1),
                    created_at: None,
                    notes: Some((*text).into()),
                },
            )
            .unwrap();
        assert_eq!(
            (prediction.subject_id.as_str(), prediction.notes.as_deref()),
            (*text, Some(*text))
        );
    }
    // NUL is refused before SQL in each of them, naming the field, and nothing is added.
    let runs_before = common::count_for_tenant(&mut conn, "worker_runs", &tenant);
    common::assert_invalid(
        WorkerWriteDriver::new(&mut conn).upsert_worker_run(
            &tenant,
            &RunId::new("nul").unwrap(),
            &WorkerRunData {
                task: Some("a\0".into()),
                ..Default::default()
            },
        ),
        "task",
    );
    common::assert_invalid(
        CostWriteDriver::new(&mut conn).upsert_budget(
            &tenant,
            &BudgetScope::User("\0".into()),
            &BudgetLimits {
                daily_limit_cents: Some(1),
                monthly_limit_cents: None,
                warn_threshold_pct: 80,
                hard_limit_enabled: false,
            },
        ),
        "entity_id",
    );
    assert_eq!(
        common::count_for_tenant(&mut conn, "worker_runs", &tenant),
        runs_before
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Mostly short text with quotes, NUL, 4-byte characters; sometimes long.
        prop_oneof![
            4 => "[a-z'\"%;\\\\\u{0}😀𝄞-]{0,70}",
            1 => "[😀a]{60,70}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any model and user text and any cost: stored and read back exactly, or refused
        /// naming the field (and then nothing is stored).
        #[test]
        fn a_cost_record_is_stored_exactly_or_refused(model in text(), user in text(), cents in proptest::num::f64::ANY) {
            let mut conn = common::test_conn();
            let tenant = common::tenant();
            let cost = CostInput { model: model.clone(), user_id: Some(user.clone()), ..call(&tenant, "p".into(), cents) };
            let valid_text = |s: &str| !s.trim().is_empty() && s.chars().count() <= 64 && !s.contains('\0');
            let result = CostWriteDriver::new(&mut conn).insert_cost_record(&cost);
            // Fields are checked in declaration order: the user before the model.
            if !valid_text(&user) {
                prop_assert!(matches!(result, Err(Error::InvalidInput { field: "user_id", .. })), "{:?}", result);
            } else if !valid_text(&model) {
                prop_assert!(matches!(result, Err(Error::InvalidInput { field: "model", .. })), "{:?}", result);
            } else if !(cents.is_finite() && (0.0..=costdb::MAX_AMOUNT_CENTS).contains(&cents)) {
                prop_assert!(matches!(result, Err(Error::InvalidInput { field: "cost_cents", .. })), "{:?}", result);
            } else {
                let stored = result.unwrap();
                prop_assert_eq!(&stored.model, &model);
                prop_assert_eq!(stored.user_id.as_deref(), Some(user.as_str()));
                prop_assert_eq!(stored.cost_cents, cents + 0.0);
                return Ok(());
            }
            prop_assert_eq!(common::count_for_tenant(&mut conn, "cost_records", &tenant), 0);
        }
    }
}
