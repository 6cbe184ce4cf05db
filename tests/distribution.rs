//! Ready to distribute by tenant: every key of a distributed table leads with
//! `tenant_id`, every tenant's statement reaches only that tenant's partition, the
//! partitioned layout refuses the old keys, and the migration to tenant-led keys keeps an
//! existing database's rows.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use costdb::admission::{Admission, AdmissionDriver, Reservation, ReserveInput};
use costdb::db;
use costdb::detector::{AnomalyDetector, DetectorConfig};
use costdb::drivers::{
    AnalyticsReadDriver, BudgetSnapshot, CostAdvisory, CostWriteDriver, FeatureTagChanges,
    FeatureTagInput, FeedbackInput, PatternDetectionDriver, PredictionDriver, PredictionFilter,
    PredictionInput, RollupDriver, RollupRange, RunCost, WorkerRunData, WorkerWriteDriver,
};
use costdb::models::{
    CostInput, PatternSeverity, PatternType, PredictionType, ReservationStatus, SubjectType,
    TimeBucket,
};
use costdb::placement::{self, Placement};
use costdb::types::{RunId, TenantId, TimeWindow};
use costdb_testkit::layout::{layout, partition_by_tenant, Layout, PARTITIONS};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use serde_json::json;

#[derive(QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Named {
    #[diesel(sql_type = Text)]
    name: String,
}

fn names(conn: &mut PgConnection, sql: &str) -> Vec<String> {
    let mut names: Vec<String> = diesel::sql_query(sql)
        .load::<Named>(conn)
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    names.sort();
    names
}

/// A migrated database whose distributed tables are hash-partitioned by tenant, whatever
/// this run's layout.
fn partitioned_database() -> String {
    let url = common::migrated_database();
    if layout() == Layout::Plain {
        partition_by_tenant(&url, PARTITIONS).unwrap();
    }
    url
}

