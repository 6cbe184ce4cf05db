//! `RollupDriver`: checks the rollups of `cost_records` against the records and rebuilds a
//! range of them. The rollups themselves are kept by the database (see
//! [`Totals`](crate::models::Totals)); nothing here is needed to keep them right.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text, Timestamptz};
use serde::Serialize;

use crate::db::require_transaction;
use crate::error::{Error, Result};
use crate::models::Totals;
use crate::prepared::{Param, Prepared};
use crate::schema::cost_record_retention;
use crate::sql_fns::{costdb_compact_rollups, costdb_fold_rollup_deltas, costdb_rebuild_rollups};
use crate::types::limits;
use crate::validate;

/// Which rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Rollup {
    /// `cost_rollup_hourly`: tenant × UTC hour × model × feature tag.
    Hourly,
    /// `cost_rollup_daily`: tenant × UTC day × feature tag × user.
    Daily,
}

/// One end of a range of instants; `None` is unbounded.
type Bound = Option<DateTime<Utc>>;

/// Which records: one tenant or all, over whole UTC days `from..=to` (unbounded where
/// `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RollupRange {
    /// The tenant; every tenant when `None`.
    pub tenant_id: Option<String>,
    /// The first UTC day.
    pub from: Option<NaiveDate>,
    /// The last UTC day.
    pub to: Option<NaiveDate>,
}

impl RollupRange {
    /// The range as bounds of `created_at`: `[from 00:00, to + 1 00:00)`.
    fn instants(&self) -> Result<(Bound, Bound)> {
        validate::optional("tenant_id", self.tenant_id.as_deref(), limits::TENANT_ID)?;
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                return Err(Error::invalid(
                    "to",
                    format!("the last day ({to}) is before the first ({from})"),
                ));
            }
        }
        let midnight = |d: NaiveDate| d.and_time(NaiveTime::MIN).and_utc();
        let end = match self.to {
            Some(to) => Some(midnight(
                to.succ_opt()
                    .ok_or_else(|| Error::invalid("to", "has no next day"))?,
            )),
            None => None,
        };
        let (from, to) = (self.from.map(midnight), end);
        for (field, at) in [("from", from), ("to", to)] {
            if let Some(at) = at {
                validate::instant(field, at)?;
            }
        }
        Ok((from, to))
    }
}

/// A rollup key whose sums differ from those of its records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollupDifference {
    /// Which rollup.
    pub rollup: Rollup,
    /// The tenant.
    pub tenant_id: String,
    /// The UTC hour ([`Rollup::Hourly`]) or the UTC midnight of the day.
    pub bucket: DateTime<Utc>,
    /// The model ([`Rollup::Hourly`]).
    pub model: Option<String>,
    /// The feature tag (`None` also for untagged records).
    pub feature_tag: Option<String>,
    /// The user ([`Rollup::Daily`]; `None` also for calls without one).
    pub user_id: Option<String>,
    /// What the rollup holds (zero where it has no row).
    pub rolled: Totals,
    /// What the records sum to (zero where there are none).
    pub recorded: Totals,
}

#[derive(QueryableByName)]
struct DifferenceRow {
    #[diesel(sql_type = Text)]
    rollup: String,
    #[diesel(sql_type = Text)]
    tenant_id: String,
    #[diesel(sql_type = Timestamptz)]
    bucket: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    model: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    feature_tag: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    user_id: Option<String>,
    #[diesel(sql_type = BigInt)]
    rolled_requests: i64,
    #[diesel(sql_type = BigInt)]
    rolled_retries: i64,
    #[diesel(sql_type = BigInt)]
    rolled_input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    rolled_output_tokens: i64,
    #[diesel(sql_type = Double)]
    rolled_cost_cents: f64,
    #[diesel(sql_type = BigInt)]
    recorded_requests: i64,
    #[diesel(sql_type = BigInt)]
    recorded_retries: i64,
    #[diesel(sql_type = BigInt)]
    recorded_input_tokens: i64,
    #[diesel(sql_type = BigInt)]
    recorded_output_tokens: i64,
    #[diesel(sql_type = Double)]
    recorded_cost_cents: f64,
}

impl From<DifferenceRow> for RollupDifference {
    fn from(r: DifferenceRow) -> Self {
        RollupDifference {
            rollup: if r.rollup == "hourly" {
                Rollup::Hourly
            } else {
                Rollup::Daily
            },
            tenant_id: r.tenant_id,
            bucket: r.bucket,
            model: r.model,
            feature_tag: r.feature_tag,
            user_id: r.user_id,
            rolled: Totals {
                requests: r.rolled_requests,
                retries: r.rolled_retries,
                input_tokens: r.rolled_input_tokens,
                output_tokens: r.rolled_output_tokens,
                cost_cents: r.rolled_cost_cents,
            },
            recorded: Totals {
                requests: r.recorded_requests,
                retries: r.recorded_retries,
                input_tokens: r.recorded_input_tokens,
                output_tokens: r.recorded_output_tokens,
                cost_cents: r.recorded_cost_cents,
            },
        }
    }
}

