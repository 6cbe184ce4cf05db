//! `costdb upkeep`: the periodic chores, run by one process at a time under leader
//! election: reclaim expired budget reservations, retry dead-letter alerts, purge old ones,
//! fold the rollups' slots of past days.

use std::io::Write;

use chrono::{Duration, Utc};
use costdb::admission::AdmissionDriver;
use costdb::db;
use costdb::drivers::{AlertDriver, RollupDriver};
use costdb::leader::{self, LeaderGuard};
use costdb::models::AlertStatus;
use costdb::types::locks::LOCK_UPKEEP;
use diesel::Connection;

use crate::{require_url, say, Failure, Outcome, Target};

/// What upkeep does.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  costdb upkeep --database-url postgres://postgres@localhost/costdb --purge-days 14"
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
}

/// Reservations reclaimed per transaction.
const RECLAIM_BATCH: i64 = 500;

/// Runs `costdb upkeep`.
pub fn run(options: Options) -> Outcome {
    if options.max_retries < 1 {
        return Err(Failure::Usage("--max-retries must be at least 1".into()));
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
    let term = guard.term();
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
    let (removed, folded) = conn.transaction(|c| {
        leader::check_term(c, LOCK_UPKEEP, term)?;
        RollupDriver::new(c).compact(today)
    })?;
    say!("folded {removed} rollup slot row(s) of days before {today} into {folded}")?;
    guard.release()?;
    Ok(())
}
