//! CostRecorder against a real PostgreSQL: many callers share commits, every acknowledged
//! record is stored exactly once through a server restart and killed backends, bad input
//! fails alone, a full queue pushes back, and shutdown writes what is queued.

mod common;

use costdb::types::TenantId;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use costdb::models::CostInput;
use costdb::recorder::{CostRecorder, RecorderConfig};
use costdb::{db, Error};
use costdb_testkit::EmbeddedPostgres;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

fn call(tenant: &TenantId, request: String, cents: f64) -> CostInput {
    CostInput {
        tenant_id: tenant.into(),
        request_id: Some(request),
        model: "gpt-4o-mini".into(),
        input_tokens: 300,
        output_tokens: 40,
        cost_cents: cents,
        ..CostInput::default()
    }
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    request_id: String,
}

/// request id → ids stored under it, for the tenant.
fn stored(conn: &mut PgConnection, tenant: &TenantId) -> HashMap<String, Vec<String>> {
    let rows: Vec<Stored> =
        diesel::sql_query("SELECT id, request_id FROM cost_records WHERE tenant_id = $1")
            .bind::<Text, _>(tenant)
            .load(conn)
            .unwrap();
    let mut by_request: HashMap<String, Vec<String>> = HashMap::new();
    for r in rows {
        by_request.entry(r.request_id).or_default().push(r.id);
    }
    by_request
}

/// What each caller was told: request id → the result of `record`.
type Told = Vec<(String, costdb::Result<costdb::drivers::RecordedCost>)>;

