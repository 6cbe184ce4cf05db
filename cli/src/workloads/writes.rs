//! Write workloads: per-row inserts, bulk ingestion, one record per transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::prelude::*;

use super::{without_rollups, Combine, Ctx, Scale, Target, Workload};
use costdb::drivers::{CostWriteDriver, RunCost, WorkerWriteDriver};
use costdb::models::ids;
use costdb::models::CostInput;
use costdb::schema::cost_records;
use costdb::types::{RunId, TenantId};
use costdb::Error;
use costdb_testkit::Result;

/// Distinguishes the rows of every trial in a process, so committed rows never collide.
static BATCH: AtomicU64 = AtomicU64::new(0);

/// `n` LLM calls for 100 tenants, with unique request ids, over the last `n` seconds.
pub fn cost_inputs(n: usize) -> Vec<CostInput> {
    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
    let start = Utc::now() - chrono::Duration::seconds(n as i64);
    (0..n)
        .map(|i| CostInput {
            tenant_id: format!("bench-tenant-{:03}", i % 100),
            user_id: Some(format!("user-{}", i % 50)),
            feature_tag: Some(format!("feature.{}", i % 10)),
            request_id: Some(format!("req-{batch}-{i}")),
            workflow_id: Some("wf".into()),
            skill_id: Some("llm_invoke".into()),
            model: ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"][i % 3].into(),
            input_tokens: 500 + (i % 1000) as i32,
            output_tokens: 200,
            cost_cents: 0.37 * (i % 100) as f64,
            is_retry: i % 20 == 0,
            created_at: Some(start + chrono::Duration::seconds(i as i64)),
        })
        .collect()
}

/// Runs `work` in a transaction that is rolled back, and returns how long it all took.
pub(super) fn rolled_back(
    conn: &mut PgConnection,
    work: impl FnOnce(&mut PgConnection) -> Result<()>,
) -> Result<Duration> {
    let started = Instant::now();
    let mut outcome = Ok(());
    let _ = conn.transaction::<(), Error, _>(|c| {
        outcome = work(c);
        Err(Error::Database(diesel::result::Error::RollbackTransaction))
    });
    outcome.map(|()| started.elapsed())
}

/// The baseline of the per-row workloads: a plain `INSERT … VALUES ($1 … $13)` of the
/// table's one insert shape, a fixed text that Diesel prepares once and executes once per
/// row.
fn plain_inserts(conn: &mut PgConnection, rows: &[CostInput]) -> Result<()> {
    let now = Utc::now();
    for cost in rows {
        let id = ids::cost_record_id();
        diesel::insert_into(cost_records::table)
            .values(cost.as_new_record(&id, now))
            .execute(conn)?;
    }
    Ok(())
}

/// Binary `COPY … FROM STDIN` of `rows`, with ids made in Rust as the driver makes them.
pub fn copy_in(conn: &mut PgConnection, rows: &[CostInput]) -> Result<usize> {
    let ids: Vec<String> = rows.iter().map(|_| ids::cost_record_id()).collect();
    let now = Utc::now();
    let copy: Vec<_> = rows
        .iter()
        .zip(&ids)
        .map(|(c, id)| c.as_new_record(id, now))
        .collect();
    Ok(diesel::copy_from(cost_records::table)
        .from_insertable(copy)
        .execute(conn)?)
}

/// Rounds of the write workloads: each round is a tenth of the work, in its own
/// transaction.
const WRITE_ROUNDS: usize = 10;

/// Records `cost` as a worker run's cost, its request id standing for the run.
fn record_run_cost(conn: &mut PgConnection, cost: &CostInput) -> Result<()> {
    let run = RunCost {
        model: cost.model.clone(),
        input_tokens: cost.input_tokens,
        output_tokens: cost.output_tokens,
        cost_cents: cost.cost_cents,
    };
    let tenant = TenantId::new(cost.tenant_id.as_str())?;
    let run_id = RunId::new(cost.request_id.clone().unwrap_or_default())?;
    WorkerWriteDriver::new(conn).insert_cost_record(&tenant, &run_id, &run)?;
    Ok(())
}

/// `per-row`: one call per record in one transaction, against the prepared INSERT.
struct PerRow {
    rows: usize,
    worker: bool,
}

