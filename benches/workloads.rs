//! The workloads of `costdb bench` under criterion: each as a group with its costdb path
//! and its PostgreSQL baseline, so criterion's statistics and history apply to both.
//!
//! Runs in a database of its own on `DATABASE_URL`'s server, else on a throwaway cluster
//! with the default durability. Read the results as ratios within one run.

use std::time::Duration;

use costdb::db;
use costdb_cli::workloads::{self as bench, Ctx, Scale};
use costdb_testkit::embedded::{self, Durability, EmbeddedPostgres};
use costdb_testkit::ScratchDatabase;
use criterion::{criterion_group, criterion_main, Criterion};

fn workloads(c: &mut Criterion) {
    let mut cluster = None;
    let admin_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => cluster
            .insert(EmbeddedPostgres::start_with(Durability::Default).expect("PostgreSQL"))
            .url("postgres"),
    };
    let database = ScratchDatabase::create(&admin_url, "costdb_criterion").unwrap();
    let mut conn = db::connect(database.url()).unwrap();
    db::run_migrations(&mut conn).unwrap();
    let scale = Scale::QUICK;
    let mut ctx = Ctx {
        conn,
        url: database.url().to_owned(),
        pgbench: embedded::find_program("pgbench"),
        scale,
    };
    for mut w in bench::all_workloads(scale) {
        w.prepare(&mut ctx).unwrap();
        let mut group = c.benchmark_group(w.name());
        group.sample_size(10);
        group.bench_function("costdb", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| w.contender(&mut ctx).unwrap())
                    .sum::<Duration>()
            })
        });
        group.bench_function(w.baseline_name(), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| w.baseline(&mut ctx).unwrap())
                    .sum::<Duration>()
            })
        });
        group.finish();
    }
    drop(ctx);
    drop(database);
}

criterion_group!(benches, workloads);
criterion_main!(benches);
