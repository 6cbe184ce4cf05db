//! `costdb demo`: the main job. Simulates an AI-agent platform on a database of its own
//! (embedded by default) and runs every capability over it: bulk ingestion of the history,
//! today's calls through budget admission and the recorder, worker runs, the anomaly
//! detector day by day, alerts delivered under leader election, CostSim provenance and its
//! drift, then a report a person reads at a glance.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use costdb::admission::{Admission, BudgetGate, ReserveInput};
use costdb::anomaly::AnomalyDetector;
use costdb::db::ScratchDatabase;
use costdb::drivers::{
    BudgetLimits, BudgetScope, CostInput, NewAlert, ProvenanceInput, RunCost, TimeWindow,
    WorkerRunData,
};
use costdb::embedded::EmbeddedPostgres;
use costdb::leader::{self, LeaderGuard, LOCK_ALERT_WORKER};
use costdb::models::{AlertType, CostAnomaly, TimeBucket, WorkerStatus};
use costdb::recorder::{CostRecorder, RecorderConfig};
use costdb::{
    db, AlertDriver, AnalyticsReadDriver, CostAnomalyDriver, CostWriteDriver, ProvenanceDriver,
    WorkerWriteService,
};
use diesel::{Connection, PgConnection};

use crate::{say, Failure, Outcome};

const MODELS: [&str; 5] = [
    "claude-sonnet-4",
    "gpt-4o",
    "gpt-4o-mini",
    "gemini-2.5-pro",
    "llama-3.3-70b",
];
const FEATURES: [&str; 5] = [
    "support.chat",
    "search.rank",
    "billing.summary",
    "docs.qa",
    "code.review",
];
/// Cents of the k-th call of a user's day: ten calls make a dollar.
const CENTS: [f64; 5] = [6.0, 8.0, 10.0, 12.0, 14.0];
/// The feature with a hard daily budget on the first tenant: it tries more than it may.
const EXPORT: &str = "batch.export";

/// What the demo simulates, and where.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  costdb demo --tenants 6 --days 40\n  \
    costdb demo --database-url postgres://postgres@localhost/postgres --keep")]
pub struct Options {
    /// A PostgreSQL server to run on, e.g. postgres://user@host:5432/postgres: the demo
    /// creates a database of its own there (costdb_demo_<time>) and drops it at the end.
    /// Without it, the demo starts a throwaway local PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
    /// Keep the database (or the throwaway cluster, running) and print its URL.
    #[arg(long)]
    keep: bool,
    /// Tenants to simulate (at least 4: one calm, one with a spike, one drifting, one
    /// over its budget; more are calm).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(4..=200))]
    tenants: u32,
    /// Days of history, ending yesterday (at least 14: the detector needs a baseline).
    #[arg(long, default_value_t = 36, value_parser = clap::value_parser!(u32).range(14..=120))]
    days: u32,
}

/// The simulated platform: who does what on which day.
struct Platform {
    tenants: Vec<String>,
    first: NaiveDate,
    last: NaiveDate,
}

impl Platform {
    fn days(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.first.iter_days().take_while(|d| *d <= self.last)
    }

