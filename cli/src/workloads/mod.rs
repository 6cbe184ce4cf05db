//! Benchmark workloads shared by `costdb bench` and `benches/`: each one measures a costdb
//! path and a real PostgreSQL path for the same work, in the same run, interleaved.
//!
//! Figures are ratios, because the machines this runs on are shared and noisy: a write
//! workload's ratio is baseline time ÷ costdb time (1.0 = as fast as PostgreSQL's own
//! path), a read workload's is costdb time ÷ the server's execution time (1.0 = no client
//! overhead).

mod admission;
mod alerts;
mod detector;
mod partitions;
mod provenance;
mod reads;
mod recorder;
mod writes;

use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::PgConnection;
use serde::Serialize;

use costdb_testkit::Result;

pub use admission::admission_workloads;
pub use alerts::alert_workloads;
pub use detector::detector_workloads;
pub use partitions::partition_workloads;
pub use provenance::provenance_workloads;
pub use reads::{dashboard_workloads, read_workloads};
pub use recorder::recorder_workloads;
pub use writes::write_workloads;

/// Sizes of a run: full, or everything ÷ 10 (`--quick`, used by the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    divisor: usize,
}

impl Scale {
    /// The sizes the README's figures are measured at.
    pub const FULL: Scale = Scale { divisor: 1 };
    /// Every size ÷ 10.
    pub const QUICK: Scale = Scale { divisor: 10 };

    /// `n` at this scale (at least 1).
    pub fn of(self, n: usize) -> usize {
        (n / self.divisor).max(1)
    }
}

/// What a workload runs against.
#[allow(missing_debug_implementations)] // PgConnection has no Debug
pub struct Ctx {
    /// A connection to the benchmark's own database (UTC session).
    pub conn: PgConnection,
    /// The database's URL (for `pgbench`).
    pub url: String,
    /// The `pgbench` to run, when one was found.
    pub pgbench: Option<PathBuf>,
    /// The sizes of this run.
    pub scale: Scale,
}

/// The figure a workload must reach.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Target {
    /// The ratio must be at least this.
    AtLeast(f64),
    /// The ratio must be at most this.
    AtMost(f64),
    /// Reported, no target.
    Report,
}

impl Target {
    /// Whether `ratio` meets the target (`None` when there is none).
    pub fn met(self, ratio: f64) -> Option<bool> {
        match self {
            Target::AtLeast(t) => Some(ratio >= t),
            Target::AtMost(t) => Some(ratio <= t),
            Target::Report => None,
        }
    }

    /// `≥ 0.90×`, `≤ 1.10×` or `-`.
    pub fn label(self) -> String {
        match self {
            Target::AtLeast(t) => format!("≥ {t:.2}×"),
            Target::AtMost(t) => format!("≤ {t:.2}×"),
            Target::Report => "-".into(),
        }
    }
}

/// Which way a workload's ratio is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Baseline time ÷ costdb time: higher is better (writes).
    Speed,
    /// costdb time ÷ baseline time: lower is better (reads).
    Overhead,
}

/// One workload: a costdb path and the PostgreSQL path it is compared with.
pub trait Workload {
    /// Short name, e.g. `per-row`.
    fn name(&self) -> String;
    /// What the baseline is, e.g. `prepared INSERT`.
    fn baseline_name(&self) -> &'static str;
    /// The figure to reach.
    fn target(&self) -> Target;
    /// How the ratio is computed.
    fn direction(&self) -> Direction {
        Direction::Speed
    }
    /// Runs once before the trials (data loading, warm-up).
    fn prepare(&mut self, _ctx: &mut Ctx) -> Result<()> {
        Ok(())
    }
    /// Rounds per trial: contender and baseline alternate round by round, so a change in
    /// the machine's load during a trial hits both alike.
    fn rounds(&self) -> usize {
        1
    }
    /// How a trial's rounds make its time.
    fn per_trial(&self) -> Combine {
        Combine::Sum
    }
    /// Time of one costdb round.
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration>;
    /// Time of one baseline round.
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration>;
}

