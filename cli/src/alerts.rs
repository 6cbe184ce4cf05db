//! `costdb alerts`: operator upkeep of the CostSim alert outbox.

use std::io::Write;

use chrono::{Duration, Utc};
use costdb::db;
use costdb::drivers::AlertDriver;
use costdb::models::AlertStatus;
use diesel::Connection;

use crate::{require_url, say, Failure, Outcome, Target};

/// What to do with the outbox.
#[derive(Debug, clap::Subcommand)]
pub enum Alerts {
    /// Pending, sent, failed and leased counts, and the oldest pending alert.
    #[command(
        after_help = "Example:\n  costdb alerts stats --database-url postgres://postgres@localhost/costdb"
    )]
    Stats {
        #[command(flatten)]
        target: Target,
    },
    /// Give dead letters more attempts, due now.
    #[command(after_help = "Example:\n  costdb alerts retry --max-retries 5")]
    Retry {
        #[command(flatten)]
        target: Target,
        /// Further attempts for each dead letter.
        #[arg(long, default_value_t = 3)]
        max_retries: i32,
    },
    /// Delete alerts older than some days with the given statuses.
    #[command(after_help = "Example:\n  costdb alerts purge --days 14 --status sent")]
    Purge {
        #[command(flatten)]
        target: Target,
        /// Age in days, counted from creation.
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Statuses to delete (repeatable; default: sent and failed).
        #[arg(long = "status")]
        statuses: Vec<String>,
    },
}

/// Runs `costdb alerts …`.
pub fn run(what: Alerts) -> Outcome {
    match what {
        Alerts::Stats { target } => {
            let mut conn = db::connect(&require_url(target)?)?;
            let s = AlertDriver::new(&mut conn).fetch_queue_stats()?;
            say!("pending  {} ({} leased)", s.pending, s.claimed)?;
            say!("sent     {}", s.sent)?;
            say!("failed   {}", s.failed)?;
            let oldest = s.oldest_pending.map_or("-".into(), |t| t.to_rfc3339());
            say!("oldest pending: {oldest}")?;
        }
        Alerts::Retry {
            target,
            max_retries,
        } => {
            let mut conn = db::connect(&require_url(target)?)?;
            let n = conn.transaction(|c| {
                AlertDriver::new(c).retry_failed_alerts(max_retries, Utc::now())
            })?;
            say!("{n} dead letter(s) queued again with {max_retries} more attempt(s)")?;
        }
        Alerts::Purge {
            target,
            days,
            statuses,
        } => {
            let statuses = if statuses.is_empty() {
                vec![AlertStatus::Sent, AlertStatus::Failed]
            } else {
                statuses
                    .iter()
                    .map(|s| s.parse::<AlertStatus>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Failure::Usage(format!("--status: {e}")))?
            };
            if days < 0 {
                return Err(Failure::Usage("--days must not be negative".into()));
            }
            let mut conn = db::connect(&require_url(target)?)?;
            let cutoff = Utc::now() - Duration::days(days);
            let n =
                conn.transaction(|c| AlertDriver::new(c).purge_old_alerts(cutoff, &statuses))?;
            say!("purged {n} alert(s) created before {}", cutoff.to_rfc3339())?;
        }
    }
    Ok(())
}
