//! CostWriteDriver against a real PostgreSQL: tags, records (single, bulk, idempotent,
//! concurrent) and budgets.

mod common;

use std::sync::{Arc, Barrier};

use chrono::{TimeZone, Utc};
use common::{assert_invalid, tx_now};
use costdb::drivers::{BudgetLimits, FeatureTagChanges, FeatureTagInput};
use costdb::models::CostInput;
use costdb::models::{BudgetType, CostRecord};
use costdb::schema::{cost_records, feature_tags};
use costdb::types::{BudgetScope, TenantId};
use costdb::{drivers::CostWriteDriver, Error};
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;

fn cost(tenant: &TenantId, request: Option<&str>, cents: f64) -> CostInput {
    CostInput {
        tenant_id: tenant.into(),
        request_id: request.map(Into::into),
        model: "gpt-4o".into(),
        input_tokens: 100,
        output_tokens: 50,
        cost_cents: cents,
        ..CostInput::default()
    }
}

fn tag_input(
    tag: &str,
    display_name: &str,
    description: Option<&str>,
    budget_cents: Option<i32>,
) -> FeatureTagInput {
    FeatureTagInput {
        tag: tag.into(),
        display_name: display_name.into(),
        description: description.map(Into::into),
        budget_cents,
    }
}

fn records_of(conn: &mut PgConnection, tenant: &TenantId) -> Vec<CostRecord> {
    cost_records::table
        .filter(cost_records::tenant_id.eq(tenant))
        .select(CostRecord::as_select())
        .load(conn)
        .unwrap()
}

