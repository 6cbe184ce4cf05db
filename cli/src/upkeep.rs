//! `costdb upkeep`: the periodic chores, run by one process at a time under leader
//! election: reclaim expired budget reservations, retry dead-letter alerts, purge old ones,
//! fold the rollups' slots of past days, create the partitions of cost records ahead, and
//! (with `--retain-days`) drop the partitions of days past retention.

use std::io::Write;

use chrono::{Duration, NaiveDate, Utc};
use costdb::admission::AdmissionDriver;
use costdb::db;
use costdb::drivers::{AlertDriver, PartitionDriver, RollupDriver};
use costdb::leader::{self, LeaderGuard};
use costdb::models::AlertStatus;
use costdb::retention::{Retention, RetentionPlan};
use costdb::types::locks::LOCK_UPKEEP;
use diesel::{Connection, RunQueryDsl};

use crate::{require_url, say, Failure, Outcome, Target};

/// What upkeep does.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  costdb upkeep --database-url postgres://postgres@localhost/costdb --purge-days 14 --retain-days 90"
)]
pub struct Options {
    #[command(flatten)]
    target: Target,
    /// Further attempts for each dead-letter alert.
    #[arg(long, default_value_t = 3)]
    max_retries: i32,
    /// Purge sent and failed alerts older than this many days.
    #[arg(long, default_value_t = 30)]
    purge_days: u32,
    /// Keep a partition of cost records for today and this many days ahead.
    #[arg(long, default_value_t = 7)]
    partitions_ahead: u32,
    /// Drop the partitions of cost records older than this many days (whole days, after
    /// their rollups verify; the rollups stay). Nothing is dropped without it.
    #[arg(long)]
    retain_days: Option<u32>,
    /// With --retain-days: list what would be dropped, and whether it may be, and change
    /// nothing at all.
    #[arg(long, requires = "retain_days")]
    dry_run: bool,
}

/// How long retention waits for the lock on cost records before giving up: while it
/// waits, new inserts queue behind it.
const RETIRE_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '10s'";

/// Reservations reclaimed per transaction.
const RECLAIM_BATCH: i64 = 500;

