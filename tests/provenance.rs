//! ProvenanceDriver against a real PostgreSQL: writes, real batch ids, filters and pages,
//! drift statistics, duplicates and the race-free backfill.

mod common;

use std::sync::{Arc, Barrier, Once};

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::assert_invalid;
use costdb::drivers::{BaselineRecord, ProvenanceDriver, ProvenanceFilter, ProvenanceInput};
use costdb::models::{Provenance, ProvenanceSource, VariantSlug};
use costdb::schema::costsim_provenance as p;
use costdb::types::TimeWindow;
use costdb::Error;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::json;

fn input(tenant: &str, run: &str, v1: Option<f64>, v2: Option<f64>) -> ProvenanceInput {
    ProvenanceInput {
        run_id: Some(run.into()),
        tenant_id: Some(tenant.into()),
        v1_cost: v1,
        v2_cost: v2,
        ..ProvenanceInput::default()
    }
}

fn rows_of(conn: &mut PgConnection, tenant: &str) -> Vec<Provenance> {
    p::table
        .filter(p::tenant_id.eq(tenant))
        .order(p::id)
        .select(Provenance::as_select())
        .load(conn)
        .unwrap()
}

fn set_created(conn: &mut PgConnection, id: i64, at: DateTime<Utc>) {
    diesel::update(p::table.find(id))
        .set(p::created_at.eq(at))
        .execute(conn)
        .unwrap();
}

#[test]
fn a_write_keeps_every_field_and_a_missing_payload_is_sql_null() {
    let mut conn = common::test_conn();
    let tenant = common::tenant().to_string();
    let full = ProvenanceInput {
        run_id: Some("run-1".into()),
        tenant_id: Some(tenant.clone()),
        variant_slug: VariantSlug::Canary,
        source: ProvenanceSource::Manual,
        model_version: Some("m-3".into()),
        adapter_version: Some("a-2".into()),
        commit_sha: Some("abc123".into()),
        input_hash: Some("0123456789abcdef".into()),
        output_hash: Some("fedcba9876543210".into()),
        v1_cost: Some(10.5),
        v2_cost: Some(12.25),
        payload: Some(json!({"tokens": 1200, "nested": {"a": [1, 2.5, "x"]}})),
        runtime_ms: Some(37),
    };
    let mut d = ProvenanceDriver::new(&mut conn);
    let id = d.insert_provenance(&full).unwrap();
    let bare = d
        .insert_provenance(&input(&tenant, "run-2", Some(1.0), None))
        .unwrap();
    assert!(bare > id);
    let now = common::tx_now(&mut conn);
    let rows = rows_of(&mut conn, &tenant);
    let r = &rows[0];
    assert_eq!(r.id, id);
    assert_eq!(
        (r.run_id.as_deref(), r.variant_slug, r.source),
        (
            Some("run-1"),
            Some(VariantSlug::Canary),
            Some(ProvenanceSource::Manual)
        )
    );
    assert_eq!(
        (
            r.model_version.as_deref(),
            r.adapter_version.as_deref(),
            r.commit_sha.as_deref(),
            r.input_hash.as_deref(),
            r.output_hash.as_deref()
        ),
        (
            Some("m-3"),
            Some("a-2"),
            Some("abc123"),
            Some("0123456789abcdef"),
            Some("fedcba9876543210")
        )
    );
    assert_eq!(
        (r.v1_cost, r.v2_cost, r.cost_delta),
        (Some(10.5), Some(12.25), Some(1.75))
    );
    assert_eq!(r.payload, full.payload);
    assert_eq!((r.runtime_ms, r.created_at), (Some(37), now));
    // The defaults, no delta without both costs, and SQL NULL (not JSON null) payload.
    let b = &rows[1];
    assert_eq!(
        (b.variant_slug, b.source, b.cost_delta, &b.payload),
        (
            Some(VariantSlug::V2),
            Some(ProvenanceSource::Sandbox),
            None,
            &None
        )
    );
    let nulls: i64 = p::table
        .filter(p::id.eq(bare))
        .filter(p::payload.is_null())
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(nulls, 1);
}