#[test]
fn every_table_is_placed_and_every_key_of_a_distributed_table_includes_the_tenant() {
    let mut conn = common::conn();
    // Every table the migrations create is placed, once.
    let tables = names(
        &mut conn,
        "SELECT relname::text AS name FROM pg_class \
         WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') \
           AND NOT relispartition AND relname <> '__diesel_schema_migrations'",
    );
    let mut placed: Vec<String> = placement::TABLES
        .iter()
        .map(|t| t.table.to_owned())
        .collect();
    placed.sort();
    assert_eq!(tables, placed);

    let distributed: Vec<&str> = placement::distributed_tables().collect();
    let list = format!("'{{{}}}'::text[]", distributed.join(","));
    // Each distributed table has a tenant on every row.
    let without_tenant = names(
        &mut conn,
        &format!(
            "SELECT t AS name FROM unnest({list}) AS t \
             WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a \
                               WHERE a.attrelid = t::regclass AND a.attname = 'tenant_id' \
                                 AND a.attnotnull)"
        ),
    );
    assert_eq!(without_tenant, Vec::<String>::new());
    // No unique index of a distributed table (or of its partitions) without tenant_id.
    let unique_without_tenant = names(
        &mut conn,
        &format!(
            "SELECT i.indexrelid::regclass::text AS name \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
             WHERE i.indisunique \
               AND (c.relname = ANY ({list}) \
                    OR c.oid IN (SELECT inhrelid FROM pg_inherits \
                                 WHERE inhparent::regclass::text = ANY ({list}))) \
               AND NOT EXISTS (SELECT 1 FROM pg_attribute a \
                               WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' \
                                 AND a.attnum = ANY (i.indkey))"
        ),
    );
    assert_eq!(unique_without_tenant, Vec::<String>::new());
    // Foreign keys join distributed tables on the tenant, and never cross placements.
    let bad_fks = names(
        &mut conn,
        &format!(
            "SELECT conname::text AS name FROM pg_constraint f \
             WHERE f.contype = 'f' AND f.conparentid = 0 \
               AND ((f.conrelid::regclass::text = ANY ({list})) \
                    <> (f.confrelid::regclass::text = ANY ({list})) \
                    OR (f.conrelid::regclass::text = ANY ({list}) \
                        AND NOT (f.conkey[1] = (SELECT attnum FROM pg_attribute \
                                                WHERE attrelid = f.conrelid \
                                                  AND attname = 'tenant_id') \
                                 AND f.confkey[1] = (SELECT attnum FROM pg_attribute \
                                                     WHERE attrelid = f.confrelid \
                                                       AND attname = 'tenant_id'))))"
        ),
    );
    assert_eq!(bad_fks, Vec::<String>::new());
    // The exceptions are the local tables, each with its reason.
    let unique_without_tenant_anywhere = names(
        &mut conn,
        "SELECT DISTINCT c.relname::text AS name \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
         WHERE i.indisunique AND c.relnamespace = 'public'::regnamespace \
           AND c.relname <> '__diesel_schema_migrations' \
           AND NOT EXISTS (SELECT 1 FROM pg_attribute a \
                           WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' \
                             AND a.attnum = ANY (i.indkey))",
    );
    for table in &unique_without_tenant_anywhere {
        let placed = placement::of(table).unwrap();
        assert_eq!(placed.placement, Placement::Local, "{table}");
        assert!(!placed.reason.is_empty());
    }
}

#[test]
fn the_citus_statements_distribute_every_tenant_table_colocated_with_the_first() {
    let ddl = placement::citus_ddl();
    let mut distributed = placement::distributed_tables();
    let first = distributed.next().unwrap();
    assert!(ddl.contains(&format!(
        "SELECT create_distributed_table('{first}', 'tenant_id');"
    )));
    for table in distributed {
        assert!(
            ddl.contains(&format!(
                "SELECT create_distributed_table('{table}', 'tenant_id', colocate_with => '{first}');"
            )),
            "{table}"
        );
    }
    // A referenced table is distributed before the tables that reference it.
    let at = |t: &str| ddl.find(&format!("table('{t}'")).unwrap();
    assert!(at("cost_budgets") < at("budget_counters"));
    for t in placement::TABLES {
        if t.placement == Placement::Local {
            assert!(!ddl.contains(&format!("('{}'", t.table)), "{}", t.table);
            assert!(ddl.contains(&format!("-- {}: {}", t.table, t.reason)));
        }
    }
}

#[test]
fn the_partitioned_layout_refuses_keys_without_the_tenant_and_changes_nothing() {
    let url = common::fresh_database();
    let mut conn = db::connect(&url).unwrap();
    db::run_migrations(&mut conn).unwrap();
    common::revert_through(&mut conn, "tenant_led_keys");
    let err = partition_by_tenant(&url, PARTITIONS).unwrap_err();
    let message = costdb::report(&err);
    assert!(
        message.contains("must include all partitioning columns"),
        "{message}"
    );
    // Still the plain tables, and nothing left half-made.
    let partitioned = names(
        &mut conn,
        "SELECT relname::text AS name FROM pg_class \
         WHERE relnamespace = 'public'::regnamespace \
           AND (relkind = 'p' OR relname LIKE '%\\_by\\_tenant' OR relname ~ '_p[0-9]+$')",
    );
    assert_eq!(partitioned, Vec::<String>::new());
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(conn).unwrap().n
}

#[test]
fn the_migration_keeps_every_row_id_and_idempotency_key_of_the_previous_shape() {
    let url = common::fresh_database();
    let mut conn = db::connect(&url).unwrap();
    db::run_migrations(&mut conn).unwrap();
    common::revert_through(&mut conn, "tenant_led_keys");
    // A database of the previous release's shape, with rows in every table whose keys
    // change: records with request ids, budgets with counters and reservations, runs with
    // a parent, anomalies, breaches, trackers, tags, feedback, predictions.
    conn.batch_execute(
        "INSERT INTO cost_records (id, tenant_id, request_id, model, cost_cents, created_at) \
         SELECT 'cr_' || lpad(to_hex(i), 16, '0'), 't' || (i % 3), 'rq-' || i, 'm', i, \
                '2026-05-01'::timestamptz + i * interval '1 hour' \
         FROM generate_series(1, 300) AS i; \
         INSERT INTO cost_budgets (id, tenant_id, budget_type, daily_limit_cents) VALUES \
           ('cb_a', 't0', 'tenant', 1000), ('cb_b', 't1', 'tenant', 2000); \
         INSERT INTO budget_counters (budget_id, period, window_start, spent_cents, \
                                      reserved_cents) VALUES \
           ('cb_a', 'daily', '2026-05-02', 12.5, 3), ('cb_a', 'monthly', '2026-05-01', 40, 3), \
           ('cb_b', 'daily', '2026-05-02', 7, 0); \
         INSERT INTO budget_reservations (id, tenant_id, request_id, estimated_cents, \
                                          budget_ids, day, month, expires_at) VALUES \
           ('br_1', 't0', 'rq-held', 3, '{cb_a}', '2026-05-02', '2026-05-01', \
            '2026-05-02 12:00+00'); \
         INSERT INTO worker_runs (id, tenant_id, task, input_json) VALUES \
           ('run-parent', 't0', 'p', '{}'); \
         INSERT INTO worker_runs (id, tenant_id, task, input_json, parent_run_id) VALUES \
           ('run-child', 't0', 'c', '{}', 'run-parent'); \
         INSERT INTO cost_anomalies (id, tenant_id, anomaly_type, severity, entity_type, \
             current_value_cents, expected_value_cents, deviation_pct, message) VALUES \
           ('ca_1', 't0', 'ABSOLUTE_SPIKE', 'HIGH', 'tenant', 200, 100, 100, 'x'); \
         INSERT INTO feature_tags (id, tenant_id, tag, display_name) VALUES \
           ('ft_1', 't0', 'chat', 'Chat'); \
         INSERT INTO pattern_feedback (tenant_id, pattern_type, severity, description) VALUES \
           ('t0', 'failure_pattern', 'warning', 'd'); \
         INSERT INTO prediction_events (tenant_id, prediction_type, subject_type, \
             subject_id, confidence_score, prediction_value, expires_at) VALUES \
           ('t0', 'failure_likelihood', 'worker', 'w', 0.5, '{}', '2026-06-01');",
    )
    .unwrap();
    let fingerprint = |conn: &mut PgConnection| {
        names(
            conn,
            "SELECT 'cr ' || count(*) || ' ' || md5(string_agg(id || tenant_id || request_id, ',' \
                                                   ORDER BY id)) AS name FROM cost_records \
             UNION ALL SELECT 'bc ' || string_agg(budget_id || period || window_start \
                                                  || spent_cents || '/' || reserved_cents, ',' \
                                                  ORDER BY budget_id, period) FROM budget_counters \
             UNION ALL SELECT 'wr ' || string_agg(id || coalesce(parent_run_id, '-'), ',' \
                                                  ORDER BY id) FROM worker_runs \
             UNION ALL SELECT 'pf ' || string_agg(id::text, ',') FROM pattern_feedback \
             UNION ALL SELECT 'pe ' || string_agg(id::text, ',') FROM prediction_events \
             UNION ALL SELECT 'ids ' || string_agg(id, ',' ORDER BY id) FROM \
               (SELECT id FROM cost_budgets UNION ALL SELECT id FROM budget_reservations \
                UNION ALL SELECT id FROM cost_anomalies UNION ALL SELECT id FROM feature_tags) k",
        )
    };
    let before = fingerprint(&mut conn);
    db::run_migrations(&mut conn).unwrap();
    assert_eq!(fingerprint(&mut conn), before);
    // The counters took their budget's tenant.
    assert_eq!(
        names(
            &mut conn,
            "SELECT budget_id || ' ' || tenant_id AS name FROM budget_counters"
        ),
        ["cb_a t0", "cb_a t0", "cb_b t1"]
    );

    // The idempotency keys still hold: a retried request gets the stored record back...
    let retried = conn
        .transaction(|c| {
            CostWriteDriver::new(c).insert_cost_record(&CostInput {
                tenant_id: "t1".into(),
                request_id: Some("rq-1".into()),
                model: "m".into(),
                cost_cents: 99.0,
                ..CostInput::default()
            })
        })
        .unwrap();
    assert_eq!(retried.id, "cr_0000000000000001");
    assert_eq!(retried.cost_cents, 1.0);
    // ...and a held reservation repeated is the same one, charged once.
    let now = Utc.with_ymd_and_hms(2026, 5, 2, 10, 0, 0).unwrap();
    let again = conn
        .transaction(|c| {
            AdmissionDriver::new(c).reserve(
                &TenantId::new("t0").unwrap(),
                &ReserveInput {
                    request_id: "rq-held".into(),
                    feature_tag: None,
                    user_id: None,
                    estimated_cents: 3.0,
                    expires_at: now + Duration::hours(1),
                    now,
                },
            )
        })
        .unwrap();
    match again {
        Admission::Admitted { reservation, .. } => assert_eq!(reservation.id, "br_1"),
        other => panic!("expected the held reservation, got {other:?}"),
    }
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM budget_counters \
             WHERE budget_id = 'cb_a' AND reserved_cents = 3"
        ),
        2
    );
    // The parent link holds per tenant: deleting the parent clears the child's link only.
    conn.transaction(|c| {
        WorkerWriteDriver::new(c).delete_worker_run(
            &TenantId::new("t0").unwrap(),
            &RunId::new("run-parent").unwrap(),
        )
    })
    .unwrap();
    assert_eq!(
        names(
            &mut conn,
            "SELECT id || ' ' || tenant_id || ' ' || coalesce(parent_run_id, '-') AS name \
             FROM worker_runs"
        ),
        ["run-child t0 -"]
    );
    // Deleting a budget still takes its counters with it.
    conn.batch_execute("DELETE FROM cost_budgets WHERE id = 'cb_b'")
        .unwrap();
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) AS n FROM budget_counters WHERE budget_id = 'cb_b'"
        ),
        0
    );
}