/// `threads` callers recording `each` calls; returns what they were told.
fn stream(recorder: &CostRecorder, tenant: &TenantId, threads: usize, each: usize) -> Told {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (recorder, tenant, barrier) =
                (recorder.clone(), tenant.to_owned(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..each)
                    .map(|n| {
                        let request = format!("q{t}-{n}");
                        let told = recorder.record(call(&tenant, request.clone(), 1.25));
                        (request, told)
                    })
                    .collect::<Told>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// Every `Ok` is stored exactly once under its id; every plain `Err` is absent; an
/// `Err` with an unknown outcome is stored at most once, under the id it carries.
fn assert_exactly_what_was_acknowledged(
    conn: &mut PgConnection,
    tenant: &TenantId,
    told: &Told,
) -> usize {
    let stored = stored(conn, tenant);
    let mut ok = 0;
    for (request, result) in told {
        let ids = stored.get(request).cloned().unwrap_or_default();
        match result {
            Ok(r) => {
                ok += 1;
                assert_eq!(ids, vec![r.id.clone()], "{request}");
            }
            Err(Error::NotRecorded {
                id,
                outcome_unknown: true,
                ..
            }) => {
                assert!(
                    ids.is_empty() || ids == vec![id.clone()],
                    "{request}: {ids:?}"
                );
            }
            Err(Error::NotRecorded {
                outcome_unknown: false,
                ..
            }) => {
                assert!(ids.is_empty(), "{request} was refused but stored: {ids:?}");
            }
            Err(other) => panic!("{request}: unexpected {other:?}"),
        }
    }
    assert_eq!(stored.len(), stored.values().map(Vec::len).sum::<usize>());
    ok
}

#[test]
fn sixteen_threads_share_commits_and_every_row_is_stored_once() {
    let recorder = CostRecorder::start(common::database_url(), RecorderConfig::default()).unwrap();
    let tenant = common::tenant();
    let told = stream(&recorder, &tenant, 16, 1_000);
    assert!(told.iter().all(|(_, r)| r.is_ok()));
    let ids: HashSet<&str> = told
        .iter()
        .map(|(_, r)| r.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids.len(), 16_000);
    let mut conn = common::conn();
    assert_eq!(
        assert_exactly_what_was_acknowledged(&mut conn, &tenant, &told),
        16_000
    );
    let stats = recorder.stats();
    assert_eq!(stats.rows, 16_000);
    assert!(stats.batches < 16_000, "commits are shared: {stats:?}");
    assert!(stats.mean_batch() > 1.0);
    assert_eq!(stats.queue_depth, 0);
    // A repeated request is not stored again: its first id comes back.
    let again = recorder.record(call(&tenant, "q3-7".into(), 9.0)).unwrap();
    assert!(!again.inserted);
    assert_eq!(
        Some(&vec![again.id]),
        stored(&mut conn, &tenant).get("q3-7")
    );
}

#[test]
fn a_server_restart_mid_stream_loses_and_doubles_nothing() {
    // A cluster of its own: this test stops it.
    let pg = EmbeddedPostgres::start().unwrap();
    let url = costdb_testkit::create_database(&pg.url("postgres"), "restart").unwrap();
    costdb_testkit::migrate_and_lay_out(&url).unwrap();
    let config = RecorderConfig {
        retry_deadline: Duration::from_secs(60),
        ..RecorderConfig::default()
    };
    let recorder = CostRecorder::start(&url, config).unwrap();
    let tenant = common::tenant();
    let writers = {
        let (recorder, tenant) = (recorder.clone(), tenant.clone());
        std::thread::spawn(move || stream(&recorder, &tenant, 8, 400))
    };
    // Restart once some records are in, while the writers go on.
    while recorder.stats().rows < 300 {
        std::thread::yield_now();
    }
    pg.stop_server().unwrap();
    pg.start_server().unwrap();
    let told = writers.join().unwrap();
    let mut conn = db::connect(&url).unwrap();
    let ok = assert_exactly_what_was_acknowledged(&mut conn, &tenant, &told);
    assert!(ok >= 300, "{ok}");
    assert!(
        recorder.stats().retries > 0,
        "the restart was seen: {:?}",
        recorder.stats()
    );
    // The recorder recovered by itself.
    assert!(
        recorder
            .record(call(&tenant, "after".into(), 1.0))
            .unwrap()
            .inserted
    );
}

#[test]
fn a_killed_flusher_backend_reconnects_and_nothing_is_lost_or_doubled() {
    let recorder = CostRecorder::start(common::database_url(), RecorderConfig::default()).unwrap();
    let tenant = common::tenant();
    let writers = {
        let (recorder, tenant) = (recorder.clone(), tenant.clone());
        std::thread::spawn(move || stream(&recorder, &tenant, 8, 500))
    };
    let mut killer = common::conn();
    let mut kills = 0;
    let mut seen = 0;
    while !writers.is_finished() && kills < 5 {
        let rows = recorder.stats().rows;
        if rows >= seen + 400 {
            seen = rows;
            #[derive(QueryableByName)]
            struct N {
                #[diesel(sql_type = BigInt)]
                n: i64,
            }
            let n: N = diesel::sql_query(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                 WHERE application_name = 'costdb-recorder' AND datname = current_database()",
            )
            .get_result(&mut killer)
            .unwrap();
            kills += n.n;
        }
        std::thread::yield_now();
    }
    let told = writers.join().unwrap();
    assert!(kills > 0);
    assert!(
        told.iter().all(|(_, r)| r.is_ok()),
        "the recorder reconnected within its deadline"
    );
    let mut conn = common::conn();
    assert_eq!(
        assert_exactly_what_was_acknowledged(&mut conn, &tenant, &told),
        4_000
    );
    assert!(recorder.stats().retries > 0);
}

#[test]
fn invalid_input_fails_at_once_and_alone() {
    let recorder = CostRecorder::start(common::database_url(), RecorderConfig::default()).unwrap();
    let tenant = common::tenant();
    // Hold the table so the good records wait in a batch while the bad ones are refused.
    let mut blocker = db::connect(common::database_url()).unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE cost_records IN EXCLUSIVE MODE")
        .unwrap();
    let good: Vec<_> = (0..4)
        .map(|i| {
            let (recorder, tenant) = (recorder.clone(), tenant.clone());
            std::thread::spawn(move || recorder.record(call(&tenant, format!("g{i}"), 2.0)))
        })
        .collect();
    for (bad, field) in [
        (
            CostInput {
                cost_cents: f64::NAN,
                ..call(&tenant, "b1".into(), 0.0)
            },
            "cost_cents",
        ),
        (
            CostInput {
                model: String::new(),
                ..call(&tenant, "b2".into(), 1.0)
            },
            "model",
        ),
        (
            CostInput {
                tenant_id: "x".repeat(65),
                ..call(&tenant, "b3".into(), 1.0)
            },
            "tenant_id",
        ),
        (
            CostInput {
                request_id: Some("a\0".into()),
                ..call(&tenant, "b4".into(), 1.0)
            },
            "request_id",
        ),
    ] {
        common::assert_invalid(recorder.record(bad), field);
    }
    blocker.batch_execute("COMMIT").unwrap();
    for g in good {
        assert!(g.join().unwrap().unwrap().inserted);
    }
    let stored = stored(&mut common::conn(), &tenant);
    let mut requests: Vec<&String> = stored.keys().collect();
    requests.sort();
    assert_eq!(requests, ["g0", "g1", "g2", "g3"]);
}

#[test]
fn a_full_queue_pushes_back_and_shutdown_writes_what_is_queued() {
    let config = RecorderConfig {
        capacity: 2,
        max_batch: 1,
        flushers: 1,
        ..RecorderConfig::default()
    };
    let recorder = CostRecorder::start(common::database_url(), config).unwrap();
    let tenant = common::tenant();
    let mut blocker = db::connect(common::database_url()).unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE cost_records IN EXCLUSIVE MODE")
        .unwrap();
    // One record is being written (blocked by the lock), two fill the queue.
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let (recorder, tenant) = (recorder.clone(), tenant.clone());
            std::thread::spawn(move || recorder.record(call(&tenant, format!("w{i}"), 1.0)))
        })
        .collect();
    while (recorder.stats().in_flight, recorder.stats().queue_depth) != (1, 2) {
        std::thread::yield_now();
    }
    assert!(matches!(
        recorder.try_record(call(&tenant, "busy".into(), 1.0)),
        Err(Error::Busy)
    ));
    // Shut down while records are queued: they are written before it returns.
    let closer = {
        let recorder = recorder.clone();
        std::thread::spawn(move || recorder.shutdown())
    };
    blocker.batch_execute("COMMIT").unwrap();
    closer.join().unwrap();
    for w in waiting {
        assert!(w.join().unwrap().unwrap().inserted);
    }
    assert!(matches!(
        recorder.record(call(&tenant, "late".into(), 1.0)),
        Err(Error::Closed)
    ));
    let stored = stored(&mut common::conn(), &tenant);
    assert_eq!(stored.len(), 3);
    assert!(!stored.contains_key("busy") && !stored.contains_key("late"));
    assert_eq!(recorder.stats().rows, 3);
}

