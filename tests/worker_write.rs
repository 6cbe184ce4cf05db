//! WorkerWriteDriver against a real PostgreSQL.

mod common;

use common::{assert_invalid, tx_now};
use costdb::drivers::{BudgetSnapshot, CostAdvisory, RunCost, WorkerRunData};
use costdb::models::{AnomalyType, EntityType, Severity, WorkerStatus};
use costdb::schema::worker_runs;
use costdb::types::{RunId, TenantId};
use costdb::{drivers::WorkerWriteDriver, Error};
use diesel::dsl::count_star;
use diesel::prelude::*;
use serde_json::json;

fn run_id() -> RunId {
    RunId::new(uuid::Uuid::new_v4().to_string()).unwrap()
}

fn runs_of(conn: &mut PgConnection, tenant: &TenantId) -> i64 {
    worker_runs::table
        .filter(worker_runs::tenant_id.eq(tenant))
        .select(count_star())
        .first(conn)
        .unwrap()
}

fn run_cost(model: &str, input_tokens: i32, output_tokens: i32, cost_cents: f64) -> RunCost {
    RunCost {
        model: model.into(),
        input_tokens,
        output_tokens,
        cost_cents,
    }
}

fn advisory(
    daily_spend_cents: i64,
    warn_threshold_cents: f64,
    budget: &BudgetSnapshot,
) -> CostAdvisory {
    CostAdvisory {
        daily_spend_cents,
        warn_threshold_cents,
        budget: budget.clone(),
    }
}

fn queued(task: &str) -> WorkerRunData {
    WorkerRunData {
        task: Some(task.into()),
        ..Default::default()
    }
}