/// What [`RollupDriver::rebuild`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RebuildSummary {
    /// Rows of `cost_rollup_hourly` written.
    pub hourly_rows: i64,
    /// Rows of `cost_rollup_daily` written.
    pub daily_rows: i64,
}

/// Every key of a range whose rollup differs from its records (see the file).
const VERIFY: &str = include_str!("rollup/verify.sql");

/// Checks and repairs the rollups of `cost_records`.
pub struct RollupDriver<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> RollupDriver<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        RollupDriver { conn }
    }

    /// Every rollup key of `range` whose sums differ from its records' (counts and tokens
    /// exactly, cents beyond 1e-9 relative), hourly ones first. Days that retention
    /// retired are skipped: their rollups outlive their records.
    pub fn fetch_differences(&mut self, range: &RollupRange) -> Result<Vec<RollupDifference>> {
        let Some((from, to)) = self.kept(range)? else {
            return Ok(Vec::new());
        };
        let rows: Vec<DifferenceRow> = Prepared {
            sql: VERIFY,
            params: &[
                Param::OptText(range.tenant_id.as_deref()),
                Param::OptInstant(from.as_ref()),
                Param::OptInstant(to.as_ref()),
            ],
        }
        .load(self.conn)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The bounds of `range` that retention has not retired (`None`: nothing is left),
    /// validated.
    fn kept(&mut self, range: &RollupRange) -> Result<Option<(Bound, Bound)>> {
        let (from, to) = range.instants()?;
        let retired: Option<DateTime<Utc>> = cost_record_retention::table
            .select(cost_record_retention::retired_before)
            .first(self.conn)
            .optional()?;
        let from = from.max(retired);
        Ok(match (from, to) {
            (Some(from), Some(to)) if to <= from => None,
            bounds => Some(bounds),
        })
    }

    /// Folds the slots of every rollup row of the UTC days before `before` into one row per
    /// key (slot 0), in one statement: concurrent writers of a hot key spread over up to
    /// 64 slots while its day is current, and once the day is past readers need only one
    /// row. Sums are unchanged in every snapshot. Returns (rows removed, rows they were
    /// folded into).
    ///
    /// # Errors
    /// [`Error::NoTransaction`] outside a transaction.
    pub fn compact(&mut self, before: NaiveDate) -> Result<(i64, i64)> {
        validate::instant("before", before.and_time(NaiveTime::MIN).and_utc())?;
        require_transaction(self.conn)?;
        Ok(diesel::select(costdb_compact_rollups(before)).get_result(self.conn)?)
    }

    /// Moves the records that statements left as deltas (`cost_rollup_deltas`,
    /// `cost_rollup_delta_batches`) into the rollups (slot 0), in one statement, and returns
    /// how many. Reads add the deltas not yet moved, so a read costs its days plus this
    /// backlog: run it often (`costdb upkeep` does). Sums are unchanged in every snapshot.
    /// After a large backlog, [`vacuum_deltas`] once committed.
    ///
    /// # Errors
    /// [`Error::NoTransaction`] outside a transaction.
    pub fn fold_deltas(&mut self) -> Result<i64> {
        require_transaction(self.conn)?;
        Ok(diesel::select(costdb_fold_rollup_deltas()).get_result(self.conn)?)
    }

    /// Recomputes the rollups of `range` from its records. Blocks inserts of cost records
    /// until the caller's transaction ends (a `SHARE` lock on `cost_records`), so no write
    /// can fall between the old rows' removal and the new sums.
    ///
    /// # Errors
    /// [`Error::NoTransaction`] outside a transaction. Days that retention retired are
    /// left as they are: their rollups are all that remains of them.
    pub fn rebuild(&mut self, range: &RollupRange) -> Result<RebuildSummary> {
        let bounds = self.kept(range)?;
        require_transaction(self.conn)?;
        let Some((from, to)) = bounds else {
            return Ok(RebuildSummary {
                hourly_rows: 0,
                daily_rows: 0,
            });
        };
        let (hourly_rows, daily_rows) =
            diesel::select(costdb_rebuild_rollups(range.tenant_id.as_deref(), from, to))
                .get_result(self.conn)?;
        Ok(RebuildSummary {
            hourly_rows,
            daily_rows,
        })
    }
}

/// Vacuums the two delta tables, so the space a fold emptied takes the next deltas (as
/// autovacuum would in its own time): after a large backlog, new deltas would otherwise
/// land past the emptied pages, and a read that scans a tenant's deltas would read them
/// all. Run it after [`RollupDriver::fold_deltas`] has committed.
///
/// # Errors
/// A database error inside a transaction: `VACUUM` cannot run in one.
pub fn vacuum_deltas(conn: &mut PgConnection) -> Result<()> {
    use diesel::connection::SimpleConnection;
    Ok(conn.batch_execute("VACUUM cost_rollup_deltas, cost_rollup_delta_batches")?)
}
