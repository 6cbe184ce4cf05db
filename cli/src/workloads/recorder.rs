//! The recorder: threads each recording calls as they finish through one `CostRecorder`,
//! beside pgbench's single-row INSERT in autocommit with as many clients.

use std::time::{Duration, Instant};

use super::writes::PGBENCH_SCRIPT;
use super::{percentile, pgbench, Ctx, Scale, Target, Workload};
use costdb::models::CostInput;
use costdb::recorder::{CostRecorder, RecorderConfig};
use costdb_testkit::Result;

struct GroupCommit {
    threads: usize,
    per_thread: usize,
    recorders: Vec<CostRecorder>,
    round: usize,
    /// Rows per second, p50 and p99 of `record`, of the last round.
    rate: f64,
    p50: Duration,
    p99: Duration,
    mean_batch: f64,
    /// Rows per second of the last ceiling run (see [`GroupCommit::ceiling_script`]) and
    /// of the last baseline run.
    ceiling: f64,
    baseline_rate: f64,
}

impl GroupCommit {
    /// The recorder's ceiling: [`PGBENCH_SCRIPT`]'s `INSERT` with its row once per thread,
    /// sent by one connection. No commit of the recorder can hold more rows than there are
    /// callers, since each waits for its own, so this is the most it could reach on this
    /// server if it cost nothing itself.
    fn ceiling_script(&self) -> String {
        let (head, row) = PGBENCH_SCRIPT
            .trim_end()
            .trim_end_matches(';')
            .split_once("VALUES ")
            .expect("the pgbench INSERT has a VALUES list");
        format!("{head}VALUES {};\n", vec![row; self.threads].join(", "))
    }
}

impl Workload for GroupCommit {
    fn name(&self) -> String {
        format!(
            "recorder: {} threads × {} calls ({:.0} rows/s, p50 {:.1} ms, p99 {:.1} ms, {:.1} rows \
             per commit; ceiling, 1 connection × {}-row INSERTs: {:.0} rows/s = {:.2}× the baseline)",
            self.threads,
            self.per_thread,
            self.rate,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.mean_batch,
            self.threads,
            self.ceiling,
            self.ceiling / self.baseline_rate.max(f64::MIN_POSITIVE),
        )
    }
    fn baseline_name(&self) -> &'static str {
        "pgbench autocommit INSERT, as many clients"
    }
    fn target(&self) -> Target {
        Target::AtLeast(if self.threads >= 64 { 3.0 } else { 2.0 })
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        let recorder = CostRecorder::start(&ctx.url, RecorderConfig::default())?;
        self.recorders = vec![recorder; self.threads];
        Ok(())
    }
    fn contender(&mut self, _ctx: &mut Ctx) -> Result<Duration> {
        self.contender_without_ctx()
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let rows = (self.threads * self.per_thread) as f64;
        let took = pgbench(ctx, PGBENCH_SCRIPT, self.threads, self.per_thread)?;
        self.baseline_rate = rows / took.as_secs_f64();
        // Measured beside the baseline, outside both timings; reported in the name.
        let ceiling = pgbench(ctx, &self.ceiling_script(), 1, self.per_thread)?;
        self.ceiling = rows / ceiling.as_secs_f64();
        Ok(took)
    }
}

impl GroupCommit {
    /// One round: every thread records its calls.
    fn contender_without_ctx(&mut self) -> Result<Duration> {
        self.round += 1;
        let (round, per_thread) = (self.round, self.per_thread);
        let (elapsed, latencies) = super::on_threads(&mut self.recorders, move |t, recorder| {
            (0..per_thread)
                .map(|n| {
                    let started = Instant::now();
                    recorder.record(CostInput {
                        tenant_id: format!("bench-tenant-{:03}", (t * 7 + n) % 100),
                        request_id: Some(format!("rec-{round}-{t}-{n}")),
                        workflow_id: Some("business-builder".into()),
                        skill_id: Some("llm_invoke".into()),
                        model: "gpt-4o".into(),
                        input_tokens: 500,
                        output_tokens: 200,
                        cost_cents: 1.5,
                        ..CostInput::default()
                    })?;
                    Ok(started.elapsed())
                })
                .collect()
        })?;
        self.rate = latencies.len() as f64 / elapsed.as_secs_f64();
        self.mean_batch = self.recorders[0].stats().mean_batch();
        self.p50 = percentile(latencies.clone(), 0.5);
        self.p99 = percentile(latencies, 0.99);
        Ok(elapsed)
    }
}

/// The recorder with the rollups against itself without them, 16 threads; each trial in
/// [`ROLLUP_ROUNDS`] rounds of a quarter of the calls, the two alternating, so that a
/// checkpoint or a burst of autovacuum during a trial falls on both.
struct RecorderRollups {
    run: GroupCommit,
}

/// Rounds of a trial of [`RecorderRollups`].
const ROLLUP_ROUNDS: usize = 4;

impl Workload for RecorderRollups {
    fn name(&self) -> String {
        format!(
            "recorder with rollups: {} threads × {} calls",
            self.run.threads,
            self.run.per_thread * ROLLUP_ROUNDS
        )
    }
    fn baseline_name(&self) -> &'static str {
        "the recorder without rollups"
    }
    fn target(&self) -> Target {
        Target::AtLeast(0.9)
    }
    fn prepare(&mut self, ctx: &mut Ctx) -> Result<()> {
        self.run.prepare(ctx)
    }
    fn rounds(&self) -> usize {
        ROLLUP_ROUNDS
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        self.run.contender(ctx)
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        let run = &mut self.run;
        super::without_rollups(&mut ctx.conn, |_| run.contender_without_ctx())
    }
}

/// The recorder workloads at `scale`: 16 and 64 threads of 2,000 calls each.
pub fn recorder_workloads(scale: Scale) -> Vec<Box<dyn Workload>> {
    let run = |threads, per_thread| GroupCommit {
        threads,
        per_thread,
        recorders: Vec::new(),
        round: 0,
        rate: 0.0,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        mean_batch: 0.0,
        ceiling: 0.0,
        baseline_rate: 0.0,
    };
    vec![
        Box::new(run(16, scale.of(2_000))),
        Box::new(run(64, scale.of(2_000))),
        Box::new(RecorderRollups {
            run: run(16, scale.of(2_000 / ROLLUP_ROUNDS)),
        }),
    ]
}
