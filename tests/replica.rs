//! Reads from a streaming replica: a real hot standby made with `pg_basebackup -R` from a
//! throwaway primary of this test binary's own.
//!
//! No polling: the primary's writes that a test needs on the replica commit with
//! `synchronous_commit = remote_apply` (the commit returns once the replica has applied
//! it), and the write that must lag commits with `on` (the replica has it on disk, and
//! replays it only when told to resume).

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use costdb::detector::AnomalyDetector;
use costdb::drivers::{BudgetLimits, CostWriteDriver};
use costdb::models::{CostInput, TimeBucket};
use costdb::replica::{ReadReplica, ReplicaConfig, Server};
use costdb::types::{BudgetScope, TenantId, TimeWindow};
use costdb::Error;
use costdb_testkit::EmbeddedPostgres;
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

/// A primary and its replica, started once for this binary, and the URLs of one migrated
/// database on each.
struct Pair {
    _primary: EmbeddedPostgres,
    _replica: EmbeddedPostgres,
    primary_url: String,
    replica_url: String,
}

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let primary = EmbeddedPostgres::start().expect("primary");
        // Commits that ask for it wait for the replica to apply them.
        let mut admin = costdb::db::connect(&primary.url("postgres")).unwrap();
        for statement in [
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
            "CREATE DATABASE costdb",
        ] {
            admin.batch_execute(statement).unwrap();
        }
        costdb_testkit::migrate_and_lay_out(&primary.url("costdb")).unwrap();
        let replica = primary.start_replica().expect("replica");
        Pair {
            primary_url: primary.url("costdb"),
            replica_url: replica.url("costdb"),
            _primary: primary,
            _replica: replica,
        }
    })
}

/// A session on the primary whose commits return once the replica applied them.
fn primary_applied_on_replica() -> PgConnection {
    let mut conn = costdb::db::connect(&pair().primary_url).unwrap();
    conn.batch_execute("SET synchronous_commit = remote_apply")
        .unwrap();
    conn
}

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
}

fn at(day: NaiveDate, hour: u32) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(hour, 0, 0).unwrap())
}

/// Three days of a tenant's calls on two models and two features; 40 calls, 1¢ to 40¢.
fn calls(tenant: &TenantId) -> Vec<CostInput> {
    (0..40)
        .map(|k| CostInput {
            tenant_id: tenant.into(),
            model: ["gpt-4o", "claude"][k % 2].into(),
            feature_tag: Some(["search", "chat"][k / 20].into()),
            input_tokens: 100 + k as i32,
            output_tokens: 10,
            cost_cents: 1.0 + k as f64,
            created_at: Some(at(
                day() - chrono::Duration::days((k % 3) as i64),
                9 + (k % 5) as u32,
            )),
            ..Default::default()
        })
        .collect()
}

fn record(conn: &mut PgConnection, costs: &[CostInput]) {
    conn.transaction::<_, Error, _>(|c| CostWriteDriver::new(c).record_costs(costs).map(drop))
        .unwrap();
}

fn window() -> TimeWindow {
    TimeWindow::new(
        at(day() - chrono::Duration::days(6), 0),
        at(day() + chrono::Duration::days(1), 0),
    )
    .unwrap()
}

/// Spend by day, by model and by feature, as JSON to compare.
fn analytics(reads: &mut costdb::replica::Reads<'_>, tenant: &TenantId) -> serde_json::Value {
    reads
        .snapshot(|r| {
            let mut a = r.analytics();
            Ok::<_, Error>(serde_json::json!({
                "days": a.fetch_cost_spend(tenant, window(), TimeBucket::Day)?,
                "models": a.fetch_cost_by_model(tenant, window())?,
                "features": a.fetch_cost_by_feature(tenant, window())?,
            }))
        })
        .unwrap()
}

fn analytics_on_primary(tenant: &TenantId) -> serde_json::Value {
    let mut primary = ReadReplica::connect(ReplicaConfig {
        replica_url: pair().primary_url.clone(),
        ..Default::default()
    })
    .unwrap();
    analytics(&mut primary.reads().unwrap(), tenant)
}

fn replica(max_lag: Option<Duration>, fall_back: bool) -> ReadReplica {
    ReadReplica::connect(ReplicaConfig {
        replica_url: pair().replica_url.clone(),
        primary_url: fall_back.then(|| pair().primary_url.clone()),
        max_lag,
    })
    .unwrap()
}

#[test]
fn reads_on_a_caught_up_replica_equal_the_primarys() {
    let tenant = common::tenant();
    let mut primary = primary_applied_on_replica();
    record(&mut primary, &calls(&tenant));

    let mut replica = replica(Some(Duration::from_secs(60)), false);
    assert_eq!(
        replica.lag().unwrap(),
        Duration::ZERO,
        "everything received is replayed"
    );
    let mut reads = replica.reads().unwrap();
    assert_eq!(reads.server(), Server::Replica);
    let on_replica = analytics(&mut reads, &tenant);
    assert_eq!(on_replica, analytics_on_primary(&tenant));
    let days = on_replica["days"].as_array().unwrap();
    assert_eq!(days.len(), 3, "the three days with calls: {on_replica}");
    let spent: f64 = days
        .iter()
        .map(|d| d["spend_cents"].as_f64().unwrap())
        .sum();
    assert!(
        (spent - (1..=40).sum::<i32>() as f64).abs() < 1e-9,
        "{spent}"
    );
    assert_eq!(on_replica["models"].as_array().unwrap().len(), 2);
    assert_eq!(on_replica["features"].as_array().unwrap().len(), 2);
}

