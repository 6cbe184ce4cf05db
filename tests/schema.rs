//! The foundation: migrations, the schema's shape, the immutability trigger, the
//! tenant-level budget key, and the write guard.

mod common;

use costdb::types::TenantId;

use costdb::db;
use costdb::models::{ids, BudgetType, NewCostBudget, NewWorkerRun, WorkerStatus};
use costdb::schema::{cost_budgets, worker_runs};
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count_public_tables(conn: &mut PgConnection) -> i64 {
    diesel::sql_query(
        "SELECT count(*) AS n FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations' \
           AND table_type = 'BASE TABLE' \
           AND NOT EXISTS (SELECT 1 FROM pg_class k \
                           WHERE k.relnamespace = 'public'::regnamespace \
                             AND k.relname = table_name AND k.relispartition)",
    )
    .get_result::<Count>(conn)
    .unwrap()
    .n
}

#[test]
fn migrations_go_up_all_the_way_down_and_up_again() {
    let url = common::fresh_database();
    let mut conn = db::connect(&url).unwrap();
    let before = db::migration_status(&mut conn).unwrap();
    assert!(before.applied.is_empty());
    let known = before.pending.len();
    assert!(known >= 7, "{before:?}");

    let applied = db::run_migrations(&mut conn).unwrap();
    assert_eq!(applied, before.pending);
    assert!(db::migration_status(&mut conn).unwrap().pending.is_empty());
    assert_eq!(count_public_tables(&mut conn), 24);

    let mut reverted = Vec::new();
    while let Some(name) = db::revert_last_migration(&mut conn).unwrap() {
        reverted.push(name);
    }
    reverted.reverse();
    assert_eq!(reverted, applied, "every step reverts, newest first");
    assert_eq!(count_public_tables(&mut conn), 0);
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        proname: String,
    }
    let leftovers: Vec<Name> = diesel::sql_query(
        "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'public'",
    )
    .load(&mut conn)
    .unwrap();
    assert!(
        leftovers.is_empty(),
        "functions left behind: {:?}",
        leftovers.iter().map(|n| &n.proname).collect::<Vec<_>>()
    );

    assert_eq!(db::run_migrations(&mut conn).unwrap().len(), known);
    assert_eq!(count_public_tables(&mut conn), 24);
}

#[test]
fn every_table_and_column_has_the_specified_type() {
    #[derive(QueryableByName, Debug)]
    struct Col {
        #[diesel(sql_type = Text)]
        line: String,
    }
    let mut conn = common::conn();
    let actual: Vec<String> = diesel::sql_query(
        "SELECT table_name || ' ' || column_name || ' ' || \
           CASE WHEN data_type = 'character varying' \
                  THEN coalesce('varchar(' || character_maximum_length || ')', 'varchar') \
                WHEN data_type = 'timestamp with time zone' THEN 'timestamptz' \
                WHEN data_type = 'double precision' THEN 'float8' \
                ELSE data_type END || ' ' || \
           CASE is_nullable WHEN 'YES' THEN 'null' ELSE 'not_null' END AS line \
         FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations' \
           AND NOT EXISTS (SELECT 1 FROM pg_class k \
                           WHERE k.relnamespace = 'public'::regnamespace \
                             AND k.relname = table_name \
                             AND (k.relispartition OR k.relkind = 'v')) \
         ORDER BY table_name, ordinal_position",
    )
    .load::<Col>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|c| c.line)
    .collect();
    let expected: Vec<String> = include_str!("expected_columns.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    for line in &expected {
        assert!(actual.contains(line), "missing or different: {line}");
    }
    for line in &actual {
        assert!(expected.contains(line), "unexpected column: {line}");
    }
    // No timestamp without time zone anywhere.
    assert!(!actual.iter().any(|l| l.contains("without time zone")));
}

