//! Budget admission: threads reserving and settling against one hot hard budget, beside
//! pgbench running the bare conditional `UPDATE` of one counter row with as many clients
//! (the upper bound of any admission that touches that row).

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::{percentile, pgbench, Ctx, Scale, Target, Workload};
use costdb::admission::{
    Admission, AdmissionConfig, AdmissionDriver, AdmissionService, Reservation, ReserveInput,
};
use costdb::db;
use costdb::drivers::{BudgetLimits, CostWriteDriver};
use costdb::models::CostInput;
use costdb::types::{BudgetScope, TenantId};
use costdb::Error;
use costdb_testkit::Result;

const TENANT: &str = "bench-admission";
/// The baseline's counter belongs to a budget of its own, so the two never share a row.
const BASELINE_TENANT: &str = "bench-admission-baseline";

struct HotBudget {
    threads: usize,
    per_thread: usize,
    conns: Vec<PgConnection>,
    baseline_budget: (String, String),
    now: DateTime<Utc>,
    round: usize,
    /// Admissions per second and p99 latency of reserve + settle, of the last round.
    rate: f64,
    p99: Duration,
}

fn hard_budget(conn: &mut PgConnection, tenant: &str) -> Result<String> {
    conn.transaction(|c| {
        Ok(CostWriteDriver::new(c)
            .upsert_budget(
                &TenantId::new(tenant)?,
                &BudgetScope::Tenant,
                &BudgetLimits {
                    daily_limit_cents: Some(i32::MAX),
                    monthly_limit_cents: None,
                    warn_threshold_pct: 80,
                    hard_limit_enabled: true,
                },
            )?
            .id)
    })
}

/// The request of one admission: a 2¢ estimate for `now`.
fn request(request_id: String, now: DateTime<Utc>) -> ReserveInput {
    ReserveInput {
        request_id,
        feature_tag: None,
        user_id: None,
        estimated_cents: 2.0,
        expires_at: now + chrono::Duration::minutes(10),
        now,
    }
}

/// Its actual cost, 1.5¢.
fn actual(tenant: &str, now: DateTime<Utc>) -> CostInput {
    CostInput {
        tenant_id: tenant.into(),
        model: "gpt-4o-mini".into(),
        input_tokens: 500,
        output_tokens: 80,
        cost_cents: 1.5,
        created_at: Some(now),
        ..CostInput::default()
    }
}

/// The reservation of an admission; a refusal is an error (the budget has no limit to
/// speak of).
fn admitted(admission: Admission) -> Result<Reservation> {
    match admission {
        Admission::Admitted { reservation, .. } => Ok(reservation),
        Admission::Refused { budget } => {
            Err(Error::Conflict(format!("refused by {}", budget.budget_id)).into())
        }
    }
}

/// One admission: reserve in one transaction, settle in another, as a service does
/// around its LLM call.
fn admit(conn: &mut PgConnection, request_id: String, now: DateTime<Utc>) -> Result<()> {
    let input = request(request_id, now);
    let reservation = admitted(
        conn.transaction(|c| AdmissionDriver::new(c).reserve(&TenantId::new(TENANT)?, &input))?,
    )?;
    let actual = actual(TENANT, now);
    conn.transaction(|c| AdmissionDriver::new(c).settle(&reservation, &actual))?;
    Ok(())
}

