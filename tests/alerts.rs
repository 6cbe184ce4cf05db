//! AlertDriver against a real PostgreSQL: competing workers (locked and leased), rollbacks
//! and vanished workers, the backoff policy driven through the driver, stats, retry,
//! purge and bad input. The queue has no tenant, so each test has a database of its own.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::assert_invalid;
use costdb::drivers::{next_step, AlertDriver, NewAlert, NextStep, Outcome, QueueStats};
use costdb::models::{AlertStatus, AlertType, QueuedAlert};
use costdb::{db, Error};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::json;

fn queue_db() -> String {
    common::migrated_database()
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap()
}

fn alert(i: usize) -> NewAlert {
    NewAlert {
        payload: json!([{ "labels": { "alertname": "CostSimDisabled", "n": i } }]),
        alert_type: AlertType::Disable,
        circuit_breaker_name: Some("costsim_v2".into()),
        incident_id: None,
        max_attempts: 10,
    }
}

/// Queues `n` alerts due at `t0()` and returns their ids.
fn fill(url: &str, n: usize) -> Vec<i64> {
    let mut conn = db::connect(url).unwrap();
    conn.transaction::<_, Error, _>(|c| {
        let ids = (0..n)
            .map(|i| AlertDriver::new(c).insert_alert(&alert(i)).map(|a| a.id))
            .collect::<Result<Vec<_>, _>>()?;
        c.batch_execute(
            "UPDATE costsim_alert_queue SET next_attempt_at = '2026-07-01 12:00:00+00'",
        )?;
        Ok(ids)
    })
    .unwrap()
}

fn stats(url: &str) -> QueueStats {
    AlertDriver::new(&mut db::connect(url).unwrap())
        .fetch_queue_stats()
        .unwrap()
}

fn all(url: &str) -> Vec<QueuedAlert> {
    use costdb::schema::costsim_alert_queue as q;
    q::table
        .order(q::id)
        .select(QueuedAlert::as_select())
        .load(&mut db::connect(url).unwrap())
        .unwrap()
}