#[test]
fn every_tenant_scoped_table_has_an_index_leading_with_tenant_id() {
    #[derive(QueryableByName)]
    struct T {
        #[diesel(sql_type = Text)]
        table_name: String,
    }
    let mut conn = common::conn();
    let missing: Vec<String> = diesel::sql_query(
        "SELECT c.table_name FROM information_schema.columns c \
         WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id' \
           AND (quote_ident(c.table_name))::regclass NOT IN \
               (SELECT oid FROM pg_class WHERE relkind = 'v') \
           AND NOT EXISTS ( \
             SELECT 1 FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = (quote_ident(c.table_name))::regclass AND a.attname = 'tenant_id')",
    )
    .load::<T>(&mut conn)
    .unwrap()
    .into_iter()
    .map(|t| t.table_name)
    .collect();
    assert!(missing.is_empty(), "no tenant_id-led index on {missing:?}");
}

fn finished_run(conn: &mut PgConnection, tenant: &TenantId) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    diesel::insert_into(worker_runs::table)
        .values(NewWorkerRun {
            id: id.clone(),
            tenant_id: tenant.into(),
            task: "summarise".into(),
            status: Some(WorkerStatus::Completed),
            success: Some(true),
            total_tokens: Some(100),
            cost_cents: Some(3),
            ..Default::default()
        })
        .execute(conn)
        .unwrap();
    id
}

fn assert_restrict_violation(r: QueryResult<usize>) {
    match r {
        Err(DieselError::DatabaseError(DatabaseErrorKind::RestrictViolation, info)) => {
            assert!(
                info.message().starts_with("TRUTH_VIOLATION"),
                "{}",
                info.message()
            )
        }
        other => panic!("expected the immutability trigger to refuse, got {other:?}"),
    }
}

#[test]
fn a_finished_worker_run_refuses_changes_to_its_protected_columns() {
    let mut conn = common::conn();
    let tenant = common::tenant();
    let id = finished_run(&mut conn, &tenant);
    let row = worker_runs::table.find((&tenant, &id));
    assert_restrict_violation(
        diesel::update(row)
            .set(worker_runs::status.eq(WorkerStatus::Running))
            .execute(&mut conn),
    );
    assert_restrict_violation(
        diesel::update(row)
            .set(worker_runs::success.eq(false))
            .execute(&mut conn),
    );
    assert_restrict_violation(
        diesel::update(row)
            .set(worker_runs::error.eq("late"))
            .execute(&mut conn),
    );
    assert_restrict_violation(
        diesel::update(row)
            .set(worker_runs::output_json.eq("{}"))
            .execute(&mut conn),
    );
    assert_restrict_violation(
        diesel::update(row)
            .set(worker_runs::total_tokens.eq(1))
            .execute(&mut conn),
    );
    assert_restrict_violation(
        diesel::update(row)
            .set(worker_runs::cost_cents.eq(1))
            .execute(&mut conn),
    );
    assert_restrict_violation(
        diesel::update(row)
            .set(worker_runs::started_at.eq(chrono::Utc::now()))
            .execute(&mut conn),
    );
    assert_restrict_violation(
        diesel::update(row)
            .set(worker_runs::completed_at.eq(chrono::Utc::now()))
            .execute(&mut conn),
    );
    // Columns outside the guard may still change, and the guarded ones are as they were.
    assert_eq!(
        diesel::update(row)
            .set(worker_runs::stages_completed.eq(4))
            .execute(&mut conn)
            .unwrap(),
        1
    );
    let (status, tokens, cents, stages): (WorkerStatus, Option<i32>, Option<i32>, Option<i32>) =
        row.select((
            worker_runs::status,
            worker_runs::total_tokens,
            worker_runs::cost_cents,
            worker_runs::stages_completed,
        ))
        .first(&mut conn)
        .unwrap();
    assert_eq!(
        (status, tokens, cents, stages),
        (WorkerStatus::Completed, Some(100), Some(3), Some(4))
    );
}

