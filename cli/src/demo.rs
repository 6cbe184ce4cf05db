//! `costdb demo`: the main job. Simulates an AI-agent platform on a database of its own
//! (embedded by default) and runs every capability over it: bulk ingestion of the history,
//! today's calls through budget admission and the recorder, worker runs, the anomaly
//! detector day by day, alerts delivered under leader election, CostSim provenance and its
//! drift, then a report a person reads at a glance.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use costdb::admission::{Admission, AdmissionDriver, ReserveInput};
use costdb::detector::{percent_text, AnomalyDetector};
use costdb::drivers::{
    BudgetLimits, PartitionDriver, ProvenanceInput, RollupDriver, RollupRange, RunCost,
    WorkerRunData,
};
use costdb::leader::{self, LeaderGuard};
use costdb::models::CostInput;
use costdb::models::{AnomalyType, CostAnomaly, TimeBucket, WorkerStatus};
use costdb::recorder::{CostRecorder, RecorderConfig};
use costdb::types::locks::LOCK_ALERT_WORKER;
use costdb::types::{BudgetScope, RunId, TenantId, TimeWindow};
use costdb::{
    db, drivers::AlertDriver, drivers::AnalyticsReadDriver, drivers::CostAnomalyDriver,
    drivers::CostWriteDriver, drivers::ProvenanceDriver, drivers::WorkerWriteDriver,
};
use costdb_testkit::EmbeddedPostgres;
use costdb_testkit::ScratchDatabase;
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
/// Cents of a call, by its place in the user's day.
const CENTS: [f64; 5] = [6.0, 8.0, 10.0, 12.0, 14.0];
/// The feature with a hard daily budget on the first tenant: it tries more than it may.
const EXPORT: &str = "batch.export";
/// Calls of a user on an ordinary weekday at the start of the history.
const CALLS: f64 = 10.0;
/// Saturdays' and Sundays' share of a weekday's traffic.
const WEEKEND: f64 = 0.82;
/// Growth of the traffic per day.
const GROWTH: f64 = 0.003;
/// Day-to-day noise of a tenant's traffic (±) and of each user's (±).
const TENANT_NOISE: f64 = 0.03;
const USER_NOISE: f64 = 0.04;
/// The drifting tenant's traffic over its last 12 days.
const DRIFT: f64 = 1.4;
/// The soft budget's tenant: its normal days stay below this share of the limit (under the
/// 95 % warning), its last day goes this far over it.
const BUDGET_HEADROOM: f64 = 0.92;
const BUDGET_OVER: f64 = 1.04;

/// What the demo simulates, and where.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  costdb demo --tenants 6 --days 40 --seed 7\n  \
    costdb demo --database-url postgres://postgres@localhost/postgres --keep"
)]
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
    /// Days of history, ending yesterday (at least 30: the drift rule's baseline reaches
    /// 28 days back).
    #[arg(long, default_value_t = 36, value_parser = clap::value_parser!(u32).range(30..=120))]
    days: u32,
    /// Seed of the history's noise (printed; the same seed gives the same history).
    /// Default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
}