#[test]
fn a_batch_returns_the_real_ids_in_input_order() {
    let mut conn = common::test_conn();
    let tenant = common::tenant().to_string();
    let inputs: Vec<ProvenanceInput> = (0..7)
        .map(|i| ProvenanceInput {
            payload: Some(json!({ "i": i })),
            ..input(
                &tenant,
                &format!("run-{i}"),
                Some(i as f64),
                Some(2.0 * i as f64),
            )
        })
        .collect();
    let mut d = ProvenanceDriver::new(&mut conn);
    assert_eq!(d.insert_provenance_batch(&[]).unwrap(), Vec::<i64>::new());
    let ids = d.insert_provenance_batch(&inputs).unwrap();
    assert_eq!(ids.len(), 7);
    for (id, input) in ids.iter().zip(&inputs) {
        let row: Provenance = p::table
            .find(id)
            .select(Provenance::as_select())
            .first(&mut conn)
            .unwrap();
        assert_eq!(row.run_id, input.run_id);
        assert_eq!(row.payload, input.payload);
        assert_eq!(row.cost_delta, Some(input.v1_cost.unwrap()));
    }
    assert_eq!(rows_of(&mut conn, &tenant).len(), 7);

    // -0.0 is stored as 0 in a batch as in a single write.
    #[derive(QueryableByName)]
    struct Shown {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v1: String,
    }
    let zero = input(&tenant, "zero", Some(-0.0), Some(1.0));
    let single = ProvenanceDriver::new(&mut conn)
        .insert_provenance(&zero)
        .unwrap();
    let batch = ProvenanceDriver::new(&mut conn)
        .insert_provenance_batch(&[zero])
        .unwrap();
    for id in [single, batch[0]] {
        let shown: Shown =
            diesel::sql_query("SELECT v1_cost::text AS v1 FROM costsim_provenance WHERE id = $1")
                .bind::<diesel::sql_types::BigInt, _>(id)
                .get_result(&mut conn)
                .unwrap();
        assert_eq!(shown.v1, "0");
    }
}