#[test]
fn a_second_tenant_level_budget_for_the_same_tenant_is_refused() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let budget = |id: String| NewCostBudget {
        id,
        tenant_id: tenant.to_string(),
        budget_type: BudgetType::Tenant,
        entity_id: None,
        daily_limit_cents: Some(1000),
        monthly_limit_cents: None,
        warn_threshold_pct: 80,
        hard_limit_enabled: false,
    };
    diesel::insert_into(cost_budgets::table)
        .values(budget(ids::cost_budget_id()))
        .execute(&mut conn)
        .unwrap();
    let second = conn.transaction(|c| {
        diesel::insert_into(cost_budgets::table)
            .values(budget(ids::cost_budget_id()))
            .execute(c)
    });
    assert!(matches!(
        second,
        Err(DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            _
        ))
    ));
    let n: i64 = cost_budgets::table
        .filter(cost_budgets::tenant_id.eq(&tenant))
        .select(count_star())
        .first(&mut conn)
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn the_write_guard_refuses_outside_a_transaction_and_allows_inside() {
    let mut conn = common::conn();
    assert!(matches!(
        db::require_transaction(&mut conn),
        Err(costdb::Error::NoTransaction)
    ));
    conn.transaction(|c| {
        db::require_transaction(c)?;
        // Nested: a savepoint is inside a transaction too.
        c.transaction(|c| db::require_transaction(c))
    })
    .unwrap();
    let mut test = common::test_conn();
    db::require_transaction(&mut test).unwrap();
}

#[test]
fn every_session_runs_in_utc() {
    #[derive(QueryableByName)]
    struct Tz {
        #[diesel(sql_type = Text)]
        tz: String,
    }
    let url = common::database_url();
    for tz in [
        diesel::sql_query("SELECT current_setting('TimeZone') AS tz")
            .get_result::<Tz>(&mut common::conn())
            .unwrap(),
        diesel::sql_query("SELECT current_setting('TimeZone') AS tz")
            .get_result::<Tz>(&mut db::connect(url).unwrap())
            .unwrap(),
    ] {
        assert_eq!(tz.tz, "UTC");
    }
}

#[test]
fn an_unknown_stored_value_is_a_clear_error_when_read() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let id = costdb::types::RunId::new(uuid::Uuid::new_v4().to_string()).unwrap();
    diesel::sql_query(
        "INSERT INTO worker_runs (id, tenant_id, task, status) VALUES ($1, $2, 't', 'paused')",
    )
    .bind::<Text, _>(id.as_str())
    .bind::<Text, _>(tenant.as_str())
    .execute(&mut conn)
    .unwrap();
    let err = costdb::drivers::WorkerWriteDriver::new(&mut conn)
        .fetch_worker_run(&tenant, &id)
        .unwrap_err();
    // The cause is kept typed and printed once in the report.
    let report = costdb::report(&err);
    assert!(matches!(err, costdb::Error::Database(_)), "{err:?}");
    assert!(
        report.starts_with("database error: ")
            && report.contains("unknown worker run status value \"paused\""),
        "{report}"
    );
    assert_eq!(report.matches("paused").count(), 1, "{report}");
}

#[test]
fn a_pool_on_an_unreachable_server_fails_after_its_own_timeout_with_a_typed_cause() {
    use std::error::Error as _;
    use std::time::{Duration, Instant};
    let started = Instant::now();
    let err = db::pool(
        "postgres://nobody@127.0.0.1:1/x",
        2,
        Duration::from_millis(300),
    )
    .unwrap_err();
    // Far below r2d2's default of 30 s: the timeout given was used.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, costdb::Error::Pool(_)), "{err:?}");
    assert!(err.source().is_some());
    common::assert_invalid(
        db::pool("postgres://h/x", 1, Duration::ZERO),
        "connection_timeout",
    );
    common::assert_invalid(
        db::pool("postgres://h/x", 0, Duration::from_secs(1)),
        "max_size",
    );
}

