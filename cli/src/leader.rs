//! `costdb leader`: who holds the singleton jobs' locks, and running a command as leader.

use std::io::Write;
use std::time::Duration;

use costdb::db;
use costdb::leader::{self, LeaderGuard};
use costdb::types::locks::KNOWN_LOCKS;

use crate::{require_url, say, Failure, Outcome, Target};

/// What to do with leader locks.
#[derive(Debug, clap::Subcommand)]
pub enum Leader {
    /// List the locks 7001–7005: holder pid, current term, who took it and since when.
    #[command(
        after_help = "Example:\n  costdb leader status --database-url postgres://postgres@localhost/costdb"
    )]
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Run a command only while leading a lock; stand by (exit 0) when another process
    /// leads. The command gets COSTDB_LEADER_LOCK and COSTDB_LEADER_TERM.
    #[command(after_help = "Example:\n  costdb leader run --lock 7002 -- ./deliver-alerts.sh")]
    Run {
        #[command(flatten)]
        target: Target,
        /// The lock id, e.g. 7002 for the alert worker.
        #[arg(long)]
        lock: i64,
        /// Name of this process in `leader_terms` (default: costdb-<pid>).
        #[arg(long)]
        holder: Option<String>,
        /// Seconds to wait for the connection and the lock statement.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Runs `costdb leader …`.
pub fn run(what: Leader) -> Outcome {
    match what {
        Leader::Status { target } => status(target),
        Leader::Run {
            target,
            lock,
            holder,
            timeout,
            command,
        } => run_as_leader(target, lock, holder, timeout, &command),
    }
}

fn status(target: Target) -> Outcome {
    let mut conn = db::connect(&require_url(target)?)?;
    let ids: Vec<i64> = KNOWN_LOCKS.iter().map(|(id, _)| *id).collect();
    say!(
        "{:<6} {:<20} {:<10} {:>6}  {:<24} since",
        "lock",
        "job",
        "holder pid",
        "term",
        "holder"
    )?;
    for (s, (_, job)) in leader::lock_status(&mut conn, &ids)?
        .iter()
        .zip(KNOWN_LOCKS)
    {
        let dash = || "-".to_owned();
        say!(
            "{:<6} {:<20} {:<10} {:>6}  {:<24} {}",
            s.lock_id,
            job,
            s.holder_pid.map_or_else(dash, |p| p.to_string()),
            s.term.map_or_else(dash, |t| t.to_string()),
            s.holder.clone().unwrap_or_else(dash),
            s.since.map_or_else(dash, |t| t.to_rfc3339()),
        )?;
    }
    Ok(())
}

fn run_as_leader(
    target: Target,
    lock: i64,
    holder: Option<String>,
    timeout: f64,
    command: &[String],
) -> Outcome {
    let url = require_url(target)?;
    let timeout = Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| Failure::Usage("--timeout must be a positive number of seconds".into()))?;
    let holder = holder.unwrap_or_else(|| format!("costdb-{}", std::process::id()));
    let Some(guard) = LeaderGuard::acquire(&url, lock, &holder, timeout)? else {
        say!("stood by: another process leads lock {lock}")?;
        return Ok(());
    };
    say!("leading lock {lock} in term {}", guard.term())?;
    let status = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("COSTDB_LEADER_LOCK", lock.to_string())
        .env("COSTDB_LEADER_TERM", guard.term().to_string())
        .status()
        .map_err(|e| Failure::Usage(format!("cannot run {:?}: {e}", command[0])))?;
    guard.release()?;
    if !status.success() {
        return Err(Failure::Usage(format!("{:?} failed: {status}", command[0])));
    }
    Ok(())
}
