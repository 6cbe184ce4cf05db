//! `cost_records` in daily partitions: idempotency across partitions under racing
//! retries, records with no partition yet, retention by dropping days, and the migration
//! of an unpartitioned table. Each test has a database of its own: partitions are DDL.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use costdb::db;
use costdb::drivers::{
    AnalyticsReadDriver, CostWriteDriver, PartitionDriver, RollupDriver, RollupRange,
};
use costdb::models::{CostInput, TimeBucket};
use costdb::recorder::{CostRecorder, RecorderConfig};
use costdb::retention::Retention;
use costdb::schema::{cost_records as cr, cost_request_keys as k};
use costdb::types::{TenantId, TimeWindow};
use costdb::Error;

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
}

/// A call of `tenant` for request `request` at `at`.
fn call(tenant: &TenantId, request: &str, at: DateTime<Utc>, cents: f64) -> CostInput {
    CostInput {
        tenant_id: tenant.into(),
        request_id: Some(request.into()),
        model: "m".into(),
        input_tokens: 10,
        output_tokens: 5,
        cost_cents: cents,
        created_at: Some(at),
        ..CostInput::default()
    }
}

/// The partition that holds each of the tenant's records, by record id.
fn homes(conn: &mut PgConnection, tenant: &str) -> BTreeMap<String, String> {
    #[derive(QueryableByName)]
    struct Home {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        home: String,
    }
    diesel::sql_query(
        "SELECT id::text, tableoid::regclass::text AS home FROM cost_records \
         WHERE tenant_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(tenant)
    .load::<Home>(conn)
    .unwrap()
    .into_iter()
    .map(|h| (h.id, h.home))
    .collect()
}

fn partition_names(conn: &mut PgConnection) -> Vec<String> {
    PartitionDriver::new(conn)
        .fetch_partitions()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

fn no_differences(conn: &mut PgConnection) {
    assert_eq!(
        RollupDriver::new(conn)
            .fetch_differences(&RollupRange::default())
            .unwrap(),
        vec![]
    );
}

#[test]
fn racing_retries_with_other_instants_across_partitions_store_each_request_once() {
    const THREADS: usize = 8;
    const REQUESTS: usize = 24;
    let url = common::migrated_database();
    let mut conn = db::connect(&url).unwrap();
    // Two days with partitions of their own, either side of a UTC midnight; the third
    // day has none, so its records land in the default partition.
    let made = conn
        .transaction(|c| {
            PartitionDriver::new(c).create_partitions(day(2026, 6, 30), day(2026, 7, 1))
        })
        .unwrap();
    assert_eq!(made, ["cost_records_p20260630", "cost_records_p20260701"]);
    let instants = [
        Utc.with_ymd_and_hms(2026, 6, 30, 23, 59, 59).unwrap() + Duration::microseconds(999_999),
        midnight(day(2026, 7, 1)),
        Utc.with_ymd_and_hms(2026, 7, 2, 12, 0, 0).unwrap(),
    ];
    let tenant = common::tenant();
    let requests: Vec<String> = (0..REQUESTS).map(|r| format!("rq-{r:02}")).collect();
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, tenant, requests, barrier) = (
                url.clone(),
                tenant.clone(),
                requests.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                // Every thread sends every request, at an instant of its own, in an
                // order of its own, through one of the four write paths.
                let mut order: Vec<usize> = (0..REQUESTS).collect();
                if t % 2 == 1 {
                    order.reverse();
                }
                let calls: Vec<CostInput> = order
                    .iter()
                    .map(|&r| call(&tenant, &requests[r], instants[(t + r) % 3], 1.0 + r as f64))
                    .collect();
                let mut conn = db::connect(&url).unwrap();
                barrier.wait();
                let answers: Vec<(String, String)> = match t % 4 {
                    0 => calls
                        .iter()
                        .map(|c| {
                            let stored = conn
                                .transaction(|tx| CostWriteDriver::new(tx).insert_cost_record(c))
                                .unwrap();
                            (stored.request_id.unwrap(), stored.id)
                        })
                        .collect(),
                    1 => conn
                        .transaction(|tx| CostWriteDriver::new(tx).record_costs(&calls))
                        .unwrap()
                        .into_iter()
                        .zip(&calls)
                        .map(|(r, c)| (c.request_id.clone().unwrap(), r.id))
                        .collect(),
                    2 => calls
                        .chunks(5)
                        .flat_map(|chunk| {
                            conn.transaction(|tx| CostWriteDriver::new(tx).record_costs(chunk))
                                .unwrap()
                                .into_iter()
                                .zip(chunk)
                                .map(|(r, c)| (c.request_id.clone().unwrap(), r.id))
                                .collect::<Vec<_>>()
                        })
                        .collect(),
                    _ => {
                        let recorder =
                            CostRecorder::start(&url, RecorderConfig::default()).unwrap();
                        let answers = calls
                            .iter()
                            .map(|c| {
                                (
                                    c.request_id.clone().unwrap(),
                                    recorder.record(c.clone()).unwrap().id,
                                )
                            })
                            .collect();
                        recorder.shutdown();
                        answers
                    }
                };
                answers
            })
        })
        .collect();
    let answers: Vec<Vec<(String, String)>> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();

    // One record per request id, and every caller was told its id.
    let stored: Vec<(String, String, DateTime<Utc>)> = cr::table
        .filter(cr::tenant_id.eq(tenant.as_str()))
        .select((cr::request_id.assume_not_null(), cr::id, cr::created_at))
        .order(cr::request_id)
        .load(&mut conn)
        .unwrap();
    assert_eq!(stored.len(), REQUESTS);
    let by_request: BTreeMap<&str, &str> = stored
        .iter()
        .map(|(r, id, _)| (r.as_str(), id.as_str()))
        .collect();
    assert_eq!(by_request.len(), REQUESTS);
    for thread in &answers {
        assert_eq!(thread.len(), REQUESTS);
        for (request, id) in thread {
            assert_eq!(by_request[request.as_str()], id, "{request}");
        }
    }
    // The key of each names its record and instant.
    let keys: Vec<(String, String, DateTime<Utc>)> = k::table
        .filter(k::tenant_id.eq(tenant.as_str()))
        .select((k::request_id, k::record_id, k::created_at))
        .order(k::request_id)
        .load(&mut conn)
        .unwrap();
    assert_eq!(keys, stored);
    // The records sit in the partitions of their instants, all three used.
    let homes = homes(&mut conn, tenant.as_str());
    let mut used: Vec<&str> = homes.values().map(String::as_str).collect();
    used.sort_unstable();
    used.dedup();
    assert_eq!(
        used,
        [
            "cost_records_default",
            "cost_records_p20260630",
            "cost_records_p20260701"
        ]
    );
    // And the rollups counted each once.
    no_differences(&mut conn);
    let window = TimeWindow::new(midnight(day(2026, 6, 30)), midnight(day(2026, 7, 3))).unwrap();
    let spend = AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_spend(&tenant, window, TimeBucket::Day)
        .unwrap();
    assert_eq!(
        spend.iter().map(|b| b.requests).sum::<i64>(),
        REQUESTS as i64
    );
}