/// How the rounds of a trial make the trial's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// The total: the rounds are parts of one piece of work.
    Sum,
    /// The median: the rounds are repeated calls.
    Median,
}

impl Combine {
    fn apply(self, rounds: Vec<Duration>) -> Duration {
        match self {
            Combine::Sum => rounds.iter().sum(),
            Combine::Median => median(rounds),
        }
    }
}

/// Every workload at `scale`: writes, provenance, then reads (which load their data).
pub fn all_workloads(scale: Scale) -> Vec<Box<dyn Workload>> {
    let mut all = write_workloads(scale);
    all.extend(provenance_workloads(scale));
    all.extend(alert_workloads(scale));
    all.extend(partition_workloads(scale));
    all.extend(recorder_workloads(scale));
    all.extend(admission_workloads(scale));
    all.extend(detector_workloads(scale));
    all.extend(read_workloads(scale));
    all
}

/// The result of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Workload name.
    pub workload: String,
    /// What the baseline is.
    pub baseline_name: &'static str,
    /// Median costdb time over the trials, in milliseconds.
    pub costdb_ms: f64,
    /// Median baseline time over the trials, in milliseconds.
    pub baseline_ms: f64,
    /// The ratio (see [`Direction`]).
    pub ratio: f64,
    /// The target.
    pub target: Target,
    /// Whether the target is met (`None`: no target).
    pub met: Option<bool>,
}

/// Runs `script` through `pgbench -M prepared` with `clients` clients of `transactions`
/// transactions each on the benchmark's database, and returns the time those took by
/// pgbench's own count (without connecting).
pub fn pgbench(ctx: &Ctx, script: &str, clients: usize, transactions: usize) -> Result<Duration> {
    pgbench_with(ctx, script, clients, transactions, &[])
}

/// [`pgbench`] with variables: `:name` in `script` is sent as a bound parameter whose
/// text is the value.
pub fn pgbench_with(
    ctx: &Ctx,
    script: &str,
    clients: usize,
    transactions: usize,
    vars: &[(&str, String)],
) -> Result<Duration> {
    use costdb_testkit::Error;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SCRIPTS: AtomicU64 = AtomicU64::new(0);
    let bin = ctx.pgbench.clone().ok_or_else(|| {
        Error::embedded(
            "pgbench was not found: install PostgreSQL's client programs \
             (Debian: postgresql-client) or set COSTDB_PG_BIN",
            None,
        )
    })?;
    let file = std::env::temp_dir().join(format!(
        "costdb-bench-{}-{}.sql",
        std::process::id(),
        SCRIPTS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, script)
        .map_err(|e| Error::embedded("cannot write the pgbench script", Some(e)))?;
    let out = std::process::Command::new(bin)
        .args(["-n", "-M", "prepared", "-c"])
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.to_string())
        .arg("-t")
        .arg(transactions.to_string())
        .arg("-f")
        .arg(&file)
        .args(vars.iter().map(|(name, value)| format!("-D{name}={value}")))
        .arg(&ctx.url)
        .output();
    let _ = std::fs::remove_file(&file);
    let out = out.map_err(|e| Error::embedded("cannot run pgbench", Some(e)))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|_| out.status.success())
        .ok_or_else(|| {
            Error::embedded(
                format!(
                    "pgbench failed: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                None,
            )
        })?;
    Ok(Duration::from_secs_f64(
        (clients * transactions) as f64 / tps,
    ))
}

/// How many trials each workload runs; the order of contender and baseline alternates.
pub const TRIALS: usize = 3;

fn median(v: Vec<Duration>) -> Duration {
    percentile(v, 0.5)
}