/// The baseline's budget (of a tenant of its own, so it never shares a row with the
/// contender) with today's daily counter in place; returns its tenant and id.
fn baseline_budget(
    conn: &mut PgConnection,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<(String, String)> {
    let id = hard_budget(conn, tenant)?;
    diesel::sql_query(
        "INSERT INTO budget_counters (tenant_id, budget_id, period, window_start) \
         VALUES ($1, $2, 'daily', $3) ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::Text, _>(tenant)
    .bind::<diesel::sql_types::Text, _>(&id)
    .bind::<diesel::sql_types::Date, _>(now.date_naive())
    .execute(conn)?;
    Ok((tenant.to_owned(), id))
}

/// pgbench's bare conditional `UPDATE` of the daily counter of `budget` (tenant, id),
/// `per_client` times on each of `clients`.
fn bare_update(
    ctx: &mut Ctx,
    (tenant, budget): &(String, String),
    now: DateTime<Utc>,
    clients: usize,
    per_client: usize,
) -> Result<Duration> {
    let script = format!(
        "UPDATE budget_counters SET reserved_cents = reserved_cents + 2 \
         WHERE tenant_id = '{tenant}' AND budget_id = '{budget}' AND period = 'daily' AND window_start = '{}' \
           AND spent_cents + reserved_cents + 2 <= 2147483647 RETURNING reserved_cents;\n",
        now.date_naive()
    );
    pgbench(ctx, &script, clients, per_client)
}

impl Workload for HotBudget {
    fn name(&self) -> String {
        format!(
            "admission: {} threads reserve + settle on one budget ({:.0}/s, p99 {:.1} ms)",
            self.threads,
            self.rate,
            self.p99.as_secs_f64() * 1e3
        )
    }
    fn baseline_name(&self) -> &'static str {
        "pgbench, the bare conditional UPDATE"
    }
    fn target(&self) -> Target {
        Target::Report
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        hard_budget(&mut ctx.conn, TENANT)?;
        self.baseline_budget = baseline_budget(&mut ctx.conn, BASELINE_TENANT, self.now)?;
        self.conns = (0..self.threads)
            .map(|_| db::connect(&ctx.url))
            .collect::<costdb::Result<_>>()?;
        Ok(())
    }
    fn contender(&mut self, _ctx: &mut Ctx) -> Result<Duration> {
        self.round += 1;
        let (round, now, per_thread) = (self.round, self.now, self.per_thread);
        let (elapsed, latencies) = super::on_threads(&mut self.conns, move |i, conn| {
            (0..per_thread)
                .map(|n| {
                    let started = std::time::Instant::now();
                    admit(conn, format!("r{round}-{i}-{n}"), now)?;
                    Ok(started.elapsed())
                })
                .collect()
        })?;
        self.rate = latencies.len() as f64 / elapsed.as_secs_f64();
        self.p99 = percentile(latencies, 0.99);
        Ok(elapsed)
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let (budget, now) = (self.baseline_budget.clone(), self.now);
        bare_update(ctx, &budget, now, self.threads, self.per_thread)
    }
}

/// The same admissions through an [`AdmissionService`]: callers on as many threads share
/// one worker that decides and commits their requests in batches.
struct Service {
    threads: usize,
    per_thread: usize,
    tenant: String,
    service: Option<AdmissionService>,
    baseline_budget: (String, String),
    now: DateTime<Utc>,
    round: usize,
    rate: f64,
    p99: Duration,
    batch: f64,
    /// The ceiling's admissions per second and the baseline's, of the last round.
    ceiling: f64,
    baseline_rate: f64,
    /// Ceiling runs so far (their request ids differ).
    ceiling_runs: usize,
}

impl Service {
    fn service(&self) -> Result<&AdmissionService> {
        self.service
            .as_ref()
            .ok_or_else(|| Error::invalid("service", "prepare() was not called").into())
    }
}

/// One admission through the service: reserve, then settle at the actual cost.
fn admit_through(
    svc: &AdmissionService,
    tenant: &TenantId,
    request_id: String,
    now: DateTime<Utc>,
) -> Result<()> {
    let reservation = admitted(svc.reserve(tenant, &request(request_id, now))?)?;
    let actual = actual(tenant, now);
    svc.settle(&reservation, &actual)?;
    Ok(())
}

impl Workload for Service {
    fn name(&self) -> String {
        format!(
            "admission service: {} threads reserve + settle on one budget ({:.0}/s, p99 {:.1} ms, \
             {:.1} requests per commit; ceiling, 1 connection × {}-request batches: {:.0}/s = \
             {:.2}× the baseline)",
            self.threads,
            self.rate,
            self.p99.as_secs_f64() * 1e3,
            self.batch,
            self.threads,
            self.ceiling,
            self.ceiling / self.baseline_rate.max(f64::MIN_POSITIVE)
        )
    }
    fn baseline_name(&self) -> &'static str {
        "pgbench, the bare conditional UPDATE"
    }
    fn target(&self) -> Target {
        Target::AtLeast(if self.threads >= 64 { 3.0 } else { 1.5 })
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        hard_budget(&mut ctx.conn, &self.tenant)?;
        let baseline_tenant = format!("{}-baseline", self.tenant);
        self.baseline_budget = baseline_budget(&mut ctx.conn, &baseline_tenant, self.now)?;
        self.service = Some(AdmissionService::start(
            &ctx.url,
            AdmissionConfig::default(),
        )?);
        Ok(())
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        self.round += 1;
        let (round, now, per_thread) = (self.round, self.now, self.per_thread);
        let tenant = TenantId::new(self.tenant.as_str())?;
        let before = self.service()?.stats();
        let mut callers: Vec<(AdmissionService, TenantId)> = (0..self.threads)
            .map(|_| Ok((self.service()?.clone(), tenant.clone())))
            .collect::<Result<_>>()?;
        let (elapsed, latencies) = super::on_threads(&mut callers, move |i, (svc, tenant)| {
            (0..per_thread)
                .map(|n| {
                    let started = std::time::Instant::now();
                    admit_through(svc, tenant, format!("s{round}-{i}-{n}"), now)?;
                    Ok(started.elapsed())
                })
                .collect()
        })?;
        let after = self.service()?.stats();
        self.batch = (after.requests - before.requests) as f64
            / (after.batches - before.batches).max(1) as f64;
        self.rate = latencies.len() as f64 / elapsed.as_secs_f64();
        self.p99 = percentile(latencies, 0.99);
        // Never over the limit, and the counters equal the records.
        let mut conn = db::connect(&ctx.url)?;
        let lines =
            conn.transaction(|c| AdmissionDriver::new(c).reconcile(&tenant, now.date_naive()))?;
        for line in lines {
            if !line.matches() || line.counted_cents + line.reserved_cents > f64::from(i32::MAX) {
                return Err(Error::Conflict(format!("admission service off: {line:?}")).into());
            }
        }
        Ok(elapsed)
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let (budget, now) = (self.baseline_budget.clone(), self.now);
        let took = bare_update(ctx, &budget, now, self.threads, self.per_thread)?;
        let admissions = (self.threads * self.per_thread) as f64;
        self.baseline_rate = admissions / took.as_secs_f64();
        // Measured beside the baseline, outside both timings; reported in the name.
        let ceiling = self.ceiling(ctx)?;
        self.ceiling = admissions / ceiling.as_secs_f64();
        Ok(took)
    }
}

