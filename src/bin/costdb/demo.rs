//! `costdb demo`: the main job on a real database, embedded by default. Records a day of
//! worker runs and LLM calls for two tenants, then prints the analytics over them.

use std::io::Write;

use chrono::{DateTime, Duration, Utc};
use costdb::db::ScratchDatabase;
use costdb::drivers::{
    BudgetLimits, BudgetScope, BudgetSnapshot, CostAdvisory, CostInput, FeatureTagInput, RunCost,
    TimeWindow, WorkerRunData,
};
use costdb::embedded::EmbeddedPostgres;
use costdb::models::{TimeBucket, WorkerStatus};
use costdb::{db, AnalyticsReadDriver, CostWriteDriver, WorkerWriteService};
use diesel::{Connection, PgConnection};

use crate::{say, Outcome};

const MODELS: [(&str, f64); 3] = [
    ("claude-sonnet-4", 0.0012),
    ("gpt-4o", 0.0010),
    ("gpt-4o-mini", 0.0002),
];
const FEATURES: [Option<&str>; 4] = [
    Some("support.chat"),
    Some("search.rank"),
    Some("billing.summary"),
    None,
];

/// Where the demo runs.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// A PostgreSQL server to run on, e.g. postgres://user@host:5432/postgres: the demo
    /// creates a database of its own there (costdb_demo_<time>) and drops it at the end.
    /// Without it, the demo starts a throwaway local PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
    /// Keep the database (or the throwaway cluster, running) and print its URL.
    #[arg(long)]
    keep: bool,
}

/// Runs the demo in a database of its own; see [`Options`].
pub fn run(options: Options) -> Outcome {
    let mut cluster = None;
    let admin_url = match options.database_url.filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => {
            say!("starting a throwaway PostgreSQL…")?;
            let pg = cluster.insert(EmbeddedPostgres::start()?);
            pg.url("postgres")
        }
    };
    let database = ScratchDatabase::create(&admin_url, "costdb_demo")?;
    say!("database: {}", database.name())?;
    let mut conn = db::connect(database.url())?;
    let applied = db::run_migrations(&mut conn)?;
    say!("schema: {} migration(s) applied", applied.len())?;

    let day_start = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let tenant = "demo-tenant";
    let billed = conn.transaction(|c| record_day(c, tenant, day_start))?;
    say!(
        "recorded {} LLM calls; {} retried calls were not billed twice",
        billed.0,
        billed.1
    )?;
    if let Some(run_id) = billed.2 {
        say!("budget warning raised by run {run_id}")?;
    }
    report(
        &mut conn,
        tenant,
        TimeWindow::new(day_start, day_start + Duration::days(1))?,
    )?;
    drop(conn);
    if options.keep {
        let url = database.keep();
        if let Some(pg) = cluster {
            let dir = pg.keep();
            say!(
                "kept the cluster in {} (stop it with: pg_ctl -D {}/data stop)",
                dir.display(),
                dir.display()
            )?;
        }
        say!("kept: {url}")?;
    }
    Ok(())
}