/// The `q` quantile (0 to 1) of `v`, nearest rank; zero for no values.
pub fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Runs `work` with the trigger that keeps the rollups of `cost_records` swapped for one
/// that only claims request keys: the same table, its indexes, constraints and
/// idempotency, without the rollups' writes — the baseline of what the rollups cost. The
/// trigger is back whatever `work` returns.
pub fn without_rollups<T>(
    conn: &mut PgConnection,
    work: impl FnOnce(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    conn.batch_execute(
        "ALTER TABLE cost_records DISABLE TRIGGER trg_cost_records_fold; \
         CREATE TRIGGER bench_claim_only AFTER INSERT ON cost_records \
             REFERENCING NEW TABLE AS new_records \
             FOR EACH STATEMENT EXECUTE FUNCTION costdb_fold_cost_records('claim only')",
    )?;
    let result = work(conn);
    conn.batch_execute(
        "DROP TRIGGER bench_claim_only ON cost_records; \
         ALTER TABLE cost_records ENABLE TRIGGER trg_cost_records_fold",
    )?;
    result
}

/// Creates the daily partitions of cost records from `days` days before today through
/// tomorrow, as `costdb upkeep` would have: data loaded into the past lands in its day's
/// partition, not in the default one.
pub fn day_partitions(conn: &mut PgConnection, days: i64) -> Result<()> {
    use diesel::Connection;
    let today = chrono::Utc::now().date_naive();
    conn.transaction::<_, costdb::Error, _>(|c| {
        costdb::drivers::PartitionDriver::new(c).create_partitions(
            today - chrono::Duration::days(days),
            today + chrono::Duration::days(1),
        )?;
        Ok(())
    })?;
    Ok(())
}

/// Runs `work(i, state)` on one thread per state (e.g. a connection), all started together; returns the
/// time until the last finished and every latency the threads reported.
pub fn on_threads<T, F>(conns: &mut Vec<T>, work: F) -> Result<(Duration, Vec<Duration>)>
where
    T: Send + 'static,
    F: Fn(usize, &mut T) -> Result<Vec<Duration>> + Send + Sync + 'static,
{
    let work = std::sync::Arc::new(work);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(conns.len() + 1));
    let handles: Vec<_> = conns
        .drain(..)
        .enumerate()
        .map(|(i, mut conn)| {
            let (work, barrier) = (work.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let result = work(i, &mut conn);
                (conn, result)
            })
        })
        .collect();
    barrier.wait();
    let started = std::time::Instant::now();
    let mut latencies = Vec::new();
    let mut first_error = None;
    for h in handles {
        let (conn, result) = h.join().expect("a benchmark thread panicked");
        conns.push(conn);
        match result {
            Ok(l) => latencies.extend(l),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    let elapsed = started.elapsed();
    match first_error {
        Some(e) => Err(e),
        None => Ok((elapsed, latencies)),
    }
}

/// Runs `workload` on a vacuumed database: [`TRIALS`] trials of [`Workload::rounds`]
/// rounds, contender and baseline alternating round by round (who goes first rotates);
/// reports the medians of the trials and their ratio.
pub fn measure(ctx: &mut Ctx, workload: &mut dyn Workload) -> Result<Figure> {
    // Every workload starts without the dead rows that the trials before it left (they
    // roll their writes back), as autovacuum would leave the tables in service: else a
    // figure depends on which workloads ran before it (bulk × 1,000 measured 0.70 after
    // the per-row workloads and 0.78 on its own).
    ctx.conn.batch_execute("VACUUM")?;
    workload.prepare(ctx)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for trial in 0..TRIALS {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..workload.rounds().max(1) {
            if (trial + round) % 2 == 0 {
                a.push(workload.contender(ctx)?);
                b.push(workload.baseline(ctx)?);
            } else {
                b.push(workload.baseline(ctx)?);
                a.push(workload.contender(ctx)?);
            }
        }
        ours.push(workload.per_trial().apply(a));
        theirs.push(workload.per_trial().apply(b));
    }
    let (a, b) = (median(ours), median(theirs));
    let ratio = match workload.direction() {
        Direction::Speed => b.as_secs_f64() / a.as_secs_f64(),
        Direction::Overhead => a.as_secs_f64() / b.as_secs_f64(),
    };
    let target = workload.target();
    Ok(Figure {
        workload: workload.name(),
        baseline_name: workload.baseline_name(),
        costdb_ms: a.as_secs_f64() * 1e3,
        baseline_ms: b.as_secs_f64() * 1e3,
        ratio,
        target,
        met: target.met(ratio),
    })
}