#[test]
fn queries_filter_page_newest_first_and_windows_are_half_open() {
    let mut conn = common::test_conn();
    let tenant = common::tenant().to_string();
    let base = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut one = input(&tenant, &format!("r{i}"), Some(1.0), Some(2.0));
        one.variant_slug = if i % 2 == 0 {
            VariantSlug::V1
        } else {
            VariantSlug::V2
        };
        one.source = if i < 3 {
            ProvenanceSource::Sandbox
        } else {
            ProvenanceSource::Canary
        };
        one.input_hash = Some(format!("h{}", i % 3));
        ids.push(
            ProvenanceDriver::new(&mut conn)
                .insert_provenance(&one)
                .unwrap(),
        );
    }
    // r0, r1 at base; r2..r5 one hour apart after it: r0 and r1 tie on created_at.
    for (i, id) in ids.iter().enumerate() {
        set_created(
            &mut conn,
            *id,
            base + Duration::hours(i.saturating_sub(1) as i64),
        );
    }
    let mut d = ProvenanceDriver::new(&mut conn);
    let all = ProvenanceFilter {
        tenant_id: Some(tenant.clone()),
        ..Default::default()
    };
    let runs = |rows: Vec<Provenance>| -> Vec<String> {
        rows.into_iter().map(|r| r.run_id.unwrap()).collect()
    };
    assert_eq!(
        runs(d.fetch_provenance(&all, 100, 0).unwrap()),
        ["r5", "r4", "r3", "r2", "r1", "r0"]
    );
    assert_eq!(runs(d.fetch_provenance(&all, 2, 3).unwrap()), ["r2", "r1"]);
    assert_eq!(d.fetch_provenance_count(&all).unwrap(), 6);

    let v1_canary = ProvenanceFilter {
        variant_slug: Some(VariantSlug::V1),
        source: Some(ProvenanceSource::Canary),
        ..all.clone()
    };
    assert_eq!(runs(d.fetch_provenance(&v1_canary, 10, 0).unwrap()), ["r4"]);
    let by_hash = ProvenanceFilter {
        input_hash: Some("h1".into()),
        ..all.clone()
    };
    assert_eq!(
        runs(d.fetch_provenance(&by_hash, 10, 0).unwrap()),
        ["r4", "r1"]
    );

    // [r2's instant, r4's instant): r2 and r3, to the microsecond.
    let micro = Duration::microseconds(1);
    let window = |from, to| ProvenanceFilter {
        created: Some(TimeWindow::new(from, to).unwrap()),
        ..all.clone()
    };
    let from = base + Duration::hours(1);
    let to = base + Duration::hours(3);
    assert_eq!(
        runs(d.fetch_provenance(&window(from, to), 10, 0).unwrap()),
        ["r3", "r2"]
    );
    assert_eq!(
        d.fetch_provenance_count(&window(from + micro, to + micro))
            .unwrap(),
        2
    );
    assert_eq!(
        d.fetch_provenance_count(&window(from, to - micro)).unwrap(),
        2
    );
    assert_eq!(
        d.fetch_provenance_count(&window(from + micro, to)).unwrap(),
        1
    );

    let other = ProvenanceFilter {
        tenant_id: Some(common::tenant().to_string()),
        ..Default::default()
    };
    assert_eq!(d.fetch_provenance_count(&other).unwrap(), 0);
    assert_invalid(d.fetch_provenance(&all, 0, 0), "limit");
    assert_invalid(d.fetch_provenance(&all, 10_001, 0), "limit");
    assert_invalid(d.fetch_provenance(&all, 10, -1), "offset");
}

#[test]
fn drift_statistics_match_the_fixture() {
    let mut conn = common::test_conn();
    // Only this test's rows count: delete the table's other rows inside the test
    // transaction, which is rolled back.
    conn.batch_execute("DELETE FROM costsim_provenance")
        .unwrap();
    let tenant = common::tenant().to_string();
    let mut d = ProvenanceDriver::new(&mut conn);
    let empty = d.fetch_drift_stats(None).unwrap();
    assert_eq!(
        (
            empty.total,
            empty.avg_delta,
            empty.min_delta,
            empty.max_delta,
            empty.stddev_delta
        ),
        (0, 0.0, 0.0, 0.0, 0.0)
    );
    let pairs = [(10.0, 12.0), (5.0, 4.0), (8.0, 8.5), (1.0, 7.0)];
    for (i, (v1, v2)) in pairs.iter().enumerate() {
        d.insert_provenance(&input(&tenant, &format!("r{i}"), Some(*v1), Some(*v2)))
            .unwrap();
    }
    // Rows without both costs are not counted.
    d.insert_provenance(&input(&tenant, "half", Some(3.0), None))
        .unwrap();
    d.insert_provenance(&input(&tenant, "none", None, None))
        .unwrap();
    let deltas: Vec<f64> = pairs.iter().map(|(a, b)| b - a).collect();
    let n = deltas.len() as f64;
    let mean = deltas.iter().sum::<f64>() / n;
    let var = deltas.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let s = d.fetch_drift_stats(None).unwrap();
    assert_eq!(s.total, 4);
    assert!((s.avg_delta - mean).abs() < 1e-12);
    assert_eq!((s.min_delta, s.max_delta), (-1.0, 6.0));
    assert!((s.stddev_delta - var.sqrt()).abs() < 1e-12);

    // A window that holds nothing, and one row alone (no sample deviation).
    let future = Utc::now() + Duration::days(365);
    let none = d
        .fetch_drift_stats(Some(
            TimeWindow::new(future, future + Duration::days(1)).unwrap(),
        ))
        .unwrap();
    assert_eq!(none.total, 0);
    let only = ProvenanceDriver::new(&mut conn)
        .fetch_provenance(
            &ProvenanceFilter {
                tenant_id: Some(tenant.clone()),
                ..Default::default()
            },
            100,
            0,
        )
        .unwrap();
    let first = only
        .iter()
        .find(|r| r.run_id.as_deref() == Some("r0"))
        .unwrap()
        .id;
    let old = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
    set_created(&mut conn, first, old);
    let one = ProvenanceDriver::new(&mut conn)
        .fetch_drift_stats(Some(
            TimeWindow::new(old, old + Duration::seconds(1)).unwrap(),
        ))
        .unwrap();
    assert_eq!((one.total, one.avg_delta, one.stddev_delta), (1, 2.0, 0.0));
}

