//! `costdb rollup`: check the rollups of the cost records against the records, rebuild a
//! range of them, and fold the records' deltas into them.

use std::io::Write;

use chrono::NaiveDate;
use costdb::db;
use costdb::drivers::{Rollup, RollupDifference, RollupDriver, RollupRange};
use costdb::models::Totals;
use diesel::Connection;

use crate::{require_url, say, Failure, Outcome, Target};

/// What to do with the rollups.
#[derive(Debug, clap::Subcommand)]
pub enum Rollups {
    /// Compare the rollups with sums of the records; exit non-zero on any difference,
    /// printing each key that differs.
    #[command(
        after_help = "Example:\n  costdb rollup verify --tenant acme --from 2026-11-01 --to 2026-11-30"
    )]
    Verify(RangeArgs),
    /// Recompute the rollups of a range from its records (inserts of cost records wait
    /// until it is done). Days that retention dropped are left as they are: their rollups
    /// are all that remains of them.
    #[command(
        after_help = "Example:\n  costdb rollup rebuild --tenant acme --from 2026-11-05 --to 2026-11-05"
    )]
    Rebuild(RangeArgs),
    /// Move the records that writes left as deltas into the rollups, then vacuum the delta
    /// tables. Reads add the deltas not yet moved, so a read costs its days plus that
    /// backlog: run it every few seconds to a minute (`costdb upkeep` runs it too).
    #[command(after_help = "Example:\n  costdb rollup fold")]
    Fold {
        #[command(flatten)]
        target: Target,
    },
}

/// A tenant (or all) and a range of UTC days (unbounded where not given).
#[derive(Debug, clap::Args)]
pub struct RangeArgs {
    #[command(flatten)]
    target: Target,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// The first UTC day (YYYY-MM-DD).
    #[arg(long)]
    from: Option<NaiveDate>,
    /// The last UTC day (YYYY-MM-DD).
    #[arg(long)]
    to: Option<NaiveDate>,
}

impl RangeArgs {
    fn split(self) -> (Target, RollupRange) {
        let range = RollupRange {
            tenant_id: self.tenant,
            from: self.from,
            to: self.to,
        };
        (self.target, range)
    }
}

fn totals(t: &Totals) -> String {
    format!(
        "{} calls, {} retries, {} in, {} out, {} cents",
        t.requests, t.retries, t.input_tokens, t.output_tokens, t.cost_cents
    )
}

fn key(d: &RollupDifference) -> String {
    match d.rollup {
        Rollup::Hourly => format!(
            "hourly      {} {} model {} tag {}",
            d.tenant_id,
            d.bucket.format("%Y-%m-%dT%H:00Z"),
            d.model.as_deref().unwrap_or("-"),
            d.feature_tag.as_deref().unwrap_or("(none)")
        ),
        Rollup::Daily => format!(
            "daily       {} {} tag {} user {}",
            d.tenant_id,
            d.bucket.date_naive(),
            d.feature_tag.as_deref().unwrap_or("(none)"),
            d.user_id.as_deref().unwrap_or("(none)")
        ),
    }
}

/// Runs `costdb rollup …`.
pub fn run(what: Rollups) -> Outcome {
    match what {
        Rollups::Verify(args) => {
            let (target, range) = args.split();
            let mut conn = db::connect(&require_url(target)?)?;
            let differences = RollupDriver::new(&mut conn).fetch_differences(&range)?;
            for d in &differences {
                say!("{}", key(d))?;
                say!("    rollup:  {}", totals(&d.rolled))?;
                say!("    records: {}", totals(&d.recorded))?;
            }
            if !differences.is_empty() {
                return Err(Failure::Usage(format!(
                    "{} rollup key(s) differ from their records: run `costdb rollup rebuild` \
                     over their days",
                    differences.len()
                )));
            }
            say!("the rollups agree with the records")?;
        }
        Rollups::Rebuild(args) => {
            let (target, range) = args.split();
            let mut conn = db::connect(&require_url(target)?)?;
            let summary = conn.transaction(|c| RollupDriver::new(c).rebuild(&range))?;
            say!(
                "rebuilt: {} hourly rows, {} daily rows",
                summary.hourly_rows,
                summary.daily_rows
            )?;
        }
        Rollups::Fold { target } => {
            let mut conn = db::connect(&require_url(target)?)?;
            let moved = conn.transaction(|c| RollupDriver::new(c).fold_deltas())?;
            say!("folded the deltas of {moved} record(s) into the rollups")?;
            costdb::drivers::vacuum_deltas(&mut conn)?;
            say!("vacuumed the delta tables")?;
        }
    }
    Ok(())
}
