//! The alert outbox: workers claiming batches (fetch, mark sent, commit) against the same
//! statements through pgbench.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::{pgbench, Ctx, Scale, Target, Workload};
use costdb::db;
use costdb::drivers::AlertDriver;
use costdb::Error;
use costdb_testkit::Result;

const BATCH: i64 = 10;

/// One transaction of the baseline: lock a batch, mark the same rows sent, commit.
const PGBENCH_SCRIPT: &str = "\
BEGIN;
SELECT id FROM costsim_alert_queue WHERE status = 'pending' AND next_attempt_at <= now() ORDER BY next_attempt_at, id LIMIT 10 FOR UPDATE SKIP LOCKED;
UPDATE costsim_alert_queue SET status = 'sent', sent_at = now() WHERE id IN (SELECT id FROM costsim_alert_queue WHERE status = 'pending' AND next_attempt_at <= now() ORDER BY next_attempt_at, id LIMIT 10 FOR UPDATE SKIP LOCKED);
COMMIT;
";

/// Empties the queue and queues `n` alerts, due now.
fn refill(conn: &mut PgConnection, n: usize) -> Result<()> {
    conn.batch_execute(&format!(
        "DELETE FROM costsim_alert_queue; \
         INSERT INTO costsim_alert_queue (payload, alert_type, next_attempt_at) \
         SELECT jsonb_build_array(jsonb_build_object('n', i)), 'disable', now() - interval '1 minute' \
         FROM generate_series(1, {n}) AS i"
    ))?;
    Ok(())
}

/// Delivers every due alert in batches with `AlertDriver`; returns the ids delivered.
fn deliver(conn: &mut PgConnection) -> Result<Vec<i64>> {
    let mut mine = Vec::new();
    loop {
        let batch = conn.transaction(|c| {
            let mut d = AlertDriver::new(c);
            let due = d.fetch_pending_alerts(Utc::now(), BATCH)?;
            let ids: Vec<i64> = due.iter().map(|a| a.id).collect();
            d.update_alerts_sent(&ids, Utc::now())?;
            Ok::<_, Error>(ids)
        })?;
        if batch.is_empty() {
            return Ok(mine);
        }
        mine.extend(batch);
    }
}

struct Workers {
    workers: usize,
    alerts: usize,
    duplicates: usize,
}

impl Workload for Workers {
    fn name(&self) -> String {
        format!(
            "alerts {} by {} worker(s), batches of {BATCH} ({} duplicates)",
            self.alerts, self.workers, self.duplicates
        )
    }
    fn baseline_name(&self) -> &'static str {
        "pgbench, same statements"
    }
    fn target(&self) -> Target {
        Target::AtLeast(0.7)
    }
    fn contender(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        refill(&mut ctx.conn, self.alerts)?;
        let started = Instant::now();
        let delivered: Vec<i64> = if self.workers == 1 {
            deliver(&mut ctx.conn)?
        } else {
            let handles: Vec<_> = (0..self.workers)
                .map(|_| {
                    let url = ctx.url.clone();
                    std::thread::spawn(move || deliver(&mut db::connect(&url)?))
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.join().expect("a worker thread")?);
            }
            all
        };
        let elapsed = started.elapsed();
        let distinct: HashSet<i64> = delivered.iter().copied().collect();
        self.duplicates += delivered.len() - distinct.len();
        if distinct.len() != self.alerts {
            return Err(Error::Conflict(format!(
                "{} of {} alerts delivered",
                distinct.len(),
                self.alerts
            ))
            .into());
        }
        Ok(elapsed)
    }
    fn baseline(&mut self, ctx: &mut Ctx) -> Result<Duration> {
        refill(&mut ctx.conn, self.alerts)?;
        let per_client = self.alerts / BATCH as usize / self.workers;
        pgbench(ctx, PGBENCH_SCRIPT, self.workers, per_client)
    }
}

/// The outbox workloads at `scale`: one worker, then four.
pub fn alert_workloads(scale: Scale) -> Vec<Box<dyn Workload>> {
    let alerts = scale.of(2_000).max(40);
    [1, 4]
        .into_iter()
        .map(|workers| {
            Box::new(Workers {
                workers,
                alerts,
                duplicates: 0,
            }) as Box<dyn Workload>
        })
        .collect()
}