/// A trigger that makes the insert of run `poison` fail in the database, as a broken row
/// or constraint would.
fn install_poison_trigger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        common::conn()
            .batch_execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.run_id = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; \
                 RETURN NEW; END $$; \
                 CREATE TRIGGER refuse_poison BEFORE INSERT ON costsim_provenance \
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
            )
            .unwrap();
    });
}

fn baseline(run: &str, hash: Option<&str>, cost: f64) -> BaselineRecord {
    BaselineRecord {
        run_id: Some(run.into()),
        tenant_id: Some("backfill-tenant".into()),
        cost: Some(cost),
        input_hash: hash.map(Into::into),
        payload: Some(json!({ "run": run })),
    }
}

#[test]
fn the_backfill_skips_known_hashes_and_a_failing_record_spoils_nothing_else() {
    install_poison_trigger();
    let mut conn = common::test_conn();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let h = |i: u32| format!("{tag}-{i}");
    let mut d = ProvenanceDriver::new(&mut conn);
    // Stored before: h(0), by a sandbox run.
    let earlier = d
        .insert_provenance(&ProvenanceInput {
            input_hash: Some(h(0)),
            ..input("other", "live", Some(1.0), Some(1.0))
        })
        .unwrap();
    let records = vec![
        baseline("a", Some(&h(0)), 1.0), // stored already: skipped
        baseline("b", Some(&h(1)), 2.0),
        baseline("c", Some(&h(1)), 3.0), // earlier in the input: skipped
        baseline("d", None, 4.0),        // no hash: always inserted
        baseline("poison", Some(&h(2)), 5.0),
        baseline("e", Some(&h(3)), 6.0),
        BaselineRecord {
            cost: Some(f64::NAN),
            ..baseline("bad", Some(&h(4)), 0.0)
        },
    ];
    let stats = d.backfill_v1_baseline(&records, 3).unwrap();
    assert_eq!((stats.inserted, stats.skipped, stats.errors), (3, 2, 2));
    let stored: Vec<Provenance> = p::table
        .filter(p::input_hash.like(format!("{tag}%")).or(p::run_id.eq("d")))
        .filter(p::source.eq(ProvenanceSource::Backfill))
        .order(p::id)
        .select(Provenance::as_select())
        .load(&mut conn)
        .unwrap();
    let runs: Vec<&str> = stored.iter().filter_map(|r| r.run_id.as_deref()).collect();
    assert!(runs.ends_with(&["b", "d", "e"]), "{runs:?}");
    let b = stored
        .iter()
        .find(|r| r.run_id.as_deref() == Some("b"))
        .unwrap();
    assert_eq!(
        (b.variant_slug, b.v1_cost, b.v2_cost, b.cost_delta),
        (Some(VariantSlug::V1), Some(2.0), None, None)
    );
    // The caller's earlier work is intact and the transaction goes on.
    assert!(ProvenanceDriver::new(&mut conn)
        .check_duplicate(&h(0))
        .unwrap());
    let row_count: i64 = p::table
        .filter(p::id.eq(earlier))
        .count()
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(row_count, 1);
    assert!(!ProvenanceDriver::new(&mut conn)
        .check_duplicate(&h(2))
        .unwrap());
    assert_invalid(
        ProvenanceDriver::new(&mut conn).backfill_v1_baseline(&records, 0),
        "batch_size",
    );
}