#[test]
fn a_record_without_a_partition_is_kept_and_moves_into_the_one_made_for_its_day() {
    let url = common::migrated_database();
    let mut conn = db::connect(&url).unwrap();
    let tenant = common::tenant();
    let far = Utc.with_ymd_and_hms(2031, 5, 6, 7, 8, 9).unwrap();
    let stored = conn
        .transaction(|c| CostWriteDriver::new(c).insert_cost_record(&call(&tenant, "rq", far, 2.5)))
        .unwrap();
    assert_eq!(
        homes(&mut conn, tenant.as_str())[&stored.id],
        "cost_records_default"
    );
    // A reversed range is refused and creates nothing.
    let before = partition_names(&mut conn);
    let refused = conn.transaction(|c| {
        PartitionDriver::new(c).create_partitions(day(2031, 1, 2), day(2031, 1, 1))
    });
    common::assert_invalid(refused, "to");
    assert_eq!(partition_names(&mut conn), before);
    // Making any partition also makes one for each stray day of the default partition.
    let made = conn
        .transaction(|c| {
            PartitionDriver::new(c).create_partitions(day(2031, 1, 1), day(2031, 1, 1))
        })
        .unwrap();
    assert_eq!(made, ["cost_records_p20310101", "cost_records_p20310506"]);
    assert_eq!(
        homes(&mut conn, tenant.as_str())[&stored.id],
        "cost_records_p20310506"
    );
    // Nothing counted twice, and the request id still finds its record.
    no_differences(&mut conn);
    let again = conn
        .transaction(|c| {
            CostWriteDriver::new(c).insert_cost_record(&call(
                &tenant,
                "rq",
                far + Duration::days(1),
                9.0,
            ))
        })
        .unwrap();
    assert_eq!(again, stored);
    // Days a partition already covers are left alone.
    let none = conn
        .transaction(|c| {
            PartitionDriver::new(c).create_partitions(day(2031, 1, 1), day(2031, 1, 1))
        })
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn retention_drops_whole_old_days_keeps_their_rollups_and_refuses_while_they_differ() {
    let url = common::migrated_database();
    let mut conn = db::connect(&url).unwrap();
    let (d1, d2, d3) = (day(2026, 3, 1), day(2026, 3, 2), day(2026, 3, 3));
    conn.transaction(|c| PartitionDriver::new(c).create_partitions(d1, d3))
        .unwrap();
    let tenant = common::tenant();
    let calls: Vec<CostInput> = [d1, d2, d3]
        .iter()
        .enumerate()
        .flat_map(|(n, &d)| {
            let tenant = tenant.clone();
            (0..5).map(move |i| {
                call(
                    &tenant,
                    &format!("rq-{n}-{i}"),
                    midnight(d) + Duration::hours(4 * i),
                    1.0 + i as f64,
                )
            })
        })
        .collect();
    conn.transaction(|c| CostWriteDriver::new(c).record_costs(&calls))
        .unwrap();
    let window = TimeWindow::new(midnight(d1), midnight(d3 + Duration::days(1))).unwrap();
    let spend = |conn: &mut PgConnection| {
        AnalyticsReadDriver::new(conn)
            .fetch_cost_spend(&tenant, window, TimeBucket::Day)
            .unwrap()
    };

    // A record of day 2 changed behind the crate's back: its rollups no longer agree,
    // and retention refuses, naming the day, dropping nothing.
    conn.batch_execute(&format!(
        "UPDATE cost_records SET cost_cents = cost_cents + 1 \
         WHERE tenant_id = '{}' AND request_id = 'rq-1-0'",
        tenant.as_str()
    ))
    .unwrap();
    let partitions = partition_names(&mut conn);
    let plan = Retention::new(&mut conn).plan(d3).unwrap();
    let planned: Vec<&str> = plan.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        planned,
        ["cost_records_p20260301", "cost_records_p20260302"]
    );
    assert_eq!(plan.incomplete_days, [d2]);
    let refused = conn.transaction(|c| Retention::new(c).retire(&plan));
    assert!(
        matches!(&refused, Err(Error::RetentionRefused { days }) if days == &[d2]),
        "{refused:?}"
    );
    assert_eq!(partition_names(&mut conn), partitions);
    assert_eq!(homes(&mut conn, tenant.as_str()).len(), 15);

    // Rebuilt, the day agrees; retention drops the two days, and only them.
    conn.transaction(|c| {
        RollupDriver::new(c).rebuild(&RollupRange {
            tenant_id: None,
            from: Some(d2),
            to: Some(d2),
        })
    })
    .unwrap();
    let before = spend(&mut conn);
    assert_eq!(before.len(), 3);
    let plan = Retention::new(&mut conn).plan(d3).unwrap();
    assert!(plan.incomplete_days.is_empty());
    let detached = conn
        .transaction(|c| Retention::new(c).retire(&plan))
        .unwrap();
    assert_eq!(detached, plan.partitions);
    // Detached, the days' records are gone from cost_records but their keys still hold:
    // a retry in between is refused, not billed.
    assert_eq!(homes(&mut conn, tenant.as_str()).len(), 5);
    let between = conn.transaction(|c| {
        CostWriteDriver::new(c).insert_cost_record(&call(&tenant, "rq-0-1", midnight(d1), 1.0))
    });
    assert!(matches!(between, Err(Error::Conflict(_))), "{between:?}");
    let dropped = conn
        .transaction(|c| Retention::new(c).drop_detached())
        .unwrap();
    assert_eq!(
        dropped
            .iter()
            .map(|r| (r.table.as_str(), r.keys_deleted))
            .collect::<Vec<_>>(),
        [("cost_records_p20260301", 5), ("cost_records_p20260302", 5)]
    );
    let left = partition_names(&mut conn);
    assert_eq!(
        left,
        partitions
            .iter()
            .filter(|p| !p.ends_with("20260301") && !p.ends_with("20260302"))
            .cloned()
            .collect::<Vec<_>>()
    );
    let homes = homes(&mut conn, tenant.as_str());
    assert_eq!(homes.len(), 5);
    assert!(homes.values().all(|h| h == "cost_records_p20260303"));
    assert_eq!(
        k::table
            .filter(k::tenant_id.eq(tenant.as_str()))
            .count()
            .get_result::<i64>(&mut conn)
            .unwrap(),
        5
    );
    // The dropped days keep answering from their rollups, and verify skips them.
    assert_eq!(spend(&mut conn), before);
    no_differences(&mut conn);
    // Nothing more to retire before that day.
    let plan = Retention::new(&mut conn).plan(d3).unwrap();
    assert!(plan.partitions.is_empty(), "{plan:?}");
    // The one window of idempotency: a retry arriving after its day was retired is
    // recorded again (in the default partition).
    let late = conn
        .transaction(|c| {
            CostWriteDriver::new(c).insert_cost_record(&call(&tenant, "rq-0-0", midnight(d1), 1.0))
        })
        .unwrap();
    assert!(!homes.contains_key(&late.id));
}