impl Workload for PerRow {
    fn name(&self) -> String {
        if self.worker {
            format!(
                "per-row {WRITE_ROUNDS}×{}: WorkerWriteDriver::insert_cost_record",
                self.rows / WRITE_ROUNDS
            )
        } else {
            format!(
                "per-row {WRITE_ROUNDS}×{}: create_cost_record",
                self.rows / WRITE_ROUNDS
            )
        }
    }
    fn baseline_name(&self) -> &'static str {
        "prepared INSERT, table without rollups"
    }
    fn target(&self) -> Target {
        Target::AtLeast(0.75)
    }
    fn rounds(&self) -> usize {
        WRITE_ROUNDS
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let rows = cost_inputs(self.rows / WRITE_ROUNDS);
        let worker = self.worker;
        rolled_back(&mut ctx.conn, |c| {
            for cost in &rows {
                if worker {
                    record_run_cost(c, cost)?;
                } else {
                    CostWriteDriver::new(c).insert_cost_record(cost)?;
                }
            }
            Ok(())
        })
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let rows = cost_inputs(self.rows / WRITE_ROUNDS);
        without_rollups(&mut ctx.conn, |conn| {
            rolled_back(conn, |c| plain_inserts(c, &rows))
        })
    }
}

/// `bulk`: `record_costs` in batches against binary COPY of the same rows, contender and
/// baseline in turn round by round, so a change in the machine's load hits both. Batches
/// smaller than the work run as rounds of a batch each (at most [`WRITE_ROUNDS`]), which a
/// trial adds up; one call of at most [`REPEATED_UP_TO`] records is repeated
/// [`REPEATS`] times, and a trial takes the median.
struct Bulk {
    rows: usize,
    batch: usize,
}

/// The largest single call that the bulk workload repeats within a trial.
const REPEATED_UP_TO: usize = 10_000;

/// How many times a trial repeats a single call of up to [`REPEATED_UP_TO`] records.
const REPEATS: usize = 5;

impl Bulk {
    /// Whether the work is split into rounds of a batch each.
    fn split(&self) -> bool {
        self.batch < self.rows
    }
    /// The records of one round.
    fn round_rows(&self) -> usize {
        if self.split() {
            self.rows / self.rounds()
        } else {
            self.rows
        }
    }
}

impl Workload for Bulk {
    fn name(&self) -> String {
        format!("bulk {}: record_costs × {}", self.rows, self.batch)
    }
    fn baseline_name(&self) -> &'static str {
        "binary COPY, table without rollups"
    }
    fn target(&self) -> Target {
        Target::AtLeast(0.8)
    }
    fn rounds(&self) -> usize {
        if self.split() {
            (self.rows / self.batch).clamp(1, WRITE_ROUNDS)
        } else if self.rows <= REPEATED_UP_TO {
            REPEATS
        } else {
            1
        }
    }
    fn per_trial(&self) -> Combine {
        if self.split() {
            Combine::Sum
        } else {
            Combine::Median
        }
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let rows = cost_inputs(self.round_rows());
        let batch = self.batch;
        rolled_back(&mut ctx.conn, |c| {
            for chunk in rows.chunks(batch) {
                CostWriteDriver::new(c).record_costs(chunk)?;
            }
            Ok(())
        })
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let rows = cost_inputs(self.round_rows());
        without_rollups(&mut ctx.conn, |conn| {
            rolled_back(conn, |c| copy_in(c, &rows).map(drop))
        })
    }
}

/// `one per transaction`: each record committed on its own, against pgbench.
struct OnePerTransaction {
    rows: usize,
}

pub(super) const PGBENCH_SCRIPT: &str = "\
INSERT INTO cost_records (id, tenant_id, user_id, feature_tag, request_id, workflow_id, \
skill_id, model, input_tokens, output_tokens, cost_cents, is_retry, created_at) \
VALUES ('cr_' || substr(md5(random()::text), 1, 16), 'bench-tenant-007', NULL, NULL, \
gen_random_uuid()::text, 'business-builder', 'llm_invoke', 'gpt-4o', 500, 200, 1.5, false, \
now());\n";

impl Workload for OnePerTransaction {
    fn name(&self) -> String {
        format!(
            "one per transaction {WRITE_ROUNDS}×{}: insert_cost_record",
            self.rows / WRITE_ROUNDS
        )
    }
    fn baseline_name(&self) -> &'static str {
        "pgbench INSERT, 1 client"
    }
    fn target(&self) -> Target {
        Target::Report
    }
    fn rounds(&self) -> usize {
        WRITE_ROUNDS
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let rows = cost_inputs(self.rows / WRITE_ROUNDS);
        let started = Instant::now();
        for cost in &rows {
            ctx.conn.transaction(|c| record_run_cost(c, cost))?;
        }
        Ok(started.elapsed())
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        super::pgbench(ctx, PGBENCH_SCRIPT, 1, self.rows / WRITE_ROUNDS)
    }
}