#[test]
fn feature_tags_are_created_once_per_tenant() {
    let mut conn = common::test_conn();
    let (tenant, other) = (common::tenant(), common::tenant());
    let now = tx_now(&mut conn);
    let mut w = CostWriteDriver::new(&mut conn);
    let tag = w
        .insert_feature_tag(
            &tenant,
            &tag_input("support.chat", "Support chat", Some("bot"), Some(5000)),
        )
        .unwrap();
    assert!(tag.id.starts_with("ft_") && tag.id.len() == 19);
    assert_eq!(
        (
            tag.tenant_id.as_str(),
            tag.tag.as_str(),
            tag.display_name.as_str()
        ),
        (tenant.as_str(), "support.chat", "Support chat")
    );
    assert_eq!(
        (tag.description.as_deref(), tag.budget_cents),
        (Some("bot"), Some(5000))
    );
    assert!(tag.is_active);
    assert_eq!((tag.created_at, tag.updated_at), (now, now));

    match w.insert_feature_tag(&tenant, &tag_input("support.chat", "Again", None, None)) {
        Err(Error::Conflict(msg)) => assert!(msg.contains("support.chat")),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // Another tenant may use the same tag, and the transaction is still usable.
    w.insert_feature_tag(&other, &tag_input("support.chat", "Theirs", None, None))
        .unwrap();
    let n: i64 = common::count_for_tenant(&mut conn, "feature_tags", &tenant);
    assert_eq!(n, 1);
}

#[test]
fn feature_tag_updates_change_only_the_given_fields() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut w = CostWriteDriver::new(&mut conn);
    let tag = w
        .insert_feature_tag(
            &tenant,
            &tag_input("search.rank", "Ranking", Some("desc"), Some(100)),
        )
        .unwrap();
    let renamed = w
        .update_feature_tag(
            &tenant,
            &tag.id,
            &FeatureTagChanges {
                display_name: Some("Search ranking".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(renamed.display_name, "Search ranking");
    assert_eq!(
        (
            renamed.description.as_deref(),
            renamed.budget_cents,
            renamed.is_active
        ),
        (Some("desc"), Some(100), true)
    );
    let cleared = w
        .update_feature_tag(
            &tenant,
            &tag.id,
            &FeatureTagChanges {
                description: Some(None),
                budget_cents: Some(Some(250)),
                is_active: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (cleared.description, cleared.budget_cents, cleared.is_active),
        (None, Some(250), false)
    );
    assert_eq!(cleared.display_name, "Search ranking");
    assert_eq!((cleared.tag, cleared.created_at), (tag.tag, tag.created_at));

    // Another tenant cannot touch it.
    let intruder = common::tenant();
    assert!(matches!(
        w.update_feature_tag(
            &intruder,
            &tag.id,
            &FeatureTagChanges {
                is_active: Some(true),
                ..Default::default()
            }
        ),
        Err(Error::NotFound { .. })
    ));
    let active: bool = feature_tags::table
        .find((&tag.tenant_id, &tag.id))
        .select(feature_tags::is_active)
        .first(&mut conn)
        .unwrap();
    assert!(!active);
}

#[test]
fn a_cost_record_keeps_every_field() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let at = Utc.with_ymd_and_hms(2026, 3, 10, 14, 30, 0).unwrap();
    let input = CostInput {
        tenant_id: tenant.to_string(),
        user_id: Some("u-1".into()),
        feature_tag: Some("support.chat".into()),
        request_id: Some("req-1".into()),
        workflow_id: Some("wf".into()),
        skill_id: Some("sk".into()),
        model: "claude".into(),
        input_tokens: 1234,
        output_tokens: 567,
        cost_cents: 0.375,
        is_retry: true,
        created_at: Some(at),
    };
    let rec = CostWriteDriver::new(&mut conn)
        .insert_cost_record(&input)
        .unwrap();
    assert!(rec.id.starts_with("cr_"));
    assert_eq!(records_of(&mut conn, &tenant), vec![rec.clone()]);
    assert_eq!(rec.user_id.as_deref(), Some("u-1"));
    assert_eq!(rec.feature_tag.as_deref(), Some("support.chat"));
    assert_eq!(rec.request_id.as_deref(), Some("req-1"));
    assert_eq!(
        (rec.workflow_id.as_deref(), rec.skill_id.as_deref()),
        (Some("wf"), Some("sk"))
    );
    assert_eq!(
        (rec.model.as_str(), rec.input_tokens, rec.output_tokens),
        ("claude", 1234, 567)
    );
    assert_eq!(rec.cost_cents, 0.375, "fractional cents are kept");
    assert_eq!((rec.is_retry, rec.created_at), (true, at));

    // Recording the same request again returns the first record and adds nothing.
    let again = CostWriteDriver::new(&mut conn)
        .insert_cost_record(&CostInput {
            cost_cents: 99.0,
            ..input
        })
        .unwrap();
    assert_eq!(again, rec);
    assert_eq!(records_of(&mut conn, &tenant).len(), 1);
    // Without a request id, every call records.
    let mut w = CostWriteDriver::new(&mut conn);
    w.insert_cost_record(&cost(&tenant, None, 1.0)).unwrap();
    w.insert_cost_record(&cost(&tenant, None, 1.0)).unwrap();
    assert_eq!(records_of(&mut conn, &tenant).len(), 3);
}

#[test]
fn bulk_ingestion_returns_ids_in_input_order_and_skips_repeats() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let now = tx_now(&mut conn);
    let mut w = CostWriteDriver::new(&mut conn);
    let earlier = w
        .insert_cost_record(&cost(&tenant, Some("req-7"), 1.0))
        .unwrap();

    let mut batch: Vec<CostInput> = (0..3000)
        .map(|i| CostInput {
            user_id: Some(format!("u-{}", i % 7)),
            input_tokens: i,
            cost_cents: f64::from(i) / 4.0,
            ..cost(&tenant, Some(&format!("req-{i}")), 0.0)
        })
        .collect();
    batch.push(cost(&tenant, Some("req-10"), 5.0)); // repeated within the batch
    batch.push(cost(&tenant, None, 2.0)); // no request id: always recorded
    let out = w.record_costs(&batch).unwrap();
    assert_eq!(out.len(), batch.len());

    let stored = records_of(&mut conn, &tenant);
    assert_eq!(
        stored.len(),
        3000 + 1,
        "3000 requests (one already there) + 1 untagged"
    );
    let by_id: std::collections::HashMap<&str, &CostRecord> =
        stored.iter().map(|r| (r.id.as_str(), r)).collect();
    for (input, got) in batch.iter().zip(&out) {
        let row = by_id[got.id.as_str()];
        assert_eq!(
            row.request_id, input.request_id,
            "ids come back in input order"
        );
        if got.inserted {
            assert_eq!(row.cost_cents, input.cost_cents);
            assert_eq!(row.input_tokens, input.input_tokens);
            assert_eq!(row.user_id, input.user_id);
            assert_eq!(row.created_at, now);
        }
    }
    assert!(!out[7].inserted);
    assert_eq!(
        out[7].id, earlier.id,
        "an existing request keeps its record"
    );
    assert!(!out[3000].inserted);
    assert_eq!(
        out[3000].id, out[10].id,
        "a repeat within the batch maps to the first"
    );
    assert!(out[10].inserted && out[3001].inserted);
    assert_eq!(out.iter().filter(|r| r.inserted).count(), 3000);
    assert!(CostWriteDriver::new(&mut conn)
        .record_costs(&[])
        .unwrap()
        .is_empty());
}

#[test]
fn the_same_request_recorded_concurrently_yields_exactly_one_row() {
    let tenant = common::tenant();
    let threads = 6;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (tenant, barrier) = (tenant.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut conn = costdb::db::connect(common::database_url()).unwrap();
                barrier.wait();
                conn.transaction(|c| {
                    let mut w = CostWriteDriver::new(c);
                    let single = w.insert_cost_record(&cost(&tenant, Some("dup"), 1.0))?;
                    let bulk = w.record_costs(&[
                        cost(&tenant, Some("dup-bulk"), 1.0),
                        cost(&tenant, Some(&format!("own-{i}")), 1.0),
                    ])?;
                    Ok::<_, Error>((single.id, bulk))
                })
                .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut conn = common::conn();
    let rows = records_of(&mut conn, &tenant);
    let count = |req: &str| {
        rows.iter()
            .filter(|r| r.request_id.as_deref() == Some(req))
            .count()
    };
    assert_eq!((count("dup"), count("dup-bulk")), (1, 1));
    assert_eq!(rows.len(), 2 + threads);
    let dup_id = &rows
        .iter()
        .find(|r| r.request_id.as_deref() == Some("dup"))
        .unwrap()
        .id;
    let bulk_id = &rows
        .iter()
        .find(|r| r.request_id.as_deref() == Some("dup-bulk"))
        .unwrap()
        .id;
    for (single, bulk) in &results {
        assert_eq!(single, dup_id);
        assert_eq!(&bulk[0].id, bulk_id);
        assert!(bulk[1].inserted);
    }
    assert_eq!(results.iter().filter(|(_, b)| b[0].inserted).count(), 1);
}

#[test]
fn budgets_are_one_upsert_per_tenant_type_and_entity() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let now = tx_now(&mut conn);
    let limits = |daily, warn| BudgetLimits {
        daily_limit_cents: daily,
        monthly_limit_cents: Some(30_000),
        warn_threshold_pct: warn,
        hard_limit_enabled: false,
    };
    let mut w = CostWriteDriver::new(&mut conn);
    let first = w
        .upsert_budget(&tenant, &BudgetScope::Tenant, &limits(Some(1000), 80))
        .unwrap();
    assert!(first.id.starts_with("cb_"));
    assert_eq!(
        (first.budget_type, first.entity_id.as_deref()),
        (BudgetType::Tenant, None)
    );
    assert_eq!(
        (first.daily_limit_cents, first.monthly_limit_cents),
        (Some(1000), Some(30_000))
    );
    assert_eq!(
        (
            first.warn_threshold_pct,
            first.hard_limit_enabled,
            first.is_active
        ),
        (80, false, true)
    );

    let updated = w
        .upsert_budget(
            &tenant,
            &BudgetScope::Tenant,
            &BudgetLimits {
                hard_limit_enabled: true,
                monthly_limit_cents: None,
                ..limits(None, 90)
            },
        )
        .unwrap();
    assert_eq!(
        updated.id, first.id,
        "the tenant-level budget is updated, not duplicated"
    );
    assert_eq!(
        (updated.daily_limit_cents, updated.monthly_limit_cents),
        (None, None)
    );
    assert_eq!(
        (updated.warn_threshold_pct, updated.hard_limit_enabled),
        (90, true)
    );
    assert_eq!(
        (updated.created_at, updated.updated_at),
        (first.created_at, now)
    );

    let feature = w
        .upsert_budget(
            &tenant,
            &BudgetScope::Feature("a.b".into()),
            &limits(Some(5), 50),
        )
        .unwrap();
    let user = w
        .upsert_budget(
            &tenant,
            &BudgetScope::User("a.b".into()),
            &limits(Some(6), 50),
        )
        .unwrap();
    assert_eq!(
        (feature.budget_type, feature.entity_id.as_deref()),
        (BudgetType::Feature, Some("a.b"))
    );
    assert_eq!(user.budget_type, BudgetType::User);
    let n: i64 = common::count_for_tenant(&mut conn, "cost_budgets", &tenant);
    assert_eq!(n, 3);
}

#[test]
fn every_kind_of_bad_input_is_refused_and_changes_nothing() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut w = CostWriteDriver::new(&mut conn);
    let ok = cost(&tenant, Some("r"), 1.0);
    for (bad, field) in [
        (
            CostInput {
                tenant_id: String::new(),
                ..ok.clone()
            },
            "tenant_id",
        ),
        (
            CostInput {
                tenant_id: "t".repeat(65),
                ..ok.clone()
            },
            "tenant_id",
        ),
        (
            CostInput {
                model: String::new(),
                ..ok.clone()
            },
            "model",
        ),
        (
            CostInput {
                model: "m".repeat(65),
                ..ok.clone()
            },
            "model",
        ),
        (
            CostInput {
                request_id: Some(String::new()),
                ..ok.clone()
            },
            "request_id",
        ),
        (
            CostInput {
                feature_tag: Some("f".repeat(129)),
                ..ok.clone()
            },
            "feature_tag",
        ),
        (
            CostInput {
                user_id: Some("u".repeat(65)),
                ..ok.clone()
            },
            "user_id",
        ),
        (
            CostInput {
                input_tokens: -1,
                ..ok.clone()
            },
            "input_tokens",
        ),
        (
            CostInput {
                output_tokens: -1,
                ..ok.clone()
            },
            "output_tokens",
        ),
        (
            CostInput {
                cost_cents: -0.01,
                ..ok.clone()
            },
            "cost_cents",
        ),
        (
            CostInput {
                cost_cents: f64::NAN,
                ..ok.clone()
            },
            "cost_cents",
        ),
        (
            CostInput {
                cost_cents: f64::INFINITY,
                ..ok.clone()
            },
            "cost_cents",
        ),
    ] {
        assert_invalid(w.insert_cost_record(&bad), field);
        // One bad record refuses the whole batch.
        assert_invalid(w.record_costs(&[ok.clone(), bad]), field);
    }
    assert_invalid(
        w.insert_feature_tag(&tenant, &tag_input("", "x", None, None)),
        "tag",
    );
    assert_invalid(
        w.insert_feature_tag(&tenant, &tag_input("a.b", "", None, None)),
        "display_name",
    );
    assert_invalid(
        w.insert_feature_tag(&tenant, &tag_input("a.b", "x", None, Some(-1))),
        "budget_cents",
    );
    assert_invalid(
        w.update_feature_tag(
            &tenant,
            "ft_x",
            &FeatureTagChanges {
                display_name: Some(String::new()),
                ..Default::default()
            },
        ),
        "display_name",
    );
    let limits = BudgetLimits {
        daily_limit_cents: Some(-5),
        monthly_limit_cents: None,
        warn_threshold_pct: 80,
        hard_limit_enabled: false,
    };
    assert_invalid(
        w.upsert_budget(&tenant, &BudgetScope::Tenant, &limits),
        "daily_limit_cents",
    );
    let limits = BudgetLimits {
        daily_limit_cents: None,
        warn_threshold_pct: 101,
        ..limits
    };
    assert_invalid(
        w.upsert_budget(&tenant, &BudgetScope::Tenant, &limits),
        "warn_threshold_pct",
    );
    let limits = BudgetLimits {
        warn_threshold_pct: 80,
        ..limits
    };
    assert_invalid(
        w.upsert_budget(&tenant, &BudgetScope::User(String::new()), &limits),
        "entity_id",
    );
    assert!(records_of(&mut conn, &tenant).is_empty());
    let tags: i64 = common::count_for_tenant(&mut conn, "feature_tags", &tenant);
    let budgets: i64 = common::count_for_tenant(&mut conn, "cost_budgets", &tenant);
    assert_eq!((tags, budgets), (0, 0));
}

#[test]
fn outside_a_transaction_nothing_is_written_and_a_rollback_leaves_nothing() {
    let tenant = common::tenant();
    let mut conn = common::conn();
    let mut w = CostWriteDriver::new(&mut conn);
    assert!(matches!(
        w.insert_cost_record(&cost(&tenant, None, 1.0)),
        Err(Error::NoTransaction)
    ));
    assert!(matches!(
        w.record_costs(&[cost(&tenant, None, 1.0)]),
        Err(Error::NoTransaction)
    ));
    assert!(matches!(
        w.insert_feature_tag(&tenant, &tag_input("a.b", "x", None, None)),
        Err(Error::NoTransaction)
    ));
    let limits = BudgetLimits {
        daily_limit_cents: None,
        monthly_limit_cents: None,
        warn_threshold_pct: 80,
        hard_limit_enabled: false,
    };
    assert!(matches!(
        w.upsert_budget(&tenant, &BudgetScope::Tenant, &limits),
        Err(Error::NoTransaction)
    ));
    let rolled_back: Result<(), Error> = conn.transaction(|c| {
        let mut w = CostWriteDriver::new(c);
        w.record_costs(&[cost(&tenant, Some("x"), 1.0), cost(&tenant, None, 2.0)])?;
        w.insert_feature_tag(&tenant, &tag_input("a.b", "x", None, None))?;
        w.upsert_budget(&tenant, &BudgetScope::Tenant, &limits)?;
        Err(Error::Conflict("roll back".into()))
    });
    assert!(rolled_back.is_err());
    assert!(records_of(&mut conn, &tenant).is_empty());
    let tags: i64 = common::count_for_tenant(&mut conn, "feature_tags", &tenant);
    assert_eq!(tags, 0);
}

#[test]
fn amounts_above_the_bound_are_refused_and_the_largest_ones_still_sum() {
    use costdb::models::TimeBucket;
    use costdb::types::TimeWindow;
    use costdb::MAX_AMOUNT_CENTS;
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    let mut w = CostWriteDriver::new(&mut conn);
    for cents in [f64::MAX, MAX_AMOUNT_CENTS * 1.000_000_1, f64::INFINITY] {
        let bad = CostInput {
            created_at: Some(at),
            ..cost(&tenant, None, cents)
        };
        assert_invalid(w.record_costs(std::slice::from_ref(&bad)), "cost_cents");
        assert_invalid(w.insert_cost_record(&bad), "cost_cents");
    }
    assert!(records_of(&mut conn, &tenant).is_empty());

    // Many records at the bound: every analytics sum over them stays finite and exact.
    let n = 50;
    let biggest: Vec<CostInput> = (0..n)
        .map(|_| CostInput {
            created_at: Some(at),
            ..cost(&tenant, None, MAX_AMOUNT_CENTS)
        })
        .collect();
    CostWriteDriver::new(&mut conn)
        .record_costs(&biggest)
        .unwrap();
    let window = TimeWindow::new(at, at + chrono::Duration::hours(1)).unwrap();
    let spend = costdb::drivers::AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_spend(&tenant, window, TimeBucket::Day)
        .unwrap();
    assert_eq!(spend.len(), 1);
    assert_eq!(spend[0].spend_cents, MAX_AMOUNT_CENTS * n as f64);
    let by_model = costdb::drivers::AnalyticsReadDriver::new(&mut conn)
        .fetch_cost_by_model(&tenant, window)
        .unwrap();
    assert_eq!(by_model[0].spend_cents, MAX_AMOUNT_CENTS * n as f64);
}

#[test]
fn negative_zero_is_stored_as_zero() {
    #[derive(QueryableByName)]
    struct Shown {
        #[diesel(sql_type = diesel::sql_types::Text)]
        cents: String,
    }
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut w = CostWriteDriver::new(&mut conn);
    w.insert_cost_record(&cost(&tenant, Some("single"), -0.0))
        .unwrap();
    w.record_costs(&[cost(&tenant, Some("bulk"), -0.0)])
        .unwrap();
    let shown: Vec<Shown> = diesel::sql_query(
        "SELECT cost_cents::text AS cents FROM cost_records WHERE tenant_id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(&tenant)
    .load(&mut conn)
    .unwrap();
    let shown: Vec<&str> = shown.iter().map(|s| s.cents.as_str()).collect();
    assert_eq!(shown, ["0", "0"]); // PostgreSQL prints a stored -0 as "-0"
}

#[test]
fn nul_characters_and_instants_postgres_cannot_store_are_refused_before_sql() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let mut w = CostWriteDriver::new(&mut conn);
    let ok = cost(&tenant, Some("r"), 1.0);
    let nul = |s: &str| format!("{s}\0x");
    let cases = [
        (
            CostInput {
                tenant_id: nul("t"),
                ..ok.clone()
            },
            "tenant_id",
        ),
        (
            CostInput {
                model: nul("m"),
                ..ok.clone()
            },
            "model",
        ),
        (
            CostInput {
                user_id: Some(nul("u")),
                ..ok.clone()
            },
            "user_id",
        ),
        (
            CostInput {
                request_id: Some(nul("r")),
                ..ok.clone()
            },
            "request_id",
        ),
        (
            CostInput {
                created_at: Some(chrono::DateTime::<Utc>::MIN_UTC),
                ..ok.clone()
            },
            "created_at",
        ),
    ];
    for (bad, field) in cases {
        assert_invalid(w.insert_cost_record(&bad), field);
        assert_invalid(w.record_costs(&[ok.clone(), bad]), field);
    }
    assert_invalid(
        w.insert_feature_tag(&tenant, &tag_input("a.b", "x", Some("d\0"), None)),
        "description",
    );
    assert_invalid(
        w.insert_feature_tag(&tenant, &tag_input("a\0b", "x", None, None)),
        "tag",
    );
    // The transaction is still usable: nothing reached PostgreSQL.
    let first = w.insert_cost_record(&ok).unwrap();
    assert_eq!(records_of(&mut conn, &tenant), vec![first]);
    assert_eq!(
        common::count_for_tenant(&mut conn, "feature_tags", &tenant),
        0
    );
}

#[test]
fn bulk_calls_sharing_request_ids_in_opposite_orders_do_not_deadlock() {
    let tenant = common::tenant();
    let n = 3_000;
    let forward: Vec<CostInput> = (0..n)
        .map(|i| cost(&tenant, Some(&format!("req-{i}")), 1.0))
        .collect();
    let backward: Vec<CostInput> = forward.iter().rev().cloned().collect();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = [forward.clone(), backward]
        .into_iter()
        .map(|batch| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut conn = costdb::db::connect(common::database_url()).unwrap();
                conn.transaction(|c| {
                    barrier.wait();
                    let all = CostWriteDriver::new(c).record_costs(&batch)?;
                    let ids: Vec<(String, String)> = batch
                        .iter()
                        .zip(all)
                        .map(|(c, r)| (c.request_id.clone().unwrap(), r.id))
                        .collect();
                    Ok::<_, Error>(ids)
                })
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut conn = common::conn();
    let stored = records_of(&mut conn, &tenant);
    assert_eq!(stored.len(), n);
    let by_request: std::collections::HashMap<String, String> = stored
        .into_iter()
        .map(|r| (r.request_id.unwrap(), r.id))
        .collect();
    for result in results {
        // Each call got every id back, in its own input order, equal to what is stored.
        let ids = result.expect("no deadlock, no error");
        assert_eq!(ids.len(), n);
        for (request, id) in ids {
            assert_eq!(by_request[&request], id, "{request}");
        }
    }
}

/// Waits until every session of `pids` waits for a lock, polling the server.
fn until_all_wait_for_locks(conn: &mut PgConnection, pids: &[i32]) {
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let waiting = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE pid = ANY($1) AND wait_event_type = 'Lock'",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Int4>, _>(pids)
        .get_result::<Waiting>(conn)
        .unwrap()
        .n;
        if waiting == pids.len() as i64 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions {pids:?} never all waited for a lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn both_bulk_statements_claim_request_ids_in_byte_order_whatever_the_collation() {
    // A database whose collation is ICU's English, as most deployments' is: there "a000"
    // sorts before "B001", which bytes put after it.
    let database = costdb_testkit::ScratchDatabase::create_with(
        common::admin_url(),
        "costdb_test_icu",
        "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C'",
    )
    .unwrap();
    costdb_testkit::migrate_and_lay_out(database.url()).unwrap();
    let url = database.url().to_owned();
    let tenant = common::tenant();
    let n = 20;
    let request = |i: usize| match i % 2 {
        0 => format!("a{i:03}"),
        _ => format!("B{i:03}"),
    };
    let given: Vec<CostInput> = (0..n)
        .map(|i| cost(&tenant, Some(&request(i)), 1.0))
        .collect();
    // A third transaction holds "B003". The bulk insert claims in byte order: it takes
    // "B001" and waits. Before migration 27 the COPY's trigger claimed in the collation's
    // order, every "a…" key first, then waited for "B001": once "B003" was free, the bulk
    // insert wanted "a000" and the two deadlocked.
    let mut holder = costdb::db::connect(&url).unwrap();
    AnsiTransactionManager::begin_transaction(&mut holder).unwrap();
    CostWriteDriver::new(&mut holder)
        .insert_cost_record(&cost(&tenant, Some(&request(3)), 9.0))
        .unwrap();
    // The bulk insert (a request id repeated, which COPY cannot skip) waits for "B003";
    // then a COPY of the same keys starts and waits too.
    let mut repeated = given.clone();
    repeated.push(given[0].clone());
    let mut conn = costdb::db::connect(&url).unwrap();
    let mut pids = Vec::new();
    let handles: Vec<_> = [repeated, given]
        .into_iter()
        .map(|batch| {
            let url = url.clone();
            let (sent, pid) = std::sync::mpsc::channel();
            let handle = std::thread::spawn(move || {
                let mut c = costdb::db::connect(&url).unwrap();
                sent.send(common::backend_pid(&mut c)).unwrap();
                c.transaction(|c| CostWriteDriver::new(c).record_costs(&batch))
            });
            pids.push(pid.recv().unwrap());
            until_all_wait_for_locks(&mut conn, &pids);
            handle
        })
        .collect();
    AnsiTransactionManager::rollback_transaction(&mut holder).unwrap();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let stored = records_of(&mut conn, &tenant);
    assert_eq!(stored.len(), n, "each request once");
    assert!(
        stored.iter().all(|r| r.cost_cents == 1.0),
        "not the held one"
    );
    for result in results {
        let recorded = result.expect("no deadlock");
        for r in recorded {
            assert!(stored.iter().any(|s| s.id == r.id), "{r:?} is stored");
        }
    }
}

#[test]
fn a_batch_that_meets_stored_requests_keeps_the_callers_earlier_work() {
    let tenant = common::tenant();
    let mut conn = common::conn();
    let stored = conn
        .transaction(|c| CostWriteDriver::new(c).record_costs(&[cost(&tenant, Some("old"), 1.0)]))
        .unwrap();
    let (earlier, batch) = conn
        .transaction(|c| {
            let mut w = CostWriteDriver::new(c);
            // Work the caller did before, in the same transaction.
            let earlier = w.insert_cost_record(&cost(&tenant, Some("before"), 2.0))?;
            // New requests, one stored one, and records stamped with the transaction's now().
            let batch = w.record_costs(&[
                cost(&tenant, Some("new-1"), 3.0),
                cost(&tenant, Some("old"), 9.0),
                cost(&tenant, None, 4.0),
                cost(&tenant, Some("new-2"), 5.0),
            ])?;
            Ok::<_, Error>((earlier, batch))
        })
        .unwrap();
    let flags: Vec<bool> = batch.iter().map(|r| r.inserted).collect();
    assert_eq!(flags, [true, false, true, true]);
    assert_eq!(batch[1].id, stored[0].id);
    let rows = records_of(&mut conn, &tenant);
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().any(|r| r.id == earlier.id));
    let by_id = |id: &str| rows.iter().find(|r| r.id == id).unwrap().clone();
    assert_eq!(by_id(&batch[0].id).cost_cents, 3.0);
    assert_eq!(
        by_id(&batch[1].id).cost_cents,
        1.0,
        "the stored record is unchanged"
    );
    assert_eq!(
        by_id(&batch[2].id).created_at,
        earlier.created_at,
        "same transaction now()"
    );
}

#[test]
fn a_batch_of_new_requests_goes_in_whole_with_every_field() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let at = Utc.with_ymd_and_hms(2026, 5, 4, 3, 2, 1).unwrap();
    let full = CostInput {
        tenant_id: tenant.to_string(),
        user_id: Some("u".into()),
        feature_tag: Some("f.g".into()),
        request_id: Some("r-1".into()),
        workflow_id: Some("wf".into()),
        skill_id: Some("sk".into()),
        model: "m".into(),
        input_tokens: 7,
        output_tokens: 8,
        cost_cents: 0.125,
        is_retry: true,
        created_at: Some(at),
    };
    let now = tx_now(&mut conn);
    let out = CostWriteDriver::new(&mut conn)
        .record_costs(&[full.clone(), cost(&tenant, Some("r-0"), 1.0)])
        .unwrap();
    assert!(out.iter().all(|r| r.inserted));
    let rows = records_of(&mut conn, &tenant);
    let first = rows.iter().find(|r| r.id == out[0].id).unwrap();
    assert_eq!(
        (
            first.user_id.as_deref(),
            first.feature_tag.as_deref(),
            first.request_id.as_deref(),
            first.workflow_id.as_deref(),
            first.skill_id.as_deref(),
        ),
        (Some("u"), Some("f.g"), Some("r-1"), Some("wf"), Some("sk"))
    );
    assert_eq!(
        (
            first.input_tokens,
            first.output_tokens,
            first.cost_cents,
            first.is_retry
        ),
        (7, 8, 0.125, true)
    );
    assert_eq!(first.created_at, at);
    let second = rows.iter().find(|r| r.id == out[1].id).unwrap();
    assert_eq!(second.created_at, now);
}

#[test]
fn single_records_and_analytics_reuse_one_prepared_statement_per_connection() {
    #[derive(QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement: String,
    }
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let day = costdb::types::TimeWindow::new(
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap(),
    )
    .unwrap();
    for i in 0..3 {
        CostWriteDriver::new(&mut conn)
            .insert_cost_record(&cost(&tenant, Some(&format!("r{i}")), 1.0))
            .unwrap();
        costdb::drivers::AnalyticsReadDriver::new(&mut conn)
            .fetch_cost_spend(&tenant, day, costdb::models::TimeBucket::Hour)
            .unwrap();
    }
    let prepared: Vec<Prepared> =
        diesel::sql_query("SELECT statement FROM pg_prepared_statements ORDER BY statement")
            .load(&mut conn)
            .unwrap();
    let count = |prefix: &str| {
        prepared
            .iter()
            .filter(|p| p.statement.contains(prefix))
            .count()
    };
    assert_eq!(count("INSERT INTO cost_records"), 1);
    // The read of the hourly rollup (through its view with the deltas), a Diesel
    // statement, is cached as one too.
    assert_eq!(count("FROM \"cost_rollup_hourly_live\""), 1);
}

#[test]
fn the_returned_record_is_the_stored_one_to_the_microsecond() {
    let mut conn = common::test_conn();
    let tenant = common::tenant();
    let instants = [
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(123_456_789),
        Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::nanoseconds(999_999_999),
        Utc.with_ymd_and_hms(1969, 7, 20, 20, 17, 40).unwrap()
            + chrono::Duration::nanoseconds(1_500),
    ];
    let mut returned = Vec::new();
    for (i, at) in instants.into_iter().enumerate() {
        let input = CostInput {
            created_at: Some(at),
            ..cost(&tenant, Some(&format!("r{i}")), 1.0)
        };
        returned.push(
            CostWriteDriver::new(&mut conn)
                .insert_cost_record(&input)
                .unwrap(),
        );
    }
    returned.push(
        CostWriteDriver::new(&mut conn)
            .insert_cost_record(&cost(&tenant, Some("now"), 1.0))
            .unwrap(),
    );
    let mut stored = records_of(&mut conn, &tenant);
    stored.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    returned.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    assert_eq!(returned, stored);
    assert_eq!(
        returned
            .iter()
            .find(|r| r.request_id.as_deref() == Some("now"))
            .unwrap()
            .created_at,
        tx_now(&mut conn)
    );
}
