//! Cost ingestion: `record_costs` (bulk, idempotent) against PostgreSQL's own fast path,
//! binary COPY of the same rows, and against recording them one by one.
//!
//! Runs on `DATABASE_URL`, else on a throwaway cluster. Every iteration runs in a
//! transaction that is rolled back, so the table stays the same size. Read the results as
//! ratios to the COPY baseline of the same run.

use chrono::{DateTime, Duration, Utc};
use costdb::db;
use costdb::drivers::CostInput;
use costdb::embedded::EmbeddedPostgres;
use costdb::schema::cost_records;
use costdb::CostWriteDriver;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use diesel::prelude::*;

const ROWS: usize = 2_000;

#[derive(Insertable)]
#[diesel(table_name = cost_records, treat_none_as_default_value = false)]
struct CopyRow {
    id: String,
    tenant_id: String,
    user_id: Option<String>,
    feature_tag: Option<String>,
    request_id: Option<String>,
    workflow_id: Option<String>,
    skill_id: Option<String>,
    model: String,
    input_tokens: i32,
    output_tokens: i32,
    cost_cents: f64,
    created_at: DateTime<Utc>,
    is_retry: bool,
}

fn inputs(n: usize) -> Vec<CostInput> {
    let start = Utc::now();
    (0..n)
        .map(|i| CostInput {
            tenant_id: "bench-tenant".into(),
            user_id: Some(format!("user-{}", i % 50)),
            feature_tag: Some(format!("feature.{}", i % 8)),
            request_id: Some(format!("req-{i}")),
            workflow_id: Some("wf".into()),
            skill_id: Some("llm_invoke".into()),
            model: "gpt-4o".into(),
            input_tokens: 500 + i as i32,
            output_tokens: 200,
            cost_cents: 0.37 * i as f64,
            is_retry: false,
            created_at: Some(start + Duration::milliseconds(i as i64)),
        })
        .collect()
}

fn copy_rows(inputs: &[CostInput]) -> Vec<CopyRow> {
    inputs
        .iter()
        .map(|c| CopyRow {
            id: costdb::models::ids::cost_record_id(),
            tenant_id: c.tenant_id.clone(),
            user_id: c.user_id.clone(),
            feature_tag: c.feature_tag.clone(),
            request_id: c.request_id.clone(),
            workflow_id: c.workflow_id.clone(),
            skill_id: c.skill_id.clone(),
            model: c.model.clone(),
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cost_cents: c.cost_cents,
            created_at: c.created_at.unwrap(),
            is_retry: c.is_retry,
        })
        .collect()
}

/// Runs `f` in a transaction that is always rolled back.
fn rolled_back(conn: &mut PgConnection, f: impl FnOnce(&mut PgConnection)) {
    let _ = conn.transaction::<(), diesel::result::Error, _>(|c| {
        f(c);
        Err(diesel::result::Error::RollbackTransaction)
    });
}

fn ingest(c: &mut Criterion) {
    let cluster;
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            cluster = EmbeddedPostgres::start().expect("embedded PostgreSQL");
            db::create_database(&cluster.url("postgres"), "bench").unwrap()
        }
    };
    let mut conn = db::connect(&url).unwrap();
    db::run_migrations(&mut conn).unwrap();
    let rows = inputs(ROWS);

    let mut group = c.benchmark_group("ingest_2000_cost_records");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(20);
    group.bench_function(BenchmarkId::new("copy_binary", "baseline"), |b| {
        b.iter_batched(
            || copy_rows(&rows),
            |batch| {
                rolled_back(&mut conn, |c| {
                    let n = diesel::copy_from(cost_records::table)
                        .from_insertable(&batch)
                        .execute(c)
                        .unwrap();
                    assert_eq!(n, ROWS);
                })
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function(BenchmarkId::new("record_costs", "bulk"), |b| {
        b.iter(|| {
            rolled_back(&mut conn, |c| {
                let out = CostWriteDriver::new(c).record_costs(&rows).unwrap();
                assert_eq!(out.len(), ROWS);
            })
        })
    });
    group.bench_function(BenchmarkId::new("create_cost_record", "one_by_one"), |b| {
        b.iter(|| {
            rolled_back(&mut conn, |c| {
                let mut w = CostWriteDriver::new(c);
                for r in &rows {
                    w.create_cost_record(r).unwrap();
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