/// A number in [0, 1) from the seed and a place in the simulation (splitmix64).
fn unit(seed: u64, place: [u64; 4]) -> f64 {
    let mut x = seed;
    for p in place {
        x = (x ^ p).wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A factor within `1 ± width`, from the seed and a place.
fn noise(seed: u64, width: f64, place: [u64; 4]) -> f64 {
    1.0 + width * (2.0 * unit(seed, place) - 1.0)
}

/// The simulated platform: who does what on which day.
struct Platform {
    tenants: Vec<TenantId>,
    first: NaiveDate,
    last: NaiveDate,
    seed: u64,
}

impl Platform {
    fn days(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.first.iter_days().take_while(|d| *d <= self.last)
    }

    /// The tenant's traffic on `day` relative to a weekday at the start: the weekly cycle,
    /// the growth and the tenant's noise of the day.
    fn traffic(&self, t: usize, day: NaiveDate) -> f64 {
        use chrono::Datelike;
        let week = match day.weekday() {
            chrono::Weekday::Sat | chrono::Weekday::Sun => WEEKEND,
            _ => 1.0,
        };
        let age = (day - self.first).num_days();
        let grown = (1.0 + GROWTH).powi(age as i32);
        week * grown * noise(self.seed, TENANT_NOISE, [t as u64, age as u64, 0, 1])
    }

    /// The daily limit of the soft budget of the fourth tenant, in cents: its normal days
    /// of detection (the two before the last) stay under [`BUDGET_HEADROOM`] of it.
    fn soft_limit_cents(&self) -> i32 {
        let spend = |day| self.calls(3, day).iter().map(|c| c.cost_cents).sum::<f64>();
        let normal = (1..=2)
            .map(|back| spend(self.last - chrono::Duration::days(back)))
            .fold(0.0, f64::max);
        (normal / BUDGET_HEADROOM).ceil() as i32
    }

    /// The calls of one tenant on one day.
    fn calls(&self, t: usize, day: NaiveDate) -> Vec<CostInput> {
        let tenant = &self.tenants[t];
        let back = (self.last - day).num_days();
        let age = (day - self.first).num_days() as u64;
        let start = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"));
        let traffic = self.traffic(t, day);
        let mut out = Vec::new();
        let mut add =
            |user: &str, n: usize, retries: usize, feature: &dyn Fn(usize) -> &'static str| {
                for k in 0..n {
                    let second =
                        (k as i64 * 7_919 + user.len() as i64 * 13 + t as i64 * 101) % 86_400;
                    out.push(CostInput {
                        tenant_id: tenant.to_string(),
                        user_id: Some(user.into()),
                        feature_tag: Some(feature(k).into()),
                        request_id: Some(format!("{day}-{user}-{k}")),
                        model: MODELS[(k + t) % MODELS.len()].into(),
                        input_tokens: 400 + 40 * (k % 7) as i32,
                        output_tokens: 80 + 10 * (k % 5) as i32,
                        // Every feature sees every price: prices turn faster than features.
                        cost_cents: if feature(k) == EXPORT {
                            10.0
                        } else {
                            CENTS[(k + k / CENTS.len()) % CENTS.len()]
                        },
                        is_retry: k < retries,
                        created_at: Some(start + chrono::Duration::seconds(second)),
                        ..CostInput::default()
                    });
                }
            };
        for u in 0..10u64 {
            let user = if t == 1 && u == 9 {
                "u-spike".to_owned()
            } else {
                format!("u{u}")
            };
            let mut level = traffic * noise(self.seed, USER_NOISE, [t as u64, age, u, 2]);
            if t == 2 && back <= 11 {
                level *= DRIFT; // the drift: 40 % more over the last twelve days
            }
            let mut n = (CALLS * level).round() as usize;
            let mut retries = 0;
            if t == 1 && u == 9 && back <= 1 {
                // The spike: three times the usual calls on the last two days, retried.
                n *= 3;
                retries = if back == 1 { n / 4 } else { n * 2 / 3 };
            }
            // Which feature a call serves turns with the user and the day, so no feature
            // gains from the rounding of the call counts.
            let turn = (unit(self.seed, [t as u64, age, u, 3]) * 5.0) as usize;
            if t == 2 {
                // The drift is mostly one feature's: 7 calls in 10 rank search results.
                add(&user, n, 0, &|k| {
                    if (k + turn) % 10 < 7 {
                        FEATURES[1]
                    } else {
                        FEATURES[0]
                    }
                });
            } else {
                add(&user, n, retries, &|k| {
                    FEATURES[(k + turn) % FEATURES.len()]
                });
            }
        }
        if t == 0 {
            // Three exports a day fit the hard 35¢ export budget; on the last day it tries six.
            let n = if back == 0 { 6 } else { 3 };
            add("u-export", n, 0, &|_| EXPORT);
        }
        if t == 3 && back == 0 {
            // Over budget: more calls on the last day until the soft daily limit is passed.
            let limit = f64::from(self.soft_limit_cents()) * BUDGET_OVER;
            let mut spent: f64 = out.iter().map(|c| c.cost_cents).sum();
            let mut k = 0;
            while spent < limit {
                let user = format!("u{}", k % 10);
                let extra = CostInput {
                    request_id: Some(format!("{day}-{user}-extra-{k}")),
                    user_id: Some(user),
                    ..out[k % out.len()].clone()
                };
                spent += extra.cost_cents;
                out.push(extra);
                k += 1;
            }
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
    queued: usize,
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
            .map(|i| TenantId::new(format!("tenant-{i:02}")))
            .collect::<costdb::Result<_>>()?,
        first: last - chrono::Duration::days(i64::from(options.days) - 1),
        last,
        seed: options.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        }),
    };
    say!(
        "history: {} tenants × {} days, seed {} (the same seed replays it: --seed {})",
        options.tenants,
        options.days,
        platform.seed,
        platform.seed
    )?;
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
    alerts(&url, &mut found)?;
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

/// Every day but the last, by bulk ingestion, each into its own daily partition (made
/// first, as `costdb upkeep` makes them ahead).
fn history(conn: &mut PgConnection, p: &Platform, found: &mut Findings) -> costdb::Result<()> {
    conn.transaction(|c| PartitionDriver::new(c).create_partitions(p.first, p.last))?;
    let days: Vec<NaiveDate> = p.days().filter(|d| *d < p.last).collect();
    let bar = progress(days.len() as u64, "history");
    for day in days {
        let rows: Vec<CostInput> = (0..p.tenants.len()).flat_map(|t| p.calls(t, day)).collect();
        conn.transaction(|c| CostWriteDriver::new(c).record_costs(&rows))?;
        found.bulk_rows += rows.len();
        bar.inc(1);
    }
    bar.finish_and_clear();
    // What the upkeep's fold would have done meanwhile: the days' deltas into the rollups.
    conn.transaction(|c| RollupDriver::new(c).fold_deltas())?;
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
        w.upsert_budget(
            &p.tenants[0],
            &BudgetScope::Tenant,
            &limits(5_000, Some(120_000), 80, true),
        )?;
        w.upsert_budget(
            &p.tenants[0],
            &BudgetScope::Feature(EXPORT.into()),
            &limits(35, None, 90, true),
        )?;
        w.upsert_budget(
            &p.tenants[3],
            &BudgetScope::Tenant,
            &limits(p.soft_limit_cents(), None, 95, false),
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
        match conn.transaction(|c| {
            AdmissionDriver::new(c).reserve(&TenantId::new(call.tenant_id.as_str())?, &ask)
        })? {
            Admission::Admitted {
                reservation,
                warnings,
            } => {
                found.admitted += 1;
                found.warned += usize::from(!warnings.is_empty());
                conn.transaction(|c| AdmissionDriver::new(c).settle(&reservation, call))?;
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
        let mut workers = WorkerWriteDriver::new(c);
        for tenant in &p.tenants {
            for i in 0..3 {
                let run_id = uuid::Uuid::new_v4().to_string();
                let running = WorkerRunData {
                    task: Some(format!("market research #{i}")),
                    status: Some(WorkerStatus::Running),
                    ..Default::default()
                };
                let run_id = RunId::new(run_id)?;
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

/// The detector over the last three days, day by day, for every tenant at once (the drift
/// rule needs three days in a row), queueing an alert for each new anomaly.
fn detect(conn: &mut PgConnection, p: &Platform, found: &mut Findings) -> costdb::Result<()> {
    let detector = AnomalyDetector::default();
    let days: Vec<NaiveDate> = p.days().filter(|d| (p.last - *d).num_days() < 3).collect();
    let bar = progress(days.len() as u64, "detector");
    for day in days {
        let (anomalies, queued) = conn.transaction(|c| {
            let anomalies = detector.detect_all(c, noon(day))?;
            let queued = AlertDriver::new(c).insert_anomaly_alerts(&anomalies, 10)?;
            Ok::<_, costdb::Error>((anomalies, queued.len()))
        })?;
        found.anomalies.extend(anomalies);
        found.queued += queued;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// A worker's name and, if it led, its term and how many alerts it delivered.
type WorkerOutcome = (String, Option<(i64, usize)>);

/// Two workers compete for the alert worker's leadership over the queued anomaly
/// alerts: the leader delivers, the other stands by.
fn alerts(url: &str, found: &mut Findings) -> Result<(), Failure> {
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
                tenant_id: Some(tenant.to_string()),
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
        .transaction(|c| ProvenanceDriver::new(c).insert_provenance_batch(&runs))?
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
        say!(
            "  {day} {}  {bar:<40}  {:>9}",
            day.format("%a"),
            dollars(*cents)
        )?;
    }

    say!("\nbudgets on {} (as counted by admission):", p.last)?;
    for tenant in &p.tenants {
        let budgets = CostAnomalyDriver::new(conn).fetch_active_budgets(tenant)?;
        if budgets.is_empty() {
            continue;
        }
        let lines = conn.transaction(|c| AdmissionDriver::new(c).reconcile(tenant, p.last))?;
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
        let budget = matches!(
            a.anomaly_type,
            AnomalyType::BudgetWarning | AnomalyType::BudgetExceeded
        );
        // A budget's deviation is its usage of the limit; a spike's or a drift's is how far
        // above its baseline it is.
        let amounts = if budget {
            format!(
                "{} of a {} limit ({} % of it)",
                dollars(a.current_value_cents),
                dollars(a.expected_value_cents),
                percent_text(a.deviation_pct, Some(100.0))
            )
        } else {
            format!(
                "{} against a baseline of {} (+{} %)",
                dollars(a.current_value_cents),
                dollars(a.expected_value_cents),
                percent_text(a.deviation_pct, None)
            )
        };
        say!(
            "  {} {} {:<16} {:<7} {:<6} {:<10} {:<14} {amounts}",
            a.detected_at.date_naive(),
            a.tenant_id,
            a.anomaly_type.as_str(),
            a.entity_type.as_str(),
            a.severity.as_str(),
            a.entity_id.as_deref().unwrap_or("-"),
            a.derived_cause.map_or("-", |c| c.as_str()),
        )?;
    }

    say!("\nalerts: {} queued (one per anomaly)", found.queued)?;
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

    let drift = ProvenanceDriver::new(conn).fetch_drift_stats(None)?;
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
    let differences = RollupDriver::new(conn).fetch_differences(&RollupRange::default())?;
    say!(
        "  rollups: {} key(s) differ from the records ({})",
        differences.len(),
        if differences.is_empty() {
            "the spend above was read from them"
        } else {
            "run `costdb rollup verify`"
        }
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
        "cost_rollup_hourly",
        "cost_rollup_daily",
        "cost_rollup_deltas",
        "cost_rollup_delta_batches",
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
