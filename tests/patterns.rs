//! PatternDetectionDriver and PredictionDriver against a real PostgreSQL: runs across
//! tenants, statuses and times with expectations computed from the fixture, feedback and
//! predictions round-tripped, expiry, tenant isolation, index use and bad input.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::assert_invalid;
use costdb::drivers::{
    FeedbackInput, PatternDetectionDriver, PredictionDriver, PredictionFilter, PredictionInput,
};
use costdb::models::{
    NewWorkerRun, PatternSeverity, PatternType, PredictionType, SubjectType, WorkerRun,
    WorkerStatus,
};
use costdb::schema::worker_runs;
use costdb::{db, Error};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::json;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 8, 10, 0, 0, 0).unwrap()
}

/// One fixture row: (tenant, worker, status, error?, cost, minutes after t0).
type Spec = (usize, &'static str, WorkerStatus, bool, Option<i32>, i64);

/// 48 runs over two tenants, three workers, every status, with and without errors and
/// costs, one per 30 minutes (two share each instant, so ties need the id).
fn fixture(conn: &mut PgConnection, tenants: &[String; 2]) -> Vec<WorkerRun> {
    let statuses = [
        WorkerStatus::Failed,
        WorkerStatus::Completed,
        WorkerStatus::Running,
        WorkerStatus::Failed,
        WorkerStatus::Completed,
        WorkerStatus::Queued,
    ];
    let specs: Vec<Spec> = (0..48)
        .map(|i| {
            let status = statuses[i % 6];
            let cost = match i % 4 {
                0 => None,
                1 => Some(0),
                _ => Some(10 + i as i32),
            };
            (
                i % 2,
                ["w-a", "w-b", "w-c"][i % 3],
                status,
                i % 5 != 0,
                cost,
                (i / 2) as i64 * 30,
            )
        })
        .collect();
    for (i, (t, worker, status, error, cost, minutes)) in specs.iter().enumerate() {
        diesel::insert_into(worker_runs::table)
            .values(NewWorkerRun {
                id: format!("{}-{i:02}", &tenants[*t][..8]),
                tenant_id: tenants[*t].clone(),
                worker_id: Some((*worker).into()),
                task: format!("task {i}"),
                status: Some(*status),
                error: error.then(|| format!("boom {i}")),
                cost_cents: *cost,
                created_at: Some(t0() + Duration::minutes(*minutes)),
                ..Default::default()
            })
            .execute(conn)
            .unwrap();
    }
    worker_runs::table
        .filter(worker_runs::tenant_id.eq_any(tenants))
        .select(WorkerRun::as_select())
        .load(conn)
        .unwrap()
}

/// `rows` newest first, ties by id, newest first.
fn newest_first(mut rows: Vec<WorkerRun>) -> Vec<String> {
    rows.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    rows.into_iter().map(|r| r.id).collect()
}

fn ids(rows: Vec<WorkerRun>) -> Vec<String> {
    rows.into_iter().map(|r| r.id).collect()
}

#[test]
fn run_reads_match_the_fixture_and_isolate_tenants() {
    let mut conn = common::test_conn();
    let tenants = [common::tenant().to_string(), common::tenant().to_string()];
    let all = fixture(&mut conn, &tenants);
    let since = t0() + Duration::hours(3);
    let of = |t: usize| -> Vec<WorkerRun> {
        all.iter()
            .filter(|r| r.tenant_id == tenants[t])
            .cloned()
            .collect()
    };

    let failed_with_error: Vec<WorkerRun> = of(0)
        .into_iter()
        .filter(|r| {
            r.status == WorkerStatus::Failed && r.error.is_some() && r.created_at >= Some(since)
        })
        .collect();
    let got = PatternDetectionDriver::new(&mut conn)
        .fetch_failed_runs_with_error(Some(&tenants[0]), since, 100)
        .unwrap();
    assert!(!failed_with_error.is_empty());
    assert_eq!(ids(got), newest_first(failed_with_error.clone()));
    let two = PatternDetectionDriver::new(&mut conn)
        .fetch_failed_runs_with_error(Some(&tenants[0]), since, 2)
        .unwrap();
    assert_eq!(ids(two), newest_first(failed_with_error)[..2]);

    let costly: Vec<WorkerRun> = of(1)
        .into_iter()
        .filter(|r| r.status == WorkerStatus::Completed && r.cost_cents.unwrap_or(0) > 0)
        .collect();
    let got = PatternDetectionDriver::new(&mut conn)
        .fetch_completed_runs_with_costs(Some(&tenants[1]), 100)
        .unwrap();
    assert!(!costly.is_empty());
    assert_eq!(ids(got), newest_first(costly));

    // The prediction side: failed runs with or without error, by worker; totals; costs.
    let mut p = PredictionDriver::new(&mut conn);
    let failed_b: Vec<WorkerRun> = of(0)
        .into_iter()
        .filter(|r| {
            r.status == WorkerStatus::Failed && r.worker_id == "w-b" && r.created_at >= Some(since)
        })
        .collect();
    let got = p
        .fetch_failed_runs(Some(&tenants[0]), since, Some("w-b"), 100)
        .unwrap();
    assert_eq!(ids(got), newest_first(failed_b));

    let totals = p.fetch_run_totals(Some(&tenants[1]), since).unwrap();
    let mut expected: Vec<(String, i64)> = Vec::new();
    for r in of(1).into_iter().filter(|r| r.created_at >= Some(since)) {
        match expected.iter_mut().find(|(w, _)| *w == r.worker_id) {
            Some((_, n)) => *n += 1,
            None => expected.push((r.worker_id.clone(), 1)),
        }
    }
    expected.sort();
    let got: Vec<(String, i64)> = totals.into_iter().map(|t| (t.worker_id, t.runs)).collect();
    assert_eq!(got, expected);

    let cost_runs: Vec<WorkerRun> = of(0)
        .into_iter()
        .filter(|r| {
            r.status == WorkerStatus::Completed
                && r.cost_cents.unwrap_or(0) > 0
                && r.created_at >= Some(since)
                && r.worker_id == "w-c"
        })
        .collect();
    let got = p
        .fetch_cost_runs(Some(&tenants[0]), since, Some("w-c"), 100)
        .unwrap();
    assert_eq!(ids(got), newest_first(cost_runs));

    // Another tenant sees none of these.
    let stranger = common::tenant().to_string();
    assert!(p
        .fetch_failed_runs(Some(&stranger), t0(), None, 100)
        .unwrap()
        .is_empty());
    assert!(p
        .fetch_run_totals(Some(&stranger), t0())
        .unwrap()
        .is_empty());
}

fn feedback(kind: PatternType, at: DateTime<Utc>) -> FeedbackInput {
    FeedbackInput {
        pattern_type: kind,
        severity: PatternSeverity::Warning,
        description: "3 failures of the same signature in 24 h".into(),
        signature: Some("sig-timeout".into()),
        provenance: vec!["run-1".into(), "run-2".into(), "run-3".into()],
        occurrence_count: 3,
        time_window_minutes: Some(1440),
        threshold_used: Some("3".into()),
        metadata: Some(json!({"error": "timeout", "workers": ["w-a"]})),
        detected_at: Some(at),
    }
}

#[test]
fn feedback_round_trips_and_lists_newest_first() {
    let mut conn = common::test_conn();
    let tenant = common::tenant().to_string();
    let mut d = PatternDetectionDriver::new(&mut conn);
    let first = d
        .insert_feedback(&tenant, &feedback(PatternType::FailurePattern, t0()))
        .unwrap();
    let second = d
        .insert_feedback(
            &tenant,
            &feedback(PatternType::CostSpike, t0() + Duration::hours(1)),
        )
        .unwrap();
    let third = d
        .insert_feedback(
            &tenant,
            &feedback(PatternType::FailurePattern, t0() + Duration::hours(2)),
        )
        .unwrap();
    let now = common::tx_now(&mut conn);
    assert_eq!(
        (
            first.severity,
            first.provenance.clone(),
            first.occurrence_count,
            first.time_window_minutes,
            first.threshold_used.as_deref(),
            first.metadata.clone(),
            first.detected_at,
            first.created_at,
            first.acknowledged,
            first.acknowledged_at,
        ),
        (
            PatternSeverity::Warning,
            json!(["run-1", "run-2", "run-3"]),
            3,
            Some(1440),
            Some("3"),
            Some(json!({"error": "timeout", "workers": ["w-a"]})),
            t0(),
            now,
            false,
            None
        )
    );
    let mut d = PatternDetectionDriver::new(&mut conn);
    let listed = d.fetch_feedback_records(Some(&tenant), None, 10).unwrap();
    assert_eq!(listed, vec![third.clone(), second.clone(), first.clone()]);
    conn.batch_execute(&format!(
        "UPDATE pattern_feedback SET acknowledged = true WHERE id = '{}'",
        second.id
    ))
    .unwrap();
    let open = PatternDetectionDriver::new(&mut conn)
        .fetch_feedback_records(Some(&tenant), Some(false), 10)
        .unwrap();
    assert_eq!(
        open.iter().map(|f| f.id).collect::<Vec<_>>(),
        [third.id, first.id]
    );
    let failures = PredictionDriver::new(&mut conn)
        .fetch_failure_patterns(Some(&tenant), 1)
        .unwrap();
    assert_eq!(failures, vec![third]);
    assert!(PatternDetectionDriver::new(&mut conn)
        .fetch_feedback_records(Some(&common::tenant()), None, 10)
        .unwrap()
        .is_empty());
}

fn prediction(
    kind: PredictionType,
    subject: &str,
    confidence: f64,
    expires: DateTime<Utc>,
) -> PredictionInput {
    PredictionInput {
        prediction_type: kind,
        subject_type: SubjectType::Worker,
        subject_id: subject.into(),
        confidence_score: confidence,
        prediction_value: json!({"failure_likelihood": confidence, "window_hours": 24}),
        contributing_factors: vec![json!({"factor": "recent_failures", "weight": 0.6})],
        expires_at: expires,
        created_at: Some(expires - Duration::hours(24)),
        notes: Some("advisory".into()),
    }
}

#[test]
fn predictions_round_trip_expire_and_summarise() {
    let mut conn = common::test_conn();
    let tenant = common::tenant().to_string();
    let mut p = PredictionDriver::new(&mut conn);
    let specs = [
        (
            PredictionType::FailureLikelihood,
            "w-a",
            0.9,
            t0() + Duration::hours(1),
        ),
        (
            PredictionType::FailureLikelihood,
            "w-b",
            0.6,
            t0() + Duration::hours(5),
        ),
        (
            PredictionType::CostOverrun,
            "w-a",
            0.4,
            t0() + Duration::hours(3),
        ),
        (
            PredictionType::CostOverrun,
            "w-a",
            0.8,
            t0() - Duration::hours(1),
        ),
    ];
    let stored: Vec<_> = specs
        .iter()
        .map(|(k, s, c, e)| {
            p.insert_prediction(&tenant, &prediction(*k, s, *c, *e))
                .unwrap()
        })
        .collect();
    let first = &stored[0];
    let input = prediction(specs[0].0, specs[0].1, specs[0].2, specs[0].3);
    assert_eq!(
        (
            &first.tenant_id,
            first.prediction_type,
            first.subject_type,
            first.subject_id.as_str(),
            first.confidence_score,
            &first.prediction_value,
            &first.contributing_factors,
            first.expires_at,
            Some(first.created_at),
            first.is_advisory,
            first.notes.as_deref(),
        ),
        (
            &tenant,
            input.prediction_type,
            input.subject_type,
            "w-a",
            0.9,
            &input.prediction_value,
            &json!(input.contributing_factors),
            input.expires_at,
            input.created_at,
            true,
            Some("advisory"),
        )
    );
    // Valid at t0: not the one that expired before it; exactly at expiry is expired.
    let valid = |at| PredictionFilter {
        tenant_id: Some(tenant.clone()),
        valid_at: Some(at),
        ..Default::default()
    };
    let got = p.fetch_predictions(&valid(t0()), 10, 0).unwrap();
    let expected: Vec<_> = {
        let mut v: Vec<_> = stored
            .iter()
            .filter(|s| s.expires_at > t0())
            .cloned()
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse((p.created_at, p.id)));
        v
    };
    assert_eq!(got, expected);
    assert_eq!(
        p.fetch_prediction_count(&valid(t0() + Duration::hours(1)))
            .unwrap(),
        2
    );
    let subject = PredictionFilter {
        tenant_id: Some(tenant.clone()),
        subject_type: Some(SubjectType::Worker),
        subject_id: Some("w-a".into()),
        prediction_type: Some(PredictionType::CostOverrun),
        ..Default::default()
    };
    assert_eq!(p.fetch_prediction_count(&subject).unwrap(), 2);
    assert_eq!(p.fetch_predictions(&subject, 1, 1).unwrap().len(), 1);

    let stats = p
        .fetch_prediction_stats(&PredictionFilter {
            tenant_id: Some(tenant.clone()),
            ..Default::default()
        })
        .unwrap();
    let summary: Vec<_> = stats
        .iter()
        .map(|s| {
            (
                s.prediction_type,
                s.predictions,
                (s.avg_confidence * 100.0).round(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (PredictionType::CostOverrun, 2, 60.0),
            (PredictionType::FailureLikelihood, 2, 75.0)
        ]
    );
    assert_eq!(
        p.fetch_prediction_by_id(&tenant, first.id)
            .unwrap()
            .as_ref(),
        Some(first)
    );
    assert_eq!(
        p.fetch_prediction_by_id(&common::tenant(), first.id)
            .unwrap(),
        None
    );
}

#[test]
fn with_sequential_scans_off_tenant_queries_use_a_tenant_index() {
    let mut conn = common::test_conn();
    conn.batch_execute("SET LOCAL enable_seqscan = off")
        .unwrap();
    let tenant = "t-plan";
    let filter = PredictionFilter {
        tenant_id: Some(tenant.into()),
        prediction_type: Some(PredictionType::CostOverrun),
        ..Default::default()
    };
    let plans = [
        db::explain(
            &mut conn,
            &PatternDetectionDriver::failed_runs_with_error_query(Some(tenant), t0(), 50).unwrap(),
        ),
        db::explain(
            &mut conn,
            &PatternDetectionDriver::completed_runs_with_costs_query(Some(tenant), 50).unwrap(),
        ),
        db::explain(
            &mut conn,
            &PatternDetectionDriver::feedback_query(Some(tenant), None, Some(false), 50).unwrap(),
        ),
        db::explain(
            &mut conn,
            &PredictionDriver::failed_runs_query(Some(tenant), t0(), Some("w"), 50).unwrap(),
        ),
        db::explain(
            &mut conn,
            &PredictionDriver::cost_runs_query(Some(tenant), t0(), None, 50).unwrap(),
        ),
        db::explain(
            &mut conn,
            &PredictionDriver::predictions_query(&filter, 50, 0).unwrap(),
        ),
    ];
    for plan in plans {
        let plan = plan.unwrap().join("\n");
        assert!(plan.contains("tenant"), "no tenant index:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let mut conn = common::test_conn();
    let tenant = common::tenant().to_string();
    let ok = feedback(PatternType::FailurePattern, t0());
    let mut d = PatternDetectionDriver::new(&mut conn);
    assert_invalid(
        d.fetch_failed_runs_with_error(Some(&tenant), t0(), 0),
        "limit",
    );
    assert_invalid(d.fetch_completed_runs_with_costs(None, 1_001), "limit");
    assert_invalid(d.fetch_feedback_records(Some(""), None, 5), "tenant_id");
    assert_invalid(d.insert_feedback("", &ok), "tenant_id");
    for (bad, field) in [
        (
            FeedbackInput {
                description: " ".into(),
                ..ok.clone()
            },
            "description",
        ),
        (
            FeedbackInput {
                occurrence_count: 0,
                ..ok.clone()
            },
            "occurrence_count",
        ),
        (
            FeedbackInput {
                signature: Some("s".repeat(256)),
                ..ok.clone()
            },
            "signature",
        ),
        (
            FeedbackInput {
                time_window_minutes: Some(0),
                ..ok.clone()
            },
            "time_window_minutes",
        ),
        (
            FeedbackInput {
                provenance: vec![String::new()],
                ..ok.clone()
            },
            "provenance",
        ),
        (
            FeedbackInput {
                metadata: Some(json!({"a": "\u{0}"})),
                ..ok.clone()
            },
            "metadata",
        ),
    ] {
        assert_invalid(d.insert_feedback(&tenant, &bad), field);
    }
    let good = prediction(PredictionType::FailureLikelihood, "w", 0.5, t0());
    let mut p = PredictionDriver::new(&mut conn);
    for (bad, field) in [
        (
            PredictionInput {
                confidence_score: 1.5,
                ..good.clone()
            },
            "confidence_score",
        ),
        (
            PredictionInput {
                confidence_score: f64::NAN,
                ..good.clone()
            },
            "confidence_score",
        ),
        (
            PredictionInput {
                prediction_value: json!([1]),
                ..good.clone()
            },
            "prediction_value",
        ),
        (
            PredictionInput {
                contributing_factors: vec![json!(3)],
                ..good.clone()
            },
            "contributing_factors",
        ),
        (
            PredictionInput {
                created_at: Some(t0()),
                ..good.clone()
            },
            "expires_at",
        ),
        (
            PredictionInput {
                subject_id: String::new(),
                ..good.clone()
            },
            "subject_id",
        ),
    ] {
        assert_invalid(p.insert_prediction(&tenant, &bad), field);
    }
    assert_invalid(
        p.fetch_predictions(&PredictionFilter::default(), 10, -1),
        "offset",
    );
    assert_eq!(
        common::count_for_tenant(&mut conn, "pattern_feedback", &tenant),
        0
    );
    assert_eq!(
        common::count_for_tenant(&mut conn, "prediction_events", &tenant),
        0
    );
    let mut bare = db::connect(common::database_url()).unwrap();
    assert!(matches!(
        PredictionDriver::new(&mut bare).insert_prediction(&tenant, &good),
        Err(Error::NoTransaction)
    ));
}