/// Runs `costdb upkeep`.
pub fn run(options: Options) -> Outcome {
    if options.max_retries < 1 {
        return Err(Failure::Usage("--max-retries must be at least 1".into()));
    }
    if options.partitions_ahead > 366 {
        return Err(Failure::Usage("--partitions-ahead is at most 366".into()));
    }
    let url = require_url(options.target)?;
    let Some(guard) =
        LeaderGuard::acquire(&url, LOCK_UPKEEP, "costdb upkeep", leader::DEFAULT_TIMEOUT)?
    else {
        say!("another process is running upkeep (lock {LOCK_UPKEEP}): stood by")?;
        return Ok(());
    };
    say!("leading upkeep (lock {LOCK_UPKEEP}, term {})", guard.term())?;
    let mut conn = db::connect(&url)?;
    let now = Utc::now();
    let today = now.date_naive();
    let term = guard.term();
    if let (true, Some(days)) = (options.dry_run, options.retain_days) {
        let plan = retention_plan(&mut conn, today, days)?;
        report_plan(&plan, "would drop")?;
        guard.release()?;
        return refuse(&plan);
    }
    // Each chore commits on its own, fenced by the term: a stale leader writes nothing.
    let mut reclaimed = 0;
    loop {
        let n = conn.transaction(|c| {
            leader::check_term(c, LOCK_UPKEEP, term)?;
            AdmissionDriver::new(c).reclaim_expired(now, RECLAIM_BATCH)
        })?;
        reclaimed += n;
        if n == 0 {
            break;
        }
    }
    say!("reclaimed {reclaimed} expired budget reservation(s)")?;
    let retried = conn.transaction(|c| {
        leader::check_term(c, LOCK_UPKEEP, term)?;
        AlertDriver::new(c).retry_failed_alerts(options.max_retries, now)
    })?;
    say!(
        "queued {retried} dead-letter alert(s) again with {} more attempt(s)",
        options.max_retries
    )?;
    let cutoff = now - Duration::days(i64::from(options.purge_days));
    let purged = conn.transaction(|c| {
        leader::check_term(c, LOCK_UPKEEP, term)?;
        AlertDriver::new(c).purge_old_alerts(cutoff, &[AlertStatus::Sent, AlertStatus::Failed])
    })?;
    say!(
        "purged {purged} sent or failed alert(s) created before {}",
        cutoff.to_rfc3339()
    )?;
    let today = now.date_naive();
    let moved = conn.transaction(|c| {
        leader::check_term(c, LOCK_UPKEEP, term)?;
        RollupDriver::new(c).fold_deltas()
    })?;
    say!("folded the deltas of {moved} record(s) into the rollups")?;
    costdb::drivers::vacuum_deltas(&mut conn)?;
    say!("vacuumed the delta tables")?;
    let (removed, folded) = conn.transaction(|c| {
        leader::check_term(c, LOCK_UPKEEP, term)?;
        RollupDriver::new(c).compact(today)
    })?;
    say!("folded {removed} rollup slot row(s) of days before {today} into {folded}")?;
    let ahead = today + Duration::days(i64::from(options.partitions_ahead));
    let created = conn.transaction(|c| {
        leader::check_term(c, LOCK_UPKEEP, term)?;
        PartitionDriver::new(c).create_partitions(today, ahead)
    })?;
    say!(
        "created {} partition(s) of cost records through {ahead}{}",
        created.len(),
        list(&created)
    )?;
    if let Some(days) = options.retain_days {
        let plan = retention_plan(&mut conn, today, days)?;
        report_plan(&plan, "dropping")?;
        refuse(&plan)?;
        let detached = conn.transaction(|c| {
            leader::check_term(c, LOCK_UPKEEP, term)?;
            diesel::sql_query(RETIRE_LOCK_TIMEOUT).execute(c)?;
            Retention::new(c).retire(&plan)
        })?;
        say!("detached {} partition(s) of cost records", detached.len())?;
    }
    // Also what a run that stopped after detaching left.
    let dropped = conn.transaction(|c| {
        leader::check_term(c, LOCK_UPKEEP, term)?;
        Retention::new(c).drop_detached()
    })?;
    let keys: i64 = dropped.iter().map(|r| r.keys_deleted).sum();
    say!(
        "dropped {} detached partition(s) and {keys} request key(s) of their records",
        dropped.len()
    )?;
    guard.release()?;
    Ok(())
}

/// What retention would drop to keep `days` days before `today`.
fn retention_plan(
    conn: &mut diesel::PgConnection,
    today: NaiveDate,
    days: u32,
) -> Result<RetentionPlan, Failure> {
    let before = today - Duration::days(i64::from(days));
    let plan = conn.transaction(|c| Retention::new(c).plan(before))?;
    say!(
        "retention keeps {days} day(s): records before {before} go, {} partition(s)",
        plan.partitions.len()
    )?;
    Ok(plan)
}

/// Lists the partitions of `plan` and the days that stop it.
fn report_plan(plan: &RetentionPlan, verb: &str) -> Result<(), Failure> {
    for p in &plan.partitions {
        let from = p
            .from_at
            .map_or("the beginning".into(), |at| at.to_rfc3339());
        let to = p.to_at.map_or(String::new(), |at| at.to_rfc3339());
        say!("{verb} {} (records from {from} to before {to})", p.name)?;
    }
    for day in &plan.incomplete_days {
        say!("rollups of {day} differ from its records: costdb rollup verify names them")?;
    }
    Ok(())
}

/// Fails when `plan` may not go.
fn refuse(plan: &RetentionPlan) -> Outcome {
    if plan.incomplete_days.is_empty() {
        Ok(())
    } else {
        Err(costdb::Error::RetentionRefused {
            days: plan.incomplete_days.clone(),
        }
        .into())
    }
}

/// `: a, b` for a non-empty list.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(": {}", names.join(", "))
    }
}