/// Records the day; returns calls billed, repeats not billed, and the run that raised a
/// budget warning.
fn record_day(
    conn: &mut PgConnection,
    tenant: &str,
    day: DateTime<Utc>,
) -> costdb::Result<(usize, usize, Option<String>)> {
    let mut costs = CostWriteDriver::new(conn);
    for tag in FEATURES.iter().flatten() {
        costs.create_feature_tag(
            tenant,
            &FeatureTagInput {
                tag: (*tag).into(),
                display_name: tag.replace('.', " "),
                ..Default::default()
            },
        )?;
    }
    let budget = costs.create_or_update_budget(
        tenant,
        &BudgetScope::Tenant,
        &BudgetLimits {
            daily_limit_cents: Some(2_000),
            monthly_limit_cents: Some(40_000),
            warn_threshold_pct: 80,
            hard_limit_enabled: false,
        },
    )?;

    // 24 hours of LLM calls, in one bulk statement; every tenth call is retried.
    let calls: Vec<CostInput> = (0..2_400u32)
        .map(|i| {
            let (model, cents_per_token) = MODELS[(i % 3) as usize];
            let (input, output) = (200 + (i * 37) % 1800, 50 + (i * 53) % 600);
            CostInput {
                tenant_id: tenant.into(),
                user_id: Some(format!("user-{}", i % 17)),
                feature_tag: FEATURES[(i % 4) as usize].map(Into::into),
                request_id: Some(format!("req-{}", if i % 10 == 9 { i - 1 } else { i })),
                model: model.into(),
                input_tokens: input as i32,
                output_tokens: output as i32,
                cost_cents: f64::from(input + 3 * output) * cents_per_token,
                created_at: Some(day + Duration::seconds(i64::from(i) * 36)),
                ..CostInput::default()
            }
        })
        .collect();
    let recorded = costs.record_costs(&calls)?;
    let billed = recorded.iter().filter(|r| r.inserted).count();
    let repeats = recorded.len() - billed;

    let mut workers = WorkerWriteService::new(conn);
    let mut spend = 0i64;
    for i in 0..12 {
        let run_id = uuid::Uuid::new_v4().to_string();
        workers.upsert_worker_run(
            tenant,
            &run_id,
            &WorkerRunData {
                task: Some(format!("market research #{i}")),
                status: Some(WorkerStatus::Running),
                ..Default::default()
            },
        )?;
        let cents = 40 + i * 25;
        workers.insert_cost_record(
            tenant,
            &run_id,
            &RunCost {
                model: MODELS[0].0.into(),
                input_tokens: 3_000,
                output_tokens: 7_000,
                cost_cents: cents as f64,
            },
        )?;
        spend += cents;
        workers.upsert_worker_run(
            tenant,
            &run_id,
            &WorkerRunData {
                status: Some(WorkerStatus::Completed),
                success: Some(Some(true)),
                total_tokens_used: Some(Some(10_000)),
                cost_cents: Some(cents as i32),
                ..Default::default()
            },
        )?;
        if spend >= 1_600 {
            workers.insert_cost_advisory(
                tenant,
                &run_id,
                &CostAdvisory {
                    daily_spend_cents: spend,
                    warn_threshold_cents: 1_600.0,
                    budget: BudgetSnapshot {
                        budget_id: budget.id.clone(),
                        daily_limit_cents: budget.daily_limit_cents,
                        warn_threshold_pct: budget.warn_threshold_pct,
                        hard_limit_enabled: budget.hard_limit_enabled,
                    },
                },
            )?;
            return Ok((billed, repeats, Some(run_id)));
        }
    }
    Ok((billed, repeats, None))
}

fn report(conn: &mut PgConnection, tenant: &str, day: TimeWindow) -> Outcome {
    let mut analytics = AnalyticsReadDriver::new(conn);
    say!("\ncost by hour for {tenant} (UTC):")?;
    say!(
        "  {:<6} {:>8} {:>11} {:>12}",
        "hour",
        "calls",
        "tokens",
        "spend ¢"
    )?;
    for b in analytics.fetch_cost_spend(tenant, day, TimeBucket::Hour)? {
        say!(
            "  {:<6} {:>8} {:>11} {:>12.2}",
            b.bucket.format("%H:00"),
            b.requests,
            b.input_tokens + b.output_tokens,
            b.spend_cents
        )?;
    }
    say!("\nby model:")?;
    for m in analytics.fetch_cost_by_model(tenant, day)? {
        say!(
            "  {:<18} {:>8} calls {:>12.2} ¢",
            m.model,
            m.requests,
            m.spend_cents
        )?;
    }
    say!("\nby feature:")?;
    for f in analytics.fetch_cost_by_feature(tenant, day)? {
        let label = f.feature_tag.as_deref().unwrap_or("(no feature tag)");
        say!(
            "  {label:<18} {:>8} calls {:>12.2} ¢",
            f.requests,
            f.spend_cents
        )?;
    }
    Ok(())
}