/// Runs `worker` on four threads with connections of their own; returns every id each
/// one delivered.
fn four_workers(url: &str, worker: fn(&mut PgConnection) -> Vec<i64>) -> Vec<i64> {
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (url.to_owned(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = db::connect(&url).unwrap();
                barrier.wait();
                worker(&mut conn)
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn four_locking_workers_deliver_every_alert_exactly_once() {
    let url = queue_db();
    let ids = fill(&url, 2_000);
    let delivered = four_workers(&url, |conn| {
        let mut mine = Vec::new();
        loop {
            let batch = conn
                .transaction::<_, Error, _>(|c| {
                    let mut d = AlertDriver::new(c);
                    let due = d.fetch_pending_alerts(t0(), 25)?;
                    for a in &due {
                        d.update_alert_sent(a.id, t0() + Duration::seconds(1))?;
                    }
                    Ok(due.into_iter().map(|a| a.id).collect::<Vec<_>>())
                })
                .unwrap();
            if batch.is_empty() {
                return mine;
            }
            mine.extend(batch);
        }
    });
    assert_eq!(delivered.len(), ids.len(), "none twice");
    assert_eq!(
        delivered.iter().copied().collect::<BTreeSet<_>>(),
        ids.iter().copied().collect::<BTreeSet<_>>(),
        "none lost"
    );
    let s = stats(&url);
    assert_eq!((s.pending, s.sent, s.failed, s.claimed), (0, 2_000, 0, 0));
    assert!(all(&url)
        .iter()
        .all(|a| a.sent_at == Some(t0() + Duration::seconds(1)) && a.attempts == 0));
}

#[test]
fn four_leasing_workers_deliver_every_alert_exactly_once() {
    let url = queue_db();
    let ids = fill(&url, 2_000);
    let delivered = four_workers(&url, |conn| {
        let mut mine = Vec::new();
        loop {
            let claimed = conn
                .transaction(|c| AlertDriver::new(c).claim_alerts(t0(), Duration::minutes(5), 25))
                .unwrap();
            if claimed.is_empty() {
                return mine;
            }
            // "Send" with no transaction open, then record each outcome.
            for claim in &claimed {
                mine.push(claim.alert.id);
                let settled = conn
                    .transaction(|c| {
                        AlertDriver::new(c).settle_claim(claim, &Outcome::Sent { at: t0() })
                    })
                    .unwrap();
                assert!(settled);
            }
        }
    });
    assert_eq!(delivered.len(), ids.len());
    assert_eq!(
        delivered.into_iter().collect::<BTreeSet<_>>(),
        ids.into_iter().collect::<BTreeSet<_>>()
    );
    let s = stats(&url);
    assert_eq!((s.pending, s.sent, s.claimed), (0, 2_000, 0));
}

#[test]
fn a_rolled_back_fetch_and_a_vanished_leaseholder_give_their_alerts_back() {
    let url = queue_db();
    let ids = fill(&url, 6);
    let mut conn = db::connect(&url).unwrap();
    // Locked: the worker's transaction rolls back after fetching.
    let gave_up = conn.transaction::<(), Error, _>(|c| {
        let due = AlertDriver::new(c).fetch_pending_alerts(t0(), 4)?;
        Err(Error::Conflict(format!("worker gave up on {}", due.len())))
    });
    assert!(matches!(gave_up, Err(Error::Conflict(m)) if m == "worker gave up on 4"));
    let again = conn
        .transaction(|c| AlertDriver::new(c).fetch_pending_alerts(t0(), 4))
        .unwrap();
    assert_eq!(again.iter().map(|a| a.id).collect::<Vec<_>>(), ids[..4]);
    assert!(again.iter().all(|a| a.attempts == 0));

    // Leased: a worker claims three and vanishes.
    let lease = Duration::seconds(60);
    let lost = conn
        .transaction(|c| AlertDriver::new(c).claim_alerts(t0(), lease, 3))
        .unwrap();
    assert_eq!(
        lost.iter().map(|c| c.alert.id).collect::<Vec<_>>(),
        ids[..3]
    );
    assert_eq!(stats(&url).claimed, 3);
    // While the lease runs, others get only the rest.
    let during = conn
        .transaction(|c| AlertDriver::new(c).claim_alerts(t0() + Duration::seconds(59), lease, 10))
        .unwrap();
    assert_eq!(
        during.iter().map(|c| c.alert.id).collect::<Vec<_>>(),
        ids[3..]
    );
    // After it, the three are claimable again, attempts unchanged.
    let after = conn
        .transaction(|c| AlertDriver::new(c).claim_alerts(t0() + Duration::seconds(61), lease, 10))
        .unwrap();
    assert_eq!(
        after.iter().map(|c| c.alert.id).collect::<Vec<_>>(),
        ids[..3]
    );
    assert!(after.iter().all(|c| c.alert.attempts == 0));
    // The vanished worker's late outcome is refused and changes nothing.
    let late = conn
        .transaction(|c| AlertDriver::new(c).settle_claim(&lost[0], &Outcome::Sent { at: t0() }))
        .unwrap();
    assert!(!late);
    assert_eq!(all(&url)[0].status, AlertStatus::Pending);
    let on_time = conn
        .transaction(|c| AlertDriver::new(c).settle_claim(&after[0], &Outcome::Sent { at: t0() }))
        .unwrap();
    assert!(on_time);
}

#[test]
fn the_backoff_policy_driven_through_the_driver() {
    let url = queue_db();
    let id = fill(&url, 1)[0];
    let mut conn = db::connect(&url).unwrap();
    let mut now = t0();
    let mut waits = Vec::new();
    for failure in 1..=10 {
        let step = conn
            .transaction::<_, Error, _>(|c| {
                let mut d = AlertDriver::new(c);
                let due = d.fetch_pending_alerts(now, 10)?;
                assert_eq!(due.len(), 1, "due again at failure {failure}");
                let a = &due[0];
                let error = (failure % 2 == 1).then(|| format!("HTTP 503: attempt {failure}"));
                let step = next_step(a.attempts, a.max_attempts, now, Duration::seconds(300));
                match step {
                    NextStep::RetryAt(next) => d.update_alert_retry(id, now, next, error)?,
                    NextStep::DeadLetter => d.update_alert_failed(id, now, error)?,
                }
                Ok(step)
            })
            .unwrap();
        match step {
            NextStep::RetryAt(next) => {
                waits.push((next - now).num_seconds());
                // Not due a microsecond early.
                let early = conn
                    .transaction(|c| {
                        AlertDriver::new(c)
                            .fetch_pending_alerts(next - Duration::microseconds(1), 10)
                    })
                    .unwrap();
                assert!(early.is_empty());
                now = next;
            }
            NextStep::DeadLetter => assert_eq!(failure, 10),
        }
    }
    assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300]);
    let a = &all(&url)[0];
    assert_eq!(
        (a.status, a.attempts, a.last_attempt_at),
        (AlertStatus::Failed, 10, Some(now))
    );
    // The 10th failure gave no error text: the 9th's is kept.
    assert_eq!(a.last_error.as_deref(), Some("HTTP 503: attempt 9"));
    assert_eq!(
        next_step(0, 1, now, Duration::seconds(300)),
        NextStep::DeadLetter
    );
}

#[test]
fn stats_retry_and_purge_match_the_fixture() {
    let url = queue_db();
    let ids = fill(&url, 10);
    let mut conn = db::connect(&url).unwrap();
    // 0-2 sent, 3-5 failed (5 with no attempts left after 3 retries), 6-9 pending.
    conn.batch_execute(&format!(
        "UPDATE costsim_alert_queue SET status = 'sent', created_at = '2026-05-01Z' WHERE id IN ({}, {}, {}); \
         UPDATE costsim_alert_queue SET status = 'failed', attempts = 10, created_at = '2026-05-01Z' WHERE id IN ({}, {}); \
         UPDATE costsim_alert_queue SET status = 'failed', attempts = 13 WHERE id = {}; \
         UPDATE costsim_alert_queue SET created_at = '2026-06-01Z' WHERE id = {};",
        ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6]
    ))
    .unwrap();
    let s = stats(&url);
    assert_eq!((s.pending, s.sent, s.failed, s.claimed), (4, 3, 3, 0));
    assert_eq!(
        s.oldest_pending,
        Some(Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap())
    );

    let retried = conn
        .transaction(|c| AlertDriver::new(c).retry_failed_alerts(3, t0()))
        .unwrap();
    assert_eq!(retried, 2);
    let rows = all(&url);
    for a in &rows[3..5] {
        assert_eq!(
            (a.status, a.max_attempts, a.next_attempt_at),
            (AlertStatus::Pending, 13, t0())
        );
    }
    assert_eq!(rows[5].status, AlertStatus::Failed);

    let cutoff = Utc.with_ymd_and_hms(2026, 5, 2, 0, 0, 0).unwrap();
    let purged = conn
        .transaction(|c| {
            AlertDriver::new(c).purge_old_alerts(cutoff, &[AlertStatus::Sent, AlertStatus::Failed])
        })
        .unwrap();
    assert_eq!(
        purged, 3,
        "the old sent ones; the retried ones are pending now"
    );
    assert_eq!(all(&url).len(), 7);
}