#[test]
fn migrating_an_unpartitioned_table_keeps_every_row_and_its_request_ids() {
    type Row = (String, String, Option<String>, f64, DateTime<Utc>);
    let url = common::fresh_database();
    let mut conn = db::connect(&url).unwrap();
    db::run_migrations(&mut conn).unwrap();
    common::revert_through(&mut conn, "time_partitions");
    // Rows of the shape before partitioning, one of them stamped three days ahead.
    conn.batch_execute(
        "INSERT INTO cost_records (id, tenant_id, request_id, model, cost_cents, created_at) \
         SELECT 'cr_' || lpad(to_hex(i), 16, '0'), 't' || (i % 3), \
                CASE WHEN i % 4 = 0 THEN NULL ELSE 'rq-' || i END, 'm', i / 8.0, \
                '2026-02-27 22:00+00'::timestamptz + i * interval '37 minutes' \
         FROM generate_series(1, 300) AS i; \
         INSERT INTO cost_records (id, tenant_id, request_id, model, cost_cents, created_at) \
         VALUES ('cr_ahead', 't0', 'rq-ahead', 'm', 1, now() + interval '3 days')",
    )
    .unwrap();
    let rows = |conn: &mut PgConnection| -> Vec<Row> {
        cr::table
            .select((
                cr::id,
                cr::tenant_id,
                cr::request_id,
                cr::cost_cents,
                cr::created_at,
            ))
            .order(cr::id)
            .load(conn)
            .unwrap()
    };
    let before = rows(&mut conn);
    assert_eq!(before.len(), 301);
    db::run_migrations(&mut conn).unwrap();
    assert_eq!(rows(&mut conn), before);
    // The old rows are the legacy partition, up to the day after the newest of them;
    // the row ahead went to its own day.
    let last = before
        .iter()
        .filter(|r| r.0 != "cr_ahead")
        .map(|r| r.4)
        .max()
        .unwrap();
    let legacy = PartitionDriver::new(&mut conn)
        .fetch_partitions()
        .unwrap()
        .into_iter()
        .find(|p| p.name == "cost_records_legacy")
        .unwrap();
    assert_eq!(legacy.from_at, None);
    assert_eq!(
        legacy.to_at,
        Some(midnight(last.date_naive() + Duration::days(1)))
    );
    let ahead = before.iter().find(|r| r.0 == "cr_ahead").unwrap().4;
    let homes = homes(&mut conn, "t0");
    assert_eq!(
        homes["cr_ahead"],
        format!("cost_records_p{}", ahead.format("%Y%m%d"))
    );
    assert_eq!(homes["cr_0000000000000003"], "cost_records_legacy");
    // Every request id has its key, and still finds its record.
    let with_request = before.iter().filter(|r| r.2.is_some()).count() as i64;
    assert_eq!(
        k::table.count().get_result::<i64>(&mut conn).unwrap(),
        with_request
    );
    let old = before
        .iter()
        .find(|r| r.0 == "cr_0000000000000005")
        .unwrap();
    let repeat = CostInput {
        tenant_id: old.1.clone(),
        request_id: old.2.clone(),
        model: "m".into(),
        cost_cents: 99.0,
        ..CostInput::default()
    };
    let again = conn
        .transaction(|c| CostWriteDriver::new(c).insert_cost_record(&repeat))
        .unwrap();
    assert_eq!(
        (again.id.as_str(), again.created_at),
        (old.0.as_str(), old.4)
    );
    let bulk = conn
        .transaction(|c| CostWriteDriver::new(c).record_costs(std::slice::from_ref(&repeat)))
        .unwrap();
    assert_eq!(
        (bulk[0].id.as_str(), bulk[0].inserted),
        (old.0.as_str(), false)
    );
    assert_eq!(rows(&mut conn), before);
    no_differences(&mut conn);
}