#[test]
fn dropping_the_last_handle_writes_what_is_queued() {
    let tenant = common::tenant();
    let recorder = CostRecorder::start(common::database_url(), RecorderConfig::default()).unwrap();
    let clone = recorder.clone();
    let writer = {
        let tenant = tenant.clone();
        std::thread::spawn(move || clone.record(call(&tenant, "d".into(), 1.0)))
    };
    drop(recorder);
    assert!(writer.join().unwrap().unwrap().inserted);
    assert_eq!(stored(&mut common::conn(), &tenant).len(), 1);
    for config in [
        RecorderConfig {
            max_batch: 0,
            ..RecorderConfig::default()
        },
        RecorderConfig {
            capacity: 0,
            ..RecorderConfig::default()
        },
        RecorderConfig {
            flushers: 0,
            ..RecorderConfig::default()
        },
        RecorderConfig {
            max_batch: 5_001,
            ..RecorderConfig::default()
        },
    ] {
        assert!(matches!(
            CostRecorder::start(common::database_url(), config),
            Err(Error::InvalidInput { .. })
        ));
    }
}

#[test]
fn an_unreachable_server_past_the_deadline_gives_every_caller_a_typed_error() {
    let pg = EmbeddedPostgres::start().unwrap();
    let url = costdb_testkit::create_database(&pg.url("postgres"), "down").unwrap();
    costdb_testkit::migrate_and_lay_out(&url).unwrap();
    let pool = db::pool(&url, 2, Duration::from_millis(300)).unwrap();
    let config = RecorderConfig {
        retry_deadline: Duration::from_millis(500),
        ..RecorderConfig::default()
    };
    let recorder = CostRecorder::from_pool(pool, config).unwrap();
    let tenant = common::tenant();
    assert!(
        recorder
            .record(call(&tenant, "before".into(), 1.0))
            .unwrap()
            .inserted
    );
    pg.stop_server().unwrap();
    let told = stream(&recorder, &tenant, 4, 3);
    assert_eq!(told.len(), 12);
    for (request, result) in &told {
        match result {
            Err(Error::NotRecorded { id, reason, .. }) => {
                assert!(id.starts_with("cr_"), "{request}: {id}");
                assert!(!reason.is_empty());
            }
            other => panic!("{request}: expected NotRecorded, got {other:?}"),
        }
    }
    // Back up: the same recorder works again, and nothing it refused was stored, unless
    // its outcome was unknown (then at most once).
    pg.start_server().unwrap();
    assert!(
        recorder
            .record(call(&tenant, "after".into(), 1.0))
            .unwrap()
            .inserted
    );
    let mut conn = db::connect(&url).unwrap();
    assert_exactly_what_was_acknowledged(&mut conn, &tenant, &told);
    assert!(stored(&mut conn, &tenant).contains_key("after"));
    assert!(recorder.stats().retries > 0);
}