#[test]
fn sent_alerts_mark_their_incident() {
    let url = queue_db();
    let mut conn = db::connect(&url).unwrap();
    conn.batch_execute(
        "INSERT INTO costsim_cb_incidents (id, circuit_breaker_name, reason, severity) \
         VALUES ('1b9d6bcd-bbf', 'costsim_v2', 'drift', 'P1')",
    )
    .unwrap();
    let at = t0() + Duration::microseconds(7);
    let (known, unknown) = conn
        .transaction::<_, Error, _>(|c| {
            let mut d = AlertDriver::new(c);
            Ok((
                d.update_incident_alert_sent("1b9d6bcd-bbf", at)?,
                d.update_incident_alert_sent("nope", at)?,
            ))
        })
        .unwrap();
    assert!(known && !unknown);
    #[derive(QueryableByName)]
    struct Flag {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        alert_sent: bool,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
        alert_sent_at: Option<DateTime<Utc>>,
    }
    let f: Flag = diesel::sql_query("SELECT alert_sent, alert_sent_at FROM costsim_cb_incidents")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!((f.alert_sent, f.alert_sent_at), (true, Some(at)));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let url = queue_db();
    let ids = fill(&url, 3);
    let before = all(&url);
    let mut conn = db::connect(&url).unwrap();
    conn.begin_test_transaction().unwrap();
    let mut d = AlertDriver::new(&mut conn);
    assert_invalid(d.fetch_pending_alerts(t0(), 0), "batch_size");
    assert_invalid(d.fetch_pending_alerts(t0(), 1_001), "batch_size");
    assert_invalid(d.claim_alerts(t0(), Duration::seconds(30), 0), "batch_size");
    assert_invalid(d.claim_alerts(t0(), Duration::zero(), 5), "lease");
    assert_invalid(d.purge_old_alerts(t0(), &[]), "statuses");
    assert_invalid(d.retry_failed_alerts(0, t0()), "max_retries");
    for payload in [json!([]), json!({"labels": {}}), json!([{"a": "x\u{0}"}])] {
        assert_invalid(
            d.insert_alert(&NewAlert {
                payload,
                ..alert(0)
            }),
            "payload",
        );
    }
    assert_invalid(
        d.insert_alert(&NewAlert {
            max_attempts: 0,
            ..alert(0)
        }),
        "max_attempts",
    );
    assert_invalid(
        d.update_alert_retry(ids[0], t0(), t0(), Some("bad\0".into())),
        "error",
    );
    assert!(matches!(
        d.update_alert_sent(i64::MAX, t0()),
        Err(Error::NotFound { .. })
    ));
    drop(conn);
    assert_eq!(all(&url), before);
    // Writes and locks need a transaction.
    let mut bare = db::connect(&url).unwrap();
    assert!(matches!(
        AlertDriver::new(&mut bare).fetch_pending_alerts(t0(), 5),
        Err(Error::NoTransaction)
    ));
    assert!(matches!(
        AlertDriver::new(&mut bare).update_alert_sent(ids[0], t0()),
        Err(Error::NoTransaction)
    ));
    assert_eq!(all(&url), before);
}