#[test]
fn retiring_a_day_finds_its_keys_by_the_key_index_not_by_hashing_every_day() {
    #[derive(QueryableByName)]
    struct Config {
        #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Text>)]
        proconfig: Vec<String>,
    }
    let mut conn = common::test_conn();
    // The function that drops a retired day runs without hash and merge joins…
    let config: Config = diesel::sql_query(
        "SELECT proconfig FROM pg_proc WHERE proname = 'costdb_drop_detached_cost_partition'",
    )
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(
        config.proconfig,
        ["enable_hashjoin=off", "enable_mergejoin=off"]
    );
    // …so that its delete probes the key table's index once per record of the day, where
    // the planner would otherwise hash the keys of every retained day: here ten days of
    // keys and one day's records (a table of the partition's shape).
    conn.batch_execute(
        "INSERT INTO cost_request_keys (tenant_id, request_id, record_id, created_at) \
         SELECT 't' || (i % 10), 'rq' || i, 'cr_' || lpad(to_hex(i), 16, '0'), \
                '2026-01-01'::timestamptz + i * interval '43 seconds' \
         FROM generate_series(1, 20000) AS i; \
         CREATE TEMPORARY TABLE retired_day (LIKE cost_records INCLUDING DEFAULTS); \
         INSERT INTO retired_day (id, tenant_id, request_id, model, cost_cents, created_at) \
         SELECT record_id, tenant_id, request_id, 'm', 1, created_at FROM cost_request_keys \
         WHERE created_at < '2026-01-02'; \
         ANALYZE cost_request_keys; ANALYZE retired_day; \
         SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
    )
    .unwrap();
    let plan = db::explain(
        &mut conn,
        &diesel::sql_query(
            "DELETE FROM cost_request_keys k USING retired_day r \
             WHERE k.tenant_id = r.tenant_id AND k.request_id = r.request_id \
             AND k.record_id = r.id",
        ),
    )
    .unwrap()
    .join("\n");
    // (In the tenant-partitioned layout the key table's empty hash partitions are
    // scanned: nothing to probe there.)
    assert!(plan.contains("Nested Loop"), "{plan}");
    assert!(
        plan.contains("Index Scan using cost_request_keys_pkey"),
        "{plan}"
    );
    assert!(
        !plan.contains("Hash Join") && !plan.contains("Merge Join"),
        "{plan}"
    );
}