/// `fenced`: a leader's writes, each checking its fencing term in its transaction, against
/// the same transactions without the check.
struct Fenced {
    rows: usize,
    term: Option<i64>,
}

const FENCED_LOCK: i64 = 7_999;

impl Fenced {
    fn writes(&self, ctx: &mut Ctx, fenced: bool) -> Result<Duration> {
        let rows = cost_inputs(self.rows / WRITE_ROUNDS);
        let term = self.term.unwrap_or_default();
        let started = Instant::now();
        for cost in &rows {
            ctx.conn.transaction(|c| {
                if fenced {
                    costdb::leader::check_term(c, FENCED_LOCK, term)?;
                }
                CostWriteDriver::new(c).insert_cost_record(cost)
            })?;
        }
        Ok(started.elapsed())
    }
}

impl Workload for Fenced {
    fn name(&self) -> String {
        format!(
            "fenced {WRITE_ROUNDS}×{}: check_term + create_cost_record",
            self.rows / WRITE_ROUNDS
        )
    }
    fn baseline_name(&self) -> &'static str {
        "the same transactions unfenced"
    }
    fn target(&self) -> Target {
        Target::Report
    }
    fn rounds(&self) -> usize {
        WRITE_ROUNDS
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        let guard = costdb::leader::LeaderGuard::acquire(
            &ctx.url,
            FENCED_LOCK,
            "bench",
            Duration::from_secs(5),
        )?
        .ok_or_else(|| Error::Conflict("the benchmark's lock is held".into()))?;
        self.term = Some(guard.term());
        Ok(())
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        self.writes(ctx, true)
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        self.writes(ctx, false)
    }
}

/// `hot key`: many threads each committing one call at a time, all of one tenant, model
/// and feature (the rollups' hottest key), against the same records committed one by one
/// by a prepared `INSERT` into the table without rollups (the driver's own statement
/// would still write its delta there).
struct HotKey {
    threads: usize,
    per_thread: usize,
    conns: Vec<PgConnection>,
    round: usize,
}

impl HotKey {
    /// One round through the driver, or (`plain`) through the prepared `INSERT`.
    fn run(&mut self, plain: bool) -> Result<Duration> {
        self.round += 1;
        let (round, per_thread) = (self.round, self.per_thread);
        let (elapsed, _) = super::on_threads(&mut self.conns, move |t, conn| {
            for n in 0..per_thread {
                let cost = CostInput {
                    tenant_id: "bench-hot-tenant".into(),
                    feature_tag: Some("chat".into()),
                    request_id: Some(format!("hot-{round}-{t}-{n}")),
                    model: "gpt-4o".into(),
                    input_tokens: 500,
                    output_tokens: 200,
                    cost_cents: 1.5,
                    ..CostInput::default()
                };
                if plain {
                    conn.transaction(|c| plain_inserts(c, std::slice::from_ref(&cost)))?;
                } else {
                    conn.transaction(|c| CostWriteDriver::new(c).insert_cost_record(&cost))?;
                }
            }
            Ok(Vec::new())
        })?;
        Ok(elapsed)
    }
}

impl Workload for HotKey {
    fn name(&self) -> String {
        format!(
            "hot key: {} threads × {} per-call commits of 1 tenant, model, feature",
            self.threads, self.per_thread
        )
    }
    fn baseline_name(&self) -> &'static str {
        "the same records by prepared INSERT, table without rollups"
    }
    fn target(&self) -> Target {
        Target::AtLeast(0.8)
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        self.conns = (0..self.threads)
            .map(|_| costdb::db::connect(&ctx.url))
            .collect::<costdb::Result<_>>()?;
        Ok(())
    }
    fn contender(&mut self, _ctx: &mut Ctx) -> Result<Duration> {
        self.run(false)
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        without_rollups(&mut ctx.conn, |_| self.run(true))
    }
}

/// The write workloads at `scale`.
pub fn write_workloads(scale: Scale) -> Vec<Box<dyn Workload>> {
    let rows = scale.of(10_000);
    vec![
        Box::new(PerRow {
            rows,
            worker: false,
        }),
        Box::new(PerRow { rows, worker: true }),
        Box::new(Bulk {
            rows,
            batch: scale.of(1_000),
        }),
        Box::new(Bulk { rows, batch: rows }),
        Box::new(Bulk {
            rows: scale.of(200_000),
            batch: scale.of(200_000),
        }),
        Box::new(OnePerTransaction {
            rows: scale.of(1_000),
        }),
        Box::new(Fenced {
            rows: scale.of(1_000),
            term: None,
        }),
        Box::new(HotKey {
            threads: 64,
            per_thread: scale.of(100),
            conns: Vec::new(),
            round: 0,
        }),
    ]
}