/// The partition of every hash-partitioned table that holds `tenant`'s rows (`_p<k>`);
/// `cost_records` is partitioned by day instead (`_pYYYYMMDD`).
fn partition_of(conn: &mut PgConnection, tenant: &str) -> String {
    #[derive(QueryableByName)]
    struct Remainder {
        #[diesel(sql_type = Integer)]
        r: i32,
    }
    let r = diesel::sql_query(
        "SELECT r FROM generate_series(0, $1 - 1) AS r \
         WHERE satisfies_hash_partition('cost_budgets'::regclass, $1, r, $2::varchar)",
    )
    .bind::<Integer, _>(PARTITIONS as i32)
    .bind::<Text, _>(tenant)
    .get_result::<Remainder>(conn)
    .unwrap()
    .r;
    format!("_p{r}")
}

/// The tenant partitions this transaction has read (scanned by index or sequentially).
fn partitions_read(conn: &mut PgConnection) -> Vec<String> {
    names(
        conn,
        "SELECT relname::text AS name FROM pg_stat_xact_user_tables \
         WHERE relname ~ '_p[0-9]{1,3}$' AND seq_scan + coalesce(idx_scan, 0) > 0",
    )
}

/// Calls `costdb_admit_batch` as the admission service's worker does for a common batch of
/// `tenant`: one new request, the settlement of `settle` and the release of `release`.
/// Returns how many rows it answered.
fn admit_batch(
    conn: &mut PgConnection,
    tenant: &TenantId,
    now: DateTime<Utc>,
    settle: &Reservation,
    release: &Reservation,
) -> usize {
    use diesel::sql_types::{Array, Bool, Date, Double, Nullable, Timestamptz};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Integer)]
        #[allow(dead_code)]
        n: i32,
    }
    let t = tenant.as_str();
    let none: Vec<Option<String>> = vec![None];
    diesel::sql_query(
        "SELECT n FROM costdb_admit_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)",
    )
    .bind::<Array<Text>, _>(vec![t])
    .bind::<Array<Nullable<Text>>, _>(&none)
    .bind::<Array<Nullable<Text>>, _>(&none)
    .bind::<Array<Date>, _>(vec![now.date_naive()])
    .bind::<Array<Double>, _>(vec![20.0])
    .bind::<Array<Text>, _>(vec!["br_tour_batch"])
    .bind::<Array<Text>, _>(vec!["r5"])
    .bind::<Array<Timestamptz>, _>(vec![now + Duration::minutes(5)])
    .bind::<Array<Text>, _>(vec![settle.id.as_str()])
    .bind::<Array<Text>, _>(vec!["cr_tour_batch"])
    .bind::<Array<Text>, _>(vec![t])
    .bind::<Array<Nullable<Text>>, _>(&none)
    .bind::<Array<Nullable<Text>>, _>(&none)
    .bind::<Array<Text>, _>(vec![settle.request_id.as_str()])
    .bind::<Array<Nullable<Text>>, _>(&none)
    .bind::<Array<Nullable<Text>>, _>(&none)
    .bind::<Array<Text>, _>(vec!["gpt-4o"])
    .bind::<Array<Integer>, _>(vec![10])
    .bind::<Array<Integer>, _>(vec![5])
    .bind::<Array<Double>, _>(vec![4.0])
    .bind::<Array<Bool>, _>(vec![false])
    .bind::<Array<Timestamptz>, _>(vec![now])
    .bind::<Array<Text>, _>(vec![release.id.as_str()])
    .bind::<Array<Text>, _>(vec![t])
    .load::<Row>(conn)
    .unwrap()
    .len()
}