    /// The calls of one tenant on one day.
    fn calls(&self, t: usize, day: NaiveDate) -> Vec<CostInput> {
        let tenant = &self.tenants[t];
        let back = (self.last - day).num_days();
        let start = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"));
        let mut out = Vec::new();
        let mut add = |user: &str,
                       n: usize,
                       retries: usize,
                       feature: &dyn Fn(usize) -> &'static str,
                       flat: bool| {
            for k in 0..n {
                let second = (k as i64 * 7_919 + user.len() as i64 * 13 + t as i64 * 101) % 86_400;
                out.push(CostInput {
                    tenant_id: tenant.clone(),
                    user_id: Some(user.into()),
                    feature_tag: Some(feature(k).into()),
                    request_id: Some(format!("{day}-{user}-{k}")),
                    model: MODELS[(k + t) % MODELS.len()].into(),
                    input_tokens: 400 + 40 * (k % 7) as i32,
                    output_tokens: 80 + 10 * (k % 5) as i32,
                    cost_cents: if flat { 10.0 } else { CENTS[k % CENTS.len()] },
                    is_retry: k < retries,
                    created_at: Some(start + chrono::Duration::seconds(second)),
                    ..CostInput::default()
                });
            }
        };
        let spread = |k: usize| FEATURES[k % FEATURES.len()];
        let mostly_search = |k: usize| if k % 10 < 7 { FEATURES[1] } else { FEATURES[0] };
        for u in 0..10 {
            let user = format!("u{u}");
            match t {
                1 if u == 9 => {
                    // The spike: four times the usual calls on the last two days, retried.
                    let (n, retries) = match back {
                        1 => (40, 12),
                        0 => (40, 28),
                        _ => (10, 0),
                    };
                    add("u-spike", n, retries, &spread, false);
                }
                // The drift: 30 % more for the last eight days, mostly on one feature.
                2 => add(
                    &user,
                    if back <= 7 { 13 } else { 10 },
                    0,
                    &mostly_search,
                    true,
                ),
                // Over budget: 1,140¢ on the last day against a soft daily limit of 1,100¢.
                3 => add(&user, if back == 0 { 12 } else { 10 }, 0, &spread, false),
                _ => add(&user, 10, 0, &spread, false),
            }
        }
        if t == 0 {
            // Three exports a day fit the hard 35¢ export budget; on the last day it tries six.
            let n = if back == 0 { 6 } else { 3 };
            add("u-export", n, 0, &|_| EXPORT, true);
        }
        out
    }
}

/// What the steps found, for the report.
#[derive(Default)]
struct Findings {
    steps: Vec<(&'static str, Duration)>,
    bulk_rows: usize,
    recorded: usize,
    admitted: usize,
    refused: usize,
    warned: usize,
    runs: usize,
    anomalies: Vec<CostAnomaly>,
    delivered_by: Vec<(String, i64, usize)>,
    stood_by: Vec<String>,
    simulations: usize,
}

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Runs the demo in a database of its own; see [`Options`].
pub fn run(options: Options) -> Outcome {
    let mut cluster = None;
    let admin_url = match options.database_url.filter(|u| !u.is_empty()) {
        Some(url) => {
            say!("server: {}", redact(&url))?;
            url
        }
        None => {
            say!("starting a throwaway PostgreSQL…")?;
            let pg = cluster.insert(EmbeddedPostgres::start()?);
            pg.url("postgres")
        }
    };
    let database = ScratchDatabase::create(&admin_url, "costdb_demo")?;
    say!("database: {}", database.name())?;
    let url = database.url().to_owned();
    let mut conn = db::connect(&url)?;
    let applied = db::run_migrations(&mut conn)?;
    say!("schema: {} migration(s) applied", applied.len())?;

    let last = Utc::now().date_naive() - chrono::Duration::days(1);
    let platform = Platform {
        tenants: (0..options.tenants)
            .map(|i| format!("tenant-{i:02}"))
            .collect(),
        first: last - chrono::Duration::days(i64::from(options.days) - 1),
        last,
    };
    let mut found = Findings::default();
    let step = |name: &'static str, found: &mut Findings, started: Instant| {
        found.steps.push((name, started.elapsed()));
    };