#[test]
fn a_batch_is_marked_sent_in_one_statement_and_only_pending_ones_count() {
    let url = queue_db();
    let ids = fill(&url, 5);
    let mut conn = db::connect(&url).unwrap();
    let at = t0() + Duration::seconds(9);
    conn.batch_execute(&format!(
        "UPDATE costsim_alert_queue SET status = 'failed' WHERE id = {}",
        ids[4]
    ))
    .unwrap();
    let n = conn
        .transaction(|c| AlertDriver::new(c).update_alerts_sent(&ids[2..], at))
        .unwrap();
    assert_eq!(n, 2, "the failed one is left as it is");
    let none = conn
        .transaction(|c| AlertDriver::new(c).update_alerts_sent(&[], at))
        .unwrap();
    assert_eq!(none, 0);
    let rows = all(&url);
    let sent: Vec<_> = rows
        .iter()
        .filter(|a| a.status == AlertStatus::Sent)
        .map(|a| (a.id, a.sent_at))
        .collect();
    assert_eq!(sent, vec![(ids[2], Some(at)), (ids[3], Some(at))]);
    assert_eq!(rows[4].status, AlertStatus::Failed);
}

/// A user-spike anomaly of `tenant`'s user `user` detected at `at`, as the detector
/// upserts it.
fn upsert_spike(
    c: &mut PgConnection,
    tenant: &str,
    user: &str,
    cents: f64,
    at: DateTime<Utc>,
) -> costdb::models::CostAnomaly {
    use costdb::drivers::{AnomalyInput, AnomalyKey};
    use costdb::models::{AnomalyType, DerivedCause, EntityType, Severity};
    use costdb::types::EntityKey;
    costdb::drivers::CostAnomalyDriver::new(c)
        .upsert_anomaly(
            &common::tid(tenant),
            &AnomalyInput {
                key: AnomalyKey {
                    anomaly_type: AnomalyType::UserSpike,
                    entity: EntityKey {
                        entity_type: EntityType::User,
                        entity_id: Some(user.into()),
                    },
                },
                severity: Severity::High,
                current_value_cents: cents,
                expected_value_cents: 100.0,
                deviation_pct: cents - 100.0,
                threshold_pct: 200.0,
                message: format!("User {user} spending {cents}¢ against 100¢"),
                breach_count: 2,
                derived_cause: Some(DerivedCause::RetryLoop),
                metadata: None,
                detected_at: at,
            },
        )
        .unwrap()
}

