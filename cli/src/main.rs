//! `costdb`: migrations, the demo and upkeep for the costdb data layer.

mod alerts;
mod bench;
mod demo;
mod hash;
mod leader;
mod report;
mod rollup;
mod upkeep;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use costdb::db;

/// The costdb command.
#[derive(Debug, Parser)]
#[command(
    name = "costdb",
    version,
    about = "Cost analytics data layer on PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The database a command works on.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// PostgreSQL URL of the database, e.g. postgres://user@host:5432/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending schema migrations (or list them, check them, or undo the last one).
    #[command(
        after_help = "Example:\n  costdb migrate --database-url postgres://postgres@localhost/costdb --status"
    )]
    Migrate {
        #[command(flatten)]
        target: Target,
        /// List applied, pending and unknown steps; change nothing. Exits non-zero when
        /// the database has applied steps this build does not know.
        #[arg(long, conflicts_with_all = ["revert", "check"])]
        status: bool,
        /// Like --status, and also exit non-zero when any step is pending.
        #[arg(long, conflicts_with = "revert")]
        check: bool,
        /// Undo the newest applied step.
        #[arg(long)]
        revert: bool,
    },
    /// Simulate a platform (weeks of noisy, weekly-cycled history, today through budget
    /// admission and the recorder), find its planted anomalies and report them.
    ///
    /// Runs on a throwaway local PostgreSQL, or, with --server-url, in a new database of
    /// its own on that server, dropped at the end. It never writes into an existing
    /// database and does not read DATABASE_URL.
    Demo(demo::Options),
    /// Measure costdb's write and read paths against PostgreSQL's own, in the same run.
    ///
    /// Every figure is a ratio to a baseline measured interleaved with it: a prepared
    /// INSERT, binary COPY, pgbench, or the server's execution time for reads.
    Bench(bench::Options),
    /// Upkeep of the CostSim alert outbox: stats, retry dead letters, purge old alerts.
    #[command(subcommand)]
    Alerts(alerts::Alerts),
    /// Print the provenance input hash of a JSON document (the original's canonical JSON,
    /// SHA-256, first 16 hex digits).
    #[command(after_help = "Example:\n  costdb hash simulation.json")]
    Hash {
        /// The document; `-` or none for standard input.
        file: Option<std::path::PathBuf>,
    },
    /// Leader election: see who leads the singleton jobs, or run a command as leader.
    #[command(subcommand)]
    Leader(leader::Leader),
    /// One tenant's analytics over UTC days: table, JSON, and an SVG chart per model.
    Report(report::Options),
    /// The rollups of the cost records: verify them against the records, rebuild a range.
    #[command(subcommand)]
    Rollup(rollup::Rollups),
    /// Print the statements that distribute the schema by tenant on a Citus cluster.
    #[command(after_help = "Example:\n  costdb distribute --print | psql \"$COORDINATOR_URL\"")]
    Distribute {
        /// Print the statements (the only mode: costdb does not run them itself).
        #[arg(long, required = true)]
        print: bool,
    },
    /// Periodic chores under leader election: reclaim expired budget reservations, retry
    /// dead-letter alerts, purge old ones, fold the rollups' slots of past days.
    Upkeep(upkeep::Options),
}

/// What ends the command early.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A costdb call failed.
    Costdb(costdb::Error),
    /// The command was used wrongly, or found something it must report as a failure.
    Usage(String),
    /// Writing to stdout failed: the reader went away (`costdb demo | head`) or worse.
    Output(std::io::Error),
}

impl From<costdb::Error> for Failure {
    fn from(e: costdb::Error) -> Self {
        Failure::Costdb(e)
    }
}

impl From<costdb_testkit::Error> for Failure {
    fn from(e: costdb_testkit::Error) -> Self {
        match e {
            costdb_testkit::Error::Costdb(e) => Failure::Costdb(e),
            other => Failure::Usage(costdb::report(&other)),
        }
    }
}

impl From<diesel::result::Error> for Failure {
    fn from(e: diesel::result::Error) -> Self {
        Failure::Costdb(e.into())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

pub(crate) type Outcome = Result<(), Failure>;

/// `println!` that returns write errors (a closed pipe) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}
pub(crate) use say;

pub(crate) fn require_url(target: Target) -> Result<String, Failure> {
    target
        .database_url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Failure::Usage(
                "no database given: pass --database-url postgres://user@host:port/db or set \
             DATABASE_URL"
                    .into(),
            )
        })
}

fn migrate(target: Target, status: bool, check: bool, revert: bool) -> Outcome {
    let mut conn = db::connect(&require_url(target)?)?;
    if status || check {
        let s = db::migration_status(&mut conn)?;
        for name in &s.applied {
            say!("applied  {name}")?;
        }
        for name in &s.pending {
            say!("pending  {name}")?;
        }
        for version in &s.unknown {
            say!("unknown  {version}")?;
        }
        say!(
            "{} applied, {} pending, {} unknown",
            s.applied.len(),
            s.pending.len(),
            s.unknown.len()
        )?;
        if !s.unknown.is_empty() {
            return Err(Failure::Usage(format!(
                "the database has applied migrations this build does not know: {}",
                s.unknown.join(", ")
            )));
        }
        if check && !s.pending.is_empty() {
            return Err(Failure::Usage(format!(
                "{} migration(s) pending: run `costdb migrate`",
                s.pending.len()
            )));
        }
    } else if revert {
        match db::revert_last_migration(&mut conn)? {
            Some(name) => say!("reverted {name}")?,
            None => say!("nothing to revert")?,
        }
    } else {
        let applied = db::run_migrations(&mut conn)?;
        for name in &applied {
            say!("applied  {name}")?;
        }
        say!("{} applied, schema is up to date", applied.len())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Migrate {
            target,
            status,
            check,
            revert,
        } => migrate(target, status, check, revert),
        Command::Demo(options) => demo::run(options),
        Command::Bench(options) => bench::run(options),
        Command::Leader(what) => leader::run(what),
        Command::Hash { file } => hash::run(file),
        Command::Alerts(what) => alerts::run(what),
        Command::Report(options) => report::run(options),
        Command::Rollup(what) => rollup::run(what),
        Command::Upkeep(options) => upkeep::run(options),
        Command::Distribute { print: _ } => {
            say!("{}", costdb::placement::citus_ddl()).map_err(Failure::Output)
        }
    };
    let message = match result {
        Ok(()) => return ExitCode::SUCCESS,
        // Whoever read our output has gone: end quietly.
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return ExitCode::SUCCESS
        }
        Err(Failure::Output(e)) => format!("cannot write the output: {e}"),
        Err(Failure::Usage(message)) => message,
        Err(Failure::Costdb(e)) => costdb::report(&e),
    };
    eprintln!("costdb: error: {message}");
    ExitCode::FAILURE
}