    let t = Instant::now();
    history(&mut conn, &platform, &mut found)?;
    step("history (bulk)", &mut found, t);
    let t = Instant::now();
    budgets(&mut conn, &platform)?;
    today(&url, &mut conn, &platform, &mut found)?;
    step("today (admission, recorder, runs)", &mut found, t);
    let t = Instant::now();
    detect(&mut conn, &platform, &mut found)?;
    step("anomaly detection", &mut found, t);
    let t = Instant::now();
    alerts(&url, &mut conn, &mut found)?;
    step("alerts under leader election", &mut found, t);
    let t = Instant::now();
    provenance(&mut conn, &platform, &mut found)?;
    step("CostSim provenance", &mut found, t);
    report(&mut conn, &platform, &found)?;
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

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let user_end = s + 3 + url[s + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Every day but the last, by bulk ingestion.
fn history(conn: &mut PgConnection, p: &Platform, found: &mut Findings) -> costdb::Result<()> {
    let days: Vec<NaiveDate> = p.days().filter(|d| *d < p.last).collect();
    let bar = progress(days.len() as u64, "history");
    for day in days {
        let rows: Vec<CostInput> = (0..p.tenants.len()).flat_map(|t| p.calls(t, day)).collect();
        conn.transaction(|c| CostWriteDriver::new(c).record_costs(&rows))?;
        found.bulk_rows += rows.len();
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

fn budgets(conn: &mut PgConnection, p: &Platform) -> costdb::Result<()> {
    let limits = |daily: i32, monthly: Option<i32>, warn: i32, hard: bool| BudgetLimits {
        daily_limit_cents: Some(daily),
        monthly_limit_cents: monthly,
        warn_threshold_pct: warn,
        hard_limit_enabled: hard,
    };
    conn.transaction(|c| {
        let mut w = CostWriteDriver::new(c);
        w.create_or_update_budget(
            &p.tenants[0],
            &BudgetScope::Tenant,
            &limits(5_000, Some(120_000), 80, true),
        )?;
        w.create_or_update_budget(
            &p.tenants[0],
            &BudgetScope::Feature(EXPORT.into()),
            &limits(35, None, 90, true),
        )?;
        w.create_or_update_budget(
            &p.tenants[3],
            &BudgetScope::Tenant,
            &limits(1_100, None, 95, false),
        )?;
        Ok(())
    })
}

/// The last day: budgeted tenants' calls through admission, the others' through the
/// recorder from four threads, and a few worker runs per tenant.
fn today(
    url: &str,
    conn: &mut PgConnection,
    p: &Platform,
    found: &mut Findings,
) -> Result<(), Failure> {
    let budgeted = [0usize, 3];
    let admitted: Vec<CostInput> = budgeted.iter().flat_map(|&t| p.calls(t, p.last)).collect();
    let bar = progress(admitted.len() as u64, "admission");
    for call in &admitted {
        let at = call.created_at.expect("every call has its instant");
        let ask = ReserveInput {
            request_id: call
                .request_id
                .clone()
                .expect("every call has a request id"),
            feature_tag: call.feature_tag.clone(),
            user_id: call.user_id.clone(),
            estimated_cents: call.cost_cents,
            expires_at: at + chrono::Duration::minutes(5),
            now: at,
        };
        match conn.transaction(|c| BudgetGate::new(c).reserve(&call.tenant_id, &ask))? {
            Admission::Admitted {
                reservation,
                warnings,
            } => {
                found.admitted += 1;
                found.warned += usize::from(!warnings.is_empty());
                conn.transaction(|c| BudgetGate::new(c).settle(&reservation, call))?;
            }
            Admission::Refused { .. } => found.refused += 1,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let others: Vec<usize> = (0..p.tenants.len())
        .filter(|t| !budgeted.contains(t))
        .collect();
    let calls: Vec<CostInput> = others.iter().flat_map(|&t| p.calls(t, p.last)).collect();
    let recorder = CostRecorder::start(url, RecorderConfig::default())?;
    let bar = progress(calls.len() as u64, "recorder");
    let results: Vec<costdb::Result<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (recorder, bar, calls) = (recorder.clone(), bar.clone(), &calls);
                s.spawn(move || {
                    let mut n = 0;
                    for call in calls.iter().skip(i).step_by(4) {
                        recorder.record(call.clone())?;
                        bar.inc(1);
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a recorder thread"))
            .collect()
    });
    recorder.shutdown();
    bar.finish_and_clear();
    for r in results {
        found.recorded += r?;
    }

    // Three short worker runs per tenant, each billed once.
    conn.transaction(|c| {
        let mut workers = WorkerWriteService::new(c);
        for tenant in &p.tenants {
            for i in 0..3 {
                let run_id = uuid::Uuid::new_v4().to_string();
                let running = WorkerRunData {
                    task: Some(format!("market research #{i}")),
                    status: Some(WorkerStatus::Running),
                    ..Default::default()
                };
                workers.upsert_worker_run(tenant, &run_id, &running)?;
                let cost = RunCost {
                    model: MODELS[0].into(),
                    input_tokens: 300,
                    output_tokens: 100,
                    cost_cents: 1.0,
                };
                workers.insert_cost_record(tenant, &run_id, &cost)?;
                let done = WorkerRunData {
                    status: Some(WorkerStatus::Completed),
                    success: Some(Some(true)),
                    total_tokens_used: Some(Some(400)),
                    cost_cents: Some(1),
                    ..Default::default()
                };
                workers.upsert_worker_run(tenant, &run_id, &done)?;
                found.runs += 1;
            }
        }
        Ok::<_, costdb::Error>(())
    })?;
    Ok(())
}

fn noon(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(12, 0, 0).expect("noon"))
}

/// The detector over the last four days, day by day, for every tenant.
fn detect(conn: &mut PgConnection, p: &Platform, found: &mut Findings) -> costdb::Result<()> {
    let detector = AnomalyDetector::default();
    let days: Vec<NaiveDate> = p.days().filter(|d| (p.last - *d).num_days() < 4).collect();
    let bar = progress((days.len() * p.tenants.len()) as u64, "detector");
    for day in days {
        for tenant in &p.tenants {
            let anomalies = conn.transaction(|c| detector.detect(c, tenant, noon(day)))?;
            found.anomalies.extend(anomalies);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// A worker's name and, if it led, its term and how many alerts it delivered.
type WorkerOutcome = (String, Option<(i64, usize)>);

/// Queues an alert per anomaly (each trips its tenant's cost breaker), then two workers
/// compete for the alert worker's leadership: the leader delivers, the other stands by.
fn alerts(url: &str, conn: &mut PgConnection, found: &mut Findings) -> Result<(), Failure> {
    conn.transaction(|c| {
        let mut queue = AlertDriver::new(c);
        for a in &found.anomalies {
            queue.insert_alert(&NewAlert {
                payload: serde_json::json!([{
                    "labels": {
                        "alertname": "CostAnomaly",
                        "tenant": a.tenant_id,
                        "type": a.anomaly_type,
                        "severity": a.severity,
                    },
                    "annotations": { "summary": a.message },
                }]),
                alert_type: AlertType::Disable,
                circuit_breaker_name: Some(format!("cost-guard:{}", a.tenant_id)),
                incident_id: None,
                max_attempts: 10,
            })?;
        }
        Ok::<_, costdb::Error>(())
    })?;
    let both_tried = std::sync::Barrier::new(2);
    let outcomes: Vec<costdb::Result<WorkerOutcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = ["worker-a", "worker-b"]
            .into_iter()
            .map(|name| {
                let both_tried = &both_tried;
                s.spawn(move || {
                    let guard =
                        LeaderGuard::acquire(url, LOCK_ALERT_WORKER, name, leader::DEFAULT_TIMEOUT);
                    both_tried.wait();
                    let Some(mut guard) = guard? else {
                        return Ok((name.to_owned(), None));
                    };
                    let mut conn = db::connect(url)?;
                    let mut delivered = 0;
                    loop {
                        let batch = conn.transaction(|c| {
                            leader::check_term(c, LOCK_ALERT_WORKER, guard.term())?;
                            let mut queue = AlertDriver::new(c);
                            let due = queue.fetch_pending_alerts(Utc::now(), 10)?;
                            let ids: Vec<i64> = due.iter().map(|a| a.id).collect();
                            queue.update_alerts_sent(&ids, Utc::now())
                        })?;
                        if batch == 0 || !guard.still_leader() {
                            break;
                        }
                        delivered += batch;
                    }
                    let term = guard.term();
                    guard.release()?;
                    Ok((name.to_owned(), Some((term, delivered))))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an alert worker"))
            .collect()
    });
    for outcome in outcomes {
        match outcome? {
            (name, Some((term, n))) => found.delivered_by.push((name, term, n)),
            (name, None) => found.stood_by.push(name),
        }
    }
    Ok(())
}

/// CostSim V2 runs beside V1 for every tenant's last seven days, and their drift.
fn provenance(conn: &mut PgConnection, p: &Platform, found: &mut Findings) -> costdb::Result<()> {
    let window = TimeWindow::new(
        noon(p.last) - chrono::Duration::days(7) - chrono::Duration::hours(12),
        noon(p.last) + chrono::Duration::hours(12),
    )?;
    let mut runs = Vec::new();
    for tenant in &p.tenants {
        let days =
            AnalyticsReadDriver::new(conn).fetch_cost_spend(tenant, window, TimeBucket::Day)?;
        for (i, b) in days.iter().enumerate() {
            let input = serde_json::json!({"tenant": tenant, "day": b.bucket.date_naive().to_string(), "calls": b.requests});
            let drift = 1.0 + 0.02 * ((i % 5) as f64 - 2.0);
            runs.push(ProvenanceInput {
                tenant_id: Some(tenant.clone()),
                run_id: Some(format!("sim-{tenant}-{i}")),
                input_hash: Some(costdb::input_hash::compute_input_hash(&input)),
                v1_cost: Some(b.spend_cents),
                v2_cost: Some((b.spend_cents * drift * 100.0).round() / 100.0),
                payload: Some(input),
                runtime_ms: Some(40 + i as i32),
                ..ProvenanceInput::default()
            });
        }
    }
    found.simulations = conn
        .transaction(|c| ProvenanceDriver::new(c).write_provenance_batch(&runs))?
        .len();
    Ok(())
}

fn dollars(cents: f64) -> String {
    format!("${:.2}", cents / 100.0)
}

fn report(conn: &mut PgConnection, p: &Platform, found: &Findings) -> Outcome {
    let from = Utc.from_utc_datetime(&p.first.and_hms_opt(0, 0, 0).expect("midnight"));
    let window = TimeWindow::new(from, noon(p.last) + chrono::Duration::hours(12))?;
    let mut per_day: BTreeMap<NaiveDate, f64> = BTreeMap::new();
    let mut models: BTreeMap<String, f64> = BTreeMap::new();
    let mut features: BTreeMap<String, f64> = BTreeMap::new();
    let mut analytics = AnalyticsReadDriver::new(conn);
    for tenant in &p.tenants {
        for b in analytics.fetch_cost_spend(tenant, window, TimeBucket::Day)? {
            *per_day.entry(b.bucket.date_naive()).or_default() += b.spend_cents;
        }
        for m in analytics.fetch_cost_by_model(tenant, window)? {
            *models.entry(m.model).or_default() += m.spend_cents;
        }
        for f in analytics.fetch_cost_by_feature(tenant, window)? {
            let label = f.feature_tag.unwrap_or_else(|| "(no feature tag)".into());
            *features.entry(label).or_default() += f.spend_cents;
        }
    }
    let total: f64 = per_day.values().sum();
    say!(
        "\nspend per day, all {} tenants ({} in all):",
        p.tenants.len(),
        dollars(total)
    )?;
    let top = per_day.values().cloned().fold(0.0, f64::max).max(1.0);
    for (day, cents) in &per_day {
        let bar = "█".repeat((cents / top * 40.0).round() as usize);
        say!("  {day}  {bar:<40}  {:>9}", dollars(*cents))?;
    }

    say!("\nbudgets on {} (as counted by admission):", p.last)?;
    for tenant in &p.tenants {
        let budgets = CostAnomalyDriver::new(conn).fetch_active_budgets(tenant)?;
        if budgets.is_empty() {
            continue;
        }
        let lines = conn.transaction(|c| BudgetGate::new(c).reconcile(tenant, p.last))?;
        for b in &budgets {
            for l in lines.iter().filter(|l| l.budget_id == b.id) {
                let limit = match l.period {
                    costdb::models::BudgetPeriod::Daily => b.daily_limit_cents,
                    costdb::models::BudgetPeriod::Monthly => b.monthly_limit_cents,
                };
                let Some(limit) = limit else { continue };
                let scope = b.entity_id.as_deref().unwrap_or("whole tenant");
                say!(
                    "  {tenant} {:<14} {:<8} {:>9} of {:>9} ({:>3.0} %) {}",
                    scope,
                    l.period.as_str(),
                    dollars(l.counted_cents),
                    dollars(f64::from(limit)),
                    l.counted_cents / f64::from(limit.max(1)) * 100.0,
                    if b.hard_limit_enabled { "hard" } else { "soft" }
                )?;
            }
        }
    }
    say!(
        "  admission: {} admitted ({} with a warning), {} refused at a hard limit",
        found.admitted,
        found.warned,
        found.refused
    )?;

    let mut ranked: Vec<(&String, &f64)> = models.iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    say!("\ntop models:")?;
    for (m, cents) in ranked.iter().take(5) {
        say!("  {m:<18} {:>10}", dollars(**cents))?;
    }
    let mut ranked: Vec<(&String, &f64)> = features.iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    say!("\ntop features:")?;
    for (f, cents) in ranked.iter().take(5) {
        say!("  {f:<18} {:>10}", dollars(**cents))?;
    }

    say!("\nanomalies found ({}):", found.anomalies.len())?;
    for a in &found.anomalies {
        say!(
            "  {} {} {:<16} {:<7} {:<6} {:<10} {:<14} {} → {} ({:+.0} %)",
            a.detected_at.date_naive(),
            a.tenant_id,
            a.anomaly_type.as_str(),
            a.entity_type.as_str(),
            a.severity.as_str(),
            a.entity_id.as_deref().unwrap_or("-"),
            a.derived_cause.map_or("-", |c| c.as_str()),
            dollars(a.expected_value_cents),
            dollars(a.current_value_cents),
            a.deviation_pct
        )?;
    }

    say!("\nalerts: {} queued", found.anomalies.len())?;
    for (name, term, n) in &found.delivered_by {
        say!("  {name} led (term {term}) and delivered {n}")?;
    }
    for name in &found.stood_by {
        say!("  {name} stood by: another worker was leader")?;
    }
    for s in leader::lock_status(conn, &[LOCK_ALERT_WORKER])? {
        say!(
            "  lock {}: latest term {} taken by {}",
            s.lock_id,
            s.term.unwrap_or(0),
            s.holder.as_deref().unwrap_or("-")
        )?;
    }

    let drift = ProvenanceDriver::new(conn).get_drift_stats(None)?;
    say!(
        "\nCostSim V2 vs V1 over {} simulations: mean Δ {:+.2}¢, min {:+.2}¢, max {:+.2}¢, σ {:.2}¢",
        drift.total, drift.avg_delta, drift.min_delta, drift.max_delta, drift.stddev_delta
    )?;

    say!("\nrows:")?;
    for (table, n) in row_counts(conn)? {
        say!("  {table:<28} {n:>8}")?;
    }
    say!(
        "  (bulk {}, recorder {}, admission {}, worker runs {}, simulations {})",
        found.bulk_rows,
        found.recorded,
        found.admitted,
        found.runs,
        found.simulations
    )?;
    say!("\nsteps:")?;
    for (name, took) in &found.steps {
        say!("  {name:<36} {:>8.2} s", took.as_secs_f64())?;
    }
    Ok(())
}

fn row_counts(conn: &mut PgConnection) -> costdb::Result<Vec<(&'static str, i64)>> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let tables = [
        "cost_records",
        "worker_runs",
        "budget_reservations",
        "cost_anomalies",
        "costsim_alert_queue",
        "costsim_provenance",
    ];
    let mut out = Vec::new();
    for table in tables {
        // The table names are the constants above, never input.
        let n: N =
            diesel::sql_query(format!("SELECT count(*) AS n FROM {table}")).get_result(conn)?;
        out.push((table, n.n));
    }
    Ok(out)
}