#[test]
fn two_backfills_at_once_store_each_hash_once() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let records: Vec<BaselineRecord> = (0..40)
        .map(|i| baseline(&format!("r{i}"), Some(&format!("{tag}-{i}")), i as f64))
        .collect();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|k| {
            let (barrier, mut records) = (barrier.clone(), records.clone());
            if k == 1 {
                records.reverse();
            }
            std::thread::spawn(move || {
                let mut conn = costdb::db::connect(common::database_url()).unwrap();
                conn.transaction(|c| {
                    barrier.wait();
                    ProvenanceDriver::new(c).backfill_v1_baseline(&records, 7)
                })
                .unwrap()
            })
        })
        .collect();
    let stats: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(stats.iter().map(|s| s.inserted).sum::<usize>(), 40);
    assert_eq!(stats.iter().map(|s| s.skipped).sum::<usize>(), 40);
    assert!(stats.iter().all(|s| s.errors == 0));
    let mut conn = common::conn();
    let per_hash: Vec<(Option<String>, i64)> = p::table
        .filter(p::input_hash.like(format!("{tag}%")))
        .group_by(p::input_hash)
        .select((p::input_hash, diesel::dsl::count_star()))
        .load(&mut conn)
        .unwrap();
    assert_eq!(per_hash.len(), 40);
    assert!(per_hash.iter().all(|(_, n)| *n == 1));
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let mut conn = common::test_conn();
    let tenant = common::tenant().to_string();
    let ok = input(&tenant, "r", Some(1.0), Some(2.0));
    let cases = [
        (
            ProvenanceInput {
                runtime_ms: Some(-1),
                ..ok.clone()
            },
            "runtime_ms",
        ),
        (
            ProvenanceInput {
                v1_cost: Some(f64::NAN),
                ..ok.clone()
            },
            "v1_cost",
        ),
        (
            ProvenanceInput {
                v2_cost: Some(-0.5),
                ..ok.clone()
            },
            "v2_cost",
        ),
        (
            ProvenanceInput {
                v2_cost: Some(1e300),
                ..ok.clone()
            },
            "v2_cost",
        ),
        (
            ProvenanceInput {
                run_id: Some(String::new()),
                ..ok.clone()
            },
            "run_id",
        ),
        (
            ProvenanceInput {
                tenant_id: Some("t\0".into()),
                ..ok.clone()
            },
            "tenant_id",
        ),
        (
            ProvenanceInput {
                payload: Some(json!({"a": ["x\u{0}"]})),
                ..ok.clone()
            },
            "payload",
        ),
        (
            ProvenanceInput {
                payload: Some(json!({"k\u{0}": 1})),
                ..ok.clone()
            },
            "payload",
        ),
    ];
    let mut d = ProvenanceDriver::new(&mut conn);
    for (bad, field) in cases {
        assert_invalid(d.insert_provenance(&bad), field);
        assert_invalid(d.insert_provenance_batch(&[ok.clone(), bad]), field);
    }
    assert_invalid(d.check_duplicate(""), "input_hash");
    assert!(rows_of(&mut conn, &tenant).is_empty());
    // Outside a transaction nothing is written.
    let mut bare = costdb::db::connect(common::database_url()).unwrap();
    assert!(matches!(
        ProvenanceDriver::new(&mut bare).insert_provenance(&ok),
        Err(Error::NoTransaction)
    ));
    assert!(matches!(
        ProvenanceDriver::new(&mut bare).insert_provenance_batch(&[ok]),
        Err(Error::NoTransaction)
    ));
    assert!(rows_of(&mut bare, &tenant).is_empty());
}
