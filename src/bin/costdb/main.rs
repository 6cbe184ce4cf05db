//! `costdb`: migrations, the demo and upkeep for the costdb data layer.

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use costdb::db;

/// The costdb command.
#[derive(Debug, Parser)]
#[command(
    name = "costdb",
    version,
    about = "Cost analytics data layer on PostgreSQL"
)]
struct Cli {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending schema migrations (or list them, or undo the last one).
    Migrate {
        /// List applied and pending steps; change nothing.
        #[arg(long, conflicts_with = "revert")]
        status: bool,
        /// Undo the newest applied step.
        #[arg(long)]
        revert: bool,
    },
    /// Record a day of worker runs and LLM calls and print the analytics over them.
    ///
    /// Without a database URL it runs on a throwaway local PostgreSQL.
    Demo,
}

fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn require_url(url: Option<String>) -> costdb::Result<String> {
    url.filter(|u| !u.is_empty()).ok_or_else(|| {
        costdb::Error::invalid("database_url", "set DATABASE_URL or pass --database-url")
    })
}

fn migrate(url: Option<String>, status: bool, revert: bool) -> costdb::Result<()> {
    let mut conn = db::connect(&require_url(url)?)?;
    if status {
        let s = db::migration_status(&mut conn)?;
        for name in &s.applied {
            println!("applied  {name}");
        }
        for name in &s.pending {
            println!("pending  {name}");
        }
        println!("{} applied, {} pending", s.applied.len(), s.pending.len());
    } else if revert {
        match db::revert_last_migration(&mut conn)? {
            Some(name) => println!("reverted {name}"),
            None => println!("nothing to revert"),
        }
    } else {
        let applied = db::run_migrations(&mut conn)?;
        for name in &applied {
            println!("applied  {name}");
        }
        println!("{} applied, schema is up to date", applied.len());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Migrate { status, revert } => migrate(cli.database_url, status, revert),
        Command::Demo => demo::run(cli.database_url),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("costdb: error: {}", one_line(e));
            ExitCode::FAILURE
        }
    }
}