#[test]
fn the_detector_reading_spend_on_the_replica_finds_what_it_finds_on_the_primary() {
    let tenant = common::tenant();
    let mut primary = primary_applied_on_replica();
    record(&mut primary, &calls(&tenant));
    // A daily budget the last day's spend passes: one budget anomaly.
    primary
        .transaction::<_, Error, _>(|c| {
            CostWriteDriver::new(c)
                .upsert_budget(
                    &tenant,
                    &BudgetScope::Tenant,
                    &BudgetLimits {
                        daily_limit_cents: Some(100),
                        monthly_limit_cents: None,
                        warn_threshold_pct: 80,
                        hard_limit_enabled: false,
                    },
                )
                .map(drop)
        })
        .unwrap();
    let detector = AnomalyDetector::default();
    let now = at(day(), 18);
    let describe = |found: Vec<costdb::models::CostAnomaly>| -> Vec<String> {
        found
            .into_iter()
            .filter(|a| a.tenant_id == tenant.as_str())
            .map(|a| {
                format!(
                    "{:?} {:?} {:?} {} {} {}",
                    a.anomaly_type,
                    a.entity_type,
                    a.entity_id,
                    a.current_value_cents,
                    a.expected_value_cents,
                    a.message
                )
            })
            .collect()
    };
    // Each run in a transaction rolled back, so the second starts where the first did.
    let mut run = |spend_on_replica: bool| -> Vec<String> {
        let mut replica = replica(None, false);
        let mut found = Vec::new();
        let _ = primary.transaction::<(), Error, _>(|c| {
            found = if spend_on_replica {
                let mut reads = replica.reads()?;
                detector.detect_reading_spend(c, &mut reads, &tenant, now)?
            } else {
                detector.detect(c, &tenant, now)?
            };
            Err(Error::Conflict("roll back".into()))
        });
        describe(found)
    };
    let on_primary = run(false);
    assert_eq!(on_primary.len(), 1, "{on_primary:#?}");
    assert!(
        on_primary[0].starts_with("BudgetExceeded"),
        "{on_primary:#?}"
    );
    assert_eq!(run(true), on_primary);
}

#[test]
fn a_replica_further_behind_than_max_lag_falls_back_to_the_primary_or_refuses() {
    let tenant = common::tenant();
    let mut primary = primary_applied_on_replica();
    let first = calls(&tenant);
    record(&mut primary, &first[..20]);
    let before = analytics_on_primary(&tenant);

    let mut control = costdb::db::connect(&pair().replica_url).unwrap();
    control
        .batch_execute("SELECT pg_wal_replay_pause()")
        .unwrap();
    // The rest reaches the replica's disk but is not replayed.
    let mut lagging = costdb::db::connect(&pair().primary_url).unwrap();
    lagging
        .batch_execute("SET synchronous_commit = on")
        .unwrap();
    record(&mut lagging, &first[20..]);
    let after = analytics_on_primary(&tenant);
    assert_ne!(after, before);

    let mut strict = replica(None, true);
    let lag = strict.lag().unwrap();
    assert!(lag > Duration::ZERO, "replay is paused with WAL waiting");
    // Any staleness allowed: the replica answers, as it was before the pause.
    let mut any = replica(None, false);
    let mut reads = any.reads().unwrap();
    assert_eq!(reads.server(), Server::Replica);
    assert!(reads.replica_lag() >= lag);
    assert_eq!(analytics(&mut reads, &tenant), before);

    // Lag only grows while replay is paused: half of it is exceeded.
    let bound = lag / 2;
    let mut falls_back = replica(Some(bound), true);
    let mut reads = falls_back.reads().unwrap();
    assert_eq!(reads.server(), Server::Primary);
    assert!(reads.replica_lag() > bound);
    assert_eq!(analytics(&mut reads, &tenant), after);
    let mut refuses = replica(Some(bound), false);
    match refuses.reads() {
        Err(Error::ReplicaLag { lag, max_lag }) => {
            assert_eq!(max_lag, bound);
            assert!(lag > bound);
        }
        other => panic!("expected ReplicaLag, got {other:?}"),
    }

    control
        .batch_execute("SELECT pg_wal_replay_resume()")
        .unwrap();
    // A commit applied on the replica: everything before it is replayed too.
    record(
        &mut primary_applied_on_replica(),
        &calls(&common::tenant())[..1],
    );
    let mut reads = falls_back.reads().unwrap();
    assert_eq!(reads.server(), Server::Replica);
    assert_eq!(reads.replica_lag(), Duration::ZERO);
    assert_eq!(analytics(&mut reads, &tenant), after);
}

#[test]
fn bad_replica_settings_are_refused_before_connecting() {
    let config = |replica_url: &str, primary_url: Option<&str>, max_lag: Option<Duration>| {
        ReadReplica::connect(ReplicaConfig {
            replica_url: replica_url.into(),
            primary_url: primary_url.map(Into::into),
            max_lag,
        })
    };
    // An unreachable URL: the refusals below come before any connection attempt.
    let nowhere = "postgres://nobody@127.0.0.1:1/x";
    common::assert_invalid(config(" ", None, None), "replica_url");
    common::assert_invalid(config(nowhere, Some(""), None), "primary_url");
    common::assert_invalid(config(nowhere, None, Some(Duration::ZERO)), "max_lag");
    assert!(matches!(
        config(nowhere, None, None),
        Err(Error::Connection(_))
    ));
}