#[test]
fn each_anomaly_is_announced_once_with_its_own_type_and_payload() {
    let url = queue_db();
    let mut conn = db::connect(&url).unwrap();
    // Two detector runs on the same day over the same anomalies (the second sees higher
    // spend), a third run the next day.
    let run = |c: &mut PgConnection, cents: f64, at: DateTime<Utc>| {
        c.transaction::<_, Error, _>(|c| {
            let found = vec![
                upsert_spike(c, "tenant-a", "u1", cents, at),
                upsert_spike(c, "tenant-a", "u2", cents + 1.0, at),
                upsert_spike(c, "tenant-b", "u1", cents + 2.0, at),
            ];
            let queued = AlertDriver::new(c).insert_anomaly_alerts(&found, 10)?;
            Ok((found, queued))
        })
        .unwrap()
    };
    let (found, queued) = run(&mut conn, 400.0, t0());
    assert_eq!(queued.len(), 3);
    for (a, q) in found.iter().zip(&queued) {
        assert_eq!(q.alert_type, Some(AlertType::CostAnomaly));
        assert_eq!(q.tenant_id.as_deref(), Some(a.tenant_id.as_str()));
        assert_eq!(q.anomaly_id.as_deref(), Some(a.id.as_str()));
        assert_eq!(q.status, AlertStatus::Pending);
        assert_eq!(
            (q.circuit_breaker_name.as_deref(), q.max_attempts),
            (None, 10)
        );
        let alert = &q.payload[0];
        assert_eq!(alert["labels"]["alertname"], "CostAnomaly");
        assert_eq!(alert["labels"]["tenant_id"], a.tenant_id.as_str());
        assert_eq!(alert["labels"]["anomaly_type"], "USER_SPIKE");
        assert_eq!(alert["labels"]["entity_type"], "user");
        assert_eq!(
            alert["labels"]["entity_id"],
            a.entity_id.as_deref().unwrap()
        );
        assert_eq!(alert["labels"]["severity"], "HIGH");
        assert_eq!(alert["labels"]["derived_cause"], "RETRY_LOOP");
        assert_eq!(alert["annotations"]["anomaly_id"], a.id.as_str());
        assert_eq!(alert["annotations"]["summary"], a.message.as_str());
        let amount = |k: &str| {
            alert["annotations"][k]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        assert_eq!(amount("current_value_cents"), a.current_value_cents);
        assert_eq!(amount("expected_value_cents"), 100.0);
        assert_eq!(amount("deviation_pct"), a.deviation_pct);
    }
    let (again, queued_again) = run(&mut conn, 450.0, t0() + Duration::hours(3));
    assert_eq!(
        again.iter().map(|a| &a.id).collect::<Vec<_>>(),
        found.iter().map(|a| &a.id).collect::<Vec<_>>(),
        "the same day's anomalies"
    );
    assert!(queued_again.is_empty(), "{queued_again:?}");
    let (next_day, queued_next) = run(&mut conn, 400.0, t0() + Duration::days(1));
    assert_eq!(queued_next.len(), 3);
    assert!(next_day.iter().all(|a| !found.iter().any(|f| f.id == a.id)));
    assert_eq!(all(&url).len(), 6);
}

#[test]
fn anomaly_alerts_refuse_bad_input_and_the_table_keeps_its_closed_set() {
    let url = queue_db();
    let mut conn = db::connect(&url).unwrap();
    assert!(matches!(
        AlertDriver::new(&mut conn).insert_anomaly_alerts(&[], 10),
        Err(Error::NoTransaction)
    ));
    conn.transaction::<_, Error, _>(|c| {
        let a = upsert_spike(c, "tenant-a", "u1", 400.0, t0());
        let mut q = AlertDriver::new(c);
        assert_invalid(
            q.insert_anomaly_alerts(std::slice::from_ref(&a), 0),
            "max_attempts",
        );
        let mut no_tenant = a.clone();
        no_tenant.tenant_id.clear();
        assert_invalid(q.insert_anomaly_alerts(&[a, no_tenant], 10), "tenant_id");
        // The generic path cannot make an anomaly alert without its anomaly.
        let mut borrowed = alert(0);
        borrowed.alert_type = AlertType::CostAnomaly;
        assert_invalid(q.insert_alert(&borrowed), "alert_type");
        Ok(())
    })
    .unwrap();
    assert!(all(&url).is_empty(), "nothing was queued");
    // A writer of the original shape: its three types still land; anything else, or an
    // anomaly alert without its anomaly, is refused by the table.
    conn.batch_execute(
        "INSERT INTO costsim_alert_queue (payload, alert_type, circuit_breaker_name) \
         VALUES ('[{}]', 'canary_fail', 'costsim_v2')",
    )
    .unwrap();
    for refused in [
        "INSERT INTO costsim_alert_queue (payload, alert_type) VALUES ('[{}]', 'bogus')",
        "INSERT INTO costsim_alert_queue (payload, alert_type) VALUES ('[{}]', 'cost_anomaly')",
    ] {
        assert!(conn.batch_execute(refused).is_err(), "{refused}");
    }
    assert_eq!(all(&url).len(), 1);
}