/// Fails, naming `after`, when the transaction has read another tenant's partition.
fn only_mine(conn: &mut PgConnection, mine: &str, after: &str) {
    let read = partitions_read(conn);
    let elsewhere: Vec<&String> = read.iter().filter(|p| !p.ends_with(mine)).collect();
    assert_eq!(
        elsewhere,
        Vec::<&String>::new(),
        "after {after}, read: {read:?}"
    );
}

fn day(d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, d, h, 0, 0).unwrap()
}

/// Two weeks of calls of a tenant, a spike on the last two days.
fn history(tenant: &TenantId) -> Vec<CostInput> {
    let mut costs = Vec::new();
    for d in 1..=15 {
        let calls = if d >= 14 { 40 } else { 8 };
        for i in 0..calls {
            costs.push(CostInput {
                tenant_id: tenant.as_str().into(),
                request_id: Some(format!("h-{d}-{i}")),
                user_id: Some(format!("u{}", i % 3)),
                feature_tag: Some(format!("f{}", i % 2)),
                model: "gpt-4o".into(),
                input_tokens: 100,
                output_tokens: 50,
                cost_cents: 10.0 + i as f64,
                is_retry: i % 7 == 0,
                created_at: Some(day(d, (i % 20) as u32)),
                ..CostInput::default()
            });
        }
    }
    costs
}