#[test]
fn a_new_run_gets_the_insert_defaults() {
    let mut conn = common::test_conn();
    let (tenant, id) = (common::tenant(), run_id());
    let now = tx_now(&mut conn);
    let run = WorkerWriteDriver::new(&mut conn)
        .upsert_worker_run(&tenant, &id, &queued("write a plan"))
        .unwrap();
    assert_eq!(run.id, id);
    assert_eq!(run.tenant_id, tenant);
    assert_eq!(run.worker_id, "business-builder");
    assert_eq!(run.task, "write a plan");
    assert_eq!(
        run.input_json.as_deref(),
        Some(r#"{"task":"write a plan"}"#)
    );
    assert_eq!(run.status, WorkerStatus::Queued);
    assert_eq!((run.success, run.error.as_deref()), (None, None));
    assert_eq!((run.output_json.as_deref(), run.total_tokens), (None, None));
    assert_eq!((run.recoveries, run.policy_violations), (0, 0));
    assert_eq!((run.cost_cents, run.total_latency_ms), (None, None));
    assert_eq!(run.created_at, Some(now));
    assert_eq!((run.started_at, run.completed_at), (None, None));
    assert_eq!(
        (run.attempt, run.is_retry, run.is_synthetic),
        (1, false, false)
    );
    // What the call returned is what the table holds.
    let stored = WorkerWriteDriver::new(&mut conn)
        .fetch_worker_run(&tenant, &id)
        .unwrap()
        .unwrap();
    assert_eq!(stored, run);
}

#[test]
fn a_run_created_running_or_finished_is_stamped() {
    let mut conn = common::test_conn();
    let tenant = &common::tenant();
    let now = tx_now(&mut conn);
    let mut svc = WorkerWriteDriver::new(&mut conn);
    let running = svc
        .upsert_worker_run(
            tenant,
            &run_id(),
            &WorkerRunData {
                status: Some(WorkerStatus::Running),
                ..queued("x")
            },
        )
        .unwrap();
    assert_eq!(
        (running.started_at, running.completed_at),
        (Some(now), None)
    );
    let failed = svc
        .upsert_worker_run(
            tenant,
            &run_id(),
            &WorkerRunData {
                status: Some(WorkerStatus::Failed),
                success: Some(Some(false)),
                error: Some(Some("boom".into())),
                ..queued("x")
            },
        )
        .unwrap();
    assert_eq!((failed.started_at, failed.completed_at), (None, Some(now)));
    assert_eq!(failed.error.as_deref(), Some("boom"));
}

#[test]
fn updates_change_exactly_the_fields_given() {
    let mut conn = common::test_conn();
    let (tenant, id) = (common::tenant(), run_id());
    let now = tx_now(&mut conn);
    let mut svc = WorkerWriteDriver::new(&mut conn);
    let created = svc.upsert_worker_run(&tenant, &id, &queued("t")).unwrap();

    // running: status changes, started_at is stamped; nothing else moves.
    let running = svc
        .upsert_worker_run(
            &tenant,
            &id,
            &WorkerRunData {
                status: Some(WorkerStatus::Running),
                task: Some("ignored on update".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(running.status, WorkerStatus::Running);
    assert_eq!(running.started_at, Some(now));
    assert_eq!(running.task, "t", "task never changes on update");
    assert_eq!(running.input_json, created.input_json);
    assert_eq!(running.created_at, created.created_at);

    // Each field, one by one.
    let progress = svc
        .upsert_worker_run(
            &tenant,
            &id,
            &WorkerRunData {
                success: Some(Some(true)),
                error: Some(Some("transient".into())),
                artifacts: Some(Some(json!({"report": "ok"}))),
                replay_token: Some(Some(json!({"seed": 42}))),
                total_tokens_used: Some(Some(1200)),
                total_latency_ms: Some(Some(0)),
                policy_violations: Some(2),
                recoveries: Some(1),
                cost_cents: Some(7),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        progress.status,
        WorkerStatus::Running,
        "absent status is kept"
    );
    assert_eq!(progress.success, Some(true));
    assert_eq!(progress.error.as_deref(), Some("transient"));
    assert_eq!(progress.output_json.as_deref(), Some(r#"{"report":"ok"}"#));
    assert_eq!(
        progress.replay_token_json.as_deref(),
        Some(r#"{"seed":42}"#)
    );
    assert_eq!(progress.total_tokens, Some(1200));
    assert_eq!(progress.total_latency_ms, Some(0), "0 stays 0");
    assert_eq!((progress.policy_violations, progress.recoveries), (2, 1));
    assert_eq!(progress.cost_cents, Some(7));
    assert_eq!(
        progress.started_at,
        Some(now),
        "started_at is not re-stamped"
    );

    // An empty report keeps everything (the original wiped artifacts and counters).
    let kept = svc
        .upsert_worker_run(&tenant, &id, &WorkerRunData::default())
        .unwrap();
    assert_eq!(kept, progress);

    // Some(None) clears a nullable column.
    let cleared = svc
        .upsert_worker_run(
            &tenant,
            &id,
            &WorkerRunData {
                error: Some(None),
                artifacts: Some(None),
                total_latency_ms: Some(None),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((cleared.error, cleared.output_json), (None, None));
    assert_eq!(cleared.total_latency_ms, None);
    assert_eq!(cleared.replay_token_json, progress.replay_token_json);
    assert_eq!(cleared.cost_cents, Some(7));

    // Finishing stamps completed_at once.
    let done = svc
        .upsert_worker_run(
            &tenant,
            &id,
            &WorkerRunData {
                status: Some(WorkerStatus::Completed),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(done.status, WorkerStatus::Completed);
    assert_eq!(done.completed_at, Some(now));
    assert_eq!(done.started_at, Some(now));
}

#[test]
fn a_finished_run_is_refused_with_a_typed_error_and_left_unchanged() {
    let mut conn = common::test_conn();
    let (tenant, id) = (common::tenant(), run_id());
    let mut svc = WorkerWriteDriver::new(&mut conn);
    let done = svc
        .upsert_worker_run(
            &tenant,
            &id,
            &WorkerRunData {
                status: Some(WorkerStatus::Completed),
                total_tokens_used: Some(Some(10)),
                ..queued("t")
            },
        )
        .unwrap();
    for data in [
        WorkerRunData {
            status: Some(WorkerStatus::Completed),
            ..Default::default()
        },
        WorkerRunData {
            status: Some(WorkerStatus::Running),
            ..Default::default()
        },
        WorkerRunData {
            recoveries: Some(3),
            ..Default::default()
        },
    ] {
        match svc.upsert_worker_run(&tenant, &id, &data) {
            Err(Error::FinishedRun { run_id, status }) => {
                assert_eq!(
                    (run_id.as_str(), status.as_str()),
                    (id.as_str(), "completed")
                )
            }
            other => panic!("expected FinishedRun, got {other:?}"),
        }
    }
    // The transaction is still usable and the row is as it was.
    assert_eq!(svc.fetch_worker_run(&tenant, &id).unwrap(), Some(done));
}

#[test]
fn one_tenant_can_neither_read_update_nor_delete_another_tenants_run() {
    let mut conn = common::test_conn();
    let (owner, other, id) = (common::tenant(), common::tenant(), run_id());
    let mut svc = WorkerWriteDriver::new(&mut conn);
    let original = svc.upsert_worker_run(&owner, &id, &queued("mine")).unwrap();

    assert_eq!(svc.fetch_worker_run(&other, &id).unwrap(), None);
    assert!(matches!(
        svc.delete_worker_run(&other, &id),
        Err(Error::NotFound { .. })
    ));
    // Run ids are each tenant's own: the same id under another tenant is another run,
    // and writing it leaves the owner's run as it was.
    let theirs = WorkerRunData {
        status: Some(WorkerStatus::Failed),
        error: Some(Some("x".into())),
        ..queued("theirs")
    };
    let second = svc.upsert_worker_run(&other, &id, &theirs).unwrap();
    assert_eq!(
        (
            second.tenant_id.as_str(),
            second.status,
            second.error.as_deref()
        ),
        (other.as_str(), WorkerStatus::Failed, Some("x"))
    );
    assert_eq!(svc.fetch_worker_run(&owner, &id).unwrap(), Some(original));
    assert_eq!(runs_of(&mut conn, &other), 1);

    let mut svc = WorkerWriteDriver::new(&mut conn);
    svc.delete_worker_run(&owner, &id).unwrap();
    assert_eq!(svc.fetch_worker_run(&owner, &id).unwrap(), None);
    assert!(matches!(
        svc.delete_worker_run(&owner, &id),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(svc.fetch_worker_run(&other, &id).unwrap(), Some(second));
}

#[test]
fn cost_records_and_advisories_of_a_run() {
    let mut conn = common::test_conn();
    let (tenant, id) = (common::tenant(), run_id());
    let now = tx_now(&mut conn);
    let mut svc = WorkerWriteDriver::new(&mut conn);
    let rec = svc
        .insert_cost_record(
            &tenant,
            &id,
            &run_cost("claude-sonnet-4-20250514", 300, 700, 12.5),
        )
        .unwrap();
    assert!(rec.id.starts_with("cr_") && rec.id.len() == 19);
    assert_eq!(rec.request_id.as_deref(), Some(id.as_str()));
    assert_eq!(rec.workflow_id.as_deref(), Some("business-builder"));
    assert_eq!(rec.skill_id.as_deref(), Some("llm_invoke"));
    assert_eq!(
        (rec.input_tokens, rec.output_tokens, rec.cost_cents),
        (300, 700, 12.5)
    );
    assert_eq!((rec.user_id, rec.feature_tag), (None, None));
    assert_eq!(rec.created_at, now);
    // A retried call for the same run is not billed twice.
    let again = svc
        .insert_cost_record(
            &tenant,
            &id,
            &run_cost("claude-sonnet-4-20250514", 300, 700, 12.5),
        )
        .unwrap();
    assert_eq!(again.id, rec.id);

    let snapshot = BudgetSnapshot {
        budget_id: "cb_0123456789abcdef".into(),
        daily_limit_cents: Some(1000),
        warn_threshold_pct: 80,
        hard_limit_enabled: false,
    };
    let adv = svc
        .insert_cost_advisory(&tenant, &id, &advisory(900, 800.0, &snapshot))
        .unwrap();
    assert!(adv.id.starts_with("ca_"));
    assert_eq!(adv.anomaly_type, AnomalyType::BudgetWarning);
    assert_eq!(adv.severity, Severity::Medium);
    assert_eq!(adv.entity_type, EntityType::Tenant);
    assert_eq!(adv.entity_id.as_deref(), Some(tenant.as_str()));
    assert_eq!(
        (adv.current_value_cents, adv.expected_value_cents),
        (900.0, 800.0)
    );
    assert_eq!(adv.deviation_pct, (900.0 - 800.0) / 800.0 * 100.0);
    assert_eq!(adv.threshold_pct, 80.0);
    assert_eq!(
        adv.message,
        "Daily spend (900¢) exceeds 80% warning threshold (800¢)"
    );
    assert_eq!(
        adv.metadata,
        Some(json!({"run_id": id, "budget_snapshot": {
            "budget_id": "cb_0123456789abcdef", "daily_limit_cents": 1000,
            "warn_threshold_pct": 80, "hard_limit_enabled": false}}))
    );
    assert_eq!(
        (adv.resolved, adv.breach_count, adv.detected_at),
        (false, Some(1), now)
    );
    // A second advisory for the same run returns the first and adds nothing.
    let again = svc
        .insert_cost_advisory(&tenant, &id, &advisory(5, 0.0, &snapshot))
        .unwrap();
    assert_eq!(again, adv);
    let zero = svc
        .insert_cost_advisory(&tenant, &run_id(), &advisory(5, 0.0, &snapshot))
        .unwrap();
    assert_eq!(zero.deviation_pct, 0.0);
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_anomalies", &tenant),
        2
    );

    let n: i64 = common::count_for_tenant(&mut conn, "cost_records", &tenant);
    assert_eq!(n, 1);
}

#[test]
fn a_callers_rollback_leaves_nothing_and_no_driver_commits() {
    let (tenant, id) = (common::tenant(), run_id());
    let mut conn = common::conn();
    let outcome: Result<(), Error> = conn.transaction(|c| {
        let mut svc = WorkerWriteDriver::new(c);
        svc.upsert_worker_run(&tenant, &id, &queued("t"))?;
        svc.insert_cost_record(&tenant, &id, &run_cost("m", 1, 1, 1.0))?;
        let snapshot = BudgetSnapshot {
            budget_id: "b".into(),
            daily_limit_cents: None,
            warn_threshold_pct: 50,
            hard_limit_enabled: true,
        };
        svc.insert_cost_advisory(&tenant, &id, &advisory(1, 1.0, &snapshot))?;
        Err(Error::Conflict("caller decides to roll back".into()))
    });
    assert!(outcome.is_err());
    let mut other = costdb::db::connect(common::database_url()).unwrap();
    assert_eq!(runs_of(&mut other, &tenant), 0);
    let costs: i64 = common::count_for_tenant(&mut other, "cost_records", &tenant);
    let anomalies: i64 = common::count_for_tenant(&mut other, "cost_anomalies", &tenant);
    assert_eq!((costs, anomalies), (0, 0));
}

#[test]
fn writes_outside_a_transaction_are_refused_and_write_nothing() {
    let (tenant, id) = (common::tenant(), run_id());
    let mut conn = common::conn();
    let mut svc = WorkerWriteDriver::new(&mut conn);
    assert!(matches!(
        svc.upsert_worker_run(&tenant, &id, &queued("t")),
        Err(Error::NoTransaction)
    ));
    assert!(matches!(
        svc.insert_cost_record(&tenant, &id, &run_cost("m", 1, 1, 1.0)),
        Err(Error::NoTransaction)
    ));
    assert!(matches!(
        svc.delete_worker_run(&tenant, &id),
        Err(Error::NoTransaction)
    ));
    // Reads need no transaction.
    assert_eq!(svc.fetch_worker_run(&tenant, &id).unwrap(), None);
    assert_eq!(runs_of(&mut conn, &tenant), 0);
}

#[test]
fn bad_input_is_refused_before_any_sql() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut svc = WorkerWriteDriver::new(&mut conn);
    let ok = queued("t");
    // Ids that fit no column are refused when they are made.
    assert_invalid(RunId::new(""), "run_id");
    assert_invalid(RunId::new("r".repeat(37)), "run_id");
    assert_invalid(TenantId::new(" "), "tenant_id");
    // A tenant id that fits the cost tables but not `worker_runs.tenant_id` (36).
    assert_invalid(
        svc.upsert_worker_run(&common::tid(&"t".repeat(37)), &run_id(), &ok),
        "tenant_id",
    );
    for (data, field) in [
        (
            WorkerRunData {
                total_tokens_used: Some(Some(-1)),
                ..queued("t")
            },
            "total_tokens_used",
        ),
        (
            WorkerRunData {
                total_latency_ms: Some(Some(-5)),
                ..queued("t")
            },
            "total_latency_ms",
        ),
        (
            WorkerRunData {
                recoveries: Some(-1),
                ..queued("t")
            },
            "recoveries",
        ),
        (
            WorkerRunData {
                cost_cents: Some(-3),
                ..queued("t")
            },
            "cost_cents",
        ),
    ] {
        assert_invalid(svc.upsert_worker_run(&tenant, &run_id(), &data), field);
    }
    let id = run_id();
    assert_invalid(
        svc.insert_cost_record(&tenant, &id, &run_cost("", 1, 1, 1.0)),
        "model",
    );
    assert_invalid(
        svc.insert_cost_record(&tenant, &id, &run_cost("m", -1, 1, 1.0)),
        "input_tokens",
    );
    assert_invalid(
        svc.insert_cost_record(&tenant, &id, &run_cost("m", 1, -1, 1.0)),
        "output_tokens",
    );
    assert_invalid(
        svc.insert_cost_record(&tenant, &id, &run_cost("m", 1, 1, f64::NAN)),
        "cost_cents",
    );
    assert_invalid(
        svc.insert_cost_record(&tenant, &id, &run_cost("m", 1, 1, -0.5)),
        "cost_cents",
    );
    let snapshot = BudgetSnapshot {
        budget_id: "b".into(),
        daily_limit_cents: None,
        warn_threshold_pct: 150,
        hard_limit_enabled: false,
    };
    assert_invalid(
        svc.insert_cost_advisory(&tenant, &id, &advisory(1, 1.0, &snapshot)),
        "budget.warn_threshold_pct",
    );
    assert_invalid(
        svc.insert_cost_advisory(&tenant, &id, &advisory(1, f64::INFINITY, &snapshot)),
        "warn_threshold_cents",
    );
    assert_eq!(runs_of(&mut conn, &tenant), 0);
    let costs: i64 = common::count_for_tenant(&mut conn, "cost_records", &tenant);
    assert_eq!(costs, 0);
}

#[test]
fn concurrent_advisories_for_one_run_leave_one_row() {
    use std::sync::{Arc, Barrier};
    let (tenant, id) = (common::tenant(), run_id());
    let snapshot = BudgetSnapshot {
        budget_id: "cb_1".into(),
        daily_limit_cents: Some(100),
        warn_threshold_pct: 80,
        hard_limit_enabled: false,
    };
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads as i64)
        .map(|i| {
            let (tenant, id, snapshot, barrier) = (
                tenant.clone(),
                id.clone(),
                snapshot.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let mut conn = costdb::db::connect(common::database_url()).unwrap();
                conn.transaction(|c| {
                    barrier.wait();
                    WorkerWriteDriver::new(c).insert_cost_advisory(
                        &tenant,
                        &id,
                        &advisory(90 + i, 80.0, &snapshot),
                    )
                })
            })
        })
        .collect();
    let returned: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let mut conn = common::conn();
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_anomalies", &tenant),
        1
    );
    // Every caller was told about the one advisory that is stored.
    assert!(returned.iter().all(|a| a == &returned[0]), "{returned:?}");
}

#[test]
fn an_advisory_whose_deviation_would_not_be_finite_is_refused() {
    let mut conn = common::test_conn();
    let (tenant, id) = (common::tenant(), run_id());
    let snapshot = BudgetSnapshot {
        budget_id: "cb_1".into(),
        daily_limit_cents: None,
        warn_threshold_pct: 80,
        hard_limit_enabled: false,
    };
    let mut svc = WorkerWriteDriver::new(&mut conn);
    for threshold in [5e-324, f64::MIN_POSITIVE] {
        assert_invalid(
            svc.insert_cost_advisory(&tenant, &id, &advisory(1_000, threshold, &snapshot)),
            "warn_threshold_cents",
        );
    }
    assert_invalid(
        svc.insert_cost_advisory(&tenant, &id, &advisory(1, 1e13, &snapshot)),
        "warn_threshold_cents",
    );
    assert_invalid(RunId::new("r\0"), "run_id");
    assert_eq!(
        common::count_for_tenant(&mut conn, "cost_anomalies", &tenant),
        0
    );
}

#[test]
fn nul_characters_in_run_reports_are_refused() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut svc = WorkerWriteDriver::new(&mut conn);
    assert_invalid(
        svc.upsert_worker_run(&tenant, &run_id(), &queued("a\0b")),
        "task",
    );
    let data = WorkerRunData {
        error: Some(Some("boom\0".into())),
        ..Default::default()
    };
    assert_invalid(svc.upsert_worker_run(&tenant, &run_id(), &data), "error");
    assert_invalid(TenantId::new("t\0"), "tenant_id");
    assert_eq!(runs_of(&mut conn, &tenant), 0);
}
