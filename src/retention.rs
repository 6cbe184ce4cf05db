//! Retention of cost records: the partitions of days past a cutoff go, once the rollups of
//! those days agree with their records, so that reads over them keep answering from the
//! rollups. In two steps, each in a transaction of its caller's: [`Retention::retire`]
//! detaches (inserts wait for a moment), [`Retention::drop_detached`] deletes the days'
//! request keys and drops their tables (no one waits).
//!
//! ```no_run
//! use costdb::retention::Retention;
//! use diesel::Connection;
//!
//! # fn main() -> costdb::Result<()> {
//! let mut conn = costdb::db::connect("postgres://postgres@127.0.0.1/costdb")?;
//! let before = chrono::NaiveDate::from_ymd_opt(2026, 9, 1).unwrap();
//! let plan = conn.transaction(|c| Retention::new(c).plan(before))?;
//! conn.transaction(|c| Retention::new(c).retire(&plan))?;
//! let dropped = conn.transaction(|c| Retention::new(c).drop_detached())?;
//! println!("{} day(s) retired", dropped.len());
//! # Ok(())
//! # }
//! ```

use chrono::{Days, NaiveDate};
use diesel::PgConnection;
use serde::Serialize;

use crate::drivers::{CostPartition, PartitionDriver, RetiredPartition, RollupDriver, RollupRange};
use crate::error::{Error, Result};

/// What retiring the records before a day would drop, and whether it may.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionPlan {
    /// The partitions wholly before the cutoff, oldest first.
    pub partitions: Vec<CostPartition>,
    /// The UTC days among them whose rollups differ from their records: while any is
    /// listed, [`Retention::retire`] refuses.
    pub incomplete_days: Vec<NaiveDate>,
}

/// Plans and carries out retention on the caller's connection.
pub struct Retention<'c> {
    conn: &'c mut PgConnection,
}

impl<'c> Retention<'c> {
    /// Wraps the caller's connection.
    pub fn new(conn: &'c mut PgConnection) -> Self {
        Retention { conn }
    }

    /// The partitions whose every record is before UTC day `before`, and the days among
    /// them whose rollups differ from their records (checked in the caller's snapshot,
    /// blocking no writer).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a day PostgreSQL cannot store.
    pub fn plan(&mut self, before: NaiveDate) -> Result<RetentionPlan> {
        let partitions = PartitionDriver::new(self.conn).fetch_retirable(before)?;
        let mut incomplete_days = Vec::new();
        for p in &partitions {
            let last = p
                .to_at
                .and_then(|to| to.date_naive().checked_sub_days(Days::new(1)));
            let range = RollupRange {
                tenant_id: None,
                from: p.from_at.map(|at| at.date_naive()),
                to: last,
            };
            let differences = RollupDriver::new(self.conn).fetch_differences(&range)?;
            incomplete_days.extend(differences.iter().map(|d| d.bucket.date_naive()));
        }
        incomplete_days.sort_unstable();
        incomplete_days.dedup();
        Ok(RetentionPlan {
            partitions,
            incomplete_days,
        })
    }

    /// Detaches the partitions of `plan` ([`PartitionDriver::detach`]): commit at once,
    /// inserts wait until then. Returns them. Until
    /// [`drop_detached`](Self::drop_detached), their request keys still hold, so a retry
    /// is refused ([`Error::Conflict`]) rather than billed.
    ///
    /// # Errors
    /// [`Error::RetentionRefused`] naming the days when the plan found rollups that
    /// differ from their records, having changed nothing; [`Error::NoTransaction`]
    /// outside a transaction.
    pub fn retire(&mut self, plan: &RetentionPlan) -> Result<Vec<CostPartition>> {
        if !plan.incomplete_days.is_empty() {
            return Err(Error::RetentionRefused {
                days: plan.incomplete_days.clone(),
            });
        }
        PartitionDriver::new(self.conn).detach(&plan.partitions)?;
        Ok(plan.partitions.clone())
    }

    /// Deletes the request keys of the detached days' records and drops their tables
    /// ([`PartitionDriver::drop_detached`]); also finishes a run that stopped after
    /// detaching.
    ///
    /// # Errors
    /// [`Error::NoTransaction`] outside a transaction.
    pub fn drop_detached(&mut self) -> Result<Vec<RetiredPartition>> {
        PartitionDriver::new(self.conn).drop_detached()
    }
}