#[test]
fn every_tenant_call_reads_only_its_tenants_partition() {
    let url = partitioned_database();
    let mut conn = db::connect(&url).unwrap();
    let (tenant, other) = loop {
        let (a, b) = (common::tenant(), common::tenant());
        if partition_of(&mut conn, &a) != partition_of(&mut conn, &b) {
            break (a, b);
        }
    };
    let mine = partition_of(&mut conn, &tenant);
    let now = day(15, 21);
    // Both tenants' data, committed: a budget, two weeks of calls, a run.
    for t in [&tenant, &other] {
        common::hard_daily_budget(&mut conn, t, 100_000);
        conn.transaction(|c| {
            CostWriteDriver::new(c).record_costs(&history(t))?;
            WorkerWriteDriver::new(c).upsert_worker_run(
                t,
                &RunId::new("run-1").unwrap(),
                &WorkerRunData {
                    task: Some("seed".into()),
                    ..Default::default()
                },
            )
        })
        .unwrap();
    }

    // Every tenant-scoped call, in one transaction of a session of its own (a session's
    // counts of what it read are only flushed after its transactions end), then what it
    // read.
    let mut conn = db::connect(&url).unwrap();
    conn.begin_test_transaction().unwrap();
    let window = TimeWindow::new(day(1, 0), day(16, 0)).unwrap();
    let c = &mut conn;
    let mut analytics = AnalyticsReadDriver::new(c);
    analytics
        .fetch_cost_metrics(&tenant, window, TimeBucket::Hour)
        .unwrap();
    analytics
        .fetch_llm_usage(&tenant, window, TimeBucket::Day)
        .unwrap();
    analytics
        .fetch_worker_execution(&tenant, window, TimeBucket::Day)
        .unwrap();
    analytics
        .fetch_cost_spend(&tenant, window, TimeBucket::Day)
        .unwrap();
    analytics
        .fetch_model_spend(&tenant, window, TimeBucket::Day)
        .unwrap();
    analytics.fetch_cost_by_model(&tenant, window).unwrap();
    analytics.fetch_cost_by_feature(&tenant, window).unwrap();

    only_mine(c, &mine, "analytics");
    // The spike breaches on two days in a row: the second run finds it.
    let detector = AnomalyDetector::new(DetectorConfig::default());
    detector.detect(c, &tenant, day(14, 21)).unwrap();
    let found = detector.detect(c, &tenant, now).unwrap();
    assert!(!found.is_empty(), "the spike is found");

    only_mine(c, &mine, "detector");
    let mut costs = CostWriteDriver::new(c);
    let tag = costs
        .insert_feature_tag(
            &tenant,
            &FeatureTagInput {
                tag: "chat".into(),
                display_name: "Chat".into(),
                description: None,
                budget_cents: None,
            },
        )
        .unwrap();
    costs
        .update_feature_tag(
            &tenant,
            &tag.id,
            &FeatureTagChanges {
                is_active: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
    let call = |request: &str| CostInput {
        tenant_id: tenant.as_str().into(),
        request_id: Some(request.into()),
        model: "gpt-4o".into(),
        cost_cents: 5.0,
        created_at: Some(now),
        ..CostInput::default()
    };
    costs.insert_cost_record(&call("one")).unwrap();
    costs.insert_cost_record(&call("one")).unwrap();
    costs
        .record_costs(&[call("two"), call("three"), call("one")])
        .unwrap();

    only_mine(c, &mine, "cost writes");
    let mut admission = AdmissionDriver::new(c);
    let ask = |request: &str| ReserveInput {
        request_id: request.into(),
        feature_tag: None,
        user_id: None,
        estimated_cents: 20.0,
        expires_at: now + Duration::minutes(5),
        now,
    };
    let held = |a: Admission| match a {
        Admission::Admitted { reservation, .. } => reservation,
        other => panic!("expected an admission, got {other:?}"),
    };
    let first = held(admission.reserve(&tenant, &ask("r1")).unwrap());
    let second = held(admission.reserve(&tenant, &ask("r2")).unwrap());
    admission.reserve(&tenant, &ask("r1")).unwrap();
    admission
        .settle(
            &first,
            &CostInput {
                request_id: None,
                ..call("r1")
            },
        )
        .unwrap();
    admission.release(&second).unwrap();
    admission.fetch_reservation(&tenant, &first.id).unwrap();
    // The admission service's common batch, as its worker sends it: a new request, a
    // settlement (with its cost record) and a release, in one statement.
    let (to_settle, to_release) = (
        held(admission.reserve(&tenant, &ask("r3")).unwrap()),
        held(admission.reserve(&tenant, &ask("r4")).unwrap()),
    );
    let batch_rows = admit_batch(c, &tenant, now, &to_settle, &to_release);
    assert_eq!(
        batch_rows, 3,
        "the request's two counters and the settlement"
    );
    let mut admission = AdmissionDriver::new(c);
    assert_eq!(
        admission
            .fetch_reservation(&tenant, &to_release.id)
            .unwrap()
            .map(|r| r.status),
        Some(ReservationStatus::Released)
    );
    // The day's and the month's counters of the tenant's one budget (the history went in
    // without the gate, so they differ from the records).
    let lines = admission.reconcile(&tenant, now.date_naive()).unwrap();
    assert_eq!(lines.len(), 2);

    only_mine(c, &mine, "admission");
    let mut runs = WorkerWriteDriver::new(c);
    let run = RunId::new("run-2").unwrap();
    runs.upsert_worker_run(
        &tenant,
        &run,
        &WorkerRunData {
            task: Some("tour".into()),
            ..Default::default()
        },
    )
    .unwrap();
    runs.fetch_worker_run(&tenant, &run).unwrap();
    runs.insert_cost_record(
        &tenant,
        &run,
        &RunCost {
            model: "gpt-4o".into(),
            input_tokens: 10,
            output_tokens: 5,
            cost_cents: 1.0,
        },
    )
    .unwrap();
    let advisory = CostAdvisory {
        daily_spend_cents: 900,
        warn_threshold_cents: 800.0,
        budget: BudgetSnapshot {
            budget_id: "cb_x".into(),
            daily_limit_cents: Some(1000),
            warn_threshold_pct: 80,
            hard_limit_enabled: false,
        },
    };
    runs.insert_cost_advisory(&tenant, &run, &advisory).unwrap();
    runs.insert_cost_advisory(&tenant, &run, &advisory).unwrap();
    runs.delete_worker_run(&tenant, &RunId::new("run-1").unwrap())
        .unwrap();

    only_mine(c, &mine, "worker runs");
    let mut patterns = PatternDetectionDriver::new(c);
    patterns
        .insert_feedback(
            tenant.as_str(),
            &FeedbackInput {
                pattern_type: PatternType::FailurePattern,
                severity: PatternSeverity::Warning,
                description: "d".into(),
                signature: None,
                provenance: vec!["run-2".into()],
                occurrence_count: 1,
                time_window_minutes: None,
                threshold_used: None,
                metadata: None,
                detected_at: Some(now),
            },
        )
        .unwrap();
    patterns
        .fetch_feedback_records(Some(tenant.as_str()), None, 10)
        .unwrap();
    patterns
        .fetch_failed_runs_with_error(Some(tenant.as_str()), day(1, 0), 10)
        .unwrap();
    patterns
        .fetch_completed_runs_with_costs(Some(tenant.as_str()), 10)
        .unwrap();
    let mut predictions = PredictionDriver::new(c);
    let made = predictions
        .insert_prediction(
            tenant.as_str(),
            &PredictionInput {
                prediction_type: PredictionType::FailureLikelihood,
                subject_type: SubjectType::Worker,
                subject_id: "w".into(),
                confidence_score: 0.4,
                prediction_value: json!({"p": 0.4}),
                contributing_factors: vec![],
                expires_at: now + Duration::days(1),
                created_at: Some(now),
                notes: None,
            },
        )
        .unwrap();
    predictions
        .fetch_prediction_by_id(tenant.as_str(), made.id)
        .unwrap();
    let filter = PredictionFilter {
        tenant_id: Some(tenant.as_str().into()),
        ..PredictionFilter::default()
    };
    predictions.fetch_predictions(&filter, 10, 0).unwrap();
    predictions.fetch_prediction_count(&filter).unwrap();
    predictions.fetch_prediction_stats(&filter).unwrap();

    only_mine(c, &mine, "patterns and predictions");
    let differences = RollupDriver::new(c)
        .fetch_differences(&RollupRange {
            tenant_id: Some(tenant.as_str().into()),
            from: Some(day(1, 0).date_naive()),
            to: Some(now.date_naive()),
        })
        .unwrap();
    assert_eq!(differences, vec![]);

    only_mine(c, &mine, "rollups");
    let read = partitions_read(c);
    // The tour reached the tenant's partition of every distributed table (but
    // cost_records, partitioned by day here).
    for table in placement::distributed_tables().filter(|t| *t != "cost_records") {
        assert!(
            read.contains(&format!("{table}{mine}")),
            "{table}{mine} was not read: {read:?}"
        );
    }
}