impl Service {
    /// The service's ceiling: one connection sending the statement of a common batch,
    /// each holding as many requests as there are threads (half of them new reservations,
    /// half settlements of the previous batch's), with no client work between them: the
    /// round's admissions in `2 × per_thread` statements.
    fn ceiling(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        use diesel::sql_types::{Array, Bool, Date, Double, Int4, Nullable, Text, Timestamptz};
        self.ceiling_runs += 1;
        let (half, now, round) = (self.threads / 2, self.now, self.ceiling_runs);
        let batches = 2 * self.per_thread;
        let request_id = |b: usize, i: usize| format!("ceil{round}-{b}-{i}");
        // Ids of their own, apart from every other workload's.
        let threads = self.threads;
        let reservation = |b: usize, i: usize| format!("rsv_ceil_{threads}_{round}_{b}_{i}");
        let record = |b: usize, i: usize| format!("cr_ceil_{threads}_{round}_{b}_{i}");
        // Every request and cost the same as the service's callers send.
        let (ask, cost) = (request(String::new(), now), actual(&self.tenant, now));
        let mut conn = db::connect(&ctx.url)?;
        let started = std::time::Instant::now();
        for b in 0..=batches {
            // Batch b reserves `half` new requests and settles batch b - 1's.
            let new = if b < batches { half } else { 0 };
            let settled = if b > 0 { half } else { 0 };
            let texts = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>();
            let none = |n: usize| vec![None::<String>; n];
            let previous = b.wrapping_sub(1);
            diesel::sql_query(
                "SELECT count(*) FROM costdb_admit_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)",
            )
            .bind::<Array<Text>, _>(vec![self.tenant.clone(); new])
            .bind::<Array<Nullable<Text>>, _>(none(new))
            .bind::<Array<Nullable<Text>>, _>(none(new))
            .bind::<Array<Date>, _>(vec![now.date_naive(); new])
            .bind::<Array<Double>, _>(vec![ask.estimated_cents; new])
            .bind::<Array<Text>, _>(texts(new, &|i| reservation(b, i)))
            .bind::<Array<Text>, _>(texts(new, &|i| request_id(b, i)))
            .bind::<Array<Timestamptz>, _>(vec![ask.expires_at; new])
            .bind::<Array<Text>, _>(texts(settled, &|i| reservation(previous, i)))
            .bind::<Array<Text>, _>(texts(settled, &|i| record(previous, i)))
            .bind::<Array<Text>, _>(vec![self.tenant.clone(); settled])
            .bind::<Array<Nullable<Text>>, _>(none(settled))
            .bind::<Array<Nullable<Text>>, _>(none(settled))
            .bind::<Array<Text>, _>(texts(settled, &|i| request_id(previous, i)))
            .bind::<Array<Nullable<Text>>, _>(none(settled))
            .bind::<Array<Nullable<Text>>, _>(none(settled))
            .bind::<Array<Text>, _>(vec![cost.model.as_str(); settled])
            .bind::<Array<Int4>, _>(vec![cost.input_tokens; settled])
            .bind::<Array<Int4>, _>(vec![cost.output_tokens; settled])
            .bind::<Array<Double>, _>(vec![cost.cost_cents; settled])
            .bind::<Array<Bool>, _>(vec![cost.is_retry; settled])
            .bind::<Array<Nullable<Timestamptz>>, _>(vec![cost.created_at; settled])
            .bind::<Array<Text>, _>(Vec::<String>::new())
            .bind::<Array<Text>, _>(Vec::<String>::new())
            .execute(&mut conn)?;
        }
        Ok(started.elapsed())
    }
}

/// The admission workloads at `scale`: the gate at 16 threads, the service at 16 and 64.
pub fn admission_workloads(scale: Scale) -> Vec<Box<dyn Workload>> {
    let service = |threads: usize| -> Box<dyn Workload> {
        Box::new(Service {
            threads,
            per_thread: scale.of(3_200 / threads),
            tenant: format!("bench-admission-service-{threads}"),
            service: None,
            baseline_budget: Default::default(),
            now: Utc::now(),
            round: 0,
            rate: 0.0,
            p99: Duration::ZERO,
            batch: 0.0,
            ceiling: 0.0,
            baseline_rate: 0.0,
            ceiling_runs: 0,
        })
    };
    vec![
        service(16),
        service(64),
        Box::new(HotBudget {
            threads: 16,
            per_thread: scale.of(200),
            conns: Vec::new(),
            baseline_budget: Default::default(),
            now: Utc::now(),
            round: 0,
            rate: 0.0,
            p99: Duration::ZERO,
        }),
    ]
}