#[test]
fn the_column_limits_are_the_migrated_varchar_sizes() {
    use costdb::types::limits;
    #[derive(QueryableByName)]
    struct Len {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
        n: Option<i32>,
    }
    let mut conn = common::conn();
    let cases = [
        ("cost_records", "tenant_id", limits::TENANT_ID),
        ("cost_budgets", "tenant_id", limits::TENANT_ID),
        ("cost_anomalies", "tenant_id", limits::TENANT_ID),
        ("budget_reservations", "tenant_id", limits::TENANT_ID),
        ("worker_runs", "tenant_id", limits::WORKER_RUN_ID),
        ("worker_runs", "id", limits::WORKER_RUN_ID),
        ("pattern_feedback", "tenant_id", limits::PATTERN_TENANT_ID),
        ("prediction_events", "tenant_id", limits::PATTERN_TENANT_ID),
        ("coordination_audit_records", "tenant_id", limits::AUDIT_ID),
        (
            "coordination_audit_records",
            "envelope_id",
            limits::AUDIT_ID,
        ),
        ("cost_records", "user_id", limits::COST_ID),
        ("cost_records", "request_id", limits::COST_ID),
        ("cost_records", "workflow_id", limits::COST_ID),
        ("cost_records", "skill_id", limits::COST_ID),
        ("cost_records", "model", limits::COST_ID),
        ("cost_anomalies", "id", limits::COST_ID),
        ("cost_budgets", "id", limits::COST_ID),
        ("costsim_alert_queue", "anomaly_id", limits::COST_ID),
        ("cost_records", "feature_tag", limits::TAG),
        ("feature_tags", "tag", limits::TAG),
        ("cost_breach_history", "entity_id", limits::TAG),
        ("cost_drift_tracking", "entity_id", limits::TAG),
        ("feature_tags", "display_name", limits::DISPLAY_NAME),
        ("cost_breach_history", "id", limits::DETECTOR_ROW_ID),
        ("cost_drift_tracking", "id", limits::DETECTOR_ROW_ID),
        ("worker_runs", "worker_id", limits::WORKER_ID),
        ("pattern_feedback", "signature", limits::PATTERN_TEXT),
        ("prediction_events", "subject_id", limits::PATTERN_TEXT),
        ("pattern_feedback", "threshold_used", limits::THRESHOLD_USED),
    ];
    for (table, column, limit) in cases {
        let len: Len = diesel::sql_query(
            "SELECT character_maximum_length AS n FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
        )
        .bind::<diesel::sql_types::Text, _>(table)
        .bind::<diesel::sql_types::Text, _>(column)
        .get_result(&mut conn)
        .unwrap_or_else(|e| panic!("{table}.{column}: {e}"));
        assert_eq!(len.n, Some(limit as i32), "{table}.{column}");
    }
}

/// Every `.sql` file under `dir`, recursively.
fn sql_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sql_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "sql") {
            out.push(path);
        }
    }
}

#[test]
fn every_statement_held_as_sql_text_prepares_against_the_migrated_schema() {
    // The library's statements, and the command's (the benchmarks' raw-scan baselines).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sql_files(&root.join("src"), &mut files);
    sql_files(&root.join("cli/src"), &mut files);
    files.sort();
    assert!(!files.is_empty());
    let mut conn = common::test_conn();
    for (i, file) in files.iter().enumerate() {
        let sql = std::fs::read_to_string(file).unwrap();
        // PREPARE parses, resolves every table, column and function and types every
        // parameter, without running the statement.
        diesel::sql_query(format!("PREPARE costdb_check_{i} AS {sql}"))
            .execute(&mut conn)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        diesel::sql_query(format!("DEALLOCATE costdb_check_{i}"))
            .execute(&mut conn)
            .unwrap();
    }
}

#[test]
fn a_statement_held_as_text_binds_only_the_parameters_outside_its_comments() {
    use chrono::TimeZone;
    #[derive(QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        parameters: i32,
    }
    let mut conn = common::test_conn();
    let day = costdb::types::TimeWindow::new(
        chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        chrono::Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap(),
    )
    .unwrap();
    costdb::drivers::AnalyticsReadDriver::new(&mut conn)
        .fetch_worker_execution(&common::tid("t"), day, costdb::models::TimeBucket::Hour)
        .unwrap();
    let prepared: Vec<Prepared> = diesel::sql_query(
        "SELECT statement, cardinality(parameter_types) AS parameters \
         FROM pg_prepared_statements WHERE statement LIKE '%FROM aos_traces%'",
    )
    .load(&mut conn)
    .unwrap();
    assert_eq!(prepared.len(), 1);
    // The file's comment names $1 to $4 too; only the statement's four are bound, and the
    // comment is not sent.
    assert_eq!(prepared[0].parameters, 4, "{}", prepared[0].statement);
    assert!(
        !prepared[0].statement.contains("--"),
        "{}",
        prepared[0].statement
    );
}
